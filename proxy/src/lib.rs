//! # arbiter-proxy: the reference local proxy and control service
//!
//! The user-mode half of the arbiter. The driver redirects flows to our
//! listeners; this crate accepts them, learns where each was going from the
//! redirect context the driver attached, and connects there itself, first
//! copying the connection's WFP redirect records onto the outbound socket so
//! every redirector downstream sees the chain (decision-table.md C2, and the
//! loop the records prevent). It also registers our PID and listeners with
//! the driver and drains the driver's audit ring to rotating JSON-lines files.
//!
//! Everything but the Winsock and DeviceIoControl calls is platform-neutral
//! and tested on Linux over loopback: the calls sit behind
//! [`redirect::RedirectProvider`] and [`service::ControlChannel`], and
//! [`redirect::LoopbackProvider`] and [`service::LocalDriver`] stand in for
//! WFP and the driver.
//!
//! - [`redirect`]: the provider seam and the context decoding.
//! - [`tcp`]: the TCP relay (back-pressure, half-close, reset propagation).
//! - [`udp`]: the UDP relay, one outbound socket per redirected flow.
//! - [`service`]: registration, re-registration and the audit drain.
//! - [`auditlog`]: the rotating JSON-lines audit file.
//! - [`acl`]: who may read and write it (SYSTEM and administrators only).
//! - [`bootset`]: `install-boot` / `remove-boot`, boot-time protection in the filter engine.

#![allow(clippy::std_instead_of_core, clippy::alloc_instead_of_core, reason = "std crate: host tool")]

pub mod acl;
pub mod auditlog;
pub mod bootset;
pub mod redirect;
pub mod service;
pub mod tcp;
pub mod udp;
#[cfg(windows)]
pub mod windows;
