//! `deploy`: one release of an app's services on this host's Docker engine.
//!
//! Per service: pull (or use the local image), then
//! - `blue-green`: start the new container beside the old one on a free
//!   loopback port, gate on health, point the service's nginx upstream file
//!   at it and reload nginx, let the old one drain, stop it;
//! - `recreate`: stop the old container, start the new one, gate on health;
//!   on failure start the old one again;
//! - workers (no port): start new, gate on health, stop old.
//!
//! A failed health gate removes the new container, leaves the old one
//! serving, and fails the task with the reason and the new container's last
//! log lines (secrets redacted). When a later service of the same release
//! fails, services already switched on this host are switched back, so a
//! host is never left half on one release. The previous release's container
//! is kept, stopped, for a fast rollback; older ones are removed.

use ferry_common::status::Outcome;
use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

use bollard::Docker;
use bollard::auth::DockerCredentials;
use bollard::models::{
    ContainerCreateBody, ContainerSummaryStateEnum, HostConfig, NetworkCreateRequest, PortBinding,
    RestartPolicy as DockerRestart, RestartPolicyNameEnum, VolumeCreateRequest,
};
use bollard::query_parameters::{
    CreateContainerOptions, CreateImageOptions, ListContainersOptions, LogsOptions,
    RemoveContainerOptions, StartContainerOptions, StopContainerOptions,
};
use ferry_common::fsutil::{self, Mode};
use ferry_common::job::naming::{self, LABEL_APP, LABEL_ENV, LABEL_RELEASE, LABEL_SERVICE};
use ferry_common::job::{DeploySpec, PullPolicy, RestartPolicy, ServiceDeploy, Strategy};
use ferry_common::redact::Redactor;
use futures::StreamExt;
use serde::Serialize;

use super::health_gate;
use super::http::HttpClient;
use super::{Done, KindExecutor, TaskContext, TaskFailure};

/// Log lines of a failed container included in the failure.
const FAILURE_LOG_LINES: usize = 50;
/// How long a container gets to stop before it is killed.
const STOP_TIMEOUT_SECS: i32 = 10;

/// What the task reports per service (its result, used for release records).
#[derive(Debug, Clone, Serialize)]
pub struct ServiceResult {
    pub service: String,
    pub container: String,
    pub image: String,
    pub release: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub host_port: Option<u16>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub previous_release: Option<String>,
    /// False when this release was already running.
    pub changed: bool,
}

/// A service switched to the new release on this host, and how to undo it.
struct Switched {
    service: ServiceDeploy,
    new_id: String,
    old: Option<Existing>,
    upstream_before: Option<String>,
}

#[derive(Debug, Clone)]
struct Existing {
    id: String,
    name: String,
    release: String,
    running: bool,
    host_port: Option<u16>,
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
    };
    d.ensure_network().await?;
    let mut switched: Vec<Switched> = Vec::new();
    let mut results = Vec::new();
    for service in &spec.services {
        match d.deploy_service(service).await {
            Ok((result, switch)) => {
                results.push(result);
                switched.extend(switch);
            }
            Err(failure) => {
                for s in switched.into_iter().rev() {
                    d.undo(s).await;
                }
                return Err(failure);
            }
        }
    }
    // Only now, with every service on the new release, are old containers
    // stopped for good and older releases pruned.
    for s in &switched {
        d.retire_old(s).await?;
    }
    let message = format!(
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
    let result_json =
        serde_json::json!({ "release": spec.release, "services": results }).to_string();
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
}

fn docker_err(what: &str, e: bollard::errors::Error) -> TaskFailure {
    TaskFailure::Failed(format!("{what}: {e}"))
}

impl Deployer<'_> {
    fn redact(&self, line: &str) -> String {
        self.redactor.redact(line).into_owned()
    }

    fn labels(&self, service: &str) -> HashMap<String, String> {
        HashMap::from([
            (LABEL_APP.to_string(), self.spec.app.clone()),
            (LABEL_ENV.to_string(), self.spec.env.clone()),
            (LABEL_SERVICE.to_string(), service.to_string()),
            (LABEL_RELEASE.to_string(), self.spec.release.clone()),
        ])
    }

    fn cancelled(&self) -> Result<(), TaskFailure> {
        if self.ctx.cancel.is_cancelled() {
            Err(TaskFailure::Cancelled)
        } else {
            Ok(())
        }
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

    /// This service's containers, any state.
    async fn existing(&self, service: &str) -> Result<Vec<Existing>, TaskFailure> {
        let filters = HashMap::from([(
            "label".to_string(),
            vec![
                format!("{LABEL_APP}={}", self.spec.app),
                format!("{LABEL_ENV}={}", self.spec.env),
                format!("{LABEL_SERVICE}={service}"),
            ],
        )]);
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
            .map(|c| {
                let labels = c.labels.unwrap_or_default();
                let host_port = c
                    .ports
                    .unwrap_or_default()
                    .iter()
                    .find(|p| p.ip.as_deref() == Some("127.0.0.1"))
                    .and_then(|p| p.public_port);
                Existing {
                    id: c.id.unwrap_or_default(),
                    name: c
                        .names
                        .unwrap_or_default()
                        .first()
                        .map(|n| n.trim_start_matches('/').to_string())
                        .unwrap_or_default(),
                    release: labels.get(LABEL_RELEASE).cloned().unwrap_or_default(),
                    running: c.state == Some(ContainerSummaryStateEnum::RUNNING),
                    host_port,
                }
            })
            .collect())
    }

    async fn deploy_service(
        &self,
        svc: &ServiceDeploy,
    ) -> Result<(ServiceResult, Option<Switched>), TaskFailure> {
        self.cancelled()?;
        let existing = self.existing(&svc.name).await?;
        let serving = existing.iter().find(|c| c.running).cloned();
        let name = naming::container(
            &self.spec.app,
            &self.spec.env,
            &svc.name,
            &self.spec.release,
        );
        if let Some(current) = serving.as_ref().filter(|c| c.release == self.spec.release) {
            let step = format!("{} already running", svc.name);
            let started = Instant::now();
            self.ctx.step_started(&step, &current.name);
            self.ctx.step_finished(
                &step,
                true,
                &format!("release {} is already running here", self.spec.release),
                started,
            );
            return Ok((
                ServiceResult {
                    service: svc.name.clone(),
                    container: current.name.clone(),
                    image: svc.image.clone(),
                    release: self.spec.release.clone(),
                    host_port: current.host_port,
                    previous_release: None,
                    changed: false,
                },
                None,
            ));
        }
        self.ensure_image(svc).await?;
        self.ensure_volumes(svc).await?;
        // A container of this release left over from an earlier attempt.
        if let Some(stale) = existing.iter().find(|c| c.name == name) {
            self.remove(&stale.id).await;
        }
        self.cancelled()?;
        let switched = match (svc.strategy, svc.http_port()) {
            (Strategy::BlueGreen, Some(_)) => self.blue_green(svc, &name, serving.clone()).await?,
            (Strategy::BlueGreen, None) => {
                self.start_then_stop(svc, &name, serving.clone()).await?
            }
            (Strategy::Recreate, _) => self.recreate(svc, &name, serving.clone()).await?,
        };
        let host_port = self.host_port(&switched.new_id).await;
        Ok((
            ServiceResult {
                service: svc.name.clone(),
                container: name,
                image: svc.image.clone(),
                release: self.spec.release.clone(),
                host_port,
                previous_release: serving.map(|s| s.release),
                changed: true,
            },
            Some(switched),
        ))
    }

    async fn ensure_image(&self, svc: &ServiceDeploy) -> Result<(), TaskFailure> {
        let step = format!("image {}", svc.name);
        let started = Instant::now();
        self.ctx.step_started(&step, &svc.image);
        let present = self.docker.inspect_image(&svc.image).await.is_ok();
        let pull = match svc.pull {
            PullPolicy::Always => true,
            PullPolicy::IfMissing => !present,
            PullPolicy::Never => false,
        };
        if !pull {
            if !present {
                let why = format!(
                    "image {} is not on this host and pull is \"never\"",
                    svc.image
                );
                self.ctx.step_finished(&step, false, &why, started);
                return Err(TaskFailure::Failed(why));
            }
            self.ctx
                .step_finished(&step, true, "using the local image", started);
            return Ok(());
        }
        match self.pull(svc, &step).await {
            Ok(()) => {
                self.ctx.step_finished(&step, true, "pulled", started);
                Ok(())
            }
            Err(why) => {
                let why = self.redact(&why);
                self.ctx.step_finished(&step, false, &why, started);
                Err(TaskFailure::Failed(format!("pull {}: {why}", svc.image)))
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
    async fn start_new(&self, svc: &ServiceDeploy, name: &str) -> Result<String, TaskFailure> {
        let step = format!("start {}", svc.name);
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
            labels: Some(self.labels(&svc.name)),
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

    /// Waits until the new container is healthy, or says why it is not.
    async fn health_gate(&self, svc: &ServiceDeploy, id: &str) -> Result<(), String> {
        health_gate::Gate {
            docker: &self.docker,
            ctx: self.ctx,
            http: &self.http,
        }
        .wait(&svc.name, &svc.health, id)
        .await
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

    async fn fail_new(&self, svc: &ServiceDeploy, id: &str, why: String) -> TaskFailure {
        let logs = self.last_logs(svc, id).await;
        self.remove(id).await;
        let mut message = format!("service {}: new container not healthy: {why}", svc.name);
        if !logs.is_empty() {
            message.push_str(&format!(
                "\nlast {} log lines of the new container:\n{}",
                logs.len(),
                logs.join("\n")
            ));
        }
        TaskFailure::Failed(message)
    }

    async fn blue_green(
        &self,
        svc: &ServiceDeploy,
        name: &str,
        old: Option<Existing>,
    ) -> Result<Switched, TaskFailure> {
        let id = self.start_new(svc, name).await?;
        if let Err(why) = self.health_gate(svc, &id).await {
            return Err(self.fail_new(svc, &id, why).await);
        }
        let Some(port) = self.host_port(&id).await else {
            return Err(self
                .fail_new(svc, &id, "the container has no published HTTP port".into())
                .await);
        };
        let step = format!("switch {}", svc.name);
        let started = Instant::now();
        self.ctx
            .step_started(&step, &format!("nginx upstream to 127.0.0.1:{port}"));
        let before = match self.write_upstream(&svc.name, Some(port)).await {
            Ok(before) => before,
            Err(why) => {
                self.ctx.step_finished(&step, false, &why, started);
                return Err(self.fail_new(svc, &id, why).await);
            }
        };
        self.ctx
            .step_finished(&step, true, "nginx reloaded", started);
        Ok(Switched {
            service: svc.clone(),
            new_id: id,
            old,
            upstream_before: Some(before),
        })
    }

    async fn start_then_stop(
        &self,
        svc: &ServiceDeploy,
        name: &str,
        old: Option<Existing>,
    ) -> Result<Switched, TaskFailure> {
        let id = self.start_new(svc, name).await?;
        if let Err(why) = self.health_gate(svc, &id).await {
            return Err(self.fail_new(svc, &id, why).await);
        }
        Ok(Switched {
            service: svc.clone(),
            new_id: id,
            old,
            upstream_before: None,
        })
    }

    async fn recreate(
        &self,
        svc: &ServiceDeploy,
        name: &str,
        old: Option<Existing>,
    ) -> Result<Switched, TaskFailure> {
        if let Some(o) = &old {
            self.stop(&o.id, &format!("stop {} {}", svc.name, o.release))
                .await;
        }
        let id = match self.start_new(svc, name).await {
            Ok(id) => id,
            Err(e) => {
                self.restart_old(svc, old.as_ref()).await;
                return Err(e);
            }
        };
        if let Err(why) = self.health_gate(svc, &id).await {
            let failure = self.fail_new(svc, &id, why).await;
            self.restart_old(svc, old.as_ref()).await;
            return Err(failure);
        }
        Ok(Switched {
            service: svc.clone(),
            new_id: id,
            old,
            upstream_before: None,
        })
    }

    async fn restart_old(&self, svc: &ServiceDeploy, old: Option<&Existing>) {
        let Some(o) = old else { return };
        let step = format!("restart {} {}", svc.name, o.release);
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
            Err(e) => self
                .ctx
                .step_finished(&step, false, &e.to_string(), started),
        }
    }

    /// Points the service's nginx upstream at `port` (or back to `before`)
    /// and reloads nginx; returns what the file said before.
    async fn write_upstream(&self, service: &str, port: Option<u16>) -> Result<String, String> {
        let nginx = &self.ctx.host.nginx;
        let path = nginx.upstream_dir.join(naming::upstream_file(
            &self.spec.app,
            &self.spec.env,
            service,
        ));
        let before = std::fs::read_to_string(&path).unwrap_or_default();
        let body = match port {
            Some(port) => format!(
                "# Written by ferry: {} {} {} release {}\nserver 127.0.0.1:{port};\n",
                self.spec.app, self.spec.env, service, self.spec.release
            ),
            None => before.clone(),
        };
        fsutil::write_atomic(&path, body.as_bytes(), Mode::Public, true)
            .map_err(|e| e.to_string())?;
        if let Err(why) = reload_nginx(&nginx.reload_command).await {
            let _ = fsutil::write_atomic(&path, before.as_bytes(), Mode::Public, true);
            let _ = reload_nginx(&nginx.reload_command).await;
            return Err(why);
        }
        Ok(before)
    }

    /// Switches a service back to its previous container (a later service
    /// of this release failed).
    async fn undo(&self, s: Switched) {
        let step = format!("revert {}", s.service.name);
        let started = Instant::now();
        self.ctx.step_started(
            &step,
            "a later service failed; back to the previous release",
        );
        if let Some(old) = &s.old {
            let _ = self
                .docker
                .start_container(&old.id, None::<StartContainerOptions>)
                .await;
        }
        if let Some(before) = &s.upstream_before {
            let nginx = &self.ctx.host.nginx;
            let path = nginx.upstream_dir.join(naming::upstream_file(
                &self.spec.app,
                &self.spec.env,
                &s.service.name,
            ));
            let _ = fsutil::write_atomic(&path, before.as_bytes(), Mode::Public, true);
            let _ = reload_nginx(&nginx.reload_command).await;
        }
        self.remove(&s.new_id).await;
        self.ctx
            .step_finished(&step, true, "previous release restored", started);
    }

    /// After a successful switch: drain and stop the old container, keep it
    /// for rollback, remove older releases.
    async fn retire_old(&self, s: &Switched) -> Result<(), TaskFailure> {
        if let Some(old) = &s.old {
            if s.upstream_before.is_some() && !self.ctx.host.nginx.drain.is_zero() {
                tokio::time::sleep(self.ctx.host.nginx.drain).await;
            }
            if old.running {
                self.stop(&old.id, &format!("stop {} {}", s.service.name, old.release))
                    .await;
            }
        }
        let keep: Vec<&str> = [
            Some(s.new_id.as_str()),
            s.old.as_ref().map(|o| o.id.as_str()),
        ]
        .into_iter()
        .flatten()
        .collect();
        for c in self.existing(&s.service.name).await? {
            if !keep.contains(&c.id.as_str()) && !c.running {
                self.remove(&c.id).await;
            }
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
