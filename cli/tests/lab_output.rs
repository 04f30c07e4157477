//! What `arbiter lab` and `arbiter explore` print reads well: the lab table
//! fits 120 columns, `--wide` keeps its columns aligned (IPv6 paths too),
//! chain pictures run top to bottom with every decision of ours, a missing
//! Graphviz is said once, and explore's counts are whole numbers.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn arbiter(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_arbiter")).args(args).current_dir(repo()).output().unwrap()
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

#[test]
fn the_default_table_fits_120_columns_and_wide_stays_aligned() {
    let out = text(&arbiter(&["lab"]).stdout);
    for line in out.lines() {
        assert!(line.chars().count() <= 120, "{} columns: {line}", line.chars().count());
    }
    assert!(out.contains("arbiter/legacy/ours-above/tcp/v4/default"), "{out}");
    let wide = text(&arbiter(&["lab", "--wide", "--peer", "compliant"]).stdout);
    let rows: Vec<&str> = wide.lines().take_while(|l| !l.is_empty()).collect();
    let header = rows[0];
    let inspected = header.find("INSPECTED BY").unwrap();
    assert!(rows.iter().any(|r| r.contains("[2606:")), "{wide}");
    for r in &rows[1..] {
        // Every row's inspected-by cell starts under its header, IPv6 paths included.
        let before = &r[..inspected];
        assert!(before.ends_with("  "), "misaligned: {r}");
        assert_ne!(r.as_bytes()[inspected], b' ', "misaligned: {r}");
    }
}

#[test]
fn pictures_run_top_to_bottom_with_every_decision_of_ours() {
    let dir = tempfile::tempdir().unwrap();
    let o = arbiter(&["lab", "--peer", "no-records", "--no-baseline", "--dot", dir.path().to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(0));
    let pic = std::fs::read_to_string(dir.path().join("arbiter_no-records_ours-above_tcp_v4_default.dot")).unwrap();
    assert!(pic.contains("rankdir=TB"), "{pic}");
    assert!(pic.contains("arbiter @connect-redirect: continue redirected-by-self"), "{pic}");
    assert!(pic.contains("arbiter @auth-connect: continue redirected-by-other-observed"), "{pic}");
}

#[test]
fn a_missing_graphviz_is_said_once() {
    let dir = tempfile::tempdir().unwrap();
    let empty = tempfile::tempdir().unwrap();
    let o = Command::new(env!("CARGO_BIN_EXE_arbiter"))
        .args(["lab", "--peer", "compliant", "--no-baseline", "--dot", dir.path().to_str().unwrap()])
        .current_dir(repo())
        .env("PATH", empty.path())
        .output()
        .unwrap();
    let err = text(&o.stderr);
    assert_eq!(err.matches("Graphviz `dot` is not installed").count(), 1, "{err}");
}

#[test]
fn explore_quick_prints_whole_numbers_and_refuses_three_connections() {
    let o = arbiter(&["explore", "--quick", "--peer", "compliant", "--no-baseline"]);
    assert_eq!(o.status.code(), Some(0));
    let out = text(&o.stdout);
    let row = out.lines().find(|l| l.starts_with("arbiter  ")).unwrap();
    assert!(row.split_whitespace().skip(1).all(|c| c.parse::<u128>().is_ok()), "{row}");
    let o = arbiter(&["explore", "--quick", "--connections", "3"]);
    assert_eq!(o.status.code(), Some(2));
}
