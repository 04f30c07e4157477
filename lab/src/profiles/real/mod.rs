//! Peer profiles transcribed from real, published WFP drivers (issue 15).
//!
//! Each module describes, in its doc comment, where every behaviour comes
//! from: repository, commit, file and lines. The code is written from those
//! descriptions in our own words; nothing is copied.
//!
//! How the lab places them. The connect-redirect engine
//! ([`crate::engine`]) orders vendors by one weight and carries one write
//! right from vendor to vendor; each vendor stands for its own sublayer
//! (as the bind phase makes explicit, [`crate::bind`]). Across sublayers a
//! hard decision (write right cleared) binds everyone after it, a soft one
//! does not, and "Block overrides Permit" (Filter Arbitration). So each
//! profile's filter weight, sublayer weight and `CLEAR_ACTION_RIGHT` are
//! recorded in its [`Placement`]; what reaches the other vendors is what the
//! engine carries: the write right its classifyFn leaves, the layer data it
//! applies (with a previousVersion entry and `localRedirectHandle`), the
//! reauthorization it arms, its verdict at auth-connect. A
//! `CLEAR_ACTION_RIGHT` filter only clears the right for lower filters in
//! its *own* sublayer, which holds no other vendor here (the bind model's
//! default reading, [`arbiter_wfp_model::bind::ClearRight::SublayerOnly`]).
//! "Ours above/below" is the order of the two sublayers.
//!
//! Pending (WFPSampler and Mullvad at connect-redirect, Portmaster at
//! auth-connect) is modelled by its settled result: the lab classifies one
//! connection at a time, so a pended classification completes with the
//! decision the worker takes, before the next connection.

mod mullvad;
mod netebpfext;
mod portmaster;
mod proxybridge;
mod wfpsampler;

pub use mullvad::Mullvad;
pub use netebpfext::{NETEBPFEXT_TARGET_PID, NetEbpfExt};
pub use portmaster::{Portmaster, PortmasterVerdict};
pub use proxybridge::{ProxyBridge, ProxyBridgeVersion, Watch};
pub use wfpsampler::{WFPSAMPLER_MAX_OWN_MODIFICATIONS, WfpSampler};

/// What `FwpsAcquireWritableLayerDataPointer0` does to classifyOut.
///
/// Microsoft's page (Remarks) says it sets `actionType = FWP_ACTION_BLOCK`
/// and clears `FWPS_RIGHT_ACTION_WRITE`. Mullvad's driver comments that "in
/// practice" it changes nothing (`mullvad/win-split-tunnel` @0a0eb97f,
/// `src/firewall/classify.cpp:12-22`). Drivers that never write the right
/// back after the acquire (netebpfext), or toggle it (WFPSampler), return
/// different rights under the two readings, so their profiles take this as
/// a switch and the tests run both.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Acquire {
    /// As documented: BLOCK, write right cleared.
    ClearsWrite,
    /// As Mullvad observed: classifyOut untouched.
    Unchanged,
}

impl Acquire {
    /// Both readings.
    pub const ALL: [Self; 2] = [Self::ClearsWrite, Self::Unchanged];
}

/// Where a driver's filter sits, as its source sets it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Placement {
    /// The layer(s) of its redirect filter, or `None` when it has none.
    pub redirect_layer: Option<&'static str>,
    /// `FWPM_ACTION0.type` of its redirect filter.
    pub redirect_action: &'static str,
    /// Its filter weight as the source writes it.
    pub filter_weight: &'static str,
    /// Its sublayer and that sublayer's weight.
    pub sublayer: &'static str,
    /// Its sublayer's weight.
    pub sublayer_weight: u16,
    /// `FWPM_FILTER_FLAG_CLEAR_ACTION_RIGHT` on the redirect filter.
    pub clear_action_right: bool,
    /// Its filter at ALE_AUTH_CONNECT, if any: action type and behaviour.
    pub auth: &'static str,
}
