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
use crate::policy::glob_match;
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

/// Patterns sharing one anchor.
#[derive(Clone, Copy, Debug)]
struct Bucket {
    anchor: Anchor,
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
}

/// A set of distinct patterns, each known by its key id (its position in the
/// list given to [`GlobIndex::build`]).
#[derive(Clone, Debug)]
pub(super) struct GlobIndex {
    hasher: RandomState,
    units: Vec<u16>,
    keys: Vec<Key>,
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

fn is_wild(u: u16) -> bool {
    u == STAR || u == QUESTION
}

/// Digest step: FNV-1a over 16-bit units.
#[inline]
fn mix(h: u64, u: u16) -> u64 {
    (h ^ u64::from(u)).wrapping_mul(0x0000_0100_0000_01b3)
}

/// Digest start.
const DIGEST_SEED: u64 = 0xcbf2_9ce4_8422_2325;

fn digest(units: impl Iterator<Item = u16>) -> u64 {
    units.fold(DIGEST_SEED, mix)
}

fn len16(n: usize) -> u16 {
    u16::try_from(n).unwrap_or(u16::MAX)
}

/// Packs up to four units, the first in the high bits.
fn pack(units: impl Iterator<Item = u16>) -> u64 {
    units.fold(0u64, |acc, u| (acc << 16) | u64::from(u))
}

/// The id's `i`th unit, folded (0 past the end).
#[inline]
fn unit_at(bytes: &[u8], i: usize) -> u16 {
    match bytes.get(i.saturating_mul(2)..i.saturating_mul(2).saturating_add(2)) {
        Some(&[a, b]) => fold_unit(u16::from_le_bytes([a, b])),
        _ => 0,
    }
}

/// Do `units` equal the id's folded units from unit `at` on, compared from
/// the back when `backwards`?
#[inline]
fn eq_at(units: &[u16], bytes: &[u8], at: usize, backwards: bool) -> bool {
    let from = at.saturating_mul(2);
    let Some(id) = bytes.get(from..from.saturating_add(units.len().saturating_mul(2))) else {
        return false;
    };
    let mut pairs = units.iter().zip(id.chunks_exact(2));
    let same = |(&p, c): (&u16, &[u8])| match c {
        &[a, b] => fold_unit(u16::from_le_bytes([a, b])) == p,
        _ => false,
    };
    if backwards { pairs.rev().all(same) } else { pairs.all(same) }
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
        for (p, key) in patterns.zip(0u32..) {
            let head = p.iter().take_while(|&&u| !is_wild(u)).count();
            let tail = if head == p.len() { head } else { p.iter().rev().take_while(|&&u| !is_wild(u)).count() };
            let inner_head = p.get(head.saturating_sub(PRINT_UNITS)..head).unwrap_or(&[]);
            let inner_tail = p.get(p.len().saturating_sub(tail)..).unwrap_or(&[]);
            ix.keys.push(Key {
                start: to_u32(ix.units.len())?,
                len: to_u32(p.len())?,
                head: to_u32(head)?,
                tail: to_u32(tail)?,
                head_print: pack(inner_head.iter().copied()),
                tail_print: pack(inner_tail.iter().take(PRINT_UNITS).copied()),
            });
            ix.units.extend_from_slice(p);
            if !indexed(key) {
                continue;
            }
            let best = if head == p.len() {
                Some((EXACT, len16(p.len()), digest(p.iter().copied())))
            } else {
                anchors(p, &mut scratch)?;
                // The rarest anchor; among equals, the longest.
                scratch.iter().min_by_key(|a| (count(a), u16::MAX.saturating_sub(a.1))).copied()
            };
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
        while let Some(&(anchor, _)) = rest.first() {
            let run = rest.iter().take_while(|&&(a, _)| a == anchor).count();
            let (group, tail) = rest.split_at(run);
            let bucket = Bucket { anchor, start: to_u32(ix.anchor_keys.len())?, len: to_u32(run)? };
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

    /// Calls `f` with each filed key whose pattern matches `app`, each at
    /// most once, in no particular order, until `f` returns false. Returns
    /// false when stopped early.
    pub(super) fn for_each_match(&self, app: &AppId<'_>, mut f: impl FnMut(u32) -> bool) -> bool {
        let bytes = app.as_bytes();
        let n = app.len_units();
        let unit = |c: &[u8]| match c {
            &[a, b] => fold_unit(u16::from_le_bytes([a, b])),
            _ => 0,
        };
        // Front to back: the whole id, its heads and its components.
        if self.exact || self.prefix_lens != 0 || self.component_lens != 0 {
            let mut whole = DIGEST_SEED;
            let mut component = DIGEST_SEED;
            let mut start = 0usize;
            let mut prefixes = self.prefix_lens;
            for (i, c) in bytes.chunks_exact(2).enumerate() {
                let u = unit(c);
                whole = mix(whole, u);
                let l = i.saturating_add(1);
                if prefixes != 0 && prefixes.trailing_zeros() == len_u32(l) {
                    prefixes &= prefixes.wrapping_sub(1);
                    if !self.probe((PREFIX, len16(l), whole), app, &mut f) {
                        return false;
                    }
                }
                if u == BACKSLASH {
                    if !self.probe_component(i.saturating_sub(start), component, app, &mut f) {
                        return false;
                    }
                    component = DIGEST_SEED;
                    start = l;
                } else {
                    component = mix(component, u);
                }
            }
            if !self.probe_component(n.saturating_sub(start), component, app, &mut f) {
                return false;
            }
            if self.exact && !self.probe((EXACT, len16(n), whole), app, &mut f) {
                return false;
            }
        }
        // Back to front: its tails.
        let mut suffixes = self.suffix_lens & !1;
        if suffixes != 0 {
            let mut tail = DIGEST_SEED;
            for (i, c) in bytes.rchunks_exact(2).enumerate() {
                tail = mix(tail, unit(c));
                let l = i.saturating_add(1);
                if suffixes.trailing_zeros() == len_u32(l) {
                    suffixes &= suffixes.wrapping_sub(1);
                    if !self.probe((SUFFIX, len16(l), tail), app, &mut f) {
                        return false;
                    }
                    if suffixes == 0 {
                        break;
                    }
                }
            }
        }
        for &k in &self.always {
            if self.key_matches(k, app) && !f(k) {
                return false;
            }
        }
        true
    }

    /// Probes a component of `len` units (none when empty or of a length no
    /// anchor has).
    #[inline]
    fn probe_component(&self, len: usize, d: u64, app: &AppId<'_>, f: &mut impl FnMut(u32) -> bool) -> bool {
        if len == 0 || self.component_lens & (1 << len.min(63)) == 0 {
            return true;
        }
        self.probe((COMPONENT, len16(len), d), app, f)
    }

    /// Tries the patterns filed under `anchor`; false when `f` said stop.
    #[inline]
    fn probe(&self, anchor: Anchor, app: &AppId<'_>, f: &mut impl FnMut(u32) -> bool) -> bool {
        let bit = filter_bit(anchor, self.filter_shift);
        if self.filter.get(bit / 64).is_none_or(|w| w & (1 << (bit % 64)) == 0) {
            return true;
        }
        let Some(b) = self.anchors.find(self.hasher.hash_one(anchor), |b| b.anchor == anchor) else {
            return true;
        };
        let s = to_usize(b.start);
        for &k in self.anchor_keys.get(s..s.saturating_add(to_usize(b.len))).unwrap_or(&[]) {
            if self.key_matches(k, app) && !f(k) {
                return false;
            }
        }
        true
    }

    /// Does any filed pattern match?
    pub(super) fn any_match(&self, app: &AppId<'_>) -> bool {
        !self.for_each_match(app, |_| false)
    }

    /// Does pattern `key` match? The units next to the wildcards are compared
    /// first (paths sharing a directory differ there), then the whole
    /// literal head and tail; the wildcard matcher only runs on the middle.
    pub(super) fn key_matches(&self, key: u32, app: &AppId<'_>) -> bool {
        let k = self.key(key);
        let (head, tail, len) = (to_usize(k.head), to_usize(k.tail), to_usize(k.len));
        let p = self.pattern(&k);
        let bytes = app.as_bytes();
        let n = app.len_units();
        if head == len {
            // No wildcard: plain case-insensitive equality.
            return n == len && eq_at(p, bytes, 0, true);
        }
        if head.saturating_add(tail) > n {
            return false;
        }
        let tail_at = n.saturating_sub(tail);
        let inner_head = head.min(PRINT_UNITS);
        let inner_tail = tail.min(PRINT_UNITS);
        let at = |from: usize, count: usize| pack((from..from.saturating_add(count)).map(|i| unit_at(bytes, i)));
        if at(head.saturating_sub(inner_head), inner_head) != k.head_print || at(tail_at, inner_tail) != k.tail_print {
            return false;
        }
        let head_units = p.get(..head).unwrap_or(&[]);
        let tail_units = p.get(len.saturating_sub(tail)..).unwrap_or(&[]);
        if !eq_at(tail_units, bytes, tail_at, false) || !eq_at(head_units, bytes, 0, true) {
            return false;
        }
        let middle = p.get(head..len.saturating_sub(tail)).unwrap_or(&[]);
        if middle.iter().all(|&u| u == STAR) {
            return true;
        }
        match bytes.get(head.saturating_mul(2)..tail_at.saturating_mul(2)) {
            // AppId drops trailing NUL units, which would shorten the middle: use the whole id.
            Some(mid) if !mid.ends_with(&[0, 0]) => glob_match(middle, &AppId::from_utf16le(mid)),
            _ => glob_match(p, app),
        }
    }

    /// Bytes held.
    pub(super) fn bytes(&self) -> usize {
        [
            self.units.capacity().saturating_mul(2),
            self.keys.capacity().saturating_mul(size_of::<Key>()),
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
