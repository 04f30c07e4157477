//! Linux CI stand-in for the WDK's static library `wdmsec.lib`, compiled by
//! `configure_wdk_binary_build` into the driver's build directory. MinGW-w64
//! has no wdmsec; the Linux image is never loaded, so the routine only has to
//! exist with the right symbol: it fails with STATUS_NOT_IMPLEMENTED.
#![no_std]

/// `WdmlibIoCreateDeviceSecure`: see wfp-ffi for the declaration.
#[unsafe(no_mangle)]
pub extern "system" fn WdmlibIoCreateDeviceSecure(
    _driver: *mut u8,
    _extension_size: u32,
    _name: *mut u8,
    _device_type: u32,
    _characteristics: u32,
    _exclusive: u8,
    _sddl: *const u8,
    _class_guid: *const u8,
    _device: *mut *mut u8,
) -> i32 {
    0xC000_0002_u32 as i32
}
