//! The exhaustive interop explorer: every combination, up to a bound, of
//! vendors, weight orders, trust settings, record propagation and the
//! interleaving of several application connections over one shared engine.
//!
//! The fixed matrix ([`crate::scenario`]) runs one connection through one
//! peer. Loops can also hide in *state*: our arbiter's hop counters (C8),
//! its learned local proxies (A6) and its cached verdicts are shared by
//! every connection on the machine, and an auth-blocker learns proxies too.
//! So the explorer puts two or three application connections on one
//! [`Engine`](crate::engine::Engine) and classifies them phase by phase (connect-redirect, then
//! auth-connect, see [`Engine::connect_phase`](crate::engine::Engine::connect_phase)), in every order.
//!
//! ## How the state space is searched
//!
//! A depth-first search over *abstract states*. The core's tables cannot be
//! cloned, so the search keeps one live machine along the current path and
//! rebuilds it (a fresh machine plus a replay of the path) to try another
//! branch. Two paths that reach the same abstract state are merged; the
//! abstract state is everything the future depends on:
//!
//! - each connection's phase, its connection (addresses, process, app ids,
//!   redirect records), and, between the two layers, the connect-redirect
//!   decisions and layer data;
//! - our arbiter's shared tables as its decisions define them
//!   (decision-table.md): one hop per `proxy` verdict and destination, one
//!   learned proxy per `redirected-by-other-observed`; the explorer checks
//!   this summary against the live core after every step (table occupancy,
//!   [`arbiter::Arbiter::is_learned_proxy`]) and reports any mismatch as a
//!   model error, never silently;
//! - the proxies every auth-blocker has learned.
//!
//! Endpoint handles, local ports and the clock are left out: the core only
//! compares endpoints for equality, no rule reads a local port, and no
//! execution lasts as long as the shortest window or time-to-live (checked
//! after every step). A connection whose state recurs (ignoring its hop
//! index) together with everything else on the path can go round forever;
//! it is reported as a loop at once instead of after [`MAX_CHAIN`](crate::engine::MAX_CHAIN)
//! connections, which keeps the baseline's counterexamples short.
//!
//! Fails (panics) never; a configuration whose rules cannot be built is
//! reported as a model error.

mod report;
mod search;
mod setups;
mod world;

pub use report::{Counterexample, Exploration, Findings, SetupResult, Tally};
pub use search::{explore_all, explore_setup, run};
pub use setups::{
    Bounds, ConnSpec, LoopSettings, PeerSpec, RulesCache, Setup, connection_sets, peer_identity, permutations,
    rules_text, setups,
};
