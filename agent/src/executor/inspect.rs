//! `inspect`: the app's containers on this host, with their release,
//! state, health, start time and hash, for `ferry status --app`.

use std::collections::HashMap;

use bollard::Docker;
use bollard::models::ContainerStateStatusEnum;
use bollard::query_parameters::{InspectContainerOptions, ListContainersOptions};
use ferry_common::job::naming::{self, LABEL_HASH};
use ferry_common::job::naming::{LABEL_APP, LABEL_ENV, LABEL_RELEASE, LABEL_SERVICE};
use ferry_common::job::{ContainerInfo, InspectSpec, Inspected};

use super::{Done, KindExecutor, TaskContext, TaskFailure};

/// Runs `inspect` tasks.
pub struct Inspect;

#[async_trait::async_trait]
impl KindExecutor for Inspect {
    type Spec = InspectSpec;
    async fn run(&self, spec: InspectSpec, ctx: &TaskContext) -> Result<Done, TaskFailure> {
        let docker = ctx.host.docker()?.clone();
        let found = containers(&docker, &spec, &ctx.host.name).await?;
        if ctx.cancel.is_cancelled() {
            return Err(TaskFailure::Cancelled);
        }
        let running = found
            .containers
            .iter()
            .filter(|c| c.state == ContainerStateStatusEnum::RUNNING.to_string())
            .count();
        Ok(Done {
            message: format!(
                "{} container(s) of {}, {running} running",
                found.containers.len(),
                spec.app
            ),
            result_json: serde_json::to_string(&found)
                .map_err(|e| TaskFailure::Failed(e.to_string()))?,
        })
    }
}

async fn containers(
    docker: &Docker,
    spec: &InspectSpec,
    host: &str,
) -> Result<Inspected, TaskFailure> {
    let mut labels = vec![format!("{LABEL_APP}={}", spec.app)];
    if let Some(env) = &spec.env {
        labels.push(format!("{LABEL_ENV}={env}"));
    }
    let list = docker
        .list_containers(Some(ListContainersOptions {
            all: true,
            filters: Some(HashMap::from([("label".to_string(), labels)])),
            ..Default::default()
        }))
        .await
        .map_err(|e| TaskFailure::Failed(format!("list containers: {e}")))?;
    let mut out = Vec::with_capacity(list.len());
    for c in list
        .into_iter()
        .filter(|c| naming::is_mine(c.labels.as_ref(), host))
    {
        let id = c.id.unwrap_or_default();
        let labels = c.labels.unwrap_or_default();
        let label = |k: &str| labels.get(k).cloned().unwrap_or_default();
        // Start time and health are only in the full inspection; a
        // container removed meanwhile is left out.
        let Ok(full) = docker
            .inspect_container(&id, None::<InspectContainerOptions>)
            .await
        else {
            continue;
        };
        let state = full.state.unwrap_or_default();
        out.push(ContainerInfo {
            name: full
                .name
                .unwrap_or_default()
                .trim_start_matches('/')
                .to_string(),
            env: label(LABEL_ENV),
            service: label(LABEL_SERVICE),
            release: label(LABEL_RELEASE),
            image: c.image.unwrap_or_default(),
            state: state.status.map(|s| s.to_string()).unwrap_or_default(),
            health: state
                .health
                .and_then(|h| h.status)
                .map(|s| s.to_string())
                .filter(|s| !s.is_empty() && s != "none")
                .unwrap_or_default(),
            started_at_ms: state
                .started_at
                .as_deref()
                .and_then(ferry_common::time::parse_rfc3339_ms)
                .unwrap_or(0),
            hash: labels.get(LABEL_HASH).cloned(),
            replica: labels
                .get(naming::LABEL_REPLICA)
                .and_then(|r| r.parse().ok()),
            accessory: labels.get(naming::LABEL_ACCESSORY).cloned(),
        });
    }
    out.sort_by(|a, b| (&a.env, &a.service, &a.name).cmp(&(&b.env, &b.service, &b.name)));
    Ok(Inspected { containers: out })
}
