//! The phases run against one coordinator (one store backend), in order:
//! enroll, connect (and memory), fan-out, latency, event ingest, restart.
//! Each fills its part of the [`BackendReport`]; the first failure stops
//! the suite, keeping what was measured until then.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use ferry_common::{pki, tls};
use ferry_proto::v1 as pb;
use ferry_proto::v1::agent_service_client::AgentServiceClient;
use ferry_proto::v1::operator_service_client::OperatorServiceClient;
use futures::{StreamExt, TryStreamExt};
use tokio::sync::Semaphore;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tonic::transport::Channel;

use super::Options;
use super::agent::{Hub, Identity, SessionParams, SimAgent};
use super::coordinator::ChildCoordinator;
use super::cpu::{self, CpuSample};
use super::observe::{Observer, wait_acked};
use super::report::{BackendReport, EventsFigure, Percentiles, RestartFigure};

/// Bound on any single RPC the bench makes.
const RPC_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a coordinator may take to start answering.
const START_TIMEOUT: Duration = Duration::from_secs(60);

/// Events per agent in the restart phase: acknowledged before the kill,
/// sent just before it (mostly unacknowledged), produced while it is down.
const BEFORE_KILL: u64 = 3;
const AT_KILL: u64 = 3;
const WHILE_DOWN: u64 = 3;

fn agent_name(i: usize) -> String {
    format!("bench-{i:05}")
}

fn step_started(step: &str) -> pb::event_body::Body {
    pb::event_body::Body::StepStarted(pb::StepStarted {
        step: step.into(),
        message: String::new(),
    })
}

/// A log line of typical length (a container's output line).
fn log_line(i: u64) -> pb::event_body::Body {
    pb::event_body::Body::Log(pb::LogLine {
        step: "probe".into(),
        stream: "stdout".into(),
        line: format!(
            "{i:>6} 2025-01-01T00:00:00Z INFO request handled method=GET path=/api/health status=200 took=3ms"
        ),
    })
}

pub struct Suite<'a> {
    opts: &'a Options,
    coordinator: ChildCoordinator,
    hub: Arc<Hub>,
    observer: Observer,
    agents: Vec<Arc<SimAgent>>,
    shutdown: CancellationToken,
    sessions: Vec<JoinHandle<()>>,
    operator: Option<OperatorServiceClient<Channel>>,
    pub report: BackendReport,
}

impl<'a> Suite<'a> {
    /// Initialises a coordinator data dir under `work_dir` (`database_url`:
    /// PostgreSQL instead of SQLite).
    pub async fn new(
        opts: &'a Options,
        backend: &str,
        work_dir: &Path,
        database_url: Option<String>,
    ) -> Result<Suite<'a>> {
        let data_dir = work_dir.join(format!("coordinator-{backend}"));
        let coordinator =
            ChildCoordinator::init(&opts.coordinator_bin, &data_dir, database_url).await?;
        let (hub, rx) = Hub::new();
        let report = BackendReport {
            backend: backend.into(),
            agents: opts.agents,
            enroll_concurrency: opts.enroll_concurrency,
            coordinator_log: coordinator.log_path().display().to_string(),
            ..Default::default()
        };
        Ok(Suite {
            opts,
            coordinator,
            hub,
            observer: Observer::new(rx),
            agents: Vec::new(),
            shutdown: CancellationToken::new(),
            sessions: Vec::new(),
            operator: None,
            report,
        })
    }

    fn say(&self, what: impl std::fmt::Display) {
        eprintln!("[{}] {what}", self.report.backend);
    }

    /// Why session attempts failed since the last call, if any did.
    fn say_failure_reasons(&self) {
        for (n, reason) in self.hub.take_failure_reasons(5) {
            self.say(format!("  {n} × {reason}"));
        }
    }

    /// Every phase in order; stops at the first failure (recorded in the
    /// report, which keeps what was measured).
    pub async fn run(&mut self) {
        let result = self.phases().await;
        if let Err(e) = result {
            let text = format!("{e:#}");
            self.say(format!("FAILED: {text}"));
            self.report.error = Some(text);
        }
        if let Ok(m) = self.coordinator.memory() {
            self.report.memory_end = Some(m);
        }
        self.teardown().await;
    }

    async fn phases(&mut self) -> Result<()> {
        let up = self.coordinator.start(START_TIMEOUT).await?;
        self.say(format!("coordinator up in {up:?}"));
        self.operator = Some(self.coordinator.operator().await?);
        self.report.memory_idle = Some(self.coordinator.memory()?);
        let cpu = self.cpu();
        self.enroll().await.context("enrollment")?;
        self.note_cpu("enroll", cpu);
        self.report.memory_enrolled = Some(self.coordinator.memory()?);
        let cpu = self.cpu();
        self.connect().await.context("connect")?;
        self.note_cpu("connect", cpu);
        let cpu = self.cpu();
        self.fanout().await.context("fan-out")?;
        self.note_cpu("fan-out", cpu);
        let cpu = self.cpu();
        self.latency().await.context("latency")?;
        self.note_cpu("latency", cpu);
        let cpu = self.cpu();
        self.events().await.context("event ingest")?;
        self.note_cpu("events", cpu);
        // Notes its own share, from the new coordinator's start.
        self.restart().await.context("restart")?;
        Ok(())
    }

    fn cpu(&self) -> Option<CpuSample> {
        cpu::sample(self.coordinator.pid().ok())
    }

    /// Records how much of the machine other processes (and PostgreSQL)
    /// took since `before`.
    fn note_cpu(&mut self, phase: &'static str, before: Option<CpuSample>) {
        if let (Some(b), Some(a)) = (before, self.cpu())
            && let Some(shares) = cpu::shares(&b, &a)
        {
            self.report.cpu.push((phase, shares));
            if shares.other > 0.1 {
                self.say(format!(
                    "note: other processes used {:.0}% of the machine during {phase}",
                    shares.other * 100.0
                ));
            }
        }
    }

    fn op(&self) -> Result<OperatorServiceClient<Channel>> {
        self.operator.clone().context("no operator connection")
    }

    async fn enroll(&mut self) -> Result<()> {
        let n = self.opts.agents;
        self.say(format!(
            "enrolling {n} agents ({} in flight)…",
            self.opts.enroll_concurrency
        ));
        let started = Instant::now();
        let op = self.op()?;
        let url = self.coordinator.url.clone();
        let done = std::sync::atomic::AtomicUsize::new(0);
        let step = (n / 10).max(1);
        let identities: Vec<Identity> = futures::stream::iter(0..n)
            .map(|i| {
                let (op, url) = (op.clone(), url.clone());
                async move {
                    enroll_one(op, &url, &agent_name(i))
                        .await
                        .with_context(|| format!("enrolling {}", agent_name(i)))
                }
            })
            .buffered(self.opts.enroll_concurrency.max(1))
            .inspect_ok(|_| {
                let k = done.fetch_add(1, std::sync::atomic::Ordering::Relaxed) + 1;
                if k.is_multiple_of(step) {
                    eprintln!(
                        "  … enrolled {k}/{n} ({:.0}/s)",
                        k as f64 / started.elapsed().as_secs_f64()
                    );
                }
            })
            .try_collect()
            .await?;
        let took = started.elapsed();
        self.report.enroll = Some(took);
        self.agents = identities
            .into_iter()
            .enumerate()
            .map(|(i, id)| SimAgent::new(i, id, Arc::clone(&self.hub)))
            .collect();
        self.say(format!("enrolled {n} agents in {took:.2?}"));
        Ok(())
    }

    async fn connect(&mut self) -> Result<()> {
        let n = self.agents.len();
        let gate = (self.opts.connect_concurrency > 0)
            .then(|| Arc::new(Semaphore::new(self.opts.connect_concurrency)));
        let params = Arc::new(SessionParams {
            url: self.coordinator.url.clone(),
            heartbeats: self.opts.heartbeats,
            first_connect_gate: gate,
        });
        self.say(format!("connecting {n} agents…"));
        let failed_before = self.hub.failed_attempts();
        let started = Instant::now();
        self.observer.count_sessions_from(started);
        for agent in &self.agents {
            self.sessions.push(tokio::spawn(
                Arc::clone(agent).run(Arc::clone(&params), self.shutdown.clone()),
            ));
        }
        let within = self
            .opts
            .wait_timeout
            .max(Duration::from_millis(50 * n as u64));
        let last = self
            .observer
            .wait_sessions(&self.agents, within, "connect")
            .await?;
        let took = last - started;
        let failed = self.hub.failed_attempts() - failed_before;
        self.report.connect = Some(took);
        self.report.connect_failed_attempts = Some(failed);
        self.say(format!(
            "all {n} sessions up in {took:.2?} ({failed} attempts failed before Welcome)"
        ));
        self.say_failure_reasons();
        // Let the work that follows a Hello (reconcile, first heartbeats)
        // finish before taking the memory figure.
        tokio::time::sleep(self.opts.settle).await;
        let m = self.coordinator.memory()?;
        self.report.memory_connected = Some(m);
        self.say(format!(
            "coordinator RSS {} MiB with {n} sessions ({:.1} KiB per agent over idle)",
            m.rss_kib / 1024,
            self.report.per_agent_kib().unwrap_or_default()
        ));
        Ok(())
    }

    /// Submits a probe job as the admin; returns its id and the RPC's time.
    async fn submit(&self, agents: Vec<String>) -> Result<(String, Duration)> {
        let mut op = self.op()?;
        let started = Instant::now();
        let reply = tokio::time::timeout(
            RPC_TIMEOUT,
            op.submit_job(pb::SubmitJobRequest {
                kind: "probe".into(),
                spec_json: "{}".into(),
                target: Some(pb::Selector {
                    agents,
                    labels: Default::default(),
                }),
                idempotency_key: String::new(),
                deadline_seconds: 0,
            }),
        )
        .await
        .context("SubmitJob did not answer within 30s")?
        .context("SubmitJob failed")?
        .into_inner();
        let took = started.elapsed();
        let job = reply.job.context("SubmitJob returned no job")?;
        Ok((job.id, took))
    }

    async fn get_job(&self, job_id: &str) -> Result<pb::Job> {
        let mut op = self.op()?;
        tokio::time::timeout(
            RPC_TIMEOUT,
            op.get_job(pb::GetJobRequest {
                job_id: job_id.into(),
            }),
        )
        .await
        .context("GetJob did not answer within 30s")?
        .context("GetJob failed")?
        .into_inner()
        .job
        .context("GetJob returned no job")
    }

    /// Polls until the job has ended; returns it.
    async fn wait_job_end(&self, job_id: &str, within: Duration) -> Result<pb::Job> {
        let deadline = Instant::now() + within;
        loop {
            let job = self.get_job(job_id).await?;
            if matches!(job.status.as_str(), "succeeded" | "failed" | "cancelled") {
                return Ok(job);
            }
            if Instant::now() > deadline {
                let mut states: HashMap<&str, usize> = HashMap::new();
                for t in &job.tasks {
                    *states.entry(t.state.as_str()).or_default() += 1;
                }
                bail!(
                    "job {job_id} still {} after {within:?}; its tasks: {states:?}",
                    job.status
                );
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }

    async fn fanout(&mut self) -> Result<()> {
        let n = self.agents.len();
        self.say(format!("fan-out: one probe job to all {n} agents…"));
        let started = Instant::now();
        let (job_id, rpc) = self.submit(Vec::new()).await?;
        let assigned = self
            .observer
            .wait_assigns(&job_id, n, self.opts.wait_timeout, &self.agents)
            .await?;
        let last = assigned.iter().map(|a| a.at).max().unwrap_or(started);
        let took = last - started;
        self.report.fanout = Some(took);
        self.report.fanout_submit_rpc = Some(rpc);
        self.say(format!(
            "every agent had its Assign {took:.2?} after submit (SubmitJob answered in {rpc:.2?})"
        ));
        for a in &assigned {
            let agent = &self.agents[a.agent];
            agent.emit(&a.task_id, step_started("probe"));
            agent.finish(&a.task_id);
        }
        let target = self.hub.emitted();
        wait_acked(&self.hub, target, self.opts.wait_timeout, "fan-out results").await?;
        let job = self.wait_job_end(&job_id, self.opts.wait_timeout).await?;
        if job.status != "succeeded" {
            bail!("the fan-out job ended {}", job.status);
        }
        let done = started.elapsed();
        self.report.fanout_done = Some(done);
        self.say(format!("the fan-out job succeeded {done:.2?} after submit"));
        Ok(())
    }

    async fn latency(&mut self) -> Result<()> {
        let (jobs, n) = (self.opts.jobs, self.agents.len());
        self.say(format!(
            "latency: {jobs} jobs, one agent each, one after another…"
        ));
        let mut latencies = Vec::with_capacity(jobs);
        let mut rpcs = Vec::with_capacity(jobs);
        for i in 0..jobs {
            let agent = Arc::clone(&self.agents[i % n]);
            let started = Instant::now();
            let (job_id, rpc) = self.submit(vec![agent.identity.name.clone()]).await?;
            let assigned = self
                .observer
                .wait_assigns(
                    &job_id,
                    1,
                    Duration::from_secs(10),
                    std::slice::from_ref(&agent),
                )
                .await?;
            let a = &assigned[0];
            latencies.push(a.at - started);
            rpcs.push(rpc);
            // Finish it, as a probe would: the coordinator ingests that
            // while the next job is submitted, as in steady operation.
            agent.emit(&a.task_id, step_started("probe"));
            agent.finish(&a.task_id);
            if (i + 1).is_multiple_of((jobs / 5).max(1)) {
                eprintln!("  … {}/{jobs} jobs", i + 1);
            }
        }
        let target = self.hub.emitted();
        wait_acked(
            &self.hub,
            target,
            self.opts.wait_timeout,
            "latency jobs' events",
        )
        .await?;
        let l = Percentiles::of(latencies).context("no latency samples")?;
        self.report.latency = Some(l);
        self.report.submit_rpc = Percentiles::of(rpcs);
        self.say(format!(
            "submit→Assign p50 {:.2?}, p99 {:.2?}, max {:.2?}",
            l.p50, l.p99, l.max
        ));
        Ok(())
    }

    async fn events(&mut self) -> Result<()> {
        let e = self.opts.events_agents.min(self.agents.len());
        let m = self.opts.events_per_agent.max(2);
        self.say(format!(
            "event ingest: {e} agents × {m} events, as fast as the streams take them…"
        ));
        let names = self.agents[..e]
            .iter()
            .map(|a| a.identity.name.clone())
            .collect();
        let (job_id, _) = self.submit(names).await?;
        let assigned = self
            .observer
            .wait_assigns(&job_id, e, self.opts.wait_timeout, &self.agents[..e])
            .await?;
        let base = self.hub.emitted();
        wait_acked(&self.hub, base, self.opts.wait_timeout, "earlier events").await?;
        let started = Instant::now();
        let emitters: Vec<JoinHandle<()>> = assigned
            .iter()
            .map(|a| {
                let agent = Arc::clone(&self.agents[a.agent]);
                let task = a.task_id.clone();
                tokio::spawn(async move {
                    agent.emit(&task, step_started("probe"));
                    for k in 0..m - 2 {
                        agent.emit(&task, log_line(k));
                    }
                    agent.finish(&task);
                })
            })
            .collect();
        for h in emitters {
            h.await?;
        }
        let done = wait_acked(
            &self.hub,
            base + e as u64 * m,
            self.opts.wait_timeout,
            "event ingest",
        )
        .await?;
        let figure = EventsFigure {
            agents: e,
            per_agent: m,
            elapsed: done - started,
        };
        self.report.events = Some(figure);
        self.say(format!(
            "{} events acknowledged in {:.2?}: {:.0} events/s",
            figure.events(),
            figure.elapsed,
            figure.per_second()
        ));
        let job = self.wait_job_end(&job_id, self.opts.wait_timeout).await?;
        let short: Vec<&pb::JobTask> = job.tasks.iter().filter(|t| t.last_seq != m).collect();
        if job.status != "succeeded" || !short.is_empty() {
            bail!(
                "the ingest job ended {} with {} of {e} tasks not at seq {m} (e.g. {:?})",
                job.status,
                short.len(),
                short.first().map(|t| (&t.agent_name, t.last_seq, &t.state))
            );
        }
        Ok(())
    }

    async fn restart(&mut self) -> Result<()> {
        let n = self.agents.len();
        self.say(format!(
            "restart: all {n} agents mid-task, then SIGKILL the coordinator…"
        ));
        let (job_id, _) = self.submit(Vec::new()).await?;
        let assigned = self
            .observer
            .wait_assigns(&job_id, n, self.opts.wait_timeout, &self.agents)
            .await?;
        let emit_each = |count: u64, first: u64| {
            for a in &assigned {
                let agent = &self.agents[a.agent];
                for k in 0..count {
                    let seq = first + k;
                    if seq == 1 {
                        agent.emit(&a.task_id, step_started("probe"));
                    } else {
                        agent.emit(&a.task_id, log_line(seq));
                    }
                }
            }
        };
        emit_each(BEFORE_KILL, 1);
        wait_acked(
            &self.hub,
            self.hub.emitted(),
            self.opts.wait_timeout,
            "events before the kill",
        )
        .await?;
        self.observer.count_sessions_from(Instant::now());
        let failed_before = self.hub.failed_attempts();
        emit_each(AT_KILL, BEFORE_KILL + 1);
        let killed = Instant::now();
        self.coordinator.kill().await?;
        let unacked_at_kill = self.hub.emitted() - self.hub.acked();
        self.operator = None;
        self.say(format!(
            "killed; {unacked_at_kill} events unacknowledged; agents keep working while it is down"
        ));
        emit_each(WHILE_DOWN, BEFORE_KILL + AT_KILL + 1);
        let spawned = Instant::now();
        self.coordinator.spawn()?;
        let ready = self.coordinator.wait_listening(START_TIMEOUT).await?;
        let cpu = self.cpu();
        self.say(format!(
            "coordinator listening again {ready:.2?} after start"
        ));
        let last = self
            .observer
            .wait_sessions(&self.agents, self.opts.wait_timeout, "reconnect")
            .await?;
        let stored = wait_acked(
            &self.hub,
            self.hub.emitted(),
            self.opts.wait_timeout,
            "replayed events",
        )
        .await?;
        let mut figure = RestartFigure {
            unacked_at_kill,
            produced_while_down: WHILE_DOWN * n as u64,
            coordinator_listening: ready,
            all_back_from_kill: last - killed,
            all_back_from_start: last.saturating_duration_since(spawned),
            all_stored_from_kill: stored - killed,
            failed_attempts: self.hub.failed_attempts() - failed_before,
            ..Default::default()
        };
        self.say(format!(
            "all {n} back {:.2?} after the kill ({} attempts failed before Welcome); every event stored {:.2?} after it",
            figure.all_back_from_kill, figure.failed_attempts, figure.all_stored_from_kill
        ));
        self.say_failure_reasons();
        self.operator = Some(
            self.coordinator
                .operator_within(self.opts.wait_timeout)
                .await?,
        );
        for a in &assigned {
            self.agents[a.agent].finish(&a.task_id);
        }
        let target = self.hub.emitted();
        wait_acked(&self.hub, target, self.opts.wait_timeout, "final events").await?;
        let job = self.wait_job_end(&job_id, self.opts.wait_timeout).await?;
        figure.job_status = job.status.clone();
        self.verify(&job, &assigned, &mut figure).await?;
        self.say(format!(
            "checked {} tasks, {} events: {} lost, {} duplicated, {} tasks wrong; job {}",
            figure.tasks_checked,
            figure.events_checked,
            figure.lost,
            figure.duplicated,
            figure.mismatched_tasks,
            figure.job_status
        ));
        self.report.restart = Some(figure);
        self.note_cpu("restart", cpu);
        Ok(())
    }

    /// Every task's stored events must be exactly 1..=last, where last is
    /// what its agent produced: `GetJob` for `last_seq` and the state, and
    /// the full event stream (`WatchJob` from 0) for gaps and duplicates.
    async fn verify(
        &self,
        job: &pb::Job,
        assigned: &[super::observe::Assigned],
        figure: &mut RestartFigure,
    ) -> Result<()> {
        let expected: HashMap<&str, u64> = assigned
            .iter()
            .map(|a| {
                let last = self.agents[a.agent].produced(&a.task_id).unwrap_or(0);
                (a.task_id.as_str(), last)
            })
            .collect();
        for t in &job.tasks {
            let want = expected.get(t.id.as_str()).copied().unwrap_or(0);
            if t.last_seq != want || t.state != "succeeded" {
                figure.mismatched_tasks += 1;
                if figure.mismatched_tasks <= 3 {
                    self.say(format!(
                        "task {} on {}: stored last_seq {} (agent sent {want}), state {}",
                        t.id, t.agent_name, t.last_seq, t.state
                    ));
                }
            }
        }
        let mut op = self.op()?;
        let mut stream = tokio::time::timeout(
            RPC_TIMEOUT,
            op.watch_job(pb::WatchJobRequest {
                job_id: job.id.clone(),
                after_seq: 0,
            }),
        )
        .await
        .context("WatchJob did not answer within 30s")??
        .into_inner();
        let mut seen: HashMap<String, Vec<u64>> = HashMap::new();
        tokio::time::timeout(self.opts.wait_timeout, async {
            while let Some(ev) = stream.message().await? {
                if ev.task_seq > 0 {
                    seen.entry(ev.task_id).or_default().push(ev.task_seq);
                }
            }
            anyhow::Ok(())
        })
        .await
        .context("WatchJob did not end")??;
        figure.tasks_checked = expected.len();
        for (task, want) in &expected {
            let mut got = seen.remove(*task).unwrap_or_default();
            figure.events_checked += got.len() as u64;
            got.sort_unstable();
            let len = got.len() as u64;
            got.dedup();
            figure.duplicated += len - got.len() as u64;
            let present = got.iter().filter(|s| (1..=*want).contains(*s)).count() as u64;
            figure.lost += want - present;
        }
        Ok(())
    }

    async fn teardown(&mut self) {
        self.shutdown.cancel();
        for h in std::mem::take(&mut self.sessions) {
            if tokio::time::timeout(Duration::from_secs(10), h)
                .await
                .is_err()
            {
                self.say("an agent session did not stop within 10s");
            }
        }
        self.operator = None;
        if let Err(e) = self.coordinator.kill().await {
            self.say(format!("stopping the coordinator: {e:#}"));
        }
    }
}

/// One agent's enrollment, as `ferry-agent enroll` does it: a join token
/// from the admin, a key and CSR made here, the CA pinned by fingerprint,
/// its own connection.
async fn enroll_one(
    mut op: OperatorServiceClient<Channel>,
    url: &str,
    name: &str,
) -> Result<Identity> {
    let token = tokio::time::timeout(
        RPC_TIMEOUT,
        op.create_join_token(pb::CreateJoinTokenRequest {
            name: name.into(),
            labels: [("fleet".to_string(), "bench".to_string())].into(),
            ttl_seconds: 0,
        }),
    )
    .await
    .context("CreateJoinToken did not answer within 30s")??
    .into_inner();
    let (key_pem, csr_pem) = pki::generate_key_and_csr(name)?;
    let (config, _) = tls::pinned_client_config(&token.ca_pin)?;
    let channel = tokio::time::timeout(RPC_TIMEOUT, tls::channel(url, config))
        .await
        .context("no connection for Enroll within 30s")??;
    let reply = tokio::time::timeout(
        RPC_TIMEOUT,
        AgentServiceClient::new(channel).enroll(pb::EnrollRequest {
            token: token.token,
            csr_pem,
            hostname: name.into(),
            name: String::new(),
            version: ferry_common::VERSION.into(),
        }),
    )
    .await
    .context("Enroll did not answer within 30s")??
    .into_inner();
    Ok(Identity {
        id: reply.agent_id,
        name: reply.name,
        ca_pem: reply.ca_pem,
        cert_pem: reply.certificate_pem,
        key_pem,
    })
}
