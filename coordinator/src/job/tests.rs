//! Every (state, event) pair of both machines, checked against a table.

use super::*;

const STATES: [TaskState; 8] = [
    TaskState::Pending,
    TaskState::Assigned,
    TaskState::Running,
    TaskState::Succeeded,
    TaskState::Failed,
    TaskState::Cancelled,
    TaskState::Lost,
    TaskState::Expired,
];

fn events() -> Vec<TaskEvent> {
    let mut e = vec![
        TaskEvent::Assigned,
        TaskEvent::Unassigned,
        TaskEvent::Reported,
        TaskEvent::CancelRequested,
        TaskEvent::AgentGone,
        TaskEvent::DeadlinePassed,
    ];
    for o in [
        Outcome::Succeeded,
        Outcome::Failed,
        Outcome::Cancelled,
        Outcome::Lost,
    ] {
        e.push(TaskEvent::Finished(o));
    }
    e
}

/// The expected result of each transition: `None` = invalid.
fn expected(state: TaskState, event: TaskEvent) -> Option<(TaskState, Vec<TaskEffect>)> {
    use TaskEffect::*;
    use TaskEvent as E;
    use TaskState as S;
    let r = |s: TaskState| Some((s, vec![RecomputeJob]));
    let same = Some((state, vec![]));
    Some(match (state, event) {
        (S::Pending, E::Assigned) => return r(S::Assigned),
        (S::Pending, E::Unassigned) => return same,
        (S::Pending, E::Reported) => return r(S::Running),
        (S::Pending, E::CancelRequested) => return r(S::Cancelled),
        (S::Pending, E::AgentGone) => return same,
        (S::Pending, E::DeadlinePassed) => return r(S::Expired),
        (S::Pending, E::Finished(o)) => return r(o.into()),

        (S::Assigned, E::Assigned) => return None,
        (S::Assigned, E::Unassigned) => (S::Pending, vec![]),
        (S::Assigned, E::Reported) => return r(S::Running),
        (S::Assigned, E::CancelRequested) => (S::Cancelled, vec![SendCancel, RecomputeJob]),
        (S::Assigned, E::AgentGone) => return r(S::Lost),
        (S::Assigned, E::DeadlinePassed) => return same,
        (S::Assigned, E::Finished(o)) => return r(o.into()),

        (S::Running, E::Assigned) => return None,
        (S::Running, E::Unassigned | E::AgentGone) => return r(S::Lost),
        (S::Running, E::Reported | E::DeadlinePassed) => return same,
        (S::Running, E::CancelRequested) => (S::Running, vec![SendCancel]),
        (S::Running, E::Finished(o)) => return r(o.into()),

        (S::Lost, E::Assigned) => return None,
        (S::Lost, E::Reported) => return r(S::Running),
        (S::Lost, E::Finished(o)) => return r(o.into()),
        (S::Lost, E::CancelRequested) => return r(S::Cancelled),
        (S::Lost, E::Unassigned | E::AgentGone | E::DeadlinePassed) => return same,

        (S::Cancelled, E::Assigned | E::Unassigned) => return None,
        (S::Cancelled, _) => return same,

        (
            S::Succeeded | S::Failed | S::Expired,
            E::CancelRequested | E::AgentGone | E::DeadlinePassed,
        ) => return same,
        (S::Succeeded | S::Failed | S::Expired, _) => return None,
    })
}

#[test]
fn every_task_transition_matches_the_table() {
    let mut checked = 0;
    for state in STATES {
        for event in events() {
            let got = apply_task(state, event).ok();
            assert_eq!(got, expected(state, event), "{state} + {event:?}");
            checked += 1;
        }
    }
    assert_eq!(checked, 80);
}

#[test]
fn a_happy_task_runs_to_success() {
    let mut s = TaskState::Pending;
    for e in [
        TaskEvent::Assigned,
        TaskEvent::Reported,
        TaskEvent::Reported,
        TaskEvent::Finished(Outcome::Succeeded),
    ] {
        s = apply_task(s, e).unwrap().0;
    }
    assert_eq!(s, TaskState::Succeeded);
    assert!(s.is_final());
}

#[test]
fn the_agents_report_wins_over_lost() {
    let (s, _) = apply_task(TaskState::Running, TaskEvent::AgentGone).unwrap();
    assert_eq!(s, TaskState::Lost);
    let (s, _) = apply_task(s, TaskEvent::Finished(Outcome::Succeeded)).unwrap();
    assert_eq!(s, TaskState::Succeeded);
}

#[test]
fn every_job_transition_matches_the_table() {
    use JobEvent as E;
    use JobStatus as S;
    let statuses = [
        S::Pending,
        S::Running,
        S::Succeeded,
        S::Failed,
        S::Cancelled,
    ];
    let events = [
        E::TaskActive,
        E::AllTasksDone {
            all_succeeded: true,
        },
        E::AllTasksDone {
            all_succeeded: false,
        },
        E::CancelRequested,
    ];
    for status in statuses {
        for event in events {
            let want: Option<(S, Vec<JobEffect>)> = match (status, event) {
                (S::Pending | S::Running, E::TaskActive) => Some((S::Running, vec![])),
                (
                    S::Pending | S::Running | S::Failed,
                    E::AllTasksDone {
                        all_succeeded: true,
                    },
                ) => Some((S::Succeeded, vec![JobEffect::Finished(S::Succeeded)])),
                (
                    S::Pending | S::Running | S::Failed,
                    E::AllTasksDone {
                        all_succeeded: false,
                    },
                ) => Some((S::Failed, vec![JobEffect::Finished(S::Failed)])),
                (S::Pending | S::Running, E::CancelRequested) => {
                    Some((status, vec![JobEffect::CancelTasks]))
                }
                (S::Failed, E::TaskActive) => Some((S::Running, vec![])),
                (S::Succeeded | S::Failed | S::Cancelled, E::CancelRequested) => {
                    Some((status, vec![]))
                }
                (S::Cancelled, _) => Some((status, vec![])),
                (S::Succeeded, _) => None,
            };
            assert_eq!(apply_job(status, event).ok(), want, "{status} + {event:?}");
        }
    }
}

#[test]
fn names_round_trip() {
    for s in STATES {
        assert_eq!(s.as_str().parse::<TaskState>(), Ok(s));
    }
    for s in [
        JobStatus::Pending,
        JobStatus::Running,
        JobStatus::Succeeded,
        JobStatus::Failed,
        JobStatus::Cancelled,
    ] {
        assert_eq!(s.as_str().parse::<JobStatus>(), Ok(s));
    }
    assert!(
        "done"
            .parse::<JobStatus>()
            .unwrap_err()
            .contains("pending, running")
    );
    assert_eq!(final_status(true, true), JobStatus::Cancelled);
    assert_eq!(final_status(false, false), JobStatus::Failed);
}
