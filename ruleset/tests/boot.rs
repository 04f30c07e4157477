//! The `[boot]` section: accepted forms, defaults and diagnostics.
#![allow(clippy::std_instead_of_core, clippy::alloc_instead_of_core, missing_docs, reason = "tests")]

use arbiter::boot::{BootAllow, BootConfig, BootMode};
use arbiter_ruleset::parse_str;

fn codes(source: &str) -> Vec<(&'static str, usize, usize)> {
    let diags = match parse_str(source, "boot.toml") {
        Err(report) => report.diagnostics,
        Ok(loaded) => loaded.warnings,
    };
    diags.iter().map(|d| (d.code, d.line, d.col)).collect()
}

#[test]
fn absent_section_is_open_with_dhcp_and_dns() {
    let loaded = parse_str("version = 1\n", "boot.toml").unwrap();
    assert_eq!(loaded.rules.boot, BootConfig::default());
}

#[test]
fn block_with_the_default_allow_list() {
    let loaded = parse_str("version = 1\n[boot]\nmode = \"block\"\n", "boot.toml").unwrap();
    assert_eq!(loaded.rules.boot.mode, BootMode::Block);
    assert_eq!(loaded.rules.boot.allow, BootConfig::default().allow);
    assert!(loaded.warnings.is_empty());
}

#[test]
fn allow_list_expands_sorts_and_dedups() {
    let src = "version = 1\n[boot]\nmode = \"block\"\nallow = [\"dns\", \"UDP/123\", \"dns\", \"tcp/853\"]\n";
    let loaded = parse_str(src, "boot.toml").unwrap();
    let mut want = vec![BootAllow::udp(53), BootAllow::tcp(53), BootAllow::udp(123), BootAllow::tcp(853)];
    want.sort();
    assert_eq!(loaded.rules.boot.allow, want);
}

#[test]
fn empty_allow_list_allows_only_loopback() {
    let loaded = parse_str("version = 1\n[boot]\nmode = \"block\"\nallow = []\n", "boot.toml").unwrap();
    assert!(loaded.rules.boot.allow.is_empty());
}

#[test]
fn block_mode_changes_the_rule_set_id_and_open_does_not() {
    let plain = parse_str("version = 1\n", "a.toml").unwrap().rules.id;
    let open = parse_str("version = 1\n[boot]\nmode = \"open\"\n", "b.toml").unwrap().rules.id;
    let block = parse_str("version = 1\n[boot]\nmode = \"block\"\n", "c.toml").unwrap().rules.id;
    assert_eq!(plain, open, "the default section adds nothing to the blob");
    assert_ne!(plain, block);
}

#[test]
fn errors_name_line_and_column() {
    let src = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/broken/boot.toml")).unwrap();
    assert_eq!(
        codes(&src),
        vec![
            ("unknown-boot-mode", 4, 8),
            ("bad-boot-allow", 5, 18),
            ("bad-boot-allow", 5, 25),
            ("bad-boot-allow", 5, 34),
            ("unknown-key", 6, 1),
        ]
    );
}

#[test]
fn too_long_and_unused_lists() {
    let many: Vec<String> = (1..=17).map(|p| format!("\"tcp/{p}\"")).collect();
    let src = format!("version = 1\n[boot]\nmode = \"block\"\nallow = [{}]\n", many.join(", "));
    assert_eq!(codes(&src), vec![("boot-allow-too-long", 4, 9)]);
    let src = "version = 1\n[boot]\nallow = [\"dns\"]\n";
    assert_eq!(codes(src), vec![("boot-allow-unused", 3, 9)]);
}
