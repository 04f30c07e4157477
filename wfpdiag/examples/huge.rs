//! Writes a synthetic wfpdiag.xml of N MB (default 100) to PATH, for measuring
//! `arbiter wfpdiag`'s peak memory: `cargo run --release -p arbiter-wfpdiag
//! --example huge -- /tmp/huge.xml 100 && /usr/bin/time -v target/release/arbiter wfpdiag /tmp/huge.xml`.

#![allow(clippy::unwrap_used, clippy::print_stdout, reason = "a tool")]

use std::io::BufWriter;

#[path = "../benches/support/synth.rs"]
mod synth;

fn main() {
    let mut args = std::env::args().skip(1);
    let path = args.next().unwrap_or_else(|| "huge.xml".to_owned());
    let mb: u64 = args.next().and_then(|s| s.parse().ok()).unwrap_or(100);
    let out = &mut BufWriter::new(std::fs::File::create(&path).unwrap());
    let n = synth::write_wfpdiag(out, mb * 1_000_000).unwrap();
    println!("wrote {path}: {n} bytes");
}
