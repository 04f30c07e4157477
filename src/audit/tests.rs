//! Audit codec tests: a byte fixture pinned next to the codec (the encoding
//! is an interface: old logs must stay readable), round trips, and every
//! truncation of a valid record.

use alloc::vec::Vec;

use super::*;
use crate::arbiter::{Arbiter, Capacities, Config};
use crate::flow::PreviousEntry;
use crate::policy::{Rule, RuleSet};
use crate::wide::WideString;

fn fixture_bytes(app: &WideString) -> Vec<u8> {
    let flow = Flow {
        protocol: Protocol::TCP,
        local: "10.0.0.5:50000".parse().unwrap(),
        remote: "93.184.216.34:443".parse().unwrap(),
        endpoint: 7,
        pid: 4242,
        app: app.app_id(),
        original_app: app.app_id(),
        package: None,
    };
    let input = ConnectRedirectInput {
        flow,
        state: RedirectState::RedirectedByOther,
        write_right: true,
        reauthorize: false,
        previous: PreviousChain::from_entries([PreviousEntry { filter: 200, local_redirect_handle: false }]),
    };
    let rules = RuleSet { rules: alloc::vec![Rule::any("all", Action::Proxy)], ..RuleSet::default() };
    let config = Config { own_filter: 100, ..Config::default() };
    let caps = Capacities { endpoints: 4, destinations: 4, known_proxies: 4 };
    let mut a = Arbiter::new(config, caps, rules).unwrap();
    a.set_proxy(5151, Some("127.0.0.1:34010".parse().unwrap()), None).unwrap();
    a.decide_connect_redirect(&input, Instant::from_millis(1234)).audit.to_vec().unwrap()
}

/// The version-1 encoding of `fixture_record`, byte for byte.
const FIXTURE_HEX: &str = include_str!("fixture-v1.hex");

fn hex(bytes: &[u8]) -> alloc::string::String {
    use core::fmt::Write;
    let mut s = alloc::string::String::new();
    for b in bytes {
        let _ = write!(s, "{b:02x}");
    }
    s
}

#[test]
fn version_1_bytes_are_stable() {
    let app = WideString::new("a.exe");
    let bytes = fixture_bytes(&app);
    if std::env::var_os("ARBITER_BLESS").is_some() {
        std::fs::write(concat!(env!("CARGO_MANIFEST_DIR"), "/src/audit/fixture-v1.hex"), hex(&bytes)).unwrap();
    }
    assert_eq!(hex(&bytes), FIXTURE_HEX.trim(), "the v1 encoding changed: old audit logs would not decode");
    let (back, used) = AuditRecord::decode(&bytes).unwrap();
    assert_eq!(used, bytes.len());
    assert_eq!(back.to_vec().unwrap(), bytes);
    assert_eq!(back.outcome().unwrap().verdict, Verdict::Proxy);
    assert!(back.replay().unwrap().matches(back.outcome().unwrap()));
}

#[test]
fn every_truncation_is_an_error() {
    let app = WideString::new(r"\device\harddiskvolume3\apps\browser.exe");
    let bytes = fixture_bytes(&app);
    for n in 0..bytes.len() {
        let err = AuditRecord::decode(&bytes[..n]).unwrap_err();
        assert_eq!(err.kind, DecodeErrorKind::Truncated, "cut at {n}");
    }
}

#[test]
fn header_errors_name_offset_and_cause() {
    let app = WideString::new("a.exe");
    let mut bytes = fixture_bytes(&app);
    bytes[2] = 9;
    let e = AuditRecord::decode(&bytes).unwrap_err();
    assert_eq!((e.offset, e.kind), (2, DecodeErrorKind::Version(9)));
    bytes[2] = VERSION;
    bytes[3] = 77;
    assert_eq!(AuditRecord::decode(&bytes).unwrap_err().kind, DecodeErrorKind::UnknownKind(77));
    assert_eq!(AuditRecord::decode(b"XX").unwrap_err().kind, DecodeErrorKind::Magic);
    assert!(alloc::format!("{}", AuditRecord::decode(b"AR").unwrap_err()).contains("truncated"));
}

#[test]
fn a_log_decodes_in_order_and_stops_at_damage() {
    let app = WideString::new("a.exe");
    let one = fixture_bytes(&app);
    let mut log: Vec<u8> = Vec::new();
    log.extend_from_slice(&one);
    log.extend_from_slice(&one);
    log.extend_from_slice(&one[..10]);
    let results: Vec<_> = records(&log).collect();
    assert_eq!(results.len(), 3);
    assert!(results[0].is_ok() && results[1].is_ok());
    let (offset, err) = results[2].unwrap_err();
    assert_eq!(offset, 2 * one.len());
    assert_eq!(err.kind, DecodeErrorKind::Truncated);
}

#[test]
fn fuzz_entry_point_accepts_garbage() {
    crate::fuzzing::audit_decode(&[]);
    crate::fuzzing::audit_decode(b"AR\x01\x01\xff\xff\xff\xff");
    let app = WideString::new("a.exe");
    crate::fuzzing::audit_decode(&fixture_bytes(&app));
}
