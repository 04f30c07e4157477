//! `arbiter lab`: the interop lab.

use crate::EXIT_BAD_INPUT;

/// `arbiter lab` options.
#[derive(clap::Args)]
pub(crate) struct Args {
    /// Print the results as JSON.
    #[arg(long)]
    json: bool,
}

pub(crate) fn run(args: &Args) -> u8 {
    let _ = args.json;
    eprintln!("arbiter lab: not implemented yet");
    EXIT_BAD_INPUT
}
