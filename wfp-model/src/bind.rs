//! ALE_BIND_REDIRECT_V4/V6: the bind request, its modification history,
//! and the filters of one bind classification in arbitration order.
//!
//! Sources (learn.microsoft.com, fwpsk.h pages, and the seed "Using Bind or
//! Connect Redirection"):
//!
//! - The seed: bind redirection changes "the local address and port of a
//!   socket", so every connection on that socket uses the new local
//!   address; connect redirection cannot do this.
//! - FWPS_BIND_REQUEST0: "Only the localAddressAndPort and
//!   portReservationToken members can be modified"; `previousVersion` is
//!   "read-only" and records "the modification history of the bind
//!   request"; `modifierFilterId` is the FilterId of the filter whose
//!   classifyFn made that version. Writing `previousVersion` or
//!   `modifierFilterId` panics here.
//! - FwpsAcquireWritableLayerDataPointer0, Remarks: it sets
//!   `classifyOut->actionType = FWP_ACTION_BLOCK` and clears
//!   `FWPS_RIGHT_ACTION_WRITE`; every acquire needs a matching
//!   FwpsApplyModifiedLayerData0 "even if the callout driver did not modify
//!   the data". An acquire without apply, an apply without acquire, or a
//!   handle not released when the classification ends panics.
//! - Mullvad's driver notes that the bind-redirect layer is always called at
//!   PASSIVE_LEVEL (`mullvad/win-split-tunnel` @0a0eb97,
//!   `src/firewall/callouts.cpp:318-330`); the model classifies there.
//! - FWPM_FILTER0 `FWPM_FILTER_FLAG_CLEAR_ACTION_RIGHT`: the filter's
//!   permit or block leaves without the write right (hard), so lower
//!   filters cannot override it.
//!
//! Ambiguous: how far `FWPM_FILTER_FLAG_CLEAR_ACTION_RIGHT` reaches. The
//! FWPM_FILTER0 page says only "Clear filter action right"; read with Filter
//! Arbitration, a decision without the write right is hard (no lower
//! sublayer may override it, and none gets the right). Mullvad's driver
//! calls the permit its bind filter (which has the flag) returns a "soft
//! permit" (`src/firewall/callouts.cpp` @0a0eb97, the `RewriteBind` path),
//! reading the flag as reaching only lower filters of the same sublayer. Both
//! readings are a switch, [`ClearRight`]: under [`ClearRight::Hardens`] an
//! inspection callout in a lower sublayer never gets the write right after
//! such a permit, so it cannot acquire the bind request to see the history.
//!
//! Silent: whether the history starts with the application's own request
//! (as an entry with `modifierFilterId` 0) or lists only the modifications.
//! The page says the list is "preinitialized ... with the index set to the
//! record for the current FWPS_BIND_REQUEST0 data". Both readings are a
//! switch, [`BindHistory`]; tests run both.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::ptr::NonNull;

use arbiter_callout::bind::FwpsBind;
use arbiter_callout::sockaddr::{from_storage, to_storage};
use wfp_ffi::{
    FWP_ACTION_BLOCK, FWP_ACTION_CALLOUT_INSPECTION, FWP_ACTION_FLAG_CALLOUT, FWP_ACTION_PERMIT,
    FWPM_FILTER_FLAG_CLEAR_ACTION_RIGHT, FWPS_BIND_REQUEST0, FWPS_CLASSIFY_OUT0, FWPS_RIGHT_ACTION_WRITE, NTSTATUS,
};

use crate::arbitration::{LayerArbiter, Outcome};
use crate::kernel::{Irql, Kernel, Routine};
use crate::layer_data::STATUS_INVALID_PARAMETER;
use crate::readings::Readings;

/// Does the history start with the application's own request?
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum BindHistory {
    /// The oldest entry is the request as the application made it
    /// (`modifierFilterId` 0), then one entry per modification.
    WithRequest,
    /// Only modifications are listed, each with the address its filter set.
    ModifiedOnly,
}

impl BindHistory {
    /// Both readings.
    pub const ALL: [Self; 2] = [Self::WithRequest, Self::ModifiedOnly];
}

/// How far `FWPM_FILTER_FLAG_CLEAR_ACTION_RIGHT` reaches.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ClearRight {
    /// The filter's permit or block is hard for the whole layer.
    Hardens,
    /// Only lower filters of the same sublayer lose the right (which a permit
    /// or block skips anyway): the decision stays as the callout wrote it.
    SublayerOnly,
}

impl ClearRight {
    /// Both readings.
    pub const ALL: [Self; 2] = [Self::Hardens, Self::SublayerOnly];
}

/// One modification of a bind request.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct BindVersion {
    /// `modifierFilterId`.
    pub filter: u64,
    /// The local address that filter set.
    pub local: SocketAddr,
}

/// The layer data of one bind.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BindData {
    /// The process binding.
    pub pid: u64,
    /// Its app id.
    pub app: String,
    /// IP protocol.
    pub protocol: u8,
    /// What the application asked for.
    pub requested: SocketAddr,
    /// What is in force now.
    pub local: SocketAddr,
    /// `portReservationToken` in force.
    pub token: u64,
    /// Modifications, newest first.
    pub versions: Vec<BindVersion>,
}

impl BindData {
    /// A fresh bind of `requested`.
    pub fn new(pid: u64, app: &str, protocol: u8, requested: SocketAddr) -> Self {
        Self { pid, app: app.to_owned(), protocol, requested, local: requested, token: 0, versions: Vec::new() }
    }
}

struct Handle {
    classify: u64,
    released: bool,
    writable: Option<Box<FWPS_BIND_REQUEST0>>,
    /// Backing versions the writable copy links to (kept for their addresses).
    chain: Vec<Box<FWPS_BIND_REQUEST0>>,
    /// What the writable copy's read-only members were when handed out.
    read_only: (usize, u64),
    filter: u64,
}

/// The runtime of the bind layer: classify handles and the writable data.
pub struct BindRuntime {
    /// The thread (bind classifies at PASSIVE_LEVEL).
    pub kernel: Kernel,
    /// The history reading in force.
    pub history: BindHistory,
    /// The CLEAR_ACTION_RIGHT reading in force.
    pub clear_right: ClearRight,
    data: BTreeMap<u64, BindData>,
    handles: BTreeMap<u64, Handle>,
    next: u64,
}

impl core::fmt::Debug for BindRuntime {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("BindRuntime").field("history", &self.history).finish_non_exhaustive()
    }
}

impl BindRuntime {
    /// An idle runtime under `history` and `clear_right`.
    pub fn new(history: BindHistory, clear_right: ClearRight) -> Self {
        Self {
            kernel: Kernel::new(),
            history,
            clear_right,
            data: BTreeMap::new(),
            handles: BTreeMap::new(),
            next: 0x9000,
        }
    }

    /// The data of classification `id` as it stands.
    pub fn data(&self, id: u64) -> Option<&BindData> {
        self.data.get(&id)
    }

    fn begin(&mut self, data: BindData) -> u64 {
        self.next = self.next.wrapping_add(1);
        self.data.insert(self.next, data);
        self.next
    }

    fn end(&mut self, id: u64) -> BindData {
        for (h, s) in &self.handles {
            if s.classify != id {
                continue;
            }
            assert!(
                s.writable.is_none(),
                "bind classify {id}: writable data acquired on handle {h:#x} and never applied"
            );
            assert!(s.released, "bind classify {id}: classify handle {h:#x} never released");
        }
        self.handles.retain(|_, s| s.classify != id);
        self.data.remove(&id).unwrap_or_else(|| panic!("bind classify {id} unknown"))
    }

    fn build_chain(&self, d: &BindData) -> (Vec<Box<FWPS_BIND_REQUEST0>>, Box<FWPS_BIND_REQUEST0>) {
        let mut entries: Vec<(u64, SocketAddr)> = d.versions.iter().map(|v| (v.filter, v.local)).collect();
        if self.history == BindHistory::WithRequest {
            entries.push((0, d.requested));
        }
        let mut boxes = Vec::with_capacity(entries.len());
        let mut prev: *mut FWPS_BIND_REQUEST0 = std::ptr::null_mut();
        for (filter, local) in entries.into_iter().rev() {
            let mut b = Box::new(request(local, 0));
            b.modifierFilterId = filter;
            b.previousVersion = prev;
            prev = &raw mut *b;
            boxes.push(b);
        }
        let mut top = Box::new(request(d.local, d.token));
        top.previousVersion = prev;
        (boxes, top)
    }
}

fn request(local: SocketAddr, token: u64) -> FWPS_BIND_REQUEST0 {
    FWPS_BIND_REQUEST0 {
        localAddressAndPort: to_storage(&local),
        portReservationToken: token,
        previousVersion: std::ptr::null_mut(),
        modifierFilterId: 0,
    }
}

impl FwpsBind for BindRuntime {
    fn acquire_bind_classify_handle(&mut self, classify_context: *const core::ffi::c_void) -> Result<u64, NTSTATUS> {
        self.kernel.call(Routine::FwpsAcquireClassifyHandle);
        let classify = classify_context.addr() as u64;
        if !self.data.contains_key(&classify) {
            return Err(STATUS_INVALID_PARAMETER);
        }
        self.next = self.next.wrapping_add(1);
        let h = Handle { classify, released: false, writable: None, chain: Vec::new(), read_only: (0, 0), filter: 0 };
        self.handles.insert(self.next, h);
        Ok(self.next)
    }

    fn acquire_writable_bind_request(
        &mut self,
        classify_handle: u64,
        filter_id: u64,
        classify_out: &mut FWPS_CLASSIFY_OUT0,
    ) -> Result<NonNull<FWPS_BIND_REQUEST0>, NTSTATUS> {
        self.kernel.call(Routine::FwpsAcquireWritableLayerDataPointer);
        let classify = match self.handles.get(&classify_handle) {
            Some(h) => {
                assert!(!h.released, "writable bind data acquired on a released handle");
                assert!(h.writable.is_none(), "writable bind data acquired twice without an apply");
                h.classify
            }
            None => panic!("FwpsAcquireWritableLayerDataPointer0 on handle {classify_handle:#x}, not acquired"),
        };
        let d = self.data.get(&classify).ok_or(STATUS_INVALID_PARAMETER)?;
        // Remarks: BLOCK and the write right cleared.
        classify_out.actionType = FWP_ACTION_BLOCK;
        classify_out.rights &= !FWPS_RIGHT_ACTION_WRITE;
        let (chain, mut top) = self.build_chain(d);
        let ptr = NonNull::from(&mut *top);
        let read_only = (top.previousVersion.addr(), top.modifierFilterId);
        if let Some(h) = self.handles.get_mut(&classify_handle) {
            h.writable = Some(top);
            h.chain = chain;
            h.read_only = read_only;
            h.filter = filter_id;
        }
        Ok(ptr)
    }

    fn apply_bind_request(&mut self, classify_handle: u64, data: NonNull<FWPS_BIND_REQUEST0>) {
        self.kernel.call(Routine::FwpsApplyModifiedLayerData);
        let h = self
            .handles
            .get_mut(&classify_handle)
            .unwrap_or_else(|| panic!("FwpsApplyModifiedLayerData0 on handle {classify_handle:#x}, not acquired"));
        let Some(top) = h.writable.take() else { panic!("FwpsApplyModifiedLayerData0 without a writable acquire") };
        assert!(std::ptr::eq(data.as_ptr(), &raw const *top), "apply given a pointer that is not the acquired data");
        assert_eq!(
            (top.previousVersion.addr(), top.modifierFilterId),
            h.read_only,
            "previousVersion and modifierFilterId are read-only (FWPS_BIND_REQUEST0)"
        );
        h.chain.clear();
        let (classify, filter) = (h.classify, h.filter);
        let Some(d) = self.data.get_mut(&classify) else { return };
        let local = from_storage(&top.localAddressAndPort).unwrap_or(d.local);
        assert_eq!(local.is_ipv4(), d.local.is_ipv4(), "a bind redirect cannot change the address family");
        if local != d.local || top.portReservationToken != d.token {
            d.versions.insert(0, BindVersion { filter, local });
            d.local = local;
            d.token = top.portReservationToken;
        }
    }

    fn release_bind_classify_handle(&mut self, classify_handle: u64) {
        self.kernel.call(Routine::FwpsReleaseClassifyHandle);
        let h = self
            .handles
            .get_mut(&classify_handle)
            .unwrap_or_else(|| panic!("FwpsReleaseClassifyHandle0 on handle {classify_handle:#x}, not acquired"));
        assert!(!h.released, "FwpsReleaseClassifyHandle0 twice on {classify_handle:#x}");
        assert!(h.writable.is_none(), "classify handle released with writable bind data not applied");
        h.released = true;
    }
}

/// A classifyFn at the bind layer: the runtime, the classification id (its
/// `classifyContext`), the filter id, and classifyOut.
pub type BindClassifyFn<'a> = Box<dyn FnMut(&mut BindRuntime, u64, u64, &mut FWPS_CLASSIFY_OUT0) + 'a>;

/// One filter at ALE_BIND_REDIRECT.
pub struct BindFilter<'a> {
    /// Its run-time id.
    pub id: u64,
    /// Its sublayer's weight (higher first).
    pub sublayer_weight: u32,
    /// Its sublayer (filters of one sublayer are arbitrated together).
    pub sublayer: u64,
    /// Its weight in the sublayer (higher first).
    pub weight: u64,
    /// `FWPM_ACTION0.type`.
    pub action_type: wfp_ffi::FWP_ACTION_TYPE,
    /// `FWPM_FILTER_FLAG_*`.
    pub flags: u32,
    /// Its callout's classifyFn (`None`: a plain filter, or a callout not registered).
    pub classify: Option<BindClassifyFn<'a>>,
}

impl core::fmt::Debug for BindFilter<'_> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("BindFilter").field("id", &self.id).field("weight", &self.weight).finish_non_exhaustive()
    }
}

/// What one bind classification did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Bound {
    /// The data after every filter.
    pub data: BindData,
    /// The layer's result.
    pub outcome: Outcome,
}

/// Classifies one bind through `filters` in arbitration order (sublayers by
/// weight, filters by weight within), as [`crate::Wfp::classify`] does for
/// the other layers.
pub fn classify_bind(
    rt: &mut BindRuntime,
    filters: &mut [BindFilter<'_>],
    data: BindData,
    readings: &Readings,
) -> Bound {
    assert_eq!(rt.kernel.irql(), Irql::Passive, "the bind-redirect layer classifies at PASSIVE_LEVEL");
    let id = rt.begin(data);
    let mut order: Vec<usize> = (0..filters.len()).collect();
    order.sort_by_key(|&i| {
        filters
            .get(i)
            .map(|f| std::cmp::Reverse((f.sublayer_weight, f.sublayer, f.weight)))
            .unwrap_or(std::cmp::Reverse((0, 0, 0)))
    });
    let mut arb = LayerArbiter::new();
    let mut current = None;
    let mut done = false;
    for i in order {
        let Some(f) = filters.get_mut(i) else { continue };
        if current != Some(f.sublayer) {
            current = Some(f.sublayer);
            done = false;
            arb.next_sublayer();
        }
        if done || arb.hard_blocked() {
            continue;
        }
        let mut out =
            FWPS_CLASSIFY_OUT0 { actionType: arb.entry_action(readings), rights: arb.rights(), ..Default::default() };
        if f.action_type & FWP_ACTION_FLAG_CALLOUT != 0 {
            match f.classify.as_mut() {
                Some(classify) => classify(rt, id, f.id, &mut out),
                // FwpsCalloutRegister0 remarks: INSPECTION filters of an
                // unregistered callout are ignored, the others act as BLOCK.
                None if f.action_type == FWP_ACTION_CALLOUT_INSPECTION => continue,
                None => out.actionType = FWP_ACTION_BLOCK,
            }
        } else {
            out.actionType = f.action_type;
        }
        if f.flags & FWPM_FILTER_FLAG_CLEAR_ACTION_RIGHT != 0
            && rt.clear_right == ClearRight::Hardens
            && (out.actionType == FWP_ACTION_PERMIT || out.actionType == FWP_ACTION_BLOCK)
        {
            out.rights &= !FWPS_RIGHT_ACTION_WRITE;
        }
        let action = if f.action_type & FWP_ACTION_FLAG_CALLOUT != 0 { f.action_type } else { out.actionType };
        done = arb.take(action, &out, readings);
    }
    Bound { data: rt.end(id), outcome: arb.result() }
}
