//! `arbiter reasons [NAME]`: every reason code with its decision-table row and
//! one line, or the whole story of one (docs/decision-table.md).

use arbiter::Reason;
use serde_json::json;

use crate::out::outln;
use crate::{EXIT_BAD_INPUT, EXIT_OK, print_json};

/// `arbiter reasons` options.
#[derive(clap::Args)]
pub(crate) struct Args {
    /// Explain this reason (a kebab-case name such as `loop-suspected`, or its numeric code).
    #[arg(value_name = "NAME")]
    name: Option<String>,
    /// Print the results as JSON.
    #[arg(long)]
    json: bool,
}

/// Where a reason comes from: its row, the verdicts it goes with, and when.
struct Row {
    reason: Reason,
    row: &'static str,
    verdicts: &'static str,
    when: &'static str,
}

/// One entry per reason, in code order (a unit test keeps it complete).
const ROWS: &[Row] = &[
    Row {
        reason: Reason::UnsupportedProtocol,
        row: "C1",
        verdicts: "continue",
        when: "At connect-redirect, the flow is neither TCP nor UDP. Only TCP and UDP connections are ever redirected, so the flow is left alone.",
    },
    Row {
        reason: Reason::RedirectedBySelf,
        row: "C2",
        verdicts: "continue",
        when: "The redirect state says the latest redirection of this chain was ours: typically our own proxy's outbound connection, which carries the redirect records it copied. Proxying it again would loop.",
    },
    Row {
        reason: Reason::RevisitPermitted,
        row: "C3",
        verdicts: "permit",
        when: "The state is previously-redirected-by-self: we redirected this chain once, another redirector sent it on, and it came back to us. With `coexistence.revisit = \"permit\"` (the default) we let it through.",
    },
    Row {
        reason: Reason::RevisitBlocked,
        row: "C3",
        verdicts: "block",
        when: "As revisit-permitted, with `coexistence.revisit = \"block\"`: the flow is blocked, and the block is enforced again at auth-connect.",
    },
    Row {
        reason: Reason::NoWriteRight,
        row: "C4",
        verdicts: "continue",
        when: "A filter of higher weight took the write right (a hard permit or block). Without it we may only veto, so we leave the flow alone.",
    },
    Row {
        reason: Reason::LocalProxyOfOther,
        row: "C5",
        verdicts: "permit",
        when: "The previousVersion chain holds an entry by another filter with a local redirect handle: another vendor is sending this flow to its own local proxy right now. We soft-permit and let it.",
    },
    Row {
        reason: Reason::ModifiedBySelf,
        row: "C6",
        verdicts: "continue",
        when: "The previousVersion chain holds an entry by our own filter: we already changed this flow, and this classification is a reauthorization.",
    },
    Row {
        reason: Reason::OwnProxyOutbound,
        row: "C7",
        verdicts: "permit",
        when: "The connecting process is our own proxy, and the state does not show our redirection (the proxy did not propagate the records, or another vendor redirected it). Its outbound goes out.",
    },
    Row {
        reason: Reason::LoopSuspected,
        row: "C8",
        verdicts: "permit or block",
        when: "The flow would be proxied, but the connecting process is a known local proxy and we already proxied this destination `coexistence.max_hops` times within `coexistence.hop_window_ms`. `coexistence.on_loop` decides: permit (default) or block.",
    },
    Row {
        reason: Reason::TrustedOther,
        row: "C9",
        verdicts: "continue",
        when: "Another vendor redirected this flow and the connecting process matches `coexistence.trust`: we leave the trusted proxy's traffic alone.",
    },
    Row {
        reason: Reason::UntrustedOtherProxied,
        row: "C10",
        verdicts: "proxy",
        when: "Another vendor redirected this flow, its proxy is not trusted, and the first matching rule says proxy: we send it to our proxy.",
    },
    Row {
        reason: Reason::RuleProxy,
        row: "C11",
        verdicts: "proxy",
        when: "The first matching rule says proxy: the remote is rewritten to our proxy's listener and the original destination travels in the redirect context.",
    },
    Row {
        reason: Reason::RuleBlock,
        row: "C12",
        verdicts: "block",
        when: "The first matching rule says block. The block is cached under the endpoint and enforced at auth-connect.",
    },
    Row {
        reason: Reason::RuleBypass,
        row: "C13",
        verdicts: "continue",
        when: "The first matching rule says bypass: the flow goes its way untouched.",
    },
    Row {
        reason: Reason::NoRule,
        row: "C14",
        verdicts: "continue",
        when: "No rule matches the flow: it is left alone.",
    },
    Row {
        reason: Reason::RedirectTargetMismatch,
        row: "A3",
        verdicts: "block",
        when: "At auth-connect, a flow we proxied was redirected to a process other than our proxy (LOCAL_REDIRECT_TARGET_PID differs). Someone changed our redirection: the flow is blocked.",
    },
    Row {
        reason: Reason::OriginalDestinationMismatch,
        row: "A4",
        verdicts: "block",
        when: "At auth-connect, a flow we proxied reports an ORIGINAL_DESTINATION other than the one we recorded: blocked.",
    },
    Row {
        reason: Reason::ProxyVerified,
        row: "A5",
        verdicts: "permit",
        when: "At auth-connect, a flow we proxied reached our proxy with the destination we recorded.",
    },
    Row {
        reason: Reason::RedirectedByOtherObserved,
        row: "A6",
        verdicts: "continue",
        when: "At auth-connect, a flow another redirector sent to a local proxy: its target PID is remembered as a known local proxy (C8 watches it from now on).",
    },
    Row {
        reason: Reason::NotRedirected,
        row: "A7",
        verdicts: "continue",
        when: "At auth-connect, nothing to enforce: the flow was not redirected and carries no cached verdict.",
    },
    Row {
        reason: Reason::ProxyUnavailable,
        row: "after C11 (extension)",
        verdicts: "continue",
        when: "A rule proxies the flow, but no proxy listener is registered for its address family (no proxy PID, or no `[proxy]` listener for IPv4/IPv6). The flow is left alone: fail open.",
    },
    Row {
        reason: Reason::ChainTooLong,
        row: "after C4 (extension)",
        verdicts: "continue",
        when: "The previousVersion chain holds more distinct modifiers than the core can inspect, so C5 and C6 cannot be ruled out: the flow is left alone.",
    },
    Row {
        reason: Reason::PendTimeout,
        row: "driver (extension)",
        verdicts: "the configured fallback",
        when: "The driver held a classification while no proxy was registered, and the proxy did not register in time: the configured fallback verdict applies.",
    },
    Row {
        reason: Reason::LayerDataUnavailable,
        row: "driver (extension)",
        verdicts: "continue",
        when: "WFP did not grant the classify handle or the writable connect request, so the previousVersion chain is unknown and the flow cannot be changed. The adapter leaves it alone (fail open), counts it and audits it.",
    },
    Row {
        reason: Reason::UnreadableIndication,
        row: "driver (extension)",
        verdicts: "continue",
        when: "The redirect state or the previousVersion chain WFP reported could not be read. The adapter leaves the flow alone (fail open), counts it and audits it.",
    },
    Row {
        reason: Reason::Evicted,
        row: "audit only",
        verdicts: "-",
        when: "A table was full and its oldest entry was evicted. An evicted cached block is no longer enforced at auth-connect; the audit record says so.",
    },
    Row {
        reason: Reason::Expired,
        row: "audit only",
        verdicts: "-",
        when: "A cached entry reached its time to live before its auth-connect indication arrived (default 60 s).",
    },
];

fn find(name: &str) -> Option<&'static Row> {
    let by_code = name.parse::<u16>().ok().map(Reason::from_code);
    ROWS.iter().find(|r| r.reason.name() == name || Some(r.reason) == by_code)
}

pub(crate) fn run(args: &Args) -> u8 {
    let Some(name) = &args.name else {
        if args.json {
            let list: Vec<_> = ROWS
                .iter()
                .map(|r| {
                    json!({"name": r.reason.name(), "code": r.reason.code(), "row": r.row,
                                "verdicts": r.verdicts, "description": r.reason.description()})
                })
                .collect();
            print_json(&json!(list));
        } else {
            outln!("{:<30} {:>4}  {:<22} {:<16} DESCRIPTION", "REASON", "CODE", "ROW", "VERDICT");
            for r in ROWS {
                outln!(
                    "{:<30} {:>4}  {:<22} {:<16} {}",
                    r.reason.name(),
                    r.reason.code(),
                    r.row,
                    r.verdicts,
                    r.reason.description()
                );
            }
            outln!();
            outln!("`arbiter reasons NAME` explains one; docs/decision-table.md has the whole table.");
        }
        return EXIT_OK;
    };
    let Some(r) = find(name) else {
        eprintln!("arbiter reasons: no reason is named {name:?}; `arbiter reasons` lists them all");
        return EXIT_BAD_INPUT;
    };
    if args.json {
        print_json(&json!({"name": r.reason.name(), "code": r.reason.code(), "row": r.row, "verdicts": r.verdicts,
                           "description": r.reason.description(), "explanation": r.when}));
    } else {
        outln!("{} (code {}): {}", r.reason.name(), r.reason.code(), r.reason.description());
        outln!("row:     {}", r.row);
        outln!("verdict: {}", r.verdicts);
        outln!();
        outln!("{}", r.when);
    }
    EXIT_OK
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_reason_has_exactly_one_row_in_code_order() {
        let listed: Vec<Reason> = ROWS.iter().map(|r| r.reason).collect();
        assert_eq!(listed, Reason::ALL);
    }

    #[test]
    fn names_and_codes_find_their_row() {
        assert_eq!(find("loop-suspected").map(|r| r.row), Some("C8"));
        assert_eq!(find("18").map(|r| r.reason), Some(Reason::ProxyVerified));
        assert!(find("nope").is_none());
    }
}
