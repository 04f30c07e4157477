//! `wfpsampler`: Microsoft's WFPSampler, PROXY scenario, connect-redirect
//! callout `ClassifyProxyByALERedirect`.
//!
//! Source: `microsoft/Windows-driver-samples` at commit
//! 26a27df80772dbcfd69e6449b671d5c29eb5aedc, under
//! `network/trans/WFPSampler/`. CLS = `sys/ClassifyFunctions_ProxyCallouts.cpp`,
//! RD = `syslib/HelperFunctions_RedirectData.cpp`, SVC = `svc/Scenarios_Proxy.cpp`,
//! EXE = `exe/Scenarios_Proxy.cpp`, CL = `exe/HelperFunctions_CommandLine.cpp`,
//! FWS = `svc/Framework_WFPSamplerService.cpp`, WS = `lib/HelperFunctions_WinSock.cpp`.
//!
//! - **Filter**: `FWP_ACTION_CALLOUT_UNKNOWN` (SVC 431), weight `FWP_UINT8`
//!   0xF (SVC 429-430), in `WFPSAMPLER_SUBLAYER` (CL 1706) of weight 0x7FFE
//!   (FWS 448-454), or UNIVERSAL / INSPECTION with `-sl` (CL 1710-1727);
//!   persistent by default (CL 6747), boot-time with `-b` (CL 1535-1541);
//!   **no** `CLEAR_ACTION_RIGHT` (only BASIC_ACTION sets it,
//!   `svc/Scenarios_BasicAction.cpp:245,261`). Its conditions are the
//!   user's (`-ipra`, ...); the lab gives it "TCP/UDP leaving the machine".
//! - **Write right**: nothing at all without it (CLS 1843).
//! - **Redirect states** (CLS 1864-1903), with its own redirect handle
//!   (CLS 1851-1852): NOT_REDIRECTED and BY_OTHER go on; **BY_SELF →
//!   PERMIT, rights untouched** (CLS 1889-1894); **PREVIOUSLY_BY_SELF →
//!   nothing written**, "let the last redirection win" (CLS 1895-1899).
//! - **Acquire** (CLS 1908-1913, RD 208-231): per the docs BLOCK and the
//!   write right cleared ([`Acquire`]).
//! - **Reauthorization** (CLS 1917-1977): the newest `previousVersion` made
//!   by its own filter, or carrying another vendor's `localRedirectHandle`
//!   → PERMIT with the write right set back, no redirect (CLS 1942-1972).
//!   The source dereferences `previousVersion` without a NULL check; the lab
//!   treats an empty chain as matching neither.
//! - **Hop cap** (CLS 1979-2018): more than 3 versions in the chain made by
//!   its own filter → the failure exit: BLOCK with the write right *set*
//!   (CLS 2039-2052). The engine takes any block at connect-redirect as the
//!   layer's end (Block overrides Permit across sublayers).
//! - **The redirect** (CLS 1315-1449): `localRedirectHandle` = its handle
//!   (local proxy, CLS 1342-1345); context = original remote and local
//!   (CLS 1347-1365); remote = loopback when the local address is the
//!   wildcard, else the connection's own local address, with the proxy port
//!   (CLS 1386-1404) — its proxy therefore listens on the wildcard address in
//!   the lab; `localRedirectTargetPID` = the proxy service's PID
//!   (CLS 1411-1412, EXE 452-471); applied with
//!   `REAUTHORIZE_IF_MODIFIED_BY_OTHERS` (RD 81-104); then PERMIT and
//!   **`rights ^= WRITE`** (CLS 1431-1432). The toggle is ambiguous: after
//!   the documented acquire it sets the right back (a soft redirect), after
//!   Mullvad's observed one it clears it (a hard redirect). [`Acquire`]
//!   chooses; the lab's default is the documented reading.
//! - **Pending**: out-of-band by default (CLS 2020-2037, 1687-1783): pend,
//!   then the worker redirects on a copy of classifyOut and completes with
//!   it (RD 81-104). The settled result is the inline one above.
//! - **Records**: its user-mode helper queries the records and context and
//!   sets the records on the proxy's socket before it binds (WS 631-745);
//!   the proxy service that would call it is not published, so whether its
//!   proxy propagates is left open ([`crate::explore::PeerSpec`]), true in
//!   the matrix.
//! - **Auth-connect**: the PROXY scenario adds no filter there (SVC 340-600).
//!
//! Compared with the abstract `sampler` (kept as the lab's baseline): that
//! one counts redirect records as hops, skips whenever the newest version is
//! its own, excludes its proxy by filter condition and blocks hard; this one
//! counts only `previousVersion` entries, permits on reauthorization, has
//! no process exclusion (its proxy relies on the records: BY_SELF) and
//! blocks soft. They disagree, so both stay.

use core::net::{IpAddr, SocketAddr};

use arbiter::RedirectState;

use super::{Acquire, Placement};
use crate::engine::{
    AuthAction, AuthDecision, AuthView, Callout, ConnectAction, ConnectDecision, ConnectView, Identity,
};
use crate::profiles::Wants;

/// More than this many of its own modifications in the chain: block (CLS 1979-2018).
pub const WFPSAMPLER_MAX_OWN_MODIFICATIONS: usize = 3;

/// The WFPSampler proxy callout.
#[derive(Debug)]
pub struct WfpSampler {
    /// The acquire reading (decides what the `^=` toggle leaves).
    pub acquire: Acquire,
}

impl WfpSampler {
    /// Where its filter sits.
    pub const PLACEMENT: Placement = Placement {
        redirect_layer: Some("ALE_CONNECT_REDIRECT_V4/V6 (or ALE_BIND_REDIRECT, user's choice)"),
        redirect_action: "FWP_ACTION_CALLOUT_UNKNOWN",
        filter_weight: "FWP_UINT8 0xF",
        sublayer: "WFPSAMPLER_SUBLAYER (or UNIVERSAL / INSPECTION with -sl)",
        sublayer_weight: 0x7FFE,
        clear_action_right: false,
        auth: "none",
    };
}

impl Callout for WfpSampler {
    fn connect_redirect(&mut self, me: &Identity, v: &ConnectView<'_>) -> ConnectDecision {
        use ConnectAction::{Block, Continue, Permit, RedirectLocal};
        use RedirectState::{NotRedirected, PreviouslyRedirectedBySelf, RedirectedByOther, RedirectedBySelf};
        let newest = v.previous.first();
        let reauth_own = v.reauthorize && newest.is_some_and(|e| e.filter == me.filter);
        let reauth_others_local =
            v.reauthorize && newest.is_some_and(|e| e.filter != me.filter && e.local_redirect_handle);
        let own = v.previous.iter().filter(|e| e.filter == me.filter).count();
        let wants = Wants::Everything.wants(v);
        match (v.write_right, v.state) {
            // The filter's conditions do not match: the callout is not called.
            _ if !wants => ConnectDecision::new(Continue, "filter conditions"),
            (false, _) => ConnectDecision::new(Continue, "no write right: nothing written"),
            (true, RedirectedBySelf) => ConnectDecision::new(Permit, "redirected-by-self: permit, rights kept"),
            (true, PreviouslyRedirectedBySelf) => {
                ConnectDecision::new(Continue, "previously-redirected-by-self: nothing written")
            }
            // After the acquire; rights |= WRITE: a soft permit.
            (true, NotRedirected | RedirectedByOther) if reauth_own => {
                ConnectDecision::new(Permit, "reauthorized after its own modification")
            }
            (true, NotRedirected | RedirectedByOther) if reauth_others_local => {
                ConnectDecision::new(Permit, "reauthorized: another vendor's local redirect")
            }
            (true, NotRedirected | RedirectedByOther) if own > WFPSAMPLER_MAX_OWN_MODIFICATIONS => {
                ConnectDecision::new(Block, "more than 3 own modifications (STATUS_TOO_MANY_COMMANDS)")
            }
            (true, NotRedirected | RedirectedByOther) => match &me.proxy {
                Some(p) => {
                    let local = v.conn.local.ip();
                    let ip = if local.is_unspecified() {
                        if v.remote.is_ipv6() {
                            IpAddr::V6(core::net::Ipv6Addr::LOCALHOST)
                        } else {
                            IpAddr::V4(core::net::Ipv4Addr::LOCALHOST)
                        }
                    } else {
                        local
                    };
                    let to = SocketAddr::new(ip, p.listener(v.remote.is_ipv6()).port());
                    let d = ConnectDecision::new(RedirectLocal { to, target_pid: p.pid }, "proxy by ALE redirect")
                        .reauthorizing();
                    match self.acquire {
                        // BLOCK, no right; the toggle sets it back: soft.
                        Acquire::ClearsWrite => d,
                        // Untouched; the toggle clears it: hard.
                        Acquire::Unchanged => d.hard(),
                    }
                }
                None => ConnectDecision::new(Continue, "no proxy"),
            },
        }
    }

    fn auth_connect(&mut self, _me: &Identity, _v: &AuthView<'_>) -> AuthDecision {
        AuthDecision::new(AuthAction::Continue, "no auth-connect filter")
    }
}
