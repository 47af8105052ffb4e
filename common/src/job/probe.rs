//! `probe`: report the host's facts (a preflight).

use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::KindSpec;

/// `probe`'s spec: nothing to configure.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProbeSpec {}

/// A probe asks the local Docker engine and PostgreSQL, each with its own
/// short deadline; this only stops one that hangs anyway.
pub const PROBE_TIMEOUT: Duration = Duration::from_secs(120);

impl KindSpec for ProbeSpec {
    const NAME: &'static str = "probe";
    const CLI: &'static [&'static str] = &["probe"];
    const DOC: &'static str =
        "Report the host's facts: OS, CPUs, memory, disks, Docker, PostgreSQL, clock offset.";

    fn timeout(&self) -> Duration {
        PROBE_TIMEOUT
    }
}
