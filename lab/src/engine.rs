//! The WFP engine model (lab.md, "What the engine model must capture").
//!
//! One [`Engine`] holds the vendors installed on a simulated machine, each
//! with a callout (our arbiter, or a peer profile), a filter id, a weight, a
//! redirect handle, and usually a proxy process. [`Engine::classify`] takes
//! one connection through ALE_CONNECT_REDIRECT and ALE_AUTH_CONNECT exactly
//! as far as the model goes:
//!
//! - callouts run in descending weight, each seeing the current layer data,
//!   the previousVersion chain of this classification (newest first), the
//!   write right left by those before, and its redirect state derived from
//!   the connection's redirect records;
//! - a hard permit or block clears the write right; a modification without
//!   the write right is refused (FwpsApplyModifiedLayerData0 would fail);
//! - a callout that applied with REAUTHORIZE_IF_MODIFIED_BY_OTHERS and was
//!   then modified by another is classified again with IS_REAUTHORIZE, at
//!   most [`MAX_REAUTH_ROUNDS`] times;
//! - auth-connect follows with IS_CONNECTION_REDIRECTED,
//!   LOCAL_REDIRECT_TARGET_PID and ORIGINAL_DESTINATION; any block ends the
//!   connection, and so does a hard block taken at connect-redirect;
//! - a local redirect delivers the connection to that vendor's proxy, which
//!   opens its outbound from its own process towards the original
//!   destination in its redirect context, with or without the records.
//!
//! The engine never decides for a vendor: it only moves data between them.

use core::fmt;
use core::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use arbiter::flow::PreviousEntry;
use arbiter::{Layer, Protocol, RedirectState};

/// At most this many connections in one chain; more is a loop (lab.md).
pub const MAX_CHAIN: usize = 32;
/// At most this many reauthorization rounds in one classification.
pub const MAX_REAUTH_ROUNDS: usize = 8;
/// Milliseconds the simulated clock advances per connection.
pub const MS_PER_HOP: u64 = 10;

/// This machine's own addresses (besides loopback): where local proxies listen.
pub const HOST_V4: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 5);
/// This machine's IPv6 address.
pub const HOST_V6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 5);

/// Is `ip` one of this machine's addresses (or loopback)?
pub fn is_host_ip(ip: IpAddr) -> bool {
    ip.is_loopback() || ip == IpAddr::V4(HOST_V4) || ip == IpAddr::V6(HOST_V6)
}

/// A vendor's local proxy process.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProxyProcess {
    /// Its PID.
    pub pid: u64,
    /// Its app id.
    pub app: String,
    /// IPv4 listener.
    pub v4: SocketAddr,
    /// IPv6 listener.
    pub v6: SocketAddr,
    /// Copies the redirect records onto its outbound socket
    /// (SIO_SET_WFP_CONNECTION_REDIRECT_RECORDS).
    pub propagates_records: bool,
}

impl ProxyProcess {
    /// Its listener for a family.
    pub const fn listener(&self, v6: bool) -> SocketAddr {
        if v6 { self.v6 } else { self.v4 }
    }

    /// Does a connection to `addr` reach this proxy's listener? The WFP
    /// model decides ([`arbiter_wfp_model::redirect::listener_reachable`]):
    /// the listener's own address and port only (proxies listen on loopback).
    pub fn listens_on(&self, addr: SocketAddr) -> bool {
        arbiter_wfp_model::redirect::listener_reachable(self.listener(addr.is_ipv6()), addr)
    }
}

/// Who a vendor is to the engine.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Identity {
    /// Short name used in reports (`arbiter`, `compliant`, ...).
    pub name: String,
    /// Filter weight: higher classifies first.
    pub weight: u32,
    /// Callout filter id (what previousVersion entries name).
    pub filter: u64,
    /// Redirect handle (FwpsRedirectHandleCreate0), one per driver.
    pub handle: u64,
    /// Local proxy, if the vendor has one.
    pub proxy: Option<ProxyProcess>,
    /// Remote proxy ("tunnel") address per family, for VPN/ZTNA-style vendors.
    pub tunnel: Option<(SocketAddr, SocketAddr)>,
}

impl Identity {
    /// The tunnel address for a family.
    pub fn tunnel_for(&self, v6: bool) -> Option<SocketAddr> {
        self.tunnel.map(|(a, b)| if v6 { b } else { a })
    }
}

/// The context a redirector attaches (localRedirectContext): what it saw as
/// the destination when it redirected.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RedirectContext {
    /// The remote address in the layer data when it redirected.
    pub original_remote: SocketAddr,
    /// The local address.
    pub original_local: SocketAddr,
}

/// One redirect record: who redirected the chain, with its context.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RecordEntry {
    /// The redirect handle.
    pub handle: u64,
    /// The redirect context.
    pub context: RedirectContext,
}

/// Who opened a connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Opener {
    /// The application.
    App,
    /// A vendor's proxy (index into [`Engine::vendors`]).
    Proxy(usize),
}

/// A connection as the engine tracks it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Connection {
    /// Position in its chain (0: the application's own connection).
    pub hop: usize,
    /// FWPS_METADATA_FIELD_TRANSPORT_ENDPOINT_HANDLE.
    pub endpoint: u64,
    /// Process id.
    pub pid: u64,
    /// App id.
    pub app: String,
    /// ALE_ORIGINAL_APP_ID.
    pub original_app: String,
    /// Protocol.
    pub protocol: Protocol,
    /// Local address.
    pub local: SocketAddr,
    /// Remote address as the process asked for it.
    pub remote: SocketAddr,
    /// Redirect records, oldest first.
    pub records: Vec<RecordEntry>,
    /// Who opened it.
    pub opener: Opener,
}

/// The redirect state of a connection for the callout holding `handle`.
pub fn redirect_state(records: &[RecordEntry], handle: u64) -> RedirectState {
    match (records.last(), records.iter().any(|r| r.handle == handle)) {
        (None, _) => RedirectState::NotRedirected,
        (Some(last), _) if last.handle == handle => RedirectState::RedirectedBySelf,
        (Some(_), true) => RedirectState::PreviouslyRedirectedBySelf,
        (Some(_), false) => RedirectState::RedirectedByOther,
    }
}

/// What a callout sees at connect-redirect.
#[derive(Clone, Copy, Debug)]
pub struct ConnectView<'a> {
    /// The connection.
    pub conn: &'a Connection,
    /// The current layer data's remote address (possibly already modified).
    pub remote: SocketAddr,
    /// FwpsQueryConnectionRedirectState0 for this callout's handle.
    pub state: RedirectState,
    /// FWPS_RIGHT_ACTION_WRITE.
    pub write_right: bool,
    /// FWP_CONDITION_FLAG_IS_REAUTHORIZE.
    pub reauthorize: bool,
    /// previousVersion chain, newest first.
    pub previous: &'a [PreviousEntry],
    /// Simulated time, ms.
    pub now_ms: u64,
}

/// What a callout sees at auth-connect.
#[derive(Clone, Copy, Debug)]
pub struct AuthView<'a> {
    /// The connection.
    pub conn: &'a Connection,
    /// The (possibly redirected) remote address.
    pub remote: SocketAddr,
    /// FWP_CONDITION_FLAG_IS_CONNECTION_REDIRECTED.
    pub redirected: bool,
    /// FWPS_METADATA_FIELD_LOCAL_REDIRECT_TARGET_PID.
    pub target_pid: Option<u64>,
    /// FWPS_METADATA_FIELD_ORIGINAL_DESTINATION.
    pub original_destination: Option<SocketAddr>,
    /// Simulated time, ms.
    pub now_ms: u64,
}

/// What a callout does at connect-redirect.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ConnectAction {
    /// FWP_ACTION_CONTINUE.
    Continue,
    /// Soft permit, layer data applied unchanged.
    Permit,
    /// Hard permit: the write right is cleared for everyone after.
    HardPermit,
    /// Hard block.
    Block,
    /// Rewrite to a local proxy, with this callout's redirect handle.
    RedirectLocal {
        /// New remote address.
        to: SocketAddr,
        /// localRedirectTargetPID.
        target_pid: u64,
    },
    /// Rewrite to a remote address, no redirect handle.
    RedirectRemote {
        /// New remote address.
        to: SocketAddr,
    },
}

impl ConnectAction {
    /// Short name for reports.
    pub const fn name(&self) -> &'static str {
        match self {
            Self::Continue => "continue",
            Self::Permit => "permit",
            Self::HardPermit => "hard-permit",
            Self::Block => "block",
            Self::RedirectLocal { .. } => "redirect",
            Self::RedirectRemote { .. } => "redirect-remote",
        }
    }
}

/// A connect-redirect decision.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConnectDecision {
    /// What to do.
    pub action: ConnectAction,
    /// Applied with FWPS_CLASSIFY_FLAG_REAUTHORIZE_IF_MODIFIED_BY_OTHERS.
    pub reauthorize_if_modified: bool,
    /// Why (a decision-table reason for our arbiter; the profile's own words otherwise).
    pub reason: String,
}

impl ConnectDecision {
    /// A decision without the reauthorize flag.
    pub fn new(action: ConnectAction, reason: &str) -> Self {
        Self { action, reauthorize_if_modified: false, reason: reason.to_owned() }
    }

    /// The same, applied with REAUTHORIZE_IF_MODIFIED_BY_OTHERS.
    #[must_use]
    pub const fn reauthorizing(mut self) -> Self {
        self.reauthorize_if_modified = true;
        self
    }
}

/// What a callout does at auth-connect.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AuthAction {
    /// FWP_ACTION_CONTINUE.
    Continue,
    /// FWP_ACTION_PERMIT.
    Permit,
    /// FWP_ACTION_BLOCK: ends the connection.
    Block,
}

impl AuthAction {
    /// Short name for reports.
    pub const fn name(self) -> &'static str {
        match self {
            Self::Continue => "continue",
            Self::Permit => "permit",
            Self::Block => "block",
        }
    }
}

/// An auth-connect decision.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AuthDecision {
    /// What to do.
    pub action: AuthAction,
    /// Why.
    pub reason: String,
}

impl AuthDecision {
    /// Builds one.
    pub fn new(action: AuthAction, reason: &str) -> Self {
        Self { action, reason: reason.to_owned() }
    }
}

/// A vendor's classify functions. Implemented by our arbiter's adapter and
/// by every peer profile.
pub trait Callout: fmt::Debug {
    /// ALE_CONNECT_REDIRECT.
    fn connect_redirect(&mut self, me: &Identity, v: &ConnectView<'_>) -> ConnectDecision;
    /// ALE_AUTH_CONNECT.
    fn auth_connect(&mut self, me: &Identity, v: &AuthView<'_>) -> AuthDecision;
    /// Our arbiter's adapter, when this callout is it (for recording).
    fn as_arbiter(&self) -> Option<&crate::ours::ArbiterCallout> {
        None
    }
    /// Its classify function at ALE_BIND_REDIRECT, if it has a filter there.
    fn as_bind(&mut self) -> Option<&mut dyn crate::bind::BindCallout> {
        None
    }
    /// The same, mutably (to take its recording at the end of a scenario).
    fn as_arbiter_mut(&mut self) -> Option<&mut crate::ours::ArbiterCallout> {
        None
    }
}

/// One installed vendor.
#[derive(Debug)]
pub struct Vendor {
    /// Who it is.
    pub id: Identity,
    /// Its classify functions.
    pub callout: Box<dyn Callout>,
}

/// One callout's decision, as the trace keeps it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Decided {
    /// Vendor index.
    pub vendor: usize,
    /// Vendor name.
    pub name: String,
    /// Layer.
    pub layer: Layer,
    /// 0 for the first pass, n for the nth reauthorization.
    pub round: usize,
    /// Action name (`redirect`, `permit`, ...).
    pub action: String,
    /// Reason.
    pub reason: String,
    /// A modification refused because the write right was gone.
    pub refused: bool,
}

/// How one connection ended up.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum HopResult {
    /// Delivered to a vendor's local proxy, which will open the next connection.
    ToProxy {
        /// The vendor.
        vendor: usize,
    },
    /// Reached the chain's original destination (directly or through a remote proxy).
    Delivered {
        /// The remote proxy on the way, if any (vendor, address).
        via_tunnel: Option<(usize, SocketAddr)>,
    },
    /// Blocked.
    Blocked {
        /// The vendor that blocked.
        vendor: usize,
        /// At which layer.
        layer: Layer,
        /// Why.
        reason: String,
    },
    /// The callouts kept modifying each other past [`MAX_REAUTH_ROUNDS`].
    ReauthLoop,
    /// Ended somewhere the model cannot explain (misdelivery, dead end).
    Unexplained(String),
}

/// One connection's way through the engine.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HopTrace {
    /// The connection.
    pub conn: Connection,
    /// Every callout decision, both layers, in order.
    pub decisions: Vec<Decided>,
    /// The final remote address after connect-redirect.
    pub final_remote: SocketAddr,
    /// The context of the local redirect in force at the end of connect-redirect.
    pub context: Option<RedirectContext>,
    /// What happened.
    pub result: HopResult,
    /// Simulated time of the classification.
    pub at_ms: u64,
}

/// The layer data during one connect-redirect classification.
#[derive(Clone, Copy, Debug)]
struct LayerData {
    remote: SocketAddr,
    /// (vendor, target pid, context) of the local redirect in force.
    local: Option<(usize, u64, RedirectContext)>,
    /// (vendor, context) of the remote redirect in force.
    tunnel: Option<(usize, RedirectContext)>,
}

/// A connection between its connect-redirect and its auth-connect
/// classification ([`Engine::connect_phase`], [`Engine::auth_phase`]).
#[derive(Clone, Debug)]
pub struct Classifying {
    /// The connection.
    pub conn: Connection,
    /// The connect-redirect decisions, in order.
    pub decisions: Vec<Decided>,
    data: LayerData,
    redirect_block: Option<(usize, String)>,
    /// Simulated time of the connect-redirect classification.
    pub at_ms: u64,
    /// Reauthorization did not settle: no auth-connect follows.
    reauth_loop: bool,
}

impl Classifying {
    /// The remote address the layer data ended with.
    pub const fn final_remote(&self) -> SocketAddr {
        self.data.remote
    }

    /// The local redirect in force: (vendor, target PID, context).
    pub const fn local_redirect(&self) -> Option<(usize, u64, RedirectContext)> {
        self.data.local
    }

    /// The remote redirect in force: (vendor, context).
    pub const fn tunnel(&self) -> Option<(usize, RedirectContext)> {
        self.data.tunnel
    }

    /// The first hard block at connect-redirect: (vendor, reason).
    pub fn redirect_block(&self) -> Option<(usize, &str)> {
        self.redirect_block.as_ref().map(|(v, r)| (*v, r.as_str()))
    }

    /// Reauthorization did not settle within [`MAX_REAUTH_ROUNDS`].
    pub const fn reauth_loop(&self) -> bool {
        self.reauth_loop
    }

    /// FWP_CONDITION_FLAG_IS_CONNECTION_REDIRECTED as auth-connect will see it.
    pub fn redirected(&self) -> bool {
        self.data.remote != self.conn.remote || self.data.local.is_some()
    }
}

/// The simulated machine.
#[derive(Debug)]
pub struct Engine {
    /// Installed vendors.
    pub vendors: Vec<Vendor>,
    /// Simulated time, ms.
    pub now_ms: u64,
    next_endpoint: u64,
    next_port: u16,
}

impl Engine {
    /// A machine with these vendors.
    pub fn new(vendors: Vec<Vendor>) -> Self {
        Self { vendors, now_ms: 0, next_endpoint: 1, next_port: 50_000 }
    }

    /// The same machine (clock, endpoint handles and ports handed out so far)
    /// with these vendors in its place: the interop explorer forks a machine
    /// to try another interleaving, giving each fork callouts in the same state.
    pub fn fork(&self, vendors: Vec<Vendor>) -> Self {
        Self { vendors, now_ms: self.now_ms, next_endpoint: self.next_endpoint, next_port: self.next_port }
    }

    /// Vendor indices in descending weight (ties: installation order).
    pub fn by_weight(&self) -> Vec<usize> {
        let mut order: Vec<usize> = (0..self.vendors.len()).collect();
        order.sort_by_key(|&i| core::cmp::Reverse(self.vendors.get(i).map_or(0, |v| v.id.weight)));
        order
    }

    fn vendor_name(&self, i: usize) -> String {
        self.vendors.get(i).map_or_else(|| format!("vendor{i}"), |v| v.id.name.clone())
    }

    /// A fresh endpoint handle and local port.
    fn socket(&mut self, ip: IpAddr) -> (u64, SocketAddr) {
        let e = self.next_endpoint;
        self.next_endpoint += 1;
        let p = self.next_port;
        self.next_port = self.next_port.wrapping_add(1).max(49_152);
        (e, SocketAddr::new(ip, p))
    }

    /// The application's connection (hop 0).
    pub fn app_connection(&mut self, pid: u64, app: &str, protocol: Protocol, remote: SocketAddr) -> Connection {
        let ip = if remote.is_ipv6() { IpAddr::V6(HOST_V6) } else { IpAddr::V4(HOST_V4) };
        let (endpoint, local) = self.socket(ip);
        let mut conn = Connection {
            hop: 0,
            endpoint,
            pid,
            app: app.to_owned(),
            original_app: app.to_owned(),
            protocol,
            local,
            remote,
            records: Vec::new(),
            opener: Opener::App,
        };
        crate::bind::bind_phase(&mut self.vendors, &mut conn, self.now_ms);
        conn
    }

    /// Classifies one connection at both layers and says where it went.
    pub fn classify(&mut self, conn: &Connection, chain_destination: SocketAddr) -> HopTrace {
        let pending = self.connect_phase(conn);
        self.auth_phase(pending, chain_destination)
    }

    /// ALE_CONNECT_REDIRECT for one connection (with its reauthorization
    /// rounds). The connection then waits in [`Classifying`] for
    /// [`Engine::auth_phase`]; other connections may be classified in
    /// between, as on a machine with several CPUs (the interop explorer
    /// interleaves them).
    pub fn connect_phase(&mut self, conn: &Connection) -> Classifying {
        self.now_ms += MS_PER_HOP;
        let now_ms = self.now_ms;
        let order = self.by_weight();
        let mut decisions = Vec::new();
        let mut data = LayerData { remote: conn.remote, local: None, tunnel: None };
        let mut chain: Vec<PreviousEntry> = Vec::new();
        let mut modifiers: Vec<usize> = Vec::new(); // parallel to `chain`
        let mut armed: Vec<Option<usize>> = vec![None; self.vendors.len()];
        let mut redirect_block: Option<(usize, String)> = None;
        let mut queue = order.clone();
        let mut round = 0usize;
        loop {
            let mut write = true;
            for &v in &queue {
                let Some(vendor) = self.vendors.get_mut(v) else { continue };
                if let Some(a) = armed.get_mut(v) {
                    *a = None;
                }
                let view = ConnectView {
                    conn,
                    remote: data.remote,
                    state: redirect_state(&conn.records, vendor.id.handle),
                    write_right: write,
                    reauthorize: round > 0,
                    previous: &chain,
                    now_ms,
                };
                let d = vendor.callout.connect_redirect(&vendor.id, &view);
                let context = RedirectContext { original_remote: data.remote, original_local: conn.local };
                let mut refused = false;
                let modified = match d.action {
                    ConnectAction::Continue | ConnectAction::Permit => false,
                    ConnectAction::HardPermit => {
                        write = false;
                        false
                    }
                    ConnectAction::Block => {
                        write = false;
                        redirect_block.get_or_insert((v, d.reason.clone()));
                        false
                    }
                    ConnectAction::RedirectLocal { .. } | ConnectAction::RedirectRemote { .. } if !write => {
                        refused = true;
                        false
                    }
                    ConnectAction::RedirectLocal { to, target_pid } => {
                        data = LayerData { remote: to, local: Some((v, target_pid, context)), tunnel: None };
                        chain.insert(0, PreviousEntry { filter: vendor.id.filter, local_redirect_handle: true });
                        true
                    }
                    ConnectAction::RedirectRemote { to } => {
                        data = LayerData { remote: to, local: None, tunnel: Some((v, context)) };
                        chain.insert(0, PreviousEntry { filter: vendor.id.filter, local_redirect_handle: false });
                        true
                    }
                };
                if modified {
                    modifiers.insert(0, v);
                }
                // Applied layer data (changed or not) with the flag arms reauthorization.
                if d.reauthorize_if_modified
                    && !refused
                    && matches!(
                        d.action,
                        ConnectAction::Permit
                            | ConnectAction::RedirectLocal { .. }
                            | ConnectAction::RedirectRemote { .. }
                    )
                    && let Some(a) = armed.get_mut(v)
                {
                    *a = Some(chain.len());
                }
                decisions.push(Decided {
                    vendor: v,
                    name: vendor.id.name.clone(),
                    layer: Layer::ConnectRedirect,
                    round,
                    action: d.action.name().to_owned(),
                    reason: d.reason,
                    refused,
                });
            }
            // Who was modified by someone else after applying with the flag?
            queue = order
                .iter()
                .copied()
                .filter(|&v| {
                    armed.get(v).copied().flatten().is_some_and(|len| {
                        modifiers
                            .get(..chain.len().saturating_sub(len))
                            .is_some_and(|newer| newer.iter().any(|&m| m != v))
                    })
                })
                .collect();
            if queue.is_empty() {
                break;
            }
            round += 1;
            if round > MAX_REAUTH_ROUNDS {
                return Classifying {
                    conn: conn.clone(),
                    decisions,
                    data,
                    redirect_block,
                    at_ms: now_ms,
                    reauth_loop: true,
                };
            }
        }
        Classifying { conn: conn.clone(), decisions, data, redirect_block, at_ms: now_ms, reauth_loop: false }
    }

    /// ALE_AUTH_CONNECT for a connection whose connect-redirect classification
    /// is done, and where it went. The callouts see the engine's clock as it
    /// is now (the same instant when called right after [`Engine::connect_phase`]).
    pub fn auth_phase(&mut self, pending: Classifying, chain_destination: SocketAddr) -> HopTrace {
        let Classifying { conn, mut decisions, data, redirect_block, at_ms, reauth_loop } = pending;
        if reauth_loop {
            return HopTrace {
                conn,
                decisions,
                final_remote: data.remote,
                context: None,
                result: HopResult::ReauthLoop,
                at_ms,
            };
        }
        let now_ms = self.now_ms;
        let order = self.by_weight();
        // ALE_AUTH_CONNECT, with the metadata WFP sets for a redirected connection.
        let redirected = data.remote != conn.remote || data.local.is_some();
        let target_pid = data.local.map(|(_, pid, _)| pid);
        let original_destination = redirected.then_some(conn.remote);
        let mut auth_block: Option<(usize, String)> = None;
        for &v in &order {
            let Some(vendor) = self.vendors.get_mut(v) else { continue };
            let view =
                AuthView { conn: &conn, remote: data.remote, redirected, target_pid, original_destination, now_ms };
            let d = vendor.callout.auth_connect(&vendor.id, &view);
            if d.action == AuthAction::Block && auth_block.is_none() {
                auth_block = Some((v, d.reason.clone()));
            }
            decisions.push(Decided {
                vendor: v,
                name: vendor.id.name.clone(),
                layer: Layer::AuthConnect,
                round: 0,
                action: d.action.name().to_owned(),
                reason: d.reason,
                refused: false,
            });
        }

        let result = if let Some((vendor, reason)) = auth_block {
            HopResult::Blocked { vendor, layer: Layer::AuthConnect, reason }
        } else if let Some((vendor, reason)) = redirect_block {
            // A hard block is the layer's final action: the connect fails.
            HopResult::Blocked { vendor, layer: Layer::ConnectRedirect, reason }
        } else {
            self.destination_of(&data, chain_destination)
        };
        let context = data.local.map(|(_, _, c)| c);
        HopTrace { conn, decisions, final_remote: data.remote, context, result, at_ms }
    }

    /// Where the final layer data leads.
    fn destination_of(&self, data: &LayerData, chain_destination: SocketAddr) -> HopResult {
        if let Some((v, pid, _)) = data.local {
            return match self.vendors.get(v).and_then(|x| x.id.proxy.as_ref()) {
                Some(p) if p.pid == pid && p.listens_on(data.remote) => HopResult::ToProxy { vendor: v },
                Some(p) if p.pid == pid => HopResult::Unexplained(format!(
                    "{} redirected to {}, where its proxy (listening on {}) is not reachable",
                    self.vendor_name(v),
                    data.remote,
                    p.listener(data.remote.is_ipv6())
                )),
                _ => HopResult::Unexplained(format!(
                    "{} redirected to PID {pid}, which is not its proxy",
                    self.vendor_name(v)
                )),
            };
        }
        if let Some((v, ctx)) = data.tunnel {
            // The remote proxy forwards to what its context says.
            return if ctx.original_remote == chain_destination {
                HopResult::Delivered { via_tunnel: Some((v, data.remote)) }
            } else {
                HopResult::Unexplained(format!(
                    "{}'s remote proxy forwards to {} instead of {chain_destination}",
                    self.vendor_name(v),
                    ctx.original_remote
                ))
            };
        }
        if data.remote == chain_destination {
            return HopResult::Delivered { via_tunnel: None };
        }
        for v in &self.vendors {
            if v.id.proxy.as_ref().is_some_and(|p| p.listens_on(data.remote)) {
                return HopResult::Unexplained(format!(
                    "connected straight to {}'s proxy listener {} with no redirect context",
                    v.id.name, data.remote
                ));
            }
            if v.id.tunnel_for(data.remote.is_ipv6()) == Some(data.remote) {
                return HopResult::Unexplained(format!(
                    "reached {}'s remote proxy {} without a session for this connection",
                    v.id.name, data.remote
                ));
            }
        }
        HopResult::Unexplained(format!("misdelivered to {} instead of {chain_destination}", data.remote))
    }

    /// The outbound connection a vendor's proxy opens for a connection it received.
    pub fn proxy_outbound(&mut self, trace: &HopTrace, vendor: usize) -> Option<Connection> {
        let v = self.vendors.get(vendor)?;
        let proxy = v.id.proxy.clone()?;
        let handle = v.id.handle;
        // The proxy reads its own context back (SIO_QUERY_WFP_CONNECTION_REDIRECT_CONTEXT).
        let context = trace.context?;
        let mut records = trace.conn.records.clone();
        records.push(RecordEntry { handle, context });
        let (endpoint, local) = self.socket(trace.conn.local.ip());
        let mut conn = Connection {
            hop: trace.conn.hop + 1,
            endpoint,
            pid: proxy.pid,
            app: proxy.app.clone(),
            original_app: if proxy.propagates_records { trace.conn.original_app.clone() } else { proxy.app.clone() },
            protocol: trace.conn.protocol,
            local,
            remote: context.original_remote,
            records: if proxy.propagates_records { records } else { Vec::new() },
            opener: Opener::Proxy(vendor),
        };
        crate::bind::bind_phase(&mut self.vendors, &mut conn, self.now_ms);
        Some(conn)
    }
}
