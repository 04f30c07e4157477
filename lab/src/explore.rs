//! The exhaustive interop explorer: every combination, up to a bound, of
//! vendors, weight orders, trust settings, record propagation and the
//! interleaving of several application connections over one shared engine.
//!
//! The fixed matrix ([`crate::scenario`]) runs one connection through one
//! peer. Loops can also hide in *state*: our arbiter's hop counters (C8),
//! its learned local proxies (A6) and its cached verdicts are shared by
//! every connection on the machine, and an auth-blocker learns proxies too.
//! So the explorer puts two or three application connections on one
//! [`Engine`] and classifies them phase by phase (connect-redirect, then
//! auth-connect, see [`Engine::connect_phase`]), in every order.
//!
//! ## How the state space is searched
//!
//! A depth-first search over *abstract states*. The core's tables cannot be
//! cloned, so the search keeps one live machine along the current path and
//! rebuilds it (a fresh machine plus a replay of the path) to try another
//! branch. Two paths that reach the same abstract state are merged; the
//! abstract state is everything the future depends on:
//!
//! - each connection's phase, its connection (addresses, process, app ids,
//!   redirect records), and, between the two layers, the connect-redirect
//!   decisions and layer data;
//! - our arbiter's shared tables as its decisions define them
//!   (decision-table.md): one hop per `proxy` verdict and destination, one
//!   learned proxy per `redirected-by-other-observed`; the explorer checks
//!   this summary against the live core after every step (table occupancy,
//!   [`arbiter::Arbiter::is_learned_proxy`]) and reports any mismatch as a
//!   model error, never silently;
//! - the proxies every auth-blocker has learned.
//!
//! Endpoint handles, local ports and the clock are left out: the core only
//! compares endpoints for equality, no rule reads a local port, and no
//! execution lasts as long as the shortest window or time-to-live (checked
//! after every step). A connection whose state recurs (ignoring its hop
//! index) together with everything else on the path can go round forever;
//! it is reported as a loop at once instead of after [`MAX_CHAIN`]
//! connections, which keeps the baseline's counterexamples short.
//!
//! Fails (panics) never; a configuration whose rules cannot be built is
//! reported as a model error.

use core::cell::RefCell;
use core::fmt;
use core::hash::{Hash, Hasher};
use core::net::SocketAddr;
use std::collections::hash_map::DefaultHasher;
use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::rc::Rc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};

use arbiter::{Arbiter, Capacities, Config as CoreConfig, Instant, Layer, Protocol, RuleSet, Verdict};

use crate::engine::{
    AuthAction, AuthDecision, AuthView, Callout, Classifying, ConnectAction, ConnectDecision, ConnectView, Connection,
    Engine, HopResult, Identity, MAX_CHAIN, ProxyProcess, Vendor,
};
use crate::fixture::{Expect, Step};
use crate::ours::{ArbiterCallout, Fed, OWN_FILTER, OWN_HANDLE, OWN_PROXY_APP, OWN_PROXY_PID, auth_step, connect_step};
use crate::profiles::{AuthBlocker, Profile, Sampler, Wants};
use crate::scenario::{APP, APP_PID, DEST_V4, DEST_V6, Ours, Outcome};

/// Our proxy's IPv4 listener in every explored rule set.
const OUR_V4: &str = "127.0.0.1:34010";
/// Our proxy's IPv6 listener.
const OUR_V6: &str = "[::1]:34010";
/// The second destination (IPv4).
const DEST2_V4: &str = "203.0.113.7:443";
/// The second destination (IPv6).
const DEST2_V6: &str = "[2001:db8:beef::7]:443";
/// The applications that open the concurrent connections: (PID, app id).
const APPS: [(u64, &str); 3] = [
    (APP_PID, APP),
    (4343, r"\device\harddiskvolume3\apps\mail.exe"),
    (4444, r"\device\harddiskvolume3\apps\updater.exe"),
];
/// Table sizes for the explored arbiter: far above what any execution
/// fills (checked: an eviction is a model error), small to rebuild fast.
const CAPACITIES: Capacities = Capacities { endpoints: 256, destinations: 64, known_proxies: 64 };

/// One peer vendor in a configuration.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PeerSpec {
    /// Its behaviour.
    pub profile: Profile,
    /// Its proxy copies the redirect records onto its outbound socket.
    pub propagates: bool,
    /// Our `coexistence.trust` names its proxy.
    pub trusted: bool,
    /// Our `coexistence.known_proxies` names its proxy.
    pub known: bool,
}

impl PeerSpec {
    /// Record propagation choices the profile leaves open. `compliant` and the
    /// sample's proxy may or may not copy the records; `no-records` never
    /// does by definition, and `legacy` predates redirect records.
    pub const fn propagation_choices(profile: Profile) -> &'static [bool] {
        match profile {
            // WFPSampler's helper sets them (its proxy service is not
            // published); a proxy built on eBPF for Windows does its own.
            Profile::Compliant | Profile::Sampler | Profile::WfpSampler | Profile::NetEbpfExt => &[true, false],
            Profile::NoRecords
            | Profile::Legacy
            | Profile::WriteStripper
            | Profile::RemoteProxy
            | Profile::AuthBlocker
            | Profile::SplitTunnel
            | Profile::SplitTunnelProxy
            | Profile::Mullvad
            | Profile::Portmaster
            // Its relay never queries nor sets the records.
            | Profile::ProxyBridge => &[false],
        }
    }

    /// Whether the profile runs a local proxy that our trust settings can name.
    pub const fn has_local_proxy(profile: Profile) -> bool {
        matches!(
            profile,
            Profile::Compliant
                | Profile::Sampler
                | Profile::NoRecords
                | Profile::Legacy
                | Profile::WfpSampler
                | Profile::NetEbpfExt
                | Profile::ProxyBridge
        )
    }

    /// Every spec for a profile: propagation × (trusted, known).
    pub fn all(profile: Profile, trust_dimension: bool) -> Vec<Self> {
        let trust: &[(bool, bool)] = if trust_dimension && Self::has_local_proxy(profile) {
            &[(false, false), (true, false), (false, true), (true, true)]
        } else {
            &[(false, false)]
        };
        let mut out = Vec::new();
        for &propagates in Self::propagation_choices(profile) {
            for &(trusted, known) in trust {
                out.push(Self { profile, propagates, trusted, known });
            }
        }
        out
    }
}

impl fmt::Display for PeerSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.profile.name())?;
        let mut flags = Vec::new();
        if Self::has_local_proxy(self.profile) {
            flags.push(if self.propagates { "records" } else { "no records" });
        }
        if self.trusted {
            flags.push("trusted");
        }
        if self.known {
            flags.push("known");
        }
        if !flags.is_empty() {
            write!(f, "({})", flags.join(", "))?;
        }
        Ok(())
    }
}

/// One application connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ConnSpec {
    /// TCP or UDP.
    pub protocol: Protocol,
    /// IPv6 (else IPv4).
    pub v6: bool,
    /// Which destination (0 or 1).
    pub dest: u8,
}

impl ConnSpec {
    /// Where it goes.
    pub fn destination(self) -> SocketAddr {
        let text = match (self.v6, self.dest) {
            (false, 0) => DEST_V4,
            (true, 0) => DEST_V6,
            (false, _) => DEST2_V4,
            (true, _) => DEST2_V6,
        };
        text.parse().unwrap_or_else(|_| SocketAddr::from(([192, 0, 2, 1], 443)))
    }
}

impl fmt::Display for ConnSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}/d{}", self.protocol, if self.v6 { "v6" } else { "v4" }, self.dest + 1)
    }
}

/// The connection sets: for each protocol and family, two connections to
/// the same destination and two to different destinations; `extra` adds
/// a third connection to the same destination as the first.
pub fn connection_sets(quick: bool, connections: usize) -> Vec<Vec<ConnSpec>> {
    let mut out = Vec::new();
    let families: &[(Protocol, bool)] = if quick {
        &[(Protocol::TCP, false), (Protocol::UDP, true)]
    } else {
        &[(Protocol::TCP, false), (Protocol::TCP, true), (Protocol::UDP, false), (Protocol::UDP, true)]
    };
    for &(protocol, v6) in families {
        for other in [0u8, 1] {
            // Quick: TCP to one destination, UDP to two.
            if quick && (protocol == Protocol::TCP) != (other == 0) {
                continue;
            }
            let mut set = vec![ConnSpec { protocol, v6, dest: 0 }, ConnSpec { protocol, v6, dest: other }];
            for _ in 2..connections {
                set.push(ConnSpec { protocol, v6, dest: 0 });
            }
            out.push(set);
        }
    }
    out
}

/// C3/C8 settings of the explored rule set.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum LoopSettings {
    /// `revisit = permit`, `on_loop = permit`, `max_hops = 3` (the default).
    Default,
    /// `revisit = block`, `on_loop = block`, `max_hops = 2` (rules/examples/strict.toml).
    Strict,
}

impl LoopSettings {
    /// Report name.
    pub const fn name(self) -> &'static str {
        match self {
            Self::Default => "default",
            Self::Strict => "strict",
        }
    }
}

/// One explored configuration.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Setup {
    /// Who sits in our place.
    pub ours: Ours,
    /// Our proxy copies the redirect records.
    pub ours_propagates: bool,
    /// The peers (vendor `i + 1` is `peers[i]`).
    pub peers: Vec<PeerSpec>,
    /// Vendor indices (0: ours) from the highest weight down.
    pub order: Vec<usize>,
    /// Our loop settings.
    pub loops: LoopSettings,
    /// The concurrent application connections.
    pub conns: Vec<ConnSpec>,
}

impl Setup {
    /// Number of vendors.
    pub fn vendors(&self) -> usize {
        self.peers.len() + 1
    }

    /// Vendor names as the engine reports them (a repeated profile gets `-2`).
    pub fn vendor_names(&self) -> Vec<String> {
        let mut names = vec![self.ours.name().to_owned()];
        for (i, p) in self.peers.iter().enumerate() {
            let repeated = self.peers.get(..i).is_some_and(|before| before.iter().any(|q| q.profile == p.profile));
            names.push(if repeated { format!("{}-2", p.profile.name()) } else { p.profile.name().to_owned() });
        }
        names
    }

    fn vendor_label(&self, v: usize) -> String {
        let name = self.vendor_names().get(v).cloned().unwrap_or_default();
        if v == 0 {
            let records = if self.ours_propagates { "records" } else { "no records" };
            return format!("{name}({records}, {})", self.loops.name());
        }
        match self.peers.get(v - 1) {
            Some(p) => {
                let shown = p.to_string();
                let base = p.profile.name();
                format!("{name}{}", shown.strip_prefix(base).unwrap_or(""))
            }
            None => name,
        }
    }
}

impl fmt::Display for Setup {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let vendors: Vec<String> = self.order.iter().map(|&v| self.vendor_label(v)).collect();
        let conns: Vec<String> = self.conns.iter().map(ToString::to_string).collect();
        write!(f, "{} | {}", vendors.join(" > "), conns.join(" + "))
    }
}

/// What to explore.
#[derive(Clone, Debug)]
pub struct Bounds {
    /// 2: our place plus one peer; 3: also every pair of peers.
    pub max_vendors: usize,
    /// Concurrent application connections (2 or 3).
    pub connections: usize,
    /// Fewer connection sets (for `cargo test`).
    pub quick: bool,
    /// Loop settings to explore.
    pub loop_settings: Vec<LoopSettings>,
    /// Also explore with the sampler in our place.
    pub baseline: bool,
    /// Worker threads.
    pub threads: usize,
    /// Peer profiles to draw from.
    pub profiles: Vec<Profile>,
}

impl Bounds {
    /// The full exploration up to `max_vendors` vendors.
    pub fn full(max_vendors: usize) -> Self {
        Self {
            max_vendors,
            connections: 2,
            quick: false,
            loop_settings: vec![LoopSettings::Default],
            baseline: true,
            threads: std::thread::available_parallelism().map_or(1, |n| n.get()).min(2),
            profiles: Profile::ALL.to_vec(),
        }
    }

    /// A bounded exploration that finishes in seconds.
    pub fn quick(max_vendors: usize) -> Self {
        Self { quick: true, ..Self::full(max_vendors) }
    }
}

/// Every configuration within `bounds` for `ours`. The sampler ignores our
/// trust settings, so with it in our place that dimension collapses.
pub fn setups(bounds: &Bounds, ours: Ours) -> Vec<Setup> {
    let trust_dimension = ours == Ours::Arbiter;
    let specs: Vec<PeerSpec> = bounds.profiles.iter().flat_map(|&p| PeerSpec::all(p, trust_dimension)).collect();
    let mut peer_sets: Vec<Vec<PeerSpec>> = specs.iter().map(|&s| vec![s]).collect();
    if bounds.max_vendors >= 3 {
        // Unordered pairs with repetition: the weight orders cover both placements.
        for (i, &a) in specs.iter().enumerate() {
            for &b in specs.get(i..).unwrap_or_default() {
                peer_sets.push(vec![a, b]);
            }
        }
    }
    let conn_sets = connection_sets(bounds.quick, bounds.connections);
    let mut out = Vec::new();
    for peers in peer_sets {
        let n = peers.len() + 1;
        for order in permutations(n) {
            for ours_propagates in [true, false] {
                for &loops in &bounds.loop_settings {
                    for conns in &conn_sets {
                        out.push(Setup {
                            ours,
                            ours_propagates,
                            peers: peers.clone(),
                            order: order.clone(),
                            loops,
                            conns: conns.clone(),
                        });
                    }
                }
            }
        }
    }
    out
}

/// Every permutation of `0..n`, in lexicographic order.
pub fn permutations(n: usize) -> Vec<Vec<usize>> {
    fn go(rest: &mut Vec<usize>, cur: &mut Vec<usize>, out: &mut Vec<Vec<usize>>) {
        if rest.is_empty() {
            out.push(cur.clone());
            return;
        }
        for i in 0..rest.len() {
            let x = rest.remove(i);
            cur.push(x);
            go(rest, cur, out);
            cur.pop();
            rest.insert(i, x);
        }
    }
    let mut out = Vec::new();
    go(&mut (0..n).collect(), &mut Vec::new(), &mut out);
    out
}

/// A peer's identity in slot `slot` (0 or 1): the second slot gets its own
/// filter, handle, proxy PID, listener port, app id and tunnel address.
pub fn peer_identity(spec: PeerSpec, slot: usize, weight: u32, name: &str) -> Identity {
    let mut id = spec.profile.identity(weight);
    let step = u64::try_from(slot).unwrap_or(0);
    id.name = name.to_owned();
    id.filter += 100 * step;
    id.handle += step;
    if let Some(p) = id.proxy.as_mut() {
        p.pid += 100 * step;
        let port = p.v4.port() + 100 * u16::try_from(slot).unwrap_or(0);
        p.v4.set_port(port);
        p.v6.set_port(port);
        if slot > 0 {
            p.app = p.app.replace(r"\program files\", r"\program files\second-");
        }
        p.propagates_records = spec.propagates;
    }
    if let Some((a, b)) = id.tunnel.as_mut() {
        for t in [a, b] {
            let bump = |o: u8| o.wrapping_add(u8::try_from(slot).unwrap_or(0));
            match t {
                SocketAddr::V4(s) => {
                    let [w, x, y, z] = s.ip().octets();
                    s.set_ip([w, x, y, bump(z)].into());
                }
                SocketAddr::V6(s) => {
                    let mut o = s.ip().octets();
                    if let Some(last) = o.last_mut() {
                        *last = bump(*last);
                    }
                    s.set_ip(o.into());
                }
            }
        }
    }
    id
}

/// The rules text for a setup: proxy every TCP/UDP flow that leaves the
/// machine (loopback, link-local and multicast stay local), with the trust
/// and loop settings of the setup.
pub fn rules_text(trust: &[String], known: &[String], loops: LoopSettings) -> String {
    let list = |v: &[String]| v.iter().map(|a| format!("'{a}'")).collect::<Vec<_>>().join(", ");
    let (revisit, on_loop, max_hops) = match loops {
        LoopSettings::Default => ("permit", "permit", 3),
        LoopSettings::Strict => ("block", "block", 2),
    };
    format!(
        r#"version = 1

[proxy]
v4 = "{OUR_V4}"
v6 = "{OUR_V6}"

[coexistence]
revisit = "{revisit}"
trust = [{}]
known_proxies = [{}]
max_hops = {max_hops}
hop_window_ms = 5000
on_loop = "{on_loop}"

[[rule]]
name = "loopback stays local"
action = "bypass"
remote = ["127.0.0.0/8", "::1/128"]

[[rule]]
name = "link-local and multicast stay local"
action = "bypass"
remote = ["169.254.0.0/16", "fe80::/10", "224.0.0.0/4", "255.255.255.255/32", "ff00::/8"]

[[rule]]
name = "everything else through the proxy"
action = "proxy"
"#,
        list(trust),
        list(known)
    )
}

/// The hop window of every explored rule set (ms): no execution may last longer.
const HOP_WINDOW_MS: u64 = 5000;

/// Rule sets built so far, by (trusted apps, known apps, loop settings).
type RulesKey = (Vec<String>, Vec<String>, LoopSettings);

/// Builds and caches rule sets.
#[derive(Debug, Default)]
pub struct RulesCache {
    sets: HashMap<RulesKey, RuleSet>,
}

impl RulesCache {
    /// The rule set for a setup.
    pub fn get(&mut self, setup: &Setup) -> Result<RuleSet, String> {
        let names = setup.vendor_names();
        let mut trust = Vec::new();
        let mut known = Vec::new();
        for (i, p) in setup.peers.iter().enumerate() {
            let weight = 0;
            let id = peer_identity(*p, i, weight, names.get(i + 1).map_or("", String::as_str));
            if let Some(proxy) = id.proxy {
                if p.trusted {
                    trust.push(proxy.app.clone());
                }
                if p.known {
                    known.push(proxy.app);
                }
            }
        }
        let key = (trust, known, setup.loops);
        if let Some(r) = self.sets.get(&key) {
            return Ok(r.clone());
        }
        let text = rules_text(&key.0, &key.1, key.2);
        let rules = crate::rules::parse_str(&text, "explore")?;
        self.sets.insert(key, rules.clone());
        Ok(rules)
    }
}

/// Our arbiter's side of the machine, shared between its callout and the
/// search: the real adapter on the WFP model (the lab's own
/// [`ArbiterCallout`], whose kept steps are the indications a fork gives
/// again), the explorer's summary of its shared tables, and the checks made
/// on its decisions.
#[derive(Debug)]
struct Core {
    ours: ArbiterCallout,
    rules: Rc<RuleSet>,
    /// Proxied hops per destination (C8's counters): one per `proxy` verdict.
    hops: BTreeMap<(Protocol, SocketAddr), u16>,
    /// Learned local proxies (A6).
    learned: BTreeSet<u64>,
    /// Audit records that did not replay, not yet reported.
    audit_failures: usize,
    /// Something the summary does not account for (an eviction, an expiry).
    surprise: Option<String>,
}

impl Core {
    fn new(rules: Rc<RuleSet>) -> Result<Self, String> {
        let config = CoreConfig { own_filter: arbiter_callout::OWN_FILTER, ..CoreConfig::default() };
        let mut arbiter = Arbiter::new(config, CAPACITIES, (*rules).clone())
            .map_err(|_| "out of memory reserving the tables".to_owned())?;
        let v4 = OUR_V4.parse().map_err(|_| "bad listener")?;
        let v6 = OUR_V6.parse().map_err(|_| "bad listener")?;
        arbiter.set_proxy(OWN_PROXY_PID, Some(v4), Some(v6)).map_err(|e| e.to_string())?;
        let ours = ArbiterCallout::new(arbiter, arbiter_wfp_model::Readings::default())?;
        Ok(Self { ours, rules, hops: BTreeMap::new(), learned: BTreeSet::new(), audit_failures: 0, surprise: None })
    }

    /// A core in the same state: a fresh one given the same indications at
    /// the same times (decisions are deterministic: invariant 5). Their
    /// audit records were checked when first made.
    fn fork(&self) -> Result<Self, String> {
        let mut c = Self::new(Rc::clone(&self.rules))?;
        for step in &self.ours.steps {
            c.feed(Step { expect: Expect::default(), ..step.clone() });
        }
        c.audit_failures = 0;
        if c.hops != self.hops || c.learned != self.learned {
            c.surprise.get_or_insert_with(|| "a forked arbiter disagrees with its original".to_owned());
        }
        Ok(c)
    }

    /// Gives the adapter one indication and updates the summary.
    fn feed(&mut self, step: Step) -> Fed {
        let (departures, failures) = (self.ours.departures, self.ours.audit_failures);
        let (layer, protocol, remote) = (step.layer, step.protocol, step.remote);
        let (redirected, target_pid) = (step.redirected, step.target_pid);
        let fed = self.ours.feed(step);
        self.audit_failures += self.ours.audit_failures.saturating_sub(failures);
        if self.ours.departures != departures {
            self.surprise.get_or_insert_with(|| "an arbiter table entry left its table during an execution".to_owned());
        }
        match layer {
            Layer::ConnectRedirect if fed.expect.verdict == Some(Verdict::Proxy) => {
                // "Every proxy verdict counts one hop for its destination."
                *self.hops.entry((protocol, remote)).or_insert(0) += 1;
            }
            // Any redirected flow's local target other than our proxy is a
            // known local proxy (the core learns it whatever row decided).
            Layer::AuthConnect if redirected => {
                if let Some(pid) = target_pid.filter(|&p| p != 0 && p != OWN_PROXY_PID) {
                    self.learned.insert(pid);
                }
            }
            Layer::ConnectRedirect | Layer::AuthConnect => {}
        }
        fed
    }
}

/// Our arbiter behind the engine's callout seam: the same steps and the
/// same adapter path as [`ArbiterCallout`], shared with the search.
#[derive(Debug)]
struct ExploredArbiter(Rc<RefCell<Core>>);

impl Callout for ExploredArbiter {
    fn connect_redirect(&mut self, _me: &Identity, v: &ConnectView<'_>) -> ConnectDecision {
        self.0.borrow_mut().feed(connect_step(v)).connect
    }

    fn auth_connect(&mut self, _me: &Identity, v: &AuthView<'_>) -> AuthDecision {
        self.0.borrow_mut().feed(auth_step(v)).auth
    }
}

/// Where one connection is.
#[derive(Clone, Debug)]
enum Phase {
    /// Waiting for its connect-redirect classification.
    Connect(Connection),
    /// Between connect-redirect and auth-connect.
    Auth(Box<Classifying>),
    /// Ended.
    Done(Outcome),
}

/// One application connection's chain.
#[derive(Clone, Debug)]
struct Chain {
    destination: SocketAddr,
    phase: Phase,
    /// Connections classified so far.
    hops: usize,
    /// `app -> arbiter-proxy -> ...`.
    path: Vec<String>,
}

/// One move of the search: classify a connection's next phase, or end it
/// as a loop because its state recurred.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Move {
    Step(usize),
    Cycle(usize),
}

/// Feeds a connection's abstract form (see the module docs) to a hasher.
fn hash_conn(h: &mut impl Hasher, c: &Connection, with_hop: bool) {
    (if with_hop { c.hop } else { 0 }).hash(h);
    c.pid.hash(h);
    c.app.hash(h);
    c.original_app.hash(h);
    c.protocol.hash(h);
    c.remote.hash(h);
    c.records.len().hash(h);
    for r in &c.records {
        (r.handle, r.context.original_remote).hash(h);
    }
}

fn hash_outcome(h: &mut impl Hasher, o: &Outcome) {
    o.kind().hash(h);
    if !matches!(o, Outcome::Loop(_)) {
        o.detail().hash(h);
    }
}

/// A vendor that looks at nothing and changes nothing: our place with our
/// driver uninstalled, to tell a failure the peers cause among themselves
/// from one our presence causes.
#[derive(Debug)]
struct Passive;

impl Callout for Passive {
    fn connect_redirect(&mut self, _me: &Identity, _v: &ConnectView<'_>) -> ConnectDecision {
        ConnectDecision::new(ConnectAction::Continue, "not installed")
    }

    fn auth_connect(&mut self, _me: &Identity, _v: &AuthView<'_>) -> AuthDecision {
        AuthDecision::new(AuthAction::Continue, "not installed")
    }
}

/// Runs connection `conn` of `setup` alone, move after move, and says how
/// it ends (a recurring state is a loop).
fn run_alone(setup: &Setup, rules: &RuleSet, conn: usize, passive: bool) -> Option<Outcome> {
    let mut alone = setup.clone();
    alone.conns = vec![*setup.conns.get(conn)?];
    let mut w = World::build(&alone, rules, passive).ok()?;
    let mut seen = HashSet::new();
    loop {
        if !seen.insert(w.fingerprint(false)) {
            w.cycle(0);
        }
        match &w.chains.first()?.phase {
            Phase::Done(o) => return Some(o.clone()),
            _ => {
                w.step(0);
            }
        }
    }
}

/// A simulated machine running one setup's connections.
#[derive(Debug)]
struct World {
    engine: Engine,
    chains: Vec<Chain>,
    /// Our arbiter, when it is in our place.
    core: Option<Rc<RefCell<Core>>>,
    rules: Rc<RuleSet>,
    /// Proxies the auth-blockers learned.
    blocker: BTreeSet<u64>,
    has_blocker: bool,
    /// A disagreement between the abstract state and the live core.
    model_error: Option<String>,
}

impl World {
    fn new(setup: &Setup, rules: &RuleSet) -> Result<Self, String> {
        Self::build(setup, rules, false)
    }

    /// With `passive`, our vendor is installed but does nothing and has no
    /// proxy: the machine as it would be without our driver.
    fn build(setup: &Setup, rules: &RuleSet, passive: bool) -> Result<Self, String> {
        let rules = Rc::new(rules.clone());
        let n = setup.vendors();
        let weight_of = |v: usize| {
            let pos = setup.order.iter().position(|&x| x == v).unwrap_or(n);
            u32::try_from(10 * (n - pos)).unwrap_or(0)
        };
        let names = setup.vendor_names();
        let v4 = OUR_V4.parse().map_err(|_| "bad listener")?;
        let v6 = OUR_V6.parse().map_err(|_| "bad listener")?;
        let mut ids = vec![Identity {
            name: setup.ours.name().to_owned(),
            weight: weight_of(0),
            filter: OWN_FILTER,
            handle: OWN_HANDLE,
            proxy: Some(ProxyProcess {
                pid: OWN_PROXY_PID,
                app: OWN_PROXY_APP.to_owned(),
                v4: SocketAddr::V4(v4),
                v6: SocketAddr::V6(v6),
                propagates_records: setup.ours_propagates,
            })
            .filter(|_| !passive),
            tunnel: None,
        }];
        for (i, p) in setup.peers.iter().enumerate() {
            let name = names.get(i + 1).map_or("peer", String::as_str);
            ids.push(peer_identity(*p, i, weight_of(i + 1), name));
        }
        let core = match setup.ours {
            Ours::Arbiter if !passive => Some(Rc::new(RefCell::new(Core::new(Rc::clone(&rules))?))),
            Ours::Arbiter | Ours::SamplerBaseline => None,
        };
        let blocker = BTreeSet::new();
        let mut vendors = Self::vendors(setup, ids, &rules, core.as_ref(), &blocker);
        if passive && let Some(v) = vendors.first_mut() {
            v.callout = Box::new(Passive);
        }
        let mut engine = Engine::new(vendors);
        let mut chains = Vec::new();
        for (i, c) in setup.conns.iter().enumerate() {
            let (pid, app) = APPS.get(i).copied().unwrap_or(APPS[0]);
            let destination = c.destination();
            let conn = engine.app_connection(pid, app, c.protocol, destination);
            chains.push(Chain {
                destination,
                phase: Phase::Connect(conn),
                hops: 0,
                path: vec![format!("app{}", i + 1)],
            });
        }
        Ok(Self {
            engine,
            chains,
            core,
            rules,
            blocker,
            has_blocker: setup.peers.iter().any(|p| p.profile == Profile::AuthBlocker),
            model_error: None,
        })
    }

    /// The vendors with callouts in the given state: ours (the shared core,
    /// or the sampler), then each peer (auth-blockers knowing `blocker`).
    fn vendors(
        setup: &Setup,
        ids: Vec<Identity>,
        rules: &Rc<RuleSet>,
        core: Option<&Rc<RefCell<Core>>>,
        blocker: &BTreeSet<u64>,
    ) -> Vec<Vendor> {
        ids.into_iter()
            .enumerate()
            .map(|(i, id)| {
                let callout: Box<dyn Callout> = match (i.checked_sub(1).and_then(|p| setup.peers.get(p)), core) {
                    (None, Some(c)) => Box::new(ExploredArbiter(Rc::clone(c))),
                    (None, None) => Box::new(Sampler { wants: Wants::Rules(Box::new((**rules).clone())) }),
                    (Some(p), _) if p.profile == Profile::AuthBlocker => {
                        Box::new(AuthBlocker { proxies: blocker.iter().copied().collect(), allowed: Vec::new() })
                    }
                    (Some(p), _) => p.profile.callout(),
                };
                Vendor { id, callout }
            })
            .collect()
    }

    /// The same machine, to try another interleaving from here.
    fn fork(&self, setup: &Setup) -> Result<Self, String> {
        let core = match &self.core {
            Some(c) => Some(Rc::new(RefCell::new(c.borrow().fork()?))),
            None => None,
        };
        let ids = self.engine.vendors.iter().map(|v| v.id.clone()).collect();
        let vendors = Self::vendors(setup, ids, &self.rules, core.as_ref(), &self.blocker);
        Ok(Self {
            engine: self.engine.fork(vendors),
            chains: self.chains.clone(),
            core,
            rules: Rc::clone(&self.rules),
            blocker: self.blocker.clone(),
            has_blocker: self.has_blocker,
            model_error: self.model_error.clone(),
        })
    }

    /// Audit records that did not replay since the last call.
    fn take_audit_failures(&self) -> usize {
        self.core.as_ref().map_or(0, |c| core::mem::take(&mut c.borrow_mut().audit_failures))
    }

    fn enabled(&self) -> Vec<usize> {
        (0..self.chains.len())
            .filter(|&i| self.chains.get(i).is_some_and(|c| !matches!(c.phase, Phase::Done(_))))
            .collect()
    }

    /// A 128-bit fingerprint of the abstract state (two independent 64-bit
    /// hashes: a collision that would merge two different states is beyond
    /// any run's reach).
    fn fingerprint(&self, with_hop: bool) -> u128 {
        let mut lo = DefaultHasher::new();
        let mut hi = DefaultHasher::new();
        0x9e37_79b9_7f4a_7c15u64.hash(&mut hi);
        self.hash_into(&mut lo, with_hop);
        self.hash_into(&mut hi, with_hop);
        (u128::from(hi.finish()) << 64) | u128::from(lo.finish())
    }

    fn hash_into(&self, h: &mut impl Hasher, with_hop: bool) {
        for c in &self.chains {
            match &c.phase {
                Phase::Connect(conn) => {
                    0u8.hash(h);
                    hash_conn(h, conn, with_hop);
                }
                Phase::Auth(p) => {
                    1u8.hash(h);
                    hash_conn(h, &p.conn, with_hop);
                    p.decisions.len().hash(h);
                    for d in &p.decisions {
                        (d.vendor, d.round, &d.action, &d.reason, d.refused).hash(h);
                    }
                    p.final_remote().hash(h);
                    p.local_redirect().map(|(v, pid, ctx)| (v, pid, ctx.original_remote)).hash(h);
                    p.tunnel().map(|(v, ctx)| (v, ctx.original_remote)).hash(h);
                    p.reauth_loop().hash(h);
                }
                Phase::Done(o) => {
                    2u8.hash(h);
                    hash_outcome(h, o);
                }
            }
        }
        if let Some(core) = &self.core {
            let core = core.borrow();
            core.hops.hash(h);
            core.learned.hash(h);
        }
        self.blocker.hash(h);
    }

    fn name(&self, v: usize) -> String {
        self.engine.vendors.get(v).map_or_else(|| "?".to_owned(), |x| x.id.name.clone())
    }

    /// Ends connection `i` as a loop: its state recurred.
    fn cycle(&mut self, i: usize) {
        if let Some(c) = self.chains.get_mut(i) {
            c.path.push("(cycle)".to_owned());
            c.phase = Phase::Done(Outcome::Loop("the chain's state recurs: it would go round forever".to_owned()));
        }
    }

    /// Classifies connection `i`'s next phase. Returns true when that ended it.
    fn step(&mut self, i: usize) -> bool {
        let Some(chain) = self.chains.get_mut(i) else { return false };
        let phase = core::mem::replace(&mut chain.phase, Phase::Done(Outcome::Unexplained(String::new())));
        let destination = chain.destination;
        let mut ended = false;
        match phase {
            Phase::Connect(conn) => {
                if chain.hops >= MAX_CHAIN {
                    chain.path.push("...".to_owned());
                    chain.phase = Phase::Done(Outcome::Loop(format!("chain reached {MAX_CHAIN} connections")));
                    return true;
                }
                let pending = self.engine.connect_phase(&conn);
                if pending.reauth_loop() {
                    // No auth-connect follows: finish it now.
                    ended = self.finish(i, pending, destination);
                } else if let Some(c) = self.chains.get_mut(i) {
                    c.phase = Phase::Auth(Box::new(pending));
                }
            }
            Phase::Auth(pending) => {
                if self.has_blocker
                    && pending.redirected()
                    && let Some((_, pid, _)) = pending.local_redirect()
                {
                    self.blocker.insert(pid);
                }
                ended = self.finish(i, *pending, destination);
            }
            Phase::Done(o) => chain.phase = Phase::Done(o),
        }
        self.check();
        ended
    }

    /// Runs auth-connect and moves the chain on. Returns true when it ended.
    fn finish(&mut self, i: usize, pending: Classifying, destination: SocketAddr) -> bool {
        let trace = self.engine.auth_phase(pending, destination);
        let (next, label, outcome) = match &trace.result {
            HopResult::ToProxy { vendor } => match self.engine.proxy_outbound(&trace, *vendor) {
                Some(c) => (Some(c), format!("{}-proxy", self.name(*vendor)), None),
                None => (
                    None,
                    format!("{}-proxy", self.name(*vendor)),
                    Some(Outcome::Unexplained("the proxy could not read its redirect context".into())),
                ),
            },
            HopResult::Delivered { via_tunnel } => {
                let label = match via_tunnel {
                    Some((v, addr)) => format!("{}@{addr} -> {destination}", self.name(*v)),
                    None => destination.to_string(),
                };
                (None, label, Some(Outcome::Delivered))
            }
            HopResult::Blocked { vendor, layer, reason } => {
                let by = self.name(*vendor);
                (None, format!("blocked by {by}"), Some(Outcome::Blocked { by, layer: *layer, reason: reason.clone() }))
            }
            HopResult::ReauthLoop => {
                (None, "...".to_owned(), Some(Outcome::Loop("reauthorization did not settle".to_owned())))
            }
            HopResult::Unexplained(why) => (None, "?".to_owned(), Some(Outcome::Unexplained(why.clone()))),
        };
        let Some(chain) = self.chains.get_mut(i) else { return false };
        chain.hops += 1;
        chain.path.push(label);
        match (next, outcome) {
            (Some(c), _) => {
                chain.phase = Phase::Connect(c);
                false
            }
            (None, Some(o)) => {
                chain.phase = Phase::Done(o);
                true
            }
            (None, None) => {
                chain.phase = Phase::Done(Outcome::Unexplained("the chain stopped without an outcome".to_owned()));
                true
            }
        }
    }

    /// Checks the explorer's summary of the arbiter's tables against the
    /// live core, and that the execution stays inside every time window.
    fn check(&mut self) {
        let now = self.engine.now_ms;
        if now >= HOP_WINDOW_MS {
            self.model_error.get_or_insert_with(|| format!("an execution outlasted the hop window ({now} ms)"));
        }
        let Some(core) = &self.core else { return };
        let core = core.borrow();
        let at = Instant::from_millis(now);
        let arbiter = core.ours.arbiter();
        let [_, destinations, known] = arbiter.occupancy();
        let agrees = usize::try_from(destinations).ok() == Some(core.hops.len())
            && usize::try_from(known).ok() == Some(core.learned.len())
            && core.learned.iter().all(|&p| arbiter.is_learned_proxy(p, at));
        if let Some(s) = &core.surprise {
            self.model_error.get_or_insert_with(|| s.clone());
        } else if !agrees {
            self.model_error.get_or_insert_with(|| {
                format!(
                    "the arbiter's tables disagree with the explorer's summary: occupancy {:?}, hops {:?}, learned {:?}",
                    arbiter.occupancy(),
                    core.hops,
                    core.learned
                )
            });
        }
    }
}

/// Counts over a set of explored setups.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Tally {
    /// Setups explored.
    pub configurations: u64,
    /// Distinct abstract states visited.
    pub states: u64,
    /// Moves tried (edges of the state graph, including into visited states).
    pub transitions: u64,
    /// Machines forked to try another move (each fork gives a fresh core
    /// every indication of the path again: the core's tables cannot be cloned).
    pub forks: u64,
    /// Complete executions (interleavings) the explored states stand for.
    pub executions: u128,
    /// Distinct end states (every connection ended).
    pub end_states: u64,
    /// Connection outcomes over the end states.
    pub delivered: u64,
    /// Blocked connections over the end states.
    pub blocked: u64,
    /// Looping connections over the end states.
    pub loops: u64,
    /// Connections ended unexplained over the end states.
    pub unexplained: u64,
    /// Of `loops`, those the peers cause among themselves (the connection
    /// loops alone with our driver uninstalled too).
    pub peer_loops: u64,
    /// Of `unexplained`, those the peers cause among themselves.
    pub peer_unexplained: u64,
    /// Setups with a loop or unexplained end that our presence may have
    /// caused (for the baseline: any loop or unexplained end).
    pub failing_configurations: u64,
    /// Setups whose only failures the peers cause among themselves (the
    /// same connection fails alone with our driver uninstalled).
    pub peer_only_configurations: u64,
    /// End states with at least one loop or unexplained end.
    pub failing_end_states: u64,
    /// Disagreements between the abstract state and the live core, or setups
    /// that could not be built.
    pub model_errors: u64,
    /// Audit records that did not replay to their decision.
    pub audit_failures: u64,
}

impl Tally {
    fn merge(&mut self, o: &Self) {
        self.configurations += o.configurations;
        self.states += o.states;
        self.transitions += o.transitions;
        self.forks += o.forks;
        self.executions = self.executions.saturating_add(o.executions);
        self.end_states += o.end_states;
        self.delivered += o.delivered;
        self.blocked += o.blocked;
        self.loops += o.loops;
        self.unexplained += o.unexplained;
        self.peer_loops += o.peer_loops;
        self.peer_unexplained += o.peer_unexplained;
        self.failing_configurations += o.failing_configurations;
        self.peer_only_configurations += o.peer_only_configurations;
        self.failing_end_states += o.failing_end_states;
        self.model_errors += o.model_errors;
        self.audit_failures += o.audit_failures;
    }

    /// Loops plus unexplained ends.
    pub const fn failures(&self) -> u64 {
        self.loops + self.unexplained
    }
}

/// A loop or unexplained end, with the interleaving that leads to it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Counterexample {
    /// The setup.
    pub setup: Setup,
    /// Which connection failed (0-based).
    pub connection: usize,
    /// How it ended.
    pub outcome: Outcome,
    /// Its chain: `app1 -> baseline-proxy -> sampler-proxy -> ... `.
    pub chain: Vec<String>,
    /// Connections classified in the failing chain.
    pub hops: usize,
    /// The interleaving up to the failure: `c1 connect`, `c2 auth`, ...
    pub moves: Vec<String>,
    /// Moves of the other connections in it.
    pub other_moves: usize,
}

impl Counterexample {
    /// Shorter chains first, then fewer vendors, fewer moves.
    fn rank(&self) -> (usize, usize, usize, usize, String) {
        (self.hops, self.setup.vendors(), self.other_moves, self.moves.len(), self.setup.to_string())
    }

    /// A one-line description.
    pub fn describe(&self) -> String {
        let interleaved = if self.other_moves == 0 {
            "alone".to_owned()
        } else {
            format!("after {} moves of other connections", self.other_moves)
        };
        format!(
            "{} [{}]: connection {} ({}) {}: {} ({})",
            self.outcome.kind(),
            self.setup,
            self.connection + 1,
            interleaved,
            self.outcome.detail(),
            self.chain.join(" -> "),
            self.hops
        )
    }

    /// The failure's shape, to group counterexamples that differ only in
    /// dimensions that did not matter.
    pub fn signature(&self) -> String {
        let mut vendors: Vec<String> = self.setup.order.iter().map(|&v| self.setup.vendor_label(v)).collect();
        vendors.dedup();
        format!("{}|{}|{}", self.outcome.kind(), vendors.join(">"), self.chain.join(">"))
    }
}

/// The result of exploring one setup.
#[derive(Clone, Debug, Default)]
pub struct SetupResult {
    /// Counts.
    pub tally: Tally,
    /// The shortest failure found that our presence may have caused, if any.
    pub counterexample: Option<Counterexample>,
    /// The shortest failure the peers cause among themselves: the same
    /// connection, alone on the machine with our driver uninstalled, fails too.
    pub peer_only: Option<Counterexample>,
    /// The first model error.
    pub model_error: Option<String>,
}

/// The search over one setup.
struct Search<'a> {
    setup: &'a Setup,
    rules: &'a RuleSet,
    /// Per connection: does it fail alone, with our driver uninstalled?
    fails_without_us: HashMap<usize, bool>,
    /// Executions represented below each finished state, by fingerprint.
    done: HashMap<u128, u128>,
    /// Hop-less fingerprints of the states on the current path.
    on_path: HashMap<u128, usize>,
    moves: Vec<Move>,
    result: SetupResult,
}

impl Search<'_> {
    fn failure(&mut self, w: &World, i: usize) {
        let Some(chain) = w.chains.get(i) else { return };
        let Phase::Done(outcome) = &chain.phase else { return };
        if outcome.is_explained() {
            return;
        }
        let moves: Vec<String> = self
            .moves
            .iter()
            .map(|m| match *m {
                Move::Step(c) => format!("c{}", c + 1),
                Move::Cycle(c) => format!("c{} cycles", c + 1),
            })
            .collect();
        let other_moves = self.moves.iter().filter(|m| !matches!(m, Move::Step(c) | Move::Cycle(c) if *c == i)).count();
        let cx = Counterexample {
            setup: self.setup.clone(),
            connection: i,
            outcome: outcome.clone(),
            chain: chain.path.clone(),
            hops: chain.hops,
            moves,
            other_moves,
        };
        // Only our arbiter's failures need telling apart: the baseline's are
        // all shown, as what the arbiter fixes.
        let peer_only = self.peer_only(i);
        let slot = if peer_only { &mut self.result.peer_only } else { &mut self.result.counterexample };
        if slot.as_ref().is_none_or(|best| cx.rank() < best.rank()) {
            *slot = Some(cx);
        }
    }

    /// With our arbiter in place: does connection `i` fail alone with our
    /// driver uninstalled (so the peers cause it among themselves)?
    fn peer_only(&mut self, i: usize) -> bool {
        let (setup, rules) = (self.setup, self.rules);
        setup.ours == Ours::Arbiter
            && *self
                .fails_without_us
                .entry(i)
                .or_insert_with(|| run_alone(setup, rules, i, true).is_some_and(|o| !o.is_explained()))
    }

    /// Explores from the live machine `w` (at the end of `self.moves`);
    /// returns how many complete executions lie below.
    fn visit(&mut self, mut w: World) -> u128 {
        if let Some(e) = w.model_error.take() {
            self.result.model_error.get_or_insert(e);
            return 0;
        }
        let key = w.fingerprint(true);
        if let Some(&n) = self.done.get(&key) {
            return n;
        }
        self.result.tally.states += 1;
        let enabled = w.enabled();
        if enabled.is_empty() {
            self.result.tally.end_states += 1;
            let mut failing = false;
            for (i, c) in w.chains.iter().enumerate() {
                if let Phase::Done(o) = &c.phase {
                    let by_peers = !o.is_explained() && self.peer_only(i);
                    let t = &mut self.result.tally;
                    match o {
                        Outcome::Delivered => t.delivered += 1,
                        Outcome::Blocked { .. } => t.blocked += 1,
                        Outcome::Loop(_) => t.loops += 1,
                        Outcome::Unexplained(_) => t.unexplained += 1,
                    }
                    t.peer_loops += u64::from(by_peers && matches!(o, Outcome::Loop(_)));
                    t.peer_unexplained += u64::from(by_peers && matches!(o, Outcome::Unexplained(_)));
                    failing |= !o.is_explained();
                }
            }
            self.result.tally.failing_end_states += u64::from(failing);
            self.done.insert(key, 1);
            return 1;
        }
        let hopless = w.fingerprint(false);
        *self.on_path.entry(hopless).or_insert(0) += 1;
        let mut total: u128 = 0;
        let mut live = Some(w);
        for (k, &i) in enabled.iter().enumerate() {
            self.result.tally.transitions += 1;
            // Every move but the last runs on a fork; the last takes the machine itself.
            let forked = match &live {
                Some(w) if k + 1 < enabled.len() => {
                    self.result.tally.forks += 1;
                    Some(w.fork(self.setup))
                }
                _ => None,
            };
            let mut next = match forked {
                Some(Ok(w)) => w,
                Some(Err(e)) => {
                    self.result.model_error.get_or_insert(e);
                    break;
                }
                None => match live.take() {
                    Some(w) => w,
                    None => break,
                },
            };
            let ended = next.step(i);
            self.moves.push(Move::Step(i));
            self.result.tally.audit_failures += u64::try_from(next.take_audit_failures()).unwrap_or(u64::MAX);
            if ended {
                self.failure(&next, i);
            } else if self.on_path.contains_key(&next.fingerprint(false)) {
                next.cycle(i);
                self.moves.push(Move::Cycle(i));
                self.failure(&next, i);
            }
            total = total.saturating_add(self.visit(next));
            if self.moves.last().is_some_and(|m| matches!(m, Move::Cycle(_))) {
                self.moves.pop();
            }
            self.moves.pop();
        }
        if let Some(n) = self.on_path.get_mut(&hopless) {
            *n -= 1;
            if *n == 0 {
                self.on_path.remove(&hopless);
            }
        }
        self.done.insert(key, total);
        total
    }
}

/// Explores every interleaving of one setup.
pub fn explore_setup(setup: &Setup, rules: &RuleSet) -> SetupResult {
    let mut search = Search {
        setup,
        rules,
        fails_without_us: HashMap::new(),
        done: HashMap::new(),
        on_path: HashMap::new(),
        moves: Vec::new(),
        result: SetupResult::default(),
    };
    search.result.tally.configurations = 1;
    match World::new(setup, rules) {
        Ok(w) => {
            let n = search.visit(w);
            search.result.tally.executions = n;
        }
        Err(e) => search.result.model_error = Some(e),
    }
    let mut r = search.result;
    r.tally.model_errors = u64::from(r.model_error.is_some());
    r.tally.failing_configurations = u64::from(r.counterexample.is_some());
    r.tally.peer_only_configurations = u64::from(r.peer_only.is_some());
    r
}

/// Everything found for one occupant of our place.
#[derive(Clone, Debug, Default)]
pub struct Findings {
    /// Counts.
    pub tally: Tally,
    /// The shortest counterexample of each shape, shortest first.
    pub counterexamples: Vec<Counterexample>,
    /// How many counterexamples were found in all (one per failing setup).
    pub counterexamples_found: u64,
    /// The shortest failure of each shape that the peers cause among
    /// themselves (arbiter only).
    pub peer_only: Vec<Counterexample>,
    /// Model errors (setup and message), first few.
    pub model_errors: Vec<(String, String)>,
}

impl Findings {
    fn add(&mut self, setup: &Setup, r: SetupResult) {
        self.tally.merge(&r.tally);
        if let Some(e) = r.model_error
            && self.model_errors.len() < 16
        {
            self.model_errors.push((setup.to_string(), e));
        }
        if let Some(cx) = r.counterexample {
            self.counterexamples_found += 1;
            self.counterexamples.push(cx);
        }
        if let Some(cx) = r.peer_only {
            self.peer_only.push(cx);
        }
    }

    /// Keeps the shortest counterexample of each signature.
    fn finish(&mut self) {
        for list in [&mut self.counterexamples, &mut self.peer_only] {
            list.sort_by_key(Counterexample::rank);
            let mut seen = HashSet::new();
            list.retain(|c| seen.insert(c.signature()));
        }
    }
}

/// The whole exploration.
#[derive(Clone, Debug, Default)]
pub struct Exploration {
    /// With our arbiter in its place.
    pub arbiter: Findings,
    /// With the sampler logic in our place.
    pub baseline: Findings,
    /// Wall time, seconds.
    pub seconds: f64,
}

impl Exploration {
    /// Setups where our arbiter's presence may have caused a loop or an
    /// unexplained end, plus model errors and audit records that did not replay.
    pub const fn arbiter_failures(&self) -> u64 {
        self.arbiter.tally.failing_configurations + self.arbiter.tally.model_errors + self.arbiter.tally.audit_failures
    }
}

/// Explores `setups` on `threads` workers; `progress` is called after each setup.
pub fn explore_all(setups: &[Setup], threads: usize, progress: &(dyn Fn(usize) + Sync)) -> Findings {
    let next = AtomicUsize::new(0);
    let results: Mutex<Vec<(usize, SetupResult)>> = Mutex::new(Vec::new());
    std::thread::scope(|s| {
        for _ in 0..threads.max(1) {
            s.spawn(|| {
                let mut cache = RulesCache::default();
                let mut local = Vec::new();
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    let Some(setup) = setups.get(i) else { break };
                    let r = match cache.get(setup) {
                        Ok(rules) => explore_setup(setup, &rules),
                        Err(e) => SetupResult {
                            tally: Tally { configurations: 1, model_errors: 1, ..Tally::default() },
                            counterexample: None,
                            peer_only: None,
                            model_error: Some(e),
                        },
                    };
                    local.push((i, r));
                    progress(i);
                }
                if let Ok(mut all) = results.lock() {
                    all.append(&mut local);
                }
            });
        }
    });
    let mut all = results.into_inner().unwrap_or_default();
    all.sort_by_key(|(i, _)| *i);
    let mut f = Findings::default();
    for (i, r) in all {
        if let Some(setup) = setups.get(i) {
            f.add(setup, r);
        }
    }
    f.finish();
    f
}

/// Runs the exploration within `bounds`.
pub fn run(bounds: &Bounds, progress: &(dyn Fn(Ours, usize, usize) + Sync)) -> Exploration {
    let start = std::time::Instant::now();
    let mut out = Exploration::default();
    let ours_list: &[Ours] = if bounds.baseline { &[Ours::Arbiter, Ours::SamplerBaseline] } else { &[Ours::Arbiter] };
    for &ours in ours_list {
        let setups = setups(bounds, ours);
        let total = setups.len();
        let f = explore_all(&setups, bounds.threads, &|i| progress(ours, i, total));
        match ours {
            Ours::Arbiter => out.arbiter = f,
            Ours::SamplerBaseline => out.baseline = f,
        }
    }
    out.seconds = start.elapsed().as_secs_f64();
    out
}
