//! # arbiter-bench: what a decision costs, next to the obvious alternatives
//!
//! `arbiter bench` runs three columns side by side in one process on one
//! generated workload ([`workload`]):
//!
//! - the arbiter: `Arbiter<CompiledRules>`, as the driver runs it;
//! - [`naive`]: the same decision table over a linear first-match scan and
//!   SipHash `HashMap`s, so the difference is tables and matcher alone;
//! - [`sampler`]: the WFP sample's proxy logic, stateless.
//!
//! at 10, 1,000 and 10,000 rules (or the user's rules file) and 1,000,
//! 65,536 and 1,000,000 live endpoints ([`run`]), reporting the median cost
//! per decision at each layer, allocations per decision, reserved table
//! bytes per live endpoint, and the ratio to naive ([`report`]).
//!
//! Allocations are counted by the binary's global allocator: a binary that
//! wants them installs [`CountingAllocator`] and passes [`allocations`]
//! (see `cli/src/bench_cmd.rs`). Instruction counts come from
//! `benches/instructions.rs` under callgrind.

#![allow(clippy::std_instead_of_core, clippy::alloc_instead_of_core, reason = "std crate: host tool")]

pub mod naive;
pub mod report;
pub mod run;
pub mod sampler;
pub mod workload;

use std::alloc::System;
use std::time::Instant as Clock;

use arbiter::compiled::CompiledRules;
use arbiter::policy::RuleSet;

pub use report::Report;
pub use run::Plan;

/// The counting allocator to install with `#[global_allocator]`.
pub type CountingAllocator = stats_alloc::StatsAlloc<System>;
/// The system allocator, counted: `static A: CountingAllocator = counting_system();`.
pub const fn counting_system() -> CountingAllocator {
    stats_alloc::StatsAlloc::system()
}

/// Allocations plus reallocations made through `a` so far.
pub fn allocations(a: &CountingAllocator) -> u64 {
    let s = a.stats();
    (s.allocations as u64).saturating_add(s.reallocations as u64)
}

/// The rule counts of a full run.
pub const RULE_COUNTS: [usize; 3] = [10, 1_000, 10_000];
/// The rule counts of a quick run.
pub const QUICK_RULE_COUNTS: [usize; 2] = [10, 1_000];

/// Which rules to run with.
#[derive(Clone, Debug)]
pub enum Rules {
    /// Generated rule sets of these sizes.
    Generated(Vec<usize>),
    /// One loaded rule set, named for the report.
    Given {
        /// The file, for the report.
        name: String,
        /// Its rules.
        rules: RuleSet,
    },
}

/// Why the benchmark could not run.
#[derive(Debug)]
pub enum BenchError {
    /// The compiled matcher or a table could not reserve its memory.
    OutOfMemory,
}

impl std::fmt::Display for BenchError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::OutOfMemory => f.write_str("out of memory while compiling the rules or reserving the tables"),
        }
    }
}

impl std::error::Error for BenchError {}

/// Runs the benchmark. `progress` hears about each configuration as it starts.
pub fn bench(
    rules: Rules,
    plan: &Plan,
    count: run::AllocCounter<'_>,
    mut progress: impl FnMut(usize, u32),
) -> Result<Report, BenchError> {
    let started = Clock::now();
    let (source, sets): (String, Vec<RuleSet>) = match rules {
        Rules::Generated(sizes) => ("generated".to_owned(), sizes.into_iter().map(workload::rule_set).collect()),
        Rules::Given { name, rules } => (name, vec![rules]),
    };
    let available = run::available_memory();
    let mut runs = Vec::new();
    let mut skipped = Vec::new();
    let mut verdict_mix = [0; 4];
    for set in sets {
        let w = workload::Workload::new(set);
        verdict_mix = w.verdict_mix();
        let compiled = CompiledRules::compile(&w.rules).map_err(|_| BenchError::OutOfMemory)?;
        for &endpoints in &plan.endpoints {
            if !run::fits(endpoints, available) {
                skipped.push(run::Skipped {
                    rules: w.rules.rules.len(),
                    endpoints,
                    why: "does not fit in half the available memory".to_owned(),
                });
                continue;
            }
            progress(w.rules.rules.len(), endpoints);
            runs.push(run::run_one(&w, &compiled, endpoints, plan, count).ok_or(BenchError::OutOfMemory)?);
        }
    }
    Ok(Report {
        rules_source: source,
        batch: plan.batch,
        counting_allocator: run::counting(count),
        runs,
        skipped,
        verdict_mix,
        seconds: started.elapsed().as_secs_f64(),
    })
}
