//! One database's run, on its own dedicated connection, closed after it:
//! connect, take the lock, read the ledger and the app tool's records, plan,
//! adopt, apply the pending migrations in order, release. A dry run takes
//! no lock and writes nothing: its session is read-only.

use std::str::FromStr;
use std::time::{Duration, Instant};

use ferry_common::status::MigrationStatus;
use sqlx::postgres::PgConnectOptions;
use sqlx::{ConnectOptions, Connection, PgConnection};
use tokio_util::sync::CancellationToken;

use super::adopt;
use super::apply::{apply, millis};
use super::error::{MigrateError, describe};
use super::layout::MigrationSet;
use super::ledger::{self, LedgerName};
use super::lock;
use super::plan::{Plan, plan};
use super::report::{AppliedMigration, DatabaseReport, Progress, ProgressFn, Role};

/// How every database of a run is treated.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Change nothing; report what would run.
    pub dry_run: bool,
    /// How long to try for the database's migration lock.
    pub lock_wait: Duration,
    /// `lock_timeout` / `statement_timeout` of the run's sessions.
    pub lock_timeout: Option<Duration>,
    pub statement_timeout: Option<Duration>,
    pub connect_timeout: Duration,
    pub ledger: LedgerName,
    /// Recorded in the ledger with each migration applied.
    pub job_id: Option<String>,
    /// Apply up to and including this version only.
    pub target_version: Option<String>,
    /// Called (not on dry runs) once the database's lock is held and its
    /// plan has migrations to apply, before anything is written: the
    /// `migrate` job's pre-migration backup. `Ok` names what it made (the
    /// report's `backup_id`); `Err` fails the database, unchanged.
    pub before_change: Option<BeforeChange>,
}

/// What [`BeforeChange`] returns.
pub type BeforeChangeFuture =
    std::pin::Pin<Box<dyn std::future::Future<Output = Result<String, String>> + Send>>;

/// A hook run before a database is changed (see [`Settings::before_change`]).
#[derive(Clone)]
pub struct BeforeChange(pub std::sync::Arc<dyn Fn(&Target) -> BeforeChangeFuture + Send + Sync>);

impl std::fmt::Debug for BeforeChange {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("BeforeChange(..)")
    }
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            dry_run: false,
            lock_wait: Duration::from_secs(30),
            lock_timeout: None,
            statement_timeout: None,
            connect_timeout: Duration::from_secs(10),
            ledger: LedgerName::default(),
            job_id: None,
            target_version: None,
            before_change: None,
        }
    }
}

/// A database to migrate.
#[derive(Debug, Clone)]
pub struct Target {
    /// Its name, as reports show it.
    pub database: String,
    pub url: String,
    pub role: Role,
    pub tenant_id: Option<String>,
}

/// Migrates (or, on a dry run, inspects) one database. Never panics on a
/// database's failure: the report says it.
pub async fn run_database(
    target: &Target,
    set: &MigrationSet,
    settings: &Settings,
    progress: &ProgressFn,
    cancel: &CancellationToken,
) -> DatabaseReport {
    let start = Instant::now();
    let mut report = DatabaseReport::new(&target.database, target.role, target.tenant_id.clone());
    progress(Progress::DatabaseStarted {
        database: target.database.clone(),
    });
    let result = {
        let work = run(target, set, settings, progress, cancel, &mut report);
        // A cancel drops the work, and with it the connection: the server
        // rolls back the migration in flight and frees the session's lock.
        tokio::select! {
            r = work => r,
            () = cancel.cancelled() => Err(MigrateError::Cancelled),
        }
    };
    report.status = match result {
        Ok(status) => status,
        Err(MigrateError::Cancelled) => {
            report.error = Some(MigrateError::Cancelled.to_string());
            MigrationStatus::Cancelled
        }
        Err(e) => {
            report.error = Some(e.to_string());
            MigrationStatus::Failed
        }
    };
    report.duration_ms = millis(start.elapsed());
    report
}

async fn run(
    target: &Target,
    set: &MigrationSet,
    settings: &Settings,
    progress: &ProgressFn,
    cancel: &CancellationToken,
    report: &mut DatabaseReport,
) -> Result<MigrationStatus, MigrateError> {
    let db = target.database.as_str();
    let mut conn = connect(target, settings).await?;
    if settings.dry_run {
        let p = inspect(&mut conn, db, set, settings, report).await;
        let _ = conn.close().await;
        let (p, _) = p?;
        report.adopted = p
            .adopt
            .iter()
            .map(|&i| set.migrations[i].version.clone())
            .collect();
        report.pending = p
            .pending
            .iter()
            .map(|&i| set.migrations[i].version.clone())
            .collect();
        return refuse_changed(db, &p).map(|()| {
            if report.pending.is_empty() && report.adopted.is_empty() {
                MigrationStatus::UpToDate
            } else {
                MigrationStatus::Pending
            }
        });
    }
    let mut locked = lock::acquire(conn, db, settings.lock_wait, cancel).await?;
    let result = migrate(&mut locked, target, set, settings, progress, report).await;
    locked.release().await;
    result
}

/// Reads the ledger and the tool's records, and plans.
async fn inspect(
    conn: &mut PgConnection,
    db: &str,
    set: &MigrationSet,
    settings: &Settings,
    report: &mut DatabaseReport,
) -> Result<(Plan, &'static str), MigrateError> {
    let rows = ledger::read(conn, &settings.ledger)
        .await
        .map_err(|e| MigrateError::Database {
            database: db.to_owned(),
            reason: format!("reading {}: {}", settings.ledger, describe(&e)),
        })?;
    let tool = adopt::read(conn, set.layout, db).await?;
    let p = plan(set, &rows, &tool, settings.target_version.as_deref())?;
    report.previously_applied = p.applied.clone();
    report.drift = p.drift();
    Ok((p, tool.table))
}

fn refuse_changed(db: &str, p: &Plan) -> Result<(), MigrateError> {
    match p.changed.first() {
        None => Ok(()),
        Some(d) => Err(MigrateError::Changed {
            database: db.to_owned(),
            file: d.file.clone().unwrap_or_default(),
            version: d.version.clone(),
            recorded: d.recorded.clone().unwrap_or_default(),
            now: d.now.clone().unwrap_or_default(),
        }),
    }
}

async fn migrate(
    conn: &mut PgConnection,
    target: &Target,
    set: &MigrationSet,
    settings: &Settings,
    progress: &ProgressFn,
    report: &mut DatabaseReport,
) -> Result<MigrationStatus, MigrateError> {
    let db = target.database.as_str();
    // Read after the lock is held: a run that waited for another sees what
    // that one applied.
    let (p, table) = inspect(conn, db, set, settings, report).await?;
    let mut left: Vec<String> = p
        .pending
        .iter()
        .map(|&i| set.migrations[i].version.clone())
        .collect();
    left.extend(
        p.beyond_target
            .iter()
            .map(|&i| set.migrations[i].version.clone()),
    );
    report.pending = left.clone();
    refuse_changed(db, &p)?;
    if p.adopt.is_empty() && p.pending.is_empty() {
        return Ok(MigrationStatus::UpToDate);
    }
    if !p.pending.is_empty()
        && let Some(hook) = &settings.before_change
    {
        match (hook.0)(target).await {
            Ok(id) => report.backup_id = Some(id),
            Err(reason) => {
                return Err(MigrateError::Backup {
                    database: db.to_owned(),
                    reason,
                });
            }
        }
    }
    let db_err = |what: &str, e: sqlx::Error| MigrateError::Database {
        database: db.to_owned(),
        reason: format!("{what}: {}", describe(&e)),
    };
    ledger::ensure(conn, &settings.ledger)
        .await
        .map_err(|e| db_err(&format!("creating {}", settings.ledger), e))?;
    if !p.adopt.is_empty() {
        let mut tx = conn.begin().await.map_err(|e| db_err("begin", e))?;
        for &i in &p.adopt {
            ledger::record(
                &mut tx,
                &settings.ledger,
                &set.migrations[i],
                0,
                settings.job_id.as_deref(),
                Some(table),
            )
            .await
            .map_err(|e| {
                db_err(
                    &format!("recording adopted {}", set.migrations[i].version),
                    e,
                )
            })?;
        }
        tx.commit().await.map_err(|e| db_err("commit", e))?;
        report.adopted = p
            .adopt
            .iter()
            .map(|&i| set.migrations[i].version.clone())
            .collect();
    }
    for &i in &p.pending {
        let m = &set.migrations[i];
        progress(Progress::MigrationStarted {
            database: db.to_owned(),
            version: m.version.clone(),
            name: m.name.clone(),
        });
        let took = apply(conn, &settings.ledger, m, settings.job_id.as_deref())
            .await
            .map_err(|reason| MigrateError::Sql {
                database: db.to_owned(),
                file: m.file.clone(),
                reason,
            })?;
        report.applied.push(AppliedMigration {
            version: m.version.clone(),
            name: m.name.clone(),
            file: m.file.clone(),
            duration_ms: millis(took),
        });
        left.remove(0);
        report.pending = left.clone();
    }
    Ok(MigrationStatus::Applied)
}

/// The run's dedicated connection, with the session settings every
/// statement of the run gets.
pub(crate) async fn connect(
    target: &Target,
    settings: &Settings,
) -> Result<PgConnection, MigrateError> {
    let db = target.database.as_str();
    let fail = |reason: String| MigrateError::Connect {
        database: db.to_owned(),
        reason,
    };
    let options = PgConnectOptions::from_str(&target.url)
        .map_err(|e| fail(format!("bad connection URL: {e}")))?
        .application_name("ferry-migrate")
        .disable_statement_logging();
    let mut conn = tokio::time::timeout(settings.connect_timeout, options.connect())
        .await
        .map_err(|_| {
            fail(format!(
                "no answer within {}s",
                settings.connect_timeout.as_secs_f32()
            ))
        })?
        .map_err(|e| fail(describe(&e)))?;
    let mut set = String::new();
    if let Some(t) = settings.lock_timeout {
        set.push_str(&format!("SET lock_timeout = {};", t.as_millis()));
    }
    if let Some(t) = settings.statement_timeout {
        set.push_str(&format!("SET statement_timeout = {};", t.as_millis()));
    }
    if settings.dry_run {
        // Belt and braces: a dry run's session cannot write even by mistake.
        set.push_str("SET default_transaction_read_only = on;");
    }
    if conn.server_version_num().is_some_and(|v| v >= 140000) {
        // A statement still running when the run is cancelled (its
        // connection dropped) is stopped within a second, not at its end.
        set.push_str("SET client_connection_check_interval = 1000;");
    }
    // A role named like the ledger's schema (`ferry`) would, through the
    // default search_path's "$user", create the app's tables in the
    // ledger's schema once it exists: "$user" is dropped from the path then.
    // (The schema is a checked identifier: see `LedgerName::parse`.)
    set.push_str(&format!(
        "SELECT set_config('search_path', array_to_string(array_remove(\
         string_to_array(current_setting('search_path'), ', '), '\"$user\"'), ', '), false) \
         WHERE current_user = '{}';",
        settings.ledger.schema()
    ));
    // One round trip for all of it: a run on a thousand databases pays it
    // a thousand times.
    sqlx::raw_sql(sqlx::AssertSqlSafe(set))
        .execute(&mut conn)
        .await
        .map_err(|e| MigrateError::database(db, &e))?;
    Ok(conn)
}
