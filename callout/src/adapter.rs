//! The classify entry points and the state behind them.
//!
//! One [`Callout`] per driver, behind the driver's lock: the core, the audit
//! ring, our single redirect handle, our filter ids, the pend queue, and the
//! adapter's own counters. Each entry point reads the indication, asks the
//! core, audits, and writes the verdict back (`decision-table.md`,
//! "Verdicts"):
//!
//! | verdict | classifyOut | layer data (connect-redirect) |
//! |---|---|---|
//! | continue | `FWP_ACTION_CONTINUE` (only with the write right) | applied unchanged, flags 0 |
//! | permit | `FWP_ACTION_PERMIT`, write right kept (soft) | applied unchanged, REAUTHORIZE_IF_MODIFIED_BY_OTHERS |
//! | block | `FWP_ACTION_BLOCK`, write right cleared (hard) | applied unchanged, flags 0 |
//! | proxy | `FWP_ACTION_PERMIT`, write right kept | remote, target PID, our handle, pool context; REAUTHORIZE_IF_MODIFIED_BY_OTHERS |
//!
//! Without the write right only a block may be written (a veto); other
//! verdicts leave `classifyOut` as the engine gave it. A filter carrying
//! `FWPS_FILTER_FLAG_CLEAR_ACTION_RIGHT` gets its permits hard, as
//! FWPS_CALLOUT_CLASSIFY_FN3's page requires.
//!
//! An indication that cannot be read is left alone (nothing written) and
//! counted; so is one whose layer data cannot be acquired, because without
//! the previousVersion chain rows C5/C6 cannot be ruled out.

use core::ffi::c_void;
use core::ptr::NonNull;

use arbiter::audit::ring::AuditRing;
use arbiter::context::CONTEXT_LEN;
use arbiter::flow::{AuthConnectInput, ConnectRedirectInput, ConnectRedirectRef, Flow, PreviousChain, RedirectState};
use arbiter::{Action, Arbiter, Instant, OutOfMemory, Outcome, Policy, Reason, Verdict};
use wfp_ffi::{
    FWP_ACTION_BLOCK, FWP_ACTION_CONTINUE, FWP_ACTION_PERMIT, FWP_CONDITION_FLAG_IS_CONNECTION_REDIRECTED,
    FWP_CONDITION_FLAG_IS_REAUTHORIZE, FWPS_CLASSIFY_FLAG_REAUTHORIZE_IF_MODIFIED_BY_OTHERS, FWPS_CLASSIFY_OUT0,
    FWPS_CONNECT_REQUEST0, FWPS_FILTER_FLAG_CLEAR_ACTION_RIGHT, FWPS_FILTER3, FWPS_INCOMING_METADATA_VALUES0,
    FWPS_INCOMING_VALUES0, FWPS_RIGHT_ACTION_WRITE, HANDLE, NTSTATUS,
};

use crate::complete::Completions;
use crate::fwps::Fwps;
use crate::pend::{Fallback, Hold, PendConfig, PendQueue, PendTimer};
pub use crate::read::Family;
use crate::read::{BLANK_FLOW, Indexes, Indication, ReadError, walk_chain, walk_chain_into};
use crate::sockaddr::write_storage;

/// The filter id the core is configured with (`Config::own_filter`).
///
/// WFP gives our connect-redirect filters two run-time ids (V4 and V6) that
/// change whenever BFE restarts, while the core compares one fixed id. The
/// adapter maps whichever of our ids appears in a previousVersion chain to
/// this constant, so audit records and replays stay stable. It is not a
/// valid LUID-based filter id, and 0 (which a chain's unmodified original
/// may carry) is deliberately not used.
pub const OWN_FILTER: u64 = 0x4152_4249_5445_5201;

/// Start-up configuration of the adapter.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CalloutConfig {
    /// Bytes reserved for the audit ring.
    pub ring_bytes: usize,
    /// Hold classifications while no proxy is registered (`None`: never).
    pub pend: Option<PendConfig>,
}

impl Default for CalloutConfig {
    fn default() -> Self {
        Self { ring_bytes: 1 << 20, pend: Some(PendConfig::default()) }
    }
}

/// The adapter's own counters (the core keeps its own).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct AdapterCounters {
    /// Indications left alone because a field could not be read.
    pub malformed: u64,
    /// Classify handle or writable layer data not granted: left alone.
    pub acquire_failed: u64,
    /// A redirect context could not be allocated: not redirected.
    pub context_alloc_failed: u64,
    /// Classifications held.
    pub pended: u64,
    /// Could not be held: queue full, app id too long, or FwpsPendClassify0 failed.
    pub pend_refused: u64,
    /// Held classifications decided again after the proxy registered.
    pub pend_completed: u64,
    /// Held classifications completed with the fallback verdict.
    pub pend_timed_out: u64,
    /// ALE_ENDPOINT_CLOSURE indications seen.
    pub closures: u64,
    /// Closures that dropped an endpoint entry.
    pub forgotten: u64,
}

/// The raw classifyFn3 arguments the adapter reads.
#[derive(Clone, Copy, Debug)]
pub struct RawClassify {
    /// `inFixedValues`.
    pub values: *const FWPS_INCOMING_VALUES0,
    /// `inMetaValues`.
    pub meta: *const FWPS_INCOMING_METADATA_VALUES0,
    /// `classifyContext`.
    pub classify_context: *const c_void,
    /// `filter`.
    pub filter: *const FWPS_FILTER3,
    /// `classifyOut`.
    pub classify_out: *mut FWPS_CLASSIFY_OUT0,
}

/// The verdict [`Callout::finish_connect`] carries out.
#[derive(Clone, Copy)]
enum Finish {
    /// The decision just written into `Callout::outcome`: its verdict, and
    /// for a proxy its redirect target.
    Decided,
    /// A verdict reached without the rules (an unreadable chain, a pend
    /// timeout's fallback); a redirect cannot be one.
    Fixed(Verdict),
}

/// Acquired classify handle and writable connect request, until applied.
#[derive(Clone, Copy)]
struct Held {
    handle: u64,
    request: NonNull<FWPS_CONNECT_REQUEST0>,
}

/// The driver's callout state.
pub struct Callout<P> {
    arbiter: Arbiter<P>,
    ring: AuditRing,
    /// Our one redirect handle (FwpsRedirectHandleCreate0), as an address.
    redirect_handle: usize,
    /// Our connect-redirect filters' run-time ids (V4, V6).
    own_filters: [u64; 2],
    pend: Option<PendQueue>,
    /// The WFP calls that finish held classifications, queued under the
    /// lock and run without it; `None` while a runner has the batch out.
    completions: Option<Completions>,
    /// Unload has begun: no new classification is held.
    closing: bool,
    /// A classification was committed while our proxy was registered (it
    /// registered between the two holds of the lock of that classifyFn, so
    /// the registration's completions missed it): the pend timer fires now.
    due_now: Option<Instant>,
    counters: AdapterCounters,
    /// The outcome of the connect-redirect decision in progress (under the
    /// lock), written by the core and read back to write the verdict and
    /// any redirect: here, not on the classify's small stack, where it
    /// would sit (some 120 bytes) while the rules are matched.
    outcome: Outcome,
    /// The previousVersion chain of the connect-redirect classification in
    /// progress (under the lock), walked here for the same reason (some 140
    /// bytes).
    chain: PreviousChain,
}

/// A connect-redirect indication as read, without its previousVersion
/// chain (walked into [`Callout`]'s own, off the stack).
struct Indicated<'a> {
    flow: Flow<'a>,
    state: RedirectState,
    write_right: bool,
    reauthorize: bool,
}

impl<'a> Indicated<'a> {
    /// The indication with `previous` as its chain, as the core reads it.
    const fn with<'r>(&'r self, previous: &'r PreviousChain) -> ConnectRedirectRef<'r, 'a> {
        ConnectRedirectRef {
            flow: &self.flow,
            state: self.state,
            write_right: self.write_right,
            reauthorize: self.reauthorize,
            previous,
        }
    }
}

/// The chain of a classification whose chain was not walked: without the
/// write right, before the layer data is acquired, or after a walk that
/// failed (which leaves its chain empty).
const NO_CHAIN: PreviousChain = PreviousChain::new();

/// What [`Callout::commit_pend`] made of a pend.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[must_use = "a rolled-back flow is decided again, an unheld one completed"]
pub enum Committed {
    /// Held until the proxy registers or the timeout.
    Held,
    /// Not pended: decide the flow again without holding it.
    RolledBack,
    /// Pended but not held (this classify handle): complete it and release
    /// the handle now, with the lock released.
    Unheld(u64),
}

/// A classification the adapter decided to hold, with its slot reserved in
/// the pend queue. The caller makes `FwpsAcquireClassifyHandle0` and
/// `FwpsPendClassify0` with [`Self::pend`] once the driver's lock is
/// released, then hands the result to [`Callout::commit_pend`] under the
/// lock again. Not `Clone`: one ticket, one commit.
#[derive(Debug)]
#[must_use = "a reserved slot is only freed by Callout::commit_pend"]
pub struct PendTicket {
    slot: usize,
}

impl PendTicket {
    /// A ticket for `slot`, for the crate's tests.
    #[cfg(test)]
    pub(crate) const fn for_slot(slot: usize) -> Self {
        Self { slot }
    }

    /// The seed's pend, with the lock released: acquire the classify handle,
    /// `FwpsPendClassify0` with the classifyFn's own classifyOut, then
    /// BLOCK without the write right until completion. On failure nothing
    /// stays acquired.
    ///
    /// # Errors
    ///
    /// The failing routine's status (e.g. `STATUS_FWP_CANNOT_PEND`).
    ///
    /// # Safety
    ///
    /// As for [`Callout::classify_connect_redirect`], with the same `raw`
    /// that produced the ticket.
    pub unsafe fn pend<F: Fwps>(&self, fwps: &mut F, raw: &RawClassify) -> Result<u64, NTSTATUS> {
        // SAFETY: valid for the classify (contract).
        let (Some(out), Some(filter)) = (unsafe { raw.classify_out.as_mut() }, unsafe { raw.filter.as_ref() }) else {
            return Err(STATUS_INVALID_PARAMETER);
        };
        let handle = fwps.acquire_classify_handle(raw.classify_context)?;
        if let Err(status) = fwps.pend_classify(handle, filter.filterId, out) {
            fwps.release_classify_handle(handle);
            return Err(status);
        }
        // The handle stays acquired: released after FwpsCompleteClassify0.
        // What the engine sees until completion (the seed's example).
        out.actionType = FWP_ACTION_BLOCK;
        out.rights &= !FWPS_RIGHT_ACTION_WRITE;
        Ok(handle)
    }
}

/// `STATUS_INVALID_PARAMETER`.
const STATUS_INVALID_PARAMETER: NTSTATUS = 0xC000_000D_u32 as i32;

impl<P> core::fmt::Debug for Callout<P> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("Callout").field("counters", &self.counters).finish_non_exhaustive()
    }
}

impl<P: Policy> Callout<P> {
    /// Reserves the ring and the pend queue. The arbiter must be configured
    /// with `own_filter` = [`OWN_FILTER`].
    pub fn new(arbiter: Arbiter<P>, config: CalloutConfig) -> Result<Self, OutOfMemory> {
        Ok(Self {
            arbiter,
            ring: AuditRing::new(config.ring_bytes)?,
            redirect_handle: 0,
            own_filters: [0; 2],
            pend: config.pend.map(PendQueue::new).transpose()?,
            completions: match config.pend {
                Some(p) => Some(Completions::with_capacity(usize::from(p.capacity))?),
                None => None,
            },
            closing: false,
            due_now: None,
            counters: AdapterCounters::default(),
            outcome: Outcome { verdict: Verdict::Continue, reason: Reason::LayerDataUnavailable, redirect: None },
            chain: PreviousChain::new(),
        })
    }

    /// Sets our single redirect handle (created once at start-up).
    pub fn set_redirect_handle(&mut self, handle: HANDLE) {
        self.redirect_handle = handle.expose_provenance();
    }

    fn redirect_handle(&self) -> HANDLE {
        core::ptr::with_exposed_provenance_mut(self.redirect_handle)
    }

    /// Sets our connect-redirect filters' run-time ids (after every filter add).
    pub fn set_own_filters(&mut self, v4: u64, v6: u64) {
        self.own_filters = [v4, v6];
    }

    /// The core.
    pub const fn arbiter(&self) -> &Arbiter<P> {
        &self.arbiter
    }

    /// The core, mutably (rules and proxy changes).
    pub const fn arbiter_mut(&mut self) -> &mut Arbiter<P> {
        &mut self.arbiter
    }

    /// The audit ring.
    pub const fn ring(&self) -> &AuditRing {
        &self.ring
    }

    /// The core and the ring together (for the control protocol's `Station`).
    pub const fn parts_mut(&mut self) -> (&mut Arbiter<P>, &mut AuditRing) {
        (&mut self.arbiter, &mut self.ring)
    }

    /// The adapter's counters.
    pub const fn counters(&self) -> &AdapterCounters {
        &self.counters
    }

    /// Arms `timer` for the earliest held deadline, or cancels it when
    /// nothing is held. Call after every classify and every completion,
    /// outside any lock the timer's DPC takes.
    pub fn sync_timer<T: PendTimer>(&self, timer: &mut T) {
        let earliest = self.pend.as_ref().and_then(PendQueue::earliest_deadline);
        let due = match (earliest, self.due_now) {
            (Some(e), Some(n)) => Some(e.min(n)),
            (e, n) => e.or(n),
        };
        match due {
            Some(due) => timer.arm(due),
            None => timer.cancel(),
        }
    }

    /// Classifications held right now.
    pub fn held(&self) -> usize {
        self.pend.as_ref().map_or(0, PendQueue::len)
    }

    /// Classifications whose slot is reserved and whose classifyFn has not
    /// committed or rolled back yet ([`PendTicket`]).
    pub fn reserved(&self) -> usize {
        self.pend.as_ref().map_or(0, PendQueue::reserved)
    }

    /// Classifications unload must still wait for: reserved, held, and
    /// those in a completion batch that another runner (the pend timer's
    /// DPC) has out with the lock released (counted as one while it is out:
    /// its size cannot be read until it comes back).
    pub fn outstanding(&self) -> usize {
        let batch_out = usize::from(self.pend.is_some() && self.completions.is_none());
        self.reserved().saturating_add(self.held()).saturating_add(batch_out)
    }

    /// Unload has begun: no new classification is held from now on (those
    /// already reserved still commit, and are completed by the next call).
    pub const fn stop_holding(&mut self) {
        self.closing = true;
    }

    /// Expires the core's tables, auditing what it reports.
    #[inline(never)]
    pub fn tick(&mut self, now: Instant) {
        let ring = &mut self.ring;
        self.arbiter.expire(now, |d| {
            ring.push_departure(&d);
        });
    }

    fn malformed(&mut self, _why: ReadError) {
        self.counters.malformed = self.counters.malformed.saturating_add(1);
    }

    /// A connect-redirect flow the decision table could not be asked about
    /// (no layer data, unreadable chain or redirect state): left alone
    /// (`continue`, fail open: without the chain C5/C6 cannot be ruled out,
    /// so changing the flow could start a loop, and blocking it would break
    /// connectivity for a fault of ours), audited with its reason.
    #[inline(never)]
    fn unclassified(&mut self, input: &ConnectRedirectRef<'_, '_>, reason: Reason, now: Instant) {
        self.arbiter.decide_without_table_to(input, Verdict::Continue, reason, now, &mut self.ring);
    }

    /// FWPM_LAYER_ALE_CONNECT_REDIRECT_V4/V6 classifyFn.
    ///
    /// Every path writes classifyOut explicitly (the engine's value at entry
    /// is not documented): a flow that cannot be read or whose layer data
    /// cannot be had gets `continue` (fail open), counted, and audited when
    /// enough of it was read to make a record.
    ///
    /// # Safety
    ///
    /// `raw` must hold the arguments WFP passed to this classifyFn (each
    /// pointer null or valid), and the call must happen before classifyFn
    /// returns. `fwps` must act on that classify.
    pub unsafe fn classify_connect_redirect<F: Fwps>(
        &mut self,
        fwps: &mut F,
        family: Family,
        raw: &RawClassify,
        now: Instant,
    ) {
        // SAFETY: the caller's contract, passed on.
        let Some(ticket) = (unsafe { self.connect_redirect(fwps, family, raw, now, true) }) else { return };
        // SAFETY: as above; the same classify.
        let pended = unsafe { ticket.pend(fwps, raw) };
        match self.commit_pend(ticket, pended, now) {
            Committed::Held => {}
            Committed::RolledBack => {
                // SAFETY: as above.
                let _ = unsafe { self.connect_redirect(fwps, family, raw, now, false) };
            }
            Committed::Unheld(handle) => crate::shell::orphaned(fwps, handle, raw),
        }
    }

    /// One pass of a connect-redirect classifyFn under the driver's lock:
    /// everything [`Self::classify_connect_redirect`] does, except that with
    /// `hold` a flow to hold only gets its slot reserved and the
    /// [`PendTicket`] back, nothing written. The caller pends with the lock
    /// released ([`PendTicket::pend`]) and commits under the lock
    /// ([`Self::commit_pend`]); if that rolls back, it makes a second pass
    /// without `hold` (the core's own answer).
    ///
    /// # Safety
    ///
    /// As for [`Self::classify_connect_redirect`].
    pub unsafe fn classify_connect_redirect_pass<F: Fwps>(
        &mut self,
        fwps: &mut F,
        family: Family,
        raw: &RawClassify,
        now: Instant,
        hold: bool,
    ) -> Option<PendTicket> {
        // SAFETY: the caller's contract, passed on.
        unsafe { self.connect_redirect(fwps, family, raw, now, hold) }
    }

    /// Commits a reserved hold under the lock: `pended` is what
    /// [`PendTicket::pend`] returned: [`Committed::Held`] (with the timer
    /// due at once if our proxy registered meanwhile);
    /// [`Committed::RolledBack`] when the pend failed (the slot freed, the
    /// miss counted: the caller decides the flow again without holding it);
    /// [`Committed::Unheld`] when the pend succeeded but the slot cannot
    /// take it (not expected: a slot a ticket reserved is touched by
    /// nothing but its commit), so the caller completes and releases it at
    /// once, with the lock released.
    pub fn commit_pend(&mut self, ticket: PendTicket, pended: Result<u64, NTSTATUS>, now: Instant) -> Committed {
        let Some(queue) = self.pend.as_mut() else {
            return pended.map_or(Committed::RolledBack, Committed::Unheld);
        };
        match pended {
            Ok(handle) if queue.commit(ticket.slot, handle) => {
                self.counters.pended = self.counters.pended.saturating_add(1);
                if self.arbiter.proxy().is_some() {
                    self.due_now = Some(now);
                }
                Committed::Held
            }
            Ok(handle) => {
                self.counters.pend_refused = self.counters.pend_refused.saturating_add(1);
                Committed::Unheld(handle)
            }
            Err(_) => {
                queue.remove(ticket.slot);
                self.counters.pend_refused = self.counters.pend_refused.saturating_add(1);
                Committed::RolledBack
            }
        }
    }

    /// The connect-redirect classifyFn; with `hold`, a flow to hold gets a
    /// reserved slot and its ticket back, nothing else written. Its own
    /// frame, off the frames of the callers.
    #[inline(never)]
    unsafe fn connect_redirect<F: Fwps>(
        &mut self,
        fwps: &mut F,
        family: Family,
        raw: &RawClassify,
        now: Instant,
        hold: bool,
    ) -> Option<PendTicket> {
        // SAFETY: valid for the classify (contract).
        let Some(out) = (unsafe { raw.classify_out.as_mut() }) else {
            // Nothing can be written without classifyOut.
            self.counters.malformed = self.counters.malformed.saturating_add(1);
            return None;
        };
        let write_right = out.rights & FWPS_RIGHT_ACTION_WRITE != 0;
        // SAFETY: valid for the classify (contract).
        let Some(filter) = (unsafe { raw.filter.as_ref() }) else {
            self.counters.malformed = self.counters.malformed.saturating_add(1);
            write_verdict(out, Verdict::Continue, 0, write_right);
            return None;
        };
        self.tick(now);
        // The input is built once, in place, and read into: its flow is some
        // 140 bytes of a small kernel stack (its chain is kept in `self`).
        let mut input =
            Indicated { flow: BLANK_FLOW, state: RedirectState::NotRedirected, write_right, reauthorize: false };
        // SAFETY: the caller's contract, passed on.
        if !unsafe { self.read_connect_input(fwps, family, raw, &mut input, now) } {
            write_verdict(out, Verdict::Continue, filter.flags, write_right);
            return None;
        }
        if !write_right {
            // The rows that read the chain come after C4: nothing to acquire.
            self.arbiter.decide_connect_redirect_to(&input.with(&NO_CHAIN), now, &mut self.ring, &mut self.outcome);
            write_verdict(out, self.outcome.verdict, filter.flags, false);
            return None;
        }
        // A flow our rules would proxy while our proxy is away is held, in
        // the seed's order: handle, pend, and the layer data only later.
        if hold
            && self.should_hold(&input)
            && let Some(ticket) = self.reserve_pend(filter, out, &input, now)
        {
            return Some(ticket);
        }
        // With the write right: take the layer data for the chain (C5/C6),
        // the permit's apply and the rewrite.
        let Some(h) = acquire(fwps, raw.classify_context, filter.filterId, out) else {
            self.counters.acquire_failed = self.counters.acquire_failed.saturating_add(1);
            self.unclassified(&input.with(&NO_CHAIN), Reason::LayerDataUnavailable, now);
            write_verdict(out, Verdict::Continue, filter.flags, true);
            return None;
        };
        // SAFETY: the request was just acquired for this classify.
        if !unsafe { self.read_chain(h) } {
            fwps.apply_modified_layer_data(h.handle, h.request, 0);
            fwps.release_classify_handle(h.handle);
            self.unclassified(&input.with(&NO_CHAIN), Reason::UnreadableIndication, now);
            write_verdict(out, Verdict::Continue, filter.flags, true);
            return None;
        }
        let input = input.with(&self.chain);
        self.arbiter.decide_connect_redirect_to(&input, now, &mut self.ring, &mut self.outcome);
        let flags = self.finish_connect(fwps, h, Finish::Decided, out, filter.flags);
        fwps.apply_modified_layer_data(h.handle, h.request, flags);
        fwps.release_classify_handle(h.handle);
        None
    }

    /// Reads the indication into `input` and asks WFP for its redirect state.
    /// False when it cannot be read: counted, and audited when enough of it
    /// was read; the caller writes `continue`. Its own frame, so that the
    /// indication's views and the read errors are off the caller's, which
    /// stays live while the rules are matched.
    ///
    /// # Safety
    ///
    /// As for [`Self::classify_connect_redirect`].
    #[inline(never)]
    unsafe fn read_connect_input<F: Fwps>(
        &mut self,
        fwps: &mut F,
        family: Family,
        raw: &RawClassify,
        input: &mut Indicated<'_>,
        now: Instant,
    ) -> bool {
        // SAFETY: the caller's contract, passed on.
        let records = match unsafe { read_connect_redirect(raw, family, input) } {
            Ok(r) => r,
            Err(e) => {
                self.malformed(e);
                return false;
            }
        };
        if let Some(records) = records {
            let raw_state = fwps.query_redirect_state(records, self.redirect_handle());
            match u8::try_from(raw_state).ok().and_then(RedirectState::from_u8) {
                Some(s) => input.state = s,
                None => {
                    self.malformed(ReadError {
                        field: "FwpsQueryConnectionRedirectState0",
                        kind: crate::read::ReadErrorKind::BadRedirectState(raw_state),
                    });
                    input.state = RedirectState::RedirectedByOther;
                    self.unclassified(&input.with(&NO_CHAIN), Reason::UnreadableIndication, now);
                    return false;
                }
            }
        }
        true
    }

    /// Walks the acquired request's previousVersion chain into
    /// [`Self::chain`] (counted as malformed, and left empty, when it cannot
    /// be read). Its own frame, for the same reason as
    /// [`Self::read_connect_input`].
    ///
    /// # Safety
    ///
    /// `h` was just acquired for the classify in progress.
    #[inline(never)]
    unsafe fn read_chain(&mut self, h: Held) -> bool {
        self.chain = PreviousChain::new();
        // SAFETY: the caller's contract.
        match unsafe { walk_chain_into(h.request, &self.own_filters, OWN_FILTER, &mut self.chain) } {
            Ok(()) => true,
            Err(e) => {
                self.malformed(e);
                false
            }
        }
    }

    /// Would this flow be proxied but for our absent proxy? Asked before the
    /// layer data is acquired (the seed pends first), so only what needs no
    /// chain is consulted: pending is configured, no proxy is registered,
    /// the flow is not ours already (C2/C3), and the first matching rule
    /// proxies it. The full decision runs at completion.
    fn should_hold(&self, input: &Indicated<'_>) -> bool {
        self.pend.is_some()
            && !self.closing
            && self.arbiter.proxy().is_none()
            && matches!(input.state, RedirectState::NotRedirected | RedirectState::RedirectedByOther)
            && self.arbiter.policy().first_match(&input.flow).is_some_and(|hit| hit.action == Action::Proxy)
    }

    /// Decides how acquired layer data is applied for a connect-redirect
    /// verdict (rewriting it for a proxy) and writes classifyOut; returns the
    /// flags for `FwpsApplyModifiedLayerData0`, which the caller makes (at
    /// once in classifyFn, after the lock for a completion), then releases
    /// the classify handle. Only the decision just written to
    /// [`Self::outcome`] ([`Finish::Decided`]) can redirect: its verdict and
    /// its target come from the same place.
    #[inline(never)]
    fn finish_connect<F: Fwps>(
        &mut self,
        fwps: &mut F,
        h: Held,
        finish: Finish,
        out: &mut FWPS_CLASSIFY_OUT0,
        filter_flags: u16,
    ) -> u32 {
        let verdict = match finish {
            Finish::Decided => self.outcome.verdict,
            // No target goes with it: a proxy decided elsewhere cannot be
            // carried out here.
            Finish::Fixed(Verdict::Proxy) => Verdict::Continue,
            Finish::Fixed(v) => v,
        };
        let verdict = match verdict {
            Verdict::Proxy => {
                if self.rewrite(fwps, h) {
                    write_verdict(out, Verdict::Proxy, filter_flags, true);
                    return FWPS_CLASSIFY_FLAG_REAUTHORIZE_IF_MODIFIED_BY_OTHERS;
                }
                // Could not rewrite (or, not expected, no target): the flow
                // goes on unchanged.
                Verdict::Continue
            }
            v => v,
        };
        write_verdict(out, verdict, filter_flags, true);
        match verdict {
            Verdict::Permit => FWPS_CLASSIFY_FLAG_REAUTHORIZE_IF_MODIFIED_BY_OTHERS,
            Verdict::Continue | Verdict::Block | Verdict::Proxy => 0,
        }
    }

    /// Writes the redirect target of [`Self::outcome`] into the acquired
    /// request. On failure (or without a target: the core pairs proxy with
    /// one) nothing is changed and nothing is leaked.
    fn rewrite<F: Fwps>(&mut self, fwps: &mut F, h: Held) -> bool {
        let Some(target) = &self.outcome.redirect else { return false };
        let Ok(pid) = u32::try_from(target.target_pid) else { return false };
        let Some(context) = fwps.allocate_context(CONTEXT_LEN) else {
            self.counters.context_alloc_failed = self.counters.context_alloc_failed.saturating_add(1);
            return false;
        };
        let bytes = target.context.encode();
        // SAFETY: allocate_context returned CONTEXT_LEN writable bytes that
        // nothing else references; `bytes` is CONTEXT_LEN long.
        unsafe { core::ptr::copy_nonoverlapping(bytes.as_ptr(), context.as_ptr(), CONTEXT_LEN) };
        let mut request = h.request;
        // SAFETY: the writable request is ours alone until it is applied.
        let request = unsafe { request.as_mut() };
        write_storage(&mut request.remoteAddressAndPort, &target.remote);
        request.localRedirectTargetPID = pid;
        request.localRedirectHandle = self.redirect_handle();
        // Ownership of the context passes to WFP when the data is applied.
        request.localRedirectContext = context.as_ptr().cast::<c_void>();
        request.localRedirectContextSize = CONTEXT_LEN;
        true
    }

    /// Reserves a slot to hold the classification until the proxy
    /// registers, keeping the deep copy of classifyOut that completion will
    /// get (`out` lives on the classify's stack). The seed's sequence
    /// (classify handle, `FwpsPendClassify0` with the classifyFn's own
    /// classifyOut, BLOCK without the write right for now) is
    /// [`PendTicket::pend`], made with the driver's lock released. `None`
    /// (nothing reserved, the miss counted) when it cannot be held.
    #[inline(never)]
    fn reserve_pend(
        &mut self,
        filter: &FWPS_FILTER3,
        out: &FWPS_CLASSIFY_OUT0,
        input: &Indicated<'_>,
        now: Instant,
    ) -> Option<PendTicket> {
        let queue = self.pend.as_mut()?;
        let hold = Hold {
            classify_handle: 0,
            filter_id: filter.filterId,
            filter_flags: filter.flags,
            classify_out: *out,
            state: input.state,
            reauthorize: input.reauthorize,
            deadline: now.saturating_add(queue.config.timeout),
            flow: &input.flow,
        };
        match queue.reserve(&hold) {
            Some(slot) => Some(PendTicket { slot }),
            None => {
                self.counters.pend_refused = self.counters.pend_refused.saturating_add(1);
                None
            }
        }
    }

    /// Decides held classifications: all of them once a proxy is registered
    /// (decided again, with the layer data acquired now), and those past
    /// their deadline otherwise (the fallback verdict). Their last WFP calls
    /// (apply, `FwpsCompleteClassify0`, release) are only queued, in the
    /// batch reserved at start-up: run them with
    /// [`crate::shell::complete_pended`] once the driver's lock is released
    /// (completion may classify again on the same thread), or with
    /// [`Self::run_completions`] where no lock is held. Stops when the batch
    /// is full or out with a runner; the rest stay held for the next call.
    pub fn complete_pended<F: Fwps>(&mut self, fwps: &mut F, now: Instant) {
        let proxy_ready = self.arbiter.proxy().is_some();
        self.due_now = None;
        let Some(fallback) = self.pend.as_ref().map(|q| q.config.fallback) else { return };
        let Some(mut batch) = self.completions.take() else { return };
        while batch.has_room() {
            let Some(mut p) = self.pend.as_mut().and_then(|q| q.take_next(|p| proxy_ready || now >= p.deadline)) else {
                break;
            };
            let held = fwps
                .acquire_writable_connect_request(p.classify_handle, p.filter_id, &mut p.classify_out)
                .ok()
                .map(|request| Held { handle: p.classify_handle, request });
            let Some(queue) = self.pend.as_ref() else { break };
            let flow = queue.flow_of(&p);
            let mut input = ConnectRedirectInput {
                flow,
                state: p.state,
                write_right: true,
                reauthorize: p.reauthorize,
                previous: PreviousChain::new(),
            };
            let Some(h) = held else {
                // Without the layer data only the action can be given.
                self.counters.acquire_failed = self.counters.acquire_failed.saturating_add(1);
                let verdict = if proxy_ready { Verdict::Continue } else { fallback_verdict(fallback) };
                let reason = if proxy_ready { Reason::LayerDataUnavailable } else { Reason::PendTimeout };
                self.arbiter.decide_without_table_into(&input, verdict, reason, now, &mut self.ring);
                write_verdict(&mut p.classify_out, verdict, p.filter_flags, true);
                batch.push(p.classify_handle, None, &p.classify_out);
                continue;
            };
            let flags = if proxy_ready {
                // SAFETY: the request was just acquired for this classify.
                let finish = match unsafe { walk_chain(h.request, &self.own_filters, OWN_FILTER) } {
                    Ok(previous) => {
                        input.previous = previous;
                        self.arbiter.decide_connect_redirect_to(
                            &input.as_parts(),
                            now,
                            &mut self.ring,
                            &mut self.outcome,
                        );
                        Finish::Decided
                    }
                    Err(_) => {
                        self.counters.malformed = self.counters.malformed.saturating_add(1);
                        self.arbiter.decide_without_table_into(
                            &input,
                            Verdict::Continue,
                            Reason::UnreadableIndication,
                            now,
                            &mut self.ring,
                        );
                        Finish::Fixed(Verdict::Continue)
                    }
                };
                self.counters.pend_completed = self.counters.pend_completed.saturating_add(1);
                self.finish_connect(fwps, h, finish, &mut p.classify_out, p.filter_flags)
            } else {
                // Audited like a decision, and a fallback block is cached for
                // auth-connect (A1): a block at a redirect layer alone does not
                // reliably stop the flow.
                let verdict = fallback_verdict(fallback);
                self.arbiter.decide_without_table_into(&input, verdict, Reason::PendTimeout, now, &mut self.ring);
                self.counters.pend_timed_out = self.counters.pend_timed_out.saturating_add(1);
                // A fallback verdict is never proxy: no target is read.
                self.finish_connect(fwps, h, Finish::Fixed(verdict), &mut p.classify_out, p.filter_flags)
            };
            // Apply, complete with the deep copy, then release: after the lock.
            batch.push(h.handle, Some((h.request, flags)), &p.classify_out);
        }
        self.completions = Some(batch);
    }

    /// Whether a held classification is due now ([`Self::complete_pended`]
    /// would take it).
    pub fn completion_due(&self, now: Instant) -> bool {
        let proxy_ready = self.arbiter.proxy().is_some();
        self.pend
            .as_ref()
            .is_some_and(|q| q.len() > 0 && (proxy_ready || q.earliest_deadline().is_some_and(|d| now >= d)))
    }

    /// Takes the queued completions out (to run them with the lock
    /// released); `None` when nothing is queued or another runner has them.
    pub fn take_completions(&mut self) -> Option<Completions> {
        if self.completions.as_ref().is_none_or(Completions::is_empty) {
            return None;
        }
        self.completions.take()
    }

    /// Gives an emptied batch back (see [`Self::take_completions`]).
    pub fn restore_completions(&mut self, batch: Completions) {
        if self.completions.is_none() {
            self.completions = Some(batch);
        }
    }

    /// Runs the queued completions here and now. Only for callers that hold
    /// no lock classifyFn takes (tests, single-threaded hosts); the driver
    /// uses [`crate::shell::complete_pended`].
    pub fn run_completions<F: Fwps>(&mut self, fwps: &mut F) {
        if let Some(batch) = self.completions.as_mut() {
            batch.run(fwps);
        }
    }

    /// FWPM_LAYER_ALE_AUTH_CONNECT_V4/V6 classifyFn.
    ///
    /// # Safety
    ///
    /// As for [`Self::classify_connect_redirect`].
    #[inline(never)]
    pub unsafe fn classify_auth_connect(&mut self, family: Family, raw: &RawClassify, now: Instant) {
        // SAFETY: valid for the classify (contract).
        let Some(out) = (unsafe { raw.classify_out.as_mut() }) else {
            self.counters.malformed = self.counters.malformed.saturating_add(1);
            return;
        };
        let write_right = out.rights & FWPS_RIGHT_ACTION_WRITE != 0;
        // SAFETY: valid for the classify (contract).
        let Some(filter) = (unsafe { raw.filter.as_ref() }) else {
            self.counters.malformed = self.counters.malformed.saturating_add(1);
            return write_verdict(out, Verdict::Continue, 0, write_right);
        };
        self.tick(now);
        // Read into in place, as at connect-redirect.
        let mut input = AuthConnectInput {
            flow: BLANK_FLOW,
            reauthorize: false,
            redirected: false,
            target_pid: None,
            original_destination: None,
        };
        // SAFETY: WFP's pointers, valid until classifyFn returns (contract).
        let read = unsafe { Indication::from_raw(raw.values, raw.meta, family, Indexes::auth_connect(family)) }
            .and_then(|ind| {
                let flags = ind.flags()?;
                input.reauthorize = flags & FWP_CONDITION_FLAG_IS_REAUTHORIZE != 0;
                input.redirected = flags & FWP_CONDITION_FLAG_IS_CONNECTION_REDIRECTED != 0;
                ind.read_flow_into(&mut input.flow)?;
                input.target_pid = ind.target_pid();
                input.original_destination = ind.original_destination()?;
                Ok(())
            });
        if let Err(e) = read {
            // Unreadable: left alone (continue), explicitly, counted.
            self.malformed(e);
            return write_verdict(out, Verdict::Continue, filter.flags, write_right);
        }
        let decision = self.arbiter.decide_auth_connect_into(&input, now, &mut self.ring);
        write_verdict(out, decision.verdict, filter.flags, write_right);
    }

    /// FWPM_LAYER_ALE_ENDPOINT_CLOSURE_V4/V6 classifyFn: the socket is gone,
    /// so is its endpoint entry. classifyOut is left as given.
    ///
    /// # Safety
    ///
    /// As for [`Self::classify_connect_redirect`].
    #[inline(never)]
    pub unsafe fn classify_endpoint_closure(&mut self, family: Family, raw: &RawClassify, now: Instant) {
        self.counters.closures = self.counters.closures.saturating_add(1);
        // SAFETY: WFP's pointers, valid until classifyFn returns (contract).
        let read = unsafe { Indication::from_raw(raw.values, raw.meta, family, Indexes::endpoint_closure(family)) }
            .and_then(|ind| ind.endpoint());
        match read {
            Ok(endpoint) => {
                if self.arbiter.forget_endpoint(endpoint, now).is_some() {
                    self.counters.forgotten = self.counters.forgotten.saturating_add(1);
                }
            }
            Err(e) => self.malformed(e),
        }
    }
}

/// Reads a connect-redirect indication's flags and flow into `input`, and
/// returns its redirect records (if any). Its own frame: the indication's
/// views are off [`Callout::connect_redirect`]'s, which stays live while the
/// rules are matched.
///
/// # Safety
///
/// As for [`Callout::classify_connect_redirect`].
#[inline(never)]
unsafe fn read_connect_redirect<'a>(
    raw: &RawClassify,
    family: Family,
    input: &mut Indicated<'a>,
) -> Result<Option<HANDLE>, ReadError> {
    // SAFETY: WFP's pointers, valid until classifyFn returns (contract).
    let ind: Indication<'a> =
        unsafe { Indication::from_raw(raw.values, raw.meta, family, Indexes::connect_redirect(family)) }?;
    input.reauthorize = ind.flags()? & FWP_CONDITION_FLAG_IS_REAUTHORIZE != 0;
    ind.read_flow_into(&mut input.flow)?;
    Ok(ind.redirect_records())
}

/// Acquires the classify handle and the writable connect request. Its own
/// frame (the handle's out-parameter), off the caller's.
#[inline(never)]
fn acquire<F: Fwps>(
    fwps: &mut F,
    classify_context: *const c_void,
    filter_id: u64,
    out: &mut FWPS_CLASSIFY_OUT0,
) -> Option<Held> {
    let handle = fwps.acquire_classify_handle(classify_context).ok()?;
    match fwps.acquire_writable_connect_request(handle, filter_id, out) {
        Ok(request) => Some(Held { handle, request }),
        Err(_) => {
            fwps.release_classify_handle(handle);
            None
        }
    }
}

const fn fallback_verdict(f: Fallback) -> Verdict {
    match f {
        Fallback::Continue => Verdict::Continue,
        Fallback::Permit => Verdict::Permit,
        Fallback::Block => Verdict::Block,
    }
}

/// Writes a verdict into classifyOut (see the module table), explicitly on
/// every path. `write_right` is whether we had `FWPS_RIGHT_ACTION_WRITE`
/// when classifyFn was entered: FwpsAcquireWritableLayerDataPointer0 clears
/// it (and sets BLOCK) as a side effect, so it is given back here for every
/// decision that is not hard, as WFPSampler and the seed do; otherwise every
/// permit and continue of ours would shut out the vendors below us.
fn write_verdict(out: &mut FWPS_CLASSIFY_OUT0, verdict: Verdict, filter_flags: u16, write_right: bool) {
    match (verdict, write_right) {
        // Hard block: a veto is allowed even without the write right.
        (Verdict::Block, _) => {
            out.actionType = FWP_ACTION_BLOCK;
            out.rights &= !FWPS_RIGHT_ACTION_WRITE;
        }
        // Without the write right nothing else may be written.
        (_, false) => {}
        (Verdict::Continue, true) => {
            out.actionType = FWP_ACTION_CONTINUE;
            out.rights |= FWPS_RIGHT_ACTION_WRITE;
        }
        // Soft permit, unless the filter asks for its write right cleared.
        (Verdict::Permit | Verdict::Proxy, true) => {
            out.actionType = FWP_ACTION_PERMIT;
            if filter_flags & FWPS_FILTER_FLAG_CLEAR_ACTION_RIGHT != 0 {
                out.rights &= !FWPS_RIGHT_ACTION_WRITE;
            } else {
                out.rights |= FWPS_RIGHT_ACTION_WRITE;
            }
        }
    }
}
