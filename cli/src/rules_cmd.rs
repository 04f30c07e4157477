//! `arbiter rules check|compile`: delegated to the rules crate.

use std::path::PathBuf;

use crate::EXIT_BAD_INPUT;

/// `arbiter rules` subcommands.
#[derive(clap::Subcommand)]
pub(crate) enum RulesCommand {
    /// Check rule files (folders: every .toml below) and print every diagnostic; exit 2 when any has errors.
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
    // Buffered, then written in one go: a closed stdout ends the process quietly.
    let mut out = Vec::new();
    let code = match c {
        RulesCommand::Check { paths, json } => arbiter_ruleset::check_command(&paths, json, &mut out),
        RulesCommand::Compile { path, output, json } => {
            arbiter_ruleset::compile_command(&path, &output, json, &mut out)
        }
    };
    crate::out::bytes(&out);
    u8::try_from(code).unwrap_or(EXIT_BAD_INPUT)
}
