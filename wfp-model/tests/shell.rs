//! The driver's lifecycle (`arbiter_callout::shell::Lifecycle`) run on the
//! WFP model: the BFE stopped then started, the BFE restarting, filters added
//! once, unload with classifications held and with a callout still busy, and
//! the IRQL rules of the registry read; the boot guard, with the proxy
//! registered and unregistered through the real control device.

use core::cell::Cell;
use std::rc::Rc;

use arbiter::audit::{GuardChange, GuardRecord};
use arbiter::boot::BootMode;
use arbiter_callout::boot::BootFilter;
use arbiter_callout::filters::{FILTERS, FilterLayer};
use arbiter_callout::shell::{Kernel, Lifecycle, PASSIVE_LEVEL, STATUS_DEVICE_BUSY, Status};
use arbiter_wfp_model::arbitration::Outcome;
use arbiter_wfp_model::bootset;
use arbiter_wfp_model::mgmt::{STATUS_BFE_NOT_RUNNING, STATUS_FWP_FILTER_NOT_FOUND};
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
    /// What our callouts write when they have the write right (`None`: leave
    /// classifyOut as they found it).
    verdict: Rc<Cell<Option<wfp_ffi::FWP_ACTION_TYPE>>>,
    /// The rules' `[boot] mode` and our registered proxy, as the callout's
    /// state would say.
    mode: BootMode,
    proxy: Option<u64>,
    /// Boot-guard records written to the ring.
    audited: Vec<GuardRecord>,
    /// When set, the driver's callout state and control handles: the mode
    /// and the proxy are then read from it as the driver's `boot_state`
    /// does, and the proxy registers through the real control path.
    control: Option<(Callout<RuleSet>, Handles)>,
    /// What the driver reads from its `Lifecycle` before a control request
    /// (`Lifecycle::override_failures`).
    override_failures: u64,
    /// The last control reply.
    last_reply: Vec<u8>,
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
            verdict: Rc::new(Cell::new(None)),
            mode: BootMode::Open,
            proxy: None,
            audited: Vec::new(),
            control: None,
            override_failures: 0,
            last_reply: Vec::new(),
        }
    }

    /// DriverEntry after `Lifecycle::start`: register the callouts and subscribe.
    fn register_and_subscribe(&mut self) {
        for (i, spec) in FILTERS.iter().enumerate() {
            let key = 0xc0 + i as u128;
            let _ = spec;
            let seen = Rc::clone(&self.classified);
            let verdict = Rc::clone(&self.verdict);
            let classify = move |_: &mut arbiter_wfp_model::Runtime, _: u64, out: &mut wfp_ffi::FWPS_CLASSIFY_OUT0| {
                seen.set(seen.get() + 1);
                if let Some(v) = verdict.get()
                    && out.rights & wfp_ffi::FWPS_RIGHT_ACTION_WRITE != 0
                {
                    out.actionType = v;
                }
            };
            let id = self.wfp.callout_register(key, Box::new(classify)).expect("register");
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
                    key: 0,
                    conditions: [None, None],
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
    fn boot_state(&mut self) -> (BootMode, Option<u64>) {
        match &self.control {
            // What the driver reads under its lock.
            Some((c, _)) => (c.arbiter().policy().boot_mode(), c.arbiter().proxy().map(|p| p.pid)),
            None => (self.mode, self.proxy),
        }
    }
    fn add_override(&mut self, engine: usize, filter: &BootFilter) -> Result<u64, Status> {
        self.wfp.filter_add(engine as u64, bootset::filter(filter))
    }
    fn delete_filter(&mut self, engine: usize, id: u64) -> Result<(), Status> {
        match self.wfp.filter_delete(engine as u64, id) {
            s if s >= 0 || s == STATUS_FWP_FILTER_NOT_FOUND => Ok(()),
            s => Err(s),
        }
    }
    fn audit_guard(&mut self, record: GuardRecord) {
        self.audited.push(record);
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

// ---- boot-time protection (issue 14): the service's set and the driver's guard ----

use arbiter::boot::BootConfig;
use arbiter_callout::boot::{BootEngine, BootStep, PlanFailed, install_plan, remove_plan, run_plan};
use arbiter_wfp_model::mgmt::Values;
use wfp_ffi::{FWP_ACTION_BLOCK, FWP_ACTION_PERMIT, FWP_CONDITION_FLAG_IS_LOOPBACK};

const WEB: Values = Values { flags: 0, protocol: 6, remote_port: 443 };
const DNS: Values = Values { flags: 0, protocol: 17, remote_port: 53 };
const LOOPBACK: Values = Values { flags: FWP_CONDITION_FLAG_IS_LOOPBACK, protocol: 6, remote_port: 8080 };

fn block_mode() -> BootConfig {
    BootConfig { mode: BootMode::Block, ..BootConfig::default() }
}

/// The service's `install-boot` / `remove-boot`: one session, one transaction.
fn service(wfp: &mut Wfp, steps: impl Iterator<Item = BootStep>) -> Result<(), PlanFailed> {
    let engine = wfp.engine_open().expect("the BFE runs");
    let r = run_plan(&mut bootset::Session { wfp, engine }, steps);
    wfp.engine_close(engine);
    r.map(|_| ())
}

/// Both families' outcome for a flow at ALE_AUTH_CONNECT.
fn auth(k: &mut OnModel<'_>, v: &Values) -> Outcome {
    let v4 = k.wfp.classify_values(FilterLayer::AuthConnectV4, v);
    let v6 = k.wfp.classify_values(FilterLayer::AuthConnectV6, v);
    assert_eq!(v4, v6, "both families alike");
    v4
}

fn changes(k: &OnModel<'_>) -> Vec<GuardChange> {
    k.audited.iter().map(|r| r.change).collect()
}

/// Block mode from boot to unload, the model deciding every flow: the
/// boot-time filters before the BFE, the persistent ones after it, the
/// driver's override once the proxy registered (our callouts then decide),
/// and the block set again when the proxy is lost, each change audited.
#[test]
fn block_mode_blocks_until_ready_and_again_when_the_proxy_is_lost() {
    let mut wfp = machine();
    service(&mut wfp, install_plan(&block_mode())).expect("installed");
    wfp.reboot();
    let mut k = OnModel::new(&mut wfp);
    k.mode = BootMode::Block;
    k.verdict.set(Some(FWP_ACTION_PERMIT));
    // BFE down: the boot-time filters.
    assert_eq!(auth(&mut k, &WEB), Outcome::Block);
    assert_eq!(auth(&mut k, &DNS), Outcome::Permit);
    assert_eq!(auth(&mut k, &LOOPBACK), Outcome::Permit);
    // The driver loads before the BFE: no engine, no filters, nothing lifted.
    let life = driver_entry(&mut k);
    life.sync_guard(&mut k);
    assert_eq!(auth(&mut k, &WEB), Outcome::Block);
    // The BFE starts: the persistent twins take over.
    k.wfp.set_bfe_state(FWPM_SERVICE_RUNNING);
    assert_eq!(auth(&mut k, &WEB), Outcome::Block);
    assert_eq!(auth(&mut k, &DNS), Outcome::Permit);
    // Our filters go in; no proxy yet: still blocked, nothing audited.
    life.bfe_running(&mut k).expect("added");
    life.sync_guard(&mut k);
    assert_eq!(auth(&mut k, &WEB), Outcome::Block);
    assert!(k.audited.is_empty());
    // The proxy registers: the override lifts the set, our callouts decide.
    k.proxy = Some(77);
    life.sync_guard(&mut k);
    assert!(life.override_ids().iter().all(|&id| id != 0));
    assert_eq!(changes(&k), [GuardChange::Ready]);
    let before = k.classified.get();
    assert_eq!(auth(&mut k, &WEB), Outcome::Permit);
    assert!(k.classified.get() > before, "our callouts were asked");
    k.verdict.set(Some(FWP_ACTION_BLOCK));
    assert_eq!(auth(&mut k, &WEB), Outcome::Block, "a block of ours still blocks: the override is soft");
    k.verdict.set(Some(FWP_ACTION_PERMIT));
    // The proxy dies (its handle's cleanup unregisters it): blocked again, audited.
    k.proxy = None;
    life.sync_guard(&mut k);
    assert_eq!(life.override_ids(), [0, 0]);
    assert_eq!(auth(&mut k, &WEB), Outcome::Block);
    assert_eq!(auth(&mut k, &DNS), Outcome::Permit);
    assert_eq!(
        k.audited.last(),
        Some(&GuardRecord { mode: BootMode::Block, change: GuardChange::ProxyLost, proxy_pid: 77 })
    );
    // It restarts.
    k.proxy = Some(78);
    life.sync_guard(&mut k);
    assert_eq!(auth(&mut k, &WEB), Outcome::Permit);
    // The BFE restarts: the override goes with our session, the persistent
    // set stays; our filters and the override come back with the BFE.
    k.wfp.set_bfe_state(FWPM_SERVICE_STOP_PENDING);
    life.bfe_stopping(&mut k);
    life.sync_guard(&mut k);
    k.wfp.set_bfe_state(FWPM_SERVICE_STOPPED);
    assert_eq!(auth(&mut k, &WEB), Outcome::Block);
    k.wfp.set_bfe_state(FWPM_SERVICE_RUNNING);
    life.bfe_running(&mut k).expect("added again");
    life.sync_guard(&mut k);
    assert_eq!(auth(&mut k, &WEB), Outcome::Permit);
    assert_eq!(
        changes(&k),
        [GuardChange::Ready, GuardChange::ProxyLost, GuardChange::Ready, GuardChange::FiltersGone, GuardChange::Ready]
    );
    // Unload: the dynamic session ends, nothing to delete; the set blocks again.
    assert_eq!(life.stop(&mut k).unregister, Ok(()));
    assert_eq!(auth(&mut k, &WEB), Outcome::Block);
    assert_eq!(life.override_failures(), 0);
    // Removal, with no driver: everything of our provider goes.
    service(k.wfp, remove_plan()).expect("removed");
    assert_eq!(auth(&mut k, &WEB), Outcome::Permit);
    k.wfp.reboot();
    assert_eq!(auth(&mut k, &WEB), Outcome::Permit, "no boot-time filter left either");
}

/// Open mode: nothing installed, nothing blocked, the guard audits but adds nothing.
#[test]
fn open_mode_installs_nothing_and_never_blocks() {
    let mut wfp = machine();
    service(&mut wfp, install_plan(&BootConfig::default())).expect("nothing to do");
    assert!(wfp.filters().is_empty() && wfp.sublayers().is_empty() && wfp.providers().is_empty());
    wfp.reboot();
    let mut k = OnModel::new(&mut wfp);
    assert_eq!(auth(&mut k, &WEB), Outcome::Permit);
    let life = driver_entry(&mut k);
    k.wfp.set_bfe_state(FWPM_SERVICE_RUNNING);
    life.bfe_running(&mut k).expect("added");
    k.proxy = Some(5);
    life.sync_guard(&mut k);
    assert_eq!(life.override_ids(), [0, 0]);
    k.proxy = None;
    life.sync_guard(&mut k);
    assert_eq!(changes(&k), [GuardChange::Ready, GuardChange::ProxyLost], "audited in open mode too");
    assert_eq!(auth(&mut k, &WEB), Outcome::Permit);
}

/// A machine with the set installed in block mode whose driver has loaded,
/// seen its proxy register and so added its override.
fn holding_the_override(wfp: &mut Wfp) -> (OnModel<'_>, Lifecycle) {
    service(wfp, install_plan(&block_mode())).expect("installed");
    let mut k = OnModel::new(wfp);
    k.mode = BootMode::Block;
    let life = driver_entry(&mut k);
    k.proxy = Some(9);
    life.sync_guard(&mut k);
    (k, life)
}

/// Recovery while the driver holds the override: removal deletes it with
/// the rest (the sublayer could not go otherwise), and the driver's own
/// delete later finds it gone without failing.
#[test]
fn removal_works_while_the_driver_holds_the_override() {
    let mut wfp = machine();
    let (mut k, life) = holding_the_override(&mut wfp);
    assert!(life.override_ids().iter().all(|&id| id != 0));
    service(k.wfp, remove_plan()).expect("removed with the override in place");
    assert!(k.wfp.sublayers().keys().all(|&s| s != bootset::key(&arbiter_callout::boot::SUBLAYER_KEY)));
    assert!(
        k.wfp.providers().is_empty()
            || k.wfp.providers().keys().all(|&p| p != bootset::key(&arbiter_callout::boot::PROVIDER_KEY))
    );
    k.proxy = None;
    life.sync_guard(&mut k);
    assert_eq!(auth(&mut k, &WEB), Outcome::Permit);
    assert_eq!(changes(&k), [GuardChange::Ready, GuardChange::ProxyLost]);
}

/// Review finding: installing the set again (a changed allow-list) while
/// the driver holds its override must keep the override: the driver is not
/// told, and a deleted override would leave the new block-all hard-blocking
/// every flow until the proxy registered again.
#[test]
fn installing_again_while_the_driver_holds_the_override_keeps_it() {
    let mut wfp = machine();
    let (mut k, life) = holding_the_override(&mut wfp);
    let held = life.override_ids();
    assert!(held.iter().all(|&id| id != 0));
    assert_eq!(auth(&mut k, &WEB), Outcome::Permit);
    let mut ntp = block_mode();
    ntp.allow.push(arbiter::boot::BootAllow::udp(123));
    ntp.canonicalize();
    service(k.wfp, install_plan(&ntp)).expect("replaced while the override is held");
    for id in held {
        assert!(k.wfp.filters().contains_key(&id), "the override {id} survives the new set");
    }
    life.sync_guard(&mut k);
    assert_eq!(auth(&mut k, &WEB), Outcome::Permit, "a ready machine is not cut off by a reinstall");
    // The new set is in force once the proxy goes.
    k.proxy = None;
    life.sync_guard(&mut k);
    assert_eq!(auth(&mut k, &WEB), Outcome::Block);
    let ntp_flow = Values { flags: 0, protocol: 17, remote_port: 123 };
    assert_eq!(k.wfp.classify_values(FilterLayer::AuthConnectV4, &ntp_flow), Outcome::Permit);
}

/// Installing again replaces the set in one transaction (a changed
/// allow-list); a failing step aborts it and leaves the machine as it was.
#[test]
fn install_replaces_atomically_and_a_failure_changes_nothing() {
    let mut wfp = machine();
    service(&mut wfp, install_plan(&block_mode())).expect("installed");
    let first: Vec<_> = wfp.filters().values().copied().collect();
    let mut ntp = block_mode();
    ntp.allow.push(arbiter::boot::BootAllow::udp(123));
    ntp.canonicalize();
    service(&mut wfp, install_plan(&ntp)).expect("replaced");
    assert_eq!(wfp.filters().len(), first.len() + 4, "one more permit per flag and family");
    let ntp_flow = Values { flags: 0, protocol: 17, remote_port: 123 };
    assert_eq!(wfp.classify_values(FilterLayer::AuthConnectV4, &ntp_flow), Outcome::Permit);
    // A session whose 3rd add fails.
    struct Failing<'a>(bootset::Session<'a>, usize);
    impl BootEngine for Failing<'_> {
        fn begin(&mut self) -> Result<(), i32> {
            self.0.begin()
        }
        fn commit(&mut self) -> Result<(), i32> {
            self.0.commit()
        }
        fn abort(&mut self) {
            self.0.abort()
        }
        fn add_provider(&mut self) -> Result<bool, i32> {
            self.0.add_provider()
        }
        fn add_sublayer(&mut self) -> Result<bool, i32> {
            self.0.add_sublayer()
        }
        fn add_filter(&mut self, f: &BootFilter) -> Result<(), i32> {
            self.1 += 1;
            if self.1 == 3 { Err(-7) } else { self.0.add_filter(f) }
        }
        fn delete_filter(&mut self, k: wfp_ffi::GUID) -> Result<bool, i32> {
            self.0.delete_filter(k)
        }
        fn delete_sublayer(&mut self) -> Result<bool, i32> {
            self.0.delete_sublayer()
        }
        fn delete_provider(&mut self) -> Result<bool, i32> {
            self.0.delete_provider()
        }
    }
    let before: Vec<_> = wfp.filters().values().copied().collect();
    let engine = wfp.engine_open().expect("open");
    let r = run_plan(&mut Failing(bootset::Session { wfp: &mut wfp, engine }, 0), install_plan(&block_mode()));
    wfp.engine_close(engine);
    assert_eq!(r.map_err(|e| e.status), Err(-7));
    assert_eq!(wfp.filters().values().copied().collect::<Vec<_>>(), before, "aborted: the old set is intact");
    // Removing twice is fine (recovery may run more than once).
    service(&mut wfp, remove_plan()).expect("removed");
    service(&mut wfp, remove_plan()).expect("nothing left to remove");
    assert!(wfp.filters().is_empty());
}

// ---- the guard driven through the real control path ----

use arbiter::control::{Access, Caller, DriverCounters, HandleId, Handles, Reply, Request, Status as Control};
use arbiter::{Arbiter, Capacities, Config, Policy, ProxyRegistration, RuleSet};
use arbiter_callout::control::{Device, cleanup, dispatch, open};
use arbiter_callout::{Callout, CalloutConfig};

impl OnModel<'_> {
    /// The driver's callout state, with `[boot]` set by its rules.
    fn with_callout(&mut self, mode: BootMode) {
        let rules = RuleSet { boot: BootConfig { mode, ..BootConfig::default() }, ..RuleSet::default() };
        let caps = Capacities { endpoints: 16, destinations: 16, known_proxies: 4 };
        let arbiter = Arbiter::new(Config::default(), caps, rules).expect("arbiter");
        let callout = Callout::new(arbiter, CalloutConfig { ring_bytes: 1 << 12, pend: None }).expect("callout");
        self.control = Some((callout, Handles::new()));
    }

    /// One IRP on the control device, as the driver's dispatch routines
    /// make it: `IRP_MJ_CREATE`, `IRP_MJ_DEVICE_CONTROL` or `IRP_MJ_CLEANUP`.
    fn irp(&mut self, caller: &Caller, request: Option<Request<'_>>, close: bool) -> Option<Control> {
        let (callout, handles) = self.control.as_mut().expect("with_callout first");
        let mut decode = |_: &[u8]| Err(arbiter::control::RulesRejected { code: 1, offset: 0 });
        let mut device = Device {
            callout,
            handles,
            decode_rules: &mut decode,
            instance: 1,
            fwps: &mut self.wfp.rt,
            now: arbiter::Instant::ZERO,
            driver_counters: DriverCounters { override_failures: self.override_failures },
        };
        if close {
            cleanup(&mut device, caller.handle);
            return None;
        }
        let Some(request) = request else {
            return Some(open(&mut device, caller));
        };
        let mut reply = vec![0u8; 256];
        let n = dispatch(&mut device, request.op().ioctl(), caller, &request.to_vec(), &mut reply);
        reply.truncate(n);
        self.last_reply = reply;
        Some(Reply::decode(&self.last_reply).expect("a reply").status)
    }
}

/// The proxy service's handle `n`: its own process, read and write.
const fn proxy_handle(pid: u32, n: u64) -> Caller {
    Caller { pid, handle: HandleId(0xF000 + n), access: Access::READ_WRITE }
}

fn registration(pid: u32) -> Request<'static> {
    Request::RegisterProxy(ProxyRegistration {
        pid: u64::from(pid),
        v4: Some("127.0.0.1:8080".parse().expect("addr")),
        v6: None,
    })
}

/// The guard follows the proxy's registration as the real control handler
/// keeps it: registered through `IRP_MJ_DEVICE_CONTROL`, gone when its
/// handle is cleaned up (the proxy crashed) or when it unregisters; the
/// mode comes from the callout's rules, as the driver reads it.
#[test]
fn the_guard_follows_registrations_made_through_the_control_device() {
    let mut wfp = machine();
    service(&mut wfp, install_plan(&block_mode())).expect("installed");
    let mut k = OnModel::new(&mut wfp);
    k.with_callout(BootMode::Block);
    k.verdict.set(Some(FWP_ACTION_PERMIT));
    let life = driver_entry(&mut k);
    life.sync_guard(&mut k);
    assert_eq!(auth(&mut k, &WEB), Outcome::Block, "no proxy yet");
    // The proxy opens the device and registers; the driver syncs the guard
    // after the request.
    let first = proxy_handle(77, 1);
    assert_eq!(k.irp(&first, None, false), Some(Control::Ok));
    assert_eq!(k.irp(&first, Some(registration(77)), false), Some(Control::Ok));
    life.sync_guard(&mut k);
    assert!(life.override_ids().iter().all(|&id| id != 0));
    assert_eq!(auth(&mut k, &WEB), Outcome::Permit);
    // It crashes: IRP_MJ_CLEANUP of its handle unregisters it.
    let _ = k.irp(&first, None, true);
    life.sync_guard(&mut k);
    assert_eq!(life.override_ids(), [0, 0]);
    assert_eq!(auth(&mut k, &WEB), Outcome::Block);
    assert_eq!(
        k.audited.last(),
        Some(&GuardRecord { mode: BootMode::Block, change: GuardChange::ProxyLost, proxy_pid: 77 })
    );
    // It restarts, then unregisters on purpose.
    let second = proxy_handle(78, 2);
    assert_eq!(k.irp(&second, None, false), Some(Control::Ok));
    assert_eq!(k.irp(&second, Some(registration(78)), false), Some(Control::Ok));
    life.sync_guard(&mut k);
    assert_eq!(auth(&mut k, &WEB), Outcome::Permit);
    assert_eq!(k.irp(&second, Some(Request::UnregisterProxy { pid: 78 }), false), Some(Control::Ok));
    life.sync_guard(&mut k);
    assert_eq!(auth(&mut k, &WEB), Outcome::Block);
    assert_eq!(changes(&k), [GuardChange::Ready, GuardChange::ProxyLost, GuardChange::Ready, GuardChange::ProxyLost]);
    assert_eq!(k.audited.last().map(|r| r.proxy_pid), Some(78));
    assert_eq!(life.override_failures(), 0);
}

/// Block mode in the rules but the boot set not installed: the override
/// cannot be added (there is no boot sublayer), each failure is counted,
/// and the count reaches user mode in the read-counters reply.
#[test]
fn failed_override_adds_are_counted_and_read_through_the_control_device() {
    let mut wfp = machine();
    let mut k = OnModel::new(&mut wfp);
    k.with_callout(BootMode::Block);
    let life = driver_entry(&mut k);
    let proxy = proxy_handle(77, 1);
    assert_eq!(k.irp(&proxy, None, false), Some(Control::Ok));
    assert_eq!(k.irp(&proxy, Some(registration(77)), false), Some(Control::Ok));
    life.sync_guard(&mut k);
    assert_eq!(life.override_ids(), [0, 0]);
    assert_eq!(life.override_failures(), 2, "V4 and V6");
    assert_eq!(changes(&k), [GuardChange::Ready], "the guard still follows the proxy");
    // The driver reads the count before each control request.
    k.override_failures = life.override_failures();
    assert_eq!(k.irp(&proxy, Some(Request::ReadDriverCounters), false), Some(Control::Ok));
    let driver = Reply::decode(&k.last_reply).expect("reply").driver_counters().expect("driver counters");
    assert_eq!(driver, DriverCounters { override_failures: 2 });
}
