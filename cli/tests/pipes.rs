//! Output that survives pipes: every subcommand piped into a reader that
//! closes after one line, and written to `/dev/full`, ends without a panic
//! (exit 0 for the closed pipe, a one-line error and exit 2 for the full
//! device).

use std::io::{BufRead as _, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// Every subcommand with arguments that make it print (small bounds so the
/// debug build stays quick).
fn commands(scratch: &Path) -> Vec<Vec<String>> {
    let s = |v: &[&str]| v.iter().map(|x| (*x).to_owned()).collect::<Vec<_>>();
    let log = scratch.join("audit.log");
    let made = Command::new(env!("CARGO_BIN_EXE_arbiter"))
        .args(["lab", "--peer", "compliant", "--no-baseline", "--audit"])
        .arg(&log)
        .current_dir(repo())
        .stdout(Stdio::null())
        .status()
        .unwrap();
    assert!(made.success());
    let log = log.display().to_string();
    let blob = scratch.join("rules.bin").display().to_string();
    vec![
        s(&["--help"]),
        s(&["replay", "fixtures"]),
        s(&["replay", "--json", "fixtures"]),
        s(&["lab", "--peer", "compliant", "--peer", "legacy"]),
        s(&["lab", "--json", "--peer", "compliant"]),
        s(&["explore", "--quick", "--vendors", "2", "--peer", "compliant", "--no-baseline"]),
        s(&["audit", &log]),
        s(&["audit", "--json", &log]),
        s(&["audit", "--check", &log]),
        s(&["rules", "check", "rules"]),
        s(&["rules", "compile", "rules/default.toml", "-o", &blob]),
        s(&["reasons"]),
        s(&["bench", "--quick"]),
    ]
}

#[test]
fn no_subcommand_panics_on_a_closed_or_full_stdout() {
    let scratch = tempfile::tempdir().unwrap();
    for args in commands(scratch.path()) {
        // A reader that takes one line and goes away.
        let mut child = Command::new(env!("CARGO_BIN_EXE_arbiter"))
            .args(&args)
            .current_dir(repo())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let mut first = String::new();
        BufReader::new(child.stdout.take().unwrap()).read_line(&mut first).unwrap();
        let o = child.wait_with_output().unwrap();
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(!err.contains("panicked"), "{args:?} | head -1 panicked: {err}");
        assert_ne!(o.status.code(), Some(101), "{args:?} | head -1: {err}");
        assert!(!first.is_empty(), "{args:?} printed nothing");

        if Path::new("/dev/full").exists() {
            let full = std::fs::OpenOptions::new().write(true).open("/dev/full").unwrap();
            let o = Command::new(env!("CARGO_BIN_EXE_arbiter"))
                .args(&args)
                .current_dir(repo())
                .stdout(full)
                .output()
                .unwrap();
            let err = String::from_utf8_lossy(&o.stderr);
            assert!(!err.contains("panicked"), "{args:?} > /dev/full panicked: {err}");
            assert_eq!(o.status.code(), Some(2), "{args:?} > /dev/full: {err}");
            assert!(err.contains("cannot write the output"), "{args:?} > /dev/full: {err}");
        }
    }
}
