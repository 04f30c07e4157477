//! `shadowed-rule`: a rule that an earlier rule always beats can never decide.
//!
//! Comparing every rule with every earlier one took minutes at 100,000
//! rules. Instead, the earlier rules are indexed by three of the dimensions
//! a rule can narrow (remote prefix, app glob, single remote port): for each
//! rule only the earlier rules that could cover it in the most selective of
//! those dimensions are compared in full. A rule set whose rules differ only
//! in port ranges wider than one port still compares those rules pairwise.

use std::collections::HashMap;
use std::hash::Hash;
use std::net::IpAddr;

use arbiter::policy::{Cidr, Glob, PortRange, Rule};

use crate::diag::Sink;
use crate::parse::Parsed;

fn is_catch_all(r: &Rule) -> bool {
    r.protocol.is_none()
        && r.remote.is_empty()
        && r.remote_ports.is_empty()
        && r.app.is_empty()
        && r.original_app.is_empty()
        && r.package.is_empty()
}

/// Every flow `inner` admits in one dimension, `outer` admits too.
fn covers<T>(outer: &[T], inner: &[T], within: impl Fn(&T, &T) -> bool) -> bool {
    outer.is_empty() || (!inner.is_empty() && inner.iter().all(|i| outer.iter().any(|o| within(o, i))))
}

fn cidr_within(o: &Cidr, i: &Cidr) -> bool {
    o.prefix <= i.prefix && o.contains(&i.addr)
}

fn range_within(o: &PortRange, i: &PortRange) -> bool {
    o.lo <= i.lo && i.hi <= o.hi
}

fn is_star(g: &Glob) -> bool {
    g.units().iter().all(|&u| u == u16::from(b'*'))
}

fn glob_within(o: &Glob, i: &Glob) -> bool {
    o == i || is_star(o)
}

/// Does rule `earlier` match every flow `later` matches?
fn subsumes(earlier: &Rule, later: &Rule) -> bool {
    (earlier.protocol.is_none() || earlier.protocol == later.protocol)
        && covers(&earlier.remote, &later.remote, cidr_within)
        && covers(&earlier.remote_ports, &later.remote_ports, range_within)
        && covers(&earlier.app, &later.app, glob_within)
        && covers(&earlier.original_app, &later.original_app, glob_within)
        && covers(&earlier.package, &later.package, |o, i| o == i)
}

/// The network address of `addr/prefix` (host bits cleared).
fn network(addr: IpAddr, prefix: u8) -> IpAddr {
    match addr {
        IpAddr::V4(a) => {
            let mask = u32::MAX.checked_shl(32u32.saturating_sub(u32::from(prefix))).unwrap_or(0);
            IpAddr::V4((u32::from(a) & mask).into())
        }
        IpAddr::V6(a) => {
            let mask = u128::MAX.checked_shl(128u32.saturating_sub(u32::from(prefix))).unwrap_or(0);
            IpAddr::V6((u128::from(a) & mask).into())
        }
    }
}

/// Earlier rules by one dimension: those that leave it open (`wild`), those
/// that cover any non-empty value in it (`always`), and the rest by key.
struct Dim<K> {
    wild: Vec<usize>,
    always: Vec<usize>,
    keyed: HashMap<K, Vec<usize>>,
}

impl<K: Hash + Eq> Dim<K> {
    fn new() -> Self {
        Self { wild: Vec::new(), always: Vec::new(), keyed: HashMap::new() }
    }

    /// The candidate lists for a rule: `None` when it leaves the dimension open
    /// (only `wild` rules can cover it), else the keys any coverer has.
    fn lists<'d>(&'d self, keys: Option<&[K]>) -> Vec<&'d [usize]> {
        let mut out = vec![self.wild.as_slice()];
        if let Some(keys) = keys {
            out.push(&self.always);
            out.extend(keys.iter().filter_map(|k| self.keyed.get(k).map(Vec::as_slice)));
        }
        out
    }
}

/// Emits `shadowed-rule` for every rule an earlier rule always beats.
pub(crate) fn shadowing(sink: &mut Sink<'_>, parsed: &[Parsed]) {
    let rules: Vec<&Rule> = parsed.iter().map(|p| &p.rule).collect();
    for (j, i) in shadowed(&rules) {
        let (Some(later), Some(earlier)) = (parsed.get(j), parsed.get(i)) else { continue };
        let why = if is_catch_all(&earlier.rule) {
            format!("the catch-all rule {:?} above matches every flow", earlier.rule.name)
        } else {
            format!("rule {:?} above matches every flow it matches", earlier.rule.name)
        };
        sink.warning(
            "shadowed-rule",
            later.anchor.clone(),
            format!("rule {:?} can never match: {why}", later.rule.name),
            "never reached",
        )
        .related(earlier.anchor.clone(), "this rule decides first")
        .help("rules are tried in file order and the first match decides: move this rule up, or remove it");
    }
}

/// `(later, earlier)` for every rule and the first earlier rule that matches
/// every flow it matches.
fn shadowed(rules: &[&Rule]) -> Vec<(usize, usize)> {
    let mut found = Vec::new();
    let mut remote: Dim<(IpAddr, u8)> = Dim::new();
    let mut app: Dim<Glob> = Dim::new();
    let mut port: Dim<u16> = Dim::new();
    for (j, &r) in rules.iter().enumerate() {
        // Keys an earlier rule covering `r` must hold, per dimension.
        let remote_keys: Option<Vec<(IpAddr, u8)>> =
            r.remote.first().map(|c| (0..=c.prefix).map(|p| (network(c.addr, p), p)).collect());
        let app_keys: Option<Vec<Glob>> = r.app.first().map(|g| vec![g.clone()]);
        let port_keys: Option<Vec<u16>> =
            r.remote_ports.first().map(|p| if p.lo == p.hi { vec![p.lo] } else { Vec::new() });
        let choices =
            [remote.lists(remote_keys.as_deref()), app.lists(app_keys.as_deref()), port.lists(port_keys.as_deref())];
        let fewest = choices.iter().min_by_key(|lists| lists.iter().map(|l| l.len()).sum::<usize>());
        let mut candidates: Vec<usize> = fewest.map(|l| l.concat()).unwrap_or_default();
        candidates.sort_unstable();
        candidates.dedup();
        if let Some(i) = candidates.into_iter().find(|&i| rules.get(i).is_some_and(|e| subsumes(e, r))) {
            found.push((j, i));
        }
        // Index this rule for the ones after it.
        if r.remote.is_empty() {
            remote.wild.push(j);
        } else {
            for c in &r.remote {
                remote.keyed.entry((network(c.addr, c.prefix), c.prefix)).or_default().push(j);
            }
        }
        if r.app.is_empty() {
            app.wild.push(j);
        } else if r.app.iter().any(is_star) {
            app.always.push(j);
        } else {
            for g in &r.app {
                app.keyed.entry(g.clone()).or_default().push(j);
            }
        }
        if r.remote_ports.is_empty() {
            port.wild.push(j);
        } else if r.remote_ports.iter().any(|p| p.lo != p.hi) {
            port.always.push(j);
        } else {
            for p in &r.remote_ports {
                port.keyed.entry(p.lo).or_default().push(j);
            }
        }
    }
    found
}

#[cfg(test)]
mod tests {
    use arbiter::Protocol;
    use arbiter::policy::Action;

    use super::*;

    /// The pairwise check the index replaces.
    fn naive(rules: &[&Rule]) -> Vec<(usize, usize)> {
        (0..rules.len()).filter_map(|j| (0..j).find(|&i| subsumes(rules[i], rules[j])).map(|i| (j, i))).collect()
    }

    #[test]
    fn the_index_finds_what_the_pairwise_check_finds() {
        // A small deterministic generator: few values per dimension, so
        // rules cover each other often.
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut next = |n: u64| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x % n
        };
        for _ in 0..200 {
            let rules: Vec<Rule> = (0..40)
                .map(|k| {
                    let mut r = Rule::any(&format!("r{k}"), Action::Proxy);
                    r.protocol = [None, Some(Protocol::TCP), Some(Protocol::UDP)][next(3) as usize];
                    for _ in 0..next(3) {
                        let prefix = [0u8, 8, 16, 24, 32][next(5) as usize];
                        let addr = IpAddr::V4([10, next(2) as u8, next(2) as u8, next(2) as u8].into());
                        r.remote.push(Cidr { addr, prefix });
                    }
                    for _ in 0..next(3) {
                        let lo = [80u16, 443, 8000][next(3) as usize];
                        let hi = if next(2) == 0 { lo } else { lo + 1000 };
                        r.remote_ports.push(PortRange { lo, hi });
                    }
                    for _ in 0..next(3) {
                        let p = ["*", "*\\a.exe", "*\\b.exe"][next(3) as usize];
                        r.app.push(Glob::new(p).unwrap());
                    }
                    r
                })
                .collect();
            let refs: Vec<&Rule> = rules.iter().collect();
            assert_eq!(shadowed(&refs), naive(&refs));
        }
    }
}
