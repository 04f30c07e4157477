//! `mullvad`: Mullvad's split-tunnel driver (`mullvad-split-tunnel.sys`,
//! 1.3.0.0) as a whole: TCP re-sourced at ALE_CONNECT_REDIRECT, other
//! protocols at ALE_BIND_REDIRECT, and its auth-connect filters.
//! (`split-tunnel` applies the one bind rewrite to both protocols.)
//!
//! Source: `mullvad/win-split-tunnel` at commit
//! 0a0eb97f67d1dbcb3d08bda66d3b24f465d95475; CO = `src/firewall/callouts.cpp`,
//! FI = `src/firewall/filters.cpp`, FW = `src/firewall/firewall.cpp`,
//! CL = `src/firewall/classify.cpp`, PE = `src/firewall/pending.cpp`,
//! CN = `src/firewall/constants.h`; and `mullvad/mullvadvpn-app` at commit
//! 9380a8076bc0511937477989a80ebca89cb334d9 (MO2 =
//! `windows/winfw/src/winfw/mullvadobjects.cpp`).
//!
//! - **Filters** (FI 119-220 connect, 11-108 bind): `FWP_ACTION_CALLOUT_UNKNOWN`,
//!   weight `FWP_UINT64` MAXUINT64 (CN 8-9), flags **`CLEAR_ACTION_RIGHT`**
//!   and HAS_PROVIDER_CONTEXT, in the daemon's baseline sublayer of weight
//!   0xFFFF (MO2 18-31; FW 109-121: no sublayer of its own); condition
//!   IP_PROTOCOL == TCP at connect, != TCP at bind. Dynamic session
//!   (FW 28-46): nothing persistent.
//! - **Connect-redirect** (`CalloutClassifyConnect` CO 681-771,
//!   `RewriteConnection` CO 472-667): no write right → nothing written
//!   (CO 720-725); reset to CONTINUE with the right (CO 727; CL 6-27);
//!   a process not excluded → CONTINUE; an unknown process is pended and
//!   re-classified when it is known (PE 408-483, 176-193; settled result:
//!   the lab's processes are known); an excluded one: only when the local
//!   address is the tunnel's or the remote is not local-scope (CO 495-581);
//!   acquire, reset (CO 587-621); **its own filter anywhere in
//!   `previousVersion` → applied unchanged, CONTINUE** (CO 623-641); else
//!   **the local address becomes the Internet interface's** (port kept),
//!   the remote untouched (CO 643-656), soft PERMIT (CO 658; CL 39-47),
//!   applied with flags 0 (CO 660-666).
//! - **Redirect states, records, `localRedirectHandle`**: none; it never
//!   queries the state nor writes the handle, context or target PID.
//! - **Loop guard**: its own filter id in the chain; no hop cap.
//! - **Auth-connect** (CO 883-1179; FI 231-303, 519-577): an excluded
//!   process off the tunnel gets a soft PERMIT (weight MAXUINT64-10, no
//!   `CLEAR_ACTION_RIGHT`); an excluded or unknown process on the tunnel
//!   address a hard BLOCK (weight MAXUINT64, `CLEAR_ACTION_RIGHT`). Its
//!   dummy BLOCK filters match only 1.3.3.7 (FW 815-917).
//!
//! In the lab the application's socket is sourced from the host address,
//! which stands for the Internet interface's; the re-sourcing therefore
//! keeps the address, and what the other vendors see is the new version of
//! the request (its filter id, no redirect handle), which reauthorizes any
//! vendor that applied with `REAUTHORIZE_IF_MODIFIED_BY_OTHERS` before it.

use core::net::SocketAddr;

use arbiter_wfp_model::bind::{BindData, BindRuntime};
use wfp_ffi::{FWP_ACTION_TYPE, FWPS_CLASSIFY_OUT0};

use super::Placement;
use crate::bind::BindCallout;
use crate::engine::{
    AuthDecision, AuthView, Callout, ConnectAction, ConnectDecision, ConnectView, HOST_V4, HOST_V6, Identity,
};
use crate::profiles::{RebindTo, SplitTunnel, TUNNEL_V4, TUNNEL_V6};

/// The Mullvad split-tunnel driver excluding the lab's application.
#[derive(Debug, Clone)]
pub struct Mullvad {
    /// The bind half and the exclusion list (shared with `split-tunnel`).
    pub split: SplitTunnel,
    /// Connections it re-sourced at connect-redirect.
    pub resourced: u32,
}

impl Mullvad {
    /// Where its filters sit.
    pub const PLACEMENT: Placement = Placement {
        redirect_layer: Some("ALE_CONNECT_REDIRECT_V4/V6 (TCP), ALE_BIND_REDIRECT_V4/V6 (not TCP)"),
        redirect_action: "FWP_ACTION_CALLOUT_UNKNOWN",
        filter_weight: "FWP_UINT64 MAXUINT64",
        sublayer: "Mullvad VPN baseline (the daemon's)",
        sublayer_weight: 0xFFFF,
        clear_action_right: true,
        auth: "CALLOUT_UNKNOWN: soft permit off the tunnel (MAXUINT64-10), hard block on it (MAXUINT64, CLEAR_ACTION_RIGHT)",
    };

    /// Excludes `apps` from the tunnel.
    pub fn new(apps: &[&str]) -> Self {
        Self { split: SplitTunnel::new(apps, RebindTo::Host), resourced: 0 }
    }

    fn is_excluded(&self, app: &str) -> bool {
        let app = app.to_lowercase();
        self.split.excluded.contains(&app)
    }
}

/// Local-scope remote addresses Mullvad leaves alone (CO 429-465).
fn is_local_scope(addr: SocketAddr) -> bool {
    match addr.ip() {
        core::net::IpAddr::V4(ip) => {
            ip.is_loopback() || ip.is_link_local() || ip.is_private() || ip.is_multicast() || ip.is_broadcast()
        }
        core::net::IpAddr::V6(ip) => {
            let first = ip.segments().first().copied().unwrap_or(0);
            ip.is_loopback()
                || (first & 0xffc0) == 0xfe80
                || (first & 0xffc0) == 0xfec0
                || (first & 0xff00) == 0xfd00
                || (ip.is_multicast() && (first & 0x000f) != 0x000e)
        }
    }
}

impl Callout for Mullvad {
    fn connect_redirect(&mut self, me: &Identity, v: &ConnectView<'_>) -> ConnectDecision {
        use ConnectAction::{Continue, RewriteLocal};
        let tcp = v.conn.protocol == arbiter::Protocol::TCP;
        let on_tunnel = v.conn.local.ip() == core::net::IpAddr::V4(TUNNEL_V4)
            || v.conn.local.ip() == core::net::IpAddr::V6(TUNNEL_V6);
        let mine = v.previous.iter().any(|e| e.filter == me.filter);
        match (tcp, v.write_right, self.is_excluded(&v.conn.app)) {
            (false, ..) => ConnectDecision::new(Continue, "filter condition: TCP only (bind handles the rest)"),
            (true, false, _) => ConnectDecision::new(Continue, "no write right: nothing written"),
            (true, true, false) => ConnectDecision::new(Continue, "not excluded"),
            (true, true, true) if !on_tunnel && is_local_scope(v.remote) => {
                ConnectDecision::new(Continue, "local-scope destination")
            }
            (true, true, true) if mine => ConnectDecision::new(Continue, "its own version in the chain: unchanged"),
            (true, true, true) => {
                self.resourced += 1;
                let ip = if v.conn.local.is_ipv6() {
                    core::net::IpAddr::V6(HOST_V6)
                } else {
                    core::net::IpAddr::V4(HOST_V4)
                };
                ConnectDecision::new(
                    RewriteLocal { to: SocketAddr::new(ip, v.conn.local.port()) },
                    "local address to the Internet interface, soft permit",
                )
            }
        }
    }

    fn auth_connect(&mut self, me: &Identity, v: &AuthView<'_>) -> AuthDecision {
        self.split.auth_connect(me, v)
    }

    fn as_bind(&mut self) -> Option<&mut dyn BindCallout> {
        Some(self)
    }
}

impl BindCallout for Mullvad {
    fn bind_filter(&self) -> (FWP_ACTION_TYPE, u32) {
        self.split.bind_filter()
    }

    fn classify_bind(
        &mut self,
        rt: &mut BindRuntime,
        data: &BindData,
        classify: u64,
        filter: u64,
        out: &mut FWPS_CLASSIFY_OUT0,
        now_ms: u64,
    ) {
        // The bind filter's condition IP_PROTOCOL != TCP (FI 11-108): TCP
        // binds do not reach the callout; the classifyOut stays as it came.
        if data.protocol == arbiter::Protocol::TCP.0 {
            return;
        }
        self.split.classify_bind(rt, data, classify, filter, out, now_ms);
    }
}
