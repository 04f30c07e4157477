//! The Windows calls of `arbiter-proxy` against a real Winsock: Windows
//! itself, or Wine in CI (`scripts/windows-tests.sh` runs this file with
//! Wine as the cargo runner).
//!
//! Where no WFP redirect happened (always under Wine, which implements none
//! of the WFP socket options, and on Windows for a connection that did not
//! come through the driver) the proxy must take its documented failure path:
//! refuse the connection (reset it), report it, and never open a connection
//! to anywhere on the application's behalf.

#![cfg(windows)]
#![allow(clippy::std_instead_of_core, clippy::alloc_instead_of_core, reason = "std test: host tool")]

use std::io::{self, ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::sync::mpsc::{self, Receiver};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use arbiter::context::RedirectContext;
use arbiter_proxy::redirect::{Datagram, QueryError, RawRedirect, RedirectProvider};
use arbiter_proxy::tcp::{self, ConnReport, Outcome, RelayOptions, TcpRelay};
use arbiter_proxy::udp::{FlowOutcome, FlowReport, UdpOptions, UdpRelay};
use arbiter_proxy::windows::WfpProvider;
use socket2::Socket;

const WAIT: Duration = Duration::from_secs(10);

fn lo() -> SocketAddr {
    "127.0.0.1:0".parse().unwrap()
}

/// A listener standing for the flow's original destination: it must never
/// see a connection.
fn destination() -> TcpListener {
    let l = TcpListener::bind(lo()).unwrap();
    l.set_nonblocking(true).unwrap();
    l
}

fn never_contacted(l: &TcpListener) {
    match l.accept() {
        Err(e) if e.kind() == ErrorKind::WouldBlock => {}
        other => panic!("the destination was contacted: {other:?}"),
    }
}

/// Reads until the relay ends the connection: it must end without a byte.
fn ended_without_data(mut s: TcpStream) {
    s.set_read_timeout(Some(WAIT)).unwrap();
    let mut buf = [0u8; 64];
    match s.read(&mut buf) {
        Ok(0) => {}
        Err(e) if matches!(e.kind(), ErrorKind::ConnectionReset | ErrorKind::ConnectionAborted) => {}
        other => panic!("the refused connection got {other:?} instead of an end"),
    }
}

fn relay_with<P: RedirectProvider>(provider: P) -> (TcpRelay, Receiver<ConnReport>) {
    let (tx, rx) = mpsc::channel();
    let tx = Mutex::new(tx);
    let relay = TcpRelay::start(
        TcpListener::bind(lo()).unwrap(),
        Arc::new(provider),
        RelayOptions { connect_timeout: Duration::from_secs(3), ..RelayOptions::default() },
        Arc::new(move |r| {
            let _ = tx.lock().unwrap().send(r);
        }),
    )
    .unwrap();
    (relay, rx)
}

/// The Winsock WFP queries on an ordinary (not redirected) accepted
/// connection: Windows fails them, Wine does not implement them; either way
/// the provider reports "nothing there", never an invented record.
#[test]
fn wfp_queries_on_an_unredirected_connection_find_nothing() {
    let l = TcpListener::bind(lo()).unwrap();
    let _client = TcpStream::connect(l.local_addr().unwrap()).unwrap();
    let (accepted, _) = l.accept().unwrap();
    let raw = WfpProvider::new().query_stream(&accepted).unwrap();
    assert_eq!(raw, RawRedirect::default());
}

#[test]
fn unredirected_tcp_connection_is_refused_reported_and_never_relayed() {
    let dst = destination();
    let (relay, reports) = relay_with(WfpProvider::new());
    let mut app = TcpStream::connect(relay.local_addr()).unwrap();
    // The application speaks first; nothing of it may go anywhere.
    let _ = app.write_all(b"GET / HTTP/1.1\r\n\r\n");
    let report = reports.recv_timeout(WAIT).unwrap();
    assert!(matches!(report.outcome, Outcome::Refused(QueryError::MissingContext)), "{report:?}");
    assert_eq!(report.outcome.name(), "missing-context");
    assert_eq!((report.original, report.outbound, report.up, report.down), (None, None, 0, 0));
    assert_eq!(report.client, app.local_addr().ok());
    ended_without_data(app);
    never_contacted(&dst);
}

/// Knows where the flow was going (as if WFP had redirected it) but sets
/// records through the real Winsock call.
struct ContextOnly {
    real: WfpProvider,
    dst: SocketAddr,
}

impl RedirectProvider for ContextOnly {
    fn query_stream(&self, accepted: &TcpStream) -> io::Result<RawRedirect> {
        let context =
            RedirectContext { original_remote: self.dst, original_local: accepted.peer_addr()?, pid: 4242 }.encode();
        Ok(RawRedirect { records: Some(b"records WFP never issued".to_vec()), context: Some(context.to_vec()) })
    }

    fn set_records(&self, outbound: &Socket, records: &[u8]) -> io::Result<()> {
        self.real.set_records(outbound, records)
    }

    fn recv_datagram(&self, listener: &UdpSocket, buf: &mut [u8]) -> io::Result<Datagram> {
        self.real.recv_datagram(listener, buf)
    }
}

/// SIO_SET_WFP_CONNECTION_REDIRECT_RECORDS with records WFP never issued:
/// Wine has no such ioctl and Windows rejects foreign records. Then the
/// outbound socket must not connect: an outbound connection without the
/// records looks new to every redirector, which is how loops start.
#[test]
fn records_that_cannot_be_set_stop_the_outbound_connect() {
    let dst = destination();
    let provider = ContextOnly { real: WfpProvider::new(), dst: dst.local_addr().unwrap() };
    let socket = Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    let set = provider.set_records(&socket, b"records WFP never issued");
    eprintln!("SIO_SET_WFP_CONNECTION_REDIRECT_RECORDS: {set:?}");
    if set.is_ok() {
        // A Winsock that accepts any bytes here (none known): nothing more to check.
        return;
    }
    let (relay, reports) = relay_with(provider);
    let app = TcpStream::connect(relay.local_addr()).unwrap();
    let report = reports.recv_timeout(WAIT).unwrap();
    assert!(matches!(report.outcome, Outcome::RecordsNotSet(_)), "{report:?}");
    assert_eq!(report.outcome.name(), "records-not-set");
    assert_eq!((report.outbound, report.up, report.down), (None, 0, 0));
    assert_eq!(report.pid, Some(4242));
    ended_without_data(app);
    never_contacted(&dst);
}

/// `serve` on its own, synchronously: the same refusal for one connection.
#[test]
fn serve_refuses_without_touching_the_network() {
    let l = TcpListener::bind(lo()).unwrap();
    let app = TcpStream::connect(l.local_addr().unwrap()).unwrap();
    let (accepted, _) = l.accept().unwrap();
    let report = tcp::serve(accepted, &WfpProvider::new(), &RelayOptions::default());
    assert!(matches!(report.outcome, Outcome::Refused(QueryError::MissingContext)), "{report:?}");
    ended_without_data(app);
}

/// The UDP side: IP_WFP_REDIRECT_RECORDS / _CONTEXT as socket options and
/// WSARecvMsg's control messages. A datagram with neither is refused and
/// reported, and nothing is sent on.
#[test]
fn unredirected_datagram_is_refused_reported_and_never_relayed() {
    let provider = WfpProvider::new();
    let listener = UdpSocket::bind(lo()).unwrap();
    let prepared = provider.prepare_listener(&listener);
    eprintln!("IP_WFP_REDIRECT_RECORDS / IP_WFP_REDIRECT_CONTEXT: {prepared:?}");
    let dst = UdpSocket::bind(lo()).unwrap();
    dst.set_read_timeout(Some(Duration::from_millis(300))).unwrap();

    // WSARecvMsg itself, with the control buffer: no WFP messages arrive.
    let app = UdpSocket::bind(lo()).unwrap();
    app.send_to(b"query", listener.local_addr().unwrap()).unwrap();
    listener.set_read_timeout(Some(WAIT)).unwrap();
    let mut buf = [0u8; 64];
    let d = provider.recv_datagram(&listener, &mut buf).unwrap();
    assert_eq!((d.len, d.from), (5, app.local_addr().unwrap()));
    assert_eq!(d.redirect, RawRedirect::default());
    drop(listener);

    // The relay, where the platform lets a listener be prepared.
    let listener = UdpSocket::bind(lo()).unwrap();
    let (tx, rx) = mpsc::channel::<FlowReport>();
    let tx = Mutex::new(tx);
    let relay = UdpRelay::start(
        listener,
        Arc::new(WfpProvider::new()),
        UdpOptions { poll: Duration::from_millis(20), ..UdpOptions::default() },
        Arc::new(move |r| {
            let _ = tx.lock().unwrap().send(r);
        }),
    );
    match relay {
        Ok(relay) => {
            app.send_to(b"query", relay.local_addr()).unwrap();
            let report = rx.recv_timeout(WAIT).unwrap();
            assert!(matches!(report.outcome, FlowOutcome::Refused(QueryError::MissingContext)), "{report:?}");
            assert_eq!((report.outbound, report.up), (None, 0));
            relay.shutdown();
        }
        Err(e) => {
            // Wine: the socket options are unknown, so the relay does not
            // start at all (and arbiter-proxy exits 1, saying so).
            assert!(prepared.is_err(), "start failed although the options were set: {e}");
        }
    }
    let mut got = [0u8; 16];
    assert!(dst.recv_from(&mut got).is_err(), "a datagram reached the destination");
}
