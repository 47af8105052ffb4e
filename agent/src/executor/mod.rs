//! The typed job kinds an agent can run; there is no arbitrary shell. One
//! module per kind, each with one [`Executor`]: [`probe`] (host facts),
//! [`smoke`] (HTTP checks), [`deploy`] (containers on the Docker engine),
//! [`logs`] (a service's container logs), [`inspect`] (an app's containers),
//! [`restart`] (a release's containers restarted in place; deploy and
//! restart gate containers through [`health_gate`]), [`backup`] (a
//! database dumped to a checksummed file), [`verify`] (a backup proved by
//! a test restore), [`restore`] (a backup put back), [`prune`] (expired
//! backups deleted), [`migrate`] (an app's migrations applied to its main
//! and tenant databases, each backed up first).
//! [`executors`] lists them: it is what the runner dispatches to and what
//! the agent advertises. [`context`] is what an executor is handed besides
//! its spec; [`http`] is the executors' HTTP client; [`dbexec`] runs a
//! database's own client tools inside its container (`docker exec`) for
//! backup, verify and restore of `service =`/`container =` databases.
//!
//! A new kind: its module here with a [`KindExecutor`] impl, and one line
//! in [`executors`]. A test fails for a kind of [`JobKind::ALL`] with no
//! executor, or with two.

use async_trait::async_trait;
use ferry_common::job::{JobKind, JobSpec, Registered};

pub mod backup;
pub mod backup_file;
pub mod context;
pub mod dbexec;
pub mod deploy;
pub mod health_gate;
pub mod http;
pub mod inspect;
pub mod logs;
pub mod migrate;
pub mod probe;
pub mod prune;
pub mod restart;
pub mod restore;
pub mod smoke;
pub mod verify;

pub use context::{HostEnv, TaskContext};

/// A task that succeeded.
#[derive(Debug, Clone, Default)]
pub struct Done {
    pub message: String,
    pub result_json: String,
}

/// A task that did not.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TaskFailure {
    Cancelled,
    /// Cancelled after the executor put the host back; the message says
    /// in what state it left it ("cancelled; web back on release 1.4.1").
    Undone(String),
    Failed(String),
}

/// Runs the tasks of one job kind. Implement [`KindExecutor`] instead: it
/// hands the executor its own spec type, and this follows.
#[async_trait]
pub trait Executor: Send + Sync {
    fn kind(&self) -> JobKind;
    async fn run(&self, spec: JobSpec, ctx: &TaskContext) -> Result<Done, TaskFailure>;
}

/// An executor of the kind whose spec is `Spec`.
#[async_trait]
pub trait KindExecutor: Send + Sync + 'static {
    type Spec: Registered;
    async fn run(&self, spec: Self::Spec, ctx: &TaskContext) -> Result<Done, TaskFailure>;
}

#[async_trait]
impl<E: KindExecutor> Executor for E {
    fn kind(&self) -> JobKind {
        <E::Spec as Registered>::KIND
    }

    async fn run(&self, spec: JobSpec, ctx: &TaskContext) -> Result<Done, TaskFailure> {
        match E::Spec::try_from(spec) {
            Ok(spec) => KindExecutor::run(self, spec, ctx).await,
            Err(other) => Err(TaskFailure::Failed(format!(
                "the {} executor was handed a {} spec",
                self.kind(),
                other.kind()
            ))),
        }
    }
}

/// Every executor this agent has, one per job kind.
pub fn executors() -> &'static [&'static dyn Executor] {
    &[
        &probe::Probe,
        &smoke::Smoke,
        &deploy::Deploy,
        &logs::Logs,
        &inspect::Inspect,
        &restart::Restart,
        &backup::Backup,
        &verify::Verify,
        &restore::Restore,
        &prune::Prune,
        &migrate::Migrate,
    ]
}

/// The executors of `kinds` (every one if `None`), in registry order.
pub fn enabled(kinds: Option<&[JobKind]>) -> Vec<&'static dyn Executor> {
    executors()
        .iter()
        .copied()
        .filter(|e| kinds.is_none_or(|k| k.contains(&e.kind())))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_kind_has_exactly_one_executor() {
        for kind in JobKind::ALL {
            let n = executors().iter().filter(|e| e.kind() == *kind).count();
            assert_eq!(n, 1, "job kind {kind} has {n} executors; it needs one");
        }
        assert_eq!(executors().len(), JobKind::ALL.len());
    }

    #[test]
    fn capabilities_narrow_the_executors() {
        let kinds: Vec<JobKind> = enabled(None).iter().map(|e| e.kind()).collect();
        assert_eq!(kinds, JobKind::ALL);
        let kinds: Vec<JobKind> = enabled(Some(&[JobKind::Deploy, JobKind::Probe]))
            .iter()
            .map(|e| e.kind())
            .collect();
        assert_eq!(kinds, [JobKind::Probe, JobKind::Deploy]);
    }
}
