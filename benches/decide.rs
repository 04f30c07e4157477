//! Median cost per decision at both layers with 65,536 live endpoints.
//!
//! `cargo bench --bench decide` prints one line per layer. Timing is done in
//! batches of 1,024 decisions (a single decision is below the clock's
//! resolution); the median over batches is reported per decision. Inputs are
//! built before the timed region. Instruction counts, which do not vary
//! between runs, come from `arbiter bench` under callgrind.
#![allow(clippy::std_instead_of_core, clippy::alloc_instead_of_core, missing_docs, reason = "host-side benchmark")]

use std::hint::black_box;
use std::net::SocketAddr;
use std::time::Instant as Clock;

use arbiter::flow::{AuthConnectInput, ConnectRedirectInput, Flow, PreviousChain, Protocol, RedirectState};
use arbiter::policy::{Action, PortRange, Rule};
use arbiter::wide::WideString;
use arbiter::{Arbiter, Capacities, Config, Instant, RuleSet};

const LIVE: u32 = 65_536;
const BATCH: usize = 1024;
const BATCHES_DEFAULT: usize = 300;

fn rules() -> RuleSet {
    let mut web = Rule::any("web", Action::Proxy);
    web.protocol = Some(Protocol::TCP);
    web.remote_ports = vec![PortRange { lo: 80, hi: 80 }, PortRange { lo: 443, hi: 443 }];
    RuleSet { rules: vec![web], ..RuleSet::default() }
}

fn flow(app: &WideString, endpoint: u64) -> Flow<'_> {
    // 4,096 distinct destinations: a busy machine's working set of hosts,
    // enough to keep the hop table's working set out of L1/L2.
    let d = endpoint % 4096;
    let remote = SocketAddr::from(([93, 184, (d >> 8) as u8, d as u8], 443));
    Flow {
        protocol: Protocol::TCP,
        local: "10.0.0.5:50000".parse().unwrap(),
        remote,
        endpoint,
        pid: 4242,
        app: app.app_id(),
        original_app: app.app_id(),
        package: None,
    }
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn main() {
    // Fewer batches under valgrind: ARBITER_BENCH_BATCHES=20.
    let batches = std::env::var("ARBITER_BENCH_BATCHES").ok().and_then(|v| v.parse().ok()).unwrap_or(BATCHES_DEFAULT);
    let app = WideString::new(r"\device\harddiskvolume3\apps\browser.exe");
    let config = Config { own_filter: 100, ..Config::default() };
    let caps = Capacities { endpoints: LIVE, destinations: 16_384, known_proxies: 1024 };
    let mut a = Arbiter::new(config, caps, rules()).unwrap();
    a.set_proxy(5151, Some("127.0.0.1:34010".parse().unwrap()), None).unwrap();
    let bytes_per_endpoint = a.reserved_bytes() as f64 / f64::from(LIVE);
    let endpoint_table_bytes = a.reserved_bytes_per_table()[0] as f64 / f64::from(LIVE);

    // Fill the endpoint table to 65,536 live proxied endpoints.
    let mut next = 0u64;
    let now = |e: u64| Instant::from_millis(e / 64);
    while a.occupancy()[0] < LIVE {
        let input = ConnectRedirectInput {
            flow: flow(&app, next),
            state: RedirectState::NotRedirected,
            write_right: true,
            reauthorize: false,
            previous: PreviousChain::new(),
        };
        a.decide_connect_redirect(&input, now(next));
        next += 1;
    }

    // connect-redirect: each decision proxies a new endpoint and, the table
    // being full, evicts the oldest: the steady state of a busy machine.
    let mut samples = Vec::with_capacity(batches);
    for _ in 0..batches {
        let inputs: Vec<ConnectRedirectInput<'_>> = (next..next + BATCH as u64)
            .map(|e| ConnectRedirectInput {
                flow: flow(&app, e),
                state: RedirectState::NotRedirected,
                write_right: true,
                reauthorize: false,
                previous: PreviousChain::new(),
            })
            .collect();
        let t = now(next);
        let start = Clock::now();
        for input in &inputs {
            black_box(a.decide_connect_redirect(black_box(input), t));
        }
        samples.push(start.elapsed().as_nanos() as f64 / BATCH as f64);
        next += BATCH as u64;
    }
    let connect = median(samples);

    // auth-connect: verify (A5) the newest proxied endpoints, then put them
    // back (untimed) so the table stays at 65,536.
    let mut samples = Vec::with_capacity(batches);
    for _ in 0..batches {
        let first = next - BATCH as u64;
        let inputs: Vec<AuthConnectInput<'_>> = (first..next)
            .map(|e| {
                let f = flow(&app, e);
                AuthConnectInput {
                    original_destination: Some(f.remote),
                    flow: Flow { remote: "10.0.0.5:34010".parse().unwrap(), ..f },
                    reauthorize: false,
                    redirected: true,
                    target_pid: Some(5151),
                }
            })
            .collect();
        let t = now(next);
        let start = Clock::now();
        for input in &inputs {
            let d = a.decide_auth_connect(black_box(input), t);
            debug_assert_eq!(d.reason, arbiter::Reason::ProxyVerified);
            black_box(d);
        }
        samples.push(start.elapsed().as_nanos() as f64 / BATCH as f64);
        for e in first..next {
            let input = ConnectRedirectInput {
                flow: flow(&app, e),
                state: RedirectState::NotRedirected,
                write_right: true,
                reauthorize: false,
                previous: PreviousChain::new(),
            };
            a.decide_connect_redirect(&input, t);
        }
    }
    let auth = median(samples);
    assert_eq!(a.occupancy()[0], LIVE);
    println!(
        "live endpoints: {LIVE}; reserved bytes per endpoint: endpoint table {endpoint_table_bytes:.1}, all tables {bytes_per_endpoint:.1}"
    );
    println!("connect-redirect (proxy + eviction): median {connect:.1} ns/decision");
    println!("auth-connect (proxy-verified):       median {auth:.1} ns/decision");
}
