//! The exhaustive explorer: bounded runs that must find no failure with our
//! arbiter and at least one loop with the sampler in our place; the search
//! covers every interleaving; one connection alone ends as the lab's matrix says.

use arbiter::Protocol;
use arbiter_lab::explore::{
    Bounds, ConnSpec, LoopSettings, PeerSpec, Setup, explore_all, explore_setup, rules_text, setups,
};
use arbiter_lab::profiles::Profile;
use arbiter_lab::scenario::{Lab, LabRules, Ours, Outcome, Position, Scenario};

fn quick_setups(ours: Ours) -> Vec<Setup> {
    setups(&Bounds::quick(2), ours)
}

#[test]
fn bounded_exploration_finds_no_arbiter_failure_and_baseline_loops() {
    let arbiter = explore_all(&quick_setups(Ours::Arbiter), 2, &|_| {});
    let t = &arbiter.tally;
    assert!(t.configurations > 100 && t.states > t.configurations, "{t:?}");
    // Loops the peers make among themselves (WFPSampler's proxy without its
    // records redirects its own outbound again) are counted apart.
    assert_eq!(
        (t.loops - t.peer_loops, t.unexplained - t.peer_unexplained, t.failing_configurations),
        (0, 0, 0),
        "{:?}",
        arbiter.counterexamples.first().map(|c| c.describe())
    );
    assert_eq!(t.model_errors, 0, "{:?}", arbiter.model_errors);
    assert_eq!(t.audit_failures, 0);
    assert!(t.delivered > 0 && t.blocked > 0, "{t:?}");

    let baseline = explore_all(&quick_setups(Ours::SamplerBaseline), 2, &|_| {});
    assert!(baseline.tally.loops > 0, "{:?}", baseline.tally);
    assert_eq!(baseline.tally.model_errors, 0, "{:?}", baseline.model_errors);
    // The shortest counterexample is short, and a loop among them names a cycle.
    let first = baseline.counterexamples.first().expect("a baseline counterexample");
    assert!(first.hops <= 3, "{}", first.describe());
    let lp = baseline.counterexamples.iter().find(|c| matches!(c.outcome, Outcome::Loop(_))).expect("a loop");
    assert_eq!(lp.chain.first().map(String::as_str), Some("app1"));
    assert!(lp.chain.iter().any(|h| h == "baseline-proxy"), "{}", lp.describe());
}

fn one(profile: Profile, ours_first: bool, conns: Vec<ConnSpec>, ours: Ours) -> Setup {
    Setup {
        ours,
        ours_propagates: true,
        peers: vec![PeerSpec { profile, propagates: true, trusted: false, known: false }],
        order: if ours_first { vec![0, 1] } else { vec![1, 0] },
        loops: LoopSettings::Default,
        conns,
    }
}

fn rules() -> arbiter::RuleSet {
    arbiter_lab::rules::parse_str(&rules_text(&[], &[], LoopSettings::Default), "test").unwrap()
}

#[test]
fn every_interleaving_of_two_independent_chains_is_covered() {
    // A compliant peer below us: each chain is app -> arbiter-proxy ->
    // compliant-proxy -> destination, three connections of two phases each,
    // and nothing one chain does changes the other's. So the search must
    // stand for C(12, 6) = 924 executions, all delivered.
    let c = ConnSpec { protocol: Protocol::TCP, v6: false, dest: 0 };
    let d = ConnSpec { dest: 1, ..c };
    let r = explore_setup(&one(Profile::Compliant, true, vec![c, d], Ours::Arbiter), &rules());
    assert_eq!(r.tally.executions, 924, "{:?}", r.tally);
    assert_eq!(r.tally.end_states, 1);
    assert_eq!(r.tally.delivered, 2);
    assert_eq!(r.tally.states, 7 * 7);
}

#[test]
fn one_connection_alone_ends_as_in_the_lab_matrix() {
    let text = rules_text(&[], &[], LoopSettings::Default);
    let lab_rules = [LabRules::from_text("explore", &text, "explore").unwrap()];
    let rules = rules();
    for ours in [Ours::Arbiter, Ours::SamplerBaseline] {
        for profile in Profile::ALL {
            for position in [Position::Above, Position::Below] {
                for protocol in [Protocol::TCP, Protocol::UDP] {
                    for v6 in [false, true] {
                        let scenario = Scenario { ours, peer: profile, position, protocol, v6, rules: 0 };
                        let mut lab = Lab::new(scenario, &lab_rules).unwrap();
                        let expected = lab.drive().kind();
                        let mut setup =
                            one(profile, position == Position::Above, vec![ConnSpec { protocol, v6, dest: 0 }], ours);
                        // The lab's peers keep their profile's own propagation.
                        setup.peers[0].propagates = profile.identity(0).proxy.is_some_and(|p| p.propagates_records);
                        let r = explore_setup(&setup, &rules);
                        let t = &r.tally;
                        let got = [(t.delivered, "delivered"), (t.blocked, "blocked"), (t.loops, "loop")]
                            .into_iter()
                            .chain([(t.unexplained, "unexplained")])
                            .find(|(n, _)| *n > 0)
                            .map(|(_, k)| k);
                        assert_eq!(got, Some(expected), "{}: {t:?}", lab.name());
                        assert_eq!(t.end_states, 1, "{}", lab.name());
                    }
                }
            }
        }
    }
}

#[test]
fn two_record_dropping_peers_loop_among_themselves_and_that_is_told_apart() {
    // Both peers above us, neither propagating records: each redirects the
    // other's proxy outbound forever. We only ever see C5 (another's local
    // redirect) and permit; uninstalling our driver changes nothing.
    let peer = PeerSpec { profile: Profile::NoRecords, propagates: false, trusted: false, known: false };
    let c = ConnSpec { protocol: Protocol::TCP, v6: false, dest: 0 };
    let setup = Setup {
        ours: Ours::Arbiter,
        ours_propagates: true,
        peers: vec![peer, peer],
        order: vec![1, 2, 0],
        loops: LoopSettings::Default,
        conns: vec![c, c],
    };
    let r = explore_setup(&setup, &rules());
    assert!(r.tally.loops > 0, "{:?}", r.tally);
    assert_eq!(r.tally.failing_configurations, 0, "{:?}", r.counterexample.map(|c| c.describe()));
    assert_eq!(r.tally.peer_only_configurations, 1);
    let p = r.peer_only.expect("the peers' own loop");
    assert!(!p.chain.iter().any(|h| h == "arbiter-proxy"), "{}", p.describe());
}
