//! The UDP relay: one outbound socket per redirected flow (keyed by the
//! application's address), opened with the flow's redirect records set
//! before `connect`, and a thread per flow carrying replies back through the
//! listener. Flows end after an idle time; their number is bounded, and the
//! least recently active flow is evicted when a new one needs room.

use std::collections::HashMap;
use std::io;
use std::net::{SocketAddr, UdpSocket};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use socket2::{Domain, Protocol, Socket, Type};

use crate::redirect::{self, QueryError, RedirectProvider};

/// The largest datagram we relay.
const MAX_DATAGRAM: usize = 65_535;

/// UDP relay settings.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct UdpOptions {
    /// A flow with no datagram either way for this long ends.
    pub idle_timeout: Duration,
    /// Flows at once.
    pub max_flows: usize,
    /// How often blocked receives wake to check for stop and idleness.
    pub poll: Duration,
}

impl Default for UdpOptions {
    fn default() -> Self {
        Self { idle_timeout: Duration::from_secs(60), max_flows: 1024, poll: Duration::from_millis(50) }
    }
}

/// How a flow ended.
#[derive(Debug)]
pub enum FlowOutcome {
    /// No traffic for the idle time.
    Idle,
    /// Pushed out by a newer flow when the table was full.
    Evicted,
    /// The relay stopped.
    Stopped,
    /// Not forwarded: the redirect metadata was missing or not ours.
    Refused(QueryError),
    /// Setting the redirect records on the outbound socket failed.
    RecordsNotSet(io::Error),
    /// The outbound socket failed (for instance an ICMP port unreachable).
    UpstreamFailed(io::Error),
}

impl FlowOutcome {
    /// A stable short name for reports.
    pub fn name(&self) -> &'static str {
        match self {
            Self::Idle => "idle",
            Self::Evicted => "evicted",
            Self::Stopped => "stopped",
            Self::Refused(e) => e.name(),
            Self::RecordsNotSet(_) => "records-not-set",
            Self::UpstreamFailed(_) => "upstream-failed",
        }
    }
}

/// What happened to one flow (or one refused datagram).
#[derive(Debug)]
pub struct FlowReport {
    /// The application's address.
    pub client: SocketAddr,
    /// Where it was going.
    pub original: Option<SocketAddr>,
    /// The application's PID from the context.
    pub pid: Option<u64>,
    /// Our outbound socket's local address.
    pub outbound: Option<SocketAddr>,
    /// Datagrams application to destination.
    pub up: u64,
    /// Datagrams destination to application.
    pub down: u64,
    /// How it ended.
    pub outcome: FlowOutcome,
}

/// Receives one report per flow.
pub type FlowReporter = Arc<dyn Fn(FlowReport) + Send + Sync>;

/// A running UDP relay.
#[derive(Debug)]
pub struct UdpRelay {
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl UdpRelay {
    /// Starts relaying datagrams arriving on `listener`.
    pub fn start<P: RedirectProvider>(
        listener: UdpSocket,
        provider: Arc<P>,
        options: UdpOptions,
        reporter: FlowReporter,
    ) -> io::Result<Self> {
        let addr = listener.local_addr()?;
        listener.set_read_timeout(Some(options.poll))?;
        provider.prepare_listener(&listener)?;
        let stop = Arc::new(AtomicBool::new(false));
        let flag = Arc::clone(&stop);
        let thread = thread::Builder::new().name(format!("udp-relay {addr}")).spawn(move || {
            let mut relay = Relay {
                listener: Arc::new(listener),
                provider,
                options,
                reporter,
                stop: flag,
                flows: HashMap::new(),
                epoch: Instant::now(),
            };
            relay.run();
        })?;
        Ok(Self { addr, stop, thread: Some(thread) })
    }

    /// The listening address.
    pub const fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// Stops the relay and every flow, and waits for the receive thread.
    pub fn shutdown(mut self) {
        self.stop_now();
    }

    fn stop_now(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for UdpRelay {
    fn drop(&mut self) {
        self.stop_now();
    }
}

/// What the receive loop and a flow's reply thread share.
#[derive(Debug)]
struct FlowShared {
    upstream: UdpSocket,
    /// Milliseconds since the relay's epoch at the last datagram either way.
    last: AtomicU64,
    up: AtomicU64,
    /// Set by the receive loop to end the flow (eviction, stop).
    ended: AtomicBool,
    /// Set by the reply thread when it has ended.
    done: AtomicBool,
}

struct Relay<P> {
    listener: Arc<UdpSocket>,
    provider: Arc<P>,
    options: UdpOptions,
    reporter: FlowReporter,
    stop: Arc<AtomicBool>,
    flows: HashMap<SocketAddr, Arc<FlowShared>>,
    epoch: Instant,
}

fn millis_since(epoch: Instant) -> u64 {
    u64::try_from(epoch.elapsed().as_millis()).unwrap_or(u64::MAX)
}

impl<P: RedirectProvider> Relay<P> {
    fn run(&mut self) {
        let mut buf = vec![0u8; MAX_DATAGRAM];
        while !self.stop.load(Ordering::SeqCst) {
            self.flows.retain(|_, f| !f.done.load(Ordering::SeqCst));
            let got = self.provider.recv_datagram(&self.listener, &mut buf);
            // Timeouts are the poll tick; other errors (an ICMP error
            // reported on the listener, say) concern one datagram only.
            let Ok(d) = got else { continue };
            let Some(payload) = buf.get(..d.len) else { continue };
            if let Some(flow) = self.flows.get(&d.from) {
                flow.last.store(millis_since(self.epoch), Ordering::SeqCst);
                if flow.upstream.send(payload).is_ok() {
                    flow.up.fetch_add(1, Ordering::SeqCst);
                }
                continue;
            }
            self.open_flow(d.from, d.redirect, payload);
        }
        for f in self.flows.values() {
            f.ended.store(true, Ordering::SeqCst);
        }
    }

    fn open_flow(&mut self, client: SocketAddr, raw: redirect::RawRedirect, first: &[u8]) {
        let mut report = FlowReport {
            client,
            original: None,
            pid: None,
            outbound: None,
            up: 0,
            down: 0,
            outcome: FlowOutcome::Idle,
        };
        let redirect = match redirect::decode(raw) {
            Ok(r) => r,
            Err(e) => {
                report.outcome = FlowOutcome::Refused(e);
                (self.reporter)(report);
                return;
            }
        };
        let dst = redirect.context.original_remote;
        report.original = Some(dst);
        report.pid = Some(redirect.context.pid);
        let upstream = match self.connect(dst, &redirect.records) {
            Ok(s) => s,
            Err(outcome) => {
                report.outcome = outcome;
                (self.reporter)(report);
                return;
            }
        };
        report.outbound = upstream.local_addr().ok();
        if self.flows.len() >= self.options.max_flows {
            self.evict_oldest();
        }
        let shared = Arc::new(FlowShared {
            upstream,
            last: AtomicU64::new(millis_since(self.epoch)),
            up: AtomicU64::new(0),
            ended: AtomicBool::new(false),
            done: AtomicBool::new(false),
        });
        if shared.upstream.send(first).is_ok() {
            shared.up.fetch_add(1, Ordering::SeqCst);
        }
        let (flow, listener, reporter) = (Arc::clone(&shared), Arc::clone(&self.listener), Arc::clone(&self.reporter));
        let (epoch, options, stop) = (self.epoch, self.options, Arc::clone(&self.stop));
        let spawned = thread::Builder::new()
            .name(format!("udp-flow {client}"))
            .spawn(move || replies(&flow, &listener, report, &reporter, epoch, options, &stop));
        if spawned.is_ok() {
            self.flows.insert(client, shared);
        }
    }

    fn connect(&self, dst: SocketAddr, records: &[u8]) -> Result<UdpSocket, FlowOutcome> {
        let socket = Socket::new(Domain::for_address(dst), Type::DGRAM, Some(Protocol::UDP))
            .map_err(FlowOutcome::UpstreamFailed)?;
        // Before connect: the connect is what WFP classifies.
        self.provider.set_records(&socket, records).map_err(FlowOutcome::RecordsNotSet)?;
        socket.connect(&dst.into()).map_err(FlowOutcome::UpstreamFailed)?;
        socket.set_read_timeout(Some(self.options.poll)).map_err(FlowOutcome::UpstreamFailed)?;
        Ok(socket.into())
    }

    fn evict_oldest(&mut self) {
        let oldest = self.flows.iter().min_by_key(|(_, f)| f.last.load(Ordering::SeqCst)).map(|(k, _)| *k);
        if let Some(flow) = oldest.and_then(|k| self.flows.remove(&k)) {
            flow.ended.store(true, Ordering::SeqCst);
        }
    }
}

/// A flow's reply thread: destination to application, until idle, evicted,
/// stopped or failed; then it reports the flow.
fn replies(
    flow: &FlowShared,
    listener: &UdpSocket,
    mut report: FlowReport,
    reporter: &FlowReporter,
    epoch: Instant,
    options: UdpOptions,
    stop: &AtomicBool,
) {
    let mut buf = vec![0u8; MAX_DATAGRAM];
    let idle = u64::try_from(options.idle_timeout.as_millis()).unwrap_or(u64::MAX);
    report.outcome = loop {
        if stop.load(Ordering::SeqCst) {
            break FlowOutcome::Stopped;
        }
        if flow.ended.load(Ordering::SeqCst) {
            break FlowOutcome::Evicted;
        }
        match flow.upstream.recv(&mut buf) {
            Ok(n) => {
                flow.last.store(millis_since(epoch), Ordering::SeqCst);
                if let Some(p) = buf.get(..n)
                    && listener.send_to(p, report.client).is_ok()
                {
                    report.down = report.down.saturating_add(1);
                }
            }
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut | io::ErrorKind::Interrupted
                ) =>
            {
                if millis_since(epoch).saturating_sub(flow.last.load(Ordering::SeqCst)) >= idle {
                    break FlowOutcome::Idle;
                }
            }
            Err(e) => break FlowOutcome::UpstreamFailed(e),
        }
    };
    report.up = flow.up.load(Ordering::SeqCst);
    flow.done.store(true, Ordering::SeqCst);
    reporter(report);
}
