//! Load and fault injection against the core: endpoint churn far beyond the
//! table, a clock that goes backwards, duplicate and unknown endpoint
//! handles, auth-connect without a connect-redirect, and a rule swap in the
//! middle of a chain.

#![allow(clippy::std_instead_of_core, clippy::alloc_instead_of_core, reason = "host-side test")]

mod common;

use arbiter::flow::RedirectState::*;
use arbiter::{Arbiter, Capacities, Config, EndpointEntry, Reason, RuleSet, Verdict};
use common::*;

#[test]
fn a_million_endpoints_through_a_65536_entry_table() {
    let config = Config { own_filter: OWN_FILTER, ..Config::default() };
    let caps = Capacities { endpoints: 65_536, destinations: 4_096, known_proxies: 64 };
    let mut a = Arbiter::new(config, caps, web_rules()).unwrap();
    a.set_proxy(PROXY_PID, Some("127.0.0.1:34010".parse().unwrap()), None).unwrap();
    let reserved = a.reserved_bytes();
    let total: u64 = if cfg!(miri) { 300 } else { 1_000_000 };
    let mut audited_evictions = 0u64;
    // Port 23 is blocked by the rules: every endpoint caches a block.
    let mut s = Sock::tcp(0, "93.184.216.34:23");
    for e in 0..total {
        s.endpoint = e;
        let d = a.decide_connect_redirect(&s.connect(NotRedirected), ms(e / 100));
        assert_eq!(d.verdict, Verdict::Block);
        audited_evictions += d.departures.iter().filter(|r| r.reason() == Reason::Evicted).count() as u64;
        // Live entries stay correct: the newest block and one from 60,000 endpoints ago.
        if e % 100_000 == 99_999 {
            assert!(matches!(a.endpoint_entry(e, ms(e / 100)), Some(EndpointEntry::Cached { .. })));
            assert!(a.endpoint_entry(e - 60_000, ms(e / 100)).is_some());
            assert!(a.endpoint_entry(e - 70_000, ms(e / 100)).is_none(), "evicted");
        }
    }
    let evicted = total.saturating_sub(65_536);
    if !cfg!(miri) {
        assert_eq!(a.counters().evicted[0] + a.counters().expired[0], evicted);
        assert_eq!(audited_evictions + a.counters().expired[0], evicted, "every eviction is audited");
    }
    assert_eq!(a.occupancy()[0], total.min(65_536) as u32);
    assert_eq!(a.reserved_bytes(), reserved, "memory stays flat");
    // The survivors are enforced at auth-connect.
    s.endpoint = total - 1;
    let d = a.decide_auth_connect(&s.auth(false, None, None), ms(total / 100));
    assert_eq!((d.verdict, d.reason), (Verdict::Block, Reason::RuleBlock));
}

#[test]
fn the_clock_going_backwards_neither_panics_nor_resurrects() {
    let mut a = arbiter_with(web_rules());
    let s = Sock::tcp(1, "93.184.216.34:23");
    a.decide_connect_redirect(&s.connect(NotRedirected), ms(100_000));
    // Earlier than the decision: the entry is still live (its deadline is later).
    assert!(a.endpoint_entry(1, ms(5)).is_some());
    a.expire(ms(0), |_| {});
    let d = a.decide_auth_connect(&s.auth(false, None, None), ms(10));
    assert_eq!(d.verdict, Verdict::Block);
    // Hop windows never underflow.
    let relay = Sock::tcp(2, "93.184.216.34:443").by_process(900, VENDOR_C);
    for t in [5_000u64, 4_000, 3_000, 2_000, 0] {
        let d = a.decide_connect_redirect(&relay.connect(NotRedirected), ms(t));
        assert!(matches!(d.verdict, Verdict::Proxy | Verdict::Permit));
    }
}

#[test]
fn duplicate_and_unknown_endpoint_handles() {
    let mut a = arbiter_with(web_rules());
    // Same handle decided twice: the newest decision wins, one entry.
    let blocked = Sock::tcp(7, "93.184.216.34:23");
    let proxied = Sock::tcp(7, "93.184.216.34:443");
    a.decide_connect_redirect(&blocked.connect(NotRedirected), ms(0));
    a.decide_connect_redirect(&proxied.connect(NotRedirected), ms(1));
    assert_eq!(a.occupancy()[0], 1);
    let d = a.decide_auth_connect(&proxied.auth_after_proxy(), ms(2));
    assert_eq!(d.reason, Reason::ProxyVerified);
    // Unknown handles: closure and auth-connect are harmless.
    assert_eq!(a.forget_endpoint(12345, ms(3)), None);
    let stranger = Sock::tcp(999, "93.184.216.34:443");
    let d = a.decide_auth_connect(&stranger.auth(false, None, None), ms(3));
    assert_eq!(d.reason, Reason::NotRedirected);
    // Handle 0 and u64::MAX are ordinary keys.
    for e in [0, u64::MAX] {
        let s = Sock::tcp(e, "93.184.216.34:23");
        a.decide_connect_redirect(&s.connect(NotRedirected), ms(4));
        assert_eq!(a.decide_auth_connect(&s.auth(false, None, None), ms(5)).verdict, Verdict::Block);
    }
}

#[test]
fn auth_connect_without_connect_redirect() {
    let mut a = arbiter_with(web_rules());
    let s = Sock::tcp(1, "93.184.216.34:443");
    // Flagged redirected by someone else, metadata missing: observed, nothing learned.
    let d = a.decide_auth_connect(&s.auth(true, None, None), ms(0));
    assert_eq!(d.reason, Reason::RedirectedByOtherObserved);
    assert_eq!(a.occupancy()[2], 0);
    // Our own proxy's PID arriving here is not evidence of anything.
    let d = a.decide_auth_connect(&s.auth(true, Some(PROXY_PID), Some("93.184.216.34:443")), ms(0));
    assert_eq!(d.verdict, Verdict::Continue);
}

#[test]
fn rule_swap_in_the_middle_of_a_chain() {
    let mut a = arbiter_with(web_rules());
    let s = Sock::tcp(1, "93.184.216.34:443");
    let d = a.decide_connect_redirect(&s.connect(NotRedirected), ms(0));
    assert_eq!(d.verdict, Verdict::Proxy);
    // New rules arrive between our redirect and its auth-connect.
    a.replace_policy(RuleSet::default());
    // What we recorded still verifies the proxied flow.
    let d = a.decide_auth_connect(&s.auth_after_proxy(), ms(1));
    assert_eq!(d.reason, Reason::ProxyVerified);
    // Our proxy's outbound, carrying our records, is still recognised.
    let out = Sock::tcp(2, "93.184.216.34:443").by_process(PROXY_PID, r"\x\ours.exe");
    assert_eq!(a.decide_connect_redirect(&out.connect(RedirectedBySelf), ms(2)).reason, Reason::RedirectedBySelf);
    // The audit record names the rule set that decided.
    let mut rules = web_rules();
    rules.id = 0xfeed;
    a.replace_policy(rules);
    let third = Sock::tcp(3, "93.184.216.34:443");
    let d = a.decide_connect_redirect(&third.connect(NotRedirected), ms(3));
    match d.audit.event {
        arbiter::audit::Event::ConnectRedirect(c) => assert_eq!(c.rules_id, 0xfeed),
        _ => unreachable!(),
    }
}

#[test]
fn an_audit_consumer_that_stops_reading() {
    use arbiter::audit::ring::AuditRing;
    let mut a = arbiter_with(web_rules());
    let mut ring = AuditRing::new(if cfg!(miri) { 4 * 1024 } else { 64 * 1024 }).unwrap();
    let capacity = ring.capacity();
    let mut pushed = 0u64;
    let mut s = Sock::tcp(0, "93.184.216.34:443");
    let n: u64 = if cfg!(miri) { 60 } else { 50_000 };
    for e in 0..n {
        s.endpoint = e;
        let d = a.decide_connect_redirect(&s.connect(NotRedirected), ms(e));
        ring.push_record(&d.audit);
        pushed += 1;
        for dep in d.departures.iter() {
            ring.push_record(&dep.record());
            pushed += 1;
        }
        // Nobody drains: the ring stays within its reservation.
        assert!(ring.used() <= capacity);
    }
    let stats = ring.stats();
    assert!(stats.dropped > 0, "the ring overflowed");
    assert_eq!(stats.dropped + u64::from(stats.held), pushed, "every record is held or counted as dropped");
    assert_eq!(stats.next_seq, pushed);
}
