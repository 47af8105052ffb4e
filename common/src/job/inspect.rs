//! `inspect`: what runs on a host for an app: its containers, their
//! release, state, health and hash, for `ferry status --app`.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::KindSpec;

/// A list of containers asked of the local engine; this only stops one
/// that hangs.
pub const INSPECT_TIMEOUT: Duration = Duration::from_secs(30);

/// `inspect`'s spec: the app, and one environment or all of them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InspectSpec {
    pub app: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub env: Option<String>,
}

/// One container of the app on the host (the task's result is
/// [`Inspected`]).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ContainerInfo {
    pub name: String,
    pub env: String,
    pub service: String,
    pub release: String,
    pub image: String,
    /// Docker's state: running, exited, created, restarting, …
    pub state: String,
    /// Docker's health (healthy, unhealthy, starting), or empty without a
    /// HEALTHCHECK.
    #[serde(default)]
    pub health: String,
    /// When it last started (ms since the Unix epoch); 0 if never.
    #[serde(default)]
    pub started_at_ms: i64,
    /// The `ferry.hash` label, when the container carries one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hash: Option<String>,
    /// The `ferry.replica` label (which of the service's replicas).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replica: Option<u32>,
    /// The `ferry.accessory` label: the accessory it is.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub accessory: Option<String>,
}

/// `inspect`'s result: the app's containers on the host, by env, service,
/// then name.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Inspected {
    pub containers: Vec<ContainerInfo>,
}

impl KindSpec for InspectSpec {
    const NAME: &'static str = "inspect";
    const CLI: &'static [&'static str] = &["status"];
    const DOC: &'static str =
        "List an app's containers on the host: release, state, health, start time, hash.";

    fn validate(&self) -> Result<(), String> {
        crate::rules::dns_name(&self.app).map_err(|e| format!("inspect spec: app: {e}"))?;
        if let Some(env) = &self.env {
            crate::rules::dns_name(env).map_err(|e| format!("inspect spec: env: {e}"))?;
        }
        Ok(())
    }

    fn audit_scope(&self) -> (Option<&str>, Option<&str>) {
        (Some(&self.app), self.env.as_deref())
    }

    fn timeout(&self) -> Duration {
        INSPECT_TIMEOUT
    }
}
