//! Record types of the job engine's part of the store: jobs, tasks, job
//! events, cross-coordinator notifications.

use uuid::Uuid;

use crate::job::{JobStatus, TaskEffect, TaskEvent, TaskState};

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

/// What [`Store::start_job`](super::Store::start_job) does in its one
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

/// What [`Store::start_job`](super::Store::start_job) did.
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

/// One batch of [`Store::claim_job_tasks`](super::Store::claim_job_tasks).
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

/// Something other coordinators sharing the store may need to act on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Notification {
    /// New pending tasks exist for this job: whoever holds their agents' sessions assigns them.
    JobSubmitted(Uuid),
    /// New events for this job: wake its watchers.
    JobEvents(Uuid),
    /// Tell `agent` (on whichever coordinator holds its session) to stop `task`.
    CancelTask { task: Uuid, agent: Uuid },
    /// Cut this agent's session wherever it is.
    AgentRevoked(Uuid),
}
