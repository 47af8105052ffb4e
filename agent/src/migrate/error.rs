//! The migration engine's one error type. Every variant names what the
//! operator has to look at: the file, the database, the value.

use std::time::Duration;

#[derive(Debug, Clone, thiserror::Error)]
pub enum MigrateError {
    /// A migrations folder (or the files sent with a job) that does not
    /// have the layout's shape; `file` is the path relative to the folder.
    #[error("{file}: {reason}")]
    Layout { file: String, reason: String },
    /// An option of the run that cannot work (ledger name, filters, target).
    #[error("{what}: {reason}")]
    Config { what: String, reason: String },
    #[error("database {database}: cannot connect: {reason}")]
    Connect { database: String, reason: String },
    #[error(
        "database {database}: another migration run holds its lock{holder} (waited {}s); it is released when that run ends or its connection closes",
        waited.as_secs_f32()
    )]
    LockBusy {
        database: String,
        waited: Duration,
        /// Who holds it, when the server says (`, pid 123 (ferry-migrate)`).
        holder: String,
    },
    /// An applied migration's file changed since it ran: refused, since the
    /// database no longer matches what the files say it is.
    #[error(
        "database {database}: {file} was applied (version {version}) with checksum {recorded}, but the file's is now {now}; restore the file as it was, or add a new migration for the change"
    )]
    Changed {
        database: String,
        file: String,
        version: String,
        recorded: String,
        now: String,
    },
    /// The app's own tool recorded a migration as started and not finished:
    /// its state is unknown, so nothing is applied on top of it.
    #[error("database {database}: {reason}")]
    Dirty { database: String, reason: String },
    /// A migration (or the engine's own statement) the server refused.
    #[error("database {database}: {file}: {reason}")]
    Sql {
        database: String,
        file: String,
        reason: String,
    },
    #[error("database {database}: {reason}")]
    Database { database: String, reason: String },
    #[error("tenants of {database}: {reason}")]
    Tenants { database: String, reason: String },
    /// The backup taken before changing the database failed: the database
    /// was not changed.
    #[error("database {database}: not migrated, its pre-migration backup failed: {reason}")]
    Backup { database: String, reason: String },
    #[error("the run was cancelled")]
    Cancelled,
}

impl MigrateError {
    pub(crate) fn config(what: impl Into<String>, reason: impl Into<String>) -> Self {
        MigrateError::Config {
            what: what.into(),
            reason: reason.into(),
        }
    }

    pub(crate) fn database(database: &str, err: &sqlx::Error) -> Self {
        MigrateError::Database {
            database: database.to_owned(),
            reason: describe(err),
        }
    }
}

/// A server error as an operator wants to read it: message, SQLSTATE, and
/// the detail and hint when the server gave them.
pub(crate) fn describe(err: &sqlx::Error) -> String {
    match err {
        sqlx::Error::Database(db) => {
            let mut out = db.message().to_owned();
            if let Some(code) = db.code() {
                out.push_str(&format!(" (SQLSTATE {code})"));
            }
            if let Some(pg) = db.try_downcast_ref::<sqlx::postgres::PgDatabaseError>() {
                if let Some(detail) = pg.detail() {
                    out.push_str(&format!("; detail: {detail}"));
                }
                if let Some(hint) = pg.hint() {
                    out.push_str(&format!("; hint: {hint}"));
                }
                if let Some(context) = pg.r#where() {
                    out.push_str(&format!("; context: {context}"));
                }
            }
            out
        }
        other => other.to_string(),
    }
}
