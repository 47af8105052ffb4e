//! `[[smoke]]` (and `[[environments.NAME.smoke]]`): HTTP checks run from
//! every host after its deploy, as the smoke job's own [`HttpCheck`]s.
//! `{env}` in a check's URL, name or expected body is the environment's
//! name ([`AppFile::smoke_checks`]), so one check can serve every
//! environment.

use super::AppFile;
use super::check::Check;
use super::raw::FieldPath;
use crate::job::HttpCheck;
use serde::Deserialize;

impl Check {
    pub(super) fn smoke(&mut self, path: &FieldPath, raw: RawSmoke) -> HttpCheck {
        let url = match raw.url {
            Some(url) => {
                // Any environment name is a DNS label: one stands for all.
                self.ok(
                    &path.key("url"),
                    check_smoke_url(&url.replace(ENV_PLACEHOLDER, "env")),
                );
                url
            }
            None => {
                self.err(
                    &path.key("url"),
                    "missing: the URL to GET, e.g. url = \"http://127.0.0.1:8080/health\"",
                );
                String::new()
            }
        };
        let expect_status = match raw.expect_status {
            None => 200,
            Some(n) => match u16::try_from(n) {
                Ok(s) if (100..=599).contains(&s) => s,
                _ => {
                    self.err(
                        &path.key("expect_status"),
                        format!("{n} is not an HTTP status; expected 100 to 599"),
                    );
                    200
                }
            },
        };
        let defaults = http_check_defaults();
        let timeout = self
            .duration(&path.key("timeout"), raw.timeout.as_deref(), true)
            .unwrap_or(defaults.timeout);
        let retry_for = self
            .duration(&path.key("retry_for"), raw.retry_for.as_deref(), false)
            .unwrap_or(defaults.retry_for);
        let interval = self
            .duration(&path.key("interval"), raw.interval.as_deref(), true)
            .unwrap_or(defaults.interval);
        let max_latency = self.duration(&path.key("max_latency"), raw.max_latency.as_deref(), true);
        HttpCheck {
            name: raw.name,
            url,
            expect_status,
            body_contains: raw.body_contains,
            timeout,
            retry_for,
            interval,
            max_latency,
        }
    }
}

/// Replaced by the environment's name in a smoke check.
pub const ENV_PLACEHOLDER: &str = "{env}";

impl AppFile {
    /// The smoke checks of a rollout to `env`: the top-level `[[smoke]]`
    /// checks, then the environment's own, with `{env}` replaced by its name.
    pub fn smoke_checks(&self, env: &str) -> Vec<HttpCheck> {
        let own = self.environments.get(env).map(|e| e.smoke.as_slice());
        self.smoke
            .iter()
            .chain(own.unwrap_or_default())
            .map(|c| {
                let fill = |s: &str| s.replace(ENV_PLACEHOLDER, env);
                HttpCheck {
                    name: c.name.as_deref().map(fill),
                    url: fill(&c.url),
                    body_contains: c.body_contains.as_deref().map(fill),
                    ..c.clone()
                }
            })
            .collect()
    }
}

/// The defaults of a smoke check, from the smoke job's own spec type so
/// that an app file and `ferry smoke` never disagree.
fn http_check_defaults() -> HttpCheck {
    serde_json::from_str(r#"{"url":""}"#).expect("every HttpCheck field but url has a default")
}

/// Smoke checks run from each host with the smoke executor, which speaks
/// plain HTTP; refusing https here keeps a rollout from failing at its
/// last stage, after every host was deployed.
fn check_smoke_url(url: &str) -> Result<(), String> {
    let uri: http::Uri = url
        .parse()
        .map_err(|e| format!("{url:?} is not a URL: {e}"))?;
    match uri.scheme_str() {
        Some("http") if uri.host().is_some_and(|h| !h.is_empty()) => Ok(()),
        Some("https") => Err(format!(
            "{url:?}: https smoke checks are not supported yet; use http://HOST[:PORT]/PATH"
        )),
        _ => Err(format!(
            "{url:?} must be an absolute URL like http://127.0.0.1:8080/health"
        )),
    }
}

/// `[[smoke]]` as serde reads it.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename = "Smoke")]
pub(super) struct RawSmoke {
    pub(super) name: Option<String>,
    pub(super) url: Option<String>,
    pub(super) expect_status: Option<i64>,
    pub(super) body_contains: Option<String>,
    pub(super) timeout: Option<String>,
    pub(super) retry_for: Option<String>,
    pub(super) interval: Option<String>,
    pub(super) max_latency: Option<String>,
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use crate::appfile::testing::*;

    #[test]
    fn smoke_checks_are_checked() {
        let smoke = |body: &str| format!("{}[[smoke]]\n{body}\n", service(""));
        assert_eq!(
            problem(&smoke("url = \"https://shop.example.com/health\"")),
            "8: smoke[0].url: \"https://shop.example.com/health\": https smoke checks are not supported yet; use http://HOST[:PORT]/PATH"
        );
        assert!(problem(&smoke("url = \"/health\"")).contains("must be an absolute URL"));
        assert!(problem(&smoke("expect_status = 200")).starts_with("7: smoke[0].url: missing"));
        assert!(
            problem(&smoke("url = \"http://a/\"\nexpect_status = 1000"))
                .contains("not an HTTP status")
        );
        assert_eq!(
            problem(&smoke("url = \"http://a/\"\ntimeout = \"0s\"")),
            "9: smoke[0].timeout: must be above 0"
        );
        let f = ok(&smoke(
            "name = \"home\"\nurl = \"http://a/\"\nretry_for = \"30s\"\nmax_latency = \"500ms\"",
        ));
        assert_eq!(f.smoke[0].retry_for, Duration::from_secs(30));
        assert_eq!(f.smoke[0].max_latency, Some(Duration::from_millis(500)));
        assert_eq!(f.smoke[0].label(), "home");
    }

    #[test]
    fn smoke_checks_are_per_environment() {
        let text = "app = \"shop\"\n\
            [environments.staging]\nagents = [\"s-1\"]\n\
            [[environments.staging.smoke]]\nurl = \"http://127.0.0.1:8081/staging-only\"\n\
            [environments.production]\nagents = [\"p-1\"]\n\
            [services.web]\nimage = \"shop\"\n\
            [[smoke]]\nname = \"home {env}\"\nurl = \"http://{env}.shop.internal/health\"\nbody_contains = \"env={env}\"\n";
        let f = ok(text);
        let urls =
            |env: &str| -> Vec<String> { f.smoke_checks(env).into_iter().map(|c| c.url).collect() };
        assert_eq!(
            urls("staging"),
            [
                "http://staging.shop.internal/health",
                "http://127.0.0.1:8081/staging-only"
            ]
        );
        assert_eq!(
            urls("production"),
            ["http://production.shop.internal/health"]
        );
        let prod = &f.smoke_checks("production")[0];
        assert_eq!(prod.label(), "home production");
        assert_eq!(prod.body_contains.as_deref(), Some("env=production"));
        assert_eq!(
            problem(&text.replace("http://127.0.0.1:8081/staging-only", "/relative")),
            "5: environments.staging.smoke[0].url: \"/relative\" must be an absolute URL like http://127.0.0.1:8080/health"
        );
    }
}
