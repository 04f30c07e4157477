//! The stateful arbiter: the decision table plus its bounded tables.
//!
//! Each decision is three steps: gather facts from the tables and the policy
//! (lazily, see [`crate::decide`]), run the pure table, then apply its effects
//! (cache a verdict, record a proxied endpoint, count a hop, learn a proxy).
//! Every decision returns exactly one audit record; entries pushed out of a
//! full table come back as extra records in [`Decision::departures`].

use core::net::{SocketAddrV4, SocketAddrV6};

use ahash::RandomState;

use crate::audit::ring::AuditRing;
use crate::audit::{
    AuditRecord, AuthRecord, ConnectParts, ConnectRecord, DepartedEntry, DepartureRecord, Event, EventRef,
    FallbackRecord, RecordRef,
};
use crate::decide::{
    self, ConnectFacts, Consulted, EndpointEntry, Env, Outcome, ProxyRegistration, RedirectTarget, Row, Verdict,
};
use crate::flow::{AuthConnectInput, ConnectRedirectInput, ConnectRedirectRef, Destination, Flow};
use crate::packed::PackedEntry;
use crate::policy::{LoopPolicy, PermitOrBlock, Policy, RuleHit};
use crate::reason::Reason;
use crate::table::{BoundedTable, Departure, OutOfMemory};
use crate::time::{Duration, Instant};

/// How many entries each table holds. All memory is reserved up front.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Capacities {
    /// Endpoints with a cached verdict or a proxied record.
    pub endpoints: u32,
    /// Destinations with a hop counter (C8).
    pub destinations: u32,
    /// Learned local proxy PIDs (A6).
    pub known_proxies: u32,
}

impl Default for Capacities {
    fn default() -> Self {
        Self { endpoints: 65_536, destinations: 16_384, known_proxies: 1_024 }
    }
}

/// Start-up configuration.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Config {
    /// Our callout filter's id.
    pub own_filter: u64,
    /// How long an endpoint entry waits for its auth-connect (default 60 s).
    pub endpoint_ttl: Duration,
    /// How long a learned local proxy stays known (default 10 min).
    pub known_proxy_ttl: Duration,
    /// Seeds for the tables' ahash (draw them from a random source).
    pub hash_seed: [u64; 4],
}

impl Default for Config {
    fn default() -> Self {
        Self {
            own_filter: 0,
            endpoint_ttl: Duration::from_secs(60),
            known_proxy_ttl: Duration::from_secs(600),
            hash_seed: [0x243f_6a88_85a3_08d3, 0x1319_8a2e_0370_7344, 0xa409_3822_299f_31d0, 0x082e_fa98_ec4e_6c89],
        }
    }
}

/// Which table an entry left.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum TableId {
    /// Per-endpoint cached verdicts and proxied records.
    Endpoints = 1,
    /// C8's hop counters.
    Destinations = 2,
    /// Learned local proxies.
    KnownProxies = 3,
}

impl TableId {
    /// The name used in reports.
    pub const fn name(self) -> &'static str {
        match self {
            Self::Endpoints => "endpoints",
            Self::Destinations => "destinations",
            Self::KnownProxies => "known-proxies",
        }
    }

    /// From the wire code.
    pub const fn from_u8(v: u8) -> Option<Self> {
        match v {
            1 => Some(Self::Endpoints),
            2 => Some(Self::Destinations),
            3 => Some(Self::KnownProxies),
            _ => None,
        }
    }

    const fn slot(self) -> usize {
        match self {
            Self::Endpoints => 0,
            Self::Destinations => 1,
            Self::KnownProxies => 2,
        }
    }
}

/// C8's counter for one destination: hops since `start`, a fixed window.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct HopCount {
    /// When the window opened (the first proxied hop in it).
    pub start: Instant,
    /// Proxied hops in the window.
    pub count: u16,
}

impl HopCount {
    /// Is the window this counter opened still open at `now`?
    pub const fn open_at(&self, now: Instant, window: Duration) -> bool {
        now.as_millis() < self.start.saturating_add(window).as_millis()
    }

    /// Hops counted in the window still open at `now` (0 once it closed).
    pub const fn count_at(&self, now: Instant, window: Duration) -> u16 {
        if self.open_at(now, window) { self.count } else { 0 }
    }
}

/// Running totals, for the control device and reports.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counters {
    /// Decisions at connect-redirect.
    pub connect_redirect: u64,
    /// Decisions at auth-connect.
    pub auth_connect: u64,
    /// Decisions per verdict: continue, permit, block, proxy.
    pub verdicts: [u64; 4],
    /// Entries evicted from a full table, per [`TableId`] (endpoints, destinations, known proxies).
    pub evicted: [u64; 3],
    /// Entries that expired, per [`TableId`].
    pub expired: [u64; 3],
    /// Endpoint entries dropped by endpoint closure before auth-connect.
    pub forgotten: u64,
    /// `loop-suspected` verdicts.
    pub loops_suspected: u64,
    /// Audit records produced (decisions and departures).
    pub records: u64,
}

/// Up to two departures caused by one decision.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Departures {
    items: [Option<DepartureRecord>; 2],
}

impl Departures {
    fn push(&mut self, r: DepartureRecord) {
        if let Some(slot) = self.items.iter_mut().find(|s| s.is_none()) {
            *slot = Some(r);
        }
    }

    /// The departure records, in the order they happened.
    pub fn iter(&self) -> impl Iterator<Item = &DepartureRecord> + '_ {
        self.items.iter().flatten()
    }

    /// How many.
    pub fn len(&self) -> usize {
        self.iter().count()
    }

    /// True when the decision pushed nothing out.
    pub fn is_empty(&self) -> bool {
        self.items.iter().all(Option::is_none)
    }
}

/// One decision: verdict, reason, redirect target, and its audit record.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Decision<'a> {
    /// What to do.
    pub verdict: Verdict,
    /// Why.
    pub reason: Reason,
    /// Where to, for `proxy`.
    pub redirect: Option<RedirectTarget>,
    /// The decision's audit record (invariant 3).
    pub audit: AuditRecord<'a>,
    /// Entries this decision pushed out of full tables, each audited.
    pub departures: Departures,
}

/// Rule-set swap failed: nothing changed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SetProxyError {
    /// PID 0 is the idle process; never a proxy.
    ZeroPid,
    /// Neither an IPv4 nor an IPv6 listener.
    NoListener,
    /// Above 32 bits: WFP's localRedirectTargetPID is a DWORD.
    PidTooLarge,
}

impl core::fmt::Display for SetProxyError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            Self::ZeroPid => f.write_str("proxy PID 0 is not a process"),
            Self::NoListener => f.write_str("a proxy needs an IPv4 or an IPv6 listener"),
            Self::PidTooLarge => f.write_str("proxy PID does not fit localRedirectTargetPID (32 bits)"),
        }
    }
}

impl core::error::Error for SetProxyError {}

/// The policy core's state machine.
#[derive(Debug)]
pub struct Arbiter<P> {
    config: Config,
    policy: P,
    /// Our filter id (from `config`) and our proxy: what the table compares
    /// against, kept whole so that a decision borrows it instead of copying.
    env: Env,
    endpoints: EndpointTable,
    destinations: BoundedTable<Destination, HopCount>,
    known_proxies: BoundedTable<u64, ()>,
    counters: Counters,
    seq: u64,
    /// What the decision under way pushed out of full tables, until its
    /// records are written: empty between decisions. Kept here rather than
    /// on the stack of the kernel's classifyFn, which is small.
    departed: Departures,
}

/// The endpoint table: [`EndpointEntry`] outside, [`PackedEntry`] inside.
#[derive(Debug)]
struct EndpointTable(BoundedTable<u64, PackedEntry>);

impl EndpointTable {
    fn get(&self, endpoint: &u64, now: Instant) -> Option<EndpointEntry> {
        self.0.get(endpoint, now).map(PackedEntry::unpack)
    }

    fn insert(
        &mut self,
        endpoint: u64,
        entry: EndpointEntry,
        deadline: Instant,
        now: Instant,
    ) -> Option<(u64, EndpointEntry, Departure)> {
        let departed = self.0.insert(endpoint, PackedEntry::pack(&entry), deadline, now);
        departed.map(|(k, v, why)| (k, v.unpack(), why))
    }

    fn remove(&mut self, endpoint: &u64, now: Instant) -> Option<(EndpointEntry, bool)> {
        self.0.remove(endpoint, now).map(|(v, live)| (v.unpack(), live))
    }

    fn pop_expired(&mut self, now: Instant) -> Option<(u64, EndpointEntry)> {
        self.0.pop_expired(now).map(|(k, v)| (k, v.unpack()))
    }

    const fn len(&self) -> u32 {
        self.0.len()
    }

    fn reserved_bytes(&self) -> usize {
        self.0.reserved_bytes()
    }
}

/// Builds a decided row's outcome into `out`. Its own frame: the outcome
/// (some 120 bytes) is never on the stack of the frames that match the
/// rules, only written where the caller keeps it.
#[inline(never)]
fn settle(row: Row, flow: &Flow<'_>, env: &Env, out: &mut Outcome) {
    *out = row.outcome(flow, env);
}

/// The live facts: answers from the tables and the policy, memoized. One
/// reference to the arbiter rather than one per table: it is on the stack
/// while the rules are matched.
struct Live<'t, 'f, P> {
    arbiter: &'t Arbiter<P>,
    flow: &'t Flow<'f>,
    now: Instant,
    window: Duration,
    memo: Consulted,
}

impl<P: Policy> ConnectFacts for Live<'_, '_, P> {
    #[inline(always)]
    fn rule(&mut self) -> Option<RuleHit> {
        *self.memo.rule.get_or_insert_with(|| self.arbiter.policy.first_match(self.flow))
    }
    fn trusted(&mut self) -> bool {
        *self.memo.trusted.get_or_insert_with(|| self.arbiter.policy.is_trusted(&self.flow.app))
    }
    fn known_local_proxy(&mut self) -> bool {
        *self.memo.known_local_proxy.get_or_insert_with(|| {
            self.arbiter.known_proxies.get(&self.flow.pid, self.now).is_some()
                || self.arbiter.policy.is_known_proxy(&self.flow.app)
        })
    }
    fn hops(&mut self) -> u16 {
        let (dest, now, window) = (self.flow.destination(), self.now, self.window);
        *self
            .memo
            .hops
            .get_or_insert_with(|| self.arbiter.destinations.get(&dest, now).map_or(0, |h| h.count_at(now, window)))
    }
}

impl<P: Policy> Arbiter<P> {
    /// Reserves every table. Fails cleanly, changing nothing, when memory is short.
    pub fn new(config: Config, capacities: Capacities, policy: P) -> Result<Self, OutOfMemory> {
        let [a, b, c, d] = config.hash_seed;
        // Each table gets its own seeds, so collisions in one say nothing of another.
        let seeded = |n: u64| RandomState::with_seeds(a ^ n, b.rotate_left(7) ^ n, c, d.wrapping_add(n));
        Ok(Self {
            config,
            policy,
            env: Env { own_filter: config.own_filter, proxy: None },
            endpoints: EndpointTable(BoundedTable::new(capacities.endpoints, seeded(1))?),
            destinations: BoundedTable::new(capacities.destinations, seeded(2))?,
            known_proxies: BoundedTable::new(capacities.known_proxies, seeded(3))?,
            counters: Counters::default(),
            seq: 0,
            departed: Departures::default(),
        })
    }

    /// The loaded policy.
    pub const fn policy(&self) -> &P {
        &self.policy
    }

    /// Swaps in a new policy atomically and hands back the old one. Tables
    /// (cached verdicts, hop counters, learned proxies) carry over.
    pub fn replace_policy(&mut self, policy: P) -> P {
        core::mem::replace(&mut self.policy, policy)
    }

    /// The start-up configuration.
    pub const fn config(&self) -> &Config {
        &self.config
    }

    /// Registers our proxy: its PID and listeners.
    pub fn set_proxy(
        &mut self,
        pid: u64,
        v4: Option<SocketAddrV4>,
        v6: Option<SocketAddrV6>,
    ) -> Result<(), SetProxyError> {
        if pid == 0 {
            return Err(SetProxyError::ZeroPid);
        }
        if pid > u64::from(u32::MAX) {
            // localRedirectTargetPID is a DWORD: such a PID cannot be a target.
            return Err(SetProxyError::PidTooLarge);
        }
        if v4.is_none() && v6.is_none() {
            return Err(SetProxyError::NoListener);
        }
        self.env.proxy = Some(ProxyRegistration { pid, v4, v6 });
        Ok(())
    }

    /// Unregisters our proxy: from now on rules that proxy give `proxy-unavailable`.
    pub fn clear_proxy(&mut self) {
        self.env.proxy = None;
    }

    /// The registered proxy.
    pub const fn proxy(&self) -> Option<&ProxyRegistration> {
        self.env.proxy.as_ref()
    }

    /// What the decision functions compare against.
    pub const fn env(&self) -> Env {
        self.env
    }

    /// Running totals.
    pub const fn counters(&self) -> &Counters {
        &self.counters
    }

    /// Live entries per table: endpoints, destinations, known proxies.
    pub const fn occupancy(&self) -> [u32; 3] {
        [self.endpoints.len(), self.destinations.len(), self.known_proxies.len()]
    }

    /// Bytes reserved per table: endpoints, destinations, known proxies.
    pub fn reserved_bytes_per_table(&self) -> [usize; 3] {
        [self.endpoints.reserved_bytes(), self.destinations.reserved_bytes(), self.known_proxies.reserved_bytes()]
    }

    /// Bytes reserved by the three tables.
    pub fn reserved_bytes(&self) -> usize {
        self.endpoints
            .reserved_bytes()
            .saturating_add(self.destinations.reserved_bytes())
            .saturating_add(self.known_proxies.reserved_bytes())
    }

    /// Is `pid` a learned local proxy at `now`?
    pub fn is_learned_proxy(&self, pid: u64, now: Instant) -> bool {
        self.known_proxies.get(&pid, now).is_some()
    }

    /// The endpoint table's live entry for `endpoint`.
    pub fn endpoint_entry(&self, endpoint: u64, now: Instant) -> Option<EndpointEntry> {
        self.endpoints.get(&endpoint, now)
    }

    /// The next audit sequence number, for records the caller writes itself
    /// (a bind-redirect observation, a boot-guard change).
    pub fn allocate_seq(&mut self) -> u64 {
        self.next_seq()
    }

    fn next_seq(&mut self) -> u64 {
        let s = self.seq;
        self.seq = self.seq.wrapping_add(1);
        self.counters.records = self.counters.records.wrapping_add(1);
        s
    }

    fn count_verdict(&mut self, v: Verdict) {
        if let Some(c) = self.counters.verdicts.get_mut(v as usize) {
            *c = c.wrapping_add(1);
        }
    }

    fn count_departure(&mut self, table: TableId, why: Departure) {
        let counter = match why {
            Departure::Evicted => &mut self.counters.evicted,
            Departure::Expired => &mut self.counters.expired,
        };
        if let Some(c) = counter.get_mut(table.slot()) {
            *c = c.wrapping_add(1);
        }
    }

    /// Counts a departure and makes its audit record.
    fn departure(&mut self, table: TableId, why: Departure, entry: DepartedEntry, now: Instant) -> DepartureRecord {
        self.count_departure(table, why);
        DepartureRecord { seq: self.next_seq(), at: now, table, why, entry }
    }

    /// Stores an endpoint's cached verdict or proxied record for its
    /// auth-connect, auditing whatever a full table pushes out.
    fn store_endpoint(&mut self, endpoint: u64, entry: EndpointEntry, now: Instant) {
        let deadline = now.saturating_add(self.config.endpoint_ttl);
        if let Some((k, v, why)) = self.endpoints.insert(endpoint, entry, deadline, now) {
            let rec = self.departure(TableId::Endpoints, why, DepartedEntry::Endpoint { endpoint: k, entry: v }, now);
            self.departed.push(rec);
        }
    }

    /// Decides one FWPM_LAYER_ALE_CONNECT_REDIRECT indication (rows C1..C14).
    pub fn decide_connect_redirect<'a>(&mut self, input: &ConnectRedirectInput<'a>, now: Instant) -> Decision<'a> {
        let env = self.env();
        let loops = self.policy.loop_policy();
        let parts = input.as_parts();
        let mut consulted = Consulted::default();
        let outcome = self.consult_connect(&parts, now, &mut consulted).outcome(&input.flow, &env);
        self.connect_effects(&parts, &outcome, &loops, now);
        let audit = AuditRecord {
            seq: self.next_seq(),
            at: now,
            event: Event::ConnectRedirect(ConnectRecord {
                input: *input,
                env,
                loops,
                rules_id: self.policy.id(),
                consulted,
                outcome,
            }),
        };
        let departures = core::mem::take(&mut self.departed);
        Self::decision(outcome, audit, departures)
    }

    /// [`Self::decide_connect_redirect`] for the kernel: the same decision,
    /// effects, counters and sequence numbers, but the audit record and any
    /// departures go straight into `ring` (the bytes and order
    /// [`AuditRing::push_record`] of the [`Decision`]'s records would give),
    /// and only the outcome comes back. classifyFn runs on a small kernel
    /// stack, where a [`Decision`] (some 780 bytes) is too much to hold.
    pub fn decide_connect_redirect_into(
        &mut self,
        input: &ConnectRedirectInput<'_>,
        now: Instant,
        ring: &mut AuditRing,
    ) -> Outcome {
        let mut outcome = Outcome::of(Verdict::Continue, Reason::LayerDataUnavailable);
        self.decide_connect_redirect_to(&input.as_parts(), now, ring, &mut outcome);
        outcome
    }

    /// [`Self::decide_connect_redirect_into`] over a borrowed input, with
    /// the outcome written to `out` instead of returned: the kernel adapter
    /// keeps both the previousVersion chain and the outcome in its own
    /// state, so that their some 260 bytes are not on its frame while the
    /// rules are matched. Always inlined: its few locals share the caller's
    /// frame, one frame less above the rule match.
    #[inline(always)]
    pub fn decide_connect_redirect_to(
        &mut self,
        input: &ConnectRedirectRef<'_, '_>,
        now: Instant,
        ring: &mut AuditRing,
        out: &mut Outcome,
    ) {
        let mut consulted = Consulted::default();
        let row = self.consult_connect(input, now, &mut consulted);
        settle(row, input.flow, &self.env, out);
        self.record_connect(input, &consulted, out, now, ring);
    }

    /// Rows C1..C14 with live facts: the deciding row, and the facts it
    /// consulted in `memo`. Inlined into its callers: one frame less above
    /// the rule match on the classify path's stack.
    #[inline(always)]
    fn consult_connect(&self, input: &ConnectRedirectRef<'_, '_>, now: Instant, memo: &mut Consulted) -> Row {
        let loops = self.policy.loop_policy();
        let mut live =
            Live { arbiter: self, flow: input.flow, now, window: loops.hop_window, memo: Consulted::default() };
        let row = decide::connect_redirect_row(input, &self.env, &loops, &mut live);
        *memo = live.memo;
        row
    }

    /// The effects of a connect-redirect decision, then its records into
    /// `ring`. Not inlined: the caller's frame stays small while the rules
    /// are matched, and this one is only live afterwards. The environment
    /// and loop policy are read again: nothing between the two calls
    /// changes them.
    #[inline(never)]
    fn record_connect(
        &mut self,
        input: &ConnectRedirectRef<'_, '_>,
        consulted: &Consulted,
        outcome: &Outcome,
        now: Instant,
        ring: &mut AuditRing,
    ) {
        let loops = self.policy.loop_policy();
        self.connect_effects(input, outcome, &loops, now);
        let seq = self.next_seq();
        let rules_id = self.policy.id();
        let Self { env, departed, .. } = self;
        let parts = ConnectParts { input: *input, env, loops: &loops, rules_id, consulted, outcome };
        push_decision(ring, &RecordRef { seq, at: now, event: EventRef::Connect(parts) }, departed);
    }

    /// What a connect-redirect outcome changes: the endpoint's cached verdict
    /// or proxied record, the destination's hop count, the counters.
    fn connect_effects(
        &mut self,
        input: &ConnectRedirectRef<'_, '_>,
        outcome: &Outcome,
        loops: &LoopPolicy,
        now: Instant,
    ) {
        let endpoint = input.flow.endpoint;
        let cached = match outcome.verdict {
            // Invariant 2: every block is enforced again at auth-connect (A1).
            Verdict::Block => Some(PermitOrBlock::Block),
            // A2 lists the permits of C3 and C8 only: C5 must reach A6 so the
            // other vendor's proxy is learned, and C7's flow has nothing to verify.
            Verdict::Permit if matches!(outcome.reason, Reason::RevisitPermitted | Reason::LoopSuspected) => {
                Some(PermitOrBlock::Permit)
            }
            _ => None,
        };
        let entry = match (cached, &outcome.redirect) {
            (Some(verdict), _) => Some(EndpointEntry::Cached { verdict, reason: outcome.reason }),
            (None, Some(r)) => {
                Some(EndpointEntry::Proxied { target_pid: r.target_pid, destination: input.flow.remote })
            }
            (None, None) => None,
        };
        if let Some(entry) = entry {
            self.store_endpoint(endpoint, entry, now);
        }
        if outcome.verdict == Verdict::Proxy {
            self.count_hop(input.flow, loops.hop_window, now);
        }
        if outcome.reason == Reason::LoopSuspected {
            self.counters.loops_suspected = self.counters.loops_suspected.wrapping_add(1);
        }
        self.counters.connect_redirect = self.counters.connect_redirect.wrapping_add(1);
        self.count_verdict(outcome.verdict);
    }

    /// "Every proxy verdict counts one hop for its destination." Its own
    /// frame (never inlined): the table update beside the endpoint's, not
    /// on top of it.
    #[inline(never)]
    fn count_hop(&mut self, flow: &Flow<'_>, window: Duration, now: Instant) {
        let departed = self.destinations.upsert(flow.destination(), now, |live| match live {
            // Same window: count the hop; the deadline (window end) stays,
            // and so does the entry's place in the age order.
            Some(h) if h.open_at(now, window) => {
                let hop = HopCount { start: h.start, count: h.count.saturating_add(1) };
                (hop, h.start.saturating_add(window), false)
            }
            _ => (HopCount { start: now, count: 1 }, now.saturating_add(window), true),
        });
        if let Some((k, v, why)) = departed {
            let rec =
                self.departure(TableId::Destinations, why, DepartedEntry::Destination { destination: k, hops: v }, now);
            self.departed.push(rec);
        }
    }

    /// Decides one FWPM_LAYER_ALE_AUTH_CONNECT indication (rows A1..A7). The
    /// endpoint's entry is consumed.
    pub fn decide_auth_connect<'a>(&mut self, input: &AuthConnectInput<'a>, now: Instant) -> Decision<'a> {
        let (entry, outcome) = self.auth_effects(input, now);
        let audit = AuditRecord {
            seq: self.next_seq(),
            at: now,
            event: Event::AuthConnect(AuthRecord { input: *input, entry, outcome }),
        };
        let departures = core::mem::take(&mut self.departed);
        Self::decision(outcome, audit, departures)
    }

    /// [`Self::decide_auth_connect`] with its records written straight into
    /// `ring`, as [`Self::decide_connect_redirect_into`] does.
    #[inline(never)]
    pub fn decide_auth_connect_into(
        &mut self,
        input: &AuthConnectInput<'_>,
        now: Instant,
        ring: &mut AuditRing,
    ) -> Outcome {
        let (entry, outcome) = self.auth_effects(input, now);
        let seq = self.next_seq();
        let event = EventRef::Auth { input, entry: entry.as_ref(), outcome: &outcome };
        push_decision(ring, &RecordRef { seq, at: now, event }, &mut self.departed);
        outcome
    }

    /// Rows A1..A7 and their effects: the entry the endpoint held (now
    /// consumed), the outcome; a learned proxy, the counters.
    fn auth_effects(&mut self, input: &AuthConnectInput<'_>, now: Instant) -> (Option<EndpointEntry>, Outcome) {
        let entry = match self.endpoints.remove(&input.flow.endpoint, now) {
            Some((e, true)) => Some(e),
            Some((_, false)) => {
                self.count_departure(TableId::Endpoints, Departure::Expired);
                None
            }
            None => None,
        };
        let outcome = decide::auth_connect(input, entry);
        // A6, and the vocabulary's "known local proxy": any process a
        // redirector targets locally is one, whatever row decided. Learning
        // only at A6 misses a proxy whose flow met a cached verdict (A1/A2):
        // with two other vendors, the second one's proxy then never counts
        // for C8 and its record-less reconnects loop through us
        // (`arbiter explore --vendors 3` found this). Our own proxy is C7's.
        let own_proxy = self.env.proxy.map(|p| p.pid);
        if input.redirected
            && let Some(pid) = input.target_pid.filter(|&p| p != 0 && Some(p) != own_proxy)
        {
            let until = now.saturating_add(self.config.known_proxy_ttl);
            if let Some((k, _, why)) = self.known_proxies.insert(pid, (), until, now) {
                let rec = self.departure(TableId::KnownProxies, why, DepartedEntry::KnownProxy { pid: k }, now);
                self.departed.push(rec);
            }
        }
        self.counters.auth_connect = self.counters.auth_connect.wrapping_add(1);
        self.count_verdict(outcome.verdict);
        (entry, outcome)
    }

    const fn decision(outcome: Outcome, audit: AuditRecord<'_>, departures: Departures) -> Decision<'_> {
        Decision { verdict: outcome.verdict, reason: outcome.reason, redirect: outcome.redirect, audit, departures }
    }

    /// A connect-redirect classification the driver held (pended) while no
    /// proxy was registered ran out of time and gets the configured fallback.
    /// Recorded and audited like a decision (`pend-timeout`); a fallback block
    /// is cached for auth-connect like any connect-redirect block (A1), since
    /// a block at a redirect layer alone does not reliably stop the flow.
    ///
    /// `fallback` is `continue`, `permit` or `block`; `proxy` cannot be a
    /// fallback (there is no proxy) and is given as `continue`.
    pub fn decide_fallback<'a>(
        &mut self,
        input: &ConnectRedirectInput<'a>,
        fallback: Verdict,
        now: Instant,
    ) -> Decision<'a> {
        self.decide_without_table(input, fallback, Reason::PendTimeout, now)
    }

    /// A connect-redirect classification the adapter answered without the
    /// decision table: held past its timeout (`pend-timeout`), or one whose
    /// layer data or chain it could not get (`layer-data-unavailable`,
    /// `unreadable-indication`). Audited (kind 4 for `pend-timeout`, kind 5
    /// otherwise) and counted like a decision; a block is cached for
    /// auth-connect.
    pub fn decide_without_table<'a>(
        &mut self,
        input: &ConnectRedirectInput<'a>,
        verdict: Verdict,
        reason: Reason,
        now: Instant,
    ) -> Decision<'a> {
        let outcome = self.without_table_effects(&input.as_parts(), verdict, reason, now);
        let audit = AuditRecord {
            seq: self.next_seq(),
            at: now,
            event: Event::Fallback(FallbackRecord { input: *input, outcome }),
        };
        let departures = core::mem::take(&mut self.departed);
        Self::decision(outcome, audit, departures)
    }

    /// [`Self::decide_without_table`] with its records written straight into
    /// `ring`, as [`Self::decide_connect_redirect_into`] does.
    pub fn decide_without_table_into(
        &mut self,
        input: &ConnectRedirectInput<'_>,
        verdict: Verdict,
        reason: Reason,
        now: Instant,
        ring: &mut AuditRing,
    ) -> Outcome {
        self.decide_without_table_to(&input.as_parts(), verdict, reason, now, ring)
    }

    /// [`Self::decide_without_table_into`] over a borrowed input (see
    /// [`Self::decide_connect_redirect_to`]).
    #[inline(never)]
    pub fn decide_without_table_to(
        &mut self,
        input: &ConnectRedirectRef<'_, '_>,
        verdict: Verdict,
        reason: Reason,
        now: Instant,
        ring: &mut AuditRing,
    ) -> Outcome {
        let outcome = self.without_table_effects(input, verdict, reason, now);
        let seq = self.next_seq();
        let event = EventRef::Fallback { input: *input, outcome: &outcome };
        push_decision(ring, &RecordRef { seq, at: now, event }, &mut self.departed);
        outcome
    }

    fn without_table_effects(
        &mut self,
        input: &ConnectRedirectRef<'_, '_>,
        verdict: Verdict,
        reason: Reason,
        now: Instant,
    ) -> Outcome {
        let verdict = if verdict == Verdict::Proxy { Verdict::Continue } else { verdict };
        let outcome = Outcome { verdict, reason, redirect: None };
        if verdict == Verdict::Block {
            let entry = EndpointEntry::Cached { verdict: PermitOrBlock::Block, reason };
            self.store_endpoint(input.flow.endpoint, entry, now);
        }
        self.counters.connect_redirect = self.counters.connect_redirect.wrapping_add(1);
        self.count_verdict(outcome.verdict);
        outcome
    }

    /// ALE_ENDPOINT_CLOSURE: the socket is gone, so is its entry. Returns the
    /// entry it held, if any.
    pub fn forget_endpoint(&mut self, endpoint: u64, now: Instant) -> Option<EndpointEntry> {
        let (entry, _) = self.endpoints.remove(&endpoint, now)?;
        self.counters.forgotten = self.counters.forgotten.wrapping_add(1);
        Some(entry)
    }

    /// Drops every entry whose time is up. Expired cached verdicts are
    /// audited (a block that never met its auth-connect is worth knowing);
    /// other expiries are only counted. Returns how many entries left.
    pub fn expire(&mut self, now: Instant, mut audit: impl FnMut(DepartureRecord)) -> usize {
        let mut n = 0usize;
        while let Some((endpoint, entry)) = self.endpoints.pop_expired(now) {
            n = n.saturating_add(1);
            if matches!(entry, EndpointEntry::Cached { .. }) {
                audit(self.departure(
                    TableId::Endpoints,
                    Departure::Expired,
                    DepartedEntry::Endpoint { endpoint, entry },
                    now,
                ));
            } else {
                self.count_departure(TableId::Endpoints, Departure::Expired);
            }
        }
        while self.destinations.pop_expired(now).is_some() {
            n = n.saturating_add(1);
            self.count_departure(TableId::Destinations, Departure::Expired);
        }
        while self.known_proxies.pop_expired(now).is_some() {
            n = n.saturating_add(1);
            self.count_departure(TableId::KnownProxies, Departure::Expired);
        }
        n
    }
}

/// A decision's record, then the records of what it pushed out of full
/// tables (emptying `departed`): the order in which [`Decision::audit`] and
/// [`Decision::departures`] are audited.
fn push_decision(ring: &mut AuditRing, record: &RecordRef<'_, '_>, departed: &mut Departures) {
    ring.push_ref(record);
    for d in departed.iter() {
        ring.push_departure(d);
    }
    *departed = Departures::default();
}
