//! Replaying a fixture against the real core (`arbiter replay`).
//!
//! Steps run in order against one [`Arbiter`], so table state carries from
//! step to step. Besides the fixture's expectations, every decision's audit
//! record is encoded, decoded and replayed, and must give the same outcome
//! (decision-table.md, invariant 3): a replay is also a codec check.

use core::net::SocketAddr;

use arbiter::audit::AuditRecord;
use arbiter::{Arbiter, Decision, Layer, Reason, RuleSet, Verdict};

use crate::fixture::{Diagnostic, Fixture, RulesSource, Step};

/// One expectation that did not hold.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Mismatch {
    /// `verdict`, `reason`, `redirect_to`, `target_pid` or `audit`.
    pub field: &'static str,
    /// What the fixture expects.
    pub expected: String,
    /// What the core gave.
    pub actual: String,
}

/// What one step gave.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StepResult {
    /// 1-based step number.
    pub index: usize,
    /// Line of the step in its file (0 if unknown).
    pub line: usize,
    /// The layer.
    pub layer: Layer,
    /// The verdict.
    pub verdict: Verdict,
    /// The reason.
    pub reason: Reason,
    /// The rewritten remote, for `proxy`.
    pub redirect_to: Option<SocketAddr>,
    /// localRedirectTargetPID, for `proxy`.
    pub target_pid: Option<u64>,
    /// Expectations that failed.
    pub mismatches: Vec<Mismatch>,
}

/// The result of replaying one fixture.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct FixtureRun {
    /// Per step.
    pub steps: Vec<StepResult>,
    /// Wall time spent deciding the steps (table set-up excluded).
    pub elapsed: std::time::Duration,
}

impl FixtureRun {
    /// Every expectation held.
    pub fn passed(&self) -> bool {
        self.steps.iter().all(|s| s.mismatches.is_empty())
    }

    /// The steps with failed expectations.
    pub fn failures(&self) -> impl Iterator<Item = &StepResult> {
        self.steps.iter().filter(|s| !s.mismatches.is_empty())
    }
}

/// Loads the rule set a fixture names (file or inline table).
pub fn fixture_rules(f: &Fixture) -> Result<RuleSet, Diagnostic> {
    let diag = |message: String| Diagnostic { file: f.path.clone(), line: 0, col: 0, code: "rules-invalid", message };
    match &f.rules {
        RulesSource::None => Ok(RuleSet::default()),
        RulesSource::File(p) => crate::rules::load_file(p).map_err(diag),
        RulesSource::Inline(t) => {
            let text = toml::to_string(t.as_ref()).map_err(|e| diag(e.to_string()))?;
            crate::rules::parse_str(&text, &f.path.display().to_string()).map_err(diag)
        }
    }
}

/// A fresh arbiter for a fixture's environment and rules, configured as the
/// driver configures it behind the adapter: the adapter maps the fixture's
/// `own_filter` (our run-time filter id) to [`arbiter_callout::OWN_FILTER`].
pub fn arbiter_for(f: &Fixture, rules: RuleSet) -> Result<Arbiter<RuleSet>, String> {
    let env = &f.environment;
    let (v4, v6) = (rules.proxy.v4, rules.proxy.v6);
    let config = arbiter::Config { own_filter: arbiter_callout::OWN_FILTER, ..env.config() };
    let mut a = Arbiter::new(config, env.capacities, rules).map_err(|_| "out of memory reserving tables".to_owned())?;
    if let Some(pid) = env.proxy_pid {
        // No listener in the rules: no proxy is registered, and proxying
        // rules give `proxy-unavailable`, as in the driver.
        let _ = a.set_proxy(pid, v4, v6);
    }
    Ok(a)
}

/// Encodes, decodes and replays a decision's record; true when all agree.
pub fn audit_round_trip(d: &Decision<'_>) -> bool {
    let mut buf = vec![0u8; d.audit.encoded_len()];
    let Ok(n) = d.audit.encode_into(&mut buf) else { return false };
    let Some(bytes) = buf.get(..n) else { return false };
    match AuditRecord::decode(bytes) {
        Ok((rec, used)) => {
            used == n
                && rec == d.audit
                && rec.outcome().is_some_and(|o| o.verdict == d.verdict && o.reason == d.reason)
                && rec.replay().zip(rec.outcome()).is_some_and(|(r, o)| r.matches(o))
        }
        Err(_) => false,
    }
}

/// Replays a parsed fixture with its rules, through the same path the lab
/// uses: the classify adapter on the WFP model ([`crate::ours::ArbiterCallout::feed`]).
pub fn run(f: &Fixture, rules: RuleSet) -> Result<FixtureRun, String> {
    let core = arbiter_for(f, rules)?;
    let mut ours = crate::ours::ArbiterCallout::with_own_filter(
        core,
        arbiter_wfp_model::Readings::default(),
        f.environment.own_filter,
    )?;
    let mut run = FixtureRun::default();
    for (i, step) in f.steps.iter().enumerate() {
        let t0 = std::time::Instant::now();
        let failures_before = ours.audit_failures;
        let fed = ours.feed(Step { expect: crate::fixture::Expect::default(), ..step.clone() });
        let (verdict, reason) =
            (fed.expect.verdict.unwrap_or(Verdict::Continue), fed.expect.reason.unwrap_or(Reason::Unknown(0)));
        let (redirect_to, target_pid) = (fed.expect.redirect_to, fed.expect.target_pid);
        // Every step is decided and audited, and its record replays.
        let audit_ok = ours.audit_failures == failures_before && fed.expect.reason.is_some();
        run.elapsed += t0.elapsed();
        let mut mismatches = Vec::new();
        let e = &step.expect;
        let mut check = |field, expected: Option<String>, actual: String| {
            if let Some(expected) = expected
                && expected != actual
            {
                mismatches.push(Mismatch { field, expected, actual });
            }
        };
        let opt = |v: Option<String>| v.unwrap_or_else(|| "none".to_owned());
        check("verdict", e.verdict.map(|v| v.name().to_owned()), verdict.name().to_owned());
        check("reason", e.reason.map(|r| r.name().to_owned()), reason.name().to_owned());
        check("redirect_to", e.redirect_to.map(|a| a.to_string()), opt(redirect_to.map(|a| a.to_string())));
        check("target_pid", e.target_pid.map(|p| p.to_string()), opt(target_pid.map(|p| p.to_string())));
        if !audit_ok {
            mismatches.push(Mismatch {
                field: "audit",
                expected: "the audit record replays to the decision".to_owned(),
                actual: "it does not".to_owned(),
            });
        }
        run.steps.push(StepResult {
            index: i + 1,
            line: step.line,
            layer: step.layer,
            verdict,
            reason,
            redirect_to,
            target_pid,
            mismatches,
        });
    }
    Ok(run)
}

/// Loads a fixture, its rules, and replays it. Errors are input errors.
pub fn replay_file(path: &std::path::Path) -> Result<(Fixture, FixtureRun), Vec<Diagnostic>> {
    let f = Fixture::load(path)?;
    let rules = fixture_rules(&f).map_err(|d| vec![d])?;
    let run = run(&f, rules).map_err(|m| {
        vec![Diagnostic { file: path.to_path_buf(), line: 0, col: 0, code: "arbiter-init", message: m }]
    })?;
    Ok((f, run))
}

/// Every `*.toml` under the given files or folders, recursively, sorted per folder.
pub fn collect_fixture_paths(inputs: &[std::path::PathBuf]) -> Result<Vec<std::path::PathBuf>, Diagnostic> {
    fn walk(dir: &std::path::Path, out: &mut Vec<std::path::PathBuf>) -> std::io::Result<()> {
        let mut entries: Vec<_> = std::fs::read_dir(dir)?.collect::<Result<_, _>>()?;
        entries.sort_by_key(std::fs::DirEntry::path);
        for e in entries {
            let p = e.path();
            if p.is_dir() {
                walk(&p, out)?;
            } else if p.extension().is_some_and(|x| x == "toml") {
                out.push(p);
            }
        }
        Ok(())
    }
    let mut out = Vec::new();
    for p in inputs {
        let err = |e: std::io::Error| Diagnostic {
            file: p.clone(),
            line: 0,
            col: 0,
            code: "unreadable",
            message: e.to_string(),
        };
        if p.is_dir() {
            walk(p, &mut out).map_err(err)?;
        } else if p.exists() {
            out.push(p.clone());
        } else {
            return Err(err(std::io::Error::new(std::io::ErrorKind::NotFound, "no such file or folder")));
        }
    }
    Ok(out)
}
