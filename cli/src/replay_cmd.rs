//! `arbiter replay PATH...` (formats.md, "Fixtures").

use std::path::PathBuf;
use std::time::Duration;

use arbiter_lab::replay::replay_file;
use serde_json::{Value, json};

use crate::out::outln;
use crate::{EXIT_BAD_INPUT, EXIT_FAILED, EXIT_OK, print_json, shown};

/// `arbiter replay` options.
#[derive(clap::Args)]
pub(crate) struct Args {
    /// Fixture files or folders (searched recursively for `*.toml`).
    #[arg(required = true, value_name = "PATH")]
    paths: Vec<PathBuf>,
    /// Print the results as JSON (with a replayed-steps-per-second figure).
    #[arg(long)]
    json: bool,
}

pub(crate) fn run(args: &Args) -> u8 {
    // Each file once, even through a symlink loop; inputs that are missing
    // (or folders without fixtures) are failures, and the summary still comes.
    let (paths, unreadable) = arbiter_ruleset::input::collect_files(&args.paths, "toml");
    let (mut passed, mut failed, mut bad_input, mut steps) = (0usize, 0usize, false, 0usize);
    let mut elapsed = Duration::ZERO;
    let mut results: Vec<Value> = Vec::new();
    for (path, why) in &unreadable {
        failed += 1;
        bad_input = true;
        let name = shown(path);
        let error = format!("{name}: error[unreadable]: {why}");
        if args.json {
            results.push(json!({"path": name, "passed": false, "errors": [error]}));
        } else {
            outln!("ERROR {name}");
            outln!("      {error}");
        }
    }
    for path in &paths {
        let name = shown(path);
        match replay_file(path) {
            Ok((fixture, run)) => {
                steps += run.steps.len();
                elapsed += run.elapsed;
                let ok = run.passed();
                if ok {
                    passed += 1;
                } else {
                    failed += 1;
                }
                if args.json {
                    let failures: Vec<Value> = run
                        .failures()
                        .flat_map(|s| {
                            s.mismatches.iter().map(move |m| {
                                json!({"step": s.index, "line": s.line, "field": m.field, "expected": m.expected, "actual": m.actual})
                            })
                        })
                        .collect();
                    results.push(json!({"path": name, "name": fixture.name, "steps": run.steps.len(), "passed": ok, "failures": failures}));
                } else if ok {
                    outln!("ok    {name}  {} ({} steps)", fixture.name, run.steps.len());
                } else {
                    outln!("FAIL  {name}  {}", fixture.name);
                    for s in run.failures() {
                        let what: Vec<String> = s
                            .mismatches
                            .iter()
                            .map(|m| format!("{}: expected {}, got {}", m.field, m.expected, m.actual))
                            .collect();
                        outln!("      step {} (line {}, {}): {}", s.index, s.line, s.layer.name(), what.join("; "));
                    }
                }
            }
            Err(diags) => {
                failed += 1;
                bad_input = true;
                if args.json {
                    let errors: Vec<String> = diags.iter().map(ToString::to_string).collect();
                    results.push(json!({"path": name, "passed": false, "errors": errors}));
                } else {
                    outln!("ERROR {name}");
                    for d in &diags {
                        outln!("      {d}");
                    }
                }
            }
        }
    }
    let secs = elapsed.as_secs_f64();
    #[expect(clippy::cast_precision_loss, reason = "a rate for humans")]
    let rate = if secs > 0.0 { steps as f64 / secs } else { 0.0 };
    if args.json {
        print_json(&json!({
            "fixtures": results,
            "passed": passed,
            "failed": failed,
            "steps": steps,
            "decide_seconds": secs,
            "steps_per_second": rate.round(),
        }));
    } else {
        outln!("{passed} passed, {failed} failed");
    }
    if bad_input || paths.is_empty() {
        if paths.is_empty() && unreadable.is_empty() {
            eprintln!("no fixtures found");
        }
        EXIT_BAD_INPUT
    } else if failed > 0 {
        EXIT_FAILED
    } else {
        EXIT_OK
    }
}
