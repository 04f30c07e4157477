//! The driver of the start-up timeline: the real
//! [`arbiter_callout::shell::Lifecycle`] (its boot guard included) over the
//! WFP model, as the driver's `Wdm` runs it over the real routines, with
//! callouts that stand for ours at ALE_CONNECT_REDIRECT and ALE_AUTH_CONNECT.
//!
//! Our callouts decide from a [`Probe`] the timeline sets before each flow
//! (what our rules would do with it); the probe records what they did, so
//! the timeline can tell our block from the boot set's.

use core::cell::RefCell;
use std::rc::Rc;

use arbiter::audit::GuardRecord;
use arbiter::boot::BootMode;
use arbiter_callout::boot::BootFilter;
use arbiter_callout::filters::{FILTERS, FilterLayer};
use arbiter_callout::shell::{Kernel, PASSIVE_LEVEL, Status};
use arbiter_wfp_model::mgmt::STATUS_FWP_FILTER_NOT_FOUND;
use arbiter_wfp_model::{Filter, Irql, Key, Runtime, Wfp, bootset};
use wfp_ffi::{FWP_ACTION_BLOCK, FWP_ACTION_PERMIT, FWPS_CLASSIFY_OUT0, FWPS_RIGHT_ACTION_WRITE};

/// Our driver's provider and sublayer keys in the model.
const PROVIDER: Key = 0xa7b1_0001;
const SUBLAYER: Key = 0xa7b1_0002;
/// Our callouts' keys: this plus the index in [`FILTERS`].
const CALLOUT_BASE: Key = 0xa7b1_00c0;

/// What our callouts are to do with the flow being classified, and what
/// they did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct Probe {
    /// Our rules block this flow.
    pub(crate) block: bool,
    /// Our connect-redirect callout was reached.
    pub(crate) reached_redirect: bool,
    /// Our auth-connect callout blocked, having the write right.
    pub(crate) blocked: bool,
}

/// The shell's [`Kernel`] over the model.
pub(crate) struct Driver<'a> {
    /// The machine.
    pub(crate) wfp: &'a mut Wfp,
    /// The rules' `[boot]` mode.
    pub(crate) mode: BootMode,
    /// Our registered proxy (its pid), as the callout's state says.
    pub(crate) proxy: Option<u64>,
    /// Boot-guard records written to the ring.
    pub(crate) audited: Vec<GuardRecord>,
    /// Shared with our callouts.
    pub(crate) probe: Rc<RefCell<Probe>>,
    callout_ids: Vec<u32>,
    subscription: Option<u64>,
}

impl<'a> Driver<'a> {
    /// The driver, loaded (nothing registered yet).
    pub(crate) fn new(wfp: &'a mut Wfp, mode: BootMode) -> Self {
        Self {
            wfp,
            mode,
            proxy: None,
            audited: Vec::new(),
            probe: Rc::default(),
            callout_ids: Vec::new(),
            subscription: None,
        }
    }

    /// DriverEntry's registrations (after `Lifecycle::start`): our callouts
    /// with FwpsCalloutRegister0, then the BFE state subscription.
    pub(crate) fn register(&mut self) -> Result<(), Status> {
        for (key, spec) in (CALLOUT_BASE..).zip(FILTERS.iter()) {
            let layer = spec.layer;
            let probe = Rc::clone(&self.probe);
            let classify = move |_: &mut Runtime, _: u64, out: &mut FWPS_CLASSIFY_OUT0| {
                let mut p = probe.borrow_mut();
                match layer {
                    FilterLayer::ConnectRedirectV4 | FilterLayer::ConnectRedirectV6 => p.reached_redirect = true,
                    FilterLayer::AuthConnectV4 | FilterLayer::AuthConnectV6
                        if out.rights & FWPS_RIGHT_ACTION_WRITE != 0 =>
                    {
                        out.actionType = if p.block { FWP_ACTION_BLOCK } else { FWP_ACTION_PERMIT };
                        p.blocked = p.block;
                    }
                    _ => {}
                }
            };
            let id = self.wfp.callout_register(key, Box::new(classify))?;
            self.callout_ids.push(id);
        }
        self.subscription = Some(self.wfp.bfe_subscribe(Box::new(|_| {})));
        Ok(())
    }
}

const fn check(s: Status) -> Result<(), Status> {
    if s < 0 { Err(s) } else { Ok(()) }
}

impl Kernel for Driver<'_> {
    fn irql(&self) -> u8 {
        match self.wfp.rt.kernel.irql() {
            Irql::Passive => PASSIVE_LEVEL,
            Irql::Apc => 1,
            Irql::Dispatch => 2,
        }
    }
    fn read_sublayer_weight(&mut self) -> Option<u16> {
        None
    }
    fn open_engine(&mut self) -> Result<usize, Status> {
        // The driver's session carries FWPM_SESSION_FLAG_DYNAMIC.
        self.wfp.engine_open_dynamic().map(|e| e as usize)
    }
    fn add_filters(&mut self, engine: usize, weight: u16) -> Result<[u64; 2], Status> {
        let engine = engine as u64;
        check(self.wfp.transaction_begin(engine))?;
        let wfp = &mut *self.wfp;
        let mut body = || -> Result<[u64; 2], Status> {
            check(wfp.provider_add(engine, PROVIDER))?;
            check(wfp.sublayer_add(engine, SUBLAYER, weight))?;
            let mut ids = [0u64; 2];
            for (i, (callout, spec)) in (CALLOUT_BASE..).zip(FILTERS.iter()).enumerate() {
                check(wfp.callout_add(engine, callout, spec.layer))?;
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
                let id = wfp.filter_add(engine, filter)?;
                if let Some(slot) = ids.get_mut(i) {
                    *slot = id;
                }
            }
            Ok(ids)
        };
        match body() {
            Ok(ids) => check(self.wfp.transaction_commit(engine)).map(|()| ids),
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
    fn complete_held(&mut self) {}
    fn unregister_callouts(&mut self) -> Result<(), Status> {
        let mut result = Ok(());
        for id in core::mem::take(&mut self.callout_ids) {
            let s = self.wfp.callout_unregister_by_id(id);
            if s < 0 && result.is_ok() {
                result = Err(s);
            }
        }
        result
    }
    fn boot_state(&mut self) -> (BootMode, Option<u64>) {
        (self.mode, self.proxy)
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
