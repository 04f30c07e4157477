//! # arbiter-wfp-model: the Windows Filtering Platform as documented
//!
//! A model of the parts of WFP the arbiter driver meets, written from
//! Microsoft's pages and the seeds; every behaviour names its source in its
//! doc comment. Where the documentation is silent or ambiguous the model
//! offers each reading as a switch ([`Readings`]); tests run every reading
//! ([`Readings::all`]). Mistakes that would bugcheck or hang a real machine
//! (IRQL violations, a recursive spin lock, a leaked classify handle, an
//! unapplied writable acquire, a double-freed redirect context) panic, so
//! they fail the test that made them.
//!
//! ## API
//!
//! Runtime (what a classifyFn calls), [`Runtime`], implements
//! [`arbiter_callout::Fwps`], so the real adapter runs on it:
//! - [`Runtime::begin_classify`] / [`Runtime::end_classify`] bracket one
//!   connect-redirect classifyFn call over [`ConnectData`] (its
//!   `classifyContext` and redirect-records handle are the returned id);
//! - [`Indication`] builds the classifyFn's raw arguments for a [`FlowInfo`]
//!   at a [`FilterLayer`];
//! - [`Runtime::pended`], [`Runtime::take_completed`],
//!   [`Runtime::assert_quiescent`] for pend/complete;
//! - [`Runtime::kernel`]: a [`Kernel`] with IRQL ([`Kernel::at`],
//!   [`Kernel::call`] checks a [`Routine`] against its documented maximum),
//!   spin locks ([`Kernel::acquire_spin_lock`], recursive acquire panics as a
//!   deadlock; [`Kernel::mark_classify_lock`] for the re-entry reading), and
//!   timers ([`Kernel::new_timer`], [`Kernel::set_timer`],
//!   [`Kernel::advance`] returns the fired timers).
//!
//! Management, [`Wfp`] (owns a [`Runtime`] as `rt`):
//! - BFE: [`Wfp::bfe_state`], [`Wfp::set_bfe_state`] (calls subscribers),
//!   [`Wfp::bfe_subscribe`], [`Wfp::bfe_unsubscribe`];
//! - engine: [`Wfp::engine_open`] (fails while the BFE is not running),
//!   [`Wfp::engine_close`] (a double close panics), transactions
//!   ([`Wfp::transaction_begin`], [`Wfp::transaction_commit`],
//!   [`Wfp::transaction_abort`]);
//! - objects: [`Wfp::provider_add`], [`Wfp::sublayer_add`],
//!   [`Wfp::callout_add`], [`Wfp::filter_add`] (returns the run-time id),
//!   [`Wfp::filter_delete`];
//! - callouts: [`Wfp::callout_register`] (a [`ClassifyFn`]),
//!   [`Wfp::callout_unregister_by_id`] (`STATUS_DEVICE_BUSY` while flow
//!   contexts remain; filters of an unregistered callout act as BLOCK);
//! - classification: [`Wfp::classify`] runs one layer in arbitration order,
//!   [`Wfp::classify_values`] with a flow's [`mgmt::Values`] for filters
//!   with conditions;
//! - persistence: [`Wfp::reboot`]; persistent and boot-time filters and
//!   when each is in force; deletes by key
//!   ([`Wfp::filter_delete_by_key`], [`Wfp::sublayer_delete_by_key`],
//!   [`Wfp::provider_delete_by_key`]);
//! - [`bootset`]: the boot set as model filters, and a
//!   `arbiter_callout::boot::BootEngine` over a model session.
//!
//! The pieces: [`arbitration`] (action types, filter arbitration),
//! [`layer_data`] (handles, writable data, pend/complete, contexts),
//! [`redirect`] (records and states), [`kernel`] (IRQL, locks, timers),
//! [`mgmt`] (BFE, objects, registration), [`indication`], [`readings`].

#![allow(clippy::std_instead_of_core, clippy::alloc_instead_of_core, reason = "std crate: a host-side model")]
#![allow(clippy::vec_box, reason = "boxed WFP structures keep the addresses the pointers handed out refer to")]

pub mod arbitration;
pub mod bind;
pub mod bootset;
pub mod indication;
pub mod kernel;
pub mod layer_data;
pub mod mgmt;
pub mod readings;
pub mod redirect;

#[cfg(test)]
mod tests;

pub use arbiter_callout::filters::FilterLayer;
pub use arbitration::{LayerArbiter, Outcome, resolve};
pub use indication::{FlowInfo, Indication};
pub use kernel::{Irql, Kernel, Routine, SpinLockId, TimerId};
pub use layer_data::{Applied, Completed, ConnectData, Pended, Runtime, Version};
pub use mgmt::{ClassifyFn, Filter, Key, Wfp};
pub use readings::Readings;
pub use redirect::{RedirectRecord, redirect_state};
