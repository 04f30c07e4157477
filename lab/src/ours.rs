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
use arbiter::{Arbiter, Capacities, Config, Instant, Layer, RuleSet};
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
/// Our redirect handle in the lab.
pub const OWN_HANDLE: u64 = 1;
/// Our proxy's PID in the lab.
pub const OWN_PROXY_PID: u64 = 5151;
/// Our proxy's app id in the lab.
pub const OWN_PROXY_APP: &str = r"\device\harddiskvolume3\program files\arbiter\arbiter-proxy.exe";
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
    /// Next ring sequence number not yet drained.
    next_seq: u64,
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
    let mut a = Arbiter::new(config, Capacities::default(), rules)
        .map_err(|_| "out of memory reserving the tables".to_owned())?;
    if v4.is_some() || v6.is_some() {
        a.set_proxy(OWN_PROXY_PID, v4, v6).map_err(|e| e.to_string())?;
    }
    Ok(a)
}

impl ArbiterCallout {
    /// Wraps a core (configured with `own_filter` = [`arbiter_callout::OWN_FILTER`])
    /// in the adapter, on a fresh WFP model under `readings`.
    pub fn new(arbiter: Arbiter<RuleSet>, readings: Readings) -> Result<Self, String> {
        let mut adapter = Adapter::new(arbiter, CalloutConfig { ring_bytes: LAB_RING_BYTES, pend: None })
            .map_err(|_| "out of memory reserving the audit ring".to_owned())?;
        adapter.set_redirect_handle(handle_ptr(OWN_HANDLE));
        adapter.set_own_filters(OWN_FILTER, OWN_FILTER);
        let next_seq = adapter.ring().next_seq();
        Ok(Self {
            adapter,
            wfp: Runtime::new(readings),
            steps: Vec::new(),
            audit_log: Vec::new(),
            audit_failures: 0,
            next_seq,
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

fn flow_info(conn: &Connection, remote: SocketAddr) -> FlowInfo {
    FlowInfo {
        protocol: conn.protocol.0,
        local: conn.local,
        remote,
        pid: conn.pid,
        app: conn.app.clone(),
        original_app: conn.original_app.clone(),
        endpoint: conn.endpoint,
        reauthorize: false,
        redirected: false,
        target_pid: None,
        original_destination: None,
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

impl Callout for ArbiterCallout {
    fn as_bind(&mut self) -> Option<&mut dyn crate::bind::BindCallout> {
        Some(self)
    }

    fn connect_redirect(&mut self, _me: &Identity, v: &ConnectView<'_>) -> ConnectDecision {
        let v6 = v.conn.local.is_ipv6();
        let layer = if v6 { FilterLayer::ConnectRedirectV6 } else { FilterLayer::ConnectRedirectV4 };
        let Some(spec) = filter_for(layer) else { return ConnectDecision::new(ConnectAction::Continue, "no-filter") };
        let mut f = flow_info(v.conn, v.remote);
        f.reauthorize = v.reauthorize;
        let mut data = ConnectData::new(
            v.remote,
            v.conn.local,
            v.conn
                .records
                .iter()
                .map(|r| RedirectRecord { handle: handle_addr(r.handle), context: Vec::new() })
                .collect(),
        );
        data.versions = v
            .previous
            .iter()
            .map(|p| Version { filter: p.filter, local_redirect_handle: p.local_redirect_handle })
            .collect();
        let has_records = !data.records.is_empty();
        let rights = if v.write_right { FWPS_RIGHT_ACTION_WRITE } else { 0 };
        let entry_action = if v.write_right {
            self.wfp.readings.entry_action_type()
        } else {
            // A hard decision above us: the model's entry value then.
            wfp_ffi::FWP_ACTION_PERMIT
        };
        let entry = FWPS_CLASSIFY_OUT0 { actionType: entry_action, rights, ..Default::default() };
        let mut ind = Indication::new(layer, &f, OWN_FILTER, spec.action_type, 0, entry, None);
        let id = self.wfp.begin_classify(data, &raw const *ind.out);
        if has_records {
            ind.set_redirect_records(id);
        }
        let raw = ind.raw(id);
        // SAFETY: every pointer in `raw` points into `ind`, alive for the call;
        // the runtime acts on this classify (id).
        unsafe {
            self.adapter.classify_connect_redirect(&mut self.wfp, family(v6), &raw, Instant::from_millis(v.now_ms))
        };
        let out = *ind.out;
        let (after, applied) = self.wfp.end_classify(id);

        let mut step = base_step(Layer::ConnectRedirect, v.conn, v.remote, v.now_ms);
        step.state = v.state;
        step.write_right = v.write_right;
        step.reauthorize = v.reauthorize;
        step.previous = v.previous.to_vec();
        step.expect = self.drain();
        let reason = step.expect.reason.map_or("unclassified", |r| r.name()).to_owned();
        self.steps.push(step);

        let modified = applied.iter().any(|a| a.modified);
        let reauthorizing = applied.iter().any(arbiter_wfp_model::Applied::reauthorize_if_modified);
        let hard = out.rights & FWPS_RIGHT_ACTION_WRITE == 0;
        let action = match resolve(spec.action_type, out.actionType, &self.wfp.readings) {
            Outcome::Block => ConnectAction::Block,
            Outcome::Permit if modified => {
                ConnectAction::RedirectLocal { to: after.remote, target_pid: u64::from(after.target_pid) }
            }
            Outcome::Permit if hard && v.write_right => ConnectAction::HardPermit,
            Outcome::Permit | Outcome::Continue if !v.write_right => ConnectAction::Continue,
            Outcome::Permit => ConnectAction::Permit,
            Outcome::Continue => ConnectAction::Continue,
        };
        let d = ConnectDecision::new(action, &reason);
        if reauthorizing { d.reauthorizing() } else { d }
    }

    fn auth_connect(&mut self, _me: &Identity, v: &AuthView<'_>) -> AuthDecision {
        let v6 = v.conn.local.is_ipv6();
        let layer = if v6 { FilterLayer::AuthConnectV6 } else { FilterLayer::AuthConnectV4 };
        let Some(spec) = filter_for(layer) else { return AuthDecision::new(AuthAction::Continue, "no-filter") };
        let mut f = flow_info(v.conn, v.remote);
        f.redirected = v.redirected;
        f.target_pid = v.target_pid.and_then(|p| u32::try_from(p).ok());
        f.original_destination = v.original_destination;
        let entry = FWPS_CLASSIFY_OUT0 {
            actionType: self.wfp.readings.entry_action_type(),
            rights: FWPS_RIGHT_ACTION_WRITE,
            ..Default::default()
        };
        let mut ind = Indication::new(layer, &f, OWN_FILTER + 1, spec.action_type, 0, entry, None);
        let raw = ind.raw(0);
        // SAFETY: every pointer in `raw` points into `ind`, alive for the call.
        unsafe { self.adapter.classify_auth_connect(family(v6), &raw, Instant::from_millis(v.now_ms)) };
        let out = *ind.out;

        let mut step = base_step(Layer::AuthConnect, v.conn, v.remote, v.now_ms);
        step.redirected = v.redirected;
        step.target_pid = v.target_pid;
        step.original_destination = v.original_destination;
        step.expect = self.drain();
        let reason = step.expect.reason.map_or("unclassified", |r| r.name()).to_owned();
        self.steps.push(step);
        let action = match resolve(spec.action_type, out.actionType, &self.wfp.readings) {
            Outcome::Block => AuthAction::Block,
            Outcome::Permit => AuthAction::Permit,
            Outcome::Continue => AuthAction::Continue,
        };
        AuthDecision::new(action, &reason)
    }

    fn as_arbiter(&self) -> Option<&Self> {
        Some(self)
    }
}
