//! Every rules file shipped under `rules/` loads clean: no errors, no warnings.
#![allow(clippy::std_instead_of_core, clippy::alloc_instead_of_core, missing_docs, reason = "tests")]

use std::path::{Path, PathBuf};

fn rules_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../rules")
}

fn toml_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            toml_files(&p, out);
        } else if p.extension().is_some_and(|x| x == "toml") {
            out.push(p);
        }
    }
}

#[test]
fn every_shipped_file_is_clean() {
    let mut files = Vec::new();
    toml_files(&rules_dir(), &mut files);
    assert!(files.len() >= 4, "default.toml and three examples: {files:?}");
    for f in &files {
        match arbiter_ruleset::load_file(f) {
            Ok(loaded) => {
                assert!(loaded.warnings.is_empty(), "{}: {:?}", f.display(), loaded.warnings);
                assert!(!loaded.rules.rules.is_empty(), "{}", f.display());
                assert_ne!(loaded.rules.id, 0);
            }
            Err(report) => panic!("{}:\n{report}", f.display()),
        }
    }
}

#[test]
fn check_command_passes_on_the_rules_folder() {
    let mut out = Vec::new();
    let code = arbiter_ruleset::check_command(&[rules_dir()], false, &mut out);
    let text = String::from_utf8(out).unwrap();
    assert_eq!(code, 0, "{text}");
    assert!(text.contains("4 files checked: 0 errors, 0 warnings"), "{text}");
}
