//! The audit log at rest: who may read and write it.
//!
//! The audit records hold application paths, destinations and PIDs, so the
//! audit folder gets a protected DACL ([`AUDIT_SDDL`]) granting full
//! control to SYSTEM and the Administrators group and nothing to anyone
//! else; the files in it inherit it. The proxy writes there, so it refuses
//! to start unless it runs as one of them ([`may_write_audit`]): a user who
//! could not write the log must not run the service that keeps it.
//!
//! On Windows [`secure_audit_dir`] applies the DACL with
//! `SetNamedSecurityInfoW` (which also gives it to the files already there)
//! and [`running_identity`] asks the process token with
//! `CheckTokenMembership`. Elsewhere both report that nothing is enforced.

use std::io;
use std::path::Path;

/// The audit folder's security descriptor: a protected DACL (`P`: no ACE is
/// inherited from the parent folder) with two ACEs, object- and
/// container-inherited (`OICI`), granting all file access (`FA`) to
/// LocalSystem (`SY`) and the built-in Administrators (`BA`).
pub const AUDIT_SDDL: &str = "D:P(A;OICI;FA;;;SY)(A;OICI;FA;;;BA)";

/// Who the process runs as, as far as the audit log cares.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Identity {
    /// The token is LocalSystem's.
    pub system: bool,
    /// The token holds the Administrators group, enabled (an elevated administrator).
    pub administrator: bool,
}

/// May a process running as `who` keep the audit log? Only SYSTEM and
/// (elevated) administrators can write a folder with [`AUDIT_SDDL`].
pub fn may_write_audit(who: Identity) -> Result<(), String> {
    if who.system || who.administrator {
        Ok(())
    } else {
        Err("arbiter-proxy must run as SYSTEM or an elevated administrator: \
             the audit log it writes is readable and writable by them only"
            .to_owned())
    }
}

/// The running process's identity.
#[cfg(windows)]
pub fn running_identity() -> io::Result<Identity> {
    use windows_sys::Win32::Security::{
        CheckTokenMembership, CreateWellKnownSid, SECURITY_MAX_SID_SIZE, WELL_KNOWN_SID_TYPE,
        WinBuiltinAdministratorsSid, WinLocalSystemSid,
    };
    let member = |kind: WELL_KNOWN_SID_TYPE| -> io::Result<bool> {
        let mut sid = [0u8; SECURITY_MAX_SID_SIZE as usize];
        let mut len = SECURITY_MAX_SID_SIZE;
        // SAFETY: `sid` has room for the largest SID and `len` says so; no domain SID is needed for these two.
        let made = unsafe { CreateWellKnownSid(kind, std::ptr::null_mut(), sid.as_mut_ptr().cast(), &raw mut len) };
        if made == 0 {
            return Err(io::Error::last_os_error());
        }
        let mut is_member = 0;
        // SAFETY: a null token means the calling thread's (or process's) token; `sid` holds a valid SID.
        let ok = unsafe { CheckTokenMembership(std::ptr::null_mut(), sid.as_mut_ptr().cast(), &raw mut is_member) };
        if ok == 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(is_member != 0)
    };
    Ok(Identity { system: member(WinLocalSystemSid)?, administrator: member(WinBuiltinAdministratorsSid)? })
}

/// The running process's identity: not known off Windows.
#[cfg(not(windows))]
pub fn running_identity() -> io::Result<Identity> {
    Err(io::Error::new(io::ErrorKind::Unsupported, "token membership is only checked on Windows"))
}

/// Gives `dir` (and the files in it) the [`AUDIT_SDDL`] DACL.
#[cfg(windows)]
pub fn secure_audit_dir(dir: &Path) -> io::Result<()> {
    use std::os::windows::ffi::OsStrExt;
    use windows_sys::Win32::Foundation::{ERROR_SUCCESS, LocalFree};
    use windows_sys::Win32::Security::Authorization::{
        ConvertStringSecurityDescriptorToSecurityDescriptorW, SDDL_REVISION_1, SE_FILE_OBJECT, SetNamedSecurityInfoW,
    };
    use windows_sys::Win32::Security::{
        ACL, DACL_SECURITY_INFORMATION, GetSecurityDescriptorDacl, PROTECTED_DACL_SECURITY_INFORMATION,
        PSECURITY_DESCRIPTOR,
    };
    let sddl: Vec<u16> = AUDIT_SDDL.encode_utf16().chain([0]).collect();
    let mut sd: PSECURITY_DESCRIPTOR = std::ptr::null_mut();
    // SAFETY: `sddl` is NUL-terminated; on success `sd` is a LocalAlloc'd descriptor freed below.
    let ok = unsafe {
        ConvertStringSecurityDescriptorToSecurityDescriptorW(
            sddl.as_ptr(),
            SDDL_REVISION_1,
            &raw mut sd,
            std::ptr::null_mut(),
        )
    };
    if ok == 0 {
        return Err(io::Error::last_os_error());
    }
    let result = (|| {
        let (mut present, mut defaulted) = (0, 0);
        let mut dacl: *mut ACL = std::ptr::null_mut();
        // SAFETY: `sd` is the valid descriptor converted above; the out pointers are live locals.
        let ok = unsafe { GetSecurityDescriptorDacl(sd, &raw mut present, &raw mut dacl, &raw mut defaulted) };
        if ok == 0 || present == 0 {
            return Err(io::Error::other("the audit SDDL has no DACL"));
        }
        let path: Vec<u16> = dir.as_os_str().encode_wide().chain([0]).collect();
        // SAFETY: `path` is NUL-terminated; `dacl` points into `sd`, alive until LocalFree below.
        let err = unsafe {
            SetNamedSecurityInfoW(
                path.as_ptr(),
                SE_FILE_OBJECT,
                DACL_SECURITY_INFORMATION | PROTECTED_DACL_SECURITY_INFORMATION,
                std::ptr::null_mut(),
                std::ptr::null_mut(),
                dacl,
                std::ptr::null(),
            )
        };
        if err == ERROR_SUCCESS { Ok(()) } else { Err(io::Error::from_raw_os_error(err as i32)) }
    })();
    // SAFETY: `sd` came from ConvertStringSecurityDescriptorToSecurityDescriptorW (LocalAlloc).
    unsafe { LocalFree(sd.cast()) };
    result
}

/// Off Windows there is no DACL to set.
#[cfg(not(windows))]
pub fn secure_audit_dir(dir: &Path) -> io::Result<()> {
    let _ = dir;
    Err(io::Error::new(io::ErrorKind::Unsupported, "audit folder DACLs are only set on Windows"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_system_and_administrators_may_keep_the_log() {
        let who = |system, administrator| Identity { system, administrator };
        assert!(may_write_audit(who(true, false)).is_ok());
        assert!(may_write_audit(who(false, true)).is_ok());
        assert!(may_write_audit(who(false, false)).unwrap_err().contains("SYSTEM or an elevated administrator"));
    }

    /// The DACL names exactly SYSTEM and Administrators, protected from
    /// inheritance, and nobody else (no Users, Authenticated Users, Everyone).
    #[test]
    fn the_audit_dacl_grants_system_and_administrators_only() {
        let dacl = AUDIT_SDDL.strip_prefix("D:P").expect("a protected DACL");
        let aces: Vec<&str> = dacl.trim_matches(|c| c == '(' || c == ')').split(")(").collect();
        let trustees: Vec<&str> = aces.iter().map(|a| a.rsplit(';').next().unwrap()).collect();
        assert_eq!(trustees, ["SY", "BA"]);
        assert!(aces.iter().all(|a| a.starts_with("A;OICI;FA;")), "{aces:?}");
    }
}
