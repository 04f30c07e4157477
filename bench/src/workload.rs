//! The generated workload every column runs: a rule set (generated, or the
//! user's), a fixed list of flow shapes, and the indications built from them.
//!
//! Everything comes from one fixed-seed generator, so two runs (and the three
//! columns of one run) see exactly the same rules and indications.
//!
//! Rules: a few bypass rules for traffic that never leaves the machine, then
//! a mix of proxy, block and bypass rules over TCP/UDP/any, IPv4 and IPv6
//! CIDRs of many lengths, single ports and ranges, app globs by suffix, by
//! folder and exact paths, some original-app globs and package SIDs. Every
//! generated rule constrains at least two of address, port and app, so early
//! rules do not swallow everything.
//!
//! Flows: half are drawn from a random rule's own values (so they hit rules at
//! every depth, or an earlier rule first), a quarter are browser web flows to
//! random hosts, the rest random ports and apps, DNS, and a little loopback.
//! On top of the flow, the indication's redirect state mixes the rows the
//! decision table has to tell apart: other vendors' redirects (C5, C9..C11),
//! no write right (C4), our own and a peer's proxy outbound (C2, C7, C8),
//! ICMP (C1).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use arbiter::decide::{self, ConnectFacts, EndpointEntry, Env, Outcome, ProxyRegistration, Verdict};
use arbiter::flow::{
    AuthConnectInput, ConnectRedirectInput, Flow, PreviousChain, PreviousEntry, Protocol, RedirectState, SidBuf,
};
use arbiter::policy::{Action, Cidr, Glob, LoopPolicy, PermitOrBlock, Policy, PortRange, Rule, RuleHit, RuleSet};
use arbiter::reason::Reason;
use arbiter::wide::WideString;

/// Our callout filter id in the workload.
pub const OWN_FILTER: u64 = 100;
/// Our proxy's PID.
pub const OWN_PROXY_PID: u64 = 5151;
/// Another vendor's callout filter id.
pub const PEER_FILTER: u64 = 200;
/// Another vendor's proxy PID (learned through A6, then caught by C8).
pub const PEER_PROXY_PID: u64 = 6100;
/// How many distinct flow shapes the workload cycles through.
pub const SHAPES: usize = 4096;

const PACKAGE_SID: &str = "S-1-15-2-2097152000-1152921504-606846976-4294967295-1073741823-268435455-3489660928";
const COMMON_PORTS: [u16; 12] = [22, 53, 80, 123, 443, 853, 993, 3389, 5223, 8080, 8443, 9000];
const BROWSER: &str = r"\device\harddiskvolume3\program files\browser\browser.exe";
const PEER_PROXY_APP: &str = r"\device\harddiskvolume3\program files\vendorb\proxy.exe";
const OWN_PROXY_APP: &str = r"\device\harddiskvolume3\program files\arbiter\proxy.exe";

/// A small deterministic generator (xorshift64*): no dependency, same
/// sequence on every platform.
#[derive(Clone, Debug)]
pub struct Gen(u64);

impl Gen {
    /// A generator from a non-zero seed (zero is replaced).
    pub const fn new(seed: u64) -> Self {
        Self(if seed == 0 { 0x9e37_79b9_7f4a_7c15 } else { seed })
    }

    /// The next 64 random bits.
    pub const fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    /// Uniform in `0..n` (`n` > 0; the tiny modulo bias does not matter here).
    pub const fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n
    }

    /// True with the given percentage.
    pub const fn chance(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }

    fn pick<T: Copy>(&mut self, items: &[T]) -> T {
        items[self.below(items.len() as u64) as usize]
    }

    fn port(&mut self) -> u16 {
        (self.next_u64() >> 48) as u16
    }

    fn v4(&mut self) -> Ipv4Addr {
        Ipv4Addr::from((self.next_u64() >> 32) as u32)
    }
}

fn app_path(vendor: u64, app: u64) -> String {
    format!(r"\device\harddiskvolume3\program files\vendor{vendor}\app{app}.exe")
}

fn cidr(text: &str) -> Cidr {
    let (addr, prefix) = text.split_once('/').unwrap_or((text, "32"));
    Cidr { addr: addr.parse().unwrap_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED)), prefix: prefix.parse().unwrap_or(32) }
}

fn glob(pattern: &str) -> Glob {
    // Only fails when memory is short, which a host benchmark does not survive anyway.
    Glob::new(pattern).unwrap_or_else(|_| std::process::abort())
}

fn generated_rule(g: &mut Gen, index: usize) -> Rule {
    let action = match g.below(10) {
        0..4 => Action::Proxy,
        4..6 => Action::Block,
        _ => Action::Bypass,
    };
    let mut rule = Rule::any(&format!("generated {index}"), action);
    rule.protocol = match g.below(10) {
        0..5 => Some(Protocol::TCP),
        5..7 => Some(Protocol::UDP),
        _ => None,
    };
    let (remote, ports, app) = loop {
        let f = (g.chance(65), g.chance(60), g.chance(55));
        if u8::from(f.0) + u8::from(f.1) + u8::from(f.2) >= 2 {
            break f;
        }
    };
    if remote {
        for _ in 0..=g.below(3) {
            rule.remote.push(if g.chance(85) {
                Cidr { addr: IpAddr::V4(g.v4()), prefix: g.pick(&[8, 12, 16, 20, 22, 24, 24, 26, 28, 32]) }
            } else {
                let addr = (0x2001_0db8_u128 << 96) | (u128::from(g.next_u64()) << 32);
                Cidr { addr: IpAddr::V6(Ipv6Addr::from(addr)), prefix: g.pick(&[32, 40, 48, 56, 64, 128]) }
            });
        }
    }
    if ports {
        for _ in 0..=g.below(3) {
            rule.remote_ports.push(if g.chance(70) {
                let p = if g.chance(60) { g.pick(&COMMON_PORTS) } else { g.port() };
                PortRange { lo: p, hi: p }
            } else {
                let lo = g.below(60_000) as u16;
                PortRange { lo, hi: lo.saturating_add(1 + g.below(2_000) as u16) }
            });
        }
    }
    if app {
        let (vendor, app) = (g.below(400), g.below(24));
        let pattern = match g.below(20) {
            0..11 => format!(r"*\vendor{vendor}\app{app}.exe"),
            11..16 => format!(r"\device\harddiskvolume3\program files\vendor{vendor}\*"),
            _ => app_path(vendor, app),
        };
        rule.app.push(glob(&pattern));
    }
    if g.chance(8) {
        rule.original_app.push(glob(&format!(r"*\vendor{}\*", g.below(400))));
    }
    if g.chance(3) {
        rule.package.extend(SidBuf::parse(PACKAGE_SID));
    }
    rule
}

/// A deterministic rule set of `n` rules (at least the four fixed ones).
pub fn rule_set(n: usize) -> RuleSet {
    let mut g = Gen::new(0x00a4_b17e_0000 ^ n as u64);
    let mut rules = Vec::with_capacity(n.max(4));
    for (name, nets) in [
        ("loopback", &["127.0.0.0/8", "::1/128"][..]),
        ("link-local", &["169.254.0.0/16", "fe80::/10"][..]),
        ("multicast", &["224.0.0.0/4", "255.255.255.255/32", "ff00::/8"][..]),
    ] {
        let mut r = Rule::any(name, Action::Bypass);
        r.remote = nets.iter().map(|c| cidr(c)).collect();
        rules.push(r);
    }
    // The default rules file's web rule goes last: it catches what the
    // generated rules do not, as a real policy's catch-all would.
    while rules.len() + 1 < n {
        let i = rules.len();
        rules.push(generated_rule(&mut g, i));
    }
    let mut web = Rule::any("web through the proxy", Action::Proxy);
    web.protocol = Some(Protocol::TCP);
    web.remote_ports = vec![PortRange { lo: 80, hi: 80 }, PortRange { lo: 443, hi: 443 }];
    rules.push(web);
    rules.truncate(n.max(1));
    RuleSet {
        proxy: arbiter::policy::ProxyListeners { v4: "127.0.0.1:34010".parse().ok(), v6: "[::1]:34010".parse().ok() },
        loop_policy: LoopPolicy::default(),
        trust: vec![glob(r"*\vendor7\*"), glob(r"*\vendor77\*")],
        known_proxies: vec![glob(r"*\vendorz\relay.exe")],
        rules,
        boot: arbiter::boot::BootConfig::default(),
        id: 0x00be_4c00 ^ n as u32,
    }
}

/// An address inside `c`.
fn inside(g: &mut Gen, c: &Cidr) -> IpAddr {
    match c.addr {
        IpAddr::V4(a) => {
            let host = u32::MAX.checked_shr(u32::from(c.prefix)).unwrap_or(0);
            IpAddr::V4(Ipv4Addr::from((u32::from(a) & !host) | ((g.next_u64() >> 32) as u32 & host)))
        }
        IpAddr::V6(a) => {
            let host = u128::MAX.checked_shr(u32::from(c.prefix)).unwrap_or(0);
            IpAddr::V6(Ipv6Addr::from((u128::from(a) & !host) | (u128::from(g.next_u64()) & host)))
        }
    }
}

/// Which redirect situation an indication is in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Situation {
    /// A fresh connection (most of them).
    Fresh,
    /// Another vendor redirected it to its proxy earlier (C9..C11 at
    /// connect-redirect, A6 at auth-connect).
    ByOther,
    /// Another vendor is redirecting it to its local proxy in this
    /// classification (C5).
    OthersLocalHandle,
    /// Somebody above us hard-permitted (C4).
    NoWriteRight,
    /// Our proxy's outbound carrying our records (C2).
    OwnProxyWithRecords,
    /// Our proxy's outbound without records (C7).
    OwnProxyBare,
    /// The peer's proxy outbound (C8 once its PID is learned).
    PeerProxy,
    /// ICMP (C1).
    Icmp,
}

/// One flow shape: everything an indication needs except the endpoint.
#[derive(Clone, Debug)]
pub struct Shape {
    /// IP protocol.
    pub protocol: Protocol,
    /// The application's local address.
    pub local: SocketAddr,
    /// Where the application connects.
    pub remote: SocketAddr,
    /// Process id.
    pub pid: u64,
    /// App id, owned.
    pub app: WideString,
    /// AppContainer package, if any.
    pub package: Option<SidBuf>,
    /// The redirect situation.
    pub situation: Situation,
}

fn shapes(rs: &RuleSet, count: usize) -> Vec<Shape> {
    let mut g = Gen::new(0x5a4e_f10e);
    let local_v4: SocketAddr = "10.0.0.5:50000".parse().unwrap_or(SocketAddr::from(([10, 0, 0, 5], 50000)));
    let local_v6: SocketAddr =
        "[2001:db8:1::5]:50000".parse().unwrap_or(SocketAddr::from((Ipv6Addr::LOCALHOST, 50000)));
    (0..count)
        .map(|_| {
            let (protocol, remote, app, package) = match g.below(100) {
                0..50 if !rs.rules.is_empty() => {
                    let r = &rs.rules[g.below(rs.rules.len() as u64) as usize];
                    let ip = if r.remote.is_empty() {
                        IpAddr::V4(g.v4())
                    } else {
                        let c = g.pick(&r.remote);
                        inside(&mut g, &c)
                    };
                    let port = match r.remote_ports.as_slice() {
                        [] => g.port(),
                        ports => {
                            let p = g.pick(ports);
                            p.lo.saturating_add(g.below(u64::from(p.hi - p.lo) + 1) as u16)
                        }
                    };
                    let protocol = r.protocol.unwrap_or(if g.chance(70) { Protocol::TCP } else { Protocol::UDP });
                    (
                        protocol,
                        SocketAddr::new(ip, port),
                        app_path(g.below(400), g.below(24)),
                        r.package.first().copied(),
                    )
                }
                0..75 => {
                    let ip = if g.chance(80) {
                        IpAddr::V4(g.v4())
                    } else {
                        IpAddr::V6(Ipv6Addr::from(u128::from(g.next_u64()) << 64 | 0x2001_0db8 << 96))
                    };
                    (Protocol::TCP, SocketAddr::new(ip, g.pick(&[80, 443, 443, 443])), BROWSER.to_owned(), None)
                }
                75..85 => (Protocol::UDP, SocketAddr::from((g.v4(), 53)), app_path(g.below(400), g.below(24)), None),
                85..88 => (
                    Protocol::TCP,
                    SocketAddr::from((Ipv4Addr::LOCALHOST, g.port())),
                    app_path(g.below(400), g.below(24)),
                    None,
                ),
                _ => {
                    let protocol = if g.chance(60) { Protocol::TCP } else { Protocol::UDP };
                    (protocol, SocketAddr::from((g.v4(), g.port())), app_path(g.below(500), g.below(30)), None)
                }
            };
            let situation = match g.below(1000) {
                0..40 => Situation::ByOther,
                40..60 => Situation::OthersLocalHandle,
                60..80 => Situation::NoWriteRight,
                80..90 => Situation::OwnProxyWithRecords,
                90..100 => Situation::OwnProxyBare,
                100..120 => Situation::PeerProxy,
                120..125 => Situation::Icmp,
                _ => Situation::Fresh,
            };
            let (pid, app) = match situation {
                Situation::OwnProxyWithRecords | Situation::OwnProxyBare => (OWN_PROXY_PID, OWN_PROXY_APP.to_owned()),
                Situation::PeerProxy => (PEER_PROXY_PID, PEER_PROXY_APP.to_owned()),
                _ => (1000 + g.below(3000), app),
            };
            let protocol = if situation == Situation::Icmp { Protocol::ICMP } else { protocol };
            let local = if remote.is_ipv4() { local_v4 } else { local_v6 };
            Shape { protocol, local, remote, pid, app: WideString::new(&app), package, situation }
        })
        .collect()
}

/// Facts for the reference outcome: the rules only, empty tables.
struct RulesOnly<'a, P> {
    policy: &'a P,
    flow: &'a Flow<'a>,
}

impl<P: Policy> ConnectFacts for RulesOnly<'_, P> {
    fn rule(&mut self) -> Option<RuleHit> {
        self.policy.first_match(self.flow)
    }
    fn trusted(&mut self) -> bool {
        self.policy.is_trusted(&self.flow.app)
    }
    fn known_local_proxy(&mut self) -> bool {
        self.policy.is_known_proxy(&self.flow.app)
    }
    fn hops(&mut self) -> u16 {
        0
    }
}

/// The generated workload: shapes, and for each the connect-redirect outcome
/// with empty tables (which decides what its auth-connect looks like).
#[derive(Debug)]
pub struct Workload {
    /// The rules every column decides with.
    pub rules: RuleSet,
    /// The flow shapes, cycled through by endpoint number.
    pub shapes: Vec<Shape>,
    /// Per shape: the connect-redirect outcome with empty tables.
    pub expected: Vec<Outcome>,
    /// Shapes whose connect-redirect leaves an endpoint entry (used to fill tables).
    pub fillers: Vec<usize>,
    /// Our filter and proxy.
    pub env: Env,
}

impl Workload {
    /// Builds the workload for a rule set.
    pub fn new(rules: RuleSet) -> Self {
        let shapes = shapes(&rules, SHAPES);
        let env = env(&rules);
        let loops = rules.loop_policy;
        let expected: Vec<Outcome> = shapes
            .iter()
            .enumerate()
            .map(|(i, s)| {
                let input = connect_input(s, i as u64);
                let mut facts = RulesOnly { policy: &rules, flow: &input.flow };
                decide::connect_redirect(&input, &env, &loops, &mut facts)
            })
            .collect();
        let fillers = expected.iter().enumerate().filter(|(_, o)| leaves_entry(o)).map(|(i, _)| i).collect();
        Self { rules, shapes, expected, fillers, env }
    }

    /// The shape endpoint `endpoint` uses.
    pub fn shape(&self, endpoint: u64) -> usize {
        (endpoint % self.shapes.len().max(1) as u64) as usize
    }

    /// The connect-redirect indication for `endpoint`.
    pub fn connect(&self, endpoint: u64) -> ConnectRedirectInput<'_> {
        connect_input(&self.shapes[self.shape(endpoint)], endpoint)
    }

    /// The auth-connect indication that follows `endpoint`'s connect-redirect.
    pub fn auth(&self, endpoint: u64) -> AuthConnectInput<'_> {
        let i = self.shape(endpoint);
        let s = &self.shapes[i];
        let flow = flow(s, endpoint);
        let peer_listener = if s.remote.is_ipv4() {
            SocketAddr::from((Ipv4Addr::LOCALHOST, 9100))
        } else {
            SocketAddr::from((Ipv6Addr::LOCALHOST, 9100))
        };
        match (&self.expected[i].redirect, s.situation) {
            (Some(r), _) => AuthConnectInput {
                flow: Flow { remote: r.remote, ..flow },
                reauthorize: false,
                redirected: true,
                target_pid: Some(r.target_pid),
                original_destination: Some(s.remote),
            },
            // The peer's redirect took: its proxy is the target (A6).
            (None, Situation::ByOther | Situation::OthersLocalHandle) => AuthConnectInput {
                flow: Flow { remote: peer_listener, ..flow },
                reauthorize: false,
                redirected: true,
                target_pid: Some(PEER_PROXY_PID),
                original_destination: Some(s.remote),
            },
            (None, _) => AuthConnectInput {
                flow,
                reauthorize: false,
                redirected: false,
                target_pid: None,
                original_destination: None,
            },
        }
    }

    /// The endpoint entry a connect-redirect of `endpoint` leaves with
    /// empty tables, if any (what a filler inserts).
    pub fn entry(&self, endpoint: u64) -> Option<EndpointEntry> {
        let i = self.shape(endpoint);
        entry_for(&self.expected[i], self.shapes[i].remote)
    }

    /// How many shapes' outcomes (empty tables) are each verdict:
    /// continue, permit, block, proxy.
    pub fn verdict_mix(&self) -> [usize; 4] {
        let mut mix = [0; 4];
        for o in &self.expected {
            mix[o.verdict as usize] += 1;
        }
        mix
    }
}

/// Our filter and proxy, from the rules' listeners (or the defaults).
pub fn env(rules: &RuleSet) -> Env {
    let v4 = rules.proxy.v4.or("127.0.0.1:34010".parse().ok());
    let v6 = rules.proxy.v6.or("[::1]:34010".parse().ok());
    Env { own_filter: OWN_FILTER, proxy: Some(ProxyRegistration { pid: OWN_PROXY_PID, v4, v6 }) }
}

/// Does this connect-redirect outcome leave an endpoint entry? (Mirrors the
/// arbiter's effects: blocks, C3/C8 permits, and proxies.)
pub fn leaves_entry(o: &Outcome) -> bool {
    o.verdict == Verdict::Block
        || o.verdict == Verdict::Proxy
        || (o.verdict == Verdict::Permit && matches!(o.reason, Reason::RevisitPermitted | Reason::LoopSuspected))
}

/// The endpoint entry an outcome leaves, as the arbiter records it.
pub fn entry_for(o: &Outcome, remote: SocketAddr) -> Option<EndpointEntry> {
    match (o.verdict, o.redirect) {
        (Verdict::Block, _) => Some(EndpointEntry::Cached { verdict: PermitOrBlock::Block, reason: o.reason }),
        (Verdict::Permit, _) if leaves_entry(o) => {
            Some(EndpointEntry::Cached { verdict: PermitOrBlock::Permit, reason: o.reason })
        }
        (_, Some(r)) => Some(EndpointEntry::Proxied { target_pid: r.target_pid, destination: remote }),
        _ => None,
    }
}

fn flow(s: &Shape, endpoint: u64) -> Flow<'_> {
    Flow {
        protocol: s.protocol,
        local: s.local,
        remote: s.remote,
        endpoint,
        pid: s.pid,
        app: s.app.app_id(),
        original_app: s.app.app_id(),
        package: s.package.as_ref().map(SidBuf::as_sid),
    }
}

fn connect_input(s: &Shape, endpoint: u64) -> ConnectRedirectInput<'_> {
    let peer = |handle| PreviousEntry { filter: PEER_FILTER, local_redirect_handle: handle };
    let (state, write_right, previous) = match s.situation {
        Situation::Fresh | Situation::OwnProxyBare | Situation::PeerProxy | Situation::Icmp => {
            (RedirectState::NotRedirected, true, PreviousChain::new())
        }
        Situation::ByOther => (RedirectState::RedirectedByOther, true, PreviousChain::from_entries([peer(false)])),
        Situation::OthersLocalHandle => (RedirectState::NotRedirected, true, PreviousChain::from_entries([peer(true)])),
        Situation::NoWriteRight => (RedirectState::NotRedirected, false, PreviousChain::new()),
        Situation::OwnProxyWithRecords => (RedirectState::RedirectedBySelf, true, PreviousChain::new()),
    };
    ConnectRedirectInput { flow: flow(s, endpoint), state, write_right, reauthorize: false, previous }
}
