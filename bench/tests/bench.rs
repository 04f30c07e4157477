//! The benchmark measures what it claims: the arbiter and the naive column
//! agree, the workload reaches the decision table's rows, and the tables
//! fill to the asked size.
#![allow(clippy::std_instead_of_core, clippy::alloc_instead_of_core, reason = "host-side tests")]

use std::collections::HashSet;

use arbiter::Reason;
use arbiter::compiled::CompiledRules;
use arbiter_bench::run::{capacities, clock, disagreements, fill_endpoints, new_arbiter};
use arbiter_bench::workload::{Workload, rule_set};

#[test]
fn arbiter_and_naive_agree_decision_by_decision() {
    for n in [10, 1_000] {
        let w = Workload::new(rule_set(n));
        let compiled = CompiledRules::compile(&w.rules).unwrap();
        assert_eq!(disagreements(&w, &compiled, 8_192), Some(0), "{n} rules");
    }
}

#[test]
fn generated_rule_sets_have_the_asked_size_and_are_deterministic() {
    for n in [10, 1_000, 10_000] {
        assert_eq!(rule_set(n).rules.len(), n);
    }
    assert_eq!(rule_set(1_000), rule_set(1_000));
}

#[test]
fn the_workload_reaches_the_rows_that_matter() {
    let w = Workload::new(rule_set(1_000));
    let compiled = CompiledRules::compile(&w.rules).unwrap();
    let mut a = new_arbiter(&w, compiled, capacities(8_192, 0)).unwrap();
    let mut reasons = HashSet::new();
    // Five passes over every shape: the first learns the peer's proxy (A6),
    // the later ones see its proxied hops pile up until C8 stops them.
    for e in 0..5 * w.shapes.len() as u64 {
        let now = clock(e);
        reasons.insert(a.decide_connect_redirect(&w.connect(e), now).reason);
        reasons.insert(a.decide_auth_connect(&w.auth(e), now).reason);
    }
    for r in [
        Reason::UnsupportedProtocol,
        Reason::RedirectedBySelf,
        Reason::NoWriteRight,
        Reason::LocalProxyOfOther,
        Reason::OwnProxyOutbound,
        Reason::TrustedOther,
        Reason::LoopSuspected,
        Reason::UntrustedOtherProxied,
        Reason::RuleProxy,
        Reason::RuleBlock,
        Reason::RuleBypass,
        Reason::NoRule,
        Reason::ProxyVerified,
        Reason::RedirectedByOtherObserved,
        Reason::NotRedirected,
    ] {
        assert!(reasons.contains(&r), "the workload never reaches {r:?}: {reasons:?}");
    }
    let [_, _, block, proxy] = w.verdict_mix();
    assert!(block > 100 && proxy > 500, "{:?}", w.verdict_mix());
}

#[test]
fn tables_fill_to_the_asked_live_count() {
    let w = Workload::new(rule_set(10));
    let compiled = CompiledRules::compile(&w.rules).unwrap();
    let mut a = new_arbiter(&w, compiled, capacities(5_000, 64)).unwrap();
    let (fill, first) = fill_endpoints(&w, 5_000);
    assert_eq!(fill.len(), 5_000);
    assert!(fill.iter().all(|&e| e < first));
    for &e in &fill {
        a.decide_connect_redirect(&w.connect(e), clock(e));
    }
    assert_eq!(a.occupancy()[0], 5_000);
}
