//! The control service: keeps our proxy registered with the driver and
//! drains the driver's audit ring to the audit file.
//!
//! The service holds one handle to the control device, opened for reading
//! and writing, for as long as it runs: the driver ties our registration to
//! that handle (it must name our own PID, and it ends when the handle is
//! closed, including when this process dies), and gives the handle its own
//! drain cursor. At most one such writer handle is open at a time; the
//! `arbiter` command and other tools open the device for reading only
//! (hello, counters, their own audit drain) and never disturb the service.
//!
//! Each [`Service::tick`] says `Hello`; the reply's instance id changes when
//! the driver was reloaded, and its registration shows whether ours is still
//! in force, so a driver restart is repaired on the next tick: a call on a
//! handle to a driver instance that is gone fails, the handle is dropped and
//! the next tick opens a new one and registers again. Stop the service
//! before unloading the driver: its open handle keeps the driver loaded.
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
use arbiter::control::{
    self, Access, Caller, HandleId, Handles, Info, MIN_REPLY_BUFFER, ReplyError, Request, RulesRejected, Status,
};
use arbiter::{Arbiter, Capacities, Config, ProxyRegistration, RuleSet};
use arbiter_callout::control::Device;
use arbiter_callout::{Callout, CalloutConfig};

use crate::auditlog::{self, AuditLog};

/// One request/reply exchange with the driver (DeviceIoControl on Windows).
pub trait ControlChannel {
    /// Sends `request` with IOCTL code `ioctl` (the request's own op's,
    /// [`arbiter::control::Op::ioctl`]), fills `reply`, returns the reply's length.
    fn call(&mut self, ioctl: u32, request: &[u8], reply: &mut [u8]) -> io::Result<usize>;
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
    /// We (re-)loaded the rules this tick.
    pub rules_loaded: bool,
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
    /// A compiled rules blob (`arbiter rules compile`) to load into the
    /// driver before registering, and again whenever the driver's rules
    /// differ from it (a reload): how the rules, their `[boot] mode`
    /// included, reach the driver. `None`: leave the driver's rules alone.
    pub rules: Option<Vec<u8>>,
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
    /// The id the driver gave our rules when it last accepted them.
    rules_id: Option<u32>,
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
        Self {
            open,
            channel: None,
            config,
            log,
            instance,
            cursor,
            reply: vec![0u8; MIN_REPLY_BUFFER + 64 * 1024],
            rules_id: None,
        }
    }

    /// The next audit sequence number we will ask for.
    pub const fn cursor(&self) -> u64 {
        self.cursor
    }

    /// Sends one request; on a transport failure drops the handle.
    /// Sends one request. A handle kept from an earlier tick may belong to a
    /// driver load that is gone: then it is dropped and the request is sent
    /// once more on a new handle. Any other transport failure drops the handle.
    fn call(&mut self, request: &Request<'_>) -> Result<control::Reply<'_>, ServiceError> {
        let bytes = request.to_vec();
        let mut retry = self.channel.is_some();
        let n = loop {
            if self.channel.is_none() {
                self.channel = Some((self.open)().map_err(ServiceError::Open)?);
            }
            let result = match self.channel.as_mut() {
                Some(ch) => ch.call(request.op().ioctl(), &bytes, &mut self.reply),
                None => Err(io::Error::other("no channel")),
            };
            match result {
                Ok(n) => break n,
                Err(e) => {
                    self.channel = None;
                    if !retry {
                        return Err(ServiceError::Call(e));
                    }
                    retry = false;
                }
            }
        };
        let reply = self.reply.get(..n).ok_or(ServiceError::Reply(ReplyError::Truncated))?;
        Ok(control::Reply::decode(reply)?)
    }

    fn expect_ok(reply: &control::Reply<'_>, op: &'static str) -> Result<(), ServiceError> {
        if reply.status == Status::Ok { Ok(()) } else { Err(ServiceError::Refused { op, status: reply.status }) }
    }

    /// Checks the registration (repairing it if the driver restarted or lost
    /// it) and drains the audit ring. The handle stays open between ticks:
    /// our registration lasts as long as it does.
    pub fn tick(&mut self) -> Result<Tick, ServiceError> {
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
        if let Some(blob) = self.config.rules.take() {
            // Rules first, so the registration meets them (the boot guard's mode).
            let loaded = if self.rules_id == Some(info.rules_id) { Ok(None) } else { self.load_rules(&blob).map(Some) };
            self.config.rules = Some(blob);
            if let Some(id) = loaded? {
                self.rules_id = Some(id);
                tick.rules_loaded = true;
            }
        }
        if info.proxy != Some(self.config.registration) {
            let reply = self.call(&Request::RegisterProxy(self.config.registration))?;
            Self::expect_ok(&reply, "register-proxy")?;
            tick.registered = true;
        }
        self.drain(&mut tick)?;
        Ok(tick)
    }

    fn load_rules(&mut self, blob: &[u8]) -> Result<u32, ServiceError> {
        let reply = self.call(&Request::SetRules(blob))?;
        let status = reply.status;
        match reply.rules()? {
            Ok(id) => Ok(id),
            Err(_) => Err(ServiceError::Refused { op: "set-rules", status }),
        }
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

    /// Closes our handle (the driver then unregisters us, as it would if
    /// this process died). The next tick opens a new one.
    pub fn disconnect(&mut self) {
        self.channel = None;
    }

    /// Unregisters our proxy (at shutdown) and closes our handle.
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

/// Fwps for a callout that never classifies (the simulated driver only
/// answers control requests, and holds nothing).
struct NoFwps;

impl arbiter_callout::Fwps for NoFwps {
    fn query_redirect_state(
        &mut self,
        _: wfp_ffi::HANDLE,
        _: wfp_ffi::HANDLE,
    ) -> wfp_ffi::FWPS_CONNECTION_REDIRECT_STATE {
        wfp_ffi::FWPS_CONNECTION_NOT_REDIRECTED
    }
    fn acquire_classify_handle(&mut self, _: *const core::ffi::c_void) -> Result<u64, wfp_ffi::NTSTATUS> {
        Err(UNSUPPORTED)
    }
    fn acquire_writable_connect_request(
        &mut self,
        _: u64,
        _: u64,
        _: &mut wfp_ffi::FWPS_CLASSIFY_OUT0,
    ) -> Result<core::ptr::NonNull<wfp_ffi::FWPS_CONNECT_REQUEST0>, wfp_ffi::NTSTATUS> {
        Err(UNSUPPORTED)
    }
    fn apply_modified_layer_data(&mut self, _: u64, _: core::ptr::NonNull<wfp_ffi::FWPS_CONNECT_REQUEST0>, _: u32) {}
    fn pend_classify(&mut self, _: u64, _: u64, _: &mut wfp_ffi::FWPS_CLASSIFY_OUT0) -> Result<(), wfp_ffi::NTSTATUS> {
        Err(UNSUPPORTED)
    }
    fn complete_classify(&mut self, _: u64, _: &wfp_ffi::FWPS_CLASSIFY_OUT0) {}
    fn release_classify_handle(&mut self, _: u64) {}
    fn allocate_context(&mut self, _: usize) -> Option<core::ptr::NonNull<u8>> {
        None
    }
    fn free_context(&mut self, _: core::ptr::NonNull<u8>) {}
}

/// STATUS_NOT_SUPPORTED.
const UNSUPPORTED: wfp_ffi::NTSTATUS = 0xC000_00BB_u32 as wfp_ffi::NTSTATUS;

struct Sim {
    callout: Callout<RuleSet>,
    handles: Handles,
    instance: u64,
    loaded: bool,
}

impl Sim {
    fn load(instance: u64, ring_bytes: usize) -> io::Result<Self> {
        let caps = Capacities { endpoints: 64, destinations: 64, known_proxies: 16 };
        let arbiter = Arbiter::new(Config::default(), caps, RuleSet::default())
            .map_err(|_| io::Error::new(io::ErrorKind::OutOfMemory, "arbiter tables"))?;
        let callout = Callout::new(arbiter, CalloutConfig { ring_bytes, pend: None })
            .map_err(|_| io::Error::new(io::ErrorKind::OutOfMemory, "audit ring"))?;
        Ok(Self { callout, handles: Handles::new(), instance, loaded: true })
    }

    /// Runs `f` on the driver's control target, as the driver's dispatch does under its lock.
    fn with_device<R>(&mut self, f: impl FnOnce(&mut Device<'_, RuleSet, DecodeBlob, NoFwps>) -> R) -> R {
        let mut fwps = NoFwps;
        let mut device = Device {
            callout: &mut self.callout,
            handles: &mut self.handles,
            // The driver's decoder, into the reference rule set.
            decode_rules: decode_blob as DecodeBlob,
            instance: self.instance,
            fwps: &mut fwps,
            now: arbiter::Instant::from_millis(0),
            driver_counters: control::DriverCounters::default(),
        };
        f(&mut device)
    }
}

type DecodeBlob = fn(&[u8]) -> Result<RuleSet, RulesRejected>;

fn decode_blob(blob: &[u8]) -> Result<RuleSet, RulesRejected> {
    arbiter::compiled::blob::decode_rule_set(blob).map_err(|_| RulesRejected { code: 8, offset: 0 })
}

/// The driver's control device, simulated in process with the driver's own
/// control path (`arbiter_callout::control` over a real `Callout`): loads,
/// unloads and restarts like the driver, handles opened before a restart
/// stop working, and closing a handle runs the driver's cleanup, as on Windows.
#[derive(Clone)]
pub struct LocalDriver {
    sim: Arc<Mutex<Sim>>,
    ring_bytes: usize,
    next_handle: Arc<std::sync::atomic::AtomicU64>,
}

impl fmt::Debug for LocalDriver {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LocalDriver").finish_non_exhaustive()
    }
}

impl LocalDriver {
    /// A loaded driver with an audit ring of `ring_bytes`.
    pub fn new(instance: u64, ring_bytes: usize) -> io::Result<Self> {
        Ok(Self {
            sim: Arc::new(Mutex::new(Sim::load(instance, ring_bytes)?)),
            ring_bytes,
            next_handle: Arc::new(std::sync::atomic::AtomicU64::new(1)),
        })
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
        self.sim().callout.parts_mut().1.push_record(record)
    }

    /// The registered proxy.
    pub fn registration(&self) -> Option<ProxyRegistration> {
        self.sim().callout.arbiter().proxy().copied()
    }

    /// The `[boot] mode` of the rules loaded.
    pub fn boot_mode(&self) -> arbiter::boot::BootMode {
        use arbiter::Policy;
        self.sim().callout.arbiter().policy().boot_mode()
    }

    /// Opens a handle for reading and writing from this process, as
    /// CreateFileW on the device would.
    pub fn open(&self) -> io::Result<LocalChannel> {
        self.open_as(std::process::id(), Access::READ_WRITE)
    }

    /// Opens a handle as process `pid` with `access`. A second handle with
    /// write access is refused while one is open (a sharing violation on Windows).
    pub fn open_as(&self, pid: u32, access: Access) -> io::Result<LocalChannel> {
        let mut sim = self.sim();
        if !sim.loaded {
            return Err(io::Error::new(io::ErrorKind::NotFound, "control device not present"));
        }
        let handle = HandleId(self.next_handle.fetch_add(1, Ordering::SeqCst));
        let caller = Caller { pid, handle, access };
        match sim.with_device(|d| arbiter_callout::control::open(d, &caller)) {
            Status::Ok => Ok(LocalChannel { driver: self.clone(), instance: sim.instance, caller }),
            status => Err(io::Error::new(io::ErrorKind::ResourceBusy, format!("control device: {status}"))),
        }
    }
}

/// A handle to a [`LocalDriver`]; dropping it is the driver's cleanup.
#[derive(Debug)]
pub struct LocalChannel {
    driver: LocalDriver,
    instance: u64,
    caller: Caller,
}

impl ControlChannel for LocalChannel {
    fn call(&mut self, ioctl: u32, request: &[u8], reply: &mut [u8]) -> io::Result<usize> {
        let mut sim = self.driver.sim();
        if !sim.loaded || sim.instance != self.instance {
            return Err(io::Error::new(io::ErrorKind::NotConnected, "the device this handle was opened on is gone"));
        }
        let caller = self.caller;
        match sim.with_device(|d| arbiter_callout::control::dispatch(d, ioctl, &caller, request, reply)) {
            0 => Err(io::Error::other("reply buffer smaller than a reply header")),
            n => Ok(n),
        }
    }
}

impl Drop for LocalChannel {
    fn drop(&mut self) {
        let mut sim = self.driver.sim();
        if sim.instance == self.instance {
            let handle = self.caller.handle;
            sim.with_device(|d| arbiter_callout::control::cleanup(d, handle));
        }
    }
}

/// The registration for our process.
pub fn registration(v4: Option<SocketAddrV4>, v6: Option<SocketAddrV6>) -> ProxyRegistration {
    ProxyRegistration { pid: u64::from(std::process::id()), v4, v6 }
}
