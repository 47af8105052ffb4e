//! Runs assigned tasks: at most `limit` at once, each with its own
//! cancellation, keyed by task id so an `Assign` seen twice (after a
//! reconnect, or from a second coordinator) never runs the task twice.
//!
//! Per task, from its kind's registry entry ([`JobSpec`]): only kinds this
//! agent has an executor for (and is configured to run) are run; tasks
//! with the same [`JobSpec::host_lock`] run one at a time, in the order
//! they were assigned; and a task running longer than its
//! [`JobSpec::timeout`] fails, its cancellation fired so the executor
//! stops. Waiting for a lock or a slot does not count against the timeout.

use ferry_common::status::Outcome;
use std::collections::HashMap;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use ferry_common::job::{JobKind, JobSpec};
use ferry_proto::v1 as pb;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;
use uuid::Uuid;

use crate::executor::{Done, Executor, HostEnv, TaskContext, TaskFailure};
use crate::health::HealthProbe;
use crate::spool::{Spool, TaskMeta};

/// How long an executor whose task timed out or was cancelled gets to
/// notice its fired cancellation and clean up before it is dropped.
pub const TIMEOUT_CLEANUP_GRACE: Duration = Duration::from_secs(10);

/// A task's timeout and host lock, from its spec.
type Limits = fn(&JobSpec) -> (Duration, Option<String>);

fn spec_limits(spec: &JobSpec) -> (Duration, Option<String>) {
    (spec.timeout(), spec.host_lock())
}

/// One async mutex per host-lock key, dropped when no task holds or waits
/// for it. Tokio's mutex is fair: waiters get it in the order they came.
#[derive(Default)]
struct HostLocks(Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>);

impl HostLocks {
    fn get(&self, key: &str) -> Arc<tokio::sync::Mutex<()>> {
        let mut map = self.0.lock().unwrap_or_else(|p| p.into_inner());
        Arc::clone(map.entry(key.to_string()).or_default())
    }

    /// Forgets `key`'s mutex if `mine` was the last task that used it.
    fn release(&self, key: &str, mine: Arc<tokio::sync::Mutex<()>>) {
        let mut map = self.0.lock().unwrap_or_else(|p| p.into_inner());
        // The map's reference and `mine`: nobody else holds or waits.
        if Arc::strong_count(&mine) == 2 {
            map.remove(key);
        }
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
    /// What this agent runs and advertises.
    executors: Vec<&'static dyn Executor>,
    locks: HostLocks,
    limits: Limits,
}

impl Runner {
    pub fn new(
        spool: Arc<Spool>,
        probe: Arc<HealthProbe>,
        host: Arc<HostEnv>,
        limit: usize,
        executors: Vec<&'static dyn Executor>,
    ) -> Arc<Self> {
        Self::build(spool, probe, host, limit, executors, spec_limits)
    }

    fn build(
        spool: Arc<Spool>,
        probe: Arc<HealthProbe>,
        host: Arc<HostEnv>,
        limit: usize,
        executors: Vec<&'static dyn Executor>,
        limits: Limits,
    ) -> Arc<Self> {
        Arc::new(Runner {
            spool,
            probe,
            host,
            slots: Arc::new(Semaphore::new(limit.max(1))),
            running: Mutex::new(HashMap::new()),
            clock_offset_ms: AtomicI64::new(0),
            executors,
            locks: HostLocks::default(),
            limits,
        })
    }

    /// The job kinds this agent runs: what `Hello.capabilities` says.
    pub fn capabilities(&self) -> Vec<JobKind> {
        self.executors.iter().map(|e| e.kind()).collect()
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
            failure_result: Arc::default(),
        };
        let runner = Arc::clone(self);
        let handle = tokio::spawn(
            async move {
                let outcome = runner.execute(&task.kind, &task.spec_json, &ctx).await;
                let failure_result = ctx.take_failure_result();
                let (outcome, message, result) = match outcome {
                    Ok(done) => (pb::TaskOutcome::Succeeded, done.message, done.result_json),
                    Err(TaskFailure::Cancelled) => (
                        pb::TaskOutcome::Cancelled,
                        Outcome::Cancelled.as_str().to_string(),
                        failure_result,
                    ),
                    Err(TaskFailure::Undone(msg)) => {
                        (pb::TaskOutcome::Cancelled, msg, failure_result)
                    }
                    Err(TaskFailure::Failed(msg)) => (pb::TaskOutcome::Failed, msg, failure_result),
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
    ) -> Result<Done, TaskFailure> {
        let spec = JobSpec::parse(kind, spec_json).map_err(TaskFailure::Failed)?;
        let kind = spec.kind();
        let Some(executor) = self.executors.iter().find(|e| e.kind() == kind) else {
            let runs: Vec<&str> = self.executors.iter().map(|e| e.kind().as_str()).collect();
            return Err(TaskFailure::Failed(format!(
                "this agent does not run {kind} tasks: it runs {} (agent.toml capabilities)",
                runs.join(", ")
            )));
        };
        let (timeout, host_lock) = (self.limits)(&spec);
        let lock = host_lock.map(|key| {
            let mutex = self.locks.get(&key);
            (key, mutex)
        });
        let result = async {
            let _held = match &lock {
                None => None,
                Some((_, mutex)) => tokio::select! {
                    _ = ctx.cancel.cancelled() => return Err(TaskFailure::Cancelled),
                    guard = Arc::clone(mutex).lock_owned() => Some(guard),
                },
            };
            let _slot = tokio::select! {
                _ = ctx.cancel.cancelled() => return Err(TaskFailure::Cancelled),
                permit = Arc::clone(&self.slots).acquire_owned() => permit.map_err(|_| TaskFailure::Failed("agent shutting down".into()))?,
            };
            let mut run = std::pin::pin!(executor.run(spec, ctx));
            let timed_out = tokio::select! {
                r = &mut run => return r,
                _ = ctx.cancel.cancelled() => false,
                _ = tokio::time::sleep(timeout) => true,
            };
            // Cancelled or timed out: fire the task's cancellation (if the
            // operator's did not) and let the executor act on it (remove
            // new containers, undo a switch) before the task is reported
            // finished, so the report says what the host is really in.
            ctx.cancel.cancel();
            let cleaned = tokio::time::timeout(TIMEOUT_CLEANUP_GRACE, run).await;
            if timed_out {
                return Err(TaskFailure::Failed(format!(
                    "{kind} task timed out after {}",
                    ferry_common::time::format_duration(timeout)
                )));
            }
            match cleaned {
                // It finished meanwhile (the cancel came too late to stop
                // it) or cleaned up: its own word on what the host is in.
                Ok(r) => r,
                Err(_) => Err(TaskFailure::Undone(format!(
                    "{}; the {kind} executor did not finish cleaning up within {}: check the host",
                    Outcome::Cancelled.as_str(),
                    ferry_common::time::format_duration(TIMEOUT_CLEANUP_GRACE)
                ))),
            }
        }
        .await;
        if let Some((key, mutex)) = lock {
            self.locks.release(&key, mutex);
        }
        result
    }

    /// Handles `Cancel`: fires the task's cancellation. A task waiting for
    /// its host lock or a slot ends at once; a running executor gets
    /// [`TIMEOUT_CLEANUP_GRACE`] to clean up and report.
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

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicBool, AtomicUsize};

    use ferry_common::job::ProbeSpec;

    use super::*;
    use crate::executor::KindExecutor;

    /// A probe executor that sleeps, counting how many run at once, or (if
    /// `hang`) waits for its cancellation and records that it saw it.
    #[derive(Default)]
    struct Fake {
        hang: bool,
        now: AtomicUsize,
        most: AtomicUsize,
        cleaned_up: AtomicBool,
    }

    #[async_trait::async_trait]
    impl KindExecutor for Fake {
        type Spec = ProbeSpec;
        async fn run(&self, _spec: ProbeSpec, ctx: &TaskContext) -> Result<Done, TaskFailure> {
            if self.hang {
                ctx.cancel.cancelled().await;
                // Cleaning up takes a while; the runner waits for it.
                tokio::time::sleep(Duration::from_millis(200)).await;
                self.cleaned_up.store(true, Ordering::SeqCst);
                return Err(TaskFailure::Undone("cancelled; cleaned up".into()));
            }
            let n = self.now.fetch_add(1, Ordering::SeqCst) + 1;
            self.most.fetch_max(n, Ordering::SeqCst);
            tokio::time::sleep(Duration::from_millis(50)).await;
            self.now.fetch_sub(1, Ordering::SeqCst);
            Ok(Done::default())
        }
    }

    fn start(
        dir: &std::path::Path,
        executors: Vec<&'static dyn Executor>,
        limits: Limits,
    ) -> (
        Arc<Runner>,
        tokio::sync::mpsc::UnboundedReceiver<pb::AgentMessage>,
    ) {
        let spool = Arc::new(Spool::open(dir).unwrap());
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        spool.attach(tx);
        let probe = Arc::new(HealthProbe::new("/nonexistent.sock", None, vec![]));
        let host = Arc::new(HostEnv {
            name: "web-1".into(),
            docker: Err("no Docker in unit tests".into()),
            nginx: Default::default(),
            backup_dir: std::env::temp_dir().join("ferry-runner-tests-no-backups"),
            pg_bin_dir: None,
        });
        (Runner::build(spool, probe, host, 4, executors, limits), rx)
    }

    fn assign(runner: &Arc<Runner>, kind: &str) -> Uuid {
        let task_id = Uuid::now_v7();
        runner.assign(pb::Assign {
            task: Some(pb::Task {
                task_id: task_id.to_string(),
                job_id: Uuid::now_v7().to_string(),
                kind: kind.into(),
                spec_json: String::new(),
                secrets: Default::default(),
            }),
            attempt: 1,
            traceparent: String::new(),
        });
        task_id
    }

    /// The outcomes and messages of the next `n` tasks to finish.
    async fn finished(
        rx: &mut tokio::sync::mpsc::UnboundedReceiver<pb::AgentMessage>,
        n: usize,
    ) -> Vec<(pb::TaskOutcome, String)> {
        let mut out = Vec::new();
        while out.len() < n {
            let msg = tokio::time::timeout(Duration::from_secs(20), rx.recv())
                .await
                .expect("tasks finish")
                .expect("spool open");
            if let Some(pb::agent_message::Msg::TaskEvent(ev)) = msg.msg
                && let Some(pb::event_body::Body::TaskFinished(f)) = ev.body.and_then(|b| b.body)
            {
                out.push((f.outcome(), f.message));
            }
        }
        out
    }

    fn leak(fake: Fake) -> &'static Fake {
        Box::leak(Box::new(fake))
    }

    #[tokio::test]
    async fn a_task_past_its_timeout_fails_and_its_cancellation_fires() {
        let dir = tempfile::tempdir().unwrap();
        let fake = leak(Fake {
            hang: true,
            ..Fake::default()
        });
        let (runner, mut rx) = start(dir.path(), vec![fake], |_| {
            (Duration::from_millis(50), None)
        });
        assign(&runner, "probe");
        let got = finished(&mut rx, 1).await;
        assert_eq!(
            got,
            [(
                pb::TaskOutcome::Failed,
                "probe task timed out after 50ms".to_string()
            )]
        );
        assert!(fake.cleaned_up.load(Ordering::SeqCst));
    }

    /// A cancelled task is reported only once its executor has cleaned
    /// up, with the executor's word on what the host is in; one waiting
    /// for its host lock ends at once.
    #[tokio::test]
    async fn a_cancelled_task_ends_after_its_executor_cleaned_up() {
        let dir = tempfile::tempdir().unwrap();
        let fake = leak(Fake {
            hang: true,
            ..Fake::default()
        });
        let (runner, mut rx) = start(dir.path(), vec![fake], |_| {
            (Duration::from_secs(60), Some("deploy:shop/prod".into()))
        });
        let ids: Vec<Uuid> = (0..2).map(|_| assign(&runner, "probe")).collect();
        tokio::time::sleep(Duration::from_millis(100)).await;
        // The second waits for the lock the first holds: cancelled at once.
        assert!(runner.cancel(ids[1]));
        assert_eq!(
            finished(&mut rx, 1).await,
            [(pb::TaskOutcome::Cancelled, "cancelled".to_string())]
        );
        assert!(!fake.cleaned_up.load(Ordering::SeqCst));
        assert!(runner.cancel(ids[0]));
        assert_eq!(
            finished(&mut rx, 1).await,
            [(
                pb::TaskOutcome::Cancelled,
                "cancelled; cleaned up".to_string()
            )]
        );
        assert!(fake.cleaned_up.load(Ordering::SeqCst));
        assert_eq!(runner.running_count(), 0);
    }

    #[tokio::test]
    async fn tasks_with_one_host_lock_run_one_at_a_time() {
        let dir = tempfile::tempdir().unwrap();
        let fake = leak(Fake::default());
        let (runner, mut rx) = start(dir.path(), vec![fake], |_| {
            (Duration::from_secs(60), Some("deploy:shop/prod".into()))
        });
        for _ in 0..3 {
            assign(&runner, "probe");
        }
        let got = finished(&mut rx, 3).await;
        assert!(
            got.iter().all(|(o, _)| *o == pb::TaskOutcome::Succeeded),
            "{got:?}"
        );
        assert_eq!(fake.most.load(Ordering::SeqCst), 1);
        assert!(runner.locks.0.lock().unwrap().is_empty());

        // Without a lock they run side by side, up to the task limit.
        let dir = tempfile::tempdir().unwrap();
        let fake = leak(Fake::default());
        let (runner, mut rx) = start(dir.path(), vec![fake], |_| (Duration::from_secs(60), None));
        for _ in 0..3 {
            assign(&runner, "probe");
        }
        finished(&mut rx, 3).await;
        assert_eq!(fake.most.load(Ordering::SeqCst), 3);
    }

    #[tokio::test]
    async fn kinds_the_agent_does_not_run_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let (runner, mut rx) = start(
            dir.path(),
            crate::executor::enabled(Some(&[JobKind::Probe])),
            spec_limits,
        );
        assert_eq!(runner.capabilities(), [JobKind::Probe]);
        assign(&runner, "smoke");
        assert_eq!(
            finished(&mut rx, 1).await,
            [(
                pb::TaskOutcome::Failed,
                "smoke spec: missing field `checks` at line 1 column 2".to_string()
            )]
        );
        runner.assign(pb::Assign {
            task: Some(pb::Task {
                task_id: Uuid::now_v7().to_string(),
                job_id: Uuid::now_v7().to_string(),
                kind: "smoke".into(),
                spec_json: r#"{"checks":[{"url":"http://127.0.0.1:1/"}]}"#.into(),
                secrets: Default::default(),
            }),
            attempt: 1,
            traceparent: String::new(),
        });
        assert_eq!(
            finished(&mut rx, 1).await,
            [(
                pb::TaskOutcome::Failed,
                "this agent does not run smoke tasks: it runs probe (agent.toml capabilities)"
                    .to_string()
            )]
        );
    }
}
