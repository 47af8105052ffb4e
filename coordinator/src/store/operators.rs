//! Operators: the people and CI systems using the CLI, and their roles.

use ferry_common::identity::Role;

use super::db::query;
use super::rows::Columns;
use super::{Store, StoreError};

/// An operator (a person or a CI system using the CLI).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OperatorRecord {
    pub name: String,
    pub role: Role,
    pub created_at_ms: i64,
    pub created_by: String,
    pub revoked_at_ms: Option<i64>,
}

impl Store {
    /// `OperatorExists` if the name is active, `OperatorRevoked` if it was revoked.
    pub async fn add_operator(&self, op: &OperatorRecord) -> Result<(), StoreError> {
        let inserted = query(
            "INSERT INTO operators (name, role, created_at_ms, created_by, revoked_at_ms) \
             VALUES ($1, $2, $3, $4, $5) ON CONFLICT (name) DO NOTHING",
        )
        .bind(&op.name)
        .bind(op.role.as_str())
        .bind(op.created_at_ms)
        .bind(&op.created_by)
        .bind(op.revoked_at_ms)
        .execute(&self.pool)
        .await?;
        if inserted == 1 {
            Ok(())
        } else {
            Err(operator_refusal(
                &op.name,
                self.get_operator(&op.name).await?,
            ))
        }
    }

    pub async fn get_operator(&self, name: &str) -> Result<Option<OperatorRecord>, StoreError> {
        query("SELECT * FROM operators WHERE name = $1")
            .bind(name)
            .fetch_optional(&self.pool)
            .await?
            .map(|row| operator(&row))
            .transpose()
    }

    pub async fn list_operators(&self) -> Result<Vec<OperatorRecord>, StoreError> {
        query("SELECT * FROM operators ORDER BY name")
            .fetch_all(&self.pool)
            .await?
            .iter()
            .map(operator)
            .collect()
    }

    /// `OperatorNotFound`; revoking twice keeps the first time.
    pub async fn revoke_operator(
        &self,
        name: &str,
        now_ms: i64,
    ) -> Result<OperatorRecord, StoreError> {
        query(
            "UPDATE operators SET revoked_at_ms = coalesce(revoked_at_ms, $1) WHERE name = $2 \
             RETURNING *",
        )
        .bind(now_ms)
        .bind(name)
        .fetch_optional(&self.pool)
        .await?
        .map(|row| operator(&row))
        .transpose()?
        .ok_or_else(|| StoreError::OperatorNotFound(name.into()))
    }
}

// --- decoding -----------------------------------------------------------

pub(crate) fn operator(row: &impl Columns) -> Result<OperatorRecord, StoreError> {
    let role = row.text("role")?;
    Ok(OperatorRecord {
        name: row.text("name")?,
        role: role.parse::<Role>().map_err(|e| StoreError::Corrupt {
            table: "operators",
            reason: format!("role {role:?}: {e}"),
        })?,
        created_at_ms: row.int("created_at_ms")?,
        created_by: row.text("created_by")?,
        revoked_at_ms: row.opt_int("revoked_at_ms")?,
    })
}

/// Why `add_operator` inserted nothing: the name is taken, for good if its
/// operator was revoked.
pub(crate) fn operator_refusal(name: &str, existing: Option<OperatorRecord>) -> StoreError {
    match existing {
        Some(op) if op.revoked_at_ms.is_some() => StoreError::OperatorRevoked { name: name.into() },
        _ => StoreError::OperatorExists { name: name.into() },
    }
}
