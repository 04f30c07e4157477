//! `arbiter audit FILE`: decode a driver audit log (binary, or the service's
//! `audit.jsonl`), turn it into a fixture, or check the decision table's
//! invariants over it. Every good record is used; what cannot be decoded is
//! reported on stderr, and then the exit status is 2.

use std::path::{Path, PathBuf};

use arbiter_ruleset::plural;

use arbiter_lab::audit_log::{Decoded, check, decode, describe, environment_of, log_bytes, step_of};
use arbiter_lab::fixture::{Fixture, RulesSource};
use serde_json::{Value, json};

use crate::out::outln;
use crate::{EXIT_BAD_INPUT, EXIT_FAILED, EXIT_OK, print_json};

/// `arbiter audit` options.
#[derive(clap::Args)]
pub(crate) struct Args {
    /// The audit log: the driver's binary records back to back, or the service's audit.jsonl.
    #[arg(value_name = "FILE")]
    file: PathBuf,
    /// Print the records (or the check's violations) as JSON.
    #[arg(long)]
    json: bool,
    /// Write the log's decisions as a replayable fixture to OUT.
    #[arg(long, value_name = "OUT", conflicts_with = "check")]
    fixture: Option<PathBuf>,
    /// The rules file the driver ran with, referenced from the fixture, relative to it (--fixture only).
    #[arg(long, value_name = "RULES", requires = "fixture")]
    rules: Option<PathBuf>,
    /// Verify the decision table's invariants; list each violation with its record.
    #[arg(long)]
    check: bool,
}

pub(crate) fn run(args: &Args) -> u8 {
    let file = match arbiter_ruleset::input::read_capped(&args.file, arbiter_ruleset::input::AUDIT_CAP) {
        Ok(b) => b,
        Err(e) => {
            eprintln!("{}: {e}", args.file.display());
            return EXIT_BAD_INPUT;
        }
    };
    let log = log_bytes(file);
    let decoded = decode(&log);
    for p in &decoded.problems {
        let what = if p.undecodable { "error" } else { "note" };
        eprintln!("{}: {}: {what}: {}", args.file.display(), p.place, p.message);
    }
    if decoded.records.is_empty() && decoded.problems.is_empty() {
        eprintln!("{}: the log is empty: it holds no audit record", args.file.display());
    }
    let code = report(args, &decoded);
    if decoded.lost_data() {
        eprintln!(
            "{}: {} good records kept; some of the log could not be decoded (above)",
            args.file.display(),
            decoded.records.len()
        );
        return EXIT_BAD_INPUT;
    }
    code
}

fn report(args: &Args, decoded: &Decoded<'_>) -> u8 {
    let records = &decoded.records;
    if let Some(out) = &args.fixture {
        let name = format!("from audit log {}", args.file.display());
        let rules = match &args.rules {
            // Relative to the fixture's folder, as formats.md reads it.
            Some(r) => RulesSource::File(relative_to(&fixture_dir(out), r)),
            None => {
                eprintln!(
                    "warning: no --rules given: steps that consulted the rules will replay against an empty rule set"
                );
                RulesSource::None
            }
        };
        let f = Fixture {
            name,
            path: out.clone(),
            rules,
            environment: environment_of(records),
            steps: records.iter().filter_map(step_of).collect(),
        };
        let text = format!("# Converted by `arbiter audit --fixture` from {}\n{}", args.file.display(), f.to_toml());
        // What is written must replay: parse it back before writing it.
        if let Err(diags) = Fixture::parse(&text, out) {
            for d in &diags {
                eprintln!("{d}");
            }
            eprintln!("{}: not written: the log's records do not make a valid fixture", out.display());
            return EXIT_BAD_INPUT;
        }
        if let Err(e) = std::fs::write(out, text) {
            eprintln!("{}: {e}", out.display());
            return EXIT_BAD_INPUT;
        }
        if args.json {
            print_json(
                &json!({"fixture": out.display().to_string(), "steps": f.steps.len(), "records": records.len()}),
            );
        } else {
            outln!("wrote {} ({} steps from {} records)", out.display(), f.steps.len(), records.len());
        }
        return EXIT_OK;
    }
    if args.check {
        let violations = check(records);
        if args.json {
            let list: Vec<Value> = violations
                .iter()
                .map(|v| {
                    let d = records.get(v.index).map(describe);
                    json!({"index": v.index, "seq": v.seq, "invariant": v.invariant, "message": v.message,
                           "record": d.map(|d| describe_json(&d))})
                })
                .collect();
            print_json(&json!({"records": records.len(), "violations": list}));
        } else {
            for v in &violations {
                outln!("violation of invariant {} at record {} (seq {}): {}", v.invariant, v.index, v.seq, v.message);
                if let Some(r) = records.get(v.index) {
                    outln!("    {}", line(&describe(r)));
                }
            }
            outln!("{}, {}", plural(records.len(), "record"), plural(violations.len(), "violation"));
        }
        return if violations.is_empty() { EXIT_OK } else { EXIT_FAILED };
    }
    if args.json {
        let list: Vec<Value> = records.iter().map(|r| describe_json(&describe(r))).collect();
        print_json(&Value::Array(list));
    } else {
        for r in records {
            outln!("{}", line(&describe(r)));
        }
        outln!("{}", plural(records.len(), "record"));
    }
    EXIT_OK
}

fn line(d: &arbiter_lab::audit_log::Described) -> String {
    let opt = |v: &Option<String>| v.clone().unwrap_or_else(|| "-".to_owned());
    format!(
        "#{:<6} {:>8}ms {:<16} ep={:<6} pid={:<6} {:<26} {:<9} {:<30} {} {}",
        d.seq,
        d.at_ms,
        d.kind,
        d.endpoint.map_or_else(|| "-".to_owned(), |e| e.to_string()),
        d.pid.map_or_else(|| "-".to_owned(), |e| e.to_string()),
        d.state.unwrap_or("-"),
        d.verdict.unwrap_or("-"),
        d.reason,
        opt(&d.remote),
        d.detail
    )
}

fn describe_json(d: &arbiter_lab::audit_log::Described) -> Value {
    json!({
        "seq": d.seq, "at_ms": d.at_ms, "kind": d.kind, "endpoint": d.endpoint, "pid": d.pid,
        "app": d.app, "remote": d.remote, "state": d.state, "verdict": d.verdict, "reason": d.reason,
        "detail": d.detail,
    })
}

/// The folder a fixture at `out` lives in (`.` for a bare file name).
fn fixture_dir(out: &Path) -> PathBuf {
    match out.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    }
}

/// `target` as seen from `base` (both made absolute first).
fn relative_to(base: &Path, target: &Path) -> PathBuf {
    let abs = |p: &Path| std::path::absolute(p).unwrap_or_else(|_| p.to_path_buf());
    let (base, target) = (abs(base), abs(target));
    let common = base.components().zip(target.components()).take_while(|(a, b)| a == b).count();
    let mut out = PathBuf::new();
    for _ in base.components().skip(common) {
        out.push("..");
    }
    for c in target.components().skip(common) {
        out.push(c);
    }
    out
}
