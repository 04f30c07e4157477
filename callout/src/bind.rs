//! ALE_BIND_REDIRECT: an inspection-only callout that notices when another
//! vendor has moved a socket's local address, and audits who did it, from
//! what and to what (audit record kind 6, [`arbiter::audit::RebindRecord`]).
//!
//! We never rewrite a bind: the filter is `FWP_ACTION_CALLOUT_INSPECTION`
//! ([`crate::filters::FILTERS`]), and the FWPS_ACTION0 page says such a
//! callout's classifyFn returns only CONTINUE. Seeing who changed the bind
//! needs the request's modification history, and the only way to it is the
//! writable layer data:
//!
//! - FWPS_BIND_REQUEST0 (learn.microsoft.com, fwpsk.h): `previousVersion`
//!   "records the modification history of the bind request"; each version's
//!   `modifierFilterId` is the `FilterId` of the filter that made it.
//! - FwpsAcquireWritableLayerDataPointer0, Remarks: acquiring sets
//!   `actionType = FWP_ACTION_BLOCK` and clears `FWPS_RIGHT_ACTION_WRITE`,
//!   and every acquire needs a matching FwpsApplyModifiedLayerData0 "even if
//!   the callout driver did not modify the data". So we apply the data
//!   unchanged, write CONTINUE back and give the write right back exactly as
//!   we found it (WFPSampler restores it the same way), and release the
//!   classify handle.
//! - Without the write right we do not acquire at all (the seed: a callout
//!   must not modify the data when the right is absent; acquiring is the
//!   first step of modifying), so a bind after a hard permit above us is not
//!   seen. That is counted, not audited.
//!
//! What the history holds is not fully documented. The page says the list
//! is "preinitialized ... with the index set to the record for the current
//! FWPS_BIND_REQUEST0 data", which leaves open whether the application's own
//! request appears as the oldest entry (with `modifierFilterId` 0). We take
//! "from" from that entry when it is there, and otherwise from the incoming
//! values' IP_LOCAL_ADDRESS / IP_LOCAL_PORT (what the application asked
//! for); the WFP model in the lab offers both readings.

use core::ffi::c_void;
use core::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use core::ptr::NonNull;

use arbiter::audit::{AuditRecord, Event, RebindRecord};
use arbiter::{AppId, Instant, Policy, Protocol};
use wfp_ffi::fields::{ALE_BIND_REDIRECT_V4 as B4, ALE_BIND_REDIRECT_V6 as B6};
use wfp_ffi::{
    FWP_ACTION_CONTINUE, FWP_BYTE_ARRAY16_TYPE, FWP_BYTE_BLOB_TYPE, FWP_UINT8, FWP_UINT16, FWP_UINT32, FWP_VALUE0,
    FWPS_BIND_REQUEST0, FWPS_CLASSIFY_OUT0, FWPS_INCOMING_VALUE0, FWPS_METADATA_FIELD_PROCESS_ID,
    FWPS_RIGHT_ACTION_WRITE, NTSTATUS,
};

use crate::adapter::{Callout, Family, RawClassify};
use crate::read::blob_bytes;
use crate::sockaddr::from_storage;

/// The most versions we walk before giving up (a corrupt or cyclic list).
pub const MAX_BIND_CHAIN: u32 = 64;

/// The Fwps calls the bind inspection makes. The driver implements it over
/// the real imports, the WFP model over its bind layer.
pub trait FwpsBind {
    /// `FwpsAcquireClassifyHandle0(classifyContext, 0, &handle)`.
    fn acquire_bind_classify_handle(&mut self, classify_context: *const c_void) -> Result<u64, NTSTATUS>;

    /// `FwpsAcquireWritableLayerDataPointer0` at ALE_BIND_REDIRECT, where the
    /// data is an `FWPS_BIND_REQUEST0`.
    fn acquire_writable_bind_request(
        &mut self,
        classify_handle: u64,
        filter_id: u64,
        classify_out: &mut FWPS_CLASSIFY_OUT0,
    ) -> Result<NonNull<FWPS_BIND_REQUEST0>, NTSTATUS>;

    /// `FwpsApplyModifiedLayerData0(handle, data, 0)`.
    fn apply_bind_request(&mut self, classify_handle: u64, data: NonNull<FWPS_BIND_REQUEST0>);

    /// `FwpsReleaseClassifyHandle0(handle)`.
    fn release_bind_classify_handle(&mut self, classify_handle: u64);
}

/// What the history of one bind request says.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Rebind {
    /// The address the application asked for (`None`: not in the history).
    pub from: Option<SocketAddr>,
    /// The address in force now.
    pub to: SocketAddr,
    /// The newest modifier that is not one of ours.
    pub by: u64,
    /// How many versions other filters made.
    pub changes: u32,
}

/// Why the history could not be read.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ChainError {
    /// An address is not IPv4 or IPv6.
    BadAddress,
    /// More than [`MAX_BIND_CHAIN`] versions.
    TooDeep,
}

/// Reads the history behind `request`: `None` when no filter other than
/// `own` changed it.
///
/// # Safety
///
/// `request` must be the writable bind request of the classify in
/// progress: it and its `previousVersion` list are WFP's and valid until
/// apply.
pub unsafe fn read_history(request: NonNull<FWPS_BIND_REQUEST0>, own: &[u64]) -> Result<Option<Rebind>, ChainError> {
    // SAFETY: valid until apply (contract).
    let top = unsafe { request.as_ref() };
    let to = from_storage(&top.localAddressAndPort).ok_or(ChainError::BadAddress)?;
    let mut next = top.previousVersion.cast_const();
    let (mut by, mut changes, mut from, mut walked) = (0u64, 0u32, None, 0u32);
    // SAFETY: each non-null previousVersion is a bind request valid until apply (contract).
    while let Some(v) = unsafe { next.as_ref() } {
        walked = walked.saturating_add(1);
        if walked > MAX_BIND_CHAIN {
            return Err(ChainError::TooDeep);
        }
        let id = v.modifierFilterId;
        if id == 0 {
            // The application's own request.
            from = Some(from_storage(&v.localAddressAndPort).ok_or(ChainError::BadAddress)?);
        } else if !own.contains(&id) {
            if by == 0 {
                by = id;
            }
            changes = changes.saturating_add(1);
        }
        next = v.previousVersion.cast_const();
    }
    Ok((changes > 0).then_some(Rebind { from, to, by, changes }))
}

/// Counters of the bind inspection.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct BindCounters {
    /// Bind classifications seen.
    pub binds: u64,
    /// Rebinds by others, audited.
    pub rebinds: u64,
    /// Not inspected: the write right was already gone.
    pub no_write_right: u64,
    /// Not inspected: handle or layer data unavailable, or unreadable values.
    pub unreadable: u64,
}

/// The incoming values the record needs, by the bind layer's own indexes.
struct BindValues<'a> {
    values: &'a [FWPS_INCOMING_VALUE0],
    family: Family,
}

impl<'a> BindValues<'a> {
    const fn idx(&self) -> (usize, usize, usize, usize) {
        match self.family {
            Family::V4 => (B4::ALE_APP_ID, B4::IP_LOCAL_ADDRESS, B4::IP_LOCAL_PORT, B4::IP_PROTOCOL),
            Family::V6 => (B6::ALE_APP_ID, B6::IP_LOCAL_ADDRESS, B6::IP_LOCAL_PORT, B6::IP_PROTOCOL),
        }
    }

    fn value(&self, i: usize) -> Option<&'a FWP_VALUE0> {
        self.values.get(i).map(|v| &v.value)
    }

    fn protocol(&self) -> Option<Protocol> {
        let v = self.value(self.idx().3)?;
        if v.r#type != FWP_UINT8 {
            return None;
        }
        // SAFETY: the tag says `uint8` is the member WFP wrote.
        Some(Protocol(unsafe { v.u.uint8 }))
    }

    fn app(&self) -> AppId<'a> {
        let bytes = self.value(self.idx().0).and_then(|v| {
            if v.r#type != FWP_BYTE_BLOB_TYPE {
                return None;
            }
            // SAFETY: the tag says `byteBlob` is the member WFP wrote.
            let p = unsafe { v.u.byteBlob };
            // SAFETY: a non-null blob is valid for the classify (contract).
            let blob = unsafe { p.as_ref() }?;
            // SAFETY: as above.
            unsafe { blob_bytes(blob) }
        });
        AppId::from_utf16le(bytes.unwrap_or(&[]))
    }

    fn local(&self) -> Option<SocketAddr> {
        let (_, a, p, _) = self.idx();
        let ip = {
            let v = self.value(a)?;
            match self.family {
                // SAFETY: the tag says `uint32` is the member WFP wrote.
                Family::V4 if v.r#type == FWP_UINT32 => IpAddr::V4(Ipv4Addr::from(unsafe { v.u.uint32 })),
                Family::V6 if v.r#type == FWP_BYTE_ARRAY16_TYPE => {
                    // SAFETY: the tag says `byteArray16` is the member WFP wrote.
                    let p = unsafe { v.u.byteArray16 };
                    // SAFETY: non-null, it points to 16 bytes (contract).
                    let b = unsafe { p.as_ref() }?;
                    IpAddr::V6(Ipv6Addr::from(b.byteArray16))
                }
                _ => return None,
            }
        };
        let v = self.value(p)?;
        if v.r#type != FWP_UINT16 {
            return None;
        }
        // SAFETY: the tag says `uint16` is the member WFP wrote.
        Some(SocketAddr::new(ip, unsafe { v.u.uint16 }))
    }
}

impl<P: Policy> Callout<P> {
    /// classifyFn at ALE_BIND_REDIRECT_V4/V6 (our INSPECTION filter): audits
    /// another vendor's rebind, never changes the bind, and leaves
    /// classifyOut as it found it (CONTINUE, rights unchanged).
    ///
    /// `own_bind_filters` are our bind filters' run-time ids (never counted
    /// as another vendor's change). Returns whether a rebind was audited.
    ///
    /// # Safety
    ///
    /// `raw` holds the pointers classifyFn was given, valid until it returns.
    pub unsafe fn classify_bind_redirect<F: FwpsBind>(
        &mut self,
        fwps: &mut F,
        family: Family,
        raw: &RawClassify,
        own_bind_filters: &[u64],
        counters: &mut BindCounters,
        now: Instant,
    ) -> bool {
        counters.binds = counters.binds.saturating_add(1);
        // SAFETY: WFP's classifyOut, valid and exclusive until classifyFn returns.
        let Some(out) = (unsafe { raw.classify_out.as_mut() }) else {
            counters.unreadable = counters.unreadable.saturating_add(1);
            return false;
        };
        let rights = out.rights;
        out.actionType = FWP_ACTION_CONTINUE;
        if rights & FWPS_RIGHT_ACTION_WRITE == 0 {
            counters.no_write_right = counters.no_write_right.saturating_add(1);
            return false;
        }
        // SAFETY: the filter WFP passed, valid until classifyFn returns.
        let Some(filter_id) = (unsafe { raw.filter.as_ref() }).map(|f| f.filterId) else {
            counters.unreadable = counters.unreadable.saturating_add(1);
            return false;
        };
        let Ok(handle) = fwps.acquire_bind_classify_handle(raw.classify_context) else {
            counters.unreadable = counters.unreadable.saturating_add(1);
            return false;
        };
        let history = match fwps.acquire_writable_bind_request(handle, filter_id, out) {
            Ok(request) => {
                // SAFETY: the writable data of this classify, valid until apply.
                let h = unsafe { read_history(request, own_bind_filters) };
                fwps.apply_bind_request(handle, request);
                h.ok()
            }
            Err(_) => None,
        };
        fwps.release_bind_classify_handle(handle);
        // Give classifyOut back as we found it: an inspection callout only continues.
        out.actionType = FWP_ACTION_CONTINUE;
        out.rights = rights;
        let Some(history) = history else {
            counters.unreadable = counters.unreadable.saturating_add(1);
            return false;
        };
        let Some(rebind) = history else { return false };
        // SAFETY: WFP's pointers, valid until classifyFn returns (contract).
        let values = unsafe { bind_values(raw, family) };
        let Some(values) = values else {
            counters.unreadable = counters.unreadable.saturating_add(1);
            return false;
        };
        let Some(from) = rebind.from.or_else(|| values.local()) else {
            counters.unreadable = counters.unreadable.saturating_add(1);
            return false;
        };
        if from.is_ipv4() != rebind.to.is_ipv4() {
            counters.unreadable = counters.unreadable.saturating_add(1);
            return false;
        }
        // SAFETY: as above.
        let pid = unsafe { raw.meta.as_ref() }
            .filter(|m| m.currentMetadataValues & FWPS_METADATA_FIELD_PROCESS_ID != 0)
            .map_or(0, |m| m.processId);
        let record = RebindRecord {
            pid,
            app: values.app(),
            protocol: values.protocol().unwrap_or(Protocol(0)),
            from,
            to: rebind.to,
            by: rebind.by,
            changes: rebind.changes,
        };
        let (arbiter, ring) = self.parts_mut();
        let seq = arbiter.allocate_seq();
        ring.push_record(&AuditRecord { seq, at: now, event: Event::Rebind(record) });
        counters.rebinds = counters.rebinds.saturating_add(1);
        true
    }
}

/// # Safety
///
/// `raw.values` is null or WFP's incoming values, valid until classifyFn returns.
unsafe fn bind_values(raw: &RawClassify, family: Family) -> Option<BindValues<'_>> {
    // SAFETY: null or valid (contract).
    let v = unsafe { raw.values.as_ref() }?;
    let count = usize::try_from(v.valueCount).ok()?;
    let ptr = NonNull::new(v.incomingValue)?;
    // SAFETY: WFP passes `valueCount` initialised entries at `incomingValue`.
    let values = unsafe { core::slice::from_raw_parts(ptr.as_ptr().cast_const(), count) };
    Some(BindValues { values, family })
}
