//! # arbiter-callout: the WFP classify adapter
//!
//! Between the kernel's `classifyFn` and the policy core. It reads one
//! indication (incoming values by each layer's own field indexes, metadata by
//! their `FWPS_METADATA_FIELD_*` presence bits, the whole previousVersion
//! chain, the classify rights and condition flags) into the core's input,
//! asks [`arbiter::Arbiter`] for a decision, and writes the verdict back
//! exactly as `decision-table.md`'s verdict table says.
//!
//! Every Fwps call goes through the [`Fwps`] trait: the driver implements it
//! over the real `fwpkclnt.sys` imports, the tests over fakes that build the
//! same `#[repr(C)]` structures WFP hands a callout. Nothing here reads a
//! clock or allocates after start-up; time comes in as an argument.
//!
//! - [`read`]: indication to core input, with errors naming the field.
//! - [`sockaddr`]: `SOCKADDR_*` to and from `core::net`.
//! - [`adapter`]: the [`Callout`] state and the three classify entry points.
//! - [`pend`]: classifications held while no proxy is registered.
//! - [`complete`]: their completions, queued under the lock and run without it.
//! - [`control`]: the control device's target (rules, proxy, audit, counters).
//! - [`shell`]: the driver's lifecycle (entry, BFE, unload) behind a kernel trait.
//! - `kernel` (Windows only): [`Fwps`] over the real imports.

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

pub mod adapter;
pub mod bind;
pub mod boot;
pub mod boot_fwpm;
pub mod complete;
pub mod control;
pub mod filters;
pub mod fwps;
// Kernel builds only (x86_64-pc-windows-msvc): the import of the WDK's
// static `wdmsec.lib` would otherwise be demanded by every user-mode Windows
// binary that links this crate (arbiter.exe and arbiter-proxy.exe, built
// with MinGW and run under Wine in CI).
#[cfg(all(windows, target_env = "msvc"))]
pub mod kernel;
pub mod pend;
pub mod read;
pub mod shell;
pub mod sockaddr;

#[cfg(test)]
mod tests;

pub use adapter::{AdapterCounters, Callout, CalloutConfig, Family, OWN_FILTER};
pub use fwps::Fwps;
pub use pend::{Fallback, PendConfig, PendTimer};
pub use read::ReadError;
