//! Reading long fixtures: each step's line number used to cost a scan of the
//! whole file (30,000 steps took a minute). `cargo bench -p arbiter-lab
//! --bench fixture` runs `fixture_parse/N` for N steps; the figure should
//! grow about linearly with N.
#![allow(clippy::std_instead_of_core, clippy::alloc_instead_of_core, missing_docs, reason = "host-side benchmark")]

use std::fmt::Write as _;
use std::hint::black_box;
use std::path::Path;

use arbiter_lab::fixture::Fixture;
use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};

fn fixture(steps: usize) -> String {
    let mut s = String::from("name = \"long\"\n[environment]\nown_filter = 100\nproxy_pid = 5151\n");
    for i in 0..steps {
        let _ = write!(
            s,
            "[[step]]\nat_ms = {i}\nlayer = \"connect-redirect\"\nendpoint = {}\nprotocol = \"tcp\"\n\
             local = \"10.0.0.5:50000\"\nremote = \"93.184.216.34:443\"\npid = 4242\n\
             app = '\\device\\harddiskvolume3\\apps\\browser.exe'\n[step.expect]\nverdict = \"continue\"\n",
            i + 1
        );
    }
    s
}

fn parse(c: &mut Criterion) {
    let mut g = c.benchmark_group("fixture_parse");
    g.sample_size(10);
    for n in [1_000, 10_000, 30_000] {
        let text = fixture(n);
        g.bench_with_input(BenchmarkId::from_parameter(n), &text, |b, t| {
            b.iter(|| black_box(Fixture::parse(t, Path::new("long.toml")).map(|f| f.steps.len())));
        });
    }
    g.finish();
}

criterion_group!(benches, parse);
criterion_main!(benches);
