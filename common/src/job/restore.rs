//! `restore`: put a catalogued backup back, on the host holding its file,
//! into the database's server. The checksum is checked first; the live
//! database is never half-restored: by default the backup goes into a new
//! database whose name is swapped in only after it restored; `clean`
//! restores in place in one transaction; `into` restores into a new
//! database of the operator's choosing and touches nothing else.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::KindSpec;
use super::backup::{DbLocation, database_lock};

/// How a restore treats the live database.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RestoreMode {
    /// Restore into a new database, then rename the live one to
    /// `<db>_before_restore_<time>` and the new one to `<db>`.
    Swap,
    /// `pg_restore --clean --if-exists --single-transaction` into the live
    /// database: a failure leaves it as it was.
    Clean,
    /// Into a new database of this name; the live one is not touched.
    Into(String),
}

/// `restore`'s spec.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RestoreSpec {
    pub backup_id: String,
    pub app: String,
    pub env: String,
    pub database: String,
    pub location: DbLocation,
    pub path: String,
    pub sha256: String,
    pub mode: RestoreMode,
    /// A pre-migration backup of a tenant database of `database`: its name
    /// on the server, which is restored instead of `database`'s own.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tenant: Option<String>,
    /// `[databases.NAME.tenants] url_template`, for a tenant on another
    /// server than the main database.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tenant_url_template: Option<String>,
}

/// A PostgreSQL database name Ferry creates or renames to: plain
/// identifiers, so no quoting surprises.
pub fn check_database_name(name: &str) -> Result<(), String> {
    let ok = !name.is_empty()
        && name.len() <= 63
        && name.starts_with(|c: char| c.is_ascii_lowercase() || c == '_')
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_');
    if ok {
        Ok(())
    } else {
        Err(format!(
            "{name:?} is not a database name Ferry creates; use lowercase letters, digits and '_' (at most 63)"
        ))
    }
}

impl KindSpec for RestoreSpec {
    const NAME: &'static str = "restore";
    const CLI: &'static [&'static str] = &["backup"];
    const DOC: &'static str = "Restore a backup: checksum first, then into a new database swapped in after success, or in place in one transaction.";

    fn validate(&self) -> Result<(), String> {
        use crate::rules;
        let at = |field: &str, r: Result<(), String>| {
            r.map_err(|e| format!("restore spec: {field}: {e}"))
        };
        at("app", rules::dns_name(&self.app))?;
        at("env", rules::dns_name(&self.env))?;
        at("database", rules::dns_name(&self.database))?;
        if let RestoreMode::Into(name) = &self.mode {
            at("mode.into", check_database_name(name))?;
        }
        if !self.path.starts_with('/') {
            return Err("restore spec: path: an absolute path expected".into());
        }
        match &self.location {
            DbLocation::UrlSecret(name) => at("location.url_secret", rules::secret_name(name)),
            _ => Err(
                "restore spec: location: only databases given by url_secret can be restored yet"
                    .into(),
            ),
        }
    }

    fn secret_names(&self) -> Vec<String> {
        self.location.secret_names()
    }

    fn secret_scope(&self) -> Option<(&str, &str)> {
        Some((&self.app, &self.env))
    }

    fn timeout(&self) -> Duration {
        super::backup::BACKUP_TIMEOUT
    }

    fn host_lock(&self) -> Option<String> {
        Some(database_lock(&self.app, &self.env, &self.database))
    }
}

/// What a restore did (the task's result).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RestoreReport {
    pub backup_id: String,
    /// The database that now holds the backup.
    pub restored_into: String,
    /// After a swap: the live database's new name, kept until an operator
    /// drops it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub previous: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn database_names_are_plain() {
        assert!(check_database_name("shop_copy_2").is_ok());
        assert!(check_database_name("Shop").is_err());
        assert!(check_database_name("a-b").is_err());
        assert!(check_database_name("1abc").is_err());
        assert!(check_database_name(&"a".repeat(64)).is_err());
    }
}
