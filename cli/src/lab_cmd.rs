//! `arbiter lab`: the interop lab (lab.md, "What `arbiter lab` reports").

use std::collections::BTreeMap;
use std::io::IsTerminal as _;
use std::path::{Path, PathBuf};
use std::time::Instant;

use arbiter_lab::audit_log::LogJoiner;
use arbiter_lab::dot::chain_dot;
use arbiter_lab::profiles::Profile;
use arbiter_lab::scenario::{LabRules, Ours, Outcome, Report, file_stem, matrix, run as run_scenario};
use serde_json::{Value, json};

use crate::out::{out, outln};
use crate::{EXIT_BAD_INPUT, EXIT_FAILED, EXIT_OK, print_json};

/// `arbiter lab` options.
#[derive(clap::Args)]
pub(crate) struct Args {
    /// Only these peer profiles (repeatable; default: all).
    #[arg(long = "peer", value_name = "P", value_parser = clap::builder::PossibleValuesParser::new(Profile::ALL.map(Profile::name)))]
    peers: Vec<String>,
    /// Use this rules file instead of the shipped ones (rules/default.toml, rules/examples/*.toml).
    #[arg(long, value_name = "FILE")]
    rules: Option<PathBuf>,
    /// Write each arbiter scenario's indications as a replayable fixture into DIR.
    #[arg(long, value_name = "DIR")]
    record: Option<PathBuf>,
    /// Write one Graphviz picture per redirect chain into DIR (and SVG when `dot` is installed).
    #[arg(long, value_name = "DIR")]
    dot: Option<PathBuf>,
    /// Write the audit log our driver would have written for the run (binary, as the driver
    /// hands it out) to FILE: every arbiter scenario one after another. Try `arbiter audit FILE`.
    #[arg(long, value_name = "FILE")]
    audit: Option<PathBuf>,
    /// Skip the baseline (the WFP sample's logic in our place).
    #[arg(long)]
    no_baseline: bool,
    /// Run a machine's vendor set instead of the matrix (a file `arbiter wfpdiag --lab-setup` writes).
    #[arg(long, value_name = "FILE")]
    setup: Option<PathBuf>,
    /// Print every column in full (path, who inspected the flow, blocking reason); the
    /// default table fits 120 columns.
    #[arg(long)]
    wide: bool,
    /// Print the results as JSON.
    #[arg(long)]
    json: bool,
    /// Run the start-up timeline (boot to unload) under both `[boot]` modes instead of the matrix.
    #[arg(long)]
    boot: bool,
}

/// The default table's width.
const NARROW: usize = 120;

/// Counts per (ours, peer).
#[derive(Default, Clone, Copy)]
struct Tally {
    scenarios: usize,
    delivered: usize,
    blocked: usize,
    loops: usize,
    unexplained: usize,
    hops: usize,
}

impl Tally {
    fn add(&mut self, r: &Report) {
        self.scenarios += 1;
        self.hops += r.hops;
        match r.outcome {
            Outcome::Delivered => self.delivered += 1,
            Outcome::Blocked { .. } => self.blocked += 1,
            Outcome::Loop(_) => self.loops += 1,
            Outcome::Unexplained(_) => self.unexplained += 1,
        }
    }

    #[expect(clippy::cast_precision_loss, reason = "an average for humans")]
    fn mean_hops(&self) -> f64 {
        if self.scenarios == 0 { 0.0 } else { self.hops as f64 / self.scenarios as f64 }
    }

    fn json(&self) -> Value {
        json!({
            "scenarios": self.scenarios, "delivered": self.delivered, "blocked": self.blocked,
            "loops": self.loops, "unexplained": self.unexplained, "hops": self.hops,
            "mean_hops": (self.mean_hops() * 100.0).round() / 100.0,
        })
    }
}

/// The repository root: the current folder, else the one this binary was built from.
fn repo_root() -> PathBuf {
    let cwd = std::env::current_dir().unwrap_or_default();
    if cwd.join("rules").is_dir() {
        return cwd;
    }
    let built = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    if built.join("rules").is_dir() { built } else { cwd }
}

/// What happened, in a few words: the vendors whose proxies a delivered flow went
/// through (in order of first visit, with a count when more than once), or
/// why it ended.
fn what_happened(r: &Report) -> String {
    match &r.outcome {
        Outcome::Delivered => {
            let proxies = r.path.get(1..r.path.len().saturating_sub(1)).unwrap_or_default();
            let mut seen: Vec<(&str, usize)> = Vec::new();
            for p in proxies {
                // `<vendor>-proxy` on this machine, `<vendor>@<address>` off it.
                let vendor = p.split_once('@').map_or_else(|| p.strip_suffix("-proxy").unwrap_or(p), |(v, _)| v);
                match seen.iter_mut().find(|(v, _)| *v == vendor) {
                    Some((_, n)) => *n += 1,
                    None => seen.push((vendor, 1)),
                }
            }
            let shown: Vec<String> =
                seen.iter().map(|&(v, n)| if n > 1 { format!("{v} x{n}") } else { v.to_owned() }).collect();
            if shown.is_empty() { "direct".to_owned() } else { format!("via {}", shown.join(", ")) }
        }
        // The layer is in the wide table and the JSON.
        Outcome::Blocked { by, reason, .. } => format!("{by}: {reason}"),
        other => other.detail(),
    }
}

/// `s` cut to `width` characters, with `...` when cut.
fn fit(s: &str, width: usize) -> String {
    if s.chars().count() <= width {
        return s.to_owned();
    }
    let kept: String = s.chars().take(width.saturating_sub(3)).collect();
    format!("{kept}...")
}

/// Rows padded to their columns' widest cell; the last column is not padded.
/// Columns listed in `right` are right-aligned.
fn table(rows: &[Vec<String>], right: &[usize]) -> String {
    let columns = rows.iter().map(Vec::len).max().unwrap_or(0);
    let widths: Vec<usize> = (0..columns)
        .map(|c| rows.iter().filter_map(|r| r.get(c)).map(|x| x.chars().count()).max().unwrap_or(0))
        .collect();
    let mut out = String::new();
    for r in rows {
        let mut line = String::new();
        for (c, cell) in r.iter().enumerate() {
            let w = widths.get(c).copied().unwrap_or(0);
            if c + 1 == r.len() {
                line.push_str(cell);
            } else if right.contains(&c) {
                line.push_str(&format!("{cell:>w$}  "));
            } else {
                line.push_str(&format!("{cell:<w$}  "));
            }
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

/// The scenario table: 120 columns, or every column in full with `wide`.
fn scenario_table(reports: &[Report], wide: bool) -> String {
    let mut rows: Vec<Vec<String>> = Vec::with_capacity(reports.len() + 1);
    if wide {
        rows.push(
            ["SCENARIO", "OUTCOME", "HOPS", "PATH", "INSPECTED BY", "BLOCKING REASON"].map(String::from).to_vec(),
        );
        for r in reports {
            let reason = match &r.outcome {
                Outcome::Delivered => "-".to_owned(),
                other => other.detail(),
            };
            let inspected = if r.inspected.is_empty() { "-".to_owned() } else { r.inspected.join(",") };
            rows.push(vec![
                r.name.clone(),
                r.outcome.kind().to_owned(),
                r.hops.to_string(),
                short_path(&r.path),
                inspected,
                reason,
            ]);
        }
        return table(&rows, &[2]);
    }
    rows.push(["SCENARIO", "OUTCOME", "HOPS", "WHAT HAPPENED"].map(String::from).to_vec());
    for r in reports {
        rows.push(vec![r.name.clone(), r.outcome.kind().to_owned(), r.hops.to_string(), what_happened(r)]);
    }
    // The first three columns' widths, then what is left of 120 for the last.
    let used: usize =
        (0..3).map(|c| rows.iter().filter_map(|r| r.get(c)).map(|x| x.chars().count()).max().unwrap_or(0) + 2).sum();
    let room = NARROW.saturating_sub(used).max(20);
    for r in &mut rows {
        if let Some(last) = r.last_mut() {
            *last = fit(last, room);
        }
    }
    table(&rows, &[2])
}

/// Shortens long (looping) paths for the table; JSON keeps them whole.
fn short_path(path: &[String]) -> String {
    if path.len() <= 7 {
        return path.join(" -> ");
    }
    let head = path.get(..3).unwrap_or_default().join(" -> ");
    let tail = path.get(path.len() - 2..).unwrap_or_default().join(" -> ");
    format!("{head} -> ..{} more.. -> {tail}", path.len() - 5)
}

fn write_outputs(args: &Args, r: &Report) -> Result<(), String> {
    let stem = file_stem(&r.name);
    if let (Some(dir), Some(f)) = (&args.record, &r.recorded) {
        let text = format!(
            "# Recorded by `arbiter lab --record`: our arbiter's indications in scenario\n# {} ({}).\n# Replay with `arbiter replay`.\n{}",
            r.name,
            r.outcome.kind(),
            f.to_toml()
        );
        let p = dir.join(format!("{stem}.toml"));
        std::fs::write(&p, text).map_err(|e| format!("{}: {e}", p.display()))?;
    }
    if let Some(dir) = &args.dot {
        let p = dir.join(format!("{stem}.dot"));
        std::fs::write(&p, chain_dot(r)).map_err(|e| format!("{}: {e}", p.display()))?;
    }
    Ok(())
}

/// Joins every arbiter scenario's audit log into one and writes it.
fn write_audit(file: &Path, reports: &[Report]) -> Result<(), String> {
    let mut joined = LogJoiner::default();
    for r in reports.iter().filter(|r| r.scenario.ours == Ours::Arbiter) {
        joined.push(&r.audit_log).map_err(|e| format!("{}: {e}", r.name))?;
    }
    if let Some(dir) = file.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(|e| e.to_string())?;
    }
    std::fs::write(file, &joined.bytes).map_err(|e| e.to_string())
}

/// Renders every `.dot` in `dir` to SVG when Graphviz is installed.
fn render_svgs(dir: &Path) -> usize {
    let has_dot = std::process::Command::new("dot").arg("-V").output().is_ok_and(|o| o.status.success());
    if !has_dot {
        eprintln!(
            "note: Graphviz `dot` is not installed: wrote the .dot files in {} without SVG \
             (install graphviz, or render them with `dot -Tsvg FILE.dot -o FILE.svg`)",
            dir.display()
        );
        return 0;
    }
    let Ok(rd) = std::fs::read_dir(dir) else { return 0 };
    let mut n = 0;
    for p in rd.filter_map(Result::ok).map(|e| e.path()).filter(|p| p.extension().is_some_and(|x| x == "dot")) {
        let ok = std::process::Command::new("dot")
            .arg("-Tsvg")
            .arg(&p)
            .arg("-o")
            .arg(p.with_extension("svg"))
            .status()
            .is_ok_and(|s| s.success());
        n += usize::from(ok);
    }
    n
}

pub(crate) fn run(args: &Args) -> u8 {
    if args.boot {
        return crate::boot_cmd::run(args.rules.as_deref(), args.json);
    }
    let peers: Vec<Profile> = if args.peers.is_empty() {
        Profile::ALL.to_vec()
    } else {
        args.peers.iter().filter_map(|p| Profile::from_name(p)).collect()
    };
    let rule_sets = match &args.rules {
        Some(p) => LabRules::load(p).map(|r| vec![r]),
        None => LabRules::shipped(&repo_root()),
    };
    let rule_sets = match rule_sets {
        Ok(r) => r,
        Err(e) => {
            eprintln!("{e}");
            return EXIT_BAD_INPUT;
        }
    };
    if let Some(setup) = &args.setup {
        return crate::lab_setup_cmd::run(setup, &rule_sets, args.json);
    }
    for dir in [&args.record, &args.dot].into_iter().flatten() {
        if let Err(e) = std::fs::create_dir_all(dir) {
            eprintln!("{}: {e}", dir.display());
            return EXIT_BAD_INPUT;
        }
    }
    let scenarios = matrix(&peers, rule_sets.len(), !args.no_baseline);
    let bar = if std::io::stderr().is_terminal() {
        let b = indicatif::ProgressBar::new(scenarios.len() as u64);
        b.set_style(
            indicatif::ProgressStyle::with_template("{spinner} lab [{bar:40}] {pos}/{len} {wide_msg}")
                .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
        );
        Some(b)
    } else {
        None
    };
    let started = Instant::now();
    let mut reports = Vec::with_capacity(scenarios.len());
    for s in scenarios {
        match run_scenario(s, &rule_sets) {
            Ok(r) => {
                if let Some(b) = &bar {
                    b.set_message(r.name.clone());
                    b.inc(1);
                }
                reports.push(r);
            }
            Err(e) => {
                eprintln!("{}: {e}", s.name(&rule_sets));
                return EXIT_BAD_INPUT;
            }
        }
    }
    let elapsed = started.elapsed().as_secs_f64();
    if let Some(b) = bar {
        b.finish_and_clear();
    }
    for r in &reports {
        if let Err(e) = write_outputs(args, r) {
            eprintln!("{e}");
            return EXIT_BAD_INPUT;
        }
    }
    let svgs = args.dot.as_deref().map_or(0, render_svgs);
    if let Some(file) = &args.audit
        && let Err(e) = write_audit(file, &reports)
    {
        eprintln!("{}: {e}", file.display());
        return EXIT_BAD_INPUT;
    }

    let mut tallies: BTreeMap<(Ours, Profile), Tally> = BTreeMap::new();
    let mut totals: BTreeMap<Ours, Tally> = BTreeMap::new();
    for r in &reports {
        tallies.entry((r.scenario.ours, r.scenario.peer)).or_default().add(r);
        totals.entry(r.scenario.ours).or_default().add(r);
    }
    let failures: Vec<&Report> = reports.iter().filter(|r| r.is_failure()).collect();
    #[expect(clippy::cast_precision_loss, reason = "a rate for humans")]
    let rate = if elapsed > 0.0 { reports.len() as f64 / elapsed } else { 0.0 };

    if args.json {
        let scenarios: Vec<Value> = reports
            .iter()
            .map(|r| {
                let (by, reason) = match &r.outcome {
                    Outcome::Blocked { by, reason, .. } => (Some(by.clone()), Some(reason.clone())),
                    _ => (None, None),
                };
                json!({
                    "scenario": r.name, "ours": r.scenario.ours.name(), "peer": r.scenario.peer.name(),
                    "position": r.scenario.position.name(), "protocol": r.scenario.protocol.to_string(),
                    "family": if r.scenario.v6 { "v6" } else { "v4" },
                    "rules": rule_sets.get(r.scenario.rules).map(|x| x.name.clone()),
                    "outcome": r.outcome.kind(), "hops": r.hops, "path": r.path, "inspected": r.inspected,
                    "blocked_by": by, "reason": reason, "detail": r.outcome.detail(), "failure": r.is_failure(),
                })
            })
            .collect();
        let per_profile: Vec<Value> = tallies
            .iter()
            .map(|((o, p), t)| {
                let mut v = t.json();
                if let Some(m) = v.as_object_mut() {
                    m.insert("ours".into(), o.name().into());
                    m.insert("peer".into(), p.name().into());
                }
                v
            })
            .collect();
        let totals: serde_json::Map<String, Value> =
            totals.iter().map(|(o, t)| (o.name().to_owned(), t.json())).collect();
        print_json(&json!({
            "scenarios": scenarios, "per_profile": per_profile, "totals": totals,
            "failures": failures.len(), "elapsed_seconds": elapsed, "scenarios_per_second": rate.round(),
            "svg_rendered": svgs,
        }));
    } else {
        out!("{}", scenario_table(&reports, args.wide));
        outln!();
        // The peer column fits the longest profile name in the run.
        let peer_width = tallies.keys().map(|(_, p)| p.name().len()).max().unwrap_or(0).max("PEER".len());
        outln!(
            "{:<10} {:<peer_width$} {:>9} {:>9} {:>7} {:>6} {:>11} {:>9}",
            "OURS",
            "PEER",
            "SCENARIOS",
            "DELIVERED",
            "BLOCKED",
            "LOOPS",
            "UNEXPLAINED",
            "MEAN HOPS"
        );
        for ((o, p), t) in &tallies {
            outln!(
                "{:<10} {:<peer_width$} {:>9} {:>9} {:>7} {:>6} {:>11} {:>9.2}",
                o.name(),
                p.name(),
                t.scenarios,
                t.delivered,
                t.blocked,
                t.loops,
                t.unexplained,
                t.mean_hops()
            );
        }
        outln!();
        for (o, t) in &totals {
            outln!(
                "{}: {} scenarios, {} delivered, {} blocked, {} loops, {} unexplained",
                o.name(),
                t.scenarios,
                t.delivered,
                t.blocked,
                t.loops,
                t.unexplained
            );
        }
        outln!("{} scenarios in {:.3} s ({:.0} scenarios/s)", reports.len(), elapsed, rate);
        if svgs > 0 {
            outln!("rendered {svgs} SVG pictures");
        }
        for r in &failures {
            outln!("FAILURE {}: {} ({})", r.name, r.outcome.kind(), r.outcome.detail());
        }
    }
    if failures.is_empty() { EXIT_OK } else { EXIT_FAILED }
}
