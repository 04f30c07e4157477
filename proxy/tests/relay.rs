//! The relays over loopback, with WFP played by `LoopbackProvider`: record
//! propagation, half-close, back-pressure, and each failure path.

#![allow(clippy::std_instead_of_core, clippy::alloc_instead_of_core, reason = "std test: host tool")]

use std::io::{ErrorKind, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{self, Receiver};
use std::thread;
use std::time::{Duration, Instant};

use arbiter::context::{ContextError, RedirectContext};
use arbiter_proxy::redirect::{LoopbackProvider, QueryError, RawRedirect};
use arbiter_proxy::tcp::{ConnReport, Outcome, RelayOptions, Side, TcpRelay};
use arbiter_proxy::udp::{FlowOutcome, FlowReport, UdpOptions, UdpRelay};
use socket2::{Domain, Socket, Type};

const WAIT: Duration = Duration::from_secs(10);

/// Whether this Windows build runs under Wine (whose ntdll exports `wine_get_version`).
#[cfg(windows)]
fn under_wine() -> bool {
    use windows_sys::Win32::System::LibraryLoader::{GetModuleHandleA, GetProcAddress};
    // SAFETY: both names are NUL-terminated literals; ntdll is always loaded.
    let ntdll = unsafe { GetModuleHandleA(c"ntdll.dll".as_ptr().cast()) };
    // SAFETY: as above; a null module yields a null procedure address.
    !ntdll.is_null() && unsafe { GetProcAddress(ntdll, c"wine_get_version".as_ptr().cast()) }.is_some()
}

#[cfg(not(windows))]
const fn under_wine() -> bool {
    false
}
const RECORDS: &[u8] = b"opaque WFP redirect records \x00\x01\x02";

fn lo() -> SocketAddr {
    "127.0.0.1:0".parse().unwrap()
}

fn context(dst: SocketAddr, app: SocketAddr, pid: u64) -> Vec<u8> {
    RedirectContext { original_remote: dst, original_local: app, pid }.encode().to_vec()
}

struct Tcp {
    relay: TcpRelay,
    provider: LoopbackProvider,
    reports: Receiver<ConnReport>,
}

fn tcp_relay() -> Tcp {
    let provider = LoopbackProvider::new();
    let (tx, reports) = mpsc::channel();
    let tx = std::sync::Mutex::new(tx);
    let relay = TcpRelay::start(
        TcpListener::bind(lo()).unwrap(),
        Arc::new(provider.clone()),
        RelayOptions { connect_timeout: Duration::from_secs(3), ..RelayOptions::default() },
        Arc::new(move |r| {
            let _ = tx.lock().unwrap().send(r);
        }),
    )
    .unwrap();
    Tcp { relay, provider, reports }
}

impl Tcp {
    /// Connects as an application whose connection WFP redirected with `raw`.
    fn connect(&self, raw: impl FnOnce(SocketAddr) -> RawRedirect) -> TcpStream {
        self.try_connect(raw).expect("the relay reset the connection before connect() returned")
    }

    /// Connects and expects the relay to end the connection without data:
    /// after the application's connect() returned, or during it.
    fn expect_reset(&self, raw: impl FnOnce(SocketAddr) -> RawRedirect) {
        if let Some(c) = self.try_connect(raw) {
            assert_closed_without_data(c);
        }
    }

    /// As [`Self::connect`], but `None` when the relay reset the connection
    /// so fast that the application's connect() itself reports it (Linux
    /// then says EPIPE or ECONNRESET): a reset is what some tests expect.
    fn try_connect(&self, raw: impl FnOnce(SocketAddr) -> RawRedirect) -> Option<TcpStream> {
        let s = Socket::new(Domain::IPV4, Type::STREAM, None).unwrap();
        s.bind(&lo().into()).unwrap();
        let app = s.local_addr().unwrap().as_socket().unwrap();
        self.provider.announce(app, raw(app));
        if let Err(e) = s.connect(&self.relay.local_addr().into()) {
            let reset = [ErrorKind::BrokenPipe, ErrorKind::ConnectionReset, ErrorKind::ConnectionAborted];
            assert!(reset.contains(&e.kind()), "connecting to the relay: {e}");
            return None;
        }
        let s: TcpStream = s.into();
        s.set_read_timeout(Some(WAIT)).unwrap();
        s.set_write_timeout(Some(WAIT)).unwrap();
        Some(s)
    }

    fn report(&self) -> ConnReport {
        self.reports.recv_timeout(WAIT).expect("a report for every connection")
    }
}

fn redirected_to(dst: SocketAddr, pid: u64) -> impl FnOnce(SocketAddr) -> RawRedirect {
    move |app| RawRedirect { records: Some(RECORDS.to_vec()), context: Some(context(dst, app, pid)) }
}

/// A listener that must not see a connection.
fn untouched_upstream() -> TcpListener {
    let l = TcpListener::bind(lo()).unwrap();
    l.set_nonblocking(true).unwrap();
    l
}

fn assert_never_contacted(l: &TcpListener) {
    assert_eq!(l.accept().map(|_| ()).unwrap_err().kind(), ErrorKind::WouldBlock, "upstream was contacted");
}

/// The client's view of a refused or reset connection: no data, then an end.
fn assert_closed_without_data(mut s: TcpStream) {
    let mut buf = [0u8; 16];
    match s.read(&mut buf) {
        Ok(0) => {}
        Err(e) => assert!(matches!(e.kind(), ErrorKind::ConnectionReset | ErrorKind::ConnectionAborted), "{e}"),
        Ok(n) => panic!("got {n} bytes from a refused connection"),
    }
}

#[test]
fn records_propagate_and_bytes_flow_both_ways_with_half_close() {
    let t = tcp_relay();
    let upstream = TcpListener::bind(lo()).unwrap();
    let dst = upstream.local_addr().unwrap();
    // The far end reads to EOF (our half-close), then answers and closes.
    let server = thread::spawn(move || {
        let (mut s, peer) = upstream.accept().unwrap();
        s.set_read_timeout(Some(WAIT)).unwrap();
        let mut got = Vec::new();
        s.read_to_end(&mut got).unwrap();
        s.write_all(
            format!("got {} bytes, sum {}", got.len(), got.iter().map(|&b| u64::from(b)).sum::<u64>()).as_bytes(),
        )
        .unwrap();
        peer
    });
    let mut c = t.connect(redirected_to(dst, 4242));
    let payload: Vec<u8> = (0..1_000_000u32).map(|i| (i % 251) as u8).collect();
    c.write_all(&payload).unwrap();
    c.shutdown(Shutdown::Write).unwrap();
    let mut answer = String::new();
    c.read_to_string(&mut answer).unwrap();
    let sum: u64 = payload.iter().map(|&b| u64::from(b)).sum();
    assert_eq!(answer, format!("got 1000000 bytes, sum {sum}"));

    let outbound = server.join().unwrap();
    assert_eq!(
        t.provider.propagated(outbound).as_deref(),
        Some(RECORDS),
        "the upstream connection carries the records"
    );
    let r = t.report();
    assert!(matches!(r.outcome, Outcome::Completed), "{:?}", r.outcome);
    assert_eq!((r.original, r.pid, r.outbound), (Some(dst), Some(4242), Some(outbound)));
    assert_eq!((r.up, r.down), (1_000_000, answer.len() as u64));
}

#[test]
fn unknown_context_is_refused_without_contacting_anyone() {
    let t = tcp_relay();
    let upstream = untouched_upstream();
    let dst = upstream.local_addr().unwrap();
    let mut foreign = context(dst, lo(), 1);
    foreign[..4].copy_from_slice(b"XYZW"); // another vendor's context
    t.expect_reset(|_| RawRedirect { records: Some(RECORDS.to_vec()), context: Some(foreign) });
    let r = t.report();
    assert!(matches!(r.outcome, Outcome::Refused(QueryError::UnknownContext(ContextError::Magic))), "{:?}", r.outcome);
    // A context of the wrong size is unknown too.
    t.expect_reset(|_| RawRedirect { records: Some(RECORDS.to_vec()), context: Some(vec![0; 10]) });
    assert!(matches!(t.report().outcome, Outcome::Refused(QueryError::UnknownContext(ContextError::Length))));
    assert_never_contacted(&upstream);
    assert_eq!(t.provider.propagated_count(), 0);
}

#[test]
fn missing_records_or_context_are_refused() {
    let t = tcp_relay();
    let upstream = untouched_upstream();
    let dst = upstream.local_addr().unwrap();
    // Forwarding without records would make our outbound look new to every
    // redirector: that is how loops start. Refuse instead.
    t.expect_reset(|app| RawRedirect { records: None, context: Some(context(dst, app, 7)) });
    assert!(matches!(t.report().outcome, Outcome::Refused(QueryError::MissingRecords)));
    t.expect_reset(|app| RawRedirect { records: Some(Vec::new()), context: Some(context(dst, app, 7)) });
    assert!(matches!(t.report().outcome, Outcome::Refused(QueryError::MissingRecords)));
    // Not redirected at all (someone connected to the listener directly).
    t.expect_reset(|_| RawRedirect::default());
    assert!(matches!(t.report().outcome, Outcome::Refused(QueryError::MissingContext)));
    assert_never_contacted(&upstream);
}

#[test]
fn refused_upstream_resets_the_client() {
    let t = tcp_relay();
    let dst = {
        let l = TcpListener::bind(lo()).unwrap();
        l.local_addr().unwrap()
    }; // closed again: connecting there is refused
    t.expect_reset(redirected_to(dst, 9));
    let r = t.report();
    match r.outcome {
        Outcome::UpstreamFailed(e) => assert_eq!(e.kind(), ErrorKind::ConnectionRefused),
        other => panic!("expected upstream-failed, got {other:?}"),
    }
    // The records were still set before the attempt.
    assert_eq!(t.provider.propagated_count(), 1);
}

#[test]
fn upstream_reset_mid_stream_resets_the_client() {
    let t = tcp_relay();
    let upstream = TcpListener::bind(lo()).unwrap();
    let dst = upstream.local_addr().unwrap();
    let server = thread::spawn(move || {
        let (mut s, _) = upstream.accept().unwrap();
        let mut buf = [0u8; 5];
        s.read_exact(&mut buf).unwrap();
        s.write_all(b"partial").unwrap();
        thread::sleep(Duration::from_millis(50));
        // Abort: linger 0 turns the close into a reset.
        socket2::SockRef::from(&s).set_linger(Some(Duration::ZERO)).unwrap();
        drop(s);
    });
    let mut c = t.connect(redirected_to(dst, 1));
    c.write_all(b"hello").unwrap();
    let mut got = [0u8; 7];
    c.read_exact(&mut got).unwrap();
    assert_eq!(&got, b"partial");
    server.join().unwrap();
    let r = t.report();
    match r.outcome {
        Outcome::Aborted { side: Side::Upstream, error } => assert_eq!(error.kind(), ErrorKind::ConnectionReset),
        other => panic!("expected an upstream abort, got {other:?}"),
    }
    assert_eq!((r.up, r.down), (5, 7));
    // The client learns of it too (a reset, or at least an end), promptly.
    let started = Instant::now();
    let mut rest = [0u8; 8];
    let end = c.read(&mut rest);
    assert!(matches!(end, Ok(0)) || end.is_err(), "{end:?}");
    assert!(started.elapsed() < WAIT);
}

#[test]
fn client_reset_mid_stream_resets_upstream() {
    let t = tcp_relay();
    let upstream = TcpListener::bind(lo()).unwrap();
    let dst = upstream.local_addr().unwrap();
    let server = thread::spawn(move || {
        let (mut s, _) = upstream.accept().unwrap();
        s.set_read_timeout(Some(WAIT)).unwrap();
        let mut buf = [0u8; 3];
        s.read_exact(&mut buf).unwrap();
        s.write_all(b"ok").unwrap();
        let mut rest = [0u8; 8];
        let end = s.read(&mut rest);
        assert!(matches!(end, Ok(0)) || end.is_err(), "{end:?}");
    });
    let mut c = t.connect(redirected_to(dst, 1));
    c.write_all(b"abc").unwrap();
    let mut ok = [0u8; 2];
    c.read_exact(&mut ok).unwrap();
    socket2::SockRef::from(&c).set_linger(Some(Duration::ZERO)).unwrap();
    drop(c);
    server.join().unwrap();
    match t.report().outcome {
        Outcome::Aborted { side: Side::Client, .. } | Outcome::Completed => {}
        other => panic!("unexpected {other:?}"),
    }
}

#[test]
fn back_pressure_bounds_what_is_in_flight() {
    const TOTAL: usize = 96 << 20;
    let t = tcp_relay();
    let upstream = TcpListener::bind(lo()).unwrap();
    let dst = upstream.local_addr().unwrap();
    let mut c = t.connect(redirected_to(dst, 1));
    let (mut far, _) = upstream.accept().unwrap();
    far.set_read_timeout(Some(WAIT)).unwrap();
    let written = Arc::new(AtomicU64::new(0));
    let w = Arc::clone(&written);
    let writer = thread::spawn(move || {
        let chunk = vec![7u8; 64 * 1024];
        for _ in 0..TOTAL / chunk.len() {
            c.write_all(&chunk).unwrap();
            w.fetch_add(chunk.len() as u64, Ordering::SeqCst);
        }
        c.shutdown(Shutdown::Write).unwrap();
        c
    });
    // The far end does not read: the writer must stall once the socket
    // buffers and the relay's one buffer per direction are full.
    thread::sleep(Duration::from_millis(400));
    let stalled_at = written.load(Ordering::SeqCst);
    assert!(
        stalled_at < (TOTAL / 2) as u64,
        "writer got {stalled_at} bytes ahead: the relay is buffering without bound"
    );
    let mut got = 0usize;
    let mut buf = vec![0u8; 256 * 1024];
    loop {
        let n = far.read(&mut buf).unwrap();
        if n == 0 {
            break;
        }
        got += n;
    }
    assert_eq!(got, TOTAL);
    drop(far);
    drop(writer.join().unwrap());
    assert_eq!(t.report().up, TOTAL as u64);
}

struct Udp {
    relay: UdpRelay,
    provider: LoopbackProvider,
    reports: Receiver<FlowReport>,
}

fn udp_relay(idle: Duration) -> Udp {
    let provider = LoopbackProvider::new();
    let (tx, reports) = mpsc::channel();
    let tx = std::sync::Mutex::new(tx);
    let relay = UdpRelay::start(
        UdpSocket::bind(lo()).unwrap(),
        Arc::new(provider.clone()),
        UdpOptions { idle_timeout: idle, max_flows: 8, poll: Duration::from_millis(20) },
        Arc::new(move |r| {
            let _ = tx.lock().unwrap().send(r);
        }),
    )
    .unwrap();
    Udp { relay, provider, reports }
}

impl Udp {
    fn app(&self, raw: impl FnOnce(SocketAddr) -> RawRedirect) -> UdpSocket {
        let s = UdpSocket::bind(lo()).unwrap();
        self.provider.announce(s.local_addr().unwrap(), raw(s.local_addr().unwrap()));
        s.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
        s
    }
}

/// A live UDP socket that never answers.
fn udp_silent() -> UdpSocket {
    UdpSocket::bind(lo()).unwrap()
}

/// Echoes `n` datagrams, returning the peer it saw.
fn udp_echo(n: usize) -> (SocketAddr, thread::JoinHandle<SocketAddr>) {
    let s = UdpSocket::bind(lo()).unwrap();
    s.set_read_timeout(Some(WAIT)).unwrap();
    let addr = s.local_addr().unwrap();
    let t = thread::spawn(move || {
        let mut buf = [0u8; 2048];
        let mut peer = None;
        for _ in 0..n {
            let (len, from) = s.recv_from(&mut buf).unwrap();
            s.send_to(&buf[..len], from).unwrap();
            peer = Some(from);
        }
        peer.unwrap()
    });
    (addr, t)
}

#[test]
fn udp_flow_propagates_records_and_relays_replies() {
    let u = udp_relay(Duration::from_millis(300));
    let (dst, echo) = udp_echo(3);
    let app = u.app(redirected_to(dst, 77));
    for msg in [&b"one"[..], b"two", b"three"] {
        app.send_to(msg, u.relay.local_addr()).unwrap();
        let mut buf = [0u8; 64];
        let (n, from) = app.recv_from(&mut buf).unwrap();
        assert_eq!((&buf[..n], from), (msg, u.relay.local_addr()), "the reply comes back through the listener");
    }
    let outbound = echo.join().unwrap();
    assert_eq!(u.provider.propagated(outbound).as_deref(), Some(RECORDS));
    let r = u.reports.recv_timeout(WAIT).unwrap();
    assert!(matches!(r.outcome, FlowOutcome::Idle), "{:?}", r.outcome);
    assert_eq!((r.original, r.pid, r.outbound, r.up, r.down), (Some(dst), Some(77), Some(outbound), 3, 3));
}

#[test]
fn udp_unknown_context_and_missing_records_are_dropped() {
    let u = udp_relay(Duration::from_secs(5));
    let silent = udp_silent();
    let dst = silent.local_addr().unwrap();
    let app = u.app(|_| RawRedirect { records: Some(RECORDS.to_vec()), context: Some(vec![1; 64]) });
    app.send_to(b"x", u.relay.local_addr()).unwrap();
    assert!(matches!(
        u.reports.recv_timeout(WAIT).unwrap().outcome,
        FlowOutcome::Refused(QueryError::UnknownContext(_))
    ));
    let app2 = u.app(|a| RawRedirect { records: None, context: Some(context(dst, a, 1)) });
    app2.send_to(b"x", u.relay.local_addr()).unwrap();
    assert!(matches!(u.reports.recv_timeout(WAIT).unwrap().outcome, FlowOutcome::Refused(QueryError::MissingRecords)));
    assert_eq!(u.provider.propagated_count(), 0);
    app.set_read_timeout(Some(Duration::from_millis(100))).unwrap();
    assert!(app.recv_from(&mut [0u8; 8]).is_err(), "nothing is relayed for a refused flow");
}

#[test]
fn udp_refused_upstream_ends_the_flow() {
    let u = udp_relay(Duration::from_secs(5));
    let dst = UdpSocket::bind(lo()).unwrap().local_addr().unwrap(); // closed again
    let app = u.app(redirected_to(dst, 5));
    app.send_to(b"anyone?", u.relay.local_addr()).unwrap();
    let r = u.reports.recv_timeout(WAIT).unwrap();
    match r.outcome {
        // Windows reports the ICMP port unreachable as WSAECONNRESET.
        FlowOutcome::UpstreamFailed(e) if cfg!(windows) => assert_eq!(e.kind(), ErrorKind::ConnectionReset),
        FlowOutcome::UpstreamFailed(e) => assert_eq!(e.kind(), ErrorKind::ConnectionRefused),
        // Wine 8 does not surface ICMP errors on a connected UDP socket: the flow idles out.
        FlowOutcome::Idle if under_wine() => {}
        other => panic!("expected upstream-failed, got {other:?}"),
    }
}

#[test]
fn udp_flows_are_bounded_and_stop_cleanly() {
    let u = udp_relay(Duration::from_secs(30));
    let silent = udp_silent();
    let dst = silent.local_addr().unwrap();
    let apps: Vec<UdpSocket> = (0..10).map(|_| u.app(redirected_to(dst, 3))).collect();
    for a in &apps {
        a.send_to(b"hi", u.relay.local_addr()).unwrap();
        thread::sleep(Duration::from_millis(5));
    }
    // Eight flows fit; the two oldest were evicted for the last two.
    let mut outcomes: Vec<&str> = Vec::new();
    for _ in 0..2 {
        outcomes.push(u.reports.recv_timeout(WAIT).unwrap().outcome.name());
    }
    assert_eq!(outcomes, ["evicted", "evicted"]);
    u.relay.shutdown();
    let stopped = (0..8)
        .filter(|_| u.reports.recv_timeout(WAIT).is_ok_and(|r| matches!(r.outcome, FlowOutcome::Stopped)))
        .count();
    assert_eq!(stopped, 8);
}
