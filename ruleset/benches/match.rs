//! First-match cost, compiled matcher against the reference scan, at 10,
//! 1,000 and 10,000 rules, in one run, on two generated workloads.
//!
//! `cargo bench -p arbiter-ruleset --bench match` runs the criterion groups
//! (`first_match/{naive,compiled}/N` and `first_match_realistic/...`, one
//! flow per iteration, cycling through 1,024 prepared flows) and then prints
//! a summary table per workload: the median cost per lookup over 51 batches
//! of 1,024 lookups for each matcher, the ratio, and the compiled matcher's
//! median over the flows that hit a rule and over those that hit none.
//! `cargo bench -p arbiter-ruleset --bench match -- skip-criterion` prints
//! only the tables (no benchmark is named `skip-criterion`).
//!
//! - `generated` (the original workload, kept as it was): a few bypass rules
//!   for local traffic, then rules mixing TCP/UDP/any, IPv4 and IPv6 CIDRs
//!   of many lengths, single ports and ranges, and app globs by suffix, by
//!   prefix and exact paths; every rule constrains at least two of remote,
//!   ports and app, half of them an app. Flows are one half drawn from the
//!   rules' own values (so they hit, at every depth), one quarter web flows,
//!   one quarter random. It weights globs and shared keys far more than real
//!   rule sets do: every IPv6 CIDR lies in `2001:db8::/32`, and flows
//!   from rule values come from random apps, so most candidates fail late.
//! - `realistic`: what deployed rule sets look like: mostly CIDR lists
//!   (bypass and block lists of /32s, /24s and wider, some IPv6), some port
//!   and protocol rules, a few app rules (browsers to the proxy, a vendor
//!   directory bypassed, an AppContainer package). Flows are mostly web
//!   traffic from a handful of apps, DNS, LAN traffic, some to listed
//!   destinations, and some local traffic.
//!
//! `MATCH_PROFILE=[realistic:]N` runs only the compiled matcher on one set
//! (`MATCH_PASSES` passes over its flows, 1,000 by default), for perf or
//! callgrind.
//!
//! Without `--bench` (as under `cargo test --all-targets`) each part runs
//! once, as a smoke test.
#![allow(clippy::std_instead_of_core, clippy::alloc_instead_of_core, missing_docs, reason = "host-side benchmark")]

use std::hint::black_box;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::{Duration, Instant};

use arbiter::compiled::CompiledRules;
use arbiter::flow::{Flow, Protocol, SidBuf};
use arbiter::policy::{Action, Cidr, Glob, Policy, PortRange, Rule, RuleSet};
use arbiter::wide::WideString;
use criterion::{BenchmarkId, Criterion};

const SIZES: [usize; 3] = [10, 1_000, 10_000];
const FLOWS: usize = 1024;
const PACKAGE: &str = "S-1-15-2-1430448594-2639229838-973813799-439329657-1197984847-4069523365-4100528453";

struct Gen(u64);

impl Gen {
    fn next(&mut self) -> u64 {
        // xorshift64*
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
    fn chance(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }
}

const COMMON_PORTS: [u16; 10] = [53, 80, 123, 443, 993, 3389, 5223, 8080, 8443, 9000];

fn app_path(vendor: u64, app: u64) -> String {
    format!(r"\device\harddiskvolume3\program files\vendor{vendor}\app{app}.exe")
}

fn random_rule(g: &mut Gen, i: usize) -> Rule {
    let action = [Action::Proxy, Action::Block, Action::Bypass][g.below(3) as usize];
    let mut r = Rule::any(&format!("rule {i}"), action);
    r.protocol = match g.below(10) {
        0..4 => Some(Protocol::TCP),
        4..7 => Some(Protocol::UDP),
        _ => None,
    };
    // Every rule constrains at least two of remote, ports and app: a rule
    // set whose early rules match everything is not worth measuring.
    let (has_remote, has_ports, has_app) = loop {
        let f = (g.chance(60), g.chance(60), g.chance(50));
        if u8::from(f.0) + u8::from(f.1) + u8::from(f.2) >= 2 {
            break f;
        }
    };
    if has_remote {
        for _ in 0..=g.below(3) {
            r.remote.push(if g.chance(85) {
                let prefix = [8, 12, 16, 20, 24, 24, 28, 32][g.below(8) as usize];
                Cidr { addr: IpAddr::V4(Ipv4Addr::from(g.next() as u32)), prefix }
            } else {
                let prefix = [32, 48, 56, 64][g.below(4) as usize];
                let addr = (0x2001_0db8u128 << 96) | (u128::from(g.next()) << 32);
                Cidr { addr: IpAddr::V6(Ipv6Addr::from(addr)), prefix }
            });
        }
    }
    if has_ports {
        for _ in 0..=g.below(3) {
            r.remote_ports.push(if g.chance(70) {
                let p = if g.chance(60) { COMMON_PORTS[g.below(10) as usize] } else { g.below(65536) as u16 };
                PortRange { lo: p, hi: p }
            } else {
                let lo = g.below(60000) as u16;
                PortRange { lo, hi: lo + g.below(1000) as u16 }
            });
        }
    }
    if has_app {
        let (vendor, app) = (g.below(300), g.below(20));
        let pattern = match g.below(20) {
            0..12 => format!(r"*\vendor{vendor}\app{app}.exe"),
            12..17 => format!(r"\device\harddiskvolume3\program files\vendor{vendor}\*"),
            _ => app_path(vendor, app),
        };
        r.app.push(Glob::new(&pattern).unwrap());
    }
    if g.chance(10) {
        r.original_app.push(Glob::new(&format!(r"*\vendor{}\*", g.below(300))).unwrap());
    }
    if g.chance(5) {
        r.package.push(SidBuf::parse(PACKAGE).unwrap());
    }
    r
}

fn rule_set(n: usize) -> RuleSet {
    let mut g = Gen(0x5eed_0000 + n as u64);
    let mut rules = Vec::with_capacity(n);
    for (name, cidrs) in [
        ("loopback", &["127.0.0.0/8", "::1/128"][..]),
        ("link-local", &["169.254.0.0/16", "fe80::/10"][..]),
        ("multicast", &["224.0.0.0/4", "ff00::/8"][..]),
    ] {
        let mut r = Rule::any(name, Action::Bypass);
        r.remote = cidrs
            .iter()
            .map(|c| {
                let (a, p) = c.split_once('/').unwrap();
                Cidr { addr: a.parse().unwrap(), prefix: p.parse().unwrap() }
            })
            .collect();
        rules.push(r);
    }
    while rules.len() < n {
        let i = rules.len();
        rules.push(random_rule(&mut g, i));
    }
    RuleSet { rules, ..RuleSet::default() }
}

struct FlowSpec {
    protocol: Protocol,
    remote: SocketAddr,
    app: WideString,
    package: Option<SidBuf>,
}

/// An address inside `c`.
fn inside(g: &mut Gen, c: &Cidr) -> IpAddr {
    match c.addr {
        IpAddr::V4(a) => {
            let host = u32::MAX.checked_shr(u32::from(c.prefix)).unwrap_or(0);
            IpAddr::V4(Ipv4Addr::from((u32::from(a) & !host) | (g.next() as u32 & host)))
        }
        IpAddr::V6(a) => {
            let host = u128::MAX.checked_shr(u32::from(c.prefix)).unwrap_or(0);
            IpAddr::V6(Ipv6Addr::from((u128::from(a) & !host) | (u128::from(g.next()) & host)))
        }
    }
}

fn flows(rs: &RuleSet) -> Vec<FlowSpec> {
    let mut g = Gen(0xf10e_5eed);
    (0..FLOWS)
        .map(|_| match g.below(4) {
            0 | 1 => {
                // From a random rule's own values: hits at every depth.
                let r = &rs.rules[g.below(rs.rules.len() as u64) as usize];
                let remote_ip = match r.remote.len() {
                    0 => IpAddr::V4(Ipv4Addr::from(g.next() as u32)),
                    n => {
                        let c = r.remote[g.below(n as u64) as usize];
                        inside(&mut g, &c)
                    }
                };
                let port = match r.remote_ports.len() {
                    0 => g.below(65536) as u16,
                    n => {
                        let p = r.remote_ports[g.below(n as u64) as usize];
                        p.lo + g.below(u64::from(p.hi - p.lo) + 1) as u16
                    }
                };
                FlowSpec {
                    protocol: r.protocol.unwrap_or(if g.chance(50) { Protocol::TCP } else { Protocol::UDP }),
                    remote: SocketAddr::new(remote_ip, port),
                    app: WideString::new(&app_path(g.below(300), g.below(20))),
                    package: r.package.first().copied(),
                }
            }
            2 => FlowSpec {
                protocol: Protocol::TCP,
                remote: SocketAddr::new(IpAddr::V4(Ipv4Addr::from(g.next() as u32)), [80, 443][g.below(2) as usize]),
                app: WideString::new(r"\device\harddiskvolume3\program files\browser\browser.exe"),
                package: None,
            },
            _ => FlowSpec {
                protocol: if g.chance(50) { Protocol::TCP } else { Protocol::UDP },
                remote: SocketAddr::new(IpAddr::V4(Ipv4Addr::from(g.next() as u32)), g.below(65536) as u16),
                app: WideString::new(&app_path(g.below(400), g.below(30))),
                package: None,
            },
        })
        .collect()
}

fn flow(spec: &FlowSpec) -> Flow<'_> {
    Flow {
        protocol: spec.protocol,
        local: "10.0.0.5:50000".parse().unwrap(),
        remote: spec.remote,
        endpoint: 1,
        pid: 4242,
        app: spec.app.app_id(),
        original_app: spec.app.app_id(),
        package: spec.package.as_ref().map(SidBuf::as_sid),
    }
}

// ---------------------------------------------------------------- realistic

/// App ids a machine's traffic mostly comes from.
const APPS: [&str; 12] = [
    r"\device\harddiskvolume3\program files\google\chrome\application\chrome.exe",
    r"\device\harddiskvolume3\program files (x86)\microsoft\edge\application\msedge.exe",
    r"\device\harddiskvolume3\program files\mozilla firefox\firefox.exe",
    r"\device\harddiskvolume3\windows\system32\svchost.exe",
    r"\device\harddiskvolume3\program files\microsoft office\root\office16\outlook.exe",
    r"\device\harddiskvolume3\users\ann\appdata\local\microsoft\teams\current\teams.exe",
    r"\device\harddiskvolume3\program files\contoso vpn\vpnclient.exe",
    r"\device\harddiskvolume3\program files\fabrikam\agent\agent.exe",
    r"\device\harddiskvolume3\windows\system32\wbem\wmiprvse.exe",
    r"\device\harddiskvolume3\program files\git\mingw64\bin\git-remote-https.exe",
    r"\device\harddiskvolume3\program files\windowsapps\microsoft.windowsstore_22301.1401.6.0_x64__8wekyb3d8bbwe\winstore.app.exe",
    r"\device\harddiskvolume3\windows\system32\backgroundtaskhost.exe",
];

fn cidr(s: &str) -> Cidr {
    let (a, p) = s.split_once('/').unwrap();
    Cidr { addr: a.parse().unwrap(), prefix: p.parse().unwrap() }
}

/// A public IPv4 address (not 0/8, 10/8, 127/8, 169.254/16, 172.16/12, 192.168/16, 224/3).
fn public_v4(g: &mut Gen) -> Ipv4Addr {
    loop {
        let a = Ipv4Addr::from(g.next() as u32);
        let o = a.octets();
        let private = matches!(o[0], 0 | 10 | 127 | 224..)
            || (o[0] == 169 && o[1] == 254)
            || (o[0] == 172 && (16..32).contains(&o[1]))
            || (o[0] == 192 && o[1] == 168);
        if !private {
            return a;
        }
    }
}

fn realistic_rule(g: &mut Gen, i: usize) -> Rule {
    let mut r = Rule::any(&format!("rule {i}"), [Action::Bypass, Action::Block, Action::Proxy][g.below(3) as usize]);
    match g.below(100) {
        // CIDR lists: bypass and block lists, sometimes for one protocol/port.
        0..88 => {
            let count = if g.chance(20) { 20 } else { 4 };
            for _ in 0..1 + g.below(count) {
                r.remote.push(match g.below(100) {
                    0..40 => Cidr { addr: IpAddr::V4(public_v4(g)), prefix: 32 },
                    40..70 => Cidr { addr: IpAddr::V4(public_v4(g)), prefix: 24 },
                    70..90 => Cidr { addr: IpAddr::V4(public_v4(g)), prefix: 16 + g.below(8) as u8 },
                    90..93 => Cidr { addr: IpAddr::V4(public_v4(g)), prefix: 8 + g.below(8) as u8 },
                    _ => {
                        // Provider prefixes of a few big networks, sites and subnets inside.
                        let provider = [0x2001_4860u128, 0x2a00_1450, 0x2606_4700, 0x2620_01ec][g.below(4) as usize];
                        let addr = (provider << 96) | (u128::from(g.next()) << 32);
                        Cidr { addr: IpAddr::V6(Ipv6Addr::from(addr)), prefix: [48, 56, 64][g.below(3) as usize] }
                    }
                });
            }
            if g.chance(30) {
                r.protocol = Some(Protocol::TCP);
                r.remote_ports = vec![PortRange { lo: 443, hi: 443 }, PortRange { lo: 80, hi: 80 }]
                    [..1 + g.below(2) as usize]
                    .to_vec();
            }
        }
        // Port and protocol rules.
        88..98 => {
            r.protocol = Some(if g.chance(50) { Protocol::UDP } else { Protocol::TCP });
            let ports = [22u16, 53, 123, 135, 139, 445, 1900, 3389, 5353, 5355, 8080, 8443];
            for _ in 0..1 + g.below(3) {
                let p = if g.chance(80) {
                    ports[g.below(ports.len() as u64) as usize]
                } else {
                    1024 + g.below(60000) as u16
                };
                r.remote_ports.push(if g.chance(85) {
                    PortRange { lo: p, hi: p }
                } else {
                    PortRange { lo: p, hi: p.saturating_add(99) }
                });
            }
        }
        // App rules.
        _ => match g.below(4) {
            0 => {
                r.action = Action::Proxy;
                r.protocol = Some(Protocol::TCP);
                r.remote_ports = vec![PortRange { lo: 80, hi: 80 }, PortRange { lo: 443, hi: 443 }];
                for b in [r"*\chrome.exe", r"*\msedge.exe", r"*\firefox.exe"] {
                    r.app.push(Glob::new(b).unwrap());
                }
            }
            1 => {
                let vendor = ["contoso vpn", "fabrikam", "northwind", "tailspin"][g.below(4) as usize];
                r.app.push(Glob::new(&format!(r"\device\harddiskvolume3\program files\{vendor}\*")).unwrap());
            }
            2 => {
                r.app.push(Glob::new(APPS[g.below(APPS.len() as u64) as usize]).unwrap());
                r.remote.push(Cidr { addr: IpAddr::V4(public_v4(g)), prefix: 16 });
            }
            _ => r.package.push(SidBuf::parse(PACKAGE).unwrap()),
        },
    }
    r
}

fn realistic_rule_set(n: usize) -> RuleSet {
    let mut g = Gen(0x7ea1_0000 + n as u64);
    let mut rules = Vec::with_capacity(n);
    for (name, cidrs) in [
        ("loopback", &["127.0.0.0/8", "::1/128"][..]),
        ("link-local", &["169.254.0.0/16", "fe80::/10"][..]),
        ("multicast", &["224.0.0.0/4", "ff00::/8"][..]),
    ] {
        let mut r = Rule::any(name, Action::Bypass);
        r.remote = cidrs.iter().map(|c| cidr(c)).collect();
        rules.push(r);
    }
    while rules.len() < n {
        let i = rules.len();
        rules.push(realistic_rule(&mut g, i));
    }
    RuleSet { rules, ..RuleSet::default() }
}

fn realistic_flows(rs: &RuleSet) -> Vec<FlowSpec> {
    let mut g = Gen(0xf10e_7ea1);
    let listed: Vec<Cidr> = rs.rules.iter().skip(3).flat_map(|r| r.remote.iter().copied()).collect();
    (0..FLOWS)
        .map(|_| {
            let app = |i: usize| WideString::new(APPS[i % APPS.len()]);
            match g.below(100) {
                // Web traffic from browsers and a few other apps.
                0..55 => {
                    let ip = if g.chance(15) {
                        IpAddr::V6(Ipv6Addr::from((0x2606_4700u128 << 96) | u128::from(g.next())))
                    } else {
                        IpAddr::V4(public_v4(&mut g))
                    };
                    let who = [0, 0, 0, 1, 1, 2, 4, 5, 9, 10][g.below(10) as usize];
                    FlowSpec {
                        protocol: Protocol::TCP,
                        remote: SocketAddr::new(ip, if g.chance(90) { 443 } else { 80 }),
                        app: app(who),
                        package: (who == 10).then(|| SidBuf::parse(PACKAGE).unwrap()),
                    }
                }
                // DNS.
                55..65 => FlowSpec {
                    protocol: Protocol::UDP,
                    remote: SocketAddr::new(IpAddr::V4(Ipv4Addr::new(10, 0, 0, 53)), 53),
                    app: app(3),
                    package: None,
                },
                // LAN.
                65..75 => FlowSpec {
                    protocol: Protocol::TCP,
                    remote: SocketAddr::new(
                        IpAddr::V4(Ipv4Addr::new(10, 1, g.below(256) as u8, g.below(256) as u8)),
                        [445, 3389, 22, 8080][g.below(4) as usize],
                    ),
                    app: app([3, 8, 9][g.below(3) as usize]),
                    package: None,
                },
                // Destinations some rule lists.
                75..95 => {
                    let c = listed[g.below(listed.len().max(1) as u64) as usize % listed.len().max(1)];
                    FlowSpec {
                        protocol: if g.chance(80) { Protocol::TCP } else { Protocol::UDP },
                        remote: SocketAddr::new(inside(&mut g, &c), [443, 443, 80, 53][g.below(4) as usize]),
                        app: app(g.below(APPS.len() as u64) as usize),
                        package: None,
                    }
                }
                // Local traffic.
                _ => FlowSpec {
                    protocol: if g.chance(50) { Protocol::TCP } else { Protocol::UDP },
                    remote: SocketAddr::new(
                        [
                            IpAddr::V4(Ipv4Addr::LOCALHOST),
                            IpAddr::V4(Ipv4Addr::new(224, 0, 0, 251)),
                            IpAddr::V6(Ipv6Addr::LOCALHOST),
                        ][g.below(3) as usize],
                        g.below(65536) as u16,
                    ),
                    app: app(g.below(APPS.len() as u64) as usize),
                    package: None,
                },
            }
        })
        .collect()
}

// ---------------------------------------------------------------- running

/// Median nanoseconds per lookup over `batches` batches of all flows.
fn median_ns(policy: &dyn Policy, flows: &[Flow<'_>], batches: usize) -> f64 {
    if flows.is_empty() {
        return f64::NAN;
    }
    let mut samples: Vec<Duration> = (0..batches)
        .map(|_| {
            let start = Instant::now();
            for f in flows {
                black_box(policy.first_match(black_box(f)));
            }
            start.elapsed()
        })
        .collect();
    samples.sort();
    samples[samples.len() / 2].as_nanos() as f64 / flows.len() as f64
}

/// One workload at one size, prepared.
struct Case {
    workload: &'static str,
    n: usize,
    rs: RuleSet,
    compiled: CompiledRules,
    specs: Vec<FlowSpec>,
    compile: Duration,
}

fn case(workload: &'static str, n: usize) -> Case {
    let (rs, gen_flows): (RuleSet, fn(&RuleSet) -> Vec<FlowSpec>) = match workload {
        "realistic" => (realistic_rule_set(n), realistic_flows),
        _ => (rule_set(n), flows),
    };
    let start = Instant::now();
    let compiled = CompiledRules::compile(&rs).unwrap();
    let compile = start.elapsed();
    let specs = gen_flows(&rs);
    // The bench is only meaningful if both agree.
    for s in &specs {
        assert_eq!(compiled.first_match(&flow(s)), rs.first_match(&flow(s)));
    }
    Case { workload, n, rs, compiled, specs, compile }
}

fn main() {
    if let Ok(which) = std::env::var("MATCH_PROFILE") {
        // For perf and callgrind: only the compiled matcher, one set, a fixed
        // number of passes over its flows.
        let (workload, n) = match which.split_once(':') {
            Some((w, n)) => (if w == "realistic" { "realistic" } else { "generated" }, n),
            None => ("generated", which.as_str()),
        };
        let c = case(workload, n.parse().expect("MATCH_PROFILE=[realistic:]<rules>"));
        let flows: Vec<Flow<'_>> = c.specs.iter().map(flow).collect();
        let passes: usize = std::env::var("MATCH_PASSES").map_or(1000, |p| p.parse().unwrap());
        for _ in 0..passes {
            for f in &flows {
                black_box(c.compiled.first_match(black_box(f)));
            }
        }
        return;
    }
    let full = std::env::args().any(|a| a == "--bench");
    let cases: Vec<Case> =
        ["generated", "realistic"].iter().flat_map(|&w| SIZES.iter().map(move |&n| case(w, n))).collect();

    let mut c = Criterion::default()
        .sample_size(30)
        .warm_up_time(Duration::from_millis(300))
        .measurement_time(Duration::from_secs(2))
        .configure_from_args();
    for workload in ["generated", "realistic"] {
        let name = if workload == "generated" { "first_match".to_string() } else { format!("first_match_{workload}") };
        let mut group = c.benchmark_group(name);
        for case in cases.iter().filter(|c| c.workload == workload) {
            let flows: Vec<Flow<'_>> = case.specs.iter().map(flow).collect();
            for (name, policy) in [("naive", &case.rs as &dyn Policy), ("compiled", &case.compiled as &dyn Policy)] {
                group.bench_with_input(BenchmarkId::new(name, case.n), &flows, |b, flows| {
                    let mut i = 0usize;
                    b.iter(|| {
                        i = (i + 1) % FLOWS;
                        black_box(policy.first_match(black_box(&flows[i])))
                    });
                });
            }
        }
        group.finish();
    }
    c.final_summary();

    let batches = if full { 51 } else { 1 };
    println!();
    println!(
        "first_match, median ns per lookup over {batches} batches of {FLOWS} flows (hit/miss: compiled, over those flows only):"
    );
    println!(
        "{:>9} {:>7} {:>11} {:>11} {:>8} {:>6} {:>8} {:>8} {:>10} {:>10}",
        "workload",
        "rules",
        "naive ns",
        "compiled ns",
        "ratio",
        "hits",
        "hit ns",
        "miss ns",
        "compile ms",
        "tables KiB"
    );
    for case in &cases {
        let flows: Vec<Flow<'_>> = case.specs.iter().map(flow).collect();
        let naive = median_ns(&case.rs, &flows, batches);
        let fast = median_ns(&case.compiled, &flows, batches);
        let (hit, miss): (Vec<Flow<'_>>, Vec<Flow<'_>>) = flows.iter().partition(|f| case.rs.first_match(f).is_some());
        let hit_ns = median_ns(&case.compiled, &hit, batches);
        let miss_ns = median_ns(&case.compiled, &miss, batches);
        println!(
            "{:>9} {:>7} {naive:>11.1} {fast:>11.1} {:>7.1}x {:>5}% {hit_ns:>8.1} {miss_ns:>8.1} {:>10.2} {:>10}",
            case.workload,
            case.n,
            naive / fast,
            hit.len() * 100 / flows.len(),
            case.compile.as_secs_f64() * 1e3,
            case.compiled.memory_bytes() / 1024
        );
    }
}
