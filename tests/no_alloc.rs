//! Invariant 4: once the tables are reserved, the decision path does not
//! allocate. A counting global allocator counts this thread's allocations
//! while a flag is up.
#![allow(clippy::std_instead_of_core, clippy::alloc_instead_of_core, reason = "host-side test")]

mod common;

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;

use arbiter::flow::RedirectState;
use arbiter::{Arbiter, Capacities, Config};
use common::*;

struct Counting;

thread_local! {
    static COUNTING: Cell<bool> = const { Cell::new(false) };
    static COUNT: Cell<u64> = const { Cell::new(0) };
}

// SAFETY: forwards every call to the system allocator unchanged; only counts.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if COUNTING.with(Cell::get) {
            COUNT.with(|c| c.set(c.get() + 1));
        }
        // SAFETY: same contract as ours.
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: same contract as ours.
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        if COUNTING.with(Cell::get) {
            COUNT.with(|c| c.set(c.get() + 1));
        }
        // SAFETY: same contract as ours.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static ALLOC: Counting = Counting;

fn counted<R>(f: impl FnOnce() -> R) -> (R, u64) {
    COUNT.with(|c| c.set(0));
    COUNTING.with(|c| c.set(true));
    let r = f();
    COUNTING.with(|c| c.set(false));
    (r, COUNT.with(Cell::get))
}

#[test]
#[cfg_attr(miri, ignore = "a long run; Miri checks the same code in the other tests")]
fn decision_path_does_not_allocate() {
    let config = Config { own_filter: OWN_FILTER, ..Config::default() };
    let caps = Capacities { endpoints: 4096, destinations: 512, known_proxies: 64 };
    let mut a = Arbiter::new(config, caps, web_rules()).unwrap();
    a.set_proxy(PROXY_PID, Some("127.0.0.1:34010".parse().unwrap()), None).unwrap();

    // Inputs are built outside the counted region (the harness owns the strings).
    let remotes = ["93.184.216.34:443", "93.184.216.34:23", "10.1.1.1:80", "93.184.216.35:22"];
    let socks: Vec<Sock> = (0..20_000u64)
        .map(|i| {
            let s = Sock::tcp(i, remotes[(i % 4) as usize]);
            if i % 7 == 0 { s.by_process(900, VENDOR_C) } else { s }
        })
        .collect();

    let (decisions, allocs) = counted(|| {
        let mut n = 0u64;
        // 20,000 endpoints through a 4,096-entry table: inserts, evictions,
        // hop counting, loop suspicion, auth-connect consumption, A6 learning.
        for (i, s) in socks.iter().enumerate() {
            let now = ms(i as u64);
            let d = a.decide_connect_redirect(&s.connect(RedirectState::NotRedirected), now);
            n += 1 + d.departures.len() as u64;
            if i % 3 == 0 {
                let d = a.decide_auth_connect(&s.auth_after_proxy(), now);
                n += 1 + d.departures.len() as u64;
            }
            if i % 11 == 0 {
                let d = a.decide_auth_connect(&s.auth(true, Some(10_000 + i as u64), None), now);
                n += 1 + d.departures.len() as u64;
            }
            if i % 1000 == 0 {
                a.expire(now, |_| {});
            }
        }
        n
    });
    assert!(decisions > 20_000);
    assert!(a.counters().evicted[0] > 0, "the run must exercise eviction");
    assert_eq!(allocs, 0, "allocations on the decision path");
}

#[test]
fn the_counter_counts() {
    let (_, allocs) = counted(|| Box::new(7u64));
    assert_eq!(allocs, 1);
}

#[test]
#[cfg_attr(miri, ignore = "a long run; Miri checks the same code in the other tests")]
fn churned_index_never_allocates() {
    use arbiter::table::BoundedTable;
    // A small, nearly full table churned hard: the index is fixed-size and
    // closes every removal's gap in place, so nothing grows.
    let mut t: BoundedTable<u64, u64> = BoundedTable::new(28, ahash::RandomState::with_seeds(1, 2, 3, 4)).unwrap();
    let (_, allocs) = counted(|| {
        for k in 0..200_000u64 {
            t.insert(k, k, arbiter::Instant::from_millis(k + 100), arbiter::Instant::from_millis(k));
            if k % 2 == 0 {
                t.remove(&(k.saturating_sub(7)), arbiter::Instant::from_millis(k));
            }
        }
    });
    assert_eq!(allocs, 0, "allocations while churning");
    assert_eq!(t.len(), 28);
    for (k, v, _) in t.iter() {
        assert_eq!(t.get(k, arbiter::Instant::from_millis(199_999)), Some(v));
    }
}
