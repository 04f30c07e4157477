//! Reading an indication: incoming values by the layer's own field indexes,
//! metadata by presence bit, the previousVersion chain.
//!
//! Everything variable-sized is borrowed from WFP's buffers for the length of
//! the classify (`'a`), as the core's inputs expect. Every read checks the
//! value's type tag before touching the union, so a value of an unexpected
//! type is an error naming the field, never a misread.

use core::fmt;
use core::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6};
use core::ptr::NonNull;

use arbiter::flow::{AppId, Flow, PreviousChain, PreviousEntry, Protocol, SID_MAX_SUB_AUTHORITIES, Sid};
use wfp_ffi::fields::{
    ALE_AUTH_CONNECT_V4 as AC4, ALE_AUTH_CONNECT_V6 as AC6, ALE_CONNECT_REDIRECT_V4 as CR4,
    ALE_CONNECT_REDIRECT_V6 as CR6, ALE_ENDPOINT_CLOSURE_V4 as EC4, ALE_ENDPOINT_CLOSURE_V6 as EC6,
};
use wfp_ffi::{
    FWP_BYTE_ARRAY16_TYPE, FWP_BYTE_BLOB, FWP_BYTE_BLOB_TYPE, FWP_EMPTY, FWP_SID, FWP_UINT8, FWP_UINT16, FWP_UINT32,
    FWP_VALUE0, FWPS_CONNECT_REQUEST0, FWPS_INCOMING_METADATA_VALUES0, FWPS_INCOMING_VALUE0, FWPS_INCOMING_VALUES0,
    FWPS_METADATA_FIELD_LOCAL_REDIRECT_TARGET_PID, FWPS_METADATA_FIELD_ORIGINAL_DESTINATION,
    FWPS_METADATA_FIELD_PROCESS_ID, FWPS_METADATA_FIELD_REDIRECT_RECORD_HANDLE, FWPS_METADATA_FIELD_REMOTE_SCOPE_ID,
    FWPS_METADATA_FIELD_TRANSPORT_ENDPOINT_HANDLE, HANDLE,
};

use crate::sockaddr::read_sockaddr;

/// The layer's address family (which of the V4/V6 callouts was invoked).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Family {
    /// `*_V4`.
    V4,
    /// `*_V6`.
    V6,
}

/// What went wrong reading an indication.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReadErrorKind {
    /// A pointer WFP should have passed was null.
    Null,
    /// The field index is past `valueCount`, or the metadata bit is clear.
    Missing,
    /// The value's `FWP_DATA_TYPE` is not the one this field has.
    WrongType(u32),
    /// A SID with a bad revision or sub-authority count.
    BadSid,
    /// A socket address of an unknown family.
    BadAddress,
    /// FwpsQueryConnectionRedirectState0 returned a value we do not know.
    BadRedirectState(u32),
    /// The previousVersion chain did not end within [`MAX_CHAIN_WALK`] hops.
    ChainTooDeep,
}

/// An indication we could not read: which field and why. The adapter then
/// leaves the flow alone and counts it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ReadError {
    /// The field (incoming value or metadata member) by its WFP name.
    pub field: &'static str,
    /// Why.
    pub kind: ReadErrorKind,
}

impl fmt::Display for ReadError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "indication field {}: ", self.field)?;
        match self.kind {
            ReadErrorKind::Null => f.write_str("null pointer"),
            ReadErrorKind::Missing => f.write_str("not present"),
            ReadErrorKind::WrongType(t) => write!(f, "unexpected FWP_DATA_TYPE {t}"),
            ReadErrorKind::BadSid => f.write_str("malformed SID"),
            ReadErrorKind::BadAddress => f.write_str("socket address of unknown family"),
            ReadErrorKind::BadRedirectState(v) => write!(f, "unknown redirect state {v}"),
            ReadErrorKind::ChainTooDeep => write!(f, "previousVersion chain longer than {MAX_CHAIN_WALK}"),
        }
    }
}

impl core::error::Error for ReadError {}

const fn err(field: &'static str, kind: ReadErrorKind) -> ReadError {
    ReadError { field, kind }
}

/// The most previousVersion hops walked before the chain is taken for corrupt
/// (a cycle). Far beyond any real chain; the core keeps 16 distinct entries.
pub const MAX_CHAIN_WALK: u32 = 4096;

/// The field indexes one layer needs; built from that layer's own enum only.
#[derive(Clone, Copy, Debug)]
pub struct Indexes {
    app: usize,
    local_addr: usize,
    local_port: usize,
    protocol: usize,
    remote_addr: usize,
    remote_port: usize,
    flags: usize,
    original_app: Option<usize>,
    package: usize,
}

impl Indexes {
    /// FWPS_FIELDS_ALE_CONNECT_REDIRECT_V4/V6.
    pub const fn connect_redirect(family: Family) -> Self {
        match family {
            Family::V4 => Self {
                app: CR4::ALE_APP_ID,
                local_addr: CR4::IP_LOCAL_ADDRESS,
                local_port: CR4::IP_LOCAL_PORT,
                protocol: CR4::IP_PROTOCOL,
                remote_addr: CR4::IP_REMOTE_ADDRESS,
                remote_port: CR4::IP_REMOTE_PORT,
                flags: CR4::FLAGS,
                original_app: Some(CR4::ALE_ORIGINAL_APP_ID),
                package: CR4::ALE_PACKAGE_ID,
            },
            Family::V6 => Self {
                app: CR6::ALE_APP_ID,
                local_addr: CR6::IP_LOCAL_ADDRESS,
                local_port: CR6::IP_LOCAL_PORT,
                protocol: CR6::IP_PROTOCOL,
                remote_addr: CR6::IP_REMOTE_ADDRESS,
                remote_port: CR6::IP_REMOTE_PORT,
                flags: CR6::FLAGS,
                original_app: Some(CR6::ALE_ORIGINAL_APP_ID),
                package: CR6::ALE_PACKAGE_ID,
            },
        }
    }

    /// FWPS_FIELDS_ALE_AUTH_CONNECT_V4/V6.
    pub const fn auth_connect(family: Family) -> Self {
        match family {
            Family::V4 => Self {
                app: AC4::ALE_APP_ID,
                local_addr: AC4::IP_LOCAL_ADDRESS,
                local_port: AC4::IP_LOCAL_PORT,
                protocol: AC4::IP_PROTOCOL,
                remote_addr: AC4::IP_REMOTE_ADDRESS,
                remote_port: AC4::IP_REMOTE_PORT,
                flags: AC4::FLAGS,
                original_app: Some(AC4::ALE_ORIGINAL_APP_ID),
                package: AC4::ALE_PACKAGE_ID,
            },
            Family::V6 => Self {
                app: AC6::ALE_APP_ID,
                local_addr: AC6::IP_LOCAL_ADDRESS,
                local_port: AC6::IP_LOCAL_PORT,
                protocol: AC6::IP_PROTOCOL,
                remote_addr: AC6::IP_REMOTE_ADDRESS,
                remote_port: AC6::IP_REMOTE_PORT,
                flags: AC6::FLAGS,
                original_app: Some(AC6::ALE_ORIGINAL_APP_ID),
                package: AC6::ALE_PACKAGE_ID,
            },
        }
    }

    /// FWPS_FIELDS_ALE_ENDPOINT_CLOSURE_V4/V6 (no original app id there).
    pub const fn endpoint_closure(family: Family) -> Self {
        match family {
            Family::V4 => Self {
                app: EC4::ALE_APP_ID,
                local_addr: EC4::IP_LOCAL_ADDRESS,
                local_port: EC4::IP_LOCAL_PORT,
                protocol: EC4::IP_PROTOCOL,
                remote_addr: EC4::IP_REMOTE_ADDRESS,
                remote_port: EC4::IP_REMOTE_PORT,
                flags: EC4::FLAGS,
                original_app: None,
                package: EC4::ALE_PACKAGE_ID,
            },
            Family::V6 => Self {
                app: EC6::ALE_APP_ID,
                local_addr: EC6::IP_LOCAL_ADDRESS,
                local_port: EC6::IP_LOCAL_PORT,
                protocol: EC6::IP_PROTOCOL,
                remote_addr: EC6::IP_REMOTE_ADDRESS,
                remote_port: EC6::IP_REMOTE_PORT,
                flags: EC6::FLAGS,
                original_app: None,
                package: EC6::ALE_PACKAGE_ID,
            },
        }
    }
}

/// One indication's values and metadata, borrowed for the classify.
#[derive(Clone, Copy)]
pub struct Indication<'a> {
    values: &'a [FWPS_INCOMING_VALUE0],
    meta: &'a FWPS_INCOMING_METADATA_VALUES0,
    family: Family,
    indexes: Indexes,
}

impl<'a> Indication<'a> {
    /// Borrows what classifyFn was given.
    ///
    /// # Safety
    ///
    /// `values` and `meta` must be null or point to the structures WFP passed
    /// to classifyFn, and everything they point to (the value array of
    /// `valueCount` entries, blobs, SIDs, addresses) must stay valid and
    /// unchanged for `'a`. WFP guarantees this until classifyFn returns.
    pub unsafe fn from_raw(
        values: *const FWPS_INCOMING_VALUES0,
        meta: *const FWPS_INCOMING_METADATA_VALUES0,
        family: Family,
        indexes: Indexes,
    ) -> Result<Self, ReadError> {
        // SAFETY: null or valid for 'a (contract).
        let values = unsafe { values.as_ref() }.ok_or(err("inFixedValues", ReadErrorKind::Null))?;
        // SAFETY: null or valid for 'a (contract).
        let meta = unsafe { meta.as_ref() }.ok_or(err("inMetaValues", ReadErrorKind::Null))?;
        let count = usize::try_from(values.valueCount).map_err(|_| err("valueCount", ReadErrorKind::Missing))?;
        let array = if count == 0 {
            &[][..]
        } else {
            let ptr = NonNull::new(values.incomingValue).ok_or(err("incomingValue", ReadErrorKind::Null))?;
            // SAFETY: WFP passes `valueCount` initialised entries at
            // `incomingValue`, valid for 'a (contract).
            unsafe { core::slice::from_raw_parts(ptr.as_ptr().cast_const(), count) }
        };
        Ok(Self { values: array, meta, family, indexes })
    }

    /// The layer's family.
    pub const fn family(&self) -> Family {
        self.family
    }

    fn value(&self, index: usize, field: &'static str) -> Result<&'a FWP_VALUE0, ReadError> {
        self.values.get(index).map(|v| &v.value).ok_or(err(field, ReadErrorKind::Missing))
    }

    fn u8_at(&self, index: usize, field: &'static str) -> Result<u8, ReadError> {
        let v = self.value(index, field)?;
        if v.r#type != FWP_UINT8 {
            return Err(err(field, ReadErrorKind::WrongType(v.r#type)));
        }
        // SAFETY: the tag says `uint8` is the member WFP wrote.
        Ok(unsafe { v.u.uint8 })
    }

    fn u16_at(&self, index: usize, field: &'static str) -> Result<u16, ReadError> {
        let v = self.value(index, field)?;
        if v.r#type != FWP_UINT16 {
            return Err(err(field, ReadErrorKind::WrongType(v.r#type)));
        }
        // SAFETY: the tag says `uint16` is the member WFP wrote.
        Ok(unsafe { v.u.uint16 })
    }

    fn u32_at(&self, index: usize, field: &'static str) -> Result<u32, ReadError> {
        let v = self.value(index, field)?;
        if v.r#type != FWP_UINT32 {
            return Err(err(field, ReadErrorKind::WrongType(v.r#type)));
        }
        // SAFETY: the tag says `uint32` is the member WFP wrote.
        Ok(unsafe { v.u.uint32 })
    }

    /// An IP address: `FWP_UINT32` in host order at V4, a pointer to
    /// `FWP_BYTE_ARRAY16` in network order at V6.
    fn ip_at(&self, index: usize, field: &'static str) -> Result<IpAddr, ReadError> {
        match self.family {
            Family::V4 => Ok(IpAddr::V4(Ipv4Addr::from(self.u32_at(index, field)?))),
            Family::V6 => {
                let v = self.value(index, field)?;
                if v.r#type != FWP_BYTE_ARRAY16_TYPE {
                    return Err(err(field, ReadErrorKind::WrongType(v.r#type)));
                }
                // SAFETY: the tag says `byteArray16` is the member WFP wrote.
                let p = unsafe { v.u.byteArray16 };
                // SAFETY: a non-null byteArray16 points to 16 bytes valid for 'a.
                let bytes = unsafe { p.as_ref() }.ok_or(err(field, ReadErrorKind::Null))?;
                Ok(IpAddr::V6(Ipv6Addr::from(bytes.byteArray16)))
            }
        }
    }

    /// A byte blob's bytes; `None` for `FWP_EMPTY`.
    fn blob_at(&self, index: usize, field: &'static str) -> Result<Option<&'a [u8]>, ReadError> {
        let v = self.value(index, field)?;
        match v.r#type {
            FWP_EMPTY => Ok(None),
            FWP_BYTE_BLOB_TYPE => {
                // SAFETY: the tag says `byteBlob` is the member WFP wrote.
                let p = unsafe { v.u.byteBlob };
                // SAFETY: a non-null blob pointer is valid for 'a (contract).
                let blob = unsafe { p.as_ref() }.ok_or(err(field, ReadErrorKind::Null))?;
                // SAFETY: `blob` was handed to us by WFP for 'a.
                unsafe { blob_bytes(blob) }.map(Some).ok_or(err(field, ReadErrorKind::Null))
            }
            other => Err(err(field, ReadErrorKind::WrongType(other))),
        }
    }

    /// A SID; `None` for `FWP_EMPTY` and for the NULL SID (S-1-0-0) WFP
    /// reports for processes outside an AppContainer.
    fn sid_at(&self, index: usize, field: &'static str) -> Result<Option<Sid<'a>>, ReadError> {
        let v = self.value(index, field)?;
        match v.r#type {
            FWP_EMPTY => Ok(None),
            FWP_SID => {
                // SAFETY: the tag says `sid` is the member WFP wrote.
                let p = unsafe { v.u.sid }.cast::<u8>();
                // SAFETY: a non-null SID pointer is a whole SID valid for 'a.
                let bytes = unsafe { sid_bytes(p) }.ok_or(err(field, ReadErrorKind::BadSid))?;
                let sid = Sid::from_bytes(bytes).ok_or(err(field, ReadErrorKind::BadSid))?;
                let null_sid = sid.authority() == 0 && sid.sub_authorities().all(|s| s == 0);
                Ok((!null_sid).then_some(sid))
            }
            other => Err(err(field, ReadErrorKind::WrongType(other))),
        }
    }

    fn has(&self, bit: u32) -> bool {
        self.meta.currentMetadataValues & bit != 0
    }

    /// `FWPS_FIELD_*_FLAGS` (the condition flags).
    pub fn flags(&self) -> Result<u32, ReadError> {
        self.u32_at(self.indexes.flags, "FLAGS")
    }

    /// `FWPS_METADATA_FIELD_TRANSPORT_ENDPOINT_HANDLE`: required, it keys the core's tables.
    pub fn endpoint(&self) -> Result<u64, ReadError> {
        if !self.has(FWPS_METADATA_FIELD_TRANSPORT_ENDPOINT_HANDLE) {
            return Err(err("transportEndpointHandle", ReadErrorKind::Missing));
        }
        Ok(self.meta.transportEndpointHandle)
    }

    /// `FWPS_METADATA_FIELD_PROCESS_ID` (0 when absent: never a proxy PID).
    pub fn pid(&self) -> u64 {
        if self.has(FWPS_METADATA_FIELD_PROCESS_ID) { self.meta.processId } else { 0 }
    }

    /// `FWPS_METADATA_FIELD_REDIRECT_RECORD_HANDLE`.
    pub fn redirect_records(&self) -> Option<HANDLE> {
        (self.has(FWPS_METADATA_FIELD_REDIRECT_RECORD_HANDLE) && !self.meta.redirectRecords.is_null())
            .then_some(self.meta.redirectRecords)
    }

    /// `FWPS_METADATA_FIELD_LOCAL_REDIRECT_TARGET_PID` (a DWORD).
    pub fn target_pid(&self) -> Option<u64> {
        self.has(FWPS_METADATA_FIELD_LOCAL_REDIRECT_TARGET_PID).then(|| u64::from(self.meta.localRedirectTargetPID))
    }

    /// `FWPS_METADATA_FIELD_ORIGINAL_DESTINATION`.
    pub fn original_destination(&self) -> Result<Option<SocketAddr>, ReadError> {
        if !self.has(FWPS_METADATA_FIELD_ORIGINAL_DESTINATION) {
            return Ok(None);
        }
        let p = self.meta.originalDestination.cast_const();
        if p.is_null() {
            return Err(err("originalDestination", ReadErrorKind::Null));
        }
        // SAFETY: with its bit set, originalDestination points to a socket
        // address (a SOCKADDR_STORAGE) valid for the classify.
        unsafe { read_sockaddr(p) }.map(Some).ok_or(err("originalDestination", ReadErrorKind::BadAddress))
    }

    /// The socket: protocol, addresses, endpoint, PID, app ids, package.
    pub fn flow(&self) -> Result<Flow<'a>, ReadError> {
        let mut flow = BLANK_FLOW;
        self.read_flow_into(&mut flow)?;
        Ok(flow)
    }

    /// [`Self::flow`], read into `flow` in place: classifyFn builds its
    /// input where it stays instead of copying the flow (136 bytes) across
    /// its small kernel stack. On error `flow` is partly written.
    pub fn read_flow_into(&self, flow: &mut Flow<'a>) -> Result<(), ReadError> {
        let ix = &self.indexes;
        flow.protocol = Protocol(self.u8_at(ix.protocol, "IP_PROTOCOL")?);
        let local_ip = self.ip_at(ix.local_addr, "IP_LOCAL_ADDRESS")?;
        let local_port = self.u16_at(ix.local_port, "IP_LOCAL_PORT")?;
        flow.local = SocketAddr::new(local_ip, local_port);
        let remote_ip = self.ip_at(ix.remote_addr, "IP_REMOTE_ADDRESS")?;
        let remote_port = self.u16_at(ix.remote_port, "IP_REMOTE_PORT")?;
        flow.remote = match remote_ip {
            IpAddr::V6(ip) => {
                let scope = if self.has(FWPS_METADATA_FIELD_REMOTE_SCOPE_ID) { self.meta.remoteScopeId } else { 0 };
                SocketAddr::V6(SocketAddrV6::new(ip, remote_port, 0, scope))
            }
            ip @ IpAddr::V4(_) => SocketAddr::new(ip, remote_port),
        };
        let app = AppId::from_utf16le(self.blob_at(ix.app, "ALE_APP_ID")?.unwrap_or(&[]));
        flow.app = app;
        // Not proxied: WFP reports the app itself (and the closure layer has no such field).
        flow.original_app = match ix.original_app {
            Some(i) => self.blob_at(i, "ALE_ORIGINAL_APP_ID")?.map_or(app, AppId::from_utf16le),
            None => app,
        };
        flow.package = self.sid_at(ix.package, "ALE_PACKAGE_ID")?;
        flow.endpoint = self.endpoint()?;
        flow.pid = self.pid();
        Ok(())
    }
}

/// A flow before [`Indication::read_flow_into`] fills it in.
pub const BLANK_FLOW: Flow<'static> = Flow {
    protocol: Protocol(0),
    local: SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 0)),
    remote: SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 0)),
    endpoint: 0,
    pid: 0,
    app: AppId::EMPTY,
    original_app: AppId::EMPTY,
    package: None,
};

/// The bytes of an `FWP_BYTE_BLOB`; `None` when `data` is null but `size` is not 0.
///
/// # Safety
///
/// `blob.data` must be null or point to `blob.size` readable bytes valid for `'a`.
pub unsafe fn blob_bytes<'a>(blob: &FWP_BYTE_BLOB) -> Option<&'a [u8]> {
    let len = usize::try_from(blob.size).ok()?;
    match NonNull::new(blob.data) {
        // SAFETY: `size` bytes at `data`, valid for 'a (contract).
        Some(p) => Some(unsafe { core::slice::from_raw_parts(p.as_ptr().cast_const(), len) }),
        None if len == 0 => Some(&[]),
        None => None,
    }
}

/// A binary SID's bytes, sized by its sub-authority count.
///
/// # Safety
///
/// `p` must be null or point to a SID (8-byte header plus its
/// sub-authorities) valid for `'a`.
pub unsafe fn sid_bytes<'a>(p: *const u8) -> Option<&'a [u8]> {
    if p.is_null() {
        return None;
    }
    // SAFETY: a SID starts with revision and count bytes (contract), so
    // the byte after `p` is readable.
    let count = usize::from(unsafe { p.wrapping_add(1).read() });
    if count > SID_MAX_SUB_AUTHORITIES {
        return None;
    }
    let len = count.checked_mul(4)?.checked_add(8)?;
    // SAFETY: the SID's length follows from its count (contract).
    Some(unsafe { core::slice::from_raw_parts(p, len) })
}

/// Walks `FWPS_CONNECT_REQUEST0.previousVersion` to its end, newest first,
/// mapping any of `own_filters` to `own_filter` (the id the core compares).
///
/// # Safety
///
/// `request` must be the writable connect request of the classify in
/// progress: it and its `previousVersion` list are WFP's and valid until apply.
pub unsafe fn walk_chain(
    request: NonNull<FWPS_CONNECT_REQUEST0>,
    own_filters: &[u64],
    own_filter: u64,
) -> Result<PreviousChain, ReadError> {
    let mut chain = PreviousChain::new();
    // SAFETY: as this function's contract.
    unsafe { walk_chain_into(request, own_filters, own_filter, &mut chain) }.map(|()| chain)
}

/// [`walk_chain`] into `chain`, which must start empty (the chain is some
/// 140 bytes: classifyFn walks it into the adapter's state rather than onto
/// its small kernel stack). On error the chain is left empty.
///
/// # Safety
///
/// As for [`walk_chain`].
pub unsafe fn walk_chain_into(
    request: NonNull<FWPS_CONNECT_REQUEST0>,
    own_filters: &[u64],
    own_filter: u64,
    chain: &mut PreviousChain,
) -> Result<(), ReadError> {
    // SAFETY: valid until apply (contract).
    let mut next = unsafe { request.as_ref() }.previousVersion.cast_const();
    let mut hops = 0u32;
    // SAFETY: each non-null previousVersion is a connect request valid until apply (contract).
    while let Some(v) = unsafe { next.as_ref() } {
        hops = hops.saturating_add(1);
        if hops > MAX_CHAIN_WALK {
            *chain = PreviousChain::new();
            return Err(err("previousVersion", ReadErrorKind::ChainTooDeep));
        }
        // 0 is never one of our run-time ids: before `set_own_filters` runs
        // the list holds zeros, and an unmodified version may carry 0.
        let ours = v.modifierFilterId != 0 && own_filters.contains(&v.modifierFilterId);
        let filter = if ours { own_filter } else { v.modifierFilterId };
        chain.push(PreviousEntry { filter, local_redirect_handle: !v.localRedirectHandle.is_null() });
        next = v.previousVersion.cast_const();
    }
    Ok(())
}
