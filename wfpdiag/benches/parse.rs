//! Parse throughput and peak memory on a generated 100 MB wfpdiag.xml.
//!
//! `cargo bench -p arbiter-wfpdiag` writes the file to a temporary folder,
//! reads it with [`Machine::read_file`] three times, and prints MB/s and the
//! process's peak resident memory (VmHWM) after generating and after parsing.

#![allow(clippy::unwrap_used, clippy::print_stdout, reason = "a bench")]

use std::io::BufWriter;
use std::time::Instant;

use arbiter_wfpdiag::Machine;

#[path = "support/synth.rs"]
mod synth;

fn peak_rss_kib() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// This process's user + system CPU seconds (/proc/self/stat, 100 ticks per second).
fn cpu_seconds() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    let after = stat.rsplit_once(')').map_or("", |(_, rest)| rest);
    let fields: Vec<&str> = after.split_whitespace().collect();
    let ticks = |i: usize| fields.get(i).and_then(|f| f.parse::<f64>().ok()).unwrap_or(0.0);
    // utime and stime are fields 14 and 15 of stat(5), i.e. 11 and 12 after the command name.
    (ticks(11) + ticks(12)) / 100.0
}

fn main() {
    let mb: u64 = std::env::var("WFPDIAG_BENCH_MB").ok().and_then(|s| s.parse().ok()).unwrap_or(100);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("wfpdiag.xml");
    let bytes =
        synth::write_wfpdiag(&mut BufWriter::new(std::fs::File::create(&path).unwrap()), mb * 1_000_000).unwrap();
    let before = peak_rss_kib();
    let mut best = f64::MAX;
    let mut best_cpu = f64::MAX;
    let mut m = Machine::default();
    for _ in 0..3 {
        m = Machine::default();
        let (t, c) = (Instant::now(), cpu_seconds());
        m.read_file(&path).unwrap();
        best = best.min(t.elapsed().as_secs_f64());
        best_cpu = best_cpu.min(cpu_seconds() - c);
    }
    #[expect(clippy::cast_precision_loss, reason = "a rate for humans")]
    let rate = bytes as f64 / 1e6 / best;
    println!(
        "wfpdiag parse: {:.1} MB in {best:.3} s = {rate:.0} MB/s; {} filters indexed, {} drops kept, {} not kept",
        bytes as f64 / 1e6,
        m.index.len(),
        m.events.len(),
        m.events_not_kept
    );
    #[expect(clippy::cast_precision_loss, reason = "a rate for humans")]
    let cpu_rate = bytes as f64 / 1e6 / best_cpu.max(0.01);
    println!("CPU time: {best_cpu:.2} s = {cpu_rate:.0} MB per CPU-second (wall time counts other processes' load)");
    println!("peak RSS: {:?} KiB after generating, {:?} KiB after parsing", before, peak_rss_kib());
}
