//! Linux CI stand-in for `wdk-build` 0.6, used only through the `[patch]` in
//! `driver/ci/linux.toml`.
//!
//! The real wdk-build cannot even compile on Linux (it depends on the
//! `windows` crate) and looks for the WDK. What the driver's build needs from
//! it is small, and this crate does exactly that for a WDM driver:
//!
//! - [`configure_wdk_library_build`] (build scripts of wdk, wdk-alloc,
//!   wdk-panic): the `driver_model__driver_type` cfg and its check-cfg;
//! - [`configure_wdk_binary_build`] (the driver's build script): the same
//!   `+crt-static` check as wdk-build 0.6 ([`ConfigError::StaticCrtNotEnabled`]),
//!   then the WDM link arguments wdk-build 0.6 emits, minus those lld-link
//!   does not take (`/KERNEL`, `/MAPINFO:EXPORTS`, `/IGNORE:*`), and a
//!   stand-in `wdmsec.lib` on the link path (the WDK's is Windows-only).

use std::fmt;

/// The errors this stand-in can return (a subset of wdk-build's).
#[derive(Debug)]
#[non_exhaustive]
pub enum ConfigError {
    /// The C runtime is not linked statically (`-C target-feature=+crt-static`).
    StaticCrtNotEnabled,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::StaticCrtNotEnabled => f.write_str(
                "the C runtime is not statically linked: set `-C target-feature=+crt-static` \
                 (driver/.cargo/config.toml)",
            ),
        }
    }
}

impl std::error::Error for ConfigError {}

/// The cfg wdk-build exports, with the values it allows.
const DRIVER_TYPE_CFG: &str = "driver_model__driver_type";

fn emit_cfg() {
    println!("cargo::rustc-check-cfg=cfg({DRIVER_TYPE_CFG}, values(\"WDM\",\"KMDF\",\"UMDF\",))");
    println!("cargo::rustc-cfg={DRIVER_TYPE_CFG}=\"WDM\"");
}

/// For the WDK's library crates: their cfg settings (always WDM here).
///
/// # Errors
///
/// None; the signature is wdk-build's.
pub fn configure_wdk_library_build() -> Result<(), ConfigError> {
    emit_cfg();
    Ok(())
}

/// For the driver crate: the `+crt-static` check, the WDM link arguments,
/// the cfg settings.
///
/// # Errors
///
/// [`ConfigError::StaticCrtNotEnabled`] without `+crt-static`, as wdk-build 0.6.
pub fn configure_wdk_binary_build() -> Result<(), ConfigError> {
    let features = std::env::var("CARGO_CFG_TARGET_FEATURE").unwrap_or_default();
    if !features.split(',').any(|f| f == "crt-static") {
        return Err(ConfigError::StaticCrtNotEnabled);
    }
    for arg in [
        "/DRIVER",
        "/NODEFAULTLIB",
        "/SUBSYSTEM:NATIVE",
        "/ENTRY:DriverEntry",
        "/NXCOMPAT",
        "/DYNAMICBASE",
        "/OPT:REF,ICF",
        "/INTEGRITYCHECK",
        "/MANIFEST:NO",
        // wdk-build always asks for a map file; scripts/check-driver.sh reads
        // it to name the functions whose stack frames it measures.
        "/MAP",
        // rustc exports DriverEntry from the cdylib (wdk-build ignores the
        // MSVC warning about it); keep the export directory in .rdata.
        "/MERGE:.edata=.rdata",
    ] {
        println!("cargo::rustc-cdylib-link-arg={arg}");
    }
    wdmsec_standin();
    emit_cfg();
    Ok(())
}

/// Builds `wdmsec.lib` (see `wdmsec.rs`) into the build script's `OUT_DIR`
/// with the same rustc, and puts it on the link path: the driver links
/// `wdmsec` as it does with the WDK.
fn wdmsec_standin() {
    use std::path::PathBuf;
    use std::process::Command;
    let out = PathBuf::from(std::env::var("OUT_DIR").unwrap_or_default());
    let rustc = std::env::var("RUSTC").unwrap_or_else(|_| "rustc".into());
    let target = std::env::var("TARGET").unwrap_or_else(|_| "x86_64-pc-windows-msvc".into());
    let source = out.join("wdmsec.rs");
    let object = out.join("wdmsec.obj");
    std::fs::write(&source, include_str!("wdmsec.rs")).unwrap_or_else(|e| panic!("{}: {e}", source.display()));
    let ok = Command::new(&rustc)
        .args(["--crate-type", "lib", "--crate-name", "wdmsec", "--edition", "2024", "--emit"])
        .arg(format!("obj={}", object.display()))
        .args(["-C", "panic=abort", "-C", "opt-level=2", "-C", "codegen-units=1", "--target", &target])
        .arg(&source)
        .status()
        .is_ok_and(|s| s.success());
    assert!(ok, "rustc could not build the wdmsec stand-in");
    let sysroot = Command::new(&rustc).args(["--print", "sysroot"]).output().expect("rustc --print sysroot");
    let sysroot = String::from_utf8_lossy(&sysroot.stdout).trim().to_owned();
    let host = std::env::var("HOST").unwrap_or_else(|_| "x86_64-unknown-linux-gnu".into());
    let lld = PathBuf::from(sysroot).join("lib/rustlib").join(host).join("bin/rust-lld");
    let ok = Command::new(&lld)
        .args(["-flavor", "link", "/lib"])
        .arg(format!("/out:{}", out.join("wdmsec.lib").display()))
        .arg(&object)
        .status()
        .is_ok_and(|s| s.success());
    assert!(ok, "{}: could not archive the wdmsec stand-in", lld.display());
    println!("cargo::rustc-link-search=native={}", out.display());
}
