//! The audit log: who did what, newest first.

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
}

/// Inserts one audit entry, on the pool or in a transaction (the job
/// methods write theirs in the transaction of the change).
pub(crate) async fn insert<'c>(
    on: impl Into<On<'c>>,
    entry: &AuditEntry,
) -> Result<(), StoreError> {
    query(
        "INSERT INTO audit_log (at_ms, actor, action, target, detail) VALUES ($1, $2, $3, $4, $5)",
    )
    .bind(entry.at_ms)
    .bind(&entry.actor)
    .bind(&entry.action)
    .bind(&entry.target)
    .bind(&entry.detail)
    .execute(on)
    .await?;
    Ok(())
}

impl Store {
    pub async fn append_audit(&self, entry: &AuditEntry) -> Result<(), StoreError> {
        insert(&self.pool, entry).await
    }

    /// Newest first.
    pub async fn list_audit(&self, limit: u32) -> Result<Vec<AuditEntry>, StoreError> {
        query("SELECT * FROM audit_log ORDER BY at_ms DESC, id DESC LIMIT $1")
            .bind(i64::from(limit))
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
    })
}
