//! `arbiter lab --boot`: the start-up timeline under both `[boot]` modes.

use std::path::Path;

use arbiter::boot::BootMode;
use arbiter_lab::boot::{BOOT_RULES, Phase, timeline};
use serde_json::json;

use crate::{EXIT_BAD_INPUT, EXIT_FAILED, EXIT_OK, print_json};

/// Prints each mode's phases and flows; exits 1 if `block` mode let a flow
/// our rules would proxy or block escape, or if either mode blocked a flow
/// once everything was ready.
pub(crate) fn run(rules: Option<&Path>, as_json: bool) -> u8 {
    let loaded = match rules {
        Some(p) => arbiter_lab::scenario::LabRules::load(p).map(|r| r.rules),
        None => arbiter_lab::rules::parse_str(BOOT_RULES, "default.toml + a telnet block rule"),
    };
    let rules = match loaded {
        Ok(r) => r,
        Err(e) => {
            eprintln!("{e}");
            return EXIT_BAD_INPUT;
        }
    };
    let mut ok = true;
    let mut out = Vec::new();
    let mut lines = Vec::new();
    for mode in [BootMode::Open, BootMode::Block] {
        let t = match timeline(&rules, mode) {
            Ok(t) => t,
            Err(e) => {
                eprintln!("{e}");
                return EXIT_FAILED;
            }
        };
        let escapes = t.escapes();
        let blocked = t.blocked_when_ready();
        if (mode == BootMode::Block && !escapes.is_empty()) || !blocked.is_empty() {
            ok = false;
        }
        let flows = t.phases.first().map_or(0, |(_, c)| c.len());
        lines.push(format!(
            "boot {}: {} phases x {} flows, {} escaped, {} blocked once ready",
            mode.name(),
            Phase::ALL.len(),
            flows,
            escapes.len(),
            blocked.len()
        ));
        if as_json {
            out.push(json!({
                "mode": mode.name(),
                "phases": t.phases.iter().map(|(p, cells)| json!({
                    "phase": p.name(),
                    "flows": cells.iter().map(|c| json!({
                        "flow": c.flow.name, "remote": c.flow.remote, "fate": c.fate.name(),
                        "rule": c.wanted.map(|a| format!("{a:?}").to_lowercase()), "escaped": c.escaped(),
                    })).collect::<Vec<_>>(),
                })).collect::<Vec<_>>(),
                "audited": t.audited.iter().map(|(p, c)| json!({"phase": p.name(), "change": c})).collect::<Vec<_>>(),
                "escaped": escapes.len(), "blocked_when_ready": blocked.len(),
            }));
        } else {
            println!("{t}");
        }
    }
    if as_json {
        print_json(&json!({ "modes": out, "ok": ok }));
    } else {
        println!("(! marks a flow our rules would proxy or block that went out directly)");
        for l in &lines {
            println!("{l}");
        }
    }
    if ok { EXIT_OK } else { EXIT_FAILED }
}
