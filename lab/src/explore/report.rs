//! What an exploration found: counts, counterexamples, findings per
//! occupant of our place.

use std::collections::HashSet;

use super::setups::Setup;
use crate::scenario::Outcome;

/// Counts over a set of explored setups.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Tally {
    /// Setups explored.
    pub configurations: u64,
    /// Distinct abstract states visited.
    pub states: u64,
    /// Moves tried (edges of the state graph, including into visited states).
    pub transitions: u64,
    /// Machines forked to try another move (each fork gives a fresh core
    /// every indication of the path again: the core's tables cannot be cloned).
    pub forks: u64,
    /// Complete executions (interleavings) the explored states stand for.
    pub executions: u128,
    /// Distinct end states (every connection ended).
    pub end_states: u64,
    /// Connection outcomes over the end states.
    pub delivered: u64,
    /// Blocked connections over the end states.
    pub blocked: u64,
    /// Looping connections over the end states.
    pub loops: u64,
    /// Connections ended unexplained over the end states.
    pub unexplained: u64,
    /// Of `loops`, those the peers cause among themselves (the connection
    /// loops alone with our driver uninstalled too).
    pub peer_loops: u64,
    /// Of `unexplained`, those the peers cause among themselves.
    pub peer_unexplained: u64,
    /// Setups with a loop or unexplained end that our presence may have
    /// caused (for the baseline: any loop or unexplained end).
    pub failing_configurations: u64,
    /// Setups whose only failures the peers cause among themselves (the
    /// same connection fails alone with our driver uninstalled).
    pub peer_only_configurations: u64,
    /// End states with at least one loop or unexplained end.
    pub failing_end_states: u64,
    /// Disagreements between the abstract state and the live core, or setups
    /// that could not be built.
    pub model_errors: u64,
    /// Audit records that did not replay to their decision.
    pub audit_failures: u64,
}

impl Tally {
    pub(super) fn merge(&mut self, o: &Self) {
        self.configurations += o.configurations;
        self.states += o.states;
        self.transitions += o.transitions;
        self.forks += o.forks;
        self.executions = self.executions.saturating_add(o.executions);
        self.end_states += o.end_states;
        self.delivered += o.delivered;
        self.blocked += o.blocked;
        self.loops += o.loops;
        self.unexplained += o.unexplained;
        self.peer_loops += o.peer_loops;
        self.peer_unexplained += o.peer_unexplained;
        self.failing_configurations += o.failing_configurations;
        self.peer_only_configurations += o.peer_only_configurations;
        self.failing_end_states += o.failing_end_states;
        self.model_errors += o.model_errors;
        self.audit_failures += o.audit_failures;
    }

    /// Loops plus unexplained ends.
    pub const fn failures(&self) -> u64 {
        self.loops + self.unexplained
    }
}

/// A loop or unexplained end, with the interleaving that leads to it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Counterexample {
    /// The setup.
    pub setup: Setup,
    /// Which connection failed (0-based).
    pub connection: usize,
    /// How it ended.
    pub outcome: Outcome,
    /// Its chain: `app1 -> baseline-proxy -> sampler-proxy -> ... `.
    pub chain: Vec<String>,
    /// Connections classified in the failing chain.
    pub hops: usize,
    /// The interleaving up to the failure: `c1 connect`, `c2 auth`, ...
    pub moves: Vec<String>,
    /// Moves of the other connections in it.
    pub other_moves: usize,
}

impl Counterexample {
    /// Shorter chains first, then fewer vendors, fewer moves.
    pub(super) fn rank(&self) -> (usize, usize, usize, usize, String) {
        (self.hops, self.setup.vendors(), self.other_moves, self.moves.len(), self.setup.to_string())
    }

    /// A one-line description.
    pub fn describe(&self) -> String {
        let interleaved = if self.other_moves == 0 {
            "alone".to_owned()
        } else {
            format!("after {} moves of other connections", self.other_moves)
        };
        format!(
            "{} [{}]: connection {} ({}) {}: {} ({})",
            self.outcome.kind(),
            self.setup,
            self.connection + 1,
            interleaved,
            self.outcome.detail(),
            self.chain.join(" -> "),
            self.hops
        )
    }

    /// The failure's shape, to group counterexamples that differ only in
    /// dimensions that did not matter.
    pub fn signature(&self) -> String {
        let mut vendors: Vec<String> = self.setup.order.iter().map(|&v| self.setup.vendor_label(v)).collect();
        vendors.dedup();
        format!("{}|{}|{}", self.outcome.kind(), vendors.join(">"), self.chain.join(">"))
    }
}

/// The result of exploring one setup.
#[derive(Clone, Debug, Default)]
pub struct SetupResult {
    /// Counts.
    pub tally: Tally,
    /// The shortest failure found that our presence may have caused, if any.
    pub counterexample: Option<Counterexample>,
    /// The shortest failure the peers cause among themselves: the same
    /// connection, alone on the machine with our driver uninstalled, fails too.
    pub peer_only: Option<Counterexample>,
    /// The first model error.
    pub model_error: Option<String>,
}

/// Everything found for one occupant of our place.
#[derive(Clone, Debug, Default)]
pub struct Findings {
    /// Counts.
    pub tally: Tally,
    /// The shortest counterexample of each shape, shortest first.
    pub counterexamples: Vec<Counterexample>,
    /// How many counterexamples were found in all (one per failing setup).
    pub counterexamples_found: u64,
    /// The shortest failure of each shape that the peers cause among
    /// themselves (arbiter only).
    pub peer_only: Vec<Counterexample>,
    /// Model errors (setup and message), first few.
    pub model_errors: Vec<(String, String)>,
}

impl Findings {
    pub(super) fn add(&mut self, setup: &Setup, r: SetupResult) {
        self.tally.merge(&r.tally);
        if let Some(e) = r.model_error
            && self.model_errors.len() < 16
        {
            self.model_errors.push((setup.to_string(), e));
        }
        if let Some(cx) = r.counterexample {
            self.counterexamples_found += 1;
            self.counterexamples.push(cx);
        }
        if let Some(cx) = r.peer_only {
            self.peer_only.push(cx);
        }
    }

    /// Keeps the shortest counterexample of each signature.
    pub(super) fn finish(&mut self) {
        for list in [&mut self.counterexamples, &mut self.peer_only] {
            list.sort_by_key(Counterexample::rank);
            let mut seen = HashSet::new();
            list.retain(|c| seen.insert(c.signature()));
        }
    }
}

/// The whole exploration.
#[derive(Clone, Debug, Default)]
pub struct Exploration {
    /// With our arbiter in its place.
    pub arbiter: Findings,
    /// With the sampler logic in our place.
    pub baseline: Findings,
    /// Wall time, seconds.
    pub seconds: f64,
}

impl Exploration {
    /// Setups where our arbiter's presence may have caused a loop or an
    /// unexplained end, plus model errors and audit records that did not replay.
    pub const fn arbiter_failures(&self) -> u64 {
        self.arbiter.tally.failing_configurations + self.arbiter.tally.model_errors + self.arbiter.tally.audit_failures
    }
}
