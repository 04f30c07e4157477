//! Indications built as WFP lays them out: an incoming-value array as long
//! as the layer's `MAX`, `FWP_EMPTY` except at the layer's own indexes,
//! metadata with presence bits, blobs and SIDs behind pointers
//! (FWPS_INCOMING_VALUES0, FWPS_INCOMING_METADATA_VALUES0 pages).

use std::ffi::c_void;
use std::net::{IpAddr, SocketAddr};

use arbiter_callout::adapter::RawClassify;
use arbiter_callout::filters::FilterLayer;
use arbiter_callout::sockaddr::to_storage;
use wfp_ffi::fields::{
    ALE_AUTH_CONNECT_V4, ALE_AUTH_CONNECT_V6, ALE_CONNECT_REDIRECT_V4, ALE_CONNECT_REDIRECT_V6,
    ALE_ENDPOINT_CLOSURE_V4, ALE_ENDPOINT_CLOSURE_V6,
};
use wfp_ffi::*;

/// What the engine knows of a flow when it classifies it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FlowInfo {
    /// IP protocol number.
    pub protocol: u8,
    /// Local address.
    pub local: SocketAddr,
    /// Remote address (at auth-connect: after redirection).
    pub remote: SocketAddr,
    /// Process id.
    pub pid: u64,
    /// FWPM_CONDITION_ALE_APP_ID.
    pub app: String,
    /// FWPM_CONDITION_ALE_ORIGINAL_APP_ID.
    pub original_app: String,
    /// Transport endpoint handle.
    pub endpoint: u64,
    /// FWP_CONDITION_FLAG_IS_REAUTHORIZE.
    pub reauthorize: bool,
    /// Auth-connect: FWP_CONDITION_FLAG_IS_CONNECTION_REDIRECTED.
    pub redirected: bool,
    /// FWPS_METADATA_FIELD_LOCAL_REDIRECT_TARGET_PID, when present.
    pub target_pid: Option<u32>,
    /// FWPS_METADATA_FIELD_ORIGINAL_DESTINATION, when present.
    pub original_destination: Option<SocketAddr>,
    /// FWPM_CONDITION_ALE_PACKAGE_ID: the binary SID (`None`: the field is
    /// left empty).
    pub package: Option<Vec<u8>>,
}

fn wide(s: &str) -> Vec<u8> {
    let mut v: Vec<u8> = s.encode_utf16().flat_map(u16::to_le_bytes).collect();
    v.extend_from_slice(&[0, 0]);
    v
}

/// Owns every buffer one indication points into.
pub struct Indication {
    values: Vec<FWPS_INCOMING_VALUE0>,
    fixed: Box<FWPS_INCOMING_VALUES0>,
    meta: Box<FWPS_INCOMING_METADATA_VALUES0>,
    filter: Box<FWPS_FILTER3>,
    /// The classifyOut the callout is given.
    pub out: Box<FWPS_CLASSIFY_OUT0>,
    blobs: Vec<Box<FWP_BYTE_BLOB>>,
    bytes: Vec<Vec<u8>>,
    arrays: Vec<Box<FWP_BYTE_ARRAY16>>,
    dest: Box<SOCKADDR_STORAGE>,
}

impl core::fmt::Debug for Indication {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("Indication").field("values", &self.values.len()).finish_non_exhaustive()
    }
}

struct Idx {
    max: usize,
    app: usize,
    original_app: Option<usize>,
    local_ip: usize,
    local_port: usize,
    protocol: usize,
    remote_ip: usize,
    remote_port: usize,
    flags: Option<usize>,
    package: usize,
}

macro_rules! idx {
    ($l:ident, orig: $o:expr, flags: $f:expr) => {{
        use $l as L;
        Idx {
            max: L::MAX,
            app: L::ALE_APP_ID,
            original_app: $o,
            local_ip: L::IP_LOCAL_ADDRESS,
            local_port: L::IP_LOCAL_PORT,
            protocol: L::IP_PROTOCOL,
            remote_ip: L::IP_REMOTE_ADDRESS,
            remote_port: L::IP_REMOTE_PORT,
            flags: $f,
            package: L::ALE_PACKAGE_ID,
        }
    }};
}

macro_rules! bind_idx {
    ($l:ident) => {{
        use wfp_ffi::fields::$l as L;
        Idx {
            max: L::MAX,
            app: L::ALE_APP_ID,
            original_app: None,
            local_ip: L::IP_LOCAL_ADDRESS,
            local_port: L::IP_LOCAL_PORT,
            protocol: L::IP_PROTOCOL,
            remote_ip: usize::MAX,
            remote_port: usize::MAX,
            flags: Some(L::FLAGS),
            package: L::ALE_PACKAGE_ID,
        }
    }};
}

fn indexes(layer: FilterLayer) -> Idx {
    match layer {
        FilterLayer::ConnectRedirectV4 => {
            idx!(ALE_CONNECT_REDIRECT_V4, orig: Some(ALE_CONNECT_REDIRECT_V4::ALE_ORIGINAL_APP_ID), flags: Some(ALE_CONNECT_REDIRECT_V4::FLAGS))
        }
        FilterLayer::ConnectRedirectV6 => {
            idx!(ALE_CONNECT_REDIRECT_V6, orig: Some(ALE_CONNECT_REDIRECT_V6::ALE_ORIGINAL_APP_ID), flags: Some(ALE_CONNECT_REDIRECT_V6::FLAGS))
        }
        FilterLayer::AuthConnectV4 => {
            idx!(ALE_AUTH_CONNECT_V4, orig: Some(ALE_AUTH_CONNECT_V4::ALE_ORIGINAL_APP_ID), flags: Some(ALE_AUTH_CONNECT_V4::FLAGS))
        }
        FilterLayer::AuthConnectV6 => {
            idx!(ALE_AUTH_CONNECT_V6, orig: Some(ALE_AUTH_CONNECT_V6::ALE_ORIGINAL_APP_ID), flags: Some(ALE_AUTH_CONNECT_V6::FLAGS))
        }
        FilterLayer::EndpointClosureV4 => idx!(ALE_ENDPOINT_CLOSURE_V4, orig: None, flags: None),
        FilterLayer::EndpointClosureV6 => idx!(ALE_ENDPOINT_CLOSURE_V6, orig: None, flags: None),
        // No remote address or port at bind: out-of-range indexes are skipped.
        FilterLayer::BindRedirectV4 => bind_idx!(ALE_BIND_REDIRECT_V4),
        FilterLayer::BindRedirectV6 => bind_idx!(ALE_BIND_REDIRECT_V6),
    }
}

impl Indication {
    /// The indication of `flow` at `layer` for the filter `filter_id` (with
    /// its action type and flags), classifyOut as the engine hands it over.
    ///
    /// `records` is the metadata's redirect-records handle (connect-redirect:
    /// the classify id, which [`crate::Runtime`] resolves).
    pub fn new(
        layer: FilterLayer,
        flow: &FlowInfo,
        filter_id: u64,
        filter_action: FWP_ACTION_TYPE,
        filter_flags: u16,
        classify_out: FWPS_CLASSIFY_OUT0,
        records: Option<u64>,
    ) -> Self {
        let ix = indexes(layer);
        // SAFETY: all-zero is a valid value for every member (integers, raw pointers, unions of them).
        let meta: FWPS_INCOMING_METADATA_VALUES0 = unsafe { core::mem::zeroed() };
        let filter = FWPS_FILTER3 {
            filterId: filter_id,
            weight: FWP_VALUE0::EMPTY,
            subLayerWeight: 0,
            flags: filter_flags,
            numFilterConditions: 0,
            filterCondition: std::ptr::null_mut(),
            action: FWPS_ACTION0 { r#type: filter_action, calloutId: 1 },
            context: 0,
            providerContext: std::ptr::null_mut(),
        };
        let mut ind = Self {
            values: vec![FWPS_INCOMING_VALUE0 { value: FWP_VALUE0::EMPTY }; ix.max],
            fixed: Box::new(FWPS_INCOMING_VALUES0 { layerId: 0, valueCount: 0, incomingValue: std::ptr::null_mut() }),
            meta: Box::new(meta),
            filter: Box::new(filter),
            out: Box::new(classify_out),
            blobs: Vec::new(),
            bytes: Vec::new(),
            arrays: Vec::new(),
            dest: Box::new(SOCKADDR_STORAGE::ZERO),
        };
        ind.blob(ix.app, wide(&flow.app));
        if let Some(o) = ix.original_app {
            ind.blob(o, wide(&flow.original_app));
        }
        ind.ip(ix.local_ip, flow.local.ip());
        ind.set(ix.local_port, FWP_UINT16, FWP_VALUE0_u { uint16: flow.local.port() });
        ind.set(ix.protocol, FWP_UINT8, FWP_VALUE0_u { uint8: flow.protocol });
        ind.ip(ix.remote_ip, flow.remote.ip());
        ind.set(ix.remote_port, FWP_UINT16, FWP_VALUE0_u { uint16: flow.remote.port() });
        ind.meta.currentMetadataValues |=
            FWPS_METADATA_FIELD_TRANSPORT_ENDPOINT_HANDLE | FWPS_METADATA_FIELD_PROCESS_ID;
        ind.meta.transportEndpointHandle = flow.endpoint;
        ind.meta.processId = flow.pid;
        let mut cond = 0u32;
        if flow.reauthorize {
            cond |= FWP_CONDITION_FLAG_IS_REAUTHORIZE;
        }
        if flow.redirected {
            cond |= FWP_CONDITION_FLAG_IS_CONNECTION_REDIRECTED;
        }
        if let Some(pid) = flow.target_pid {
            ind.meta.currentMetadataValues |= FWPS_METADATA_FIELD_LOCAL_REDIRECT_TARGET_PID;
            ind.meta.localRedirectTargetPID = pid;
        }
        if let Some(dest) = flow.original_destination {
            ind.meta.currentMetadataValues |= FWPS_METADATA_FIELD_ORIGINAL_DESTINATION;
            *ind.dest = to_storage(&dest);
            ind.meta.originalDestination = (&raw mut *ind.dest).cast::<SOCKADDR>();
        }
        if let Some(sid) = &flow.package {
            let mut data = sid.clone();
            let p = data.as_mut_ptr().cast::<c_void>();
            ind.bytes.push(data);
            ind.set(ix.package, FWP_SID, FWP_VALUE0_u { sid: p });
        }
        if let Some(f) = ix.flags {
            ind.set(f, FWP_UINT32, FWP_VALUE0_u { uint32: cond });
        }
        if let Some(r) = records {
            ind.set_redirect_records(r);
        }
        ind
    }

    /// Sets the metadata's redirect-records handle (the classify id the
    /// runtime resolves records by).
    pub fn set_redirect_records(&mut self, records: u64) {
        self.meta.currentMetadataValues |= FWPS_METADATA_FIELD_REDIRECT_RECORD_HANDLE;
        self.meta.redirectRecords = std::ptr::without_provenance_mut(usize::try_from(records).unwrap_or(0));
    }

    /// Makes the value at `index` `FWP_EMPTY` (an indication the adapter
    /// cannot read, for tests).
    pub fn set_empty(&mut self, index: usize) {
        self.set(index, FWP_EMPTY, FWP_VALUE0_u { uint8: 0 });
    }

    fn set(&mut self, index: usize, r#type: FWP_DATA_TYPE, u: FWP_VALUE0_u) {
        if let Some(v) = self.values.get_mut(index) {
            v.value = FWP_VALUE0 { r#type, u };
        }
    }

    fn ip(&mut self, i: usize, ip: IpAddr) {
        match ip {
            IpAddr::V4(a) => self.set(i, FWP_UINT32, FWP_VALUE0_u { uint32: u32::from(a) }),
            IpAddr::V6(a) => {
                let mut b = Box::new(FWP_BYTE_ARRAY16 { byteArray16: a.octets() });
                let p: *mut FWP_BYTE_ARRAY16 = &raw mut *b;
                self.arrays.push(b);
                self.set(i, FWP_BYTE_ARRAY16_TYPE, FWP_VALUE0_u { byteArray16: p });
            }
        }
    }

    fn blob(&mut self, i: usize, bytes: Vec<u8>) {
        let mut data = bytes;
        let size = u32::try_from(data.len()).unwrap_or(0);
        let mut b = Box::new(FWP_BYTE_BLOB { size, data: data.as_mut_ptr() });
        let p: *mut FWP_BYTE_BLOB = &raw mut *b;
        self.bytes.push(data);
        self.blobs.push(b);
        self.set(i, FWP_BYTE_BLOB_TYPE, FWP_VALUE0_u { byteBlob: p });
    }

    /// The classifyFn arguments, with `classify_context` as given.
    pub fn raw(&mut self, classify_context: u64) -> RawClassify {
        self.fixed.valueCount = u32::try_from(self.values.len()).unwrap_or(0);
        self.fixed.incomingValue = self.values.as_mut_ptr();
        RawClassify {
            values: &raw const *self.fixed,
            meta: &raw const *self.meta,
            classify_context: std::ptr::without_provenance::<c_void>(usize::try_from(classify_context).unwrap_or(0)),
            filter: &raw const *self.filter,
            classify_out: &raw mut *self.out,
        }
    }
}
