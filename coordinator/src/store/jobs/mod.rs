//! Jobs, their tasks and job events: the record types, the queries, and
//! `engine::JobTx` over a `db::Tx` of either backend. What the job methods do with
//! the rows they read and lock is `engine`'s, written once.
//!
//! Row locks (PostgreSQL only, see `db::row_lock`): the job methods lock the
//! task rows they change, then their jobs, each in id order, with `FOR NO
//! KEY UPDATE`: the lock an `UPDATE` of non-key columns takes anyway, which
//! unlike `FOR UPDATE` lets foreign-key checks of other transactions
//! through. Claims skip rows other coordinators hold (`SKIP LOCKED`), so no
//! task is claimed twice. On SQLite every job method but the look-ups runs
//! in a `BEGIN IMMEDIATE` transaction, alone.

mod engine;

use async_trait::async_trait;
use uuid::Uuid;

use super::db::{Arg, Row, Tx, Ty, in_list, query, row_lock};
pub use super::notify::Notification;
use super::rows::{Columns, opt_uuid, parsed, sql_int, unsigned, uuid};
use super::{AuditEntry, Backend, Store, StoreError, audit};
use crate::job::{JobStatus, TaskEffect, TaskEvent, TaskState};
use engine::{JobTx, NewEvent};

/// What `create_job` inserts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewJob {
    pub id: Uuid,
    pub kind: String,
    pub spec_json: String,
    /// `ferry_common::job::Selector` as JSON.
    pub target_json: String,
    /// SPIFFE URI of the submitter.
    pub created_by: String,
    pub idempotency_key: Option<String>,
    pub created_at_ms: i64,
    /// Pending tasks expire at this time.
    pub deadline_ms: i64,
    /// W3C traceparent of the job's root span.
    pub traceparent: String,
}

/// One task of a new job.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewTask {
    pub id: Uuid,
    pub agent_id: Uuid,
    pub agent_name: String,
}

/// What [`Store::start_job`](Store::start_job) does in its one
/// transaction: insert the job and its tasks, append each task's first
/// event, claim the tasks whose agent is connected to the caller, and write
/// the audit entry. One commit, and no notification round trip, between
/// `SubmitJob` and the `Assign` of a job whose agents are connected here.
pub struct JobStart<'a> {
    pub job: &'a NewJob,
    pub tasks: &'a [NewTask],
    /// An event body per task (the "queued for agent web-1" or "waiting
    /// for agent web-1" line a watch shows first), appended before any
    /// claim; tasks without one get none.
    pub notes: &'a [(Uuid, Vec<u8>)],
    /// Whether an agent has a session with the caller: its task is claimed
    /// (`TaskEvent::Assigned`, attempt 1, `assigned_by = coordinator_id`)
    /// before the commit.
    pub here: &'a (dyn Fn(Uuid) -> bool + Send + Sync),
    pub coordinator_id: &'a str,
    pub audit: Option<&'a super::AuditEntry>,
    pub now_ms: i64,
}

/// What [`Store::start_job`](Store::start_job) did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StartedJob {
    /// The new job (after the claims), or the existing one whose
    /// idempotency key matched.
    pub job: JobRecord,
    /// False if the idempotency key matched: nothing was written.
    pub created: bool,
    /// The tasks claimed (after), each with its job, in task id order.
    pub claimed: Vec<(TaskRecord, JobRecord)>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JobRecord {
    pub id: Uuid,
    pub kind: String,
    pub spec_json: String,
    pub target_json: String,
    pub status: JobStatus,
    pub created_by: String,
    pub idempotency_key: Option<String>,
    pub created_at_ms: i64,
    pub updated_at_ms: i64,
    pub finished_at_ms: Option<i64>,
    pub deadline_ms: i64,
    pub cancel_requested: bool,
    /// Highest job-level event seq allocated so far (0 = none).
    pub last_seq: u64,
    pub traceparent: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TaskRecord {
    pub id: Uuid,
    pub job_id: Uuid,
    pub agent_id: Uuid,
    pub agent_name: String,
    pub state: TaskState,
    /// 0 until first assigned; +1 on every assignment.
    pub attempt: u32,
    /// Highest contiguous agent event seq stored (0 = none).
    pub last_seq: u64,
    /// Coordinator that last assigned it.
    pub assigned_by: Option<String>,
    pub started_at_ms: Option<i64>,
    pub finished_at_ms: Option<i64>,
    /// Current step or final message, for listings.
    pub message: String,
    /// Kind-specific result JSON, from the agent's TaskFinished.
    pub result_json: Option<String>,
    pub updated_at_ms: i64,
}

/// One stored job event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JobEventRecord {
    pub job_id: Uuid,
    /// Job-level sequence: 1, 2, 3, … without gaps.
    pub seq: u64,
    pub at_ms: i64,
    pub task_id: Option<Uuid>,
    /// The task's agent, if the event belongs to a task.
    pub agent_name: Option<String>,
    /// The agent's per-task seq; `None` for events the coordinator wrote.
    pub task_seq: Option<u64>,
    /// prost-encoded `ferry.v1.EventBody`; opaque to the store.
    pub body: Vec<u8>,
}

/// An event reported by an agent, decoded enough for the store to apply it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IncomingEvent {
    pub task_id: Uuid,
    pub attempt: u32,
    pub seq: u64,
    pub at_ms: i64,
    /// prost-encoded `ferry.v1.EventBody`.
    pub body: Vec<u8>,
    /// `TaskEvent::Reported` or `TaskEvent::Finished(_)`.
    pub machine_event: TaskEvent,
    /// New value for `TaskRecord::message`, if the event changes it.
    pub message: Option<String>,
    /// Result JSON, from a TaskFinished.
    pub result_json: Option<String>,
}

/// A task transition that happened (state may be unchanged, e.g. a cancel
/// of a running task, which only asks the agent to stop).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Transition {
    /// The task after the transition.
    pub task: TaskRecord,
    pub from: TaskState,
    pub effects: Vec<TaskEffect>,
    /// Set when this transition finished the job.
    pub job_finished: Option<JobStatus>,
}

/// Result of storing a batch of agent events.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AppendOutcome {
    /// For every task named in the batch that exists: its stored last seq
    /// after the batch, the cumulative ack to send to the agent.
    pub acks: Vec<(Uuid, u64)>,
    /// Jobs that got at least one new event.
    pub touched_jobs: Vec<Uuid>,
    /// State changes caused by the batch.
    pub transitions: Vec<Transition>,
}

/// One batch of [`Store::claim_job_tasks`](Store::claim_job_tasks).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct JobClaim {
    /// The tasks claimed (after), each with its job, in task id order.
    pub claimed: Vec<(TaskRecord, JobRecord)>,
    /// Where the next batch starts (pass it as `after`); `None` once every
    /// pending task of the job has been looked at.
    pub next: Option<Uuid>,
}

/// Filters of `list_jobs`; all optional.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct JobFilter {
    pub status: Option<JobStatus>,
    pub kind: Option<String>,
    /// Jobs with a task on the agent of this name.
    pub agent_name: Option<String>,
    pub since_ms: Option<i64>,
    pub limit: u32,
}

/// `'a', 'b'`: states as SQL literals, for `IN (…)` (literals rather than
/// parameters, so the planner sees them as it does the schema's).
fn sql_states(states: &[TaskState]) -> String {
    sql_literals(states.iter().map(|s| s.as_str()))
}

fn sql_statuses(statuses: &[JobStatus]) -> String {
    sql_literals(statuses.iter().map(|s| s.as_str()))
}

fn sql_literals<'a>(values: impl Iterator<Item = &'a str>) -> String {
    values
        .map(|v| format!("'{v}'"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Job statuses in which pending tasks may still be claimed.
fn open_jobs() -> String {
    sql_statuses(&[JobStatus::Pending, JobStatus::Running])
}

/// Task states an agent is working on.
fn active_states() -> String {
    sql_states(&[TaskState::Assigned, TaskState::Running])
}

fn pending() -> String {
    sql_states(&[TaskState::Pending])
}

impl Store {
    /// In one transaction: inserts the job (status `pending`) and its tasks
    /// (`pending`, attempt 0), appends `start.notes` in order, claims the
    /// tasks whose agent `start.here` accepts (as `claim_pending_tasks`
    /// does; the job becomes `running` if any is claimed) and writes
    /// `start.audit`. With an idempotency key that already exists, changes
    /// nothing and returns the existing job, `created: false`.
    pub async fn start_job(&self, start: &JobStart<'_>) -> Result<StartedJob, StoreError> {
        let mut tx = self.pool.begin_jobs().await?;
        let started = engine::start_job(&mut tx, start).await?;
        tx.commit().await?;
        Ok(started)
    }

    /// [`Store::start_job`] with no events, claims or audit entry: the job
    /// and its `pending` tasks. Returns the job and whether it is new.
    pub async fn create_job(
        &self,
        job: &NewJob,
        tasks: &[NewTask],
    ) -> Result<(JobRecord, bool), StoreError> {
        let started = self
            .start_job(&JobStart {
                job,
                tasks,
                notes: &[],
                here: &|_| false,
                coordinator_id: "",
                audit: None,
                now_ms: job.created_at_ms,
            })
            .await?;
        Ok((started.job, started.created))
    }

    pub async fn get_job(&self, id: Uuid) -> Result<Option<JobRecord>, StoreError> {
        query("SELECT * FROM jobs WHERE id = $1")
            .bind(id)
            .fetch_optional(&self.pool)
            .await?
            .map(|row| job(&row))
            .transpose()
    }

    /// Newest first, at most `filter.limit` (0 means 50).
    pub async fn list_jobs(&self, filter: &JobFilter) -> Result<Vec<JobRecord>, StoreError> {
        query(
            "SELECT * FROM jobs WHERE (CAST($1 AS TEXT) IS NULL OR status = $1) \
             AND (CAST($2 AS TEXT) IS NULL OR kind = $2) \
             AND (CAST($3 AS BIGINT) IS NULL OR created_at_ms >= $3) \
             AND (CAST($4 AS TEXT) IS NULL OR EXISTS (SELECT 1 FROM tasks t \
             WHERE t.job_id = jobs.id AND t.agent_name = $4)) \
             ORDER BY created_at_ms DESC, id DESC LIMIT $5",
        )
        .bind(filter.status.map(|s| s.as_str()))
        .bind(filter.kind.as_deref())
        .bind(filter.since_ms)
        .bind(filter.agent_name.as_deref())
        .bind(job_list_limit(filter.limit))
        .fetch_all(&self.pool)
        .await?
        .iter()
        .map(job)
        .collect()
    }

    async fn fetch_tasks(&self, sql: String, id: Uuid) -> Result<Vec<TaskRecord>, StoreError> {
        query(sql)
            .bind(id)
            .fetch_all(&self.pool)
            .await?
            .iter()
            .map(task)
            .collect()
    }

    /// Ordered by agent name.
    pub async fn list_tasks(&self, job_id: Uuid) -> Result<Vec<TaskRecord>, StoreError> {
        self.fetch_tasks(
            "SELECT * FROM tasks WHERE job_id = $1 ORDER BY agent_name, id".into(),
            job_id,
        )
        .await
    }

    pub async fn get_task(&self, id: Uuid) -> Result<Option<TaskRecord>, StoreError> {
        Ok(self
            .fetch_tasks("SELECT * FROM tasks WHERE id = $1".into(), id)
            .await?
            .pop())
    }

    /// The agent's tasks in state `assigned` or `running`.
    pub async fn active_tasks_for_agent(
        &self,
        agent_id: Uuid,
    ) -> Result<Vec<TaskRecord>, StoreError> {
        self.fetch_tasks(
            format!(
                "SELECT * FROM tasks WHERE state IN ({}) AND agent_id = $1 ORDER BY id",
                active_states()
            ),
            agent_id,
        )
        .await
    }

    /// Appends an event the coordinator writes (e.g. "waiting for agent
    /// web-1"), with the next job seq. `JobNotFound` if the job is unknown.
    pub async fn append_coordinator_event(
        &self,
        job_id: Uuid,
        task_id: Option<Uuid>,
        body: &[u8],
        at_ms: i64,
    ) -> Result<u64, StoreError> {
        self.append_coordinator_events(job_id, &[(task_id, body.to_vec())], at_ms)
            .await
    }

    /// Appends several such events in one transaction, in order; returns
    /// the last one's seq (0 if `events` is empty).
    pub async fn append_coordinator_events(
        &self,
        job_id: Uuid,
        events: &[(Option<Uuid>, Vec<u8>)],
        at_ms: i64,
    ) -> Result<u64, StoreError> {
        let mut tx = self.pool.begin_jobs().await?;
        let seq = engine::append_coordinator_events(&mut tx, job_id, events, at_ms).await?;
        tx.commit().await?;
        Ok(seq)
    }

    /// Claims up to `limit` `pending` tasks of these agents whose job is
    /// not final and whose deadline is after `now_ms`, skipping rows another
    /// coordinator holds locked (`FOR UPDATE SKIP LOCKED`): each becomes
    /// `assigned` (`TaskEvent::Assigned`), attempt + 1, `assigned_by =
    /// coordinator_id`; a `pending` job becomes `running`. Returns each
    /// claimed task (after) with its job.
    pub async fn claim_pending_tasks(
        &self,
        agent_ids: &[Uuid],
        coordinator_id: &str,
        now_ms: i64,
        limit: u32,
    ) -> Result<Vec<(TaskRecord, JobRecord)>, StoreError> {
        if agent_ids.is_empty() || limit == 0 {
            return Ok(Vec::new());
        }
        let backend = self.backend();
        let matching = format!(
            "FROM tasks t JOIN jobs j ON j.id = t.job_id \
             WHERE t.state = {} AND {} AND j.status IN ({}) AND j.deadline_ms > $2",
            pending(),
            in_list(backend, "t.agent_id", 1),
            open_jobs(),
        );
        // Most calls (an agent connecting) find nothing: one statement
        // rather than a transaction, and on SQLite without the one write
        // lock, which every other writer would queue behind.
        if !self
            .exists(
                format!("SELECT EXISTS (SELECT 1 {matching}) AS found"),
                |q| q.bind(agent_ids).bind(now_ms),
            )
            .await?
        {
            return Ok(Vec::new());
        }
        let mut tx = self.pool.begin_jobs().await?;
        let lock = row_lock(backend, " FOR NO KEY UPDATE OF t SKIP LOCKED");
        let tasks = query(format!(
            "SELECT t.* {matching} ORDER BY j.created_at_ms, t.id LIMIT $3{lock}"
        ))
        .bind(agent_ids)
        .bind(now_ms)
        .bind(i64::from(limit))
        .fetch_all(&mut tx)
        .await?
        .iter()
        .map(task)
        .collect::<Result<Vec<_>, _>>()?;
        if tasks.is_empty() {
            return Ok(Vec::new());
        }
        let claimed = engine::claim(&mut tx, tasks, coordinator_id, now_ms).await?;
        tx.commit().await?;
        Ok(claimed)
    }

    /// Whether the one-row, one-column (`found`) query finds something.
    async fn exists(
        &self,
        sql: String,
        bind: impl FnOnce(super::db::Query) -> super::db::Query,
    ) -> Result<bool, StoreError> {
        use super::rows::Columns;
        bind(query(sql)).fetch_one(&self.pool).await?.flag("found")
    }

    /// Claims a job's `pending` tasks for the agents `here` accepts (the
    /// caller's live sessions), a batch at a time, as `claim_pending_tasks`
    /// does, if the job is not final and its deadline is after `now_ms`.
    /// A batch looks at the next `limit` pending tasks of the job in task id
    /// order after `after` (from the start if `None`), without locks, keeps
    /// those whose agent is `here`, locks them by id skipping rows another
    /// coordinator holds (`FOR NO KEY UPDATE SKIP LOCKED`) and checks them
    /// again once locked: a task claimed, cancelled or expired meanwhile is
    /// left out. No list of agents goes to the database, and each pending
    /// task is read once per pass, so a new job reaches every agent
    /// connected here in a few large batches.
    pub async fn claim_job_tasks(
        &self,
        job_id: Uuid,
        after: Option<Uuid>,
        here: &(dyn Fn(Uuid) -> bool + Send + Sync),
        coordinator_id: &str,
        now_ms: i64,
        limit: u32,
    ) -> Result<JobClaim, StoreError> {
        if limit == 0 {
            return Ok(JobClaim::default());
        }
        let backend = self.backend();
        // A look without locks (and on SQLite without the write lock, which
        // every other writer would queue behind): which of the job's tasks
        // are for agents connected here is known in memory, not in the
        // database.
        let candidates = query(format!(
            "SELECT t.id, t.agent_id FROM tasks t JOIN jobs j ON j.id = t.job_id \
             WHERE t.job_id = $1 AND t.state = {} AND t.id > $2 \
             AND j.status IN ({}) AND j.deadline_ms > $3 ORDER BY t.id LIMIT $4",
            pending(),
            open_jobs(),
        ))
        .bind(job_id)
        .bind(after.map(|id| id.to_string()).unwrap_or_default())
        .bind(now_ms)
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await?
        .iter()
        .map(task_and_agent)
        .collect::<Result<Vec<_>, _>>()?;
        let (ids, next) = engine::tasks_here(&candidates, here, limit);
        if ids.is_empty() {
            return Ok(JobClaim {
                claimed: Vec::new(),
                next,
            });
        }
        let mut tx = self.pool.begin_jobs().await?;
        // Read again in the transaction, locked in id order: a row claimed,
        // cancelled or expired since the look no longer matches, and one
        // another transaction holds is skipped.
        let tasks = query(format!(
            "SELECT t.* FROM tasks t JOIN jobs j ON j.id = t.job_id \
             WHERE {} AND t.job_id = $2 AND t.state = {} \
             AND j.status IN ({}) AND j.deadline_ms > $3 ORDER BY t.id{}",
            in_list(backend, "t.id", 1),
            pending(),
            open_jobs(),
            row_lock(backend, " FOR NO KEY UPDATE OF t SKIP LOCKED"),
        ))
        .bind(ids.as_slice())
        .bind(job_id)
        .bind(now_ms)
        .fetch_all(&mut tx)
        .await?
        .iter()
        .map(task)
        .collect::<Result<Vec<_>, _>>()?;
        if tasks.is_empty() {
            return Ok(JobClaim {
                claimed: Vec::new(),
                next,
            });
        }
        let claimed = engine::claim(&mut tx, tasks, coordinator_id, now_ms).await?;
        tx.commit().await?;
        Ok(JobClaim { claimed, next })
    }

    /// The jobs (distinct, in id order) that have a `pending` task claimable
    /// at `now_ms` (job not final, deadline after `now_ms`) whose agent's
    /// session is recorded on `coordinator_id` (`agent_connected`, not yet
    /// `agent_disconnected`). One indexed query that finds nothing in the
    /// steady state: the scheduler asks it on every tick, to catch work a
    /// missed notification or a failed send left behind.
    pub async fn jobs_pending_on(
        &self,
        coordinator_id: &str,
        now_ms: i64,
    ) -> Result<Vec<Uuid>, StoreError> {
        query(format!(
            "SELECT DISTINCT t.job_id FROM tasks t JOIN agents a ON a.id = t.agent_id \
             JOIN jobs j ON j.id = t.job_id \
             WHERE t.state = {} AND a.connected_to = $1 \
             AND j.status IN ({}) AND j.deadline_ms > $2 ORDER BY t.job_id",
            pending(),
            open_jobs(),
        ))
        .bind(coordinator_id)
        .bind(now_ms)
        .fetch_all(&self.pool)
        .await?
        .iter()
        .map(task_job_id)
        .collect()
    }

    /// Applies `event` to the task, with `message` as the task's new
    /// message when its state changes. `Ok(None)` if the task is unknown or
    /// the transition is invalid (nothing written).
    pub async fn transition_task(
        &self,
        task_id: Uuid,
        event: TaskEvent,
        message: &str,
        now_ms: i64,
    ) -> Result<Option<Transition>, StoreError> {
        let mut tx = self.pool.begin_jobs().await?;
        let transition = engine::transition(&mut tx, task_id, event, message, now_ms).await?;
        tx.commit().await?;
        Ok(transition)
    }

    /// Stores agents' events, in one transaction for the whole batch. Per
    /// task: events with `seq <= last_seq` are duplicates and skipped;
    /// events continuing `last_seq + 1, + 2, …` are stored, each with the
    /// next job seq, and applied (`machine_event`; `message` and
    /// `result_json` when given; `started_at_ms` on the first); the first
    /// gap drops the rest of that task's events (the agent sends them
    /// again). Events of unknown tasks are ignored. Must sustain tens of
    /// thousands of events per second: multi-row inserts, one job-seq
    /// update per job per batch.
    pub async fn append_agent_events(
        &self,
        events: &[IncomingEvent],
        now_ms: i64,
    ) -> Result<AppendOutcome, StoreError> {
        if events.is_empty() {
            return Ok(AppendOutcome::default());
        }
        let mut tx = self.pool.begin_jobs().await?;
        let outcome = engine::append_agent_events(&mut tx, events, now_ms).await?;
        // A backup is catalogued with its task's success, never without it;
        // a verification is recorded with its task's end; a migrate task's
        // end (also a cancelled one) releases its claim and catalogues the
        // pre-migration backups it reports.
        for t in &outcome.transitions {
            let succeeded = t.task.state == TaskState::Succeeded;
            let cancelled = t.task.state == TaskState::Cancelled;
            if succeeded || cancelled || t.task.state == TaskState::Failed {
                let finished = super::backups::Finished {
                    task_id: t.task.id,
                    job_id: t.task.job_id,
                    host: &t.task.agent_name,
                    succeeded,
                    cancelled,
                    message: &t.task.message,
                    result_json: t.task.result_json.as_deref(),
                };
                super::backups::on_task_finished(&mut tx, finished, now_ms).await?;
            }
        }
        tx.commit().await?;
        Ok(outcome)
    }

    /// Job events with `seq > after_seq`, in order, at most `limit`.
    pub async fn job_events_after(
        &self,
        job_id: Uuid,
        after_seq: u64,
        limit: u32,
    ) -> Result<Vec<JobEventRecord>, StoreError> {
        query(
            "SELECT e.job_id, e.seq, e.at_ms, e.task_id, e.task_seq, e.body, t.agent_name \
             FROM job_events e LEFT JOIN tasks t ON t.id = e.task_id \
             WHERE e.job_id = $1 AND e.seq > $2 ORDER BY e.seq LIMIT $3",
        )
        .bind(job_id)
        .bind(sql_int(after_seq))
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await?
        .iter()
        .map(job_event)
        .collect()
    }

    /// Sets `cancel_requested` and applies `TaskEvent::CancelRequested` to
    /// every task that is not final, `lost` ones included (they become
    /// `cancelled`). A job already final is left as it is (`apply_job`
    /// gives no `CancelTasks`). `JobNotFound` if unknown. Returns the job
    /// after and the transitions that changed a state or carry an effect
    /// (those with `SendCancel` must reach their agents).
    pub async fn request_cancel(
        &self,
        job_id: Uuid,
        now_ms: i64,
    ) -> Result<(JobRecord, Vec<Transition>), StoreError> {
        let mut tx = self.pool.begin_jobs().await?;
        let not_final = sql_states(&[
            TaskState::Pending,
            TaskState::Assigned,
            TaskState::Running,
            TaskState::Lost,
        ]);
        let tasks = query(format!(
            "SELECT * FROM tasks WHERE job_id = $1 AND state IN ({not_final}) ORDER BY id{}",
            row_lock(tx.backend(), " FOR NO KEY UPDATE"),
        ))
        .bind(job_id)
        .fetch_all(&mut tx)
        .await?
        .iter()
        .map(task)
        .collect::<Result<Vec<_>, _>>()?;
        let cancelled = engine::request_cancel(&mut tx, job_id, tasks, now_ms).await?;
        tx.commit().await?;
        Ok(cancelled)
    }

    /// `TaskEvent::DeadlinePassed` for every `pending` task whose job's
    /// deadline is at or before `now_ms`.
    pub async fn expire_overdue_tasks(&self, now_ms: i64) -> Result<Vec<Transition>, StoreError> {
        let matching = format!(
            "FROM tasks t JOIN jobs j ON j.id = t.job_id \
             WHERE t.state = {} AND j.deadline_ms <= $1",
            pending()
        );
        let Some((mut tx, tasks)) = self.lock_swept(&matching, "t.*", now_ms, task).await? else {
            return Ok(Vec::new());
        };
        let transitions = engine::expire(&mut tx, tasks, now_ms).await?;
        tx.commit().await?;
        Ok(transitions)
    }

    /// `TaskEvent::AgentGone` for every `assigned`/`running` task whose
    /// agent's `last_seen_ms` is before `seen_before_ms`, with the message
    /// "agent NAME has been away since …".
    pub async fn mark_tasks_of_absent_agents_lost(
        &self,
        seen_before_ms: i64,
        now_ms: i64,
    ) -> Result<Vec<Transition>, StoreError> {
        let matching = format!(
            "FROM tasks t JOIN agents a ON a.id = t.agent_id \
             WHERE t.state IN ({}) AND a.last_seen_ms < $1",
            active_states()
        );
        let columns = "t.*, a.last_seen_ms AS agent_last_seen_ms";
        let swept = self
            .lock_swept(&matching, columns, seen_before_ms, task_with_last_seen)
            .await?;
        let Some((mut tx, tasks)) = swept else {
            return Ok(Vec::new());
        };
        let transitions = engine::mark_lost(&mut tx, tasks, now_ms).await?;
        tx.commit().await?;
        Ok(transitions)
    }

    /// For the leader's sweeps: the rows (`columns`) of the tasks that
    /// `matching` (a `FROM … WHERE …` with `$1` = `bound`) selects, locked
    /// in a job transaction, in id order; `None` when there are none.
    /// Sweeps run on every tick and almost always find nothing, so on
    /// SQLite they look first without the write lock, which submits and
    /// claims would wait for; PostgreSQL locks rows, not the store: there
    /// it goes straight to the locking read.
    async fn lock_swept<T>(
        &self,
        matching: &str,
        columns: &str,
        bound: i64,
        decode: impl Fn(&Row) -> Result<T, StoreError>,
    ) -> Result<Option<(Tx, Vec<T>)>, StoreError> {
        if self.backend() == Backend::Sqlite
            && !self
                .exists(
                    format!("SELECT EXISTS (SELECT 1 {matching}) AS found"),
                    |q| q.bind(bound),
                )
                .await?
        {
            return Ok(None);
        }
        let mut tx = self.pool.begin_jobs().await?;
        let tasks = query(format!(
            "SELECT {columns} {matching} ORDER BY t.id{}",
            row_lock(tx.backend(), " FOR NO KEY UPDATE OF t")
        ))
        .bind(bound)
        .fetch_all(&mut tx)
        .await?
        .iter()
        .map(decode)
        .collect::<Result<Vec<_>, _>>()?;
        Ok((!tasks.is_empty()).then_some((tx, tasks)))
    }
}

/// The statements of [`super::engine`], run in the caller's transaction.
#[async_trait]
impl JobTx for Tx {
    async fn lock_tasks(&mut self, ids: &[Uuid]) -> Result<Vec<TaskRecord>, StoreError> {
        let backend = self.backend();
        query(format!(
            "SELECT * FROM tasks WHERE {} ORDER BY id{}",
            in_list(backend, "id", 1),
            row_lock(backend, " FOR NO KEY UPDATE"),
        ))
        .bind(ids)
        .fetch_all(self)
        .await?
        .iter()
        .map(task)
        .collect()
    }

    async fn lock_jobs(&mut self, ids: &[Uuid]) -> Result<Vec<JobRecord>, StoreError> {
        let backend = self.backend();
        query(format!(
            "SELECT * FROM jobs WHERE {} ORDER BY id{}",
            in_list(backend, "id", 1),
            row_lock(backend, " FOR NO KEY UPDATE"),
        ))
        .bind(ids)
        .fetch_all(self)
        .await?
        .iter()
        .map(job)
        .collect()
    }

    async fn count_task_states(
        &mut self,
        job_id: Uuid,
    ) -> Result<Vec<(TaskState, u64)>, StoreError> {
        query("SELECT state, count(*) AS n FROM tasks WHERE job_id = $1 GROUP BY state")
            .bind(job_id)
            .fetch_all(self)
            .await?
            .iter()
            .map(state_count)
            .collect()
    }

    async fn insert_events(&mut self, events: &[NewEvent]) -> Result<(), StoreError> {
        let rows = events
            .iter()
            .map(|e| {
                vec![
                    Arg::from(e.job_id),
                    Arg::from(sql_int(e.seq)),
                    Arg::from(e.at_ms),
                    Arg::from(e.task_id),
                    Arg::from(e.task_seq.map(sql_int)),
                    Arg::from(e.body.as_slice()),
                ]
            })
            .collect();
        self.bulk(
            "u",
            &[
                ("job_id", Ty::Text),
                ("seq", Ty::Int),
                ("at_ms", Ty::Int),
                ("task_id", Ty::Text),
                ("task_seq", Ty::Int),
                ("body", Ty::Bytes),
            ],
            rows,
            "INSERT INTO job_events (job_id, seq, at_ms, task_id, task_seq, body) SELECT * FROM u",
        )
        .await
    }

    async fn update_tasks(&mut self, tasks: &[&TaskRecord]) -> Result<(), StoreError> {
        let rows = tasks
            .iter()
            .map(|t| {
                vec![
                    Arg::from(t.id),
                    Arg::from(t.state.as_str()),
                    Arg::from(i64::from(t.attempt)),
                    Arg::from(sql_int(t.last_seq)),
                    Arg::from(t.assigned_by.as_deref()),
                    Arg::from(t.started_at_ms),
                    Arg::from(t.finished_at_ms),
                    Arg::from(t.message.as_str()),
                    Arg::from(t.result_json.as_deref()),
                    Arg::from(t.updated_at_ms),
                ]
            })
            .collect();
        self.bulk(
            "u",
            &[
                ("id", Ty::Text),
                ("state", Ty::Text),
                ("attempt", Ty::Int),
                ("last_seq", Ty::Int),
                ("assigned_by", Ty::Text),
                ("started_at_ms", Ty::Int),
                ("finished_at_ms", Ty::Int),
                ("message", Ty::Text),
                ("result_json", Ty::Text),
                ("updated_at_ms", Ty::Int),
            ],
            rows,
            "UPDATE tasks SET state = u.state, attempt = u.attempt, last_seq = u.last_seq, \
             assigned_by = u.assigned_by, started_at_ms = u.started_at_ms, \
             finished_at_ms = u.finished_at_ms, message = u.message, result_json = u.result_json, \
             updated_at_ms = u.updated_at_ms FROM u WHERE tasks.id = u.id",
        )
        .await
    }

    async fn update_jobs(&mut self, jobs: &[&JobRecord]) -> Result<(), StoreError> {
        let rows = jobs
            .iter()
            .map(|j| {
                vec![
                    Arg::from(j.id),
                    Arg::from(j.status.as_str()),
                    Arg::from(j.updated_at_ms),
                    Arg::from(j.finished_at_ms),
                    Arg::from(j.cancel_requested),
                    Arg::from(sql_int(j.last_seq)),
                ]
            })
            .collect();
        self.bulk(
            "u",
            &[
                ("id", Ty::Text),
                ("status", Ty::Text),
                ("updated_at_ms", Ty::Int),
                ("finished_at_ms", Ty::Int),
                ("cancel_requested", Ty::Bool),
                ("last_seq", Ty::Int),
            ],
            rows,
            "UPDATE jobs SET status = u.status, updated_at_ms = u.updated_at_ms, \
             finished_at_ms = u.finished_at_ms, cancel_requested = u.cancel_requested, \
             last_seq = u.last_seq FROM u WHERE jobs.id = u.id",
        )
        .await
    }

    async fn insert_job(
        &mut self,
        record: &JobRecord,
        tasks: &[NewTask],
    ) -> Result<Option<JobRecord>, StoreError> {
        // On PostgreSQL a concurrent insert of the same key waits for the
        // first to commit, then does nothing.
        let inserted = query(
            "INSERT INTO jobs (id, kind, spec_json, target_json, status, created_by, \
             idempotency_key, created_at_ms, updated_at_ms, deadline_ms, traceparent) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11) \
             ON CONFLICT (idempotency_key) WHERE idempotency_key IS NOT NULL DO NOTHING",
        )
        .bind(record.id)
        .bind(&record.kind)
        .bind(&record.spec_json)
        .bind(&record.target_json)
        .bind(record.status.as_str())
        .bind(&record.created_by)
        .bind(&record.idempotency_key)
        .bind(record.created_at_ms)
        .bind(record.updated_at_ms)
        .bind(record.deadline_ms)
        .bind(&record.traceparent)
        .execute(&mut *self)
        .await?
            == 1;
        if !inserted {
            let existing = query("SELECT * FROM jobs WHERE idempotency_key = $1")
                .bind(&record.idempotency_key)
                .fetch_one(&mut *self)
                .await?;
            return Ok(Some(job(&existing)?));
        }
        let rows = tasks
            .iter()
            .map(|t| {
                vec![
                    Arg::from(t.id),
                    Arg::from(record.id),
                    Arg::from(t.agent_id),
                    Arg::from(t.agent_name.as_str()),
                    Arg::from(TaskState::Pending.as_str()),
                    Arg::from(record.created_at_ms),
                ]
            })
            .collect();
        self.bulk(
            "u",
            &[
                ("id", Ty::Text),
                ("job_id", Ty::Text),
                ("agent_id", Ty::Text),
                ("agent_name", Ty::Text),
                ("state", Ty::Text),
                ("updated_at_ms", Ty::Int),
            ],
            rows,
            "INSERT INTO tasks (id, job_id, agent_id, agent_name, state, updated_at_ms) \
             SELECT * FROM u",
        )
        .await?;
        Ok(None)
    }

    async fn insert_audit(&mut self, entry: &AuditEntry) -> Result<(), StoreError> {
        audit::insert(self, entry).await
    }
}

// --- decoding -----------------------------------------------------------

pub(crate) fn job(row: &impl Columns) -> Result<JobRecord, StoreError> {
    const TABLE: &str = "jobs";
    Ok(JobRecord {
        id: uuid(TABLE, "id", &row.text("id")?)?,
        kind: row.text("kind")?,
        spec_json: row.text("spec_json")?,
        target_json: row.text("target_json")?,
        status: parsed::<JobStatus>(TABLE, "status", &row.text("status")?)?,
        created_by: row.text("created_by")?,
        idempotency_key: row.opt_text("idempotency_key")?,
        created_at_ms: row.int("created_at_ms")?,
        updated_at_ms: row.int("updated_at_ms")?,
        finished_at_ms: row.opt_int("finished_at_ms")?,
        deadline_ms: row.int("deadline_ms")?,
        cancel_requested: row.flag("cancel_requested")?,
        last_seq: unsigned(TABLE, "last_seq", row.int("last_seq")?)?,
        traceparent: row.text("traceparent")?,
    })
}

pub(crate) fn task(row: &impl Columns) -> Result<TaskRecord, StoreError> {
    const TABLE: &str = "tasks";
    Ok(TaskRecord {
        id: uuid(TABLE, "id", &row.text("id")?)?,
        job_id: uuid(TABLE, "job_id", &row.text("job_id")?)?,
        agent_id: uuid(TABLE, "agent_id", &row.text("agent_id")?)?,
        agent_name: row.text("agent_name")?,
        state: parsed::<TaskState>(TABLE, "state", &row.text("state")?)?,
        attempt: unsigned(TABLE, "attempt", row.int("attempt")?)?,
        last_seq: unsigned(TABLE, "last_seq", row.int("last_seq")?)?,
        assigned_by: row.opt_text("assigned_by")?,
        started_at_ms: row.opt_int("started_at_ms")?,
        finished_at_ms: row.opt_int("finished_at_ms")?,
        message: row.text("message")?,
        result_json: row.opt_text("result_json")?,
        updated_at_ms: row.int("updated_at_ms")?,
    })
}

/// A task row with its agent's `last_seen_ms` as `agent_last_seen_ms`.
pub(crate) fn task_with_last_seen(row: &impl Columns) -> Result<(TaskRecord, i64), StoreError> {
    Ok((task(row)?, row.int("agent_last_seen_ms")?))
}

/// A `job_events` row joined with its task's `agent_name` (NULL for
/// job-level events).
/// A task's `id` and `agent_id`: what a claim looks at before it locks.
pub(crate) fn task_and_agent(row: &impl Columns) -> Result<(Uuid, Uuid), StoreError> {
    Ok((
        uuid("tasks", "id", &row.text("id")?)?,
        uuid("tasks", "agent_id", &row.text("agent_id")?)?,
    ))
}

pub(crate) fn task_job_id(row: &impl Columns) -> Result<Uuid, StoreError> {
    uuid("tasks", "job_id", &row.text("job_id")?)
}

pub(crate) fn job_event(row: &impl Columns) -> Result<JobEventRecord, StoreError> {
    const TABLE: &str = "job_events";
    Ok(JobEventRecord {
        job_id: uuid(TABLE, "job_id", &row.text("job_id")?)?,
        seq: unsigned(TABLE, "seq", row.int("seq")?)?,
        at_ms: row.int("at_ms")?,
        task_id: opt_uuid(TABLE, "task_id", row.opt_text("task_id")?)?,
        agent_name: row.opt_text("agent_name")?,
        task_seq: row
            .opt_int("task_seq")?
            .map(|seq| unsigned(TABLE, "task_seq", seq))
            .transpose()?,
        body: row.bytes("body")?,
    })
}

/// One `(state, count)` row of a job's tasks grouped by state.
pub(crate) fn state_count(row: &impl Columns) -> Result<(TaskState, u64), StoreError> {
    const TABLE: &str = "tasks";
    Ok((
        parsed::<TaskState>(TABLE, "state", &row.text("state")?)?,
        unsigned(TABLE, "count", row.int("n")?)?,
    ))
}

/// The record `create_job` inserted.
pub(crate) fn created_job(job: &NewJob) -> JobRecord {
    JobRecord {
        id: job.id,
        kind: job.kind.clone(),
        spec_json: job.spec_json.clone(),
        target_json: job.target_json.clone(),
        status: JobStatus::Pending,
        created_by: job.created_by.clone(),
        idempotency_key: job.idempotency_key.clone(),
        created_at_ms: job.created_at_ms,
        updated_at_ms: job.created_at_ms,
        finished_at_ms: None,
        deadline_ms: job.deadline_ms,
        cancel_requested: false,
        last_seq: 0,
        traceparent: job.traceparent.clone(),
    }
}

/// The record of a task as `start_job` inserts it.
pub(crate) fn created_task(job: &JobRecord, task: &NewTask) -> TaskRecord {
    TaskRecord {
        id: task.id,
        job_id: job.id,
        agent_id: task.agent_id,
        agent_name: task.agent_name.clone(),
        state: TaskState::Pending,
        attempt: 0,
        last_seq: 0,
        assigned_by: None,
        started_at_ms: None,
        finished_at_ms: None,
        message: String::new(),
        result_json: None,
        updated_at_ms: job.created_at_ms,
    }
}

/// `JobFilter::limit`, where 0 means the default.
pub(crate) fn job_list_limit(limit: u32) -> i64 {
    if limit == 0 { 50 } else { i64::from(limit) }
}
