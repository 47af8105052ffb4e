//! The job logic of [`Store`](crate::store::Store), written once: a job method in
//! [`super`] (the jobs module) selects (and on PostgreSQL locks) the task rows it is
//! about, then hands them to a function here, which locks their jobs, runs
//! the state machines of [`crate::job`], allocates job event seqs and writes
//! the result back through [`JobTx`] (implemented once, over
//! `db::Tx`).
//!
//! Ordering rules:
//!
//! - Within a transaction, task rows are locked first (in one statement, in
//!   id order, or skipping locked rows rather than waiting for them), then
//!   their jobs (in one statement, in id order), and no lock is taken after
//!   that. Two transactions therefore never wait on each other in a cycle
//!   on PostgreSQL. (SQLite has one writer at a time.)
//! - A job's event seqs are handed out from `jobs.last_seq` while its row is
//!   locked, and the new `last_seq` is written once per job per transaction;
//!   the lock is held until commit, so a job's events commit in seq order.
//! - A task's state change appends `TaskStateChanged` right after the event
//!   that caused it; if that change finishes the job, `JobFinished` follows.
//! - Whether every task of a job is final is counted after the job's row is
//!   locked, in a statement of its own (PostgreSQL: at `READ COMMITTED`, each
//!   statement sees what committed before it), so of two transactions
//!   finishing a job's last two tasks, the one that locks the job second
//!   sees the other's change.

use std::collections::{BTreeMap, HashMap, HashSet};

use async_trait::async_trait;
use ferry_common::time::rfc3339_ms;
use ferry_proto::v1::{EventBody, JobFinished, TaskStateChanged, event_body};
use prost::Message;
use uuid::Uuid;

use super::{
    AppendOutcome, IncomingEvent, JobRecord, JobStart, NewTask, StartedJob, TaskRecord, Transition,
};
use crate::job::{
    self, JobEffect, JobEvent, JobStatus, TaskEffect, TaskEvent, TaskState, apply_job, apply_task,
};
use crate::store::{AuditEntry, StoreError};

/// A job event about to be inserted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct NewEvent {
    pub job_id: Uuid,
    pub seq: u64,
    pub at_ms: i64,
    pub task_id: Option<Uuid>,
    /// The agent's seq; `None` for events the coordinator writes.
    pub task_seq: Option<u64>,
    pub body: Vec<u8>,
}

/// The statements the functions of this module need, run inside the
/// caller's transaction.
#[async_trait]
pub(crate) trait JobTx: Send {
    /// The tasks with these ids (unknown ones left out), locked until the
    /// transaction ends, in id order.
    async fn lock_tasks(&mut self, ids: &[Uuid]) -> Result<Vec<TaskRecord>, StoreError>;
    /// The jobs with these ids (sorted, distinct), locked until the
    /// transaction ends, in id order.
    async fn lock_jobs(&mut self, ids: &[Uuid]) -> Result<Vec<JobRecord>, StoreError>;
    /// How many of the job's tasks are in each state, as stored.
    async fn count_task_states(
        &mut self,
        job_id: Uuid,
    ) -> Result<Vec<(TaskState, u64)>, StoreError>;
    /// Inserts the events, several per statement.
    async fn insert_events(&mut self, events: &[NewEvent]) -> Result<(), StoreError>;
    /// Writes the columns of these tasks that change after creation.
    async fn update_tasks(&mut self, tasks: &[&TaskRecord]) -> Result<(), StoreError>;
    /// Writes the columns of these jobs that change after creation.
    async fn update_jobs(&mut self, jobs: &[&JobRecord]) -> Result<(), StoreError>;
    /// Inserts `job` and its `tasks` (`pending`, attempt 0). If the job's
    /// idempotency key is taken, inserts nothing and returns that job.
    async fn insert_job(
        &mut self,
        job: &JobRecord,
        tasks: &[NewTask],
    ) -> Result<Option<JobRecord>, StoreError>;
    async fn insert_audit(&mut self, entry: &AuditEntry) -> Result<(), StoreError>;
}

/// Body of the event appended on every task state change.
pub(crate) fn task_state_changed_body(state: TaskState, message: &str) -> Vec<u8> {
    EventBody {
        body: Some(event_body::Body::TaskStateChanged(TaskStateChanged {
            state: state.as_str().into(),
            message: message.into(),
        })),
    }
    .encode_to_vec()
}

/// Body of the event appended when a job reaches a final status.
pub(crate) fn job_finished_body(status: JobStatus, message: &str) -> Vec<u8> {
    EventBody {
        body: Some(event_body::Body::JobFinished(JobFinished {
            status: status.as_str().into(),
            message: message.into(),
        })),
    }
    .encode_to_vec()
}

/// "2 succeeded, 1 failed": the final states of a finished job's tasks.
fn summary(counts: &HashMap<TaskState, u64>) -> String {
    let parts: Vec<String> = [
        TaskState::Succeeded,
        TaskState::Failed,
        TaskState::Cancelled,
        TaskState::Lost,
        TaskState::Expired,
    ]
    .into_iter()
    .filter_map(|state| match counts.get(&state) {
        Some(&n) if n > 0 => Some(format!("{n} {state}")),
        _ => None,
    })
    .collect();
    if parts.is_empty() {
        "no tasks".into()
    } else {
        parts.join(", ")
    }
}

struct JobEntry {
    record: JobRecord,
    dirty: bool,
    /// Task counts by state as stored, loaded when first needed.
    stored_counts: Option<HashMap<TaskState, u64>>,
    /// How this transaction's changes moved the job's tasks between states,
    /// kept as they happen: recounting the unit's tasks on every change
    /// made a claim of n tasks O(n²).
    state_delta: HashMap<TaskState, i64>,
}

struct TaskEntry {
    record: TaskRecord,
    dirty: bool,
}

/// The locked tasks and jobs of one transaction, changed in memory and
/// written back by [`Work::flush`].
struct Work {
    now_ms: i64,
    jobs: BTreeMap<Uuid, JobEntry>,
    tasks: BTreeMap<Uuid, TaskEntry>,
    events: Vec<NewEvent>,
}

impl Work {
    /// Takes `tasks` (already locked by the caller) and locks their jobs
    /// and `more_jobs`; jobs that do not exist are left out.
    async fn begin<T: JobTx + ?Sized>(
        tx: &mut T,
        tasks: Vec<TaskRecord>,
        more_jobs: &[Uuid],
        now_ms: i64,
    ) -> Result<Self, StoreError> {
        let mut job_ids: Vec<Uuid> = tasks
            .iter()
            .map(|t| t.job_id)
            .chain(more_jobs.iter().copied())
            .collect();
        job_ids.sort_unstable();
        job_ids.dedup();
        let jobs = if job_ids.is_empty() {
            Vec::new()
        } else {
            tx.lock_jobs(&job_ids).await?
        };
        Ok(Self::of(
            jobs.into_iter().map(|job| (job, None)).collect(),
            tasks,
            now_ms,
        ))
    }

    /// A job and its tasks inserted by this transaction, as inserted: no
    /// other transaction can see them yet, so nothing is read back or
    /// locked, and the stored counts are known (every task `pending`).
    fn fresh(job: JobRecord, tasks: Vec<TaskRecord>, now_ms: i64) -> Self {
        let counts = HashMap::from([(TaskState::Pending, tasks.len() as u64)]);
        Self::of(vec![(job, Some(counts))], tasks, now_ms)
    }

    /// Jobs (each with its stored task counts, if known) and tasks, as read.
    fn of(
        jobs: Vec<(JobRecord, Option<HashMap<TaskState, u64>>)>,
        tasks: Vec<TaskRecord>,
        now_ms: i64,
    ) -> Self {
        Self {
            now_ms,
            jobs: jobs
                .into_iter()
                .map(|(record, stored_counts)| {
                    let entry = JobEntry {
                        record,
                        dirty: false,
                        stored_counts,
                        state_delta: HashMap::new(),
                    };
                    (entry.record.id, entry)
                })
                .collect(),
            tasks: tasks
                .into_iter()
                .map(|record| {
                    let entry = TaskEntry {
                        record,
                        dirty: false,
                    };
                    (entry.record.id, entry)
                })
                .collect(),
            events: Vec::new(),
        }
    }

    fn task(&self, id: Uuid) -> Option<&TaskRecord> {
        self.tasks.get(&id).map(|t| &t.record)
    }

    fn job(&self, id: Uuid) -> Option<&JobRecord> {
        self.jobs.get(&id).map(|j| &j.record)
    }

    fn job_mut(&mut self, id: Uuid) -> Result<&mut JobRecord, StoreError> {
        let now_ms = self.now_ms;
        let entry = self.jobs.get_mut(&id).ok_or(StoreError::JobNotFound(id))?;
        entry.dirty = true;
        entry.record.updated_at_ms = entry.record.updated_at_ms.max(now_ms);
        Ok(&mut entry.record)
    }

    /// Appends an event with the job's next seq.
    fn push_event(
        &mut self,
        job_id: Uuid,
        task_id: Option<Uuid>,
        task_seq: Option<u64>,
        at_ms: i64,
        body: Vec<u8>,
    ) -> Result<u64, StoreError> {
        let job = self.job_mut(job_id)?;
        job.last_seq += 1;
        let seq = job.last_seq;
        self.events.push(NewEvent {
            job_id,
            seq,
            at_ms,
            task_id,
            task_seq,
            body,
        });
        Ok(seq)
    }

    /// The job's tasks by state, this transaction's changes included.
    async fn counts<T: JobTx + ?Sized>(
        &mut self,
        tx: &mut T,
        job_id: Uuid,
    ) -> Result<HashMap<TaskState, u64>, StoreError> {
        let entry = self
            .jobs
            .get_mut(&job_id)
            .ok_or(StoreError::JobNotFound(job_id))?;
        if entry.stored_counts.is_none() {
            let counts: HashMap<TaskState, u64> =
                tx.count_task_states(job_id).await?.into_iter().collect();
            entry.stored_counts = Some(counts);
        }
        let mut counts = entry.stored_counts.clone().unwrap_or_default();
        for (state, delta) in &entry.state_delta {
            let n = counts.entry(*state).or_default();
            *n = n.saturating_add_signed(*delta);
        }
        counts.retain(|_, n| *n > 0);
        Ok(counts)
    }

    /// Applies `event` to a task of this unit. If its state changes: runs
    /// `edit` on it, sets `message` (when given) and appends
    /// `TaskStateChanged`; then recomputes the job if the machine asks.
    /// `None` if the task is not in this unit or the transition is invalid
    /// (nothing changes).
    async fn apply<T: JobTx + ?Sized>(
        &mut self,
        tx: &mut T,
        task_id: Uuid,
        event: TaskEvent,
        message: Option<&str>,
        edit: impl FnOnce(&mut TaskRecord) + Send,
    ) -> Result<Option<Transition>, StoreError> {
        let now_ms = self.now_ms;
        let Some(entry) = self.tasks.get_mut(&task_id) else {
            return Ok(None);
        };
        let from = entry.record.state;
        let Ok((to, effects)) = apply_task(from, event) else {
            return Ok(None);
        };
        let task = &mut entry.record;
        let job_id = task.job_id;
        if to != from {
            edit(task);
            task.state = to;
            if let Some(job) = self.jobs.get_mut(&job_id) {
                *job.state_delta.entry(from).or_default() -= 1;
                *job.state_delta.entry(to).or_default() += 1;
            }
            if let Some(message) = message {
                task.message = message.into();
            }
            task.finished_at_ms = to.is_final().then_some(now_ms);
            task.updated_at_ms = now_ms;
            entry.dirty = true;
            let body = task_state_changed_body(to, &task.message);
            self.push_event(job_id, Some(task_id), None, now_ms, body)?;
        }
        let job_finished = if effects.contains(&TaskEffect::RecomputeJob) {
            self.recompute_job(tx, job_id, to).await?
        } else {
            None
        };
        Ok(Some(Transition {
            task: self.tasks[&task_id].record.clone(),
            from,
            effects,
            job_finished,
        }))
    }

    /// After a task of the job moved to `task_state`: finishes the job if
    /// every task is final (appending `JobFinished`, and returning the
    /// status), or wakes it up if the task is now with its agent.
    async fn recompute_job<T: JobTx + ?Sized>(
        &mut self,
        tx: &mut T,
        job_id: Uuid,
        task_state: TaskState,
    ) -> Result<Option<JobStatus>, StoreError> {
        let counts = self.counts(tx, job_id).await?;
        let total: u64 = counts.values().sum();
        let finished: u64 = counts
            .iter()
            .filter(|(state, _)| state.is_final())
            .map(|(_, n)| n)
            .sum();
        let now_ms = self.now_ms;
        let current = self.job(job_id).ok_or(StoreError::JobNotFound(job_id))?;
        let (status, cancel_requested) = (current.status, current.cancel_requested);
        if finished == total {
            let all_succeeded = counts.get(&TaskState::Succeeded).copied().unwrap_or(0) == total;
            let finishes = apply_job(status, JobEvent::AllTasksDone { all_succeeded }).is_ok_and(
                |(_, effects)| effects.iter().any(|e| matches!(e, JobEffect::Finished(_))),
            );
            if !finishes {
                return Ok(None);
            }
            // Same as the machine's outcome, unless an operator cancelled.
            let to = job::final_status(cancel_requested, all_succeeded);
            let job = self.job_mut(job_id)?;
            job.status = to;
            job.finished_at_ms = Some(now_ms);
            self.push_event(
                job_id,
                None,
                None,
                now_ms,
                job_finished_body(to, &summary(&counts)),
            )?;
            return Ok(Some(to));
        }
        if task_state.is_with_agent() {
            match apply_job(status, JobEvent::TaskActive) {
                Ok((to, _)) if to != status => {
                    let job = self.job_mut(job_id)?;
                    job.status = to;
                    job.finished_at_ms = None;
                }
                _ => {}
            }
        }
        Ok(None)
    }

    /// Writes every change: events, then tasks, then jobs.
    async fn flush<T: JobTx + ?Sized>(&mut self, tx: &mut T) -> Result<(), StoreError> {
        if !self.events.is_empty() {
            tx.insert_events(&self.events).await?;
            self.events.clear();
        }
        let tasks: Vec<&TaskRecord> = self
            .tasks
            .values()
            .filter(|t| t.dirty)
            .map(|t| &t.record)
            .collect();
        if !tasks.is_empty() {
            tx.update_tasks(&tasks).await?;
        }
        let jobs: Vec<&JobRecord> = self
            .jobs
            .values()
            .filter(|j| j.dirty)
            .map(|j| &j.record)
            .collect();
        if !jobs.is_empty() {
            tx.update_jobs(&jobs).await?;
        }
        for task in self.tasks.values_mut() {
            task.dirty = false;
        }
        for job in self.jobs.values_mut() {
            job.dirty = false;
        }
        Ok(())
    }
}

/// `append_coordinator_events`.
pub(crate) async fn append_coordinator_events<T: JobTx + ?Sized>(
    tx: &mut T,
    job_id: Uuid,
    events: &[(Option<Uuid>, Vec<u8>)],
    at_ms: i64,
) -> Result<u64, StoreError> {
    let mut work = Work::begin(tx, Vec::new(), &[job_id], at_ms).await?;
    let mut seq = 0;
    for (task_id, body) in events {
        seq = work.push_event(job_id, *task_id, None, at_ms, body.clone())?;
    }
    work.flush(tx).await?;
    Ok(seq)
}

/// `claim_pending_tasks`, given the `pending` tasks the caller selected
/// and locked: each becomes `assigned` by `coordinator_id`, attempt + 1.
pub(crate) async fn claim<T: JobTx + ?Sized>(
    tx: &mut T,
    tasks: Vec<TaskRecord>,
    coordinator_id: &str,
    now_ms: i64,
) -> Result<Vec<(TaskRecord, JobRecord)>, StoreError> {
    let order: Vec<Uuid> = tasks.iter().map(|t| t.id).collect();
    let mut work = Work::begin(tx, tasks, &[], now_ms).await?;
    let claimed = assign(&mut work, tx, &order, coordinator_id).await?;
    work.flush(tx).await?;
    with_jobs(&work, claimed)
}

/// Assigns these tasks of `work` to `coordinator_id` (those that can be):
/// `TaskEvent::Assigned`, attempt + 1. Returns them, after, in this order.
async fn assign<T: JobTx + ?Sized>(
    work: &mut Work,
    tx: &mut T,
    ids: &[Uuid],
    coordinator_id: &str,
) -> Result<Vec<TaskRecord>, StoreError> {
    let mut claimed = Vec::with_capacity(ids.len());
    for &id in ids {
        let Some(task) = work.task(id) else { continue };
        let message = format!(
            "assigned to agent {} (attempt {})",
            task.agent_name,
            task.attempt + 1
        );
        let transition = work
            .apply(tx, id, TaskEvent::Assigned, Some(&message), |task| {
                task.attempt += 1;
                task.assigned_by = Some(coordinator_id.into());
            })
            .await?;
        if let Some(transition) = transition {
            claimed.push(transition.task);
        }
    }
    Ok(claimed)
}

/// Each task with its job as `work` has it now.
fn with_jobs(
    work: &Work,
    tasks: Vec<TaskRecord>,
) -> Result<Vec<(TaskRecord, JobRecord)>, StoreError> {
    tasks
        .into_iter()
        .map(|task| {
            let job = work
                .job(task.job_id)
                .ok_or(StoreError::JobNotFound(task.job_id))?;
            Ok((task, job.clone()))
        })
        .collect()
}

/// `start_job`.
pub(crate) async fn start_job<T: JobTx + ?Sized>(
    tx: &mut T,
    start: &JobStart<'_>,
) -> Result<StartedJob, StoreError> {
    let record = super::created_job(start.job);
    if let Some(existing) = tx.insert_job(&record, start.tasks).await? {
        return Ok(StartedJob {
            job: existing,
            created: false,
            claimed: Vec::new(),
        });
    }
    let job_id = record.id;
    let tasks = start
        .tasks
        .iter()
        .map(|t| super::created_task(&record, t))
        .collect();
    let mut work = Work::fresh(record, tasks, start.now_ms);
    for (task_id, body) in start.notes {
        if work.task(*task_id).is_some() {
            work.push_event(job_id, Some(*task_id), None, start.now_ms, body.clone())?;
        }
    }
    let here: Vec<Uuid> = start
        .tasks
        .iter()
        .filter(|t| (start.here)(t.agent_id))
        .map(|t| t.id)
        .collect();
    let claimed = assign(&mut work, tx, &here, start.coordinator_id).await?;
    work.flush(tx).await?;
    if let Some(entry) = start.audit {
        tx.insert_audit(entry).await?;
    }
    let claimed = with_jobs(&work, claimed)?;
    let job = work
        .job(job_id)
        .ok_or(StoreError::JobNotFound(job_id))?
        .clone();
    Ok(StartedJob {
        job,
        created: true,
        claimed,
    })
}

/// One batch of `claim_job_tasks` looked at `candidates` (`(task, agent)`,
/// read without a lock, in the database's id order, at most `limit`):
/// the tasks of those whose agent is `here`, and where the next batch
/// starts.
pub(crate) fn tasks_here(
    candidates: &[(Uuid, Uuid)],
    here: &(dyn Fn(Uuid) -> bool + Send + Sync),
    limit: u32,
) -> (Vec<Uuid>, Option<Uuid>) {
    let next = if candidates.len() >= usize::try_from(limit).unwrap_or(usize::MAX) {
        candidates.last().map(|(task, _)| *task)
    } else {
        None
    };
    let ids = candidates
        .iter()
        .filter(|(_, agent)| here(*agent))
        .map(|(task, _)| *task)
        .collect();
    (ids, next)
}

/// `transition_task`.
pub(crate) async fn transition<T: JobTx + ?Sized>(
    tx: &mut T,
    task_id: Uuid,
    event: TaskEvent,
    message: &str,
    now_ms: i64,
) -> Result<Option<Transition>, StoreError> {
    let tasks = tx.lock_tasks(&[task_id]).await?;
    if tasks.is_empty() {
        return Ok(None);
    }
    let mut work = Work::begin(tx, tasks, &[], now_ms).await?;
    let transition = work
        .apply(tx, task_id, event, Some(message), |_| {})
        .await?;
    work.flush(tx).await?;
    Ok(transition)
}

/// `append_agent_events`. Tasks are processed in the order the batch first
/// names them, each task's events in seq order.
pub(crate) async fn append_agent_events<T: JobTx + ?Sized>(
    tx: &mut T,
    events: &[IncomingEvent],
    now_ms: i64,
) -> Result<AppendOutcome, StoreError> {
    // Per task, each seq once (the first copy wins), in seq order.
    let mut order: Vec<Uuid> = Vec::new();
    let mut by_task: HashMap<Uuid, BTreeMap<u64, &IncomingEvent>> = HashMap::new();
    for event in events {
        by_task
            .entry(event.task_id)
            .or_insert_with(|| {
                order.push(event.task_id);
                BTreeMap::new()
            })
            .entry(event.seq)
            .or_insert(event);
    }
    let mut ids = order.clone();
    ids.sort_unstable();
    let tasks = if ids.is_empty() {
        Vec::new()
    } else {
        tx.lock_tasks(&ids).await?
    };
    let mut work = Work::begin(tx, tasks, &[], now_ms).await?;

    let mut outcome = AppendOutcome::default();
    let mut touched = HashSet::new();
    for id in order {
        let Some(task) = work.task(id) else { continue };
        let (job_id, first) = (task.job_id, task.last_seq + 1);
        let mut next = first;
        for (&seq, event) in by_task[&id].range(first..) {
            if seq != next {
                // A gap: the agent sends the missing events again.
                break;
            }
            next += 1;
            if let Some(transition) = accept(&mut work, tx, event).await? {
                outcome.transitions.push(transition);
            }
        }
        if next > first && touched.insert(job_id) {
            outcome.touched_jobs.push(job_id);
        }
        outcome.acks.push((id, next - 1));
    }
    work.flush(tx).await?;
    Ok(outcome)
}

/// Stores one agent event that continues its task's seqs and applies it;
/// returns the transition if the task's state changed.
async fn accept<T: JobTx + ?Sized>(
    work: &mut Work,
    tx: &mut T,
    event: &IncomingEvent,
) -> Result<Option<Transition>, StoreError> {
    let now_ms = work.now_ms;
    let Some(entry) = work.tasks.get_mut(&event.task_id) else {
        return Ok(None);
    };
    let task = &mut entry.record;
    task.last_seq = event.seq;
    task.started_at_ms.get_or_insert(event.at_ms);
    if let Some(message) = &event.message {
        task.message.clone_from(message);
    }
    if let Some(result) = &event.result_json {
        task.result_json = Some(result.clone());
    }
    task.updated_at_ms = now_ms;
    entry.dirty = true;
    let job_id = task.job_id;
    work.push_event(
        job_id,
        Some(event.task_id),
        Some(event.seq),
        event.at_ms,
        event.body.clone(),
    )?;
    let transition = work
        .apply(tx, event.task_id, event.machine_event, None, |_| {})
        .await?;
    Ok(transition.filter(|t| t.task.state != t.from))
}

/// Whether a transition is worth reporting: the state changed, or the
/// caller has something to do (e.g. tell an agent to stop a running task).
fn changed_something(t: &Transition) -> bool {
    t.task.state != t.from || !t.effects.is_empty()
}

/// `request_cancel`, given the job's tasks that may still change (locked).
/// A job already final stays as it is (the job machine gives no
/// `CancelTasks`), and `cancel_requested` is not set on it.
pub(crate) async fn request_cancel<T: JobTx + ?Sized>(
    tx: &mut T,
    job_id: Uuid,
    tasks: Vec<TaskRecord>,
    now_ms: i64,
) -> Result<(JobRecord, Vec<Transition>), StoreError> {
    let ids: Vec<Uuid> = tasks.iter().map(|t| t.id).collect();
    let mut work = Work::begin(tx, tasks, &[job_id], now_ms).await?;
    let job = work.job(job_id).ok_or(StoreError::JobNotFound(job_id))?;
    let cancels_tasks = apply_job(job.status, JobEvent::CancelRequested)
        .is_ok_and(|(_, effects)| effects.contains(&JobEffect::CancelTasks));
    if !cancels_tasks {
        return Ok((job.clone(), Vec::new()));
    }
    if !job.cancel_requested {
        work.job_mut(job_id)?.cancel_requested = true;
    }
    let mut transitions = Vec::new();
    for id in ids {
        let transition = work
            .apply(
                tx,
                id,
                TaskEvent::CancelRequested,
                Some("cancelled by an operator"),
                |_| {},
            )
            .await?;
        transitions.extend(transition.filter(changed_something));
    }
    // A job whose tasks were all final already (or that has none) finishes
    // here rather than with a task.
    work.recompute_job(tx, job_id, TaskState::Cancelled).await?;
    work.flush(tx).await?;
    let job = work.job(job_id).ok_or(StoreError::JobNotFound(job_id))?;
    Ok((job.clone(), transitions))
}

/// Applies one coordinator-side event with a per-task message to each of
/// `tasks` (locked by the caller); returns the changes.
async fn apply_each<T: JobTx + ?Sized>(
    tx: &mut T,
    tasks: Vec<(TaskRecord, String)>,
    event: TaskEvent,
    now_ms: i64,
) -> Result<Vec<Transition>, StoreError> {
    let (records, messages): (Vec<TaskRecord>, Vec<(Uuid, String)>) = tasks
        .into_iter()
        .map(|(task, message)| {
            let id = task.id;
            (task, (id, message))
        })
        .unzip();
    let mut work = Work::begin(tx, records, &[], now_ms).await?;
    let mut transitions = Vec::new();
    for (id, message) in messages {
        let transition = work.apply(tx, id, event, Some(&message), |_| {}).await?;
        transitions.extend(transition.filter(changed_something));
    }
    work.flush(tx).await?;
    Ok(transitions)
}

/// `expire_overdue_tasks`, given the overdue `pending` tasks (locked).
pub(crate) async fn expire<T: JobTx + ?Sized>(
    tx: &mut T,
    tasks: Vec<TaskRecord>,
    now_ms: i64,
) -> Result<Vec<Transition>, StoreError> {
    let tasks = tasks
        .into_iter()
        .map(|task| {
            let message = format!(
                "agent {} did not take the task before the job's deadline",
                task.agent_name
            );
            (task, message)
        })
        .collect();
    apply_each(tx, tasks, TaskEvent::DeadlinePassed, now_ms).await
}

/// `mark_tasks_of_absent_agents_lost`, given the tasks of absent agents
/// (locked) with their agent's `last_seen_ms`.
pub(crate) async fn mark_lost<T: JobTx + ?Sized>(
    tx: &mut T,
    tasks: Vec<(TaskRecord, i64)>,
    now_ms: i64,
) -> Result<Vec<Transition>, StoreError> {
    let tasks = tasks
        .into_iter()
        .map(|(task, last_seen_ms)| {
            let message = if last_seen_ms == 0 {
                format!("agent {} has been away since it enrolled", task.agent_name)
            } else {
                format!(
                    "agent {} has been away since {}",
                    task.agent_name,
                    rfc3339_ms(last_seen_ms)
                )
            };
            (task, message)
        })
        .collect();
    apply_each(tx, tasks, TaskEvent::AgentGone, now_ms).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bodies_decode() {
        let body = EventBody::decode(&task_state_changed_body(TaskState::Lost, "gone")[..])
            .expect("decode");
        assert_eq!(
            body.body,
            Some(event_body::Body::TaskStateChanged(TaskStateChanged {
                state: "lost".into(),
                message: "gone".into()
            }))
        );
        let body = EventBody::decode(&job_finished_body(JobStatus::Failed, "1 failed")[..])
            .expect("decode");
        assert_eq!(
            body.body,
            Some(event_body::Body::JobFinished(JobFinished {
                status: "failed".into(),
                message: "1 failed".into()
            }))
        );
    }

    #[test]
    fn summary_lists_final_states() {
        let counts = HashMap::from([
            (TaskState::Failed, 1),
            (TaskState::Succeeded, 2),
            (TaskState::Running, 0),
        ]);
        assert_eq!(summary(&counts), "2 succeeded, 1 failed");
        assert_eq!(summary(&HashMap::new()), "no tasks");
    }
}
