//! Scenarios, the matrix, and the [`Lab`] harness that drives one scenario
//! connection by connection (`step()`) or to its end (`drive()`).

use core::fmt;
use core::net::SocketAddr;
use std::path::Path;

use arbiter::{Layer, Protocol, RuleSet};

use crate::engine::{Connection, Engine, HopResult, HopTrace, Identity, MAX_CHAIN, ProxyProcess, Vendor};
use crate::fixture::{Environment, Fixture, RulesSource};
use crate::ours::{ArbiterCallout, OWN_FILTER, OWN_HANDLE, OWN_PROXY_APP, OWN_PROXY_PID};
use crate::profiles::{Profile, Sampler, Wants};

/// The application every scenario starts from.
pub const APP: &str = r"\device\harddiskvolume3\apps\browser.exe";
/// Its PID.
pub const APP_PID: u64 = 4242;
/// The IPv4 destination.
pub const DEST_V4: &str = "93.184.216.34:443";
/// The IPv6 destination.
pub const DEST_V6: &str = "[2606:2800:220:1:248:1893:25c8:1946]:443";

/// A rule set as the lab uses it: parsed, and as a TOML table for recording.
#[derive(Clone, Debug)]
pub struct LabRules {
    /// Short name (file stem).
    pub name: String,
    /// The parsed rules.
    pub rules: RuleSet,
    /// The source as a table, inlined into recorded fixtures (shared by all
    /// their reports, not copied into each).
    pub table: std::sync::Arc<toml::Table>,
}

impl LabRules {
    /// Parses rules text.
    pub fn from_text(name: &str, text: &str, origin: &str) -> Result<Self, String> {
        let rules = crate::rules::parse_str(text, origin)?;
        let table = text.parse::<toml::Table>().map_err(|e| format!("{origin}: {e}"))?;
        Ok(Self { name: name.to_owned(), rules, table: std::sync::Arc::new(table) })
    }

    /// Loads a rules file.
    pub fn load(path: &Path) -> Result<Self, String> {
        let text = arbiter_ruleset::input::read_text_capped(path, arbiter_ruleset::input::RULES_CAP)
            .map_err(|e| format!("{}: cannot read: {e}", path.display()))?;
        let name = path.file_stem().map_or_else(|| "rules".to_owned(), |s| s.to_string_lossy().into_owned());
        Self::from_text(&name, &text, &path.display().to_string())
    }

    /// The built-in rule set (proxy everything), used when no shipped rules exist.
    pub fn fallback() -> Self {
        // The constant is tested to parse; an error here would be a build defect.
        Self::from_text("builtin", crate::rules::LAB_FALLBACK_RULES, "builtin").unwrap_or_else(|_| Self {
            name: "builtin".into(),
            rules: RuleSet::default(),
            table: std::sync::Arc::default(),
        })
    }

    /// The shipped rule sets under `root`: `rules/default.toml` then
    /// `rules/examples/*.toml`; the built-in set when there are none.
    pub fn shipped(root: &Path) -> Result<Vec<Self>, String> {
        let mut paths = Vec::new();
        let default = root.join("rules").join("default.toml");
        if default.is_file() {
            paths.push(default);
        }
        if let Ok(rd) = std::fs::read_dir(root.join("rules").join("examples")) {
            let mut ex: Vec<_> = rd
                .filter_map(Result::ok)
                .map(|e| e.path())
                .filter(|p| p.extension().is_some_and(|x| x == "toml"))
                .collect();
            ex.sort();
            paths.extend(ex);
        }
        if paths.is_empty() {
            return Ok(vec![Self::fallback()]);
        }
        paths.iter().map(|p| Self::load(p)).collect()
    }
}

/// Who sits in our place.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Ours {
    /// The real policy core.
    Arbiter,
    /// The WFP sample's logic with our rules, as the baseline.
    SamplerBaseline,
}

impl Ours {
    /// Report name.
    pub const fn name(self) -> &'static str {
        match self {
            Self::Arbiter => "arbiter",
            Self::SamplerBaseline => "baseline",
        }
    }
}

/// Our weight relative to the peer's.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Position {
    /// We classify first.
    Above,
    /// The peer classifies first.
    Below,
}

impl Position {
    /// Report name.
    pub const fn name(self) -> &'static str {
        match self {
            // Read as "ours above": our weight is above the peer's.
            Self::Above => "ours-above",
            Self::Below => "ours-below",
        }
    }
}

/// One cell of the matrix.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Scenario {
    /// Who is in our place.
    pub ours: Ours,
    /// The peer.
    pub peer: Profile,
    /// Our weight relative to the peer.
    pub position: Position,
    /// TCP or UDP.
    pub protocol: Protocol,
    /// IPv6 (else IPv4).
    pub v6: bool,
    /// Index of the rule set.
    pub rules: usize,
}

impl Scenario {
    /// `ours/peer/position/protocol/family/rules`.
    pub fn name(&self, rules: &[LabRules]) -> String {
        format!(
            "{}/{}/{}/{}/{}/{}",
            self.ours.name(),
            self.peer.name(),
            self.position.name(),
            self.protocol,
            if self.v6 { "v6" } else { "v4" },
            rules.get(self.rules).map_or("?", |r| r.name.as_str())
        )
    }
}

/// Every profile in `peers`, above and below, TCP and UDP, IPv4 and IPv6,
/// each rule set; with `baseline`, the same again with the sampler in our place.
pub fn matrix(peers: &[Profile], rule_sets: usize, baseline: bool) -> Vec<Scenario> {
    let mut out = Vec::new();
    let ours: &[Ours] = if baseline { &[Ours::Arbiter, Ours::SamplerBaseline] } else { &[Ours::Arbiter] };
    for &o in ours {
        for rules in 0..rule_sets {
            for &peer in peers {
                for position in [Position::Above, Position::Below] {
                    for protocol in [Protocol::TCP, Protocol::UDP] {
                        for v6 in [false, true] {
                            out.push(Scenario { ours: o, peer, position, protocol, v6, rules });
                        }
                    }
                }
            }
        }
    }
    out
}

/// How a chain ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Reached its original destination.
    Delivered,
    /// Deliberately blocked.
    Blocked {
        /// Who blocked.
        by: String,
        /// At which layer.
        layer: Layer,
        /// Why.
        reason: String,
    },
    /// Hit the chain cap or a reauthorization ping-pong.
    Loop(String),
    /// Ended in a way the model cannot explain.
    Unexplained(String),
}

impl Outcome {
    /// `delivered`, `blocked`, `loop` or `unexplained`.
    pub const fn kind(&self) -> &'static str {
        match self {
            Self::Delivered => "delivered",
            Self::Blocked { .. } => "blocked",
            Self::Loop(_) => "loop",
            Self::Unexplained(_) => "unexplained",
        }
    }

    /// Delivered or deliberately blocked.
    pub const fn is_explained(&self) -> bool {
        matches!(self, Self::Delivered | Self::Blocked { .. })
    }

    /// The blocking reason or failure detail, `-` otherwise.
    pub fn detail(&self) -> String {
        match self {
            Self::Delivered => "-".to_owned(),
            Self::Blocked { by, layer, reason } => format!("{by}: {reason} ({})", layer.name()),
            Self::Loop(why) | Self::Unexplained(why) => why.clone(),
        }
    }
}

impl fmt::Display for Outcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.kind())
    }
}

/// One scenario, run.
#[derive(Debug)]
pub struct Report {
    /// The scenario.
    pub scenario: Scenario,
    /// Its name.
    pub name: String,
    /// How it ended.
    pub outcome: Outcome,
    /// Proxy hops (connections after the application's).
    pub hops: usize,
    /// `app -> arbiter-proxy -> ... -> destination`.
    pub path: Vec<String>,
    /// Vendors whose callouts acted (a verdict other than continue), in order.
    pub inspected: Vec<String>,
    /// Every connection's trace.
    pub traces: Vec<HopTrace>,
    /// Our arbiter's indications as a fixture (arbiter scenarios only).
    pub recorded: Option<Fixture>,
    /// Our arbiter's audit log (arbiter scenarios only).
    pub audit_log: Vec<u8>,
    /// Decisions whose audit record did not replay.
    pub audit_failures: usize,
}

impl Report {
    /// A failure of ours: a loop or an unexplained end with our arbiter present.
    pub const fn is_failure(&self) -> bool {
        matches!(self.scenario.ours, Ours::Arbiter) && !self.outcome.is_explained()
    }
}

/// A lab machine running one scenario.
#[derive(Debug)]
pub struct Lab {
    engine: Engine,
    scenario: Scenario,
    name: String,
    rules: LabRules,
    destination: SocketAddr,
    pending: Option<Connection>,
    traces: Vec<HopTrace>,
    path: Vec<String>,
    outcome: Option<Outcome>,
}

/// Index of our vendor in the engine.
pub const OURS: usize = 0;
/// Index of the peer in the engine.
pub const PEER: usize = 1;

impl Lab {
    /// Sets up the machine: our callout and the peer, the application's connection queued.
    pub fn new(scenario: Scenario, rule_sets: &[LabRules]) -> Result<Self, String> {
        let rules = rule_sets.get(scenario.rules).cloned().ok_or("no such rule set")?;
        let (our_weight, peer_weight) = match scenario.position {
            Position::Above => (20, 10),
            Position::Below => (10, 20),
        };
        let listeners = rules.rules.proxy;
        let fallback = crate::rules::parse_str(crate::rules::LAB_FALLBACK_RULES, "builtin")?.proxy;
        let v4 = listeners.v4.or(fallback.v4).ok_or("no IPv4 listener")?;
        let v6 = listeners.v6.or(fallback.v6).ok_or("no IPv6 listener")?;
        let ours_id = Identity {
            name: scenario.ours.name().to_owned(),
            weight: our_weight,
            filter: OWN_FILTER,
            handle: OWN_HANDLE,
            proxy: Some(ProxyProcess {
                pid: OWN_PROXY_PID,
                app: OWN_PROXY_APP.to_owned(),
                v4: SocketAddr::V4(v4),
                v6: SocketAddr::V6(v6),
                propagates_records: true,
            }),
            tunnel: None,
        };
        let ours: Box<dyn crate::engine::Callout> = match scenario.ours {
            Ours::Arbiter => {
                let a = crate::ours::lab_arbiter(rules.rules.clone(), Some(v4), Some(v6))?;
                Box::new(ArbiterCallout::new(a, arbiter_wfp_model::Readings::default())?)
            }
            Ours::SamplerBaseline => Box::new(Sampler { wants: Wants::Rules(Box::new(rules.rules.clone())) }),
        };
        let peer = Vendor { id: scenario.peer.identity(peer_weight), callout: scenario.peer.callout() };
        let mut engine = Engine::new(vec![Vendor { id: ours_id, callout: ours }, peer]);
        let destination: SocketAddr =
            (if scenario.v6 { DEST_V6 } else { DEST_V4 }).parse().map_err(|_| "bad destination".to_owned())?;
        let first = engine.app_connection(APP_PID, APP, scenario.protocol, destination);
        Ok(Self {
            name: scenario.name(rule_sets),
            engine,
            scenario,
            rules,
            destination,
            pending: Some(first),
            traces: Vec::new(),
            path: vec!["app".to_owned()],
            outcome: None,
        })
    }

    /// The scenario's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The engine (to inspect vendors).
    pub const fn engine(&self) -> &Engine {
        &self.engine
    }

    /// The outcome, once the chain ended.
    pub const fn outcome(&self) -> Option<&Outcome> {
        self.outcome.as_ref()
    }

    /// The connections classified so far.
    pub fn traces(&self) -> &[HopTrace] {
        &self.traces
    }

    /// Classifies the next connection of the chain; `None` once it has ended.
    pub fn step(&mut self) -> Option<&HopTrace> {
        let conn = self.pending.take()?;
        if self.traces.len() >= MAX_CHAIN {
            self.path.push("...".to_owned());
            self.outcome = Some(Outcome::Loop(format!("chain reached {MAX_CHAIN} connections")));
            return None;
        }
        let trace = self.engine.classify(&conn, self.destination);
        let name = |e: &Engine, v: usize| e.vendors.get(v).map_or_else(|| "?".to_owned(), |x| x.id.name.clone());
        match &trace.result {
            HopResult::ToProxy { vendor } => {
                self.path.push(format!("{}-proxy", name(&self.engine, *vendor)));
                self.pending = self.engine.proxy_outbound(&trace, *vendor);
                if self.pending.is_none() {
                    self.outcome = Some(Outcome::Unexplained("the proxy could not read its redirect context".into()));
                }
            }
            HopResult::Delivered { via_tunnel } => {
                if let Some((v, addr)) = via_tunnel {
                    self.path.push(format!("{}@{addr}", name(&self.engine, *v)));
                }
                self.path.push(self.destination.to_string());
                self.outcome = Some(Outcome::Delivered);
            }
            HopResult::Blocked { vendor, layer, reason } => {
                let by = name(&self.engine, *vendor);
                self.path.push(format!("blocked by {by}"));
                self.outcome = Some(Outcome::Blocked { by, layer: *layer, reason: reason.clone() });
            }
            HopResult::ReauthLoop => {
                self.path.push("...".to_owned());
                self.outcome = Some(Outcome::Loop("reauthorization did not settle".to_owned()));
            }
            HopResult::Unexplained(why) => {
                self.path.push("?".to_owned());
                self.outcome = Some(Outcome::Unexplained(why.clone()));
            }
        }
        self.traces.push(trace);
        self.traces.last()
    }

    /// Steps until the chain ends and returns how.
    pub fn drive(&mut self) -> &Outcome {
        while self.step().is_some() {}
        self.outcome.get_or_insert_with(|| Outcome::Unexplained("the chain stopped without an outcome".to_owned()))
    }

    /// Drives to the end and summarizes.
    pub fn report(mut self) -> Report {
        let outcome = self.drive().clone();
        let mut inspected: Vec<String> = Vec::new();
        for d in self.traces.iter().flat_map(|t| &t.decisions) {
            if d.action != "continue" && !inspected.contains(&d.name) {
                inspected.push(d.name.clone());
            }
        }
        // The recording is moved out, not copied: the scenario is over.
        let ours = self
            .engine
            .vendors
            .get_mut(OURS)
            .and_then(|v| v.callout.as_arbiter_mut())
            .map(|a| (core::mem::take(&mut a.steps), core::mem::take(&mut a.audit_log), a.audit_failures));
        let audit_failures = ours.as_ref().map_or(0, |o| o.2);
        let (recorded, audit_log) = match ours {
            Some((steps, log, _)) => (
                Some(Fixture {
                    name: self.name.clone(),
                    path: format!("{}.toml", file_stem(&self.name)).into(),
                    rules: RulesSource::Inline(core::mem::take(&mut self.rules.table)),
                    environment: Environment {
                        own_filter: OWN_FILTER,
                        proxy_pid: Some(OWN_PROXY_PID),
                        ..Environment::default()
                    },
                    steps,
                }),
                log,
            ),
            None => (None, Vec::new()),
        };
        Report {
            scenario: self.scenario,
            name: self.name,
            hops: self.traces.len().saturating_sub(1),
            outcome,
            path: self.path,
            inspected,
            recorded,
            audit_log,
            audit_failures,
            traces: self.traces,
        }
    }
}

/// A file-name-safe form of a scenario name.
pub fn file_stem(name: &str) -> String {
    name.chars().map(|c| if c.is_ascii_alphanumeric() || c == '-' { c } else { '_' }).collect()
}

/// Runs one scenario to its end.
pub fn run(scenario: Scenario, rule_sets: &[LabRules]) -> Result<Report, String> {
    Ok(Lab::new(scenario, rule_sets)?.report())
}
