//! No input breaks a command: devices and oversized files are refused with a
//! clear error, symlink loops are walked once, and replay keeps its contract
//! (the closing line and the JSON always come; bad input exits 2 with
//! `file:line:col`).

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn arbiter_in(dir: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_arbiter")).args(args).current_dir(dir).output().unwrap()
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

#[test]
fn a_missing_path_still_gets_the_closing_line_and_the_json() {
    let o = arbiter_in(&repo(), &["replay", "fixtures/table", "no/such/fixture.toml"]);
    assert_eq!(o.status.code(), Some(2));
    let out = text(&o.stdout);
    assert!(out.contains("ERROR no/such/fixture.toml"), "{out}");
    assert!(out.lines().last().unwrap().ends_with(" passed, 1 failed"), "{out}");
    let o = arbiter_in(&repo(), &["replay", "--json", "no/such/fixture.toml"]);
    assert_eq!(o.status.code(), Some(2));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["failed"], 1);
    assert_eq!(v["passed"], 0);
}

#[test]
fn bad_values_exit_2_with_their_position() {
    let dir = tempfile::tempdir().unwrap();
    let src = std::fs::read_to_string(repo().join("fixtures/table/c14-no-rule.toml")).unwrap();
    let bad = src.replace("proxy_pid = 5151", "proxy_pid = 0");
    std::fs::write(dir.path().join("bad.toml"), bad).unwrap();
    let o = arbiter_in(dir.path(), &["replay", "bad.toml"]);
    assert_eq!(o.status.code(), Some(2), "{}", text(&o.stdout));
    let out = text(&o.stdout);
    assert!(out.contains("bad.toml:") && out.contains("error[bad-pid]"), "{out}");
    assert!(out.ends_with("0 passed, 1 failed\n"), "{out}");
}

#[cfg(unix)]
#[test]
fn a_symlink_loop_replays_each_fixture_once() {
    let dir = tempfile::tempdir().unwrap();
    let sub = dir.path().join("cases");
    std::fs::create_dir(&sub).unwrap();
    std::fs::copy(repo().join("fixtures/table/c14-no-rule.toml"), sub.join("one.toml")).unwrap();
    std::os::unix::fs::symlink("..", sub.join("up")).unwrap();
    let o = arbiter_in(dir.path(), &["replay", "."]);
    let out = text(&o.stdout);
    assert!(out.ends_with("1 passed, 0 failed\n"), "{out}");
    let o = arbiter_in(dir.path(), &["rules", "check", "."]);
    assert!(text(&o.stdout).contains("the folder holds no .toml files") || o.status.code() == Some(2));
}

#[cfg(unix)]
#[test]
fn devices_are_refused_everywhere() {
    if !Path::new("/dev/zero").exists() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    for args in [
        vec!["audit", "/dev/zero"],
        vec!["replay", "/dev/zero"],
        vec!["rules", "check", "/dev/zero"],
        vec!["lab", "--rules", "/dev/zero", "--peer", "compliant"],
        vec!["bench", "--rules", "/dev/zero"],
    ] {
        let o = arbiter_in(dir.path(), &args);
        let all = format!("{}{}", text(&o.stdout), text(&o.stderr));
        assert_eq!(o.status.code(), Some(2), "{args:?}: {all}");
        assert!(all.contains("is a character device, not a regular file"), "{args:?}: {all}");
    }
    // A fixture whose rules file is a device.
    let src = std::fs::read_to_string(repo().join("fixtures/cases/shipped-default-rules.toml")).unwrap();
    std::fs::write(dir.path().join("dev.toml"), src.replace("../../rules/default.toml", "/dev/zero")).unwrap();
    let o = arbiter_in(dir.path(), &["replay", "dev.toml"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(text(&o.stdout).contains("not a regular file"), "{}", text(&o.stdout));
}
