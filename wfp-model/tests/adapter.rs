//! The real classify adapter (`arbiter-callout`) on the WFP model, with the
//! driver's own filters (`arbiter_callout::filters::FILTERS`), under every
//! reading the model keeps open. Each review finding on the callout side is
//! one test here.

#![allow(clippy::unwrap_used, clippy::indexing_slicing, reason = "tests")]
#![allow(clippy::std_instead_of_core, clippy::alloc_instead_of_core, reason = "std tests")]

use std::net::SocketAddr;

use arbiter::audit::AuditRecord;
use arbiter::policy::Rule;
use arbiter::{Action, Arbiter, Capacities, Config, Duration, Instant, Reason, RuleSet, Verdict};
use arbiter_callout::filters::{FILTERS, FilterLayer, filter_for};
use arbiter_callout::pend::{Fallback, PendConfig, PendTimer};
use arbiter_callout::{Callout, CalloutConfig, Family, OWN_FILTER};
use arbiter_wfp_model::arbitration::{LayerArbiter, Outcome, resolve};
use arbiter_wfp_model::{Applied, ConnectData, FlowInfo, Indication, Readings, Runtime, TimerId, Version};
use wfp_ffi::fields::ALE_CONNECT_REDIRECT_V4;
use wfp_ffi::{FWPS_CLASSIFY_OUT0, FWPS_RIGHT_ACTION_WRITE, HANDLE};

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
    c.sync_timer(&mut ModelTimer { rt: &mut rt, timer });
    let done = rt.take_completed();
    assert_eq!(done.len(), 1);
    assert_eq!(done[0].classify_out.actionType, wfp_ffi::FWP_ACTION_CONTINUE);
    assert!(rt.kernel.timer_due(timer).is_none(), "nothing left to time");
    rt.assert_quiescent();
}
