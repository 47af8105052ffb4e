//! `smoke`: HTTP checks run from the host, in order.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::KindSpec;

/// `smoke`'s spec: HTTP checks run from the host, in order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SmokeSpec {
    pub checks: Vec<HttpCheck>,
}

/// One HTTP check: `GET url` must answer `expect_status` (and contain
/// `body_contains`, and be faster than `max_latency`) within `timeout`.
/// Failed attempts are retried every `interval` for up to `retry_for`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpCheck {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    pub url: String,
    #[serde(default = "default_status")]
    pub expect_status: u16,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub body_contains: Option<String>,
    #[serde(default = "default_timeout", with = "crate::time::serde_duration")]
    pub timeout: std::time::Duration,
    #[serde(default, with = "crate::time::serde_duration")]
    pub retry_for: std::time::Duration,
    #[serde(default = "default_interval", with = "crate::time::serde_duration")]
    pub interval: std::time::Duration,
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        with = "crate::time::serde_opt_duration"
    )]
    pub max_latency: Option<std::time::Duration>,
}

fn default_status() -> u16 {
    200
}

fn default_timeout() -> std::time::Duration {
    std::time::Duration::from_secs(5)
}

fn default_interval() -> std::time::Duration {
    std::time::Duration::from_secs(1)
}

impl HttpCheck {
    /// The check's name, or its URL.
    pub fn label(&self) -> String {
        self.name.clone().unwrap_or_else(|| self.url.clone())
    }
}

/// Added to the longest a smoke task can take by its own settings.
pub const SMOKE_TIMEOUT_MARGIN: Duration = Duration::from_secs(60);

impl KindSpec for SmokeSpec {
    const NAME: &'static str = "smoke";
    const CLI: &'static [&'static str] = &["deploy", "rollback", "redeploy", "restart"];
    const DOC: &'static str =
        "HTTP checks from the host (status, body, latency), each retried until healthy.";

    /// The checks run one after the other, each for up to `retry_for`
    /// (plus its last attempt and wait), so the task is given that, summed,
    /// and a margin.
    fn timeout(&self) -> Duration {
        self.checks
            .iter()
            .map(|c| c.retry_for + c.timeout + c.interval)
            .sum::<Duration>()
            + SMOKE_TIMEOUT_MARGIN
    }

    fn validate(&self) -> Result<(), String> {
        if self.checks.is_empty() {
            return Err("smoke spec: checks: at least one check is required".into());
        }
        for (i, c) in self.checks.iter().enumerate() {
            let uri: http::Uri = c.url.parse().map_err(|e| {
                format!("smoke spec: checks[{i}].url: {:?} is not a URL: {e}", c.url)
            })?;
            if uri.scheme_str() != Some("http") || uri.host().is_none() {
                return Err(format!(
                    "smoke spec: checks[{i}].url: {:?} must be http://HOST[:PORT]/PATH (https checks are not supported yet)",
                    c.url
                ));
            }
            if !(100..=599).contains(&c.expect_status) {
                return Err(format!(
                    "smoke spec: checks[{i}].expect_status: {} is not an HTTP status",
                    c.expect_status
                ));
            }
            if c.timeout.is_zero() || c.interval.is_zero() {
                return Err(format!(
                    "smoke spec: checks[{i}]: timeout and interval must be above 0"
                ));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use crate::job::JobSpec;

    #[test]
    fn smoke_specs_are_validated() {
        let ok = JobSpec::parse(
            "smoke",
            r#"{"checks":[{"url":"http://127.0.0.1:8080/health","retry_for":"30s"}]}"#,
        )
        .unwrap();
        let JobSpec::Smoke(s) = &ok else {
            panic!("not smoke")
        };
        assert_eq!(s.checks[0].expect_status, 200);
        assert_eq!(s.checks[0].interval, std::time::Duration::from_secs(1));
        assert_eq!(JobSpec::parse("smoke", &ok.to_json()).unwrap(), ok);
        assert!(
            JobSpec::parse("smoke", r#"{"checks":[]}"#)
                .unwrap_err()
                .contains("at least one")
        );
        let err = JobSpec::parse("smoke", r#"{"checks":[{"url":"https://x/"}]}"#).unwrap_err();
        assert!(err.contains("checks[0].url"), "{err}");
        let err = JobSpec::parse(
            "smoke",
            r#"{"checks":[{"url":"http://x/","timeout":"soon"}]}"#,
        )
        .unwrap_err();
        assert!(err.contains("\"30s\""), "{err}");
    }
}
