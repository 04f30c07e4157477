//! The control device's side of the adapter.
//!
//! The wire protocol (decode, validate, apply all-or-nothing, encode) is the
//! core's [`arbiter::control::handle`]; this module only supplies its
//! [`ControlTarget`] over a [`Callout`], so that registering our proxy also
//! completes the classifications held for it.

use arbiter::control::{AuditRing, ControlTarget, RulesRejected};
use arbiter::{Counters, Instant, Policy, ProxyRegistration};

use crate::adapter::Callout;
use crate::fwps::Fwps;

/// One control request's view of the driver state (built under its lock).
pub struct Session<'a, P, D, F> {
    /// The callout state.
    pub callout: &'a mut Callout<P>,
    /// Decodes a rules blob into a policy.
    pub decode_rules: D,
    /// This driver load's id.
    pub instance: u64,
    /// Fwps calls, for completing held classifications.
    pub fwps: &'a mut F,
    /// Now.
    pub now: Instant,
}

impl<P, D, F> ControlTarget for Session<'_, P, D, F>
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
        // The flows held for the proxy can go to it now.
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
    fn ring(&mut self) -> &mut AuditRing {
        self.callout.parts_mut().1
    }
}

/// One IOCTL_CONTROL: the request and reply buffers as the I/O manager gave
/// them (METHOD_BUFFERED: the same system buffer, so the request is copied
/// first by the caller). Returns the reply length (0: reply buffer too small
/// for a header).
pub fn dispatch<P, D, F>(session: &mut Session<'_, P, D, F>, request: &[u8], reply: &mut [u8]) -> usize
where
    P: Policy,
    D: FnMut(&[u8]) -> Result<P, RulesRejected>,
    F: Fwps,
{
    arbiter::control::handle(request, session, reply)
}
