//! `arbiter rules check|compile`: delegated to the rules crate.

use std::path::PathBuf;

use serde_json::json;

use crate::{EXIT_BAD_INPUT, EXIT_OK, print_json};

/// `arbiter rules` subcommands.
#[derive(clap::Subcommand)]
pub(crate) enum RulesCommand {
    /// Check rule files and print every diagnostic (exit 2 when any file is invalid).
    Check {
        /// Rules files.
        #[arg(required = true, value_name = "FILE")]
        paths: Vec<PathBuf>,
        /// Print the results as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Compile a rules file into the binary blob the driver loads.
    Compile {
        /// The rules file.
        #[arg(value_name = "FILE")]
        path: PathBuf,
        /// Where to write the blob.
        #[arg(short, long, value_name = "OUT")]
        output: PathBuf,
        /// Print the result as JSON.
        #[arg(long)]
        json: bool,
    },
}

pub(crate) fn run(c: RulesCommand) -> u8 {
    match c {
        RulesCommand::Check { paths, json } => check(&paths, json),
        RulesCommand::Compile { path, output, json } => {
            // INTERIM: until arbiter_ruleset exports `compile_command`.
            let _ = (path, output);
            let msg = "rules compile: the rules crate does not export a compiler yet";
            if json {
                print_json(&json!({"ok": false, "error": msg}));
            } else {
                eprintln!("{msg}");
            }
            EXIT_BAD_INPUT
        }
    }
}

/// INTERIM: until arbiter_ruleset exports `check_command`.
fn check(paths: &[PathBuf], json: bool) -> u8 {
    let mut results = Vec::new();
    let mut bad = false;
    for p in paths {
        match arbiter_lab::rules::load_file(p) {
            Ok(r) => {
                if !json {
                    println!("ok    {} ({} rules)", p.display(), r.rules.len());
                }
                results.push(json!({"path": p.display().to_string(), "ok": true, "rules": r.rules.len()}));
            }
            Err(e) => {
                bad = true;
                if !json {
                    println!("{e}");
                }
                results.push(json!({"path": p.display().to_string(), "ok": false, "diagnostics": [e]}));
            }
        }
    }
    if json {
        print_json(&json!({"files": results}));
    }
    if bad { EXIT_BAD_INPUT } else { EXIT_OK }
}
