//! `logs`: a service's container logs on a host, each line reported as a
//! log event (secrets redacted), for `ferry logs`.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::KindSpec;

/// Lines from the end of each container's log when none is asked for.
pub const DEFAULT_TAIL: u32 = 100;
/// The most lines one task sends from the end of a log: every line is an
/// event the coordinator stores.
pub const MAX_TAIL: u32 = 10_000;
/// The longest a line is sent; longer ones are cut, saying so.
pub const MAX_LINE_BYTES: usize = 4096;
/// How long `ferry logs -f` follows before the task ends by itself (the
/// CLI going away ends it sooner).
pub const FOLLOW_MAX: Duration = Duration::from_secs(3600);
/// A task without `follow` sends its tail and ends; this only stops one
/// whose engine hangs.
pub const TAIL_TIMEOUT: Duration = Duration::from_secs(120);

/// `logs`'s spec.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LogsSpec {
    pub app: String,
    pub env: String,
    pub service: String,
    /// Keep sending new lines until cancelled or [`FOLLOW_MAX`].
    #[serde(default)]
    pub follow: bool,
    /// Lines from the end of each container's log (1 to [`MAX_TAIL`]).
    #[serde(default = "default_tail")]
    pub tail: u32,
    /// Only lines written at or after this time (ms since the Unix epoch).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub since_ms: Option<i64>,
    /// Secrets of (app, env) whose values are redacted from every line;
    /// the coordinator names them all and sends their values with the task.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub redact: Vec<String>,
}

fn default_tail() -> u32 {
    DEFAULT_TAIL
}

impl KindSpec for LogsSpec {
    const NAME: &'static str = "logs";
    const CLI: &'static [&'static str] = &["logs"];
    const DOC: &'static str = "Send a service's container logs (the running containers, else the newest), secrets redacted; follow them on request.";

    fn validate(&self) -> Result<(), String> {
        use crate::rules;
        let at =
            |field: &str, r: Result<(), String>| r.map_err(|e| format!("logs spec: {field}: {e}"));
        at("app", rules::dns_name(&self.app))?;
        at("env", rules::dns_name(&self.env))?;
        at("service", rules::dns_name(&self.service))?;
        if self.tail == 0 || self.tail > MAX_TAIL {
            return Err(format!(
                "logs spec: tail: {} is out of range; give 1 to {MAX_TAIL} lines",
                self.tail
            ));
        }
        for name in &self.redact {
            at("redact", rules::secret_name(name))?;
        }
        Ok(())
    }

    fn secret_names(&self) -> Vec<String> {
        let mut names = self.redact.clone();
        names.sort();
        names.dedup();
        names
    }

    fn secret_scope(&self) -> Option<(&str, &str)> {
        Some((&self.app, &self.env))
    }

    fn timeout(&self) -> Duration {
        if self.follow {
            FOLLOW_MAX + TAIL_TIMEOUT
        } else {
            TAIL_TIMEOUT
        }
    }
}
