//! A service's health gate on one container: what `deploy` waits for
//! before it switches to a new container, and what `restart` waits for
//! before it restarts the next host's. One place, so both gate the same way.

use std::time::Instant;

use bollard::Docker;
use bollard::models::HealthStatusEnum;
use bollard::query_parameters::InspectContainerOptions;
use ferry_common::job::{HealthCheck, HealthGate};
use ferry_common::status::Outcome;

use super::TaskContext;
use super::http::HttpClient;

/// What a gate needs: the engine, the task (its events and cancellation),
/// an HTTP client.
pub struct Gate<'a> {
    pub docker: &'a Docker,
    pub ctx: &'a TaskContext,
    pub http: &'a HttpClient,
}

/// The loopback port the container's first port is published on (health
/// checks and nginx reach it there). Docker may give another one each time
/// the container starts.
pub async fn host_port(docker: &Docker, id: &str) -> Option<u16> {
    let c = docker
        .inspect_container(id, None::<InspectContainerOptions>)
        .await
        .ok()?;
    c.network_settings?
        .ports?
        .values()
        .flatten()
        .flatten()
        .find(|b| b.host_ip.as_deref() == Some("127.0.0.1"))
        .and_then(|b| b.host_port.as_deref()?.parse().ok())
}

impl Gate<'_> {
    /// Waits until container `id` of `service` is healthy by `gate`, or
    /// says why it is not; reported as the step `health <service>`.
    pub async fn wait(&self, service: &str, gate: &HealthGate, id: &str) -> Result<(), String> {
        let step = format!("health {service}");
        let started = Instant::now();
        let what = match &gate.check {
            HealthCheck::Http { path } => format!("GET {path}"),
            HealthCheck::Docker => "the image's HEALTHCHECK".into(),
            HealthCheck::RunningFor(d) => {
                format!("running for {}", ferry_common::time::format_duration(*d))
            }
        };
        self.ctx.step_started(&step, &what);
        let result = self.check(gate, id, &step).await;
        match &result {
            Ok(()) => self.ctx.step_finished(&step, true, "healthy", started),
            Err(why) => self.ctx.step_finished(&step, false, why, started),
        }
        result
    }

    async fn check(&self, gate: &HealthGate, id: &str, step: &str) -> Result<(), String> {
        if let HealthCheck::RunningFor(d) = &gate.check {
            tokio::select! {
                _ = self.ctx.cancel.cancelled() => return Err(Outcome::Cancelled.as_str().into()),
                _ = tokio::time::sleep(*d) => {}
            }
            let state = self.container_state(id).await?;
            return match state {
                (true, 0, _) => Ok(()),
                (true, restarts, _) => Err(format!(
                    "restarted {restarts} time(s) within {}",
                    ferry_common::time::format_duration(*d)
                )),
                (false, _, exit) => Err(format!("exited with code {exit}")),
            };
        }
        let port = host_port(self.docker, id).await;
        let mut last = String::from("not checked yet");
        for attempt in 1..=gate.retries.max(1) {
            let (running, _, exit) = self.container_state(id).await?;
            if !running {
                return Err(format!("the container exited with code {exit}"));
            }
            let outcome =
                match &gate.check {
                    HealthCheck::Http { path } => match port {
                        None => Err("the container has no published HTTP port".to_string()),
                        Some(port) => {
                            let url = format!("http://127.0.0.1:{port}{path}");
                            match self.http.get(&url, gate.timeout).await {
                                Ok(a) if (200..300).contains(&a.status) => Ok(()),
                                Ok(a) => Err(format!("GET {path} answered {}", a.status)),
                                Err(e) => Err(format!("GET {path}: {e}")),
                            }
                        }
                    },
                    HealthCheck::Docker => match self.docker_health(id).await? {
                        Some(HealthStatusEnum::HEALTHY) => Ok(()),
                        Some(HealthStatusEnum::UNHEALTHY) => {
                            return Err("Docker reports the container unhealthy".into());
                        }
                        Some(_) => Err("Docker health check still starting".to_string()),
                        None => return Err(
                            "the image has no HEALTHCHECK; use an http or running_for health check"
                                .into(),
                        ),
                    },
                    HealthCheck::RunningFor(_) => Ok(()),
                };
            match outcome {
                Ok(()) => return Ok(()),
                Err(why) => {
                    self.ctx.log(
                        step,
                        "info",
                        &format!("attempt {attempt}/{}: {why}", gate.retries),
                    );
                    last = why;
                }
            }
            tokio::select! {
                _ = self.ctx.cancel.cancelled() => return Err(Outcome::Cancelled.as_str().into()),
                _ = tokio::time::sleep(gate.interval) => {}
            }
        }
        Err(format!(
            "not healthy after {} attempts: {last}",
            gate.retries
        ))
    }

    /// (running, restart count, exit code).
    pub async fn container_state(&self, id: &str) -> Result<(bool, i64, i64), String> {
        let c = self
            .docker
            .inspect_container(id, None::<InspectContainerOptions>)
            .await
            .map_err(|e| format!("inspect container: {e}"))?;
        let state = c.state.unwrap_or_default();
        Ok((
            state.running.unwrap_or(false),
            c.restart_count.unwrap_or(0),
            state.exit_code.unwrap_or(0),
        ))
    }

    async fn docker_health(&self, id: &str) -> Result<Option<HealthStatusEnum>, String> {
        let c = self
            .docker
            .inspect_container(id, None::<InspectContainerOptions>)
            .await
            .map_err(|e| format!("inspect container: {e}"))?;
        Ok(c.state
            .and_then(|s| s.health)
            .and_then(|h| h.status)
            .filter(|s| *s != HealthStatusEnum::NONE && *s != HealthStatusEnum::EMPTY))
    }
}
