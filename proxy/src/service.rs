//! The control service: keeps our proxy registered with the driver and
//! drains the driver's audit ring to the audit file.
//!
//! Each [`Service::tick`] says `Hello`; the reply's instance id changes when
//! the driver was reloaded, and its registration shows whether ours is still
//! in force, so a driver restart (or anyone clearing the registration) is
//! repaired on the next tick. Each tick opens the device and closes it again,
//! so the service never holds the driver loaded and never uses a handle to a
//! driver instance that is gone.
//!
//! The drain cursor is saved beside the audit file after every batch, so a
//! service restart neither repeats records nor skips them.

use std::fmt;
use std::fs;
use std::io;
use std::net::{SocketAddrV4, SocketAddrV6};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::thread;
use std::time::Duration;

use arbiter::audit::AuditRecord;
use arbiter::control::{self, AuditRing, Info, MIN_REPLY_BUFFER, ReplyError, Request, RulesRejected, Station, Status};
use arbiter::{Arbiter, Capacities, Config, ProxyRegistration, RuleSet};

use crate::auditlog::{self, AuditLog};

/// One request/reply exchange with the driver (DeviceIoControl on Windows).
pub trait ControlChannel {
    /// Sends `request`, fills `reply`, returns the reply's length.
    fn call(&mut self, request: &[u8], reply: &mut [u8]) -> io::Result<usize>;
}

/// Why a tick failed.
#[derive(Debug)]
pub enum ServiceError {
    /// The device could not be opened (driver not loaded?).
    Open(io::Error),
    /// The IOCTL failed; the handle was dropped.
    Call(io::Error),
    /// The reply could not be read.
    Reply(ReplyError),
    /// The driver refused a request.
    Refused {
        /// Which.
        op: &'static str,
        /// Why.
        status: Status,
    },
    /// The audit file could not be written.
    Log(io::Error),
}

impl fmt::Display for ServiceError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Open(e) => write!(f, "cannot open the control device: {e}"),
            Self::Call(e) => write!(f, "control call failed: {e}"),
            Self::Reply(e) => write!(f, "{e}"),
            Self::Refused { op, status } => write!(f, "driver refused {op}: {status}"),
            Self::Log(e) => write!(f, "cannot write the audit file: {e}"),
        }
    }
}

impl std::error::Error for ServiceError {}

impl From<ReplyError> for ServiceError {
    fn from(e: ReplyError) -> Self {
        Self::Reply(e)
    }
}

/// What a tick did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Tick {
    /// The driver instance that answered.
    pub instance: u64,
    /// We (re-)registered this tick.
    pub registered: bool,
    /// Records written to the audit file.
    pub records: u64,
    /// Records the driver reported lost.
    pub lost: u64,
}

/// The service's settings.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServiceConfig {
    /// What we register: our PID and listeners.
    pub registration: ProxyRegistration,
    /// Bytes of records per drain call (0: what the reply buffer holds).
    pub drain_max_bytes: u32,
    /// Where the drain cursor is saved (`None`: not saved).
    pub cursor_file: Option<PathBuf>,
}

/// Largest reply buffer the service grows to.
const MAX_REPLY_BUFFER: usize = 16 << 20;
/// Drain calls per tick, so one tick cannot run forever against a busy driver.
const MAX_DRAINS_PER_TICK: u32 = 64;

/// The control service.
pub struct Service<C, O> {
    open: O,
    channel: Option<C>,
    config: ServiceConfig,
    log: AuditLog,
    instance: Option<u64>,
    cursor: u64,
    reply: Vec<u8>,
}

impl<C, O> fmt::Debug for Service<C, O> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Service")
            .field("connected", &self.channel.is_some())
            .field("instance", &self.instance)
            .field("cursor", &self.cursor)
            .finish_non_exhaustive()
    }
}

impl<C: ControlChannel, O: FnMut() -> io::Result<C>> Service<C, O> {
    /// A service that opens the device with `open`. Nothing is sent until the first tick.
    pub fn new(open: O, config: ServiceConfig, log: AuditLog) -> Self {
        let (instance, cursor) =
            config.cursor_file.as_ref().and_then(load_cursor).map_or((None, 0), |(i, c)| (Some(i), c));
        Self { open, channel: None, config, log, instance, cursor, reply: vec![0u8; MIN_REPLY_BUFFER + 64 * 1024] }
    }

    /// The next audit sequence number we will ask for.
    pub const fn cursor(&self) -> u64 {
        self.cursor
    }

    /// Sends one request; on a transport failure drops the handle.
    fn call(&mut self, request: &Request<'_>) -> Result<control::Reply<'_>, ServiceError> {
        if self.channel.is_none() {
            self.channel = Some((self.open)().map_err(ServiceError::Open)?);
        }
        let bytes = request.to_vec();
        let result = match self.channel.as_mut() {
            Some(ch) => ch.call(&bytes, &mut self.reply),
            None => Err(io::Error::other("no channel")),
        };
        let n = match result {
            Ok(n) => n,
            Err(e) => {
                self.channel = None;
                return Err(ServiceError::Call(e));
            }
        };
        let reply = self.reply.get(..n).ok_or(ServiceError::Reply(ReplyError::Truncated))?;
        Ok(control::Reply::decode(reply)?)
    }

    fn expect_ok(reply: &control::Reply<'_>, op: &'static str) -> Result<(), ServiceError> {
        if reply.status == Status::Ok { Ok(()) } else { Err(ServiceError::Refused { op, status: reply.status }) }
    }

    /// Checks the registration (repairing it if the driver restarted or lost
    /// it) and drains the audit ring. The device handle is closed again at
    /// the end: an open handle would keep the driver from unloading
    /// (`sc stop` waits for every handle), so none outlives a tick.
    pub fn tick(&mut self) -> Result<Tick, ServiceError> {
        let result = self.tick_open();
        self.channel = None;
        result
    }

    fn tick_open(&mut self) -> Result<Tick, ServiceError> {
        let reply = self.call(&Request::Hello)?;
        Self::expect_ok(&reply, "hello")?;
        let instance = reply.instance;
        let info: Info = reply.info()?;
        let mut tick = Tick { instance, ..Tick::default() };
        if self.instance != Some(instance) {
            // A new driver load: its ring starts again at 0.
            self.instance = Some(instance);
            self.cursor = 0;
        }
        if info.proxy != Some(self.config.registration) {
            let reply = self.call(&Request::RegisterProxy(self.config.registration))?;
            Self::expect_ok(&reply, "register-proxy")?;
            tick.registered = true;
        }
        self.drain(&mut tick)?;
        Ok(tick)
    }

    fn drain(&mut self, tick: &mut Tick) -> Result<(), ServiceError> {
        for _ in 0..MAX_DRAINS_PER_TICK {
            let cursor = self.cursor;
            let request = Request::DrainAudit { cursor, max_bytes: self.config.drain_max_bytes };
            let reply = self.call(&request)?;
            match reply.status {
                Status::Ok => {}
                Status::ReplyTooSmall => {
                    let need = reply.error_value().map_or(0, |n| n as usize);
                    if need <= self.reply.len() || need > MAX_REPLY_BUFFER {
                        return Err(ServiceError::Refused { op: "drain-audit", status: Status::ReplyTooSmall });
                    }
                    self.reply.resize(need, 0);
                    continue;
                }
                Status::CursorAhead => {
                    // Our cursor is from another driver load: start over.
                    self.cursor = 0;
                    continue;
                }
                status => return Err(ServiceError::Refused { op: "drain-audit", status }),
            }
            let instance = reply.instance;
            let d = reply.drained()?;
            let mut lines = Vec::new();
            if d.lost > 0 {
                lines.push(auditlog::lost_line(instance, cursor.saturating_add(d.lost), d.lost));
            }
            for rec in d.records() {
                let (seq, bytes) = rec?;
                lines.push(auditlog::record_line(instance, seq, bytes));
            }
            let (next, pending, lost, count) = (d.next_cursor, d.pending, d.lost, d.count);
            for line in &lines {
                self.log.write_value(line).map_err(ServiceError::Log)?;
            }
            self.log.flush().map_err(ServiceError::Log)?;
            tick.records = tick.records.saturating_add(u64::from(count));
            tick.lost = tick.lost.saturating_add(lost);
            self.cursor = next;
            if let Some(p) = &self.config.cursor_file {
                save_cursor(p, instance, next).map_err(ServiceError::Log)?;
            }
            if pending == 0 {
                break;
            }
        }
        Ok(())
    }

    /// Unregisters our proxy (at shutdown).
    pub fn unregister(&mut self) -> Result<(), ServiceError> {
        let result = self
            .call(&Request::UnregisterProxy { pid: self.config.registration.pid })
            .and_then(|reply| Self::expect_ok(&reply, "unregister-proxy"));
        self.channel = None;
        result
    }

    /// Ticks every `interval` until `stop`, backing off (up to 5 s) while the
    /// driver is unreachable. Errors go to `on_error`.
    pub fn run(&mut self, interval: Duration, stop: &AtomicBool, mut on_error: impl FnMut(&ServiceError)) {
        let mut wait = interval;
        while !stop.load(Ordering::SeqCst) {
            match self.tick() {
                Ok(_) => wait = interval,
                Err(e) => {
                    on_error(&e);
                    wait = (wait * 2).clamp(interval, Duration::from_secs(5));
                }
            }
            thread::sleep(wait);
        }
    }
}

fn load_cursor(path: &PathBuf) -> Option<(u64, u64)> {
    let text = fs::read_to_string(path).ok()?;
    let v: serde_json::Value = serde_json::from_str(&text).ok()?;
    Some((v.get("instance")?.as_u64()?, v.get("cursor")?.as_u64()?))
}

fn save_cursor(path: &PathBuf, instance: u64, cursor: u64) -> io::Result<()> {
    // Write then rename, so a crash leaves the old cursor or the new one.
    let tmp = path.with_extension("tmp");
    fs::write(&tmp, serde_json::json!({ "instance": instance, "cursor": cursor }).to_string())?;
    fs::rename(tmp, path)
}

// ---- an in-process driver, for tests and for running without Windows -----

struct Sim {
    arbiter: Arbiter<RuleSet>,
    ring: AuditRing,
    instance: u64,
    loaded: bool,
}

impl Sim {
    fn load(instance: u64, ring_bytes: usize) -> io::Result<Self> {
        let caps = Capacities { endpoints: 64, destinations: 64, known_proxies: 16 };
        let arbiter = Arbiter::new(Config::default(), caps, RuleSet::default())
            .map_err(|_| io::Error::new(io::ErrorKind::OutOfMemory, "arbiter tables"))?;
        let ring = AuditRing::new(ring_bytes).map_err(|_| io::Error::new(io::ErrorKind::OutOfMemory, "audit ring"))?;
        Ok(Self { arbiter, ring, instance, loaded: true })
    }
}

/// The driver's control device, simulated in process with the real
/// [`control::handle`]: loads, unloads and restarts like the driver, and
/// handles opened before a restart stop working, as on Windows.
#[derive(Clone)]
pub struct LocalDriver {
    sim: Arc<Mutex<Sim>>,
    ring_bytes: usize,
}

impl fmt::Debug for LocalDriver {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LocalDriver").finish_non_exhaustive()
    }
}

impl LocalDriver {
    /// A loaded driver with an audit ring of `ring_bytes`.
    pub fn new(instance: u64, ring_bytes: usize) -> io::Result<Self> {
        Ok(Self { sim: Arc::new(Mutex::new(Sim::load(instance, ring_bytes)?)), ring_bytes })
    }

    fn sim(&self) -> std::sync::MutexGuard<'_, Sim> {
        self.sim.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Unloads and loads again with a new instance id: the registration and
    /// the ring are gone, open handles are dead.
    pub fn restart(&self, instance: u64) -> io::Result<()> {
        *self.sim() = Sim::load(instance, self.ring_bytes)?;
        Ok(())
    }

    /// Unloads: opening and calling fail until [`Self::restart`].
    pub fn unload(&self) {
        self.sim().loaded = false;
    }

    /// Appends a record to the ring, as a decision would.
    pub fn audit(&self, record: &AuditRecord<'_>) -> u64 {
        self.sim().ring.push_record(record)
    }

    /// The registered proxy.
    pub fn registration(&self) -> Option<ProxyRegistration> {
        self.sim().arbiter.proxy().copied()
    }

    /// Opens a handle, as CreateFileW on the device would.
    pub fn open(&self) -> io::Result<LocalChannel> {
        let sim = self.sim();
        if !sim.loaded {
            return Err(io::Error::new(io::ErrorKind::NotFound, "control device not present"));
        }
        Ok(LocalChannel { driver: self.clone(), instance: sim.instance })
    }
}

/// A handle to a [`LocalDriver`].
#[derive(Debug)]
pub struct LocalChannel {
    driver: LocalDriver,
    instance: u64,
}

impl ControlChannel for LocalChannel {
    fn call(&mut self, request: &[u8], reply: &mut [u8]) -> io::Result<usize> {
        let mut sim = self.driver.sim();
        if !sim.loaded || sim.instance != self.instance {
            return Err(io::Error::new(io::ErrorKind::NotConnected, "the device this handle was opened on is gone"));
        }
        let Sim { arbiter, ring, instance, .. } = &mut *sim;
        // No compiled-rules decoder here: blobs are refused, as a driver
        // without one would.
        let reject = |_: &[u8]| -> Result<RuleSet, RulesRejected> { Err(RulesRejected { code: u32::MAX, offset: 0 }) };
        let mut station = Station { arbiter, ring, decode_rules: reject, instance: *instance };
        match control::handle(request, &mut station, reply) {
            0 => Err(io::Error::other("reply buffer smaller than a reply header")),
            n => Ok(n),
        }
    }
}

/// The registration for our process.
pub fn registration(v4: Option<SocketAddrV4>, v6: Option<SocketAddrV6>) -> ProxyRegistration {
    ProxyRegistration { pid: u64::from(std::process::id()), v4, v6 }
}
