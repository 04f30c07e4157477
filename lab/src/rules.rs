//! Loading rule sets for the lab and the replayer: a thin seam over the
//! rules crate (`arbiter_ruleset`), so errors reach this crate as rendered
//! text (every diagnostic, with file, line and column).

use std::path::Path;

use arbiter::RuleSet;

/// Loads a rules file. The error is every diagnostic, rendered.
pub fn load_file(path: &Path) -> Result<RuleSet, String> {
    arbiter_ruleset::load_file(path).map(|l| l.rules).map_err(|r| r.to_string())
}

/// Parses rules text; `origin` names it in diagnostics.
pub fn parse_str(source: &str, origin: &str) -> Result<RuleSet, String> {
    arbiter_ruleset::parse_str(source, origin).map(|l| l.rules).map_err(|r| r.to_string())
}

/// The rule set the lab uses when no shipped rules file is found: proxy all
/// TCP and UDP to `127.0.0.1:34010` / `[::1]:34010`, defaults elsewhere.
pub const LAB_FALLBACK_RULES: &str = r#"version = 1

[proxy]
v4 = "127.0.0.1:34010"
v6 = "[::1]:34010"

[[rule]]
name = "proxy everything"
action = "proxy"
"#;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fallback_rules_parse() {
        let r = parse_str(LAB_FALLBACK_RULES, "fallback").unwrap();
        assert_eq!(r.rules.len(), 1);
        assert!(r.proxy.v4.is_some() && r.proxy.v6.is_some());
    }

    #[test]
    fn unknown_keys_are_rejected_with_their_position() {
        let e = parse_str("version = 1\nbogus = 2\n", "x.toml").unwrap_err();
        assert!(e.contains("x.toml") && e.contains("bogus"), "{e}");
    }
}
