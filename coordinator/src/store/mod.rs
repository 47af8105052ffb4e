//! The coordinator's state: one [`Store`], on either of two backends,
//! [`sqlite`] (the embedded default: one file, no server) and [`postgres`]
//! (production; several coordinators may share it). Schema migrations live
//! in `migrations/sqlite` and `migrations/postgres` at the workspace root
//! and run when a store is opened. `conformance` is the one test suite
//! both backends must pass.
//!
//! Every query is written once, in SQL both engines accept, and runs on
//! whichever backend the store was opened on through `db`'s runtime
//! dispatch (`$N` placeholders, typed args, rows read through
//! `rows::Columns`). `Store` is a concrete struct rather than a trait with
//! two implementations: with the SQL shared there is nothing left to
//! implement twice, and a struct's inherent methods can be split across
//! the modules below, one per concern, each holding its record types and
//! its queries:
//!
//! - [`agents`]: agents, their sessions and heartbeats;
//! - [`tokens`]: join tokens and enrollment (certificates issued);
//! - [`operators`]: operators and their roles;
//! - [`audit`]: the audit log;
//! - [`ids`]: job and rollout ids given by a unique part;
//! - [`backups`]: the backup catalogue and each (app, env)'s database
//!   settings;
//! - [`schedules`]: cron schedules of backup, verify and prune runs,
//!   claimed by compare-and-set;
//! - [`migrations`]: one migrate job per (app, env, database) at a time;
//! - [`secrets`]: sealed secrets;
//! - [`jobs`]: jobs, tasks and job events, with its child `jobs::engine`
//!   holding the job logic once (state machines, locking order, seqs) over
//!   `JobTx`;
//! - [`rollouts`]: rollouts and releases, the (app, env) deploy lock;
//! - `meta`: backend, ping, the one-time admin bootstrap, notifications
//!   and leadership;
//! - `notify`: what coordinators tell each other, and its wire form on
//!   PostgreSQL's `NOTIFY` channel;
//! - `db`: the dispatch layer, and the few places the engines really
//!   differ (write transactions, row locks, id lists, multi-row
//!   statements), each commented with why;
//! - [`sqlite`] / [`postgres`]: opening and migrating each; PostgreSQL's
//!   LISTEN/NOTIFY listener and leader election;
//! - `rows`: decoding rows into records, shared refusal decisions.
//!
//! Every method is one transaction (or one statement). Timestamps are
//! milliseconds since the Unix epoch. Labels and host health are stored as
//! JSON text.

use std::sync::Arc;

use tokio::sync::broadcast;
use uuid::Uuid;

pub use agents::{AgentHello, AgentRecord, Heartbeat};
pub use audit::{AuditEntry, AuditFilter};
pub use backups::{BackupFilter, BackupRecord, DatabaseSettings};
pub use jobs::{
    AppendOutcome, IncomingEvent, JobClaim, JobEventRecord, JobFilter, JobRecord, JobStart, NewJob,
    NewTask, Notification, StartedJob, TaskRecord, Transition,
};
pub use migrations::MigrationClaim;
pub use operators::OperatorRecord;
pub use rollouts::{RolloutKind, RolloutRecord, RolloutStatus, RolloutUpdate};
pub use schedules::{
    Applied, Claim, NewSchedule, RunOutcome, ScheduleFilter, ScheduleKind, ScheduleRecord,
    ScheduleSource,
};
pub use secrets::{SecretMeta, SecretRecord};
pub use tokens::{JoinTokenRecord, NewAgent};

pub mod agents;
pub mod audit;
pub mod backups;
mod db;
pub mod ids;
pub mod jobs;
mod meta;
pub mod migrations;
mod notify;
pub mod operators;
pub mod postgres;
pub mod rollouts;
mod rows;
pub mod schedules;
pub mod secrets;
pub mod sqlite;
pub mod tokens;

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

/// The coordinator's persistent state. Every method is one transaction.
/// Opened with [`open`], [`Store::open_sqlite`] or
/// [`Store::connect_postgres`]; its methods are in the concern modules.
pub struct Store {
    pool: db::Pool,
    /// Local subscribers; on PostgreSQL fed by the listener.
    notifications: broadcast::Sender<Notification>,
    /// PostgreSQL only: the listener and this process's leader lease.
    postgres: Option<postgres::Coordination>,
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
    #[error("no backup with id {0} (see `ferry backup ls`)")]
    BackupNotFound(Uuid),
    #[error(
        "{app} {env} is being deployed: rollout {} ({} of version {}) by {}, started {}; \
         follow it with `ferry rollout {}`, or wait for it (`--wait`)",
        running.id, running.kind, running.version, running.created_by,
        ferry_common::time::rfc3339_ms(running.created_at_ms), running.id,
        app = running.app, env = running.env
    )]
    RolloutInProgress { running: Box<RolloutRecord> },
    #[error("no schedule with id {0} (see `ferry schedule ls`)")]
    ScheduleNotFound(Uuid),
    #[error("no rollout with id {0}")]
    RolloutNotFound(Uuid),
    #[error(
        "database {} of {} {} is being migrated: {}, claimed by {} at {}; follow it with `ferry watch JOB`, or wait for it to end and run again",
        running.database, running.app, running.env,
        running.job_id.map(|j| format!("job {j}")).unwrap_or_else(|| "a job being submitted".into()),
        running.claimed_by, ferry_common::time::rfc3339_ms(running.claimed_at_ms)
    )]
    MigrationRunning { running: Box<MigrationClaim> },
    #[error(
        "{text:?} is not a {what} id: give the whole id or at least 8 of its characters (hex digits and dashes; see `{listed_by}`)"
    )]
    BadId {
        what: &'static str,
        text: String,
        listed_by: &'static str,
    },
    #[error("no {what} id starts or ends with {text:?} (see `{listed_by}`)")]
    IdNotFound {
        what: &'static str,
        text: String,
        listed_by: &'static str,
    },
    #[error("{text:?} matches several {what} ids ({}); give more characters", matches.join(", "))]
    IdAmbiguous {
        what: &'static str,
        text: String,
        matches: Vec<String>,
    },
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

/// Opens (and migrates) the store at `location`: `postgres://…` or
/// `postgresql://…` for PostgreSQL; `sqlite://PATH` or a plain path for
/// SQLite (the file is created if missing).
pub async fn open(location: &str) -> Result<Arc<Store>, StoreError> {
    if location.starts_with("postgres://") || location.starts_with("postgresql://") {
        Ok(Arc::new(Store::connect_postgres(location).await?))
    } else if location.is_empty() {
        Err(StoreError::BadUrl {
            url: location.into(),
        })
    } else {
        let path = location.strip_prefix("sqlite://").unwrap_or(location);
        Ok(Arc::new(
            Store::open_sqlite(std::path::Path::new(path)).await?,
        ))
    }
}

#[cfg(test)]
mod tests;
