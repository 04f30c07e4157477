//! Loading rule sets for the lab and the replayer.
//!
//! The real loader is `arbiter_ruleset` (ruleset/). Until it exports
//! `load_file` / `parse_str`, the [`interim`] module below stands in for it;
//! everything else in this crate calls only [`load_file`] and [`parse_str`],
//! so the swap touches this file alone.

use std::path::Path;

use arbiter::RuleSet;

/// Loads a rules file. The error is every diagnostic, rendered.
pub fn load_file(path: &Path) -> Result<RuleSet, String> {
    let source = std::fs::read_to_string(path).map_err(|e| format!("{}: cannot read: {e}", path.display()))?;
    parse_str(&source, &path.display().to_string())
}

/// Parses rules text; `origin` names it in diagnostics.
pub fn parse_str(source: &str, origin: &str) -> Result<RuleSet, String> {
    interim::parse_str(source, origin)
}

/// The rule set the lab uses when no shipped rules file is found: proxy all
/// TCP and UDP to 127.0.0.1:34010 / [::1]:34010, defaults elsewhere.
pub const LAB_FALLBACK_RULES: &str = r#"version = 1

[proxy]
v4 = "127.0.0.1:34010"
v6 = "[::1]:34010"

[[rule]]
name = "proxy everything"
action = "proxy"
"#;

/// INTERIM: a minimal rules loader, to delete once `arbiter_ruleset` exports
/// `load_file` and `parse_str`. It accepts the schema of formats.md and
/// rejects unknown keys, but reports only the first problem.
mod interim {
    use arbiter::policy::{Cidr, Glob, PortRange, ProxyListeners, Rule};
    use arbiter::{Action, LoopPolicy, PermitOrBlock, Protocol, RuleSet};
    use serde::Deserialize;

    #[derive(Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Raw {
        version: u32,
        #[serde(default)]
        proxy: RawProxy,
        #[serde(default)]
        coexistence: RawCoexistence,
        #[serde(default)]
        rule: Vec<RawRule>,
    }

    #[derive(Deserialize, Default)]
    #[serde(deny_unknown_fields)]
    struct RawProxy {
        v4: Option<String>,
        v6: Option<String>,
    }

    #[derive(Deserialize, Default)]
    #[serde(deny_unknown_fields)]
    struct RawCoexistence {
        revisit: Option<String>,
        #[serde(default)]
        trust: Vec<String>,
        #[serde(default)]
        known_proxies: Vec<String>,
        max_hops: Option<u16>,
        hop_window_ms: Option<u64>,
        on_loop: Option<String>,
    }

    #[derive(Deserialize)]
    #[serde(deny_unknown_fields)]
    struct RawRule {
        name: String,
        action: String,
        protocol: Option<String>,
        #[serde(default)]
        remote: Vec<String>,
        #[serde(default)]
        remote_ports: Vec<String>,
        #[serde(default)]
        app: Vec<String>,
        #[serde(default)]
        original_app: Vec<String>,
        #[serde(default)]
        package: Vec<String>,
    }

    pub(super) fn parse_str(source: &str, origin: &str) -> Result<RuleSet, String> {
        let raw: Raw = toml::from_str(source).map_err(|e| {
            let (line, col) = e.span().map_or((1, 1), |s| crate::fixture::line_col(source, s.start));
            format!("{origin}:{line}:{col}: error[rules-syntax]: {}", e.message())
        })?;
        build(raw).map_err(|m| format!("{origin}: error[rules-invalid]: {m}"))
    }

    fn build(raw: Raw) -> Result<RuleSet, String> {
        if raw.version != 1 {
            return Err(format!("version {} is not supported (this build reads 1)", raw.version));
        }
        let pob = |v: Option<String>, what: &str| -> Result<PermitOrBlock, String> {
            v.map_or(Ok(PermitOrBlock::Permit), |s| {
                PermitOrBlock::from_name(&s)
                    .ok_or_else(|| format!("{what}: expected \"permit\" or \"block\", got {s:?}"))
            })
        };
        let glob = |p: &String| Glob::new(p).map_err(|e| e.to_string());
        let defaults = LoopPolicy::default();
        let c = raw.coexistence;
        let loop_policy = LoopPolicy {
            revisit: pob(c.revisit, "coexistence.revisit")?,
            on_loop: pob(c.on_loop, "coexistence.on_loop")?,
            max_hops: c.max_hops.unwrap_or(defaults.max_hops).max(1),
            hop_window: c.hop_window_ms.map_or(defaults.hop_window, arbiter::Duration::from_millis),
        };
        let proxy = ProxyListeners {
            v4: raw
                .proxy
                .v4
                .as_deref()
                .map(|s| s.parse().map_err(|_| format!("proxy.v4: bad address {s:?}")))
                .transpose()?,
            v6: raw
                .proxy
                .v6
                .as_deref()
                .map(|s| s.parse().map_err(|_| format!("proxy.v6: bad address {s:?}")))
                .transpose()?,
        };
        let mut rules = Vec::new();
        for r in raw.rule {
            let action =
                Action::from_name(&r.action).ok_or_else(|| format!("rule {:?}: bad action {:?}", r.name, r.action))?;
            let protocol = match r.protocol.as_deref() {
                None | Some("any") => None,
                Some("tcp") => Some(Protocol::TCP),
                Some("udp") => Some(Protocol::UDP),
                Some(p) => return Err(format!("rule {:?}: bad protocol {p:?}", r.name)),
            };
            let remote = r
                .remote
                .iter()
                .map(|s| cidr(s).ok_or_else(|| format!("rule {:?}: bad CIDR {s:?}", r.name)))
                .collect::<Result<_, _>>()?;
            let remote_ports = r
                .remote_ports
                .iter()
                .map(|s| ports(s).ok_or_else(|| format!("rule {:?}: bad port range {s:?}", r.name)))
                .collect::<Result<_, _>>()?;
            let package = r
                .package
                .iter()
                .map(|s| arbiter::flow::SidBuf::parse(s).ok_or_else(|| format!("rule {:?}: bad SID {s:?}", r.name)))
                .collect::<Result<_, _>>()?;
            rules.push(Rule {
                name: r.name.clone(),
                action,
                protocol,
                remote,
                remote_ports,
                app: r.app.iter().map(glob).collect::<Result<_, _>>()?,
                original_app: r.original_app.iter().map(glob).collect::<Result<_, _>>()?,
                package,
            });
        }
        Ok(RuleSet {
            proxy,
            loop_policy,
            trust: c.trust.iter().map(glob).collect::<Result<_, _>>()?,
            known_proxies: c.known_proxies.iter().map(glob).collect::<Result<_, _>>()?,
            rules,
            id: 0,
        })
    }

    fn cidr(s: &str) -> Option<Cidr> {
        let (addr, prefix) = match s.split_once('/') {
            Some((a, p)) => (a.parse().ok()?, p.parse().ok()?),
            None => {
                let a: core::net::IpAddr = s.parse().ok()?;
                (a, if a.is_ipv4() { 32 } else { 128 })
            }
        };
        let max = if matches!(addr, core::net::IpAddr::V4(_)) { 32 } else { 128 };
        (prefix <= max).then_some(Cidr { addr, prefix })
    }

    fn ports(s: &str) -> Option<PortRange> {
        let (lo, hi) = match s.split_once('-') {
            Some((a, b)) => (a.trim().parse().ok()?, b.trim().parse().ok()?),
            None => {
                let p = s.trim().parse().ok()?;
                (p, p)
            }
        };
        (lo <= hi).then_some(PortRange { lo, hi })
    }
}

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
    fn unknown_keys_are_rejected() {
        let e = parse_str("version = 1\nbogus = 2\n", "x.toml").unwrap_err();
        assert!(e.contains("x.toml:2:1"), "{e}");
    }
}
