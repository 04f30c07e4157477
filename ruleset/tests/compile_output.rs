//! `arbiter rules compile -o OUT` never destroys what it should not: an
//! unrelated file next to OUT, the input, a symlink, a device.

use std::path::Path;

use arbiter_ruleset::compile_command;

fn default_rules() -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../rules/default.toml")
}

fn compile(input: &Path, output: &Path) -> (i32, String) {
    let mut out = Vec::new();
    let code = compile_command(input, output, false, &mut out);
    (code, String::from_utf8(out).unwrap())
}

#[test]
fn a_neighbour_named_like_the_old_temporary_file_survives() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("b.tmp"), "keep me").unwrap();
    let (code, text) = compile(&default_rules(), &dir.path().join("b.bin"));
    assert_eq!(code, 0, "{text}");
    assert_eq!(std::fs::read_to_string(dir.path().join("b.tmp")).unwrap(), "keep me");
    assert!(std::fs::read(dir.path().join("b.bin")).unwrap().len() > 16);
    // Nothing else is left behind.
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 2);
}

#[test]
fn the_input_is_never_overwritten() {
    let dir = tempfile::tempdir().unwrap();
    let rules = dir.path().join("r.toml");
    std::fs::copy(default_rules(), &rules).unwrap();
    let before = std::fs::read(&rules).unwrap();
    let (code, text) = compile(&rules, &rules);
    assert_eq!(code, 2, "{text}");
    assert!(text.contains("it is the rules file being compiled"), "{text}");
    assert_eq!(std::fs::read(&rules).unwrap(), before);
}

#[cfg(unix)]
#[test]
fn symlinks_and_devices_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let target = dir.path().join("target.bin");
    std::fs::write(&target, "old").unwrap();
    let link = dir.path().join("link.bin");
    std::os::unix::fs::symlink(&target, &link).unwrap();
    let (code, text) = compile(&default_rules(), &link);
    assert_eq!(code, 2, "{text}");
    assert!(text.contains("symbolic link"), "{text}");
    assert_eq!(std::fs::read_to_string(&target).unwrap(), "old");
    assert!(std::fs::symlink_metadata(&link).unwrap().file_type().is_symlink());
    let (code, text) = compile(&default_rules(), Path::new("/dev/null"));
    assert_eq!(code, 2, "{text}");
    assert!(text.contains("not a regular file"), "{text}");
}
