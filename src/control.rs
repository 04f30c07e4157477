//! The control protocol between the driver's control device and user mode,
//! and the bounded audit ring the driver drains through it.
//!
//! One IOCTL ([`IOCTL_CONTROL`], METHOD_BUFFERED) carries one request and
//! returns one reply. Both are versioned and length-prefixed, little-endian,
//! and read through [`crate::wire`]'s checked readers, so byte alignment of
//! the system buffer never matters:
//!
//! - request: magic `ARCQ`, version (u16), op (u16), body length (u32), body;
//! - reply: magic `ARCP`, version (u16), op (u16), [`Status`] (u32), the
//!   driver's instance id (u64, new at every driver load, so the service
//!   notices a restart on any reply), body length (u32), body.
//!
//! [`handle`] is the whole driver side: it decodes and validates a request,
//! applies it all-or-nothing to a [`ControlTarget`], and encodes the reply.
//! A malformed request gets an error status and the offset of the problem,
//! and changes nothing. User mode builds requests with [`Request`] and reads
//! replies with [`Reply`].
//!
//! [`AuditRing`] is the driver's bounded audit log: a byte ring reserved up
//! front, dropping the oldest record when full and counting it. Readers drain
//! it with a cursor (the next sequence number they want): a drain
//! acknowledges everything before its cursor, and its reply says how many
//! records the reader lost to drops, so loss is never silent.

use alloc::vec::Vec;
use core::fmt;
use core::net::{Ipv4Addr, Ipv6Addr, SocketAddrV4, SocketAddrV6};

use crate::arbiter::{Arbiter, Counters, SetProxyError};
use crate::audit::AuditRecord;
use crate::decide::ProxyRegistration;
use crate::policy::Policy;
use crate::table::OutOfMemory;
use crate::wire::{Reader, Short, Writer};

/// The protocol version this build speaks.
pub const VERSION: u16 = 1;
/// Request magic.
pub const REQUEST_MAGIC: [u8; 4] = *b"ARCQ";
/// Reply magic.
pub const REPLY_MAGIC: [u8; 4] = *b"ARCP";
/// Bytes before a request body.
pub const REQUEST_HEADER_LEN: usize = 12;
/// Bytes before a reply body.
pub const REPLY_HEADER_LEN: usize = 24;
/// The largest rules blob a request may carry.
pub const MAX_RULES_LEN: usize = 1 << 20;
/// Encoded size of a proxy registration (request body and inside `Hello`).
pub const REGISTRATION_LEN: usize = 48;
/// Encoded size of [`RingStats`].
pub const RING_STATS_LEN: usize = 40;
/// Encoded size of [`Counters`]: fifteen u64s.
pub const COUNTERS_LEN: usize = 15 * 8;
/// Bytes before the records in a drain reply body.
pub const DRAIN_HEADER_LEN: usize = 24;
/// Bytes before each record in a drain reply and in the ring: sequence (u64), length (u32).
pub const ENTRY_HEADER_LEN: usize = 12;
/// A reply buffer this large holds every reply except long drains.
pub const MIN_REPLY_BUFFER: usize = REPLY_HEADER_LEN + COUNTERS_LEN + RING_STATS_LEN;

/// The control device's NT name (the driver creates it).
pub const DEVICE_NAME: &str = r"\Device\ArbiterControl";
/// Its DOS symbolic link (the driver creates it).
pub const DEVICE_LINK: &str = r"\DosDevices\ArbiterControl";
/// The path user mode opens with CreateFileW.
pub const DEVICE_PATH: &str = r"\\.\ArbiterControl";
/// Vendor device type (0x8000 and above are for vendors).
pub const FILE_DEVICE_ARBITER: u32 = 0x8A7B;
/// CTL_CODE(FILE_DEVICE_ARBITER, 0x900, METHOD_BUFFERED, FILE_READ_DATA | FILE_WRITE_DATA):
/// both access bits, so only a handle opened for read and write (which the
/// device's SDDL restricts to SYSTEM and administrators) may send it.
pub const IOCTL_CONTROL: u32 = (FILE_DEVICE_ARBITER << 16) | (3 << 14) | (0x900 << 2);

/// What a request asks for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u16)]
pub enum Op {
    /// Driver facts: protocol versions, rules id, proxy registration, ring stats.
    Hello = 1,
    /// Replace the rules with a compiled blob, all or nothing.
    SetRules = 2,
    /// Register our proxy: PID and listeners.
    RegisterProxy = 3,
    /// Unregister our proxy (only the registered PID may).
    UnregisterProxy = 4,
    /// Read audit records from a cursor.
    DrainAudit = 5,
    /// Read every counter.
    ReadCounters = 6,
}

impl Op {
    /// From the wire code.
    pub const fn from_u16(v: u16) -> Option<Self> {
        match v {
            1 => Some(Self::Hello),
            2 => Some(Self::SetRules),
            3 => Some(Self::RegisterProxy),
            4 => Some(Self::UnregisterProxy),
            5 => Some(Self::DrainAudit),
            6 => Some(Self::ReadCounters),
            _ => None,
        }
    }

    /// The name used in logs.
    pub const fn name(self) -> &'static str {
        match self {
            Self::Hello => "hello",
            Self::SetRules => "set-rules",
            Self::RegisterProxy => "register-proxy",
            Self::UnregisterProxy => "unregister-proxy",
            Self::DrainAudit => "drain-audit",
            Self::ReadCounters => "read-counters",
        }
    }
}

macro_rules! statuses {
    ($( $(#[$doc:meta])* $variant:ident = $code:literal, $name:literal, $desc:literal; )*) => {
        /// The outcome of a request. Codes are stable; never renumber.
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
        #[repr(u32)]
        pub enum Status {
            $( $(#[$doc])* $variant = $code, )*
        }

        impl Status {
            /// From the wire code; `None` for a code this build does not know.
            pub const fn from_u32(v: u32) -> Option<Self> {
                match v {
                    $( $code => Some(Self::$variant), )*
                    _ => None,
                }
            }

            /// The kebab-case name.
            pub const fn name(self) -> &'static str {
                match self {
                    $( Self::$variant => $name, )*
                }
            }

            /// A one-line description.
            pub const fn description(self) -> &'static str {
                match self {
                    $( Self::$variant => $desc, )*
                }
            }
        }
    };
}

statuses! {
    /// Done.
    Ok = 0, "ok", "the request was applied";
    /// Shorter than its header or than its declared body.
    Truncated = 1, "truncated", "the request is shorter than its header says";
    /// Not `ARCQ`.
    BadMagic = 2, "bad-magic", "not a control request";
    /// A version this build does not speak (the reply carries ours).
    UnsupportedVersion = 3, "unsupported-version", "the request's protocol version is not supported";
    /// An op code this build does not know.
    UnknownOp = 4, "unknown-op", "the request's op code is not known";
    /// The body has the wrong length for its op, or bytes after it.
    BadLength = 5, "bad-length", "the body length does not fit the op";
    /// A field holds a value outside its range (flags, reserved bytes).
    BadValue = 6, "bad-value", "a field holds an invalid value";
    /// The rules blob is larger than [`MAX_RULES_LEN`].
    TooLarge = 7, "too-large", "the rules blob is too large";
    /// The reply buffer cannot hold the reply; the body says how many bytes it needs.
    ReplyTooSmall = 8, "reply-too-small", "the reply buffer is too small";
    /// The rules decoder refused the blob; the previous rules stay in force.
    RulesRejected = 9, "rules-rejected", "the rules blob was rejected";
    /// Proxy PID 0.
    ZeroPid = 10, "zero-pid", "proxy PID 0 is not a process";
    /// Neither listener given.
    NoListener = 11, "no-listener", "a proxy needs an IPv4 or an IPv6 listener";
    /// Unregistering a PID that is not the registered proxy.
    NotRegistered = 12, "not-registered", "that PID is not the registered proxy";
    /// A drain cursor past the newest record (a reader from before a driver restart).
    CursorAhead = 13, "cursor-ahead", "the drain cursor is past the newest record";
    /// The target failed in a way the protocol cannot name.
    Internal = 14, "internal", "the driver could not complete the request";
}

impl fmt::Display for Status {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ({})", self.name(), self.description())
    }
}

impl From<SetProxyError> for Status {
    fn from(e: SetProxyError) -> Self {
        match e {
            SetProxyError::ZeroPid => Self::ZeroPid,
            SetProxyError::NoListener => Self::NoListener,
            SetProxyError::PidTooLarge => Self::BadValue,
        }
    }
}

// ---- requests -------------------------------------------------------------

/// One control request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Request<'a> {
    /// [`Op::Hello`].
    Hello,
    /// [`Op::SetRules`] with the compiled blob.
    SetRules(&'a [u8]),
    /// [`Op::RegisterProxy`].
    RegisterProxy(ProxyRegistration),
    /// [`Op::UnregisterProxy`] for this PID.
    UnregisterProxy {
        /// The PID that registered.
        pid: u64,
    },
    /// [`Op::DrainAudit`].
    DrainAudit {
        /// The next sequence number the reader wants; everything before it is acknowledged.
        cursor: u64,
        /// At most this many bytes of records (0: as many as the reply buffer holds).
        max_bytes: u32,
    },
    /// [`Op::ReadCounters`].
    ReadCounters,
}

/// Why a request was refused before anything was applied.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RequestError {
    /// The op code as sent (0 when the header was unreadable).
    pub op: u16,
    /// The status the reply carries.
    pub status: Status,
    /// Byte offset of the problem from the start of the request.
    pub offset: u32,
    /// What is wrong, for logs.
    pub what: &'static str,
}

impl fmt::Display for RequestError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "control request at byte {}: {} ({})", self.offset, self.what, self.status.name())
    }
}

impl core::error::Error for RequestError {}

impl Request<'_> {
    /// Its op.
    pub const fn op(&self) -> Op {
        match self {
            Self::Hello => Op::Hello,
            Self::SetRules(_) => Op::SetRules,
            Self::RegisterProxy(_) => Op::RegisterProxy,
            Self::UnregisterProxy { .. } => Op::UnregisterProxy,
            Self::DrainAudit { .. } => Op::DrainAudit,
            Self::ReadCounters => Op::ReadCounters,
        }
    }

    fn body_len(&self) -> usize {
        match self {
            Self::Hello | Self::ReadCounters => 0,
            Self::SetRules(blob) => blob.len(),
            Self::RegisterProxy(_) => REGISTRATION_LEN,
            Self::UnregisterProxy { .. } => 8,
            Self::DrainAudit { .. } => 16,
        }
    }

    /// Exact encoded size.
    pub fn encoded_len(&self) -> usize {
        REQUEST_HEADER_LEN.saturating_add(self.body_len())
    }

    /// Encodes into `out`, returning the bytes written.
    pub fn encode_into(&self, out: &mut [u8]) -> Result<usize, Short> {
        let body_len = u32::try_from(self.body_len()).map_err(|_| Short)?;
        let mut w = Writer::new(out);
        w.put(&REQUEST_MAGIC)?;
        w.u16(VERSION)?;
        w.u16(self.op() as u16)?;
        w.u32(body_len)?;
        match self {
            Self::Hello | Self::ReadCounters => {}
            Self::SetRules(blob) => w.put(blob)?,
            Self::RegisterProxy(reg) => put_registration(&mut w, Some(reg))?,
            Self::UnregisterProxy { pid } => w.u64(*pid)?,
            Self::DrainAudit { cursor, max_bytes } => {
                w.u64(*cursor)?;
                w.u32(*max_bytes)?;
                w.u32(0)?;
            }
        }
        Ok(w.written())
    }

    /// Encodes into a new vector.
    pub fn to_vec(&self) -> Vec<u8> {
        let mut v = alloc::vec![0u8; self.encoded_len()];
        let n = self.encode_into(&mut v).unwrap_or(0);
        v.truncate(n);
        v
    }
}

impl<'a> Request<'a> {
    /// Decodes and validates a whole request. Any byte string is safe to pass;
    /// the request must be exactly as long as its header says.
    pub fn decode(bytes: &'a [u8]) -> Result<Self, RequestError> {
        let mut r = Reader::new(bytes);
        let at = |r: &Reader<'_>| u32::try_from(bytes.len().saturating_sub(r.remaining())).unwrap_or(u32::MAX);
        let fail = |op: u16, status, offset, what| RequestError { op, status, offset, what };
        let short = |r: &Reader<'_>, op| fail(op, Status::Truncated, at(r), "request shorter than its header");

        let magic: [u8; 4] = r.array().map_err(|_| short(&r, 0))?;
        if magic != REQUEST_MAGIC {
            return Err(fail(0, Status::BadMagic, 0, "magic is not ARCQ"));
        }
        let version = r.u16().map_err(|_| short(&r, 0))?;
        let raw_op = r.u16().map_err(|_| short(&r, 0))?;
        if version != VERSION {
            return Err(fail(raw_op, Status::UnsupportedVersion, 4, "protocol version not supported"));
        }
        let len = r.u32().map_err(|_| short(&r, raw_op))?;
        let Some(op) = Op::from_u16(raw_op) else {
            return Err(fail(raw_op, Status::UnknownOp, 6, "unknown op code"));
        };
        let len = usize::try_from(len).unwrap_or(usize::MAX);
        if op == Op::SetRules && len > MAX_RULES_LEN {
            return Err(fail(raw_op, Status::TooLarge, 8, "rules blob larger than the limit"));
        }
        let body = r.take(len).map_err(|_| fail(raw_op, Status::Truncated, 8, "body shorter than its length field"))?;
        if r.remaining() != 0 {
            let end = u32::try_from(REQUEST_HEADER_LEN.saturating_add(len)).unwrap_or(u32::MAX);
            return Err(fail(raw_op, Status::BadLength, end, "bytes after the body"));
        }
        let want = match op {
            Op::Hello | Op::ReadCounters => Some(0),
            Op::SetRules => None,
            Op::RegisterProxy => Some(REGISTRATION_LEN),
            Op::UnregisterProxy => Some(8),
            Op::DrainAudit => Some(16),
        };
        if want.is_some_and(|w| w != len) || (op == Op::SetRules && len == 0) {
            return Err(fail(raw_op, Status::BadLength, 8, "body length does not fit the op"));
        }
        let base = REQUEST_HEADER_LEN;
        let mut b = Reader::new(body);
        let bad = |b: &Reader<'_>, what| {
            let off = base.saturating_add(body.len().saturating_sub(b.remaining()));
            fail(raw_op, Status::BadValue, u32::try_from(off).unwrap_or(u32::MAX), what)
        };
        // The lengths were checked above, so the reads below cannot run short;
        // should they, the request is reported truncated rather than trusted.
        let trunc = |_| fail(raw_op, Status::Truncated, 8, "body shorter than its op needs");
        Ok(match op {
            Op::Hello => Self::Hello,
            Op::ReadCounters => Self::ReadCounters,
            Op::SetRules => Self::SetRules(body),
            Op::RegisterProxy => match get_registration(&mut b) {
                Ok(Some(reg)) => Self::RegisterProxy(reg),
                Ok(None) => return Err(bad(&b, "registration names no listener")),
                Err(RegError::Short) => return Err(trunc(())),
                Err(RegError::Bad(what, rest)) => {
                    let off = base.saturating_add(body.len().saturating_sub(rest));
                    return Err(fail(raw_op, Status::BadValue, u32::try_from(off).unwrap_or(u32::MAX), what));
                }
            },
            Op::UnregisterProxy => Self::UnregisterProxy { pid: b.u64().map_err(|_| trunc(()))? },
            Op::DrainAudit => {
                let cursor = b.u64().map_err(|_| trunc(()))?;
                let max_bytes = b.u32().map_err(|_| trunc(()))?;
                let reserved = b.u32().map_err(|_| trunc(()))?;
                if reserved != 0 {
                    return Err(bad(&b, "reserved drain field is not zero"));
                }
                Self::DrainAudit { cursor, max_bytes }
            }
        })
    }
}

enum RegError {
    Short,
    /// What, and how many body bytes were left after the bad field.
    Bad(&'static str, usize),
}

impl From<Short> for RegError {
    fn from(_: Short) -> Self {
        Self::Short
    }
}

const REG_V4: u8 = 1;
const REG_V6: u8 = 2;

/// pid u64, flags u8 (1: v4 present, 2: v6 present), 3 zero bytes, v4
/// address (4) + port (u16) + 2 zero bytes, v6 address (16) + port (u16) +
/// 2 zero bytes + flow info (u32) + scope id (u32). Absent listeners are all
/// zero, so every registration has exactly one encoding.
fn put_registration(w: &mut Writer<'_>, reg: Option<&ProxyRegistration>) -> Result<(), Short> {
    let (pid, v4, v6) = reg.map_or((0, None, None), |r| (r.pid, r.v4, r.v6));
    let flags = if v4.is_some() { REG_V4 } else { 0 } | if v6.is_some() { REG_V6 } else { 0 };
    w.u64(pid)?;
    w.u8(flags)?;
    w.put(&[0; 3])?;
    let v4 = v4.unwrap_or(SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 0));
    w.put(&v4.ip().octets())?;
    w.u16(v4.port())?;
    w.u16(0)?;
    let v6 = v6.unwrap_or(SocketAddrV6::new(Ipv6Addr::UNSPECIFIED, 0, 0, 0));
    w.put(&v6.ip().octets())?;
    w.u16(v6.port())?;
    w.u16(0)?;
    w.u32(v6.flowinfo())?;
    w.u32(v6.scope_id())
}

/// `Ok(None)`: a well-formed block with neither listener (pid 0 in `Hello`).
fn get_registration(r: &mut Reader<'_>) -> Result<Option<ProxyRegistration>, RegError> {
    let pid = r.u64()?;
    let flags = r.u8()?;
    if flags & !(REG_V4 | REG_V6) != 0 {
        return Err(RegError::Bad("unknown registration flag bits", r.remaining().saturating_add(1)));
    }
    if r.array::<3>()? != [0; 3] {
        return Err(RegError::Bad("reserved registration bytes are not zero", r.remaining().saturating_add(3)));
    }
    let ip4: [u8; 4] = r.array()?;
    let port4 = r.u16()?;
    if r.u16()? != 0 {
        return Err(RegError::Bad("reserved registration bytes are not zero", r.remaining().saturating_add(2)));
    }
    let ip6: [u8; 16] = r.array()?;
    let port6 = r.u16()?;
    if r.u16()? != 0 {
        return Err(RegError::Bad("reserved registration bytes are not zero", r.remaining().saturating_add(2)));
    }
    let flow6 = r.u32()?;
    let scope6 = r.u32()?;
    let v4 = (flags & REG_V4 != 0).then(|| SocketAddrV4::new(Ipv4Addr::from(ip4), port4));
    let v6 = (flags & REG_V6 != 0).then(|| SocketAddrV6::new(Ipv6Addr::from(ip6), port6, flow6, scope6));
    if v4.is_none() && (ip4 != [0; 4] || port4 != 0) {
        return Err(RegError::Bad("absent IPv4 listener is not zero", r.remaining().saturating_add(36)));
    }
    if v6.is_none() && (ip6 != [0; 16] || port6 != 0 || flow6 != 0 || scope6 != 0) {
        return Err(RegError::Bad("absent IPv6 listener is not zero", r.remaining().saturating_add(28)));
    }
    if v4.is_none() && v6.is_none() {
        if pid != 0 {
            return Err(RegError::Bad("registration names no listener", r.remaining().saturating_add(48)));
        }
        return Ok(None);
    }
    Ok(Some(ProxyRegistration { pid, v4, v6 }))
}

// ---- the driver side ------------------------------------------------------

/// The rules decoder refused a blob: its error code and the byte offset it names.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RulesRejected {
    /// The decoder's error code (see `arbiter::compiled`).
    pub code: u32,
    /// Where in the blob.
    pub offset: u32,
}

/// What [`handle`] acts on: the driver's state behind its lock.
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
    /// Unregisters our proxy.
    fn unregister_proxy(&mut self);
    /// The registered proxy.
    fn proxy(&self) -> Option<ProxyRegistration>;
    /// The core's counters.
    fn counters(&self) -> Counters;
    /// The audit ring.
    fn ring(&mut self) -> &mut AuditRing;
}

/// A [`ControlTarget`] over an [`Arbiter`], an [`AuditRing`] and a rules
/// decoder: what the driver builds under its lock for each IOCTL.
#[derive(Debug)]
pub struct Station<'a, P, D> {
    /// The policy core.
    pub arbiter: &'a mut Arbiter<P>,
    /// The audit ring.
    pub ring: &'a mut AuditRing,
    /// Decodes a rules blob (`arbiter::compiled`'s decoder in the driver).
    pub decode_rules: D,
    /// This driver load's id.
    pub instance: u64,
}

impl<P, D> ControlTarget for Station<'_, P, D>
where
    P: Policy,
    D: FnMut(&[u8]) -> Result<P, RulesRejected>,
{
    fn instance(&self) -> u64 {
        self.instance
    }
    fn load_rules(&mut self, blob: &[u8]) -> Result<u32, RulesRejected> {
        let policy = (self.decode_rules)(blob)?;
        // The old rules are dropped here, after the swap.
        drop(self.arbiter.replace_policy(policy));
        Ok(self.arbiter.policy().id())
    }
    fn rules_id(&self) -> u32 {
        self.arbiter.policy().id()
    }
    fn register_proxy(&mut self, r: ProxyRegistration) -> Result<(), SetProxyError> {
        self.arbiter.set_proxy(r.pid, r.v4, r.v6)
    }
    fn unregister_proxy(&mut self) {
        self.arbiter.clear_proxy();
    }
    fn proxy(&self) -> Option<ProxyRegistration> {
        self.arbiter.proxy().copied()
    }
    fn counters(&self) -> Counters {
        *self.arbiter.counters()
    }
    fn ring(&mut self) -> &mut AuditRing {
        self.ring
    }
}

/// Decodes `request`, applies it to `target` all or nothing, and writes the
/// reply into `reply`, returning the reply's length. Returns 0 only when
/// `reply` cannot hold a reply header (the driver then completes the IRP with
/// STATUS_BUFFER_TOO_SMALL). Never panics; a refused request changes nothing.
pub fn handle<T: ControlTarget + ?Sized>(request: &[u8], target: &mut T, reply: &mut [u8]) -> usize {
    let instance = target.instance();
    let Some((head, body)) = reply.split_at_mut_checked(REPLY_HEADER_LEN) else {
        return 0;
    };
    let (op, status, body_len) = match Request::decode(request) {
        Err(e) => (e.op, e.status, put_u32(body, e.offset)),
        Ok(req) => {
            let (status, len) = apply(&req, target, body);
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

fn apply<T: ControlTarget + ?Sized>(req: &Request<'_>, target: &mut T, body: &mut [u8]) -> (Status, usize) {
    // Every fixed-size reply is checked for room before anything is applied,
    // so a change is never made without the reply that reports it.
    let fixed = match req {
        Request::Hello => Some(INFO_LEN),
        Request::SetRules(_) => Some(8),
        Request::RegisterProxy(_) | Request::UnregisterProxy { .. } => Some(0),
        Request::ReadCounters => Some(COUNTERS_LEN.saturating_add(RING_STATS_LEN)),
        Request::DrainAudit { .. } => None,
    };
    if let Some(need) = fixed
        && body.len() < need
    {
        return too_small(body, need);
    }
    if let Request::DrainAudit { cursor, max_bytes } = *req {
        return match target.ring().drain(cursor, max_bytes, body) {
            Ok(n) => (Status::Ok, n),
            Err(DrainError::CursorAhead) => (Status::CursorAhead, 0),
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
        Request::RegisterProxy(reg) => match target.register_proxy(reg) {
            Ok(()) => (Status::Ok, Ok(())),
            Err(e) => (Status::from(e), Ok(())),
        },
        Request::UnregisterProxy { pid } => {
            if target.proxy().is_some_and(|p| p.pid == pid) {
                target.unregister_proxy();
                (Status::Ok, Ok(()))
            } else {
                (Status::NotRegistered, Ok(()))
            }
        }
        Request::ReadCounters => {
            let counters = target.counters();
            let stats = target.ring().stats();
            (Status::Ok, put_counters(&mut w, &counters).and_then(|()| stats.encode(&mut w)))
        }
        // Answered above.
        Request::DrainAudit { .. } => (Status::Internal, Ok(())),
    };
    match wrote {
        Ok(()) => (status, w.written()),
        // Room was checked above; should the encoders disagree, say so
        // rather than send a half-written body.
        Err(Short) => (Status::Internal, 0),
    }
}

// ---- replies --------------------------------------------------------------

/// A decoded reply header and its body.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Reply<'a> {
    /// The op code echoed from the request (0 if the request's was unreadable).
    pub op: u16,
    /// The outcome.
    pub status: Status,
    /// The driver load that answered.
    pub instance: u64,
    /// The body, to read with the typed accessors.
    pub body: &'a [u8],
}

/// Why reply bytes could not be read.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReplyError {
    /// Shorter than its header or its declared body, or a body too short for its op.
    Truncated,
    /// Not `ARCP`.
    BadMagic,
    /// A protocol version this build does not read.
    Version(u16),
    /// A status code this build does not know.
    UnknownStatus(u32),
    /// The body does not fit the op (bad lengths, non-zero reserved bytes).
    BadBody(&'static str),
    /// The accessor does not match the reply's op or status.
    WrongKind,
}

impl fmt::Display for ReplyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Truncated => f.write_str("control reply is truncated"),
            Self::BadMagic => f.write_str("not a control reply (bad magic)"),
            Self::Version(v) => write!(f, "control reply version {v} is not supported (this build reads {VERSION})"),
            Self::UnknownStatus(s) => write!(f, "control reply status {s} is not known"),
            Self::BadBody(what) => write!(f, "control reply body: {what}"),
            Self::WrongKind => f.write_str("control reply is not of the kind asked for"),
        }
    }
}

impl core::error::Error for ReplyError {}

impl From<Short> for ReplyError {
    fn from(_: Short) -> Self {
        Self::Truncated
    }
}

const INFO_LEN: usize = 4 + 4 + REGISTRATION_LEN + RING_STATS_LEN;

/// The `Hello` reply.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Info {
    /// The id of the rules in force.
    pub rules_id: u32,
    /// The registered proxy.
    pub proxy: Option<ProxyRegistration>,
    /// The audit ring.
    pub ring: RingStats,
}

impl Info {
    fn encode(&self, w: &mut Writer<'_>) -> Result<(), Short> {
        // The versions this build accepts: just one so far.
        w.u16(VERSION)?;
        w.u16(VERSION)?;
        w.u32(self.rules_id)?;
        put_registration(w, self.proxy.as_ref())?;
        self.ring.encode(w)
    }
}

/// The audit ring's state.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RingStats {
    /// Bytes reserved.
    pub capacity: u32,
    /// Bytes held.
    pub used: u32,
    /// Records held.
    pub held: u32,
    /// Records dropped unread because the ring was full, since load.
    pub dropped: u64,
    /// Records too large for the ring (kept as empty placeholders), since load.
    pub oversized: u64,
    /// The sequence number the next record gets.
    pub next_seq: u64,
}

impl RingStats {
    fn encode(&self, w: &mut Writer<'_>) -> Result<(), Short> {
        w.u32(self.capacity)?;
        w.u32(self.used)?;
        w.u32(self.held)?;
        w.u32(0)?;
        w.u64(self.dropped)?;
        w.u64(self.oversized)?;
        w.u64(self.next_seq)
    }

    fn decode(r: &mut Reader<'_>) -> Result<Self, ReplyError> {
        let capacity = r.u32()?;
        let used = r.u32()?;
        let held = r.u32()?;
        if r.u32()? != 0 {
            return Err(ReplyError::BadBody("reserved ring field is not zero"));
        }
        Ok(Self { capacity, used, held, dropped: r.u64()?, oversized: r.u64()?, next_seq: r.u64()? })
    }
}

fn put_counters(w: &mut Writer<'_>, c: &Counters) -> Result<(), Short> {
    // Destructured whole, so a new counter cannot be left off the wire unnoticed.
    let Counters { connect_redirect, auth_connect, verdicts, evicted, expired, forgotten, loops_suspected, records } =
        *c;
    w.u64(connect_redirect)?;
    w.u64(auth_connect)?;
    for v in verdicts.into_iter().chain(evicted).chain(expired) {
        w.u64(v)?;
    }
    w.u64(forgotten)?;
    w.u64(loops_suspected)?;
    w.u64(records)
}

fn get_counters(r: &mut Reader<'_>) -> Result<Counters, Short> {
    let connect_redirect = r.u64()?;
    let auth_connect = r.u64()?;
    let verdicts = [r.u64()?, r.u64()?, r.u64()?, r.u64()?];
    let evicted = [r.u64()?, r.u64()?, r.u64()?];
    let expired = [r.u64()?, r.u64()?, r.u64()?];
    Ok(Counters {
        connect_redirect,
        auth_connect,
        verdicts,
        evicted,
        expired,
        forgotten: r.u64()?,
        loops_suspected: r.u64()?,
        records: r.u64()?,
    })
}

/// A drain reply.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Drained<'a> {
    /// The cursor for the next drain.
    pub next_cursor: u64,
    /// Records between the request's cursor and the oldest one held, dropped
    /// before the reader could see them.
    pub lost: u64,
    /// Records still held after these.
    pub pending: u32,
    /// How many records follow.
    pub count: u32,
    entries: &'a [u8],
}

impl<'a> Drained<'a> {
    /// The records in order: sequence number and encoded [`AuditRecord`]
    /// (empty for a record that was too large for the ring).
    pub fn records(&self) -> impl Iterator<Item = Result<(u64, &'a [u8]), ReplyError>> + 'a {
        let mut r = Reader::new(self.entries);
        let mut left = self.count;
        core::iter::from_fn(move || {
            if left == 0 {
                return None;
            }
            left = left.saturating_sub(1);
            let entry = (|| {
                let seq = r.u64()?;
                let len = usize::try_from(r.u32()?).map_err(|_| Short)?;
                Ok::<_, Short>((seq, r.take(len)?))
            })();
            if entry.is_err() {
                left = 0;
            }
            Some(entry.map_err(ReplyError::from))
        })
    }
}

impl<'a> Reply<'a> {
    /// Decodes a reply; any byte string is safe to pass.
    pub fn decode(bytes: &'a [u8]) -> Result<Self, ReplyError> {
        let mut r = Reader::new(bytes);
        if r.array::<4>()? != REPLY_MAGIC {
            return Err(ReplyError::BadMagic);
        }
        let version = r.u16()?;
        if version != VERSION {
            return Err(ReplyError::Version(version));
        }
        let op = r.u16()?;
        let raw = r.u32()?;
        let status = Status::from_u32(raw).ok_or(ReplyError::UnknownStatus(raw))?;
        let instance = r.u64()?;
        let len = usize::try_from(r.u32()?).map_err(|_| ReplyError::Truncated)?;
        let body = r.take(len)?;
        if r.remaining() != 0 {
            return Err(ReplyError::BadBody("bytes after the body"));
        }
        Ok(Self { op, status, instance, body })
    }

    fn expect(&self, op: Op, status: Status) -> Result<Reader<'a>, ReplyError> {
        if self.op != op as u16 || self.status != status {
            return Err(ReplyError::WrongKind);
        }
        Ok(Reader::new(self.body))
    }

    fn done<T>(r: &Reader<'_>, v: T) -> Result<T, ReplyError> {
        if r.remaining() == 0 { Ok(v) } else { Err(ReplyError::BadBody("bytes after the last field")) }
    }

    /// For refused requests (malformed ones): the request byte offset named.
    /// For `ReplyTooSmall`: the reply size needed.
    pub fn error_value(&self) -> Option<u32> {
        if self.status == Status::Ok || self.status == Status::RulesRejected {
            return None;
        }
        Reader::new(self.body).u32().ok()
    }

    /// The `Hello` reply.
    pub fn info(&self) -> Result<Info, ReplyError> {
        let mut r = self.expect(Op::Hello, Status::Ok)?;
        let lo = r.u16()?;
        let hi = r.u16()?;
        if lo > VERSION || hi < VERSION {
            return Err(ReplyError::BadBody("driver speaks no version this build reads"));
        }
        let rules_id = r.u32()?;
        let proxy = match get_registration(&mut r) {
            Ok(p) => p,
            Err(RegError::Short) => return Err(ReplyError::Truncated),
            Err(RegError::Bad(what, _)) => return Err(ReplyError::BadBody(what)),
        };
        let ring = RingStats::decode(&mut r)?;
        Self::done(&r, Info { rules_id, proxy, ring })
    }

    /// The new rules' id (status `Ok`) or the decoder's complaint (status `RulesRejected`).
    pub fn rules(&self) -> Result<Result<u32, RulesRejected>, ReplyError> {
        let ok = self.status == Status::Ok;
        let mut r = self.expect(Op::SetRules, if ok { Status::Ok } else { Status::RulesRejected })?;
        let (a, b) = (r.u32()?, r.u32()?);
        let v = if ok {
            if b != 0 {
                return Err(ReplyError::BadBody("reserved rules field is not zero"));
            }
            Ok(a)
        } else {
            Err(RulesRejected { code: a, offset: b })
        };
        Self::done(&r, v)
    }

    /// The counters and the ring's state.
    pub fn counters(&self) -> Result<(Counters, RingStats), ReplyError> {
        let mut r = self.expect(Op::ReadCounters, Status::Ok)?;
        let c = get_counters(&mut r)?;
        let s = RingStats::decode(&mut r)?;
        Self::done(&r, (c, s))
    }

    /// The drained records.
    pub fn drained(&self) -> Result<Drained<'a>, ReplyError> {
        let mut r = self.expect(Op::DrainAudit, Status::Ok)?;
        let next_cursor = r.u64()?;
        let lost = r.u64()?;
        let pending = r.u32()?;
        let count = r.u32()?;
        let d = Drained { next_cursor, lost, pending, count, entries: r.rest() };
        // Check the framing once, so iterating cannot fail halfway.
        let mut walk = Reader::new(d.entries);
        for _ in 0..count {
            let _seq = walk.u64()?;
            let len = usize::try_from(walk.u32()?).map_err(|_| ReplyError::Truncated)?;
            walk.take(len)?;
        }
        if walk.remaining() != 0 {
            return Err(ReplyError::BadBody("bytes after the last record"));
        }
        Ok(d)
    }
}

// ---- the audit ring -------------------------------------------------------

/// Why a drain could not be answered; nothing changed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DrainError {
    /// The cursor is past the newest record.
    CursorAhead,
    /// The reply body needs this many bytes to carry the next record.
    TooSmall(usize),
}

/// The driver's bounded log of encoded audit records.
///
/// Entries are contiguous: sequence (u64), length (u32), the record. When the
/// space after the newest entry is too small, writing wraps to the start and
/// the oldest entries are dropped (and counted) until the new one fits.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AuditRing {
    buf: Vec<u8>,
    /// Offset of the oldest entry.
    head: usize,
    /// Offset where the next entry goes.
    tail: usize,
    /// When wrapped: where the entries in the upper part end.
    wrap_at: Option<usize>,
    first_seq: u64,
    next_seq: u64,
    dropped: u64,
    oversized: u64,
}

impl AuditRing {
    /// Reserves `capacity` bytes (at least one entry header, at most `u32::MAX`).
    pub fn new(capacity: usize) -> Result<Self, OutOfMemory> {
        let capacity = capacity.clamp(ENTRY_HEADER_LEN, u32::MAX as usize);
        let mut buf = Vec::new();
        buf.try_reserve_exact(capacity).map_err(|_| OutOfMemory)?;
        // Within the reservation: no further allocation.
        buf.resize(capacity, 0);
        Ok(Self { buf, head: 0, tail: 0, wrap_at: None, first_seq: 0, next_seq: 0, dropped: 0, oversized: 0 })
    }

    /// Bytes reserved.
    pub fn capacity(&self) -> usize {
        self.buf.len()
    }

    /// Records held.
    pub const fn held(&self) -> u64 {
        self.next_seq.saturating_sub(self.first_seq)
    }

    /// True when no record is held.
    pub const fn is_empty(&self) -> bool {
        self.held() == 0
    }

    /// The oldest record's sequence number (the next one's, when empty).
    pub const fn first_seq(&self) -> u64 {
        self.first_seq
    }

    /// The sequence number the next record gets.
    pub const fn next_seq(&self) -> u64 {
        self.next_seq
    }

    /// Bytes held, entry headers included.
    pub fn used(&self) -> usize {
        match self.wrap_at {
            None => self.tail.saturating_sub(self.head),
            Some(w) => w.saturating_sub(self.head).saturating_add(self.tail),
        }
    }

    /// The ring's state.
    pub fn stats(&self) -> RingStats {
        let u32_of = |v: usize| u32::try_from(v).unwrap_or(u32::MAX);
        RingStats {
            capacity: u32_of(self.capacity()),
            used: u32_of(self.used()),
            held: u32::try_from(self.held()).unwrap_or(u32::MAX),
            dropped: self.dropped,
            oversized: self.oversized,
            next_seq: self.next_seq,
        }
    }

    /// Appends an already encoded record, returning its sequence number.
    pub fn push(&mut self, record: &[u8]) -> u64 {
        self.push_with(record.len(), |slot| {
            // Lengths checked: copy_from_slice cannot panic.
            let same = slot.len() == record.len();
            if same {
                slot.copy_from_slice(record);
            }
            same
        })
    }

    /// Encodes a record straight into the ring (no allocation), returning
    /// its sequence number.
    pub fn push_record(&mut self, record: &AuditRecord<'_>) -> u64 {
        let len = record.encoded_len();
        self.push_with(len, |slot| record.encode_into(slot).is_ok_and(|n| n == slot.len()))
    }

    /// Reserves an entry of `len` bytes and lets `fill` write it. A record
    /// that cannot fit (or that `fill` refuses) is kept as an empty
    /// placeholder, so its sequence number still tells the reader it is gone.
    fn push_with(&mut self, len: usize, fill: impl FnOnce(&mut [u8]) -> bool) -> u64 {
        let seq = self.next_seq;
        let fits = ENTRY_HEADER_LEN.checked_add(len).filter(|&n| n <= self.capacity() && u32::try_from(len).is_ok());
        let (need, len) = match fits {
            Some(n) => (n, len),
            None => (ENTRY_HEADER_LEN, 0),
        };
        let Some(at) = self.make_room(need) else {
            // The ring's bookkeeping is inconsistent (a bug): start over
            // rather than trust it, counting what was lost.
            self.reset_dropping();
            return self.push_placeholder(seq);
        };
        let written = self.buf.get_mut(at..at.saturating_add(need)).is_some_and(|entry| {
            let (header, payload) = entry.split_at_mut(ENTRY_HEADER_LEN);
            let mut w = Writer::new(header);
            let ok = w.u64(seq).and_then(|()| w.u32(u32::try_from(len).unwrap_or(0))).is_ok();
            // A record that does not fit is never handed to `fill`.
            ok && fits.is_some() && payload.len() == len && fill(payload)
        });
        if fits.is_none() || !written {
            self.oversized = self.oversized.saturating_add(1);
            // Rewrite as a placeholder in the same place.
            if let Some(header) = self.buf.get_mut(at..at.saturating_add(ENTRY_HEADER_LEN)) {
                let mut w = Writer::new(header);
                let _ = w.u64(seq).and_then(|()| w.u32(0));
            }
            self.tail = at.saturating_add(ENTRY_HEADER_LEN);
        } else {
            self.tail = at.saturating_add(need);
        }
        self.next_seq = seq.saturating_add(1);
        seq
    }

    fn push_placeholder(&mut self, seq: u64) -> u64 {
        self.oversized = self.oversized.saturating_add(1);
        if let Some(header) = self.buf.get_mut(..ENTRY_HEADER_LEN) {
            let mut w = Writer::new(header);
            let _ = w.u64(seq).and_then(|()| w.u32(0));
            self.head = 0;
            self.tail = ENTRY_HEADER_LEN;
            self.first_seq = seq;
        }
        self.next_seq = seq.saturating_add(1);
        seq
    }

    fn reset_dropping(&mut self) {
        self.dropped = self.dropped.saturating_add(self.held());
        self.first_seq = self.next_seq;
        self.head = 0;
        self.tail = 0;
        self.wrap_at = None;
    }

    /// Finds `need` contiguous free bytes, dropping the oldest entries as
    /// needed; returns where they start. `need` is at most the capacity.
    fn make_room(&mut self, need: usize) -> Option<usize> {
        // Each pass either writes, wraps once, or drops one entry, so the
        // loop ends within held() + 2 passes.
        let mut passes = self.held().saturating_add(3);
        while passes > 0 {
            passes = passes.saturating_sub(1);
            if self.is_empty() {
                self.head = 0;
                self.tail = 0;
                self.wrap_at = None;
            }
            match self.wrap_at {
                None => {
                    if self.capacity().saturating_sub(self.tail) >= need {
                        return Some(self.tail);
                    }
                    self.wrap_at = Some(self.tail);
                    self.tail = 0;
                }
                Some(_) => {
                    if self.head.saturating_sub(self.tail) >= need {
                        return Some(self.tail);
                    }
                    self.pop_oldest()?;
                    self.dropped = self.dropped.saturating_add(1);
                }
            }
        }
        None
    }

    /// The entry at `at`: sequence, record, and whole size.
    fn entry_at(&self, at: usize) -> Option<(u64, &[u8], usize)> {
        let mut r = Reader::new(self.buf.get(at..)?);
        let seq = r.u64().ok()?;
        let len = usize::try_from(r.u32().ok()?).ok()?;
        let payload = r.take(len).ok()?;
        Some((seq, payload, ENTRY_HEADER_LEN.checked_add(len)?))
    }

    /// Where the entry after the one at `at` (of `size` bytes) starts.
    fn after(&self, at: usize, size: usize, wrap_at: Option<usize>) -> (usize, Option<usize>) {
        let next = at.saturating_add(size);
        match wrap_at {
            Some(w) if next >= w => (0, None),
            _ => (next, wrap_at),
        }
    }

    /// Removes the oldest entry (not counting it); `None` if the ring is empty or inconsistent.
    fn pop_oldest(&mut self) -> Option<()> {
        if self.is_empty() {
            return None;
        }
        let (_, _, size) = self.entry_at(self.head)?;
        let (head, wrap_at) = self.after(self.head, size, self.wrap_at);
        self.head = head;
        self.wrap_at = wrap_at;
        self.first_seq = self.first_seq.saturating_add(1);
        if self.is_empty() {
            self.head = 0;
            self.tail = 0;
            self.wrap_at = None;
        }
        Some(())
    }

    /// The held records, oldest first: sequence number and record bytes.
    pub fn iter(&self) -> impl Iterator<Item = (u64, &[u8])> + '_ {
        let mut at = self.head;
        let mut wrap = self.wrap_at;
        let mut left = self.held();
        core::iter::from_fn(move || {
            if left == 0 {
                return None;
            }
            left = left.saturating_sub(1);
            let Some((seq, payload, size)) = self.entry_at(at) else {
                left = 0;
                return None;
            };
            (at, wrap) = self.after(at, size, wrap);
            Some((seq, payload))
        })
    }

    /// Drops (acknowledges) every record before `cursor`; they were read.
    pub fn release_before(&mut self, cursor: u64) {
        while self.first_seq < cursor && self.pop_oldest().is_some() {}
    }

    /// Answers a drain into `w` (a reply body): acknowledges the records
    /// before `cursor`, then writes the drain header and as many records from
    /// `cursor` on as fit in `max_bytes` (0: no limit) and in `w`. Returns
    /// the body length. On error nothing changed.
    pub fn drain(&mut self, cursor: u64, max_bytes: u32, out: &mut [u8]) -> Result<usize, DrainError> {
        if cursor > self.next_seq {
            return Err(DrainError::CursorAhead);
        }
        let start = cursor.max(self.first_seq);
        let lost = self.first_seq.saturating_sub(cursor);
        let room = out.len().saturating_sub(DRAIN_HEADER_LEN);
        let budget = match max_bytes {
            0 => room,
            m => room.min(usize::try_from(m).unwrap_or(usize::MAX)),
        };
        // Size what fits first, so that nothing is written or released when
        // even the first record does not fit.
        let mut count = 0u32;
        let mut bytes = 0usize;
        let mut first_size = None;
        for (_, payload) in self.iter().filter(|(seq, _)| *seq >= start) {
            let size = ENTRY_HEADER_LEN.saturating_add(payload.len());
            first_size.get_or_insert(size);
            let Some(total) = bytes.checked_add(size).filter(|&t| t <= budget) else { break };
            bytes = total;
            count = count.saturating_add(1);
        }
        if count == 0
            && let Some(size) = first_size
        {
            return Err(DrainError::TooSmall(DRAIN_HEADER_LEN.saturating_add(size)));
        }
        let waiting = self.next_seq.saturating_sub(start);
        let pending = u32::try_from(waiting.saturating_sub(u64::from(count))).unwrap_or(u32::MAX);
        let next_cursor = start.saturating_add(u64::from(count));
        let mut w = Writer::new(out);
        let header =
            w.u64(next_cursor).and_then(|()| w.u64(lost)).and_then(|()| w.u32(pending)).and_then(|()| w.u32(count));
        if header.is_err() {
            return Err(DrainError::TooSmall(DRAIN_HEADER_LEN));
        }
        let take = usize::try_from(count).unwrap_or(usize::MAX);
        for (seq, payload) in self.iter().filter(|(seq, _)| *seq >= start).take(take) {
            let entry = w
                .u64(seq)
                .and_then(|()| w.u32(u32::try_from(payload.len()).unwrap_or(0)))
                .and_then(|()| w.put(payload));
            if entry.is_err() {
                // Sized above; unreachable unless the ring is inconsistent.
                return Err(DrainError::TooSmall(DRAIN_HEADER_LEN.saturating_add(bytes)));
            }
        }
        let written = w.written();
        self.release_before(cursor);
        Ok(written)
    }
}

// ---- fuzzing --------------------------------------------------------------

/// A stand-in rule set for fuzzing and tests: only its id is observable.
#[cfg(any(test, feature = "fuzzing"))]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StubPolicy(pub u32);

#[cfg(any(test, feature = "fuzzing"))]
impl Policy for StubPolicy {
    fn loop_policy(&self) -> crate::policy::LoopPolicy {
        crate::policy::LoopPolicy::default()
    }
    fn first_match(&self, _: &crate::flow::Flow<'_>) -> Option<crate::policy::RuleHit> {
        None
    }
    fn is_trusted(&self, _: &crate::flow::AppId<'_>) -> bool {
        false
    }
    fn is_known_proxy(&self, _: &crate::flow::AppId<'_>) -> bool {
        false
    }
    fn id(&self) -> u32 {
        self.0
    }
}

/// The stand-in rules decoder: `RULE` and a u32 id, nothing else.
#[cfg(any(test, feature = "fuzzing"))]
pub fn stub_decode_rules(blob: &[u8]) -> Result<StubPolicy, RulesRejected> {
    let mut r = Reader::new(blob);
    if r.array::<4>() != Ok(*b"RULE") {
        return Err(RulesRejected { code: 1, offset: 0 });
    }
    let id = r.u32().map_err(|_| RulesRejected { code: 2, offset: 4 })?;
    if r.remaining() != 0 {
        return Err(RulesRejected { code: 3, offset: 8 });
    }
    Ok(StubPolicy(id))
}

/// Everything a request may change, for before/after comparisons.
#[cfg(any(test, feature = "fuzzing"))]
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Snapshot {
    /// The rules id.
    pub rules_id: u32,
    /// The registration.
    pub proxy: Option<ProxyRegistration>,
    /// The counters.
    pub counters: Counters,
    /// The ring, whole.
    pub ring: AuditRing,
}

/// Takes a [`Snapshot`].
#[cfg(any(test, feature = "fuzzing"))]
pub fn snapshot<T: ControlTarget>(t: &mut T) -> Snapshot {
    Snapshot { rules_id: t.rules_id(), proxy: t.proxy(), counters: t.counters(), ring: t.ring().clone() }
}

/// The fuzz target's body: decodes `data` as a request and as a reply, runs
/// it through [`handle`] against a small populated state, and checks that a
/// refused request changed nothing and that every reply decodes.
#[cfg(any(test, feature = "fuzzing"))]
pub fn fuzz_decode(data: &[u8]) {
    let _ = Reply::decode(data).map(|r| (r.info(), r.rules(), r.counters(), r.drained().map(|d| d.records().count())));
    let Ok(mut arbiter) = Arbiter::new(
        crate::arbiter::Config::default(),
        crate::arbiter::Capacities { endpoints: 4, destinations: 4, known_proxies: 4 },
        StubPolicy(7),
    ) else {
        return;
    };
    let Ok(mut ring) = AuditRing::new(256) else { return };
    for n in 0..12u8 {
        ring.push(&[n; 17]);
    }
    let _ = arbiter.set_proxy(42, Some(SocketAddrV4::new(Ipv4Addr::LOCALHOST, 34010)), None);
    let mut station = Station { arbiter: &mut arbiter, ring: &mut ring, decode_rules: stub_decode_rules, instance: 9 };
    // Also run with a tiny reply buffer: refusals must still change nothing.
    for reply_len in [MIN_REPLY_BUFFER + 512, REPLY_HEADER_LEN + 20] {
        let before = snapshot(&mut station);
        let mut reply = alloc::vec![0u8; reply_len];
        let n = handle(data, &mut station, &mut reply);
        let r = Reply::decode(reply.get(..n).unwrap_or(&[]));
        assert!(r.is_ok(), "the handler's reply must decode: {r:?}");
        let Ok(r) = r else { return };
        assert_eq!(r.instance, 9);
        if r.status != Status::Ok {
            assert_eq!(before, snapshot(&mut station), "a refused request changed state ({})", r.status);
        }
        if let Ok(req) = Request::decode(data) {
            // Valid requests have one encoding.
            assert_eq!(req.to_vec(), data);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::arbiter::{Capacities, Config};
    use alloc::collections::VecDeque;
    use proptest::prelude::*;

    type StubStation<'a> = Station<'a, StubPolicy, fn(&[u8]) -> Result<StubPolicy, RulesRejected>>;

    struct Rig {
        arbiter: Arbiter<StubPolicy>,
        ring: AuditRing,
    }

    impl Rig {
        fn new(ring_bytes: usize) -> Self {
            let caps = Capacities { endpoints: 8, destinations: 8, known_proxies: 8 };
            Self {
                arbiter: Arbiter::new(Config::default(), caps, StubPolicy(7)).unwrap(),
                ring: AuditRing::new(ring_bytes).unwrap(),
            }
        }

        fn station(&mut self) -> StubStation<'_> {
            Station { arbiter: &mut self.arbiter, ring: &mut self.ring, decode_rules: stub_decode_rules, instance: 77 }
        }

        /// Sends a request, returns the raw reply.
        fn call(&mut self, req: &[u8], reply_len: usize) -> Vec<u8> {
            let mut reply = alloc::vec![0u8; reply_len];
            let n = handle(req, &mut self.station(), &mut reply);
            reply.truncate(n);
            reply
        }
    }

    fn reg() -> ProxyRegistration {
        ProxyRegistration {
            pid: 5151,
            v4: Some("127.0.0.1:34010".parse().unwrap()),
            v6: Some("[::1]:34010".parse().unwrap()),
        }
    }

    #[test]
    fn requests_round_trip_with_one_encoding() {
        let v4_only = ProxyRegistration { pid: 1, v4: Some("10.1.2.3:9".parse().unwrap()), v6: None };
        let v6_only = ProxyRegistration { pid: 2, v4: None, v6: Some("[fe80::1%4]:80".parse().unwrap()) };
        for req in [
            Request::Hello,
            Request::SetRules(b"RULE\x01\0\0\0"),
            Request::RegisterProxy(reg()),
            Request::RegisterProxy(v4_only),
            Request::RegisterProxy(v6_only),
            Request::UnregisterProxy { pid: 5151 },
            Request::DrainAudit { cursor: 99, max_bytes: 4096 },
            Request::ReadCounters,
        ] {
            let bytes = req.to_vec();
            assert_eq!(bytes.len(), req.encoded_len());
            assert_eq!(Request::decode(&bytes), Ok(req));
            // Every proper prefix is refused as truncated, never misread.
            for cut in 0..bytes.len() {
                let e = Request::decode(&bytes[..cut]).unwrap_err();
                assert_eq!(e.status, Status::Truncated, "{req:?} cut at {cut}");
            }
        }
    }

    #[test]
    fn request_fixture_bytes() {
        let bytes = Request::DrainAudit { cursor: 0x0102, max_bytes: 0x10 }.to_vec();
        assert_eq!(
            bytes,
            [
                b'A', b'R', b'C', b'Q', 1, 0, 5, 0, 16, 0, 0, 0, // header
                2, 1, 0, 0, 0, 0, 0, 0, 0x10, 0, 0, 0, 0, 0, 0, 0, // cursor, max, reserved
            ]
        );
    }

    #[test]
    fn malformed_requests_name_where_and_why() {
        let good = Request::RegisterProxy(reg()).to_vec();
        type Case = (fn(&mut Vec<u8>), Status, u32);
        let cases: [Case; 8] = [
            (|b| b[0] = b'X', Status::BadMagic, 0),
            (|b| b[4] = 2, Status::UnsupportedVersion, 4),
            (|b| b[6] = 99, Status::UnknownOp, 6),
            (|b| b.push(0), Status::BadLength, 60),
            (|b| b[8] = 49, Status::Truncated, 8),
            (|b| b[20] = 4, Status::BadValue, 20),
            (|b| b[21] = 1, Status::BadValue, 21),
            (|b| b[20] = 0, Status::BadValue, 24),
        ];
        for (i, (mutate, status, offset)) in cases.into_iter().enumerate() {
            let mut b = good.clone();
            mutate(&mut b);
            let e = Request::decode(&b).unwrap_err();
            assert_eq!((e.status, e.offset), (status, offset), "case {i}: {e}");
        }
        // An absent listener must be all zero.
        let mut b = Request::RegisterProxy(ProxyRegistration { v6: None, ..reg() }).to_vec();
        b[40] = 1;
        assert_eq!(Request::decode(&b).unwrap_err().status, Status::BadValue);
        let mut big = Request::SetRules(b"x").to_vec();
        big[8..12].copy_from_slice(&(MAX_RULES_LEN as u32 + 1).to_le_bytes());
        assert_eq!(Request::decode(&big).unwrap_err().status, Status::TooLarge);
        let empty = [b'A', b'R', b'C', b'Q', 1, 0, 2, 0, 0, 0, 0, 0];
        assert_eq!(Request::decode(&empty).unwrap_err().status, Status::BadLength);
    }

    #[test]
    fn hello_reports_instance_rules_and_registration() {
        let mut rig = Rig::new(1024);
        let raw = rig.call(&Request::Hello.to_vec(), 512);
        let reply = Reply::decode(&raw).unwrap();
        assert_eq!((reply.op, reply.status, reply.instance), (Op::Hello as u16, Status::Ok, 77));
        let info = reply.info().unwrap();
        assert_eq!((info.rules_id, info.proxy), (7, None));
        assert_eq!(info.ring.capacity, 1024);

        let raw = rig.call(&Request::RegisterProxy(reg()).to_vec(), 512);
        assert_eq!(Reply::decode(&raw).unwrap().status, Status::Ok);
        let raw = rig.call(&Request::Hello.to_vec(), 512);
        assert_eq!(Reply::decode(&raw).unwrap().info().unwrap().proxy, Some(reg()));
    }

    #[test]
    fn rules_swap_is_all_or_nothing() {
        let mut rig = Rig::new(1024);
        let raw = rig.call(&Request::SetRules(b"RULE\x2a\0\0\0").to_vec(), 512);
        assert_eq!(Reply::decode(&raw).unwrap().rules(), Ok(Ok(42)));
        assert_eq!(rig.arbiter.policy().id(), 42);
        let raw = rig.call(&Request::SetRules(b"RULE\x2a\0\0").to_vec(), 512);
        let reply = Reply::decode(&raw).unwrap();
        assert_eq!(reply.status, Status::RulesRejected);
        assert_eq!(reply.rules(), Ok(Err(RulesRejected { code: 2, offset: 4 })));
        assert_eq!(rig.arbiter.policy().id(), 42, "a rejected blob leaves the previous rules in force");
        // Too small a reply buffer: refused before the swap.
        let raw = rig.call(&Request::SetRules(b"RULE\x01\0\0\0").to_vec(), REPLY_HEADER_LEN + 4);
        let reply = Reply::decode(&raw).unwrap();
        assert_eq!((reply.status, reply.error_value()), (Status::ReplyTooSmall, Some(32)));
        assert_eq!(rig.arbiter.policy().id(), 42);
        // No room for a header at all.
        assert!(rig.call(&Request::Hello.to_vec(), REPLY_HEADER_LEN - 1).is_empty());
    }

    #[test]
    fn registration_rules() {
        let mut rig = Rig::new(1024);
        let status = |raw: Vec<u8>| Reply::decode(&raw).unwrap().status;
        let zero = Request::RegisterProxy(ProxyRegistration { pid: 0, ..reg() }).to_vec();
        assert_eq!(status(rig.call(&zero, 64)), Status::ZeroPid);
        assert_eq!(rig.arbiter.proxy(), None);
        assert_eq!(status(rig.call(&Request::RegisterProxy(reg()).to_vec(), 64)), Status::Ok);
        // Only the registered PID may unregister (a stale service must not
        // unregister its successor).
        assert_eq!(status(rig.call(&Request::UnregisterProxy { pid: 1 }.to_vec(), 64)), Status::NotRegistered);
        assert_eq!(rig.arbiter.proxy(), Some(&reg()));
        assert_eq!(status(rig.call(&Request::UnregisterProxy { pid: 5151 }.to_vec(), 64)), Status::Ok);
        assert_eq!(rig.arbiter.proxy(), None);
    }

    #[test]
    fn counters_carry_every_field() {
        let c = Counters {
            connect_redirect: 1,
            auth_connect: 2,
            verdicts: [3, 4, 5, 6],
            evicted: [7, 8, 9],
            expired: [10, 11, 12],
            forgotten: 13,
            loops_suspected: 14,
            records: 15,
        };
        let mut buf = [0u8; COUNTERS_LEN];
        let mut w = Writer::new(&mut buf);
        put_counters(&mut w, &c).unwrap();
        assert_eq!(w.written(), COUNTERS_LEN);
        assert_eq!(get_counters(&mut Reader::new(&buf)), Ok(c));
        // Every field lands in its own slot.
        let words: Vec<u64> = buf.chunks(8).map(|b| u64::from_le_bytes(b.try_into().unwrap())).collect();
        assert_eq!(words, (1..=15).collect::<Vec<_>>());

        let mut rig = Rig::new(1024);
        rig.ring.push(b"abc");
        let raw = rig.call(&Request::ReadCounters.to_vec(), MIN_REPLY_BUFFER);
        let (counters, stats) = Reply::decode(&raw).unwrap().counters().unwrap();
        assert_eq!(counters, *rig.arbiter.counters());
        assert_eq!((stats.held, stats.used, stats.next_seq), (1, 15, 1));
    }

    /// Drains everything through the control protocol, checking that each
    /// sequence number is seen exactly once or counted lost.
    fn drain_all(rig: &mut Rig, cursor: &mut u64, max_bytes: u32, seen: &mut Vec<(u64, Vec<u8>)>) -> u64 {
        let mut lost = 0;
        for _ in 0..1000 {
            let raw = rig.call(&Request::DrainAudit { cursor: *cursor, max_bytes }.to_vec(), 4096);
            let reply = Reply::decode(&raw).unwrap();
            let d = reply.drained().unwrap();
            lost += d.lost;
            let mut expect = *cursor + d.lost;
            for rec in d.records() {
                let (seq, bytes) = rec.unwrap();
                assert_eq!(seq, expect, "records come in order with no gap or repeat");
                expect += 1;
                seen.push((seq, bytes.to_vec()));
            }
            assert_eq!(d.next_cursor, expect);
            *cursor = d.next_cursor;
            if d.pending == 0 {
                return lost;
            }
        }
        panic!("drain did not finish");
    }

    #[test]
    fn drain_with_cursor_loses_nothing_and_repeats_nothing() {
        let mut rig = Rig::new(200);
        let mut cursor = 0;
        let mut seen = Vec::new();
        for i in 0..5u8 {
            rig.ring.push(&[i; 20]);
        }
        assert_eq!(drain_all(&mut rig, &mut cursor, 70, &mut seen), 0);
        assert_eq!(seen.iter().map(|s| s.0).collect::<Vec<_>>(), [0, 1, 2, 3, 4]);
        assert_eq!(seen[3].1, [3; 20]);
        // A repeated drain at the same cursor returns nothing new.
        assert_eq!(drain_all(&mut rig, &mut cursor, 0, &mut seen), 0);
        assert_eq!(seen.len(), 5);
        // Overflow: 20 more 32-byte entries into 200 bytes drop the oldest.
        for i in 0..20u8 {
            rig.ring.push(&[i; 20]);
        }
        let lost = drain_all(&mut rig, &mut cursor, 0, &mut seen);
        assert!(lost > 0);
        assert_eq!(lost + seen.len() as u64, 25, "every record is either read or counted lost");
        assert_eq!(rig.ring.stats().dropped, lost);
    }

    #[test]
    fn drain_refusals_change_nothing() {
        let mut rig = Rig::new(200);
        rig.ring.push(&[1; 100]);
        let before = rig.ring.clone();
        let raw = rig.call(&Request::DrainAudit { cursor: 5, max_bytes: 0 }.to_vec(), 4096);
        assert_eq!(Reply::decode(&raw).unwrap().status, Status::CursorAhead);
        let raw = rig.call(&Request::DrainAudit { cursor: 0, max_bytes: 50 }.to_vec(), 4096);
        let reply = Reply::decode(&raw).unwrap();
        assert_eq!((reply.status, reply.error_value()), (Status::ReplyTooSmall, Some(24 + 24 + 112)));
        let raw = rig.call(&Request::DrainAudit { cursor: 0, max_bytes: 0 }.to_vec(), 100);
        assert_eq!(Reply::decode(&raw).unwrap().status, Status::ReplyTooSmall);
        assert_eq!(rig.ring, before);
    }

    #[test]
    fn oversized_records_leave_a_placeholder() {
        let mut ring = AuditRing::new(64).unwrap();
        ring.push(&[1; 10]);
        let seq = ring.push(&[2; 100]);
        assert_eq!(seq, 1);
        let held: Vec<_> = ring.iter().map(|(s, b)| (s, b.len())).collect();
        assert_eq!(held, [(0, 10), (1, 0)]);
        assert_eq!(ring.stats().oversized, 1);
    }

    #[test]
    fn push_record_encodes_in_place() {
        use crate::audit::{DepartedEntry, DepartureRecord};
        use crate::table::Departure;
        let rec = DepartureRecord {
            seq: 3,
            at: crate::time::Instant::from_millis(10),
            table: crate::arbiter::TableId::KnownProxies,
            why: Departure::Evicted,
            entry: DepartedEntry::KnownProxy { pid: 4242 },
        }
        .record();
        let mut ring = AuditRing::new(4096).unwrap();
        let seq = ring.push_record(&rec);
        let (s, bytes) = ring.iter().next().unwrap();
        assert_eq!(s, seq);
        assert_eq!(AuditRecord::decode(bytes).unwrap().0, rec);
    }

    #[derive(Clone, Debug)]
    enum RingOp {
        Push(usize),
        Drain(u32),
    }

    fn ring_op() -> impl Strategy<Value = RingOp> {
        prop_oneof![3 => (0usize..120).prop_map(RingOp::Push), 1 => (0u32..300).prop_map(RingOp::Drain)]
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: if cfg!(miri) { 4 } else { 256 }, ..ProptestConfig::default() })]

        /// Random bytes never panic, always get a decodable reply, and
        /// change nothing unless accepted.
        #[test]
        fn random_bytes_never_panic_or_change_state(data in proptest::collection::vec(any::<u8>(), 0..120)) {
            fuzz_decode(&data);
        }

        /// Valid requests with one byte changed: refused ones change nothing.
        #[test]
        fn mutated_requests_are_refused_cleanly(which in 0usize..5, at in any::<prop::sample::Index>(), byte in any::<u8>()) {
            let reqs = [
                Request::RegisterProxy(reg()).to_vec(),
                Request::DrainAudit { cursor: 3, max_bytes: 64 }.to_vec(),
                Request::SetRules(b"RULE\x05\0\0\0").to_vec(),
                Request::UnregisterProxy { pid: 42 }.to_vec(),
                Request::Hello.to_vec(),
            ];
            let mut req = reqs[which].clone();
            let i = at.index(req.len());
            req[i] = byte;
            fuzz_decode(&req);
        }

        /// The ring against a model: with drains interleaved, every record is
        /// read exactly once, in order, or counted as lost.
        #[test]
        fn ring_matches_model(ops in proptest::collection::vec(ring_op(), 1..80), cap in 12usize..400) {
            let mut rig = Rig::new(cap);
            let mut model: VecDeque<(u64, Vec<u8>)> = VecDeque::new();
            let mut pushed = 0u64;
            let mut cursor = 0u64;
            let mut read = 0u64;
            let mut lost = 0u64;
            for op in ops {
                match op {
                    RingOp::Push(len) => {
                        let data: Vec<u8> = (0..len).map(|i| (i as u8) ^ (pushed as u8)).collect();
                        let seq = rig.ring.push(&data);
                        prop_assert_eq!(seq, pushed);
                        let kept = if len + ENTRY_HEADER_LEN <= rig.ring.capacity() { data } else { Vec::new() };
                        model.push_back((seq, kept));
                        pushed += 1;
                        prop_assert!(rig.ring.used() <= rig.ring.capacity());
                    }
                    RingOp::Drain(max) => {
                        let raw = rig.call(&Request::DrainAudit { cursor, max_bytes: max }.to_vec(), 4096);
                        let reply = Reply::decode(&raw).unwrap();
                        if reply.status == Status::ReplyTooSmall {
                            continue;
                        }
                        let d = reply.drained().unwrap();
                        lost += d.lost;
                        // The model's oldest entries were dropped by the ring.
                        while model.front().is_some_and(|(s, _)| *s < cursor + d.lost) {
                            model.pop_front();
                        }
                        for rec in d.records() {
                            let (seq, bytes) = rec.unwrap();
                            let (mseq, mbytes) = model.pop_front().unwrap();
                            prop_assert_eq!((seq, bytes), (mseq, mbytes.as_slice()));
                            read += 1;
                        }
                        cursor = d.next_cursor;
                        prop_assert_eq!(u64::from(d.pending), pushed - cursor);
                    }
                }
            }
            let held_unread = pushed - cursor;
            prop_assert_eq!(read + lost + held_unread, pushed);
            // What the ring still holds from the cursor on matches the model's tail.
            let tail: Vec<_> = rig.ring.iter().filter(|(s, _)| *s >= cursor).map(|(s, b)| (s, b.to_vec())).collect();
            let model_tail: Vec<_> = model.iter().filter(|(s, _)| *s >= rig.ring.first_seq()).cloned().collect();
            prop_assert_eq!(tail, model_tail);
        }
    }
}
