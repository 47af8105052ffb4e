//! The typed job kinds an agent can run; there is no arbitrary shell. One
//! module per kind: [`probe`] (host facts), [`smoke`] (HTTP checks),
//! [`deploy`] (containers on the Docker engine); [`http`] is their HTTP client.

use ferry_common::job::JobSpec;

use crate::runner::TaskContext;

pub mod deploy;
pub mod http;
pub mod probe;
pub mod smoke;

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
    Failed(String),
}

/// Runs one task of `kind` with its JSON spec.
pub async fn run(kind: &str, spec_json: &str, ctx: &TaskContext) -> Result<Done, TaskFailure> {
    match JobSpec::parse(kind, spec_json).map_err(TaskFailure::Failed)? {
        JobSpec::Probe(_) => probe::run(ctx).await,
        JobSpec::Smoke(spec) => smoke::run(&spec, ctx).await,
        JobSpec::Deploy(spec) => deploy::run(&spec, ctx).await,
    }
}
