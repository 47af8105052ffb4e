//! Join tokens and enrollment: a one-time token an admin creates, which an
//! agent spends to get its identity (the certificate serial and expiry it
//! was issued, renewed by [`Store::agent_cert_renewed`]).

use std::collections::BTreeMap;

use uuid::Uuid;

use super::db::{query, row_lock};
use ferry_common::time::rfc3339_ms;

use super::rows::{self, Columns, labels, uuid};
use super::{AgentRecord, Store, StoreError};

/// The index that allows one live agent per name (see the migrations).
const ACTIVE_NAME_INDEX: &str = "agents_active_name";

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

impl Store {
    pub async fn insert_join_token(&self, token: &JoinTokenRecord) -> Result<(), StoreError> {
        query(
            "INSERT INTO join_tokens (token_hash, name, labels_json, created_by, created_at_ms, \
             expires_at_ms, used_at_ms, used_by) VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
        )
        .bind(&token.token_hash)
        .bind(&token.name)
        .bind(rows::labels_json(&token.labels))
        .bind(&token.created_by)
        .bind(token.created_at_ms)
        .bind(token.expires_at_ms)
        .bind(token.used_at_ms)
        .bind(token.used_by)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    pub async fn get_join_token(
        &self,
        token_hash: &str,
    ) -> Result<Option<JoinTokenRecord>, StoreError> {
        query("SELECT * FROM join_tokens WHERE token_hash = $1")
            .bind(token_hash)
            .fetch_optional(&self.pool)
            .await?
            .map(|row| join_token(&row))
            .transpose()
    }

    /// Atomically: checks the token is known, unused and unexpired at
    /// `now_ms` (else `TokenUnknown` / `TokenUsed` / `TokenExpired`), checks
    /// no unrevoked agent has `agent.name` (else `AgentNameTaken`, and the
    /// token stays usable), inserts the agent and marks the token used.
    ///
    /// On PostgreSQL, several coordinators may enroll at once: the token row
    /// is locked (`FOR UPDATE`) for the length of the transaction, and the
    /// partial unique index on live agent names settles two enrollments of
    /// one name through different tokens. SQLite's write transaction is
    /// alone.
    pub async fn enroll_agent(
        &self,
        token_hash: &str,
        now_ms: i64,
        agent: &NewAgent,
    ) -> Result<AgentRecord, StoreError> {
        let mut tx = self.pool.begin().await?;
        let lock = row_lock(tx.backend(), " FOR UPDATE");
        let token = query(format!(
            "SELECT * FROM join_tokens WHERE token_hash = $1{lock}"
        ))
        .bind(token_hash)
        .fetch_optional(&mut tx)
        .await?
        .map(|row| join_token(&row))
        .transpose()?
        .ok_or(StoreError::TokenUnknown)?;
        check_token_usable(&token, now_ms)?;
        let taken = query("SELECT 1 FROM agents WHERE name = $1 AND revoked_at_ms IS NULL")
            .bind(&agent.name)
            .fetch_optional(&mut tx)
            .await?
            .is_some();
        if taken {
            return Err(StoreError::AgentNameTaken {
                name: agent.name.clone(),
            });
        }
        let record = enrolled(agent, now_ms);
        query(
            "INSERT INTO agents (id, name, hostname, labels_json, version, enrolled_at_ms, \
             cert_serial, cert_not_after_ms) VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
        )
        .bind(record.id)
        .bind(&record.name)
        .bind(&record.hostname)
        .bind(rows::labels_json(&record.labels))
        .bind(&record.version)
        .bind(record.enrolled_at_ms)
        .bind(&record.cert_serial)
        .bind(record.cert_not_after_ms)
        .execute(&mut tx)
        .await
        .map_err(|e| name_taken_or(e, &record.name))?;
        query("UPDATE join_tokens SET used_at_ms = $1, used_by = $2 WHERE token_hash = $3")
            .bind(now_ms)
            .bind(record.id)
            .bind(token_hash)
            .execute(&mut tx)
            .await?;
        tx.commit().await?;
        Ok(record)
    }
}

/// A unique violation of the live-name index means another coordinator
/// enrolled an agent of that name after this transaction checked for one
/// (PostgreSQL; SQLite names no constraint, and its one writer cannot race).
fn name_taken_or(err: StoreError, name: &str) -> StoreError {
    let name_taken = match &err {
        StoreError::Database(e) => e.as_database_error().is_some_and(|db| {
            db.is_unique_violation() && db.constraint() == Some(ACTIVE_NAME_INDEX)
        }),
        _ => false,
    };
    if name_taken {
        StoreError::AgentNameTaken { name: name.into() }
    } else {
        err
    }
}

// --- decoding -----------------------------------------------------------

pub(crate) fn join_token(row: &impl Columns) -> Result<JoinTokenRecord, StoreError> {
    const TABLE: &str = "join_tokens";
    Ok(JoinTokenRecord {
        token_hash: row.text("token_hash")?,
        name: row.opt_text("name")?,
        labels: labels(TABLE, &row.text("labels_json")?)?,
        created_by: row.text("created_by")?,
        created_at_ms: row.int("created_at_ms")?,
        expires_at_ms: row.int("expires_at_ms")?,
        used_at_ms: row.opt_int("used_at_ms")?,
        used_by: row
            .opt_text("used_by")?
            .map(|text| uuid(TABLE, "used_by", &text))
            .transpose()?,
    })
}

/// The token checks of `enroll_agent`, once the token row is locked. A token
/// expires at `expires_at_ms` itself, not a millisecond later.
pub(crate) fn check_token_usable(token: &JoinTokenRecord, now_ms: i64) -> Result<(), StoreError> {
    if let Some(used_at) = token.used_at_ms {
        return Err(StoreError::TokenUsed {
            used_at: rfc3339_ms(used_at),
        });
    }
    if now_ms >= token.expires_at_ms {
        return Err(StoreError::TokenExpired {
            expired_at: rfc3339_ms(token.expires_at_ms),
        });
    }
    Ok(())
}

/// The record `enroll_agent` inserted: a fresh agent was never seen and
/// holds no session yet.
pub(crate) fn enrolled(agent: &NewAgent, now_ms: i64) -> AgentRecord {
    AgentRecord {
        id: agent.id,
        name: agent.name.clone(),
        hostname: agent.hostname.clone(),
        labels: agent.labels.clone(),
        version: agent.version.clone(),
        enrolled_at_ms: now_ms,
        last_seen_ms: 0,
        connected_to: None,
        revoked_at_ms: None,
        cert_serial: agent.cert_serial.clone(),
        cert_not_after_ms: agent.cert_not_after_ms,
        previous_cert_serial: None,
        cert_renewed_at_ms: None,
        health_json: None,
        capabilities: Vec::new(),
    }
}
