//! The audit workflow end to end: `arbiter lab --audit` writes a log,
//! `arbiter audit` reads it in both forms (binary and the service's JSON
//! lines), keeps every good record around bad ones, and `--fixture` writes a
//! fixture that replays, with a relative rules path and exact u64 handles.

use core::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use arbiter::audit::{AuditRecord, Event};

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn arbiter_in(dir: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_arbiter")).args(args).current_dir(dir).output().unwrap()
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// A log from the lab: every arbiter scenario with the default rules, compliant peer.
fn lab_log(dir: &Path) -> PathBuf {
    let log = dir.join("audit.log");
    let rules = repo().join("rules/default.toml");
    let o = arbiter_in(
        &repo(),
        &[
            "lab",
            "--peer",
            "compliant",
            "--no-baseline",
            "--rules",
            rules.to_str().unwrap(),
            "--audit",
            log.to_str().unwrap(),
        ],
    );
    assert_eq!(o.status.code(), Some(0), "{}", text(&o.stderr));
    log
}

/// The records of a binary log, each as its own bytes.
fn split(bytes: &[u8]) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    let mut at = 0;
    while at < bytes.len() {
        let (_, n) = AuditRecord::decode(&bytes[at..]).unwrap();
        out.push(bytes[at..at + n].to_vec());
        at += n;
    }
    out
}

fn hex(b: &[u8]) -> String {
    b.iter().fold(String::new(), |mut s, x| {
        let _ = write!(s, "{x:02x}");
        s
    })
}

#[test]
fn the_lab_log_decodes_checks_and_replays_as_a_fixture_with_a_relative_rules_path() {
    let dir = tempfile::tempdir().unwrap();
    let log = lab_log(dir.path());
    let o = arbiter_in(dir.path(), &["audit", "audit.log"]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o.stderr));
    assert!(text(&o.stdout).contains("rule-proxy"));
    let o = arbiter_in(dir.path(), &["audit", "--check", "audit.log"]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o.stdout));
    assert!(text(&o.stdout).ends_with(" records, 0 violations\n"), "{}", text(&o.stdout));
    // A bare OUT name: the rules path is written relative to the fixture's folder.
    let rules = repo().join("rules/default.toml");
    let o =
        arbiter_in(dir.path(), &["audit", "audit.log", "--fixture", "out.toml", "--rules", rules.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o.stderr));
    let fixture = std::fs::read_to_string(dir.path().join("out.toml")).unwrap();
    let line = fixture.lines().find(|l| l.starts_with("rules = ")).unwrap();
    assert!(line.starts_with("rules = \"../"), "{line}");
    let o = arbiter_in(dir.path(), &["replay", "out.toml"]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o.stdout));
    assert!(log.exists());
}

#[test]
fn the_services_json_lines_log_reads_like_the_binary_one() {
    let dir = tempfile::tempdir().unwrap();
    let log = lab_log(dir.path());
    let records = split(&std::fs::read(&log).unwrap());
    let mut jsonl = String::new();
    for (i, r) in records.iter().enumerate() {
        if i == 3 {
            jsonl.push_str("{\"instance\":1,\"kind\":\"lost\",\"lost\":2,\"before_seq\":9}\n");
        }
        writeln!(jsonl, "{{\"instance\":1,\"seq\":{i},\"kind\":\"connect-redirect\",\"raw\":\"{}\"}}", hex(r)).unwrap();
    }
    std::fs::write(dir.path().join("audit.jsonl"), jsonl).unwrap();
    let binary = arbiter_in(dir.path(), &["audit", "audit.log"]);
    let lines = arbiter_in(dir.path(), &["audit", "audit.jsonl"]);
    assert_eq!(lines.status.code(), Some(0), "{}", text(&lines.stderr));
    assert_eq!(text(&binary.stdout), text(&lines.stdout));
    assert!(text(&lines.stderr).contains("line 4: note: the driver dropped 2 record(s)"), "{}", text(&lines.stderr));
}

#[test]
fn unknown_kinds_are_skipped_and_bad_records_do_not_hide_good_ones() {
    let dir = tempfile::tempdir().unwrap();
    let log = lab_log(dir.path());
    let records = split(&std::fs::read(&log).unwrap());
    let total = records.len();
    // A record of kind 99 (from a newer driver), framed by its length.
    let mut future = b"AR\x01\x63".to_vec();
    future.extend_from_slice(&4u32.to_le_bytes());
    future.extend_from_slice(b"abcd");
    // A record whose body is damaged but whose header frames it.
    let mut damaged = records[1].clone();
    let last = damaged.len() - 1;
    damaged[12..last].fill(0xff);
    let mut bytes = records[0].clone();
    bytes.extend_from_slice(&future);
    bytes.extend_from_slice(&damaged);
    for r in &records[2..] {
        bytes.extend_from_slice(r);
    }
    std::fs::write(dir.path().join("mixed.log"), &bytes).unwrap();
    let o = arbiter_in(dir.path(), &["audit", "mixed.log"]);
    let (out, err) = (text(&o.stdout), text(&o.stderr));
    assert!(out.ends_with(&format!("{} records\n", total - 1)), "{out}");
    assert!(err.contains("note: a record of kind 99"), "{err}");
    assert!(err.contains("error:"), "{err}");
    assert_eq!(o.status.code(), Some(2), "{err}");
    // Only an unknown kind: a note, and success.
    let mut bytes = future.clone();
    bytes.extend_from_slice(&records[0]);
    std::fs::write(dir.path().join("future.log"), &bytes).unwrap();
    let o = arbiter_in(dir.path(), &["audit", "future.log"]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o.stderr));
    assert!(text(&o.stdout).ends_with("\n1 record\n"), "{}", text(&o.stdout));
    // Garbage in the middle: the reader finds the next record.
    let mut bytes = records[0].clone();
    bytes.extend_from_slice(b"garbage");
    bytes.extend_from_slice(&records[1]);
    std::fs::write(dir.path().join("garbage.log"), &bytes).unwrap();
    let o = arbiter_in(dir.path(), &["audit", "garbage.log"]);
    assert!(text(&o.stdout).ends_with("2 records\n"), "{}", text(&o.stdout));
    assert_eq!(o.status.code(), Some(2));
}

#[test]
fn an_empty_log_says_so() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("empty.log"), b"").unwrap();
    let o = arbiter_in(dir.path(), &["audit", "empty.log"]);
    assert!(text(&o.stderr).contains("the log is empty"), "{}", text(&o.stderr));
}

#[test]
fn handles_above_i64_max_survive_the_fixture() {
    let dir = tempfile::tempdir().unwrap();
    let log = lab_log(dir.path());
    let bytes = std::fs::read(&log).unwrap();
    let mut out = Vec::new();
    let mut at = 0;
    // Two endpoints that differ only far above i64::MAX.
    while at < bytes.len() {
        let (mut rec, n) = AuditRecord::decode(&bytes[at..]).unwrap();
        let big = |e: &mut u64| *e = u64::MAX - *e;
        match &mut rec.event {
            Event::ConnectRedirect(c) => big(&mut c.input.flow.endpoint),
            Event::AuthConnect(a) => big(&mut a.input.flow.endpoint),
            _ => {}
        }
        let start = out.len();
        out.resize(start + rec.encoded_len(), 0);
        rec.encode_into(&mut out[start..]).unwrap();
        at += n;
    }
    std::fs::write(dir.path().join("big.log"), &out).unwrap();
    let rules = repo().join("rules/default.toml");
    let o = arbiter_in(dir.path(), &["audit", "big.log", "--fixture", "big.toml", "--rules", rules.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o.stderr));
    let fixture = std::fs::read_to_string(dir.path().join("big.toml")).unwrap();
    assert!(fixture.contains("endpoint = \"0xffff"), "{fixture}");
    let o = arbiter_in(dir.path(), &["replay", "big.toml"]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o.stdout));
}
