//! `remote_ports` as a segment tree of fan-out 16 over the 65,536 ports.
//!
//! Level `l` (0..=4) has `16^l` nodes, node `i` covering ports
//! `[i << s, (i + 1) << s)` with `s = 16 - 4l`. A range is stored at the
//! canonical nodes it covers whole (at most 15 per side per level), so memory
//! stays linear in the number of ranges, and a lookup reads exactly one node
//! per level: five binary searches. Ranges may overlap freely, which rules out
//! the nested-interval trick used for CIDRs.

use alloc::vec::Vec;

use super::postings::{Pool, Posting, for_each_group};
use crate::policy::PortRange;
use crate::table::OutOfMemory;

/// Tree depth below the root.
const LEVELS: usize = 5;

/// Shift from a port to its node index at `level`.
const fn shift(level: u32) -> u32 {
    16u32.saturating_sub(level.saturating_mul(4))
}

/// The nodes of one level that hold rules: a bitmap over the level's
/// `16^level` nodes, the number of set bits before each bitmap word, and the
/// postings in node order, so finding a node's posting is one bit test and
/// one popcount.
#[derive(Clone, Debug, Default)]
struct Level {
    bits: Vec<u64>,
    rank: Vec<u32>,
    postings: Vec<Posting>,
}

impl Level {
    fn get(&self, node: usize) -> Option<Posting> {
        let (w, b) = (node / 64, node % 64);
        let word = *self.bits.get(w)?;
        if word & (1 << b) == 0 {
            return None;
        }
        let before = (word & ((1u64 << b).wrapping_sub(1))).count_ones();
        let i = self.rank.get(w)?.saturating_add(before);
        self.postings.get(usize::try_from(i).ok()?).copied()
    }
}

/// Nodes with rules, per level.
#[derive(Clone, Debug, Default)]
pub(super) struct PortTree {
    levels: [Level; LEVELS],
}

/// Calls `emit(level, node)` for each canonical node of `[lo, hi]`.
fn decompose(
    lo: u32,
    hi: u32,
    level: u32,
    node: u32,
    emit: &mut impl FnMut(u32, u32) -> Result<(), OutOfMemory>,
) -> Result<(), OutOfMemory> {
    let s = shift(level);
    let first = node << s;
    let last = first | ((1u32 << s).saturating_sub(1));
    if last < lo || first > hi {
        return Ok(());
    }
    if lo <= first && last <= hi {
        return emit(level, node);
    }
    if level >= 4 {
        return Ok(());
    }
    for child in 0..16u32 {
        decompose(lo, hi, level.saturating_add(1), (node << 4) | child, emit)?;
    }
    Ok(())
}

impl PortTree {
    /// Builds the tree from `(range, rule)` pairs; empty (inverted) ranges hold nothing.
    pub(super) fn build(ranges: &[(PortRange, u32)], pool: &mut Pool) -> Result<Self, OutOfMemory> {
        let mut pairs: Vec<((u32, u32), u32)> = Vec::new();
        for &(range, rule) in ranges {
            if range.lo > range.hi {
                continue;
            }
            decompose(u32::from(range.lo), u32::from(range.hi), 0, 0, &mut |level, node| {
                pairs.try_reserve(1).map_err(|_| OutOfMemory)?;
                pairs.push(((level, node), rule));
                Ok(())
            })?;
        }
        pairs.sort_unstable();
        let mut tree = Self::default();
        let mut scratch = Vec::new();
        for_each_group(&pairs, &mut scratch, |(level, node), rules| {
            let posting = pool.add(rules)?;
            let (Some(l), Ok(node)) =
                (tree.levels.get_mut(usize::try_from(level).unwrap_or(usize::MAX)), usize::try_from(node))
            else {
                return Ok(());
            };
            if l.bits.is_empty() {
                let words = 1usize.checked_shl(level.saturating_mul(4)).unwrap_or(0).div_ceil(64);
                l.bits.try_reserve_exact(words).map_err(|_| OutOfMemory)?;
                l.bits.resize(words, 0);
                l.rank.try_reserve_exact(words).map_err(|_| OutOfMemory)?;
                l.rank.resize(words, 0);
            }
            if let Some(w) = l.bits.get_mut(node / 64) {
                *w |= 1 << (node % 64);
            }
            l.postings.try_reserve(1).map_err(|_| OutOfMemory)?;
            l.postings.push(posting);
            Ok(())
        })?;
        for l in &mut tree.levels {
            let mut total = 0u32;
            for (r, w) in l.rank.iter_mut().zip(&l.bits) {
                *r = total;
                total = total.saturating_add(w.count_ones());
            }
        }
        Ok(tree)
    }

    /// The postings on the path from the root to `port`'s leaf (levels
    /// without rules cost one test).
    #[inline]
    pub(super) fn path(&self, port: u16) -> impl Iterator<Item = Posting> + '_ {
        self.levels
            .iter()
            .zip(0u32..)
            .filter(|(l, _)| !l.postings.is_empty())
            .filter_map(move |(l, level)| l.get(usize::try_from(u32::from(port) >> shift(level)).unwrap_or(usize::MAX)))
    }

    /// Bytes held.
    pub(super) fn bytes(&self) -> usize {
        self.levels
            .iter()
            .map(|l| {
                (l.bits.capacity().saturating_mul(8))
                    .saturating_add(l.rank.capacity().saturating_mul(4))
                    .saturating_add(l.postings.capacity().saturating_mul(8))
            })
            .fold(0, usize::saturating_add)
    }
}
