//! `arbiter wfpdiag` and `arbiter lab --setup` end to end on the published
//! samples in wfpdiag/tests/data.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn arbiter(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_arbiter")).args(args).current_dir(repo()).output().unwrap()
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

#[test]
fn the_uwp_drop_is_attributed_in_text_and_json() {
    let o = arbiter(&["wfpdiag", "wfpdiag/tests/data/uwp-case5-wfpdiag.xml"]);
    let out = stdout(&o);
    assert_eq!(o.status.code(), Some(0), "{out}{}", stderr(&o));
    assert!(out.contains("DROP tcp 10.216.117.17:52956 -> 10.1.1.1:53 at auth-connect/v4"), "{out}");
    assert!(out.contains("decided by filter 121180 \"Block Outbound Default Rule\""), "{out}");
    assert!(
        out.contains("terminating in FWPP_SUBLAYER_INTERNAL_FIREWALL_WF: filter 121165 (not in the files): permit")
    );

    let o = arbiter(&["wfpdiag", "--json", "wfpdiag/tests/data/uwp-case5-wfpdiag.xml"]);
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let e = &v["events"][0];
    assert_eq!(e["type"], "drop");
    assert_eq!(e["decided_by"]["filter"], 121_180);
    assert_eq!(e["terminating"][1]["in_files"], false);
    assert_eq!(v["order"]["auth-connect/v4"][1]["clear_action_right"], false);
}

#[test]
fn a_redirector_before_us_that_can_take_the_write_right_fails_the_check() {
    // eBPF sits far below our default weight: nothing before us, exit 0.
    let o = arbiter(&["wfpdiag", "wfpdiag/tests/data/ebpf-guide-state.xml"]);
    assert_eq!(o.status.code(), Some(0), "{}", stdout(&o));
    assert!(
        stdout(&o).contains("connect-redirect/v4  arbiter (ours, not installed) > eBPF for Windows (netebpfext.sys)")
    );
    // The same objects with their sublayers above ours: eBPF's terminating callout now classifies first.
    let text = std::fs::read_to_string(repo().join("wfpdiag/tests/data/ebpf-guide-state.xml")).unwrap();
    let raised = text
        .replace("<weight>8</weight>", "<weight>40000</weight>")
        .replace("<weight>9</weight>", "<weight>40001</weight>");
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("raised.xml");
    std::fs::write(&p, raised).unwrap();
    let o = arbiter(&["wfpdiag", p.to_str().unwrap()]);
    let out = stdout(&o);
    assert_eq!(o.status.code(), Some(1), "{out}");
    assert!(out.contains("CAN TAKE our write right"), "{out}");
}

#[test]
fn bad_input_exits_2_with_the_position() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("bad.xml");
    std::fs::write(&p, "<wfpdiag>\n  <filters>\n    <item>\n").unwrap();
    let o = arbiter(&["wfpdiag", p.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(2));
    let err = stderr(&o);
    assert!(err.contains("bad.xml: line 4, column 1: the file ends inside <item> opened at line 3, column 5"), "{err}");
    let o = arbiter(&["wfpdiag", "no/such/file.xml"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("cannot open"));
}

#[test]
fn lab_setup_round_trips_through_arbiter_lab() {
    let dir = tempfile::tempdir().unwrap();
    let setup = dir.path().join("machine.toml");
    let o = arbiter(&["wfpdiag", "wfpdiag/tests/data/ebpf-guide-state.xml", "--lab-setup", setup.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let text = std::fs::read_to_string(&setup).unwrap();
    assert!(text.contains("planned = \"netebpfext\""), "{text}");
    let o = arbiter(&["lab", "--setup", setup.to_str().unwrap(), "--json"]);
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap_or_else(|_| panic!("{}", stderr(&o)));
    assert_eq!(v["order"][0], "arbiter");
    assert_eq!(v["scenarios"].as_array().unwrap().len(), 16, "4 rule sets x TCP/UDP x v4/v6");
    assert_eq!(o.status.code(), Some(if v["failures"] == 0 { 0 } else { 1 }));
    std::fs::write(&setup, "name = \"x\"\n[[vendor]]\nname = \"a\"\nprofile = \"nope\"\n").unwrap();
    let o = arbiter(&["lab", "--setup", setup.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("exactly one vendor must have `ours = true`"), "{}", stderr(&o));
}
