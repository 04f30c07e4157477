//! The start-up timeline (`arbiter lab --boot`): flows arriving in every
//! phase from boot to unload, under `[boot] mode = "open"` and `"block"`.
//!
//! What enforces in each phase follows boottime notes from Microsoft's pages
//! (see `arbiter_callout::boot`): boot-time filters from tcpip.sys start
//! until BFE starts, persistent filters from then on; our callouts decide
//! only once the driver has added its filters, which needs the BFE; the
//! driver's override lifts the boot set once our proxy has registered and
//! is deleted when the proxy goes away or the driver unloads.
//!
//! In every phase each flow meets, in order: the boot sublayer (the filters
//! of [`arbiter_callout::boot::boot_filters`] in force, with the override when
//! lifted; a block there is final), then our connect-redirect decision from
//! the rules (when our filters are in place): proxied to our listener if a
//! proxy is registered, left alone otherwise (`proxy-unavailable`), or
//! blocked by a block rule.

use core::fmt;

use arbiter::boot::{BootConfig, BootMode};
use arbiter::wide::WideString;
use arbiter::{Action, Flow, Policy, Protocol, RuleSet};
use arbiter_callout::boot::{BootFilter, BootGuard, GuardAction, boot_filters, decide, override_filter};
use arbiter_callout::filters::FilterLayer;
use wfp_ffi::{FWP_ACTION_BLOCK, FWPM_FILTER_FLAG_BOOTTIME, FWPM_FILTER_FLAG_PERSISTENT};

/// A phase of the machine's life.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Phase {
    /// tcpip.sys runs, the BFE does not.
    BfeDown,
    /// Our driver loaded and registered its callouts; no BFE, so no filters.
    DriverLoaded,
    /// The BFE started: boot-time filters gone, persistent ones in force.
    BfeUp,
    /// The driver added its filters; our proxy has not registered.
    FiltersAdded,
    /// Our proxy registered: everything is ready.
    ProxyRegistered,
    /// Our proxy died.
    ProxyCrashed,
    /// Our proxy started again and registered.
    ProxyRestarted,
    /// The driver unloaded (its filters and dynamic session gone).
    DriverUnloaded,
}

impl Phase {
    /// In order.
    pub const ALL: [Self; 8] = [
        Self::BfeDown,
        Self::DriverLoaded,
        Self::BfeUp,
        Self::FiltersAdded,
        Self::ProxyRegistered,
        Self::ProxyCrashed,
        Self::ProxyRestarted,
        Self::DriverUnloaded,
    ];

    /// Its name.
    pub const fn name(self) -> &'static str {
        match self {
            Self::BfeDown => "bfe-down",
            Self::DriverLoaded => "driver-loaded",
            Self::BfeUp => "bfe-up",
            Self::FiltersAdded => "filters-added",
            Self::ProxyRegistered => "proxy-registered",
            Self::ProxyCrashed => "proxy-crashed",
            Self::ProxyRestarted => "proxy-restarted",
            Self::DriverUnloaded => "driver-unloaded",
        }
    }

    /// Is everything ready (driver, BFE, filters, proxy)?
    pub const fn ready(self) -> bool {
        matches!(self, Self::ProxyRegistered | Self::ProxyRestarted)
    }

    const fn bfe_up(self) -> bool {
        !matches!(self, Self::BfeDown | Self::DriverLoaded)
    }

    const fn our_filters(self) -> bool {
        matches!(self, Self::FiltersAdded | Self::ProxyRegistered | Self::ProxyCrashed | Self::ProxyRestarted)
    }
}

/// A flow of the timeline.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BootFlow {
    /// Short name.
    pub name: &'static str,
    /// Protocol.
    pub protocol: Protocol,
    /// Remote address.
    pub remote: &'static str,
}

/// The flows sent in every phase.
pub const FLOWS: [BootFlow; 6] = [
    BootFlow { name: "web", protocol: Protocol::TCP, remote: "93.184.216.34:443" },
    BootFlow { name: "telnet", protocol: Protocol::TCP, remote: "198.51.100.7:23" },
    BootFlow { name: "ssh", protocol: Protocol::TCP, remote: "198.51.100.7:22" },
    BootFlow { name: "dns", protocol: Protocol::UDP, remote: "192.0.2.53:53" },
    BootFlow { name: "dhcp", protocol: Protocol::UDP, remote: "255.255.255.255:67" },
    BootFlow { name: "loopback", protocol: Protocol::TCP, remote: "127.0.0.1:8080" },
];

/// The rules the timeline runs: the default rule set plus a block rule, so
/// flows our rules proxy, block and leave alone all occur.
pub const BOOT_RULES: &str = concat!(
    include_str!("../../rules/default.toml"),
    "\n[[rule]]\nname = \"no telnet\"\naction = \"block\"\nprotocol = \"tcp\"\nremote_ports = [\"23\"]\n"
);

/// What happened to a flow.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Fate {
    /// Sent to our proxy.
    Proxied,
    /// Blocked by one of our rules.
    BlockedByRule,
    /// Blocked by the boot set.
    BlockedByGuard,
    /// Let out directly.
    Direct,
}

impl Fate {
    /// Its name.
    pub const fn name(self) -> &'static str {
        match self {
            Self::Proxied => "proxied",
            Self::BlockedByRule => "blocked(rule)",
            Self::BlockedByGuard => "blocked(boot)",
            Self::Direct => "direct",
        }
    }
}

/// One flow in one phase.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Cell {
    /// The flow.
    pub flow: BootFlow,
    /// What our rules would do with it once ready (`None`: no rule).
    pub wanted: Option<Action>,
    /// What happened.
    pub fate: Fate,
}

impl Cell {
    /// A flow our rules would proxy or block went out directly.
    pub fn escaped(&self) -> bool {
        self.fate == Fate::Direct && matches!(self.wanted, Some(Action::Proxy | Action::Block))
    }
}

/// One mode's timeline.
#[derive(Clone, Debug)]
pub struct Timeline {
    /// The mode.
    pub mode: BootMode,
    /// Per phase, per flow.
    pub phases: Vec<(Phase, Vec<Cell>)>,
    /// The boot-guard audit records, as `(phase, change)`.
    pub audited: Vec<(Phase, &'static str)>,
}

impl Timeline {
    /// Flows that escaped: `(phase, flow)`.
    pub fn escapes(&self) -> Vec<(Phase, &'static str)> {
        self.cells().filter(|(_, c)| c.escaped()).map(|(p, c)| (p, c.flow.name)).collect()
    }

    /// Flows blocked by the boot set while everything was ready.
    pub fn blocked_when_ready(&self) -> Vec<(Phase, &'static str)> {
        self.cells()
            .filter(|(p, c)| p.ready() && c.fate == Fate::BlockedByGuard)
            .map(|(p, c)| (p, c.flow.name))
            .collect()
    }

    fn cells(&self) -> impl Iterator<Item = (Phase, &Cell)> {
        self.phases.iter().flat_map(|(p, cells)| cells.iter().map(move |c| (*p, c)))
    }
}

fn wanted(rules: &RuleSet, f: &BootFlow) -> Option<Action> {
    let remote = f.remote.parse().ok()?;
    let app = WideString::new(r"\device\harddiskvolume3\apps\browser.exe");
    let local = "10.0.0.5:50000".parse().ok()?;
    let flow = Flow {
        protocol: f.protocol,
        local,
        remote,
        endpoint: 1,
        pid: 4242,
        app: app.app_id(),
        original_app: app.app_id(),
        package: None,
    };
    rules.first_match(&flow).map(|h| h.action)
}

/// Runs the timeline for `rules` with its `[boot]` mode replaced by `mode`.
pub fn timeline(rules: &RuleSet, mode: BootMode) -> Timeline {
    let config = BootConfig { mode, ..rules.boot.clone() };
    let set: Vec<BootFilter> = boot_filters(&config).filter(|f| !f.layer.is_v6()).collect();
    let overrides = [override_filter(FilterLayer::AuthConnectV4)];
    let mut guard = BootGuard::new(mode);
    let mut audited = Vec::new();
    let mut phases = Vec::new();
    for phase in Phase::ALL {
        // The driver's guard reacts to what changed.
        let (action, record) = match phase {
            Phase::ProxyRegistered | Phase::ProxyRestarted => guard.ready(5151),
            Phase::ProxyCrashed => guard.proxy_lost(5151),
            Phase::DriverUnloaded => (GuardAction::DeleteOverride, guard.unloading()),
            _ => (GuardAction::Nothing, None),
        };
        let _ = action;
        if let Some(r) = record {
            audited.push((phase, r.change.name()));
        }
        let flag = if phase.bfe_up() { FWPM_FILTER_FLAG_PERSISTENT } else { FWPM_FILTER_FLAG_BOOTTIME };
        let mut in_force: Vec<&BootFilter> = set.iter().filter(|f| f.flags == flag).collect();
        if guard.lifted() && mode == BootMode::Block {
            in_force.extend(overrides.iter());
        }
        let proxy = phase.ready();
        let cells = FLOWS
            .iter()
            .map(|f| {
                let wanted = wanted(rules, f);
                let remote: core::net::SocketAddr =
                    f.remote.parse().unwrap_or_else(|_| core::net::SocketAddr::from(([0, 0, 0, 0], 0)));
                let boot = decide(in_force.iter().copied(), f.protocol, remote.port(), remote.ip().is_loopback());
                let fate = if boot == Some(FWP_ACTION_BLOCK) {
                    Fate::BlockedByGuard
                } else if !phase.our_filters() {
                    Fate::Direct
                } else {
                    match wanted {
                        Some(Action::Block) => Fate::BlockedByRule,
                        Some(Action::Proxy) if proxy => Fate::Proxied,
                        _ => Fate::Direct,
                    }
                };
                Cell { flow: *f, wanted, fate }
            })
            .collect();
        phases.push((phase, cells));
    }
    Timeline { mode, phases, audited }
}

impl fmt::Display for Timeline {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:<9} {:<17}", "MODE", "PHASE")?;
        for flow in FLOWS {
            write!(f, " {:<14}", flow.name)?;
        }
        writeln!(f, " AUDITED")?;
        for (phase, cells) in &self.phases {
            write!(f, "{:<9} {:<17}", self.mode.name(), phase.name())?;
            for c in cells {
                let mark = if c.escaped() { "!" } else { "" };
                write!(f, " {:<14}", format!("{}{mark}", c.fate.name()))?;
            }
            let audited: Vec<&str> = self.audited.iter().filter(|(p, _)| p == phase).map(|(_, c)| *c).collect();
            writeln!(
                f,
                " {}",
                if audited.is_empty() { "-".to_owned() } else { format!("boot-guard {}", audited.join(",")) }
            )?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rules() -> RuleSet {
        crate::rules::parse_str(BOOT_RULES, "boot").unwrap()
    }

    #[test]
    fn block_mode_lets_nothing_escape_in_any_phase() {
        let t = timeline(&rules(), BootMode::Block);
        assert_eq!(t.escapes(), vec![], "{t}");
        // Loopback and the allow-list stay open throughout.
        for (_, cells) in &t.phases {
            for c in cells.iter().filter(|c| matches!(c.flow.name, "loopback" | "dns" | "dhcp")) {
                assert_ne!(c.fate, Fate::BlockedByGuard, "{t}");
            }
        }
    }

    #[test]
    fn no_mode_blocks_anything_once_ready() {
        for mode in [BootMode::Open, BootMode::Block] {
            let t = timeline(&rules(), mode);
            assert_eq!(t.blocked_when_ready(), vec![], "{t}");
            for (p, cells) in t.phases.iter().filter(|(p, _)| p.ready()) {
                for c in cells {
                    let want = match c.wanted {
                        Some(Action::Proxy) => Fate::Proxied,
                        Some(Action::Block) => Fate::BlockedByRule,
                        _ => Fate::Direct,
                    };
                    assert_eq!(c.fate, want, "{mode:?} {p:?} {}", c.flow.name);
                }
            }
        }
    }

    #[test]
    fn open_mode_is_todays_behaviour_and_escapes_before_ready() {
        let t = timeline(&rules(), BootMode::Open);
        let e = t.escapes();
        assert!(e.contains(&(Phase::BfeDown, "web")) && e.contains(&(Phase::ProxyCrashed, "web")), "{t}");
        assert!(!e.iter().any(|(p, _)| p.ready()));
    }

    #[test]
    fn proxy_loss_and_return_are_audited() {
        let t = timeline(&rules(), BootMode::Block);
        assert_eq!(
            t.audited,
            vec![
                (Phase::ProxyRegistered, "ready"),
                (Phase::ProxyCrashed, "proxy-lost"),
                (Phase::ProxyRestarted, "ready"),
                (Phase::DriverUnloaded, "unloading"),
            ]
        );
    }
}
