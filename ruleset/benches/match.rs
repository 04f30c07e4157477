//! First-match cost, compiled matcher against the reference scan, at 10,
//! 1,000 and 10,000 rules, in one run.
//!
//! `cargo bench -p arbiter-ruleset --bench match` runs the criterion groups
//! (`first_match/{naive,compiled}/N`, one flow per iteration, cycling through
//! 1,024 prepared flows) and then prints a summary table: the median cost per
//! lookup over 51 batches of 1,024 lookups for each matcher, and the ratio.
//! Rule sets and flows come from a fixed-seed generator: a few bypass rules
//! for local traffic, then rules mixing TCP/UDP/any, IPv4 and IPv6 CIDRs of
//! many lengths, single ports and ranges, and app globs by suffix, by prefix
//! and exact paths. Flows are one half drawn from the rules' own values (so
//! they hit, at every depth), one quarter web flows, one quarter random.
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

/// Median nanoseconds per lookup over `batches` batches of all flows.
fn median_ns(policy: &dyn Policy, flows: &[Flow<'_>], batches: usize) -> f64 {
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

fn main() {
    if let Ok(n) = std::env::var("MATCH_PROFILE") {
        // For perf: only the compiled matcher, one size, 1,000 passes over
        // the flows (so `perf stat` counts a fixed amount of work).
        let rs = rule_set(n.parse().expect("MATCH_PROFILE=<rules>"));
        let compiled = CompiledRules::compile(&rs).unwrap();
        let specs = flows(&rs);
        let flows: Vec<Flow<'_>> = specs.iter().map(flow).collect();
        let passes: usize = std::env::var("MATCH_PASSES").map_or(1000, |p| p.parse().unwrap());
        for _ in 0..passes {
            for f in &flows {
                black_box(compiled.first_match(black_box(f)));
            }
        }
        return;
    }
    let full = std::env::args().any(|a| a == "--bench");
    let sets: Vec<(usize, RuleSet, CompiledRules, Vec<FlowSpec>, Duration)> = SIZES
        .iter()
        .map(|&n| {
            let rs = rule_set(n);
            let start = Instant::now();
            let compiled = CompiledRules::compile(&rs).unwrap();
            let took = start.elapsed();
            let specs = flows(&rs);
            // The bench is only meaningful if both agree.
            for s in &specs {
                assert_eq!(compiled.first_match(&flow(s)), rs.first_match(&flow(s)));
            }
            (n, rs, compiled, specs, took)
        })
        .collect();

    let mut c = Criterion::default()
        .sample_size(30)
        .warm_up_time(Duration::from_millis(300))
        .measurement_time(Duration::from_secs(2))
        .configure_from_args();
    let mut group = c.benchmark_group("first_match");
    for (n, rs, compiled, specs, _) in &sets {
        let flows: Vec<Flow<'_>> = specs.iter().map(flow).collect();
        for (name, policy) in [("naive", rs as &dyn Policy), ("compiled", compiled as &dyn Policy)] {
            group.bench_with_input(BenchmarkId::new(name, n), &flows, |b, flows| {
                let mut i = 0usize;
                b.iter(|| {
                    i = (i + 1) % FLOWS;
                    black_box(policy.first_match(black_box(&flows[i])))
                });
            });
        }
    }
    group.finish();
    c.final_summary();

    let batches = if full { 51 } else { 1 };
    println!();
    println!("first_match, median ns per lookup over {batches} batches of {FLOWS} flows:");
    println!(
        "{:>7} {:>12} {:>12} {:>8} {:>7} {:>11} {:>11}",
        "rules", "naive ns", "compiled ns", "ratio", "hits", "compile ms", "tables KiB"
    );
    for (n, rs, compiled, specs, took) in &sets {
        let flows: Vec<Flow<'_>> = specs.iter().map(flow).collect();
        let naive = median_ns(rs, &flows, batches);
        let fast = median_ns(compiled, &flows, batches);
        let hits = flows.iter().filter(|f| rs.first_match(f).is_some()).count();
        println!(
            "{n:>7} {naive:>12.1} {fast:>12.1} {:>7.1}x {:>6}% {:>11.2} {:>11}",
            naive / fast,
            hits * 100 / flows.len(),
            took.as_secs_f64() * 1e3,
            compiled.memory_bytes() / 1024
        );
    }
}
