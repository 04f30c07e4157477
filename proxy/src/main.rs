//! `arbiter-proxy`: the reference local proxy and control service.
//!
//! Listens where the rules' `[proxy]` section points the driver, relays every
//! redirected TCP connection and UDP flow to its original destination with
//! the redirect records propagated, keeps our PID and listeners registered
//! with the driver, and drains the driver's audit to rotating JSON lines.

#![allow(clippy::std_instead_of_core, clippy::alloc_instead_of_core, reason = "std crate: host tool")]

use std::net::{SocketAddr, SocketAddrV4, SocketAddrV6};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use arbiter_proxy::tcp::{ConnReport, Outcome as TcpOutcome};
use arbiter_proxy::udp::{FlowOutcome, FlowReport};
use serde_json::{Value, json};

/// Command-line settings.
#[derive(Debug)]
struct Args {
    v4: Option<SocketAddrV4>,
    v6: Option<SocketAddrV6>,
    udp: bool,
    audit_dir: PathBuf,
    audit_max_bytes: u64,
    audit_keep: u32,
    poll: Duration,
    rules: Option<PathBuf>,
}

const USAGE: &str = "usage: arbiter-proxy [--v4 ADDR|none] [--v6 ADDR|none] [--no-udp] \
[--audit-dir DIR] [--audit-max-bytes N] [--audit-keep N] [--poll-ms N] [--rules RULES.BLOB]
       arbiter-proxy install-boot RULES.BLOB | remove-boot";

/// `--help`: the usage line, what each flag does, and the exit codes.
const HELP: &str = "\
arbiter-proxy: the arbiter's reference local proxy and control service (Windows).

usage: arbiter-proxy [OPTIONS]
       arbiter-proxy install-boot RULES.BLOB
       arbiter-proxy remove-boot

  --v4 ADDR|none         TCP and UDP listener for IPv4 [default: 127.0.0.1:34010]
  --v6 ADDR|none         TCP and UDP listener for IPv6 [default: [::1]:34010]
  --no-udp               relay TCP only
  --audit-dir DIR        where audit.jsonl is written [default: %ProgramData%\\arbiter\\audit]
  --audit-max-bytes N    rotate audit.jsonl at N bytes [default: 16777216]
  --audit-keep N         rotated files kept [default: 8]
  --poll-ms N            control-device poll interval [default: 500]
  --rules RULES.BLOB     compiled rules (`arbiter rules compile`) loaded into
                         the driver before registering, and again after a
                         driver reload [default: leave the driver's rules]
  -h, --help             print this help

  install-boot RULES.BLOB  add boot-time protection as the compiled rules'
                           [boot] section says (`arbiter rules compile`): in
                           block mode the boot-time and persistent filter set,
                           replacing any set installed before; in open mode,
                           remove it. One transaction; needs an elevated prompt.
  remove-boot              delete every object of the boot provider (filters,
                           sublayer, provider) in one transaction; needs
                           neither the rules nor the driver (recovery).

exit codes:
  0  --help, or a clean stop, or install-boot/remove-boot done
  1  a listener or the audit directory could not be opened, or the filter
     engine refused install-boot/remove-boot (nothing was changed)
  2  bad arguments
  3  the driver's control device \\\\.\\ArbiterControl cannot be opened
     (driver not installed or not started, or not an elevated prompt),
     or this is not Windows
";

/// Exit code: a listener or the audit directory could not be opened.
#[cfg_attr(not(windows), allow(dead_code, reason = "only the Windows service opens listeners"))]
const EXIT_RUNTIME: u8 = 1;
/// Exit code: bad arguments.
const EXIT_USAGE: u8 = 2;
/// Exit code: no control device (the driver is not there, or not Windows).
const EXIT_NO_DEVICE: u8 = 3;

/// What the command line asks for.
#[derive(Debug)]
enum Command {
    Run(Args),
    Help,
    /// `install-boot RULES.BLOB`.
    InstallBoot(PathBuf),
    /// `remove-boot`.
    RemoveBoot,
}

fn parse_args(it: impl Iterator<Item = String>) -> Result<Command, String> {
    // `--help` anywhere wins, so a half-typed command line still gets help.
    let all: Vec<String> = it.collect();
    if all.iter().any(|a| a == "-h" || a == "--help") {
        return Ok(Command::Help);
    }
    match all.first().map(String::as_str) {
        Some("install-boot") => match all.get(1..) {
            Some([blob]) => Ok(Command::InstallBoot(PathBuf::from(blob))),
            _ => Err(format!("install-boot takes one compiled rules blob\n{USAGE}")),
        },
        Some("remove-boot") if all.len() == 1 => Ok(Command::RemoveBoot),
        Some("remove-boot") => Err(format!("remove-boot takes no arguments\n{USAGE}")),
        _ => parse_run(all.into_iter()).map(Command::Run),
    }
}

fn parse_run(mut it: impl Iterator<Item = String>) -> Result<Args, String> {
    let mut a = Args {
        v4: Some(SocketAddrV4::new([127, 0, 0, 1].into(), 34010)),
        v6: Some(SocketAddrV6::new(std::net::Ipv6Addr::LOCALHOST, 34010, 0, 0)),
        udp: true,
        audit_dir: default_audit_dir(),
        audit_max_bytes: 16 << 20,
        audit_keep: 8,
        poll: Duration::from_millis(500),
        rules: None,
    };
    while let Some(flag) = it.next() {
        let mut value = || it.next().ok_or_else(|| format!("{flag} needs a value\n{USAGE}"));
        let bad = |what: &str, v: &str| format!("{flag}: {v:?} is not {what}");
        match flag.as_str() {
            "--v4" => {
                let v = value()?;
                a.v4 = if v == "none" { None } else { Some(v.parse().map_err(|_| bad("an IPv4 socket address", &v))?) };
            }
            "--v6" => {
                let v = value()?;
                a.v6 = if v == "none" { None } else { Some(v.parse().map_err(|_| bad("an IPv6 socket address", &v))?) };
            }
            "--no-udp" => a.udp = false,
            "--rules" => a.rules = Some(PathBuf::from(value()?)),
            "--audit-dir" => a.audit_dir = PathBuf::from(value()?),
            "--audit-max-bytes" => {
                let v = value()?;
                a.audit_max_bytes = v.parse().map_err(|_| bad("a byte count", &v))?;
            }
            "--audit-keep" => {
                let v = value()?;
                a.audit_keep = v.parse().map_err(|_| bad("a file count", &v))?;
            }
            "--poll-ms" => {
                let v = value()?;
                a.poll = Duration::from_millis(v.parse().map_err(|_| bad("milliseconds", &v))?);
            }
            other => return Err(format!("unknown argument {other:?}\n{USAGE}")),
        }
    }
    if a.v4.is_none() && a.v6.is_none() {
        return Err("at least one of --v4 and --v6 is needed".into());
    }
    Ok(a)
}

fn default_audit_dir() -> PathBuf {
    std::env::var_os("ProgramData")
        .map_or_else(|| PathBuf::from("audit"), |d| PathBuf::from(d).join("arbiter").join("audit"))
}

fn main() -> ExitCode {
    match parse_args(std::env::args().skip(1)) {
        Ok(Command::Run(args)) => run(&args),
        Ok(Command::Help) => {
            print!("{HELP}");
            ExitCode::SUCCESS
        }
        Ok(Command::InstallBoot(blob)) => install_boot(&blob),
        Ok(Command::RemoveBoot) => boot_plan(None),
        Err(e) => {
            eprintln!("arbiter-proxy: {e}");
            ExitCode::from(EXIT_USAGE)
        }
    }
}

#[cfg(windows)]
fn run(args: &Args) -> ExitCode {
    use std::net::{TcpListener, UdpSocket};
    use std::sync::atomic::AtomicBool;
    use std::sync::{Arc, Mutex, PoisonError};

    use arbiter_proxy::auditlog::AuditLog;
    use arbiter_proxy::service::{self, Service, ServiceConfig};
    use arbiter_proxy::tcp::{RelayOptions, TcpRelay};
    use arbiter_proxy::udp::{UdpOptions, UdpRelay};
    use arbiter_proxy::windows::{DeviceChannel, WfpProvider};

    // The driver must be there before we listen: without it nothing is
    // redirected to us and nothing registers us, so fail now and say why.
    if let Err(e) = DeviceChannel::open() {
        eprintln!("arbiter-proxy: {}", no_device_message(&e));
        return ExitCode::from(EXIT_NO_DEVICE);
    }
    // The audit log is for SYSTEM and administrators only: refuse to run as
    // anyone else, and give the folder that DACL before anything is written.
    match arbiter_proxy::acl::running_identity().map(arbiter_proxy::acl::may_write_audit) {
        Ok(Ok(())) => {}
        Ok(Err(why)) => {
            eprintln!("{why}");
            return ExitCode::from(EXIT_RUNTIME);
        }
        Err(e) => {
            eprintln!("cannot tell who this process runs as: {e}");
            return ExitCode::from(EXIT_RUNTIME);
        }
    }
    if let Err(e) =
        std::fs::create_dir_all(&args.audit_dir).and_then(|()| arbiter_proxy::acl::secure_audit_dir(&args.audit_dir))
    {
        eprintln!("cannot restrict the audit folder {} to SYSTEM and administrators: {e}", args.audit_dir.display());
        return ExitCode::from(EXIT_RUNTIME);
    }
    // Our own audit: every connection or flow not relayed to its end
    // (refused for want of redirect records or context, records not set,
    // upstream unreachable, aborted), beside the driver's audit.
    let proxy_dir = args.audit_dir.join("proxy");
    let proxy_log = match AuditLog::open(&proxy_dir, args.audit_max_bytes, args.audit_keep) {
        Ok(l) => Arc::new(Mutex::new(l)),
        Err(e) => {
            eprintln!("arbiter-proxy: cannot open the audit file in {}: {e}", proxy_dir.display());
            return ExitCode::from(EXIT_RUNTIME);
        }
    };
    let record = move |event: Value| {
        eprintln!("{event}");
        if let Err(e) = proxy_log.lock().unwrap_or_else(PoisonError::into_inner).write_value(&event) {
            eprintln!("arbiter-proxy: cannot write the proxy audit: {e}");
        }
    };
    let provider = Arc::new(WfpProvider::new());
    let tcp_record = record.clone();
    let tcp_report: arbiter_proxy::tcp::Reporter = Arc::new(move |r| tcp_event(&r).into_iter().for_each(&tcp_record));
    let udp_report: arbiter_proxy::udp::FlowReporter = Arc::new(move |r| udp_event(&r).into_iter().for_each(&record));
    let listen: Vec<SocketAddr> = args.v4.map(SocketAddr::V4).into_iter().chain(args.v6.map(SocketAddr::V6)).collect();
    let mut relays = Vec::new();
    let mut udp_relays = Vec::new();
    for addr in &listen {
        let started = TcpListener::bind(addr)
            .and_then(|l| TcpRelay::start(l, Arc::clone(&provider), RelayOptions::default(), Arc::clone(&tcp_report)));
        match started {
            Ok(r) => relays.push(r),
            Err(e) => {
                eprintln!("arbiter-proxy: cannot listen on tcp {addr}: {e}");
                return ExitCode::from(EXIT_RUNTIME);
            }
        }
        if args.udp {
            let started = UdpSocket::bind(addr).and_then(|s| {
                UdpRelay::start(s, Arc::clone(&provider), UdpOptions::default(), Arc::clone(&udp_report))
            });
            match started {
                Ok(r) => udp_relays.push(r),
                Err(e) => {
                    eprintln!("arbiter-proxy: cannot listen on udp {addr}: {e}");
                    return ExitCode::from(EXIT_RUNTIME);
                }
            }
        }
    }
    let log = match AuditLog::open(&args.audit_dir, args.audit_max_bytes, args.audit_keep) {
        Ok(l) => l,
        Err(e) => {
            eprintln!("arbiter-proxy: cannot open the audit file in {}: {e}", args.audit_dir.display());
            return ExitCode::from(EXIT_RUNTIME);
        }
    };
    let rules_blob = match args.rules.as_ref().map(std::fs::read).transpose() {
        Ok(b) => b,
        Err(e) => {
            eprintln!("arbiter-proxy: cannot read the rules blob: {e}");
            return ExitCode::from(EXIT_RUNTIME);
        }
    };
    let config = ServiceConfig {
        registration: service::registration(args.v4, args.v6),
        drain_max_bytes: 0,
        cursor_file: Some(args.audit_dir.join("audit.cursor")),
        rules: rules_blob,
    };
    let mut svc = Service::new(DeviceChannel::open, config, log);
    let stop = AtomicBool::new(false);
    svc.run(args.poll, &stop, |e| eprintln!("control: {e}"));
    ExitCode::SUCCESS
}

/// The proxy audit line for a TCP connection that was not relayed to its
/// end (`None` when it completed). `relayed` says whether any byte went to
/// the original destination: never for a refusal.
#[cfg_attr(not(windows), allow(dead_code, reason = "the relays run on Windows only"))]
fn tcp_event(r: &ConnReport) -> Option<Value> {
    let relayed = match &r.outcome {
        TcpOutcome::Completed => return None,
        TcpOutcome::Aborted { .. } => true,
        // Timed out after the upstream connect: relayed if a byte went up.
        TcpOutcome::Idle => r.up > 0,
        TcpOutcome::Refused(_)
        | TcpOutcome::RecordsNotSet(_)
        | TcpOutcome::UpstreamFailed(_)
        | TcpOutcome::Overloaded
        | TcpOutcome::ProcessLimit => false,
    };
    Some(json!({
        "kind": "proxy", "protocol": "tcp", "outcome": r.outcome.name(), "relayed": relayed,
        "client": r.client.map(|a| a.to_string()), "original": r.original.map(|a| a.to_string()), "pid": r.pid,
        "up": r.up, "down": r.down, "detail": format!("{:?}", r.outcome), "unix_ms": unix_ms(),
    }))
}

/// The proxy audit line for a UDP flow that was refused or could not be
/// forwarded (`None` for flows that ended normally).
#[cfg_attr(not(windows), allow(dead_code, reason = "the relays run on Windows only"))]
fn udp_event(r: &FlowReport) -> Option<Value> {
    let relayed = match &r.outcome {
        FlowOutcome::Idle | FlowOutcome::Stopped | FlowOutcome::Evicted => return None,
        FlowOutcome::UpstreamFailed(_) => r.up > 0,
        FlowOutcome::Refused(_) | FlowOutcome::RecordsNotSet(_) => false,
    };
    Some(json!({
        "kind": "proxy", "protocol": "udp", "outcome": r.outcome.name(), "relayed": relayed,
        "client": r.client.to_string(), "original": r.original.map(|a| a.to_string()), "pid": r.pid,
        "up": r.up, "down": r.down, "detail": format!("{:?}", r.outcome), "unix_ms": unix_ms(),
    }))
}

#[cfg_attr(not(windows), allow(dead_code, reason = "the relays run on Windows only"))]
fn unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// Says why the control device could not be opened and what to do.
#[cfg(windows)]
fn no_device_message(e: &std::io::Error) -> String {
    let hint = match e.raw_os_error() {
        // ERROR_FILE_NOT_FOUND, ERROR_PATH_NOT_FOUND
        Some(2 | 3) => "the arbiter driver is not installed or not started (see README, \"Windows\")",
        // ERROR_ACCESS_DENIED
        Some(5) => "run it from an elevated prompt or as the service account",
        _ => "is the arbiter driver installed and started?",
    };
    format!(
        "cannot open the driver's control device {}: {e}; {hint} (exit {EXIT_NO_DEVICE})",
        arbiter::control::DEVICE_PATH
    )
}

/// `install-boot`: reads the blob's `[boot]` section, then installs.
fn install_boot(blob: &std::path::Path) -> ExitCode {
    let config = std::fs::read(blob)
        .map_err(|e| format!("cannot read {}: {e}", blob.display()))
        .and_then(|b| arbiter_proxy::bootset::config_from_blob(&b).map_err(|e| format!("{}: {e}", blob.display())));
    match config {
        Ok(config) => boot_plan(Some(&config)),
        Err(e) => {
            eprintln!("arbiter-proxy: {e}");
            ExitCode::from(EXIT_USAGE)
        }
    }
}

/// Installs `config`'s set (`None`: removes the set) in the local filter engine.
#[cfg(windows)]
fn boot_plan(config: Option<&arbiter::boot::BootConfig>) -> ExitCode {
    use arbiter_proxy::bootset::{self, FwpmSession};
    let mut session = match FwpmSession::open() {
        Ok(s) => s,
        Err(status) => {
            eprintln!(
                "arbiter-proxy: FwpmEngineOpen0 failed with 0x{status:08x} (an elevated prompt is needed, and the \
                 Base Filtering Engine must run)"
            );
            return ExitCode::from(EXIT_RUNTIME);
        }
    };
    let done = match config {
        Some(c) => bootset::install(&mut session, c),
        None => bootset::remove(&mut session),
    };
    match done {
        Ok(d) => {
            println!("boot-time protection: {} objects deleted, {} added", d.deleted, d.added);
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("arbiter-proxy: {}", bootset::describe(&e));
            ExitCode::from(EXIT_RUNTIME)
        }
    }
}

#[cfg(not(windows))]
fn boot_plan(config: Option<&arbiter::boot::BootConfig>) -> ExitCode {
    let what = config.map_or("remove-boot", |_| "install-boot");
    eprintln!("arbiter-proxy: {what} needs the Windows filter engine (exit {EXIT_NO_DEVICE})");
    ExitCode::from(EXIT_NO_DEVICE)
}

#[cfg(not(windows))]
fn run(args: &Args) -> ExitCode {
    let listen: Vec<SocketAddr> = args.v4.map(SocketAddr::V4).into_iter().chain(args.v6.map(SocketAddr::V6)).collect();
    eprintln!(
        "arbiter-proxy: no driver control device here: the proxy needs Windows (WFP redirect records and the \
         arbiter driver); would listen on {listen:?} and audit to {} (the relay and service are tested on this \
         platform with `cargo test -p arbiter-proxy`) (exit {EXIT_NO_DEVICE})",
        args.audit_dir.display()
    );
    ExitCode::from(EXIT_NO_DEVICE)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(list: &[&str]) -> Result<Args, String> {
        match parse_args(list.iter().map(|s| (*s).to_string()))? {
            Command::Run(a) => Ok(a),
            other => Err(format!("{other:?}")),
        }
    }

    #[test]
    fn boot_commands_parse() {
        let cmd = |list: &[&str]| parse_args(list.iter().map(|s| (*s).to_string()));
        assert!(matches!(cmd(&["install-boot", "r.blob"]), Ok(Command::InstallBoot(p)) if p.as_os_str() == "r.blob"));
        assert!(matches!(cmd(&["remove-boot"]), Ok(Command::RemoveBoot)));
        assert!(cmd(&["install-boot"]).is_err());
        assert!(cmd(&["remove-boot", "x"]).is_err());
        assert!(matches!(cmd(&["remove-boot", "--help"]), Ok(Command::Help)));
    }

    #[test]
    fn refusals_are_audited_as_never_relayed_and_completions_are_not() {
        use arbiter_proxy::redirect::QueryError;
        let client: SocketAddr = "127.0.0.1:50000".parse().unwrap();
        let tcp = |outcome| ConnReport {
            client: Some(client),
            original: None,
            pid: None,
            outbound: None,
            up: 0,
            down: 0,
            outcome,
        };
        for (outcome, name) in [
            (TcpOutcome::Refused(QueryError::MissingRecords), "missing-records"),
            (TcpOutcome::Refused(QueryError::MissingContext), "missing-context"),
            (TcpOutcome::RecordsNotSet(std::io::Error::from_raw_os_error(10045)), "records-not-set"),
        ] {
            let v = tcp_event(&tcp(outcome)).unwrap();
            assert_eq!((v["kind"].as_str(), v["protocol"].as_str()), (Some("proxy"), Some("tcp")));
            assert_eq!((v["outcome"].as_str(), &v["relayed"]), (Some(name), &json!(false)), "{v}");
            assert_eq!(v["client"], "127.0.0.1:50000");
        }
        assert!(tcp_event(&tcp(TcpOutcome::Completed)).is_none());
        let udp = |outcome| FlowReport { client, original: None, pid: None, outbound: None, up: 0, down: 0, outcome };
        let v = udp_event(&udp(FlowOutcome::Refused(QueryError::MissingContext))).unwrap();
        assert_eq!(
            (v["protocol"].as_str(), v["outcome"].as_str(), &v["relayed"]),
            (Some("udp"), Some("missing-context"), &json!(false))
        );
        assert!(udp_event(&udp(FlowOutcome::Idle)).is_none());
    }

    #[test]
    fn help_wins_anywhere_and_documents_the_exit_codes() {
        for list in [&["--help"][..], &["-h"], &["--v4", "nonsense", "--help"], &["--frobnicate", "-h"]] {
            assert!(matches!(parse_args(list.iter().map(|s| (*s).to_string())), Ok(Command::Help)), "{list:?}");
        }
        for code in [EXIT_RUNTIME, EXIT_USAGE, EXIT_NO_DEVICE] {
            assert!(HELP.contains(&format!("\n  {code}  ")), "exit code {code} is not in --help");
        }
    }

    #[test]
    fn parses_flags_and_rejects_nonsense() {
        let a = args(&["--v4", "127.0.0.1:9000", "--v6", "none", "--no-udp", "--audit-keep", "3"]).unwrap();
        assert_eq!(a.v4, Some("127.0.0.1:9000".parse().unwrap()));
        assert_eq!((a.v6, a.udp, a.audit_keep), (None, false, 3));
        assert!(args(&["--v4", "none", "--v6", "none"]).is_err());
        assert!(args(&["--v4", "nowhere"]).unwrap_err().contains("not an IPv4"));
        assert!(args(&["--frobnicate"]).unwrap_err().contains("unknown argument"));
        assert!(args(&["--audit-dir"]).unwrap_err().contains("needs a value"));
    }
}
