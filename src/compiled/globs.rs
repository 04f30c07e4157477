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
//! the id read once, at most two in flight). Patterns with no anchor (`*`,
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
    eq: Vec<(u16, u64)>,
    pages: Vec<[u8; PAGE]>,
    classes: Vec<[u64; PAGE]>,
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
    /// The units, in order.
    fn units(self) -> impl ExactSizeIterator<Item = u16>;
    /// The units four at a time, the first in the low bits (the last
    /// `len % 4` units are left out).
    fn words(self) -> impl Iterator<Item = u64>;
    /// The units four at a time (the last `len % 4` units are left out).
    fn quads(self) -> impl Iterator<Item = [u16; 4]>;
}

impl Lane for &[u16] {
    #[inline(always)]
    fn units(self) -> impl ExactSizeIterator<Item = u16> {
        self.iter().copied()
    }
    #[inline(always)]
    fn words(self) -> impl Iterator<Item = u64> {
        self.quads().map(word)
    }
    #[inline(always)]
    fn quads(self) -> impl Iterator<Item = [u16; 4]> {
        self.chunks_exact(4).map(|c| c.try_into().unwrap_or([0; 4]))
    }
}

/// Units as UTF-16LE bytes (an [`AppId`]'s).
#[derive(Clone, Copy)]
pub(super) struct Bytes<'a>(&'a [u8]);

impl Lane for Bytes<'_> {
    #[inline(always)]
    fn units(self) -> impl ExactSizeIterator<Item = u16> {
        self.0.chunks_exact(2).map(|c| match c {
            &[a, b] => u16::from_le_bytes([a, b]),
            _ => 0,
        })
    }
    #[inline(always)]
    fn words(self) -> impl Iterator<Item = u64> {
        self.0.chunks_exact(8).map(|c| u64::from_le_bytes(c.try_into().unwrap_or([0; 8])))
    }
    #[inline(always)]
    fn quads(self) -> impl Iterator<Item = [u16; 4]> {
        self.0.chunks_exact(8).map(|c| match c {
            &[a, b, c, d, e, f, g, h] => [
                u16::from_le_bytes([a, b]),
                u16::from_le_bytes([c, d]),
                u16::from_le_bytes([e, f]),
                u16::from_le_bytes([g, h]),
            ],
            _ => [0; 4],
        })
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

/// ASCII units: entries `0..ASCII` of a middle's mask table.
const ASCII: usize = 128;
/// Entries of a middle's mask table: one per ASCII unit, then [`OTHER`].
const TABLE: usize = ASCII + 1;
/// The table entry of a unit outside ASCII (and not the Kelvin sign) that
/// the middle does not name: only its `?` accept it.
const OTHER: usize = ASCII;

/// A pattern's wildcard middle, compiled for [`GlobIndex::middle_matches`].
///
/// Its non-`*` units are numbered from 0 (at most [`MAX_MIDDLE_UNITS`]);
/// `*` splits them into *segments*. Each unit of an id has a mask: bit `j`
/// set when position `j` accepts it (a `?`, or the same unit after case
/// folding). An ASCII unit's mask is one load from the middle's table
/// (upper and lower case alike); so is any other unit when the middle is
/// all ASCII (entry [`OTHER`]). A middle with non-ASCII units lists them in
/// `eq` with every unit that folds to one of them ([`preimages`]), and its
/// page tables ([`compile_pages`]) find a unit's entry in three loads: no
/// case folding while matching.
#[derive(Clone, Copy, Debug, Default)]
struct Middle {
    /// Start of its [`TABLE`] masks in `GlobIndex::masks`.
    masks: u32,
    /// Its non-ASCII units with their masks, in `GlobIndex::eq`.
    eq_start: u32,
    eq_len: u32,
    /// Where its page tables start in `GlobIndex::pages` ([`NO_PAGES`]: the
    /// middle is all ASCII), and its masks by class in `GlobIndex::classes`.
    pages: u32,
    classes: u32,
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

/// [`Middle::pages`] of a middle without page tables.
const NO_PAGES: u32 = u32::MAX;

/// Entries of a page table: one per unit with the same high byte.
const PAGE: usize = 256;

/// The tables of a middle without pages (never read: it is all ASCII).
static NO_DIR: [u8; PAGE] = [1; PAGE];
static NO_CLASSES: [u64; PAGE] = [0; PAGE];

/// Appends the page tables of a middle's non-ASCII units (`eq`, sorted) to
/// `pages`: a directory with one byte per high byte of a unit (the page
/// holding its units), an empty page, then one page per high byte in use,
/// with one byte per unit, its class: 0 for a unit the middle does not
/// name, `i + 1` for `eq[i]`; and the masks by class to `classes`. Reading
/// a unit's mask is then three loads. `None` when there are too many pages
/// or units for a byte. Returns where both start.
fn compile_pages(
    eq: &[(u16, u64)],
    any: u64,
    pages: &mut Vec<[u8; PAGE]>,
    classes: &mut Vec<[u64; PAGE]>,
) -> Result<Option<(u32, u32)>, OutOfMemory> {
    let his = |u: u16| usize::from(u >> 8);
    let mut used = [0u64; 4];
    for &(u, _) in eq {
        if let Some(w) = used.get_mut(his(u) / 64) {
            *w |= 1 << (his(u) % 64);
        }
    }
    let count: usize = used.iter().map(|w| to_usize(w.count_ones())).sum();
    if count >= usize::from(u8::MAX) || eq.len() >= PAGE {
        return Ok(None);
    }
    let at = pages.len();
    pages.try_reserve(count.saturating_add(2)).map_err(|_| OutOfMemory)?;
    // Every high byte reads the empty page (1) unless it has its own.
    pages.push([1; PAGE]);
    pages.push([0; PAGE]);
    let mut masks = [any; PAGE];
    for (i, &(u, m)) in eq.iter().enumerate() {
        let class = i.saturating_add(1);
        if let Some(slot) = masks.get_mut(class) {
            *slot = m;
        }
        let page = match pages.get(at).and_then(|dir| dir.get(his(u))) {
            Some(&1) | None => {
                let page = pages.len().saturating_sub(at);
                if let Some(slot) = pages.get_mut(at).and_then(|dir| dir.get_mut(his(u))) {
                    *slot = u8::try_from(page).unwrap_or(1);
                }
                pages.push([0; PAGE]);
                page
            }
            Some(&p) => usize::from(p),
        };
        if let Some(c) = pages.get_mut(at.saturating_add(page)).and_then(|p| p.get_mut(usize::from(u & 0xff))) {
            *c = u8::try_from(class).unwrap_or(0);
        }
    }
    classes.try_reserve(1).map_err(|_| OutOfMemory)?;
    classes.push(masks);
    Ok(Some((to_u32(at)?, to_u32(classes.len().saturating_sub(1))?)))
}

/// Compiles a wildcard middle, appending its tables to the index's.
fn compile_middle(
    middle: &[u16],
    masks: &mut Vec<u64>,
    eq: &mut Vec<(u16, u64)>,
    pages: &mut Vec<[u8; PAGE]>,
    classes: &mut Vec<[u64; PAGE]>,
) -> Result<Middle, OutOfMemory> {
    let mut mid = Middle {
        pages: NO_PAGES,
        masks: to_u32(masks.len())?,
        eq_start: to_u32(eq.len())?,
        lead_star: middle.first() == Some(&STAR),
        trail_star: middle.last() == Some(&STAR),
        ..Middle::default()
    };
    let units = middle.iter().filter(|&&u| u != STAR).count();
    mid.units = to_u32(units)?;
    if units == 0 || units > MAX_MIDDLE_UNITS {
        return Ok(mid);
    }
    // Positions, segments and the `?` bits.
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
        }
        j = j.saturating_add(1);
    }
    masks.try_reserve(TABLE).map_err(|_| OutOfMemory)?;
    let table = masks.len();
    masks.resize(table.saturating_add(TABLE), mid.any);
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
        if let Ok(b) = u8::try_from(u)
            && usize::from(b) < ASCII
        {
            // The pattern is folded (lower case): its upper case reads alike.
            for v in [b, b.to_ascii_uppercase()] {
                if let Some(m) = masks.get_mut(table.saturating_add(usize::from(v))) {
                    *m |= bit;
                }
            }
        } else {
            // The unit and every unit that folds to it.
            for v in core::iter::once(u).chain(preimages(u)) {
                if let Some(w) = eq.get_mut(to_usize(mid.eq_start)..).and_then(|t| t.iter_mut().find(|w| w.0 == v)) {
                    w.1 |= bit;
                } else {
                    eq.try_reserve(1).map_err(|_| OutOfMemory)?;
                    eq.push((v, mid.any | bit));
                }
            }
        }
    }
    if eq.len() > to_usize(mid.eq_start) {
        // The Kelvin sign reads as `k` (it is the one unit outside ASCII
        // folding into it), through the pages like the other units.
        let k = masks.get(table.saturating_add(usize::from(b'k'))).copied().unwrap_or(mid.any);
        if k != mid.any {
            eq.try_reserve(1).map_err(|_| OutOfMemory)?;
            eq.push((KELVIN, k));
        }
    }
    let own = eq.get_mut(to_usize(mid.eq_start)..).unwrap_or(&mut []);
    own.sort_unstable_by_key(|w| w.0);
    mid.eq_len = to_u32(own.len())?;
    if !own.is_empty() {
        match compile_pages(own, mid.any, pages, classes)? {
            Some((at, c)) => (mid.pages, mid.classes) = (at, c),
            // More pages than a byte numbers: cannot happen within
            // MAX_MIDDLE_UNITS units (each has at most a few preimages),
            // but if it did, the backtracking matcher would answer.
            None => mid.units = to_u32(MAX_MIDDLE_UNITS.saturating_add(1))?,
        }
    }
    Ok(mid)
}

/// The tables of one [`Middle`], borrowed from the index.
#[derive(Clone, Copy)]
struct MiddleTables<'a> {
    ascii: &'a [u64; TABLE],
    /// The page tables of [`compile_pages`]: the directory, the pages it
    /// numbers (empty for a middle without), the masks by class.
    dir: &'a [u8; PAGE],
    pages: &'a [[u8; PAGE]],
    classes: &'a [u64; PAGE],
    any: u64,
}

impl MiddleTables<'_> {
    /// The mask of unit `u`, folded or not. `WIDE`: the middle has
    /// non-ASCII units (otherwise the lookup needs no call, which keeps a
    /// search loop's state in registers).
    #[inline(always)]
    fn mask<const WIDE: bool>(&self, u: u16) -> u64 {
        match self.ascii.get(usize::from(u)) {
            Some(&m) if usize::from(u) < ASCII => m,
            _ if WIDE => self.wide_mask(u),
            // Only the Kelvin sign folds to ASCII (`k`); other units can
            // only equal the middle's non-ASCII units.
            _ => self.narrow_mask(u),
        }
    }

    /// The mask of a non-ASCII unit, for a middle that has some: `eq`
    /// lists them and every unit folding to one, the pages find the entry.
    #[inline(always)]
    fn wide_mask(&self, u: u16) -> u64 {
        let page = self.dir.get(usize::from(u >> 8)).copied().unwrap_or(1);
        let class = self.pages.get(usize::from(page)).map_or(0, |p| p.get(usize::from(u & 0xff)).copied().unwrap_or(0));
        self.classes.get(usize::from(class)).copied().unwrap_or(self.any)
    }

    /// The mask of unit `u` for a middle without non-ASCII units: one load.
    #[inline(always)]
    fn narrow_mask(&self, u: u16) -> u64 {
        let i = if u == KELVIN { usize::from(b'k') } else { usize::from(u).min(OTHER) };
        self.ascii.get(i).copied().unwrap_or(0)
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
        let m = if t.pages.is_empty() { t.mask::<false>(u) } else { t.mask::<true>(u) };
        let hit = m & bit != 0;
        bit <<= 1;
        hit
    })
}

/// Where the first occurrence of the segment at positions `[q, e]` ends
/// (the index of its last unit), among those ending before `limit` and
/// starting at `from` or later.
///
/// A shift-and search, one bit per position of the segment: the state after
/// a unit depends only on the segment's length of units before it. So a
/// long run is searched as two halves at once, the second starting that
/// many units early, and the two chains of dependent steps interleave.
fn segment_search<S: Units + ?Sized>(
    t: &MiddleTables<'_>,
    s: &S,
    q: u32,
    e: u32,
    from: usize,
    limit: usize,
) -> Option<usize> {
    if t.pages.is_empty() {
        search::<S, false>(t, s, q, e, from, limit)
    } else {
        search::<S, true>(t, s, q, e, from, limit)
    }
}

/// Units of a word (four UTF-16 units, the first in the low bits) that are
/// not ASCII.
const NON_ASCII: u64 = 0xff80_ff80_ff80_ff80;

/// Unit `j` (0..4) of a word.
#[inline(always)]
fn unit_of(x: u64, j: u32) -> u16 {
    u16::try_from(x.checked_shr(j.wrapping_mul(16)).unwrap_or(0) & 0xffff).unwrap_or(0)
}

/// Four shift-and steps over the ASCII units of word `x` from state `d`:
/// the state after them, and every state's bits or-ed (a hit shows as the
/// segment's last bit). One load per unit, no branch.
#[inline(always)]
fn four_ascii(ascii: &[u64; TABLE], start: u64, mut d: u64, x: u64) -> (u64, u64) {
    let mut seen = 0u64;
    for j in 0..4 {
        let m = ascii.get(usize::from(unit_of(x, j) & 0x7f)).copied().unwrap_or(0);
        d = (d << 1).wrapping_add(start) & m;
        seen |= d;
    }
    (d, seen)
}

/// [`four_ascii`] for a word with a non-ASCII unit.
#[inline(never)]
fn four_wide<const WIDE: bool>(t: &MiddleTables<'_>, start: u64, mut d: u64, x: u64) -> (u64, u64) {
    let mut seen = 0u64;
    for j in 0..4 {
        d = (d << 1).wrapping_add(start) & t.mask::<WIDE>(unit_of(x, j));
        seen |= d;
    }
    (d, seen)
}

/// [`segment_search`], for a middle with (`WIDE`) or without non-ASCII units.
#[inline(always)]
fn search<S: Units + ?Sized, const WIDE: bool>(
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
    // `d` only holds bits `q..e` until it reaches `e`, so the shift never
    // carries into `start`: `+` is `|`, one `lea`.
    let step = |d: u64, u: u16| (d << 1).wrapping_add(start) & t.mask::<WIDE>(u);
    // Which unit of word `x` a hit found by `four` from `d` ends at.
    let which = |mut d: u64, x: u64| {
        (0..4usize)
            .find(|&j| {
                d = step(d, unit_of(x, u32::try_from(j).unwrap_or(0)));
                d & top != 0
            })
            .unwrap_or(0)
    };
    // Units `[at, to)` one by one from state `d`: the hit's index, or the
    // state after them.
    let units = |mut d: u64, at: usize, to: usize| -> Result<usize, u64> {
        let hit = s.lane(at, to).and_then(|l| {
            l.units().position(|u| {
                d = step(d, u);
                d & top != 0
            })
        });
        hit.map_or(Err(d), |i| Ok(at.saturating_add(i)))
    };
    let n = limit.saturating_sub(from);
    if n < len.saturating_mul(4).max(64) {
        return units(0, from, limit).ok();
    }
    // The first half: [from, from + k); the second: [b, limit), starting
    // `len - 1` units before from + k to get the state there right.
    let k = n.saturating_add(len).div_ceil(2);
    let b = from.saturating_add(k).saturating_sub(len.saturating_sub(1));
    let (end1, end2) = (from.saturating_add(k), limit);
    let mut chains = Chains { d1: 0, d2: 0, done: 0 };
    // Both chains, a word of each at a time, while the second half lasts
    // and has found nothing (the second half is the shorter). The loop over
    // words stops at a hit, read here.
    let mut second = None;
    loop {
        let done = chains.done;
        let first = s.lane(from.saturating_add(done), end1)?;
        let rest = s.lane(b.saturating_add(done), end2)?;
        let Some((x1, x2)) = both::<_, WIDE>(t, start, top, first, rest, &mut chains) else { break };
        let Chains { d1, d2, done } = chains;
        let (n1, seen1) = four_wide::<WIDE>(t, start, d1, x1);
        let (n2, seen2) = four_wide::<WIDE>(t, start, d2, x2);
        if seen1 & top != 0 {
            return Some(from.saturating_add(done).saturating_add(which(d1, x1)));
        }
        chains = Chains { d1: n1, d2: n2, done: done.wrapping_add(4) };
        if seen2 & top != 0 {
            second = Some(b.saturating_add(done).saturating_add(which(d2, x2)));
            break;
        }
    }
    let Chains { mut d1, d2, mut done } = chains;
    if second.is_none() {
        // The second half's last units (fewer than four).
        second = units(d2, b.saturating_add(done), limit).ok();
    }
    // The rest of the first half, alone: a hit there comes first.
    for x1 in s.lane(from.saturating_add(done), end1)?.words() {
        let (n1, seen1) =
            if x1 & NON_ASCII == 0 { four_ascii(t.ascii, start, d1, x1) } else { four_wide::<WIDE>(t, start, d1, x1) };
        if seen1 & top != 0 {
            return Some(from.saturating_add(done).saturating_add(which(d1, x1)));
        }
        (d1, done) = (n1, done.wrapping_add(4));
    }
    units(d1, from.saturating_add(done), end1).ok().or(second)
}

/// The two chains of a search in halves, and the units each has read.
#[derive(Clone, Copy)]
struct Chains {
    d1: u64,
    d2: u64,
    done: usize,
}

/// Steps both chains over words (`first` from the first half, `second`
/// from the second, both where the chains are) until `second` runs out
/// (`None`) or a pair of words holds a hit: that pair is returned unread.
/// A small loop of its own, so that its state stays in registers.
#[inline(never)]
fn both<L: Lane, const WIDE: bool>(
    t: &MiddleTables<'_>,
    start: u64,
    top: u64,
    first: L,
    second: L,
    chains: &mut Chains,
) -> Option<(u64, u64)> {
    let Chains { mut d1, mut d2, mut done } = *chains;
    let mut pending = None;
    for (q2, q1) in second.quads().zip(first.quads()) {
        let (x1, x2) = (word(q1), word(q2));
        let (mut n1, mut n2, mut seen) = (d1, d2, 0u64);
        if (x1 | x2) & NON_ASCII == 0 {
            for (&u1, &u2) in q1.iter().zip(&q2) {
                n1 = (n1 << 1).wrapping_add(start) & t.ascii.get(usize::from(u1 & 0x7f)).copied().unwrap_or(0);
                n2 = (n2 << 1).wrapping_add(start) & t.ascii.get(usize::from(u2 & 0x7f)).copied().unwrap_or(0);
                seen |= n1 | n2;
            }
        } else {
            for (&u1, &u2) in q1.iter().zip(&q2) {
                n1 = (n1 << 1).wrapping_add(start) & t.mask::<WIDE>(u1);
                n2 = (n2 << 1).wrapping_add(start) & t.mask::<WIDE>(u2);
                seen |= n1 | n2;
            }
        }
        if seen & top != 0 {
            pending = Some((x1, x2));
            break;
        }
        (d1, d2, done) = (n1, n2, done.wrapping_add(4));
    }
    *chains = Chains { d1, d2, done };
    pending
}

/// Four units as a word, the first in the low bits.
#[inline(always)]
fn word(q: [u16; 4]) -> u64 {
    q.iter().rev().fold(0u64, |w, &u| (w << 16) | u64::from(u))
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
            eq: Vec::new(),
            pages: Vec::new(),
            classes: Vec::new(),
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
        for (p, key) in patterns.zip(0u32..) {
            let head = p.iter().take_while(|&&u| !is_wild(u)).count();
            let tail = if head == p.len() { head } else { p.iter().rev().take_while(|&&u| !is_wild(u)).count() };
            let inner_head = p.get(head.saturating_sub(PRINT_UNITS)..head).unwrap_or(&[]);
            let inner_tail = p.get(p.len().saturating_sub(tail)..).unwrap_or(&[]);
            let mut middle = NO_MIDDLE;
            if head < p.len() {
                let units = p.get(head..p.len().saturating_sub(tail)).unwrap_or(&[]);
                let m = compile_middle(units, &mut ix.masks, &mut ix.eq, &mut ix.pages, &mut ix.classes)?;
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

    /// Does the wildcard middle `mid` (of pattern units `pattern`) accept
    /// the id's units `[from, to)`? Its segments are found one after the
    /// other, each where it first occurs after the one before (`*` between
    /// them takes whatever lies between, so the earliest occurrence leaves
    /// the most room to the rest): one pass over the units, each read once.
    /// A first segment without a `*` before it must start at `from`, a last
    /// one without a `*` after it must end at `to`.
    fn middle_matches<S: Units + ?Sized>(&self, mid: &Middle, pattern: &[u16], s: &S, from: usize, to: usize) -> bool {
        let m = mid.units;
        if to_usize(m) > MAX_MIDDLE_UNITS {
            return wild_match_backtracking(pattern, s, from, to);
        }
        if m == 0 {
            // Only stars: any run.
            return true;
        }
        let table = |start: u32, len: usize| to_usize(start)..to_usize(start).saturating_add(len);
        let Some(ascii) = self.masks.get(table(mid.masks, TABLE)).and_then(|m| <&[u64; TABLE]>::try_from(m).ok())
        else {
            return false;
        };
        let t = MiddleTables {
            ascii,
            dir: self.pages.get(to_usize(mid.pages)).unwrap_or(&NO_DIR),
            pages: self.pages.get(to_usize(mid.pages)..).unwrap_or(&[]),
            classes: self.classes.get(to_usize(mid.classes)).unwrap_or(&NO_CLASSES),
            any: mid.any,
        };
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
    pub(super) fn key_matches<S: Units + ?Sized>(&self, key: u32, id: &S) -> bool {
        let k = self.key(key);
        let (head, tail, len) = (to_usize(k.head), to_usize(k.tail), to_usize(k.len));
        let p = self.pattern(&k);
        let n = id.count();
        if head == len {
            // No wildcard: plain case-insensitive equality.
            return n == len && id.same(0, p, true);
        }
        if head.saturating_add(tail) > n {
            return false;
        }
        let tail_at = n.saturating_sub(tail);
        let inner_head = head.min(PRINT_UNITS);
        let inner_tail = tail.min(PRINT_UNITS);
        let at = |from: usize, count: usize| pack((from..from.saturating_add(count)).map(|i| id.at(i)));
        if at(head.saturating_sub(inner_head), inner_head) != k.head_print || at(tail_at, inner_tail) != k.tail_print {
            return false;
        }
        let head_units = p.get(..head).unwrap_or(&[]);
        let tail_units = p.get(len.saturating_sub(tail)..).unwrap_or(&[]);
        if !id.same(tail_at, tail_units, false) || !id.same(0, head_units, true) {
            return false;
        }
        let middle = p.get(head..len.saturating_sub(tail)).unwrap_or(&[]);
        let Some(mid) = self.middles.get(to_usize(k.middle)) else { return false };
        self.middle_matches(mid, middle, id, head, tail_at)
    }

    /// Bytes held.
    pub(super) fn bytes(&self) -> usize {
        [
            self.units.capacity().saturating_mul(2),
            self.keys.capacity().saturating_mul(size_of::<Key>()),
            self.middles.capacity().saturating_mul(size_of::<Middle>()),
            self.masks.capacity().saturating_mul(8),
            self.eq.capacity().saturating_mul(size_of::<(u16, u64)>()),
            self.pages.capacity().saturating_mul(PAGE),
            self.classes.capacity().saturating_mul(PAGE * 8),
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
