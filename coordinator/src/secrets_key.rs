//! The secrets key: the one 32-byte key every secret is sealed with
//! (XChaCha20-Poly1305), where it comes from, and sealing and opening.
//! [`crate::core::Core`] holds one; [`crate::secrets`] uses it to keep
//! secrets per (app, env). This module depends on nothing else of the
//! coordinator, so configuration, errors and the core can all name the key
//! without depending on the secrets service.
//!
//! Each value gets a fresh random 24-byte nonce (192 bits: random nonces
//! never collide in practice, so no counter has to be kept consistent
//! across coordinators) and is bound to its place by the associated data
//! `app\0env\0name`: a ciphertext copied to another row does not open.
//! Key bytes and opened values live in [`Zeroizing`] buffers.

use std::path::{Path, PathBuf};

use base64::Engine;
use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};
use ferry_common::fsutil::{self, FileError, Mode};
use rand::TryRngCore;
use rand::rngs::OsRng;
use sha2::{Digest, Sha256};
use zeroize::Zeroizing;

/// File name of the secrets key inside the data dir.
pub const KEY_FILE: &str = "secrets.key";
/// The environment variable that supplies the key instead of the file.
pub const KEY_ENV: &str = "FERRY_SECRETS_KEY";
/// Bytes of key.
pub const KEY_LEN: usize = 32;
/// Bytes of nonce (XChaCha20's extended nonce).
pub const NONCE_LEN: usize = 24;

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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::secrets::MAX_VALUE_BYTES;
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
}
