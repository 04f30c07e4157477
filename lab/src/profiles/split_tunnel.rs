//! `split-tunnel`: a VPN client's split-tunnel driver that moves excluded
//! applications' sockets off the tunnel by bind redirection, written from
//! Mullvad's published driver, `mullvad/win-split-tunnel` at commit
//! 0a0eb97f67d1dbcb3d08bda66d3b24f465d95475 (driver 1.3.0.0):
//!
//! - **Filter** (`src/firewall/filters.cpp:11-54`, `:65-108`): one filter per
//!   family at `FWPM_LAYER_ALE_BIND_REDIRECT_V4`/`_V6`, action
//!   `FWP_ACTION_CALLOUT_UNKNOWN`, weight `MAXUINT64`, flags
//!   `FWPM_FILTER_FLAG_CLEAR_ACTION_RIGHT` (with
//!   `FWPM_FILTER_FLAG_HAS_PROVIDER_CONTEXT`), in the daemon's baseline
//!   sublayer of weight 0xFFFF. It carries the condition IP_PROTOCOL != TCP;
//!   TCP is re-sourced the same way at ALE_CONNECT_REDIRECT
//!   (`filters.cpp:119-220`, `src/firewall/callouts.cpp:472-771`). The lab
//!   applies the one rewrite at bind for both protocols (the local address
//!   every later layer sees is the same; IVPN's IPv6 bind filter matches all
//!   protocols too, `ivpn/desktop-app` @fd93ea23, `.../WFP/Filters.cpp:51-55`).
//! - **Which processes** (`src/procmgmt/procmgmt.cpp:150-200`,
//!   `src/ioctl.cpp:330-354`): those whose image path is on the exclusion
//!   list, and their descendants. Others are left alone (CONTINUE).
//! - **The rewrite** (`src/firewall/callouts.cpp:146-274`, `:337-427`): with
//!   the write right only; reset to CONTINUE; acquire the writable
//!   `FWPS_BIND_REQUEST0`; if any version in `previousVersion` was made by
//!   its own filter, apply unchanged (its loop guard); if the requested
//!   address is unspecified or the tunnel address, set the address (keeping
//!   the port) to the Internet interface's address and return a soft PERMIT;
//!   apply (even unchanged), release.
//! - **Auth** (`callouts.cpp:883-1179`): a soft permit for excluded processes
//!   off the tunnel, a hard block for excluded processes on the tunnel
//!   address.
//!
//! The lab's variants move the bind to the host's address (Mullvad's case),
//! to a tunnel address (the opposite product choice: only listed apps use
//! the tunnel) or to loopback (Mullvad's failure path for a process it could
//! not classify in time, `src/firewall/pending.cpp:111-174`).

use core::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use arbiter_callout::bind::FwpsBind;
use arbiter_callout::sockaddr::{from_storage, to_storage};
use arbiter_wfp_model::bind::{BindData, BindRuntime};
use wfp_ffi::{
    FWP_ACTION_CALLOUT_UNKNOWN, FWP_ACTION_CONTINUE, FWP_ACTION_PERMIT, FWP_ACTION_TYPE,
    FWPM_FILTER_FLAG_CLEAR_ACTION_RIGHT, FWPS_CLASSIFY_OUT0, FWPS_RIGHT_ACTION_WRITE,
};

use crate::bind::BindCallout;
use crate::engine::{
    AuthAction, AuthDecision, AuthView, Callout, ConnectAction, ConnectDecision, ConnectView, HOST_V4, HOST_V6,
    Identity,
};

/// The tunnel interface's addresses in the lab.
pub const TUNNEL_V4: Ipv4Addr = Ipv4Addr::new(10, 64, 0, 2);
/// See [`TUNNEL_V4`].
pub const TUNNEL_V6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x64, 0, 0, 0, 0, 0, 2);

/// Where excluded processes' binds go.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum RebindTo {
    /// The host's (Internet interface's) address: off the tunnel.
    Host,
    /// The tunnel's address: into the tunnel.
    Tunnel,
    /// Loopback (the failure path).
    Loopback,
}

impl RebindTo {
    /// Every target.
    pub const ALL: [Self; 3] = [Self::Host, Self::Tunnel, Self::Loopback];

    /// Its name in reports.
    pub const fn name(self) -> &'static str {
        match self {
            Self::Host => "host",
            Self::Tunnel => "tunnel",
            Self::Loopback => "loopback",
        }
    }

    /// The address for a family.
    pub const fn ip(self, v6: bool) -> IpAddr {
        match (self, v6) {
            (Self::Host, false) => IpAddr::V4(HOST_V4),
            (Self::Host, true) => IpAddr::V6(HOST_V6),
            (Self::Tunnel, false) => IpAddr::V4(TUNNEL_V4),
            (Self::Tunnel, true) => IpAddr::V6(TUNNEL_V6),
            (Self::Loopback, false) => IpAddr::V4(Ipv4Addr::LOCALHOST),
            (Self::Loopback, true) => IpAddr::V6(Ipv6Addr::LOCALHOST),
        }
    }
}

/// The split-tunnel callout.
#[derive(Debug, Clone)]
pub struct SplitTunnel {
    /// Lower-cased image paths on the exclusion list.
    pub excluded: Vec<String>,
    /// Where their binds go.
    pub to: RebindTo,
    /// Binds it rewrote.
    pub rewrites: u32,
}

impl SplitTunnel {
    /// Excludes `apps` and sends their binds to `to`.
    pub fn new(apps: &[&str], to: RebindTo) -> Self {
        Self { excluded: apps.iter().map(|a| a.to_lowercase()).collect(), to, rewrites: 0 }
    }

    fn is_excluded(&self, app: &str) -> bool {
        let app = app.to_lowercase();
        self.excluded.contains(&app)
    }

    /// Does it rewrite a requested local `ip`? Unspecified or the tunnel's.
    fn moves(ip: IpAddr) -> bool {
        ip.is_unspecified() || ip == IpAddr::V4(TUNNEL_V4) || ip == IpAddr::V6(TUNNEL_V6)
    }
}

impl BindCallout for SplitTunnel {
    fn bind_filter(&self) -> (FWP_ACTION_TYPE, u32) {
        (FWP_ACTION_CALLOUT_UNKNOWN, FWPM_FILTER_FLAG_CLEAR_ACTION_RIGHT)
    }

    fn classify_bind(
        &mut self,
        rt: &mut BindRuntime,
        data: &BindData,
        classify: u64,
        filter: u64,
        out: &mut FWPS_CLASSIFY_OUT0,
        _now_ms: u64,
    ) {
        use ClassifyStep::{Continue, Rewrite};
        let step = match (out.rights & FWPS_RIGHT_ACTION_WRITE != 0, self.is_excluded(&data.app)) {
            // No write right: return without writing (callouts.cpp:376-381).
            (false, _) => return,
            // Not excluded: DONT_SPLIT, CONTINUE (callouts.cpp:392-426).
            (true, false) => Continue,
            (true, true) => Rewrite,
        };
        out.actionType = FWP_ACTION_CONTINUE;
        if step == Continue {
            return;
        }
        let Ok(h) =
            rt.acquire_bind_classify_handle(core::ptr::without_provenance(usize::try_from(classify).unwrap_or(0)))
        else {
            return;
        };
        let Ok(req) = rt.acquire_writable_bind_request(h, filter, out) else {
            rt.release_bind_classify_handle(h);
            return;
        };
        // Reset after the acquire (callouts.cpp:159-193).
        out.actionType = FWP_ACTION_CONTINUE;
        out.rights |= FWPS_RIGHT_ACTION_WRITE;
        // SAFETY: the model's writable data, valid until apply.
        let r = unsafe { &mut *req.as_ptr() };
        let mut mine = false;
        let mut p = r.previousVersion;
        // SAFETY: the model's history, valid until apply.
        while let Some(v) = unsafe { p.as_ref() } {
            mine |= v.modifierFilterId == filter;
            p = v.previousVersion;
        }
        if let Some(local) = from_storage(&r.localAddressAndPort)
            && !mine
            && Self::moves(local.ip())
        {
            let to = SocketAddr::new(self.to.ip(local.is_ipv6()), local.port());
            r.localAddressAndPort = to_storage(&to);
            self.rewrites += 1;
            // Soft permit: the write right stays (callouts.cpp:219-258).
            out.actionType = FWP_ACTION_PERMIT;
        }
        rt.apply_bind_request(h, req);
        rt.release_bind_classify_handle(h);
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum ClassifyStep {
    Continue,
    Rewrite,
}

impl Callout for SplitTunnel {
    fn connect_redirect(&mut self, _me: &Identity, _v: &ConnectView<'_>) -> ConnectDecision {
        // The TCP re-sourcing is applied at bind in the lab (module docs);
        // it never changes the remote address.
        ConnectDecision::new(ConnectAction::Continue, "local-address rewriter only")
    }

    fn auth_connect(&mut self, _me: &Identity, v: &AuthView<'_>) -> AuthDecision {
        let on_tunnel = v.conn.local.ip() == IpAddr::V4(TUNNEL_V4) || v.conn.local.ip() == IpAddr::V6(TUNNEL_V6);
        match (self.is_excluded(&v.conn.app), on_tunnel, self.to) {
            // An excluded process on the tunnel address: hard block (callouts.cpp:1028-1179).
            (true, true, RebindTo::Host) => AuthDecision::new(AuthAction::Block, "excluded app on the tunnel"),
            // Mullvad soft-permits here (callouts.cpp:883-1026); a soft permit
            // changes nothing a continue would not, so the lab continues.
            (true, ..) => AuthDecision::new(AuthAction::Continue, "excluded app off the tunnel"),
            (false, ..) => AuthDecision::new(AuthAction::Continue, "not excluded"),
        }
    }

    fn as_bind(&mut self) -> Option<&mut dyn BindCallout> {
        Some(self)
    }
}
