//! # arbiter: the policy core
//!
//! A sans-IO state machine that decides, for every WFP connect-redirect and
//! auth-connect indication, whether a flow is left alone (`continue`),
//! permitted, blocked, or sent to our local proxy, so that several vendors'
//! proxies can run on one machine without redirecting each other's
//! connections forever. The behaviour is `decision-table.md`, row by row.
//!
//! The core never reads a clock, allocates on the decision path, or panics on
//! input. The kernel driver, the lab and the fixture replayer are three
//! drivers of the same [`Arbiter`].
//!
//! - [`flow`]: the inputs, one plain struct per layer.
//! - [`decide`]: the decision table as pure functions.
//! - [`arbiter`]: the tables and the state machine around them.
//! - [`audit`]: self-contained, replayable audit records.
//! - [`policy`]: the rules seam and the reference rule set.
//! - [`context`]: the redirect context our proxy reads back.
//! - [`control`]: the control device's protocol and its handler.
//! - [`validate`]: the one validator for rules and registrations, whichever way they come in.

#![no_std]
#![cfg_attr(
    not(test),
    deny(
        clippy::unwrap_used,
        clippy::expect_used,
        clippy::panic,
        clippy::indexing_slicing,
        clippy::arithmetic_side_effects
    )
)]

extern crate alloc;
#[cfg(test)]
extern crate std;

pub mod arbiter;
pub mod audit;
pub mod boot;
pub mod compiled;
pub mod context;
pub mod control;
pub mod decide;
pub mod flow;
#[cfg(any(test, fuzzing, feature = "fuzzing"))]
pub mod fuzzing;
mod packed;
pub mod policy;
pub mod reason;
pub mod table;
pub mod time;
pub mod validate;
pub mod wide;
pub mod wire;

pub use arbiter::{Arbiter, Capacities, Config, Counters, Decision, Departures, TableId};
pub use audit::AuditRecord;
pub use decide::{EndpointEntry, Env, Outcome, ProxyRegistration, RedirectTarget, Verdict};
pub use flow::{
    AppId, AuthConnectInput, ConnectRedirectInput, ConnectRedirectRef, Family, Flow, Layer, PreviousChain,
    PreviousEntry, Protocol, RedirectState, Sid,
};
pub use policy::{Action, LoopPolicy, PermitOrBlock, Policy, RuleSet};
pub use reason::Reason;
pub use table::OutOfMemory;
pub use time::{Duration, Instant};
