//! What boot-time and persistent filters need: the `FWPM_*_FLAG_*` values,
//! the condition keys and match types a plain (non-callout) filter uses.
//!
//! Checked against learn.microsoft.com and the Windows SDK metadata
//! (fwpmtypes.h, fwpmu.h, fwptypes.h):
//! - `FWPM_FILTER0` flags: /windows/win32/api/fwpmtypes/ns-fwpmtypes-fwpm_filter0.
//!   `FWPM_FILTER_FLAG_PERSISTENT` "cannot be combined with
//!   FWPM_FILTER_FLAG_BOOTTIME"; a BOOTTIME filter is "enforced at
//!   boot-time, even before BFE starts".
//! - `FWPM_PROVIDER0` flags: /windows/win32/api/fwpmtypes/ns-fwpmtypes-fwpm_provider0;
//!   `FWPM_SUBLAYER0` flags: /windows/win32/api/fwpmtypes/ns-fwpmtypes-fwpm_sublayer0.
//! - `FWP_MATCH_TYPE`: /windows/win32/api/fwptypes/ne-fwptypes-fwp_match_type.
//! - Condition keys: "Filtering Condition Identifiers" (fwpmu.h).

use crate::types::GUID;

/// `FWPM_FILTER_FLAG_PERSISTENT`: kept by BFE across its restarts and
/// reboots, enforced once BFE runs.
pub const FWPM_FILTER_FLAG_PERSISTENT: u32 = 0x0000_0001;
/// `FWPM_FILTER_FLAG_BOOTTIME`: enforced from tcpip.sys start until BFE
/// starts, then removed.
pub const FWPM_FILTER_FLAG_BOOTTIME: u32 = 0x0000_0002;
/// `FWPM_FILTER_FLAG_HAS_PROVIDER_CONTEXT`.
pub const FWPM_FILTER_FLAG_HAS_PROVIDER_CONTEXT: u32 = 0x0000_0004;
/// `FWPM_FILTER_FLAG_CLEAR_ACTION_RIGHT`.
pub const FWPM_FILTER_FLAG_CLEAR_ACTION_RIGHT: u32 = 0x0000_0008;
/// `FWPM_FILTER_FLAG_PERMIT_IF_CALLOUT_UNREGISTERED`.
pub const FWPM_FILTER_FLAG_PERMIT_IF_CALLOUT_UNREGISTERED: u32 = 0x0000_0010;
/// `FWPM_FILTER_FLAG_DISABLED` (returned, never set by a caller).
pub const FWPM_FILTER_FLAG_DISABLED: u32 = 0x0000_0020;

/// `FWPM_PROVIDER_FLAG_PERSISTENT`.
pub const FWPM_PROVIDER_FLAG_PERSISTENT: u32 = 0x0000_0001;
/// `FWPM_SUBLAYER_FLAG_PERSISTENT`.
pub const FWPM_SUBLAYER_FLAG_PERSISTENT: u32 = 0x0000_0001;

/// `FWP_MATCH_TYPE`.
pub type FWP_MATCH_TYPE = u32;
/// `FWP_MATCH_EQUAL`.
pub const FWP_MATCH_EQUAL: FWP_MATCH_TYPE = 0;
/// `FWP_MATCH_FLAGS_ALL_SET`.
pub const FWP_MATCH_FLAGS_ALL_SET: FWP_MATCH_TYPE = 6;
/// `FWP_MATCH_FLAGS_ANY_SET`.
pub const FWP_MATCH_FLAGS_ANY_SET: FWP_MATCH_TYPE = 7;
/// `FWP_MATCH_NOT_EQUAL`.
pub const FWP_MATCH_NOT_EQUAL: FWP_MATCH_TYPE = 10;

/// `FWPM_CONDITION_IP_PROTOCOL` {3971ef2b-623e-4f9a-8cb1-6e79b806b9a7}.
pub const FWPM_CONDITION_IP_PROTOCOL: GUID =
    GUID::new(0x3971_ef2b, 0x623e, 0x4f9a, [0x8c, 0xb1, 0x6e, 0x79, 0xb8, 0x06, 0xb9, 0xa7]);
/// `FWPM_CONDITION_IP_REMOTE_PORT` {c35a604d-d22b-4e1a-91b4-68f674ee674b}.
pub const FWPM_CONDITION_IP_REMOTE_PORT: GUID =
    GUID::new(0xc35a_604d, 0xd22b, 0x4e1a, [0x91, 0xb4, 0x68, 0xf6, 0x74, 0xee, 0x67, 0x4b]);
/// `FWPM_CONDITION_IP_LOCAL_PORT` {0c1ba1af-5765-453f-af22-a8f791ac775b}.
pub const FWPM_CONDITION_IP_LOCAL_PORT: GUID =
    GUID::new(0x0c1b_a1af, 0x5765, 0x453f, [0xaf, 0x22, 0xa8, 0xf7, 0x91, 0xac, 0x77, 0x5b]);
/// `FWPM_CONDITION_FLAGS` {632ce23b-5167-435c-86d7-e903684aa80c}.
pub const FWPM_CONDITION_FLAGS: GUID =
    GUID::new(0x632c_e23b, 0x5167, 0x435c, [0x86, 0xd7, 0xe9, 0x03, 0x68, 0x4a, 0xa8, 0x0c]);
/// `FWPM_CONDITION_ALE_APP_ID` {d78e1e87-8644-4ea5-9437-d809ecefc971}.
pub const FWPM_CONDITION_ALE_APP_ID: GUID =
    GUID::new(0xd78e_1e87, 0x8644, 0x4ea5, [0x94, 0x37, 0xd8, 0x09, 0xec, 0xef, 0xc9, 0x71]);
