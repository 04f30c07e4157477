//! Audit records: every decision's inputs, the facts it consulted, and its
//! outcome, in a versioned binary encoding.
//!
//! A record is self-contained: replaying it ([`AuditRecord::replay`]) runs the
//! same pure decision function on the recorded input and facts and must give
//! the recorded outcome. Decoding borrows app ids and SIDs from the input
//! buffer (they are stored as WFP gave them: UTF-16LE bytes and binary SIDs),
//! never panics, and rejects anything malformed with the offset and why.
//!
//! Layout (little-endian): `"AR"`, version (1), kind, body length (u32), body.
//! A reader that meets an unknown kind can skip it by its length.

#[cfg(any(test, feature = "fuzzing"))]
use alloc::vec::Vec;
use core::fmt;
use core::net::SocketAddr;

use crate::arbiter::{HopCount, TableId};
use crate::context::{CONTEXT_LEN, RedirectContext};
use crate::decide::{
    self, Consulted, EndpointEntry, Env, Outcome, ProxyRegistration, Recorded, RedirectTarget, Verdict,
};
use crate::flow::{
    AppId, AuthConnectInput, ConnectRedirectInput, ConnectRedirectRef, Destination, Flow, PreviousChain, PreviousEntry,
    Protocol, RedirectState, Sid,
};
use crate::policy::{Action, LoopPolicy, PermitOrBlock, RuleHit};
use crate::reason::Reason;
use crate::table::Departure;
use crate::time::{Duration, Instant};
use crate::wire::{Reader, Short, Writer};

/// Record magic.
pub const MAGIC: [u8; 2] = *b"AR";
/// The encoding version this build writes and reads.
pub const VERSION: u8 = 1;
/// Bytes before the body: magic, version, kind, body length.
pub const HEADER_LEN: usize = 8;

const KIND_CONNECT: u8 = 1;
const KIND_AUTH: u8 = 2;
const KIND_DEPARTURE: u8 = 3;
const KIND_FALLBACK: u8 = 4;
/// A connect-redirect classification the adapter could not hand to the
/// decision table (`layer-data-unavailable`, `unreadable-indication`): the
/// same body as kind 4. Readers that predate it skip it by its length.
const KIND_UNCLASSIFIED: u8 = 5;
const KIND_REBIND: u8 = 6;
const KIND_GUARD: u8 = 7;

mod other;
pub use other::{GuardChange, GuardRecord, RebindRecord};

/// One audit record.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AuditRecord<'a> {
    /// Sequence number (per arbiter, shared with departures).
    pub seq: u64,
    /// When.
    pub at: Instant,
    /// What happened.
    pub event: Event<'a>,
}

/// What a record records.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Event<'a> {
    /// A connect-redirect decision.
    ConnectRedirect(ConnectRecord<'a>),
    /// An auth-connect decision.
    AuthConnect(AuthRecord<'a>),
    /// An entry left a table without being used.
    Departure(DepartureRecord),
    /// A held (pended) connect-redirect classification got the configured
    /// fallback verdict because no proxy registered in time.
    Fallback(FallbackRecord<'a>),
    /// Another vendor changed a socket's local address at ALE_BIND_REDIRECT
    /// (kind 6).
    Rebind(RebindRecord<'a>),
    /// The boot guard changed state (kind 7).
    Guard(GuardRecord),
}

/// A pended classification's fallback: the input it was held with and the
/// outcome (`continue`, `permit` or `block`, reason `pend-timeout`). Kind 4: readers that
/// predate it skip it by its length.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FallbackRecord<'a> {
    /// The indication that was held.
    pub input: ConnectRedirectInput<'a>,
    /// The fallback outcome.
    pub outcome: Outcome,
}

/// A connect-redirect decision, whole.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ConnectRecord<'a> {
    /// The indication.
    pub input: ConnectRedirectInput<'a>,
    /// Our filter id and proxy at the time.
    pub env: Env,
    /// The loop policy in force.
    pub loops: LoopPolicy,
    /// Which rule set decided ([`crate::policy::Policy::id`]).
    pub rules_id: u32,
    /// What the tables and rules answered.
    pub consulted: Consulted,
    /// The outcome.
    pub outcome: Outcome,
}

/// An auth-connect decision, whole.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AuthRecord<'a> {
    /// The indication.
    pub input: AuthConnectInput<'a>,
    /// What the endpoint table held (live) for the endpoint.
    pub entry: Option<EndpointEntry>,
    /// The outcome.
    pub outcome: Outcome,
}

/// What left a table.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DepartedEntry {
    /// An endpoint's cached verdict or proxied record.
    Endpoint {
        /// The transport endpoint handle.
        endpoint: u64,
        /// What it held.
        entry: EndpointEntry,
    },
    /// A destination's hop counter.
    Destination {
        /// The destination.
        destination: Destination,
        /// Its counter.
        hops: HopCount,
    },
    /// A learned local proxy.
    KnownProxy {
        /// Its PID.
        pid: u64,
    },
}

/// An eviction or an audited expiry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DepartureRecord {
    /// Sequence number.
    pub seq: u64,
    /// When.
    pub at: Instant,
    /// Which table.
    pub table: TableId,
    /// Evicted or expired.
    pub why: Departure,
    /// What left.
    pub entry: DepartedEntry,
}

impl DepartureRecord {
    /// As an audit record.
    pub const fn record(&self) -> AuditRecord<'static> {
        AuditRecord { seq: self.seq, at: self.at, event: Event::Departure(*self) }
    }

    /// The reason naming this departure in reports.
    pub const fn reason(&self) -> Reason {
        match self.why {
            Departure::Evicted => Reason::Evicted,
            Departure::Expired => Reason::Expired,
        }
    }
}

/// Why a record could not be encoded.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EncodeError {
    /// The output buffer is too small; [`AuditRecord::encoded_len`] says how much is needed.
    BufferTooSmall,
    /// An app id is longer than 65,535 bytes.
    AppIdTooLong,
}

impl fmt::Display for EncodeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::BufferTooSmall => f.write_str("audit buffer too small for the record"),
            Self::AppIdTooLong => f.write_str("app id longer than 65535 bytes"),
        }
    }
}

impl core::error::Error for EncodeError {}

/// Why bytes are not a record: where (byte offset from the record's start) and what.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DecodeError {
    /// Offset of the problem from the start of the record.
    pub offset: usize,
    /// What is wrong.
    pub kind: DecodeErrorKind,
}

/// What is wrong with a record.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DecodeErrorKind {
    /// Fewer bytes than the header or the body needs.
    Truncated,
    /// Not `"AR"`.
    Magic,
    /// A version this build does not read.
    Version(u8),
    /// A record kind this build does not know (skip it by its length).
    UnknownKind(u8),
    /// A field holds a value outside its range.
    BadValue(&'static str),
    /// The body has bytes after its last field.
    TrailingBytes,
}

impl fmt::Display for DecodeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "at byte {}: ", self.offset)?;
        match self.kind {
            DecodeErrorKind::Truncated => f.write_str("record is truncated"),
            DecodeErrorKind::Magic => f.write_str("not an audit record (bad magic)"),
            DecodeErrorKind::Version(v) => {
                write!(f, "audit record version {v} is not supported (this build reads {VERSION})")
            }
            DecodeErrorKind::UnknownKind(k) => write!(f, "unknown audit record kind {k}"),
            DecodeErrorKind::BadValue(field) => write!(f, "invalid value for {field}"),
            DecodeErrorKind::TrailingBytes => f.write_str("bytes after the record's last field"),
        }
    }
}

impl core::error::Error for DecodeError {}

/// The result of replaying a decision record.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Replayed {
    /// What the decision function gives for the recorded input and facts.
    pub outcome: Outcome,
    /// The function asked for a fact the original decision did not consult.
    pub diverged: bool,
}

impl Replayed {
    /// Replay agrees with the record.
    pub fn matches(&self, recorded: &Outcome) -> bool {
        !self.diverged && self.outcome == *recorded
    }
}

impl<'a> AuditRecord<'a> {
    /// Re-runs the decision from the record alone. `None` for departures.
    pub fn replay(&self) -> Option<Replayed> {
        match &self.event {
            Event::ConnectRedirect(c) => {
                let mut facts = Recorded::new(c.consulted);
                let outcome = decide::connect_redirect(&c.input, &c.env, &c.loops, &mut facts);
                Some(Replayed { outcome, diverged: facts.diverged })
            }
            Event::AuthConnect(a) => {
                Some(Replayed { outcome: decide::auth_connect(&a.input, a.entry), diverged: false })
            }
            // Not the table's decision: the configured fallback, given as is.
            Event::Fallback(f) => Some(Replayed { outcome: f.outcome, diverged: false }),
            Event::Departure(_) | Event::Rebind(_) | Event::Guard(_) => None,
        }
    }

    /// The recorded outcome, for decisions.
    pub const fn outcome(&self) -> Option<&Outcome> {
        match &self.event {
            Event::ConnectRedirect(c) => Some(&c.outcome),
            Event::AuthConnect(a) => Some(&a.outcome),
            Event::Fallback(f) => Some(&f.outcome),
            Event::Departure(_) | Event::Rebind(_) | Event::Guard(_) => None,
        }
    }

    /// Exact encoded size.
    pub fn encoded_len(&self) -> usize {
        self.view().encoded_len()
    }

    /// Encodes into `out`, returning the bytes written.
    pub fn encode_into(&self, out: &mut [u8]) -> Result<usize, EncodeError> {
        self.view().encode_into(out)
    }

    /// Encodes into a new vector.
    #[cfg(any(test, feature = "fuzzing"))]
    pub fn to_vec(&self) -> Result<Vec<u8>, EncodeError> {
        let mut v = alloc::vec![0u8; self.encoded_len()];
        let n = self.encode_into(&mut v)?;
        v.truncate(n);
        Ok(v)
    }

    /// The record as the encoder reads it.
    pub(crate) const fn view(&self) -> RecordRef<'_, 'a> {
        let event = match &self.event {
            Event::ConnectRedirect(c) => EventRef::Connect(ConnectParts {
                input: c.input.as_parts(),
                env: &c.env,
                loops: &c.loops,
                rules_id: c.rules_id,
                consulted: &c.consulted,
                outcome: &c.outcome,
            }),
            Event::AuthConnect(a) => EventRef::Auth { input: &a.input, entry: a.entry.as_ref(), outcome: &a.outcome },
            Event::Departure(d) => EventRef::Departure(d),
            Event::Fallback(f) => EventRef::Fallback { input: f.input.as_parts(), outcome: &f.outcome },
            Event::Rebind(r) => EventRef::Rebind(r),
            Event::Guard(g) => EventRef::Guard(g),
        };
        RecordRef { seq: self.seq, at: self.at, event }
    }

    /// Decodes one record from the front of `bytes`, returning it and the
    /// bytes it used. Any byte string is safe to pass.
    pub fn decode(bytes: &'a [u8]) -> Result<(Self, usize), DecodeError> {
        let mut r = Reader::new(bytes);
        let at = |r: &Reader<'_>| bytes.len().saturating_sub(r.remaining());
        let err = |r: &Reader<'_>, kind| DecodeError { offset: at(r), kind };
        let truncated = |r: &Reader<'_>| err(r, DecodeErrorKind::Truncated);
        if r.array::<2>().map_err(|_| truncated(&r))? != MAGIC {
            return Err(DecodeError { offset: 0, kind: DecodeErrorKind::Magic });
        }
        let version = r.u8().map_err(|_| truncated(&r))?;
        if version != VERSION {
            return Err(DecodeError { offset: 2, kind: DecodeErrorKind::Version(version) });
        }
        let kind = r.u8().map_err(|_| truncated(&r))?;
        let len = r.u32().map_err(|_| truncated(&r))?;
        let len = usize::try_from(len).map_err(|_| err(&r, DecodeErrorKind::Truncated))?;
        let body = r.take(len).map_err(|_| truncated(&r))?;
        let mut b = Body { r: Reader::new(body), base: HEADER_LEN, whole: body.len() };
        let record = match kind {
            KIND_CONNECT | KIND_AUTH | KIND_DEPARTURE | KIND_FALLBACK | KIND_UNCLASSIFIED | KIND_REBIND
            | KIND_GUARD => b.record(kind)?,
            other => return Err(DecodeError { offset: 3, kind: DecodeErrorKind::UnknownKind(other) }),
        };
        if b.r.remaining() != 0 {
            return Err(b.err(DecodeErrorKind::TrailingBytes));
        }
        Ok((record, HEADER_LEN.saturating_add(len)))
    }
}

/// A record whose parts are borrowed from where they were made: what the
/// encoder reads. The arbiter writes its decisions into the audit ring
/// through it (`Arbiter::decide_*_into`), so a record is never first copied
/// whole into an [`AuditRecord`], whose largest event is some 500 bytes: too
/// much for the kernel stack classifyFn runs on. It encodes exactly as the
/// [`AuditRecord`] with the same parts ([`AuditRecord::view`]).
#[derive(Clone, Copy)]
pub(crate) struct RecordRef<'r, 'a> {
    /// Sequence number.
    pub(crate) seq: u64,
    /// When.
    pub(crate) at: Instant,
    /// What happened, borrowed.
    pub(crate) event: EventRef<'r, 'a>,
}

/// An [`Event`], borrowed.
#[derive(Clone, Copy)]
pub(crate) enum EventRef<'r, 'a> {
    /// Kind 1.
    Connect(ConnectParts<'r, 'a>),
    /// Kind 2.
    Auth { input: &'r AuthConnectInput<'a>, entry: Option<&'r EndpointEntry>, outcome: &'r Outcome },
    /// Kind 3.
    Departure(&'r DepartureRecord),
    /// Kind 4 (`pend-timeout`) or 5.
    Fallback { input: ConnectRedirectRef<'r, 'a>, outcome: &'r Outcome },
    /// Kind 6.
    Rebind(&'r RebindRecord<'a>),
    /// Kind 7.
    Guard(&'r GuardRecord),
}

/// A [`ConnectRecord`], borrowed.
#[derive(Clone, Copy)]
pub(crate) struct ConnectParts<'r, 'a> {
    pub(crate) input: ConnectRedirectRef<'r, 'a>,
    pub(crate) env: &'r Env,
    pub(crate) loops: &'r LoopPolicy,
    pub(crate) rules_id: u32,
    pub(crate) consulted: &'r Consulted,
    pub(crate) outcome: &'r Outcome,
}

impl RecordRef<'_, '_> {
    /// Exact encoded size.
    pub(crate) fn encoded_len(&self) -> usize {
        let mut sink = Counter(0);
        let _ = self.write_body(&mut sink);
        HEADER_LEN.saturating_add(sink.0)
    }

    /// Encodes into `out`, returning the bytes written.
    pub(crate) fn encode_into(&self, out: &mut [u8]) -> Result<usize, EncodeError> {
        let need = self.encoded_len();
        if out.len() < need {
            return Err(EncodeError::BufferTooSmall);
        }
        let mut w = Writer::new(out);
        let kind = match self.event {
            EventRef::Connect(_) => KIND_CONNECT,
            EventRef::Auth { .. } => KIND_AUTH,
            EventRef::Departure(_) => KIND_DEPARTURE,
            EventRef::Fallback { outcome, .. } if outcome.reason == Reason::PendTimeout => KIND_FALLBACK,
            EventRef::Fallback { .. } => KIND_UNCLASSIFIED,
            EventRef::Rebind(_) => KIND_REBIND,
            EventRef::Guard(_) => KIND_GUARD,
        };
        let body_len = u32::try_from(need.saturating_sub(HEADER_LEN)).map_err(|_| EncodeError::AppIdTooLong)?;
        let header =
            w.put(&MAGIC).and_then(|()| w.u8(VERSION)).and_then(|()| w.u8(kind)).and_then(|()| w.u32(body_len));
        header.map_err(|_| EncodeError::BufferTooSmall)?;
        self.write_body(&mut w)?;
        Ok(w.written())
    }

    fn write_body(&self, w: &mut impl Sink) -> Result<(), EncodeError> {
        w.u64(self.seq)?;
        w.u64(self.at.as_millis())?;
        match self.event {
            EventRef::Connect(c) => write_connect(w, &c),
            EventRef::Auth { input, entry, outcome } => write_auth(w, input, entry, outcome),
            EventRef::Departure(d) => write_departure(w, d),
            EventRef::Fallback { input, outcome } => {
                write_connect_input(w, &input).and_then(|()| write_outcome(w, outcome))
            }
            EventRef::Rebind(r) => other::write_rebind(w, r),
            EventRef::Guard(g) => other::write_guard(w, g),
        }
    }
}

/// Decodes a log of concatenated records, in order. Stops at the first error
/// (which it yields) since a log's framing cannot be trusted past it.
pub fn records(mut bytes: &[u8]) -> impl Iterator<Item = Result<AuditRecord<'_>, (usize, DecodeError)>> + '_ {
    let mut offset = 0usize;
    let mut failed = false;
    core::iter::from_fn(move || {
        if failed || bytes.is_empty() {
            return None;
        }
        match AuditRecord::decode(bytes) {
            Ok((rec, used)) => {
                bytes = bytes.get(used..).unwrap_or(&[]);
                offset = offset.saturating_add(used);
                Some(Ok(rec))
            }
            Err(e) => {
                failed = true;
                Some(Err((offset, e)))
            }
        }
    })
}

// ---- encoding -------------------------------------------------------------

/// A destination for encoded bytes: a buffer, or a counter for sizing.
trait Sink {
    fn put(&mut self, b: &[u8]) -> Result<(), EncodeError>;
    fn u8(&mut self, v: u8) -> Result<(), EncodeError> {
        self.put(&[v])
    }
    fn u16(&mut self, v: u16) -> Result<(), EncodeError> {
        self.put(&v.to_le_bytes())
    }
    fn u32(&mut self, v: u32) -> Result<(), EncodeError> {
        self.put(&v.to_le_bytes())
    }
    fn u64(&mut self, v: u64) -> Result<(), EncodeError> {
        self.put(&v.to_le_bytes())
    }
    /// A socket address in `wire`'s layout (written in place: no
    /// scratch copy on the stack).
    fn addr(&mut self, a: &SocketAddr) -> Result<(), EncodeError> {
        match a {
            SocketAddr::V4(a) => {
                self.u8(4)?;
                self.u16(a.port())?;
                self.put(&a.ip().octets())
            }
            SocketAddr::V6(a) => {
                self.u8(6)?;
                self.u16(a.port())?;
                self.put(&a.ip().octets())?;
                self.u32(a.flowinfo())?;
                self.u32(a.scope_id())
            }
        }
    }
    fn bytes16(&mut self, b: &[u8]) -> Result<(), EncodeError> {
        self.u16(u16::try_from(b.len()).map_err(|_| EncodeError::AppIdTooLong)?)?;
        self.put(b)
    }
}

struct Counter(usize);

impl Sink for Counter {
    fn put(&mut self, b: &[u8]) -> Result<(), EncodeError> {
        self.0 = self.0.saturating_add(b.len());
        Ok(())
    }
}

impl Sink for Writer<'_> {
    fn put(&mut self, b: &[u8]) -> Result<(), EncodeError> {
        Writer::put(self, b).map_err(|_| EncodeError::BufferTooSmall)
    }
}

fn write_flow(w: &mut impl Sink, f: &Flow<'_>) -> Result<(), EncodeError> {
    w.u8(f.protocol.0)?;
    w.addr(&f.local)?;
    w.addr(&f.remote)?;
    w.u64(f.endpoint)?;
    w.u64(f.pid)?;
    w.bytes16(f.app.as_bytes())?;
    w.bytes16(f.original_app.as_bytes())?;
    match f.package {
        Some(sid) => w.bytes16(sid.as_bytes()),
        None => w.u16(0),
    }
}

fn write_opt_addr(w: &mut impl Sink, a: Option<SocketAddr>) -> Result<(), EncodeError> {
    match a {
        Some(a) => w.u8(1).and_then(|()| w.addr(&a)),
        None => w.u8(0),
    }
}

fn write_outcome(w: &mut impl Sink, o: &Outcome) -> Result<(), EncodeError> {
    w.u8(o.verdict as u8)?;
    w.u16(o.reason.code())?;
    match &o.redirect {
        Some(t) => {
            w.u8(1)?;
            w.addr(&t.remote)?;
            w.u64(t.target_pid)?;
            w.put(&t.context.encode())
        }
        None => w.u8(0),
    }
}

fn write_connect_input(w: &mut impl Sink, i: &ConnectRedirectRef<'_, '_>) -> Result<(), EncodeError> {
    write_flow(w, i.flow)?;
    w.u8(i.state as u8)?;
    w.u8(u8::from(i.write_right) | u8::from(i.reauthorize) << 1 | u8::from(i.previous.overflowed()) << 2)?;
    w.u32(i.previous.walked())?;
    let entries = i.previous.entries();
    w.u8(u8::try_from(entries.len()).map_err(|_| EncodeError::BufferTooSmall)?)?;
    for e in entries {
        w.u64(e.filter)?;
        w.u8(u8::from(e.local_redirect_handle))?;
    }
    Ok(())
}

fn write_connect(w: &mut impl Sink, c: &ConnectParts<'_, '_>) -> Result<(), EncodeError> {
    write_connect_input(w, &c.input)?;
    w.u64(c.env.own_filter)?;
    match &c.env.proxy {
        Some(p) => {
            w.u8(1)?;
            w.u64(p.pid)?;
            write_opt_addr(w, p.v4.map(SocketAddr::V4))?;
            write_opt_addr(w, p.v6.map(SocketAddr::V6))?;
        }
        None => w.u8(0)?,
    }
    w.u8(c.loops.revisit as u8)?;
    w.u8(c.loops.on_loop as u8)?;
    w.u16(c.loops.max_hops)?;
    w.u64(c.loops.hop_window.as_millis())?;
    w.u32(c.rules_id)?;
    let f = c.consulted;
    let mask = u8::from(f.rule.is_some())
        | u8::from(f.trusted.is_some()) << 1
        | u8::from(f.known_local_proxy.is_some()) << 2
        | u8::from(f.hops.is_some()) << 3;
    w.u8(mask)?;
    match f.rule.flatten() {
        Some(hit) => w.u8(1).and_then(|()| w.u32(hit.index)).and_then(|()| w.u8(hit.action as u8))?,
        None => w.u8(0).and_then(|()| w.u32(0)).and_then(|()| w.u8(0))?,
    }
    w.u8(u8::from(f.trusted.unwrap_or(false)))?;
    w.u8(u8::from(f.known_local_proxy.unwrap_or(false)))?;
    w.u16(f.hops.unwrap_or(0))?;
    write_outcome(w, c.outcome)
}

fn write_entry(w: &mut impl Sink, e: &EndpointEntry) -> Result<(), EncodeError> {
    match e {
        EndpointEntry::Cached { verdict, reason } => {
            w.u8(1)?;
            w.u8(*verdict as u8)?;
            w.u16(reason.code())
        }
        EndpointEntry::Proxied { target_pid, destination } => {
            w.u8(2)?;
            w.u64(*target_pid)?;
            w.addr(destination)
        }
    }
}

fn write_auth(
    w: &mut impl Sink,
    i: &AuthConnectInput<'_>,
    entry: Option<&EndpointEntry>,
    outcome: &Outcome,
) -> Result<(), EncodeError> {
    write_flow(w, &i.flow)?;
    w.u8(u8::from(i.reauthorize) | u8::from(i.redirected) << 1)?;
    match i.target_pid {
        Some(p) => w.u8(1).and_then(|()| w.u64(p))?,
        None => w.u8(0)?,
    }
    write_opt_addr(w, i.original_destination)?;
    match entry {
        Some(e) => write_entry(w, e)?,
        None => w.u8(0)?,
    }
    write_outcome(w, outcome)
}

fn write_departure(w: &mut impl Sink, d: &DepartureRecord) -> Result<(), EncodeError> {
    w.u8(d.table as u8)?;
    w.u8(match d.why {
        Departure::Expired => 1,
        Departure::Evicted => 2,
    })?;
    match &d.entry {
        DepartedEntry::Endpoint { endpoint, entry } => {
            w.u8(1)?;
            w.u64(*endpoint)?;
            write_entry(w, entry)
        }
        DepartedEntry::Destination { destination, hops } => {
            w.u8(2)?;
            w.u8(destination.protocol.0)?;
            w.addr(&SocketAddr::new(destination.ip, destination.port))?;
            w.u64(hops.start.as_millis())?;
            w.u16(hops.count)
        }
        DepartedEntry::KnownProxy { pid } => {
            w.u8(3)?;
            w.u64(*pid)
        }
    }
}

// ---- decoding -------------------------------------------------------------

struct Body<'a> {
    r: Reader<'a>,
    base: usize,
    whole: usize,
}

impl<'a> Body<'a> {
    fn err(&self, kind: DecodeErrorKind) -> DecodeError {
        DecodeError { offset: self.base.saturating_add(self.whole.saturating_sub(self.r.remaining())), kind }
    }

    fn short(&self) -> DecodeError {
        self.err(DecodeErrorKind::Truncated)
    }

    fn bad(&self, field: &'static str) -> DecodeError {
        self.err(DecodeErrorKind::BadValue(field))
    }

    fn u8(&mut self) -> Result<u8, DecodeError> {
        self.r.u8().map_err(|Short| self.short())
    }
    fn u16(&mut self) -> Result<u16, DecodeError> {
        self.r.u16().map_err(|Short| self.short())
    }
    fn u32(&mut self) -> Result<u32, DecodeError> {
        self.r.u32().map_err(|Short| self.short())
    }
    fn u64(&mut self) -> Result<u64, DecodeError> {
        self.r.u64().map_err(|Short| self.short())
    }
    fn flag(&mut self, field: &'static str) -> Result<bool, DecodeError> {
        match self.u8()? {
            0 => Ok(false),
            1 => Ok(true),
            _ => Err(self.bad(field)),
        }
    }
    fn addr(&mut self, field: &'static str) -> Result<SocketAddr, DecodeError> {
        match self.r.socket_addr() {
            Ok(Some(a)) => Ok(a),
            Ok(None) => Err(self.bad(field)),
            Err(Short) => Err(self.short()),
        }
    }
    fn opt_addr(&mut self, field: &'static str) -> Result<Option<SocketAddr>, DecodeError> {
        if self.flag(field)? { self.addr(field).map(Some) } else { Ok(None) }
    }
    fn bytes16(&mut self) -> Result<&'a [u8], DecodeError> {
        self.r.bytes16().map_err(|Short| self.short())
    }
    fn reason(&mut self) -> Result<Reason, DecodeError> {
        Ok(Reason::from_code(self.u16()?))
    }
    fn permit_or_block(&mut self, field: &'static str) -> Result<PermitOrBlock, DecodeError> {
        let v = self.u8()?;
        PermitOrBlock::from_u8(v).ok_or_else(|| self.bad(field))
    }

    fn record(&mut self, kind: u8) -> Result<AuditRecord<'a>, DecodeError> {
        let seq = self.u64()?;
        let at = Instant::from_millis(self.u64()?);
        let event = match kind {
            KIND_CONNECT => Event::ConnectRedirect(self.connect()?),
            KIND_AUTH => Event::AuthConnect(self.auth()?),
            KIND_FALLBACK => Event::Fallback(self.fallback(&[Reason::PendTimeout])?),
            KIND_UNCLASSIFIED => {
                Event::Fallback(self.fallback(&[Reason::LayerDataUnavailable, Reason::UnreadableIndication])?)
            }
            KIND_REBIND => Event::Rebind(self.rebind()?),
            KIND_GUARD => Event::Guard(self.guard()?),
            _ => Event::Departure(self.departure(seq, at)?),
        };
        Ok(AuditRecord { seq, at, event })
    }

    fn flow(&mut self) -> Result<Flow<'a>, DecodeError> {
        let protocol = Protocol(self.u8()?);
        let local = self.addr("local address")?;
        let remote = self.addr("remote address")?;
        if local.is_ipv4() != remote.is_ipv4() {
            return Err(self.bad("address family (local and remote differ)"));
        }
        let endpoint = self.u64()?;
        let pid = self.u64()?;
        let app = self.app("app id")?;
        let original_app = self.app("original app id")?;
        let package = match self.bytes16()? {
            [] => None,
            bytes => Some(Sid::from_bytes(bytes).ok_or_else(|| self.bad("package SID"))?),
        };
        Ok(Flow { protocol, local, remote, endpoint, pid, app, original_app, package })
    }

    fn app(&mut self, field: &'static str) -> Result<AppId<'a>, DecodeError> {
        let bytes = self.bytes16()?;
        let id = AppId::from_utf16le(bytes);
        // Stored without terminator and with an even length, so decoding then
        // encoding gives the same bytes.
        if id.as_bytes().len() != bytes.len() {
            return Err(self.bad(field));
        }
        Ok(id)
    }

    fn outcome(&mut self) -> Result<Outcome, DecodeError> {
        let v = self.u8()?;
        let verdict = Verdict::from_u8(v).ok_or_else(|| self.bad("verdict"))?;
        let reason = self.reason()?;
        let redirect = if self.flag("redirect")? {
            let remote = self.addr("redirect target")?;
            let target_pid = self.u64()?;
            let ctx = self.r.take(CONTEXT_LEN).map_err(|Short| self.short())?;
            let context = RedirectContext::decode(ctx).map_err(|_| self.bad("redirect context"))?;
            Some(RedirectTarget { remote, target_pid, context })
        } else {
            None
        };
        if (verdict == Verdict::Proxy) != redirect.is_some() {
            return Err(self.bad("redirect target (present exactly for proxy)"));
        }
        Ok(Outcome { verdict, reason, redirect })
    }

    fn connect_input(&mut self) -> Result<ConnectRedirectInput<'a>, DecodeError> {
        let flow = self.flow()?;
        let s = self.u8()?;
        let state = RedirectState::from_u8(s).ok_or_else(|| self.bad("redirect state"))?;
        let flags = self.u8()?;
        if flags & !0b111 != 0 {
            return Err(self.bad("connect flags"));
        }
        let walked = self.u32()?;
        let n = self.u8()?;
        let mut previous = PreviousChain::new();
        for _ in 0..n {
            let filter = self.u64()?;
            let local_redirect_handle = self.flag("previousVersion handle flag")?;
            if !previous.push(PreviousEntry { filter, local_redirect_handle }) {
                return Err(self.bad("previousVersion chain (duplicate or too many entries)"));
            }
        }
        let overflowed = flags & 0b100 != 0;
        if walked < u32::from(n) {
            return Err(self.bad("previousVersion walked count"));
        }
        previous.set_walked(walked, overflowed);
        Ok(ConnectRedirectInput { flow, state, write_right: flags & 1 != 0, reauthorize: flags & 0b10 != 0, previous })
    }

    fn fallback(&mut self, reasons: &[Reason]) -> Result<FallbackRecord<'a>, DecodeError> {
        let input = self.connect_input()?;
        let outcome = self.outcome()?;
        if !reasons.contains(&outcome.reason) || outcome.verdict == Verdict::Proxy {
            return Err(self.bad("fallback outcome"));
        }
        Ok(FallbackRecord { input, outcome })
    }

    fn connect(&mut self) -> Result<ConnectRecord<'a>, DecodeError> {
        let input = self.connect_input()?;
        let own_filter = self.u64()?;
        let proxy = if self.flag("proxy presence")? {
            let pid = self.u64()?;
            let v4 = match self.opt_addr("proxy v4 listener")? {
                Some(SocketAddr::V4(a)) => Some(a),
                None => None,
                Some(SocketAddr::V6(_)) => return Err(self.bad("proxy v4 listener")),
            };
            let v6 = match self.opt_addr("proxy v6 listener")? {
                Some(SocketAddr::V6(a)) => Some(a),
                None => None,
                Some(SocketAddr::V4(_)) => return Err(self.bad("proxy v6 listener")),
            };
            Some(ProxyRegistration { pid, v4, v6 })
        } else {
            None
        };
        let env = Env { own_filter, proxy };
        let revisit = self.permit_or_block("revisit")?;
        let on_loop = self.permit_or_block("on_loop")?;
        let max_hops = self.u16()?;
        let hop_window = Duration::from_millis(self.u64()?);
        let loops = LoopPolicy { revisit, on_loop, max_hops, hop_window };
        let rules_id = self.u32()?;
        let mask = self.u8()?;
        if mask & !0b1111 != 0 {
            return Err(self.bad("consulted mask"));
        }
        let hit = self.flag("rule hit")?;
        let index = self.u32()?;
        let a = self.u8()?;
        let rule = match (hit, Action::from_u8(a)) {
            (true, Some(action)) => Some(RuleHit { index, action }),
            (false, None) if a == 0 && index == 0 => None,
            _ => return Err(self.bad("rule hit")),
        };
        let trusted = self.flag("trusted")?;
        let known = self.flag("known local proxy")?;
        let hops = self.u16()?;
        let pick = |bit: u8| mask & (1 << bit) != 0;
        let consulted = Consulted {
            rule: pick(0).then_some(rule),
            trusted: pick(1).then_some(trusted),
            known_local_proxy: pick(2).then_some(known),
            hops: pick(3).then_some(hops),
        };
        // Unconsulted facts are written as zeros; anything else would not
        // re-encode to the same bytes.
        if (!pick(0) && rule.is_some()) || (!pick(1) && trusted) || (!pick(2) && known) || (!pick(3) && hops != 0) {
            return Err(self.bad("unconsulted fact"));
        }
        let outcome = self.outcome()?;
        Ok(ConnectRecord { input, env, loops, rules_id, consulted, outcome })
    }

    fn entry(&mut self, tag: u8) -> Result<EndpointEntry, DecodeError> {
        match tag {
            1 => {
                let verdict = self.permit_or_block("cached verdict")?;
                let reason = self.reason()?;
                Ok(EndpointEntry::Cached { verdict, reason })
            }
            2 => {
                let target_pid = self.u64()?;
                let destination = self.addr("proxied destination")?;
                Ok(EndpointEntry::Proxied { target_pid, destination })
            }
            _ => Err(self.bad("endpoint entry")),
        }
    }

    fn auth(&mut self) -> Result<AuthRecord<'a>, DecodeError> {
        let flow = self.flow()?;
        let flags = self.u8()?;
        if flags & !0b11 != 0 {
            return Err(self.bad("auth flags"));
        }
        let target_pid = if self.flag("target pid presence")? { Some(self.u64()?) } else { None };
        let original_destination = self.opt_addr("original destination")?;
        let input = AuthConnectInput {
            flow,
            reauthorize: flags & 1 != 0,
            redirected: flags & 0b10 != 0,
            target_pid,
            original_destination,
        };
        let entry = match self.u8()? {
            0 => None,
            tag => Some(self.entry(tag)?),
        };
        let outcome = self.outcome()?;
        Ok(AuthRecord { input, entry, outcome })
    }

    fn departure(&mut self, seq: u64, at: Instant) -> Result<DepartureRecord, DecodeError> {
        let t = self.u8()?;
        let table = TableId::from_u8(t).ok_or_else(|| self.bad("table"))?;
        let why = match self.u8()? {
            1 => Departure::Expired,
            2 => Departure::Evicted,
            _ => return Err(self.bad("departure kind")),
        };
        let entry = match (self.u8()?, table) {
            (1, TableId::Endpoints) => {
                let endpoint = self.u64()?;
                let tag = self.u8()?;
                DepartedEntry::Endpoint { endpoint, entry: self.entry(tag)? }
            }
            (2, TableId::Destinations) => {
                let protocol = Protocol(self.u8()?);
                let a = self.addr("destination")?;
                let start = Instant::from_millis(self.u64()?);
                let count = self.u16()?;
                let destination = Destination { protocol, ip: a.ip(), port: a.port() };
                DepartedEntry::Destination { destination, hops: HopCount { start, count } }
            }
            (3, TableId::KnownProxies) => DepartedEntry::KnownProxy { pid: self.u64()? },
            _ => return Err(self.bad("departed entry")),
        };
        Ok(DepartureRecord { seq, at, table, why, entry })
    }
}

pub mod ring;

#[cfg(test)]
mod tests;
