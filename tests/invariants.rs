//! Property tests for the invariants at the end of decision-table.md, over
//! random sequences of indications, closures and time steps.
#![allow(clippy::std_instead_of_core, clippy::alloc_instead_of_core, reason = "host-side test")]

mod common;

use std::collections::HashMap;

use arbiter::audit::ring::AuditRing;
use arbiter::audit::{AuditRecord, DepartedEntry, Event};
use arbiter::flow::{PreviousChain, PreviousEntry, Protocol, RedirectState};
use arbiter::{Arbiter, Capacities, Config, Reason, RuleSet, Verdict};
use common::*;
use proptest::prelude::*;

#[derive(Clone, Debug)]
enum Op {
    Connect { sock: u8, state: u8, write: bool, chain: Vec<(u8, bool)>, proto: u8 },
    Auth { sock: u8, redirected: bool, target: Option<u8>, original: Option<u8> },
    Forget { sock: u8 },
    Fallback { sock: u8, verdict: u8 },
    Advance { ms: u16 },
    Expire,
}

/// Longest generated sequence (short under Miri, which is ~1000x slower).
const OPS: usize = if cfg!(miri) { 12 } else { 80 };

const REMOTES: [&str; 5] =
    ["93.184.216.34:443", "93.184.216.34:23", "10.1.1.1:80", "[2001:db8::1]:443", "93.184.216.34:22"];
const PIDS: [(u64, &str); 5] =
    [(4242, BROWSER), (PROXY_PID, r"\x\ours.exe"), (600, VENDOR_B), (900, VENDOR_C), (777, r"\x\vendord\relay.exe")];
const FILTERS: [u64; 3] = [OWN_FILTER, 200, 300];

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        5 => (0u8..24, 0u8..4, proptest::bool::weighted(0.85), proptest::collection::vec((0u8..3, any::<bool>()), 0..3), 0u8..10)
            .prop_map(|(sock, state, write, chain, proto)| Op::Connect { sock, state, write, chain, proto }),
        4 => (0u8..24, any::<bool>(), proptest::option::of(0u8..5), proptest::option::of(0u8..5))
            .prop_map(|(sock, redirected, target, original)| Op::Auth { sock, redirected, target, original }),
        1 => (0u8..24).prop_map(|sock| Op::Forget { sock }),
        1 => (0u8..24, 0u8..4).prop_map(|(sock, verdict)| Op::Fallback { sock, verdict }),
        2 => (0u16..4000).prop_map(|ms| Op::Advance { ms }),
        1 => Just(Op::Expire),
    ]
}

fn sock_for(i: u8) -> Sock {
    let remote = REMOTES[usize::from(i) % REMOTES.len()];
    let (pid, app) = PIDS[usize::from(i / 5) % PIDS.len()];
    Sock::tcp(u64::from(i), remote).by_process(pid, app)
}

fn small_arbiter(rules: RuleSet) -> Arbiter<RuleSet> {
    let config = Config { own_filter: OWN_FILTER, ..Config::default() };
    let caps = Capacities { endpoints: 8, destinations: 4, known_proxies: 2 };
    let mut a = Arbiter::new(config, caps, rules).unwrap();
    a.set_proxy(PROXY_PID, Some("127.0.0.1:34010".parse().unwrap()), Some("[::1]:34010".parse().unwrap())).unwrap();
    a
}

/// Checks a record: it encodes, decodes to itself, and replays to its outcome.
fn check_record(rec: &AuditRecord<'_>) {
    let mut buf = vec![0u8; rec.encoded_len()];
    let n = rec.encode_into(&mut buf).unwrap();
    assert_eq!(n, buf.len());
    let (back, used) = AuditRecord::decode(&buf).unwrap();
    assert_eq!(used, n);
    assert_eq!(&back, rec);
    if let Some(replayed) = back.replay() {
        assert!(replayed.matches(back.outcome().unwrap()), "replay diverged: {replayed:?} vs {back:?}");
    }
}

/// Runs `ops` and checks invariants 1..4 after every step; returns a transcript
/// for the determinism check (invariant 5).
fn run(ops: &[Op], rules: RuleSet) -> Vec<(Verdict, Reason, Option<std::net::SocketAddr>)> {
    let mut a = small_arbiter(rules);
    let mut now = 0u64;
    let mut transcript = Vec::new();
    // Invariant 2's model: endpoint -> (reason, deadline) of the block decided at connect-redirect.
    let mut blocks: HashMap<u64, (Reason, u64)> = HashMap::new();
    let mut last_seq = None;
    for op in ops {
        let mut departed = Vec::new();
        match op {
            Op::Connect { sock, state, write, chain, proto } => {
                let mut s = sock_for(*sock);
                s.protocol = match proto {
                    0 => Protocol::ICMP,
                    1..=3 => Protocol::UDP,
                    _ => Protocol::TCP,
                };
                let state = RedirectState::from_u8(*state).unwrap();
                let mut input = s.connect(state);
                input.write_right = *write;
                input.previous = PreviousChain::from_entries(
                    chain
                        .iter()
                        .map(|&(f, h)| PreviousEntry { filter: FILTERS[usize::from(f)], local_redirect_handle: h }),
                );
                let d = a.decide_connect_redirect(&input, ms(now));
                // Invariant 1.
                if d.verdict == Verdict::Proxy {
                    assert!(!matches!(
                        state,
                        RedirectState::RedirectedBySelf | RedirectState::PreviouslyRedirectedBySelf
                    ));
                    assert_ne!(s.pid, PROXY_PID, "never proxy our own proxy");
                    assert!(*write, "never proxy without the write right");
                    assert!(d.redirect.is_some());
                }
                // Invariant 3: exactly one record, about this input.
                match &d.audit.event {
                    Event::ConnectRedirect(c) => assert_eq!(c.input, input),
                    other => panic!("wrong record {other:?}"),
                }
                check_record(&d.audit);
                if d.verdict == Verdict::Block {
                    blocks.insert(s.endpoint, (d.reason, now + 60_000));
                } else if d.reason != Reason::ModifiedBySelf && d.reason != Reason::NoWriteRight {
                    // A later decision for the endpoint that caches something else replaces it.
                    if a.endpoint_entry(s.endpoint, ms(now)).is_some_and(|e| {
                        !matches!(e, arbiter::EndpointEntry::Cached { verdict: arbiter::PermitOrBlock::Block, .. })
                    }) {
                        blocks.remove(&s.endpoint);
                    }
                }
                departed.extend(d.departures.iter().copied());
                transcript.push((d.verdict, d.reason, d.redirect.map(|r| r.remote)));
                for r in d.departures.iter() {
                    check_record(&r.record());
                }
                // Departures are numbered before the decision's own record.
                for seq in d.departures.iter().map(|r| r.seq).chain([d.audit.seq]) {
                    assert!(last_seq.is_none_or(|l| seq > l), "sequence numbers increase");
                    last_seq = Some(seq);
                }
            }
            Op::Auth { sock, redirected, target, original } => {
                let s = sock_for(*sock);
                let target_pid = target.map(|t| PIDS[usize::from(t)].0);
                let original = original.map(|o| REMOTES[usize::from(o)]);
                let input = s.auth(*redirected, target_pid, original);
                let d = a.decide_auth_connect(&input, ms(now));
                // Invariant 2.
                if let Some((reason, deadline)) = blocks.remove(&s.endpoint)
                    && now < deadline
                {
                    assert_eq!((d.verdict, d.reason), (Verdict::Block, reason), "cached block enforced");
                }
                assert!(matches!(d.audit.event, Event::AuthConnect(_)));
                for seq in d.departures.iter().map(|r| r.seq).chain([d.audit.seq]) {
                    assert!(last_seq.is_none_or(|l| seq > l), "sequence numbers increase");
                    last_seq = Some(seq);
                }
                check_record(&d.audit);
                departed.extend(d.departures.iter().copied());
                transcript.push((d.verdict, d.reason, None));
            }
            Op::Fallback { sock, verdict } => {
                let s = sock_for(*sock);
                let input = s.connect(RedirectState::NotRedirected);
                let v = Verdict::from_u8(*verdict).unwrap();
                let d = a.decide_fallback(&input, v, ms(now));
                assert_ne!(d.verdict, Verdict::Proxy, "a fallback never proxies");
                assert_eq!(d.reason, Reason::PendTimeout);
                check_record(&d.audit);
                if d.verdict == Verdict::Block {
                    blocks.insert(s.endpoint, (d.reason, now + 60_000));
                }
                for seq in d.departures.iter().map(|r| r.seq).chain([d.audit.seq]) {
                    assert!(last_seq.is_none_or(|l| seq > l), "sequence numbers increase");
                    last_seq = Some(seq);
                }
                departed.extend(d.departures.iter().copied());
                transcript.push((d.verdict, d.reason, None));
            }
            Op::Forget { sock } => {
                a.forget_endpoint(u64::from(*sock), ms(now));
                blocks.remove(&u64::from(*sock));
            }
            Op::Advance { ms: step } => now += u64::from(*step),
            Op::Expire => {
                a.expire(ms(now), |r| departed.push(r));
            }
        }
        // Invariant 2's exception: evictions are audited; drop them from the model.
        for r in &departed {
            if let DepartedEntry::Endpoint { endpoint, .. } = r.entry {
                blocks.remove(&endpoint);
            }
        }
        // Invariant 4: bounded.
        let [e, d, k] = a.occupancy();
        assert!(e <= 8 && d <= 4 && k <= 2);
    }
    transcript
}

/// Runs `ops` twice, on twin arbiters: one through the `Decision` API with
/// every record pushed into a ring as the adapter used to, one through the
/// kernel's `decide_*_into` API. Outcomes, counters and the rings' bytes must
/// be the same.
fn run_into_twins(ops: &[Op], rules: &RuleSet) {
    let mut a = small_arbiter(rules.clone());
    let mut b = small_arbiter(rules.clone());
    let mut ring_a = AuditRing::new(1 << 16).unwrap();
    let mut ring_b = AuditRing::new(1 << 16).unwrap();
    let push = |ring: &mut AuditRing, d: &arbiter::Decision<'_>| {
        ring.push_record(&d.audit);
        for r in d.departures.iter() {
            ring.push_record(&r.record());
        }
    };
    let mut now = 0u64;
    for (i, op) in ops.iter().enumerate() {
        match op {
            Op::Connect { sock, state, write, chain, proto } => {
                let mut s = sock_for(*sock);
                s.protocol = if *proto == 0 { Protocol::ICMP } else { Protocol::TCP };
                let mut input = s.connect(RedirectState::from_u8(*state).unwrap());
                input.write_right = *write;
                input.previous = PreviousChain::from_entries(
                    chain
                        .iter()
                        .map(|&(f, h)| PreviousEntry { filter: FILTERS[usize::from(f)], local_redirect_handle: h }),
                );
                let d = a.decide_connect_redirect(&input, ms(now));
                push(&mut ring_a, &d);
                let o = b.decide_connect_redirect_into(&input, ms(now), &mut ring_b);
                assert_eq!((d.verdict, d.reason, d.redirect), (o.verdict, o.reason, o.redirect));
            }
            Op::Auth { sock, redirected, target, original } => {
                let s = sock_for(*sock);
                let input = s.auth(
                    *redirected,
                    target.map(|t| PIDS[usize::from(t)].0),
                    original.map(|o| REMOTES[usize::from(o)]),
                );
                let d = a.decide_auth_connect(&input, ms(now));
                push(&mut ring_a, &d);
                let o = b.decide_auth_connect_into(&input, ms(now), &mut ring_b);
                assert_eq!((d.verdict, d.reason, d.redirect), (o.verdict, o.reason, o.redirect));
            }
            Op::Fallback { sock, verdict } => {
                let s = sock_for(*sock);
                let input = s.connect(RedirectState::NotRedirected);
                let v = Verdict::from_u8(*verdict).unwrap();
                // Alternate the two reasons that share the record body (kinds 4 and 5).
                let reason = if i % 2 == 0 { Reason::PendTimeout } else { Reason::LayerDataUnavailable };
                let d = a.decide_without_table(&input, v, reason, ms(now));
                push(&mut ring_a, &d);
                let o = b.decide_without_table_into(&input, v, reason, ms(now), &mut ring_b);
                assert_eq!((d.verdict, d.reason, d.redirect), (o.verdict, o.reason, o.redirect));
            }
            Op::Forget { sock } => {
                assert_eq!(a.forget_endpoint(u64::from(*sock), ms(now)), b.forget_endpoint(u64::from(*sock), ms(now)));
            }
            Op::Advance { ms: step } => now += u64::from(*step),
            Op::Expire => {
                a.expire(ms(now), |r| {
                    ring_a.push_record(&r.record());
                });
                b.expire(ms(now), |r| {
                    ring_b.push_departure(&r);
                });
            }
        }
        assert_eq!(a.counters(), b.counters());
        assert_eq!(ring_a, ring_b, "the rings differ after {op:?}");
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: if cfg!(miri) { 2 } else { 256 }, ..ProptestConfig::default() })]

    #[test]
    fn decide_into_writes_what_decisions_audit(ops in proptest::collection::vec(op(), 1..OPS)) {
        run_into_twins(&ops, &web_rules());
    }

    #[test]
    fn invariants_hold_default_rules(ops in proptest::collection::vec(op(), 1..OPS)) {
        run(&ops, web_rules());
    }

    #[test]
    fn invariants_hold_strict_rules(ops in proptest::collection::vec(op(), 1..OPS)) {
        run(&ops, strict(web_rules()));
    }

    #[test]
    fn decisions_are_deterministic(ops in proptest::collection::vec(op(), 1..OPS)) {
        prop_assert_eq!(run(&ops, web_rules()), run(&ops, web_rules()));
    }

    #[test]
    fn audit_decoding_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..400)) {
        for rec in arbiter::audit::records(&bytes).flatten() {
            let _ = rec.replay();
        }
    }

    #[test]
    fn audit_decoding_of_mutated_records_never_panics(flip in 0usize..300, val in any::<u8>(), cut in 0usize..300) {
        let mut a = small_arbiter(web_rules());
        let s = Sock::tcp(1, "93.184.216.34:443");
        let d = a.decide_connect_redirect(&s.connect_with_chain(RedirectState::RedirectedByOther, &[(200, false)]), ms(0));
        let mut buf = vec![0u8; d.audit.encoded_len()];
        d.audit.encode_into(&mut buf).unwrap();
        if let Some(b) = buf.get_mut(flip) { *b = val; }
        buf.truncate(cut.max(1));
        if let Ok((rec, _)) = AuditRecord::decode(&buf) {
            check_record(&rec);
        }
    }
}
