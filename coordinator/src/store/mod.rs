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

pub mod postgres;
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
    /// A session opened on `coordinator_id`.
    async fn agent_connected(
        &self,
        id: Uuid,
        coordinator_id: &str,
        version: &str,
        hostname: &str,
        now_ms: i64,
    ) -> Result<(), StoreError>;
    async fn agent_heartbeat(
        &self,
        id: Uuid,
        now_ms: i64,
        health_json: &str,
    ) -> Result<(), StoreError>;
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
