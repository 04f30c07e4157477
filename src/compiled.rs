//! The compiled rule matcher: the same answers as [`RuleSet`]'s first-match
//! scan, without scanning rule by rule.
//!
//! Every rule condition is one of six dimensions (protocol, remote address,
//! remote port, package SID, app id, original app id). For a flow, each
//! dimension yields the set of rules it admits: the rules that leave the
//! dimension open (a precomputed bitset) plus the posting lists of the keys
//! the flow's value hits (one protocol; the nested CIDRs holding the address;
//! the port tree's nodes on the port's path; the SID; the matching globs). The
//! first rule in every set is the answer. Sets are intersected one block of
//! 2,048 rules at a time on the stack, cheap dimensions first, so a block
//! that no rule survives costs a few hundred word operations and matching
//! never allocates.
//!
//! If a flow's app id matches more distinct globs than the matcher keeps on
//! the stack ([`MATCHED_GLOBS`]), that dimension is left out of the
//! intersection and the surviving candidates are checked against their own
//! globs instead: the answer stays exact, only slower.
//!
//! [`CompiledRules::compile`] reserves everything with `try_reserve` and
//! fails with [`OutOfMemory`], never aborting. [`blob`] is the driver's
//! binary form of a rule set.

use alloc::vec::Vec;
use core::net::IpAddr;

use ahash::RandomState;

use crate::flow::{AppId, Flow, SidBuf};
use crate::policy::{Action, Glob, LoopPolicy, Policy, ProxyListeners, RuleHit, RuleSet};
use crate::table::OutOfMemory;

mod bits;
pub mod blob;
mod globs;
mod ports;
mod prefix;
#[cfg(test)]
mod tests;

use bits::{BLOCK_RULES, BLOCK_WORDS, Block, NONE, Pools, for_each_group, to_u32, to_usize};
use globs::{GlobIndex, dedup_patterns};
use ports::PortTree;
use prefix::{Addr, PrefixTable};

#[cfg(any(test, feature = "fuzzing"))]
pub use blob::fuzz_decode;
pub use blob::{BlobError, decode, decode_rule_set, decode_seeded, encode, swap_blob};

/// Most distinct globs of one dimension a match keeps track of on the stack.
pub const MATCHED_GLOBS: usize = 32;

/// Seeds used by [`CompiledRules::compile`] and [`decode`]. The driver should
/// pass random seeds ([`CompiledRules::compile_seeded`], [`decode_seeded`]).
pub const DEFAULT_SEED: [u64; 4] =
    [0x9e37_79b9_7f4a_7c15, 0xbf58_476d_1ce4_e5b9, 0x94d0_49bb_1331_11eb, 0x2545_f491_4f6c_dd1d];

/// The dimensions, in the order a match intersects them (cheapest first).
const PROTOCOL: usize = 0;
const REMOTE: usize = 1;
const PORTS: usize = 2;
const PACKAGE: usize = 3;
const APP: usize = 4;
const ORIGINAL_APP: usize = 5;
const DIMS: usize = 6;

/// An app-id dimension: the glob index, each glob's posting, and each rule's
/// globs (to check candidates when the stack list overflowed).
#[derive(Clone, Debug)]
struct GlobDim {
    index: GlobIndex,
    posting: Vec<u32>,
    rule_start: Vec<u32>,
    rule_keys: Vec<u32>,
}

/// Postings of the globs one app id matched.
struct Matched {
    postings: [u32; MATCHED_GLOBS],
    len: usize,
    overflow: bool,
}

impl Matched {
    fn postings(&self) -> &[u32] {
        self.postings.get(..self.len).unwrap_or(&[])
    }
}

impl GlobDim {
    fn build(
        rs: &RuleSet,
        globs: impl Fn(&crate::policy::Rule) -> &[Glob],
        hasher: RandomState,
        pools: &mut Pools,
    ) -> Result<Self, OutOfMemory> {
        let mut pairs: Vec<(&[u16], u32)> = Vec::new();
        let total = rs.rules.iter().map(|r| globs(r).len()).fold(0, usize::saturating_add);
        pairs.try_reserve_exact(total).map_err(|_| OutOfMemory)?;
        for (rule, i) in rs.rules.iter().zip(0u32..) {
            pairs.extend(globs(rule).iter().map(|g| (g.units(), i)));
        }
        let distinct = dedup_patterns(&mut pairs)?;
        let index = GlobIndex::build(distinct.iter().copied(), hasher)?;
        let mut posting = Vec::new();
        posting.try_reserve_exact(distinct.len()).map_err(|_| OutOfMemory)?;
        let mut scratch = Vec::new();
        for_each_group(&pairs, &mut scratch, |_, rules| {
            posting.push(pools.posting(rules)?);
            Ok(())
        })?;
        let mut rule_start = Vec::new();
        let mut rule_keys = Vec::new();
        rule_start.try_reserve_exact(rs.rules.len().saturating_add(1)).map_err(|_| OutOfMemory)?;
        rule_keys.try_reserve_exact(total).map_err(|_| OutOfMemory)?;
        for rule in &rs.rules {
            rule_start.push(to_u32(rule_keys.len())?);
            for g in globs(rule) {
                let key = distinct.binary_search(&g.units()).map_err(|_| OutOfMemory)?;
                rule_keys.push(to_u32(key)?);
            }
        }
        rule_start.push(to_u32(rule_keys.len())?);
        Ok(Self { index, posting, rule_start, rule_keys })
    }

    fn matches(&self, app: &AppId<'_>) -> Matched {
        let mut m = Matched { postings: [NONE; MATCHED_GLOBS], len: 0, overflow: false };
        self.index.for_each_match(app, |key| {
            let Some(slot) = m.postings.get_mut(m.len) else {
                m.overflow = true;
                return false;
            };
            *slot = self.posting.get(to_usize(key)).copied().unwrap_or(NONE);
            m.len = m.len.saturating_add(1);
            true
        });
        m
    }

    /// Does one of rule `rule`'s own globs match? (The slow check.)
    fn rule_matches(&self, rule: u32, app: &AppId<'_>) -> bool {
        let r = to_usize(rule);
        let (Some(&s), Some(&e)) = (self.rule_start.get(r), self.rule_start.get(r.saturating_add(1))) else {
            return false;
        };
        let keys = self.rule_keys.get(to_usize(s)..to_usize(e)).unwrap_or(&[]);
        keys.is_empty() || keys.iter().any(|&k| self.index.key_matches(k, app))
    }

    fn bytes(&self) -> usize {
        self.index.bytes().saturating_add(
            (self
                .posting
                .capacity()
                .saturating_add(self.rule_start.capacity())
                .saturating_add(self.rule_keys.capacity()))
            .saturating_mul(4),
        )
    }
}

/// A rule set compiled for matching: implements [`Policy`] with exactly the
/// answers of [`RuleSet`]'s reference scan.
#[derive(Clone, Debug)]
pub struct CompiledRules {
    loop_policy: LoopPolicy,
    proxy: ProxyListeners,
    id: u32,
    actions: Vec<Action>,
    pools: Pools,
    /// Per dimension: the bitset of rules that leave it open, or [`NONE`]
    /// when every rule does (the dimension is then skipped).
    any: [u32; DIMS],
    /// Posting per protocol number.
    protocol: Vec<u32>,
    v4: PrefixTable<u32>,
    v6: PrefixTable<u128>,
    ports: PortTree,
    /// `(SID, posting)`, sorted by the SID's bytes.
    package: Vec<(SidBuf, u32)>,
    app: GlobDim,
    original_app: GlobDim,
    trust: GlobIndex,
    known_proxies: GlobIndex,
}

/// The distinct glob patterns of a list, indexed.
fn glob_set(globs: &[Glob], hasher: RandomState) -> Result<GlobIndex, OutOfMemory> {
    let mut pairs: Vec<(&[u16], u32)> = Vec::new();
    pairs.try_reserve_exact(globs.len()).map_err(|_| OutOfMemory)?;
    pairs.extend(globs.iter().map(|g| (g.units(), 0)));
    let distinct = dedup_patterns(&mut pairs)?;
    GlobIndex::build(distinct.iter().copied(), hasher)
}

impl CompiledRules {
    /// Compiles with [`DEFAULT_SEED`].
    pub fn compile(rules: &RuleSet) -> Result<Self, OutOfMemory> {
        Self::compile_seeded(rules, DEFAULT_SEED)
    }

    /// Compiles, seeding the app-id hash tables with `seed` (draw it from a
    /// random source: attackers choose app ids).
    pub fn compile_seeded(rs: &RuleSet, seed: [u64; 4]) -> Result<Self, OutOfMemory> {
        let [a, b, c, d] = seed;
        let hasher = |n: u64| RandomState::with_seeds(a ^ n, b.rotate_left(11) ^ n, c, d.wrapping_add(n));
        let n = to_u32(rs.rules.len())?;
        let mut pools = Pools::new(n);

        let mut actions = Vec::new();
        actions.try_reserve_exact(rs.rules.len()).map_err(|_| OutOfMemory)?;
        actions.extend(rs.rules.iter().map(|r| r.action));

        let mut any = [NONE; DIMS];
        let open: [fn(&crate::policy::Rule) -> bool; DIMS] = [
            |r| r.protocol.is_none(),
            |r| r.remote.is_empty(),
            |r| r.remote_ports.is_empty(),
            |r| r.package.is_empty(),
            |r| r.app.is_empty(),
            |r| r.original_app.is_empty(),
        ];
        for (slot, open) in any.iter_mut().zip(open) {
            if !rs.rules.iter().all(open) {
                *slot = pools.bitset(rs.rules.iter().zip(0u32..).filter(|(r, _)| open(r)).map(|(_, i)| i))?;
            }
        }

        // Protocol: one posting per protocol number in use.
        let mut pairs: Vec<(u8, u32)> = Vec::new();
        pairs.try_reserve_exact(rs.rules.len()).map_err(|_| OutOfMemory)?;
        pairs.extend(rs.rules.iter().zip(0u32..).filter_map(|(r, i)| r.protocol.map(|p| (p.0, i))));
        pairs.sort_unstable();
        let mut protocol = Vec::new();
        protocol.try_reserve_exact(256).map_err(|_| OutOfMemory)?;
        protocol.resize(256, NONE);
        let mut scratch = Vec::new();
        for_each_group(&pairs, &mut scratch, |p, rules| {
            let posting = pools.posting(rules)?;
            if let Some(slot) = protocol.get_mut(usize::from(p)) {
                *slot = posting;
            }
            Ok(())
        })?;

        // Remote: interval tables per family.
        let mut v4: Vec<((u32, u32), u32)> = Vec::new();
        let mut v6: Vec<((u128, u128), u32)> = Vec::new();
        for (r, i) in rs.rules.iter().zip(0u32..) {
            for cidr in &r.remote {
                match cidr.addr {
                    IpAddr::V4(ip) => {
                        v4.try_reserve(1).map_err(|_| OutOfMemory)?;
                        v4.push((u32::from(ip).range(cidr.prefix), i));
                    }
                    IpAddr::V6(ip) => {
                        v6.try_reserve(1).map_err(|_| OutOfMemory)?;
                        v6.push((u128::from(ip).range(cidr.prefix), i));
                    }
                }
            }
        }
        let v4 = PrefixTable::build(v4, &mut pools)?;
        let v6 = PrefixTable::build(v6, &mut pools)?;

        // Ports: the segment tree.
        let mut ranges = Vec::new();
        let total = rs.rules.iter().map(|r| r.remote_ports.len()).fold(0, usize::saturating_add);
        ranges.try_reserve_exact(total).map_err(|_| OutOfMemory)?;
        for (r, i) in rs.rules.iter().zip(0u32..) {
            ranges.extend(r.remote_ports.iter().map(|&p| (p, i)));
        }
        let ports = PortTree::build(&ranges, &mut pools)?;

        // Package SIDs: a sorted table.
        let mut sids: Vec<(&[u8], u32)> = Vec::new();
        let total = rs.rules.iter().map(|r| r.package.len()).fold(0, usize::saturating_add);
        sids.try_reserve_exact(total).map_err(|_| OutOfMemory)?;
        for (r, i) in rs.rules.iter().zip(0u32..) {
            sids.extend(r.package.iter().map(|s| (s.as_sid().as_bytes(), i)));
        }
        sids.sort_unstable();
        let mut package: Vec<(SidBuf, u32)> = Vec::new();
        for_each_group(&sids, &mut scratch, |bytes, rules| {
            let posting = pools.posting(rules)?;
            let sid = rs.rules.iter().flat_map(|r| &r.package).find(|s| s.as_sid().as_bytes() == bytes);
            if let Some(&sid) = sid {
                package.try_reserve(1).map_err(|_| OutOfMemory)?;
                package.push((sid, posting));
            }
            Ok(())
        })?;

        let app = GlobDim::build(rs, |r| &r.app, hasher(1), &mut pools)?;
        let original_app = GlobDim::build(rs, |r| &r.original_app, hasher(2), &mut pools)?;
        let trust = glob_set(&rs.trust, hasher(3))?;
        let known_proxies = glob_set(&rs.known_proxies, hasher(4))?;

        Ok(Self {
            loop_policy: rs.loop_policy,
            proxy: rs.proxy,
            id: rs.id,
            actions,
            pools,
            any,
            protocol,
            v4,
            v6,
            ports,
            package,
            app,
            original_app,
            trust,
            known_proxies,
        })
    }

    /// `[proxy]`: where proxied flows go.
    pub const fn proxy(&self) -> ProxyListeners {
        self.proxy
    }

    /// Number of rules.
    pub fn len(&self) -> usize {
        self.actions.len()
    }

    /// True when there are no rules (nothing is proxied).
    pub fn is_empty(&self) -> bool {
        self.actions.is_empty()
    }

    /// Approximate heap bytes held by the tables.
    pub fn memory_bytes(&self) -> usize {
        [
            self.pools.bytes(),
            self.actions.capacity(),
            self.protocol.capacity().saturating_mul(4),
            self.v4.bytes(),
            self.v6.bytes(),
            self.ports.bytes(),
            self.package.capacity().saturating_mul(size_of::<(SidBuf, u32)>()),
            self.app.bytes(),
            self.original_app.bytes(),
            self.trust.bytes(),
            self.known_proxies.bytes(),
        ]
        .into_iter()
        .fold(0, usize::saturating_add)
    }

    /// ORs every posting of the remote chain starting at `node` into `out`.
    fn or_remote(&self, v6: bool, mut node: u32, word: usize, n: usize, out: &mut Block) {
        loop {
            let step = if v6 { self.v6.step(node) } else { self.v4.step(node) };
            let Some((posting, parent)) = step else { return };
            self.pools.or_block(posting, word, n, out);
            node = parent;
        }
    }

    /// The index of the first rule matching `flow`.
    fn first_index(&self, flow: &Flow<'_>) -> Option<u32> {
        let words = to_usize(self.pools.words);
        let proto = self.protocol.get(usize::from(flow.protocol.0)).copied().unwrap_or(NONE);
        let (v6, remote) = match flow.remote.ip() {
            IpAddr::V4(ip) => (false, self.v4.innermost(u32::from(ip))),
            IpAddr::V6(ip) => (true, self.v6.innermost(u128::from(ip))),
        };
        // The port tree's path, read once for all blocks.
        let mut port_path = [NONE; 5];
        for (slot, p) in port_path.iter_mut().zip(self.ports.path(flow.remote.port())) {
            *slot = p;
        }
        let package = flow.package.and_then(|sid| {
            let bytes = sid.as_bytes();
            let i = self.package.binary_search_by(|(s, _)| s.as_sid().as_bytes().cmp(bytes)).ok()?;
            self.package.get(i).map(|&(_, p)| p)
        });
        // Glob matching is the dearest step: done once, and only if a block
        // survives the cheaper dimensions.
        let mut app: Option<Matched> = None;
        let mut original_app: Option<Matched> = None;

        let mut word = 0usize;
        while word < words {
            let n = words.saturating_sub(word).min(BLOCK_WORDS);
            let mut acc: Block = [0; BLOCK_WORDS];
            let first_rule = u32::try_from(word).unwrap_or(u32::MAX).saturating_mul(64);
            let live = self.pools.rules.saturating_sub(first_rule).min(BLOCK_RULES);
            for (i, w) in acc.iter_mut().enumerate().take(n) {
                let below = u32::try_from(i).unwrap_or(u32::MAX).saturating_mul(64);
                let bits = live.saturating_sub(below).min(64);
                *w = u64::MAX.checked_shr(64u32.saturating_sub(bits)).unwrap_or(0);
            }
            let (mut check_app, mut check_original) = (false, false);
            let mut alive = true;
            for (dim, &open) in self.any.iter().enumerate() {
                if open == NONE {
                    continue;
                }
                let mut tmp: Block = [0; BLOCK_WORDS];
                self.pools.copy_block(open, word, n, &mut tmp);
                match dim {
                    PROTOCOL => self.pools.or_block(proto, word, n, &mut tmp),
                    REMOTE => self.or_remote(v6, remote, word, n, &mut tmp),
                    PORTS => {
                        for &p in port_path.iter().take_while(|&&p| p != NONE) {
                            self.pools.or_block(p, word, n, &mut tmp);
                        }
                    }
                    PACKAGE => {
                        if let Some(p) = package {
                            self.pools.or_block(p, word, n, &mut tmp);
                        }
                    }
                    APP | ORIGINAL_APP => {
                        let (slot, dim_data, id, check) = if dim == APP {
                            (&mut app, &self.app, &flow.app, &mut check_app)
                        } else {
                            (&mut original_app, &self.original_app, &flow.original_app, &mut check_original)
                        };
                        let m = slot.get_or_insert_with(|| dim_data.matches(id));
                        if m.overflow {
                            *check = true;
                            continue;
                        }
                        for &p in m.postings() {
                            self.pools.or_block(p, word, n, &mut tmp);
                        }
                    }
                    _ => {}
                }
                let mut any_left = 0u64;
                for (a, t) in acc.iter_mut().zip(&tmp) {
                    *a &= *t;
                    any_left |= *a;
                }
                if any_left == 0 {
                    alive = false;
                    break;
                }
            }
            if alive {
                for (i, &w) in acc.iter().enumerate().take(n) {
                    let mut w = w;
                    while w != 0 {
                        let bit = w.trailing_zeros();
                        w &= w.wrapping_sub(1);
                        let rule = u32::try_from(word.saturating_add(i))
                            .unwrap_or(u32::MAX)
                            .saturating_mul(64)
                            .saturating_add(bit);
                        if (!check_app || self.app.rule_matches(rule, &flow.app))
                            && (!check_original || self.original_app.rule_matches(rule, &flow.original_app))
                        {
                            return Some(rule);
                        }
                    }
                }
            }
            word = word.saturating_add(n);
        }
        None
    }
}

impl Policy for CompiledRules {
    fn loop_policy(&self) -> LoopPolicy {
        self.loop_policy
    }

    fn first_match(&self, flow: &Flow<'_>) -> Option<RuleHit> {
        let index = self.first_index(flow)?;
        let action = *self.actions.get(to_usize(index))?;
        Some(RuleHit { index, action })
    }

    fn is_trusted(&self, app: &AppId<'_>) -> bool {
        self.trust.any_match(app)
    }

    fn is_known_proxy(&self, app: &AppId<'_>) -> bool {
        self.known_proxies.any_match(app)
    }

    fn id(&self) -> u32 {
        self.id
    }
}
