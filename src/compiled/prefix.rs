//! `remote` CIDRs as sorted interval tables, one per family.
//!
//! Prefixes are either nested or disjoint, so the distinct prefixes of a rule
//! set form a forest. The address space is cut into elementary intervals,
//! each labelled with the innermost prefix covering it; a lookup is one binary
//! search, then a walk up the parent links (at most 33 steps for IPv4, 129 for
//! IPv6, usually one or two). Memory is linear in the number of prefixes.

use alloc::vec::Vec;

use super::postings::{NONE, Pool, Posting, for_each_group, to_u32, to_usize};
use crate::table::OutOfMemory;

/// An address as an unsigned integer: `u32` for IPv4, `u128` for IPv6.
pub(super) trait Addr: Copy + Ord + Default {
    /// `self + 1`, or `None` past the end.
    fn succ(self) -> Option<Self>;
    /// The top `bits` bits (at most 24), as an index.
    fn top(self, bits: u32) -> usize;
    /// The first and last address of `self/prefix` (prefix clamped to `BITS`).
    fn range(self, prefix: u8) -> (Self, Self);
}

/// The two address widths share one implementation.
macro_rules! impl_addr {
    ($($t:ty),*) => {$(
        impl Addr for $t {
            fn succ(self) -> Option<Self> {
                self.checked_add(1)
            }
            #[inline]
            fn top(self, bits: u32) -> usize {
                usize::try_from(self.checked_shr(Self::BITS.saturating_sub(bits)).unwrap_or(0)).unwrap_or(0)
            }
            fn range(self, prefix: u8) -> (Self, Self) {
                let bits = u32::from(prefix).min(Self::BITS);
                let mask = Self::MAX.checked_shl(Self::BITS.saturating_sub(bits)).unwrap_or(0);
                (self & mask, self | !mask)
            }
        }
    )*};
}

impl_addr!(u32, u128);

/// One distinct prefix.
#[derive(Clone, Copy, Debug)]
struct Node {
    /// The innermost prefix strictly containing this one, or [`NONE`].
    parent: u32,
    /// Rules filed under this prefix.
    posting: Posting,
}

/// The interval table of one family.
#[derive(Clone, Debug, Default)]
pub(super) struct PrefixTable<A> {
    /// Interval starts, ascending; the first is always 0.
    starts: Vec<A>,
    /// Directory over the top `dir_bits` address bits: entry `j` is the
    /// number of starts whose top bits are below `j` (one more entry than
    /// slots), so a lookup searches only the starts of its own slot.
    dir: Vec<u32>,
    dir_bits: u32,
    /// Innermost node per interval, or [`NONE`].
    inner: Vec<u32>,
    nodes: Vec<Node>,
}

impl<A: Addr> PrefixTable<A> {
    /// Builds the table from `(first, last, rule)` triples.
    pub(super) fn build(mut items: Vec<((A, A), u32)>, pool: &mut Pool) -> Result<Self, OutOfMemory> {
        // Outer prefixes sort before the prefixes they contain.
        items.sort_unstable_by(|((s1, e1), r1), ((s2, e2), r2)| s1.cmp(s2).then(e2.cmp(e1)).then(r1.cmp(r2)));
        let mut ranges: Vec<(A, A)> = Vec::new();
        let mut nodes: Vec<Node> = Vec::new();
        let mut scratch = Vec::new();
        for_each_group(&items, &mut scratch, |range, rules| {
            let posting = pool.add(rules)?;
            ranges.try_reserve(1).map_err(|_| OutOfMemory)?;
            nodes.try_reserve(1).map_err(|_| OutOfMemory)?;
            ranges.push(range);
            nodes.push(Node { parent: NONE, posting });
            Ok(())
        })?;

        let mut table = Self { starts: Vec::new(), dir: Vec::new(), dir_bits: 0, inner: Vec::new(), nodes: Vec::new() };
        // At most one interval per prefix start, one per prefix end, and the first.
        let cap = ranges.len().saturating_mul(2).saturating_add(1);
        table.starts.try_reserve_exact(cap).map_err(|_| OutOfMemory)?;
        table.inner.try_reserve_exact(cap).map_err(|_| OutOfMemory)?;
        let mut stack: Vec<u32> = Vec::new();
        stack.try_reserve_exact(ranges.len()).map_err(|_| OutOfMemory)?;
        table.push(A::default(), NONE);
        for (id, &(start, _)) in ranges.iter().enumerate() {
            let id = to_u32(id)?;
            // Close every open prefix that ends before this one starts.
            while let Some(&top) = stack.last() {
                let Some(&(_, end)) = ranges.get(to_usize(top)) else { break };
                if end >= start {
                    break;
                }
                stack.pop();
                if let Some(after) = end.succ() {
                    table.push(after, stack.last().copied().unwrap_or(NONE));
                }
            }
            if let Some(node) = nodes.get_mut(to_usize(id)) {
                node.parent = stack.last().copied().unwrap_or(NONE);
            }
            table.push(start, id);
            stack.push(id);
        }
        while let Some(top) = stack.pop() {
            let Some(&(_, end)) = ranges.get(to_usize(top)) else { break };
            if let Some(after) = end.succ() {
                table.push(after, stack.last().copied().unwrap_or(NONE));
            }
        }
        table.nodes = nodes;
        // About four starts per slot: a lookup reads one slot and a cache line of starts.
        table.dir_bits = usize::BITS.saturating_sub((table.starts.len() / 4).leading_zeros()).min(20);
        let slots = 1usize << table.dir_bits;
        table.dir.try_reserve_exact(slots.saturating_add(1)).map_err(|_| OutOfMemory)?;
        let mut i = 0usize;
        for j in 0..=slots {
            while table.starts.get(i).is_some_and(|s| s.top(table.dir_bits) < j) {
                i = i.saturating_add(1);
            }
            table.dir.push(to_u32(i)?);
        }
        Ok(table)
    }

    /// Appends an interval; one starting where the last did replaces it.
    fn push(&mut self, start: A, node: u32) {
        if self.starts.last() == Some(&start) {
            if let Some(last) = self.inner.last_mut() {
                *last = node;
            }
            return;
        }
        self.starts.push(start);
        self.inner.push(node);
    }

    /// The innermost prefix holding `addr`, or [`NONE`].
    #[inline]
    pub(super) fn innermost(&self, addr: A) -> u32 {
        let j = addr.top(self.dir_bits);
        let (Some(&lo), Some(&hi)) = (self.dir.get(j), self.dir.get(j.saturating_add(1))) else { return NONE };
        let (lo, hi) = (to_usize(lo), to_usize(hi));
        let i = lo.saturating_add(self.starts.get(lo..hi).map_or(0, |s| s.partition_point(|&s| s <= addr)));
        i.checked_sub(1).and_then(|i| self.inner.get(i)).copied().unwrap_or(NONE)
    }

    /// The node's posting and its parent.
    #[inline]
    pub(super) fn step(&self, node: u32) -> Option<(Posting, u32)> {
        self.nodes.get(to_usize(node)).map(|n| (n.posting, n.parent))
    }

    /// Bytes held.
    pub(super) fn bytes(&self) -> usize {
        self.starts
            .capacity()
            .saturating_mul(size_of::<A>())
            .saturating_add(self.inner.capacity().saturating_mul(4))
            .saturating_add(self.dir.capacity().saturating_mul(4))
            .saturating_add(self.nodes.capacity().saturating_mul(size_of::<Node>()))
    }
}
