//! App-id globs: which of a set of patterns match an app id, without trying
//! them all.
//!
//! - Patterns without a wildcard sit in a seeded ahash table of their folded
//!   units: one hash and one comparison.
//! - A pattern with a literal tail (`*\browser.exe`) can only match ids ending
//!   in that tail, so it is filed under its last (up to) eight units; a lookup
//!   hashes the id's last 1..=8 units, for the lengths in use, and tries only
//!   the patterns filed there. Patterns ending in a wildcard are filed the
//!   same way under their literal head (`\device\...\vendor\*`).
//! - The rest (`*`, `*foo*`) are tried one by one.
//!
//! Hash seeds come from the caller: attackers choose app ids.

use alloc::vec::Vec;
use core::hash::{BuildHasher, Hasher};

use ahash::RandomState;
use hashbrown::HashTable;

use super::bits::{to_u32, to_usize};
use crate::flow::AppId;
use crate::policy::glob_match;
use crate::table::OutOfMemory;

/// Pattern units `*` and `?`.
const STAR: u16 = b'*' as u16;
const QUESTION: u16 = b'?' as u16;

/// Most units an anchor keeps (eight 16-bit units fill a `u128`).
const ANCHOR_UNITS: usize = 8;

/// Anchor kinds, in the high nibble of a bucket tag.
const SUFFIX: u8 = 0;
const PREFIX: u8 = 1;

/// Patterns sharing one anchor.
#[derive(Clone, Copy, Debug)]
struct Bucket {
    /// `kind << 4 | length`.
    tag: u8,
    /// The anchor's folded units, packed big-end first.
    packed: u128,
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
    keys: Vec<(u32, u32)>,
    exact: HashTable<u32>,
    anchors: HashTable<Bucket>,
    anchor_keys: Vec<u32>,
    /// Bit `l` set when a suffix bucket of length `l` exists.
    suffix_lens: u16,
    /// Same for prefix buckets.
    prefix_lens: u16,
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

fn tag(kind: u8, len: usize) -> u8 {
    (kind << 4) | u8::try_from(len).unwrap_or(0)
}

impl GlobIndex {
    /// Indexes `patterns` (folded units, distinct).
    pub(super) fn build<'p>(
        patterns: impl ExactSizeIterator<Item = &'p [u16]> + Clone,
        hasher: RandomState,
    ) -> Result<Self, OutOfMemory> {
        let mut ix = Self {
            hasher,
            units: Vec::new(),
            keys: Vec::new(),
            exact: HashTable::new(),
            anchors: HashTable::new(),
            anchor_keys: Vec::new(),
            suffix_lens: 0,
            prefix_lens: 0,
            always: Vec::new(),
        };
        let total: usize = patterns.clone().map(<[u16]>::len).fold(0, usize::saturating_add);
        ix.units.try_reserve_exact(total).map_err(|_| OutOfMemory)?;
        ix.keys.try_reserve_exact(patterns.len()).map_err(|_| OutOfMemory)?;
        let mut anchored: Vec<(u8, u128, u32)> = Vec::new();
        let mut exact: Vec<u32> = Vec::new();
        for (p, key) in patterns.zip(0u32..) {
            ix.keys.push((to_u32(ix.units.len())?, to_u32(p.len())?));
            ix.units.extend_from_slice(p);
            let head = p.iter().take_while(|&&u| !is_wild(u)).count();
            let tail = p.iter().rev().take_while(|&&u| !is_wild(u)).count();
            let slot = if head == p.len() {
                exact.try_reserve(1).map_err(|_| OutOfMemory)?;
                exact.push(key);
                continue;
            } else if tail > 0 {
                let l = tail.min(ANCHOR_UNITS);
                ix.suffix_lens |= 1 << l;
                (tag(SUFFIX, l), pack(p.iter().skip(p.len().saturating_sub(l)).copied()))
            } else if head > 0 {
                let l = head.min(ANCHOR_UNITS);
                ix.prefix_lens |= 1 << l;
                (tag(PREFIX, l), pack(p.iter().take(l).copied()))
            } else {
                ix.always.try_reserve(1).map_err(|_| OutOfMemory)?;
                ix.always.push(key);
                continue;
            };
            anchored.try_reserve(1).map_err(|_| OutOfMemory)?;
            anchored.push((slot.0, slot.1, key));
        }

        let hasher = ix.hasher.clone();
        let keys = &ix.keys;
        let units = &ix.units;
        let key_hash = |k: &u32| {
            let (s, l) = keys.get(to_usize(*k)).copied().unwrap_or((0, 0));
            let s = to_usize(s);
            hash_units(&hasher, units.get(s..s.saturating_add(to_usize(l))).unwrap_or(&[]).iter().copied())
        };
        ix.exact.try_reserve(exact.len(), key_hash).map_err(|_| OutOfMemory)?;
        for k in exact {
            ix.exact.insert_unique(key_hash(&k), k, key_hash);
        }

        anchored.sort_unstable();
        ix.anchor_keys.try_reserve_exact(anchored.len()).map_err(|_| OutOfMemory)?;
        let bucket_hash = |b: &Bucket| hasher.hash_one((b.tag, b.packed));
        let mut rest = anchored.as_slice();
        while let Some(&(t, packed, _)) = rest.first() {
            let run = rest.iter().take_while(|&&(t2, p2, _)| t2 == t && p2 == packed).count();
            let (group, tail) = rest.split_at(run);
            let bucket = Bucket { tag: t, packed, start: to_u32(ix.anchor_keys.len())?, len: to_u32(run)? };
            ix.anchor_keys.extend(group.iter().map(|&(_, _, k)| k));
            ix.anchors.try_reserve(1, bucket_hash).map_err(|_| OutOfMemory)?;
            ix.anchors.insert_unique(bucket_hash(&bucket), bucket, bucket_hash);
            rest = tail;
        }
        Ok(ix)
    }

    fn pattern(&self, key: u32) -> &[u16] {
        let (s, l) = self.keys.get(to_usize(key)).copied().unwrap_or((0, 0));
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
        for (kind, lens) in [(SUFFIX, self.suffix_lens), (PREFIX, self.prefix_lens)] {
            let mut lens = lens;
            while lens != 0 {
                let l = usize::try_from(lens.trailing_zeros()).unwrap_or(0);
                lens &= lens.wrapping_sub(1);
                if l > n {
                    break;
                }
                let from = if kind == SUFFIX { n.saturating_sub(l) } else { 0 };
                let packed = pack(app.folded_units().skip(from).take(l));
                let t = tag(kind, l);
                let Some(b) =
                    self.anchors.find(self.hasher.hash_one((t, packed)), |b| b.tag == t && b.packed == packed)
                else {
                    continue;
                };
                let s = to_usize(b.start);
                for &k in self.anchor_keys.get(s..s.saturating_add(to_usize(b.len))).unwrap_or(&[]) {
                    if glob_match(self.pattern(k), app) && !f(k) {
                        return false;
                    }
                }
            }
        }
        for &k in &self.always {
            if glob_match(self.pattern(k), app) && !f(k) {
                return false;
            }
        }
        true
    }

    /// Does any pattern match?
    pub(super) fn any_match(&self, app: &AppId<'_>) -> bool {
        !self.for_each_match(app, |_| false)
    }

    /// Does pattern `key` match? (For candidates the tables could not narrow.)
    pub(super) fn key_matches(&self, key: u32, app: &AppId<'_>) -> bool {
        glob_match(self.pattern(key), app)
    }

    /// Bytes held.
    pub(super) fn bytes(&self) -> usize {
        self.units
            .capacity()
            .saturating_mul(2)
            .saturating_add(self.keys.capacity().saturating_mul(8))
            .saturating_add(self.exact.capacity().saturating_mul(5))
            .saturating_add(self.anchors.capacity().saturating_mul(size_of::<Bucket>().saturating_add(1)))
            .saturating_add(self.anchor_keys.capacity().saturating_mul(4))
            .saturating_add(self.always.capacity().saturating_mul(4))
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
