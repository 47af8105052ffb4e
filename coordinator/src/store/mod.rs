//! The coordinator's state behind one interface, [`Store`], with two
//! backends: [`sqlite`] (the embedded default: one file, no server) and
//! [`postgres`] (production; several coordinators may share it). Schema
//! migrations live in `migrations/sqlite` and `migrations/postgres` at the
//! workspace root and run when a store is opened. [`conformance`] is the one
//! test suite both backends must pass.
//!
//! Timestamps are milliseconds since the Unix epoch. Labels and host health
//! are stored as JSON text.

use std::collections::BTreeMap;
use std::sync::Arc;

use async_trait::async_trait;
use ferry_common::identity::Role;
use uuid::Uuid;

use crate::job::TaskEvent;
pub use jobs::{
    AppendOutcome, IncomingEvent, JobClaim, JobEventRecord, JobFilter, JobRecord, JobStart, NewJob,
    NewTask, Notification, StartedJob, TaskRecord, Transition,
};
pub use rollouts::{RolloutRecord, RolloutStatus, RolloutUpdate};

mod engine;
pub mod jobs;
pub mod postgres;
pub mod rollouts;
mod rows;
pub mod sqlite;

#[cfg(any(test, feature = "conformance"))]
pub mod conformance;

/// Which backend a store runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

impl Backend {
    pub fn as_str(self) -> &'static str {
        match self {
            Backend::Sqlite => "sqlite",
            Backend::Postgres => "postgres",
        }
    }
}

/// An enrolled agent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AgentRecord {
    pub id: Uuid,
    pub name: String,
    pub hostname: String,
    pub labels: BTreeMap<String, String>,
    pub version: String,
    pub enrolled_at_ms: i64,
    /// Last hello or heartbeat; 0 if never connected.
    pub last_seen_ms: i64,
    /// The coordinator holding its session, if any.
    pub connected_to: Option<String>,
    pub revoked_at_ms: Option<i64>,
    pub cert_serial: String,
    pub cert_not_after_ms: i64,
    /// Last reported host health (JSON of `ferry_proto::v1::HostHealth`'s
    /// serde mirror, opaque to the store).
    pub health_json: Option<String>,
}

/// One agent's latest heartbeat, as flushed to the store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Heartbeat {
    pub id: Uuid,
    pub seen_ms: i64,
    pub health_json: Option<String>,
}

/// What enrollment inserts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewAgent {
    pub id: Uuid,
    pub name: String,
    pub hostname: String,
    pub labels: BTreeMap<String, String>,
    pub version: String,
    pub cert_serial: String,
    pub cert_not_after_ms: i64,
}

/// A one-time join token; only the SHA-256 hash of the secret is stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JoinTokenRecord {
    pub token_hash: String,
    /// The name the enrolling agent gets, if the admin chose one.
    pub name: Option<String>,
    pub labels: BTreeMap<String, String>,
    pub created_by: String,
    pub created_at_ms: i64,
    pub expires_at_ms: i64,
    pub used_at_ms: Option<i64>,
    pub used_by: Option<Uuid>,
}

/// An operator (a person or a CI system using the CLI).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OperatorRecord {
    pub name: String,
    pub role: Role,
    pub created_at_ms: i64,
    pub created_by: String,
    pub revoked_at_ms: Option<i64>,
}

/// One line of the audit log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditEntry {
    pub at_ms: i64,
    /// SPIFFE URI or "system".
    pub actor: String,
    /// e.g. "token.create", "agent.enroll", "agent.revoke", "operator.add".
    pub action: String,
    pub target: String,
    pub detail: String,
}

/// One secret as stored: the value sealed by [`crate::secrets`], never the
/// plaintext. The store neither encrypts nor decrypts, so a copy of the
/// database (a backup, a replica, a leaked dump) reveals no value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SecretRecord {
    pub app: String,
    pub env: String,
    /// An environment variable name.
    pub name: String,
    pub nonce: Vec<u8>,
    /// The sealed value with its authentication tag.
    pub ciphertext: Vec<u8>,
    /// When the secret was first set; replacing it keeps this.
    pub created_at_ms: i64,
    pub updated_at_ms: i64,
    /// SPIFFE URI of the operator who last set it.
    pub updated_by: String,
}

/// What listing secrets shows: everything but the sealed value, so a
/// listing cannot leak one even to a reader holding the key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SecretMeta {
    pub app: String,
    pub env: String,
    pub name: String,
    pub created_at_ms: i64,
    pub updated_at_ms: i64,
    pub updated_by: String,
}

/// Errors of the store boundary. The first group are refusals a caller can
/// act on; the rest are failures of the database itself.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("join token not recognised")]
    TokenUnknown,
    #[error(
        "join token was already used (at {used_at}); create a new one with `ferry token create`"
    )]
    TokenUsed { used_at: String },
    #[error("join token expired at {expired_at}; create a new one with `ferry token create`")]
    TokenExpired { expired_at: String },
    #[error(
        "an agent named {name:?} is already enrolled; revoke it first (`ferry agent revoke {name}`) or choose another name"
    )]
    AgentNameTaken { name: String },
    #[error("no agent named or with id {0:?}")]
    AgentNotFound(String),
    #[error("agent {name:?} is already revoked")]
    AgentAlreadyRevoked { name: String },
    #[error("operator {name:?} already exists")]
    OperatorExists { name: String },
    #[error("operator {name:?} was revoked; a revoked name cannot be reused, choose another")]
    OperatorRevoked { name: String },
    #[error("no operator named {0:?}")]
    OperatorNotFound(String),
    #[error("no job with id {0}")]
    JobNotFound(Uuid),
    #[error(
        "{app} {env} is being deployed: rollout {} of version {} by {}, started {}; \
         wait for it (`ferry deploy --wait`) or follow it with `ferry releases --app {app} --env {env}`",
        running.id, running.version, running.created_by,
        ferry_common::time::rfc3339_ms(running.created_at_ms),
        app = running.app, env = running.env
    )]
    RolloutInProgress { running: Box<RolloutRecord> },
    #[error("no rollout with id {0}")]
    RolloutNotFound(Uuid),
    #[error("store: row in {table} is corrupt: {reason}")]
    Corrupt { table: &'static str, reason: String },
    #[error("store: {0}")]
    Database(#[from] sqlx::Error),
    #[error("store: schema migration failed: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    #[error(
        "store: {url:?} is not a store location; use a file path, sqlite://PATH or postgres://USER:PASSWORD@HOST/DB"
    )]
    BadUrl { url: String },
}

/// The coordinator's persistent state. Every method is one transaction.
#[async_trait]
pub trait Store: Send + Sync + 'static {
    fn backend(&self) -> Backend;

    /// Cheap round trip, for `/readyz`.
    async fn ping(&self) -> Result<(), StoreError>;

    /// On the very first start of a store (recorded in a meta table), adds
    /// the admin operator `name`. Returns whether it did. Never re-adds it
    /// later, even if every operator has since been revoked.
    async fn bootstrap_admin(&self, name: &str, now_ms: i64) -> Result<bool, StoreError>;

    // --- join tokens ---------------------------------------------------
    async fn insert_join_token(&self, token: &JoinTokenRecord) -> Result<(), StoreError>;
    async fn get_join_token(&self, token_hash: &str)
    -> Result<Option<JoinTokenRecord>, StoreError>;

    /// Atomically: checks the token is known, unused and unexpired at
    /// `now_ms` (else `TokenUnknown` / `TokenUsed` / `TokenExpired`), checks
    /// no unrevoked agent has `agent.name` (else `AgentNameTaken`, and the
    /// token stays usable), inserts the agent and marks the token used.
    async fn enroll_agent(
        &self,
        token_hash: &str,
        now_ms: i64,
        agent: &NewAgent,
    ) -> Result<AgentRecord, StoreError>;

    // --- agents --------------------------------------------------------
    async fn get_agent(&self, id: Uuid) -> Result<Option<AgentRecord>, StoreError>;
    /// By id (if `name_or_id` parses as a UUID) or by name; by name, an
    /// unrevoked agent wins over revoked ones, then the newest.
    async fn find_agent(&self, name_or_id: &str) -> Result<Option<AgentRecord>, StoreError>;
    /// All agents, revoked ones included, ordered by name then enrollment.
    async fn list_agents(&self) -> Result<Vec<AgentRecord>, StoreError>;
    /// The ids of the revoked agents, in id order: what the revocation
    /// sweep needs, without reading every agent.
    async fn revoked_agent_ids(&self) -> Result<Vec<Uuid>, StoreError>;
    /// A session opened on `coordinator_id`.
    async fn agent_connected(
        &self,
        id: Uuid,
        coordinator_id: &str,
        version: &str,
        hostname: &str,
        now_ms: i64,
    ) -> Result<(), StoreError>;
    /// Records a batch of heartbeats in one transaction: `last_seen_ms`
    /// (never moved backwards) and, when given, `health_json`. Unknown ids
    /// are ignored: heartbeats are buffered and flushed in batches, so the
    /// agent may be gone by then.
    async fn record_heartbeats(&self, beats: &[Heartbeat]) -> Result<(), StoreError>;
    /// A session closed; clears `connected_to` only if it is still
    /// `coordinator_id` (the agent may already be on another coordinator).
    async fn agent_disconnected(
        &self,
        id: Uuid,
        coordinator_id: &str,
        now_ms: i64,
    ) -> Result<(), StoreError>;
    async fn agent_cert_renewed(
        &self,
        id: Uuid,
        serial: &str,
        not_after_ms: i64,
    ) -> Result<(), StoreError>;
    /// Marks the agent revoked (`AgentNotFound`, `AgentAlreadyRevoked`).
    async fn revoke_agent(&self, id: Uuid, now_ms: i64) -> Result<AgentRecord, StoreError>;

    // --- operators -----------------------------------------------------
    /// `OperatorExists` if the name is active, `OperatorRevoked` if it was revoked.
    async fn add_operator(&self, op: &OperatorRecord) -> Result<(), StoreError>;
    async fn get_operator(&self, name: &str) -> Result<Option<OperatorRecord>, StoreError>;
    async fn list_operators(&self) -> Result<Vec<OperatorRecord>, StoreError>;
    /// `OperatorNotFound`; revoking twice keeps the first time.
    async fn revoke_operator(&self, name: &str, now_ms: i64) -> Result<OperatorRecord, StoreError>;

    // --- audit ---------------------------------------------------------
    async fn append_audit(&self, entry: &AuditEntry) -> Result<(), StoreError>;
    /// Newest first.
    async fn list_audit(&self, limit: u32) -> Result<Vec<AuditEntry>, StoreError>;

    // --- secrets -------------------------------------------------------
    // Values arrive sealed (`crate::secrets`); the store never sees a
    // plaintext and has no way to produce one.

    /// Inserts the secret, or replaces the one with the same `(app, env,
    /// name)`: nonce, ciphertext, `updated_at_ms` and `updated_by` change,
    /// the first `created_at_ms` stays.
    async fn put_secret(&self, secret: &SecretRecord) -> Result<(), StoreError>;
    /// Those of `names` that exist for `(app, env)`, in name order; names
    /// without a secret are left out (the caller reports them) and an empty
    /// `names` gives an empty list.
    async fn get_secrets(
        &self,
        app: &str,
        env: &str,
        names: &[String],
    ) -> Result<Vec<SecretRecord>, StoreError>;
    /// The secrets of `app` (of one env, if given), without their values,
    /// ordered by env then name.
    async fn list_secrets(
        &self,
        app: &str,
        env: Option<&str>,
    ) -> Result<Vec<SecretMeta>, StoreError>;
    /// Deletes one secret; returns whether it existed.
    async fn delete_secret(&self, app: &str, env: &str, name: &str) -> Result<bool, StoreError>;

    // --- jobs ----------------------------------------------------------
    // Every task state change below goes through `crate::job::apply_task`
    // on the state read inside the same transaction (SELECT … FOR UPDATE on
    // PostgreSQL, a write transaction on SQLite), and appends a
    // `TaskStateChanged` job event. When a change leaves every task of the
    // job final, the job's status is set with `crate::job::apply_job` /
    // `final_status` (cancelled if `cancel_requested`) and a `JobFinished`
    // event is appended, in the same transaction. Bodies of the events the
    // store writes itself are built with `rows`-level helpers from
    // `ferry_proto::v1::EventBody`.

    /// In one transaction: inserts the job (status `pending`) and its tasks
    /// (`pending`, attempt 0), appends `start.notes` in order, claims the
    /// tasks whose agent `start.here` accepts (as `claim_pending_tasks`
    /// does; the job becomes `running` if any is claimed) and writes
    /// `start.audit`. With an idempotency key that already exists, changes
    /// nothing and returns the existing job, `created: false`.
    async fn start_job(&self, start: &JobStart<'_>) -> Result<StartedJob, StoreError>;

    /// [`Store::start_job`] with no events, claims or audit entry: the job
    /// and its `pending` tasks. Returns the job and whether it is new.
    async fn create_job(
        &self,
        job: &NewJob,
        tasks: &[NewTask],
    ) -> Result<(JobRecord, bool), StoreError> {
        let started = self
            .start_job(&JobStart {
                job,
                tasks,
                notes: &[],
                here: &|_| false,
                coordinator_id: "",
                audit: None,
                now_ms: job.created_at_ms,
            })
            .await?;
        Ok((started.job, started.created))
    }
    async fn get_job(&self, id: Uuid) -> Result<Option<JobRecord>, StoreError>;
    /// Newest first, at most `filter.limit` (0 means 50).
    async fn list_jobs(&self, filter: &JobFilter) -> Result<Vec<JobRecord>, StoreError>;
    /// Ordered by agent name.
    async fn list_tasks(&self, job_id: Uuid) -> Result<Vec<TaskRecord>, StoreError>;
    async fn get_task(&self, id: Uuid) -> Result<Option<TaskRecord>, StoreError>;
    /// The agent's tasks in state `assigned` or `running`.
    async fn active_tasks_for_agent(&self, agent_id: Uuid) -> Result<Vec<TaskRecord>, StoreError>;

    /// Appends an event the coordinator writes (e.g. "waiting for agent
    /// web-1"), with the next job seq. `JobNotFound` if the job is unknown.
    async fn append_coordinator_event(
        &self,
        job_id: Uuid,
        task_id: Option<Uuid>,
        body: &[u8],
        at_ms: i64,
    ) -> Result<u64, StoreError> {
        self.append_coordinator_events(job_id, &[(task_id, body.to_vec())], at_ms)
            .await
    }

    /// Appends several such events in one transaction, in order; returns
    /// the last one's seq (0 if `events` is empty).
    async fn append_coordinator_events(
        &self,
        job_id: Uuid,
        events: &[(Option<Uuid>, Vec<u8>)],
        at_ms: i64,
    ) -> Result<u64, StoreError>;

    /// Claims up to `limit` `pending` tasks of these agents whose job is
    /// not final and whose deadline is after `now_ms`, skipping rows another
    /// coordinator holds locked (`FOR UPDATE SKIP LOCKED`): each becomes
    /// `assigned` (`TaskEvent::Assigned`), attempt + 1, `assigned_by =
    /// coordinator_id`; a `pending` job becomes `running`. Returns each
    /// claimed task (after) with its job.
    async fn claim_pending_tasks(
        &self,
        agent_ids: &[Uuid],
        coordinator_id: &str,
        now_ms: i64,
        limit: u32,
    ) -> Result<Vec<(TaskRecord, JobRecord)>, StoreError>;

    /// Claims a job's `pending` tasks for the agents `here` accepts (the
    /// caller's live sessions), a batch at a time, as `claim_pending_tasks`
    /// does, if the job is not final and its deadline is after `now_ms`.
    /// A batch looks at the next `limit` pending tasks of the job in task id
    /// order after `after` (from the start if `None`), without locks, keeps
    /// those whose agent is `here`, locks them by id skipping rows another
    /// coordinator holds (`FOR NO KEY UPDATE SKIP LOCKED`) and checks them
    /// again once locked: a task claimed, cancelled or expired meanwhile is
    /// left out. No list of agents goes to the database, and each pending
    /// task is read once per pass, so a new job reaches every agent
    /// connected here in a few large batches.
    async fn claim_job_tasks(
        &self,
        job_id: Uuid,
        after: Option<Uuid>,
        here: &(dyn Fn(Uuid) -> bool + Send + Sync),
        coordinator_id: &str,
        now_ms: i64,
        limit: u32,
    ) -> Result<JobClaim, StoreError>;

    /// The jobs (distinct, in id order) that have a `pending` task claimable
    /// at `now_ms` (job not final, deadline after `now_ms`) whose agent's
    /// session is recorded on `coordinator_id` (`agent_connected`, not yet
    /// `agent_disconnected`). One indexed query that finds nothing in the
    /// steady state: the scheduler asks it on every tick, to catch work a
    /// missed notification or a failed send left behind.
    async fn jobs_pending_on(
        &self,
        coordinator_id: &str,
        now_ms: i64,
    ) -> Result<Vec<Uuid>, StoreError>;

    /// Applies `event` to the task, with `message` as the task's new
    /// message when its state changes. `Ok(None)` if the task is unknown or
    /// the transition is invalid (nothing written).
    async fn transition_task(
        &self,
        task_id: Uuid,
        event: TaskEvent,
        message: &str,
        now_ms: i64,
    ) -> Result<Option<Transition>, StoreError>;

    /// Stores agents' events, in one transaction for the whole batch. Per
    /// task: events with `seq <= last_seq` are duplicates and skipped;
    /// events continuing `last_seq + 1, + 2, …` are stored, each with the
    /// next job seq, and applied (`machine_event`; `message` and
    /// `result_json` when given; `started_at_ms` on the first); the first
    /// gap drops the rest of that task's events (the agent sends them
    /// again). Events of unknown tasks are ignored. Must sustain tens of
    /// thousands of events per second: multi-row inserts, one job-seq
    /// update per job per batch.
    async fn append_agent_events(
        &self,
        events: &[IncomingEvent],
        now_ms: i64,
    ) -> Result<AppendOutcome, StoreError>;

    /// Job events with `seq > after_seq`, in order, at most `limit`.
    async fn job_events_after(
        &self,
        job_id: Uuid,
        after_seq: u64,
        limit: u32,
    ) -> Result<Vec<JobEventRecord>, StoreError>;

    /// Sets `cancel_requested` and applies `TaskEvent::CancelRequested` to
    /// every task that is not final, `lost` ones included (they become
    /// `cancelled`). A job already final is left as it is (`apply_job`
    /// gives no `CancelTasks`). `JobNotFound` if unknown. Returns the job
    /// after and the transitions that changed a state or carry an effect
    /// (those with `SendCancel` must reach their agents).
    async fn request_cancel(
        &self,
        job_id: Uuid,
        now_ms: i64,
    ) -> Result<(JobRecord, Vec<Transition>), StoreError>;

    /// `TaskEvent::DeadlinePassed` for every `pending` task whose job's
    /// deadline is at or before `now_ms`.
    async fn expire_overdue_tasks(&self, now_ms: i64) -> Result<Vec<Transition>, StoreError>;

    /// `TaskEvent::AgentGone` for every `assigned`/`running` task whose
    /// agent's `last_seen_ms` is before `seen_before_ms`, with the message
    /// "agent NAME has been away since …".
    async fn mark_tasks_of_absent_agents_lost(
        &self,
        seen_before_ms: i64,
        now_ms: i64,
    ) -> Result<Vec<Transition>, StoreError>;

    // --- rollouts --------------------------------------------------------
    // A running rollout is the (app, env) deploy lock; its `owner` drives
    // it and keeps its lease alive with `update_rollout`.

    /// Inserts a `running` rollout owned by `rollout.owner`.
    /// `RolloutInProgress` (with the running one) if (app, env) already has
    /// a running rollout; nothing is written then.
    async fn create_rollout(&self, rollout: &RolloutRecord) -> Result<(), StoreError>;
    async fn get_rollout(&self, id: Uuid) -> Result<Option<RolloutRecord>, StoreError>;
    /// The rollouts of `app` (of one env, if given), newest first, at most
    /// `limit` (0 means 20).
    async fn list_rollouts(
        &self,
        app: &str,
        env: Option<&str>,
        limit: u32,
    ) -> Result<Vec<RolloutRecord>, StoreError>;
    /// Writes progress, renews the lease and, with a final status, ends the
    /// rollout (`finished_at_ms = now_ms`), which releases the lock. Only
    /// while it is `running` and owned by `owner`; returns whether it was
    /// (false: another coordinator took it over, stop driving it).
    async fn update_rollout(
        &self,
        id: Uuid,
        owner: &str,
        update: &RolloutUpdate,
        now_ms: i64,
    ) -> Result<bool, StoreError>;
    /// Takes over every `running` rollout whose lease expired before
    /// `now_ms` (its coordinator died): `owner` and the lease become the
    /// caller's. Returns those taken.
    async fn claim_abandoned_rollouts(
        &self,
        owner: &str,
        now_ms: i64,
        lease_expires_at_ms: i64,
    ) -> Result<Vec<RolloutRecord>, StoreError>;

    // --- coordination --------------------------------------------------

    /// Receives notifications from this process and (PostgreSQL) from
    /// every coordinator sharing the store.
    fn subscribe(&self) -> tokio::sync::broadcast::Receiver<Notification>;
    /// Publishes to every subscriber of every coordinator sharing the store
    /// (PostgreSQL: `NOTIFY ferry_events`), this one included.
    async fn notify(&self, notification: Notification) -> Result<(), StoreError>;
    /// Whether this process is the leader that runs time-based duties.
    /// SQLite: always. PostgreSQL: holds a session advisory lock on a
    /// dedicated connection; if that connection is lost, tries again.
    async fn try_lead(&self) -> Result<bool, StoreError>;
}

/// Opens (and migrates) the store at `location`: `postgres://…` or
/// `postgresql://…` for PostgreSQL; `sqlite://PATH` or a plain path for
/// SQLite (the file is created if missing).
pub async fn open(location: &str) -> Result<Arc<dyn Store>, StoreError> {
    if location.starts_with("postgres://") || location.starts_with("postgresql://") {
        Ok(Arc::new(postgres::PgStore::connect(location).await?))
    } else if location.is_empty() {
        Err(StoreError::BadUrl {
            url: location.into(),
        })
    } else {
        let path = location.strip_prefix("sqlite://").unwrap_or(location);
        Ok(Arc::new(
            sqlite::SqliteStore::open(std::path::Path::new(path)).await?,
        ))
    }
}

#[cfg(test)]
mod tests;
