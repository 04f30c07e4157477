//! Driver audit logs (`arbiter audit`): describe, turn into a fixture, check.
//!
//! A log is the core's encoded [`AuditRecord`]s back to back. The checks are
//! decision-table.md's invariants that a log can show: 1 (no `proxy` for
//! our own chains, our proxy, or without the write right), 2 (a block decided
//! at connect-redirect comes back at auth-connect for the same endpoint
//! unless the entry left the table, which is itself audited), 3 (every
//! decision record replays to its outcome), and ordering (sequence numbers
//! increase, time does not go back).

use std::collections::HashMap;

use arbiter::audit::{self, AuditRecord, DepartedEntry, Event};
use arbiter::{Layer, Reason, RedirectState, Verdict};

use crate::fixture::{Environment, Step};

/// One record, flattened for printing.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Described {
    /// Sequence number.
    pub seq: u64,
    /// Time, ms.
    pub at_ms: u64,
    /// `connect-redirect`, `auth-connect` or `departure`.
    pub kind: &'static str,
    /// Endpoint handle.
    pub endpoint: Option<u64>,
    /// Process id.
    pub pid: Option<u64>,
    /// App id.
    pub app: Option<String>,
    /// Remote address.
    pub remote: Option<String>,
    /// Redirect state (connect-redirect).
    pub state: Option<&'static str>,
    /// Verdict (decisions).
    pub verdict: Option<&'static str>,
    /// Reason.
    pub reason: &'static str,
    /// Redirect target, or what left which table.
    pub detail: String,
}

/// Describes one record.
pub fn describe(r: &AuditRecord<'_>) -> Described {
    let base = Described {
        seq: r.seq,
        at_ms: r.at.as_millis(),
        kind: "departure",
        endpoint: None,
        pid: None,
        app: None,
        remote: None,
        state: None,
        verdict: None,
        reason: "",
        detail: String::new(),
    };
    match &r.event {
        Event::ConnectRedirect(c) => Described {
            kind: Layer::ConnectRedirect.name(),
            endpoint: Some(c.input.flow.endpoint),
            pid: Some(c.input.flow.pid),
            app: Some(c.input.flow.app.to_string()),
            remote: Some(c.input.flow.remote.to_string()),
            state: Some(c.input.state.name()),
            verdict: Some(c.outcome.verdict.name()),
            reason: c.outcome.reason.name(),
            detail: c.outcome.redirect.map(|t| format!("-> {} (pid {})", t.remote, t.target_pid)).unwrap_or_default(),
            ..base
        },
        Event::AuthConnect(a) => Described {
            kind: Layer::AuthConnect.name(),
            endpoint: Some(a.input.flow.endpoint),
            pid: Some(a.input.flow.pid),
            app: Some(a.input.flow.app.to_string()),
            remote: Some(a.input.flow.remote.to_string()),
            verdict: Some(a.outcome.verdict.name()),
            reason: a.outcome.reason.name(),
            detail: if a.input.redirected {
                format!(
                    "redirected, target pid {}, original {}",
                    a.input.target_pid.map_or_else(|| "-".to_owned(), |p| p.to_string()),
                    a.input.original_destination.map_or_else(|| "-".to_owned(), |d| d.to_string())
                )
            } else {
                String::new()
            },
            ..base
        },
        Event::Fallback(f) => Described {
            kind: "pend-fallback",
            endpoint: Some(f.input.flow.endpoint),
            pid: Some(f.input.flow.pid),
            app: Some(f.input.flow.app.to_string()),
            remote: Some(f.input.flow.remote.to_string()),
            state: Some(f.input.state.name()),
            verdict: Some(f.outcome.verdict.name()),
            reason: f.outcome.reason.name(),
            detail: "held for a proxy that did not register in time".to_owned(),
            ..base
        },
        Event::Rebind(b) => Described {
            kind: "rebind",
            pid: Some(b.pid),
            app: Some(b.app.to_string()),
            reason: "rebound-by-other",
            detail: format!(
                "filter {} moved the local address {} -> {} ({}, {} change{})",
                b.by,
                b.from,
                b.to,
                b.protocol,
                b.changes,
                if b.changes == 1 { "" } else { "s" }
            ),
            ..base
        },
        Event::Guard(g) => Described {
            kind: "boot-guard",
            pid: (g.proxy_pid != 0).then_some(g.proxy_pid),
            reason: g.change.name(),
            detail: format!("boot mode {}: {}", g.mode.name(), g.change.name()),
            ..base
        },
        Event::Departure(d) => {
            let what = match d.entry {
                DepartedEntry::Endpoint { endpoint, entry } => format!("endpoint {endpoint}: {entry:?}"),
                DepartedEntry::Destination { destination, hops } => {
                    format!(
                        "destination {}/{}:{} ({} hops)",
                        destination.protocol, destination.ip, destination.port, hops.count
                    )
                }
                DepartedEntry::KnownProxy { pid } => format!("known proxy pid {pid}"),
            };
            Described {
                endpoint: match d.entry {
                    DepartedEntry::Endpoint { endpoint, .. } => Some(endpoint),
                    _ => None,
                },
                reason: d.reason().name(),
                detail: format!("{} left {}", what, d.table.name()),
                ..base
            }
        }
    }
}

/// A decode failure: byte offset in the log and the error.
pub type DecodeFailure = (usize, String);

/// Decodes a whole log, or says where it breaks.
pub fn decode(bytes: &[u8]) -> Result<Vec<AuditRecord<'_>>, DecodeFailure> {
    audit::records(bytes).map(|r| r.map_err(|(off, e)| (off, e.to_string()))).collect()
}

/// A fixture step replaying a decision record, with its outcome as expectation.
pub fn step_of(r: &AuditRecord<'_>) -> Option<Step> {
    let (flow, layer) = match &r.event {
        Event::ConnectRedirect(c) => (&c.input.flow, Layer::ConnectRedirect),
        Event::AuthConnect(a) => (&a.input.flow, Layer::AuthConnect),
        // A driver-side fallback is not a classify the replayer can re-run.
        Event::Fallback(_) | Event::Departure(_) | Event::Rebind(_) | Event::Guard(_) => return None,
    };
    let mut s = Step::connect(flow.endpoint, flow.protocol, flow.local, flow.remote, flow.pid, &flow.app.to_string());
    s.layer = layer;
    s.at_ms = r.at.as_millis();
    if flow.original_app != flow.app {
        s.original_app = Some(flow.original_app.to_string());
    }
    s.package = flow.package.map(|p| p.to_string());
    match &r.event {
        Event::ConnectRedirect(c) => {
            s.state = c.input.state;
            s.write_right = c.input.write_right;
            s.reauthorize = c.input.reauthorize;
            s.previous = c.input.previous.entries().collect();
        }
        Event::AuthConnect(a) => {
            s.reauthorize = a.input.reauthorize;
            s.redirected = a.input.redirected;
            s.target_pid = a.input.target_pid;
            s.original_destination = a.input.original_destination;
        }
        Event::Fallback(_) | Event::Departure(_) | Event::Rebind(_) | Event::Guard(_) => {}
    }
    let o = r.outcome()?;
    s.expect.verdict = Some(o.verdict);
    s.expect.reason = Some(o.reason);
    s.expect.redirect_to = o.redirect.map(|t| t.remote);
    s.expect.target_pid = o.redirect.map(|t| t.target_pid);
    Some(s)
}

/// The environment a log's first connect-redirect record was decided in.
pub fn environment_of(records: &[AuditRecord<'_>]) -> Environment {
    let env = records.iter().find_map(|r| match &r.event {
        Event::ConnectRedirect(c) => Some(c.env),
        _ => None,
    });
    Environment {
        own_filter: env.map_or(Environment::default().own_filter, |e| e.own_filter),
        proxy_pid: env.and_then(|e| e.proxy.map(|p| p.pid)),
        ..Environment::default()
    }
}

/// One broken invariant, with the record that shows it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Violation {
    /// Position of the record in the log (0-based).
    pub index: usize,
    /// Its sequence number.
    pub seq: u64,
    /// Which invariant (`1`, `2`, `3`, `order`).
    pub invariant: &'static str,
    /// What is wrong.
    pub message: String,
}

/// Checks the invariants over a decoded log.
pub fn check(records: &[AuditRecord<'_>]) -> Vec<Violation> {
    let mut out = Vec::new();
    // Blocks decided at connect-redirect and not yet enforced: endpoint -> (index, reason).
    let mut pending: HashMap<u64, (usize, Reason)> = HashMap::new();
    let mut last: Option<(u64, u64)> = None;
    for (index, r) in records.iter().enumerate() {
        let mut v = |invariant, message: String| out.push(Violation { index, seq: r.seq, invariant, message });
        if let Some((seq, at)) = last {
            if r.seq <= seq {
                v("order", format!("sequence number {} after {seq}", r.seq));
            }
            if r.at.as_millis() < at {
                v("order", format!("time {} ms after {at} ms", r.at.as_millis()));
            }
        }
        last = Some((r.seq, r.at.as_millis()));
        if let (Some(replayed), Some(recorded)) = (r.replay(), r.outcome())
            && !replayed.matches(recorded)
        {
            v(
                "3",
                format!(
                    "replays to {} {}{} instead of {} {}",
                    replayed.outcome.verdict.name(),
                    replayed.outcome.reason.name(),
                    if replayed.diverged { " (consulted a fact the record lacks)" } else { "" },
                    recorded.verdict.name(),
                    recorded.reason.name()
                ),
            );
        }
        match &r.event {
            Event::ConnectRedirect(c) => {
                let i = &c.input;
                if c.outcome.verdict == Verdict::Proxy {
                    let own_chain =
                        matches!(i.state, RedirectState::RedirectedBySelf | RedirectState::PreviouslyRedirectedBySelf);
                    let own_proxy = c.env.proxy.is_some_and(|p| p.pid == i.flow.pid);
                    if own_chain {
                        v("1", format!("proxy for a {} flow", i.state.name()));
                    }
                    if own_proxy {
                        v("1", "proxy for our own proxy's connection".to_owned());
                    }
                    if !i.write_right {
                        v("1", "proxy without the write right".to_owned());
                    }
                }
                if c.outcome.verdict == Verdict::Block {
                    pending.insert(i.flow.endpoint, (index, c.outcome.reason));
                }
            }
            Event::AuthConnect(a) => {
                if let Some((at, reason)) = pending.remove(&a.input.flow.endpoint)
                    && (a.outcome.verdict != Verdict::Block || a.outcome.reason != reason)
                {
                    v(
                        "2",
                        format!(
                            "endpoint {} was blocked at connect-redirect (record {at}, {}) but auth-connect gave {} {}",
                            a.input.flow.endpoint,
                            reason.name(),
                            a.outcome.verdict.name(),
                            a.outcome.reason.name()
                        ),
                    );
                }
            }
            // A fallback block is cached for auth-connect like any other.
            Event::Fallback(f) => {
                if f.outcome.verdict == Verdict::Block {
                    pending.insert(f.input.flow.endpoint, (index, f.outcome.reason));
                }
            }
            Event::Rebind(_) | Event::Guard(_) => {}
            Event::Departure(d) => {
                // An audited eviction or expiry releases the obligation.
                if let DepartedEntry::Endpoint { endpoint, .. } = d.entry {
                    pending.remove(&endpoint);
                }
            }
        }
    }
    out
}
