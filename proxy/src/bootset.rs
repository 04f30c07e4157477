//! `arbiter-proxy install-boot` / `remove-boot`: boot-time protection
//! (`[boot] mode = "block"`) added to or removed from the machine's filter
//! engine, in one FWPM transaction.
//!
//! What is added and in which order is `arbiter_callout::boot`'s plan
//! ([`install_plan`], [`remove_plan`]), run by
//! [`arbiter_callout::boot::run_plan`] over an engine session: here the
//! real one (`FwpmSession`, Windows only), in the tests the WFP model's.
//! The structures are `arbiter_callout::boot_fwpm`'s, over `wfp-ffi`'s
//! layout-checked `FWPM_*` declarations, the same the driver uses.
//!
//! Removal needs neither the rules nor the driver: it deletes every object
//! our boot provider can own, by key, so it also recovers a machine whose
//! driver is gone.
//!
//! Sources (learn.microsoft.com, fwpmu.h): FwpmEngineOpen0 (a session
//! without `FWPM_SESSION_FLAG_DYNAMIC`, so the objects outlive it),
//! FwpmTransactionBegin0/Commit0/Abort0, FwpmProviderAdd0, FwpmSubLayerAdd0,
//! FwpmFilterAdd0, FwpmFilterDeleteByKey0, FwpmSubLayerDeleteByKey0,
//! FwpmProviderDeleteByKey0, "WFP Error Codes" (`FWP_E_*_NOT_FOUND`).

use arbiter::boot::BootConfig;
use arbiter::compiled::blob::decode_rule_set;
use arbiter_callout::boot::{BootEngine, PlanDone, PlanFailed, install_plan, remove_plan, run_plan};

/// The `[boot]` section of a compiled rules blob (`arbiter rules compile`).
///
/// # Errors
///
/// The blob does not decode (the decoder's reason).
pub fn config_from_blob(blob: &[u8]) -> Result<BootConfig, String> {
    decode_rule_set(blob).map(|rs| rs.boot).map_err(|e| format!("not a valid rules blob: {e}"))
}

/// Installs the set for `config` (in open mode: removes it), replacing any
/// set installed before, in one transaction.
///
/// # Errors
///
/// The failing step; the transaction was aborted, nothing changed.
pub fn install<E: BootEngine>(engine: &mut E, config: &BootConfig) -> Result<PlanDone, PlanFailed> {
    run_plan(engine, install_plan(config))
}

/// Removes every object of our boot provider, in one transaction.
///
/// # Errors
///
/// The failing step; the transaction was aborted, nothing changed.
pub fn remove<E: BootEngine>(engine: &mut E) -> Result<PlanDone, PlanFailed> {
    run_plan(engine, remove_plan())
}

/// A failure as one line.
pub fn describe(e: &PlanFailed) -> String {
    match e.step {
        Some(step) => format!("{step:?} failed with 0x{:08x}; nothing was changed", e.status),
        None => format!("the transaction failed with 0x{:08x}; nothing was changed", e.status),
    }
}

#[cfg(windows)]
pub use self::windows::FwpmSession;

#[cfg(windows)]
mod windows {
    use std::ffi::c_void;
    use std::ptr::{null, null_mut};

    use arbiter_callout::boot::{BootEngine, BootFilter, PROVIDER_KEY, SUBLAYER_KEY};
    use arbiter_callout::boot_fwpm;
    use wfp_ffi::{
        FWPM_DISPLAY_DATA0, FWPM_FILTER0, FWPM_PROVIDER0, FWPM_SESSION0, FWPM_SUBLAYER0, GUID, HANDLE,
        RPC_C_AUTHN_DEFAULT,
    };

    // fwpuclnt.dll (user mode): the routines return a Win32 error or FWP_E_* code.
    #[link(name = "fwpuclnt")]
    unsafe extern "system" {
        fn FwpmEngineOpen0(
            serverName: *const u16,
            authnService: u32,
            authIdentity: *mut c_void,
            session: *const FWPM_SESSION0,
            engineHandle: *mut HANDLE,
        ) -> u32;
        fn FwpmEngineClose0(engineHandle: HANDLE) -> u32;
        fn FwpmTransactionBegin0(engineHandle: HANDLE, flags: u32) -> u32;
        fn FwpmTransactionCommit0(engineHandle: HANDLE) -> u32;
        fn FwpmTransactionAbort0(engineHandle: HANDLE) -> u32;
        fn FwpmProviderAdd0(engineHandle: HANDLE, provider: *const FWPM_PROVIDER0, sd: *mut c_void) -> u32;
        fn FwpmSubLayerAdd0(engineHandle: HANDLE, subLayer: *const FWPM_SUBLAYER0, sd: *mut c_void) -> u32;
        fn FwpmFilterAdd0(engineHandle: HANDLE, filter: *const FWPM_FILTER0, sd: *mut c_void, id: *mut u64) -> u32;
        fn FwpmFilterDeleteByKey0(engineHandle: HANDLE, key: *const GUID) -> u32;
        fn FwpmSubLayerDeleteByKey0(engineHandle: HANDLE, key: *const GUID) -> u32;
        fn FwpmProviderDeleteByKey0(engineHandle: HANDLE, key: *const GUID) -> u32;
    }

    /// `FWP_E_FILTER_NOT_FOUND`.
    const FWP_E_FILTER_NOT_FOUND: u32 = 0x8032_0003;
    /// `FWP_E_PROVIDER_NOT_FOUND`.
    const FWP_E_PROVIDER_NOT_FOUND: u32 = 0x8032_0005;
    /// `FWP_E_SUBLAYER_NOT_FOUND`.
    const FWP_E_SUBLAYER_NOT_FOUND: u32 = 0x8032_0007;
    /// `FWP_E_ALREADY_EXISTS`.
    const FWP_E_ALREADY_EXISTS: u32 = 0x8032_0009;

    /// "arbiter boot protection", NUL-terminated UTF-16.
    fn name() -> Vec<u16> {
        "arbiter boot protection".encode_utf16().chain([0]).collect()
    }

    fn ok(status: u32) -> Result<(), i32> {
        if status == 0 { Ok(()) } else { Err(status as i32) }
    }

    /// `Ok(false)`: the object was there already.
    fn added(status: u32) -> Result<bool, i32> {
        match status {
            0 => Ok(true),
            FWP_E_ALREADY_EXISTS => Ok(false),
            s => Err(s as i32),
        }
    }

    fn found(status: u32, not_found: u32) -> Result<bool, i32> {
        match status {
            0 => Ok(true),
            s if s == not_found => Ok(false),
            s => Err(s as i32),
        }
    }

    /// A session to the local filter engine (not dynamic: what it adds stays).
    #[derive(Debug)]
    pub struct FwpmSession {
        engine: HANDLE,
        name: Vec<u16>,
    }

    impl FwpmSession {
        /// `FwpmEngineOpen0` on the local machine (administrators only).
        ///
        /// # Errors
        ///
        /// The routine's status (e.g. the BFE is not running, access denied).
        pub fn open() -> Result<Self, i32> {
            let mut name = name();
            let session = FWPM_SESSION0 {
                sessionKey: GUID::default(),
                displayData: FWPM_DISPLAY_DATA0 { name: name.as_mut_ptr(), description: null_mut() },
                flags: 0,
                txnWaitTimeoutInMSec: 0,
                processId: 0,
                sid: null_mut(),
                username: null_mut(),
                kernelMode: 0,
            };
            let mut engine: HANDLE = null_mut();
            // SAFETY: a local session description and an out pointer; no server name or identity.
            ok(unsafe { FwpmEngineOpen0(null(), RPC_C_AUTHN_DEFAULT, null_mut(), &session, &mut engine) })?;
            Ok(Self { engine, name })
        }
    }

    impl Drop for FwpmSession {
        fn drop(&mut self) {
            // SAFETY: the handle opened in `open`, closed once (an open transaction is aborted).
            let _ = unsafe { FwpmEngineClose0(self.engine) };
        }
    }

    impl BootEngine for FwpmSession {
        fn begin(&mut self) -> Result<(), i32> {
            // SAFETY: our open engine.
            ok(unsafe { FwpmTransactionBegin0(self.engine, 0) })
        }
        fn commit(&mut self) -> Result<(), i32> {
            // SAFETY: our open engine, in a transaction.
            ok(unsafe { FwpmTransactionCommit0(self.engine) })
        }
        fn abort(&mut self) {
            // SAFETY: our open engine, in a transaction.
            let _ = unsafe { FwpmTransactionAbort0(self.engine) };
        }
        fn add_provider(&mut self) -> Result<bool, i32> {
            let p = boot_fwpm::provider(self.name.as_mut_ptr());
            // SAFETY: our open engine; `p` and its name live across the call; default security.
            added(unsafe { FwpmProviderAdd0(self.engine, &p, null_mut()) })
        }
        fn add_sublayer(&mut self) -> Result<bool, i32> {
            let mut provider = GUID::default();
            let s = boot_fwpm::sublayer(&mut provider, self.name.as_mut_ptr());
            // SAFETY: as above; `provider` lives across the call.
            added(unsafe { FwpmSubLayerAdd0(self.engine, &s, null_mut()) })
        }
        fn add_filter(&mut self, filter: &BootFilter) -> Result<(), i32> {
            let (mut conditions, mut provider) = ([boot_fwpm::NO_CONDITION; 2], GUID::default());
            let f = boot_fwpm::filter(filter, &mut conditions, &mut provider, self.name.as_mut_ptr());
            // SAFETY: as above; the conditions and provider key live across the call; no id wanted.
            ok(unsafe { FwpmFilterAdd0(self.engine, &f, null_mut(), null_mut()) })
        }
        fn delete_filter(&mut self, key: GUID) -> Result<bool, i32> {
            // SAFETY: our open engine and a key on our stack.
            found(unsafe { FwpmFilterDeleteByKey0(self.engine, &key) }, FWP_E_FILTER_NOT_FOUND)
        }
        fn delete_sublayer(&mut self) -> Result<bool, i32> {
            // SAFETY: as above (a static key).
            found(unsafe { FwpmSubLayerDeleteByKey0(self.engine, &SUBLAYER_KEY) }, FWP_E_SUBLAYER_NOT_FOUND)
        }
        fn delete_provider(&mut self) -> Result<bool, i32> {
            // SAFETY: as above.
            found(unsafe { FwpmProviderDeleteByKey0(self.engine, &PROVIDER_KEY) }, FWP_E_PROVIDER_NOT_FOUND)
        }
    }
}

#[cfg(test)]
mod tests {
    use arbiter::RuleSet;
    use arbiter::boot::{BootAllow, BootMode};
    use arbiter::compiled::blob::encode;
    use arbiter_wfp_model::bootset::Session;
    use arbiter_wfp_model::mgmt::Values;
    use arbiter_wfp_model::{FilterLayer, Outcome, Readings, Wfp};

    use super::*;

    fn blob(boot: BootConfig) -> Vec<u8> {
        encode(&RuleSet { boot, ..RuleSet::default() }).expect("encodes")
    }

    const WEB: Values = Values { flags: 0, protocol: 6, remote_port: 443 };

    fn web(wfp: &mut Wfp) -> Outcome {
        wfp.classify_values(FilterLayer::AuthConnectV4, &WEB)
    }

    /// `install-boot BLOB` then `remove-boot`, each in its own session, on
    /// the model; the set survives a reboot in between and blocks before
    /// the BFE starts; removal needs no driver.
    #[test]
    fn install_from_a_blob_then_remove_on_the_model() {
        let mut boot = BootConfig { mode: BootMode::Block, ..BootConfig::default() };
        boot.allow.push(BootAllow::tcp(443));
        boot.canonicalize();
        let config = config_from_blob(&blob(boot)).expect("decodes");
        let mut wfp = Wfp::new(Readings::default());
        let engine = wfp.engine_open().expect("open");
        let done = install(&mut Session { wfp: &mut wfp, engine }, &config).expect("installed");
        wfp.engine_close(engine);
        assert_eq!(done.added, 2 + 2 * 2 * (2 + config.allow.len()));
        assert_eq!(web(&mut wfp), Outcome::Permit, "443 is on this allow-list");
        let other = Values { flags: 0, protocol: 6, remote_port: 22 };
        assert_eq!(wfp.classify_values(FilterLayer::AuthConnectV4, &other), Outcome::Block);
        wfp.reboot();
        assert_eq!(wfp.classify_values(FilterLayer::AuthConnectV4, &other), Outcome::Block, "boot-time twin");
        wfp.set_bfe_state(wfp_ffi::FWPM_SERVICE_RUNNING);
        let engine = wfp.engine_open().expect("open");
        let done = remove(&mut Session { wfp: &mut wfp, engine }).expect("removed");
        wfp.engine_close(engine);
        assert_eq!(done.deleted, 2 + 2 * 2 * (2 + config.allow.len()));
        assert!(wfp.filters().is_empty() && wfp.sublayers().is_empty() && wfp.providers().is_empty());
        assert_eq!(wfp.classify_values(FilterLayer::AuthConnectV4, &other), Outcome::Permit);
    }

    #[test]
    fn an_open_mode_blob_installs_nothing_and_a_bad_blob_is_refused() {
        let config = config_from_blob(&blob(BootConfig::default())).expect("decodes");
        let mut wfp = Wfp::new(Readings::default());
        let engine = wfp.engine_open().expect("open");
        let done = install(&mut Session { wfp: &mut wfp, engine }, &config).expect("nothing to do");
        assert_eq!(done, PlanDone::default());
        assert!(config_from_blob(b"not a blob").is_err());
        let e = PlanFailed { step: None, status: 0x8032_0001_u32 as i32 };
        assert!(describe(&e).contains("0x80320001"));
    }
}
