//! The one owner of job state on this coordinator: it submits jobs, assigns
//! tasks to connected agents, ingests their events in batches and
//! acknowledges them, reconciles what an agent holds when it reconnects,
//! relays cancellations, runs the leader's time-based duties, and feeds
//! watchers.
//!
//! Coordinators sharing a PostgreSQL store cooperate through it: tasks are
//! claimed with `FOR UPDATE SKIP LOCKED`, and `Notification`s (LISTEN/NOTIFY)
//! tell the coordinator holding an agent's session that it has work, a
//! cancellation or a revocation to deliver.

use std::collections::hash_map::Entry;
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use ferry_common::job::{JobSpec, Selector};
use ferry_common::time::now_ms;
use ferry_proto::v1 as pb;
use prost::Message;
use tokio::sync::mpsc;
use uuid::Uuid;

use crate::core::Core;
use crate::error::CoordinatorError;
use crate::job::{Outcome, TaskEffect, TaskEvent, TaskState};
use crate::sessions::Inbound;
use crate::store::{
    AuditEntry, IncomingEvent, JobRecord, JobStart, NewJob, NewTask, Notification, StoreError,
    TaskRecord, Transition,
};

pub mod watch;

/// Most events written in one store transaction.
const INGEST_BATCH: usize = 4096;
/// How long a batch of agent events the store refused waits before it is
/// tried again, doubling up to [`INGEST_RETRY_MAX`].
const INGEST_RETRY_FIRST: Duration = Duration::from_millis(100);
const INGEST_RETRY_MAX: Duration = Duration::from_secs(2);
/// Most tasks of one agent claimed for assignment at once.
const CLAIM_BATCH: u32 = 512;
/// Most tasks of one job claimed in one transaction when it fans out: a
/// few large batches, each one statement to find, one to lock, one to
/// update and one to log them; small enough that SQLite's other writers
/// (events, heartbeats) wait for one batch at most.
const JOB_CLAIM_BATCH: u32 = 2048;
/// How often pending work is looked for even without a notification,
/// heartbeats are written, and the leader's duties run.
const TICK: Duration = Duration::from_millis(500);

/// A new job as the operator asked for it.
#[derive(Debug, Clone)]
pub struct Submission {
    pub kind: String,
    pub spec_json: String,
    pub target: Selector,
    pub idempotency_key: Option<String>,
    pub deadline: Option<Duration>,
    /// A W3C traceparent the job's trace continues (a rollout's), instead
    /// of starting its own.
    pub parent: Option<String>,
}

/// Body of an event the coordinator writes.
fn state_body(state: &str, message: String) -> Vec<u8> {
    pb::EventBody {
        body: Some(pb::event_body::Body::TaskStateChanged(
            pb::TaskStateChanged {
                state: state.into(),
                message,
            },
        )),
    }
    .encode_to_vec()
}

/// A fresh W3C traceparent for a job's trace.
pub fn new_traceparent() -> String {
    let trace: u128 = rand::random::<u128>().max(1);
    let span: u64 = rand::random::<u64>().max(1);
    format!("00-{trace:032x}-{span:016x}-01")
}

/// A traceparent in the same trace as `parent`, with a fresh span id (when
/// trace export is off and spans carry no context of their own).
pub fn child_traceparent(parent: &str) -> Option<String> {
    let trace = parent.split('-').nth(1).filter(|t| t.len() == 32)?;
    let span: u64 = rand::random::<u64>().max(1);
    Some(format!("00-{trace}-{span:016x}-01"))
}

/// Decodes an agent event into what the store applies.
fn incoming(ev: &pb::TaskEvent) -> Option<IncomingEvent> {
    let task_id = Uuid::parse_str(&ev.task_id).ok()?;
    let body = ev.body.clone().unwrap_or_default();
    let (machine_event, message, result_json) = match &body.body {
        Some(pb::event_body::Body::TaskFinished(f)) => {
            let outcome = match pb::TaskOutcome::try_from(f.outcome) {
                Ok(pb::TaskOutcome::Succeeded) => Outcome::Succeeded,
                Ok(pb::TaskOutcome::Cancelled) => Outcome::Cancelled,
                Ok(pb::TaskOutcome::Lost) => Outcome::Lost,
                _ => Outcome::Failed,
            };
            let result = Some(f.result_json.clone()).filter(|r| !r.is_empty());
            (
                TaskEvent::Finished(outcome),
                Some(f.message.clone()),
                result,
            )
        }
        Some(pb::event_body::Body::StepStarted(s)) => {
            let msg = if s.message.is_empty() {
                s.step.clone()
            } else {
                format!("{}: {}", s.step, s.message)
            };
            (TaskEvent::Reported, Some(msg), None)
        }
        // Agents may not write coordinator events.
        Some(pb::event_body::Body::TaskStateChanged(_) | pb::event_body::Body::JobFinished(_))
        | None => return None,
        Some(_) => (TaskEvent::Reported, None, None),
    };
    Some(IncomingEvent {
        task_id,
        attempt: ev.attempt,
        seq: ev.seq,
        at_ms: ev.at_ms,
        body: body.encode_to_vec(),
        machine_event,
        message,
        result_json,
    })
}

impl Core {
    /// `SubmitJob`: validates, picks the agents, stores the job. Returns the
    /// job and whether it is new (false: the idempotency key matched).
    pub async fn submit_job(
        &self,
        actor: &str,
        sub: Submission,
    ) -> Result<(JobRecord, bool), CoordinatorError> {
        let spec = JobSpec::parse(&sub.kind, &sub.spec_json)
            .map_err(|e| CoordinatorError::invalid("job", e))?;
        if let Some(key) = &sub.idempotency_key
            && key.len() > 200
        {
            return Err(CoordinatorError::invalid(
                "idempotency key",
                "at most 200 characters",
            ));
        }
        // Named agents are looked up one by one: loading every agent to pick
        // one was most of a single-host job's submit time at 10,000 agents.
        let agents = if sub.target.agents.is_empty() {
            self.store.list_agents().await?
        } else {
            let mut found = Vec::with_capacity(sub.target.agents.len());
            for name in &sub.target.agents {
                if let Some(a) = self.store.find_agent(name).await?
                    && a.name == *name
                {
                    found.push(a);
                }
            }
            found
        };
        let mut targets: Vec<_> = agents
            .iter()
            .filter(|a| a.revoked_at_ms.is_none() && sub.target.matches(&a.name, &a.labels))
            .collect();
        for name in &sub.target.agents {
            if !targets.iter().any(|a| &a.name == name) {
                return Err(CoordinatorError::invalid(
                    "--agent",
                    format!("no enrolled agent named {name:?} (see `ferry agents`)"),
                ));
            }
        }
        if targets.is_empty() {
            return Err(CoordinatorError::invalid(
                "target",
                format!(
                    "no enrolled agent matches {} (see `ferry agents`)",
                    sub.target.describe()
                ),
            ));
        }
        // Agents that said which kinds they run (every agent that has ever
        // connected) must run this one; an agent never seen yet is given
        // the task, which is checked again when it is sent.
        let unable: Vec<String> = targets
            .iter()
            .filter(|a| {
                !a.capabilities.is_empty()
                    && !a.capabilities.iter().any(|k| k == spec.kind().as_str())
            })
            .map(|a| missing_kind(&a.name, &a.version, &a.capabilities, spec.kind().as_str()))
            .collect();
        if !unable.is_empty() {
            return Err(CoordinatorError::invalid("target", unable.join("; ")));
        }
        targets.sort_by(|a, b| a.name.cmp(&b.name));
        let now = now_ms();
        let deadline = sub.deadline.unwrap_or(self.config.job_deadline);
        let job_id = Uuid::now_v7();
        // The root of the job's trace; its context travels with every task.
        let span = tracing::info_span!(parent: None, "job", job.id = %job_id, job.kind = spec.kind().as_str(), job.target = %sub.target.describe());
        if let Some(parent) = &sub.parent {
            ferry_common::telemetry::set_parent(&span, parent);
        }
        let traceparent = Some(ferry_common::telemetry::traceparent_of(&span))
            .filter(|t| !t.is_empty())
            .or_else(|| sub.parent.as_deref().and_then(child_traceparent))
            .unwrap_or_else(new_traceparent);
        let job = NewJob {
            id: job_id,
            kind: spec.kind().as_str().into(),
            spec_json: spec.to_json(),
            target_json: serde_json::to_string(&sub.target).unwrap_or_else(|_| "{}".into()),
            created_by: actor.into(),
            idempotency_key: sub.idempotency_key.clone(),
            created_at_ms: now,
            deadline_ms: now + deadline.as_millis() as i64,
            traceparent,
        };
        let tasks: Vec<NewTask> = targets
            .iter()
            .map(|a| NewTask {
                id: Uuid::now_v7(),
                agent_id: a.id,
                agent_name: a.name.clone(),
            })
            .collect();
        let notes: Vec<(Uuid, Vec<u8>)> = tasks
            .iter()
            .zip(&targets)
            .map(|(task, agent)| {
                let message = if self.agent_online(agent, now) {
                    format!("queued for agent {}", agent.name)
                } else {
                    format!(
                        "waiting for agent {} (offline, last seen {}); runs when it reconnects, until {}",
                        agent.name,
                        ferry_common::time::ago(agent.last_seen_ms, now),
                        ferry_common::time::rfc3339_ms(job.deadline_ms)
                    )
                };
                (task.id, state_body(TaskState::Pending.as_str(), message))
            })
            .collect();
        let (app, env) = spec.audit_scope();
        let audit = AuditEntry {
            app: app.map(str::to_string),
            env: env.map(str::to_string),
            ..crate::core::audit_entry(
                actor,
                "job.submit",
                &job_id.to_string(),
                format!("kind={} target={}", job.kind, sub.target.describe()),
            )
        };
        // One transaction stores the job, its first events and the audit
        // entry, and claims the tasks of the agents connected here: their
        // Assigns go out right after the commit.
        let started = self
            .store
            .start_job(&JobStart {
                job: &job,
                tasks: &tasks,
                notes: &notes,
                here: &|agent| self.sessions.is_online(agent),
                coordinator_id: &self.coordinator_id,
                audit: Some(&audit),
                now_ms: now,
            })
            .await?;
        if !started.created {
            // The key matched an earlier job (a rollout taken over by
            // another coordinator submits its step again): nothing was
            // stored, so nothing is logged as submitted.
            return Ok((started.job, false));
        }
        crate::core::log_audit(&audit);
        self.keep_span(job_id, span);
        let all_claimed = started.claimed.len() == tasks.len();
        self.send_claimed(started.claimed).await?;
        // The rest wait for their agents: connected to another coordinator
        // (which the notification wakes), or offline until they return.
        if !all_claimed {
            self.store
                .notify(Notification::JobSubmitted(job_id))
                .await?;
        }
        Ok((started.job, true))
    }

    /// `CancelJob`: cancels what has not started and asks agents to stop
    /// what has.
    pub async fn cancel_job(
        &self,
        actor: &str,
        job_id: Uuid,
    ) -> Result<JobRecord, CoordinatorError> {
        let (job, transitions) = self.store.request_cancel(job_id, now_ms()).await?;
        self.after_transitions(&transitions).await?;
        for t in &transitions {
            if t.effects.contains(&TaskEffect::SendCancel) {
                self.store
                    .notify(Notification::CancelTask {
                        task: t.task.id,
                        agent: t.task.agent_id,
                    })
                    .await?;
            }
        }
        self.store.notify(Notification::JobEvents(job_id)).await?;
        let spec = JobSpec::parse(&job.kind, &job.spec_json).ok();
        match spec.as_ref().map(JobSpec::audit_scope) {
            Some((Some(app), env)) => {
                self.audit_app(
                    actor,
                    "job.cancel",
                    &job_id.to_string(),
                    app,
                    env,
                    String::new(),
                )
                .await
            }
            _ => {
                self.audit(actor, "job.cancel", &job_id.to_string(), String::new())
                    .await
            }
        }
        Ok(job)
    }

    /// Sends every pending task of these (locally connected) agents: an
    /// agent that has just connected.
    pub async fn dispatch(&self, agents: &[Uuid]) -> Result<(), StoreError> {
        if agents.is_empty() {
            return Ok(());
        }
        loop {
            let claimed = self
                .store
                .claim_pending_tasks(agents, &self.coordinator_id, now_ms(), CLAIM_BATCH)
                .await?;
            let n = claimed.len();
            self.send_claimed(claimed).await?;
            if n < CLAIM_BATCH as usize {
                return Ok(());
            }
        }
    }

    /// Sends the pending tasks of one job to those of its agents that are
    /// connected here. Which agents those are is checked in memory, task by
    /// task: no list of agents goes to the store, and each pending task is
    /// read once, so a job on 10,000 agents costs a few large claims rather
    /// than one per agent or per batch of agent ids.
    pub async fn dispatch_job(&self, job: Uuid) -> Result<(), StoreError> {
        let here = |agent: Uuid| self.sessions.is_online(agent);
        let mut after = None;
        loop {
            let batch = self
                .store
                .claim_job_tasks(
                    job,
                    after,
                    &here,
                    &self.coordinator_id,
                    now_ms(),
                    JOB_CLAIM_BATCH,
                )
                .await?;
            self.send_claimed(batch.claimed).await?;
            match batch.next {
                Some(next) => after = Some(next),
                None => return Ok(()),
            }
        }
    }

    /// Sends claimed tasks to their agents, then wakes their jobs' watchers.
    /// A job's secrets are resolved once for all its tasks in the batch.
    async fn send_claimed(&self, claimed: Vec<(TaskRecord, JobRecord)>) -> Result<(), StoreError> {
        let mut jobs: Vec<Uuid> = Vec::new();
        let mut secrets: HashMap<Uuid, Result<BTreeMap<String, String>, String>> = HashMap::new();
        for (task, job) in claimed {
            if !jobs.contains(&job.id) {
                jobs.push(job.id);
            }
            let job_secrets = match secrets.entry(job.id) {
                Entry::Occupied(known) => known.into_mut(),
                Entry::Vacant(new) => {
                    new.insert(self.task_secrets(&job).await.map_err(|e| e.to_string()))
                }
            };
            let job_secrets = job_secrets.as_ref().map_err(String::as_str);
            self.send_assign(&task, &job, job_secrets).await?;
        }
        for job in jobs {
            self.store.notify(Notification::JobEvents(job)).await?;
        }
        Ok(())
    }

    /// Pending work for agents connected here that no notification brought
    /// (one was missed, a send failed, a claim skipped a row another
    /// transaction held): one indexed query, which finds nothing in the
    /// steady state, then the jobs it names.
    async fn sweep_pending(&self) -> Result<(), StoreError> {
        if self.sessions.online_count() == 0 {
            return Ok(());
        }
        for job in self
            .store
            .jobs_pending_on(&self.coordinator_id, now_ms())
            .await?
        {
            self.dispatch_job(job).await?;
        }
        Ok(())
    }

    async fn send_assign(
        &self,
        task: &TaskRecord,
        job: &JobRecord,
        secrets: Result<&BTreeMap<String, String>, &str>,
    ) -> Result<(), StoreError> {
        let span = tracing::info_span!(
            parent: None,
            "task",
            task.id = %task.id,
            job.id = %job.id,
            agent = %task.agent_name,
            attempt = task.attempt
        );
        ferry_common::telemetry::set_parent(&span, &job.traceparent);
        let traceparent = Some(ferry_common::telemetry::traceparent_of(&span))
            .filter(|t| !t.is_empty())
            .unwrap_or_else(|| job.traceparent.clone());
        self.keep_span(task.id, span);
        // An agent is sent only kinds it said it runs; one that does not
        // (an older agent, or one whose agent.toml narrows them) gets the
        // task failed here, naming why, instead of a refusal later.
        if let Some(hello) = self.sessions.hello(task.agent_id)
            && !hello.runs(&job.kind)
        {
            let why = missing_kind(
                &task.agent_name,
                &hello.version,
                &hello.capabilities,
                &job.kind,
            );
            let t = self
                .store
                .transition_task(
                    task.id,
                    TaskEvent::Finished(Outcome::Failed),
                    &why,
                    now_ms(),
                )
                .await?;
            self.after_transitions(t.as_slice()).await?;
            return Ok(());
        }
        let secrets = match secrets {
            Ok(secrets) => secrets,
            Err(e) => {
                // Not sent at all: a deploy without its secrets must not start.
                let t = self
                    .store
                    .transition_task(task.id, TaskEvent::Finished(Outcome::Failed), e, now_ms())
                    .await?;
                self.after_transitions(t.as_slice()).await?;
                return Ok(());
            }
        };
        let assign = pb::Assign {
            task: Some(pb::Task {
                task_id: task.id.to_string(),
                job_id: job.id.to_string(),
                kind: job.kind.clone(),
                spec_json: job.spec_json.clone(),
                secrets: secrets
                    .iter()
                    .map(|(k, v)| (k.clone(), v.clone()))
                    .collect(),
            }),
            attempt: task.attempt,
            traceparent,
        };
        if !self
            .sessions
            .send(task.agent_id, pb::coordinator_message::Msg::Assign(assign))
        {
            // The session went away between claim and send: back to pending,
            // to be sent when the agent reconnects.
            self.store
                .transition_task(
                    task.id,
                    TaskEvent::Unassigned,
                    "agent disconnected before receiving the task",
                    now_ms(),
                )
                .await?;
        }
        Ok(())
    }

    /// The secret values a task needs, as its kind says
    /// ([`JobSpec::secret_names`], e.g. a deploy's services' secrets and
    /// registry credentials), decrypted just before they are sent.
    async fn task_secrets(
        &self,
        job: &JobRecord,
    ) -> Result<BTreeMap<String, String>, CoordinatorError> {
        let Ok(spec) = JobSpec::parse(&job.kind, &job.spec_json) else {
            return Ok(BTreeMap::new());
        };
        let names = spec.secret_names();
        if names.is_empty() {
            return Ok(BTreeMap::new());
        }
        let Some((app, env)) = spec.secret_scope() else {
            return Err(CoordinatorError::Internal(format!(
                "{} tasks name secrets but no app and environment to read them from",
                spec.kind()
            )));
        };
        self.resolve_secrets(app, env, &names).await
    }

    /// After `Hello`: acknowledges what the agent holds that is already
    /// stored, and settles tasks the store thinks it has but it does not.
    pub async fn reconcile(&self, agent: Uuid, held: &[pb::HeldTask]) -> Result<(), StoreError> {
        let held_ids: HashMap<Uuid, &pb::HeldTask> = held
            .iter()
            .filter_map(|h| Uuid::parse_str(&h.task_id).ok().map(|id| (id, h)))
            .collect();
        for (id, held) in &held_ids {
            if let Some(task) = self.store.get_task(*id).await? {
                self.sessions.send(
                    agent,
                    pb::coordinator_message::Msg::Ack(pb::Ack {
                        task_id: id.to_string(),
                        seq: task.last_seq,
                    }),
                );
            } else {
                // A task the store does not know (a wiped store?): let the agent drop it.
                self.sessions.send(
                    agent,
                    pb::coordinator_message::Msg::Ack(pb::Ack {
                        task_id: id.to_string(),
                        seq: held.last_seq,
                    }),
                );
            }
        }
        let mut touched = Vec::new();
        for task in self.store.active_tasks_for_agent(agent).await? {
            if held_ids.contains_key(&task.id) {
                continue;
            }
            let message = if task.last_seq == 0 {
                "the agent does not have the task; sending it again"
            } else {
                "the agent no longer holds this task (its state was lost)"
            };
            if self
                .store
                .transition_task(task.id, TaskEvent::Unassigned, message, now_ms())
                .await?
                .is_some()
            {
                touched.push(task.job_id);
            }
        }
        for job in touched {
            self.store.notify(Notification::JobEvents(job)).await?;
        }
        self.dispatch(&[agent]).await
    }

    /// Stores a batch of agent events and acknowledges them.
    async fn ingest(&self, batch: &[Inbound]) -> Result<(), StoreError> {
        let mut owner: HashMap<Uuid, Uuid> = HashMap::new();
        let events: Vec<IncomingEvent> = batch
            .iter()
            .filter_map(|i| {
                let e = incoming(&i.event)?;
                owner.insert(e.task_id, i.agent);
                Some(e)
            })
            .collect();
        if events.is_empty() {
            return Ok(());
        }
        let out = self.store.append_agent_events(&events, now_ms()).await?;
        for (task, seq) in &out.acks {
            if let Some(agent) = owner.get(task) {
                self.sessions.send(
                    *agent,
                    pb::coordinator_message::Msg::Ack(pb::Ack {
                        task_id: task.to_string(),
                        seq: *seq,
                    }),
                );
            }
        }
        self.after_transitions(&out.transitions).await?;
        for job in out.touched_jobs {
            self.store.notify(Notification::JobEvents(job)).await?;
        }
        Ok(())
    }

    async fn after_transitions(&self, transitions: &[Transition]) -> Result<(), StoreError> {
        for t in transitions {
            if t.task.state.is_final() {
                self.end_span(t.task.id);
            }
            if let Some(status) = t.job_finished {
                tracing::info!(job = %t.task.job_id, %status, "job finished");
                self.end_span(t.task.job_id);
            }
        }
        Ok(())
    }

    /// Time-based duties, on the leader only: expire tasks whose agents did
    /// not come back before the deadline, and mark tasks of agents away
    /// longer than the grace period as lost. Whether this process leads is
    /// kept in `Core::leading` for the other leader-only work (schedules).
    async fn leader_duties(&self) -> Result<(), StoreError> {
        let leading = self.store.try_lead().await;
        let is_leader = matches!(leading, Ok(true));
        self.leading
            .store(is_leader, std::sync::atomic::Ordering::Relaxed);
        if self.metrics.set_leader(is_leader) {
            if is_leader {
                tracing::info!(coordinator = %self.coordinator_id, "gained the leadership: running deadlines and lost-agent checks");
            } else {
                tracing::warn!(coordinator = %self.coordinator_id, "lost the leadership: another coordinator runs deadlines and lost-agent checks");
            }
        }
        if !leading? {
            return Ok(());
        }
        let now = now_ms();
        let mut transitions = self.store.expire_overdue_tasks(now).await?;
        let cutoff = now - self.config.lost_after.as_millis() as i64;
        transitions.extend(
            self.store
                .mark_tasks_of_absent_agents_lost(cutoff, now)
                .await?,
        );
        let mut jobs: Vec<Uuid> = transitions.iter().map(|t| t.task.job_id).collect();
        jobs.sort();
        jobs.dedup();
        self.after_transitions(&transitions).await?;
        for job in jobs {
            self.store.notify(Notification::JobEvents(job)).await?;
        }
        Ok(())
    }

    /// Writes the buffered heartbeats, and the live sessions' last-seen time
    /// (a connected agent is seen even between heartbeats).
    async fn flush_heartbeats(&self) -> Result<(), StoreError> {
        let beats: Vec<_> =
            std::mem::take(&mut *self.heartbeats.lock().unwrap_or_else(|p| p.into_inner()))
                .into_values()
                .collect();
        if let Err(e) = self.store.record_heartbeats(&beats).await {
            // Keep them for the next tick, unless newer ones arrived.
            let mut pending = self.heartbeats.lock().unwrap_or_else(|p| p.into_inner());
            for b in beats {
                pending.entry(b.id).or_insert(b);
            }
            return Err(e);
        }
        Ok(())
    }

    /// Ends local sessions of agents revoked elsewhere, in case the
    /// notification was missed.
    async fn sweep_revoked(&self) -> Result<(), StoreError> {
        if self.sessions.online_count() == 0 {
            return Ok(());
        }
        for agent in self.store.revoked_agent_ids().await? {
            if self.sessions.is_online(agent) {
                self.on_notification(Notification::AgentRevoked(agent))
                    .await?;
            }
        }
        Ok(())
    }

    async fn on_notification(&self, n: Notification) -> Result<(), StoreError> {
        match n {
            // Whichever of the job's agents are connected here; the sweep
            // catches anything else.
            Notification::JobSubmitted(job) => self.dispatch_job(job).await,
            Notification::CancelTask { task, agent } => {
                self.sessions.send(
                    agent,
                    pb::coordinator_message::Msg::Cancel(pb::Cancel {
                        task_id: task.to_string(),
                        reason: "the job was cancelled".into(),
                    }),
                );
                Ok(())
            }
            Notification::AgentRevoked(agent) => {
                self.sessions.kill(
                    agent,
                    tonic::Status::from(CoordinatorError::PermissionDenied {
                        reason: format!("agent {agent} has been revoked"),
                        refusal: "revoked",
                    }),
                );
                Ok(())
            }
            Notification::JobEvents(_) => Ok(()),
            // Submits and cancels announced while this process's listener
            // was away: pending work is found by the sweep, and cancels of
            // tasks running on agents here are sent again.
            Notification::Missed => {
                self.sweep_pending().await?;
                for agent in self.sessions.agents() {
                    for task in self.store.active_tasks_for_agent(agent).await? {
                        let cancelled = self
                            .store
                            .get_job(task.job_id)
                            .await?
                            .is_some_and(|job| job.cancel_requested);
                        if cancelled {
                            self.sessions.send(
                                agent,
                                pb::coordinator_message::Msg::Cancel(pb::Cancel {
                                    task_id: task.id.to_string(),
                                    reason: "the job was cancelled".into(),
                                }),
                            );
                        }
                    }
                }
                Ok(())
            }
        }
    }
}

/// Starts the scheduler's background tasks; they stop with `core.shutdown`.
/// Returns the sender sessions put agent events into.
pub fn start(core: &Arc<Core>, mut ingest_rx: mpsc::Receiver<Inbound>) {
    // The writer: one store transaction per batch of whatever has arrived.
    let c = Arc::clone(core);
    tokio::spawn(async move {
        let mut buf = Vec::with_capacity(INGEST_BATCH);
        loop {
            buf.clear();
            let n = tokio::select! {
                _ = c.shutdown.cancelled() => return,
                n = ingest_rx.recv_many(&mut buf, INGEST_BATCH) => n,
            };
            if n == 0 {
                return;
            }
            // A batch is retried until it is stored: dropping it would
            // leave the agent's later events behind a gap, its task running
            // and its rollout holding the lock. Storing is idempotent per
            // (task, seq), so a retry after a half-seen failure is safe;
            // meanwhile sessions wait on the full channel (backpressure).
            let mut wait = INGEST_RETRY_FIRST;
            let mut failures = 0u32;
            loop {
                match c.ingest(&buf).await {
                    Ok(()) => {
                        if failures > 0 {
                            tracing::info!(
                                events = n,
                                failures,
                                "stored agent events after the store came back"
                            );
                        }
                        break;
                    }
                    Err(e) => {
                        failures += 1;
                        if failures.is_power_of_two() {
                            tracing::error!(error = %e, events = n, failures, "could not store agent events; retrying until stored");
                        }
                        tokio::select! {
                            _ = c.shutdown.cancelled() => return,
                            _ = tokio::time::sleep(wait) => {}
                        }
                        wait = (wait * 2).min(INGEST_RETRY_MAX);
                    }
                }
            }
        }
    });

    // Notifications from this and other coordinators, and the sweep for
    // pending work they did not bring. One task, so that two dispatches
    // never run at once: they would compete for the same rows (one skipping
    // what the other holds) and for the same CPUs.
    let c = Arc::clone(core);
    tokio::spawn(async move {
        let mut rx = c.store.subscribe();
        let mut sweep = tokio::time::interval(TICK.min(c.config.heartbeat_interval));
        sweep.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = c.shutdown.cancelled() => return,
                n = rx.recv() => match n {
                    Ok(n) => {
                        if let Err(e) = c.on_notification(n).await {
                            tracing::warn!(error = %e, "handling a notification failed");
                        }
                    }
                    // Missed some: look for pending work, which is all a
                    // missed notification could have been about that
                    // matters here (revocations have their own sweep).
                    Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {
                        if let Err(e) = c.sweep_pending().await {
                            tracing::warn!(error = %e, "dispatch failed");
                        }
                    }
                    Err(tokio::sync::broadcast::error::RecvError::Closed) => return,
                },
                _ = sweep.tick() => {
                    if let Err(e) = c.sweep_pending().await {
                        tracing::warn!(error = %e, "dispatch failed");
                    }
                }
            }
        }
    });

    // The tick: heartbeats, revocations, and the leader's duties.
    let c = Arc::clone(core);
    tokio::spawn(async move {
        let mut ticker = tokio::time::interval(TICK.min(c.config.heartbeat_interval));
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut ticks: u64 = 0;
        loop {
            tokio::select! {
                _ = c.shutdown.cancelled() => return,
                _ = ticker.tick() => {}
            }
            ticks += 1;
            if let Err(e) = c.flush_heartbeats().await {
                tracing::warn!(error = %e, "could not record heartbeats");
            }
            if ticks.is_multiple_of(20)
                && let Err(e) = c.sweep_revoked().await
            {
                tracing::warn!(error = %e, "revocation sweep failed");
            }
            if let Err(e) = c.leader_duties().await {
                tracing::warn!(error = %e, "leader duties failed");
            }
        }
    });
}

/// Turns a stored job and its tasks into the wire form.
pub fn job_to_wire(job: JobRecord, tasks: Vec<TaskRecord>) -> pb::Job {
    let target: Selector = serde_json::from_str(&job.target_json).unwrap_or_default();
    let trace_id = job
        .traceparent
        .split('-')
        .nth(1)
        .unwrap_or_default()
        .to_string();
    pb::Job {
        id: job.id.to_string(),
        kind: job.kind,
        spec_json: job.spec_json,
        target: Some(pb::Selector {
            agents: target.agents,
            labels: target.labels.into_iter().collect(),
        }),
        status: job.status.as_str().into(),
        created_by: job.created_by,
        idempotency_key: job.idempotency_key.unwrap_or_default(),
        created_at_ms: job.created_at_ms,
        updated_at_ms: job.updated_at_ms,
        finished_at_ms: job.finished_at_ms.unwrap_or(0),
        deadline_ms: job.deadline_ms,
        cancel_requested: job.cancel_requested,
        tasks: tasks
            .into_iter()
            .map(|t| pb::JobTask {
                id: t.id.to_string(),
                agent_id: t.agent_id.to_string(),
                agent_name: t.agent_name,
                state: t.state.as_str().into(),
                attempt: t.attempt,
                last_seq: t.last_seq,
                started_at_ms: t.started_at_ms.unwrap_or(0),
                finished_at_ms: t.finished_at_ms.unwrap_or(0),
                message: t.message,
                result_json: t.result_json.unwrap_or_default(),
            })
            .collect(),
        last_seq: job.last_seq,
        trace_id,
    }
}

/// Labels in a selector from the wire.
pub fn selector_from_wire(s: Option<pb::Selector>) -> Selector {
    let s = s.unwrap_or_default();
    Selector {
        agents: s.agents,
        labels: s.labels.into_iter().collect::<BTreeMap<_, _>>(),
    }
}

/// "agent web-1 (ferry-agent 0.1.0) does not run deploy jobs; it runs
/// probe, smoke": why a task cannot go to an agent, and what to do.
fn missing_kind(agent: &str, version: &str, runs: &[String], kind: &str) -> String {
    format!(
        "agent {agent} (ferry-agent {version}) does not run {kind} jobs; it runs {}: \
         upgrade its ferry-agent, or allow {kind} in the `capabilities` of its agent.toml",
        if runs.is_empty() {
            "none".to_string()
        } else {
            runs.join(", ")
        }
    )
}

#[cfg(test)]
mod fuzz {
    //! Whatever bytes an agent's stream carries, decoding and turning them
    //! into store events never panics, and what `Hello` carries passes the
    //! wire checks or is refused with a message.

    use ferry_proto::v1 as pb;
    use proptest::prelude::*;
    use prost::Message;

    fn handle(bytes: &[u8]) {
        let Ok(msg) = pb::AgentMessage::decode(bytes) else {
            return;
        };
        match msg.msg {
            Some(pb::agent_message::Msg::TaskEvent(ev)) => {
                let _ = super::incoming(&ev);
            }
            Some(pb::agent_message::Msg::Hello(h)) => {
                for (field, value, max) in [
                    ("version", &h.version, crate::wire::MAX_VERSION),
                    ("hostname", &h.hostname, crate::wire::MAX_HOSTNAME),
                ] {
                    if let Err(e) = crate::wire::text(field, value, max) {
                        assert!(e.to_string().contains(field));
                    }
                }
                let _ = crate::wire::capabilities(&h.capabilities);
            }
            _ => {}
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 2048, ..ProptestConfig::default() })]

        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
            handle(&bytes);
        }

        /// Well-formed events with hostile contents: ids that are not
        /// UUIDs, huge seqs, any outcome number, any text.
        #[test]
        fn hostile_events_never_panic(
            task_id in "\\PC{0,40}",
            seq in any::<u64>(),
            attempt in any::<u32>(),
            outcome in any::<i32>(),
            text in "\\PC{0,200}",
        ) {
            let bodies = [
                pb::event_body::Body::TaskFinished(pb::TaskFinished {
                    outcome,
                    message: text.clone(),
                    result_json: text.clone(),
                }),
                pb::event_body::Body::StepStarted(pb::StepStarted {
                    step: text.clone(),
                    message: text.clone(),
                }),
                pb::event_body::Body::Log(pb::LogLine {
                    step: text.clone(),
                    stream: text.clone(),
                    line: text.clone(),
                }),
            ];
            for body in bodies {
                let ev = pb::TaskEvent {
                    task_id: task_id.clone(),
                    attempt,
                    seq,
                    at_ms: seq as i64,
                    body: Some(pb::EventBody { body: Some(body) }),
                };
                handle(&pb::AgentMessage {
                    msg: Some(pb::agent_message::Msg::TaskEvent(ev)),
                }.encode_to_vec());
            }
        }
    }
}
