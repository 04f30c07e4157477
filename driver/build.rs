//! Configures the WDK link (as the Windows-rust-driver-samples do).
fn main() -> Result<(), wdk_build::ConfigError> {
    wdk_build::configure_wdk_binary_build()
}
