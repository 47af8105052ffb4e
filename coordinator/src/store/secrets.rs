//! Secrets, as sealed by [`crate::secrets`]: values arrive sealed and the
//! store never sees a plaintext, nor has a way to produce one.

use super::db::{in_list, query};
use super::rows::Columns;
use super::{Store, StoreError};

/// One secret as stored: the value sealed by [`crate::secrets`], never the
/// plaintext. The store neither encrypts nor decrypts, so a copy of the
/// database (a backup, a replica, a leaked dump) reveals no value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SecretRecord {
    pub app: String,
    pub env: String,
    /// An environment variable name.
    pub name: String,
    pub nonce: Vec<u8>,
    /// The sealed value with its authentication tag.
    pub ciphertext: Vec<u8>,
    /// When the secret was first set; replacing it keeps this.
    pub created_at_ms: i64,
    pub updated_at_ms: i64,
    /// SPIFFE URI of the operator who last set it.
    pub updated_by: String,
}

/// What listing secrets shows: everything but the sealed value, so a
/// listing cannot leak one even to a reader holding the key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SecretMeta {
    pub app: String,
    pub env: String,
    pub name: String,
    pub created_at_ms: i64,
    pub updated_at_ms: i64,
    pub updated_by: String,
}

impl Store {
    /// Inserts the secret, or replaces the one with the same `(app, env,
    /// name)`: nonce, ciphertext, `updated_at_ms` and `updated_by` change,
    /// the first `created_at_ms` stays.
    pub async fn put_secret(&self, secret: &SecretRecord) -> Result<(), StoreError> {
        query(
            "INSERT INTO secrets (app, env, name, nonce, ciphertext, created_at_ms, updated_at_ms, \
             updated_by) VALUES ($1, $2, $3, $4, $5, $6, $7, $8) \
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

    /// Those of `names` that exist for `(app, env)`, in name order; names
    /// without a secret are left out (the caller reports them) and an empty
    /// `names` gives an empty list.
    pub async fn get_secrets(
        &self,
        app: &str,
        env: &str,
        names: &[String],
    ) -> Result<Vec<SecretRecord>, StoreError> {
        if names.is_empty() {
            return Ok(Vec::new());
        }
        let names_in = in_list(self.backend(), "name", 3);
        query(format!(
            "SELECT * FROM secrets WHERE app = $1 AND env = $2 AND {names_in} ORDER BY name"
        ))
        .bind(app)
        .bind(env)
        .bind(names)
        .fetch_all(&self.pool)
        .await?
        .iter()
        .map(secret)
        .collect()
    }

    /// The secrets of `app` (of one env, if given), without their values,
    /// ordered by env then name.
    pub async fn list_secrets(
        &self,
        app: &str,
        env: Option<&str>,
    ) -> Result<Vec<SecretMeta>, StoreError> {
        query(
            "SELECT app, env, name, created_at_ms, updated_at_ms, updated_by FROM secrets \
             WHERE app = $1 AND (CAST($2 AS TEXT) IS NULL OR env = $2) ORDER BY env, name",
        )
        .bind(app)
        .bind(env)
        .fetch_all(&self.pool)
        .await?
        .iter()
        .map(secret_meta)
        .collect()
    }

    /// Deletes one secret; returns whether it existed.
    pub async fn delete_secret(
        &self,
        app: &str,
        env: &str,
        name: &str,
    ) -> Result<bool, StoreError> {
        let deleted = query("DELETE FROM secrets WHERE app = $1 AND env = $2 AND name = $3")
            .bind(app)
            .bind(env)
            .bind(name)
            .execute(&self.pool)
            .await?;
        Ok(deleted == 1)
    }
}

// --- decoding -----------------------------------------------------------

/// A `secrets` row, sealed value included.
pub(crate) fn secret(row: &impl Columns) -> Result<SecretRecord, StoreError> {
    Ok(SecretRecord {
        app: row.text("app")?,
        env: row.text("env")?,
        name: row.text("name")?,
        nonce: row.bytes("nonce")?,
        ciphertext: row.bytes("ciphertext")?,
        created_at_ms: row.int("created_at_ms")?,
        updated_at_ms: row.int("updated_at_ms")?,
        updated_by: row.text("updated_by")?,
    })
}

/// A `secrets` row without its sealed value (listings never select it).
pub(crate) fn secret_meta(row: &impl Columns) -> Result<SecretMeta, StoreError> {
    Ok(SecretMeta {
        app: row.text("app")?,
        env: row.text("env")?,
        name: row.text("name")?,
        created_at_ms: row.int("created_at_ms")?,
        updated_at_ms: row.int("updated_at_ms")?,
        updated_by: row.text("updated_by")?,
    })
}
