//! The PostgreSQL backend, for production: several coordinators may share
//! one database, so every check-then-write is made safe against the others.
//!
//! Enrollment locks the token row (`SELECT … FOR UPDATE`) for the length of
//! its transaction, and the partial unique index on live agent names settles
//! two enrollments of one name through different tokens. The bootstrap
//! relies on `INSERT … ON CONFLICT DO NOTHING` on its `meta` key, which makes
//! a concurrent second inserter wait for the first and then do nothing.
//!
//! The job methods lock the task rows they change, then their jobs, each
//! in id order (see [`super::engine`]), with `FOR NO KEY UPDATE`: the lock
//! an `UPDATE` of non-key columns takes anyway, which unlike `FOR UPDATE`
//! lets foreign-key checks of other transactions through. Claims skip rows
//! other coordinators hold (`SKIP LOCKED`), so no task is claimed twice.
//!
//! Coordinators wake each other with `NOTIFY ferry_events`: a task started
//! by [`PgStore::connect`] listens on a connection of its own and forwards
//! what it hears to [`Store::subscribe`]rs until the store is dropped. The
//! leader is whoever holds a session advisory lock on a dedicated
//! connection.

use std::str::FromStr;
use std::time::Duration;

use async_trait::async_trait;
use ferry_common::identity::Role;
use sqlx::postgres::{PgConnectOptions, PgConnection, PgListener, PgPool, PgPoolOptions, Postgres};
use sqlx::{Connection, Transaction};
use tokio::sync::{Mutex, broadcast};
use tokio_util::sync::{CancellationToken, DropGuard};
use uuid::Uuid;

use super::engine::{self, JobTx, NOTIFY_CHANNEL, NewEvent};

use super::rollouts::{RolloutRecord, RolloutUpdate};
use super::rows::{self, EmbeddedMigration, sql_int};
use super::{
    AgentRecord, AppendOutcome, AuditEntry, Backend, Heartbeat, IncomingEvent, JobClaim,
    JobEventRecord, JobFilter, JobRecord, JobStart, JoinTokenRecord, NewAgent, NewTask,
    Notification, OperatorRecord, SecretMeta, SecretRecord, StartedJob, Store, StoreError,
    TaskRecord, Transition,
};
use crate::job::{TaskEvent, TaskState};

pub(crate) const MIGRATIONS: &[EmbeddedMigration] = &[
    (
        1,
        "foundation",
        include_str!("../../../migrations/postgres/0001_foundation.sql"),
    ),
    (
        2,
        "jobs",
        include_str!("../../../migrations/postgres/0002_jobs.sql"),
    ),
    (
        3,
        "secrets",
        include_str!("../../../migrations/postgres/0003_secrets.sql"),
    ),
    (
        4,
        "rollouts",
        include_str!("../../../migrations/postgres/0004_rollouts.sql"),
    ),
];

/// The index that allows one live agent per name (see the migrations).
const ACTIVE_NAME_INDEX: &str = "agents_active_name";

/// The session advisory lock whose holder is the leader ("ferry-ld").
pub(super) const LEADER_LOCK_KEY: i64 = 0x6665_7272_792d_6c64;

/// Notifications a slow subscriber may lag behind before it misses some.
const NOTIFICATION_BUFFER: usize = 1024;

/// Waits between attempts to get the listener's connection back.
const LISTEN_RETRY_MIN: Duration = Duration::from_millis(100);
const LISTEN_RETRY_MAX: Duration = Duration::from_secs(10);

pub struct PgStore {
    pool: PgPool,
    options: PgConnectOptions,
    notifications: broadcast::Sender<Notification>,
    leadership: Mutex<Leadership>,
    /// Ends the notification listener when the store is dropped.
    _listener: DropGuard,
}

/// The connection holding (or trying for) the leader lock.
#[derive(Default)]
struct Leadership {
    conn: Option<PgConnection>,
    held: bool,
}

impl PgStore {
    super::rollouts::rollout_methods!();

    /// Connects to the database at `url` and applies pending migrations;
    /// concurrent coordinators wait for each other's migration.
    pub async fn connect(url: &str) -> Result<Self, StoreError> {
        let options = PgConnectOptions::from_str(url).map_err(|_| StoreError::BadUrl {
            url: without_credentials(url),
        })?;
        migrate(&options).await?;
        let pool = PgPoolOptions::new().connect_with(options.clone()).await?;
        // Listening before returning: a notification sent once `connect`
        // is done reaches this store's subscribers.
        let listener = listen(&options).await?;
        let notifications = broadcast::Sender::new(NOTIFICATION_BUFFER);
        let stop = CancellationToken::new();
        tokio::spawn(forward_notifications(
            listener,
            notifications.clone(),
            stop.clone(),
        ));
        Ok(Self {
            pool,
            options,
            notifications,
            leadership: Mutex::new(Leadership::default()),
            _listener: stop.drop_guard(),
        })
    }

    /// A transaction of the job methods, at `READ COMMITTED` whatever the
    /// server's default: they count a job's tasks after locking the job and
    /// must see what committed before the lock was granted.
    async fn begin_job_tx(&self) -> Result<Transaction<'static, Postgres>, StoreError> {
        Ok(self
            .pool
            .begin_with("BEGIN ISOLATION LEVEL READ COMMITTED")
            .await?)
    }

    async fn fetch_tasks(
        &self,
        sql: &'static str,
        id: Uuid,
    ) -> Result<Vec<TaskRecord>, StoreError> {
        sqlx::query(sql)
            .bind(id.to_string())
            .fetch_all(&self.pool)
            .await?
            .iter()
            .map(rows::task)
            .collect()
    }
}

/// A listener on a connection of its own (a pool of one, through which it
/// reconnects), so it never holds one of the main pool's connections.
async fn listen(options: &PgConnectOptions) -> Result<PgListener, StoreError> {
    let pool = PgPoolOptions::new()
        .max_connections(1)
        .max_lifetime(None)
        .idle_timeout(None)
        .connect_with(options.clone())
        .await?;
    let mut listener = PgListener::connect_with(&pool).await?;
    listener.listen(NOTIFY_CHANNEL).await?;
    Ok(listener)
}

/// Forwards every notification on the channel, this process's own
/// included, to the local subscribers until `stop`. The listener
/// reconnects by itself; notifications sent while it is away are lost, so
/// subscribers must not rely on them alone.
async fn forward_notifications(
    mut listener: PgListener,
    to: broadcast::Sender<Notification>,
    stop: CancellationToken,
) {
    let mut retry = LISTEN_RETRY_MIN;
    loop {
        let received = tokio::select! {
            () = stop.cancelled() => return,
            received = listener.try_recv() => received,
        };
        match received {
            Ok(Some(notification)) => {
                retry = LISTEN_RETRY_MIN;
                match engine::parse_notification(notification.payload()) {
                    // No subscriber is not an error: nobody needed to hear it.
                    Some(notification) => drop(to.send(notification)),
                    None => tracing::warn!(
                        payload = notification.payload(),
                        "ignoring an unknown notification on {NOTIFY_CHANNEL}"
                    ),
                }
            }
            Ok(None) => tracing::warn!(
                "the notification listener lost its connection and reconnected; notifications sent meanwhile are lost"
            ),
            Err(error) => {
                tracing::warn!(%error, "the notification listener failed; retrying in {retry:?}");
                tokio::select! {
                    () = stop.cancelled() => return,
                    () = tokio::time::sleep(retry) => {}
                }
                retry = (retry * 2).min(LISTEN_RETRY_MAX);
            }
        }
    }
}

async fn try_advisory_lock(conn: &mut PgConnection) -> Result<bool, sqlx::Error> {
    sqlx::query_scalar("SELECT pg_try_advisory_lock($1)")
        .bind(LEADER_LOCK_KEY)
        .fetch_one(conn)
        .await
}

fn id_list(ids: &[Uuid]) -> Vec<String> {
    ids.iter().map(Uuid::to_string).collect()
}

#[async_trait]
impl JobTx for PgConnection {
    async fn lock_tasks(&mut self, ids: &[Uuid]) -> Result<Vec<TaskRecord>, StoreError> {
        sqlx::query("SELECT * FROM tasks WHERE id = ANY($1) ORDER BY id FOR NO KEY UPDATE")
            .bind(id_list(ids))
            .fetch_all(&mut *self)
            .await?
            .iter()
            .map(rows::task)
            .collect()
    }

    async fn lock_jobs(&mut self, ids: &[Uuid]) -> Result<Vec<JobRecord>, StoreError> {
        sqlx::query("SELECT * FROM jobs WHERE id = ANY($1) ORDER BY id FOR NO KEY UPDATE")
            .bind(id_list(ids))
            .fetch_all(&mut *self)
            .await?
            .iter()
            .map(rows::job)
            .collect()
    }

    async fn count_task_states(
        &mut self,
        job_id: Uuid,
    ) -> Result<Vec<(TaskState, u64)>, StoreError> {
        sqlx::query("SELECT state, count(*) AS n FROM tasks WHERE job_id = $1 GROUP BY state")
            .bind(job_id.to_string())
            .fetch_all(&mut *self)
            .await?
            .iter()
            .map(rows::state_count)
            .collect()
    }

    /// One statement however many events: arrays of columns, unnested.
    async fn insert_events(&mut self, events: &[NewEvent]) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO job_events (job_id, seq, at_ms, task_id, task_seq, body) \
             SELECT * FROM UNNEST($1::text[], $2::bigint[], $3::bigint[], $4::text[], $5::bigint[], $6::bytea[])",
        )
        .bind(events.iter().map(|e| e.job_id.to_string()).collect::<Vec<_>>())
        .bind(events.iter().map(|e| sql_int(e.seq)).collect::<Vec<_>>())
        .bind(events.iter().map(|e| e.at_ms).collect::<Vec<_>>())
        .bind(
            events
                .iter()
                .map(|e| e.task_id.map(|id| id.to_string()))
                .collect::<Vec<_>>(),
        )
        .bind(
            events
                .iter()
                .map(|e| e.task_seq.map(sql_int))
                .collect::<Vec<_>>(),
        )
        .bind(events.iter().map(|e| e.body.as_slice()).collect::<Vec<_>>())
        .execute(&mut *self)
        .await?;
        Ok(())
    }

    async fn update_tasks(&mut self, tasks: &[&TaskRecord]) -> Result<(), StoreError> {
        sqlx::query(
            "UPDATE tasks SET state = u.state, attempt = u.attempt, last_seq = u.last_seq, \
             assigned_by = u.assigned_by, started_at_ms = u.started_at_ms, finished_at_ms = u.finished_at_ms, \
             message = u.message, result_json = u.result_json, updated_at_ms = u.updated_at_ms \
             FROM UNNEST($1::text[], $2::text[], $3::bigint[], $4::bigint[], $5::text[], $6::bigint[], \
             $7::bigint[], $8::text[], $9::text[], $10::bigint[]) \
             AS u (id, state, attempt, last_seq, assigned_by, started_at_ms, finished_at_ms, message, \
             result_json, updated_at_ms) \
             WHERE tasks.id = u.id",
        )
        .bind(tasks.iter().map(|t| t.id.to_string()).collect::<Vec<_>>())
        .bind(tasks.iter().map(|t| t.state.as_str()).collect::<Vec<_>>())
        .bind(tasks.iter().map(|t| i64::from(t.attempt)).collect::<Vec<_>>())
        .bind(tasks.iter().map(|t| sql_int(t.last_seq)).collect::<Vec<_>>())
        .bind(tasks.iter().map(|t| t.assigned_by.as_deref()).collect::<Vec<_>>())
        .bind(tasks.iter().map(|t| t.started_at_ms).collect::<Vec<_>>())
        .bind(tasks.iter().map(|t| t.finished_at_ms).collect::<Vec<_>>())
        .bind(tasks.iter().map(|t| t.message.as_str()).collect::<Vec<_>>())
        .bind(tasks.iter().map(|t| t.result_json.as_deref()).collect::<Vec<_>>())
        .bind(tasks.iter().map(|t| t.updated_at_ms).collect::<Vec<_>>())
        .execute(&mut *self)
        .await?;
        Ok(())
    }

    async fn update_jobs(&mut self, jobs: &[&JobRecord]) -> Result<(), StoreError> {
        sqlx::query(
            "UPDATE jobs SET status = u.status, updated_at_ms = u.updated_at_ms, \
             finished_at_ms = u.finished_at_ms, cancel_requested = u.cancel_requested, last_seq = u.last_seq \
             FROM UNNEST($1::text[], $2::text[], $3::bigint[], $4::bigint[], $5::boolean[], $6::bigint[]) \
             AS u (id, status, updated_at_ms, finished_at_ms, cancel_requested, last_seq) \
             WHERE jobs.id = u.id",
        )
        .bind(jobs.iter().map(|j| j.id.to_string()).collect::<Vec<_>>())
        .bind(jobs.iter().map(|j| j.status.as_str()).collect::<Vec<_>>())
        .bind(jobs.iter().map(|j| j.updated_at_ms).collect::<Vec<_>>())
        .bind(jobs.iter().map(|j| j.finished_at_ms).collect::<Vec<_>>())
        .bind(jobs.iter().map(|j| j.cancel_requested).collect::<Vec<_>>())
        .bind(jobs.iter().map(|j| sql_int(j.last_seq)).collect::<Vec<_>>())
        .execute(&mut *self)
        .await?;
        Ok(())
    }

    async fn insert_job(
        &mut self,
        record: &JobRecord,
        tasks: &[NewTask],
    ) -> Result<Option<JobRecord>, StoreError> {
        // A concurrent insert of the same key waits for the first to commit,
        // then does nothing.
        let inserted = sqlx::query(
            "INSERT INTO jobs (id, kind, spec_json, target_json, status, created_by, idempotency_key, \
             created_at_ms, updated_at_ms, deadline_ms, traceparent) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11) \
             ON CONFLICT (idempotency_key) WHERE idempotency_key IS NOT NULL DO NOTHING",
        )
        .bind(record.id.to_string())
        .bind(&record.kind)
        .bind(&record.spec_json)
        .bind(&record.target_json)
        .bind(record.status.as_str())
        .bind(&record.created_by)
        .bind(&record.idempotency_key)
        .bind(record.created_at_ms)
        .bind(record.updated_at_ms)
        .bind(record.deadline_ms)
        .bind(&record.traceparent)
        .execute(&mut *self)
        .await?
        .rows_affected()
            == 1;
        if !inserted {
            let existing = sqlx::query("SELECT * FROM jobs WHERE idempotency_key = $1")
                .bind(&record.idempotency_key)
                .fetch_one(&mut *self)
                .await?;
            return Ok(Some(rows::job(&existing)?));
        }
        sqlx::query(
            "INSERT INTO tasks (id, job_id, agent_id, agent_name, state, updated_at_ms) \
             SELECT u.id, $4, u.agent_id, u.agent_name, $5, $6 \
             FROM UNNEST($1::text[], $2::text[], $3::text[]) AS u (id, agent_id, agent_name)",
        )
        .bind(tasks.iter().map(|t| t.id.to_string()).collect::<Vec<_>>())
        .bind(
            tasks
                .iter()
                .map(|t| t.agent_id.to_string())
                .collect::<Vec<_>>(),
        )
        .bind(
            tasks
                .iter()
                .map(|t| t.agent_name.as_str())
                .collect::<Vec<_>>(),
        )
        .bind(record.id.to_string())
        .bind(TaskState::Pending.as_str())
        .bind(record.created_at_ms)
        .execute(&mut *self)
        .await?;
        Ok(None)
    }

    async fn insert_audit(&mut self, entry: &AuditEntry) -> Result<(), StoreError> {
        sqlx::query("INSERT INTO audit_log (at_ms, actor, action, target, detail) VALUES ($1, $2, $3, $4, $5)")
            .bind(entry.at_ms)
            .bind(&entry.actor)
            .bind(&entry.action)
            .bind(&entry.target)
            .bind(&entry.detail)
            .execute(&mut *self)
            .await?;
        Ok(())
    }
}

/// sqlx's migrator takes a session-level advisory lock and keeps it when a
/// migration fails; only ending the session releases it. So migrations run
/// on a connection of their own, closed whatever the outcome, never on a
/// pooled one that would go on holding the lock and block every other
/// coordinator's start.
async fn migrate(options: &PgConnectOptions) -> Result<(), StoreError> {
    let mut conn = PgConnection::connect_with(options).await?;
    // `run_direct` rather than `run(&mut conn)`: the latter's `Acquire`
    // bound makes this future fail to be `Send` (an "implementation of
    // `Acquire` is not general enough" error wherever it is spawned).
    let outcome = rows::migrator(MIGRATIONS)
        .run_direct(None, &mut conn, false)
        .await;
    let closed = conn.close().await;
    outcome?;
    closed?;
    Ok(())
}

/// A URL fit for an error message: errors get logged, passwords must not.
fn without_credentials(url: &str) -> String {
    match url.split_once("://") {
        Some((scheme, rest)) => match rest.rsplit_once('@') {
            Some((_, host)) => format!("{scheme}://***@{host}"),
            None => url.into(),
        },
        None => url.into(),
    }
}

/// A unique violation of the live-name index means another coordinator
/// enrolled an agent of that name after this transaction checked for one.
fn name_taken_or(err: sqlx::Error, name: &str) -> StoreError {
    let name_taken = err
        .as_database_error()
        .is_some_and(|db| db.is_unique_violation() && db.constraint() == Some(ACTIVE_NAME_INDEX));
    if name_taken {
        StoreError::AgentNameTaken { name: name.into() }
    } else {
        err.into()
    }
}

#[async_trait]
impl Store for PgStore {
    fn backend(&self) -> Backend {
        Backend::Postgres
    }

    async fn ping(&self) -> Result<(), StoreError> {
        sqlx::query("SELECT 1").execute(&self.pool).await?;
        Ok(())
    }

    async fn bootstrap_admin(&self, name: &str, now_ms: i64) -> Result<bool, StoreError> {
        let mut tx = self.pool.begin().await?;
        let first_start = sqlx::query(
            "INSERT INTO meta (key, value) VALUES ($1, $2) ON CONFLICT (key) DO NOTHING",
        )
        .bind(rows::BOOTSTRAP_KEY)
        .bind(name)
        .execute(&mut *tx)
        .await?
        .rows_affected()
            == 1;
        if !first_start {
            return Ok(false);
        }
        let added = sqlx::query(
            "INSERT INTO operators (name, role, created_at_ms, created_by) VALUES ($1, $2, $3, $4) \
             ON CONFLICT (name) DO NOTHING",
        )
        .bind(name)
        .bind(Role::Admin.as_str())
        .bind(now_ms)
        .bind(rows::SYSTEM_ACTOR)
        .execute(&mut *tx)
        .await?
        .rows_affected()
            == 1;
        tx.commit().await?;
        Ok(added)
    }

    async fn insert_join_token(&self, token: &JoinTokenRecord) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO join_tokens (token_hash, name, labels_json, created_by, created_at_ms, expires_at_ms, \
             used_at_ms, used_by) VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
        )
        .bind(&token.token_hash)
        .bind(&token.name)
        .bind(rows::labels_json(&token.labels))
        .bind(&token.created_by)
        .bind(token.created_at_ms)
        .bind(token.expires_at_ms)
        .bind(token.used_at_ms)
        .bind(token.used_by.map(|id| id.to_string()))
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    async fn get_join_token(
        &self,
        token_hash: &str,
    ) -> Result<Option<JoinTokenRecord>, StoreError> {
        sqlx::query("SELECT * FROM join_tokens WHERE token_hash = $1")
            .bind(token_hash)
            .fetch_optional(&self.pool)
            .await?
            .map(|row| rows::join_token(&row))
            .transpose()
    }

    async fn enroll_agent(
        &self,
        token_hash: &str,
        now_ms: i64,
        agent: &NewAgent,
    ) -> Result<AgentRecord, StoreError> {
        let mut tx = self.pool.begin().await?;
        let token = sqlx::query("SELECT * FROM join_tokens WHERE token_hash = $1 FOR UPDATE")
            .bind(token_hash)
            .fetch_optional(&mut *tx)
            .await?
            .map(|row| rows::join_token(&row))
            .transpose()?
            .ok_or(StoreError::TokenUnknown)?;
        rows::check_token_usable(&token, now_ms)?;
        let taken = sqlx::query("SELECT 1 FROM agents WHERE name = $1 AND revoked_at_ms IS NULL")
            .bind(&agent.name)
            .fetch_optional(&mut *tx)
            .await?
            .is_some();
        if taken {
            return Err(StoreError::AgentNameTaken {
                name: agent.name.clone(),
            });
        }
        let record = rows::enrolled(agent, now_ms);
        sqlx::query(
            "INSERT INTO agents (id, name, hostname, labels_json, version, enrolled_at_ms, cert_serial, \
             cert_not_after_ms) VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
        )
        .bind(record.id.to_string())
        .bind(&record.name)
        .bind(&record.hostname)
        .bind(rows::labels_json(&record.labels))
        .bind(&record.version)
        .bind(record.enrolled_at_ms)
        .bind(&record.cert_serial)
        .bind(record.cert_not_after_ms)
        .execute(&mut *tx)
        .await
        .map_err(|e| name_taken_or(e, &record.name))?;
        sqlx::query("UPDATE join_tokens SET used_at_ms = $1, used_by = $2 WHERE token_hash = $3")
            .bind(now_ms)
            .bind(record.id.to_string())
            .bind(token_hash)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(record)
    }

    async fn get_agent(&self, id: Uuid) -> Result<Option<AgentRecord>, StoreError> {
        sqlx::query("SELECT * FROM agents WHERE id = $1")
            .bind(id.to_string())
            .fetch_optional(&self.pool)
            .await?
            .map(|row| rows::agent(&row))
            .transpose()
    }

    async fn find_agent(&self, name_or_id: &str) -> Result<Option<AgentRecord>, StoreError> {
        if let Ok(id) = Uuid::parse_str(name_or_id) {
            return self.get_agent(id).await;
        }
        sqlx::query(
            "SELECT * FROM agents WHERE name = $1 \
             ORDER BY (revoked_at_ms IS NULL) DESC, enrolled_at_ms DESC, id DESC LIMIT 1",
        )
        .bind(name_or_id)
        .fetch_optional(&self.pool)
        .await?
        .map(|row| rows::agent(&row))
        .transpose()
    }

    async fn list_agents(&self) -> Result<Vec<AgentRecord>, StoreError> {
        sqlx::query("SELECT * FROM agents ORDER BY name, enrolled_at_ms, id")
            .fetch_all(&self.pool)
            .await?
            .iter()
            .map(rows::agent)
            .collect()
    }

    async fn revoked_agent_ids(&self) -> Result<Vec<Uuid>, StoreError> {
        sqlx::query("SELECT id FROM agents WHERE revoked_at_ms IS NOT NULL ORDER BY id")
            .fetch_all(&self.pool)
            .await?
            .iter()
            .map(rows::agent_id)
            .collect()
    }

    async fn agent_connected(
        &self,
        id: Uuid,
        coordinator_id: &str,
        version: &str,
        hostname: &str,
        now_ms: i64,
    ) -> Result<(), StoreError> {
        let updated = sqlx::query(
            "UPDATE agents SET connected_to = $1, version = $2, hostname = $3, last_seen_ms = $4 WHERE id = $5",
        )
        .bind(coordinator_id)
        .bind(version)
        .bind(hostname)
        .bind(now_ms)
        .bind(id.to_string())
        .execute(&self.pool)
        .await?
        .rows_affected();
        rows::agent_found(updated, id)
    }

    async fn record_heartbeats(&self, beats: &[Heartbeat]) -> Result<(), StoreError> {
        if beats.is_empty() {
            return Ok(());
        }
        let ids: Vec<String> = beats.iter().map(|b| b.id.to_string()).collect();
        let seen: Vec<i64> = beats.iter().map(|b| b.seen_ms).collect();
        let health: Vec<Option<String>> = beats.iter().map(|b| b.health_json.clone()).collect();
        // One statement for the whole batch; sorted by id so concurrent
        // flushes from several coordinators lock rows in the same order.
        sqlx::query(
            "UPDATE agents AS a SET last_seen_ms = greatest(a.last_seen_ms, b.seen), \
             health_json = coalesce(b.health, a.health_json) \
             FROM (SELECT * FROM unnest($1::text[], $2::bigint[], $3::text[]) \
                   AS t(id, seen, health) ORDER BY id) AS b \
             WHERE a.id = b.id",
        )
        .bind(&ids)
        .bind(&seen)
        .bind(&health)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    async fn agent_disconnected(
        &self,
        id: Uuid,
        coordinator_id: &str,
        now_ms: i64,
    ) -> Result<(), StoreError> {
        sqlx::query(
            "UPDATE agents SET connected_to = NULL, last_seen_ms = greatest(last_seen_ms, $1) \
             WHERE id = $2 AND connected_to = $3",
        )
        .bind(now_ms)
        .bind(id.to_string())
        .bind(coordinator_id)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    async fn agent_cert_renewed(
        &self,
        id: Uuid,
        serial: &str,
        not_after_ms: i64,
    ) -> Result<(), StoreError> {
        let updated =
            sqlx::query("UPDATE agents SET cert_serial = $1, cert_not_after_ms = $2 WHERE id = $3")
                .bind(serial)
                .bind(not_after_ms)
                .bind(id.to_string())
                .execute(&self.pool)
                .await?
                .rows_affected();
        rows::agent_found(updated, id)
    }

    async fn revoke_agent(&self, id: Uuid, now_ms: i64) -> Result<AgentRecord, StoreError> {
        let revoked = sqlx::query(
            "UPDATE agents SET revoked_at_ms = $1 WHERE id = $2 AND revoked_at_ms IS NULL RETURNING *",
        )
        .bind(now_ms)
        .bind(id.to_string())
        .fetch_optional(&self.pool)
        .await?;
        match revoked {
            Some(row) => rows::agent(&row),
            None => Err(rows::revoke_refusal(id, self.get_agent(id).await?)),
        }
    }

    async fn add_operator(&self, op: &OperatorRecord) -> Result<(), StoreError> {
        let inserted = sqlx::query(
            "INSERT INTO operators (name, role, created_at_ms, created_by, revoked_at_ms) VALUES ($1, $2, $3, $4, $5) \
             ON CONFLICT (name) DO NOTHING",
        )
        .bind(&op.name)
        .bind(op.role.as_str())
        .bind(op.created_at_ms)
        .bind(&op.created_by)
        .bind(op.revoked_at_ms)
        .execute(&self.pool)
        .await?
        .rows_affected();
        if inserted == 1 {
            Ok(())
        } else {
            Err(rows::operator_refusal(
                &op.name,
                self.get_operator(&op.name).await?,
            ))
        }
    }

    async fn get_operator(&self, name: &str) -> Result<Option<OperatorRecord>, StoreError> {
        sqlx::query("SELECT * FROM operators WHERE name = $1")
            .bind(name)
            .fetch_optional(&self.pool)
            .await?
            .map(|row| rows::operator(&row))
            .transpose()
    }

    async fn list_operators(&self) -> Result<Vec<OperatorRecord>, StoreError> {
        sqlx::query("SELECT * FROM operators ORDER BY name")
            .fetch_all(&self.pool)
            .await?
            .iter()
            .map(rows::operator)
            .collect()
    }

    async fn revoke_operator(&self, name: &str, now_ms: i64) -> Result<OperatorRecord, StoreError> {
        sqlx::query("UPDATE operators SET revoked_at_ms = coalesce(revoked_at_ms, $1) WHERE name = $2 RETURNING *")
            .bind(now_ms)
            .bind(name)
            .fetch_optional(&self.pool)
            .await?
            .map(|row| rows::operator(&row))
            .transpose()?
            .ok_or_else(|| StoreError::OperatorNotFound(name.into()))
    }

    async fn append_audit(&self, entry: &AuditEntry) -> Result<(), StoreError> {
        self.pool.acquire().await?.insert_audit(entry).await
    }

    async fn list_audit(&self, limit: u32) -> Result<Vec<AuditEntry>, StoreError> {
        sqlx::query("SELECT * FROM audit_log ORDER BY at_ms DESC, id DESC LIMIT $1")
            .bind(i64::from(limit))
            .fetch_all(&self.pool)
            .await?
            .iter()
            .map(rows::audit_entry)
            .collect()
    }

    async fn put_secret(&self, secret: &SecretRecord) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO secrets (app, env, name, nonce, ciphertext, created_at_ms, updated_at_ms, updated_by) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8) \
             ON CONFLICT (app, env, name) DO UPDATE SET nonce = excluded.nonce, \
             ciphertext = excluded.ciphertext, updated_at_ms = excluded.updated_at_ms, \
             updated_by = excluded.updated_by",
        )
        .bind(&secret.app)
        .bind(&secret.env)
        .bind(&secret.name)
        .bind(secret.nonce.as_slice())
        .bind(secret.ciphertext.as_slice())
        .bind(secret.created_at_ms)
        .bind(secret.updated_at_ms)
        .bind(&secret.updated_by)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    async fn get_secrets(
        &self,
        app: &str,
        env: &str,
        names: &[String],
    ) -> Result<Vec<SecretRecord>, StoreError> {
        if names.is_empty() {
            return Ok(Vec::new());
        }
        sqlx::query(
            "SELECT * FROM secrets WHERE app = $1 AND env = $2 AND name = ANY($3) ORDER BY name",
        )
        .bind(app)
        .bind(env)
        .bind(names)
        .fetch_all(&self.pool)
        .await?
        .iter()
        .map(rows::secret)
        .collect()
    }

    async fn list_secrets(
        &self,
        app: &str,
        env: Option<&str>,
    ) -> Result<Vec<SecretMeta>, StoreError> {
        sqlx::query(
            "SELECT app, env, name, created_at_ms, updated_at_ms, updated_by FROM secrets \
             WHERE app = $1 AND ($2::text IS NULL OR env = $2) ORDER BY env, name",
        )
        .bind(app)
        .bind(env)
        .fetch_all(&self.pool)
        .await?
        .iter()
        .map(rows::secret_meta)
        .collect()
    }

    async fn delete_secret(&self, app: &str, env: &str, name: &str) -> Result<bool, StoreError> {
        let deleted = sqlx::query("DELETE FROM secrets WHERE app = $1 AND env = $2 AND name = $3")
            .bind(app)
            .bind(env)
            .bind(name)
            .execute(&self.pool)
            .await?
            .rows_affected();
        Ok(deleted == 1)
    }

    async fn create_rollout(&self, r: &RolloutRecord) -> Result<(), StoreError> {
        self.sql_create_rollout(r).await
    }

    async fn get_rollout(&self, id: Uuid) -> Result<Option<RolloutRecord>, StoreError> {
        self.sql_get_rollout(id).await
    }

    async fn list_rollouts(
        &self,
        app: &str,
        env: Option<&str>,
        limit: u32,
    ) -> Result<Vec<RolloutRecord>, StoreError> {
        self.sql_list_rollouts(app, env, limit).await
    }

    async fn update_rollout(
        &self,
        id: Uuid,
        owner: &str,
        update: &RolloutUpdate,
        now_ms: i64,
    ) -> Result<bool, StoreError> {
        self.sql_update_rollout(id, owner, update, now_ms).await
    }

    async fn claim_abandoned_rollouts(
        &self,
        owner: &str,
        now_ms: i64,
        lease_expires_at_ms: i64,
    ) -> Result<Vec<RolloutRecord>, StoreError> {
        self.sql_claim_abandoned_rollouts(owner, now_ms, lease_expires_at_ms)
            .await
    }

    async fn start_job(&self, start: &JobStart<'_>) -> Result<StartedJob, StoreError> {
        let mut tx = self.begin_job_tx().await?;
        let started = engine::start_job(&mut *tx, start).await?;
        tx.commit().await?;
        Ok(started)
    }

    async fn get_job(&self, id: Uuid) -> Result<Option<JobRecord>, StoreError> {
        sqlx::query("SELECT * FROM jobs WHERE id = $1")
            .bind(id.to_string())
            .fetch_optional(&self.pool)
            .await?
            .map(|row| rows::job(&row))
            .transpose()
    }

    async fn list_jobs(&self, filter: &JobFilter) -> Result<Vec<JobRecord>, StoreError> {
        sqlx::query(
            "SELECT * FROM jobs WHERE ($1::text IS NULL OR status = $1) AND ($2::text IS NULL OR kind = $2) \
             AND ($3::bigint IS NULL OR created_at_ms >= $3) \
             AND ($4::text IS NULL OR EXISTS (SELECT 1 FROM tasks t WHERE t.job_id = jobs.id AND t.agent_name = $4)) \
             ORDER BY created_at_ms DESC, id DESC LIMIT $5",
        )
        .bind(filter.status.map(|s| s.as_str()))
        .bind(filter.kind.as_deref())
        .bind(filter.since_ms)
        .bind(filter.agent_name.as_deref())
        .bind(rows::job_list_limit(filter.limit))
        .fetch_all(&self.pool)
        .await?
        .iter()
        .map(rows::job)
        .collect()
    }

    async fn list_tasks(&self, job_id: Uuid) -> Result<Vec<TaskRecord>, StoreError> {
        self.fetch_tasks(
            "SELECT * FROM tasks WHERE job_id = $1 ORDER BY agent_name, id",
            job_id,
        )
        .await
    }

    async fn get_task(&self, id: Uuid) -> Result<Option<TaskRecord>, StoreError> {
        Ok(self
            .fetch_tasks("SELECT * FROM tasks WHERE id = $1", id)
            .await?
            .pop())
    }

    async fn active_tasks_for_agent(&self, agent_id: Uuid) -> Result<Vec<TaskRecord>, StoreError> {
        self.fetch_tasks(
            "SELECT * FROM tasks WHERE state IN ('assigned', 'running') AND agent_id = $1 ORDER BY id",
            agent_id,
        )
        .await
    }

    async fn append_coordinator_events(
        &self,
        job_id: Uuid,
        events: &[(Option<Uuid>, Vec<u8>)],
        at_ms: i64,
    ) -> Result<u64, StoreError> {
        let mut tx = self.begin_job_tx().await?;
        let seq = engine::append_coordinator_events(&mut *tx, job_id, events, at_ms).await?;
        tx.commit().await?;
        Ok(seq)
    }

    async fn claim_pending_tasks(
        &self,
        agent_ids: &[Uuid],
        coordinator_id: &str,
        now_ms: i64,
        limit: u32,
    ) -> Result<Vec<(TaskRecord, JobRecord)>, StoreError> {
        if agent_ids.is_empty() || limit == 0 {
            return Ok(Vec::new());
        }
        let ids = id_list(agent_ids);
        // Most calls (an agent connecting) find nothing: one statement
        // rather than a transaction's three round trips.
        let any: bool = sqlx::query_scalar(
            "SELECT EXISTS (SELECT 1 FROM tasks t JOIN jobs j ON j.id = t.job_id \
             WHERE t.state = 'pending' AND t.agent_id = ANY($1) \
             AND j.status IN ('pending', 'running') AND j.deadline_ms > $2)",
        )
        .bind(&ids)
        .bind(now_ms)
        .fetch_one(&self.pool)
        .await?;
        if !any {
            return Ok(Vec::new());
        }
        let mut tx = self.begin_job_tx().await?;
        let tasks = sqlx::query(
            "SELECT t.* FROM tasks t JOIN jobs j ON j.id = t.job_id \
             WHERE t.state = 'pending' AND t.agent_id = ANY($1) \
             AND j.status IN ('pending', 'running') AND j.deadline_ms > $2 \
             ORDER BY j.created_at_ms, t.id LIMIT $3 FOR NO KEY UPDATE OF t SKIP LOCKED",
        )
        .bind(ids)
        .bind(now_ms)
        .bind(i64::from(limit))
        .fetch_all(&mut *tx)
        .await?
        .iter()
        .map(rows::task)
        .collect::<Result<Vec<_>, _>>()?;
        if tasks.is_empty() {
            return Ok(Vec::new());
        }
        let claimed = engine::claim(&mut *tx, tasks, coordinator_id, now_ms).await?;
        tx.commit().await?;
        Ok(claimed)
    }

    async fn claim_job_tasks(
        &self,
        job_id: Uuid,
        after: Option<Uuid>,
        here: &(dyn Fn(Uuid) -> bool + Send + Sync),
        coordinator_id: &str,
        now_ms: i64,
        limit: u32,
    ) -> Result<JobClaim, StoreError> {
        if limit == 0 {
            return Ok(JobClaim::default());
        }
        // A look without locks: which of the job's tasks are for agents
        // connected here is known in memory, not in the database.
        let candidates = sqlx::query(
            "SELECT t.id, t.agent_id FROM tasks t JOIN jobs j ON j.id = t.job_id \
             WHERE t.job_id = $1 AND t.state = 'pending' AND t.id > $2 \
             AND j.status IN ('pending', 'running') AND j.deadline_ms > $3 \
             ORDER BY t.id LIMIT $4",
        )
        .bind(job_id.to_string())
        .bind(after.map(|id| id.to_string()).unwrap_or_default())
        .bind(now_ms)
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await?
        .iter()
        .map(rows::task_and_agent)
        .collect::<Result<Vec<_>, _>>()?;
        let (ids, next) = engine::tasks_here(&candidates, here, limit);
        if ids.is_empty() {
            return Ok(JobClaim {
                claimed: Vec::new(),
                next,
            });
        }
        let mut tx = self.begin_job_tx().await?;
        // Locked in id order; a row claimed, cancelled or expired since the
        // look no longer matches once locked, and one another transaction
        // holds is skipped.
        let tasks = sqlx::query(
            "SELECT t.* FROM tasks t JOIN jobs j ON j.id = t.job_id \
             WHERE t.id = ANY($1) AND t.job_id = $2 AND t.state = 'pending' \
             AND j.status IN ('pending', 'running') AND j.deadline_ms > $3 \
             ORDER BY t.id FOR NO KEY UPDATE OF t SKIP LOCKED",
        )
        .bind(id_list(&ids))
        .bind(job_id.to_string())
        .bind(now_ms)
        .fetch_all(&mut *tx)
        .await?
        .iter()
        .map(rows::task)
        .collect::<Result<Vec<_>, _>>()?;
        if tasks.is_empty() {
            return Ok(JobClaim {
                claimed: Vec::new(),
                next,
            });
        }
        let claimed = engine::claim(&mut *tx, tasks, coordinator_id, now_ms).await?;
        tx.commit().await?;
        Ok(JobClaim { claimed, next })
    }

    async fn jobs_pending_on(
        &self,
        coordinator_id: &str,
        now_ms: i64,
    ) -> Result<Vec<Uuid>, StoreError> {
        sqlx::query(
            "SELECT DISTINCT t.job_id FROM tasks t JOIN agents a ON a.id = t.agent_id \
             JOIN jobs j ON j.id = t.job_id \
             WHERE t.state = 'pending' AND a.connected_to = $1 \
             AND j.status IN ('pending', 'running') AND j.deadline_ms > $2 ORDER BY t.job_id",
        )
        .bind(coordinator_id)
        .bind(now_ms)
        .fetch_all(&self.pool)
        .await?
        .iter()
        .map(rows::task_job_id)
        .collect()
    }

    async fn transition_task(
        &self,
        task_id: Uuid,
        event: TaskEvent,
        message: &str,
        now_ms: i64,
    ) -> Result<Option<Transition>, StoreError> {
        let mut tx = self.begin_job_tx().await?;
        let transition = engine::transition(&mut *tx, task_id, event, message, now_ms).await?;
        tx.commit().await?;
        Ok(transition)
    }

    async fn append_agent_events(
        &self,
        events: &[IncomingEvent],
        now_ms: i64,
    ) -> Result<AppendOutcome, StoreError> {
        if events.is_empty() {
            return Ok(AppendOutcome::default());
        }
        let mut tx = self.begin_job_tx().await?;
        let outcome = engine::append_agent_events(&mut *tx, events, now_ms).await?;
        tx.commit().await?;
        Ok(outcome)
    }

    async fn job_events_after(
        &self,
        job_id: Uuid,
        after_seq: u64,
        limit: u32,
    ) -> Result<Vec<JobEventRecord>, StoreError> {
        sqlx::query(
            "SELECT e.job_id, e.seq, e.at_ms, e.task_id, e.task_seq, e.body, t.agent_name \
             FROM job_events e LEFT JOIN tasks t ON t.id = e.task_id \
             WHERE e.job_id = $1 AND e.seq > $2 ORDER BY e.seq LIMIT $3",
        )
        .bind(job_id.to_string())
        .bind(sql_int(after_seq))
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await?
        .iter()
        .map(rows::job_event)
        .collect()
    }

    async fn request_cancel(
        &self,
        job_id: Uuid,
        now_ms: i64,
    ) -> Result<(JobRecord, Vec<Transition>), StoreError> {
        let mut tx = self.begin_job_tx().await?;
        let tasks = sqlx::query(
            "SELECT * FROM tasks WHERE job_id = $1 AND state IN ('pending', 'assigned', 'running', 'lost') \
             ORDER BY id FOR NO KEY UPDATE",
        )
        .bind(job_id.to_string())
        .fetch_all(&mut *tx)
        .await?
        .iter()
        .map(rows::task)
        .collect::<Result<Vec<_>, _>>()?;
        let cancelled = engine::request_cancel(&mut *tx, job_id, tasks, now_ms).await?;
        tx.commit().await?;
        Ok(cancelled)
    }

    async fn expire_overdue_tasks(&self, now_ms: i64) -> Result<Vec<Transition>, StoreError> {
        let mut tx = self.begin_job_tx().await?;
        let tasks = sqlx::query(
            "SELECT t.* FROM tasks t JOIN jobs j ON j.id = t.job_id \
             WHERE t.state = 'pending' AND j.deadline_ms <= $1 ORDER BY t.id FOR NO KEY UPDATE OF t",
        )
        .bind(now_ms)
        .fetch_all(&mut *tx)
        .await?
        .iter()
        .map(rows::task)
        .collect::<Result<Vec<_>, _>>()?;
        if tasks.is_empty() {
            return Ok(Vec::new());
        }
        let transitions = engine::expire(&mut *tx, tasks, now_ms).await?;
        tx.commit().await?;
        Ok(transitions)
    }

    async fn mark_tasks_of_absent_agents_lost(
        &self,
        seen_before_ms: i64,
        now_ms: i64,
    ) -> Result<Vec<Transition>, StoreError> {
        let mut tx = self.begin_job_tx().await?;
        let tasks = sqlx::query(
            "SELECT t.*, a.last_seen_ms AS agent_last_seen_ms FROM tasks t JOIN agents a ON a.id = t.agent_id \
             WHERE t.state IN ('assigned', 'running') AND a.last_seen_ms < $1 ORDER BY t.id FOR NO KEY UPDATE OF t",
        )
        .bind(seen_before_ms)
        .fetch_all(&mut *tx)
        .await?
        .iter()
        .map(rows::task_with_last_seen)
        .collect::<Result<Vec<_>, _>>()?;
        if tasks.is_empty() {
            return Ok(Vec::new());
        }
        let transitions = engine::mark_lost(&mut *tx, tasks, now_ms).await?;
        tx.commit().await?;
        Ok(transitions)
    }

    fn subscribe(&self) -> broadcast::Receiver<Notification> {
        self.notifications.subscribe()
    }

    /// Heard back through the listener, like every other coordinator's.
    async fn notify(&self, notification: Notification) -> Result<(), StoreError> {
        sqlx::query("SELECT pg_notify($1, $2)")
            .bind(NOTIFY_CHANNEL)
            .bind(engine::notification_payload(&notification))
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    async fn try_lead(&self) -> Result<bool, StoreError> {
        let mut guard = self.leadership.lock().await;
        let lead = &mut *guard;
        if let Some(conn) = lead.conn.as_mut() {
            // A session lock lasts as long as its connection: while that
            // is alive, this process still holds what it took.
            let outcome = if lead.held {
                conn.ping().await.map(|()| true)
            } else {
                try_advisory_lock(conn).await
            };
            match outcome {
                Ok(held) => {
                    lead.held = held;
                    return Ok(held);
                }
                Err(error) => {
                    tracing::warn!(%error, "lost the leader lock's connection; reconnecting");
                    *lead = Leadership::default();
                }
            }
        }
        let mut conn = PgConnection::connect_with(&self.options).await?;
        let held = try_advisory_lock(&mut conn).await?;
        *lead = Leadership {
            conn: Some(conn),
            held,
        };
        Ok(held)
    }
}
