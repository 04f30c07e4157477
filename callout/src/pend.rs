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

/// A UTF-16LE app id copied out of WFP's buffer.
#[derive(Clone, Copy)]
struct OwnedAppId {
    bytes: [u8; APP_ID_CAPACITY],
    len: u16,
}

impl OwnedAppId {
    fn copy(id: &AppId<'_>) -> Option<Self> {
        let src = id.as_bytes();
        let mut bytes = [0u8; APP_ID_CAPACITY];
        bytes.get_mut(..src.len())?.copy_from_slice(src);
        Some(Self { bytes, len: u16::try_from(src.len()).ok()? })
    }

    fn app_id(&self) -> AppId<'_> {
        AppId::from_utf16le(self.bytes.get(..usize::from(self.len)).unwrap_or(&[]))
    }
}

/// A connect-redirect flow, owned.
#[derive(Clone, Copy)]
pub(crate) struct OwnedFlow {
    protocol: Protocol,
    local: SocketAddr,
    remote: SocketAddr,
    endpoint: u64,
    pid: u64,
    app: OwnedAppId,
    original_app: OwnedAppId,
    package: Option<SidBuf>,
}

impl OwnedFlow {
    /// Copies a borrowed flow; `None` when an app id does not fit.
    pub(crate) fn copy(flow: &Flow<'_>) -> Option<Self> {
        Some(Self {
            protocol: flow.protocol,
            local: flow.local,
            remote: flow.remote,
            endpoint: flow.endpoint,
            pid: flow.pid,
            app: OwnedAppId::copy(&flow.app)?,
            original_app: OwnedAppId::copy(&flow.original_app)?,
            package: flow.package.map(SidBuf::from_sid),
        })
    }

    /// Borrows it back as the core's input.
    pub(crate) fn flow(&self) -> Flow<'_> {
        Flow {
            protocol: self.protocol,
            local: self.local,
            remote: self.remote,
            endpoint: self.endpoint,
            pid: self.pid,
            app: self.app.app_id(),
            original_app: self.original_app.app_id(),
            package: self.package.as_ref().map(SidBuf::as_sid),
        }
    }
}

/// One held classification.
#[derive(Clone, Copy)]
pub(crate) struct Pended {
    pub(crate) classify_handle: u64,
    pub(crate) filter_id: u64,
    pub(crate) filter_flags: u16,
    /// The deep copy FwpsPendClassify0 was given and FwpsCompleteClassify0 gets.
    pub(crate) classify_out: FWPS_CLASSIFY_OUT0,
    pub(crate) flow: OwnedFlow,
    pub(crate) state: RedirectState,
    pub(crate) reauthorize: bool,
    pub(crate) deadline: Instant,
}

/// The bounded queue of held classifications.
pub(crate) struct PendQueue {
    pub(crate) config: PendConfig,
    slots: Vec<Option<Pended>>,
}

impl PendQueue {
    /// Reserves every slot up front.
    pub(crate) fn new(config: PendConfig) -> Result<Self, OutOfMemory> {
        let n = usize::from(config.capacity);
        let mut slots = Vec::new();
        slots.try_reserve_exact(n).map_err(|_| OutOfMemory)?;
        slots.resize(n, None);
        Ok(Self { config, slots })
    }

    /// A free slot, if any.
    pub(crate) fn free_slot(&mut self) -> Option<&mut Option<Pended>> {
        self.slots.iter_mut().find(|s| s.is_none())
    }

    /// How many are held.
    pub(crate) fn len(&self) -> usize {
        self.slots.iter().filter(|s| s.is_some()).count()
    }

    /// Takes out every held entry for which `take` says yes, one at a time.
    pub(crate) fn take_next(&mut self, mut take: impl FnMut(&Pended) -> bool) -> Option<Pended> {
        self.slots.iter_mut().find(|s| s.as_ref().is_some_and(&mut take)).and_then(Option::take)
    }
}
