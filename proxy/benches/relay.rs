//! Relay throughput over loopback, beside a direct loopback copy, in one run.
//!
//! Prints MB/s for one bulk transfer and connections/s for short
//! request/response connections, each direct (client to server) and through
//! the relay (client to relay to server, with the redirect query, the records
//! set on the outbound socket and the context decode on every connection).
//! `cargo bench -p arbiter-proxy --bench relay`; a few seconds.

#![allow(clippy::std_instead_of_core, clippy::alloc_instead_of_core, reason = "std bench: host tool")]
#![allow(clippy::print_stdout, clippy::unwrap_used, reason = "a benchmark reports on stdout and fails loudly")]

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use arbiter::context::RedirectContext;
use arbiter_proxy::redirect::{LoopbackProvider, RawRedirect};
use arbiter_proxy::tcp::{RelayOptions, TcpRelay};
use socket2::{Domain, Socket, Type};

const BULK: usize = 512 << 20;
const CONNS: usize = 2000;

/// A sink that reads to EOF and answers with one byte, forever.
fn sink() -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    thread::spawn(move || {
        for s in l.incoming() {
            let Ok(mut s) = s else { continue };
            thread::spawn(move || {
                let mut buf = vec![0u8; 256 * 1024];
                while let Ok(n) = s.read(&mut buf) {
                    if n == 0 {
                        break;
                    }
                }
                let _ = s.write_all(b"k");
            });
        }
    });
    addr
}

/// Connects to `to`, as the application `provider` announces (if any).
fn connect(to: SocketAddr, announce: Option<(&LoopbackProvider, SocketAddr)>) -> TcpStream {
    let s = Socket::new(Domain::IPV4, Type::STREAM, None).unwrap();
    s.bind(&"127.0.0.1:0".parse::<SocketAddr>().unwrap().into()).unwrap();
    if let Some((p, dst)) = announce {
        let app = s.local_addr().unwrap().as_socket().unwrap();
        let context = RedirectContext { original_remote: dst, original_local: app, pid: 1 }.encode().to_vec();
        p.announce(app, RawRedirect { records: Some(vec![0xAB; 48]), context: Some(context) });
    }
    s.connect(&to.into()).unwrap();
    s.set_tcp_nodelay(true).unwrap();
    s.into()
}

fn finish(mut s: TcpStream) {
    s.shutdown(Shutdown::Write).unwrap();
    let mut k = [0u8; 1];
    s.read_exact(&mut k).unwrap();
}

fn bulk(to: SocketAddr, announce: Option<(&LoopbackProvider, SocketAddr)>) -> f64 {
    let mut s = connect(to, announce);
    let chunk = vec![0x5Au8; 256 * 1024];
    let start = Instant::now();
    for _ in 0..BULK / chunk.len() {
        s.write_all(&chunk).unwrap();
    }
    finish(s);
    BULK as f64 / 1e6 / start.elapsed().as_secs_f64()
}

fn conns(to: SocketAddr, announce: Option<(&LoopbackProvider, SocketAddr)>) -> f64 {
    let start = Instant::now();
    for _ in 0..CONNS {
        let mut s = connect(to, announce);
        s.write_all(b"GET / HTTP/1.0\r\n\r\n").unwrap();
        finish(s);
    }
    CONNS as f64 / start.elapsed().as_secs_f64()
}

fn main() {
    // `cargo test --all-targets` builds benches and may run them with --bench absent; keep that cheap.
    if !std::env::args().any(|a| a == "--bench") {
        println!("relay bench: run with `cargo bench -p arbiter-proxy --bench relay`");
        return;
    }
    let dst = sink();
    let provider = LoopbackProvider::new();
    let relay = TcpRelay::start(
        TcpListener::bind("127.0.0.1:0").unwrap(),
        Arc::new(provider.clone()),
        RelayOptions::default(),
        Arc::new(|_| {}),
    )
    .unwrap();
    let via = Some((&provider, dst));
    // Warm up both paths once.
    let _ = conns(dst, None);
    let _ = conns(relay.local_addr(), via);
    thread::sleep(Duration::from_millis(100));

    let direct_mb = bulk(dst, None);
    let relay_mb = bulk(relay.local_addr(), via);
    let direct_cps = conns(dst, None);
    let relay_cps = conns(relay.local_addr(), via);
    println!("loopback, {} MiB bulk, {CONNS} short connections", BULK >> 20);
    println!("{:<10} {:>12} {:>14}", "path", "MB/s", "connections/s");
    println!("{:<10} {:>12.0} {:>14.0}", "direct", direct_mb, direct_cps);
    println!("{:<10} {:>12.0} {:>14.0}", "relay", relay_mb, relay_cps);
    println!("relay/direct: throughput {:.2}, connection rate {:.2}", relay_mb / direct_mb, relay_cps / direct_cps);
}
