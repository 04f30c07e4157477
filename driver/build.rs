//! Configures the WDK link, as windows-drivers-rs's samples do.
//!
//! wdk-build 0.6 refuses to configure a driver (`StaticCrtNotEnabled`)
//! unless `+crt-static` is set: `.cargo/config.toml` sets it. On Linux,
//! `scripts/check-driver.sh` swaps in `ci/wdk-build-standin`, which makes
//! the same check and gives rust-lld the same WDM link arguments.
fn main() -> Result<(), wdk_build::ConfigError> {
    wdk_build::configure_wdk_binary_build()
}
