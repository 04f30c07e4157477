//! A bounded table with expiry and oldest-first eviction.
//!
//! Slots live in one vector reserved at start-up; a doubly linked list through
//! them keeps insertion order, which is also expiry order because every entry
//! of one table gets the same time to live. The hash index (`table/index.rs`) is a
//! fixed open-addressing array of slot numbers hashed with a seeded ahash
//! (attackers choose the 5-tuples). Every operation is O(1) and, once
//! [`BoundedTable::new`] has succeeded, allocation-free: the index is sized
//! for the capacity at least twice over and has no growth path at all.

use alloc::vec::Vec;
use core::hash::Hash;

use ahash::RandomState;

use crate::time::Instant;

mod index;

use index::SlotIndex;

const NIL: u32 = u32::MAX;

#[derive(Clone, Debug)]
struct Slot<K, V> {
    key: K,
    value: V,
    deadline: Instant,
    prev: u32,
    next: u32,
}

/// Why an entry left the table without being taken.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Departure {
    /// Its time to live ran out.
    Expired,
    /// The table was full and it was the oldest.
    Evicted,
}

/// A bounded map from `K` to `V` with per-entry deadlines.
#[derive(Clone, Debug)]
pub struct BoundedTable<K, V> {
    slots: Vec<Slot<K, V>>,
    index: SlotIndex,
    hasher: RandomState,
    /// Oldest live slot.
    head: u32,
    /// Newest live slot.
    tail: u32,
    /// First free slot (linked through `next`).
    free: u32,
    len: u32,
    capacity: u32,
}

impl<K: Copy + Eq + Hash, V: Copy> BoundedTable<K, V> {
    /// Reserves room for `capacity` entries (at most `u32::MAX - 1`).
    pub fn new(capacity: u32, hasher: RandomState) -> Result<Self, OutOfMemory> {
        let capacity = capacity.min(NIL - 1);
        let cap = usize::try_from(capacity).unwrap_or(usize::MAX);
        let mut slots = Vec::new();
        slots.try_reserve_exact(cap).map_err(|_| OutOfMemory)?;
        let index = SlotIndex::with_capacity(cap)?;
        Ok(Self { slots, index, hasher, head: NIL, tail: NIL, free: NIL, len: 0, capacity })
    }

    /// Live entries (expired ones not yet removed included).
    pub const fn len(&self) -> u32 {
        self.len
    }

    /// True when empty.
    pub const fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The configured capacity.
    pub const fn capacity(&self) -> u32 {
        self.capacity
    }

    /// Bytes this table holds, reserved ahead of time.
    pub fn reserved_bytes(&self) -> usize {
        let slot = size_of::<Slot<K, V>>();
        self.slots.capacity().saturating_mul(slot).saturating_add(self.index.bytes())
    }

    fn hash(&self, key: &K) -> u64 {
        self.hasher.hash_one(key)
    }

    fn slot(&self, i: u32) -> Option<&Slot<K, V>> {
        self.slots.get(usize::try_from(i).ok()?)
    }

    fn slot_mut(&mut self, i: u32) -> Option<&mut Slot<K, V>> {
        self.slots.get_mut(usize::try_from(i).ok()?)
    }

    fn find(&self, key: &K) -> Option<u32> {
        self.find_hashed(self.hash(key), key)
    }

    /// The value under `key`, unless it has expired by `now`.
    pub fn get(&self, key: &K, now: Instant) -> Option<&V> {
        let s = self.slot(self.find(key)?)?;
        (now < s.deadline).then_some(&s.value)
    }

    /// Unlinks slot `i` from the age list.
    fn unlink(&mut self, i: u32) {
        let Some(s) = self.slot(i) else { return };
        let (prev, next) = (s.prev, s.next);
        match self.slot_mut(prev) {
            Some(p) => p.next = next,
            None => self.head = next,
        }
        match self.slot_mut(next) {
            Some(n) => n.prev = prev,
            None => self.tail = prev,
        }
    }

    /// Links slot `i` as the newest.
    fn push_back(&mut self, i: u32) {
        let tail = self.tail;
        if let Some(s) = self.slot_mut(i) {
            s.prev = tail;
            s.next = NIL;
        }
        match self.slot_mut(tail) {
            Some(t) => t.next = i,
            None => self.head = i,
        }
        self.tail = i;
    }

    /// Removes slot `i` from the index and the age list, and frees it.
    fn release(&mut self, i: u32) -> Option<(K, V, Instant)> {
        let (key, value, deadline) = {
            let s = self.slot(i)?;
            (s.key, s.value, s.deadline)
        };
        self.index.remove(self.hasher.hash_one(key), i);
        self.unlink(i);
        let free = self.free;
        if let Some(s) = self.slot_mut(i) {
            s.next = free;
            s.prev = NIL;
        }
        self.free = i;
        self.len = self.len.saturating_sub(1);
        Some((key, value, deadline))
    }

    /// Takes the entry under `key` out of the table, expired or not.
    /// Returns the value and whether it was still live at `now`.
    pub fn remove(&mut self, key: &K, now: Instant) -> Option<(V, bool)> {
        let i = self.find(key)?;
        self.release(i).map(|(_, v, deadline)| (v, now < deadline))
    }

    fn find_hashed(&self, hash: u64, key: &K) -> Option<u32> {
        let slots = &self.slots;
        self.index.find(hash, |i| slots.get(i as usize).is_some_and(|s| s.key == *key))
    }

    /// Inserts or replaces the entry under `key`, live until `deadline`.
    ///
    /// A replaced entry becomes the newest. When the table is full, the oldest
    /// entry leaves first and is returned with why: expired if its deadline
    /// has passed, evicted otherwise. With capacity 0 nothing is stored.
    pub fn insert(&mut self, key: K, value: V, deadline: Instant, now: Instant) -> Option<(K, V, Departure)> {
        self.upsert(key, now, |_| (value, deadline, true))
    }

    /// Reads the live entry under `key` (if any) and writes back what `f`
    /// returns: the value, its deadline, and whether it becomes the newest
    /// entry (pass false only when the deadline does not move later, so that
    /// age order stays expiry order). One hash of `key` for the whole update.
    pub fn upsert(
        &mut self,
        key: K,
        now: Instant,
        f: impl FnOnce(Option<&V>) -> (V, Instant, bool),
    ) -> Option<(K, V, Departure)> {
        let hash = self.hash(&key);
        if let Some(i) = self.find_hashed(hash, &key) {
            let mut refresh = true;
            if let Some(s) = self.slot_mut(i) {
                let live = now < s.deadline;
                let (value, deadline, newest) = f(live.then_some(&s.value));
                s.value = value;
                s.deadline = deadline;
                refresh = newest;
            }
            if refresh {
                self.unlink(i);
                self.push_back(i);
            }
            return None;
        }
        if self.capacity == 0 {
            return None;
        }
        let (value, deadline, _) = f(None);
        let mut departed = None;
        if self.len >= self.capacity {
            let head = self.head;
            departed = self.release(head).map(|(k, v, d)| {
                let why = if d <= now { Departure::Expired } else { Departure::Evicted };
                (k, v, why)
            });
        }
        let slot = Slot { key, value, deadline, prev: NIL, next: NIL };
        let i = if let Some(s) = self.slot_mut(self.free) {
            let next_free = s.next;
            *s = slot;
            let i = self.free;
            self.free = next_free;
            i
        } else {
            // Never reallocates: `slots` was reserved for `capacity` and the
            // free list is empty only while fewer than `capacity` were used.
            if self.slots.len() >= self.slots.capacity() {
                return departed;
            }
            let Ok(i) = u32::try_from(self.slots.len()) else { return departed };
            self.slots.push(slot);
            i
        };
        if !self.index.insert(hash, i) {
            // Cannot happen (the index has twice the capacity's buckets);
            // should it, the slot goes back to the free list unused.
            let free = self.free;
            if let Some(s) = self.slot_mut(i) {
                s.next = free;
                s.prev = NIL;
            }
            self.free = i;
            return departed;
        }
        self.push_back(i);
        self.len = self.len.saturating_add(1);
        departed
    }

    /// Removes the oldest entry if it has expired by `now`.
    pub fn pop_expired(&mut self, now: Instant) -> Option<(K, V)> {
        let head = self.head;
        if self.slot(head)?.deadline > now {
            return None;
        }
        self.release(head).map(|(k, v, _)| (k, v))
    }

    /// Live entries, oldest first (for tests and snapshots).
    pub fn iter(&self) -> impl Iterator<Item = (&K, &V, Instant)> + '_ {
        let mut at = self.head;
        core::iter::from_fn(move || {
            let s = self.slot(at)?;
            at = s.next;
            Some((&s.key, &s.value, s.deadline))
        })
    }
}

/// A reservation failed: the allocator had no memory for the table.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct OutOfMemory;

impl core::fmt::Display for OutOfMemory {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str("out of memory while reserving a table")
    }
}

impl core::error::Error for OutOfMemory {}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(cap: u32) -> BoundedTable<u64, u32> {
        BoundedTable::new(cap, RandomState::with_seeds(1, 2, 3, 4)).unwrap()
    }
    const fn at(ms: u64) -> Instant {
        Instant::from_millis(ms)
    }

    #[test]
    fn evicts_oldest_when_full() {
        let mut tb = t(2);
        assert_eq!(tb.insert(1, 10, at(100), at(0)), None);
        assert_eq!(tb.insert(2, 20, at(100), at(0)), None);
        assert_eq!(tb.insert(3, 30, at(100), at(1)), Some((1, 10, Departure::Evicted)));
        assert_eq!(tb.get(&1, at(1)), None);
        assert_eq!(tb.get(&3, at(1)), Some(&30));
        // Replacing refreshes age: 2 becomes newest, so 3 is evicted next.
        tb.insert(2, 21, at(100), at(2));
        assert_eq!(tb.insert(4, 40, at(100), at(2)), Some((3, 30, Departure::Evicted)));
        assert_eq!(tb.len(), 2);
    }

    #[test]
    fn expiry() {
        let mut tb = t(4);
        tb.insert(1, 10, at(50), at(0));
        tb.insert(2, 20, at(80), at(0));
        assert_eq!(tb.get(&1, at(49)), Some(&10));
        assert_eq!(tb.get(&1, at(50)), None);
        assert_eq!(tb.pop_expired(at(60)), Some((1, 10)));
        assert_eq!(tb.pop_expired(at(60)), None);
        assert_eq!(tb.remove(&2, at(90)), Some((20, false)));
        assert!(tb.is_empty());
    }

    #[test]
    fn full_table_departure_of_expired_head() {
        let mut tb = t(1);
        tb.insert(1, 10, at(5), at(0));
        assert_eq!(tb.insert(2, 20, at(50), at(10)), Some((1, 10, Departure::Expired)));
    }

    #[test]
    fn upsert_updates_in_place_or_refreshes() {
        let mut tb = t(2);
        tb.insert(1, 10, at(100), at(0));
        tb.insert(2, 20, at(100), at(0));
        // Update 1 in place without refreshing: it stays the oldest.
        tb.upsert(1, at(1), |v| (v.copied().unwrap_or(0) + 1, at(100), false));
        assert_eq!(tb.get(&1, at(1)), Some(&11));
        assert_eq!(tb.insert(3, 30, at(100), at(2)), Some((1, 11, Departure::Evicted)));
        // An expired entry reads as absent to the update.
        tb.upsert(2, at(200), |v| {
            assert!(v.is_none());
            (0, at(300), true)
        });
        assert_eq!(tb.get(&2, at(200)), Some(&0));
    }

    #[test]
    fn zero_capacity_stores_nothing() {
        let mut tb = t(0);
        assert_eq!(tb.insert(1, 1, at(5), at(0)), None);
        assert_eq!(tb.get(&1, at(0)), None);
    }

    #[test]
    fn churn_keeps_order_and_index_consistent() {
        let mut tb = t(64);
        let n = if cfg!(miri) { 500 } else { 10_000u64 };
        for k in 0..n {
            tb.insert(k, k as u32, at(k + 1000), at(k));
            if k % 3 == 0 {
                tb.remove(&(k / 2), at(k));
            }
            assert!(tb.len() <= 64);
        }
        let keys: Vec<u64> = tb.iter().map(|(k, _, _)| *k).collect();
        let mut sorted = keys.clone();
        sorted.sort_unstable();
        assert_eq!(keys, sorted, "age order is insertion order");
        for k in keys {
            assert_eq!(tb.get(&k, at(n)), Some(&(k as u32)));
        }
    }
}
