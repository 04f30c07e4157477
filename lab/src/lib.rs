//! # arbiter-lab: the interop lab and the fixture replayer
//!
//! A deterministic model of the WFP redirect machinery (lab.md) that runs the
//! real policy core next to models of other vendors' drivers, and the
//! redirect-chain fixtures (formats.md) that record and replay what the core
//! was asked.
//!
//! - [`fixture`]: the fixture format: parse with positions, validate, write.
//! - [`replay`]: run a fixture against a fresh [`arbiter::Arbiter`].
//! - [`rules`]: load rule sets (delegates to the rules crate).
//! - [`engine`]: the WFP engine model.
//! - [`dot`]: Graphviz pictures of redirect chains.
//! - [`audit_log`]: driver audit logs: describe, to fixture, invariant checks.
//! - [`profiles`]: peer vendor profiles.
//! - [`ours`]: the real core behind the engine's callout seam.
//! - [`scenario`]: scenarios, the matrix, and the [`scenario::Lab`] harness.
//! - [`machine`]: a real machine's vendors, simulated (`arbiter lab --setup`).
//! - [`explore`]: the exhaustive interop explorer (vendors, weight orders,
//!   trust, record propagation, interleaved connections).

#![allow(clippy::std_instead_of_core, clippy::alloc_instead_of_core, reason = "std crate: host tool")]

pub mod audit_log;
pub mod bind;
pub mod boot;
pub mod dot;
pub mod engine;
pub mod explore;
pub mod fixture;
pub mod machine;
pub mod ours;
pub mod profiles;
pub mod replay;
pub mod rules;
pub mod scenario;
