//! `agent.toml` and the files beside it in the state dir. `enroll` writes
//! them; `run` reads them, then applies the `FERRY_*` environment.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use ferry_common::fsutil::{self, Mode};
use ferry_common::job::JobKind;
use serde::{Deserialize, Serialize};

use crate::error::AgentError;

pub const CONFIG_FILE: &str = "agent.toml";
pub const KEY_FILE: &str = "agent.key";
pub const CERT_FILE: &str = "agent.pem";
pub const CA_FILE: &str = "ca.pem";

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AgentConfig {
    pub agent_id: String,
    pub name: String,
    pub trust_domain: String,
    /// Coordinator addresses (`https://host:port`); the agent fails over
    /// between them in order.
    pub coordinators: Vec<String>,
    /// Labels as enrolled (the coordinator's copy is authoritative).
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    /// PostgreSQL the host serves, checked in every heartbeat.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub postgres_url: Option<String>,
    /// Docker engine socket.
    #[serde(default = "default_docker_socket")]
    pub docker_socket: String,
    /// Mount points whose free space is reported (default: `/` and the state dir).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub disk_paths: Vec<PathBuf>,
    /// Tasks run at once (default 4).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_concurrent_tasks: Option<usize>,
    /// The job kinds this agent runs and advertises (default: every kind
    /// it has an executor for). For tests and staged upgrades; a task of
    /// another kind fails, naming the kinds it runs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub capabilities: Option<Vec<JobKind>>,
    /// Blue-green deploys: where the per-service nginx upstream include
    /// files live, and how to reload nginx. Host configuration, not part of
    /// the app file: operators who deploy must not choose host commands.
    #[serde(default)]
    pub nginx: NginxConfig,
    /// Where backups are written, one folder per app/env/database
    /// (default `<state_dir>/backups`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backup_dir: Option<PathBuf>,
    /// Where `pg_dump` and `pg_restore` are (default: the `PATH`); e.g.
    /// `/usr/lib/postgresql/16/bin` when the server is newer than the
    /// host's default client.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pg_bin_dir: Option<PathBuf>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct NginxConfig {
    pub upstream_dir: PathBuf,
    pub reload_command: Vec<String>,
    /// Dumps nginx's whole configuration (`nginx -T`), to confirm that it
    /// includes the upstream file the agent wrote. Empty: derived from
    /// `reload_command` (see [`NginxConfig::test_command`]).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub test_command: Vec<String>,
    /// How long the old container keeps serving after the switch, for
    /// requests already in flight.
    #[serde(with = "ferry_common::time::serde_duration")]
    pub drain: std::time::Duration,
}

impl Default for NginxConfig {
    fn default() -> Self {
        NginxConfig {
            upstream_dir: PathBuf::from("/etc/nginx/ferry-upstreams"),
            reload_command: vec!["nginx".into(), "-s".into(), "reload".into()],
            test_command: Vec::new(),
            drain: std::time::Duration::from_secs(2),
        }
    }
}

impl NginxConfig {
    /// `test_command` as set, else `reload_command` with its trailing
    /// `-s reload` replaced by `-T` (so `nginx -p P -c C -s reload` gives
    /// `nginx -p P -c C -T`); `None` when it is not set and the reload
    /// command does not end that way (a helper script).
    pub fn test_command(&self) -> Option<Vec<String>> {
        if !self.test_command.is_empty() {
            return Some(self.test_command.clone());
        }
        let n = self.reload_command.len();
        (n >= 3 && self.reload_command[n - 2..] == ["-s", "reload"]).then(|| {
            let mut cmd = self.reload_command[..n - 2].to_vec();
            cmd.push("-T".into());
            cmd
        })
    }
}

fn default_docker_socket() -> String {
    "/var/run/docker.sock".into()
}

impl AgentConfig {
    pub fn load(state_dir: &Path) -> Result<Self, AgentError> {
        let path = state_dir.join(CONFIG_FILE);
        let text = std::fs::read_to_string(&path).map_err(|e| AgentError::Config {
            path: path.clone(),
            reason: if e.kind() == std::io::ErrorKind::NotFound {
                "not found; enroll this host first with `ferry-agent enroll`".into()
            } else {
                e.to_string()
            },
        })?;
        let config: AgentConfig = toml::from_str(&text).map_err(|e| AgentError::Config {
            path: path.clone(),
            reason: e.to_string().trim_end().to_string(),
        })?;
        if config.coordinators.is_empty() {
            return Err(AgentError::Config {
                path,
                reason: "coordinators: at least one https://HOST:PORT is required".into(),
            });
        }
        if config.capabilities.as_ref().is_some_and(Vec::is_empty) {
            return Err(AgentError::Config {
                path,
                reason:
                    "capabilities: name at least one job kind, or leave it out to run every kind"
                        .into(),
            });
        }
        Ok(config)
    }

    pub fn save(&self, state_dir: &Path, overwrite: bool) -> Result<(), AgentError> {
        let text = toml::to_string(self).map_err(|e| AgentError::Config {
            path: state_dir.join(CONFIG_FILE),
            reason: e.to_string(),
        })?;
        let body = format!("# Ferry agent configuration, written by `ferry-agent enroll`.\n{text}");
        fsutil::write_atomic(
            &state_dir.join(CONFIG_FILE),
            body.as_bytes(),
            Mode::Public,
            overwrite,
        )?;
        Ok(())
    }

    /// `FERRY_COORDINATORS` (comma-separated), `FERRY_POSTGRES_URL`,
    /// `FERRY_DOCKER_SOCKET`, `FERRY_BACKUP_DIR`, `FERRY_PG_BIN_DIR`,
    /// `FERRY_NGINX_UPSTREAM_DIR`, and `FERRY_NGINX_RELOAD` / `FERRY_NGINX_TEST`
    /// (split at whitespace).
    pub fn apply_env(&mut self, env: &HashMap<String, String>) {
        if let Some(list) = env
            .get("FERRY_COORDINATORS")
            .filter(|v| !v.trim().is_empty())
        {
            self.coordinators = list
                .split(',')
                .map(|s| s.trim().to_string())
                .filter(|s| !s.is_empty())
                .collect();
        }
        if let Some(url) = env.get("FERRY_POSTGRES_URL").filter(|v| !v.is_empty()) {
            self.postgres_url = Some(url.clone());
        }
        if let Some(sock) = env.get("FERRY_DOCKER_SOCKET").filter(|v| !v.is_empty()) {
            self.docker_socket = sock.clone();
        }
        if let Some(dir) = env.get("FERRY_BACKUP_DIR").filter(|v| !v.is_empty()) {
            self.backup_dir = Some(PathBuf::from(dir));
        }
        if let Some(dir) = env.get("FERRY_PG_BIN_DIR").filter(|v| !v.is_empty()) {
            self.pg_bin_dir = Some(PathBuf::from(dir));
        }
        if let Some(dir) = env
            .get("FERRY_NGINX_UPSTREAM_DIR")
            .filter(|v| !v.is_empty())
        {
            self.nginx.upstream_dir = PathBuf::from(dir);
        }
        if let Some(cmd) = env
            .get("FERRY_NGINX_RELOAD")
            .filter(|v| !v.trim().is_empty())
        {
            self.nginx.reload_command = cmd.split_whitespace().map(str::to_string).collect();
        }
        if let Some(cmd) = env.get("FERRY_NGINX_TEST").filter(|v| !v.trim().is_empty()) {
            self.nginx.test_command = cmd.split_whitespace().map(str::to_string).collect();
        }
    }
}

/// The agent's TLS identity as it is on disk right now.
#[derive(Debug, Clone)]
pub struct Identity {
    pub ca_pem: String,
    pub cert_pem: String,
    pub key_pem: String,
}

impl Identity {
    /// Reads the identity, first finishing a renewal that a crash interrupted.
    pub fn load(state_dir: &Path) -> Result<Self, AgentError> {
        finish_renewal(state_dir)?;
        let read = |f: &str| fsutil::read_to_string(&state_dir.join(f));
        Ok(Identity {
            ca_pem: read(CA_FILE)?,
            cert_pem: read(CERT_FILE)?,
            key_pem: read(KEY_FILE)?,
        })
    }

    /// Replaces key and certificate. Both are staged as `*.next` first and
    /// renamed key-then-certificate, so a crash at any point leaves either
    /// the old pair or a state [`finish_renewal`] completes.
    pub fn store_renewed(
        state_dir: &Path,
        key_pem: &str,
        cert_pem: &str,
    ) -> Result<(), AgentError> {
        let next = |f: &str| state_dir.join(format!("{f}.next"));
        fsutil::write_atomic(&next(KEY_FILE), key_pem.as_bytes(), Mode::Private, true)?;
        fsutil::write_atomic(&next(CERT_FILE), cert_pem.as_bytes(), Mode::Public, true)?;
        finish_renewal(state_dir)
    }
}

/// Completes a staged renewal: a staged certificate always belongs to the
/// staged (or already moved) key.
fn finish_renewal(state_dir: &Path) -> Result<(), AgentError> {
    let next_cert = state_dir.join(format!("{CERT_FILE}.next"));
    if !next_cert.exists() {
        return Ok(());
    }
    let next_key = state_dir.join(format!("{KEY_FILE}.next"));
    if next_key.exists() {
        let dest = state_dir.join(KEY_FILE);
        std::fs::rename(&next_key, &dest).map_err(|e| fsutil::FileError::io(&dest, e))?;
    }
    let dest = state_dir.join(CERT_FILE);
    std::fs::rename(&next_cert, &dest).map_err(|e| fsutil::FileError::io(&dest, e))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> AgentConfig {
        AgentConfig {
            agent_id: "0190".into(),
            name: "web-1".into(),
            trust_domain: "ferry.test".into(),
            coordinators: vec!["https://127.0.0.1:7443".into()],
            labels: BTreeMap::from([("env".into(), "staging".into())]),
            postgres_url: None,
            docker_socket: default_docker_socket(),
            disk_paths: vec![],
            max_concurrent_tasks: None,
            capabilities: None,
            nginx: NginxConfig::default(),
            backup_dir: None,
            pg_bin_dir: None,
        }
    }

    #[test]
    fn round_trip_env_and_unknown_fields() {
        let dir = tempfile::tempdir().unwrap();
        let c = sample();
        c.save(dir.path(), false).unwrap();
        assert_eq!(AgentConfig::load(dir.path()).unwrap(), c);
        let mut env = HashMap::new();
        env.insert(
            "FERRY_COORDINATORS".to_string(),
            "https://a:1, https://b:2".to_string(),
        );
        let mut c2 = c.clone();
        c2.apply_env(&env);
        assert_eq!(
            c2.coordinators,
            vec!["https://a:1".to_string(), "https://b:2".to_string()]
        );

        std::fs::write(
            dir.path().join(CONFIG_FILE),
            "agent_id = \"x\"\ncolour = 1\n",
        )
        .unwrap();
        let err = AgentConfig::load(dir.path()).unwrap_err().to_string();
        assert!(
            err.contains("agent.toml") && err.contains("colour"),
            "{err}"
        );
    }

    #[test]
    fn the_nginx_test_command_follows_the_reload_command() {
        let mut n = NginxConfig::default();
        assert_eq!(n.test_command(), Some(vec!["nginx".into(), "-T".into()]));
        n.reload_command = ["nginx", "-p", "/p", "-c", "/p/nginx.conf", "-s", "reload"]
            .map(String::from)
            .to_vec();
        assert_eq!(
            n.test_command().unwrap(),
            ["nginx", "-p", "/p", "-c", "/p/nginx.conf", "-T"]
        );
        n.reload_command = vec!["/usr/local/lib/ferry/ferry-nginx-reload-wait".into()];
        assert_eq!(n.test_command(), None);
        let env = HashMap::from([("FERRY_NGINX_TEST".to_string(), "sudo nginx -T".to_string())]);
        let mut c = sample();
        c.nginx = n;
        c.apply_env(&env);
        assert_eq!(c.nginx.test_command().unwrap(), ["sudo", "nginx", "-T"]);
    }

    #[test]
    fn capabilities_are_job_kinds() {
        let dir = tempfile::tempdir().unwrap();
        let mut c = sample();
        c.capabilities = Some(vec![JobKind::Probe, JobKind::Smoke]);
        c.save(dir.path(), false).unwrap();
        assert_eq!(AgentConfig::load(dir.path()).unwrap(), c);

        let base = "agent_id = \"x\"\nname = \"a\"\ntrust_domain = \"t\"\ncoordinators = [\"https://c:1\"]\n";
        std::fs::write(
            dir.path().join(CONFIG_FILE),
            format!("{base}capabilities = [\"probe\", \"shell\"]\n"),
        )
        .unwrap();
        let err = AgentConfig::load(dir.path()).unwrap_err().to_string();
        assert!(
            err.contains("agent.toml")
                && err.contains("unknown job kind \"shell\"; expected one of probe, smoke, deploy"),
            "{err}"
        );
        std::fs::write(
            dir.path().join(CONFIG_FILE),
            format!("{base}capabilities = []\n"),
        )
        .unwrap();
        let err = AgentConfig::load(dir.path()).unwrap_err().to_string();
        assert!(err.contains("capabilities: name at least one"), "{err}");
    }

    #[test]
    fn interrupted_renewal_is_completed() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path();
        for (f, body) in [
            (CA_FILE, "ca"),
            (CERT_FILE, "old-cert"),
            (KEY_FILE, "old-key"),
        ] {
            std::fs::write(p.join(f), body).unwrap();
        }
        // Crash after the key was moved but before the certificate was.
        std::fs::write(p.join(KEY_FILE), "new-key").unwrap();
        std::fs::write(p.join(format!("{CERT_FILE}.next")), "new-cert").unwrap();
        let id = Identity::load(p).unwrap();
        assert_eq!(
            (id.key_pem.as_str(), id.cert_pem.as_str()),
            ("new-key", "new-cert")
        );

        Identity::store_renewed(p, "k3", "c3").unwrap();
        let id = Identity::load(p).unwrap();
        assert_eq!((id.key_pem.as_str(), id.cert_pem.as_str()), ("k3", "c3"));
        assert!(!p.join(format!("{KEY_FILE}.next")).exists());
    }
}
