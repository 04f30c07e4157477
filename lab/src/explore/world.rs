//! The explored machine: our arbiter's side (the adapter on the WFP model,
//! shared by its callouts), the peers, the engine, and the abstract state
//! the search merges on.

use core::cell::RefCell;
use core::hash::{Hash, Hasher};
use core::net::SocketAddr;
use std::collections::hash_map::DefaultHasher;
use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::rc::Rc;

use arbiter::{Arbiter, Capacities, Config as CoreConfig, Instant, Layer, Protocol, RuleSet, Verdict};

use super::setups::{APPS, HOP_WINDOW_MS, OUR_V4, OUR_V6, Setup, peer_identity};
use crate::engine::{
    AuthAction, AuthDecision, AuthView, Callout, Classifying, ConnectAction, ConnectDecision, ConnectView, Connection,
    Engine, HopResult, Identity, MAX_CHAIN, ProxyProcess, Vendor,
};
use crate::fixture::{Expect, Step};
use crate::ours::{ArbiterCallout, Fed, OWN_FILTER, OWN_HANDLE, OWN_PROXY_APP, OWN_PROXY_PID, auth_step, connect_step};
use crate::profiles::{AuthBlocker, Profile, Sampler, Wants};
use crate::scenario::{Ours, Outcome};

/// Table sizes for the explored arbiter: far above what any execution
/// fills (checked: an eviction is a model error), small to rebuild fast.
const CAPACITIES: Capacities = Capacities { endpoints: 256, destinations: 64, known_proxies: 64 };

/// Our arbiter's side of the machine, shared between its callout and the
/// search: the real adapter on the WFP model (the lab's own
/// [`ArbiterCallout`], whose kept steps are the indications a fork gives
/// again), the explorer's summary of its shared tables, and the checks made
/// on its decisions.
#[derive(Debug)]
pub(super) struct Core {
    ours: ArbiterCallout,
    rules: Rc<RuleSet>,
    /// Proxied hops per destination (C8's counters): one per `proxy` verdict.
    pub(super) hops: BTreeMap<(Protocol, SocketAddr), u16>,
    /// Learned local proxies (A6).
    learned: BTreeSet<u64>,
    /// Audit records that did not replay, not yet reported.
    audit_failures: usize,
    /// Something the summary does not account for (an eviction, an expiry).
    surprise: Option<String>,
}

impl Core {
    pub(super) fn new(rules: Rc<RuleSet>) -> Result<Self, String> {
        let config = CoreConfig { own_filter: arbiter_callout::OWN_FILTER, ..CoreConfig::default() };
        let mut arbiter = Arbiter::new(config, CAPACITIES, (*rules).clone())
            .map_err(|_| "out of memory reserving the tables".to_owned())?;
        let v4 = OUR_V4.parse().map_err(|_| "bad listener")?;
        let v6 = OUR_V6.parse().map_err(|_| "bad listener")?;
        arbiter.set_proxy(OWN_PROXY_PID, Some(v4), Some(v6)).map_err(|e| e.to_string())?;
        let ours = ArbiterCallout::new(arbiter, arbiter_wfp_model::Readings::default())?;
        Ok(Self { ours, rules, hops: BTreeMap::new(), learned: BTreeSet::new(), audit_failures: 0, surprise: None })
    }

    /// A core in the same state: a fresh one given the same indications at
    /// the same times (decisions are deterministic: invariant 5). Their
    /// audit records were checked when first made.
    pub(super) fn fork(&self) -> Result<Self, String> {
        let mut c = Self::new(Rc::clone(&self.rules))?;
        for step in &self.ours.steps {
            c.feed(Step { expect: Expect::default(), ..step.clone() });
        }
        c.audit_failures = 0;
        if c.hops != self.hops || c.learned != self.learned {
            c.surprise.get_or_insert_with(|| "a forked arbiter disagrees with its original".to_owned());
        }
        Ok(c)
    }

    /// Gives the adapter one indication and updates the summary.
    fn feed(&mut self, step: Step) -> Fed {
        let (departures, failures) = (self.ours.departures, self.ours.audit_failures);
        let (layer, protocol, remote) = (step.layer, step.protocol, step.remote);
        let (redirected, target_pid) = (step.redirected, step.target_pid);
        let fed = self.ours.feed(step);
        self.audit_failures += self.ours.audit_failures.saturating_sub(failures);
        if self.ours.departures != departures {
            self.surprise.get_or_insert_with(|| "an arbiter table entry left its table during an execution".to_owned());
        }
        match layer {
            Layer::ConnectRedirect if fed.expect.verdict == Some(Verdict::Proxy) => {
                // "Every proxy verdict counts one hop for its destination."
                *self.hops.entry((protocol, remote)).or_insert(0) += 1;
            }
            // Any redirected flow's local target other than our proxy is a
            // known local proxy (the core learns it whatever row decided).
            Layer::AuthConnect if redirected => {
                if let Some(pid) = target_pid.filter(|&p| p != 0 && p != OWN_PROXY_PID) {
                    self.learned.insert(pid);
                }
            }
            Layer::ConnectRedirect | Layer::AuthConnect => {}
        }
        fed
    }
}

/// Our arbiter behind the engine's callout seam: the same steps and the
/// same adapter path as [`ArbiterCallout`], shared with the search.
#[derive(Debug)]
pub(super) struct ExploredArbiter(Rc<RefCell<Core>>);

impl Callout for ExploredArbiter {
    fn connect_redirect(&mut self, _me: &Identity, v: &ConnectView<'_>) -> ConnectDecision {
        self.0.borrow_mut().feed(connect_step(v)).connect
    }

    fn auth_connect(&mut self, _me: &Identity, v: &AuthView<'_>) -> AuthDecision {
        self.0.borrow_mut().feed(auth_step(v)).auth
    }
}

/// Where one connection is.
#[derive(Clone, Debug)]
pub(super) enum Phase {
    /// Waiting for its connect-redirect classification.
    Connect(Connection),
    /// Between connect-redirect and auth-connect.
    Auth(Box<Classifying>),
    /// Ended.
    Done(Outcome),
}

/// One application connection's chain.
#[derive(Clone, Debug)]
pub(super) struct Chain {
    destination: SocketAddr,
    pub(super) phase: Phase,
    /// Connections classified so far.
    pub(super) hops: usize,
    /// `app -> arbiter-proxy -> ...`.
    pub(super) path: Vec<String>,
}

/// One move of the search: classify a connection's next phase, or end it
/// as a loop because its state recurred.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Move {
    Step(usize),
    Cycle(usize),
}

/// Feeds a connection's abstract form (see the module docs) to a hasher.
pub(super) fn hash_conn(h: &mut impl Hasher, c: &Connection, with_hop: bool) {
    (if with_hop { c.hop } else { 0 }).hash(h);
    c.pid.hash(h);
    c.app.hash(h);
    c.original_app.hash(h);
    c.protocol.hash(h);
    c.remote.hash(h);
    c.records.len().hash(h);
    for r in &c.records {
        (r.handle, r.context.original_remote).hash(h);
    }
}

pub(super) fn hash_outcome(h: &mut impl Hasher, o: &Outcome) {
    o.kind().hash(h);
    if !matches!(o, Outcome::Loop(_)) {
        o.detail().hash(h);
    }
}

/// A vendor that looks at nothing and changes nothing: our place with our
/// driver uninstalled, to tell a failure the peers cause among themselves
/// from one our presence causes.
#[derive(Debug)]
pub(super) struct Passive;

impl Callout for Passive {
    fn connect_redirect(&mut self, _me: &Identity, _v: &ConnectView<'_>) -> ConnectDecision {
        ConnectDecision::new(ConnectAction::Continue, "not installed")
    }

    fn auth_connect(&mut self, _me: &Identity, _v: &AuthView<'_>) -> AuthDecision {
        AuthDecision::new(AuthAction::Continue, "not installed")
    }
}

/// Runs connection `conn` of `setup` alone, move after move, and says how
/// it ends (a recurring state is a loop).
pub(super) fn run_alone(setup: &Setup, rules: &RuleSet, conn: usize, passive: bool) -> Option<Outcome> {
    let mut alone = setup.clone();
    alone.conns = vec![*setup.conns.get(conn)?];
    let mut w = World::build(&alone, rules, passive).ok()?;
    let mut seen = HashSet::new();
    loop {
        if !seen.insert(w.fingerprint(false)) {
            w.cycle(0);
        }
        match &w.chains.first()?.phase {
            Phase::Done(o) => return Some(o.clone()),
            _ => {
                w.step(0);
            }
        }
    }
}

/// A simulated machine running one setup's connections.
#[derive(Debug)]
pub(super) struct World {
    engine: Engine,
    pub(super) chains: Vec<Chain>,
    /// Our arbiter, when it is in our place.
    core: Option<Rc<RefCell<Core>>>,
    rules: Rc<RuleSet>,
    /// Proxies the auth-blockers learned.
    blocker: BTreeSet<u64>,
    has_blocker: bool,
    /// A disagreement between the abstract state and the live core.
    pub(super) model_error: Option<String>,
}

impl World {
    pub(super) fn new(setup: &Setup, rules: &RuleSet) -> Result<Self, String> {
        Self::build(setup, rules, false)
    }

    /// With `passive`, our vendor is installed but does nothing and has no
    /// proxy: the machine as it would be without our driver.
    fn build(setup: &Setup, rules: &RuleSet, passive: bool) -> Result<Self, String> {
        let rules = Rc::new(rules.clone());
        let n = setup.vendors();
        let weight_of = |v: usize| {
            let pos = setup.order.iter().position(|&x| x == v).unwrap_or(n);
            u32::try_from(10 * (n - pos)).unwrap_or(0)
        };
        let names = setup.vendor_names();
        let v4 = OUR_V4.parse().map_err(|_| "bad listener")?;
        let v6 = OUR_V6.parse().map_err(|_| "bad listener")?;
        let mut ids = vec![Identity {
            name: setup.ours.name().to_owned(),
            weight: weight_of(0),
            filter: OWN_FILTER,
            handle: OWN_HANDLE,
            proxy: Some(ProxyProcess {
                pid: OWN_PROXY_PID,
                app: OWN_PROXY_APP.to_owned(),
                v4: SocketAddr::V4(v4),
                v6: SocketAddr::V6(v6),
                propagates_records: setup.ours_propagates,
            })
            .filter(|_| !passive),
            tunnel: None,
        }];
        for (i, p) in setup.peers.iter().enumerate() {
            let name = names.get(i + 1).map_or("peer", String::as_str);
            ids.push(peer_identity(*p, i, weight_of(i + 1), name));
        }
        let core = match setup.ours {
            Ours::Arbiter if !passive => Some(Rc::new(RefCell::new(Core::new(Rc::clone(&rules))?))),
            Ours::Arbiter | Ours::SamplerBaseline => None,
        };
        let blocker = BTreeSet::new();
        let mut vendors = Self::vendors(setup, ids, &rules, core.as_ref(), &blocker);
        if passive && let Some(v) = vendors.first_mut() {
            v.callout = Box::new(Passive);
        }
        let mut engine = Engine::new(vendors);
        let mut chains = Vec::new();
        for (i, c) in setup.conns.iter().enumerate() {
            let (pid, app) = APPS.get(i).copied().unwrap_or(APPS[0]);
            let destination = c.destination();
            let conn = engine.app_connection(pid, app, c.protocol, destination);
            chains.push(Chain {
                destination,
                phase: Phase::Connect(conn),
                hops: 0,
                path: vec![format!("app{}", i + 1)],
            });
        }
        Ok(Self {
            engine,
            chains,
            core,
            rules,
            blocker,
            has_blocker: setup.peers.iter().any(|p| p.profile == Profile::AuthBlocker),
            model_error: None,
        })
    }

    /// The vendors with callouts in the given state: ours (the shared core,
    /// or the sampler), then each peer (auth-blockers knowing `blocker`).
    fn vendors(
        setup: &Setup,
        ids: Vec<Identity>,
        rules: &Rc<RuleSet>,
        core: Option<&Rc<RefCell<Core>>>,
        blocker: &BTreeSet<u64>,
    ) -> Vec<Vendor> {
        ids.into_iter()
            .enumerate()
            .map(|(i, id)| {
                let callout: Box<dyn Callout> = match (i.checked_sub(1).and_then(|p| setup.peers.get(p)), core) {
                    (None, Some(c)) => Box::new(ExploredArbiter(Rc::clone(c))),
                    (None, None) => Box::new(Sampler { wants: Wants::Rules(Box::new((**rules).clone())) }),
                    (Some(p), _) if p.profile == Profile::AuthBlocker => {
                        Box::new(AuthBlocker { proxies: blocker.iter().copied().collect(), allowed: Vec::new() })
                    }
                    (Some(p), _) => p.profile.callout(),
                };
                Vendor { id, callout }
            })
            .collect()
    }

    /// The same machine, to try another interleaving from here.
    pub(super) fn fork(&self, setup: &Setup) -> Result<Self, String> {
        let core = match &self.core {
            Some(c) => Some(Rc::new(RefCell::new(c.borrow().fork()?))),
            None => None,
        };
        let ids = self.engine.vendors.iter().map(|v| v.id.clone()).collect();
        let vendors = Self::vendors(setup, ids, &self.rules, core.as_ref(), &self.blocker);
        Ok(Self {
            engine: self.engine.fork(vendors),
            chains: self.chains.clone(),
            core,
            rules: Rc::clone(&self.rules),
            blocker: self.blocker.clone(),
            has_blocker: self.has_blocker,
            model_error: self.model_error.clone(),
        })
    }

    /// Audit records that did not replay since the last call.
    pub(super) fn take_audit_failures(&self) -> usize {
        self.core.as_ref().map_or(0, |c| core::mem::take(&mut c.borrow_mut().audit_failures))
    }

    pub(super) fn enabled(&self) -> Vec<usize> {
        (0..self.chains.len())
            .filter(|&i| self.chains.get(i).is_some_and(|c| !matches!(c.phase, Phase::Done(_))))
            .collect()
    }

    /// A 128-bit fingerprint of the abstract state (two independent 64-bit
    /// hashes: a collision that would merge two different states is beyond
    /// any run's reach).
    pub(super) fn fingerprint(&self, with_hop: bool) -> u128 {
        let mut lo = DefaultHasher::new();
        let mut hi = DefaultHasher::new();
        0x9e37_79b9_7f4a_7c15u64.hash(&mut hi);
        self.hash_into(&mut lo, with_hop);
        self.hash_into(&mut hi, with_hop);
        (u128::from(hi.finish()) << 64) | u128::from(lo.finish())
    }

    fn hash_into(&self, h: &mut impl Hasher, with_hop: bool) {
        for c in &self.chains {
            match &c.phase {
                Phase::Connect(conn) => {
                    0u8.hash(h);
                    hash_conn(h, conn, with_hop);
                }
                Phase::Auth(p) => {
                    1u8.hash(h);
                    hash_conn(h, &p.conn, with_hop);
                    p.decisions.len().hash(h);
                    for d in &p.decisions {
                        (d.vendor, d.round, &d.action, &d.reason, d.refused).hash(h);
                    }
                    p.final_remote().hash(h);
                    p.local_redirect().map(|(v, pid, ctx)| (v, pid, ctx.original_remote)).hash(h);
                    p.tunnel().map(|(v, ctx)| (v, ctx.original_remote)).hash(h);
                    p.reauth_loop().hash(h);
                }
                Phase::Done(o) => {
                    2u8.hash(h);
                    hash_outcome(h, o);
                }
            }
        }
        if let Some(core) = &self.core {
            let core = core.borrow();
            core.hops.hash(h);
            core.learned.hash(h);
        }
        self.blocker.hash(h);
    }

    fn name(&self, v: usize) -> String {
        self.engine.vendors.get(v).map_or_else(|| "?".to_owned(), |x| x.id.name.clone())
    }

    /// Ends connection `i` as a loop: its state recurred.
    pub(super) fn cycle(&mut self, i: usize) {
        if let Some(c) = self.chains.get_mut(i) {
            c.path.push("(cycle)".to_owned());
            c.phase = Phase::Done(Outcome::Loop("the chain's state recurs: it would go round forever".to_owned()));
        }
    }

    /// Classifies connection `i`'s next phase. Returns true when that ended it.
    pub(super) fn step(&mut self, i: usize) -> bool {
        let Some(chain) = self.chains.get_mut(i) else { return false };
        let phase = core::mem::replace(&mut chain.phase, Phase::Done(Outcome::Unexplained(String::new())));
        let destination = chain.destination;
        let mut ended = false;
        match phase {
            Phase::Connect(conn) => {
                if chain.hops >= MAX_CHAIN {
                    chain.path.push("...".to_owned());
                    chain.phase = Phase::Done(Outcome::Loop(format!("chain reached {MAX_CHAIN} connections")));
                    return true;
                }
                let pending = self.engine.connect_phase(&conn);
                if pending.reauth_loop() {
                    // No auth-connect follows: finish it now.
                    ended = self.finish(i, pending, destination);
                } else if let Some(c) = self.chains.get_mut(i) {
                    c.phase = Phase::Auth(Box::new(pending));
                }
            }
            Phase::Auth(pending) => {
                if self.has_blocker
                    && pending.redirected()
                    && let Some((_, pid, _)) = pending.local_redirect()
                {
                    self.blocker.insert(pid);
                }
                ended = self.finish(i, *pending, destination);
            }
            Phase::Done(o) => chain.phase = Phase::Done(o),
        }
        self.check();
        ended
    }

    /// Runs auth-connect and moves the chain on. Returns true when it ended.
    pub(super) fn finish(&mut self, i: usize, pending: Classifying, destination: SocketAddr) -> bool {
        let trace = self.engine.auth_phase(pending, destination);
        let (next, label, outcome) = match &trace.result {
            HopResult::ToProxy { vendor } => match self.engine.proxy_outbound(&trace, *vendor) {
                Some(c) => (Some(c), format!("{}-proxy", self.name(*vendor)), None),
                None => (
                    None,
                    format!("{}-proxy", self.name(*vendor)),
                    Some(Outcome::Unexplained("the proxy could not read its redirect context".into())),
                ),
            },
            HopResult::Delivered { via_tunnel } => {
                let label = match via_tunnel {
                    Some((v, addr)) => format!("{}@{addr} -> {destination}", self.name(*v)),
                    None => destination.to_string(),
                };
                (None, label, Some(Outcome::Delivered))
            }
            HopResult::Blocked { vendor, layer, reason } => {
                let by = self.name(*vendor);
                (None, format!("blocked by {by}"), Some(Outcome::Blocked { by, layer: *layer, reason: reason.clone() }))
            }
            HopResult::ReauthLoop => {
                (None, "...".to_owned(), Some(Outcome::Loop("reauthorization did not settle".to_owned())))
            }
            HopResult::Unexplained(why) => (None, "?".to_owned(), Some(Outcome::Unexplained(why.clone()))),
        };
        let Some(chain) = self.chains.get_mut(i) else { return false };
        chain.hops += 1;
        chain.path.push(label);
        match (next, outcome) {
            (Some(c), _) => {
                chain.phase = Phase::Connect(c);
                false
            }
            (None, Some(o)) => {
                chain.phase = Phase::Done(o);
                true
            }
            (None, None) => {
                chain.phase = Phase::Done(Outcome::Unexplained("the chain stopped without an outcome".to_owned()));
                true
            }
        }
    }

    /// Checks the explorer's summary of the arbiter's tables against the
    /// live core, and that the execution stays inside every time window.
    fn check(&mut self) {
        let now = self.engine.now_ms;
        if now >= HOP_WINDOW_MS {
            self.model_error.get_or_insert_with(|| format!("an execution outlasted the hop window ({now} ms)"));
        }
        let Some(core) = &self.core else { return };
        let core = core.borrow();
        let at = Instant::from_millis(now);
        let arbiter = core.ours.arbiter();
        let [_, destinations, known] = arbiter.occupancy();
        let agrees = usize::try_from(destinations).ok() == Some(core.hops.len())
            && usize::try_from(known).ok() == Some(core.learned.len())
            && core.learned.iter().all(|&p| arbiter.is_learned_proxy(p, at));
        if let Some(s) = &core.surprise {
            self.model_error.get_or_insert_with(|| s.clone());
        } else if !agrees {
            self.model_error.get_or_insert_with(|| {
                format!(
                    "the arbiter's tables disagree with the explorer's summary: occupancy {:?}, hops {:?}, learned {:?}",
                    arbiter.occupancy(),
                    core.hops,
                    core.learned
                )
            });
        }
    }
}
