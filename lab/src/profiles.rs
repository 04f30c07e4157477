//! Peer vendor profiles (lab.md, "Peer vendor profiles"): each a small state
//! machine over what WFP shows its callout, written as one `match` whose
//! arms say which documented (or observed) behaviour they model.

pub mod real;
mod split_tunnel;

use core::fmt;
use core::net::SocketAddr;

use arbiter::wide::WideString;
use arbiter::{Flow, Policy, Protocol, RedirectState, RuleSet};

use crate::engine::{
    AuthAction, AuthDecision, AuthView, Callout, ConnectAction, ConnectDecision, ConnectView, Identity, ProxyProcess,
    is_host_ip,
};

/// The peer behaviours the lab knows.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Profile {
    /// Follows Microsoft's documentation.
    Compliant,
    /// The WFP sample's proxy logic.
    Sampler,
    /// Like `compliant`, but its proxy never propagates redirect records.
    NoRecords,
    /// Windows 7 style: never queries the redirect state.
    Legacy,
    /// Hard-permits everything (clears the write right).
    WriteStripper,
    /// Redirects to a remote proxy address (VPN/ZTNA).
    RemoteProxy,
    /// Blocks at auth-connect every connection from a proxy it does not know.
    AuthBlocker,
    /// A split-tunnel VPN driver (Mullvad's): rebinds the application's
    /// sockets off the tunnel to the host's address.
    SplitTunnel,
    /// The same, with our proxy's process on its exclusion list too.
    SplitTunnelProxy,
    /// Microsoft's WFPSampler proxy callout, transcribed ([`real::WfpSampler`]).
    WfpSampler,
    /// eBPF for Windows' connect hooks ([`real::NetEbpfExt`]).
    NetEbpfExt,
    /// Mullvad's split-tunnel driver, connect and bind ([`real::Mullvad`]).
    Mullvad,
    /// Portmaster's kext: auth-connect verdicts, packet NAT ([`real::Portmaster`]).
    Portmaster,
    /// ProxyBridge's WFP driver ([`real::ProxyBridge`]).
    ProxyBridge,
}

impl Profile {
    /// Every profile, in report order.
    pub const ALL: [Self; 14] = [
        Self::Compliant,
        Self::Sampler,
        Self::NoRecords,
        Self::Legacy,
        Self::WriteStripper,
        Self::RemoteProxy,
        Self::AuthBlocker,
        Self::SplitTunnel,
        Self::SplitTunnelProxy,
        Self::WfpSampler,
        Self::NetEbpfExt,
        Self::Mullvad,
        Self::Portmaster,
        Self::ProxyBridge,
    ];

    /// The profiles transcribed from published drivers.
    pub const REAL: [Self; 5] =
        [Self::WfpSampler, Self::NetEbpfExt, Self::Mullvad, Self::Portmaster, Self::ProxyBridge];

    /// The name used on the command line and in reports.
    pub const fn name(self) -> &'static str {
        match self {
            Self::Compliant => "compliant",
            Self::Sampler => "sampler",
            Self::NoRecords => "no-records",
            Self::Legacy => "legacy",
            Self::WriteStripper => "write-stripper",
            Self::RemoteProxy => "remote-proxy",
            Self::AuthBlocker => "auth-blocker",
            Self::SplitTunnel => "split-tunnel",
            Self::SplitTunnelProxy => "split-tunnel-proxy",
            Self::WfpSampler => "wfpsampler",
            Self::NetEbpfExt => "netebpfext",
            Self::Mullvad => "mullvad",
            Self::Portmaster => "portmaster",
            Self::ProxyBridge => "proxybridge",
        }
    }

    /// Parses a name.
    pub fn from_name(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|p| p.name() == s)
    }

    /// The peer's identity on the lab machine (filter 200, handle 2, PID 6100).
    pub fn identity(self, weight: u32) -> Identity {
        let proxy = |app: &str, propagates_records: bool| {
            Some(ProxyProcess {
                pid: PEER_PROXY_PID,
                app: app.to_owned(),
                v4: "127.0.0.1:9100".parse().unwrap_or(FALLBACK_V4),
                v6: "[::1]:9100".parse().unwrap_or(FALLBACK_V6),
                propagates_records,
            })
        };
        let wildcard = |app: &str, propagates_records: bool, pid: u64| {
            Some(ProxyProcess {
                pid,
                app: app.to_owned(),
                v4: "0.0.0.0:9100".parse().unwrap_or(FALLBACK_V4),
                v6: "[::]:9100".parse().unwrap_or(FALLBACK_V6),
                propagates_records,
            })
        };
        let (proxy, tunnel) = match self {
            // Redirects to the connection's own local address when it has one: listens on the wildcard.
            Self::WfpSampler => (
                wildcard(
                    r"\device\harddiskvolume3\program files\wfpsampler\wfpsamplerproxyservice.exe",
                    true,
                    PEER_PROXY_PID,
                ),
                None,
            ),
            Self::ProxyBridge => (
                wildcard(r"\device\harddiskvolume3\program files\proxybridge\proxybridge.exe", false, PEER_PROXY_PID),
                None,
            ),
            Self::NetEbpfExt => {
                let mut p = proxy(r"\device\harddiskvolume3\program files\ebpf-proxy\proxy.exe", false);
                if let Some(p) = p.as_mut() {
                    p.pid = real::NETEBPFEXT_TARGET_PID;
                }
                (p, None)
            }
            Self::Mullvad | Self::Portmaster => (None, None),
            Self::Compliant => (proxy(r"\device\harddiskvolume3\program files\vendorb\proxy.exe", true), None),
            Self::Sampler => (proxy(r"\device\harddiskvolume3\program files\wfpsampler\proxy.exe", false), None),
            Self::NoRecords => (proxy(r"\device\harddiskvolume3\program files\vendorc\relay.exe", false), None),
            Self::Legacy => (proxy(r"\device\harddiskvolume3\program files\vendord\legacyproxy.exe", false), None),
            Self::WriteStripper | Self::AuthBlocker | Self::SplitTunnel | Self::SplitTunnelProxy => (None, None),
            Self::RemoteProxy => (
                None,
                Some((
                    "198.51.100.10:8080".parse().unwrap_or(FALLBACK_V4),
                    "[2001:db8:ffff::10]:8080".parse().unwrap_or(FALLBACK_V6),
                )),
            ),
        };
        Identity { name: self.name().to_owned(), weight, filter: PEER_FILTER, handle: PEER_HANDLE, proxy, tunnel }
    }

    /// A fresh callout with this behaviour, proxying every TCP/UDP flow that
    /// leaves the machine.
    pub fn callout(self) -> Box<dyn Callout> {
        match self {
            Self::Compliant | Self::NoRecords => Box::new(Compliant),
            Self::Sampler => Box::new(Sampler { wants: Wants::Everything }),
            Self::Legacy => Box::new(Legacy),
            Self::WriteStripper => Box::new(WriteStripper),
            Self::RemoteProxy => Box::new(RemoteProxy),
            Self::AuthBlocker => Box::new(AuthBlocker::default()),
            Self::SplitTunnel => Box::new(SplitTunnel::new(&[crate::scenario::APP], RebindTo::Host)),
            Self::SplitTunnelProxy => {
                Box::new(SplitTunnel::new(&[crate::scenario::APP, crate::ours::OWN_PROXY_APP], RebindTo::Host))
            }
            Self::WfpSampler => Box::new(real::WfpSampler { acquire: real::Acquire::ClearsWrite }),
            Self::NetEbpfExt => Box::new(real::NetEbpfExt { acquire: real::Acquire::ClearsWrite }),
            Self::Mullvad => Box::new(real::Mullvad::new(&[crate::scenario::APP])),
            Self::Portmaster => Box::new(real::Portmaster::default()),
            Self::ProxyBridge => Box::new(real::ProxyBridge {
                version: real::ProxyBridgeVersion::Ea115fa,
                acquire: real::Acquire::ClearsWrite,
                watch: real::Watch::All,
            }),
        }
    }
}

impl fmt::Display for Profile {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

pub use split_tunnel::{RebindTo, SplitTunnel, TUNNEL_V4, TUNNEL_V6};

/// The peer's callout filter id.
pub const PEER_FILTER: u64 = 200;
/// The peer's redirect handle.
pub const PEER_HANDLE: u64 = 2;
/// The peer's proxy PID.
pub const PEER_PROXY_PID: u64 = 6100;
const FALLBACK_V4: SocketAddr = SocketAddr::V4(core::net::SocketAddrV4::new(core::net::Ipv4Addr::LOCALHOST, 9100));
const FALLBACK_V6: SocketAddr =
    SocketAddr::V6(core::net::SocketAddrV6::new(core::net::Ipv6Addr::LOCALHOST, 9100, 0, 0));

/// Which flows a redirecting profile wants for its proxy.
#[derive(Debug)]
pub enum Wants {
    /// Every TCP/UDP flow to an address off this machine.
    Everything,
    /// What the rule set's first match says `proxy` for (the sampler in our place).
    Rules(Box<RuleSet>),
}

impl Wants {
    fn wants(&self, v: &ConnectView<'_>) -> bool {
        let leaves = v.conn.protocol.is_tcp_or_udp() && !is_host_ip(v.remote.ip());
        match self {
            Self::Everything => leaves,
            Self::Rules(rules) => {
                let app = WideString::new(&v.conn.app);
                let original_app = WideString::new(&v.conn.original_app);
                let flow = Flow {
                    protocol: v.conn.protocol,
                    local: v.conn.local,
                    remote: v.remote,
                    endpoint: v.conn.endpoint,
                    pid: v.conn.pid,
                    app: app.app_id(),
                    original_app: original_app.app_id(),
                    package: None,
                };
                v.conn.protocol.is_tcp_or_udp()
                    && rules.first_match(&flow).is_some_and(|h| h.action == arbiter::Action::Proxy)
            }
        }
    }
}

fn to_own_proxy(me: &Identity, v: &ConnectView<'_>, why: &str) -> ConnectDecision {
    match &me.proxy {
        Some(p) => ConnectDecision::new(
            ConnectAction::RedirectLocal { to: p.listener(v.remote.is_ipv6()), target_pid: p.pid },
            why,
        )
        .reauthorizing(),
        None => ConnectDecision::new(ConnectAction::Continue, "no proxy"),
    }
}

fn is_own_proxy(me: &Identity, pid: u64) -> bool {
    me.proxy.as_ref().is_some_and(|p| p.pid == pid)
}

fn pass_auth() -> AuthDecision {
    AuthDecision::new(AuthAction::Continue, "not inspected")
}

/// `compliant` and `no-records` (they differ only in their proxy).
#[derive(Debug)]
pub struct Compliant;

impl Callout for Compliant {
    fn connect_redirect(&mut self, me: &Identity, v: &ConnectView<'_>) -> ConnectDecision {
        use ConnectAction::{Continue, Permit};
        use RedirectState::{NotRedirected, PreviouslyRedirectedBySelf, RedirectedByOther, RedirectedBySelf};
        let others_local = v.previous.iter().any(|e| e.filter != me.filter && e.local_redirect_handle);
        let own_change = v.previous.iter().any(|e| e.filter == me.filter);
        let wants = Wants::Everything.wants(v);
        match (v.state, v.write_right, others_local, own_change) {
            // Our proxy's outbound with our records: it already goes to the real destination.
            (RedirectedBySelf, ..) => ConnectDecision::new(Permit, "redirected-by-self"),
            // Sent back to us after another redirector: let it through (docs: do not redirect again).
            (PreviouslyRedirectedBySelf, ..) => ConnectDecision::new(Permit, "revisit"),
            // Without the write right we may not modify.
            (_, false, ..) => ConnectDecision::new(Continue, "no write right"),
            // Another vendor is sending this flow to its local proxy: honour its handle.
            (_, true, true, _) => ConnectDecision::new(Permit, "other's local redirect"),
            // Reauthorization after our own change.
            (_, true, false, true) => ConnectDecision::new(Continue, "modified by self"),
            // Our proxy's own outbound without records (no-records): never loop to ourselves.
            (NotRedirected | RedirectedByOther, true, false, false) if is_own_proxy(me, v.conn.pid) => {
                ConnectDecision::new(Continue, "own proxy")
            }
            (NotRedirected | RedirectedByOther, true, false, false) if wants => to_own_proxy(me, v, "policy"),
            (NotRedirected | RedirectedByOther, true, false, false) => ConnectDecision::new(Continue, "not wanted"),
        }
    }

    fn auth_connect(&mut self, _me: &Identity, _v: &AuthView<'_>) -> AuthDecision {
        pass_auth()
    }
}

/// `sampler`: WFPSampler's proxy callout.
#[derive(Debug)]
pub struct Sampler {
    /// Which flows it proxies.
    pub wants: Wants,
}

/// WFPSampler blocks when it finds more than this many of its own hops.
pub const SAMPLER_MAX_OWN_HOPS: usize = 3;

impl Callout for Sampler {
    fn connect_redirect(&mut self, me: &Identity, v: &ConnectView<'_>) -> ConnectDecision {
        use ConnectAction::{Block, Continue, Permit};
        use RedirectState::{NotRedirected, PreviouslyRedirectedBySelf, RedirectedByOther, RedirectedBySelf};
        let own_hops = v.conn.records.iter().filter(|r| r.handle == me.handle).count()
            + v.previous.iter().filter(|e| e.filter == me.filter).count();
        // Only the newest previousVersion entry is looked at.
        let last_was_me = v.previous.first().is_some_and(|e| e.filter == me.filter);
        match (v.state, v.write_right) {
            // Filter conditions exclude the sample proxy's own process.
            _ if is_own_proxy(me, v.conn.pid) => ConnectDecision::new(Continue, "own proxy"),
            (_, false) => ConnectDecision::new(Continue, "no write right"),
            _ if last_was_me => ConnectDecision::new(Continue, "previous version is mine"),
            (RedirectedBySelf, true) => ConnectDecision::new(Permit, "redirected-by-self").reauthorizing(),
            // The sample takes no action on a revisit.
            (PreviouslyRedirectedBySelf, true) => ConnectDecision::new(Continue, "previously-redirected-by-self"),
            _ if own_hops > SAMPLER_MAX_OWN_HOPS => ConnectDecision::new(Block, "more than 3 own hops"),
            // Others are untrusted: redirect again.
            (NotRedirected | RedirectedByOther, true) if self.wants.wants(v) => to_own_proxy(me, v, "redirect"),
            (NotRedirected | RedirectedByOther, true) => ConnectDecision::new(Continue, "not wanted"),
        }
    }

    fn auth_connect(&mut self, _me: &Identity, v: &AuthView<'_>) -> AuthDecision {
        // The sample's auth-connect callout only logs the redirect metadata.
        let _ = (v.redirected, v.target_pid, v.original_destination);
        AuthDecision::new(AuthAction::Continue, "logged")
    }
}

/// `legacy`: Windows 7 style, no redirect state, no previousVersion.
#[derive(Debug)]
pub struct Legacy;

impl Callout for Legacy {
    fn connect_redirect(&mut self, me: &Identity, v: &ConnectView<'_>) -> ConnectDecision {
        use ConnectAction::Continue;
        let already_mine = me.proxy.as_ref().is_some_and(|p| p.listens_on(v.remote));
        match (v.write_right, is_own_proxy(me, v.conn.pid), already_mine) {
            (false, ..) => ConnectDecision::new(Continue, "no write right"),
            (true, true, _) => ConnectDecision::new(Continue, "own proxy"),
            (true, false, true) => ConnectDecision::new(Continue, "already to my proxy"),
            // Everything else goes to its proxy; no reauthorization flag (pre-Windows 8 code).
            (true, false, false) if v.conn.protocol.is_tcp_or_udp() && !v.remote.ip().is_loopback() => {
                let mut d = to_own_proxy(me, v, "redirect all");
                d.reauthorize_if_modified = false;
                d
            }
            (true, false, false) => ConnectDecision::new(Continue, "not tcp/udp"),
        }
    }

    fn auth_connect(&mut self, _me: &Identity, _v: &AuthView<'_>) -> AuthDecision {
        pass_auth()
    }
}

/// `write-stripper`: hard-permits everything.
#[derive(Debug)]
pub struct WriteStripper;

impl Callout for WriteStripper {
    fn connect_redirect(&mut self, _me: &Identity, _v: &ConnectView<'_>) -> ConnectDecision {
        ConnectDecision::new(ConnectAction::HardPermit, "hard permit")
    }

    fn auth_connect(&mut self, _me: &Identity, _v: &AuthView<'_>) -> AuthDecision {
        AuthDecision::new(AuthAction::Permit, "hard permit")
    }
}

/// `remote-proxy`: sends every flow leaving the machine to its remote proxy.
#[derive(Debug)]
pub struct RemoteProxy;

impl Callout for RemoteProxy {
    fn connect_redirect(&mut self, me: &Identity, v: &ConnectView<'_>) -> ConnectDecision {
        use ConnectAction::{Continue, RedirectRemote};
        let tunnel = me.tunnel_for(v.remote.is_ipv6());
        match (v.write_right, tunnel) {
            (false, _) => ConnectDecision::new(Continue, "no write right"),
            (true, None) => ConnectDecision::new(Continue, "no tunnel"),
            (true, Some(t)) if t == v.remote => ConnectDecision::new(Continue, "already tunnelled"),
            // Local traffic (loopback, this host: e.g. a local proxy listener) stays local.
            (true, Some(_)) if !Wants::Everything.wants(v) => ConnectDecision::new(Continue, "local or not tcp/udp"),
            (true, Some(t)) => ConnectDecision::new(RedirectRemote { to: t }, "tunnel").reauthorizing(),
        }
    }

    fn auth_connect(&mut self, _me: &Identity, _v: &AuthView<'_>) -> AuthDecision {
        pass_auth()
    }
}

/// `auth-blocker`: learns local proxies from redirect metadata and blocks
/// their connections unless allowed.
#[derive(Debug, Default)]
pub struct AuthBlocker {
    /// PIDs seen as LOCAL_REDIRECT_TARGET_PID.
    pub proxies: Vec<u64>,
    /// Proxies it knows and lets through.
    pub allowed: Vec<u64>,
}

impl Callout for AuthBlocker {
    fn connect_redirect(&mut self, _me: &Identity, _v: &ConnectView<'_>) -> ConnectDecision {
        ConnectDecision::new(ConnectAction::Continue, "not inspected")
    }

    fn auth_connect(&mut self, _me: &Identity, v: &AuthView<'_>) -> AuthDecision {
        if let (true, Some(pid)) = (v.redirected, v.target_pid)
            && !self.proxies.contains(&pid)
        {
            self.proxies.push(pid);
        }
        let is_proxy = self.proxies.contains(&v.conn.pid);
        match (is_proxy, self.allowed.contains(&v.conn.pid)) {
            (true, false) => AuthDecision::new(AuthAction::Block, "unknown-proxy"),
            (true, true) => AuthDecision::new(AuthAction::Permit, "known proxy"),
            (false, _) => AuthDecision::new(AuthAction::Continue, "not a proxy"),
        }
    }
}

/// A protocol's report name.
pub fn protocol_name(p: Protocol) -> String {
    p.to_string()
}
