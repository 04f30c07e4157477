//! App-id globs: which of a set of patterns match an app id, without trying
//! them all.
//!
//! Every pattern is filed under one *anchor*, a piece of literal text any id
//! it matches must contain in a known place:
//!
//! - a pattern without a wildcard: the whole id;
//! - its literal tail (`*\browser.exe` only matches ids ending in
//!   `\browser.exe`) or literal head (`\device\harddiskvolume3\*`), up to
//!   [`MAX_END`] units of it;
//! - a whole path component of up to [`MAX_END`] units (`*\vendor\*` only
//!   matches ids with a `vendor` component).
//!
//! Each pattern takes its rarest anchor among all patterns' anchors, so a
//! head every path shares (`\device\...`) is passed over for a component
//! that tells patterns apart. An anchor is known by its kind, its length and
//! a 64-bit digest of its case-folded units. A lookup digests the heads of
//! the lengths in use (and the whole id when a literal pattern is that
//! long), each component of a length in use until every component bucket has
//! been tried, then the tails of the lengths in use; a bit filter turns most
//! of those away before the hash table is probed. Only the patterns filed
//! under a probed anchor are tried, and each is first checked against the id
//! at the inner ends of its literal head and tail (the units next to the
//! wildcard, where paths sharing a directory differ) before the whole literal
//! parts are compared and the middle is matched ([`Middle`]: each unit of
//! the id read once but for the search stretches' overlaps, its mask two
//! loads through a class map, three chains in flight). Patterns with no anchor (`*`,
//! `*foo*`) are tried one by one.
//!
//! The cost of a lookup is linear in the id whatever it holds: the
//! validator's limits (256 units, 8 `*`, 64 units in a middle) keep a
//! middle's state in one 64-bit word. `cargo bench --bench classify_worst`
//! measures the worst shapes against a 32,767-unit id.
//!
//! Digests only choose which patterns to try; every answer comes from a full
//! comparison, so a digest collision costs time, never correctness. The table
//! hash is seeded by the caller: attackers choose app ids.

use alloc::vec::Vec;

use ahash::RandomState;
use hashbrown::HashTable;

use super::postings::{to_u32, to_usize};
use crate::flow::{AppId, fold_unit};
use crate::table::OutOfMemory;

/// Pattern units `*` and `?`.
const STAR: u16 = b'*' as u16;
const QUESTION: u16 = b'?' as u16;

/// Path separator.
const BACKSLASH: u16 = b'\\' as u16;

/// Longest literal head or tail an anchor covers (heads and tails longer
/// than this are anchored on their first or last `MAX_END` units).
const MAX_END: usize = 63;

/// Units compared by the quick check at each inner end.
const PRINT_UNITS: usize = 4;

/// Anchor kinds.
const SUFFIX: u8 = 0;
const PREFIX: u8 = 1;
const COMPONENT: u8 = 2;
const EXACT: u8 = 3;

/// An anchor: kind, length in units (saturated), digest of the folded units.
type Anchor = (u8, u16, u64);

/// Most distinct component anchors filed (patterns past this take another
/// anchor or none), so that a lookup can remember on the stack which
/// component buckets it has tried: an id may repeat a component
/// (`\dev\\dev\`), and each bucket is tried once per lookup.
const MAX_COMPONENT_BUCKETS: usize = 256;

/// The component buckets a lookup has tried: one bit each, and how many.
#[derive(Default)]
struct Tried {
    bits: [u64; MAX_COMPONENT_BUCKETS / 64],
    count: u16,
}

/// Patterns sharing one anchor.
#[derive(Clone, Copy, Debug)]
struct Bucket {
    anchor: Anchor,
    /// For a component anchor, its ordinal (below [`MAX_COMPONENT_BUCKETS`]).
    ordinal: u16,
    /// First key id in `anchor_keys`.
    start: u32,
    /// How many.
    len: u32,
}

/// What a check needs to know about one pattern.
#[derive(Clone, Copy, Debug, Default)]
struct Key {
    /// Start in `units`.
    start: u32,
    /// Pattern length in units.
    len: u32,
    /// Literal head and tail lengths (equal to `len` for a literal pattern).
    head: u32,
    tail: u32,
    /// The last (up to) [`PRINT_UNITS`] units of the head and the first of
    /// the tail, packed as [`pack`] does.
    head_print: u64,
    tail_print: u64,
    /// Its wildcard middle in `GlobIndex::middles` ([`NO_MIDDLE`] for a
    /// literal pattern).
    middle: u32,
}

/// [`Key::middle`] of a literal pattern.
const NO_MIDDLE: u32 = u32::MAX;

/// A set of distinct patterns, each known by its key id (its position in the
/// list given to [`GlobIndex::build`]).
#[derive(Clone, Debug)]
pub(super) struct GlobIndex {
    hasher: RandomState,
    units: Vec<u16>,
    keys: Vec<Key>,
    /// Every pattern's wildcard middle and its tables ([`compile_middle`]),
    /// built once so that matching keeps no table on the (kernel) stack.
    middles: Vec<Middle>,
    masks: Vec<u64>,
    /// Class maps ([`UNITS`] bytes each), shared by the middles in them.
    maps: Vec<u8>,
    anchors: HashTable<Bucket>,
    anchor_keys: Vec<u32>,
    /// One bit per [`filter_bit`] of every anchor in `anchors`.
    filter: Vec<u64>,
    /// `log2` of the filter's bit count.
    filter_shift: u32,
    /// Bit `l` set when a suffix (prefix) anchor of length `l` exists.
    suffix_lens: u64,
    prefix_lens: u64,
    /// Bit `l` set when a component anchor of length `l` exists (none is
    /// longer than [`MAX_END`]).
    component_lens: u64,
    /// Number of component buckets (a lookup stops reading components once
    /// it has tried them all).
    component_buckets: u16,
    /// Some literal pattern is filed (the whole id is then probed, when no
    /// longer than `longest_exact`).
    exact: bool,
    longest_exact: usize,
    always: Vec<u32>,
}

/// Units of an app id the tests fold into a buffer, to check that a folded
/// id and the id itself read alike (matching reads the id in place).
#[cfg(test)]
pub(super) const FOLD_UNITS: usize = 288;

/// An app id's units, however they are read: a folded slice or the id
/// itself (folding each unit on the way where folding matters).
pub(super) trait Units {
    /// Number of units.
    fn count(&self) -> usize;
    /// The folded unit `i` (0 past the end).
    fn at(&self, i: usize) -> u16;
    /// Are the folded units from `from` on equal to `units`? `backwards`
    /// compares from the last unit (where paths sharing a head differ).
    fn same(&self, from: usize, units: &[u16], backwards: bool) -> bool;
    /// How the units are stored.
    type Lane<'a>: Lane
    where
        Self: 'a;
    /// Units `[from, to)` as stored: folded or not, so a reader must treat a
    /// unit and its folded form alike. `None` past the end.
    fn lane(&self, from: usize, to: usize) -> Option<Self::Lane<'_>>;
}

/// A run of an id's units as stored, read in order without copying.
pub(super) trait Lane: Copy {
    /// Four units as stored.
    type Quad: Copy;
    /// The units, in order.
    fn units(self) -> impl ExactSizeIterator<Item = u16>;
    /// The units four at a time (the last `len % 4` units are left out),
    /// borrowed: each unit is then read by a load of its own.
    fn quads(self) -> impl Iterator<Item = Self::Quad>;
    /// Unit `j` (0..4) of a quad (0 past it).
    fn unit(q: Self::Quad, j: usize) -> u16;
}

impl<'a> Lane for &'a [u16] {
    type Quad = &'a [u16; 4];
    #[inline(always)]
    fn units(self) -> impl ExactSizeIterator<Item = u16> {
        self.iter().copied()
    }
    #[inline(always)]
    fn quads(self) -> impl Iterator<Item = &'a [u16; 4]> {
        self.as_chunks::<4>().0.iter()
    }
    #[inline(always)]
    fn unit(q: &[u16; 4], j: usize) -> u16 {
        q.get(j).copied().unwrap_or(0)
    }
}

/// Units as UTF-16LE bytes (an [`AppId`]'s).
#[derive(Clone, Copy)]
pub(super) struct Bytes<'a>(&'a [u8]);

impl<'a> Lane for Bytes<'a> {
    type Quad = &'a [[u8; 2]; 4];
    #[inline(always)]
    fn units(self) -> impl ExactSizeIterator<Item = u16> {
        self.0.chunks_exact(2).map(|c| match c {
            &[a, b] => u16::from_le_bytes([a, b]),
            _ => 0,
        })
    }
    #[inline(always)]
    fn quads(self) -> impl Iterator<Item = &'a [[u8; 2]; 4]> {
        self.0.as_chunks::<2>().0.as_chunks::<4>().0.iter()
    }
    #[inline(always)]
    fn unit(q: &[[u8; 2]; 4], j: usize) -> u16 {
        u16::from_le_bytes(q.get(j).copied().unwrap_or([0; 2]))
    }
}

impl Units for [u16] {
    #[inline]
    fn count(&self) -> usize {
        self.len()
    }
    #[inline]
    fn at(&self, i: usize) -> u16 {
        self.get(i).copied().unwrap_or(0)
    }
    #[inline]
    fn same(&self, from: usize, units: &[u16], _: bool) -> bool {
        self.get(from..from.saturating_add(units.len())) == Some(units)
    }
    type Lane<'a> = &'a [u16];
    #[inline]
    fn lane(&self, from: usize, to: usize) -> Option<&[u16]> {
        self.get(from..to)
    }
}

impl Units for AppId<'_> {
    #[inline]
    fn count(&self) -> usize {
        self.len_units()
    }
    #[inline]
    fn at(&self, i: usize) -> u16 {
        self.unit(i).map_or(0, fold_unit)
    }
    fn same(&self, from: usize, units: &[u16], backwards: bool) -> bool {
        let bytes = self.as_bytes();
        let start = from.saturating_mul(2);
        let Some(id) = bytes.get(start..start.saturating_add(units.len().saturating_mul(2))) else {
            return false;
        };
        let mut pairs = units.iter().zip(id.chunks_exact(2));
        let same = |(&p, c): (&u16, &[u8])| match c {
            &[a, b] => fold_unit(u16::from_le_bytes([a, b])) == p,
            _ => false,
        };
        if backwards { pairs.rev().all(same) } else { pairs.all(same) }
    }
    type Lane<'a>
        = Bytes<'a>
    where
        Self: 'a;
    #[inline]
    fn lane(&self, from: usize, to: usize) -> Option<Bytes<'_>> {
        self.as_bytes().get(from.checked_mul(2)?..to.checked_mul(2)?).map(Bytes)
    }
}

/// Folds `app` into `buf`; `None` when it does not fit. ASCII is folded four
/// units at a time (an id is almost always ASCII), anything else by
/// [`fold_unit`].
#[cfg(test)]
pub(super) fn fold<'b>(app: &AppId<'_>, buf: &'b mut [u16; FOLD_UNITS]) -> Option<&'b [u16]> {
    let out = buf.get_mut(..app.len_units())?;
    fold_bytes(app.as_bytes(), out);
    Some(out)
}

/// Folds the UTF-16LE units in `bytes` into `out` (as many as both hold).
#[cfg(test)]
fn fold_bytes(bytes: &[u8], out: &mut [u16]) {
    let mut words = bytes.chunks_exact(8);
    let mut quads = out.chunks_exact_mut(4);
    for (w, q) in (&mut words).zip(&mut quads) {
        let w = u64::from_le_bytes(w.try_into().unwrap_or([0; 8]));
        if w & 0xff80_ff80_ff80_ff80 == 0 {
            // Every unit is ASCII: set 0x20 in the lanes holding 'A'..='Z'.
            let upper = (w.wrapping_add(0x003f_003f_003f_003f) & !w.wrapping_add(0x0025_0025_0025_0025))
                & 0x0080_0080_0080_0080;
            let lower = (w | (upper >> 2)).to_le_bytes();
            for (u, c) in q.iter_mut().zip(lower.chunks_exact(2)) {
                *u = u16::from_le_bytes([c.first().copied().unwrap_or(0), c.get(1).copied().unwrap_or(0)]);
            }
        } else {
            for (u, c) in q.iter_mut().zip(w.to_le_bytes().chunks_exact(2)) {
                *u = fold_unit(u16::from_le_bytes([c.first().copied().unwrap_or(0), c.get(1).copied().unwrap_or(0)]));
            }
        }
    }
    for (u, c) in quads.into_remainder().iter_mut().zip(words.remainder().chunks_exact(2)) {
        *u = fold_unit(u16::from_le_bytes([c.first().copied().unwrap_or(0), c.get(1).copied().unwrap_or(0)]));
    }
}

/// Most non-`*` units a pattern's wildcard middle (from its first wildcard
/// to its last) may hold for the linear matcher: one bit each in a `u64`.
const MAX_MIDDLE_UNITS: usize = crate::validate::MAX_GLOB_MIDDLE;

/// ASCII units (below them, case folding is ASCII's own).
const ASCII: usize = 128;

/// Units a class map covers: every UTF-16 unit.
const UNITS: usize = 1 << 16;

/// Classes a class map numbers, one byte each; class 0 holds the units no
/// middle sharing the map names.
const CLASSES: usize = 256;

/// A pattern's wildcard middle, compiled for [`GlobIndex::middle_matches`].
///
/// Its non-`*` units are numbered from 0 (at most [`MAX_MIDDLE_UNITS`]);
/// `*` splits them into *segments*. Each unit of an id has a mask: bit `j`
/// set when position `j` accepts it (a `?`, or the same unit after case
/// folding). The mask is two loads whatever the unit: a *class map* (64 KiB,
/// shared by the middles compiled into it) gives the unit's class, one byte,
/// the same for a unit and every unit folding alike; the middle's table
/// gives the class's mask. So matching never folds case, never branches on
/// which unit it reads, and costs the same for ASCII and any other unit.
#[derive(Clone, Copy, Debug, Default)]
struct Middle {
    /// Start of its [`CLASSES`] masks in `GlobIndex::masks`.
    masks: u32,
    /// Start of its class map in `GlobIndex::maps`.
    map: u32,
    /// The mask of a unit the middle does not name (its `?` positions).
    any: u64,
    /// Bit `j` set when position `j` starts a segment.
    starts: u64,
    /// Bit `j` set when position `j` ends a segment.
    ends: u64,
    /// Number of non-`*` units; above [`MAX_MIDDLE_UNITS`] the middle is
    /// matched by [`wild_match_backtracking`] (the validator refuses that),
    /// at 0 it matches anything and has no tables.
    units: u32,
    /// The middle begins (ends) with `*`: its first (last) segment may
    /// start (end) anywhere, not only at the edge.
    lead_star: bool,
    trail_star: bool,
}

/// Units outside ASCII that fold to another unit outside ASCII which does
/// not upper-case back to them (title case, compatibility letters), as
/// `(unit, folded)`. With upper-casing, they give every unit folding to a
/// given one without a pass over all 65,536 units (`fold_preimages_are_complete`
/// checks that against [`fold_unit`]).
const FOLD_EXTRAS: [(u16, u16); 35] = [
    (0x01c5, 0x01c6),
    (0x01c8, 0x01c9),
    (0x01cb, 0x01cc),
    (0x01f2, 0x01f3),
    (0x03f4, 0x03b8),
    (0x1e9e, 0x00df),
    (0x1f88, 0x1f80),
    (0x1f89, 0x1f81),
    (0x1f8a, 0x1f82),
    (0x1f8b, 0x1f83),
    (0x1f8c, 0x1f84),
    (0x1f8d, 0x1f85),
    (0x1f8e, 0x1f86),
    (0x1f8f, 0x1f87),
    (0x1f98, 0x1f90),
    (0x1f99, 0x1f91),
    (0x1f9a, 0x1f92),
    (0x1f9b, 0x1f93),
    (0x1f9c, 0x1f94),
    (0x1f9d, 0x1f95),
    (0x1f9e, 0x1f96),
    (0x1f9f, 0x1f97),
    (0x1fa8, 0x1fa0),
    (0x1fa9, 0x1fa1),
    (0x1faa, 0x1fa2),
    (0x1fab, 0x1fa3),
    (0x1fac, 0x1fa4),
    (0x1fad, 0x1fa5),
    (0x1fae, 0x1fa6),
    (0x1faf, 0x1fa7),
    (0x1fbc, 0x1fb3),
    (0x1fcc, 0x1fc3),
    (0x1ffc, 0x1ff3),
    (0x2126, 0x03c9),
    (0x212b, 0x00e5),
];

/// The units outside ASCII other than `f` that fold to `f`.
pub(super) fn preimages(f: u16) -> impl Iterator<Item = u16> {
    let upper = char::from_u32(u32::from(f)).and_then(|c| {
        let mut up = c.to_uppercase();
        match (up.next(), up.next()) {
            (Some(u), None) => u16::try_from(u32::from(u)).ok(),
            _ => None,
        }
    });
    let upper = upper.filter(|&u| u != f && usize::from(u) >= ASCII && fold_unit(u) == f);
    upper.into_iter().chain(FOLD_EXTRAS.iter().filter(move |&&(_, g)| g == f).map(|&(u, _)| u))
}

/// The units that fold to folded unit `f`, `f` among them: its ASCII upper
/// case, the Kelvin sign for `k`, and [`preimages`] outside ASCII.
fn fold_set(f: u16) -> impl Iterator<Item = u16> {
    let upper = u8::try_from(f).ok().filter(|b| b.is_ascii_lowercase()).map(|b| u16::from(b.to_ascii_uppercase()));
    let kelvin = (f == u16::from(b'k')).then_some(KELVIN);
    core::iter::once(f).chain(upper).chain(kelvin).chain(preimages(f))
}

/// A block of zeros a new class map is filled from ([`UNITS`] is a
/// multiple of its length).
static ZEROS: [u8; 4096] = [0; 4096];

/// Builds the class maps while middles are compiled: each middle goes into
/// the newest map if the units it names that the map lacks still fit in its
/// classes, otherwise into a new map.
struct MapBuilder<'a> {
    maps: &'a mut Vec<u8>,
    /// Start of the newest map in `maps` (None before the first).
    at: Option<usize>,
    /// Classes the newest map has given out (class 0 aside).
    used: usize,
}

impl MapBuilder<'_> {
    /// The class of unit `u` in the newest map (0: not named).
    fn class(&self, u: u16) -> u8 {
        self.at.and_then(|at| self.maps.get(at.saturating_add(usize::from(u)))).copied().unwrap_or(0)
    }

    /// Makes room for the folded units `named` (repeats allowed) in the
    /// newest map, starting a new one when they do not fit, and numbers
    /// those it lacks. Returns where that map starts.
    fn place(&mut self, named: &[u16]) -> Result<usize, OutOfMemory> {
        let fresh = |b: &Self| {
            let mut n = 0usize;
            for (i, &u) in named.iter().enumerate() {
                if b.class(u) == 0 && !named.get(..i).unwrap_or(&[]).contains(&u) {
                    n = n.saturating_add(1);
                }
            }
            n
        };
        let at = match self.at {
            Some(at) if self.used.saturating_add(fresh(self)) < CLASSES => at,
            _ => {
                let at = self.maps.len();
                self.maps.try_reserve_exact(UNITS).map_err(|_| OutOfMemory)?;
                // Copied from zeros rather than written a byte at a time:
                // one copy per block, also under Miri's interpreter.
                while self.maps.len() < at.saturating_add(UNITS) {
                    self.maps.extend_from_slice(&ZEROS);
                }
                (self.at, self.used) = (Some(at), 0);
                at
            }
        };
        for &f in named {
            if self.class(f) != 0 {
                continue;
            }
            self.used = self.used.saturating_add(1);
            let class = u8::try_from(self.used).unwrap_or(0);
            for u in fold_set(f) {
                if let Some(slot) = self.maps.get_mut(at.saturating_add(usize::from(u))) {
                    *slot = class;
                }
            }
        }
        Ok(at)
    }
}

/// Compiles a wildcard middle (folded units), appending its mask table to
/// `masks` and its units to the class maps.
fn compile_middle(middle: &[u16], masks: &mut Vec<u64>, maps: &mut MapBuilder<'_>) -> Result<Middle, OutOfMemory> {
    let mut mid = Middle {
        masks: to_u32(masks.len())?,
        lead_star: middle.first() == Some(&STAR),
        trail_star: middle.last() == Some(&STAR),
        ..Middle::default()
    };
    let units = middle.iter().filter(|&&u| u != STAR).count();
    mid.units = to_u32(units)?;
    if units == 0 || units > MAX_MIDDLE_UNITS {
        return Ok(mid);
    }
    // Positions, segments and the `?` bits; the units to name, folded.
    let mut named = [0u16; MAX_MIDDLE_UNITS];
    let mut count = 0usize;
    let mut j = 0usize;
    let mut star = true;
    for (i, &u) in middle.iter().enumerate() {
        if u == STAR {
            star = true;
            continue;
        }
        let bit = 1u64 << j;
        if star {
            mid.starts |= bit;
        }
        star = false;
        if middle.get(i.saturating_add(1)).is_none_or(|&n| n == STAR) {
            mid.ends |= bit;
        }
        if u == QUESTION {
            mid.any |= bit;
        } else if let Some(slot) = named.get_mut(count) {
            *slot = fold_unit(u);
            count = count.saturating_add(1);
        }
        j = j.saturating_add(1);
    }
    let named = named.get(..count).unwrap_or(&[]);
    let map = maps.place(named)?;
    mid.map = to_u32(map)?;
    masks.try_reserve_exact(CLASSES).map_err(|_| OutOfMemory)?;
    let table = masks.len();
    masks.resize(table.saturating_add(CLASSES), mid.any);
    let mut j = 0usize;
    for &u in middle {
        if u == STAR {
            continue;
        }
        let bit = 1u64 << j;
        j = j.saturating_add(1);
        if u == QUESTION {
            continue;
        }
        let class = usize::from(maps.class(fold_unit(u)));
        if let Some(m) = masks.get_mut(table.saturating_add(class)) {
            *m |= bit;
        }
    }
    Ok(mid)
}

/// The tables of one [`Middle`], borrowed from the index.
#[derive(Clone, Copy)]
struct MiddleTables<'a> {
    /// Its class map: a class for every unit.
    map: &'a [u8; UNITS],
    /// Its masks, by class.
    masks: &'a [u64; CLASSES],
}

impl MiddleTables<'_> {
    /// The mask of unit `u`, folded or not: two loads, no branch (both
    /// indexes are in range by their types).
    #[inline(always)]
    fn mask(&self, u: u16) -> u64 {
        let class = self.map.get(usize::from(u)).copied().unwrap_or(0);
        self.masks.get(usize::from(class)).copied().unwrap_or(0)
    }
}

/// The Kelvin sign, the one non-ASCII unit that folds to ASCII (`k`).
const KELVIN: u16 = 0x212a;

/// Does the segment at positions `[q, e]` accept the units from `at` on?
#[inline(never)]
fn segment_at<S: Units + ?Sized>(t: &MiddleTables<'_>, s: &S, q: u32, e: u32, at: usize) -> bool {
    let len = to_usize(e.saturating_sub(q)).saturating_add(1);
    let Some(lane) = s.lane(at, at.saturating_add(len)) else { return false };
    let mut bit = 1u64.checked_shl(q).unwrap_or(0);
    lane.units().all(|u| {
        let hit = t.mask(u) & bit != 0;
        bit <<= 1;
        hit
    })
}

/// Search chains run side by side (see [`segment_search`]).
const CHAINS: usize = 3;

/// Where the first occurrence of the segment at positions `[q, e]` ends
/// (the index of its last unit), among those ending before `limit` and
/// starting at `from` or later.
///
/// A shift-and search, one bit per position of the segment: the state after
/// a unit depends only on the segment's length of units before it. So a
/// long run is cut into [`CHAINS`] stretches of equal length, each starting
/// at least that many units before the one before it ends (every occurrence
/// then lies whole in one stretch), and the chains of dependent steps run
/// interleaved. The first occurrence in a stretch never comes after the
/// first in a later one, so the lowest stretch with an occurrence answers:
/// once one finds an occurrence, the stretches after it are dropped (they
/// mirror the first, whose hits end the search anyway) and the ones before
/// it go on.
#[inline(always)]
fn segment_search<S: Units + ?Sized>(
    t: &MiddleTables<'_>,
    s: &S,
    q: u32,
    e: u32,
    from: usize,
    limit: usize,
) -> Option<usize> {
    let start = 1u64.checked_shl(q)?;
    let top = 1u64.checked_shl(e)?;
    let len = to_usize(e.saturating_sub(q)).saturating_add(1);
    // `d` never holds a bit below `q`, so `d << 1` never has bit `q`: `+`
    // is `|`, one `lea`.
    let step = |d: u64, u: u16| (d << 1).wrapping_add(start) & t.mask(u);
    let n = limit.saturating_sub(from);
    if n < len.saturating_mul(8).max(64) {
        // A short run: one chain, unit by unit.
        let mut d = 0u64;
        let hit = s.lane(from, limit)?.units().position(|u| {
            d = step(d, u);
            d & top != 0
        });
        return hit.map(|i| from.saturating_add(i));
    }
    // Stretches of `m` units, a multiple of four: CHAINS m >= n + (CHAINS -
    // 1) len keeps consecutive ones overlapping by `len` units or more.
    let m = n.saturating_add(len.saturating_mul(CHAINS - 1)).div_ceil(4 * CHAINS).saturating_mul(4);
    let gap = n.checked_sub(m)?;
    // Stretch `i` starts at `from + gap i / (CHAINS - 1)`; stretches `0..live`
    // search, the others mirror stretch 0.
    let mut live = CHAINS;
    let base =
        |i: usize, live: usize| if i < live { from.saturating_add(gap.saturating_mul(i) / (CHAINS - 1)) } else { from };
    let mut found = None;
    let mut c = Chains { at: [from; CHAINS], left: m, d: [0; CHAINS], start, top };
    loop {
        let done = m.saturating_sub(c.left);
        for (i, a) in c.at.iter_mut().enumerate() {
            *a = base(i, live).saturating_add(done);
        }
        let Some(k) = chains(t, s, &mut c) else { return found };
        // Four units from `at` on hold a hit: the lowest stretch with one
        // ends it, and drops the ones after it. A stretch's state before
        // them is that of its last `len - 1` units read afresh.
        let at = done.saturating_add(k.saturating_mul(4));
        for i in 0..live {
            let b = base(i, live);
            let (x, y) = (b.saturating_add(at.saturating_sub(len)).max(b), b.saturating_add(at));
            let mut state = 0u64;
            let hit = s.lane(x, y.saturating_add(4))?.units().enumerate().position(|(j, u)| {
                state = step(state, u);
                x.saturating_add(j) >= y && state & top != 0
            });
            if let Some(j) = hit {
                found = Some(x.saturating_add(j));
                live = i;
                break;
            }
        }
        if live == 0 {
            return found;
        }
        // The dropped stretches take stretch 0's state.
        let first = c.d.first().copied().unwrap_or(0);
        for d in c.d.iter_mut().skip(live) {
            *d = first;
        }
        c.left = m.saturating_sub(at.saturating_add(4));
        if c.left == 0 {
            return found;
        }
    }
}

/// The search chains of [`segment_search`]: where each reads from, how
/// many units are left to each, their states, and the segment's first and
/// last bits.
struct Chains {
    at: [usize; CHAINS],
    left: usize,
    d: [u64; CHAINS],
    start: u64,
    top: u64,
}

/// Steps every chain over the units left to it, four at a time, until
/// they run out (`None`: no hit, the states are after them) or four units
/// hold a hit for some chain: the index of those four (the states are then
/// after them). A small loop of its own, so that its state stays in
/// registers: per unit, three loads and three operations, and one more to
/// note a hit.
#[inline(never)]
fn chains<S: Units + ?Sized>(t: &MiddleTables<'_>, s: &S, c: &mut Chains) -> Option<usize> {
    let (start, top, len) = (c.start, c.top, c.left);
    let lane = |i: usize| c.at.get(i).and_then(|&a| s.lane(a, a.saturating_add(len)));
    let (l0, l1, l2) = (lane(0)?, lane(1)?, lane(2)?);
    let d = &mut c.d;
    let [mut d0, mut d1, mut d2] = *d;
    let step = |d: u64, u: u16| (d << 1).wrapping_add(start) & t.mask(u);
    let mut hit = None;
    for (k, ((x0, x1), x2)) in l0.quads().zip(l1.quads()).zip(l2.quads()).enumerate() {
        let mut seen = 0u64;
        for j in 0..4 {
            d0 = step(d0, S::Lane::unit(x0, j));
            d1 = step(d1, S::Lane::unit(x1, j));
            d2 = step(d2, S::Lane::unit(x2, j));
            seen |= d0 | d1 | d2;
        }
        if seen & top != 0 {
            hit = Some(k);
            break;
        }
    }
    *d = [d0, d1, d2];
    hit
}

/// The old matcher: iterative, one backtrack point, no allocation, but
/// O(pattern × id) at worst. Only for patterns the validator refuses. Not
/// inlined: its locals stay off the hot matcher's frame.
#[inline(never)]
fn wild_match_backtracking<S: Units + ?Sized>(pattern: &[u16], s: &S, from: usize, to: usize) -> bool {
    let (mut p, mut i) = (0usize, from);
    // Where to resume after the last `*`: (pattern index after it, subject index).
    let mut resume: Option<(usize, usize)> = None;
    loop {
        let pc = pattern.get(p).copied();
        let sc = if i < to { Some(s.at(i)) } else { None };
        match (pc, sc) {
            (Some(STAR), _) => {
                resume = Some((p.saturating_add(1), i));
                p = p.saturating_add(1);
            }
            (Some(c), Some(u)) if c == QUESTION || c == u => {
                p = p.saturating_add(1);
                i = i.saturating_add(1);
            }
            (None, None) => return true,
            _ => match resume {
                // Let the last `*` swallow one more unit and retry.
                Some((rp, ri)) if ri < to => {
                    let next = ri.saturating_add(1);
                    resume = Some((rp, next));
                    p = rp;
                    i = next;
                }
                _ => return false,
            },
        }
    }
}

fn is_wild(u: u16) -> bool {
    u == STAR || u == QUESTION
}

/// A running digest of folded units (FNV-1a over 16-bit units). The
/// length is not part of the value: anchors carry it.
#[derive(Clone, Copy)]
struct Digest {
    h: u64,
}

impl Digest {
    const NEW: Self = Self { h: 0xcbf2_9ce4_8422_2325 };

    #[inline]
    fn push(&mut self, u: u16) {
        self.h = (self.h ^ u64::from(u)).wrapping_mul(0x0000_0100_0000_01b3);
    }

    #[inline]
    fn value(&self) -> u64 {
        self.h
    }
}

fn digest(units: impl Iterator<Item = u16>) -> u64 {
    let mut d = Digest::NEW;
    units.for_each(|u| d.push(u));
    d.value()
}

fn len16(n: usize) -> u16 {
    u16::try_from(n).unwrap_or(u16::MAX)
}

/// Packs up to four units, the first in the high bits.
fn pack(units: impl Iterator<Item = u16>) -> u64 {
    units.fold(0u64, |acc, u| (acc << 16) | u64::from(u))
}

/// The anchors a matching id must contain, for a pattern with a wildcard.
fn anchors(p: &[u16], out: &mut Vec<Anchor>) -> Result<(), OutOfMemory> {
    out.clear();
    let head = p.iter().take_while(|&&u| !is_wild(u)).count();
    let tail = p.iter().rev().take_while(|&&u| !is_wild(u)).count();
    out.try_reserve(2).map_err(|_| OutOfMemory)?;
    if tail > 0 {
        // Back to front, as a lookup digests the id's tails.
        let l = tail.min(MAX_END);
        out.push((SUFFIX, len16(l), digest(p.iter().rev().take(l).copied())));
    }
    if head > 0 {
        let l = head.min(MAX_END);
        out.push((PREFIX, len16(l), digest(p.iter().take(l).copied())));
    }
    // Whole components of at most `MAX_END` units: a wildcard-free run
    // between two backslashes. A component at the very start or end of the
    // pattern counts only if the pattern is anchored there (otherwise it may
    // be part of a longer one).
    let mut start: Option<usize> = if head > 0 && p.first() != Some(&BACKSLASH) { Some(0) } else { None };
    for (i, &u) in p.iter().enumerate() {
        if is_wild(u) {
            start = None;
        } else if u == BACKSLASH {
            if let Some(s) = start
                && i > s
                && i.saturating_sub(s) <= MAX_END
            {
                let c = p.get(s..i).unwrap_or(&[]);
                out.try_reserve(1).map_err(|_| OutOfMemory)?;
                out.push((COMPONENT, len16(c.len()), digest(c.iter().copied())));
            }
            start = Some(i.saturating_add(1));
        }
    }
    if let Some(s) = start
        && tail > 0
        && s < p.len()
        && p.len().saturating_sub(s) <= MAX_END
    {
        let c = p.get(s..).unwrap_or(&[]);
        out.try_reserve(1).map_err(|_| OutOfMemory)?;
        out.push((COMPONENT, len16(c.len()), digest(c.iter().copied())));
    }
    Ok(())
}

/// The bit of the filter an anchor sets.
#[inline]
fn filter_bit(anchor: Anchor, shift: u32) -> usize {
    let (kind, len, d) = anchor;
    let x = (d ^ (u64::from(len) << 40) ^ (u64::from(kind) << 58)).wrapping_mul(0x9e37_79b9_7f4a_7c15);
    usize::try_from(x.checked_shr(64u32.saturating_sub(shift)).unwrap_or(0)).unwrap_or(0)
}

/// A middle without tables (only stars).
const NO_TABLES: Middle =
    Middle { masks: 0, map: 0, any: 0, starts: 0, ends: 0, units: 0, lead_star: false, trail_star: false };

/// What [`GlobIndex::literal_parts`] leaves to match.
enum Literal {
    /// A literal part differs.
    Differs,
    /// A pattern without wildcard, equal to the whole id.
    Whole,
    /// The literal parts match; the wildcard middle must accept the units
    /// between them ([`GlobIndex::middle_matches`]).
    Middle,
    /// The same, for a middle the linear matcher does not take.
    Wild,
}

impl GlobIndex {
    /// Indexes `patterns` (folded units, distinct). Every pattern can be
    /// checked with [`Self::key_matches`]; only those `indexed` says yes to
    /// are filed for [`Self::for_each_match`] (the others are never probed).
    pub(super) fn build<'p>(
        patterns: impl ExactSizeIterator<Item = &'p [u16]> + Clone,
        indexed: impl Fn(u32) -> bool,
        hasher: RandomState,
    ) -> Result<Self, OutOfMemory> {
        let mut ix = Self {
            hasher,
            units: Vec::new(),
            keys: Vec::new(),
            middles: Vec::new(),
            masks: Vec::new(),
            maps: Vec::new(),
            anchors: HashTable::new(),
            anchor_keys: Vec::new(),
            filter: Vec::new(),
            filter_shift: 0,
            suffix_lens: 0,
            prefix_lens: 0,
            component_lens: 0,
            component_buckets: 0,
            exact: false,
            longest_exact: 0,
            always: Vec::new(),
        };
        let total: usize = patterns.clone().map(<[u16]>::len).fold(0, usize::saturating_add);
        ix.units.try_reserve_exact(total).map_err(|_| OutOfMemory)?;
        ix.keys.try_reserve_exact(patterns.len()).map_err(|_| OutOfMemory)?;
        // Every candidate anchor of every filed pattern, to count how common each is.
        let mut candidates: Vec<Anchor> = Vec::new();
        let mut scratch: Vec<Anchor> = Vec::new();
        for (p, key) in patterns.clone().zip(0u32..) {
            if !indexed(key) || !p.iter().any(|&u| is_wild(u)) {
                continue;
            }
            anchors(p, &mut scratch)?;
            candidates.try_reserve(scratch.len()).map_err(|_| OutOfMemory)?;
            candidates.extend_from_slice(&scratch);
        }
        candidates.sort_unstable();
        let count = |a: &Anchor| {
            let lo = candidates.partition_point(|c| c < a);
            candidates.get(lo..).map_or(0, |r| r.iter().take_while(|c| *c == a).count())
        };
        let mut anchored: Vec<(Anchor, u32)> = Vec::new();
        // Distinct component anchors chosen so far (at most MAX_COMPONENT_BUCKETS).
        let mut components: Vec<Anchor> = Vec::new();
        let mut maps = Vec::new();
        let mut map_builder = MapBuilder { maps: &mut maps, at: None, used: 0 };
        for (p, key) in patterns.zip(0u32..) {
            let head = p.iter().take_while(|&&u| !is_wild(u)).count();
            let tail = if head == p.len() { head } else { p.iter().rev().take_while(|&&u| !is_wild(u)).count() };
            let inner_head = p.get(head.saturating_sub(PRINT_UNITS)..head).unwrap_or(&[]);
            let inner_tail = p.get(p.len().saturating_sub(tail)..).unwrap_or(&[]);
            let mut middle = NO_MIDDLE;
            if head < p.len() {
                let units = p.get(head..p.len().saturating_sub(tail)).unwrap_or(&[]);
                let m = compile_middle(units, &mut ix.masks, &mut map_builder)?;
                middle = to_u32(ix.middles.len())?;
                ix.middles.try_reserve(1).map_err(|_| OutOfMemory)?;
                ix.middles.push(m);
            }
            ix.keys.push(Key {
                start: to_u32(ix.units.len())?,
                len: to_u32(p.len())?,
                head: to_u32(head)?,
                tail: to_u32(tail)?,
                head_print: pack(inner_head.iter().copied()),
                tail_print: pack(inner_tail.iter().take(PRINT_UNITS).copied()),
                middle,
            });
            ix.units.extend_from_slice(p);
            if !indexed(key) {
                continue;
            }
            let best = if head == p.len() {
                Some((EXACT, len16(p.len()), digest(p.iter().copied())))
            } else {
                anchors(p, &mut scratch)?;
                // The rarest anchor; among equals, the longest. A new
                // component anchor only while there is room for one more.
                let room = components.len() < MAX_COMPONENT_BUCKETS;
                scratch
                    .iter()
                    .filter(|a| a.0 != COMPONENT || room || components.contains(a))
                    .min_by_key(|a| (count(a), u16::MAX.saturating_sub(a.1)))
                    .copied()
            };
            if let Some(a) = best
                && a.0 == COMPONENT
                && !components.contains(&a)
            {
                components.try_reserve(1).map_err(|_| OutOfMemory)?;
                components.push(a);
            }
            let Some(best) = best else {
                ix.always.try_reserve(1).map_err(|_| OutOfMemory)?;
                ix.always.push(key);
                continue;
            };
            let bit = 1u64 << best.1.min(63);
            match best.0 {
                SUFFIX => ix.suffix_lens |= bit,
                PREFIX => ix.prefix_lens |= bit,
                COMPONENT => ix.component_lens |= bit,
                _ => {
                    ix.exact = true;
                    ix.longest_exact = ix.longest_exact.max(p.len());
                }
            }
            anchored.try_reserve(1).map_err(|_| OutOfMemory)?;
            anchored.push((best, key));
        }

        ix.maps = maps;
        anchored.sort_unstable();
        ix.anchor_keys.try_reserve_exact(anchored.len()).map_err(|_| OutOfMemory)?;
        // About 16 filter bits per distinct anchor, 64 at least.
        let distinct = anchored.len().saturating_mul(16).max(64);
        ix.filter_shift = usize::BITS.saturating_sub(distinct.leading_zeros()).min(24);
        let words = (1usize << ix.filter_shift) / 64;
        ix.filter.try_reserve_exact(words).map_err(|_| OutOfMemory)?;
        ix.filter.resize(words, 0);
        let hasher = ix.hasher.clone();
        let bucket_hash = |b: &Bucket| hasher.hash_one(b.anchor);
        let mut rest = anchored.as_slice();
        let mut ordinal = 0u16;
        while let Some(&(anchor, _)) = rest.first() {
            let run = rest.iter().take_while(|&&(a, _)| a == anchor).count();
            let (group, tail) = rest.split_at(run);
            let bucket = Bucket { anchor, ordinal, start: to_u32(ix.anchor_keys.len())?, len: to_u32(run)? };
            if anchor.0 == COMPONENT {
                ordinal = ordinal.saturating_add(1);
                ix.component_buckets = ordinal;
            }
            ix.anchor_keys.extend(group.iter().map(|&(_, k)| k));
            ix.anchors.try_reserve(1, bucket_hash).map_err(|_| OutOfMemory)?;
            ix.anchors.insert_unique(bucket_hash(&bucket), bucket, bucket_hash);
            let bit = filter_bit(anchor, ix.filter_shift);
            if let Some(w) = ix.filter.get_mut(bit / 64) {
                *w |= 1 << (bit % 64);
            }
            rest = tail;
        }
        Ok(ix)
    }

    fn key(&self, key: u32) -> Key {
        self.keys.get(to_usize(key)).copied().unwrap_or_default()
    }

    fn pattern(&self, k: &Key) -> &[u16] {
        let s = to_usize(k.start);
        self.units.get(s..s.saturating_add(to_usize(k.len))).unwrap_or(&[])
    }

    /// Does pattern `key`'s wildcard middle accept the id's units between
    /// its literal head and tail? Its segments are found one after the
    /// other, each where it first occurs after the one before (`*` between
    /// them takes whatever lies between, so the earliest occurrence leaves
    /// the most room to the rest): one pass over the units.
    /// A first segment without a `*` before it must start at the head's
    /// end, a last one without a `*` after it must end at the tail.
    #[inline(never)]
    fn middle_matches<S: Units + ?Sized>(&self, key: u32, s: &S) -> bool {
        let (_, mid, from, to) = self.middle_of(key, s);
        let m = mid.units;
        if to_usize(m) > MAX_MIDDLE_UNITS {
            return false;
        }
        if m == 0 {
            // Only stars: any run.
            return true;
        }
        let Some(t) = self.tables(mid) else { return false };
        let mut pos = from;
        let mut starts = mid.starts;
        let mut first = true;
        while starts != 0 {
            let q = starts.trailing_zeros();
            starts &= starts.wrapping_sub(1);
            // The segment's last position: the first end at or after `q`.
            let e = (mid.ends >> q << q).trailing_zeros();
            let len = to_usize(e.saturating_sub(q)).saturating_add(1);
            let last = starts == 0;
            // Units the later segments need at least.
            let rest = to_usize(m.saturating_sub(e).saturating_sub(1));
            let left = first && !mid.lead_star;
            let right = last && !mid.trail_star;
            first = false;
            if right {
                // Pinned to the end (and, with no star at all, to `pos` too).
                let Some(at) = to.checked_sub(len) else { return false };
                return at >= pos && (!left || at == pos) && segment_at(&t, s, q, e, at);
            }
            let limit = to.saturating_sub(rest);
            if pos.saturating_add(len) > limit {
                return false;
            }
            if left {
                if !segment_at(&t, s, q, e, pos) {
                    return false;
                }
                pos = pos.saturating_add(len);
                continue;
            }
            match segment_search(&t, s, q, e, pos, limit) {
                Some(end) => pos = end.saturating_add(1),
                None => return false,
            }
        }
        true
    }

    /// Calls `f` with each filed key whose pattern matches the id, each at
    /// most once, in no particular order, until `f` returns false. Returns
    /// false when stopped early.
    pub(super) fn for_each_match<S: Units + ?Sized>(&self, id: &S, mut f: impl FnMut(u32) -> bool) -> bool {
        let mut matches = self.matches(id);
        while let Some(k) = matches.next_key() {
            if !f(k) {
                return false;
            }
        }
        true
    }

    /// The filed keys whose patterns match the id, each at most once, in
    /// the order [`Self::for_each_match`] visits them. A cursor rather than
    /// a callback: the caller's work on a key runs beside the index's walk,
    /// not under it, which keeps the kernel's classify path shallow.
    pub(super) fn matches<'i, 's, S: Units + ?Sized>(&'i self, id: &'s S) -> Matches<'i, 's, S> {
        let n = id.count();
        // The whole id (only when a literal pattern is that long) and its heads.
        let whole = self.exact && n <= self.longest_exact;
        let heads = to_usize(64u32.saturating_sub(self.prefix_lens.leading_zeros())).saturating_sub(1);
        let reach = if whole { n } else { heads.min(n) };
        Matches {
            ix: self,
            id,
            n,
            reach,
            whole,
            phase: Phase::Heads,
            at: 0,
            digest: Digest::NEW,
            suffixes: 0,
            tried: Tried::default(),
            keys: &[],
        }
    }

    /// The keys filed under `anchor` (none when no bucket has it). With
    /// `seen`, a bucket already tried in this lookup gives none.
    fn bucket(&self, anchor: Anchor, seen: Option<&mut Tried>) -> &[u32] {
        let bit = filter_bit(anchor, self.filter_shift);
        if self.filter.get(bit / 64).is_none_or(|w| w & (1 << (bit % 64)) == 0) {
            return &[];
        }
        let Some(b) = self.anchors.find(self.hasher.hash_one(anchor), |b| b.anchor == anchor) else {
            return &[];
        };
        if let Some(seen) = seen {
            let o = usize::from(b.ordinal);
            let Some(word) = seen.bits.get_mut(o / 64) else { return &[] };
            if *word & (1 << (o % 64)) != 0 {
                return &[];
            }
            *word |= 1 << (o % 64);
            seen.count = seen.count.saturating_add(1);
        }
        let s = to_usize(b.start);
        self.anchor_keys.get(s..s.saturating_add(to_usize(b.len))).unwrap_or(&[])
    }

    /// Does any filed pattern match? Not inlined: the driver's stack check
    /// finds the rule matcher's entry by this name.
    #[inline(never)]
    pub(super) fn any_match(&self, app: &AppId<'_>) -> bool {
        !self.for_each_match(app, |_| false)
    }

    /// Does pattern `key` match? The units next to the wildcards are compared
    /// first (paths sharing a directory differ there), then the whole
    /// literal head and tail; the wildcard matcher only runs on the middle.
    /// The literal checks run in a frame of their own, beside the middle's
    /// rather than above it, which keeps the kernel's classify path shallow.
    pub(super) fn key_matches<S: Units + ?Sized>(&self, key: u32, id: &S) -> bool {
        match self.literal_parts(key, id) {
            Literal::Differs => false,
            Literal::Whole => true,
            Literal::Middle => self.middle_matches(key, id),
            Literal::Wild => self.wild_middle_matches(key, id),
        }
    }

    /// Middle `mid`'s class map and masks (`None` only for a middle without
    /// tables).
    #[inline(always)]
    fn tables(&self, mid: &Middle) -> Option<MiddleTables<'_>> {
        let table = |start: u32, len: usize| to_usize(start)..to_usize(start).saturating_add(len);
        let masks = self.masks.get(table(mid.masks, CLASSES)).and_then(|m| <&[u64; CLASSES]>::try_from(m).ok())?;
        let map = self.maps.get(table(mid.map, UNITS)).and_then(|m| <&[u8; UNITS]>::try_from(m).ok())?;
        Some(MiddleTables { map, masks })
    }

    /// Pattern `key`'s wildcard middle and the id's units it must accept.
    fn middle_of<S: Units + ?Sized>(&self, key: u32, id: &S) -> (&[u16], &Middle, usize, usize) {
        let k = self.key(key);
        let (head, tail, len) = (to_usize(k.head), to_usize(k.tail), to_usize(k.len));
        let units = self.pattern(&k).get(head..len.saturating_sub(tail)).unwrap_or(&[]);
        let mid = self.middles.get(to_usize(k.middle)).unwrap_or(&NO_TABLES);
        (units, mid, head, id.count().saturating_sub(tail))
    }

    /// [`Self::key_matches`] for a middle above the linear matcher's limits
    /// (the validator refuses those; unchecked rule sets may hold them).
    #[inline(never)]
    fn wild_middle_matches<S: Units + ?Sized>(&self, key: u32, id: &S) -> bool {
        let (units, _, from, to) = self.middle_of(key, id);
        wild_match_backtracking(units, id, from, to)
    }

    /// Pattern `key`'s literal parts against the id: what is left to match.
    #[inline(never)]
    fn literal_parts<S: Units + ?Sized>(&self, key: u32, id: &S) -> Literal {
        let k = self.key(key);
        let (head, tail, len) = (to_usize(k.head), to_usize(k.tail), to_usize(k.len));
        let p = self.pattern(&k);
        let n = id.count();
        if head == len {
            // No wildcard: plain case-insensitive equality.
            return if n == len && id.same(0, p, true) { Literal::Whole } else { Literal::Differs };
        }
        if head.saturating_add(tail) > n {
            return Literal::Differs;
        }
        let tail_at = n.saturating_sub(tail);
        let inner_head = head.min(PRINT_UNITS);
        let inner_tail = tail.min(PRINT_UNITS);
        let at = |from: usize, count: usize| pack((from..from.saturating_add(count)).map(|i| id.at(i)));
        if at(head.saturating_sub(inner_head), inner_head) != k.head_print || at(tail_at, inner_tail) != k.tail_print {
            return Literal::Differs;
        }
        let head_units = p.get(..head).unwrap_or(&[]);
        let tail_units = p.get(len.saturating_sub(tail)..).unwrap_or(&[]);
        if !id.same(tail_at, tail_units, false) || !id.same(0, head_units, true) {
            return Literal::Differs;
        }
        match self.middles.get(to_usize(k.middle)) {
            Some(mid) if to_usize(mid.units) > MAX_MIDDLE_UNITS => Literal::Wild,
            Some(_) => Literal::Middle,
            None => Literal::Differs,
        }
    }

    /// Where [`segment_search`] finds the first segment of pattern `key`'s
    /// middle in the id's units `[from, limit)` (the end of its first
    /// occurrence), for the tests.
    #[cfg(test)]
    pub(super) fn first_segment_end<S: Units + ?Sized>(
        &self,
        key: u32,
        id: &S,
        from: usize,
        limit: usize,
    ) -> Option<usize> {
        let mid = self.middles.get(to_usize(self.key(key).middle))?;
        let t = self.tables(mid)?;
        let q = mid.starts.trailing_zeros();
        let e = (mid.ends >> q << q).trailing_zeros();
        segment_search(&t, id, q, e, from, limit)
    }

    /// The class maps, for the tests.
    #[cfg(test)]
    pub(super) fn class_maps(&self) -> impl Iterator<Item = &[u8]> {
        self.maps.chunks_exact(UNITS)
    }

    /// Bytes held.
    pub(super) fn bytes(&self) -> usize {
        [
            self.units.capacity().saturating_mul(2),
            self.keys.capacity().saturating_mul(size_of::<Key>()),
            self.middles.capacity().saturating_mul(size_of::<Middle>()),
            self.masks.capacity().saturating_mul(8),
            self.maps.capacity(),
            self.anchors.capacity().saturating_mul(size_of::<Bucket>().saturating_add(1)),
            self.anchor_keys.capacity().saturating_mul(4),
            self.filter.capacity().saturating_mul(8),
            self.always.capacity().saturating_mul(4),
        ]
        .into_iter()
        .fold(0, usize::saturating_add)
    }
}

/// `n` as a shift below 64 (64 and more all map to 64, past every bit).
fn len_u32(n: usize) -> u32 {
    u32::try_from(n.min(64)).unwrap_or(64)
}

/// How many app ids in 2^40 a pattern is expected to admit, for choosing
/// which condition of a rule to index: an exact path admits about one id, a
/// pattern with an anchor of three units or more (a literal head, tail or
/// whole component) a few, and a pattern without one (`*`, `*foo*`)
/// anything. Only speed depends on this guess, never an answer.
pub(super) fn admits(p: &[u16]) -> u64 {
    let mut scratch = Vec::new();
    if !p.iter().any(|&u| is_wild(u)) {
        1 << 24
    } else if anchors(p, &mut scratch).is_ok() && scratch.iter().any(|a| a.1 >= 3) {
        1 << 30
    } else {
        1 << 40
    }
}

/// Sorts `(pattern, owner)` pairs and returns the distinct patterns, in
/// sorted order: a pattern's key id is its position there.
pub(super) fn dedup_patterns<'p>(pairs: &mut Vec<(&'p [u16], u32)>) -> Result<Vec<&'p [u16]>, OutOfMemory> {
    pairs.sort_unstable();
    let mut distinct: Vec<&[u16]> = Vec::new();
    for &(p, _) in pairs.iter() {
        if distinct.last() != Some(&p) {
            distinct.try_reserve(1).map_err(|_| OutOfMemory)?;
            distinct.push(p);
        }
    }
    Ok(distinct)
}

/// Where a [`Matches`] walk is.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// The id's heads (`at`: units digested), then the whole id.
    Heads,
    /// Its components (`at`: where the next one starts).
    Components,
    /// Back to front, its tails (`at`: units digested).
    Tails,
    /// The patterns without an anchor.
    Always,
    /// Nothing left.
    Done,
}

/// A walk over the filed keys matching an id: see [`GlobIndex::matches`].
pub(super) struct Matches<'i, 's, S: Units + ?Sized> {
    ix: &'i GlobIndex,
    id: &'s S,
    n: usize,
    /// Heads digested before the whole id.
    reach: usize,
    whole: bool,
    phase: Phase,
    at: usize,
    digest: Digest,
    suffixes: u64,
    tried: Tried,
    /// The current bucket's keys not yet checked.
    keys: &'i [u32],
}

impl<'i, S: Units + ?Sized> Matches<'i, '_, S> {
    /// The next matching key, or `None` when there is none left.
    pub(super) fn next_key(&mut self) -> Option<u32> {
        loop {
            while let Some((&k, rest)) = self.keys.split_first() {
                self.keys = rest;
                if self.ix.key_matches(k, self.id) {
                    return Some(k);
                }
            }
            self.keys = self.next_bucket()?;
        }
    }

    /// Steps the walk to its next probed bucket: its keys (perhaps none),
    /// or `None` when the walk is over.
    #[inline(never)]
    fn next_bucket(&mut self) -> Option<&'i [u32]> {
        let ix = self.ix;
        let (id, n) = (self.id, self.n);
        match self.phase {
            Phase::Heads => {
                while self.at < self.reach {
                    self.digest.push(id.at(self.at));
                    self.at = self.at.saturating_add(1);
                    let l = self.at;
                    if ix.prefix_lens & 1u64.checked_shl(len_u32(l)).unwrap_or(0) != 0 {
                        return Some(ix.bucket((PREFIX, len16(l), self.digest.value()), None));
                    }
                }
                self.phase = Phase::Components;
                self.at = 0;
                if self.whole {
                    return Some(ix.bucket((EXACT, len16(n), self.digest.value()), None));
                }
                Some(&[])
            }
            Phase::Components => {
                if ix.component_lens == 0 || self.tried.count >= ix.component_buckets {
                    self.start_tails();
                    return Some(&[]);
                }
                let start = self.at;
                let end = id
                    .lane(start, n)
                    .and_then(|l| l.units().position(|u| u == BACKSLASH))
                    .map_or(n, |i| start.saturating_add(i));
                if end >= n {
                    self.start_tails();
                } else {
                    self.at = end.saturating_add(1);
                }
                let len = end.saturating_sub(start);
                if len > 0 && ix.component_lens & 1u64.checked_shl(len_u32(len)).unwrap_or(0) != 0 {
                    let d = digest((start..end).map(|i| id.at(i)));
                    return Some(ix.bucket((COMPONENT, len16(len), d), Some(&mut self.tried)));
                }
                Some(&[])
            }
            Phase::Tails => {
                while self.suffixes != 0 && self.at < n {
                    self.at = self.at.saturating_add(1);
                    let l = self.at;
                    self.digest.push(id.at(n.saturating_sub(l)));
                    if self.suffixes.trailing_zeros() == len_u32(l) {
                        self.suffixes &= self.suffixes.wrapping_sub(1);
                        return Some(ix.bucket((SUFFIX, len16(l), self.digest.value()), None));
                    }
                }
                self.phase = Phase::Always;
                Some(&[])
            }
            Phase::Always => {
                self.phase = Phase::Done;
                Some(&ix.always)
            }
            Phase::Done => None,
        }
    }

    fn start_tails(&mut self) {
        self.phase = Phase::Tails;
        self.at = 0;
        self.digest = Digest::NEW;
        self.suffixes = self.ix.suffix_lens & !1;
    }
}
