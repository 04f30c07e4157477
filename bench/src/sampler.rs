//! The sampler column: the WFP sample's proxy logic (lab.md's `sampler`
//! profile, anchors.md's WFPSampler notes), allocation-free, over the same
//! indications as the arbiter.
//!
//! What it does, in order: leaves its own proxy's process alone (the
//! sample's filter conditions exclude it); does nothing without the write
//! right; on a reauthorization looks only at the newest previousVersion
//! entry; permits `redirected-by-self`; takes no action on
//! `previously-redirected-by-self`; blocks after more than three of its own
//! hops; otherwise redirects every TCP/UDP flow the rules say to proxy,
//! including flows another vendor redirected (others are untrusted). Its
//! auth-connect callout only looks at the redirect metadata: it keeps no
//! per-endpoint state and enforces nothing, so it reserves no table memory.
//!
//! Which flows it wants comes from the same compiled matcher as the
//! arbiter's (in the sample, the filter engine's conditions do that part),
//! so the column shows the cost of the decision logic without tables, audit
//! or the checks the arbiter adds. The redirect context WFP takes ownership
//! of is allocated by the driver shell in both designs, outside this path.
//!
//! The indication carries the previousVersion chain deduplicated, so "own
//! hops" counts our distinct chain entries plus one when WFP reports a
//! redirect of ours: a lower bound of the sample's count, equal to it on
//! this workload (which has at most one own hop).

use std::net::SocketAddr;

use arbiter::decide::{Env, Verdict};
use arbiter::flow::{AuthConnectInput, ConnectRedirectInput, RedirectState};
use arbiter::policy::{Action, Policy};

/// The sample blocks when it finds more than this many of its own hops.
pub const MAX_OWN_HOPS: usize = 3;

/// Why the sampler decided what it did (the lab profile's wording).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SamplerReason {
    /// Its own proxy's connection.
    OwnProxy,
    /// No write right.
    NoWriteRight,
    /// The newest previousVersion entry is its own.
    PreviousVersionIsMine,
    /// `redirected-by-self`.
    RedirectedBySelf,
    /// `previously-redirected-by-self`: no action.
    PreviouslyRedirectedBySelf,
    /// More than [`MAX_OWN_HOPS`] own hops.
    TooManyOwnHops,
    /// Sent to its proxy.
    Redirect,
    /// The rules do not want it.
    NotWanted,
    /// Auth-connect: metadata looked at, nothing enforced.
    Logged,
}

/// The sampler's decision: verdict, reason, and where a redirect goes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SamplerDecision {
    /// What it does.
    pub verdict: Verdict,
    /// Why.
    pub reason: SamplerReason,
    /// The proxy listener, for a redirect.
    pub to: Option<SocketAddr>,
}

impl SamplerDecision {
    const fn of(verdict: Verdict, reason: SamplerReason) -> Self {
        Self { verdict, reason, to: None }
    }
}

/// The WFP sample's logic with our filter id, proxy and rules.
#[derive(Debug)]
pub struct Sampler<P> {
    env: Env,
    rules: P,
}

impl<P: Policy> Sampler<P> {
    /// The sampler deciding with `rules`, as filter `env.own_filter` with proxy `env.proxy`.
    pub const fn new(env: Env, rules: P) -> Self {
        Self { env, rules }
    }

    /// One connect-redirect classification.
    pub fn connect(&self, input: &ConnectRedirectInput<'_>) -> SamplerDecision {
        use RedirectState::{PreviouslyRedirectedBySelf, RedirectedBySelf};
        use SamplerReason as R;
        let flow = &input.flow;
        let own = self.env.own_filter;
        let own_entries = input.previous.entries().filter(|e| e.filter == own).count();
        let own_redirect = usize::from(matches!(input.state, RedirectedBySelf | PreviouslyRedirectedBySelf));
        let own_hops = own_entries + own_redirect;
        let last_was_me = input.previous.entries().next().is_some_and(|e| e.filter == own);
        let proxy = self.env.proxy;
        match (input.state, input.write_right) {
            _ if proxy.is_some_and(|p| p.pid == flow.pid) => SamplerDecision::of(Verdict::Continue, R::OwnProxy),
            (_, false) => SamplerDecision::of(Verdict::Continue, R::NoWriteRight),
            _ if last_was_me => SamplerDecision::of(Verdict::Continue, R::PreviousVersionIsMine),
            (RedirectedBySelf, true) => SamplerDecision::of(Verdict::Permit, R::RedirectedBySelf),
            (PreviouslyRedirectedBySelf, true) => SamplerDecision::of(Verdict::Continue, R::PreviouslyRedirectedBySelf),
            _ if own_hops > MAX_OWN_HOPS => SamplerDecision::of(Verdict::Block, R::TooManyOwnHops),
            _ if flow.protocol.is_tcp_or_udp()
                && self.rules.first_match(flow).is_some_and(|h| h.action == Action::Proxy) =>
            {
                let to = proxy.and_then(|p| match flow.remote {
                    SocketAddr::V4(_) => p.v4.map(SocketAddr::V4),
                    SocketAddr::V6(_) => p.v6.map(SocketAddr::V6),
                });
                match to {
                    Some(to) => SamplerDecision { verdict: Verdict::Proxy, reason: R::Redirect, to: Some(to) },
                    None => SamplerDecision::of(Verdict::Continue, R::NotWanted),
                }
            }
            _ => SamplerDecision::of(Verdict::Continue, R::NotWanted),
        }
    }

    /// One auth-connect classification: the sample only logs the redirect
    /// metadata (here: reads it) and continues.
    pub fn auth(&self, input: &AuthConnectInput<'_>) -> SamplerDecision {
        core::hint::black_box((input.redirected, input.target_pid, input.original_destination));
        SamplerDecision::of(Verdict::Continue, SamplerReason::Logged)
    }
}
