//! Secrets per (app, env), encrypted at rest: setting, listing, deleting
//! and resolving them for a deploy ([`Core::resolve_secrets`]), and the
//! start-time check that this coordinator's key is the store's.
//!
//! The coordinator seals every value with the key of
//! [`crate::secrets_key`] before the store sees it, and opens values only to
//! hand them to a task. The key comes from `FERRY_SECRETS_KEY` (base64 or
//! hex of 32 bytes, read by [`crate::config`]), else from the file
//! `secrets.key` in the data dir (mode 0600), which `ferry-coordinator init`
//! writes and `serve` creates when a data dir from before secrets existed
//! has none. Coordinators sharing a PostgreSQL store must share the key:
//! copy `secrets.key` to each data dir, or give each the same
//! `FERRY_SECRETS_KEY`. At start, `serve` checks the key against a sealed
//! check value kept in the store ([`check_key`]) and refuses to run with a
//! different one, which would otherwise split the secrets between two keys
//! that each open only half.
//!
//! Values never reach a log, an error message, an audit entry or a listing.

use std::collections::{BTreeMap, BTreeSet};

use ferry_common::identity::validate_name;
use ferry_common::time::now_ms;

use crate::core::Core;
use crate::error::CoordinatorError;
use crate::secrets_key::{SecretsError, SecretsKey};
use crate::store::{SecretMeta, SecretRecord, Store};

// The rules for names and values live in `ferry_common::secret`, where the
// CLI checks them too before it connects.
pub use ferry_common::secret::{
    MAX_NAME_LEN, MAX_VALUE_BYTES, validate_secret_name, validate_secret_value,
};

/// Where the reserved key-check value lives. `_ferry` can never be an app:
/// app names pass [`validate_name`], which refuses a leading `_`, so no RPC
/// can list, overwrite or delete it.
const CHECK_APP: &str = "_ferry";
const CHECK_ENV: &str = "_ferry";
const CHECK_NAME: &str = "SECRETS_KEY_CHECK";
const CHECK_VALUE: &[u8] = b"ferry secrets key check, version 1";

/// Checks `key` against the key-check value sealed in `store`, writing that
/// value if the store has none yet (a new store, or one from before
/// secrets). Refuses a key that does not open it: a coordinator running
/// with another key would seal new secrets that its peers cannot open and
/// fail to open theirs.
pub async fn check_key(store: &Store, key: &SecretsKey) -> Result<(), CoordinatorError> {
    let names = [CHECK_NAME.to_string()];
    let opens = |rows: &[SecretRecord]| {
        rows.first().map(|row| {
            key.open(
                CHECK_APP,
                CHECK_ENV,
                CHECK_NAME,
                &row.nonce,
                &row.ciphertext,
            )
            .is_ok_and(|value| value.as_slice() == CHECK_VALUE)
        })
    };
    let mismatch = || SecretsError::KeyMismatch {
        origin: key.origin().to_string(),
    };
    match opens(&store.get_secrets(CHECK_APP, CHECK_ENV, &names).await?) {
        Some(true) => return Ok(()),
        Some(false) => return Err(mismatch().into()),
        None => {}
    }
    let (nonce, ciphertext) = key.seal(CHECK_APP, CHECK_ENV, CHECK_NAME, CHECK_VALUE)?;
    let now = now_ms();
    store
        .put_secret(&SecretRecord {
            app: CHECK_APP.into(),
            env: CHECK_ENV.into(),
            name: CHECK_NAME.into(),
            nonce,
            ciphertext,
            created_at_ms: now,
            updated_at_ms: now,
            // As the bootstrapped admin's `created_by`: no operator did it.
            updated_by: "system".into(),
        })
        .await?;
    // Two coordinators with different keys may both have found no check
    // value and written one; the last write stands, and the other learns
    // here that its key is not the store's.
    match opens(&store.get_secrets(CHECK_APP, CHECK_ENV, &names).await?) {
        Some(true) => Ok(()),
        _ => Err(mismatch().into()),
    }
}

/// Checks the (app, env) a secret belongs to: names like agents'.
fn validate_place(app: &str, env: Option<&str>) -> Result<(), CoordinatorError> {
    validate_name(app).map_err(|r| CoordinatorError::invalid("--app", r))?;
    if let Some(env) = env {
        validate_name(env).map_err(|r| CoordinatorError::invalid("--env", r))?;
    }
    Ok(())
}

/// The audit target of a secret: `app/env/NAME`.
fn audit_target(app: &str, env: &str, name: &str) -> String {
    format!("{app}/{env}/{name}")
}

fn meta_of(record: SecretRecord) -> SecretMeta {
    SecretMeta {
        app: record.app,
        env: record.env,
        name: record.name,
        created_at_ms: record.created_at_ms,
        updated_at_ms: record.updated_at_ms,
        updated_by: record.updated_by,
    }
}

impl Core {
    /// Seals and stores `value` as secret `name` of (`app`, `env`),
    /// replacing any previous value. Returns what a listing would show.
    pub async fn set_secret(
        &self,
        actor: &str,
        app: &str,
        env: &str,
        name: &str,
        value: &str,
    ) -> Result<SecretMeta, CoordinatorError> {
        validate_place(app, Some(env))?;
        validate_secret_name(name).map_err(|r| CoordinatorError::invalid("secret name", r))?;
        validate_secret_value(value).map_err(|r| CoordinatorError::invalid("secret value", r))?;
        let (nonce, ciphertext) = self.secrets_key.seal(app, env, name, value.as_bytes())?;
        let now = now_ms();
        self.store
            .put_secret(&SecretRecord {
                app: app.into(),
                env: env.into(),
                name: name.into(),
                nonce,
                ciphertext,
                created_at_ms: now,
                updated_at_ms: now,
                updated_by: actor.into(),
            })
            .await?;
        self.audit_app(
            actor,
            "secret.set",
            &audit_target(app, env, name),
            app,
            Some(env),
            String::new(),
        )
        .await;
        // Read back for the first creation time, which a replace keeps.
        let stored = self
            .store
            .get_secrets(app, env, &[name.to_string()])
            .await?
            .into_iter()
            .next()
            .map(meta_of)
            .unwrap_or(SecretMeta {
                app: app.into(),
                env: env.into(),
                name: name.into(),
                created_at_ms: now,
                updated_at_ms: now,
                updated_by: actor.into(),
            });
        Ok(stored)
    }

    /// The secrets of `app` (of `env`, if given): names and metadata only.
    pub async fn list_secrets(
        &self,
        app: &str,
        env: Option<&str>,
    ) -> Result<Vec<SecretMeta>, CoordinatorError> {
        validate_place(app, env)?;
        Ok(self.store.list_secrets(app, env).await?)
    }

    /// Deletes secret `name` of (`app`, `env`); `NotFound` if there is none.
    pub async fn delete_secret(
        &self,
        actor: &str,
        app: &str,
        env: &str,
        name: &str,
    ) -> Result<(), CoordinatorError> {
        validate_place(app, Some(env))?;
        validate_secret_name(name).map_err(|r| CoordinatorError::invalid("secret name", r))?;
        if !self.store.delete_secret(app, env, name).await? {
            return Err(SecretsError::NotFound {
                app: app.into(),
                env: env.into(),
                name: name.into(),
            }
            .into());
        }
        self.audit_app(
            actor,
            "secret.delete",
            &audit_target(app, env, name),
            app,
            Some(env),
            String::new(),
        )
        .await;
        Ok(())
    }

    /// The values of `names` for (`app`, `env`), opened, for a deploy to
    /// send inside `Assign`. Fails listing every missing name, or on the
    /// first value that does not open. The caller must not log the result.
    pub async fn resolve_secrets(
        &self,
        app: &str,
        env: &str,
        names: &[String],
    ) -> Result<BTreeMap<String, String>, CoordinatorError> {
        resolve(self.store.as_ref(), &self.secrets_key, app, env, names).await
    }
}

/// [`Core::resolve_secrets`] on a store and key.
async fn resolve(
    store: &Store,
    key: &SecretsKey,
    app: &str,
    env: &str,
    names: &[String],
) -> Result<BTreeMap<String, String>, CoordinatorError> {
    let wanted: BTreeSet<&str> = names.iter().map(String::as_str).collect();
    let unique: Vec<String> = wanted.iter().map(|n| n.to_string()).collect();
    let rows = store.get_secrets(app, env, &unique).await?;
    let found: BTreeSet<&str> = rows.iter().map(|r| r.name.as_str()).collect();
    let missing: Vec<String> = wanted.difference(&found).map(|n| n.to_string()).collect();
    if !missing.is_empty() {
        return Err(SecretsError::Missing {
            app: app.into(),
            env: env.into(),
            names: missing,
        }
        .into());
    }
    let mut values = BTreeMap::new();
    for row in rows {
        let mut opened = key.open(app, env, &row.name, &row.nonce, &row.ciphertext)?;
        // Moves the buffer into the String, leaving no copy behind.
        let value = String::from_utf8(std::mem::take(&mut *opened)).map_err(|e| {
            // The rejected bytes are the value; wipe them before returning.
            let mut bytes = e.into_bytes();
            zeroize::Zeroize::zeroize(&mut bytes);
            SecretsError::Corrupt {
                app: app.into(),
                env: env.into(),
                name: row.name.clone(),
                reason: "its value is not UTF-8".into(),
            }
        })?;
        values.insert(row.name, value);
    }
    Ok(values)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key() -> SecretsKey {
        SecretsKey::generate().unwrap()
    }

    #[test]
    fn missing_secrets_are_listed_with_the_command_that_sets_them() {
        let err = SecretsError::Missing {
            app: "shop".into(),
            env: "production".into(),
            names: vec!["API_KEY".into(), "DATABASE_URL".into()],
        };
        assert_eq!(
            err.to_string(),
            "missing secrets for app shop env production: API_KEY, DATABASE_URL; \
             set them with `ferry secret set --app shop --env production API_KEY`"
        );
    }

    #[tokio::test]
    async fn resolve_and_key_check_against_a_store() {
        let dir = tempfile::tempdir().unwrap();
        let store = crate::store::open(&dir.path().join("ferry.db").display().to_string())
            .await
            .unwrap();
        let k = key();
        check_key(store.as_ref(), &k).await.unwrap();
        check_key(store.as_ref(), &k)
            .await
            .expect("the same key passes again");
        let other = key();
        let err = check_key(store.as_ref(), &other)
            .await
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("differs from the one that encrypted this store's secrets"),
            "{err}"
        );

        for (name, value) in [("API_KEY", "key-1"), ("DATABASE_URL", "postgres://db")] {
            let (nonce, ciphertext) = k
                .seal("shop", "production", name, value.as_bytes())
                .unwrap();
            store
                .put_secret(&SecretRecord {
                    app: "shop".into(),
                    env: "production".into(),
                    name: name.into(),
                    nonce,
                    ciphertext,
                    created_at_ms: 1,
                    updated_at_ms: 1,
                    updated_by: "test".into(),
                })
                .await
                .unwrap();
        }
        let names = |list: &[&str]| list.iter().map(|n| n.to_string()).collect::<Vec<_>>();
        let values = resolve(
            store.as_ref(),
            &k,
            "shop",
            "production",
            &names(&["DATABASE_URL", "API_KEY", "API_KEY"]),
        )
        .await
        .unwrap();
        assert_eq!(
            values,
            BTreeMap::from([
                ("API_KEY".to_string(), "key-1".to_string()),
                ("DATABASE_URL".to_string(), "postgres://db".to_string())
            ])
        );
        assert!(
            resolve(store.as_ref(), &k, "shop", "production", &[])
                .await
                .unwrap()
                .is_empty()
        );
        let err = resolve(
            store.as_ref(),
            &k,
            "shop",
            "production",
            &names(&["ZED", "API_KEY", "MAIL"]),
        )
        .await
        .unwrap_err()
        .to_string();
        assert!(
            err.starts_with("missing secrets for app shop env production: MAIL, ZED;"),
            "{err}"
        );
        let err = resolve(
            store.as_ref(),
            &other,
            "shop",
            "production",
            &names(&["API_KEY"]),
        )
        .await
        .unwrap_err()
        .to_string();
        assert!(
            err.starts_with("cannot decrypt secret API_KEY: the secrets key differs"),
            "{err}"
        );
    }
}
