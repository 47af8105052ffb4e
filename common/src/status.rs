//! The words Ferry uses for where things are: job statuses, task states,
//! rollout statuses and kinds. Each is an enum with exactly one spelling per
//! variant, defined here once ([`string_enum!`]) and used by the store (its
//! columns), the gRPC mapping (its string fields) and the CLI (what it
//! prints, and what it decides from: exit codes, colours). No status is
//! spelt as a string literal anywhere else.

/// Gives a fieldless enum `as_str`, `Display`, `FromStr` (an unknown word
/// names what was expected, in the user's terms, not the type's) and `ALL`.
///
/// ```
/// ferry_common::string_enum!(Colour "colour" { Red => "red", Blue => "blue" });
/// # #[derive(Debug, Clone, Copy, PartialEq, Eq)] enum Colour { Red, Blue }
/// ```
#[macro_export]
macro_rules! string_enum {
    ($ty:ident $what:literal { $($variant:ident => $text:literal),+ $(,)? }) => {
        impl $ty {
            /// Every variant, in declaration order.
            pub const ALL: &'static [$ty] = &[$($ty::$variant),+];

            pub fn as_str(self) -> &'static str {
                match self { $($ty::$variant => $text),+ }
            }
        }
        impl ::std::fmt::Display for $ty {
            fn fmt(&self, f: &mut ::std::fmt::Formatter<'_>) -> ::std::fmt::Result {
                f.write_str(self.as_str())
            }
        }
        impl ::std::str::FromStr for $ty {
            type Err = String;
            fn from_str(s: &str) -> Result<Self, String> {
                match s {
                    $($text => Ok($ty::$variant),)+
                    other => Err(format!(
                        "unknown {} {other:?}; expected one of {}",
                        $what,
                        [$($text),+].join(", ")
                    )),
                }
            }
        }
    };
}

/// A job as operators see it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum JobStatus {
    /// No task has started yet (agents offline, or not yet assigned).
    Pending,
    Running,
    Succeeded,
    Failed,
    Cancelled,
}

string_enum!(JobStatus "job status" {
    Pending => "pending",
    Running => "running",
    Succeeded => "succeeded",
    Failed => "failed",
    Cancelled => "cancelled",
});

impl JobStatus {
    pub fn is_final(self) -> bool {
        matches!(
            self,
            JobStatus::Succeeded | JobStatus::Failed | JobStatus::Cancelled
        )
    }
}

/// One job's work on one agent.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TaskState {
    /// Waiting for its agent to be online and the task to be sent.
    Pending,
    /// Sent to the agent; nothing heard back yet.
    Assigned,
    Running,
    Succeeded,
    Failed,
    Cancelled,
    /// Its agent was away longer than the grace period, or restarted
    /// mid-task; the agent's own report, if it comes, replaces this.
    Lost,
    /// Its agent did not come online before the job's deadline.
    Expired,
}

string_enum!(TaskState "task state" {
    Pending => "pending",
    Assigned => "assigned",
    Running => "running",
    Succeeded => "succeeded",
    Failed => "failed",
    Cancelled => "cancelled",
    Lost => "lost",
    Expired => "expired",
});

impl TaskState {
    pub fn is_final(self) -> bool {
        matches!(
            self,
            TaskState::Succeeded
                | TaskState::Failed
                | TaskState::Cancelled
                | TaskState::Lost
                | TaskState::Expired
        )
    }

    /// States in which the agent may be working on the task.
    pub fn is_with_agent(self) -> bool {
        matches!(self, TaskState::Assigned | TaskState::Running)
    }

    /// Ended without doing its work: the host may need a look.
    pub fn is_unfinished(self) -> bool {
        matches!(
            self,
            TaskState::Lost | TaskState::Expired | TaskState::Cancelled
        )
    }
}

/// Where a rollout is. Only `Running` holds the (app, env) lock.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RolloutStatus {
    /// Only a plan (`ferry deploy --dry-run`): shown, never stored or run.
    Planned,
    Running,
    /// Every host runs the release and passed its smoke checks.
    Succeeded,
    /// A host failed and there was nothing to revert to (a first deploy),
    /// or nothing had been updated yet.
    Failed,
    /// A host failed; every updated host is back on the previous release.
    Reverted,
    /// A host failed and the revert failed too (or the reverted hosts do
    /// not serve): hosts need a look.
    RevertFailed,
    /// Stopped on request (`ferry rollout cancel`, or a step's job
    /// cancelled): no new step started, and every host possibly changed is
    /// back on the previous release.
    Cancelled,
}

string_enum!(RolloutStatus "rollout status" {
    Planned => "planned",
    Running => "running",
    Succeeded => "succeeded",
    Failed => "failed",
    Reverted => "reverted",
    RevertFailed => "revert_failed",
    Cancelled => "cancelled",
});

impl RolloutStatus {
    /// Ended (or never started): not the (app, env) lock.
    pub fn is_final(self) -> bool {
        !matches!(self, RolloutStatus::Running)
    }

    /// The release is out as asked (or, for a plan, nothing went wrong).
    pub fn is_success(self) -> bool {
        matches!(self, RolloutStatus::Succeeded | RolloutStatus::Planned)
    }
}

/// What a rollout rolls out.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RolloutKind {
    /// A release from an app file (`ferry deploy`).
    Deploy,
    /// An earlier release again (`ferry rollback`).
    Rollback,
    /// The current release again, its containers recreated (`ferry
    /// redeploy`: a rotated secret, a crashed container).
    Redeploy,
    /// The current containers restarted in place (`ferry restart`).
    Restart,
}

string_enum!(RolloutKind "rollout kind" {
    Deploy => "deploy",
    Rollback => "rollback",
    Redeploy => "redeploy",
    Restart => "restart",
});

/// How an agent says a task ended (the wire's `TaskOutcome`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Outcome {
    Succeeded,
    Failed,
    Cancelled,
    Lost,
}

string_enum!(Outcome "task outcome" {
    Succeeded => "succeeded",
    Failed => "failed",
    Cancelled => "cancelled",
    Lost => "lost",
});

/// Why a backup was taken (the catalogue's `reason`; retention differs).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub enum BackupReason {
    /// `ferry backup run`.
    #[default]
    Manual,
    /// A `[databases.NAME.backup]` schedule.
    Scheduled,
    /// Before a schema migration.
    PreMigration,
    /// Before a deploy.
    PreDeploy,
}

string_enum!(BackupReason "backup reason" {
    Manual => "manual",
    Scheduled => "scheduled",
    PreMigration => "pre-migration",
    PreDeploy => "pre-deploy",
});

/// How a backup's last verification (test restore) ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum VerifyResult {
    Passed,
    Failed,
}

string_enum!(VerifyResult "verification result" {
    Passed => "passed",
    Failed => "failed",
});

/// Serde through the one spelling of [`string_enum!`], for enums that
/// travel in JSON (specs, manifests).
macro_rules! serde_as_str {
    ($($ty:ident),+) => {$(
        impl serde::Serialize for $ty {
            fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.serialize_str(self.as_str())
            }
        }
        impl<'de> serde::Deserialize<'de> for $ty {
            fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let text = String::deserialize(d)?;
                text.parse().map_err(serde::de::Error::custom)
            }
        }
    )+};
}

serde_as_str!(BackupReason, VerifyResult);

impl From<Outcome> for TaskState {
    fn from(o: Outcome) -> TaskState {
        match o {
            Outcome::Succeeded => TaskState::Succeeded,
            Outcome::Failed => TaskState::Failed,
            Outcome::Cancelled => TaskState::Cancelled,
            Outcome::Lost => TaskState::Lost,
        }
    }
}

/// Where one database stands after a migration run (or a dry run / status).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum MigrationStatus {
    /// This run applied (or adopted) at least one migration, and no error.
    Applied,
    /// Nothing to apply: every migration is in the ledger.
    UpToDate,
    /// A dry run or status: migrations are waiting to be applied.
    Pending,
    Failed,
    /// Not started: an earlier database failed and the run stops on failure.
    Skipped,
    Cancelled,
}

string_enum!(MigrationStatus "database migration status" {
    Applied => "applied",
    UpToDate => "up_to_date",
    Pending => "pending",
    Failed => "failed",
    Skipped => "skipped",
    Cancelled => "cancelled",
});

impl MigrationStatus {
    /// Whether the database ended as the run wanted.
    pub fn is_ok(self) -> bool {
        matches!(
            self,
            MigrationStatus::Applied | MigrationStatus::UpToDate | MigrationStatus::Pending
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_word_round_trips_and_unknown_ones_say_what_was_expected() {
        for s in JobStatus::ALL {
            assert_eq!(s.as_str().parse::<JobStatus>().unwrap(), *s);
        }
        for s in TaskState::ALL {
            assert_eq!(s.as_str().parse::<TaskState>().unwrap(), *s);
        }
        for s in RolloutStatus::ALL {
            assert_eq!(s.as_str().parse::<RolloutStatus>().unwrap(), *s);
        }
        for s in RolloutKind::ALL {
            assert_eq!(s.as_str().parse::<RolloutKind>().unwrap(), *s);
        }
        for s in Outcome::ALL {
            assert_eq!(s.as_str().parse::<Outcome>().unwrap(), *s);
        }
        for s in MigrationStatus::ALL {
            assert_eq!(s.as_str().parse::<MigrationStatus>().unwrap(), *s);
        }
        let err = "done".parse::<JobStatus>().unwrap_err();
        assert_eq!(
            err,
            "unknown job status \"done\"; expected one of pending, running, succeeded, failed, cancelled"
        );
        assert!(!err.contains("JobStatus"), "{err}");
    }
}
