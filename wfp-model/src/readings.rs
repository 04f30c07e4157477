//! Where Microsoft's documentation is silent or ambiguous, the model offers
//! each reading as a switch; tests run under [`Readings::all`].

/// What `classifyOut->actionType` holds when a classifyFn is entered.
///
/// Silent: the FWPS_CLASSIFY_OUT0 page describes what a callout writes, not
/// what the engine puts there before the call. A classifyFn that returns
/// without writing leaves whatever this is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum EntryAction {
    /// `FWP_ACTION_CONTINUE`.
    Continue,
    /// `FWP_ACTION_BLOCK`.
    Block,
    /// `FWP_ACTION_NONE`.
    None,
}

/// What an `FWP_ACTION_CALLOUT_UNKNOWN` filter does with a value other than
/// BLOCK, PERMIT or CONTINUE (for instance an untouched `FWP_ACTION_NONE`).
///
/// Silent: the FWPS_ACTION0 page lists the three values for UNKNOWN and,
/// unlike for TERMINATING and INSPECTION, says nothing of the others.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum UnknownOther {
    /// Handled as CONTINUE.
    AsContinue,
    /// Handled as BLOCK.
    AsBlock,
}

/// Whether a CONTINUE returned with `FWPS_RIGHT_ACTION_WRITE` cleared takes
/// the right away from the filters after it.
///
/// Silent: the Filter Arbitration page ties the right to a Permit or Block
/// decision; it does not say whether the rights of a callout that continues
/// are read at all.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ContinueRights {
    /// Ignored: only a Permit or Block carries rights forward.
    Ignored,
    /// Honoured: later filters get the right only if it was left set.
    Honoured,
}

/// Whether a hard block stops the evaluation of the remaining sublayers.
///
/// Ambiguous: the Filter Arbitration page says both "Evaluate all
/// sub-layers even if a higher-priority sub-layer has decided to block"
/// and "'Block' is final (cannot be overridden) and stops evaluation".
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum HardBlock {
    /// The remaining sublayers are not classified.
    Stops,
    /// They are classified (without the write right); the block stands.
    EvaluatesRest,
}

/// Whether `FwpsCompleteClassify0` at ALE_CONNECT_REDIRECT classifies the
/// flow again before it returns, on the same thread.
///
/// Silent: the "Using Bind or Connect Redirection" seed shows the call and
/// nothing of what the engine does inside it. A driver must not hold a lock
/// its classifyFn takes while calling it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Completion {
    /// The engine re-enters classifyFn (other filters, and reauthorization)
    /// on the calling thread before `FwpsCompleteClassify0` returns.
    ReentersSameThread,
    /// The engine resumes the classification later, on another thread.
    Deferred,
}

/// One choice per open question.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Readings {
    /// classifyOut at classifyFn entry.
    pub entry_action: EntryAction,
    /// Other values under `FWP_ACTION_CALLOUT_UNKNOWN`.
    pub unknown_other: UnknownOther,
    /// Rights returned with CONTINUE.
    pub continue_rights: ContinueRights,
    /// A hard block and the remaining sublayers.
    pub hard_block: HardBlock,
    /// `FwpsCompleteClassify0` and re-entry.
    pub completion: Completion,
}

impl Default for Readings {
    /// The lab's default: the most lenient engine. Tests use [`Readings::all`].
    fn default() -> Self {
        Self {
            entry_action: EntryAction::Continue,
            unknown_other: UnknownOther::AsContinue,
            continue_rights: ContinueRights::Ignored,
            hard_block: HardBlock::EvaluatesRest,
            completion: Completion::Deferred,
        }
    }
}

impl Readings {
    /// Every combination of readings.
    pub fn all() -> Vec<Self> {
        let mut v = Vec::new();
        for entry_action in [EntryAction::Continue, EntryAction::Block, EntryAction::None] {
            for unknown_other in [UnknownOther::AsContinue, UnknownOther::AsBlock] {
                for continue_rights in [ContinueRights::Ignored, ContinueRights::Honoured] {
                    for hard_block in [HardBlock::Stops, HardBlock::EvaluatesRest] {
                        for completion in [Completion::ReentersSameThread, Completion::Deferred] {
                            v.push(Self { entry_action, unknown_other, continue_rights, hard_block, completion });
                        }
                    }
                }
            }
        }
        v
    }

    /// The `FWP_ACTION_TYPE` at classifyFn entry.
    pub const fn entry_action_type(&self) -> wfp_ffi::FWP_ACTION_TYPE {
        match self.entry_action {
            EntryAction::Continue => wfp_ffi::FWP_ACTION_CONTINUE,
            EntryAction::Block => wfp_ffi::FWP_ACTION_BLOCK,
            EntryAction::None => wfp_ffi::FWP_ACTION_NONE,
        }
    }
}
