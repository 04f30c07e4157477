//! The audit join on real audit logs: the lab runs our arbiter next to a peer
//! and keeps the audit log the core wrote; the netEvent a capture would show
//! for the same connection is written from that log's 5-tuple, with the
//! deciding filter of the vendor that decided in the lab. The join must name
//! the same decider.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing, reason = "tests")]

use std::path::Path;

use arbiter::Protocol;
use arbiter_lab::audit_log::{decode, log_bytes};
use arbiter_lab::ours::OWN_FILTER;
use arbiter_lab::profiles::{PEER_FILTER, Profile};
use arbiter_lab::scenario::{LabRules, Ours, Outcome, Position, Scenario, run};
use arbiter_wfpdiag::Machine;
use arbiter_wfpdiag::events::{OurDecision, attribute, join, our_decisions, own_filter_ids};
use arbiter_wfpdiag::inventory::Inventory;

/// 2020-05-22T20:00:00Z, the boot time the events below are written against.
const BOOT_MS: i64 = 1_590_177_600_000;

fn utc(ms: i64) -> String {
    let secs = ms.div_euclid(1000);
    let (h, m, s) = ((secs / 3600) % 24, (secs / 60) % 60, secs % 60);
    format!("2020-05-22T{h:02}:{m:02}:{s:02}.{:03}Z", ms.rem_euclid(1000))
}

fn lab_log(peer: Profile, rules: &str, protocol: Protocol) -> (Outcome, Vec<u8>) {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let sets = LabRules::shipped(&root).unwrap();
    let i = sets.iter().position(|r| r.name == rules).unwrap();
    let s = Scenario { ours: Ours::Arbiter, peer, position: Position::Above, protocol, v6: false, rules: i };
    let r = run(s, &sets).unwrap();
    (r.outcome, r.audit_log)
}

fn capture(d: &OurDecision, filter: u64, filters: &str) -> String {
    format!(
        "<wfpdiag><initialState><filters>{filters}</filters></initialState><events><netEvent><header>\
         <timeStamp>{}</timeStamp><ipProtocol>{}</ipProtocol>\
         <localAddrV4>{}</localAddrV4><remoteAddrV4>{}</remoteAddrV4><localPort>{}</localPort><remotePort>{}</remotePort>\
         </header><type>FWPM_NET_EVENT_TYPE_CLASSIFY_DROP</type><classifyDrop><filterId>{filter}</filterId><layerId>48</layerId></classifyDrop>\
         </netEvent></events></wfpdiag>",
        utc(BOOT_MS + i64::try_from(d.at_ms).unwrap()),
        d.protocol,
        d.local.ip(),
        d.remote.ip(),
        d.local.port(),
        d.remote.port()
    )
}

const PEER_FILTER_XML: &str = "<item><filterKey>{00000000-0000-0000-0000-0000000000c8}</filterKey>\
    <displayData><name>peer auth-connect filter</name></displayData><providerKey>{11111111-2222-3333-4444-555555555555}</providerKey>\
    <layerKey>FWPM_LAYER_ALE_AUTH_CONNECT_V4</layerKey><subLayerKey>{11111111-2222-3333-4444-555555555556}</subLayerKey>\
    <action><type>FWP_ACTION_CALLOUT_TERMINATING</type><filterType>{11111111-2222-3333-4444-555555555557}</filterType></action>\
    <filterId>200</filterId></item>";

const OWN_FILTER_XML: &str = "<item><filterKey>{a7b1e4f0-5c2d-4e8a-9b61-3f0d2c7e1c21}</filterKey>\
    <displayData><name>arbiter auth-connect v4</name></displayData><providerKey>{a7b1e4f0-5c2d-4e8a-9b61-3f0d2c7e1a01}</providerKey>\
    <layerKey>FWPM_LAYER_ALE_AUTH_CONNECT_V4</layerKey><subLayerKey>{a7b1e4f0-5c2d-4e8a-9b61-3f0d2c7e1a02}</subLayerKey>\
    <action><type>FWP_ACTION_CALLOUT_UNKNOWN</type><filterType>{a7b1e4f0-5c2d-4e8a-9b61-3f0d2c7e1b21}</filterType></action>\
    <filterId>100</filterId></item>";

#[test]
fn a_peer_blocking_our_proxy_is_named_as_the_decider() {
    let (outcome, log) = lab_log(Profile::AuthBlocker, "default", Protocol::TCP);
    assert!(matches!(&outcome, Outcome::Blocked { by, .. } if by == "auth-blocker"), "{outcome:?}");
    let log = log_bytes(log);
    let decoded = decode(&log);
    assert!(decoded.problems.is_empty(), "{:?}", decoded.problems);
    let records = decoded.records;
    let ours = our_decisions(&records);
    // The adapter gives the core a fixed stand-in for WFP's run-time ids, so
    // the log names none: our filters are recognised by our keys instead.
    assert!(own_filter_ids(&ours).is_empty());
    // The blocked connection is our proxy's outbound: our last auth-connect record.
    let last = ours.iter().rev().find(|d| d.layer == "auth-connect").unwrap().clone();
    let mut m = Machine::default();
    m.read(capture(&last, PEER_FILTER, PEER_FILTER_XML).as_bytes(), "capture.xml").unwrap();
    let inv = Inventory::of(&m);
    let a = attribute(&m, &inv, &own_filter_ids(&ours));
    for boot in [Some(BOOT_MS), None] {
        let j = join(&m, &a, &ours, boot);
        let row = &j.rows[0];
        assert!(row.decided.starts_with("other vendor"), "{row:?}");
        assert!(row.why.contains("peer auth-connect filter"), "{row:?}");
        assert!(!row.ours.is_empty(), "our record of the same connection is found");
        assert_eq!(row.ours[0].seq, last.seq);
        if boot.is_none() {
            assert!(j.estimated);
            assert_eq!(j.boot_ms, Some(BOOT_MS), "the offset is recovered from the 5-tuple match");
        }
    }
}

#[test]
fn our_own_block_is_attributed_to_us_by_our_filter_id() {
    let (outcome, log) = lab_log(Profile::Compliant, "strict", Protocol::UDP);
    assert!(matches!(&outcome, Outcome::Blocked { by, .. } if by == "arbiter"), "{outcome:?}");
    let log = log_bytes(log);
    let decoded = decode(&log);
    assert!(decoded.problems.is_empty(), "{:?}", decoded.problems);
    let records = decoded.records;
    let ours = our_decisions(&records);
    let blocked = ours.iter().find(|d| d.verdict == "block").unwrap().clone();
    let mut m = Machine::default();
    // The log names no WFP id (see own_filter_ids): the capture's filter
    // list shows the deciding filter under our provider key.
    m.read(capture(&blocked, OWN_FILTER, OWN_FILTER_XML).as_bytes(), "capture.xml").unwrap();
    let inv = Inventory::of(&m);
    let a = attribute(&m, &inv, &own_filter_ids(&ours));
    assert!(a[0].decided_by.as_ref().unwrap().ours);
    let j = join(&m, &a, &ours, Some(BOOT_MS));
    assert_eq!(j.rows[0].decided, "us");
    assert!(j.rows[0].why.contains("block"), "{:?}", j.rows[0]);
}

#[test]
fn a_record_outside_the_time_window_is_not_joined() {
    let (_, log) = lab_log(Profile::AuthBlocker, "default", Protocol::TCP);
    let log = log_bytes(log);
    let decoded = decode(&log);
    assert!(decoded.problems.is_empty(), "{:?}", decoded.problems);
    let records = decoded.records;
    let ours = our_decisions(&records);
    let last = ours.iter().rev().find(|d| d.layer == "auth-connect").unwrap().clone();
    let mut m = Machine::default();
    m.read(capture(&last, PEER_FILTER, PEER_FILTER_XML).as_bytes(), "capture.xml").unwrap();
    let inv = Inventory::of(&m);
    let a = attribute(&m, &inv, &[]);
    // A boot time an hour off puts every record far from the event.
    let j = join(&m, &a, &ours, Some(BOOT_MS - 3_600_000));
    assert!(j.rows[0].ours.is_empty(), "{:?}", j.rows[0]);
}
