//! The harness: fill each column's tables to the configured number of live
//! endpoints, then time batches of connect-redirect and auth-connect
//! decisions on the same indications, and count allocations while doing so.
//!
//! Steady state: the endpoint table holds `endpoints` live entries (proxied
//! flows and cached verdicts waiting for their auth-connect) before every
//! round. A round decides connect-redirect for one batch of new endpoints,
//! then auth-connect for the same endpoints (WFP indicates auth-connect right
//! after connect-redirect), which consumes the entries the round left: so the
//! table is sized `endpoints + batch` and never evicts. Indications are built
//! before the clock starts. Each column runs its rounds on its own, so one
//! column's cache traffic does not disturb another's timing.

use std::hint::black_box;
use std::time::{Duration as Wall, Instant as Clock};

use arbiter::compiled::CompiledRules;
use arbiter::decide::Verdict;
use arbiter::flow::{AuthConnectInput, ConnectRedirectInput};
use arbiter::policy::RuleSet;
use arbiter::time::Instant;
use arbiter::{Arbiter, Capacities, Config};

use crate::naive::NaiveArbiter;
use crate::sampler::Sampler;
use crate::workload::{OWN_FILTER, OWN_PROXY_PID, Workload};

/// Reads the process's allocation count (allocations plus reallocations).
pub type AllocCounter<'a> = &'a dyn Fn() -> u64;

/// How much to run.
#[derive(Clone, Debug)]
pub struct Plan {
    /// Live endpoint counts to run at.
    pub endpoints: Vec<u32>,
    /// Decisions per timed batch.
    pub batch: usize,
    /// Fewest timed rounds per column and configuration.
    pub min_rounds: usize,
    /// Most timed rounds per column and configuration.
    pub max_rounds: usize,
    /// Stop adding rounds once a column has spent this long.
    pub budget: Wall,
    /// Decisions compared between the arbiter and the naive column.
    pub agreement_checks: usize,
}

impl Plan {
    /// The full run: 1,000, 65,536 and 1,000,000 live endpoints.
    pub fn full() -> Self {
        Self {
            endpoints: vec![1_000, 65_536, 1_000_000],
            batch: 1024,
            min_rounds: 5,
            max_rounds: 101,
            budget: Wall::from_millis(400),
            agreement_checks: 4096,
        }
    }

    /// A few seconds, for CI: 1,000 and 65,536 live endpoints, few rounds.
    pub fn quick() -> Self {
        Self {
            endpoints: vec![1_000, 65_536],
            batch: 256,
            min_rounds: 3,
            max_rounds: 15,
            budget: Wall::from_millis(60),
            agreement_checks: 1024,
        }
    }
}

/// One column's figures at one configuration.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Figures {
    /// Median ns per connect-redirect decision.
    pub connect_ns: f64,
    /// Median ns per auth-connect decision.
    pub auth_ns: f64,
    /// Median ns per decision over a round's connect-redirect and
    /// auth-connect batches together.
    pub combined_ns: f64,
    /// Allocations (and reallocations) per timed decision.
    pub allocs_per_decision: f64,
    /// Table bytes reserved.
    pub reserved_bytes: usize,
    /// Live endpoint entries when the rounds started.
    pub live_endpoints: usize,
    /// Timed rounds.
    pub rounds: usize,
    /// Of `reserved_bytes`, what the endpoint table alone reserves (the
    /// rest is the fixed-size destination and known-proxy tables).
    pub endpoint_table_bytes: usize,
}

impl Figures {
    /// Reserved table bytes per live endpoint (0 with no live endpoints).
    pub fn bytes_per_endpoint(&self) -> f64 {
        if self.live_endpoints == 0 { 0.0 } else { self.reserved_bytes as f64 / self.live_endpoints as f64 }
    }
}

/// All columns at one configuration.
#[derive(Clone, Debug, PartialEq)]
pub struct RunResult {
    /// Rules in the rule set.
    pub rules: usize,
    /// Live endpoints asked for.
    pub endpoints: u32,
    /// `Arbiter<CompiledRules>`.
    pub arbiter: Figures,
    /// Linear scan plus SipHash `HashMap`s.
    pub naive: Figures,
    /// The WFP sample's logic.
    pub sampler: Figures,
    /// Decisions on which the arbiter and the naive column were compared.
    pub compared: usize,
    /// How many of those disagreed (verdict, reason or redirect).
    pub disagreements: usize,
}

impl RunResult {
    /// How many times faster than naive the arbiter is (combined medians).
    pub fn ratio(&self) -> f64 {
        if self.arbiter.combined_ns > 0.0 { self.naive.combined_ns / self.arbiter.combined_ns } else { 0.0 }
    }
}

/// A configuration that was not run, and why.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Skipped {
    /// Rules.
    pub rules: usize,
    /// Live endpoints.
    pub endpoints: u32,
    /// Why.
    pub why: String,
}

/// Something a column does per decision.
trait Column {
    fn connect(&mut self, input: &ConnectRedirectInput<'_>, now: Instant) -> Verdict;
    fn auth(&mut self, input: &AuthConnectInput<'_>, now: Instant) -> Verdict;
}

impl Column for Arbiter<CompiledRules> {
    #[inline]
    fn connect(&mut self, input: &ConnectRedirectInput<'_>, now: Instant) -> Verdict {
        // The whole decision, audit record included, is the result; pass it
        // on by reference, as a driver would, rather than copying it again.
        let d = self.decide_connect_redirect(input, now);
        black_box(&d);
        d.verdict
    }
    #[inline]
    fn auth(&mut self, input: &AuthConnectInput<'_>, now: Instant) -> Verdict {
        let d = self.decide_auth_connect(input, now);
        black_box(&d);
        d.verdict
    }
}

impl Column for NaiveArbiter {
    #[inline]
    fn connect(&mut self, input: &ConnectRedirectInput<'_>, now: Instant) -> Verdict {
        let d = Self::connect(self, input, now);
        black_box(&d);
        d.0.verdict
    }
    #[inline]
    fn auth(&mut self, input: &AuthConnectInput<'_>, now: Instant) -> Verdict {
        let d = Self::auth(self, input, now);
        black_box(&d);
        d.0.verdict
    }
}

impl Column for Sampler<&CompiledRules> {
    #[inline]
    fn connect(&mut self, input: &ConnectRedirectInput<'_>, _now: Instant) -> Verdict {
        let d = Sampler::connect(self, input);
        black_box(&d);
        d.verdict
    }
    #[inline]
    fn auth(&mut self, input: &AuthConnectInput<'_>, _now: Instant) -> Verdict {
        let d = Sampler::auth(self, input);
        black_box(&d);
        d.verdict
    }
}

/// The virtual clock: one millisecond per thousand endpoints.
pub const fn clock(endpoint: u64) -> Instant {
    Instant::from_millis(endpoint / 1000)
}

/// The arbiter's start-up configuration in the benchmark.
pub fn config() -> Config {
    Config { own_filter: OWN_FILTER, ..Config::default() }
}

/// Table sizes for `endpoints` live endpoints plus one in-flight batch.
pub fn capacities(endpoints: u32, batch: usize) -> Capacities {
    Capacities {
        endpoints: endpoints.saturating_add(u32::try_from(batch).unwrap_or(u32::MAX)),
        ..Capacities::default()
    }
}

/// A fresh arbiter for the workload, our proxy registered.
pub fn new_arbiter(w: &Workload, compiled: CompiledRules, caps: Capacities) -> Option<Arbiter<CompiledRules>> {
    let mut a = Arbiter::new(config(), caps, compiled).ok()?;
    let p = w.env.proxy?;
    a.set_proxy(OWN_PROXY_PID, p.v4, p.v6).ok()?;
    Some(a)
}

/// The endpoints that fill the tables: the first `live` whose shape leaves
/// an entry. Returns them and the first endpoint after them.
pub fn fill_endpoints(w: &Workload, live: u32) -> (Vec<u64>, u64) {
    let mut out = Vec::with_capacity(live as usize);
    let mut e = 0u64;
    if !w.fillers.is_empty() {
        while out.len() < live as usize {
            if w.entry(e).is_some() {
                out.push(e);
            }
            e += 1;
        }
    }
    (out, e)
}

#[derive(Default)]
struct Samples {
    connect: Vec<f64>,
    auth: Vec<f64>,
    combined: Vec<f64>,
    allocs: u64,
    decisions: u64,
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    v.get(v.len() / 2).copied().unwrap_or(0.0)
}

/// Times rounds of `column` starting at endpoint `first`.
fn rounds<C: Column>(column: &mut C, w: &Workload, first: u64, plan: &Plan, count: AllocCounter<'_>) -> Samples {
    let batch = plan.batch as u64;
    let mut s = Samples::default();
    let spent = Clock::now();
    // Round 0 warms caches and branch predictors and is not kept.
    for round in 0..=plan.max_rounds as u64 {
        let base = first + round * batch;
        let connects: Vec<ConnectRedirectInput<'_>> = (base..base + batch).map(|e| w.connect(e)).collect();
        let auths: Vec<AuthConnectInput<'_>> = (base..base + batch).map(|e| w.auth(e)).collect();
        let now = clock(base);
        let allocs_before = count();
        let t0 = Clock::now();
        for input in &connects {
            black_box(column.connect(black_box(input), now));
        }
        let t1 = Clock::now();
        for input in &auths {
            black_box(column.auth(black_box(input), now));
        }
        let t2 = Clock::now();
        let allocs = count().saturating_sub(allocs_before);
        if round == 0 {
            continue;
        }
        let per = |d: Wall| d.as_nanos() as f64 / batch as f64;
        s.connect.push(per(t1 - t0));
        s.auth.push(per(t2 - t1));
        s.combined.push(per(t2 - t0) / 2.0);
        s.allocs += allocs;
        s.decisions += 2 * batch;
        if s.connect.len() >= plan.min_rounds && spent.elapsed() > plan.budget {
            break;
        }
    }
    s
}

fn figures(mut s: Samples, reserved_bytes: usize, live_endpoints: usize) -> Figures {
    Figures {
        connect_ns: median(&mut s.connect),
        auth_ns: median(&mut s.auth),
        combined_ns: median(&mut s.combined),
        allocs_per_decision: if s.decisions == 0 { 0.0 } else { s.allocs as f64 / s.decisions as f64 },
        reserved_bytes,
        live_endpoints,
        rounds: s.connect.len(),
        endpoint_table_bytes: reserved_bytes,
    }
}

/// Decides `n` connect-redirect/auth-connect pairs on a small fresh arbiter
/// and naive column (256 endpoint slots, so eviction is exercised too) and
/// counts the decisions whose verdict, reason or redirect differ.
pub fn disagreements(w: &Workload, compiled: &CompiledRules, n: usize) -> Option<usize> {
    let caps = Capacities { endpoints: 256, destinations: 64, known_proxies: 16 };
    let mut a = new_arbiter(w, compiled.clone(), caps)?;
    let mut naive = NaiveArbiter::new(config(), caps, w.env, w.rules.clone());
    let mut differ = 0usize;
    // Connect a window of endpoints ahead of their auth-connects, so entries
    // wait in the table (and some are evicted) as in a busy machine.
    const AHEAD: u64 = 300;
    for e in 0..(n as u64 / 2 + AHEAD) {
        let now = clock(e * 50);
        if e < n as u64 / 2 {
            let input = w.connect(e);
            let x = a.decide_connect_redirect(&input, now);
            let (y, _) = naive.connect(&input, now);
            differ += usize::from((x.verdict, x.reason, x.redirect) != (y.verdict, y.reason, y.redirect));
        }
        if let Some(back) = e.checked_sub(AHEAD) {
            let input = w.auth(back);
            let x = a.decide_auth_connect(&input, now);
            let (y, _) = naive.auth(&input, now);
            differ += usize::from((x.verdict, x.reason, x.redirect) != (y.verdict, y.reason, y.redirect));
        }
    }
    Some(differ)
}

/// Runs every column at `endpoints` live endpoints on workload `w`.
pub fn run_one(
    w: &Workload,
    compiled: &CompiledRules,
    endpoints: u32,
    plan: &Plan,
    count: AllocCounter<'_>,
) -> Option<RunResult> {
    let caps = capacities(endpoints, plan.batch);
    let (fill, first) = fill_endpoints(w, endpoints);

    // The arbiter: filled through its own decisions.
    let arbiter = {
        let mut a = new_arbiter(w, compiled.clone(), caps)?;
        for &e in &fill {
            a.decide_connect_redirect(&w.connect(e), clock(e));
        }
        let live = a.occupancy()[0] as usize;
        let s = rounds(&mut a, w, first, plan, count);
        let only_endpoints = Capacities { endpoints: caps.endpoints, destinations: 0, known_proxies: 0 };
        let endpoint_table_bytes = Arbiter::new(config(), only_endpoints, RuleSet::default()).ok()?.reserved_bytes();
        Figures { endpoint_table_bytes, ..figures(s, a.reserved_bytes(), live) }
    };

    // Naive: filled directly (a rule scan per filled entry would take minutes
    // at 10,000 rules and 1,000,000 endpoints, and measures nothing).
    let naive = {
        let mut n = NaiveArbiter::new(config(), caps, w.env, w.rules.clone());
        for &e in &fill {
            if let Some(entry) = w.entry(e) {
                n.prefill(e, entry, clock(e));
            }
        }
        let live = n.live_endpoints();
        let s = rounds(&mut n, w, first, plan, count);
        Figures { endpoint_table_bytes: n.endpoint_table_bytes(), ..figures(s, n.reserved_bytes(), live) }
    };

    // The sampler keeps no per-endpoint state.
    let sampler = {
        let mut s = Sampler::new(w.env, compiled);
        let samples = rounds(&mut s, w, first, plan, count);
        figures(samples, 0, endpoints as usize)
    };

    let compared = plan.agreement_checks;
    let disagreements = disagreements(w, compiled, compared)?;
    Some(RunResult { rules: w.rules.rules.len(), endpoints, arbiter, naive, sampler, compared, disagreements })
}

/// Bytes one live endpoint costs across all columns and the prepared
/// indications, generously: to skip configurations that would not fit.
const BYTES_PER_LIVE_ENDPOINT_ESTIMATE: u64 = 1024;

/// Memory the kernel says is available, if it says.
pub fn available_memory() -> Option<u64> {
    let info = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = info.lines().find(|l| l.starts_with("MemAvailable:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

/// Does a configuration with `endpoints` live endpoints fit in half the
/// available memory (other work shares the machine)?
pub fn fits(endpoints: u32, available: Option<u64>) -> bool {
    available.is_none_or(|a| u64::from(endpoints) * BYTES_PER_LIVE_ENDPOINT_ESTIMATE <= a / 2)
}

/// Is a counting allocator installed? (One deliberate allocation must show.)
pub fn counting(count: AllocCounter<'_>) -> bool {
    let before = count();
    black_box(Vec::<u8>::with_capacity(black_box(16)));
    count() > before
}
