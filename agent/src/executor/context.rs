//! What an executor gets besides its spec: the host ([`HostEnv`]) and the
//! task's context ([`TaskContext`]: its ids, cancellation, secrets, and the
//! events it reports, which go to the spool). The runner builds both;
//! executors never see the runner.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use ferry_proto::v1 as pb;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use super::TaskFailure;
use crate::config::NginxConfig;
use crate::health::HealthProbe;
use crate::spool::Spool;

/// What executors need from the host besides the task itself.
pub struct HostEnv {
    /// The agent's name (`agent.toml`'s `name`): the `ferry.host` label of
    /// every container it starts, and how it tells its own from another
    /// agent's on a shared engine.
    pub name: String,
    pub docker: Result<bollard::Docker, String>,
    pub nginx: NginxConfig,
    /// Where backups are written (`agent.toml`'s `backup_dir`).
    pub backup_dir: std::path::PathBuf,
    /// Where `pg_dump`/`pg_restore` are; `None`: the `PATH`.
    pub pg_bin_dir: Option<std::path::PathBuf>,
}

impl HostEnv {
    /// The PostgreSQL client program `name` (`pg_dump`, `pg_restore`).
    pub fn pg_tool(&self, name: &str) -> std::path::PathBuf {
        match &self.pg_bin_dir {
            Some(dir) => dir.join(name),
            None => std::path::PathBuf::from(name),
        }
    }
}

impl HostEnv {
    /// Whether a container with these labels is this agent's
    /// ([`ferry_common::job::naming::is_mine`]: its `ferry.host`, or none).
    pub fn owns(&self, labels: Option<&std::collections::HashMap<String, String>>) -> bool {
        ferry_common::job::naming::is_mine(labels, &self.name)
    }

    /// The Docker engine, or why it cannot be used.
    pub fn docker(&self) -> Result<&bollard::Docker, TaskFailure> {
        self.docker
            .as_ref()
            .map_err(|e| TaskFailure::Failed(format!("the Docker engine is unreachable: {e}")))
    }
}

/// What an executor uses to report and to notice cancellation.
#[derive(Clone)]
pub struct TaskContext {
    pub task_id: Uuid,
    pub job_id: Uuid,
    pub attempt: u32,
    pub cancel: CancellationToken,
    pub probe: Arc<HealthProbe>,
    pub host: Arc<HostEnv>,
    /// Secret values sent with the task; memory only.
    pub secrets: Arc<std::collections::BTreeMap<String, String>>,
    /// Agent clock minus coordinator clock, from the latest Welcome.
    pub clock_offset_ms: i64,
    pub(crate) spool: Arc<Spool>,
    /// The task's trace span, and its open step spans by step name.
    pub(crate) span: tracing::Span,
    pub(crate) steps: Arc<Mutex<HashMap<String, tracing::Span>>>,
    /// A result reported with a failure ([`TaskContext::fail_with_result`]).
    pub(crate) failure_result: Arc<Mutex<Option<String>>>,
}

impl TaskContext {
    /// Sets the result sent if the task then fails or is cancelled (a `migrate` task's
    /// per-database report, which says which database failed and which
    /// backups were taken); a success sends its own.
    pub fn fail_with_result(&self, result_json: String) {
        *self
            .failure_result
            .lock()
            .unwrap_or_else(|p| p.into_inner()) = Some(result_json);
    }

    pub(crate) fn take_failure_result(&self) -> String {
        self.failure_result
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take()
            .unwrap_or_default()
    }

    fn emit(&self, body: pb::event_body::Body) {
        if let Err(e) = self.spool.append(self.task_id, body) {
            tracing::error!(task_id = %self.task_id, error = %e, "cannot write to the spool");
        }
    }

    pub fn step_started(&self, step: &str, message: &str) {
        let span = tracing::info_span!(parent: &self.span, "step", step = %step, ok = tracing::field::Empty);
        self.steps
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(step.to_string(), span);
        self.emit(pb::event_body::Body::StepStarted(pb::StepStarted {
            step: step.into(),
            message: message.into(),
        }));
    }

    pub fn step_finished(&self, step: &str, ok: bool, message: &str, started: Instant) {
        if let Some(span) = self
            .steps
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(step)
        {
            span.record("ok", ok);
        }
        self.emit(pb::event_body::Body::StepFinished(pb::StepFinished {
            step: step.into(),
            ok,
            message: message.into(),
            duration_ms: started.elapsed().as_millis() as i64,
        }));
    }

    pub fn log(&self, step: &str, stream: &str, line: &str) {
        self.emit(pb::event_body::Body::Log(pb::LogLine {
            step: step.into(),
            stream: stream.into(),
            line: line.into(),
        }));
    }

    /// Progress in bytes (e.g. an image pull); the percentage follows.
    pub fn progress_bytes(&self, step: &str, done: u64, total: u64, message: &str) {
        let percent = if total > 0 {
            done as f64 * 100.0 / total as f64
        } else {
            -1.0
        };
        self.emit(pb::event_body::Body::Progress(pb::Progress {
            step: step.into(),
            percent,
            bytes_done: done,
            bytes_total: total,
            message: message.into(),
        }));
    }

    pub fn progress(&self, step: &str, percent: f64, message: &str) {
        self.emit(pb::event_body::Body::Progress(pb::Progress {
            step: step.into(),
            percent,
            message: message.into(),
            ..Default::default()
        }));
    }
}
