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

/// Nodes with rules, per level: `(node index, posting)`, sorted by index.
#[derive(Clone, Debug, Default)]
pub(super) struct PortTree {
    levels: [Vec<(u32, Posting)>; LEVELS],
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
            let Some(list) = tree.levels.get_mut(usize::try_from(level).unwrap_or(usize::MAX)) else {
                return Ok(());
            };
            list.try_reserve(1).map_err(|_| OutOfMemory)?;
            list.push((node, posting));
            Ok(())
        })?;
        Ok(tree)
    }

    /// The postings on the path from the root to `port`'s leaf.
    pub(super) fn path(&self, port: u16) -> impl Iterator<Item = Posting> + '_ {
        self.levels.iter().zip(0u32..).filter_map(move |(list, level)| {
            let node = u32::from(port) >> shift(level);
            list.binary_search_by_key(&node, |&(n, _)| n).ok().and_then(|i| list.get(i)).map(|&(_, p)| p)
        })
    }

    /// Bytes held.
    pub(super) fn bytes(&self) -> usize {
        self.levels
            .iter()
            .map(|l| l.capacity().saturating_mul(size_of::<(u32, Posting)>()))
            .fold(0, usize::saturating_add)
    }
}
