//! Loading cost where it used to be quadratic: the shadowing check over
//! many rules, and many diagnostics in one file (each used to rescan the
//! file for its line and copy it for its snippet).
//!
//! `cargo bench -p arbiter-ruleset --bench diagnostics` runs
//! `load/distinct/N` (N rules, each its own /32 and port: the shadowing check
//! compares each with the earlier rules that could cover it) and
//! `load/duplicate_names/N` (N rules with one name: N - 1 errors, rendered
//! with their snippets). Each figure should grow about linearly with N.
#![allow(clippy::std_instead_of_core, clippy::alloc_instead_of_core, missing_docs, reason = "host-side benchmark")]

use std::fmt::Write as _;
use std::hint::black_box;

use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};

fn rules(n: usize, same_name: bool) -> String {
    let mut s = String::from("version = 1\n[proxy]\nv4 = \"127.0.0.1:34010\"\nv6 = \"[::1]:34010\"\n");
    for i in 0..n {
        let name = if same_name { "same".to_owned() } else { format!("r{i}") };
        let _ = write!(
            s,
            "[[rule]]\nname = \"{name}\"\naction = \"proxy\"\nprotocol = \"tcp\"\nremote = [\"10.{}.{}.{}/32\"]\nremote_ports = [\"{}\"]\n",
            (i >> 16) & 255,
            (i >> 8) & 255,
            i & 255,
            1 + i % 60_000
        );
    }
    s
}

fn load(c: &mut Criterion) {
    let mut g = c.benchmark_group("load");
    g.sample_size(10);
    for n in [1_000, 10_000, 100_000] {
        let text = rules(n, false);
        g.bench_with_input(BenchmarkId::new("distinct", n), &text, |b, t| {
            b.iter(|| black_box(arbiter_ruleset::parse_str(t, "bench.toml").map(|l| l.rules.rules.len())));
        });
    }
    for n in [1_000, 4_000, 12_000] {
        let text = rules(n, true);
        g.bench_with_input(BenchmarkId::new("duplicate_names", n), &text, |b, t| {
            b.iter(|| black_box(arbiter_ruleset::parse_str(t, "bench.toml").err().map(|r| r.to_string().len())));
        });
    }
    g.finish();
}

criterion_group!(benches, load);
criterion_main!(benches);
