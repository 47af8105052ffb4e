//! `deploy`: one release of an app's services on this host's Docker engine.
//!
//! Per service: pull (or use the local image), hash the container's
//! settings ([`settings_hash`], the `ferry.hash` label and the name's
//! suffix), then
//! - if the container that serves (for blue-green: the running one whose
//!   port nginx's upstream file names; otherwise the newest running one)
//!   has this release and hash, it is "already running" (unless the spec
//!   says `force`);
//! - if another running container has them (an earlier attempt that was
//!   cut short, or a revert to a container nginx no longer points at), it
//!   is health-gated and switched to, never started twice;
//! - otherwise a new container: `blue-green` starts it beside the old one
//!   on a free loopback port, gates on health, points the service's nginx
//!   upstream file at it, reloads nginx and confirms the switch (nginx
//!   includes the file; a request through `nginx_url` reaches the new
//!   container); `recreate` stops the old container, starts the new one,
//!   gates on health, and on failure starts the old one again; workers (no
//!   port) start new, gate on health, stop old.
//!
//! A failed health gate or switch removes the new container, leaves the
//! old one serving, and fails the task with the reason and the new
//! container's last log lines (secrets redacted). When a later service of
//! the same release fails, or the task is cancelled, services already
//! switched on this host are switched back, so a host is never left half
//! on one release; a cancelled task says which release each service is
//! back on. After success every other running container of a service is
//! stopped, and the newest `keep_releases` stopped releases are kept for a
//! fast rollback; older ones are removed.

use ferry_common::status::Outcome;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::Path;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use bollard::Docker;
use bollard::auth::DockerCredentials;
use bollard::models::{
    ContainerCreateBody, ContainerSummaryStateEnum, EndpointSettings, HostConfig,
    NetworkCreateRequest, NetworkingConfig, PortBinding, RestartPolicy as DockerRestart,
    RestartPolicyNameEnum, VolumeCreateRequest,
};
use bollard::query_parameters::{
    CreateContainerOptions, CreateImageOptions, ListContainersOptions, LogsOptions,
    RemoveContainerOptions, RenameContainerOptions, StartContainerOptions, StopContainerOptions,
};
use ferry_common::fsutil::{self, Mode};
use ferry_common::job::naming::{
    self, LABEL_ACCESSORY, LABEL_APP, LABEL_ENV, LABEL_HASH, LABEL_HOST, LABEL_RELEASE,
    LABEL_REPLICA, LABEL_SERVICE,
};
use ferry_common::job::{
    DeploySpec, HealthCheck, HealthGate, PortMapping, PullPolicy, RestartPolicy, ServiceDeploy,
    Strategy, VolumeMount,
};
use ferry_common::redact::Redactor;
use futures::StreamExt;
use serde::Serialize;
use sha2::{Digest, Sha256};

use super::health_gate;
use super::http::HttpClient;
use super::{Done, KindExecutor, TaskContext, TaskFailure};

/// Log lines of a failed container included in the failure.
const FAILURE_LOG_LINES: usize = 50;
/// How long a container gets to stop before it is killed.
const STOP_TIMEOUT_SECS: i32 = 10;
/// How long a request through `nginx_url` may take to reach the new
/// container after a reload: nginx starts its new workers asynchronously.
const NGINX_CONFIRM_WITHIN: Duration = Duration::from_secs(10);
/// The header the site adds (`add_header X-Ferry-Upstream $upstream_addr
/// always;`): which backend answered.
const UPSTREAM_HEADER: &str = "x-ferry-upstream";
/// Nanoseconds since the epoch at creation, set by the agent: Docker's
/// own `Created` in a container list has whole seconds only.
const LABEL_CREATED: &str = "ferry.created";

/// What the task reports per service (its result, used for release records).
#[derive(Debug, Clone, Serialize)]
pub struct ServiceResult {
    pub service: String,
    /// The first replica's container.
    pub container: String,
    /// Every replica's container, replica 1 first.
    pub containers: Vec<String>,
    pub image: String,
    pub release: String,
    /// The containers' `ferry.hash`: what their settings were.
    pub hash: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub host_port: Option<u16>,
    /// Every replica's loopback port, for a service with a port.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub host_ports: Vec<u16>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub previous_release: Option<String>,
    /// False when this release was already running.
    pub changed: bool,
}

/// What the task reports per accessory.
#[derive(Debug, Clone, Serialize)]
pub struct AccessoryResult {
    pub accessory: String,
    pub container: String,
    pub image: String,
    pub hash: String,
    /// False when a container with these settings already ran.
    pub changed: bool,
}

/// A service after its step of the deploy, and how to undo it.
struct Switched {
    service: ServiceDeploy,
    /// The containers that serve the service now, replica 1 first.
    new_ids: Vec<String>,
    /// False when they already served (nothing to undo).
    changed: bool,
    /// The containers that served before.
    old: Vec<Existing>,
    /// What the upstream file said before a blue-green switch.
    upstream_before: Option<String>,
}

impl Switched {
    /// The new containers that did not serve before (what an undo removes).
    fn fresh(&self) -> impl Iterator<Item = &String> {
        self.new_ids
            .iter()
            .filter(|id| !self.old.iter().any(|o| &o.id == *id))
    }
}

#[derive(Debug, Clone)]
struct Existing {
    id: String,
    name: String,
    release: String,
    hash: String,
    /// `ferry.replica` (1 for a container from before replicas).
    replica: u32,
    /// Carries `ferry.accessory`.
    accessory: bool,
    running: bool,
    host_port: Option<u16>,
    /// Nanoseconds since the epoch.
    created: i128,
}

/// Everything that defines a container, serialised as canonical JSON
/// (fields in this order, maps sorted) and hashed into `ferry.hash`:
/// - `image_id`: the image's ID as the engine has it after the pull, so a
///   tag pushed again is a different container;
/// - `command`, `env` (the resolved variables), `ports` (container port,
///   fixed host port and address), `volumes` (name, path, read-only),
///   `user`, `memory_bytes`, `cpus`, `restart`, `health` (check, interval,
///   timeout, retries);
/// - `secrets`: per secret name, the sha256 of name and value: a rotated
///   secret changes the hash, and the value is never in the hashed text
///   (nor in the label).
///
/// - `replicas` when above 1: a new count replaces the whole set.
///
/// Not in it: the release (the container's name and `ferry.release`
/// carry it), the strategy and `nginx_url` (how it is switched, not what
/// runs), and the pull policy.
#[derive(Serialize)]
struct Settings<'a> {
    v: u32,
    image_id: &'a str,
    command: &'a [String],
    env: &'a BTreeMap<String, String>,
    secrets: BTreeMap<&'a str, String>,
    ports: &'a [PortMapping],
    volumes: &'a [VolumeMount],
    user: Option<&'a str>,
    memory_bytes: Option<i64>,
    cpus: Option<f64>,
    restart: RestartPolicy,
    health: &'a HealthGate,
    /// Only when above 1, so a single container's hash is what it was
    /// before replicas existed (no redeploy on upgrade).
    #[serde(skip_serializing_if = "is_one")]
    replicas: u32,
}

fn is_one(n: &u32) -> bool {
    *n == 1
}

/// `(sha256 hex, the canonical text hashed)` of `svc`'s container with
/// image `image_id` and the task's secret values.
pub fn settings_hash(
    svc: &ServiceDeploy,
    image_id: &str,
    secrets: &BTreeMap<String, String>,
) -> Result<(String, String), String> {
    let mut digests = BTreeMap::new();
    for name in &svc.secrets {
        let value = secrets.get(name).ok_or_else(|| {
            format!(
                "secret {name} of service {} was not sent with the task",
                svc.name
            )
        })?;
        let mut h = Sha256::new();
        h.update(b"ferry.secret\0");
        h.update(name.as_bytes());
        h.update(b"\0");
        h.update(value.as_bytes());
        digests.insert(name.as_str(), hex::encode(h.finalize()));
    }
    let settings = Settings {
        v: 1,
        image_id,
        command: &svc.command,
        env: &svc.env,
        secrets: digests,
        ports: &svc.ports,
        volumes: &svc.volumes,
        user: svc.user.as_deref(),
        memory_bytes: svc.memory_bytes,
        cpus: svc.cpus,
        restart: svc.restart,
        health: &svc.health,
        replicas: svc.replicas,
    };
    let text = serde_json::to_string(&settings).map_err(|e| e.to_string())?;
    Ok((hex::encode(Sha256::digest(text.as_bytes())), text))
}

/// The containers that serve a service, replica 1 first: for a blue-green
/// service (`upstream`: the ports its upstream file names) the running
/// containers published on those ports, none without a file; otherwise
/// the newest running container of each replica.
fn current(existing: &[Existing], blue_green: bool, upstream: &[u16]) -> Vec<Existing> {
    let mut out: Vec<Existing> = if blue_green {
        existing
            .iter()
            .filter(|c| c.running && c.host_port.is_some_and(|p| upstream.contains(&p)))
            .cloned()
            .collect()
    } else {
        let mut newest: BTreeMap<u32, &Existing> = BTreeMap::new();
        for c in existing.iter().filter(|c| c.running) {
            match newest.get(&c.replica) {
                Some(n) if n.created >= c.created => {}
                _ => {
                    newest.insert(c.replica, c);
                }
            }
        }
        newest.into_values().cloned().collect()
    };
    out.sort_by_key(|c| (c.replica, c.created));
    out
}

/// Of the stopped containers (`stopped`, any order), those to remove:
/// every one but the newest of each replica of each of the newest `keep`
/// releases other than `release` (the one now running; its stopped
/// containers had other settings and are no rollback target).
fn to_prune<'a>(stopped: &[&'a Existing], release: &str, keep: u32) -> Vec<&'a Existing> {
    let mut newest_first: Vec<&Existing> = stopped.to_vec();
    newest_first.sort_by_key(|c| std::cmp::Reverse(c.created));
    let mut kept: BTreeSet<&str> = BTreeSet::new();
    let mut seen: BTreeSet<(&str, u32)> = BTreeSet::new();
    let mut prune = Vec::new();
    for c in newest_first {
        let keep_it = c.release != release
            && (kept.contains(c.release.as_str()) || kept.len() < keep as usize)
            && seen.insert((c.release.as_str(), c.replica));
        if keep_it {
            kept.insert(&c.release);
        } else {
            prune.push(c);
        }
    }
    prune
}

/// The ports the `server 127.0.0.1:PORT;` lines of an upstream file name.
fn upstream_ports(text: &str) -> Vec<u16> {
    text.lines()
        .filter_map(|l| l.trim().strip_prefix("server 127.0.0.1:"))
        .filter_map(|rest| {
            rest.split([';', ' '])
                .next()
                .and_then(|p| p.trim().parse().ok())
        })
        .collect()
}

/// An upstream file sending the service's traffic to `ports`.
pub(super) fn upstream_body(header: &str, ports: &[u16]) -> String {
    let mut body = format!("# Written by ferry: {header}\n");
    for port in ports {
        body.push_str(&format!("server 127.0.0.1:{port};\n"));
    }
    body
}

/// Whether an `nginx -T` dump holds `path` (`# configuration file PATH:`).
fn dump_includes(dump: &str, path: &Path) -> bool {
    let wanted = [Some(path.to_path_buf()), std::fs::canonicalize(path).ok()];
    dump.lines()
        .filter_map(|l| {
            l.strip_prefix("# configuration file ")
                .and_then(|r| r.strip_suffix(':'))
        })
        .any(|f| wanted.iter().flatten().any(|w| Path::new(f) == w))
}

/// Runs `deploy` tasks.
pub struct Deploy;

#[async_trait::async_trait]
impl KindExecutor for Deploy {
    type Spec = DeploySpec;
    async fn run(&self, spec: DeploySpec, ctx: &TaskContext) -> Result<Done, TaskFailure> {
        run(&spec, ctx).await
    }
}

pub async fn run(spec: &DeploySpec, ctx: &TaskContext) -> Result<Done, TaskFailure> {
    let docker = ctx.host.docker()?.clone();
    let d = Deployer {
        docker,
        spec,
        ctx,
        http: HttpClient::default(),
        redactor: Redactor::new(ctx.secrets.iter().map(|(k, v)| (k.clone(), v.as_str())))
            .map_err(|e| TaskFailure::Failed(e.to_string()))?,
        before: Mutex::default(),
        unrestored: Mutex::default(),
    };
    d.ensure_network().await?;
    let host = ctx.host.name.as_str();
    // Accessories first: the services may need them (a database).
    let mut accessories = Vec::new();
    for acc in spec.accessories.iter().filter(|a| a.runs_on(host)) {
        accessories.push(d.deploy_accessory(acc).await?);
    }
    let mut switched: Vec<Switched> = Vec::new();
    let mut results = Vec::new();
    for service in spec.services.iter().filter(|s| s.runs_on(host)) {
        match d.deploy_service(service).await {
            Ok((result, switch)) => {
                results.push(result);
                switched.push(switch);
            }
            Err(failure) => {
                for s in switched.into_iter().rev() {
                    d.undo(s).await;
                }
                return Err(d.after_undo(failure));
            }
        }
    }
    // Cancelled once every service was switched, before anything was
    // retired: switch back, as on a failure.
    if ctx.cancel.is_cancelled() {
        for s in switched.into_iter().rev() {
            d.undo(s).await;
        }
        return Err(d.after_undo(TaskFailure::Cancelled));
    }
    // Only now, with every service on the new release, are old containers
    // stopped for good and older releases pruned.
    for s in &switched {
        d.retire_old(s).await?;
    }
    // Services placed elsewhere: whatever of theirs runs here stops (kept,
    // stopped, like an earlier release).
    let mut elsewhere = Vec::new();
    let mut stopped = Vec::new();
    for service in spec.services.iter().filter(|s| !s.runs_on(host)) {
        for c in d
            .existing(&service.name)
            .await?
            .iter()
            .filter(|c| c.running)
        {
            stopped.push(c.name.clone());
            d.stop(
                &c.id,
                &format!(
                    "stop {} {} (placed on {})",
                    service.name,
                    c.release,
                    service.hosts.join(", ")
                ),
            )
            .await;
        }
        elsewhere.push(service.name.as_str());
    }
    let mut message = format!(
        "release {} of {} ({}) running: {}",
        spec.release,
        spec.app,
        spec.env,
        results
            .iter()
            .map(|r| r.container.as_str())
            .collect::<Vec<_>>()
            .join(", ")
    );
    if !elsewhere.is_empty() {
        message.push_str(&format!("; not placed here: {}", elsewhere.join(", ")));
    }
    let result_json = serde_json::json!({
        "release": spec.release,
        "services": results,
        "accessories": accessories,
        "not_placed": elsewhere,
        "stopped_not_placed": stopped,
    })
    .to_string();
    Ok(Done {
        message,
        result_json,
    })
}

struct Deployer<'a> {
    docker: Docker,
    spec: &'a DeploySpec,
    ctx: &'a TaskContext,
    http: HttpClient,
    /// Every line forwarded from a container passes through it.
    redactor: Redactor,
    /// Per service reached, the release that served before it (none if
    /// nothing did): what a cancelled task reports the host is back on.
    before: Mutex<Vec<(String, Option<String>)>>,
    /// Services that could not be put back, and why: a cancelled task
    /// must not claim they were.
    unrestored: Mutex<Vec<(String, String)>>,
}

fn docker_err(what: &str, e: bollard::errors::Error) -> TaskFailure {
    TaskFailure::Failed(format!("{what}: {e}"))
}

/// How the container that is to serve comes about.
enum Candidate<'a> {
    /// Create and start it under this name, with this settings hash.
    New {
        name: String,
        hash: &'a str,
        replica: u32,
    },
    /// It already runs (an earlier attempt started it): gate and switch.
    Adopt(&'a Existing),
}

impl Deployer<'_> {
    fn redact(&self, line: &str) -> String {
        self.redactor.redact(line).into_owned()
    }

    /// Whether `name` is one of the spec's accessories.
    fn is_accessory(&self, name: &str) -> bool {
        self.spec.accessories.iter().any(|a| a.name == name)
    }

    fn labels(&self, service: &str, hash: &str, replica: u32) -> HashMap<String, String> {
        let created = time::OffsetDateTime::now_utc().unix_timestamp_nanos();
        if self.is_accessory(service) {
            // No release: an accessory outlives them.
            return HashMap::from([
                (LABEL_APP.to_string(), self.spec.app.clone()),
                (LABEL_ENV.to_string(), self.spec.env.clone()),
                (LABEL_SERVICE.to_string(), service.to_string()),
                (LABEL_ACCESSORY.to_string(), service.to_string()),
                (LABEL_HOST.to_string(), self.ctx.host.name.clone()),
                (LABEL_HASH.to_string(), hash.to_string()),
                (LABEL_CREATED.to_string(), created.to_string()),
            ]);
        }
        HashMap::from([
            (LABEL_APP.to_string(), self.spec.app.clone()),
            (LABEL_ENV.to_string(), self.spec.env.clone()),
            (LABEL_SERVICE.to_string(), service.to_string()),
            (LABEL_HOST.to_string(), self.ctx.host.name.clone()),
            (LABEL_REPLICA.to_string(), replica.to_string()),
            (LABEL_RELEASE.to_string(), self.spec.release.clone()),
            (LABEL_HASH.to_string(), hash.to_string()),
            (LABEL_CREATED.to_string(), created.to_string()),
        ])
    }

    fn cancelled(&self) -> Result<(), TaskFailure> {
        if self.ctx.cancel.is_cancelled() {
            Err(TaskFailure::Cancelled)
        } else {
            Ok(())
        }
    }

    /// A failure after the switched services were put back: a cancel (seen
    /// now, whatever the failure says) reports where each service is.
    fn after_undo(&self, failure: TaskFailure) -> TaskFailure {
        if !self.ctx.cancel.is_cancelled() && failure != TaskFailure::Cancelled {
            return failure;
        }
        let before = self.before.lock().unwrap_or_else(|p| p.into_inner());
        let unrestored = self.unrestored.lock().unwrap_or_else(|p| p.into_inner());
        let reached: Vec<String> = before
            .iter()
            .map(|(service, release)| {
                match (release, unrestored.iter().find(|(s, _)| s == service)) {
                    (_, Some((_, why))) => format!("{service} NOT put back: {why}"),
                    (Some(r), None) => format!("{service} back on release {r}"),
                    (None, None) => format!("{service} not running (nothing ran before)"),
                }
            })
            .collect();
        let untouched: Vec<&str> = self
            .spec
            .services
            .iter()
            .filter(|s| s.runs_on(&self.ctx.host.name))
            .map(|s| s.name.as_str())
            .filter(|n| !before.iter().any(|(s, _)| s == n))
            .collect();
        let mut message = format!("{}; ", Outcome::Cancelled.as_str());
        message.push_str(&reached.join(", "));
        if !untouched.is_empty() {
            if !reached.is_empty() {
                message.push_str("; ");
            }
            message.push_str(&format!("{} not touched", untouched.join(", ")));
        }
        TaskFailure::Undone(message)
    }

    async fn ensure_network(&self) -> Result<(), TaskFailure> {
        let name = naming::network(&self.spec.app, &self.spec.env);
        if self.docker.inspect_network(&name, None).await.is_ok() {
            return Ok(());
        }
        let labels = HashMap::from([
            (LABEL_APP.to_string(), self.spec.app.clone()),
            (LABEL_ENV.to_string(), self.spec.env.clone()),
        ]);
        match self
            .docker
            .create_network(NetworkCreateRequest {
                name: name.clone(),
                labels: Some(labels),
                ..Default::default()
            })
            .await
        {
            Ok(_) => Ok(()),
            // Created meanwhile by a concurrent deploy of the same app and env.
            Err(_) if self.docker.inspect_network(&name, None).await.is_ok() => Ok(()),
            Err(e) => Err(docker_err(&format!("create network {name}"), e)),
        }
    }

    /// This service's containers on this host (this agent's, and those
    /// from before the `ferry.host` label), any state.
    async fn existing(&self, service: &str) -> Result<Vec<Existing>, TaskFailure> {
        let filters = HashMap::from([(
            "label".to_string(),
            vec![
                format!("{LABEL_APP}={}", self.spec.app),
                format!("{LABEL_ENV}={}", self.spec.env),
                format!("{LABEL_SERVICE}={service}"),
            ],
        )]);
        let mut list = self.list(filters).await?;
        // An accessory carries its name as `ferry.service` too (for logs and
        // database lookups); it is never one of the service's containers.
        list.retain(|c| !c.accessory);
        Ok(list)
    }

    /// The containers matching `filters` on this host, any state.
    async fn list(
        &self,
        filters: HashMap<String, Vec<String>>,
    ) -> Result<Vec<Existing>, TaskFailure> {
        let list = self
            .docker
            .list_containers(Some(ListContainersOptions {
                all: true,
                filters: Some(filters),
                ..Default::default()
            }))
            .await
            .map_err(|e| docker_err("list containers", e))?;
        Ok(list
            .into_iter()
            .filter(|c| self.ctx.host.owns(c.labels.as_ref()))
            .map(|c| {
                let labels = c.labels.unwrap_or_default();
                let host_port = c
                    .ports
                    .unwrap_or_default()
                    .iter()
                    .find(|p| p.ip.as_deref() == Some("127.0.0.1"))
                    .and_then(|p| p.public_port);
                let created = labels
                    .get(LABEL_CREATED)
                    .and_then(|n| n.parse().ok())
                    .unwrap_or_else(|| i128::from(c.created.unwrap_or(0)) * 1_000_000_000);
                Existing {
                    id: c.id.unwrap_or_default(),
                    name: c
                        .names
                        .unwrap_or_default()
                        .first()
                        .map(|n| n.trim_start_matches('/').to_string())
                        .unwrap_or_default(),
                    release: labels.get(LABEL_RELEASE).cloned().unwrap_or_default(),
                    hash: labels.get(LABEL_HASH).cloned().unwrap_or_default(),
                    accessory: labels.contains_key(LABEL_ACCESSORY),
                    replica: labels
                        .get(LABEL_REPLICA)
                        .and_then(|r| r.parse().ok())
                        .unwrap_or(1),
                    running: c.state == Some(ContainerSummaryStateEnum::RUNNING),
                    host_port,
                    created,
                }
            })
            .collect())
    }

    fn upstream_path(&self, service: &str) -> std::path::PathBuf {
        self.ctx.host.nginx.upstream_dir.join(naming::upstream_file(
            &self.spec.app,
            &self.spec.env,
            service,
        ))
    }

    async fn deploy_service(
        &self,
        svc: &ServiceDeploy,
    ) -> Result<(ServiceResult, Switched), TaskFailure> {
        self.cancelled()?;
        let image_id = self.ensure_image(svc).await?;
        let (hash, _) =
            settings_hash(svc, &image_id, &self.ctx.secrets).map_err(TaskFailure::Failed)?;
        let replicas = svc.replicas.max(1);
        let name_of = |replica: u32| {
            naming::Instance {
                app: &self.spec.app,
                env: &self.spec.env,
                service: &svc.name,
                replica,
                replicas,
                release: &self.spec.release,
                hash: &hash,
                host: &self.ctx.host.name,
            }
            .container_name()
        };
        let existing = self.existing(&svc.name).await?;
        let blue_green = svc.strategy == Strategy::BlueGreen && svc.http_port().is_some();
        let upstream = if blue_green {
            std::fs::read_to_string(self.upstream_path(&svc.name))
                .map(|t| upstream_ports(&t))
                .unwrap_or_default()
        } else {
            Vec::new()
        };
        let serving = current(&existing, blue_green, &upstream);
        let serving_release = serving.first().map(|s| s.release.clone());
        self.before
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push((svc.name.clone(), serving_release.clone()));
        let wanted = |c: &Existing| c.release == self.spec.release && c.hash == hash;
        let all_replicas = |set: &[&Existing]| {
            let mut seen: Vec<u32> = set.iter().map(|c| c.replica).collect();
            seen.sort_unstable();
            seen == (1..=replicas).collect::<Vec<_>>()
        };
        let serving_refs: Vec<&Existing> = serving.iter().collect();
        if !self.spec.force && serving.iter().all(wanted) && all_replicas(&serving_refs) {
            let step = format!("{} already running", svc.name);
            let started = Instant::now();
            let names: Vec<String> = serving.iter().map(|c| c.name.clone()).collect();
            self.ctx.step_started(&step, &names.join(", "));
            self.ctx.step_finished(
                &step,
                true,
                &format!(
                    "release {} with these settings (hash {}) already serves here",
                    self.spec.release,
                    &hash[..naming::NAME_HASH_LEN]
                ),
                started,
            );
            let result = ServiceResult {
                service: svc.name.clone(),
                container: names[0].clone(),
                containers: names,
                image: svc.image.clone(),
                release: self.spec.release.clone(),
                hash: hash.clone(),
                host_port: serving[0].host_port,
                host_ports: serving.iter().filter_map(|c| c.host_port).collect(),
                previous_release: None,
                changed: false,
            };
            return Ok((
                result,
                Switched {
                    service: svc.clone(),
                    new_ids: serving.iter().map(|c| c.id.clone()).collect(),
                    changed: false,
                    old: Vec::new(),
                    upstream_before: None,
                },
            ));
        }
        // Per replica: a running container of this release and settings
        // (an earlier attempt cut short, or one nginx no longer points at)
        // is taken over, never started twice; otherwise a new one.
        let mut candidates = Vec::new();
        let mut new_names = Vec::new();
        for replica in 1..=replicas {
            let adopt = existing
                .iter()
                .filter(|_| !self.spec.force)
                .find(|c| c.running && wanted(c) && c.replica == replica);
            match adopt {
                Some(c) => candidates.push(Candidate::Adopt(c)),
                None => {
                    new_names.push(name_of(replica));
                    candidates.push(Candidate::New {
                        name: String::new(),
                        hash: &hash,
                        replica,
                    });
                }
            }
        }
        let mut names = new_names.iter();
        for c in &mut candidates {
            if let Candidate::New { name, .. } = c {
                *name = names.next().cloned().unwrap_or_default();
            }
        }
        if !new_names.is_empty() {
            self.ensure_volumes(svc).await?;
        }
        for c in existing.iter().filter(|c| new_names.contains(&c.name)) {
            if c.running {
                // `force`: the container of this very release and hash runs
                // (and may serve): out of the new one's way, kept until the
                // new one has taken over.
                let aside = format!("{}-replaced-{}", c.name, &c.id[..12.min(c.id.len())]);
                self.docker
                    .rename_container(
                        &c.id,
                        RenameContainerOptions {
                            name: aside.clone(),
                        },
                    )
                    .await
                    .map_err(|e| docker_err(&format!("rename {} to {aside}", c.name), e))?;
            } else {
                // Left over, stopped, by an earlier attempt.
                self.remove(&c.id).await;
            }
        }
        self.cancelled()?;
        let switched = if blue_green {
            self.blue_green(svc, candidates, serving).await?
        } else {
            self.recreate(svc, candidates, serving).await?
        };
        let mut containers = Vec::new();
        let mut host_ports = Vec::new();
        for id in &switched.new_ids {
            containers.push(self.container_name(id).await);
            if let Some(p) = self.host_port(id).await {
                host_ports.push(p);
            }
        }
        Ok((
            ServiceResult {
                service: svc.name.clone(),
                container: containers.first().cloned().unwrap_or_default(),
                containers,
                image: svc.image.clone(),
                release: self.spec.release.clone(),
                hash,
                host_port: host_ports.first().copied(),
                host_ports,
                previous_release: serving_release,
                changed: true,
            },
            switched,
        ))
    }

    /// An accessory's containers on this host (`ferry.accessory`).
    async fn accessory_containers(&self, name: &str) -> Result<Vec<Existing>, TaskFailure> {
        let filters = HashMap::from([(
            "label".to_string(),
            vec![
                format!("{LABEL_APP}={}", self.spec.app),
                format!("{LABEL_ENV}={}", self.spec.env),
                format!("{LABEL_ACCESSORY}={name}"),
            ],
        )]);
        self.list(filters).await
    }

    /// Starts an accessory when none with its settings (`ferry.hash`) runs
    /// here: a stopped one with them is started again (same container);
    /// otherwise the old container is stopped, the new one started on the
    /// same volumes and gated on health, and the old one removed (its
    /// volumes never are). A failed gate removes the new one and starts
    /// the old one again. The release plays no part.
    async fn deploy_accessory(&self, acc: &ServiceDeploy) -> Result<AccessoryResult, TaskFailure> {
        self.cancelled()?;
        let image_id = self.ensure_image(acc).await?;
        let (hash, _) =
            settings_hash(acc, &image_id, &self.ctx.secrets).map_err(TaskFailure::Failed)?;
        let existing = self.accessory_containers(&acc.name).await?;
        let result = |container: &str, changed: bool| AccessoryResult {
            accessory: acc.name.clone(),
            container: container.to_string(),
            image: acc.image.clone(),
            hash: hash.clone(),
            changed,
        };
        if let Some(c) = existing.iter().find(|c| c.running && c.hash == hash) {
            let step = format!("{} already running", acc.name);
            let started = Instant::now();
            self.ctx.step_started(&step, &c.name);
            self.ctx.step_finished(
                &step,
                true,
                &format!(
                    "accessory with these settings (hash {}) runs here",
                    &hash[..naming::NAME_HASH_LEN]
                ),
                started,
            );
            return Ok(result(&c.name, false));
        }
        self.ensure_volumes(acc).await?;
        let old: Vec<&Existing> = existing.iter().filter(|c| c.running).collect();
        for o in &old {
            self.stop(&o.id, &format!("stop {} (settings changed)", acc.name))
                .await;
        }
        let name = naming::accessory_container(
            &self.spec.app,
            &self.spec.env,
            &acc.name,
            &hash,
            &self.ctx.host.name,
        );
        let same = existing.iter().find(|c| c.hash == hash && !c.running);
        let id = match same {
            Some(c) => {
                let step = format!("start {}", acc.name);
                let started = Instant::now();
                self.ctx.step_started(&step, &c.name);
                match self
                    .docker
                    .start_container(&c.id, None::<StartContainerOptions>)
                    .await
                {
                    Ok(()) => {
                        self.ctx
                            .step_finished(&step, true, "started again", started);
                        c.id.clone()
                    }
                    Err(e) => {
                        self.ctx
                            .step_finished(&step, false, &e.to_string(), started);
                        for o in &old {
                            self.restart_old(acc, o).await;
                        }
                        return Err(docker_err(&format!("start {}", c.name), e));
                    }
                }
            }
            None => match self.start_new(acc, &name, &hash, 1).await {
                Ok(id) => id,
                Err(e) => {
                    for o in &old {
                        self.restart_old(acc, o).await;
                    }
                    return Err(e);
                }
            },
        };
        if let Err(why) = self.health_gate(acc, &id).await {
            let failure = self.fail_new(acc, &id, why, 1).await;
            for o in &old {
                self.restart_old(acc, o).await;
            }
            return Err(failure);
        }
        for o in existing.iter().filter(|c| c.id != id) {
            self.remove(&o.id).await;
        }
        let container = self.container_name(&id).await;
        Ok(result(&container, true))
    }

    /// A container's name, from the engine.
    async fn container_name(&self, id: &str) -> String {
        self.docker
            .inspect_container(
                id,
                None::<bollard::query_parameters::InspectContainerOptions>,
            )
            .await
            .ok()
            .and_then(|c| c.name)
            .map(|n| n.trim_start_matches('/').to_string())
            .unwrap_or_else(|| id.to_string())
    }

    /// Starts the new container, or takes the running one over.
    async fn obtain(
        &self,
        svc: &ServiceDeploy,
        candidate: &Candidate<'_>,
    ) -> Result<String, TaskFailure> {
        match candidate {
            Candidate::New {
                name,
                hash,
                replica,
            } => self.start_new(svc, name, hash, *replica).await,
            Candidate::Adopt(c) => {
                let step = self.step_name("start", svc, c.replica);
                let started = Instant::now();
                self.ctx.step_started(&step, &c.name);
                self.ctx.step_finished(
                    &step,
                    true,
                    "already running (started by an earlier attempt); not started again",
                    started,
                );
                Ok(c.id.clone())
            }
        }
    }

    /// `start web`, or `start web r2` for a replica of a service with more.
    fn step_name(&self, verb: &str, svc: &ServiceDeploy, replica: u32) -> String {
        if svc.replicas > 1 {
            format!("{verb} {} r{replica}", svc.name)
        } else {
            format!("{verb} {}", svc.name)
        }
    }

    /// The image, pulled as the policy says, and its ID on this engine.
    async fn ensure_image(&self, svc: &ServiceDeploy) -> Result<String, TaskFailure> {
        let step = format!("image {}", svc.name);
        let started = Instant::now();
        self.ctx.step_started(&step, &svc.image);
        let present = self.docker.inspect_image(&svc.image).await.is_ok();
        let pull = match svc.pull {
            PullPolicy::Always => true,
            PullPolicy::IfMissing => !present,
            PullPolicy::Never => false,
        };
        let note = if !pull {
            if !present {
                let why = format!(
                    "image {} is not on this host and pull is \"never\"",
                    svc.image
                );
                self.ctx.step_finished(&step, false, &why, started);
                return Err(TaskFailure::Failed(why));
            }
            "using the local image"
        } else {
            if let Err(why) = self.pull(svc, &step).await {
                let why = self.redact(&why);
                self.ctx.step_finished(&step, false, &why, started);
                self.cancelled()?;
                return Err(TaskFailure::Failed(format!("pull {}: {why}", svc.image)));
            }
            "pulled"
        };
        match self.docker.inspect_image(&svc.image).await {
            Ok(image) if image.id.as_deref().is_some_and(|id| !id.is_empty()) => {
                let id = image.id.unwrap_or_default();
                self.ctx
                    .step_finished(&step, true, &format!("{note}: {id}"), started);
                Ok(id)
            }
            Ok(_) => {
                let why = format!("the engine reports no ID for image {}", svc.image);
                self.ctx.step_finished(&step, false, &why, started);
                Err(TaskFailure::Failed(why))
            }
            Err(e) => {
                let why = format!("inspect image {}: {e}", svc.image);
                self.ctx.step_finished(&step, false, &why, started);
                Err(TaskFailure::Failed(why))
            }
        }
    }

    async fn pull(&self, svc: &ServiceDeploy, step: &str) -> Result<(), String> {
        let credentials = match &svc.registry_auth {
            None => None,
            Some(auth) => {
                let get = |name: &str| {
                    self.ctx.secrets.get(name).cloned().ok_or_else(|| {
                        format!("registry credential secret {name} was not sent with the task")
                    })
                };
                Some(DockerCredentials {
                    username: Some(get(&auth.username_secret)?),
                    password: Some(get(&auth.password_secret)?),
                    serveraddress: naming::registry_host(&svc.image),
                    ..Default::default()
                })
            }
        };
        let mut stream = self.docker.create_image(
            Some(CreateImageOptions {
                from_image: Some(svc.image.clone()),
                ..Default::default()
            }),
            None,
            credentials,
        );
        let mut layers: BTreeMap<String, (i64, i64)> = BTreeMap::new();
        let mut last_report = Instant::now();
        while let Some(item) = stream.next().await {
            self.cancelled()
                .map_err(|_| Outcome::Cancelled.as_str().to_string())?;
            let info = item.map_err(|e| e.to_string())?;
            if let Some(detail) = info.error_detail {
                return Err(detail.message.unwrap_or_else(|| "pull failed".into()));
            }
            if let (Some(id), Some(p)) = (info.id, info.progress_detail)
                && let (Some(current), Some(total)) = (p.current, p.total)
                && total > 0
            {
                layers.insert(id, (current, total));
            }
            if last_report.elapsed() >= Duration::from_millis(250) && !layers.is_empty() {
                last_report = Instant::now();
                let done: i64 = layers.values().map(|(c, _)| *c).sum();
                let total: i64 = layers.values().map(|(_, t)| *t).sum();
                self.ctx.progress_bytes(
                    step,
                    done.max(0) as u64,
                    total.max(0) as u64,
                    &format!("{} layers", layers.len()),
                );
            }
        }
        Ok(())
    }

    async fn ensure_volumes(&self, svc: &ServiceDeploy) -> Result<(), TaskFailure> {
        for v in &svc.volumes {
            let name = naming::volume(&self.spec.app, &self.spec.env, &v.name);
            if self.docker.inspect_volume(&name).await.is_ok() {
                continue;
            }
            let labels = HashMap::from([
                (LABEL_APP.to_string(), self.spec.app.clone()),
                (LABEL_ENV.to_string(), self.spec.env.clone()),
            ]);
            self.docker
                .create_volume(VolumeCreateRequest {
                    name: Some(name.clone()),
                    labels: Some(labels),
                    ..Default::default()
                })
                .await
                .map_err(|e| docker_err(&format!("create volume {name}"), e))?;
        }
        Ok(())
    }

    /// Creates and starts the new container. HTTP services are published on
    /// a free loopback port for health checks and nginx.
    async fn start_new(
        &self,
        svc: &ServiceDeploy,
        name: &str,
        hash: &str,
        replica: u32,
    ) -> Result<String, TaskFailure> {
        let step = self.step_name("start", svc, replica);
        let started = Instant::now();
        self.ctx.step_started(&step, name);
        let mut env: Vec<String> = svc.env.iter().map(|(k, v)| format!("{k}={v}")).collect();
        for secret in &svc.secrets {
            let value = self.ctx.secrets.get(secret).ok_or_else(|| {
                TaskFailure::Failed(format!(
                    "secret {secret} of service {} was not sent with the task",
                    svc.name
                ))
            })?;
            env.push(format!("{secret}={value}"));
        }
        let mut bindings: HashMap<String, Option<Vec<PortBinding>>> = HashMap::new();
        for (i, p) in svc.ports.iter().enumerate() {
            let mut list = Vec::new();
            if i == 0 {
                list.push(PortBinding {
                    host_ip: Some("127.0.0.1".into()),
                    host_port: Some(String::new()),
                });
            }
            if let Some(host) = p.host {
                list.push(PortBinding {
                    host_ip: Some(
                        p.host_ip
                            .map_or_else(|| "0.0.0.0".to_string(), |ip| ip.to_string()),
                    ),
                    host_port: Some(host.to_string()),
                });
            }
            bindings.insert(format!("{}/tcp", p.container), Some(list));
        }
        let binds: Vec<String> = svc
            .volumes
            .iter()
            .map(|v| {
                let volume = naming::volume(&self.spec.app, &self.spec.env, &v.name);
                format!(
                    "{volume}:{}{}",
                    v.target,
                    if v.read_only { ":ro" } else { "" }
                )
            })
            .collect();
        let restart = match svc.restart {
            RestartPolicy::No => RestartPolicyNameEnum::NO,
            RestartPolicy::Always => RestartPolicyNameEnum::ALWAYS,
            RestartPolicy::UnlessStopped => RestartPolicyNameEnum::UNLESS_STOPPED,
            RestartPolicy::OnFailure => RestartPolicyNameEnum::ON_FAILURE,
        };
        let body = ContainerCreateBody {
            image: Some(svc.image.clone()),
            cmd: (!svc.command.is_empty()).then(|| svc.command.clone()),
            env: Some(env),
            labels: Some(self.labels(&svc.name, hash, replica)),
            user: svc.user.clone(),
            exposed_ports: Some(
                svc.ports
                    .iter()
                    .map(|p| format!("{}/tcp", p.container))
                    .collect(),
            ),
            host_config: Some(HostConfig {
                port_bindings: Some(bindings),
                binds: (!binds.is_empty()).then_some(binds),
                memory: svc.memory_bytes,
                nano_cpus: svc.cpus.map(|c| (c * 1e9) as i64),
                restart_policy: Some(DockerRestart {
                    name: Some(restart),
                    maximum_retry_count: None,
                }),
                network_mode: Some(naming::network(&self.spec.app, &self.spec.env)),
                ..Default::default()
            }),
            // An accessory is reached by its name (`db`) on the network,
            // whatever its container is called.
            networking_config: self.is_accessory(&svc.name).then(|| NetworkingConfig {
                endpoints_config: Some(HashMap::from([(
                    naming::network(&self.spec.app, &self.spec.env),
                    EndpointSettings {
                        aliases: Some(vec![svc.name.clone()]),
                        ..Default::default()
                    },
                )])),
            }),
            ..Default::default()
        };
        let created = self
            .docker
            .create_container(
                Some(CreateContainerOptions {
                    name: Some(name.to_string()),
                    ..Default::default()
                }),
                body,
            )
            .await
            .map_err(|e| {
                let why = self.redact(&e.to_string());
                self.ctx.step_finished(&step, false, &why, started);
                TaskFailure::Failed(format!("create container {name}: {why}"))
            })?;
        if let Err(e) = self
            .docker
            .start_container(&created.id, None::<StartContainerOptions>)
            .await
        {
            let why = self.redact(&e.to_string());
            self.ctx.step_finished(&step, false, &why, started);
            self.remove(&created.id).await;
            return Err(TaskFailure::Failed(format!(
                "start container {name}: {why}"
            )));
        }
        self.ctx.step_finished(
            &step,
            true,
            &format!("container {}", &created.id[..12.min(created.id.len())]),
            started,
        );
        Ok(created.id)
    }

    async fn host_port(&self, id: &str) -> Option<u16> {
        health_gate::host_port(&self.docker, id).await
    }

    fn gate(&self) -> health_gate::Gate<'_> {
        health_gate::Gate {
            docker: &self.docker,
            ctx: self.ctx,
            http: &self.http,
        }
    }

    /// Waits until the new container is healthy, or says why it is not.
    async fn health_gate(&self, svc: &ServiceDeploy, id: &str) -> Result<(), String> {
        self.gate().wait(&svc.name, &svc.health, id).await
    }

    /// (running, restart count, exit code).
    async fn container_state(&self, id: &str) -> Result<(bool, i64, i64), String> {
        self.gate().container_state(id).await
    }

    /// The container's last log lines, redacted, each also reported as a log event.
    async fn last_logs(&self, svc: &ServiceDeploy, id: &str) -> Vec<String> {
        let mut stream = self.docker.logs(
            id,
            Some(LogsOptions {
                stdout: true,
                stderr: true,
                tail: FAILURE_LOG_LINES.to_string(),
                ..Default::default()
            }),
        );
        let mut lines = Vec::new();
        while let Some(Ok(chunk)) = stream.next().await {
            let text = chunk.to_string();
            for line in text.lines().filter(|l| !l.is_empty()) {
                lines.push(self.redact(line));
            }
        }
        let keep = lines.len().saturating_sub(FAILURE_LOG_LINES);
        let lines: Vec<String> = lines.split_off(keep);
        let step = format!("health {}", svc.name);
        for line in &lines {
            self.ctx.log(&step, "container", line);
        }
        lines
    }

    async fn fail_new(
        &self,
        svc: &ServiceDeploy,
        id: &str,
        why: String,
        replica: u32,
    ) -> TaskFailure {
        let logs = self.last_logs(svc, id).await;
        self.remove(id).await;
        let which = if svc.replicas > 1 {
            format!(" (replica {replica} of {})", svc.replicas)
        } else {
            String::new()
        };
        let mut message = format!(
            "service {}: new container{which} not healthy: {why}",
            svc.name
        );
        if !logs.is_empty() {
            message.push_str(&format!(
                "\nlast {} log lines of the new container:\n{}",
                logs.len(),
                logs.join("\n")
            ));
        }
        TaskFailure::Failed(message)
    }

    /// Removes the new containers of a failed attempt (never one that
    /// served before).
    async fn remove_new(&self, ids: &[String], old: &[Existing]) {
        for id in ids.iter().filter(|id| !old.iter().any(|o| &o.id == *id)) {
            self.remove(id).await;
        }
    }

    /// Blue-green for N replicas: every new container started (or taken
    /// over) and healthy, then the upstream file lists all N at once, one
    /// reload. Any failure removes every new one; the old ones keep serving.
    async fn blue_green(
        &self,
        svc: &ServiceDeploy,
        candidates: Vec<Candidate<'_>>,
        old: Vec<Existing>,
    ) -> Result<Switched, TaskFailure> {
        let mut ids: Vec<String> = Vec::new();
        for candidate in &candidates {
            match self.obtain(svc, candidate).await {
                Ok(id) => ids.push(id),
                Err(e) => {
                    self.remove_new(&ids, &old).await;
                    return Err(e);
                }
            }
            if let Err(e) = self.cancelled() {
                self.remove_new(&ids, &old).await;
                return Err(e);
            }
        }
        let mut ports = Vec::new();
        for (i, id) in ids.iter().enumerate() {
            let why = match self.health_gate(svc, id).await {
                Ok(()) => match self.host_port(id).await {
                    Some(port) => {
                        ports.push(port);
                        continue;
                    }
                    None => "the container has no published HTTP port".to_string(),
                },
                Err(why) => why,
            };
            let failure = self.fail_new(svc, id, why, i as u32 + 1).await;
            self.remove_new(&ids, &old).await;
            return Err(failure);
        }
        let step = format!("switch {}", svc.name);
        let started = Instant::now();
        let targets: Vec<String> = ports.iter().map(|p| format!("127.0.0.1:{p}")).collect();
        self.ctx
            .step_started(&step, &format!("nginx upstream to {}", targets.join(", ")));
        let path = self.upstream_path(&svc.name);
        let before = std::fs::read_to_string(&path).unwrap_or_default();
        let body = upstream_body(
            &format!(
                "{} {} {} release {}",
                self.spec.app, self.spec.env, svc.name, self.spec.release
            ),
            &ports,
        );
        // With nothing serving before there is nothing to protect: an
        // unconfirmed switch is reported, not undone (a first deploy comes
        // before its nginx site, which cannot include a missing file).
        let strict = !old.is_empty();
        match self.switch(svc, &body, &ports, &before, strict).await {
            Ok(confirmed) => {
                self.ctx.step_finished(&step, true, &confirmed, started);
            }
            Err(why) => {
                self.ctx.step_finished(&step, false, &why, started);
                self.remove_new(&ids, &old).await;
                return Err(TaskFailure::Failed(format!(
                    "service {}: switch failed, the previous container keeps serving: {why}",
                    svc.name
                )));
            }
        }
        Ok(Switched {
            service: svc.clone(),
            new_ids: ids,
            changed: true,
            old,
            upstream_before: Some(before),
        })
    }

    /// Recreate (and workers), replica by replica: stop old replica i,
    /// start new replica i, wait for its health; the other replicas keep
    /// running meanwhile. A failure removes the new ones started so far and
    /// starts their old ones again.
    async fn recreate(
        &self,
        svc: &ServiceDeploy,
        candidates: Vec<Candidate<'_>>,
        old: Vec<Existing>,
    ) -> Result<Switched, TaskFailure> {
        let mut ids: Vec<String> = Vec::new();
        // The old containers stopped so far, to start again on a failure.
        let mut stopped: Vec<Existing> = Vec::new();
        for candidate in &candidates {
            let replica = match candidate {
                Candidate::New { replica, .. } => *replica,
                Candidate::Adopt(c) => c.replica,
            };
            let result: Result<String, TaskFailure> = async {
                if let Candidate::New { .. } = candidate {
                    // The old container of this replica goes first: a fixed
                    // host port is held by one container only.
                    for o in old.iter().filter(|o| o.replica == replica && o.running) {
                        self.stop(
                            &o.id,
                            &format!("{} {}", self.step_name("stop", svc, replica), o.release),
                        )
                        .await;
                        stopped.push(o.clone());
                    }
                    self.cancelled()?;
                }
                let id = self.obtain(svc, candidate).await?;
                if let Err(why) = self.health_gate(svc, &id).await {
                    return Err(self.fail_new(svc, &id, why, replica).await);
                }
                Ok(id)
            }
            .await;
            match result {
                Ok(id) => ids.push(id),
                Err(e) => {
                    self.remove_new(&ids, &old).await;
                    for o in &stopped {
                        self.restart_old(svc, o).await;
                    }
                    return Err(e);
                }
            }
        }
        Ok(Switched {
            service: svc.clone(),
            new_ids: ids,
            changed: true,
            old,
            upstream_before: None,
        })
    }

    async fn restart_old(&self, svc: &ServiceDeploy, o: &Existing) {
        let step = format!(
            "{} {}",
            self.step_name("restart", svc, o.replica),
            o.release
        );
        let started = Instant::now();
        self.ctx.step_started(&step, &o.name);
        match self
            .docker
            .start_container(&o.id, None::<StartContainerOptions>)
            .await
        {
            Ok(()) => {
                self.ctx
                    .step_finished(&step, true, "previous release serving again", started)
            }
            Err(e) => {
                self.ctx
                    .step_finished(&step, false, &e.to_string(), started);
                self.unrestored
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .push((svc.name.clone(), format!("start {}: {e}", o.name)));
            }
        }
    }

    /// Writes `body` to the service's upstream file and makes nginx use
    /// it, confirmed: (a) nginx's configuration (`nginx -T`) includes the
    /// file, (b) nginx reloads, (c) with an `nginx_url`, a request through
    /// nginx is answered by `127.0.0.1:port`. On any failure the file gets
    /// `restore` back (and nginx is reloaded if it was). Not `strict`, a
    /// failed confirmation is only noted. Returns what was confirmed, for
    /// the step's message.
    async fn switch(
        &self,
        svc: &ServiceDeploy,
        body: &str,
        ports: &[u16],
        restore: &str,
        strict: bool,
    ) -> Result<String, String> {
        let nginx = &self.ctx.host.nginx;
        let path = self.upstream_path(&svc.name);
        let put_back = || fsutil::write_atomic(&path, restore.as_bytes(), Mode::Public, true);
        fsutil::write_atomic(&path, body.as_bytes(), Mode::Public, true)
            .map_err(|e| e.to_string())?;
        let mut notes = Vec::new();
        let mut included = true;
        match nginx.test_command() {
            None => notes.push(
                "not confirmed that nginx includes the file: no [nginx] test_command".to_string(),
            ),
            Some(cmd) => match nginx_includes(&cmd, &path).await {
                Ok(()) => notes.push(format!("nginx includes {}", path.display())),
                Err(why) if !strict => {
                    included = false;
                    notes.push(format!("not confirmed: {why}"));
                }
                Err(why) => {
                    let _ = put_back();
                    return Err(why);
                }
            },
        }
        if let Err(why) = reload_nginx(&nginx.reload_command).await {
            let _ = put_back();
            let _ = reload_nginx(&nginx.reload_command).await;
            return Err(why);
        }
        notes.push("reloaded".into());
        match (&svc.nginx_url, ports) {
            // No request can reach the new container through a file nginx
            // does not read.
            (Some(_), [_, ..]) if !included => {}
            (Some(url), [_, ..]) => match self.through_nginx(svc, url, ports).await {
                Ok(note) => notes.push(note),
                Err(why) if !strict => notes.push(format!("not confirmed: {why}")),
                Err(why) => {
                    let _ = put_back();
                    let _ = reload_nginx(&nginx.reload_command).await;
                    return Err(why);
                }
            },
            (Some(_), []) => {}
            (None, _) => notes.push(
                "no nginx_url for this service, so no request through nginx confirmed it".into(),
            ),
        }
        Ok(notes.join("; "))
    }

    /// GETs the service through nginx (`nginx_url` and the health check's
    /// path) until nginx says one of `127.0.0.1:PORT` (`ports`) answered.
    async fn through_nginx(
        &self,
        svc: &ServiceDeploy,
        base: &str,
        ports: &[u16],
    ) -> Result<String, String> {
        let path = match &svc.health.check {
            HealthCheck::Http { path } => path.as_str(),
            _ => "/",
        };
        let url = format!("{}{path}", base.trim_end_matches('/'));
        let wanted: Vec<String> = ports.iter().map(|p| format!("127.0.0.1:{p}")).collect();
        let want = wanted.join(", ");
        let deadline = Instant::now() + NGINX_CONFIRM_WITHIN;
        let mut last;
        loop {
            last = match self.http.get(&url, Duration::from_secs(2)).await {
                Ok(a) => match a.headers.get(UPSTREAM_HEADER).and_then(|v| v.to_str().ok()) {
                    // `$upstream_addr` lists every backend tried, last one last.
                    Some(addrs)
                        if addrs
                            .rsplit(',')
                            .next()
                            .map(str::trim)
                            .is_some_and(|a| wanted.iter().any(|w| w == a)) =>
                    {
                        let by = addrs.rsplit(',').next().unwrap_or_default().trim();
                        return Ok(format!("GET {url} answered by {by} through nginx"));
                    }
                    Some(addrs) => format!("answered {} by {addrs}", a.status),
                    None => format!(
                        "answered {} without an X-Ferry-Upstream header: add `add_header X-Ferry-Upstream $upstream_addr always;` to the site",
                        a.status
                    ),
                },
                Err(e) => e,
            };
            if Instant::now() >= deadline {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        Err(format!(
            "nginx did not send GET {url} to the new container ({want}) within {}: last {last}",
            ferry_common::time::format_duration(NGINX_CONFIRM_WITHIN)
        ))
    }

    /// Switches a service back to its previous containers (a later
    /// service of this release failed, or the task was cancelled).
    async fn undo(&self, s: Switched) {
        if !s.changed {
            return;
        }
        let step = format!("revert {}", s.service.name);
        let started = Instant::now();
        self.ctx
            .step_started(&step, "back to the release that served before");
        let mut problems = Vec::new();
        let blue_green = s.upstream_before.is_some();
        let fresh: Vec<String> = s.fresh().cloned().collect();
        if !blue_green {
            // Recreate or worker: the new containers go first, as a fixed
            // host port is held by one container only.
            for id in &fresh {
                self.remove(id).await;
            }
        }
        for old in &s.old {
            let running = matches!(self.container_state(&old.id).await, Ok((true, _, _)));
            if !running
                && let Err(e) = self
                    .docker
                    .start_container(&old.id, None::<StartContainerOptions>)
                    .await
            {
                problems.push(format!("start {}: {e}", old.name));
            }
        }
        let mut confirmed = String::new();
        if let Some(before) = &s.upstream_before {
            let current =
                std::fs::read_to_string(self.upstream_path(&s.service.name)).unwrap_or_default();
            match self
                .switch(&s.service, before, &upstream_ports(before), &current, true)
                .await
            {
                Ok(note) => confirmed = note,
                Err(why) => problems.push(format!("switch back: {why}")),
            }
        }
        if problems.is_empty() {
            for id in &fresh {
                self.remove(id).await;
            }
            let message = match s.old.first() {
                Some(o) => format!("release {} serving again; {confirmed}", o.release),
                None => "the new containers are removed; nothing served before".into(),
            };
            self.ctx.step_finished(&step, true, &message, started);
        } else {
            // A blue-green service keeps its new containers serving rather
            // than nothing.
            let why = problems.join("; ");
            self.ctx.step_finished(&step, false, &why, started);
            self.unrestored
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .push((s.service.name.clone(), why));
        }
    }

    /// After the whole release succeeded: drain and stop the containers
    /// that served before, stop every other running container of the
    /// service (orphans of attempts cut short, replicas beyond the count),
    /// keep the newest `keep_releases` stopped releases and remove the rest.
    async fn retire_old(&self, s: &Switched) -> Result<(), TaskFailure> {
        let name = &s.service.name;
        let containers = self.existing(name).await?;
        let others: Vec<&Existing> = containers
            .iter()
            .filter(|c| !s.new_ids.contains(&c.id))
            .collect();
        if s.changed
            && s.upstream_before.is_some()
            && s.old
                .iter()
                .any(|o| others.iter().any(|c| c.id == o.id && c.running))
            && !self.ctx.host.nginx.drain.is_zero()
        {
            tokio::time::sleep(self.ctx.host.nginx.drain).await;
        }
        for c in others.iter().filter(|c| c.running) {
            let what = if s.old.iter().any(|o| o.id == c.id) {
                "previous"
            } else {
                "orphan"
            };
            self.stop(
                &c.id,
                &format!(
                    "{} {} ({what})",
                    self.step_name("stop", &s.service, c.replica),
                    c.release
                ),
            )
            .await;
        }
        let stopped: Vec<&Existing> = others.to_vec();
        let prune = to_prune(&stopped, &self.spec.release, self.spec.keep_releases);
        if !prune.is_empty() {
            let step = format!("prune {name}");
            let started = Instant::now();
            self.ctx.step_started(
                &step,
                &format!("keep {} stopped release(s)", self.spec.keep_releases),
            );
            for c in &prune {
                self.remove(&c.id).await;
            }
            let names: Vec<&str> = prune.iter().map(|c| c.name.as_str()).collect();
            self.ctx.step_finished(
                &step,
                true,
                &format!("removed {}", names.join(", ")),
                started,
            );
        }
        Ok(())
    }

    async fn stop(&self, id: &str, step: &str) {
        let started = Instant::now();
        self.ctx.step_started(step, "");
        match self
            .docker
            .stop_container(
                id,
                Some(StopContainerOptions {
                    t: Some(STOP_TIMEOUT_SECS),
                    ..Default::default()
                }),
            )
            .await
        {
            Ok(()) => self.ctx.step_finished(step, true, "stopped", started),
            Err(e) => self.ctx.step_finished(step, false, &e.to_string(), started),
        }
    }

    async fn remove(&self, id: &str) {
        let _ = self
            .docker
            .remove_container(
                id,
                Some(RemoveContainerOptions {
                    force: true,
                    ..Default::default()
                }),
            )
            .await;
    }
}

/// Runs nginx's configuration dump (`nginx -T`) and checks that it holds
/// `file`.
async fn nginx_includes(command: &[String], file: &Path) -> Result<(), String> {
    let (program, args) = command
        .split_first()
        .ok_or_else(|| "the [nginx] test_command is empty".to_string())?;
    let out = tokio::process::Command::new(program)
        .args(args)
        .output()
        .await
        .map_err(|e| format!("nginx configuration dump ({program}): {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "nginx configuration dump ({}) failed with {}: {}",
            command.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    if dump_includes(&String::from_utf8_lossy(&out.stdout), file) {
        return Ok(());
    }
    let dir = file.parent().unwrap_or(Path::new("/"));
    Err(format!(
        "nginx does not include {}: add `include {}/*.conf;` (or that file) inside the upstream block of the service's site (checked with {})",
        file.display(),
        dir.display(),
        command.join(" ")
    ))
}

pub(super) async fn reload_nginx(command: &[String]) -> Result<(), String> {
    let (program, args) = command.split_first().ok_or_else(|| {
        "no nginx reload command configured (agent.toml [nginx] reload_command)".to_string()
    })?;
    let out = tokio::process::Command::new(program)
        .args(args)
        .output()
        .await
        .map_err(|e| format!("nginx reload ({program}): {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "nginx reload ({}) failed with {}: {}",
            command.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn service() -> ServiceDeploy {
        serde_json::from_value(serde_json::json!({
            "name": "web",
            "image": "shop:1.0.0",
            "pull": "never",
            "command": ["serve", "--port", "8080"],
            "env": {"GREETING": "hi"},
            "secrets": ["API_TOKEN"],
            "ports": [{"container": 8080}],
            "volumes": [{"name": "data", "target": "/data"}],
            "user": "1000",
            "memory_bytes": 134217728,
            "cpus": 0.5,
            "restart": "unless-stopped",
            "health": {"check": {"http": {"path": "/health"}}, "interval": "1s", "timeout": "1s", "retries": 3},
            "strategy": "blue-green",
        }))
        .unwrap()
    }

    const SECRET: &str = "correct-horse-battery-staple";

    fn secrets(value: &str) -> BTreeMap<String, String> {
        BTreeMap::from([("API_TOKEN".to_string(), value.to_string())])
    }

    fn hash(svc: &ServiceDeploy, image: &str, secret: &str) -> String {
        settings_hash(svc, image, &secrets(secret)).unwrap().0
    }

    #[test]
    fn every_setting_changes_the_hash_and_no_secret_is_hashed_in_the_clear() {
        let base = service();
        let h = hash(&base, "sha256:aaa", SECRET);
        assert_eq!(h.len(), 64);
        assert_eq!(h, hash(&base, "sha256:aaa", SECRET), "deterministic");
        type Change = fn(&mut ServiceDeploy);
        let changes: Vec<(&str, Change)> = vec![
            ("env value", |s| {
                s.env.insert("GREETING".into(), "hello".into());
            }),
            ("env variable", |s| {
                s.env.insert("NEW".into(), "1".into());
            }),
            ("command", |s| s.command.push("--debug".into())),
            ("port", |s| s.ports[0].container = 9090),
            ("fixed host port", |s| s.ports[0].host = Some(80)),
            ("volume", |s| s.volumes[0].target = "/srv".into()),
            ("read-only volume", |s| s.volumes[0].read_only = true),
            ("user", |s| s.user = Some("1001".into())),
            ("memory", |s| s.memory_bytes = Some(256 << 20)),
            ("cpus", |s| s.cpus = Some(1.0)),
            ("restart", |s| s.restart = RestartPolicy::Always),
            ("health path", |s| {
                s.health.check = HealthCheck::Http {
                    path: "/ready".into(),
                }
            }),
            ("health retries", |s| s.health.retries = 4),
            ("replicas", |s| s.replicas = 2),
            ("secret added", |s| s.secrets.clear()),
        ];
        for (what, change) in changes {
            let mut svc = base.clone();
            change(&mut svc);
            assert_ne!(hash(&svc, "sha256:aaa", SECRET), h, "{what}");
        }
        assert_ne!(hash(&base, "sha256:bbb", SECRET), h, "image");
        assert_ne!(hash(&base, "sha256:aaa", "rotated"), h, "rotated secret");
        // How it is switched is not what runs.
        let mut svc = base.clone();
        svc.strategy = Strategy::Recreate;
        svc.nginx_url = Some("http://127.0.0.1:8081".into());
        svc.pull = PullPolicy::Always;
        assert_eq!(hash(&svc, "sha256:aaa", SECRET), h);

        let (_, text) = settings_hash(&base, "sha256:aaa", &secrets(SECRET)).unwrap();
        assert!(!text.contains(SECRET), "{text}");
        // One replica hashes as before replicas existed: no redeploy on upgrade.
        assert!(!text.contains("replicas"), "{text}");
        assert!(
            text.contains("API_TOKEN") && text.contains("GREETING"),
            "{text}"
        );
        let err = settings_hash(&base, "sha256:aaa", &BTreeMap::new()).unwrap_err();
        assert!(
            err.contains("secret API_TOKEN of service web was not sent"),
            "{err}"
        );
    }

    fn c(id: &str, release: &str, running: bool, port: Option<u16>, created: i128) -> Existing {
        Existing {
            id: id.into(),
            name: format!("shop-prod-web-{release}-{id}"),
            release: release.into(),
            hash: "h".into(),
            replica: 1,
            accessory: false,
            running,
            host_port: port,
            created,
        }
    }

    fn ids(v: &[Existing]) -> Vec<&str> {
        v.iter().map(|c| c.id.as_str()).collect()
    }

    #[test]
    fn the_current_containers_are_those_nginx_names_or_the_newest_running() {
        let all = [
            c("a", "1", true, Some(1001), 1),
            c("b", "2", true, Some(1002), 3),
            c("x", "3", false, Some(1003), 4),
            c("c", "2", true, Some(1004), 2),
        ];
        assert_eq!(ids(&current(&all, true, &[1001])), ["a"]);
        assert_eq!(
            ids(&current(&all, true, &[1003])),
            Vec::<&str>::new(),
            "not running"
        );
        assert!(current(&all, true, &[]).is_empty(), "no upstream file");
        assert_eq!(ids(&current(&all, false, &[])), ["b"]);
        assert!(current(&all[2..3], false, &[]).is_empty());
        // Replicas: every one nginx names; otherwise the newest per replica.
        let mut r = all.clone();
        r[1].replica = 2;
        r[3].replica = 3;
        assert_eq!(
            ids(&current(&r, true, &[1004, 1001, 1002])),
            ["a", "b", "c"]
        );
        assert_eq!(ids(&current(&r, false, &[])), ["a", "b", "c"]);
    }

    #[test]
    fn pruning_keeps_the_newest_stopped_container_of_the_newest_releases() {
        let all = [
            c("r1", "1", false, None, 1),
            c("r2", "2", false, None, 2),
            c("r2b", "2", false, None, 3),
            c("r3", "3", false, None, 4),
            c("r4", "4", false, None, 5),
            c("now", "5", false, None, 6),
        ];
        let stopped: Vec<&Existing> = all.iter().collect();
        let ids = |keep| -> Vec<&str> {
            let mut v: Vec<&str> = to_prune(&stopped, "5", keep)
                .iter()
                .map(|c| c.id.as_str())
                .collect();
            v.sort();
            v
        };
        assert_eq!(ids(2), ["now", "r1", "r2", "r2b"]);
        assert_eq!(ids(3), ["now", "r1", "r2"]);
        assert_eq!(ids(50), ["now", "r2"]);
        // Every replica of a kept release is kept.
        let mut all = all.clone();
        all[1].replica = 2;
        let stopped: Vec<&Existing> = all.iter().collect();
        let mut v: Vec<&str> = to_prune(&stopped, "5", 3)
            .iter()
            .map(|c| c.id.as_str())
            .collect();
        v.sort();
        assert_eq!(v, ["now", "r1"]);
    }

    #[test]
    fn upstream_files_and_nginx_dumps_are_read() {
        assert_eq!(
            upstream_ports("# Written by ferry\nserver 127.0.0.1:32768;\n"),
            [32768]
        );
        assert!(upstream_ports("").is_empty());
        let body = upstream_body("shop prod web release 2", &[1, 2, 3]);
        assert_eq!(
            body,
            "# Written by ferry: shop prod web release 2\nserver 127.0.0.1:1;\nserver 127.0.0.1:2;\nserver 127.0.0.1:3;\n"
        );
        assert_eq!(upstream_ports(&body), [1, 2, 3]);
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("shop-prod-web.conf");
        std::fs::write(&file, "server 127.0.0.1:1;\n").unwrap();
        let dump = format!(
            "# configuration file /etc/nginx/nginx.conf:\nhttp {{}}\n\n# configuration file {}:\nserver 127.0.0.1:1;\n",
            file.display()
        );
        assert!(dump_includes(&dump, &file));
        assert!(!dump_includes(&dump, &dir.path().join("other.conf")));
        assert!(!dump_includes("server 127.0.0.1:1;", &file));
    }
}
