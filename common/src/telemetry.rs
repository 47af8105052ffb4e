//! Logging setup for the binaries. `RUST_LOG` (or the given default)
//! selects what is logged; output goes to stderr.

use tracing_subscriber::EnvFilter;

/// Installs the global `tracing` subscriber. Safe to call more than once
/// (later calls are ignored), so tests can call it freely.
pub fn init(default_filter: &str) {
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default_filter));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(false)
        .try_init();
}
