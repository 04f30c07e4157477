//! IRQL, spin locks, timers and PASSIVE_LEVEL-only routines.
//!
//! Every call the kernel path makes is checked against its documented
//! maximum IRQL ([`Routine::max_irql`], each citing its page). A violation
//! panics, so it fails the test that caused it: calling a PASSIVE_LEVEL
//! routine at DISPATCH_LEVEL bugchecks a real machine (IRQL_NOT_LESS_OR_EQUAL
//! or a page fault at raised IRQL), and acquiring a spin lock the thread
//! already holds spins forever ("KeAcquireSpinLock": "Attempting to acquire
//! a spin lock recursively is guaranteed to cause a deadlock").

use std::collections::BTreeMap;

use arbiter::Instant;

/// An IRQL the model distinguishes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Irql {
    /// PASSIVE_LEVEL.
    Passive,
    /// APC_LEVEL.
    Apc,
    /// DISPATCH_LEVEL.
    Dispatch,
}

/// Every kernel routine the driver path calls, for its IRQL check.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Routine {
    /// FwpmEngineOpen0, FwpmEngineClose0, FwpmTransaction*0, Fwpm*Add0,
    /// Fwpm*Delete*0, FwpmBfeStateSubscribeChanges0/Unsubscribe:
    /// "IRQL: PASSIVE_LEVEL" (each function's Requirements).
    FwpmManagement,
    /// FwpmBfeStateGet0: "IRQL: <= DISPATCH_LEVEL".
    FwpmBfeStateGet,
    /// FwpsCalloutRegister*: "IRQL: PASSIVE_LEVEL".
    FwpsCalloutRegister,
    /// FwpsCalloutUnregisterById0: "IRQL: PASSIVE_LEVEL".
    FwpsCalloutUnregister,
    /// FwpsRedirectHandleCreate0 / Destroy0: "IRQL: PASSIVE_LEVEL".
    FwpsRedirectHandle,
    /// FwpsQueryConnectionRedirectState0: "IRQL: <= DISPATCH_LEVEL".
    FwpsQueryConnectionRedirectState,
    /// FwpsAcquireClassifyHandle0: "IRQL: <= DISPATCH_LEVEL".
    FwpsAcquireClassifyHandle,
    /// FwpsAcquireWritableLayerDataPointer0: "IRQL: <= DISPATCH_LEVEL".
    FwpsAcquireWritableLayerDataPointer,
    /// FwpsApplyModifiedLayerData0: "IRQL: <= DISPATCH_LEVEL".
    FwpsApplyModifiedLayerData,
    /// FwpsPendClassify0: "IRQL: <= DISPATCH_LEVEL".
    FwpsPendClassify,
    /// FwpsCompleteClassify0: "IRQL: <= DISPATCH_LEVEL".
    FwpsCompleteClassify,
    /// FwpsReleaseClassifyHandle0: "IRQL: <= DISPATCH_LEVEL".
    FwpsReleaseClassifyHandle,
    /// ExAllocatePool2 (non-paged), ExFreePoolWithTag: "IRQL <= DISPATCH_LEVEL"
    /// for non-paged pool.
    PoolNonPaged,
    /// IoOpenDriverRegistryKey, ZwOpenKey, ZwQueryValueKey, ZwClose and the
    /// other registry routines: "IRQL: PASSIVE_LEVEL".
    Registry,
    /// IoCreateDevice, IoDeleteDevice: "IRQL: PASSIVE_LEVEL".
    IoDevice,
    /// KeSetTimer, KeCancelTimer: "IRQL: <= DISPATCH_LEVEL".
    Timer,
}

impl Routine {
    /// Routines that move a classification on in the engine (pend it, apply
    /// its layer data, complete it, drop the handle that keeps it): the ones
    /// the driver makes with its lock released
    /// ([`Kernel::forbid_engine_calls_under`]). The lookups of the
    /// classification in progress (its redirect state, its handle, its
    /// writable layer data) are not among them.
    pub const fn moves_classification_on(self) -> bool {
        matches!(
            self,
            Self::FwpsPendClassify
                | Self::FwpsApplyModifiedLayerData
                | Self::FwpsCompleteClassify
                | Self::FwpsReleaseClassifyHandle
        )
    }

    /// The documented maximum IRQL.
    pub const fn max_irql(self) -> Irql {
        match self {
            Self::FwpmManagement
            | Self::FwpsCalloutRegister
            | Self::FwpsCalloutUnregister
            | Self::FwpsRedirectHandle
            | Self::Registry
            | Self::IoDevice => Irql::Passive,
            Self::FwpmBfeStateGet
            | Self::FwpsQueryConnectionRedirectState
            | Self::FwpsAcquireClassifyHandle
            | Self::FwpsAcquireWritableLayerDataPointer
            | Self::FwpsApplyModifiedLayerData
            | Self::FwpsPendClassify
            | Self::FwpsCompleteClassify
            | Self::FwpsReleaseClassifyHandle
            | Self::PoolNonPaged
            | Self::Timer => Irql::Dispatch,
        }
    }
}

/// A spin lock's identity in the model.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct SpinLockId(pub u32);

/// A timer's identity in the model.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct TimerId(pub u32);

/// The one thread the model runs: its IRQL, the spin locks it holds, the
/// clock, and armed timers.
#[derive(Debug)]
pub struct Kernel {
    irql: Irql,
    /// Held spin locks with the IRQL to restore on release.
    held: Vec<(SpinLockId, Irql)>,
    next_lock: u32,
    next_timer: u32,
    timers: BTreeMap<TimerId, Option<Instant>>,
    now: Instant,
    /// Spin locks the driver's classifyFn acquires ([`Self::mark_classify_lock`]).
    classify_locks: Vec<SpinLockId>,
    /// Driver locks under which no routine that moves a classification on
    /// may be called ([`Self::forbid_engine_calls_under`]).
    quiet_locks: Vec<SpinLockId>,
    /// Re-entries of classifyFn from FwpsCompleteClassify0.
    pub reentries: u64,
    /// Every routine called, in order (for tests that read the sequence).
    pub calls: Vec<(Routine, Irql)>,
    /// Record every call in [`Self::calls`] (off for speed in the lab).
    pub trace: bool,
}

impl Default for Kernel {
    fn default() -> Self {
        Self::new()
    }
}

impl Kernel {
    /// A thread at PASSIVE_LEVEL holding nothing, at time 0.
    pub const fn new() -> Self {
        Self {
            irql: Irql::Passive,
            held: Vec::new(),
            next_lock: 0,
            next_timer: 0,
            timers: BTreeMap::new(),
            now: Instant::from_millis(0),
            classify_locks: Vec::new(),
            quiet_locks: Vec::new(),
            reentries: 0,
            calls: Vec::new(),
            trace: false,
        }
    }

    /// The current IRQL.
    pub const fn irql(&self) -> Irql {
        self.irql
    }

    /// Runs `f` at `irql` (as the engine calls classifyFn at up to
    /// DISPATCH_LEVEL), restoring the previous IRQL after.
    pub fn at<R>(&mut self, irql: Irql, f: impl FnOnce(&mut Self) -> R) -> R {
        let before = self.irql;
        self.irql = self.irql.max(irql);
        let r = f(self);
        self.irql = before;
        r
    }

    /// Sets the IRQL outright (KeRaiseIrql / KeLowerIrql).
    pub const fn set_irql(&mut self, irql: Irql) {
        self.irql = irql;
    }

    /// Checks a call against its documented maximum IRQL, and against the
    /// driver locks held ([`Self::forbid_engine_calls_under`]); panics on a
    /// violation.
    pub fn call(&mut self, routine: Routine) {
        if self.trace {
            self.calls.push((routine, self.irql));
        }
        if routine.moves_classification_on()
            && let Some(lock) = self.quiet_locks.iter().find(|l| self.held.iter().any(|(h, _)| h == *l))
        {
            panic!(
                "WFP call while holding the driver's spin lock: {routine:?} called with {lock:?} held \
                 (a support routine that takes the engine's own locks, under ours)"
            );
        }
        assert!(
            self.irql <= routine.max_irql(),
            "IRQL violation: {routine:?} called at {:?}, documented maximum {:?} (bugcheck on a real machine)",
            self.irql,
            routine.max_irql()
        );
    }

    /// A new spin lock (KeInitializeSpinLock).
    pub const fn new_spin_lock(&mut self) -> SpinLockId {
        self.next_lock = self.next_lock.wrapping_add(1);
        SpinLockId(self.next_lock)
    }

    /// KeAcquireSpinLock: raises to DISPATCH_LEVEL. Panics if this thread
    /// already holds the lock (a deadlock on a real machine).
    pub fn acquire_spin_lock(&mut self, lock: SpinLockId) {
        assert!(
            !self.held.iter().any(|(l, _)| *l == lock),
            "deadlock: spin lock {lock:?} acquired again by the thread that holds it"
        );
        self.held.push((lock, self.irql));
        self.irql = Irql::Dispatch;
    }

    /// KeReleaseSpinLock: restores the IRQL of the matching acquire.
    pub fn release_spin_lock(&mut self, lock: SpinLockId) {
        let at = self.held.iter().rposition(|(l, _)| *l == lock);
        let Some(i) = at else { panic!("spin lock {lock:?} released but not held") };
        let (_, before) = self.held.remove(i);
        self.irql = before;
    }

    /// Declares that the driver's classifyFn acquires `lock`: under the
    /// [`crate::readings::Completion::ReentersSameThread`] reading, calling
    /// FwpsCompleteClassify0 with it held deadlocks.
    pub fn mark_classify_lock(&mut self, lock: SpinLockId) {
        if !self.classify_locks.contains(&lock) {
            self.classify_locks.push(lock);
        }
    }

    /// Declares `lock` the driver's own spin lock: from now on, calling a
    /// routine that moves a classification on ([`Routine::moves_classification_on`])
    /// while this thread holds it panics.
    ///
    /// Source: "Preventing Errors and Deadlocks While Using Spin Locks",
    /// Nested Spin Lock Acquisition: "A driver must not call a support
    /// routine that uses spin locks unless a deadlock cannot occur." No
    /// page says which of the engine's routines take locks of their own,
    /// nor in what order against a callout's lock (nor that a completion
    /// cannot classify again, see [`crate::readings::Completion`]), so a
    /// deadlock cannot be ruled out for the routines that act on a
    /// classification after classifyFn's first steps: pend, apply,
    /// completion and release. Which routines this covers is our design
    /// choice, not a documented list: the lookups of the classification in
    /// progress (the redirect-state query and the two acquires) are still
    /// allowed under the lock, as the driver makes them (a known gap in
    /// driver/README.md). FwpsPendClassify0's page allows DISPATCH_LEVEL
    /// ("IRQL: <= DISPATCH_LEVEL"): the restriction is the lock, not the
    /// IRQL.
    pub fn forbid_engine_calls_under(&mut self, lock: SpinLockId) {
        if !self.quiet_locks.contains(&lock) {
            self.quiet_locks.push(lock);
        }
    }

    /// The engine re-enters classifyFn on this thread: it would acquire
    /// every classify lock. Panics (deadlock) if one is held.
    pub fn reenter_classify(&mut self) {
        self.reentries += 1;
        for lock in &self.classify_locks {
            assert!(
                !self.held.iter().any(|(l, _)| l == lock),
                "deadlock: FwpsCompleteClassify0 re-entered classifyFn on the same thread while it holds \
                 spin lock {lock:?}, which classifyFn acquires"
            );
        }
    }

    /// Spin locks this thread holds.
    pub fn held_locks(&self) -> Vec<SpinLockId> {
        self.held.iter().map(|(l, _)| *l).collect()
    }

    /// A new timer (KeInitializeTimer), not armed.
    pub fn new_timer(&mut self) -> TimerId {
        self.next_timer = self.next_timer.wrapping_add(1);
        let id = TimerId(self.next_timer);
        self.timers.insert(id, None);
        id
    }

    /// KeSetTimer: (re)arms `timer` for `due`.
    pub fn set_timer(&mut self, timer: TimerId, due: Instant) {
        self.call(Routine::Timer);
        self.timers.insert(timer, Some(due));
    }

    /// KeCancelTimer.
    pub fn cancel_timer(&mut self, timer: TimerId) {
        self.call(Routine::Timer);
        self.timers.insert(timer, None);
    }

    /// When `timer` is due, if armed.
    pub fn timer_due(&self, timer: TimerId) -> Option<Instant> {
        self.timers.get(&timer).copied().flatten()
    }

    /// The clock.
    pub const fn now(&self) -> Instant {
        self.now
    }

    /// Moves the clock to `to` and returns the timers that fired (disarmed),
    /// earliest first. The caller runs each one's DPC at DISPATCH_LEVEL
    /// (a timer DPC "runs at IRQL = DISPATCH_LEVEL", KDEFERRED_ROUTINE).
    pub fn advance(&mut self, to: Instant) -> Vec<TimerId> {
        if to > self.now {
            self.now = to;
        }
        let now = self.now;
        let mut fired: Vec<(Instant, TimerId)> =
            self.timers.iter().filter_map(|(id, due)| due.filter(|d| *d <= now).map(|d| (d, *id))).collect();
        fired.sort();
        for (_, id) in &fired {
            self.timers.insert(*id, None);
        }
        fired.into_iter().map(|(_, id)| id).collect()
    }
}
