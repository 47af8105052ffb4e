//! `ferry-deploy-bench`: how much longer a deploy takes through Ferry than
//! the same work done by hand with the Docker API. A benchmark program that
//! prints figures, not a test: see BENCHMARKS.md.
//!
//! Ferry: an in-process coordinator (SQLite) and agent from the test
//! harness; a `deploy` job of one service (the example app, `recreate`,
//! HTTP health on `/health` every `--interval-ms`), timed from just before
//! `SubmitJob` until the operator's `WatchJob` stream ends with the job
//! succeeded. Direct: the container config the agent would create, created
//! and started with bollard, then `GET /health` at the same interval until
//! it answers 2xx. Runs alternate which goes first; every container is
//! removed between runs; the image is local (`pull = "never"`) and the
//! app's network exists beforehand, for both.
//!
//! With `--via rollout`, the Ferry side is what `ferry deploy` does instead:
//! `StartRollout` with an app file of that one service, each step's job
//! watched, `GetRollout` until the rollout has ended and recorded the
//! release (the CLI's own polling: from 2 ms, doubling to 200 ms).

use std::collections::HashMap;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use bollard::Docker;
use bollard::models::{
    ContainerCreateBody, HostConfig, NetworkCreateRequest, PortBinding,
    RestartPolicy as DockerRestart, RestartPolicyNameEnum,
};
use bollard::query_parameters::{
    CreateContainerOptions, InspectContainerOptions, InspectNetworkOptions, ListContainersOptions,
    RemoveContainerOptions, StartContainerOptions,
};
use clap::{Parser, ValueEnum};
use ferry_agent::executor::http::HttpClient;
use ferry_common::job::naming::{self, LABEL_APP, LABEL_ENV, LABEL_RELEASE, LABEL_SERVICE};
use ferry_integration_tests::{CoordinatorOptions, TestCoordinator};
use ferry_proto::v1 as pb;
use serde_json::{Value, json};

const APP: &str = "deploybench";
const ENV: &str = "bench";
const SERVICE: &str = "web";
const AGENT: &str = "bench-1";
/// The figure Ferry is held to: its median deploy at most this many times
/// the direct one.
const TARGET_RATIO: f64 = 1.05;

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Output {
    Table,
    Json,
}

/// What a deploy through Ferry is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Via {
    /// One `deploy` job: `SubmitJob`, then `WatchJob` until it ends.
    Job,
    /// A rollout as `ferry deploy` runs it: lock, plan, the deploy job,
    /// the release record.
    Rollout,
}

#[derive(Debug, Parser)]
#[command(
    name = "ferry-deploy-bench",
    about = "Compare a deploy through Ferry with the same work done directly with the Docker API"
)]
struct Args {
    /// Timed runs of each (after --warmup untimed ones).
    #[arg(long, default_value_t = 10)]
    runs: usize,
    /// Untimed runs of each first (the first container start of an image is slower).
    #[arg(long, default_value_t = 1)]
    warmup: usize,
    /// The image to deploy; must be local (deploy/example/build-image.sh bench
    /// builds ferry-example:bench).
    #[arg(long, default_value = "ferry-example:bench")]
    image: String,
    /// Interval of the HTTP health check, both ways.
    #[arg(long, default_value_t = 100)]
    interval_ms: u64,
    /// Longest a single deploy may take.
    #[arg(long, default_value_t = 60)]
    timeout: u64,
    /// A table for people, or JSON for tools (progress always goes to stderr).
    #[arg(long, value_enum, default_value_t = Output::Table)]
    output: Output,
    /// Through a bare deploy job, or through a rollout (`ferry deploy`).
    #[arg(long, value_enum, default_value_t = Via::Job)]
    via: Via,
}

fn main() -> std::process::ExitCode {
    let args = Args::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: cannot start the runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    let outcome = runtime.block_on(run(&args));
    runtime.shutdown_timeout(Duration::from_secs(1));
    match outcome {
        Ok(report) => {
            match args.output {
                Output::Table => print!("{}", report.table()),
                Output::Json => println!(
                    "{}",
                    serde_json::to_string_pretty(&report.json()).unwrap_or_default()
                ),
            }
            std::process::ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn ms(d: Duration) -> f64 {
    (d.as_secs_f64() * 1e6).round() / 1e3
}

/// Median, p90 (nearest rank), mean, min, max.
#[derive(Debug, Clone, Copy, Default)]
struct Stats {
    median: Duration,
    p90: Duration,
    mean: Duration,
    min: Duration,
    max: Duration,
}

impl Stats {
    fn of(samples: &[Duration]) -> Stats {
        if samples.is_empty() {
            return Stats::default();
        }
        let mut s = samples.to_vec();
        s.sort();
        let n = s.len();
        let rank = |p: f64| s[((p * n as f64).ceil() as usize).clamp(1, n) - 1];
        // The median of an even count is the mean of the middle two.
        let median = if n.is_multiple_of(2) {
            (s[n / 2 - 1] + s[n / 2]) / 2
        } else {
            s[n / 2]
        };
        Stats {
            median,
            p90: rank(0.90),
            mean: s.iter().sum::<Duration>() / n as u32,
            min: s[0],
            max: s[n - 1],
        }
    }

    fn json(&self) -> Value {
        json!({
            "median_ms": ms(self.median),
            "p90_ms": ms(self.p90),
            "mean_ms": ms(self.mean),
            "min_ms": ms(self.min),
            "max_ms": ms(self.max),
        })
    }
}

/// Where one Ferry deploy's time went, from the job's events (the agent
/// and the coordinator stamp them with the same clock as this process).
#[derive(Debug, Clone, Default)]
struct FerrySplit {
    /// Just before `SubmitJob` until its answer.
    submit_rpc: Duration,
    /// Just before `SubmitJob` until the agent's first event (`image`
    /// started): dispatch, `Assign`, and the executor's network inspect and
    /// container list.
    to_first_event: Duration,
    /// The `image` step (an image inspect).
    image: Duration,
    /// The `start` step (create + start).
    start: Duration,
    /// The `health` step.
    health: Duration,
    /// End of `health` until the agent's `TaskFinished`: the port lookup,
    /// the look for old containers, the spool's fsync.
    after_health: Duration,
    /// The agent's `TaskFinished` until the coordinator's `JobFinished`.
    to_job_finished: Duration,
    /// `JobFinished` until the watch stream ended here.
    to_watch_end: Duration,
    /// Health attempts (1 + failed ones).
    health_attempts: usize,
}

struct Split {
    create_start: Duration,
    port_lookup: Duration,
    health: Duration,
    health_attempts: usize,
}

struct Bench<'a> {
    args: &'a Args,
    docker: Docker,
    http: HttpClient,
    coordinator: TestCoordinator,
}

fn spec(image: &str, release: &str, interval_ms: u64) -> String {
    json!({
        "app": APP, "env": ENV, "release": release,
        "services": [{
            "name": SERVICE,
            "image": image,
            "pull": "never",
            "ports": [{"container": 8080}],
            "restart": "unless-stopped",
            "health": {"check": {"http": {"path": "/health"}}, "interval": format!("{interval_ms}ms"), "timeout": "1s", "retries": 600},
            "strategy": "recreate",
        }]
    })
    .to_string()
}

/// The app file of the same deploy, for `--via rollout`.
fn app_file(image: &str, interval_ms: u64) -> String {
    format!(
        r#"app = "{APP}"

[environments.{ENV}]
agents = ["{AGENT}"]

[services.{SERVICE}]
image = "{image}"
pull = "never"
ports = [8080]
restart = "unless-stopped"
strategy = "recreate"

[services.{SERVICE}.healthcheck]
http = "/health"
interval = "{interval_ms}ms"
timeout = "1s"
retries = 600
"#
    )
}

/// `ferry deploy`'s pause between looks at a rollout: from 2 ms, doubling
/// to 200 ms (cli/src/rollout.rs).
const ROLLOUT_POLL_FIRST: Duration = Duration::from_millis(2);
const ROLLOUT_POLL_MAX: Duration = Duration::from_millis(200);

impl Bench<'_> {
    fn timeout(&self) -> Duration {
        Duration::from_secs(self.args.timeout.max(1))
    }

    fn interval(&self) -> Duration {
        Duration::from_millis(self.args.interval_ms.max(1))
    }

    /// Removes every container of the app.
    async fn clean(&self) -> Result<()> {
        let filters = HashMap::from([("label".to_string(), vec![format!("{LABEL_APP}={APP}")])]);
        let list = self
            .docker
            .list_containers(Some(ListContainersOptions {
                all: true,
                filters: Some(filters),
                ..Default::default()
            }))
            .await?;
        for c in list {
            if let Some(id) = c.id {
                self.docker
                    .remove_container(
                        &id,
                        Some(RemoveContainerOptions {
                            force: true,
                            ..Default::default()
                        }),
                    )
                    .await?;
            }
        }
        Ok(())
    }

    /// The app's network, as the agent creates it, so that neither side
    /// pays for its creation.
    async fn ensure_network(&self) -> Result<()> {
        let name = naming::network(APP, ENV);
        if self
            .docker
            .inspect_network(&name, None::<InspectNetworkOptions>)
            .await
            .is_ok()
        {
            return Ok(());
        }
        self.docker
            .create_network(NetworkCreateRequest {
                name,
                labels: Some(HashMap::from([
                    (LABEL_APP.to_string(), APP.to_string()),
                    (LABEL_ENV.to_string(), ENV.to_string()),
                ])),
                ..Default::default()
            })
            .await?;
        Ok(())
    }

    async fn remove_network(&self) {
        let _ = self.docker.remove_network(&naming::network(APP, ENV)).await;
    }

    /// One deploy through Ferry, as `--via` says.
    async fn ferry(&self, release: &str) -> Result<(Duration, FerrySplit)> {
        match self.args.via {
            Via::Job => self.ferry_job(release).await,
            Via::Rollout => self.ferry_rollout(release).await,
        }
    }

    /// One deploy through a rollout, followed as `ferry deploy` follows it:
    /// each step's job watched to its end, the rollout read until it ends.
    async fn ferry_rollout(&self, release: &str) -> Result<(Duration, FerrySplit)> {
        let mut client = self.coordinator.operator().await?;
        let started = Instant::now();
        let started_ms = ferry_common::time::now_ms();
        let rollout = client
            .start_rollout(pb::StartRolloutRequest {
                accessories_only: false,
                accessories: Vec::new(),
                app_file: app_file(&self.args.image, self.args.interval_ms),
                file_name: "ferry.toml".into(),
                env: ENV.into(),
                version: release.into(),
                dry_run: false,
            })
            .await?
            .into_inner()
            .rollout
            .context("StartRollout returned no rollout")?;
        let start_rpc = started.elapsed();
        let mut events = Vec::new();
        let mut followed = 0;
        let mut pause = ROLLOUT_POLL_FIRST;
        let ended = tokio::time::timeout(self.timeout(), async {
            loop {
                let r = client
                    .get_rollout(pb::GetRolloutRequest {
                        rollout_id: rollout.id.clone(),
                    })
                    .await?
                    .into_inner()
                    .rollout
                    .context("GetRollout returned no rollout")?;
                if let Some(step) = r.steps.get(followed) {
                    let mut stream = client
                        .watch_job(pb::WatchJobRequest {
                            job_id: step.job_id.clone(),
                            after_seq: 0,
                        })
                        .await?
                        .into_inner();
                    while let Some(e) = stream.message().await? {
                        events.push(e);
                    }
                    followed += 1;
                    pause = ROLLOUT_POLL_FIRST;
                    continue;
                }
                if r.status != "running" {
                    return Ok::<_, anyhow::Error>(r);
                }
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(ROLLOUT_POLL_MAX);
            }
        })
        .await
        .with_context(|| {
            format!(
                "the Ferry rollout of {release} took over {:?}",
                self.timeout()
            )
        })??;
        let elapsed = started.elapsed();
        if ended.status != "succeeded" || followed != 1 {
            bail!(
                "the Ferry rollout of {release} ended {} after {followed} step(s): {}",
                ended.status,
                ended.message
            );
        }
        let ended_ms = started_ms + elapsed.as_millis() as i64;
        Ok((elapsed, split_of(&events, started_ms, ended_ms, start_rpc)))
    }

    /// One deploy job through Ferry.
    async fn ferry_job(&self, release: &str) -> Result<(Duration, FerrySplit)> {
        let spec = spec(&self.args.image, release, self.args.interval_ms);
        let mut client = self.coordinator.operator().await?;
        let started = Instant::now();
        let started_ms = ferry_common::time::now_ms();
        let job = client
            .submit_job(pb::SubmitJobRequest {
                kind: "deploy".into(),
                spec_json: spec,
                target: Some(pb::Selector {
                    agents: vec![AGENT.into()],
                    labels: Default::default(),
                }),
                idempotency_key: String::new(),
                deadline_seconds: 0,
            })
            .await?
            .into_inner()
            .job
            .context("SubmitJob returned no job")?;
        let submit_rpc = started.elapsed();
        let mut stream = client
            .watch_job(pb::WatchJobRequest {
                job_id: job.id.clone(),
                after_seq: 0,
            })
            .await?
            .into_inner();
        let mut events = Vec::new();
        tokio::time::timeout(self.timeout(), async {
            while let Some(e) = stream.message().await? {
                events.push(e);
            }
            Ok::<_, anyhow::Error>(())
        })
        .await
        .with_context(|| {
            format!(
                "the Ferry deploy of {release} took over {:?}",
                self.timeout()
            )
        })??;
        let elapsed = started.elapsed();
        let ended_ms = started_ms + elapsed.as_millis() as i64;
        let job = self.coordinator.job(&job.id).await?;
        if job.status != "succeeded" {
            bail!(
                "the Ferry deploy of {release} ended {}: {job:#?}",
                job.status
            );
        }
        Ok((elapsed, split_of(&events, started_ms, ended_ms, submit_rpc)))
    }

    /// The same work directly: the container config the agent creates,
    /// created, started, and polled at the same interval until healthy.
    async fn direct(&self, release: &str) -> Result<(Duration, Split)> {
        let name = format!(
            "{}-direct",
            naming::container_prefix(APP, ENV, SERVICE, release)
        );
        let body = ContainerCreateBody {
            image: Some(self.args.image.clone()),
            cmd: None,
            env: Some(Vec::new()),
            labels: Some(HashMap::from([
                (LABEL_APP.to_string(), APP.to_string()),
                (LABEL_ENV.to_string(), ENV.to_string()),
                (LABEL_SERVICE.to_string(), SERVICE.to_string()),
                (LABEL_RELEASE.to_string(), release.to_string()),
            ])),
            user: None,
            exposed_ports: Some(vec!["8080/tcp".to_string()]),
            host_config: Some(HostConfig {
                port_bindings: Some(HashMap::from([(
                    "8080/tcp".to_string(),
                    Some(vec![PortBinding {
                        host_ip: Some("127.0.0.1".into()),
                        host_port: Some(String::new()),
                    }]),
                )])),
                restart_policy: Some(DockerRestart {
                    name: Some(RestartPolicyNameEnum::UNLESS_STOPPED),
                    maximum_retry_count: None,
                }),
                network_mode: Some(naming::network(APP, ENV)),
                ..Default::default()
            }),
            ..Default::default()
        };
        let started = Instant::now();
        let created = self
            .docker
            .create_container(
                Some(CreateContainerOptions {
                    name: Some(name.clone()),
                    ..Default::default()
                }),
                body,
            )
            .await
            .with_context(|| format!("create {name}"))?;
        self.docker
            .start_container(&created.id, None::<StartContainerOptions>)
            .await
            .with_context(|| format!("start {name}"))?;
        let create_start = started.elapsed();
        let c = self
            .docker
            .inspect_container(&created.id, None::<InspectContainerOptions>)
            .await?;
        let port: u16 = c
            .network_settings
            .and_then(|n| n.ports)
            .and_then(|p| {
                p.values()
                    .flatten()
                    .flatten()
                    .find(|b| b.host_ip.as_deref() == Some("127.0.0.1"))
                    .and_then(|b| b.host_port.as_deref()?.parse().ok())
            })
            .context("no published port")?;
        let port_lookup = started.elapsed() - create_start;
        let url = format!("http://127.0.0.1:{port}/health");
        let mut attempts = 0;
        loop {
            attempts += 1;
            match self.http.get(&url, Duration::from_secs(1)).await {
                Ok(a) if (200..300).contains(&a.status) => break,
                _ if started.elapsed() > self.timeout() => {
                    bail!("{name} not healthy within {:?}", self.timeout())
                }
                _ => tokio::time::sleep(self.interval()).await,
            }
        }
        let elapsed = started.elapsed();
        Ok((
            elapsed,
            Split {
                create_start,
                port_lookup,
                health: elapsed - create_start - port_lookup,
                health_attempts: attempts,
            },
        ))
    }

    /// The Docker calls the executor makes that the direct path does not,
    /// each timed alone: (name, median).
    async fn extra_calls(&self, n: usize) -> Result<Vec<(&'static str, Duration)>> {
        let mut network = Vec::new();
        let mut list = Vec::new();
        let mut image = Vec::new();
        let mut inspect = Vec::new();
        // A container to inspect (as the health gate does each attempt).
        let (_, _) = self.direct("extra-calls").await?;
        let filters = HashMap::from([(
            "label".to_string(),
            vec![
                format!("{LABEL_APP}={APP}"),
                format!("{LABEL_ENV}={ENV}"),
                format!("{LABEL_SERVICE}={SERVICE}"),
            ],
        )]);
        let name = format!(
            "{}-direct",
            naming::container_prefix(APP, ENV, SERVICE, "extra-calls")
        );
        for _ in 0..n {
            let t = Instant::now();
            self.docker
                .inspect_network(&naming::network(APP, ENV), None::<InspectNetworkOptions>)
                .await?;
            network.push(t.elapsed());
            let t = Instant::now();
            self.docker
                .list_containers(Some(ListContainersOptions {
                    all: true,
                    filters: Some(filters.clone()),
                    ..Default::default()
                }))
                .await?;
            list.push(t.elapsed());
            let t = Instant::now();
            self.docker.inspect_image(&self.args.image).await?;
            image.push(t.elapsed());
            let t = Instant::now();
            self.docker
                .inspect_container(&name, None::<InspectContainerOptions>)
                .await?;
            inspect.push(t.elapsed());
        }
        self.clean().await?;
        Ok(vec![
            ("inspect network", Stats::of(&network).median),
            ("list containers", Stats::of(&list).median),
            ("inspect image", Stats::of(&image).median),
            ("inspect container", Stats::of(&inspect).median),
        ])
    }
}

/// Reads the job's events into a [`FerrySplit`].
fn split_of(
    events: &[pb::JobEvent],
    started_ms: i64,
    ended_ms: i64,
    submit_rpc: Duration,
) -> FerrySplit {
    use pb::event_body::Body;
    let d = |from: i64, to: i64| Duration::from_millis((to - from).max(0) as u64);
    let mut first_agent = None;
    let mut steps: HashMap<String, (i64, i64)> = HashMap::new();
    let mut task_finished = None;
    let mut job_finished = None;
    let mut health_attempts = 1;
    for e in events {
        let Some(body) = e.body.as_ref().and_then(|b| b.body.as_ref()) else {
            continue;
        };
        if e.task_seq > 0 && first_agent.is_none() {
            first_agent = Some(e.at_ms);
        }
        match body {
            Body::StepStarted(s) => {
                steps
                    .entry(step_kind(&s.step))
                    .or_insert((e.at_ms, e.at_ms));
            }
            Body::StepFinished(s) => {
                if let Some(span) = steps.get_mut(&step_kind(&s.step)) {
                    span.1 = e.at_ms;
                }
            }
            Body::Log(l) if l.step.starts_with("health") => health_attempts += 1,
            Body::TaskFinished(_) => task_finished = Some(e.at_ms),
            Body::JobFinished(_) => job_finished = Some(e.at_ms),
            _ => {}
        }
    }
    let span = |k: &str| steps.get(k).map_or(Duration::ZERO, |(a, b)| d(*a, *b));
    let health_end = steps.get("health").map(|s| s.1).unwrap_or(started_ms);
    let task_finished = task_finished.unwrap_or(health_end);
    let job_finished = job_finished.unwrap_or(task_finished);
    FerrySplit {
        submit_rpc,
        to_first_event: d(started_ms, first_agent.unwrap_or(started_ms)),
        image: span("image"),
        start: span("start"),
        health: span("health"),
        after_health: d(health_end, task_finished),
        to_job_finished: d(task_finished, job_finished),
        to_watch_end: d(job_finished, ended_ms),
        health_attempts,
    }
}

/// "image web" → "image".
fn step_kind(step: &str) -> String {
    step.split_whitespace()
        .next()
        .unwrap_or_default()
        .to_string()
}

/// The 1-minute load average: other processes compete for the CPUs the
/// Docker engine needs to start a container.
fn loadavg() -> f64 {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|t| t.split_whitespace().next()?.parse().ok())
        .unwrap_or(-1.0)
}

struct Report {
    via: Via,
    date: String,
    cpus: usize,
    /// 1-minute load average before and after the runs.
    load: (f64, f64),
    command: String,
    image: String,
    docker_version: String,
    runs: usize,
    interval_ms: u64,
    ferry: Vec<Duration>,
    direct: Vec<Duration>,
    ferry_splits: Vec<FerrySplit>,
    direct_splits: Vec<Split>,
    extra_calls: Vec<(&'static str, Duration)>,
}

impl Report {
    fn ratio(&self) -> f64 {
        Stats::of(&self.ferry).median.as_secs_f64() / Stats::of(&self.direct).median.as_secs_f64()
    }

    fn ratio_mean(&self) -> f64 {
        Stats::of(&self.ferry).mean.as_secs_f64() / Stats::of(&self.direct).mean.as_secs_f64()
    }

    /// Per run, the time outside Docker's create + start and the health
    /// wait: what Ferry itself adds (for direct: the port inspect). Far
    /// less noisy than the totals, which swing by Docker's start time and
    /// by whole health intervals.
    fn own(&self) -> (Stats, Stats) {
        let ferry: Vec<Duration> = self
            .ferry
            .iter()
            .zip(&self.ferry_splits)
            .map(|(t, s)| t.saturating_sub(s.start + s.health))
            .collect();
        let direct: Vec<Duration> = self.direct_splits.iter().map(|s| s.port_lookup).collect();
        (Stats::of(&ferry), Stats::of(&direct))
    }

    /// (what, median over runs) for Ferry's parts.
    fn ferry_parts(&self) -> Vec<(&'static str, Duration)> {
        let med = |f: fn(&FerrySplit) -> Duration| {
            Stats::of(&self.ferry_splits.iter().map(f).collect::<Vec<_>>()).median
        };
        let (rpc, first, end) = match self.via {
            Via::Job => (
                "SubmitJob RPC (included in the next)",
                "submit → agent's first event (dispatch, Assign, network inspect, container list)",
                "JobFinished → WatchJob stream ended",
            ),
            Via::Rollout => (
                "StartRollout RPC (included in the next)",
                "start → agent's first event (lock, plan, the job, Assign, network inspect, container list)",
                "JobFinished → rollout seen ended (release recorded, GetRollout)",
            ),
        };
        vec![
            (rpc, med(|s| s.submit_rpc)),
            (first, med(|s| s.to_first_event)),
            ("image step (image inspect)", med(|s| s.image)),
            ("start step (create + start)", med(|s| s.start)),
            ("health step", med(|s| s.health)),
            (
                "health ok → TaskFinished (port inspect, container list, spool fsync)",
                med(|s| s.after_health),
            ),
            (
                "TaskFinished → JobFinished (coordinator)",
                med(|s| s.to_job_finished),
            ),
            (end, med(|s| s.to_watch_end)),
        ]
    }

    fn direct_parts(&self) -> Vec<(&'static str, Duration)> {
        let med = |f: fn(&Split) -> Duration| {
            Stats::of(&self.direct_splits.iter().map(f).collect::<Vec<_>>()).median
        };
        vec![
            ("create + start", med(|s| s.create_start)),
            ("port inspect", med(|s| s.port_lookup)),
            ("health polling", med(|s| s.health)),
        ]
    }

    fn table(&self) -> String {
        use std::fmt::Write;
        let mut out = String::new();
        let (f, d) = (Stats::of(&self.ferry), Stats::of(&self.direct));
        let _ = writeln!(
            out,
            "ferry-deploy-bench {}\n{}\nimage {}, recreate, HTTP health /health every {} ms; {} runs each, alternating; Docker {}\n{} CPUs, load average {:.2} before, {:.2} after\n",
            self.date,
            self.command,
            self.image,
            self.interval_ms,
            self.runs,
            self.docker_version,
            self.cpus,
            self.load.0,
            self.load.1
        );
        let _ = writeln!(
            out,
            "{:<34} {:>9} {:>9} {:>9} {:>9} {:>9}",
            "deploy, ms", "median", "p90", "mean", "min", "max"
        );
        let ferry = match self.via {
            Via::Job => "Ferry (submit → job succeeded)",
            Via::Rollout => "Ferry (rollout start → ended)",
        };
        for (name, s) in [(ferry, f), ("direct (bollard)", d)] {
            let _ = writeln!(
                out,
                "{:<34} {:>9.1} {:>9.1} {:>9.1} {:>9.1} {:>9.1}",
                name,
                ms(s.median),
                ms(s.p90),
                ms(s.mean),
                ms(s.min),
                ms(s.max)
            );
        }
        let ratio = self.ratio();
        let _ = writeln!(
            out,
            "\nratio Ferry/direct, medians: {ratio:.3} (target ≤ {TARGET_RATIO}: {}); means: {:.3}; difference of medians {:.1} ms\n",
            if ratio <= TARGET_RATIO {
                "met"
            } else {
                "NOT met"
            },
            self.ratio_mean(),
            ms(f.median) - ms(d.median),
        );
        let (own_f, own_d) = self.own();
        let _ = writeln!(
            out,
            "outside Docker's create + start and the health wait: Ferry {:.1} ms median (p90 {:.1}), direct {:.1} ms; \
             {:.1} % of the direct median\n",
            ms(own_f.median),
            ms(own_f.p90),
            ms(own_d.median),
            (own_f.median.as_secs_f64() - own_d.median.as_secs_f64()) * 100.0
                / d.median.as_secs_f64().max(1e-9)
        );
        let _ = writeln!(out, "where Ferry's time goes (median of each part):");
        for (what, v) in self.ferry_parts() {
            let _ = writeln!(out, "  {:>8.1} ms  {what}", ms(v));
        }
        let attempts = |v: Vec<usize>| {
            let mut v = v;
            v.sort();
            v.get(v.len() / 2).copied().unwrap_or(0)
        };
        let _ = writeln!(
            out,
            "  health attempts, median: {}",
            attempts(
                self.ferry_splits
                    .iter()
                    .map(|s| s.health_attempts)
                    .collect()
            )
        );
        let _ = writeln!(out, "direct (median of each part):");
        for (what, v) in self.direct_parts() {
            let _ = writeln!(out, "  {:>8.1} ms  {what}", ms(v));
        }
        let _ = writeln!(
            out,
            "  health attempts, median: {}",
            attempts(
                self.direct_splits
                    .iter()
                    .map(|s| s.health_attempts)
                    .collect()
            )
        );
        let _ = writeln!(
            out,
            "Docker calls the executor adds, each alone (median of {}):",
            self.runs
        );
        for (what, v) in &self.extra_calls {
            let _ = writeln!(out, "  {:>8.2} ms  {what}", ms(*v));
        }
        let _ = writeln!(
            out,
            "\nruns, ms (Ferry / direct): {}",
            self.ferry
                .iter()
                .zip(&self.direct)
                .map(|(f, d)| format!("{:.0}/{:.0}", ms(*f), ms(*d)))
                .collect::<Vec<_>>()
                .join(", ")
        );
        out
    }

    fn json(&self) -> Value {
        let parts = |p: Vec<(&'static str, Duration)>| {
            p.into_iter()
                .map(|(k, v)| json!({"part": k, "median_ms": ms(v)}))
                .collect::<Vec<_>>()
        };
        json!({
            "via": match self.via { Via::Job => "job", Via::Rollout => "rollout" },
            "date": self.date,
            "command": self.command,
            "image": self.image,
            "docker_version": self.docker_version,
            "cpus": self.cpus,
            "load_average_before": self.load.0,
            "load_average_after": self.load.1,
            "runs": self.runs,
            "health_interval_ms": self.interval_ms,
            "ferry": Stats::of(&self.ferry).json(),
            "direct": Stats::of(&self.direct).json(),
            "ferry_runs": self.ferry.iter().zip(&self.ferry_splits).map(|(t, s)| json!({
                "total_ms": ms(*t),
                "submit_rpc_ms": ms(s.submit_rpc),
                "to_first_event_ms": ms(s.to_first_event),
                "image_ms": ms(s.image),
                "start_ms": ms(s.start),
                "health_ms": ms(s.health),
                "health_attempts": s.health_attempts,
                "after_health_ms": ms(s.after_health),
                "to_job_finished_ms": ms(s.to_job_finished),
                "to_watch_end_ms": ms(s.to_watch_end),
            })).collect::<Vec<_>>(),
            "direct_runs": self.direct.iter().zip(&self.direct_splits).map(|(t, s)| json!({
                "total_ms": ms(*t),
                "create_start_ms": ms(s.create_start),
                "port_inspect_ms": ms(s.port_lookup),
                "health_ms": ms(s.health),
                "health_attempts": s.health_attempts,
            })).collect::<Vec<_>>(),
            "ferry_outside_docker_and_health": self.own().0.json(),
            "direct_outside_docker_and_health": self.own().1.json(),
            "ratio_median": self.ratio(),
            "ratio_mean": self.ratio_mean(),
            "target_ratio": TARGET_RATIO,
            "met": self.ratio() <= TARGET_RATIO,
            "ferry_parts": parts(self.ferry_parts()),
            "direct_parts": parts(self.direct_parts()),
            "extra_docker_calls": parts(self.extra_calls.clone()),
        })
    }
}

async fn run(args: &Args) -> Result<Report> {
    let docker =
        Docker::connect_with_unix("/var/run/docker.sock", 120, bollard::API_DEFAULT_VERSION)
            .context("connect to the Docker engine")?;
    let docker_version = docker
        .version()
        .await
        .context("the Docker engine does not answer")?
        .version
        .unwrap_or_default();
    if docker.inspect_image(&args.image).await.is_err() {
        bail!(
            "image {} is not local; build it first: deploy/example/build-image.sh {}",
            args.image,
            args.image.rsplit(':').next().unwrap_or("bench")
        );
    }
    // Production defaults (heartbeats every 5 s), not the tests' fast ones.
    let coordinator = TestCoordinator::start_with(CoordinatorOptions {
        tweak: None,
        ..Default::default()
    })
    .await?;
    let mut agent = coordinator.start_agent(AGENT, &[]).await?;
    let bench = Bench {
        args,
        docker,
        http: HttpClient::default(),
        coordinator,
    };
    bench.clean().await?;
    bench.ensure_network().await?;
    let load_before = loadavg();
    let outcome = measure(&bench).await;
    let load_after = loadavg();
    let _ = bench.clean().await;
    bench.remove_network().await;
    // Before the coordinator goes, or the agent logs the lost session.
    let _ = agent.stop().await;
    let (ferry, direct, ferry_splits, direct_splits, extra_calls) = outcome?;
    Ok(Report {
        via: args.via,
        date: time::OffsetDateTime::now_utc()
            .format(&time::format_description::well_known::Rfc3339)
            .unwrap_or_default(),
        cpus: std::thread::available_parallelism().map_or(0, |n| n.get()),
        load: (load_before, load_after),
        command: std::env::args().collect::<Vec<_>>().join(" "),
        image: args.image.clone(),
        docker_version,
        runs: args.runs,
        interval_ms: args.interval_ms,
        ferry,
        direct,
        ferry_splits,
        direct_splits,
        extra_calls,
    })
}

type Measured = (
    Vec<Duration>,
    Vec<Duration>,
    Vec<FerrySplit>,
    Vec<Split>,
    Vec<(&'static str, Duration)>,
);

async fn measure(bench: &Bench<'_>) -> Result<Measured> {
    for i in 0..bench.args.warmup {
        let (f, _) = bench.ferry(&format!("warmup{i}")).await?;
        bench.clean().await?;
        let (d, _) = bench.direct(&format!("warmup{i}")).await?;
        bench.clean().await?;
        eprintln!("warm-up {i}: Ferry {:.0} ms, direct {:.0} ms", ms(f), ms(d));
    }
    let (mut ferry, mut direct) = (Vec::new(), Vec::new());
    let (mut ferry_splits, mut direct_splits) = (Vec::new(), Vec::new());
    for i in 0..bench.args.runs.max(1) {
        let release = format!("r{i}");
        let ferry_first = i % 2 == 0;
        for side in if ferry_first { [0, 1] } else { [1, 0] } {
            if side == 0 {
                let (t, s) = bench.ferry(&release).await?;
                ferry.push(t);
                ferry_splits.push(s);
            } else {
                let (t, s) = bench.direct(&release).await?;
                direct.push(t);
                direct_splits.push(s);
            }
            bench.clean().await?;
        }
        eprintln!(
            "run {i}: Ferry {:.0} ms, direct {:.0} ms ({} first)",
            ms(ferry[i]),
            ms(direct[i]),
            if ferry_first { "Ferry" } else { "direct" }
        );
    }
    let extra_calls = bench.extra_calls(bench.args.runs.max(1)).await?;
    Ok((ferry, direct, ferry_splits, direct_splits, extra_calls))
}
