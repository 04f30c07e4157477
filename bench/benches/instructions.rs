//! Instructions per decision under callgrind, at 65,536 live endpoints and
//! 10,000 generated rules (the goal's configuration), and at 10 rules, where
//! the matcher costs little and the rest of the decision shows: the figures
//! that do not move between runs.
//!
//! Each benchmark decides one batch of [`BATCH`] indications of the
//! `arbiter bench` workload; only the benchmark function is counted (the
//! set-up that compiles the rules and fills the tables is not), so the
//! reported `Instructions` divided by [`BATCH`] is the cost of one decision.
//!
//! Run with valgrind and the matching runner installed:
//!
//! ```text
//! cargo install --locked iai-callgrind-runner --version 0.16.1
//! cargo bench -p arbiter-bench --features iai --bench instructions
//! ```
#![allow(
    clippy::std_instead_of_core,
    clippy::alloc_instead_of_core,
    missing_docs,
    unused_qualifications,
    reason = "host-side benchmark; the iai macros qualify the bench arguments"
)]

use std::hint::black_box;

use arbiter::Arbiter;
use arbiter::compiled::CompiledRules;
use arbiter::flow::{AuthConnectInput, ConnectRedirectInput};
use arbiter_bench::run::{capacities, clock, fill_endpoints, new_arbiter};
use arbiter_bench::workload::{Workload, rule_set};
use iai_callgrind::{library_benchmark, library_benchmark_group, main};

/// Decisions per benchmark: divide the instruction count by this.
const BATCH: u64 = 1000;
const LIVE: u32 = 65_536;

/// A filled arbiter and the next batch of indications (leaked: the
/// indications borrow the workload, and the process ends after one bench).
struct Ready {
    arbiter: Arbiter<CompiledRules>,
    connects: Vec<ConnectRedirectInput<'static>>,
    auths: Vec<AuthConnectInput<'static>>,
    now: arbiter::Instant,
}

fn ready(rules: usize, connected: bool) -> Ready {
    let w: &'static Workload = Box::leak(Box::new(Workload::new(rule_set(rules))));
    let compiled = CompiledRules::compile(&w.rules).expect("rules compile");
    let mut arbiter = new_arbiter(w, compiled, capacities(LIVE, BATCH as usize)).expect("tables reserve");
    let (fill, first) = fill_endpoints(w, LIVE);
    for &e in &fill {
        arbiter.decide_connect_redirect(&w.connect(e), clock(e));
    }
    assert_eq!(arbiter.occupancy()[0], LIVE);
    // One warm-up batch, as the timed harness does, so the measured one is steady state.
    let now = clock(first);
    for e in first..first + BATCH {
        arbiter.decide_connect_redirect(&w.connect(e), now);
        arbiter.decide_auth_connect(&w.auth(e), now);
    }
    let base = first + BATCH;
    let connects: Vec<_> = (base..base + BATCH).map(|e| w.connect(e)).collect();
    let auths: Vec<_> = (base..base + BATCH).map(|e| w.auth(e)).collect();
    let now = clock(base);
    if connected {
        for input in &connects {
            arbiter.decide_connect_redirect(input, now);
        }
    }
    Ready { arbiter, connects, auths, now }
}

#[library_benchmark]
#[bench::rules_10000_x1000(ready(10_000, false))]
#[bench::rules_10_x1000(ready(10, false))]
fn connect_redirect(mut r: Ready) -> Ready {
    for input in &r.connects {
        let d = r.arbiter.decide_connect_redirect(black_box(input), r.now);
        black_box(&d);
    }
    r
}

#[library_benchmark]
#[bench::rules_10000_x1000(ready(10_000, true))]
#[bench::rules_10_x1000(ready(10, true))]
fn auth_connect(mut r: Ready) -> Ready {
    for input in &r.auths {
        let d = r.arbiter.decide_auth_connect(black_box(input), r.now);
        black_box(&d);
    }
    r
}

library_benchmark_group!(name = decisions; benchmarks = connect_redirect, auth_connect);
main!(library_benchmark_groups = decisions);
