//! `migrate`: an app's migrations applied to its main database and then to
//! its tenant databases by the migration engine ([`crate::migrate`]), with
//! a pre-migration backup of each database that has something to apply
//! (taken by the backup executor's own code, [`super::backup::backup_url`],
//! while the database's migration lock is held), live progress (databases
//! done / total, the migration each one is on), and the per-database report
//! as the task's result — also when the task fails, so the coordinator
//! catalogues the backups taken and the CLI shows which database failed.
//!
//! Migrations carried by the job (`dir`) and copied out of the release's
//! image (`image_path`) are read by the same reader. Command mode (the
//! app's own tool in one-off containers) is in [`command`].

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use ferry_common::job::backup::DbLocation;
use ferry_common::job::migrate::{MigrateSpec, MigrationSource, TenantSpec};
use ferry_common::job::{BackupManifest, DatabaseOutcome, MigrateReport};
use ferry_common::migration_layout::{Files, Layout};
use ferry_common::status::{BackupReason, MigrationStatus};

use super::{Done, KindExecutor, TaskContext, TaskFailure};
use crate::migrate::{
    self, BeforeChange, DatabaseReport, Filter, LedgerName, MigrationSet, OnFailure, Progress,
    Request, Role, RunReport, Settings, TenantSource, Tenants,
};

pub mod command;
pub mod image;

/// Runs `migrate` tasks.
pub struct Migrate;

#[async_trait::async_trait]
impl KindExecutor for Migrate {
    type Spec = MigrateSpec;
    async fn run(&self, spec: MigrateSpec, ctx: &TaskContext) -> Result<Done, TaskFailure> {
        run(spec, ctx).await
    }
}

/// The step every event of a run reports under.
pub(crate) const STEP: &str = "migrate";

fn failed(message: impl Into<String>) -> TaskFailure {
    TaskFailure::Failed(message.into())
}

/// The main database's URL, from the secret the spec names.
fn main_url<'a>(spec: &MigrateSpec, ctx: &'a TaskContext) -> Result<&'a str, TaskFailure> {
    let DbLocation::UrlSecret(secret) = &spec.location else {
        return Err(failed(
            "migrations of databases given by service or container are not done yet; give the database's URL as a secret (url_secret)",
        ));
    };
    ctx.secrets.get(secret).map(String::as_str).ok_or_else(|| {
        failed(format!(
            "the secret {secret} (the URL of database {}) was not sent with the task; set it with `ferry secret set --app {} --env {} {secret}`",
            spec.database, spec.app, spec.env
        ))
    })
}

async fn run(spec: MigrateSpec, ctx: &TaskContext) -> Result<Done, TaskFailure> {
    let url = main_url(&spec, ctx)?.to_string();
    let backups: Arc<Mutex<Vec<BackupManifest>>> = Arc::default();
    let hook = (spec.backup && !spec.dry_run).then(|| pre_migration_backup(&spec, ctx, &backups));
    let filter = Filter {
        tenants: spec.filter.tenants.clone(),
        tenant_ids: spec.filter.tenant_ids.clone(),
        main_only: spec.filter.main_only,
        skip_main: spec.filter.skip_main,
    };
    let on_failure = if spec.continue_on_error {
        OnFailure::Continue
    } else {
        OnFailure::Stop
    };
    let started = Instant::now();
    let report = match &spec.source {
        MigrationSource::Command { .. } => {
            command::run(&spec, &url, filter, on_failure, hook, ctx).await?
        }
        MigrationSource::Files { .. } | MigrationSource::ImagePath { .. } => {
            let step = Instant::now();
            ctx.step_started(
                "load",
                &format!("{} migrations", spec.source.mode().replace('_', " ")),
            );
            let loaded = load_sets(&spec, ctx).await;
            let (main_set, tenant_set) = match loaded {
                Ok(sets) => sets,
                Err(e) => {
                    ctx.step_finished("load", false, &e, step);
                    return Err(failed(e));
                }
            };
            let mut msg = format!(
                "{} migrations ({})",
                main_set.migrations.len(),
                main_set.layout
            );
            if let Some(t) = &tenant_set {
                msg.push_str(&format!("; tenants: {} ({})", t.migrations.len(), t.layout));
            }
            ctx.step_finished("load", true, &msg, step);
            let ledger = match &spec.ledger {
                None => LedgerName::default(),
                Some(l) => LedgerName::parse(l).map_err(|e| failed(e.to_string()))?,
            };
            let settings = Settings {
                dry_run: spec.dry_run,
                lock_timeout: spec.lock_timeout,
                statement_timeout: spec.statement_timeout,
                ledger,
                job_id: Some(ctx.job_id.to_string()),
                target_version: spec.target_version.clone(),
                before_change: hook,
                ..Settings::default()
            };
            let req = Request {
                main_url: url,
                migrations: Arc::new(main_set),
                tenants: spec.tenants.as_deref().map(|t| Tenants {
                    source: tenant_source(t),
                    migrations: tenant_set.map(Arc::new),
                }),
                filter,
                settings,
                concurrency: spec.concurrency as usize,
                on_failure,
            };
            ctx.step_started(STEP, &describe_run(&spec));
            let progress = progress_fn(ctx);
            match migrate::run(req, progress, ctx.cancel.clone()).await {
                Ok(r) => r,
                Err(e) => {
                    let why = e.to_string();
                    ctx.step_finished(STEP, false, &why, started);
                    return Err(failed(why));
                }
            }
        }
    };
    finish(&spec, report, &backups, ctx, started)
}

/// What the run does, in one line.
fn describe_run(spec: &MigrateSpec) -> String {
    let what = if spec.dry_run {
        "dry run of"
    } else {
        "migrating"
    };
    let tenants = if spec.tenants.is_none() || spec.filter.main_only {
        ""
    } else if spec.filter.skip_main {
        " (tenants only)"
    } else {
        " then its tenants"
    };
    format!(
        "{what} database {}{tenants}, {} at a time",
        spec.database, spec.concurrency
    )
}

pub(crate) fn tenant_source(t: &TenantSpec) -> TenantSource {
    TenantSource {
        query: t.query.clone(),
        id_column: t.id_column.clone(),
        url_template: t.url_template.clone(),
    }
}

/// The main database's migrations and the tenants' own (if they differ).
async fn load_sets(
    spec: &MigrateSpec,
    ctx: &TaskContext,
) -> Result<(MigrationSet, Option<MigrationSet>), String> {
    let main = load_source(&spec.source, ctx).await?;
    let tenants = match spec.tenants.as_ref().and_then(|t| t.source.as_ref()) {
        None => None,
        Some(s) => Some(
            load_source(s, ctx)
                .await
                .map_err(|e| format!("tenants' {e}"))?,
        ),
    };
    Ok((main, tenants))
}

async fn load_source(source: &MigrationSource, ctx: &TaskContext) -> Result<MigrationSet, String> {
    let (layout, files): (Layout, Files) = match source {
        MigrationSource::Files { .. } => source
            .decode_files()?
            .ok_or_else(|| "no migration files were sent".to_string())?,
        MigrationSource::ImagePath {
            layout,
            image,
            path,
        } => {
            let docker = ctx.host.docker().map_err(|e| match e {
                TaskFailure::Failed(m) | TaskFailure::Undone(m) => m,
                TaskFailure::Cancelled => "the task was cancelled".into(),
            })?;
            let files = image::copy_folder(docker, image, path, &ctx.cancel).await?;
            (*layout, files)
        }
        MigrationSource::Command { .. } => {
            return Err("a command has no migration files to read".into());
        }
    };
    migrate::load(layout, &files).map_err(|e| format!("migrations: {e}"))
}

/// The pre-migration backup hook: the backup executor's own dump of the
/// database about to change, its manifest kept for the report.
fn pre_migration_backup(
    spec: &MigrateSpec,
    ctx: &TaskContext,
    backups: &Arc<Mutex<Vec<BackupManifest>>>,
) -> BeforeChange {
    let (app, env, database) = (spec.app.clone(), spec.env.clone(), spec.database.clone());
    let ctx = ctx.clone();
    let backups = backups.clone();
    BeforeChange(Arc::new(move |target: &migrate::Target| {
        let (app, env, database) = (app.clone(), env.clone(), database.clone());
        let (ctx, backups) = (ctx.clone(), backups.clone());
        let target = target.clone();
        Box::pin(async move {
            let tenant = (target.role == Role::Tenant).then_some(target.database.as_str());
            ctx.log(
                STEP,
                "stdout",
                &format!("{}: backing up before migrating", target.database),
            );
            let made = super::backup::backup_url(
                &target.url,
                &app,
                &env,
                &database,
                tenant,
                BackupReason::PreMigration,
                &ctx,
            )
            .await;
            match made {
                Ok(m) => {
                    let id = m.id.clone();
                    ctx.log(
                        STEP,
                        "stdout",
                        &format!("{}: backup {id} written ({})", target.database, m.path),
                    );
                    backups.lock().unwrap_or_else(|p| p.into_inner()).push(m);
                    Ok(id)
                }
                Err(TaskFailure::Cancelled) => {
                    Err("the backup was stopped: the task was cancelled".into())
                }
                Err(TaskFailure::Failed(m) | TaskFailure::Undone(m)) => Err(m),
            }
        }) as migrate::BeforeChangeFuture
    }))
}

/// Progress events: databases done / total and what each one is doing,
/// as a percentage bar and a line per database that finishes.
pub(crate) fn progress_fn(ctx: &TaskContext) -> Arc<migrate::ProgressFn> {
    let ctx = ctx.clone();
    let total = Arc::new(AtomicUsize::new(0));
    let done = Arc::new(AtomicUsize::new(0));
    let last = Arc::new(Mutex::new(Instant::now() - Duration::from_secs(1)));
    Arc::new(move |p: Progress| {
        let percent = |done: usize, total: usize| {
            if total == 0 {
                0.0
            } else {
                done as f64 * 100.0 / total as f64
            }
        };
        match p {
            Progress::Planned { total: t } => {
                total.store(t, Ordering::SeqCst);
                ctx.progress(
                    STEP,
                    percent(done.load(Ordering::SeqCst), t),
                    &format!("{}/{t} databases", done.load(Ordering::SeqCst)),
                );
            }
            Progress::DatabaseStarted { database } => {
                let (d, t) = (done.load(Ordering::SeqCst), total.load(Ordering::SeqCst));
                // Hundreds of tenants start within a second: one event per
                // 100 ms at most keeps the stream readable.
                let mut at = last.lock().unwrap_or_else(|p| p.into_inner());
                if at.elapsed() >= Duration::from_millis(100) {
                    *at = Instant::now();
                    ctx.progress(
                        STEP,
                        percent(d, t),
                        &format!("{d}/{t} databases; {database}"),
                    );
                }
            }
            Progress::MigrationStarted {
                database,
                version,
                name,
            } => {
                let (d, t) = (done.load(Ordering::SeqCst), total.load(Ordering::SeqCst));
                ctx.progress(
                    STEP,
                    percent(d, t),
                    &format!("{d}/{t} databases; {database}: {version} {name}"),
                );
            }
            Progress::DatabaseFinished {
                database,
                status,
                done: d,
                total: t,
            } => {
                done.store(d, Ordering::SeqCst);
                total.store(t, Ordering::SeqCst);
                ctx.log(STEP, "stdout", &format!("{database}: {status}"));
                ctx.progress(
                    STEP,
                    percent(d, t),
                    &format!("{d}/{t} databases; {database} {status}"),
                );
            }
        }
    })
}

/// One engine report as the job reports it.
pub(crate) fn outcome(r: &DatabaseReport) -> DatabaseOutcome {
    DatabaseOutcome {
        database: r.database.clone(),
        role: r.role.to_string(),
        tenant_id: r.tenant_id.clone(),
        status: r.status.to_string(),
        applied: r.applied.iter().map(|a| a.version.clone()).collect(),
        pending: r.pending.clone(),
        previously_applied: r.previously_applied.clone(),
        adopted: r.adopted.clone(),
        drift: r
            .drift
            .iter()
            .map(|d| match &d.file {
                Some(f) => format!("{} ({f}): {}", d.version, d.reason),
                None => format!("{}: {}", d.version, d.reason),
            })
            .collect(),
        error: r.error.clone(),
        backup_id: r.backup_id.clone(),
        duration_ms: r.duration_ms,
    }
}

/// The task's end: its result is the report whether it succeeded or not.
fn finish(
    spec: &MigrateSpec,
    run: RunReport,
    backups: &Arc<Mutex<Vec<BackupManifest>>>,
    ctx: &TaskContext,
    started: Instant,
) -> Result<Done, TaskFailure> {
    let report = MigrateReport {
        databases: run.databases.iter().map(outcome).collect(),
        backups: std::mem::take(&mut *backups.lock().unwrap_or_else(|p| p.into_inner())),
    };
    let json = serde_json::to_string(&report).map_err(|e| failed(format!("report: {e}")))?;
    let count = |s: MigrationStatus| run.databases.iter().filter(|d| d.status == s).count();
    let total = run.databases.len();
    let summary = if spec.dry_run {
        format!(
            "dry run: {} of {total} databases have pending migrations, {} up to date",
            count(MigrationStatus::Pending),
            count(MigrationStatus::UpToDate)
        )
    } else {
        format!(
            "{total} databases: {} migrated, {} up to date, {} backups taken",
            count(MigrationStatus::Applied),
            count(MigrationStatus::UpToDate),
            report.backups.len()
        )
    };
    let failures: Vec<String> = run
        .databases
        .iter()
        .filter(|d| !d.status.is_ok())
        .map(|d| format!("{} {}", d.database, d.status))
        .collect();
    if failures.is_empty() {
        ctx.step_finished(STEP, true, &summary, started);
        return Ok(Done {
            message: summary,
            result_json: json,
        });
    }
    ctx.fail_with_result(json);
    let first = run
        .failed()
        .next()
        .and_then(|d| d.error.clone())
        .map(|e| format!("; first failure: {e}"))
        .unwrap_or_default();
    let why = format!(
        "{} of {total} databases not migrated ({}){first}",
        failures.len(),
        failures.join(", ")
    );
    ctx.step_finished(STEP, false, &why, started);
    if ctx.cancel.is_cancelled() {
        return Err(TaskFailure::Cancelled);
    }
    Err(failed(why))
}
