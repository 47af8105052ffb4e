//! `restart`: the running containers of one release, restarted in place.
//!
//! Per service, in the spec's order: find the running container of the
//! release (its name is the deploy's), restart it (same container, same
//! id), gate on the service's health check, and for a blue-green service
//! point its nginx upstream file at the port Docker published it on this
//! time (a restart may change it) and reload nginx. The first service that
//! has no running container of the release, does not restart, or fails its
//! gate fails the task; services after it are not touched.

use std::time::Instant;

use bollard::Docker;
use bollard::models::ContainerSummaryStateEnum;
use bollard::query_parameters::{
    InspectContainerOptions, ListContainersOptions, RestartContainerOptions,
};
use ferry_common::fsutil::{self, Mode};
use ferry_common::job::naming::{self, LABEL_APP, LABEL_ENV, LABEL_RELEASE, LABEL_SERVICE};
use ferry_common::job::{RestartService, RestartSpec};
use serde::Serialize;
use std::collections::HashMap;

use super::health_gate::{self, Gate};
use super::http::HttpClient;
use super::{Done, KindExecutor, TaskContext, TaskFailure};

/// How long a container gets to stop before it is killed (the deploy's).
const STOP_TIMEOUT_SECS: i32 = 10;

/// What the task reports per service.
#[derive(Debug, Clone, Serialize)]
pub struct Restarted {
    pub service: String,
    pub container: String,
    pub id: String,
    /// Docker's `State.StartedAt` after the restart.
    pub started_at: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub host_port: Option<u16>,
}

/// Runs `restart` tasks.
pub struct Restart;

#[async_trait::async_trait]
impl KindExecutor for Restart {
    type Spec = RestartSpec;
    async fn run(&self, spec: RestartSpec, ctx: &TaskContext) -> Result<Done, TaskFailure> {
        run(&spec, ctx).await
    }
}

pub async fn run(spec: &RestartSpec, ctx: &TaskContext) -> Result<Done, TaskFailure> {
    let docker = ctx.host.docker()?.clone();
    let http = HttpClient::default();
    let mut done = Vec::new();
    // A service placed on other hosts has no container here to restart.
    for svc in spec
        .services
        .iter()
        .filter(|s| s.hosts.is_empty() || s.hosts.contains(&ctx.host.name))
    {
        if ctx.cancel.is_cancelled() {
            return Err(TaskFailure::Cancelled);
        }
        done.extend(restart_service(&docker, &http, spec, svc, ctx).await?);
    }
    let message = format!(
        "restarted {} of {} {} release {}",
        done.iter()
            .map(|r| r.container.as_str())
            .collect::<Vec<_>>()
            .join(", "),
        spec.app,
        spec.env,
        spec.release
    );
    let result_json = serde_json::json!({ "release": spec.release, "services": done }).to_string();
    Ok(Done {
        message,
        result_json,
    })
}

/// Restarts the service's running containers of the release (every
/// replica, one at a time, each gated on health); a blue-green service's
/// upstream file is pointed at their new ports after each.
async fn restart_service(
    docker: &Docker,
    http: &HttpClient,
    spec: &RestartSpec,
    svc: &RestartService,
    ctx: &TaskContext,
) -> Result<Vec<Restarted>, TaskFailure> {
    let containers = running_containers(docker, spec, svc, ctx).await?;
    let many = containers.len() > 1;
    let mut done = Vec::new();
    for (i, (id, name)) in containers.iter().enumerate() {
        if ctx.cancel.is_cancelled() {
            return Err(TaskFailure::Cancelled);
        }
        let step = if many {
            format!("restart {} r{}", svc.name, i + 1)
        } else {
            format!("restart {}", svc.name)
        };
        let started = Instant::now();
        ctx.step_started(&step, name);
        if let Err(e) = docker
            .restart_container(
                id,
                Some(RestartContainerOptions {
                    t: Some(STOP_TIMEOUT_SECS),
                    ..Default::default()
                }),
            )
            .await
        {
            let why = format!("restart container {name}: {e}");
            ctx.step_finished(&step, false, &why, started);
            return Err(TaskFailure::Failed(format!("service {}: {why}", svc.name)));
        }
        ctx.step_finished(&step, true, "restarted", started);
        let gate = Gate { docker, ctx, http };
        if let Err(why) = gate.wait(&svc.name, &svc.health, id).await {
            if ctx.cancel.is_cancelled() {
                return Err(TaskFailure::Cancelled);
            }
            return Err(TaskFailure::Failed(format!(
                "service {}: container {name} not healthy after its restart: {why}",
                svc.name
            )));
        }
        if svc.upstream {
            let mut ports = Vec::new();
            for (id, _) in &containers {
                ports.extend(health_gate::host_port(docker, id).await);
            }
            repoint_upstream(spec, svc, &ports, ctx).await?;
        }
        let started_at = docker
            .inspect_container(id, None::<InspectContainerOptions>)
            .await
            .ok()
            .and_then(|c| c.state?.started_at)
            .unwrap_or_default();
        done.push(Restarted {
            service: svc.name.clone(),
            container: name.clone(),
            id: id.clone(),
            started_at,
            host_port: health_gate::host_port(docker, id).await,
        });
    }
    Ok(done)
}

/// The ids and names of the service's running containers of the release
/// on this host, replica 1 first (found by their labels, as the deploy
/// wrote them), or a failure naming the service, the release and what runs
/// instead.
async fn running_containers(
    docker: &Docker,
    spec: &RestartSpec,
    svc: &RestartService,
    ctx: &TaskContext,
) -> Result<Vec<(String, String)>, TaskFailure> {
    let by = if svc.accessory {
        naming::LABEL_ACCESSORY
    } else {
        LABEL_SERVICE
    };
    let filters = HashMap::from([(
        "label".to_string(),
        vec![
            format!("{LABEL_APP}={}", spec.app),
            format!("{LABEL_ENV}={}", spec.env),
            format!("{by}={}", svc.name),
        ],
    )]);
    let list = docker
        .list_containers(Some(ListContainersOptions {
            all: true,
            filters: Some(filters),
            ..Default::default()
        }))
        .await
        .map_err(|e| TaskFailure::Failed(format!("list containers: {e}")))?;
    let mut others = Vec::new();
    let mut found: Vec<(u32, String, String)> = Vec::new();
    for c in list
        .into_iter()
        .filter(|c| ctx.host.owns(c.labels.as_ref()))
    {
        let running = c.state == Some(ContainerSummaryStateEnum::RUNNING);
        let release = c
            .labels
            .as_ref()
            .and_then(|l| l.get(LABEL_RELEASE).cloned())
            .unwrap_or_default();
        let accessory = c
            .labels
            .as_ref()
            .is_some_and(|l| l.contains_key(naming::LABEL_ACCESSORY));
        // A service's containers of the release; an accessory's whatever
        // the release (it has none).
        let wanted = if svc.accessory {
            accessory
        } else {
            !accessory && release == spec.release
        };
        if running && wanted {
            let name = c
                .names
                .iter()
                .flatten()
                .next()
                .map(|n| n.trim_start_matches('/').to_string())
                .unwrap_or_default();
            let replica = c
                .labels
                .as_ref()
                .and_then(|l| l.get(naming::LABEL_REPLICA))
                .and_then(|r| r.parse().ok())
                .unwrap_or(1);
            found.push((replica, c.id.clone().unwrap_or_default(), name));
            continue;
        }
        let state = c.state.map(|s| s.to_string()).unwrap_or_default();
        others.push(format!("release {release} {state}"));
    }
    if !found.is_empty() {
        found.sort();
        return Ok(found.into_iter().map(|(_, id, name)| (id, name)).collect());
    }
    let found = if others.is_empty() {
        "no container of the service at all".to_string()
    } else {
        format!("found: {}", others.join(", "))
    };
    Err(TaskFailure::Failed(format!(
        "service {} of {} {}: no running container of release {} on this host ({found}); \
         deploy it (`ferry redeploy --app {} --env {} {}`) instead of restarting",
        svc.name, spec.app, spec.env, spec.release, spec.app, spec.env, svc.name
    )))
}

/// Points the service's nginx upstream file at the restarted container's
/// loopback port and reloads nginx.
async fn repoint_upstream(
    spec: &RestartSpec,
    svc: &RestartService,
    ports: &[u16],
    ctx: &TaskContext,
) -> Result<(), TaskFailure> {
    let step = format!("switch {}", svc.name);
    let started = Instant::now();
    if ports.is_empty() {
        let why = "the restarted container has no published HTTP port".to_string();
        return Err(TaskFailure::Failed(format!("service {}: {why}", svc.name)));
    }
    let targets: Vec<String> = ports.iter().map(|p| format!("127.0.0.1:{p}")).collect();
    ctx.step_started(&step, &format!("nginx upstream to {}", targets.join(", ")));
    let nginx = &ctx.host.nginx;
    let path = nginx
        .upstream_dir
        .join(naming::upstream_file(&spec.app, &spec.env, &svc.name));
    let body = super::deploy::upstream_body(
        &format!(
            "{} {} {} release {} (restarted)",
            spec.app, spec.env, svc.name, spec.release
        ),
        ports,
    );
    let result = match fsutil::write_atomic(&path, body.as_bytes(), Mode::Public, true) {
        Ok(()) => super::deploy::reload_nginx(&nginx.reload_command).await,
        Err(e) => Err(format!("write {}: {e}", path.display())),
    };
    match result {
        Ok(()) => {
            ctx.step_finished(&step, true, "nginx reloaded", started);
            Ok(())
        }
        Err(why) => {
            ctx.step_finished(&step, false, &why, started);
            Err(TaskFailure::Failed(format!("service {}: {why}", svc.name)))
        }
    }
}
