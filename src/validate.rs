//! One validator for every way rules and registrations come in.
//!
//! A rules file checked by `arbiter rules check`, a compiled blob arriving
//! over the control device (`SetRules`) and a proxy registration
//! (`RegisterProxy`) all pass through these functions: the ruleset crate
//! calls [`check_rule_set`] after parsing, the blob decoder calls it after
//! decoding, and the control handler calls [`check_listener`] on every
//! listener. So whatever the checker refuses, the driver refuses too.
//!
//! The glob limits bound the classify path: with at most
//! [`MAX_GLOB_UNITS`] units, [`MAX_GLOB_STARS`] stars and
//! [`MAX_GLOB_MIDDLE`] units between the first and last wildcard, matching
//! one pattern reads each unit of the app id once (see `compiled::globs`).

use alloc::vec::Vec;
use core::fmt;
use core::net::{IpAddr, SocketAddr};

use crate::policy::{Glob, RuleSet};

/// Longest glob pattern, in UTF-16 units.
pub const MAX_GLOB_UNITS: usize = 256;
/// Most `*` in one glob pattern.
pub const MAX_GLOB_STARS: usize = 8;
/// Most units other than `*` from a pattern's first wildcard to its last
/// (the part matched against the middle of an id, one bit each in the
/// linear matcher's state). The literal head and tail are compared directly.
pub const MAX_GLOB_MIDDLE: usize = 64;

/// Why a listener cannot be our proxy's.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ListenerError {
    /// Port 0: nothing listens there.
    ZeroPort,
    /// Neither a loopback address nor one of this host's own.
    NotLocal,
}

impl fmt::Display for ListenerError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::ZeroPort => "a proxy listener needs a non-zero port",
            Self::NotLocal => "a proxy listener must be a loopback address or one of this host's own",
        })
    }
}

/// A proxy listener must be reachable on this machine: a loopback address,
/// or an address `is_host_address` says is this host's own (the rules file
/// cannot know any, so it passes a function that says no), and a port that
/// is not 0. Unspecified, multicast and broadcast addresses are never a host's own.
pub fn check_listener(addr: SocketAddr, is_host_address: &impl Fn(IpAddr) -> bool) -> Result<(), ListenerError> {
    if addr.port() == 0 {
        return Err(ListenerError::ZeroPort);
    }
    let ip = addr.ip();
    let never = ip.is_unspecified()
        || ip.is_multicast()
        || match ip {
            IpAddr::V4(v4) => v4.is_broadcast(),
            IpAddr::V6(v6) => v6.to_ipv4_mapped().is_some(),
        };
    if ip.is_loopback() || (!never && is_host_address(ip)) { Ok(()) } else { Err(ListenerError::NotLocal) }
}

/// What is wrong with a glob pattern.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum GlobError {
    /// No units: it would only match a missing app id.
    Empty,
    /// A NUL unit: no app id holds one.
    Nul,
    /// Longer than [`MAX_GLOB_UNITS`].
    TooLong,
    /// More than [`MAX_GLOB_STARS`] stars.
    TooManyStars,
    /// More than [`MAX_GLOB_MIDDLE`] units between the first and last wildcard.
    MiddleTooLong,
}

impl fmt::Display for GlobError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Empty => f.write_str("empty pattern (it only matches a missing app id; `*` matches any)"),
            Self::Nul => f.write_str("pattern holds a NUL character"),
            Self::TooLong => write!(f, "pattern longer than {MAX_GLOB_UNITS} UTF-16 units"),
            Self::TooManyStars => write!(f, "pattern has more than {MAX_GLOB_STARS} `*`"),
            Self::MiddleTooLong => {
                write!(f, "more than {MAX_GLOB_MIDDLE} characters between the pattern's first and last wildcard")
            }
        }
    }
}

/// Checks one glob pattern's units.
pub fn check_glob(units: &[u16]) -> Result<(), GlobError> {
    if units.is_empty() {
        return Err(GlobError::Empty);
    }
    if units.contains(&0) {
        return Err(GlobError::Nul);
    }
    if units.len() > MAX_GLOB_UNITS {
        return Err(GlobError::TooLong);
    }
    let star = u16::from(b'*');
    let wild = |u: &u16| *u == star || *u == u16::from(b'?');
    if units.iter().filter(|&&u| u == star).count() > MAX_GLOB_STARS {
        return Err(GlobError::TooManyStars);
    }
    if let (Some(a), Some(b)) = (units.iter().position(wild), units.iter().rposition(wild)) {
        let middle = units.get(a..=b).unwrap_or(&[]);
        if middle.iter().filter(|&&u| u != star).count() > MAX_GLOB_MIDDLE {
            return Err(GlobError::MiddleTooLong);
        }
    }
    Ok(())
}

/// Where in a rule set a problem is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Place {
    /// `coexistence.max_hops`.
    MaxHops,
    /// `coexistence.hop_window_ms`.
    HopWindow,
    /// `proxy.v4`.
    ProxyV4,
    /// `proxy.v6`.
    ProxyV6,
    /// `coexistence.trust[i]`.
    Trust(usize),
    /// `coexistence.known_proxies[i]`.
    KnownProxy(usize),
    /// Rule `rule`'s name.
    RuleName {
        /// Rule index in file order.
        rule: usize,
    },
    /// Rule `rule`'s `app[i]`.
    App {
        /// Rule index.
        rule: usize,
        /// Pattern index.
        i: usize,
    },
    /// Rule `rule`'s `original_app[i]`.
    OriginalApp {
        /// Rule index.
        rule: usize,
        /// Pattern index.
        i: usize,
    },
}

/// What is wrong there.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Problem {
    /// `max_hops` 0: every proxied flow would be a loop.
    MaxHopsZero,
    /// `hop_window_ms` 0: no hop would ever be counted.
    HopWindowZero,
    /// A listener that cannot be ours.
    Listener(ListenerError),
    /// A bad glob pattern.
    Glob(GlobError),
    /// A second rule with the name of rule `first` (names identify rules in audit and diagnostics).
    DuplicateName {
        /// The earlier rule's index.
        first: usize,
    },
    /// Memory ran out while checking.
    OutOfMemory,
}

/// One problem and where it is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Finding {
    /// Where.
    pub place: Place,
    /// What.
    pub problem: Problem,
}

impl Finding {
    /// A stable kebab-case code, the one `arbiter rules check` reports.
    pub const fn code(&self) -> &'static str {
        match self.problem {
            Problem::MaxHopsZero => "zero-max-hops",
            Problem::HopWindowZero => "zero-hop-window",
            Problem::Listener(ListenerError::ZeroPort) => "bad-socket-addr",
            Problem::Listener(ListenerError::NotLocal) => "proxy-not-local",
            Problem::Glob(_) => "bad-glob",
            Problem::DuplicateName { .. } => "duplicate-rule-name",
            Problem::OutOfMemory => "out-of-range",
        }
    }
}

impl fmt::Display for Finding {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.place {
            Place::MaxHops => f.write_str("coexistence.max_hops: ")?,
            Place::HopWindow => f.write_str("coexistence.hop_window_ms: ")?,
            Place::ProxyV4 => f.write_str("proxy.v4: ")?,
            Place::ProxyV6 => f.write_str("proxy.v6: ")?,
            Place::Trust(i) => write!(f, "coexistence.trust[{i}]: ")?,
            Place::KnownProxy(i) => write!(f, "coexistence.known_proxies[{i}]: ")?,
            Place::RuleName { rule } => write!(f, "rule {rule}: name: ")?,
            Place::App { rule, i } => write!(f, "rule {rule}: app[{i}]: ")?,
            Place::OriginalApp { rule, i } => write!(f, "rule {rule}: original_app[{i}]: ")?,
        }
        match self.problem {
            Problem::MaxHopsZero => f.write_str("max_hops is 0"),
            Problem::HopWindowZero => f.write_str("hop_window_ms is 0: no hop would ever be counted"),
            Problem::Listener(e) => write!(f, "{e}"),
            Problem::Glob(e) => write!(f, "{e}"),
            Problem::DuplicateName { first } => write!(f, "the same name as rule {first}"),
            Problem::OutOfMemory => f.write_str("out of memory while checking"),
        }
    }
}

/// Reports every problem of `rs` to `report`, in file order (duplicate
/// names after the rest). A rule set with none is one the driver accepts.
pub fn validate_rule_set(rs: &RuleSet, mut report: impl FnMut(Finding)) {
    let mut at = |place, problem| report(Finding { place, problem });
    if rs.loop_policy.max_hops == 0 {
        at(Place::MaxHops, Problem::MaxHopsZero);
    }
    if rs.loop_policy.hop_window.as_millis() == 0 {
        at(Place::HopWindow, Problem::HopWindowZero);
    }
    // A rules file cannot prove that any address but loopback is this host's.
    let no_host = |_: IpAddr| false;
    if let Some(v4) = rs.proxy.v4
        && let Err(e) = check_listener(SocketAddr::V4(v4), &no_host)
    {
        at(Place::ProxyV4, Problem::Listener(e));
    }
    if let Some(v6) = rs.proxy.v6
        && let Err(e) = check_listener(SocketAddr::V6(v6), &no_host)
    {
        at(Place::ProxyV6, Problem::Listener(e));
    }
    let mut globs = |list: &[Glob], place: &dyn Fn(usize) -> Place| {
        for (i, g) in list.iter().enumerate() {
            if let Err(e) = check_glob(g.units()) {
                at(place(i), Problem::Glob(e));
            }
        }
    };
    globs(&rs.trust, &Place::Trust);
    globs(&rs.known_proxies, &Place::KnownProxy);
    for (rule, r) in rs.rules.iter().enumerate() {
        globs(&r.app, &|i| Place::App { rule, i });
        globs(&r.original_app, &|i| Place::OriginalApp { rule, i });
    }
    // Duplicate names: sort the indexes by name (n log n, no hashing of
    // names a rules author chose).
    let mut order: Vec<usize> = Vec::new();
    if order.try_reserve_exact(rs.rules.len()).is_err() {
        at(Place::RuleName { rule: 0 }, Problem::OutOfMemory);
        return;
    }
    order.extend(0..rs.rules.len());
    let name = |i: usize| rs.rules.get(i).map_or("", |r| r.name.as_str());
    order.sort_by(|&a, &b| name(a).cmp(name(b)).then(a.cmp(&b)));
    let mut dups: Vec<(usize, usize)> = Vec::new();
    // Sorted by (name, index): the first of each run of equal names is the earliest rule.
    let mut run_first: Option<usize> = None;
    for pair in order.windows(2) {
        if let [a, b] = *pair {
            if name(a) != name(b) {
                run_first = None;
                continue;
            }
            let first = *run_first.get_or_insert(a);
            if dups.try_reserve(1).is_err() {
                at(Place::RuleName { rule: b }, Problem::OutOfMemory);
                return;
            }
            dups.push((b, first));
        }
    }
    dups.sort_unstable();
    for (rule, first) in dups {
        at(Place::RuleName { rule }, Problem::DuplicateName { first });
    }
}

/// The first problem of `rs`, if any.
pub fn check_rule_set(rs: &RuleSet) -> Result<(), Finding> {
    let mut first = None;
    validate_rule_set(rs, |f| {
        first.get_or_insert(f);
    });
    first.map_or(Ok(()), Err)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::{Action, Rule};
    use crate::time::Duration;

    fn loopback_only(a: &str) -> Result<(), ListenerError> {
        check_listener(a.parse().unwrap(), &|_| false)
    }

    #[test]
    fn listeners_must_be_local_with_a_port() {
        assert_eq!(loopback_only("127.0.0.1:34010"), Ok(()));
        assert_eq!(loopback_only("[::1]:34010"), Ok(()));
        assert_eq!(loopback_only("127.0.0.1:0"), Err(ListenerError::ZeroPort));
        assert_eq!(loopback_only("93.184.216.34:443"), Err(ListenerError::NotLocal));
        assert_eq!(loopback_only("93.184.216.34:0"), Err(ListenerError::ZeroPort));
        assert_eq!(loopback_only("0.0.0.0:80"), Err(ListenerError::NotLocal));
        // A host address counts when the host says it is its own, never the unspecified one.
        let host = |ip: IpAddr| ip == "10.0.0.5".parse::<IpAddr>().unwrap() || ip.is_unspecified();
        assert_eq!(check_listener("10.0.0.5:34010".parse().unwrap(), &host), Ok(()));
        assert_eq!(check_listener("0.0.0.0:34010".parse().unwrap(), &host), Err(ListenerError::NotLocal));
        assert_eq!(check_listener("10.0.0.6:34010".parse().unwrap(), &host), Err(ListenerError::NotLocal));
    }

    #[test]
    fn globs_are_bounded() {
        let w = |s: &str| s.encode_utf16().collect::<Vec<_>>();
        assert_eq!(check_glob(&w("*\\app.exe")), Ok(()));
        assert_eq!(check_glob(&[]), Err(GlobError::Empty));
        assert_eq!(check_glob(&w("a\0b")), Err(GlobError::Nul));
        assert_eq!(check_glob(&w(&"a".repeat(MAX_GLOB_UNITS))), Ok(()));
        let middle = |n: usize| alloc::format!("head*{}*tail", "?".repeat(n));
        assert_eq!(check_glob(&w(&middle(MAX_GLOB_MIDDLE))), Ok(()));
        assert_eq!(check_glob(&w(&middle(MAX_GLOB_MIDDLE + 1))), Err(GlobError::MiddleTooLong));
        assert_eq!(check_glob(&w(&"a".repeat(MAX_GLOB_UNITS + 1))), Err(GlobError::TooLong));
        assert_eq!(check_glob(&w(&"*a".repeat(MAX_GLOB_STARS))), Ok(()));
        assert_eq!(check_glob(&w(&"*a".repeat(MAX_GLOB_STARS + 1))), Err(GlobError::TooManyStars));
    }

    #[test]
    fn every_problem_is_found_in_order() {
        let mut rs = RuleSet::default();
        rs.loop_policy.hop_window = Duration::from_millis(0);
        rs.proxy.v4 = Some("93.184.216.34:0".parse().unwrap());
        rs.trust.push(Glob::new("").unwrap());
        rs.rules.push(Rule::any("a", Action::Block));
        rs.rules.push(Rule::any("b", Action::Block));
        rs.rules.push(Rule::any("a", Action::Proxy));
        rs.rules.push(Rule::any("a", Action::Bypass));
        rs.rules[1].app.push(Glob::new("x\0").unwrap());
        let mut got = Vec::new();
        validate_rule_set(&rs, |f| got.push(f));
        let places: Vec<_> = got.iter().map(|f| (f.place, f.problem)).collect();
        assert_eq!(
            places,
            [
                (Place::HopWindow, Problem::HopWindowZero),
                (Place::ProxyV4, Problem::Listener(ListenerError::ZeroPort)),
                (Place::Trust(0), Problem::Glob(GlobError::Empty)),
                (Place::App { rule: 1, i: 0 }, Problem::Glob(GlobError::Nul)),
                (Place::RuleName { rule: 2 }, Problem::DuplicateName { first: 0 }),
                (Place::RuleName { rule: 3 }, Problem::DuplicateName { first: 0 }),
            ]
        );
        assert_eq!(check_rule_set(&rs).unwrap_err().place, Place::HopWindow);
        assert_eq!(check_rule_set(&RuleSet::default()), Ok(()));
    }
}
