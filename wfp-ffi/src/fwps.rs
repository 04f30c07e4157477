//! The callout side (fwpsk.h / fwpstypes.h): what `classifyFn` receives and
//! returns, the writable connect-redirect data, and the constants we test.
//!
//! Checked against (x86_64), learn.microsoft.com:
//! - `FWPS_INCOMING_VALUES0`, `FWPS_INCOMING_VALUE0`:
//!   /windows/win32/api/fwpstypes/ns-fwpstypes-fwps_incoming_values0, .../ns-fwpstypes-fwps_incoming_value0
//! - `FWPS_INCOMING_METADATA_VALUES0`:
//!   /windows-hardware/drivers/ddi/fwpsk/ns-fwpsk-fwps_incoming_metadata_values0_
//!   Read with its version history: the vSwitch ids and `padding0..2` are
//!   *alternatives* (`#if NDIS_SUPPORT_NDIS630 ... #else ... #endif`), not a
//!   sequence as the flattened Syntax box shows; `localRedirectTargetPID` is a
//!   `DWORD` (a `u64` there shifts every later field by 8); the newest layout
//!   ends `vSwitchPacketContext, subProcessTag, reserved1` (an older page
//!   revision showed an `l2ConnectionProfileIndex` that the header no longer has).
//! - `FWPS_CLASSIFY_OUT0`: /windows/win32/api/fwpstypes/ns-fwpstypes-fwps_classify_out0
//! - `FWPS_CONNECT_REQUEST0`: /windows-hardware/drivers/ddi/fwpsk/ns-fwpsk-_fwps_connect_request0
//! - `FWPS_FILTER3`, `FWPS_ACTION0`: /windows/win32/api/fwpstypes/ns-fwpstypes-fwps_filter3
//! - `FWPS_CALLOUT3`, `FWPS_CALLOUT_CLASSIFY_FN3`: /windows-hardware/drivers/ddi/fwpsk/ns-fwpsk-fwps_callout3,
//!   .../nc-fwpsk-fwps_callout_classify_fn3
//! - Metadata field bits (`FWPS_METADATA_FIELD_*`), `FWP_CONDITION_FLAG_*`,
//!   `FWP_CALLOUT_FLAG_*`: the Windows SDK metadata values (fwpstypes.h /
//!   fwpsk.h), cross-checked against the "Metadata Field Identifiers" and
//!   "Filtering Condition Flags" pages.

use core::ffi::c_void;

use crate::types::{
    FWP_BYTE_BLOB, FWP_CONDITION_VALUE0, FWP_VALUE0, GUID, HANDLE, IP_ADDRESS_PREFIX, NTSTATUS, SCOPE_ID, SOCKADDR,
    SOCKADDR_STORAGE,
};

// ---- action types (fwptypes.h) ---------------------------------------------

/// `FWP_ACTION_TYPE`.
pub type FWP_ACTION_TYPE = u32;
/// `FWP_ACTION_FLAG_TERMINATING`.
pub const FWP_ACTION_FLAG_TERMINATING: FWP_ACTION_TYPE = 0x0000_1000;
/// `FWP_ACTION_FLAG_NON_TERMINATING`.
pub const FWP_ACTION_FLAG_NON_TERMINATING: FWP_ACTION_TYPE = 0x0000_2000;
/// `FWP_ACTION_FLAG_CALLOUT`.
pub const FWP_ACTION_FLAG_CALLOUT: FWP_ACTION_TYPE = 0x0000_4000;
/// `FWP_ACTION_BLOCK`.
pub const FWP_ACTION_BLOCK: FWP_ACTION_TYPE = 0x0000_0001 | FWP_ACTION_FLAG_TERMINATING;
/// `FWP_ACTION_PERMIT`.
pub const FWP_ACTION_PERMIT: FWP_ACTION_TYPE = 0x0000_0002 | FWP_ACTION_FLAG_TERMINATING;
/// `FWP_ACTION_CALLOUT_TERMINATING`.
pub const FWP_ACTION_CALLOUT_TERMINATING: FWP_ACTION_TYPE =
    0x0000_0003 | FWP_ACTION_FLAG_CALLOUT | FWP_ACTION_FLAG_TERMINATING;
/// `FWP_ACTION_CALLOUT_INSPECTION`.
pub const FWP_ACTION_CALLOUT_INSPECTION: FWP_ACTION_TYPE =
    0x0000_0004 | FWP_ACTION_FLAG_CALLOUT | FWP_ACTION_FLAG_NON_TERMINATING;
/// `FWP_ACTION_CALLOUT_UNKNOWN`.
pub const FWP_ACTION_CALLOUT_UNKNOWN: FWP_ACTION_TYPE = 0x0000_0005 | FWP_ACTION_FLAG_CALLOUT;
/// `FWP_ACTION_CONTINUE`.
pub const FWP_ACTION_CONTINUE: FWP_ACTION_TYPE = 0x0000_0006 | FWP_ACTION_FLAG_NON_TERMINATING;
/// `FWP_ACTION_NONE`.
pub const FWP_ACTION_NONE: FWP_ACTION_TYPE = 0x0000_0007;
/// `FWP_ACTION_NONE_NO_MATCH`.
pub const FWP_ACTION_NONE_NO_MATCH: FWP_ACTION_TYPE = 0x0000_0008;

// ---- classifyOut rights and flags ------------------------------------------

/// `FWPS_RIGHT_ACTION_WRITE`: the callout may write `actionType`.
pub const FWPS_RIGHT_ACTION_WRITE: u32 = 0x0000_0001;
/// `FWPS_CLASSIFY_OUT_FLAG_ABSORB`.
pub const FWPS_CLASSIFY_OUT_FLAG_ABSORB: u32 = 0x0000_0001;
/// `FWPS_CLASSIFY_FLAG_REAUTHORIZE_IF_MODIFIED_BY_OTHERS` (FwpsApplyModifiedLayerData0 `flags`).
pub const FWPS_CLASSIFY_FLAG_REAUTHORIZE_IF_MODIFIED_BY_OTHERS: u32 = 0x0000_0001;
/// `FWPS_FILTER_FLAG_CLEAR_ACTION_RIGHT`: clear the write right on permit too.
pub const FWPS_FILTER_FLAG_CLEAR_ACTION_RIGHT: u16 = 0x0001;

// ---- filtering condition flags (FWPS_FIELD_*_FLAGS) ------------------------

/// `FWP_CONDITION_FLAG_IS_LOOPBACK`.
pub const FWP_CONDITION_FLAG_IS_LOOPBACK: u32 = 0x0000_0001;
/// `FWP_CONDITION_FLAG_IS_IPSEC_SECURED`.
pub const FWP_CONDITION_FLAG_IS_IPSEC_SECURED: u32 = 0x0000_0002;
/// `FWP_CONDITION_FLAG_IS_REAUTHORIZE`.
pub const FWP_CONDITION_FLAG_IS_REAUTHORIZE: u32 = 0x0000_0004;
/// `FWP_CONDITION_FLAG_IS_WILDCARD_BIND`.
pub const FWP_CONDITION_FLAG_IS_WILDCARD_BIND: u32 = 0x0000_0008;
/// `FWP_CONDITION_FLAG_IS_RAW_ENDPOINT`.
pub const FWP_CONDITION_FLAG_IS_RAW_ENDPOINT: u32 = 0x0000_0010;
/// `FWP_CONDITION_FLAG_IS_CONNECTION_REDIRECTED`.
pub const FWP_CONDITION_FLAG_IS_CONNECTION_REDIRECTED: u32 = 0x0010_0000;
/// `FWP_CONDITION_FLAG_IS_PROXY_CONNECTION`.
pub const FWP_CONDITION_FLAG_IS_PROXY_CONNECTION: u32 = 0x0020_0000;
/// `FWP_CONDITION_FLAG_IS_APPCONTAINER_LOOPBACK`.
pub const FWP_CONDITION_FLAG_IS_APPCONTAINER_LOOPBACK: u32 = 0x0040_0000;
/// `FWP_CONDITION_FLAG_IS_NON_APPCONTAINER_LOOPBACK`.
pub const FWP_CONDITION_FLAG_IS_NON_APPCONTAINER_LOOPBACK: u32 = 0x0080_0000;

// ---- metadata field bits (currentMetadataValues) ---------------------------

/// `FWPS_METADATA_FIELD_DISCARD_REASON`.
pub const FWPS_METADATA_FIELD_DISCARD_REASON: u32 = 0x0000_0001;
/// `FWPS_METADATA_FIELD_FLOW_HANDLE`.
pub const FWPS_METADATA_FIELD_FLOW_HANDLE: u32 = 0x0000_0002;
/// `FWPS_METADATA_FIELD_IP_HEADER_SIZE`.
pub const FWPS_METADATA_FIELD_IP_HEADER_SIZE: u32 = 0x0000_0004;
/// `FWPS_METADATA_FIELD_PROCESS_PATH`.
pub const FWPS_METADATA_FIELD_PROCESS_PATH: u32 = 0x0000_0008;
/// `FWPS_METADATA_FIELD_TOKEN`.
pub const FWPS_METADATA_FIELD_TOKEN: u32 = 0x0000_0010;
/// `FWPS_METADATA_FIELD_PROCESS_ID`.
pub const FWPS_METADATA_FIELD_PROCESS_ID: u32 = 0x0000_0020;
/// `FWPS_METADATA_FIELD_SYSTEM_FLAGS`.
pub const FWPS_METADATA_FIELD_SYSTEM_FLAGS: u32 = 0x0000_0040;
/// `FWPS_METADATA_FIELD_RESERVED`.
pub const FWPS_METADATA_FIELD_RESERVED: u32 = 0x0000_0080;
/// `FWPS_METADATA_FIELD_SOURCE_INTERFACE_INDEX`.
pub const FWPS_METADATA_FIELD_SOURCE_INTERFACE_INDEX: u32 = 0x0000_0100;
/// `FWPS_METADATA_FIELD_DESTINATION_INTERFACE_INDEX`.
pub const FWPS_METADATA_FIELD_DESTINATION_INTERFACE_INDEX: u32 = 0x0000_0200;
/// `FWPS_METADATA_FIELD_TRANSPORT_HEADER_SIZE`.
pub const FWPS_METADATA_FIELD_TRANSPORT_HEADER_SIZE: u32 = 0x0000_0400;
/// `FWPS_METADATA_FIELD_COMPARTMENT_ID`.
pub const FWPS_METADATA_FIELD_COMPARTMENT_ID: u32 = 0x0000_0800;
/// `FWPS_METADATA_FIELD_FRAGMENT_DATA`.
pub const FWPS_METADATA_FIELD_FRAGMENT_DATA: u32 = 0x0000_1000;
/// `FWPS_METADATA_FIELD_PATH_MTU`.
pub const FWPS_METADATA_FIELD_PATH_MTU: u32 = 0x0000_2000;
/// `FWPS_METADATA_FIELD_COMPLETION_HANDLE`: required to pend.
pub const FWPS_METADATA_FIELD_COMPLETION_HANDLE: u32 = 0x0000_4000;
/// `FWPS_METADATA_FIELD_TRANSPORT_ENDPOINT_HANDLE`.
pub const FWPS_METADATA_FIELD_TRANSPORT_ENDPOINT_HANDLE: u32 = 0x0000_8000;
/// `FWPS_METADATA_FIELD_TRANSPORT_CONTROL_DATA`.
pub const FWPS_METADATA_FIELD_TRANSPORT_CONTROL_DATA: u32 = 0x0001_0000;
/// `FWPS_METADATA_FIELD_REMOTE_SCOPE_ID`.
pub const FWPS_METADATA_FIELD_REMOTE_SCOPE_ID: u32 = 0x0002_0000;
/// `FWPS_METADATA_FIELD_PACKET_DIRECTION`.
pub const FWPS_METADATA_FIELD_PACKET_DIRECTION: u32 = 0x0004_0000;
/// `FWPS_METADATA_FIELD_PACKET_SYSTEM_CRITICAL`.
pub const FWPS_METADATA_FIELD_PACKET_SYSTEM_CRITICAL: u32 = 0x0008_0000;
/// `FWPS_METADATA_FIELD_FORWARD_LAYER_OUTBOUND_PASS_THRU`.
pub const FWPS_METADATA_FIELD_FORWARD_LAYER_OUTBOUND_PASS_THRU: u32 = 0x0010_0000;
/// `FWPS_METADATA_FIELD_FORWARD_LAYER_INBOUND_PASS_THRU`.
pub const FWPS_METADATA_FIELD_FORWARD_LAYER_INBOUND_PASS_THRU: u32 = 0x0020_0000;
/// `FWPS_METADATA_FIELD_ALE_CLASSIFY_REQUIRED`.
pub const FWPS_METADATA_FIELD_ALE_CLASSIFY_REQUIRED: u32 = 0x0040_0000;
/// `FWPS_METADATA_FIELD_TRANSPORT_HEADER_INCLUDE_HEADER`.
pub const FWPS_METADATA_FIELD_TRANSPORT_HEADER_INCLUDE_HEADER: u32 = 0x0080_0000;
/// `FWPS_METADATA_FIELD_DESTINATION_PREFIX`.
pub const FWPS_METADATA_FIELD_DESTINATION_PREFIX: u32 = 0x0100_0000;
/// `FWPS_METADATA_FIELD_ETHER_FRAME_LENGTH`.
pub const FWPS_METADATA_FIELD_ETHER_FRAME_LENGTH: u32 = 0x0200_0000;
/// `FWPS_METADATA_FIELD_PARENT_ENDPOINT_HANDLE`.
pub const FWPS_METADATA_FIELD_PARENT_ENDPOINT_HANDLE: u32 = 0x0400_0000;
/// `FWPS_METADATA_FIELD_ICMP_ID_AND_SEQUENCE`.
pub const FWPS_METADATA_FIELD_ICMP_ID_AND_SEQUENCE: u32 = 0x0800_0000;
/// `FWPS_METADATA_FIELD_LOCAL_REDIRECT_TARGET_PID`.
pub const FWPS_METADATA_FIELD_LOCAL_REDIRECT_TARGET_PID: u32 = 0x1000_0000;
/// `FWPS_METADATA_FIELD_ORIGINAL_DESTINATION`.
pub const FWPS_METADATA_FIELD_ORIGINAL_DESTINATION: u32 = 0x2000_0000;
/// `FWPS_METADATA_FIELD_REDIRECT_RECORD_HANDLE`.
pub const FWPS_METADATA_FIELD_REDIRECT_RECORD_HANDLE: u32 = 0x4000_0000;
/// `FWPS_METADATA_FIELD_SUB_PROCESS_TAG`.
pub const FWPS_METADATA_FIELD_SUB_PROCESS_TAG: u32 = 0x8000_0000;

// ---- callout registration flags -------------------------------------------

/// `FWP_CALLOUT_FLAG_CONDITIONAL_ON_FLOW`.
pub const FWP_CALLOUT_FLAG_CONDITIONAL_ON_FLOW: u32 = 0x0000_0001;
/// `FWP_CALLOUT_FLAG_ALLOW_OFFLOAD`.
pub const FWP_CALLOUT_FLAG_ALLOW_OFFLOAD: u32 = 0x0000_0002;
/// `FWP_CALLOUT_FLAG_ENABLE_COMMIT_ADD_NOTIFY`.
pub const FWP_CALLOUT_FLAG_ENABLE_COMMIT_ADD_NOTIFY: u32 = 0x0000_0004;
/// `FWP_CALLOUT_FLAG_ALLOW_RECLASSIFY`.
pub const FWP_CALLOUT_FLAG_ALLOW_RECLASSIFY: u32 = 0x0000_0010;

// ---- redirect state ---------------------------------------------------------

/// `FWPS_CONNECTION_REDIRECT_STATE`.
pub type FWPS_CONNECTION_REDIRECT_STATE = u32;
/// `FWPS_CONNECTION_NOT_REDIRECTED`.
pub const FWPS_CONNECTION_NOT_REDIRECTED: FWPS_CONNECTION_REDIRECT_STATE = 0;
/// `FWPS_CONNECTION_REDIRECTED_BY_SELF`.
pub const FWPS_CONNECTION_REDIRECTED_BY_SELF: FWPS_CONNECTION_REDIRECT_STATE = 1;
/// `FWPS_CONNECTION_REDIRECTED_BY_OTHER`.
pub const FWPS_CONNECTION_REDIRECTED_BY_OTHER: FWPS_CONNECTION_REDIRECT_STATE = 2;
/// `FWPS_CONNECTION_PREVIOUSLY_REDIRECTED_BY_SELF`.
pub const FWPS_CONNECTION_PREVIOUSLY_REDIRECTED_BY_SELF: FWPS_CONNECTION_REDIRECT_STATE = 3;

/// `FWPS_CALLOUT_NOTIFY_TYPE`.
pub type FWPS_CALLOUT_NOTIFY_TYPE = u32;
/// `FWPS_CALLOUT_NOTIFY_ADD_FILTER`.
pub const FWPS_CALLOUT_NOTIFY_ADD_FILTER: FWPS_CALLOUT_NOTIFY_TYPE = 0;
/// `FWPS_CALLOUT_NOTIFY_DELETE_FILTER`.
pub const FWPS_CALLOUT_NOTIFY_DELETE_FILTER: FWPS_CALLOUT_NOTIFY_TYPE = 1;

/// `FWP_DIRECTION`.
pub type FWP_DIRECTION = u32;

// ---- structures --------------------------------------------------------------

/// `FWPS_INCOMING_VALUE0`.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct FWPS_INCOMING_VALUE0 {
    /// The value.
    pub value: FWP_VALUE0,
}

/// `FWPS_INCOMING_VALUES0`: the layer's fixed fields, indexed by the layer's field enum.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct FWPS_INCOMING_VALUES0 {
    /// `FWPS_LAYER_*` run-time layer id.
    pub layerId: u16,
    /// Entries at `incomingValue`.
    pub valueCount: u32,
    /// The array.
    pub incomingValue: *mut FWPS_INCOMING_VALUE0,
}

/// `FWPS_DISCARD_METADATA0`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct FWPS_DISCARD_METADATA0 {
    /// `FWPS_DISCARD_MODULE0`.
    pub discardModule: u32,
    /// Module-specific reason.
    pub discardReason: u32,
    /// Filter that discarded.
    pub filterId: u64,
}

/// `FWPS_INBOUND_FRAGMENT_METADATA0`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct FWPS_INBOUND_FRAGMENT_METADATA0 {
    /// IP identification.
    pub fragmentIdentification: u32,
    /// Offset.
    pub fragmentOffset: u16,
    /// Length.
    pub fragmentLength: u32,
}

/// The NDIS 6.30 vSwitch ids.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct FWPS_VSWITCH_IDS {
    /// `NDIS_SWITCH_PORT_ID vSwitchSourcePortId`.
    pub vSwitchSourcePortId: u32,
    /// `NDIS_SWITCH_NIC_INDEX vSwitchSourceNicIndex`.
    pub vSwitchSourceNicIndex: u16,
    /// `NDIS_SWITCH_PORT_ID vSwitchDestinationPortId`.
    pub vSwitchDestinationPortId: u32,
}

/// What a pre-NDIS-6.30 build sees in the same bytes.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct FWPS_VSWITCH_PADDING {
    /// `padding0`.
    pub padding0: u32,
    /// `padding1`.
    pub padding1: u16,
    /// `padding2`.
    pub padding2: u32,
}

/// The header's `#if (NDIS_SUPPORT_NDIS630) ids #else padding #endif`: two
/// spellings of the same 12 bytes, never both.
#[repr(C)]
#[derive(Clone, Copy)]
pub union FWPS_VSWITCH_OR_PADDING {
    /// NDIS 6.30 and later.
    pub ids: FWPS_VSWITCH_IDS,
    /// Older NDIS.
    pub padding: FWPS_VSWITCH_PADDING,
}

/// `FWPS_INCOMING_METADATA_VALUES0`, Windows 10 layout.
///
/// Read a member only when its `FWPS_METADATA_FIELD_*` bit is set in
/// `currentMetadataValues`.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct FWPS_INCOMING_METADATA_VALUES0 {
    /// Bitwise OR of `FWPS_METADATA_FIELD_*`: which members are valid.
    pub currentMetadataValues: u32,
    /// Internal.
    pub flags: u32,
    /// Reserved.
    pub reserved: u64,
    /// `FWPS_METADATA_FIELD_DISCARD_REASON`.
    pub discardMetadata: FWPS_DISCARD_METADATA0,
    /// `FWPS_METADATA_FIELD_FLOW_HANDLE`.
    pub flowHandle: u64,
    /// `FWPS_METADATA_FIELD_IP_HEADER_SIZE`.
    pub ipHeaderSize: u32,
    /// `FWPS_METADATA_FIELD_TRANSPORT_HEADER_SIZE`.
    pub transportHeaderSize: u32,
    /// `FWPS_METADATA_FIELD_PROCESS_PATH`.
    pub processPath: *mut FWP_BYTE_BLOB,
    /// `FWPS_METADATA_FIELD_TOKEN`.
    pub token: u64,
    /// `FWPS_METADATA_FIELD_PROCESS_ID`.
    pub processId: u64,
    /// `FWPS_METADATA_FIELD_SOURCE_INTERFACE_INDEX`.
    pub sourceInterfaceIndex: u32,
    /// `FWPS_METADATA_FIELD_DESTINATION_INTERFACE_INDEX`.
    pub destinationInterfaceIndex: u32,
    /// `FWPS_METADATA_FIELD_COMPARTMENT_ID` (`ULONG`).
    pub compartmentId: u32,
    /// `FWPS_METADATA_FIELD_FRAGMENT_DATA`.
    pub fragmentMetadata: FWPS_INBOUND_FRAGMENT_METADATA0,
    /// `FWPS_METADATA_FIELD_PATH_MTU` (`ULONG`).
    pub pathMtu: u32,
    /// `FWPS_METADATA_FIELD_COMPLETION_HANDLE`: what FwpsPendOperation0 needs.
    pub completionHandle: HANDLE,
    /// `FWPS_METADATA_FIELD_TRANSPORT_ENDPOINT_HANDLE`.
    pub transportEndpointHandle: u64,
    /// `FWPS_METADATA_FIELD_REMOTE_SCOPE_ID`.
    pub remoteScopeId: SCOPE_ID,
    /// `FWPS_METADATA_FIELD_TRANSPORT_CONTROL_DATA` (`WSACMSGHDR*`).
    pub controlData: *mut c_void,
    /// Bytes at `controlData` (`ULONG`).
    pub controlDataLength: u32,
    /// `FWPS_METADATA_FIELD_PACKET_DIRECTION`.
    pub packetDirection: FWP_DIRECTION,
    /// Raw-socket IP header.
    pub headerIncludeHeader: *mut c_void,
    /// Its length (`ULONG`).
    pub headerIncludeHeaderLength: u32,
    /// `FWPS_METADATA_FIELD_DESTINATION_PREFIX`.
    pub destinationPrefix: IP_ADDRESS_PREFIX,
    /// `FWPS_METADATA_FIELD_ETHER_FRAME_LENGTH`.
    pub frameLength: u16,
    /// `FWPS_METADATA_FIELD_PARENT_ENDPOINT_HANDLE`.
    pub parentEndpointHandle: u64,
    /// `FWPS_METADATA_FIELD_ICMP_ID_AND_SEQUENCE`.
    pub icmpIdAndSequence: u32,
    /// `FWPS_METADATA_FIELD_LOCAL_REDIRECT_TARGET_PID`: a `DWORD`.
    pub localRedirectTargetPID: u32,
    /// `FWPS_METADATA_FIELD_ORIGINAL_DESTINATION` (`SOCKADDR*`).
    pub originalDestination: *mut SOCKADDR,
    /// `FWPS_METADATA_FIELD_REDIRECT_RECORD_HANDLE`: for FwpsQueryConnectionRedirectState0.
    pub redirectRecords: HANDLE,
    /// `FWPS_L2_METADATA_FIELD_*` bits.
    pub currentL2MetadataValues: u32,
    /// L2 flags.
    pub l2Flags: u32,
    /// L2 MAC header size.
    pub ethernetMacHeaderSize: u32,
    /// 802.11 operation mode.
    pub wiFiOperationMode: u32,
    /// vSwitch ids or padding (alternatives).
    pub vSwitch: FWPS_VSWITCH_OR_PADDING,
    /// vSwitch packet context.
    pub vSwitchPacketContext: HANDLE,
    /// `FWPS_METADATA_FIELD_SUB_PROCESS_TAG`.
    pub subProcessTag: *mut c_void,
    /// Reserved.
    pub reserved1: u64,
}

/// `FWPS_CLASSIFY_OUT0`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FWPS_CLASSIFY_OUT0 {
    /// The suggested action.
    pub actionType: FWP_ACTION_TYPE,
    /// Reserved.
    pub outContext: u64,
    /// Reserved.
    pub filterId: u64,
    /// `FWPS_RIGHT_ACTION_WRITE`.
    pub rights: u32,
    /// `FWPS_CLASSIFY_OUT_FLAG_*`.
    pub flags: u32,
    /// Reserved.
    pub reserved: u32,
}

/// `FWPS_CONNECT_REQUEST0`: the writable layer data at ALE_CONNECT_REDIRECT.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct FWPS_CONNECT_REQUEST0 {
    /// Local address and port.
    pub localAddressAndPort: SOCKADDR_STORAGE,
    /// Remote address and port: what a redirect rewrites.
    pub remoteAddressAndPort: SOCKADDR_STORAGE,
    /// Port reservation token.
    pub portReservationToken: u64,
    /// `DWORD`: the process that will accept the redirected connection.
    pub localRedirectTargetPID: u32,
    /// Read-only: the previous version of this data, or null.
    pub previousVersion: *mut Self,
    /// The filter id of whoever produced this version.
    pub modifierFilterId: u64,
    /// From FwpsRedirectHandleCreate0.
    pub localRedirectHandle: HANDLE,
    /// Pool memory whose ownership passes to WFP after apply.
    pub localRedirectContext: *mut c_void,
    /// Bytes at `localRedirectContext` (`SIZE_T`).
    pub localRedirectContextSize: usize,
}

/// `FWPS_ACTION0`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct FWPS_ACTION0 {
    /// `FWP_ACTION_TYPE`.
    pub r#type: FWP_ACTION_TYPE,
    /// The callout's run-time id.
    pub calloutId: u32,
}

/// `FWPS_FILTER_CONDITION0`.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct FWPS_FILTER_CONDITION0 {
    /// Field index at the filter's layer.
    pub fieldId: u16,
    /// Reserved.
    pub reserved: u16,
    /// `FWP_MATCH_TYPE`.
    pub matchType: u32,
    /// The value.
    pub conditionValue: FWP_CONDITION_VALUE0,
}

/// `FWPS_FILTER3`.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct FWPS_FILTER3 {
    /// Run-time filter id: `modifierFilterId` compares to it.
    pub filterId: u64,
    /// Weight.
    pub weight: FWP_VALUE0,
    /// Sublayer weight.
    pub subLayerWeight: u16,
    /// `FWPS_FILTER_FLAG_*`.
    pub flags: u16,
    /// Entries at `filterCondition`.
    pub numFilterConditions: u32,
    /// Conditions.
    pub filterCondition: *mut FWPS_FILTER_CONDITION0,
    /// Action.
    pub action: FWPS_ACTION0,
    /// Filter context.
    pub context: u64,
    /// `FWPM_PROVIDER_CONTEXT3*`.
    pub providerContext: *mut c_void,
}

/// `FWPS_CALLOUT_CLASSIFY_FN3`.
pub type FWPS_CALLOUT_CLASSIFY_FN3 = Option<
    unsafe extern "system" fn(
        inFixedValues: *const FWPS_INCOMING_VALUES0,
        inMetaValues: *const FWPS_INCOMING_METADATA_VALUES0,
        layerData: *mut c_void,
        classifyContext: *const c_void,
        filter: *const FWPS_FILTER3,
        flowContext: u64,
        classifyOut: *mut FWPS_CLASSIFY_OUT0,
    ),
>;

/// `FWPS_CALLOUT_NOTIFY_FN3`.
pub type FWPS_CALLOUT_NOTIFY_FN3 = Option<
    unsafe extern "system" fn(
        notifyType: FWPS_CALLOUT_NOTIFY_TYPE,
        filterKey: *const GUID,
        filter: *mut FWPS_FILTER3,
    ) -> NTSTATUS,
>;

/// `FWPS_CALLOUT_FLOW_DELETE_NOTIFY_FN0`.
pub type FWPS_CALLOUT_FLOW_DELETE_NOTIFY_FN0 =
    Option<unsafe extern "system" fn(layerId: u16, calloutId: u32, flowContext: u64)>;

/// `FWPS_CALLOUT3`.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct FWPS_CALLOUT3 {
    /// Our callout GUID.
    pub calloutKey: GUID,
    /// `FWP_CALLOUT_FLAG_*`.
    pub flags: u32,
    /// classifyFn3.
    pub classifyFn: FWPS_CALLOUT_CLASSIFY_FN3,
    /// notifyFn3.
    pub notifyFn: FWPS_CALLOUT_NOTIFY_FN3,
    /// flowDeleteFn.
    pub flowDeleteFn: FWPS_CALLOUT_FLOW_DELETE_NOTIFY_FN0,
}

#[cfg(target_arch = "x86_64")]
const _: () = {
    use core::mem::{offset_of, size_of};
    // FWPS_INCOMING_VALUE0 / FWPS_INCOMING_VALUES0 (fwpstypes.h).
    assert!(size_of::<FWPS_INCOMING_VALUE0>() == 16);
    assert!(size_of::<FWPS_INCOMING_VALUES0>() == 16);
    assert!(offset_of!(FWPS_INCOMING_VALUES0, valueCount) == 4);
    assert!(offset_of!(FWPS_INCOMING_VALUES0, incomingValue) == 8);

    // FWPS_INCOMING_METADATA_VALUES0 (fwpsk.h, Windows 10).
    type M = FWPS_INCOMING_METADATA_VALUES0;
    assert!(size_of::<FWPS_DISCARD_METADATA0>() == 16);
    assert!(size_of::<FWPS_INBOUND_FRAGMENT_METADATA0>() == 12);
    assert!(size_of::<FWPS_VSWITCH_OR_PADDING>() == 12);
    assert!(offset_of!(M, flags) == 4);
    assert!(offset_of!(M, reserved) == 8);
    assert!(offset_of!(M, discardMetadata) == 16);
    assert!(offset_of!(M, flowHandle) == 32);
    assert!(offset_of!(M, ipHeaderSize) == 40);
    assert!(offset_of!(M, transportHeaderSize) == 44);
    assert!(offset_of!(M, processPath) == 48);
    assert!(offset_of!(M, token) == 56);
    assert!(offset_of!(M, processId) == 64);
    assert!(offset_of!(M, sourceInterfaceIndex) == 72);
    assert!(offset_of!(M, destinationInterfaceIndex) == 76);
    assert!(offset_of!(M, compartmentId) == 80);
    assert!(offset_of!(M, fragmentMetadata) == 84);
    assert!(offset_of!(M, pathMtu) == 96);
    assert!(offset_of!(M, completionHandle) == 104);
    assert!(offset_of!(M, transportEndpointHandle) == 112);
    assert!(offset_of!(M, remoteScopeId) == 120);
    assert!(offset_of!(M, controlData) == 128);
    assert!(offset_of!(M, controlDataLength) == 136);
    assert!(offset_of!(M, packetDirection) == 140);
    assert!(offset_of!(M, headerIncludeHeader) == 144);
    assert!(offset_of!(M, headerIncludeHeaderLength) == 152);
    assert!(offset_of!(M, destinationPrefix) == 156);
    assert!(offset_of!(M, frameLength) == 188);
    assert!(offset_of!(M, parentEndpointHandle) == 192);
    assert!(offset_of!(M, icmpIdAndSequence) == 200);
    // The Portmaster trap: a u64 here would push originalDestination to 216.
    assert!(offset_of!(M, localRedirectTargetPID) == 204);
    assert!(offset_of!(M, originalDestination) == 208);
    assert!(offset_of!(M, redirectRecords) == 216);
    assert!(offset_of!(M, currentL2MetadataValues) == 224);
    assert!(offset_of!(M, l2Flags) == 228);
    assert!(offset_of!(M, ethernetMacHeaderSize) == 232);
    assert!(offset_of!(M, wiFiOperationMode) == 236);
    assert!(offset_of!(M, vSwitch) == 240);
    assert!(offset_of!(M, vSwitchPacketContext) == 256);
    assert!(offset_of!(M, subProcessTag) == 264);
    assert!(offset_of!(M, reserved1) == 272);
    assert!(size_of::<M>() == 280);

    // FWPS_CLASSIFY_OUT0 (fwpstypes.h).
    assert!(offset_of!(FWPS_CLASSIFY_OUT0, outContext) == 8);
    assert!(offset_of!(FWPS_CLASSIFY_OUT0, filterId) == 16);
    assert!(offset_of!(FWPS_CLASSIFY_OUT0, rights) == 24);
    assert!(offset_of!(FWPS_CLASSIFY_OUT0, flags) == 28);
    assert!(offset_of!(FWPS_CLASSIFY_OUT0, reserved) == 32);
    assert!(size_of::<FWPS_CLASSIFY_OUT0>() == 40);

    // FWPS_CONNECT_REQUEST0 (fwpsk.h).
    type C = FWPS_CONNECT_REQUEST0;
    assert!(offset_of!(C, remoteAddressAndPort) == 128);
    assert!(offset_of!(C, portReservationToken) == 256);
    assert!(offset_of!(C, localRedirectTargetPID) == 264);
    assert!(offset_of!(C, previousVersion) == 272);
    assert!(offset_of!(C, modifierFilterId) == 280);
    assert!(offset_of!(C, localRedirectHandle) == 288);
    assert!(offset_of!(C, localRedirectContext) == 296);
    assert!(offset_of!(C, localRedirectContextSize) == 304);
    assert!(size_of::<C>() == 312);

    // FWPS_ACTION0, FWPS_FILTER_CONDITION0, FWPS_FILTER3 (fwpstypes.h).
    assert!(size_of::<FWPS_ACTION0>() == 8);
    assert!(offset_of!(FWPS_FILTER_CONDITION0, matchType) == 4);
    assert!(offset_of!(FWPS_FILTER_CONDITION0, conditionValue) == 8);
    assert!(size_of::<FWPS_FILTER_CONDITION0>() == 24);
    assert!(offset_of!(FWPS_FILTER3, weight) == 8);
    assert!(offset_of!(FWPS_FILTER3, subLayerWeight) == 24);
    assert!(offset_of!(FWPS_FILTER3, flags) == 26);
    assert!(offset_of!(FWPS_FILTER3, numFilterConditions) == 28);
    assert!(offset_of!(FWPS_FILTER3, filterCondition) == 32);
    assert!(offset_of!(FWPS_FILTER3, action) == 40);
    assert!(offset_of!(FWPS_FILTER3, context) == 48);
    assert!(offset_of!(FWPS_FILTER3, providerContext) == 56);
    assert!(size_of::<FWPS_FILTER3>() == 64);

    // FWPS_CALLOUT3 (fwpsk.h): function pointers are nullable (Option<fn>).
    assert!(offset_of!(FWPS_CALLOUT3, flags) == 16);
    assert!(offset_of!(FWPS_CALLOUT3, classifyFn) == 24);
    assert!(offset_of!(FWPS_CALLOUT3, notifyFn) == 32);
    assert!(offset_of!(FWPS_CALLOUT3, flowDeleteFn) == 40);
    assert!(size_of::<FWPS_CALLOUT3>() == 48);
};
