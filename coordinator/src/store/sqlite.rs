//! The SQLite backend: the embedded default, one file and no server.
//!
//! SQLite lets one writer in at a time: write transactions start with
//! `BEGIN IMMEDIATE` (`db::Pool::begin`) and lock nothing row by
//! row. Notifications only reach this process's subscribers (an SQLite
//! store has one coordinator), and this process is always the leader. What
//! only this backend has is here: opening the file and migrating it.

use std::path::Path;
use std::time::Duration;

use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions};
use tokio::sync::broadcast;

use super::db::Pool;
use super::rows::{self, EmbeddedMigration};
use super::{Store, StoreError};

pub(crate) const MIGRATIONS: &[EmbeddedMigration] = &[
    (
        1,
        "foundation",
        include_str!("../../../migrations/sqlite/0001_foundation.sql"),
    ),
    (
        2,
        "jobs",
        include_str!("../../../migrations/sqlite/0002_jobs.sql"),
    ),
    (
        3,
        "secrets",
        include_str!("../../../migrations/sqlite/0003_secrets.sql"),
    ),
    (
        4,
        "rollouts",
        include_str!("../../../migrations/sqlite/0004_rollouts.sql"),
    ),
    (
        5,
        "agent_capabilities",
        include_str!("../../../migrations/sqlite/0005_agent_capabilities.sql"),
    ),
    (
        6,
        "leader_lease",
        include_str!("../../../migrations/sqlite/0006_leader_lease.sql"),
    ),
    (
        7,
        "agent_previous_certificate",
        include_str!("../../../migrations/sqlite/0007_agent_previous_certificate.sql"),
    ),
    (
        8,
        "audit_scope",
        include_str!("../../../migrations/sqlite/0008_audit_scope.sql"),
    ),
    (
        9,
        "rollout_cancel_redeploy_restart",
        include_str!("../../../migrations/sqlite/0009_rollout_cancel_redeploy_restart.sql"),
    ),
    (
        10,
        "backups",
        include_str!("../../../migrations/sqlite/0010_backups.sql"),
    ),
    (
        11,
        "schedules",
        include_str!("../../../migrations/sqlite/0011_schedules.sql"),
    ),
    (
        12,
        "migrations",
        include_str!("../../../migrations/sqlite/0012_migrations.sql"),
    ),
];

/// Writers wait this long for the write lock (another connection, or
/// another process on the same file) before failing with `database is locked`.
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

/// Readers run concurrently under WAL; writers queue on SQLite's lock.
const MAX_CONNECTIONS: u32 = 8;

/// Notifications a slow subscriber may lag behind before it misses some.
const NOTIFICATION_BUFFER: usize = 1024;

impl Store {
    /// Opens the SQLite database file at `path`, creating it if missing
    /// (but not its directory), and applies pending migrations.
    pub async fn open_sqlite(path: &Path) -> Result<Self, StoreError> {
        let text = path.to_string_lossy();
        // A URL of another scheme is a mistake, not a relative path to create.
        if text.is_empty() || text.contains("://") {
            return Err(StoreError::BadUrl {
                url: text.into_owned(),
            });
        }
        let options = SqliteConnectOptions::new()
            .filename(path)
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .foreign_keys(true)
            .busy_timeout(BUSY_TIMEOUT);
        let pool = SqlitePoolOptions::new()
            .max_connections(MAX_CONNECTIONS)
            .connect_with(options)
            .await?;
        rows::migrator(MIGRATIONS).run(&pool).await?;
        Ok(Self {
            pool: Pool::Sqlite(pool),
            notifications: broadcast::Sender::new(NOTIFICATION_BUFFER),
            postgres: None,
        })
    }
}
