//! The service's settings. Read from an environment lookup passed in, not
//! from the process environment directly, so that tests can state exactly
//! the environment they mean.

/// The version baked in at build time (`APP_VERSION` in the build's
/// environment, else the crate version); see build.rs.
pub const BUILD_VERSION: &str = env!("FERRY_EXAMPLE_BUILD_VERSION");

pub const DEFAULT_PORT: u16 = 8080;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    /// `PORT`: the service listens on `0.0.0.0:port`.
    pub port: u16,
    /// `FAIL_HEALTH=1` (or `true`): `/health` answers 503, so that a test
    /// can ship a release whose health gate fails.
    pub fail_health: bool,
    /// `DATABASE_URL`: what `/health/db` and `migrate` connect to.
    pub database_url: Option<String>,
    /// `APP_VERSION` at run time, else [`BUILD_VERSION`]: the image sets it,
    /// so that one binary can be shipped as many releases.
    pub version: String,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("PORT must be a port number (1-65535), not `{0}`")]
pub struct BadPort(pub String);

impl Config {
    /// Reads the settings through `env` (a `std::env::var`-like lookup).
    /// Empty values count as unset, as `docker run -e NAME=` produces them.
    pub fn from_env(env: impl Fn(&str) -> Option<String>) -> Result<Config, BadPort> {
        let get = |name: &str| env(name).filter(|v| !v.trim().is_empty());
        Ok(Config {
            port: port(get("PORT"))?,
            fail_health: get("FAIL_HEALTH").is_some_and(|v| {
                let v = v.trim();
                v == "1" || v.eq_ignore_ascii_case("true")
            }),
            database_url: get("DATABASE_URL"),
            version: get("APP_VERSION")
                .map(|v| v.trim().to_owned())
                .unwrap_or_else(|| BUILD_VERSION.to_owned()),
        })
    }
}

/// `PORT` as a port number, [`DEFAULT_PORT`] when unset. Shared with the
/// `healthcheck` subcommand, which must probe the port the server chose.
pub fn port(value: Option<String>) -> Result<u16, BadPort> {
    match value {
        None => Ok(DEFAULT_PORT),
        Some(v) => match v.trim().parse::<u16>() {
            Ok(p) if p != 0 => Ok(p),
            _ => Err(BadPort(v)),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn cfg(vars: &[(&str, &str)]) -> Result<Config, BadPort> {
        let map: HashMap<String, String> = vars
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        Config::from_env(|k| map.get(k).cloned())
    }

    #[test]
    fn defaults() {
        let c = cfg(&[]).unwrap();
        assert_eq!(c.port, 8080);
        assert!(!c.fail_health);
        assert_eq!(c.database_url, None);
        assert_eq!(c.version, BUILD_VERSION);
    }

    #[test]
    fn run_time_version_wins_over_the_build_time_one() {
        assert_eq!(cfg(&[("APP_VERSION", "v42")]).unwrap().version, "v42");
        assert_eq!(cfg(&[("APP_VERSION", "")]).unwrap().version, BUILD_VERSION);
    }

    #[test]
    fn fail_health_only_for_a_true_value() {
        for (v, want) in [
            ("1", true),
            ("true", true),
            ("TRUE", true),
            ("0", false),
            ("", false),
        ] {
            assert_eq!(
                cfg(&[("FAIL_HEALTH", v)]).unwrap().fail_health,
                want,
                "{v:?}"
            );
        }
    }

    #[test]
    fn port_is_checked() {
        assert_eq!(cfg(&[("PORT", "9000")]).unwrap().port, 9000);
        assert_eq!(cfg(&[("PORT", "0")]), Err(BadPort("0".into())));
        assert_eq!(cfg(&[("PORT", "http")]), Err(BadPort("http".into())));
        assert_eq!(cfg(&[("PORT", "70000")]), Err(BadPort("70000".into())));
    }

    #[test]
    fn empty_database_url_is_unset() {
        assert_eq!(cfg(&[("DATABASE_URL", "")]).unwrap().database_url, None);
    }
}
