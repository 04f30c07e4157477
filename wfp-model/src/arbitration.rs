//! Filter action types and filter arbitration.
//!
//! Sources (learn.microsoft.com):
//! - FWPS_ACTION0 ("type" member) for what a classifyFn's value means under
//!   each callout action type;
//! - "Filter Arbitration" (windows/win32/fwp/filter-arbitration) for the
//!   order of evaluation and how sublayers combine.

use wfp_ffi::{
    FWP_ACTION_BLOCK, FWP_ACTION_CALLOUT_INSPECTION, FWP_ACTION_CALLOUT_TERMINATING, FWP_ACTION_CALLOUT_UNKNOWN,
    FWP_ACTION_CONTINUE, FWP_ACTION_PERMIT, FWP_ACTION_TYPE, FWPS_CLASSIFY_OUT0, FWPS_RIGHT_ACTION_WRITE,
};

use crate::readings::{ContinueRights, Readings, UnknownOther};

/// What one filter's evaluation amounts to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Outcome {
    /// Pass on to the next filter.
    Continue,
    /// Permit.
    Permit,
    /// Block.
    Block,
}

/// The effective outcome of a callout filter from the classifyOut its
/// classifyFn left.
///
/// FWPS_ACTION0, `FWP_ACTION_CALLOUT_TERMINATING`: "If the callout driver's
/// classifyFn callout function returns any other value for the action to be
/// taken on the data, it is handled the same as if the callout driver's
/// classifyFn callout function returned FWP_ACTION_BLOCK."
/// `FWP_ACTION_CALLOUT_INSPECTION`: any other value "is handled the same as
/// if ... returned FWP_ACTION_CONTINUE". `FWP_ACTION_CALLOUT_UNKNOWN`: "can
/// return any of the following values": BLOCK, PERMIT, CONTINUE; other
/// values are [`UnknownOther`].
pub fn resolve(filter_action: FWP_ACTION_TYPE, out_action: FWP_ACTION_TYPE, readings: &Readings) -> Outcome {
    let plain = match out_action {
        FWP_ACTION_BLOCK => Some(Outcome::Block),
        FWP_ACTION_PERMIT => Some(Outcome::Permit),
        FWP_ACTION_CONTINUE => Some(Outcome::Continue),
        _ => None,
    };
    match filter_action {
        FWP_ACTION_CALLOUT_TERMINATING => match plain {
            Some(Outcome::Permit) => Outcome::Permit,
            _ => Outcome::Block,
        },
        FWP_ACTION_CALLOUT_INSPECTION => Outcome::Continue,
        FWP_ACTION_CALLOUT_UNKNOWN => plain.unwrap_or(match readings.unknown_other {
            UnknownOther::AsContinue => Outcome::Continue,
            UnknownOther::AsBlock => Outcome::Block,
        }),
        // Plain filters: FWPM_ACTION0 "FWP_ACTION_BLOCK Block the traffic",
        // "FWP_ACTION_PERMIT Permit the traffic".
        FWP_ACTION_BLOCK => Outcome::Block,
        FWP_ACTION_PERMIT => Outcome::Permit,
        _ => Outcome::Continue,
    }
}

/// A decision with its override right.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Decided {
    /// Permit or block (never continue).
    pub outcome: Outcome,
    /// `FWPS_RIGHT_ACTION_WRITE` left set: a lower-priority sublayer may
    /// override it ("soft"). Cleared: "hard".
    pub overridable: bool,
}

/// The state of one layer's arbitration, sublayer by sublayer.
///
/// Filter Arbitration: "Each filter layer is divided into sub-layers ordered
/// by priority (also called weight). Network traffic traverses sub-layers
/// from the highest priority to the lowest priority." "Within each
/// sub-layer, filters are ordered by weight." Within a sub-layer: "Evaluate
/// the matching filters in order until Permit or Block is returned ... Skip
/// the remaining filters and return the action from the last evaluated
/// filter." Within a layer: the basic policy "'Block' overrides 'Permit'";
/// the override right is "implemented as the FWPS_RIGHT_ACTION_WRITE flag";
/// a soft permit "Can block the traffic in another sub-layer", a hard
/// permit: "Only a callout Veto can block the traffic in another sub-layer",
/// a soft block "Can permit the traffic in another sub-layer", a hard block
/// cannot be overridden.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LayerArbiter {
    decided: Option<Decided>,
    /// A veto happened (a callout block over a hard permit).
    pub vetoed: bool,
    /// Within the current sublayer: a CONTINUE took the write right away
    /// ([`ContinueRights::Honoured`]).
    continue_cleared: bool,
}

impl LayerArbiter {
    /// A layer with nothing decided.
    pub const fn new() -> Self {
        Self { decided: None, vetoed: false, continue_cleared: false }
    }

    /// Starts the next sublayer.
    pub const fn next_sublayer(&mut self) {
        self.continue_cleared = false;
    }

    /// The decision so far.
    pub const fn decided(&self) -> Option<Decided> {
        self.decided
    }

    /// Is the layer hard-blocked (nothing can change it)?
    pub fn hard_blocked(&self) -> bool {
        self.decided.is_some_and(|d| d.outcome == Outcome::Block && !d.overridable)
    }

    /// `rights` a filter is called with: the write right unless a hard
    /// decision (or, under one reading, a CONTINUE without it) came first.
    pub fn rights(&self) -> u32 {
        let hard = self.decided.is_some_and(|d| !d.overridable);
        if hard || self.continue_cleared { 0 } else { FWPS_RIGHT_ACTION_WRITE }
    }

    /// `classifyOut->actionType` at a classifyFn's entry: the reading's value
    /// while the write right is there; without it, the layer's hard decision
    /// (the seed: without the right a callout "can still return
    /// FWP_ACTION_BLOCK ... to veto"; anything else leaves the decision).
    pub fn entry_action(&self, readings: &Readings) -> FWP_ACTION_TYPE {
        match self.decided {
            Some(d) if self.rights() == 0 && d.outcome == Outcome::Block => FWP_ACTION_BLOCK,
            Some(_) if self.rights() == 0 => FWP_ACTION_PERMIT,
            _ if self.rights() == 0 => FWP_ACTION_CONTINUE,
            _ => readings.entry_action_type(),
        }
    }

    /// Takes one callout filter's result. Returns whether the sublayer is
    /// done (a Permit or a Block ends it).
    pub fn take(&mut self, filter_action: FWP_ACTION_TYPE, out: &FWPS_CLASSIFY_OUT0, readings: &Readings) -> bool {
        let outcome = resolve(filter_action, out.actionType, readings);
        let write = out.rights & FWPS_RIGHT_ACTION_WRITE != 0;
        let is_callout = filter_action & wfp_ffi::FWP_ACTION_FLAG_CALLOUT != 0;
        match outcome {
            Outcome::Continue => {
                if !write && readings.continue_rights == ContinueRights::Honoured {
                    self.continue_cleared = true;
                }
                false
            }
            Outcome::Permit | Outcome::Block => {
                self.combine(Decided { outcome, overridable: write }, is_callout);
                true
            }
        }
    }

    fn combine(&mut self, new: Decided, from_callout: bool) {
        self.decided = Some(match self.decided {
            None => new,
            // "Block overrides Permit"; a soft block can be permitted.
            Some(cur) if cur.overridable => new,
            Some(cur) => match (cur.outcome, new.outcome) {
                (Outcome::Permit, Outcome::Block) if from_callout => {
                    self.vetoed = true;
                    Decided { outcome: Outcome::Block, overridable: false }
                }
                _ => cur,
            },
        });
    }

    /// The layer's final action: nothing decided is a permit.
    ///
    /// Silent in the docs for the ALE layers; the lab and the model take
    /// "no filter decided" to let the connection through.
    pub fn result(&self) -> Outcome {
        self.decided.map_or(Outcome::Permit, |d| d.outcome)
    }
}
