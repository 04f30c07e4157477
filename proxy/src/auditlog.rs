//! The audit file: one JSON object per line, rotated by size.
//!
//! `audit.jsonl` is the live file; when a line would take it past the size
//! limit it becomes `audit.1.jsonl` (older files shift up, the oldest beyond
//! `keep` is deleted) and a new live file starts. Each record line carries
//! the decoded verdict, reason and flow for people, and the record's bytes in
//! hex for `arbiter replay` tooling; loss reported by the driver gets a line
//! of its own, so a gap in sequence numbers is always explained.

use std::fmt::Write as _;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use arbiter::audit::{AuditRecord, Event};
use serde_json::{Map, Value, json};

/// A size-rotated JSON-lines file.
#[derive(Debug)]
pub struct AuditLog {
    dir: PathBuf,
    max_bytes: u64,
    keep: u32,
    file: Option<File>,
    size: u64,
}

impl AuditLog {
    /// Opens (appending to) `dir/audit.jsonl`, creating `dir` if needed.
    pub fn open(dir: &Path, max_bytes: u64, keep: u32) -> io::Result<Self> {
        fs::create_dir_all(dir)?;
        let mut log = Self { dir: dir.to_path_buf(), max_bytes: max_bytes.max(1), keep, file: None, size: 0 };
        log.reopen()?;
        Ok(log)
    }

    /// The live file's path.
    pub fn live_path(&self) -> PathBuf {
        self.dir.join("audit.jsonl")
    }

    /// The path of the `n`th rotated file (1 is the newest).
    pub fn rotated_path(&self, n: u32) -> PathBuf {
        self.dir.join(format!("audit.{n}.jsonl"))
    }

    fn reopen(&mut self) -> io::Result<()> {
        let file = OpenOptions::new().create(true).append(true).open(self.live_path())?;
        self.size = file.metadata()?.len();
        self.file = Some(file);
        Ok(())
    }

    fn rotate(&mut self) -> io::Result<()> {
        self.file = None;
        if self.keep == 0 {
            fs::remove_file(self.live_path())?;
            return self.reopen();
        }
        let _ = fs::remove_file(self.rotated_path(self.keep));
        for n in (1..self.keep).rev() {
            let from = self.rotated_path(n);
            if from.exists() {
                fs::rename(&from, self.rotated_path(n.saturating_add(1)))?;
            }
        }
        fs::rename(self.live_path(), self.rotated_path(1))?;
        self.reopen()
    }

    /// Appends one JSON value as a line, rotating first if it would not fit.
    pub fn write_value(&mut self, value: &Value) -> io::Result<()> {
        let mut line = value.to_string();
        line.push('\n');
        let len = line.len() as u64;
        if self.size > 0 && self.size.saturating_add(len) > self.max_bytes {
            self.rotate()?;
        }
        let file = match self.file.as_mut() {
            Some(f) => f,
            None => {
                self.reopen()?;
                self.file.as_mut().ok_or_else(|| io::Error::other("audit file did not open"))?
            }
        };
        file.write_all(line.as_bytes())?;
        self.size = self.size.saturating_add(len);
        Ok(())
    }

    /// Flushes to the OS.
    pub fn flush(&mut self) -> io::Result<()> {
        self.file.as_mut().map_or(Ok(()), Write::flush)
    }
}

fn hex(bytes: &[u8]) -> String {
    let mut s = String::with_capacity(bytes.len().saturating_mul(2));
    for b in bytes {
        let _ = write!(s, "{b:02x}");
    }
    s
}

/// The line for one drained record.
pub fn record_line(instance: u64, seq: u64, bytes: &[u8]) -> Value {
    let mut m = Map::new();
    m.insert("instance".into(), json!(instance));
    m.insert("seq".into(), json!(seq));
    if bytes.is_empty() {
        m.insert("kind".into(), json!("oversized"));
        m.insert("note".into(), json!("the record was larger than the driver's audit ring"));
        return Value::Object(m);
    }
    match AuditRecord::decode(bytes) {
        Ok((rec, _)) => describe(&mut m, &rec),
        Err(e) => {
            m.insert("kind".into(), json!("undecodable"));
            m.insert("error".into(), json!(e.to_string()));
        }
    }
    m.insert("raw".into(), json!(hex(bytes)));
    Value::Object(m)
}

fn describe(m: &mut Map<String, Value>, rec: &AuditRecord<'_>) {
    m.insert("record_seq".into(), json!(rec.seq));
    m.insert("at_ms".into(), json!(rec.at.as_millis()));
    let flow = match &rec.event {
        Event::ConnectRedirect(c) => {
            m.insert("kind".into(), json!("connect-redirect"));
            m.insert("state".into(), json!(c.input.state.name()));
            m.insert("rules_id".into(), json!(c.rules_id));
            if let Some(r) = c.outcome.redirect {
                m.insert("redirect_to".into(), json!(r.remote.to_string()));
            }
            Some(c.input.flow)
        }
        Event::AuthConnect(a) => {
            m.insert("kind".into(), json!("auth-connect"));
            m.insert("redirected".into(), json!(a.input.redirected));
            Some(a.input.flow)
        }
        Event::Fallback(f) => {
            m.insert("kind".into(), json!("pend-fallback"));
            m.insert("state".into(), json!(f.input.state.name()));
            Some(f.input.flow)
        }
        Event::Rebind(b) => {
            m.insert("kind".into(), json!("rebind"));
            m.insert("pid".into(), json!(b.pid));
            m.insert("app".into(), json!(b.app.to_string()));
            m.insert("protocol".into(), json!(b.protocol.to_string()));
            m.insert("from".into(), json!(b.from.to_string()));
            m.insert("to".into(), json!(b.to.to_string()));
            m.insert("by_filter".into(), json!(b.by));
            m.insert("changes".into(), json!(b.changes));
            None
        }
        Event::Guard(g) => {
            m.insert("kind".into(), json!("boot-guard"));
            m.insert("mode".into(), json!(g.mode.name()));
            m.insert("change".into(), json!(g.change.name()));
            m.insert("proxy_pid".into(), json!(g.proxy_pid));
            None
        }
        Event::Departure(d) => {
            m.insert("kind".into(), json!("departure"));
            m.insert("table".into(), json!(d.table.name()));
            m.insert("reason".into(), json!(d.reason().name()));
            None
        }
    };
    if let Some(o) = rec.outcome() {
        m.insert("verdict".into(), json!(o.verdict.name()));
        m.insert("reason".into(), json!(o.reason.name()));
    }
    if let Some(f) = flow {
        m.insert("protocol".into(), json!(f.protocol.to_string()));
        m.insert("local".into(), json!(f.local.to_string()));
        m.insert("remote".into(), json!(f.remote.to_string()));
        m.insert("pid".into(), json!(f.pid));
        m.insert("app".into(), json!(f.app.to_string()));
    }
}

/// The line for records the driver dropped before we could read them.
pub fn lost_line(instance: u64, before_seq: u64, lost: u64) -> Value {
    json!({ "instance": instance, "kind": "lost", "lost": lost, "before_seq": before_seq })
}
