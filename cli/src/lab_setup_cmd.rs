//! `arbiter lab --setup FILE`: a real machine's vendors, simulated.

use std::path::Path;

use arbiter_lab::machine::{MachineSetup, run_all};
use arbiter_lab::scenario::LabRules;
use serde_json::json;

use crate::{EXIT_BAD_INPUT, EXIT_FAILED, EXIT_OK, print_json};

pub(crate) fn run(path: &Path, rule_sets: &[LabRules], as_json: bool) -> u8 {
    let setup = match MachineSetup::load(path) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("{e}");
            return EXIT_BAD_INPUT;
        }
    };
    let runs = match run_all(&setup, rule_sets) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("{}: {e}", path.display());
            return EXIT_BAD_INPUT;
        }
    };
    let failures = runs.iter().filter(|r| r.is_failure()).count();
    let order: Vec<String> = setup
        .vendors
        .iter()
        .map(|v| match (v.ours, v.profile()) {
            (true, _) => "arbiter".to_owned(),
            (false, Some(p)) => format!("{} [{}]", v.name, p.name()),
            (false, None) => v.name.clone(),
        })
        .collect();
    if as_json {
        let rows: Vec<_> = runs
            .iter()
            .map(|r| json!({"scenario": r.name, "outcome": r.outcome.kind(), "detail": r.outcome.detail(), "path": r.path, "failure": r.is_failure()}))
            .collect();
        print_json(
            &json!({"setup": setup.name, "source": setup.source, "order": order, "scenarios": rows, "failures": failures}),
        );
    } else {
        println!("machine {} ({}): {}", setup.name, setup.source, order.join(" > "));
        println!("{:<52} {:<11} {:<70} DETAIL", "SCENARIO", "OUTCOME", "PATH");
        for r in &runs {
            println!("{:<52} {:<11} {:<70} {}", r.name, r.outcome.kind(), r.path.join(" -> "), r.outcome.detail());
        }
        println!("{} scenarios, {failures} loops or unexplained", runs.len());
    }
    if failures == 0 { EXIT_OK } else { EXIT_FAILED }
}
