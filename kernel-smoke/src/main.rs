//! A kernel image built from the portable parts (the core, the WFP
//! declarations, the classify adapter and its `KernelFwps`), linked on Linux
//! with rust-lld, so CI can check what a driver built from them imports.
//!
//! `DriverEntry` registers nothing: it builds the core and the adapter,
//! touches the classify paths so they (and their imports) are in the image,
//! and returns `STATUS_NOT_SUPPORTED`, so an image loaded by mistake is
//! unloaded at once. The real driver is `driver/`, which needs the WDK.

#![no_std]
#![no_main]

extern crate alloc;

use core::alloc::{GlobalAlloc, Layout};
use core::ffi::c_void;
use core::hint::black_box;

use arbiter::{Arbiter, Capacities, Config, Instant, RuleSet};
use arbiter_callout::adapter::RawClassify;
use arbiter_callout::kernel::KernelFwps;
use arbiter_callout::{Callout, CalloutConfig, Family, OWN_FILTER, PendConfig};
use wfp_ffi::imports::{ExAllocatePool2, ExFreePoolWithTag, POOL_FLAG_NON_PAGED};

const STATUS_NOT_SUPPORTED: i32 = 0xC000_00BB_u32 as i32;
const STATUS_INSUFFICIENT_RESOURCES: i32 = 0xC000_009A_u32 as i32;
const POOL_TAG: u32 = u32::from_le_bytes(*b"ArbS");

#[link(name = "ntoskrnl.exe", kind = "raw-dylib", modifiers = "+verbatim")]
unsafe extern "system" {
    fn KeBugCheckEx(code: u32, p1: usize, p2: usize, p3: usize, p4: usize) -> !;
}

// The compiler's memory intrinsics: ntoskrnl exports them (there is no CRT).
#[link(name = "ntoskrnl.exe", kind = "raw-dylib", modifiers = "+verbatim")]
unsafe extern "C" {
    fn memcpy(dst: *mut c_void, src: *const c_void, n: usize) -> *mut c_void;
    fn memmove(dst: *mut c_void, src: *const c_void, n: usize) -> *mut c_void;
    fn memset(dst: *mut c_void, c: i32, n: usize) -> *mut c_void;
    fn memcmp(a: *const c_void, b: *const c_void, n: usize) -> i32;
}

/// Non-paged pool, as wdk-alloc does in the real driver.
struct Pool;

// SAFETY: ExAllocatePool2 returns null or a fresh block of `size` bytes,
// 16-aligned on x64; larger alignments are refused (null).
unsafe impl GlobalAlloc for Pool {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if layout.align() > 16 {
            return core::ptr::null_mut();
        }
        // SAFETY: plain allocation call.
        unsafe { ExAllocatePool2(POOL_FLAG_NON_PAGED, layout.size(), POOL_TAG) }.cast::<u8>()
    }

    unsafe fn dealloc(&self, ptr: *mut u8, _: Layout) {
        // SAFETY: `ptr` came from `alloc` with the same tag (GlobalAlloc contract).
        unsafe { ExFreePoolWithTag(ptr.cast::<c_void>(), POOL_TAG) };
    }
}

#[global_allocator]
static GLOBAL: Pool = Pool;

/// Floating point is used by core's formatting: MSVC's marker symbol.
#[unsafe(no_mangle)]
pub static _fltused: i32 = 0;

#[panic_handler]
fn panic(_: &core::panic::PanicInfo<'_>) -> ! {
    // What wdk-panic does: a panic in the kernel is a bugcheck (MANUALLY_INITIATED_CRASH).
    // SAFETY: KeBugCheckEx never returns.
    unsafe { KeBugCheckEx(0xE2, 0, 0, 0, 0) }
}

/// The entry point (`/ENTRY:DriverEntry`).
#[unsafe(no_mangle)]
pub extern "system" fn DriverEntry(_driver: *mut c_void, _registry_path: *const c_void) -> i32 {
    let intrinsics: [*const c_void; 4] =
        [memcpy as *const c_void, memmove as *const c_void, memset as *const c_void, memcmp as *const c_void];
    black_box(intrinsics);
    let config = Config { own_filter: OWN_FILTER, ..Config::default() };
    let caps = Capacities { endpoints: 16, destinations: 16, known_proxies: 4 };
    let Ok(arbiter) = Arbiter::new(config, caps, RuleSet::default()) else { return STATUS_INSUFFICIENT_RESOURCES };
    let Ok(mut callout) = Callout::new(arbiter, CalloutConfig { ring_bytes: 4096, pend: Some(PendConfig::default()) })
    else {
        return STATUS_INSUFFICIENT_RESOURCES;
    };
    // SAFETY: used only here; with nothing held, completion makes no Fwps call.
    let mut fwps = unsafe { KernelFwps::new() };
    callout.complete_pended(&mut fwps, Instant::ZERO);
    // Keep the classify paths (and so their imports) in the image.
    type Cr = unsafe fn(&mut Callout<RuleSet>, &mut KernelFwps, Family, &RawClassify, Instant);
    type Ac = unsafe fn(&mut Callout<RuleSet>, Family, &RawClassify, Instant);
    black_box(Callout::<RuleSet>::classify_connect_redirect::<KernelFwps> as Cr);
    black_box(Callout::<RuleSet>::classify_auth_connect as Ac);
    black_box(Callout::<RuleSet>::classify_endpoint_closure as Ac);
    black_box(&callout);
    STATUS_NOT_SUPPORTED
}
