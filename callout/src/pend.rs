//! Classifications held (FwpsPendClassify0) while no proxy is registered.
//!
//! When a rule says `proxy` but our proxy has not registered yet, the core
//! answers `continue`/`proxy-unavailable`. Rather than let such a flow go
//! direct, the adapter may hold it: the classification is pended with a deep
//! copy of `classifyOut` (the caller's lives on the classify's stack; using
//! it after return was a public driver's BSOD), and the indication's
//! borrowed parts are copied into fixed buffers. When the proxy registers,
//! held flows are decided again and completed; after the timeout they are
//! completed with the configured fallback verdict.
//!
//! No WFP call that moves the classification on is made under the driver's
//! lock: a flow to hold gets a slot *reserved* under the lock, is pended
//! with the lock released (`adapter::PendTicket::pend`), and the slot is
//! *committed* (or freed) under the lock again. Only committed slots are
//! completed or timed out; unload waits for the reserved ones.
//!
//! The queue is reserved at start-up and bounded. A flow that does not fit
//! (queue full, app id longer than [`APP_ID_CAPACITY`]) is not held: it gets
//! the core's own answer, and the miss is counted.

use alloc::vec::Vec;
use core::net::SocketAddr;

use arbiter::Duration;
use arbiter::Instant;
use arbiter::flow::{AppId, Flow, Protocol, RedirectState, SidBuf};
use arbiter::table::OutOfMemory;
use wfp_ffi::FWPS_CLASSIFY_OUT0;

/// Bytes of app id (UTF-16LE) a held flow can keep: 1,024 code units.
pub const APP_ID_CAPACITY: usize = 2048;

/// The verdict a held flow gets when the proxy does not register in time.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Fallback {
    /// Let it go direct (FWP_ACTION_CONTINUE).
    Continue,
    /// Soft permit.
    Permit,
    /// Hard block: fail closed.
    Block,
}

/// The timer that completes held classifications when they time out.
///
/// The driver implements it over a kernel timer (KeSetTimer /
/// KeCancelTimer) whose DPC calls `Callout::complete_pended`; the tests over
/// the WFP model's timers. [`crate::Callout::sync_timer`] arms it for the
/// earliest deadline held, or cancels it when nothing is held.
pub trait PendTimer {
    /// (Re)arms the timer to fire at `due`.
    fn arm(&mut self, due: Instant);
    /// Cancels it.
    fn cancel(&mut self);
}

/// Pending configuration.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PendConfig {
    /// Most classifications held at once.
    pub capacity: u16,
    /// How long one is held.
    pub timeout: Duration,
    /// What it gets after the timeout.
    pub fallback: Fallback,
}

impl Default for PendConfig {
    fn default() -> Self {
        Self { capacity: 64, timeout: Duration::from_millis(2000), fallback: Fallback::Continue }
    }
}

/// A connect-redirect flow, owned: the app ids live in the queue's arena.
#[derive(Clone, Copy)]
pub(crate) struct OwnedFlow {
    protocol: Protocol,
    local: SocketAddr,
    remote: SocketAddr,
    endpoint: u64,
    pid: u64,
    app_len: u16,
    original_app_len: u16,
    package: Option<SidBuf>,
}

/// One held classification. Small on purpose: kernel stacks are small, and
/// entries are moved through the stack.
#[derive(Clone, Copy)]
pub(crate) struct Pended {
    pub(crate) classify_handle: u64,
    pub(crate) filter_id: u64,
    pub(crate) filter_flags: u16,
    /// The deep copy FwpsPendClassify0 was given and FwpsCompleteClassify0 gets.
    pub(crate) classify_out: FWPS_CLASSIFY_OUT0,
    pub(crate) state: RedirectState,
    pub(crate) reauthorize: bool,
    pub(crate) deadline: Instant,
    /// FwpsPendClassify0 succeeded and the handle is known; until then the
    /// slot is only reserved (its classifyFn is between the two holds of
    /// the driver's lock) and nothing completes it.
    committed: bool,
    flow: OwnedFlow,
    slot: usize,
}

/// What the caller knows of a classification to hold.
pub(crate) struct Hold<'f> {
    pub(crate) classify_handle: u64,
    pub(crate) filter_id: u64,
    pub(crate) filter_flags: u16,
    pub(crate) classify_out: FWPS_CLASSIFY_OUT0,
    pub(crate) state: RedirectState,
    pub(crate) reauthorize: bool,
    pub(crate) deadline: Instant,
    pub(crate) flow: &'f Flow<'f>,
}

/// The bounded queue of held classifications.
pub(crate) struct PendQueue {
    pub(crate) config: PendConfig,
    slots: Vec<Option<Pended>>,
    /// Two app-id buffers of [`APP_ID_CAPACITY`] bytes per slot.
    arena: Vec<u8>,
}

fn arena_range(slot: usize, which: usize, len: usize) -> Option<core::ops::Range<usize>> {
    let start = slot.checked_mul(2)?.checked_add(which)?.checked_mul(APP_ID_CAPACITY)?;
    Some(start..start.checked_add(len)?)
}

impl PendQueue {
    /// Reserves every slot and the app-id arena up front.
    pub(crate) fn new(config: PendConfig) -> Result<Self, OutOfMemory> {
        let n = usize::from(config.capacity);
        let mut slots = Vec::new();
        slots.try_reserve_exact(n).map_err(|_| OutOfMemory)?;
        slots.resize(n, None);
        let bytes = n.checked_mul(2).and_then(|k| k.checked_mul(APP_ID_CAPACITY)).ok_or(OutOfMemory)?;
        let mut arena = Vec::new();
        arena.try_reserve_exact(bytes).map_err(|_| OutOfMemory)?;
        arena.resize(bytes, 0);
        Ok(Self { config, slots, arena })
    }

    /// Reserves a slot for a classification about to be pended (its
    /// `classify_handle` is not known yet), returning the slot; `None` when
    /// the queue is full or an app id does not fit (nothing is changed then).
    pub(crate) fn reserve(&mut self, h: &Hold<'_>) -> Option<usize> {
        let slot = self.slots.iter().position(Option::is_none)?;
        let (app, original) = (h.flow.app.as_bytes(), h.flow.original_app.as_bytes());
        let (app_len, original_app_len) = (u16::try_from(app.len()).ok()?, u16::try_from(original.len()).ok()?);
        if app.len() > APP_ID_CAPACITY || original.len() > APP_ID_CAPACITY {
            return None;
        }
        for (which, src) in [(0, app), (1, original)] {
            arena_range(slot, which, src.len()).and_then(|r| self.arena.get_mut(r))?.copy_from_slice(src);
        }
        let f = h.flow;
        let flow = OwnedFlow {
            protocol: f.protocol,
            local: f.local,
            remote: f.remote,
            endpoint: f.endpoint,
            pid: f.pid,
            app_len,
            original_app_len,
            package: f.package.map(SidBuf::from_sid),
        };
        let entry = Pended {
            classify_handle: h.classify_handle,
            filter_id: h.filter_id,
            filter_flags: h.filter_flags,
            classify_out: h.classify_out,
            state: h.state,
            reauthorize: h.reauthorize,
            deadline: h.deadline,
            committed: false,
            flow,
            slot,
        };
        *self.slots.get_mut(slot)? = Some(entry);
        Some(slot)
    }

    /// The reservation in `slot` is pended on `classify_handle`: from now on
    /// it is held (completed, timed out).
    pub(crate) fn commit(&mut self, slot: usize, classify_handle: u64) -> bool {
        match self.slots.get_mut(slot) {
            Some(Some(p)) if !p.committed => {
                p.classify_handle = classify_handle;
                p.committed = true;
                true
            }
            _ => false,
        }
    }

    /// Frees `slot`.
    pub(crate) fn remove(&mut self, slot: usize) {
        if let Some(s) = self.slots.get_mut(slot) {
            *s = None;
        }
    }

    /// The held flow, borrowing its app ids from the arena (valid until the
    /// slot is reused by a later [`Self::insert`]).
    pub(crate) fn flow_of<'a>(&'a self, p: &'a Pended) -> Flow<'a> {
        let app_of = |which: usize, len: u16| {
            let bytes = arena_range(p.slot, which, usize::from(len)).and_then(|r| self.arena.get(r)).unwrap_or(&[]);
            AppId::from_utf16le(bytes)
        };
        let f = &p.flow;
        Flow {
            protocol: f.protocol,
            local: f.local,
            remote: f.remote,
            endpoint: f.endpoint,
            pid: f.pid,
            app: app_of(0, f.app_len),
            original_app: app_of(1, f.original_app_len),
            package: f.package.as_ref().map(SidBuf::as_sid),
        }
    }

    /// How many are held (committed).
    pub(crate) fn len(&self) -> usize {
        self.slots.iter().flatten().filter(|p| p.committed).count()
    }

    /// How many slots are reserved and not committed yet.
    pub(crate) fn reserved(&self) -> usize {
        self.slots.iter().flatten().filter(|p| !p.committed).count()
    }

    /// The earliest deadline held.
    pub(crate) fn earliest_deadline(&self) -> Option<Instant> {
        self.slots.iter().flatten().filter(|p| p.committed).map(|p| p.deadline).min()
    }

    /// Takes out the next held (committed) entry for which `take` says yes.
    pub(crate) fn take_next(&mut self, mut take: impl FnMut(&Pended) -> bool) -> Option<Pended> {
        self.slots.iter_mut().find(|s| s.as_ref().is_some_and(|p| p.committed && take(p))).and_then(Option::take)
    }
}
