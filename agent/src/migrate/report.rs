//! What a run says: one report per database, and the progress events sent
//! while it runs. The future `migrate` job's result is these reports.

use ferry_common::status::MigrationStatus;

use super::plan::Drift;

/// Whether a database is the app's main database or one of its tenants.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    Main,
    Tenant,
}

ferry_common::string_enum!(Role "database role" {
    Main => "main",
    Tenant => "tenant",
});

/// A migration this run applied.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct AppliedMigration {
    pub version: String,
    pub name: String,
    pub file: String,
    pub duration_ms: i64,
}

/// One database's outcome.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct DatabaseReport {
    pub database: String,
    #[serde(serialize_with = "as_str")]
    pub role: Role,
    pub tenant_id: Option<String>,
    #[serde(serialize_with = "as_str")]
    pub status: MigrationStatus,
    /// Applied by this run, in order.
    pub applied: Vec<AppliedMigration>,
    /// Versions the app's own tool had applied, recorded by this run (on a
    /// dry run: that would be recorded).
    pub adopted: Vec<String>,
    /// Versions applied before this run (in Ferry's ledger).
    pub previously_applied: Vec<String>,
    /// Versions still to apply, in order: after a dry run what would run,
    /// after a failure the failed one and those after it.
    pub pending: Vec<String>,
    pub drift: Vec<Drift>,
    pub error: Option<String>,
    /// The backup taken just before this run changed it.
    pub backup_id: Option<String>,
    pub duration_ms: i64,
}

impl DatabaseReport {
    pub fn new(database: &str, role: Role, tenant_id: Option<String>) -> Self {
        DatabaseReport {
            database: database.to_owned(),
            role,
            tenant_id,
            status: MigrationStatus::Skipped,
            applied: Vec::new(),
            adopted: Vec::new(),
            previously_applied: Vec::new(),
            pending: Vec::new(),
            drift: Vec::new(),
            error: None,
            backup_id: None,
            duration_ms: 0,
        }
    }
}

fn as_str<S: serde::Serializer, T: std::fmt::Display>(v: &T, s: S) -> Result<S::Ok, S::Error> {
    s.collect_str(v)
}

/// What a run tells its caller as it goes (the job streams these).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Progress {
    /// The databases to visit are known (main first, then the tenants).
    Planned {
        total: usize,
    },
    DatabaseStarted {
        database: String,
    },
    MigrationStarted {
        database: String,
        version: String,
        name: String,
    },
    DatabaseFinished {
        database: String,
        status: MigrationStatus,
        done: usize,
        total: usize,
    },
}

/// A progress callback shared by the databases a run works on at once.
pub type ProgressFn = dyn Fn(Progress) + Send + Sync;
