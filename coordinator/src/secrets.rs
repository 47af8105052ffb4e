//! Secrets per (app, env), encrypted at rest.
//!
//! The coordinator seals every value with XChaCha20-Poly1305 under one
//! 32-byte key, [`SecretsKey`], before the store sees it, and opens values
//! only to hand them to a deploy ([`Core::resolve_secrets`]). Each value
//! gets a fresh random 24-byte nonce (192 bits: random nonces never collide
//! in practice, so no counter has to be kept consistent across coordinators)
//! and is bound to its place by the associated data `app\0env\0name`: a
//! ciphertext copied to another row does not open.
//!
//! The key comes from `FERRY_SECRETS_KEY` (base64 or hex of 32 bytes, read by
//! [`crate::config`]), else from the file `secrets.key` in the data dir
//! (mode 0600), which `ferry-coordinator init` writes and `serve` creates
//! when a data dir from before secrets existed has none. Coordinators
//! sharing a PostgreSQL store must share the key: copy `secrets.key` to each
//! data dir, or give each the same `FERRY_SECRETS_KEY`. At start, `serve`
//! checks the key against a sealed check value kept in the store
//! ([`check_key`]) and refuses to run with a different one, which would
//! otherwise split the secrets between two keys that each open only half.
//!
//! Values never reach a log, an error message, an audit entry or a listing;
//! key bytes and opened values live in [`Zeroizing`] buffers where the types
//! involved allow it.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use base64::Engine;
use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};
use ferry_common::fsutil::{self, FileError, Mode};
use ferry_common::identity::validate_name;
use ferry_common::time::now_ms;
use rand::TryRngCore;
use rand::rngs::OsRng;
use sha2::{Digest, Sha256};
use zeroize::Zeroizing;

use crate::core::Core;
use crate::error::CoordinatorError;
use crate::store::{SecretMeta, SecretRecord, Store};

/// File name of the secrets key inside the data dir.
pub const KEY_FILE: &str = "secrets.key";
/// The environment variable that supplies the key instead of the file.
pub const KEY_ENV: &str = "FERRY_SECRETS_KEY";
/// Bytes of key.
pub const KEY_LEN: usize = 32;
/// Bytes of nonce (XChaCha20's extended nonce).
pub const NONCE_LEN: usize = 24;
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

/// Errors of secrets: the key, sealing and opening, and refusals about
/// secrets. None of them carries a value or key material.
#[derive(Debug, thiserror::Error)]
pub enum SecretsError {
    #[error("{origin}: {reason}")]
    BadKey { origin: String, reason: String },
    #[error(transparent)]
    KeyFile(#[from] FileError),
    #[error("cannot read random bytes from the operating system: {0}")]
    Entropy(String),
    #[error(
        "cannot decrypt secret {name}: the secrets key differs from the one that encrypted it \
         (app {app}, env {env}; every coordinator sharing a store needs the same key: copy \
         {KEY_FILE} from the data dir of the coordinator that set it, or set {KEY_ENV})"
    )]
    WrongKey {
        app: String,
        env: String,
        name: String,
    },
    #[error(
        "the secrets key ({origin}) differs from the one that encrypted this store's secrets; \
         every coordinator sharing a store needs the same key: copy {KEY_FILE} from the data dir \
         of a coordinator already using this store, or set {KEY_ENV} to its contents (if that \
         key is lost, its secrets cannot be recovered: delete every row of the store's secrets \
         table and set them again)"
    )]
    KeyMismatch { origin: String },
    #[error("secret {name} of app {app} env {env} is corrupt in the store: {reason}")]
    Corrupt {
        app: String,
        env: String,
        name: String,
        reason: String,
    },
    #[error(
        "missing secrets for app {app} env {env}: {}; set them with `ferry secret set --app {app} --env {env} {}`",
        .names.join(", "),
        .names.first().map(String::as_str).unwrap_or("NAME")
    )]
    Missing {
        app: String,
        env: String,
        names: Vec<String>,
    },
    #[error("no secret {name} for app {app} env {env} (see `ferry secret ls --app {app}`)")]
    NotFound {
        app: String,
        env: String,
        name: String,
    },
}

/// Where a key came from, for messages (never the key itself).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeyOrigin {
    Env,
    File(PathBuf),
    /// Made in memory (tests).
    Generated,
}

impl std::fmt::Display for KeyOrigin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            KeyOrigin::Env => write!(f, "environment variable {KEY_ENV}"),
            KeyOrigin::File(path) => write!(f, "{}", path.display()),
            KeyOrigin::Generated => f.write_str("generated key"),
        }
    }
}

/// The key every secret is sealed with. Its bytes are wiped when it is
/// dropped; `Debug` shows only where it came from.
#[derive(Clone)]
pub struct SecretsKey {
    bytes: Zeroizing<[u8; KEY_LEN]>,
    origin: KeyOrigin,
}

impl std::fmt::Debug for SecretsKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SecretsKey")
            .field("origin", &self.origin)
            .finish_non_exhaustive()
    }
}

/// Equal keys are equal whatever their origin (configuration comparisons).
impl PartialEq for SecretsKey {
    fn eq(&self, other: &Self) -> bool {
        *self.bytes == *other.bytes
    }
}

impl SecretsKey {
    /// A new random key from the operating system's generator.
    pub fn generate() -> Result<Self, SecretsError> {
        let mut bytes = Zeroizing::new([0u8; KEY_LEN]);
        OsRng
            .try_fill_bytes(bytes.as_mut_slice())
            .map_err(|e| SecretsError::Entropy(e.to_string()))?;
        Ok(SecretsKey {
            bytes,
            origin: KeyOrigin::Generated,
        })
    }

    /// Parses a key written as base64 (standard or URL-safe, padded or not)
    /// or hex of exactly 32 bytes, surrounding whitespace ignored. Errors
    /// name `origin` and never repeat the text.
    pub fn parse(text: &str, origin: KeyOrigin) -> Result<Self, SecretsError> {
        let text = text.trim();
        let bad = |reason: &str| SecretsError::BadKey {
            origin: origin.to_string(),
            reason: reason.into(),
        };
        if text.is_empty() {
            return Err(bad(
                "is empty; expected 32 bytes as base64 or hex (e.g. `openssl rand -base64 32`)",
            ));
        }
        let decoded: Zeroizing<Vec<u8>> = if text.len() == 2 * KEY_LEN
            && text.bytes().all(|b| b.is_ascii_hexdigit())
        {
            Zeroizing::new(hex::decode(text).map_err(|_| bad("is not valid hex"))?)
        } else {
            use base64::engine::general_purpose::{
                STANDARD, STANDARD_NO_PAD, URL_SAFE, URL_SAFE_NO_PAD,
            };
            let decoded = [STANDARD, STANDARD_NO_PAD, URL_SAFE, URL_SAFE_NO_PAD]
                .iter()
                .find_map(|engine| engine.decode(text).ok())
                .ok_or_else(|| {
                    bad("is neither base64 nor hex; expected 32 bytes (e.g. `openssl rand -base64 32`)")
                })?;
            Zeroizing::new(decoded)
        };
        if decoded.len() != KEY_LEN {
            return Err(bad(&format!(
                "decodes to {} bytes; a secrets key is exactly {KEY_LEN}",
                decoded.len()
            )));
        }
        let mut bytes = Zeroizing::new([0u8; KEY_LEN]);
        bytes.copy_from_slice(&decoded);
        Ok(SecretsKey { bytes, origin })
    }

    /// Reads the key file at `path`.
    pub fn load(path: &Path) -> Result<Self, SecretsError> {
        let text = Zeroizing::new(fsutil::read_to_string(path)?);
        warn_if_readable_by_others(path);
        Self::parse(&text, KeyOrigin::File(path.to_path_buf()))
    }

    /// Writes a new random key to `path` (mode 0600); an existing file is
    /// an error and is left as it is.
    pub fn create_file(path: &Path) -> Result<Self, SecretsError> {
        let mut key = Self::generate()?;
        fsutil::write_atomic(path, key.encode().as_bytes(), Mode::Private, false)?;
        key.origin = KeyOrigin::File(path.to_path_buf());
        Ok(key)
    }

    /// The key file in `data_dir`, created if missing (data dirs initialised
    /// before secrets existed have none). Returns the key and whether it
    /// was created.
    pub fn load_or_create(data_dir: &Path) -> Result<(Self, bool), SecretsError> {
        let path = data_dir.join(KEY_FILE);
        if path.exists() {
            return Ok((Self::load(&path)?, false));
        }
        match Self::create_file(&path) {
            Ok(key) => Ok((key, true)),
            // Another process created it first: use theirs.
            Err(SecretsError::KeyFile(FileError::Exists { .. })) => Ok((Self::load(&path)?, false)),
            Err(e) => Err(e),
        }
    }

    /// The key as the key file holds it: base64 and a newline.
    fn encode(&self) -> Zeroizing<String> {
        let mut text =
            Zeroizing::new(base64::engine::general_purpose::STANDARD.encode(self.bytes.as_slice()));
        text.push('\n');
        text
    }

    pub fn origin(&self) -> &KeyOrigin {
        &self.origin
    }

    /// A short, one-way identifier of the key, so operators can compare the
    /// keys of several coordinators without showing them: `sha256:` and the
    /// first 8 bytes of a domain-separated SHA-256 of the key, in hex.
    pub fn fingerprint(&self) -> String {
        let mut hasher = Sha256::new();
        hasher.update(b"ferry secrets key fingerprint\0");
        hasher.update(self.bytes.as_slice());
        format!("sha256:{}", hex::encode(&hasher.finalize()[..8]))
    }

    fn cipher(&self) -> XChaCha20Poly1305 {
        // The cipher keeps its own copy of the key and wipes it on drop
        // (the crate's `zeroize` feature).
        XChaCha20Poly1305::new_from_slice(self.bytes.as_slice())
            .unwrap_or_else(|_| unreachable!("the key is {KEY_LEN} bytes by construction"))
    }

    /// Seals `value` as the secret `name` of (`app`, `env`): returns a fresh
    /// random nonce and the ciphertext with its tag.
    pub fn seal(
        &self,
        app: &str,
        env: &str,
        name: &str,
        value: &[u8],
    ) -> Result<(Vec<u8>, Vec<u8>), SecretsError> {
        let mut nonce = [0u8; NONCE_LEN];
        OsRng
            .try_fill_bytes(&mut nonce)
            .map_err(|e| SecretsError::Entropy(e.to_string()))?;
        let aad = associated_data(app, env, name);
        let ciphertext = self
            .cipher()
            .encrypt(
                &XNonce::from(nonce),
                Payload {
                    msg: value,
                    aad: &aad,
                },
            )
            // Encryption fails only for messages beyond 256 GiB.
            .map_err(|_| SecretsError::Corrupt {
                app: app.into(),
                env: env.into(),
                name: name.into(),
                reason: "the value is too large to encrypt".into(),
            })?;
        Ok((nonce.to_vec(), ciphertext))
    }

    /// Opens what [`SecretsKey::seal`] made for the same (`app`, `env`,
    /// `name`). A different key, a ciphertext moved from another secret or
    /// an altered one all fail authentication, reported as `WrongKey`: the
    /// one cause an operator can act on.
    pub fn open(
        &self,
        app: &str,
        env: &str,
        name: &str,
        nonce: &[u8],
        ciphertext: &[u8],
    ) -> Result<Zeroizing<Vec<u8>>, SecretsError> {
        let nonce: [u8; NONCE_LEN] = nonce.try_into().map_err(|_| SecretsError::Corrupt {
            app: app.into(),
            env: env.into(),
            name: name.into(),
            reason: format!("its nonce is {} bytes, not {NONCE_LEN}", nonce.len()),
        })?;
        let aad = associated_data(app, env, name);
        self.cipher()
            .decrypt(
                &XNonce::from(nonce),
                Payload {
                    msg: ciphertext,
                    aad: &aad,
                },
            )
            .map(Zeroizing::new)
            .map_err(|_| SecretsError::WrongKey {
                app: app.into(),
                env: env.into(),
                name: name.into(),
            })
    }
}

/// Binds a ciphertext to its secret. NUL cannot occur in app, env or secret
/// names (see the validators), so the encoding is unambiguous.
fn associated_data(app: &str, env: &str, name: &str) -> Vec<u8> {
    format!("{app}\0{env}\0{name}").into_bytes()
}

/// A key file others can read is a leak waiting to happen; say so (without
/// refusing: the operator may have reasons, e.g. a root-owned 0640 file).
fn warn_if_readable_by_others(path: &Path) {
    use std::os::unix::fs::PermissionsExt;
    if let Ok(meta) = std::fs::metadata(path) {
        let mode = meta.permissions().mode() & 0o777;
        if mode & 0o077 != 0 {
            tracing::warn!(
                path = %path.display(),
                mode = format!("{mode:o}"),
                "the secrets key file is readable by other users; chmod 600 it"
            );
        }
    }
}

/// Checks `key` against the key-check value sealed in `store`, writing that
/// value if the store has none yet (a new store, or one from before
/// secrets). Refuses a key that does not open it: a coordinator running
/// with another key would seal new secrets that its peers cannot open and
/// fail to open theirs.
pub async fn check_key(store: &dyn Store, key: &SecretsKey) -> Result<(), CoordinatorError> {
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
        self.audit(
            actor,
            "secret.set",
            &audit_target(app, env, name),
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
        self.audit(
            actor,
            "secret.delete",
            &audit_target(app, env, name),
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
    store: &dyn Store,
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
    use std::collections::HashSet;

    fn key() -> SecretsKey {
        SecretsKey::generate().unwrap()
    }

    #[test]
    fn seal_then_open_round_trips() {
        let k = key();
        for value in [
            "postgres://u:p@db/app",
            "ünïcode ✓",
            &"x".repeat(MAX_VALUE_BYTES),
        ] {
            let (nonce, ct) = k
                .seal("shop", "production", "DATABASE_URL", value.as_bytes())
                .unwrap();
            assert_eq!(nonce.len(), NONCE_LEN);
            assert_eq!(
                ct.len(),
                value.len() + 16,
                "ciphertext is the value plus a 16-byte tag"
            );
            let head = &value.as_bytes()[..8];
            assert!(
                !ct.windows(8).any(|w| w == head),
                "the value's first bytes show in the ciphertext"
            );
            let opened = k
                .open("shop", "production", "DATABASE_URL", &nonce, &ct)
                .unwrap();
            assert_eq!(opened.as_slice(), value.as_bytes());
        }
    }

    #[test]
    fn another_key_cannot_open_and_says_so() {
        let (nonce, ct) = key()
            .seal("shop", "production", "API_KEY", b"s3cret-value")
            .unwrap();
        let err = key()
            .open("shop", "production", "API_KEY", &nonce, &ct)
            .unwrap_err();
        let text = err.to_string();
        assert!(
            text.starts_with(
                "cannot decrypt secret API_KEY: the secrets key differs from the one that encrypted it"
            ),
            "{text}"
        );
        assert!(text.contains(KEY_ENV) && text.contains(KEY_FILE), "{text}");
        assert!(!text.contains("s3cret"), "{text}");
    }

    #[test]
    fn a_ciphertext_moved_to_another_secret_does_not_open() {
        let k = key();
        let (nonce, ct) = k.seal("shop", "production", "API_KEY", b"value").unwrap();
        for (app, env, name) in [
            ("shop", "production", "OTHER_KEY"),
            ("shop", "staging", "API_KEY"),
            ("blog", "production", "API_KEY"),
            // The separator keeps these apart from ("shop", "production", …).
            ("shop\0production", "", "API_KEY"),
        ] {
            assert!(
                matches!(
                    k.open(app, env, name, &nonce, &ct),
                    Err(SecretsError::WrongKey { .. })
                ),
                "{app:?}/{env:?}/{name:?} opened a ciphertext of shop/production/API_KEY"
            );
        }
        let mut tampered = ct.clone();
        tampered[0] ^= 1;
        assert!(
            k.open("shop", "production", "API_KEY", &nonce, &tampered)
                .is_err()
        );
        let short = &nonce[..12];
        assert!(matches!(
            k.open("shop", "production", "API_KEY", short, &ct),
            Err(SecretsError::Corrupt { .. })
        ));
    }

    #[test]
    fn every_seal_uses_a_fresh_nonce() {
        let k = key();
        let mut nonces = HashSet::new();
        let mut ciphertexts = HashSet::new();
        for _ in 0..2000 {
            let (nonce, ct) = k
                .seal("shop", "production", "API_KEY", b"same value")
                .unwrap();
            assert!(nonces.insert(nonce), "a nonce repeated");
            assert!(ciphertexts.insert(ct), "a ciphertext repeated");
        }
    }

    #[test]
    fn keys_parse_from_base64_and_hex_without_echoing_them() {
        let k = key();
        let b64 = k.encode();
        let parsed = SecretsKey::parse(&b64, KeyOrigin::Env).unwrap();
        assert_eq!(parsed, k);
        assert_eq!(parsed.origin(), &KeyOrigin::Env);
        let hex_text = hex::encode(k.bytes.as_slice());
        assert_eq!(SecretsKey::parse(&hex_text, KeyOrigin::Env).unwrap(), k);
        assert_eq!(
            SecretsKey::parse(&hex_text.to_uppercase(), KeyOrigin::Env).unwrap(),
            k
        );
        let url_safe = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(k.bytes.as_slice());
        assert_eq!(SecretsKey::parse(&url_safe, KeyOrigin::Env).unwrap(), k);

        for bad in ["", "not a key!", "c2hvcnQ=", &hex_text[..62]] {
            let err = SecretsKey::parse(bad, KeyOrigin::Env)
                .unwrap_err()
                .to_string();
            assert!(
                err.starts_with("environment variable FERRY_SECRETS_KEY: "),
                "{err}"
            );
            if !bad.is_empty() {
                assert!(!err.contains(bad), "the error repeats the key text: {err}");
            }
        }
        assert_eq!(format!("{k:?}"), "SecretsKey { origin: Generated, .. }");
    }

    #[test]
    fn key_file_is_created_private_once_and_reloaded() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let (created, was_created) = SecretsKey::load_or_create(dir.path()).unwrap();
        assert!(was_created);
        let path = dir.path().join(KEY_FILE);
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let (loaded, was_created) = SecretsKey::load_or_create(dir.path()).unwrap();
        assert!(!was_created);
        assert_eq!(loaded, created);
        assert_eq!(loaded.origin(), &KeyOrigin::File(path.clone()));
        assert_eq!(loaded.fingerprint(), created.fingerprint());
        assert_ne!(loaded.fingerprint(), key().fingerprint());
        assert!(matches!(
            SecretsKey::create_file(&path),
            Err(SecretsError::KeyFile(FileError::Exists { .. }))
        ));
        std::fs::write(&path, "garbage\n").unwrap();
        let err = SecretsKey::load(&path).unwrap_err().to_string();
        assert!(err.contains(&path.display().to_string()), "{err}");
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
