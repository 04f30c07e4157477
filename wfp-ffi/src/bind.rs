//! ALE_BIND_REDIRECT: the writable bind request a callout sees there.
//!
//! Checked against (x86_64), learn.microsoft.com:
//! - `FWPS_BIND_REQUEST0`: /windows-hardware/drivers/ddi/fwpsk/ns-fwpsk-_fwps_bind_request0.
//!   Members in order: `SOCKADDR_STORAGE localAddressAndPort`, `UINT64
//!   portReservationToken`, `struct _FWPS_BIND_REQUEST0 *previousVersion`,
//!   `UINT64 modifierFilterId`. "Only the localAddressAndPort and
//!   portReservationToken members can be modified"; `previousVersion` is
//!   "read-only" and "records the modification history of the bind request";
//!   `modifierFilterId` is the `FilterId` of the filter whose classifyFn made
//!   that version. The structure is obtained with
//!   FwpsAcquireWritableLayerDataPointer0 and handed back with
//!   FwpsApplyModifiedLayerData0 "even if the callout driver did not modify
//!   any data".
//! - Layer keys (`FWPM_LAYER_ALE_BIND_REDIRECT_V4`/`_V6`) are in
//!   [`crate::layers`], incoming-value indexes in [`crate::fields`].

use crate::types::SOCKADDR_STORAGE;

/// `FWPS_BIND_REQUEST0`: the writable layer data at ALE_BIND_REDIRECT.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct FWPS_BIND_REQUEST0 {
    /// The local address and port the socket will be bound to: what a bind
    /// redirect rewrites.
    pub localAddressAndPort: SOCKADDR_STORAGE,
    /// Port reservation token (CreatePersistentTcpPortReservation / Udp).
    pub portReservationToken: u64,
    /// Read-only: the version this one was made from, or null.
    pub previousVersion: *mut Self,
    /// The filter id of whoever produced this version.
    pub modifierFilterId: u64,
}

#[cfg(target_pointer_width = "64")]
const _: () = {
    use core::mem::{align_of, offset_of, size_of};
    type B = FWPS_BIND_REQUEST0;
    assert!(offset_of!(B, localAddressAndPort) == 0);
    assert!(offset_of!(B, portReservationToken) == 128);
    assert!(offset_of!(B, previousVersion) == 136);
    assert!(offset_of!(B, modifierFilterId) == 144);
    assert!(size_of::<B>() == 152);
    assert!(align_of::<B>() == 8);
};
