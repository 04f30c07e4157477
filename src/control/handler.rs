//! The driver side of the control protocol: who is asking, what they may
//! do, and applying a request all or nothing.
//!
//! The driver shell calls three functions, each under its lock:
//!
//! - [`open_handle`] at `IRP_MJ_CREATE`, with the [`Caller`] the kernel
//!   describes (requesting process, file object, granted access). A second
//!   handle with write access is refused while one is open ([`Status::WriterBusy`]):
//!   many readers, one writer.
//! - [`handle`] at `IRP_MJ_DEVICE_CONTROL`, with the IOCTL code, the caller,
//!   the request and the reply buffer.
//! - [`close_handle`] at `IRP_MJ_CLEANUP` (the last user handle to that file
//!   object closed, including when its process died). The proxy registered
//!   through that handle is unregistered at once, the writer role is freed
//!   and the handle's drain cursor is forgotten.
//!
//! Nothing about the caller is taken from the request body: the PID a
//! registration names must be the caller's own, and only the file object
//! that registered may unregister.

use core::net::{IpAddr, SocketAddr};

use super::ioctl::Access;
use super::wire::{
    COUNTERS_LEN, DRIVER_COUNTERS_LEN, DriverCounters, INFO_LEN, Info, Op, REPLY_HEADER_LEN, REPLY_MAGIC,
    RING_STATS_LEN, Request, RulesRejected, Status, VERSION, put_counters, put_driver_counters, put_ring_stats,
};
use crate::arbiter::{Counters, SetProxyError};
use crate::audit::ring::{AuditRing, DrainError};
use crate::decide::ProxyRegistration;
use crate::validate::check_listener;
use crate::wire::{Short, Writer};

/// One open handle to the control device, as the driver knows it: the
/// address of its `FILE_OBJECT`, stable from create to cleanup.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct HandleId(pub u64);

/// Who sent a request, as the kernel says (never the request body).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Caller {
    /// The requesting process: `IoGetRequestorProcessId(irp)`.
    pub pid: u32,
    /// The file object the request came through: `IrpSp->FileObject`.
    pub handle: HandleId,
    /// The access granted when that handle was opened
    /// (`IrpSp->Parameters.Create.SecurityContext->DesiredAccess` at create,
    /// kept with the file object; [`Access::from_access_mask`]).
    pub access: Access,
}

/// The registration's owner: the handle and process it came through.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Owner {
    /// The file object.
    pub handle: HandleId,
    /// Its process.
    pub pid: u32,
}

/// What the control device remembers about its open handles: the one with
/// write access, and the one the proxy registered through. Drain cursors
/// live in the [`AuditRing`], one per reading handle.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct Handles {
    writer: Option<HandleId>,
    owner: Option<Owner>,
}

impl Handles {
    /// No handle open.
    pub const fn new() -> Self {
        Self { writer: None, owner: None }
    }

    /// The handle holding write access.
    pub const fn writer(&self) -> Option<HandleId> {
        self.writer
    }

    /// The handle and process the proxy registered through.
    pub const fn owner(&self) -> Option<Owner> {
        self.owner
    }
}

/// What [`handle`] acts on: the driver's state behind its lock. The
/// callout implements it (`arbiter_callout::control::Device`).
pub trait ControlTarget {
    /// This driver load's id (random at DriverEntry); changes when the driver restarts.
    fn instance(&self) -> u64;
    /// Decodes a rules blob and, only if it is valid, makes it the rules in
    /// force; returns the new rules' id. On error nothing changes.
    fn load_rules(&mut self, blob: &[u8]) -> Result<u32, RulesRejected>;
    /// The id of the rules in force.
    fn rules_id(&self) -> u32;
    /// Registers our proxy. On error nothing changes.
    fn register_proxy(&mut self, registration: ProxyRegistration) -> Result<(), SetProxyError>;
    /// Unregisters our proxy: from now on no flow is sent to it.
    fn unregister_proxy(&mut self);
    /// The registered proxy.
    fn proxy(&self) -> Option<ProxyRegistration>;
    /// The core's counters.
    fn counters(&self) -> Counters;
    /// The driver's counters that are not the core's: for now, the boot
    /// guard's failed override adds (`Lifecycle::override_failures` in the
    /// callout crate). The default knows none.
    fn driver_counters(&self) -> DriverCounters {
        DriverCounters::default()
    }
    /// The audit ring.
    fn ring(&mut self) -> &mut AuditRing;
    /// The open handles' roles.
    fn handles(&mut self) -> &mut Handles;
    /// Is `ip` one of this host's own addresses? A proxy may listen on a
    /// loopback address or on one of these. The default knows none.
    fn is_host_address(&self, ip: IpAddr) -> bool {
        let _ = ip;
        false
    }
}

/// `IRP_MJ_CREATE`: admits a new handle. A handle with write access becomes
/// the writer; while one is open, another is refused with
/// [`Status::WriterBusy`] (the driver completes the create with
/// `STATUS_SHARING_VIOLATION`). Readers are never refused here.
pub fn open_handle<T: ControlTarget + ?Sized>(target: &mut T, caller: &Caller) -> Status {
    if !caller.access.write() {
        return Status::Ok;
    }
    let handles = target.handles();
    match handles.writer {
        Some(w) if w != caller.handle => Status::WriterBusy,
        _ => {
            handles.writer = Some(caller.handle);
            Status::Ok
        }
    }
}

/// `IRP_MJ_CLEANUP`: the handle is gone. The proxy registered through it
/// is unregistered at once (so no further flow is sent to a proxy that
/// died), its writer role is freed, and its drain cursor is forgotten.
pub fn close_handle<T: ControlTarget + ?Sized>(target: &mut T, handle: HandleId) {
    let handles = target.handles();
    let owned = handles.owner.is_some_and(|o| o.handle == handle);
    if owned {
        handles.owner = None;
    }
    if handles.writer == Some(handle) {
        handles.writer = None;
    }
    if owned {
        target.unregister_proxy();
    }
    target.ring().remove_reader(handle.0);
}

/// Decodes `request` (sent with IOCTL code `ioctl` by `caller`), applies it
/// to `target` all or nothing, and writes the reply into `reply`, returning
/// the reply's length. Returns 0 only when `reply` cannot hold a reply
/// header (the driver then completes the IRP with STATUS_BUFFER_TOO_SMALL).
/// Never panics; a refused request changes nothing.
pub fn handle<T: ControlTarget + ?Sized>(
    ioctl: u32,
    caller: &Caller,
    request: &[u8],
    target: &mut T,
    reply: &mut [u8],
) -> usize {
    let instance = target.instance();
    let Some((head, body)) = reply.split_at_mut_checked(REPLY_HEADER_LEN) else {
        return 0;
    };
    let (op, status, body_len) = match admit(ioctl, caller, request) {
        Err((op, status, offset)) => (op, status, put_u32(body, offset)),
        Ok(req) => {
            let (status, len) = apply(&req, caller, target, body);
            (req.op() as u16, status, len)
        }
    };
    let mut w = Writer::new(head);
    let header = w
        .put(&REPLY_MAGIC)
        .and_then(|()| w.u16(VERSION))
        .and_then(|()| w.u16(op))
        .and_then(|()| w.u32(status as u32))
        .and_then(|()| w.u64(instance))
        .and_then(|()| w.u32(u32::try_from(body_len).unwrap_or(0)));
    match header {
        Ok(()) => REPLY_HEADER_LEN.saturating_add(body_len),
        Err(Short) => 0,
    }
}

/// The checks that need no state: a known IOCTL code, the access it needs,
/// a well-formed request, and the request's op matching the code. On
/// refusal: the op as sent, the status, and the request offset named.
fn admit<'r>(ioctl: u32, caller: &Caller, request: &'r [u8]) -> Result<Request<'r>, (u16, Status, u32)> {
    let Some(op) = Op::from_ioctl(ioctl) else {
        return Err((0, Status::WrongIoctl, 0));
    };
    if !caller.access.allows(op.access()) {
        return Err((op as u16, Status::AccessDenied, 0));
    }
    let req = Request::decode(request).map_err(|e| (e.op, e.status, e.offset))?;
    if req.op() != op {
        // Offset of the op field in the header.
        return Err((req.op() as u16, Status::WrongIoctl, 6));
    }
    Ok(req)
}

/// Writes one u32 at the start of `body` (0 bytes if it does not fit).
fn put_u32(body: &mut [u8], v: u32) -> usize {
    let mut w = Writer::new(body);
    w.u32(v).map_or(0, |()| w.written())
}

/// The reply body for `ReplyTooSmall`: the whole reply size needed.
fn too_small(body: &mut [u8], body_needed: usize) -> (Status, usize) {
    let need = u32::try_from(REPLY_HEADER_LEN.saturating_add(body_needed)).unwrap_or(u32::MAX);
    (Status::ReplyTooSmall, put_u32(body, need))
}

/// May `caller` change the driver? Only if no other handle is the writer.
fn writer_free<T: ControlTarget + ?Sized>(target: &mut T, caller: &Caller) -> Result<(), Status> {
    match target.handles().writer {
        Some(w) if w != caller.handle => Err(Status::WriterBusy),
        _ => Ok(()),
    }
}

/// Every check of a registration against the caller and the host, in order.
fn check_registration<T: ControlTarget + ?Sized>(
    target: &mut T,
    caller: &Caller,
    reg: &ProxyRegistration,
) -> Result<(), Status> {
    if reg.pid == 0 {
        return Err(Status::ZeroPid);
    }
    if reg.pid != u64::from(caller.pid) {
        return Err(Status::PidNotCaller);
    }
    let host = |ip: IpAddr| target.is_host_address(ip);
    for addr in reg.v4.map(SocketAddr::V4).into_iter().chain(reg.v6.map(SocketAddr::V6)) {
        check_listener(addr, &host)?;
    }
    let registered = target.proxy().is_some();
    match target.handles().owner {
        Some(o) if registered && o.handle != caller.handle => Err(Status::NotOwner),
        _ => Ok(()),
    }
}

fn apply<T: ControlTarget + ?Sized>(
    req: &Request<'_>,
    caller: &Caller,
    target: &mut T,
    body: &mut [u8],
) -> (Status, usize) {
    // Every fixed-size reply is checked for room before anything is applied,
    // so a change is never made without the reply that reports it.
    let fixed = match req {
        Request::Hello => Some(INFO_LEN),
        Request::SetRules(_) => Some(8),
        Request::RegisterProxy(_) | Request::UnregisterProxy { .. } => Some(0),
        Request::ReadCounters => Some(COUNTERS_LEN.saturating_add(RING_STATS_LEN)),
        Request::ReadDriverCounters => Some(DRIVER_COUNTERS_LEN),
        Request::DrainAudit { .. } => None,
    };
    if let Some(need) = fixed
        && body.len() < need
    {
        return too_small(body, need);
    }
    if req.op().mutates()
        && let Err(status) = writer_free(target, caller)
    {
        return (status, 0);
    }
    if let Request::DrainAudit { cursor, max_bytes } = *req {
        return match target.ring().drain(caller.handle.0, cursor, max_bytes, body) {
            Ok(n) => (Status::Ok, n),
            Err(DrainError::CursorAhead) => (Status::CursorAhead, 0),
            Err(DrainError::TooManyReaders) => (Status::TooManyReaders, 0),
            Err(DrainError::TooSmall(need)) => too_small(body, need),
        };
    }
    let mut w = Writer::new(body);
    let (status, wrote) = match *req {
        Request::Hello => {
            let info = Info { rules_id: target.rules_id(), proxy: target.proxy(), ring: target.ring().stats() };
            (Status::Ok, info.encode(&mut w))
        }
        Request::SetRules(blob) => match target.load_rules(blob) {
            Ok(id) => (Status::Ok, w.u32(id).and_then(|()| w.u32(0))),
            Err(e) => (Status::RulesRejected, w.u32(e.code).and_then(|()| w.u32(e.offset))),
        },
        Request::RegisterProxy(reg) => {
            let applied = check_registration(target, caller, &reg)
                .and_then(|()| target.register_proxy(reg).map_err(Status::from));
            match applied {
                Ok(()) => {
                    target.handles().owner = Some(Owner { handle: caller.handle, pid: caller.pid });
                    (Status::Ok, Ok(()))
                }
                Err(status) => (status, Ok(())),
            }
        }
        Request::UnregisterProxy { pid } => {
            let owner = target.handles().owner;
            match target.proxy() {
                None => (Status::NotRegistered, Ok(())),
                Some(_) if owner.is_none_or(|o| o.handle != caller.handle) => (Status::NotOwner, Ok(())),
                Some(p) if p.pid != pid => (Status::NotRegistered, Ok(())),
                Some(_) => {
                    target.unregister_proxy();
                    target.handles().owner = None;
                    (Status::Ok, Ok(()))
                }
            }
        }
        Request::ReadCounters => {
            let counters = target.counters();
            let stats = target.ring().stats();
            (Status::Ok, put_counters(&mut w, &counters).and_then(|()| put_ring_stats(&mut w, &stats)))
        }
        Request::ReadDriverCounters => (Status::Ok, put_driver_counters(&mut w, &target.driver_counters())),
        // Answered above.
        Request::DrainAudit { .. } => (Status::Internal, Ok(())),
    };
    if status == Status::Ok && req.op().mutates() {
        // A handle that changed the driver holds the writer role until it
        // is closed (the shell normally gave it at create already).
        target.handles().writer = Some(caller.handle);
    }
    match wrote {
        Ok(()) => (status, w.written()),
        // Room was checked above; should the encoders disagree, say so
        // rather than send a half-written body.
        Err(Short) => (Status::Internal, 0),
    }
}
