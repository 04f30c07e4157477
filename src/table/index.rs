//! The bounded table's hash index: slot numbers in a fixed open-addressing
//! array, linear probing, deletion by backward shift.
//!
//! Sized once for the table's capacity (a power of two, at least twice the
//! capacity, so that probe runs stay short), it never grows and never leaves
//! tombstones: inserting cannot reach an allocation or a rehash, so the
//! kernel's classify path carries no growth code (and none of the
//! allocation-failure handling behind it) on its small stack.

use alloc::vec::Vec;

use super::{NIL, OutOfMemory};

/// Slot numbers by hash. `NIL` marks an empty bucket.
#[derive(Clone, Debug)]
pub(super) struct SlotIndex {
    buckets: Vec<u32>,
    mask: usize,
}

impl SlotIndex {
    /// Room for `capacity` slot numbers, reserved now.
    pub(super) fn with_capacity(capacity: usize) -> Result<Self, OutOfMemory> {
        let n = capacity.checked_mul(2).and_then(usize::checked_next_power_of_two).ok_or(OutOfMemory)?.max(2);
        let mut buckets = Vec::new();
        buckets.try_reserve_exact(n).map_err(|_| OutOfMemory)?;
        buckets.resize(n, NIL);
        Ok(Self { buckets, mask: n.saturating_sub(1) })
    }

    /// Bytes reserved.
    pub(super) fn bytes(&self) -> usize {
        self.buckets.capacity().saturating_mul(size_of::<u32>())
    }

    #[expect(clippy::cast_possible_truncation, reason = "masked to a bucket number")]
    const fn home(&self, hash: u64) -> usize {
        hash as usize & self.mask
    }

    const fn next(&self, at: usize) -> usize {
        at.wrapping_add(1) & self.mask
    }

    /// The bucket holding the first slot number of `hash`'s probe run that
    /// `is` accepts.
    fn position(&self, hash: u64, mut is: impl FnMut(u32) -> bool) -> Option<usize> {
        let mut at = self.home(hash);
        // Bounded by the bucket count; an empty bucket ends the run first
        // (the index is never more than half full).
        for _ in 0..self.buckets.len() {
            let slot = *self.buckets.get(at)?;
            if slot == NIL {
                return None;
            }
            if is(slot) {
                return Some(at);
            }
            at = self.next(at);
        }
        None
    }

    /// The first slot number in `hash`'s probe run that `is` accepts.
    pub(super) fn find(&self, hash: u64, is: impl FnMut(u32) -> bool) -> Option<u32> {
        self.position(hash, is).and_then(|at| self.buckets.get(at).copied())
    }

    /// Adds `slot` under `hash`. False (nothing added) only when every bucket
    /// is taken, which the table's capacity rules out.
    pub(super) fn insert(&mut self, hash: u64, slot: u32) -> bool {
        match self.first_empty(hash).and_then(|at| self.buckets.get_mut(at)) {
            Some(b) => {
                *b = slot;
                true
            }
            None => false,
        }
    }

    fn first_empty(&self, hash: u64) -> Option<usize> {
        let mut at = self.home(hash);
        for _ in 0..self.buckets.len() {
            if *self.buckets.get(at)? == NIL {
                return Some(at);
            }
            at = self.next(at);
        }
        None
    }

    /// Removes `slot`, filed under `hash`, and closes the gap: each later
    /// entry of the run whose home is at or before the hole moves into it.
    /// `hash_of` gives the hash a slot number was filed under.
    pub(super) fn remove(&mut self, hash: u64, slot: u32, hash_of: impl Fn(u32) -> u64) {
        let Some(mut hole) = self.position(hash, |s| s == slot) else { return };
        if let Some(b) = self.buckets.get_mut(hole) {
            *b = NIL;
        }
        let mut at = self.next(hole);
        for _ in 0..self.buckets.len() {
            let Some(&moved) = self.buckets.get(at) else { return };
            if moved == NIL {
                return;
            }
            let home = self.home(hash_of(moved));
            // The hole lies cyclically within [home, at): the entry may move back.
            if at.wrapping_sub(home) & self.mask >= at.wrapping_sub(hole) & self.mask {
                if let Some(b) = self.buckets.get_mut(hole) {
                    *b = moved;
                }
                if let Some(b) = self.buckets.get_mut(at) {
                    *b = NIL;
                }
                hole = at;
            }
            at = self.next(at);
        }
    }

    /// Empties every bucket.
    #[cfg(test)]
    pub(super) fn clear(&mut self) {
        self.buckets.fill(NIL);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every hash lands on bucket 15 or 0 (of 16): long runs that wrap.
    #[test]
    fn colliding_runs_survive_removals_in_any_order() {
        let mut ix = SlotIndex::with_capacity(8).unwrap();
        let hash_of = |s: u32| u64::from(s % 2) + 15;
        let mut present: Vec<u32> = (0..8).collect();
        for &s in &present {
            assert!(ix.insert(hash_of(s), s));
        }
        for gone in [3, 0, 6, 1, 7] {
            ix.remove(hash_of(gone), gone, hash_of);
            present.retain(|&s| s != gone);
            for s in 0..8 {
                assert_eq!(
                    ix.find(hash_of(s), |x| x == s).is_some(),
                    present.contains(&s),
                    "slot {s} after removing {gone}"
                );
            }
        }
        for s in [3, 0] {
            assert!(ix.insert(hash_of(s), s));
            assert_eq!(ix.find(hash_of(s), |x| x == s), Some(s));
        }
        ix.clear();
        assert_eq!(ix.find(hash_of(2), |x| x == 2), None);
    }
}
