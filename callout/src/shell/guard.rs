//! The boot guard's half of [`Lifecycle`] (issue 14, `[boot] mode =
//! "block"`): the override filter ([`crate::boot::override_filter`]) added
//! in our dynamic session once our filters are in and a proxy is registered,
//! deleted by id when the proxy is lost, gone with the session when the BFE
//! stops; each change audited (record kind 7).
//!
//! Sources (learn.microsoft.com): FwpmFilterAdd0 and FwpmFilterDeleteById0
//! (PASSIVE_LEVEL; the driver's session is dynamic, FWPM_SESSION0: "any
//! objects added during the session are automatically deleted when the
//! session ends"), Filter Arbitration (the override is a soft permit at a
//! higher weight than the boot set's block, in the same sublayer).

use core::sync::atomic::Ordering;

use arbiter::audit::{GuardChange, GuardRecord};
use arbiter::boot::BootMode;

use super::{ADDED, GUARDING, Kernel, Lifecycle};
use crate::boot::override_filter;
use crate::filters::FilterLayer;

impl Lifecycle {
    /// The override filters' run-time ids (V4, V6; 0 where not added).
    pub fn override_ids(&self) -> [u64; 2] {
        [self.overrides[0].load(Ordering::Acquire), self.overrides[1].load(Ordering::Acquire)]
    }

    /// Override adds and deletes that failed (`FwpmFilterAdd0`, e.g. block
    /// mode in the rules but the boot set not installed, so there is no
    /// sublayer; `FwpmFilterDeleteById0`, retried on the next pass).
    pub fn override_failures(&self) -> u64 {
        self.override_failures.load(Ordering::Relaxed)
    }

    /// The boot guard: brings the override and the audit trail in line with
    /// what is true now (filters in, proxy registered, mode). Call at
    /// PASSIVE_LEVEL with no lock held, after the filters are added, after
    /// every control request and handle cleanup, and after the BFE stops.
    /// Callers that arrive while another runs leave a request that the
    /// running one serves, so the engine is used by one thread at a time.
    pub fn sync_guard<K: Kernel>(&self, kernel: &mut K) {
        if self.guard_requests.fetch_add(1, Ordering::AcqRel) != 0 {
            return;
        }
        loop {
            let seen = self.guard_requests.load(Ordering::Acquire);
            self.guard_pass(kernel);
            if self.guard_requests.fetch_sub(seen, Ordering::AcqRel) == seen {
                return;
            }
        }
    }

    fn guard_pass<K: Kernel>(&self, kernel: &mut K) {
        let claimed = self.filters.compare_exchange(ADDED, GUARDING, Ordering::AcqRel, Ordering::Acquire).is_ok();
        let (mode, proxy) = kernel.boot_state();
        let want = if claimed { proxy.filter(|&p| p != 0) } else { None };
        let had = Some(self.lifted_for.load(Ordering::Acquire)).filter(|&p| p != 0);
        let engine = self.engine.load(Ordering::Acquire);
        if !claimed {
            // No engine of ours (never added, or closed with the BFE): the
            // overrides went with the dynamic session.
            for id in &self.overrides {
                id.store(0, Ordering::Release);
            }
        }
        let want_override = want.is_some() && mode == BootMode::Block;
        for (slot, layer) in self.overrides.iter().zip([FilterLayer::AuthConnectV4, FilterLayer::AuthConnectV6]) {
            let id = slot.load(Ordering::Acquire);
            if claimed && id != 0 && !want_override {
                // Gone already (the set was removed) counts as deleted
                // (`Kernel::delete_filter`). Any other failure (the
                // engine's transaction lock not acquired in time, no
                // memory) keeps the id: the override still lifts the set,
                // and the next pass (the next control request, handle
                // cleanup or BFE change) deletes it again.
                if kernel.delete_filter(engine, id).is_ok() {
                    slot.store(0, Ordering::Release);
                } else {
                    self.override_failures.fetch_add(1, Ordering::Relaxed);
                }
            } else if claimed && id == 0 && want_override {
                match kernel.add_override(engine, &override_filter(layer)) {
                    Ok(id) => slot.store(id, Ordering::Release),
                    Err(_) => {
                        self.override_failures.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
        }
        if had != want {
            if let Some(pid) = had {
                let change = if proxy == had { GuardChange::FiltersGone } else { GuardChange::ProxyLost };
                kernel.audit_guard(GuardRecord { mode, change, proxy_pid: pid });
            }
            if let Some(pid) = want {
                kernel.audit_guard(GuardRecord { mode, change: GuardChange::Ready, proxy_pid: pid });
            }
            self.lifted_for.store(want.unwrap_or(0), Ordering::Release);
        }
        if claimed && self.filters.compare_exchange(GUARDING, ADDED, Ordering::AcqRel, Ordering::Acquire).is_err() {
            // The BFE is stopping (CLOSE_WHEN_GUARDED): close for it.
            self.close(kernel);
        }
    }
}
