//! The model's own behaviour, each against the sentence it comes from.

#![allow(clippy::unwrap_used, clippy::indexing_slicing, reason = "tests")]

use std::cell::RefCell;
use std::rc::Rc;

use arbiter_callout::Fwps;
use arbiter_callout::filters::FilterLayer;
use wfp_ffi::*;

use crate::arbitration::{LayerArbiter, Outcome, resolve};
use crate::kernel::{Irql, Kernel, Routine};
use crate::layer_data::{ConnectData, Runtime};
use crate::mgmt::{Filter, STATUS_DEVICE_BUSY, Wfp};
use crate::readings::{Completion, Readings};
use crate::redirect::{RedirectRecord, redirect_state};

fn out(action: FWP_ACTION_TYPE, rights: u32) -> FWPS_CLASSIFY_OUT0 {
    FWPS_CLASSIFY_OUT0 { actionType: action, rights, ..Default::default() }
}

#[test]
fn terminating_continue_is_block_unknown_continue_is_continue() {
    for r in Readings::all() {
        assert_eq!(resolve(FWP_ACTION_CALLOUT_TERMINATING, FWP_ACTION_CONTINUE, &r), Outcome::Block);
        assert_eq!(resolve(FWP_ACTION_CALLOUT_TERMINATING, FWP_ACTION_NONE, &r), Outcome::Block);
        assert_eq!(resolve(FWP_ACTION_CALLOUT_TERMINATING, FWP_ACTION_PERMIT, &r), Outcome::Permit);
        assert_eq!(resolve(FWP_ACTION_CALLOUT_UNKNOWN, FWP_ACTION_CONTINUE, &r), Outcome::Continue);
        assert_eq!(resolve(FWP_ACTION_CALLOUT_UNKNOWN, FWP_ACTION_PERMIT, &r), Outcome::Permit);
        assert_eq!(resolve(FWP_ACTION_CALLOUT_INSPECTION, FWP_ACTION_BLOCK, &r), Outcome::Continue);
    }
}

#[test]
fn soft_permit_is_overridden_hard_permit_only_by_a_callout_veto_hard_block_is_final() {
    let r = Readings::default();
    let mut a = LayerArbiter::new();
    a.take(FWP_ACTION_CALLOUT_UNKNOWN, &out(FWP_ACTION_PERMIT, FWPS_RIGHT_ACTION_WRITE), &r);
    a.next_sublayer();
    assert_eq!(a.rights(), FWPS_RIGHT_ACTION_WRITE);
    a.take(FWP_ACTION_CALLOUT_UNKNOWN, &out(FWP_ACTION_BLOCK, FWPS_RIGHT_ACTION_WRITE), &r);
    assert_eq!(a.result(), Outcome::Block);

    let mut a = LayerArbiter::new();
    a.take(FWP_ACTION_PERMIT, &out(FWP_ACTION_PERMIT, 0), &r);
    a.next_sublayer();
    assert_eq!(a.rights(), 0, "a hard permit takes the write right from lower sublayers");
    a.take(FWP_ACTION_BLOCK, &out(FWP_ACTION_BLOCK, 0), &r);
    assert_eq!(a.result(), Outcome::Permit, "a plain block filter cannot override a hard permit");
    a.take(FWP_ACTION_CALLOUT_UNKNOWN, &out(FWP_ACTION_BLOCK, 0), &r);
    assert_eq!(a.result(), Outcome::Block);
    assert!(a.vetoed);

    let mut a = LayerArbiter::new();
    a.take(FWP_ACTION_CALLOUT_UNKNOWN, &out(FWP_ACTION_BLOCK, 0), &r);
    a.next_sublayer();
    a.take(FWP_ACTION_CALLOUT_UNKNOWN, &out(FWP_ACTION_PERMIT, FWPS_RIGHT_ACTION_WRITE), &r);
    assert_eq!(a.result(), Outcome::Block);
}

#[test]
fn a_permit_ends_the_sublayer() {
    let r = Readings::default();
    let mut a = LayerArbiter::new();
    assert!(!a.take(FWP_ACTION_CALLOUT_UNKNOWN, &out(FWP_ACTION_CONTINUE, FWPS_RIGHT_ACTION_WRITE), &r));
    assert!(a.take(FWP_ACTION_CALLOUT_UNKNOWN, &out(FWP_ACTION_PERMIT, FWPS_RIGHT_ACTION_WRITE), &r));
}

fn data() -> ConnectData {
    ConnectData::new("93.184.216.34:443".parse().unwrap(), "10.0.0.5:50000".parse().unwrap(), Vec::new())
}

#[test]
fn acquiring_writable_data_blocks_and_clears_the_write_right() {
    let mut rt = Runtime::new(Readings::default());
    let mut o = out(FWP_ACTION_CONTINUE, FWPS_RIGHT_ACTION_WRITE);
    let id = rt.begin_classify(data(), &raw const o);
    let h = rt.acquire_classify_handle(std::ptr::without_provenance(id as usize)).unwrap();
    let req = rt.acquire_writable_connect_request(h, 7, &mut o).unwrap();
    assert_eq!(o.actionType, FWP_ACTION_BLOCK);
    assert_eq!(o.rights & FWPS_RIGHT_ACTION_WRITE, 0);
    rt.apply_modified_layer_data(h, req, 0);
    rt.release_classify_handle(h);
    let (_, applied) = rt.end_classify(id);
    assert_eq!(applied.len(), 1);
    assert!(!applied[0].modified);
    rt.assert_quiescent();
}

#[test]
#[should_panic(expected = "not applied")]
fn an_acquire_without_apply_fails() {
    let mut rt = Runtime::new(Readings::default());
    let mut o = out(FWP_ACTION_CONTINUE, FWPS_RIGHT_ACTION_WRITE);
    let id = rt.begin_classify(data(), &raw const o);
    let h = rt.acquire_classify_handle(std::ptr::without_provenance(id as usize)).unwrap();
    let _ = rt.acquire_writable_connect_request(h, 7, &mut o).unwrap();
    rt.release_classify_handle(h);
}

#[test]
#[should_panic(expected = "not released")]
fn a_handle_never_released_fails() {
    let mut rt = Runtime::new(Readings::default());
    let o = out(FWP_ACTION_CONTINUE, FWPS_RIGHT_ACTION_WRITE);
    let id = rt.begin_classify(data(), &raw const o);
    let _ = rt.acquire_classify_handle(std::ptr::without_provenance(id as usize)).unwrap();
    let _ = rt.end_classify(id);
}

#[test]
fn an_applied_context_belongs_to_wfp_and_the_rewrite_is_a_new_version() {
    let mut rt = Runtime::new(Readings::default());
    let mut o = out(FWP_ACTION_CONTINUE, FWPS_RIGHT_ACTION_WRITE);
    let id = rt.begin_classify(data(), &raw const o);
    let h = rt.acquire_classify_handle(std::ptr::without_provenance(id as usize)).unwrap();
    let req = rt.acquire_writable_connect_request(h, 7, &mut o).unwrap();
    let ctx = rt.allocate_context(64).unwrap();
    // SAFETY: `req` is the model's live writable copy.
    let r = unsafe { &mut *req.as_ptr() };
    {
        r.remoteAddressAndPort = arbiter_callout::sockaddr::to_storage(&"127.0.0.1:34010".parse().unwrap());
        r.localRedirectTargetPID = 4242;
        r.localRedirectHandle = std::ptr::without_provenance_mut(0xAB);
        r.localRedirectContext = ctx.as_ptr().cast();
        r.localRedirectContextSize = 64;
    }
    rt.apply_modified_layer_data(h, req, FWPS_CLASSIFY_FLAG_REAUTHORIZE_IF_MODIFIED_BY_OTHERS);
    rt.release_classify_handle(h);
    let (d, applied) = rt.end_classify(id);
    assert!(applied[0].modified && applied[0].reauthorize_if_modified());
    assert_eq!(d.remote, "127.0.0.1:34010".parse().unwrap());
    assert_eq!(d.versions[0].filter, 7);
    assert!(d.versions[0].local_redirect_handle);
    assert_eq!(rt.contexts_freed_by_wfp, 1);
}

#[test]
#[should_panic(expected = "does not own")]
fn freeing_an_applied_context_is_a_double_free() {
    let mut rt = Runtime::new(Readings::default());
    let mut o = out(FWP_ACTION_CONTINUE, FWPS_RIGHT_ACTION_WRITE);
    let id = rt.begin_classify(data(), &raw const o);
    let h = rt.acquire_classify_handle(std::ptr::without_provenance(id as usize)).unwrap();
    let req = rt.acquire_writable_connect_request(h, 7, &mut o).unwrap();
    let ctx = rt.allocate_context(64).unwrap();
    // SAFETY: the live writable copy.
    let r = unsafe { &mut *req.as_ptr() };
    r.localRedirectContext = ctx.as_ptr().cast();
    r.localRedirectContextSize = 64;
    rt.apply_modified_layer_data(h, req, 0);
    rt.free_context(ctx);
}

#[test]
fn the_four_redirect_states() {
    let rec = |h| RedirectRecord { handle: h, context: Vec::new() };
    assert_eq!(redirect_state(&[], 1), FWPS_CONNECTION_NOT_REDIRECTED);
    assert_eq!(redirect_state(&[rec(2), rec(1)], 1), FWPS_CONNECTION_REDIRECTED_BY_SELF);
    assert_eq!(redirect_state(&[rec(1), rec(2)], 1), FWPS_CONNECTION_PREVIOUSLY_REDIRECTED_BY_SELF);
    assert_eq!(redirect_state(&[rec(2)], 1), FWPS_CONNECTION_REDIRECTED_BY_OTHER);
}

#[test]
fn the_seed_pend_sequence_passes() {
    for r in Readings::all() {
        let mut rt = Runtime::new(r);
        let mut o = out(FWP_ACTION_CONTINUE, FWPS_RIGHT_ACTION_WRITE);
        let id = rt.begin_classify(data(), &raw const o);
        let h = rt.acquire_classify_handle(std::ptr::without_provenance(id as usize)).unwrap();
        let mut copy = o;
        rt.pend_classify(h, 7, &mut o).unwrap();
        o.actionType = FWP_ACTION_BLOCK;
        o.rights &= !FWPS_RIGHT_ACTION_WRITE;
        let _ = rt.end_classify(id);
        assert_eq!(rt.pended().len(), 1);
        // Later: acquire, apply, complete with the copy, release.
        let req = rt.acquire_writable_connect_request(h, 7, &mut copy).unwrap();
        rt.apply_modified_layer_data(h, req, 0);
        copy.actionType = FWP_ACTION_PERMIT;
        copy.rights |= FWPS_RIGHT_ACTION_WRITE;
        rt.complete_classify(h, &copy);
        rt.release_classify_handle(h);
        assert_eq!(rt.take_completed().len(), 1);
        rt.assert_quiescent();
    }
}

#[test]
#[should_panic(expected = "own classifyOut")]
fn pending_with_a_copy_fails() {
    let mut rt = Runtime::new(Readings::default());
    let o = out(FWP_ACTION_CONTINUE, FWPS_RIGHT_ACTION_WRITE);
    let id = rt.begin_classify(data(), &raw const o);
    let h = rt.acquire_classify_handle(std::ptr::without_provenance(id as usize)).unwrap();
    let mut copy = o;
    let _ = rt.pend_classify(h, 7, &mut copy);
}

#[test]
#[should_panic(expected = "after FwpsAcquireWritableLayerDataPointer0")]
fn pending_after_acquiring_the_layer_data_fails() {
    let mut rt = Runtime::new(Readings::default());
    let mut o = out(FWP_ACTION_CONTINUE, FWPS_RIGHT_ACTION_WRITE);
    let id = rt.begin_classify(data(), &raw const o);
    let h = rt.acquire_classify_handle(std::ptr::without_provenance(id as usize)).unwrap();
    let req = rt.acquire_writable_connect_request(h, 7, &mut o).unwrap();
    rt.apply_modified_layer_data(h, req, 0);
    o.rights |= FWPS_RIGHT_ACTION_WRITE;
    let _ = rt.pend_classify(h, 7, &mut o);
}

#[test]
#[should_panic(expected = "deadlock")]
fn completing_under_the_classify_lock_deadlocks_when_completion_reenters() {
    let r = Readings { completion: Completion::ReentersSameThread, ..Readings::default() };
    let mut rt = Runtime::new(r);
    let lock = rt.kernel.new_spin_lock();
    rt.kernel.mark_classify_lock(lock);
    let mut o = out(FWP_ACTION_CONTINUE, FWPS_RIGHT_ACTION_WRITE);
    let id = rt.begin_classify(data(), &raw const o);
    let h = rt.acquire_classify_handle(std::ptr::without_provenance(id as usize)).unwrap();
    let copy = o;
    rt.pend_classify(h, 7, &mut o).unwrap();
    let _ = rt.end_classify(id);
    rt.kernel.acquire_spin_lock(lock);
    rt.complete_classify(h, &copy);
}

#[test]
#[should_panic(expected = "IRQL violation")]
fn a_registry_read_at_dispatch_fails() {
    let mut k = Kernel::new();
    let lock = k.new_spin_lock();
    k.acquire_spin_lock(lock);
    assert_eq!(k.irql(), Irql::Dispatch);
    k.call(Routine::Registry);
}

#[test]
#[should_panic(expected = "deadlock")]
fn a_recursive_spin_lock_deadlocks() {
    let mut k = Kernel::new();
    let lock = k.new_spin_lock();
    k.acquire_spin_lock(lock);
    k.acquire_spin_lock(lock);
}

#[test]
fn timers_fire_when_the_clock_passes_them() {
    let mut k = Kernel::new();
    let t = k.new_timer();
    k.set_timer(t, arbiter::Instant::from_millis(100));
    assert!(k.advance(arbiter::Instant::from_millis(99)).is_empty());
    assert_eq!(k.advance(arbiter::Instant::from_millis(100)), vec![t]);
    assert!(k.advance(arbiter::Instant::from_millis(200)).is_empty());
}

fn filter(layer: FilterLayer, action_type: FWP_ACTION_TYPE, callout: u128) -> Filter {
    Filter { key: 0, layer, sublayer: 1, weight: 0, action_type, callout, flags: 0, conditions: [None, None] }
}

#[test]
fn bfe_lifecycle_and_unregistering_a_callout_with_filters() {
    let mut w = Wfp::new(Readings::default());
    let seen = Rc::new(RefCell::new(Vec::new()));
    let s2 = Rc::clone(&seen);
    let _sub = w.bfe_subscribe(Box::new(move |s| s2.borrow_mut().push(s)));
    w.set_bfe_state(FWPM_SERVICE_STOPPED);
    assert!(w.engine_open().is_err(), "FwpmEngineOpen0 needs the BFE running");
    w.set_bfe_state(FWPM_SERVICE_RUNNING);
    assert_eq!(*seen.borrow(), vec![FWPM_SERVICE_STOPPED, FWPM_SERVICE_RUNNING]);
    let e = w.engine_open().unwrap();
    assert_eq!(w.transaction_begin(e), 0);
    assert_eq!(w.sublayer_add(e, 1, 0x8000), 0);
    let cr = w.filter_add(e, filter(FilterLayer::ConnectRedirectV4, FWP_ACTION_CALLOUT_UNKNOWN, 10)).unwrap();
    let _ = w.filter_add(e, filter(FilterLayer::EndpointClosureV4, FWP_ACTION_CALLOUT_INSPECTION, 11)).unwrap();
    assert!(w.filters().is_empty(), "nothing exists before the commit");
    w.live_flows = 3;
    assert_eq!(w.transaction_commit(e), 0);
    assert_eq!(w.reauthorizations, 3, "adding filters reauthorizes live flows");
    assert!(w.filters().contains_key(&cr));
    let id = w
        .callout_register(10, Box::new(|_, _, o: &mut FWPS_CLASSIFY_OUT0| o.actionType = FWP_ACTION_CONTINUE))
        .unwrap();
    let id2 = w.callout_register(11, Box::new(|_, _, _| {})).unwrap();
    assert_eq!(w.classify(FilterLayer::ConnectRedirectV4), Outcome::Permit);
    w.flow_contexts.insert(id, 1);
    assert_eq!(w.callout_unregister_by_id(id), STATUS_DEVICE_BUSY);
    w.flow_contexts.clear();
    assert_eq!(w.callout_unregister_by_id(id), 0);
    assert_eq!(w.callout_unregister_by_id(id2), 0);
    assert_eq!(w.classify(FilterLayer::ConnectRedirectV4), Outcome::Block, "UNKNOWN without its callout acts as BLOCK");
    assert_eq!(
        w.classify(FilterLayer::EndpointClosureV4),
        Outcome::Permit,
        "INSPECTION without its callout is ignored"
    );
    assert_eq!(w.engine_close(e), 0);
}

/// FWPM_SESSION0, FWPM_SESSION_FLAG_DYNAMIC: "any objects added during the
/// session are automatically deleted when the session ends"; a static
/// session's objects stay.
#[test]
fn a_dynamic_sessions_objects_end_with_it() {
    // (`filter` puts its filters in sublayer 1.)
    let mut w = Wfp::new(Readings::default());
    let stat = w.engine_open().unwrap();
    assert_eq!(w.sublayer_add(stat, 1, 0x1000), 0);
    let kept = w.filter_add(stat, filter(FilterLayer::ConnectRedirectV4, FWP_ACTION_CALLOUT_UNKNOWN, 9)).unwrap();
    let dynamic = w.engine_open_dynamic().unwrap();
    assert_eq!(w.transaction_begin(dynamic), 0);
    assert_eq!(w.sublayer_add(dynamic, 2, 0x4000), 0);
    let gone = w.filter_add(dynamic, filter(FilterLayer::ConnectRedirectV4, FWP_ACTION_CALLOUT_UNKNOWN, 10)).unwrap();
    assert_eq!(w.transaction_commit(dynamic), 0);
    // Outside a transaction too (an implicit one).
    let gone2 = w.filter_add(dynamic, filter(FilterLayer::AuthConnectV4, FWP_ACTION_CALLOUT_UNKNOWN, 10)).unwrap();
    assert!(w.filters().contains_key(&gone) && w.filters().contains_key(&gone2));
    assert_eq!(w.engine_close(dynamic), 0);
    assert!(!w.filters().contains_key(&gone) && !w.filters().contains_key(&gone2));
    assert_eq!(w.sublayer_add(stat, 2, 0x4000), 0, "the dynamic sublayer is gone too");
    assert_eq!(w.engine_close(stat), 0);
    assert!(w.filters().contains_key(&kept), "a static session's filter outlives it");
}

#[test]
#[should_panic(expected = "IRQL violation")]
fn management_at_dispatch_fails() {
    let mut w = Wfp::new(Readings::default());
    w.rt.kernel.set_irql(Irql::Dispatch);
    let _ = w.engine_open();
}

fn plain(key: u128, flags: u32, action_type: FWP_ACTION_TYPE) -> Filter {
    Filter { key, flags, action_type, callout: 0, ..filter(FilterLayer::AuthConnectV4, action_type, 0) }
}

/// "Basic Operation" and FwpmProviderAdd0's remarks: boot-time filters
/// enforce from boot until the BFE starts, persistent ones from its start on,
/// both survive a BFE stop and a reboot; other objects do not.
#[test]
fn boot_time_and_persistent_filters_each_enforce_in_their_window() {
    use wfp_ffi::{FWP_ACTION_BLOCK, FWPM_FILTER_FLAG_BOOTTIME, FWPM_FILTER_FLAG_PERSISTENT};
    let mut w = Wfp::new(Readings::default());
    let e = w.engine_open().unwrap();
    assert_eq!(w.sublayer_add_with(e, 1, 0xFFFF, FWPM_SUBLAYER_FLAG_PERSISTENT), 0);
    let boot = w.filter_add(e, plain(0xb0, FWPM_FILTER_FLAG_BOOTTIME, FWP_ACTION_BLOCK)).unwrap();
    assert_eq!(w.classify(FilterLayer::AuthConnectV4), Outcome::Permit, "a boot-time filter waits for the next boot");
    let _ = w.filter_add(e, plain(0x9e, 0, FWP_ACTION_BLOCK)).unwrap();
    assert_eq!(w.classify(FilterLayer::AuthConnectV4), Outcome::Block);
    w.engine_close(e);
    w.reboot();
    assert!(!w.filters().values().any(|f| f.key == 0x9e), "a plain filter does not survive a reboot");
    assert!(w.filters().contains_key(&boot));
    assert_eq!(w.classify(FilterLayer::AuthConnectV4), Outcome::Block, "boot-time filter before the BFE");
    w.set_bfe_state(FWPM_SERVICE_RUNNING);
    assert_eq!(w.classify(FilterLayer::AuthConnectV4), Outcome::Permit, "disabled once the BFE runs");
    let e = w.engine_open().unwrap();
    let _ = w.filter_add(e, plain(0x9f, FWPM_FILTER_FLAG_PERSISTENT, FWP_ACTION_BLOCK)).unwrap();
    w.engine_close(e);
    w.set_bfe_state(FWPM_SERVICE_STOPPED);
    assert_eq!(w.classify(FilterLayer::AuthConnectV4), Outcome::Block, "a persistent filter survives a BFE stop");
    w.reboot();
    assert_eq!(w.classify(FilterLayer::AuthConnectV4), Outcome::Block, "the boot-time one again, at boot");
    assert!(w.filters().values().any(|f| f.key == 0x9f), "kept for the BFE's start");
}

/// Deletes by key are staged like adds; a sublayer still holding filters is
/// `FWP_E_IN_USE`; a missing key is NOT_FOUND.
#[test]
fn deletes_by_key_follow_the_transaction() {
    use crate::mgmt::{STATUS_FWP_FILTER_NOT_FOUND, STATUS_FWP_IN_USE};
    use wfp_ffi::FWP_ACTION_BLOCK;
    let mut w = Wfp::new(Readings::default());
    let e = w.engine_open().unwrap();
    assert_eq!(w.sublayer_add(e, 1, 0x10), 0);
    let _ = w.filter_add(e, plain(0xaa, 0, FWP_ACTION_BLOCK)).unwrap();
    assert_eq!(w.filter_add(e, plain(0xaa, 0, FWP_ACTION_BLOCK)), Err(crate::mgmt::STATUS_FWP_ALREADY_EXISTS));
    assert_eq!(w.sublayer_delete_by_key(e, 1), STATUS_FWP_IN_USE);
    assert_eq!(w.transaction_begin(e), 0);
    assert_eq!(w.filter_delete_by_key(e, 0xaa), 0);
    assert_eq!(w.filter_delete_by_key(e, 0xaa), STATUS_FWP_FILTER_NOT_FOUND, "already deleted in this transaction");
    assert_eq!(w.sublayer_delete_by_key(e, 1), 0, "not in use once its filter's delete is staged");
    assert_eq!(w.filters().len(), 1, "nothing deleted before the commit");
    assert_eq!(w.transaction_abort(e), 0);
    assert_eq!(w.filters().len(), 1, "an abort keeps it");
    assert_eq!(w.filter_delete_by_key(e, 0xaa), 0);
    assert!(w.filters().is_empty());
}

#[test]
#[should_panic(expected = "BOOTTIME together with")]
fn boottime_and_persistent_cannot_be_combined() {
    let mut w = Wfp::new(Readings::default());
    let e = w.engine_open().unwrap();
    let both = FWPM_FILTER_FLAG_BOOTTIME | FWPM_FILTER_FLAG_PERSISTENT;
    let _ = w.filter_add(e, plain(1, both, FWP_ACTION_BLOCK));
}
