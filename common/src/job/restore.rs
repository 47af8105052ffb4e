//! `restore`: put a catalogued backup back, on the host holding its file,
//! into the database's server. The checksum is checked first; the live
//! database is never half-restored: by default the backup goes into a new
//! database whose name is swapped in only after it restored; `clean`
//! restores in place in one transaction; `into` restores into a new
//! database of the operator's choosing and touches nothing else.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::KindSpec;
use super::backup::{DbEngine, DbLocation, database_lock};

/// How a restore treats the live database.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RestoreMode {
    /// Restore into a new database, then rename the live one to
    /// `<db>_before_restore_<time>` and the new one to `<db>` (MariaDB,
    /// which cannot rename a database: one atomic `RENAME TABLE` moving the
    /// live tables to `<db>_before_restore_<time>` and the restored ones in).
    Swap,
    /// `pg_restore --clean --if-exists --single-transaction` into the live
    /// database: a failure leaves it as it was. PostgreSQL only.
    Clean,
    /// Into a new database of this name; the live one is not touched.
    Into(String),
}

/// Why `--clean` is refused for MariaDB, and what to use instead.
pub const MARIADB_CLEAN_REFUSED: &str = "restore spec: mode: --clean is refused for MariaDB: its DDL (DROP/CREATE TABLE) is not transactional, so a restore in place that fails halfway would leave the live database half-restored; use the default (restore into a new database, then one atomic RENAME TABLE swaps the tables in) or --into NAME";

/// `restore`'s spec.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RestoreSpec {
    pub backup_id: String,
    pub app: String,
    pub env: String,
    pub database: String,
    #[serde(default)]
    pub engine: DbEngine,
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
        if self.engine == DbEngine::Mariadb && self.mode == RestoreMode::Clean {
            return Err(MARIADB_CLEAN_REFUSED.into());
        }
        self.location
            .validate(self.engine)
            .map_err(|e| format!("restore spec: {e}"))
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
    fn clean_is_refused_for_mariadb_and_containers_are_checked() {
        let spec = |engine: &str, mode: &str| {
            crate::job::JobSpec::parse(
                "restore",
                &format!(
                    r#"{{"backup_id":"b","app":"shop","env":"prod","database":"main","engine":"{engine}","location":{{"service":{{"name":"db","database":"shop","user":"root","password_secret":"DB_PW"}}}},"path":"/b/x.dump.zst","sha256":"00","mode":{mode}}}"#
                ),
            )
        };
        let err = spec("mariadb", "\"clean\"").unwrap_err();
        assert_eq!(err, MARIADB_CLEAN_REFUSED);
        assert!(err.contains("not transactional") && err.contains("--into NAME"));
        let ok = spec("mariadb", "\"swap\"").unwrap();
        assert_eq!(ok.secret_names(), ["DB_PW"]);
        assert!(spec("mariadb", r#"{"into":"shop_copy"}"#).is_ok());
        assert!(spec("postgres", "\"clean\"").is_ok());
        let err = crate::job::JobSpec::parse(
            "restore",
            r#"{"backup_id":"b","app":"shop","env":"prod","database":"main","location":{"service":{"name":"db","database":"shop","user":"-x"}},"path":"/b/x","sha256":"00","mode":"swap"}"#,
        )
        .unwrap_err();
        assert!(
            err.starts_with("restore spec: location.service.user: \"-x\" is not a user name"),
            "{err}"
        );
    }

    #[test]
    fn database_names_are_plain() {
        assert!(check_database_name("shop_copy_2").is_ok());
        assert!(check_database_name("Shop").is_err());
        assert!(check_database_name("a-b").is_err());
        assert!(check_database_name("1abc").is_err());
        assert!(check_database_name(&"a".repeat(64)).is_err());
    }
}
