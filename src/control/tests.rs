use super::handler::{Caller, HandleId, close_handle, handle, open_handle};
use super::ioctl::Access;
use super::wire::{get_counters, put_counters, put_driver_counters};
use super::*;
use crate::arbiter::Counters;
use crate::audit::AuditRecord;
use crate::audit::ring::{AuditRing, ENTRY_HEADER_LEN};
use crate::decide::ProxyRegistration;
use crate::fuzzing::{StubPolicy, TestTarget, stub_decode_rules};
use crate::policy::Policy;
use crate::wire::{Reader, Writer};
use alloc::collections::VecDeque;
use alloc::vec::Vec;
use proptest::prelude::*;

type Stub = TestTarget<StubPolicy, fn(&[u8]) -> Result<StubPolicy, RulesRejected>>;

/// The service: PID 5151, handle 1, read and write.
const SERVICE: Caller = Caller { pid: 5151, handle: HandleId(1), access: Access::READ_WRITE };

struct Rig {
    t: Stub,
}

/// The IOCTL code a request's header names (hello's when unreadable).
fn code_of(req: &[u8]) -> u32 {
    req.get(6).and_then(|&b| Op::from_u16(u16::from(b))).map_or(Op::Hello.ioctl(), Op::ioctl)
}

impl Rig {
    fn new(ring_bytes: usize) -> Self {
        let mut t: Stub = TestTarget::new(StubPolicy(7), stub_decode_rules, ring_bytes, 77);
        assert_eq!(open_handle(&mut t, &SERVICE), Status::Ok);
        Self { t }
    }

    /// Sends a request as the service, under its own code; returns the raw reply.
    fn call(&mut self, req: &[u8], reply_len: usize) -> Vec<u8> {
        self.call_as(&SERVICE, code_of(req), req, reply_len)
    }

    fn call_as(&mut self, caller: &Caller, ioctl: u32, req: &[u8], reply_len: usize) -> Vec<u8> {
        let mut reply = alloc::vec![0u8; reply_len];
        let n = handle(ioctl, caller, req, &mut self.t, &mut reply);
        reply.truncate(n);
        reply
    }

    fn status_as(&mut self, caller: &Caller, req: &Request<'_>) -> Status {
        Reply::decode(&self.call_as(caller, req.op().ioctl(), &req.to_vec(), 512)).unwrap().status
    }
}

fn reg() -> ProxyRegistration {
    ProxyRegistration {
        pid: 5151,
        v4: Some("127.0.0.1:34010".parse().unwrap()),
        v6: Some("[::1]:34010".parse().unwrap()),
    }
}

#[test]
fn requests_round_trip_with_one_encoding() {
    let v4_only = ProxyRegistration { pid: 1, v4: Some("10.1.2.3:9".parse().unwrap()), v6: None };
    let v6_only = ProxyRegistration { pid: 2, v4: None, v6: Some("[fe80::1%4]:80".parse().unwrap()) };
    for req in [
        Request::Hello,
        Request::SetRules(b"RULE\x01\0\0\0"),
        Request::RegisterProxy(reg()),
        Request::RegisterProxy(v4_only),
        Request::RegisterProxy(v6_only),
        Request::UnregisterProxy { pid: 5151 },
        Request::DrainAudit { cursor: 99, max_bytes: 4096 },
        Request::ReadCounters,
        Request::ReadDriverCounters,
    ] {
        let bytes = req.to_vec();
        assert_eq!(bytes.len(), req.encoded_len());
        assert_eq!(Request::decode(&bytes), Ok(req));
        // Every proper prefix is refused as truncated, never misread.
        for cut in 0..bytes.len() {
            let e = Request::decode(&bytes[..cut]).unwrap_err();
            assert_eq!(e.status, Status::Truncated, "{req:?} cut at {cut}");
        }
    }
}

#[test]
fn request_fixture_bytes() {
    let bytes = Request::DrainAudit { cursor: 0x0102, max_bytes: 0x10 }.to_vec();
    assert_eq!(
        bytes,
        [
            b'A', b'R', b'C', b'Q', 1, 0, 5, 0, 16, 0, 0, 0, // header
            2, 1, 0, 0, 0, 0, 0, 0, 0x10, 0, 0, 0, 0, 0, 0, 0, // cursor, max, reserved
        ]
    );
}

#[test]
fn malformed_requests_name_where_and_why() {
    let good = Request::RegisterProxy(reg()).to_vec();
    type Case = (fn(&mut Vec<u8>), Status, u32);
    let cases: [Case; 8] = [
        (|b| b[0] = b'X', Status::BadMagic, 0),
        (|b| b[4] = 2, Status::UnsupportedVersion, 4),
        (|b| b[6] = 99, Status::UnknownOp, 6),
        (|b| b.push(0), Status::BadLength, 60),
        (|b| b[8] = 49, Status::Truncated, 8),
        (|b| b[20] = 4, Status::BadValue, 20),
        (|b| b[21] = 1, Status::BadValue, 21),
        (|b| b[20] = 0, Status::BadValue, 24),
    ];
    for (i, (mutate, status, offset)) in cases.into_iter().enumerate() {
        let mut b = good.clone();
        mutate(&mut b);
        let e = Request::decode(&b).unwrap_err();
        assert_eq!((e.status, e.offset), (status, offset), "case {i}: {e}");
    }
    // An absent listener must be all zero.
    let mut b = Request::RegisterProxy(ProxyRegistration { v6: None, ..reg() }).to_vec();
    b[40] = 1;
    assert_eq!(Request::decode(&b).unwrap_err().status, Status::BadValue);
    let mut big = Request::SetRules(b"x").to_vec();
    big[8..12].copy_from_slice(&(MAX_RULES_LEN as u32 + 1).to_le_bytes());
    assert_eq!(Request::decode(&big).unwrap_err().status, Status::TooLarge);
    let empty = [b'A', b'R', b'C', b'Q', 1, 0, 2, 0, 0, 0, 0, 0];
    assert_eq!(Request::decode(&empty).unwrap_err().status, Status::BadLength);
}

#[test]
fn hello_reports_instance_rules_and_registration() {
    let mut rig = Rig::new(1024);
    let raw = rig.call(&Request::Hello.to_vec(), 512);
    let reply = Reply::decode(&raw).unwrap();
    assert_eq!((reply.op, reply.status, reply.instance), (Op::Hello as u16, Status::Ok, 77));
    let info = reply.info().unwrap();
    assert_eq!((info.rules_id, info.proxy), (7, None));
    assert_eq!(info.ring.capacity, 1024);

    let raw = rig.call(&Request::RegisterProxy(reg()).to_vec(), 512);
    assert_eq!(Reply::decode(&raw).unwrap().status, Status::Ok);
    let raw = rig.call(&Request::Hello.to_vec(), 512);
    assert_eq!(Reply::decode(&raw).unwrap().info().unwrap().proxy, Some(reg()));
}

#[test]
fn rules_swap_is_all_or_nothing() {
    let mut rig = Rig::new(1024);
    let raw = rig.call(&Request::SetRules(b"RULE\x2a\0\0\0").to_vec(), 512);
    assert_eq!(Reply::decode(&raw).unwrap().rules(), Ok(Ok(42)));
    assert_eq!(rig.t.arbiter.policy().id(), 42);
    let raw = rig.call(&Request::SetRules(b"RULE\x2a\0\0").to_vec(), 512);
    let reply = Reply::decode(&raw).unwrap();
    assert_eq!(reply.status, Status::RulesRejected);
    assert_eq!(reply.rules(), Ok(Err(RulesRejected { code: 2, offset: 4 })));
    assert_eq!(rig.t.arbiter.policy().id(), 42, "a rejected blob leaves the previous rules in force");
    // Too small a reply buffer: refused before the swap.
    let raw = rig.call(&Request::SetRules(b"RULE\x01\0\0\0").to_vec(), REPLY_HEADER_LEN + 4);
    let reply = Reply::decode(&raw).unwrap();
    assert_eq!((reply.status, reply.error_value()), (Status::ReplyTooSmall, Some(32)));
    assert_eq!(rig.t.arbiter.policy().id(), 42);
    // No room for a header at all.
    assert!(rig.call(&Request::Hello.to_vec(), REPLY_HEADER_LEN - 1).is_empty());
}

#[test]
fn registration_rules() {
    let mut rig = Rig::new(1024);
    let status = |raw: Vec<u8>| Reply::decode(&raw).unwrap().status;
    let zero = Request::RegisterProxy(ProxyRegistration { pid: 0, ..reg() }).to_vec();
    assert_eq!(status(rig.call(&zero, 64)), Status::ZeroPid);
    assert_eq!(rig.t.arbiter.proxy(), None);
    assert_eq!(status(rig.call(&Request::RegisterProxy(reg()).to_vec(), 64)), Status::Ok);
    // Only the registered PID may unregister (a stale service must not
    // unregister its successor).
    assert_eq!(status(rig.call(&Request::UnregisterProxy { pid: 1 }.to_vec(), 64)), Status::NotRegistered);
    assert_eq!(rig.t.arbiter.proxy(), Some(&reg()));
    assert_eq!(status(rig.call(&Request::UnregisterProxy { pid: 5151 }.to_vec(), 64)), Status::Ok);
    assert_eq!(rig.t.arbiter.proxy(), None);
}

#[test]
fn counters_carry_every_field() {
    let c = Counters {
        connect_redirect: 1,
        auth_connect: 2,
        verdicts: [3, 4, 5, 6],
        evicted: [7, 8, 9],
        expired: [10, 11, 12],
        forgotten: 13,
        loops_suspected: 14,
        records: 15,
    };
    let mut buf = [0u8; COUNTERS_LEN];
    let mut w = Writer::new(&mut buf);
    put_counters(&mut w, &c).unwrap();
    assert_eq!(w.written(), COUNTERS_LEN);
    assert_eq!(get_counters(&mut Reader::new(&buf)), Ok(c));
    // Every field lands in its own slot.
    let words: Vec<u64> = buf.chunks(8).map(|b| u64::from_le_bytes(b.try_into().unwrap())).collect();
    assert_eq!(words, (1..=15).collect::<Vec<_>>());

    let mut rig = Rig::new(1024);
    rig.t.ring.push(b"abc");
    let raw = rig.call(&Request::ReadCounters.to_vec(), MIN_REPLY_BUFFER);
    let (counters, stats) = Reply::decode(&raw).unwrap().counters().unwrap();
    assert_eq!(counters, *rig.t.arbiter.counters());
    assert_eq!((stats.held, stats.used, stats.next_seq), (1, 15, 1));
}

/// The driver's own counters (the boot guard's failed override adds) have
/// their own read-only op, so the read-counters reply keeps the shape that
/// readers built before them decode (they refuse trailing bytes).
#[test]
fn driver_counters_have_their_own_op_and_the_counters_reply_keeps_its_shape() {
    let mut rig = Rig::new(1024);
    let raw = rig.call(&Request::ReadCounters.to_vec(), MIN_REPLY_BUFFER);
    assert_eq!(raw.len(), REPLY_HEADER_LEN + COUNTERS_LEN + RING_STATS_LEN, "read-counters is unchanged");
    assert!(Reply::decode(&raw).unwrap().counters().is_ok());
    let raw = rig.call(&Request::ReadDriverCounters.to_vec(), MIN_REPLY_BUFFER);
    assert_eq!(raw.len(), REPLY_HEADER_LEN + DRIVER_COUNTERS_LEN);
    let reply = Reply::decode(&raw).unwrap();
    assert_eq!(reply.driver_counters().unwrap(), DriverCounters::default());
    assert!(reply.counters().is_err(), "one op's reply is not read as another's");
    let mut body = [0u8; DRIVER_COUNTERS_LEN];
    put_driver_counters(&mut Writer::new(&mut body), &DriverCounters { override_failures: 0x0102 }).unwrap();
    assert_eq!(body, 0x0102u64.to_le_bytes());
    let short = rig.call(&Request::ReadDriverCounters.to_vec(), REPLY_HEADER_LEN + DRIVER_COUNTERS_LEN - 1);
    assert_eq!(Reply::decode(&short).unwrap().status, Status::ReplyTooSmall);
}

/// Drains everything through the control protocol, checking that each
/// sequence number is seen exactly once or counted lost.
fn drain_all(rig: &mut Rig, cursor: &mut u64, max_bytes: u32, seen: &mut Vec<(u64, Vec<u8>)>) -> u64 {
    let mut lost = 0;
    for _ in 0..1000 {
        let raw = rig.call(&Request::DrainAudit { cursor: *cursor, max_bytes }.to_vec(), 4096);
        let reply = Reply::decode(&raw).unwrap();
        let d = reply.drained().unwrap();
        lost += d.lost;
        let mut expect = *cursor + d.lost;
        for rec in d.records() {
            let (seq, bytes) = rec.unwrap();
            assert_eq!(seq, expect, "records come in order with no gap or repeat");
            expect += 1;
            seen.push((seq, bytes.to_vec()));
        }
        assert_eq!(d.next_cursor, expect);
        *cursor = d.next_cursor;
        if d.pending == 0 {
            return lost;
        }
    }
    panic!("drain did not finish");
}

#[test]
fn drain_with_cursor_loses_nothing_and_repeats_nothing() {
    let mut rig = Rig::new(200);
    let mut cursor = 0;
    let mut seen = Vec::new();
    for i in 0..5u8 {
        rig.t.ring.push(&[i; 20]);
    }
    assert_eq!(drain_all(&mut rig, &mut cursor, 70, &mut seen), 0);
    assert_eq!(seen.iter().map(|s| s.0).collect::<Vec<_>>(), [0, 1, 2, 3, 4]);
    assert_eq!(seen[3].1, [3; 20]);
    // A repeated drain at the same cursor returns nothing new.
    assert_eq!(drain_all(&mut rig, &mut cursor, 0, &mut seen), 0);
    assert_eq!(seen.len(), 5);
    // Overflow: 20 more 32-byte entries into 200 bytes drop the oldest.
    for i in 0..20u8 {
        rig.t.ring.push(&[i; 20]);
    }
    let lost = drain_all(&mut rig, &mut cursor, 0, &mut seen);
    assert!(lost > 0);
    assert_eq!(lost + seen.len() as u64, 25, "every record is either read or counted lost");
    assert_eq!(rig.t.ring.stats().dropped, lost);
}

#[test]
fn drain_refusals_change_nothing() {
    let mut rig = Rig::new(200);
    rig.t.ring.push(&[1; 100]);
    let before = rig.t.ring.clone();
    let raw = rig.call(&Request::DrainAudit { cursor: 5, max_bytes: 0 }.to_vec(), 4096);
    assert_eq!(Reply::decode(&raw).unwrap().status, Status::CursorAhead);
    let raw = rig.call(&Request::DrainAudit { cursor: 0, max_bytes: 50 }.to_vec(), 4096);
    let reply = Reply::decode(&raw).unwrap();
    assert_eq!((reply.status, reply.error_value()), (Status::ReplyTooSmall, Some(24 + 24 + 112)));
    let raw = rig.call(&Request::DrainAudit { cursor: 0, max_bytes: 0 }.to_vec(), 100);
    assert_eq!(Reply::decode(&raw).unwrap().status, Status::ReplyTooSmall);
    assert_eq!(rig.t.ring, before);
}

#[test]
fn oversized_records_leave_a_placeholder() {
    let mut ring = AuditRing::new(64).unwrap();
    ring.push(&[1; 10]);
    let seq = ring.push(&[2; 100]);
    assert_eq!(seq, 1);
    let held: Vec<_> = ring.iter().map(|(s, b)| (s, b.len())).collect();
    assert_eq!(held, [(0, 10), (1, 0)]);
    assert_eq!(ring.stats().oversized, 1);
}

#[test]
fn push_record_encodes_in_place() {
    use crate::audit::{DepartedEntry, DepartureRecord};
    use crate::table::Departure;
    let rec = DepartureRecord {
        seq: 3,
        at: crate::time::Instant::from_millis(10),
        table: crate::arbiter::TableId::KnownProxies,
        why: Departure::Evicted,
        entry: DepartedEntry::KnownProxy { pid: 4242 },
    }
    .record();
    let mut ring = AuditRing::new(4096).unwrap();
    let seq = ring.push_record(&rec);
    let (s, bytes) = ring.iter().next().unwrap();
    assert_eq!(s, seq);
    assert_eq!(AuditRecord::decode(bytes).unwrap().0, rec);
}

#[derive(Clone, Debug)]
enum RingOp {
    Push(usize),
    Drain(u32),
}

fn ring_op() -> impl Strategy<Value = RingOp> {
    prop_oneof![3 => (0usize..120).prop_map(RingOp::Push), 1 => (0u32..300).prop_map(RingOp::Drain)]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: if cfg!(miri) { 4 } else { 256 }, ..ProptestConfig::default() })]

    /// Random bytes never panic, always get a decodable reply, and
    /// change nothing unless accepted.
    #[test]
    fn random_bytes_never_panic_or_change_state(data in proptest::collection::vec(any::<u8>(), 0..120)) {
        crate::fuzzing::control(&data);
    }

    /// Valid requests with one byte changed: refused ones change nothing.
    #[test]
    fn mutated_requests_are_refused_cleanly(which in 0usize..5, at in any::<prop::sample::Index>(), byte in any::<u8>()) {
        let reqs = [
            Request::RegisterProxy(reg()).to_vec(),
            Request::DrainAudit { cursor: 3, max_bytes: 64 }.to_vec(),
            Request::SetRules(b"RULE\x05\0\0\0").to_vec(),
            Request::UnregisterProxy { pid: 42 }.to_vec(),
            Request::Hello.to_vec(),
        ];
        let mut req = reqs[which].clone();
        let i = at.index(req.len());
        req[i] = byte;
        let mut input = alloc::vec![0x18u8];
        input.extend_from_slice(&req);
        crate::fuzzing::control(&input);
    }

    /// The ring against a model: with drains interleaved, every record is
    /// read exactly once, in order, or counted as lost.
    #[test]
    fn ring_matches_model(ops in proptest::collection::vec(ring_op(), 1..80), cap in 12usize..400) {
        let mut rig = Rig::new(cap);
        let mut model: VecDeque<(u64, Vec<u8>)> = VecDeque::new();
        let mut pushed = 0u64;
        let mut cursor = 0u64;
        let mut read = 0u64;
        let mut lost = 0u64;
        for op in ops {
            match op {
                RingOp::Push(len) => {
                    let data: Vec<u8> = (0..len).map(|i| (i as u8) ^ (pushed as u8)).collect();
                    let seq = rig.t.ring.push(&data);
                    prop_assert_eq!(seq, pushed);
                    let kept = if len + ENTRY_HEADER_LEN <= rig.t.ring.capacity() { data } else { Vec::new() };
                    model.push_back((seq, kept));
                    pushed += 1;
                    prop_assert!(rig.t.ring.used() <= rig.t.ring.capacity());
                }
                RingOp::Drain(max) => {
                    let raw = rig.call(&Request::DrainAudit { cursor, max_bytes: max }.to_vec(), 4096);
                    let reply = Reply::decode(&raw).unwrap();
                    if reply.status == Status::ReplyTooSmall {
                        continue;
                    }
                    let d = reply.drained().unwrap();
                    lost += d.lost;
                    // The model's oldest entries were dropped by the ring.
                    while model.front().is_some_and(|(s, _)| *s < cursor + d.lost) {
                        model.pop_front();
                    }
                    for rec in d.records() {
                        let (seq, bytes) = rec.unwrap();
                        let (mseq, mbytes) = model.pop_front().unwrap();
                        prop_assert_eq!((seq, bytes), (mseq, mbytes.as_slice()));
                        read += 1;
                    }
                    cursor = d.next_cursor;
                    prop_assert_eq!(u64::from(d.pending), pushed - cursor);
                }
            }
        }
        let held_unread = pushed - cursor;
        prop_assert_eq!(read + lost + held_unread, pushed);
        // What the ring still holds from the cursor on matches the model's tail.
        let tail: Vec<_> = rig.t.ring.iter().filter(|(s, _)| *s >= cursor).map(|(s, b)| (s, b.to_vec())).collect();
        let model_tail: Vec<_> = model.iter().filter(|(s, _)| *s >= rig.t.ring.first_seq()).cloned().collect();
        prop_assert_eq!(tail, model_tail);
    }
}

// ---- issue 12: who may do what -------------------------------------------

fn status(raw: &[u8]) -> Status {
    Reply::decode(raw).unwrap().status
}

/// Each op has its own code, with the access bits the docs table gives.
#[test]
fn ioctl_codes_are_the_documented_ones() {
    let table = [
        (Op::Hello, 0x8A7B_6404u32),
        (Op::SetRules, 0x8A7B_A408),
        (Op::RegisterProxy, 0x8A7B_A40C),
        (Op::UnregisterProxy, 0x8A7B_A410),
        (Op::DrainAudit, 0x8A7B_6414),
        (Op::ReadCounters, 0x8A7B_6418),
        (Op::ReadDriverCounters, 0x8A7B_641C),
    ];
    for (op, code) in table {
        assert_eq!(op.ioctl(), code, "{}", op.name());
        assert_eq!(Op::from_ioctl(code), Some(op));
        // Bits 14..16: FILE_READ_ACCESS (1) or FILE_WRITE_ACCESS (2), never both.
        assert_eq!((code >> 14) & 3, if op.mutates() { 2 } else { 1 });
        assert_eq!(code & 3, 0, "METHOD_BUFFERED");
    }
    assert_eq!(Op::from_ioctl(0x8A7B_E400), None, "the old read-and-write code is gone");
}

/// Issue 12: a handle opened for reading could replace the rules and
/// register or unregister the proxy (one code needed both bits, and the
/// device let anyone open it for both).
#[test]
fn a_read_only_handle_cannot_change_anything() {
    let mut rig = Rig::new(1024);
    let reader = Caller { pid: 5151, handle: HandleId(2), access: Access::READ };
    assert_eq!(open_handle(&mut rig.t, &reader), Status::Ok);
    let before = crate::fuzzing::snapshot(&mut rig.t);
    for req in
        [Request::SetRules(b"RULE\x2a\0\0\0"), Request::RegisterProxy(reg()), Request::UnregisterProxy { pid: 5151 }]
    {
        assert_eq!(rig.status_as(&reader, &req), Status::AccessDenied, "{:?}", req.op());
    }
    assert_eq!(crate::fuzzing::snapshot(&mut rig.t), before);
    for req in [
        Request::Hello,
        Request::ReadCounters,
        Request::ReadDriverCounters,
        Request::DrainAudit { cursor: 0, max_bytes: 0 },
    ] {
        assert_eq!(rig.status_as(&reader, &req), Status::Ok, "{:?}", req.op());
    }
    // A write-only handle cannot read.
    let writer_only = Caller { pid: 5151, handle: HandleId(1), access: Access::WRITE };
    assert_eq!(rig.status_as(&writer_only, &Request::Hello), Status::AccessDenied);
}

/// A write op sent under a read op's code is refused: the code, checked by
/// the I/O manager against the handle, must be the op's own.
#[test]
fn an_op_under_another_ops_code_is_refused() {
    let mut rig = Rig::new(1024);
    let req = Request::SetRules(b"RULE\x2a\0\0\0").to_vec();
    for code in [Op::Hello.ioctl(), Op::RegisterProxy.ioctl(), 0, 0x8A7B_E400] {
        let raw = rig.call_as(&SERVICE, code, &req, 512);
        assert_eq!(status(&raw), Status::WrongIoctl, "code {code:#x}");
    }
    assert_eq!(rig.t.arbiter.policy().id(), 7);
}

/// Issue 12: the registered PID came from the request body, so any caller
/// could send other users' flows to a process of its choice.
#[test]
fn a_registration_names_the_callers_own_process() {
    let mut rig = Rig::new(1024);
    let other = Caller { pid: 666, ..SERVICE };
    assert_eq!(rig.status_as(&other, &Request::RegisterProxy(reg())), Status::PidNotCaller);
    assert_eq!(rig.t.arbiter.proxy(), None);
    assert_eq!(rig.status_as(&SERVICE, &Request::RegisterProxy(reg())), Status::Ok);
    let owner = rig.t.handles.owner().unwrap();
    assert_eq!((owner.handle, owner.pid), (SERVICE.handle, 5151));
}

/// Issue 12: unregistering compared the body's PID, so anyone could
/// unregister the real proxy by naming its PID.
#[test]
fn only_the_registering_handle_may_unregister() {
    let mut rig = Rig::new(1024);
    assert_eq!(rig.status_as(&SERVICE, &Request::RegisterProxy(reg())), Status::Ok);
    // Another process, another handle, naming the right PID.
    let stranger = Caller { pid: 666, handle: HandleId(9), access: Access::READ_WRITE };
    assert_eq!(rig.status_as(&stranger, &Request::UnregisterProxy { pid: 5151 }), Status::WriterBusy);
    assert_eq!(rig.t.arbiter.proxy().copied(), Some(reg()));
    // Even as the writer, a handle that did not register cannot unregister.
    close_handle(&mut rig.t, SERVICE.handle);
    rig.t.arbiter.set_proxy(5151, reg().v4, reg().v6).unwrap();
    assert_eq!(rig.status_as(&stranger, &Request::UnregisterProxy { pid: 5151 }), Status::NotOwner);
    assert_eq!(rig.t.arbiter.proxy().copied(), Some(reg()));
}

/// Issue 12: a registration outlived its handle (no cleanup), so a dead
/// proxy kept receiving flows.
#[test]
fn closing_the_registering_handle_unregisters() {
    let mut rig = Rig::new(1024);
    let reader = Caller { pid: 77, handle: HandleId(2), access: Access::READ };
    assert_eq!(open_handle(&mut rig.t, &reader), Status::Ok);
    assert_eq!(rig.status_as(&SERVICE, &Request::RegisterProxy(reg())), Status::Ok);
    close_handle(&mut rig.t, reader.handle);
    assert_eq!(rig.t.arbiter.proxy().copied(), Some(reg()), "another handle's close changes nothing");
    close_handle(&mut rig.t, SERVICE.handle);
    assert_eq!(rig.t.arbiter.proxy(), None);
    assert_eq!(rig.t.handles.owner(), None);
    assert_eq!(rig.t.handles.writer(), None);
}

/// Issue 12: the device was opened exclusively, so whoever held it locked
/// the service out. Now: any number of readers, one writer.
#[test]
fn many_readers_one_writer() {
    let mut rig = Rig::new(1024);
    for h in 2..10 {
        let reader = Caller { pid: 1000 + h as u32, handle: HandleId(h), access: Access::READ };
        assert_eq!(open_handle(&mut rig.t, &reader), Status::Ok);
    }
    let second = Caller { pid: 99, handle: HandleId(20), access: Access::READ_WRITE };
    assert_eq!(open_handle(&mut rig.t, &second), Status::WriterBusy);
    assert_eq!(rig.status_as(&second, &Request::SetRules(b"RULE\x01\0\0\0")), Status::WriterBusy);
    close_handle(&mut rig.t, SERVICE.handle);
    assert_eq!(open_handle(&mut rig.t, &second), Status::Ok);
    assert_eq!(rig.status_as(&second, &Request::SetRules(b"RULE\x01\0\0\0")), Status::Ok);
}

/// Issue 12: RegisterProxy took non-loopback listeners and port 0.
#[test]
fn registration_listeners_pass_the_shared_validator() {
    let mut rig = Rig::new(1024);
    for (v4, v6) in [
        (Some("93.184.216.34:0"), None),
        (Some("93.184.216.34:443"), None),
        (Some("127.0.0.1:0"), None),
        (Some("0.0.0.0:34010"), None),
        (None, Some("[::]:34010")),
        (Some("127.0.0.1:34010"), Some("[2001:db8::1]:34010")),
    ] {
        let r = ProxyRegistration {
            pid: 5151,
            v4: v4.map(|a: &str| a.parse().unwrap()),
            v6: v6.map(|a: &str| a.parse().unwrap()),
        };
        assert_eq!(rig.status_as(&SERVICE, &Request::RegisterProxy(r)), Status::BadListener, "{r:?}");
        assert_eq!(rig.t.arbiter.proxy(), None);
    }
}

/// Issue 12: one shared drain cursor let any reader discard every other
/// reader's unread records. Through the handler: each handle has its own.
#[test]
fn each_handle_drains_with_its_own_cursor() {
    let mut rig = Rig::new(4096);
    for i in 0..3u8 {
        rig.t.ring.push(&[i; 10]);
    }
    let other = Caller { pid: 88, handle: HandleId(2), access: Access::READ };
    let drain = |rig: &mut Rig, who: &Caller, cursor: u64| {
        let raw =
            rig.call_as(who, Op::DrainAudit.ioctl(), &Request::DrainAudit { cursor, max_bytes: 0 }.to_vec(), 4096);
        let reply = Reply::decode(&raw).unwrap();
        let d = reply.drained().unwrap();
        (d.next_cursor, d.lost, d.records().map(|r| r.unwrap().0).collect::<Vec<_>>())
    };
    assert_eq!(drain(&mut rig, &SERVICE, 0).2, [0, 1, 2]);
    // The other reader reads and acknowledges everything.
    assert_eq!(drain(&mut rig, &other, 0).2, [0, 1, 2]);
    assert_eq!(drain(&mut rig, &other, 3).2, Vec::<u64>::new());
    // The service has acknowledged nothing: all three are still there for it.
    assert_eq!(drain(&mut rig, &SERVICE, 0), (3, 0, alloc::vec![0, 1, 2]));
    assert_eq!(rig.t.ring.stats().readers, 2);
    close_handle(&mut rig.t, other.handle);
    assert_eq!(rig.t.ring.stats().readers, 1);
}

/// The fuzz target's body over its committed corpus (seeded with every op
/// under every access and caller), so its oracles run in `cargo test` too.
#[test]
#[cfg_attr(miri, ignore = "reads the corpus folder; slow under Miri")]
fn the_fuzz_corpus_passes_the_oracles() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/corpus/control_decode");
    let mut n = 0;
    for entry in std::fs::read_dir(dir).unwrap() {
        let data = std::fs::read(entry.unwrap().path()).unwrap();
        crate::fuzzing::control(&data);
        n += 1;
    }
    assert!(n > 100);
}
