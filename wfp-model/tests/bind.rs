//! The bind-redirect layer under both history readings: a rewriter above our
//! inspection callout, our audit record of it, and the documented rules of
//! the writable bind data.
#![allow(clippy::std_instead_of_core, clippy::alloc_instead_of_core, missing_docs, reason = "tests")]

use std::net::SocketAddr;

use arbiter::audit::{AuditRecord, Event};
use arbiter::{Arbiter, Capacities, Config, Instant, RuleSet};
use arbiter_callout::adapter::{Callout, CalloutConfig, Family};
use arbiter_callout::bind::{BindCounters, FwpsBind};
use arbiter_callout::filters::{FilterLayer, filter_for};
use arbiter_callout::sockaddr::{from_storage, to_storage};
use arbiter_wfp_model::bind::{BindData, BindFilter, BindHistory, BindRuntime, ClearRight, classify_bind};
use arbiter_wfp_model::{FlowInfo, Indication, Outcome, Readings};
use wfp_ffi::{
    FWP_ACTION_CALLOUT_UNKNOWN, FWP_ACTION_CONTINUE, FWP_ACTION_PERMIT, FWPM_FILTER_FLAG_CLEAR_ACTION_RIGHT,
    FWPS_CLASSIFY_OUT0, FWPS_RIGHT_ACTION_WRITE,
};

const REWRITER: u64 = 300;
const OURS: u64 = 11;
const LAN: &str = "192.168.1.20";

fn our_callout() -> Callout<RuleSet> {
    let arbiter = Arbiter::new(Config::default(), Capacities::default(), RuleSet::default()).unwrap();
    Callout::new(arbiter, CalloutConfig { ring_bytes: 1 << 14, pend: None }).unwrap()
}

/// A local-address rewriter in the manner of a split-tunnel driver: moves an
/// unspecified bind to the LAN address, soft-permits, and skips a request it
/// already changed.
fn rewrite(rt: &mut BindRuntime, classify: u64, filter: u64, out: &mut FWPS_CLASSIFY_OUT0) {
    if out.rights & FWPS_RIGHT_ACTION_WRITE == 0 {
        return;
    }
    out.actionType = FWP_ACTION_CONTINUE;
    let h = rt.acquire_bind_classify_handle(std::ptr::without_provenance(classify as usize)).unwrap();
    let req = rt.acquire_writable_bind_request(h, filter, out).unwrap();
    out.actionType = FWP_ACTION_CONTINUE;
    out.rights |= FWPS_RIGHT_ACTION_WRITE;
    // SAFETY: the model's writable data, valid until apply.
    let r = unsafe { &mut *req.as_ptr() };
    let mut seen = false;
    let mut p = r.previousVersion;
    // SAFETY: the model's chain, valid until apply.
    while let Some(v) = unsafe { p.as_ref() } {
        seen |= v.modifierFilterId == filter;
        p = v.previousVersion;
    }
    let local = from_storage(&r.localAddressAndPort).unwrap();
    if !seen && local.ip().is_unspecified() {
        r.localAddressAndPort = to_storage(&SocketAddr::new(LAN.parse().unwrap(), local.port()));
        out.actionType = FWP_ACTION_PERMIT;
    }
    rt.apply_bind_request(h, req);
    rt.release_bind_classify_handle(h);
}

fn run(
    history: BindHistory,
    clear: ClearRight,
    requested: &str,
    rewriter_above: bool,
    readings: &Readings,
) -> (Outcome, BindData, Vec<u8>, BindCounters) {
    let mut ours = our_callout();
    let mut counters = BindCounters::default();
    let flow_of = |d: &BindData| FlowInfo {
        protocol: d.protocol,
        local: d.requested,
        remote: "0.0.0.0:0".parse().unwrap(),
        pid: d.pid,
        app: d.app.clone(),
        original_app: d.app.clone(),
        endpoint: 0,
        reauthorize: false,
        redirected: false,
        target_pid: None,
        original_destination: None,
        package: None,
    };
    let data = BindData::new(4242, r"\device\harddiskvolume3\apps\game.exe", 17, requested.parse().unwrap());
    let spec = filter_for(FilterLayer::BindRedirectV4).unwrap();
    let mut rt = BindRuntime::new(history, clear);
    let bound = {
        let ours = &mut ours;
        let counters = &mut counters;
        let data2 = data.clone();
        let mut filters = vec![
            BindFilter {
                id: REWRITER,
                sublayer_weight: if rewriter_above { 0xFFFF } else { 0x100 },
                sublayer: 1,
                weight: u64::MAX,
                action_type: FWP_ACTION_CALLOUT_UNKNOWN,
                flags: FWPM_FILTER_FLAG_CLEAR_ACTION_RIGHT,
                classify: Some(Box::new(rewrite)),
            },
            BindFilter {
                id: OURS,
                sublayer_weight: 0x8000,
                sublayer: 2,
                weight: 0,
                action_type: spec.action_type,
                flags: spec.flags,
                classify: Some(Box::new(
                    move |rt: &mut BindRuntime, classify, filter, out: &mut FWPS_CLASSIFY_OUT0| {
                        let mut ind = Indication::new(
                            FilterLayer::BindRedirectV4,
                            &flow_of(&data2),
                            filter,
                            spec.action_type,
                            0,
                            *out,
                            None,
                        );
                        let raw = ind.raw(classify);
                        // SAFETY: the indication owns every buffer `raw` points into.
                        unsafe {
                            ours.classify_bind_redirect(
                                rt,
                                Family::V4,
                                &raw,
                                &[OURS],
                                counters,
                                Instant::from_millis(5),
                            )
                        };
                        *out = *ind.out;
                    },
                )),
            },
        ];
        classify_bind(&mut rt, &mut filters, data, readings)
    };
    let log: Vec<u8> = ours.ring().iter().flat_map(|(_, b)| b.to_vec()).collect();
    (bound.outcome, bound.data, log, counters)
}

#[test]
fn a_rebind_above_us_is_audited_with_who_from_and_to() {
    for readings in Readings::all() {
        for history in BindHistory::ALL {
            let (outcome, data, log, _) = run(history, ClearRight::SublayerOnly, "0.0.0.0:5353", true, &readings);
            assert_eq!(outcome, Outcome::Permit, "{history:?}");
            assert_eq!(data.local, format!("{LAN}:5353").parse().unwrap());
            let recs: Vec<_> = arbiter::audit::records(&log).map(Result::unwrap).collect();
            assert_eq!(recs.len(), 1, "{history:?}: one rebind record");
            let AuditRecord { event: Event::Rebind(r), .. } = recs[0] else { panic!("not a rebind: {recs:?}") };
            assert_eq!(r.by, REWRITER);
            assert_eq!(r.from, "0.0.0.0:5353".parse().unwrap());
            assert_eq!(r.to, format!("{LAN}:5353").parse().unwrap());
            assert_eq!(r.pid, 4242);
            assert_eq!(r.changes, 1);
            assert_eq!(recs[0].replay(), None);
        }
    }
}

#[test]
fn nothing_is_audited_when_no_one_rebinds() {
    for history in BindHistory::ALL {
        // An explicit address: the rewriter leaves it.
        let (outcome, data, log, _) = run(history, ClearRight::Hardens, "10.0.0.5:5353", true, &Readings::default());
        assert_eq!(outcome, Outcome::Permit, "nothing decided is a permit");
        assert!(data.versions.is_empty());
        assert!(log.is_empty());
    }
}

#[test]
fn our_inspection_below_sees_it_and_above_does_not() {
    // Below us, the rewrite happens after our look: nothing to audit yet.
    let (_, data, log, _) =
        run(BindHistory::WithRequest, ClearRight::SublayerOnly, "0.0.0.0:5353", false, &Readings::default());
    assert_eq!(data.local, format!("{LAN}:5353").parse().unwrap(), "the rewrite still happens");
    assert!(log.is_empty(), "we ran first and saw the application's own request");
}

#[test]
#[should_panic(expected = "read-only")]
fn writing_the_history_panics() {
    let mut rt = BindRuntime::new(BindHistory::WithRequest, ClearRight::Hardens);
    let mut filters = vec![BindFilter {
        id: 7,
        sublayer_weight: 1,
        sublayer: 1,
        weight: 1,
        action_type: FWP_ACTION_CALLOUT_UNKNOWN,
        flags: 0,
        classify: Some(Box::new(|rt: &mut BindRuntime, c, f, out: &mut FWPS_CLASSIFY_OUT0| {
            let h = rt.acquire_bind_classify_handle(std::ptr::without_provenance(c as usize)).unwrap();
            let req = rt.acquire_writable_bind_request(h, f, out).unwrap();
            // SAFETY: the model's writable data.
            unsafe { (*req.as_ptr()).modifierFilterId = 99 };
            rt.apply_bind_request(h, req);
        })),
    }];
    let data = BindData::new(1, "a", 17, "0.0.0.0:1".parse().unwrap());
    let _ = classify_bind(&mut rt, &mut filters, data, &Readings::default());
}

#[test]
#[should_panic(expected = "never applied")]
fn acquire_without_apply_panics() {
    let mut rt = BindRuntime::new(BindHistory::ModifiedOnly, ClearRight::Hardens);
    let mut filters = vec![BindFilter {
        id: 7,
        sublayer_weight: 1,
        sublayer: 1,
        weight: 1,
        action_type: FWP_ACTION_CALLOUT_UNKNOWN,
        flags: 0,
        classify: Some(Box::new(|rt: &mut BindRuntime, c, f, out: &mut FWPS_CLASSIFY_OUT0| {
            let h = rt.acquire_bind_classify_handle(std::ptr::without_provenance(c as usize)).unwrap();
            let _ = rt.acquire_writable_bind_request(h, f, out).unwrap();
        })),
    }];
    let data = BindData::new(1, "a", 17, "0.0.0.0:1".parse().unwrap());
    let _ = classify_bind(&mut rt, &mut filters, data, &Readings::default());
}

#[test]
fn an_unregistered_inspection_callout_is_ignored_and_unknown_blocks() {
    let mut rt = BindRuntime::new(BindHistory::WithRequest, ClearRight::Hardens);
    let data = BindData::new(1, "a", 17, "0.0.0.0:1".parse().unwrap());
    let mk = |action_type| BindFilter {
        id: 1,
        sublayer_weight: 1,
        sublayer: 1,
        weight: 1,
        action_type,
        flags: 0,
        classify: None,
    };
    let mut f = vec![mk(wfp_ffi::FWP_ACTION_CALLOUT_INSPECTION)];
    assert_eq!(classify_bind(&mut rt, &mut f, data.clone(), &Readings::default()).outcome, Outcome::Permit);
    let mut f = vec![mk(FWP_ACTION_CALLOUT_UNKNOWN)];
    assert_eq!(classify_bind(&mut rt, &mut f, data, &Readings::default()).outcome, Outcome::Block);
}

#[test]
fn a_hard_permit_above_hides_the_history_and_is_counted() {
    for history in BindHistory::ALL {
        let (outcome, data, log, counters) =
            run(history, ClearRight::Hardens, "0.0.0.0:5353", true, &Readings::default());
        assert_eq!(outcome, Outcome::Permit);
        assert_eq!(data.local, format!("{LAN}:5353").parse().unwrap(), "the rewrite stands");
        assert!(log.is_empty(), "without the write right we do not acquire the request");
        assert_eq!(counters.no_write_right, 1);
        assert_eq!(counters.rebinds, 0);
    }
}
