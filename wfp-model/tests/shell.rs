//! The driver's lifecycle (`arbiter_callout::shell::Lifecycle`) run on the
//! WFP model: the BFE stopped then started, the BFE restarting, filters added
//! once, unload with classifications held and with a callout still busy, and
//! the IRQL rules of the registry read.

use core::cell::Cell;
use std::rc::Rc;

use arbiter_callout::filters::{FILTERS, FilterLayer};
use arbiter_callout::shell::{Kernel, Lifecycle, PASSIVE_LEVEL, STATUS_DEVICE_BUSY, Status};
use arbiter_wfp_model::arbitration::Outcome;
use arbiter_wfp_model::mgmt::STATUS_BFE_NOT_RUNNING;
use arbiter_wfp_model::{Filter, Irql, Readings, Routine, Wfp};
use wfp_ffi::{FWPM_SERVICE_RUNNING, FWPM_SERVICE_STOP_PENDING, FWPM_SERVICE_STOPPED};

const PROVIDER: u128 = 0xa7b1;
const SUBLAYER: u128 = 0xa7b2;

/// The shell's kernel over the model: what the driver's `Wdm` does with the
/// real routines, here with the model's.
struct OnModel<'a> {
    wfp: &'a mut Wfp,
    weight: Option<u16>,
    subscription: Option<u64>,
    callout_ids: Vec<u32>,
    held: usize,
    completed_while_filtered: usize,
    /// classifyFn calls of our callouts.
    classified: Rc<Cell<usize>>,
    /// Connect classifications made by the engine while unload completes
    /// held ones, with their outcome.
    during_unload: Vec<Outcome>,
}

impl<'a> OnModel<'a> {
    fn new(wfp: &'a mut Wfp) -> Self {
        Self {
            wfp,
            weight: Some(0x4000),
            subscription: None,
            callout_ids: Vec::new(),
            held: 0,
            completed_while_filtered: 0,
            classified: Rc::new(Cell::new(0)),
            during_unload: Vec::new(),
        }
    }

    /// DriverEntry after `Lifecycle::start`: register the callouts and subscribe.
    fn register_and_subscribe(&mut self) {
        for (i, spec) in FILTERS.iter().enumerate() {
            let key = 0xc0 + i as u128;
            let _ = spec;
            let seen = Rc::clone(&self.classified);
            let id =
                self.wfp.callout_register(key, Box::new(move |_, _, _| seen.set(seen.get() + 1))).expect("register");
            self.callout_ids.push(id);
        }
        self.subscription = Some(self.wfp.bfe_subscribe(Box::new(|_| {})));
    }

    fn our_filters(&self) -> usize {
        self.wfp.filters().values().filter(|f| f.sublayer == SUBLAYER).count()
    }
}

impl Kernel for OnModel<'_> {
    fn irql(&self) -> u8 {
        match self.wfp.rt.kernel.irql() {
            Irql::Passive => PASSIVE_LEVEL,
            Irql::Apc => 1,
            Irql::Dispatch => 2,
        }
    }
    fn read_sublayer_weight(&mut self) -> Option<u16> {
        self.wfp.rt.kernel.call(Routine::Registry);
        self.weight
    }
    fn open_engine(&mut self) -> Result<usize, Status> {
        // The driver's session carries FWPM_SESSION_FLAG_DYNAMIC.
        self.wfp.engine_open_dynamic().map(|e| e as usize)
    }
    fn add_filters(&mut self, engine: usize, weight: u16) -> Result<[u64; 2], Status> {
        let engine = engine as u64;
        let check = |s: Status| if s < 0 { Err(s) } else { Ok(()) };
        check(self.wfp.transaction_begin(engine))?;
        let mut body = || -> Result<[u64; 2], Status> {
            check(self.wfp.provider_add(engine, PROVIDER))?;
            check(self.wfp.sublayer_add(engine, SUBLAYER, weight))?;
            let mut ids = [0u64; 2];
            for (i, spec) in FILTERS.iter().enumerate() {
                let callout = 0xc0 + i as u128;
                check(self.wfp.callout_add(engine, callout, spec.layer))?;
                let filter = Filter {
                    layer: spec.layer,
                    sublayer: SUBLAYER,
                    weight: spec.weight.unwrap_or(0),
                    action_type: spec.action_type,
                    callout,
                    flags: spec.flags,
                };
                let id = self.wfp.filter_add(engine, filter)?;
                if let Some(slot) = ids.get_mut(i) {
                    *slot = id;
                }
            }
            Ok(ids)
        };
        match body() {
            Ok(ids) => {
                check(self.wfp.transaction_commit(engine))?;
                Ok(ids)
            }
            Err(e) => {
                self.wfp.transaction_abort(engine);
                Err(e)
            }
        }
    }
    fn close_engine(&mut self, engine: usize) {
        // A dynamic session: the model deletes its objects as it ends.
        self.wfp.engine_close(engine as u64);
    }
    fn unsubscribe_bfe(&mut self) {
        if let Some(s) = self.subscription.take() {
            self.wfp.bfe_unsubscribe(s);
        }
    }
    fn complete_held(&mut self) {
        // New connections keep arriving while unload runs.
        for layer in [FilterLayer::ConnectRedirectV4, FilterLayer::AuthConnectV4] {
            let outcome = self.wfp.classify(layer);
            self.during_unload.push(outcome);
        }
        if self.our_filters() > 0 {
            self.completed_while_filtered += self.held;
        }
        self.held = 0;
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

fn machine() -> Wfp {
    let mut wfp = Wfp::new(Readings::default());
    wfp.rt.kernel.trace = true;
    wfp
}

/// What DriverEntry does, in its order.
fn driver_entry(k: &mut OnModel<'_>) -> Lifecycle {
    let life = Lifecycle::start(k);
    k.register_and_subscribe();
    if k.wfp.bfe_state() == FWPM_SERVICE_RUNNING {
        life.bfe_running(k).expect("filters added");
    }
    life
}

#[test]
fn load_with_the_bfe_running_adds_our_filters_once() {
    let mut wfp = machine();
    let mut k = OnModel::new(&mut wfp);
    let life = driver_entry(&mut k);
    assert_eq!(k.our_filters(), FILTERS.len());
    // The BFE callback reporting RUNNING afterwards adds nothing more.
    assert_eq!(life.bfe_running(&mut k), Ok(None));
    assert_eq!(k.our_filters(), FILTERS.len());
    assert_eq!(k.wfp.open_engines(), 1);
}

#[test]
fn load_with_the_bfe_stopped_then_started() {
    let mut wfp = machine();
    wfp.set_bfe_state(FWPM_SERVICE_STOPPED);
    let mut k = OnModel::new(&mut wfp);
    let life = driver_entry(&mut k);
    assert_eq!(k.our_filters(), 0);
    assert_eq!(k.wfp.open_engines(), 0);
    // Opening the engine now fails as documented, and leaves nothing behind.
    assert_eq!(life.bfe_running(&mut k), Err(STATUS_BFE_NOT_RUNNING));
    k.wfp.set_bfe_state(FWPM_SERVICE_RUNNING);
    // The BFE callback: RUNNING.
    assert!(life.bfe_running(&mut k).expect("added").is_some());
    assert_eq!(k.our_filters(), FILTERS.len());
}

#[test]
fn the_bfe_restarting_closes_and_adds_again() {
    let mut wfp = machine();
    let mut k = OnModel::new(&mut wfp);
    let life = driver_entry(&mut k);
    // STOP_PENDING: the callback closes our engine before the BFE goes.
    k.wfp.set_bfe_state(FWPM_SERVICE_STOP_PENDING);
    life.bfe_stopping(&mut k);
    assert_eq!(k.wfp.open_engines(), 0);
    k.wfp.set_bfe_state(FWPM_SERVICE_STOPPED);
    assert_eq!(k.our_filters(), 0);
    k.wfp.set_bfe_state(FWPM_SERVICE_RUNNING);
    assert!(life.bfe_running(&mut k).expect("added again").is_some());
    assert_eq!(k.our_filters(), FILTERS.len());
    assert_eq!(k.wfp.open_engines(), 1);
}

#[test]
fn unload_with_classifications_held_removes_filters_first() {
    let mut wfp = machine();
    let mut k = OnModel::new(&mut wfp);
    let life = driver_entry(&mut k);
    k.held = 3;
    let stopped = life.stop(&mut k);
    assert_eq!(stopped.unregister, Ok(()));
    assert_eq!(k.our_filters(), 0, "our filters are gone");
    assert_eq!(k.completed_while_filtered, 0, "no held classification was completed while our filters could hold more");
    assert_eq!(k.wfp.open_engines(), 0);
}

#[test]
fn unload_reports_a_busy_callout() {
    let mut wfp = machine();
    let mut k = OnModel::new(&mut wfp);
    let life = driver_entry(&mut k);
    let busy = k.callout_ids[0];
    k.wfp.flow_contexts.insert(busy, 1);
    assert_eq!(life.stop(&mut k).unregister, Err(STATUS_DEVICE_BUSY));
}

#[test]
fn the_weight_is_read_at_passive_level_before_any_lock() {
    let mut wfp = machine();
    let mut k = OnModel::new(&mut wfp);
    let _life = Lifecycle::start(&mut k);
    assert_eq!(k.wfp.rt.kernel.calls.first(), Some(&(Routine::Registry, Irql::Passive)));
    assert!(k.wfp.rt.kernel.held_locks().is_empty());
}

/// The old driver read the registry inside `STATE.with`, that is holding its
/// spin lock at DISPATCH_LEVEL: the model refuses that call.
#[test]
#[should_panic(expected = "Registry")]
fn the_old_order_reads_the_registry_at_dispatch_level() {
    let mut wfp = machine();
    let lock = wfp.rt.kernel.new_spin_lock();
    wfp.rt.kernel.acquire_spin_lock(lock);
    let mut k = OnModel::new(&mut wfp);
    let _ = k.read_sublayer_weight();
}

/// The old driver's unload completed held classifications first and closed
/// the engine after: held classifications were completed while our filters
/// could still hold new ones (which were then dropped). The same check as
/// above catches that order.
#[test]
fn the_old_unload_order_completes_while_filters_remain() {
    let mut wfp = machine();
    let mut k = OnModel::new(&mut wfp);
    let life = driver_entry(&mut k);
    k.held = 3;
    k.complete_held();
    k.unsubscribe_bfe();
    life.bfe_stopping(&mut k);
    assert_eq!(k.completed_while_filtered, 3);
}

/// Load with connections already live: the one commit that adds our filters
/// reauthorizes each of them (the model's "adding filters reauthorizes
/// existing flows"), so they meet our callouts too.
#[test]
fn load_with_connections_already_live_reauthorizes_them() {
    let mut wfp = machine();
    wfp.live_flows = 250;
    let mut k = OnModel::new(&mut wfp);
    let _life = driver_entry(&mut k);
    assert_eq!(k.wfp.reauthorizations, 250);
    assert_eq!(k.wfp.classify(FilterLayer::ConnectRedirectV4), Outcome::Permit);
    assert_eq!(k.classified.get(), 1, "a live flow's reauthorization reaches our callout");
}

/// Classifications arriving during unload: once the filters are gone (before
/// held ones are completed and the callouts unregistered), a new connection
/// never reaches our callouts and is not blocked by a filter whose callout
/// is about to go; after unload, neither.
#[test]
fn classifications_arriving_during_unload_never_reach_our_callouts() {
    let mut wfp = machine();
    let mut k = OnModel::new(&mut wfp);
    let life = driver_entry(&mut k);
    k.held = 2;
    assert_eq!(life.stop(&mut k).unregister, Ok(()));
    assert_eq!(k.during_unload, [Outcome::Permit, Outcome::Permit]);
    assert_eq!(k.classified.get(), 0, "no classifyFn of ours during unload");
    assert_eq!(k.wfp.classify(FilterLayer::ConnectRedirectV4), Outcome::Permit);
    assert_eq!(k.classified.get(), 0);
}
