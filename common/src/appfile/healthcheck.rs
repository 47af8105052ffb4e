//! `[services.NAME.healthcheck]`: when a new container counts as healthy.

use serde::Deserialize;
use std::time::Duration;

use serde::Serialize;

use super::check::{Check, at_least_one};
use super::ports::PortSpec;
use super::raw::FieldPath;

/// Defaults of a `[services.X.healthcheck]`: a check every 2 s, each
/// attempt cut after 2 s, unhealthy after 30 failures (about a minute),
/// enough for an app that runs its migrations at start.
pub const DEFAULT_HEALTH_INTERVAL: Duration = Duration::from_secs(2);
pub const DEFAULT_HEALTH_TIMEOUT: Duration = Duration::from_secs(2);
pub const DEFAULT_HEALTH_RETRIES: u32 = 30;

/// `[services.X.healthcheck]`: when a new container counts as healthy.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Healthcheck {
    pub check: HealthCheckKind,
    /// Between attempts (http), or between looks at Docker's status (docker).
    #[serde(with = "crate::time::serde_duration")]
    pub interval: Duration,
    /// Of one HTTP attempt.
    #[serde(with = "crate::time::serde_duration")]
    pub timeout: Duration,
    /// Failed attempts before the container is declared unhealthy.
    pub retries: u32,
}

/// The three ways to judge health.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum HealthCheckKind {
    /// `GET` this path on the first container port; healthy on 2xx.
    Http { path: String },
    /// The image's own `HEALTHCHECK`, as Docker reports it.
    Docker,
    /// Healthy when still running after this long (workers with no port).
    RunningFor(#[serde(with = "crate::time::serde_duration")] Duration),
}

impl Check {
    pub(super) fn healthcheck(
        &mut self,
        path: &FieldPath,
        raw: RawHealthcheck,
        ports: &[PortSpec],
    ) -> Option<Healthcheck> {
        let docker = raw.docker == Some(true);
        let kinds = usize::from(raw.http.is_some())
            + usize::from(docker)
            + usize::from(raw.running_for.is_some());
        if kinds != 1 {
            self.err(
                path,
                format!(
                    "give exactly one of http = \"/health\", docker = true or running_for = \"10s\" (found {kinds})"
                ),
            );
        }
        let running_for = self.duration(&path.key("running_for"), raw.running_for.as_deref(), true);
        let interval = self.duration(&path.key("interval"), raw.interval.as_deref(), true);
        let timeout = self.duration(&path.key("timeout"), raw.timeout.as_deref(), true);
        let retries = raw
            .retries
            .and_then(|n| self.ok(&path.key("retries"), at_least_one(n)));
        let check = if let Some(http) = raw.http {
            let p = path.key("http");
            if !http.starts_with('/') {
                self.err(
                    &p,
                    format!("{http:?} must be a path starting with \"/\", e.g. \"/health\""),
                );
            }
            if ports.is_empty() {
                self.err(
                    &p,
                    "an http check GETs the first container port, and this service has no ports; add ports = [3000] or use running_for",
                );
            }
            HealthCheckKind::Http { path: http }
        } else if docker {
            if raw.timeout.is_some() {
                self.err(
                    &path.key("timeout"),
                    "does not apply to docker = true: the image's HEALTHCHECK sets its own timeout",
                );
            }
            HealthCheckKind::Docker
        } else {
            for (field, given) in [
                ("interval", raw.interval.is_some()),
                ("timeout", raw.timeout.is_some()),
                ("retries", raw.retries.is_some()),
            ] {
                if given && running_for.is_some() {
                    self.err(
                        &path.key(field),
                        "does not apply to running_for, which looks once, after that long",
                    );
                }
            }
            HealthCheckKind::RunningFor(running_for?)
        };
        Some(Healthcheck {
            check,
            interval: interval.unwrap_or(DEFAULT_HEALTH_INTERVAL),
            timeout: timeout.unwrap_or(DEFAULT_HEALTH_TIMEOUT),
            retries: retries.unwrap_or(DEFAULT_HEALTH_RETRIES),
        })
    }
}

/// `[services.NAME.healthcheck]` as serde reads it.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename = "Healthcheck")]
pub(super) struct RawHealthcheck {
    pub(super) http: Option<String>,
    pub(super) docker: Option<bool>,
    pub(super) running_for: Option<String>,
    pub(super) interval: Option<String>,
    pub(super) timeout: Option<String>,
    pub(super) retries: Option<i64>,
}

#[cfg(test)]
mod tests {
    use crate::appfile::testing::*;
    use crate::appfile::*;

    #[test]
    fn healthchecks_have_exactly_one_kind_that_fits() {
        let hc = |body: &str| {
            service(&format!(
                "ports = [3000]\n[services.web.healthcheck]\n{body}"
            ))
        };
        assert_eq!(
            problem(&hc("interval = \"1s\"")),
            "7: services.web.healthcheck: give exactly one of http = \"/health\", docker = true or running_for = \"10s\" (found 0)"
        );
        assert!(problem(&hc("http = \"/h\"\ndocker = true")).contains("(found 2)"));
        assert!(problem(&hc("docker = false")).contains("(found 0)"));
        assert_eq!(
            problem(&hc("http = \"health\"")),
            "8: services.web.healthcheck.http: \"health\" must be a path starting with \"/\", e.g. \"/health\""
        );
        assert_eq!(
            problem(&hc("docker = true\ntimeout = \"1s\"")),
            "9: services.web.healthcheck.timeout: does not apply to docker = true: the image's HEALTHCHECK sets its own timeout"
        );
        assert_eq!(
            problem(&hc("running_for = \"10s\"\nretries = 3")),
            "9: services.web.healthcheck.retries: does not apply to running_for, which looks once, after that long"
        );
        assert_eq!(
            problem(&hc("running_for = \"0s\"")),
            "8: services.web.healthcheck.running_for: must be above 0"
        );
        assert_eq!(
            problem(&hc("http = \"/\"\nretries = 0")),
            "9: services.web.healthcheck.retries: must be at least 1, got 0"
        );
        let f = ok(&hc("docker = true"));
        assert_eq!(
            f.services[0].healthcheck,
            Some(Healthcheck {
                check: HealthCheckKind::Docker,
                interval: DEFAULT_HEALTH_INTERVAL,
                timeout: DEFAULT_HEALTH_TIMEOUT,
                retries: DEFAULT_HEALTH_RETRIES,
            })
        );
    }
}
