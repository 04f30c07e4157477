//! The naive column: the same decision table, with the obvious data
//! structures.
//!
//! Rules are matched by [`RuleSet`]'s reference scan (every rule in file
//! order until one matches; trust and known-proxy globs one by one), and the
//! endpoint, destination and known-proxy tables are `std` `HashMap`s with
//! their default SipHash-1-3 hasher. Rows and effects are the core's own:
//! [`decide::connect_redirect`] and [`decide::auth_connect`] run on facts
//! from these tables, and the effects below mirror `Arbiter`'s, audit record
//! included, so the two columns differ only in tables and matcher.
//!
//! Tables are reserved up front (twice the capacity, as the core does, so
//! tombstone clean-up never grows them) and evict oldest-first when full, so
//! the naive column does not allocate on the decision path either.

use std::collections::{HashMap, VecDeque};
use std::hash::Hash;

use arbiter::arbiter::HopCount;
use arbiter::audit::{AuditRecord, AuthRecord, ConnectRecord, Event};
use arbiter::decide::{self, ConnectFacts, Consulted, EndpointEntry, Env, Outcome, Verdict};
use arbiter::flow::{AuthConnectInput, ConnectRedirectInput, Destination, Flow};
use arbiter::policy::{LoopPolicy, PermitOrBlock, Policy, RuleHit, RuleSet};
use arbiter::reason::Reason;
use arbiter::time::{Duration, Instant};
use arbiter::{Capacities, Config};

/// A bounded map with deadlines and oldest-first eviction: a `HashMap` plus
/// an insertion-order queue with lazy deletion.
#[derive(Debug)]
pub struct NaiveTable<K, V> {
    map: HashMap<K, (V, Instant, u64)>,
    /// `(key, stamp)` in insertion order; stale when the map's stamp differs.
    order: VecDeque<(K, u64)>,
    capacity: usize,
    stamp: u64,
}

impl<K: Copy + Eq + Hash, V: Copy> NaiveTable<K, V> {
    /// Reserves room for `capacity` entries.
    pub fn new(capacity: usize) -> Self {
        Self {
            map: HashMap::with_capacity(capacity.saturating_mul(2)),
            order: VecDeque::with_capacity(capacity.saturating_mul(2).saturating_add(1)),
            capacity,
            stamp: 0,
        }
    }

    /// Entries held.
    pub fn len(&self) -> usize {
        self.map.len()
    }

    /// True when empty.
    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    /// The live value under `key`.
    pub fn get(&self, key: &K, now: Instant) -> Option<&V> {
        self.map.get(key).filter(|(_, deadline, _)| now < *deadline).map(|(v, _, _)| v)
    }

    /// Takes the entry out: its value and whether it was still live.
    pub fn remove(&mut self, key: &K, now: Instant) -> Option<(V, bool)> {
        self.map.remove(key).map(|(v, deadline, _)| (v, now < deadline))
    }

    /// Inserts or replaces; when full, the oldest entry leaves and is returned.
    pub fn insert(&mut self, key: K, value: V, deadline: Instant) -> Option<(K, V)> {
        self.stamp += 1;
        let stamp = self.stamp;
        let mut departed = None;
        if !self.map.contains_key(&key) && self.map.len() >= self.capacity {
            while let Some((k, s)) = self.order.pop_front() {
                if self.map.get(&k).is_some_and(|e| e.2 == s) {
                    departed = self.map.remove(&k).map(|(v, _, _)| (k, v));
                    break;
                }
            }
        }
        if self.capacity == 0 {
            return departed;
        }
        if self.order.len() == self.order.capacity() {
            // Drop stale positions in place: never grows the queue.
            let map = &self.map;
            self.order.retain(|(k, s)| map.get(k).is_some_and(|e| e.2 == *s));
        }
        self.map.insert(key, (value, deadline, stamp));
        self.order.push_back((key, stamp));
        departed
    }

    /// Bytes reserved: the map's buckets (entry plus one control byte each,
    /// hashbrown's layout) and the order queue.
    pub fn reserved_bytes(&self) -> usize {
        // std's map keeps 7/8 of a power-of-two bucket count usable.
        let buckets = (self.map.capacity() * 8 / 7).next_power_of_two().max(4);
        buckets * (size_of::<(K, (V, Instant, u64))>() + 1) + self.order.capacity() * size_of::<(K, u64)>()
    }
}

/// The naive arbiter: the decision table over [`NaiveTable`]s and [`RuleSet`].
#[derive(Debug)]
pub struct NaiveArbiter {
    config: Config,
    env: Env,
    rules: RuleSet,
    endpoints: NaiveTable<u64, EndpointEntry>,
    destinations: NaiveTable<Destination, HopCount>,
    known_proxies: NaiveTable<u64, ()>,
    seq: u64,
    departures: u64,
}

struct NaiveFacts<'a> {
    rules: &'a RuleSet,
    destinations: &'a NaiveTable<Destination, HopCount>,
    known_proxies: &'a NaiveTable<u64, ()>,
    flow: &'a Flow<'a>,
    now: Instant,
    window: Duration,
    memo: Consulted,
}

impl ConnectFacts for NaiveFacts<'_> {
    fn rule(&mut self) -> Option<RuleHit> {
        *self.memo.rule.get_or_insert_with(|| self.rules.first_match(self.flow))
    }
    fn trusted(&mut self) -> bool {
        *self.memo.trusted.get_or_insert_with(|| self.rules.is_trusted(&self.flow.app))
    }
    fn known_local_proxy(&mut self) -> bool {
        *self.memo.known_local_proxy.get_or_insert_with(|| {
            self.known_proxies.get(&self.flow.pid, self.now).is_some() || self.rules.is_known_proxy(&self.flow.app)
        })
    }
    fn hops(&mut self) -> u16 {
        let (dest, now, window) = (self.flow.destination(), self.now, self.window);
        *self.memo.hops.get_or_insert_with(|| self.destinations.get(&dest, now).map_or(0, |h| h.count_at(now, window)))
    }
}

impl NaiveArbiter {
    /// Reserves the tables.
    pub fn new(config: Config, capacities: Capacities, env: Env, rules: RuleSet) -> Self {
        Self {
            config,
            env,
            rules,
            endpoints: NaiveTable::new(capacities.endpoints as usize),
            destinations: NaiveTable::new(capacities.destinations as usize),
            known_proxies: NaiveTable::new(capacities.known_proxies as usize),
            seq: 0,
            departures: 0,
        }
    }

    /// Bytes reserved by the three tables.
    pub fn reserved_bytes(&self) -> usize {
        self.endpoints.reserved_bytes() + self.destinations.reserved_bytes() + self.known_proxies.reserved_bytes()
    }

    /// Bytes reserved by the endpoint table alone.
    pub fn endpoint_table_bytes(&self) -> usize {
        self.endpoints.reserved_bytes()
    }

    /// Live endpoint entries.
    pub fn live_endpoints(&self) -> usize {
        self.endpoints.len()
    }

    /// Entries pushed out of full tables so far.
    pub const fn departures(&self) -> u64 {
        self.departures
    }

    /// Puts an endpoint entry in directly (filling the table before a run
    /// without paying for a rule scan per entry).
    pub fn prefill(&mut self, endpoint: u64, entry: EndpointEntry, now: Instant) {
        let deadline = now.saturating_add(self.config.endpoint_ttl);
        if self.endpoints.insert(endpoint, entry, deadline).is_some() {
            self.departures += 1;
        }
    }

    fn next_seq(&mut self) -> u64 {
        self.seq += 1;
        self.seq
    }

    /// One connect-redirect decision: outcome and audit record.
    pub fn connect<'a>(&mut self, input: &ConnectRedirectInput<'a>, now: Instant) -> (Outcome, AuditRecord<'a>) {
        let loops: LoopPolicy = self.rules.loop_policy;
        let mut facts = NaiveFacts {
            rules: &self.rules,
            destinations: &self.destinations,
            known_proxies: &self.known_proxies,
            flow: &input.flow,
            now,
            window: loops.hop_window,
            memo: Consulted::default(),
        };
        let outcome = decide::connect_redirect(input, &self.env, &loops, &mut facts);
        let consulted = facts.memo;
        let cached = match outcome.verdict {
            Verdict::Block => Some(PermitOrBlock::Block),
            Verdict::Permit if matches!(outcome.reason, Reason::RevisitPermitted | Reason::LoopSuspected) => {
                Some(PermitOrBlock::Permit)
            }
            _ => None,
        };
        let entry = match (cached, outcome.redirect) {
            (Some(verdict), _) => Some(EndpointEntry::Cached { verdict, reason: outcome.reason }),
            (None, Some(r)) => {
                Some(EndpointEntry::Proxied { target_pid: r.target_pid, destination: input.flow.remote })
            }
            (None, None) => None,
        };
        if let Some(entry) = entry {
            let deadline = now.saturating_add(self.config.endpoint_ttl);
            if self.endpoints.insert(input.flow.endpoint, entry, deadline).is_some() {
                self.departures += 1;
            }
        }
        if outcome.verdict == Verdict::Proxy {
            let dest = input.flow.destination();
            let hop = match self.destinations.get(&dest, now) {
                Some(h) if h.open_at(now, loops.hop_window) => {
                    HopCount { start: h.start, count: h.count.saturating_add(1) }
                }
                _ => HopCount { start: now, count: 1 },
            };
            if self.destinations.insert(dest, hop, hop.start.saturating_add(loops.hop_window)).is_some() {
                self.departures += 1;
            }
        }
        let record = AuditRecord {
            seq: self.next_seq(),
            at: now,
            event: Event::ConnectRedirect(ConnectRecord {
                input: *input,
                env: self.env,
                loops,
                rules_id: self.rules.id,
                consulted,
                outcome,
            }),
        };
        (outcome, record)
    }

    /// One auth-connect decision: outcome and audit record.
    pub fn auth<'a>(&mut self, input: &AuthConnectInput<'a>, now: Instant) -> (Outcome, AuditRecord<'a>) {
        let entry = match self.endpoints.remove(&input.flow.endpoint, now) {
            Some((e, true)) => Some(e),
            Some((_, false)) | None => None,
        };
        let outcome = decide::auth_connect(input, entry);
        if outcome.reason == Reason::RedirectedByOtherObserved
            && let Some(pid) = input.target_pid.filter(|&p| p != 0)
            && self.known_proxies.insert(pid, (), now.saturating_add(self.config.known_proxy_ttl)).is_some()
        {
            self.departures += 1;
        }
        let record = AuditRecord {
            seq: self.next_seq(),
            at: now,
            event: Event::AuthConnect(AuthRecord { input: *input, entry, outcome }),
        };
        (outcome, record)
    }
}
