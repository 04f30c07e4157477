//! Redirect records, redirect states and redirect handles.
//!
//! Sources: the seed "Using Bind or Connect Redirection" and
//! FwpsQueryConnectionRedirectState0 / FWPS_CONNECTION_REDIRECT_STATE
//! (learn.microsoft.com). A proxy copies the redirect records of the
//! connection it accepted onto its outbound socket
//! (SIO_SET_WFP_CONNECTION_REDIRECT_RECORDS), so the records name every
//! redirector on the way. "If the connection is redirected by your callout
//! driver, or if it was previously redirected by your callout driver, the
//! callout driver should do nothing."
//!
//! The four states, for the callout holding `handle`:
//! - `FWPS_CONNECTION_NOT_REDIRECTED`: no records;
//! - `FWPS_CONNECTION_REDIRECTED_BY_SELF`: the newest record is `handle`'s;
//! - `FWPS_CONNECTION_REDIRECTED_BY_OTHER`: records, none of them `handle`'s;
//! - `FWPS_CONNECTION_PREVIOUSLY_REDIRECTED_BY_SELF`: `handle` redirected
//!   the chain earlier, someone else since.

use wfp_ffi::{
    FWPS_CONNECTION_NOT_REDIRECTED, FWPS_CONNECTION_PREVIOUSLY_REDIRECTED_BY_SELF, FWPS_CONNECTION_REDIRECT_STATE,
    FWPS_CONNECTION_REDIRECTED_BY_OTHER, FWPS_CONNECTION_REDIRECTED_BY_SELF,
};

/// One redirect record: the redirect handle that made it and its context.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct RedirectRecord {
    /// The redirector's handle (FwpsRedirectHandleCreate0), as an address.
    pub handle: usize,
    /// The `localRedirectContext` bytes it applied.
    pub context: Vec<u8>,
}

/// FwpsQueryConnectionRedirectState0 for the callout holding `handle`.
pub fn redirect_state(records: &[RedirectRecord], handle: usize) -> FWPS_CONNECTION_REDIRECT_STATE {
    match records.last() {
        None => FWPS_CONNECTION_NOT_REDIRECTED,
        Some(last) if last.handle == handle => FWPS_CONNECTION_REDIRECTED_BY_SELF,
        Some(_) if records.iter().any(|r| r.handle == handle) => FWPS_CONNECTION_PREVIOUSLY_REDIRECTED_BY_SELF,
        Some(_) => FWPS_CONNECTION_REDIRECTED_BY_OTHER,
    }
}

/// Does a connection to `target` reach a listener bound to `listener`?
///
/// A listening socket accepts connections to the address it is bound to
/// (or, bound to the wildcard, to any of the host's addresses) on its port.
/// Our proxy, like every local proxy in the lab, binds the loopback
/// addresses 127.0.0.1 and ::1 only (`proxy-not-local` in the rules), so a
/// redirect to the flow's own local address with the listener's port (the
/// seed's `INETADDR_SET_ADDRESS` branch) reaches nothing.
pub fn listener_reachable(listener: std::net::SocketAddr, target: std::net::SocketAddr) -> bool {
    listener.port() == target.port()
        && listener.is_ipv6() == target.is_ipv6()
        && (listener.ip() == target.ip() || listener.ip().is_unspecified())
}
