//! A machine setup: a real machine's vendors, in their classification order,
//! as `arbiter wfpdiag --lab-setup` writes them, run by `arbiter lab --setup`
//! ("this machine, simulated").
//!
//! The file is TOML: a `name`, a `source`, and one `[[vendor]]` per vendor in
//! the order its callout classifies at ALE_CONNECT_REDIRECT (first = highest
//! weight). Each vendor names the lab `profile` that models it and, for a real
//! product, the `planned` profile named after it: when the lab has that
//! profile it is used instead. Exactly one vendor has `ours = true`.
//!
//! Each rule set is run with one application connection per protocol and
//! family, through every vendor at once; the outcome is what [`Outcome`]
//! means in the matrix.

use core::net::SocketAddr;
use std::path::Path;

use arbiter::Protocol;
use serde::{Deserialize, Serialize};

use crate::engine::{Engine, HopResult, Identity, MAX_CHAIN, ProxyProcess, Vendor};
use crate::explore::{PeerSpec, peer_identity};
use crate::ours::{ArbiterCallout, OWN_FILTER, OWN_HANDLE, OWN_PROXY_APP, OWN_PROXY_PID};
use crate::profiles::Profile;
use crate::scenario::{APP, APP_PID, DEST_V4, DEST_V6, LabRules, Outcome};

/// One vendor of the machine.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SetupVendor {
    /// Its name on the machine (provider or product).
    pub name: String,
    /// Our driver.
    #[serde(default, skip_serializing_if = "core::ops::Not::not")]
    pub ours: bool,
    /// The lab profile that models it (absent for ours).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub profile: Option<String>,
    /// The product's own profile, used once the lab has it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub planned: Option<String>,
    /// Why this profile, and where the vendor was seen.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub note: String,
}

/// A machine's vendors in classification order.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MachineSetup {
    /// A name for reports.
    pub name: String,
    /// Where it was read from.
    #[serde(default)]
    pub source: String,
    /// Vendors, first to classify first.
    #[serde(rename = "vendor")]
    pub vendors: Vec<SetupVendor>,
}

impl MachineSetup {
    /// Parses and checks a setup.
    pub fn from_toml(text: &str, origin: &str) -> Result<Self, String> {
        let s: Self = toml::from_str(text).map_err(|e| format!("{origin}: {e}"))?;
        let ours = s.vendors.iter().filter(|v| v.ours).count();
        if ours != 1 {
            return Err(format!("{origin}: exactly one vendor must have `ours = true` (found {ours})"));
        }
        for v in s.vendors.iter().filter(|v| !v.ours) {
            if v.profile().is_none() {
                let names: Vec<&str> = Profile::ALL.iter().map(|p| p.name()).collect();
                return Err(format!(
                    "{origin}: vendor `{}`: profile {:?} is not a lab profile ({})",
                    v.name,
                    v.profile.as_deref().unwrap_or(""),
                    names.join(", ")
                ));
            }
        }
        Ok(s)
    }

    /// Reads a setup file.
    pub fn load(path: &Path) -> Result<Self, String> {
        let text = std::fs::read_to_string(path).map_err(|e| format!("{}: cannot read: {e}", path.display()))?;
        Self::from_toml(&text, &path.display().to_string())
    }

    /// The TOML text, with a header saying how to run it.
    pub fn to_toml(&self) -> Result<String, String> {
        let body = toml::to_string(self).map_err(|e| e.to_string())?;
        Ok(format!(
            "# A machine's WFP vendors in classification order at ALE_CONNECT_REDIRECT (first = first to classify).\n\
             # Run it: arbiter lab --setup THIS_FILE\n{body}"
        ))
    }
}

impl SetupVendor {
    /// The profile the lab runs: the planned one when it exists, else `profile`.
    pub fn profile(&self) -> Option<Profile> {
        self.planned
            .as_deref()
            .and_then(Profile::from_name)
            .or_else(|| self.profile.as_deref().and_then(Profile::from_name))
    }
}

/// One connection through the machine.
#[derive(Debug)]
pub struct MachineRun {
    /// `tcp/v4/default`.
    pub name: String,
    /// How it ended.
    pub outcome: Outcome,
    /// `app -> x-proxy -> ... -> destination`.
    pub path: Vec<String>,
}

impl MachineRun {
    /// A loop or an unexplained end.
    pub const fn is_failure(&self) -> bool {
        !self.outcome.is_explained()
    }
}

fn our_identity(rules: &LabRules, weight: u32) -> Result<(Identity, ArbiterCallout), String> {
    let fallback = crate::rules::parse_str(crate::rules::LAB_FALLBACK_RULES, "builtin")?.proxy;
    let v4 = rules.rules.proxy.v4.or(fallback.v4).ok_or("no IPv4 listener")?;
    let v6 = rules.rules.proxy.v6.or(fallback.v6).ok_or("no IPv6 listener")?;
    let id = Identity {
        name: "arbiter".to_owned(),
        weight,
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
    // The real adapter on the WFP model, as in the lab's matrix.
    let a = crate::ours::lab_arbiter(rules.rules.clone(), Some(v4), Some(v6))?;
    Ok((id, ArbiterCallout::new(a, arbiter_wfp_model::Readings::default())?))
}

/// Runs one connection of `protocol`/family through the machine.
pub fn run_one(setup: &MachineSetup, rules: &LabRules, protocol: Protocol, v6: bool) -> Result<MachineRun, String> {
    let n = setup.vendors.len();
    let mut vendors = Vec::with_capacity(n);
    let mut slot = 0;
    for (i, v) in setup.vendors.iter().enumerate() {
        // First in the file classifies first: the highest weight.
        let weight = u32::try_from(10 * (n - i)).unwrap_or(u32::MAX);
        if v.ours {
            let (id, callout) = our_identity(rules, weight)?;
            vendors.push(Vendor { id, callout: Box::new(callout) });
        } else {
            let profile = v.profile().ok_or_else(|| format!("vendor `{}` has no lab profile", v.name))?;
            let spec = PeerSpec { profile, propagates: false, trusted: false, known: false };
            let id = peer_identity(spec, slot, weight, &v.name);
            slot += 1;
            vendors.push(Vendor { id, callout: profile.callout() });
        }
    }
    let mut engine = Engine::new(vendors);
    let destination: SocketAddr =
        (if v6 { DEST_V6 } else { DEST_V4 }).parse().map_err(|_| "bad destination".to_owned())?;
    let mut pending = Some(engine.app_connection(APP_PID, APP, protocol, destination));
    let mut path = vec!["app".to_owned()];
    let mut hops = 0;
    let name = |e: &Engine, v: usize| e.vendors.get(v).map_or_else(|| "?".to_owned(), |x| x.id.name.clone());
    let outcome = loop {
        let Some(conn) = pending.take() else {
            break Outcome::Unexplained("the chain stopped without an outcome".into());
        };
        if hops >= MAX_CHAIN {
            path.push("...".into());
            break Outcome::Loop(format!("chain reached {MAX_CHAIN} connections"));
        }
        hops += 1;
        let trace = engine.classify(&conn, destination);
        match &trace.result {
            HopResult::ToProxy { vendor } => {
                path.push(format!("{}-proxy", name(&engine, *vendor)));
                pending = engine.proxy_outbound(&trace, *vendor);
                if pending.is_none() {
                    break Outcome::Unexplained("the proxy could not read its redirect context".into());
                }
            }
            HopResult::Delivered { via_tunnel } => {
                if let Some((v, addr)) = via_tunnel {
                    path.push(format!("{}@{addr}", name(&engine, *v)));
                }
                path.push(destination.to_string());
                break Outcome::Delivered;
            }
            HopResult::Blocked { vendor, layer, reason } => {
                let by = name(&engine, *vendor);
                path.push(format!("blocked by {by}"));
                break Outcome::Blocked { by, layer: *layer, reason: reason.clone() };
            }
            HopResult::ReauthLoop => {
                path.push("...".into());
                break Outcome::Loop("reauthorization did not settle".into());
            }
            HopResult::Unexplained(why) => {
                path.push("?".into());
                break Outcome::Unexplained(why.clone());
            }
        }
    };
    let family = if v6 { "v6" } else { "v4" };
    Ok(MachineRun { name: format!("{}/{protocol}/{family}/{}", setup.name, rules.name), outcome, path })
}

/// Every rule set, TCP and UDP, IPv4 and IPv6.
pub fn run_all(setup: &MachineSetup, rule_sets: &[LabRules]) -> Result<Vec<MachineRun>, String> {
    let mut out = Vec::new();
    for rules in rule_sets {
        for protocol in [Protocol::TCP, Protocol::UDP] {
            for v6 in [false, true] {
                out.push(run_one(setup, rules, protocol, v6)?);
            }
        }
    }
    Ok(out)
}
