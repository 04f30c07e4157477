//! What the explorer explores: peers, connection sets, loop settings, the
//! setups (vendors, weight orders, trust, record propagation) within
//! [`Bounds`], and the rule set each setup runs with.

use core::fmt;
use core::hash::Hash;
use core::net::SocketAddr;
use std::collections::HashMap;

use arbiter::{Protocol, RuleSet};

use crate::engine::Identity;
use crate::profiles::Profile;
use crate::scenario::{APP, APP_PID, DEST_V4, DEST_V6, Ours};

/// Our proxy's IPv4 listener in every explored rule set.
pub(super) const OUR_V4: &str = "127.0.0.1:34010";
/// Our proxy's IPv6 listener.
pub(super) const OUR_V6: &str = "[::1]:34010";
/// The second destination (IPv4).
pub(super) const DEST2_V4: &str = "203.0.113.7:443";
/// The second destination (IPv6).
pub(super) const DEST2_V6: &str = "[2001:db8:beef::7]:443";
/// The applications that open the concurrent connections: (PID, app id).
pub(super) const APPS: [(u64, &str); 3] = [
    (APP_PID, APP),
    (4343, r"\device\harddiskvolume3\apps\mail.exe"),
    (4444, r"\device\harddiskvolume3\apps\updater.exe"),
];

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

    pub(super) fn vendor_label(&self, v: usize) -> String {
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
pub(super) const HOP_WINDOW_MS: u64 = 5000;

/// Rule sets built so far, by (trusted apps, known apps, loop settings).
pub(super) type RulesKey = (Vec<String>, Vec<String>, LoopSettings);

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
