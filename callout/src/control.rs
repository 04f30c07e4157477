//! The control device's side of the adapter: the one [`ControlTarget`].
//!
//! The wire protocol, the access checks and the handles' roles are the
//! core's ([`arbiter::control::handle`], [`arbiter::control::open_handle`],
//! [`arbiter::control::close_handle`]);
//! this module supplies the target they act on: the [`Callout`] and the
//! [`Handles`] the driver keeps beside it. Registering our proxy decides
//! the classifications held for it (the driver completes them once its lock
//! is released, with [`crate::shell::complete_pended`]); closing the handle that registered it
//! unregisters it at once, so from that moment flows that would go to it
//! take the no-proxy path (held, then the fallback) instead.

use arbiter::audit::ring::AuditRing;
use arbiter::control::{Caller, ControlTarget, DriverCounters, HandleId, Handles, RulesRejected, Status};
use arbiter::{Counters, Instant, Policy, ProxyRegistration};

use crate::adapter::Callout;
use crate::fwps::Fwps;

/// One control request's view of the driver state (built under its lock).
pub struct Device<'a, P, D, F> {
    /// The callout state.
    pub callout: &'a mut Callout<P>,
    /// The open handles' roles (kept by the driver beside the callout).
    pub handles: &'a mut Handles,
    /// Decodes a rules blob into a policy.
    pub decode_rules: D,
    /// This driver load's id.
    pub instance: u64,
    /// Fwps calls, for completing held classifications.
    pub fwps: &'a mut F,
    /// Now.
    pub now: Instant,
    /// The driver's own counters, as read before the request (the boot
    /// guard's failed override adds: `Lifecycle::override_failures`).
    pub driver_counters: DriverCounters,
}

impl<P, D, F> ControlTarget for Device<'_, P, D, F>
where
    P: Policy,
    D: FnMut(&[u8]) -> Result<P, RulesRejected>,
    F: Fwps,
{
    fn instance(&self) -> u64 {
        self.instance
    }
    fn load_rules(&mut self, blob: &[u8]) -> Result<u32, RulesRejected> {
        let policy = (self.decode_rules)(blob)?;
        drop(self.callout.arbiter_mut().replace_policy(policy));
        Ok(self.callout.arbiter().policy().id())
    }
    fn rules_id(&self) -> u32 {
        self.callout.arbiter().policy().id()
    }
    fn register_proxy(&mut self, r: ProxyRegistration) -> Result<(), arbiter::arbiter::SetProxyError> {
        self.callout.arbiter_mut().set_proxy(r.pid, r.v4, r.v6)?;
        // The flows held for the proxy can go to it now: decided here, under
        // the driver's lock; their WFP completions run after it
        // (`shell::complete_pended`).
        self.callout.complete_pended(self.fwps, self.now);
        Ok(())
    }
    fn unregister_proxy(&mut self) {
        self.callout.arbiter_mut().clear_proxy();
    }
    fn proxy(&self) -> Option<ProxyRegistration> {
        self.callout.arbiter().proxy().copied()
    }
    fn counters(&self) -> Counters {
        *self.callout.arbiter().counters()
    }
    fn driver_counters(&self) -> DriverCounters {
        self.driver_counters
    }
    fn ring(&mut self) -> &mut AuditRing {
        self.callout.parts_mut().1
    }
    fn handles(&mut self) -> &mut Handles {
        self.handles
    }
}

/// `IRP_MJ_CREATE`: admits a handle (see [`arbiter::control::open_handle`]).
pub fn open<P, D, F>(device: &mut Device<'_, P, D, F>, caller: &Caller) -> Status
where
    P: Policy,
    D: FnMut(&[u8]) -> Result<P, RulesRejected>,
    F: Fwps,
{
    arbiter::control::open_handle(device, caller)
}

/// `IRP_MJ_DEVICE_CONTROL`: one request with its IOCTL code, as the I/O
/// manager gave it (METHOD_BUFFERED: one system buffer, so the caller
/// copies the request out first). Returns the reply length (0: reply buffer
/// too small for a header).
pub fn dispatch<P, D, F>(
    device: &mut Device<'_, P, D, F>,
    ioctl: u32,
    caller: &Caller,
    request: &[u8],
    reply: &mut [u8],
) -> usize
where
    P: Policy,
    D: FnMut(&[u8]) -> Result<P, RulesRejected>,
    F: Fwps,
{
    arbiter::control::handle(ioctl, caller, request, device, reply)
}

/// `IRP_MJ_CLEANUP`: the handle is gone (closed, or its process died).
pub fn cleanup<P, D, F>(device: &mut Device<'_, P, D, F>, handle: HandleId)
where
    P: Policy,
    D: FnMut(&[u8]) -> Result<P, RulesRejected>,
    F: Fwps,
{
    arbiter::control::close_handle(device, handle);
}
