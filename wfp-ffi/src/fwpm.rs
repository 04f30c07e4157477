//! The management side (fwpmtypes.h / fwpmk.h): what the driver adds in its
//! start-up transaction.
//!
//! Checked against (x86_64), learn.microsoft.com/windows/win32/api/fwpmtypes/:
//! - `FWPM_FILTER0`: ns-fwpmtypes-fwpm_filter0 (the `rawContext`/`providerContextKey`
//!   union is 8-aligned because of the `UINT64`)
//! - `FWPM_SUBLAYER0`: ns-fwpmtypes-fwpm_sublayer0
//! - `FWPM_CALLOUT0`: ns-fwpmtypes-fwpm_callout0
//! - `FWPM_PROVIDER0`, `FWPM_SESSION0`, `FWPM_DISPLAY_DATA0`, `FWPM_ACTION0`,
//!   `FWPM_FILTER_CONDITION0`: the same header (see the report for which pages
//!   were read directly).

use core::ffi::c_void;

use crate::fwps::FWP_ACTION_TYPE;
use crate::types::{FWP_BYTE_BLOB, FWP_CONDITION_VALUE0, FWP_VALUE0, GUID};

/// `FWPM_DISPLAY_DATA0`.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct FWPM_DISPLAY_DATA0 {
    /// NUL-terminated UTF-16 name (required).
    pub name: *mut u16,
    /// NUL-terminated UTF-16 description.
    pub description: *mut u16,
}

/// `FWPM_SESSION0`.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct FWPM_SESSION0 {
    /// Session key (zero: the engine picks one).
    pub sessionKey: GUID,
    /// Display data.
    pub displayData: FWPM_DISPLAY_DATA0,
    /// `FWPM_SESSION_FLAG_*`.
    pub flags: u32,
    /// Transaction lock wait, ms.
    pub txnWaitTimeoutInMSec: u32,
    /// Filled in by the engine.
    pub processId: u32,
    /// Filled in by the engine.
    pub sid: *mut c_void,
    /// Filled in by the engine.
    pub username: *mut u16,
    /// Filled in by the engine (`BOOL`).
    pub kernelMode: i32,
}

/// `FWPM_PROVIDER0`.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct FWPM_PROVIDER0 {
    /// Provider key.
    pub providerKey: GUID,
    /// Display data.
    pub displayData: FWPM_DISPLAY_DATA0,
    /// `FWPM_PROVIDER_FLAG_*`.
    pub flags: u32,
    /// Provider data.
    pub providerData: FWP_BYTE_BLOB,
    /// Service name (optional).
    pub serviceName: *mut u16,
}

/// `FWPM_SUBLAYER0`.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct FWPM_SUBLAYER0 {
    /// Sublayer key.
    pub subLayerKey: GUID,
    /// Display data.
    pub displayData: FWPM_DISPLAY_DATA0,
    /// `FWPM_SUBLAYER_FLAG_*`.
    pub flags: u32,
    /// Our provider.
    pub providerKey: *mut GUID,
    /// Provider data.
    pub providerData: FWP_BYTE_BLOB,
    /// Higher weight is consulted first.
    pub weight: u16,
}

/// `FWPM_CALLOUT0`.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct FWPM_CALLOUT0 {
    /// Callout key (same as `FWPS_CALLOUT3.calloutKey`).
    pub calloutKey: GUID,
    /// Display data.
    pub displayData: FWPM_DISPLAY_DATA0,
    /// `FWPM_CALLOUT_FLAG_*`.
    pub flags: u32,
    /// Our provider.
    pub providerKey: *mut GUID,
    /// Provider data.
    pub providerData: FWP_BYTE_BLOB,
    /// The layer filters using it live at.
    pub applicableLayer: GUID,
    /// Filled in by the engine.
    pub calloutId: u32,
}

/// `FWPM_ACTION0`: a type and a GUID (`filterType` or `calloutKey`).
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct FWPM_ACTION0 {
    /// `FWP_ACTION_CALLOUT_*` for our filters.
    pub r#type: FWP_ACTION_TYPE,
    /// `calloutKey` (or `filterType`; same bytes).
    pub calloutKey: GUID,
}

/// `FWPM_FILTER_CONDITION0`.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct FWPM_FILTER_CONDITION0 {
    /// `FWPM_CONDITION_*` key.
    pub fieldKey: GUID,
    /// `FWP_MATCH_TYPE`.
    pub matchType: u32,
    /// The value.
    pub conditionValue: FWP_CONDITION_VALUE0,
}

/// The `rawContext` / `providerContextKey` union of `FWPM_FILTER0`.
#[repr(C)]
#[derive(Clone, Copy)]
pub union FWPM_FILTER0_CONTEXT {
    /// Raw context handed to the callout in `FWPS_FILTER3.context`.
    pub rawContext: u64,
    /// Provider context key.
    pub providerContextKey: GUID,
}

/// `FWPM_FILTER0`.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct FWPM_FILTER0 {
    /// Filter key.
    pub filterKey: GUID,
    /// Display data.
    pub displayData: FWPM_DISPLAY_DATA0,
    /// `FWPM_FILTER_FLAG_*`.
    pub flags: u32,
    /// Our provider.
    pub providerKey: *mut GUID,
    /// Provider data.
    pub providerData: FWP_BYTE_BLOB,
    /// Layer.
    pub layerKey: GUID,
    /// Our sublayer.
    pub subLayerKey: GUID,
    /// `FWP_EMPTY` (automatic) or `FWP_UINT8`/`FWP_UINT64`.
    pub weight: FWP_VALUE0,
    /// Entries at `filterCondition`.
    pub numFilterConditions: u32,
    /// Conditions.
    pub filterCondition: *mut FWPM_FILTER_CONDITION0,
    /// Action.
    pub action: FWPM_ACTION0,
    /// Context.
    pub context: FWPM_FILTER0_CONTEXT,
    /// Reserved.
    pub reserved: *mut GUID,
    /// Filled in by the engine: the run-time filter id.
    pub filterId: u64,
    /// Filled in by the engine.
    pub effectiveWeight: FWP_VALUE0,
}

/// `FWPM_SERVICE_STATE`.
pub type FWPM_SERVICE_STATE = u32;
/// `FWPM_SERVICE_STOPPED`.
pub const FWPM_SERVICE_STOPPED: FWPM_SERVICE_STATE = 0;
/// `FWPM_SERVICE_START_PENDING`.
pub const FWPM_SERVICE_START_PENDING: FWPM_SERVICE_STATE = 1;
/// `FWPM_SERVICE_STOP_PENDING`.
pub const FWPM_SERVICE_STOP_PENDING: FWPM_SERVICE_STATE = 2;
/// `FWPM_SERVICE_RUNNING`.
pub const FWPM_SERVICE_RUNNING: FWPM_SERVICE_STATE = 3;

/// `FWPM_SERVICE_STATE_CHANGE_CALLBACK0`.
pub type FWPM_SERVICE_STATE_CHANGE_CALLBACK0 =
    Option<unsafe extern "system" fn(context: *mut c_void, newState: FWPM_SERVICE_STATE)>;

/// `RPC_C_AUTHN_DEFAULT` for FwpmEngineOpen0.
pub const RPC_C_AUTHN_DEFAULT: u32 = 0xFFFF_FFFF;
/// `FWPM_SESSION_FLAG_DYNAMIC`: objects go away with the session.
pub const FWPM_SESSION_FLAG_DYNAMIC: u32 = 0x0000_0001;

#[cfg(target_arch = "x86_64")]
const _: () = {
    use core::mem::{offset_of, size_of};
    assert!(size_of::<FWPM_DISPLAY_DATA0>() == 16);
    assert!(offset_of!(FWPM_SESSION0, flags) == 32);
    assert!(offset_of!(FWPM_SESSION0, txnWaitTimeoutInMSec) == 36);
    assert!(offset_of!(FWPM_SESSION0, processId) == 40);
    assert!(offset_of!(FWPM_SESSION0, sid) == 48);
    assert!(offset_of!(FWPM_SESSION0, kernelMode) == 64);
    assert!(size_of::<FWPM_SESSION0>() == 72);
    assert!(offset_of!(FWPM_PROVIDER0, flags) == 32);
    assert!(offset_of!(FWPM_PROVIDER0, providerData) == 40);
    assert!(offset_of!(FWPM_PROVIDER0, serviceName) == 56);
    assert!(size_of::<FWPM_PROVIDER0>() == 64);
    assert!(offset_of!(FWPM_SUBLAYER0, providerKey) == 40);
    assert!(offset_of!(FWPM_SUBLAYER0, providerData) == 48);
    assert!(offset_of!(FWPM_SUBLAYER0, weight) == 64);
    assert!(size_of::<FWPM_SUBLAYER0>() == 72);
    assert!(offset_of!(FWPM_CALLOUT0, providerKey) == 40);
    assert!(offset_of!(FWPM_CALLOUT0, providerData) == 48);
    assert!(offset_of!(FWPM_CALLOUT0, applicableLayer) == 64);
    assert!(offset_of!(FWPM_CALLOUT0, calloutId) == 80);
    assert!(size_of::<FWPM_CALLOUT0>() == 88);
    assert!(size_of::<FWPM_ACTION0>() == 20);
    assert!(offset_of!(FWPM_FILTER_CONDITION0, conditionValue) == 24);
    assert!(size_of::<FWPM_FILTER_CONDITION0>() == 40);
    type F = FWPM_FILTER0;
    assert!(offset_of!(F, flags) == 32);
    assert!(offset_of!(F, providerKey) == 40);
    assert!(offset_of!(F, providerData) == 48);
    assert!(offset_of!(F, layerKey) == 64);
    assert!(offset_of!(F, subLayerKey) == 80);
    assert!(offset_of!(F, weight) == 96);
    assert!(offset_of!(F, numFilterConditions) == 112);
    assert!(offset_of!(F, filterCondition) == 120);
    assert!(offset_of!(F, action) == 128);
    assert!(offset_of!(F, context) == 152);
    assert!(offset_of!(F, reserved) == 168);
    assert!(offset_of!(F, filterId) == 176);
    assert!(offset_of!(F, effectiveWeight) == 184);
    assert!(size_of::<F>() == 200);
};
