//! # arbiter-driver: the kernel shell
//!
//! Everything with a decision in it lives in `arbiter` (the core) and
//! `arbiter-callout` (the classify adapter), both tested on Linux. This crate
//! is the thin WDM shell around them:
//!
//! - `DriverEntry`: the control device (`\Device\ArbiterControl`), our single
//!   redirect handle, the six callouts (FwpsCalloutRegister3), and a BFE
//!   state subscription so the filters are added whether the driver starts
//!   before or after the Base Filtering Engine.
//! - One FWPM transaction (dynamic session): provider, sublayer (weight from
//!   `Parameters\SublayerWeight`), six callouts, six filters.
//! - classifyFn3 for each layer: take the lock, hand the raw arguments to the
//!   adapter with [`KernelFwps`].
//! - IOCTL_CONTROL: copy the request out of the system buffer (it is also the
//!   reply buffer), run `arbiter::control::handle`, which validates length,
//!   magic, version and every field before changing anything.
//! - Unload: complete held classifications, close the engine (the dynamic
//!   session removes our filters), unregister callouts, destroy the handle.
//!
//! It needs the WDK: it cannot be built, checked or run on Linux.

#![no_std]
#![cfg_attr(not(test), deny(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing))]

extern crate alloc;
#[cfg(not(test))]
extern crate wdk_panic;

use alloc::boxed::Box;
use alloc::vec::Vec;
use core::cell::UnsafeCell;
use core::ffi::c_void;
use core::ptr::{null, null_mut};
use core::sync::atomic::{AtomicU64, Ordering};

use arbiter::Policy;
use arbiter::audit::{AuditRecord, Event, GuardRecord};
use arbiter::boot::BootMode;
use arbiter::compiled::CompiledRules;
use arbiter::compiled::blob::{self, BlobError};
use arbiter::control::{
    Access, Caller, DriverCounters, HandleId, Handles, MAX_RULES_LEN, REQUEST_HEADER_LEN, Request, RulesRejected,
    Status,
};
use arbiter::{Arbiter, Capacities, Config, Instant, RuleSet};
use arbiter_callout::adapter::RawClassify;
use arbiter_callout::boot::BootFilter;
use arbiter_callout::boot_fwpm;
use arbiter_callout::control::{self, Device};
use arbiter_callout::filters::{FILTERS, FilterLayer};
use arbiter_callout::kernel::KernelFwps;
use arbiter_callout::shell::{self, CalloutLock, Kernel, Lifecycle};
use arbiter_callout::{Callout, CalloutConfig, Family, OWN_FILTER, PendTimer};
#[cfg(not(test))]
use wdk_alloc::WdkAllocator;
use wdk_sys::ntddk::{
    IoCreateSymbolicLink, IoDeleteDevice, IoDeleteSymbolicLink, IoGetRequestorProcessId, IoOpenDriverRegistryKey,
    IofCompleteRequest, KeAcquireSpinLockRaiseToDpc, KeCancelTimer, KeDelayExecutionThread, KeFlushQueuedDpcs,
    KeInitializeDpc, KeInitializeTimer, KeQueryInterruptTimePrecise, KeReleaseSpinLock, KeSetTimer,
    RtlInitUnicodeString, ZwClose, ZwQueryValueKey,
};
use wdk_sys::{
    _DRIVER_REGKEY_TYPE, _KEY_VALUE_INFORMATION_CLASS, _MODE, DEVICE_OBJECT, DRIVER_OBJECT, FILE_DEVICE_SECURE_OPEN,
    IO_NO_INCREMENT, IO_STACK_LOCATION, IRP, IRP_MJ_CLEANUP, IRP_MJ_CLOSE, IRP_MJ_CREATE, IRP_MJ_DEVICE_CONTROL, KDPC,
    KEY_READ, KIRQL, KSPIN_LOCK, KTIMER, LARGE_INTEGER, NTSTATUS, PCUNICODE_STRING, STATUS_ACCESS_DENIED,
    STATUS_BUFFER_TOO_SMALL, STATUS_DEVICE_BUSY, STATUS_INSUFFICIENT_RESOURCES, STATUS_INVALID_DEVICE_REQUEST,
    STATUS_INVALID_PARAMETER, STATUS_SHARING_VIOLATION, STATUS_SUCCESS, UNICODE_STRING,
};
use wfp_ffi::imports::*;
use wfp_ffi::*;

#[cfg(not(test))]
#[global_allocator]
static GLOBAL_ALLOCATOR: WdkAllocator = WdkAllocator;

/// Our provider {a7b1e4f0-5c2d-4e8a-9b61-3f0d2c7e1a01}.
const PROVIDER_KEY: GUID = GUID::new(0xa7b1_e4f0, 0x5c2d, 0x4e8a, [0x9b, 0x61, 0x3f, 0x0d, 0x2c, 0x7e, 0x1a, 0x01]);
/// Our device class: administrators may override the device's default
/// security descriptor under this class's registry key.
const DEVICE_CLASS_KEY: GUID = GUID::new(0xa7b1_e4f0, 0x5c2d, 0x4e8a, [0x9b, 0x61, 0x3f, 0x0d, 0x2c, 0x7e, 0x1c, 0x01]);

// The SDDL string passed at device creation is wdmsec.h's.
const _: () = assert!(eq_str("D:P(A;;GA;;;SY)(A;;GA;;;BA)", SDDL_DEVOBJ_SYS_ALL_ADM_ALL));

#[allow(clippy::indexing_slicing, reason = "const evaluation: an index out of bounds fails the build")]
const fn eq_str(a: &str, b: &str) -> bool {
    let (a, b) = (a.as_bytes(), b.as_bytes());
    if a.len() != b.len() {
        return false;
    }
    let mut i = 0;
    while i < a.len() {
        if a[i] != b[i] {
            return false;
        }
        i += 1;
    }
    true
}

/// `STATUS_FWP_FILTER_NOT_FOUND` (ntstatus.h): FwpmFilterDeleteById0 of a filter that is gone.
const STATUS_FWP_FILTER_NOT_FOUND: NTSTATUS = 0xC022_0003_u32 as i32;
/// `STATUS_FWP_NOT_FOUND` (ntstatus.h): the generic "object does not exist".
const STATUS_FWP_NOT_FOUND: NTSTATUS = 0xC022_0008_u32 as i32;

/// Our sublayer.
const SUBLAYER_KEY: GUID = GUID::new(0xa7b1_e4f0, 0x5c2d, 0x4e8a, [0x9b, 0x61, 0x3f, 0x0d, 0x2c, 0x7e, 0x1a, 0x02]);

/// Our six callouts, in the order of `arbiter_callout::filters::FILTERS`
/// (the filters the driver adds, defined once): (callout key, which classify).
const LAYERS: [(GUID, Kind); 6] = [
    (callout_key(0x11), Kind::ConnectRedirect(Family::V4)),
    (callout_key(0x12), Kind::ConnectRedirect(Family::V6)),
    (callout_key(0x21), Kind::AuthConnect(Family::V4)),
    (callout_key(0x22), Kind::AuthConnect(Family::V6)),
    (callout_key(0x31), Kind::Closure(Family::V4)),
    (callout_key(0x32), Kind::Closure(Family::V6)),
];

// The callouts line up with the shared filter list, layer by layer.
#[allow(clippy::indexing_slicing, reason = "const evaluation: an index out of bounds fails the build")]
const _: () = {
    let mut i = 0;
    while i < LAYERS.len() {
        let layer = match LAYERS[i].1 {
            Kind::ConnectRedirect(Family::V4) => FilterLayer::ConnectRedirectV4,
            Kind::ConnectRedirect(Family::V6) => FilterLayer::ConnectRedirectV6,
            Kind::AuthConnect(Family::V4) => FilterLayer::AuthConnectV4,
            Kind::AuthConnect(Family::V6) => FilterLayer::AuthConnectV6,
            Kind::Closure(Family::V4) => FilterLayer::EndpointClosureV4,
            Kind::Closure(Family::V6) => FilterLayer::EndpointClosureV6,
        };
        assert!(FILTERS[i].layer as u8 == layer as u8, "LAYERS and FILTERS out of step");
        i += 1;
    }
};

const fn callout_key(n: u8) -> GUID {
    GUID::new(0xa7b1_e4f0, 0x5c2d, 0x4e8a, [0x9b, 0x61, 0x3f, 0x0d, 0x2c, 0x7e, 0x1b, n])
}

#[derive(Clone, Copy)]
enum Kind {
    ConnectRedirect(Family),
    AuthConnect(Family),
    Closure(Family),
}

/// Everything the driver keeps, behind [`STATE`]'s spin lock.
struct Driver {
    callout: Box<Callout<Box<CompiledRules>>>,
    redirect_handle: HANDLE,
    callout_ids: [u32; 6],
    bfe_subscription: HANDLE,
    handles: Handles,
    instance: u64,
}

/// A spin-locked global: classify runs at up to DISPATCH_LEVEL on every CPU.
struct Locked {
    lock: UnsafeCell<KSPIN_LOCK>,
    state: UnsafeCell<Option<Box<Driver>>>,
}

// SAFETY: `state` is only reached through `with`, which holds the spin lock.
unsafe impl Sync for Locked {}

static STATE: Locked = Locked { lock: UnsafeCell::new(0), state: UnsafeCell::new(None) };

impl Locked {
    /// Runs `f` with the lock held (raises to DISPATCH_LEVEL).
    fn with<R>(&self, f: impl FnOnce(&mut Option<Box<Driver>>) -> R) -> R {
        // SAFETY: the lock word is a KSPIN_LOCK initialised to 0 (unlocked).
        let irql: KIRQL = unsafe { KeAcquireSpinLockRaiseToDpc(self.lock.get()) };
        // SAFETY: the lock is held: we are the only one touching `state`.
        let r = f(unsafe { &mut *self.state.get() });
        // SAFETY: releases the lock taken above at the IRQL it returned.
        unsafe { KeReleaseSpinLock(self.lock.get(), irql) };
        r
    }
}

/// Monotonic milliseconds (interrupt time is in 100 ns units).
fn now() -> Instant {
    // SAFETY: a null QPC out pointer is allowed.
    let t = unsafe { KeQueryInterruptTimePrecise(null_mut()) };
    Instant::from_millis(t / 10_000)
}

fn unicode(s: &'static [u16]) -> UNICODE_STRING {
    let mut u = UNICODE_STRING::default();
    // SAFETY: `s` is a NUL-terminated static UTF-16 string.
    unsafe { RtlInitUnicodeString(&mut u, s.as_ptr()) };
    u
}

/// A NUL-terminated UTF-16 literal (ASCII only).
macro_rules! w {
    ($s:literal) => {{
        const S: &str = concat!($s, "\0");
        const N: usize = S.len();
        #[allow(clippy::indexing_slicing, reason = "const evaluation: an index out of bounds fails the build")]
        const W: [u16; N] = {
            let b = S.as_bytes();
            let mut w = [0u16; N];
            let mut i = 0;
            while i < N {
                w[i] = b[i] as u16;
                i += 1;
            }
            w
        };
        &W
    }};
}

/// The entry point.
///
/// # Safety
///
/// Called by the I/O manager with a valid driver object and registry path.
#[cfg_attr(not(test), unsafe(export_name = "DriverEntry"))]
pub unsafe extern "system" fn driver_entry(driver: *mut DRIVER_OBJECT, registry_path: PCUNICODE_STRING) -> NTSTATUS {
    let _ = registry_path;
    let mut name = unicode(w!(r"\Device\ArbiterControl"));
    let mut link = unicode(w!(r"\DosDevices\ArbiterControl"));
    let sddl = unicode(w!("D:P(A;;GA;;;SY)(A;;GA;;;BA)"));
    let mut device: *mut DEVICE_OBJECT = null_mut();
    // Only SYSTEM and administrators may open it (SDDL_DEVOBJ_SYS_ALL_ADM_ALL),
    // FILE_DEVICE_SECURE_OPEN applies that to every name under the device
    // too, and it is not exclusive: several readers, one writer at a time
    // (arbiter::control::Handles).
    // SAFETY: valid driver object; initialised strings; a static GUID; `device` is an out pointer.
    let status = unsafe {
        WdmlibIoCreateDeviceSecure(
            driver.cast(),
            0,
            (&raw mut name).cast(),
            arbiter::control::FILE_DEVICE_ARBITER,
            FILE_DEVICE_SECURE_OPEN,
            0,
            (&raw const sddl).cast(),
            &DEVICE_CLASS_KEY,
            (&raw mut device).cast(),
        )
    };
    if status < 0 {
        return status;
    }
    // SAFETY: both strings are initialised above.
    let status = unsafe { IoCreateSymbolicLink(&mut link, &mut name) };
    if status < 0 {
        // SAFETY: the device was created above and nothing references it yet.
        unsafe { IoDeleteDevice(device) };
        return status;
    }
    // SAFETY: DriverEntry owns the driver object; the major function table is ours to fill.
    let d = unsafe { &mut *driver };
    for (major, f) in [
        (IRP_MJ_CREATE, dispatch_create as DispatchFn),
        (IRP_MJ_CLEANUP, dispatch_cleanup),
        (IRP_MJ_CLOSE, dispatch_close),
        (IRP_MJ_DEVICE_CONTROL, dispatch_device_control),
    ] {
        if let Some(slot) = d.MajorFunction.get_mut(major as usize) {
            *slot = Some(f);
        }
    }
    d.DriverUnload = Some(driver_unload);

    let status = start(driver, device);
    if status < 0 {
        stop();
        // SAFETY: created above.
        let _ = unsafe { IoDeleteSymbolicLink(&mut link) };
        // SAFETY: created above; the callouts that used it are unregistered by `stop`.
        unsafe { IoDeleteDevice(device) };
    }
    status
}

/// The core and the adapter, built straight into pool memory: the callout
/// is over 2 KiB, and a copy in a kernel stack frame is one too many.
/// Each step is its own frame so that no frame holds two copies.
#[inline(never)]
fn new_callout() -> Option<Box<Callout<Box<CompiledRules>>>> {
    let rules = new_rules()?;
    let config = Config { own_filter: OWN_FILTER, hash_seed: seed(), ..Config::default() };
    let arbiter = Arbiter::new(config, Capacities::default(), rules).ok()?;
    let callout = Callout::new(arbiter, CalloutConfig::default()).ok()?;
    try_box(callout)
}

/// The empty rule set, compiled into pool memory.
#[inline(never)]
fn new_rules() -> Option<Box<CompiledRules>> {
    try_box(CompiledRules::compile(&RuleSet::default()).ok()?)
}

/// `Box::new` that returns `None` when pool memory is short instead of
/// bugchecking.
fn try_box<T>(value: T) -> Option<Box<T>> {
    let layout = core::alloc::Layout::new::<T>();
    if layout.size() == 0 {
        return Some(Box::new(value));
    }
    // SAFETY: a layout of non-zero size.
    let p = unsafe { alloc::alloc::alloc(layout) }.cast::<T>();
    if p.is_null() {
        return None;
    }
    // SAFETY: `p` is a fresh allocation sized and aligned for `T`.
    unsafe { p.write(value) };
    // SAFETY: allocated by the global allocator with `Layout::new::<T>()`, as `Box` frees it.
    Some(unsafe { Box::from_raw(p) })
}

/// Core, adapter, redirect handle, callouts, BFE subscription.
fn start(driver: *mut DRIVER_OBJECT, device: *mut DEVICE_OBJECT) -> NTSTATUS {
    // First, at PASSIVE_LEVEL and before any lock: the registry.
    let life = Lifecycle::start(&mut Wdm { driver });
    // SAFETY: DriverEntry is the only thread touching LIFE until the BFE
    // subscription below; from then on it is only read.
    unsafe { *LIFE.0.get() = Some(life) };
    let status = draw_seed();
    if status < 0 {
        return status;
    }
    init_pend_timer();
    let Some(mut callout) = new_callout() else { return STATUS_INSUFFICIENT_RESOURCES };
    let mut redirect_handle: HANDLE = null_mut();
    // SAFETY: a static GUID and an out pointer.
    let status = unsafe { FwpsRedirectHandleCreate0(&PROVIDER_KEY, 0, &mut redirect_handle) };
    if status < 0 {
        return status;
    }
    callout.set_redirect_handle(redirect_handle);
    let instance = now().as_millis() ^ (driver as u64).rotate_left(17);
    let state = Box::new(Driver {
        callout,
        redirect_handle,
        callout_ids: [0; 6],
        bfe_subscription: null_mut(),
        handles: Handles::new(),
        instance,
    });
    STATE.with(|s| *s = Some(state));
    // Register the six callouts (run-time side); filters come with BFE.
    for (i, (key, kind)) in LAYERS.iter().enumerate() {
        let c = FWPS_CALLOUT3 {
            calloutKey: *key,
            flags: 0,
            classifyFn: Some(match kind {
                Kind::ConnectRedirect(Family::V4) => classify_cr4,
                Kind::ConnectRedirect(Family::V6) => classify_cr6,
                Kind::AuthConnect(Family::V4) => classify_ac4,
                Kind::AuthConnect(Family::V6) => classify_ac6,
                Kind::Closure(Family::V4) => classify_ec4,
                Kind::Closure(Family::V6) => classify_ec6,
            }),
            notifyFn: Some(notify),
            flowDeleteFn: None,
        };
        let mut id = 0u32;
        // SAFETY: our device object and a fully initialised FWPS_CALLOUT3.
        let status = unsafe { FwpsCalloutRegister3(device.cast(), &c, &mut id) };
        if status < 0 {
            return status;
        }
        STATE.with(|s| {
            if let Some(slot) = s.as_mut().and_then(|d| d.callout_ids.get_mut(i)) {
                *slot = id;
            }
        });
    }
    let mut subscription: HANDLE = null_mut();
    // SAFETY: our device object, a static callback, an out pointer.
    let status =
        unsafe { FwpmBfeStateSubscribeChanges0(device.cast(), Some(bfe_changed), null_mut(), &mut subscription) };
    if status < 0 {
        return status;
    }
    STATE.with(|s| {
        if let Some(d) = s.as_mut() {
            d.bfe_subscription = subscription;
        }
    });
    // SAFETY: no arguments.
    if unsafe { FwpmBfeStateGet0() } == FWPM_SERVICE_RUNNING {
        return add_filters(driver);
    }
    STATUS_SUCCESS
}

/// The lifecycle (`arbiter_callout::shell`), set once at the start of
/// DriverEntry and only read afterwards; its methods synchronise themselves.
struct LifeCell(UnsafeCell<Option<Lifecycle>>);

// SAFETY: written once by DriverEntry before anything else can run; read-only after.
unsafe impl Sync for LifeCell {}

static LIFE: LifeCell = LifeCell(UnsafeCell::new(None));

fn life() -> Option<&'static Lifecycle> {
    // SAFETY: see LifeCell: no writer once other threads can call this.
    unsafe { (*LIFE.0.get()).as_ref() }
}

/// The shell's kernel: the real routines.
struct Wdm {
    driver: *mut DRIVER_OBJECT,
}

impl Kernel for Wdm {
    fn irql(&self) -> u8 {
        let irql: u64;
        // SAFETY: reading CR8 (the IRQL on x64) has no side effect; kernel mode.
        unsafe { core::arch::asm!("mov {}, cr8", out(reg) irql, options(nomem, nostack, preserves_flags)) };
        u8::try_from(irql).unwrap_or(u8::MAX)
    }

    fn read_sublayer_weight(&mut self) -> Option<u16> {
        read_sublayer_weight(self.driver)
    }

    fn open_engine(&mut self) -> Result<usize, i32> {
        let mut session: FWPM_SESSION0 = zeroed_session();
        session.flags = FWPM_SESSION_FLAG_DYNAMIC;
        let mut engine: HANDLE = null_mut();
        // SAFETY: local session and out pointer; no server name or identity.
        let status = unsafe { FwpmEngineOpen0(null(), RPC_C_AUTHN_DEFAULT, null_mut(), &session, &mut engine) };
        if status < 0 { Err(status) } else { Ok(engine as usize) }
    }

    fn add_filters(&mut self, engine: usize, weight: u16) -> Result<[u64; 2], i32> {
        add_in_transaction(engine as HANDLE, weight)
    }

    fn close_engine(&mut self, engine: usize) {
        // SAFETY: an engine handle we opened; the dynamic session's objects go with it.
        unsafe { FwpmEngineClose0(engine as HANDLE) };
    }

    fn unsubscribe_bfe(&mut self) {
        let subscription = STATE.with(|s| s.as_mut().map(|d| core::mem::replace(&mut d.bfe_subscription, null_mut())));
        if let Some(h) = subscription.filter(|h| !h.is_null()) {
            // SAFETY: a subscription we made.
            unsafe { FwpmBfeStateUnsubscribeChanges0(h) };
        }
    }

    fn complete_held(&mut self) {
        // SAFETY: completions use the handles they were pended with.
        let mut fwps = unsafe { KernelFwps::new() };
        // Decided under the lock, completed after it; a classifyFn that is
        // pending with the lock released, or a batch the pend timer's DPC
        // has out, is waited for, then completed too. 500 waits of at least
        // 1 ms: KeDelayExecutionThread rounds up to the system timer's
        // resolution, so up to about 8 s at the default 15.6 ms.
        for _ in 0..500 {
            if shell::complete_held(&mut DriverLock, &mut fwps) == 0 {
                break;
            }
            let mut one_ms = LARGE_INTEGER { QuadPart: -10_000 };
            // SAFETY: PASSIVE_LEVEL (unload); a relative interval we own.
            let _ = unsafe { KeDelayExecutionThread(_MODE::KernelMode as i8, 0, &mut one_ms) };
        }
    }

    fn boot_state(&mut self) -> (BootMode, Option<u64>) {
        let state = STATE.with(|s| {
            let a = s.as_ref()?.callout.arbiter();
            Some((a.policy().boot_mode(), a.proxy().map(|p| p.pid)))
        });
        state.unwrap_or((BootMode::Open, None))
    }

    fn add_override(&mut self, engine: usize, filter: &BootFilter) -> Result<u64, i32> {
        let (mut conditions, mut provider) = ([boot_fwpm::NO_CONDITION; 2], GUID::default());
        let f =
            boot_fwpm::filter(filter, &mut conditions, &mut provider, w!("arbiter boot override").as_ptr().cast_mut());
        let mut id = 0u64;
        // SAFETY: our open engine (PASSIVE_LEVEL, no lock held); `f` and what it points at live across the call.
        let status = unsafe { FwpmFilterAdd0(engine as HANDLE, &f, null_mut(), &mut id) };
        if status < 0 { Err(status) } else { Ok(id) }
    }

    fn delete_filter(&mut self, engine: usize, id: u64) -> Result<(), i32> {
        // SAFETY: our open engine (PASSIVE_LEVEL, no lock held).
        let status = unsafe { FwpmFilterDeleteById0(engine as HANDLE, id) };
        // Gone already: the service removed the boot set, override included.
        match status {
            s if s >= 0 || s == STATUS_FWP_FILTER_NOT_FOUND || s == STATUS_FWP_NOT_FOUND => Ok(()),
            s => Err(s),
        }
    }

    fn audit_guard(&mut self, record: GuardRecord) {
        let at = now();
        STATE.with(|s| {
            if let Some(d) = s.as_mut() {
                let (arbiter, ring) = d.callout.parts_mut();
                ring.push_record(&AuditRecord { seq: arbiter.allocate_seq(), at, event: Event::Guard(record) });
            }
        });
    }

    fn unregister_callouts(&mut self) -> Result<(), i32> {
        let ids = STATE.with(|s| s.as_ref().map(|d| d.callout_ids)).unwrap_or([0; 6]);
        let mut result = Ok(());
        for id in ids.into_iter().filter(|&id| id != 0) {
            // A classifyFn still running makes it STATUS_DEVICE_BUSY; the
            // driver must not unload with a callout registered: wait (500
            // waits of at least 1 ms, as above).
            let mut status = STATUS_SUCCESS;
            for _ in 0..500 {
                // SAFETY: a callout id we registered; no filter references it any more.
                status = unsafe { FwpsCalloutUnregisterById0(id) };
                if status != STATUS_DEVICE_BUSY {
                    break;
                }
                let mut ten_ms = LARGE_INTEGER { QuadPart: -100_000 };
                // SAFETY: PASSIVE_LEVEL (unload); a relative interval we own.
                let _ = unsafe { KeDelayExecutionThread(_MODE::KernelMode as i8, 0, &mut ten_ms) };
            }
            if status < 0 && result.is_ok() {
                result = Err(status);
            }
        }
        result
    }
}

/// The hash seed: drawn once in DriverEntry from the system CSPRNG, read-only after.
static SEED: [AtomicU64; 4] = [const { AtomicU64::new(0) }; 4];

fn seed() -> [u64; 4] {
    SEED.each_ref().map(|w| w.load(Ordering::Relaxed))
}

/// `BCryptGenRandom(BCRYPT_USE_SYSTEM_PREFERRED_RNG)` at PASSIVE_LEVEL, before
/// any lock: the flow and endpoint tables are keyed by traffic outsiders
/// choose, so their seed must not be guessable.
fn draw_seed() -> NTSTATUS {
    let mut bytes = [0u8; 32];
    // SAFETY: a 32-byte buffer we own; no algorithm handle with this flag; PASSIVE_LEVEL.
    let status = unsafe { BCryptGenRandom(null_mut(), bytes.as_mut_ptr(), 32, BCRYPT_USE_SYSTEM_PREFERRED_RNG) };
    if status < 0 {
        return status;
    }
    for (word, chunk) in SEED.iter().zip(bytes.chunks_exact(8)) {
        let mut w = [0u8; 8];
        w.copy_from_slice(chunk);
        word.store(u64::from_le_bytes(w), Ordering::Relaxed);
    }
    STATUS_SUCCESS
}

/// `Parameters\SublayerWeight` (REG_DWORD), or the default.
fn read_sublayer_weight(driver: *mut DRIVER_OBJECT) -> Option<u16> {
    let mut key: HANDLE = null_mut();
    // SAFETY: our driver object; `key` is an out pointer.
    let status =
        unsafe { IoOpenDriverRegistryKey(driver, _DRIVER_REGKEY_TYPE::DriverRegKeyParameters, KEY_READ, 0, &mut key) };
    if status < 0 {
        return None;
    }
    let mut name = unicode(w!("SublayerWeight"));
    // KEY_VALUE_PARTIAL_INFORMATION: TitleIndex, Type, DataLength, Data[4].
    let mut buf = [0u32; 4];
    let mut got = 0u32;
    // SAFETY: an open key, a valid name, and a 16-byte buffer we own.
    let status = unsafe {
        ZwQueryValueKey(
            key,
            &mut name,
            _KEY_VALUE_INFORMATION_CLASS::KeyValuePartialInformation,
            buf.as_mut_ptr().cast(),
            16,
            &mut got,
        )
    };
    // SAFETY: the key was opened above.
    let _ = unsafe { ZwClose(key) };
    const REG_DWORD: u32 = 4;
    match (status >= 0, buf) {
        (true, [_, REG_DWORD, 4, v]) => u16::try_from(v).ok(),
        _ => None,
    }
}

/// BFE state callback: add the filters when BFE comes up, forget the engine when it goes.
unsafe extern "system" fn bfe_changed(_context: *mut c_void, state: FWPM_SERVICE_STATE) {
    match state {
        FWPM_SERVICE_RUNNING => {
            let _ = add_filters(null_mut());
        }
        FWPM_SERVICE_STOP_PENDING => {
            if let Some(life) = life() {
                life.bfe_stopping(&mut Wdm { driver: null_mut() });
                // Audits that the boot set applies again (block mode).
                life.sync_guard(&mut Wdm { driver: null_mut() });
            }
        }
        _ => {}
    }
}

/// Opens the engine and adds our objects in one transaction, once (the
/// lifecycle decides who), and tells the adapter our filter ids. Dynamic
/// session: everything is removed when the engine handle closes.
fn add_filters(driver: *mut DRIVER_OBJECT) -> NTSTATUS {
    let Some(life) = life() else { return STATUS_INVALID_DEVICE_REQUEST };
    match life.bfe_running(&mut Wdm { driver }) {
        Ok(Some(ids)) => {
            STATE.with(|s| {
                if let Some(d) = s.as_mut() {
                    let [v4, v6] = ids;
                    d.callout.set_own_filters(v4, v6);
                }
            });
            // A proxy registered before the BFE came up: lift the boot set now.
            life.sync_guard(&mut Wdm { driver });
            STATUS_SUCCESS
        }
        Ok(None) => STATUS_SUCCESS,
        Err(status) => status,
    }
}

fn zeroed_session() -> FWPM_SESSION0 {
    FWPM_SESSION0 {
        sessionKey: GUID::default(),
        displayData: FWPM_DISPLAY_DATA0 { name: w!("arbiter").as_ptr().cast_mut(), description: null_mut() },
        flags: 0,
        txnWaitTimeoutInMSec: 0,
        processId: 0,
        sid: null_mut(),
        username: null_mut(),
        kernelMode: 0,
    }
}

/// Returns the connect-redirect filter ids (V4, V6) on success.
fn add_in_transaction(engine: HANDLE, weight: u16) -> Result<[u64; 2], NTSTATUS> {
    let check = |status: NTSTATUS| if status < 0 { Err(status) } else { Ok(()) };
    let display = FWPM_DISPLAY_DATA0 { name: w!("arbiter").as_ptr().cast_mut(), description: null_mut() };
    let empty_blob = FWP_BYTE_BLOB { size: 0, data: null_mut() };
    let mut provider_key = PROVIDER_KEY;
    // SAFETY: an open engine.
    check(unsafe { FwpmTransactionBegin0(engine, 0) })?;
    let mut body = || -> Result<[u64; 2], NTSTATUS> {
        let provider = FWPM_PROVIDER0 {
            providerKey: PROVIDER_KEY,
            displayData: display,
            flags: 0,
            providerData: empty_blob,
            serviceName: null_mut(),
        };
        // SAFETY: engine in a transaction; initialised structure; no security descriptor.
        check(unsafe { FwpmProviderAdd0(engine, &provider, null_mut()) })?;
        let sublayer = FWPM_SUBLAYER0 {
            subLayerKey: SUBLAYER_KEY,
            displayData: display,
            flags: 0,
            providerKey: &mut provider_key,
            providerData: empty_blob,
            weight,
        };
        // SAFETY: as above.
        check(unsafe { FwpmSubLayerAdd0(engine, &sublayer, null_mut()) })?;
        let mut redirect_ids = [0u64; 2];
        for (i, ((key, _), spec)) in LAYERS.iter().zip(FILTERS.iter()).enumerate() {
            let layer = &spec.layer.key();
            let callout = FWPM_CALLOUT0 {
                calloutKey: *key,
                displayData: display,
                flags: 0,
                providerKey: &mut provider_key,
                providerData: empty_blob,
                applicableLayer: *layer,
                calloutId: 0,
            };
            // SAFETY: as above.
            check(unsafe { FwpmCalloutAdd0(engine, &callout, null_mut(), null_mut()) })?;
            // Every spec asks the engine for the weight (FWP_EMPTY).
            if spec.weight.is_some() {
                return Err(STATUS_INVALID_PARAMETER);
            }
            let filter = FWPM_FILTER0 {
                filterKey: GUID::default(),
                displayData: display,
                flags: spec.flags,
                providerKey: &mut provider_key,
                providerData: empty_blob,
                layerKey: *layer,
                subLayerKey: SUBLAYER_KEY,
                weight: FWP_VALUE0::EMPTY,
                numFilterConditions: 0,
                filterCondition: null_mut(),
                action: FWPM_ACTION0 { r#type: spec.action_type, calloutKey: *key },
                context: FWPM_FILTER0_CONTEXT { rawContext: 0 },
                reserved: null_mut(),
                filterId: 0,
                effectiveWeight: FWP_VALUE0::EMPTY,
            };
            let mut id = 0u64;
            // SAFETY: as above; `id` is an out pointer.
            check(unsafe { FwpmFilterAdd0(engine, &filter, null_mut(), &mut id) })?;
            if let Some(slot) = redirect_ids.get_mut(i) {
                // The first two layers are connect-redirect V4 and V6.
                *slot = id;
            }
        }
        Ok(redirect_ids)
    };
    match body() {
        Ok(ids) => {
            // SAFETY: the transaction begun above.
            check(unsafe { FwpmTransactionCommit0(engine) })?;
            Ok(ids)
        }
        Err(e) => {
            // SAFETY: the transaction begun above.
            unsafe { FwpmTransactionAbort0(engine) };
            Err(e)
        }
    }
}

/// Tears everything down (the order is the shell's); safe on a partial start.
fn stop() {
    if let Some(life) = life() {
        // The unregister result has been waited on already (DEVICE_BUSY retried).
        let _stopped = life.stop(&mut Wdm { driver: null_mut() });
    }
    stop_pend_timer();
    if let Some(d) = STATE.with(Option::take) {
        if !d.redirect_handle.is_null() {
            // SAFETY: the handle created in `start`; no callout uses it any more.
            unsafe { FwpsRedirectHandleDestroy0(d.redirect_handle) };
        }
        drop(d);
    }
}

unsafe extern "C" fn driver_unload(driver: *mut DRIVER_OBJECT) {
    stop();
    let mut link = unicode(w!(r"\DosDevices\ArbiterControl"));
    // SAFETY: created in DriverEntry.
    let _ = unsafe { IoDeleteSymbolicLink(&mut link) };
    // SAFETY: the driver object is valid during unload; its device list is ours.
    let device = unsafe { (*driver).DeviceObject };
    if !device.is_null() {
        // SAFETY: our device, no longer used by anything.
        unsafe { IoDeleteDevice(device) };
    }
}

// ---- classify -------------------------------------------------------------------------

macro_rules! classify_fn {
    ($name:ident, $kind:expr) => {
        unsafe extern "system" fn $name(
            values: *const FWPS_INCOMING_VALUES0,
            meta: *const FWPS_INCOMING_METADATA_VALUES0,
            _layer_data: *mut c_void,
            classify_context: *const c_void,
            filter: *const FWPS_FILTER3,
            _flow_context: u64,
            classify_out: *mut FWPS_CLASSIFY_OUT0,
        ) {
            let raw = RawClassify { values, meta, classify_context, filter, classify_out };
            classify($kind, &raw);
        }
    };
}

classify_fn!(classify_cr4, Kind::ConnectRedirect(Family::V4));
classify_fn!(classify_cr6, Kind::ConnectRedirect(Family::V6));
classify_fn!(classify_ac4, Kind::AuthConnect(Family::V4));
classify_fn!(classify_ac6, Kind::AuthConnect(Family::V6));
classify_fn!(classify_ec4, Kind::Closure(Family::V4));
classify_fn!(classify_ec6, Kind::Closure(Family::V6));

fn classify(kind: Kind, raw: &RawClassify) {
    let entry = match kind {
        Kind::ConnectRedirect(f) => shell::Entry::ConnectRedirect(f),
        Kind::AuthConnect(f) => shell::Entry::AuthConnect(f),
        Kind::Closure(f) => shell::Entry::Closure(f),
    };
    // SAFETY: built for this classify only, with its own handles.
    let mut fwps = unsafe { KernelFwps::new() };
    // The shell's order: the adapter under the lock, apply and release after it.
    // SAFETY: `raw` holds this classifyFn's arguments; we are inside it.
    unsafe { shell::classify(&mut DriverLock, &mut fwps, &mut PendKTimer, entry, raw, now()) };
}

/// The pend timeout's kernel timer and its DPC.
struct TimerCell {
    timer: UnsafeCell<KTIMER>,
    dpc: UnsafeCell<KDPC>,
}

// SAFETY: initialised once in DriverEntry before any classify; afterwards
// only handed to the kernel's timer routines, which synchronise themselves.
unsafe impl Sync for TimerCell {}

// SAFETY: all-zero KTIMER and KDPC are valid until KeInitialize* set them up.
static PEND_TIMER: TimerCell = unsafe { core::mem::zeroed() };

/// `PendTimer` over [`PEND_TIMER`]: the adapter arms it for the earliest
/// deadline of a held classification; its DPC completes what is due.
struct PendKTimer;

impl PendTimer for PendKTimer {
    fn arm(&mut self, due: Instant) {
        let after_ms = due.as_millis().saturating_sub(now().as_millis()).max(1);
        // Relative due time, in 100 ns units.
        let relative = i64::try_from(after_ms.saturating_mul(10_000)).map_or(i64::MIN, |t| -t);
        let due_time = LARGE_INTEGER { QuadPart: relative };
        // SAFETY: the timer and DPC initialised in DriverEntry; callable at <= DISPATCH_LEVEL.
        let _ = unsafe { KeSetTimer(PEND_TIMER.timer.get(), due_time, PEND_TIMER.dpc.get()) };
    }

    fn cancel(&mut self) {
        // SAFETY: as above.
        let _ = unsafe { KeCancelTimer(PEND_TIMER.timer.get()) };
    }
}

fn init_pend_timer() {
    // SAFETY: DriverEntry, before any classify or timer use.
    unsafe { KeInitializeTimer(PEND_TIMER.timer.get()) };
    // SAFETY: as above; a static DPC routine with no context.
    unsafe { KeInitializeDpc(PEND_TIMER.dpc.get(), Some(pend_timer_dpc), null_mut()) };
}

/// The pend timeout fired (DISPATCH_LEVEL): complete what is due, re-arm.
unsafe extern "C" fn pend_timer_dpc(_: *mut KDPC, _: *mut c_void, _: *mut c_void, _: *mut c_void) {
    let t = now();
    // SAFETY: completions use the handles the classifications were pended with.
    let mut fwps = unsafe { KernelFwps::new() };
    // Decided under the lock, completed after it (completion may classify again).
    shell::complete_pended(&mut DriverLock, &mut fwps, t);
    let _ = DriverLock.with(&mut fwps, |c, _| c.sync_timer(&mut PendKTimer));
}

/// [`STATE`]'s lock around the callout, for the shell's completions.
struct DriverLock;

impl CalloutLock<Box<CompiledRules>, KernelFwps> for DriverLock {
    fn with<R>(
        &mut self,
        fwps: &mut KernelFwps,
        f: impl FnOnce(&mut Callout<Box<CompiledRules>>, &mut KernelFwps) -> R,
    ) -> Option<R> {
        STATE.with(|s| s.as_mut().map(|d| f(&mut d.callout, fwps)))
    }
}

/// Unload: no timer left armed, no DPC left running.
fn stop_pend_timer() {
    PendKTimer.cancel();
    // SAFETY: PASSIVE_LEVEL (unload).
    unsafe { KeFlushQueuedDpcs() };
}

unsafe extern "system" fn notify(_: FWPS_CALLOUT_NOTIFY_TYPE, _: *const GUID, _: *mut FWPS_FILTER3) -> NTSTATUS {
    STATUS_SUCCESS
}

// ---- control device --------------------------------------------------------------------

/// `IO_STACK_LOCATION` for IRP_MJ_DEVICE_CONTROL: what `IoGetCurrentIrpStackLocation` returns.
///
/// # Safety
///
/// `irp` must be a valid IRP being dispatched to us.
unsafe fn current_stack(irp: *mut IRP) -> *mut wdk_sys::IO_STACK_LOCATION {
    // SAFETY: a valid IRP (contract).
    let irp = unsafe { &*irp };
    // SAFETY: while the IRP is dispatched to a driver, `Tail.Overlay` is the active member.
    let overlay = unsafe { irp.Tail.Overlay };
    let inner = overlay.__bindgen_anon_2.__bindgen_anon_1;
    // SAFETY: in a dispatched IRP this member of the union is the current stack location.
    unsafe { inner.CurrentStackLocation }
}

fn complete(irp: *mut IRP, status: NTSTATUS, information: usize) -> NTSTATUS {
    // SAFETY: an IRP dispatched to us, completed exactly once here.
    let r = unsafe { &mut *irp };
    r.IoStatus.__bindgen_anon_1.Status = status;
    r.IoStatus.Information = information as u64;
    // SAFETY: as above.
    unsafe { IofCompleteRequest(irp, IO_NO_INCREMENT as i8) };
    status
}

type DispatchFn = unsafe extern "C" fn(*mut DEVICE_OBJECT, *mut IRP) -> NTSTATUS;

/// Who sent this IRP, as the kernel says: the requesting process, the file
/// object it came through, and the access granted to that handle (kept in
/// the file object's `FsContext` since IRP_MJ_CREATE; the I/O manager has
/// already checked each IOCTL's access bits against the same handle).
///
/// # Safety
///
/// `irp` is dispatched to us, `stack` its current stack location.
unsafe fn caller_of(irp: *mut IRP, stack: &IO_STACK_LOCATION, access: Option<Access>) -> Option<Caller> {
    let file = stack.FileObject;
    if file.is_null() {
        return None;
    }
    let access = match access {
        Some(a) => a,
        // SAFETY: our file object; FsContext holds what dispatch_create stored.
        None => Access::from_access_mask(unsafe { (*file).FsContext } as usize as u32),
    };
    // SAFETY: a dispatched IRP.
    let pid = unsafe { IoGetRequestorProcessId(irp) };
    Some(Caller { pid, handle: HandleId(file as u64), access })
}

/// The control device's view of the driver state, under its lock.
fn with_device<D, R>(
    decode_rules: D,
    f: impl FnOnce(&mut Device<'_, Box<CompiledRules>, D, KernelFwps>) -> R,
) -> Option<R>
where
    D: FnMut(&[u8]) -> Result<Box<CompiledRules>, RulesRejected>,
{
    let t = now();
    // SAFETY: completions during this request use the pended classifies' own handles.
    let mut fwps = unsafe { KernelFwps::new() };
    let r = STATE.with(|s| {
        let d = s.as_mut()?;
        let Driver { callout, handles, instance, .. } = &mut **d;
        let driver_counters = DriverCounters { override_failures: life().map_or(0, Lifecycle::override_failures) };
        let mut device =
            Device { callout, handles, decode_rules, instance: *instance, fwps: &mut fwps, now: t, driver_counters };
        Some(f(&mut device))
    });
    // A proxy that registered: what it decided is completed with the lock released.
    shell::complete_pended(&mut DriverLock, &mut fwps, t);
    let _ = DriverLock.with(&mut fwps, |c, _| c.sync_timer(&mut PendKTimer));
    // Registered, unregistered, handle gone or rules swapped: the boot guard
    // follows (IRP dispatch: PASSIVE_LEVEL, lock released).
    if let Some(life) = life() {
        life.sync_guard(&mut Wdm { driver: null_mut() });
    }
    r
}

/// IRP_MJ_CREATE: any number of readers, one writer at a time; the granted
/// access is kept with the file object.
unsafe extern "C" fn dispatch_create(_device: *mut DEVICE_OBJECT, irp: *mut IRP) -> NTSTATUS {
    // SAFETY: dispatched IRP.
    let stack = unsafe { current_stack(irp) };
    // SAFETY: the I/O manager's stack location for us, valid during dispatch.
    let stack = unsafe { &*stack };
    // SAFETY: the Create member is the active one for IRP_MJ_CREATE.
    let security = unsafe { stack.Parameters.Create.SecurityContext };
    if security.is_null() {
        return complete(irp, STATUS_ACCESS_DENIED, 0);
    }
    // SAFETY: the I/O manager's security context for this create.
    let access = Access::from_access_mask(unsafe { (*security).DesiredAccess });
    // SAFETY: dispatched IRP and its stack location.
    let Some(caller) = (unsafe { caller_of(irp, stack, Some(access)) }) else {
        return complete(irp, STATUS_INVALID_PARAMETER, 0);
    };
    let status = with_device(no_rules, |device| control::open(device, &caller));
    match status {
        Some(Status::Ok) => {
            // SAFETY: our file object, during its create.
            unsafe { (*stack.FileObject).FsContext = access.bits() as usize as *mut c_void };
            complete(irp, STATUS_SUCCESS, 0)
        }
        Some(Status::WriterBusy) => complete(irp, STATUS_SHARING_VIOLATION, 0),
        Some(_) => complete(irp, STATUS_ACCESS_DENIED, 0),
        None => complete(irp, STATUS_INVALID_DEVICE_REQUEST, 0),
    }
}

/// IRP_MJ_CLEANUP: the last handle to this file object is gone (closed, or
/// its process died). A proxy registered through it is unregistered now, so
/// flows stop going to it at once; its writer role and drain cursor go too.
unsafe extern "C" fn dispatch_cleanup(_device: *mut DEVICE_OBJECT, irp: *mut IRP) -> NTSTATUS {
    // SAFETY: dispatched IRP.
    let stack = unsafe { current_stack(irp) };
    // SAFETY: the I/O manager's stack location for us, valid during dispatch.
    let stack = unsafe { &*stack };
    let file = stack.FileObject;
    if !file.is_null() {
        let _ = with_device(no_rules, |device| control::cleanup(device, HandleId(file as u64)));
    }
    complete(irp, STATUS_SUCCESS, 0)
}

unsafe extern "C" fn dispatch_close(_device: *mut DEVICE_OBJECT, irp: *mut IRP) -> NTSTATUS {
    complete(irp, STATUS_SUCCESS, 0)
}

unsafe extern "C" fn dispatch_device_control(_device: *mut DEVICE_OBJECT, irp: *mut IRP) -> NTSTATUS {
    // SAFETY: dispatched IRP.
    let stack = unsafe { current_stack(irp) };
    // SAFETY: the I/O manager's stack location for us, valid during dispatch.
    let stack = unsafe { &*stack };
    // SAFETY: the DeviceIoControl member is the active one for IRP_MJ_DEVICE_CONTROL.
    let io = unsafe { stack.Parameters.DeviceIoControl };
    let (in_len, out_len) = (io.InputBufferLength as usize, io.OutputBufferLength as usize);
    // Length checks before anything is read: a header at least, and no more
    // than the largest request (a rules blob) plus its header.
    if in_len < REQUEST_HEADER_LEN || in_len > MAX_RULES_LEN.saturating_add(REQUEST_HEADER_LEN) {
        return complete(irp, STATUS_INVALID_PARAMETER, 0);
    }
    // SAFETY: dispatched IRP and its stack location.
    let Some(caller) = (unsafe { caller_of(irp, stack, None) }) else {
        return complete(irp, STATUS_INVALID_PARAMETER, 0);
    };
    // SAFETY: the IRP dispatched to us.
    let associated = unsafe { &(*irp).AssociatedIrp };
    // SAFETY: METHOD_BUFFERED: the system buffer (max(in, out) bytes) is the active member.
    let system = unsafe { associated.SystemBuffer }.cast::<u8>();
    if system.is_null() {
        return complete(irp, STATUS_INVALID_PARAMETER, 0);
    }
    // The system buffer is both request and reply: copy the request out first.
    let mut request = Vec::new();
    if request.try_reserve_exact(in_len).is_err() {
        return complete(irp, STATUS_INSUFFICIENT_RESOURCES, 0);
    }
    // SAFETY: `in_len` readable bytes at the system buffer (I/O manager).
    request.extend_from_slice(unsafe { core::slice::from_raw_parts(system, in_len) });
    // SAFETY: `out_len` writable bytes at the system buffer, not aliased now that the request is copied.
    let reply = unsafe { core::slice::from_raw_parts_mut(system, out_len) };
    // A rules blob (up to 1 MiB) is decoded here, at PASSIVE_LEVEL and
    // before the spin lock is taken; under the lock the handler only
    // validates the request and swaps the decoded rules in.
    let mut decoded = match Request::decode(&request) {
        Ok(Request::SetRules(blob)) if caller.access.write() => Some(decode_rules(blob, seed())),
        _ => None,
    };
    let predecoded = |_: &[u8]| decoded.take().unwrap_or(Err(RulesRejected { code: 9, offset: 0 }));
    let written =
        with_device(predecoded, |device| control::dispatch(device, io.IoControlCode, &caller, &request, reply));
    match written {
        Some(0) => complete(irp, STATUS_BUFFER_TOO_SMALL, 0),
        Some(n) => complete(irp, STATUS_SUCCESS, n),
        None => complete(irp, STATUS_INVALID_DEVICE_REQUEST, 0),
    }
}

/// Rules are never decoded under the lock: for the requests that carry none.
fn no_rules(_: &[u8]) -> Result<Box<CompiledRules>, RulesRejected> {
    Err(RulesRejected { code: 9, offset: 0 })
}

/// A rules blob decoded into pool memory (its own frame: the compiled rules
/// are over 1.5 KiB).
#[inline(never)]
fn decode_rules(blob: &[u8], seed: [u64; 4]) -> Result<Box<CompiledRules>, RulesRejected> {
    let rules = blob::decode_seeded(blob, seed).map_err(rejected)?;
    try_box(rules).ok_or(RulesRejected { code: 9, offset: 0 })
}

/// The rules decoder's error as the control protocol reports it.
fn rejected(e: BlobError) -> RulesRejected {
    let (code, offset) = match e {
        BlobError::TooShort { .. } => (1, 0),
        BlobError::BadMagic => (2, 0),
        BlobError::UnsupportedVersion { .. } => (3, 4),
        BlobError::Reserved => (4, 6),
        BlobError::LengthMismatch { .. } => (5, 8),
        BlobError::ChecksumMismatch { .. } => (6, 12),
        BlobError::Truncated { offset, .. } => (7, offset),
        BlobError::Invalid { offset, .. } => (8, offset),
        _ => (9, 0),
    };
    RulesRejected { code, offset: u32::try_from(offset).unwrap_or(u32::MAX) }
}
