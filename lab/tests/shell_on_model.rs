//! The lab matrix's flows through the driver shell on the WFP model.
//!
//! Every connection of every scenario of the lab matrix, as the lab recorded
//! it, is classified again by the code the driver runs around the adapter:
//! the driver loads on a fresh WFP model (`shell::Lifecycle`: registry read
//! at PASSIVE_LEVEL, callouts registered, the filters of
//! `callout::filters::FILTERS` added in one transaction of a dynamic
//! session, their run-time ids handed to the adapter), each indication goes
//! through `shell::classify` (the adapter under the driver's spin lock,
//! apply and release after it; the model fails any pend, apply, completion
//! or release made under that lock), and the driver unloads
//! (`Lifecycle::stop`). The same steps fed to the lab's own path
//! (`ArbiterCallout::feed`) are the reference.
//!
//! Asserted for each step: the audited decision equals the lab's recorded
//! one and the reference's; the flow's outcome under our filter's action
//! type and the layer data after it equal the reference's. For each load:
//! every classify handle acquired is released and every writable acquire
//! applied once (the model also panics at the end of a classify that broke
//! either rule), no classification is left pended, no redirect context
//! leaks, no spin lock is left held, the pend timer is not armed, the adapter
//! counted nothing malformed or refused, and unload removes our filters and
//! unregisters the callouts. The matrix is run under successive readings of
//! the model until at least 10,000 flows have gone through the shell.

use core::net::SocketAddr;
use std::path::Path;

use arbiter::audit::{AuditRecord, Event, GuardRecord};
use arbiter::boot::BootMode;
use arbiter::flow::SidBuf;
use arbiter::{Instant, Layer, RedirectState, RuleSet};
use arbiter_callout::boot::BootFilter;
use arbiter_callout::filters::{FILTERS, FilterLayer};
use arbiter_callout::shell::{self, CalloutLock, Entry, Kernel, Lifecycle, PASSIVE_LEVEL, Status};
use arbiter_callout::{Callout, CalloutConfig, Family, PendConfig, PendTimer};
use arbiter_lab::fixture::{Expect, Fixture, Step};
use arbiter_lab::ours::{ArbiterCallout, OWN_FILTER, OWN_HANDLE};
use arbiter_lab::profiles::Profile;
use arbiter_lab::replay::{arbiter_for, fixture_rules};
use arbiter_lab::scenario::{LabRules, matrix, run};
use arbiter_wfp_model::arbitration::{Outcome, resolve};
use arbiter_wfp_model::bootset;
use arbiter_wfp_model::{
    ConnectData, Filter, FlowInfo, Indication, Irql, Readings, RedirectRecord, Routine, Runtime, SpinLockId, Version,
    Wfp,
};
use wfp_ffi::{
    FWPM_FILTER_FLAG_CLEAR_ACTION_RIGHT, FWPS_CLASSIFY_OUT0, FWPS_FILTER_FLAG_CLEAR_ACTION_RIGHT,
    FWPS_RIGHT_ACTION_WRITE,
};

const PROVIDER: u128 = 0xa7b1;
const SUBLAYER: u128 = 0xa7b2;
/// Callout keys: one per entry of `FILTERS`.
const CALLOUT_BASE: u128 = 0xc0;
/// Bytes of audit ring (drained after every classify).
const RING_BYTES: usize = 1 << 14;
/// How many flows must go through the shell.
const FLOWS: usize = 10_000;

/// The driver's state behind its spin lock, on the model's kernel.
struct Driver {
    callout: Option<Callout<RuleSet>>,
    lock: SpinLockId,
}

impl CalloutLock<RuleSet, Runtime> for Driver {
    fn with<R>(&mut self, rt: &mut Runtime, f: impl FnOnce(&mut Callout<RuleSet>, &mut Runtime) -> R) -> Option<R> {
        rt.kernel.acquire_spin_lock(self.lock);
        let r = self.callout.as_mut().map(|c| f(c, rt));
        rt.kernel.release_spin_lock(self.lock);
        r
    }
}

/// The pend timer: where it is armed (the driver's KTIMER).
#[derive(Default)]
struct Timer(Option<Instant>);

impl PendTimer for Timer {
    fn arm(&mut self, due: Instant) {
        self.0 = Some(due);
    }
    fn cancel(&mut self) {
        self.0 = None;
    }
}

/// One simulated machine with our driver loaded.
struct Machine {
    wfp: Wfp,
    driver: Driver,
    timer: Timer,
    callout_ids: Vec<u32>,
}

impl Kernel for Machine {
    fn irql(&self) -> u8 {
        match self.wfp.rt.kernel.irql() {
            Irql::Passive => PASSIVE_LEVEL,
            Irql::Apc => 1,
            Irql::Dispatch => 2,
        }
    }
    fn read_sublayer_weight(&mut self) -> Option<u16> {
        self.wfp.rt.kernel.call(Routine::Registry);
        None
    }
    fn open_engine(&mut self) -> Result<usize, Status> {
        self.wfp.engine_open_dynamic().map(|e| e as usize)
    }
    fn add_filters(&mut self, engine: usize, weight: u16) -> Result<[u64; 2], Status> {
        let engine = engine as u64;
        let check = |s: Status| if s < 0 { Err(s) } else { Ok(()) };
        check(self.wfp.transaction_begin(engine))?;
        check(self.wfp.provider_add(engine, PROVIDER))?;
        check(self.wfp.sublayer_add(engine, SUBLAYER, weight))?;
        let mut ids = [0u64; 2];
        for (i, spec) in FILTERS.iter().enumerate() {
            let callout = CALLOUT_BASE + i as u128;
            check(self.wfp.callout_add(engine, callout, spec.layer))?;
            let filter = Filter {
                layer: spec.layer,
                sublayer: SUBLAYER,
                weight: spec.weight.unwrap_or(0),
                action_type: spec.action_type,
                callout,
                flags: spec.flags,
                key: 0,
                conditions: [None, None],
            };
            let id = self.wfp.filter_add(engine, filter)?;
            if let Some(slot) = ids.get_mut(i) {
                *slot = id;
            }
        }
        check(self.wfp.transaction_commit(engine))?;
        Ok(ids)
    }
    fn close_engine(&mut self, engine: usize) {
        self.wfp.engine_close(engine as u64);
    }
    fn unsubscribe_bfe(&mut self) {}
    // The lab matrix runs in `[boot] mode = "open"`: the guard adds nothing,
    // and its records are not what this test compares.
    fn boot_state(&mut self) -> (BootMode, Option<u64>) {
        (BootMode::Open, None)
    }
    fn add_override(&mut self, engine: usize, filter: &BootFilter) -> Result<u64, Status> {
        self.wfp.filter_add(engine as u64, bootset::filter(filter))
    }
    fn delete_filter(&mut self, engine: usize, id: u64) -> Result<(), Status> {
        let s = self.wfp.filter_delete(engine as u64, id);
        if s < 0 { Err(s) } else { Ok(()) }
    }
    fn audit_guard(&mut self, _: GuardRecord) {}
    fn complete_held(&mut self) {
        // One thread: no classifyFn can be between its holds of the lock.
        assert_eq!(shell::complete_held(&mut self.driver, &mut self.wfp.rt), 0);
    }
    fn unregister_callouts(&mut self) -> Result<(), Status> {
        let mut result = Ok(());
        for id in self.callout_ids.clone() {
            let s = self.wfp.callout_unregister_by_id(id);
            if s < 0 && result.is_ok() {
                result = Err(s);
            }
        }
        result
    }
}

impl Machine {
    /// DriverEntry on a fresh model: the lifecycle's order, the adapter
    /// told our run-time filter ids.
    fn load(readings: Readings, callout: Callout<RuleSet>) -> (Self, Lifecycle) {
        let mut wfp = Wfp::new(readings);
        wfp.rt.kernel.trace = true;
        let lock = wfp.rt.kernel.new_spin_lock();
        wfp.rt.kernel.mark_classify_lock(lock);
        // No pend, apply, completion or release under the driver's lock.
        wfp.rt.kernel.forbid_engine_calls_under(lock);
        let mut m = Self {
            wfp,
            driver: Driver { callout: Some(callout), lock },
            timer: Timer::default(),
            callout_ids: Vec::new(),
        };
        let life = Lifecycle::start(&mut m);
        for i in 0..FILTERS.len() {
            let id = m.wfp.callout_register(CALLOUT_BASE + i as u128, Box::new(|_, _, _| {})).expect("register");
            m.callout_ids.push(id);
        }
        let [v4, v6] = life.bfe_running(&mut m).expect("filters added").expect("added by us");
        if let Some(c) = m.driver.callout.as_mut() {
            c.set_redirect_handle(core::ptr::without_provenance_mut(OWN_HANDLE as usize));
            c.set_own_filters(v4, v6);
        }
        (m, life)
    }

    /// Our filter at `layer`: its run-time id, action type, and FWPS flags.
    fn our_filter(&self, layer: FilterLayer) -> (u64, u32, u16) {
        let (id, f) = self
            .wfp
            .filters()
            .iter()
            .find(|(_, f)| f.layer == layer && f.sublayer == SUBLAYER)
            .expect("our filter is in the engine");
        let flags =
            if f.flags & FWPM_FILTER_FLAG_CLEAR_ACTION_RIGHT != 0 { FWPS_FILTER_FLAG_CLEAR_ACTION_RIGHT } else { 0 };
        (*id, f.action_type, flags)
    }
}

/// What one classification through the shell did.
#[derive(Debug, PartialEq, Eq)]
struct Seen {
    expect: Expect,
    outcome: Outcome,
    /// Connect-redirect: remote and target PID after the classify.
    after: Option<(SocketAddr, u32)>,
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

fn records_for(state: RedirectState) -> Vec<RedirectRecord> {
    let ours = RedirectRecord { handle: OWN_HANDLE as usize, context: Vec::new() };
    let other = RedirectRecord { handle: OWN_HANDLE as usize + 1, context: Vec::new() };
    match state {
        RedirectState::NotRedirected => Vec::new(),
        RedirectState::RedirectedBySelf => vec![ours],
        RedirectState::RedirectedByOther => vec![other],
        RedirectState::PreviouslyRedirectedBySelf => vec![ours, other],
    }
}

/// The decision the adapter audited last, as a fixture expectation.
fn drain(callout: &Callout<RuleSet>, next_seq: &mut u64) -> Expect {
    let mut expect = Expect::default();
    for (seq, bytes) in callout.ring().iter() {
        if seq < *next_seq {
            continue;
        }
        let (rec, _) = AuditRecord::decode(bytes).expect("audit record decodes");
        if let (Some(o), false) = (rec.outcome(), matches!(rec.event, Event::Departure(_))) {
            expect = Expect {
                verdict: Some(o.verdict),
                reason: Some(o.reason),
                redirect_to: o.redirect.map(|r| r.remote),
                target_pid: o.redirect.map(|r| r.target_pid),
            };
        }
    }
    *next_seq = callout.ring().next_seq();
    expect
}

/// One step through `shell::classify`, laid out as WFP lays it out.
fn through_shell(m: &mut Machine, step: &Step, next_seq: &mut u64) -> Seen {
    let v6 = step.local.is_ipv6();
    let family = if v6 { Family::V6 } else { Family::V4 };
    let now = Instant::from_millis(step.at_ms);
    let f = flow_info(step);
    let readings = m.wfp.rt.readings;
    let (outcome, after) = match step.layer {
        Layer::ConnectRedirect => {
            let layer = if v6 { FilterLayer::ConnectRedirectV6 } else { FilterLayer::ConnectRedirectV4 };
            let (filter_id, action_type, flags) = m.our_filter(layer);
            let mut data = ConnectData::new(step.remote, step.local, records_for(step.state));
            // The lab names our filter OWN_FILTER; on this machine it has its run-time id.
            data.versions = step
                .previous
                .iter()
                .map(|p| Version {
                    filter: if p.filter == OWN_FILTER { filter_id } else { p.filter },
                    local_redirect_handle: p.local_redirect_handle,
                })
                .collect();
            let has_records = !data.records.is_empty();
            let (rights, entry) = if step.write_right {
                (FWPS_RIGHT_ACTION_WRITE, readings.entry_action_type())
            } else {
                (0, wfp_ffi::FWP_ACTION_PERMIT)
            };
            let out = FWPS_CLASSIFY_OUT0 { actionType: entry, rights, ..Default::default() };
            let mut ind = Indication::new(layer, &f, filter_id, action_type, flags, out, None);
            let id = m.wfp.rt.begin_classify(data, &raw const *ind.out);
            if has_records {
                ind.set_redirect_records(id);
            }
            let raw = ind.raw(id);
            // The engine calls classifyFn at up to DISPATCH_LEVEL.
            m.wfp.rt.kernel.set_irql(Irql::Dispatch);
            // SAFETY: every pointer in `raw` points into `ind`, alive for the call; the runtime acts on classify `id`.
            unsafe {
                shell::classify(&mut m.driver, &mut m.wfp.rt, &mut m.timer, Entry::ConnectRedirect(family), &raw, now);
            }
            m.wfp.rt.kernel.set_irql(Irql::Passive);
            let out = *ind.out;
            let (after, _) = m.wfp.rt.end_classify(id);
            let outcome = match resolve(action_type, out.actionType, &readings) {
                // Without the write right only a veto counts (as the lab reads it).
                Outcome::Permit if !step.write_right => Outcome::Continue,
                o => o,
            };
            (outcome, Some((after.remote, after.target_pid)))
        }
        Layer::AuthConnect => {
            let layer = if v6 { FilterLayer::AuthConnectV6 } else { FilterLayer::AuthConnectV4 };
            let (filter_id, action_type, flags) = m.our_filter(layer);
            let out = FWPS_CLASSIFY_OUT0 {
                actionType: readings.entry_action_type(),
                rights: FWPS_RIGHT_ACTION_WRITE,
                ..Default::default()
            };
            let mut ind = Indication::new(layer, &f, filter_id, action_type, flags, out, None);
            let raw = ind.raw(0);
            m.wfp.rt.kernel.set_irql(Irql::Dispatch);
            // SAFETY: every pointer in `raw` points into `ind`, alive for the call.
            unsafe {
                shell::classify(&mut m.driver, &mut m.wfp.rt, &mut m.timer, Entry::AuthConnect(family), &raw, now);
            }
            m.wfp.rt.kernel.set_irql(Irql::Passive);
            (resolve(action_type, ind.out.actionType, &readings), None)
        }
    };
    let callout = m.driver.callout.as_ref().expect("loaded");
    Seen { expect: drain(callout, next_seq), outcome, after }
}

/// One step through the lab's own path (the reference).
fn through_lab(reference: &mut ArbiterCallout, step: &Step) -> Seen {
    let fed = reference.feed(Step { expect: Expect::default(), ..step.clone() });
    let (outcome, after) = match step.layer {
        Layer::ConnectRedirect => {
            use arbiter_lab::engine::ConnectAction as A;
            let outcome = match fed.connect.action {
                A::Block => Outcome::Block,
                A::Continue => Outcome::Continue,
                _ => Outcome::Permit,
            };
            let after = match fed.connect.action {
                A::RedirectLocal { to, target_pid } => (to, u32::try_from(target_pid).expect("a DWORD")),
                _ => (step.remote, 0),
            };
            (outcome, Some(after))
        }
        Layer::AuthConnect => {
            use arbiter_lab::engine::AuthAction as A;
            let outcome = match fed.auth.action {
                A::Block => Outcome::Block,
                A::Permit => Outcome::Permit,
                A::Continue => Outcome::Continue,
            };
            (outcome, None)
        }
    };
    Seen { expect: fed.expect, outcome, after }
}

/// Tallies of the routines the kernel path called, per load.
fn tally(calls: &[(Routine, Irql)], routine: Routine) -> usize {
    calls.iter().filter(|(r, _)| *r == routine).count()
}

fn rule_sets() -> Vec<LabRules> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let mut sets = LabRules::shipped(&root).expect("shipped rules");
    if sets.iter().all(|s| s.name != "builtin") {
        sets.push(LabRules::fallback());
    }
    sets
}

/// Runs one recorded scenario through the shell on a fresh machine and
/// through the lab's path; returns the connect-redirect flows classified.
fn one_load(name: &str, fixture: &Fixture, readings: Readings) -> usize {
    let rules = fixture_rules(fixture).expect("rules");
    let callout = Callout::new(
        arbiter_for(fixture, rules.clone()).expect("core"),
        CalloutConfig { ring_bytes: RING_BYTES, pend: Some(PendConfig::default()) },
    )
    .expect("callout");
    let mut reference = ArbiterCallout::with_own_filter(
        arbiter_for(fixture, rules).expect("core"),
        readings,
        fixture.environment.own_filter,
    )
    .expect("reference");
    let (mut m, life) = Machine::load(readings, callout);
    let ours: Vec<u64> =
        [FilterLayer::ConnectRedirectV4, FilterLayer::ConnectRedirectV6].iter().map(|l| m.our_filter(*l).0).collect();
    let mut next_seq = m.driver.callout.as_ref().expect("loaded").ring().next_seq();
    m.wfp.rt.kernel.calls.clear();
    let mut flows = 0;
    for (i, step) in fixture.steps.iter().enumerate() {
        assert!(
            step.previous.iter().all(|p| !ours.contains(&p.filter)),
            "{name} step {i}: a peer's filter id collides with ours on the model"
        );
        let shell = through_shell(&mut m, step, &mut next_seq);
        let lab = through_lab(&mut reference, step);
        assert_eq!(shell.expect, step.expect, "{name} step {i} ({readings:?}): the decision differs from the lab's");
        assert_eq!(shell, lab, "{name} step {i} ({readings:?}): the shell and the lab's path differ");
        assert!(m.wfp.rt.kernel.held_locks().is_empty(), "{name} step {i}: a spin lock is still held");
        flows += usize::from(step.layer == Layer::ConnectRedirect);
    }
    // One apply per writable acquire, one release per handle acquired.
    let calls = core::mem::take(&mut m.wfp.rt.kernel.calls);
    assert_eq!(
        tally(&calls, Routine::FwpsAcquireWritableLayerDataPointer),
        tally(&calls, Routine::FwpsApplyModifiedLayerData),
        "{name}: a writable acquire without its apply"
    );
    assert_eq!(
        tally(&calls, Routine::FwpsAcquireClassifyHandle),
        tally(&calls, Routine::FwpsReleaseClassifyHandle),
        "{name}: a classify handle never released"
    );
    assert_eq!(tally(&calls, Routine::FwpsPendClassify), 0, "{name}: our proxy is registered; nothing is held");
    let counters = *m.driver.callout.as_ref().expect("loaded").counters();
    assert_eq!((counters.malformed, counters.acquire_failed, counters.pend_refused), (0, 0, 0), "{name}: {counters:?}");
    assert_eq!(m.timer.0, None, "{name}: the pend timer is armed with nothing held");
    m.wfp.rt.assert_quiescent();
    // Unload: filters gone, callouts unregistered, nothing left open.
    assert_eq!(life.stop(&mut m).unregister, Ok(()), "{name}");
    assert!(m.wfp.filters().values().all(|f| f.sublayer != SUBLAYER), "{name}: our filters outlive unload");
    assert_eq!(m.wfp.open_engines(), 0, "{name}");
    m.wfp.rt.assert_quiescent();
    flows
}

#[test]
fn ten_thousand_lab_matrix_flows_through_the_driver_shell_on_the_model() {
    let rules = rule_sets();
    let fixtures: Vec<(String, Fixture)> = matrix(&Profile::ALL, rules.len(), false)
        .into_iter()
        .map(|s| {
            let r = run(s, &rules).expect("scenario");
            (r.name, r.recorded.expect("arbiter scenarios record"))
        })
        .collect();
    let mut flows = 0;
    let mut rounds = 0;
    // Each round runs the whole matrix under another reading of the model.
    for readings in Readings::all().into_iter().cycle() {
        if flows >= FLOWS {
            break;
        }
        for (name, fixture) in &fixtures {
            flows += one_load(name, fixture, readings);
        }
        rounds += 1;
    }
    assert!(flows >= FLOWS, "{flows} flows");
    eprintln!("{flows} flows ({} scenarios x {rounds} readings) through the driver shell", fixtures.len());
}
