//! The rollout pipeline's decisions, without I/O: given a rollout's plan
//! and how each step it ran so far ended, what happens next — run the next
//! step, revert the hosts it may have changed, check the revert, or finish
//! with a status. [`next`] is the whole policy; the driver in
//! [`crate::rollout`] runs the steps it names (submitting jobs with their
//! idempotency keys, waiting, saving) and feeds their ends back.
//!
//! A rollout's steps, in order:
//!
//! - the forward steps ([`forward`]): per batch of hosts, its deploy (or
//!   restart) and then, when the app has smoke checks, its smoke checks;
//! - after a forward step fails or is cancelled: nothing more forward. A
//!   restart changes no release, so it is never reverted. Otherwise, when
//!   some host may have changed and there is an earlier release, the
//!   revert (that release deployed on those hosts) and, with smoke checks,
//!   the revert's smoke checks.
//!
//! Step keys (`deploy-0`, `smoke-0`, `revert`, `revert-smoke`) are part of
//! each job's idempotency key, so a driver that resumes a rollout (after a
//! restart, or on another coordinator) finds the jobs already run: they
//! never change meaning.

use ferry_common::status::{RolloutKind, RolloutStatus};

/// What a step does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum StepKind {
    /// The release deployed on a batch (deploy, rollback, redeploy).
    Deploy,
    /// The release's containers restarted in place on a batch.
    Restart,
    /// The smoke checks, from a batch's hosts.
    Smoke,
    /// The previous release deployed on every host possibly changed.
    Revert,
    /// The smoke checks, from the reverted hosts.
    RevertSmoke,
}

// The word stored in a step's `kind` (and shown by `ferry rollout`).
ferry_common::string_enum!(StepKind "rollout step kind" {
    Deploy => "deploy",
    Restart => "restart",
    Smoke => "smoke",
    Revert => "revert",
    RevertSmoke => "revert smoke",
});

impl StepKind {
    /// Whether a rollout cancel stops a step of this kind; a revert and
    /// its checks always run to their end.
    pub fn cancellable(self) -> bool {
        matches!(self, StepKind::Deploy | StepKind::Restart | StepKind::Smoke)
    }
}

/// One step of a rollout's plan.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Step {
    pub kind: StepKind,
    /// The batch it works on (forward steps); 0 for a revert.
    pub batch: usize,
}

impl Step {
    /// The step's part of its job's idempotency key.
    pub fn key(&self) -> String {
        match self.kind {
            StepKind::Revert => "revert".into(),
            StepKind::RevertSmoke => "revert-smoke".into(),
            kind => format!("{}-{}", kind.as_str(), self.batch),
        }
    }
}

/// The forward steps of a rollout of `kind` over `batches` batches, in
/// the order they run.
pub fn forward(kind: RolloutKind, batches: usize, smoke: bool) -> Vec<Step> {
    let work = match kind {
        RolloutKind::Restart => StepKind::Restart,
        RolloutKind::Deploy | RolloutKind::Rollback | RolloutKind::Redeploy => StepKind::Deploy,
    };
    let mut steps = Vec::new();
    for batch in 0..batches {
        steps.push(Step { kind: work, batch });
        if smoke {
            steps.push(Step {
                kind: StepKind::Smoke,
                batch,
            });
        }
    }
    steps
}

/// How a step ended, as far as the pipeline cares.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ended {
    Succeeded,
    Failed,
    /// Cancelled, or not started because the rollout's cancel was asked.
    Cancelled,
}

/// Everything [`next`] decides from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Facts {
    pub kind: RolloutKind,
    /// The forward plan ([`forward`]).
    pub plan: Vec<Step>,
    /// How the forward steps run so far ended, in plan order.
    pub forward: Vec<Ended>,
    /// Whether any host may have been changed by the forward steps.
    pub changed: bool,
    /// Whether there is an earlier release to revert to.
    pub has_previous: bool,
    /// Whether the app has smoke checks (the revert is checked too).
    pub smoke: bool,
    pub revert: Option<Ended>,
    pub revert_smoke: Option<Ended>,
}

/// What happens next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Next {
    /// Run this step (forward, revert or the revert's smoke checks).
    Run(Step),
    /// The rollout ends.
    Finish(Finish),
}

/// How a rollout ends, and why: the driver words the message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Finish {
    /// Every forward step succeeded.
    Done,
    /// Stopped before any host was changed.
    NothingChanged { cancelled: bool },
    /// A restart stopped: it changed no release, so nothing is reverted.
    RestartStopped { cancelled: bool },
    /// Stopped with hosts changed and no earlier release to return them to.
    NoPrevious { cancelled: bool },
    /// The revert failed.
    RevertFailed,
    /// The revert ran but its smoke checks failed: the old release does
    /// not serve there.
    RevertDoesNotServe,
    /// Every possibly changed host is back on the previous release.
    Reverted { cancelled: bool },
}

impl Finish {
    /// The rollout's final status.
    pub fn status(self) -> RolloutStatus {
        match self {
            Finish::Done => RolloutStatus::Succeeded,
            Finish::RevertFailed | Finish::RevertDoesNotServe => RolloutStatus::RevertFailed,
            Finish::NothingChanged { cancelled: true }
            | Finish::RestartStopped { cancelled: true }
            | Finish::NoPrevious { cancelled: true }
            | Finish::Reverted { cancelled: true } => RolloutStatus::Cancelled,
            Finish::Reverted { cancelled: false } => RolloutStatus::Reverted,
            Finish::NothingChanged { cancelled: false }
            | Finish::RestartStopped { cancelled: false }
            | Finish::NoPrevious { cancelled: false } => RolloutStatus::Failed,
        }
    }
}

/// The pipeline's policy: see the module docs.
pub fn next(f: &Facts) -> Next {
    let stopped = f.forward.iter().find(|e| **e != Ended::Succeeded);
    let Some(stop) = stopped else {
        return match f.plan.get(f.forward.len()) {
            Some(step) => Next::Run(*step),
            None => Next::Finish(Finish::Done),
        };
    };
    let cancelled = *stop == Ended::Cancelled;
    if f.kind == RolloutKind::Restart {
        return Next::Finish(Finish::RestartStopped { cancelled });
    }
    if !f.changed {
        return Next::Finish(Finish::NothingChanged { cancelled });
    }
    if !f.has_previous {
        return Next::Finish(Finish::NoPrevious { cancelled });
    }
    let revert = Step {
        kind: StepKind::Revert,
        batch: 0,
    };
    match f.revert {
        None => return Next::Run(revert),
        Some(Ended::Succeeded) => {}
        Some(Ended::Failed | Ended::Cancelled) => return Next::Finish(Finish::RevertFailed),
    }
    if f.smoke {
        match f.revert_smoke {
            None => {
                return Next::Run(Step {
                    kind: StepKind::RevertSmoke,
                    batch: 0,
                });
            }
            Some(Ended::Succeeded) => {}
            Some(Ended::Failed | Ended::Cancelled) => {
                return Next::Finish(Finish::RevertDoesNotServe);
            }
        }
    }
    Next::Finish(Finish::Reverted { cancelled })
}

#[cfg(test)]
mod tests {
    use super::*;
    use Ended::{Cancelled as C, Failed as F, Succeeded as S};

    fn step(kind: StepKind, batch: usize) -> Step {
        Step { kind, batch }
    }

    #[test]
    fn the_forward_plan_interleaves_each_batch_with_its_smoke_checks() {
        use StepKind::*;
        assert_eq!(
            forward(RolloutKind::Deploy, 2, true),
            [
                step(Deploy, 0),
                step(Smoke, 0),
                step(Deploy, 1),
                step(Smoke, 1)
            ]
        );
        assert_eq!(
            forward(RolloutKind::Restart, 2, false),
            [step(Restart, 0), step(Restart, 1)]
        );
        assert_eq!(forward(RolloutKind::Redeploy, 1, false), [step(Deploy, 0)]);
        // The keys are in every job's idempotency key: they never change.
        let keys: Vec<String> = forward(RolloutKind::Deploy, 2, true)
            .iter()
            .map(Step::key)
            .collect();
        assert_eq!(keys, ["deploy-0", "smoke-0", "deploy-1", "smoke-1"]);
        assert_eq!(step(Restart, 3).key(), "restart-3");
        assert_eq!(step(Revert, 0).key(), "revert");
        assert_eq!(step(RevertSmoke, 0).key(), "revert-smoke");
        assert!(Deploy.cancellable() && Restart.cancellable() && Smoke.cancellable());
        assert!(!Revert.cancellable() && !RevertSmoke.cancellable());
    }

    /// One row: the forward outcomes so far, whether a host changed,
    /// whether there is a previous release, the revert's and its smoke
    /// checks' outcomes → what comes next.
    struct Row {
        kind: RolloutKind,
        forward: &'static [Ended],
        changed: bool,
        previous: bool,
        revert: Option<Ended>,
        revert_smoke: Option<Ended>,
        next: Next,
    }

    fn row(forward: &'static [Ended], next: Next) -> Row {
        Row {
            kind: RolloutKind::Deploy,
            forward,
            changed: true,
            previous: true,
            revert: None,
            revert_smoke: None,
            next,
        }
    }

    #[test]
    fn what_comes_next() {
        use Finish::*;
        use StepKind::*;
        let run = |kind, batch| Next::Run(step(kind, batch));
        let fin = Next::Finish;
        let rows = [
            // Forward, step by step, to the end.
            row(&[], run(Deploy, 0)),
            row(&[S], run(Smoke, 0)),
            row(&[S, S], run(Deploy, 1)),
            row(&[S, S, S], run(Smoke, 1)),
            row(&[S, S, S, S], fin(Done)),
            // A failure stops the forward steps; changed hosts revert,
            // then the revert is smoke-checked.
            row(&[S, S, F], run(Revert, 0)),
            Row {
                revert: Some(S),
                ..row(&[S, S, F], run(RevertSmoke, 0))
            },
            Row {
                revert: Some(S),
                revert_smoke: Some(S),
                ..row(&[S, F], fin(Reverted { cancelled: false }))
            },
            Row {
                revert: Some(F),
                ..row(&[S, F], fin(RevertFailed))
            },
            // A cancelled revert did not put the hosts back either.
            Row {
                revert: Some(C),
                ..row(&[F], fin(RevertFailed))
            },
            Row {
                revert: Some(S),
                revert_smoke: Some(F),
                ..row(&[S, F], fin(RevertDoesNotServe))
            },
            // A cancel reverts the same way and ends cancelled.
            Row {
                revert: Some(S),
                revert_smoke: Some(S),
                ..row(&[S, S, C], fin(Reverted { cancelled: true }))
            },
            // Nothing changed: nothing to revert.
            Row {
                changed: false,
                ..row(&[F], fin(NothingChanged { cancelled: false }))
            },
            Row {
                changed: false,
                ..row(&[C], fin(NothingChanged { cancelled: true }))
            },
            // A first release has nothing to go back to.
            Row {
                previous: false,
                ..row(&[S, F], fin(NoPrevious { cancelled: false }))
            },
            // A restart is never reverted.
            Row {
                kind: RolloutKind::Restart,
                ..row(&[S, F], fin(RestartStopped { cancelled: false }))
            },
            Row {
                kind: RolloutKind::Restart,
                ..row(&[C], fin(RestartStopped { cancelled: true }))
            },
        ];
        for (i, r) in rows.iter().enumerate() {
            let smoke = r.kind != RolloutKind::Restart;
            let facts = Facts {
                kind: r.kind,
                plan: forward(r.kind, 2, smoke),
                forward: r.forward.to_vec(),
                changed: r.changed,
                has_previous: r.previous,
                smoke,
                revert: r.revert,
                revert_smoke: r.revert_smoke,
            };
            assert_eq!(next(&facts), r.next, "row {i}: {facts:?}");
        }
    }

    #[test]
    fn without_smoke_checks_a_revert_ends_the_rollout() {
        let facts = Facts {
            kind: RolloutKind::Rollback,
            plan: forward(RolloutKind::Rollback, 1, false),
            forward: vec![F],
            changed: true,
            has_previous: true,
            smoke: false,
            revert: Some(S),
            revert_smoke: None,
        };
        assert_eq!(
            next(&facts),
            Next::Finish(Finish::Reverted { cancelled: false })
        );
    }

    #[test]
    fn each_end_has_its_status() {
        use Finish::*;
        let cases = [
            (Done, RolloutStatus::Succeeded),
            (NothingChanged { cancelled: false }, RolloutStatus::Failed),
            (NothingChanged { cancelled: true }, RolloutStatus::Cancelled),
            (RestartStopped { cancelled: false }, RolloutStatus::Failed),
            (NoPrevious { cancelled: false }, RolloutStatus::Failed),
            (NoPrevious { cancelled: true }, RolloutStatus::Cancelled),
            (RevertFailed, RolloutStatus::RevertFailed),
            (RevertDoesNotServe, RolloutStatus::RevertFailed),
            (Reverted { cancelled: false }, RolloutStatus::Reverted),
            (Reverted { cancelled: true }, RolloutStatus::Cancelled),
        ];
        for (finish, status) in cases {
            assert_eq!(finish.status(), status, "{finish:?}");
        }
    }
}
