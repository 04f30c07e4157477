//! Graphviz pictures of redirect chains (`arbiter lab --dot DIR`).
//!
//! One node per stop on the path (app, each proxy, the destination or the
//! end), top to bottom so that a page can show a long chain, one edge per
//! connection, labelled with every decision of the callout in our place
//! (its `continue`s too: C2 and A6 are what make a chain end) and every
//! other callout that acted: vendor, verdict, reason (and the
//! reauthorization round, if any). The title counts hops as the table does.

use std::fmt::Write as _;

use crate::engine::HopTrace;
use crate::scenario::Report;

fn escape(s: &str) -> String {
    s.replace('\\', "\\\\").replace('"', "\\\"")
}

/// The edge label for one connection; `ours` names the callout in our place.
fn label(t: &HopTrace, ours: &str) -> String {
    let mut lines: Vec<String> = t
        .decisions
        .iter()
        .filter(|d| d.action != "continue" || d.refused || d.name == ours)
        .map(|d| {
            let round = if d.round > 0 { format!(" (reauth {})", d.round) } else { String::new() };
            let refused = if d.refused { " [refused: no write right]" } else { "" };
            format!("{} @{}: {} {}{round}{refused}", d.name, d.layer.name(), d.action, d.reason)
        })
        .collect();
    if lines.is_empty() {
        lines.push("all callouts: continue".to_owned());
    }
    lines.join("\\n")
}

/// The chain of one scenario as a Graphviz digraph.
pub fn chain_dot(r: &Report) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "digraph \"{}\" {{", escape(&r.name));
    let _ = writeln!(
        out,
        "  rankdir=TB;\n  node [shape=box, fontname=\"Helvetica\"];\n  edge [fontname=\"Helvetica\", fontsize=10];"
    );
    let _ = writeln!(
        out,
        "  labelloc=t;\n  label=\"{}: {} after {} {}{}\";",
        escape(&r.name),
        r.outcome.kind(),
        r.hops,
        if r.hops == 1 { "hop" } else { "hops" },
        if r.outcome.is_explained() && r.outcome.kind() == "delivered" {
            String::new()
        } else {
            format!(" ({})", escape(&r.outcome.detail()))
        }
    );
    for (i, stop) in r.path.iter().enumerate() {
        let style = match (i, stop.as_str()) {
            (0, _) => ", shape=ellipse",
            (_, s) if s.starts_with("blocked") => ", color=red, fontcolor=red",
            (_, "..." | "?") => ", color=orange, fontcolor=orange",
            _ if i + 1 == r.path.len() => ", shape=ellipse, color=darkgreen",
            _ => "",
        };
        let _ = writeln!(out, "  n{i} [label=\"{}\"{style}];", escape(stop));
    }
    for i in 0..r.path.len().saturating_sub(1) {
        let ours = r.scenario.ours.name();
        let l = r.traces.get(i).map_or_else(|| "chain cap reached".to_owned(), |t| label(t, ours));
        let _ = writeln!(out, "  n{i} -> n{} [label=\"{}\"];", i + 1, escape(&l).replace("\\\\n", "\\n"));
    }
    // Another vendor's bind redirect, as our inspection audited it.
    let notes = crate::bind::rebind_notes(&r.audit_log);
    if !notes.is_empty() {
        let _ = writeln!(
            out,
            "  rebind [shape=note, color=purple, fontcolor=purple, label=\"{}\"];",
            escape(&notes.join("\n")).replace("\\n", "\n")
        );
        let _ = writeln!(out, "  rebind -> n0 [style=dashed, color=purple, arrowhead=none];");
    }
    out.push_str("}\n");
    out
}
