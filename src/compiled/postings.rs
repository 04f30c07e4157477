//! Posting lists: for each index key (a CIDR, a port-tree node, a glob, a
//! SID, a protocol), the ascending indices of the rules filed under it.
//!
//! Every list lives in one shared pool, so a key carries only a
//! `(start, len)` pair and memory is linear in the number of conditions.
//! Matching walks a list from its front and stops at the first rule at or
//! past the best answer so far, which is why the lists are sorted.
//!
//! Each entry carries a summary of its rule next to the index (protocol,
//! and the smallest range holding all its ports), so a candidate that fails
//! on those is turned away without reading the rule's own record: the
//! entries of one list are contiguous, the records are not.

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

/// One entry of a posting: a rule and what a flow must have to pass it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(super) struct Entry {
    /// The rule's index.
    pub(super) rule: u32,
    /// Every port the rule admits lies in `lo..=hi` (`1..=0` when none).
    pub(super) lo: u16,
    pub(super) hi: u16,
    /// The rule's protocol number, or [`ANY_PROTOCOL`].
    pub(super) protocol: u16,
}

/// [`Entry::protocol`] of a rule that takes any protocol.
pub(super) const ANY_PROTOCOL: u16 = 0x100;

impl Entry {
    /// Can a flow with this protocol and port pass the rule?
    #[inline]
    pub(super) fn admits(&self, protocol: u16, port: u16) -> bool {
        (self.protocol == ANY_PROTOCOL || self.protocol == protocol) && self.lo <= port && port <= self.hi
    }
}

/// The pool every posting points into: rule indices while the tables are
/// built, entries once [`Pool::finish`] has run.
#[derive(Clone, Debug, Default)]
pub(super) struct Pool {
    indices: Vec<u32>,
    entries: Vec<Entry>,
}

impl Pool {
    /// Stores a sorted, duplicate-free index list.
    pub(super) fn add(&mut self, sorted: &[u32]) -> Result<Posting, OutOfMemory> {
        let start = to_u32(self.indices.len())?;
        self.indices.try_reserve(sorted.len()).map_err(|_| OutOfMemory)?;
        self.indices.extend_from_slice(sorted);
        Ok(Posting { start, len: to_u32(sorted.len())? })
    }

    /// Turns every stored index into an entry, `summary` filling in the rest.
    pub(super) fn finish(&mut self, summary: impl Fn(u32) -> Entry) -> Result<(), OutOfMemory> {
        self.entries.try_reserve_exact(self.indices.len()).map_err(|_| OutOfMemory)?;
        self.entries.extend(self.indices.iter().map(|&r| summary(r)));
        self.indices = Vec::new();
        Ok(())
    }

    /// The entries of a posting (empty for a posting of another pool).
    #[inline]
    pub(super) fn get(&self, p: Posting) -> &[Entry] {
        let start = to_usize(p.start);
        self.entries.get(start..start.saturating_add(to_usize(p.len))).unwrap_or(&[])
    }

    /// Bytes held.
    pub(super) fn bytes(&self) -> usize {
        self.indices
            .capacity()
            .saturating_mul(4)
            .saturating_add(self.entries.capacity().saturating_mul(size_of::<Entry>()))
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
