//! Builders shared by the core's integration tests.
#![allow(dead_code, unreachable_pub, reason = "each test binary uses a different subset")]

use std::net::SocketAddr;

use arbiter::Instant;
use arbiter::arbiter::{Arbiter, Capacities, Config};
use arbiter::flow::{
    AuthConnectInput, ConnectRedirectInput, Flow, PreviousChain, PreviousEntry, Protocol, RedirectState,
};
use arbiter::policy::{Action, Cidr, Glob, LoopPolicy, PermitOrBlock, PortRange, Rule, RuleSet};
use arbiter::wide::WideString;

pub const OWN_FILTER: u64 = 100;
pub const PROXY_PID: u64 = 5151;
pub const BROWSER: &str = r"\device\harddiskvolume3\apps\browser.exe";
pub const VENDOR_B: &str = r"\device\harddiskvolume3\vendorb\proxy.exe";
pub const VENDOR_C: &str = r"\device\harddiskvolume3\vendorc\relay.exe";

/// The rules of formats.md's example, as data: proxy tcp 80/443, trust vendor B.
pub fn web_rules() -> RuleSet {
    let mut web = Rule::any("web through the proxy", Action::Proxy);
    web.protocol = Some(Protocol::TCP);
    web.remote_ports = vec![PortRange { lo: 80, hi: 80 }, PortRange { lo: 443, hi: 443 }];
    let mut blocked = Rule::any("no telnet", Action::Block);
    blocked.remote_ports = vec![PortRange { lo: 23, hi: 23 }];
    let mut bypass = Rule::any("intranet", Action::Bypass);
    bypass.remote = vec![Cidr { addr: "10.0.0.0".parse().unwrap(), prefix: 8 }];
    let mut udp = Rule::any("quic", Action::Proxy);
    udp.protocol = Some(Protocol::UDP);
    udp.remote_ports = vec![PortRange { lo: 443, hi: 443 }];
    RuleSet {
        trust: vec![Glob::new(r"*\vendorb\proxy.exe").unwrap()],
        known_proxies: vec![Glob::new(r"*\vendorc\relay.exe").unwrap()],
        rules: vec![bypass, blocked, web, udp],
        loop_policy: LoopPolicy::default(),
        ..RuleSet::default()
    }
}

pub fn strict(mut r: RuleSet) -> RuleSet {
    r.loop_policy.revisit = PermitOrBlock::Block;
    r.loop_policy.on_loop = PermitOrBlock::Block;
    r
}

pub fn arbiter_with(rules: RuleSet) -> Arbiter<RuleSet> {
    let config = Config { own_filter: OWN_FILTER, ..Config::default() };
    let caps = Capacities { endpoints: 64, destinations: 64, known_proxies: 16 };
    let mut a = Arbiter::new(config, caps, rules).unwrap();
    a.set_proxy(PROXY_PID, Some("127.0.0.1:34010".parse().unwrap()), Some("[::1]:34010".parse().unwrap())).unwrap();
    a
}

pub const fn ms(v: u64) -> Instant {
    Instant::from_millis(v)
}

/// An owned description of a socket, from which inputs borrow.
#[derive(Clone, Debug)]
pub struct Sock {
    pub protocol: Protocol,
    pub local: SocketAddr,
    pub remote: SocketAddr,
    pub endpoint: u64,
    pub pid: u64,
    pub app: WideString,
    pub original_app: WideString,
}

impl Sock {
    pub fn tcp(endpoint: u64, remote: &str) -> Self {
        let remote: SocketAddr = remote.parse().unwrap();
        let local = if remote.is_ipv4() { "10.0.0.5:50000" } else { "[2001:db8::5]:50000" };
        Self {
            protocol: Protocol::TCP,
            local: local.parse().unwrap(),
            remote,
            endpoint,
            pid: 4242,
            app: WideString::new(BROWSER),
            original_app: WideString::new(BROWSER),
        }
    }

    pub fn udp(endpoint: u64, remote: &str) -> Self {
        Self { protocol: Protocol::UDP, ..Self::tcp(endpoint, remote) }
    }

    pub fn by_process(mut self, pid: u64, app: &str) -> Self {
        self.pid = pid;
        self.app = WideString::new(app);
        self.original_app = WideString::new(app);
        self
    }

    pub fn flow(&self) -> Flow<'_> {
        Flow {
            protocol: self.protocol,
            local: self.local,
            remote: self.remote,
            endpoint: self.endpoint,
            pid: self.pid,
            app: self.app.app_id(),
            original_app: self.original_app.app_id(),
            package: None,
        }
    }

    pub fn connect(&self, state: RedirectState) -> ConnectRedirectInput<'_> {
        ConnectRedirectInput {
            flow: self.flow(),
            state,
            write_right: true,
            reauthorize: false,
            previous: PreviousChain::new(),
        }
    }

    pub fn connect_with_chain(&self, state: RedirectState, chain: &[(u64, bool)]) -> ConnectRedirectInput<'_> {
        let previous = PreviousChain::from_entries(
            chain.iter().map(|&(filter, local_redirect_handle)| PreviousEntry { filter, local_redirect_handle }),
        );
        ConnectRedirectInput { previous, reauthorize: true, ..self.connect(state) }
    }

    pub fn auth(&self, redirected: bool, target_pid: Option<u64>, original: Option<&str>) -> AuthConnectInput<'_> {
        AuthConnectInput {
            flow: self.flow(),
            reauthorize: false,
            redirected,
            target_pid,
            original_destination: original.map(|o| o.parse().unwrap()),
        }
    }

    /// The auth-connect WFP gives after our proxy verdict took effect: the
    /// flow now points at our listener, flagged and with metadata.
    pub fn auth_after_proxy(&self) -> AuthConnectInput<'_> {
        let mut a = self.auth(true, Some(PROXY_PID), None);
        a.original_destination = Some(self.remote);
        a.flow.remote = "127.0.0.1:34010".parse().unwrap();
        a
    }
}
