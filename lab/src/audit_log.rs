//! Driver audit logs (`arbiter audit`): read, describe, turn into a fixture, check.
//!
//! A log comes in one of two forms, told apart by its first byte:
//! - **binary**: the core's encoded [`AuditRecord`]s back to back, as the
//!   driver hands them out (and as `arbiter lab --audit` writes them);
//! - **JSON lines**: the service's `audit.jsonl`, one object per line, whose
//!   `raw` field holds the record's bytes in hex (lines of kind `lost` or
//!   `oversized` carry no record and are counted as notes).
//!
//! Reading keeps every good record: a record of a kind this build does not
//! know is skipped by its length, a record that does not decode is reported
//! and skipped by its length, and when the framing itself is broken (bad
//! magic, truncation) the reader reports it and looks for the next record
//! header. The checks are
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

/// Which form a log file has.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LogFormat {
    /// Encoded records back to back.
    Binary,
    /// The service's `audit.jsonl`.
    JsonLines,
}

/// Something in a log that is not a usable record.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Problem {
    /// Where: `byte N` (binary) or `line N` (JSON lines).
    pub place: String,
    /// What.
    pub message: String,
    /// True when data was lost (undecodable); false for a note (an unknown
    /// record kind skipped, a `lost` line from the driver).
    pub undecodable: bool,
}

/// A log file's bytes, as binary records, with where each came from.
#[derive(Clone, Debug, Default)]
pub struct LogBytes {
    /// The records, back to back.
    pub bytes: Vec<u8>,
    /// For JSON lines: (byte offset in `bytes`, line number), ascending.
    lines: Vec<(usize, usize)>,
    /// Notes and problems found while reading the lines.
    pub problems: Vec<Problem>,
}

impl LogBytes {
    fn place(&self, offset: usize) -> String {
        if self.lines.is_empty() {
            return format!("byte {offset}");
        }
        let i = self.lines.partition_point(|&(o, _)| o <= offset);
        self.lines.get(i.saturating_sub(1)).map_or_else(|| format!("byte {offset}"), |&(_, l)| format!("line {l}"))
    }
}

/// Tells the two forms apart: a JSON-lines log starts with `{`.
pub fn format_of(bytes: &[u8]) -> LogFormat {
    match bytes.iter().find(|b| !b.is_ascii_whitespace()) {
        Some(b'{') => LogFormat::JsonLines,
        _ => LogFormat::Binary,
    }
}

fn unhex(s: &str) -> Option<Vec<u8>> {
    let digit = |c: u8| char::from(c).to_digit(16).and_then(|d| u8::try_from(d).ok());
    if !s.len().is_multiple_of(2) {
        return None;
    }
    s.as_bytes().chunks(2).map(|p| Some(digit(*p.first()?)? << 4 | digit(*p.get(1)?)?)).collect()
}

/// Reads a log file's bytes in either form into binary records.
pub fn log_bytes(file: Vec<u8>) -> LogBytes {
    if format_of(&file) == LogFormat::Binary {
        return LogBytes { bytes: file, ..LogBytes::default() };
    }
    let mut out = LogBytes::default();
    let text = String::from_utf8_lossy(&file);
    for (i, line) in text.lines().enumerate() {
        let n = i + 1;
        let line = line.trim();
        if line.is_empty() {
            continue;
        }
        let mut problem = |message: String, undecodable| {
            out.problems.push(Problem { place: format!("line {n}"), message, undecodable });
        };
        let v: serde_json::Value = match serde_json::from_str(line) {
            Ok(v) => v,
            Err(e) => {
                problem(format!("not a JSON object: {e}"), true);
                continue;
            }
        };
        let kind = v.get("kind").and_then(serde_json::Value::as_str).unwrap_or("");
        match v.get("raw").and_then(serde_json::Value::as_str) {
            Some(raw) => match unhex(raw) {
                Some(b) => {
                    out.lines.push((out.bytes.len(), n));
                    out.bytes.extend_from_slice(&b);
                }
                None => problem("`raw` is not an even number of hex digits".to_owned(), true),
            },
            None if kind == "lost" => {
                let lost = v.get("lost").and_then(serde_json::Value::as_u64).unwrap_or(0);
                problem(format!("the driver dropped {lost} record(s) before they could be read"), false);
            }
            None if kind == "oversized" => {
                problem("a record larger than the driver's audit ring was dropped".to_owned(), true);
            }
            None => problem(format!("a line of kind {kind:?} without a `raw` record"), true),
        }
    }
    out
}

/// A decoded log: every good record, and what could not be used.
#[derive(Clone, Debug, Default)]
pub struct Decoded<'a> {
    /// The records, in log order.
    pub records: Vec<AuditRecord<'a>>,
    /// Notes and problems, in log order.
    pub problems: Vec<Problem>,
}

impl Decoded<'_> {
    /// True when some data could not be decoded.
    pub fn lost_data(&self) -> bool {
        self.problems.iter().any(|p| p.undecodable)
    }
}

/// Decodes a log, keeping every good record (see the module docs).
pub fn decode(log: &LogBytes) -> Decoded<'_> {
    let bytes = log.bytes.as_slice();
    let mut d = Decoded { records: Vec::new(), problems: log.problems.clone() };
    let mut at = 0usize;
    while let Some(rest) = bytes.get(at..).filter(|r| !r.is_empty()) {
        match AuditRecord::decode(rest) {
            Ok((rec, used)) => {
                d.records.push(rec);
                at += used;
            }
            Err(e) => {
                // The header's length frames the record when the header is whole.
                let framed = framed_len(rest);
                let (message, undecodable) = match e.kind {
                    audit::DecodeErrorKind::UnknownKind(k) => {
                        (format!("a record of kind {k}, which this build does not know, skipped"), false)
                    }
                    _ => (e.to_string(), true),
                };
                d.problems.push(Problem { place: log.place(at), message, undecodable });
                match framed {
                    Some(n) if !matches!(e.kind, audit::DecodeErrorKind::Magic | audit::DecodeErrorKind::Truncated) => {
                        at += n;
                    }
                    _ => {
                        // Framing lost: look for the next record header.
                        let from = at + 1;
                        let next = bytes.get(from..).and_then(|b| {
                            b.windows(3).position(|w| {
                                w.get(..2) == Some(&audit::MAGIC[..]) && w.get(2) == Some(&audit::VERSION)
                            })
                        });
                        match next {
                            Some(p) => at = from + p,
                            None => break,
                        }
                    }
                }
            }
        }
    }
    d.problems.sort_by_key(|p| p.place.split(' ').nth(1).and_then(|n| n.parse::<usize>().ok()).unwrap_or(0));
    d
}

/// The whole length of the record at the front of `bytes`, from its header.
fn framed_len(bytes: &[u8]) -> Option<usize> {
    let len = u32::from_le_bytes(bytes.get(4..8)?.try_into().ok()?);
    let n = audit::HEADER_LEN.checked_add(usize::try_from(len).ok()?)?;
    (n <= bytes.len()).then_some(n)
}

/// Joins the logs of several independent runs (one per lab scenario) into the
/// log one driver would have written had it seen them one after another:
/// sequence numbers continue, each run starts later than every table's time
/// to live after the previous one (so nothing carries over when the log is
/// replayed as one fixture), and each run's endpoint handles get a range of
/// their own.
#[derive(Debug, Default)]
pub struct LogJoiner {
    /// The joined log.
    pub bytes: Vec<u8>,
    next_seq: u64,
    next_at: u64,
    runs: u64,
}

/// Time between two joined runs: more than any default time to live.
const RUN_GAP_MS: u64 = 3_600_000;

impl LogJoiner {
    /// Appends one run's log; `Err` names what in it does not decode.
    pub fn push(&mut self, log: &[u8]) -> Result<(), String> {
        let endpoint_base = self.runs << 32;
        let (seq_base, at_base) = (self.next_seq, self.next_at);
        let mut last_at = 0;
        for r in audit::records(log) {
            let mut rec = r.map_err(|(off, e)| format!("byte {off}: {e}"))?;
            rec.seq = rec.seq.saturating_add(seq_base);
            rec.at = arbiter::Instant::from_millis(rec.at.as_millis().saturating_add(at_base));
            last_at = last_at.max(rec.at.as_millis());
            self.next_seq = self.next_seq.max(rec.seq.saturating_add(1));
            let shift = |e: &mut u64| *e = e.wrapping_add(endpoint_base);
            match &mut rec.event {
                Event::ConnectRedirect(c) => shift(&mut c.input.flow.endpoint),
                Event::AuthConnect(a) => shift(&mut a.input.flow.endpoint),
                Event::Fallback(f) => shift(&mut f.input.flow.endpoint),
                // Neither names an endpoint handle.
                Event::Rebind(_) | Event::Guard(_) => {}
                Event::Departure(d) => {
                    d.seq = d.seq.saturating_add(seq_base);
                    d.at = arbiter::Instant::from_millis(d.at.as_millis().saturating_add(at_base));
                    if let DepartedEntry::Endpoint { endpoint, .. } = &mut d.entry {
                        shift(endpoint);
                    }
                }
            }
            let start = self.bytes.len();
            self.bytes.resize(start + rec.encoded_len(), 0);
            let n = rec.encode_into(self.bytes.get_mut(start..).unwrap_or_default()).map_err(|e| e.to_string())?;
            self.bytes.truncate(start + n);
        }
        self.next_at = last_at.max(at_base).saturating_add(RUN_GAP_MS);
        self.runs += 1;
        Ok(())
    }
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
