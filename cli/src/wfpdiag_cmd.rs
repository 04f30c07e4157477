//! `arbiter wfpdiag FILE...`: a machine's WFP state, from netsh's XML.

use std::path::PathBuf;

use arbiter_lab::audit_log::{decode, log_bytes};
use arbiter_wfpdiag::events::{self, Attributed, Join, OurDecision};
use arbiter_wfpdiag::inventory::Inventory;
use arbiter_wfpdiag::model::{Filter, Layer, LayerKind, parse_utc_ms};
use arbiter_wfpdiag::{Machine, setup};
use serde_json::{Value, json};

use crate::{EXIT_BAD_INPUT, EXIT_FAILED, EXIT_OK, print_json};

/// `arbiter wfpdiag` options.
#[derive(clap::Args)]
pub(crate) struct Args {
    /// netsh's XML: `netsh wfp show filters` (filters.xml), `netsh wfp show state`
    /// (wfpstate.xml), `netsh wfp show netevents`, or `netsh wfp capture`'s
    /// wfpdiag.cab (read directly) or the wfpdiag.xml extracted from it.
    /// Several files are read as one machine.
    #[arg(value_name = "FILE", required = true)]
    files: Vec<PathBuf>,
    /// Join each drop and allow with our driver's audit log (by 5-tuple and time).
    #[arg(long, value_name = "LOG")]
    audit: Option<PathBuf>,
    /// The machine's boot time in UTC (`2020-05-22T20:50:00Z`), which puts audit
    /// time (ms since boot) on the netEvents' clock; estimated when absent.
    #[arg(long, value_name = "UTC", requires = "audit")]
    boot_time: Option<String>,
    /// Write the machine's vendors as a lab setup for `arbiter lab --setup OUT`.
    #[arg(long, value_name = "OUT")]
    lab_setup: Option<PathBuf>,
    /// Print the results as JSON.
    #[arg(long)]
    json: bool,
}

pub(crate) fn run(args: &Args) -> u8 {
    let mut machine = Machine::default();
    for f in &args.files {
        if let Err(e) = machine.read_file(f) {
            eprintln!("{e}");
            return EXIT_BAD_INPUT;
        }
    }
    let inv = Inventory::of(&machine);
    let audit_log = match &args.audit {
        Some(p) => match std::fs::read(p) {
            Ok(b) => Some(log_bytes(b)),
            Err(e) => {
                eprintln!("{}: {e}", p.display());
                return EXIT_BAD_INPUT;
            }
        },
        None => None,
    };
    let ours: Vec<OurDecision> = match &audit_log {
        Some(log) => {
            let decoded = decode(log);
            let p = args.audit.as_deref().map(|p| p.display().to_string()).unwrap_or_default();
            for problem in &decoded.problems {
                eprintln!("{p}: {}: {}", problem.place, problem.message);
            }
            if decoded.lost_data() && decoded.records.is_empty() {
                return EXIT_BAD_INPUT;
            }
            events::our_decisions(&decoded.records)
        }
        None => Vec::new(),
    };
    let boot_ms = match &args.boot_time {
        Some(t) => match parse_utc_ms(t) {
            Some(ms) => Some(ms),
            None => {
                eprintln!("--boot-time {t}: expected UTC as YYYY-MM-DDTHH:MM:SS(.fff)Z");
                return EXIT_BAD_INPUT;
            }
        },
        None => None,
    };
    let own = events::own_filter_ids(&ours);
    let attributed = events::attribute(&machine, &inv, &own);
    let join = args.audit.as_ref().map(|_| events::join(&machine, &attributed, &ours, boot_ms));

    if let Some(out) = &args.lab_setup {
        let name = args
            .files
            .first()
            .and_then(|f| f.file_stem())
            .map_or_else(|| "machine".to_owned(), |s| s.to_string_lossy().into_owned());
        let s = setup::lab_setup(&machine, &inv, &name);
        let written = s.to_toml().and_then(|t| std::fs::write(out, t).map_err(|e| format!("{}: {e}", out.display())));
        if let Err(e) = written {
            eprintln!("{e}");
            return EXIT_BAD_INPUT;
        }
        if !args.json {
            println!(
                "wrote {} ({} vendors): run it with `arbiter lab --setup {}`",
                out.display(),
                s.vendors.len(),
                out.display()
            );
        }
    }

    // A check fails when a vendor before us at connect-redirect can take our
    // write right, or when another vendor dropped a connection we handled.
    let hazard =
        inv.before_us.iter().any(|b| b.layer.kind == LayerKind::ConnectRedirect && b.takes_write_right == Some(true));
    let dropped_ours = join
        .as_ref()
        .is_some_and(|j| j.rows.iter().any(|r| r.decided.starts_with("other vendor") && !r.ours.is_empty()));
    if args.json {
        print_json(&to_json(&machine, &inv, &attributed, join.as_ref()));
    } else {
        print_text(&machine, &inv, &attributed, join.as_ref());
    }
    if hazard || dropped_ours { EXIT_FAILED } else { EXIT_OK }
}

fn flags_of(f: &Filter) -> String {
    let mut v = Vec::new();
    if f.clears_action_right() {
        v.push("CLEAR_ACTION_RIGHT");
    }
    if f.persistent() {
        v.push("persistent");
    }
    if f.boot_time() {
        v.push("boot-time");
    }
    if f.permit_if_unregistered() {
        v.push("permit-if-unregistered");
    }
    if f.disabled() {
        v.push("disabled");
    }
    if v.is_empty() { "-".to_owned() } else { v.join(",") }
}

fn vendor_name(inv: &Inventory, v: Option<usize>) -> String {
    match v.and_then(|i| inv.vendors.get(i)) {
        Some(x) if x.ours => "arbiter (ours)".to_owned(),
        Some(x) => x.name.clone(),
        None => "arbiter (ours, not installed)".to_owned(),
    }
}

fn print_text(m: &Machine, inv: &Inventory, attributed: &[Attributed], join: Option<&Join>) {
    for f in &m.files {
        println!("read {} ({}, {} bytes)", f.name, f.kind.root(), f.bytes);
    }
    println!();
    println!("VENDORS at ALE_CONNECT_REDIRECT, ALE_BIND_REDIRECT, ALE_AUTH_CONNECT");
    println!("{:<40} {:<26} {:<16} WHY", "VENDOR", "RECOGNISED", "LAB PROFILE");
    for v in &inv.vendors {
        let known = v.known.map_or("-", |k| k.id);
        let profile = if v.ours { "(ours)" } else { v.mapping.profile.unwrap_or("-") };
        println!("{:<40} {:<26} {:<16} {}", v.name, known, profile, v.mapping.why);
    }
    let mut provider_keys: Vec<String> = m.filters.iter().filter_map(|f| f.provider.clone()).collect();
    provider_keys.extend(
        m.callouts.values().filter(|c| Layer::from_symbol(&c.layer).is_some()).filter_map(|c| c.provider.clone()),
    );
    provider_keys.sort_by_key(|k| arbiter_wfpdiag::key(k));
    provider_keys.dedup_by_key(|k| arbiter_wfpdiag::key(k));
    if !provider_keys.is_empty() {
        println!();
        println!("PROVIDERS");
        for k in &provider_keys {
            match m.provider(Some(k)) {
                Some(p) => {
                    let persistent = if p.persistent { ", persistent" } else { "" };
                    let service = p.service.as_deref().map(|s| format!(", service {s}")).unwrap_or_default();
                    println!("  {k} \"{}\"{persistent}{service}", p.name);
                }
                None => println!("  {k} (not described in the files)"),
            }
        }
    }
    let mut sublayer_keys: Vec<String> = m.filters.iter().map(|f| f.sublayer.clone()).collect();
    sublayer_keys.sort_by_key(|k| (core::cmp::Reverse(m.sublayer_weight(k)), arbiter_wfpdiag::key(k)));
    sublayer_keys.dedup_by_key(|k| arbiter_wfpdiag::key(k));
    if !sublayer_keys.is_empty() {
        println!();
        println!("SUBLAYERS (highest weight first)");
        for k in &sublayer_keys {
            let w = m.sublayer_weight(k).map_or_else(|| "?".to_owned(), |w| w.to_string());
            let name = m.sublayer_name(k);
            let name = if &name == k { String::new() } else { format!(" \"{name}\"") };
            println!("  {w:>6} {k}{name}");
        }
    }
    let referenced_callouts: Vec<_> = m.callouts.values().filter(|c| Layer::from_symbol(&c.layer).is_some()).collect();
    if !referenced_callouts.is_empty() {
        println!();
        println!("CALLOUTS");
        for c in referenced_callouts {
            let layer = Layer::from_symbol(&c.layer).map(|l| l.short()).unwrap_or_default();
            let provider = m.provider(c.provider.as_deref()).map_or("-", |p| p.name.as_str());
            let reg = if c.registered { "registered" } else { "not registered" };
            println!("  {layer:<20} {} \"{}\" provider {provider}, {reg}", c.key, c.name);
        }
    }
    for (layer, slots) in &inv.order {
        println!();
        println!("{} ({}) in classification order", layer.symbol(), layer.short());
        println!(
            "  {:>2} {:<28} {:>8} {:<34} {:>6} {:<14} {:>20} {:<22} {:<40} FLAGS",
            "#", "VENDOR", "FILTER", "NAME", "SUBW", "WEIGHT", "EFFECTIVE", "ACTION", "CALLOUT"
        );
        for (i, s) in slots.iter().enumerate() {
            let tie = if s.tie { "=" } else { " " };
            let subw = s.sublayer_weight.map_or_else(|| "?".to_owned(), |w| w.to_string());
            match s.filter.and_then(|f| m.filters.get(f)) {
                Some(f) => println!(
                    "{tie} {:>2} {:<28} {:>8} {:<34} {:>6} {:<14} {:>20} {:<22} {:<40} {}",
                    i + 1,
                    trunc(&vendor_name(inv, s.vendor), 28),
                    f.id,
                    trunc(&f.name, 34),
                    subw,
                    f.weight.to_string(),
                    f.effective_weight.map_or_else(|| "-".to_owned(), |w| w.to_string()),
                    f.action_short(),
                    f.callout.as_deref().unwrap_or("-"),
                    flags_of(f)
                ),
                None => {
                    println!("{tie} {:>2} {:<28} {:>8} {:<34} {subw:>6}", i + 1, "arbiter (ours, default)", "-", "-")
                }
            }
        }
    }
    println!();
    println!("PREDICTED ORDER (callouts and hard actions)");
    for (layer, slots) in &inv.order {
        let mut names: Vec<String> = Vec::new();
        for s in slots {
            let f = s.filter.and_then(|f| m.filters.get(f));
            let acts = f.is_none_or(|f| f.is_callout() || f.clears_action_right());
            let mut n = vendor_name(inv, s.vendor);
            if s.sublayer_weight.is_none() {
                n.push_str(" (?)");
            }
            if acts && names.last() != Some(&n) {
                names.push(n);
            }
        }
        if !names.is_empty() {
            let unknown = if names.iter().any(|n| n.ends_with("(?)")) {
                "   (?: sublayer weight not in the files, order unknown)"
            } else {
                ""
            };
            println!("  {:<20} {}{unknown}", layer.short(), names.join(" > "));
        }
    }
    println!();
    if inv.ours_present {
        println!("BEFORE US (our sublayer weight {})", inv.our_sublayer_weight);
    } else {
        println!(
            "BEFORE US (our driver is not in the files: placed at its default sublayer weight {})",
            inv.our_sublayer_weight
        );
    }
    let mut any = false;
    for b in &inv.before_us {
        let Some(f) = m.filters.get(b.filter) else { continue };
        if !(f.is_callout() || f.clears_action_right() || f.action == "FWP_ACTION_BLOCK") {
            continue;
        }
        any = true;
        let takes = match b.takes_write_right {
            Some(true) => "CAN TAKE our write right",
            Some(false) => "cannot take our write right",
            None => "unknown",
        };
        let tie = if b.same_weight {
            " [same sublayer weight as ours: WFP does not define which classifies first]"
        } else {
            ""
        };
        println!(
            "  {:<20} {} (filter {} \"{}\"): {takes}: {}{tie}",
            b.layer.short(),
            vendor_name(inv, Some(b.vendor)),
            f.id,
            f.name,
            b.why
        );
    }
    if !any {
        println!("  nobody: no callout or hard action classifies before us");
    }
    for (layer, v) in &inv.unknown_order {
        println!(
            "  {:<20} {}: order unknown (its sublayer weight is not in the files: add `netsh wfp show state`)",
            layer.short(),
            vendor_name(inv, Some(*v))
        );
    }
    if m.events.is_empty() && m.events_not_kept == 0 {
        return;
    }
    println!();
    println!(
        "DROPS AND ALLOWS ({} shown, {} more not kept, {} other netEvents)",
        m.events.len(),
        m.events_not_kept,
        m.other_events
    );
    for a in attributed {
        let Some(e) = m.events.get(a.event) else { continue };
        let proto = e.protocol.map_or_else(
            || "?".to_owned(),
            |p| match p {
                6 => "tcp".to_owned(),
                17 => "udp".to_owned(),
                other => other.to_string(),
            },
        );
        let tuple = format!(
            "{proto} {} -> {}",
            e.local.map_or_else(|| "?".to_owned(), |a| a.to_string()),
            e.remote.map_or_else(|| "?".to_owned(), |a| a.to_string())
        );
        let layer =
            a.layer.map_or_else(|| e.layer_id.map_or_else(|| "?".to_owned(), |l| format!("layer {l}")), |l| l.short());
        println!("{} {} {tuple} at {layer} ({})", e.time, e.kind.name().to_uppercase(), e.origin);
        println!("    app {}", e.app.as_deref().unwrap_or("?"));
        if let Some(p) = &e.package {
            println!("    package {p}");
        }
        match &a.decided_by {
            Some(n) if n.found => {
                println!("    decided by filter {} \"{}\" of {}, sublayer {}", n.id, n.name, n.vendor, n.sublayer)
            }
            Some(n) => println!("    decided by filter {} (not in the files: {})", n.id, n.vendor),
            None => println!("    decided by: no filter id"),
        }
        for (n, action) in &a.chain {
            let name =
                if n.found { format!("\"{}\" of {}", n.name, n.vendor) } else { "(not in the files)".to_owned() };
            println!("      terminating in {}: filter {} {name}: {action}", n.sublayer, n.id);
        }
        if let Some(r) = join.and_then(|j| j.rows.iter().find(|r| r.event == a.event)) {
            println!("    DECIDED: {}: {}", r.decided, r.why);
            for d in &r.ours {
                println!(
                    "      our record #{} at {} ms {}: {} {} -> {} {} ({})",
                    d.seq, d.at_ms, d.layer, d.protocol, d.local, d.remote, d.verdict, d.reason
                );
            }
        }
    }
    if let Some(j) = join {
        match (j.boot_ms, j.estimated) {
            (Some(b), true) => {
                println!("(audit time joined with boot at {b} ms UTC, estimated from the 5-tuple matches)")
            }
            (Some(b), false) => println!("(audit time joined with boot at {b} ms UTC)"),
            (None, _) => println!("(no 5-tuple match to estimate the boot time: joined by 5-tuple only)"),
        }
    }
}

fn trunc(s: &str, n: usize) -> String {
    if s.chars().count() <= n { s.to_owned() } else { format!("{}~", s.chars().take(n - 1).collect::<String>()) }
}

fn filter_json(m: &Machine, inv: &Inventory, i: usize) -> Value {
    let Some(f) = m.filters.get(i) else { return Value::Null };
    json!({
        "id": f.id, "key": f.key, "name": f.name, "layer": f.layer,
        "vendor": inv.vendor_of_filter(i).map(|v| v.name.clone()),
        "provider": f.provider, "provider_name": m.provider(f.provider.as_deref()).map(|p| p.name.clone()),
        "sublayer": f.sublayer, "sublayer_name": m.sublayer_name(&f.sublayer),
        "sublayer_weight": m.sublayer_weight(&f.sublayer),
        "weight": f.weight.to_string(), "effective_weight": f.effective_weight,
        "action": f.action, "callout": f.callout,
        "callout_name": f.callout.as_deref().and_then(|c| m.callouts.get(&arbiter_wfpdiag::key(c))).map(|c| c.name.clone()),
        "clear_action_right": f.clears_action_right(), "persistent": f.persistent(), "boot_time": f.boot_time(),
        "permit_if_callout_unregistered": f.permit_if_unregistered(), "disabled": f.disabled(),
        "conditions": f.conditions, "origin": f.origin,
    })
}

fn to_json(m: &Machine, inv: &Inventory, attributed: &[Attributed], join: Option<&Join>) -> Value {
    let files: Vec<Value> =
        m.files.iter().map(|f| json!({"file": f.name, "kind": f.kind.root(), "bytes": f.bytes})).collect();
    let vendors: Vec<Value> = inv
        .vendors
        .iter()
        .map(|v| {
            json!({
                "name": v.name, "provider": v.provider, "ours": v.ours,
                "recognised": v.known.map(|k| k.id), "product": v.known.map(|k| k.product),
                "lab_profile": v.mapping.profile, "planned_profile": v.mapping.planned, "why": v.mapping.why,
                "filters": v.filters.iter().filter_map(|&i| m.filters.get(i).map(|f| f.id)).collect::<Vec<_>>(),
            })
        })
        .collect();
    let providers: Vec<Value> = m
        .providers
        .values()
        .map(|p| json!({"key": p.key, "name": p.name, "description": p.description, "persistent": p.persistent, "service": p.service}))
        .collect();
    let sublayers: Vec<Value> = m
        .sublayers
        .values()
        .map(|s| json!({"key": s.key, "name": s.name, "provider": s.provider, "weight": s.weight, "persistent": s.persistent}))
        .collect();
    let callouts: Vec<Value> = m
        .callouts
        .values()
        .filter(|c| Layer::from_symbol(&c.layer).is_some())
        .map(|c| json!({"key": c.key, "name": c.name, "provider": c.provider, "layer": c.layer, "id": c.id, "registered": c.registered, "persistent": c.persistent}))
        .collect();
    let order: serde_json::Map<String, Value> = inv
        .order
        .iter()
        .map(|(layer, slots)| {
            let rows: Vec<Value> = slots
                .iter()
                .map(|s| match s.filter {
                    Some(i) => {
                        let mut v = filter_json(m, inv, i);
                        if let Some(o) = v.as_object_mut() {
                            o.insert("tie_with_previous".into(), s.tie.into());
                        }
                        v
                    }
                    None => json!({"vendor": "arbiter", "hypothetical": true, "sublayer_weight": s.sublayer_weight}),
                })
                .collect();
            (layer.short(), Value::Array(rows))
        })
        .collect();
    let before: Vec<Value> = inv
        .before_us
        .iter()
        .map(|b| {
            json!({
                "layer": b.layer.short(), "vendor": vendor_name(inv, Some(b.vendor)),
                "filter": m.filters.get(b.filter).map(|f| f.id),
                "takes_write_right": b.takes_write_right, "why": b.why, "same_sublayer_weight": b.same_weight,
            })
        })
        .collect();
    let events: Vec<Value> = attributed
        .iter()
        .filter_map(|a| {
            let e = m.events.get(a.event)?;
            let named = |n: &events::Named| json!({"filter": n.id, "name": n.name, "vendor": n.vendor, "sublayer": n.sublayer, "ours": n.ours, "in_files": n.found});
            let joined = join.and_then(|j| j.rows.iter().find(|r| r.event == a.event)).map(|r| {
                json!({
                    "decided": r.decided, "why": r.why,
                    "our_records": r.ours.iter().map(|d| json!({
                        "seq": d.seq, "at_ms": d.at_ms, "layer": d.layer, "protocol": d.protocol,
                        "local": d.local.to_string(), "remote": d.remote.to_string(),
                        "redirected_to": d.redirected_to.map(|a| a.to_string()), "verdict": d.verdict, "reason": d.reason,
                    })).collect::<Vec<_>>(),
                })
            });
            Some(json!({
                "type": e.kind.name(), "time": e.time, "protocol": e.protocol,
                "local": e.local.map(|a| a.to_string()), "remote": e.remote.map(|a| a.to_string()),
                "app": e.app, "user": e.user, "package": e.package,
                "layer": a.layer.map(|l| l.short()), "layer_id": e.layer_id,
                "decided_by": a.decided_by.as_ref().map(named),
                "terminating": a.chain.iter().map(|(n, act)| { let mut v = named(n); if let Some(o) = v.as_object_mut() { o.insert("action".into(), act.clone().into()); } v }).collect::<Vec<_>>(),
                "audit": joined, "origin": e.origin,
            }))
        })
        .collect();
    json!({
        "files": files, "vendors": vendors, "providers": providers, "sublayers": sublayers, "callouts": callouts,
        "order": order, "ours_present": inv.ours_present, "our_sublayer_weight": inv.our_sublayer_weight,
        "before_us": before,
        "unknown_order": inv.unknown_order.iter().map(|(l, v)| json!({"layer": l.short(), "vendor": vendor_name(inv, Some(*v))})).collect::<Vec<_>>(),
        "events": events, "events_not_kept": m.events_not_kept, "other_events": m.other_events,
        "audit_boot_ms": join.and_then(|j| j.boot_ms), "audit_boot_estimated": join.map(|j| j.estimated),
    })
}
