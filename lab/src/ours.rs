//! Our arbiter as a lab callout: every indication the engine makes becomes a
//! fixture [`Step`], is decided by the real core, and is kept (with its
//! decision as the step's expectation) so a scenario can be written out as a
//! replayable fixture and its audit log decoded.

use arbiter::{Arbiter, Instant, Layer, RuleSet, Verdict};

use crate::engine::{
    AuthAction, AuthDecision, AuthView, Callout, ConnectAction, ConnectDecision, ConnectView, Identity,
};
use crate::fixture::{Expect, Step};
use crate::replay::audit_round_trip;

/// Our filter id in the lab.
pub const OWN_FILTER: u64 = 100;
/// Our redirect handle in the lab.
pub const OWN_HANDLE: u64 = 1;
/// Our proxy's PID in the lab.
pub const OWN_PROXY_PID: u64 = 5151;
/// Our proxy's app id in the lab.
pub const OWN_PROXY_APP: &str = r"\device\harddiskvolume3\program files\arbiter\arbiter-proxy.exe";

/// The real core behind the [`Callout`] seam.
#[derive(Debug)]
pub struct ArbiterCallout {
    /// The core.
    pub arbiter: Arbiter<RuleSet>,
    /// Every indication, with its decision as expectation.
    pub steps: Vec<Step>,
    /// Concatenated encoded audit records (decisions and departures).
    pub audit_log: Vec<u8>,
    /// Decisions whose audit record did not replay to the decision.
    pub audit_failures: usize,
}

impl ArbiterCallout {
    /// Wraps a core.
    pub const fn new(arbiter: Arbiter<RuleSet>) -> Self {
        Self { arbiter, steps: Vec::new(), audit_log: Vec::new(), audit_failures: 0 }
    }

    fn decide(&mut self, mut step: Step) -> (Verdict, String, Option<(core::net::SocketAddr, u64)>) {
        let now = Instant::from_millis(step.at_ms);
        let mut departed = Vec::new();
        self.arbiter.expire(now, |d| departed.push(d));
        for d in departed {
            append(&mut self.audit_log, &d.record());
        }
        let b = step.buffers();
        let d = match step.layer {
            Layer::ConnectRedirect => self.arbiter.decide_connect_redirect(&step.connect_input(&b), now),
            Layer::AuthConnect => self.arbiter.decide_auth_connect(&step.auth_input(&b), now),
        };
        if !audit_round_trip(&d) {
            self.audit_failures += 1;
        }
        for dep in d.departures.iter() {
            append(&mut self.audit_log, &dep.record());
        }
        append(&mut self.audit_log, &d.audit);
        let redirect = d.redirect.map(|r| (r.remote, r.target_pid));
        step.expect = Expect {
            verdict: Some(d.verdict),
            reason: Some(d.reason),
            redirect_to: redirect.map(|r| r.0),
            target_pid: redirect.map(|r| r.1),
        };
        let out = (d.verdict, d.reason.name().to_owned(), redirect);
        self.steps.push(step);
        out
    }
}

fn append(log: &mut Vec<u8>, rec: &arbiter::AuditRecord<'_>) {
    let start = log.len();
    log.resize(start + rec.encoded_len(), 0);
    match log.get_mut(start..).map(|b| rec.encode_into(b)) {
        Some(Ok(n)) => log.truncate(start + n),
        _ => log.truncate(start),
    }
}

fn base_step(layer: Layer, conn: &crate::engine::Connection, remote: core::net::SocketAddr, now_ms: u64) -> Step {
    let mut s = Step::connect(conn.endpoint, conn.protocol, conn.local, remote, conn.pid, &conn.app);
    s.layer = layer;
    s.at_ms = now_ms;
    if conn.original_app != conn.app {
        s.original_app = Some(conn.original_app.clone());
    }
    s
}

impl Callout for ArbiterCallout {
    fn connect_redirect(&mut self, _me: &Identity, v: &ConnectView<'_>) -> ConnectDecision {
        let mut step = base_step(Layer::ConnectRedirect, v.conn, v.remote, v.now_ms);
        step.state = v.state;
        step.write_right = v.write_right;
        step.reauthorize = v.reauthorize;
        step.previous = v.previous.to_vec();
        let (verdict, reason, redirect) = self.decide(step);
        let action = match (verdict, redirect) {
            (Verdict::Continue, _) => ConnectAction::Continue,
            (Verdict::Permit, _) => ConnectAction::Permit,
            (Verdict::Block, _) => ConnectAction::Block,
            (Verdict::Proxy, Some((to, target_pid))) => ConnectAction::RedirectLocal { to, target_pid },
            // A proxy verdict always carries its target; treat a missing one as no action.
            (Verdict::Proxy, None) => ConnectAction::Continue,
        };
        // decision-table.md: permit and proxy apply with REAUTHORIZE_IF_MODIFIED_BY_OTHERS.
        let d = ConnectDecision::new(action, &reason);
        if matches!(verdict, Verdict::Permit | Verdict::Proxy) { d.reauthorizing() } else { d }
    }

    fn auth_connect(&mut self, _me: &Identity, v: &AuthView<'_>) -> AuthDecision {
        let mut step = base_step(Layer::AuthConnect, v.conn, v.remote, v.now_ms);
        step.redirected = v.redirected;
        step.target_pid = v.target_pid;
        step.original_destination = v.original_destination;
        let (verdict, reason, _) = self.decide(step);
        let action = match verdict {
            Verdict::Block => AuthAction::Block,
            Verdict::Permit => AuthAction::Permit,
            Verdict::Continue | Verdict::Proxy => AuthAction::Continue,
        };
        AuthDecision::new(action, &reason)
    }

    fn as_arbiter(&self) -> Option<&Self> {
        Some(self)
    }
}
