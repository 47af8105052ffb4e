//! Job specs and target selectors, shared by the coordinator (which stores
//! and routes them), the agent (which runs them) and the CLI.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

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

/// The kinds of job Ferry runs. Agents run only these: there is no
/// arbitrary shell.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum JobKind {
    /// Report the host's facts (a preflight).
    Probe,
    /// HTTP checks from the host (status, body, latency), retried until healthy.
    Smoke,
    /// Start a release of an app's services on the host's Docker engine.
    Deploy,
}

impl JobKind {
    pub const ALL: [JobKind; 3] = [JobKind::Probe, JobKind::Smoke, JobKind::Deploy];

    pub fn as_str(self) -> &'static str {
        match self {
            JobKind::Probe => "probe",
            JobKind::Smoke => "smoke",
            JobKind::Deploy => "deploy",
        }
    }
}

impl std::str::FromStr for JobKind {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        JobKind::ALL
            .into_iter()
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

/// `probe`'s spec: nothing to configure.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProbeSpec {}

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

impl SmokeSpec {
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

/// `deploy`'s spec: one release of an app's services on one host, as the
/// coordinator resolved it from the app file. Secret values are not in
/// it: they travel only in `Assign.task.secrets`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeploySpec {
    pub app: String,
    pub env: String,
    /// The release (version) being deployed, e.g. "1.4.2".
    pub release: String,
    pub services: Vec<ServiceDeploy>,
}

/// One service of a [`DeploySpec`], fully resolved.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServiceDeploy {
    pub name: String,
    pub image: String,
    pub pull: PullPolicy,
    /// Names of the secrets holding registry credentials.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub registry_auth: Option<RegistryAuth>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub command: Vec<String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub env: BTreeMap<String, String>,
    /// Secrets injected as environment variables of the same name.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub secrets: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ports: Vec<PortMapping>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub volumes: Vec<VolumeMount>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory_bytes: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpus: Option<f64>,
    pub restart: RestartPolicy,
    pub health: HealthGate,
    pub strategy: Strategy,
}

/// When to pull a service's image.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum PullPolicy {
    Always,
    IfMissing,
    Never,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RegistryAuth {
    pub username_secret: String,
    pub password_secret: String,
}

/// A container port; `host` publishes it on a fixed host port (recreate only).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PortMapping {
    pub container: u16,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host: Option<u16>,
    /// The host address `host` is published on; every address if none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host_ip: Option<std::net::IpAddr>,
}

/// A named volume (`<app>-<env>-<name>` on the host) mounted at `target`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VolumeMount {
    pub name: String,
    pub target: String,
    #[serde(default)]
    pub read_only: bool,
}

/// Docker's restart policy for a service's containers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum RestartPolicy {
    No,
    Always,
    UnlessStopped,
    OnFailure,
}

/// How a new release replaces the old one on a host.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Strategy {
    /// Stop the old container, then start the new one (what compose does):
    /// a short outage, but never two containers at once (fixed host ports,
    /// databases).
    Recreate,
    /// Start the new container beside the old one, gate on health, switch
    /// nginx to it, then stop the old one: no outage.
    BlueGreen,
}

// The app file spells these as the spec's JSON does (`if-missing`,
// `blue-green`); `FromStr` refuses anything else, naming what is accepted.
macro_rules! keyword_enum {
    ($ty:ident, $what:literal, $($variant:ident => $text:literal),+) => {
        impl $ty {
            pub const ALL: &[$ty] = &[$($ty::$variant),+];

            pub fn as_str(self) -> &'static str {
                match self {
                    $($ty::$variant => $text),+
                }
            }
        }

        impl std::str::FromStr for $ty {
            type Err = String;
            fn from_str(s: &str) -> Result<Self, String> {
                $ty::ALL.iter().copied().find(|v| v.as_str() == s).ok_or_else(|| {
                    let known: Vec<&str> = $ty::ALL.iter().map(|v| v.as_str()).collect();
                    format!("{s:?} is not {}; expected {}", $what, one_of(&known))
                })
            }
        }

        impl std::fmt::Display for $ty {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(self.as_str())
            }
        }
    };
}

keyword_enum!(PullPolicy, "a pull policy",
    Always => "always", IfMissing => "if-missing", Never => "never");
keyword_enum!(RestartPolicy, "a restart policy",
    No => "no", Always => "always", UnlessStopped => "unless-stopped", OnFailure => "on-failure");
keyword_enum!(Strategy, "a strategy", Recreate => "recreate", BlueGreen => "blue-green");

/// "a, b or c".
pub(crate) fn one_of(items: &[&str]) -> String {
    match items {
        [] => String::new(),
        [one] => one.to_string(),
        [init @ .., last] => format!("{} or {last}", init.join(", ")),
    }
}

/// When a new container counts as healthy.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HealthGate {
    pub check: HealthCheck,
    #[serde(with = "crate::time::serde_duration")]
    pub interval: std::time::Duration,
    #[serde(with = "crate::time::serde_duration")]
    pub timeout: std::time::Duration,
    pub retries: u32,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum HealthCheck {
    /// `GET path` on the first container port answers 2xx.
    Http { path: String },
    /// The image's own Docker HEALTHCHECK reports healthy.
    Docker,
    /// Still running, without restarts, after this long (workers).
    RunningFor(#[serde(with = "crate::time::serde_duration")] std::time::Duration),
}

impl DeploySpec {
    /// Every secret the release needs (each service's, and its registry
    /// credentials), sorted, without repeats.
    pub fn secret_names(&self) -> Vec<String> {
        let mut names: Vec<String> = Vec::new();
        for svc in &self.services {
            names.extend(svc.secrets.iter().cloned());
            if let Some(auth) = &svc.registry_auth {
                names.push(auth.username_secret.clone());
                names.push(auth.password_secret.clone());
            }
        }
        names.sort();
        names.dedup();
        names
    }
}

impl ServiceDeploy {
    /// The port health checks and blue-green switching use.
    pub fn http_port(&self) -> Option<u16> {
        self.ports.first().map(|p| p.container)
    }
}

/// Docker names and labels of an app's objects on a host. Every name
/// carries app and env, so environments of one app share a host safely.
pub mod naming {
    pub const LABEL_APP: &str = "ferry.app";
    pub const LABEL_ENV: &str = "ferry.env";
    pub const LABEL_SERVICE: &str = "ferry.service";
    pub const LABEL_RELEASE: &str = "ferry.release";

    pub fn container(app: &str, env: &str, service: &str, release: &str) -> String {
        // Docker names allow [a-zA-Z0-9_.-]; versions may carry '+'.
        let release: String = release
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-') {
                    c
                } else {
                    '-'
                }
            })
            .collect();
        format!("{app}-{env}-{service}-{release}")
    }

    pub fn network(app: &str, env: &str) -> String {
        format!("{app}-{env}")
    }

    pub fn volume(app: &str, env: &str, name: &str) -> String {
        format!("{app}-{env}-{name}")
    }

    /// The registry host an image reference names, if any
    /// (`127.0.0.1:5000/app:1`, `registry.example.com/team/app`).
    pub fn registry_host(image: &str) -> Option<String> {
        let (first, _) = image.split_once('/')?;
        (first.contains('.') || first.contains(':') || first == "localhost")
            .then(|| first.to_string())
    }

    /// The nginx upstream include file of a blue-green service.
    pub fn upstream_file(app: &str, env: &str, service: &str) -> String {
        format!("{app}-{env}-{service}.conf")
    }
}

/// A job's typed spec.
#[derive(Debug, Clone, PartialEq)]
pub enum JobSpec {
    Probe(ProbeSpec),
    Smoke(SmokeSpec),
    Deploy(DeploySpec),
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
        match kind {
            JobKind::Probe => serde_json::from_str(json)
                .map(JobSpec::Probe)
                .map_err(|e| format!("probe spec: {e}")),
            JobKind::Smoke => {
                let spec: SmokeSpec =
                    serde_json::from_str(json).map_err(|e| format!("smoke spec: {e}"))?;
                spec.validate()?;
                Ok(JobSpec::Smoke(spec))
            }
            JobKind::Deploy => {
                let spec: DeploySpec =
                    serde_json::from_str(json).map_err(|e| format!("deploy spec: {e}"))?;
                if spec.services.is_empty() {
                    return Err("deploy spec: services: at least one service is required".into());
                }
                Ok(JobSpec::Deploy(spec))
            }
        }
    }

    pub fn kind(&self) -> JobKind {
        match self {
            JobSpec::Probe(_) => JobKind::Probe,
            JobSpec::Smoke(_) => JobKind::Smoke,
            JobSpec::Deploy(_) => JobKind::Deploy,
        }
    }

    pub fn to_json(&self) -> String {
        let json = match self {
            JobSpec::Probe(s) => serde_json::to_string(s),
            JobSpec::Smoke(s) => serde_json::to_string(s),
            JobSpec::Deploy(s) => serde_json::to_string(s),
        };
        json.unwrap_or_else(|_| "{}".into())
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
    fn keywords_read_as_they_serialize() {
        fn check<
            T: Serialize + std::str::FromStr<Err = String> + PartialEq + std::fmt::Debug + Copy,
        >(
            all: &[T],
            as_str: fn(T) -> &'static str,
        ) {
            for v in all {
                assert_eq!(serde_json::to_value(v).unwrap(), as_str(*v));
                assert_eq!(as_str(*v).parse::<T>().unwrap(), *v);
            }
        }
        check(PullPolicy::ALL, PullPolicy::as_str);
        check(RestartPolicy::ALL, RestartPolicy::as_str);
        check(Strategy::ALL, Strategy::as_str);
        assert_eq!(
            "sometimes".parse::<PullPolicy>().unwrap_err(),
            "\"sometimes\" is not a pull policy; expected always, if-missing or never"
        );
    }

    #[test]
    fn registry_hosts() {
        use naming::registry_host;
        assert_eq!(
            registry_host("127.0.0.1:5000/app:1"),
            Some("127.0.0.1:5000".into())
        );
        assert_eq!(
            registry_host("registry.example.com/team/app:1"),
            Some("registry.example.com".into())
        );
        assert_eq!(registry_host("localhost/app"), Some("localhost".into()));
        assert_eq!(registry_host("library/nginx:1"), None);
        assert_eq!(registry_host("app:1"), None);
    }

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
