//! One test per row of decision-table.md, named after the row.
#![allow(clippy::std_instead_of_core, clippy::alloc_instead_of_core, reason = "host-side test")]

mod common;

use arbiter::flow::{Protocol, RedirectState::*};
use arbiter::{EndpointEntry, PermitOrBlock, Reason, Verdict};
use common::*;

fn assert_decision(d: &arbiter::Decision<'_>, verdict: Verdict, reason: Reason) {
    assert_eq!((d.verdict, d.reason), (verdict, reason), "decision {d:#?}");
    assert_eq!(d.redirect.is_some(), verdict == Verdict::Proxy, "redirect target exactly for proxy");
    let replayed = d.audit.replay().expect("decision records replay");
    assert!(replayed.matches(d.audit.outcome().unwrap()), "audit replay agrees: {replayed:?}");
}

#[test]
fn c1_unsupported_protocol() {
    let mut a = arbiter_with(web_rules());
    let mut s = Sock::tcp(1, "93.184.216.34:443");
    s.protocol = Protocol::ICMP;
    let d = a.decide_connect_redirect(&s.connect(NotRedirected), ms(0));
    assert_decision(&d, Verdict::Continue, Reason::UnsupportedProtocol);
}

#[test]
fn c2_redirected_by_self() {
    let mut a = arbiter_with(web_rules());
    // Our proxy's outbound carrying the records it copied.
    let s = Sock::tcp(1, "93.184.216.34:443").by_process(PROXY_PID, r"\x\ourproxy.exe");
    let d = a.decide_connect_redirect(&s.connect(RedirectedBySelf), ms(0));
    assert_decision(&d, Verdict::Continue, Reason::RedirectedBySelf);
}

#[test]
fn c3_previously_redirected_by_self_permits_by_default() {
    let mut a = arbiter_with(web_rules());
    let s = Sock::tcp(1, "93.184.216.34:443");
    let d = a.decide_connect_redirect(&s.connect(PreviouslyRedirectedBySelf), ms(0));
    assert_decision(&d, Verdict::Permit, Reason::RevisitPermitted);
    // The permit is cached for auth-connect (A2).
    assert_eq!(
        a.endpoint_entry(1, ms(1)),
        Some(EndpointEntry::Cached { verdict: PermitOrBlock::Permit, reason: Reason::RevisitPermitted })
    );
}

#[test]
fn c3_previously_redirected_by_self_blocks_when_strict() {
    let mut a = arbiter_with(strict(web_rules()));
    let s = Sock::tcp(1, "93.184.216.34:443");
    let d = a.decide_connect_redirect(&s.connect(PreviouslyRedirectedBySelf), ms(0));
    assert_decision(&d, Verdict::Block, Reason::RevisitBlocked);
}

#[test]
fn c4_no_write_right() {
    let mut a = arbiter_with(web_rules());
    let s = Sock::tcp(1, "93.184.216.34:443");
    let mut input = s.connect(NotRedirected);
    input.write_right = false;
    let d = a.decide_connect_redirect(&input, ms(0));
    assert_decision(&d, Verdict::Continue, Reason::NoWriteRight);
}

#[test]
fn c5_local_proxy_of_other_anywhere_in_the_chain() {
    let mut a = arbiter_with(web_rules());
    let s = Sock::tcp(1, "93.184.216.34:443");
    // Two modifiers ago: a one-hop look-back would miss it.
    let input = s.connect_with_chain(NotRedirected, &[(300, false), (200, true)]);
    let d = a.decide_connect_redirect(&input, ms(0));
    assert_decision(&d, Verdict::Permit, Reason::LocalProxyOfOther);
    assert_eq!(a.endpoint_entry(1, ms(1)), None, "C5 permits are not cached, so A6 can learn the proxy");
}

#[test]
fn c6_modified_by_self() {
    let mut a = arbiter_with(web_rules());
    let s = Sock::tcp(1, "93.184.216.34:443");
    let input = s.connect_with_chain(NotRedirected, &[(300, false), (OWN_FILTER, true)]);
    let d = a.decide_connect_redirect(&input, ms(0));
    assert_decision(&d, Verdict::Continue, Reason::ModifiedBySelf);
}

#[test]
fn c7_own_proxy_outbound() {
    let mut a = arbiter_with(web_rules());
    let s = Sock::tcp(1, "93.184.216.34:443").by_process(PROXY_PID, r"\x\ourproxy.exe");
    for state in [NotRedirected, RedirectedByOther] {
        let d = a.decide_connect_redirect(&s.connect(state), ms(0));
        assert_decision(&d, Verdict::Permit, Reason::OwnProxyOutbound);
    }
}

#[test]
fn c8_loop_suspected_after_max_hops() {
    let mut a = arbiter_with(web_rules());
    // A learned local proxy (A6) keeps bringing the same destination back.
    let app = Sock::tcp(1, "93.184.216.34:443");
    let d = a.decide_auth_connect(&app.auth(true, Some(777), Some("93.184.216.34:443")), ms(0));
    assert_decision(&d, Verdict::Continue, Reason::RedirectedByOtherObserved);
    for hop in 0..3u64 {
        let s = Sock::tcp(10 + hop, "93.184.216.34:443").by_process(777, r"\x\vendord\relay.exe");
        let d = a.decide_connect_redirect(&s.connect(NotRedirected), ms(10 * hop));
        assert_decision(&d, Verdict::Proxy, Reason::RuleProxy);
    }
    let s = Sock::tcp(20, "93.184.216.34:443").by_process(777, r"\x\vendord\relay.exe");
    let d = a.decide_connect_redirect(&s.connect(NotRedirected), ms(40));
    assert_decision(&d, Verdict::Permit, Reason::LoopSuspected);
    // Outside the window the counter starts again.
    let s = Sock::tcp(21, "93.184.216.34:443").by_process(777, r"\x\vendord\relay.exe");
    let d = a.decide_connect_redirect(&s.connect(NotRedirected), ms(6000));
    assert_decision(&d, Verdict::Proxy, Reason::RuleProxy);
}

#[test]
fn c8_known_proxies_from_rules_and_on_loop_block() {
    let mut a = arbiter_with(strict(web_rules()));
    for hop in 0..4u64 {
        let s = Sock::tcp(hop, "[2001:db8::1]:443").by_process(900, VENDOR_C);
        let d = a.decide_connect_redirect(&s.connect(NotRedirected), ms(hop));
        if hop < 3 {
            assert_decision(&d, Verdict::Proxy, Reason::RuleProxy);
        } else {
            assert_decision(&d, Verdict::Block, Reason::LoopSuspected);
        }
    }
}

#[test]
fn c8_does_not_apply_to_ordinary_apps() {
    let mut a = arbiter_with(web_rules());
    for hop in 0..10u64 {
        let s = Sock::tcp(hop, "93.184.216.34:443");
        let d = a.decide_connect_redirect(&s.connect(NotRedirected), ms(hop));
        assert_decision(&d, Verdict::Proxy, Reason::RuleProxy);
    }
}

#[test]
fn c9_trusted_other() {
    let mut a = arbiter_with(web_rules());
    let s = Sock::tcp(1, "93.184.216.34:443").by_process(600, VENDOR_B);
    let d = a.decide_connect_redirect(&s.connect(RedirectedByOther), ms(0));
    assert_decision(&d, Verdict::Continue, Reason::TrustedOther);
    // Trust applies to redirected-by-other only: the same app not redirected is proxied.
    let d = a.decide_connect_redirect(&s.connect(NotRedirected), ms(0));
    assert_decision(&d, Verdict::Proxy, Reason::RuleProxy);
}

#[test]
fn c10_untrusted_other_proxied() {
    let mut a = arbiter_with(web_rules());
    let s = Sock::tcp(1, "93.184.216.34:443").by_process(601, r"\x\vendorx\proxy.exe");
    let d = a.decide_connect_redirect(&s.connect(RedirectedByOther), ms(0));
    assert_decision(&d, Verdict::Proxy, Reason::UntrustedOtherProxied);
}

#[test]
fn c11_rule_proxy_sends_every_flow_to_the_loopback_listener() {
    let mut a = arbiter_with(web_rules());
    let s = Sock::tcp(1, "93.184.216.34:443");
    let d = a.decide_connect_redirect(&s.connect(NotRedirected), ms(0));
    assert_decision(&d, Verdict::Proxy, Reason::RuleProxy);
    let r = d.redirect.unwrap();
    // Local address set, but the proxy listens on loopback only: the
    // listener itself (the zone rule's local_ip:port reaches nothing).
    assert_eq!(r.remote, "127.0.0.1:34010".parse().unwrap());
    assert_eq!(r.target_pid, PROXY_PID);
    assert_eq!(r.context.original_remote, s.remote);
    assert_eq!(r.context.original_local, s.local);
    assert_eq!(r.context.pid, 4242);
    // Unspecified local address: loopback listener.
    let mut s6 = Sock::tcp(2, "[2001:db8::1]:80");
    s6.local = "[::]:0".parse().unwrap();
    let d = a.decide_connect_redirect(&s6.connect(NotRedirected), ms(0));
    assert_eq!(d.redirect.unwrap().remote, "[::1]:34010".parse().unwrap());
}

#[test]
fn c11_without_a_registered_proxy_leaves_the_flow_alone() {
    let mut a = arbiter_with(web_rules());
    a.clear_proxy();
    let s = Sock::tcp(1, "93.184.216.34:443");
    let d = a.decide_connect_redirect(&s.connect(NotRedirected), ms(0));
    assert_decision(&d, Verdict::Continue, Reason::ProxyUnavailable);
}

#[test]
fn c12_rule_block_is_enforced_at_auth_connect() {
    let mut a = arbiter_with(web_rules());
    let s = Sock::tcp(1, "93.184.216.34:23");
    let d = a.decide_connect_redirect(&s.connect(NotRedirected), ms(0));
    assert_decision(&d, Verdict::Block, Reason::RuleBlock);
    let d = a.decide_auth_connect(&s.auth(false, None, None), ms(1));
    assert_decision(&d, Verdict::Block, Reason::RuleBlock);
}

#[test]
fn c13_rule_bypass() {
    let mut a = arbiter_with(web_rules());
    let s = Sock::tcp(1, "10.1.2.3:443");
    let d = a.decide_connect_redirect(&s.connect(NotRedirected), ms(0));
    assert_decision(&d, Verdict::Continue, Reason::RuleBypass);
}

#[test]
fn c14_no_rule() {
    let mut a = arbiter_with(web_rules());
    let s = Sock::tcp(1, "93.184.216.34:22");
    let d = a.decide_connect_redirect(&s.connect(NotRedirected), ms(0));
    assert_decision(&d, Verdict::Continue, Reason::NoRule);
}

#[test]
fn a1_cached_block() {
    let mut a = arbiter_with(strict(web_rules()));
    let s = Sock::tcp(1, "93.184.216.34:443");
    a.decide_connect_redirect(&s.connect(PreviouslyRedirectedBySelf), ms(0));
    let d = a.decide_auth_connect(&s.auth(false, None, None), ms(5));
    assert_decision(&d, Verdict::Block, Reason::RevisitBlocked);
    // Consumed: a second auth-connect finds nothing.
    let d = a.decide_auth_connect(&s.auth(false, None, None), ms(6));
    assert_decision(&d, Verdict::Continue, Reason::NotRedirected);
}

#[test]
fn a2_cached_permit() {
    let mut a = arbiter_with(web_rules());
    let s = Sock::tcp(1, "93.184.216.34:443");
    a.decide_connect_redirect(&s.connect(PreviouslyRedirectedBySelf), ms(0));
    let d = a.decide_auth_connect(&s.auth(true, Some(999), None), ms(5));
    assert_decision(&d, Verdict::Permit, Reason::RevisitPermitted);
}

#[test]
fn a3_redirect_target_mismatch() {
    let mut a = arbiter_with(web_rules());
    let s = Sock::tcp(1, "93.184.216.34:443");
    a.decide_connect_redirect(&s.connect(NotRedirected), ms(0));
    let mut auth = s.auth_after_proxy();
    auth.target_pid = Some(31337);
    let d = a.decide_auth_connect(&auth, ms(1));
    assert_decision(&d, Verdict::Block, Reason::RedirectTargetMismatch);
}

#[test]
fn a3_missing_target_pid_fails_closed() {
    let mut a = arbiter_with(web_rules());
    let s = Sock::tcp(1, "93.184.216.34:443");
    a.decide_connect_redirect(&s.connect(NotRedirected), ms(0));
    let mut auth = s.auth_after_proxy();
    auth.target_pid = None;
    let d = a.decide_auth_connect(&auth, ms(1));
    assert_decision(&d, Verdict::Block, Reason::RedirectTargetMismatch);
}

#[test]
fn a4_original_destination_mismatch() {
    let mut a = arbiter_with(web_rules());
    let s = Sock::tcp(1, "93.184.216.34:443");
    a.decide_connect_redirect(&s.connect(NotRedirected), ms(0));
    let mut auth = s.auth_after_proxy();
    auth.original_destination = Some("93.184.216.35:443".parse().unwrap());
    let d = a.decide_auth_connect(&auth, ms(1));
    assert_decision(&d, Verdict::Block, Reason::OriginalDestinationMismatch);
}

#[test]
fn a5_proxy_verified() {
    let mut a = arbiter_with(web_rules());
    let s = Sock::tcp(1, "93.184.216.34:443");
    a.decide_connect_redirect(&s.connect(NotRedirected), ms(0));
    let d = a.decide_auth_connect(&s.auth_after_proxy(), ms(1));
    assert_decision(&d, Verdict::Permit, Reason::ProxyVerified);
}

#[test]
fn a6_redirected_by_other_observed_learns_the_proxy() {
    let mut a = arbiter_with(web_rules());
    let s = Sock::tcp(1, "93.184.216.34:443");
    assert!(!a.is_learned_proxy(777, ms(0)));
    let d = a.decide_auth_connect(&s.auth(true, Some(777), Some("93.184.216.34:443")), ms(0));
    assert_decision(&d, Verdict::Continue, Reason::RedirectedByOtherObserved);
    assert!(a.is_learned_proxy(777, ms(1)));
}

#[test]
fn a7_not_redirected() {
    let mut a = arbiter_with(web_rules());
    let s = Sock::tcp(1, "93.184.216.34:22");
    let d = a.decide_auth_connect(&s.auth(false, None, None), ms(0));
    assert_decision(&d, Verdict::Continue, Reason::NotRedirected);
}

#[test]
fn a7_our_redirect_that_did_not_take() {
    let mut a = arbiter_with(web_rules());
    let s = Sock::tcp(1, "93.184.216.34:443");
    a.decide_connect_redirect(&s.connect(NotRedirected), ms(0));
    let d = a.decide_auth_connect(&s.auth(false, None, None), ms(1));
    assert_decision(&d, Verdict::Continue, Reason::NotRedirected);
}

#[test]
fn chain_too_long_is_left_alone() {
    let mut a = arbiter_with(web_rules());
    let s = Sock::tcp(1, "93.184.216.34:443");
    let chain: Vec<(u64, bool)> = (1000..1020).map(|f| (f, false)).collect();
    let d = a.decide_connect_redirect(&s.connect_with_chain(NotRedirected, &chain), ms(0));
    assert_decision(&d, Verdict::Continue, Reason::ChainTooLong);
}

#[test]
fn endpoint_entries_expire_and_closure_forgets_them() {
    let mut a = arbiter_with(web_rules());
    let s = Sock::tcp(1, "93.184.216.34:23");
    a.decide_connect_redirect(&s.connect(NotRedirected), ms(0));
    let mut audited = Vec::new();
    assert_eq!(a.expire(ms(59_999), |r| audited.push(r)), 0);
    assert_eq!(a.expire(ms(60_000), |r| audited.push(r)), 1);
    assert_eq!(audited.len(), 1, "an expired cached block is audited");
    assert_eq!(audited[0].reason(), Reason::Expired);
    let d = a.decide_auth_connect(&s.auth(false, None, None), ms(60_001));
    assert_decision(&d, Verdict::Continue, Reason::NotRedirected);

    let s2 = Sock::tcp(2, "93.184.216.34:23");
    a.decide_connect_redirect(&s2.connect(NotRedirected), ms(0));
    assert!(a.forget_endpoint(2, ms(1)).is_some());
    assert_eq!(a.counters().forgotten, 1);
}

#[test]
fn eviction_is_counted_and_audited() {
    let mut a = arbiter_with(web_rules()); // 64 endpoints
    let mut departures = 0;
    for e in 0..100u64 {
        let s = Sock::tcp(e, "93.184.216.34:23");
        let d = a.decide_connect_redirect(&s.connect(NotRedirected), ms(e));
        for dep in d.departures.iter() {
            assert_eq!(dep.reason(), Reason::Evicted);
            departures += 1;
        }
    }
    assert_eq!(departures, 36);
    assert_eq!(a.counters().evicted[0], 36);
    // The oldest are gone, the newest still enforced.
    let old = Sock::tcp(0, "93.184.216.34:23");
    assert_eq!(a.decide_auth_connect(&old.auth(false, None, None), ms(101)).verdict, Verdict::Continue);
    let new = Sock::tcp(99, "93.184.216.34:23");
    assert_eq!(a.decide_auth_connect(&new.auth(false, None, None), ms(101)).verdict, Verdict::Block);
}

#[test]
fn udp_and_ipv6_are_proxied_per_family() {
    let mut a = arbiter_with(web_rules());
    let s = Sock::udp(1, "[2001:db8::1]:443");
    let d = a.decide_connect_redirect(&s.connect(NotRedirected), ms(0));
    assert_decision(&d, Verdict::Proxy, Reason::RuleProxy);
    assert_eq!(d.redirect.unwrap().remote, "[::1]:34010".parse().unwrap());
}

#[test]
fn rule_swap_keeps_tables() {
    let mut a = arbiter_with(web_rules());
    let s = Sock::tcp(1, "93.184.216.34:23");
    a.decide_connect_redirect(&s.connect(NotRedirected), ms(0));
    let old = a.replace_policy(arbiter::RuleSet::default());
    assert_eq!(old.rules.len(), 4);
    // The block decided under the old rules is still enforced.
    assert_eq!(a.decide_auth_connect(&s.auth(false, None, None), ms(1)).verdict, Verdict::Block);
    let s2 = Sock::tcp(2, "93.184.216.34:443");
    assert_eq!(a.decide_connect_redirect(&s2.connect(NotRedirected), ms(2)).reason, Reason::NoRule);
}

#[test]
fn c5_on_reauthorization_then_a3_blocks_the_overridden_flow() {
    // We proxy; a lower-weight vendor then overrides with its own local
    // redirect, having seen our rewritten remote (our listener) as the flow's
    // destination. On the reauthorization we concede (C5: never fight over a
    // local redirect), but the flow now goes to the other proxy with our
    // listener as its "original" destination: A3 stops it, explained, instead
    // of letting a context-less connection reach our proxy.
    let mut a = arbiter_with(web_rules());
    let s = Sock::tcp(1, "93.184.216.34:443");
    assert_eq!(a.decide_connect_redirect(&s.connect(NotRedirected), ms(0)).verdict, Verdict::Proxy);
    let reauth = s.connect_with_chain(NotRedirected, &[(OWN_FILTER, true), (300, true)]);
    let d = a.decide_connect_redirect(&reauth, ms(1));
    assert_decision(&d, Verdict::Permit, Reason::LocalProxyOfOther);
    let d = a.decide_auth_connect(&s.auth(true, Some(4444), Some("93.184.216.34:443")), ms(2));
    assert_decision(&d, Verdict::Block, Reason::RedirectTargetMismatch);
}

#[test]
fn c6_keeps_our_proxied_record() {
    let mut a = arbiter_with(web_rules());
    let s = Sock::tcp(1, "93.184.216.34:443");
    a.decide_connect_redirect(&s.connect(NotRedirected), ms(0));
    let reauth = s.connect_with_chain(NotRedirected, &[(OWN_FILTER, true), (300, false)]);
    assert_eq!(a.decide_connect_redirect(&reauth, ms(1)).reason, Reason::ModifiedBySelf);
    assert_eq!(a.decide_auth_connect(&s.auth_after_proxy(), ms(2)).reason, Reason::ProxyVerified);
}

#[test]
fn pend_timeout_fallback_is_audited_and_a_block_is_enforced() {
    let mut a = arbiter_with(web_rules());
    a.clear_proxy();
    let s = Sock::tcp(1, "93.184.216.34:443");
    let input = s.connect(NotRedirected);
    assert_eq!(a.decide_connect_redirect(&input, ms(0)).reason, Reason::ProxyUnavailable);
    let d = a.decide_fallback(&input, Verdict::Block, ms(5000));
    assert_decision(&d, Verdict::Block, Reason::PendTimeout);
    let bytes = {
        let mut b = vec![0u8; d.audit.encoded_len()];
        d.audit.encode_into(&mut b).unwrap();
        b
    };
    let (back, _) = arbiter::AuditRecord::decode(&bytes).unwrap();
    assert_eq!(back, d.audit);
    // A1 enforces it.
    let d = a.decide_auth_connect(&s.auth(false, None, None), ms(5001));
    assert_decision(&d, Verdict::Block, Reason::PendTimeout);
    // A permit fallback caches nothing.
    let s2 = Sock::tcp(2, "93.184.216.34:443");
    let input2 = s2.connect(NotRedirected);
    assert_decision(&a.decide_fallback(&input2, Verdict::Permit, ms(6000)), Verdict::Permit, Reason::PendTimeout);
    assert_eq!(a.endpoint_entry(2, ms(6001)), None);
}

#[test]
fn known_local_proxies_are_learned_whatever_row_decides() {
    // A cached permit (A2) for a flow another vendor redirected to its local
    // proxy: the verdict is A2's, and the target still becomes a known local
    // proxy (C8 must see its reconnects).
    let mut a = arbiter_with(web_rules());
    let s = Sock::tcp(1, "93.184.216.34:443");
    a.decide_connect_redirect(&s.connect(PreviouslyRedirectedBySelf), ms(0));
    let d = a.decide_auth_connect(&s.auth(true, Some(8888), Some("93.184.216.34:443")), ms(1));
    assert_decision(&d, Verdict::Permit, Reason::RevisitPermitted);
    assert!(a.is_learned_proxy(8888, ms(2)));
    // A3: whoever took our redirect is a local proxy too.
    let s2 = Sock::tcp(2, "93.184.216.34:443");
    a.decide_connect_redirect(&s2.connect(NotRedirected), ms(3));
    let d = a.decide_auth_connect(&s2.auth(true, Some(9999), Some("93.184.216.34:443")), ms(4));
    assert_decision(&d, Verdict::Block, Reason::RedirectTargetMismatch);
    assert!(a.is_learned_proxy(9999, ms(5)));
    // Our own proxy is never learned (C7 covers it), nor are flows not redirected.
    let s3 = Sock::tcp(3, "93.184.216.34:443");
    a.decide_connect_redirect(&s3.connect(NotRedirected), ms(6));
    assert_eq!(a.decide_auth_connect(&s3.auth_after_proxy(), ms(7)).reason, Reason::ProxyVerified);
    assert!(!a.is_learned_proxy(PROXY_PID, ms(8)));
    let s4 = Sock::tcp(4, "93.184.216.34:22");
    a.decide_auth_connect(&s4.auth(false, Some(7777), None), ms(9));
    assert!(!a.is_learned_proxy(7777, ms(10)));
}
