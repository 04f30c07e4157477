//! The real classify adapter (`arbiter-callout`) on the WFP model, with the
//! driver's own filters (`arbiter_callout::filters::FILTERS`), under every
//! reading the model keeps open. Each review finding on the callout side is
//! one test here.

#![allow(clippy::unwrap_used, clippy::indexing_slicing, reason = "tests")]
#![allow(clippy::std_instead_of_core, clippy::alloc_instead_of_core, reason = "std tests")]

use std::net::SocketAddr;

use arbiter::ProxyRegistration;
use arbiter::audit::AuditRecord;
use arbiter::control::{Access, Caller, HandleId, Handles, Op, Reply, Request, RulesRejected, Status};
use arbiter::policy::Rule;
use arbiter::{Action, Arbiter, Capacities, Config, Duration, Instant, Reason, RuleSet, Verdict};
use arbiter_callout::Fwps;
use arbiter_callout::complete::{Deferred, Kept};
use arbiter_callout::control::{Device, cleanup, dispatch, open};
use arbiter_callout::filters::{FILTERS, FilterLayer, filter_for};
use arbiter_callout::pend::{Fallback, PendConfig, PendTimer};
use arbiter_callout::shell::{self, CalloutLock};
use arbiter_callout::{Callout, CalloutConfig, Family, OWN_FILTER};
use arbiter_wfp_model::arbitration::{LayerArbiter, Outcome, resolve};
use arbiter_wfp_model::readings::Completion;
use arbiter_wfp_model::{Applied, ConnectData, FlowInfo, Indication, Readings, Runtime, SpinLockId, TimerId, Version};
use wfp_ffi::fields::ALE_CONNECT_REDIRECT_V4;
use wfp_ffi::{FWPS_CLASSIFY_OUT0, FWPS_CONNECT_REQUEST0, FWPS_RIGHT_ACTION_WRITE, HANDLE, NTSTATUS};

const FILTER_V4: u64 = 0x1_0000_0101;
const FILTER_V6: u64 = 0x1_0000_0102;
const PROXY_PID: u64 = 4242;
const HANDLE_ADDR: usize = 0xAB5E;
const T0: Instant = Instant::from_millis(1_000);

fn callout(action: Option<Action>, pend: Option<PendConfig>, own_filters: bool) -> Callout<RuleSet> {
    let rules = RuleSet { rules: action.map(|a| vec![Rule::any("all", a)]).unwrap_or_default(), ..RuleSet::default() };
    let config = Config { own_filter: OWN_FILTER, ..Config::default() };
    let caps = Capacities { endpoints: 64, destinations: 64, known_proxies: 16 };
    let mut c =
        Callout::new(Arbiter::new(config, caps, rules).unwrap(), CalloutConfig { ring_bytes: 1 << 16, pend }).unwrap();
    c.set_redirect_handle(std::ptr::without_provenance_mut::<core::ffi::c_void>(HANDLE_ADDR) as HANDLE);
    if own_filters {
        c.set_own_filters(FILTER_V4, FILTER_V6);
    }
    c
}

fn register(c: &mut Callout<RuleSet>) {
    c.arbiter_mut()
        .set_proxy(PROXY_PID, Some("127.0.0.1:8080".parse().unwrap()), Some("[::1]:8080".parse().unwrap()))
        .unwrap();
}

fn flow(local: &str, remote: &str) -> FlowInfo {
    FlowInfo {
        protocol: 6,
        local: local.parse().unwrap(),
        remote: remote.parse().unwrap(),
        pid: 1000,
        app: r"\device\harddiskvolume3\apps\browser.exe".to_owned(),
        original_app: r"\device\harddiskvolume3\apps\browser.exe".to_owned(),
        endpoint: 0xE9D0_0001,
        reauthorize: false,
        redirected: false,
        target_pid: None,
        original_destination: None,
        package: None,
    }
}

struct Classified {
    out: FWPS_CLASSIFY_OUT0,
    data: ConnectData,
    applied: Vec<Applied>,
    outcome: Outcome,
}

/// One connect-redirect classifyFn call of our V4 filter, as the model
/// makes it, with `rights` at entry.
fn cr(
    c: &mut Callout<RuleSet>,
    rt: &mut Runtime,
    f: &FlowInfo,
    data: ConnectData,
    rights: u32,
    tweak: impl FnOnce(&mut Indication),
) -> Classified {
    let spec = filter_for(FilterLayer::ConnectRedirectV4).unwrap();
    let mut arb = LayerArbiter::new();
    if rights == 0 {
        // A hard permit above us.
        arb.take(
            wfp_ffi::FWP_ACTION_PERMIT,
            &FWPS_CLASSIFY_OUT0 { actionType: wfp_ffi::FWP_ACTION_PERMIT, ..Default::default() },
            &rt.readings,
        );
    }
    let entry = FWPS_CLASSIFY_OUT0 { actionType: arb.entry_action(&rt.readings), rights, ..Default::default() };
    let records = !data.records.is_empty();
    let mut ind = Indication::new(FilterLayer::ConnectRedirectV4, f, FILTER_V4, spec.action_type, 0, entry, None);
    let id = rt.begin_classify(data, &raw const *ind.out);
    if records {
        ind.set_redirect_records(id);
    }
    tweak(&mut ind);
    let raw = ind.raw(id);
    // SAFETY: every pointer in `raw` points into `ind`, alive for the call.
    unsafe { c.classify_connect_redirect(rt, Family::V4, &raw, T0) };
    let out = *ind.out;
    let (data, applied) = rt.end_classify(id);
    let outcome = resolve(spec.action_type, out.actionType, &rt.readings);
    Classified { out, data, applied, outcome }
}

fn reasons(c: &Callout<RuleSet>) -> Vec<(Verdict, Reason)> {
    c.ring()
        .iter()
        .filter_map(|(_, bytes)| {
            let (rec, _) = AuditRecord::decode(bytes).ok()?;
            rec.outcome().map(|o| (o.verdict, o.reason))
        })
        .collect()
}

fn fresh() -> ConnectData {
    ConnectData::new("93.184.216.34:443".parse().unwrap(), "10.0.0.5:50000".parse().unwrap(), Vec::new())
}

// ---- finding: TERMINATING filters turn every CONTINUE into a BLOCK -----------------

#[test]
fn our_filters_are_unknown_and_an_unproxied_connect_is_never_blocked() {
    assert!(FILTERS.iter().all(|f| f.action_type != wfp_ffi::FWP_ACTION_CALLOUT_TERMINATING));
    for r in Readings::all() {
        for action in [None, Some(Action::Bypass)] {
            let mut c = callout(action, None, true);
            register(&mut c);
            let mut rt = Runtime::new(r);
            let got = cr(
                &mut c,
                &mut rt,
                &flow("10.0.0.5:50000", "93.184.216.34:443"),
                fresh(),
                FWPS_RIGHT_ACTION_WRITE,
                |_| {},
            );
            assert_ne!(got.outcome, Outcome::Block, "{r:?} {action:?}: an unproxied connect is blocked");
        }
    }
}

// ---- finding: the write right is never restored after the writable acquire -----------

#[test]
fn continue_permit_and_proxy_leave_the_write_right_to_the_vendors_below() {
    for r in Readings::all() {
        for (action, want) in [
            (None, Outcome::Continue),
            (Some(Action::Bypass), Outcome::Continue),
            (Some(Action::Proxy), Outcome::Permit),
        ] {
            let mut c = callout(action, None, true);
            register(&mut c);
            let mut rt = Runtime::new(r);
            let got = cr(
                &mut c,
                &mut rt,
                &flow("10.0.0.5:50000", "93.184.216.34:443"),
                fresh(),
                FWPS_RIGHT_ACTION_WRITE,
                |_| {},
            );
            assert_eq!(got.outcome, want, "{r:?} {action:?}");
            assert_ne!(got.out.rights & FWPS_RIGHT_ACTION_WRITE, 0, "{r:?} {action:?}: decision made hard");
            let mut arb = LayerArbiter::new();
            arb.take(filter_for(FilterLayer::ConnectRedirectV4).unwrap().action_type, &got.out, &r);
            arb.next_sublayer();
            assert_eq!(arb.rights(), FWPS_RIGHT_ACTION_WRITE, "{r:?} {action:?}: lower sublayers lose the right");
        }
    }
}

#[test]
fn a_block_is_hard() {
    for r in Readings::all() {
        let mut c = callout(Some(Action::Block), None, true);
        let mut rt = Runtime::new(r);
        let got =
            cr(&mut c, &mut rt, &flow("10.0.0.5:50000", "93.184.216.34:443"), fresh(), FWPS_RIGHT_ACTION_WRITE, |_| {});
        assert_eq!(got.outcome, Outcome::Block);
        assert_eq!(got.out.rights & FWPS_RIGHT_ACTION_WRITE, 0);
    }
}

// ---- finding: early returns write nothing into classifyOut ---------------------------

#[test]
fn every_early_return_writes_continue_counts_and_audits() {
    for r in Readings::all() {
        // An indication that cannot be read: fail open, counted.
        let mut c = callout(Some(Action::Block), None, true);
        let mut rt = Runtime::new(r);
        let got =
            cr(&mut c, &mut rt, &flow("10.0.0.5:50000", "93.184.216.34:443"), fresh(), FWPS_RIGHT_ACTION_WRITE, |i| {
                i.set_empty(ALE_CONNECT_REDIRECT_V4::IP_REMOTE_PORT);
            });
        assert_eq!(got.outcome, Outcome::Continue, "{r:?}: unreadable indication");
        assert_ne!(got.out.rights & FWPS_RIGHT_ACTION_WRITE, 0);
        assert_eq!(c.counters().malformed, 1);

        // The classify handle or the layer data refused: fail open, counted, audited.
        for refuse_handle in [true, false] {
            let mut c = callout(Some(Action::Block), None, true);
            let mut rt = Runtime::new(r);
            if refuse_handle {
                rt.fail_acquire_handle = 1;
            } else {
                rt.fail_acquire_writable = 1;
            }
            let got = cr(
                &mut c,
                &mut rt,
                &flow("10.0.0.5:50000", "93.184.216.34:443"),
                fresh(),
                FWPS_RIGHT_ACTION_WRITE,
                |_| {},
            );
            assert_eq!(got.outcome, Outcome::Continue, "{r:?}: acquire refused");
            assert_ne!(got.out.rights & FWPS_RIGHT_ACTION_WRITE, 0);
            assert_eq!(c.counters().acquire_failed, 1);
            assert_eq!(reasons(&c), vec![(Verdict::Continue, Reason::LayerDataUnavailable)]);
        }
    }
}

// ---- finding: modifierFilterId 0 counts as ours until set_own_filters ----------------

#[test]
fn a_zero_modifier_is_not_ours_before_our_filter_ids_are_known() {
    let mut c = callout(Some(Action::Proxy), None, false);
    register(&mut c);
    let mut rt = Runtime::new(Readings::default());
    let mut data = fresh();
    data.versions = vec![Version { filter: 0, local_redirect_handle: true }];
    let _ = cr(&mut c, &mut rt, &flow("10.0.0.5:50000", "93.184.216.34:443"), data, FWPS_RIGHT_ACTION_WRITE, |_| {});
    let got = reasons(&c);
    assert_eq!(got.len(), 1);
    assert_ne!(got[0].1, Reason::ModifiedBySelf, "an unknown modifier was taken for ours");
}

// ---- finding: the zone rule sends bound flows where the proxy does not listen --------

#[test]
fn a_bound_flow_is_proxied_to_the_loopback_listener() {
    for (local, remote, want) in [
        ("10.0.0.5:50000", "93.184.216.34:443", "127.0.0.1:8080"),
        ("0.0.0.0:50000", "93.184.216.34:443", "127.0.0.1:8080"),
    ] {
        let mut c = callout(Some(Action::Proxy), None, true);
        register(&mut c);
        let mut rt = Runtime::new(Readings::default());
        let got = cr(&mut c, &mut rt, &flow(local, remote), fresh(), FWPS_RIGHT_ACTION_WRITE, |_| {});
        assert_eq!(got.data.remote, want.parse::<SocketAddr>().unwrap(), "from {local}");
        assert!(got.applied.iter().any(|a| a.modified));
    }
}

// ---- finding: the pend sequence and its timer ------------------------------------------

struct ModelTimer<'a> {
    rt: &'a mut Runtime,
    timer: TimerId,
}

impl PendTimer for ModelTimer<'_> {
    fn arm(&mut self, due: Instant) {
        self.rt.kernel.set_timer(self.timer, due);
    }
    fn cancel(&mut self) {
        self.rt.kernel.cancel_timer(self.timer);
    }
}

fn pend_config(fallback: Fallback) -> PendConfig {
    PendConfig { capacity: 4, timeout: Duration::from_millis(500), fallback }
}

#[test]
fn a_held_flow_follows_the_seed_sequence_and_is_proxied_when_the_proxy_registers() {
    for r in Readings::all() {
        let mut c = callout(Some(Action::Proxy), Some(pend_config(Fallback::Block)), true);
        let mut rt = Runtime::new(r);
        let got =
            cr(&mut c, &mut rt, &flow("10.0.0.5:50000", "93.184.216.34:443"), fresh(), FWPS_RIGHT_ACTION_WRITE, |_| {});
        assert_eq!(rt.pended().len(), 1, "{r:?}: not held");
        assert_eq!(got.out.actionType, wfp_ffi::FWP_ACTION_BLOCK);
        assert_eq!(got.out.flags & wfp_ffi::FWPS_CLASSIFY_OUT_FLAG_ABSORB, 0);
        register(&mut c);
        c.complete_pended(&mut rt, T0);
        c.run_completions(&mut rt);
        let done = rt.take_completed();
        assert_eq!(done.len(), 1);
        assert_eq!(done[0].data.remote, "127.0.0.1:8080".parse::<SocketAddr>().unwrap());
        assert_eq!(resolve(wfp_ffi::FWP_ACTION_CALLOUT_UNKNOWN, done[0].classify_out.actionType, &r), Outcome::Permit);
        rt.assert_quiescent();
    }
}

#[test]
fn a_held_flow_times_out_on_its_timer_without_any_other_classify() {
    let mut c = callout(Some(Action::Proxy), Some(pend_config(Fallback::Continue)), true);
    let mut rt = Runtime::new(Readings::default());
    let timer = rt.kernel.new_timer();
    let _ = cr(&mut c, &mut rt, &flow("10.0.0.5:50000", "93.184.216.34:443"), fresh(), FWPS_RIGHT_ACTION_WRITE, |_| {});
    c.sync_timer(&mut ModelTimer { rt: &mut rt, timer });
    let due = rt.kernel.timer_due(timer).expect("the pend timer is armed");
    assert_eq!(due, T0.saturating_add(Duration::from_millis(500)));
    let fired = rt.kernel.advance(due);
    assert_eq!(fired, vec![timer]);
    // The timer's DPC completes what is due.
    c.complete_pended(&mut rt, due);
    c.run_completions(&mut rt);
    c.sync_timer(&mut ModelTimer { rt: &mut rt, timer });
    let done = rt.take_completed();
    assert_eq!(done.len(), 1);
    assert_eq!(done[0].classify_out.actionType, wfp_ffi::FWP_ACTION_CONTINUE);
    assert!(rt.kernel.timer_due(timer).is_none(), "nothing left to time");
    rt.assert_quiescent();
}

// ---- finding: completions under the driver's spin lock ---------------------------------

/// The driver's global spin lock around its callout, on the model: the
/// lock classifyFn also takes (so the model knows a re-entering completion
/// would spin on it).
struct ModelLock {
    callout: Callout<RuleSet>,
    lock: SpinLockId,
}

impl ModelLock {
    fn new(callout: Callout<RuleSet>, rt: &mut Runtime) -> Self {
        let lock = rt.kernel.new_spin_lock();
        rt.kernel.mark_classify_lock(lock);
        Self { callout, lock }
    }

    /// One classifyFn: the lock taken around the adapter, as the driver does.
    fn classify(&mut self, rt: &mut Runtime, f: &FlowInfo) -> Classified {
        rt.kernel.acquire_spin_lock(self.lock);
        let got = cr(&mut self.callout, rt, f, fresh(), FWPS_RIGHT_ACTION_WRITE, |_| {});
        rt.kernel.release_spin_lock(self.lock);
        got
    }
}

impl CalloutLock<RuleSet, Runtime> for ModelLock {
    fn with<R>(&mut self, rt: &mut Runtime, f: impl FnOnce(&mut Callout<RuleSet>, &mut Runtime) -> R) -> Option<R> {
        rt.kernel.acquire_spin_lock(self.lock);
        let r = f(&mut self.callout, rt);
        rt.kernel.release_spin_lock(self.lock);
        Some(r)
    }
}

/// Three flows held, then the proxy registers, the old way: the timer DPC
/// or the control request completes them with the lock held. When the
/// engine classifies again inside FwpsCompleteClassify0 on the same thread,
/// classifyFn spins on that lock: the model fails it as a deadlock.
#[test]
fn completing_under_the_classify_lock_deadlocks_when_completion_reenters() {
    let r = Readings { completion: Completion::ReentersSameThread, ..Readings::default() };
    let mut rt = Runtime::new(r);
    let mut lock = ModelLock::new(callout(Some(Action::Proxy), Some(pend_config(Fallback::Block)), true), &mut rt);
    let _ = lock.classify(&mut rt, &flow("10.0.0.5:50000", "93.184.216.34:443"));
    assert_eq!(lock.callout.held(), 1);
    register(&mut lock.callout);
    let old = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        lock.with(&mut rt, |c, rt| {
            c.complete_pended(rt, T0);
            c.run_completions(rt);
        })
    }));
    let message = old.expect_err("the old structure must deadlock");
    let message = message.downcast_ref::<String>().cloned().unwrap_or_default();
    assert!(message.contains("deadlock"), "{message}");
}

/// The shell's way: decided under the lock, completed after it, under both
/// readings of re-entry, for the proxy registering and for the timeout.
#[test]
fn held_classifications_are_completed_after_the_lock_is_released() {
    for completion in [Completion::ReentersSameThread, Completion::Deferred] {
        for proxy in [true, false] {
            let r = Readings { completion, ..Readings::default() };
            let mut rt = Runtime::new(r);
            let config = PendConfig { capacity: 3, timeout: Duration::from_millis(500), fallback: Fallback::Block };
            let mut lock = ModelLock::new(callout(Some(Action::Proxy), Some(config), true), &mut rt);
            for port in 0..3 {
                let local = format!("10.0.0.5:{}", 50_000 + port);
                let got = lock.classify(&mut rt, &flow(&local, "93.184.216.34:443"));
                assert_eq!(got.out.actionType, wfp_ffi::FWP_ACTION_BLOCK, "held until completion");
            }
            assert_eq!(lock.callout.held(), 3);
            let now = if proxy {
                register(&mut lock.callout);
                T0
            } else {
                T0.saturating_add(Duration::from_millis(500))
            };
            shell::complete_pended(&mut lock, &mut rt, now);
            assert_eq!(lock.callout.held(), 0, "{completion:?} proxy={proxy}");
            let done = rt.take_completed();
            assert_eq!(done.len(), 3);
            for d in &done {
                let want = if proxy { "127.0.0.1:8080" } else { "93.184.216.34:443" };
                assert_eq!(d.data.remote, want.parse::<SocketAddr>().unwrap());
                let outcome = resolve(wfp_ffi::FWP_ACTION_CALLOUT_UNKNOWN, d.classify_out.actionType, &r);
                assert_eq!(outcome, if proxy { Outcome::Permit } else { Outcome::Block });
            }
            assert!(rt.kernel.held_locks().is_empty());
            rt.assert_quiescent();
        }
    }
}

/// The model's Fwps, noting which calls that finish a classification
/// (apply, complete, release) are made while the driver's lock is held.
struct Watch<'a> {
    rt: &'a mut Runtime,
    lock: SpinLockId,
    under_lock: Vec<&'static str>,
}

impl Watch<'_> {
    fn note(&mut self, call: &'static str) {
        if self.rt.kernel.held_locks().contains(&self.lock) {
            self.under_lock.push(call);
        }
    }
}

impl Fwps for Watch<'_> {
    fn query_redirect_state(&mut self, records: HANDLE, handle: HANDLE) -> wfp_ffi::FWPS_CONNECTION_REDIRECT_STATE {
        self.rt.query_redirect_state(records, handle)
    }
    fn acquire_classify_handle(&mut self, context: *const core::ffi::c_void) -> Result<u64, NTSTATUS> {
        self.rt.acquire_classify_handle(context)
    }
    fn acquire_writable_connect_request(
        &mut self,
        handle: u64,
        filter: u64,
        out: &mut FWPS_CLASSIFY_OUT0,
    ) -> Result<std::ptr::NonNull<FWPS_CONNECT_REQUEST0>, NTSTATUS> {
        self.rt.acquire_writable_connect_request(handle, filter, out)
    }
    fn apply_modified_layer_data(&mut self, handle: u64, data: std::ptr::NonNull<FWPS_CONNECT_REQUEST0>, flags: u32) {
        self.note("FwpsApplyModifiedLayerData0");
        self.rt.apply_modified_layer_data(handle, data, flags);
    }
    fn pend_classify(&mut self, handle: u64, filter: u64, out: &mut FWPS_CLASSIFY_OUT0) -> Result<(), NTSTATUS> {
        self.rt.pend_classify(handle, filter, out)
    }
    fn complete_classify(&mut self, handle: u64, out: &FWPS_CLASSIFY_OUT0) {
        self.note("FwpsCompleteClassify0");
        self.rt.complete_classify(handle, out);
    }
    fn release_classify_handle(&mut self, handle: u64) {
        self.note("FwpsReleaseClassifyHandle0");
        self.rt.release_classify_handle(handle);
    }
    fn allocate_context(&mut self, len: usize) -> Option<std::ptr::NonNull<u8>> {
        self.rt.allocate_context(len)
    }
    fn free_context(&mut self, context: std::ptr::NonNull<u8>) {
        self.rt.free_context(context);
    }
}

/// One classifyFn under the driver's lock, as the driver makes it: the
/// adapter under the lock with [`Deferred`] (or, `deferred` false, the old
/// way: the model's Fwps directly), the kept calls after the lock. Returns
/// the calls made under the lock.
fn cr_locked(lock: &mut ModelLock, rt: &mut Runtime, f: &FlowInfo, deferred: bool) -> (Classified, Vec<&'static str>) {
    let spec = filter_for(FilterLayer::ConnectRedirectV4).unwrap();
    let entry = FWPS_CLASSIFY_OUT0 {
        actionType: LayerArbiter::new().entry_action(&rt.readings),
        rights: FWPS_RIGHT_ACTION_WRITE,
        ..Default::default()
    };
    let mut ind = Indication::new(FilterLayer::ConnectRedirectV4, f, FILTER_V4, spec.action_type, 0, entry, None);
    let id = rt.begin_classify(fresh(), &raw const *ind.out);
    let raw = ind.raw(id);
    let mut watch = Watch { rt, lock: lock.lock, under_lock: Vec::new() };
    watch.rt.kernel.acquire_spin_lock(lock.lock);
    if deferred {
        let mut kept = Kept::default();
        let mut d = Deferred::new(&mut watch, &mut kept);
        // SAFETY: every pointer in `raw` points into `ind`, alive for the call.
        unsafe { lock.callout.classify_connect_redirect(&mut d, Family::V4, &raw, T0) };
        d.inner_mut().rt.kernel.release_spin_lock(lock.lock);
        d.finish();
    } else {
        // SAFETY: as above.
        unsafe { lock.callout.classify_connect_redirect(&mut watch, Family::V4, &raw, T0) };
        watch.rt.kernel.release_spin_lock(lock.lock);
    }
    let under_lock = std::mem::take(&mut watch.under_lock);
    let out = *ind.out;
    let (data, applied) = rt.end_classify(id);
    let outcome = resolve(spec.action_type, out.actionType, &rt.readings);
    (Classified { out, data, applied, outcome }, under_lock)
}

/// The lock's other half: FwpsApplyModifiedLayerData0 and the handle's
/// release in classifyFn, made after the lock is released (Deferred); the
/// old way made them under it. Proxy, permit, continue and block, each with
/// its apply; and a refused pend (two releases).
#[test]
fn classify_applies_and_releases_after_the_lock_is_released() {
    for r in Readings::all() {
        for action in [Some(Action::Proxy), Some(Action::Block), None] {
            let mut rt = Runtime::new(r);
            let mut lock = ModelLock::new(callout(action, None, true), &mut rt);
            register(&mut lock.callout);
            let f = flow("10.0.0.5:50000", "93.184.216.34:443");
            let (old, under) = cr_locked(&mut lock, &mut rt, &f, false);
            assert!(under.contains(&"FwpsApplyModifiedLayerData0"), "{r:?}: the old way applies under the lock");
            let (new, under) = cr_locked(&mut lock, &mut rt, &f, true);
            assert!(under.is_empty(), "{r:?} {action:?}: {under:?} under the lock");
            assert_eq!(new.outcome, old.outcome);
            assert_eq!(new.applied.len(), 1, "one apply per acquire");
            assert!(rt.kernel.held_locks().is_empty());
            rt.assert_quiescent();
        }
        // A pend FwpsPendClassify0 refuses: its handle and the next one are
        // both released after the lock.
        let mut rt = Runtime::new(r);
        rt.refuse_pend = true;
        let mut lock = ModelLock::new(callout(Some(Action::Proxy), Some(pend_config(Fallback::Block)), true), &mut rt);
        let (got, under) = cr_locked(&mut lock, &mut rt, &flow("10.0.0.5:50001", "93.184.216.34:443"), true);
        assert!(under.is_empty(), "{r:?}: {under:?} under the lock");
        assert_eq!(got.applied.len(), 1);
        assert_eq!(lock.callout.held(), 0);
        rt.assert_quiescent();
    }
}

// ---- the shell's control dispatch on the model -----------------------------------------

/// The proxy service's handle: its own process, read and write.
const PROXY_CALLER: Caller = Caller { pid: PROXY_PID as u32, handle: HandleId(0xF11E), access: Access::READ_WRITE };

fn no_rules(_: &[u8]) -> Result<RuleSet, RulesRejected> {
    Err(RulesRejected { code: 1, offset: 0 })
}

/// One control request under the driver's lock, completions after it, as
/// the driver's dispatch does.
fn control<R>(
    lock: &mut ModelLock,
    rt: &mut Runtime,
    handles: &mut Handles,
    now: Instant,
    f: impl FnOnce(&mut Device<'_, RuleSet, fn(&[u8]) -> Result<RuleSet, RulesRejected>, Runtime>) -> R,
) -> R {
    let r = lock
        .with(rt, |callout, rt| {
            let mut device = Device {
                callout,
                handles,
                decode_rules: no_rules as fn(&[u8]) -> Result<RuleSet, RulesRejected>,
                instance: 7,
                fwps: rt,
                now,
                driver_counters: arbiter::control::DriverCounters::default(),
            };
            f(&mut device)
        })
        .unwrap();
    shell::complete_pended(lock, rt, now);
    r
}

/// The proxy process dies: the I/O manager sends IRP_MJ_CLEANUP for its
/// handle, the registration goes at once, and the very next flow a rule
/// proxies is held (not sent to the dead listener), then gets the fallback
/// on its timer. Under every reading, on the model, through the lock.
#[test]
fn the_proxy_dying_stops_redirecting_at_once_on_the_model() {
    for r in Readings::all() {
        let mut rt = Runtime::new(r);
        let mut lock = ModelLock::new(callout(Some(Action::Proxy), Some(pend_config(Fallback::Block)), true), &mut rt);
        let mut handles = Handles::new();
        let reg = ProxyRegistration { pid: PROXY_PID, v4: Some("127.0.0.1:8080".parse().unwrap()), v6: None };
        let mut reply = vec![0u8; 256];
        let n = control(&mut lock, &mut rt, &mut handles, T0, |d| {
            assert_eq!(open(d, &PROXY_CALLER), Status::Ok);
            dispatch(d, Op::RegisterProxy.ioctl(), &PROXY_CALLER, &Request::RegisterProxy(reg).to_vec(), &mut reply)
        });
        assert_eq!(Reply::decode(&reply[..n]).unwrap().status, Status::Ok);
        let (got, _) = cr_locked(&mut lock, &mut rt, &flow("10.0.0.5:50000", "93.184.216.34:443"), true);
        assert_eq!(got.data.remote, "127.0.0.1:8080".parse::<SocketAddr>().unwrap(), "{r:?}: to the live proxy");

        control(&mut lock, &mut rt, &mut handles, T0, |d| cleanup(d, PROXY_CALLER.handle));
        assert_eq!(lock.callout.arbiter().proxy(), None, "registration cleared at cleanup");
        let (got, _) = cr_locked(&mut lock, &mut rt, &flow("10.0.0.5:50001", "93.184.216.34:443"), true);
        assert_eq!(got.data.remote, "93.184.216.34:443".parse::<SocketAddr>().unwrap(), "{r:?}: not to the dead proxy");
        assert_eq!(rt.pended().len(), 1, "{r:?}: held for a proxy");
        let due = T0.saturating_add(Duration::from_millis(500));
        shell::complete_pended(&mut lock, &mut rt, due);
        let done = rt.take_completed();
        assert_eq!(done.len(), 1);
        assert_eq!(resolve(wfp_ffi::FWP_ACTION_CALLOUT_UNKNOWN, done[0].classify_out.actionType, &r), Outcome::Block);
        assert!(rt.kernel.held_locks().is_empty());
        rt.assert_quiescent();
    }
}

/// IOCTLs with hostile buffers through the shell's dispatch on the model:
/// truncated, oversized, random bytes, wrong access bits, an IOCTL code
/// that is not ours. Each gets an error reply (never a panic, never a
/// change of state), and the reply fits the caller's buffer.
#[test]
fn hostile_ioctl_buffers_through_the_dispatch_are_refused() {
    let mut rt = Runtime::new(Readings::default());
    let mut lock = ModelLock::new(callout(Some(Action::Proxy), Some(pend_config(Fallback::Block)), true), &mut rt);
    let mut handles = Handles::new();
    let reader = Caller { pid: 77, handle: HandleId(0xBEEF), access: Access::READ };
    control(&mut lock, &mut rt, &mut handles, T0, |d| {
        assert_eq!(open(d, &PROXY_CALLER), Status::Ok);
        assert_eq!(open(d, &reader), Status::Ok);
    });
    let reg = ProxyRegistration { pid: PROXY_PID, v4: Some("127.0.0.1:8080".parse().unwrap()), v6: None };
    let good = Request::RegisterProxy(reg).to_vec();
    let mut oversized = good.clone();
    oversized.resize(1 << 20, 0xAA);
    let mut seed = 0x9E37_79B9_7F4A_7C15u64;
    let mut random = || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    let mut cases: Vec<(u32, Caller, Vec<u8>)> = vec![
        (Op::RegisterProxy.ioctl(), PROXY_CALLER, good[..good.len() / 2].to_vec()),
        (Op::RegisterProxy.ioctl(), PROXY_CALLER, Vec::new()),
        (Op::RegisterProxy.ioctl(), PROXY_CALLER, oversized),
        (Op::RegisterProxy.ioctl(), reader, good.clone()),
        (0x0022_0000, PROXY_CALLER, good.clone()),
    ];
    for len in [1usize, 7, 16, 64, 300] {
        let bytes: Vec<u8> = (0..len).map(|_| random() as u8).collect();
        cases.push((Op::RegisterProxy.ioctl(), PROXY_CALLER, bytes));
    }
    for (i, (ioctl, caller, request)) in cases.iter().enumerate() {
        for reply_len in [0usize, 3, 256] {
            let mut reply = vec![0u8; reply_len];
            let n = control(&mut lock, &mut rt, &mut handles, T0, |d| dispatch(d, *ioctl, caller, request, &mut reply));
            assert!(n <= reply_len, "case {i}: reply of {n} B into {reply_len} B");
            if let Ok(r) = Reply::decode(&reply[..n]) {
                assert_ne!(r.status, Status::Ok, "case {i}: accepted");
            }
            assert_eq!(lock.callout.arbiter().proxy(), None, "case {i}: state changed");
        }
    }
    // The good request still works afterwards.
    let mut reply = vec![0u8; 256];
    let n = control(&mut lock, &mut rt, &mut handles, T0, |d| {
        dispatch(d, Op::RegisterProxy.ioctl(), &PROXY_CALLER, &good, &mut reply)
    });
    assert_eq!(Reply::decode(&reply[..n]).unwrap().status, Status::Ok);
    assert!(rt.kernel.held_locks().is_empty());
}

// ---- finding: FwpsPendClassify0 under the driver's spin lock ---------------------------

impl ModelLock {
    /// The driver's lock, declared to the model as one under which no
    /// routine that moves a classification on may be called.
    fn strict(callout: Callout<RuleSet>, rt: &mut Runtime) -> Self {
        let lock = Self::new(callout, rt);
        rt.kernel.forbid_engine_calls_under(lock.lock);
        lock
    }
}

/// The pend timer as the driver's KTIMER: where it is armed.
#[derive(Default)]
struct Armed(Option<Instant>);

impl PendTimer for Armed {
    fn arm(&mut self, due: Instant) {
        self.0 = Some(due);
    }
    fn cancel(&mut self) {
        self.0 = None;
    }
}

/// What another CPU does between two holds of the lock.
type Hook = Box<dyn FnOnce(&mut ModelLock, &mut Runtime)>;

/// A lock whose second hold is preceded by `hook`: what another CPU does
/// while a classifyFn is between its two holds of the driver's lock.
struct Between {
    inner: ModelLock,
    holds: usize,
    hook: Option<Hook>,
}

impl CalloutLock<RuleSet, Runtime> for Between {
    fn with<R>(&mut self, rt: &mut Runtime, f: impl FnOnce(&mut Callout<RuleSet>, &mut Runtime) -> R) -> Option<R> {
        self.holds += 1;
        if self.holds == 2
            && let Some(hook) = self.hook.take()
        {
            hook(&mut self.inner, rt);
        }
        self.inner.with(rt, f)
    }
}

/// One connect-redirect classifyFn of our V4 filter through the driver's
/// own path, `shell::classify`, at DISPATCH_LEVEL.
fn cr_shell<L: CalloutLock<RuleSet, Runtime>>(
    lock: &mut L,
    rt: &mut Runtime,
    f: &FlowInfo,
    timer: &mut Armed,
) -> Classified {
    let spec = filter_for(FilterLayer::ConnectRedirectV4).unwrap();
    let entry = FWPS_CLASSIFY_OUT0 {
        actionType: LayerArbiter::new().entry_action(&rt.readings),
        rights: FWPS_RIGHT_ACTION_WRITE,
        ..Default::default()
    };
    let mut ind = Indication::new(FilterLayer::ConnectRedirectV4, f, FILTER_V4, spec.action_type, 0, entry, None);
    let id = rt.begin_classify(fresh(), &raw const *ind.out);
    let raw = ind.raw(id);
    rt.kernel.set_irql(arbiter_wfp_model::Irql::Dispatch);
    // SAFETY: every pointer in `raw` points into `ind`, alive for the call.
    unsafe { shell::classify(lock, rt, timer, shell::Entry::ConnectRedirect(Family::V4), &raw, T0) };
    rt.kernel.set_irql(arbiter_wfp_model::Irql::Passive);
    let out = *ind.out;
    let (data, applied) = rt.end_classify(id);
    let outcome = resolve(spec.action_type, out.actionType, &rt.readings);
    Classified { out, data, applied, outcome }
}

/// The driver used to call FwpsPendClassify0 inside the classifyFn's hold
/// of its spin lock. Now it reserves a slot under the lock, pends with the
/// lock released, and commits under the lock again; the model fails any
/// pend, apply, completion or release made under the lock. Under every
/// reading, the held flow is then proxied when the proxy registers.
#[test]
fn pend_is_made_with_the_driver_lock_released() {
    for r in Readings::all() {
        let mut rt = Runtime::new(r);
        let mut lock =
            ModelLock::strict(callout(Some(Action::Proxy), Some(pend_config(Fallback::Block)), true), &mut rt);
        let mut timer = Armed::default();
        let got = cr_shell(&mut lock, &mut rt, &flow("10.0.0.5:50000", "93.184.216.34:443"), &mut timer);
        assert_eq!(rt.pended().len(), 1, "{r:?}: not held");
        assert_eq!(lock.callout.held(), 1);
        assert_eq!(got.out.actionType, wfp_ffi::FWP_ACTION_BLOCK, "{r:?}: BLOCK until completion (the seed)");
        assert_eq!(got.out.rights & FWPS_RIGHT_ACTION_WRITE, 0);
        assert_eq!(timer.0, Some(T0.saturating_add(Duration::from_millis(500))), "the timeout is armed");
        assert!(rt.kernel.held_locks().is_empty());
        register(&mut lock.callout);
        shell::complete_pended(&mut lock, &mut rt, T0);
        let done = rt.take_completed();
        assert_eq!(done.len(), 1);
        assert_eq!(done[0].data.remote, "127.0.0.1:8080".parse::<SocketAddr>().unwrap());
        assert_eq!(lock.callout.counters().pended, 1);
        rt.assert_quiescent();
    }
}

/// FwpsPendClassify0 refuses (made with the lock released): the
/// reservation is rolled back under the lock and the flow decided again
/// without holding it, the core's own answer (continue, proxy-unavailable),
/// audited once.
#[test]
fn a_refused_pend_is_rolled_back_and_the_flow_decided_without_holding() {
    for r in Readings::all() {
        let mut rt = Runtime::new(r);
        rt.refuse_pend = true;
        let mut lock =
            ModelLock::strict(callout(Some(Action::Proxy), Some(pend_config(Fallback::Block)), true), &mut rt);
        let mut timer = Armed::default();
        let got = cr_shell(&mut lock, &mut rt, &flow("10.0.0.5:50000", "93.184.216.34:443"), &mut timer);
        assert_eq!(lock.callout.held(), 0, "{r:?}");
        assert_eq!(got.outcome, Outcome::Continue, "{r:?}");
        assert_eq!(got.applied.len(), 1, "one apply per acquire");
        assert_eq!(reasons(&lock.callout), [(Verdict::Continue, Reason::ProxyUnavailable)]);
        assert_eq!(lock.callout.counters().pend_refused, 1);
        assert_eq!(timer.0, None, "nothing held, nothing to time");
        rt.assert_quiescent();
    }
}

/// The proxy registers (a control request on another CPU, which completes
/// what is held) while the classifyFn is between its holds of the lock:
/// the flow it just pended was not held yet for that completion, so it is
/// committed with the timer armed for now, and its completion proxies it
/// without waiting for the timeout.
#[test]
fn the_proxy_registering_between_the_two_holds_completes_the_flow_at_once() {
    for r in Readings::all() {
        let mut rt = Runtime::new(r);
        let inner = ModelLock::strict(callout(Some(Action::Proxy), Some(pend_config(Fallback::Block)), true), &mut rt);
        let hook: Hook = Box::new(|lock, rt| {
            let _ = lock.with(rt, |c, _| register(c));
            shell::complete_pended(lock, rt, T0);
        });
        let mut lock = Between { inner, holds: 0, hook: Some(hook) };
        let mut timer = Armed::default();
        let _ = cr_shell(&mut lock, &mut rt, &flow("10.0.0.5:50000", "93.184.216.34:443"), &mut timer);
        assert_eq!(lock.inner.callout.held(), 1, "{r:?}: committed after the registration's completions");
        assert_eq!(timer.0, Some(T0), "{r:?}: due now, not at the timeout");
        // The timer's DPC.
        shell::complete_pended(&mut lock, &mut rt, T0);
        let done = rt.take_completed();
        assert_eq!(done.len(), 1);
        assert_eq!(done[0].data.remote, "127.0.0.1:8080".parse::<SocketAddr>().unwrap(), "{r:?}: proxied");
        rt.assert_quiescent();
    }
}

/// Review finding: unload stopped waiting while a held classification was
/// committed but its completion batch was out (the pend timer's DPC
/// completing on another processor): `complete_held` counted only the
/// reservations, reported nothing outstanding, and the classification stayed
/// pended after the driver was gone.
#[test]
fn unload_waits_while_the_completion_batch_is_out() {
    for r in Readings::all() {
        let mut rt = Runtime::new(r);
        let mut lock =
            ModelLock::strict(callout(Some(Action::Proxy), Some(pend_config(Fallback::Block)), true), &mut rt);
        let mut timer = Armed::default();
        let _ = cr_shell(&mut lock, &mut rt, &flow("10.0.0.5:50000", "93.184.216.34:443"), &mut timer);
        assert_eq!(lock.callout.held(), 1, "{r:?}");
        // The pend timer's DPC took the timed-out classification into the
        // batch and has the batch out, with the lock released.
        lock.callout.complete_pended(&mut rt, Instant::from_millis(u64::MAX));
        let mut batch = lock.callout.take_completions().expect("the completion batch");
        assert!(shell::complete_held(&mut lock, &mut rt) > 0, "{r:?}: the classification in the batch is outstanding");
        assert_eq!(rt.pended().len(), 1, "{r:?}");
        // The DPC completes it and gives the batch back.
        batch.run(&mut rt);
        lock.callout.restore_completions(batch);
        assert_eq!(shell::complete_held(&mut lock, &mut rt), 0, "{r:?}");
        assert_eq!(rt.take_completed().len(), 1, "{r:?}");
        assert!(rt.pended().is_empty());
        rt.assert_quiescent();
    }
}

/// Unload completes held classifications while a classifyFn is between its
/// holds: the reservation is reported outstanding (the driver waits), no
/// new flow is held from then on, and once the classifyFn has committed,
/// the next round completes it with the fallback. Nothing is left pended.
#[test]
fn unload_between_the_two_holds_waits_for_the_reservation() {
    for r in Readings::all() {
        let mut rt = Runtime::new(r);
        let inner = ModelLock::strict(callout(Some(Action::Proxy), Some(pend_config(Fallback::Block)), true), &mut rt);
        let outstanding = std::rc::Rc::new(std::cell::Cell::new(usize::MAX));
        let seen = std::rc::Rc::clone(&outstanding);
        let hook: Hook = Box::new(move |lock, rt| seen.set(shell::complete_held(lock, rt)));
        let mut lock = Between { inner, holds: 0, hook: Some(hook) };
        let mut timer = Armed::default();
        let _ = cr_shell(&mut lock, &mut rt, &flow("10.0.0.5:50000", "93.184.216.34:443"), &mut timer);
        assert_eq!(outstanding.get(), 1, "{r:?}: unload sees the reservation");
        assert_eq!(shell::complete_held(&mut lock, &mut rt), 0);
        let done = rt.take_completed();
        assert_eq!(done.len(), 1, "{r:?}");
        assert_eq!(resolve(wfp_ffi::FWP_ACTION_CALLOUT_UNKNOWN, done[0].classify_out.actionType, &r), Outcome::Block);
        // Closing: a new flow is no longer held.
        let _ = cr_shell(&mut lock, &mut rt, &flow("10.0.0.5:50001", "93.184.216.34:443"), &mut timer);
        assert_eq!(lock.inner.callout.held(), 0);
        assert!(rt.pended().is_empty());
        rt.assert_quiescent();
    }
}
