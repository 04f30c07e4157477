//! The classify handle, the writable layer data and pending, as the
//! connect-redirect callout sees them through [`arbiter_callout::Fwps`].
//!
//! Sources (learn.microsoft.com, fwpsk.h pages, and the seed "Using Bind or
//! Connect Redirection"):
//!
//! - FwpsAcquireWritableLayerDataPointer0, Remarks: it "sets the following
//!   members of the FWPS_CLASSIFY_OUT0 structure: classifyOut->actionType =
//!   FWP_ACTION_BLOCK, classifyOut->rights &= ~FWPS_RIGHT_ACTION_WRITE", and
//!   "For every call to this function, the callout driver must make a
//!   matching call to FwpsApplyModifiedLayerData0, even if the callout driver
//!   did not modify the data." Acquiring twice without applying, applying
//!   without acquiring, or ending a classify with data not applied panics.
//! - FwpsAcquireClassifyHandle0 / FwpsReleaseClassifyHandle0: every handle
//!   acquired is released; FwpsPendClassify0 "increments the reference count
//!   of the classify handle"; FwpsCompleteClassify0: the reference "is
//!   automatically decremented", and after it "FwpsReleaseClassifyHandle0
//!   must be called". A handle whose count is not zero when its
//!   classification is over panics (a leak), as does a release too many.
//! - FwpsPendClassify0, `classifyOut`: "Set to the classifyOut parameter of
//!   the callout driver's classifyFn function" (not a copy).
//!   FwpsCompleteClassify0, `classifyOut`: "A pointer to a deep copy of the
//!   FWPS_CLASSIFY_OUT0 structure that was originally passed to the
//!   classifyFn call when the classification was pended."
//! - The seed's asynchronous sequence: acquire the classify handle, pend,
//!   set `actionType = FWP_ACTION_BLOCK` and clear the write right in the
//!   classify's classifyOut; later acquire the writable data, change it,
//!   apply, complete, release. Acquiring the writable data before pending,
//!   or pending without the write right ("The FWPS_RIGHT_ACTION_WRITE flag
//!   should be set whenever a callout pends a classification"), panics.
//!   `FWPS_CLASSIFY_OUT_FLAG_ABSORB` belongs to packet callouts ("Types of
//!   Callouts": it "causes the packet to be silently discarded"); the seed's
//!   pend at a redirect layer does not set it, and the model panics if it is.
//! - FWPS_CONNECT_REQUEST0: `previousVersion` links the versions of the
//!   request, each with the `modifierFilterId` of the filter that made it;
//!   `localRedirectContext` "is allocated by the callout and freed by WFP"
//!   once applied: freeing it after apply is a double free (panics); a
//!   context allocated and neither applied nor freed is a leak (panics).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::ptr::NonNull;

use arbiter_callout::Fwps;
use arbiter_callout::sockaddr::{from_storage, to_storage};
use wfp_ffi::{
    FWP_ACTION_BLOCK, FWPS_CLASSIFY_FLAG_REAUTHORIZE_IF_MODIFIED_BY_OTHERS, FWPS_CLASSIFY_OUT_FLAG_ABSORB,
    FWPS_CLASSIFY_OUT0, FWPS_CONNECT_REQUEST0, FWPS_CONNECTION_REDIRECT_STATE, FWPS_RIGHT_ACTION_WRITE, HANDLE,
    NTSTATUS,
};

use crate::kernel::{Kernel, Routine};
use crate::readings::{Completion, Readings};
use crate::redirect::{RedirectRecord, redirect_state};

/// `STATUS_INVALID_PARAMETER`.
pub const STATUS_INVALID_PARAMETER: NTSTATUS = 0xC000_000D_u32 as i32;
/// `STATUS_FWP_CANNOT_PEND` (FwpsPendClassify0: "The engine does not allow
/// asynchronous classification at the layer from which the call is made").
pub const STATUS_FWP_CANNOT_PEND: NTSTATUS = 0xC022_0043_u32 as i32;
/// `STATUS_NO_MEMORY`.
pub const STATUS_NO_MEMORY: NTSTATUS = 0xC000_0017_u32 as i32;

/// One version of the connect request: who changed it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Version {
    /// `modifierFilterId`.
    pub filter: u64,
    /// `localRedirectHandle` was set.
    pub local_redirect_handle: bool,
}

/// The layer data of one connect-redirect classification.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConnectData {
    /// Current remote address.
    pub remote: SocketAddr,
    /// Local address.
    pub local: SocketAddr,
    /// `localRedirectTargetPID` in force.
    pub target_pid: u32,
    /// `localRedirectHandle` in force (an address), 0 for none.
    pub redirect_handle: usize,
    /// `localRedirectContext` in force (WFP's copy of the bytes).
    pub context: Option<Vec<u8>>,
    /// Older versions, newest first.
    pub versions: Vec<Version>,
    /// The connection's redirect records (oldest first).
    pub records: Vec<RedirectRecord>,
}

impl ConnectData {
    /// Fresh layer data for a connection to `remote` from `local`.
    pub const fn new(remote: SocketAddr, local: SocketAddr, records: Vec<RedirectRecord>) -> Self {
        Self { remote, local, target_pid: 0, redirect_handle: 0, context: None, versions: Vec::new(), records }
    }
}

/// A change a classifyFn applied.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Applied {
    /// The filter that applied it.
    pub filter: u64,
    /// Did anything change?
    pub modified: bool,
    /// `FwpsApplyModifiedLayerData0` flags.
    pub flags: u32,
}

impl Applied {
    /// Applied with REAUTHORIZE_IF_MODIFIED_BY_OTHERS.
    pub const fn reauthorize_if_modified(&self) -> bool {
        self.flags & FWPS_CLASSIFY_FLAG_REAUTHORIZE_IF_MODIFIED_BY_OTHERS != 0
    }
}

/// A classification held with FwpsPendClassify0.
#[derive(Clone, Debug)]
pub struct Pended {
    /// The classify handle.
    pub handle: u64,
    /// The filter it was pended for.
    pub filter: u64,
    /// The layer data as it stood.
    pub data: ConnectData,
}

/// What FwpsCompleteClassify0 was given.
#[derive(Clone, Debug)]
pub struct Completed {
    /// The classify handle.
    pub handle: u64,
    /// The filter.
    pub filter: u64,
    /// The deep copy: the callout's final decision.
    pub classify_out: FWPS_CLASSIFY_OUT0,
    /// The layer data after the completion's apply, if any.
    pub data: ConnectData,
    /// What the completion applied.
    pub applied: Option<Applied>,
}

struct HandleState {
    classify: u64,
    refs: u32,
    /// Writable data handed out and not applied yet.
    writable: Option<Box<FWPS_CONNECT_REQUEST0>>,
    /// Backing versions the writable copy links to.
    chain: Vec<Box<FWPS_CONNECT_REQUEST0>>,
    filter: u64,
    pended: bool,
    completed: bool,
    last_applied: Option<Applied>,
}

/// The runtime side of the model: classify handles, layer data, contexts,
/// pended classifications. One per simulated machine.
pub struct Runtime {
    /// The thread, its IRQL and locks.
    pub kernel: Kernel,
    /// The readings in force.
    pub readings: Readings,
    handles: HashMap<u64, HandleState>,
    next_handle: u64,
    /// Connect-redirect classifications in progress or pended, by classify id.
    classifies: HashMap<u64, ConnectData>,
    /// The classifyOut of each classifyFn call in progress (classify id -> address).
    classify_outs: HashMap<u64, usize>,
    next_classify: u64,
    /// Contexts the driver allocated and still owns (address -> bytes).
    contexts: HashMap<usize, Box<[u8]>>,
    /// Changes applied in the classifyFn call in progress.
    applied: Vec<Applied>,
    pended: Vec<Pended>,
    completed: Vec<Completed>,
    /// Contexts WFP took ownership of and freed with their flow.
    pub contexts_freed_by_wfp: u64,
    /// Fail the next FwpsAcquireClassifyHandle0 calls (count).
    pub fail_acquire_handle: u32,
    /// Fail the next FwpsAcquireWritableLayerDataPointer0 calls (count).
    pub fail_acquire_writable: u32,
    /// Fail the next context allocations (count).
    pub fail_alloc: u32,
    /// Refuse FwpsPendClassify0 (STATUS_FWP_CANNOT_PEND).
    pub refuse_pend: bool,
}

impl core::fmt::Debug for Runtime {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("Runtime")
            .field("readings", &self.readings)
            .field("handles", &self.handles.len())
            .field("pended", &self.pended.len())
            .finish_non_exhaustive()
    }
}

impl Runtime {
    /// An idle runtime under `readings`.
    pub fn new(readings: Readings) -> Self {
        Self {
            kernel: Kernel::new(),
            readings,
            handles: HashMap::new(),
            next_handle: 0x1000,
            classifies: HashMap::new(),
            classify_outs: HashMap::new(),
            next_classify: 0x5000,
            contexts: HashMap::new(),
            applied: Vec::new(),
            pended: Vec::new(),
            completed: Vec::new(),
            contexts_freed_by_wfp: 0,
            fail_acquire_handle: 0,
            fail_acquire_writable: 0,
            fail_alloc: 0,
            refuse_pend: false,
        }
    }

    /// Starts a connect-redirect classifyFn call over `data`. Returns the
    /// classify id, which is what the call's `classifyContext` points to.
    /// `classify_out` is the address of the call's classifyOut.
    pub fn begin_classify(&mut self, data: ConnectData, classify_out: *const FWPS_CLASSIFY_OUT0) -> u64 {
        self.next_classify = self.next_classify.wrapping_add(1);
        let id = self.next_classify;
        self.classifies.insert(id, data);
        self.classify_outs.insert(id, classify_out as usize);
        self.applied.clear();
        id
    }

    /// Ends the classifyFn call: checks that every writable acquire was
    /// applied and every handle released (unless pended), and returns the
    /// layer data and what was applied. Panics on a violation.
    pub fn end_classify(&mut self, id: u64) -> (ConnectData, Vec<Applied>) {
        self.classify_outs.remove(&id);
        let pended = self.pended.iter().any(|p| self.handles.get(&p.handle).is_some_and(|h| h.classify == id));
        for (handle, h) in &self.handles {
            if h.classify != id {
                continue;
            }
            assert!(
                h.writable.is_none(),
                "classify {id}: writable layer data acquired on handle {handle:#x} and never applied \
                 (FwpsAcquireWritableLayerDataPointer0 needs a matching FwpsApplyModifiedLayerData0)"
            );
            assert!(
                h.pended || h.refs == 0,
                "classify {id}: classify handle {handle:#x} not released ({} references left)",
                h.refs
            );
        }
        self.assert_no_leaked_contexts();
        let data = if pended {
            self.classifies.get(&id).cloned()
        } else {
            self.handles.retain(|_, h| h.classify != id);
            self.classifies.remove(&id)
        };
        (data.unwrap_or_else(|| panic!("classify {id} unknown")), std::mem::take(&mut self.applied))
    }

    /// Contexts allocated and never handed to WFP or freed.
    pub fn assert_no_leaked_contexts(&self) {
        assert!(
            self.contexts.is_empty(),
            "{} redirect context(s) allocated and never applied or freed (a leak)",
            self.contexts.len()
        );
    }

    /// Classifications pended and not completed yet.
    pub fn pended(&self) -> &[Pended] {
        &self.pended
    }

    /// Completions since the last call.
    pub fn take_completed(&mut self) -> Vec<Completed> {
        std::mem::take(&mut self.completed)
    }

    /// Checks that no handle is left: every pended classification was
    /// completed and every handle released. Panics otherwise.
    pub fn assert_quiescent(&self) {
        assert!(self.pended.is_empty(), "{} classification(s) pended and never completed", self.pended.len());
        assert!(self.handles.is_empty(), "{} classify handle(s) never released", self.handles.len());
        self.assert_no_leaked_contexts();
    }

    fn handle_mut(&mut self, handle: u64, what: &str) -> &mut HandleState {
        self.handles
            .get_mut(&handle)
            .unwrap_or_else(|| panic!("{what} on classify handle {handle:#x}, which is not acquired"))
    }

    fn build_chain(data: &ConnectData) -> (Vec<Box<FWPS_CONNECT_REQUEST0>>, Box<FWPS_CONNECT_REQUEST0>) {
        let mut boxes: Vec<Box<FWPS_CONNECT_REQUEST0>> = Vec::with_capacity(data.versions.len());
        let mut prev: *mut FWPS_CONNECT_REQUEST0 = std::ptr::null_mut();
        for v in data.versions.iter().rev() {
            let mut b = Box::new(request(data.remote, data.local));
            b.modifierFilterId = v.filter;
            b.localRedirectHandle =
                if v.local_redirect_handle { std::ptr::without_provenance_mut(0x7ED1) } else { std::ptr::null_mut() };
            b.previousVersion = prev;
            prev = &raw mut *b;
            boxes.push(b);
        }
        let mut top = Box::new(request(data.remote, data.local));
        top.localRedirectTargetPID = data.target_pid;
        top.localRedirectHandle = std::ptr::with_exposed_provenance_mut(data.redirect_handle);
        top.previousVersion = prev;
        (boxes, top)
    }
}

fn request(remote: SocketAddr, local: SocketAddr) -> FWPS_CONNECT_REQUEST0 {
    FWPS_CONNECT_REQUEST0 {
        localAddressAndPort: to_storage(&local),
        remoteAddressAndPort: to_storage(&remote),
        portReservationToken: 0,
        localRedirectTargetPID: 0,
        previousVersion: std::ptr::null_mut(),
        modifierFilterId: 0,
        localRedirectHandle: std::ptr::null_mut(),
        localRedirectContext: std::ptr::null_mut(),
        localRedirectContextSize: 0,
    }
}

impl Fwps for Runtime {
    fn query_redirect_state(&mut self, records: HANDLE, handle: HANDLE) -> FWPS_CONNECTION_REDIRECT_STATE {
        self.kernel.call(Routine::FwpsQueryConnectionRedirectState);
        // The records handle is the classify id the model put in the metadata.
        let id = records.addr() as u64;
        let recs = self.classifies.get(&id).map(|d| d.records.as_slice()).unwrap_or(&[]);
        redirect_state(recs, handle.addr())
    }

    fn acquire_classify_handle(&mut self, classify_context: *const core::ffi::c_void) -> Result<u64, NTSTATUS> {
        self.kernel.call(Routine::FwpsAcquireClassifyHandle);
        let classify = classify_context.addr() as u64;
        if !self.classifies.contains_key(&classify) {
            return Err(STATUS_INVALID_PARAMETER);
        }
        if self.fail_acquire_handle > 0 {
            self.fail_acquire_handle -= 1;
            return Err(STATUS_NO_MEMORY);
        }
        self.next_handle = self.next_handle.wrapping_add(1);
        let handle = self.next_handle;
        self.handles.insert(
            handle,
            HandleState {
                classify,
                refs: 1,
                writable: None,
                chain: Vec::new(),
                filter: 0,
                pended: false,
                completed: false,
                last_applied: None,
            },
        );
        Ok(handle)
    }

    fn acquire_writable_connect_request(
        &mut self,
        classify_handle: u64,
        filter_id: u64,
        classify_out: &mut FWPS_CLASSIFY_OUT0,
    ) -> Result<NonNull<FWPS_CONNECT_REQUEST0>, NTSTATUS> {
        self.kernel.call(Routine::FwpsAcquireWritableLayerDataPointer);
        let fail = self.fail_acquire_writable > 0;
        if fail {
            self.fail_acquire_writable -= 1;
        }
        let h = self.handle_mut(classify_handle, "FwpsAcquireWritableLayerDataPointer0");
        assert!(
            h.writable.is_none(),
            "writable layer data acquired twice on handle {classify_handle:#x} without an apply"
        );
        assert!(!h.completed, "writable layer data acquired after FwpsCompleteClassify0");
        let classify = h.classify;
        if fail {
            return Err(STATUS_NO_MEMORY);
        }
        // Remarks: the function sets actionType = BLOCK and clears the write right.
        classify_out.actionType = FWP_ACTION_BLOCK;
        classify_out.rights &= !FWPS_RIGHT_ACTION_WRITE;
        let data = self.classifies.get(&classify).ok_or(STATUS_INVALID_PARAMETER)?;
        let (chain, mut top) = Self::build_chain(data);
        let ptr = NonNull::from(&mut *top);
        let h = self.handle_mut(classify_handle, "FwpsAcquireWritableLayerDataPointer0");
        h.filter = filter_id;
        h.chain = chain;
        h.writable = Some(top);
        Ok(ptr)
    }

    fn apply_modified_layer_data(&mut self, classify_handle: u64, data: NonNull<FWPS_CONNECT_REQUEST0>, flags: u32) {
        self.kernel.call(Routine::FwpsApplyModifiedLayerData);
        let h = self.handle_mut(classify_handle, "FwpsApplyModifiedLayerData0");
        let Some(top) = h.writable.take() else {
            panic!("FwpsApplyModifiedLayerData0 on handle {classify_handle:#x} without a writable acquire")
        };
        assert!(
            std::ptr::eq(data.as_ptr(), &raw const *top),
            "FwpsApplyModifiedLayerData0 given a pointer that is not the acquired layer data"
        );
        h.chain.clear();
        let (classify, filter) = (h.classify, h.filter);
        let Some(cur) = self.classifies.get(&classify).cloned() else { return };
        let remote = from_storage(&top.remoteAddressAndPort).unwrap_or(cur.remote);
        let handle = top.localRedirectHandle.expose_provenance();
        let context_ptr = top.localRedirectContext;
        let context = if context_ptr.is_null() {
            None
        } else {
            let addr = context_ptr.addr();
            let Some(bytes) = self.contexts.remove(&addr) else {
                panic!("localRedirectContext {addr:#x} was not allocated by this driver (or already handed over)")
            };
            let len = top.localRedirectContextSize;
            assert!(len <= bytes.len(), "localRedirectContextSize {len} exceeds the allocation of {}", bytes.len());
            // WFP owns it now and frees it with the flow.
            self.contexts_freed_by_wfp += 1;
            Some(bytes.get(..len).unwrap_or(&[]).to_vec())
        };
        let modified = remote != cur.remote
            || top.localRedirectTargetPID != cur.target_pid
            || handle != cur.redirect_handle
            || context.is_some();
        if modified {
            let mut next = cur;
            next.versions.insert(0, Version { filter, local_redirect_handle: handle != 0 });
            next.remote = remote;
            next.target_pid = top.localRedirectTargetPID;
            next.redirect_handle = handle;
            if context.is_some() {
                next.context = context;
            }
            self.classifies.insert(classify, next);
        }
        let a = Applied { filter, modified, flags };
        if let Some(h) = self.handles.get_mut(&classify_handle) {
            h.last_applied = Some(a.clone());
        }
        self.applied.push(a);
    }

    fn pend_classify(
        &mut self,
        classify_handle: u64,
        filter_id: u64,
        classify_out: &mut FWPS_CLASSIFY_OUT0,
    ) -> Result<(), NTSTATUS> {
        self.kernel.call(Routine::FwpsPendClassify);
        let refuse = self.refuse_pend;
        let out_addr = std::ptr::from_mut(classify_out).addr();
        let h = self.handle_mut(classify_handle, "FwpsPendClassify0");
        assert!(!h.pended, "FwpsPendClassify0 twice on handle {classify_handle:#x}");
        assert!(
            h.writable.is_none() && h.chain.is_empty() && h.filter == 0,
            "FwpsPendClassify0 after FwpsAcquireWritableLayerDataPointer0: the seed acquires the layer data only after pending"
        );
        let classify = h.classify;
        assert_eq!(
            self.classify_outs.get(&classify).copied(),
            Some(out_addr),
            "FwpsPendClassify0 must be given the classifyFn's own classifyOut, not a copy"
        );
        assert!(
            classify_out.rights & FWPS_RIGHT_ACTION_WRITE != 0,
            "FwpsPendClassify0 without FWPS_RIGHT_ACTION_WRITE (\"should be set whenever a callout pends\")"
        );
        if refuse {
            return Err(STATUS_FWP_CANNOT_PEND);
        }
        let h = self.handle_mut(classify_handle, "FwpsPendClassify0");
        h.pended = true;
        h.refs += 1;
        let data = self.classifies.get(&classify).cloned().unwrap_or_else(|| panic!("classify {classify} unknown"));
        self.pended.push(Pended { handle: classify_handle, filter: filter_id, data });
        Ok(())
    }

    fn complete_classify(&mut self, classify_handle: u64, classify_out: &FWPS_CLASSIFY_OUT0) {
        self.kernel.call(Routine::FwpsCompleteClassify);
        let h = self.handle_mut(classify_handle, "FwpsCompleteClassify0");
        assert!(h.pended && !h.completed, "FwpsCompleteClassify0 on handle {classify_handle:#x}, which is not pended");
        assert!(h.writable.is_none(), "FwpsCompleteClassify0 with writable layer data not applied");
        assert!(
            classify_out.flags & FWPS_CLASSIFY_OUT_FLAG_ABSORB == 0,
            "FWPS_CLASSIFY_OUT_FLAG_ABSORB at a redirect layer (packet callouts only)"
        );
        h.completed = true;
        h.refs -= 1;
        let classify = h.classify;
        if self.readings.completion == Completion::ReentersSameThread {
            // The engine classifies again on this thread before returning:
            // any lock the driver's classifyFn takes must not be held here.
            self.kernel.reenter_classify();
        }
        let filter = self.pended.iter().find(|p| p.handle == classify_handle).map_or(0, |p| p.filter);
        self.pended.retain(|p| p.handle != classify_handle);
        let data = self.classifies.get(&classify).cloned().unwrap_or_else(|| panic!("classify {classify} unknown"));
        let applied = self.handles.get_mut(&classify_handle).and_then(|h| h.last_applied.take());
        self.completed.push(Completed { handle: classify_handle, filter, classify_out: *classify_out, data, applied });
    }

    fn release_classify_handle(&mut self, classify_handle: u64) {
        self.kernel.call(Routine::FwpsReleaseClassifyHandle);
        let h = self.handle_mut(classify_handle, "FwpsReleaseClassifyHandle0");
        assert!(h.refs > 0, "FwpsReleaseClassifyHandle0 on handle {classify_handle:#x} once too often");
        assert!(h.writable.is_none(), "classify handle released with writable layer data not applied");
        h.refs -= 1;
        if h.refs == 0 {
            let classify = h.classify;
            let was_pended = h.pended;
            self.handles.remove(&classify_handle);
            if was_pended && !self.classify_outs.contains_key(&classify) {
                self.classifies.remove(&classify);
            }
        }
    }

    fn allocate_context(&mut self, len: usize) -> Option<NonNull<u8>> {
        self.kernel.call(Routine::PoolNonPaged);
        if self.fail_alloc > 0 {
            self.fail_alloc -= 1;
            return None;
        }
        let mut b = vec![0u8; len.max(1)].into_boxed_slice();
        let p = NonNull::new(b.as_mut_ptr())?;
        self.contexts.insert(p.as_ptr().addr(), b);
        Some(p)
    }

    fn free_context(&mut self, context: NonNull<u8>) {
        self.kernel.call(Routine::PoolNonPaged);
        let addr = context.as_ptr().addr();
        assert!(
            self.contexts.remove(&addr).is_some(),
            "ExFreePoolWithTag on context {addr:#x}, which the driver does not own (applied to WFP, or freed twice)"
        );
    }
}
