//! [`Fwps`] over the real `fwpkclnt.sys` imports (Windows only).
//!
//! Built by the driver for the length of one classify, one completion, or one
//! control request, and only from that operation's handles, which is what
//! makes the safe trait methods sound: WFP keeps every handle and pointer
//! passed here valid until the operation ends.

use core::alloc::Layout;
use core::ffi::c_void;
use core::ptr::NonNull;

use arbiter::context::CONTEXT_LEN;
use wfp_ffi::imports::{
    FwpsAcquireClassifyHandle0, FwpsAcquireWritableLayerDataPointer0, FwpsApplyModifiedLayerData0,
    FwpsCompleteClassify0, FwpsPendClassify0, FwpsQueryConnectionRedirectState0, FwpsReleaseClassifyHandle0,
};
use wfp_ffi::{
    FWPS_CLASSIFY_OUT0, FWPS_CONNECT_REQUEST0, FWPS_CONNECTION_REDIRECT_STATE, HANDLE, NTSTATUS, nt_success,
};

use crate::fwps::Fwps;

/// The layout of every redirect context: [`CONTEXT_LEN`] bytes, pool-aligned.
///
/// Contexts come from the driver's global allocator, which is non-paged pool
/// (wdk-alloc: `ExAllocatePool2(POOL_FLAG_NON_PAGED)`), so WFP can free the
/// ones it takes over with `ExFreePool`. Taking them from the allocator rather
/// than importing the pool routines here keeps each ntoskrnl routine declared
/// once in the driver (wdk-sys), so the image imports none of them twice.
fn context_layout() -> Option<Layout> {
    Layout::from_size_align(CONTEXT_LEN, 16).ok()
}

/// The kernel's Fwps functions.
#[derive(Debug)]
pub struct KernelFwps {
    _private: (),
}

impl KernelFwps {
    /// # Safety
    ///
    /// Use the value only within one classify, completion or control
    /// request, passing it only that operation's handles and pointers.
    pub const unsafe fn new() -> Self {
        Self { _private: () }
    }
}

impl Fwps for KernelFwps {
    #[expect(
        clippy::not_unsafe_ptr_arg_deref,
        reason = "the obligation is taken at `KernelFwps::new`, which is unsafe"
    )]
    fn query_redirect_state(&mut self, records: HANDLE, handle: HANDLE) -> FWPS_CONNECTION_REDIRECT_STATE {
        // SAFETY: `records` is the indication's redirect-records handle and
        // `handle` our redirect handle, both live for the classify; a null
        // context pointer asks for no context.
        unsafe { FwpsQueryConnectionRedirectState0(records, handle, core::ptr::null_mut()) }
    }

    fn acquire_classify_handle(&mut self, classify_context: *const c_void) -> Result<u64, NTSTATUS> {
        let mut handle = 0u64;
        // SAFETY: classifyContext as classifyFn received it; `handle` is a
        // valid out pointer.
        let status = unsafe { FwpsAcquireClassifyHandle0(classify_context.cast_mut(), 0, &mut handle) };
        if nt_success(status) { Ok(handle) } else { Err(status) }
    }

    fn acquire_writable_connect_request(
        &mut self,
        classify_handle: u64,
        filter_id: u64,
        classify_out: &mut FWPS_CLASSIFY_OUT0,
    ) -> Result<NonNull<FWPS_CONNECT_REQUEST0>, NTSTATUS> {
        let mut data: *mut c_void = core::ptr::null_mut();
        // SAFETY: a live classify handle, the classify's filter id, valid out
        // pointers; classifyOut is the classify's (or its deep copy when pended).
        let status =
            unsafe { FwpsAcquireWritableLayerDataPointer0(classify_handle, filter_id, 0, &mut data, classify_out) };
        if !nt_success(status) {
            return Err(status);
        }
        // At ALE_CONNECT_REDIRECT the writable data is an FWPS_CONNECT_REQUEST0.
        NonNull::new(data.cast::<FWPS_CONNECT_REQUEST0>()).ok_or(status)
    }

    fn apply_modified_layer_data(&mut self, classify_handle: u64, data: NonNull<FWPS_CONNECT_REQUEST0>, flags: u32) {
        // SAFETY: `data` came from FwpsAcquireWritableLayerDataPointer0 on this handle and is applied once.
        unsafe { FwpsApplyModifiedLayerData0(classify_handle, data.as_ptr().cast::<c_void>(), flags) };
    }

    fn pend_classify(
        &mut self,
        classify_handle: u64,
        filter_id: u64,
        classify_out: &mut FWPS_CLASSIFY_OUT0,
    ) -> Result<(), NTSTATUS> {
        // SAFETY: a live classify handle; `classify_out` is the deep copy that outlives the classify.
        let status = unsafe { FwpsPendClassify0(classify_handle, filter_id, 0, classify_out) };
        if nt_success(status) { Ok(()) } else { Err(status) }
    }

    fn complete_classify(&mut self, classify_handle: u64, classify_out: &FWPS_CLASSIFY_OUT0) {
        // SAFETY: the pended classify's handle and its deep-copied classifyOut.
        unsafe { FwpsCompleteClassify0(classify_handle, 0, classify_out) };
    }

    fn release_classify_handle(&mut self, classify_handle: u64) {
        // SAFETY: a handle we acquired and release once.
        unsafe { FwpsReleaseClassifyHandle0(classify_handle) };
    }

    fn allocate_context(&mut self, len: usize) -> Option<NonNull<u8>> {
        // Every context has one size: free_context relies on it.
        let layout = context_layout().filter(|l| l.size() == len)?;
        // SAFETY: a layout of non-zero size; null on failure.
        NonNull::new(unsafe { alloc::alloc::alloc(layout) })
    }

    fn free_context(&mut self, context: NonNull<u8>) {
        if let Some(layout) = context_layout() {
            // SAFETY: allocated by allocate_context with this layout and never handed to WFP.
            unsafe { alloc::alloc::dealloc(context.as_ptr(), layout) };
        }
    }
}
