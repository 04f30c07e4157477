//! Redirect-chain fixtures (formats.md, "Fixtures"): parse, validate, write.
//!
//! Parsing is two-phase: serde reads the TOML with spans and rejects unknown
//! keys, then [`Fixture::parse`] validates every value and collects every
//! diagnostic (file, line, column, a stable kebab-case code), so a fixture is
//! either whole or rejected. Writing ([`Fixture::to_toml`]) produces text
//! that parses back to the same fixture; the lab's `--record` and
//! `arbiter audit --fixture` use it.
//!
//! Handles and filter ids are u64, but TOML integers stop at `i64::MAX`:
//! `endpoint`, `own_filter` and `previous[].filter` also take a string,
//! decimal (`"18446744073709551615"`) or hex (`"0xffffffffffffffff"`), and
//! the writer uses the hex string for values above `i64::MAX`, so every
//! handle survives a round trip exactly.
//!
//! Extensions beyond formats.md, all optional: `[environment]` may also set
//! `endpoints`, `destinations`, `known_proxies` (table capacities) and
//! `endpoint_ttl_ms`, `known_proxy_ttl_ms`, so eviction and expiry fixtures
//! stay small; a fixture with neither `rules` key nor `[rules]` table runs
//! with an empty rule set (nothing is proxied).

use core::fmt;
use core::net::SocketAddr;
use std::path::{Path, PathBuf};

use arbiter::flow::{PreviousChain, PreviousEntry, SidBuf};
use arbiter::wide::WideString;
use arbiter::{
    AuthConnectInput, Capacities, Config, ConnectRedirectInput, Duration, Flow, Layer, Protocol, Reason, RedirectState,
    Verdict,
};
use arbiter_ruleset::LineIndex;
use serde::{Deserialize, Serialize};
use toml::Spanned;

/// One problem in a fixture, with where and a stable code.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Diagnostic {
    /// The fixture file.
    pub file: PathBuf,
    /// 1-based line (0 when the problem has no position, e.g. unreadable file).
    pub line: usize,
    /// 1-based column.
    pub col: usize,
    /// Stable kebab-case code.
    pub code: &'static str,
    /// What is wrong.
    pub message: String,
}

impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.line == 0 {
            write!(f, "{}: error[{}]: {}", self.file.display(), self.code, self.message)
        } else {
            write!(f, "{}:{}:{}: error[{}]: {}", self.file.display(), self.line, self.col, self.code, self.message)
        }
    }
}

/// 1-based line and column of a byte offset. Scans `source` once: for many
/// positions in one text, make one [`LineIndex`] and ask it.
pub fn line_col(source: &str, offset: usize) -> (usize, usize) {
    LineIndex::new(source).line_col(source, offset)
}

/// The largest app id a step may carry, in UTF-16 code units: an audit
/// record stores it with a 16-bit byte length.
pub const MAX_APP_UNITS: usize = 32_767;

/// Where a fixture's rules come from.
#[derive(Clone, Debug, PartialEq)]
pub enum RulesSource {
    /// No rules: nothing is proxied.
    None,
    /// `rules = "path"`, resolved against the fixture's folder.
    File(PathBuf),
    /// An inline `[rules]` table (shared: the lab hands the same table to
    /// every scenario it records).
    Inline(std::sync::Arc<toml::Table>),
}

/// `[environment]`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Environment {
    /// Our callout filter's id.
    pub own_filter: u64,
    /// Our proxy's PID (`None`: no proxy registered).
    pub proxy_pid: Option<u64>,
    /// Table capacities.
    pub capacities: Capacities,
    /// Endpoint entry time to live, ms.
    pub endpoint_ttl_ms: u64,
    /// Learned proxy time to live, ms.
    pub known_proxy_ttl_ms: u64,
}

impl Default for Environment {
    fn default() -> Self {
        let c = Config::default();
        Self {
            own_filter: 100,
            proxy_pid: None,
            capacities: Capacities::default(),
            endpoint_ttl_ms: c.endpoint_ttl.as_millis(),
            known_proxy_ttl_ms: c.known_proxy_ttl.as_millis(),
        }
    }
}

impl Environment {
    /// The core configuration this environment asks for.
    pub fn config(&self) -> Config {
        Config {
            own_filter: self.own_filter,
            endpoint_ttl: Duration::from_millis(self.endpoint_ttl_ms),
            known_proxy_ttl: Duration::from_millis(self.known_proxy_ttl_ms),
            ..Config::default()
        }
    }
}

/// `[step.expect]`: every key given is checked.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Expect {
    /// Expected verdict.
    pub verdict: Option<Verdict>,
    /// Expected reason.
    pub reason: Option<Reason>,
    /// Expected rewritten remote (proxy only).
    pub redirect_to: Option<SocketAddr>,
    /// Expected localRedirectTargetPID (proxy only).
    pub target_pid: Option<u64>,
}

impl Expect {
    /// True when nothing is checked.
    pub const fn is_empty(&self) -> bool {
        self.verdict.is_none() && self.reason.is_none() && self.redirect_to.is_none() && self.target_pid.is_none()
    }
}

/// One classify indication, owned.
#[derive(Clone, Debug, PartialEq)]
pub struct Step {
    /// Monotonic time, ms.
    pub at_ms: u64,
    /// Which layer.
    pub layer: Layer,
    /// Transport endpoint handle.
    pub endpoint: u64,
    /// IP protocol.
    pub protocol: Protocol,
    /// Local address.
    pub local: SocketAddr,
    /// Remote address.
    pub remote: SocketAddr,
    /// Process id.
    pub pid: u64,
    /// App id (NT device path).
    pub app: String,
    /// Original app id (`None`: same as `app`).
    pub original_app: Option<String>,
    /// AppContainer package SID, `S-1-15-2-...`.
    pub package: Option<String>,
    /// Redirect state (connect-redirect only).
    pub state: RedirectState,
    /// FWPS_RIGHT_ACTION_WRITE.
    pub write_right: bool,
    /// FWP_CONDITION_FLAG_IS_REAUTHORIZE.
    pub reauthorize: bool,
    /// previousVersion chain, newest first.
    pub previous: Vec<PreviousEntry>,
    /// FWP_CONDITION_FLAG_IS_CONNECTION_REDIRECTED (auth-connect only).
    pub redirected: bool,
    /// LOCAL_REDIRECT_TARGET_PID (auth-connect only).
    pub target_pid: Option<u64>,
    /// ORIGINAL_DESTINATION (auth-connect only).
    pub original_destination: Option<SocketAddr>,
    /// Expectations.
    pub expect: Expect,
    /// Line of the `[[step]]` header in its file (0 when built in memory).
    pub line: usize,
}

impl Step {
    /// A connect-redirect step with defaults; fill in what differs.
    pub fn connect(
        endpoint: u64,
        protocol: Protocol,
        local: SocketAddr,
        remote: SocketAddr,
        pid: u64,
        app: &str,
    ) -> Self {
        Self {
            at_ms: 0,
            layer: Layer::ConnectRedirect,
            endpoint,
            protocol,
            local,
            remote,
            pid,
            app: app.to_owned(),
            original_app: None,
            package: None,
            state: RedirectState::NotRedirected,
            write_right: true,
            reauthorize: false,
            previous: Vec::new(),
            redirected: false,
            target_pid: None,
            original_destination: None,
            expect: Expect::default(),
            line: 0,
        }
    }

    /// Owned UTF-16 buffers the borrowed core inputs point into.
    pub fn buffers(&self) -> StepBuffers {
        StepBuffers {
            app: WideString::new(&self.app),
            original_app: WideString::new(self.original_app.as_deref().unwrap_or(&self.app)),
            package: self.package.as_deref().and_then(SidBuf::parse),
        }
    }

    fn flow<'a>(&self, b: &'a StepBuffers) -> Flow<'a> {
        Flow {
            protocol: self.protocol,
            local: self.local,
            remote: self.remote,
            endpoint: self.endpoint,
            pid: self.pid,
            app: b.app.app_id(),
            original_app: b.original_app.app_id(),
            package: b.package.as_ref().map(SidBuf::as_sid),
        }
    }

    /// The connect-redirect input.
    pub fn connect_input<'a>(&self, b: &'a StepBuffers) -> ConnectRedirectInput<'a> {
        ConnectRedirectInput {
            flow: self.flow(b),
            state: self.state,
            write_right: self.write_right,
            reauthorize: self.reauthorize,
            previous: PreviousChain::from_entries(self.previous.iter().copied()),
        }
    }

    /// The auth-connect input.
    pub fn auth_input<'a>(&self, b: &'a StepBuffers) -> AuthConnectInput<'a> {
        AuthConnectInput {
            flow: self.flow(b),
            reauthorize: self.reauthorize,
            redirected: self.redirected,
            target_pid: self.target_pid,
            original_destination: self.original_destination,
        }
    }
}

/// What a step's inputs borrow.
#[derive(Debug)]
pub struct StepBuffers {
    app: WideString,
    original_app: WideString,
    package: Option<SidBuf>,
}

/// A whole fixture.
#[derive(Clone, Debug, PartialEq)]
pub struct Fixture {
    /// `name`.
    pub name: String,
    /// The file it came from (or will be written to).
    pub path: PathBuf,
    /// Its rules.
    pub rules: RulesSource,
    /// `[environment]`.
    pub environment: Environment,
    /// `[[step]]`, in order.
    pub steps: Vec<Step>,
}

// ---- serde shapes ----------------------------------------------------------

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFixture {
    name: Spanned<String>,
    rules: Option<Spanned<toml::Value>>,
    environment: Option<RawEnvironment>,
    #[serde(default)]
    step: Vec<Spanned<RawStep>>,
}

#[derive(Deserialize, Serialize, Default)]
#[serde(deny_unknown_fields)]
struct RawEnvironment {
    #[serde(skip_serializing_if = "Option::is_none")]
    own_filter: Option<Spanned<RawU64>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    proxy_pid: Option<Spanned<u64>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    endpoints: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    destinations: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    known_proxies: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    endpoint_ttl_ms: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    known_proxy_ttl_ms: Option<u64>,
}

/// A u64 given as a TOML integer, or as a decimal or `0x` hex string (for
/// values above `i64::MAX`).
#[derive(Deserialize, Serialize, Clone)]
#[serde(untagged)]
enum RawU64 {
    Number(i64),
    Text(String),
}

impl RawU64 {
    fn value(&self) -> Option<u64> {
        match self {
            Self::Number(n) => u64::try_from(*n).ok(),
            Self::Text(t) => {
                let t = t.trim();
                match t.strip_prefix("0x").or_else(|| t.strip_prefix("0X")) {
                    Some(hex) => u64::from_str_radix(hex, 16).ok(),
                    None => t.parse().ok(),
                }
            }
        }
    }

    /// An integer when TOML can hold it, else the hex string.
    fn of(v: u64) -> Self {
        i64::try_from(v).map_or_else(|_| Self::Text(format!("{v:#x}")), Self::Number)
    }
}

/// A protocol given as a name or a number.
#[derive(Deserialize, Serialize, Clone)]
#[serde(untagged)]
enum RawProtocol {
    Number(i64),
    Name(String),
}

#[derive(Deserialize, Clone)]
#[serde(deny_unknown_fields)]
struct RawPrevious {
    filter: Spanned<RawU64>,
    #[serde(default)]
    local_redirect_handle: bool,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawStep {
    at_ms: Option<u64>,
    layer: Spanned<String>,
    endpoint: Spanned<RawU64>,
    protocol: Spanned<RawProtocol>,
    local: Spanned<String>,
    remote: Spanned<String>,
    pid: Spanned<u64>,
    app: Spanned<String>,
    original_app: Option<Spanned<String>>,
    package: Option<Spanned<String>>,
    state: Option<Spanned<String>>,
    write_right: Option<Spanned<bool>>,
    reauthorize: Option<bool>,
    #[serde(default)]
    previous: Vec<RawPrevious>,
    redirected: Option<Spanned<bool>>,
    target_pid: Option<Spanned<u64>>,
    original_destination: Option<Spanned<String>>,
    expect: Option<RawExpect>,
}

#[derive(Deserialize, Serialize, Default)]
#[serde(deny_unknown_fields)]
struct RawExpect {
    #[serde(skip_serializing_if = "Option::is_none")]
    verdict: Option<Spanned<String>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    reason: Option<Spanned<String>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    redirect_to: Option<Spanned<String>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    target_pid: Option<Spanned<u64>>,
}

/// Collects diagnostics against one source text.
struct Diags<'s> {
    file: &'s Path,
    source: &'s str,
    lines: LineIndex,
    list: Vec<Diagnostic>,
}

impl Diags<'_> {
    fn at(&mut self, offset: usize, code: &'static str, message: String) {
        let (line, col) = self.lines.line_col(self.source, offset);
        self.list.push(Diagnostic { file: self.file.to_path_buf(), line, col, code, message });
    }

    /// A process id: a DWORD in WFP (and not 0 for our proxy).
    fn pid(&mut self, v: &Spanned<u64>, what: &str, zero_ok: bool) {
        let p = *v.get_ref();
        if p > u64::from(u32::MAX) {
            self.at(v.span().start, "bad-pid", format!("{what}: {p} is above the largest process id, {}", u32::MAX));
        } else if p == 0 && !zero_ok {
            self.at(v.span().start, "bad-pid", format!("{what}: 0 is not a process id a proxy can have"));
        }
    }

    /// An app id that fits an audit record.
    fn app(&mut self, v: &Spanned<String>, what: &str) {
        let units = v.get_ref().encode_utf16().count();
        if units > MAX_APP_UNITS {
            self.at(
                v.span().start,
                "app-too-long",
                format!("{what}: {units} UTF-16 units, more than the {MAX_APP_UNITS} an app id may have"),
            );
        }
    }

    /// A u64 given as an integer or a string.
    fn u64(&mut self, v: &Spanned<RawU64>, what: &str) -> Option<u64> {
        let r = v.get_ref().value();
        if r.is_none() {
            self.at(
                v.span().start,
                "out-of-range",
                format!("{what}: not a u64 (an integer 0 or more, or a decimal or \"0x\" hex string)"),
            );
        }
        r
    }

    fn parse<T>(
        &mut self,
        v: &Spanned<String>,
        code: &'static str,
        what: &str,
        f: impl FnOnce(&str) -> Option<T>,
    ) -> Option<T> {
        let r = f(v.get_ref());
        if r.is_none() {
            self.at(v.span().start, code, format!("{what}: {:?} is not valid", v.get_ref()));
        }
        r
    }
}

fn serde_code(message: &str) -> &'static str {
    if message.contains("unknown field") {
        "unknown-key"
    } else if message.contains("missing field") {
        "missing-key"
    } else if message.contains("invalid value") {
        // A negative number or one too large for its field.
        "out-of-range"
    } else if message.contains("invalid type") || message.contains("did not match any variant") {
        "wrong-type"
    } else {
        "toml-syntax"
    }
}

impl Fixture {
    /// Reads and validates a fixture file.
    ///
    /// Only a regular file of at most [`arbiter_ruleset::input::FIXTURE_CAP`]
    /// bytes is read.
    pub fn load(path: &Path) -> Result<Self, Vec<Diagnostic>> {
        use arbiter_ruleset::input::{FIXTURE_CAP, read_text_capped};
        match read_text_capped(path, FIXTURE_CAP) {
            Ok(s) => Self::parse(&s, path),
            Err(e) => Err(vec![Diagnostic {
                file: path.to_path_buf(),
                line: 0,
                col: 0,
                code: "unreadable",
                message: e.to_string(),
            }]),
        }
    }

    /// Validates fixture text; `path` names it and anchors a relative `rules` path.
    pub fn parse(source: &str, path: &Path) -> Result<Self, Vec<Diagnostic>> {
        let mut d = Diags { file: path, source, lines: LineIndex::new(source), list: Vec::new() };
        let raw: RawFixture = match toml::from_str(source) {
            Ok(r) => r,
            Err(e) => {
                d.at(e.span().map_or(0, |s| s.start), serde_code(e.message()), e.message().trim().to_owned());
                return Err(d.list);
            }
        };
        let rules = match raw.rules {
            None => RulesSource::None,
            Some(v) => match v.get_ref() {
                toml::Value::String(p) => RulesSource::File(path.parent().unwrap_or_else(|| Path::new("")).join(p)),
                toml::Value::Table(t) => RulesSource::Inline(std::sync::Arc::new(t.clone())),
                _ => {
                    d.at(v.span().start, "wrong-type", "rules: expected a file path or a [rules] table".to_owned());
                    RulesSource::None
                }
            },
        };
        let e = raw.environment.unwrap_or_default();
        let defaults = Environment::default();
        let caps = Capacities::default();
        let own_filter = match &e.own_filter {
            Some(v) => d.u64(v, "environment.own_filter").unwrap_or(defaults.own_filter),
            None => defaults.own_filter,
        };
        if let Some(p) = &e.proxy_pid {
            d.pid(p, "environment.proxy_pid", false);
        }
        let environment = Environment {
            own_filter,
            proxy_pid: e.proxy_pid.map(Spanned::into_inner),
            capacities: Capacities {
                endpoints: e.endpoints.unwrap_or(caps.endpoints),
                destinations: e.destinations.unwrap_or(caps.destinations),
                known_proxies: e.known_proxies.unwrap_or(caps.known_proxies),
            },
            endpoint_ttl_ms: e.endpoint_ttl_ms.unwrap_or(defaults.endpoint_ttl_ms),
            known_proxy_ttl_ms: e.known_proxy_ttl_ms.unwrap_or(defaults.known_proxy_ttl_ms),
        };
        let mut steps = Vec::new();
        let mut last_at = 0u64;
        for s in raw.step {
            let start = s.span().start;
            let s = s.into_inner();
            if let Some(step) = validate_step(&mut d, s, start, &mut last_at) {
                steps.push(step);
            }
        }
        if d.list.is_empty() {
            Ok(Self { name: raw.name.into_inner(), path: path.to_path_buf(), rules, environment, steps })
        } else {
            Err(d.list)
        }
    }

    /// Writes the fixture as TOML that [`Fixture::parse`] reads back to the same value.
    pub fn to_toml(&self) -> String {
        let mut doc = toml::Table::new();
        doc.insert("name".into(), self.name.clone().into());
        match &self.rules {
            RulesSource::None => {}
            RulesSource::File(p) => {
                doc.insert("rules".into(), p.display().to_string().into());
            }
            RulesSource::Inline(t) => {
                doc.insert("rules".into(), toml::Value::Table(toml::Table::clone(t)));
            }
        }
        let d = Environment::default();
        let e = &self.environment;
        let caps = Capacities::default();
        let env = RawEnvironment {
            own_filter: Some(Spanned::new(0..0, RawU64::of(e.own_filter))),
            proxy_pid: e.proxy_pid.map(|p| Spanned::new(0..0, p)),
            endpoints: (e.capacities.endpoints != caps.endpoints).then_some(e.capacities.endpoints),
            destinations: (e.capacities.destinations != caps.destinations).then_some(e.capacities.destinations),
            known_proxies: (e.capacities.known_proxies != caps.known_proxies).then_some(e.capacities.known_proxies),
            endpoint_ttl_ms: (e.endpoint_ttl_ms != d.endpoint_ttl_ms).then_some(e.endpoint_ttl_ms),
            known_proxy_ttl_ms: (e.known_proxy_ttl_ms != d.known_proxy_ttl_ms).then_some(e.known_proxy_ttl_ms),
        };
        if let Ok(v) = toml::Value::try_from(env) {
            doc.insert("environment".into(), v);
        }
        let steps: Vec<toml::Value> = self.steps.iter().map(|s| toml::Value::Table(step_table(s))).collect();
        doc.insert("step".into(), toml::Value::Array(steps));
        toml::to_string(&doc).unwrap_or_default()
    }
}

fn step_table(s: &Step) -> toml::Table {
    let mut t = toml::Table::new();
    let mut put = |k: &str, v: toml::Value| {
        t.insert(k.to_owned(), v);
    };
    let int = |v: u64| match RawU64::of(v) {
        RawU64::Number(n) => toml::Value::Integer(n),
        RawU64::Text(t) => toml::Value::String(t),
    };
    put("at_ms", int(s.at_ms));
    put("layer", s.layer.name().into());
    put("endpoint", int(s.endpoint));
    put("protocol", s.protocol.to_string().into());
    put("local", s.local.to_string().into());
    put("remote", s.remote.to_string().into());
    put("pid", int(s.pid));
    put("app", s.app.clone().into());
    if let Some(o) = &s.original_app {
        put("original_app", o.clone().into());
    }
    if let Some(p) = &s.package {
        put("package", p.clone().into());
    }
    match s.layer {
        Layer::ConnectRedirect => {
            put("state", s.state.name().into());
            put("write_right", s.write_right.into());
            put("reauthorize", s.reauthorize.into());
            if !s.previous.is_empty() {
                let prev = s
                    .previous
                    .iter()
                    .map(|p| {
                        let mut e = toml::Table::new();
                        e.insert("filter".into(), int(p.filter));
                        e.insert("local_redirect_handle".into(), p.local_redirect_handle.into());
                        toml::Value::Table(e)
                    })
                    .collect();
                put("previous", toml::Value::Array(prev));
            }
        }
        Layer::AuthConnect => {
            if s.reauthorize {
                put("reauthorize", true.into());
            }
            put("redirected", s.redirected.into());
            if let Some(p) = s.target_pid {
                put("target_pid", int(p));
            }
            if let Some(o) = s.original_destination {
                put("original_destination", o.to_string().into());
            }
        }
    }
    if !s.expect.is_empty() {
        let mut e = toml::Table::new();
        if let Some(v) = s.expect.verdict {
            e.insert("verdict".into(), v.name().into());
        }
        if let Some(r) = s.expect.reason {
            e.insert("reason".into(), r.name().into());
        }
        if let Some(a) = s.expect.redirect_to {
            e.insert("redirect_to".into(), a.to_string().into());
        }
        if let Some(p) = s.expect.target_pid {
            e.insert("target_pid".into(), int(p));
        }
        put("expect", toml::Value::Table(e));
    }
    t
}

fn validate_step(d: &mut Diags<'_>, s: RawStep, start: usize, last_at: &mut u64) -> Option<Step> {
    let before = d.list.len();
    let layer = d.parse(&s.layer, "bad-layer", "layer", Layer::from_name);
    let protocol = match s.protocol.get_ref() {
        RawProtocol::Number(n) => u8::try_from(*n).ok().map(Protocol),
        RawProtocol::Name(n) => Protocol::from_name(n),
    };
    if protocol.is_none() {
        d.at(
            s.protocol.span().start,
            "bad-protocol",
            "protocol: expected tcp, udp, icmp or a number 0..=255".to_owned(),
        );
    }
    let addr = |d: &mut Diags<'_>, v: &Spanned<String>, what: &str| {
        d.parse(v, "bad-address", what, |x| x.parse::<SocketAddr>().ok())
    };
    let local = addr(d, &s.local, "local");
    let remote = addr(d, &s.remote, "remote");
    if let (Some(l), Some(r)) = (local, remote)
        && l.is_ipv4() != r.is_ipv4()
    {
        d.at(
            s.remote.span().start,
            "family-mismatch",
            format!("remote {r} and local {l} are of different address families; a connection has one"),
        );
    }
    let endpoint = d.u64(&s.endpoint, "endpoint");
    d.pid(&s.pid, "pid", true);
    if let Some(p) = &s.target_pid {
        d.pid(p, "target_pid", false);
    }
    d.app(&s.app, "app");
    if let Some(o) = &s.original_app {
        d.app(o, "original_app");
    }
    let previous: Vec<PreviousEntry> = s
        .previous
        .iter()
        .filter_map(|p| {
            Some(PreviousEntry {
                filter: d.u64(&p.filter, "previous.filter")?,
                local_redirect_handle: p.local_redirect_handle,
            })
        })
        .collect();
    let state = match &s.state {
        Some(v) => d.parse(v, "bad-state", "state", RedirectState::from_name),
        None => Some(RedirectState::NotRedirected),
    };
    if let Some(p) = &s.package {
        d.parse(p, "bad-package", "package", SidBuf::parse);
    }
    let at_ms = s.at_ms.unwrap_or(*last_at);
    if at_ms < *last_at {
        d.at(start, "time-backwards", format!("at_ms {at_ms} is before the previous step's {last_at}"));
    }
    *last_at = at_ms.max(*last_at);
    // Fields that belong to the other layer are a mistake, not a default.
    match layer {
        Some(Layer::ConnectRedirect) => {
            let spans = [
                s.redirected.as_ref().map(|v| ("redirected", v.span().start)),
                s.target_pid.as_ref().map(|v| ("target_pid", v.span().start)),
                s.original_destination.as_ref().map(|v| ("original_destination", v.span().start)),
            ];
            for (k, at) in spans.into_iter().flatten() {
                d.at(at, "wrong-layer", format!("{k} is an auth-connect field"));
            }
        }
        Some(Layer::AuthConnect) => {
            let spans = [
                s.state.as_ref().map(|v| ("state", v.span().start)),
                s.write_right.as_ref().map(|v| ("write_right", v.span().start)),
            ];
            for (k, at) in spans.into_iter().flatten() {
                d.at(at, "wrong-layer", format!("{k} is a connect-redirect field"));
            }
            if !s.previous.is_empty() {
                d.at(start, "wrong-layer", "previous is a connect-redirect field".to_owned());
            }
        }
        None => {}
    }
    let original_destination = match &s.original_destination {
        Some(v) => addr(d, v, "original_destination"),
        None => None,
    };
    let mut expect = Expect::default();
    if let Some(e) = &s.expect {
        if let Some(v) = &e.verdict {
            expect.verdict = d.parse(v, "bad-verdict", "expect.verdict", Verdict::from_name);
        }
        if let Some(v) = &e.reason {
            expect.reason = d.parse(v, "bad-reason", "expect.reason", Reason::from_name);
        }
        if let Some(v) = &e.redirect_to {
            expect.redirect_to = addr(d, v, "expect.redirect_to");
        }
        if let Some(p) = &e.target_pid {
            d.pid(p, "expect.target_pid", false);
            expect.target_pid = Some(*p.get_ref());
        }
    }
    if d.list.len() != before {
        return None;
    }
    Some(Step {
        at_ms,
        layer: layer?,
        endpoint: endpoint?,
        protocol: protocol?,
        local: local?,
        remote: remote?,
        pid: s.pid.into_inner(),
        app: s.app.into_inner(),
        original_app: s.original_app.map(Spanned::into_inner),
        package: s.package.map(Spanned::into_inner),
        state: state?,
        write_right: s.write_right.is_none_or(Spanned::into_inner),
        reauthorize: s.reauthorize.unwrap_or(false),
        previous,
        redirected: s.redirected.is_some_and(Spanned::into_inner),
        target_pid: s.target_pid.map(Spanned::into_inner),
        original_destination,
        expect,
        line: d.lines.line_col(d.source, start).0,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const SAMPLE: &str = r#"
name = "sample"

[rules]
version = 1
[rules.proxy]
v4 = "127.0.0.1:34010"
[[rules.rule]]
name = "all"
action = "proxy"

[environment]
own_filter = 100
proxy_pid = 5151

[[step]]
at_ms = 0
layer = "connect-redirect"
endpoint = 1
protocol = "tcp"
local = "10.0.0.5:50000"
remote = "93.184.216.34:443"
pid = 4242
app = '\device\harddiskvolume3\apps\browser.exe'
previous = [ { filter = 200, local_redirect_handle = true } ]
[step.expect]
verdict = "permit"
reason = "local-proxy-of-other"

[[step]]
at_ms = 1
layer = "auth-connect"
endpoint = 1
protocol = 6
local = "10.0.0.5:50000"
remote = "127.0.0.1:9100"
pid = 4242
app = '\device\harddiskvolume3\apps\browser.exe'
redirected = true
target_pid = 6100
original_destination = "93.184.216.34:443"
"#;

    #[test]
    fn parses_and_round_trips() {
        let f = Fixture::parse(SAMPLE, Path::new("x/sample.toml")).unwrap();
        assert_eq!(f.steps.len(), 2);
        assert_eq!(f.environment.proxy_pid, Some(5151));
        assert_eq!(f.steps[0].previous.len(), 1);
        assert_eq!(f.steps[1].protocol, Protocol::TCP);
        assert_eq!(f.steps[0].expect.reason, Some(Reason::LocalProxyOfOther));
        assert!(matches!(f.rules, RulesSource::Inline(_)));
        let text = f.to_toml();
        let mut g = Fixture::parse(&text, Path::new("x/sample.toml")).unwrap();
        for (a, b) in g.steps.iter_mut().zip(&f.steps) {
            a.line = b.line;
        }
        assert_eq!(g, f);
    }

    #[test]
    fn every_problem_is_reported_with_position() {
        let bad = SAMPLE.replace("\"connect-redirect\"", "\"connect\"").replace("\"local-proxy-of-other\"", "\"nope\"");
        let errs = Fixture::parse(&bad, Path::new("bad.toml")).unwrap_err();
        let codes: Vec<_> = errs.iter().map(|e| e.code).collect();
        assert_eq!(codes, ["bad-layer", "bad-reason"]);
        assert_eq!(errs[0].line, 18);
        assert!(errs[0].to_string().starts_with("bad.toml:18:"));
    }

    #[test]
    fn unknown_keys_and_wrong_layer_fields_are_errors() {
        let errs =
            Fixture::parse(&SAMPLE.replace("pid = 4242\napp", "pid = 4242\nbogus = 1\napp"), Path::new("b.toml"))
                .unwrap_err();
        assert_eq!(errs[0].code, "unknown-key");
        let errs = Fixture::parse(
            &SAMPLE.replace("redirected = true", "redirected = true\nstate = \"not-redirected\""),
            Path::new("b.toml"),
        )
        .unwrap_err();
        assert_eq!(errs[0].code, "wrong-layer");
    }

    #[test]
    fn handles_above_i64_max_round_trip_exactly() {
        let mut f = Fixture::parse(SAMPLE, Path::new("x/sample.toml")).unwrap();
        f.steps[0].endpoint = u64::MAX;
        f.steps[1].endpoint = u64::MAX - 1;
        f.steps[0].previous[0].filter = 1 << 63;
        f.environment.own_filter = u64::MAX - 7;
        let text = f.to_toml();
        assert!(text.contains("endpoint = \"0xffffffffffffffff\""), "{text}");
        let g = Fixture::parse(&text, Path::new("x/sample.toml")).unwrap();
        assert_eq!(g.steps[0].endpoint, u64::MAX);
        assert_eq!(g.steps[1].endpoint, u64::MAX - 1);
        assert_eq!(g.steps[0].previous[0].filter, 1 << 63);
        assert_eq!(g.environment.own_filter, u64::MAX - 7);
        let decimal = SAMPLE
            .replace("endpoint = 1\nprotocol = \"tcp\"", "endpoint = \"18446744073709551615\"\nprotocol = \"tcp\"");
        assert_eq!(Fixture::parse(&decimal, Path::new("d.toml")).unwrap().steps[0].endpoint, u64::MAX);
    }

    fn first_error(text: &str) -> Diagnostic {
        Fixture::parse(text, Path::new("b.toml")).unwrap_err().remove(0)
    }

    #[test]
    fn inputs_the_core_cannot_take_are_errors_with_position() {
        let e = first_error(&SAMPLE.replace("proxy_pid = 5151", "proxy_pid = 0"));
        assert_eq!((e.code, e.line), ("bad-pid", 14));
        let e = first_error(&SAMPLE.replace("proxy_pid = 5151", "proxy_pid = 4294967296"));
        assert_eq!((e.code, e.line), ("bad-pid", 14));
        assert!(e.to_string().starts_with("b.toml:14:13: error[bad-pid]"), "{e}");
        let e = first_error(&SAMPLE.replacen("local = \"10.0.0.5:50000\"", "local = \"[fe80::1]:50000\"", 1));
        assert_eq!((e.code, e.line), ("family-mismatch", 22));
        let long = format!("app = '\\device\\{}'", "a".repeat(MAX_APP_UNITS));
        let e = first_error(&SAMPLE.replacen("app = '\\device\\harddiskvolume3\\apps\\browser.exe'", &long, 1));
        assert_eq!((e.code, e.line), ("app-too-long", 24));
        let e = first_error(&SAMPLE.replacen("endpoint = 1", "endpoint = -1", 1));
        assert_eq!((e.code, e.line), ("out-of-range", 19));
        let e = first_error(&SAMPLE.replacen("pid = 4242", "pid = -4", 1));
        assert_eq!(e.code, "out-of-range", "{e}");
    }

    #[test]
    fn step_lines_are_right_far_into_a_long_fixture() {
        let step = SAMPLE.split("[[step]]").nth(1).unwrap();
        let mut text = SAMPLE.split("[[step]]").next().unwrap().to_owned();
        for _ in 0..2_000 {
            text.push_str("[[step]]");
            text.push_str(step);
        }
        let f = Fixture::parse(&text, Path::new("big.toml")).unwrap();
        assert_eq!(f.steps.len(), 2_000);
        let per_step = step.matches('\n').count();
        assert_eq!(f.steps[1_999].line, 16 + 1_999 * per_step);
    }
}
