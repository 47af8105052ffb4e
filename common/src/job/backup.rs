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
    /// Ferry deployed (`name` is the service's name): its running current
    /// container, found by Ferry's labels.
    Service(InContainer),
    /// Any container on the host (`name` is the container's name).
    Container(InContainer),
}

/// A database served from inside a container: the client tools of the
/// container (`pg_dump`, `psql`, `pg_restore`; `mariadb-dump`, `mariadb`)
/// are run there with `docker exec`, logging in as `user` (with the
/// password of secret `password_secret`, if given) to database `database`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InContainer {
    /// The service's name (`service =`) or the container's (`container =`).
    pub name: String,
    /// The database's name inside the server.
    pub database: String,
    /// The user the client tools log in as.
    pub user: String,
    /// The secret holding that user's password; none: the server lets
    /// the user in without one from inside the container (PostgreSQL's
    /// `trust` for local sockets, MariaDB's `unix_socket`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub password_secret: Option<String>,
}

impl DbLocation {
    /// The secrets a task on this database needs: the URL's, or the
    /// password's if one is named.
    pub fn secret_names(&self) -> Vec<String> {
        match self {
            DbLocation::UrlSecret(name) => vec![name.clone()],
            DbLocation::Service(c) | DbLocation::Container(c) => {
                c.password_secret.iter().cloned().collect()
            }
        }
    }

    /// The field of the app file this location came from.
    pub fn field(&self) -> &'static str {
        match self {
            DbLocation::UrlSecret(_) => "url_secret",
            DbLocation::Service(_) => "service",
            DbLocation::Container(_) => "container",
        }
    }

    /// The container's part, unless the database is given by URL.
    pub fn in_container(&self) -> Option<&InContainer> {
        match self {
            DbLocation::UrlSecret(_) => None,
            DbLocation::Service(c) | DbLocation::Container(c) => Some(c),
        }
    }

    /// Checks the location for a database of `engine`; `Err` names the
    /// field (`location.url_secret`, `location.service.user`, …) and why.
    pub fn validate(&self, engine: DbEngine) -> Result<(), String> {
        use crate::rules;
        match self {
            DbLocation::UrlSecret(name) => {
                if engine == DbEngine::Mariadb {
                    return Err("location.url_secret: a MariaDB database is dumped with the client tools inside its container; give service = \"db\" or container = \"NAME\" instead".into());
                }
                rules::secret_name(name).map_err(|e| format!("location.url_secret: {e}"))
            }
            DbLocation::Service(c) | DbLocation::Container(c) => {
                let at = |f: &str, r: Result<(), String>| {
                    r.map_err(|e| format!("location.{}.{f}: {e}", self.field()))
                };
                match self {
                    DbLocation::Service(_) => at(
                        "name",
                        rules::dns_name(&c.name).map_err(|e| format!("service name {e}")),
                    )?,
                    _ => at("name", check_container_name(&c.name))?,
                }
                at("database", check_server_database_name(&c.database))?;
                at("user", check_user_name(&c.user))?;
                if let Some(s) = &c.password_secret {
                    at("password_secret", rules::secret_name(s))?;
                }
                Ok(())
            }
        }
    }
}

/// Docker's rule for container names.
pub fn check_container_name(name: &str) -> Result<(), String> {
    let mut chars = name.chars();
    let first_ok = chars.next().is_some_and(|c| c.is_ascii_alphanumeric());
    if first_ok
        && name.len() <= 128
        && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'))
    {
        Ok(())
    } else {
        Err(format!(
            "{name:?} is not a container name; Docker's are letters, digits, '_', '.' and '-', starting with a letter or digit"
        ))
    }
}

/// A database name inside a server (PostgreSQL or MariaDB): always quoted
/// by Ferry, so letters, digits, '_' and '-'; at most 48 bytes, so that
/// the names Ferry derives from it (`<db>_before_restore_<time>`) stay
/// distinct within both servers' 63/64-byte limits.
pub fn check_server_database_name(name: &str) -> Result<(), String> {
    let ok = !name.is_empty()
        && name.len() <= 48
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-'));
    if ok {
        Ok(())
    } else {
        Err(format!(
            "{name:?} is not a database name Ferry works on; use letters, digits, '_' and '-' (at most 48)"
        ))
    }
}

/// A user name given to the client tools as one argument.
pub fn check_user_name(name: &str) -> Result<(), String> {
    let ok = !name.is_empty()
        && name.len() <= 63
        && !name.starts_with('-')
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'));
    if ok {
        Ok(())
    } else {
        Err(format!(
            "{name:?} is not a user name; use letters, digits, '_', '-' and '.' (at most 63), not starting with '-'"
        ))
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

/// `format` of a MariaDB backup: the SQL text `mariadb-dump` writes, which
/// the `mariadb` client reads.
pub const FORMAT_MARIADB_SQL: &str = "mariadb-dump-sql";

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
        if self.engine == DbEngine::Mariadb
            && let Some((i, t)) = self
                .tables
                .iter()
                .enumerate()
                .find(|(_, t)| t.contains('.'))
        {
            return Err(format!(
                "backup spec: tables[{i}]: {t:?}: MariaDB tables are named without a schema (the database is the schema)"
            ));
        }
        self.location
            .validate(self.engine)
            .map_err(|e| format!("backup spec: {e}"))
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
    /// `pg_dump --version` or `mariadb-dump --version`.
    pub dump_tool: String,
    /// [`FORMAT_PG_CUSTOM`] or [`FORMAT_MARIADB_SQL`].
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
    /// Every dumped table's exact row count (PostgreSQL: `schema.table`
    /// → rows, counted in the dump's own snapshot; MariaDB: `table` →
    /// rows, counted in the dump's own text as it was written).
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
/// Ferry (a PostgreSQL database reached by URL).
pub fn restore_hint(path: &str) -> String {
    format!(
        "zstd -dc {path} | pg_restore --no-owner -d postgres://USER@HOST/NEW_DATABASE (create NEW_DATABASE first; check with: sha256sum {path})"
    )
}

/// [`restore_hint`] for any engine and location: for a database in a
/// container, the client inside it reads the file from `docker exec -i`.
pub fn restore_hint_for(engine: DbEngine, location: &DbLocation, path: &str) -> String {
    let Some(c) = location.in_container() else {
        return restore_hint(path);
    };
    let container = match location {
        DbLocation::Service(_) => {
            format!("CONTAINER (the running container of service {})", c.name)
        }
        _ => c.name.clone(),
    };
    match engine {
        DbEngine::Postgres => format!(
            "zstd -dc {path} | docker exec -i {container} pg_restore --no-owner -U {} -d NEW_DATABASE (create it first: docker exec {container} createdb -U {} NEW_DATABASE; check with: sha256sum {path})",
            c.user, c.user
        ),
        DbEngine::Mariadb => format!(
            "zstd -dc {path} | docker exec -i -e MYSQL_PWD {container} mariadb -u {} NEW_DATABASE (create it first: docker exec -e MYSQL_PWD {container} mariadb -u {} -e 'CREATE DATABASE NEW_DATABASE'; export MYSQL_PWD=the password first; check with: sha256sum {path})",
            c.user, c.user
        ),
    }
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
        let s = spec(
            r#"{"app":"shop","env":"prod","database":"main","engine":"mariadb","location":{"service":{"name":"db","database":"shop","user":"root","password_secret":"DB_ROOT_PASSWORD"}}}"#,
        )
        .unwrap();
        assert_eq!(s.secret_names(), ["DB_ROOT_PASSWORD"]);
        let err = spec(r#"{"app":"shop","env":"prod","database":"main","location":{"container":{"name":"-db","database":"shop","user":"root"}}}"#).unwrap_err();
        assert!(
            err.starts_with(
                "backup spec: location.container.name: \"-db\" is not a container name"
            ),
            "{err}"
        );
        let err = spec(r#"{"app":"shop","env":"prod","database":"main","location":{"service":{"name":"db","database":"a;b","user":"root"}}}"#).unwrap_err();
        assert!(
            err.starts_with(
                "backup spec: location.service.database: \"a;b\" is not a database name"
            ),
            "{err}"
        );
        let err = spec(r#"{"app":"shop","env":"prod","database":"main","engine":"mariadb","location":{"url_secret":"URL"}}"#).unwrap_err();
        assert!(err.contains("inside its container"), "{err}");
        let err = spec(r#"{"app":"shop","env":"prod","database":"main","engine":"mariadb","location":{"container":{"name":"db","database":"shop","user":"root"}},"tables":["public.t"]}"#).unwrap_err();
        assert!(
            err.contains("MariaDB tables are named without a schema"),
            "{err}"
        );
        let err = spec(r#"{"app":"shop","env":"prod","database":"main","location":{"url_secret":"X"},"reason":"whim"}"#).unwrap_err();
        assert!(err.contains("unknown backup reason \"whim\""), "{err}");
    }
}
