//! The control service against the in-process driver (the real
//! `arbiter::control::handle` behind a simulated device): registration,
//! re-registration after a restart, the audit drain, loss, rotation.

#![allow(clippy::std_instead_of_core, clippy::alloc_instead_of_core, reason = "std test: host tool")]

use std::fs;
use std::path::Path;

use arbiter::ProxyRegistration;
use arbiter::arbiter::TableId;
use arbiter::audit::{AuditRecord, DepartedEntry, DepartureRecord};
use arbiter::control::{Access, Op, Request, Status};
use arbiter::table::Departure;
use arbiter::time::Instant;
use arbiter_proxy::auditlog::AuditLog;
use arbiter_proxy::service::{ControlChannel, LocalDriver, Service, ServiceConfig, ServiceError};
use serde_json::Value;

fn record(pid: u64) -> AuditRecord<'static> {
    DepartureRecord {
        seq: pid,
        at: Instant::from_millis(1000 + pid),
        table: TableId::KnownProxies,
        why: Departure::Expired,
        entry: DepartedEntry::KnownProxy { pid },
    }
    .record()
}

fn reg() -> ProxyRegistration {
    ProxyRegistration {
        pid: 5151,
        v4: Some("127.0.0.1:34010".parse().unwrap()),
        v6: Some("[::1]:34010".parse().unwrap()),
    }
}

fn lines(path: &Path) -> Vec<Value> {
    fs::read_to_string(path).unwrap_or_default().lines().map(|l| serde_json::from_str(l).unwrap()).collect()
}

fn service(
    driver: &LocalDriver,
    dir: &Path,
) -> Service<arbiter_proxy::service::LocalChannel, impl FnMut() -> std::io::Result<arbiter_proxy::service::LocalChannel>>
{
    let d = driver.clone();
    let config = ServiceConfig {
        registration: reg(),
        drain_max_bytes: 128,
        cursor_file: Some(dir.join("audit.cursor")),
        rules: None,
    };
    Service::new(move || d.open_as(5151, Access::READ_WRITE), config, AuditLog::open(dir, 1 << 20, 2).unwrap())
}

#[test]
fn registers_at_start_and_drains_records_to_json_lines() {
    let dir = tempfile::tempdir().unwrap();
    let driver = LocalDriver::new(11, 4096).unwrap();
    for pid in 1..=3 {
        driver.audit(&record(pid));
    }
    let mut svc = service(&driver, dir.path());
    let t = svc.tick().unwrap();
    assert!(t.registered);
    assert_eq!((t.instance, t.records, t.lost), (11, 3, 0));
    assert_eq!(driver.registration(), Some(reg()));

    let got = lines(&dir.path().join("audit.jsonl"));
    assert_eq!(got.len(), 3);
    for (i, line) in got.iter().enumerate() {
        assert_eq!(line["seq"], i as u64);
        assert_eq!(line["instance"], 11);
        assert_eq!(line["kind"], "departure");
        assert_eq!(line["reason"], "expired");
        assert_eq!(line["table"], "known-proxies");
        // The raw record is kept for replay tooling.
        let raw = line["raw"].as_str().unwrap();
        let bytes: Vec<u8> =
            (0..raw.len()).step_by(2).map(|i| u8::from_str_radix(&raw[i..i + 2], 16).unwrap()).collect();
        assert_eq!(AuditRecord::decode(&bytes).unwrap().0, record(i as u64 + 1));
    }
    // Nothing new: no re-registration, no lines.
    let t = svc.tick().unwrap();
    assert_eq!((t.registered, t.records), (false, 0));
    assert_eq!(lines(&dir.path().join("audit.jsonl")).len(), 3);
}

#[test]
fn re_registers_when_the_driver_restarts() {
    let dir = tempfile::tempdir().unwrap();
    let driver = LocalDriver::new(1, 4096).unwrap();
    let mut svc = service(&driver, dir.path());
    svc.tick().unwrap();
    driver.audit(&record(1));
    svc.tick().unwrap();
    assert_eq!(svc.cursor(), 1);

    driver.restart(2).unwrap();
    assert_eq!(driver.registration(), None, "a fresh driver knows no proxy");
    driver.audit(&record(9));
    // The next tick opens a new handle, sees the new instance, registers
    // again, and reads the new driver's ring from its start.
    let t = svc.tick().unwrap();
    assert!(t.registered);
    assert_eq!((t.instance, t.records), (2, 1));
    assert_eq!(driver.registration(), Some(reg()));
    let last = lines(&dir.path().join("audit.jsonl")).pop().unwrap();
    assert_eq!((last["instance"].as_u64(), last["seq"].as_u64()), (Some(2), Some(0)));

    // Unloaded: opening fails until the driver is back.
    driver.unload();
    assert!(matches!(svc.tick(), Err(ServiceError::Open(_))));
    driver.restart(3).unwrap();
    assert!(svc.tick().unwrap().registered);
}

#[test]
fn a_handle_to_a_restarted_driver_fails() {
    let driver = LocalDriver::new(1, 4096).unwrap();
    let mut old = driver.open().unwrap();
    driver.restart(2).unwrap();
    let mut reply = vec![0u8; 256];
    let hello = Request::Hello.to_vec();
    assert!(old.call(Op::Hello.ioctl(), &hello, &mut reply).is_err());
    let mut new = driver.open().unwrap();
    assert!(new.call(Op::Hello.ioctl(), &hello, &mut reply).is_ok());
}

fn status_of(ch: &mut impl ControlChannel, req: &Request<'_>) -> Status {
    let mut reply = vec![0u8; 512];
    let n = ch.call(req.op().ioctl(), &req.to_vec(), &mut reply).unwrap();
    arbiter::control::Reply::decode(&reply[..n]).unwrap().status
}

/// Issue 12: anyone who could open the device could unregister the proxy by
/// naming its PID. Now a reader cannot, and a second writer cannot even open.
#[test]
fn nobody_else_can_unregister_the_service() {
    let dir = tempfile::tempdir().unwrap();
    let driver = LocalDriver::new(1, 4096).unwrap();
    let mut svc = service(&driver, dir.path());
    assert!(svc.tick().unwrap().registered);
    // A second writer is refused while the service holds its handle.
    assert!(driver.open_as(666, Access::READ_WRITE).is_err());
    // A reader (the `arbiter` command, say) can look but not touch.
    let mut reader = driver.open_as(666, Access::READ).unwrap();
    assert_eq!(status_of(&mut reader, &Request::UnregisterProxy { pid: 5151 }), Status::AccessDenied);
    assert_eq!(status_of(&mut reader, &Request::Hello), Status::Ok);
    drop(reader);
    assert_eq!(driver.registration(), Some(reg()));
    // Nothing to repair on the next tick.
    assert!(!svc.tick().unwrap().registered);
    svc.unregister().unwrap();
    assert_eq!(driver.registration(), None);
}

/// Issue 12: the registration outlived the service. Now it ends with the
/// service's handle (as when the process dies), and comes back with the next tick.
#[test]
fn the_registration_ends_with_the_services_handle() {
    let dir = tempfile::tempdir().unwrap();
    let driver = LocalDriver::new(1, 4096).unwrap();
    let mut svc = service(&driver, dir.path());
    assert!(svc.tick().unwrap().registered);
    assert!(!svc.tick().unwrap().registered, "the handle stays open between ticks");
    svc.disconnect();
    assert_eq!(driver.registration(), None);
    assert!(svc.tick().unwrap().registered);
    assert_eq!(driver.registration(), Some(reg()));
    drop(svc);
    assert_eq!(driver.registration(), None, "a service that is gone leaves no registration behind");
}

/// A reader drains with its own cursor: it neither takes records from the
/// service nor hides losses from it.
#[test]
fn a_reader_does_not_take_the_services_records() {
    let dir = tempfile::tempdir().unwrap();
    let driver = LocalDriver::new(1, 4096).unwrap();
    let mut svc = service(&driver, dir.path());
    svc.tick().unwrap();
    let mut reader = driver.open_as(666, Access::READ).unwrap();
    for pid in 1..=3 {
        driver.audit(&record(pid));
    }
    for cursor in [0, 3] {
        assert_eq!(status_of(&mut reader, &Request::DrainAudit { cursor, max_bytes: 0 }), Status::Ok);
    }
    let t = svc.tick().unwrap();
    assert_eq!((t.records, t.lost), (3, 0));
}

#[test]
fn loss_is_written_down_never_silent() {
    let dir = tempfile::tempdir().unwrap();
    // Room for only a few records.
    let driver = LocalDriver::new(1, 300).unwrap();
    for pid in 0..20 {
        driver.audit(&record(pid));
    }
    let mut svc = service(&driver, dir.path());
    let t = svc.tick().unwrap();
    assert!(t.lost > 0);
    assert_eq!(t.lost + t.records, 20, "every record is read or counted lost");
    let got = lines(&dir.path().join("audit.jsonl"));
    assert_eq!(got[0]["kind"], "lost");
    assert_eq!(got[0]["lost"], t.lost);
    assert_eq!(got[0]["before_seq"], t.lost);
    assert_eq!(got[1]["seq"], t.lost);
}

#[test]
fn cursor_survives_a_service_restart() {
    let dir = tempfile::tempdir().unwrap();
    let driver = LocalDriver::new(5, 4096).unwrap();
    driver.audit(&record(1));
    driver.audit(&record(2));
    service(&driver, dir.path()).tick().unwrap();
    driver.audit(&record(3));
    // A new service process: it must neither repeat records 0 and 1 nor skip 2.
    let mut svc = service(&driver, dir.path());
    assert_eq!(svc.cursor(), 2);
    assert_eq!(svc.tick().unwrap().records, 1);
    let seqs: Vec<u64> = lines(&dir.path().join("audit.jsonl")).iter().map(|l| l["seq"].as_u64().unwrap()).collect();
    assert_eq!(seqs, [0, 1, 2]);
}

#[test]
fn audit_files_rotate_by_size_and_keep_a_bounded_number() {
    let dir = tempfile::tempdir().unwrap();
    let mut log = AuditLog::open(dir.path(), 200, 2).unwrap();
    for i in 0..30 {
        log.write_value(&serde_json::json!({ "n": i, "pad": "xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx" })).unwrap();
    }
    log.flush().unwrap();
    let live = lines(&log.live_path());
    let one = lines(&log.rotated_path(1));
    let two = lines(&log.rotated_path(2));
    assert!(!log.rotated_path(3).exists(), "only `keep` rotated files are kept");
    for p in [log.live_path(), log.rotated_path(1), log.rotated_path(2)] {
        assert!(fs::metadata(&p).unwrap().len() <= 200, "{} exceeds the limit", p.display());
    }
    // Newest last, with no gap across the files.
    let all: Vec<u64> = two.iter().chain(&one).chain(&live).map(|l| l["n"].as_u64().unwrap()).collect();
    assert_eq!(*all.last().unwrap(), 29);
    assert!(all.windows(2).all(|w| w[1] == w[0] + 1), "{all:?}");
}

/// The rules blob (its `[boot] mode` included) reaches the driver before the
/// registration, once per driver load, and again after a reload.
#[test]
fn the_rules_blob_reaches_the_driver_and_is_reloaded_after_a_restart() {
    use arbiter::boot::{BootConfig, BootMode};
    let dir = tempfile::tempdir().unwrap();
    let driver = LocalDriver::new(21, 4096).unwrap();
    let rules =
        arbiter::RuleSet { boot: BootConfig { mode: BootMode::Block, ..BootConfig::default() }, ..Default::default() };
    let blob = arbiter::compiled::blob::encode(&rules).unwrap();
    let d = driver.clone();
    let config =
        ServiceConfig { registration: reg(), drain_max_bytes: 128, cursor_file: None, rules: Some(blob.clone()) };
    let mut svc = Service::new(
        move || d.open_as(5151, Access::READ_WRITE),
        config,
        AuditLog::open(dir.path(), 1 << 20, 2).unwrap(),
    );
    let t = svc.tick().unwrap();
    assert!(t.rules_loaded && t.registered);
    assert_eq!(driver.boot_mode(), BootMode::Block);
    assert!(!svc.tick().unwrap().rules_loaded, "loaded once");
    driver.restart(22).unwrap();
    let t = svc.tick().unwrap();
    assert!(t.rules_loaded && t.registered, "a new driver load gets the rules again");
    assert_eq!(driver.boot_mode(), BootMode::Block);
}
