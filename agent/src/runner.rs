//! Runs assigned tasks: at most `limit` at once, each with its own
//! cancellation, keyed by task id so an `Assign` seen twice (after a
//! reconnect, or from a second coordinator) never runs the task twice.

use std::collections::HashMap;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use ferry_proto::v1 as pb;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;
use uuid::Uuid;

use crate::config::NginxConfig;
use crate::executor::{self, TaskFailure};
use crate::health::HealthProbe;

/// What executors need from the host besides the task itself.
pub struct HostEnv {
    pub docker: Result<bollard::Docker, String>,
    pub nginx: NginxConfig,
}

impl HostEnv {
    /// The Docker engine, or why it cannot be used.
    pub fn docker(&self) -> Result<&bollard::Docker, TaskFailure> {
        self.docker
            .as_ref()
            .map_err(|e| TaskFailure::Failed(format!("the Docker engine is unreachable: {e}")))
    }
}
use crate::spool::{Spool, TaskMeta};

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
    spool: Arc<Spool>,
    /// The task's trace span, and its open step spans by step name.
    span: tracing::Span,
    steps: Arc<Mutex<HashMap<String, tracing::Span>>>,
}

impl TaskContext {
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

struct Running {
    cancel: CancellationToken,
    abort: Option<tokio::task::AbortHandle>,
}

pub struct Runner {
    spool: Arc<Spool>,
    probe: Arc<HealthProbe>,
    host: Arc<HostEnv>,
    slots: Arc<Semaphore>,
    running: Mutex<HashMap<Uuid, Running>>,
    clock_offset_ms: AtomicI64,
}

impl Runner {
    pub fn new(
        spool: Arc<Spool>,
        probe: Arc<HealthProbe>,
        host: Arc<HostEnv>,
        limit: usize,
    ) -> Arc<Self> {
        Arc::new(Runner {
            spool,
            probe,
            host,
            slots: Arc::new(Semaphore::new(limit.max(1))),
            running: Mutex::new(HashMap::new()),
            clock_offset_ms: AtomicI64::new(0),
        })
    }

    pub fn spool(&self) -> &Arc<Spool> {
        &self.spool
    }

    pub fn set_clock_offset(&self, offset_ms: i64) {
        self.clock_offset_ms.store(offset_ms, Ordering::Relaxed);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<Uuid, Running>> {
        self.running.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Handles `Assign`. A task already held (running, or finished with
    /// events not yet acknowledged) is not started again.
    pub fn assign(self: &Arc<Self>, assign: pb::Assign) {
        let Some(task) = assign.task else { return };
        let (Ok(task_id), Ok(job_id)) = (
            Uuid::parse_str(&task.task_id),
            Uuid::parse_str(&task.job_id),
        ) else {
            tracing::warn!(task_id = %task.task_id, "Assign with a malformed id; ignored");
            return;
        };
        let meta = TaskMeta {
            task_id,
            job_id,
            attempt: assign.attempt,
            kind: task.kind.clone(),
        };
        match self.spool.begin(meta) {
            Ok(true) => {}
            Ok(false) => {
                tracing::debug!(%task_id, attempt = assign.attempt, "task already held; not running it again");
                return;
            }
            Err(e) => {
                tracing::error!(%task_id, error = %e, "cannot spool the task; not running it");
                return;
            }
        }
        let span = tracing::info_span!(
            parent: None,
            "task.run",
            task.id = %task_id,
            job.id = %job_id,
            kind = %task.kind,
            attempt = assign.attempt
        );
        ferry_common::telemetry::set_parent(&span, &assign.traceparent);
        let cancel = CancellationToken::new();
        self.lock().insert(
            task_id,
            Running {
                cancel: cancel.clone(),
                abort: None,
            },
        );
        let ctx = TaskContext {
            task_id,
            job_id,
            attempt: assign.attempt,
            cancel,
            probe: Arc::clone(&self.probe),
            host: Arc::clone(&self.host),
            secrets: Arc::new(task.secrets.clone().into_iter().collect()),
            clock_offset_ms: self.clock_offset_ms.load(Ordering::Relaxed),
            spool: Arc::clone(&self.spool),
            span: span.clone(),
            steps: Arc::default(),
        };
        let runner = Arc::clone(self);
        let handle = tokio::spawn(
            async move {
                let outcome = runner.execute(&task.kind, &task.spec_json, &ctx).await;
                let (outcome, message, result) = match outcome {
                    Ok(done) => (pb::TaskOutcome::Succeeded, done.message, done.result_json),
                    Err(TaskFailure::Cancelled) => (
                        pb::TaskOutcome::Cancelled,
                        "cancelled".to_string(),
                        String::new(),
                    ),
                    Err(TaskFailure::Failed(msg)) => (pb::TaskOutcome::Failed, msg, String::new()),
                };
                if let Err(e) = runner.spool.finish(task_id, outcome, &message, result) {
                    tracing::error!(%task_id, error = %e, "cannot record the end of the task");
                }
                runner.lock().remove(&task_id);
            }
            .instrument(span),
        );
        if let Some(r) = self.lock().get_mut(&task_id) {
            r.abort = Some(handle.abort_handle());
        }
    }

    /// Stops every running task at once, writing nothing: what a killed
    /// process leaves behind. The next start reports them lost.
    pub fn abort_all(&self) {
        for (_, r) in self.lock().drain() {
            if let Some(abort) = r.abort {
                abort.abort();
            }
        }
    }

    async fn execute(
        &self,
        kind: &str,
        spec_json: &str,
        ctx: &TaskContext,
    ) -> Result<executor::Done, TaskFailure> {
        let _slot = tokio::select! {
            _ = ctx.cancel.cancelled() => return Err(TaskFailure::Cancelled),
            permit = Arc::clone(&self.slots).acquire_owned() => permit.map_err(|_| TaskFailure::Failed("agent shutting down".into()))?,
        };
        tokio::select! {
            _ = ctx.cancel.cancelled() => Err(TaskFailure::Cancelled),
            r = executor::run(kind, spec_json, ctx) => r,
        }
    }

    /// Handles `Cancel`: the task's executor is dropped at its next await.
    pub fn cancel(&self, task_id: Uuid) -> bool {
        match self.lock().get(&task_id) {
            Some(r) => {
                r.cancel.cancel();
                true
            }
            None => false,
        }
    }

    pub fn running_count(&self) -> usize {
        self.lock().len()
    }
}
