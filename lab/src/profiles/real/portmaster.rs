//! `portmaster`: Safing Portmaster's kernel extension (the Rust kext).
//!
//! Source: `safing/portmaster` at commit
//! b5153a3a84849a9c3115a2da5b7b8880f9a8d739, under `windows_kext/`: CA =
//! `driver/src/callouts.rs`, ALE = `driver/src/ale_callouts.rs`, PKT =
//! `driver/src/packet_callouts.rs`, CON = `driver/src/connection.rs`, PU =
//! `driver/src/packet_util.rs`, DEV = `driver/src/device.rs`, WFI =
//! `wdk/src/filter_engine/ffi.rs`, CD = `wdk/src/filter_engine/callout_data.rs`.
//! (`safing/portmaster-windows-kext` at 28593163 is the same in this respect:
//! no redirect layer, `pm_kext/src/pm_register.c:277-345`.)
//!
//! - **No filter at ALE_CONNECT_REDIRECT or ALE_BIND_REDIRECT** (CA 10-167),
//!   no redirect handle, records, state query or `localRedirect*`. It is
//!   absent from the connect-redirect layer: CONTINUE.
//! - **Filters** (WFI 166-205): every one `FWP_UINT8` weight 15, flags
//!   **`CLEAR_ACTION_RIGHT`**, no conditions, in "PortmasterSublayer" of
//!   weight 0xFFFF (WFI 46-72); ALE_AUTH_CONNECT_V4/V6 is
//!   `FWP_ACTION_CALLOUT_TERMINATING` (CA 14-31). Dynamic session (WFI 28-44).
//! - **Auth-connect** (`ale_layer_auth`, ALE 107-267): default BLOCK with
//!   ABSORB (ALE 109); its own injected packets → PERMIT (ALE 115-122); not
//!   TCP/UDP → PERMIT (ALE 124-135); the verdict cached by 5-tuple
//!   (ALE 137-154): none yet → pend the operation (`FwpsPendOperation0`,
//!   not on a reauthorization; CD 154-169), ask user mode, BLOCK+ABSORB;
//!   user mode answers, `FwpsCompleteOperation0` (CD 28-37) and the
//!   connection is authorized again with the verdict. ACCEPT and the
//!   REDIRECT verdicts → PERMIT, **with the write right cleared when the
//!   connection is Portmaster's own process** (ALE 183-197); permanent block
//!   → hard BLOCK (ALE 198-202); temporary block outbound → PERMIT and the
//!   packet layer drops it (ALE 208-225).
//! - **Its "redirect"** (CON 14-35, 88-123; PKT 191-215; PU 61-200): NAT at
//!   OUTBOUND_IPPACKET of a connection with a redirect verdict: clone,
//!   destination 127.0.0.1 / ::1 port 53 (its resolver), 717 (SPN) or 719
//!   (split tunnel), inject, block and absorb the original; replies
//!   rewritten back. The WFP model has no packet layers, so the lab cannot
//!   show it; what it means for us is exact all the same: it happens after
//!   both ALE layers, so no redirect record, version or handle is ever made
//!   by Portmaster, our redirect state stays what we made, and its
//!   auth-connect decides on the destination the ALE layers ended with (our
//!   proxy's, for a connection we redirected).
//! - **Loop guard**: its own injections, its own loopback listeners
//!   (PKT 91-106), its own PID's hard permit; no hop cap.
//!
//! Pending is modelled by its settled result: the verdict user mode gives
//! ([`PortmasterVerdict`]); the first, held classification is the same
//! connection authorized again, not a second connection.

use std::collections::HashMap;

use super::Placement;
use crate::engine::{
    AuthAction, AuthDecision, AuthView, Callout, ConnectAction, ConnectDecision, ConnectView, Identity,
};

/// What Portmaster's user mode answers for a connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum PortmasterVerdict {
    /// Accept (the default for an application the user has not restricted).
    Accept,
    /// Permanent block of the application.
    PermanentBlock,
}

/// The Portmaster kext with a user-mode policy.
#[derive(Debug, Default)]
pub struct Portmaster {
    /// Applications (lower-cased) with a permanent block; others are accepted.
    pub blocked_apps: Vec<String>,
    /// The verdict cache by 5-tuple (local, remote, protocol).
    pub cache: HashMap<(String, String, u8), PortmasterVerdict>,
    /// Operations pended (first sight of a tuple).
    pub pended: u32,
}

impl Portmaster {
    /// Where its filters sit.
    pub const PLACEMENT: Placement = Placement {
        redirect_layer: None,
        redirect_action: "none (packet NAT at OUTBOUND_IPPACKET, FWP_ACTION_CALLOUT_TERMINATING)",
        filter_weight: "FWP_UINT8 15",
        sublayer: "PortmasterSublayer",
        sublayer_weight: 0xFFFF,
        clear_action_right: true,
        auth: "FWP_ACTION_CALLOUT_TERMINATING, CLEAR_ACTION_RIGHT: pend, then the user-mode verdict",
    };

    fn verdict(&self, app: &str) -> PortmasterVerdict {
        if self.blocked_apps.iter().any(|a| a.eq_ignore_ascii_case(app)) {
            PortmasterVerdict::PermanentBlock
        } else {
            PortmasterVerdict::Accept
        }
    }
}

impl Callout for Portmaster {
    fn connect_redirect(&mut self, _me: &Identity, _v: &ConnectView<'_>) -> ConnectDecision {
        ConnectDecision::new(ConnectAction::Continue, "no filter at this layer")
    }

    fn auth_connect(&mut self, _me: &Identity, v: &AuthView<'_>) -> AuthDecision {
        if !v.conn.protocol.is_tcp_or_udp() {
            return AuthDecision::new(AuthAction::Permit, "not tcp/udp: the packet layer decides");
        }
        let key = (v.conn.local.to_string(), v.remote.to_string(), v.conn.protocol.0);
        let verdict = match self.cache.get(&key) {
            Some(&cached) => cached,
            None => {
                // Pended (block+absorb), asked, completed, authorized again.
                self.pended += 1;
                let answer = self.verdict(&v.conn.app);
                self.cache.insert(key, answer);
                answer
            }
        };
        match verdict {
            PortmasterVerdict::Accept => AuthDecision::new(AuthAction::Permit, "accepted (after pend)"),
            PortmasterVerdict::PermanentBlock => AuthDecision::new(AuthAction::Block, "permanent block (hard)"),
        }
    }
}
