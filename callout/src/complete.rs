//! Completions of held classifications, run after the driver's lock is
//! released.
//!
//! `FwpsCompleteClassify0` may classify the flow again before it returns, on
//! the same thread (the seed is silent; the WFP model keeps both readings).
//! A classifyFn that takes the driver's spin lock would then spin on a lock
//! its own thread holds. So the adapter decides held classifications under
//! the lock but only *queues* the WFP calls that finish them (apply, complete,
//! release) into a [`Completions`] batch reserved at start-up; the shell
//! ([`crate::shell::complete_pended`]) takes the batch out under the lock,
//! runs it with the lock released, and gives it back.

use alloc::vec::Vec;
use core::ptr::NonNull;

use arbiter::OutOfMemory;
use wfp_ffi::{FWPS_CLASSIFY_OUT0, FWPS_CONNECT_REQUEST0};

use crate::fwps::Fwps;

/// One held classification's last WFP calls.
#[derive(Clone, Copy)]
struct Completion {
    handle: u64,
    /// The writable data acquired at completion and the apply flags; `None`
    /// when it could not be acquired (only the action is given then).
    apply: Option<(NonNull<FWPS_CONNECT_REQUEST0>, u32)>,
    /// The deep copy given to `FwpsPendClassify0`, with the verdict written.
    out: FWPS_CLASSIFY_OUT0,
}

/// A bounded batch of completions, reserved once: queuing never allocates.
pub struct Completions {
    items: Vec<Completion>,
}

// SAFETY: the batch's pointers are writable layer data of pended
// classifications, which WFP lets any thread complete (the seed completes
// from another thread than the classify's); only the holder of the batch
// makes the calls with them, through `run`, and it takes `&mut self`.
unsafe impl Send for Completions {}

impl core::fmt::Debug for Completions {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("Completions").field("len", &self.items.len()).finish_non_exhaustive()
    }
}

impl Completions {
    /// Reserves room for `capacity` completions.
    ///
    /// # Errors
    ///
    /// When the room cannot be reserved.
    pub fn with_capacity(capacity: usize) -> Result<Self, OutOfMemory> {
        let mut items = Vec::new();
        items.try_reserve_exact(capacity).map_err(|_| OutOfMemory)?;
        Ok(Self { items })
    }

    /// Whether another completion fits without allocating.
    pub(crate) fn has_room(&self) -> bool {
        self.items.len() < self.items.capacity()
    }

    /// Queues one; false (nothing queued) when the batch is full.
    pub(crate) fn push(
        &mut self,
        handle: u64,
        apply: Option<(NonNull<FWPS_CONNECT_REQUEST0>, u32)>,
        out: &FWPS_CLASSIFY_OUT0,
    ) -> bool {
        if !self.has_room() {
            return false;
        }
        self.items.push(Completion { handle, apply, out: *out });
        true
    }

    /// Completions queued.
    pub const fn len(&self) -> usize {
        self.items.len()
    }

    /// Whether none is queued.
    pub const fn is_empty(&self) -> bool {
        self.items.is_empty()
    }

    /// Runs every queued completion in the seed's order (apply the layer
    /// data, `FwpsCompleteClassify0` with the deep copy, release the handle)
    /// and empties the batch. Call with no lock held that classifyFn takes.
    pub fn run<F: Fwps>(&mut self, fwps: &mut F) {
        for c in self.items.drain(..) {
            if let Some((request, flags)) = c.apply {
                fwps.apply_modified_layer_data(c.handle, request, flags);
            }
            fwps.complete_classify(c.handle, &c.out);
            fwps.release_classify_handle(c.handle);
        }
    }
}

/// One call [`Deferred`] keeps for later.
#[derive(Clone, Copy)]
enum Later {
    Apply { handle: u64, request: NonNull<FWPS_CONNECT_REQUEST0>, flags: u32 },
    Release(u64),
}

/// Calls one classifyFn defers: one apply and one release, and one more
/// release where the adapter alone is run under [`Deferred`] (the tests: a
/// refused pend releases its handle before the layer data is acquired; the
/// driver's shell makes the pend and its release after the lock instead).
/// No more: the kept calls sit on classifyFn's frame, under everything it
/// calls (should more come, the extra ones are made at once instead).
const DEFERRED_CALLS: usize = 3;

/// An [`Fwps`] for one classifyFn under the driver's lock: every call goes
/// through at once except `FwpsApplyModifiedLayerData0` and
/// `FwpsReleaseClassifyHandle0`, which are kept, in order, in a [`Kept`]
/// the caller owns, and made by [`Kept::run`] (or [`Self::finish`]) once the
/// lock is released (still inside classifyFn, as WFP requires). Fixed size,
/// and the kept calls are never moved: nothing is allocated or copied on
/// the kernel stack. Should a classify ever make more calls than it holds,
/// the extra ones go through at once.
pub struct Deferred<'a, F> {
    inner: &'a mut F,
    later: &'a mut Kept,
}

impl<F> core::fmt::Debug for Deferred<'_, F> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("Deferred").field("kept", &self.later).finish_non_exhaustive()
    }
}

impl<'a, F: Fwps> Deferred<'a, F> {
    /// Wraps the classify's Fwps, keeping the deferred calls in `later`.
    pub const fn new(inner: &'a mut F, later: &'a mut Kept) -> Self {
        Self { inner, later }
    }

    /// The wrapped Fwps.
    pub const fn inner_mut(&mut self) -> &mut F {
        self.inner
    }

    fn keep(&mut self, call: Later) -> bool {
        match self.later.0.iter_mut().find(|l| l.is_none()) {
            Some(slot) => {
                *slot = Some(call);
                true
            }
            None => false,
        }
    }

    /// Makes the kept calls on the wrapped Fwps, in the order they were
    /// asked for. Call with the lock released, before classifyFn returns.
    pub fn finish(self) {
        self.later.run(self.inner);
    }
}

/// The calls a [`Deferred`] kept, owned by its caller.
#[derive(Default)]
#[must_use = "the kept apply and release calls must be made before classifyFn returns"]
pub struct Kept([Option<Later>; DEFERRED_CALLS]);

impl core::fmt::Debug for Kept {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("Kept").field("calls", &self.0.iter().flatten().count()).finish()
    }
}

impl Kept {
    /// Makes the kept calls (and forgets them), in the order they were
    /// asked for, on the Fwps of the same classify. Call with the lock
    /// released, before classifyFn returns.
    pub fn run<F: Fwps>(&mut self, fwps: &mut F) {
        for call in self.0.iter_mut().filter_map(Option::take) {
            match call {
                Later::Apply { handle, request, flags } => fwps.apply_modified_layer_data(handle, request, flags),
                Later::Release(handle) => fwps.release_classify_handle(handle),
            }
        }
    }
}

impl<F: Fwps> Fwps for Deferred<'_, F> {
    fn query_redirect_state(
        &mut self,
        redirect_records: wfp_ffi::HANDLE,
        redirect_handle: wfp_ffi::HANDLE,
    ) -> wfp_ffi::FWPS_CONNECTION_REDIRECT_STATE {
        self.inner.query_redirect_state(redirect_records, redirect_handle)
    }
    fn acquire_classify_handle(
        &mut self,
        classify_context: *const core::ffi::c_void,
    ) -> Result<u64, wfp_ffi::NTSTATUS> {
        self.inner.acquire_classify_handle(classify_context)
    }
    fn acquire_writable_connect_request(
        &mut self,
        classify_handle: u64,
        filter_id: u64,
        classify_out: &mut FWPS_CLASSIFY_OUT0,
    ) -> Result<NonNull<FWPS_CONNECT_REQUEST0>, wfp_ffi::NTSTATUS> {
        self.inner.acquire_writable_connect_request(classify_handle, filter_id, classify_out)
    }
    fn apply_modified_layer_data(&mut self, classify_handle: u64, data: NonNull<FWPS_CONNECT_REQUEST0>, flags: u32) {
        if !self.keep(Later::Apply { handle: classify_handle, request: data, flags }) {
            self.inner.apply_modified_layer_data(classify_handle, data, flags);
        }
    }
    fn pend_classify(
        &mut self,
        classify_handle: u64,
        filter_id: u64,
        classify_out: &mut FWPS_CLASSIFY_OUT0,
    ) -> Result<(), wfp_ffi::NTSTATUS> {
        self.inner.pend_classify(classify_handle, filter_id, classify_out)
    }
    fn complete_classify(&mut self, classify_handle: u64, classify_out: &FWPS_CLASSIFY_OUT0) {
        self.inner.complete_classify(classify_handle, classify_out);
    }
    fn release_classify_handle(&mut self, classify_handle: u64) {
        if !self.keep(Later::Release(classify_handle)) {
            self.inner.release_classify_handle(classify_handle);
        }
    }
    fn allocate_context(&mut self, len: usize) -> Option<NonNull<u8>> {
        self.inner.allocate_context(len)
    }
    fn free_context(&mut self, context: NonNull<u8>) {
        self.inner.free_context(context);
    }
}
