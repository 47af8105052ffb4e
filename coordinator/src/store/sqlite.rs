//! The SQLite backend: the embedded default, one file and no server.
//!
//! SQLite lets one writer in at a time. Transactions that read before they
//! write start with `BEGIN IMMEDIATE`, which takes the write lock up front:
//! a deferred transaction that later tries to write fails at once with
//! `SQLITE_BUSY` instead of waiting, and could act on a stale read. Other
//! methods are single statements (`UPDATE … RETURNING`, `INSERT … ON
//! CONFLICT DO NOTHING`), atomic on their own.

use std::path::Path;
use std::time::Duration;

use async_trait::async_trait;
use ferry_common::identity::Role;
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions};
use uuid::Uuid;

use super::rows::{self, EmbeddedMigration};
use super::{
    AgentRecord, AuditEntry, Backend, JoinTokenRecord, NewAgent, OperatorRecord, Store, StoreError,
};

pub(crate) const MIGRATIONS: &[EmbeddedMigration] = &[(
    1,
    "foundation",
    include_str!("../../../migrations/sqlite/0001_foundation.sql"),
)];

/// Writers wait this long for the write lock (another connection, or
/// another process on the same file) before failing with `database is locked`.
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

/// Readers run concurrently under WAL; writers queue on SQLite's lock.
const MAX_CONNECTIONS: u32 = 8;

pub struct SqliteStore {
    pool: SqlitePool,
}

impl SqliteStore {
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
        Ok(Self { pool })
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

    async fn agent_heartbeat(
        &self,
        id: Uuid,
        now_ms: i64,
        health_json: &str,
    ) -> Result<(), StoreError> {
        let updated =
            sqlx::query("UPDATE agents SET last_seen_ms = ?, health_json = ? WHERE id = ?")
                .bind(now_ms)
                .bind(health_json)
                .bind(id.to_string())
                .execute(&self.pool)
                .await?
                .rows_affected();
        rows::agent_found(updated, id)
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
        sqlx::query(
            "INSERT INTO audit_log (at_ms, actor, action, target, detail) VALUES (?, ?, ?, ?, ?)",
        )
        .bind(entry.at_ms)
        .bind(&entry.actor)
        .bind(&entry.action)
        .bind(&entry.target)
        .bind(&entry.detail)
        .execute(&self.pool)
        .await?;
        Ok(())
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
}
