//! The job and task state machines: pure functions, no I/O.
//!
//! [`apply_task`] and [`apply_job`] take a state and an event and return the
//! next state with the effects the caller must carry out, or an
//! [`InvalidTransition`]. The store applies them inside the transaction that
//! read the prior state, so every write is guarded by the state it was
//! computed from.
//!
//! An agent's report always wins over the coordinator's guesses: a task
//! marked `lost` because its agent was away goes back to `running`, or to
//! the outcome the agent reports, when the agent returns.

pub use ferry_common::status::{JobStatus, Outcome, TaskState};

/// What happens to a task.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TaskEvent {
    /// The coordinator sent `Assign`.
    Assigned,
    /// The agent does not hold the task it was sent (it reconnected without
    /// it) and had not started it: send it again.
    Unassigned,
    /// The agent reported a step, progress or a log line.
    Reported,
    /// The agent reported the end of the task.
    Finished(Outcome),
    /// An operator cancelled the job.
    CancelRequested,
    /// The agent has been away longer than the grace period.
    AgentGone,
    /// The job's deadline passed.
    DeadlinePassed,
}

/// What the caller must do after a task transition.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TaskEffect {
    /// Tell the agent to stop the task.
    SendCancel,
    /// The task's state changed in a way that may change the job's status.
    RecomputeJob,
}

/// What happens to a job.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum JobEvent {
    /// Some task was assigned or reported.
    TaskActive,
    /// Every task is in a final state; `all_succeeded` if every one succeeded.
    AllTasksDone { all_succeeded: bool },
    /// An operator cancelled the job.
    CancelRequested,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum JobEffect {
    /// Cancel every unfinished task.
    CancelTasks,
    /// The job reached a final status: tell watchers, end its trace.
    Finished(JobStatus),
}

/// An event that makes no sense in the current state.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid transition: {what} in state {state}")]
pub struct InvalidTransition {
    pub state: String,
    pub what: String,
}

fn invalid<S: std::fmt::Display, E: std::fmt::Debug>(state: S, event: E) -> InvalidTransition {
    InvalidTransition {
        state: state.to_string(),
        what: format!("{event:?}"),
    }
}

/// The task state machine.
pub fn apply_task(
    state: TaskState,
    event: TaskEvent,
) -> Result<(TaskState, Vec<TaskEffect>), InvalidTransition> {
    use TaskEffect::*;
    use TaskEvent as E;
    use TaskState as S;
    let changed = |to: TaskState| Ok((to, vec![RecomputeJob]));
    let same = || Ok((state, vec![]));
    match (state, event) {
        (S::Pending, E::Assigned) => changed(S::Assigned),
        (S::Pending, E::CancelRequested) => changed(S::Cancelled),
        (S::Pending, E::DeadlinePassed) => changed(S::Expired),
        (S::Pending, E::Unassigned | E::AgentGone) => same(),

        (S::Assigned, E::Unassigned) => Ok((S::Pending, vec![])),
        (S::Assigned, E::AgentGone) => changed(S::Lost),
        // Whether or not the agent got it, it must not start it now.
        (S::Assigned, E::CancelRequested) => Ok((S::Cancelled, vec![SendCancel, RecomputeJob])),
        (S::Assigned | S::Running, E::DeadlinePassed) => same(),

        (S::Running, E::Reported) => same(),
        (S::Running, E::Unassigned | E::AgentGone) => changed(S::Lost),
        // The agent stops it and reports `cancelled`.
        (S::Running, E::CancelRequested) => Ok((S::Running, vec![SendCancel])),

        // A late report: the agent's word wins over the pending or lost guess.
        (S::Pending | S::Assigned | S::Lost, E::Reported) => changed(S::Running),
        (S::Pending | S::Assigned | S::Running | S::Lost, E::Finished(o)) => changed(o.into()),
        (S::Lost, E::CancelRequested) => changed(S::Cancelled),
        (S::Lost, E::AgentGone | E::Unassigned | E::DeadlinePassed) => same(),

        // Cancelled is final from the operator's side; what the agent still
        // says about it is recorded but changes nothing.
        (
            S::Cancelled,
            E::Reported | E::Finished(_) | E::CancelRequested | E::AgentGone | E::DeadlinePassed,
        ) => same(),
        (
            S::Succeeded | S::Failed | S::Expired,
            E::CancelRequested | E::AgentGone | E::DeadlinePassed,
        ) => same(),

        (S::Lost | S::Running | S::Assigned, E::Assigned)
        | (S::Succeeded | S::Failed | S::Cancelled | S::Expired, _) => Err(invalid(state, event)),
    }
}

/// The job state machine.
pub fn apply_job(
    status: JobStatus,
    event: JobEvent,
) -> Result<(JobStatus, Vec<JobEffect>), InvalidTransition> {
    use JobEvent as E;
    use JobStatus as S;
    let finish = |all_succeeded: bool| {
        let to = if all_succeeded {
            S::Succeeded
        } else {
            S::Failed
        };
        Ok((to, vec![JobEffect::Finished(to)]))
    };
    match (status, event) {
        (S::Pending, E::TaskActive) => Ok((S::Running, vec![])),
        (S::Running, E::TaskActive) => Ok((S::Running, vec![])),
        (S::Pending | S::Running, E::CancelRequested) => Ok((status, vec![JobEffect::CancelTasks])),
        (S::Pending | S::Running, E::AllTasksDone { all_succeeded }) => finish(all_succeeded),
        // A lost task's agent came back and reported: its report wins.
        (S::Failed, E::AllTasksDone { all_succeeded }) => finish(all_succeeded),
        (S::Failed, E::TaskActive) => Ok((S::Running, vec![])),
        (S::Succeeded | S::Failed | S::Cancelled, E::CancelRequested) => Ok((status, vec![])),
        (S::Cancelled, E::TaskActive | E::AllTasksDone { .. }) => Ok((status, vec![])),
        (S::Succeeded, E::TaskActive | E::AllTasksDone { .. }) => Err(invalid(status, event)),
    }
}

/// The job's status once every task is final, given whether it was cancelled.
pub fn final_status(cancel_requested: bool, all_succeeded: bool) -> JobStatus {
    match (cancel_requested, all_succeeded) {
        (true, _) => JobStatus::Cancelled,
        (false, true) => JobStatus::Succeeded,
        (false, false) => JobStatus::Failed,
    }
}

#[cfg(test)]
mod tests;
