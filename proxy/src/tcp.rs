//! The TCP relay: accept a redirected connection, learn its original
//! destination, connect there with the redirect records set first, and copy
//! bytes both ways.
//!
//! One thread per direction. Back-pressure is the blocking write: a pump
//! reads nothing more until the other side took what it read, so at most one
//! buffer per direction is in flight. A clean end (read returns 0) is passed
//! on as a half-close (`shutdown(Write)`), so request/response protocols that
//! close their sending side still get their answer. An error on either side
//! aborts both: the other peer gets a reset, not a silent truncation.
//!
//! Nothing a local program does can hold the relay's slots for long:
//!
//! - a connection with no byte in either direction for
//!   [`RelayOptions::idle_timeout`] is aborted, and so is a write the other
//!   side does not take within it;
//! - once the application has closed its side, the upstream gets
//!   [`RelayOptions::half_closed_timeout`] of silence to answer, not more (a
//!   program that exits closes its sockets, so its slots come back then);
//! - one process holds at most [`RelayOptions::max_per_process`] connections
//!   (by the PID in our redirect context); the rest are reset at once.

use std::collections::HashMap;
use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use socket2::{Domain, Protocol, SockRef, Socket, Type};

use crate::redirect::{self, QueryError, RedirectProvider};

/// Relay settings.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RelayOptions {
    /// How long to wait for the original destination to accept.
    pub connect_timeout: Duration,
    /// Bytes in flight per direction.
    pub buffer: usize,
    /// Connections relayed at once; more are reset at accept.
    pub max_connections: usize,
    /// Connections one process (the PID in the redirect context) may hold at once.
    pub max_per_process: usize,
    /// A connection with no traffic either way for this long is aborted.
    pub idle_timeout: Duration,
    /// After the application closed its sending side: silence from the
    /// upstream for this long ends the connection.
    pub half_closed_timeout: Duration,
}

impl Default for RelayOptions {
    fn default() -> Self {
        Self {
            connect_timeout: Duration::from_secs(10),
            buffer: 64 * 1024,
            max_connections: 4096,
            max_per_process: 256,
            idle_timeout: Duration::from_secs(300),
            half_closed_timeout: Duration::from_secs(30),
        }
    }
}

impl RelayOptions {
    /// How often a blocked pump wakes to check the timeouts.
    fn tick(&self) -> Duration {
        (self.idle_timeout.min(self.half_closed_timeout) / 4).clamp(Duration::from_millis(10), Duration::from_secs(1))
    }
}

/// Which connection of a relayed pair.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Side {
    /// The application's (redirected) connection.
    Client,
    /// Our connection to the original destination.
    Upstream,
}

/// How one connection ended.
#[derive(Debug)]
pub enum Outcome {
    /// Both directions ended cleanly.
    Completed,
    /// Not forwarded: the redirect query or decoding failed. The client was reset.
    Refused(QueryError),
    /// Setting the redirect records on the outbound socket failed. The client was reset.
    RecordsNotSet(io::Error),
    /// The original destination could not be reached. The client was reset.
    UpstreamFailed(io::Error),
    /// A read or write failed mid-stream on `side`; both were reset.
    Aborted {
        /// Where the error was seen.
        side: Side,
        /// The error.
        error: io::Error,
    },
    /// Too many connections at once. The client was reset.
    Overloaded,
    /// Its process already holds [`RelayOptions::max_per_process`] connections. The client was reset.
    ProcessLimit,
    /// No traffic for the idle timeout (or, after the application closed its
    /// side, for the half-closed timeout); both were reset.
    Idle,
}

impl Outcome {
    /// A stable short name for reports.
    pub fn name(&self) -> &'static str {
        match self {
            Self::Completed => "completed",
            Self::Refused(e) => e.name(),
            Self::RecordsNotSet(_) => "records-not-set",
            Self::UpstreamFailed(_) => "upstream-failed",
            Self::Aborted { .. } => "aborted",
            Self::Overloaded => "overloaded",
            Self::ProcessLimit => "process-limit",
            Self::Idle => "idle",
        }
    }
}

/// What happened to one accepted connection.
#[derive(Debug)]
pub struct ConnReport {
    /// The application's address (as the listener saw it).
    pub client: Option<SocketAddr>,
    /// Where it was going, once decoded.
    pub original: Option<SocketAddr>,
    /// The application's PID from the context.
    pub pid: Option<u64>,
    /// Our outbound socket's local address, once connected.
    pub outbound: Option<SocketAddr>,
    /// Bytes client to upstream.
    pub up: u64,
    /// Bytes upstream to client.
    pub down: u64,
    /// How it ended.
    pub outcome: Outcome,
}

/// Receives one report per accepted connection.
pub type Reporter = Arc<dyn Fn(ConnReport) + Send + Sync>;

/// A running TCP relay.
#[derive(Debug)]
pub struct TcpRelay {
    addr: SocketAddr,
    active: Arc<AtomicUsize>,
    stop: Arc<AtomicBool>,
    accept: Option<JoinHandle<()>>,
}

impl TcpRelay {
    /// Starts accepting on `listener`.
    pub fn start<P: RedirectProvider>(
        listener: TcpListener,
        provider: Arc<P>,
        options: RelayOptions,
        reporter: Reporter,
    ) -> io::Result<Self> {
        let addr = listener.local_addr()?;
        let stop = Arc::new(AtomicBool::new(false));
        let flag = Arc::clone(&stop);
        let active = Arc::new(AtomicUsize::new(0));
        let count = Arc::clone(&active);
        let accept = thread::Builder::new()
            .name(format!("tcp-accept {addr}"))
            .spawn(move || accept_loop(&listener, &provider, options, &reporter, &flag, count))?;
        Ok(Self { addr, active, stop, accept: Some(accept) })
    }

    /// Connections being relayed now (each holds a slot).
    pub fn active(&self) -> usize {
        self.active.load(Ordering::SeqCst)
    }

    /// The listening address.
    pub const fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// Stops accepting (connections in flight run to their end) and waits
    /// for the accept thread.
    pub fn shutdown(mut self) {
        self.stop_accepting();
    }

    fn stop_accepting(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // Wake the blocking accept; the loop sees the flag and leaves.
        let _ = TcpStream::connect_timeout(&self.addr, Duration::from_secs(1));
        if let Some(t) = self.accept.take() {
            let _ = t.join();
        }
    }
}

impl Drop for TcpRelay {
    fn drop(&mut self) {
        self.stop_accepting();
    }
}

fn accept_loop<P: RedirectProvider>(
    listener: &TcpListener,
    provider: &Arc<P>,
    options: RelayOptions,
    reporter: &Reporter,
    stop: &AtomicBool,
    active: Arc<AtomicUsize>,
) {
    let per_process = Arc::new(ProcessSlots::default());
    loop {
        let accepted = listener.accept();
        if stop.load(Ordering::SeqCst) {
            return;
        }
        let Ok((client, peer)) = accepted else {
            // Transient accept failures (EMFILE, aborted handshakes): back off briefly.
            thread::sleep(Duration::from_millis(5));
            continue;
        };
        if active.fetch_add(1, Ordering::SeqCst) >= options.max_connections {
            active.fetch_sub(1, Ordering::SeqCst);
            reset(&client);
            reporter(ConnReport {
                client: Some(peer),
                original: None,
                pid: None,
                outbound: None,
                up: 0,
                down: 0,
                outcome: Outcome::Overloaded,
            });
            continue;
        }
        let (provider, reporter, conn_active) = (Arc::clone(provider), Arc::clone(reporter), Arc::clone(&active));
        let slots = Arc::clone(&per_process);
        let spawned = thread::Builder::new().name(format!("tcp-relay {peer}")).spawn(move || {
            let report = serve_with(client, provider.as_ref(), &options, Some(&slots));
            conn_active.fetch_sub(1, Ordering::SeqCst);
            reporter(report);
        });
        if spawned.is_err() {
            // The closure (and the client socket in it) is gone; just undo the count.
            active.fetch_sub(1, Ordering::SeqCst);
        }
    }
}

/// Aborts a connection: linger 0 makes the close send a reset.
fn reset(s: &TcpStream) {
    let _ = SockRef::from(s).set_linger(Some(Duration::ZERO));
    let _ = s.shutdown(Shutdown::Both);
}

/// Connections held per process.
#[derive(Debug, Default)]
struct ProcessSlots {
    held: Mutex<HashMap<u64, usize>>,
}

impl ProcessSlots {
    fn held(&self) -> std::sync::MutexGuard<'_, HashMap<u64, usize>> {
        self.held.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Takes a slot for `pid`; `None` when it holds `max` already.
    fn take(&self, pid: u64, max: usize) -> Option<ProcessSlot<'_>> {
        let mut held = self.held();
        let n = held.entry(pid).or_insert(0);
        if *n >= max {
            return None;
        }
        *n = n.saturating_add(1);
        Some(ProcessSlot { slots: self, pid })
    }
}

/// One process's slot; given back when dropped.
struct ProcessSlot<'a> {
    slots: &'a ProcessSlots,
    pid: u64,
}

impl Drop for ProcessSlot<'_> {
    fn drop(&mut self) {
        let mut held = self.slots.held();
        if let Some(n) = held.get_mut(&self.pid) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                held.remove(&self.pid);
            }
        }
    }
}

/// Forwards one accepted connection, start to end (no per-process limit).
pub fn serve<P: RedirectProvider + ?Sized>(client: TcpStream, provider: &P, options: &RelayOptions) -> ConnReport {
    serve_with(client, provider, options, None)
}

fn serve_with<P: RedirectProvider + ?Sized>(
    client: TcpStream,
    provider: &P,
    options: &RelayOptions,
    slots: Option<&ProcessSlots>,
) -> ConnReport {
    let mut report = ConnReport {
        client: client.peer_addr().ok(),
        original: None,
        pid: None,
        outbound: None,
        up: 0,
        down: 0,
        outcome: Outcome::Completed,
    };
    let redirect = match provider.query_stream(&client).map_err(QueryError::Io).and_then(redirect::decode) {
        Ok(r) => r,
        Err(e) => {
            reset(&client);
            report.outcome = Outcome::Refused(e);
            return report;
        }
    };
    let dst = redirect.context.original_remote;
    report.original = Some(dst);
    report.pid = Some(redirect.context.pid);
    let _slot = match slots.map(|s| s.take(redirect.context.pid, options.max_per_process)) {
        Some(None) => {
            reset(&client);
            report.outcome = Outcome::ProcessLimit;
            return report;
        }
        Some(Some(slot)) => Some(slot),
        None => None,
    };
    let upstream = match connect_with_records(provider, dst, &redirect.records, options.connect_timeout) {
        Ok(s) => s,
        Err(e) => {
            reset(&client);
            report.outcome = e;
            return report;
        }
    };
    report.outbound = upstream.local_addr().ok();
    let _ = client.set_nodelay(true);
    let _ = upstream.set_nodelay(true);
    let (up, down, outcome) = relay_with(client, upstream, options);
    report.up = up;
    report.down = down;
    report.outcome = outcome;
    report
}

/// Opens the outbound socket, sets the records on it, then connects: WFP
/// reads the records when the connect is classified, so after would be too late.
fn connect_with_records<P: RedirectProvider + ?Sized>(
    provider: &P,
    dst: SocketAddr,
    records: &[u8],
    timeout: Duration,
) -> Result<TcpStream, Outcome> {
    let socket =
        Socket::new(Domain::for_address(dst), Type::STREAM, Some(Protocol::TCP)).map_err(Outcome::UpstreamFailed)?;
    provider.set_records(&socket, records).map_err(Outcome::RecordsNotSet)?;
    socket.connect_timeout(&dst.into(), timeout).map_err(Outcome::UpstreamFailed)?;
    Ok(socket.into())
}

/// Copies both ways until both directions end; returns bytes up, bytes down
/// and how it ended (the default timeouts).
pub fn relay(client: TcpStream, upstream: TcpStream, buffer: usize) -> (u64, u64, Outcome) {
    relay_with(client, upstream, &RelayOptions { buffer, ..RelayOptions::default() })
}

/// What the two pumps of one connection share: when traffic last moved
/// (milliseconds since `start`) and whether the application closed its side.
struct Activity {
    start: Instant,
    last_ms: AtomicU64,
    client_done: AtomicBool,
}

impl Activity {
    fn now_ms(&self) -> u64 {
        u64::try_from(self.start.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    fn touch(&self) {
        self.last_ms.store(self.now_ms(), Ordering::SeqCst);
    }

    fn silent_for(&self) -> Duration {
        Duration::from_millis(self.now_ms().saturating_sub(self.last_ms.load(Ordering::SeqCst)))
    }

    /// Should a pump that found nothing to read give up on the connection?
    fn expired(&self, options: &RelayOptions) -> bool {
        let silent = self.silent_for();
        silent >= options.idle_timeout
            || (self.client_done.load(Ordering::SeqCst) && silent >= options.half_closed_timeout)
    }
}

fn relay_with(client: TcpStream, upstream: TcpStream, options: &RelayOptions) -> (u64, u64, Outcome) {
    let clones = client.try_clone().and_then(|c| upstream.try_clone().map(|u| (c, u)));
    let Ok((client2, upstream2)) = clones else {
        reset(&client);
        reset(&upstream);
        return (0, 0, Outcome::Aborted { side: Side::Client, error: io::Error::other("cannot clone socket handles") });
    };
    // Reads wake every tick to check the timeouts; a write that the other
    // side does not take within the idle timeout fails.
    let tick = options.tick();
    for s in [&client, &upstream] {
        let _ = s.set_read_timeout(Some(tick));
        let _ = s.set_write_timeout(Some(options.idle_timeout));
    }
    let activity =
        Arc::new(Activity { start: Instant::now(), last_ms: AtomicU64::new(0), client_done: AtomicBool::new(false) });
    let shared = Arc::clone(&activity);
    let opts = *options;
    let spawned = thread::Builder::new()
        .name("tcp-pump up".into())
        .spawn(move || pump(&client2, Side::Client, &upstream2, Side::Upstream, &opts, &shared));
    let down = pump(&upstream, Side::Upstream, &client, Side::Client, options, &activity);
    let up = match spawned {
        Ok(t) => {
            t.join().unwrap_or_else(|_| (0, Some(Ended::Error(Side::Client, io::Error::other("pump thread panicked")))))
        }
        Err(e) => {
            reset(&client);
            reset(&upstream);
            (0, Some(Ended::Error(Side::Client, e)))
        }
    };
    let outcome = match (up.1, down.1) {
        (None, None) => Outcome::Completed,
        (Some(Ended::Idle), _) | (None, Some(Ended::Idle)) => Outcome::Idle,
        (Some(Ended::Error(side, error)), _) | (None, Some(Ended::Error(side, error))) => {
            Outcome::Aborted { side, error }
        }
    };
    (up.0, down.0, outcome)
}

/// Why a pump stopped early.
enum Ended {
    /// A read or write failed on this side.
    Error(Side, io::Error),
    /// The connection went quiet past its timeout.
    Idle,
}

/// Copies `from` to `to` until `from` ends (then half-closes `to`), an
/// error, or silence past the timeouts (then resets both, which also wakes
/// the opposite pump).
fn pump(
    from: &TcpStream,
    from_side: Side,
    to: &TcpStream,
    to_side: Side,
    options: &RelayOptions,
    activity: &Activity,
) -> (u64, Option<Ended>) {
    let mut buf = vec![0u8; options.buffer.max(1)];
    let mut total = 0u64;
    let (mut reader, mut writer) = (from, to);
    let abort = |why: Ended| {
        reset(to);
        reset(from);
        why
    };
    loop {
        let n = match reader.read(&mut buf) {
            Ok(0) => {
                let _ = writer.shutdown(Shutdown::Write);
                if from_side == Side::Client {
                    activity.client_done.store(true, Ordering::SeqCst);
                    activity.touch();
                }
                return (total, None);
            }
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) if matches!(e.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut) => {
                if activity.expired(options) {
                    return (total, Some(abort(Ended::Idle)));
                }
                continue;
            }
            Err(e) => return (total, Some(abort(Ended::Error(from_side, e)))),
        };
        activity.touch();
        let Some(chunk) = buf.get(..n) else {
            return (total, Some(Ended::Error(from_side, io::Error::other("read past the buffer"))));
        };
        if let Err(e) = writer.write_all(chunk) {
            let why = if matches!(e.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut) {
                Ended::Idle
            } else {
                Ended::Error(to_side, e)
            };
            return (total, Some(abort(why)));
        }
        activity.touch();
        total = total.saturating_add(n as u64);
    }
}
