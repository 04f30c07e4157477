//! Every rule's conditions, flattened for checking one rule against one flow.
//!
//! A rule is a 32-byte record: its protocol, which dimensions it constrains,
//! its action, and where its CIDRs, port ranges, glob keys and SID ids start
//! in six shared arrays (a rule's run ends where the next record's starts; a
//! sentinel record closes the last). [`RuleTable::matches`] is
//! [`Rule::matches`](crate::policy::Rule::matches) over this form: the same
//! answer for every flow, with the conditions ordered cheapest first.

use alloc::vec::Vec;
use core::net::IpAddr;

use super::globs::GlobIndex;
use super::postings::{ANY_PROTOCOL, Entry, NONE, to_u32, to_usize};
use super::prefix::Addr;
use crate::flow::{AppId, Flow, SidBuf};
use crate::policy::{Action, Rule};
use crate::table::OutOfMemory;

/// Dimension bits, for [`Rec::constrained`] and the `skip` mask.
pub(super) const REMOTE: u8 = 1;
pub(super) const PORTS: u8 = 2;
pub(super) const PACKAGE: u8 = 4;
pub(super) const APP: u8 = 8;
pub(super) const ORIGINAL_APP: u8 = 16;

/// One rule, flattened.
#[derive(Clone, Copy, Debug)]
struct Rec {
    v4: u32,
    v6: u32,
    ports: u32,
    app: u32,
    original_app: u32,
    package: u32,
    /// The protocol number, or [`ANY_PROTOCOL`].
    protocol: u16,
    /// Dimension bits of the conditions the rule gives.
    constrained: u8,
    /// The action's wire code.
    action: u8,
}

/// The flow as the checks read it, computed once per match.
#[derive(Clone, Copy)]
pub(super) struct Query<'f> {
    pub(super) protocol: u16,
    pub(super) addr: IpAddr,
    pub(super) port: u16,
    /// The flow's package SID as an id of [`RuleTable::sids`], or [`NONE`]
    /// (no SID, or one no rule names).
    pub(super) package: u32,
    pub(super) app: AppId<'f>,
    pub(super) original_app: AppId<'f>,
    /// The original app id is byte for byte the app id.
    pub(super) same_apps: bool,
}

/// All rules, flattened.
#[derive(Clone, Debug, Default)]
pub(super) struct RuleTable {
    /// One record per rule, then the sentinel.
    recs: Vec<Rec>,
    v4: Vec<(u32, u32)>,
    v6: Vec<(u128, u128)>,
    ports: Vec<(u16, u16)>,
    /// Glob keys of the shared app / original-app [`GlobIndex`].
    app: Vec<u32>,
    original_app: Vec<u32>,
    /// Ids into `sids`.
    package: Vec<u32>,
    /// Every distinct SID a rule names, sorted by bytes: a SID's id is its position.
    sids: Vec<SidBuf>,
}

fn push<T>(v: &mut Vec<T>, item: T) -> Result<(), OutOfMemory> {
    v.try_reserve(1).map_err(|_| OutOfMemory)?;
    v.push(item);
    Ok(())
}

impl RuleTable {
    /// Flattens `rules`; `glob_key` maps a glob's folded units to its key in
    /// the shared glob index.
    pub(super) fn build(rules: &[Rule], glob_key: impl Fn(&[u16]) -> Option<u32>) -> Result<Self, OutOfMemory> {
        let mut t = Self::default();
        t.recs.try_reserve_exact(rules.len().saturating_add(1)).map_err(|_| OutOfMemory)?;
        for r in rules {
            for s in &r.package {
                push(&mut t.sids, *s)?;
            }
        }
        t.sids.sort_unstable_by(|a, b| a.as_sid().as_bytes().cmp(b.as_sid().as_bytes()));
        t.sids.dedup();
        for r in rules {
            t.recs.push(t.starts(0, 0, 0));
            for c in &r.remote {
                match c.addr {
                    IpAddr::V4(ip) => push(&mut t.v4, u32::from(ip).range(c.prefix))?,
                    IpAddr::V6(ip) => push(&mut t.v6, u128::from(ip).range(c.prefix))?,
                }
            }
            for p in &r.remote_ports {
                push(&mut t.ports, (p.lo, p.hi))?;
            }
            for g in &r.app {
                push(&mut t.app, glob_key(g.units()).ok_or(OutOfMemory)?)?;
            }
            for g in &r.original_app {
                push(&mut t.original_app, glob_key(g.units()).ok_or(OutOfMemory)?)?;
            }
            for s in &r.package {
                let id = t.sid_id(s.as_sid().as_bytes());
                push(&mut t.package, id)?;
            }
            let bit = |given: bool, b: u8| if given { b } else { 0 };
            let constrained = bit(!r.remote.is_empty(), REMOTE)
                | bit(!r.remote_ports.is_empty(), PORTS)
                | bit(!r.package.is_empty(), PACKAGE)
                | bit(!r.app.is_empty(), APP)
                | bit(!r.original_app.is_empty(), ORIGINAL_APP);
            let protocol = r.protocol.map_or(ANY_PROTOCOL, |p| u16::from(p.0));
            if let Some(rec) = t.recs.last_mut() {
                rec.protocol = protocol;
                rec.constrained = constrained;
                rec.action = r.action as u8;
            }
        }
        t.recs.push(t.starts(0, 0, 0));
        // Every run's length must fit the u32 offsets.
        to_u32(t.v4.len().max(t.v6.len()).max(t.ports.len()))?;
        to_u32(t.app.len().max(t.original_app.len()).max(t.package.len()))?;
        Ok(t)
    }

    /// A record whose runs start at the arrays' current ends.
    fn starts(&self, protocol: u16, constrained: u8, action: u8) -> Rec {
        let at = |n: usize| u32::try_from(n).unwrap_or(u32::MAX);
        Rec {
            v4: at(self.v4.len()),
            v6: at(self.v6.len()),
            ports: at(self.ports.len()),
            app: at(self.app.len()),
            original_app: at(self.original_app.len()),
            package: at(self.package.len()),
            protocol,
            constrained,
            action,
        }
    }

    /// The id of a SID some rule names, or [`NONE`].
    pub(super) fn sid_id(&self, bytes: &[u8]) -> u32 {
        self.sids
            .binary_search_by(|s| s.as_sid().as_bytes().cmp(bytes))
            .ok()
            .and_then(|i| u32::try_from(i).ok())
            .unwrap_or(NONE)
    }

    /// Number of rules.
    pub(super) fn len(&self) -> usize {
        self.recs.len().saturating_sub(1)
    }

    /// Rule `r`'s posting entry.
    pub(super) fn entry(&self, r: u32) -> Entry {
        let i = to_usize(r);
        let (Some(rec), Some(next)) = (self.recs.get(i), self.recs.get(i.saturating_add(1))) else {
            return Entry { rule: r, lo: 1, hi: 0, protocol: ANY_PROTOCOL };
        };
        let (lo, hi) = if rec.constrained & PORTS == 0 {
            (0, u16::MAX)
        } else {
            let ranges = self.ports.get(to_usize(rec.ports)..to_usize(next.ports)).unwrap_or(&[]);
            // Inverted ranges hold nothing; with none left the hull is empty.
            ranges.iter().filter(|(lo, hi)| lo <= hi).fold((u16::MAX, 0), |(a, b), &(lo, hi)| (a.min(lo), b.max(hi)))
        };
        let (lo, hi) = if lo > hi { (1, 0) } else { (lo, hi) };
        Entry { rule: r, lo, hi, protocol: rec.protocol }
    }

    /// Rule `r`'s action.
    pub(super) fn action(&self, r: u32) -> Option<Action> {
        self.recs.get(to_usize(r)).and_then(|rec| Action::from_u8(rec.action))
    }

    /// The distinct SIDs, in id order.
    pub(super) fn sids(&self) -> &[SidBuf] {
        &self.sids
    }

    /// The flow as [`Self::matches`] reads it.
    pub(super) fn query<'f>(&self, flow: &Flow<'f>) -> Query<'f> {
        let package = match flow.package {
            Some(sid) if !self.sids.is_empty() => self.sid_id(sid.as_bytes()),
            _ => NONE,
        };
        Query {
            protocol: u16::from(flow.protocol.0),
            addr: flow.remote.ip(),
            port: flow.remote.port(),
            package,
            app: flow.app,
            original_app: flow.original_app,
            same_apps: flow.app.as_bytes() == flow.original_app.as_bytes(),
        }
    }

    /// Does rule `r` match? Conditions in `skip` are taken as met (the
    /// caller found the rule through one of them).
    #[inline]
    pub(super) fn matches(&self, r: u32, q: &Query<'_>, skip: u8, globs: &GlobIndex) -> bool {
        let i = to_usize(r);
        let (Some(rec), Some(next)) = (self.recs.get(i), self.recs.get(i.saturating_add(1))) else {
            return false;
        };
        if rec.protocol != ANY_PROTOCOL && rec.protocol != q.protocol {
            return false;
        }
        let need = rec.constrained & !skip;
        if need == 0 {
            return true;
        }
        let run = |s: u32, e: u32| to_usize(s)..to_usize(e);
        if need & PORTS != 0 {
            let ranges = self.ports.get(run(rec.ports, next.ports)).unwrap_or(&[]);
            if !ranges.iter().any(|&(lo, hi)| lo <= q.port && q.port <= hi) {
                return false;
            }
        }
        if need & REMOTE != 0 {
            let hit = match q.addr {
                IpAddr::V4(ip) => {
                    let a = u32::from(ip);
                    self.v4.get(run(rec.v4, next.v4)).unwrap_or(&[]).iter().any(|&(lo, hi)| lo <= a && a <= hi)
                }
                IpAddr::V6(ip) => {
                    let a = u128::from(ip);
                    self.v6.get(run(rec.v6, next.v6)).unwrap_or(&[]).iter().any(|&(lo, hi)| lo <= a && a <= hi)
                }
            };
            if !hit {
                return false;
            }
        }
        if need & PACKAGE != 0 && !self.package.get(run(rec.package, next.package)).unwrap_or(&[]).contains(&q.package)
        {
            return false;
        }
        if need & APP != 0 {
            let keys = self.app.get(run(rec.app, next.app)).unwrap_or(&[]);
            if !any_key(keys, &q.app, globs) {
                return false;
            }
        }
        if need & ORIGINAL_APP != 0 {
            let keys = self.original_app.get(run(rec.original_app, next.original_app)).unwrap_or(&[]);
            if !any_key(keys, &q.original_app, globs) {
                return false;
            }
        }
        true
    }

    /// Bytes held.
    pub(super) fn bytes(&self) -> usize {
        [
            self.recs.capacity().saturating_mul(size_of::<Rec>()),
            self.v4.capacity().saturating_mul(8),
            self.v6.capacity().saturating_mul(32),
            self.ports.capacity().saturating_mul(4),
            self.app.capacity().saturating_mul(4),
            self.original_app.capacity().saturating_mul(4),
            self.package.capacity().saturating_mul(4),
            self.sids.capacity().saturating_mul(size_of::<SidBuf>()),
        ]
        .into_iter()
        .fold(0, usize::saturating_add)
    }
}

/// Does any of `keys` match `id`? A plain loop: no iterator adapter's frame
/// between the rule check and the glob matcher.
#[inline(always)]
fn any_key(keys: &[u32], id: &AppId<'_>, globs: &GlobIndex) -> bool {
    for &k in keys {
        if globs.key_matches(k, id) {
            return true;
        }
    }
    false
}
