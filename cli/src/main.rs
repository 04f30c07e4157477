//! `arbiter`: the users' daily tool around the policy core.
//!
//! Subcommands: `replay` (regression fixtures), `lab` (the interop lab),
//! `audit` (decode and check driver audit logs), `rules` (check and compile
//! rule sets). Exit status everywhere: 0 success, 1 a check failed, 2 bad
//! input. Every subcommand takes `--json`.

#![allow(clippy::std_instead_of_core, clippy::alloc_instead_of_core, reason = "std crate: host tool")]

mod out;

mod audit_cmd;
mod bench_cmd;
mod boot_cmd;
mod explore_cmd;
mod lab_cmd;
mod lab_setup_cmd;
mod reasons_cmd;
mod replay_cmd;
mod rules_cmd;
mod wfpdiag_cmd;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// Exit status: success.
const EXIT_OK: u8 = 0;
/// Exit status: a check failed.
const EXIT_FAILED: u8 = 1;
/// Exit status: an input could not be read or parsed.
const EXIT_BAD_INPUT: u8 = 2;

#[derive(Parser)]
#[command(
    name = "arbiter",
    version,
    about = "Loop-free arbitration between WFP redirect drivers: interop lab, fixture replay, audit logs, rules",
    long_about = "Loop-free arbitration between WFP redirect drivers.\n\n\
        The main command runs the interop lab on the bundled rules:\n    arbiter lab\n\
        Replay the regression corpus:\n    arbiter replay fixtures/\n\n\
        Exit status: 0 success, 1 a check failed, 2 an input could not be read or parsed."
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Replay redirect-chain fixtures against the policy core.
    ///
    /// Prints one line per fixture and `N passed, M failed`. Exit 0 when every
    /// expectation holds, 1 when any does not, 2 when a fixture cannot be read
    /// or parsed.
    Replay(replay_cmd::Args),
    /// Run the interop lab: our arbiter next to models of other vendors.
    ///
    /// Every peer profile above and below our weight, TCP and UDP, IPv4 and
    /// IPv6, each shipped rule set; then the same matrix with the WFP sample's
    /// logic in our place as the baseline. Exit 1 if any scenario with our
    /// arbiter loops or ends without an explanation.
    Lab(lab_cmd::Args),
    /// Explore every combination, up to a bound, of vendors, weight orders,
    /// trust settings, record propagation and interleaved connections.
    ///
    /// Prints counts (setups, states, executions, outcomes per kind) and the
    /// shortest counterexamples found with the sampler logic in our place.
    /// Exit 1 if our arbiter loops or ends unexplained in any of them.
    Explore(explore_cmd::Args),
    /// Decode a driver audit log; turn it into a fixture; check its invariants.
    Audit(audit_cmd::Args),
    /// Check or compile rule sets.
    #[command(subcommand)]
    Rules(rules_cmd::RulesCommand),
    /// Measure a decision's cost: the arbiter next to a naive implementation and the WFP sample's logic.
    ///
    /// Median ns per decision at both layers, allocations per decision, table
    /// bytes per live endpoint and the ratio to naive, at 10, 1,000 and 10,000
    /// generated rules (or --rules FILE) and 1,000, 65,536 and 1,000,000 live
    /// endpoints. Exit 1 if the arbiter and the naive implementation disagree.
    Bench(bench_cmd::Args),
    /// List every reason code with its decision-table row, or explain one.
    ///
    /// Without NAME: one line per reason (name, code, row, verdict, description).
    /// With NAME (or a numeric code): when the core gives it and what follows.
    Reasons(reasons_cmd::Args),
    /// Read a machine's WFP state from netsh's XML: the vendors at the redirect
    /// and auth-connect layers, their classification order, who acts before us,
    /// and who decided each drop and allow.
    ///
    /// Exit 1 if a vendor classifying before us at connect-redirect can take our
    /// write right, or (with --audit) another vendor dropped a connection we handled.
    Wfpdiag(wfpdiag_cmd::Args),
}

fn main() -> ExitCode {
    out::install_panic_hook();
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => return ExitCode::from(usage(&e)),
    };
    let code = match cli.command {
        Command::Replay(a) => replay_cmd::run(&a),
        Command::Lab(a) => lab_cmd::run(&a),
        Command::Explore(a) => explore_cmd::run_cmd(&a),
        Command::Audit(a) => audit_cmd::run(&a),
        Command::Rules(c) => rules_cmd::run(c),
        Command::Bench(a) => bench_cmd::run(&a),
        Command::Reasons(a) => reasons_cmd::run(&a),
        Command::Wfpdiag(a) => wfpdiag_cmd::run(&a),
    };
    out::flush();
    ExitCode::from(code)
}

/// Prints `--help`, `--version` or a usage error as clap would, through
/// [`out`] for stdout, and returns clap's exit status.
fn usage(e: &clap::Error) -> u8 {
    if e.use_stderr() {
        // clap picks colours for a terminal and ignores a closed stderr.
        let _ = e.print();
    } else {
        use std::io::IsTerminal as _;
        let styled = e.render();
        let text = if std::io::stdout().is_terminal() { styled.ansi().to_string() } else { styled.to_string() };
        out::bytes(text.as_bytes());
    }
    u8::try_from(e.exit_code()).unwrap_or(EXIT_BAD_INPUT)
}

/// Prints JSON to stdout.
fn print_json(v: &serde_json::Value) {
    out::outln!("{}", serde_json::to_string_pretty(v).unwrap_or_default());
}

/// A path for display, relative to the current folder when possible.
fn shown(p: &std::path::Path) -> String {
    std::env::current_dir()
        .ok()
        .and_then(|cwd| p.strip_prefix(cwd).ok().map(PathBuf::from))
        .unwrap_or_else(|| p.to_path_buf())
        .display()
        .to_string()
}
