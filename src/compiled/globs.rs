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
//! - a whole path component (`*\vendor\*` only matches ids with a `vendor`
//!   component).
//!
//! Each pattern takes its rarest anchor among all patterns' anchors, so a
//! head every path shares (`\device\...`) is passed over for a component
//! that tells patterns apart. An anchor is known by its kind, its length and
//! a 64-bit digest of its case-folded units. A lookup walks the id once,
//! computing the digests of the whole id, of each component and of the heads
//! of the lengths in use, then of the tails of the lengths in use; a bit
//! filter turns most of those away before the hash table is probed. Only the
//! patterns filed under a probed anchor are tried, and each is first checked
//! against the id at the inner ends of its literal head and tail (the units
//! next to the wildcard, where paths sharing a directory differ) before the
//! whole literal parts are compared and the wildcard matcher runs on the
//! middle. Patterns with no anchor (`*`, `*foo*`) are tried one by one.
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

/// One bit per component bucket.
type Seen = [u64; MAX_COMPONENT_BUCKETS / 64];

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
    /// The wildcard middle's distinct non-`?` units with their bits for the
    /// linear matcher ([`middle_table`]): start in `eq` and count.
    eq_start: u32,
    eq_len: u32,
}

/// A set of distinct patterns, each known by its key id (its position in the
/// list given to [`GlobIndex::build`]).
#[derive(Clone, Debug)]
pub(super) struct GlobIndex {
    hasher: RandomState,
    units: Vec<u16>,
    keys: Vec<Key>,
    /// Every pattern's [`middle_table`], built once so that matching keeps
    /// no table on the (kernel) stack.
    eq: Vec<(u16, u64)>,
    anchors: HashTable<Bucket>,
    anchor_keys: Vec<u32>,
    /// One bit per [`filter_bit`] of every anchor in `anchors`.
    filter: Vec<u64>,
    /// `log2` of the filter's bit count.
    filter_shift: u32,
    /// Bit `l` set when a suffix (prefix) anchor of length `l` exists.
    suffix_lens: u64,
    prefix_lens: u64,
    /// Bit `min(l, 63)` set when a component anchor of length `l` exists.
    component_lens: u64,
    /// Some literal pattern is filed (the whole id is then probed).
    exact: bool,
    always: Vec<u32>,
}

/// Units of an app id folded into a stack buffer for matching (MAX_PATH
/// and a device prefix); longer ids are folded unit by unit as they are read.
pub(super) const FOLD_UNITS: usize = 288;

/// An app id's case-folded units, however they are read: a folded slice
/// (the fast path) or the id itself (folding each unit on the way).
pub(super) trait Units {
    /// Number of units.
    fn count(&self) -> usize;
    /// The folded unit `i` (0 past the end).
    fn at(&self, i: usize) -> u16;
    /// Are the folded units from `from` on equal to `units`? `backwards`
    /// compares from the last unit (where paths sharing a head differ).
    fn same(&self, from: usize, units: &[u16], backwards: bool) -> bool;
    /// Calls `f(i, unit)` for every folded unit, in order.
    fn each(&self, f: impl FnMut(usize, u16) -> bool) -> bool;
    /// Calls `f` with the folded units `[from, to)` in order, a slice at a
    /// time, until it returns false; returns false when stopped.
    fn chunks(&self, from: usize, to: usize, f: impl FnMut(&[u16]) -> bool) -> bool;
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
    #[inline]
    fn each(&self, mut f: impl FnMut(usize, u16) -> bool) -> bool {
        self.iter().enumerate().all(|(i, &u)| f(i, u))
    }
    #[inline]
    fn chunks(&self, from: usize, to: usize, mut f: impl FnMut(&[u16]) -> bool) -> bool {
        f(self.get(from..to).unwrap_or(&[]))
    }
}

impl Units for AppId<'_> {
    fn count(&self) -> usize {
        self.len_units()
    }
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
    fn each(&self, mut f: impl FnMut(usize, u16) -> bool) -> bool {
        self.folded_units().enumerate().all(|(i, u)| f(i, u))
    }
    fn chunks(&self, from: usize, to: usize, mut f: impl FnMut(&[u16]) -> bool) -> bool {
        // Folded a block at a time on the stack (four ASCII units per word).
        let mut buf = [0u16; CHUNK_UNITS];
        let bytes = self.as_bytes();
        let mut at = from;
        while at < to {
            let n = to.saturating_sub(at).min(CHUNK_UNITS);
            let Some(src) = bytes.get(at.saturating_mul(2)..at.saturating_add(n).saturating_mul(2)) else {
                return true;
            };
            let Some(out) = buf.get_mut(..n) else { return true };
            fold_bytes(src, out);
            if !f(out) {
                return false;
            }
            at = at.saturating_add(n);
        }
        true
    }
}

/// Units folded per block by [`Units::chunks`] on a long id (128 B of stack:
/// the classify path runs on a small kernel stack).
const CHUNK_UNITS: usize = 64;

/// An app id as [`Units`]: folded on the stack, or read as it is.
pub(super) enum Read<'a> {
    /// Fits [`FOLD_UNITS`].
    Folded(&'a [u16]),
    /// Too long: folded unit by unit.
    Raw(AppId<'a>),
}

/// Folds `app` into `buf`; `None` when it does not fit. ASCII is folded four
/// units at a time (an id is almost always ASCII), anything else by
/// [`fold_unit`].
pub(super) fn fold<'b>(app: &AppId<'_>, buf: &'b mut [u16; FOLD_UNITS]) -> Option<&'b [u16]> {
    let out = buf.get_mut(..app.len_units())?;
    fold_bytes(app.as_bytes(), out);
    Some(out)
}

/// Folds the UTF-16LE units in `bytes` into `out` (as many as both hold).
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

/// Appends the linear matcher's table for a wildcard middle to `eq`: each
/// distinct unit other than `*` and `?` with the bits of the non-`*`
/// positions (at most [`MAX_MIDDLE_UNITS`]) that hold it, sorted by unit.
/// Nothing is appended past that many positions (the matcher then falls
/// back to [`wild_match_backtracking`]).
fn middle_table(middle: &[u16], eq: &mut Vec<(u16, u64)>) -> Result<(), OutOfMemory> {
    let start = eq.len();
    let mut m = 0usize;
    for &u in middle {
        if u == STAR {
            continue;
        }
        if m >= MAX_MIDDLE_UNITS {
            eq.truncate(start);
            return Ok(());
        }
        let bit = 1u64 << m;
        m = m.saturating_add(1);
        if u == QUESTION {
            continue;
        }
        if let Some(w) = eq.get_mut(start..).and_then(|t| t.iter_mut().find(|w| w.0 == u)) {
            w.1 |= bit;
        } else {
            eq.try_reserve(1).map_err(|_| OutOfMemory)?;
            eq.push((u, bit));
        }
    }
    if let Some(t) = eq.get_mut(start..) {
        t.sort_unstable_by_key(|w| w.0);
    }
    Ok(())
}

/// `*` / `?` matching of `pattern` against units `[from, to)` of `s`, in
/// time linear in the id whatever the pattern and the id hold: a bit-parallel
/// automaton (one bit per non-`*` unit of the pattern, so at most
/// [`MAX_MIDDLE_UNITS`]) reads each unit of the id once, looking its bits up
/// in `eq`, the pattern's [`middle_table`] built with the index (so no table
/// lives on the stack). Patterns with more units (the validator refuses
/// them) fall back to [`wild_match_backtracking`].
fn wild_match<S: Units + ?Sized>(pattern: &[u16], eq: &[(u16, u64)], s: &S, from: usize, to: usize) -> bool {
    // Per non-star unit j: its bit in `any` (a `?`) and in `starred` (a `*`
    // comes right before it); `eq` has the others by unit.
    let mut any = 0u64;
    let mut starred = 0u64;
    let mut m = 0usize;
    let mut star = false;
    for &u in pattern {
        if u == STAR {
            star = true;
            continue;
        }
        if m >= MAX_MIDDLE_UNITS {
            return wild_match_backtracking(pattern, s, from, to);
        }
        let bit = 1u64 << m;
        if star {
            starred |= bit;
        }
        star = false;
        if u == QUESTION {
            any |= bit;
        }
        m = m.saturating_add(1);
    }
    let trailing_star = star;
    if m == 0 {
        // Only stars (or nothing): any run matches, the empty one only without stars.
        return trailing_star || from >= to;
    }
    let last = 1u64 << m.saturating_sub(1);
    // `open`: units that may match at the next position because a `*` before
    // them has been reached (it stays reached). Unit 0 is open from the start
    // behind a leading star, and enabled at the first position regardless.
    let mut open = starred & 1;
    let mut active = 0u64;
    let mut first = true;
    // None: undecided so far; Some(answer): decided before the end.
    let mut decided: Option<bool> = None;
    s.chunks(from, to, |units| {
        // The state in locals (registers) for the length of the block.
        let (mut act, mut opn, mut fst) = (active, open, u64::from(first));
        for &c in units {
            let hit = eq.binary_search_by_key(&c, |w| w.0).ok().and_then(|j| eq.get(j)).map_or(0, |w| w.1);
            act = ((act << 1) | opn | fst) & (hit | any);
            fst = 0;
            // A unit just matched opens the starred unit after it for every later position.
            opn |= (act << 1) & starred;
            if (trailing_star && act & last != 0) || (act | opn) == 0 {
                // The trailing star takes the rest; or nothing can match any more.
                decided = Some(act != 0);
                return false;
            }
        }
        (active, open, first) = (act, opn, fst != 0);
        true
    });
    // (An empty run leaves `active` 0: only a pattern of stars matches it.)
    decided.unwrap_or(!trailing_star && active & last != 0)
}

/// The old matcher: iterative, one backtrack point, no allocation, but
/// O(pattern × id) at worst. Only for patterns the validator refuses.
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
    // Whole components: a wildcard-free run between two backslashes. A
    // component at the very start or end of the pattern counts only if the
    // pattern is anchored there (otherwise it may be part of a longer one).
    let mut start: Option<usize> = if head > 0 && p.first() != Some(&BACKSLASH) { Some(0) } else { None };
    for (i, &u) in p.iter().enumerate() {
        if is_wild(u) {
            start = None;
        } else if u == BACKSLASH {
            if let Some(s) = start
                && i > s
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
            eq: Vec::new(),
            anchors: HashTable::new(),
            anchor_keys: Vec::new(),
            filter: Vec::new(),
            filter_shift: 0,
            suffix_lens: 0,
            prefix_lens: 0,
            component_lens: 0,
            exact: false,
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
            let eq_start = to_u32(ix.eq.len())?;
            if head < p.len() {
                let middle = p.get(head..p.len().saturating_sub(tail)).unwrap_or(&[]);
                middle_table(middle, &mut ix.eq)?;
            }
            ix.keys.push(Key {
                start: to_u32(ix.units.len())?,
                len: to_u32(p.len())?,
                head: to_u32(head)?,
                tail: to_u32(tail)?,
                head_print: pack(inner_head.iter().copied()),
                tail_print: pack(inner_tail.iter().take(PRINT_UNITS).copied()),
                eq_start,
                eq_len: to_u32(ix.eq.len().saturating_sub(to_usize(eq_start)))?,
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
                _ => ix.exact = true,
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

    fn eq_table(&self, k: &Key) -> &[(u16, u64)] {
        let s = to_usize(k.eq_start);
        self.eq.get(s..s.saturating_add(to_usize(k.eq_len))).unwrap_or(&[])
    }

    /// Calls `f` with each filed key whose pattern matches the id, each at
    /// most once, in no particular order, until `f` returns false. Returns
    /// false when stopped early.
    pub(super) fn for_each_match<S: Units + ?Sized>(&self, id: &S, mut f: impl FnMut(u32) -> bool) -> bool {
        let n = id.count();
        let mut seen: Seen = [0; MAX_COMPONENT_BUCKETS / 64];
        // Front to back: the whole id, its heads and its components.
        if self.exact || self.prefix_lens != 0 || self.component_lens != 0 {
            let mut whole = Digest::NEW;
            let mut component = Digest::NEW;
            let mut start = 0usize;
            let mut prefixes = self.prefix_lens;
            // The next head length to probe (past every unit when none is left).
            let next_len = |lens: u64| {
                if lens == 0 { usize::MAX } else { usize::try_from(lens.trailing_zeros()).unwrap_or(usize::MAX) }
            };
            let mut next = next_len(prefixes);
            let go_on = id.each(|i, u| {
                whole.push(u);
                let l = i.saturating_add(1);
                if l == next {
                    prefixes &= prefixes.wrapping_sub(1);
                    next = next_len(prefixes);
                    if !self.probe((PREFIX, len16(l), whole.value()), id, &mut f, None) {
                        return false;
                    }
                }
                if u == BACKSLASH {
                    if !self.probe_component(i.saturating_sub(start), component.value(), id, &mut f, &mut seen) {
                        return false;
                    }
                    component = Digest::NEW;
                    start = l;
                } else {
                    component.push(u);
                }
                true
            });
            if !go_on || !self.probe_component(n.saturating_sub(start), component.value(), id, &mut f, &mut seen) {
                return false;
            }
            if self.exact && !self.probe((EXACT, len16(n), whole.value()), id, &mut f, None) {
                return false;
            }
        }
        // Back to front: its tails.
        let mut suffixes = self.suffix_lens & !1;
        let mut tail = Digest::NEW;
        let mut l = 0usize;
        while suffixes != 0 && l < n {
            l = l.saturating_add(1);
            tail.push(id.at(n.saturating_sub(l)));
            if suffixes.trailing_zeros() == len_u32(l) {
                suffixes &= suffixes.wrapping_sub(1);
                if !self.probe((SUFFIX, len16(l), tail.value()), id, &mut f, None) {
                    return false;
                }
            }
        }
        for &k in &self.always {
            if self.key_matches(k, id) && !f(k) {
                return false;
            }
        }
        true
    }

    /// Probes a component of `len` units (none when empty or of a length no
    /// anchor has).
    #[inline]
    fn probe_component<S: Units + ?Sized>(
        &self,
        len: usize,
        d: u64,
        id: &S,
        f: &mut impl FnMut(u32) -> bool,
        seen: &mut Seen,
    ) -> bool {
        if len == 0 || self.component_lens & (1 << len.min(63)) == 0 {
            return true;
        }
        self.probe((COMPONENT, len16(len), d), id, f, Some(seen))
    }

    /// Tries the patterns filed under `anchor`; false when `f` said stop.
    /// With `seen`, a bucket already tried in this lookup is skipped.
    #[inline]
    fn probe<S: Units + ?Sized>(
        &self,
        anchor: Anchor,
        id: &S,
        f: &mut impl FnMut(u32) -> bool,
        seen: Option<&mut Seen>,
    ) -> bool {
        let bit = filter_bit(anchor, self.filter_shift);
        if self.filter.get(bit / 64).is_none_or(|w| w & (1 << (bit % 64)) == 0) {
            return true;
        }
        let Some(b) = self.anchors.find(self.hasher.hash_one(anchor), |b| b.anchor == anchor) else {
            return true;
        };
        if let Some(seen) = seen {
            let o = usize::from(b.ordinal);
            let Some(word) = seen.get_mut(o / 64) else { return true };
            if *word & (1 << (o % 64)) != 0 {
                return true;
            }
            *word |= 1 << (o % 64);
        }
        let s = to_usize(b.start);
        for &k in self.anchor_keys.get(s..s.saturating_add(to_usize(b.len))).unwrap_or(&[]) {
            if self.key_matches(k, id) && !f(k) {
                return false;
            }
        }
        true
    }

    /// [`Self::key_matches`] over either form of an id.
    #[inline]
    pub(super) fn read_matches(&self, key: u32, id: &Read<'_>) -> bool {
        match id {
            Read::Folded(units) => self.key_matches(key, *units),
            Read::Raw(app) => self.key_matches(key, app),
        }
    }

    /// Does any filed pattern match?
    pub(super) fn any_match(&self, app: &AppId<'_>) -> bool {
        let mut buf = [0u16; FOLD_UNITS];
        match fold(app, &mut buf) {
            Some(units) => !self.for_each_match(units, |_| false),
            None => !self.for_each_match(app, |_| false),
        }
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
        middle.iter().all(|&u| u == STAR) || wild_match(middle, self.eq_table(&k), id, head, tail_at)
    }

    /// Bytes held.
    pub(super) fn bytes(&self) -> usize {
        [
            self.units.capacity().saturating_mul(2),
            self.keys.capacity().saturating_mul(size_of::<Key>()),
            self.eq.capacity().saturating_mul(size_of::<(u16, u64)>()),
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
