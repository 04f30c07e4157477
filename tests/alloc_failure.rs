//! Fault injection: an allocator that fails the n-th allocation. Building an
//! arbiter must fail cleanly at every reservation, never panic or abort.
#![allow(clippy::std_instead_of_core, clippy::alloc_instead_of_core, reason = "host-side test")]

mod common;

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;

use arbiter::{Arbiter, Capacities, Config, OutOfMemory};
use common::*;

struct Failing;

thread_local! {
    /// Allocations left before the next one fails; `None` disables failure.
    static BUDGET: Cell<Option<u32>> = const { Cell::new(None) };
}

fn should_fail() -> bool {
    BUDGET.with(|b| match b.get() {
        Some(0) => true,
        Some(n) => {
            b.set(Some(n - 1));
            false
        }
        None => false,
    })
}

// SAFETY: forwards to the system allocator, or reports failure with null,
// which the GlobalAlloc contract allows.
unsafe impl GlobalAlloc for Failing {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if should_fail() {
            return std::ptr::null_mut();
        }
        // SAFETY: same contract as ours.
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: same contract as ours.
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static ALLOC: Failing = Failing;

#[test]
fn every_reservation_failure_is_a_clean_error() {
    let config = Config { own_filter: OWN_FILTER, ..Config::default() };
    let caps = Capacities { endpoints: 1000, destinations: 100, known_proxies: 10 };
    let mut failures = 0;
    for budget in 0..64 {
        let rules = web_rules();
        BUDGET.with(|b| b.set(Some(budget)));
        let built = Arbiter::new(config, caps, rules);
        BUDGET.with(|b| b.set(None));
        match built {
            Err(OutOfMemory) => failures += 1,
            Ok(mut a) => {
                // Enough budget: it works normally afterwards.
                a.set_proxy(PROXY_PID, Some("127.0.0.1:34010".parse().unwrap()), None).unwrap();
                let s = Sock::tcp(1, "93.184.216.34:443");
                let d = a.decide_connect_redirect(&s.connect(arbiter::RedirectState::NotRedirected), ms(0));
                assert_eq!(d.verdict, arbiter::Verdict::Proxy);
                assert!(failures >= 1, "reservations happened and were failed first");
                return;
            }
        }
    }
    panic!("arbiter never built within the budget");
}

#[test]
#[cfg_attr(miri, ignore = "Miri's allocator tries to honour the huge reservation")]
fn impossible_capacity_is_an_error() {
    let config = Config::default();
    let caps = Capacities { endpoints: u32::MAX, destinations: u32::MAX, known_proxies: u32::MAX };
    assert!(Arbiter::new(config, caps, arbiter::RuleSet::default()).is_err());
}
