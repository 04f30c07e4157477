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
//! `glob-not-anchored`, `not-package-sid`, `proxy-section-missing`,
//! `boot-allow-unused`.
//! `io-error` (a file that cannot be read, a folder with no `.toml` file) has
//! no position: its line and column are 0.

#![allow(clippy::std_instead_of_core, clippy::alloc_instead_of_core, reason = "std crate: host tool")]

mod diag;
pub mod input;
mod parse;
mod shadow;

use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};

use arbiter::compiled::blob;
use arbiter::policy::RuleSet;
use toml::de::DeTable;

use diag::Sink;
pub use diag::{Diagnostic, LineIndex, Report, Severity, counts, plural};
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
        shadow::shadowing(&mut sink, &parsed);
    }
    if sink.has_errors() {
        return Err(finish(sink));
    }
    let anchors: Vec<std::ops::Range<usize>> = parsed.iter().map(|p| p.anchor.clone()).collect();
    rules.rules = parsed.into_iter().map(|p| p.rule).collect();
    // The driver's own gate: whatever it would refuse over the control
    // device is an error here too (the checks above give the finer spans).
    arbiter::validate::validate_rule_set(&rules, |f| {
        use arbiter::validate::Place;
        let span = match f.place {
            Place::RuleName { rule } | Place::App { rule, .. } | Place::OriginalApp { rule, .. } => {
                anchors.get(rule).cloned().unwrap_or(0..0)
            }
            _ => 0..0,
        };
        sink.error(f.code(), span, f.to_string(), "refused by the driver's validator")
            .help("the driver applies the same checks to every rules blob and proxy registration");
    });
    if sink.has_errors() {
        return Err(finish(sink));
    }
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
///
/// Only a regular file of at most [`input::RULES_CAP`] bytes is read; any
/// other is an `io-error` without a position.
pub fn load_file(path: &Path) -> Result<Loaded, Report> {
    load_file_with_source(path).map(|(l, _)| l)
}

/// [`load_file`], also returning the text read (for rendering warnings).
fn load_file_with_source(path: &Path) -> Result<(Loaded, String), Report> {
    let origin = path.display().to_string();
    match input::read_text_capped(path, input::RULES_CAP) {
        Ok(source) => parse_str(&source, &origin).map(|l| (l, source)),
        Err(e) => Err(unreadable(&origin, &e.to_string())),
    }
}

/// The report for a file that cannot be read: one `io-error`, no position.
fn unreadable(origin: &str, why: &str) -> Report {
    let mut sink = Sink::new("", origin);
    sink.error_without_position("io-error", format!("cannot read {origin}: {why}"));
    finish(sink)
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

/// `arbiter rules check PATH...`: loads each file (folders: every `.toml`
/// below, recursively), prints the diagnostics and one line per file.
/// Returns 0 when no file has errors (warnings are printed), 2 otherwise.
pub fn check_command(paths: &[PathBuf], json: bool, out: &mut dyn Write) -> i32 {
    let (files, missing) = input::collect_files(paths, "toml");
    let mut report = Report::new();
    let mut results = Vec::new();
    for (p, why) in &missing {
        let r = unreadable(&p.display().to_string(), why);
        results.push(serde_json::json!({
            "path": p.display().to_string(), "ok": false, "errors": r.errors(), "warnings": r.warnings(),
        }));
        report.append(r);
    }
    for f in &files {
        match load_file_with_source(f) {
            Ok((loaded, source)) => {
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
    let checked = files.len() + missing.len();
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
                let n = usize::try_from(r["rules"].as_u64().unwrap_or(0)).unwrap_or(0);
                text.push_str(&format!("ok {path}: {}, id {}\n", plural(n, "rule"), r["id"].as_str().unwrap_or("")));
            } else {
                let count = |k: &str| usize::try_from(r[k].as_u64().unwrap_or(0)).unwrap_or(0);
                text.push_str(&format!("FAILED {path}: {}\n", counts(count("errors"), count("warnings"))));
            }
        }
        text.push_str(&format!(
            "{} checked: {}\n",
            plural(checked, "file"),
            counts(report.errors(), report.warnings())
        ));
        out.write_all(text.as_bytes())
    };
    if result.is_err() || failed { 2 } else { 0 }
}

/// Writes `blob` to `output` through a new temporary file in the same folder
/// and a rename, so a reader sees the old file or the whole new one. Refuses
/// to replace the input itself, or anything that is not a regular file (a
/// symlink, a device such as `/dev/null`, a folder).
fn write_blob(input: &Path, output: &Path, blob: &[u8]) -> std::io::Result<()> {
    use std::io::{Error, ErrorKind};
    if let Ok(meta) = std::fs::symlink_metadata(output) {
        let kind = meta.file_type();
        if !kind.is_file() {
            let what = if kind.is_symlink() {
                "a symbolic link"
            } else if kind.is_dir() {
                "a folder"
            } else {
                "not a regular file (a device, FIFO or socket)"
            };
            return Err(Error::new(ErrorKind::InvalidInput, format!("it is {what}; refusing to replace it")));
        }
        let same =
            std::fs::canonicalize(input).ok().zip(std::fs::canonicalize(output).ok()).is_some_and(|(a, b)| a == b);
        if same {
            return Err(Error::new(ErrorKind::InvalidInput, "it is the rules file being compiled"));
        }
    }
    let dir = match output.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    };
    std::fs::create_dir_all(&dir)?;
    let name = output.file_name().map_or_else(|| "rules.bin".into(), |n| n.to_string_lossy().into_owned());
    // A fresh name per attempt: `create_new` never opens an existing file.
    let mut attempt = 0u32;
    let (tmp, mut file) = loop {
        let tmp = dir.join(format!(".{name}.{}.{attempt}.tmp", std::process::id()));
        match std::fs::OpenOptions::new().write(true).create_new(true).open(&tmp) {
            Ok(f) => break (tmp, f),
            Err(e) if e.kind() == ErrorKind::AlreadyExists && attempt < 1000 => attempt += 1,
            Err(e) => return Err(e),
        }
    };
    let written = file.write_all(blob).and_then(|()| file.sync_all()).and_then(|()| {
        drop(file);
        std::fs::rename(&tmp, output)
    });
    if written.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    written
}

/// `arbiter rules compile FILE -o OUTPUT`: loads the file and writes its
/// blob (via a new temporary file beside OUTPUT and a rename, so a reader
/// never sees half a blob; see `write_blob` for what is refused). Returns 0 on success (warnings are printed), 2 when the file has
/// errors or the blob cannot be written.
pub fn compile_command(path: &Path, output: &Path, json: bool, out: &mut dyn Write) -> i32 {
    let (loaded, source) = match load_file_with_source(path) {
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
    if let Err(e) = write_blob(path, output, &blob) {
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
        let lines = LineIndex::new(&source);
        for w in &loaded.warnings {
            text.push_str(&w.render_indexed(&source, &lines));
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
