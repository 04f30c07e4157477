//! The start-up timeline (`arbiter lab --boot`): flows arriving in every
//! phase from boot to unload, under `[boot] mode = "open"` and `"block"`,
//! run on the WFP model with the real code.
//!
//! - The service's `install-boot` runs the real install plan
//!   ([`arbiter_callout::boot::install_plan`] through
//!   [`arbiter_callout::boot::run_plan`]) on the model's management API, then
//!   the machine reboots ([`Wfp::reboot`]).
//! - The driver is the real [`Lifecycle`]: started and its callouts
//!   registered when it loads, its filters added when the BFE runs, its
//!   boot guard ([`Lifecycle::sync_guard`]) run after every change (as the
//!   driver does after each control request and handle cleanup), stopped at
//!   unload. The guard's audit records are the timeline's `AUDITED` column.
//! - Every flow is classified by the model's arbitration
//!   ([`Wfp::classify_values`]): at ALE_CONNECT_REDIRECT (our callout, once
//!   our filters are in, sends flows our rules proxy to our proxy's loopback
//!   listener when a proxy is registered), then at ALE_AUTH_CONNECT with the
//!   flow's destination after any redirect: the boot set (boot-time filters
//!   until the BFE starts, persistent ones after; the driver's override when
//!   lifted) and our callout (which blocks what our rules block).
//!
//! The model's reading of WFP (which filters are in force when, arbitration
//! across sublayers, dynamic sessions) is documented in
//! `arbiter_wfp_model::mgmt`, with the Microsoft pages it is taken from.

mod driver;

use core::cell::RefCell;
use core::fmt;
use core::net::SocketAddr;
use std::rc::Rc;

use arbiter::boot::{BootConfig, BootMode};
use arbiter::wide::WideString;
use arbiter::{Action, Flow, Policy, Protocol, RuleSet};
use arbiter_callout::boot::{install_plan, run_plan};
use arbiter_callout::filters::FilterLayer;
use arbiter_callout::shell::Lifecycle;
use arbiter_wfp_model::arbitration::Outcome;
use arbiter_wfp_model::mgmt::Values;
use arbiter_wfp_model::{Readings, Wfp, bootset};
use driver::{Driver, Probe};
use wfp_ffi::{FWP_CONDITION_FLAG_IS_LOOPBACK, FWPM_SERVICE_RUNNING};

/// Our proxy's pid in the timeline.
const PROXY_PID: u64 = 5151;
/// Our proxy's loopback listener port (where redirected flows go).
const PROXY_PORT: u16 = 5151;

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

/// The timeline could not run: a step of the real code failed on the model.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TimelineError {
    /// The step.
    pub step: &'static str,
    /// Its status.
    pub status: i32,
}

impl fmt::Display for TimelineError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "boot timeline: {} failed on the WFP model with status {:#010x}", self.step, self.status)
    }
}

impl std::error::Error for TimelineError {}

/// The service's `install-boot`: one session, the install plan in one transaction.
fn install(wfp: &mut Wfp, config: &BootConfig) -> Result<(), TimelineError> {
    let failed = |step, status| TimelineError { step, status };
    let engine = wfp.engine_open().map_err(|s| failed("FwpmEngineOpen0 (install-boot)", s))?;
    let r = run_plan(&mut bootset::Session { wfp, engine }, install_plan(config));
    wfp.engine_close(engine);
    r.map(|_| ()).map_err(|e| failed("the install plan", e.status))
}

/// One flow through the model: connect redirect, then auth connect.
fn classify(wfp: &mut Wfp, probe: &RefCell<Probe>, proxy: bool, f: &BootFlow, wanted: Option<Action>) -> Fate {
    let remote: SocketAddr = f.remote.parse().unwrap_or_else(|_| SocketAddr::from(([0, 0, 0, 0], 0)));
    let loopback = |yes: bool| if yes { FWP_CONDITION_FLAG_IS_LOOPBACK } else { 0 };
    let values =
        Values { flags: loopback(remote.ip().is_loopback()), protocol: f.protocol.0, remote_port: remote.port() };
    *probe.borrow_mut() = Probe { block: wanted == Some(Action::Block), ..Probe::default() };
    if wfp.classify_values(FilterLayer::ConnectRedirectV4, &values) == Outcome::Block {
        return if probe.borrow().blocked { Fate::BlockedByRule } else { Fate::BlockedByGuard };
    }
    let redirected = probe.borrow().reached_redirect && proxy && wanted == Some(Action::Proxy);
    let auth = if redirected {
        Values { flags: loopback(true), protocol: f.protocol.0, remote_port: PROXY_PORT }
    } else {
        values
    };
    match wfp.classify_values(FilterLayer::AuthConnectV4, &auth) {
        Outcome::Block if probe.borrow().blocked => Fate::BlockedByRule,
        Outcome::Block => Fate::BlockedByGuard,
        Outcome::Permit | Outcome::Continue if redirected => Fate::Proxied,
        Outcome::Permit | Outcome::Continue => Fate::Direct,
    }
}

fn cells(wfp: &mut Wfp, probe: &RefCell<Probe>, proxy: bool, wanted: &[Option<Action>]) -> Vec<Cell> {
    FLOWS
        .iter()
        .zip(wanted)
        .map(|(f, &w)| Cell { flow: *f, wanted: w, fate: classify(wfp, probe, proxy, f, w) })
        .collect()
}

/// Runs the timeline for `rules` with its `[boot]` mode replaced by `mode`.
///
/// # Errors
///
/// A step of the real code (installing the boot set, registering our
/// callouts, adding our filters) failed on the model.
pub fn timeline(rules: &RuleSet, mode: BootMode) -> Result<Timeline, TimelineError> {
    let config = BootConfig { mode, ..rules.boot.clone() };
    let wanted: Vec<Option<Action>> = FLOWS.iter().map(|f| wanted(rules, f)).collect();
    let mut wfp = Wfp::new(Readings::default());
    install(&mut wfp, &config)?;
    wfp.reboot();
    let mut phases = vec![(Phase::BfeDown, cells(&mut wfp, &RefCell::default(), false, &wanted))];
    let mut audited = Vec::new();
    // DriverEntry: the lifecycle, then our callouts and the BFE subscription.
    let mut k = Driver::new(&mut wfp, mode);
    let life = Lifecycle::start(&mut k);
    k.register().map_err(|status| TimelineError { step: "FwpsCalloutRegister0", status })?;
    for phase in Phase::ALL.into_iter().skip(1) {
        match phase {
            Phase::BfeDown => {}
            Phase::DriverLoaded => {
                if k.wfp.bfe_state() == FWPM_SERVICE_RUNNING {
                    life.bfe_running(&mut k).map_err(|status| TimelineError { step: "adding our filters", status })?;
                }
            }
            Phase::BfeUp => k.wfp.set_bfe_state(FWPM_SERVICE_RUNNING),
            // The BFE state callback (RUNNING).
            Phase::FiltersAdded => {
                life.bfe_running(&mut k).map_err(|status| TimelineError { step: "adding our filters", status })?;
            }
            // The proxy's register request; later its handle's cleanup.
            Phase::ProxyRegistered | Phase::ProxyRestarted => k.proxy = Some(PROXY_PID),
            Phase::ProxyCrashed => k.proxy = None,
            Phase::DriverUnloaded => {
                let _ = life.stop(&mut k);
                k.proxy = None;
            }
        }
        if phase != Phase::DriverUnloaded {
            life.sync_guard(&mut k);
        }
        audited.extend(k.audited.drain(..).map(|r| (phase, r.change.name())));
        let probe = Rc::clone(&k.probe);
        let proxy = k.proxy.is_some();
        phases.push((phase, cells(k.wfp, &probe, proxy, &wanted)));
    }
    Ok(Timeline { mode, phases, audited })
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
        let t = timeline(&rules(), BootMode::Block).unwrap();
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
            let t = timeline(&rules(), mode).unwrap();
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
        let t = timeline(&rules(), BootMode::Open).unwrap();
        let e = t.escapes();
        assert!(e.contains(&(Phase::BfeDown, "web")) && e.contains(&(Phase::ProxyCrashed, "web")), "{t}");
        assert!(!e.iter().any(|(p, _)| p.ready()));
    }

    #[test]
    fn proxy_loss_and_return_are_audited() {
        let t = timeline(&rules(), BootMode::Block).unwrap();
        assert_eq!(
            t.audited,
            vec![
                (Phase::ProxyRegistered, "ready"),
                (Phase::ProxyCrashed, "proxy-lost"),
                (Phase::ProxyRestarted, "ready"),
            ]
        );
        // Unload writes no record: the ring goes with the driver, and the
        // override with its dynamic session (`Lifecycle::stop`).
        assert_eq!(
            timeline(&rules(), BootMode::Open).unwrap().audited,
            vec![
                (Phase::ProxyRegistered, "ready"),
                (Phase::ProxyCrashed, "proxy-lost"),
                (Phase::ProxyRestarted, "ready")
            ]
        );
    }

    /// The rules' allow-list reaches the filters through the real install
    /// plan: ssh (which our rules leave alone) goes out before we are ready
    /// only when the allow-list names it.
    #[test]
    fn the_allow_list_is_installed_by_the_real_plan() {
        let fate = |t: &Timeline, phase: Phase, flow: &str| {
            t.phases
                .iter()
                .find(|(p, _)| *p == phase)
                .and_then(|(_, c)| c.iter().find(|c| c.flow.name == flow))
                .map(|c| c.fate)
        };
        let t = timeline(&rules(), BootMode::Block).unwrap();
        for phase in [Phase::BfeDown, Phase::BfeUp, Phase::ProxyCrashed] {
            assert_eq!(fate(&t, phase, "ssh"), Some(Fate::BlockedByGuard), "{t}");
        }
        let with_ssh = format!("{BOOT_RULES}\n[boot]\nmode = \"block\"\nallow = [\"dhcp\", \"dns\", \"tcp/22\"]\n");
        let t = timeline(&crate::rules::parse_str(&with_ssh, "boot+ssh").unwrap(), BootMode::Block).unwrap();
        for phase in [Phase::BfeDown, Phase::BfeUp, Phase::ProxyCrashed] {
            assert_eq!(fate(&t, phase, "ssh"), Some(Fate::Direct), "{t}");
            assert_eq!(fate(&t, phase, "web"), Some(Fate::BlockedByGuard), "{t}");
        }
        assert_eq!(t.escapes(), vec![]);
    }
}
