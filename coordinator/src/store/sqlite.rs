//! The SQLite backend: the embedded default, one file and no server.
//!
//! SQLite lets one writer in at a time. Transactions that read before they
//! write start with `BEGIN IMMEDIATE`, which takes the write lock up front:
//! a deferred transaction that later tries to write fails at once with
//! `SQLITE_BUSY` instead of waiting, and could act on a stale read. Other
//! methods are single statements (`UPDATE … RETURNING`, `INSERT … ON
//! CONFLICT DO NOTHING`), atomic on their own.
//!
//! The job methods lock nothing row by row: holding the write lock, a
//! transaction is alone. Notifications only reach this process's
//! subscribers (an SQLite store has one coordinator), and this process is
//! always the leader.

use std::path::Path;
use std::time::Duration;

use async_trait::async_trait;
use ferry_common::identity::Role;
use sqlx::sqlite::{
    Sqlite, SqliteConnectOptions, SqliteConnection, SqliteJournalMode, SqlitePool,
    SqlitePoolOptions,
};
use sqlx::{Executor, QueryBuilder};
use tokio::sync::broadcast;
use uuid::Uuid;

use super::engine::{self, JobTx, NewEvent};

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
        include_str!("../../../migrations/sqlite/0001_foundation.sql"),
    ),
    (
        2,
        "jobs",
        include_str!("../../../migrations/sqlite/0002_jobs.sql"),
    ),
    (
        3,
        "secrets",
        include_str!("../../../migrations/sqlite/0003_secrets.sql"),
    ),
    (
        4,
        "rollouts",
        include_str!("../../../migrations/sqlite/0004_rollouts.sql"),
    ),
];

/// Writers wait this long for the write lock (another connection, or
/// another process on the same file) before failing with `database is locked`.
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

/// Readers run concurrently under WAL; writers queue on SQLite's lock.
const MAX_CONNECTIONS: u32 = 8;

/// Rows per multi-row statement: at most 10 parameters a row keeps a
/// statement well below SQLite's limit of 32766 parameters.
const ROWS_PER_STATEMENT: usize = 1000;

/// Notifications a slow subscriber may lag behind before it misses some.
const NOTIFICATION_BUFFER: usize = 1024;

pub struct SqliteStore {
    pool: SqlitePool,
    notifications: broadcast::Sender<Notification>,
}

impl SqliteStore {
    super::rollouts::rollout_methods!();

    /// Opens the database file at `path`, creating it if missing (but not
    /// its directory), and applies pending migrations.
    pub async fn open(path: &Path) -> Result<Self, StoreError> {
        let text = path.to_string_lossy();
        // A URL of another scheme is a mistake, not a relative path to create.
        if text.is_empty() || text.contains("://") {
            return Err(StoreError::BadUrl {
                url: text.into_owned(),
            });
        }
        let options = SqliteConnectOptions::new()
            .filename(path)
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .foreign_keys(true)
            .busy_timeout(BUSY_TIMEOUT);
        let pool = SqlitePoolOptions::new()
            .max_connections(MAX_CONNECTIONS)
            .connect_with(options)
            .await?;
        rows::migrator(MIGRATIONS).run(&pool).await?;
        Ok(Self {
            pool,
            notifications: broadcast::Sender::new(NOTIFICATION_BUFFER),
        })
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

/// Ids as one parameter, a JSON array, for `IN (SELECT value FROM json_each(?))`.
fn id_list(ids: &[Uuid]) -> String {
    serde_json::Value::Array(
        ids.iter()
            .map(|id| serde_json::Value::String(id.to_string()))
            .collect(),
    )
    .to_string()
}

#[async_trait]
impl JobTx for SqliteConnection {
    async fn lock_tasks(&mut self, ids: &[Uuid]) -> Result<Vec<TaskRecord>, StoreError> {
        sqlx::query("SELECT * FROM tasks WHERE id IN (SELECT value FROM json_each(?)) ORDER BY id")
            .bind(id_list(ids))
            .fetch_all(&mut *self)
            .await?
            .iter()
            .map(rows::task)
            .collect()
    }

    async fn lock_jobs(&mut self, ids: &[Uuid]) -> Result<Vec<JobRecord>, StoreError> {
        sqlx::query("SELECT * FROM jobs WHERE id IN (SELECT value FROM json_each(?)) ORDER BY id")
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
        sqlx::query("SELECT state, count(*) AS n FROM tasks WHERE job_id = ? GROUP BY state")
            .bind(job_id.to_string())
            .fetch_all(&mut *self)
            .await?
            .iter()
            .map(rows::state_count)
            .collect()
    }

    async fn insert_events(&mut self, events: &[NewEvent]) -> Result<(), StoreError> {
        for chunk in events.chunks(ROWS_PER_STATEMENT) {
            let mut insert = QueryBuilder::<Sqlite>::new(
                "INSERT INTO job_events (job_id, seq, at_ms, task_id, task_seq, body) ",
            );
            insert.push_values(chunk, |mut row, e| {
                row.push_bind(e.job_id.to_string())
                    .push_bind(sql_int(e.seq))
                    .push_bind(e.at_ms)
                    .push_bind(e.task_id.map(|id| id.to_string()))
                    .push_bind(e.task_seq.map(sql_int))
                    .push_bind(e.body.as_slice());
            });
            self.execute(insert.build()).await?;
        }
        Ok(())
    }

    async fn update_tasks(&mut self, tasks: &[&TaskRecord]) -> Result<(), StoreError> {
        for chunk in tasks.chunks(ROWS_PER_STATEMENT) {
            let mut update = QueryBuilder::<Sqlite>::new(
                "WITH u (id, state, attempt, last_seq, assigned_by, started_at_ms, finished_at_ms, \
                 message, result_json, updated_at_ms) AS (",
            );
            update.push_values(chunk, |mut row, t| {
                row.push_bind(t.id.to_string())
                    .push_bind(t.state.as_str())
                    .push_bind(i64::from(t.attempt))
                    .push_bind(sql_int(t.last_seq))
                    .push_bind(t.assigned_by.as_deref())
                    .push_bind(t.started_at_ms)
                    .push_bind(t.finished_at_ms)
                    .push_bind(t.message.as_str())
                    .push_bind(t.result_json.as_deref())
                    .push_bind(t.updated_at_ms);
            });
            update.push(
                ") UPDATE tasks SET state = u.state, attempt = u.attempt, last_seq = u.last_seq, \
                 assigned_by = u.assigned_by, started_at_ms = u.started_at_ms, \
                 finished_at_ms = u.finished_at_ms, message = u.message, result_json = u.result_json, \
                 updated_at_ms = u.updated_at_ms FROM u WHERE tasks.id = u.id",
            );
            self.execute(update.build()).await?;
        }
        Ok(())
    }

    async fn update_jobs(&mut self, jobs: &[&JobRecord]) -> Result<(), StoreError> {
        for chunk in jobs.chunks(ROWS_PER_STATEMENT) {
            let mut update = QueryBuilder::<Sqlite>::new(
                "WITH u (id, status, updated_at_ms, finished_at_ms, cancel_requested, last_seq) AS (",
            );
            update.push_values(chunk, |mut row, j| {
                row.push_bind(j.id.to_string())
                    .push_bind(j.status.as_str())
                    .push_bind(j.updated_at_ms)
                    .push_bind(j.finished_at_ms)
                    .push_bind(j.cancel_requested)
                    .push_bind(sql_int(j.last_seq));
            });
            update.push(
                ") UPDATE jobs SET status = u.status, updated_at_ms = u.updated_at_ms, \
                 finished_at_ms = u.finished_at_ms, cancel_requested = u.cancel_requested, \
                 last_seq = u.last_seq FROM u WHERE jobs.id = u.id",
            );
            self.execute(update.build()).await?;
        }
        Ok(())
    }

    async fn insert_job(
        &mut self,
        record: &JobRecord,
        tasks: &[NewTask],
    ) -> Result<Option<JobRecord>, StoreError> {
        let inserted = sqlx::query(
            "INSERT INTO jobs (id, kind, spec_json, target_json, status, created_by, idempotency_key, \
             created_at_ms, updated_at_ms, deadline_ms, traceparent) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) \
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
            let existing = sqlx::query("SELECT * FROM jobs WHERE idempotency_key = ?")
                .bind(&record.idempotency_key)
                .fetch_one(&mut *self)
                .await?;
            return Ok(Some(rows::job(&existing)?));
        }
        for chunk in tasks.chunks(ROWS_PER_STATEMENT) {
            let mut insert = QueryBuilder::<Sqlite>::new(
                "INSERT INTO tasks (id, job_id, agent_id, agent_name, state, updated_at_ms) ",
            );
            insert.push_values(chunk, |mut row, t| {
                row.push_bind(t.id.to_string())
                    .push_bind(record.id.to_string())
                    .push_bind(t.agent_id.to_string())
                    .push_bind(t.agent_name.as_str())
                    .push_bind(TaskState::Pending.as_str())
                    .push_bind(record.created_at_ms);
            });
            self.execute(insert.build()).await?;
        }
        Ok(None)
    }

    async fn insert_audit(&mut self, entry: &AuditEntry) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO audit_log (at_ms, actor, action, target, detail) VALUES (?, ?, ?, ?, ?)",
        )
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

#[async_trait]
impl Store for SqliteStore {
    fn backend(&self) -> Backend {
        Backend::Sqlite
    }

    async fn ping(&self) -> Result<(), StoreError> {
        sqlx::query("SELECT 1").execute(&self.pool).await?;
        Ok(())
    }

    async fn bootstrap_admin(&self, name: &str, now_ms: i64) -> Result<bool, StoreError> {
        let mut tx = self.pool.begin_with("BEGIN IMMEDIATE").await?;
        let first_start =
            sqlx::query("INSERT INTO meta (key, value) VALUES (?, ?) ON CONFLICT (key) DO NOTHING")
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
            "INSERT INTO operators (name, role, created_at_ms, created_by) VALUES (?, ?, ?, ?) \
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
             used_at_ms, used_by) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
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
        sqlx::query("SELECT * FROM join_tokens WHERE token_hash = ?")
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
        let mut tx = self.pool.begin_with("BEGIN IMMEDIATE").await?;
        let token = sqlx::query("SELECT * FROM join_tokens WHERE token_hash = ?")
            .bind(token_hash)
            .fetch_optional(&mut *tx)
            .await?
            .map(|row| rows::join_token(&row))
            .transpose()?
            .ok_or(StoreError::TokenUnknown)?;
        rows::check_token_usable(&token, now_ms)?;
        let taken = sqlx::query("SELECT 1 FROM agents WHERE name = ? AND revoked_at_ms IS NULL")
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
             cert_not_after_ms) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
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
        .await?;
        sqlx::query("UPDATE join_tokens SET used_at_ms = ?, used_by = ? WHERE token_hash = ?")
            .bind(now_ms)
            .bind(record.id.to_string())
            .bind(token_hash)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(record)
    }

    async fn get_agent(&self, id: Uuid) -> Result<Option<AgentRecord>, StoreError> {
        sqlx::query("SELECT * FROM agents WHERE id = ?")
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
            "SELECT * FROM agents WHERE name = ? \
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
            "UPDATE agents SET connected_to = ?, version = ?, hostname = ?, last_seen_ms = ? WHERE id = ?",
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
        // One statement per thousand agents rather than one per agent: the
        // flush holds SQLite's one write lock, every 500 ms, and submits,
        // claims and event batches wait behind it (a statement each was
        // ~1,000 round trips to the database thread at 10,000 agents).
        let mut tx = self.pool.begin_with("BEGIN IMMEDIATE").await?;
        for chunk in beats.chunks(ROWS_PER_STATEMENT) {
            let mut update = QueryBuilder::<Sqlite>::new("WITH b (id, seen, health) AS (");
            update.push_values(chunk, |mut row, b| {
                row.push_bind(b.id.to_string())
                    .push_bind(b.seen_ms)
                    .push_bind(b.health_json.as_deref());
            });
            update.push(
                ") UPDATE agents SET last_seen_ms = max(agents.last_seen_ms, b.seen), \
                 health_json = coalesce(b.health, agents.health_json) FROM b WHERE agents.id = b.id",
            );
            tx.execute(update.build()).await?;
        }
        tx.commit().await?;
        Ok(())
    }

    async fn agent_disconnected(
        &self,
        id: Uuid,
        coordinator_id: &str,
        now_ms: i64,
    ) -> Result<(), StoreError> {
        sqlx::query(
            "UPDATE agents SET connected_to = NULL, last_seen_ms = max(last_seen_ms, ?) \
             WHERE id = ? AND connected_to = ?",
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
            sqlx::query("UPDATE agents SET cert_serial = ?, cert_not_after_ms = ? WHERE id = ?")
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
            "UPDATE agents SET revoked_at_ms = ? WHERE id = ? AND revoked_at_ms IS NULL RETURNING *",
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
            "INSERT INTO operators (name, role, created_at_ms, created_by, revoked_at_ms) VALUES (?, ?, ?, ?, ?) \
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
        sqlx::query("SELECT * FROM operators WHERE name = ?")
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
        sqlx::query("UPDATE operators SET revoked_at_ms = coalesce(revoked_at_ms, ?) WHERE name = ? RETURNING *")
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
        sqlx::query("SELECT * FROM audit_log ORDER BY at_ms DESC, id DESC LIMIT ?")
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
             VALUES (?, ?, ?, ?, ?, ?, ?, ?) \
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
        let names = serde_json::Value::Array(
            names
                .iter()
                .map(|n| serde_json::Value::String(n.clone()))
                .collect(),
        )
        .to_string();
        sqlx::query(
            "SELECT * FROM secrets WHERE app = ? AND env = ? \
             AND name IN (SELECT value FROM json_each(?)) ORDER BY name",
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
             WHERE app = ?1 AND (?2 IS NULL OR env = ?2) ORDER BY env, name",
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
        let deleted = sqlx::query("DELETE FROM secrets WHERE app = ? AND env = ? AND name = ?")
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
        let mut tx = self.pool.begin_with("BEGIN IMMEDIATE").await?;
        let started = engine::start_job(&mut *tx, start).await?;
        tx.commit().await?;
        Ok(started)
    }

    async fn get_job(&self, id: Uuid) -> Result<Option<JobRecord>, StoreError> {
        sqlx::query("SELECT * FROM jobs WHERE id = ?")
            .bind(id.to_string())
            .fetch_optional(&self.pool)
            .await?
            .map(|row| rows::job(&row))
            .transpose()
    }

    async fn list_jobs(&self, filter: &JobFilter) -> Result<Vec<JobRecord>, StoreError> {
        sqlx::query(
            "SELECT * FROM jobs WHERE (?1 IS NULL OR status = ?1) AND (?2 IS NULL OR kind = ?2) \
             AND (?3 IS NULL OR created_at_ms >= ?3) \
             AND (?4 IS NULL OR EXISTS (SELECT 1 FROM tasks t WHERE t.job_id = jobs.id AND t.agent_name = ?4)) \
             ORDER BY created_at_ms DESC, id DESC LIMIT ?5",
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
            "SELECT * FROM tasks WHERE job_id = ? ORDER BY agent_name, id",
            job_id,
        )
        .await
    }

    async fn get_task(&self, id: Uuid) -> Result<Option<TaskRecord>, StoreError> {
        Ok(self
            .fetch_tasks("SELECT * FROM tasks WHERE id = ?", id)
            .await?
            .pop())
    }

    async fn active_tasks_for_agent(&self, agent_id: Uuid) -> Result<Vec<TaskRecord>, StoreError> {
        self.fetch_tasks(
            "SELECT * FROM tasks WHERE state IN ('assigned', 'running') AND agent_id = ? ORDER BY id",
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
        let mut tx = self.pool.begin_with("BEGIN IMMEDIATE").await?;
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
        let select = "SELECT t.* FROM tasks t JOIN jobs j ON j.id = t.job_id \
             WHERE t.state = 'pending' AND t.agent_id IN (SELECT value FROM json_each(?)) \
             AND j.status IN ('pending', 'running') AND j.deadline_ms > ? \
             ORDER BY j.created_at_ms, t.id LIMIT ?";
        let ids = id_list(agent_ids);
        // Most calls find nothing: look first without SQLite's one write
        // lock, which every other writer would queue behind.
        let any = sqlx::query(select)
            .bind(&ids)
            .bind(now_ms)
            .bind(1i64)
            .fetch_optional(&self.pool)
            .await?;
        if any.is_none() {
            return Ok(Vec::new());
        }
        let mut tx = self.pool.begin_with("BEGIN IMMEDIATE").await?;
        let tasks = sqlx::query(select)
            .bind(&ids)
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
        // A look without the write lock, which every other writer would
        // queue behind; which agents are connected here is known in memory.
        let candidates = sqlx::query(
            "SELECT t.id, t.agent_id FROM tasks t JOIN jobs j ON j.id = t.job_id \
             WHERE t.job_id = ? AND t.state = 'pending' AND t.id > ? \
             AND j.status IN ('pending', 'running') AND j.deadline_ms > ? \
             ORDER BY t.id LIMIT ?",
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
        let mut tx = self.pool.begin_with("BEGIN IMMEDIATE").await?;
        // Read again under the write lock: what changed since the look is
        // left out.
        let tasks = sqlx::query(
            "SELECT t.* FROM tasks t JOIN jobs j ON j.id = t.job_id \
             WHERE t.id IN (SELECT value FROM json_each(?)) AND t.job_id = ? AND t.state = 'pending' \
             AND j.status IN ('pending', 'running') AND j.deadline_ms > ? ORDER BY t.id",
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
             WHERE t.state = 'pending' AND a.connected_to = ? \
             AND j.status IN ('pending', 'running') AND j.deadline_ms > ? ORDER BY t.job_id",
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
        let mut tx = self.pool.begin_with("BEGIN IMMEDIATE").await?;
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
        let mut tx = self.pool.begin_with("BEGIN IMMEDIATE").await?;
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
             WHERE e.job_id = ? AND e.seq > ? ORDER BY e.seq LIMIT ?",
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
        let mut tx = self.pool.begin_with("BEGIN IMMEDIATE").await?;
        let tasks = sqlx::query(
            "SELECT * FROM tasks WHERE job_id = ? AND state IN ('pending', 'assigned', 'running', 'lost') \
             ORDER BY id",
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
        // Run on every tick and almost always finds nothing: look first
        // without the write lock, which submits and claims would wait for.
        let any: bool = sqlx::query_scalar(
            "SELECT EXISTS (SELECT 1 FROM tasks t JOIN jobs j ON j.id = t.job_id \
             WHERE t.state = 'pending' AND j.deadline_ms <= ?)",
        )
        .bind(now_ms)
        .fetch_one(&self.pool)
        .await?;
        if !any {
            return Ok(Vec::new());
        }
        let mut tx = self.pool.begin_with("BEGIN IMMEDIATE").await?;
        let tasks = sqlx::query(
            "SELECT t.* FROM tasks t JOIN jobs j ON j.id = t.job_id \
             WHERE t.state = 'pending' AND j.deadline_ms <= ? ORDER BY t.id",
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
        // As for expiry: look first, without the write lock.
        let any: bool = sqlx::query_scalar(
            "SELECT EXISTS (SELECT 1 FROM tasks t JOIN agents a ON a.id = t.agent_id \
             WHERE t.state IN ('assigned', 'running') AND a.last_seen_ms < ?)",
        )
        .bind(seen_before_ms)
        .fetch_one(&self.pool)
        .await?;
        if !any {
            return Ok(Vec::new());
        }
        let mut tx = self.pool.begin_with("BEGIN IMMEDIATE").await?;
        let tasks = sqlx::query(
            "SELECT t.*, a.last_seen_ms AS agent_last_seen_ms FROM tasks t JOIN agents a ON a.id = t.agent_id \
             WHERE t.state IN ('assigned', 'running') AND a.last_seen_ms < ? ORDER BY t.id",
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

    async fn notify(&self, notification: Notification) -> Result<(), StoreError> {
        // No subscriber is not an error: nobody needed to hear it.
        let _ = self.notifications.send(notification);
        Ok(())
    }

    async fn try_lead(&self) -> Result<bool, StoreError> {
        Ok(true)
    }
}
