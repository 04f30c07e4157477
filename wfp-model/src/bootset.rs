//! The boot set (`arbiter_callout::boot`) in the model's terms: a
//! [`BootFilter`] as the [`Filter`] the service or the driver adds, and a
//! [`BootEngine`] over one model session, so the service's install and
//! removal plans run on the model's management API (`mgmt`).
//!
//! Each filter's conditions are those the FFI code writes into
//! `FWPM_FILTER_CONDITION0` (FWPM_CONDITION_FLAGS `FWP_MATCH_FLAGS_ALL_SET`
//! FWP_CONDITION_FLAG_IS_LOOPBACK; FWPM_CONDITION_IP_PROTOCOL and
//! FWPM_CONDITION_IP_REMOTE_PORT `FWP_MATCH_EQUAL`), and its flags
//! [`BootFilter::fwpm_flags`].

use arbiter_callout::boot::{
    BootCondition, BootEngine, BootFilter, PROVIDER_FLAGS, PROVIDER_KEY, SUBLAYER_FLAGS, SUBLAYER_KEY, SUBLAYER_WEIGHT,
};
use wfp_ffi::{FWP_CONDITION_FLAG_IS_LOOPBACK, GUID, NTSTATUS, STATUS_SUCCESS};

use crate::mgmt::{
    Condition, Filter, Key, STATUS_FWP_ALREADY_EXISTS, STATUS_FWP_FILTER_NOT_FOUND, STATUS_FWP_PROVIDER_NOT_FOUND,
    STATUS_FWP_SUBLAYER_NOT_FOUND, Wfp,
};

/// A GUID as the model's 128-bit key.
pub fn key(g: &GUID) -> Key {
    let mut b = [0u8; 16];
    b[..4].copy_from_slice(&g.Data1.to_be_bytes());
    b[4..6].copy_from_slice(&g.Data2.to_be_bytes());
    b[6..8].copy_from_slice(&g.Data3.to_be_bytes());
    b[8..].copy_from_slice(&g.Data4);
    u128::from_be_bytes(b)
}

/// The model filter for `f`, in our boot sublayer.
pub fn filter(f: &BootFilter) -> Filter {
    let cond = |c: Option<BootCondition>| {
        c.map(|c| match c {
            BootCondition::Loopback => Condition::FlagsAllSet(FWP_CONDITION_FLAG_IS_LOOPBACK),
            BootCondition::Protocol(p) => Condition::Protocol(p.0),
            BootCondition::RemotePort(p) => Condition::RemotePort(p),
        })
    };
    Filter {
        key: key(&f.key),
        layer: f.layer,
        sublayer: key(&SUBLAYER_KEY),
        weight: u64::from(f.weight),
        action_type: f.action,
        callout: 0,
        flags: f.fwpm_flags(),
        conditions: [cond(f.conditions[0]), cond(f.conditions[1])],
    }
}

/// One engine session of the model, for [`arbiter_callout::boot::run_plan`].
#[derive(Debug)]
pub struct Session<'a> {
    /// The model.
    pub wfp: &'a mut Wfp,
    /// The session (`engine_open`).
    pub engine: u64,
}

const fn ok(s: NTSTATUS) -> Result<(), i32> {
    if s < 0 { Err(s) } else { Ok(()) }
}

const fn added(s: NTSTATUS) -> Result<bool, i32> {
    if s == STATUS_FWP_ALREADY_EXISTS {
        Ok(false)
    } else if s < 0 {
        Err(s)
    } else {
        Ok(true)
    }
}

const fn found(s: NTSTATUS, not_found: NTSTATUS) -> Result<bool, i32> {
    if s == not_found {
        Ok(false)
    } else if s < 0 {
        Err(s)
    } else {
        Ok(s == STATUS_SUCCESS)
    }
}

impl BootEngine for Session<'_> {
    fn begin(&mut self) -> Result<(), i32> {
        ok(self.wfp.transaction_begin(self.engine))
    }
    fn commit(&mut self) -> Result<(), i32> {
        ok(self.wfp.transaction_commit(self.engine))
    }
    fn abort(&mut self) {
        let _ = self.wfp.transaction_abort(self.engine);
    }
    fn add_provider(&mut self) -> Result<bool, i32> {
        added(self.wfp.provider_add_with(self.engine, key(&PROVIDER_KEY), PROVIDER_FLAGS))
    }
    fn add_sublayer(&mut self) -> Result<bool, i32> {
        added(self.wfp.sublayer_add_with(self.engine, key(&SUBLAYER_KEY), SUBLAYER_WEIGHT, SUBLAYER_FLAGS))
    }
    fn add_filter(&mut self, f: &BootFilter) -> Result<(), i32> {
        self.wfp.filter_add(self.engine, filter(f)).map(|_| ())
    }
    fn delete_filter(&mut self, k: GUID) -> Result<bool, i32> {
        found(self.wfp.filter_delete_by_key(self.engine, key(&k)), STATUS_FWP_FILTER_NOT_FOUND)
    }
    fn delete_sublayer(&mut self) -> Result<bool, i32> {
        found(self.wfp.sublayer_delete_by_key(self.engine, key(&SUBLAYER_KEY)), STATUS_FWP_SUBLAYER_NOT_FOUND)
    }
    fn delete_provider(&mut self) -> Result<bool, i32> {
        found(self.wfp.provider_delete_by_key(self.engine, key(&PROVIDER_KEY)), STATUS_FWP_PROVIDER_NOT_FOUND)
    }
}
