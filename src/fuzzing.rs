//! Every fuzz target's body, and the stand-ins they share with the tests.
//! Built for tests, under `cfg(fuzzing)` (cargo fuzz) and with the
//! `fuzzing` feature; never in the driver.

#![allow(
    clippy::panic,
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::arithmetic_side_effects,
    reason = "fuzz oracles report by panicking; never built into the driver"
)]

use alloc::vec::Vec;
use core::net::{Ipv4Addr, SocketAddr, SocketAddrV4};

use crate::arbiter::{Arbiter, Capacities, Config, Counters, SetProxyError};
use crate::audit::AuditRecord;
use crate::audit::ring::AuditRing;
use crate::compiled::{CompiledRules, blob};
use crate::control::{
    Access, Caller, ControlTarget, HandleId, Handles, MIN_REPLY_BUFFER, Op, REPLY_HEADER_LEN, Reply, Request,
    RulesRejected, Status, close_handle, handle, open_handle,
};
use crate::decide::ProxyRegistration;
use crate::flow::{AppId, Flow, Protocol};
use crate::policy::{LoopPolicy, Policy, RuleHit};
use crate::wire::Reader;

// ---- audit records --------------------------------------------------------

/// Audit records: decode arbitrary bytes, and when they decode, check that
/// they re-encode to the same bytes and replay without panicking.
pub fn audit_decode(data: &[u8]) {
    for rec in crate::audit::records(data).flatten() {
        let _ = rec.replay();
        if let Ok(bytes) = rec.to_vec() {
            let again = AuditRecord::decode(&bytes).map(|(r, _)| r);
            assert_eq!(again, Ok(rec), "re-decoding an encoded record must give it back");
        }
    }
}

// ---- rules blobs ----------------------------------------------------------

/// Rules blobs: decoding any bytes must not panic; an accepted blob passes
/// the shared validator, re-encodes to the same bytes and answers a match
/// as the naive scan does.
pub fn rules_blob(data: &[u8]) {
    let Ok(rs) = blob::decode_rule_set(data) else { return };
    assert_eq!(crate::validate::check_rule_set(&rs), Ok(()), "the decoder accepted what the validator refuses");
    let again = blob::encode(&rs);
    assert!(again.as_deref() == Ok(data), "an accepted blob must re-encode to itself");
    if let Ok(compiled) = CompiledRules::compile(&rs) {
        let app: [u8; 4] = [b'a', 0, b'b', 0];
        let flow = Flow {
            protocol: Protocol::TCP,
            local: SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::LOCALHOST, 50000)),
            remote: SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::new(10, 0, 0, 1), 443)),
            endpoint: 1,
            pid: 1,
            app: AppId::from_utf16le(&app),
            original_app: AppId::from_utf16le(&app),
            package: None,
        };
        assert_eq!(compiled.first_match(&flow), rs.first_match(&flow), "compiled and naive disagree");
    }
}

// ---- the control protocol -------------------------------------------------

/// A stand-in rule set: only its id is observable.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StubPolicy(pub u32);

impl Policy for StubPolicy {
    fn loop_policy(&self) -> LoopPolicy {
        LoopPolicy::default()
    }
    fn first_match(&self, _: &Flow<'_>) -> Option<RuleHit> {
        None
    }
    fn is_trusted(&self, _: &AppId<'_>) -> bool {
        false
    }
    fn is_known_proxy(&self, _: &AppId<'_>) -> bool {
        false
    }
    fn id(&self) -> u32 {
        self.0
    }
}

/// The stand-in rules decoder: `RULE` and a u32 id, nothing else.
pub fn stub_decode_rules(blob: &[u8]) -> Result<StubPolicy, RulesRejected> {
    let mut r = Reader::new(blob);
    if r.array::<4>() != Ok(*b"RULE") {
        return Err(RulesRejected { code: 1, offset: 0 });
    }
    let id = r.u32().map_err(|_| RulesRejected { code: 2, offset: 4 })?;
    if r.remaining() != 0 {
        return Err(RulesRejected { code: 3, offset: 8 });
    }
    Ok(StubPolicy(id))
}

/// A [`ControlTarget`] over an owned arbiter and ring, for protocol tests
/// that need no callout (the driver's target is the callout's).
#[derive(Debug)]
pub struct TestTarget<P, D> {
    /// The core.
    pub arbiter: Arbiter<P>,
    /// The audit ring.
    pub ring: AuditRing,
    /// The handles' roles.
    pub handles: Handles,
    /// The rules decoder.
    pub decode_rules: D,
    /// This load's id.
    pub instance: u64,
}

impl<P: Policy, D: FnMut(&[u8]) -> Result<P, RulesRejected>> TestTarget<P, D> {
    /// A small target with `ring_bytes` of ring.
    pub fn new(policy: P, decode_rules: D, ring_bytes: usize, instance: u64) -> Self {
        let caps = Capacities { endpoints: 8, destinations: 8, known_proxies: 8 };
        Self {
            arbiter: Arbiter::new(Config::default(), caps, policy).expect("small tables"),
            ring: AuditRing::new(ring_bytes).expect("small ring"),
            handles: Handles::new(),
            decode_rules,
            instance,
        }
    }
}

impl<P: Policy, D: FnMut(&[u8]) -> Result<P, RulesRejected>> ControlTarget for TestTarget<P, D> {
    fn instance(&self) -> u64 {
        self.instance
    }
    fn load_rules(&mut self, blob: &[u8]) -> Result<u32, RulesRejected> {
        let policy = (self.decode_rules)(blob)?;
        drop(self.arbiter.replace_policy(policy));
        Ok(self.arbiter.policy().id())
    }
    fn rules_id(&self) -> u32 {
        self.arbiter.policy().id()
    }
    fn register_proxy(&mut self, r: ProxyRegistration) -> Result<(), SetProxyError> {
        self.arbiter.set_proxy(r.pid, r.v4, r.v6)
    }
    fn unregister_proxy(&mut self) {
        self.arbiter.clear_proxy();
    }
    fn proxy(&self) -> Option<ProxyRegistration> {
        self.arbiter.proxy().copied()
    }
    fn counters(&self) -> Counters {
        *self.arbiter.counters()
    }
    fn ring(&mut self) -> &mut AuditRing {
        &mut self.ring
    }
    fn handles(&mut self) -> &mut Handles {
        &mut self.handles
    }
}

/// Everything a request may change, for before/after comparisons.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Snapshot {
    /// The rules id.
    pub rules_id: u32,
    /// The registration.
    pub proxy: Option<ProxyRegistration>,
    /// The counters.
    pub counters: Counters,
    /// The ring, whole (cursors included).
    pub ring: AuditRing,
    /// The handles' roles.
    pub handles: Handles,
}

/// Takes a [`Snapshot`].
pub fn snapshot<T: ControlTarget + ?Sized>(t: &mut T) -> Snapshot {
    Snapshot {
        rules_id: t.rules_id(),
        proxy: t.proxy(),
        counters: t.counters(),
        ring: t.ring().clone(),
        handles: *t.handles(),
    }
}

/// The registered proxy's process and the handle it came through.
pub const PROXY_PID: u32 = 42;
/// The proxy's handle (read and write).
pub const PROXY_HANDLE: HandleId = HandleId(1);

/// The rules decoder of the control fuzz target: the driver's own.
fn decode_compiled(blob: &[u8]) -> Result<CompiledRules, RulesRejected> {
    blob::decode(blob).map_err(|_| RulesRejected { code: 1, offset: 0 })
}

/// The control fuzz target's body. The first byte picks the IOCTL code, the
/// caller's access, process and handle; the rest is the request. It runs
/// through [`handle`] against a small populated target (a proxy registered
/// through [`PROXY_HANDLE`], records in the ring) and checks:
///
/// - every reply decodes, and a refused request changed nothing;
/// - an accepted request came with its own IOCTL code and a handle with the
///   access that code needs, and a change came from the writer;
/// - an accepted registration names the caller's process and listeners the
///   shared validator accepts; accepted rules pass the shared validator;
/// - closing the proxy's handle unregisters it.
pub fn control(data: &[u8]) {
    let _ = Reply::decode(data)
        .map(|r| (r.info(), r.rules(), r.counters(), r.driver_counters(), r.drained().map(|d| d.records().count())));
    let Some((&pick, request)) = data.split_first() else { return };
    let Some(mut target) = populated() else { return };
    let op = Op::ALL.get(usize::from(pick & 7)).copied();
    let ioctl = op.map_or(u32::from(pick).wrapping_mul(0x0101_0101), Op::ioctl);
    let access = [Access::NONE, Access::READ, Access::WRITE, Access::READ_WRITE][usize::from((pick >> 3) & 3)];
    let pid = if pick & 0x20 == 0 { PROXY_PID } else { PROXY_PID + 1 };
    let handle_id = HandleId(u64::from(pick >> 6).saturating_add(1));
    let caller = Caller { pid, handle: handle_id, access };
    // The same request, also under its own code from the proxy's handle, so
    // that the fuzzer reaches the ops' own checks quickly.
    let own = Request::decode(request).ok().map(|r| r.op().ioctl());
    let proxy = Caller { pid: PROXY_PID, handle: PROXY_HANDLE, access: Access::READ_WRITE };
    let runs = [(ioctl, caller)].into_iter().chain(own.map(|code| (code, proxy)));
    for (code, who) in runs {
        // Also with a tiny reply buffer: refusals must still change nothing.
        for reply_len in [MIN_REPLY_BUFFER + 512, REPLY_HEADER_LEN + 20] {
            call_checked(&mut target, code, &who, request, reply_len);
        }
    }
    // Whoever else closes, the registration stays; its own handle's close ends it.
    close_handle(&mut target, HandleId(4));
    let owner = target.handles.owner();
    close_handle(&mut target, PROXY_HANDLE);
    if owner.is_some_and(|o| o.handle == PROXY_HANDLE) {
        assert_eq!(target.arbiter.proxy(), None, "closing the registering handle unregisters the proxy");
    }
    assert_eq!(target.handles.writer(), None);
}

type FuzzTarget = TestTarget<CompiledRules, fn(&[u8]) -> Result<CompiledRules, RulesRejected>>;

fn populated() -> Option<FuzzTarget> {
    let rules = CompiledRules::compile(&crate::policy::RuleSet::default()).ok()?;
    let mut t: FuzzTarget = TestTarget::new(rules, decode_compiled, 256, 9);
    for n in 0..12u8 {
        t.ring.push(&[n; 17]);
    }
    let proxy = Caller { pid: PROXY_PID, handle: PROXY_HANDLE, access: Access::READ_WRITE };
    assert_eq!(open_handle(&mut t, &proxy), Status::Ok);
    let reg = ProxyRegistration {
        pid: u64::from(PROXY_PID),
        v4: Some(SocketAddrV4::new(Ipv4Addr::LOCALHOST, 34010)),
        v6: None,
    };
    let mut reply = [0u8; 64];
    let n = handle(Op::RegisterProxy.ioctl(), &proxy, &Request::RegisterProxy(reg).to_vec(), &mut t, &mut reply);
    let status = Reply::decode(reply.get(..n)?).ok()?.status;
    assert_eq!(status, Status::Ok, "the proxy registers");
    Some(t)
}

fn call_checked(target: &mut FuzzTarget, ioctl: u32, caller: &Caller, request: &[u8], reply_len: usize) {
    let before = snapshot(target);
    let mut reply = alloc::vec![0u8; reply_len];
    let n = handle(ioctl, caller, request, target, &mut reply);
    let r = Reply::decode(reply.get(..n).unwrap_or(&[]));
    assert!(r.is_ok(), "the handler's reply must decode: {r:?}");
    let Ok(r) = r else { return };
    assert_eq!(r.instance, 9);
    let decoded = Request::decode(request);
    if let Ok(req) = decoded {
        // Valid requests have one encoding.
        assert_eq!(req.to_vec(), request);
    }
    if r.status != Status::Ok {
        assert_eq!(before, snapshot(target), "a refused request changed state ({})", r.status);
        return;
    }
    let req = decoded.expect("an accepted request decodes");
    let op = req.op();
    assert_eq!(Op::from_ioctl(ioctl), Some(op), "accepted under another op's code");
    assert!(caller.access.allows(op.access()), "accepted without the access its code needs");
    if op.mutates() {
        assert_eq!(target.handles.writer(), Some(caller.handle), "a change from a handle that is not the writer");
    }
    match req {
        Request::RegisterProxy(reg) => {
            assert_eq!(reg.pid, u64::from(caller.pid), "registered a PID that is not the caller's");
            for a in reg.v4.map(SocketAddr::V4).into_iter().chain(reg.v6.map(SocketAddr::V6)) {
                assert_eq!(crate::validate::check_listener(a, &|_| false), Ok(()), "listener {a}");
            }
            assert_eq!(target.handles.owner().map(|o| o.handle), Some(caller.handle));
        }
        Request::SetRules(b) => {
            let rs = blob::decode_rule_set(b).expect("accepted rules decode");
            assert_eq!(crate::validate::check_rule_set(&rs), Ok(()), "accepted rules the validator refuses");
        }
        Request::UnregisterProxy { .. } => {
            assert_eq!(before.handles.owner().map(|o| o.handle), Some(caller.handle), "unregistered by a stranger");
        }
        _ => {}
    }
}

/// Fuzz-input helper: a request under its own code from the proxy's handle.
pub fn encode_for_fuzz(op_request: &Request<'_>) -> Vec<u8> {
    let pick = Op::ALL.iter().position(|&o| o == op_request.op()).unwrap_or(0) as u8 | (3 << 3);
    let mut v = alloc::vec![pick];
    v.extend_from_slice(&op_request.to_vec());
    v
}
