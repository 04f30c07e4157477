//! The decision table itself, as pure functions.
//!
//! `connect_redirect` and `auth_connect` read only their arguments: the
//! indication, the environment (our filter id, our proxy), the loop policy,
//! and the *facts* the tables and rules supply. Facts are asked for lazily,
//! through [`ConnectFacts`], so rows that are decided early never pay for a
//! rule match or a table lookup; the live arbiter answers from its tables and
//! memoizes each answer in [`Consulted`], which goes into the audit record.
//! Replaying a record answers from that memo, so the same function gives the
//! same outcome (invariant 5), and a replay that asks for a fact the original
//! decision did not consult is a detected divergence.

use core::net::{IpAddr, SocketAddr, SocketAddrV4, SocketAddrV6};

use crate::context::RedirectContext;
use crate::flow::{AuthConnectInput, ConnectRedirectInput, ConnectRedirectRef, Family, Flow, RedirectState};
use crate::policy::{Action, LoopPolicy, PermitOrBlock, RuleHit};
use crate::reason::Reason;

/// What the callout does (decision-table.md, "Verdicts").
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Verdict {
    /// FWP_ACTION_CONTINUE, layer data untouched.
    Continue = 0,
    /// Soft FWP_ACTION_PERMIT (write right kept).
    Permit = 1,
    /// Hard FWP_ACTION_BLOCK (write right cleared).
    Block = 2,
    /// Rewrite to our proxy listener.
    Proxy = 3,
}

impl Verdict {
    /// The name used in fixtures and reports.
    pub const fn name(self) -> &'static str {
        match self {
            Self::Continue => "continue",
            Self::Permit => "permit",
            Self::Block => "block",
            Self::Proxy => "proxy",
        }
    }

    /// Parses a fixture name.
    pub fn from_name(s: &str) -> Option<Self> {
        match s {
            "continue" => Some(Self::Continue),
            "permit" => Some(Self::Permit),
            "block" => Some(Self::Block),
            "proxy" => Some(Self::Proxy),
            _ => None,
        }
    }

    /// From the wire code.
    pub const fn from_u8(v: u8) -> Option<Self> {
        match v {
            0 => Some(Self::Continue),
            1 => Some(Self::Permit),
            2 => Some(Self::Block),
            3 => Some(Self::Proxy),
            _ => None,
        }
    }
}

impl From<PermitOrBlock> for Verdict {
    fn from(v: PermitOrBlock) -> Self {
        match v {
            PermitOrBlock::Permit => Self::Permit,
            PermitOrBlock::Block => Self::Block,
        }
    }
}

/// Our proxy, as the user-mode service registered it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ProxyRegistration {
    /// Its process id.
    pub pid: u64,
    /// Its IPv4 listener.
    pub v4: Option<SocketAddrV4>,
    /// Its IPv6 listener.
    pub v6: Option<SocketAddrV6>,
}

/// What the table compares against besides the indication.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub struct Env {
    /// Our callout filter's id (previousVersion entries compare to it).
    pub own_filter: u64,
    /// Our proxy, once registered.
    pub proxy: Option<ProxyRegistration>,
}

/// Where a `proxy` verdict sends the flow.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct RedirectTarget {
    /// The rewritten remote address (our listener, in the flow's zone).
    pub remote: SocketAddr,
    /// localRedirectTargetPID.
    pub target_pid: u64,
    /// localRedirectContext.
    pub context: RedirectContext,
}

/// A verdict, its reason, and for `proxy` where to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Outcome {
    /// The verdict.
    pub verdict: Verdict,
    /// Why.
    pub reason: Reason,
    /// Set exactly when `verdict` is `proxy`.
    pub redirect: Option<RedirectTarget>,
}

impl Outcome {
    pub(crate) const fn of(verdict: Verdict, reason: Reason) -> Self {
        Self { verdict, reason, redirect: None }
    }
}

/// The facts rows C8..C14 read, asked for lazily.
pub trait ConnectFacts {
    /// The first matching rule (C8, C10..C14).
    fn rule(&mut self) -> Option<RuleHit>;
    /// The connecting app matches `coexistence.trust` (C8, C9).
    fn trusted(&mut self) -> bool;
    /// The connecting process is a known local proxy (C8).
    fn known_local_proxy(&mut self) -> bool;
    /// Proxied hops to this destination within the window (C8).
    fn hops(&mut self) -> u16;
}

/// The facts one connect-redirect decision consulted (`None`: not asked).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub struct Consulted {
    /// [`ConnectFacts::rule`].
    pub rule: Option<Option<RuleHit>>,
    /// [`ConnectFacts::trusted`].
    pub trusted: Option<bool>,
    /// [`ConnectFacts::known_local_proxy`].
    pub known_local_proxy: Option<bool>,
    /// [`ConnectFacts::hops`].
    pub hops: Option<u16>,
}

/// Answers from a record's memo; remembers if asked for something missing.
#[derive(Debug)]
pub struct Recorded {
    facts: Consulted,
    /// A fact was asked for that the original decision did not consult.
    pub diverged: bool,
}

impl Recorded {
    /// Answers from `facts`.
    pub const fn new(facts: Consulted) -> Self {
        Self { facts, diverged: false }
    }

    fn or_diverge<T: Default>(&mut self, v: Option<T>) -> T {
        v.unwrap_or_else(|| {
            self.diverged = true;
            T::default()
        })
    }
}

impl ConnectFacts for Recorded {
    fn rule(&mut self) -> Option<RuleHit> {
        let r = self.facts.rule;
        self.or_diverge(r)
    }
    fn trusted(&mut self) -> bool {
        let r = self.facts.trusted;
        self.or_diverge(r)
    }
    fn known_local_proxy(&mut self) -> bool {
        let r = self.facts.known_local_proxy;
        self.or_diverge(r)
    }
    fn hops(&mut self) -> u16 {
        let r = self.facts.hops;
        self.or_diverge(r)
    }
}

/// The zone rule: send the flow to our listener's port on loopback (the
/// listener's own address) when the local address is unspecified, else on the
/// flow's local address, so the redirected flow never crosses a TCP/IP zone.
fn proxy_target(flow: &Flow<'_>, proxy: &ProxyRegistration) -> Option<SocketAddr> {
    // The proxy listens on loopback only (`proxy-not-local`: a rules file
    // cannot prove any other address is this machine's), so every flow goes
    // to the registered listener. decision-table.md's zone rule (the flow's
    // own local address with the listener's port) would send a bound flow
    // where nothing listens; formats.md's example (`127.0.0.1:34010` for a
    // flow from `10.0.0.5`) is what the proxy can accept.
    match flow.family() {
        Family::V4 => proxy.v4.map(SocketAddr::V4),
        Family::V6 => proxy.v6.map(SocketAddr::V6),
    }
}

/// A `proxy` outcome, or `proxy-unavailable` when no listener serves the
/// flow's family.
fn proxy(flow: &Flow<'_>, env: &Env, reason: Reason) -> Outcome {
    match env.proxy.as_ref().and_then(|p| Some((p, proxy_target(flow, p)?))) {
        Some((p, remote)) => Outcome {
            verdict: Verdict::Proxy,
            reason,
            redirect: Some(RedirectTarget {
                remote,
                target_pid: p.pid,
                context: RedirectContext { original_remote: flow.remote, original_local: flow.local, pid: flow.pid },
            }),
        },
        None => Outcome::of(Verdict::Continue, Reason::ProxyUnavailable),
    }
}

/// FWPM_LAYER_ALE_CONNECT_REDIRECT: rows C1..C14, first match wins.
pub fn connect_redirect(
    input: &ConnectRedirectInput<'_>,
    env: &Env,
    loops: &LoopPolicy,
    facts: &mut impl ConnectFacts,
) -> Outcome {
    connect_redirect_row(&input.as_parts(), env, loops, facts).outcome(&input.flow, env)
}

/// The row of [`connect_redirect`] that decides, before its outcome is
/// built: a few bytes, where an [`Outcome`] with its redirect target is
/// some 120. The kernel's classify path asks the facts (and so matches the
/// rules) holding only this, and builds the outcome afterwards.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Row {
    /// A verdict without a redirect.
    Of(Verdict, Reason),
    /// Proxy the flow ([`proxy`]: or `proxy-unavailable`).
    Proxy(Reason),
}

impl Row {
    /// The outcome of this row for `flow`.
    pub(crate) fn outcome(self, flow: &Flow<'_>, env: &Env) -> Outcome {
        match self {
            Self::Of(verdict, reason) => Outcome::of(verdict, reason),
            Self::Proxy(reason) => proxy(flow, env, reason),
        }
    }
}

/// Rows C1..C14 of [`connect_redirect`], up to the outcome. Always
/// inlined: no frame of its own above the rule match on the classify path.
#[inline(always)]
pub(crate) fn connect_redirect_row(
    input: &ConnectRedirectRef<'_, '_>,
    env: &Env,
    loops: &LoopPolicy,
    facts: &mut impl ConnectFacts,
) -> Row {
    use RedirectState::{PreviouslyRedirectedBySelf, RedirectedByOther, RedirectedBySelf};
    use Verdict::{Continue, Permit};
    let flow = input.flow;

    // Rows C1..C4 read only the indication: one match on the tuple.
    match (flow.protocol.is_tcp_or_udp(), input.state, input.write_right) {
        // C1: we only redirect TCP and UDP; ICMP and raw sockets pass through.
        (false, _, _) => return Row::Of(Continue, Reason::UnsupportedProtocol),
        // C2: our proxy's outbound that carries the records it copied: the
        // chain is ours and already ends at the real destination.
        (true, RedirectedBySelf, _) => return Row::Of(Continue, Reason::RedirectedBySelf),
        // C3: A -> B -> back at A. Redirecting again would loop; the deployment
        // chooses whether the returning flow may go on or is stopped.
        (true, PreviouslyRedirectedBySelf, _) => {
            return match loops.revisit {
                PermitOrBlock::Permit => Row::Of(Permit, Reason::RevisitPermitted),
                PermitOrBlock::Block => Row::Of(Verdict::Block, Reason::RevisitBlocked),
            };
        }
        // C4: someone above us hard-permitted or blocked; we may only veto,
        // and nothing here warrants a veto.
        (true, _, false) => return Row::Of(Continue, Reason::NoWriteRight),
        (true, _, true) => {}
    }

    // Extension after C4: a chain we could not hold whole cannot rule out C5
    // or C6, so do not touch the flow.
    if input.previous.overflowed() {
        return Row::Of(Continue, Reason::ChainTooLong);
    }
    // C5: another vendor is sending this flow to its local proxy right now.
    // Overriding its local redirect handle is what makes two proxies fight.
    if input.previous.entries().any(|e| e.filter != env.own_filter && e.local_redirect_handle) {
        return Row::Of(Permit, Reason::LocalProxyOfOther);
    }
    // C6: we modified this flow already in this classification: this is the
    // reauthorization our REAUTHORIZE_IF_MODIFIED_BY_OTHERS asked for.
    if input.previous.entries().any(|e| e.filter == env.own_filter) {
        return Row::Of(Continue, Reason::ModifiedBySelf);
    }
    // C7: our proxy's own outbound without records (it did not propagate, or
    // another vendor redirected it): never send our proxy to itself.
    if env.proxy.is_some_and(|p| p.pid == flow.pid) {
        return Row::Of(Permit, Reason::OwnProxyOutbound);
    }

    let by_other = input.state == RedirectedByOther;
    // C9 comes before the rule lookup: a trusted vendor's redirected flow is
    // left alone whatever the rules say, and so can never be "would proxy" (C8).
    if by_other && facts.trusted() {
        return Row::Of(Continue, Reason::TrustedOther);
    }
    match facts.rule().map(|r| r.action) {
        Some(Action::Proxy) => {
            // C8: the flow would be proxied, but a local proxy keeps sending
            // this destination back through us: records were lost somewhere.
            if facts.known_local_proxy() && facts.hops() >= loops.max_hops {
                return Row::Of(loops.on_loop.into(), Reason::LoopSuspected);
            }
            // C10 / C11.
            let reason = if by_other { Reason::UntrustedOtherProxied } else { Reason::RuleProxy };
            Row::Proxy(reason)
        }
        // C12.
        Some(Action::Block) => Row::Of(Verdict::Block, Reason::RuleBlock),
        // C13.
        Some(Action::Bypass) => Row::Of(Continue, Reason::RuleBypass),
        // C14.
        None => Row::Of(Continue, Reason::NoRule),
    }
}

/// What the endpoint table held for an endpoint at auth-connect.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum EndpointEntry {
    /// A verdict decided at connect-redirect and enforced here (A1, A2).
    Cached {
        /// `block` or `permit`.
        verdict: PermitOrBlock,
        /// The connect-redirect reason.
        reason: Reason,
    },
    /// We proxied this endpoint (A3..A5).
    Proxied {
        /// The localRedirectTargetPID we set.
        target_pid: u64,
        /// The destination the application asked for.
        destination: SocketAddr,
    },
}

fn same_endpoint(a: &SocketAddr, b: &SocketAddr) -> bool {
    // Flow info never matters; a scope id WFP did not report (0) matches any.
    let ip_eq = match (a.ip(), b.ip()) {
        (IpAddr::V4(x), IpAddr::V4(y)) => x == y,
        (IpAddr::V6(x), IpAddr::V6(y)) => x == y,
        _ => false,
    };
    let scope_eq = match (a, b) {
        (SocketAddr::V6(x), SocketAddr::V6(y)) => {
            x.scope_id() == y.scope_id() || x.scope_id() == 0 || y.scope_id() == 0
        }
        _ => true,
    };
    ip_eq && scope_eq && a.port() == b.port()
}

/// FWPM_LAYER_ALE_AUTH_CONNECT: rows A1..A7, first match wins. `entry` is
/// what the endpoint table held (live) for this endpoint.
pub fn auth_connect(input: &AuthConnectInput<'_>, entry: Option<EndpointEntry>) -> Outcome {
    use Verdict::{Block, Continue, Permit};
    match (entry, input.redirected) {
        // A1: redirect layers cannot reliably block, so a block decided at
        // connect-redirect is enforced here, with its reason.
        (Some(EndpointEntry::Cached { verdict: PermitOrBlock::Block, reason }), _) => Outcome::of(Block, reason),
        // A2: a deliberate permit (C3, C8) stands, so that lower layers see it.
        (Some(EndpointEntry::Cached { verdict: PermitOrBlock::Permit, reason }), _) => Outcome::of(Permit, reason),
        (Some(EndpointEntry::Proxied { target_pid, destination }), true) => {
            // A3: the flow we redirected went to some other process (another
            // redirector overrode our target after us). A missing PID fails closed.
            if input.target_pid != Some(target_pid) {
                Outcome::of(Block, Reason::RedirectTargetMismatch)
            // A4: WFP says it was going somewhere else than we recorded.
            } else if !input.original_destination.is_some_and(|d| same_endpoint(&d, &destination)) {
                Outcome::of(Block, Reason::OriginalDestinationMismatch)
            // A5: delivered to our proxy with the destination we recorded.
            } else {
                Outcome::of(Permit, Reason::ProxyVerified)
            }
        }
        // A6: somebody else's local redirect: its target is a local proxy.
        (None, true) => Outcome::of(Continue, Reason::RedirectedByOtherObserved),
        // A7: nothing to enforce (including a flow we proxied whose redirect
        // did not take: WFP no longer reports it redirected).
        (Some(EndpointEntry::Proxied { .. }) | None, false) => Outcome::of(Continue, Reason::NotRedirected),
    }
}
