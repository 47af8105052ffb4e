//! Rollouts: a release of an app to every host of an environment.
//!
//! `ferry deploy` sends the app file; the coordinator resolves it into one
//! [`DeploySpec`] (the same on every host), picks the environment's hosts,
//! splits them into batches of `max_parallel`, and stores a running
//! rollout, which is also the (app, env) deploy lock. A driver task then
//! runs one job per step: deploy a batch, smoke-test it, next batch. On the
//! first failure it stops and deploys the previous release to every host
//! possibly changed (auto-revert), through the same health-gated executor,
//! and runs the smoke checks again there: a revert that does not serve is
//! `revert_failed`. A host counts as possibly changed when its deploy task
//! succeeded, or ended without saying how far it got (lost, expired,
//! cancelled): the revert's deploy on that host finds what actually runs
//! and does nothing where the previous release already serves, and the
//! rollout's message says, per host, what the revert found.
//!
//! `ferry redeploy` and `ferry restart` are rollouts of the current
//! release (kinds `redeploy`, `restart`) through the same batches and
//! gates; a restart changes no release, so a failed one is not reverted.
//! `ferry rollout cancel` records a request the driver sees between steps
//! (and cancels the running step's job): no step starts after it, and the
//! hosts possibly changed are reverted as after a failure.
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
use ferry_common::job::{DeploySpec, HttpCheck, JobSpec, RestartSpec, Selector, SmokeSpec};
use ferry_common::time::now_ms;
use ferry_proto::v1 as pb;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::core::Core;
use crate::error::CoordinatorError;
use crate::job::{JobStatus, TaskState};
use crate::pipeline::{self, Finish, StepKind};
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
    /// A redeploy or restart of only these services (empty: every one).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub services: Vec<String>,
    /// A restart of accessories: `services` names accessories (empty:
    /// every one).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub accessories: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Host {
    pub agent: String,
    pub online: bool,
    pub last_seen_ms: i64,
    /// The agent's labels when planned: what services' placement selects.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
}

/// One job a rollout ran, as stored in `steps_json`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Step {
    pub name: String,
    /// A [`StepKind`]'s word: "deploy", "smoke", "restart", "revert",
    /// "revert smoke".
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
        let current = self.current_release(&app.app, env).await?;
        let version = match (&current, req.accessories_only) {
            (Some(c), true) => c.version.clone(),
            (None, true) => {
                return Err(CoordinatorError::invalid(
                    "accessory upgrade",
                    format!(
                        "{} {env} has no successful release to upgrade the accessories of; deploy one with `ferry deploy`",
                        app.app
                    ),
                ));
            }
            (_, false) => req.version.trim().to_string(),
        };
        let version = version.as_str();
        let mut spec = app
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
        // Which of the environment's hosts each service runs on.
        let hosts: Vec<(String, BTreeMap<String, String>)> = plan
            .batches
            .iter()
            .flatten()
            .map(|h| (h.agent.clone(), h.labels.clone()))
            .collect();
        app.place(&mut spec, &hosts)
            .map_err(|e| CoordinatorError::invalid("placement", e))?;
        if req.accessories_only
            && let Some(c) = &current
        {
            spec = upgraded_accessories(release_spec(c)?, spec, &req.accessories)
                .map_err(|e| CoordinatorError::invalid("accessories", e))?;
        }
        plan.secret_rules = app.secrets.clone();
        let previous = current;
        let resolved = Resolved {
            spec,
            plan,
            protected: environment.is_protected(env),
            kind: RolloutKind::Deploy,
            previous,
            rollback_of: None,
        };
        let rollout = self.begin(actor, resolved, req.dry_run).await?;
        if !req.dry_run {
            // Every deploy gives the coordinator the app file: its
            // databases and schedules become the (app, env)'s, as
            // `ferry schedule apply` would make them. The rollout has
            // started; a failure here is the store's, and is reported
            // without failing the deploy it does not concern.
            if let Err(e) = crate::schedules::apply_app_file(self, actor, &app, env).await {
                tracing::error!(app = %app.app, env, error = %e, "could not apply the app file's databases and schedules on deploy");
            }
        }
        Ok(rollout)
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
                let known = each_once(succeeded.iter().map(|r| r.version.as_str()));
                CoordinatorError::invalid(
                    "--to",
                    format!(
                        "{app} {env} never deployed version {to:?} successfully; releases that did: {}",
                        known.join(", ")
                    ),
                )
            })?
        };
        let spec = release_spec(target)?;
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

    /// `Redeploy` (`RolloutKind::Redeploy`: the current release's
    /// containers recreated from its stored spec) and `Restart`
    /// (`RolloutKind::Restart`: restarted in place), of every service or
    /// only those named, through the rollout path.
    pub async fn again(
        self: &Arc<Self>,
        actor: &str,
        req: pb::RedeployRequest,
        kind: RolloutKind,
    ) -> Result<pb::Rollout, CoordinatorError> {
        let (app, env) = (req.app.trim(), req.env.trim());
        let Some(current) = self.current_release(app, env).await? else {
            return Err(CoordinatorError::invalid(
                kind.as_str(),
                format!(
                    "{app} {env} has no successful release to {kind} (see `ferry releases --app {app} --env {env}`); deploy one with `ferry deploy`"
                ),
            ));
        };
        let spec = release_spec(&current)?;
        let services: Vec<String> = each_once(
            req.services
                .iter()
                .map(|s| s.trim())
                .filter(|s| !s.is_empty()),
        )
        .into_iter()
        .map(str::to_string)
        .collect();
        // A restart of every accessory names them, so the plan says which.
        let services = if req.accessories && services.is_empty() {
            spec.accessories.iter().map(|a| a.name.clone()).collect()
        } else {
            services
        };
        // Unknown names are refused here, before anything is stored.
        if req.accessories {
            if kind != RolloutKind::Restart {
                return Err(CoordinatorError::invalid(
                    "accessories",
                    "only a restart takes accessories; a deploy recreates an accessory whose settings changed",
                ));
            }
            RestartSpec::of_accessories(&spec, &services)
                .map_err(|e| CoordinatorError::invalid("accessories", e))?;
        } else {
            RestartSpec::of_release(&spec, &services)
                .map_err(|e| CoordinatorError::invalid("services", e))?;
        }
        let old = parse_plan(&current)?;
        let mut plan = self
            .plan_hosts(app, env, old.selector, old.max_parallel, old.smoke)
            .await?;
        plan.services = services;
        plan.accessories = req.accessories;
        plan.secret_rules = old.secret_rules;
        let resolved = Resolved {
            spec,
            plan,
            protected: current.protected,
            kind,
            previous: Some(current),
            rollback_of: None,
        };
        self.begin(actor, resolved, req.dry_run).await
    }

    /// `CancelRollout`: records the request (the driver, wherever it runs,
    /// sees it between steps) and cancels the running step's job unless
    /// that step is a revert. Audited.
    pub async fn cancel_rollout(
        &self,
        actor: &str,
        id: Uuid,
    ) -> Result<pb::Rollout, CoordinatorError> {
        let r = self
            .store
            .request_rollout_cancel(id, actor, now_ms())
            .await?
            .ok_or(StoreError::RolloutNotFound(id))?;
        if r.status.is_final() {
            return Err(CoordinatorError::invalid(
                "rollout",
                format!(
                    "rollout {id} already ended ({}): {}; nothing to cancel",
                    r.status, r.message
                ),
            ));
        }
        self.audit_app(
            actor,
            "rollout.cancel",
            &id.to_string(),
            &r.app,
            Some(&r.env),
            format!("app={} env={} version={}", r.app, r.env, r.version),
        )
        .await;
        if let Some(step) = parse_steps(&r)
            .last()
            .filter(|s| s.kind.parse::<StepKind>().is_ok_and(StepKind::cancellable))
            && let Err(e) = self.cancel_job(actor, step.job_id).await
        {
            // The driver cancels it too, on its next look.
            tracing::warn!(rollout = %id, job = %step.job_id, error = %e, "could not cancel the running step's job");
        }
        to_wire(&r)
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
                labels: a.labels.clone(),
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
            services: Vec::new(),
            accessories: false,
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
        // (A restart sends none: its containers keep their environment.)
        if !names.is_empty() && r.kind != RolloutKind::Restart {
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
            cancel_requested_by: None,
            cancel_requested_at_ms: None,
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

/// A stored rollout's release as a later rollout deploys it (a rollback,
/// a revert, a redeploy): never forced, whatever that rollout was.
fn release_spec(r: &RolloutRecord) -> Result<DeploySpec, CoordinatorError> {
    let mut spec = parse_spec(r)?;
    spec.force = false;
    Ok(spec)
}

/// `ferry accessory upgrade`: the current release's stored spec with the
/// accessories `names` (every one if empty) of the app file's spec `new`
/// in place of its own; the services stay as the release has them.
fn upgraded_accessories(
    mut stored: DeploySpec,
    new: DeploySpec,
    names: &[String],
) -> Result<DeploySpec, String> {
    let known: Vec<&str> = new.accessories.iter().map(|a| a.name.as_str()).collect();
    if known.is_empty() {
        return Err(format!(
            "the app file has no accessories for {} {}",
            new.app, new.env
        ));
    }
    if let Some(unknown) = names.iter().find(|n| !known.contains(&n.as_str())) {
        return Err(format!(
            "the app file has no accessory {unknown:?}; it has {}",
            known.join(", ")
        ));
    }
    for acc in new
        .accessories
        .into_iter()
        .filter(|a| names.is_empty() || names.contains(&a.name))
    {
        match stored.accessories.iter_mut().find(|a| a.name == acc.name) {
            Some(old) => *old = acc,
            None => stored.accessories.push(acc),
        }
    }
    Ok(stored)
}

/// Each item once, in first-seen order (`dedup` only drops adjacent ones).
fn each_once<'a>(items: impl Iterator<Item = &'a str>) -> Vec<&'a str> {
    let mut seen = Vec::new();
    for item in items {
        if !seen.contains(&item) {
            seen.push(item);
        }
    }
    seen
}

/// The job each batch of a rollout runs: the release (deploy, rollback),
/// the release forced and narrowed to the named services (redeploy), or a
/// restart of the named services' containers.
fn batch_job(kind: RolloutKind, spec: &DeploySpec, plan: &Plan) -> Result<JobSpec, String> {
    let wanted = |name: &str| plan.services.is_empty() || plan.services.iter().any(|s| s == name);
    Ok(match kind {
        RolloutKind::Deploy | RolloutKind::Rollback => JobSpec::Deploy(spec.clone()),
        RolloutKind::Redeploy => JobSpec::Deploy(DeploySpec {
            force: true,
            services: spec
                .services
                .iter()
                .filter(|s| wanted(&s.name))
                .cloned()
                .collect(),
            ..spec.clone()
        }),
        RolloutKind::Restart if plan.accessories => {
            JobSpec::Restart(RestartSpec::of_accessories(spec, &plan.services)?)
        }
        RolloutKind::Restart => JobSpec::Restart(RestartSpec::of_release(spec, &plan.services)?),
    })
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
        accessories: spec
            .accessories
            .iter()
            .map(|s| pb::RolloutService {
                name: s.name.clone(),
                image: s.image.clone(),
                strategy: "accessory".into(),
                replicas: 1,
                hosts: s.hosts.clone(),
            })
            .collect(),
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
                replicas: s.replicas,
                hosts: s.hosts.clone(),
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
        only_services: plan.services,
        cancel_requested_by: r.cancel_requested_by.clone().unwrap_or_default(),
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
        let kind = self.record.kind;
        let job = match batch_job(kind, &spec, &plan) {
            Ok(job) => job,
            // Checked when it started; a stored rollout that no longer
            // makes sense ends rather than being retried.
            Err(e) => return self.finish(RolloutStatus::Failed, e).await,
        };
        // A driver that resumes walks the steps already run again (found
        // by their idempotency keys); a cancel stops only new ones.
        let resumed: Vec<String> = parse_steps(&self.record)
            .into_iter()
            .map(|s| s.name)
            .collect();
        let verb = match kind {
            RolloutKind::Restart => "restart",
            RolloutKind::Redeploy => "redeploy",
            RolloutKind::Deploy | RolloutKind::Rollback => "deploy",
        };
        let total = plan.batches.len();
        let smoke = !plan.smoke.is_empty();
        let smoke_job = JobSpec::Smoke(SmokeSpec {
            checks: plan.smoke.clone(),
        });
        let previous = self.previous_spec().await?;
        let mut facts = pipeline::Facts {
            kind,
            plan: pipeline::forward(kind, total, smoke),
            forward: Vec::new(),
            changed: false,
            has_previous: previous.is_some(),
            smoke,
            revert: None,
            revert_smoke: None,
        };
        let mut touched: Vec<Touched> = Vec::new();
        // Why the forward steps stopped; the revert's changed hosts and report.
        let mut why = String::new();
        let mut changed: Vec<String> = Vec::new();
        let mut report = String::new();
        let mut revert_smoke_failure = String::new();
        let finish = loop {
            let step = match pipeline::next(&facts) {
                pipeline::Next::Finish(f) => break f,
                pipeline::Next::Run(step) => step,
            };
            match step.kind {
                StepKind::Deploy | StepKind::Restart | StepKind::Smoke => {
                    let agents: Vec<String> = plan.batches[step.batch]
                        .iter()
                        .map(|h| h.agent.clone())
                        .collect();
                    let hosts = format!("{}/{total}: {}", step.batch + 1, agents.join(", "));
                    let (name, job, what) = if step.kind == StepKind::Smoke {
                        (format!("smoke batch {hosts}"), &smoke_job, "smoke checks")
                    } else {
                        self.record.message =
                            format!("{verb} batch {hosts}: {verb} {}", spec.release);
                        (format!("{verb} batch {hosts}"), &job, verb)
                    };
                    let ran = self
                        .step(step, name, &agents, job.clone(), &resumed)
                        .await?;
                    if step.kind != StepKind::Smoke {
                        touched.extend(possibly_changed(&ran.tasks));
                        facts.changed = !touched.is_empty();
                    }
                    facts.forward.push(if ran.status == JobStatus::Succeeded {
                        pipeline::Ended::Succeeded
                    } else {
                        let stop = self.stopped(&ran, what).await?;
                        why = stop.why;
                        if stop.cancelled {
                            pipeline::Ended::Cancelled
                        } else {
                            pipeline::Ended::Failed
                        }
                    });
                    changed = touched.iter().map(|t| t.agent.clone()).collect();
                    changed.sort();
                    changed.dedup();
                }
                StepKind::Revert => {
                    let previous = previous.as_ref().ok_or_else(|| {
                        Halt::Store("a revert was planned with no previous release".into())
                    })?;
                    let name = format!(
                        "revert {} to {}",
                        changed.join(", "),
                        previous.release.as_str()
                    );
                    self.record.message = format!("{why}; {name}");
                    // The revert waits (up to STEP_DEADLINE) for an agent
                    // that went away: only it can say what its host runs.
                    let reverted = self
                        .step(
                            step,
                            name,
                            &changed,
                            JobSpec::Deploy(previous.clone()),
                            &resumed,
                        )
                        .await?;
                    report = revert_report(
                        &self.record.app,
                        &touched,
                        &spec.release,
                        &previous.release,
                        &reverted.tasks,
                    );
                    facts.revert = Some(ended(reverted.status));
                }
                StepKind::RevertSmoke => {
                    let name = format!("smoke after the revert: {}", changed.join(", "));
                    let ran = self
                        .step(step, name, &changed, smoke_job.clone(), &resumed)
                        .await?;
                    revert_smoke_failure = ran.failure("smoke checks");
                    facts.revert_smoke = Some(ended(ran.status));
                }
            }
        };
        let previous = previous.map(|p| p.release).unwrap_or_default();
        let message = match finish {
            Finish::Done => {
                let hosts = plan.batches.iter().flatten().count();
                let what = match kind {
                    RolloutKind::Restart => format!("restarted {}", services_of(&job)),
                    RolloutKind::Redeploy => format!("redeployed {}", services_of(&job)),
                    RolloutKind::Deploy | RolloutKind::Rollback => "runs".to_string(),
                };
                format!(
                    "{} {} {what} {} on {hosts} host(s)",
                    spec.app, spec.env, spec.release
                )
            }
            Finish::RestartStopped { .. } if changed.is_empty() => {
                format!("{why}; no host was restarted")
            }
            Finish::RestartStopped { .. } => {
                format!("{why}; restarted before it: {}", changed.join(", "))
            }
            Finish::NothingChanged { .. } => format!("{why}; no host was changed"),
            Finish::NoPrevious { .. } => format!(
                "{why}; {} (possibly) run {} and there is no earlier release to return them to",
                changed.join(", "),
                spec.release
            ),
            Finish::RevertFailed => {
                format!("{why}; the revert to {previous} failed: {report}")
            }
            Finish::RevertDoesNotServe => format!(
                "{why}; {report}; but {previous} does not serve there: {revert_smoke_failure}"
            ),
            Finish::Reverted { .. } => format!("{why}; {report}"),
        };
        self.finish(finish.status(), message).await
    }

    /// Why the rollout stops after a step that did not succeed: a cancel
    /// (`ferry rollout cancel`, or the step's job cancelled) or a failure.
    async fn stopped(&self, ran: &Ran, what: &str) -> Result<Stop, Halt> {
        if let Some(by) = &ran.stopped_by {
            return Ok(Stop {
                cancelled: true,
                why: format!("cancelled by {by} before {}", ran.name),
            });
        }
        if ran.status != JobStatus::Cancelled {
            return Ok(Stop {
                cancelled: false,
                why: ran.failure(what),
            });
        }
        let why = match self.cancel_requested().await? {
            Some(by) => format!("cancelled by {by} during {}", ran.name),
            None => format!(
                "{} was cancelled (its job {} was cancelled)",
                ran.name, ran.job_id
            ),
        };
        Ok(Stop {
            cancelled: true,
            why,
        })
    }

    /// Who asked to cancel this rollout, if anyone has (read from the
    /// store: the request may have reached another coordinator).
    async fn cancel_requested(&self) -> Result<Option<String>, Halt> {
        Ok(self
            .core
            .store
            .get_rollout(self.record.id)
            .await?
            .and_then(|r| r.cancel_requested_by))
    }

    async fn previous_spec(&self) -> Result<Option<DeploySpec>, Halt> {
        let Some(id) = self.record.previous_id else {
            return Ok(None);
        };
        let Some(prev) = self.core.store.get_rollout(id).await? else {
            return Ok(None);
        };
        Ok(Some(release_spec(&prev)?))
    }

    /// Runs one job (or finds it, when resuming) and waits for its end. A
    /// step that a cancel stops (not a revert) is not started once the
    /// rollout's cancel was requested, unless it ran before (`resumed`).
    async fn step(
        &mut self,
        step: pipeline::Step,
        name: String,
        agents: &[String],
        spec: JobSpec,
        resumed: &[String],
    ) -> Result<Ran, Halt> {
        let stoppable = step.kind.cancellable();
        if stoppable
            && !resumed.contains(&name)
            && let Some(by) = self.cancel_requested().await?
        {
            return Ok(Ran {
                name,
                job_id: Uuid::nil(),
                status: JobStatus::Cancelled,
                tasks: Vec::new(),
                refused: None,
                stopped_by: Some(by),
            });
        }
        let submission = Submission {
            kind: spec.kind().as_str().into(),
            spec_json: spec.to_json(),
            target: Selector {
                agents: agents.to_vec(),
                labels: Default::default(),
            },
            idempotency_key: Some(format!("rollout:{}:{}", self.record.id, step.key())),
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
                    name,
                    job_id: Uuid::nil(),
                    status: JobStatus::Failed,
                    tasks: Vec::new(),
                    refused: Some(e.to_string()),
                    stopped_by: None,
                });
            }
            Err(e) => return Err(e.into()),
        };
        self.steps.push(Step {
            name: name.clone(),
            kind: step.kind.as_str().into(),
            job_id: job.id,
            agents: agents.to_vec(),
            status: job.status.as_str().into(),
        });
        // With the message set for this step: one commit per step start.
        self.save(RolloutStatus::Running, None).await?;
        let status = self.wait(job.id, stoppable).await?;
        // Stored with whatever comes next (the next step, or the end), a
        // few milliseconds later: a commit fewer per step. A driver that
        // resumes finds the job again by its idempotency key either way.
        if let Some(last) = self.steps.last_mut() {
            last.status = status.as_str().into();
        }
        let tasks = self.core.store.list_tasks(job.id).await?;
        Ok(Ran {
            name,
            job_id: job.id,
            status,
            tasks,
            refused: None,
            stopped_by: None,
        })
    }

    /// Waits for a job to end, renewing the lease meanwhile. A `stoppable`
    /// job is cancelled here when the rollout's cancel was requested and
    /// the job is still running (the request's own cancel may have missed
    /// it: it raced this step's start, or its coordinator's call failed).
    async fn wait(&mut self, job_id: Uuid, stoppable: bool) -> Result<JobStatus, Halt> {
        let mut events = self.core.store.subscribe();
        let mut renew = tokio::time::interval(RENEW_EVERY);
        renew.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        renew.tick().await;
        let mut cancel_sent = false;
        // Whether to look for a cancel request now: first, then at each
        // renewal (not on every event: a deploy sends many).
        let mut look = true;
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
            if stoppable
                && std::mem::take(&mut look)
                && !cancel_sent
                && !job.cancel_requested
                && let Some(by) = self.cancel_requested().await?
            {
                cancel_sent = true;
                self.core.cancel_job(&by, job_id).await?;
                continue;
            }
            // Until something about this job happens, or it is time to renew.
            loop {
                tokio::select! {
                    _ = self.core.shutdown.cancelled() => return Err(Halt::Shutdown),
                    _ = renew.tick() => {
                        self.save(RolloutStatus::Running, None).await?;
                        look = true;
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
            // What `run` starts over from after a store failure: the steps
            // stored so far are found again, not stopped by a cancel.
            self.record.steps_json = update.steps_json;
            Ok(())
        } else {
            Err(Halt::LostLease)
        }
    }
}

/// How a step's job ended.
struct Ran {
    /// The step's name ("deploy batch 1/2: web-1").
    name: String,
    /// Nil when no job ran (refused, or stopped before it started).
    job_id: Uuid,
    status: JobStatus,
    tasks: Vec<crate::store::TaskRecord>,
    /// The job was refused before it ran (why).
    refused: Option<String>,
    /// Not started: the rollout's cancel had been requested (by whom).
    stopped_by: Option<String>,
}

impl Ran {
    fn failure(&self, what: &str) -> String {
        match &self.refused {
            Some(why) => format!("{what} refused: {why}"),
            None => describe_failure(what, &self.tasks),
        }
    }
}

/// Why a rollout stops before its end.
struct Stop {
    /// On request (ends `cancelled`) rather than by a failure.
    cancelled: bool,
    why: String,
}

/// A host whose deploy task may have changed it, and how that task ended.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Touched {
    agent: String,
    state: TaskState,
}

/// The hosts a step's deploy tasks may have changed: those that succeeded,
/// and those that reached their agent and ended without saying how far
/// they got (lost, expired, cancelled: a blue-green switch may have
/// happened before). A failed task undid its own work on its host; one
/// never sent to its agent did nothing there.
fn possibly_changed(tasks: &[crate::store::TaskRecord]) -> Vec<Touched> {
    let reached =
        |t: &crate::store::TaskRecord| t.assigned_by.is_some() || t.started_at_ms.is_some();
    tasks
        .iter()
        .filter(|t| t.state == TaskState::Succeeded || (t.state.is_unfinished() && reached(t)))
        .map(|t| Touched {
            agent: t.agent_name.clone(),
            state: t.state,
        })
        .collect()
}

/// A revert's (or its checks') job status as the pipeline reads it.
fn ended(status: JobStatus) -> pipeline::Ended {
    match status {
        JobStatus::Succeeded => pipeline::Ended::Succeeded,
        JobStatus::Cancelled => pipeline::Ended::Cancelled,
        _ => pipeline::Ended::Failed,
    }
}

/// The services a rollout's batch job names ("web, worker").
fn services_of(job: &JobSpec) -> String {
    let names: Vec<&str> = match job {
        JobSpec::Deploy(d) => d.services.iter().map(|s| s.name.as_str()).collect(),
        JobSpec::Restart(r) => r.services.iter().map(|s| s.name.as_str()).collect(),
        // A rollout's batches are deploys or restarts only.
        _ => Vec::new(),
    };
    names.join(", ")
}

/// Per host, how its deploy task ended and what the revert found there,
/// from the revert task's own report (its result says per service whether
/// it changed anything): "web-1: deployed 2.0, switched back to 1.0;
/// web-2: task lost, revert found 1.0 already running".
fn revert_report(
    app: &str,
    touched: &[Touched],
    release: &str,
    previous: &str,
    revert: &[crate::store::TaskRecord],
) -> String {
    let mut hosts: Vec<&Touched> = touched.iter().collect();
    hosts.sort_by(|a, b| a.agent.cmp(&b.agent));
    hosts.dedup_by(|a, b| a.agent == b.agent);
    let unknown = |what: &str| {
        format!(
            "{what} (its state is unknown: check `ferry agents` and \
             `docker ps -a --filter label=ferry.app={app}` on the host, then deploy or `ferry rollback`)"
        )
    };
    hosts
        .iter()
        .map(|h| {
            let before = match h.state {
                TaskState::Succeeded => format!("deployed {release}"),
                other => format!("task {other}"),
            };
            let after = match revert.iter().find(|t| t.agent_name == h.agent) {
                None => "not reverted".to_string(),
                Some(t) => match t.state {
                    TaskState::Succeeded if changed_anything(t.result_json.as_deref()) => {
                        format!("switched back to {previous}")
                    }
                    TaskState::Succeeded => format!("revert found {previous} already running"),
                    TaskState::Expired | TaskState::Pending | TaskState::Assigned => {
                        unknown(&format!(
                            "the agent did not come back within {} to revert",
                            ferry_common::time::format_duration(STEP_DEADLINE)
                        ))
                    }
                    TaskState::Lost | TaskState::Running => {
                        unknown("the agent went away during the revert")
                    }
                    TaskState::Failed | TaskState::Cancelled => {
                        if t.message.is_empty() {
                            format!("revert {}", t.state)
                        } else {
                            format!("revert {}: {}", t.state, t.message)
                        }
                    }
                },
            };
            format!("{}: {before}, {after}", h.agent)
        })
        .collect::<Vec<_>>()
        .join("; ")
}

/// Whether a deploy task's result says it changed a service (started or
/// switched to a container); `{"services":[{"changed":false}, ...]}`.
fn changed_anything(result_json: Option<&str>) -> bool {
    let Some(json) = result_json else {
        return false;
    };
    let Ok(v) = serde_json::from_str::<serde_json::Value>(json) else {
        return false;
    };
    v["services"]
        .as_array()
        .is_some_and(|s| s.iter().any(|svc| svc["changed"].as_bool() == Some(true)))
        || v["stopped_not_placed"]
            .as_array()
            .is_some_and(|s| !s.is_empty())
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

    fn touched(agent: &str, state: TaskState) -> Touched {
        Touched {
            agent: agent.into(),
            state,
        }
    }

    #[test]
    fn a_host_whose_task_ended_without_saying_how_far_it_got_is_reverted() {
        let sent = |agent: &str, state: TaskState| TaskRecord {
            assigned_by: Some("coord-a".into()),
            ..task(agent, state, "")
        };
        let tasks = [
            task("web-1", TaskState::Succeeded, "done"),
            sent("web-2", TaskState::Lost),
            sent("web-3", TaskState::Failed),
            TaskRecord {
                started_at_ms: Some(1),
                ..task("web-4", TaskState::Expired, "")
            },
            sent("web-5", TaskState::Cancelled),
            // Cancelled before it was ever sent: its host was not touched.
            task("web-6", TaskState::Cancelled, ""),
        ];
        assert_eq!(
            possibly_changed(&tasks),
            [
                touched("web-1", TaskState::Succeeded),
                touched("web-2", TaskState::Lost),
                touched("web-4", TaskState::Expired),
                touched("web-5", TaskState::Cancelled),
            ],
            "a failed task undid its work, an unsent one did nothing; every other may have switched"
        );
    }

    #[test]
    fn the_final_message_says_per_host_what_the_revert_found() {
        let with_result = |agent: &str, state: TaskState, json: &str| TaskRecord {
            result_json: Some(json.into()),
            ..task(agent, state, "")
        };
        let hosts = [
            touched("web-2", TaskState::Lost),
            touched("web-1", TaskState::Succeeded),
            touched("web-3", TaskState::Cancelled),
            touched("web-4", TaskState::Lost),
            touched("web-5", TaskState::Lost),
        ];
        let revert = [
            with_result(
                "web-1",
                TaskState::Succeeded,
                r#"{"release":"1.0","services":[{"service":"web","changed":true}]}"#,
            ),
            with_result(
                "web-2",
                TaskState::Succeeded,
                r#"{"release":"1.0","services":[{"service":"web","changed":false}]}"#,
            ),
            task("web-3", TaskState::Failed, "service web: not healthy"),
            task("web-4", TaskState::Expired, ""),
            task("web-5", TaskState::Lost, ""),
        ];
        let report = revert_report("shop", &hosts, "2.0", "1.0", &revert);
        let lines: Vec<&str> = report.split("; ").collect();
        assert_eq!(lines[0], "web-1: deployed 2.0, switched back to 1.0");
        assert_eq!(
            lines[1],
            "web-2: task lost, revert found 1.0 already running"
        );
        assert_eq!(
            lines[2],
            "web-3: task cancelled, revert failed: service web: not healthy"
        );
        assert!(
            lines[3]
                .starts_with("web-4: task lost, the agent did not come back within 15m to revert"),
            "{report}"
        );
        assert!(lines[4].starts_with("web-5: task lost, the agent went away during the revert"));
        assert!(
            report.contains("its state is unknown: check `ferry agents` and `docker ps -a --filter label=ferry.app=shop`"),
            "{report}"
        );
        assert!(!changed_anything(None));
        assert!(!changed_anything(Some("not json")));
    }

    #[test]
    fn releases_are_listed_once_each() {
        assert_eq!(
            each_once(["v3", "v1", "v3", "v2", "v1"].into_iter()),
            ["v3", "v1", "v2"]
        );
    }

    fn example_spec() -> DeploySpec {
        let file =
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/example/ferry.toml");
        ferry_common::appfile::load(&file)
            .unwrap()
            .deploy_spec("staging", "1.0.0")
            .unwrap()
    }

    #[test]
    fn each_kind_runs_its_own_batch_job() {
        let spec = example_spec();
        let first = spec.services[0].name.clone();
        let mut plan = Plan {
            selector: Selector::default(),
            max_parallel: 1,
            batches: Vec::new(),
            smoke: Vec::new(),
            secret_rules: BTreeMap::new(),
            services: Vec::new(),
            accessories: false,
        };
        assert_eq!(
            batch_job(RolloutKind::Deploy, &spec, &plan).unwrap(),
            JobSpec::Deploy(spec.clone())
        );
        let JobSpec::Deploy(all) = batch_job(RolloutKind::Redeploy, &spec, &plan).unwrap() else {
            panic!("a redeploy deploys")
        };
        assert!(all.force);
        assert_eq!(all.services, spec.services);
        plan.services = vec![first.clone()];
        let JobSpec::Deploy(one) = batch_job(RolloutKind::Redeploy, &spec, &plan).unwrap() else {
            panic!("a redeploy deploys")
        };
        assert_eq!(
            one.services.iter().map(|s| &s.name).collect::<Vec<_>>(),
            [&first]
        );
        let JobSpec::Restart(restart) = batch_job(RolloutKind::Restart, &spec, &plan).unwrap()
        else {
            panic!("a restart restarts")
        };
        assert_eq!(restart.release, "1.0.0");
        assert_eq!(restart.services.len(), 1);
        plan.services = vec!["nope".into()];
        assert!(
            batch_job(RolloutKind::Restart, &spec, &plan)
                .unwrap_err()
                .contains("no service \"nope\"")
        );
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
