//! `netebpfext`: eBPF for Windows' network extension, the sock_addr connect
//! hooks (`BPF_CGROUP_INET4/6_CONNECT` at ALE_CONNECT_REDIRECT, and the
//! auth-connect filter that enforces their verdicts).
//!
//! Source: `microsoft/ebpf-for-windows` at commit
//! 0be2d1c3f36cf85146faa21df3550b6a92712545. SA =
//! `netebpfext/net_ebpf_ext_sock_addr.c`, EXT = `netebpfext/net_ebpf_ext.c`,
//! EXH = `netebpfext/net_ebpf_ext.h`, SAH = `netebpfext/net_ebpf_ext_sock_addr.h`.
//!
//! - **Filters** (SA 552-585, EXT 544-660): at ALE_CONNECT_REDIRECT,
//!   `FWP_ACTION_CALLOUT_UNKNOWN`; at ALE_AUTH_CONNECT,
//!   `FWP_ACTION_CALLOUT_TERMINATING` (EXT 603-604); weight `FWP_EMPTY`
//!   (BFE picks, EXT 616); flags `PERMIT_IF_CALLOUT_UNREGISTERED` only, **no**
//!   `CLEAR_ACTION_RIGHT`, not persistent (EXT 605-607); sublayers
//!   EBPF_DEFAULT / CGROUP_CONNECT_V4 / _V6, all weight 0xFFFF (EXT 27,
//!   38-49; SAH 93-99; EXH 330-331).
//! - **Connect-redirect** (SA 2827-3075), in order:
//!   - no write right → CONTINUE (SA 2860-2866);
//!   - reauthorization → PERMIT, programs not re-run (SA 2895-2906);
//!   - its own redirect handle says **BY_SELF or PREVIOUSLY_BY_SELF** →
//!     CONTINUE (SA 2927-2940); NOT_REDIRECTED and BY_OTHER run the program;
//!   - the program (the lab's: proxy every TCP/UDP flow leaving the machine
//!     to its local proxy, except the proxy's own connections, which a
//!     program tells by `bpf_get_current_pid_tgid`) returns SOFT, HARD or
//!     REJECT (SA 1987-2002); no rewrite → CONTINUE (SA 3057-3063);
//!   - a rewrite: acquire (docs: BLOCK, write right cleared, never set
//!     back: [`Acquire`]); **if any earlier version carries another
//!     vendor's `localRedirectHandle`, the rewrite is skipped** and the data
//!     applied unchanged (SA 2589-2608, 2640-2645); else remote = the new
//!     destination, `localRedirectHandle` = its own, **`localRedirectTargetPID`
//!     = 1234**, a constant (SA 13, 2660-2661), context from the program
//!     (SA 2663-2667); applied with flags **0** (no reauthorization,
//!     SA 2670-2673); PERMIT (SA 3057-3063). No pend, no absorb.
//!   - The constant target PID: the lab runs the eBPF proxy as PID 1234
//!     ([`NETEBPFEXT_TARGET_PID`]) so that the redirect reaches it (a second
//!     copy in the explorer gets its own PID and the same rule); a real
//!     proxy with another PID would not be the process WFP expects.
//! - **Records**: never queried or set (no `SIO_*_REDIRECT_RECORDS` in the
//!   repository); a proxy built on it does its own, so propagation is left
//!   open in the explorer.
//! - **Loop guard**: its own redirect state, reauthorization, another
//!   vendor's local redirect anywhere in the chain; no hop cap, no PID
//!   exemption.
//! - **Auth-connect** (SA 2459-2587): no write-right check; the verdict
//!   cached at connect-redirect for (endpoint, tuple), else SOFT: SOFT →
//!   PERMIT; HARD → PERMIT and the right cleared; REJECT → BLOCK and the
//!   right cleared (SA 2560-2575). The lab's program never rejects.

use arbiter::RedirectState;

use super::{Acquire, Placement};
use crate::engine::{
    AuthAction, AuthDecision, AuthView, Callout, ConnectAction, ConnectDecision, ConnectView, Identity,
};
use crate::profiles::Wants;

/// `localRedirectTargetPID` as netebpfext writes it (SA 13).
pub const NETEBPFEXT_TARGET_PID: u64 = 1234;

/// The netebpfext connect hooks with one connect program attached.
#[derive(Debug)]
pub struct NetEbpfExt {
    /// The acquire reading (decides the rights a redirect returns with).
    pub acquire: Acquire,
}

impl NetEbpfExt {
    /// Where its filters sit.
    pub const PLACEMENT: Placement = Placement {
        redirect_layer: Some("ALE_CONNECT_REDIRECT_V4/V6"),
        redirect_action: "FWP_ACTION_CALLOUT_UNKNOWN",
        filter_weight: "FWP_EMPTY (auto)",
        sublayer: "EBPF_HOOK_CGROUP_CONNECT_V4/V6_SUBLAYER or EBPF_DEFAULT_SUBLAYER",
        sublayer_weight: 0xFFFF,
        clear_action_right: false,
        auth: "FWP_ACTION_CALLOUT_TERMINATING: cached verdict, SOFT permit / HARD permit / REJECT block",
    };
}

impl Callout for NetEbpfExt {
    fn connect_redirect(&mut self, me: &Identity, v: &ConnectView<'_>) -> ConnectDecision {
        use ConnectAction::{Continue, Permit, RedirectLocal};
        use RedirectState::{NotRedirected, PreviouslyRedirectedBySelf, RedirectedByOther, RedirectedBySelf};
        let others_local = v.previous.iter().any(|e| e.filter != me.filter && e.local_redirect_handle);
        let own_proxy = me.proxy.as_ref().is_some_and(|p| p.pid == v.conn.pid);
        let redirects = Wants::Everything.wants(v) && !own_proxy;
        let acquired = |d: ConnectDecision| match self.acquire {
            Acquire::ClearsWrite => d.hard(),
            Acquire::Unchanged => d,
        };
        match (v.write_right, v.reauthorize, v.state) {
            (false, ..) => ConnectDecision::new(Continue, "no write right: soft, continue"),
            (true, true, _) => ConnectDecision::new(Permit, "reauthorization: permit, program not re-run"),
            (true, false, RedirectedBySelf | PreviouslyRedirectedBySelf) => {
                ConnectDecision::new(Continue, "own redirect state: continue")
            }
            (true, false, NotRedirected | RedirectedByOther) if !redirects => {
                ConnectDecision::new(Continue, "program: proceed, no rewrite")
            }
            // Acquired, applied unchanged; PERMIT with the right as the acquire left it.
            (true, false, NotRedirected | RedirectedByOther) if others_local => {
                acquired(ConnectDecision::new(Permit, "another vendor's local redirect in the chain: not rewritten"))
            }
            (true, false, NotRedirected | RedirectedByOther) => match &me.proxy {
                Some(p) => acquired(ConnectDecision::new(
                    RedirectLocal { to: p.listener(v.remote.is_ipv6()), target_pid: p.pid },
                    "program redirect",
                )),
                None => ConnectDecision::new(Continue, "no proxy"),
            },
        }
    }

    fn auth_connect(&mut self, _me: &Identity, _v: &AuthView<'_>) -> AuthDecision {
        // The program's verdict was SOFT (it never rejects): PERMIT, rights untouched.
        AuthDecision::new(AuthAction::Permit, "cached verdict: proceed-soft")
    }
}
