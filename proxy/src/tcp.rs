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

use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::thread::{self, JoinHandle};
use std::time::Duration;

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
}

impl Default for RelayOptions {
    fn default() -> Self {
        Self { connect_timeout: Duration::from_secs(10), buffer: 64 * 1024, max_connections: 4096 }
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
        let accept = thread::Builder::new()
            .name(format!("tcp-accept {addr}"))
            .spawn(move || accept_loop(&listener, &provider, options, &reporter, &flag))?;
        Ok(Self { addr, stop, accept: Some(accept) })
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
) {
    let active = Arc::new(AtomicUsize::new(0));
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
        let spawned = thread::Builder::new().name(format!("tcp-relay {peer}")).spawn(move || {
            let report = serve(client, provider.as_ref(), &options);
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

/// Forwards one accepted connection, start to end.
pub fn serve<P: RedirectProvider + ?Sized>(client: TcpStream, provider: &P, options: &RelayOptions) -> ConnReport {
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
    let (up, down, outcome) = relay(client, upstream, options.buffer);
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

/// How often a pump blocked in a read wakes to see whether the other pump
/// aborted. Winsock's `shutdown` does not complete a read another thread has
/// pending (Linux's does): without this, an abort on one side would leave the
/// other pump, and the connection, waiting for its peer (found under Wine;
/// `shutdown` documents no such wake-up on Windows either).
const ABORT_POLL: Duration = Duration::from_millis(200);

/// Copies both ways until both directions end; returns bytes up, bytes down
/// and how it ended.
pub fn relay(client: TcpStream, upstream: TcpStream, buffer: usize) -> (u64, u64, Outcome) {
    let clones = client.try_clone().and_then(|c| upstream.try_clone().map(|u| (c, u)));
    let Ok((client2, upstream2)) = clones else {
        reset(&client);
        reset(&upstream);
        return (0, 0, Outcome::Aborted { side: Side::Client, error: io::Error::other("cannot clone socket handles") });
    };
    for s in [&client, &upstream, &client2, &upstream2] {
        let _ = s.set_read_timeout(Some(ABORT_POLL));
    }
    let aborted = Arc::new(AtomicBool::new(false));
    let flag = Arc::clone(&aborted);
    let spawned = thread::Builder::new()
        .name("tcp-pump up".into())
        .spawn(move || pump(&client2, Side::Client, &upstream2, Side::Upstream, buffer, &flag));
    let down = pump(&upstream, Side::Upstream, &client, Side::Client, buffer, &aborted);
    let up = match spawned {
        Ok(t) => t.join().unwrap_or_else(|_| (0, Some((Side::Client, io::Error::other("pump thread panicked"))))),
        Err(e) => {
            reset(&client);
            reset(&upstream);
            (0, Some((Side::Client, e)))
        }
    };
    let outcome = match (up.1, down.1) {
        (None, None) => Outcome::Completed,
        (Some((side, error)), _) | (None, Some((side, error))) => Outcome::Aborted { side, error },
    };
    (up.0, down.0, outcome)
}

/// Copies `from` to `to` until `from` ends (then half-closes `to`) or an
/// error (then resets both and raises `aborted`, which ends the opposite
/// pump within [`ABORT_POLL`]).
fn pump(
    from: &TcpStream,
    from_side: Side,
    to: &TcpStream,
    to_side: Side,
    buffer: usize,
    aborted: &AtomicBool,
) -> (u64, Option<(Side, io::Error)>) {
    let mut buf = vec![0u8; buffer.max(1)];
    let mut total = 0u64;
    let (mut reader, mut writer) = (from, to);
    loop {
        let n = match reader.read(&mut buf) {
            Ok(0) => {
                let _ = writer.shutdown(Shutdown::Write);
                return (total, None);
            }
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            // The poll tick: nothing to read yet.
            Err(e) if matches!(e.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut) => {
                if aborted.load(Ordering::SeqCst) {
                    return (total, None);
                }
                continue;
            }
            Err(e) => {
                aborted.store(true, Ordering::SeqCst);
                reset(to);
                reset(from);
                return (total, Some((from_side, e)));
            }
        };
        let Some(chunk) = buf.get(..n) else {
            return (total, Some((from_side, io::Error::other("read past the buffer"))));
        };
        if let Err(e) = writer.write_all(chunk) {
            aborted.store(true, Ordering::SeqCst);
            reset(to);
            reset(from);
            return (total, Some((to_side, e)));
        }
        total = total.saturating_add(n as u64);
    }
}
