//! The reference proxy under hostile load (issue 12): a local program opens
//! thousands of redirected connections to a server that never answers, then
//! exits. Before the fix this filled every slot for good, and from then on
//! every redirected connection on the machine was reset as "overloaded".
//!
//! Bounded in count (1,500 connections; 400 on Windows targets, where the
//! CI runs these tests under Wine, whose sockets are many times slower) and
//! time (each wait has a deadline). Either way the hostile program opens
//! more connections than the relay has slots, so the old relay locks up.

#![allow(clippy::std_instead_of_core, clippy::alloc_instead_of_core, reason = "std test: host tool")]

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, Receiver};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use arbiter::context::RedirectContext;
use arbiter_proxy::redirect::{LoopbackProvider, RawRedirect};
use arbiter_proxy::tcp::{ConnReport, Outcome, RelayOptions, TcpRelay};
use socket2::{Domain, Socket, Type};

const HOSTILE: usize = if cfg!(windows) { 400 } else { 1_500 };
/// The relay's slots: fewer than [`HOSTILE`].
const SLOTS: usize = if cfg!(windows) { 320 } else { 1024 };
const HOSTILE_PID: u64 = 666;
const GOOD_PID: u64 = 42;
const DEADLINE: Duration = Duration::from_secs(20);

fn lo() -> SocketAddr {
    "127.0.0.1:0".parse().unwrap()
}

/// A server that accepts every connection and never reads or writes.
fn silent_upstream() -> (SocketAddr, Arc<AtomicBool>) {
    let l = TcpListener::bind(lo()).unwrap();
    let addr = l.local_addr().unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let flag = Arc::clone(&stop);
    thread::spawn(move || {
        let mut held = Vec::new();
        l.set_nonblocking(true).unwrap();
        while !flag.load(Ordering::SeqCst) {
            match l.accept() {
                Ok((s, _)) => held.push(s),
                Err(_) => thread::sleep(Duration::from_millis(2)),
            }
        }
    });
    (addr, stop)
}

/// An echo server for the well-behaved application.
fn echo_upstream() -> SocketAddr {
    let l = TcpListener::bind(lo()).unwrap();
    let addr = l.local_addr().unwrap();
    thread::spawn(move || {
        for s in l.incoming() {
            let Ok(mut s) = s else { return };
            thread::spawn(move || {
                let mut buf = [0u8; 64];
                while let Ok(n) = s.read(&mut buf) {
                    if n == 0 || s.write_all(&buf[..n]).is_err() {
                        return;
                    }
                }
            });
        }
    });
    addr
}

struct Rig {
    relay: TcpRelay,
    provider: LoopbackProvider,
    reports: Receiver<ConnReport>,
}

fn rig(options: RelayOptions) -> Rig {
    let provider = LoopbackProvider::new();
    let (tx, reports) = mpsc::channel();
    let tx = Mutex::new(tx);
    let relay = TcpRelay::start(
        TcpListener::bind(lo()).unwrap(),
        Arc::new(provider.clone()),
        options,
        Arc::new(move |r| {
            let _ = tx.lock().unwrap().send(r);
        }),
    )
    .unwrap();
    Rig { relay, provider, reports }
}

impl Rig {
    /// Connects as process `pid`, redirected from `dst`.
    fn connect(&self, dst: SocketAddr, pid: u64) -> std::io::Result<TcpStream> {
        let s = Socket::new(Domain::IPV4, Type::STREAM, None)?;
        s.bind(&lo().into())?;
        let app = s.local_addr()?.as_socket().unwrap();
        let context = RedirectContext { original_remote: dst, original_local: app, pid }.encode().to_vec();
        self.provider.announce(app, RawRedirect { records: Some(b"records".to_vec()), context: Some(context) });
        s.connect(&self.relay.local_addr().into())?;
        let s: TcpStream = s.into();
        s.set_read_timeout(Some(Duration::from_secs(5)))?;
        Ok(s)
    }

    /// A well-behaved application's round trip through the relay.
    fn round_trip(&self, echo: SocketAddr) -> bool {
        let Ok(mut s) = self.connect(echo, GOOD_PID) else { return false };
        let mut buf = [0u8; 5];
        s.write_all(b"hello").is_ok() && s.read_exact(&mut buf).is_ok() && &buf == b"hello"
    }

    /// Reports received so far, by outcome name.
    fn drain_reports(&self, seen: &mut Vec<String>) {
        while let Ok(r) = self.reports.try_recv() {
            seen.push(r.outcome.name().to_owned());
        }
    }
}

/// The lock-up itself: one process fills the relay with connections to a
/// silent server and exits; the next application must still get through,
/// and every slot must come back.
#[test]
fn a_silent_upstream_cannot_lock_the_relay() {
    let options = RelayOptions {
        max_connections: SLOTS,
        max_per_process: 256,
        idle_timeout: Duration::from_secs(60),
        half_closed_timeout: Duration::from_secs(1),
        ..RelayOptions::default()
    };
    let t = rig(options);
    let (silent, stop_silent) = silent_upstream();
    let echo = echo_upstream();

    // The hostile program: more connections than the relay's slots.
    let hostile: Vec<TcpStream> = (0..HOSTILE).filter_map(|_| t.connect(silent, HOSTILE_PID).ok()).collect();
    // Let the relay accept them all (or refuse the excess).
    let start = Instant::now();
    let mut seen = Vec::new();
    // Let the relay take them all in: every one beyond the process's share is refused.
    while seen.len() < HOSTILE - options.max_per_process && start.elapsed() < DEADLINE {
        t.drain_reports(&mut seen);
        thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(seen.len(), HOSTILE - options.max_per_process);
    assert!(seen.iter().all(|o| o == "process-limit"), "{:?}", seen.iter().find(|o| *o != "process-limit"));
    assert_eq!(t.relay.active(), options.max_per_process);
    // While it holds its connections, another application still gets through.
    assert!(t.round_trip(echo), "a well-behaved application was locked out while the hostile one held its connections");

    // The hostile program exits: its sockets close. Every slot comes back.
    drop(hostile);
    let start = Instant::now();
    while t.relay.active() > 0 && start.elapsed() < DEADLINE {
        thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(t.relay.active(), 0, "slots held after the hostile process exited");
    assert!(t.round_trip(echo), "the relay is locked after the hostile process exited");
    t.drain_reports(&mut seen);
    let idle = seen.iter().filter(|o| *o == "idle").count();
    assert_eq!(idle, options.max_per_process, "each held connection ended as idle once its client had gone");
    stop_silent.store(true, Ordering::SeqCst);
}

/// A connection nobody uses is closed after the idle timeout, even while
/// the application keeps its side open.
#[test]
fn an_idle_connection_is_closed() {
    let options = RelayOptions { idle_timeout: Duration::from_millis(500), ..RelayOptions::default() };
    let t = rig(options);
    let (silent, stop_silent) = silent_upstream();
    let mut c = t.connect(silent, HOSTILE_PID).unwrap();
    let start = Instant::now();
    let r = t.reports.recv_timeout(DEADLINE).expect("a report");
    assert!(matches!(r.outcome, Outcome::Idle), "{:?}", r.outcome);
    assert!(start.elapsed() >= Duration::from_millis(400));
    let mut buf = [0u8; 4];
    assert!(!matches!(c.read(&mut buf), Ok(n) if n > 0), "the client was closed");
    assert_eq!(t.relay.active(), 0);
    stop_silent.store(true, Ordering::SeqCst);
}
