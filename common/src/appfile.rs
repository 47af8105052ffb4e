//! The app file, `ferry.toml`: what an app is made of (services, in Docker
//! Compose's vocabulary), where it runs (environments select hosts) and how
//! a rollout proceeds. The coordinator turns it into per-host deploy tasks;
//! `ferry validate` checks it before anything runs. `docs/ferry-toml.md`
//! documents every field.
//!
//! Parsing has two layers so that one run reports every problem in the file,
//! each with its line and field path, instead of stopping at the first:
//!
//! 1. a lenient serde layer (the private `raw` types, `deny_unknown_fields`)
//!    that only catches TOML syntax, unknown fields and wrong TOML types;
//! 2. a checking pass that turns raw values into the typed model, recording
//!    every rule broken on the way.
//!
//! What comes out, [`AppFile`], is typed and already valid (ports, volumes,
//! sizes, durations and policies are parsed), so code that uses it never
//! validates again. Lines come from the spans of the parsed TOML document,
//! looked up by field path.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::net::IpAddr;
use std::ops::Range;
use std::path::Path;
use std::str::FromStr;
use std::time::Duration;

use serde::{Serialize, Serializer};
use toml::Spanned;
use toml::de::{DeTable, DeValue};

use crate::job::{DeploySpec, HttpCheck, Selector, naming};
use crate::time::parse_duration;

/// An environment with this name always asks for confirmation before a
/// deploy, whatever its `protected` says: the one mistake worth a prompt.
pub const ALWAYS_PROTECTED: &str = "production";

/// The placeholders an image may use.
pub const PLACEHOLDERS: [&str; 3] = ["{version}", "{app}", "{env}"];

/// Defaults of a `[services.X.healthcheck]`: a check every 2 s, each
/// attempt cut after 2 s, unhealthy after 30 failures (about a minute),
/// enough for an app that runs its migrations at start.
pub const DEFAULT_HEALTH_INTERVAL: Duration = Duration::from_secs(2);
pub const DEFAULT_HEALTH_TIMEOUT: Duration = Duration::from_secs(2);
pub const DEFAULT_HEALTH_RETRIES: u32 = 30;

/// Docker refuses memory limits below 6 MiB; saying so here beats a failed
/// container start on every host.
pub const MIN_MEMORY_BYTES: u64 = 6 * 1024 * 1024;

// Docker names and labels are `crate::job::naming`'s: the deploy executor
// and this file must agree on them.

// ---------------------------------------------------------------------------
// The typed model
// ---------------------------------------------------------------------------

/// A valid app file. Build it with [`parse`] or [`load`].
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct AppFile {
    /// The app's name: lowercase letters, digits and `-`.
    pub app: String,
    pub rollout: Rollout,
    /// By name.
    pub environments: BTreeMap<String, Environment>,
    /// In the order of the file, which is the order they are deployed in.
    pub services: Vec<Service>,
    /// HTTP checks run from every host after its deploy.
    pub smoke: Vec<HttpCheck>,
}

/// `[rollout]`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Rollout {
    /// How many hosts are deployed at once (default 1).
    pub max_parallel: u32,
}

/// `[environments.NAME]`: the hosts an environment runs on and what differs
/// between environments.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Environment {
    /// Agent names; with `labels`, a host must match both.
    pub agents: Vec<String>,
    pub labels: BTreeMap<String, String>,
    /// Ask for confirmation before deploying (see [`Environment::is_protected`]).
    pub protected: bool,
    /// Overrides `rollout.max_parallel`.
    pub max_parallel: Option<u32>,
    /// Environment variables added to every service.
    pub variables: BTreeMap<String, String>,
}

/// `[services.NAME]`: one container per host, replaced on every release.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Service {
    pub name: String,
    /// May hold the [`PLACEHOLDERS`]; see [`Service::image_for`].
    pub image: String,
    /// As written; see [`Service::pull_policy`] for the default.
    pub pull: Option<PullPolicy>,
    pub registry_auth: Option<RegistryAuth>,
    /// Replaces the image's command.
    pub command: Option<Vec<String>>,
    pub env: BTreeMap<String, String>,
    /// Names of secrets, injected as environment variables of the same name.
    pub secrets: Vec<String>,
    /// The first one is the HTTP port (health checks, blue-green).
    pub ports: Vec<PortSpec>,
    pub volumes: Vec<VolumeMount>,
    pub user: Option<String>,
    /// Memory limit in bytes.
    pub memory: Option<u64>,
    pub cpus: Option<f64>,
    pub restart: RestartPolicy,
    /// As written; see [`Service::strategy`] for the default.
    pub strategy: Option<Strategy>,
    pub healthcheck: Option<Healthcheck>,
}

/// Where registry credentials come from: the names of two secrets.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RegistryAuth {
    pub username_secret: String,
    pub password_secret: String,
}

/// When to pull a service's image.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PullPolicy {
    Always,
    IfMissing,
    Never,
}

/// Docker's restart policy for a service's containers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RestartPolicy {
    No,
    Always,
    UnlessStopped,
    OnFailure,
}

/// How a new release replaces the old one on a host.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Strategy {
    /// Stop the old container, then start the new one: a short outage, but
    /// never two containers at once (fixed host ports, databases).
    Recreate,
    /// Start the new container beside the old one, switch traffic once it is
    /// healthy, then stop the old one: no outage.
    BlueGreen,
}

/// A container port, maybe published on the host.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct PortSpec {
    pub container: u16,
    /// A fixed host port (`"8080:3000"`).
    pub host_port: Option<u16>,
    /// The host address it is published on (`"127.0.0.1:8080:3000"`);
    /// only with `host_port`. None: every address.
    pub host_ip: Option<IpAddr>,
}

/// A named volume mounted in a service's containers.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct VolumeMount {
    /// The name in the file; Docker's is [`naming::volume`] of it.
    pub name: String,
    /// Absolute path in the container.
    pub path: String,
    pub read_only: bool,
}

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

impl AppFile {
    /// The environment called `name`, or an error that lists the known ones.
    pub fn environment(&self, name: &str) -> Result<&Environment, AppFileError> {
        self.environments
            .get(name)
            .ok_or_else(|| AppFileError::UnknownEnvironment {
                name: name.to_string(),
                known: self.environments.keys().cloned().collect(),
            })
    }

    /// The service called `name`.
    pub fn service(&self, name: &str) -> Option<&Service> {
        self.services.iter().find(|s| s.name == name)
    }
}

impl Environment {
    /// The hosts this environment runs on, as a job selector. Never empty:
    /// validation refuses an environment that would select every agent.
    pub fn selector(&self) -> Selector {
        Selector {
            agents: self.agents.clone(),
            labels: self.labels.clone(),
        }
    }

    /// Whether deploying to the environment called `name` needs confirmation.
    pub fn is_protected(&self, name: &str) -> bool {
        self.protected || name == ALWAYS_PROTECTED
    }

    /// How many hosts of this environment are deployed at once.
    pub fn max_parallel(&self, app: &AppFile) -> u32 {
        self.max_parallel.unwrap_or(app.rollout.max_parallel)
    }
}

impl Service {
    /// The image to run for release `version` of `app` in `env`.
    pub fn image_for(&self, app: &str, env: &str, version: &str) -> String {
        self.image
            .replace("{version}", version)
            .replace("{app}", app)
            .replace("{env}", env)
    }

    /// The container port health checks and blue-green traffic use.
    pub fn http_port(&self) -> Option<u16> {
        self.ports.first().map(|p| p.container)
    }

    /// The strategy as written, or the default: blue-green for a service
    /// with a port that publishes no fixed host port and mounts no volume,
    /// recreate otherwise. Two containers cannot publish the same host port,
    /// and two containers writing one volume at once (a database) may
    /// corrupt it, so those only get blue-green when the file asks for it
    /// (and, for host ports, never).
    pub fn strategy(&self) -> Strategy {
        self.strategy.unwrap_or(
            if !self.ports.is_empty()
                && self.ports.iter().all(|p| p.host_port.is_none())
                && self.volumes.is_empty()
            {
                Strategy::BlueGreen
            } else {
                Strategy::Recreate
            },
        )
    }

    /// The pull policy for `image` (resolved by [`Service::image_for`]): as
    /// written, else `always` when the image names a registry host (a
    /// pushed tag may move) and `if-missing` otherwise (a local build, or a
    /// Docker Hub image that Ferry should not re-download every release).
    pub fn pull_policy(&self, image: &str) -> PullPolicy {
        self.pull
            .unwrap_or(if naming::registry_host(image).is_some() {
                PullPolicy::Always
            } else {
                PullPolicy::IfMissing
            })
    }

    /// The environment variables of this service in `environment`: the
    /// environment's `variables`, then the service's `env`, which wins.
    /// Secrets are not included: only their names are known here.
    pub fn resolved_env(&self, environment: &Environment) -> BTreeMap<String, String> {
        let mut out = environment.variables.clone();
        out.extend(self.env.iter().map(|(k, v)| (k.clone(), v.clone())));
        out
    }
}

/// Checks a release version: it names containers and usually an image tag,
/// so it follows Docker's tag rule (`[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}`).
pub fn validate_version(version: &str) -> Result<(), String> {
    let mut chars = version.chars();
    let first_ok = chars
        .next()
        .is_some_and(|c| c.is_ascii_alphanumeric() || c == '_');
    if !first_ok
        || version.len() > 128
        || !chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'))
    {
        return Err(format!(
            "version {version:?}: expected 1 to 128 letters, digits, '_', '.' or '-', \
             not starting with '.' or '-' (it becomes a Docker tag and container name), e.g. \"1.4.2\""
        ));
    }
    Ok(())
}

impl AppFile {
    /// What every host of environment `env` runs for release `version`:
    /// services in file order, images resolved, the environment's
    /// variables merged. Secret values are not in it (only names).
    pub fn deploy_spec(&self, env: &str, version: &str) -> Result<DeploySpec, AppFileError> {
        use crate::job as j;
        let environment = self.environment(env)?;
        validate_version(version).map_err(AppFileError::BadVersion)?;
        let services = self
            .services
            .iter()
            .map(|svc| {
                let image = svc.image_for(&self.app, env, version);
                let health = match &svc.healthcheck {
                    Some(h) => j::HealthGate {
                        check: match &h.check {
                            HealthCheckKind::Http { path } => {
                                j::HealthCheck::Http { path: path.clone() }
                            }
                            HealthCheckKind::Docker => j::HealthCheck::Docker,
                            HealthCheckKind::RunningFor(d) => j::HealthCheck::RunningFor(*d),
                        },
                        interval: h.interval,
                        timeout: h.timeout,
                        retries: h.retries,
                    },
                    // No gate: healthy once started.
                    None => j::HealthGate {
                        check: j::HealthCheck::RunningFor(Duration::ZERO),
                        interval: DEFAULT_HEALTH_INTERVAL,
                        timeout: DEFAULT_HEALTH_TIMEOUT,
                        retries: 1,
                    },
                };
                j::ServiceDeploy {
                    name: svc.name.clone(),
                    pull: match svc.pull_policy(&image) {
                        PullPolicy::Always => j::PullPolicy::Always,
                        PullPolicy::IfMissing => j::PullPolicy::IfMissing,
                        PullPolicy::Never => j::PullPolicy::Never,
                    },
                    image,
                    registry_auth: svc.registry_auth.as_ref().map(|a| j::RegistryAuth {
                        username_secret: a.username_secret.clone(),
                        password_secret: a.password_secret.clone(),
                    }),
                    command: svc.command.clone().unwrap_or_default(),
                    env: svc.resolved_env(environment),
                    secrets: svc.secrets.clone(),
                    ports: svc
                        .ports
                        .iter()
                        .map(|p| j::PortMapping {
                            container: p.container,
                            host: p.host_port,
                            host_ip: p.host_ip,
                        })
                        .collect(),
                    volumes: svc
                        .volumes
                        .iter()
                        .map(|v| j::VolumeMount {
                            name: v.name.clone(),
                            target: v.path.clone(),
                            read_only: v.read_only,
                        })
                        .collect(),
                    user: svc.user.clone(),
                    memory_bytes: svc.memory.map(|m| m as i64),
                    cpus: svc.cpus,
                    restart: match svc.restart {
                        RestartPolicy::No => j::RestartPolicy::No,
                        RestartPolicy::Always => j::RestartPolicy::Always,
                        RestartPolicy::UnlessStopped => j::RestartPolicy::UnlessStopped,
                        RestartPolicy::OnFailure => j::RestartPolicy::OnFailure,
                    },
                    health,
                    strategy: match svc.strategy() {
                        Strategy::Recreate => j::Strategy::Recreate,
                        Strategy::BlueGreen => j::Strategy::BlueGreen,
                    },
                }
            })
            .collect();
        Ok(DeploySpec {
            app: self.app.clone(),
            env: env.to_string(),
            release: version.to_string(),
            services,
        })
    }
}

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

        impl FromStr for $ty {
            type Err = String;
            fn from_str(s: &str) -> Result<Self, String> {
                $ty::ALL.iter().copied().find(|v| v.as_str() == s).ok_or_else(|| {
                    let known: Vec<&str> = $ty::ALL.iter().map(|v| v.as_str()).collect();
                    format!("{s:?} is not {}; expected {}", $what, one_of(&known))
                })
            }
        }

        impl fmt::Display for $ty {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.as_str())
            }
        }

        impl Serialize for $ty {
            fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.serialize_str(self.as_str())
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
fn one_of(items: &[&str]) -> String {
    match items {
        [] => String::new(),
        [one] => one.to_string(),
        [init @ .., last] => format!("{} or {last}", init.join(", ")),
    }
}

impl fmt::Display for PortSpec {
    /// The file's own syntax: `3000`, `8080:3000`, `127.0.0.1:8080:3000`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (self.host_ip, self.host_port) {
            (Some(IpAddr::V6(ip)), Some(h)) => write!(f, "[{ip}]:{h}:{}", self.container),
            (Some(ip), Some(h)) => write!(f, "{ip}:{h}:{}", self.container),
            (_, Some(h)) => write!(f, "{h}:{}", self.container),
            (_, None) => write!(f, "{}", self.container),
        }
    }
}

impl FromStr for PortSpec {
    type Err = String;

    /// `CONTAINER`, `HOST:CONTAINER` or `IP:HOST:CONTAINER`, optionally
    /// followed by `/tcp`.
    fn from_str(text: &str) -> Result<PortSpec, String> {
        let spec = match text.rsplit_once('/') {
            Some((spec, "tcp")) => spec,
            Some((_, proto)) => {
                return Err(format!(
                    "{text:?}: only TCP ports are supported, not {proto:?}"
                ));
            }
            None => text,
        };
        let parts: Vec<&str> = spec.rsplitn(3, ':').collect();
        let port = |p: &str| -> Result<u16, String> {
            if p.contains('-') {
                return Err(format!("{text:?}: port ranges are not supported"));
            }
            match p.parse::<u16>() {
                Ok(n) if n > 0 => Ok(n),
                _ => Err(format!(
                    "{text:?} is not a port; expected CONTAINER, HOST:CONTAINER or IP:HOST:CONTAINER with ports from 1 to 65535"
                )),
            }
        };
        match parts.as_slice() {
            [c] => Ok(PortSpec {
                container: port(c)?,
                host_port: None,
                host_ip: None,
            }),
            [c, h] => Ok(PortSpec {
                container: port(c)?,
                host_port: Some(port(h)?),
                host_ip: None,
            }),
            [c, h, ip] => {
                let bare = ip
                    .strip_prefix('[')
                    .and_then(|i| i.strip_suffix(']'))
                    .unwrap_or(ip);
                let host_ip = bare.parse::<IpAddr>().map_err(|_| {
                    format!("{text:?}: {ip:?} is not an IP address (write IPv6 as [::1])")
                })?;
                Ok(PortSpec {
                    container: port(c)?,
                    host_port: Some(port(h)?),
                    host_ip: Some(host_ip),
                })
            }
            _ => Err(format!("{text:?} is not a port")),
        }
    }
}

impl Serialize for PortSpec {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl fmt::Display for VolumeMount {
    /// The file's own syntax: `name:/path` or `name:/path:ro`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.name, self.path)?;
        if self.read_only {
            f.write_str(":ro")?;
        }
        Ok(())
    }
}

impl FromStr for VolumeMount {
    type Err = String;

    /// `name:/path`, `name:/path:ro` or `name:/path:rw`.
    fn from_str(text: &str) -> Result<VolumeMount, String> {
        if text.starts_with(['/', '.', '~']) {
            return Err(format!(
                "{text:?} is a bind mount of a host path; only named volumes are supported (name:/path[:ro])"
            ));
        }
        let parts: Vec<&str> = text.split(':').collect();
        let (name, path, read_only) = match parts.as_slice() {
            [name, path] => (*name, *path, false),
            [name, path, "ro"] => (*name, *path, true),
            [name, path, "rw"] => (*name, *path, false),
            [_, _, mode] => {
                return Err(format!(
                    "{text:?}: unknown mode {mode:?}; expected ro or rw"
                ));
            }
            _ => {
                return Err(format!(
                    "{text:?} is not a volume; expected name:/path or name:/path:ro"
                ));
            }
        };
        crate::identity::validate_name(name).map_err(|e| format!("{text:?}: volume name {e}"))?;
        if !path.starts_with('/') {
            return Err(format!(
                "{text:?}: the path in the container must be absolute, like /data"
            ));
        }
        Ok(VolumeMount {
            name: name.to_string(),
            path: path.to_string(),
            read_only,
        })
    }
}

impl Serialize for VolumeMount {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

/// Parses a memory size: bytes, or a number with a `k`, `m` or `g` suffix
/// (binary units, any case, an optional trailing `b`), like Docker.
pub fn parse_memory(text: &str) -> Result<u64, String> {
    let bad =
        || format!("{text:?} is not a size; expected bytes or something like \"512m\" or \"2g\"");
    let t = text.trim().to_ascii_lowercase();
    let t = t.strip_suffix('b').unwrap_or(&t);
    let (number, unit) = match t.char_indices().find(|(_, c)| c.is_ascii_alphabetic()) {
        Some((i, _)) => t.split_at(i),
        None => (t, ""),
    };
    let multiplier: u64 = match unit {
        "" => 1,
        "k" => 1 << 10,
        "m" => 1 << 20,
        "g" => 1 << 30,
        _ => return Err(bad()),
    };
    let number = number.trim();
    if number.is_empty() || !number.chars().all(|c| c.is_ascii_digit() || c == '.') {
        return Err(bad());
    }
    let value: f64 = number.parse().map_err(|_| bad())?;
    let bytes = value * multiplier as f64;
    if !bytes.is_finite() || bytes >= u64::MAX as f64 {
        return Err(bad());
    }
    Ok(bytes as u64)
}

// ---------------------------------------------------------------------------
// Errors
// ---------------------------------------------------------------------------

/// One thing wrong in an app file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Problem {
    /// 1-based line of the offending key (or of the nearest enclosing one
    /// that exists in the file; 1 for the file as a whole).
    pub line: usize,
    /// Field path like `services.web.healthcheck.interval` or `smoke[0].url`;
    /// empty for TOML syntax errors outside any key.
    pub path: String,
    pub message: String,
}

/// What can go wrong with an app file.
#[derive(Debug, thiserror::Error)]
pub enum AppFileError {
    #[error("{file}: cannot read: {source}")]
    Read {
        file: String,
        #[source]
        source: std::io::Error,
    },
    /// Every problem found, in file order.
    #[error("{}", format_problems(file, problems))]
    Invalid {
        file: String,
        problems: Vec<Problem>,
    },
    #[error("unknown environment {name:?}; {}", known_environments(name, known))]
    UnknownEnvironment { name: String, known: Vec<String> },
    #[error("{0}")]
    BadVersion(String),
}

impl AppFileError {
    /// The problems, for [`AppFileError::Invalid`].
    pub fn problems(&self) -> &[Problem] {
        match self {
            AppFileError::Invalid { problems, .. } => problems,
            _ => &[],
        }
    }
}

/// `file:line: path: message`, the form editors and terminals jump to.
pub fn format_problem(file: &str, p: &Problem) -> String {
    if p.path.is_empty() {
        format!("{file}:{}: {}", p.line, p.message)
    } else {
        format!("{file}:{}: {}: {}", p.line, p.path, p.message)
    }
}

fn format_problems(file: &str, problems: &[Problem]) -> String {
    problems
        .iter()
        .map(|p| format_problem(file, p))
        .collect::<Vec<_>>()
        .join("\n")
}

fn known_environments(name: &str, known: &[String]) -> String {
    if known.is_empty() {
        return "the app file defines none".into();
    }
    let mut text = format!("the app file defines {}", known.join(", "));
    if let Some(s) = closest(name, known.iter().map(String::as_str)) {
        text.push_str(&format!(" (did you mean {s:?}?)"));
    }
    text
}

/// The candidate within a small edit distance of `word`, if any.
fn closest<'a>(word: &str, candidates: impl Iterator<Item = &'a str>) -> Option<&'a str> {
    let limit = (word.chars().count() / 3).max(1);
    candidates
        .map(|c| (edit_distance(word, c), c))
        .filter(|(d, _)| *d <= limit)
        .min()
        .map(|(_, c)| c)
}

fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut prev = row[0];
        row[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let cur = row[j + 1];
            row[j + 1] = (prev + usize::from(ca != *cb)).min(row[j] + 1).min(cur + 1);
            prev = cur;
        }
    }
    row[b.len()]
}

// ---------------------------------------------------------------------------
// Parsing
// ---------------------------------------------------------------------------

/// Reads and parses the app file at `path`.
pub fn load(path: &Path) -> Result<AppFile, AppFileError> {
    let file = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|source| AppFileError::Read {
        file: file.clone(),
        source,
    })?;
    parse(&file, &text)
}

/// Parses and validates an app file. `path_for_messages` names the file in
/// errors. Reports every problem found, not just the first.
pub fn parse(path_for_messages: &str, text: &str) -> Result<AppFile, AppFileError> {
    let invalid = |problems: Vec<Problem>| AppFileError::Invalid {
        file: path_for_messages.to_string(),
        problems,
    };
    let (doc, syntax) = DeTable::parse_recoverable(text);
    let index = Index::build(text, &doc);
    if !syntax.is_empty() {
        return Err(invalid(
            syntax.iter().map(|e| index.serde_problem(e)).collect(),
        ));
    }
    let raw: raw::AppFile = serde::Deserialize::deserialize(toml::de::Deserializer::from(doc))
        .map_err(|e| invalid(vec![index.serde_problem(&e)]))?;
    let mut check = Check::default();
    let app = check.app_file(raw, &index);
    if check.problems.is_empty() {
        Ok(app)
    } else {
        let mut problems: Vec<Problem> = check
            .problems
            .into_iter()
            .map(|(path, message)| Problem {
                line: index.line_of(&path),
                path: path.to_string(),
                message,
            })
            .collect();
        problems.sort_by(|a, b| (a.line, &a.path).cmp(&(b.line, &b.path)));
        problems.dedup();
        Err(invalid(problems))
    }
}

/// A field path: `services.web.ports[0]`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct FieldPath(Vec<Seg>);

#[derive(Debug, Clone, PartialEq, Eq)]
enum Seg {
    Key(String),
    Index(usize),
}

impl FieldPath {
    fn key(&self, k: &str) -> FieldPath {
        let mut p = self.clone();
        p.0.push(Seg::Key(k.to_string()));
        p
    }

    fn index(&self, i: usize) -> FieldPath {
        let mut p = self.clone();
        p.0.push(Seg::Index(i));
        p
    }

    fn parent(&self) -> Option<FieldPath> {
        let mut p = self.clone();
        p.0.pop().map(|_| p)
    }
}

impl fmt::Display for FieldPath {
    /// Dotted TOML keys, quoted when they are not bare keys.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, seg) in self.0.iter().enumerate() {
            match seg {
                Seg::Key(k) => {
                    if i > 0 {
                        f.write_str(".")?;
                    }
                    let bare = !k.is_empty()
                        && k.chars()
                            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
                    if bare {
                        f.write_str(k)?;
                    } else {
                        write!(f, "{k:?}")?;
                    }
                }
                Seg::Index(n) => write!(f, "[{n}]")?,
            }
        }
        Ok(())
    }
}

/// Where every key and array element of the document is: lines for
/// problems found after deserializing, field paths for serde's errors
/// (which only carry a byte span).
struct Index {
    /// Byte offset of each line start.
    line_starts: Vec<usize>,
    nodes: Vec<Node>,
    lines: BTreeMap<String, usize>,
}

struct Node {
    path: FieldPath,
    key: Range<usize>,
    value: Range<usize>,
}

impl Index {
    fn build(text: &str, doc: &Spanned<DeTable<'_>>) -> Index {
        let mut index = Index {
            line_starts: std::iter::once(0)
                .chain(text.match_indices('\n').map(|(i, _)| i + 1))
                .collect(),
            nodes: Vec::new(),
            lines: BTreeMap::new(),
        };
        index.table(doc.get_ref(), &FieldPath::default());
        index.lines = index
            .nodes
            .iter()
            .map(|n| (n.path.to_string(), index.line_at(n.key.start)))
            .collect();
        index
    }

    fn table(&mut self, table: &DeTable<'_>, path: &FieldPath) {
        for (k, v) in table.iter() {
            let p = path.key(k.get_ref());
            self.nodes.push(Node {
                path: p.clone(),
                key: k.span(),
                value: v.span(),
            });
            self.value(v, &p);
        }
    }

    fn value(&mut self, v: &Spanned<DeValue<'_>>, path: &FieldPath) {
        match v.get_ref() {
            DeValue::Table(t) => self.table(t, path),
            DeValue::Array(items) => {
                for (i, item) in items.iter().enumerate() {
                    let p = path.index(i);
                    self.nodes.push(Node {
                        path: p.clone(),
                        key: item.span(),
                        value: item.span(),
                    });
                    self.value(item, &p);
                }
            }
            _ => {}
        }
    }

    fn line_at(&self, offset: usize) -> usize {
        self.line_starts.partition_point(|&s| s <= offset).max(1)
    }

    /// The line of `path`'s key, or of its nearest ancestor in the file.
    fn line_of(&self, path: &FieldPath) -> usize {
        let mut p = Some(path.clone());
        while let Some(cur) = p {
            if let Some(line) = self.lines.get(&cur.to_string()) {
                return *line;
            }
            p = cur.parent();
        }
        1
    }

    /// Where `path`'s key starts in the text, if it is there.
    fn offset_of(&self, path: &FieldPath) -> Option<usize> {
        self.nodes
            .iter()
            .find(|n| &n.path == path)
            .map(|n| n.key.start)
    }

    /// The innermost key or value whose span holds `offset`.
    fn path_at(&self, offset: usize) -> Option<&FieldPath> {
        self.nodes
            .iter()
            .flat_map(|n| [(&n.key, &n.path), (&n.value, &n.path)])
            .filter(|(span, _)| span.contains(&offset))
            .min_by_key(|(span, _)| span.len())
            .map(|(_, path)| path)
    }

    fn serde_problem(&self, e: &toml::de::Error) -> Problem {
        let offset = e.span().map(|s| s.start).unwrap_or(0);
        let message = e
            .message()
            .trim()
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty())
            .collect::<Vec<_>>()
            .join("; ");
        let mut path = self.path_at(offset).cloned().unwrap_or_default();
        // serde points an unknown field at the key itself; the problem is
        // in the table that holds it.
        if let Some(Seg::Key(last)) = path.0.last()
            && message.starts_with(&format!("unknown field `{last}`"))
        {
            path.0.pop();
        }
        Problem {
            line: if e.span().is_some() {
                self.line_at(offset)
            } else {
                1
            },
            path: path.to_string(),
            message,
        }
    }
}

/// The checking pass: raw values in, typed values out, every broken rule
/// recorded with its field path.
#[derive(Default)]
struct Check {
    problems: Vec<(FieldPath, String)>,
}

impl Check {
    fn err(&mut self, path: &FieldPath, message: impl Into<String>) {
        self.problems.push((path.clone(), message.into()));
    }

    /// `Ok` values through, errors recorded.
    fn ok<T>(&mut self, path: &FieldPath, r: Result<T, String>) -> Option<T> {
        r.map_err(|e| self.err(path, e)).ok()
    }

    fn app_file(&mut self, raw: raw::AppFile, index: &Index) -> AppFile {
        let root = FieldPath::default();
        let app_path = root.key("app");
        let app = match raw.app {
            Some(app) => {
                self.ok(&app_path, dns_name(&app));
                app
            }
            None => {
                self.err(&app_path, "missing: the app's name, e.g. app = \"shop\"");
                String::new()
            }
        };
        let rollout = Rollout {
            max_parallel: raw
                .rollout
                .and_then(|r| r.max_parallel)
                .and_then(|n| self.ok(&root.key("rollout").key("max_parallel"), at_least_one(n)))
                .unwrap_or(1),
        };

        let envs_path = root.key("environments");
        if raw.environments.is_empty() {
            self.err(
                &envs_path,
                "at least one environment is required, e.g. [environments.production] with labels = { env = \"production\" }",
            );
        }
        let environments: BTreeMap<String, Environment> = raw
            .environments
            .into_iter()
            .map(|(name, env)| {
                let e = self.environment(&envs_path.key(&name), &name, env);
                (name, e)
            })
            .collect();

        let services_path = root.key("services");
        if raw.services.is_empty() {
            self.err(
                &services_path,
                "at least one service is required, e.g. [services.web] with image = \"registry.example.com/shop:{version}\"",
            );
        }
        // The file's order is the deploy order; serde hands the table over
        // sorted, the spans remember.
        let mut raw_services: Vec<(String, raw::Service)> = raw.services.into_iter().collect();
        raw_services.sort_by_key(|(name, _)| index.offset_of(&services_path.key(name)));
        let services: Vec<Service> = raw_services
            .into_iter()
            .map(|(name, s)| self.service(&services_path.key(&name), name, s))
            .collect();

        let smoke = raw
            .smoke
            .into_iter()
            .enumerate()
            .map(|(i, s)| self.smoke(&root.key("smoke").index(i), s))
            .collect();

        self.across(&environments, &services);
        AppFile {
            app,
            rollout,
            environments,
            services,
            smoke,
        }
    }

    fn environment(&mut self, path: &FieldPath, name: &str, raw: raw::Environment) -> Environment {
        self.ok(
            path,
            dns_name(name).map_err(|e| format!("environment name {e}")),
        );
        let agents = raw.agents.unwrap_or_default();
        let mut seen = BTreeSet::new();
        for (i, agent) in agents.iter().enumerate() {
            let p = path.key("agents").index(i);
            self.ok(
                &p,
                crate::identity::validate_name(agent).map_err(|e| format!("agent name {e}")),
            );
            if !seen.insert(agent) {
                self.err(&p, format!("{agent:?} is listed twice"));
            }
        }
        let labels = raw.labels.unwrap_or_default();
        for (k, v) in &labels {
            let p = path.key("labels").key(k);
            self.ok(&p, crate::labels::validate_key(k));
            if v.contains([',', '=']) {
                self.err(&p, format!("label value {v:?} must not contain ',' or '='"));
            }
        }
        if agents.is_empty() && labels.is_empty() {
            self.err(
                path,
                format!(
                    "selects no hosts; give agents = [\"web-1\"] and/or labels = {{ env = \"{name}\" }}"
                ),
            );
        }
        if name == ALWAYS_PROTECTED && raw.protected == Some(false) {
            self.err(
                &path.key("protected"),
                format!(
                    "an environment named {ALWAYS_PROTECTED:?} is always protected; remove protected = false"
                ),
            );
        }
        let max_parallel = raw
            .max_parallel
            .and_then(|n| self.ok(&path.key("max_parallel"), at_least_one(n)));
        let variables = self.env_map(&path.key("variables"), raw.variables.unwrap_or_default());
        Environment {
            agents,
            labels,
            protected: raw.protected.unwrap_or(false),
            max_parallel,
            variables,
        }
    }

    fn env_map(
        &mut self,
        path: &FieldPath,
        raw: BTreeMap<String, raw::Scalar>,
    ) -> BTreeMap<String, String> {
        raw.into_iter()
            .map(|(k, v)| {
                self.ok(&path.key(&k), env_var_name(&k));
                (k, v.into_text())
            })
            .collect()
    }

    fn service(&mut self, path: &FieldPath, name: String, raw: raw::Service) -> Service {
        self.ok(
            path,
            dns_name(&name).map_err(|e| format!("service name {e}")),
        );
        let image = match raw.image {
            Some(image) => {
                self.ok(&path.key("image"), check_image(&image));
                image
            }
            None => {
                self.err(
                    &path.key("image"),
                    "missing: the image to run, e.g. image = \"registry.example.com/shop:{version}\"",
                );
                String::new()
            }
        };
        let pull = raw.pull.and_then(|p| self.ok(&path.key("pull"), p.parse()));
        let registry_auth = raw
            .registry_auth
            .and_then(|a| self.registry_auth(&path.key("registry_auth"), a));
        let command = raw
            .command
            .and_then(|c| self.command(&path.key("command"), c));
        let env = self.env_map(&path.key("env"), raw.env);

        let secrets_path = path.key("secrets");
        let mut seen = BTreeSet::new();
        for (i, secret) in raw.secrets.iter().enumerate() {
            let p = secrets_path.index(i);
            self.ok(&p, secret_name(secret));
            if !seen.insert(secret) {
                self.err(&p, format!("{secret:?} is listed twice"));
            }
            if env.contains_key(secret) {
                self.err(
                    &path.key("env").key(secret),
                    format!(
                        "{secret:?} is also in secrets; a secret is injected as the environment variable of the same name, so remove it from env"
                    ),
                );
            }
        }

        let ports = self.ports(&path.key("ports"), raw.ports);
        let volumes = self.volumes(&path.key("volumes"), raw.volumes);
        let user = raw.user.inspect(|u| {
            self.ok(&path.key("user"), check_user(u));
        });
        let memory = raw
            .memory
            .and_then(|m| self.ok(&path.key("memory"), memory_value(m)));
        if let Some(cpus) = raw.cpus
            && !(cpus.is_finite() && cpus > 0.0)
        {
            self.err(&path.key("cpus"), format!("must be above 0, got {cpus}"));
        }
        let restart = raw
            .restart
            .and_then(|r| self.ok(&path.key("restart"), r.parse()))
            .unwrap_or(RestartPolicy::UnlessStopped);
        let strategy = raw
            .strategy
            .and_then(|s| self.ok(&path.key("strategy"), s.parse()));
        let healthcheck = raw
            .healthcheck
            .and_then(|h| self.healthcheck(&path.key("healthcheck"), h, &ports));

        let service = Service {
            name,
            image,
            pull,
            registry_auth,
            command,
            env,
            secrets: raw.secrets,
            ports,
            volumes,
            user,
            memory,
            cpus: raw.cpus,
            restart,
            strategy,
            healthcheck,
        };
        if service.strategy == Some(Strategy::BlueGreen) {
            let p = path.key("strategy");
            if service.ports.is_empty() {
                self.err(
                    &p,
                    "blue-green needs a port to send traffic to; add ports = [3000] or use strategy = \"recreate\"",
                );
            }
            for (i, port) in service.ports.iter().enumerate() {
                if let Some(host) = port.host_port {
                    self.err(
                        &p,
                        format!(
                            "blue-green runs the new container beside the old one, and both cannot publish host port {host} (ports[{i}] = {:?}); use strategy = \"recreate\" or publish no host port",
                            port.to_string()
                        ),
                    );
                }
            }
        }
        service
    }

    fn registry_auth(&mut self, path: &FieldPath, raw: raw::RegistryAuth) -> Option<RegistryAuth> {
        let mut name = |field: &str, value: Option<String>| match value {
            Some(v) => self.ok(&path.key(field), secret_name(&v)).map(|()| v),
            None => {
                self.err(
                    &path.key(field),
                    format!(
                        "missing: the name of the secret holding the registry {}",
                        field.trim_end_matches("_secret")
                    ),
                );
                None
            }
        };
        let username_secret = name("username_secret", raw.username_secret);
        let password_secret = name("password_secret", raw.password_secret);
        Some(RegistryAuth {
            username_secret: username_secret?,
            password_secret: password_secret?,
        })
    }

    fn command(&mut self, path: &FieldPath, raw: raw::Command) -> Option<Vec<String>> {
        match raw {
            raw::Command::Line(line) => {
                self.err(
                    path,
                    format!(
                        "must be an array of arguments, e.g. [\"node\", \"dist/server.js\"]; to run a command line through a shell write [\"sh\", \"-c\", {line:?}]"
                    ),
                );
                None
            }
            raw::Command::Args(args) if args.first().is_none_or(|a| a.is_empty()) => {
                self.err(path, "must name a program: the first argument is empty");
                None
            }
            raw::Command::Args(args) => Some(args),
        }
    }

    fn ports(&mut self, path: &FieldPath, raw: Vec<raw::Scalar>) -> Vec<PortSpec> {
        let mut out: Vec<PortSpec> = Vec::new();
        for (i, item) in raw.into_iter().enumerate() {
            let p = path.index(i);
            let parsed = match item {
                raw::Scalar::Int(n) => match u16::try_from(n) {
                    Ok(port) if port > 0 => Ok(PortSpec {
                        container: port,
                        host_port: None,
                        host_ip: None,
                    }),
                    _ => Err(format!("{n} is not a port; expected 1 to 65535")),
                },
                raw::Scalar::Str(s) => s.parse(),
                raw::Scalar::Bool(b) => Err(format!(
                    "{b} is not a port; expected a number like 3000 or a string like \"8080:3000\""
                )),
            };
            let Some(port) = self.ok(&p, parsed) else {
                continue;
            };
            if let Some(j) = out.iter().position(|o| o.container == port.container) {
                self.err(
                    &p,
                    format!("container port {} is already in ports[{j}]", port.container),
                );
            }
            if let Some(j) = out.iter().position(|o| host_ports_clash(o, &port)) {
                self.err(
                    &p,
                    format!(
                        "host port {} is already published by ports[{j}]",
                        port.host_port.unwrap_or_default()
                    ),
                );
            }
            out.push(port);
        }
        out
    }

    fn volumes(&mut self, path: &FieldPath, raw: Vec<String>) -> Vec<VolumeMount> {
        let mut out: Vec<VolumeMount> = Vec::new();
        for (i, text) in raw.iter().enumerate() {
            let p = path.index(i);
            let Some(v) = self.ok(&p, text.parse::<VolumeMount>()) else {
                continue;
            };
            if let Some(j) = out.iter().position(|o| o.path == v.path) {
                self.err(&p, format!("{} is already mounted by volumes[{j}]", v.path));
            }
            out.push(v);
        }
        out
    }

    fn healthcheck(
        &mut self,
        path: &FieldPath,
        raw: raw::Healthcheck,
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

    /// A duration field, if given and well-formed; `positive` refuses 0.
    fn duration(
        &mut self,
        path: &FieldPath,
        text: Option<&str>,
        positive: bool,
    ) -> Option<Duration> {
        let d = self.ok(path, parse_duration(text?))?;
        if positive && d.is_zero() {
            self.err(path, "must be above 0");
        }
        Some(d)
    }

    fn smoke(&mut self, path: &FieldPath, raw: raw::Smoke) -> HttpCheck {
        let url = match raw.url {
            Some(url) => {
                self.ok(&path.key("url"), check_smoke_url(&url));
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

    /// Rules that span services and environments.
    fn across(&mut self, environments: &BTreeMap<String, Environment>, services: &[Service]) {
        let services_path = FieldPath::default().key("services");
        // Every service runs on every host of its environment, so two of
        // them cannot publish one host port.
        let mut published: Vec<(&str, usize, &PortSpec)> = Vec::new();
        for s in services {
            for (i, port) in s.ports.iter().enumerate() {
                let clash = published
                    .iter()
                    .find(|(other, _, p)| *other != s.name && host_ports_clash(p, port));
                if let Some((other, j, _)) = clash {
                    self.err(
                        &services_path.key(&s.name).key("ports").index(i),
                        format!(
                            "host port {} is already published by services.{other}.ports[{j}]; services of an environment run on the same hosts",
                            port.host_port.unwrap_or_default()
                        ),
                    );
                }
                published.push((&s.name, i, port));
            }
        }
        // Names join with '-', so ("a-b", "c") and ("a", "b-c") would give
        // two services, or two environments' volumes, one Docker name.
        let envs_path = FieldPath::default().key("environments");
        let mut containers: BTreeMap<String, (&str, &str)> = BTreeMap::new();
        let mut volumes: BTreeMap<String, (&str, &str)> = BTreeMap::new();
        for env in environments.keys() {
            for s in services {
                let joined = format!("{env}-{}", s.name);
                match containers.get(&joined) {
                    Some((e2, s2)) if (*e2, *s2) != (env.as_str(), s.name.as_str()) => self.err(
                        &envs_path.key(env),
                        format!(
                            "environment {env:?} with service {:?} and environment {e2:?} with service {s2:?} would both name containers \"<app>-{joined}-<release>\"; rename one",
                            s.name
                        ),
                    ),
                    _ => {
                        containers.insert(joined, (env, &s.name));
                    }
                }
                for v in &s.volumes {
                    let joined = format!("{env}-{}", v.name);
                    match volumes.get(&joined) {
                        Some((e2, v2)) if *e2 != env.as_str() => self.err(
                            &envs_path.key(env),
                            format!(
                                "volume {:?} of environment {env:?} and volume {v2:?} of environment {e2:?} would both be the Docker volume \"<app>-{joined}\"; rename one",
                                v.name
                            ),
                        ),
                        _ => {
                            volumes.insert(joined, (env, &v.name));
                        }
                    }
                }
            }
        }
        // A secret is injected under its own name: a variable of the same
        // name could not also be.
        for (env_name, env) in environments {
            for s in services {
                for secret in s.secrets.iter().filter(|n| env.variables.contains_key(*n)) {
                    self.err(
                        &envs_path.key(env_name).key("variables").key(secret),
                        format!(
                            "{secret:?} is also a secret of services.{}; a secret is injected as the environment variable of the same name, so it cannot also be a variable",
                            s.name
                        ),
                    );
                }
            }
        }
    }
}

/// The defaults of a smoke check, from the smoke job's own spec type so
/// that an app file and `ferry smoke` never disagree.
fn http_check_defaults() -> HttpCheck {
    serde_json::from_str(r#"{"url":""}"#).expect("every HttpCheck field but url has a default")
}

/// Whether two ports publish the same host port on overlapping addresses.
fn host_ports_clash(a: &PortSpec, b: &PortSpec) -> bool {
    match (a.host_port, b.host_port) {
        (Some(x), Some(y)) if x == y => match (a.host_ip, b.host_ip) {
            (Some(i), Some(j)) => i == j,
            _ => true,
        },
        _ => false,
    }
}

/// App, environment and service names end up joined by `-` in Docker
/// names: lowercase letters, digits and `-`, starting and ending with a
/// letter or digit.
fn dns_name(name: &str) -> Result<(), String> {
    crate::identity::validate_name(name)?;
    if let Some(bad) = name.chars().find(|c| matches!(c, '_' | '.')) {
        return Err(format!(
            "{name:?} contains {bad:?}; use lowercase letters, digits and '-' (it becomes part of container, network and volume names)"
        ));
    }
    if name.ends_with('-') {
        return Err(format!("{name:?} must not end with '-'"));
    }
    Ok(())
}

/// Environment variable names as shells accept them.
fn env_var_name(name: &str) -> Result<(), String> {
    let mut chars = name.chars();
    let ok = chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_');
    if ok {
        Ok(())
    } else {
        Err(format!(
            "{name:?} is not an environment variable name; use letters, digits and '_', not starting with a digit"
        ))
    }
}

/// The longest secret name the coordinator's secret store accepts; a
/// longer one here could never be set.
pub const MAX_SECRET_NAME_LEN: usize = 128;

/// Secret names are environment variable names (they are injected as
/// one), within the secret store's length limit.
fn secret_name(name: &str) -> Result<(), String> {
    env_var_name(name)?;
    if name.len() > MAX_SECRET_NAME_LEN {
        return Err(format!(
            "{name:?} is longer than {MAX_SECRET_NAME_LEN} characters, the longest secret name"
        ));
    }
    Ok(())
}

fn at_least_one(n: i64) -> Result<u32, String> {
    match u32::try_from(n) {
        Ok(v) if v >= 1 => Ok(v),
        _ => Err(format!("must be at least 1, got {n}")),
    }
}

fn memory_value(raw: raw::Scalar) -> Result<u64, String> {
    let bytes = match raw {
        raw::Scalar::Str(s) => parse_memory(&s)?,
        raw::Scalar::Int(n) => u64::try_from(n).map_err(|_| format!("must be above 0, got {n}"))?,
        raw::Scalar::Bool(b) => {
            return Err(format!(
                "{b} is not a size; expected bytes or something like \"512m\""
            ));
        }
    };
    if bytes == 0 {
        return Err("must be above 0".into());
    }
    if bytes < MIN_MEMORY_BYTES {
        return Err(format!(
            "{bytes} bytes is below Docker's minimum memory limit of 6m"
        ));
    }
    Ok(bytes)
}

fn check_user(user: &str) -> Result<(), String> {
    let parts: Vec<&str> = user.split(':').collect();
    let part_ok = |p: &&str| !p.is_empty() && !p.chars().any(char::is_whitespace);
    if parts.len() <= 2 && parts.iter().all(part_ok) {
        Ok(())
    } else {
        Err(format!(
            "{user:?} is not a user; expected \"name\", \"uid\", \"name:group\" or \"uid:gid\""
        ))
    }
}

/// Non-empty, no whitespace, braces only around [`PLACEHOLDERS`], and a
/// lowercase repository as Docker requires.
fn check_image(image: &str) -> Result<(), String> {
    if image.trim().is_empty() {
        return Err("must not be empty".into());
    }
    if image.chars().any(char::is_whitespace) {
        return Err(format!("{image:?} must not contain whitespace"));
    }
    let mut rest = image;
    while let Some(open) = rest.find(['{', '}']) {
        if rest[open..].starts_with('}') {
            return Err(format!("{image:?} has a '}}' without its '{{'"));
        }
        let Some(close) = rest[open..].find('}') else {
            return Err(format!("{image:?} has a '{{' without its '}}'"));
        };
        let placeholder = &rest[open..open + close + 1];
        if !PLACEHOLDERS.contains(&placeholder) {
            return Err(format!(
                "unknown placeholder {placeholder:?} in {image:?}; use {}",
                one_of(&PLACEHOLDERS)
            ));
        }
        rest = &rest[open + close + 1..];
    }
    // The repository is what precedes the tag or digest; a registry host
    // (first component) may have a port, and {app}/{env} are lowercase.
    let name = image.split('@').next().unwrap_or(image);
    let (host, path) = match name.split_once('/') {
        Some((first, rest)) if naming::registry_host(name).is_some() => (Some(first), rest),
        _ => (None, name),
    };
    let repository = match path.rfind(':') {
        Some(i) if !path[i..].contains('/') => &path[..i],
        _ => path,
    };
    if repository.chars().any(|c| c.is_ascii_uppercase()) {
        return Err(format!(
            "repository {repository:?} must be lowercase (Docker refuses uppercase image names)"
        ));
    }
    if repository.is_empty() || host.is_some_and(str::is_empty) {
        return Err(format!("{image:?} names no repository"));
    }
    Ok(())
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

/// The serde layer: every table with `deny_unknown_fields`, every value as
/// loose as TOML allows, so that the checking pass sees (and reports) as
/// much as possible.
mod raw {
    use std::collections::BTreeMap;
    use std::fmt;

    use serde::Deserialize;
    use serde::de::{self, Deserializer, SeqAccess, Visitor};

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    pub struct AppFile {
        pub app: Option<String>,
        pub rollout: Option<Rollout>,
        #[serde(default)]
        pub environments: BTreeMap<String, Environment>,
        #[serde(default)]
        pub services: BTreeMap<String, Service>,
        #[serde(default)]
        pub smoke: Vec<Smoke>,
    }

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    pub struct Rollout {
        pub max_parallel: Option<i64>,
    }

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    pub struct Environment {
        pub agents: Option<Vec<String>>,
        pub labels: Option<BTreeMap<String, String>>,
        pub protected: Option<bool>,
        pub max_parallel: Option<i64>,
        pub variables: Option<BTreeMap<String, Scalar>>,
    }

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    pub struct Service {
        pub image: Option<String>,
        pub pull: Option<String>,
        pub registry_auth: Option<RegistryAuth>,
        pub command: Option<Command>,
        #[serde(default)]
        pub env: BTreeMap<String, Scalar>,
        #[serde(default)]
        pub secrets: Vec<String>,
        #[serde(default)]
        pub ports: Vec<Scalar>,
        #[serde(default)]
        pub volumes: Vec<String>,
        pub user: Option<String>,
        pub memory: Option<Scalar>,
        pub cpus: Option<f64>,
        pub restart: Option<String>,
        pub strategy: Option<String>,
        pub healthcheck: Option<Healthcheck>,
    }

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    pub struct RegistryAuth {
        pub username_secret: Option<String>,
        pub password_secret: Option<String>,
    }

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    pub struct Healthcheck {
        pub http: Option<String>,
        pub docker: Option<bool>,
        pub running_for: Option<String>,
        pub interval: Option<String>,
        pub timeout: Option<String>,
        pub retries: Option<i64>,
    }

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    pub struct Smoke {
        pub name: Option<String>,
        pub url: Option<String>,
        pub expect_status: Option<i64>,
        pub body_contains: Option<String>,
        pub timeout: Option<String>,
        pub retry_for: Option<String>,
        pub interval: Option<String>,
        pub max_latency: Option<String>,
    }

    /// A string, an integer or a boolean: environment values (`PORT = 3000`
    /// is as natural in TOML as `PORT = "3000"`), ports, sizes.
    #[derive(Debug)]
    pub enum Scalar {
        Str(String),
        Int(i64),
        Bool(bool),
    }

    impl Scalar {
        pub fn into_text(self) -> String {
            match self {
                Scalar::Str(s) => s,
                Scalar::Int(n) => n.to_string(),
                Scalar::Bool(b) => b.to_string(),
            }
        }
    }

    impl<'de> Deserialize<'de> for Scalar {
        fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
            struct V;
            impl Visitor<'_> for V {
                type Value = Scalar;
                fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                    f.write_str("a string, an integer or a boolean")
                }
                fn visit_str<E: de::Error>(self, v: &str) -> Result<Scalar, E> {
                    Ok(Scalar::Str(v.to_string()))
                }
                fn visit_string<E: de::Error>(self, v: String) -> Result<Scalar, E> {
                    Ok(Scalar::Str(v))
                }
                fn visit_i64<E: de::Error>(self, v: i64) -> Result<Scalar, E> {
                    Ok(Scalar::Int(v))
                }
                fn visit_u64<E: de::Error>(self, v: u64) -> Result<Scalar, E> {
                    i64::try_from(v)
                        .map(Scalar::Int)
                        .map_err(|_| E::invalid_value(de::Unexpected::Unsigned(v), &self))
                }
                fn visit_bool<E: de::Error>(self, v: bool) -> Result<Scalar, E> {
                    Ok(Scalar::Bool(v))
                }
            }
            d.deserialize_any(V)
        }
    }

    /// `command`: an array of arguments, or a command line (refused by the
    /// checking pass with the array to write instead).
    #[derive(Debug)]
    pub enum Command {
        Line(String),
        Args(Vec<String>),
    }

    impl<'de> Deserialize<'de> for Command {
        fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
            struct V;
            impl<'de> Visitor<'de> for V {
                type Value = Command;
                fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                    f.write_str("an array of strings")
                }
                fn visit_str<E: de::Error>(self, v: &str) -> Result<Command, E> {
                    Ok(Command::Line(v.to_string()))
                }
                fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Command, A::Error> {
                    let mut args = Vec::new();
                    while let Some(a) = seq.next_element::<String>()? {
                        args.push(a);
                    }
                    Ok(Command::Args(args))
                }
            }
            d.deserialize_any(V)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A valid file whose `[services.web]` table ends with `extra`; lines:
    /// 1 app, 2-3 the environment, 4 the service header, 5 image, 6+ extra.
    fn service(extra: &str) -> String {
        format!(
            "app = \"shop\"\n[environments.staging]\nlabels = {{ env = \"staging\" }}\n[services.web]\nimage = \"shop:{{version}}\"\n{extra}\n"
        )
    }

    fn problems(text: &str) -> Vec<Problem> {
        match parse("ferry.toml", text) {
            Ok(_) => panic!("expected problems in:\n{text}"),
            Err(e) => e.problems().to_vec(),
        }
    }

    /// The one problem in `text`, as `line: path: message`.
    fn problem(text: &str) -> String {
        let p = problems(text);
        assert_eq!(p.len(), 1, "expected one problem, got {p:#?}");
        format!("{}: {}: {}", p[0].line, p[0].path, p[0].message)
    }

    fn ok(text: &str) -> AppFile {
        parse("ferry.toml", text).unwrap_or_else(|e| panic!("{e}\nin:\n{text}"))
    }

    const FULL: &str = r#"app = "tecket"

[rollout]
max_parallel = 1

[environments.staging]
agents = ["web-1"]
labels = { env = "staging" }
protected = false
max_parallel = 2
[environments.staging.variables]
NODE_ENV = "staging"
PORT = 1

[environments.production]
labels = { env = "production" }

[services.web]
image = "registry.example.com/tecket:{version}"
pull = "if-missing"
registry_auth = { username_secret = "REGISTRY_USER", password_secret = "REGISTRY_PASSWORD" }
command = ["node", "dist/server.js"]
env = { PORT = "3000", DEBUG = false }
secrets = ["DATABASE_URL", "JWT_SECRET"]
ports = [3000]
volumes = ["uploads:/app/uploads", "uploads2:/x:ro"]
user = "1000:1000"
memory = "512m"
cpus = 1.5
restart = "unless-stopped"
strategy = "blue-green"
[services.web.healthcheck]
http = "/health"
interval = "2s"
timeout = "2s"
retries = 15

[services.worker]
image = "registry.example.com/tecket:{version}"
command = ["node", "dist/worker.js"]
healthcheck = { running_for = "10s" }

[[smoke]]
url = "http://127.0.0.1/health"
expect_status = 200
body_contains = "ok"
timeout = "5s"
"#;

    #[test]
    fn a_deploy_spec_resolves_images_variables_and_defaults() {
        use crate::job as j;
        let f = ok(FULL);
        let spec = f.deploy_spec("staging", "2.1.0").unwrap();
        assert_eq!(
            (spec.app.as_str(), spec.env.as_str()),
            ("tecket", "staging")
        );
        assert_eq!(spec.release, "2.1.0");
        let names: Vec<&str> = spec.services.iter().map(|s| s.name.as_str()).collect();
        assert_eq!(names, ["web", "worker"]);
        let web = &spec.services[0];
        assert_eq!(web.image, "registry.example.com/tecket:2.1.0");
        assert_eq!(web.pull, j::PullPolicy::IfMissing);
        assert_eq!(web.strategy, j::Strategy::BlueGreen);
        // The environment's variables, then the service's env, which wins.
        assert_eq!(web.env["NODE_ENV"], "staging");
        assert_eq!(web.env["PORT"], "3000");
        assert_eq!(web.secrets, ["DATABASE_URL", "JWT_SECRET"]);
        assert_eq!(web.memory_bytes, Some(512 * 1024 * 1024));
        assert_eq!(
            web.health.check,
            j::HealthCheck::Http {
                path: "/health".into()
            }
        );
        assert_eq!(web.health.retries, 15);
        let worker = &spec.services[1];
        // A registry image is pulled every release unless the file says otherwise.
        assert_eq!(worker.pull, j::PullPolicy::Always);
        assert_eq!(worker.strategy, j::Strategy::Recreate);
        assert_eq!(
            worker.health.check,
            j::HealthCheck::RunningFor(Duration::from_secs(10))
        );
        // The spec is what a deploy job carries: it must parse as one.
        let json = j::JobSpec::Deploy(spec.clone()).to_json();
        assert_eq!(
            j::JobSpec::parse("deploy", &json).unwrap(),
            j::JobSpec::Deploy(spec)
        );

        let err = f.deploy_spec("qa", "1").unwrap_err().to_string();
        assert!(err.contains("unknown environment \"qa\""), "{err}");
        for bad in ["", "-1", ".1", "1 2", "v1/2", &"9".repeat(129)] {
            let err = f.deploy_spec("staging", bad).unwrap_err().to_string();
            assert!(err.contains("Docker tag"), "{bad:?}: {err}");
        }
        assert!(f.deploy_spec("staging", "v1.2_rc-3").is_ok());
    }

    #[test]
    fn the_full_example_parses_into_typed_values() {
        let f = ok(FULL);
        assert_eq!(f.app, "tecket");
        assert_eq!(f.rollout.max_parallel, 1);
        let staging = f.environment("staging").unwrap();
        assert_eq!(staging.max_parallel(&f), 2);
        assert_eq!(f.environment("production").unwrap().max_parallel(&f), 1);
        assert_eq!(
            staging.selector(),
            Selector {
                agents: vec!["web-1".into()],
                labels: BTreeMap::from([("env".into(), "staging".into())]),
            }
        );
        let web = f.service("web").unwrap();
        assert_eq!(web.pull, Some(PullPolicy::IfMissing));
        assert_eq!(
            web.registry_auth,
            Some(RegistryAuth {
                username_secret: "REGISTRY_USER".into(),
                password_secret: "REGISTRY_PASSWORD".into(),
            })
        );
        assert_eq!(
            web.command.as_deref(),
            Some(&["node".to_string(), "dist/server.js".to_string()][..])
        );
        assert_eq!(web.secrets, ["DATABASE_URL", "JWT_SECRET"]);
        assert_eq!(web.http_port(), Some(3000));
        assert_eq!(
            web.volumes[1],
            VolumeMount {
                name: "uploads2".into(),
                path: "/x".into(),
                read_only: true,
            }
        );
        assert_eq!(web.user.as_deref(), Some("1000:1000"));
        assert_eq!(web.memory, Some(512 * 1024 * 1024));
        assert_eq!(web.cpus, Some(1.5));
        assert_eq!(web.restart, RestartPolicy::UnlessStopped);
        assert_eq!(web.strategy(), Strategy::BlueGreen);
        assert_eq!(
            web.healthcheck,
            Some(Healthcheck {
                check: HealthCheckKind::Http {
                    path: "/health".into()
                },
                interval: Duration::from_secs(2),
                timeout: Duration::from_secs(2),
                retries: 15,
            })
        );
        let worker = f.service("worker").unwrap();
        assert_eq!(worker.strategy(), Strategy::Recreate);
        assert_eq!(worker.http_port(), None);
        assert_eq!(
            worker.healthcheck.as_ref().map(|h| &h.check),
            Some(&HealthCheckKind::RunningFor(Duration::from_secs(10)))
        );
        assert_eq!(
            f.smoke,
            vec![HttpCheck {
                name: None,
                url: "http://127.0.0.1/health".into(),
                expect_status: 200,
                body_contains: Some("ok".into()),
                timeout: Duration::from_secs(5),
                retry_for: Duration::ZERO,
                interval: Duration::from_secs(1),
                max_latency: None,
            }]
        );
        // The typed model serializes in the file's own vocabulary.
        let json = serde_json::to_value(&f).unwrap();
        assert_eq!(json["services"][0]["volumes"][1], "uploads2:/x:ro");
        assert_eq!(json["services"][0]["strategy"], "blue-green");
        assert_eq!(
            json["services"][1]["healthcheck"]["check"]["running_for"],
            "10s"
        );
    }

    #[test]
    fn the_repository_example_is_valid() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/example/ferry.toml");
        let f = load(&path).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(f.app, "ferry-example");
        assert_eq!(
            f.environments.keys().collect::<Vec<_>>(),
            ["production", "staging"]
        );
        for env in ["staging", "production"] {
            assert_eq!(
                f.environment(env).unwrap().selector(),
                Selector {
                    agents: vec![],
                    labels: BTreeMap::from([("env".into(), env.into())]),
                }
            );
        }
        assert!(
            f.environment("production")
                .unwrap()
                .is_protected("production")
        );
        assert!(!f.environment("staging").unwrap().is_protected("staging"));
        let web = f.service("web").unwrap();
        assert_eq!(f.services.len(), 1);
        assert_eq!(
            web.image_for(&f.app, "staging", "1.2.3"),
            "ferry-example:1.2.3"
        );
        assert_eq!(web.http_port(), Some(8080));
        assert_eq!(web.strategy(), Strategy::BlueGreen);
        assert_eq!(
            web.pull_policy(&web.image_for(&f.app, "staging", "1")),
            PullPolicy::IfMissing
        );
        assert_eq!(
            web.healthcheck.as_ref().map(|h| &h.check),
            Some(&HealthCheckKind::Http {
                path: "/health".into()
            })
        );
        assert!(f.smoke.iter().any(|c| c.url.ends_with("/health")));
    }

    #[test]
    fn the_documented_example_is_valid() {
        let doc = include_str!("../../docs/ferry-toml.md");
        let example = doc
            .split("## A complete example")
            .nth(1)
            .and_then(|rest| rest.split("```toml\n").nth(1))
            .and_then(|rest| rest.split("```").next())
            .expect("docs/ferry-toml.md has a complete example");
        let f = ok(example);
        assert_eq!(f.app, "tecket");
        assert_eq!(f.services.len(), 2);
    }

    #[test]
    fn messages_name_file_line_and_field_in_file_order() {
        let err = parse(
            "ferry.toml",
            &service("[services.web.healthcheck]\nhttp = \"/health\"\ninterval = \"soon\""),
        )
        .unwrap_err();
        assert_eq!(
            err.to_string(),
            [
                "ferry.toml:7: services.web.healthcheck.http: an http check GETs the first container port, and this service has no ports; add ports = [3000] or use running_for",
                "ferry.toml:8: services.web.healthcheck.interval: \"soon\" is not a duration; expected something like \"30s\", \"5m\", \"1h\" or \"7d\"",
            ]
            .join("\n")
        );
    }

    #[test]
    fn serde_errors_carry_line_and_path() {
        assert_eq!(
            problem("app = \"x\"\n[environments.prod]\nlables = { env = \"p\" }\n"),
            "3: environments.prod: unknown field `lables`, expected one of `agents`, `labels`, `protected`, `max_parallel`, `variables`"
        );
        assert_eq!(
            problem(&service("ports = 3000")),
            "6: services.web.ports: invalid type: integer `3000`, expected a sequence"
        );
        assert_eq!(
            problem(&service("env = { A = [1] }")),
            "6: services.web.env.A: invalid type: sequence, expected a string, an integer or a boolean"
        );
        assert_eq!(
            problem(&service("command = [\"a\", 1]")),
            "6: services.web.command[1]: invalid type: integer `1`, expected a string"
        );
        assert_eq!(
            problem("app = \"x\"\n\n[[smoke]]\nurl = 3\n"),
            "4: smoke[0].url: invalid type: integer `3`, expected a string"
        );
        assert_eq!(
            problem(&service(
                "[services.web.healthcheck]\nhttp = \"/\"\nevery = \"2s\""
            )),
            "8: services.web.healthcheck: unknown field `every`, expected one of `http`, `docker`, `running_for`, `interval`, `timeout`, `retries`"
        );
    }

    #[test]
    fn syntax_errors_are_all_reported_with_lines() {
        let p = problems("app = \"x\"\n[environments.prod\nlabels = 1\nport = = 3\n");
        assert!(p.len() >= 2, "{p:#?}");
        assert_eq!(p[0].line, 2);
        assert!(p[0].message.contains("unclosed table"), "{p:#?}");
        assert!(p.iter().any(|p| p.line == 4), "{p:#?}");
        let text = AppFileError::Invalid {
            file: "ferry.toml".into(),
            problems: p,
        }
        .to_string();
        assert!(text.starts_with("ferry.toml:2: "), "{text}");
    }

    #[test]
    fn every_problem_is_reported_not_just_the_first() {
        let text = r#"app = "Shop"
[environments.staging]
max_parallel = 0
[services.web]
image = "shop:{tag}"
pull = "sometimes"
restart = "sometimes"
strategy = "sideways"
memory = "-1"
cpus = 0
ports = ["http"]
volumes = ["./data:/data"]
secrets = ["bad-name"]
[services.web.healthcheck]
retries = 0
[[smoke]]
url = "/health"
"#;
        let got: Vec<(usize, String)> = problems(text)
            .into_iter()
            .map(|p| (p.line, p.path))
            .collect();
        let want: Vec<(usize, String)> = [
            (1, "app"),
            (2, "environments.staging"),
            (3, "environments.staging.max_parallel"),
            (5, "services.web.image"),
            (6, "services.web.pull"),
            (7, "services.web.restart"),
            (8, "services.web.strategy"),
            (9, "services.web.memory"),
            (10, "services.web.cpus"),
            (11, "services.web.ports[0]"),
            (12, "services.web.volumes[0]"),
            (13, "services.web.secrets[0]"),
            (14, "services.web.healthcheck"),
            (15, "services.web.healthcheck.retries"),
            (17, "smoke[0].url"),
        ]
        .into_iter()
        .map(|(l, p)| (l, p.to_string()))
        .collect();
        assert_eq!(got, want);
    }

    #[test]
    fn a_file_needs_an_app_an_environment_and_a_service() {
        let p = problems("");
        let got: Vec<String> = p
            .iter()
            .map(|p| format!("{}: {}", p.line, p.path))
            .collect();
        assert_eq!(got, ["1: app", "1: environments", "1: services"]);
        assert!(p[0].message.starts_with("missing"), "{p:#?}");
        assert!(p[1].message.contains("at least one environment"));
        assert!(p[2].message.contains("at least one service"));
    }

    #[test]
    fn names_are_checked() {
        assert_eq!(
            problem(&service("").replace("app = \"shop\"", "app = \"my_shop\"")),
            "1: app: \"my_shop\" contains '_'; use lowercase letters, digits and '-' (it becomes part of container, network and volume names)"
        );
        assert!(
            problem(&service("").replace("app = \"shop\"", "app = \"shop-\""))
                .contains("must not end with '-'")
        );
        let p = problem(&service("[services.Web]\nimage = \"x\""));
        assert!(p.starts_with("6: services.Web: service name"), "{p}");
        assert!(
            problem(&service("").replace("[environments.staging]", "[environments.\"a.b\"]"))
                .starts_with("2: environments.\"a.b\": environment name")
        );
    }

    #[test]
    fn environments_must_select_hosts_sensibly() {
        let text = "app = \"x\"\n[services.web]\nimage = \"x\"\n[environments.staging]\nprotected = true\n";
        assert_eq!(
            problem(text),
            "4: environments.staging: selects no hosts; give agents = [\"web-1\"] and/or labels = { env = \"staging\" }"
        );
        let text = "app = \"x\"\n[services.web]\nimage = \"x\"\n[environments.staging]\nagents = [\"web-1\", \"Web 2\", \"web-1\"]\nlabels = { \"Env\" = \"a\", tier = \"a,b\" }\n";
        let paths: Vec<String> = problems(text).into_iter().map(|p| p.path).collect();
        assert_eq!(
            paths,
            [
                "environments.staging.agents[1]",
                "environments.staging.agents[2]",
                "environments.staging.labels.Env",
                "environments.staging.labels.tier",
            ]
        );
        assert_eq!(
            problem(
                "app = \"x\"\n[services.web]\nimage = \"x\"\n[environments.production]\nlabels = { env = \"p\" }\nprotected = false\n"
            ),
            "6: environments.production.protected: an environment named \"production\" is always protected; remove protected = false"
        );
        assert!(
            problem(&service("").replace("labels = {", "max_parallel = -2\nlabels = {"))
                .starts_with("3: environments.staging.max_parallel: must be at least 1, got -2")
        );
        assert!(
            problem(&service("[rollout]\nmax_parallel = 0"))
                .starts_with("7: rollout.max_parallel: must be at least 1")
        );
    }

    #[test]
    fn ports_are_parsed() {
        let f = ok(&service(
            "ports = [3000, \"8080:80\", \"127.0.0.1:5432:5432\", \"[::1]:9000:9000/tcp\", \"81\"]\nstrategy = \"recreate\"",
        ));
        let ports: Vec<String> = f.services[0]
            .ports
            .iter()
            .map(ToString::to_string)
            .collect();
        assert_eq!(
            ports,
            [
                "3000",
                "8080:80",
                "127.0.0.1:5432:5432",
                "[::1]:9000:9000",
                "81"
            ]
        );
        for (bad, says) in [
            ("0", "is not a port"),
            ("70000", "is not a port"),
            ("\"x:80\"", "is not a port"),
            ("\"53/udp\"", "only TCP"),
            ("\"8000-8010:80\"", "ranges"),
            ("\"nowhere:80:80\"", "is not an IP address"),
            ("true", "is not a port"),
        ] {
            let p = problem(&service(&format!("ports = [{bad}]")));
            assert!(p.starts_with("6: services.web.ports[0]: "), "{bad}: {p}");
            assert!(p.contains(says), "{bad}: {p}");
        }
        let p = problems(&service(
            "ports = [80, \"8080:80\", \"9000:81\", \"9000:82\"]\nstrategy = \"recreate\"",
        ));
        let got: Vec<String> = p
            .iter()
            .map(|p| format!("{}: {}", p.path, p.message))
            .collect();
        assert_eq!(
            got,
            [
                "services.web.ports[1]: container port 80 is already in ports[0]",
                "services.web.ports[3]: host port 9000 is already published by ports[2]",
            ]
        );
    }

    #[test]
    fn strategies_fit_the_ports() {
        assert_eq!(
            problem(&service(
                "ports = [\"8080:3000\"]\nstrategy = \"blue-green\""
            )),
            "7: services.web.strategy: blue-green runs the new container beside the old one, and both cannot publish host port 8080 (ports[0] = \"8080:3000\"); use strategy = \"recreate\" or publish no host port"
        );
        assert_eq!(
            problem(&service("strategy = \"blue-green\"")),
            "6: services.web.strategy: blue-green needs a port to send traffic to; add ports = [3000] or use strategy = \"recreate\""
        );
        assert_eq!(
            problem(&service("strategy = \"sideways\"")),
            "6: services.web.strategy: \"sideways\" is not a strategy; expected recreate or blue-green"
        );
        // Defaults: blue-green only for a port with no host port and no volume.
        let strategy = |extra: &str| ok(&service(extra)).services[0].strategy();
        assert_eq!(strategy("ports = [3000]"), Strategy::BlueGreen);
        assert_eq!(strategy(""), Strategy::Recreate);
        assert_eq!(strategy("ports = [\"5432:5432\"]"), Strategy::Recreate);
        assert_eq!(
            strategy("ports = [5432]\nvolumes = [\"pg:/var/lib/postgresql/data\"]"),
            Strategy::Recreate
        );
        assert_eq!(
            strategy("ports = [3000]\nvolumes = [\"up:/up\"]\nstrategy = \"blue-green\""),
            Strategy::BlueGreen
        );
    }

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

    #[test]
    fn policies_sizes_and_limits_are_checked() {
        assert_eq!(
            problem(&service("pull = \"sometimes\"")),
            "6: services.web.pull: \"sometimes\" is not a pull policy; expected always, if-missing or never"
        );
        assert_eq!(
            problem(&service("restart = \"on-failure:3\"")),
            "6: services.web.restart: \"on-failure:3\" is not a restart policy; expected no, always, unless-stopped or on-failure"
        );
        assert_eq!(
            ok(&service("")).services[0].restart,
            RestartPolicy::UnlessStopped
        );
        assert_eq!(
            problem(&service("cpus = -0.5")),
            "6: services.web.cpus: must be above 0, got -0.5"
        );
        assert_eq!(
            problem(&service("memory = 0")),
            "6: services.web.memory: must be above 0"
        );
        assert!(problem(&service("memory = \"lots\"")).contains("is not a size"));
        assert!(problem(&service("memory = \"1k\"")).contains("minimum memory limit of 6m"));
        assert_eq!(
            ok(&service("memory = \"4G\"")).services[0].memory,
            Some(4 << 30)
        );
        assert_eq!(
            ok(&service("memory = 8388608")).services[0].memory,
            Some(8 << 20)
        );
        assert_eq!(
            problem(&service("user = \"a:b:c\"")),
            "6: services.web.user: \"a:b:c\" is not a user; expected \"name\", \"uid\", \"name:group\" or \"uid:gid\""
        );
    }

    #[test]
    fn parse_memory_units() {
        assert_eq!(parse_memory("512m"), Ok(512 << 20));
        assert_eq!(parse_memory("512MB"), Ok(512 << 20));
        assert_eq!(parse_memory("1.5g"), Ok(3 << 29));
        assert_eq!(parse_memory("2048"), Ok(2048));
        assert_eq!(parse_memory("64k"), Ok(64 << 10));
        for bad in ["", "m", "1t", "-1m", "1.2.3m", "1 0m"] {
            assert!(parse_memory(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn volumes_are_named_only() {
        let p = |v: &str| problem(&service(&format!("volumes = [{v:?}]")));
        assert_eq!(
            p("./data:/data"),
            "6: services.web.volumes[0]: \"./data:/data\" is a bind mount of a host path; only named volumes are supported (name:/path[:ro])"
        );
        assert!(p("/srv:/data").contains("bind mount"));
        assert!(p("data:/data:z").contains("unknown mode \"z\""));
        assert!(p("data:data").contains("must be absolute"));
        assert!(p("data").contains("expected name:/path or name:/path:ro"));
        assert!(p("Data:/data").contains("volume name"));
        assert!(
            problem(&service("volumes = [\"a:/d\", \"b:/d\"]"))
                .ends_with("volumes[1]: /d is already mounted by volumes[0]")
        );
        let f = ok(&service("volumes = [\"a:/d:rw\", \"b:/e:ro\"]"));
        let v: Vec<String> = f.services[0]
            .volumes
            .iter()
            .map(ToString::to_string)
            .collect();
        assert_eq!(v, ["a:/d", "b:/e:ro"]);
    }

    #[test]
    fn images_allow_only_known_placeholders() {
        let p = |image: &str| problem(&service("").replace("shop:{version}", image));
        assert_eq!(p(""), "5: services.web.image: must not be empty");
        assert_eq!(
            p("shop:{tag}"),
            "5: services.web.image: unknown placeholder \"{tag}\" in \"shop:{tag}\"; use {version}, {app} or {env}"
        );
        assert!(p("shop:{version").contains("'{' without its '}'"));
        assert!(p("shop:version}").contains("'}' without its '{'"));
        assert!(p("shop: 1").contains("whitespace"));
        assert!(p("ghcr.io/Acme/shop:1").contains("must be lowercase"));
        assert!(
            problem("app = \"x\"\n[environments.a]\nagents = [\"a\"]\n[services.web]\n")
                .starts_with("4: services.web.image: missing")
        );
        let f = ok(&service("").replace("shop:{version}", "localhost:5000/{app}-{env}:{version}"));
        assert_eq!(
            f.services[0].image_for("shop", "staging", "v2"),
            "localhost:5000/shop-staging:v2"
        );
    }

    #[test]
    fn env_secrets_and_variables_do_not_overlap() {
        assert_eq!(
            problem(&service(
                "env = { JWT_SECRET = \"x\" }\nsecrets = [\"JWT_SECRET\"]"
            )),
            "6: services.web.env.JWT_SECRET: \"JWT_SECRET\" is also in secrets; a secret is injected as the environment variable of the same name, so remove it from env"
        );
        assert!(
            problem(&service("secrets = [\"A\", \"A\"]"))
                .starts_with("6: services.web.secrets[1]: \"A\" is listed twice")
        );
        assert!(
            problem(&service("env = { \"1X\" = \"a\" }"))
                .contains("is not an environment variable name")
        );
        assert!(
            problem(&service("secrets = [\"db-url\"]"))
                .contains("is not an environment variable name")
        );
        let long = "S".repeat(MAX_SECRET_NAME_LEN + 1);
        assert!(
            problem(&service(&format!("secrets = [{long:?}]"))).contains("the longest secret name")
        );
        assert!(
            ok(&service("secrets = [\"lower_case_ok\", \"_X1\"]")).services[0]
                .secrets
                .len()
                == 2
        );
        let text = service("secrets = [\"DB\"]").replace(
            "labels = { env = \"staging\" }",
            "labels = { env = \"staging\" }\nvariables = { DB = \"x\" }",
        );
        assert_eq!(
            problem(&text),
            "4: environments.staging.variables.DB: \"DB\" is also a secret of services.web; a secret is injected as the environment variable of the same name, so it cannot also be a variable"
        );
        assert_eq!(
            problem(&service("registry_auth = { username_secret = \"U\" }")),
            "6: services.web.registry_auth.password_secret: missing: the name of the secret holding the registry password"
        );
    }

    #[test]
    fn commands_are_arrays() {
        assert_eq!(
            problem(&service(
                "command = \"npx prisma migrate deploy && npm start\""
            )),
            "6: services.web.command: must be an array of arguments, e.g. [\"node\", \"dist/server.js\"]; to run a command line through a shell write [\"sh\", \"-c\", \"npx prisma migrate deploy && npm start\"]"
        );
        assert!(problem(&service("command = []")).contains("must name a program"));
    }

    #[test]
    fn services_and_environments_do_not_clash() {
        let text = service(
            "ports = [\"80:3000\"]\nstrategy = \"recreate\"\n[services.api]\nimage = \"x\"\nports = [\"80:4000\"]",
        );
        assert_eq!(
            problem(&text),
            "10: services.api.ports[0]: host port 80 is already published by services.web.ports[0]; services of an environment run on the same hosts"
        );
        let text = "app = \"x\"\n[environments.a]\nagents = [\"h\"]\n[environments.a-b]\nagents = [\"h\"]\n[services.b-c]\nimage = \"x\"\n[services.c]\nimage = \"x\"\n";
        assert!(problem(text).contains("would both name containers \"<app>-a-b-c-<release>\""));
        let text = "app = \"x\"\n[environments.a]\nagents = [\"h\"]\n[environments.a-b]\nagents = [\"h\"]\n[services.web]\nimage = \"x\"\nvolumes = [\"b-c:/x\", \"c:/y\"]\n";
        assert!(problem(text).contains("would both be the Docker volume \"<app>-a-b-c\""));
    }

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
    fn helpers_resolve_defaults() {
        let f = ok(FULL);
        let web = f.service("web").unwrap();
        let staging = f.environment("staging").unwrap();
        let env = web.resolved_env(staging);
        // The service's env wins over the environment's variables.
        assert_eq!(env.get("PORT").map(String::as_str), Some("3000"));
        assert_eq!(env.get("NODE_ENV").map(String::as_str), Some("staging"));
        assert_eq!(env.get("DEBUG").map(String::as_str), Some("false"));
        assert!(!env.contains_key("DATABASE_URL"));
        assert!(!staging.is_protected("staging"));
        assert!(
            f.environment("production")
                .unwrap()
                .is_protected("production")
        );
        let worker = f.service("worker").unwrap();
        assert_eq!(
            worker.pull_policy("registry.example.com/tecket:1"),
            PullPolicy::Always
        );
        assert_eq!(worker.pull_policy("tecket:1"), PullPolicy::IfMissing);
        assert_eq!(
            web.pull_policy("registry.example.com/tecket:1"),
            PullPolicy::IfMissing
        );
        assert!(naming::registry_host("localhost/x").is_some());
        assert!(naming::registry_host("host:5000/x").is_some());
        assert!(naming::registry_host("minio/minio:latest").is_none());
        assert!(naming::registry_host("postgres:16").is_none());
        assert_eq!(
            web.image_for("tecket", "staging", "1.4.0"),
            "registry.example.com/tecket:1.4.0"
        );
        // Services keep the file's order, not sorted: it is the deploy order.
        let f = ok(&service(
            "[services.api]\nimage = \"x\"\n[services.aaa]\nimage = \"y\"",
        ));
        let names: Vec<&str> = f.services.iter().map(|s| s.name.as_str()).collect();
        assert_eq!(names, ["web", "api", "aaa"]);
        let f = ok(
            "app = \"x\"\nservices = { zz = { image = \"a\" }, aa = { image = \"b\" } }\n[environments.a]\nagents = [\"h\"]\n",
        );
        let names: Vec<&str> = f.services.iter().map(|s| s.name.as_str()).collect();
        assert_eq!(names, ["zz", "aa"]);
        assert_eq!(
            naming::container("shop", "prod", "web", "7"),
            "shop-prod-web-7"
        );
        assert_eq!(naming::network("shop", "prod"), "shop-prod");
        assert_eq!(
            naming::volume("shop", "prod", "uploads"),
            "shop-prod-uploads"
        );
    }

    #[test]
    fn unknown_environments_list_the_known_ones() {
        let f = ok(FULL);
        assert_eq!(
            f.environment("prod").unwrap_err().to_string(),
            "unknown environment \"prod\"; the app file defines production, staging"
        );
        assert_eq!(
            f.environment("stagin").unwrap_err().to_string(),
            "unknown environment \"stagin\"; the app file defines production, staging (did you mean \"staging\"?)"
        );
    }

    #[test]
    fn load_names_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ferry.toml");
        let err = load(&path).unwrap_err();
        assert!(matches!(err, AppFileError::Read { .. }));
        assert!(
            err.to_string()
                .starts_with(&format!("{}: cannot read: ", path.display()))
        );
        std::fs::write(&path, "app = 1\n").unwrap();
        let err = load(&path).unwrap_err().to_string();
        assert!(
            err.starts_with(&format!("{}:1: app: invalid type", path.display())),
            "{err}"
        );
    }
}
