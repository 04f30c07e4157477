//! Posting lists: for each index key (a CIDR, a port-tree node, a glob, a
//! SID, a protocol), the ascending indices of the rules filed under it.
//!
//! Every list lives in one shared pool, so a key carries only a
//! `(start, len)` pair and memory is linear in the number of conditions.
//! Matching walks a list from its front and stops at the first rule at or
//! past the best answer so far, which is why the lists are sorted.

use alloc::vec::Vec;

use crate::table::OutOfMemory;

/// Sentinel for "no rule" / "no node".
pub(super) const NONE: u32 = u32::MAX;

pub(super) fn to_u32(n: usize) -> Result<u32, OutOfMemory> {
    u32::try_from(n).map_err(|_| OutOfMemory)
}

pub(super) fn to_usize(n: u32) -> usize {
    usize::try_from(n).unwrap_or(usize::MAX)
}

/// A run of the pool: one sorted, duplicate-free list of rule indices.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(super) struct Posting {
    start: u32,
    len: u32,
}

/// The pool every posting points into.
#[derive(Clone, Debug, Default)]
pub(super) struct Pool {
    indices: Vec<u32>,
}

impl Pool {
    /// Stores a sorted, duplicate-free index list.
    pub(super) fn add(&mut self, sorted: &[u32]) -> Result<Posting, OutOfMemory> {
        let start = to_u32(self.indices.len())?;
        self.indices.try_reserve(sorted.len()).map_err(|_| OutOfMemory)?;
        self.indices.extend_from_slice(sorted);
        Ok(Posting { start, len: to_u32(sorted.len())? })
    }

    /// The rule indices of a posting (empty for a posting of another pool).
    #[inline]
    pub(super) fn get(&self, p: Posting) -> &[u32] {
        let start = to_usize(p.start);
        self.indices.get(start..start.saturating_add(to_usize(p.len))).unwrap_or(&[])
    }

    /// Bytes held.
    pub(super) fn bytes(&self) -> usize {
        self.indices.capacity().saturating_mul(4)
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
