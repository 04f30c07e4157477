//! Arbitrary sequences of indications, time steps and closures against one
//! arbiter, checking the decision table's invariants after every step.
#![no_main]

use arbitrary::Arbitrary;
use arbiter::audit::AuditRecord;
use arbiter::flow::{AuthConnectInput, ConnectRedirectInput, Flow, PreviousChain, PreviousEntry, Protocol, RedirectState, Sid};
use arbiter::policy::{Action, Glob, PortRange, Rule, RuleSet};
use arbiter::wide::WideString;
use arbiter::{Arbiter, Capacities, Config, EndpointEntry, Instant, PermitOrBlock, Verdict};
use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

const OWN_FILTER: u64 = 100;
const PROXY_PID: u64 = 5151;

#[derive(Arbitrary, Debug)]
struct Sock {
    endpoint: u8,
    protocol: u8,
    v6: bool,
    remote: u8,
    port: u16,
    pid: u8,
    app: u8,
    package: Vec<u8>,
}

#[derive(Arbitrary, Debug)]
enum Op {
    Connect { sock: Sock, state: u8, write: bool, reauth: bool, chain: Vec<(u8, bool)> },
    Auth { sock: Sock, redirected: bool, target: Option<u8>, original: Option<(u8, u16)> },
    Forget(u8),
    Advance(u16),
    Back(u8),
    Expire,
    SwapRules(bool),
}

const APPS: [&str; 4] = [
    r"\device\harddiskvolume3\apps\browser.exe",
    r"\device\harddiskvolume3\vendorb\proxy.exe",
    r"\device\harddiskvolume3\vendorc\relay.exe",
    "",
];

fn rules(strict: bool) -> RuleSet {
    let mut web = Rule::any("web", Action::Proxy);
    web.remote_ports = vec![PortRange { lo: 0, hi: 0x7fff }];
    let mut block = Rule::any("block", Action::Block);
    block.remote_ports = vec![PortRange { lo: 0x8000, hi: 0xbfff }];
    let mut r = RuleSet {
        rules: vec![block, web, Rule::any("rest", Action::Bypass)],
        trust: vec![Glob::new(r"*\vendorb\*").unwrap()],
        known_proxies: vec![Glob::new(r"*\vendorc\relay.exe").unwrap()],
        ..RuleSet::default()
    };
    if strict {
        r.loop_policy.revisit = PermitOrBlock::Block;
        r.loop_policy.on_loop = PermitOrBlock::Block;
    }
    r
}

fn addr(v6: bool, host: u8, port: u16) -> SocketAddr {
    let ip = if v6 {
        IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, u16::from(host)))
    } else {
        IpAddr::V4(Ipv4Addr::new(93, 184, 216, host))
    };
    SocketAddr::new(ip, port)
}

fn check(rec: &AuditRecord<'_>) {
    let mut buf = vec![0u8; rec.encoded_len()];
    let n = rec.encode_into(&mut buf).expect("records encode");
    let (back, used) = AuditRecord::decode(&buf[..n]).expect("records decode");
    assert_eq!(used, n);
    assert_eq!(&back, rec);
    if let Some(r) = back.replay() {
        assert!(r.matches(back.outcome().unwrap()), "replay diverged");
    }
}

libfuzzer_sys::fuzz_target!(|ops: Vec<Op>| {
    let apps: Vec<WideString> = APPS.iter().map(|a| WideString::new(a)).collect();
    let config = Config { own_filter: OWN_FILTER, ..Config::default() };
    let caps = Capacities { endpoints: 16, destinations: 8, known_proxies: 4 };
    let mut a = Arbiter::new(config, caps, rules(false)).unwrap();
    a.set_proxy(PROXY_PID, Some("127.0.0.1:34010".parse().unwrap()), Some("[::1]:34010".parse().unwrap())).unwrap();
    let mut now = 1_000_000u64;
    let mut blocks: HashMap<u64, (arbiter::Reason, u64)> = HashMap::new();
    for op in ops.iter().take(256) {
        let mut departed = Vec::new();
        match op {
            Op::Connect { sock, state, write, reauth, chain } => {
                let pid = if sock.pid % 4 == 0 { PROXY_PID } else { u64::from(sock.pid) };
                let app = apps[usize::from(sock.app) % apps.len()].app_id();
                let flow = Flow {
                    protocol: Protocol(sock.protocol),
                    local: addr(sock.v6, 5, 50000),
                    remote: addr(sock.v6, sock.remote, sock.port),
                    endpoint: u64::from(sock.endpoint),
                    pid,
                    app,
                    original_app: app,
                    package: Sid::from_bytes(&sock.package),
                };
                let state = RedirectState::from_u8(state % 4).unwrap();
                let previous = PreviousChain::from_entries(chain.iter().map(|&(f, h)| PreviousEntry {
                    filter: if f % 3 == 0 { OWN_FILTER } else { u64::from(f) },
                    local_redirect_handle: h,
                }));
                let input = ConnectRedirectInput { flow, state, write_right: *write, reauthorize: *reauth, previous };
                let d = a.decide_connect_redirect(&input, Instant::from_millis(now));
                if d.verdict == Verdict::Proxy {
                    assert!(matches!(state, RedirectState::NotRedirected | RedirectState::RedirectedByOther));
                    assert!(*write && pid != PROXY_PID && d.redirect.is_some());
                }
                check(&d.audit);
                if d.verdict == Verdict::Block {
                    blocks.insert(flow.endpoint, (d.reason, now + 60_000));
                } else if a
                    .endpoint_entry(flow.endpoint, Instant::from_millis(now))
                    .is_some_and(|e| !matches!(e, EndpointEntry::Cached { verdict: PermitOrBlock::Block, .. }))
                {
                    blocks.remove(&flow.endpoint);
                }
                departed.extend(d.departures.iter().copied());
            }
            Op::Auth { sock, redirected, target, original } => {
                let app = apps[usize::from(sock.app) % apps.len()].app_id();
                let flow = Flow {
                    protocol: Protocol(sock.protocol),
                    local: addr(sock.v6, 5, 50000),
                    remote: addr(sock.v6, sock.remote, sock.port),
                    endpoint: u64::from(sock.endpoint),
                    pid: u64::from(sock.pid),
                    app,
                    original_app: app,
                    package: None,
                };
                let input = AuthConnectInput {
                    flow,
                    reauthorize: false,
                    redirected: *redirected,
                    target_pid: target.map(|t| if t % 2 == 0 { PROXY_PID } else { u64::from(t) }),
                    original_destination: original.map(|(h, p)| addr(sock.v6, h, p)),
                };
                let d = a.decide_auth_connect(&input, Instant::from_millis(now));
                if let Some((reason, deadline)) = blocks.remove(&flow.endpoint)
                    && now < deadline
                {
                    assert_eq!((d.verdict, d.reason), (Verdict::Block, reason), "cached block enforced");
                }
                check(&d.audit);
                departed.extend(d.departures.iter().copied());
            }
            Op::Forget(e) => {
                a.forget_endpoint(u64::from(*e), Instant::from_millis(now));
                blocks.remove(&u64::from(*e));
            }
            Op::Advance(ms) => now += u64::from(*ms) * 16,
            // The clock may go backwards; nothing may panic.
            Op::Back(ms) => now = now.saturating_sub(u64::from(*ms) * 16),
            Op::Expire => {
                a.expire(Instant::from_millis(now), |r| departed.push(r));
            }
            Op::SwapRules(strict) => {
                a.replace_policy(rules(*strict));
            }
        }
        for r in &departed {
            check(&r.record());
            if let arbiter::audit::DepartedEntry::Endpoint { endpoint, .. } = r.entry {
                blocks.remove(&endpoint);
            }
        }
        let [e, d, k] = a.occupancy();
        assert!(e <= 16 && d <= 8 && k <= 4);
    }
});
