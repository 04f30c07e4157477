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
    /// The first and last address of `self/prefix` (prefix clamped to `BITS`).
    fn range(self, prefix: u8) -> (Self, Self);
}

impl Addr for u32 {
    fn succ(self) -> Option<Self> {
        self.checked_add(1)
    }
    fn range(self, prefix: u8) -> (Self, Self) {
        let bits = Self::from(prefix).min(Self::BITS);
        let mask = Self::MAX.checked_shl(Self::BITS.saturating_sub(bits)).unwrap_or(0);
        (self & mask, self | !mask)
    }
}

impl Addr for u128 {
    fn succ(self) -> Option<Self> {
        self.checked_add(1)
    }
    fn range(self, prefix: u8) -> (Self, Self) {
        let bits = u32::from(prefix).min(Self::BITS);
        let mask = Self::MAX.checked_shl(Self::BITS.saturating_sub(bits)).unwrap_or(0);
        (self & mask, self | !mask)
    }
}

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

        let mut table = Self { starts: Vec::new(), inner: Vec::new(), nodes: Vec::new() };
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
    pub(super) fn innermost(&self, addr: A) -> u32 {
        let i = self.starts.partition_point(|&s| s <= addr);
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
            .saturating_add(self.nodes.capacity().saturating_mul(size_of::<Node>()))
    }
}
