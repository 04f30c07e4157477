//! The machine's vendor set as a lab setup (`--lab-setup`), for
//! `arbiter lab --setup`.
//!
//! The lab engine gives each vendor one weight for both layers, so the order
//! is the connect-redirect order (IPv4, else IPv6); a vendor seen only at
//! auth-connect goes just before us when it classifies before us there, else
//! last. Vendors without a callout or a hard permit at these layers are not
//! simulated (their filters cannot redirect or take the write right).

use arbiter_lab::machine::{MachineSetup, SetupVendor};

use crate::Machine;
use crate::inventory::Inventory;
use crate::model::{Layer, LayerKind};

/// Our place in the order.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Who {
    Ours,
    Vendor(usize),
}

fn sequence(inv: &Inventory, layer: Layer) -> Vec<Who> {
    let mut seq = Vec::new();
    for s in inv.order.get(&layer).into_iter().flatten() {
        let who = match s.vendor {
            None => Who::Ours,
            Some(v) if inv.vendors.get(v).is_some_and(|x| x.ours) => Who::Ours,
            Some(v) => Who::Vendor(v),
        };
        if !seq.contains(&who) {
            seq.push(who);
        }
    }
    seq
}

/// Builds the setup.
pub fn lab_setup(m: &Machine, inv: &Inventory, name: &str) -> MachineSetup {
    let redirect = [false, true]
        .into_iter()
        .map(|v6| sequence(inv, Layer { kind: LayerKind::ConnectRedirect, v6 }))
        .find(|s| s.len() > 1)
        .unwrap_or_default();
    let mut seq = redirect;
    if !seq.contains(&Who::Ours) {
        seq.push(Who::Ours);
    }
    for v6 in [false, true] {
        let auth = sequence(inv, Layer { kind: LayerKind::AuthConnect, v6 });
        let ours_at = auth.iter().position(|w| *w == Who::Ours);
        for (i, w) in auth.iter().enumerate() {
            if seq.contains(w) {
                continue;
            }
            match ours_at {
                Some(o) if i < o => {
                    let at = seq.iter().position(|x| *x == Who::Ours).unwrap_or(seq.len());
                    seq.insert(at, *w);
                }
                _ => seq.push(*w),
            }
        }
    }
    let files: Vec<&str> = m.files.iter().map(|f| f.name.as_str()).collect();
    let vendors = seq
        .into_iter()
        .filter_map(|w| match w {
            Who::Ours => Some(SetupVendor {
                name: "arbiter".into(),
                ours: true,
                profile: None,
                planned: None,
                note: if inv.ours_present {
                    "our driver, as installed".into()
                } else {
                    format!("not installed: placed at its default sublayer weight {}", inv.our_sublayer_weight)
                },
            }),
            Who::Vendor(v) => {
                let v = inv.vendors.get(v)?;
                let profile = v.mapping.profile?;
                Some(SetupVendor {
                    name: v.name.clone(),
                    ours: false,
                    profile: Some(profile.to_owned()),
                    planned: v.mapping.planned.map(str::to_owned),
                    note: v.mapping.why.clone(),
                })
            }
        })
        .collect();
    MachineSetup { name: name.to_owned(), source: files.join(", "), vendors }
}
