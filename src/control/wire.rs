//! The control protocol's wire format: requests, replies, statuses.
//!
//! Both are versioned and length-prefixed, little-endian, and read through
//! [`crate::wire`]'s checked readers, so byte alignment of the system buffer
//! never matters:
//!
//! - request: magic `ARCQ`, version (u16), op (u16), body length (u32), body;
//! - reply: magic `ARCP`, version (u16), op (u16), [`Status`] (u32), the
//!   driver's instance id (u64, new at every driver load, so the service
//!   notices a restart on any reply), body length (u32), body.
//!
//! Each op travels under its own IOCTL code ([`Op::ioctl`]); the op in the
//! header must match it.

use alloc::vec::Vec;
use core::fmt;
use core::net::{Ipv4Addr, Ipv6Addr, SocketAddrV4, SocketAddrV6};

use super::ioctl::{Access, FILE_DEVICE_ARBITER, ctl_code};
use crate::arbiter::{Counters, SetProxyError};
use crate::audit::ring::RingStats;
use crate::decide::ProxyRegistration;
use crate::validate::ListenerError;
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
/// Encoded size of [`DriverCounters`]: one u64, the whole body of the
/// read-driver-counters reply.
pub const DRIVER_COUNTERS_LEN: usize = 8;
/// A reply buffer this large holds every reply except long drains.
pub const MIN_REPLY_BUFFER: usize = REPLY_HEADER_LEN + COUNTERS_LEN + RING_STATS_LEN;

/// What a request asks for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u16)]
pub enum Op {
    /// Driver facts: protocol versions, rules id, proxy registration, ring stats. Read access.
    Hello = 1,
    /// Replace the rules with a compiled blob, all or nothing. Write access.
    SetRules = 2,
    /// Register our proxy: the caller's own PID and its listeners. Write access.
    RegisterProxy = 3,
    /// Unregister our proxy (only through the handle that registered it). Write access.
    UnregisterProxy = 4,
    /// Read audit records from this handle's cursor. Read access.
    DrainAudit = 5,
    /// Read every counter of the core and the ring's state. Read access.
    ReadCounters = 6,
    /// Read the driver's own counters ([`DriverCounters`]). Read access.
    /// Its own op, so that the read-counters reply keeps its shape for
    /// readers built before it; a driver built before it does not know its
    /// IOCTL code and refuses the request.
    ReadDriverCounters = 7,
}

impl Op {
    /// Every op, in code order.
    pub const ALL: [Self; 7] = [
        Self::Hello,
        Self::SetRules,
        Self::RegisterProxy,
        Self::UnregisterProxy,
        Self::DrainAudit,
        Self::ReadCounters,
        Self::ReadDriverCounters,
    ];

    /// From the wire code.
    pub const fn from_u16(v: u16) -> Option<Self> {
        match v {
            1 => Some(Self::Hello),
            2 => Some(Self::SetRules),
            3 => Some(Self::RegisterProxy),
            4 => Some(Self::UnregisterProxy),
            5 => Some(Self::DrainAudit),
            6 => Some(Self::ReadCounters),
            7 => Some(Self::ReadDriverCounters),
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
            Self::ReadDriverCounters => "read-driver-counters",
        }
    }

    /// The access the handle needs: read for what only reports, write for what changes the driver.
    pub const fn access(self) -> Access {
        match self {
            Self::Hello | Self::DrainAudit | Self::ReadCounters | Self::ReadDriverCounters => Access::READ,
            Self::SetRules | Self::RegisterProxy | Self::UnregisterProxy => Access::WRITE,
        }
    }

    /// True for the ops that change the driver's state (one writer at a time).
    pub const fn mutates(self) -> bool {
        self.access().write()
    }

    /// The op's own IOCTL code: `CTL_CODE(FILE_DEVICE_ARBITER, 0x900 + op,
    /// METHOD_BUFFERED, FILE_READ_ACCESS or FILE_WRITE_ACCESS)`. The I/O
    /// manager checks the access bits against the handle before the driver
    /// sees the request; the handler checks them again.
    pub const fn ioctl(self) -> u32 {
        // Op codes are 1..=7: the function stays within its 12 bits.
        ctl_code(FILE_DEVICE_ARBITER, 0x900 | self as u32, self.access())
    }

    /// The op an IOCTL code carries; `None` for a code that is not ours.
    pub fn from_ioctl(code: u32) -> Option<Self> {
        Self::ALL.into_iter().find(|op| op.ioctl() == code)
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
    /// The IOCTL code is not one of ours, or carries another op than the request's.
    WrongIoctl = 15, "wrong-ioctl", "the request's op does not match its IOCTL code";
    /// The handle was not opened with the access the op needs.
    AccessDenied = 16, "access-denied", "the handle lacks the access this op needs";
    /// A registration names a PID that is not the calling process.
    PidNotCaller = 17, "pid-not-caller", "a proxy registers only its own process";
    /// Unregistering through a handle other than the one that registered.
    NotOwner = 18, "not-owner", "only the handle that registered the proxy may change it";
    /// Another handle is the writer.
    WriterBusy = 19, "writer-busy", "another handle holds write access";
    /// Every drain cursor is taken by other handles.
    TooManyReaders = 20, "too-many-readers", "every reader slot is in use";
    /// A listener that is not a loopback or host address, or port 0.
    BadListener = 21, "bad-listener", "a proxy listener must be a loopback or host address with a non-zero port";
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

impl From<ListenerError> for Status {
    fn from(_: ListenerError) -> Self {
        Self::BadListener
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
    /// [`Op::ReadDriverCounters`].
    ReadDriverCounters,
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
            Self::ReadDriverCounters => Op::ReadDriverCounters,
        }
    }

    fn body_len(&self) -> usize {
        match self {
            Self::Hello | Self::ReadCounters | Self::ReadDriverCounters => 0,
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
            Self::Hello | Self::ReadCounters | Self::ReadDriverCounters => {}
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
            Op::Hello | Op::ReadCounters | Op::ReadDriverCounters => Some(0),
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
            Op::ReadDriverCounters => Self::ReadDriverCounters,
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
pub(crate) fn put_registration(w: &mut Writer<'_>, reg: Option<&ProxyRegistration>) -> Result<(), Short> {
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

// ---- replies --------------------------------------------------------------

/// The rules decoder refused a blob: its error code and the byte offset it names.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RulesRejected {
    /// The decoder's error code (see `arbiter::compiled`).
    pub code: u32,
    /// Where in the blob.
    pub offset: u32,
}

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

pub(crate) const INFO_LEN: usize = 4 + 4 + REGISTRATION_LEN + RING_STATS_LEN;

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
    pub(crate) fn encode(&self, w: &mut Writer<'_>) -> Result<(), Short> {
        // The versions this build accepts: just one so far.
        w.u16(VERSION)?;
        w.u16(VERSION)?;
        w.u32(self.rules_id)?;
        put_registration(w, self.proxy.as_ref())?;
        put_ring_stats(w, &self.ring)
    }
}

/// [`RingStats`] on the wire: capacity, used, held, readers (u32 each),
/// dropped, oversized, next sequence (u64 each).
pub(crate) fn put_ring_stats(w: &mut Writer<'_>, s: &RingStats) -> Result<(), Short> {
    w.u32(s.capacity)?;
    w.u32(s.used)?;
    w.u32(s.held)?;
    w.u32(s.readers)?;
    w.u64(s.dropped)?;
    w.u64(s.oversized)?;
    w.u64(s.next_seq)
}

fn get_ring_stats(r: &mut Reader<'_>) -> Result<RingStats, ReplyError> {
    let capacity = r.u32()?;
    let used = r.u32()?;
    let held = r.u32()?;
    let readers = r.u32()?;
    Ok(RingStats { capacity, used, held, readers, dropped: r.u64()?, oversized: r.u64()?, next_seq: r.u64()? })
}

pub(crate) fn put_counters(w: &mut Writer<'_>, c: &Counters) -> Result<(), Short> {
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

/// The driver's own counters (not the core's): the body of the
/// read-driver-counters reply.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DriverCounters {
    /// Boot guard: adds and deletes of the override filter that failed. A
    /// failed add leaves the boot set blocking although our proxy is
    /// registered (e.g. block mode in the rules but the boot set not
    /// installed); a failed delete leaves it lifted until the next guard
    /// pass deletes it.
    pub override_failures: u64,
}

pub(crate) fn put_driver_counters(w: &mut Writer<'_>, c: &DriverCounters) -> Result<(), Short> {
    let DriverCounters { override_failures } = *c;
    w.u64(override_failures)
}

pub(crate) fn get_counters(r: &mut Reader<'_>) -> Result<Counters, Short> {
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
    /// The records in order: sequence number and encoded [`crate::audit::AuditRecord`]
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
        let ring = get_ring_stats(&mut r)?;
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
        let s = get_ring_stats(&mut r)?;
        Self::done(&r, (c, s))
    }

    /// The driver's own counters.
    pub fn driver_counters(&self) -> Result<DriverCounters, ReplyError> {
        let mut r = self.expect(Op::ReadDriverCounters, Status::Ok)?;
        let d = DriverCounters { override_failures: r.u64()? };
        Self::done(&r, d)
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
