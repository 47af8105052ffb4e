//! A whole run: the main database first, then its tenants, at most
//! `concurrency` at a time, each on its own connection, with the failure
//! policy deciding whether a failure stops new tenants from starting.

use std::str::FromStr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use ferry_common::status::MigrationStatus;
use sqlx::Connection;
use sqlx::postgres::PgConnectOptions;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

use super::database::{Settings, Target, connect, run_database};
use super::error::MigrateError;
use super::layout::MigrationSet;
use super::report::{DatabaseReport, Progress, ProgressFn, Role};
use super::tenants::{Filter, TenantSource, list, tenant_url};

/// The default number of databases migrated at once.
pub const DEFAULT_CONCURRENCY: usize = 4;

/// What happens after a database fails.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum OnFailure {
    /// Start no new database; those already running finish.
    #[default]
    Stop,
    /// Migrate every database it can (`--continue-on-error`).
    Continue,
}

/// The tenants of the main database, and their own migrations if they
/// differ from the main database's.
#[derive(Debug, Clone)]
pub struct Tenants {
    pub source: TenantSource,
    pub migrations: Option<Arc<MigrationSet>>,
}

/// Everything a run needs.
#[derive(Debug, Clone)]
pub struct Request {
    /// The main database's connection URL.
    pub main_url: String,
    pub migrations: Arc<MigrationSet>,
    pub tenants: Option<Tenants>,
    pub filter: Filter,
    pub settings: Settings,
    pub concurrency: usize,
    pub on_failure: OnFailure,
}

/// Every database's report: the main one first, then tenants in the tenant
/// query's order.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct RunReport {
    pub databases: Vec<DatabaseReport>,
}

impl RunReport {
    /// Every database ended as the run wanted.
    pub fn ok(&self) -> bool {
        self.databases.iter().all(|d| d.status.is_ok())
    }

    pub fn failed(&self) -> impl Iterator<Item = &DatabaseReport> {
        self.databases
            .iter()
            .filter(|d| d.status == MigrationStatus::Failed)
    }
}

/// What migrates one database (given its migrations): the engine's
/// [`run_database`] for SQL files, or the `migrate` job's one-off container
/// of the app's own tool. The fleet's order, concurrency and failure policy
/// are the same for both.
pub type RunOne = dyn Fn(
        Target,
        Arc<MigrationSet>,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = DatabaseReport> + Send>>
    + Send
    + Sync;

/// Runs `req`. An `Err` is a run that could not start (bad options, no
/// tenant list); each database's own failure is in its report.
pub async fn run(
    req: Request,
    progress: Arc<ProgressFn>,
    cancel: CancellationToken,
) -> Result<RunReport, MigrateError> {
    let settings = Arc::new(req.settings.clone());
    let (p, c) = (progress.clone(), cancel.clone());
    let one: Arc<RunOne> = Arc::new(move |target: Target, set: Arc<MigrationSet>| {
        let (settings, p, c) = (settings.clone(), p.clone(), c.clone());
        Box::pin(async move { run_database(&target, &set, &settings, &*p, &c).await })
    });
    run_with(req, one, progress, cancel).await
}

/// [`run`], each database migrated by `one`.
pub async fn run_with(
    req: Request,
    one: Arc<RunOne>,
    progress: Arc<ProgressFn>,
    cancel: CancellationToken,
) -> Result<RunReport, MigrateError> {
    req.filter.check()?;
    if req.concurrency == 0 {
        return Err(MigrateError::config("concurrency", "must be at least 1"));
    }
    let main_name = PgConnectOptions::from_str(&req.main_url)
        .map_err(|e| MigrateError::config("main database URL", e.to_string()))?
        .get_database()
        .map(str::to_owned)
        .ok_or_else(|| MigrateError::config("main database URL", "names no database"))?;
    let main = Target {
        database: main_name.clone(),
        url: req.main_url.clone(),
        role: Role::Main,
        tenant_id: None,
    };
    let mut report = RunReport::default();
    let mut main_failed = false;
    if req.filter.wants_main() {
        progress(Progress::Planned { total: 1 });
        let r = one(main.clone(), req.migrations.clone()).await;
        main_failed = !r.status.is_ok();
        progress(Progress::DatabaseFinished {
            database: r.database.clone(),
            status: r.status,
            done: 1,
            total: 1,
        });
        report.databases.push(r);
    }
    let Some(tenants) = req.tenants.as_ref().filter(|_| req.filter.wants_tenants()) else {
        if !req.filter.tenants.is_empty() || !req.filter.tenant_ids.is_empty() {
            return Err(MigrateError::config(
                "--tenant / --tenant-id",
                "this database has no tenants configured",
            ));
        }
        return Ok(report);
    };
    if cancel.is_cancelled() {
        return Ok(report);
    }
    // Listed after the main database is migrated: its migrations may be
    // what creates or changes the tenant table.
    let listing = Settings {
        dry_run: true,
        ..req.settings.clone()
    };
    let mut conn = connect(&main, &listing).await?;
    let all = list(&mut conn, &main_name, &tenants.source).await;
    let _ = conn.close().await;
    let chosen = req.filter.apply(all?)?;
    let mut targets = Vec::with_capacity(chosen.len());
    for t in &chosen {
        targets.push(Target {
            url: tenant_url(&req.main_url, t, tenants.source.url_template.as_deref())?,
            database: t.database.clone(),
            role: Role::Tenant,
            tenant_id: t.id.clone(),
        });
    }
    let before = report.databases.len();
    let total = before + targets.len();
    progress(Progress::Planned { total });
    let set = tenants
        .migrations
        .clone()
        .unwrap_or_else(|| req.migrations.clone());
    let stop = Arc::new(AtomicBool::new(
        main_failed && req.on_failure == OnFailure::Stop,
    ));
    let done = Arc::new(AtomicUsize::new(before));
    let slots = Arc::new(Semaphore::new(req.concurrency));
    let mut tasks = tokio::task::JoinSet::new();
    let mut tenant_reports: Vec<Option<DatabaseReport>> = vec![None; total - before];
    let finished = |r: &DatabaseReport| {
        progress(Progress::DatabaseFinished {
            database: r.database.clone(),
            status: r.status,
            done: done.fetch_add(1, Ordering::SeqCst) + 1,
            total,
        });
    };
    // Tenants start in the query's order: a slot is taken here, before the
    // tenant's task exists, so "stop after the first failure" stops exactly
    // the tenants after it that had not started.
    for (i, target) in targets.into_iter().enumerate() {
        let slot = tokio::select! {
            slot = slots.clone().acquire_owned() => slot.ok(),
            () = cancel.cancelled() => None,
        };
        let not = if slot.is_none() || cancel.is_cancelled() {
            Some((MigrationStatus::Cancelled, "cancelled before it started"))
        } else if stop.load(Ordering::SeqCst) {
            Some((
                MigrationStatus::Skipped,
                "not started: another database failed first, and the run stops on failure (--continue-on-error migrates all it can)",
            ))
        } else {
            None
        };
        if let Some((status, why)) = not {
            let r = not_started(&target, status, why);
            finished(&r);
            tenant_reports[i] = Some(r);
            continue;
        }
        let (set, one, progress) = (set.clone(), one.clone(), progress.clone());
        let (stop, done) = (stop.clone(), done.clone());
        let on_failure = req.on_failure;
        tasks.spawn(async move {
            let _slot = slot;
            let r = one(target, set).await;
            if r.status == MigrationStatus::Failed && on_failure == OnFailure::Stop {
                stop.store(true, Ordering::SeqCst);
            }
            progress(Progress::DatabaseFinished {
                database: r.database.clone(),
                status: r.status,
                done: done.fetch_add(1, Ordering::SeqCst) + 1,
                total,
            });
            (i, r)
        });
    }
    while let Some(joined) = tasks.join_next().await {
        match joined {
            Ok((i, r)) => tenant_reports[i] = Some(r),
            Err(e) => {
                return Err(MigrateError::config(
                    "migration task",
                    format!("ended abnormally: {e}"),
                ));
            }
        }
    }
    report
        .databases
        .extend(tenant_reports.into_iter().flatten());
    Ok(report)
}

fn not_started(target: &Target, status: MigrationStatus, why: &str) -> DatabaseReport {
    let mut r = DatabaseReport::new(&target.database, target.role, target.tenant_id.clone());
    r.status = status;
    r.error = Some(why.to_owned());
    r
}
