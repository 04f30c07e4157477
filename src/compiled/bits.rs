//! Rule-index sets: the "any" bitsets of each dimension and the posting
//! lists of each key (a CIDR, a port-tree node, a glob, a SID).
//!
//! A posting is stored dense (a bitset of all rules) when that is no larger
//! than its sorted index list, sparse otherwise, so memory stays linear in the
//! size of the rule set: a dense posting holds at least `rules / 32` entries.
//! Matching ORs postings into a stack block of [`BLOCK_WORDS`] words at a time
//! and never allocates.

use alloc::vec::Vec;

use crate::table::OutOfMemory;

/// Words (64 rules each) handled per block while matching.
pub(super) const BLOCK_WORDS: usize = 32;

/// Rules handled per block.
pub(super) const BLOCK_RULES: u32 = 64 * 32;

/// One block of rule bits on the stack.
pub(super) type Block = [u64; BLOCK_WORDS];

/// Where a posting's rule indices live.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Posting {
    /// A bitset of `words` words at this word offset of the bit pool.
    Dense(u32),
    /// A sorted, duplicate-free run of the index pool.
    Sparse {
        /// First entry.
        start: u32,
        /// Entry count.
        len: u32,
    },
}

/// The pools every posting and "any" bitset points into.
#[derive(Clone, Debug, Default)]
pub(super) struct Pools {
    /// Rules in the set.
    pub(super) rules: u32,
    /// Words per bitset: `ceil(rules / 64)`.
    pub(super) words: u32,
    bits: Vec<u64>,
    indices: Vec<u32>,
    postings: Vec<Posting>,
}

/// Sentinel for "no posting" / "no node".
pub(super) const NONE: u32 = u32::MAX;

pub(super) fn to_u32(n: usize) -> Result<u32, OutOfMemory> {
    u32::try_from(n).map_err(|_| OutOfMemory)
}

pub(super) fn to_usize(n: u32) -> usize {
    usize::try_from(n).unwrap_or(usize::MAX)
}

impl Pools {
    /// Empty pools for `rules` rules.
    pub(super) fn new(rules: u32) -> Self {
        Self { rules, words: rules.div_ceil(64), ..Self::default() }
    }

    /// Allocates a zeroed bitset and returns its word offset.
    fn new_bitset(&mut self) -> Result<u32, OutOfMemory> {
        let at = self.bits.len();
        let words = to_usize(self.words);
        self.bits.try_reserve(words).map_err(|_| OutOfMemory)?;
        self.bits.resize(at.saturating_add(words), 0);
        to_u32(at)
    }

    /// A bitset holding `members` (rule indices below `rules`, any order).
    pub(super) fn bitset(&mut self, members: impl Iterator<Item = u32>) -> Result<u32, OutOfMemory> {
        let at = self.new_bitset()?;
        for r in members {
            self.set(at, r);
        }
        Ok(at)
    }

    fn set(&mut self, at: u32, rule: u32) {
        let word = to_usize(at).saturating_add(to_usize(rule >> 6));
        if let Some(w) = self.bits.get_mut(word) {
            *w |= 1u64 << (rule & 63);
        }
    }

    /// Stores a posting from a sorted, duplicate-free index list and returns its id.
    pub(super) fn posting(&mut self, sorted: &[u32]) -> Result<u32, OutOfMemory> {
        let id = to_u32(self.postings.len())?;
        self.postings.try_reserve(1).map_err(|_| OutOfMemory)?;
        // Dense when the bitset (rules / 8 bytes) is no larger than the list (4 bytes each).
        let dense = u64::from(self.rules) <= (sorted.len() as u64).saturating_mul(32);
        let posting = if dense {
            let at = self.new_bitset()?;
            for &r in sorted {
                self.set(at, r);
            }
            Posting::Dense(at)
        } else {
            let start = to_u32(self.indices.len())?;
            self.indices.try_reserve(sorted.len()).map_err(|_| OutOfMemory)?;
            self.indices.extend_from_slice(sorted);
            Posting::Sparse { start, len: to_u32(sorted.len())? }
        };
        self.postings.push(posting);
        Ok(id)
    }

    /// Copies words `[word, word + n)` of the bitset at `at` into `out`.
    pub(super) fn copy_block(&self, at: u32, word: usize, n: usize, out: &mut Block) {
        let start = to_usize(at).saturating_add(word);
        if let Some(src) = self.bits.get(start..start.saturating_add(n)) {
            for (o, s) in out.iter_mut().zip(src) {
                *o = *s;
            }
        }
    }

    /// ORs the block of posting `id` that starts at rule word `word` into `out`.
    pub(super) fn or_block(&self, id: u32, word: usize, n: usize, out: &mut Block) {
        match self.postings.get(to_usize(id)) {
            Some(&Posting::Dense(at)) => {
                let start = to_usize(at).saturating_add(word);
                if let Some(src) = self.bits.get(start..start.saturating_add(n)) {
                    for (o, s) in out.iter_mut().zip(src) {
                        *o |= *s;
                    }
                }
            }
            Some(&Posting::Sparse { start, len }) => {
                let start = to_usize(start);
                let Some(list) = self.indices.get(start..start.saturating_add(to_usize(len))) else {
                    return;
                };
                let lo = u64::try_from(word).unwrap_or(u64::MAX).saturating_mul(64);
                let hi = lo.saturating_add(u64::try_from(n).unwrap_or(0).saturating_mul(64));
                let first = list.partition_point(|&r| u64::from(r) < lo);
                for &r in list.get(first..).unwrap_or(&[]) {
                    let r = u64::from(r);
                    if r >= hi {
                        break;
                    }
                    let rel = r.saturating_sub(lo);
                    if let Some(w) = out.get_mut(usize::try_from(rel >> 6).unwrap_or(usize::MAX)) {
                        *w |= 1u64 << (rel & 63);
                    }
                }
            }
            None => {}
        }
    }

    /// Bytes held by the pools.
    pub(super) fn bytes(&self) -> usize {
        self.bits
            .capacity()
            .saturating_mul(8)
            .saturating_add(self.indices.capacity().saturating_mul(4))
            .saturating_add(self.postings.capacity().saturating_mul(size_of::<Posting>()))
    }
}

/// Groups `(key, rule)` pairs (sorted by key then rule) into runs of equal
/// keys, calling `f(key, rules)` once per run with duplicate rules removed.
/// `scratch` is reused between runs.
pub(super) fn for_each_group<K: Copy + PartialEq>(
    pairs: &[(K, u32)],
    scratch: &mut Vec<u32>,
    mut f: impl FnMut(K, &[u32]) -> Result<(), OutOfMemory>,
) -> Result<(), OutOfMemory> {
    let mut rest = pairs;
    while let Some(&(key, _)) = rest.first() {
        let run = rest.iter().take_while(|(k, _)| *k == key).count();
        let (group, tail) = rest.split_at(run);
        scratch.clear();
        scratch.try_reserve(group.len()).map_err(|_| OutOfMemory)?;
        for &(_, r) in group {
            if scratch.last() != Some(&r) {
                scratch.push(r);
            }
        }
        f(key, scratch)?;
        rest = tail;
    }
    Ok(())
}
