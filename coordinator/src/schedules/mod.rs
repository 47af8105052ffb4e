//! Schedules of backup, verify and prune runs, per database of an (app,
//! env): registered from an app file's `[databases.NAME.backup]`
//! ([`apply_app_file`], by `ApplySchedules` and by every `StartRollout`),
//! or by hand ([`add`], [`remove`]); fired by the leading coordinator
//! ([`start`]: [`fire_due`] every tick while the scheduler's leader duties
//! say this process leads, `Core::leading`) through the same functions as
//! `ferry backup run|verify|prune` ([`crate::backups`]). (Its own loop
//! rather than a line in the scheduler's: the scheduler is below
//! `backups`, which submits through it.)
//!
//! Firing never fires a run twice: each run is claimed in the store with a
//! compare-and-set on its next run time, so of two coordinators that both
//! believe they lead only one submits it. A run that cannot even submit
//! its job (no agent matches, no backup to verify) is recorded with why,
//! never dropped: `ferry schedule ls`, `ferry status` and `/metrics` show it.

use ferry_common::appfile::{AppFile, CronSchedule, check_time_zone};
use ferry_common::rules::dns_name;
use ferry_common::status::BackupReason;
use ferry_common::time::now_ms;
use ferry_proto::v1 as pb;
use jiff::tz::TimeZone;
use uuid::Uuid;

use crate::core::Core;
use crate::error::CoordinatorError;
use crate::store::ids::IdOf;
use crate::store::{
    Applied, BackupFilter, Claim, NewSchedule, RunOutcome, ScheduleFilter, ScheduleKind,
    ScheduleRecord, StoreError,
};

pub mod due;

/// A schedule due longer ago than this has not been fired: no coordinator
/// leads, or its firing fails. `ferry status` shows it as overdue.
pub const OVERDUE_MS: i64 = 2 * due::GRACE_MS;

/// The parsed cron and zone of a schedule.
fn timing(cron: &str, timezone: &str) -> Result<(croner::Cron, TimeZone), String> {
    let cron: CronSchedule = cron.parse()?;
    check_time_zone(timezone)?;
    let tz = TimeZone::get(timezone).map_err(|e| format!("time zone {timezone:?}: {e}"))?;
    Ok((cron.cron(), tz))
}

/// The first run of a schedule registered at `now`.
fn first_run(cron: &str, timezone: &str, now: i64) -> Result<i64, String> {
    let (cron, tz) = timing(cron, timezone)?;
    due::next_after(&cron, &tz, now)
}

/// The schedules `[databases.NAME.backup]` of `app` asks for: `backup` and
/// `prune` (retention) at `schedule`, `verify` at `verify_schedule`, in
/// `timezone`; first runs after `now`.
pub fn wanted(app: &AppFile, now: i64) -> Result<Vec<NewSchedule>, CoordinatorError> {
    let mut out = Vec::new();
    for db in app.databases.values() {
        let policy = &db.backup;
        let mut add = |kind: ScheduleKind, cron: &CronSchedule| -> Result<(), CoordinatorError> {
            let next = first_run(cron.as_str(), &policy.timezone, now).map_err(|e| {
                CoordinatorError::invalid(format!("databases.{}.backup", db.name), e)
            })?;
            out.push(NewSchedule {
                database: db.name.clone(),
                kind,
                cron: cron.as_str().to_string(),
                timezone: policy.timezone.clone(),
                next_run_at_ms: next,
            });
            Ok(())
        };
        if let Some(cron) = &policy.schedule {
            add(ScheduleKind::Backup, cron)?;
            add(ScheduleKind::Prune, cron)?;
        }
        if let Some(cron) = &policy.verify_schedule {
            add(ScheduleKind::Verify, cron)?;
        }
    }
    Ok(out)
}

/// Keeps `app`'s databases for `env` as the (app, env)'s settings (as
/// `RunBackup -f` does) and makes its `app-file` schedules what the file
/// says, in one store transaction; audited. The one place `ApplySchedules`
/// and `StartRollout` do it.
pub async fn apply_app_file(
    core: &Core,
    actor: &str,
    app: &AppFile,
    env: &str,
) -> Result<Applied, CoordinatorError> {
    let environment = app
        .environment(env)
        .map_err(|e| CoordinatorError::invalid("env", e.to_string()))?;
    let mut settings = Vec::new();
    for db in app.databases.values() {
        let json = serde_json::to_string(&db.target(environment))
            .map_err(|e| CoordinatorError::Internal(e.to_string()))?;
        settings.push((db.name.clone(), json));
    }
    let now = now_ms();
    let wanted = wanted(app, now)?;
    let applied = core
        .store
        .apply_app_file(&app.app, env, &settings, &wanted, actor, now)
        .await?;
    if !applied.added.is_empty() || !applied.changed.is_empty() || !applied.removed.is_empty() {
        let ids = |v: &[Uuid]| v.iter().map(Uuid::to_string).collect::<Vec<_>>().join(",");
        let removed: Vec<Uuid> = applied.removed.iter().map(|s| s.id).collect();
        core.audit_app(
            actor,
            "schedule.apply",
            &format!("{}/{env}", app.app),
            &app.app,
            Some(env),
            format!(
                "added [{}] changed [{}] removed [{}]",
                ids(&applied.added),
                ids(&applied.changed),
                ids(&removed)
            ),
        )
        .await;
    }
    Ok(applied)
}

/// `ApplySchedules`: [`apply_app_file`] of the file in the request.
pub async fn apply(
    core: &Core,
    actor: &str,
    req: pb::ApplySchedulesRequest,
) -> Result<Applied, CoordinatorError> {
    let file_name = if req.file_name.is_empty() {
        "ferry.toml"
    } else {
        req.file_name.as_str()
    };
    let app = ferry_common::appfile::parse(file_name, &req.app_file)
        .map_err(|e| CoordinatorError::invalid("app file", e.to_string()))?;
    apply_app_file(core, actor, &app, req.env.trim()).await
}

/// `AddSchedule`: a `manual` schedule of a database the coordinator knows
/// for (app, env); audited.
pub async fn add(
    core: &Core,
    actor: &str,
    req: pb::AddScheduleRequest,
) -> Result<ScheduleRecord, CoordinatorError> {
    let app = req.app.trim();
    let env = req.env.trim();
    let database = req.database.trim();
    dns_name(app).map_err(|e| CoordinatorError::invalid("app", e))?;
    dns_name(env).map_err(|e| CoordinatorError::invalid("env", e))?;
    let kind: ScheduleKind = req
        .kind
        .trim()
        .parse()
        .map_err(|e: String| CoordinatorError::invalid("kind", e))?;
    let timezone = match req.timezone.trim() {
        "" => "UTC",
        tz => tz,
    };
    let cron = req.cron.trim();
    let (parsed, tz) = timing(cron, timezone).map_err(|e| CoordinatorError::invalid("cron", e))?;
    let known = core.store.database_settings(app, env).await?;
    if !known.iter().any(|s| s.name == database) {
        let reason = if known.is_empty() {
            format!(
                "no databases are known for {app} {env}; give the app file once (`ferry schedule apply -f ferry.toml --env {env}`), whose [databases.NAME] the coordinator then keeps"
            )
        } else {
            format!(
                "{app} {env} has no database {database:?}; it has {}",
                known
                    .iter()
                    .map(|s| s.name.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            )
        };
        return Err(CoordinatorError::invalid("database", reason));
    }
    let now = now_ms();
    let next =
        due::next_after(&parsed, &tz, now).map_err(|e| CoordinatorError::invalid("cron", e))?;
    let new = NewSchedule {
        database: database.to_string(),
        kind,
        cron: cron.to_string(),
        timezone: timezone.to_string(),
        next_run_at_ms: next,
    };
    let record = core.store.add_schedule(app, env, &new, actor, now).await?;
    core.audit_app(
        actor,
        "schedule.add",
        &record.id.to_string(),
        app,
        Some(env),
        format!("{kind} of database {database} at {cron:?} ({timezone})",),
    )
    .await;
    Ok(record)
}

/// `RemoveSchedule`: by the whole id or 8+ of its characters; audited.
pub async fn remove(
    core: &Core,
    actor: &str,
    id: &str,
) -> Result<ScheduleRecord, CoordinatorError> {
    let id = core.store.resolve_id(IdOf::Schedule, id).await?;
    let removed = core.store.remove_schedule(id).await?;
    core.audit_app(
        actor,
        "schedule.remove",
        &id.to_string(),
        &removed.app,
        Some(&removed.env),
        format!(
            "{} of database {} at {:?} ({}), {}",
            removed.kind,
            removed.database,
            removed.cron,
            removed.timezone,
            removed.source.as_str()
        ),
    )
    .await;
    Ok(removed)
}

/// The actor of a schedule's runs in the audit log and as the jobs'
/// creator: `schedule:` and the last 8 characters of its id (what lists
/// show, and what `ferry schedule rm` accepts).
pub fn actor_of(id: Uuid) -> String {
    let text = id.to_string();
    format!("schedule:{}", &text[text.len() - 8..])
}

/// How often the leader looks for due schedules.
const TICK: std::time::Duration = std::time::Duration::from_millis(500);

/// Starts the firing loop; it stops with `core.shutdown`. Only while this
/// process leads does it fire; a stale "leads" (leadership just lost) is
/// harmless, as every run is claimed by compare-and-set.
pub fn start(core: &std::sync::Arc<Core>) {
    let c = std::sync::Arc::clone(core);
    tokio::spawn(async move {
        let mut ticker = tokio::time::interval(TICK);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = c.shutdown.cancelled() => return,
                _ = ticker.tick() => {}
            }
            if !c.leading.load(std::sync::atomic::Ordering::Relaxed) {
                continue;
            }
            if let Err(e) = fire_due(&c, now_ms()).await {
                tracing::warn!(error = %e, "firing schedules failed");
            }
        }
    });
}

/// Fires every schedule due at `now` that this coordinator claims. Errors
/// of one schedule's run are recorded on it; only the store failing to
/// list or claim is returned.
pub async fn fire_due(core: &Core, now: i64) -> Result<usize, StoreError> {
    let mut fired = 0;
    for s in core.store.due_schedules(now).await? {
        let (claim, problem) = match timing(&s.cron, &s.timezone)
            .and_then(|(cron, tz)| due::due(&cron, &tz, s.next_run_at_ms, now))
        {
            Ok(Some(fire)) => (
                Claim {
                    expected_next_run_at_ms: s.next_run_at_ms,
                    scheduled_for_ms: fire.scheduled_for,
                    late: fire.late,
                    next_run_at_ms: fire.next_run_at,
                },
                None,
            ),
            Ok(None) => continue,
            // Not expected (both were checked when it was registered):
            // recorded as a failed run, looked at again in an hour.
            Err(e) => (
                Claim {
                    expected_next_run_at_ms: s.next_run_at_ms,
                    scheduled_for_ms: s.next_run_at_ms,
                    late: now - s.next_run_at_ms > due::GRACE_MS,
                    next_run_at_ms: now + 3_600_000,
                },
                Some(format!("cannot compute its runs: {e}")),
            ),
        };
        if !core.store.claim_schedule_run(s.id, claim, now).await? {
            // Another coordinator fired it.
            continue;
        }
        fired += 1;
        let outcome = match problem {
            Some(e) => Err(e),
            None => run(core, &s).await.map_err(|e| e.to_string()),
        };
        let (job, error) = match &outcome {
            Ok(job) => (*job, String::new()),
            Err(e) => (None, e.clone()),
        };
        if error.is_empty() {
            tracing::info!(schedule = %s.id, kind = %s.kind, app = %s.app, env = %s.env, database = %s.database, late = claim.late, job = ?job, "schedule fired");
        } else {
            tracing::warn!(schedule = %s.id, kind = %s.kind, app = %s.app, env = %s.env, database = %s.database, late = claim.late, error = %error, "a scheduled run could not start");
        }
        core.store
            .record_schedule_run(s.id, claim.scheduled_for_ms, job, &error)
            .await?;
    }
    Ok(fired)
}

/// Submits one run of `s`: its job, or none when there was nothing to do
/// (a prune with nothing expired).
async fn run(core: &Core, s: &ScheduleRecord) -> Result<Option<Uuid>, CoordinatorError> {
    let actor = actor_of(s.id);
    match s.kind {
        ScheduleKind::Backup => {
            let req = pb::RunBackupRequest {
                app: s.app.clone(),
                env: s.env.clone(),
                database: s.database.clone(),
                tables: Vec::new(),
                databases_json: Vec::new(),
            };
            let jobs =
                crate::backups::run_backup(core, &actor, req, BackupReason::Scheduled).await?;
            Ok(jobs.first().map(|j| j.id))
        }
        ScheduleKind::Verify => {
            let filter = BackupFilter {
                app: Some(s.app.clone()),
                env: Some(s.env.clone()),
                database: Some(s.database.clone()),
            };
            let newest = core.store.list_backups(&filter, 1).await?;
            let Some(b) = newest.first() else {
                return Err(CoordinatorError::invalid(
                    "verify",
                    format!(
                        "no catalogued backup of database {} of {} {} to verify",
                        s.database, s.app, s.env
                    ),
                ));
            };
            Ok(Some(
                crate::backups::verify_backup(core, &actor, b.id).await?.id,
            ))
        }
        ScheduleKind::Prune => {
            let (_, jobs) = crate::backups::prune_backups(
                core,
                &actor,
                &s.app,
                &s.env,
                Some(&s.database),
                false,
            )
            .await?;
            Ok(jobs.first().map(|j| j.id))
        }
    }
}

/// A schedule on the wire, its outcome read now.
pub fn to_wire(s: &ScheduleRecord, now: i64) -> pb::Schedule {
    pb::Schedule {
        id: s.id.to_string(),
        app: s.app.clone(),
        env: s.env.clone(),
        database: s.database.clone(),
        kind: s.kind.as_str().into(),
        cron: s.cron.clone(),
        timezone: s.timezone.clone(),
        source: s.source.as_str().into(),
        created_at_ms: s.created_at_ms,
        created_by: s.created_by.clone(),
        next_run_at_ms: s.next_run_at_ms,
        last_run_at_ms: s.last_run_at_ms.unwrap_or(0),
        last_scheduled_for_ms: s.last_scheduled_for_ms.unwrap_or(0),
        last_late: s.last_late,
        last_job_id: s.last_job_id.map(|j| j.to_string()).unwrap_or_default(),
        last_outcome: s
            .last_outcome(now)
            .map(|o| o.as_str().to_string())
            .unwrap_or_default(),
        last_error: s.last_error.clone(),
        overdue: is_overdue(s, now),
    }
}

/// Due longer than [`OVERDUE_MS`] ago and not fired.
pub fn is_overdue(s: &ScheduleRecord, now: i64) -> bool {
    now - s.next_run_at_ms > OVERDUE_MS
}

/// What `ferry status` shows: schedules whose last run failed (or was
/// cancelled), or that are overdue.
pub fn needs_attention(s: &ScheduleRecord, now: i64) -> bool {
    matches!(
        s.last_outcome(now),
        Some(RunOutcome::Failed | RunOutcome::Cancelled)
    ) || is_overdue(s, now)
}

/// Every schedule, for `GetStatus` and `/metrics`.
pub async fn all(core: &Core) -> Result<Vec<ScheduleRecord>, StoreError> {
    core.store.list_schedules(&ScheduleFilter::default()).await
}
