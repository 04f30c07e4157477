//! The state-caching depth-first search over one setup, and the runs over
//! many setups on worker threads.

use std::collections::HashMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};

use arbiter::RuleSet;

use super::report::{Counterexample, Exploration, Findings, SetupResult, Tally};
use super::setups::{Bounds, RulesCache, Setup, setups};
use super::world::{Move, Phase, World, run_alone};
use crate::scenario::{Ours, Outcome};

/// The search over one setup.
pub(super) struct Search<'a> {
    setup: &'a Setup,
    rules: &'a RuleSet,
    /// Per connection: does it fail alone, with our driver uninstalled?
    fails_without_us: HashMap<usize, bool>,
    /// Executions represented below each finished state, by fingerprint.
    done: HashMap<u128, u128>,
    /// Hop-less fingerprints of the states on the current path.
    on_path: HashMap<u128, usize>,
    moves: Vec<Move>,
    result: SetupResult,
}

impl Search<'_> {
    fn failure(&mut self, w: &World, i: usize) {
        let Some(chain) = w.chains.get(i) else { return };
        let Phase::Done(outcome) = &chain.phase else { return };
        if outcome.is_explained() {
            return;
        }
        let moves: Vec<String> = self
            .moves
            .iter()
            .map(|m| match *m {
                Move::Step(c) => format!("c{}", c + 1),
                Move::Cycle(c) => format!("c{} cycles", c + 1),
            })
            .collect();
        let other_moves = self.moves.iter().filter(|m| !matches!(m, Move::Step(c) | Move::Cycle(c) if *c == i)).count();
        let cx = Counterexample {
            setup: self.setup.clone(),
            connection: i,
            outcome: outcome.clone(),
            chain: chain.path.clone(),
            hops: chain.hops,
            moves,
            other_moves,
        };
        // Only our arbiter's failures need telling apart: the baseline's are
        // all shown, as what the arbiter fixes.
        let peer_only = self.peer_only(i);
        let slot = if peer_only { &mut self.result.peer_only } else { &mut self.result.counterexample };
        if slot.as_ref().is_none_or(|best| cx.rank() < best.rank()) {
            *slot = Some(cx);
        }
    }

    /// With our arbiter in place: does connection `i` fail alone with our
    /// driver uninstalled (so the peers cause it among themselves)?
    fn peer_only(&mut self, i: usize) -> bool {
        let (setup, rules) = (self.setup, self.rules);
        setup.ours == Ours::Arbiter
            && *self
                .fails_without_us
                .entry(i)
                .or_insert_with(|| run_alone(setup, rules, i, true).is_some_and(|o| !o.is_explained()))
    }

    /// Explores from the live machine `w` (at the end of `self.moves`);
    /// returns how many complete executions lie below.
    fn visit(&mut self, mut w: World) -> u128 {
        if let Some(e) = w.model_error.take() {
            self.result.model_error.get_or_insert(e);
            return 0;
        }
        let key = w.fingerprint(true);
        if let Some(&n) = self.done.get(&key) {
            return n;
        }
        self.result.tally.states += 1;
        let enabled = w.enabled();
        if enabled.is_empty() {
            self.result.tally.end_states += 1;
            let mut failing = false;
            for (i, c) in w.chains.iter().enumerate() {
                if let Phase::Done(o) = &c.phase {
                    let by_peers = !o.is_explained() && self.peer_only(i);
                    let t = &mut self.result.tally;
                    match o {
                        Outcome::Delivered => t.delivered += 1,
                        Outcome::Blocked { .. } => t.blocked += 1,
                        Outcome::Loop(_) => t.loops += 1,
                        Outcome::Unexplained(_) => t.unexplained += 1,
                    }
                    t.peer_loops += u64::from(by_peers && matches!(o, Outcome::Loop(_)));
                    t.peer_unexplained += u64::from(by_peers && matches!(o, Outcome::Unexplained(_)));
                    failing |= !o.is_explained();
                }
            }
            self.result.tally.failing_end_states += u64::from(failing);
            self.done.insert(key, 1);
            return 1;
        }
        let hopless = w.fingerprint(false);
        *self.on_path.entry(hopless).or_insert(0) += 1;
        let mut total: u128 = 0;
        let mut live = Some(w);
        for (k, &i) in enabled.iter().enumerate() {
            self.result.tally.transitions += 1;
            // Every move but the last runs on a fork; the last takes the machine itself.
            let forked = match &live {
                Some(w) if k + 1 < enabled.len() => {
                    self.result.tally.forks += 1;
                    Some(w.fork(self.setup))
                }
                _ => None,
            };
            let mut next = match forked {
                Some(Ok(w)) => w,
                Some(Err(e)) => {
                    self.result.model_error.get_or_insert(e);
                    break;
                }
                None => match live.take() {
                    Some(w) => w,
                    None => break,
                },
            };
            let ended = next.step(i);
            self.moves.push(Move::Step(i));
            self.result.tally.audit_failures += u64::try_from(next.take_audit_failures()).unwrap_or(u64::MAX);
            if ended {
                self.failure(&next, i);
            } else if self.on_path.contains_key(&next.fingerprint(false)) {
                next.cycle(i);
                self.moves.push(Move::Cycle(i));
                self.failure(&next, i);
            }
            total = total.saturating_add(self.visit(next));
            if self.moves.last().is_some_and(|m| matches!(m, Move::Cycle(_))) {
                self.moves.pop();
            }
            self.moves.pop();
        }
        if let Some(n) = self.on_path.get_mut(&hopless) {
            *n -= 1;
            if *n == 0 {
                self.on_path.remove(&hopless);
            }
        }
        self.done.insert(key, total);
        total
    }
}

/// Explores every interleaving of one setup.
pub fn explore_setup(setup: &Setup, rules: &RuleSet) -> SetupResult {
    let mut search = Search {
        setup,
        rules,
        fails_without_us: HashMap::new(),
        done: HashMap::new(),
        on_path: HashMap::new(),
        moves: Vec::new(),
        result: SetupResult::default(),
    };
    search.result.tally.configurations = 1;
    match World::new(setup, rules) {
        Ok(w) => {
            let n = search.visit(w);
            search.result.tally.executions = n;
        }
        Err(e) => search.result.model_error = Some(e),
    }
    let mut r = search.result;
    r.tally.model_errors = u64::from(r.model_error.is_some());
    r.tally.failing_configurations = u64::from(r.counterexample.is_some());
    r.tally.peer_only_configurations = u64::from(r.peer_only.is_some());
    r
}

/// Explores `setups` on `threads` workers; `progress` is called after each setup.
pub fn explore_all(setups: &[Setup], threads: usize, progress: &(dyn Fn(usize) + Sync)) -> Findings {
    let next = AtomicUsize::new(0);
    let results: Mutex<Vec<(usize, SetupResult)>> = Mutex::new(Vec::new());
    std::thread::scope(|s| {
        for _ in 0..threads.max(1) {
            s.spawn(|| {
                let mut cache = RulesCache::default();
                let mut local = Vec::new();
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    let Some(setup) = setups.get(i) else { break };
                    let r = match cache.get(setup) {
                        Ok(rules) => explore_setup(setup, &rules),
                        Err(e) => SetupResult {
                            tally: Tally { configurations: 1, model_errors: 1, ..Tally::default() },
                            counterexample: None,
                            peer_only: None,
                            model_error: Some(e),
                        },
                    };
                    local.push((i, r));
                    progress(i);
                }
                if let Ok(mut all) = results.lock() {
                    all.append(&mut local);
                }
            });
        }
    });
    let mut all = results.into_inner().unwrap_or_default();
    all.sort_by_key(|(i, _)| *i);
    let mut f = Findings::default();
    for (i, r) in all {
        if let Some(setup) = setups.get(i) {
            f.add(setup, r);
        }
    }
    f.finish();
    f
}

/// Runs the exploration within `bounds`.
pub fn run(bounds: &Bounds, progress: &(dyn Fn(Ours, usize, usize) + Sync)) -> Exploration {
    let start = std::time::Instant::now();
    let mut out = Exploration::default();
    let ours_list: &[Ours] = if bounds.baseline { &[Ours::Arbiter, Ours::SamplerBaseline] } else { &[Ours::Arbiter] };
    for &ours in ours_list {
        let setups = setups(bounds, ours);
        let total = setups.len();
        let f = explore_all(&setups, bounds.threads, &|i| progress(ours, i, total));
        match ours {
            Ours::Arbiter => out.arbiter = f,
            Ours::SamplerBaseline => out.baseline = f,
        }
    }
    out.seconds = start.elapsed().as_secs_f64();
    out
}
