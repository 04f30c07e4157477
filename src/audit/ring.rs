//! The driver's bounded audit log, with one drain cursor per reader.
//!
//! [`AuditRing`] is a byte ring reserved up front. Writers never wait: when
//! it is full, the oldest records are dropped to make room and counted.
//! Readers are the open handles that drain it. Each has its own cursor (the
//! next sequence number it wants) and its own count of records it missed.
//! A record is freed early only when every reader has acknowledged it, so no
//! reader can discard what another has not read; a reader that stops reading
//! costs the others nothing, since the ring then drops the oldest record as
//! it would with no reader at all, and counts it against the readers that
//! had not seen it.

use alloc::vec::Vec;

use crate::audit::{AuditRecord, DepartureRecord, EventRef, RecordRef};
use crate::table::OutOfMemory;
use crate::wire::{Reader, Writer};

/// Bytes before the records in a drain reply body: next cursor (u64), lost
/// (u64), pending (u32), count (u32).
pub const DRAIN_HEADER_LEN: usize = 24;
/// Bytes before each record in a drain reply and in the ring: sequence (u64), length (u32).
pub const ENTRY_HEADER_LEN: usize = 12;
/// How many handles may drain at once (each holds a reader slot until it is closed).
pub const MAX_READERS: usize = 16;

/// The audit ring's state.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RingStats {
    /// Bytes reserved.
    pub capacity: u32,
    /// Bytes held.
    pub used: u32,
    /// Records held.
    pub held: u32,
    /// Readers holding a cursor.
    pub readers: u32,
    /// Records dropped to make room before every reader had read them, since load.
    pub dropped: u64,
    /// Records too large for the ring (kept as empty placeholders), since load.
    pub oversized: u64,
    /// The sequence number the next record gets.
    pub next_seq: u64,
}

/// Why a drain could not be answered; nothing changed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DrainError {
    /// The cursor is past the newest record.
    CursorAhead,
    /// The reply body needs this many bytes to carry the next record.
    TooSmall(usize),
    /// Every reader slot is taken by another handle.
    TooManyReaders,
}

/// One reader's position, keyed by the handle it drains through.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ReaderState {
    /// The handle (the driver's file object identity).
    pub id: u64,
    /// Everything before this sequence number the reader has acknowledged.
    pub acked: u64,
    /// The next sequence number it has not been sent yet.
    pub sent: u64,
    /// Records dropped before this reader was sent them.
    pub missed: u64,
}

/// The driver's bounded log of encoded audit records.
///
/// Entries are contiguous: sequence (u64), length (u32), the record. When the
/// space after the newest entry is too small, writing wraps to the start and
/// the oldest entries are dropped (and counted) until the new one fits.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AuditRing {
    buf: Vec<u8>,
    /// Offset of the oldest entry.
    head: usize,
    /// Offset where the next entry goes.
    tail: usize,
    /// When wrapped: where the entries in the upper part end.
    wrap_at: Option<usize>,
    first_seq: u64,
    next_seq: u64,
    dropped: u64,
    oversized: u64,
    /// At most [`MAX_READERS`], reserved up front.
    readers: Vec<ReaderState>,
}

impl AuditRing {
    /// Reserves `capacity` bytes (at least one entry header, at most `u32::MAX`)
    /// and room for [`MAX_READERS`] readers.
    pub fn new(capacity: usize) -> Result<Self, OutOfMemory> {
        let capacity = capacity.clamp(ENTRY_HEADER_LEN, u32::MAX as usize);
        let mut buf = Vec::new();
        buf.try_reserve_exact(capacity).map_err(|_| OutOfMemory)?;
        // Within the reservation: no further allocation.
        buf.resize(capacity, 0);
        let mut readers = Vec::new();
        readers.try_reserve_exact(MAX_READERS).map_err(|_| OutOfMemory)?;
        Ok(Self { buf, head: 0, tail: 0, wrap_at: None, first_seq: 0, next_seq: 0, dropped: 0, oversized: 0, readers })
    }

    /// Bytes reserved.
    pub fn capacity(&self) -> usize {
        self.buf.len()
    }

    /// Records held.
    pub const fn held(&self) -> u64 {
        self.next_seq.saturating_sub(self.first_seq)
    }

    /// True when no record is held.
    pub const fn is_empty(&self) -> bool {
        self.held() == 0
    }

    /// The oldest record's sequence number (the next one's, when empty).
    pub const fn first_seq(&self) -> u64 {
        self.first_seq
    }

    /// The sequence number the next record gets.
    pub const fn next_seq(&self) -> u64 {
        self.next_seq
    }

    /// Bytes held, entry headers included.
    pub fn used(&self) -> usize {
        match self.wrap_at {
            None => self.tail.saturating_sub(self.head),
            Some(w) => w.saturating_sub(self.head).saturating_add(self.tail),
        }
    }

    /// The ring's state.
    pub fn stats(&self) -> RingStats {
        let u32_of = |v: usize| u32::try_from(v).unwrap_or(u32::MAX);
        RingStats {
            capacity: u32_of(self.capacity()),
            used: u32_of(self.used()),
            held: u32::try_from(self.held()).unwrap_or(u32::MAX),
            readers: u32_of(self.readers.len()),
            dropped: self.dropped,
            oversized: self.oversized,
            next_seq: self.next_seq,
        }
    }

    /// One reader's position, if that handle has drained.
    pub fn reader(&self, id: u64) -> Option<&ReaderState> {
        self.readers.iter().find(|r| r.id == id)
    }

    /// Forgets a reader (its handle was closed) and frees what only it held back.
    pub fn remove_reader(&mut self, id: u64) {
        self.readers.retain(|r| r.id != id);
        self.release_acknowledged();
    }

    /// Appends an already encoded record, returning its sequence number.
    pub fn push(&mut self, record: &[u8]) -> u64 {
        self.push_with(record.len(), |slot| {
            // Lengths checked: copy_from_slice cannot panic.
            let same = slot.len() == record.len();
            if same {
                slot.copy_from_slice(record);
            }
            same
        })
    }

    /// Encodes a record straight into the ring (no allocation), returning
    /// its sequence number.
    pub fn push_record(&mut self, record: &AuditRecord<'_>) -> u64 {
        self.push_ref(&record.view())
    }

    /// Encodes a departure's record straight into the ring, as
    /// [`Self::push_record`] of [`DepartureRecord::record`] does, without
    /// first making the whole [`AuditRecord`] on the stack.
    pub fn push_departure(&mut self, departure: &DepartureRecord) -> u64 {
        self.push_ref(&RecordRef { seq: departure.seq, at: departure.at, event: EventRef::Departure(departure) })
    }

    /// Encodes a record given by its borrowed parts straight into the ring.
    pub(crate) fn push_ref(&mut self, record: &RecordRef<'_, '_>) -> u64 {
        let len = record.encoded_len();
        self.push_with(len, |slot| record.encode_into(slot).is_ok_and(|n| n == slot.len()))
    }

    /// Reserves an entry of `len` bytes and lets `fill` write it. A record
    /// that cannot fit (or that `fill` refuses) is kept as an empty
    /// placeholder, so its sequence number still tells the reader it is gone.
    fn push_with(&mut self, len: usize, fill: impl FnOnce(&mut [u8]) -> bool) -> u64 {
        let seq = self.next_seq;
        let fits = ENTRY_HEADER_LEN.checked_add(len).filter(|&n| n <= self.capacity() && u32::try_from(len).is_ok());
        let (need, len) = match fits {
            Some(n) => (n, len),
            None => (ENTRY_HEADER_LEN, 0),
        };
        let Some(at) = self.make_room(need) else {
            // The ring's bookkeeping is inconsistent (a bug): start over
            // rather than trust it, counting what was lost.
            self.reset_dropping();
            return self.push_placeholder(seq);
        };
        let written = self.buf.get_mut(at..at.saturating_add(need)).is_some_and(|entry| {
            let (header, payload) = entry.split_at_mut(ENTRY_HEADER_LEN);
            let mut w = Writer::new(header);
            let ok = w.u64(seq).and_then(|()| w.u32(u32::try_from(len).unwrap_or(0))).is_ok();
            // A record that does not fit is never handed to `fill`.
            ok && fits.is_some() && payload.len() == len && fill(payload)
        });
        if fits.is_none() || !written {
            self.oversized = self.oversized.saturating_add(1);
            // Rewrite as a placeholder in the same place.
            if let Some(header) = self.buf.get_mut(at..at.saturating_add(ENTRY_HEADER_LEN)) {
                let mut w = Writer::new(header);
                let _ = w.u64(seq).and_then(|()| w.u32(0));
            }
            self.tail = at.saturating_add(ENTRY_HEADER_LEN);
        } else {
            self.tail = at.saturating_add(need);
        }
        self.next_seq = seq.saturating_add(1);
        seq
    }

    fn push_placeholder(&mut self, seq: u64) -> u64 {
        self.oversized = self.oversized.saturating_add(1);
        if let Some(header) = self.buf.get_mut(..ENTRY_HEADER_LEN) {
            let mut w = Writer::new(header);
            let _ = w.u64(seq).and_then(|()| w.u32(0));
            self.head = 0;
            self.tail = ENTRY_HEADER_LEN;
            self.first_seq = seq;
        }
        self.next_seq = seq.saturating_add(1);
        seq
    }

    fn reset_dropping(&mut self) {
        for s in self.first_seq..self.next_seq {
            self.count_drop(s);
        }
        self.first_seq = self.next_seq;
        self.head = 0;
        self.tail = 0;
        self.wrap_at = None;
    }

    /// Counts record `seq` as dropped unread, against every reader not yet sent it.
    fn count_drop(&mut self, seq: u64) {
        // With no reader, every drop is a loss; otherwise only a record some reader was not sent.
        if self.readers.is_empty() || self.readers.iter().any(|r| r.sent <= seq) {
            self.dropped = self.dropped.saturating_add(1);
        }
        for r in &mut self.readers {
            if r.sent <= seq {
                r.missed = r.missed.saturating_add(1);
                r.sent = seq.saturating_add(1);
            }
            r.acked = r.acked.max(seq.saturating_add(1));
        }
    }

    /// Finds `need` contiguous free bytes, dropping the oldest entries as
    /// needed; returns where they start. `need` is at most the capacity.
    fn make_room(&mut self, need: usize) -> Option<usize> {
        // Each pass either writes, wraps once, or drops one entry, so the
        // loop ends within held() + 2 passes.
        let mut passes = self.held().saturating_add(3);
        while passes > 0 {
            passes = passes.saturating_sub(1);
            if self.is_empty() {
                self.head = 0;
                self.tail = 0;
                self.wrap_at = None;
            }
            match self.wrap_at {
                None => {
                    if self.capacity().saturating_sub(self.tail) >= need {
                        return Some(self.tail);
                    }
                    self.wrap_at = Some(self.tail);
                    self.tail = 0;
                }
                Some(_) => {
                    if self.head.saturating_sub(self.tail) >= need {
                        return Some(self.tail);
                    }
                    let seq = self.first_seq;
                    self.pop_oldest()?;
                    self.count_drop(seq);
                }
            }
        }
        None
    }

    /// The entry at `at`: sequence, record, and whole size.
    fn entry_at(&self, at: usize) -> Option<(u64, &[u8], usize)> {
        let mut r = Reader::new(self.buf.get(at..)?);
        let seq = r.u64().ok()?;
        let len = usize::try_from(r.u32().ok()?).ok()?;
        let payload = r.take(len).ok()?;
        Some((seq, payload, ENTRY_HEADER_LEN.checked_add(len)?))
    }

    /// Where the entry after the one at `at` (of `size` bytes) starts.
    fn after(&self, at: usize, size: usize, wrap_at: Option<usize>) -> (usize, Option<usize>) {
        let next = at.saturating_add(size);
        match wrap_at {
            Some(w) if next >= w => (0, None),
            _ => (next, wrap_at),
        }
    }

    /// Removes the oldest entry (not counting it); `None` if the ring is empty or inconsistent.
    fn pop_oldest(&mut self) -> Option<()> {
        if self.is_empty() {
            return None;
        }
        let (_, _, size) = self.entry_at(self.head)?;
        let (head, wrap_at) = self.after(self.head, size, self.wrap_at);
        self.head = head;
        self.wrap_at = wrap_at;
        self.first_seq = self.first_seq.saturating_add(1);
        if self.is_empty() {
            self.head = 0;
            self.tail = 0;
            self.wrap_at = None;
        }
        Some(())
    }

    /// The held records, oldest first: sequence number and record bytes.
    pub fn iter(&self) -> impl Iterator<Item = (u64, &[u8])> + '_ {
        let mut at = self.head;
        let mut wrap = self.wrap_at;
        let mut left = self.held();
        core::iter::from_fn(move || {
            if left == 0 {
                return None;
            }
            left = left.saturating_sub(1);
            let Some((seq, payload, size)) = self.entry_at(at) else {
                left = 0;
                return None;
            };
            (at, wrap) = self.after(at, size, wrap);
            Some((seq, payload))
        })
    }

    /// Frees the records every reader has acknowledged (none while nobody reads).
    fn release_acknowledged(&mut self) {
        let Some(upto) = self.readers.iter().map(|r| r.acked).min() else { return };
        while self.first_seq < upto && self.pop_oldest().is_some() {}
    }

    /// The slot for reader `id`, taken on its first drain.
    fn reader_slot(&mut self, id: u64, cursor: u64) -> Result<usize, DrainError> {
        if let Some(i) = self.readers.iter().position(|r| r.id == id) {
            return Ok(i);
        }
        if self.readers.len() >= MAX_READERS {
            return Err(DrainError::TooManyReaders);
        }
        // A new reader is charged for what was dropped before its cursor.
        let missed = self.first_seq.saturating_sub(cursor);
        self.readers.push(ReaderState { id, acked: cursor, sent: cursor, missed });
        Ok(self.readers.len().saturating_sub(1))
    }

    /// Answers reader `id`'s drain into `out` (a reply body): records that
    /// the records before `cursor` are acknowledged by this reader (and by no
    /// other), then writes the drain header and as many records from `cursor`
    /// on as fit in `max_bytes` (0: no limit) and in `out`. Returns the body
    /// length. On error nothing changed.
    pub fn drain(&mut self, id: u64, cursor: u64, max_bytes: u32, out: &mut [u8]) -> Result<usize, DrainError> {
        if cursor > self.next_seq {
            return Err(DrainError::CursorAhead);
        }
        if self.reader(id).is_none() && self.readers.len() >= MAX_READERS {
            return Err(DrainError::TooManyReaders);
        }
        let start = cursor.max(self.first_seq);
        let lost = self.first_seq.saturating_sub(cursor);
        let room = out.len().saturating_sub(DRAIN_HEADER_LEN);
        let budget = match max_bytes {
            0 => room,
            m => room.min(usize::try_from(m).unwrap_or(usize::MAX)),
        };
        // Size what fits first, so that nothing is written or released when
        // even the first record does not fit.
        let mut count = 0u32;
        let mut bytes = 0usize;
        let mut first_size = None;
        for (_, payload) in self.iter().filter(|(seq, _)| *seq >= start) {
            let size = ENTRY_HEADER_LEN.saturating_add(payload.len());
            first_size.get_or_insert(size);
            let Some(total) = bytes.checked_add(size).filter(|&t| t <= budget) else { break };
            bytes = total;
            count = count.saturating_add(1);
        }
        if count == 0
            && let Some(size) = first_size
        {
            return Err(DrainError::TooSmall(DRAIN_HEADER_LEN.saturating_add(size)));
        }
        let waiting = self.next_seq.saturating_sub(start);
        let pending = u32::try_from(waiting.saturating_sub(u64::from(count))).unwrap_or(u32::MAX);
        let next_cursor = start.saturating_add(u64::from(count));
        let mut w = Writer::new(out);
        let header =
            w.u64(next_cursor).and_then(|()| w.u64(lost)).and_then(|()| w.u32(pending)).and_then(|()| w.u32(count));
        if header.is_err() {
            return Err(DrainError::TooSmall(DRAIN_HEADER_LEN));
        }
        let take = usize::try_from(count).unwrap_or(usize::MAX);
        for (seq, payload) in self.iter().filter(|(seq, _)| *seq >= start).take(take) {
            let entry = w
                .u64(seq)
                .and_then(|()| w.u32(u32::try_from(payload.len()).unwrap_or(0)))
                .and_then(|()| w.put(payload));
            if entry.is_err() {
                // Sized above; unreachable unless the ring is inconsistent.
                return Err(DrainError::TooSmall(DRAIN_HEADER_LEN.saturating_add(bytes)));
            }
        }
        let written = w.written();
        let slot = self.reader_slot(id, cursor)?;
        if let Some(r) = self.readers.get_mut(slot) {
            r.acked = cursor;
            r.sent = next_cursor;
        }
        self.release_acknowledged();
        Ok(written)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn drain(ring: &mut AuditRing, id: u64, cursor: u64) -> (u64, u64, Vec<u64>) {
        let mut out = alloc::vec![0u8; 4096];
        let n = ring.drain(id, cursor, 0, &mut out).unwrap();
        let mut r = Reader::new(&out[..n]);
        let (next, lost, _pending, count) = (r.u64().unwrap(), r.u64().unwrap(), r.u32().unwrap(), r.u32().unwrap());
        let mut seqs = Vec::new();
        for _ in 0..count {
            seqs.push(r.u64().unwrap());
            let len = r.u32().unwrap() as usize;
            r.take(len).unwrap();
        }
        (next, lost, seqs)
    }

    /// Issue 12: with one shared cursor, any reader's drain acknowledged (and
    /// so discarded) every other reader's unread records, unreported.
    #[test]
    fn a_reader_cannot_acknowledge_another_readers_records() {
        let mut ring = AuditRing::new(4096).unwrap();
        for i in 0..4u8 {
            ring.push(&[i; 8]);
        }
        // The service reads 0..4 first.
        assert_eq!(drain(&mut ring, 1, 0).2, [0, 1, 2, 3]);
        // Another handle reads and acknowledges everything, twice.
        assert_eq!(drain(&mut ring, 2, 0).2, [0, 1, 2, 3]);
        let (next, _, _) = drain(&mut ring, 2, 4);
        assert_eq!(next, 4);
        // The service has not acknowledged: its records are still there.
        assert_eq!(ring.first_seq(), 0);
        let (next, lost, seqs) = drain(&mut ring, 1, 0);
        assert_eq!((next, lost, seqs), (4, 0, alloc::vec![0, 1, 2, 3]));
        // Once both acknowledged, the records are freed.
        drain(&mut ring, 1, 4);
        assert_eq!(ring.first_seq(), 4);
        assert_eq!(ring.stats().readers, 2);
        // A closed handle frees its slot and holds nothing back.
        ring.push(&[9; 8]);
        drain(&mut ring, 1, 5);
        assert_eq!(ring.first_seq(), 4, "reader 2 has not acknowledged record 4");
        ring.remove_reader(2);
        assert_eq!(ring.first_seq(), 5);
        assert_eq!(ring.stats().readers, 1);
    }

    /// Each reader's losses are counted against that reader only.
    #[test]
    fn the_ring_counts_what_each_reader_missed() {
        // Room for about three 8-byte records (20 bytes each).
        let mut ring = AuditRing::new(64).unwrap();
        ring.push(&[0; 8]);
        assert_eq!(drain(&mut ring, 1, 0).2, [0]);
        assert_eq!(drain(&mut ring, 2, 0).2, [0]);
        // Reader 1 keeps up; reader 2 stops reading.
        for i in 1..10u8 {
            ring.push(&[i; 8]);
            let c = u64::from(i);
            assert_eq!(drain(&mut ring, 1, c).2, [c]);
        }
        assert_eq!(ring.reader(1).unwrap().missed, 0);
        let slow = *ring.reader(2).unwrap();
        assert!(slow.missed > 0);
        let (next, lost, seqs) = drain(&mut ring, 2, 1);
        assert_eq!(lost, slow.missed, "the reply's loss is what the ring counted for this reader");
        assert_eq!(next, 10);
        assert_eq!(seqs.len() as u64 + lost, 9);
        assert_eq!(ring.stats().dropped, slow.missed);
    }

    #[test]
    fn reader_slots_are_bounded() {
        let mut ring = AuditRing::new(256).unwrap();
        ring.push(&[1; 4]);
        for id in 0..MAX_READERS as u64 {
            drain(&mut ring, id, 0);
        }
        let mut out = [0u8; 256];
        assert_eq!(ring.drain(999, 0, 0, &mut out), Err(DrainError::TooManyReaders));
        ring.remove_reader(3);
        assert!(ring.drain(999, 0, 0, &mut out).is_ok());
    }
}
