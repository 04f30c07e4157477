//! Allocations are really counted, the decision path of every column makes
//! none, and the report carries the documented keys. Alone in its binary:
//! the counter is process-wide, so no other test may allocate meanwhile.
#![allow(clippy::std_instead_of_core, clippy::alloc_instead_of_core, reason = "host-side tests")]

use std::time::Duration;

use arbiter_bench::run::Plan;
use arbiter_bench::{CountingAllocator, Rules, allocations, bench, counting_system, report};

#[global_allocator]
static ALLOCATOR: CountingAllocator = counting_system();

fn count() -> u64 {
    allocations(&ALLOCATOR)
}

#[test]
fn a_small_run_counts_no_allocation_and_reports_every_key() {
    let plan = Plan {
        endpoints: vec![1_000, 4_096],
        batch: 128,
        min_rounds: 2,
        max_rounds: 3,
        budget: Duration::from_millis(1),
        agreement_checks: 512,
    };
    let mut seen = Vec::new();
    let r = bench(Rules::Generated(vec![10, 300]), &plan, &count, |n, e| seen.push((n, e))).unwrap();
    assert_eq!(seen, [(10, 1_000), (10, 4_096), (300, 1_000), (300, 4_096)]);
    assert!(r.counting_allocator, "the test binary installs the counting allocator");
    assert!(r.agree());
    for run in &r.runs {
        for (name, f) in [("arbiter", &run.arbiter), ("naive", &run.naive), ("sampler", &run.sampler)] {
            assert_eq!(f.allocs_per_decision, 0.0, "{name} allocates at {} rules", run.rules);
            assert!(f.connect_ns > 0.0 && f.auth_ns > 0.0 && f.combined_ns > 0.0, "{name}: {f:?}");
            assert!(f.rounds >= 2);
        }
        assert_eq!(run.arbiter.live_endpoints, run.endpoints as usize);
        assert_eq!(run.naive.live_endpoints, run.endpoints as usize);
        assert!(run.arbiter.bytes_per_endpoint() > 0.0);
        assert_eq!(run.sampler.reserved_bytes, 0);
    }
    let largest = r.largest().unwrap();
    assert_eq!((largest.rules, largest.endpoints), (300, 4_096));

    let v = report::to_json(&r);
    for key in ["arbiter_ns", "naive_ns", "ratio", "allocs_per_decision", "bytes_per_endpoint"] {
        assert!(v[key].is_number(), "{key}: {v}");
    }
    assert_eq!(v["rules"], 300);
    assert_eq!(v["runs"].as_array().unwrap().len(), 4);
    assert_eq!(v["runs"][0]["arbiter"]["live_endpoints"], 1_000);
    let table = report::to_table(&r);
    assert_eq!(table.lines().filter(|l| l.contains(" | ")).count(), 5, "{table}");
    assert!(table.contains("agree"), "{table}");
}
