//! Boot-time protection (`[boot] mode = "block"`): the filters the service
//! or installer adds, and the driver's guard that lifts and restores them.
//!
//! Sources (learn.microsoft.com):
//! - FWPM_FILTER0: `FWPM_FILTER_FLAG_BOOTTIME` filters are "enforced at
//!   boot-time, even before BFE starts"; `FWPM_FILTER_FLAG_PERSISTENT` ones
//!   are kept by BFE; the two "cannot be combined". So every rule is added
//!   twice: once boot-time (tcpip.sys start until BFE starts), once
//!   persistent (from BFE start on).
//! - "WFP Operation": a boot-time filter is disabled when BFE starts.
//! - FwpmProviderAdd0 remarks: at start BFE loads persistent objects of a
//!   provider only if it names no service or an auto-start one. Our provider
//!   names no service ([`PROVIDER_FLAGS`] persistent, no `serviceName`).
//! - FwpsCalloutRegister0 remarks: TERMINATING/UNKNOWN filters of an
//!   unregistered callout act as BLOCK, INSPECTION ones are ignored; these
//!   filters are therefore plain BLOCK/PERMIT filters, needing no driver.
//! - Filter Arbitration: within a sublayer the highest-weight matching filter
//!   that permits or blocks decides; across sublayers a block overrides a
//!   soft permit. The set lives in its own sublayer of weight
//!   [`SUBLAYER_WEIGHT`] (the maximum, as Mullvad's persistent lockdown
//!   sublayer, `mullvad/mullvadvpn-app` @9380a807,
//!   `talpid-core/src/firewall/windows/objects/persistent.rs:167-175`).
//!
//! The set, per family at ALE_AUTH_CONNECT: a block-all filter (weight 0), a
//! loopback permit and one permit per allow-list entry (weight 10). Once our
//! filters are in place and our proxy has registered, the driver adds one
//! more filter to the same sublayer, a permit-all at weight 15 in its dynamic
//! session ([`OVERRIDE_WEIGHT`]): the boot set then decides nothing and our
//! callouts and everyone else's do. If the proxy goes away the driver
//! deletes that filter (the block set applies again) and audits it; when the
//! driver unloads, its dynamic session ends and the filter goes with it.
//! The boot-time and persistent filters themselves are never removed by the
//! driver: they must be there at the next boot. Uninstalling removes them
//! (every object of [`PROVIDER_KEY`]).

use arbiter::Protocol;
use arbiter::boot::{BootConfig, BootMode};
use wfp_ffi::{
    FWP_ACTION_BLOCK, FWP_ACTION_PERMIT, FWP_ACTION_TYPE, FWPM_FILTER_FLAG_BOOTTIME,
    FWPM_FILTER_FLAG_CLEAR_ACTION_RIGHT, FWPM_FILTER_FLAG_PERSISTENT, FWPM_PROVIDER_FLAG_PERSISTENT,
    FWPM_SUBLAYER_FLAG_PERSISTENT, GUID,
};

use crate::filters::FilterLayer;

/// Our boot provider {a7b1c0de-5b0f-4e2a-9c61-20261201b007}.
pub const PROVIDER_KEY: GUID = GUID::new(0xa7b1_c0de, 0x5b0f, 0x4e2a, [0x9c, 0x61, 0x20, 0x26, 0x12, 0x01, 0xb0, 0x07]);
/// `FWPM_PROVIDER0.flags`: persistent, and no service name (see module docs).
pub const PROVIDER_FLAGS: u32 = FWPM_PROVIDER_FLAG_PERSISTENT;
/// Our boot sublayer {a7b1c0de-5b0f-4e2a-9c61-20261201b008}.
pub const SUBLAYER_KEY: GUID = GUID::new(0xa7b1_c0de, 0x5b0f, 0x4e2a, [0x9c, 0x61, 0x20, 0x26, 0x12, 0x01, 0xb0, 0x08]);
/// `FWPM_SUBLAYER0.flags`.
pub const SUBLAYER_FLAGS: u32 = FWPM_SUBLAYER_FLAG_PERSISTENT;
/// `FWPM_SUBLAYER0.weight`: the maximum.
pub const SUBLAYER_WEIGHT: u16 = 0xFFFF;
/// Weight of the block-all filters (`FWP_UINT8` range index).
pub const BLOCK_WEIGHT: u8 = 0;
/// Weight of the loopback and allow-list permits.
pub const ALLOW_WEIGHT: u8 = 10;
/// Weight of the driver's permit-all override.
pub const OVERRIDE_WEIGHT: u8 = 15;

/// A condition of a boot filter (all of a filter's conditions must match).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BootCondition {
    /// `FWPM_CONDITION_FLAGS` with `FWP_MATCH_FLAGS_ALL_SET`
    /// `FWP_CONDITION_FLAG_IS_LOOPBACK`.
    Loopback,
    /// `FWPM_CONDITION_IP_PROTOCOL` `FWP_MATCH_EQUAL` (`FWP_UINT8`).
    Protocol(Protocol),
    /// `FWPM_CONDITION_IP_REMOTE_PORT` `FWP_MATCH_EQUAL` (`FWP_UINT16`).
    RemotePort(u16),
}

/// One filter of the boot set.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BootFilter {
    /// `FWPM_FILTER0.filterKey`: stable, so the set can be deleted by key.
    pub key: GUID,
    /// ALE_AUTH_CONNECT_V4 or _V6.
    pub layer: FilterLayer,
    /// `FWP_ACTION_BLOCK` or `FWP_ACTION_PERMIT`.
    pub action: FWP_ACTION_TYPE,
    /// `FWPM_FILTER_FLAG_BOOTTIME` or `FWPM_FILTER_FLAG_PERSISTENT` (0 for the override).
    pub flags: u32,
    /// `FWP_UINT8` weight (range index).
    pub weight: u8,
    /// Conditions (the first `conditions_len`).
    pub conditions: [Option<BootCondition>; 2],
}

impl BootFilter {
    /// `FWPM_FILTER0.flags` as added: [`Self::flags`], plus
    /// `FWPM_FILTER_FLAG_CLEAR_ACTION_RIGHT` on the blocks, so a permit in a
    /// lower sublayer cannot override them (Filter Arbitration: an action
    /// without the write right is hard).
    pub const fn fwpm_flags(&self) -> u32 {
        if self.action == FWP_ACTION_BLOCK { self.flags | FWPM_FILTER_FLAG_CLEAR_ACTION_RIGHT } else { self.flags }
    }

    /// Does an outbound flow match every condition?
    pub fn matches(&self, protocol: Protocol, remote_port: u16, loopback: bool) -> bool {
        self.conditions.iter().flatten().all(|c| match *c {
            BootCondition::Loopback => loopback,
            BootCondition::Protocol(p) => p == protocol,
            BootCondition::RemotePort(port) => port == remote_port,
        })
    }
}

/// A filter key: the provider's GUID with the filter's index in its last bytes.
const fn key(index: u16) -> GUID {
    let [hi, lo] = index.to_be_bytes();
    GUID::new(0xa7b1_c0de, 0x5b0f, 0x4e2a, [0x9c, 0x61, 0x20, 0x26, 0xb0, 0x07, hi, lo])
}

/// The most filters [`boot_filters`] yields: per flag and family, block-all,
/// loopback and [`arbiter::boot::MAX_ALLOW`] allow entries.
pub const MAX_BOOT_FILTERS: usize = 2 * 2 * (2 + arbiter::boot::MAX_ALLOW);

/// The filters the service or installer adds for `config`, boot-time ones
/// first: none in open mode. At most [`MAX_BOOT_FILTERS`]; allow entries
/// past [`arbiter::boot::MAX_ALLOW`] (which the rules front end refuses) are
/// not added.
pub fn boot_filters(config: &BootConfig) -> impl Iterator<Item = BootFilter> + '_ {
    let on = config.mode == BootMode::Block;
    let allow = config.allow.get(..config.allow.len().min(arbiter::boot::MAX_ALLOW)).unwrap_or(&[]);
    let per_set = allow.len().saturating_add(2);
    [FWPM_FILTER_FLAG_BOOTTIME, FWPM_FILTER_FLAG_PERSISTENT].into_iter().filter(move |_| on).enumerate().flat_map(
        move |(f, flags)| {
            [FilterLayer::AuthConnectV4, FilterLayer::AuthConnectV6].into_iter().enumerate().flat_map(
                move |(l, layer)| {
                    (0..per_set).map(move |i| {
                        let index = f.saturating_mul(2).saturating_add(l).saturating_mul(per_set).saturating_add(i);
                        let (action, weight, conditions) = match i {
                            0 => (FWP_ACTION_BLOCK, BLOCK_WEIGHT, [None, None]),
                            1 => (FWP_ACTION_PERMIT, ALLOW_WEIGHT, [Some(BootCondition::Loopback), None]),
                            n => {
                                let a =
                                    allow.get(n.saturating_sub(2)).copied().unwrap_or(arbiter::boot::BootAllow::udp(0));
                                (
                                    FWP_ACTION_PERMIT,
                                    ALLOW_WEIGHT,
                                    [
                                        Some(BootCondition::Protocol(a.protocol)),
                                        Some(BootCondition::RemotePort(a.port)),
                                    ],
                                )
                            }
                        };
                        BootFilter {
                            key: key(u16::try_from(index).unwrap_or(u16::MAX)),
                            layer,
                            action,
                            flags,
                            weight,
                            conditions,
                        }
                    })
                },
            )
        },
    )
}

/// The driver's override for a family: permit-all at [`OVERRIDE_WEIGHT`],
/// in the driver's dynamic session (no flags).
pub const fn override_filter(layer: FilterLayer) -> BootFilter {
    let index = if layer.is_v6() { 0xFFF1 } else { 0xFFF0 };
    BootFilter {
        key: key(index),
        layer,
        action: FWP_ACTION_PERMIT,
        flags: 0,
        weight: OVERRIDE_WEIGHT,
        conditions: [None, None],
    }
}

/// One step of installing or removing the boot set, run in order inside one
/// FWPM transaction (`FwpmTransactionBegin0` .. `FwpmTransactionCommit0`;
/// any failure aborts it, so the machine keeps what it had). A delete of an
/// object that is not there (`FWP_E_*_NOT_FOUND`) is not a failure.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BootStep {
    /// `FwpmFilterDeleteByKey0`.
    DeleteFilter(GUID),
    /// `FwpmSubLayerDeleteByKey0` of [`SUBLAYER_KEY`].
    DeleteSublayer,
    /// `FwpmProviderDeleteByKey0` of [`PROVIDER_KEY`].
    DeleteProvider,
    /// `FwpmProviderAdd0`: [`PROVIDER_KEY`], [`PROVIDER_FLAGS`], no service name.
    AddProvider,
    /// `FwpmSubLayerAdd0`: [`SUBLAYER_KEY`], [`SUBLAYER_FLAGS`], [`SUBLAYER_WEIGHT`].
    AddSublayer,
    /// `FwpmFilterAdd0` of this filter, in [`SUBLAYER_KEY`], provider [`PROVIDER_KEY`].
    AddFilter(BootFilter),
}

/// Every filter key our boot provider can ever own: each index
/// [`boot_filters`] may use (whatever allow-list the set was installed
/// with) and the driver's two override keys.
fn every_key() -> impl Iterator<Item = GUID> {
    let most = u16::try_from(MAX_BOOT_FILTERS).unwrap_or(u16::MAX);
    (0..most).chain([0xFFF0, 0xFFF1]).map(key)
}

/// Removing boot-time protection: every object of our boot provider,
/// filters first (a sublayer that holds filters cannot be deleted:
/// `FWP_E_IN_USE`), then the sublayer, then the provider. It needs neither
/// the rules nor the driver, so it recovers a machine whose driver is gone.
/// The driver's override (in its own dynamic session) is deleted too: the
/// sublayer could not go while it is there, and it lifts nothing once the
/// set is gone.
pub fn remove_plan() -> impl Iterator<Item = BootStep> {
    every_key().map(BootStep::DeleteFilter).chain([BootStep::DeleteSublayer, BootStep::DeleteProvider])
}

/// Installing boot-time protection for `config`, in one transaction. In
/// block mode: the filters of whatever set was there are deleted (every key
/// [`boot_filters`] may use), the provider and the sublayer are added where
/// they are missing and kept where they are there, and [`boot_filters`] are
/// added, so a changed allow-list replaces the old one at once. The
/// driver's override is left alone: it lives in the sublayer, the driver is
/// not told of a reinstall, and deleting it would leave the new block-all
/// cutting off a machine whose proxy is running. In open mode this is the
/// removal ([`remove_plan`]).
pub fn install_plan(config: &BootConfig) -> impl Iterator<Item = BootStep> + '_ {
    let on = config.mode == BootMode::Block;
    let most = u16::try_from(MAX_BOOT_FILTERS).unwrap_or(u16::MAX);
    let replace = (0..most)
        .map(|i| BootStep::DeleteFilter(key(i)))
        .chain([BootStep::AddProvider, BootStep::AddSublayer])
        .chain(boot_filters(config).map(BootStep::AddFilter))
        .filter(move |_| on);
    let remove = remove_plan().filter(move |_| !on);
    replace.chain(remove)
}

/// The management calls a [`BootStep`] plan needs, over one engine
/// session: the service implements it over fwpuclnt's `Fwpm*` routines, the
/// tests over the WFP model. Statuses are the routines' own (a user-mode
/// `DWORD`, a kernel `NTSTATUS`), as `i32`.
pub trait BootEngine {
    /// `FwpmTransactionBegin0`.
    ///
    /// # Errors
    ///
    /// The routine's status.
    fn begin(&mut self) -> Result<(), i32>;
    /// `FwpmTransactionCommit0`.
    ///
    /// # Errors
    ///
    /// The routine's status.
    fn commit(&mut self) -> Result<(), i32>;
    /// `FwpmTransactionAbort0`.
    fn abort(&mut self);
    /// `FwpmProviderAdd0` of our boot provider: `Ok(false)` when it is
    /// there already (`FWP_E_ALREADY_EXISTS`).
    ///
    /// # Errors
    ///
    /// The routine's status.
    fn add_provider(&mut self) -> Result<bool, i32>;
    /// `FwpmSubLayerAdd0` of our boot sublayer: `Ok(false)` when it is
    /// there already (`FWP_E_ALREADY_EXISTS`).
    ///
    /// # Errors
    ///
    /// The routine's status.
    fn add_sublayer(&mut self) -> Result<bool, i32>;
    /// `FwpmFilterAdd0` of `filter`.
    ///
    /// # Errors
    ///
    /// The routine's status.
    fn add_filter(&mut self, filter: &BootFilter) -> Result<(), i32>;
    /// `FwpmFilterDeleteByKey0`: `Ok(false)` when there is no such filter.
    ///
    /// # Errors
    ///
    /// The routine's status.
    fn delete_filter(&mut self, key: GUID) -> Result<bool, i32>;
    /// `FwpmSubLayerDeleteByKey0` of our boot sublayer: `Ok(false)` when absent.
    ///
    /// # Errors
    ///
    /// The routine's status (e.g. `FWP_E_IN_USE`).
    fn delete_sublayer(&mut self) -> Result<bool, i32>;
    /// `FwpmProviderDeleteByKey0` of our boot provider: `Ok(false)` when absent.
    ///
    /// # Errors
    ///
    /// The routine's status.
    fn delete_provider(&mut self) -> Result<bool, i32>;
}

/// What a plan did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PlanDone {
    /// Objects added.
    pub added: usize,
    /// Objects deleted (those that were not there are not counted).
    pub deleted: usize,
}

/// A plan step failed: the transaction was aborted, nothing changed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PlanFailed {
    /// The step (`None`: beginning or committing the transaction).
    pub step: Option<BootStep>,
    /// The routine's status.
    pub status: i32,
}

/// Runs `steps` in one transaction: begin, every step in order, commit; on
/// the first failure, abort.
///
/// # Errors
///
/// The failing step and its status; the machine keeps what it had.
pub fn run_plan<E: BootEngine>(engine: &mut E, steps: impl Iterator<Item = BootStep>) -> Result<PlanDone, PlanFailed> {
    engine.begin().map_err(|status| PlanFailed { step: None, status })?;
    let mut done = PlanDone::default();
    for step in steps {
        let r = match step {
            BootStep::DeleteFilter(key) => engine.delete_filter(key).map(|d| (0, usize::from(d))),
            BootStep::DeleteSublayer => engine.delete_sublayer().map(|d| (0, usize::from(d))),
            BootStep::DeleteProvider => engine.delete_provider().map(|d| (0, usize::from(d))),
            BootStep::AddProvider => engine.add_provider().map(|a| (usize::from(a), 0)),
            BootStep::AddSublayer => engine.add_sublayer().map(|a| (usize::from(a), 0)),
            BootStep::AddFilter(f) => engine.add_filter(&f).map(|()| (1, 0)),
        };
        match r {
            Ok((a, d)) => {
                done.added = done.added.saturating_add(a);
                done.deleted = done.deleted.saturating_add(d);
            }
            Err(status) => {
                engine.abort();
                return Err(PlanFailed { step: Some(step), status });
            }
        }
    }
    engine.commit().map_err(|status| PlanFailed { step: None, status })?;
    Ok(done)
}

/// What the boot sublayer decides for an outbound flow, given the filters
/// in force: the highest-weight matching filter (Filter Arbitration);
/// `None` when nothing matches.
pub fn decide<'a>(
    filters: impl IntoIterator<Item = &'a BootFilter>,
    protocol: Protocol,
    remote_port: u16,
    loopback: bool,
) -> Option<FWP_ACTION_TYPE> {
    filters
        .into_iter()
        .filter(|f| f.matches(protocol, remote_port, loopback))
        .max_by_key(|f| f.weight)
        .map(|f| f.action)
}

#[cfg(test)]
mod tests {
    use alloc::vec::Vec;

    use arbiter::boot::BootAllow;

    use super::*;

    fn block() -> BootConfig {
        BootConfig { mode: BootMode::Block, ..BootConfig::default() }
    }

    #[test]
    fn open_mode_adds_nothing() {
        assert_eq!(boot_filters(&BootConfig::default()).count(), 0);
    }

    #[test]
    fn block_mode_adds_boottime_and_persistent_twins() {
        let all: Vec<_> = boot_filters(&block()).collect();
        assert_eq!(all.len(), 2 * 2 * (2 + 4));
        let boot: Vec<_> = all.iter().filter(|f| f.flags == FWPM_FILTER_FLAG_BOOTTIME).collect();
        let pers: Vec<_> = all.iter().filter(|f| f.flags == FWPM_FILTER_FLAG_PERSISTENT).collect();
        assert_eq!(boot.len(), pers.len());
        for (b, p) in boot.iter().zip(&pers) {
            assert_eq!((b.layer, b.action, b.weight, b.conditions), (p.layer, p.action, p.weight, p.conditions));
        }
        // Never both flags on one filter (FWPM_FILTER0).
        assert!(
            all.iter().all(|f| f.flags & FWPM_FILTER_FLAG_BOOTTIME == 0 || f.flags & FWPM_FILTER_FLAG_PERSISTENT == 0)
        );
        // Keys are unique.
        let mut keys: Vec<_> = all.iter().map(|f| f.key).collect();
        keys.sort_by_key(|k| (k.Data4, k.Data1));
        keys.dedup();
        assert_eq!(keys.len(), all.len());
        assert!(all.len() <= MAX_BOOT_FILTERS);
    }

    #[test]
    fn the_set_blocks_all_but_loopback_and_the_allow_list() {
        let cfg = BootConfig { mode: BootMode::Block, allow: alloc::vec![BootAllow::udp(53), BootAllow::tcp(853)] };
        let set: Vec<_> =
            boot_filters(&cfg).filter(|f| f.flags == FWPM_FILTER_FLAG_PERSISTENT && !f.layer.is_v6()).collect();
        assert_eq!(decide(&set, Protocol::TCP, 443, false), Some(FWP_ACTION_BLOCK));
        assert_eq!(decide(&set, Protocol::TCP, 443, true), Some(FWP_ACTION_PERMIT));
        assert_eq!(decide(&set, Protocol::UDP, 53, false), Some(FWP_ACTION_PERMIT));
        assert_eq!(decide(&set, Protocol::TCP, 53, false), Some(FWP_ACTION_BLOCK));
        assert_eq!(decide(&set, Protocol::TCP, 853, false), Some(FWP_ACTION_PERMIT));
        let mut with = set.clone();
        with.push(override_filter(FilterLayer::AuthConnectV4));
        assert_eq!(decide(&with, Protocol::TCP, 443, false), Some(FWP_ACTION_PERMIT));
    }

    #[test]
    fn removal_deletes_every_key_then_the_sublayer_then_the_provider() {
        let steps: Vec<_> = remove_plan().collect();
        assert_eq!(steps.len(), MAX_BOOT_FILTERS + 2 + 2);
        assert_eq!(steps[steps.len() - 2..], [BootStep::DeleteSublayer, BootStep::DeleteProvider]);
        // Every key the largest set uses, and the override's.
        let big = BootConfig { mode: BootMode::Block, allow: (1..=16).map(BootAllow::tcp).collect() };
        for f in boot_filters(&big).chain([override_filter(FilterLayer::AuthConnectV4)]) {
            assert!(steps.contains(&BootStep::DeleteFilter(f.key)), "{f:?}");
        }
        assert!(install_plan(&BootConfig::default()).eq(remove_plan()), "open mode: removal only");
        // Block mode replaces the set's filters and keeps the override (and
        // so the sublayer and provider it lives in).
        let install: Vec<_> = install_plan(&block()).collect();
        assert_eq!(install[MAX_BOOT_FILTERS], BootStep::AddProvider);
        assert_eq!(install[MAX_BOOT_FILTERS + 1], BootStep::AddSublayer);
        assert_eq!(install.len(), MAX_BOOT_FILTERS + 2 + boot_filters(&block()).count());
        for layer in [FilterLayer::AuthConnectV4, FilterLayer::AuthConnectV6] {
            let kept = BootStep::DeleteFilter(override_filter(layer).key);
            assert!(!install.contains(&kept), "the override is not deleted by a reinstall");
        }
        assert!(!install.contains(&BootStep::DeleteSublayer) && !install.contains(&BootStep::DeleteProvider));
    }

    #[test]
    fn blocks_clear_the_action_right() {
        for f in boot_filters(&block()) {
            assert_eq!(f.fwpm_flags() & FWPM_FILTER_FLAG_CLEAR_ACTION_RIGHT != 0, f.action == FWP_ACTION_BLOCK);
        }
        assert_eq!(override_filter(FilterLayer::AuthConnectV6).fwpm_flags(), 0, "the override stays soft");
    }
}
