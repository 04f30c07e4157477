//! `proxybridge`: InterceptSuite ProxyBridge's WFP driver (`ProxyBridgeDrv`,
//! the `Driver` branch).
//!
//! Source: `InterceptSuite/ProxyBridge` branch `Driver` at commit
//! ea115fa676bac95710c8db847b5fb1e77ace15a3, D =
//! `Windows/driver/src/ProxyBridgeDrv.c`, S = `Windows/driver/src/pbdrv_state.c`,
//! U = `Windows/src/driver/ProxyBridgeDrv_user.c`, P = `Windows/src/driver/pb_driver.c`,
//! R = `Windows/driver/README.md`; and the newer driver at commit
//! aa0a8263d360c6cab69a25cd2bc297316682b1b5 (same file, read from the search
//! index; cited by function). The mainline (HEAD
//! 02703a0672a8b94011a4698368a392f7734c10dc) ships WinDivert packet NAT
//! instead and has no ALE redirect filter (`Windows/src/ProxyBridge.c:1004`);
//! the lab models the WFP driver.
//!
//! - **Filters** (`AddCallout`, D 352-380; `AddMonitorCallout`, D 383-411):
//!   at ALE_CONNECT_REDIRECT_V4/V6 `FWP_ACTION_CALLOUT_UNKNOWN`; at
//!   ALE_AUTH_CONNECT_V4/V6 `FWP_ACTION_CALLOUT_INSPECTION`; weight
//!   `FWP_EMPTY` (auto); no conditions; flags 0 (**no** `CLEAR_ACTION_RIGHT`,
//!   nothing persistent); sublayer "ProxyBridge Redirect" of weight 0x8000
//!   (D 430-436); dynamic session (D 416-420).
//! - **Connect-redirect** (`ClassifyCore`, D 98-237), in order:
//!   - **PERMIT is written first**, before any check (D 110); without the
//!     write right it returns there (D 111): a PERMIT that takes nothing away;
//!   - its own redirect handle says **BY_SELF or PREVIOUSLY_BY_SELF** →
//!     return, PERMIT (D 120-127);
//!   - not TCP/UDP → PERMIT (D 129-133);
//!   - the relay's own PID → PERMIT (D 135-138);
//!   - the app not on the watch list → PERMIT (D 140-152) ([`Watch`]);
//!   - acquire (D 155-161); a loopback destination with "localhost via
//!     proxy" off: **ea115fa releases without applying** (D 163-169), so
//!     classifyOut stays as the acquire left it (per the docs a hard BLOCK,
//!     [`Acquire`]); **aa0a826 applies unchanged and PERMITs**
//!     ([`ProxyBridgeVersion`]);
//!   - remote = 127.0.0.1 / ::1 when the local address is the wildcard, else
//!     the app's own local address, with the relay port (D 202-224), so its
//!     relay listens on the wildcard address in the lab;
//!     `localRedirectHandle` = its own, `localRedirectTargetPID` = the
//!     relay's PID, context = {original destination, PID} (D 225-228);
//!     applied with flags 0, no reauthorization (D 230-231);
//!   - **hard PERMIT**: `rights &= ~WRITE` (D 235-236). No pend, no absorb.
//! - **Records**: the relay queries only the context (U 68-80); records are
//!   never queried nor set (U 16, 82-86): its relay's outbound is a fresh
//!   connection from its own process, kept out of a loop by the PID check.
//! - **Loop guard**: own redirect state, relay PID, loopback skip; no hop
//!   cap, no `previousVersion` walk, no look at others' `localRedirectHandle`.
//! - **Auth-connect** (`MonitorCore`, D 270-321): CONTINUE always; it logs.

use core::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use arbiter::RedirectState;

use super::{Acquire, Placement};
use crate::engine::{
    AuthAction, AuthDecision, AuthView, Callout, ConnectAction, ConnectDecision, ConnectView, Identity,
};

/// Which driver version's loopback path.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ProxyBridgeVersion {
    /// ea115fa (`Driver` branch head in the mirror): release without apply.
    Ea115fa,
    /// aa0a826 (newer, index only): apply unchanged, PERMIT.
    Aa0a826,
}

/// Which applications it proxies (its watch list).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Watch {
    /// `*`: every application (D 66-96).
    All,
    /// The lab's application only.
    App,
}

/// The ProxyBridge WFP driver.
#[derive(Debug)]
pub struct ProxyBridge {
    /// The loopback path's version.
    pub version: ProxyBridgeVersion,
    /// The acquire reading (what ea115fa's unapplied loopback path returns).
    pub acquire: Acquire,
    /// Its watch list.
    pub watch: Watch,
}

impl ProxyBridge {
    /// Where its filters sit.
    pub const PLACEMENT: Placement = Placement {
        redirect_layer: Some("ALE_CONNECT_REDIRECT_V4/V6"),
        redirect_action: "FWP_ACTION_CALLOUT_UNKNOWN",
        filter_weight: "FWP_EMPTY (auto)",
        sublayer: "ProxyBridge Redirect",
        sublayer_weight: 0x8000,
        clear_action_right: false,
        auth: "FWP_ACTION_CALLOUT_INSPECTION: continue, logs",
    };

    fn watched(&self, app: &str) -> bool {
        match self.watch {
            Watch::All => true,
            Watch::App => app.eq_ignore_ascii_case(crate::scenario::APP),
        }
    }
}

impl Callout for ProxyBridge {
    fn connect_redirect(&mut self, me: &Identity, v: &ConnectView<'_>) -> ConnectDecision {
        use ConnectAction::{Block, Continue, Permit, RedirectLocal};
        use RedirectState::{PreviouslyRedirectedBySelf, RedirectedBySelf};
        let relay = me.proxy.as_ref();
        let own_pid = relay.is_some_and(|p| p.pid == v.conn.pid);
        let permit = |why: &str| ConnectDecision::new(Permit, why);
        if !v.write_right {
            return permit("permit written before the write-right check");
        }
        if matches!(v.state, RedirectedBySelf | PreviouslyRedirectedBySelf) {
            return permit("own redirect state");
        }
        if !v.conn.protocol.is_tcp_or_udp() {
            return permit("not tcp/udp");
        }
        if own_pid {
            return permit("relay's own process");
        }
        if !self.watched(&v.conn.app) {
            return permit("not on the watch list");
        }
        if v.remote.ip().is_loopback() {
            return match (self.version, self.acquire) {
                (ProxyBridgeVersion::Ea115fa, Acquire::ClearsWrite) => {
                    ConnectDecision::new(Block, "loopback destination: released without apply (acquire left BLOCK)")
                        .hard()
                }
                (ProxyBridgeVersion::Ea115fa, Acquire::Unchanged) => {
                    permit("loopback destination: released without apply")
                }
                (ProxyBridgeVersion::Aa0a826, Acquire::ClearsWrite) => {
                    permit("loopback destination: applied unchanged").hard()
                }
                (ProxyBridgeVersion::Aa0a826, Acquire::Unchanged) => permit("loopback destination: applied unchanged"),
            };
        }
        match relay {
            Some(p) => {
                let local = v.conn.local.ip();
                let ip = match (local.is_unspecified(), v.remote.is_ipv6()) {
                    (true, false) => IpAddr::V4(Ipv4Addr::LOCALHOST),
                    (true, true) => IpAddr::V6(Ipv6Addr::LOCALHOST),
                    (false, _) => local,
                };
                let to = SocketAddr::new(ip, p.listener(v.remote.is_ipv6()).port());
                ConnectDecision::new(RedirectLocal { to, target_pid: p.pid }, "redirect to the relay").hard()
            }
            None => ConnectDecision::new(Continue, "no relay"),
        }
    }

    fn auth_connect(&mut self, _me: &Identity, _v: &AuthView<'_>) -> AuthDecision {
        AuthDecision::new(AuthAction::Continue, "monitor: logged")
    }
}
