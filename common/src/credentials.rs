//! An operator's credentials file: where the coordinator is, the CA to trust,
//! the operator's certificate and key. `ferry-coordinator init` writes the
//! first one (`admin.credentials`); `ferry operator add` writes the others.
//! The CLI looks for it in `--credentials FILE`, then `$FERRY_CREDENTIALS`,
//! then `~/.config/ferry/credentials`.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::fsutil::{self, FileError, Mode};

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct Credentials {
    /// `https://host:port` of the coordinator, or of several sharing one
    /// store, comma-separated: the CLI tries them in turn.
    pub coordinator: String,
    /// Operator name (also in the certificate).
    pub name: String,
    /// CA certificate, PEM.
    pub ca: String,
    /// Operator certificate, PEM.
    pub certificate: String,
    /// Operator private key, PEM.
    pub key: String,
}

#[derive(Debug, thiserror::Error)]
pub enum CredentialsError {
    #[error(transparent)]
    File(#[from] FileError),
    #[error("{path}: not a Ferry credentials file: {reason}")]
    Parse { path: PathBuf, reason: String },
    #[error(
        "no credentials found: pass --credentials FILE, set FERRY_CREDENTIALS, or put the file at {default}"
    )]
    NotFound { default: String },
}

impl Credentials {
    /// The coordinators to try, in order: `FERRY_COORDINATOR` (`override_`)
    /// if given, else the file's `coordinator`, each comma-separated.
    pub fn coordinators<'a>(&'a self, override_: Option<&'a str>) -> Vec<&'a str> {
        override_
            .filter(|o| !o.trim().is_empty())
            .unwrap_or(&self.coordinator)
            .split(',')
            .map(str::trim)
            .filter(|a| !a.is_empty())
            .collect()
    }

    pub fn load(path: &Path) -> Result<Self, CredentialsError> {
        let text = fsutil::read_to_string(path)?;
        toml::from_str(&text).map_err(|e| CredentialsError::Parse {
            path: path.to_path_buf(),
            reason: e.to_string(),
        })
    }

    /// Writes the file with mode 0600; refuses to replace an existing one
    /// unless `overwrite`.
    pub fn save(&self, path: &Path, overwrite: bool) -> Result<(), CredentialsError> {
        let text = toml::to_string(self).map_err(|e| CredentialsError::Parse {
            path: path.to_path_buf(),
            reason: e.to_string(),
        })?;
        let body = format!(
            "# Ferry operator credentials for {:?}. Keep this file private (mode 0600).\n{text}",
            self.name
        );
        fsutil::write_atomic(path, body.as_bytes(), Mode::Private, overwrite)?;
        Ok(())
    }
}

/// The default location, `~/.config/ferry/credentials`, given `$HOME`.
pub fn default_path(home: Option<&str>) -> Option<PathBuf> {
    home.map(|h| Path::new(h).join(".config/ferry/credentials"))
}

/// Picks the credentials file: the flag, then `FERRY_CREDENTIALS`, then the
/// default path if it exists. The environment is passed in.
pub fn resolve(
    flag: Option<&Path>,
    env_credentials: Option<&str>,
    home: Option<&str>,
) -> Result<PathBuf, CredentialsError> {
    if let Some(p) = flag {
        return Ok(p.to_path_buf());
    }
    if let Some(p) = env_credentials.filter(|p| !p.is_empty()) {
        return Ok(PathBuf::from(p));
    }
    match default_path(home) {
        Some(p) if p.exists() => Ok(p),
        p => Err(CredentialsError::NotFound {
            default: p
                .map(|p| p.display().to_string())
                .unwrap_or_else(|| "~/.config/ferry/credentials".into()),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resolution_order() {
        let dir = tempfile::tempdir().unwrap();
        let home = dir.path().to_str().unwrap();
        assert_eq!(
            resolve(Some(Path::new("/a")), Some("/b"), Some(home)).unwrap(),
            PathBuf::from("/a")
        );
        assert_eq!(
            resolve(None, Some("/b"), Some(home)).unwrap(),
            PathBuf::from("/b")
        );
        let err = resolve(None, None, Some(home)).unwrap_err();
        assert!(err.to_string().contains("--credentials FILE"));
        let default = default_path(Some(home)).unwrap();
        std::fs::create_dir_all(default.parent().unwrap()).unwrap();
        std::fs::write(&default, "x").unwrap();
        assert_eq!(resolve(None, None, Some(home)).unwrap(), default);
    }

    #[test]
    fn round_trip_and_bad_files() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("admin.credentials");
        let c = Credentials {
            coordinator: "https://127.0.0.1:7443".into(),
            name: "admin".into(),
            ca: "-----BEGIN CERTIFICATE-----\nAA==\n-----END CERTIFICATE-----\n".into(),
            certificate: "c".into(),
            key: "k".into(),
        };
        c.save(&p, false).unwrap();
        assert_eq!(Credentials::load(&p).unwrap(), c);
        std::fs::write(&p, "coordinator = 1").unwrap();
        let err = Credentials::load(&p).unwrap_err().to_string();
        assert!(err.starts_with(&p.display().to_string()), "{err}");
    }
}
