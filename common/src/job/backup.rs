//! `backup`: dump one database of an app's environment on the host, to a
//! compressed, checksummed file in the agent's `backup_dir`, with a
//! manifest beside it ([`BackupManifest`], also the task's result, which
//! the coordinator catalogues). The database's engine and location are
//! this spec's own types, which the app file's `[databases.NAME]` uses, so
//! the two cannot disagree.

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::KindSpec;
use crate::status::BackupReason;

/// The engine of a database.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DbEngine {
    #[default]
    Postgres,
    /// MariaDB or MySQL.
    Mariadb,
}

impl DbEngine {
    pub fn as_str(self) -> &'static str {
        match self {
            DbEngine::Postgres => "postgres",
            DbEngine::Mariadb => "mariadb",
        }
    }
}

impl fmt::Display for DbEngine {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for DbEngine {
    type Err = String;
    fn from_str(s: &str) -> Result<DbEngine, String> {
        match s {
            "postgres" => Ok(DbEngine::Postgres),
            "mariadb" => Ok(DbEngine::Mariadb),
            other => Err(format!(
                "unknown engine {other:?}; expected \"postgres\" or \"mariadb\" (MariaDB and MySQL)"
            )),
        }
    }
}

/// Where a database is: exactly one of the three.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DbLocation {
    /// A connection URL kept as a secret of the app and environment (the
    /// one the app itself uses), for a server the host reaches.
    UrlSecret(String),
    /// A database server in a container of this app and environment that
    /// Ferry deployed (the service's name).
    Service(String),
    /// Any container on the host, by name.
    Container(String),
}

impl DbLocation {
    /// The secrets a task on this database needs: the URL's, if it is one.
    pub fn secret_names(&self) -> Vec<String> {
        match self {
            DbLocation::UrlSecret(name) => vec![name.clone()],
            DbLocation::Service(_) | DbLocation::Container(_) => Vec::new(),
        }
    }
}

/// `table` or `schema.table`, plain identifiers (what `pg_dump --table`
/// and the row counts both read the same way).
pub fn check_table_name(name: &str) -> Result<(), String> {
    let ident = |s: &str| {
        !s.is_empty()
            && s.len() <= 63
            && !s.starts_with(|c: char| c.is_ascii_digit())
            && s.chars()
                .all(|c| c.is_alphanumeric() || c == '_' || c == '$')
    };
    let ok = match name.split_once('.') {
        Some((schema, table)) => ident(schema) && ident(table),
        None => ident(name),
    };
    if ok {
        Ok(())
    } else {
        Err(format!(
            "{name:?} is not a table name; expected table or schema.table (letters, digits and '_')"
        ))
    }
}

/// `backup`'s spec.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BackupSpec {
    pub app: String,
    pub env: String,
    /// The database's name in the app file (`[databases.NAME]`).
    pub database: String,
    #[serde(default)]
    pub engine: DbEngine,
    /// Where it is, as the app file says.
    pub location: DbLocation,
    /// Only these tables (`table` or `schema.table`); empty: all of them.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tables: Vec<String>,
    #[serde(default)]
    pub reason: BackupReason,
}

/// A backup of a large database takes as long as its dump; this stops one
/// that hangs (on a lock, on a dead server) after a working day.
pub const BACKUP_TIMEOUT: Duration = Duration::from_secs(8 * 3600);

/// `format` of a PostgreSQL backup: `pg_dump`'s custom format, which
/// `pg_restore` reads.
pub const FORMAT_PG_CUSTOM: &str = "pg_dump-custom";

/// `compression` of a backup file.
pub const COMPRESSION_ZSTD: &str = "zstd";

impl KindSpec for BackupSpec {
    const NAME: &'static str = "backup";
    const CLI: &'static [&'static str] = &["backup"];
    const DOC: &'static str = "Dump a database to a zstd-compressed, SHA-256-checksummed file with a manifest of exact row counts.";

    fn validate(&self) -> Result<(), String> {
        use crate::rules;
        let at = |field: &str, r: Result<(), String>| {
            r.map_err(|e| format!("backup spec: {field}: {e}"))
        };
        at("app", rules::dns_name(&self.app))?;
        at("env", rules::dns_name(&self.env))?;
        at("database", rules::dns_name(&self.database))?;
        for (i, t) in self.tables.iter().enumerate() {
            at(&format!("tables[{i}]"), check_table_name(t))?;
        }
        match (&self.engine, &self.location) {
            (DbEngine::Postgres, DbLocation::UrlSecret(name)) => {
                at("location.url_secret", rules::secret_name(name))
            }
            (engine, location) => Err(format!(
                "backup spec: location: backups of {engine} databases given by {} are not done yet; only PostgreSQL with url_secret is",
                match location {
                    DbLocation::UrlSecret(_) => "url_secret",
                    DbLocation::Service(_) => "service",
                    DbLocation::Container(_) => "container",
                }
            )),
        }
    }

    fn secret_names(&self) -> Vec<String> {
        self.location.secret_names()
    }

    fn secret_scope(&self) -> Option<(&str, &str)> {
        Some((&self.app, &self.env))
    }

    fn timeout(&self) -> Duration {
        BACKUP_TIMEOUT
    }

    fn host_lock(&self) -> Option<String> {
        Some(database_lock(&self.app, &self.env, &self.database))
    }
}

/// One operation at a time on a database on its host: a restore must not
/// run under a backup of the same database, nor two backups race.
pub fn database_lock(app: &str, env: &str, database: &str) -> String {
    format!("database:{app}/{env}/{database}")
}

/// What a backup is: written beside the file as `<id>.manifest.json`, the
/// backup task's result, and what the coordinator catalogues. Plain JSON,
/// so a backup is usable without Ferry (see `restore_hint`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BackupManifest {
    /// The backup's id (the task's id, so a task makes at most one).
    pub id: String,
    pub app: String,
    pub env: String,
    pub database: String,
    /// A tenant database of `database` (its name on the server), for the
    /// backups a `migrate` run takes of tenants; none: `database` itself.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tenant: Option<String>,
    pub engine: DbEngine,
    /// The server's version, as it reports it (`SHOW server_version`).
    pub server_version: String,
    /// `pg_dump --version`.
    pub dump_tool: String,
    /// [`FORMAT_PG_CUSTOM`].
    pub format: String,
    /// [`COMPRESSION_ZSTD`].
    pub compression: String,
    /// Absolute path of the backup file on the host that made it.
    pub path: String,
    /// Size of the file (compressed), in bytes.
    pub size_bytes: u64,
    /// Size of the dump before compression, in bytes.
    pub dump_bytes: u64,
    /// SHA-256 of the file, lowercase hex (as `sha256sum` prints it).
    pub sha256: String,
    /// Only these tables were dumped (empty: all).
    #[serde(default)]
    pub tables: Vec<String>,
    /// Every dumped table's exact row count (`schema.table` → rows),
    /// counted in the dump's own snapshot.
    pub row_counts: BTreeMap<String, u64>,
    /// RFC 3339.
    pub started_at: String,
    pub ended_at: String,
    pub job_id: String,
    pub reason: BackupReason,
    /// How to restore the file by hand.
    pub restore_hint: String,
}

impl BackupManifest {
    /// Parses a manifest (a backup task's result).
    pub fn from_json(json: &str) -> Result<BackupManifest, String> {
        serde_json::from_str(json).map_err(|e| format!("backup manifest: {e}"))
    }
}

/// The shell commands that check and restore the file at `path` without
/// Ferry.
pub fn restore_hint(path: &str) -> String {
    format!(
        "zstd -dc {path} | pg_restore --no-owner -d postgres://USER@HOST/NEW_DATABASE (create NEW_DATABASE first; check with: sha256sum {path})"
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::job::JobSpec;

    fn spec(json: &str) -> Result<JobSpec, String> {
        JobSpec::parse("backup", json)
    }

    #[test]
    fn a_backup_spec_is_checked() {
        let s = spec(
            r#"{"app":"shop","env":"prod","database":"main","location":{"url_secret":"DATABASE_URL"},"tables":["users","billing.invoices"]}"#,
        )
        .unwrap();
        assert_eq!(s.secret_names(), ["DATABASE_URL"]);
        assert_eq!(s.secret_scope(), Some(("shop", "prod")));
        assert_eq!(s.host_lock().as_deref(), Some("database:shop/prod/main"));
        assert_eq!(s.timeout(), BACKUP_TIMEOUT);
        let JobSpec::Backup(b) = s else { panic!() };
        assert_eq!(b.reason, BackupReason::Manual);
        assert_eq!(b.engine, DbEngine::Postgres);

        let err = spec(r#"{"app":"shop","env":"prod","database":"main","location":{"url_secret":"DATABASE_URL"},"tables":["a;b"]}"#).unwrap_err();
        assert!(
            err.starts_with("backup spec: tables[0]: \"a;b\" is not a table name"),
            "{err}"
        );
        let err =
            spec(r#"{"app":"shop","env":"prod","database":"main","location":{"service":"db"}}"#)
                .unwrap_err();
        assert_eq!(
            err,
            "backup spec: location: backups of postgres databases given by service are not done yet; only PostgreSQL with url_secret is"
        );
        let err = spec(r#"{"app":"shop","env":"prod","database":"main","location":{"url_secret":"X"},"reason":"whim"}"#).unwrap_err();
        assert!(err.contains("unknown backup reason \"whim\""), "{err}");
    }
}
