//! Rollouts: a release of an app to every host of an environment.
//!
//! `ferry deploy` sends the app file; the coordinator resolves it into one
//! [`DeploySpec`] (the same on every host), picks the environment's hosts,
//! splits them into batches of `max_parallel`, and stores a running
//! rollout, which is also the (app, env) deploy lock. A driver task then
//! runs one job per step: deploy a batch, smoke-test it, next batch. On the
//! first failure it stops and deploys the previous release to every host
//! already updated (auto-revert), through the same health-gated executor.
//!
//! The driver is restartable: each step's job has an idempotency key made
//! of the rollout id and the step, so a driver that starts over (this
//! coordinator restarted, or another one took over an abandoned rollout
//! after its lease ran out) finds the jobs already run instead of running
//! them again, and carries on from the first unfinished one.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use ferry_common::appfile::{self, SecretRule};
use ferry_common::job::{DeploySpec, HttpCheck, JobSpec, Selector, SmokeSpec};
use ferry_common::time::now_ms;
use ferry_proto::v1 as pb;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::core::Core;
use crate::error::CoordinatorError;
use crate::job::{JobStatus, TaskState};
use crate::scheduler::Submission;
use crate::store::{
    AgentRecord, Notification, RolloutKind, RolloutRecord, RolloutStatus, RolloutUpdate, StoreError,
};

/// How long a driver's claim on a rollout holds without renewal; another
/// coordinator takes an abandoned rollout over after this.
pub const LEASE: Duration = Duration::from_secs(15);
/// How often the driver renews its lease (and looks at its job, in case a
/// notification was missed).
const RENEW_EVERY: Duration = Duration::from_secs(5);
/// How often coordinators look for abandoned rollouts.
const ADOPT_EVERY: Duration = Duration::from_secs(5);
/// How long a step's tasks wait for a host that went offline mid-rollout
/// before the step fails (and the rollout reverts).
const STEP_DEADLINE: Duration = Duration::from_secs(15 * 60);
/// Releases looked at to find the previous one.
const HISTORY: u32 = 200;

/// The hosts of a rollout and how it proceeds, as stored in `plan_json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Plan {
    pub selector: Selector,
    pub max_parallel: u32,
    pub batches: Vec<Vec<Host>>,
    #[serde(default)]
    pub smoke: Vec<HttpCheck>,
    /// `[secrets.NAME]` of the app file: checked before every rollout of
    /// this plan, a rollback's included.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub secret_rules: BTreeMap<String, SecretRule>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Host {
    pub agent: String,
    pub online: bool,
    pub last_seen_ms: i64,
}

/// One job a rollout ran, as stored in `steps_json`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Step {
    pub name: String,
    /// "deploy", "smoke" or "revert".
    pub kind: String,
    pub job_id: Uuid,
    pub agents: Vec<String>,
    pub status: String,
}

/// What starting a rollout needs once the request is resolved.
struct Resolved {
    spec: DeploySpec,
    plan: Plan,
    protected: bool,
    kind: RolloutKind,
    previous: Option<RolloutRecord>,
    rollback_of: Option<Uuid>,
}

impl Core {
    /// `StartRollout`: plans a deploy of `version` from the app file and,
    /// unless `dry_run`, starts it.
    pub async fn start_rollout(
        self: &Arc<Self>,
        actor: &str,
        req: pb::StartRolloutRequest,
    ) -> Result<pb::Rollout, CoordinatorError> {
        let file_name = if req.file_name.is_empty() {
            "ferry.toml"
        } else {
            req.file_name.as_str()
        };
        let app = appfile::parse(file_name, &req.app_file)
            .map_err(|e| CoordinatorError::invalid("app file", e.to_string()))?;
        let env = req.env.trim();
        let version = req.version.trim();
        let spec = app
            .deploy_spec(env, version)
            .map_err(|e| CoordinatorError::invalid("deploy", e.to_string()))?;
        let environment = app
            .environment(env)
            .map_err(|e| CoordinatorError::invalid(file_name, e.to_string()))?;
        let mut plan = self
            .plan_hosts(
                &app.app,
                env,
                environment.selector(),
                environment.max_parallel(&app),
                app.smoke_checks(env),
            )
            .await?;
        plan.secret_rules = app.secrets.clone();
        let previous = self.current_release(&spec.app, env).await?;
        let resolved = Resolved {
            spec,
            plan,
            protected: environment.is_protected(env),
            kind: RolloutKind::Deploy,
            previous,
            rollback_of: None,
        };
        self.begin(actor, resolved, req.dry_run).await
    }

    /// `Rollback`: redeploys an earlier release of (app, env).
    pub async fn rollback(
        self: &Arc<Self>,
        actor: &str,
        req: pb::RollbackRequest,
    ) -> Result<pb::Rollout, CoordinatorError> {
        let (app, env) = (req.app.trim(), req.env.trim());
        let history = self.store.list_rollouts(app, Some(env), HISTORY).await?;
        let succeeded: Vec<&RolloutRecord> = history
            .iter()
            .filter(|r| r.status == RolloutStatus::Succeeded)
            .collect();
        let Some(current) = succeeded.first() else {
            return Err(CoordinatorError::invalid(
                "rollback",
                format!(
                    "{app} {env} has no successful release (see `ferry releases --app {app} --env {env}`)"
                ),
            ));
        };
        let target = if req.to_version.trim().is_empty() {
            succeeded
                .iter()
                .find(|r| r.version != current.version)
                .ok_or_else(|| {
                    CoordinatorError::invalid(
                        "rollback",
                        format!(
                            "{app} {env} has no release before {} to go back to",
                            current.version
                        ),
                    )
                })?
        } else {
            let to = req.to_version.trim();
            succeeded.iter().find(|r| r.version == to).ok_or_else(|| {
                let mut known: Vec<&str> = succeeded.iter().map(|r| r.version.as_str()).collect();
                known.dedup();
                CoordinatorError::invalid(
                    "--to",
                    format!(
                        "{app} {env} never deployed version {to:?} successfully; releases that did: {}",
                        known.join(", ")
                    ),
                )
            })?
        };
        let spec = parse_spec(target)?;
        let old = parse_plan(target)?;
        let mut plan = self
            .plan_hosts(app, env, old.selector, old.max_parallel, old.smoke)
            .await?;
        plan.secret_rules = old.secret_rules;
        let resolved = Resolved {
            spec,
            plan,
            protected: target.protected,
            kind: RolloutKind::Rollback,
            previous: Some((*current).clone()),
            rollback_of: Some(target.id),
        };
        self.begin(actor, resolved, req.dry_run).await
    }

    /// The release running now: the newest rollout that succeeded.
    pub async fn current_release(
        &self,
        app: &str,
        env: &str,
    ) -> Result<Option<RolloutRecord>, StoreError> {
        Ok(self
            .store
            .list_rollouts(app, Some(env), HISTORY)
            .await?
            .into_iter()
            .find(|r| r.status == RolloutStatus::Succeeded))
    }

    /// The environment's hosts, by name, in batches.
    async fn plan_hosts(
        &self,
        app: &str,
        env: &str,
        selector: Selector,
        max_parallel: u32,
        smoke: Vec<HttpCheck>,
    ) -> Result<Plan, CoordinatorError> {
        let now = now_ms();
        let mut agents: Vec<AgentRecord> = self
            .store
            .list_agents()
            .await?
            .into_iter()
            .filter(|a| a.revoked_at_ms.is_none() && selector.matches(&a.name, &a.labels))
            .collect();
        if agents.is_empty() {
            return Err(CoordinatorError::invalid(
                "environment",
                format!(
                    "{app} {env} selects no enrolled agent ({}); enroll hosts with `ferry token create --labels ...` or fix environments.{env} in the app file",
                    selector.describe()
                ),
            ));
        }
        agents.sort_by(|a, b| a.name.cmp(&b.name));
        let hosts: Vec<Host> = agents
            .iter()
            .map(|a| Host {
                agent: a.name.clone(),
                online: self.agent_online(a, now),
                last_seen_ms: a.last_seen_ms,
            })
            .collect();
        let max_parallel = max_parallel.max(1);
        Ok(Plan {
            selector,
            max_parallel,
            batches: hosts
                .chunks(max_parallel as usize)
                .map(<[Host]>::to_vec)
                .collect(),
            smoke,
            secret_rules: BTreeMap::new(),
        })
    }

    /// Whether the agent has a live session here or, recently, elsewhere.
    pub fn agent_online(&self, agent: &AgentRecord, now: i64) -> bool {
        self.sessions.is_online(agent.id)
            || (agent.connected_to.is_some()
                && now - agent.last_seen_ms <= self.config.offline_after.as_millis() as i64)
    }

    /// Checks what can be checked before anything runs, then (unless
    /// `dry_run`) stores the rollout, which takes the lock, and starts its
    /// driver.
    async fn begin(
        self: &Arc<Self>,
        actor: &str,
        r: Resolved,
        dry_run: bool,
    ) -> Result<pb::Rollout, CoordinatorError> {
        let now = now_ms();
        // Every secret the services name, or the app file requires, must
        // exist (and open with this coordinator's key) and meet its rules
        // before a host is touched.
        let mut names = r.spec.secret_names();
        names.extend(
            r.plan
                .secret_rules
                .iter()
                .filter(|(_, rule)| rule.required)
                .map(|(n, _)| n.clone()),
        );
        names.sort();
        names.dedup();
        if !names.is_empty() {
            let values = self
                .resolve_secrets(&r.spec.app, &r.spec.env, &names)
                .await?;
            for (name, rule) in &r.plan.secret_rules {
                if let Some(value) = values.get(name) {
                    rule.check(name, value).map_err(|why| {
                        CoordinatorError::invalid(
                            "secrets",
                            format!("{} {}: {why}", r.spec.app, r.spec.env),
                        )
                    })?;
                }
            }
        }
        let id = Uuid::now_v7();
        let span = tracing::info_span!(parent: None, "rollout", rollout.id = %id, app = %r.spec.app, env = %r.spec.env, version = %r.spec.release, kind = r.kind.as_str());
        let traceparent = Some(ferry_common::telemetry::traceparent_of(&span))
            .filter(|t| !t.is_empty())
            .unwrap_or_else(crate::scheduler::new_traceparent);
        let record = RolloutRecord {
            id,
            app: r.spec.app.clone(),
            env: r.spec.env.clone(),
            version: r.spec.release.clone(),
            kind: r.kind,
            status: RolloutStatus::Running,
            protected: r.protected,
            spec_json: serde_json::to_string(&r.spec).map_err(internal)?,
            plan_json: serde_json::to_string(&r.plan).map_err(internal)?,
            previous_id: r.previous.as_ref().map(|p| p.id),
            previous_version: r.previous.as_ref().map(|p| p.version.clone()),
            rollback_of: r.rollback_of,
            steps_json: "[]".into(),
            message: String::new(),
            created_by: actor.into(),
            created_at_ms: now,
            updated_at_ms: now,
            finished_at_ms: None,
            owner: Some(self.coordinator_id.clone()),
            lease_expires_at_ms: now + LEASE.as_millis() as i64,
            traceparent,
        };
        if dry_run {
            let mut wire = to_wire(&record)?;
            wire.id.clear();
            wire.status = RolloutStatus::Planned.as_str().into();
            wire.trace_id.clear();
            return Ok(wire);
        }
        let offline: Vec<String> = r
            .plan
            .batches
            .iter()
            .flatten()
            .filter(|h| !h.online)
            .map(|h| {
                format!(
                    "{} (last seen {})",
                    h.agent,
                    ferry_common::time::ago(h.last_seen_ms, now)
                )
            })
            .collect();
        if !offline.is_empty() {
            return Err(CoordinatorError::invalid(
                "hosts",
                format!(
                    "{} {} cannot be deployed while hosts are offline: {}; bring them back, or revoke them (`ferry agent revoke NAME`) to leave them out",
                    record.app,
                    record.env,
                    offline.join(", ")
                ),
            ));
        }
        self.store.create_rollout(&record).await?;
        self.keep_span(id, span);
        self.audit_app(
            actor,
            &format!("rollout.{}", r.kind),
            &id.to_string(),
            &record.app,
            Some(&record.env),
            format!("version={}", record.version),
        )
        .await;
        let wire = to_wire(&record)?;
        tokio::spawn(drive(Arc::clone(self), record));
        Ok(wire)
    }

    /// `GetRollout`.
    pub async fn get_rollout(&self, id: Uuid) -> Result<pb::Rollout, CoordinatorError> {
        let r = self
            .store
            .get_rollout(id)
            .await?
            .ok_or(StoreError::RolloutNotFound(id))?;
        to_wire(&r)
    }
}

fn internal(e: impl std::fmt::Display) -> CoordinatorError {
    CoordinatorError::Internal(e.to_string())
}

/// A JSON column of a stored rollout, decoded.
fn column<T: serde::de::DeserializeOwned>(
    r: &RolloutRecord,
    name: &str,
    json: &str,
) -> Result<T, CoordinatorError> {
    serde_json::from_str(json).map_err(|e| {
        CoordinatorError::Store(StoreError::Corrupt {
            table: "rollouts",
            reason: format!("{name} of {}: {e}", r.id),
        })
    })
}

fn parse_plan(r: &RolloutRecord) -> Result<Plan, CoordinatorError> {
    column(r, "plan_json", &r.plan_json)
}

fn parse_spec(r: &RolloutRecord) -> Result<DeploySpec, CoordinatorError> {
    column(r, "spec_json", &r.spec_json)
}

fn parse_steps(r: &RolloutRecord) -> Vec<Step> {
    serde_json::from_str(&r.steps_json).unwrap_or_default()
}

/// A stored rollout in the wire form.
pub fn to_wire(r: &RolloutRecord) -> Result<pb::Rollout, CoordinatorError> {
    let plan = parse_plan(r)?;
    let spec = parse_spec(r)?;
    Ok(pb::Rollout {
        id: r.id.to_string(),
        app: r.app.clone(),
        env: r.env.clone(),
        version: r.version.clone(),
        kind: r.kind.as_str().into(),
        status: r.status.as_str().into(),
        protected: r.protected,
        previous_version: r.previous_version.clone().unwrap_or_default(),
        services: spec
            .services
            .iter()
            .map(|s| pb::RolloutService {
                name: s.name.clone(),
                image: s.image.clone(),
                strategy: match s.strategy {
                    ferry_common::job::Strategy::BlueGreen => "blue-green".into(),
                    ferry_common::job::Strategy::Recreate => "recreate".into(),
                },
            })
            .collect(),
        batches: plan
            .batches
            .iter()
            .map(|b| pb::RolloutBatch {
                hosts: b
                    .iter()
                    .map(|h| pb::RolloutHost {
                        agent: h.agent.clone(),
                        online: h.online,
                        last_seen_ms: h.last_seen_ms,
                    })
                    .collect(),
            })
            .collect(),
        max_parallel: plan.max_parallel,
        smoke_checks: plan.smoke.len() as u32,
        steps: parse_steps(r)
            .into_iter()
            .map(|s| pb::RolloutStep {
                name: s.name,
                kind: s.kind,
                job_id: s.job_id.to_string(),
                agents: s.agents,
                status: s.status,
            })
            .collect(),
        message: r.message.clone(),
        created_by: r.created_by.clone(),
        created_at_ms: r.created_at_ms,
        updated_at_ms: r.updated_at_ms,
        finished_at_ms: r.finished_at_ms.unwrap_or(0),
        trace_id: r
            .traceparent
            .split('-')
            .nth(1)
            .unwrap_or_default()
            .to_string(),
        rollback_of: r.rollback_of.map(|id| id.to_string()).unwrap_or_default(),
    })
}

/// Starts the loop that adopts rollouts whose coordinator died (their lease
/// ran out); it stops with `core.shutdown`. Rollouts this process left
/// running when it stopped are adopted the same way once their lease ends.
pub fn start(core: &Arc<Core>) {
    let core = Arc::clone(core);
    tokio::spawn(async move {
        let mut ticker = tokio::time::interval(ADOPT_EVERY);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = core.shutdown.cancelled() => return,
                _ = ticker.tick() => {}
            }
            let now = now_ms();
            match core
                .store
                .claim_abandoned_rollouts(&core.coordinator_id, now, now + LEASE.as_millis() as i64)
                .await
            {
                Ok(taken) => {
                    for r in taken {
                        tracing::warn!(rollout = %r.id, app = %r.app, env = %r.env, "taking over a rollout whose coordinator stopped");
                        tokio::spawn(drive(Arc::clone(&core), r));
                    }
                }
                Err(e) => tracing::warn!(error = %e, "could not look for abandoned rollouts"),
            }
        }
    });
}

/// Why a driver stopped before its rollout ended.
enum Halt {
    /// Another coordinator owns the rollout now (or it already ended).
    LostLease,
    /// This coordinator is shutting down; the lease runs out and another
    /// one (or this one, restarted) carries on.
    Shutdown,
    Store(String),
}

impl From<StoreError> for Halt {
    fn from(e: StoreError) -> Self {
        Halt::Store(e.to_string())
    }
}

impl From<CoordinatorError> for Halt {
    fn from(e: CoordinatorError) -> Self {
        Halt::Store(e.to_string())
    }
}

/// Drives one rollout to its end (see the module docs).
async fn drive(core: Arc<Core>, record: RolloutRecord) {
    let id = record.id;
    let mut driver = Driver {
        core: Arc::clone(&core),
        record,
        steps: Vec::new(),
    };
    // A rollout adopted from another coordinator joins its trace.
    if !core.spans_contains(id) {
        let span = tracing::info_span!(parent: None, "rollout", rollout.id = %id, resumed = true);
        ferry_common::telemetry::set_parent(&span, &driver.record.traceparent);
        core.keep_span(id, span);
    }
    loop {
        match driver.run().await {
            Ok(()) => break,
            Err(Halt::LostLease) => {
                tracing::info!(rollout = %id, "rollout driven elsewhere now; stopping here");
                break;
            }
            Err(Halt::Shutdown) => break,
            Err(Halt::Store(e)) => {
                // The store is away: keep trying while the lease may still
                // be renewed; the steps already run are found again.
                tracing::warn!(rollout = %id, error = %e, "rollout driver failed; retrying");
                tokio::select! {
                    _ = core.shutdown.cancelled() => break,
                    _ = tokio::time::sleep(Duration::from_secs(2)) => {}
                }
                driver.steps.clear();
            }
        }
    }
    core.end_span(id);
}

struct Driver {
    core: Arc<Core>,
    record: RolloutRecord,
    steps: Vec<Step>,
}

impl Driver {
    async fn run(&mut self) -> Result<(), Halt> {
        let spec = parse_spec(&self.record)?;
        let plan = parse_plan(&self.record)?;
        let total = plan.batches.len();
        let mut updated: Vec<String> = Vec::new();
        let mut failure: Option<String> = None;
        for (i, batch) in plan.batches.iter().enumerate() {
            let agents: Vec<String> = batch.iter().map(|h| h.agent.clone()).collect();
            let name = format!("deploy batch {}/{total}: {}", i + 1, agents.join(", "));
            self.record.message = format!("{name}: deploying {}", spec.release);
            let ran = self
                .step(
                    "deploy",
                    &format!("deploy-{i}"),
                    name,
                    &agents,
                    JobSpec::Deploy(spec.clone()),
                )
                .await?;
            updated.extend(
                ran.tasks
                    .iter()
                    .filter(|t| t.state == TaskState::Succeeded)
                    .map(|t| t.agent_name.clone()),
            );
            if ran.status != JobStatus::Succeeded {
                failure = Some(ran.failure("deploy"));
                break;
            }
            if !plan.smoke.is_empty() {
                let name = format!("smoke batch {}/{total}: {}", i + 1, agents.join(", "));
                let ran = self
                    .step(
                        "smoke",
                        &format!("smoke-{i}"),
                        name,
                        &agents,
                        JobSpec::Smoke(SmokeSpec {
                            checks: plan.smoke.clone(),
                        }),
                    )
                    .await?;
                if ran.status != JobStatus::Succeeded {
                    failure = Some(ran.failure("smoke checks"));
                    break;
                }
            }
        }
        let Some(failure) = failure else {
            let hosts = plan.batches.iter().flatten().count();
            return self
                .finish(
                    RolloutStatus::Succeeded,
                    format!(
                        "{} {} runs {} on {hosts} host(s)",
                        spec.app, spec.env, spec.release
                    ),
                )
                .await;
        };
        updated.sort();
        updated.dedup();
        if updated.is_empty() {
            return self
                .finish(
                    RolloutStatus::Failed,
                    format!("{failure}; no host was changed"),
                )
                .await;
        }
        let Some(previous) = self.previous_spec().await? else {
            return self
                .finish(
                    RolloutStatus::Failed,
                    format!(
                        "{failure}; {} run {} and there is no earlier release to return them to",
                        updated.join(", "),
                        spec.release
                    ),
                )
                .await;
        };
        let name = format!(
            "revert {} to {}",
            updated.join(", "),
            previous.release.as_str()
        );
        self.record.message = format!("{failure}; {name}");
        let ran = self
            .step(
                "revert",
                "revert",
                name,
                &updated,
                JobSpec::Deploy(previous.clone()),
            )
            .await?;
        if ran.status == JobStatus::Succeeded {
            self.finish(
                RolloutStatus::Reverted,
                format!(
                    "{failure}; reverted {} to {}",
                    updated.join(", "),
                    previous.release
                ),
            )
            .await
        } else {
            self.finish(
                RolloutStatus::RevertFailed,
                format!(
                    "{failure}; the revert to {} failed too: {}",
                    previous.release,
                    ran.failure("revert")
                ),
            )
            .await
        }
    }

    async fn previous_spec(&self) -> Result<Option<DeploySpec>, Halt> {
        let Some(id) = self.record.previous_id else {
            return Ok(None);
        };
        let Some(prev) = self.core.store.get_rollout(id).await? else {
            return Ok(None);
        };
        Ok(Some(parse_spec(&prev)?))
    }

    /// Runs one job (or finds it, when resuming) and waits for its end.
    async fn step(
        &mut self,
        kind: &str,
        key: &str,
        name: String,
        agents: &[String],
        spec: JobSpec,
    ) -> Result<Ran, Halt> {
        let submission = Submission {
            kind: spec.kind().as_str().into(),
            spec_json: spec.to_json(),
            target: Selector {
                agents: agents.to_vec(),
                labels: Default::default(),
            },
            idempotency_key: Some(format!("rollout:{}:{key}", self.record.id)),
            deadline: Some(STEP_DEADLINE),
            parent: Some(self.record.traceparent.clone()),
        };
        let job = match self
            .core
            .submit_job(&self.record.created_by, submission)
            .await
        {
            Ok((job, _created)) => job,
            // Refused, e.g. a host revoked since the plan: the step fails
            // (and the rollout reverts) rather than retrying forever.
            Err(e @ CoordinatorError::InvalidArgument { .. }) => {
                return Ok(Ran {
                    status: JobStatus::Failed,
                    tasks: Vec::new(),
                    refused: Some(e.to_string()),
                });
            }
            Err(e) => return Err(e.into()),
        };
        self.steps.push(Step {
            name,
            kind: kind.into(),
            job_id: job.id,
            agents: agents.to_vec(),
            status: job.status.as_str().into(),
        });
        // With the message set for this step: one commit per step start.
        self.save(RolloutStatus::Running, None).await?;
        let status = self.wait(job.id).await?;
        // Stored with whatever comes next (the next step, or the end), a
        // few milliseconds later: a commit fewer per step. A driver that
        // resumes finds the job again by its idempotency key either way.
        if let Some(last) = self.steps.last_mut() {
            last.status = status.as_str().into();
        }
        let tasks = self.core.store.list_tasks(job.id).await?;
        Ok(Ran {
            status,
            tasks,
            refused: None,
        })
    }

    /// Waits for a job to end, renewing the lease meanwhile.
    async fn wait(&mut self, job_id: Uuid) -> Result<JobStatus, Halt> {
        let mut events = self.core.store.subscribe();
        let mut renew = tokio::time::interval(RENEW_EVERY);
        renew.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        renew.tick().await;
        loop {
            let job = self
                .core
                .store
                .get_job(job_id)
                .await?
                .ok_or(StoreError::JobNotFound(job_id))?;
            if job.status.is_final() {
                return Ok(job.status);
            }
            // Until something about this job happens, or it is time to renew.
            loop {
                tokio::select! {
                    _ = self.core.shutdown.cancelled() => return Err(Halt::Shutdown),
                    _ = renew.tick() => {
                        self.save(RolloutStatus::Running, None).await?;
                        break;
                    }
                    n = events.recv() => match n {
                        Ok(Notification::JobEvents(j)) if j == job_id => break,
                        Ok(Notification::Missed) => break,
                        Ok(_) => {}
                        Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => break,
                        Err(tokio::sync::broadcast::error::RecvError::Closed) => {
                            return Err(Halt::Shutdown)
                        }
                    },
                }
            }
        }
    }

    async fn finish(&mut self, status: RolloutStatus, message: String) -> Result<(), Halt> {
        tracing::info!(rollout = %self.record.id, %status, %message, "rollout finished");
        self.save(status, Some(message)).await
    }

    /// Writes steps and message, renewing the lease; `LostLease` if the
    /// rollout is not ours (or not running) any more.
    async fn save(&mut self, status: RolloutStatus, message: Option<String>) -> Result<(), Halt> {
        if let Some(m) = message {
            self.record.message = m;
        }
        let now = now_ms();
        let update = RolloutUpdate {
            steps_json: serde_json::to_string(&self.steps).unwrap_or_else(|_| "[]".into()),
            message: self.record.message.clone(),
            status,
            lease_expires_at_ms: now + LEASE.as_millis() as i64,
        };
        if self
            .core
            .store
            .update_rollout(self.record.id, &self.core.coordinator_id, &update, now)
            .await?
        {
            Ok(())
        } else {
            Err(Halt::LostLease)
        }
    }
}

/// How a step's job ended.
struct Ran {
    status: JobStatus,
    tasks: Vec<crate::store::TaskRecord>,
    /// The job was refused before it ran (why).
    refused: Option<String>,
}

impl Ran {
    fn failure(&self, what: &str) -> String {
        match &self.refused {
            Some(why) => format!("{what} refused: {why}"),
            None => describe_failure(what, &self.tasks),
        }
    }
}

/// "deploy failed on web-2: health check ...", from a job's tasks.
fn describe_failure(what: &str, tasks: &[crate::store::TaskRecord]) -> String {
    let failed: Vec<String> = tasks
        .iter()
        .filter(|t| t.state != TaskState::Succeeded)
        .map(|t| {
            if t.message.is_empty() {
                format!("{} ({})", t.agent_name, t.state.as_str())
            } else {
                format!("{} ({}): {}", t.agent_name, t.state.as_str(), t.message)
            }
        })
        .collect();
    if failed.is_empty() {
        format!("{what} failed")
    } else {
        format!("{what} failed on {}", failed.join("; "))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::job::TaskState;
    use crate::store::TaskRecord;

    fn task(agent: &str, state: TaskState, message: &str) -> TaskRecord {
        TaskRecord {
            id: Uuid::now_v7(),
            job_id: Uuid::now_v7(),
            agent_id: Uuid::now_v7(),
            agent_name: agent.into(),
            state,
            attempt: 1,
            last_seq: 0,
            assigned_by: None,
            started_at_ms: None,
            finished_at_ms: None,
            message: message.into(),
            result_json: None,
            updated_at_ms: 0,
        }
    }

    #[test]
    fn failures_name_each_failed_host_and_why() {
        let tasks = [
            task("web-1", TaskState::Succeeded, "done"),
            task("web-2", TaskState::Failed, "web: health check failed"),
            task("web-3", TaskState::Expired, ""),
        ];
        assert_eq!(
            describe_failure("deploy", &tasks),
            "deploy failed on web-2 (failed): web: health check failed; web-3 (expired)"
        );
        assert_eq!(describe_failure("smoke checks", &[]), "smoke checks failed");
    }
}
