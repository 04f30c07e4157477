//! The filters the driver adds, defined once: the driver shell adds exactly
//! these, and the lab installs exactly these in the WFP model.
//!
//! Action types (FWPS_ACTION0 page, learn.microsoft.com, "type" member):
//!
//! - `FWP_ACTION_CALLOUT_TERMINATING`: "If the callout driver's classifyFn
//!   callout function returns any other value [than BLOCK or PERMIT] ..., it
//!   is handled the same as if the callout driver's classifyFn callout
//!   function returned FWP_ACTION_BLOCK." Our connect-redirect and
//!   auth-connect verdicts include `continue` (no rule, bypass, C2, A6, A7,
//!   a failed rewrite, a held flow's fallback), so a TERMINATING filter
//!   would block every flow we do not proxy.
//! - `FWP_ACTION_CALLOUT_UNKNOWN`: the classifyFn "can return any of the
//!   following values": BLOCK, PERMIT, CONTINUE. That is what both deciding
//!   layers need.
//! - `FWP_ACTION_CALLOUT_INSPECTION`: only CONTINUE; endpoint closure only
//!   observes.
//!
//! Each filter sits in our own sublayer (weight from configuration) with an
//! automatic weight (`FWP_EMPTY`) and no flags: in particular not
//! `FWPM_FILTER_FLAG_CLEAR_ACTION_RIGHT`, which would make every permit of
//! ours hard and shut out the vendors below us.

use wfp_ffi::{FWP_ACTION_CALLOUT_INSPECTION, FWP_ACTION_CALLOUT_UNKNOWN, FWP_ACTION_TYPE};

/// A layer we filter at.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum FilterLayer {
    /// FWPM_LAYER_ALE_CONNECT_REDIRECT_V4.
    ConnectRedirectV4,
    /// FWPM_LAYER_ALE_CONNECT_REDIRECT_V6.
    ConnectRedirectV6,
    /// FWPM_LAYER_ALE_AUTH_CONNECT_V4.
    AuthConnectV4,
    /// FWPM_LAYER_ALE_AUTH_CONNECT_V6.
    AuthConnectV6,
    /// FWPM_LAYER_ALE_ENDPOINT_CLOSURE_V4.
    EndpointClosureV4,
    /// FWPM_LAYER_ALE_ENDPOINT_CLOSURE_V6.
    EndpointClosureV6,
    /// FWPM_LAYER_ALE_BIND_REDIRECT_V4 (inspection only, [`crate::bind`]).
    BindRedirectV4,
    /// FWPM_LAYER_ALE_BIND_REDIRECT_V6 (inspection only, [`crate::bind`]).
    BindRedirectV6,
}

impl FilterLayer {
    /// The management layer key.
    pub const fn key(self) -> wfp_ffi::GUID {
        use wfp_ffi::layers::*;
        match self {
            Self::ConnectRedirectV4 => FWPM_LAYER_ALE_CONNECT_REDIRECT_V4,
            Self::ConnectRedirectV6 => FWPM_LAYER_ALE_CONNECT_REDIRECT_V6,
            Self::AuthConnectV4 => FWPM_LAYER_ALE_AUTH_CONNECT_V4,
            Self::AuthConnectV6 => FWPM_LAYER_ALE_AUTH_CONNECT_V6,
            Self::EndpointClosureV4 => FWPM_LAYER_ALE_ENDPOINT_CLOSURE_V4,
            Self::EndpointClosureV6 => FWPM_LAYER_ALE_ENDPOINT_CLOSURE_V6,
            Self::BindRedirectV4 => FWPM_LAYER_ALE_BIND_REDIRECT_V4,
            Self::BindRedirectV6 => FWPM_LAYER_ALE_BIND_REDIRECT_V6,
        }
    }

    /// Is this an IPv6 layer?
    pub const fn is_v6(self) -> bool {
        matches!(self, Self::ConnectRedirectV6 | Self::AuthConnectV6 | Self::EndpointClosureV6 | Self::BindRedirectV6)
    }
}

/// One filter we add, with its callout on the same layer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FilterSpec {
    /// Its layer.
    pub layer: FilterLayer,
    /// `FWPM_ACTION0.type`.
    pub action_type: FWP_ACTION_TYPE,
    /// `FWPM_FILTER0.flags` (`FWPM_FILTER_FLAG_*`).
    pub flags: u32,
    /// `FWPM_FILTER0.weight`: `None` is `FWP_EMPTY` (the engine assigns one).
    pub weight: Option<u64>,
}

/// Every filter the driver adds, in the order it adds them. The first two
/// are connect-redirect V4 and V6 (their run-time ids go to
/// `Callout::set_own_filters`).
pub const FILTERS: [FilterSpec; 8] = [
    spec(FilterLayer::ConnectRedirectV4, FWP_ACTION_CALLOUT_UNKNOWN),
    spec(FilterLayer::ConnectRedirectV6, FWP_ACTION_CALLOUT_UNKNOWN),
    spec(FilterLayer::AuthConnectV4, FWP_ACTION_CALLOUT_UNKNOWN),
    spec(FilterLayer::AuthConnectV6, FWP_ACTION_CALLOUT_UNKNOWN),
    spec(FilterLayer::EndpointClosureV4, FWP_ACTION_CALLOUT_INSPECTION),
    spec(FilterLayer::EndpointClosureV6, FWP_ACTION_CALLOUT_INSPECTION),
    // Bind redirect: we only look (who moved a socket's local address),
    // never rewrite; INSPECTION also means an unregistered callout's filter
    // is ignored rather than blocking (FwpsCalloutRegister0 remarks).
    spec(FilterLayer::BindRedirectV4, FWP_ACTION_CALLOUT_INSPECTION),
    spec(FilterLayer::BindRedirectV6, FWP_ACTION_CALLOUT_INSPECTION),
];

const fn spec(layer: FilterLayer, action_type: FWP_ACTION_TYPE) -> FilterSpec {
    FilterSpec { layer, action_type, flags: 0, weight: None }
}

/// Our filter at `layer`.
pub fn filter_for(layer: FilterLayer) -> Option<&'static FilterSpec> {
    FILTERS.iter().find(|f| f.layer == layer)
}

/// The default weight of our sublayer when configuration names none.
pub const DEFAULT_SUBLAYER_WEIGHT: u16 = 0x8000;
