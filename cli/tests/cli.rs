//! The `arbiter` command end to end: the fixture corpus, exit codes, JSON,
//! the lab, and audit logs.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use arbiter::Protocol;
use arbiter::audit::AuditRecord;
use arbiter_lab::profiles::Profile;
use arbiter_lab::scenario::{LabRules, Ours, Position, Scenario, run};

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn arbiter(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_arbiter")).args(args).current_dir(repo()).output().unwrap()
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

#[test]
fn the_whole_fixture_corpus_replays() {
    let o = arbiter(&["replay", "fixtures"]);
    let out = stdout(&o);
    assert_eq!(o.status.code(), Some(0), "{out}");
    let last = out.lines().last().unwrap();
    let (passed, failed) = last.split_once(" passed, ").unwrap();
    assert!(passed.parse::<usize>().unwrap() >= 40, "{last}");
    assert_eq!(failed, "0 failed");
    assert!(Path::new(&repo()).join("fixtures/recorded").read_dir().unwrap().count() > 0);
}

#[test]
fn replay_json_has_a_rate() {
    let o = arbiter(&["replay", "--json", "fixtures/table"]);
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["failed"], 0);
    assert!(v["steps"].as_u64().unwrap() > 20);
    assert!(v["steps_per_second"].as_f64().unwrap() > 0.0);
}

#[test]
fn a_failed_expectation_exits_1_naming_step_and_values() {
    let dir = tempfile::tempdir().unwrap();
    let src = std::fs::read_to_string(repo().join("fixtures/table/c14-no-rule.toml")).unwrap();
    let f = dir.path().join("wrong.toml");
    std::fs::write(&f, src.replace("reason = \"no-rule\"", "reason = \"rule-bypass\"")).unwrap();
    let o = arbiter(&["replay", f.to_str().unwrap()]);
    let out = stdout(&o);
    assert_eq!(o.status.code(), Some(1), "{out}");
    assert!(out.contains("step 1") && out.contains("reason: expected rule-bypass, got no-rule"), "{out}");
    assert!(out.ends_with("0 passed, 1 failed\n"), "{out}");
}

#[test]
fn a_malformed_fixture_exits_2_with_position_and_code() {
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("bad.toml");
    std::fs::write(&f, "name = \"x\"\n[environment]\nown_filtre = 1\n").unwrap();
    let o = arbiter(&["replay", f.to_str().unwrap()]);
    let out = stdout(&o);
    assert_eq!(o.status.code(), Some(2), "{out}");
    assert!(out.contains("bad.toml:3:1: error[unknown-key]"), "{out}");
    assert_eq!(arbiter(&["replay", "no/such/folder"]).status.code(), Some(2));
}

#[test]
fn lab_json_reports_no_failure_for_our_arbiter() {
    let o = arbiter(&["lab", "--peer", "no-records", "--peer", "sampler", "--json"]);
    assert_eq!(o.status.code(), Some(0), "{}", String::from_utf8_lossy(&o.stderr));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["failures"], 0);
    assert_eq!(v["totals"]["arbiter"]["loops"], 0);
    assert!(v["totals"]["baseline"]["loops"].as_u64().unwrap() > 0);
    assert!(v["scenarios_per_second"].as_f64().unwrap() > 0.0);
    assert_eq!(arbiter(&["lab", "--peer", "nobody"]).status.code(), Some(2));
}

#[test]
fn lab_writes_pictures_and_fixtures() {
    let dir = tempfile::tempdir().unwrap();
    let (dot, rec) = (dir.path().join("dot"), dir.path().join("rec"));
    let o = arbiter(&[
        "lab",
        "--peer",
        "compliant",
        "--rules",
        "rules/default.toml",
        "--dot",
        dot.to_str().unwrap(),
        "--record",
        rec.to_str().unwrap(),
    ]);
    assert_eq!(o.status.code(), Some(0));
    let dots =
        std::fs::read_dir(&dot).unwrap().filter(|e| e.as_ref().unwrap().path().extension().unwrap() == "dot").count();
    assert_eq!(dots, 16);
    let pic = std::fs::read_to_string(dot.join("arbiter_compliant_ours-above_tcp_v4_default.dot")).unwrap();
    assert!(pic.starts_with("digraph") && pic.contains("redirect rule-proxy"), "{pic}");
    let o = arbiter(&["replay", rec.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(0), "{}", stdout(&o));
    assert!(stdout(&o).ends_with("8 passed, 0 failed\n"));
}

fn audit_log() -> Vec<u8> {
    let s = Scenario {
        ours: Ours::Arbiter,
        peer: Profile::NoRecords,
        position: Position::Above,
        protocol: Protocol::TCP,
        v6: false,
        rules: 0,
    };
    let rules = LabRules::load(&repo().join("rules/default.toml")).unwrap();
    run(s, &[rules]).unwrap().audit_log
}

#[test]
fn audit_log_decodes_checks_and_becomes_a_fixture() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("audit.bin");
    std::fs::write(&log, audit_log()).unwrap();
    let o = arbiter(&["audit", log.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(0));
    assert!(stdout(&o).contains("loop-suspected"), "{}", stdout(&o));
    let o = arbiter(&["audit", "--check", log.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(0), "{}", stdout(&o));
    let fx = dir.path().join("from-log.toml");
    let rules = repo().join("rules/default.toml");
    let o = arbiter(&[
        "audit",
        log.to_str().unwrap(),
        "--fixture",
        fx.to_str().unwrap(),
        "--rules",
        rules.to_str().unwrap(),
    ]);
    assert_eq!(o.status.code(), Some(0), "{}", String::from_utf8_lossy(&o.stderr));
    let o = arbiter(&["replay", fx.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(0), "{}", stdout(&o));
}

#[test]
fn audit_check_lists_violations_with_their_record() {
    let bytes = audit_log();
    // Swap the first two records: sequence numbers now go backwards.
    let (_, n0) = AuditRecord::decode(&bytes).unwrap();
    let (_, n1) = AuditRecord::decode(&bytes[n0..]).unwrap();
    let mut swapped = bytes[n0..n0 + n1].to_vec();
    swapped.extend_from_slice(&bytes[..n0]);
    swapped.extend_from_slice(&bytes[n0 + n1..]);
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("audit.bin");
    std::fs::write(&log, &swapped).unwrap();
    let o = arbiter(&["audit", "--check", "--json", log.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(1));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["violations"][0]["invariant"], "order");
    assert_eq!(v["violations"][0]["index"], 1);
    assert!(v["violations"][0]["record"]["kind"].is_string());
    // Truncated logs are bad input.
    std::fs::write(&log, &bytes[..bytes.len() - 3]).unwrap();
    assert_eq!(arbiter(&["audit", log.to_str().unwrap()]).status.code(), Some(2));
}
