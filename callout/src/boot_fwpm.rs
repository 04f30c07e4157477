//! The boot set ([`crate::boot`]) as the `FWPM_*` structures the
//! management routines take: built once here for the driver's override
//! (kernel `FwpmFilterAdd0`) and the service's install (user-mode
//! `FwpmProviderAdd0`, `FwpmSubLayerAdd0`, `FwpmFilterAdd0`), whose
//! structures are the same (fwpmtypes.h). The layouts are asserted in
//! `wfp-ffi` (`fwpm.rs`).
//!
//! The structures point at storage the caller keeps alive for the call:
//! the display name, the provider key and the conditions.
//!
//! Sources (learn.microsoft.com): FWPM_FILTER0 (`weight` as `FWP_UINT8` is
//! a weight range index, `action.type` with `filterType` unused for
//! PERMIT/BLOCK, `providerKey` optional), FWPM_FILTER_CONDITION0,
//! "Filtering Condition Identifiers" (FWPM_CONDITION_FLAGS,
//! FWPM_CONDITION_IP_PROTOCOL, FWPM_CONDITION_IP_REMOTE_PORT), FWP_MATCH_TYPE,
//! FWPM_PROVIDER0, FWPM_SUBLAYER0.

use core::ptr::null_mut;

use wfp_ffi::{
    FWP_BYTE_BLOB, FWP_CONDITION_FLAG_IS_LOOPBACK, FWP_MATCH_EQUAL, FWP_MATCH_FLAGS_ALL_SET, FWP_UINT8, FWP_UINT16,
    FWP_UINT32, FWP_VALUE0, FWP_VALUE0_u, FWPM_ACTION0, FWPM_CONDITION_FLAGS, FWPM_CONDITION_IP_PROTOCOL,
    FWPM_CONDITION_IP_REMOTE_PORT, FWPM_DISPLAY_DATA0, FWPM_FILTER_CONDITION0, FWPM_FILTER0, FWPM_FILTER0_CONTEXT,
    FWPM_PROVIDER0, FWPM_SUBLAYER0, GUID,
};

use crate::boot::{
    BootCondition, BootFilter, PROVIDER_FLAGS, PROVIDER_KEY, SUBLAYER_FLAGS, SUBLAYER_KEY, SUBLAYER_WEIGHT,
};

/// An unused condition slot.
pub const NO_CONDITION: FWPM_FILTER_CONDITION0 =
    FWPM_FILTER_CONDITION0 { fieldKey: GUID::new(0, 0, 0, [0; 8]), matchType: 0, conditionValue: FWP_VALUE0::EMPTY };

const EMPTY_BLOB: FWP_BYTE_BLOB = FWP_BYTE_BLOB { size: 0, data: null_mut() };

fn display(name: *mut u16) -> FWPM_DISPLAY_DATA0 {
    FWPM_DISPLAY_DATA0 { name, description: null_mut() }
}

/// A value of type `ty` whose union holds `set`'s member, the rest zero.
fn value(ty: u32, set: impl FnOnce(&mut FWP_VALUE0_u)) -> FWP_VALUE0 {
    let mut u = FWP_VALUE0_u { uint64: null_mut() };
    set(&mut u);
    FWP_VALUE0 { r#type: ty, u }
}

/// The `FWPM_FILTER_CONDITION0` of a boot condition.
pub fn condition(c: BootCondition) -> FWPM_FILTER_CONDITION0 {
    match c {
        BootCondition::Loopback => FWPM_FILTER_CONDITION0 {
            fieldKey: FWPM_CONDITION_FLAGS,
            matchType: FWP_MATCH_FLAGS_ALL_SET,
            conditionValue: value(FWP_UINT32, |u| u.uint32 = FWP_CONDITION_FLAG_IS_LOOPBACK),
        },
        BootCondition::Protocol(p) => FWPM_FILTER_CONDITION0 {
            fieldKey: FWPM_CONDITION_IP_PROTOCOL,
            matchType: FWP_MATCH_EQUAL,
            conditionValue: value(FWP_UINT8, |u| u.uint8 = p.0),
        },
        BootCondition::RemotePort(port) => FWPM_FILTER_CONDITION0 {
            fieldKey: FWPM_CONDITION_IP_REMOTE_PORT,
            matchType: FWP_MATCH_EQUAL,
            conditionValue: value(FWP_UINT16, |u| u.uint16 = port),
        },
    }
}

/// `FWPM_FILTER0` for `f`: its key, layer, our boot sublayer and provider
/// (`provider` holds [`PROVIDER_KEY`]), [`BootFilter::fwpm_flags`], an
/// `FWP_UINT8` weight, PERMIT or BLOCK, and its conditions written into
/// `conditions` (which the filter points at).
pub fn filter(
    f: &BootFilter,
    conditions: &mut [FWPM_FILTER_CONDITION0; 2],
    provider: &mut GUID,
    name: *mut u16,
) -> FWPM_FILTER0 {
    *provider = PROVIDER_KEY;
    let mut n = 0u32;
    for (slot, c) in conditions.iter_mut().zip(f.conditions.iter().flatten()) {
        *slot = condition(*c);
        n = n.saturating_add(1);
    }
    FWPM_FILTER0 {
        filterKey: f.key,
        displayData: display(name),
        flags: f.fwpm_flags(),
        providerKey: provider,
        providerData: EMPTY_BLOB,
        layerKey: f.layer.key(),
        subLayerKey: SUBLAYER_KEY,
        weight: value(FWP_UINT8, |u| u.uint8 = f.weight),
        numFilterConditions: n,
        filterCondition: if n == 0 { null_mut() } else { conditions.as_mut_ptr() },
        action: FWPM_ACTION0 { r#type: f.action, calloutKey: GUID::new(0, 0, 0, [0; 8]) },
        context: FWPM_FILTER0_CONTEXT { rawContext: 0 },
        reserved: null_mut(),
        filterId: 0,
        effectiveWeight: FWP_VALUE0::EMPTY,
    }
}

/// `FWPM_PROVIDER0` of our boot provider: persistent, no service name.
pub fn provider(name: *mut u16) -> FWPM_PROVIDER0 {
    FWPM_PROVIDER0 {
        providerKey: PROVIDER_KEY,
        displayData: display(name),
        flags: PROVIDER_FLAGS,
        providerData: EMPTY_BLOB,
        serviceName: null_mut(),
    }
}

/// `FWPM_SUBLAYER0` of our boot sublayer (`provider` holds [`PROVIDER_KEY`]).
pub fn sublayer(provider: &mut GUID, name: *mut u16) -> FWPM_SUBLAYER0 {
    *provider = PROVIDER_KEY;
    FWPM_SUBLAYER0 {
        subLayerKey: SUBLAYER_KEY,
        displayData: display(name),
        flags: SUBLAYER_FLAGS,
        providerKey: provider,
        providerData: EMPTY_BLOB,
        weight: SUBLAYER_WEIGHT,
    }
}

#[cfg(test)]
mod tests {
    use arbiter::Protocol;
    use arbiter::boot::{BootConfig, BootMode};
    use wfp_ffi::{FWP_ACTION_BLOCK, FWP_ACTION_PERMIT, FWPM_FILTER_FLAG_CLEAR_ACTION_RIGHT};

    use super::*;
    use crate::boot::{boot_filters, override_filter};
    use crate::filters::FilterLayer;

    #[test]
    fn filters_carry_their_conditions_and_weights() {
        let cfg = BootConfig { mode: BootMode::Block, ..BootConfig::default() };
        let mut name = [u16::from(b'x'), 0];
        for f in boot_filters(&cfg) {
            let mut conds = [NO_CONDITION; 2];
            let mut p = GUID::default();
            let w = filter(&f, &mut conds, &mut p, name.as_mut_ptr());
            assert_eq!(w.filterKey, f.key);
            assert_eq!(w.subLayerKey, SUBLAYER_KEY);
            assert_eq!(p, PROVIDER_KEY);
            assert_eq!(w.weight.r#type, FWP_UINT8);
            // SAFETY: the type says uint8.
            assert_eq!(unsafe { w.weight.u.uint8 }, f.weight);
            assert_eq!(w.numFilterConditions as usize, f.conditions.iter().flatten().count());
            assert_eq!(w.action.r#type, f.action);
            assert_eq!(w.flags & FWPM_FILTER_FLAG_CLEAR_ACTION_RIGHT != 0, f.action == FWP_ACTION_BLOCK);
            match f.conditions {
                [Some(BootCondition::Loopback), None] => {
                    assert_eq!(conds[0].fieldKey, FWPM_CONDITION_FLAGS);
                    assert_eq!(conds[0].matchType, FWP_MATCH_FLAGS_ALL_SET);
                    // SAFETY: the type says uint32.
                    assert_eq!(unsafe { conds[0].conditionValue.u.uint32 }, FWP_CONDITION_FLAG_IS_LOOPBACK);
                }
                [Some(BootCondition::Protocol(pr)), Some(BootCondition::RemotePort(port))] => {
                    assert_eq!(
                        (conds[0].fieldKey, conds[1].fieldKey),
                        (FWPM_CONDITION_IP_PROTOCOL, FWPM_CONDITION_IP_REMOTE_PORT)
                    );
                    // SAFETY: the type says uint8.
                    let got_protocol = unsafe { conds[0].conditionValue.u.uint8 };
                    // SAFETY: the type says uint16.
                    let got_port = unsafe { conds[1].conditionValue.u.uint16 };
                    assert_eq!((got_protocol, got_port), (pr.0, port));
                    assert!(pr == Protocol::UDP || pr == Protocol::TCP);
                }
                [None, None] => assert!(w.filterCondition.is_null()),
                other => panic!("unexpected conditions {other:?}"),
            }
        }
        let mut conds = [NO_CONDITION; 2];
        let mut p = GUID::default();
        let o = filter(&override_filter(FilterLayer::AuthConnectV6), &mut conds, &mut p, name.as_mut_ptr());
        assert_eq!((o.action.r#type, o.flags, o.numFilterConditions), (FWP_ACTION_PERMIT, 0, 0));
        assert_eq!(o.layerKey, FilterLayer::AuthConnectV6.key());
    }

    #[test]
    fn provider_and_sublayer_are_persistent_and_name_no_service() {
        let mut name = [0u16];
        let pr = provider(name.as_mut_ptr());
        assert!(pr.serviceName.is_null());
        assert_eq!(pr.flags, PROVIDER_FLAGS);
        let mut p = GUID::default();
        let s = sublayer(&mut p, name.as_mut_ptr());
        assert_eq!((s.weight, s.flags, p), (SUBLAYER_WEIGHT, SUBLAYER_FLAGS, PROVIDER_KEY));
    }
}
