//! The seam between the adapter and the kernel's Fwps functions.
//!
//! The driver implements [`Fwps`] over `wfp_ffi::imports` for the length of
//! one classify (or one completion); the tests implement it over fakes. The
//! methods are safe to call because the implementation is only ever built
//! from the handles and pointers of the classify in progress, which WFP keeps
//! valid until the classify returns (or, for a pended classify, until
//! [`Fwps::complete_classify`] and [`Fwps::release_classify_handle`]).

use core::ffi::c_void;
use core::ptr::NonNull;

use wfp_ffi::{FWPS_CLASSIFY_OUT0, FWPS_CONNECT_REQUEST0, FWPS_CONNECTION_REDIRECT_STATE, HANDLE, NTSTATUS};

/// Every Fwps call the adapter makes.
pub trait Fwps {
    /// `FwpsQueryConnectionRedirectState0(redirectRecords, redirectHandle, NULL)`.
    fn query_redirect_state(
        &mut self,
        redirect_records: HANDLE,
        redirect_handle: HANDLE,
    ) -> FWPS_CONNECTION_REDIRECT_STATE;

    /// `FwpsAcquireClassifyHandle0(classifyContext, 0, &handle)`.
    fn acquire_classify_handle(&mut self, classify_context: *const c_void) -> Result<u64, NTSTATUS>;

    /// `FwpsAcquireWritableLayerDataPointer0(handle, filterId, 0, &data, classifyOut)` at
    /// ALE_CONNECT_REDIRECT, where the data is an `FWPS_CONNECT_REQUEST0`.
    fn acquire_writable_connect_request(
        &mut self,
        classify_handle: u64,
        filter_id: u64,
        classify_out: &mut FWPS_CLASSIFY_OUT0,
    ) -> Result<NonNull<FWPS_CONNECT_REQUEST0>, NTSTATUS>;

    /// `FwpsApplyModifiedLayerData0(handle, data, flags)`: once per acquire.
    fn apply_modified_layer_data(&mut self, classify_handle: u64, data: NonNull<FWPS_CONNECT_REQUEST0>, flags: u32);

    /// `FwpsPendClassify0(handle, filterId, 0, classifyOut)`.
    fn pend_classify(
        &mut self,
        classify_handle: u64,
        filter_id: u64,
        classify_out: &mut FWPS_CLASSIFY_OUT0,
    ) -> Result<(), NTSTATUS>;

    /// `FwpsCompleteClassify0(handle, 0, classifyOut)`.
    fn complete_classify(&mut self, classify_handle: u64, classify_out: &FWPS_CLASSIFY_OUT0);

    /// `FwpsReleaseClassifyHandle0(handle)`.
    fn release_classify_handle(&mut self, classify_handle: u64);

    /// Non-paged pool for a redirect context (`ExAllocatePool2`); `None` when short.
    fn allocate_context(&mut self, len: usize) -> Option<NonNull<u8>>;

    /// Frees a context that never reached WFP (after apply, WFP owns it).
    fn free_context(&mut self, context: NonNull<u8>);
}
