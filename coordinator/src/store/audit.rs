//! The audit log: who did what, newest first, filtered by app,
//! environment, actor and time in one query for both backends.

use super::db::{On, query};
use super::rows::Columns;
use super::{Store, StoreError};

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
    /// The app the action concerns (a deploy, a secret, a job of the app);
    /// `None` for actions about no app (tokens, operators, agents).
    pub app: Option<String>,
    /// Its environment, when the action concerns one.
    pub env: Option<String>,
}

/// Which entries [`Store::list_audit`] returns; every filter is optional.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AuditFilter {
    pub app: Option<String>,
    pub env: Option<String>,
    /// Entries whose actor is any of these (an operator is stored by its
    /// SPIFFE URI; the caller passes both the name and the URI).
    pub actors: Vec<String>,
    /// At or after this time.
    pub since_ms: Option<i64>,
    /// At most this many (0 returns none), newest first.
    pub limit: u32,
}

/// The most entries one listing returns.
pub const MAX_AUDIT_LIMIT: u32 = 10_000;

/// Inserts one audit entry, on the pool or in a transaction (the job
/// methods write theirs in the transaction of the change).
pub(crate) async fn insert<'c>(
    on: impl Into<On<'c>>,
    entry: &AuditEntry,
) -> Result<(), StoreError> {
    query(
        "INSERT INTO audit_log (at_ms, actor, action, target, detail, app, env) \
         VALUES ($1, $2, $3, $4, $5, $6, $7)",
    )
    .bind(entry.at_ms)
    .bind(&entry.actor)
    .bind(&entry.action)
    .bind(&entry.target)
    .bind(&entry.detail)
    .bind(&entry.app)
    .bind(&entry.env)
    .execute(on)
    .await?;
    Ok(())
}

impl Store {
    pub async fn append_audit(&self, entry: &AuditEntry) -> Result<(), StoreError> {
        insert(&self.pool, entry).await
    }

    /// The entries `filter` selects, newest first (within one millisecond,
    /// the later append first).
    pub async fn list_audit(&self, filter: &AuditFilter) -> Result<Vec<AuditEntry>, StoreError> {
        // Actors as a fixed pair of parameters (the second repeats the
        // first when only one is given): the same SQL on both engines,
        // without an array type SQLite lacks.
        let first = filter.actors.first().cloned();
        let second = filter.actors.get(1).cloned().or_else(|| first.clone());
        query(
            "SELECT * FROM audit_log \
             WHERE (CAST($1 AS TEXT) IS NULL OR app = $1) \
               AND (CAST($2 AS TEXT) IS NULL OR env = $2) \
               AND (CAST($3 AS TEXT) IS NULL OR actor = $3 OR actor = $4) \
               AND at_ms >= $5 \
             ORDER BY at_ms DESC, id DESC LIMIT $6",
        )
        .bind(&filter.app)
        .bind(&filter.env)
        .bind(first)
        .bind(second)
        .bind(filter.since_ms.unwrap_or(i64::MIN))
        .bind(i64::from(filter.limit.min(MAX_AUDIT_LIMIT)))
        .fetch_all(&self.pool)
        .await?
        .iter()
        .map(audit_entry)
        .collect()
    }
}

// --- decoding -----------------------------------------------------------

pub(crate) fn audit_entry(row: &impl Columns) -> Result<AuditEntry, StoreError> {
    Ok(AuditEntry {
        at_ms: row.int("at_ms")?,
        actor: row.text("actor")?,
        action: row.text("action")?,
        target: row.text("target")?,
        detail: row.text("detail")?,
        app: row.opt_text("app")?,
        env: row.opt_text("env")?,
    })
}
