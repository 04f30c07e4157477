//! `arbiter bench`: the cost of a decision on the user's machine, next to a
//! naive implementation and the WFP sample's logic (see the `arbiter-bench`
//! crate for what each column is and how the workload is made).
//!
//! The binary's global allocator counts allocations, so the benchmark can
//! report allocations per decision; counting costs one relaxed atomic add per
//! allocation, which the other subcommands do not notice.

use std::io::IsTerminal as _;
use std::path::PathBuf;

use arbiter_bench::{CountingAllocator, Plan, Rules};

use crate::out::out;
use crate::{EXIT_BAD_INPUT, EXIT_FAILED, EXIT_OK, print_json, shown};

#[global_allocator]
static ALLOCATOR: CountingAllocator = arbiter_bench::counting_system();

/// `arbiter bench` options.
#[derive(clap::Args)]
pub(crate) struct Args {
    /// Benchmark this rules file instead of the generated 10, 1,000 and 10,000-rule sets.
    #[arg(long, value_name = "FILE")]
    rules: Option<PathBuf>,
    /// Print one JSON object: the largest configuration's figures at the top, every one under "runs".
    #[arg(long)]
    json: bool,
    /// A few seconds instead of about a minute: 10 and 1,000 rules, 1,000 and 65,536 endpoints, fewer batches.
    #[arg(long)]
    quick: bool,
}

pub(crate) fn run(args: &Args) -> u8 {
    let rules = match &args.rules {
        Some(path) => match arbiter_ruleset::load_file(path) {
            Ok(loaded) => Rules::Given { name: shown(path), rules: loaded.rules },
            Err(report) => {
                eprint!("{report}");
                return EXIT_BAD_INPUT;
            }
        },
        None if args.quick => Rules::Generated(arbiter_bench::QUICK_RULE_COUNTS.to_vec()),
        None => Rules::Generated(arbiter_bench::RULE_COUNTS.to_vec()),
    };
    let plan = if args.quick { Plan::quick() } else { Plan::full() };
    let count = || arbiter_bench::allocations(&ALLOCATOR);
    let chatty = !args.json && std::io::stderr().is_terminal();
    let progress = |rules: usize, endpoints: u32| {
        if chatty {
            eprintln!("running {rules} rules x {endpoints} live endpoints ...");
        }
    };
    match arbiter_bench::bench(rules, &plan, &count, progress) {
        Ok(report) => {
            if args.json {
                print_json(&arbiter_bench::report::to_json(&report));
            } else {
                out!("{}", arbiter_bench::report::to_table(&report));
            }
            // A benchmark whose two implementations disagree measured nothing.
            if report.agree() { EXIT_OK } else { EXIT_FAILED }
        }
        Err(e) => {
            eprintln!("arbiter bench: {e}");
            EXIT_FAILED
        }
    }
}
