//! The bind phase of the lab: before a socket connects, every vendor with a
//! filter at ALE_BIND_REDIRECT classifies its bind on the WFP model
//! ([`arbiter_wfp_model::bind`]), in arbitration order. A rewrite moves the
//! connection's local address for every later layer (the seed: bind
//! redirection changes the local address of every connection on the
//! socket). Our vendor's bind filter is the driver's INSPECTION filter and
//! runs the real adapter's [`arbiter_callout::bind`] code, which audits
//! another vendor's rebind (audit kind 6).
//!
//! A socket that connects without binding first is bound implicitly to the
//! wildcard address; that is what the bind layer sees as the request. When
//! no one rebinds it, the stack picks the source address at connect time
//! (the lab: the host's address), as before this phase existed.

use core::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use arbiter::Instant;
use arbiter_callout::Family;
use arbiter_callout::bind::BindCounters;
use arbiter_callout::filters::{FilterLayer, filter_for};
use arbiter_wfp_model::bind::{BindData, BindFilter, BindHistory, BindRuntime, ClearRight, classify_bind};
use arbiter_wfp_model::{FlowInfo, Indication, Readings};
use wfp_ffi::{FWP_ACTION_TYPE, FWPS_CLASSIFY_OUT0};

use crate::engine::{Connection, Vendor};
use crate::ours::{ArbiterCallout, OWN_FILTER};

/// A vendor's classify function at ALE_BIND_REDIRECT.
pub trait BindCallout {
    /// `FWPM_ACTION0.type` and `FWPM_FILTER_FLAG_*` of its bind filter.
    fn bind_filter(&self) -> (FWP_ACTION_TYPE, u32);
    /// classifyFn: `classify` is the classification's `classifyContext`.
    fn classify_bind(
        &mut self,
        rt: &mut BindRuntime,
        data: &BindData,
        classify: u64,
        filter: u64,
        out: &mut FWPS_CLASSIFY_OUT0,
        now_ms: u64,
    );
}

/// Which readings the lab's bind layer runs under.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BindReadings {
    /// The history reading.
    pub history: BindHistory,
    /// The CLEAR_ACTION_RIGHT reading.
    pub clear_right: ClearRight,
}

impl Default for BindReadings {
    /// The history with the application's request; CLEAR_ACTION_RIGHT as
    /// Mullvad's driver reads it (its bind permit stays soft).
    fn default() -> Self {
        Self { history: BindHistory::WithRequest, clear_right: ClearRight::SublayerOnly }
    }
}

/// Runs the bind phase for `conn` (a fresh socket): returns the vendors
/// that changed its local address, newest last.
pub fn bind_phase(vendors: &mut [Vendor], conn: &mut Connection, now_ms: u64) -> Vec<String> {
    // Inspection filters cannot change a bind: without a rewriter there is
    // nothing to see, and the phase is skipped (as cheap as before it existed).
    let rewriter = vendors
        .iter_mut()
        .any(|v| v.callout.as_bind().is_some_and(|b| b.bind_filter().0 != wfp_ffi::FWP_ACTION_CALLOUT_INSPECTION));
    if !rewriter {
        return Vec::new();
    }
    let wildcard =
        if conn.local.is_ipv6() { IpAddr::V6(Ipv6Addr::UNSPECIFIED) } else { IpAddr::V4(Ipv4Addr::UNSPECIFIED) };
    let requested = SocketAddr::new(wildcard, conn.local.port());
    let data = BindData::new(conn.pid, &conn.app, conn.protocol.0, requested);
    let mut rt = BindRuntime::new(BindReadings::default().history, BindReadings::default().clear_right);
    let names: Vec<(u64, String)> = vendors.iter().map(|v| (v.id.filter, v.id.name.clone())).collect();
    let mut filters: Vec<BindFilter<'_>> = Vec::new();
    for (i, v) in vendors.iter_mut().enumerate() {
        let id = v.id.filter;
        let weight = v.id.weight;
        let Some(b) = v.callout.as_bind() else { continue };
        let (action_type, flags) = b.bind_filter();
        let filter_data = data.clone();
        filters.push(BindFilter {
            id,
            sublayer_weight: weight,
            sublayer: u64::try_from(i).unwrap_or(0),
            weight: u64::MAX,
            action_type,
            flags,
            classify: Some(Box::new(move |rt: &mut BindRuntime, classify, filter, out: &mut FWPS_CLASSIFY_OUT0| {
                b.classify_bind(rt, &filter_data, classify, filter, out, now_ms);
            })),
        });
    }
    let bound = classify_bind(&mut rt, &mut filters, data, &Readings::default());
    drop(filters);
    if bound.data.versions.is_empty() {
        return Vec::new();
    }
    conn.local = bound.data.local;
    bound
        .data
        .versions
        .iter()
        .rev()
        .map(|v| {
            names
                .iter()
                .find(|(f, _)| *f == v.filter)
                .map_or_else(|| format!("filter {}", v.filter), |(_, n)| n.clone())
        })
        .collect()
}

impl BindCallout for ArbiterCallout {
    fn bind_filter(&self) -> (FWP_ACTION_TYPE, u32) {
        filter_for(FilterLayer::BindRedirectV4)
            .map_or((wfp_ffi::FWP_ACTION_CALLOUT_INSPECTION, 0), |f| (f.action_type, f.flags))
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
        let v6 = data.requested.is_ipv6();
        let (layer, family) =
            if v6 { (FilterLayer::BindRedirectV6, Family::V6) } else { (FilterLayer::BindRedirectV4, Family::V4) };
        let flow = FlowInfo {
            protocol: data.protocol,
            local: data.requested,
            remote: data.requested,
            pid: data.pid,
            app: data.app.clone(),
            original_app: data.app.clone(),
            endpoint: 0,
            reauthorize: false,
            redirected: false,
            target_pid: None,
            original_destination: None,
            package: None,
        };
        let (action, flags) = self.bind_filter();
        let mut ind = Indication::new(layer, &flow, filter, action, u16::try_from(flags).unwrap_or(0), *out, None);
        let raw = ind.raw(classify);
        let mut counters = BindCounters::default();
        // SAFETY: the indication owns every buffer `raw` points into, for this call.
        unsafe {
            self.adapter.classify_bind_redirect(
                rt,
                family,
                &raw,
                &[OWN_FILTER],
                &mut counters,
                Instant::from_millis(now_ms),
            )
        };
        *out = *ind.out;
        let _ = self.drain_records();
    }
}

/// One line per rebind our inspection audited in `audit_log` (for reports
/// and the chain pictures): who moved which process's socket, from what, to
/// what.
pub fn rebind_notes(audit_log: &[u8]) -> Vec<String> {
    arbiter::audit::records(audit_log)
        .filter_map(Result::ok)
        .filter_map(|r| match r.event {
            arbiter::audit::Event::Rebind(b) => {
                Some(format!("rebind by filter {}: pid {} local {} -> {} ({})", b.by, b.pid, b.from, b.to, b.protocol))
            }
            _ => None,
        })
        .collect()
}
