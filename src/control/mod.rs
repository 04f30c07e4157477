//! The control protocol between the driver's control device and user mode.
//!
//! - [`wire`]: the request and reply format, op codes and statuses.
//! - [`ioctl`]: the device's names, one IOCTL code per op, and the access
//!   (read or write) each needs.
//! - [`handler`]: the driver side. Who the caller is ([`Caller`]) comes from
//!   the kernel, never from the request; [`handle`] checks the code, the
//!   access and the request, then applies it all or nothing to a
//!   [`ControlTarget`] and encodes the reply. [`open_handle`] and
//!   [`close_handle`] track the handles' roles.
//!
//! A malformed or refused request gets an error status (and, when the
//! request was malformed, the offset of the problem) and changes nothing.
//! User mode builds requests with [`Request`] and reads replies with
//! [`Reply`]. The audit records drained through it come from
//! [`crate::audit::ring::AuditRing`].
//!
//! Who may open the device at all is the driver's business (its device
//! object's security descriptor); what this module enforces on top is
//! written in `SECURITY.md`: read ops need a handle with read access, write
//! ops one with write access and no other writer, a registration names the
//! caller's own process, and it lasts as long as the handle it came through.

pub mod handler;
pub mod ioctl;
pub mod wire;

pub use handler::{Caller, ControlTarget, HandleId, Handles, Owner, close_handle, handle, open_handle};
pub use ioctl::{Access, DEVICE_LINK, DEVICE_NAME, DEVICE_PATH, FILE_DEVICE_ARBITER};
pub use wire::{
    COUNTERS_LEN, DRIVER_COUNTERS_LEN, Drained, DriverCounters, Info, MAX_RULES_LEN, MIN_REPLY_BUFFER, Op,
    REGISTRATION_LEN, REPLY_HEADER_LEN, REPLY_MAGIC, REQUEST_HEADER_LEN, REQUEST_MAGIC, RING_STATS_LEN, Reply,
    ReplyError, Request, RequestError, RulesRejected, Status, VERSION,
};

#[cfg(test)]
mod tests;
