//! Lab scenarios read as scripts: one connection per `step()`.

use arbiter::Protocol;
use arbiter_lab::engine::{HopResult, MAX_CHAIN};
use arbiter_lab::profiles::Profile;
use arbiter_lab::scenario::{Lab, LabRules, OURS, Ours, Outcome, PEER, Position, Scenario};

fn lab(ours: Ours, peer: Profile, position: Position) -> Lab {
    let s = Scenario { ours, peer, position, protocol: Protocol::TCP, v6: false, rules: 0 };
    Lab::new(s, &[LabRules::fallback()]).unwrap()
}

fn decisions(lab: &Lab, hop: usize, vendor: usize) -> Vec<(String, String)> {
    lab.traces()[hop]
        .decisions
        .iter()
        .filter(|d| d.vendor == vendor)
        .map(|d| (d.action.clone(), d.reason.clone()))
        .collect()
}

#[test]
fn compliant_peer_below_us_honours_our_handle_and_we_permit_its_revisit() {
    let mut lab = lab(Ours::Arbiter, Profile::Compliant, Position::Above);
    // The browser's connection: we proxy it, the compliant peer sees our
    // local redirect handle in the previousVersion chain and leaves it.
    let t = lab.step().unwrap();
    assert_eq!(t.result, HopResult::ToProxy { vendor: OURS });
    assert_eq!(decisions(&lab, 0, OURS)[0], ("redirect".into(), "rule-proxy".into()));
    assert_eq!(decisions(&lab, 0, PEER)[0], ("permit".into(), "other's local redirect".into()));
    // Our proxy's outbound carries our record: C2; the peer redirects it.
    let t = lab.step().unwrap();
    assert_eq!(t.result, HopResult::ToProxy { vendor: PEER });
    assert_eq!(decisions(&lab, 1, OURS)[0], ("continue".into(), "redirected-by-self".into()));
    // The peer's outbound comes back with both records: C3, revisit permitted.
    let t = lab.step().unwrap();
    assert_eq!(t.result, HopResult::Delivered { via_tunnel: None });
    assert_eq!(decisions(&lab, 2, OURS)[0], ("permit".into(), "revisit-permitted".into()));
    assert!(lab.step().is_none());
    assert_eq!(lab.outcome(), Some(&Outcome::Delivered));
}

#[test]
fn a_peer_that_drops_records_is_stopped_by_the_hop_counter() {
    let mut lab = lab(Ours::Arbiter, Profile::NoRecords, Position::Above);
    assert_eq!(lab.drive(), &Outcome::Delivered);
    let reasons: Vec<String> = lab
        .traces()
        .iter()
        .flat_map(|t| &t.decisions)
        .filter(|d| d.vendor == OURS && d.layer == arbiter::Layer::ConnectRedirect)
        .map(|d| d.reason.clone())
        .collect();
    // Three proxied hops for the destination, then C8 lets the flow go.
    assert_eq!(reasons.iter().filter(|r| *r == "rule-proxy").count(), 3, "{reasons:?}");
    assert!(reasons.iter().any(|r| r == "loop-suspected"), "{reasons:?}");
}

#[test]
fn the_sampler_in_our_place_loops_with_the_same_peer() {
    let mut lab = lab(Ours::SamplerBaseline, Profile::NoRecords, Position::Above);
    assert!(matches!(lab.drive(), Outcome::Loop(_)));
    assert_eq!(lab.traces().len(), MAX_CHAIN);
}

#[test]
fn a_write_stripper_above_us_leaves_us_only_a_veto() {
    let mut lab = lab(Ours::Arbiter, Profile::WriteStripper, Position::Below);
    assert_eq!(lab.drive(), &Outcome::Delivered);
    assert_eq!(decisions(&lab, 0, OURS)[0], ("continue".into(), "no-write-right".into()));
}

#[test]
fn an_auth_blocker_stops_our_proxys_outbound_and_says_why() {
    let mut lab = lab(Ours::Arbiter, Profile::AuthBlocker, Position::Below);
    let out = lab.drive().clone();
    assert_eq!(
        out,
        Outcome::Blocked {
            by: "auth-blocker".into(),
            layer: arbiter::Layer::AuthConnect,
            reason: "unknown-proxy".into()
        }
    );
}
