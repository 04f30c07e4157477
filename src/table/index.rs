//! The bounded table's hash index: slot numbers in a fixed open-addressing
//! array, linear probing, deletion by backward shift.
//!
//! Sized once for the table's capacity (a power of two, at least twice the
//! capacity, so that probe runs stay short), it never grows and never leaves
//! tombstones: inserting cannot reach an allocation or a rehash, so the
//! kernel's classify path carries no growth code (and none of the
//! allocation-failure handling behind it) on its small stack.
//!
//! Each bucket holds the slot number with the low 32 bits of its hash: a
//! probe compares those before it looks at the slot's key, and a backward
//! shift finds an entry's home bucket without hashing the key again.

use alloc::vec::Vec;

use super::OutOfMemory;

/// An empty bucket (no slot number is `u32::MAX`).
const EMPTY: u64 = u64::MAX;

/// Slot numbers by hash: each bucket is `hash as u32` in the high half and
/// the slot number in the low half, or [`EMPTY`].
#[derive(Clone, Debug)]
pub(super) struct SlotIndex {
    buckets: Vec<u64>,
    mask: usize,
}

#[expect(clippy::cast_possible_truncation, reason = "the halves of a bucket, and hashes masked to a bucket number")]
impl SlotIndex {
    /// Room for `capacity` slot numbers, reserved now. At most 2^32 buckets:
    /// a home bucket is taken from the 32 hash bits a bucket keeps.
    pub(super) fn with_capacity(capacity: usize) -> Result<Self, OutOfMemory> {
        let n = capacity
            .checked_mul(2)
            .and_then(usize::checked_next_power_of_two)
            .filter(|&n| u64::try_from(n).is_ok_and(|n| n <= 1 << 32))
            .ok_or(OutOfMemory)?
            .max(2);
        let mut buckets = Vec::new();
        buckets.try_reserve_exact(n).map_err(|_| OutOfMemory)?;
        buckets.resize(n, EMPTY);
        Ok(Self { buckets, mask: n.saturating_sub(1) })
    }

    /// Bytes reserved.
    pub(super) fn bytes(&self) -> usize {
        self.buckets.capacity().saturating_mul(size_of::<u64>())
    }

    const fn home(&self, tag: u32) -> usize {
        tag as usize & self.mask
    }

    const fn next(&self, at: usize) -> usize {
        at.wrapping_add(1) & self.mask
    }

    /// The bucket holding the first slot number of `hash`'s probe run with
    /// the same hash bits that `is` accepts.
    fn position(&self, hash: u64, mut is: impl FnMut(u32) -> bool) -> Option<usize> {
        let tag = hash as u32;
        let mut at = self.home(tag);
        // Bounded by the bucket count; an empty bucket ends the run first
        // (the index is never more than half full).
        for _ in 0..self.buckets.len() {
            let b = *self.buckets.get(at)?;
            if b == EMPTY {
                return None;
            }
            if (b >> 32) as u32 == tag && is(b as u32) {
                return Some(at);
            }
            at = self.next(at);
        }
        None
    }

    /// The first slot number filed under `hash` that `is` accepts.
    pub(super) fn find(&self, hash: u64, is: impl FnMut(u32) -> bool) -> Option<u32> {
        self.position(hash, is).and_then(|at| self.buckets.get(at)).map(|&b| b as u32)
    }

    /// Adds `slot` under `hash`. False (nothing added) only when every bucket
    /// is taken, which the table's capacity rules out.
    pub(super) fn insert(&mut self, hash: u64, slot: u32) -> bool {
        let tag = hash as u32;
        let mut at = self.home(tag);
        for _ in 0..self.buckets.len() {
            let Some(b) = self.buckets.get_mut(at) else { return false };
            if *b == EMPTY {
                *b = u64::from(tag) << 32 | u64::from(slot);
                return true;
            }
            at = self.next(at);
        }
        false
    }

    /// Removes `slot`, filed under `hash`, and closes the gap: each later
    /// entry of the run whose home is at or before the hole moves into it.
    pub(super) fn remove(&mut self, hash: u64, slot: u32) {
        let Some(mut hole) = self.position(hash, |s| s == slot) else { return };
        if let Some(b) = self.buckets.get_mut(hole) {
            *b = EMPTY;
        }
        let mut at = self.next(hole);
        for _ in 0..self.buckets.len() {
            let Some(&moved) = self.buckets.get(at) else { return };
            if moved == EMPTY {
                return;
            }
            let home = self.home((moved >> 32) as u32);
            // The hole lies cyclically within [home, at): the entry may move back.
            if at.wrapping_sub(home) & self.mask >= at.wrapping_sub(hole) & self.mask {
                if let Some(b) = self.buckets.get_mut(hole) {
                    *b = moved;
                }
                if let Some(b) = self.buckets.get_mut(at) {
                    *b = EMPTY;
                }
                hole = at;
            }
            at = self.next(at);
        }
    }

    /// Empties every bucket.
    #[cfg(test)]
    pub(super) fn clear(&mut self) {
        self.buckets.fill(EMPTY);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every hash lands on bucket 15 or 0 (of 16): long runs that wrap, and
    /// pairs of slots with the very same hash.
    #[test]
    fn colliding_runs_survive_removals_in_any_order() {
        let mut ix = SlotIndex::with_capacity(8).unwrap();
        let hash_of = |s: u32| u64::from(s % 2) + 15;
        let mut present: Vec<u32> = (0..8).collect();
        for &s in &present {
            assert!(ix.insert(hash_of(s), s));
        }
        for gone in [3, 0, 6, 1, 7] {
            ix.remove(hash_of(gone), gone);
            present.retain(|&s| s != gone);
            for s in 0..8 {
                let found = ix.find(hash_of(s), |x| x == s).is_some();
                assert_eq!(found, present.contains(&s), "slot {s} after removing {gone}");
            }
        }
        for s in [3, 0] {
            assert!(ix.insert(hash_of(s), s));
            assert_eq!(ix.find(hash_of(s), |x| x == s), Some(s));
        }
        ix.clear();
        assert_eq!(ix.find(hash_of(2), |x| x == 2), None);
    }

    /// Hashes on the same home bucket are told apart by their kept bits
    /// before the caller is asked about the slot.
    #[test]
    fn hash_bits_filter_before_the_key() {
        let mut ix = SlotIndex::with_capacity(4).unwrap();
        assert!(ix.insert(0x1_0000_0003, 1));
        assert!(ix.insert(0x2_0000_0003, 2));
        assert!(ix.insert(0x0000_0103, 3));
        let mut asked = 0;
        let found = ix.find(0x0000_0103, |_| {
            asked += 1;
            true
        });
        assert_eq!((found, asked), (Some(3), 1), "1 and 2 (bits 3) are skipped unasked");
        // 1 and 2 keep the same 32 bits: the caller tells them apart.
        assert_eq!(ix.find(0x2_0000_0003, |s| s == 2), Some(2));
    }
}
