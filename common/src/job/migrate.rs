//! `migrate`: apply an app's schema migrations to one database of an
//! environment (`[databases.NAME]`) and then to every tenant database its
//! tenant query lists, on the host that works on that database. The
//! migrations come with the job (the files of the app file's `dir`, read by
//! the CLI with [`crate::migration_layout`] and checksummed), from a folder
//! of the release's image (`image_path`), or from the app's own tool run in
//! a one-off container of the image (`command`).
//!
//! The task's result is a [`MigrateReport`]: one [`DatabaseOutcome`] per
//! database, and the manifests of the pre-migration backups it took (the
//! coordinator catalogues those).

use std::collections::BTreeMap;
use std::time::Duration;

use base64::Engine;
use serde::{Deserialize, Serialize};

use super::KindSpec;
use super::backup::{BackupManifest, DbLocation, check_table_name, database_lock};
use crate::migration_layout::{Files, Layout, files_sha256};

/// The default number of databases migrated at once.
pub const DEFAULT_MIGRATE_CONCURRENCY: u32 = 4;
/// The most databases migrated at once: each holds a connection (and a
/// backup a `pg_dump`), which the server's `max_connections` bounds.
pub const MAX_MIGRATE_CONCURRENCY: u32 = 64;
/// The most bytes of SQL a job carries (`dir`): the job travels in gRPC
/// messages (4 MiB at most, and base64 adds a third); a larger folder goes
/// in the image (`image_path`).
pub const MAX_CARRIED_BYTES: usize = 2 * 1024 * 1024;
/// A run over many tenants, each backed up first, can take a long time;
/// this stops one that hangs after a working day.
pub const MIGRATE_TIMEOUT: Duration = Duration::from_secs(8 * 3600);

/// Where a run's migrations come from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum MigrationSource {
    /// SQL files carried by the job: relative path → base64 of the bytes,
    /// and [`files_sha256`] of them, which the agent checks.
    Files {
        layout: Layout,
        files: BTreeMap<String, String>,
        sha256: String,
    },
    /// SQL files copied out of `image` at `path` by the agent.
    ImagePath {
        layout: Layout,
        image: String,
        path: String,
    },
    /// The app's own tool, run per database in a one-off container of
    /// `image` with `DATABASE_URL` set; `status_command` on dry runs.
    Command {
        image: String,
        command: Vec<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        status_command: Option<Vec<String>>,
    },
}

impl MigrationSource {
    /// `files` carried by a job.
    pub fn carried(layout: Layout, files: &Files) -> MigrationSource {
        let b64 = base64::engine::general_purpose::STANDARD;
        MigrationSource::Files {
            layout,
            sha256: files_sha256(files),
            files: files
                .iter()
                .map(|(name, bytes)| (name.clone(), b64.encode(bytes)))
                .collect(),
        }
    }

    /// The carried files, decoded and checked against their checksum.
    pub fn decode_files(&self) -> Result<Option<(Layout, Files)>, String> {
        let MigrationSource::Files {
            layout,
            files,
            sha256,
        } = self
        else {
            return Ok(None);
        };
        let b64 = base64::engine::general_purpose::STANDARD;
        let mut out = Files::new();
        for (name, text) in files {
            let bytes = b64
                .decode(text)
                .map_err(|e| format!("migration file {name}: not base64: {e}"))?;
            out.insert(name.clone(), bytes);
        }
        let now = files_sha256(&out);
        if &now != sha256 {
            return Err(format!(
                "the migration files do not match their checksum (sent {sha256}, received {now}); they were changed in transit"
            ));
        }
        Ok(Some((*layout, out)))
    }

    pub fn mode(&self) -> &'static str {
        match self {
            MigrationSource::Files { .. } => "dir",
            MigrationSource::ImagePath { .. } => "image_path",
            MigrationSource::Command { .. } => "command",
        }
    }

    fn check(&self, field: &str) -> Result<(), String> {
        let at = |e: String| format!("migrate spec: {field}: {e}");
        match self {
            MigrationSource::Files { files, .. } => {
                if files.is_empty() {
                    return Err(at("no migration files were sent".into()));
                }
                let encoded: usize = files.values().map(String::len).sum();
                if encoded / 4 * 3 > MAX_CARRIED_BYTES {
                    return Err(at(format!(
                        "the migration files hold more than {} MiB, more than a job carries; put them in the image and use image_path",
                        MAX_CARRIED_BYTES / 1024 / 1024
                    )));
                }
                Ok(())
            }
            MigrationSource::ImagePath { image, path, .. } => {
                crate::rules::image(image).map_err(at)?;
                if !path.starts_with('/') {
                    return Err(at(format!(
                        "image_path {path:?}: an absolute path inside the image expected"
                    )));
                }
                Ok(())
            }
            MigrationSource::Command {
                image,
                command,
                status_command,
            } => {
                crate::rules::image(image).map_err(at)?;
                if command.is_empty() || command[0].is_empty() {
                    return Err(at("command is empty".into()));
                }
                if status_command
                    .as_ref()
                    .is_some_and(|c| c.is_empty() || c[0].is_empty())
                {
                    return Err(at("status_command is empty".into()));
                }
                Ok(())
            }
        }
    }
}

/// How the tenants of the main database are found.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TenantSpec {
    /// Run on the main database, read-only.
    pub query: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id_column: Option<String>,
    /// `postgres://…/{db}` for tenants on another server; none: the main
    /// database's server.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url_template: Option<String>,
    /// The tenants' own migrations; none: the main database's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<MigrationSource>,
}

/// Which databases a run visits.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MigrateFilter {
    /// Only these tenants (database names as the query returns them).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tenants: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tenant_ids: Vec<String>,
    #[serde(default)]
    pub main_only: bool,
    #[serde(default)]
    pub skip_main: bool,
}

/// `migrate`'s spec.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MigrateSpec {
    pub app: String,
    pub env: String,
    /// The database's name in the app file (`[databases.NAME]`).
    pub database: String,
    /// Where the main database is (only `url_secret` yet).
    pub location: DbLocation,
    pub source: MigrationSource,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tenants: Option<Box<TenantSpec>>,
    #[serde(default)]
    pub filter: MigrateFilter,
    /// Change nothing; report per database what would run.
    #[serde(default)]
    pub dry_run: bool,
    /// Apply up to and including this version only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target_version: Option<String>,
    pub concurrency: u32,
    #[serde(default)]
    pub continue_on_error: bool,
    /// Back up each database that has pending migrations before changing
    /// it (reason `pre-migration`).
    #[serde(default)]
    pub backup: bool,
    /// `schema.table` of Ferry's ledger; none: `ferry.migrations`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ledger: Option<String>,
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        with = "crate::time::serde_opt_duration"
    )]
    pub lock_timeout: Option<Duration>,
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        with = "crate::time::serde_opt_duration"
    )]
    pub statement_timeout: Option<Duration>,
}

impl KindSpec for MigrateSpec {
    const NAME: &'static str = "migrate";
    const CLI: &'static [&'static str] = &["migrate"];
    const DOC: &'static str = "Apply an app's migrations to its main database, then to every tenant database, each backed up first, with a per-database report.";

    fn validate(&self) -> Result<(), String> {
        use crate::rules;
        let at = |field: &str, r: Result<(), String>| {
            r.map_err(|e| format!("migrate spec: {field}: {e}"))
        };
        at("app", rules::dns_name(&self.app))?;
        at("env", rules::dns_name(&self.env))?;
        at("database", rules::dns_name(&self.database))?;
        match &self.location {
            DbLocation::UrlSecret(name) => at("location.url_secret", rules::secret_name(name))?,
            DbLocation::Service(_) | DbLocation::Container(_) => {
                return Err(
                    "migrate spec: location: migrations of databases given by service or container are not done yet; give the database's URL as a secret (url_secret)"
                        .into(),
                );
            }
        }
        self.source.check("source")?;
        if matches!(self.source, MigrationSource::Command { .. }) && self.target_version.is_some() {
            return Err("migrate spec: target_version: --version needs SQL mode; in command mode the app's own tool decides what it applies".into());
        }
        if let Some(t) = &self.tenants {
            if t.query.trim().is_empty() {
                return Err("migrate spec: tenants.query: empty".into());
            }
            if let Some(s) = &t.source {
                s.check("tenants.source")?;
                if (s.mode() == "command") != (self.source.mode() == "command") {
                    return Err("migrate spec: tenants.source: main and tenant migrations must both be SQL files or both be a command".into());
                }
            }
        }
        if !(1..=MAX_MIGRATE_CONCURRENCY).contains(&self.concurrency) {
            return Err(format!(
                "migrate spec: concurrency: {} is not between 1 and {MAX_MIGRATE_CONCURRENCY}",
                self.concurrency
            ));
        }
        let f = &self.filter;
        if f.main_only && f.skip_main {
            return Err("migrate spec: filter: --main-only and --skip-main together leave nothing to migrate; give one".into());
        }
        if f.main_only && (!f.tenants.is_empty() || !f.tenant_ids.is_empty()) {
            return Err(
                "migrate spec: filter: --main-only cannot be combined with --tenant / --tenant-id"
                    .into(),
            );
        }
        if self.tenants.is_none() && (!f.tenants.is_empty() || !f.tenant_ids.is_empty()) {
            return Err(format!(
                "migrate spec: filter: --tenant / --tenant-id, but database {} has no [databases.{}.tenants]",
                self.database, self.database
            ));
        }
        if let Some(l) = &self.ledger {
            at("ledger", check_table_name(l))?;
        }
        Ok(())
    }

    fn secret_names(&self) -> Vec<String> {
        self.location.secret_names()
    }

    fn secret_scope(&self) -> Option<(&str, &str)> {
        Some((&self.app, &self.env))
    }

    fn timeout(&self) -> Duration {
        MIGRATE_TIMEOUT
    }

    /// Never beside a backup or restore of the same database on its host
    /// (the coordinator also allows one migrate job per database at a time
    /// across the fleet).
    fn host_lock(&self) -> Option<String> {
        Some(database_lock(&self.app, &self.env, &self.database))
    }
}

/// One database's outcome: a row of the report `ferry migrate` prints.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DatabaseOutcome {
    /// Its name on the server.
    pub database: String,
    /// `main` or `tenant`.
    pub role: String,
    #[serde(default)]
    pub tenant_id: Option<String>,
    /// `applied`, `up_to_date`, `pending`, `failed`, `skipped`, `cancelled`
    /// (`ferry_common::status::MigrationStatus`).
    pub status: String,
    /// Versions this run applied, in order (command mode: none are known).
    #[serde(default)]
    pub applied: Vec<String>,
    /// Versions still to apply, in order (after a dry run: what would run).
    #[serde(default)]
    pub pending: Vec<String>,
    /// Versions applied before this run.
    #[serde(default)]
    pub previously_applied: Vec<String>,
    /// Versions the app's own tool had applied, recorded by this run.
    #[serde(default)]
    pub adopted: Vec<String>,
    /// Ledger and files that disagree, one line each.
    #[serde(default)]
    pub drift: Vec<String>,
    #[serde(default)]
    pub error: Option<String>,
    /// The pre-migration backup taken of it.
    #[serde(default)]
    pub backup_id: Option<String>,
    #[serde(default)]
    pub duration_ms: i64,
}

/// What a `migrate` task reports (its result, also when it failed).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct MigrateReport {
    /// The main database first, then the tenants in the query's order.
    pub databases: Vec<DatabaseOutcome>,
    /// The pre-migration backups this run took; the coordinator catalogues
    /// each (a tenant's with its `tenant`).
    #[serde(default)]
    pub backups: Vec<BackupManifest>,
}

impl MigrateReport {
    pub fn from_json(json: &str) -> Result<MigrateReport, String> {
        serde_json::from_str(json).map_err(|e| format!("migrate report: {e}"))
    }

    pub fn failed(&self) -> impl Iterator<Item = &DatabaseOutcome> {
        self.databases
            .iter()
            .filter(|d| d.status == crate::status::MigrationStatus::Failed.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::job::JobSpec;

    fn files() -> Files {
        Files::from([
            ("1_init.sql".to_string(), b"CREATE TABLE a ();".to_vec()),
            ("2_more.sql".to_string(), vec![0xff, 0, 1]),
        ])
    }

    fn spec(extra: &str) -> Result<JobSpec, String> {
        let source =
            serde_json::to_string(&MigrationSource::carried(Layout::Sqlx, &files())).unwrap();
        JobSpec::parse(
            "migrate",
            &format!(
                r#"{{"app":"shop","env":"prod","database":"main","location":{{"url_secret":"DATABASE_URL"}},"source":{source},"concurrency":4{extra}}}"#
            ),
        )
    }

    #[test]
    fn a_migrate_spec_is_checked_and_locks_its_database() {
        let s = spec("").unwrap();
        assert_eq!(s.secret_names(), ["DATABASE_URL"]);
        assert_eq!(s.host_lock().as_deref(), Some("database:shop/prod/main"));
        assert_eq!(s.timeout(), MIGRATE_TIMEOUT);
        let JobSpec::Migrate(m) = s else { panic!() };
        assert_eq!(m.source.decode_files().unwrap().unwrap().1, files());
        let err = spec(r#","filter":{"main_only":true,"skip_main":true}"#).unwrap_err();
        assert!(err.contains("leave nothing to migrate"), "{err}");
        let err = spec(r#","filter":{"tenants":["t1"]}"#).unwrap_err();
        assert!(err.contains("has no [databases.main.tenants]"), "{err}");
        let err = spec(r#","concurrency":0"#).unwrap_err();
        assert!(
            err.contains("duplicate field") || err.contains("concurrency"),
            "{err}"
        );
        let err = spec(r#","ledger":"a;b""#).unwrap_err();
        assert!(err.starts_with("migrate spec: ledger:"), "{err}");
    }

    #[test]
    fn carried_files_that_changed_are_refused() {
        let mut source = MigrationSource::carried(Layout::Plain, &files());
        if let MigrationSource::Files { files, .. } = &mut source {
            files.insert("3_extra.sql".into(), "U0VMRUNUIDE=".into());
        }
        let err = source.decode_files().unwrap_err();
        assert!(err.contains("do not match their checksum"), "{err}");
    }
}
