//! Who decided each classify drop or allow, and, with our audit log, whether
//! it was us.
//!
//! A netEvent names the filter that decided (classifyDrop/classifyAllow
//! filterId) and, per sublayer, the filter that terminated there
//! (terminatingFiltersInfo: Microsoft's "Troubleshooting UWP App Connectivity
//! Issues"). The filter's provider and sublayer come from the same capture or
//! from a filters.xml/wfpstate.xml of the same boot (filter ids change across
//! reboots and BFE restarts, as that page warns).
//!
//! The audit join matches an event with our audit records by protocol,
//! addresses and ports (the remote as our callout saw it, or as we rewrote it)
//! and by time. Audit time is the driver's interrupt time (milliseconds since
//! boot); netEvent time is UTC. With `boot_ms` (the machine's boot time) the
//! two are compared directly; without it the offset is estimated as the
//! median over the 5-tuple matches, and reported.

use core::net::SocketAddr;

use arbiter::audit::{AuditRecord, Event};
use arbiter::{Layer as CoreLayer, Verdict};

use crate::Machine;
use crate::inventory::Inventory;
use crate::model::{EventType, Layer, LayerKind, NetEvent};
use crate::vendors::{self, OURS};

/// A filter, named for people.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Named {
    /// filterId.
    pub id: u64,
    /// Filter name (empty when the id is not in the files).
    pub name: String,
    /// Vendor (provider name or product), `?` when unknown.
    pub vendor: String,
    /// Sublayer name or key.
    pub sublayer: String,
    /// The filter is ours.
    pub ours: bool,
    /// The id is in the files.
    pub found: bool,
}

/// One drop or allow, attributed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Attributed {
    /// Index into [`Machine::events`].
    pub event: usize,
    /// The layer, when it is an inventoried one.
    pub layer: Option<Layer>,
    /// The deciding filter.
    pub decided_by: Option<Named>,
    /// terminatingFiltersInfo, named.
    pub chain: Vec<(Named, String)>,
}

/// Names a filter id with what the files say about it. `own_filters` are
/// filter ids our audit log says are ours.
pub fn name_filter(m: &Machine, inv: &Inventory, id: u64, own_filters: &[u64]) -> Named {
    let Some(b) = m.index.get(&id) else {
        let ours = own_filters.contains(&id);
        return Named {
            id,
            name: String::new(),
            vendor: if ours { OURS.id.to_owned() } else { "?".to_owned() },
            sublayer: String::new(),
            ours,
            found: false,
        };
    };
    let provider = m.provider(b.provider.as_deref());
    let inventoried = inv.by_id.get(&id).and_then(|&i| inv.vendor_of_filter(i));
    let known = vendors::recognise(
        [b.provider.as_deref(), Some(b.sublayer.as_str())].into_iter().flatten(),
        [Some(b.name.as_str()), provider.map(|p| p.name.as_str())].into_iter().flatten(),
    );
    let vendor = match (inventoried, provider, known) {
        (Some(v), ..) => v.name.clone(),
        (None, _, Some(k)) => k.product.to_owned(),
        (None, Some(p), None) if !p.name.is_empty() => p.name.clone(),
        _ => b.provider.clone().unwrap_or_else(|| "?".to_owned()),
    };
    let ours = own_filters.contains(&id) || known.is_some_and(|k| k.id == OURS.id);
    Named { id, name: b.name.clone(), vendor, sublayer: m.sublayer_name(&b.sublayer), ours, found: true }
}

/// Attributes every kept event.
pub fn attribute(m: &Machine, inv: &Inventory, own_filters: &[u64]) -> Vec<Attributed> {
    m.events
        .iter()
        .enumerate()
        .map(|(i, e)| {
            let layer = e
                .layer_id
                .and_then(Layer::from_runtime_id)
                .or_else(|| e.filter.and_then(|f| m.index.get(&f)).and_then(|b| Layer::from_symbol(&b.layer)));
            Attributed {
                event: i,
                layer,
                decided_by: e.filter.map(|f| name_filter(m, inv, f, own_filters)),
                chain: e
                    .chain
                    .iter()
                    .map(|t| {
                        let mut n = name_filter(m, inv, t.filter, own_filters);
                        // The event's own name for the sublayer that terminated.
                        if !t.sublayer.is_empty() {
                            n.sublayer.clone_from(&t.sublayer);
                        }
                        (n, t.action.trim_start_matches("FWP_ACTION_").to_ascii_lowercase())
                    })
                    .collect(),
            }
        })
        .collect()
}

/// One of our audit records, flattened for the join.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OurDecision {
    /// Sequence number.
    pub seq: u64,
    /// Interrupt time, ms.
    pub at_ms: u64,
    /// `connect-redirect` or `auth-connect`.
    pub layer: &'static str,
    /// IP protocol.
    pub protocol: u8,
    /// Local address.
    pub local: SocketAddr,
    /// Remote address as our callout saw it.
    pub remote: SocketAddr,
    /// Where we sent it (a `proxy` verdict).
    pub redirected_to: Option<SocketAddr>,
    /// Verdict name.
    pub verdict: &'static str,
    /// Reason name.
    pub reason: &'static str,
    /// Our filter id then.
    pub own_filter: Option<u64>,
}

/// Flattens the decision records of an audit log.
pub fn our_decisions(records: &[AuditRecord<'_>]) -> Vec<OurDecision> {
    records
        .iter()
        .filter_map(|r| {
            let (layer, flow, outcome, own) = match &r.event {
                Event::ConnectRedirect(c) => {
                    (CoreLayer::ConnectRedirect, c.input.flow, c.outcome, Some(c.env.own_filter))
                }
                Event::AuthConnect(a) => (CoreLayer::AuthConnect, a.input.flow, a.outcome, None),
                Event::Fallback(f) => (CoreLayer::ConnectRedirect, f.input.flow, f.outcome, None),
                // Not decisions on a connection: a departure, another vendor's rebind, a boot-guard change.
                Event::Departure(_) | Event::Rebind(_) | Event::Guard(_) => return None,
            };
            Some(OurDecision {
                seq: r.seq,
                at_ms: r.at.as_millis(),
                layer: layer.name(),
                protocol: flow.protocol.0,
                local: flow.local,
                remote: flow.remote,
                redirected_to: outcome.redirect.map(|t| t.remote),
                verdict: outcome.verdict.name(),
                reason: outcome.reason.name(),
                own_filter: own,
            })
        })
        .collect()
}

/// Our filter ids, as the audit log's connect-redirect records state them.
///
/// The driver hands the core one fixed stand-in for its run-time filter ids
/// (`arbiter_callout::OWN_FILTER`, since WFP assigns new ids at every BFE
/// start), so a log from the driver names no WFP id: there our filters are
/// recognised in the capture by our provider, sublayer and callout keys.
/// Logs that do carry a run-time id (recorded fixtures, older builds) still
/// name it here.
pub fn own_filter_ids(ours: &[OurDecision]) -> Vec<u64> {
    let mut ids: Vec<u64> = ours
        .iter()
        .filter_map(|d| d.own_filter)
        .filter(|&f| f != 0 && f != arbiter_lab::ours::ADAPTER_OWN_FILTER)
        .collect();
    ids.sort_unstable();
    ids.dedup();
    ids
}

fn same_endpoint(event: Option<SocketAddr>, ours: SocketAddr, check_port: bool) -> bool {
    let Some(e) = event else { return true };
    let ip_ok = e.ip() == ours.ip() || e.ip().is_unspecified() || ours.ip().is_unspecified();
    ip_ok && (!check_port || e.port() == 0 || ours.port() == 0 || e.port() == ours.port())
}

fn tuple_matches(e: &NetEvent, d: &OurDecision) -> bool {
    let proto = e.protocol.is_none_or(|p| p == d.protocol);
    let remote =
        same_endpoint(e.remote, d.remote, true) || d.redirected_to.is_some_and(|to| same_endpoint(e.remote, to, true));
    proto && remote && same_endpoint(e.local, d.local, true) && (e.remote.is_some() || e.local.is_some())
}

/// Who decided one connection.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Joined {
    /// Index into [`Machine::events`].
    pub event: usize,
    /// Our records for the same connection, closest in time first.
    pub ours: Vec<OurDecision>,
    /// `us`, `other vendor: NAME`, or `unknown`.
    pub decided: String,
    /// One sentence of explanation.
    pub why: String,
}

/// The join's result.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Join {
    /// Per kept event.
    pub rows: Vec<Joined>,
    /// UTC ms of interrupt time 0 used (given, or estimated).
    pub boot_ms: Option<i64>,
    /// The offset was estimated from the data.
    pub estimated: bool,
}

/// How far apart in time an event and our record may be, ms.
pub const WINDOW_MS: i64 = 2_000;

/// Joins the events with our decisions.
pub fn join(m: &Machine, attributed: &[Attributed], ours: &[OurDecision], boot_ms: Option<i64>) -> Join {
    let (boot, estimated) = match boot_ms {
        Some(b) => (Some(b), false),
        None => {
            let mut offsets: Vec<i64> = Vec::new();
            for a in attributed {
                let Some(e) = m.events.get(a.event) else { continue };
                let Some(t) = e.time_ms else { continue };
                let want = layer_name(a.layer);
                let hits: Vec<&OurDecision> = ours.iter().filter(|d| tuple_matches(e, d)).collect();
                let same_layer: Vec<&&OurDecision> =
                    hits.iter().filter(|d| want.is_none_or(|w| w == d.layer)).collect();
                // Only an unambiguous match says how the clocks line up.
                if let [d] = same_layer.as_slice() {
                    offsets.push(t - i64::try_from(d.at_ms).unwrap_or(i64::MAX));
                }
            }
            offsets.sort_unstable();
            (offsets.get(offsets.len() / 2).copied(), true)
        }
    };
    let rows = attributed
        .iter()
        .filter_map(|a| {
            let e = m.events.get(a.event)?;
            let mut hits: Vec<(i64, OurDecision)> = ours
                .iter()
                .filter(|d| tuple_matches(e, d))
                .filter_map(|d| {
                    let at = i64::try_from(d.at_ms).ok()?;
                    let dt = match (e.time_ms, boot) {
                        (Some(t), Some(b)) => (t - (b + at)).abs(),
                        _ => 0,
                    };
                    (dt <= WINDOW_MS).then(|| (dt, d.clone()))
                })
                .collect();
            // Records of the event's own layer first, then the closest in time.
            let want = layer_name(a.layer);
            hits.sort_by_key(|(dt, d)| (want.is_some_and(|w| w != d.layer), *dt, d.seq));
            let ours_hits: Vec<OurDecision> = hits.into_iter().map(|(_, d)| d).collect();
            let (decided, why) = verdict_of(e, a, &ours_hits);
            Some(Joined { event: a.event, ours: ours_hits, decided, why })
        })
        .collect();
    Join { rows, boot_ms: boot, estimated }
}

/// Our audit layer name for an event's layer.
fn layer_name(layer: Option<Layer>) -> Option<&'static str> {
    layer.map(|l| match l.kind {
        LayerKind::ConnectRedirect | LayerKind::BindRedirect => CoreLayer::ConnectRedirect.name(),
        LayerKind::AuthConnect => CoreLayer::AuthConnect.name(),
    })
}

fn verdict_of(e: &NetEvent, a: &Attributed, ours: &[OurDecision]) -> (String, String) {
    let by = a.decided_by.as_ref();
    let our_block = ours.iter().find(|d| d.verdict == Verdict::Block.name());
    match (e.kind, by) {
        (_, Some(n)) if n.ours => {
            let reason = ours
                .first()
                .map_or_else(|| "no matching audit record".to_owned(), |d| format!("{} ({})", d.verdict, d.reason));
            ("us".to_owned(), format!("our filter {} decided; our record: {reason}", n.id))
        }
        (EventType::Drop, Some(n)) if n.found => {
            let ours_said = ours.first().map_or_else(
                || "we have no record of this connection".to_owned(),
                |d| format!("we said {} ({}) at {}", d.verdict, d.reason, d.layer),
            );
            (format!("other vendor: {}", n.vendor), format!("filter {} \"{}\" dropped it; {ours_said}", n.id, n.name))
        }
        (EventType::Drop, _) if our_block.is_some() => {
            let d = our_block.map(|d| d.reason).unwrap_or_default();
            ("us".to_owned(), format!("the deciding filter is not in the files, and we blocked it ({d})"))
        }
        (EventType::Allow, Some(n)) => {
            let ours_said = ours.first().map_or_else(
                || "we have no record of this connection".to_owned(),
                |d| format!("we said {} ({})", d.verdict, d.reason),
            );
            let who = if n.found { n.vendor.clone() } else { format!("filter {}", n.id) };
            (format!("allowed by {who}"), ours_said)
        }
        _ => ("unknown".to_owned(), "the deciding filter is not in the files and we did not block it".to_owned()),
    }
}
