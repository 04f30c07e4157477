//! Diagnostics for the broken rule files under `tests/broken/`: their codes,
//! positions, and (as insta snapshots) the full human rendering.
#![allow(clippy::std_instead_of_core, clippy::alloc_instead_of_core, missing_docs, reason = "tests")]

use std::path::{Path, PathBuf};

use arbiter_ruleset::{Severity, parse_str};

fn broken(name: &str) -> (String, String) {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/broken").join(name);
    (std::fs::read_to_string(&path).unwrap(), format!("broken/{name}"))
}

/// Everything a file produces, as `check` would print it.
fn rendered(name: &str) -> String {
    let (source, origin) = broken(name);
    match parse_str(&source, &origin) {
        Err(report) => report.to_string(),
        Ok(loaded) => {
            let mut out = String::new();
            for w in &loaded.warnings {
                out.push_str(&w.render(&source));
                out.push('\n');
            }
            out.push_str(&format!(
                "loaded {} rules with {} warnings\n",
                loaded.rules.rules.len(),
                loaded.warnings.len()
            ));
            out
        }
    }
}

/// `(code, line, col)` of every diagnostic.
fn codes(name: &str) -> Vec<(&'static str, usize, usize)> {
    let (source, origin) = broken(name);
    let diags = match parse_str(&source, &origin) {
        Err(report) => report.diagnostics,
        Ok(loaded) => loaded.warnings,
    };
    diags.iter().map(|d| (d.code, d.line, d.col)).collect()
}

#[test]
fn snapshots_of_every_broken_file() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/broken");
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir).unwrap().map(|e| e.unwrap().path()).collect();
    files.sort();
    assert!(files.len() >= 10);
    for f in files {
        let name = f.file_name().unwrap().to_str().unwrap().to_owned();
        insta::assert_snapshot!(name.trim_end_matches(".toml").to_owned(), rendered(&name));
    }
}

#[test]
fn unknown_keys_everywhere_are_errors() {
    assert_eq!(
        codes("unknown-keys.toml"),
        [
            ("unknown-key", 5, 1),
            ("unknown-key", 7, 2),
            ("unknown-key", 13, 1),
            ("unknown-key", 14, 1),
            ("unknown-key", 15, 1)
        ]
    );
}

#[test]
fn bad_values_are_all_reported_at_their_position() {
    let c = codes("bad-values.toml");
    let names: Vec<&str> = c.iter().map(|d| d.0).collect();
    assert_eq!(
        names,
        [
            "bad-cidr",
            "bad-cidr",
            "bad-cidr",
            "cidr-host-bits",
            "bad-cidr",
            "bad-port-range",
            "inverted-range",
            "empty-range",
            "bad-port-range",
            "bad-port-range",
            "bad-port-range",
            "bad-glob",
            "glob-not-anchored",
            "glob-forward-slash",
            "bad-sid",
            "not-package-sid",
        ]
    );
    // The prefix of "10.0.0.0/33" is pointed at, not the whole string.
    assert_eq!(c[0], ("bad-cidr", 6, 21));
}

#[test]
fn unknown_enum_values_and_zeroes() {
    let names: Vec<&str> = codes("enums.toml").iter().map(|d| d.0).collect();
    assert_eq!(
        names,
        [
            "unknown-revisit",
            "unknown-on-loop",
            "zero-max-hops",
            "zero-hop-window",
            "unknown-action",
            "unknown-protocol",
            "missing-action",
            "wrong-type",
            "wrong-type",
            "wrong-type",
        ]
    );
}

#[test]
fn proxy_listeners_must_be_loopback() {
    let names: Vec<&str> = codes("proxy.toml").iter().map(|d| d.0).collect();
    assert_eq!(names, ["proxy-not-local", "bad-socket-addr"]);
    let names: Vec<&str> = codes("proxy-port.toml").iter().map(|d| d.0).collect();
    assert_eq!(names, ["proxy-not-local", "bad-socket-addr"]);
}

#[test]
fn shadowed_rules_warn_but_load() {
    let (source, origin) = broken("shadowed.toml");
    let loaded = parse_str(&source, &origin).unwrap();
    assert_eq!(loaded.rules.rules.len(), 3);
    assert!(loaded.warnings.iter().all(|w| w.code == "shadowed-rule" && w.severity == Severity::Warning));
    assert_eq!(loaded.warnings.len(), 2);
    assert_eq!(codes("shadowed-narrow.toml"), [("shadowed-rule", 11, 8)]);
}

#[test]
fn structure_errors() {
    assert_eq!(codes("duplicate.toml"), [("duplicate-rule-name", 10, 8)]);
    assert_eq!(codes("no-version.toml"), [("missing-version", 1, 1)]);
    assert_eq!(codes("version-2.toml"), [("unsupported-version", 1, 11)]);
    assert_eq!(codes("rule-table.toml")[0].0, "wrong-type");
    assert!(codes("syntax.toml").iter().all(|d| d.0 == "toml-syntax"));
}

#[test]
fn json_report() {
    let (source, origin) = broken("duplicate.toml");
    let report = parse_str(&source, &origin).unwrap_err();
    let v: serde_json::Value = serde_json::from_str(&report.to_json()).unwrap();
    assert_eq!(v["errors"], 1);
    assert_eq!(v["diagnostics"][0]["code"], "duplicate-rule-name");
    assert_eq!(v["diagnostics"][0]["origin"], "broken/duplicate.toml");
    assert_eq!(v["diagnostics"][0]["line"], 10);
    assert_eq!(v["diagnostics"][0]["severity"], "error");
}

#[test]
fn check_command_exit_codes() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/broken");
    let mut out = Vec::new();
    assert_eq!(arbiter_ruleset::check_command(&[dir.join("shadowed.toml")], false, &mut out), 0, "warnings only");
    let text = String::from_utf8(out).unwrap();
    assert!(text.contains("shadowed-rule") && text.contains("1 file checked: 0 errors, 2 warnings"), "{text}");
    let mut out = Vec::new();
    assert_eq!(arbiter_ruleset::check_command(&[dir.join("enums.toml"), dir.join("shadowed.toml")], true, &mut out), 2);
    let v: serde_json::Value = serde_json::from_slice(&out).unwrap();
    assert_eq!(v["files"][0]["ok"], false);
    assert_eq!(v["files"][1]["ok"], true);
    let mut out = Vec::new();
    assert_eq!(arbiter_ruleset::check_command(&[dir.join("missing.toml")], false, &mut out), 2);
    let text = String::from_utf8(out).unwrap();
    // A file that cannot be read has no position and no snippet.
    assert!(
        text.starts_with(&format!("{}: error[io-error]: cannot read", dir.join("missing.toml").display())),
        "{text}"
    );
    assert!(!text.contains(":1:1") && !text.contains('╭'), "{text}");
    assert!(text.ends_with("1 file checked: 1 error, 0 warnings\n"), "{text}");
}

#[test]
fn a_folder_without_rules_files_says_so() {
    let dir = tempfile::tempdir().unwrap();
    let mut out = Vec::new();
    assert_eq!(arbiter_ruleset::check_command(&[dir.path().to_path_buf()], false, &mut out), 2);
    let text = String::from_utf8(out).unwrap();
    assert!(text.contains("the folder holds no .toml files"), "{text}");
}

#[test]
fn proxy_rules_without_a_proxy_section_warn() {
    let text = "version = 1\n[[rule]]\nname = \"web\"\naction = \"proxy\"\n";
    let loaded = parse_str(text, "p.toml").unwrap();
    let codes: Vec<_> = loaded.warnings.iter().map(|d| (d.code, d.line)).collect();
    assert_eq!(codes, [("proxy-section-missing", 3)]);
    let with = format!("{text}[proxy]\nv4 = \"127.0.0.1:34010\"\n");
    assert!(parse_str(&with, "p.toml").unwrap().warnings.is_empty());
}

#[test]
fn check_and_compile_word_counts_alike() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/broken");
    let mut out = Vec::new();
    arbiter_ruleset::check_command(&[dir.join("duplicate.toml")], false, &mut out);
    let check = String::from_utf8(out).unwrap();
    let mut out = Vec::new();
    let blob = tempfile::tempdir().unwrap();
    arbiter_ruleset::compile_command(&dir.join("duplicate.toml"), &blob.path().join("b.bin"), false, &mut out);
    let compile = String::from_utf8(out).unwrap();
    assert!(check.ends_with("1 file checked: 1 error, 0 warnings\n"), "{check}");
    assert!(compile.ends_with("1 error, 0 warnings\n"), "{compile}");
}

/// Issue 12: the rules checker and the driver apply one validator, so the
/// classify path's glob limits (length, stars) are refused here too.
#[test]
fn the_drivers_glob_limits_are_refused_here() {
    use arbiter::validate::{MAX_GLOB_STARS, MAX_GLOB_UNITS};
    let long = "a".repeat(MAX_GLOB_UNITS + 1);
    let starry = "*a".repeat(MAX_GLOB_STARS + 1);
    for pattern in [long, starry] {
        let src = format!("version = 1\n\n[[rule]]\nname = \"r\"\naction = \"block\"\napp = ['{pattern}']\n");
        let report = parse_str(&src, "limits.toml").unwrap_err();
        let d: Vec<_> =
            report.diagnostics.iter().filter(|d| d.severity == Severity::Error).map(|d| (d.code, d.line)).collect();
        assert_eq!(d, [("bad-glob", 4)], "{pattern}");
    }
    let ok = format!(
        "version = 1\n\n[[rule]]\nname = \"r\"\naction = \"block\"\napp = ['{}']\n",
        "*a".repeat(MAX_GLOB_STARS)
    );
    assert!(parse_str(&ok, "limits.toml").is_ok());
}
