//! Coordinator configuration. Layers, later wins: built-in defaults, the
//! TOML file in the data dir (`coordinator.toml`, written by `init`), the
//! `FERRY_*` environment, command-line flags. The environment is passed in
//! as a map, never read from deep inside.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use ferry_common::time::serde_duration;
use serde::{Deserialize, Serialize};

use crate::net::ConnectionLimits;
use crate::secrets_key::{self, KeyOrigin, SecretsError, SecretsKey};

/// File name of the configuration inside the data dir.
pub const CONFIG_FILE: &str = "coordinator.toml";
pub const CA_CERT_FILE: &str = "ca.pem";
pub const CA_KEY_FILE: &str = "ca.key";
pub const SERVER_CERT_FILE: &str = "server.pem";
pub const SERVER_KEY_FILE: &str = "server.key";
pub const ADMIN_CREDENTIALS_FILE: &str = "admin.credentials";
pub const SQLITE_FILE: &str = "ferry.db";

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CoordinatorConfig {
    /// Identities are `spiffe://<trust_domain>/...`.
    pub trust_domain: String,
    /// gRPC (agents and operators), TLS.
    pub listen: SocketAddr,
    /// Plain HTTP: `/healthz`, `/readyz`, `/metrics`. Keep it on loopback or
    /// a private network.
    pub admin_listen: SocketAddr,
    /// The address agents and operators use, written into join tokens and
    /// credentials files (`https://HOST:PORT`).
    pub advertise: String,
    /// Names (DNS or IP) in the server certificate.
    pub sans: Vec<String>,
    /// PostgreSQL URL; unset means the SQLite file `ferry.db` in the data dir.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub database_url: Option<String>,
    /// Name of the operator `init` created; added to a brand-new store.
    pub admin_name: String,
    #[serde(with = "serde_duration")]
    pub agent_cert_ttl: Duration,
    #[serde(with = "serde_duration")]
    pub operator_cert_ttl: Duration,
    #[serde(with = "serde_duration")]
    pub server_cert_ttl: Duration,
    /// Default lifetime of a join token.
    #[serde(with = "serde_duration")]
    pub join_token_ttl: Duration,
    /// How often agents send a heartbeat (told to them in `Welcome`).
    #[serde(with = "serde_duration")]
    pub heartbeat_interval: Duration,
    /// An agent not heard from for this long is shown offline.
    #[serde(with = "serde_duration")]
    pub offline_after: Duration,
    /// How long a job's tasks wait for offline agents (`ferry … --deadline`).
    #[serde(with = "serde_duration")]
    pub job_deadline: Duration,
    /// Running tasks of an agent away this long are marked lost (its own
    /// report still wins if it comes back).
    #[serde(with = "serde_duration")]
    pub lost_after: Duration,
    /// The secrets key from `FERRY_SECRETS_KEY`; unset means the file
    /// `secrets.key` in the data dir. Never read from or written to the
    /// TOML file, which is not private (mode 0644): a `secrets_key` there
    /// is refused as an unknown field.
    #[serde(skip)]
    pub secrets_key: Option<SecretsKey>,
    /// Deadlines and connection caps of the gRPC port (see [`crate::net`]).
    pub limits: ConnectionLimits,
    /// How long after a renewal an agent's replaced certificate is still
    /// accepted (for the session it had open; it reconnects at once).
    #[serde(with = "serde_duration")]
    pub renewal_overlap: Duration,
}

impl Default for CoordinatorConfig {
    fn default() -> Self {
        CoordinatorConfig {
            trust_domain: "ferry.local".into(),
            listen: "127.0.0.1:7443".parse().expect("static address"),
            admin_listen: "127.0.0.1:7444".parse().expect("static address"),
            advertise: "https://localhost:7443".into(),
            sans: vec!["localhost".into(), "127.0.0.1".into()],
            database_url: None,
            admin_name: "admin".into(),
            agent_cert_ttl: Duration::from_secs(7 * 86_400),
            operator_cert_ttl: Duration::from_secs(90 * 86_400),
            server_cert_ttl: Duration::from_secs(365 * 86_400),
            join_token_ttl: Duration::from_secs(3600),
            heartbeat_interval: Duration::from_secs(5),
            offline_after: Duration::from_secs(20),
            job_deadline: Duration::from_secs(3600),
            lost_after: Duration::from_secs(120),
            secrets_key: None,
            limits: ConnectionLimits::default(),
            renewal_overlap: Duration::from_secs(600),
        }
    }
}

/// Configuration errors name the file or variable and the field.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{path}: {reason}")]
    File { path: PathBuf, reason: String },
    #[error("{path}: not found; run `ferry-coordinator init --data-dir {dir}` first")]
    NotInitialized { path: PathBuf, dir: String },
    #[error("environment variable {var}={value:?}: {reason}")]
    Env {
        var: &'static str,
        value: String,
        reason: String,
    },
    /// A variable holding key material: its value is never repeated.
    #[error("environment variable {var}: {reason}")]
    SecretEnv { var: &'static str, reason: String },
    #[error("{field}: {reason}")]
    Invalid { field: &'static str, reason: String },
}

impl CoordinatorConfig {
    /// Reads `DIR/coordinator.toml`.
    pub fn load(data_dir: &Path) -> Result<Self, ConfigError> {
        let path = data_dir.join(CONFIG_FILE);
        let text = std::fs::read_to_string(&path).map_err(|e| {
            if e.kind() == std::io::ErrorKind::NotFound {
                ConfigError::NotInitialized {
                    path: path.clone(),
                    dir: data_dir.display().to_string(),
                }
            } else {
                ConfigError::File {
                    path: path.clone(),
                    reason: e.to_string(),
                }
            }
        })?;
        let config: CoordinatorConfig = toml::from_str(&text).map_err(|e| ConfigError::File {
            path: path.clone(),
            reason: e.to_string().trim_end().to_string(),
        })?;
        config.validate().map_err(|e| ConfigError::File {
            path,
            reason: e.to_string(),
        })?;
        Ok(config)
    }

    /// Applies `FERRY_LISTEN`, `FERRY_ADMIN_LISTEN`, `FERRY_DATABASE_URL`,
    /// `FERRY_ADVERTISE`, `FERRY_SECRETS_KEY`.
    pub fn apply_env(&mut self, env: &HashMap<String, String>) -> Result<(), ConfigError> {
        let addr = |var: &'static str, value: &String| {
            value.parse::<SocketAddr>().map_err(|e| ConfigError::Env {
                var,
                value: value.clone(),
                reason: format!("{e}; expected HOST:PORT like 127.0.0.1:7443"),
            })
        };
        if let Some(v) = env.get("FERRY_LISTEN") {
            self.listen = addr("FERRY_LISTEN", v)?;
        }
        if let Some(v) = env.get("FERRY_ADMIN_LISTEN") {
            self.admin_listen = addr("FERRY_ADMIN_LISTEN", v)?;
        }
        if let Some(v) = env.get("FERRY_DATABASE_URL").filter(|v| !v.is_empty()) {
            self.database_url = Some(v.clone());
        }
        if let Some(v) = env.get("FERRY_ADVERTISE").filter(|v| !v.is_empty()) {
            self.advertise = v.clone();
        }
        if let Some(v) = env.get(secrets_key::KEY_ENV) {
            let key = SecretsKey::parse(v, KeyOrigin::Env).map_err(|e| ConfigError::SecretEnv {
                var: secrets_key::KEY_ENV,
                reason: match e {
                    SecretsError::BadKey { reason, .. } => reason,
                    other => other.to_string(),
                },
            })?;
            self.secrets_key = Some(key);
        }
        self.validate()
    }

    /// Checks values that serde cannot.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if ferry_common::tls::parse_url(&self.advertise).is_err() {
            return Err(ConfigError::Invalid {
                field: "advertise",
                reason: format!("{:?} is not https://HOST:PORT", self.advertise),
            });
        }
        if self.trust_domain.is_empty() || self.trust_domain.contains('/') {
            return Err(ConfigError::Invalid {
                field: "trust_domain",
                reason: format!(
                    "{:?} must be a non-empty name without '/'",
                    self.trust_domain
                ),
            });
        }
        if self.agent_cert_ttl < Duration::from_secs(3) {
            return Err(ConfigError::Invalid {
                field: "agent_cert_ttl",
                reason: "must be at least 3s".into(),
            });
        }
        if self.heartbeat_interval.is_zero() || self.offline_after <= self.heartbeat_interval {
            return Err(ConfigError::Invalid {
                field: "offline_after",
                reason: "must be longer than heartbeat_interval (which must be above 0)".into(),
            });
        }
        Ok(())
    }

    /// Where the store lives: the PostgreSQL URL or the SQLite file.
    pub fn store_location(&self, data_dir: &Path) -> String {
        self.database_url
            .clone()
            .unwrap_or_else(|| data_dir.join(SQLITE_FILE).display().to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_round_trips_and_unknown_fields_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let c = CoordinatorConfig::default();
        std::fs::write(dir.path().join(CONFIG_FILE), toml::to_string(&c).unwrap()).unwrap();
        assert_eq!(CoordinatorConfig::load(dir.path()).unwrap(), c);

        std::fs::write(
            dir.path().join(CONFIG_FILE),
            "listen = \"127.0.0.1:1\"\nlisten_port = 3\n",
        )
        .unwrap();
        let err = CoordinatorConfig::load(dir.path()).unwrap_err().to_string();
        assert!(
            err.contains("coordinator.toml") && err.contains("listen_port"),
            "{err}"
        );

        std::fs::write(
            dir.path().join(CONFIG_FILE),
            "heartbeat_interval = \"soon\"\n",
        )
        .unwrap();
        let err = CoordinatorConfig::load(dir.path()).unwrap_err().to_string();
        assert!(
            err.contains("heartbeat_interval") && err.contains("\"30s\""),
            "{err}"
        );
    }

    #[test]
    fn missing_file_says_to_init() {
        let dir = tempfile::tempdir().unwrap();
        let err = CoordinatorConfig::load(dir.path()).unwrap_err().to_string();
        assert!(err.contains("ferry-coordinator init"), "{err}");
    }

    #[test]
    fn environment_overrides_and_is_checked() {
        let mut c = CoordinatorConfig::default();
        let mut env = HashMap::new();
        env.insert("FERRY_LISTEN".to_string(), "0.0.0.0:9000".to_string());
        env.insert(
            "FERRY_DATABASE_URL".to_string(),
            "postgres://x/y".to_string(),
        );
        c.apply_env(&env).unwrap();
        assert_eq!(c.listen.port(), 9000);
        assert_eq!(c.database_url.as_deref(), Some("postgres://x/y"));
        env.insert("FERRY_ADMIN_LISTEN".to_string(), "nope".to_string());
        let err = c.apply_env(&env).unwrap_err().to_string();
        assert!(err.contains("FERRY_ADMIN_LISTEN"), "{err}");
    }

    #[test]
    fn secrets_key_comes_from_the_environment_and_is_never_shown() {
        let mut c = CoordinatorConfig::default();
        let hex_key = "00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff";
        let env = HashMap::from([("FERRY_SECRETS_KEY".to_string(), hex_key.to_string())]);
        c.apply_env(&env).unwrap();
        let key = c.secrets_key.clone().expect("key from the environment");
        assert_eq!(key.origin(), &KeyOrigin::Env);
        assert!(!format!("{c:?}").contains("00112233"), "{c:?}");
        assert!(!toml::to_string(&c).unwrap().contains("secrets_key"));
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join(CONFIG_FILE),
            format!("secrets_key = \"{hex_key}\"\n"),
        )
        .unwrap();
        let err = CoordinatorConfig::load(dir.path()).unwrap_err().to_string();
        assert!(err.contains("unknown field `secrets_key`"), "{err}");

        let bad = "0011223344556677-not-a-key";
        let env = HashMap::from([("FERRY_SECRETS_KEY".to_string(), bad.to_string())]);
        let err = CoordinatorConfig::default()
            .apply_env(&env)
            .unwrap_err()
            .to_string();
        assert!(
            err.starts_with("environment variable FERRY_SECRETS_KEY: "),
            "{err}"
        );
        assert!(!err.contains("0011223344556677"), "{err}");
    }
}
