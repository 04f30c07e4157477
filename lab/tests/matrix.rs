//! The whole scenario matrix: our arbiter never loops and never ends
//! unexplained; the sampler baseline does; every arbiter scenario recorded as
//! a fixture replays to the same decisions.

use std::path::Path;

use arbiter_lab::fixture::Fixture;
use arbiter_lab::profiles::Profile;
use arbiter_lab::replay::{fixture_rules, run as replay};
use arbiter_lab::scenario::{LabRules, Ours, matrix, run};

fn rule_sets() -> Vec<LabRules> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let mut sets = LabRules::shipped(&root).unwrap();
    if sets.iter().all(|s| s.name != "builtin") {
        sets.push(LabRules::fallback());
    }
    sets
}

#[test]
fn arbiter_never_loops_or_ends_unexplained() {
    let rules = rule_sets();
    let mut baseline_failures = 0;
    for s in matrix(&Profile::ALL, rules.len(), true) {
        let r = run(s, &rules).unwrap();
        match s.ours {
            Ours::Arbiter => assert!(!r.is_failure(), "{}: {} ({})", r.name, r.outcome.kind(), r.outcome.detail()),
            Ours::SamplerBaseline => baseline_failures += usize::from(!r.outcome.is_explained()),
        }
        assert_eq!(r.audit_failures, 0, "{}: an audit record did not replay", r.name);
    }
    assert!(baseline_failures > 0, "the baseline should show what the arbiter fixes");
}

#[test]
fn record_then_replay_round_trips_for_every_scenario() {
    let rules = rule_sets();
    for s in matrix(&Profile::ALL, rules.len(), false) {
        let r = run(s, &rules).unwrap();
        let recorded = r.recorded.expect("arbiter scenarios record");
        assert!(!recorded.steps.is_empty());
        let text = recorded.to_toml();
        let parsed = Fixture::parse(&text, Path::new("recorded.toml")).unwrap();
        assert_eq!(parsed.steps.len(), recorded.steps.len());
        let run = replay(&parsed, fixture_rules(&parsed).unwrap()).unwrap();
        assert!(run.passed(), "{}: {:?}", r.name, run.failures().collect::<Vec<_>>());
    }
}

#[test]
fn with_no_rules_every_scenario_no_peer_blocks_is_delivered() {
    let text = "version = 1\n[proxy]\nv4 = \"127.0.0.1:34010\"\nv6 = \"[::1]:34010\"\n";
    let rules = vec![LabRules::from_text("empty", text, "test").unwrap()];
    let mut delivered = 0;
    for s in matrix(&Profile::ALL, rules.len(), false) {
        let r = run(s, &rules).unwrap();
        match &r.outcome {
            arbiter_lab::scenario::Outcome::Blocked { by, .. } if by != "arbiter" => {}
            o => {
                assert_eq!(o.kind(), "delivered", "{}: {}", r.name, o.detail());
                delivered += 1;
            }
        }
    }
    assert!(delivered > 0);
}
