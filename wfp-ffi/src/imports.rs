//! The imported kernel functions (Windows targets only).
//!
//! Linked with `raw-dylib`, so no import library from the WDK is needed:
//! the linker synthesises the import table entries for `fwpkclnt.sys`
//! itself. Kernel routines of `ntoskrnl.exe` come from wdk-sys in the driver,
//! never from here, so that no routine has two declarations (and the image
//! no import twice). `+verbatim` keeps the `.sys`/`.exe` names as
//! written. Signatures are the fwpsk.h/fwpmk.h/wdm.h ones from the
//! corresponding learn.microsoft.com/windows-hardware/drivers/ddi pages.
//!
//! Every function here is `unsafe` to call: each takes raw pointers whose
//! validity (and, for the classify functions, the IRQL and the classify
//! handle's life) the caller must guarantee, as the DDI pages describe.

use core::ffi::c_void;

use crate::fwpm::{
    FWPM_CALLOUT0, FWPM_FILTER0, FWPM_PROVIDER0, FWPM_SERVICE_STATE, FWPM_SERVICE_STATE_CHANGE_CALLBACK0,
    FWPM_SESSION0, FWPM_SUBLAYER0,
};
use crate::fwps::{FWPS_CALLOUT3, FWPS_CLASSIFY_OUT0, FWPS_CONNECTION_REDIRECT_STATE};
use crate::types::{GUID, HANDLE, NTSTATUS};

#[link(name = "fwpkclnt.sys", kind = "raw-dylib", modifiers = "+verbatim")]
unsafe extern "system" {
    /// `FwpsCalloutRegister3`.
    pub fn FwpsCalloutRegister3(
        deviceObject: *mut c_void,
        callout: *const FWPS_CALLOUT3,
        calloutId: *mut u32,
    ) -> NTSTATUS;
    /// `FwpsCalloutUnregisterById0`.
    pub fn FwpsCalloutUnregisterById0(calloutId: u32) -> NTSTATUS;
    /// `FwpsRedirectHandleCreate0`.
    pub fn FwpsRedirectHandleCreate0(providerGuid: *const GUID, flags: u32, redirectHandle: *mut HANDLE) -> NTSTATUS;
    /// `FwpsRedirectHandleDestroy0`.
    pub fn FwpsRedirectHandleDestroy0(redirectHandle: HANDLE);
    /// `FwpsQueryConnectionRedirectState0`.
    pub fn FwpsQueryConnectionRedirectState0(
        redirectRecords: HANDLE,
        redirectHandle: HANDLE,
        redirectContext: *mut *mut c_void,
    ) -> FWPS_CONNECTION_REDIRECT_STATE;
    /// `FwpsAcquireClassifyHandle0`.
    pub fn FwpsAcquireClassifyHandle0(
        classifyContext: *mut c_void,
        reserved: u32,
        classifyHandle: *mut u64,
    ) -> NTSTATUS;
    /// `FwpsReleaseClassifyHandle0`.
    pub fn FwpsReleaseClassifyHandle0(classifyHandle: u64);
    /// `FwpsAcquireWritableLayerDataPointer0`.
    pub fn FwpsAcquireWritableLayerDataPointer0(
        classifyHandle: u64,
        filterId: u64,
        flags: u32,
        writableLayerData: *mut *mut c_void,
        classifyOut: *mut FWPS_CLASSIFY_OUT0,
    ) -> NTSTATUS;
    /// `FwpsApplyModifiedLayerData0`.
    pub fn FwpsApplyModifiedLayerData0(classifyHandle: u64, modifiedLayerData: *mut c_void, flags: u32);
    /// `FwpsPendClassify0`.
    pub fn FwpsPendClassify0(
        classifyHandle: u64,
        filterId: u64,
        flags: u32,
        classifyOut: *mut FWPS_CLASSIFY_OUT0,
    ) -> NTSTATUS;
    /// `FwpsCompleteClassify0`.
    pub fn FwpsCompleteClassify0(classifyHandle: u64, flags: u32, classifyOut: *const FWPS_CLASSIFY_OUT0);

    /// `FwpmEngineOpen0` (kernel: NTSTATUS).
    pub fn FwpmEngineOpen0(
        serverName: *const u16,
        authnService: u32,
        authIdentity: *mut c_void,
        session: *const FWPM_SESSION0,
        engineHandle: *mut HANDLE,
    ) -> NTSTATUS;
    /// `FwpmEngineClose0`.
    pub fn FwpmEngineClose0(engineHandle: HANDLE) -> NTSTATUS;
    /// `FwpmTransactionBegin0`.
    pub fn FwpmTransactionBegin0(engineHandle: HANDLE, flags: u32) -> NTSTATUS;
    /// `FwpmTransactionCommit0`.
    pub fn FwpmTransactionCommit0(engineHandle: HANDLE) -> NTSTATUS;
    /// `FwpmTransactionAbort0`.
    pub fn FwpmTransactionAbort0(engineHandle: HANDLE) -> NTSTATUS;
    /// `FwpmProviderAdd0`.
    pub fn FwpmProviderAdd0(engineHandle: HANDLE, provider: *const FWPM_PROVIDER0, sd: *mut c_void) -> NTSTATUS;
    /// `FwpmSubLayerAdd0`.
    pub fn FwpmSubLayerAdd0(engineHandle: HANDLE, subLayer: *const FWPM_SUBLAYER0, sd: *mut c_void) -> NTSTATUS;
    /// `FwpmCalloutAdd0`.
    pub fn FwpmCalloutAdd0(
        engineHandle: HANDLE,
        callout: *const FWPM_CALLOUT0,
        sd: *mut c_void,
        id: *mut u32,
    ) -> NTSTATUS;
    /// `FwpmFilterAdd0`.
    pub fn FwpmFilterAdd0(engineHandle: HANDLE, filter: *const FWPM_FILTER0, sd: *mut c_void, id: *mut u64)
    -> NTSTATUS;
    /// `FwpmFilterDeleteById0`.
    pub fn FwpmFilterDeleteById0(engineHandle: HANDLE, id: u64) -> NTSTATUS;
    /// `FwpmBfeStateGet0`.
    pub fn FwpmBfeStateGet0() -> FWPM_SERVICE_STATE;
    /// `FwpmBfeStateSubscribeChanges0`.
    pub fn FwpmBfeStateSubscribeChanges0(
        deviceObject: *mut c_void,
        callback: FWPM_SERVICE_STATE_CHANGE_CALLBACK0,
        context: *mut c_void,
        changeHandle: *mut HANDLE,
    ) -> NTSTATUS;
    /// `FwpmBfeStateUnsubscribeChanges0`.
    pub fn FwpmBfeStateUnsubscribeChanges0(changeHandle: HANDLE) -> NTSTATUS;
}

#[link(name = "ksecdd.sys", kind = "raw-dylib", modifiers = "+verbatim")]
unsafe extern "system" {
    /// `BCryptGenRandom` (bcrypt.h). Kernel-mode callers link ksecdd (the
    /// routine is exported by `ksecdd.sys`) and call it at PASSIVE_LEVEL;
    /// with [`BCRYPT_USE_SYSTEM_PREFERRED_RNG`], `hAlgorithm` is null.
    pub fn BCryptGenRandom(hAlgorithm: *mut c_void, pbBuffer: *mut u8, cbBuffer: u32, dwFlags: u32) -> NTSTATUS;
}

/// `BCRYPT_USE_SYSTEM_PREFERRED_RNG`: the system's preferred random number
/// generator, no algorithm handle.
pub const BCRYPT_USE_SYSTEM_PREFERRED_RNG: u32 = 0x0000_0002;

// `wdmsec.lib` is a static library of the WDK (no DLL): its routine is linked
// into the driver image, and what it calls comes from ntoskrnl.exe.
#[link(name = "wdmsec", kind = "static", modifiers = "-bundle")]
unsafe extern "system" {
    /// `WdmlibIoCreateDeviceSecure` (wdmsec.h): `IoCreateDevice` with a
    /// default security descriptor from an SDDL string and a device class
    /// GUID (under which an administrator may override the descriptor).
    /// Pointers are the wdm.h types (`PDRIVER_OBJECT`, `PUNICODE_STRING`,
    /// `PCUNICODE_STRING`, `PDEVICE_OBJECT *`), declared opaque here.
    pub fn WdmlibIoCreateDeviceSecure(
        DriverObject: *mut c_void,
        DeviceExtensionSize: u32,
        DeviceName: *mut c_void,
        DeviceType: u32,
        DeviceCharacteristics: u32,
        Exclusive: u8,
        DefaultSDDLString: *const c_void,
        DeviceClassGuid: *const GUID,
        DeviceObject: *mut *mut c_void,
    ) -> NTSTATUS;
}

/// `SDDL_DEVOBJ_SYS_ALL_ADM_ALL` (wdmsec.h): protected DACL, all access for
/// SYSTEM and the Administrators group, nothing for anyone else.
pub const SDDL_DEVOBJ_SYS_ALL_ADM_ALL: &str = "D:P(A;;GA;;;SY)(A;;GA;;;BA)";
