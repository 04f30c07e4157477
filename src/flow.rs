//! What the decision table reads: one plain input struct per layer.
//!
//! Inputs borrow everything variable-sized (app ids, package SIDs) from the
//! caller, so building one never allocates: the callout points them at the
//! FWP_BYTE_BLOB / SID that WFP handed it, the lab and the replayer at their
//! own buffers.

use core::fmt;
use core::net::{IpAddr, SocketAddr};

/// The two layers the core decides at.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Layer {
    /// FWPM_LAYER_ALE_CONNECT_REDIRECT_V4/V6.
    ConnectRedirect,
    /// FWPM_LAYER_ALE_AUTH_CONNECT_V4/V6.
    AuthConnect,
}

impl Layer {
    /// The name used in fixtures and reports.
    pub const fn name(self) -> &'static str {
        match self {
            Self::ConnectRedirect => "connect-redirect",
            Self::AuthConnect => "auth-connect",
        }
    }

    /// Parses a fixture name.
    pub fn from_name(s: &str) -> Option<Self> {
        match s {
            "connect-redirect" => Some(Self::ConnectRedirect),
            "auth-connect" => Some(Self::AuthConnect),
            _ => None,
        }
    }
}

/// Address family, derived from the flow's addresses (the V4 or V6 layer).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Family {
    /// FWPM_LAYER_*_V4.
    V4,
    /// FWPM_LAYER_*_V6.
    V6,
}

/// An IP protocol number (FWPS_FIELD_*_IP_PROTOCOL).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Protocol(pub u8);

impl Protocol {
    /// IPPROTO_ICMP.
    pub const ICMP: Self = Self(1);
    /// IPPROTO_TCP.
    pub const TCP: Self = Self(6);
    /// IPPROTO_UDP.
    pub const UDP: Self = Self(17);
    /// IPPROTO_ICMPV6.
    pub const ICMPV6: Self = Self(58);

    /// TCP or UDP: the only protocols the core redirects (C1).
    pub const fn is_tcp_or_udp(self) -> bool {
        self.0 == Self::TCP.0 || self.0 == Self::UDP.0
    }

    /// Parses `tcp`, `udp`, `icmp`, `icmpv6` or a decimal protocol number.
    pub fn from_name(s: &str) -> Option<Self> {
        match s {
            "tcp" => Some(Self::TCP),
            "udp" => Some(Self::UDP),
            "icmp" => Some(Self::ICMP),
            "icmpv6" => Some(Self::ICMPV6),
            n => n.parse().ok().map(Self),
        }
    }
}

impl fmt::Display for Protocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            Self::TCP => f.write_str("tcp"),
            Self::UDP => f.write_str("udp"),
            Self::ICMP => f.write_str("icmp"),
            Self::ICMPV6 => f.write_str("icmpv6"),
            Self(n) => write!(f, "{n}"),
        }
    }
}

/// An application id as WFP reports it (FWPS_FIELD_ALE_APP_ID): the NT device
/// path in UTF-16LE code units, borrowed byte for byte.
///
/// A trailing NUL unit (WFP's blobs include it) and an odd trailing byte are
/// not part of the id. Comparisons are case-insensitive (see [`fold_unit`]).
#[derive(Clone, Copy, Default)]
pub struct AppId<'a>(&'a [u8]);

impl<'a> AppId<'a> {
    /// The empty id (field absent).
    pub const EMPTY: AppId<'static> = AppId(&[]);

    /// Wraps UTF-16LE bytes, dropping an odd trailing byte and trailing NUL units.
    pub fn from_utf16le(bytes: &'a [u8]) -> Self {
        let mut id = bytes.get(..bytes.len() & !1).unwrap_or(&[]);
        while let Some(head) = id.strip_suffix(&[0, 0]) {
            id = head;
        }
        Self(id)
    }

    /// The raw UTF-16LE bytes (no terminator).
    pub const fn as_bytes(&self) -> &'a [u8] {
        self.0
    }

    /// Number of UTF-16 code units.
    pub const fn len_units(&self) -> usize {
        self.0.len() / 2
    }

    /// True when the id is empty (the field was absent).
    pub const fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The `i`th code unit, if any.
    #[inline]
    pub fn unit(&self, i: usize) -> Option<u16> {
        let lo = i.checked_mul(2)?;
        match self.0.get(lo..lo.checked_add(2)?) {
            Some(&[a, b]) => Some(u16::from_le_bytes([a, b])),
            _ => None,
        }
    }

    /// The code units, in order.
    pub fn units(&self) -> impl DoubleEndedIterator<Item = u16> + ExactSizeIterator + 'a {
        self.0.chunks_exact(2).map(|c| match c {
            &[a, b] => u16::from_le_bytes([a, b]),
            _ => 0,
        })
    }

    /// The code units, case-folded.
    pub fn folded_units(&self) -> impl DoubleEndedIterator<Item = u16> + ExactSizeIterator + 'a {
        self.units().map(fold_unit)
    }

    /// Case-insensitive equality.
    pub fn eq_ignore_case(&self, other: &AppId<'_>) -> bool {
        self.len_units() == other.len_units() && self.folded_units().eq(other.folded_units())
    }

    /// Decodes to chars (unpaired surrogates become U+FFFD), for display.
    pub fn chars(&self) -> impl Iterator<Item = char> + 'a {
        char::decode_utf16(self.units()).map(|r| r.unwrap_or(char::REPLACEMENT_CHARACTER))
    }
}

impl PartialEq for AppId<'_> {
    fn eq(&self, other: &Self) -> bool {
        self.eq_ignore_case(other)
    }
}

impl Eq for AppId<'_> {}

impl fmt::Debug for AppId<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "\"{self}\"")
    }
}

impl fmt::Display for AppId<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for c in self.chars() {
            fmt::Write::write_char(f, c)?;
        }
        Ok(())
    }
}

/// Case folding for app ids: Windows compares paths case-insensitively by
/// upcasing; we fold to lower case, which agrees for every code unit whose
/// case mapping is a single BMP unit. Surrogates and multi-unit mappings are
/// left as they are.
#[inline]
pub fn fold_unit(u: u16) -> u16 {
    if u < 0x80 {
        // ASCII fast path: the common case for device paths.
        #[expect(clippy::cast_possible_truncation, reason = "u < 0x80 fits in u8")]
        let b = u as u8;
        return u16::from(b.to_ascii_lowercase());
    }
    let Some(c) = char::from_u32(u32::from(u)) else {
        return u;
    };
    let mut lower = c.to_lowercase();
    match (lower.next(), lower.next()) {
        (Some(l), None) => u16::try_from(u32::from(l)).unwrap_or(u),
        _ => u,
    }
}

/// A binary SID (FWPS_FIELD_ALE_PACKAGE_ID points at one), borrowed.
///
/// Layout: revision (1), sub-authority count (1), identifier authority (6,
/// big-endian), sub-authorities (4 each, little-endian).
#[derive(Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct Sid<'a>(&'a [u8]);

/// Most sub-authorities a SID may have (SID_MAX_SUB_AUTHORITIES).
pub const SID_MAX_SUB_AUTHORITIES: usize = 15;
/// Largest binary SID.
pub const SID_MAX_LEN: usize = 8 + 4 * SID_MAX_SUB_AUTHORITIES;

impl<'a> Sid<'a> {
    /// Checks the length against the sub-authority count; `None` if malformed.
    pub fn from_bytes(bytes: &'a [u8]) -> Option<Self> {
        let count = usize::from(*bytes.get(1)?);
        let revision = *bytes.first()?;
        if revision != 1 || count > SID_MAX_SUB_AUTHORITIES || Some(bytes.len()) != sid_len(count) {
            return None;
        }
        Some(Self(bytes))
    }

    /// The binary form.
    pub const fn as_bytes(&self) -> &'a [u8] {
        self.0
    }

    /// The identifier authority.
    pub fn authority(&self) -> u64 {
        self.0.get(2..8).map_or(0, |a| a.iter().fold(0u64, |acc, &b| (acc << 8) | u64::from(b)))
    }

    /// The sub-authorities, in order.
    pub fn sub_authorities(&self) -> impl Iterator<Item = u32> + 'a {
        self.0.get(8..).unwrap_or(&[]).chunks_exact(4).map(|c| match c {
            &[a, b, c, d] => u32::from_le_bytes([a, b, c, d]),
            _ => 0,
        })
    }
}

impl fmt::Display for Sid<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "S-1-{}", self.authority())?;
        for s in self.sub_authorities() {
            write!(f, "-{s}")?;
        }
        Ok(())
    }
}

impl fmt::Debug for Sid<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{self}")
    }
}

/// Binary length of a SID with `count` sub-authorities.
const fn sid_len(count: usize) -> Option<usize> {
    match count.checked_mul(4) {
        Some(n) => n.checked_add(8),
        None => None,
    }
}

/// A SID parsed from its `S-1-...` string form into a fixed buffer.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct SidBuf {
    bytes: [u8; SID_MAX_LEN],
    len: u8,
}

impl SidBuf {
    /// Parses `S-1-<authority>-<sub>...`; `None` when malformed.
    pub fn parse(s: &str) -> Option<Self> {
        let mut parts = s.split('-');
        if !parts.next()?.eq_ignore_ascii_case("s") || parts.next()? != "1" {
            return None;
        }
        let authority: u64 = parts.next()?.parse().ok()?;
        if authority >= 1 << 48 {
            return None;
        }
        let mut bytes = [0u8; SID_MAX_LEN];
        let mut count = 0usize;
        for (part, dst) in parts.zip(bytes.get_mut(8..)?.chunks_exact_mut(4)) {
            let sub: u32 = part.parse().ok()?;
            dst.copy_from_slice(&sub.to_le_bytes());
            count = count.checked_add(1)?;
        }
        if s.split('-').count() != count.checked_add(3)? {
            return None; // more sub-authorities than a SID holds
        }
        *bytes.get_mut(0)? = 1;
        *bytes.get_mut(1)? = u8::try_from(count).ok()?;
        bytes.get_mut(2..8)?.copy_from_slice(authority.to_be_bytes().get(2..8)?);
        let len = u8::try_from(sid_len(count)?).ok()?;
        Some(Self { bytes, len })
    }

    /// Copies a binary SID.
    pub fn from_sid(sid: Sid<'_>) -> Self {
        let mut bytes = [0u8; SID_MAX_LEN];
        let src = sid.as_bytes();
        let n = src.len().min(SID_MAX_LEN);
        if let (Some(dst), Some(src)) = (bytes.get_mut(..n), src.get(..n)) {
            dst.copy_from_slice(src);
        }
        Self { bytes, len: u8::try_from(n).unwrap_or(0) }
    }

    /// The borrowed binary form.
    pub fn as_sid(&self) -> Sid<'_> {
        Sid(self.bytes.get(..usize::from(self.len)).unwrap_or(&[]))
    }
}

impl fmt::Debug for SidBuf {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.as_sid())
    }
}

/// FWPS_CONNECTION_REDIRECT_STATE, as FwpsQueryConnectionRedirectState0 returns
/// it for our single redirect handle. Values are the enum's.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum RedirectState {
    /// FWPS_CONNECTION_NOT_REDIRECTED.
    NotRedirected = 0,
    /// FWPS_CONNECTION_REDIRECTED_BY_SELF.
    RedirectedBySelf = 1,
    /// FWPS_CONNECTION_REDIRECTED_BY_OTHER.
    RedirectedByOther = 2,
    /// FWPS_CONNECTION_PREVIOUSLY_REDIRECTED_BY_SELF.
    PreviouslyRedirectedBySelf = 3,
}

impl RedirectState {
    /// From the enum's numeric value.
    pub const fn from_u8(v: u8) -> Option<Self> {
        match v {
            0 => Some(Self::NotRedirected),
            1 => Some(Self::RedirectedBySelf),
            2 => Some(Self::RedirectedByOther),
            3 => Some(Self::PreviouslyRedirectedBySelf),
            _ => None,
        }
    }

    /// The name used in fixtures.
    pub const fn name(self) -> &'static str {
        match self {
            Self::NotRedirected => "not-redirected",
            Self::RedirectedBySelf => "redirected-by-self",
            Self::RedirectedByOther => "redirected-by-other",
            Self::PreviouslyRedirectedBySelf => "previously-redirected-by-self",
        }
    }

    /// Parses a fixture name.
    pub fn from_name(s: &str) -> Option<Self> {
        [Self::NotRedirected, Self::RedirectedBySelf, Self::RedirectedByOther, Self::PreviouslyRedirectedBySelf]
            .into_iter()
            .find(|st| st.name() == s)
    }
}

/// One entry of FWPS_CONNECT_REQUEST0.previousVersion: who modified the layer
/// data, and whether they set a local redirect handle.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub struct PreviousEntry {
    /// `modifierFilterId`.
    pub filter: u64,
    /// `localRedirectHandle != NULL`.
    pub local_redirect_handle: bool,
}

/// How many distinct previousVersion entries an input carries.
pub const CHAIN_CAPACITY: usize = 16;

/// The previousVersion chain, walked whole by the caller and pushed newest
/// first.
///
/// The decision table only asks whether *some* entry has a given modifier and
/// handle, so repeated (filter, handle) pairs (a reauthorization loop repeats
/// them) are stored once and counted. More than [`CHAIN_CAPACITY`] distinct
/// pairs sets [`PreviousChain::overflowed`], and the core then leaves the flow
/// alone (`chain-too-long`) rather than guess. Stored as parallel arrays (the
/// handle flags as a bit mask) so an input stays small to copy.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct PreviousChain {
    filters: [u64; CHAIN_CAPACITY],
    /// Bit `i` set: entry `i` has a local redirect handle.
    handles: u16,
    len: u8,
    overflowed: bool,
    walked: u32,
}

const _: () = assert!(CHAIN_CAPACITY <= 16, "handle flags are a u16 mask");

impl PreviousChain {
    /// The empty chain (no previous version).
    pub const fn new() -> Self {
        Self { filters: [0; CHAIN_CAPACITY], handles: 0, len: 0, overflowed: false, walked: 0 }
    }

    /// Builds a chain from entries, newest first.
    pub fn from_entries(entries: impl IntoIterator<Item = PreviousEntry>) -> Self {
        let mut chain = Self::new();
        for e in entries {
            chain.push(e);
        }
        chain
    }

    /// Adds the next (older) entry of the walk. Returns false when it was
    /// already present or did not fit.
    pub fn push(&mut self, entry: PreviousEntry) -> bool {
        self.walked = self.walked.saturating_add(1);
        if self.entries().any(|e| e == entry) {
            return false;
        }
        let i = usize::from(self.len);
        match self.filters.get_mut(i) {
            Some(slot) => {
                *slot = entry.filter;
                self.handles |= u16::from(entry.local_redirect_handle).checked_shl(u32::from(self.len)).unwrap_or(0);
                self.len = self.len.saturating_add(1);
                true
            }
            None => {
                self.overflowed = true;
                false
            }
        }
    }

    /// The distinct entries, newest first.
    pub fn entries(&self) -> impl ExactSizeIterator<Item = PreviousEntry> + '_ {
        let handles = self.handles;
        self.filters.get(..usize::from(self.len)).unwrap_or(&[]).iter().zip(0u32..16).map(move |(&filter, i)| {
            PreviousEntry { filter, local_redirect_handle: handles.checked_shr(i).unwrap_or(0) & 1 != 0 }
        })
    }

    /// How many distinct entries are held.
    pub const fn len(&self) -> usize {
        self.len as usize
    }

    /// True for an empty chain.
    pub const fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// More distinct entries were pushed than fit.
    pub const fn overflowed(&self) -> bool {
        self.overflowed
    }

    /// How many entries the walk pushed, duplicates included.
    pub const fn walked(&self) -> u32 {
        self.walked
    }

    /// Restores the walked count (audit decoding).
    pub(crate) fn set_walked(&mut self, walked: u32, overflowed: bool) {
        self.walked = walked;
        self.overflowed = overflowed;
    }
}

/// What both layers know about the connecting socket.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Flow<'a> {
    /// FWPS_FIELD_*_IP_PROTOCOL.
    pub protocol: Protocol,
    /// Local address and port.
    pub local: SocketAddr,
    /// Remote address and port (at connect-redirect: before any rewrite by us).
    pub remote: SocketAddr,
    /// FWPS_METADATA_FIELD_TRANSPORT_ENDPOINT_HANDLE.
    pub endpoint: u64,
    /// FWPS_METADATA_FIELD_PROCESS_ID.
    pub pid: u64,
    /// FWPS_FIELD_*_ALE_APP_ID.
    pub app: AppId<'a>,
    /// FWPS_FIELD_*_ALE_ORIGINAL_APP_ID (equal to `app` unless the flow was
    /// proxied by a process that kept the original app).
    pub original_app: AppId<'a>,
    /// FWPS_FIELD_*_ALE_PACKAGE_ID, for AppContainer processes.
    pub package: Option<Sid<'a>>,
}

impl Flow<'_> {
    /// The address family of the layer (from the remote address).
    pub const fn family(&self) -> Family {
        match self.remote {
            SocketAddr::V4(_) => Family::V4,
            SocketAddr::V6(_) => Family::V6,
        }
    }

    /// The destination key of C8's hop counter.
    pub fn destination(&self) -> Destination {
        Destination { protocol: self.protocol, ip: self.remote.ip(), port: self.remote.port() }
    }
}

/// (protocol, remote address, remote port): what C8 counts hops for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Destination {
    /// IP protocol.
    pub protocol: Protocol,
    /// Remote address.
    pub ip: IpAddr,
    /// Remote port.
    pub port: u16,
}

/// One FWPM_LAYER_ALE_CONNECT_REDIRECT_V4/V6 indication.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ConnectRedirectInput<'a> {
    /// The socket.
    pub flow: Flow<'a>,
    /// FwpsQueryConnectionRedirectState0 for our handle.
    pub state: RedirectState,
    /// FWPS_RIGHT_ACTION_WRITE is set in classifyOut->rights.
    pub write_right: bool,
    /// FWP_CONDITION_FLAG_IS_REAUTHORIZE.
    pub reauthorize: bool,
    /// FWPS_CONNECT_REQUEST0.previousVersion, walked whole.
    pub previous: PreviousChain,
}

impl<'a> ConnectRedirectInput<'a> {
    /// The input with its flow and chain borrowed.
    pub const fn as_parts(&self) -> ConnectRedirectRef<'_, 'a> {
        ConnectRedirectRef {
            flow: &self.flow,
            state: self.state,
            write_right: self.write_right,
            reauthorize: self.reauthorize,
            previous: &self.previous,
        }
    }
}

/// A [`ConnectRedirectInput`] with its flow and previousVersion chain
/// borrowed: what the decision and its audit record read (the same
/// decision and the same record bytes). The kernel adapter keeps the chain
/// (some 140 bytes) in its own state rather than on classifyFn's small
/// stack, and decides through this
/// ([`crate::Arbiter::decide_connect_redirect_to`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ConnectRedirectRef<'r, 'a> {
    /// The socket.
    pub flow: &'r Flow<'a>,
    /// FwpsQueryConnectionRedirectState0 for our handle.
    pub state: RedirectState,
    /// FWPS_RIGHT_ACTION_WRITE is set in classifyOut->rights.
    pub write_right: bool,
    /// FWP_CONDITION_FLAG_IS_REAUTHORIZE.
    pub reauthorize: bool,
    /// FWPS_CONNECT_REQUEST0.previousVersion, walked whole.
    pub previous: &'r PreviousChain,
}

/// One FWPM_LAYER_ALE_AUTH_CONNECT_V4/V6 indication.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AuthConnectInput<'a> {
    /// The socket.
    pub flow: Flow<'a>,
    /// FWP_CONDITION_FLAG_IS_REAUTHORIZE.
    pub reauthorize: bool,
    /// FWP_CONDITION_FLAG_IS_CONNECTION_REDIRECTED.
    pub redirected: bool,
    /// FWPS_METADATA_FIELD_LOCAL_REDIRECT_TARGET_PID, when present.
    pub target_pid: Option<u64>,
    /// FWPS_METADATA_FIELD_ORIGINAL_DESTINATION, when present.
    pub original_destination: Option<SocketAddr>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::vec::Vec;

    fn wide(s: &str) -> Vec<u8> {
        s.encode_utf16().flat_map(u16::to_le_bytes).collect()
    }

    #[test]
    fn app_id_strips_terminator_and_compares_case_insensitively() {
        let mut a = wide(r"\Device\HarddiskVolume3\Apps\Browser.exe");
        a.extend_from_slice(&[0, 0]);
        let b = wide(r"\device\harddiskvolume3\apps\browser.EXE");
        assert_eq!(AppId::from_utf16le(&a), AppId::from_utf16le(&b));
        assert_eq!(AppId::from_utf16le(&a).len_units(), 40);
        assert_eq!(alloc::format!("{}", AppId::from_utf16le(&b)), r"\device\harddiskvolume3\apps\browser.EXE");
    }

    #[test]
    fn sid_parses_and_prints() {
        let s = "S-1-15-2-1430448594-2639229838-973813799-439329657-1197984847-4069523365-4100528453";
        let sid = SidBuf::parse(s).unwrap();
        assert_eq!(alloc::format!("{}", sid.as_sid()), s);
        assert!(Sid::from_bytes(sid.as_sid().as_bytes()).is_some());
        assert!(SidBuf::parse("S-1-x").is_none());
        assert!(SidBuf::parse("S-2-15").is_none());
        assert!(Sid::from_bytes(&[1, 2, 0, 0, 0, 0, 0, 5]).is_none());
    }

    #[test]
    fn chain_dedups_and_overflows() {
        let mut c = PreviousChain::new();
        c.push(PreviousEntry { filter: 1, local_redirect_handle: true });
        c.push(PreviousEntry { filter: 1, local_redirect_handle: true });
        assert_eq!(c.len(), 1);
        assert_eq!(c.walked(), 2);
        for f in 0..40 {
            c.push(PreviousEntry { filter: f, local_redirect_handle: false });
        }
        assert!(c.overflowed());
        assert_eq!(c.len(), CHAIN_CAPACITY);
    }
}
