//! # arbiter-ruleset: the rules front end
//!
//! Reads `rules/*.toml` (`shared/spec/formats.md`, the rules half) in two
//! phases, as cargo-deny reads its configuration: the spanned TOML tree is
//! walked with every key checked against the schema (unknown keys are
//! errors: a typo in a security policy must not pass silently), then every
//! value is validated into an [`arbiter::RuleSet`]. All problems are
//! collected, each with a stable kebab-case code, `file:line:col` and a
//! labelled snippet; a file with any error loads nothing.
//!
//! The loaded rule set's `id` is the checksum of its driver blob
//! ([`arbiter::compiled::blob`]), so audit records name the exact rules that
//! decided. [`check_command`] and [`compile_command`] are `arbiter rules
//! check` and `arbiter rules compile`.
//!
//! Diagnostic codes: `toml-syntax`, `io-error`, `unknown-key`, `wrong-type`,
//! `missing-version`, `unsupported-version`, `bad-socket-addr`,
//! `proxy-not-local`, `unknown-revisit`, `unknown-on-loop`, `zero-max-hops`,
//! `zero-hop-window`, `out-of-range`, `missing-action`, `unknown-action`,
//! `unknown-protocol`, `bad-cidr`, `bad-port-range`, `empty-range`,
//! `inverted-range`, `bad-glob`, `bad-sid`, `duplicate-rule-name`, `unknown-boot-mode`,
//! `bad-boot-allow`, `boot-allow-too-long`; warnings
//! `shadowed-rule`, `cidr-host-bits`, `glob-forward-slash`,
//! `glob-not-anchored`, `not-package-sid`, `boot-allow-unused`.

#![allow(clippy::std_instead_of_core, clippy::alloc_instead_of_core, reason = "std crate: host tool")]

mod diag;
mod parse;

use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};

use arbiter::compiled::blob;
use arbiter::policy::{Cidr, Glob, PortRange, Rule, RuleSet};
use toml::de::DeTable;

use diag::Sink;
pub use diag::{Diagnostic, Report, Severity};
use parse::{Parsed, Walker};

/// A rule set that loaded: the rules and the warnings found on the way.
#[derive(Clone, Debug)]
pub struct Loaded {
    /// The validated rule set; `id` is its blob's checksum.
    pub rules: RuleSet,
    /// Warnings (the rules still load).
    pub warnings: Vec<Diagnostic>,
}

/// Parses and validates a rules file held in memory. `origin` names it in
/// diagnostics. On any error, returns every diagnostic (warnings included).
pub fn parse_str(source: &str, origin: &str) -> Result<Loaded, Report> {
    let mut sink = Sink::new(source, origin);
    let (root, syntax) = DeTable::parse_recoverable(source);
    for e in &syntax {
        let span = e.span().unwrap_or(0..0);
        sink.error("toml-syntax", span, e.message().trim().to_owned(), "here");
    }
    if !syntax.is_empty() {
        return Err(finish(sink));
    }
    let mut walker = Walker { sink };
    let (mut rules, parsed) = walker.document(&root);
    let mut sink = walker.sink;
    if !sink.has_errors() {
        duplicates(&mut sink, &parsed);
        shadowing(&mut sink, &parsed);
    }
    if sink.has_errors() {
        return Err(finish(sink));
    }
    rules.rules = parsed.into_iter().map(|p| p.rule).collect();
    match blob::rule_set_id(&rules) {
        Ok(id) => rules.id = id,
        Err(_) => {
            sink.error("out-of-range", 0..0, "the rule set is too large to encode", "here");
            return Err(finish(sink));
        }
    }
    let mut warnings = sink.items;
    warnings.sort_by_key(|d| d.span.start);
    Ok(Loaded { rules, warnings })
}

fn finish(sink: Sink<'_>) -> Report {
    let mut items = sink.items;
    items.sort_by_key(|d| d.span.start);
    let mut report = Report::new();
    report.extend(sink.origin, sink.source, items);
    report
}

/// Reads and parses a rules file.
pub fn load_file(path: &Path) -> Result<Loaded, Report> {
    let origin = path.display().to_string();
    match std::fs::read_to_string(path) {
        Ok(source) => parse_str(&source, &origin),
        Err(e) => {
            let mut sink = Sink::new("", &origin);
            sink.error("io-error", 0..0, format!("cannot read {origin}: {e}"), "here");
            Err(finish(sink))
        }
    }
}

/// `duplicate-rule-name`: names identify rules in reports, so they must be unique.
fn duplicates(sink: &mut Sink<'_>, parsed: &[Parsed]) {
    let mut seen: HashMap<&str, &Parsed> = HashMap::new();
    for p in parsed {
        match seen.get(p.rule.name.as_str()) {
            Some(first) => {
                sink.error(
                    "duplicate-rule-name",
                    p.anchor.clone(),
                    format!("two rules are named {:?}", p.rule.name),
                    "second rule with this name",
                )
                .related(first.anchor.clone(), "first defined here")
                .help("rule names identify rules in audit reports: make them unique");
            }
            None => {
                seen.insert(&p.rule.name, p);
            }
        }
    }
}

fn is_catch_all(r: &Rule) -> bool {
    r.protocol.is_none()
        && r.remote.is_empty()
        && r.remote_ports.is_empty()
        && r.app.is_empty()
        && r.original_app.is_empty()
        && r.package.is_empty()
}

/// Every flow `inner` admits in one dimension, `outer` admits too.
fn covers<T>(outer: &[T], inner: &[T], within: impl Fn(&T, &T) -> bool) -> bool {
    outer.is_empty() || (!inner.is_empty() && inner.iter().all(|i| outer.iter().any(|o| within(o, i))))
}

fn cidr_within(o: &Cidr, i: &Cidr) -> bool {
    o.prefix <= i.prefix && o.contains(&i.addr)
}

fn range_within(o: &PortRange, i: &PortRange) -> bool {
    o.lo <= i.lo && i.hi <= o.hi
}

fn glob_within(o: &Glob, i: &Glob) -> bool {
    o == i || o.units().iter().all(|&u| u == u16::from(b'*'))
}

/// Does rule `earlier` match every flow `later` matches?
fn subsumes(earlier: &Rule, later: &Rule) -> bool {
    (earlier.protocol.is_none() || earlier.protocol == later.protocol)
        && covers(&earlier.remote, &later.remote, cidr_within)
        && covers(&earlier.remote_ports, &later.remote_ports, range_within)
        && covers(&earlier.app, &later.app, glob_within)
        && covers(&earlier.original_app, &later.original_app, glob_within)
        && covers(&earlier.package, &later.package, |o, i| o == i)
}

/// `shadowed-rule`: a rule that an earlier rule always beats can never decide.
fn shadowing(sink: &mut Sink<'_>, parsed: &[Parsed]) {
    for (j, later) in parsed.iter().enumerate() {
        let Some(earlier) = parsed[..j].iter().find(|e| subsumes(&e.rule, &later.rule)) else { continue };
        let why = if is_catch_all(&earlier.rule) {
            format!("the catch-all rule {:?} above matches every flow", earlier.rule.name)
        } else {
            format!("rule {:?} above matches every flow it matches", earlier.rule.name)
        };
        sink.warning(
            "shadowed-rule",
            later.anchor.clone(),
            format!("rule {:?} can never match: {why}", later.rule.name),
            "never reached",
        )
        .related(earlier.anchor.clone(), "this rule decides first")
        .help("rules are tried in file order and the first match decides: move this rule up, or remove it");
    }
}

/// `.toml` files under `path` (itself when a file), sorted.
fn toml_files(path: &Path, out: &mut Vec<PathBuf>) {
    if path.is_dir() {
        let mut entries: Vec<PathBuf> = match std::fs::read_dir(path) {
            Ok(rd) => rd.filter_map(|e| e.ok().map(|e| e.path())).collect(),
            Err(_) => {
                out.push(path.to_owned());
                return;
            }
        };
        entries.sort();
        for e in entries {
            if e.is_dir() || e.extension().is_some_and(|x| x == "toml") {
                toml_files(&e, out);
            }
        }
    } else {
        out.push(path.to_owned());
    }
}

/// `arbiter rules check PATH...`: loads each file (folders: every `.toml`
/// below, recursively), prints the diagnostics and one line per file.
/// Returns 0 when no file has errors (warnings are printed), 2 otherwise.
pub fn check_command(paths: &[PathBuf], json: bool, out: &mut dyn Write) -> i32 {
    let mut files = Vec::new();
    for p in paths {
        toml_files(p, &mut files);
    }
    let mut report = Report::new();
    let mut results = Vec::new();
    for f in &files {
        match load_file(f) {
            Ok(loaded) => {
                let source = std::fs::read_to_string(f).unwrap_or_default();
                report.extend(&f.display().to_string(), &source, loaded.warnings.iter().cloned());
                results.push(serde_json::json!({
                    "path": f.display().to_string(),
                    "ok": true,
                    "rules": loaded.rules.rules.len(),
                    "id": format!("{:#010x}", loaded.rules.id),
                    "warnings": loaded.warnings.len(),
                }));
            }
            Err(r) => {
                results.push(serde_json::json!({
                    "path": f.display().to_string(),
                    "ok": false,
                    "errors": r.errors(),
                    "warnings": r.warnings(),
                }));
                report.append(r);
            }
        }
    }
    let failed = report.has_errors() || files.is_empty();
    let result = if json {
        let doc = serde_json::json!({
            "files": results,
            "errors": report.errors(),
            "warnings": report.warnings(),
            "diagnostics": report.diagnostics.iter().map(Diagnostic::to_json_value).collect::<Vec<_>>(),
        });
        writeln!(out, "{doc}")
    } else {
        let mut text = report.render_diagnostics();
        for r in &results {
            let path = r["path"].as_str().unwrap_or("");
            if r["ok"] == true {
                text.push_str(&format!("ok {path}: {} rules, id {}\n", r["rules"], r["id"].as_str().unwrap_or("")));
            } else {
                text.push_str(&format!("FAILED {path}: {} errors, {} warnings\n", r["errors"], r["warnings"]));
            }
        }
        if files.is_empty() {
            text.push_str("no rules files given\n");
        }
        text.push_str(&format!(
            "{} files checked: {} errors, {} warnings\n",
            files.len(),
            report.errors(),
            report.warnings()
        ));
        out.write_all(text.as_bytes())
    };
    if result.is_err() || failed { 2 } else { 0 }
}

/// `arbiter rules compile FILE -o OUTPUT`: loads the file and writes its
/// blob (via a temporary file and a rename, so a reader never sees half a
/// blob). Returns 0 on success (warnings are printed), 2 when the file has
/// errors or the blob cannot be written.
pub fn compile_command(path: &Path, output: &Path, json: bool, out: &mut dyn Write) -> i32 {
    let loaded = match load_file(path) {
        Ok(l) => l,
        Err(report) => {
            let _ = if json { writeln!(out, "{}", report.to_json()) } else { write!(out, "{report}") };
            return 2;
        }
    };
    let blob = match blob::encode(&loaded.rules) {
        Ok(b) => b,
        Err(e) => {
            let _ = writeln!(out, "cannot encode {}: {e}", path.display());
            return 2;
        }
    };
    let tmp = output.with_extension("tmp");
    if let Err(e) = std::fs::write(&tmp, &blob).and_then(|()| std::fs::rename(&tmp, output)) {
        let _ = std::fs::remove_file(&tmp);
        let _ = if json {
            writeln!(
                out,
                "{}",
                serde_json::json!({"ok": false, "error": format!("cannot write {}: {e}", output.display())})
            )
        } else {
            writeln!(out, "cannot write {}: {e}", output.display())
        };
        return 2;
    }
    let source = std::fs::read_to_string(path).unwrap_or_default();
    let written = if json {
        writeln!(
            out,
            "{}",
            serde_json::json!({
                "ok": true,
                "input": path.display().to_string(),
                "output": output.display().to_string(),
                "rules": loaded.rules.rules.len(),
                "bytes": blob.len(),
                "id": format!("{:#010x}", loaded.rules.id),
                "diagnostics": loaded.warnings.iter().map(Diagnostic::to_json_value).collect::<Vec<_>>(),
            })
        )
    } else {
        let mut text = String::new();
        for w in &loaded.warnings {
            text.push_str(&w.render(&source));
            text.push('\n');
        }
        text.push_str(&format!(
            "compiled {} rules from {} into {}: {} bytes, id {:#010x}\n",
            loaded.rules.rules.len(),
            path.display(),
            output.display(),
            blob.len(),
            loaded.rules.id
        ));
        out.write_all(text.as_bytes())
    };
    if written.is_err() { 2 } else { 0 }
}
