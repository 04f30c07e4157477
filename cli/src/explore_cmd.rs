//! `arbiter explore`: the exhaustive interop explorer (issue 7, "Exhaustive
//! interop checking"): every combination, up to a bound, of vendors, weight
//! orders, trust settings, record propagation and connection interleavings,
//! with our arbiter and with the sampler logic in its place.

use std::io::IsTerminal as _;

use arbiter_lab::explore::{Bounds, Counterexample, Exploration, Findings, LoopSettings, Tally, run};
use arbiter_lab::profiles::Profile;
use arbiter_lab::scenario::Ours;
use serde_json::{Value, json};

use crate::out::outln;
use crate::{EXIT_BAD_INPUT, EXIT_FAILED, EXIT_OK, print_json};

/// `arbiter explore` options.
#[derive(clap::Args)]
pub(crate) struct Args {
    /// Explore setups of up to this many vendors (ours plus 1 or 2 peers) [default: 3; 2 with --quick].
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u8).range(2..=3))]
    vendors: Option<u8>,
    /// Concurrent application connections per setup [default: 2].
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u8).range(2..=3))]
    connections: Option<u8>,
    /// A few seconds instead of minutes: ours plus one peer (every profile, every weight order,
    /// trust and record setting), two concurrent connections, two connection sets (TCP/IPv4 to
    /// one destination, UDP/IPv6 to two) instead of eight. Not with --vendors 3 or --connections 3.
    #[arg(long)]
    quick: bool,
    /// Draw peers only from these profiles (repeatable; default: all).
    #[arg(long = "peer", value_name = "P", value_parser = clap::builder::PossibleValuesParser::new(Profile::ALL.map(Profile::name)))]
    peers: Vec<String>,
    /// Also explore the strict loop settings (revisit = block, on_loop = block, max_hops = 2).
    #[arg(long)]
    strict: bool,
    /// Skip the baseline (the WFP sample's logic in our place).
    #[arg(long)]
    no_baseline: bool,
    /// Worker threads (default: up to 2).
    #[arg(long, value_name = "N")]
    threads: Option<usize>,
    /// Counterexamples to print per occupant of our place.
    #[arg(long, value_name = "N", default_value_t = 8)]
    show: usize,
    /// Print the results as JSON.
    #[arg(long)]
    json: bool,
}

fn tally_json(t: &Tally) -> Value {
    json!({
        "configurations": t.configurations,
        "states": t.states,
        "transitions": t.transitions,
        "forks": t.forks,
        "executions": t.executions.to_string(),
        "end_states": t.end_states,
        "outcomes": {
            "delivered": t.delivered, "blocked": t.blocked, "loop": t.loops, "unexplained": t.unexplained,
        },
        "failing_configurations": t.failing_configurations,
        "peer_only_configurations": t.peer_only_configurations,
        "failing_end_states": t.failing_end_states,
        "model_errors": t.model_errors,
        "audit_failures": t.audit_failures,
    })
}

fn counterexample_json(c: &Counterexample) -> Value {
    json!({
        "outcome": c.outcome.kind(),
        "detail": c.outcome.detail(),
        "setup": c.setup.to_string(),
        "vendors": c.setup.vendors(),
        "connection": c.connection + 1,
        "chain": c.chain,
        "hops": c.hops,
        "moves": c.moves,
        "other_moves": c.other_moves,
    })
}

fn findings_json(f: &Findings, show: usize) -> Value {
    json!({
        "tally": tally_json(&f.tally),
        "counterexamples_found": f.counterexamples_found,
        "distinct_counterexamples": f.counterexamples.len(),
        "counterexamples": f.counterexamples.iter().take(show).map(counterexample_json).collect::<Vec<_>>(),
        "distinct_peer_only": f.peer_only.len(),
        "peer_only": f.peer_only.iter().take(show).map(counterexample_json).collect::<Vec<_>>(),
        "model_errors": f.model_errors.iter().map(|(s, e)| json!({"setup": s, "error": e})).collect::<Vec<_>>(),
    })
}

/// Executions as a whole number; `>=` when the count saturated.
fn executions(n: u128) -> String {
    if n == u128::MAX { format!(">={n}") } else { n.to_string() }
}

/// The width of the executions column: the longest count shown.
fn executions_width(x: &Exploration, baseline: bool) -> usize {
    let mut w = executions(x.arbiter.tally.executions).len();
    if baseline {
        w = w.max(executions(x.baseline.tally.executions).len());
    }
    w.max("executions".len())
}

/// One row of the table. Loops and unexplained ends the peers cause among
/// themselves are not counted here but in their own row ([`peer_row`]).
fn row(name: &str, t: &Tally, width: usize) -> String {
    format!(
        "{name:<20} {:>7} {:>9} {:>11} {:>width$} {:>9} {:>9} {:>7} {:>11}",
        t.configurations,
        t.states,
        t.transitions,
        executions(t.executions),
        t.delivered,
        t.blocked,
        t.loops - t.peer_loops,
        t.unexplained - t.peer_unexplained
    )
}

/// The loops and unexplained ends that happen with our driver uninstalled too.
fn peer_row(t: &Tally, width: usize) -> String {
    format!(
        "{:<20} {:>7} {:>9} {:>11} {:>width$} {:>9} {:>9} {:>7} {:>11}",
        "  peers among selves", "", "", "", "", "", "", t.peer_loops, t.peer_unexplained
    )
}

fn print_list(list: &[Counterexample], show: usize) {
    for (i, c) in list.iter().take(show).enumerate() {
        outln!("  {:>2}. {}", i + 1, c.describe());
        if c.other_moves > 0 {
            outln!("      interleaving: {}", c.moves.join(" "));
        }
    }
}

fn print_findings(label: &str, f: &Findings, show: usize) {
    if f.counterexamples.is_empty() {
        outln!("{label}: no loop or unexplained end that our place causes");
    } else {
        outln!(
            "{label}: {} failing setups, {} distinct shapes; shortest chains first:",
            f.counterexamples_found,
            f.counterexamples.len()
        );
        print_list(&f.counterexamples, show);
    }
    if !f.peer_only.is_empty() {
        outln!(
            "{label}: {} setups where peers fail among themselves (the same connection fails alone with our driver \
             uninstalled), {} distinct shapes:",
            f.tally.peer_only_configurations,
            f.peer_only.len()
        );
        print_list(&f.peer_only, show);
    }
    for (setup, e) in &f.model_errors {
        outln!("  model error [{setup}]: {e}");
    }
}

fn print_text(x: &Exploration, bounds: &Bounds, show: usize) {
    outln!(
        "arbiter explore: up to {} vendors, {} concurrent connections{}",
        bounds.max_vendors,
        bounds.connections,
        if bounds.quick { " (quick bounds)" } else { "" }
    );
    let w = executions_width(x, bounds.baseline);
    outln!(
        "{:<20} {:>7} {:>9} {:>11} {:>w$} {:>9} {:>9} {:>7} {:>11}",
        "ours",
        "setups",
        "states",
        "transitions",
        "executions",
        "delivered",
        "blocked",
        "loops",
        "unexplained"
    );
    outln!("{}", row("arbiter", &x.arbiter.tally, w));
    if x.arbiter.tally.peer_loops + x.arbiter.tally.peer_unexplained > 0 {
        outln!("{}", peer_row(&x.arbiter.tally, w));
    }
    if bounds.baseline {
        outln!("{}", row("baseline", &x.baseline.tally, w));
    }
    outln!();
    outln!(
        "arbiter failures: {} ({} setups with a loop or unexplained end our arbiter may cause, {} model errors, {} audit failures)",
        x.arbiter_failures(),
        x.arbiter.tally.failing_configurations,
        x.arbiter.tally.model_errors,
        x.arbiter.tally.audit_failures
    );
    print_findings("arbiter", &x.arbiter, show);
    if bounds.baseline {
        print_findings("baseline", &x.baseline, show);
    }
    outln!("explored in {:.1} s on {} threads", x.seconds, bounds.threads);
}

/// Runs `arbiter explore`.
pub(crate) fn run_cmd(args: &Args) -> u8 {
    if args.quick && (args.vendors == Some(3) || args.connections == Some(3)) {
        eprintln!("arbiter explore: --quick explores two vendors and two connections; drop --quick to explore three");
        return EXIT_BAD_INPUT;
    }
    let vendors = usize::from(args.vendors.unwrap_or(if args.quick { 2 } else { 3 }));
    let mut bounds = if args.quick { Bounds::quick(vendors) } else { Bounds::full(vendors) };
    bounds.connections = usize::from(args.connections.unwrap_or(2));
    bounds.baseline = !args.no_baseline;
    if args.strict {
        bounds.loop_settings.push(LoopSettings::Strict);
    }
    if !args.peers.is_empty() {
        bounds.profiles = args.peers.iter().filter_map(|p| Profile::from_name(p)).collect();
    }
    if let Some(t) = args.threads {
        bounds.threads = t.max(1);
    }
    // A progress bar per occupant of our place, on a terminal only.
    let tty = !args.json && std::io::stderr().is_terminal();
    let bar = tty.then(|| {
        let b = indicatif::ProgressBar::new(0);
        b.set_style(
            indicatif::ProgressStyle::with_template("{msg:>8} [{bar:40}] {pos}/{len} setups, {elapsed}")
                .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
        );
        b
    });
    let progress = |ours: Ours, i: usize, total: usize| {
        if let Some(b) = &bar {
            b.set_length(total as u64);
            b.set_message(ours.name());
            b.set_position((i + 1) as u64);
        }
    };
    let x = run(&bounds, &progress);
    if let Some(b) = bar {
        b.finish_and_clear();
    }
    if args.json {
        print_json(&json!({
            "bounds": {
                "max_vendors": bounds.max_vendors,
                "connections": bounds.connections,
                "quick": bounds.quick,
                "loop_settings": bounds.loop_settings.iter().map(|l| l.name()).collect::<Vec<_>>(),
                "threads": bounds.threads,
            },
            "arbiter": findings_json(&x.arbiter, args.show),
            "baseline": if bounds.baseline { findings_json(&x.baseline, args.show) } else { Value::Null },
            "arbiter_failures": x.arbiter_failures(),
            "elapsed_seconds": (x.seconds * 1000.0).round() / 1000.0,
        }));
    } else {
        print_text(&x, &bounds, args.show);
    }
    if x.arbiter_failures() == 0 { EXIT_OK } else { EXIT_FAILED }
}
