//! The inventory: vendors at the redirect and auth-connect layers, the order
//! in which their filters classify a connection, and who acts before us.
//!
//! The order is WFP's filter arbitration ("Filter Arbitration", Microsoft
//! Learn): sublayers from the highest weight down, and inside a sublayer
//! filters from the highest effective weight down. Every sublayer is
//! evaluated; a permit or block whose filter (FWPM_FILTER_FLAG_CLEAR_ACTION_RIGHT)
//! or callout clears FWPS_RIGHT_ACTION_WRITE cannot be overridden by a lower
//! sublayer, and a callout classifying after it finds no write right, so it
//! cannot redirect ("Using Bind or Connect Redirection").
//!
//! Our own driver is recognised by its keys (driver/src/lib.rs). When it is
//! not in the files, the order shows where it would sit with its default
//! sublayer weight, so the report still answers "who acts before us".

use std::collections::BTreeMap;

use crate::model::{Filter, Layer, LayerKind};
use crate::vendors::{self, Facts, Known, Mapping, OUR_DEFAULT_SUBLAYER_WEIGHT};
use crate::{Machine, key};

/// One vendor: every inventoried filter that shares a provider (or, without
/// one, a recognised product or a sublayer).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Vendor {
    /// Grouping key.
    pub id: String,
    /// Display name.
    pub name: String,
    /// The provider key, when the filters name one.
    pub provider: Option<String>,
    /// Recognised product.
    pub known: Option<Known>,
    /// This is our driver.
    pub ours: bool,
    /// The lab profile.
    pub mapping: Mapping,
    /// Indexes into [`Machine::filters`].
    pub filters: Vec<usize>,
}

/// One filter in classification order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Slot {
    /// Index into [`Machine::filters`] (None: our hypothetical filter).
    pub filter: Option<usize>,
    /// Index into [`Inventory::vendors`] (None: our hypothetical filter).
    pub vendor: Option<usize>,
    /// The sublayer's weight, when known.
    pub sublayer_weight: Option<u16>,
    /// Same sublayer weight as the previous slot in another sublayer, or same
    /// effective weight in the same sublayer: their relative order is not defined.
    pub tie: bool,
}

/// What a vendor classifying before us can do to our write right.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Before {
    /// The layer.
    pub layer: Layer,
    /// Index into [`Inventory::vendors`].
    pub vendor: usize,
    /// Index into [`Machine::filters`].
    pub filter: usize,
    /// It can take (or always takes) our write right.
    pub takes_write_right: Option<bool>,
    /// Why.
    pub why: &'static str,
    /// Its sublayer has our sublayer's weight: WFP does not define which goes first.
    pub same_weight: bool,
}

/// The whole inventory.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Inventory {
    /// Vendors in order of first appearance.
    pub vendors: Vec<Vendor>,
    /// Classification order per layer (layers without filters are absent).
    pub order: BTreeMap<Layer, Vec<Slot>>,
    /// Our driver's filters are in the files.
    pub ours_present: bool,
    /// Our sublayer weight (read, or the driver's default).
    pub our_sublayer_weight: u16,
    /// Vendors classifying before us, per layer.
    pub before_us: Vec<Before>,
    /// Vendors whose order relative to ours is unknown (their sublayer weight is not in the files).
    pub unknown_order: Vec<(Layer, usize)>,
    /// The vendor of each filter (index into [`Machine::filters`]).
    pub filter_vendor: Vec<usize>,
    /// Inventoried filters by id.
    pub by_id: std::collections::HashMap<u64, usize>,
}

fn vendor_of(m: &Machine, f: &Filter) -> (String, String, Option<Known>) {
    let callout = f.callout.as_deref().and_then(|c| m.callouts.get(&key(c)));
    let provider = m.provider(f.provider.as_deref());
    let sublayer = m.sublayers.get(&key(&f.sublayer));
    let keys = [
        f.provider.as_deref(),
        Some(f.sublayer.as_str()),
        f.callout.as_deref(),
        sublayer.and_then(|s| s.provider.as_deref()),
    ];
    let names = [
        provider.map(|p| p.name.as_str()),
        provider.map(|p| p.description.as_str()),
        sublayer.map(|s| s.name.as_str()),
        callout.map(|c| c.name.as_str()),
        Some(f.name.as_str()),
    ];
    let known = vendors::recognise(keys.into_iter().flatten(), names.into_iter().flatten());
    let id = match (known, &f.provider) {
        (Some(k), _) => k.id.to_owned(),
        (None, Some(p)) => key(p),
        (None, None) => key(&f.sublayer),
    };
    let name = match (provider, known) {
        (_, Some(k)) => k.product.to_owned(),
        (Some(p), None) if !p.name.is_empty() => p.name.clone(),
        _ => sublayer.map_or_else(|| f.name.clone(), |s| s.name.clone()),
    };
    (id, name, known)
}

fn facts(m: &Machine, filters: &[usize]) -> Facts {
    let mut facts = Facts { redirect_callout: false, auth_callout: false, hard_permit: false };
    for f in filters.iter().filter_map(|&i| m.filters.get(i)) {
        match (f.layer().map(|l| l.kind), f.is_callout()) {
            (Some(LayerKind::ConnectRedirect), true) => facts.redirect_callout = true,
            (Some(LayerKind::AuthConnect), true) => facts.auth_callout = true,
            (Some(LayerKind::ConnectRedirect), false) if f.action == "FWP_ACTION_PERMIT" && f.clears_action_right() => {
                facts.hard_permit = true;
            }
            _ => {}
        }
    }
    facts
}

/// What a filter before us can do to our write right.
pub fn write_right_effect(f: &Filter) -> (Option<bool>, &'static str) {
    match f.action.as_str() {
        _ if f.disabled() => (Some(false), "disabled"),
        "FWP_ACTION_CALLOUT_INSPECTION" => (Some(false), "an inspection callout only continues"),
        "FWP_ACTION_CALLOUT_TERMINATING" | "FWP_ACTION_CALLOUT_UNKNOWN" => {
            (Some(true), "its callout may return a hard permit or block, clearing FWPS_RIGHT_ACTION_WRITE")
        }
        "FWP_ACTION_PERMIT" | "FWP_ACTION_BLOCK" if f.clears_action_right() => {
            (Some(true), "CLEAR_ACTION_RIGHT: a hard action that takes the write right from every lower sublayer")
        }
        "FWP_ACTION_PERMIT" => (Some(false), "a soft permit leaves the write right"),
        "FWP_ACTION_BLOCK" => (Some(false), "a soft block: blocks what it matches, leaves the write right"),
        _ => (None, "unknown action"),
    }
}

impl Inventory {
    /// Builds the inventory of a machine.
    pub fn of(m: &Machine) -> Self {
        let mut vendors: Vec<Vendor> = Vec::new();
        let mut by_id: BTreeMap<String, usize> = BTreeMap::new();
        let mut filter_vendor = vec![0usize; m.filters.len()];
        for (i, f) in m.filters.iter().enumerate() {
            let (id, name, known) = vendor_of(m, f);
            let v = *by_id.entry(id.clone()).or_insert_with(|| {
                vendors.push(Vendor {
                    ours: known.is_some_and(|k| k.id == vendors::OURS.id),
                    provider: f.provider.clone(),
                    id,
                    name,
                    known,
                    mapping: Mapping { profile: None, planned: None, why: String::new() },
                    filters: Vec::new(),
                });
                vendors.len() - 1
            });
            if let Some(slot) = filter_vendor.get_mut(i) {
                *slot = v;
            }
            if let Some(vendor) = vendors.get_mut(v) {
                vendor.filters.push(i);
            }
        }
        for v in &mut vendors {
            v.mapping = if v.ours {
                Mapping { profile: None, planned: None, why: "our driver".into() }
            } else {
                vendors::stand_in(v.known.as_ref(), facts(m, &v.filters))
            };
        }
        let ours: Vec<usize> = vendors.iter().enumerate().filter(|(_, v)| v.ours).map(|(i, _)| i).collect();
        let ours_present = !ours.is_empty();
        let our_filter = |layer: Layer| {
            m.filters
                .iter()
                .enumerate()
                .find(|(i, f)| f.layer() == Some(layer) && filter_vendor.get(*i).is_some_and(|v| ours.contains(v)))
        };
        let our_sublayer_weight = Layer::ALL
            .iter()
            .find_map(|&l| our_filter(l).and_then(|(_, f)| m.sublayer_weight(&f.sublayer)))
            .unwrap_or(OUR_DEFAULT_SUBLAYER_WEIGHT);

        let mut order = BTreeMap::new();
        let mut before_us = Vec::new();
        let mut unknown_order = Vec::new();
        for layer in Layer::ALL {
            let mut slots: Vec<Slot> = m
                .filters
                .iter()
                .enumerate()
                .filter(|(_, f)| f.layer() == Some(layer))
                .map(|(i, f)| Slot {
                    filter: Some(i),
                    vendor: filter_vendor.get(i).copied(),
                    sublayer_weight: m.sublayer_weight(&f.sublayer),
                    tie: false,
                })
                .collect();
            let redirects = matches!(layer.kind, LayerKind::ConnectRedirect | LayerKind::AuthConnect);
            if !ours_present && redirects && !slots.is_empty() {
                // Where our driver would classify with its default sublayer weight.
                slots.push(Slot { filter: None, vendor: None, sublayer_weight: Some(our_sublayer_weight), tie: false });
            }
            if slots.is_empty() {
                continue;
            }
            let eff = |s: &Slot| s.filter.and_then(|i| m.filters.get(i)).and_then(|f| f.effective_weight);
            let sub = |s: &Slot| s.filter.and_then(|i| m.filters.get(i)).map(|f| key(&f.sublayer));
            slots.sort_by(|a, b| {
                // Unknown sublayer weights last; then higher first.
                (b.sublayer_weight.is_some(), b.sublayer_weight, sub(b), eff(b)).cmp(&(
                    a.sublayer_weight.is_some(),
                    a.sublayer_weight,
                    sub(a),
                    eff(a),
                ))
            });
            for i in 1..slots.len() {
                let (Some(prev), Some(cur)) = (slots.get(i - 1), slots.get(i)) else { continue };
                // Unknown weights tie too: their sublayers' order is not in the files.
                let tie =
                    cur.sublayer_weight == prev.sublayer_weight && (sub(cur) != sub(prev) || eff(cur) == eff(prev));
                if let Some(s) = slots.get_mut(i) {
                    s.tie = tie;
                }
            }
            // Who is before us at this layer.
            let our_pos = slots.iter().position(|s| s.vendor.is_some_and(|v| ours.contains(&v)) || s.filter.is_none());
            if let Some(p) = our_pos {
                let our_weight = slots.get(p).and_then(|s| s.sublayer_weight);
                for (i, s) in slots.iter().enumerate() {
                    let (Some(fi), Some(v)) = (s.filter, s.vendor) else { continue };
                    let Some(f) = m.filters.get(fi) else { continue };
                    let same_weight = s.sublayer_weight.is_some() && s.sublayer_weight == our_weight;
                    if ours.contains(&v) || s.sublayer_weight.is_none() || (i > p && !same_weight) {
                        continue;
                    }
                    let (takes, why) = write_right_effect(f);
                    before_us.push(Before { layer, vendor: v, filter: fi, takes_write_right: takes, why, same_weight });
                }
                for s in slots.iter().filter(|s| s.sublayer_weight.is_none()) {
                    if let Some(v) = s.vendor
                        && !unknown_order.contains(&(layer, v))
                    {
                        unknown_order.push((layer, v));
                    }
                }
            }
            order.insert(layer, slots);
        }
        let by_id = m.filters.iter().enumerate().map(|(i, f)| (f.id, i)).collect();
        Self { vendors, order, ours_present, our_sublayer_weight, before_us, unknown_order, filter_vendor, by_id }
    }

    /// The vendor of a filter index.
    pub fn vendor_of_filter(&self, filter: usize) -> Option<&Vendor> {
        self.filter_vendor.get(filter).and_then(|&v| self.vendors.get(v))
    }
}
