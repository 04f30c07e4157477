//! The rules seam: what rows C8..C14 ask of the loaded rule set.
//!
//! The state machine only sees the [`Policy`] trait. [`RuleSet`] is the rule
//! set as data plus the reference first-match scan (the "naive" matcher the
//! compiled matcher is checked against); the compiled matcher implements the
//! same trait, so swapping one for the other never touches the state machine.

use alloc::string::String;
use alloc::vec::Vec;
use core::fmt;
use core::net::{IpAddr, SocketAddrV4, SocketAddrV6};

use crate::flow::{AppId, Flow, Protocol, SidBuf, fold_unit};
use crate::time::Duration;

/// What a rule does with a matching flow.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Action {
    /// Send the flow to our proxy (C10, C11).
    Proxy = 1,
    /// Block it (C12).
    Block = 2,
    /// Leave it alone (C13).
    Bypass = 3,
}

impl Action {
    /// The rules-file name.
    pub const fn name(self) -> &'static str {
        match self {
            Self::Proxy => "proxy",
            Self::Block => "block",
            Self::Bypass => "bypass",
        }
    }

    /// Parses a rules-file name.
    pub fn from_name(s: &str) -> Option<Self> {
        match s {
            "proxy" => Some(Self::Proxy),
            "block" => Some(Self::Block),
            "bypass" => Some(Self::Bypass),
            _ => None,
        }
    }

    /// From the wire code.
    pub const fn from_u8(v: u8) -> Option<Self> {
        match v {
            1 => Some(Self::Proxy),
            2 => Some(Self::Block),
            3 => Some(Self::Bypass),
            _ => None,
        }
    }
}

/// The first rule that matched a flow.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct RuleHit {
    /// Index of the rule in file order.
    pub index: u32,
    /// Its action.
    pub action: Action,
}

/// `permit` or `block`, for `coexistence.revisit` and `coexistence.on_loop`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub enum PermitOrBlock {
    /// Soft permit (the default).
    #[default]
    Permit = 1,
    /// Hard block.
    Block = 2,
}

impl PermitOrBlock {
    /// The rules-file name.
    pub const fn name(self) -> &'static str {
        match self {
            Self::Permit => "permit",
            Self::Block => "block",
        }
    }

    /// Parses a rules-file name.
    pub fn from_name(s: &str) -> Option<Self> {
        match s {
            "permit" => Some(Self::Permit),
            "block" => Some(Self::Block),
            _ => None,
        }
    }

    /// From the wire code.
    pub const fn from_u8(v: u8) -> Option<Self> {
        match v {
            1 => Some(Self::Permit),
            2 => Some(Self::Block),
            _ => None,
        }
    }
}

/// The scalar part of `[coexistence]` that C3 and C8 read.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct LoopPolicy {
    /// C3: what to do on `previously-redirected-by-self`.
    pub revisit: PermitOrBlock,
    /// C8: what to do when a loop is suspected.
    pub on_loop: PermitOrBlock,
    /// C8: proxied hops per destination allowed within the window (at least 1).
    pub max_hops: u16,
    /// C8: the window.
    pub hop_window: Duration,
}

impl Default for LoopPolicy {
    fn default() -> Self {
        Self {
            revisit: PermitOrBlock::Permit,
            on_loop: PermitOrBlock::Permit,
            max_hops: 3,
            hop_window: Duration::from_millis(5000),
        }
    }
}

/// What the state machine asks of a rule set. Implementations must be pure
/// functions of their arguments (invariant 5) and must not allocate.
pub trait Policy {
    /// C3/C8 parameters.
    fn loop_policy(&self) -> LoopPolicy;
    /// C10..C14: the first rule matching the flow, in file order.
    fn first_match(&self, flow: &Flow<'_>) -> Option<RuleHit>;
    /// C9: the app id matches `coexistence.trust`.
    fn is_trusted(&self, app: &AppId<'_>) -> bool;
    /// C8: the app id matches `coexistence.known_proxies`.
    fn is_known_proxy(&self, app: &AppId<'_>) -> bool;
    /// An identifier of this rule set's content (the blob checksum), recorded
    /// in audit records so a replay can tell which rules decided.
    fn id(&self) -> u32 {
        0
    }
    /// The `[boot] mode`: what the driver's boot guard falls back to while
    /// our proxy is away.
    fn boot_mode(&self) -> crate::boot::BootMode {
        crate::boot::BootMode::Open
    }
}

/// An app-id glob: `*` matches any run of code units, `?` exactly one; case
/// is folded as for [`AppId`]. Stored as folded UTF-16 units.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct Glob {
    units: Vec<u16>,
}

/// Glob pattern code units for `*` and `?`.
const STAR: u16 = b'*' as u16;
const QUESTION: u16 = b'?' as u16;

impl Glob {
    /// Compiles a pattern; fails only when memory is short.
    pub fn new(pattern: &str) -> Result<Self, alloc::collections::TryReserveError> {
        let mut units = Vec::new();
        units.try_reserve_exact(pattern.encode_utf16().count())?;
        units.extend(pattern.encode_utf16().map(fold_unit));
        Ok(Self { units })
    }

    /// The folded pattern units.
    pub fn units(&self) -> &[u16] {
        &self.units
    }

    /// True when the pattern has no wildcard.
    pub fn is_literal(&self) -> bool {
        !self.units.iter().any(|&u| u == STAR || u == QUESTION)
    }

    /// Does the app id match? Iterative wildcard matching with one backtrack
    /// point: O(pattern × subject) at worst, no recursion, no allocation.
    pub fn matches(&self, app: &AppId<'_>) -> bool {
        glob_match(&self.units, app)
    }
}

impl fmt::Debug for Glob {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let s: String =
            char::decode_utf16(self.units.iter().copied()).map(|r| r.unwrap_or(char::REPLACEMENT_CHARACTER)).collect();
        write!(f, "{s:?}")
    }
}

/// Matches folded pattern units against an app id.
pub fn glob_match(pattern: &[u16], app: &AppId<'_>) -> bool {
    let n = app.len_units();
    let (mut p, mut s) = (0usize, 0usize);
    // Where to resume after the last `*`: (pattern index after it, subject index).
    let mut resume: Option<(usize, usize)> = None;
    loop {
        let pc = pattern.get(p).copied();
        let sc = app.unit(s).map(fold_unit);
        match (pc, sc) {
            (Some(STAR), _) => {
                resume = Some((p.saturating_add(1), s));
                p = p.saturating_add(1);
            }
            (Some(c), Some(u)) if c == QUESTION || c == u => {
                p = p.saturating_add(1);
                s = s.saturating_add(1);
            }
            (None, None) => return true,
            _ => match resume {
                // Let the last `*` swallow one more unit and retry.
                Some((rp, rs)) if rs < n => {
                    let next = rs.saturating_add(1);
                    resume = Some((rp, next));
                    p = rp;
                    s = next;
                }
                _ => return false,
            },
        }
    }
}

/// An address prefix.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Cidr {
    /// The network address (host bits are ignored).
    pub addr: IpAddr,
    /// Prefix length: at most 32 for IPv4, 128 for IPv6.
    pub prefix: u8,
}

impl Cidr {
    /// Does the prefix contain `ip`? Families never match each other.
    pub fn contains(&self, ip: &IpAddr) -> bool {
        match (self.addr, ip) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => {
                let bits = u32::from(self.prefix.min(32));
                let mask = u32::MAX.checked_shl(32u32.saturating_sub(bits)).unwrap_or(0);
                (u32::from(net) & mask) == (u32::from(*ip) & mask)
            }
            (IpAddr::V6(net), IpAddr::V6(ip)) => {
                let bits = u32::from(self.prefix.min(128));
                let mask = u128::MAX.checked_shl(128u32.saturating_sub(bits)).unwrap_or(0);
                (u128::from(net) & mask) == (u128::from(*ip) & mask)
            }
            _ => false,
        }
    }
}

/// An inclusive port range.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct PortRange {
    /// First port.
    pub lo: u16,
    /// Last port (at least `lo`).
    pub hi: u16,
}

impl PortRange {
    /// Does the range hold `port`?
    pub const fn contains(&self, port: u16) -> bool {
        self.lo <= port && port <= self.hi
    }
}

/// One `[[rule]]`. Empty lists mean "any".
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rule {
    /// `name`.
    pub name: String,
    /// `action`.
    pub action: Action,
    /// `protocol`; `None` is `any`.
    pub protocol: Option<Protocol>,
    /// `remote` CIDRs.
    pub remote: Vec<Cidr>,
    /// `remote_ports`.
    pub remote_ports: Vec<PortRange>,
    /// `app` globs.
    pub app: Vec<Glob>,
    /// `original_app` globs.
    pub original_app: Vec<Glob>,
    /// `package` SIDs.
    pub package: Vec<SidBuf>,
}

impl Rule {
    /// A rule with the given action that matches everything.
    pub fn any(name: &str, action: Action) -> Self {
        Self {
            name: String::from(name),
            action,
            protocol: None,
            remote: Vec::new(),
            remote_ports: Vec::new(),
            app: Vec::new(),
            original_app: Vec::new(),
            package: Vec::new(),
        }
    }

    /// Does the rule match the flow? Every given condition must hold.
    pub fn matches(&self, flow: &Flow<'_>) -> bool {
        self.protocol.is_none_or(|p| p == flow.protocol)
            && (self.remote.is_empty() || self.remote.iter().any(|c| c.contains(&flow.remote.ip())))
            && (self.remote_ports.is_empty() || self.remote_ports.iter().any(|r| r.contains(flow.remote.port())))
            && (self.app.is_empty() || self.app.iter().any(|g| g.matches(&flow.app)))
            && (self.original_app.is_empty() || self.original_app.iter().any(|g| g.matches(&flow.original_app)))
            && (self.package.is_empty() || flow.package.is_some_and(|p| self.package.iter().any(|s| s.as_sid() == p)))
    }
}

/// `[proxy]`: where proxied flows are sent, per family.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub struct ProxyListeners {
    /// `proxy.v4`.
    pub v4: Option<SocketAddrV4>,
    /// `proxy.v6`.
    pub v6: Option<SocketAddrV6>,
}

/// A whole rule set as data: what the rules file says, validated.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct RuleSet {
    /// `[proxy]`.
    pub proxy: ProxyListeners,
    /// The scalars of `[coexistence]`.
    pub loop_policy: LoopPolicy,
    /// `coexistence.trust`.
    pub trust: Vec<Glob>,
    /// `coexistence.known_proxies`.
    pub known_proxies: Vec<Glob>,
    /// `[[rule]]`, in file order.
    pub rules: Vec<Rule>,
    /// `[boot]`: what happens before arbiter is ready.
    pub boot: crate::boot::BootConfig,
    /// Content identifier (see [`Policy::id`]).
    pub id: u32,
}

impl Policy for RuleSet {
    fn loop_policy(&self) -> LoopPolicy {
        self.loop_policy
    }

    /// The reference semantics: scan rules in file order.
    fn first_match(&self, flow: &Flow<'_>) -> Option<RuleHit> {
        self.rules
            .iter()
            .zip(0u32..)
            .find(|(r, _)| r.matches(flow))
            .map(|(r, index)| RuleHit { index, action: r.action })
    }

    fn is_trusted(&self, app: &AppId<'_>) -> bool {
        self.trust.iter().any(|g| g.matches(app))
    }

    fn is_known_proxy(&self, app: &AppId<'_>) -> bool {
        self.known_proxies.iter().any(|g| g.matches(app))
    }

    fn id(&self) -> u32 {
        self.id
    }

    fn boot_mode(&self) -> crate::boot::BootMode {
        self.boot.mode
    }
}

/// A boxed policy: the compiled rules are over 1.5 KiB, and a kernel caller
/// keeps them in pool memory rather than inline in its state.
impl<P: Policy + ?Sized> Policy for alloc::boxed::Box<P> {
    fn loop_policy(&self) -> LoopPolicy {
        (**self).loop_policy()
    }
    fn first_match(&self, flow: &Flow<'_>) -> Option<RuleHit> {
        (**self).first_match(flow)
    }
    fn is_trusted(&self, app: &AppId<'_>) -> bool {
        (**self).is_trusted(app)
    }
    fn is_known_proxy(&self, app: &AppId<'_>) -> bool {
        (**self).is_known_proxy(app)
    }
    fn id(&self) -> u32 {
        (**self).id()
    }
    fn boot_mode(&self) -> crate::boot::BootMode {
        (**self).boot_mode()
    }
}

impl<P: Policy + ?Sized> Policy for &P {
    fn loop_policy(&self) -> LoopPolicy {
        (**self).loop_policy()
    }
    fn first_match(&self, flow: &Flow<'_>) -> Option<RuleHit> {
        (**self).first_match(flow)
    }
    fn is_trusted(&self, app: &AppId<'_>) -> bool {
        (**self).is_trusted(app)
    }
    fn is_known_proxy(&self, app: &AppId<'_>) -> bool {
        (**self).is_known_proxy(app)
    }
    fn id(&self) -> u32 {
        (**self).id()
    }
    fn boot_mode(&self) -> crate::boot::BootMode {
        (**self).boot_mode()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::vec::Vec;

    fn wide(s: &str) -> Vec<u8> {
        s.encode_utf16().flat_map(u16::to_le_bytes).collect()
    }

    fn m(p: &str, s: &str) -> bool {
        let w = wide(s);
        Glob::new(p).unwrap().matches(&AppId::from_utf16le(&w))
    }

    #[test]
    fn globs() {
        assert!(m(r"*\browser.exe", r"\device\harddiskvolume3\apps\Browser.EXE"));
        assert!(!m(r"*\browser.exe", r"\device\x\notbrowser.exe.bak"));
        assert!(m("a?c", "abc"));
        assert!(!m("a?c", "ac"));
        assert!(m("*", ""));
        assert!(m("**a**", "xxaxx"));
        assert!(!m("", "a"));
        assert!(m("*a*b", "aaab"));
        assert!(!m("*a*b", "aaabc"));
    }

    #[test]
    fn cidrs() {
        let c = Cidr { addr: "10.0.0.0".parse().unwrap(), prefix: 8 };
        assert!(c.contains(&"10.1.2.3".parse().unwrap()));
        assert!(!c.contains(&"11.1.2.3".parse().unwrap()));
        assert!(!c.contains(&"::1".parse().unwrap()));
        let all = Cidr { addr: "0.0.0.0".parse().unwrap(), prefix: 0 };
        assert!(all.contains(&"255.1.2.3".parse().unwrap()));
        let v6 = Cidr { addr: "fe80::".parse().unwrap(), prefix: 10 };
        assert!(v6.contains(&"fe80::1".parse().unwrap()));
        assert!(!v6.contains(&"fec0::1".parse().unwrap()));
        let host = Cidr { addr: "::1".parse().unwrap(), prefix: 128 };
        assert!(host.contains(&"::1".parse().unwrap()));
    }
}
