//! Schedules: cron-timed `backup`, `verify` and `prune` runs of one
//! database of an (app, env), and how each one's last run went.
//!
//! A run is claimed with a compare-and-set on `next_run_at_ms`
//! ([`Store::claim_schedule_run`]): of two coordinators that both believe
//! they lead, only the one whose `UPDATE … WHERE next_run_at_ms = <read>`
//! changed the row fires it. The outcome of the last run is never stored:
//! it is read from its job at read time ([`ScheduleRecord::last_outcome`]),
//! so it is always the job's; `last_error` says why a run has no job.
//!
//! The app file's schedules (`source = app-file`) are replaced together
//! with the (app, env)'s database settings, in one transaction
//! ([`Store::apply_app_file`]); `manual` ones are left alone.

use std::fmt;
use std::str::FromStr;

use ferry_common::status::JobStatus;
use uuid::Uuid;

use super::db::{Tx, query};
use super::rows::{self, Columns};
use super::{Store, StoreError};

/// What a schedule runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum ScheduleKind {
    /// A backup of the database (reason `scheduled`).
    Backup,
    /// A test restore of the database's newest catalogued backup.
    Verify,
    /// Retention of the database's backups.
    Prune,
}

impl ScheduleKind {
    pub const ALL: [ScheduleKind; 3] = [
        ScheduleKind::Backup,
        ScheduleKind::Verify,
        ScheduleKind::Prune,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            ScheduleKind::Backup => "backup",
            ScheduleKind::Verify => "verify",
            ScheduleKind::Prune => "prune",
        }
    }
}

impl fmt::Display for ScheduleKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for ScheduleKind {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        ScheduleKind::ALL
            .into_iter()
            .find(|k| k.as_str() == s)
            .ok_or_else(|| {
                format!("{s:?} is not a schedule kind; expected backup, verify or prune")
            })
    }
}

/// Who registered a schedule.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ScheduleSource {
    /// `[databases.NAME.backup]` of the last app file applied.
    AppFile,
    /// `ferry schedule add`.
    Manual,
}

impl ScheduleSource {
    pub fn as_str(self) -> &'static str {
        match self {
            ScheduleSource::AppFile => "app-file",
            ScheduleSource::Manual => "manual",
        }
    }
}

impl FromStr for ScheduleSource {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "app-file" => Ok(ScheduleSource::AppFile),
            "manual" => Ok(ScheduleSource::Manual),
            _ => Err(format!(
                "{s:?} is not a schedule source; expected app-file or manual"
            )),
        }
    }
}

/// How a schedule's last run went, read from its job.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RunOutcome {
    /// Its job has not ended yet.
    Running,
    Succeeded,
    Failed,
    Cancelled,
}

impl RunOutcome {
    /// Spelt as the job statuses it stands for.
    pub fn as_str(self) -> &'static str {
        match self {
            RunOutcome::Running => JobStatus::Running.as_str(),
            RunOutcome::Succeeded => JobStatus::Succeeded.as_str(),
            RunOutcome::Failed => JobStatus::Failed.as_str(),
            RunOutcome::Cancelled => JobStatus::Cancelled.as_str(),
        }
    }
}

/// What a claimed run says until its job is recorded. Within
/// [`SUBMIT_WINDOW_MS`] of the claim the run is being submitted (running);
/// after it, the coordinator that claimed it stopped before recording its
/// job, and the run shows as failed with this, rather than as nothing.
pub const RUN_INTERRUPTED: &str =
    "the coordinator stopped after claiming this run and before submitting its job";

/// How long submitting a claimed run may take before it counts as
/// interrupted (submission is a few store round trips).
pub const SUBMIT_WINDOW_MS: i64 = 60_000;

/// One schedule, with what its last run's job says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScheduleRecord {
    pub id: Uuid,
    pub app: String,
    pub env: String,
    pub database: String,
    pub kind: ScheduleKind,
    pub cron: String,
    pub timezone: String,
    pub source: ScheduleSource,
    pub created_at_ms: i64,
    pub created_by: String,
    pub next_run_at_ms: i64,
    pub last_run_at_ms: Option<i64>,
    pub last_scheduled_for_ms: Option<i64>,
    pub last_late: bool,
    pub last_job_id: Option<Uuid>,
    pub last_error: String,
    /// The status of `last_job_id`'s job, read with the schedule.
    pub last_job_status: Option<JobStatus>,
}

impl ScheduleRecord {
    /// None: never run. A run being submitted is running (interrupted,
    /// [`RUN_INTERRUPTED`], once [`SUBMIT_WINDOW_MS`] have passed: failed);
    /// a run that could not submit its job failed; one that needed no job
    /// (a prune with nothing expired) succeeded; else its job's status,
    /// read with it, says.
    pub fn last_outcome(&self, now_ms: i64) -> Option<RunOutcome> {
        let ran_at = self.last_run_at_ms?;
        if self.last_error == RUN_INTERRUPTED && now_ms - ran_at < SUBMIT_WINDOW_MS {
            return Some(RunOutcome::Running);
        }
        if !self.last_error.is_empty() {
            return Some(RunOutcome::Failed);
        }
        if self.last_job_id.is_none() {
            return Some(RunOutcome::Succeeded);
        }
        Some(match self.last_job_status {
            Some(JobStatus::Pending | JobStatus::Running) => RunOutcome::Running,
            Some(JobStatus::Succeeded) => RunOutcome::Succeeded,
            Some(JobStatus::Cancelled) => RunOutcome::Cancelled,
            // A job that is gone cannot be said to have succeeded.
            Some(JobStatus::Failed) | None => RunOutcome::Failed,
        })
    }
}

/// A schedule to register: what the app file says, or `schedule add`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewSchedule {
    pub database: String,
    pub kind: ScheduleKind,
    pub cron: String,
    pub timezone: String,
    /// When it is first due (the caller computes it from cron and zone).
    pub next_run_at_ms: i64,
}

/// Which schedules a listing shows; `None` matches any.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ScheduleFilter {
    pub app: Option<String>,
    pub env: Option<String>,
}

/// What applying an app file did to the (app, env)'s `app-file` schedules.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Applied {
    /// Every `app-file` schedule of the (app, env) now, by database and kind.
    pub schedules: Vec<ScheduleRecord>,
    /// New ones.
    pub added: Vec<Uuid>,
    /// Kept with a new cron or time zone (and a new next run).
    pub changed: Vec<Uuid>,
    /// Removed: no longer in the file.
    pub removed: Vec<ScheduleRecord>,
}

/// One claimed run, as the firing computed it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Claim {
    /// `next_run_at_ms` as it was read: the claim holds only if it still is.
    pub expected_next_run_at_ms: i64,
    pub scheduled_for_ms: i64,
    pub late: bool,
    pub next_run_at_ms: i64,
}

const SELECT: &str = "SELECT s.*, j.status AS last_job_status FROM schedules s \
                      LEFT JOIN jobs j ON j.id = s.last_job_id";

async fn insert(
    tx: &mut Tx,
    app: &str,
    env: &str,
    s: &NewSchedule,
    source: ScheduleSource,
    actor: &str,
    now_ms: i64,
) -> Result<Uuid, StoreError> {
    let id = Uuid::now_v7();
    query(
        "INSERT INTO schedules (id, app, env, database_name, kind, cron, timezone, source, \
         created_at_ms, created_by, next_run_at_ms) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)",
    )
    .bind(id)
    .bind(app)
    .bind(env)
    .bind(&s.database)
    .bind(s.kind.as_str())
    .bind(&s.cron)
    .bind(&s.timezone)
    .bind(source.as_str())
    .bind(now_ms)
    .bind(actor)
    .bind(s.next_run_at_ms)
    .execute(&mut *tx)
    .await?;
    Ok(id)
}

impl Store {
    /// Keeps an app file's databases as (app, env)'s settings (name, JSON;
    /// databases no longer in it go) and makes its `app-file` schedules
    /// exactly `wanted`, in one transaction: one whose database, kind, cron
    /// and time zone are unchanged keeps its id, next run and history; one
    /// with a new cron or zone keeps its id and history and takes the new
    /// next run; the rest are added or removed. `manual` schedules stay.
    pub async fn apply_app_file(
        &self,
        app: &str,
        env: &str,
        settings: &[(String, String)],
        wanted: &[NewSchedule],
        actor: &str,
        now_ms: i64,
    ) -> Result<Applied, StoreError> {
        let mut tx = self.pool.begin().await?;
        super::backups::replace_database_settings(&mut tx, app, env, settings, now_ms).await?;
        let existing: Vec<ScheduleRecord> = query(format!(
            "{SELECT} WHERE s.app = $1 AND s.env = $2 AND s.source = 'app-file'"
        ))
        .bind(app)
        .bind(env)
        .fetch_all(&mut tx)
        .await?
        .iter()
        .map(schedule)
        .collect::<Result<_, _>>()?;
        let mut applied = Applied::default();
        for w in wanted {
            match existing
                .iter()
                .find(|e| e.database == w.database && e.kind == w.kind)
            {
                Some(e) if e.cron == w.cron && e.timezone == w.timezone => {}
                Some(e) => {
                    query(
                        "UPDATE schedules SET cron = $2, timezone = $3, next_run_at_ms = $4 \
                         WHERE id = $1",
                    )
                    .bind(e.id)
                    .bind(&w.cron)
                    .bind(&w.timezone)
                    .bind(w.next_run_at_ms)
                    .execute(&mut tx)
                    .await?;
                    applied.changed.push(e.id);
                }
                None => {
                    let id = insert(&mut tx, app, env, w, ScheduleSource::AppFile, actor, now_ms)
                        .await?;
                    applied.added.push(id);
                }
            }
        }
        for e in existing {
            if !wanted
                .iter()
                .any(|w| w.database == e.database && w.kind == e.kind)
            {
                query("DELETE FROM schedules WHERE id = $1")
                    .bind(e.id)
                    .execute(&mut tx)
                    .await?;
                applied.removed.push(e);
            }
        }
        applied.schedules = query(format!(
            "{SELECT} WHERE s.app = $1 AND s.env = $2 AND s.source = 'app-file' \
             ORDER BY s.database_name, s.kind"
        ))
        .bind(app)
        .bind(env)
        .fetch_all(&mut tx)
        .await?
        .iter()
        .map(schedule)
        .collect::<Result<_, _>>()?;
        tx.commit().await?;
        Ok(applied)
    }

    /// Registers a `manual` schedule.
    pub async fn add_schedule(
        &self,
        app: &str,
        env: &str,
        new: &NewSchedule,
        actor: &str,
        now_ms: i64,
    ) -> Result<ScheduleRecord, StoreError> {
        let mut tx = self.pool.begin().await?;
        let id = insert(
            &mut tx,
            app,
            env,
            new,
            ScheduleSource::Manual,
            actor,
            now_ms,
        )
        .await?;
        tx.commit().await?;
        self.get_schedule(id)
            .await?
            .ok_or(StoreError::ScheduleNotFound(id))
    }

    /// Removes schedule `id`; returns it as it was.
    pub async fn remove_schedule(&self, id: Uuid) -> Result<ScheduleRecord, StoreError> {
        let mut tx = self.pool.begin().await?;
        let record = query(format!("{SELECT} WHERE s.id = $1"))
            .bind(id)
            .fetch_optional(&mut tx)
            .await?
            .as_ref()
            .map(schedule)
            .transpose()?
            .ok_or(StoreError::ScheduleNotFound(id))?;
        query("DELETE FROM schedules WHERE id = $1")
            .bind(id)
            .execute(&mut tx)
            .await?;
        tx.commit().await?;
        Ok(record)
    }

    pub async fn get_schedule(&self, id: Uuid) -> Result<Option<ScheduleRecord>, StoreError> {
        query(format!("{SELECT} WHERE s.id = $1"))
            .bind(id)
            .fetch_optional(&self.pool)
            .await?
            .as_ref()
            .map(schedule)
            .transpose()
    }

    /// By app, env, database and kind.
    pub async fn list_schedules(
        &self,
        filter: &ScheduleFilter,
    ) -> Result<Vec<ScheduleRecord>, StoreError> {
        query(format!(
            "{SELECT} WHERE (CAST($1 AS TEXT) IS NULL OR s.app = $1) \
             AND (CAST($2 AS TEXT) IS NULL OR s.env = $2) \
             ORDER BY s.app, s.env, s.database_name, s.kind, s.id"
        ))
        .bind(filter.app.as_deref())
        .bind(filter.env.as_deref())
        .fetch_all(&self.pool)
        .await?
        .iter()
        .map(schedule)
        .collect()
    }

    /// Schedules due at `now_ms` (next run at or before it), oldest due
    /// first.
    pub async fn due_schedules(&self, now_ms: i64) -> Result<Vec<ScheduleRecord>, StoreError> {
        query(format!(
            "{SELECT} WHERE s.next_run_at_ms <= $1 ORDER BY s.next_run_at_ms, s.id"
        ))
        .bind(now_ms)
        .fetch_all(&self.pool)
        .await?
        .iter()
        .map(schedule)
        .collect()
    }

    /// Claims the run of schedule `id` due at `claim.expected_next_run_at_ms`:
    /// moves its next run on and starts its last run (no job yet,
    /// [`RUN_INTERRUPTED`] until [`Store::record_schedule_run`]) if and only
    /// if its next run is still the one read. Returns whether this caller
    /// claimed it; a second claimer of the same run gets `false`.
    pub async fn claim_schedule_run(
        &self,
        id: Uuid,
        claim: Claim,
        now_ms: i64,
    ) -> Result<bool, StoreError> {
        let n = query(
            "UPDATE schedules SET next_run_at_ms = $3, last_run_at_ms = $4, \
             last_scheduled_for_ms = $5, last_late = $6, last_job_id = NULL, last_error = $7 \
             WHERE id = $1 AND next_run_at_ms = $2",
        )
        .bind(id)
        .bind(claim.expected_next_run_at_ms)
        .bind(claim.next_run_at_ms)
        .bind(now_ms)
        .bind(claim.scheduled_for_ms)
        .bind(claim.late)
        .bind(RUN_INTERRUPTED)
        .execute(&self.pool)
        .await?;
        Ok(n == 1)
    }

    /// Records the job a claimed run submitted, or why it could not (an
    /// empty `error` and no job: nothing needed doing). Only the run
    /// scheduled for `scheduled_for_ms` is written: a later run's record
    /// is never overwritten by an earlier one's.
    pub async fn record_schedule_run(
        &self,
        id: Uuid,
        scheduled_for_ms: i64,
        job_id: Option<Uuid>,
        error: &str,
    ) -> Result<(), StoreError> {
        query(
            "UPDATE schedules SET last_job_id = $3, last_error = $4 \
             WHERE id = $1 AND last_scheduled_for_ms = $2",
        )
        .bind(id)
        .bind(scheduled_for_ms)
        .bind(job_id)
        .bind(error)
        .execute(&self.pool)
        .await?;
        Ok(())
    }
}

// --- decoding -----------------------------------------------------------

fn schedule(row: &impl Columns) -> Result<ScheduleRecord, StoreError> {
    const TABLE: &str = "schedules";
    Ok(ScheduleRecord {
        id: rows::uuid(TABLE, "id", &row.text("id")?)?,
        app: row.text("app")?,
        env: row.text("env")?,
        database: row.text("database_name")?,
        kind: rows::parsed(TABLE, "kind", &row.text("kind")?)?,
        cron: row.text("cron")?,
        timezone: row.text("timezone")?,
        source: rows::parsed(TABLE, "source", &row.text("source")?)?,
        created_at_ms: row.int("created_at_ms")?,
        created_by: row.text("created_by")?,
        next_run_at_ms: row.int("next_run_at_ms")?,
        last_run_at_ms: row.opt_int("last_run_at_ms")?,
        last_scheduled_for_ms: row.opt_int("last_scheduled_for_ms")?,
        last_late: row.flag("last_late")?,
        last_job_id: row
            .opt_text("last_job_id")?
            .map(|t| rows::uuid(TABLE, "last_job_id", &t))
            .transpose()?,
        last_error: row.text("last_error")?,
        last_job_status: row
            .opt_text("last_job_status")?
            .map(|t| rows::parsed(TABLE, "last_job_status", &t))
            .transpose()?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record() -> ScheduleRecord {
        ScheduleRecord {
            id: Uuid::now_v7(),
            app: "shop".into(),
            env: "prod".into(),
            database: "main".into(),
            kind: ScheduleKind::Backup,
            cron: "0 2 * * *".into(),
            timezone: "UTC".into(),
            source: ScheduleSource::Manual,
            created_at_ms: 0,
            created_by: "x".into(),
            next_run_at_ms: 1,
            last_run_at_ms: None,
            last_scheduled_for_ms: None,
            last_late: false,
            last_job_id: None,
            last_error: String::new(),
            last_job_status: None,
        }
    }

    #[test]
    fn the_outcome_is_the_jobs() {
        let never = record();
        assert_eq!(never.last_outcome(5), None);
        let ran = ScheduleRecord {
            last_run_at_ms: Some(5),
            last_job_id: Some(Uuid::now_v7()),
            ..record()
        };
        for (status, outcome) in [
            (Some(JobStatus::Pending), RunOutcome::Running),
            (Some(JobStatus::Running), RunOutcome::Running),
            (Some(JobStatus::Succeeded), RunOutcome::Succeeded),
            (Some(JobStatus::Failed), RunOutcome::Failed),
            (Some(JobStatus::Cancelled), RunOutcome::Cancelled),
            (None, RunOutcome::Failed),
        ] {
            let r = ScheduleRecord {
                last_job_status: status,
                ..ran.clone()
            };
            assert_eq!(r.last_outcome(5), Some(outcome), "{status:?}");
        }
        let no_submit = ScheduleRecord {
            last_run_at_ms: Some(5),
            last_error: "no agent".into(),
            ..record()
        };
        assert_eq!(no_submit.last_outcome(5), Some(RunOutcome::Failed));
        // Claimed and being submitted; or interrupted, once the window passed.
        let claimed = ScheduleRecord {
            last_run_at_ms: Some(5),
            last_error: RUN_INTERRUPTED.into(),
            ..record()
        };
        assert_eq!(claimed.last_outcome(5), Some(RunOutcome::Running));
        assert_eq!(
            claimed.last_outcome(5 + SUBMIT_WINDOW_MS),
            Some(RunOutcome::Failed)
        );
        let nothing_to_do = ScheduleRecord {
            last_run_at_ms: Some(5),
            ..record()
        };
        assert_eq!(nothing_to_do.last_outcome(5), Some(RunOutcome::Succeeded));
        for k in ScheduleKind::ALL {
            assert_eq!(k.as_str().parse::<ScheduleKind>(), Ok(k));
        }
        assert!("daily".parse::<ScheduleKind>().is_err());
    }
}
