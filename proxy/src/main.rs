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
}

const USAGE: &str = "usage: arbiter-proxy [--v4 ADDR|none] [--v6 ADDR|none] [--no-udp] \
[--audit-dir DIR] [--audit-max-bytes N] [--audit-keep N] [--poll-ms N]";

fn parse_args(mut it: impl Iterator<Item = String>) -> Result<Args, String> {
    let mut a = Args {
        v4: Some(SocketAddrV4::new([127, 0, 0, 1].into(), 34010)),
        v6: Some(SocketAddrV6::new(std::net::Ipv6Addr::LOCALHOST, 34010, 0, 0)),
        udp: true,
        audit_dir: default_audit_dir(),
        audit_max_bytes: 16 << 20,
        audit_keep: 8,
        poll: Duration::from_millis(500),
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
            "-h" | "--help" => return Err(USAGE.to_string()),
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
    let args = match parse_args(std::env::args().skip(1)) {
        Ok(a) => a,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::from(2);
        }
    };
    run(&args)
}

#[cfg(windows)]
fn run(args: &Args) -> ExitCode {
    use std::net::{TcpListener, UdpSocket};
    use std::sync::Arc;
    use std::sync::atomic::AtomicBool;

    use arbiter_proxy::auditlog::AuditLog;
    use arbiter_proxy::service::{self, Service, ServiceConfig};
    use arbiter_proxy::tcp::{RelayOptions, TcpRelay};
    use arbiter_proxy::udp::{UdpOptions, UdpRelay};
    use arbiter_proxy::windows::{DeviceChannel, WfpProvider};

    // The audit log is for SYSTEM and administrators only: refuse to run as
    // anyone else, and give the folder that DACL before anything is written.
    match arbiter_proxy::acl::running_identity().map(arbiter_proxy::acl::may_write_audit) {
        Ok(Ok(())) => {}
        Ok(Err(why)) => {
            eprintln!("{why}");
            return ExitCode::FAILURE;
        }
        Err(e) => {
            eprintln!("cannot tell who this process runs as: {e}");
            return ExitCode::FAILURE;
        }
    }
    if let Err(e) =
        std::fs::create_dir_all(&args.audit_dir).and_then(|()| arbiter_proxy::acl::secure_audit_dir(&args.audit_dir))
    {
        eprintln!("cannot restrict the audit folder {} to SYSTEM and administrators: {e}", args.audit_dir.display());
        return ExitCode::FAILURE;
    }
    let provider = Arc::new(WfpProvider::new());
    let tcp_report: arbiter_proxy::tcp::Reporter = Arc::new(|r| {
        if !matches!(r.outcome, arbiter_proxy::tcp::Outcome::Completed) {
            eprintln!("tcp {:?} -> {:?} (pid {:?}): {} {:?}", r.client, r.original, r.pid, r.outcome.name(), r.outcome);
        }
    });
    let udp_report: arbiter_proxy::udp::FlowReporter = Arc::new(|r| {
        if !matches!(r.outcome, arbiter_proxy::udp::FlowOutcome::Idle | arbiter_proxy::udp::FlowOutcome::Stopped) {
            eprintln!("udp {} -> {:?} (pid {:?}): {} {:?}", r.client, r.original, r.pid, r.outcome.name(), r.outcome);
        }
    });
    let listen: Vec<SocketAddr> = args.v4.map(SocketAddr::V4).into_iter().chain(args.v6.map(SocketAddr::V6)).collect();
    let mut relays = Vec::new();
    let mut udp_relays = Vec::new();
    for addr in &listen {
        let started = TcpListener::bind(addr)
            .and_then(|l| TcpRelay::start(l, Arc::clone(&provider), RelayOptions::default(), Arc::clone(&tcp_report)));
        match started {
            Ok(r) => relays.push(r),
            Err(e) => {
                eprintln!("cannot listen on tcp {addr}: {e}");
                return ExitCode::FAILURE;
            }
        }
        if args.udp {
            let started = UdpSocket::bind(addr).and_then(|s| {
                UdpRelay::start(s, Arc::clone(&provider), UdpOptions::default(), Arc::clone(&udp_report))
            });
            match started {
                Ok(r) => udp_relays.push(r),
                Err(e) => {
                    eprintln!("cannot listen on udp {addr}: {e}");
                    return ExitCode::FAILURE;
                }
            }
        }
    }
    let log = match AuditLog::open(&args.audit_dir, args.audit_max_bytes, args.audit_keep) {
        Ok(l) => l,
        Err(e) => {
            eprintln!("cannot open the audit file in {}: {e}", args.audit_dir.display());
            return ExitCode::FAILURE;
        }
    };
    let config = ServiceConfig {
        registration: service::registration(args.v4, args.v6),
        drain_max_bytes: 0,
        cursor_file: Some(args.audit_dir.join("audit.cursor")),
    };
    let mut svc = Service::new(DeviceChannel::open, config, log);
    let stop = AtomicBool::new(false);
    svc.run(args.poll, &stop, |e| eprintln!("control: {e}"));
    ExitCode::SUCCESS
}

#[cfg(not(windows))]
fn run(args: &Args) -> ExitCode {
    let listen: Vec<SocketAddr> = args.v4.map(SocketAddr::V4).into_iter().chain(args.v6.map(SocketAddr::V6)).collect();
    eprintln!(
        "arbiter-proxy needs Windows (WFP redirect records and the arbiter driver); \
         would listen on {listen:?} and audit to {} (the relay and service are tested on this platform with `cargo test -p arbiter-proxy`)",
        args.audit_dir.display()
    );
    ExitCode::from(2)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(list: &[&str]) -> Result<Args, String> {
        parse_args(list.iter().map(|s| (*s).to_string()))
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
