//! The classify path's worst case for app-id globs (issue 12): the longest
//! legal pattern against the longest app id WFP can hand us (32,767 UTF-16
//! units), for several adversarial shapes of pattern and id.
//!
//! `cargo bench --bench classify_worst` prints, per shape, the median time of
//! one `first_match` (the rule lookup C8..C14 make) and one `is_trusted`
//! over batches, and the worst of them. Inputs are built before timing.
#![allow(clippy::std_instead_of_core, clippy::alloc_instead_of_core, missing_docs, reason = "host-side benchmark")]

use std::hint::black_box;
use std::time::Instant as Clock;

use arbiter::compiled::CompiledRules;
use arbiter::flow::{Flow, Protocol};
use arbiter::policy::{Action, Glob, Policy, Rule, RuleSet};
use arbiter::validate::{MAX_GLOB_MIDDLE, MAX_GLOB_STARS, MAX_GLOB_UNITS, check_glob};
use arbiter::wide::WideString;

/// The longest app id: UNICODE_STRING lengths are u16 byte counts.
const ID_UNITS: usize = 32_767;
const BATCH: usize = 16;
const BATCHES: usize = 200;

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// `s` repeated and cut to exactly `n` characters.
fn fill(s: &str, n: usize) -> String {
    s.chars().cycle().take(n).collect()
}

/// A literal head and tail that fill a pattern with a `middle` of wildcards
/// up to the longest legal length, and an id that starts and ends with them.
fn framed(middle: &str, body: &str) -> (String, String) {
    let room = MAX_GLOB_UNITS - middle.chars().count();
    let head = format!("\\device\\{}", fill("h", room / 2 - 8));
    let tail = fill("t", room - head.chars().count());
    let id = format!("{head}{}{tail}", fill(body, ID_UNITS - room));
    (format!("{head}{middle}{tail}"), id)
}

/// (name, pattern, id): each a legal pattern as long as the validator allows
/// in its shape, against an id chosen to make it work hardest.
fn shapes() -> Vec<(&'static str, String, String)> {
    let mut v = Vec::new();
    // The longest middle segment that almost matches everywhere.
    let seg = format!("*{}b*", "a".repeat(MAX_GLOB_MIDDLE - 1));
    let (p, id) = framed(&seg, "a");
    v.push(("head+tail match, segment of a's missing", p, id));
    // Question marks that fit everywhere, then a miss.
    let q = format!("*{}b*", "?".repeat(MAX_GLOB_MIDDLE - 1));
    let (p, id) = framed(&q, "a");
    v.push(("head+tail match, ?-segment missing", p, id));
    // Every star used, the last segment never found.
    let mut m = String::from("*");
    for _ in 0..MAX_GLOB_STARS - 1 {
        m.push_str("a*");
    }
    m.insert_str(m.len() - 1, &format!("{}b", "a".repeat(MAX_GLOB_MIDDLE - MAX_GLOB_STARS)));
    let (p, id) = framed(&m, "a");
    v.push(("head+tail match, every star, missing", p, id));
    // Only a component anchor: the whole id is walked, then matched.
    let comp = format!("*\\dev\\*{}b*", "a".repeat(MAX_GLOB_MIDDLE - 6));
    v.push(("component anchor, rest missing", comp, format!("\\dev\\{}", fill("a", ID_UNITS - 5))));
    // The same component repeated all along the id.
    let rep = format!("*\\dev\\*{}x*", "\\dev".repeat((MAX_GLOB_MIDDLE - 6) / 4));
    v.push(("repeated component", rep, fill("\\dev", ID_UNITS)));
    // Non-ASCII ids: every unit takes the matcher's non-ASCII path, against
    // an ASCII middle and against a middle of non-ASCII letters (whose
    // units are case-folded one by one).
    let (p, id) = framed(&seg, "é");
    v.push(("non-ASCII id, ASCII segment", p, id));
    let wide = format!("*{}ß*", "É".repeat(MAX_GLOB_MIDDLE - 1));
    let (p, id) = framed(&wide, "é");
    v.push(("non-ASCII id and segment", p, id));
    // Units spread over every cache line of the class map, so that its
    // reads miss the first-level cache.
    let spread: String =
        (0..ID_UNITS).map(|i| char::from_u32(0x0100 + ((i * 64) % 0xd700) as u32).unwrap_or('x')).collect::<String>();
    let (p, id) = framed(&wide, &spread);
    v.push(("units across the whole class map", p, id));
    for (name, p, id) in &v {
        let units: Vec<u16> = p.encode_utf16().collect();
        assert_eq!(check_glob(&units), Ok(()), "{name}: not a legal pattern");
        assert_eq!(id.encode_utf16().count(), ID_UNITS, "{name}");
    }
    v
}

fn time(mut f: impl FnMut()) -> f64 {
    let mut samples = Vec::with_capacity(BATCHES);
    let budget = Clock::now();
    // At most BATCHES batches, and no more than about two seconds per shape.
    while samples.len() < BATCHES && (samples.len() < 5 || budget.elapsed().as_secs_f64() < 2.0) {
        let start = Clock::now();
        for _ in 0..BATCH {
            f();
        }
        samples.push(start.elapsed().as_nanos() as f64 / BATCH as f64);
    }
    median(samples)
}

/// One call of each, for instruction counts under callgrind:
/// `ARBITER_WORST_ONCE=1 valgrind --tool=callgrind --toggle-collect='*first_match*' --toggle-collect='*is_trusted*' target/release/deps/classify_worst-*`.
fn once() -> bool {
    std::env::var_os("ARBITER_WORST_ONCE").is_some()
}

fn main() {
    let mut worst = (0.0f64, "");
    println!("{:<40} {:>14} {:>14}", "shape (pattern vs 32,767-unit id)", "first_match µs", "is_trusted µs");
    let only: Option<usize> = std::env::var("ARBITER_WORST_SHAPE").ok().and_then(|v| v.parse().ok());
    for (i, (name, pattern, id)) in shapes().into_iter().enumerate() {
        if only.is_some_and(|o| o != i) {
            continue;
        }
        let glob = Glob::new(&pattern).unwrap();
        let mut rule = Rule::any("r", Action::Proxy);
        rule.app = vec![glob.clone()];
        let rs = RuleSet { rules: vec![rule], trust: vec![glob], ..RuleSet::default() };
        let compiled = CompiledRules::compile(&rs).unwrap();
        let app = WideString::new(&id);
        let flow = Flow {
            protocol: Protocol::TCP,
            local: "10.0.0.5:50000".parse().unwrap(),
            remote: "93.184.216.34:443".parse().unwrap(),
            endpoint: 1,
            pid: 4242,
            app: app.app_id(),
            original_app: app.app_id(),
            package: None,
        };
        if once() {
            black_box(compiled.first_match(black_box(&flow)));
            black_box(compiled.is_trusted(black_box(&flow.app)));
            continue;
        }
        // The compiled matcher must agree with the reference scan.
        assert_eq!(compiled.first_match(&flow), rs.first_match(&flow), "{name}");
        let m = time(|| {
            black_box(compiled.first_match(black_box(&flow)));
        }) / 1000.0;
        let t = time(|| {
            black_box(compiled.is_trusted(black_box(&flow.app)));
        }) / 1000.0;
        println!("{name:<40} {m:>14.2} {t:>14.2}");
        for x in [m, t] {
            if x > worst.0 {
                worst = (x, name);
            }
        }
    }
    println!("worst: {:.2} µs ({})", worst.0, worst.1);
}
