//! The rules blob: what `arbiter rules compile` writes and the driver loads
//! over its control device.
//!
//! The blob carries the canonical rule set, not the matcher's tables: the
//! tables hold offsets into each other that would all need re-validating, and
//! rebuilding them with [`CompiledRules::compile_seeded`] takes milliseconds,
//! seeds the hash tables with the driver's own random seeds, and leaves one
//! trust boundary (this decoder) instead of two. The encoding is canonical:
//! every accepted blob re-encodes to the same bytes.
//!
//! Layout (little-endian):
//!
//! | offset | size | field |
//! |---|---|---|
//! | 0 | 4 | magic `ARBR` |
//! | 4 | 2 | format version, 1 |
//! | 6 | 2 | reserved, 0 |
//! | 8 | 4 | payload length |
//! | 12 | 4 | CRC-32 (IEEE) of the payload; also the rule set's id |
//! | 16 | .. | payload |
//!
//! Payload: `revisit` u8, `on_loop` u8, `max_hops` u16, `hop_window_ms` u64;
//! proxy mask u8 (bit 0 IPv4, bit 1 IPv6), then the IPv4 listener (4-byte
//! address, port u16) and the IPv6 listener (16-byte address, port u16,
//! flow info u32, scope id u32) when present; `trust` and `known_proxies` as
//! glob lists; a rule count u32 and the rules. A rule: name (u32 length,
//! UTF-8), action u8, protocol flag u8 and number u8 (both 0 for any),
//! `remote` (u32 count; family u8 4|6, address, prefix u8), `remote_ports`
//! (u32 count; lo u16, hi u16), `app` and `original_app` glob lists, `package`
//! (u32 count; length u8, binary SID). A glob list is a u32 count, then per
//! glob a u32 unit count and its case-folded UTF-16 units.
//!
//! An optional `[boot]` section follows the rules, present only when it
//! differs from the default (so blobs and ids of rule sets without one are
//! unchanged): tag `B` (0x42), mode u8 (0 open, 1 block), an entry count u8
//! (at most [`crate::boot::MAX_ALLOW`]), then per entry protocol u8 and
//! remote port u16, sorted and without duplicates. A blob spelling out the
//! default section is refused, so the encoding stays canonical.
//!
//! [`decode`] never panics on any byte string, and never reserves more than
//! the blob's own length justifies: every count is checked against the bytes
//! left before anything is reserved.

use alloc::string::String;
use alloc::vec::Vec;
use core::fmt;
use core::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddrV4, SocketAddrV6};

use super::CompiledRules;
use crate::arbiter::Arbiter;
use crate::boot::{BootAllow, BootConfig, BootMode, MAX_ALLOW};
use crate::flow::{Protocol, Sid, SidBuf};
use crate::policy::{Action, Cidr, Glob, LoopPolicy, PermitOrBlock, PortRange, ProxyListeners, Rule, RuleSet};
use crate::table::OutOfMemory;
use crate::time::Duration;

/// The four magic bytes.
pub const MAGIC: [u8; 4] = *b"ARBR";
/// The format version this core reads and writes.
pub const VERSION: u16 = 1;
/// Header length.
pub const HEADER_LEN: usize = 16;
/// Tag of the optional `[boot]` section after the rules.
const BOOT_TAG: u8 = b'B';

/// Why a blob was refused. Offsets count from the blob's first byte.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BlobError {
    /// Shorter than the header.
    TooShort {
        /// The blob's length.
        len: usize,
    },
    /// The first four bytes are not `ARBR`.
    BadMagic,
    /// A version this core does not read.
    UnsupportedVersion {
        /// The version found.
        version: u16,
    },
    /// The reserved header field is not zero.
    Reserved,
    /// The header's payload length disagrees with the bytes present
    /// (a truncated or padded blob).
    LengthMismatch {
        /// Payload bytes the header declares.
        declared: u32,
        /// Payload bytes present.
        actual: usize,
    },
    /// The payload's CRC-32 is not the header's (a corrupted blob).
    ChecksumMismatch {
        /// The header's checksum.
        declared: u32,
        /// The payload's.
        computed: u32,
    },
    /// The payload ends inside a field.
    Truncated {
        /// Where the field starts.
        offset: usize,
        /// Which field.
        field: &'static str,
    },
    /// A field holds a value that is not allowed.
    Invalid {
        /// Where the field starts.
        offset: usize,
        /// Which field, and why.
        what: &'static str,
    },
    /// Bytes left over after the last rule.
    TrailingBytes {
        /// Where they start.
        offset: usize,
    },
    /// Memory ran out while building the rule set or its tables.
    OutOfMemory,
    /// The rule set decoded but the shared validator refuses it
    /// ([`crate::validate::check_rule_set`], as `arbiter rules check` does).
    Rejected(crate::validate::Finding),
}

impl fmt::Display for BlobError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            Self::TooShort { len } => write!(f, "blob of {len} bytes is shorter than its {HEADER_LEN}-byte header"),
            Self::BadMagic => f.write_str("offset 0: bad magic (not a rules blob)"),
            Self::UnsupportedVersion { version } => {
                write!(f, "offset 4: format version {version} is not supported (this core reads {VERSION})")
            }
            Self::Reserved => f.write_str("offset 6: reserved header field is not zero"),
            Self::LengthMismatch { declared, actual } => write!(
                f,
                "offset 8: header declares {declared} payload bytes but {actual} are present (truncated or padded)"
            ),
            Self::ChecksumMismatch { declared, computed } => write!(
                f,
                "offset 12: payload checksum {computed:#010x} does not match the header's {declared:#010x} (corrupted)"
            ),
            Self::Truncated { offset, field } => write!(f, "offset {offset}: payload ends inside {field}"),
            Self::Invalid { offset, what } => write!(f, "offset {offset}: {what}"),
            Self::TrailingBytes { offset } => write!(f, "offset {offset}: bytes left after the last rule"),
            Self::OutOfMemory => f.write_str("out of memory while building the rule set"),
            Self::Rejected(finding) => write!(f, "rule set refused: {finding}"),
        }
    }
}

impl core::error::Error for BlobError {}

impl From<OutOfMemory> for BlobError {
    fn from(_: OutOfMemory) -> Self {
        Self::OutOfMemory
    }
}

/// CRC-32 (IEEE 802.3, reflected polynomial 0xEDB88320) lookup table.
#[allow(
    clippy::indexing_slicing,
    clippy::arithmetic_side_effects,
    reason = "const evaluation: a bad index or overflow fails the build, never the kernel"
)]
const CRC_TABLE: [u32; 256] = {
    let mut table = [0u32; 256];
    let mut i = 0u32;
    while i < 256 {
        let mut c = i;
        let mut k = 0;
        while k < 8 {
            c = if c & 1 == 1 { 0xEDB8_8320 ^ (c >> 1) } else { c >> 1 };
            k += 1;
        }
        table[i as usize] = c;
        i += 1;
    }
    table
};

/// CRC-32 of `bytes` (the checksum zlib and Ethernet use).
pub fn crc32(bytes: &[u8]) -> u32 {
    !bytes.iter().fold(u32::MAX, |crc, &b| {
        let idx = usize::from((crc as u8) ^ b);
        CRC_TABLE.get(idx).copied().unwrap_or(0) ^ (crc >> 8)
    })
}

// ---------------------------------------------------------------- encoding

struct Out(Vec<u8>);

impl Out {
    fn put(&mut self, bytes: &[u8]) -> Result<(), OutOfMemory> {
        self.0.try_reserve(bytes.len()).map_err(|_| OutOfMemory)?;
        self.0.extend_from_slice(bytes);
        Ok(())
    }
    fn u8(&mut self, v: u8) -> Result<(), OutOfMemory> {
        self.put(&[v])
    }
    fn u16(&mut self, v: u16) -> Result<(), OutOfMemory> {
        self.put(&v.to_le_bytes())
    }
    fn u32(&mut self, v: u32) -> Result<(), OutOfMemory> {
        self.put(&v.to_le_bytes())
    }
    fn len(&mut self, n: usize) -> Result<(), OutOfMemory> {
        self.u32(u32::try_from(n).map_err(|_| OutOfMemory)?)
    }
    fn globs(&mut self, globs: &[Glob]) -> Result<(), OutOfMemory> {
        self.len(globs.len())?;
        for g in globs {
            self.len(g.units().len())?;
            for &u in g.units() {
                self.u16(u)?;
            }
        }
        Ok(())
    }
}

/// Encodes a rule set (its `id` is not stored: it is the payload checksum).
/// Fails only when memory is short or a list is longer than `u32::MAX`.
pub fn encode(rs: &RuleSet) -> Result<Vec<u8>, OutOfMemory> {
    let mut o = Out(Vec::new());
    o.put(&MAGIC)?;
    o.u16(VERSION)?;
    o.u16(0)?;
    o.u32(0)?; // length, patched below
    o.u32(0)?; // checksum, patched below
    let lp = rs.loop_policy;
    o.u8(lp.revisit as u8)?;
    o.u8(lp.on_loop as u8)?;
    o.u16(lp.max_hops)?;
    o.put(&lp.hop_window.as_millis().to_le_bytes())?;
    let mask = u8::from(rs.proxy.v4.is_some()) | (u8::from(rs.proxy.v6.is_some()) << 1);
    o.u8(mask)?;
    if let Some(v4) = rs.proxy.v4 {
        o.put(&v4.ip().octets())?;
        o.u16(v4.port())?;
    }
    if let Some(v6) = rs.proxy.v6 {
        o.put(&v6.ip().octets())?;
        o.u16(v6.port())?;
        o.u32(v6.flowinfo())?;
        o.u32(v6.scope_id())?;
    }
    o.globs(&rs.trust)?;
    o.globs(&rs.known_proxies)?;
    o.len(rs.rules.len())?;
    for r in &rs.rules {
        o.len(r.name.len())?;
        o.put(r.name.as_bytes())?;
        o.u8(r.action as u8)?;
        o.u8(u8::from(r.protocol.is_some()))?;
        o.u8(r.protocol.map_or(0, |p| p.0))?;
        o.len(r.remote.len())?;
        for c in &r.remote {
            match c.addr {
                IpAddr::V4(ip) => {
                    o.u8(4)?;
                    o.put(&ip.octets())?;
                }
                IpAddr::V6(ip) => {
                    o.u8(6)?;
                    o.put(&ip.octets())?;
                }
            }
            o.u8(c.prefix)?;
        }
        o.len(r.remote_ports.len())?;
        for p in &r.remote_ports {
            o.u16(p.lo)?;
            o.u16(p.hi)?;
        }
        o.globs(&r.app)?;
        o.globs(&r.original_app)?;
        o.len(r.package.len())?;
        for s in &r.package {
            let b = s.as_sid().as_bytes();
            o.u8(u8::try_from(b.len()).map_err(|_| OutOfMemory)?)?;
            o.put(b)?;
        }
    }
    if rs.boot != BootConfig::default() {
        let mut boot = rs.boot.clone();
        boot.canonicalize();
        o.u8(BOOT_TAG)?;
        o.u8(boot.mode as u8)?;
        o.u8(u8::try_from(boot.allow.len()).map_err(|_| OutOfMemory)?)?;
        for a in &boot.allow {
            o.u8(a.protocol.0)?;
            o.u16(a.port)?;
        }
    }
    let mut blob = o.0;
    let payload = blob.get(HEADER_LEN..).unwrap_or(&[]);
    let len = u32::try_from(payload.len()).map_err(|_| OutOfMemory)?;
    let crc = crc32(payload);
    if let Some(h) = blob.get_mut(8..12) {
        h.copy_from_slice(&len.to_le_bytes());
    }
    if let Some(h) = blob.get_mut(12..16) {
        h.copy_from_slice(&crc.to_le_bytes());
    }
    Ok(blob)
}

/// The id a rule set gets: the checksum its blob carries.
pub fn rule_set_id(rs: &RuleSet) -> Result<u32, OutOfMemory> {
    let blob = encode(rs)?;
    Ok(blob.get(12..16).and_then(|b| b.try_into().ok()).map_or(0, u32::from_le_bytes))
}

// ---------------------------------------------------------------- decoding

/// A cursor that knows its absolute offset in the blob.
struct Cursor<'a> {
    buf: &'a [u8],
    pos: usize,
}

type Res<T> = Result<T, BlobError>;

const fn invalid(offset: usize, what: &'static str) -> BlobError {
    BlobError::Invalid { offset, what }
}

impl<'a> Cursor<'a> {
    fn take(&mut self, n: usize, field: &'static str) -> Res<&'a [u8]> {
        let end = self.pos.checked_add(n).ok_or(BlobError::Truncated { offset: self.pos, field })?;
        let bytes = self.buf.get(self.pos..end).ok_or(BlobError::Truncated { offset: self.pos, field })?;
        self.pos = end;
        Ok(bytes)
    }
    fn array<const N: usize>(&mut self, field: &'static str) -> Res<[u8; N]> {
        let at = self.pos;
        self.take(N, field)?.try_into().map_err(|_| BlobError::Truncated { offset: at, field })
    }
    fn u8(&mut self, field: &'static str) -> Res<u8> {
        Ok(u8::from_le_bytes(self.array(field)?))
    }
    fn u16(&mut self, field: &'static str) -> Res<u16> {
        Ok(u16::from_le_bytes(self.array(field)?))
    }
    fn u32(&mut self, field: &'static str) -> Res<u32> {
        Ok(u32::from_le_bytes(self.array(field)?))
    }
    fn remaining(&self) -> usize {
        self.buf.len().saturating_sub(self.pos)
    }
    /// Reads a count of items at least `min` bytes each, checked against the
    /// bytes left so a forged count cannot make us reserve more than the blob holds.
    fn count(&mut self, min: usize, field: &'static str) -> Res<usize> {
        let at = self.pos;
        let n = usize::try_from(self.u32(field)?).map_err(|_| invalid(at, "count too large"))?;
        if n.checked_mul(min).is_none_or(|need| need > self.remaining()) {
            return Err(invalid(at, "count exceeds the bytes left in the blob"));
        }
        Ok(n)
    }
    fn vec<T>(&self, n: usize) -> Res<Vec<T>> {
        let mut v = Vec::new();
        v.try_reserve_exact(n).map_err(|_| BlobError::OutOfMemory)?;
        Ok(v)
    }
    fn globs(&mut self) -> Res<Vec<Glob>> {
        let n = self.count(4, "glob count")?;
        let mut globs = self.vec(n)?;
        for _ in 0..n {
            let units_n = self.count(2, "glob length")?;
            let at = self.pos;
            let bytes = self.take(units_n.saturating_mul(2), "glob units")?;
            let units = bytes.chunks_exact(2).map(|c| match c {
                &[a, b] => u16::from_le_bytes([a, b]),
                _ => 0,
            });
            let mut s = String::new();
            s.try_reserve(units_n.saturating_mul(3)).map_err(|_| BlobError::OutOfMemory)?;
            for c in char::decode_utf16(units.clone()) {
                s.push(c.map_err(|_| invalid(at, "glob is not valid UTF-16"))?);
            }
            let g = Glob::new(&s).map_err(|_| BlobError::OutOfMemory)?;
            if !g.units().iter().copied().eq(units) {
                return Err(invalid(at, "glob is not case-folded"));
            }
            globs.push(g);
        }
        Ok(globs)
    }
    fn boot(&mut self) -> Res<BootConfig> {
        let at = self.pos;
        if self.u8("boot tag")? != BOOT_TAG {
            return Err(BlobError::TrailingBytes { offset: at });
        }
        let at = self.pos;
        let mode = BootMode::from_u8(self.u8("boot mode")?).ok_or(invalid(at, "boot mode is neither 0 nor 1"))?;
        let at = self.pos;
        let n = usize::from(self.u8("boot allow count")?);
        if n > MAX_ALLOW {
            return Err(invalid(at, "boot allow-list longer than 16 entries"));
        }
        let mut allow: Vec<BootAllow> = self.vec(n)?;
        for _ in 0..n {
            let at = self.pos;
            let protocol = Protocol(self.u8("boot allow protocol")?);
            if protocol != Protocol::TCP && protocol != Protocol::UDP {
                return Err(invalid(at, "boot allow protocol is neither TCP nor UDP"));
            }
            let port = self.u16("boot allow port")?;
            let entry = BootAllow { protocol, port };
            if allow.last().is_some_and(|last| *last >= entry) {
                return Err(invalid(at, "boot allow-list not sorted or has duplicates"));
            }
            allow.push(entry);
        }
        let boot = BootConfig { mode, allow };
        if boot == BootConfig::default() {
            return Err(invalid(at, "boot section spells out the default (not canonical)"));
        }
        Ok(boot)
    }

    fn permit_or_block(&mut self, field: &'static str) -> Res<PermitOrBlock> {
        let at = self.pos;
        PermitOrBlock::from_u8(self.u8(field)?).ok_or(invalid(at, "not permit (1) or block (2)"))
    }
    fn rule(&mut self) -> Res<Rule> {
        let name_n = self.count(1, "rule name length")?;
        let at = self.pos;
        let name =
            core::str::from_utf8(self.take(name_n, "rule name")?).map_err(|_| invalid(at, "rule name is not UTF-8"))?;
        let mut owned = String::new();
        owned.try_reserve_exact(name.len()).map_err(|_| BlobError::OutOfMemory)?;
        owned.push_str(name);
        let at = self.pos;
        let action = Action::from_u8(self.u8("action")?).ok_or(invalid(at, "unknown action"))?;
        let at = self.pos;
        let protocol = match (self.u8("protocol flag")?, self.u8("protocol")?) {
            (0, 0) => None,
            (1, p) => Some(Protocol(p)),
            _ => return Err(invalid(at, "protocol flag is not 0 (any, number 0) or 1")),
        };
        let n = self.count(6, "remote count")?;
        let mut remote = self.vec(n)?;
        for _ in 0..n {
            let at = self.pos;
            let (addr, max) = match self.u8("address family")? {
                4 => (IpAddr::V4(Ipv4Addr::from(self.array::<4>("IPv4 address")?)), 32),
                6 => (IpAddr::V6(Ipv6Addr::from(self.array::<16>("IPv6 address")?)), 128),
                _ => return Err(invalid(at, "address family is not 4 or 6")),
            };
            let at = self.pos;
            let prefix = self.u8("prefix length")?;
            if prefix > max {
                return Err(invalid(at, "prefix length longer than the address"));
            }
            remote.push(Cidr { addr, prefix });
        }
        let n = self.count(4, "port range count")?;
        let mut remote_ports = self.vec(n)?;
        for _ in 0..n {
            let at = self.pos;
            let (lo, hi) = (self.u16("port range")?, self.u16("port range")?);
            if lo > hi {
                return Err(invalid(at, "port range is inverted"));
            }
            remote_ports.push(PortRange { lo, hi });
        }
        let app = self.globs()?;
        let original_app = self.globs()?;
        let n = self.count(9, "package count")?;
        let mut package = self.vec(n)?;
        for _ in 0..n {
            let len = usize::from(self.u8("SID length")?);
            let at = self.pos;
            let sid = Sid::from_bytes(self.take(len, "SID")?).ok_or(invalid(at, "malformed SID"))?;
            package.push(SidBuf::from_sid(sid));
        }
        Ok(Rule { name: owned, action, protocol, remote, remote_ports, app, original_app, package })
    }
}

/// Checks the header and checksum, then decodes the rule set (its `id` set
/// to the checksum). The tables are not built.
pub fn decode_rule_set(blob: &[u8]) -> Result<RuleSet, BlobError> {
    let header = blob.get(..HEADER_LEN).ok_or(BlobError::TooShort { len: blob.len() })?;
    let field = |at: usize| header.get(at..at.saturating_add(4)).and_then(|b| b.try_into().ok()).unwrap_or([0; 4]);
    if field(0) != MAGIC {
        return Err(BlobError::BadMagic);
    }
    let [v0, v1, r0, r1] = field(4);
    let version = u16::from_le_bytes([v0, v1]);
    if version != VERSION {
        return Err(BlobError::UnsupportedVersion { version });
    }
    if [r0, r1] != [0, 0] {
        return Err(BlobError::Reserved);
    }
    let declared = u32::from_le_bytes(field(8));
    let payload = blob.get(HEADER_LEN..).unwrap_or(&[]);
    if usize::try_from(declared).ok() != Some(payload.len()) {
        return Err(BlobError::LengthMismatch { declared, actual: payload.len() });
    }
    let crc = u32::from_le_bytes(field(12));
    let computed = crc32(payload);
    if computed != crc {
        return Err(BlobError::ChecksumMismatch { declared: crc, computed });
    }

    let mut c = Cursor { buf: blob, pos: HEADER_LEN };
    let revisit = c.permit_or_block("revisit")?;
    let on_loop = c.permit_or_block("on_loop")?;
    let at = c.pos;
    let max_hops = c.u16("max_hops")?;
    if max_hops == 0 {
        return Err(invalid(at, "max_hops is 0"));
    }
    let hop_window = Duration::from_millis(u64::from_le_bytes(c.array("hop_window_ms")?));
    let at = c.pos;
    let mask = c.u8("proxy mask")?;
    if mask & !3 != 0 {
        return Err(invalid(at, "proxy mask has unknown bits"));
    }
    let v4 = if mask & 1 != 0 {
        let ip = Ipv4Addr::from(c.array::<4>("IPv4 listener")?);
        Some(SocketAddrV4::new(ip, c.u16("IPv4 listener port")?))
    } else {
        None
    };
    let v6 = if mask & 2 != 0 {
        let ip = Ipv6Addr::from(c.array::<16>("IPv6 listener")?);
        let port = c.u16("IPv6 listener port")?;
        let flow = c.u32("IPv6 flow info")?;
        Some(SocketAddrV6::new(ip, port, flow, c.u32("IPv6 scope id")?))
    } else {
        None
    };
    let trust = c.globs()?;
    let known_proxies = c.globs()?;
    let n = c.count(27, "rule count")?;
    let mut rules = c.vec(n)?;
    for _ in 0..n {
        rules.push(c.rule()?);
    }
    let boot = if c.remaining() != 0 { c.boot()? } else { BootConfig::default() };
    if c.remaining() != 0 {
        return Err(BlobError::TrailingBytes { offset: c.pos });
    }
    let rs = RuleSet {
        proxy: ProxyListeners { v4, v6 },
        loop_policy: LoopPolicy { revisit, on_loop, max_hops, hop_window },
        trust,
        known_proxies,
        rules,
        boot,
        id: crc,
    };
    // The same checks as the rules checker: a blob cannot carry what a rules file may not.
    crate::validate::check_rule_set(&rs).map_err(BlobError::Rejected)?;
    Ok(rs)
}

/// Decodes a blob and compiles it with [`super::DEFAULT_SEED`].
pub fn decode(blob: &[u8]) -> Result<CompiledRules, BlobError> {
    decode_seeded(blob, super::DEFAULT_SEED)
}

/// Decodes a blob and compiles it, seeding the hash tables with `seed`.
pub fn decode_seeded(blob: &[u8], seed: [u64; 4]) -> Result<CompiledRules, BlobError> {
    let rs = decode_rule_set(blob)?;
    Ok(CompiledRules::compile_seeded(&rs, seed)?)
}

/// The atomic rule swap: decodes and compiles `blob` completely first, and
/// only then replaces the arbiter's policy, handing back the old one. On any
/// error the arbiter is untouched and the previous rules stay in force.
pub fn swap_blob(
    arbiter: &mut Arbiter<CompiledRules>,
    blob: &[u8],
    seed: [u64; 4],
) -> Result<CompiledRules, BlobError> {
    let new = decode_seeded(blob, seed)?;
    Ok(arbiter.replace_policy(new))
}
