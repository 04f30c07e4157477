//! # wfp-ffi: the WFP kernel surface, declared by hand
//!
//! wdk-sys generates no bindings for `fwpsk.h`/`fwpmk.h` and windows-sys has
//! only the user-mode FWPM types, so the subset the arbiter callout uses is
//! declared here, once, and every `#[repr(C)]` structure carries
//! `size_of`/`offset_of!` assertions for x86_64 taken from Microsoft's
//! published declarations (each module names the page it was checked
//! against).
//!
//! The crate has no dependencies and builds for any target: the structures
//! and constants are plain data, so the callout adapter's tests build real
//! structures on the host. The imported functions (module `imports`) exist only
//! when compiling for Windows, linked with `raw-dylib` against
//! `fwpkclnt.sys` and `ntoskrnl.exe` so no import library is needed.
//!
//! Minimum Windows version: the layouts asserted are the Windows 10 ones
//! (`FWPS_CALLOUT3`/`FWPS_FILTER3` and the full
//! `FWPS_INCOMING_METADATA_VALUES0`), so the driver requires Windows 10.
//!
//! Names follow the C headers so each item can be looked up in the WDK
//! documentation; enum types are `u32` aliases and their values constants,
//! because the kernel may hand us values this build does not know.

#![no_std]
#![allow(
    non_camel_case_types,
    non_snake_case,
    clippy::upper_case_acronyms,
    reason = "declarations keep the C header names so they can be checked against Microsoft's pages"
)]

pub mod bind;
pub mod fields;
pub mod fwpm;
pub mod fwps;
// Kernel builds only (x86_64-pc-windows-msvc): the import of the WDK's
// static `wdmsec.lib` would otherwise be demanded by every user-mode Windows
// binary that links this crate (arbiter.exe and arbiter-proxy.exe, built
// with MinGW and run under Wine in CI).
#[cfg(all(windows, target_env = "msvc"))]
pub mod imports;
pub mod layers;
pub mod persist;
pub mod types;

pub use bind::*;
pub use fwpm::*;
pub use fwps::*;
pub use persist::*;
pub use types::*;
