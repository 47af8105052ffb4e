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
        let err = "done".parse::<JobStatus>().unwrap_err();
        assert_eq!(
            err,
            "unknown job status \"done\"; expected one of pending, running, succeeded, failed, cancelled"
        );
        assert!(!err.contains("JobStatus"), "{err}");
    }
}
