//! The adapter against fakes that build the real `#[repr(C)]` structures.
//!
//! Each indication is laid out as WFP lays it out: an incoming-value array
//! as long as the layer's `MAX`, every slot `FWP_EMPTY` except the ones set
//! at that layer's own indexes, metadata with presence bits, blobs and SIDs
//! behind pointers. An adapter reading the wrong index meets `FWP_EMPTY` and
//! fails the test.

#![allow(
    clippy::unwrap_used,
    clippy::indexing_slicing,
    reason = "tests: fixtures are built by hand and a failed unwrap is a failed test"
)]
#![allow(clippy::vec_box, reason = "boxed fixtures keep the addresses WFP-style pointers refer to")]

use alloc::boxed::Box;
use alloc::vec;
use alloc::vec::Vec;
use core::ffi::c_void;
use core::net::SocketAddr;
use core::ptr::NonNull;

use arbiter::audit::AuditRecord;
use arbiter::context::{CONTEXT_LEN, RedirectContext};
use arbiter::control::{Access, Caller, HandleId, Handles, Op, Reply, Request, Status};
use arbiter::policy::Rule;
use arbiter::{Action, Arbiter, Capacities, Config, Duration, Instant, ProxyRegistration, Reason, RuleSet, Verdict};
use wfp_ffi::fields::{ALE_AUTH_CONNECT_V4, ALE_CONNECT_REDIRECT_V4, ALE_CONNECT_REDIRECT_V6, ALE_ENDPOINT_CLOSURE_V4};
use wfp_ffi::*;

use crate::adapter::{Callout, CalloutConfig, Family, OWN_FILTER, RawClassify};
use crate::control::{Device, cleanup, dispatch, open};
use crate::fwps::Fwps;
use crate::pend::{Fallback, PendConfig};
use crate::sockaddr::{from_storage, to_storage};

const OUR_FILTER_V4: u64 = 0x1_0000_0101;
const OUR_FILTER_V6: u64 = 0x1_0000_0102;
const PROXY_PID: u64 = 4242;
const ENDPOINT: u64 = 0xE9D0_0001;
const APP: &str = r"\device\harddiskvolume3\apps\browser.exe";

// ---- the fake Fwps -----------------------------------------------------------

#[derive(Clone, Debug, PartialEq, Eq)]
enum Call {
    Query { records: usize, handle: usize },
    AcquireHandle,
    AcquireWritable,
    Apply { flags: u32 },
    Pend { out: FWPS_CLASSIFY_OUT0 },
    Complete { out: FWPS_CLASSIFY_OUT0 },
    Release,
    Alloc,
    Free,
}

struct FakeFwps {
    state: FWPS_CONNECTION_REDIRECT_STATE,
    fail_handle: bool,
    fail_alloc: bool,
    /// The writable copy WFP would hand out.
    request: Box<FWPS_CONNECT_REQUEST0>,
    /// Older versions, newest first, linked from `request.previousVersion`.
    _chain: Vec<Box<FWPS_CONNECT_REQUEST0>>,
    contexts: Vec<Box<[u8; CONTEXT_LEN]>>,
    calls: Vec<Call>,
}

fn blank_request(remote: SocketAddr, local: SocketAddr) -> FWPS_CONNECT_REQUEST0 {
    FWPS_CONNECT_REQUEST0 {
        localAddressAndPort: to_storage(&local),
        remoteAddressAndPort: to_storage(&remote),
        portReservationToken: 0,
        localRedirectTargetPID: 0,
        previousVersion: core::ptr::null_mut(),
        modifierFilterId: 0,
        localRedirectHandle: core::ptr::null_mut(),
        localRedirectContext: core::ptr::null_mut(),
        localRedirectContextSize: 0,
    }
}

impl FakeFwps {
    /// `chain`: (modifierFilterId, has localRedirectHandle), newest first.
    fn new(remote: SocketAddr, local: SocketAddr, chain: &[(u64, bool)]) -> Self {
        let mut boxes: Vec<Box<FWPS_CONNECT_REQUEST0>> = Vec::new();
        // Build oldest first so each newer one can point at its predecessor.
        let mut prev: *mut FWPS_CONNECT_REQUEST0 = core::ptr::null_mut();
        for &(filter, handle) in chain.iter().rev() {
            let mut b = Box::new(blank_request(remote, local));
            b.modifierFilterId = filter;
            b.localRedirectHandle = if handle { 0x77usize as HANDLE } else { core::ptr::null_mut() };
            b.previousVersion = prev;
            prev = &mut *b;
            boxes.push(b);
        }
        let mut request = Box::new(blank_request(remote, local));
        request.previousVersion = prev;
        Self {
            state: FWPS_CONNECTION_NOT_REDIRECTED,
            fail_handle: false,
            fail_alloc: false,
            request,
            _chain: boxes,
            contexts: Vec::new(),
            calls: Vec::new(),
        }
    }

    fn applied_flags(&self) -> Vec<u32> {
        self.calls.iter().filter_map(|c| if let Call::Apply { flags } = c { Some(*flags) } else { None }).collect()
    }

    fn count(&self, f: impl Fn(&Call) -> bool) -> usize {
        self.calls.iter().filter(|c| f(c)).count()
    }
}

impl Fwps for FakeFwps {
    fn query_redirect_state(&mut self, records: HANDLE, handle: HANDLE) -> FWPS_CONNECTION_REDIRECT_STATE {
        self.calls.push(Call::Query { records: records as usize, handle: handle as usize });
        self.state
    }
    fn acquire_classify_handle(&mut self, _: *const c_void) -> Result<u64, NTSTATUS> {
        self.calls.push(Call::AcquireHandle);
        if self.fail_handle { Err(-1) } else { Ok(0xC1A5) }
    }
    fn acquire_writable_connect_request(
        &mut self,
        _: u64,
        _: u64,
        _: &mut FWPS_CLASSIFY_OUT0,
    ) -> Result<NonNull<FWPS_CONNECT_REQUEST0>, NTSTATUS> {
        self.calls.push(Call::AcquireWritable);
        Ok(NonNull::from(&mut *self.request))
    }
    fn apply_modified_layer_data(&mut self, _: u64, _: NonNull<FWPS_CONNECT_REQUEST0>, flags: u32) {
        self.calls.push(Call::Apply { flags });
    }
    fn pend_classify(&mut self, _: u64, _: u64, out: &mut FWPS_CLASSIFY_OUT0) -> Result<(), NTSTATUS> {
        self.calls.push(Call::Pend { out: *out });
        Ok(())
    }
    fn complete_classify(&mut self, _: u64, out: &FWPS_CLASSIFY_OUT0) {
        self.calls.push(Call::Complete { out: *out });
    }
    fn release_classify_handle(&mut self, _: u64) {
        self.calls.push(Call::Release);
    }
    fn allocate_context(&mut self, len: usize) -> Option<NonNull<u8>> {
        self.calls.push(Call::Alloc);
        if self.fail_alloc || len != CONTEXT_LEN {
            return None;
        }
        let mut b = Box::new([0u8; CONTEXT_LEN]);
        let p = NonNull::from(&mut b[0]);
        self.contexts.push(b);
        Some(p)
    }
    fn free_context(&mut self, _: NonNull<u8>) {
        self.calls.push(Call::Free);
    }
}

// ---- indications built as WFP builds them ---------------------------------

fn wide(s: &str) -> Vec<u8> {
    let mut v: Vec<u8> = s.encode_utf16().flat_map(u16::to_le_bytes).collect();
    v.extend_from_slice(&[0, 0]); // WFP's blobs carry the terminator
    v
}

/// Owns every buffer an indication points into.
struct Indication {
    values: Vec<FWPS_INCOMING_VALUE0>,
    fixed: Box<FWPS_INCOMING_VALUES0>,
    meta: Box<FWPS_INCOMING_METADATA_VALUES0>,
    filter: Box<FWPS_FILTER3>,
    out: Box<FWPS_CLASSIFY_OUT0>,
    blobs: Vec<Box<FWP_BYTE_BLOB>>,
    bytes: Vec<Vec<u8>>,
    arrays: Vec<Box<FWP_BYTE_ARRAY16>>,
    dest: Box<SOCKADDR_STORAGE>,
}

impl Indication {
    fn new(max: usize, filter_id: u64) -> Self {
        // SAFETY: all-zero is a valid value for every member (integers, raw pointers, unions of them).
        let meta: FWPS_INCOMING_METADATA_VALUES0 = unsafe { core::mem::zeroed() };
        let filter = FWPS_FILTER3 {
            filterId: filter_id,
            weight: FWP_VALUE0::EMPTY,
            subLayerWeight: 0,
            flags: 0,
            numFilterConditions: 0,
            filterCondition: core::ptr::null_mut(),
            action: FWPS_ACTION0 { r#type: FWP_ACTION_CALLOUT_TERMINATING, calloutId: 7 },
            context: 0,
            providerContext: core::ptr::null_mut(),
        };
        let out =
            FWPS_CLASSIFY_OUT0 { actionType: FWP_ACTION_NONE, rights: FWPS_RIGHT_ACTION_WRITE, ..Default::default() };
        Self {
            values: vec![FWPS_INCOMING_VALUE0 { value: FWP_VALUE0::EMPTY }; max],
            fixed: Box::new(FWPS_INCOMING_VALUES0 { layerId: 0, valueCount: 0, incomingValue: core::ptr::null_mut() }),
            meta: Box::new(meta),
            filter: Box::new(filter),
            out: Box::new(out),
            blobs: Vec::new(),
            bytes: Vec::new(),
            arrays: Vec::new(),
            dest: Box::new(SOCKADDR_STORAGE::ZERO),
        }
    }

    fn set(&mut self, index: usize, r#type: FWP_DATA_TYPE, u: FWP_VALUE0_u) {
        self.values[index].value = FWP_VALUE0 { r#type, u };
    }
    fn u8(&mut self, i: usize, v: u8) {
        self.set(i, FWP_UINT8, FWP_VALUE0_u { uint8: v });
    }
    fn u16(&mut self, i: usize, v: u16) {
        self.set(i, FWP_UINT16, FWP_VALUE0_u { uint16: v });
    }
    fn u32(&mut self, i: usize, v: u32) {
        self.set(i, FWP_UINT32, FWP_VALUE0_u { uint32: v });
    }
    fn ip(&mut self, i: usize, ip: core::net::IpAddr) {
        match ip {
            core::net::IpAddr::V4(a) => self.u32(i, u32::from(a)),
            core::net::IpAddr::V6(a) => {
                let mut b = Box::new(FWP_BYTE_ARRAY16 { byteArray16: a.octets() });
                let p: *mut FWP_BYTE_ARRAY16 = &mut *b;
                self.arrays.push(b);
                self.set(i, FWP_BYTE_ARRAY16_TYPE, FWP_VALUE0_u { byteArray16: p });
            }
        }
    }
    fn blob(&mut self, i: usize, bytes: Vec<u8>) {
        let mut data = bytes;
        let mut b = Box::new(FWP_BYTE_BLOB { size: u32::try_from(data.len()).unwrap(), data: data.as_mut_ptr() });
        let p: *mut FWP_BYTE_BLOB = &mut *b;
        self.bytes.push(data);
        self.blobs.push(b);
        self.set(i, FWP_BYTE_BLOB_TYPE, FWP_VALUE0_u { byteBlob: p });
    }
    fn sid(&mut self, i: usize, bytes: Vec<u8>) {
        let mut data = bytes;
        let p = data.as_mut_ptr().cast::<c_void>();
        self.bytes.push(data);
        self.set(i, FWP_SID, FWP_VALUE0_u { sid: p });
    }

    fn raw(&mut self) -> RawClassify {
        self.fixed.valueCount = u32::try_from(self.values.len()).unwrap();
        self.fixed.incomingValue = self.values.as_mut_ptr();
        RawClassify {
            values: &*self.fixed,
            meta: &*self.meta,
            classify_context: 0x5151usize as *const c_void,
            filter: &*self.filter,
            classify_out: &mut *self.out,
        }
    }
}

struct Flow {
    local: SocketAddr,
    remote: SocketAddr,
    protocol: u8,
    pid: u64,
}

fn tcp(local: &str, remote: &str) -> Flow {
    Flow { local: local.parse().unwrap(), remote: remote.parse().unwrap(), protocol: 6, pid: 1000 }
}

fn common_meta(ind: &mut Indication, pid: u64) {
    ind.meta.currentMetadataValues |= FWPS_METADATA_FIELD_TRANSPORT_ENDPOINT_HANDLE | FWPS_METADATA_FIELD_PROCESS_ID;
    ind.meta.transportEndpointHandle = ENDPOINT;
    ind.meta.processId = pid;
}

fn connect_redirect_v4(f: &Flow, records: bool) -> Indication {
    use ALE_CONNECT_REDIRECT_V4 as L;
    let mut ind = Indication::new(L::MAX, OUR_FILTER_V4);
    ind.blob(L::ALE_APP_ID, wide(APP));
    ind.blob(L::ALE_ORIGINAL_APP_ID, wide(APP));
    ind.ip(L::IP_LOCAL_ADDRESS, f.local.ip());
    ind.u16(L::IP_LOCAL_PORT, f.local.port());
    ind.u8(L::IP_PROTOCOL, f.protocol);
    ind.ip(L::IP_REMOTE_ADDRESS, f.remote.ip());
    ind.u16(L::IP_REMOTE_PORT, f.remote.port());
    ind.u32(L::FLAGS, 0);
    // The NULL SID WFP reports outside AppContainers.
    ind.sid(L::ALE_PACKAGE_ID, vec![1, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]);
    common_meta(&mut ind, f.pid);
    if records {
        ind.meta.currentMetadataValues |= FWPS_METADATA_FIELD_REDIRECT_RECORD_HANDLE;
        ind.meta.redirectRecords = 0xAEC0usize as HANDLE;
    }
    ind
}

fn connect_redirect_v6(f: &Flow) -> Indication {
    use ALE_CONNECT_REDIRECT_V6 as L;
    let mut ind = Indication::new(L::MAX, OUR_FILTER_V6);
    ind.blob(L::ALE_APP_ID, wide(APP));
    ind.ip(L::IP_LOCAL_ADDRESS, f.local.ip());
    ind.u16(L::IP_LOCAL_PORT, f.local.port());
    ind.u8(L::IP_PROTOCOL, f.protocol);
    ind.ip(L::IP_REMOTE_ADDRESS, f.remote.ip());
    ind.u16(L::IP_REMOTE_PORT, f.remote.port());
    ind.u32(L::FLAGS, 0);
    common_meta(&mut ind, f.pid);
    ind
}

fn auth_connect_v4(f: &Flow, redirected: Option<(u32, SocketAddr)>) -> Indication {
    use ALE_AUTH_CONNECT_V4 as L;
    let mut ind = Indication::new(L::MAX, 0x2_0000_0001);
    ind.blob(L::ALE_APP_ID, wide(APP));
    ind.ip(L::IP_LOCAL_ADDRESS, f.local.ip());
    ind.u16(L::IP_LOCAL_PORT, f.local.port());
    ind.u8(L::IP_PROTOCOL, f.protocol);
    ind.ip(L::IP_REMOTE_ADDRESS, f.remote.ip());
    ind.u16(L::IP_REMOTE_PORT, f.remote.port());
    common_meta(&mut ind, f.pid);
    match redirected {
        Some((pid, dest)) => {
            ind.u32(L::FLAGS, FWP_CONDITION_FLAG_IS_CONNECTION_REDIRECTED);
            ind.meta.currentMetadataValues |=
                FWPS_METADATA_FIELD_LOCAL_REDIRECT_TARGET_PID | FWPS_METADATA_FIELD_ORIGINAL_DESTINATION;
            ind.meta.localRedirectTargetPID = pid;
            *ind.dest = to_storage(&dest);
            ind.meta.originalDestination = (&mut *ind.dest as *mut SOCKADDR_STORAGE).cast::<SOCKADDR>();
        }
        None => ind.u32(L::FLAGS, 0),
    }
    ind
}

// ---- the callout under test ----------------------------------------------------

fn callout(action: Option<Action>, pend: Option<PendConfig>) -> Callout<RuleSet> {
    let rules = RuleSet { rules: action.map(|a| vec![Rule::any("all", a)]).unwrap_or_default(), ..RuleSet::default() };
    let config = Config { own_filter: OWN_FILTER, ..Config::default() };
    let caps = Capacities { endpoints: 64, destinations: 64, known_proxies: 16 };
    let arbiter = Arbiter::new(config, caps, rules).unwrap();
    let mut c = Callout::new(arbiter, CalloutConfig { ring_bytes: 1 << 16, pend }).unwrap();
    c.set_redirect_handle(0xAB5Eusize as HANDLE);
    c.set_own_filters(OUR_FILTER_V4, OUR_FILTER_V6);
    c
}

fn register(c: &mut Callout<RuleSet>) {
    c.arbiter_mut()
        .set_proxy(PROXY_PID, Some("127.0.0.1:8080".parse().unwrap()), Some("[::1]:8080".parse().unwrap()))
        .unwrap();
}

fn records(c: &Callout<RuleSet>) -> Vec<(Verdict, Reason)> {
    c.ring()
        .iter()
        .filter_map(|(_, bytes)| {
            let (rec, _) = AuditRecord::decode(bytes).ok()?;
            let o = rec.outcome()?;
            assert!(rec.replay().unwrap().matches(o), "audit record must replay to its outcome");
            Some((o.verdict, o.reason))
        })
        .collect()
}

const T0: Instant = Instant::from_millis(1_000);

fn cr(c: &mut Callout<RuleSet>, fw: &mut FakeFwps, family: Family, ind: &mut Indication) {
    let raw = ind.raw();
    // SAFETY: every pointer in `raw` points into `ind`, alive for the call.
    unsafe { c.classify_connect_redirect(fw, family, &raw, T0) };
}

fn ac(c: &mut Callout<RuleSet>, family: Family, ind: &mut Indication) {
    let raw = ind.raw();
    // SAFETY: every pointer in `raw` points into `ind`, alive for the call.
    unsafe { c.classify_auth_connect(family, &raw, T0) };
}

fn ec(c: &mut Callout<RuleSet>, family: Family, ind: &mut Indication) {
    let raw = ind.raw();
    // SAFETY: every pointer in `raw` points into `ind`, alive for the call.
    unsafe { c.classify_endpoint_closure(family, &raw, T0) };
}

// ---- connect-redirect ---------------------------------------------------------------

#[test]
fn proxy_rewrites_remote_pid_handle_and_context_then_applies_with_reauthorize() {
    let mut c = callout(Some(Action::Proxy), None);
    register(&mut c);
    let f = tcp("0.0.0.0:50000", "93.184.216.34:443");
    let mut fw = FakeFwps::new(f.remote, f.local, &[]);
    let mut ind = connect_redirect_v4(&f, false);
    cr(&mut c, &mut fw, Family::V4, &mut ind);

    let req = &*fw.request;
    // Zone rule: local unspecified -> the listener itself on loopback.
    assert_eq!(from_storage(&req.remoteAddressAndPort), Some("127.0.0.1:8080".parse().unwrap()));
    assert_eq!(req.localRedirectTargetPID, 4242);
    assert_eq!(req.localRedirectHandle as usize, 0xAB5E);
    assert_eq!(req.localRedirectContextSize, CONTEXT_LEN);
    // SAFETY: the fake allocated CONTEXT_LEN bytes there and keeps them alive.
    let ctx = unsafe { core::slice::from_raw_parts(req.localRedirectContext.cast::<u8>(), CONTEXT_LEN) };
    let ctx = RedirectContext::decode(ctx).unwrap();
    assert_eq!(ctx.original_remote, f.remote);
    assert_eq!(ctx.original_local, f.local);
    assert_eq!(ctx.pid, 1000);
    // Applied once, with the flag, then released; never freed (WFP owns it).
    assert_eq!(fw.applied_flags(), vec![FWPS_CLASSIFY_FLAG_REAUTHORIZE_IF_MODIFIED_BY_OTHERS]);
    assert_eq!(fw.calls.last(), Some(&Call::Release));
    assert_eq!(fw.count(|c| *c == Call::Free), 0);
    assert_eq!(ind.out.actionType, FWP_ACTION_PERMIT);
    assert_eq!(ind.out.rights & FWPS_RIGHT_ACTION_WRITE, FWPS_RIGHT_ACTION_WRITE, "soft: write right kept");
    assert_eq!(records(&c), vec![(Verdict::Proxy, Reason::RuleProxy)]);
}

#[test]
fn ipv6_proxy_keeps_the_local_address_zone() {
    let mut c = callout(Some(Action::Proxy), None);
    register(&mut c);
    let f = tcp("[2001:db8::5]:51000", "[2001:db8::99]:443");
    let mut fw = FakeFwps::new(f.remote, f.local, &[]);
    let mut ind = connect_redirect_v6(&f);
    cr(&mut c, &mut fw, Family::V6, &mut ind);
    // The proxy listens on loopback only: a bound flow goes to the listener too.
    assert_eq!(from_storage(&fw.request.remoteAddressAndPort), Some("[::1]:8080".parse().unwrap()));
    assert_eq!(ind.out.actionType, FWP_ACTION_PERMIT);
    assert_eq!(c.counters().malformed, 0);
}

#[test]
fn block_is_hard_and_comes_back_at_auth_connect() {
    let mut c = callout(Some(Action::Block), None);
    let f = tcp("10.0.0.5:50000", "198.51.100.7:25");
    let mut fw = FakeFwps::new(f.remote, f.local, &[]);
    let mut ind = connect_redirect_v4(&f, false);
    cr(&mut c, &mut fw, Family::V4, &mut ind);
    assert_eq!(ind.out.actionType, FWP_ACTION_BLOCK);
    assert_eq!(ind.out.rights & FWPS_RIGHT_ACTION_WRITE, 0, "hard: write right cleared");
    assert_eq!(fw.applied_flags(), vec![0], "layer data applied unchanged");
    assert_eq!(from_storage(&fw.request.remoteAddressAndPort), Some(f.remote));

    // A1 at auth-connect, read through the auth-connect indexes.
    let mut auth = auth_connect_v4(&f, None);
    ac(&mut c, Family::V4, &mut auth);
    assert_eq!(auth.out.actionType, FWP_ACTION_BLOCK);
    assert_eq!(auth.out.rights & FWPS_RIGHT_ACTION_WRITE, 0);
    assert_eq!(records(&c), vec![(Verdict::Block, Reason::RuleBlock), (Verdict::Block, Reason::RuleBlock)]);
}

#[test]
fn without_the_write_right_nothing_is_acquired_or_written() {
    let mut c = callout(Some(Action::Proxy), None);
    register(&mut c);
    let f = tcp("0.0.0.0:50000", "93.184.216.34:443");
    let mut fw = FakeFwps::new(f.remote, f.local, &[]);
    let mut ind = connect_redirect_v4(&f, false);
    ind.out.rights = 0;
    cr(&mut c, &mut fw, Family::V4, &mut ind);
    assert!(fw.calls.is_empty(), "{:?}", fw.calls);
    assert_eq!(ind.out.actionType, FWP_ACTION_NONE);
    assert_eq!(records(&c), vec![(Verdict::Continue, Reason::NoWriteRight)]);
}

#[test]
fn another_vendors_local_redirect_deep_in_the_chain_is_respected() {
    let mut c = callout(Some(Action::Proxy), None);
    register(&mut c);
    let f = tcp("0.0.0.0:50000", "93.184.216.34:443");
    // Newest first: an unrelated modifier, then the other vendor's local redirect two hops back.
    let mut fw = FakeFwps::new(f.remote, f.local, &[(0x9_0001, false), (0x9_0002, true)]);
    let mut ind = connect_redirect_v4(&f, false);
    cr(&mut c, &mut fw, Family::V4, &mut ind);
    assert_eq!(records(&c), vec![(Verdict::Permit, Reason::LocalProxyOfOther)]);
    assert_eq!(fw.applied_flags(), vec![FWPS_CLASSIFY_FLAG_REAUTHORIZE_IF_MODIFIED_BY_OTHERS]);
    assert_eq!(from_storage(&fw.request.remoteAddressAndPort), Some(f.remote), "not rewritten");
    assert_eq!(ind.out.actionType, FWP_ACTION_PERMIT);
}

#[test]
fn our_own_filter_ids_in_the_chain_mean_modified_by_self() {
    let mut c = callout(Some(Action::Proxy), None);
    register(&mut c);
    let f = tcp("[::]:50000", "[2001:db8::99]:443");
    // The V6 filter's run-time id is mapped to the core's OWN_FILTER.
    let mut fw = FakeFwps::new(f.remote, f.local, &[(OUR_FILTER_V6, true)]);
    let mut ind = connect_redirect_v6(&f);
    cr(&mut c, &mut fw, Family::V6, &mut ind);
    assert_eq!(records(&c), vec![(Verdict::Continue, Reason::ModifiedBySelf)]);
    assert_eq!(ind.out.actionType, FWP_ACTION_CONTINUE);
    assert_eq!(fw.applied_flags(), vec![0]);
}

#[test]
fn redirect_state_is_queried_with_our_single_handle() {
    let mut c = callout(Some(Action::Proxy), None);
    register(&mut c);
    let f = tcp("0.0.0.0:50000", "93.184.216.34:443");
    let mut fw = FakeFwps::new(f.remote, f.local, &[]);
    fw.state = FWPS_CONNECTION_REDIRECTED_BY_SELF;
    let mut ind = connect_redirect_v4(&f, true);
    cr(&mut c, &mut fw, Family::V4, &mut ind);
    assert_eq!(fw.calls[0], Call::Query { records: 0xAEC0, handle: 0xAB5E });
    assert_eq!(records(&c), vec![(Verdict::Continue, Reason::RedirectedBySelf)]);

    // A state WFP might add later is not guessed at.
    fw.state = 9;
    let mut ind = connect_redirect_v4(&f, true);
    cr(&mut c, &mut fw, Family::V4, &mut ind);
    assert_eq!(c.counters().malformed, 1);
    // Left alone, explicitly, and audited.
    assert_eq!(ind.out.actionType, FWP_ACTION_CONTINUE);
    assert_eq!(records(&c).last(), Some(&(Verdict::Continue, Reason::UnreadableIndication)));
}

#[test]
fn a_value_of_the_wrong_type_leaves_the_flow_alone() {
    let mut c = callout(Some(Action::Proxy), None);
    register(&mut c);
    let f = tcp("0.0.0.0:50000", "93.184.216.34:443");
    let mut fw = FakeFwps::new(f.remote, f.local, &[]);
    let mut ind = connect_redirect_v4(&f, false);
    // A port delivered as UINT32: never guessed at.
    ind.set(ALE_CONNECT_REDIRECT_V4::IP_REMOTE_PORT, FWP_UINT32, FWP_VALUE0_u { uint32: 443 });
    cr(&mut c, &mut fw, Family::V4, &mut ind);
    assert_eq!(c.counters().malformed, 1);
    assert!(fw.calls.is_empty());
    // Left alone, explicitly (the engine's value at entry is not documented).
    assert_eq!(ind.out.actionType, FWP_ACTION_CONTINUE);
    assert!(records(&c).is_empty());
}

#[test]
fn a_failed_context_allocation_means_no_redirect() {
    let mut c = callout(Some(Action::Proxy), None);
    register(&mut c);
    let f = tcp("0.0.0.0:50000", "93.184.216.34:443");
    let mut fw = FakeFwps::new(f.remote, f.local, &[]);
    fw.fail_alloc = true;
    let mut ind = connect_redirect_v4(&f, false);
    cr(&mut c, &mut fw, Family::V4, &mut ind);
    assert_eq!(c.counters().context_alloc_failed, 1);
    assert_eq!(from_storage(&fw.request.remoteAddressAndPort), Some(f.remote));
    assert_eq!(fw.applied_flags(), vec![0]);
    assert_eq!(ind.out.actionType, FWP_ACTION_CONTINUE);
}

#[test]
fn a_refused_classify_handle_leaves_the_flow_alone() {
    let mut c = callout(Some(Action::Proxy), None);
    register(&mut c);
    let f = tcp("0.0.0.0:50000", "93.184.216.34:443");
    let mut fw = FakeFwps::new(f.remote, f.local, &[]);
    fw.fail_handle = true;
    let mut ind = connect_redirect_v4(&f, false);
    cr(&mut c, &mut fw, Family::V4, &mut ind);
    assert_eq!(c.counters().acquire_failed, 1);
    assert_eq!(ind.out.actionType, FWP_ACTION_CONTINUE);
    // No decision without the chain, but the miss is audited.
    assert_eq!(records(&c), vec![(Verdict::Continue, Reason::LayerDataUnavailable)]);
}

// ---- auth-connect and closure -----------------------------------------------------

#[test]
fn auth_connect_verifies_our_redirect_target_and_destination() {
    let mut c = callout(Some(Action::Proxy), None);
    register(&mut c);
    let f = tcp("0.0.0.0:50000", "93.184.216.34:443");
    let mut fw = FakeFwps::new(f.remote, f.local, &[]);
    let mut ind = connect_redirect_v4(&f, false);
    cr(&mut c, &mut fw, Family::V4, &mut ind);

    let mut auth = auth_connect_v4(&f, Some((4242, f.remote)));
    ac(&mut c, Family::V4, &mut auth);
    assert_eq!(auth.out.actionType, FWP_ACTION_PERMIT);
    assert_eq!(auth.out.rights & FWPS_RIGHT_ACTION_WRITE, FWPS_RIGHT_ACTION_WRITE);

    // Same again, but someone sent our flow to another process.
    let mut ind = connect_redirect_v4(&f, false);
    cr(&mut c, &mut fw, Family::V4, &mut ind);
    let mut auth = auth_connect_v4(&f, Some((777, f.remote)));
    ac(&mut c, Family::V4, &mut auth);
    assert_eq!(auth.out.actionType, FWP_ACTION_BLOCK);
    let got = records(&c);
    assert_eq!(got[1], (Verdict::Permit, Reason::ProxyVerified));
    assert_eq!(got[3], (Verdict::Block, Reason::RedirectTargetMismatch));
}

#[test]
fn endpoint_closure_forgets_the_endpoint() {
    let mut c = callout(Some(Action::Block), None);
    let f = tcp("10.0.0.5:50000", "198.51.100.7:25");
    let mut fw = FakeFwps::new(f.remote, f.local, &[]);
    let mut ind = connect_redirect_v4(&f, false);
    cr(&mut c, &mut fw, Family::V4, &mut ind);
    assert!(c.arbiter().endpoint_entry(ENDPOINT, T0).is_some());

    use ALE_ENDPOINT_CLOSURE_V4 as L;
    let mut close = Indication::new(L::MAX, 0x3_0000_0001);
    common_meta(&mut close, f.pid);
    close.u8(L::IP_PROTOCOL, 6);
    ec(&mut c, Family::V4, &mut close);
    assert!(c.arbiter().endpoint_entry(ENDPOINT, T0).is_none());
    assert_eq!(c.counters().forgotten, 1);
    assert_eq!(close.out.actionType, FWP_ACTION_NONE, "closure writes nothing");
}

// ---- pending -------------------------------------------------------------------------

fn pend_config(fallback: Fallback, capacity: u16) -> PendConfig {
    PendConfig { capacity, timeout: Duration::from_millis(500), fallback }
}

#[test]
fn held_while_no_proxy_then_proxied_when_it_registers() {
    let mut c = callout(Some(Action::Proxy), Some(pend_config(Fallback::Continue, 4)));
    let f = tcp("0.0.0.0:50000", "93.184.216.34:443");
    let mut fw = FakeFwps::new(f.remote, f.local, &[]);
    let mut ind = connect_redirect_v4(&f, false);
    cr(&mut c, &mut fw, Family::V4, &mut ind);
    // Pended (the seed's order: handle, pend, no layer data yet): the engine
    // sees a block without the write right until completion, no ABSORB.
    assert_eq!(c.held(), 1);
    assert_eq!(
        fw.calls,
        vec![
            Call::AcquireHandle,
            Call::Pend {
                out: FWPS_CLASSIFY_OUT0 {
                    actionType: FWP_ACTION_NONE,
                    rights: FWPS_RIGHT_ACTION_WRITE,
                    ..Default::default()
                }
            }
        ]
    );
    assert_eq!(ind.out.actionType, FWP_ACTION_BLOCK);
    assert_eq!(ind.out.rights & FWPS_RIGHT_ACTION_WRITE, 0);
    assert_eq!(ind.out.flags & FWPS_CLASSIFY_OUT_FLAG_ABSORB, 0);
    // The classify's buffers go away when classifyFn returns.
    drop(ind);

    // Registration arrives through the control device.
    let reg = ProxyRegistration { pid: PROXY_PID, v4: Some("127.0.0.1:8080".parse().unwrap()), v6: None };
    let request = Request::RegisterProxy(reg).to_vec();
    let mut reply = vec![0u8; 256];
    let mut decode = |_: &[u8]| Err(arbiter::control::RulesRejected { code: 1, offset: 0 });
    let mut handles = Handles::new();
    let mut device = Device {
        callout: &mut c,
        handles: &mut handles,
        decode_rules: &mut decode,
        instance: 7,
        fwps: &mut fw,
        now: T0.saturating_add(Duration::from_millis(100)),
        driver_counters: arbiter::control::DriverCounters::default(),
    };
    let n = dispatch(&mut device, Op::RegisterProxy.ioctl(), &PROXY_CALLER, &request, &mut reply);
    assert_eq!(Reply::decode(&reply[..n]).unwrap().status, Status::Ok);
    // Decided under the lock; the WFP calls run once it is released.
    assert!(!fw.calls.iter().any(|c| matches!(c, Call::Complete { .. })), "completed under the lock");
    c.run_completions(&mut fw);

    assert_eq!(c.held(), 0);
    assert_eq!(c.counters().pend_completed, 1);
    assert_eq!(from_storage(&fw.request.remoteAddressAndPort), Some("127.0.0.1:8080".parse().unwrap()));
    let tail: Vec<&Call> = fw.calls.iter().rev().take(3).collect();
    assert_eq!(tail[2], &Call::Apply { flags: FWPS_CLASSIFY_FLAG_REAUTHORIZE_IF_MODIFIED_BY_OTHERS });
    assert!(matches!(tail[1], Call::Complete { out } if out.actionType == FWP_ACTION_PERMIT));
    assert_eq!(tail[0], &Call::Release);
    assert_eq!(records(&c), vec![(Verdict::Proxy, Reason::RuleProxy)]);
}

/// The proxy service's handle: its own process, read and write.
const PROXY_CALLER: Caller = Caller { pid: PROXY_PID as u32, handle: HandleId(0xF11E), access: Access::READ_WRITE };

/// Issue 12: a registration outlived the handle it came through, so a
/// crashed proxy kept receiving flows. Now `IRP_MJ_CLEANUP` of that handle
/// unregisters it at once: the next flow a rule proxies is not sent to the
/// dead proxy but held (the failure path), and times out to the fallback.
#[test]
fn closing_the_proxys_handle_stops_redirecting_at_once() {
    let mut c = callout(Some(Action::Proxy), Some(pend_config(Fallback::Block, 4)));
    let f = tcp("0.0.0.0:50000", "93.184.216.34:443");
    let mut fw = FakeFwps::new(f.remote, f.local, &[]);
    let mut decode = |_: &[u8]| Err(arbiter::control::RulesRejected { code: 1, offset: 0 });
    let mut handles = Handles::new();
    let reg = ProxyRegistration { pid: PROXY_PID, v4: Some("127.0.0.1:8080".parse().unwrap()), v6: None };
    let mut device = Device {
        callout: &mut c,
        handles: &mut handles,
        decode_rules: &mut decode,
        instance: 7,
        fwps: &mut fw,
        now: T0,
        driver_counters: arbiter::control::DriverCounters::default(),
    };
    assert_eq!(open(&mut device, &PROXY_CALLER), Status::Ok);
    let mut reply = vec![0u8; 256];
    let n = dispatch(
        &mut device,
        Op::RegisterProxy.ioctl(),
        &PROXY_CALLER,
        &Request::RegisterProxy(reg).to_vec(),
        &mut reply,
    );
    assert_eq!(Reply::decode(&reply[..n]).unwrap().status, Status::Ok);

    // While the handle is open, flows go to the proxy.
    let mut ind = connect_redirect_v4(&f, false);
    cr(&mut c, &mut fw, Family::V4, &mut ind);
    assert_eq!(from_storage(&fw.request.remoteAddressAndPort), Some("127.0.0.1:8080".parse().unwrap()));
    assert_eq!(c.held(), 0);

    // The proxy dies: the I/O manager sends IRP_MJ_CLEANUP for its handle.
    let mut device = Device {
        callout: &mut c,
        handles: &mut handles,
        decode_rules: &mut decode,
        instance: 7,
        fwps: &mut fw,
        now: T0,
        driver_counters: arbiter::control::DriverCounters::default(),
    };
    cleanup(&mut device, PROXY_CALLER.handle);
    assert_eq!(c.arbiter().proxy(), None);
    assert_eq!(handles.writer(), None);

    // The very next flow is not redirected: it is held for a proxy.
    let g = tcp("0.0.0.0:50001", "93.184.216.34:443");
    let mut fw2 = FakeFwps::new(g.remote, g.local, &[]);
    let mut ind = connect_redirect_v4(&g, false);
    cr(&mut c, &mut fw2, Family::V4, &mut ind);
    assert_eq!(c.held(), 1);
    assert_eq!(from_storage(&fw2.request.remoteAddressAndPort), Some(g.remote), "not sent to the dead proxy");
    // And it gets the fallback when no proxy comes back.
    c.complete_pended(&mut fw2, T0.saturating_add(Duration::from_millis(500)));
    assert_eq!(c.held(), 0);
    assert_eq!(c.counters().pend_timed_out, 1);
}

#[test]
fn held_past_the_timeout_gets_the_fallback() {
    let mut c = callout(Some(Action::Proxy), Some(pend_config(Fallback::Block, 4)));
    let f = tcp("0.0.0.0:50000", "93.184.216.34:443");
    let mut fw = FakeFwps::new(f.remote, f.local, &[]);
    let mut ind = connect_redirect_v4(&f, false);
    cr(&mut c, &mut fw, Family::V4, &mut ind);
    c.complete_pended(&mut fw, T0.saturating_add(Duration::from_millis(499)));
    assert_eq!(c.held(), 1, "not yet");
    c.complete_pended(&mut fw, T0.saturating_add(Duration::from_millis(500)));
    c.run_completions(&mut fw);
    assert_eq!(c.held(), 0);
    assert_eq!(c.counters().pend_timed_out, 1);
    let completed = fw.calls.iter().find_map(|c| if let Call::Complete { out } = c { Some(*out) } else { None });
    let completed = completed.unwrap();
    assert_eq!(completed.actionType, FWP_ACTION_BLOCK);
    assert_eq!(completed.rights & FWPS_RIGHT_ACTION_WRITE, 0);
    assert_eq!(fw.calls.last(), Some(&Call::Release));
    // The fallback is audited like a decision and the block is enforced at
    // auth-connect (A1), since a redirect-layer block alone may not hold.
    assert_eq!(records(&c), vec![(Verdict::Block, Reason::PendTimeout)]);
    assert!(c.arbiter().endpoint_entry(ENDPOINT, T0.saturating_add(Duration::from_millis(501))).is_some());
}

#[test]
fn a_full_queue_refuses_and_counts() {
    let mut c = callout(Some(Action::Proxy), Some(pend_config(Fallback::Continue, 1)));
    let f = tcp("0.0.0.0:50000", "93.184.216.34:443");
    let mut fw = FakeFwps::new(f.remote, f.local, &[]);
    let mut first = connect_redirect_v4(&f, false);
    cr(&mut c, &mut fw, Family::V4, &mut first);
    let mut second = connect_redirect_v4(&f, false);
    cr(&mut c, &mut fw, Family::V4, &mut second);
    assert_eq!(c.held(), 1);
    assert_eq!(c.counters().pend_refused, 1);
    assert_eq!(second.out.actionType, FWP_ACTION_CONTINUE, "the core's own answer");
}

#[test]
fn sockaddr_round_trips() {
    for a in ["1.2.3.4:5", "[fe80::1%7]:443", "[2001:db8::1]:80"] {
        let a: SocketAddr = a.parse().unwrap();
        assert_eq!(from_storage(&to_storage(&a)), Some(a));
    }
    let mut s = SOCKADDR_STORAGE::ZERO;
    s.ss_family = 99;
    assert_eq!(from_storage(&s), None);
}

/// Review finding: a pend whose commit is refused (pended, but its slot
/// cannot take it) was handled as a failed pend: the flow was decided again
/// on a classification already pended, and its classify handle was never
/// completed nor released. Now the caller is told to complete and release
/// it at once ([`crate::shell::classify`] does, through `orphaned`).
#[test]
fn a_pend_whose_commit_is_refused_is_completed_not_decided_again() {
    use crate::adapter::{Committed, PendTicket};
    let mut c = callout(Some(Action::Proxy), Some(pend_config(Fallback::Block, 4)));
    // Slot 0 reserved nothing: its commit is refused.
    assert_eq!(c.commit_pend(PendTicket::for_slot(0), Ok(7), T0), Committed::Unheld(7));
    assert_eq!(c.commit_pend(PendTicket::for_slot(0), Err(-1), T0), Committed::RolledBack);
    assert_eq!((c.held(), c.reserved()), (0, 0));
    assert_eq!(c.counters().pend_refused, 2);
}
