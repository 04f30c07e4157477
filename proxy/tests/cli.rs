//! `arbiter-proxy`'s command line: `--help` and the documented exit codes.
//! Runs on Linux and, for the Windows target, under Wine (where, as on a
//! Windows machine without the driver, the control device does not exist).

#![allow(clippy::std_instead_of_core, clippy::alloc_instead_of_core, reason = "std test: host tool")]

use std::process::{Command, Output};

fn proxy(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_arbiter-proxy")).args(args).output().unwrap()
}

#[test]
fn help_exits_0_on_stdout_with_the_exit_codes() {
    for flag in ["--help", "-h"] {
        let o = proxy(&[flag]);
        assert_eq!(o.status.code(), Some(0), "{flag}");
        let out = String::from_utf8_lossy(&o.stdout);
        assert!(out.starts_with("arbiter-proxy: "), "{out}");
        for line in ["  0  ", "  1  ", "  2  ", "  3  "] {
            assert!(out.contains(line), "{flag}: no exit code line {line:?} in {out}");
        }
        assert!(o.stderr.is_empty());
    }
}

#[test]
fn bad_arguments_exit_2_and_say_what_is_wrong() {
    for (args, says) in [
        (&["--v4", "nowhere"][..], "not an IPv4 socket address"),
        (&["--frobnicate"], "unknown argument"),
        (&["--audit-dir"], "needs a value"),
        (&["--v4", "none", "--v6", "none"], "at least one of"),
    ] {
        let o = proxy(args);
        assert_eq!(o.status.code(), Some(2), "{args:?}");
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(err.contains(says), "{args:?}: {err}");
    }
}

/// No driver here: Linux has no control device, and neither has a Windows
/// machine (or Wine) without the arbiter driver installed and started.
#[test]
fn without_the_control_device_it_exits_3_saying_why() {
    let dir = tempfile::tempdir().unwrap();
    let o = proxy(&["--v4", "127.0.0.1:0", "--v6", "none", "--no-udp", "--audit-dir", dir.path().to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(3));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("control device") && err.contains("(exit 3)"), "{err}");
    if cfg!(windows) {
        assert!(err.contains(r"\\.\ArbiterControl") && err.contains("not installed or not started"), "{err}");
    }
}
