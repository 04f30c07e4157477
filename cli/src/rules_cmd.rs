//! `arbiter rules check|compile`: delegated to the rules crate.

use crate::EXIT_BAD_INPUT;

/// `arbiter rules` subcommands.
#[derive(clap::Subcommand)]
pub(crate) enum RulesCommand {
    /// Check rule files and print every diagnostic.
    Check {
        /// Print the results as JSON.
        #[arg(long)]
        json: bool,
    },
}

pub(crate) fn run(c: RulesCommand) -> u8 {
    let RulesCommand::Check { json } = c;
    let _ = json;
    eprintln!("arbiter rules: not implemented yet");
    EXIT_BAD_INPUT
}
