//! The management side: BFE state, engine sessions, transactions, providers,
//! sublayers, callouts and filters, callout registration, and the
//! classification of one layer through the filters in arbitration order.
//!
//! Sources (learn.microsoft.com):
//! - FwpmBfeStateGet0 / FwpmBfeStateSubscribeChanges0: the BFE state
//!   (`FWPM_SERVICE_STATE`) and a callback on every change; FwpmEngineOpen0
//!   needs the BFE running (it fails otherwise; the model answers
//!   `FWP_E_... ` as [`STATUS_BFE_NOT_RUNNING`]).
//! - FwpmTransactionBegin0 / Commit0 / Abort0: objects added in a
//!   transaction exist only once it commits; an abort drops them.
//! - FwpmFilterAdd0: "adding filters reauthorizes existing flows" is the
//!   model's reading of the ALE pages ("ALE Stateful Filtering": changes of
//!   policy cause reauthorization of existing connections); the model counts
//!   a reauthorization of every live flow at each commit that adds filters.
//! - FwpsCalloutUnregisterById0, Remarks: it "will succeed even if there are
//!   filters in the filter engine that specify the callout"; then filters
//!   "with an action type of FWP_ACTION_CALLOUT_TERMINATING or
//!   FWP_ACTION_CALLOUT_UNKNOWN are treated as FWP_ACTION_BLOCK, and filters
//!   with an action type of FWP_ACTION_CALLOUT_INSPECTION are ignored".
//!   `STATUS_DEVICE_BUSY`: "There are one or more data flows being processed
//!   by the callout that have an outstanding context associated with the
//!   data flow."
//! - Every management call is PASSIVE_LEVEL only ([`crate::Routine`]).
//! - Persistence ("Basic Operation", FWPM_FILTER0 flags, FwpmProviderAdd0
//!   remarks): a persistent filter "survives across BFE stop/start" and
//!   reboots; "Boot-time objects are added to the Base Filtering Engine
//!   (BFE) when the TCP/IP driver starts, and are removed once the BFE
//!   finishes initialization. Persistent objects are added when the BFE
//!   starts." The model keeps persistent and boot-time objects across a
//!   BFE stop and a [`Wfp::reboot`]; a boot-time filter is in force only
//!   between a reboot and the BFE's start, a persistent one only once the
//!   BFE has started since boot (the reading for a boot-time filter added
//!   while the BFE runs: it waits for the next boot).
//! - FWPM_FILTER0 `FWPM_FILTER_FLAG_CLEAR_ACTION_RIGHT` ("Clear filter action
//!   right"), read with Filter Arbitration as the bind model's
//!   `ClearRight::Hardens`: the filter's permit or block is hard.
//! - Filter conditions (FWPM_FILTER_CONDITION0): all of a filter's
//!   conditions must match for it to apply ("Filtering Conditions"); the
//!   model knows the three a plain filter of the boot set uses
//!   ([`Condition`]), matched against [`Values`].
//! - Deleting by key (FwpmFilterDeleteByKey0, FwpmSubLayerDeleteByKey0,
//!   FwpmProviderDeleteByKey0): `FWP_E_NOT_FOUND`-family errors for a key
//!   that does not exist; "WFP Error Codes": `FWP_E_IN_USE`, "The object is
//!   referenced by other objects so cannot be deleted" (a sublayer that
//!   still holds filters, a provider that still owns a sublayer).

use std::collections::BTreeMap;

use wfp_ffi::{
    FWP_ACTION_BLOCK, FWP_ACTION_CALLOUT_INSPECTION, FWP_ACTION_FLAG_CALLOUT, FWP_ACTION_TYPE,
    FWPM_FILTER_FLAG_BOOTTIME, FWPM_FILTER_FLAG_CLEAR_ACTION_RIGHT, FWPM_FILTER_FLAG_PERSISTENT,
    FWPM_PROVIDER_FLAG_PERSISTENT, FWPM_SERVICE_RUNNING, FWPM_SERVICE_STATE, FWPM_SERVICE_STOPPED,
    FWPM_SUBLAYER_FLAG_PERSISTENT, FWPS_CLASSIFY_OUT0, FWPS_RIGHT_ACTION_WRITE, NTSTATUS, STATUS_SUCCESS,
};

use crate::arbitration::{LayerArbiter, Outcome};
use crate::kernel::Routine;
use crate::layer_data::Runtime;
use crate::readings::{HardBlock, Readings};
use arbiter_callout::filters::FilterLayer;

/// `STATUS_DEVICE_BUSY`.
pub const STATUS_DEVICE_BUSY: NTSTATUS = 0x8000_0011_u32 as i32;
/// `FWP_E_CALLOUT_NOT_FOUND` as an NTSTATUS (`STATUS_FWP_CALLOUT_NOT_FOUND`).
pub const STATUS_FWP_CALLOUT_NOT_FOUND: NTSTATUS = 0xC022_0001_u32 as i32;
/// The BFE is not running (`EPT_S_NOT_REGISTERED`, what FwpmEngineOpen0 returns then).
pub const STATUS_BFE_NOT_RUNNING: NTSTATUS = 0xC002_0044_u32 as i32;
/// `STATUS_FWP_ALREADY_EXISTS`.
pub const STATUS_FWP_ALREADY_EXISTS: NTSTATUS = 0xC022_0009_u32 as i32;
/// `STATUS_FWP_NOT_FOUND`.
pub const STATUS_FWP_NOT_FOUND: NTSTATUS = 0xC022_0008_u32 as i32;
/// `STATUS_FWP_IN_USE` (`FWP_E_IN_USE` as an NTSTATUS).
pub const STATUS_FWP_IN_USE: NTSTATUS = 0xC022_000A_u32 as i32;
/// `STATUS_FWP_FILTER_NOT_FOUND`.
pub const STATUS_FWP_FILTER_NOT_FOUND: NTSTATUS = 0xC022_0003_u32 as i32;
/// `STATUS_FWP_PROVIDER_NOT_FOUND`.
pub const STATUS_FWP_PROVIDER_NOT_FOUND: NTSTATUS = 0xC022_0005_u32 as i32;
/// `STATUS_FWP_SUBLAYER_NOT_FOUND`.
pub const STATUS_FWP_SUBLAYER_NOT_FOUND: NTSTATUS = 0xC022_0007_u32 as i32;
/// `STATUS_INVALID_HANDLE`.
pub const STATUS_INVALID_HANDLE: NTSTATUS = 0xC000_0008_u32 as i32;

/// An object key (a GUID as 128 bits).
pub type Key = u128;

/// A condition of a plain filter (`FWPM_FILTER_CONDITION0`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Condition {
    /// `FWPM_CONDITION_FLAGS`, `FWP_MATCH_FLAGS_ALL_SET`.
    FlagsAllSet(u32),
    /// `FWPM_CONDITION_IP_PROTOCOL`, `FWP_MATCH_EQUAL`.
    Protocol(u8),
    /// `FWPM_CONDITION_IP_REMOTE_PORT`, `FWP_MATCH_EQUAL`.
    RemotePort(u16),
}

/// The incoming values a [`Condition`] is matched against.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Values {
    /// `FWPS_FIELD_*_FLAGS` (`FWP_CONDITION_FLAG_*`).
    pub flags: u32,
    /// IP protocol.
    pub protocol: u8,
    /// Remote port.
    pub remote_port: u16,
}

impl Condition {
    /// Does `v` match?
    pub const fn matches(self, v: &Values) -> bool {
        match self {
            Self::FlagsAllSet(f) => v.flags & f == f,
            Self::Protocol(p) => v.protocol == p,
            Self::RemotePort(p) => v.remote_port == p,
        }
    }
}

/// A filter as added.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Filter {
    /// `filterKey` (0: the engine picks one).
    pub key: Key,
    /// Layer.
    pub layer: FilterLayer,
    /// Sublayer key.
    pub sublayer: Key,
    /// Weight within the sublayer (higher first).
    pub weight: u64,
    /// `FWPM_ACTION0.type`.
    pub action_type: FWP_ACTION_TYPE,
    /// Callout key (for callout actions).
    pub callout: Key,
    /// `FWPM_FILTER_FLAG_*`.
    pub flags: u32,
    /// Conditions, all of which must match (none: every flow).
    pub conditions: [Option<Condition>; 2],
}

impl Filter {
    fn applies(&self, v: &Values) -> bool {
        self.conditions.iter().flatten().all(|c| c.matches(v))
    }
}

/// A classifyFn as the model calls it: the runtime (the Fwps calls go
/// there), the filter id, and the indication's raw arguments.
pub type ClassifyFn = Box<dyn FnMut(&mut Runtime, u64, &mut FWPS_CLASSIFY_OUT0)>;

#[derive(Clone, Copy)]
enum Op {
    Provider(Key, u32),
    Sublayer(Key, u16, u32),
    Callout(Key, FilterLayer),
    Filter(u64, Filter),
    DeleteFilter(Key),
    DeleteSublayer(Key),
    DeleteProvider(Key),
}

/// The simulated filter engine (management and classification).
pub struct Wfp {
    /// The runtime: handles, layer data, kernel.
    pub rt: Runtime,
    bfe: FWPM_SERVICE_STATE,
    subscribers: BTreeMap<u64, Box<dyn FnMut(FWPM_SERVICE_STATE)>>,
    sessions: BTreeMap<u64, Option<Vec<Op>>>,
    /// Dynamic sessions and the objects each has committed.
    dynamic: BTreeMap<u64, Vec<Op>>,
    next_id: u64,
    /// Providers and their `FWPM_PROVIDER_FLAG_*`.
    providers: BTreeMap<Key, u32>,
    /// Sublayers: weight and `FWPM_SUBLAYER_FLAG_*`.
    sublayers: BTreeMap<Key, (u16, u32)>,
    /// The BFE has started since the last boot (persistent filters in
    /// force, boot-time ones not).
    started: bool,
    callouts: BTreeMap<Key, FilterLayer>,
    filters: BTreeMap<u64, Filter>,
    /// Registered callouts: key -> (run-time id, classifyFn).
    registered: BTreeMap<Key, (u32, Option<ClassifyFn>)>,
    /// Flow contexts associated per run-time callout id (STATUS_DEVICE_BUSY).
    pub flow_contexts: BTreeMap<u32, u32>,
    /// Live flows reauthorized by filter changes, counted.
    pub reauthorizations: u64,
    /// Live flows (for reauthorization counting).
    pub live_flows: u64,
}

impl core::fmt::Debug for Wfp {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("Wfp").field("bfe", &self.bfe).field("filters", &self.filters).finish_non_exhaustive()
    }
}

impl Wfp {
    /// A machine with the BFE running, under `readings`.
    pub fn new(readings: Readings) -> Self {
        Self {
            rt: Runtime::new(readings),
            bfe: FWPM_SERVICE_RUNNING,
            subscribers: BTreeMap::new(),
            sessions: BTreeMap::new(),
            dynamic: BTreeMap::new(),
            next_id: 0x100,
            providers: BTreeMap::new(),
            sublayers: BTreeMap::new(),
            started: true,
            callouts: BTreeMap::new(),
            filters: BTreeMap::new(),
            registered: BTreeMap::new(),
            flow_contexts: BTreeMap::new(),
            reauthorizations: 0,
            live_flows: 0,
        }
    }

    const fn id(&mut self) -> u64 {
        self.next_id += 1;
        self.next_id
    }

    // ---- BFE -------------------------------------------------------------------

    /// FwpmBfeStateGet0.
    pub fn bfe_state(&mut self) -> FWPM_SERVICE_STATE {
        self.rt.kernel.call(Routine::FwpmBfeStateGet);
        self.bfe
    }

    /// The BFE changes state (the service starts or stops): every subscriber
    /// is called. Stopping it closes every engine session and drops every
    /// management object that is not persistent or boot-time (they live in
    /// the BFE; a driver adds them again). Starting it puts the persistent
    /// filters in force and the boot-time ones out of it.
    pub fn set_bfe_state(&mut self, state: FWPM_SERVICE_STATE) {
        self.bfe = state;
        if state == FWPM_SERVICE_STOPPED {
            self.drop_volatile();
        }
        if state == FWPM_SERVICE_RUNNING {
            self.started = true;
        }
        for cb in self.subscribers.values_mut() {
            cb(state);
        }
    }

    fn drop_volatile(&mut self) {
        self.sessions.clear();
        self.dynamic.clear();
        self.providers.retain(|_, flags| *flags & FWPM_PROVIDER_FLAG_PERSISTENT != 0);
        self.sublayers.retain(|_, (_, flags)| *flags & FWPM_SUBLAYER_FLAG_PERSISTENT != 0);
        self.callouts.clear();
        self.filters.retain(|_, f| f.flags & (FWPM_FILTER_FLAG_PERSISTENT | FWPM_FILTER_FLAG_BOOTTIME) != 0);
    }

    /// The machine restarts: every driver is gone (its callouts and BFE
    /// subscriptions), the BFE is stopped until [`Self::set_bfe_state`]
    /// starts it, and only persistent and boot-time objects remain; the
    /// boot-time filters are in force.
    pub fn reboot(&mut self) {
        self.bfe = FWPM_SERVICE_STOPPED;
        self.drop_volatile();
        self.subscribers.clear();
        self.registered.clear();
        self.flow_contexts.clear();
        self.started = false;
    }

    /// Is `f` enforced now?
    const fn in_force(&self, f: &Filter) -> bool {
        if f.flags & FWPM_FILTER_FLAG_BOOTTIME != 0 {
            !self.started
        } else if f.flags & FWPM_FILTER_FLAG_PERSISTENT != 0 {
            self.started
        } else {
            true
        }
    }

    /// FwpmBfeStateSubscribeChanges0: returns the subscription handle.
    pub fn bfe_subscribe(&mut self, callback: Box<dyn FnMut(FWPM_SERVICE_STATE)>) -> u64 {
        self.rt.kernel.call(Routine::FwpmManagement);
        let id = self.id();
        self.subscribers.insert(id, callback);
        id
    }

    /// FwpmBfeStateUnsubscribeChanges0.
    pub fn bfe_unsubscribe(&mut self, subscription: u64) -> NTSTATUS {
        self.rt.kernel.call(Routine::FwpmManagement);
        if self.subscribers.remove(&subscription).is_some() { STATUS_SUCCESS } else { STATUS_INVALID_HANDLE }
    }

    // ---- engine sessions and transactions ----------------------------------------

    /// FwpmEngineOpen0.
    pub fn engine_open(&mut self) -> Result<u64, NTSTATUS> {
        self.rt.kernel.call(Routine::FwpmManagement);
        if self.bfe != FWPM_SERVICE_RUNNING {
            return Err(STATUS_BFE_NOT_RUNNING);
        }
        let id = self.id();
        self.sessions.insert(id, None);
        Ok(id)
    }

    /// FwpmEngineOpen0 with `FWPM_SESSION_FLAG_DYNAMIC` in the session's
    /// flags. FWPM_SESSION0: "When this flag is set, any objects added during
    /// the session are automatically deleted when the session ends"
    /// ([`Self::engine_close`] deletes them).
    pub fn engine_open_dynamic(&mut self) -> Result<u64, NTSTATUS> {
        let id = self.engine_open()?;
        self.dynamic.insert(id, Vec::new());
        Ok(id)
    }

    /// FwpmEngineClose0. Panics on a handle that is not open (a double close).
    /// A transaction in progress is aborted ("Object Management": "If a
    /// transaction is in progress, when a session terminates, it is
    /// automatically aborted"); a dynamic session's objects are deleted.
    pub fn engine_close(&mut self, engine: u64) -> NTSTATUS {
        self.rt.kernel.call(Routine::FwpmManagement);
        assert!(
            self.sessions.remove(&engine).is_some(),
            "FwpmEngineClose0 on engine handle {engine:#x}, which is not open"
        );
        for op in self.dynamic.remove(&engine).unwrap_or_default() {
            match op {
                Op::Provider(k, _) => {
                    self.providers.remove(&k);
                }
                Op::Sublayer(k, _, _) => {
                    self.sublayers.remove(&k);
                }
                Op::Callout(k, _) => {
                    self.callouts.remove(&k);
                }
                Op::Filter(id, _) => {
                    self.filters.remove(&id);
                }
                Op::DeleteFilter(_) | Op::DeleteSublayer(_) | Op::DeleteProvider(_) => {}
            }
        }
        STATUS_SUCCESS
    }

    /// Open engine sessions.
    pub fn open_engines(&self) -> usize {
        self.sessions.len()
    }

    /// FwpmTransactionBegin0.
    pub fn transaction_begin(&mut self, engine: u64) -> NTSTATUS {
        self.rt.kernel.call(Routine::FwpmManagement);
        match self.sessions.get_mut(&engine) {
            Some(t @ None) => {
                *t = Some(Vec::new());
                STATUS_SUCCESS
            }
            Some(Some(_)) => STATUS_FWP_ALREADY_EXISTS,
            None => STATUS_INVALID_HANDLE,
        }
    }

    /// FwpmTransactionCommit0: the transaction's objects come into being.
    /// A commit that adds filters reauthorizes every live flow.
    pub fn transaction_commit(&mut self, engine: u64) -> NTSTATUS {
        self.rt.kernel.call(Routine::FwpmManagement);
        let Some(Some(ops)) = self.sessions.get_mut(&engine).map(Option::take) else { return STATUS_INVALID_HANDLE };
        let mut added_filters = false;
        for op in ops {
            match op {
                Op::Provider(k, flags) => {
                    self.providers.insert(k, flags);
                }
                Op::Sublayer(k, w, flags) => {
                    self.sublayers.insert(k, (w, flags));
                }
                Op::Callout(k, l) => {
                    self.callouts.insert(k, l);
                }
                Op::Filter(id, f) => {
                    self.filters.insert(id, f);
                    added_filters = true;
                }
                Op::DeleteFilter(k) => self.filters.retain(|id, f| key_of(*id, f) != k),
                Op::DeleteSublayer(k) => {
                    self.sublayers.remove(&k);
                }
                Op::DeleteProvider(k) => {
                    self.providers.remove(&k);
                }
            }
            if let Some(objects) = self.dynamic.get_mut(&engine) {
                objects.push(op);
            }
        }
        if added_filters {
            self.reauthorizations += self.live_flows;
        }
        STATUS_SUCCESS
    }

    /// FwpmTransactionAbort0: drops the transaction's objects.
    pub fn transaction_abort(&mut self, engine: u64) -> NTSTATUS {
        self.rt.kernel.call(Routine::FwpmManagement);
        match self.sessions.get_mut(&engine) {
            Some(t @ Some(_)) => {
                *t = None;
                STATUS_SUCCESS
            }
            _ => STATUS_INVALID_HANDLE,
        }
    }

    fn stage(&mut self, engine: u64, op: Op) -> NTSTATUS {
        match self.sessions.get_mut(&engine) {
            Some(Some(ops)) => {
                ops.push(op);
                STATUS_SUCCESS
            }
            // Outside a transaction the object is added at once.
            Some(None) => {
                let _ = self.transaction_begin(engine);
                if let Some(Some(ops)) = self.sessions.get_mut(&engine) {
                    ops.push(op);
                }
                self.transaction_commit(engine)
            }
            None => STATUS_INVALID_HANDLE,
        }
    }

    /// FwpmProviderAdd0.
    pub fn provider_add(&mut self, engine: u64, key: Key) -> NTSTATUS {
        self.provider_add_with(engine, key, 0)
    }

    /// FwpmProviderAdd0 with `FWPM_PROVIDER0.flags`.
    pub fn provider_add_with(&mut self, engine: u64, key: Key, flags: u32) -> NTSTATUS {
        self.rt.kernel.call(Routine::FwpmManagement);
        if self.exists(engine, Kind::Provider, key) {
            return STATUS_FWP_ALREADY_EXISTS;
        }
        self.stage(engine, Op::Provider(key, flags))
    }

    /// FwpmSubLayerAdd0.
    pub fn sublayer_add(&mut self, engine: u64, key: Key, weight: u16) -> NTSTATUS {
        self.sublayer_add_with(engine, key, weight, 0)
    }

    /// FwpmSubLayerAdd0 with `FWPM_SUBLAYER0.flags`.
    pub fn sublayer_add_with(&mut self, engine: u64, key: Key, weight: u16, flags: u32) -> NTSTATUS {
        self.rt.kernel.call(Routine::FwpmManagement);
        if self.exists(engine, Kind::Sublayer, key) {
            return STATUS_FWP_ALREADY_EXISTS;
        }
        self.stage(engine, Op::Sublayer(key, weight, flags))
    }

    /// Whether an object exists as `engine`'s open transaction sees it: the
    /// committed objects with the transaction's adds and deletes applied.
    fn exists(&self, engine: u64, kind: Kind, key: Key) -> bool {
        let mut there = match kind {
            Kind::Provider => self.providers.contains_key(&key),
            Kind::Sublayer => self.sublayers.contains_key(&key),
            Kind::Filter => self.filters.iter().any(|(id, f)| key_of(*id, f) == key),
        };
        if let Some(Some(ops)) = self.sessions.get(&engine) {
            for op in ops {
                match (*op, kind) {
                    (Op::Provider(k, _), Kind::Provider) | (Op::Sublayer(k, _, _), Kind::Sublayer) if k == key => {
                        there = true;
                    }
                    (Op::Filter(id, f), Kind::Filter) if key_of(id, &f) == key => there = true,
                    (Op::DeleteProvider(k), Kind::Provider)
                    | (Op::DeleteSublayer(k), Kind::Sublayer)
                    | (Op::DeleteFilter(k), Kind::Filter)
                        if k == key =>
                    {
                        there = false;
                    }
                    _ => {}
                }
            }
        }
        there
    }

    /// Filters (committed, or added by `engine`'s transaction and not
    /// deleted by it) in sublayer `key`.
    fn sublayer_in_use(&self, engine: u64, key: Key) -> bool {
        let mut keys: Vec<Key> =
            self.filters.iter().filter(|(_, f)| f.sublayer == key).map(|(id, f)| key_of(*id, f)).collect();
        if let Some(Some(ops)) = self.sessions.get(&engine) {
            for op in ops {
                match *op {
                    Op::Filter(id, f) if f.sublayer == key => keys.push(key_of(id, &f)),
                    Op::DeleteFilter(k) => keys.retain(|x| *x != k),
                    _ => {}
                }
            }
        }
        !keys.is_empty()
    }

    /// FwpmFilterDeleteByKey0 (staged like an add inside a transaction).
    pub fn filter_delete_by_key(&mut self, engine: u64, key: Key) -> NTSTATUS {
        self.rt.kernel.call(Routine::FwpmManagement);
        if !self.sessions.contains_key(&engine) {
            return STATUS_INVALID_HANDLE;
        }
        if !self.exists(engine, Kind::Filter, key) {
            return STATUS_FWP_FILTER_NOT_FOUND;
        }
        self.stage(engine, Op::DeleteFilter(key))
    }

    /// FwpmSubLayerDeleteByKey0: `FWP_E_IN_USE` while filters remain in it.
    pub fn sublayer_delete_by_key(&mut self, engine: u64, key: Key) -> NTSTATUS {
        self.rt.kernel.call(Routine::FwpmManagement);
        if !self.sessions.contains_key(&engine) {
            return STATUS_INVALID_HANDLE;
        }
        if !self.exists(engine, Kind::Sublayer, key) {
            return STATUS_FWP_SUBLAYER_NOT_FOUND;
        }
        if self.sublayer_in_use(engine, key) {
            return STATUS_FWP_IN_USE;
        }
        self.stage(engine, Op::DeleteSublayer(key))
    }

    /// FwpmProviderDeleteByKey0.
    pub fn provider_delete_by_key(&mut self, engine: u64, key: Key) -> NTSTATUS {
        self.rt.kernel.call(Routine::FwpmManagement);
        if !self.sessions.contains_key(&engine) {
            return STATUS_INVALID_HANDLE;
        }
        if !self.exists(engine, Kind::Provider, key) {
            return STATUS_FWP_PROVIDER_NOT_FOUND;
        }
        self.stage(engine, Op::DeleteProvider(key))
    }

    /// Committed providers and their flags.
    pub const fn providers(&self) -> &BTreeMap<Key, u32> {
        &self.providers
    }

    /// Committed sublayers: weight and flags.
    pub const fn sublayers(&self) -> &BTreeMap<Key, (u16, u32)> {
        &self.sublayers
    }

    /// FwpmCalloutAdd0.
    pub fn callout_add(&mut self, engine: u64, key: Key, layer: FilterLayer) -> NTSTATUS {
        self.rt.kernel.call(Routine::FwpmManagement);
        if self.callouts.contains_key(&key) {
            return STATUS_FWP_ALREADY_EXISTS;
        }
        self.stage(engine, Op::Callout(key, layer))
    }

    /// FwpmFilterAdd0: returns the run-time filter id (assigned at once,
    /// usable after commit). A non-zero key already in use is
    /// `FWP_E_ALREADY_EXISTS`; a sublayer that does not exist (committed or
    /// added by the transaction) `FWP_E_SUBLAYER_NOT_FOUND`; FWPM_FILTER0 refuses BOOTTIME with PERSISTENT
    /// ("cannot be set together"), which the model fails loudly.
    pub fn filter_add(&mut self, engine: u64, filter: Filter) -> Result<u64, NTSTATUS> {
        self.rt.kernel.call(Routine::FwpmManagement);
        assert!(
            filter.flags & FWPM_FILTER_FLAG_BOOTTIME == 0 || filter.flags & FWPM_FILTER_FLAG_PERSISTENT == 0,
            "FWPM_FILTER_FLAG_BOOTTIME together with FWPM_FILTER_FLAG_PERSISTENT"
        );
        if filter.key != 0 && self.exists(engine, Kind::Filter, filter.key) {
            return Err(STATUS_FWP_ALREADY_EXISTS);
        }
        // "WFP Error Codes": FWP_E_SUBLAYER_NOT_FOUND, "The sublayer does not
        // exist". A zero key is FWPM_FILTER0's "not assigned": the default
        // sublayer, which always exists.
        if filter.sublayer != 0 && !self.exists(engine, Kind::Sublayer, filter.sublayer) {
            return Err(STATUS_FWP_SUBLAYER_NOT_FOUND);
        }
        let id = self.id();
        let s = self.stage(engine, Op::Filter(id, filter));
        if s == STATUS_SUCCESS { Ok(id) } else { Err(s) }
    }

    /// FwpmFilterDeleteById0.
    pub fn filter_delete(&mut self, engine: u64, id: u64) -> NTSTATUS {
        self.rt.kernel.call(Routine::FwpmManagement);
        if !self.sessions.contains_key(&engine) {
            return STATUS_INVALID_HANDLE;
        }
        // "WFP Error Codes": FWP_E_FILTER_NOT_FOUND, "The filter does not exist".
        if self.filters.remove(&id).is_some() { STATUS_SUCCESS } else { STATUS_FWP_FILTER_NOT_FOUND }
    }

    /// The filters in force.
    pub const fn filters(&self) -> &BTreeMap<u64, Filter> {
        &self.filters
    }

    // ---- callout registration ---------------------------------------------------------

    /// FwpsCalloutRegister: returns the run-time callout id.
    pub fn callout_register(&mut self, key: Key, classify: ClassifyFn) -> Result<u32, NTSTATUS> {
        self.rt.kernel.call(Routine::FwpsCalloutRegister);
        if self.registered.contains_key(&key) {
            return Err(STATUS_FWP_ALREADY_EXISTS);
        }
        let id = u32::try_from(self.id()).unwrap_or(u32::MAX);
        self.registered.insert(key, (id, Some(classify)));
        Ok(id)
    }

    /// FwpsCalloutUnregisterById0.
    pub fn callout_unregister_by_id(&mut self, id: u32) -> NTSTATUS {
        self.rt.kernel.call(Routine::FwpsCalloutUnregister);
        if self.flow_contexts.get(&id).copied().unwrap_or(0) > 0 {
            return STATUS_DEVICE_BUSY;
        }
        let before = self.registered.len();
        self.registered.retain(|_, (i, _)| *i != id);
        if self.registered.len() < before { STATUS_SUCCESS } else { STATUS_FWP_CALLOUT_NOT_FOUND }
    }

    // ---- classification ---------------------------------------------------------------

    /// Classifies at `layer`: sublayers by weight, filters by weight within,
    /// each callout filter's classifyFn called with the rights arbitration
    /// leaves it, its classifyOut resolved under its action type. A filter
    /// whose callout is not registered acts as BLOCK (TERMINATING, UNKNOWN)
    /// or is skipped (INSPECTION). Returns the layer's outcome.
    pub fn classify(&mut self, layer: FilterLayer) -> Outcome {
        self.classify_values(layer, &Values::default())
    }

    /// [`Self::classify`] for a flow with these incoming values: only the
    /// filters in force whose conditions all match take part.
    pub fn classify_values(&mut self, layer: FilterLayer, values: &Values) -> Outcome {
        let readings = self.rt.readings;
        let mut order: Vec<(u16, u64, u64, Filter)> = self
            .filters
            .iter()
            .filter(|(_, f)| f.layer == layer && self.in_force(f) && f.applies(values))
            .map(|(id, f)| (self.sublayers.get(&f.sublayer).map_or(0, |s| s.0), f.weight, *id, *f))
            .collect();
        order.sort_by_key(|a| std::cmp::Reverse((a.0, f_key(&a.3), a.1)));
        let mut arb = LayerArbiter::new();
        let mut current_sublayer: Option<Key> = None;
        let mut sublayer_done = false;
        for (_, _, id, f) in order {
            if current_sublayer != Some(f.sublayer) {
                current_sublayer = Some(f.sublayer);
                sublayer_done = false;
                arb.next_sublayer();
            }
            if sublayer_done || (arb.hard_blocked() && readings.hard_block == HardBlock::Stops) {
                continue;
            }
            let mut out = FWPS_CLASSIFY_OUT0 {
                actionType: readings.entry_action_type(),
                rights: arb.rights(),
                ..Default::default()
            };
            if f.action_type & FWP_ACTION_FLAG_CALLOUT != 0 {
                match self.registered.get_mut(&f.callout).and_then(|(_, c)| c.as_mut()) {
                    Some(classify) => classify(&mut self.rt, id, &mut out),
                    None if f.action_type == FWP_ACTION_CALLOUT_INSPECTION => continue,
                    None => {
                        out.actionType = FWP_ACTION_BLOCK;
                        sublayer_done = arb.take(FWP_ACTION_BLOCK, &out, &readings);
                        continue;
                    }
                }
            }
            if f.flags & FWPM_FILTER_FLAG_CLEAR_ACTION_RIGHT != 0 {
                out.rights &= !FWPS_RIGHT_ACTION_WRITE;
            }
            sublayer_done = arb.take(f.action_type, &out, &readings);
        }
        arb.result()
    }
}

#[derive(Clone, Copy)]
enum Kind {
    Provider,
    Sublayer,
    Filter,
}

/// A filter's key: its own, or (0: the engine picked one) its run-time id.
const fn key_of(id: u64, f: &Filter) -> Key {
    if f.key == 0 { id as Key } else { f.key }
}

/// Sublayer identity as a sort key (after its weight).
const fn f_key(f: &Filter) -> Key {
    f.sublayer
}
