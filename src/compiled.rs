//! The compiled rule matcher: the same answers as [`RuleSet`]'s first-match
//! scan, without scanning rule by rule.
//!
//! Every rule is filed under exactly one of its conditions, the one expected
//! to admit the fewest flows (`primary`): one of its CIDRs, port ranges,
//! app or original-app globs, package SIDs, or its protocol; a rule with no
//! condition at all bounds every answer. A rule can only match a flow if the
//! flow hits the key it is filed under, so a match looks up the flow's value
//! in each index (the nested CIDRs holding the address, the port tree's
//! nodes on the port's path, the globs the app id matches, the SID, the
//! protocol), walks each posting list in rule order, and checks each
//! candidate's other conditions: first against the protocol and port
//! summary stored in the posting entry (`postings`), then against the
//! rule's flattened record (`rules`). A list stops at its first matching
//! rule or at the best answer found so far, and an index whose earliest rule
//! comes after that answer is not looked up at all, so a flow that hits an
//! early rule never pays for glob matching. Glob matching comes last: the
//! app id is walked in place, never copied (`globs`), and an original app id
//! equal to the app id shares that walk.
//!
//! The cost is the lookups plus the candidates checked, not the size of the
//! rule set. A guess that goes wrong (many rules filed under a key most
//! flows hit, failing on another condition) makes a match slower, never
//! different; keys many rules share are avoided when a rule has another
//! condition to be filed under. Sets of fewer than [`SCAN_BELOW`] rules are
//! checked rule by rule over the same records.
//!
//! [`CompiledRules::compile`] reserves everything with `try_reserve` and
//! fails with [`OutOfMemory`], never aborting; matching never allocates and
//! keeps no buffer on the stack. [`blob`] is the driver's binary form of a
//! rule set.

use alloc::vec::Vec;
use core::net::IpAddr;

use ahash::RandomState;

use crate::flow::{AppId, Flow, Protocol};
use crate::policy::{Glob, LoopPolicy, Policy, ProxyListeners, Rule, RuleHit, RuleSet};
use crate::table::OutOfMemory;

pub mod blob;
mod globs;
mod ports;
mod postings;
mod prefix;
mod rules;
#[cfg(test)]
mod tests;

use globs::{GlobIndex, admits, dedup_patterns};
use ports::PortTree;
use postings::{NONE, Pool, Posting, for_each_group, to_u32, to_usize};
use prefix::{Addr, PrefixTable};
use rules::{APP, ORIGINAL_APP, PACKAGE, PORTS, Query, REMOTE, RuleTable};

pub use blob::{BlobError, decode, decode_rule_set, decode_seeded, encode, swap_blob};

/// Rule sets smaller than this are checked rule by rule (over the flattened
/// records). The index lookups already beat a scan at 10 rules on both
/// workloads of the match benchmark, so only trivial sets are scanned.
pub const SCAN_BELOW: usize = 4;

/// Seeds used by [`CompiledRules::compile`] and [`decode`]. The driver should
/// pass random seeds ([`CompiledRules::compile_seeded`], [`decode_seeded`]).
pub const DEFAULT_SEED: [u64; 4] =
    [0x9e37_79b9_7f4a_7c15, 0xbf58_476d_1ce4_e5b9, 0x94d0_49bb_1331_11eb, 0x2545_f491_4f6c_dd1d];

/// The condition a rule is filed under.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Primary {
    /// No condition: the rule matches every flow.
    Always = 0,
    Protocol = 1,
    Package = 2,
    Remote = 3,
    Ports = 4,
    App = 5,
    OriginalApp = 6,
}

/// Kinds of [`Primary`].
const KINDS: usize = 7;

/// "Every flow" in the fixed-point scale of [`primary`]'s estimates.
const ALL: u64 = 1 << 40;

/// How many rules name each key, per dimension, for [`primary`].
#[derive(Default)]
struct Sharing {
    rules: u64,
    v4: Vec<(u32, u32)>,
    v6: Vec<(u128, u128)>,
    ports: Vec<(u16, u16)>,
    package: Vec<u32>,
    app: Vec<u32>,
    original_app: Vec<u32>,
}

/// Number of entries of a sorted list equal to `key`.
fn count<T: Ord>(sorted: &[T], key: &T) -> u64 {
    let lo = sorted.partition_point(|k| k < key);
    let hi = sorted.partition_point(|k| k <= key);
    u64::try_from(hi.saturating_sub(lo)).unwrap_or(u64::MAX)
}

impl Sharing {
    fn build(rs: &RuleSet, rules: &RuleTable, key: impl Fn(&[u16]) -> Option<u32>) -> Result<Self, OutOfMemory> {
        let mut s = Self { rules: u64::try_from(rs.rules.len()).unwrap_or(u64::MAX).max(1), ..Self::default() };
        for r in &rs.rules {
            for c in &r.remote {
                match c.addr {
                    IpAddr::V4(ip) => {
                        reserve(&mut s.v4, 1)?;
                        s.v4.push(u32::from(ip).range(c.prefix));
                    }
                    IpAddr::V6(ip) => {
                        reserve(&mut s.v6, 1)?;
                        s.v6.push(u128::from(ip).range(c.prefix));
                    }
                }
            }
            reserve(&mut s.ports, r.remote_ports.len())?;
            s.ports.extend(r.remote_ports.iter().map(|p| (p.lo, p.hi)));
            reserve(&mut s.package, r.package.len())?;
            s.package.extend(r.package.iter().map(|p| rules.sid_id(p.as_sid().as_bytes())));
            reserve(&mut s.app, r.app.len())?;
            s.app.extend(r.app.iter().map(|g| key(g.units()).unwrap_or(NONE)));
            reserve(&mut s.original_app, r.original_app.len())?;
            s.original_app.extend(r.original_app.iter().map(|g| key(g.units()).unwrap_or(NONE)));
        }
        s.v4.sort_unstable();
        s.v6.sort_unstable();
        s.ports.sort_unstable();
        s.package.sort_unstable();
        s.app.sort_unstable();
        s.original_app.sort_unstable();
        Ok(s)
    }

    /// A key named by `n` rules: each rule beyond the first counts as one
    /// flow in `rules` hitting it. Rule sets name the destinations and apps
    /// that carry traffic, and a key many rules share costs every flow that
    /// hits it a check per rule.
    fn shared(&self, n: u64) -> u64 {
        n.saturating_sub(1).saturating_mul(ALL.checked_div(self.rules).unwrap_or(ALL))
    }
}

/// The condition to file `rule` under: the one expected to admit the fewest
/// flows, estimated in units of 2^-40 of all flows, per key the larger of a
/// static guess and what [`Sharing::shared`] says. Statically, addresses are
/// uniform within their family (an IPv6 prefix counts half its length:
/// providers hold /32s, sites /48s), ports are concentrated on web and DNS
/// and no port is rarer than 1 flow in 1,024, and an app glob admits what
/// [`admits`] says. Any choice gives the same answers; a good one keeps the
/// candidate lists short.
fn primary(rule: &Rule, rules: &RuleTable, sharing: &Sharing, key: impl Fn(&[u16]) -> Option<u32>) -> Primary {
    let mut best = (Primary::Always, u64::MAX);
    let mut offer = |kind: Primary, admitted: u64| {
        if admitted < best.1 {
            best = (kind, admitted);
        }
    };
    let sum = |it: &mut dyn Iterator<Item = u64>| it.fold(0, u64::saturating_add).min(ALL);
    if !rule.remote.is_empty() {
        let admitted = rule.remote.iter().map(|c| match c.addr {
            IpAddr::V4(ip) => {
                (ALL >> c.prefix.min(32)).max(sharing.shared(count(&sharing.v4, &u32::from(ip).range(c.prefix))))
            }
            IpAddr::V6(ip) => (ALL >> (c.prefix.min(128) / 2).min(40))
                .max(sharing.shared(count(&sharing.v6, &u128::from(ip).range(c.prefix)))),
        });
        offer(Primary::Remote, sum(&mut { admitted }));
    }
    if !rule.remote_ports.is_empty() {
        let admitted = rule.remote_ports.iter().filter(|p| p.lo <= p.hi).map(|p| {
            let width = u64::from(p.hi.saturating_sub(p.lo)).saturating_add(1) << 24;
            let common = if p.contains(443) || p.contains(80) {
                ALL >> 2
            } else if p.contains(53) {
                ALL >> 5
            } else {
                ALL >> 10
            };
            width.saturating_add(common).max(sharing.shared(count(&sharing.ports, &(p.lo, p.hi))))
        });
        offer(Primary::Ports, sum(&mut { admitted }));
    }
    if !rule.package.is_empty() {
        let admitted = rule
            .package
            .iter()
            .map(|s| (ALL >> 7).max(sharing.shared(count(&sharing.package, &rules.sid_id(s.as_sid().as_bytes())))));
        offer(Primary::Package, sum(&mut { admitted }));
    }
    let globs = |list: &[Glob], counts: &[u32]| {
        let admitted =
            list.iter().map(|g| admits(g.units()).max(sharing.shared(count(counts, &key(g.units()).unwrap_or(NONE)))));
        sum(&mut { admitted })
    };
    if !rule.app.is_empty() {
        offer(Primary::App, globs(&rule.app, &sharing.app));
    }
    if !rule.original_app.is_empty() {
        offer(Primary::OriginalApp, globs(&rule.original_app, &sharing.original_app));
    }
    if let Some(p) = rule.protocol {
        let admitted = match p {
            Protocol::TCP => ALL / 5 * 3,
            Protocol::UDP => ALL / 3,
            _ => ALL >> 4,
        };
        offer(Primary::Protocol, admitted);
    }
    best.0
}

/// A rule set compiled for matching: implements [`Policy`] with exactly the
/// answers of [`RuleSet`]'s reference scan.
#[derive(Clone, Debug)]
pub struct CompiledRules {
    loop_policy: LoopPolicy,
    proxy: ProxyListeners,
    id: u32,
    /// `[boot] mode` (the driver's boot guard reads it).
    boot_mode: crate::boot::BootMode,
    /// Every rule, flattened for checking.
    rules: RuleTable,
    /// Check rule by rule instead of looking up the indexes.
    scan: bool,
    pool: Pool,
    /// Per [`Primary`] kind: the first rule filed there, or [`NONE`].
    first: [u32; KINDS],
    /// Per protocol number.
    protocol: Vec<Posting>,
    /// Per SID id of [`RuleTable::sids`].
    package: Vec<Posting>,
    v4: PrefixTable<u32>,
    v6: PrefixTable<u128>,
    ports: PortTree,
    /// The app and original-app patterns of every rule, in one index so an
    /// app id equal to its original app id is looked up once.
    globs: GlobIndex,
    /// Per glob key: rules filed under it as an app / original-app pattern.
    app: Vec<Posting>,
    original_app: Vec<Posting>,
    trust: GlobIndex,
    known_proxies: GlobIndex,
}

/// The distinct glob patterns of a list, indexed.
fn glob_set(globs: &[Glob], hasher: RandomState) -> Result<GlobIndex, OutOfMemory> {
    let mut pairs: Vec<(&[u16], u32)> = Vec::new();
    pairs.try_reserve_exact(globs.len()).map_err(|_| OutOfMemory)?;
    pairs.extend(globs.iter().map(|g| (g.units(), 0)));
    let distinct = dedup_patterns(&mut pairs)?;
    GlobIndex::build(distinct.iter().copied(), |_| true, hasher)
}

/// Postings of `(key, rule)` pairs (any order), one per key below `keys`.
fn postings_by_key(mut pairs: Vec<(u32, u32)>, keys: usize, pool: &mut Pool) -> Result<Vec<Posting>, OutOfMemory> {
    pairs.sort_unstable();
    let mut out = Vec::new();
    out.try_reserve_exact(keys).map_err(|_| OutOfMemory)?;
    out.resize(keys, Posting::default());
    let mut scratch = Vec::new();
    for_each_group(&pairs, &mut scratch, |key, rules| {
        let posting = pool.add(rules)?;
        if let Some(slot) = out.get_mut(to_usize(key)) {
            *slot = posting;
        }
        Ok(())
    })?;
    Ok(out)
}

fn reserve<T>(v: &mut Vec<T>, n: usize) -> Result<(), OutOfMemory> {
    v.try_reserve(n).map_err(|_| OutOfMemory)
}

impl CompiledRules {
    /// Compiles with [`DEFAULT_SEED`].
    pub fn compile(rules: &RuleSet) -> Result<Self, OutOfMemory> {
        Self::compile_seeded(rules, DEFAULT_SEED)
    }

    /// Compiles, seeding the app-id hash tables with `seed` (draw it from a
    /// random source: attackers choose app ids).
    pub fn compile_seeded(rs: &RuleSet, seed: [u64; 4]) -> Result<Self, OutOfMemory> {
        Self::build(rs, seed, rs.rules.len() < SCAN_BELOW)
    }

    /// Compiles; `scan` picks the rule-by-rule check over the indexes (the
    /// tests run both on every rule set).
    fn build(rs: &RuleSet, seed: [u64; 4], scan: bool) -> Result<Self, OutOfMemory> {
        let [a, b, c, d] = seed;
        let hasher = |n: u64| RandomState::with_seeds(a ^ n, b.rotate_left(11) ^ n, c, d.wrapping_add(n));
        to_u32(rs.rules.len().saturating_add(1))?;
        let mut pool = Pool::default();

        // The app and original-app patterns, distinct, and every rule flattened.
        let mut pairs: Vec<(&[u16], u32)> = Vec::new();
        let total = rs.rules.iter().map(|r| r.app.len().saturating_add(r.original_app.len()));
        reserve(&mut pairs, total.fold(0, usize::saturating_add))?;
        for (r, i) in rs.rules.iter().zip(0u32..) {
            pairs.extend(r.app.iter().chain(&r.original_app).map(|g| (g.units(), i)));
        }
        let patterns = dedup_patterns(&mut pairs)?;
        let key = |units: &[u16]| patterns.binary_search(&units).ok().and_then(|k| u32::try_from(k).ok());
        let rules = RuleTable::build(&rs.rules, key)?;

        let sharing = Sharing::build(rs, &rules, key)?;
        let kinds: Vec<Primary> = {
            let mut v = Vec::new();
            reserve(&mut v, rs.rules.len())?;
            v.extend(rs.rules.iter().map(|r| primary(r, &rules, &sharing, key)));
            v
        };
        drop(sharing);
        let filed =
            |kind: Primary| rs.rules.iter().zip(kinds.iter()).zip(0u32..).filter(move |&((_, &k), _)| k == kind);
        let mut first = [NONE; KINDS];
        for (&kind, i) in kinds.iter().zip(0u32..) {
            if let Some(slot) = first.get_mut(kind as usize)
                && *slot == NONE
            {
                *slot = i;
            }
        }

        let mut pairs: Vec<(u32, u32)> = Vec::new();
        for ((r, _), i) in filed(Primary::Protocol) {
            reserve(&mut pairs, 1)?;
            pairs.push((r.protocol.map_or(0, |p| u32::from(p.0)), i));
        }
        let protocol = postings_by_key(pairs, 256, &mut pool)?;

        let mut pairs: Vec<(u32, u32)> = Vec::new();
        for ((r, _), i) in filed(Primary::Package) {
            for s in &r.package {
                let id = rules.sid_id(s.as_sid().as_bytes());
                reserve(&mut pairs, 1)?;
                pairs.push((id, i));
            }
        }
        let package = postings_by_key(pairs, rules.sids().len(), &mut pool)?;

        let mut v4: Vec<((u32, u32), u32)> = Vec::new();
        let mut v6: Vec<((u128, u128), u32)> = Vec::new();
        for ((r, _), i) in filed(Primary::Remote) {
            for cidr in &r.remote {
                match cidr.addr {
                    IpAddr::V4(ip) => {
                        reserve(&mut v4, 1)?;
                        v4.push((u32::from(ip).range(cidr.prefix), i));
                    }
                    IpAddr::V6(ip) => {
                        reserve(&mut v6, 1)?;
                        v6.push((u128::from(ip).range(cidr.prefix), i));
                    }
                }
            }
        }
        let v4 = PrefixTable::build(v4, &mut pool)?;
        let v6 = PrefixTable::build(v6, &mut pool)?;

        let mut ranges = Vec::new();
        for ((r, _), i) in filed(Primary::Ports) {
            reserve(&mut ranges, r.remote_ports.len())?;
            ranges.extend(r.remote_ports.iter().map(|&p| (p, i)));
        }
        let ports = PortTree::build(&ranges, &mut pool)?;

        let glob_pairs = |kind: Primary, list: fn(&Rule) -> &[Glob]| -> Result<Vec<(u32, u32)>, OutOfMemory> {
            let mut pairs = Vec::new();
            for ((r, _), i) in filed(kind) {
                for g in list(r) {
                    reserve(&mut pairs, 1)?;
                    pairs.push((key(g.units()).ok_or(OutOfMemory)?, i));
                }
            }
            Ok(pairs)
        };
        let app = postings_by_key(glob_pairs(Primary::App, |r| &r.app)?, patterns.len(), &mut pool)?;
        let original_app =
            postings_by_key(glob_pairs(Primary::OriginalApp, |r| &r.original_app)?, patterns.len(), &mut pool)?;
        let used = |k: u32| {
            let k = to_usize(k);
            [&app, &original_app].iter().any(|p| p.get(k).is_some_and(|&p| p != Posting::default()))
        };
        let globs = GlobIndex::build(patterns.iter().copied(), used, hasher(1))?;
        pool.finish(|r| rules.entry(r))?;
        let trust = glob_set(&rs.trust, hasher(3))?;
        let known_proxies = glob_set(&rs.known_proxies, hasher(4))?;

        Ok(Self {
            loop_policy: rs.loop_policy,
            proxy: rs.proxy,
            id: rs.id,
            boot_mode: rs.boot.mode,
            rules,
            scan,
            pool,
            first,
            protocol,
            package,
            v4,
            v6,
            ports,
            globs,
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
        self.rules.len()
    }

    /// True when there are no rules (nothing is proxied).
    pub fn is_empty(&self) -> bool {
        self.rules.len() == 0
    }

    /// Approximate heap bytes held by the tables.
    pub fn memory_bytes(&self) -> usize {
        [
            self.rules.bytes(),
            self.pool.bytes(),
            self.protocol.capacity().saturating_mul(size_of::<Posting>()),
            self.package.capacity().saturating_mul(size_of::<Posting>()),
            self.v4.bytes(),
            self.v6.bytes(),
            self.ports.bytes(),
            self.globs.bytes(),
            self.app.capacity().saturating_mul(size_of::<Posting>()),
            self.original_app.capacity().saturating_mul(size_of::<Posting>()),
            self.trust.bytes(),
            self.known_proxies.bytes(),
        ]
        .into_iter()
        .fold(0, usize::saturating_add)
    }

    /// Is some rule filed under `kind` earlier than `best`?
    #[inline]
    fn worth(&self, kind: Primary, best: u32) -> bool {
        self.first.get(kind as usize).is_some_and(|&f| f < best)
    }

    /// Checks the rules of `posting` before `best`, in order, lowering
    /// `best` to the first that matches. `skip`: the condition the posting
    /// already vouches for.
    #[inline]
    fn visit(&self, posting: Posting, q: &Query<'_>, skip: u8, best: &mut u32) {
        for e in self.pool.get(posting) {
            if e.rule >= *best {
                return;
            }
            if e.admits(q.protocol, q.port) && self.rules.matches(e.rule, q, skip, &self.globs) {
                *best = e.rule;
                return;
            }
        }
    }

    /// Visits the postings of every glob key the app id (`original` false)
    /// or the original app id matches, in the lists `lists` names (bits
    /// [`APP`]: rules filed under an app pattern, [`ORIGINAL_APP`]: under
    /// an original-app pattern; a bit, not the list, so that the classify
    /// path's frames carry no slices). The id is read as it is, never
    /// copied: the glob tables fold case as they read it.
    fn visit_globs(&self, q: &Query<'_>, original: bool, lists: u8, best: &mut u32) {
        let id = if original { &q.original_app } else { &q.app };
        // A cursor, not a callback: each rule check runs beside the walk.
        let mut matches = self.globs.matches(id);
        while let Some(key) = matches.next_key() {
            // The app list, then the original-app list (lowest bit first):
            // one visit site, so the walk's frame holds one inlined copy.
            let mut left = lists;
            while left != 0 {
                let skip = left & left.wrapping_neg();
                left &= !skip;
                let list = if skip == APP { &self.app } else { &self.original_app };
                if let Some(&p) = list.get(to_usize(key)) {
                    self.visit(p, q, skip, best);
                }
            }
        }
    }

    /// Lowers `best` to the first rule found through the flow's protocol,
    /// package, remote address or port: every index but the globs. Not
    /// inlined, so that its locals are off the stack while the glob walk
    /// runs under [`Self::first_index`].
    #[inline(never)]
    fn visit_exact(&self, q: &Query<'_>, best: &mut u32) {
        if self.worth(Primary::Protocol, *best)
            && let Some(&p) = self.protocol.get(usize::from(q.protocol))
        {
            self.visit(p, q, 0, best);
        }
        if self.worth(Primary::Package, *best)
            && let Some(&p) = self.package.get(to_usize(q.package))
        {
            self.visit(p, q, PACKAGE, best);
        }
        if self.worth(Primary::Remote, *best) {
            let (v6, mut node) = match q.addr {
                IpAddr::V4(ip) => (false, self.v4.innermost(u32::from(ip))),
                IpAddr::V6(ip) => (true, self.v6.innermost(u128::from(ip))),
            };
            // Innermost prefix first, then each one around it.
            while let Some((p, parent)) = if v6 { self.v6.step(node) } else { self.v4.step(node) } {
                self.visit(p, q, REMOTE, best);
                node = parent;
            }
        }
        if self.worth(Primary::Ports, *best) {
            for p in self.ports.path(q.port) {
                self.visit(p, q, PORTS, best);
            }
        }
    }

    /// The index of the first rule matching `flow`.
    fn first_index(&self, flow: &Flow<'_>) -> Option<u32> {
        let q = self.rules.query(flow);
        if self.scan {
            let n = to_u32(self.rules.len()).unwrap_or(0);
            return (0..n).find(|&r| self.rules.matches(r, &q, 0, &self.globs));
        }
        // Rules without conditions match every flow: the first is an upper bound.
        let mut best = self.first.first().copied().unwrap_or(NONE);
        self.visit_exact(&q, &mut best);
        // Glob matching is the dearest lookup: last, and only when a rule
        // filed under a glob could still beat the answer so far.
        let app = if self.worth(Primary::App, best) { APP } else { 0 };
        let original = if self.worth(Primary::OriginalApp, best) { ORIGINAL_APP } else { 0 };
        if q.same_apps {
            if app | original != 0 {
                self.visit_globs(&q, false, app | original, &mut best);
            }
        } else {
            if app != 0 {
                self.visit_globs(&q, false, app, &mut best);
            }
            if original != 0 && self.worth(Primary::OriginalApp, best) {
                self.visit_globs(&q, true, original, &mut best);
            }
        }
        (best != NONE).then_some(best)
    }
}

impl Policy for CompiledRules {
    fn loop_policy(&self) -> LoopPolicy {
        self.loop_policy
    }

    fn first_match(&self, flow: &Flow<'_>) -> Option<RuleHit> {
        let index = self.first_index(flow)?;
        let action = self.rules.action(index)?;
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

    fn boot_mode(&self) -> crate::boot::BootMode {
        self.boot_mode
    }
}
