//! `ferry-agent`: one per host. Enrolls once with a join token, then keeps
//! a mutually authenticated session to the coordinator and reports the
//! host's health.
//!
//! - [`enroll`]: `ferry-agent enroll` (key generated here, CA pinned).
//! - [`session`]: `ferry-agent run`: the session loop, heartbeats,
//!   reconnects with full-jitter backoff, certificate renewal.
//! - [`health`]: Docker, PostgreSQL and disk probes.
//! - [`config`]: `agent.toml` and the identity files in the state dir.
//! - [`error`]: the error type and its exit codes.
//! - [`runner`]: runs assigned tasks concurrently, each cancellable, never
//!   twice; enforces each kind's timeout and host lock, and refuses kinds
//!   this agent does not run.
//! - [`migrate`]: the migration engine: an app's SQL migrations (sqlx,
//!   Prisma, Drizzle or plain layouts) applied to its main database and its
//!   tenants, with a ledger, a lock per database, dry runs, adoption of the
//!   app tool's own records, and a per-database report.
//! - [`spool`]: every task event on disk until the coordinator acknowledges it.
//! - [`executor`]: one `Executor` per job kind (`probe`, `smoke`, `deploy`),
//!   listed once in `executors()`, which the runner dispatches to and the
//!   session advertises; `context` is what an executor gets besides its
//!   spec (`TaskContext`, `HostEnv`), `http` its HTTP client. Executors do
//!   not depend on the runner.

pub mod config;
pub mod enroll;
pub mod error;
pub mod executor;
pub mod health;
pub mod migrate;
pub mod runner;
pub mod session;
pub mod spool;

use std::collections::HashMap;
use std::path::Path;

use tokio_util::sync::CancellationToken;

pub use error::AgentError;

/// Loads the state dir, applies the environment, and runs until `shutdown`.
pub async fn run(
    state_dir: &Path,
    env: &HashMap<String, String>,
    shutdown: CancellationToken,
) -> Result<(), AgentError> {
    let mut config = config::AgentConfig::load(state_dir)?;
    config.apply_env(env);
    session::run(session::Agent::new(config, state_dir)?, shutdown).await
}
