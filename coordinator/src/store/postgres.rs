//! The PostgreSQL backend, for production: several coordinators may share
//! one database, so every check-then-write is made safe against the others.
//!
//! Enrollment locks the token row (`SELECT … FOR UPDATE`) for the length of
//! its transaction, and the partial unique index on live agent names settles
//! two enrollments of one name through different tokens. The bootstrap
//! relies on `INSERT … ON CONFLICT DO NOTHING` on its `meta` key, which makes
//! a concurrent second inserter wait for the first and then do nothing.

use std::str::FromStr;

use async_trait::async_trait;
use ferry_common::identity::Role;
use sqlx::Connection;
use sqlx::postgres::{PgConnectOptions, PgConnection, PgPool, PgPoolOptions};
use uuid::Uuid;

use super::rows::{self, EmbeddedMigration};
use super::{
    AgentRecord, AuditEntry, Backend, JoinTokenRecord, NewAgent, OperatorRecord, Store, StoreError,
};

pub(crate) const MIGRATIONS: &[EmbeddedMigration] = &[(
    1,
    "foundation",
    include_str!("../../../migrations/postgres/0001_foundation.sql"),
)];

/// The index that allows one live agent per name (see the migrations).
const ACTIVE_NAME_INDEX: &str = "agents_active_name";

pub struct PgStore {
    pool: PgPool,
}

impl PgStore {
    /// Connects to the database at `url` and applies pending migrations;
    /// concurrent coordinators wait for each other's migration.
    pub async fn connect(url: &str) -> Result<Self, StoreError> {
        let options = PgConnectOptions::from_str(url).map_err(|_| StoreError::BadUrl {
            url: without_credentials(url),
        })?;
        migrate(&options).await?;
        let pool = PgPoolOptions::new().connect_with(options).await?;
        Ok(Self { pool })
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

    async fn agent_heartbeat(
        &self,
        id: Uuid,
        now_ms: i64,
        health_json: &str,
    ) -> Result<(), StoreError> {
        let updated =
            sqlx::query("UPDATE agents SET last_seen_ms = $1, health_json = $2 WHERE id = $3")
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
        sqlx::query("INSERT INTO audit_log (at_ms, actor, action, target, detail) VALUES ($1, $2, $3, $4, $5)")
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
        sqlx::query("SELECT * FROM audit_log ORDER BY at_ms DESC, id DESC LIMIT $1")
            .bind(i64::from(limit))
            .fetch_all(&self.pool)
            .await?
            .iter()
            .map(rows::audit_entry)
            .collect()
    }
}
