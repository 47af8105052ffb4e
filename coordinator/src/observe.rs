//! What operators see of an app: its status (`GetAppStatus`: the current
//! release per environment and, per host, the containers an `inspect` job
//! finds), its logs (`StreamLogs`: a `logs` job whose events stream back,
//! cancelled when the caller goes away) and the audit log (`ListAudit`).
//!
//! An environment's hosts are those of its newest rollout's plan: the app
//! file that selects them lives with the operator, and the store knows
//! only what the rollouts recorded.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use ferry_common::identity::Identity;
use ferry_common::job::{InspectSpec, Inspected, JobKind, LogsSpec, Selector};
use ferry_common::time::{ago, now_ms};
use ferry_proto::v1 as pb;
use tokio::sync::mpsc;
use tokio_stream::StreamExt;
use tokio_stream::wrappers::ReceiverStream;
use tonic::Status;
use uuid::Uuid;

use crate::core::Core;
use crate::error::CoordinatorError;
use crate::job::TaskState;
use crate::scheduler::Submission;
use crate::store::{
    AgentRecord, AuditFilter, JobRecord, Notification, RolloutRecord, RolloutStatus, StoreError,
};

/// How long `GetAppStatus` waits for the hosts' answers; a host that has
/// not answered by then is shown with an error.
const INSPECT_WAIT: Duration = Duration::from_secs(15);
/// The deadline of a status or logs job: it is for now or never.
const OPERATOR_JOB_DEADLINE: Duration = Duration::from_secs(60);
/// Rollouts read to find an app's environments.
const HISTORY: u32 = 1000;
/// Audit entries listed when no limit is given.
const AUDIT_DEFAULT_LIMIT: u32 = 50;

/// An app's rollouts, by environment, newest first.
type ByEnv = BTreeMap<String, Vec<RolloutRecord>>;

impl Core {
    /// The app's rollouts by environment (of `env` only, if given). An app
    /// never deployed, or never to `env`, is refused naming what exists.
    pub async fn environments(
        &self,
        app: &str,
        env: Option<&str>,
    ) -> Result<ByEnv, CoordinatorError> {
        let mut by_env = ByEnv::new();
        for r in self.store.list_rollouts(app, None, HISTORY).await? {
            by_env.entry(r.env.clone()).or_default().push(r);
        }
        if by_env.is_empty() {
            return Err(CoordinatorError::invalid(
                "--app",
                format!("app {app:?} has no releases: it was never deployed (`ferry deploy`)"),
            ));
        }
        match env {
            None => Ok(by_env),
            Some(env) => match by_env.remove(env) {
                Some(rollouts) => Ok(ByEnv::from([(env.to_string(), rollouts)])),
                None => Err(CoordinatorError::invalid(
                    "--env",
                    format!(
                        "app {app} has no environment {env:?}; its environments are: {}",
                        by_env.keys().cloned().collect::<Vec<_>>().join(", ")
                    ),
                )),
            },
        }
    }

    /// `ListAudit`.
    pub async fn list_audit(
        &self,
        req: pb::ListAuditRequest,
    ) -> Result<Vec<pb::AuditEntry>, CoordinatorError> {
        let actor = req.actor.trim();
        let actors = if actor.is_empty() {
            Vec::new()
        } else if actor.starts_with("spiffe://") {
            vec![actor.to_string()]
        } else {
            vec![
                actor.to_string(),
                Identity::Operator(actor.into()).uri(&self.config.trust_domain),
            ]
        };
        let filter = AuditFilter {
            app: Some(req.app.trim().to_string()).filter(|a| !a.is_empty()),
            env: Some(req.env.trim().to_string()).filter(|e| !e.is_empty()),
            actors,
            since_ms: (req.since_ms > 0).then_some(req.since_ms),
            limit: if req.limit == 0 {
                AUDIT_DEFAULT_LIMIT
            } else {
                req.limit
            },
        };
        Ok(self
            .store
            .list_audit(&filter)
            .await?
            .into_iter()
            .map(|e| pb::AuditEntry {
                at_ms: e.at_ms,
                actor: e.actor,
                action: e.action,
                target: e.target,
                detail: e.detail,
                app: e.app.unwrap_or_default(),
                env: e.env.unwrap_or_default(),
            })
            .collect())
    }

    /// `GetAppStatus`: every environment's current release and, per host,
    /// what runs there, asked of the online hosts with one `inspect` job.
    pub async fn app_status(
        self: &Arc<Self>,
        actor: &str,
        app: &str,
        env: Option<&str>,
    ) -> Result<pb::GetAppStatusResponse, CoordinatorError> {
        let by_env = self.environments(app, env).await?;
        let agents = self.agents_by_name().await?;
        let now = now_ms();
        let mut hosts_of: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for (env, rollouts) in &by_env {
            hosts_of.insert(env.clone(), plan_hosts(&rollouts[0])?);
        }
        let mut online: Vec<String> = hosts_of
            .values()
            .flatten()
            .filter(|h| {
                agents
                    .get(*h)
                    .is_some_and(|a| self.agent_online(a, now) && runs(a, JobKind::Inspect))
            })
            .cloned()
            .collect();
        online.sort();
        online.dedup();
        let (job_id, answers) = if online.is_empty() {
            (None, HashMap::new())
        } else {
            let spec = InspectSpec {
                app: app.to_string(),
                env: env.map(str::to_string),
            };
            let (job, answers) = self
                .ask_hosts(
                    actor,
                    JobKind::Inspect,
                    &serde_json::to_string(&spec).unwrap_or_default(),
                    &online,
                )
                .await?;
            (Some(job), answers)
        };
        let mut environments = Vec::new();
        for (env, rollouts) in by_env {
            let current = rollouts
                .iter()
                .find(|r| r.status == RolloutStatus::Succeeded)
                .map(crate::rollout::to_wire)
                .transpose()?;
            let latest = Some(crate::rollout::to_wire(&rollouts[0])?);
            let hosts = hosts_of
                .remove(&env)
                .unwrap_or_default()
                .into_iter()
                .map(|name| host_status(&name, &env, agents.get(&name), &answers, self, now))
                .collect();
            environments.push(pb::AppEnvironment {
                env,
                current,
                latest,
                hosts,
            });
        }
        Ok(pb::GetAppStatusResponse {
            app: app.to_string(),
            environments,
            inspect_job_id: job_id.map(|j| j.to_string()).unwrap_or_default(),
            server_time_ms: now_ms(),
        })
    }

    async fn agents_by_name(&self) -> Result<HashMap<String, AgentRecord>, StoreError> {
        Ok(self
            .store
            .list_agents()
            .await?
            .into_iter()
            .filter(|a| a.revoked_at_ms.is_none())
            .map(|a| (a.name.clone(), a))
            .collect())
    }

    /// Runs a job of `kind` on `hosts` and waits (at most [`INSPECT_WAIT`])
    /// for their answers: per agent name, its result or why there is none.
    async fn ask_hosts(
        self: &Arc<Self>,
        actor: &str,
        kind: JobKind,
        spec_json: &str,
        hosts: &[String],
    ) -> Result<(Uuid, HashMap<String, Result<String, String>>), CoordinatorError> {
        let (job, _) = self
            .submit_job(
                actor,
                Submission {
                    kind: kind.as_str().into(),
                    spec_json: spec_json.into(),
                    target: Selector {
                        agents: hosts.to_vec(),
                        labels: Default::default(),
                    },
                    idempotency_key: None,
                    deadline: Some(OPERATOR_JOB_DEADLINE),
                    parent: None,
                },
            )
            .await?;
        let ended = self.wait_for_job(job.id, INSPECT_WAIT).await?;
        if ended.is_none() {
            // Whoever did not answer in time will not be waited for.
            let _ = self.cancel_job(actor, job.id).await;
        }
        let answers = self
            .store
            .list_tasks(job.id)
            .await?
            .into_iter()
            .map(|t| {
                let answer = match (&t.result_json, t.state) {
                    (Some(json), TaskState::Succeeded) => Ok(json.clone()),
                    _ if ended.is_none() && !t.state.is_final() => {
                        Err(format!("no answer within {}s", INSPECT_WAIT.as_secs()))
                    }
                    _ => Err(format!("{}: {}", t.state, t.message)),
                };
                (t.agent_name, answer)
            })
            .collect();
        Ok((job.id, answers))
    }

    /// The job once it has ended, or `None` if it has not within `within`.
    async fn wait_for_job(
        &self,
        job_id: Uuid,
        within: Duration,
    ) -> Result<Option<JobRecord>, CoordinatorError> {
        let mut events = self.store.subscribe();
        let give_up = tokio::time::Instant::now() + within;
        loop {
            let job = self
                .store
                .get_job(job_id)
                .await?
                .ok_or(StoreError::JobNotFound(job_id))?;
            if job.status.is_final() {
                return Ok(Some(job));
            }
            loop {
                tokio::select! {
                    _ = tokio::time::sleep_until(give_up) => return Ok(None),
                    // Re-read now and then, in case a notification was missed.
                    _ = tokio::time::sleep(Duration::from_millis(500)) => break,
                    n = events.recv() => match n {
                        Ok(Notification::JobEvents(j)) if j == job_id => break,
                        Ok(Notification::Missed) => break,
                        Ok(_) => {}
                        Err(_) => break,
                    },
                }
            }
        }
    }

    /// `StreamLogs`: a `logs` job on the environment's online hosts (or
    /// the one named), its events streamed to the caller. When the caller
    /// goes away before the job ends, the job is cancelled.
    pub async fn stream_logs(
        self: &Arc<Self>,
        actor: &str,
        operator: &str,
        req: pb::StreamLogsRequest,
    ) -> Result<ReceiverStream<Result<pb::StreamLogsResponse, Status>>, CoordinatorError> {
        let app = req.app.trim();
        let env = req.env.trim();
        if env.is_empty() {
            return Err(CoordinatorError::invalid(
                "--env",
                "an environment is required",
            ));
        }
        let by_env = self.environments(app, Some(env)).await?;
        let latest = &by_env[env][0];
        let mut hosts = plan_hosts(latest)?;
        let host = req.host.trim();
        if !host.is_empty() {
            if !hosts.iter().any(|h| h == host) {
                return Err(CoordinatorError::invalid(
                    "--host",
                    format!(
                        "{host:?} is not a host of {app} {env}; its hosts are: {}",
                        hosts.join(", ")
                    ),
                ));
            }
            hosts = vec![host.to_string()];
        }
        let agents = self.agents_by_name().await?;
        let now = now_ms();
        let (online, offline): (Vec<String>, Vec<String>) = hosts
            .into_iter()
            .partition(|h| agents.get(h).is_some_and(|a| self.agent_online(a, now)));
        // An agent older than the `logs` kind is named, not silently skipped.
        let unable: Vec<String> = online
            .iter()
            .filter_map(|h| agents.get(h))
            .filter(|a| !runs(a, JobKind::Logs))
            .map(|a| format!("{} (version {})", a.name, a.version))
            .collect();
        if !unable.is_empty() {
            return Err(CoordinatorError::invalid(
                "hosts",
                format!(
                    "these agents do not run the `logs` job kind; upgrade them or pass --host for another: {}",
                    unable.join(", ")
                ),
            ));
        }
        let offline: Vec<pb::RolloutHost> = offline
            .into_iter()
            .map(|h| pb::RolloutHost {
                last_seen_ms: agents.get(&h).map_or(0, |a| a.last_seen_ms),
                agent: h,
                online: false,
            })
            .collect();
        if online.is_empty() {
            return Err(CoordinatorError::invalid(
                "hosts",
                format!(
                    "no host of {app} {env} is online to read logs from: {}",
                    offline
                        .iter()
                        .map(|h| format!("{} (last seen {})", h.agent, ago(h.last_seen_ms, now)))
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            ));
        }
        let redact = self
            .store
            .list_secrets(app, Some(env))
            .await?
            .into_iter()
            .map(|s| s.name)
            .collect();
        let spec = LogsSpec {
            app: app.into(),
            env: env.into(),
            service: req.service.trim().into(),
            follow: req.follow,
            tail: if req.tail == 0 {
                ferry_common::job::logs::DEFAULT_TAIL
            } else {
                req.tail
            },
            since_ms: (req.since_ms > 0).then_some(req.since_ms),
            redact,
        };
        let (job, _) = self
            .submit_job(
                actor,
                Submission {
                    kind: JobKind::Logs.as_str().into(),
                    spec_json: serde_json::to_string(&spec)
                        .map_err(|e| CoordinatorError::Internal(e.to_string()))?,
                    target: Selector {
                        agents: online,
                        labels: Default::default(),
                    },
                    idempotency_key: None,
                    deadline: Some(OPERATOR_JOB_DEADLINE),
                    parent: None,
                },
            )
            .await?;
        let mut events = self.watch_job(job.id, 0, operator).await?;
        let (tx, rx) = mpsc::channel(256);
        let core = Arc::clone(self);
        let actor = actor.to_string();
        tokio::spawn(async move {
            let first = pb::StreamLogsResponse {
                job_id: job.id.to_string(),
                offline,
                event: None,
            };
            let mut gone = tx.send(Ok(first)).await.is_err();
            while !gone {
                tokio::select! {
                    _ = tx.closed() => gone = true,
                    e = events.next() => match e {
                        None => return,
                        Some(Ok(event)) => {
                            let item = pb::StreamLogsResponse {
                                job_id: String::new(),
                                offline: Vec::new(),
                                event: Some(event),
                            };
                            gone = tx.send(Ok(item)).await.is_err();
                        }
                        Some(Err(status)) => {
                            let _ = tx.send(Err(status)).await;
                            gone = true;
                        }
                    },
                }
            }
            // The caller went away (Ctrl-C, a closed pipe, `-f` ended):
            // nobody reads these logs any more.
            let unfinished = core
                .store
                .get_job(job.id)
                .await
                .ok()
                .flatten()
                .is_some_and(|j| !j.status.is_final());
            if unfinished && let Err(e) = core.cancel_job(&actor, job.id).await {
                tracing::warn!(job = %job.id, error = %e, "could not cancel a logs job nobody reads");
            }
        });
        Ok(ReceiverStream::new(rx))
    }
}

/// Whether the agent runs `kind` (an agent that never said which kinds it
/// runs is given the task, as the scheduler does).
fn runs(agent: &AgentRecord, kind: JobKind) -> bool {
    agent.capabilities.is_empty() || agent.capabilities.iter().any(|k| k == kind.as_str())
}

/// The hosts of a rollout's plan, by name.
fn plan_hosts(r: &RolloutRecord) -> Result<Vec<String>, CoordinatorError> {
    let wire = crate::rollout::to_wire(r)?;
    let mut hosts: Vec<String> = wire
        .batches
        .into_iter()
        .flat_map(|b| b.hosts.into_iter().map(|h| h.agent))
        .collect();
    hosts.sort();
    hosts.dedup();
    Ok(hosts)
}

/// One host of an environment: online or not, and the containers of that
/// environment its agent reported.
fn host_status(
    name: &str,
    env: &str,
    agent: Option<&AgentRecord>,
    answers: &HashMap<String, Result<String, String>>,
    core: &Core,
    now: i64,
) -> pb::AppHost {
    let Some(agent) = agent else {
        return pb::AppHost {
            agent: name.into(),
            error: "no longer enrolled (revoked since the last rollout)".into(),
            ..Default::default()
        };
    };
    let online = core.agent_online(agent, now);
    let mut host = pb::AppHost {
        agent: name.into(),
        online,
        last_seen_ms: agent.last_seen_ms,
        ..Default::default()
    };
    if !online {
        host.error = format!("offline, last seen {}", ago(agent.last_seen_ms, now));
        return host;
    }
    if !runs(agent, JobKind::Inspect) {
        host.error = format!(
            "its agent (version {}) does not run the `inspect` job kind; upgrade it",
            agent.version
        );
        return host;
    }
    match answers.get(name) {
        None => host.error = "not asked".into(),
        Some(Err(why)) => host.error = why.clone(),
        Some(Ok(json)) => match serde_json::from_str::<Inspected>(json) {
            Err(e) => host.error = format!("unreadable answer: {e}"),
            Ok(found) => {
                host.containers = found
                    .containers
                    .into_iter()
                    .filter(|c| c.env == env)
                    .map(|c| pb::AppContainer {
                        name: c.name,
                        service: c.service,
                        release: c.release,
                        image: c.image,
                        state: c.state,
                        health: c.health,
                        started_at_ms: c.started_at_ms,
                        hash: c.hash.unwrap_or_default(),
                        accessory: c.accessory.unwrap_or_default(),
                        replica: c.replica.unwrap_or_default(),
                    })
                    .collect();
            }
        },
    }
    host
}
