//! Job kinds, their typed specs, and target selectors, shared by the
//! coordinator (which stores and routes jobs), the agent (which runs them)
//! and the CLI.
//!
//! Every kind is one module here with its spec type and its
//! [`KindSpec`] impl (name, CLI commands, doc line, validation, secrets,
//! timeout, host lock), and one line in the `registry!` call below, which
//! generates [`JobKind`] and [`JobSpec`] from that list:
//!
//! - [`probe`]: [`ProbeSpec`], the host's facts ([`HostFacts`]).
//! - [`smoke`]: [`SmokeSpec`], HTTP checks from the host.
//! - [`deploy`]: [`DeploySpec`], containers on the host's Docker engine,
//!   and [`naming`], the Docker names of what a deploy creates.
//! - [`logs`]: [`LogsSpec`], a service's container logs.
//! - [`inspect`]: [`InspectSpec`], an app's containers on the host.
//! - [`restart`]: [`RestartSpec`], a release's containers restarted in place.
//! - [`backup`]: [`BackupSpec`], a database dumped to a checksummed file,
//!   described by its [`BackupManifest`].
//! - [`verify`]: [`VerifySpec`], a backup proved by a test restore.
//! - [`restore`]: [`RestoreSpec`], a backup put back without ever leaving
//!   the live database half-restored.
//! - [`prune`]: [`PruneSpec`], expired backups deleted.
//! - [`migrate`]: [`MigrateSpec`], an app's migrations applied to a main
//!   database and its tenants, reported per database ([`MigrateReport`]).
//!
//! `docs/job-kinds.md` documents every kind; a test here fails for a kind
//! it does not describe. The agent's executor registry has a test of its
//! own that fails for a kind with no executor.

pub(crate) use crate::rules::one_of;
use std::collections::BTreeMap;
use std::time::Duration;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

pub mod backup;
pub mod deploy;
pub mod inspect;
pub mod logs;
pub mod migrate;
pub mod probe;
pub mod prune;
pub mod restart;
pub mod restore;
pub mod smoke;
pub mod verify;

pub use backup::{BackupManifest, BackupSpec};
pub use deploy::{
    DEFAULT_KEEP_RELEASES, DeploySpec, HealthCheck, HealthGate, MAX_KEEP_RELEASES, MAX_REPLICAS,
    PortMapping, PullPolicy, RegistryAuth, RestartPolicy, ServiceDeploy, Strategy, VolumeMount,
    naming,
};
pub use inspect::{ContainerInfo, InspectSpec, Inspected};
pub use logs::LogsSpec;
pub use migrate::{DatabaseOutcome, MigrateReport, MigrateSpec, MigrationSource};
pub use probe::ProbeSpec;
pub use prune::{PruneItem, PruneReport, PruneSpec};
pub use restart::{RestartService, RestartSpec};
pub use restore::{RestoreMode, RestoreReport, RestoreSpec};
pub use smoke::{HttpCheck, SmokeSpec};
pub use verify::{VerifyReport, VerifySpec};

/// What each job kind's spec type says about the kind. Everything a new
/// kind needs outside the agent's executor lives in its impl of this.
pub trait KindSpec:
    Serialize + DeserializeOwned + Clone + PartialEq + std::fmt::Debug + Send + Sync + 'static
{
    /// The kind's name: in jobs, the store, the wire and `agent.toml`.
    const NAME: &'static str;
    /// The `ferry` commands whose jobs (or rollouts) submit tasks of this kind.
    const CLI: &'static [&'static str];
    /// One line: what a task of this kind does on a host.
    const DOC: &'static str;

    /// Rules serde cannot express. Messages start with `"<NAME> spec: "`.
    fn validate(&self) -> Result<(), String> {
        Ok(())
    }

    /// The secrets a task needs, sorted, without repeats. They are read
    /// from the store in [`KindSpec::secret_scope`] and sent with the task.
    fn secret_names(&self) -> Vec<String> {
        Vec::new()
    }

    /// The (app, environment) whose secrets [`KindSpec::secret_names`]
    /// names; required when it names any.
    fn secret_scope(&self) -> Option<(&str, &str)> {
        None
    }

    /// The app and environment a task of this kind acts on, as the audit
    /// log records them (`ferry audit --app --env`); by default those of
    /// [`KindSpec::secret_scope`].
    fn audit_scope(&self) -> (Option<&str>, Option<&str>) {
        match self.secret_scope() {
            Some((app, env)) => (Some(app), Some(env)),
            None => (None, None),
        }
    }

    /// How long the agent lets a task run before it fails it (and fires
    /// its cancellation).
    fn timeout(&self) -> Duration;

    /// Tasks with the same key run one at a time on an agent; `None` runs
    /// beside anything (up to the agent's task limit).
    fn host_lock(&self) -> Option<String> {
        None
    }
}

/// Links a spec type to its [`JobKind`]; implemented by `registry!`.
pub trait Registered: KindSpec + Into<JobSpec> + TryFrom<JobSpec, Error = JobSpec> {
    const KIND: JobKind;
}

fn parse_as<S: KindSpec>(json: &str) -> Result<S, String> {
    let spec: S = serde_json::from_str(json).map_err(|e| format!("{} spec: {e}", S::NAME))?;
    spec.validate()?;
    Ok(spec)
}

/// One line per kind: `Variant(SpecType)`. Generates [`JobKind`] (with
/// `ALL`, names, CLI commands and docs) and [`JobSpec`] (parsing and the
/// per-kind questions the coordinator and agent ask).
macro_rules! registry {
    ($($variant:ident($spec:ty)),+ $(,)?) => {
        /// The kinds of job Ferry runs. Agents run only these: there is no
        /// arbitrary shell.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub enum JobKind {
            $(
                #[doc = concat!("Its spec is [`", stringify!($spec), "`].")]
                $variant,
            )+
        }

        impl JobKind {
            /// Every kind, in registry order.
            pub const ALL: &'static [JobKind] = &[$(JobKind::$variant),+];

            pub fn as_str(self) -> &'static str {
                match self {
                    $(JobKind::$variant => <$spec as KindSpec>::NAME,)+
                }
            }

            /// The `ferry` commands that submit tasks of this kind.
            pub fn cli(self) -> &'static [&'static str] {
                match self {
                    $(JobKind::$variant => <$spec as KindSpec>::CLI,)+
                }
            }

            /// One line: what a task of this kind does.
            pub fn doc(self) -> &'static str {
                match self {
                    $(JobKind::$variant => <$spec as KindSpec>::DOC,)+
                }
            }
        }

        /// A job's typed spec.
        #[derive(Debug, Clone, PartialEq)]
        pub enum JobSpec {
            $($variant($spec),)+
        }

        impl JobSpec {
            fn parse_kind(kind: JobKind, json: &str) -> Result<JobSpec, String> {
                match kind {
                    $(JobKind::$variant => parse_as::<$spec>(json).map(JobSpec::$variant),)+
                }
            }

            pub fn kind(&self) -> JobKind {
                match self {
                    $(JobSpec::$variant(_) => JobKind::$variant,)+
                }
            }

            pub fn to_json(&self) -> String {
                let json = match self {
                    $(JobSpec::$variant(s) => serde_json::to_string(s),)+
                };
                json.unwrap_or_else(|_| "{}".into())
            }

            /// [`KindSpec::secret_names`] of the spec.
            pub fn secret_names(&self) -> Vec<String> {
                match self {
                    $(JobSpec::$variant(s) => s.secret_names(),)+
                }
            }

            /// [`KindSpec::secret_scope`] of the spec.
            pub fn secret_scope(&self) -> Option<(&str, &str)> {
                match self {
                    $(JobSpec::$variant(s) => s.secret_scope(),)+
                }
            }

            /// [`KindSpec::audit_scope`] of the spec.
            pub fn audit_scope(&self) -> (Option<&str>, Option<&str>) {
                match self {
                    $(JobSpec::$variant(s) => s.audit_scope(),)+
                }
            }

            /// [`KindSpec::timeout`] of the spec.
            pub fn timeout(&self) -> Duration {
                match self {
                    $(JobSpec::$variant(s) => s.timeout(),)+
                }
            }

            /// [`KindSpec::host_lock`] of the spec.
            pub fn host_lock(&self) -> Option<String> {
                match self {
                    $(JobSpec::$variant(s) => s.host_lock(),)+
                }
            }
        }

        $(
            impl Registered for $spec {
                const KIND: JobKind = JobKind::$variant;
            }

            impl From<$spec> for JobSpec {
                fn from(spec: $spec) -> JobSpec {
                    JobSpec::$variant(spec)
                }
            }

            impl TryFrom<JobSpec> for $spec {
                type Error = JobSpec;
                fn try_from(spec: JobSpec) -> Result<$spec, JobSpec> {
                    match spec {
                        JobSpec::$variant(s) => Ok(s),
                        #[allow(unreachable_patterns)]
                        other => Err(other),
                    }
                }
            }
        )+
    };
}

registry! {
    Probe(ProbeSpec),
    Smoke(SmokeSpec),
    Deploy(DeploySpec),
    Logs(LogsSpec),
    Inspect(InspectSpec),
    Restart(RestartSpec),
    Backup(BackupSpec),
    Verify(VerifySpec),
    Restore(RestoreSpec),
    Prune(PruneSpec),
    Migrate(MigrateSpec),
}

impl JobSpec {
    /// Parses and validates `spec_json` for `kind`.
    pub fn parse(kind: &str, spec_json: &str) -> Result<JobSpec, String> {
        let kind: JobKind = kind.parse()?;
        let json = if spec_json.trim().is_empty() {
            "{}"
        } else {
            spec_json
        };
        JobSpec::parse_kind(kind, json)
    }
}

impl std::fmt::Display for JobKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for JobKind {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        JobKind::ALL
            .iter()
            .copied()
            .find(|k| k.as_str() == s)
            .ok_or_else(|| {
                let known: Vec<&str> = JobKind::ALL.iter().map(|k| k.as_str()).collect();
                format!(
                    "unknown job kind {s:?}; expected one of {}",
                    known.join(", ")
                )
            })
    }
}

impl Serialize for JobKind {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

impl<'de> Deserialize<'de> for JobKind {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let name = String::deserialize(d)?;
        name.parse().map_err(serde::de::Error::custom)
    }
}

/// Which agents a job runs on: those named in `agents` (every agent if it is
/// empty) that carry every label in `labels`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Selector {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub agents: Vec<String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
}

impl Selector {
    pub fn matches(&self, name: &str, labels: &BTreeMap<String, String>) -> bool {
        (self.agents.is_empty() || self.agents.iter().any(|a| a == name))
            && self.labels.iter().all(|(k, v)| labels.get(k) == Some(v))
    }

    /// `all agents`, `agents web-1, web-2`, `labels env=prod`, or both.
    pub fn describe(&self) -> String {
        let mut parts = Vec::new();
        if !self.agents.is_empty() {
            parts.push(format!("agents {}", self.agents.join(", ")));
        }
        if !self.labels.is_empty() {
            parts.push(format!(
                "labels {}",
                crate::labels::format_labels(&self.labels)
            ));
        }
        if parts.is_empty() {
            "all agents".into()
        } else {
            parts.join(" with ")
        }
    }
}

/// What a probe reports about its host (the task's result).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct HostFacts {
    pub hostname: String,
    pub os: String,
    pub kernel: String,
    pub arch: String,
    pub cpus: u32,
    pub memory_total_bytes: u64,
    pub memory_available_bytes: u64,
    pub disks: Vec<crate::health::DiskUsage>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub docker_version: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub docker_error: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub postgres_version: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub postgres_error: Option<String>,
    /// Agent clock minus coordinator clock, from the session's time exchange.
    pub clock_offset_ms: i64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn selectors_match_names_and_labels() {
        let labels = BTreeMap::from([("env".to_string(), "prod".to_string())]);
        assert!(Selector::default().matches("a", &labels));
        let s = Selector {
            agents: vec!["a".into()],
            labels: labels.clone(),
        };
        assert!(s.matches("a", &labels));
        assert!(!s.matches("b", &labels));
        assert!(!s.matches("a", &BTreeMap::new()));
        assert_eq!(s.describe(), "agents a with labels env=prod");
        assert_eq!(Selector::default().describe(), "all agents");
    }

    #[test]
    fn specs_parse_and_refuse() {
        assert_eq!(
            JobSpec::parse("probe", "").unwrap(),
            JobSpec::Probe(ProbeSpec {})
        );
        assert!(
            JobSpec::parse("probe", "{\"x\":1}")
                .unwrap_err()
                .contains("unknown field")
        );
        assert!(
            JobSpec::parse("shell", "{}")
                .unwrap_err()
                .contains("expected one of probe")
        );
    }

    #[test]
    fn every_kind_is_named_documented_and_submitted_by_a_command() {
        let doc = include_str!("../../../docs/job-kinds.md");
        let sections: Vec<&str> = doc
            .lines()
            .filter_map(|l| l.strip_prefix("## "))
            .map(str::trim)
            .collect();
        let mut names = std::collections::BTreeSet::new();
        for kind in JobKind::ALL {
            let name = kind.as_str();
            assert!(names.insert(name), "two kinds are called {name:?}");
            assert_eq!(name.parse::<JobKind>(), Ok(*kind));
            assert!(
                sections.contains(&name),
                "docs/job-kinds.md has no \"## {name}\" section"
            );
            assert!(!kind.cli().is_empty(), "{name}: no CLI command submits it");
            let line = kind.doc();
            assert!(
                !line.is_empty() && !line.contains('\n'),
                "{name}: its DOC must be one line"
            );
        }
        for section in sections {
            assert!(
                section.parse::<JobKind>().is_ok(),
                "docs/job-kinds.md describes {section:?}, which is not a job kind"
            );
        }
    }

    #[test]
    fn kinds_answer_for_their_specs() {
        let probe = JobSpec::parse("probe", "").unwrap();
        assert_eq!(probe.host_lock(), None);
        assert!(probe.secret_names().is_empty());
        assert_eq!(probe.timeout(), probe::PROBE_TIMEOUT);
        let smoke = JobSpec::parse(
            "smoke",
            r#"{"checks":[{"url":"http://a/","retry_for":"30s"}]}"#,
        )
        .unwrap();
        assert_eq!(smoke.host_lock(), None);
        // 30 s of retries, a 5 s attempt, a 1 s wait, and the margin.
        assert_eq!(
            smoke.timeout(),
            Duration::from_secs(36) + smoke::SMOKE_TIMEOUT_MARGIN
        );
        let deploy = JobSpec::parse(
            "deploy",
            r#"{"app":"shop","env":"prod","release":"1","services":[{"name":"web","image":"x",
                "pull":"never","restart":"no","strategy":"recreate",
                "secrets":["B","A"],"registry_auth":{"username_secret":"U","password_secret":"A"},
                "health":{"check":{"http":{"path":"/"}},"interval":"2s","timeout":"1s","retries":10}}]}"#,
        )
        .unwrap();
        assert_eq!(deploy.host_lock().as_deref(), Some("deploy:shop/prod"));
        assert_eq!(deploy.secret_names(), ["A", "B", "U"]);
        assert_eq!(deploy.secret_scope(), Some(("shop", "prod")));
        assert_eq!(
            deploy.timeout(),
            deploy::DEPLOY_TIMEOUT_BASE + Duration::from_secs(30)
        );
        assert_eq!(
            serde_json::from_str::<JobKind>("\"smoke\"").unwrap(),
            JobKind::Smoke
        );
        let err = serde_json::from_str::<JobKind>("\"shell\"").unwrap_err();
        assert!(
            err.to_string().contains(
                "unknown job kind \"shell\"; expected one of probe, smoke, deploy, logs, inspect, restart, backup, verify, restore, prune, migrate"
            ),
            "{err}"
        );
        let spec: DeploySpec = deploy.clone().try_into().unwrap();
        assert_eq!(JobSpec::from(spec), deploy);
        assert!(SmokeSpec::try_from(probe).is_err());
    }
}
