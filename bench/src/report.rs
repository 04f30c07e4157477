//! The benchmark's results: a readable table and one JSON object.

use std::fmt::Write as _;

use serde_json::{Value, json};

use crate::run::{Figures, RunResult, Skipped};

/// Everything one `arbiter bench` run measured.
#[derive(Clone, Debug, PartialEq)]
pub struct Report {
    /// Where the rules came from: `generated` or the file's path.
    pub rules_source: String,
    /// Decisions per timed batch.
    pub batch: usize,
    /// Whether allocations were really counted (a counting allocator is installed).
    pub counting_allocator: bool,
    /// Every configuration that ran, smallest first.
    pub runs: Vec<RunResult>,
    /// Configurations left out, and why.
    pub skipped: Vec<Skipped>,
    /// Shapes per connect-redirect verdict with empty tables at the largest
    /// rule set: continue, permit, block, proxy.
    pub verdict_mix: [usize; 4],
    /// Wall time of the whole run, seconds.
    pub seconds: f64,
}

impl Report {
    /// The largest configuration that ran: most rules, then most endpoints.
    pub fn largest(&self) -> Option<&RunResult> {
        self.runs.iter().max_by_key(|r| (r.rules, r.endpoints))
    }

    /// True when the arbiter and the naive column agreed on every compared decision.
    pub fn agree(&self) -> bool {
        self.runs.iter().all(|r| r.disagreements == 0)
    }
}

fn column(f: &Figures) -> Value {
    json!({
        "connect_ns": round(f.connect_ns),
        "auth_ns": round(f.auth_ns),
        "combined_ns": round(f.combined_ns),
        "allocs_per_decision": f.allocs_per_decision,
        "bytes_per_endpoint": round(f.bytes_per_endpoint()),
        "reserved_bytes": f.reserved_bytes,
        "endpoint_table_bytes_per_endpoint": round(per_live(f.endpoint_table_bytes, f.live_endpoints)),
        "live_endpoints": f.live_endpoints,
        "rounds": f.rounds,
    })
}

fn per_live(bytes: usize, live: usize) -> f64 {
    if live == 0 { 0.0 } else { bytes as f64 / live as f64 }
}

fn round(x: f64) -> f64 {
    (x * 10.0).round() / 10.0
}

fn run(r: &RunResult) -> Value {
    json!({
        "rules": r.rules,
        "endpoints": r.endpoints,
        "arbiter_ns": round(r.arbiter.combined_ns),
        "naive_ns": round(r.naive.combined_ns),
        "sampler_ns": round(r.sampler.combined_ns),
        "ratio": round(r.ratio()),
        "allocs_per_decision": r.arbiter.allocs_per_decision,
        "bytes_per_endpoint": round(r.arbiter.bytes_per_endpoint()),
        "arbiter": column(&r.arbiter),
        "naive": column(&r.naive),
        "sampler": column(&r.sampler),
        "compared": r.compared,
        "disagreements": r.disagreements,
    })
}

/// The JSON object: the largest configuration's figures at the top level
/// (`arbiter_ns`, `naive_ns`, `ratio`, `allocs_per_decision`,
/// `bytes_per_endpoint`, and per column), every configuration under `runs`.
pub fn to_json(report: &Report) -> Value {
    let mut top = report.largest().map_or_else(|| json!({}), run);
    if let Value::Object(map) = &mut top {
        map.insert("rules_source".into(), json!(report.rules_source));
        map.insert("batch".into(), json!(report.batch));
        map.insert("counting_allocator".into(), json!(report.counting_allocator));
        map.insert("agree".into(), json!(report.agree()));
        let [c, p, b, x] = report.verdict_mix;
        map.insert("verdict_mix".into(), json!({"continue": c, "permit": p, "block": b, "proxy": x}));
        map.insert("runs".into(), Value::Array(report.runs.iter().map(run).collect()));
        map.insert(
            "skipped".into(),
            Value::Array(
                report
                    .skipped
                    .iter()
                    .map(|s| json!({"rules": s.rules, "endpoints": s.endpoints, "why": s.why}))
                    .collect(),
            ),
        );
        map.insert("seconds".into(), json!(round(report.seconds)));
    }
    top
}

/// The human table.
pub fn to_table(report: &Report) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "arbiter bench: rules {}, median ns per decision over batches of {} (connect-redirect / auth-connect / both)",
        report.rules_source, report.batch
    );
    let _ = writeln!(
        out,
        "{:>6} {:>9} | {:>20} | {:>26} | {:>16} | {:>7} | {:>6} | {:>9} | {:>9} | {:>10}",
        "rules",
        "endpoints",
        "arbiter ns",
        "naive ns",
        "sampler ns",
        "ratio",
        "allocs",
        "B/ep all",
        "B/ep tbl",
        "naive B/ep"
    );
    for r in &report.runs {
        let triple = |f: &Figures| format!("{:.0}/{:.0}/{:.0}", f.connect_ns, f.auth_ns, f.combined_ns);
        let _ = writeln!(
            out,
            "{:>6} {:>9} | {:>20} | {:>26} | {:>16} | {:>6.1}x | {:>6.2} | {:>9.1} | {:>9.1} | {:>10.0}",
            r.rules,
            r.endpoints,
            triple(&r.arbiter),
            triple(&r.naive),
            triple(&r.sampler),
            r.ratio(),
            r.arbiter.allocs_per_decision,
            r.arbiter.bytes_per_endpoint(),
            per_live(r.arbiter.endpoint_table_bytes, r.arbiter.live_endpoints),
            r.naive.bytes_per_endpoint(),
        );
    }
    for s in &report.skipped {
        let _ = writeln!(out, "{:>6} {:>9} | skipped: {}", s.rules, s.endpoints, s.why);
    }
    let _ = writeln!(
        out,
        "ns: median per decision, connect-redirect/auth-connect/both; ratio: naive / arbiter (both layers); \
         allocs: arbiter allocations per decision{}; B/ep all: arbiter reserved bytes of all tables per live \
         endpoint; B/ep tbl: the endpoint table alone; naive B/ep: naive's tables per live endpoint",
        if report.counting_allocator { "" } else { " (NOT counted: no counting allocator)" }
    );
    let [c, p, b, x] = report.verdict_mix;
    let _ = writeln!(
        out,
        "workload verdicts at connect-redirect: {c} continue, {p} permit, {b} block, {x} proxy; \
         arbiter and naive {} on every compared decision; {:.1} s",
        if report.agree() { "agree" } else { "DISAGREE" },
        report.seconds
    );
    out
}
