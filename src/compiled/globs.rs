//! App-id globs: which of a set of patterns match an app id, without trying
//! them all.
//!
//! - Patterns without a wildcard sit in a seeded ahash table of their folded
//!   units: one hash and one comparison.
//! - Every other pattern is filed under one *anchor*, a piece of literal text
//!   any matching id must contain in a known place: its literal tail
//!   (`*\browser.exe` only matches ids ending in `\browser.exe`; the last up to
//!   eight units are kept), its literal head, or a whole path component
//!   (`*\vendor\*` only matches ids with a `vendor` component). Each pattern
//!   takes its rarest anchor among all patterns' anchors, so a head shared by
//!   every path (`\device\...`) is passed over for a component that tells
//!   patterns apart. A lookup probes the id's tails and heads for the lengths
//!   in use and each of its components, and tries only the patterns filed
//!   there.
//! - The rest (`*`, `*foo*`) are tried one by one.
//!
//! Hash seeds come from the caller: attackers choose app ids.

use alloc::vec::Vec;
use core::hash::{BuildHasher, Hasher};

use ahash::RandomState;
use hashbrown::HashTable;

use super::postings::{to_u32, to_usize};
use crate::flow::{AppId, fold_unit};
use crate::policy::glob_match;
use crate::table::OutOfMemory;

/// Pattern units `*` and `?`.
const STAR: u16 = b'*' as u16;
const QUESTION: u16 = b'?' as u16;

/// Most units an anchor keeps (eight 16-bit units fill a `u128`).
const ANCHOR_UNITS: usize = 8;

/// Anchor kinds.
const SUFFIX: u8 = 0;
const PREFIX: u8 = 1;
const COMPONENT: u8 = 2;

/// Path separator.
const BACKSLASH: u16 = b'\\' as u16;

/// An anchor: kind, length (of the kept units for tails and heads, of the
/// whole component for components) and the first up to eight units, packed.
type Anchor = (u8, u16, u128);

/// Patterns sharing one anchor.
#[derive(Clone, Copy, Debug)]
struct Bucket {
    anchor: Anchor,
    /// First key id in `anchor_keys`.
    start: u32,
    /// How many.
    len: u32,
}

/// A set of distinct patterns, each known by its key id (its position in the
/// list given to [`GlobIndex::build`]).
#[derive(Clone, Debug)]
pub(super) struct GlobIndex {
    hasher: RandomState,
    units: Vec<u16>,
    /// Per key: start in `units`, length, literal head length, literal tail length.
    keys: Vec<[u32; 4]>,
    /// Per key: the first and last (up to) eight units of its literal head
    /// and tail, packed, to reject most candidates with two compares.
    prints: Vec<(u128, u128)>,
    exact: HashTable<u32>,
    anchors: HashTable<Bucket>,
    anchor_keys: Vec<u32>,
    /// Bit `l` set when a suffix bucket of length `l` exists.
    suffix_lens: u16,
    /// Same for prefix buckets.
    prefix_lens: u16,
    /// Some pattern is filed under a component.
    components: bool,
    always: Vec<u32>,
}

fn is_wild(u: u16) -> bool {
    u == STAR || u == QUESTION
}

/// Hashes folded units four to a word, then the length.
fn hash_units(hasher: &RandomState, units: impl Iterator<Item = u16>) -> u64 {
    let mut h = hasher.build_hasher();
    let (mut word, mut n) = (0u64, 0usize);
    for u in units {
        word = (word << 16) | u64::from(u);
        n = n.wrapping_add(1);
        if n & 3 == 0 {
            h.write_u64(word);
            word = 0;
        }
    }
    h.write_u64(word);
    h.write_usize(n);
    h.finish()
}

fn pack(units: impl Iterator<Item = u16>) -> u128 {
    units.fold(0u128, |acc, u| (acc << 16) | u128::from(u))
}

/// The first and last (up to) eight folded units of an app id, packed.
struct Probe {
    first: u128,
    first_len: usize,
    last: u128,
}

impl Probe {
    fn new(app: &AppId<'_>) -> Self {
        let n = app.len_units();
        let folded = |i: usize| app.unit(i).map_or(0, fold_unit);
        let first_len = n.min(ANCHOR_UNITS);
        Self {
            first: pack((0..first_len).map(folded)),
            first_len,
            last: pack((n.saturating_sub(ANCHOR_UNITS)..n).map(folded)),
        }
    }
}

/// Mask of the low `units` 16-bit units of a packed value.
fn low_units(units: usize) -> u128 {
    u128::MAX.checked_shr(128u32.saturating_sub(u32::try_from(units.saturating_mul(16)).unwrap_or(128))).unwrap_or(0)
}

fn len16(n: usize) -> u16 {
    u16::try_from(n).unwrap_or(u16::MAX)
}

/// The anchors a matching id must contain, for a pattern with a wildcard.
fn anchors(p: &[u16], out: &mut Vec<Anchor>) -> Result<(), OutOfMemory> {
    out.clear();
    let head = p.iter().take_while(|&&u| !is_wild(u)).count();
    let tail = p.iter().rev().take_while(|&&u| !is_wild(u)).count();
    out.try_reserve(2).map_err(|_| OutOfMemory)?;
    if tail > 0 {
        let l = tail.min(ANCHOR_UNITS);
        out.push((SUFFIX, len16(l), pack(p.iter().skip(p.len().saturating_sub(l)).copied())));
    }
    if head > 0 {
        let l = head.min(ANCHOR_UNITS);
        out.push((PREFIX, len16(l), pack(p.iter().take(l).copied())));
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
                out.push((COMPONENT, len16(c.len()), pack(c.iter().take(ANCHOR_UNITS).copied())));
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
        out.push((COMPONENT, len16(c.len()), pack(c.iter().take(ANCHOR_UNITS).copied())));
    }
    Ok(())
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
            prints: Vec::new(),
            exact: HashTable::new(),
            anchors: HashTable::new(),
            anchor_keys: Vec::new(),
            suffix_lens: 0,
            prefix_lens: 0,
            components: false,
            always: Vec::new(),
        };
        let total: usize = patterns.clone().map(<[u16]>::len).fold(0, usize::saturating_add);
        ix.units.try_reserve_exact(total).map_err(|_| OutOfMemory)?;
        ix.keys.try_reserve_exact(patterns.len()).map_err(|_| OutOfMemory)?;
        ix.prints.try_reserve_exact(patterns.len()).map_err(|_| OutOfMemory)?;
        let mut exact: Vec<u32> = Vec::new();
        // Every candidate anchor of every pattern, to count how common each is.
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
            let tail = p.iter().rev().take_while(|&&u| !is_wild(u)).count();
            ix.keys.push([to_u32(ix.units.len())?, to_u32(p.len())?, to_u32(head)?, to_u32(tail)?]);
            let last = tail.min(ANCHOR_UNITS);
            ix.prints.push((
                pack(p.iter().take(head.min(ANCHOR_UNITS)).copied()),
                pack(p.iter().skip(p.len().saturating_sub(last)).copied()),
            ));
            ix.units.extend_from_slice(p);
            if !indexed(key) {
                continue;
            }
            if !p.iter().any(|&u| is_wild(u)) {
                exact.try_reserve(1).map_err(|_| OutOfMemory)?;
                exact.push(key);
                continue;
            }
            anchors(p, &mut scratch)?;
            // The rarest anchor; among equals, the longest.
            let Some(&best) = scratch.iter().min_by_key(|a| (count(a), u16::MAX.saturating_sub(a.1))) else {
                ix.always.try_reserve(1).map_err(|_| OutOfMemory)?;
                ix.always.push(key);
                continue;
            };
            match best.0 {
                SUFFIX => ix.suffix_lens |= 1 << best.1.min(15),
                PREFIX => ix.prefix_lens |= 1 << best.1.min(15),
                _ => ix.components = true,
            }
            anchored.try_reserve(1).map_err(|_| OutOfMemory)?;
            anchored.push((best, key));
        }

        let hasher = ix.hasher.clone();
        let keys = &ix.keys;
        let units = &ix.units;
        let key_hash = |k: &u32| {
            let [s, l, _, _] = keys.get(to_usize(*k)).copied().unwrap_or([0; 4]);
            let s = to_usize(s);
            hash_units(&hasher, units.get(s..s.saturating_add(to_usize(l))).unwrap_or(&[]).iter().copied())
        };
        ix.exact.try_reserve(exact.len(), key_hash).map_err(|_| OutOfMemory)?;
        for k in exact {
            ix.exact.insert_unique(key_hash(&k), k, key_hash);
        }

        anchored.sort_unstable();
        ix.anchor_keys.try_reserve_exact(anchored.len()).map_err(|_| OutOfMemory)?;
        let bucket_hash = |b: &Bucket| hasher.hash_one(b.anchor);
        let mut rest = anchored.as_slice();
        while let Some(&(anchor, _)) = rest.first() {
            let run = rest.iter().take_while(|&&(a, _)| a == anchor).count();
            let (group, tail) = rest.split_at(run);
            let bucket = Bucket { anchor, start: to_u32(ix.anchor_keys.len())?, len: to_u32(run)? };
            ix.anchor_keys.extend(group.iter().map(|&(_, k)| k));
            ix.anchors.try_reserve(1, bucket_hash).map_err(|_| OutOfMemory)?;
            ix.anchors.insert_unique(bucket_hash(&bucket), bucket, bucket_hash);
            rest = tail;
        }
        Ok(ix)
    }

    fn pattern(&self, key: u32) -> &[u16] {
        let [s, l, _, _] = self.keys.get(to_usize(key)).copied().unwrap_or([0; 4]);
        let s = to_usize(s);
        self.units.get(s..s.saturating_add(to_usize(l))).unwrap_or(&[])
    }

    /// Calls `f` with each key whose pattern matches `app`, each at most once,
    /// in no particular order, until `f` returns false. Returns false when
    /// stopped early.
    pub(super) fn for_each_match(&self, app: &AppId<'_>, mut f: impl FnMut(u32) -> bool) -> bool {
        let n = app.len_units();
        if !self.exact.is_empty() {
            let h = hash_units(&self.hasher, app.folded_units());
            let found = self.exact.find(h, |&k| {
                let p = self.pattern(k);
                p.len() == n && p.iter().copied().eq(app.folded_units())
            });
            if let Some(&k) = found
                && !f(k)
            {
                return false;
            }
        }
        let folded = |i: usize| app.unit(i).map_or(0, fold_unit);
        let probe = Probe::new(app);
        for (kind, lens) in [(SUFFIX, self.suffix_lens), (PREFIX, self.prefix_lens)] {
            let mut lens = lens;
            while lens != 0 {
                let l = usize::try_from(lens.trailing_zeros()).unwrap_or(0);
                lens &= lens.wrapping_sub(1);
                if l > n {
                    break;
                }
                let from = if kind == SUFFIX { n.saturating_sub(l) } else { 0 };
                let packed = pack((from..from.saturating_add(l)).map(folded));
                if !self.try_bucket((kind, len16(l), packed), app, &probe, &mut f) {
                    return false;
                }
            }
        }
        if self.components {
            let mut start = 0usize;
            for i in 0..=n {
                let u = folded(i);
                if i < n && u != BACKSLASH {
                    continue;
                }
                if i > start {
                    let packed = pack((start..i.min(start.saturating_add(ANCHOR_UNITS))).map(folded));
                    if !self.try_bucket((COMPONENT, len16(i.saturating_sub(start)), packed), app, &probe, &mut f) {
                        return false;
                    }
                }
                start = i.saturating_add(1);
            }
        }
        for &k in &self.always {
            if self.may_match(k, &probe) && self.key_matches(k, app) && !f(k) {
                return false;
            }
        }
        true
    }

    /// Tries the patterns filed under `anchor`; false when `f` said stop.
    fn try_bucket(&self, anchor: Anchor, app: &AppId<'_>, probe: &Probe, f: &mut impl FnMut(u32) -> bool) -> bool {
        let Some(b) = self.anchors.find(self.hasher.hash_one(anchor), |b| b.anchor == anchor) else {
            return true;
        };
        let s = to_usize(b.start);
        for &k in self.anchor_keys.get(s..s.saturating_add(to_usize(b.len))).unwrap_or(&[]) {
            if self.may_match(k, probe) && self.key_matches(k, app) && !f(k) {
                return false;
            }
        }
        true
    }

    /// False when the packed head or tail already rules key `k` out.
    fn may_match(&self, k: u32, probe: &Probe) -> bool {
        let [_, _, head, tail] = self.keys.get(to_usize(k)).copied().unwrap_or([0; 4]);
        let Some(&(head_print, tail_print)) = self.prints.get(to_usize(k)) else { return true };
        let t = to_usize(tail).min(ANCHOR_UNITS);
        let h = to_usize(head).min(ANCHOR_UNITS);
        if probe.last & low_units(t) != tail_print {
            return false;
        }
        // Shorter ids fail the full check anyway; only compare when the head fits.
        h > probe.first_len
            || probe
                .first
                .checked_shr(u32::try_from(probe.first_len.saturating_sub(h).saturating_mul(16)).unwrap_or(128))
                .unwrap_or(0)
                == head_print
    }

    /// Does any pattern match?
    pub(super) fn any_match(&self, app: &AppId<'_>) -> bool {
        !self.for_each_match(app, |_| false)
    }

    /// Does pattern `key` match? The literal head and tail are compared
    /// first (most candidates differ there within a few units); the wildcard
    /// matcher then only runs on the middle.
    pub(super) fn key_matches(&self, key: u32, app: &AppId<'_>) -> bool {
        let [_, _, head, tail] = self.keys.get(to_usize(key)).copied().unwrap_or([0; 4]);
        let (head, tail) = (to_usize(head), to_usize(tail));
        let p = self.pattern(key);
        let n = app.len_units();
        if head == p.len() {
            // No wildcard: plain case-insensitive equality.
            return p.len() == n && p.iter().copied().eq(app.folded_units());
        }
        if head.saturating_add(tail) > n {
            return false;
        }
        let tail_ok =
            p.iter().rev().take(tail).zip((0..n).rev()).all(|(&pu, i)| app.unit(i).map(fold_unit) == Some(pu));
        if !tail_ok || !p.iter().take(head).zip(0..n).all(|(&pu, i)| app.unit(i).map(fold_unit) == Some(pu)) {
            return false;
        }
        let middle = p.get(head..p.len().saturating_sub(tail)).unwrap_or(&[]);
        if middle.iter().all(|&u| u == STAR) {
            return true;
        }
        let bytes = app.as_bytes();
        match bytes.get(head.saturating_mul(2)..n.saturating_sub(tail).saturating_mul(2)) {
            // AppId drops trailing NUL units, which would shorten the middle: use the whole id.
            Some(mid) if !mid.ends_with(&[0, 0]) => glob_match(middle, &AppId::from_utf16le(mid)),
            _ => glob_match(p, app),
        }
    }

    /// Bytes held.
    pub(super) fn bytes(&self) -> usize {
        self.units
            .capacity()
            .saturating_mul(2)
            .saturating_add(self.keys.capacity().saturating_mul(16))
            .saturating_add(self.prints.capacity().saturating_mul(32))
            .saturating_add(self.exact.capacity().saturating_mul(5))
            .saturating_add(self.anchors.capacity().saturating_mul(size_of::<Bucket>().saturating_add(1)))
            .saturating_add(self.anchor_keys.capacity().saturating_mul(4))
            .saturating_add(self.always.capacity().saturating_mul(4))
    }
}

/// How many app ids in 2^40 a pattern is expected to admit, for choosing
/// which condition of a rule to index: an exact path admits about one id, a
/// pattern with an anchor (a literal head, tail or whole component) a few,
/// and a pattern without one (`*`, `*foo*`) anything. Only speed depends on
/// this guess, never an answer.
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
