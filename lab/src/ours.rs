//! Our arbiter as a lab vendor: the real classify adapter
//! ([`arbiter_callout::Callout`], the code the driver runs) calling WFP
//! through [`arbiter_callout::Fwps`] as implemented by the WFP model
//! ([`arbiter_wfp_model::Runtime`]), with the filters the driver adds
//! ([`arbiter_callout::filters::FILTERS`]).
//!
//! Each engine indication is laid out as WFP lays it out
//! ([`arbiter_wfp_model::Indication`]) and handed to the adapter's
//! classifyFn; what it leaves in classifyOut is read under our filter's
//! action type, and what it applied to the layer data is the engine's next
//! layer data. Fixture recording is an observer: the indication becomes a
//! fixture [`Step`], and the decision the adapter audited (decoded from its
//! audit ring) becomes the step's expectation.

use core::net::SocketAddr;

use arbiter::audit::{AuditRecord, Event};
use arbiter::flow::SidBuf;
use arbiter::{Arbiter, Capacities, Config, Instant, Layer, RedirectState, RuleSet};
use arbiter_callout::filters::{FilterLayer, filter_for};
use arbiter_callout::{Callout as Adapter, CalloutConfig, Family};
use arbiter_wfp_model::arbitration::{Outcome, resolve};
use arbiter_wfp_model::{ConnectData, FlowInfo, Indication, Readings, RedirectRecord, Runtime, Version};
use wfp_ffi::{FWPS_CLASSIFY_OUT0, FWPS_RIGHT_ACTION_WRITE, HANDLE};

use crate::engine::{
    AuthAction, AuthDecision, AuthView, Callout, ConnectAction, ConnectDecision, ConnectView, Connection, Identity,
};
use crate::fixture::{Expect, Step};

/// Our filter id in the lab (both families).
pub const OWN_FILTER: u64 = 100;
/// The fixed value the adapter hands the core for its own filters' run-time
/// ids (what audit records from the adapter carry as `own_filter`).
pub const ADAPTER_OWN_FILTER: u64 = arbiter_callout::OWN_FILTER;
/// Our redirect handle in the lab.
pub const OWN_HANDLE: u64 = 1;
/// Our proxy's PID in the lab.
pub const OWN_PROXY_PID: u64 = 5151;
/// Our proxy's app id in the lab.
pub const OWN_PROXY_APP: &str = r"\device\harddiskvolume3\program files\arbiter\arbiter-proxy.exe";
/// Table sizes of the lab's core: a scenario has at most 32 connections,
/// so the driver's defaults (65,536 endpoints) would only cost the time of
/// reserving them for every scenario.
pub const LAB_CAPACITIES: Capacities = Capacities { endpoints: 1024, destinations: 256, known_proxies: 64 };
/// Bytes of audit ring the lab's adapter reserves (records are drained after each classify).
const LAB_RING_BYTES: usize = 1 << 14;

/// The real adapter on the WFP model, behind the engine's [`Callout`] seam.
pub struct ArbiterCallout {
    /// The adapter (and the core inside it).
    pub adapter: Adapter<RuleSet>,
    /// The WFP model the adapter calls.
    pub wfp: Runtime,
    /// Every indication, with the adapter's decision as expectation.
    pub steps: Vec<Step>,
    /// Concatenated encoded audit records (decisions and departures), as
    /// the adapter's ring held them.
    pub audit_log: Vec<u8>,
    /// Decisions whose audit record did not replay to the decision.
    pub audit_failures: usize,
    /// Departure records (evictions, expiries) seen in the audit ring.
    pub departures: usize,
    /// Next ring sequence number not yet drained.
    next_seq: u64,
    /// Our connect-redirect filter's run-time id.
    own_filter: u64,
}

impl core::fmt::Debug for ArbiterCallout {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("ArbiterCallout").field("steps", &self.steps.len()).finish_non_exhaustive()
    }
}

/// Builds the core as the driver configures it: our fixed filter value, the
/// rules, our proxy registered for both families.
pub fn lab_arbiter(
    rules: RuleSet,
    v4: Option<core::net::SocketAddrV4>,
    v6: Option<core::net::SocketAddrV6>,
) -> Result<Arbiter<RuleSet>, String> {
    let config = Config { own_filter: arbiter_callout::OWN_FILTER, ..Config::default() };
    let mut a =
        Arbiter::new(config, LAB_CAPACITIES, rules).map_err(|_| "out of memory reserving the tables".to_owned())?;
    if v4.is_some() || v6.is_some() {
        a.set_proxy(OWN_PROXY_PID, v4, v6).map_err(|e| e.to_string())?;
    }
    Ok(a)
}

impl ArbiterCallout {
    /// Wraps a core (configured with `own_filter` = [`arbiter_callout::OWN_FILTER`])
    /// in the adapter, on a fresh WFP model under `readings`.
    pub fn new(arbiter: Arbiter<RuleSet>, readings: Readings) -> Result<Self, String> {
        Self::with_own_filter(arbiter, readings, OWN_FILTER)
    }

    /// The same, with our connect-redirect filter's run-time id as given
    /// (a fixture's `environment.own_filter`).
    pub fn with_own_filter(arbiter: Arbiter<RuleSet>, readings: Readings, own_filter: u64) -> Result<Self, String> {
        let mut adapter = Adapter::new(arbiter, CalloutConfig { ring_bytes: LAB_RING_BYTES, pend: None })
            .map_err(|_| "out of memory reserving the audit ring".to_owned())?;
        adapter.set_redirect_handle(handle_ptr(OWN_HANDLE));
        adapter.set_own_filters(own_filter, own_filter);
        let next_seq = adapter.ring().next_seq();
        Ok(Self {
            adapter,
            wfp: Runtime::new(readings),
            steps: Vec::new(),
            audit_log: Vec::new(),
            audit_failures: 0,
            departures: 0,
            next_seq,
            own_filter,
        })
    }

    /// The core.
    pub const fn arbiter(&self) -> &Arbiter<RuleSet> {
        self.adapter.arbiter()
    }

    /// Moves the adapter's new audit records into [`Self::audit_log`] and
    /// returns the expectation of the last decision among them.
    /// Moves new audit records (a bind observation, say) into [`Self::audit_log`].
    pub(crate) fn drain_records(&mut self) -> Expect {
        self.drain()
    }

    fn drain(&mut self) -> Expect {
        let mut expect = Expect::default();
        for (seq, bytes) in self.adapter.ring().iter() {
            if seq < self.next_seq {
                continue;
            }
            self.audit_log.extend_from_slice(bytes);
            let Ok((rec, _)) = AuditRecord::decode(bytes) else {
                self.audit_failures += 1;
                continue;
            };
            if matches!(rec.event, Event::Departure(_)) {
                self.departures += 1;
            }
            if let Some(o) = rec.outcome() {
                if !rec.replay().is_some_and(|r| r.matches(o)) {
                    self.audit_failures += 1;
                }
                if !matches!(rec.event, Event::Departure(_)) {
                    expect = Expect {
                        verdict: Some(o.verdict),
                        reason: Some(o.reason),
                        redirect_to: o.redirect.map(|r| r.remote),
                        target_pid: o.redirect.map(|r| r.target_pid),
                    };
                }
            }
        }
        self.next_seq = self.adapter.ring().next_seq();
        expect
    }
}

fn handle_ptr(h: u64) -> HANDLE {
    core::ptr::without_provenance_mut(usize::try_from(h).unwrap_or(0))
}

fn handle_addr(h: u64) -> usize {
    usize::try_from(h).unwrap_or(0)
}

fn flow_info(step: &Step) -> FlowInfo {
    FlowInfo {
        protocol: step.protocol.0,
        local: step.local,
        remote: step.remote,
        pid: step.pid,
        app: step.app.clone(),
        original_app: step.original_app.clone().unwrap_or_else(|| step.app.clone()),
        endpoint: step.endpoint,
        reauthorize: step.reauthorize,
        redirected: step.redirected,
        target_pid: step.target_pid.and_then(|p| u32::try_from(p).ok()),
        original_destination: step.original_destination,
        package: step.package.as_deref().and_then(SidBuf::parse).map(|b| b.as_sid().as_bytes().to_vec()),
    }
}

/// Redirect records that make WFP report `state` to the holder of our handle.
fn records_for(state: RedirectState) -> Vec<RedirectRecord> {
    let ours = RedirectRecord { handle: handle_addr(OWN_HANDLE), context: Vec::new() };
    let other = RedirectRecord { handle: handle_addr(OWN_HANDLE + 1), context: Vec::new() };
    match state {
        RedirectState::NotRedirected => Vec::new(),
        RedirectState::RedirectedBySelf => vec![ours],
        RedirectState::RedirectedByOther => vec![other],
        RedirectState::PreviouslyRedirectedBySelf => vec![ours, other],
    }
}

fn base_step(layer: Layer, conn: &Connection, remote: SocketAddr, now_ms: u64) -> Step {
    let mut s = Step::connect(conn.endpoint, conn.protocol, conn.local, remote, conn.pid, &conn.app);
    s.layer = layer;
    s.at_ms = now_ms;
    if conn.original_app != conn.app {
        s.original_app = Some(conn.original_app.clone());
    }
    s
}

const fn family(v6: bool) -> Family {
    if v6 { Family::V6 } else { Family::V4 }
}

/// What the adapter did with one indication.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Fed {
    /// The decision it audited (verdict, reason, redirect), as a fixture expectation.
    pub expect: Expect,
    /// Connect-redirect: what the engine sees it do.
    pub connect: ConnectDecision,
    /// Auth-connect: what the engine sees it do.
    pub auth: AuthDecision,
}

impl ArbiterCallout {
    /// Gives the adapter one indication, as a fixture step describes it,
    /// through the WFP model: the one path from an indication to the core,
    /// shared by the lab, the explorer and the replayer. The step is kept
    /// (with what the adapter audited as its expectation) in [`Self::steps`].
    pub fn feed(&mut self, mut step: Step) -> Fed {
        let v6 = step.local.is_ipv6();
        let now = Instant::from_millis(step.at_ms);
        let f = flow_info(&step);
        let mut connect = ConnectDecision::new(ConnectAction::Continue, "");
        let mut auth = AuthDecision::new(AuthAction::Continue, "");
        match step.layer {
            Layer::ConnectRedirect => {
                let layer = if v6 { FilterLayer::ConnectRedirectV6 } else { FilterLayer::ConnectRedirectV4 };
                let action_type = filter_for(layer).map_or(wfp_ffi::FWP_ACTION_CALLOUT_UNKNOWN, |s| s.action_type);
                let mut data = ConnectData::new(step.remote, step.local, records_for(step.state));
                data.versions = step
                    .previous
                    .iter()
                    .map(|p| Version { filter: p.filter, local_redirect_handle: p.local_redirect_handle })
                    .collect();
                let has_records = !data.records.is_empty();
                let (rights, entry_action) = if step.write_right {
                    (FWPS_RIGHT_ACTION_WRITE, self.wfp.readings.entry_action_type())
                } else {
                    // A hard decision above us: the model's entry value then.
                    (0, wfp_ffi::FWP_ACTION_PERMIT)
                };
                let entry = FWPS_CLASSIFY_OUT0 { actionType: entry_action, rights, ..Default::default() };
                let mut ind = Indication::new(layer, &f, self.own_filter, action_type, 0, entry, None);
                let id = self.wfp.begin_classify(data, &raw const *ind.out);
                if has_records {
                    ind.set_redirect_records(id);
                }
                let raw = ind.raw(id);
                // SAFETY: every pointer in `raw` points into `ind`, alive for
                // the call; the runtime acts on this classify (id).
                unsafe { self.adapter.classify_connect_redirect(&mut self.wfp, family(v6), &raw, now) };
                let out = *ind.out;
                let (after, applied) = self.wfp.end_classify(id);
                step.expect = self.drain();
                let modified = applied.iter().any(|a| a.modified);
                let reauthorizing = applied.iter().any(arbiter_wfp_model::Applied::reauthorize_if_modified);
                let hard = out.rights & FWPS_RIGHT_ACTION_WRITE == 0;
                let action = match resolve(action_type, out.actionType, &self.wfp.readings) {
                    Outcome::Block => ConnectAction::Block,
                    Outcome::Permit if modified => {
                        ConnectAction::RedirectLocal { to: after.remote, target_pid: u64::from(after.target_pid) }
                    }
                    // Without the write right we could only have vetoed.
                    Outcome::Permit | Outcome::Continue if !step.write_right => ConnectAction::Continue,
                    Outcome::Permit if hard => ConnectAction::HardPermit,
                    Outcome::Permit => ConnectAction::Permit,
                    Outcome::Continue => ConnectAction::Continue,
                };
                let reason = step.expect.reason.map_or("unclassified", |r| r.name());
                connect = ConnectDecision::new(action, reason);
                if reauthorizing {
                    connect = connect.reauthorizing();
                }
            }
            Layer::AuthConnect => {
                let layer = if v6 { FilterLayer::AuthConnectV6 } else { FilterLayer::AuthConnectV4 };
                let action_type = filter_for(layer).map_or(wfp_ffi::FWP_ACTION_CALLOUT_UNKNOWN, |s| s.action_type);
                let entry = FWPS_CLASSIFY_OUT0 {
                    actionType: self.wfp.readings.entry_action_type(),
                    rights: FWPS_RIGHT_ACTION_WRITE,
                    ..Default::default()
                };
                let mut ind = Indication::new(layer, &f, self.own_filter.wrapping_add(1), action_type, 0, entry, None);
                let raw = ind.raw(0);
                // SAFETY: every pointer in `raw` points into `ind`, alive for the call.
                unsafe { self.adapter.classify_auth_connect(family(v6), &raw, now) };
                let out = *ind.out;
                step.expect = self.drain();
                let action = match resolve(action_type, out.actionType, &self.wfp.readings) {
                    Outcome::Block => AuthAction::Block,
                    Outcome::Permit => AuthAction::Permit,
                    Outcome::Continue => AuthAction::Continue,
                };
                auth = AuthDecision::new(action, step.expect.reason.map_or("unclassified", |r| r.name()));
            }
        }
        let expect = step.expect;
        self.steps.push(step);
        Fed { expect, connect, auth }
    }
}

/// The fixture step of an engine's connect-redirect indication.
pub fn connect_step(v: &ConnectView<'_>) -> Step {
    let mut step = base_step(Layer::ConnectRedirect, v.conn, v.remote, v.now_ms);
    step.state = v.state;
    step.write_right = v.write_right;
    step.reauthorize = v.reauthorize;
    step.previous = v.previous.to_vec();
    step
}

/// The fixture step of an engine's auth-connect indication.
pub fn auth_step(v: &AuthView<'_>) -> Step {
    let mut step = base_step(Layer::AuthConnect, v.conn, v.remote, v.now_ms);
    step.redirected = v.redirected;
    step.target_pid = v.target_pid;
    step.original_destination = v.original_destination;
    step
}

impl Callout for ArbiterCallout {
    fn as_bind(&mut self) -> Option<&mut dyn crate::bind::BindCallout> {
        Some(self)
    }

    fn connect_redirect(&mut self, _me: &Identity, v: &ConnectView<'_>) -> ConnectDecision {
        self.feed(connect_step(v)).connect
    }

    fn auth_connect(&mut self, _me: &Identity, v: &AuthView<'_>) -> AuthDecision {
        self.feed(auth_step(v)).auth
    }

    fn as_arbiter(&self) -> Option<&Self> {
        Some(self)
    }

    fn as_arbiter_mut(&mut self) -> Option<&mut Self> {
        Some(self)
    }
}
