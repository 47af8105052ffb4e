//! Test harness: a real coordinator (TLS, store, admin port) and real agents
//! started inside the test process on loopback ports the kernel says are
//! free (the admin port from `127.0.0.1:0`; the gRPC port, which a restart
//! must get back, from [`stable_listener`]), plus helpers to find and run
//! the built binaries.
//!
//! - [`TestCoordinator`]: init a data dir, serve it, restart it, talk to it
//!   as any operator.
//! - [`TestAgent`]: an enrolled agent running its session loop.
//! - [`bin`]: paths to `ferry`, `ferry-coordinator`, `ferry-agent`.
//! - [`postgres`]: a fresh database on the test PostgreSQL server.
//! - [`proxy`]: a TCP proxy a test can cut, to break agents' connections.
//! - [`http`]: a service for smoke checks that is unhealthy until told otherwise.
//! - [`docker`]: images built from scratch, and cleanup of what tests deployed.
//! - [`otlp`]: an OTLP trace receiver, to check the spans a test exports.

pub mod docker;
pub mod http;
pub mod otlp;
pub mod proxy;
pub mod source;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use ferry_agent::enroll::{EnrollOptions, Enrolled};
use ferry_agent::error::AgentError;
use ferry_common::credentials::Credentials;
use ferry_common::tls;
use ferry_coordinator::config::CoordinatorConfig;
use ferry_coordinator::error::CoordinatorError;
use ferry_coordinator::init::{InitOptions, init};
use ferry_coordinator::server::{Listeners, serve};
use ferry_proto::v1 as pb;
use ferry_proto::v1::operator_service_client::OperatorServiceClient;
use tempfile::TempDir;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tonic::transport::Channel;

/// Installs the crypto provider and quiet logging; every test calls it.
pub fn setup() {
    tls::install_crypto_provider();
    drop(ferry_common::telemetry::init(
        "ferry-test",
        "warn",
        &std::collections::HashMap::new(),
    ));
}

/// Where [`stable_listener`] looks for ports: above the well-known service
/// ports the test servers use (5000, 18080), below the ephemeral range.
const STABLE_PORTS_FROM: u16 = 20_000;

/// A listener on 127.0.0.1 at a port outside the kernel's ephemeral range.
///
/// A test that stops a coordinator and starts it again on the same port
/// needs the port to stay free in between. A port from `bind("…:0")` comes
/// from the ephemeral range, which is also where the kernel takes the local
/// port of every outgoing connection: with many tests connecting at once,
/// one of them can take the port while it is closed, and the restart fails
/// with "Address already in use". Ports below that range are only taken by
/// an explicit bind. Falls back to `:0` if the range leaves no room.
pub fn stable_listener() -> std::io::Result<std::net::TcpListener> {
    use std::hash::{BuildHasher, Hasher};
    let ephemeral_from = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse::<u16>().ok())
        .unwrap_or(32_768);
    let span = ephemeral_from.saturating_sub(STABLE_PORTS_FROM);
    if span < 1_000 {
        return std::net::TcpListener::bind("127.0.0.1:0");
    }
    // A different start in every process and call, so that concurrent test
    // processes rarely probe the same ports.
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u32(std::process::id());
    let start = (h.finish() % u64::from(span)) as u16;
    for i in 0..span {
        let port = STABLE_PORTS_FROM + (start + i) % span;
        if let Ok(l) = std::net::TcpListener::bind(("127.0.0.1", port)) {
            return Ok(l);
        }
    }
    std::net::TcpListener::bind("127.0.0.1:0")
}

/// A port outside the ephemeral range that is free now, for a process a
/// test starts (see [`stable_listener`]).
pub fn stable_port() -> u16 {
    stable_listener()
        .and_then(|l| l.local_addr())
        .expect("find a free port on 127.0.0.1")
        .port()
}

/// [`stable_listener`] for tokio.
pub fn stable_tokio_listener() -> std::io::Result<TcpListener> {
    let l = stable_listener()?;
    l.set_nonblocking(true)?;
    TcpListener::from_std(l)
}

/// Which store a test coordinator uses.
#[derive(Debug, Clone)]
pub enum StoreChoice {
    /// A SQLite file in the data dir.
    Sqlite,
    /// This PostgreSQL URL.
    Postgres(String),
}

#[derive(Debug, Clone)]
pub struct CoordinatorOptions {
    pub store: StoreChoice,
    pub tweak: Option<fn(&mut CoordinatorConfig)>,
}

impl Default for CoordinatorOptions {
    fn default() -> Self {
        CoordinatorOptions {
            store: StoreChoice::Sqlite,
            tweak: Some(fast_heartbeats),
        }
    }
}

/// Heartbeats every 200 ms, offline after 1 s: tests see state changes fast.
pub fn fast_heartbeats(c: &mut CoordinatorConfig) {
    c.heartbeat_interval = Duration::from_millis(200);
    c.offline_after = Duration::from_secs(1);
}

pub struct TestCoordinator {
    _dir: Arc<TempDir>,
    pub data_dir: PathBuf,
    pub config: CoordinatorConfig,
    pub url: String,
    pub admin_http: SocketAddr,
    pub admin: Credentials,
    store_location: String,
    running: Option<(CancellationToken, JoinHandle<Result<(), CoordinatorError>>)>,
}

impl TestCoordinator {
    pub async fn start() -> Result<Self> {
        Self::start_with(CoordinatorOptions::default()).await
    }

    pub async fn start_with(opts: CoordinatorOptions) -> Result<Self> {
        setup();
        let dir = Arc::new(tempfile::tempdir()?);
        let data_dir = dir.path().join("coordinator");
        // The gRPC port outlives restarts; the admin port is not reopened.
        let grpc = stable_tokio_listener()?;
        let admin = TcpListener::bind("127.0.0.1:0").await?;
        let (grpc_addr, admin_addr) = (grpc.local_addr()?, admin.local_addr()?);
        let out = init(&InitOptions {
            data_dir: data_dir.clone(),
            trust_domain: Some("ferry.test".into()),
            listen: Some(grpc_addr),
            admin_listen: Some(admin_addr),
            tweak: opts.tweak,
            ..Default::default()
        })?;
        let store_location = match &opts.store {
            StoreChoice::Sqlite => out.config.store_location(&data_dir),
            StoreChoice::Postgres(url) => url.clone(),
        };
        let mut c = TestCoordinator {
            _dir: dir,
            admin: Credentials::load(&out.credentials_path)?,
            url: out.config.advertise.clone(),
            config: out.config,
            data_dir,
            admin_http: admin_addr,
            store_location,
            running: None,
        };
        c.serve_on(grpc, Some(admin)).await?;
        Ok(c)
    }

    async fn serve_on(&mut self, grpc: TcpListener, admin: Option<TcpListener>) -> Result<()> {
        let store = ferry_coordinator::store::open(&self.store_location).await?;
        let shutdown = CancellationToken::new();
        let task = tokio::spawn(serve(
            self.data_dir.clone(),
            self.config.clone(),
            Listeners { grpc, admin },
            store,
            shutdown.clone(),
        ));
        self.running = Some((shutdown, task));
        // Ready when it answers.
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        loop {
            let up = match self.operator().await {
                Ok(mut client) => client.get_status(pb::GetStatusRequest {}).await.is_ok(),
                Err(_) => false,
            };
            if up {
                return Ok(());
            }
            if tokio::time::Instant::now() > deadline {
                bail!("coordinator did not come up within 10s");
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// A coordinator (test defaults) on a fresh PostgreSQL database, or
    /// `None` when PostgreSQL tests are skipped ([`postgres::fresh_database`]).
    pub async fn start_on_postgres() -> Result<Option<Self>> {
        let Some(url) = postgres::fresh_database().await else {
            return Ok(None);
        };
        Self::start_with(CoordinatorOptions {
            store: StoreChoice::Postgres(url),
            ..Default::default()
        })
        .await
        .map(Some)
    }

    /// A second coordinator on the same data dir (CA) and store, on its own
    /// port: two coordinators sharing one PostgreSQL.
    pub async fn start_peer(&self) -> Result<TestCoordinator> {
        let grpc = stable_tokio_listener()?;
        let addr = grpc.local_addr()?;
        let mut config = self.config.clone();
        config.listen = addr;
        config.advertise = format!("https://{addr}");
        let mut peer = TestCoordinator {
            _dir: Arc::clone(&self._dir),
            data_dir: self.data_dir.clone(),
            url: config.advertise.clone(),
            config,
            admin_http: self.admin_http,
            admin: Credentials {
                coordinator: format!("https://{addr}"),
                ..self.admin.clone()
            },
            store_location: self.store_location.clone(),
            running: None,
        };
        peer.serve_on(grpc, None).await?;
        Ok(peer)
    }

    /// Stops serving (as a crash would, from the agents' point of view).
    pub async fn stop(&mut self) -> Result<()> {
        if let Some((shutdown, task)) = self.running.take() {
            shutdown.cancel();
            tokio::time::timeout(Duration::from_secs(10), task)
                .await
                .context("coordinator did not stop within 10s")???;
        }
        Ok(())
    }

    /// Stops and starts again on the same address, data dir and store.
    pub async fn restart(&mut self) -> Result<()> {
        self.stop().await?;
        // `stop` returns once the port is closed, and the port is outside
        // the ephemeral range; retry briefly all the same, so that a port a
        // stray bind held for a moment fails with its cause, not a flake.
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        let grpc = loop {
            match TcpListener::bind(self.config.listen).await {
                Ok(l) => break l,
                Err(e) if tokio::time::Instant::now() < deadline => {
                    tracing::warn!(addr = %self.config.listen, error = %e, "rebind failed; retrying");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                Err(e) => {
                    return Err(e)
                        .with_context(|| format!("rebind {} for the restart", self.config.listen));
                }
            }
        };
        self.serve_on(grpc, None).await
    }

    /// Where its store lives: the SQLite file's path or the PostgreSQL URL.
    pub fn store_location(&self) -> &str {
        &self.store_location
    }

    /// Adds an operator with `role` (as the admin) and returns its credentials.
    pub async fn add_operator(&self, name: &str, role: pb::Role) -> Result<Credentials> {
        let (key, csr) = ferry_common::pki::generate_key_and_csr(name)?;
        let added = self
            .operator()
            .await?
            .add_operator(pb::AddOperatorRequest {
                name: name.into(),
                role: role as i32,
                csr_pem: csr,
            })
            .await?
            .into_inner();
        Ok(Credentials {
            coordinator: self.url.clone(),
            name: name.into(),
            ca: added.ca_pem,
            certificate: added.certificate_pem,
            key,
        })
    }

    /// A client authenticated as the admin.
    pub async fn operator(&self) -> Result<OperatorServiceClient<Channel>> {
        self.operator_as(&self.admin).await
    }

    pub async fn operator_as(&self, creds: &Credentials) -> Result<OperatorServiceClient<Channel>> {
        let config = tls::client_config(&creds.ca, Some((&creds.certificate, &creds.key)))?;
        Ok(OperatorServiceClient::new(
            tls::channel(&self.url, config).await?,
        ))
    }

    pub async fn join_token(
        &self,
        name: Option<&str>,
        labels: &[(&str, &str)],
    ) -> Result<pb::CreateJoinTokenResponse> {
        let mut client = self.operator().await?;
        Ok(client
            .create_join_token(pb::CreateJoinTokenRequest {
                name: name.unwrap_or_default().to_string(),
                labels: labels
                    .iter()
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect(),
                ttl_seconds: 0,
            })
            .await?
            .into_inner())
    }

    /// Enrolls an agent named `name` into a fresh state dir.
    pub async fn enroll(&self, name: &str, labels: &[(&str, &str)]) -> Result<EnrolledAgent> {
        self.enroll_via(name, labels, None).await
    }

    /// Enrolls through `url` (a proxy, another coordinator) instead of the
    /// coordinator's own address; the agent keeps using that address.
    pub async fn enroll_via(
        &self,
        name: &str,
        labels: &[(&str, &str)],
        url: Option<&str>,
    ) -> Result<EnrolledAgent> {
        let mut token = self.join_token(Some(name), labels).await?;
        if let Some(url) = url {
            token.coordinator = url.to_string();
        }
        let dir = Arc::new(tempfile::tempdir()?);
        let state_dir = dir.path().join("agent");
        let enrolled = ferry_agent::enroll::enroll(&EnrollOptions {
            coordinator: token.coordinator,
            token: token.token,
            ca_pin: token.ca_pin,
            state_dir: state_dir.clone(),
            ..Default::default()
        })
        .await?;
        Ok(EnrolledAgent {
            _dir: dir,
            state_dir,
            enrolled,
        })
    }

    /// Enrolls and starts an agent, and waits until it is online.
    pub async fn start_agent(&self, name: &str, labels: &[(&str, &str)]) -> Result<TestAgent> {
        let agent = self.enroll(name, labels).await?.start();
        self.wait_for_agent(name, "online", Duration::from_secs(10))
            .await?;
        Ok(agent)
    }

    /// The agent as `ferry agents` would show it.
    pub async fn agent(&self, name: &str) -> Result<Option<pb::Agent>> {
        let list = self
            .operator()
            .await?
            .list_agents(pb::ListAgentsRequest {})
            .await?
            .into_inner()
            .agents;
        Ok(list.into_iter().rev().find(|a| a.name == name))
    }

    pub async fn wait_for_agent(
        &self,
        name: &str,
        state: &str,
        within: Duration,
    ) -> Result<pb::Agent> {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            if let Some(a) = self.agent(name).await? {
                let current = pb::AgentState::try_from(a.state)
                    .map(|s| s.as_str_name())
                    .unwrap_or("");
                if current.eq_ignore_ascii_case(&format!("AGENT_STATE_{state}")) {
                    return Ok(a);
                }
            }
            if tokio::time::Instant::now() > deadline {
                bail!("agent {name} did not become {state} within {within:?}");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Submits a job as the admin.
    pub async fn submit(
        &self,
        kind: &str,
        spec_json: &str,
        agents: &[&str],
        deadline_seconds: u64,
    ) -> Result<pb::Job> {
        let reply = self
            .operator()
            .await?
            .submit_job(pb::SubmitJobRequest {
                kind: kind.into(),
                spec_json: spec_json.into(),
                target: Some(pb::Selector {
                    agents: agents.iter().map(|a| a.to_string()).collect(),
                    labels: Default::default(),
                }),
                idempotency_key: String::new(),
                deadline_seconds,
            })
            .await?
            .into_inner();
        reply.job.context("SubmitJob returned no job")
    }

    pub async fn job(&self, id: &str) -> Result<pb::Job> {
        self.operator()
            .await?
            .get_job(pb::GetJobRequest { job_id: id.into() })
            .await?
            .into_inner()
            .job
            .context("GetJob returned no job")
    }

    /// Watches a job from the start until its stream ends; every event.
    pub async fn watch_to_end(&self, id: &str, within: Duration) -> Result<Vec<pb::JobEvent>> {
        let mut stream = self
            .operator()
            .await?
            .watch_job(pb::WatchJobRequest {
                job_id: id.into(),
                after_seq: 0,
            })
            .await?
            .into_inner();
        let mut events = Vec::new();
        tokio::time::timeout(within, async {
            while let Some(e) = stream.message().await? {
                events.push(e);
            }
            Ok::<_, anyhow::Error>(())
        })
        .await
        .with_context(|| {
            format!("job {id} did not finish within {within:?}; events so far: {events:#?}")
        })??;
        Ok(events)
    }

    /// Waits until the job has an event matching `pred`.
    pub async fn wait_for_event(
        &self,
        id: &str,
        within: Duration,
        pred: impl Fn(&pb::JobEvent) -> bool,
    ) -> Result<pb::JobEvent> {
        let mut stream = self
            .operator()
            .await?
            .watch_job(pb::WatchJobRequest {
                job_id: id.into(),
                after_seq: 0,
            })
            .await?
            .into_inner();
        tokio::time::timeout(within, async {
            while let Some(e) = stream.message().await? {
                if pred(&e) {
                    return Ok(e);
                }
            }
            bail!("job {id} ended without the expected event")
        })
        .await
        .with_context(|| format!("no such event of job {id} within {within:?}"))?
    }

    /// The coordinator's CA, for minting certificates in tests.
    pub fn ca(&self) -> Result<ferry_common::pki::CertificateAuthority> {
        let read = |f: &str| std::fs::read_to_string(self.data_dir.join(f));
        Ok(ferry_common::pki::CertificateAuthority::from_pem(
            &read("ca.pem")?,
            &read("ca.key")?,
        )?)
    }

    /// `GET path` on the admin port; returns (status code, body).
    pub async fn admin_get(&self, path: &str) -> Result<(u16, String)> {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut s = tokio::net::TcpStream::connect(self.admin_http).await?;
        s.write_all(format!("GET {path} HTTP/1.0\r\nHost: x\r\n\r\n").as_bytes())
            .await?;
        let mut buf = String::new();
        s.read_to_string(&mut buf).await?;
        let code = buf.split_whitespace().nth(1).unwrap_or("0").parse()?;
        let body = buf
            .split_once("\r\n\r\n")
            .map(|(_, b)| b.to_string())
            .unwrap_or_default();
        Ok((code, body))
    }
}

impl Drop for TestCoordinator {
    fn drop(&mut self) {
        if let Some((shutdown, _)) = &self.running {
            shutdown.cancel();
        }
    }
}

/// An enrolled agent that is not running yet.
pub struct EnrolledAgent {
    _dir: Arc<TempDir>,
    pub state_dir: PathBuf,
    pub enrolled: Enrolled,
}

impl EnrolledAgent {
    pub fn start(self) -> TestAgent {
        self.start_with_env(Default::default())
    }

    /// Starts the agent with these `FERRY_*` variables (as its environment).
    pub fn start_with_env(self, env: std::collections::HashMap<String, String>) -> TestAgent {
        let shutdown = CancellationToken::new();
        let state_dir = self.state_dir.clone();
        let stop = shutdown.clone();
        let task = tokio::spawn(async move { ferry_agent::run(&state_dir, &env, stop).await });
        TestAgent {
            agent: self,
            shutdown,
            task: Some(task),
        }
    }

    /// Replaces the coordinators the agent dials (in order).
    pub fn set_coordinators(&self, urls: &[String]) -> Result<()> {
        let mut config = ferry_agent::config::AgentConfig::load(&self.state_dir)?;
        config.coordinators = urls.to_vec();
        config.save(&self.state_dir, true)?;
        Ok(())
    }

    /// Narrows the job kinds the agent runs and advertises (`capabilities`
    /// in its agent.toml), as an older agent or a staged upgrade would.
    pub fn set_capabilities(&self, kinds: &[ferry_common::job::JobKind]) -> Result<()> {
        let mut config = ferry_agent::config::AgentConfig::load(&self.state_dir)?;
        config.capabilities = Some(kinds.to_vec());
        config.save(&self.state_dir, true)?;
        Ok(())
    }

    /// The agent's identity files, for tests that talk to the coordinator as it.
    pub fn identity(&self) -> Result<ferry_agent::config::Identity> {
        Ok(ferry_agent::config::Identity::load(&self.state_dir)?)
    }
}

pub struct TestAgent {
    pub agent: EnrolledAgent,
    shutdown: CancellationToken,
    task: Option<JoinHandle<Result<(), AgentError>>>,
}

impl TestAgent {
    /// Stops the agent (as a killed process would: running tasks are
    /// dropped where they are) and gives back its state dir to start again.
    pub async fn kill(mut self) -> Result<EnrolledAgent> {
        self.shutdown.cancel();
        self.wait_exit(Duration::from_secs(10)).await??;
        let agent = std::mem::replace(
            &mut self.agent,
            EnrolledAgent {
                _dir: Arc::new(tempfile::tempdir()?),
                state_dir: PathBuf::new(),
                enrolled: Enrolled {
                    agent_id: String::new(),
                    name: String::new(),
                    labels: BTreeMap::new(),
                    not_after: String::new(),
                },
            },
        );
        Ok(agent)
    }

    /// Stops the agent and returns how its run ended.
    pub async fn stop(&mut self) -> Result<Result<(), AgentError>> {
        self.shutdown.cancel();
        self.wait_exit(Duration::from_secs(10)).await
    }

    /// Waits for the agent's run to end by itself.
    pub async fn wait_exit(&mut self, within: Duration) -> Result<Result<(), AgentError>> {
        let task = self.task.take().context("agent already stopped")?;
        Ok(tokio::time::timeout(within, task)
            .await
            .context("agent did not exit in time")??)
    }

    pub fn is_running(&self) -> bool {
        self.task.as_ref().is_some_and(|t| !t.is_finished())
    }

    pub fn state_dir(&self) -> &Path {
        &self.agent.state_dir
    }
}

impl Drop for TestAgent {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

/// Labels as a map.
pub fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

/// Paths to the built binaries (`cargo build --workspace --bins` first;
/// `scripts/test.sh` does).
pub mod bin {
    use std::path::PathBuf;

    pub fn path(name: &str) -> PathBuf {
        // Test executables live in target/<profile>/deps; binaries one up.
        let exe = std::env::current_exe().expect("current_exe");
        let dir = exe.parent().and_then(|d| d.parent()).expect("target dir");
        let p = dir.join(name);
        assert!(
            p.exists(),
            "{} not found; build the binaries first: cargo build --workspace --bins (scripts/test.sh does)",
            p.display()
        );
        p
    }
}

/// A fresh PostgreSQL database for one test.
pub mod postgres {
    use std::process::Command;

    /// The result of `sql` run by `psql` on `url`: unaligned, tuples only,
    /// trimmed. A failing statement fails the test, with psql's message.
    pub fn psql(url: &str, sql: &str) -> String {
        let out = Command::new("psql")
            .args([
                "-X",
                "-q",
                "-A",
                "-t",
                "-v",
                "ON_ERROR_STOP=1",
                "-d",
                url,
                "-c",
                sql,
            ])
            .output()
            .expect("run psql");
        assert!(
            out.status.success(),
            "psql {sql}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap().trim().to_string()
    }

    /// The URL of database `name` on the server of `url`.
    pub fn with_database(url: &str, name: &str) -> String {
        let (base, _) = url.rsplit_once('/').unwrap();
        format!("{base}/{name}")
    }

    /// The database a URL names.
    pub fn database_name(url: &str) -> String {
        url.rsplit_once('/').unwrap().1.to_string()
    }

    /// The schema of the database at `url` as `pg_dump` prints it, without
    /// the random `\restrict` lines of pg_dump 15.14+.
    pub fn schema(url: &str) -> String {
        let out = Command::new("pg_dump")
            .args(["--schema-only", "--no-owner", "-d", url])
            .output()
            .expect("pg_dump runs (apt-get install postgresql-client)");
        assert!(
            out.status.success(),
            "pg_dump: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout)
            .unwrap()
            .lines()
            .filter(|l| !l.starts_with("\\restrict") && !l.starts_with("\\unrestrict"))
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// The URL of a brand-new database on the server at
    /// `FERRY_TEST_DATABASE_URL`, or `None` (after saying why) when that is
    /// unset outside CI. In CI (`CI` set) a missing server fails the test.
    pub async fn fresh_database() -> Option<String> {
        match std::env::var("FERRY_TEST_DATABASE_URL") {
            Ok(url) if !url.is_empty() => Some(
                ferry_coordinator::store::conformance::fresh_postgres_database(&url)
                    .await
                    .expect("create a fresh test database"),
            ),
            _ if std::env::var_os("CI").is_some() => {
                panic!(
                    "FERRY_TEST_DATABASE_URL is not set, and PostgreSQL tests must run in CI (scripts/test.sh starts a server)"
                )
            }
            _ => {
                eprintln!(
                    "skipped: set FERRY_TEST_DATABASE_URL (scripts/test.sh does) to run PostgreSQL tests"
                );
                None
            }
        }
    }
}
