//! `ferry-agent run`: keep one `Session` open to a coordinator, for as long
//! as the agent runs.
//!
//! - Reconnects after any loss with exponential backoff and full jitter,
//!   rotating through the configured coordinators.
//! - Heartbeats with host health at the interval the coordinator asks for.
//! - Renews its certificate at two thirds of its life, with a new key.
//! - Stops with [`AgentError::Revoked`] when the coordinator says it has
//!   been revoked, and [`AgentError::CredentialsRefused`] when its
//!   certificate is no longer accepted at all (expired while offline, say):
//!   retrying cannot fix either.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use ferry_common::backoff::FullJitter;
use ferry_common::pki;
use ferry_common::tls;
use ferry_proto::v1 as pb;
use ferry_proto::v1::agent_service_client::AgentServiceClient;
use tokio::sync::mpsc;
use tokio_stream::wrappers::UnboundedReceiverStream;
use tokio_util::sync::CancellationToken;
use tonic::transport::Channel;

use crate::config::{AgentConfig, Identity};
use crate::error::AgentError;
use crate::executor::{self, HostEnv};
use crate::health::HealthProbe;
use crate::runner::Runner;
use crate::spool::Spool;

/// Tasks an agent runs at once unless `max_concurrent_tasks` says otherwise.
pub const DEFAULT_TASK_LIMIT: usize = 4;

/// Reconnect backoff: the first retry within 250 ms, never more than 30 s.
pub const BACKOFF_BASE: Duration = Duration::from_millis(250);
pub const BACKOFF_CAP: Duration = Duration::from_secs(30);
const WELCOME_TIMEOUT: Duration = Duration::from_secs(10);
/// Metadata key the coordinator uses to say why it refused.
const REFUSAL_KEY: &str = "x-ferry-refusal";

/// A running agent's fixed inputs.
pub struct Agent {
    pub config: AgentConfig,
    pub state_dir: PathBuf,
    pub probe: Arc<HealthProbe>,
    pub runner: Arc<Runner>,
}

impl Agent {
    /// Opens the spool (reporting tasks a restart interrupted as lost).
    pub fn new(config: AgentConfig, state_dir: &Path) -> Result<Self, AgentError> {
        let disk_paths = if config.disk_paths.is_empty() {
            vec![PathBuf::from("/"), state_dir.to_path_buf()]
        } else {
            config.disk_paths.clone()
        };
        let probe = Arc::new(HealthProbe::new(
            &config.docker_socket,
            config.postgres_url.clone(),
            disk_paths,
        ));
        let spool = Arc::new(Spool::open(state_dir)?);
        let backup_dir = config
            .backup_dir
            .clone()
            .unwrap_or_else(|| state_dir.join("backups"));
        // A backup the agent was killed in the middle of left a partial
        // file; its task is reported lost (the spool), its file goes here.
        executor::backup::remove_partial_files(&backup_dir);
        let host = Arc::new(HostEnv {
            name: config.name.clone(),
            docker: crate::health::connect_docker(&config.docker_socket),
            nginx: config.nginx.clone(),
            backup_dir,
            pg_bin_dir: config.pg_bin_dir.clone(),
        });
        let runner = Runner::new(
            spool,
            Arc::clone(&probe),
            host,
            config.max_concurrent_tasks.unwrap_or(DEFAULT_TASK_LIMIT),
            executor::enabled(config.capabilities.as_deref()),
        );
        Ok(Agent {
            config,
            state_dir: state_dir.to_path_buf(),
            probe,
            runner,
        })
    }
}

enum SessionEnd {
    Shutdown,
    /// The session was lost; `established` says whether it had got going
    /// (which resets the backoff).
    Lost {
        established: bool,
        reason: String,
    },
}

/// Runs until `shutdown` (Ok) or a refusal that retrying cannot fix (Err).
/// Tasks still running then are stopped where they are; the next start
/// reports them lost.
pub async fn run(agent: Agent, shutdown: CancellationToken) -> Result<(), AgentError> {
    let result = run_sessions(&agent, shutdown).await;
    agent.runner.abort_all();
    result
}

async fn run_sessions(agent: &Agent, shutdown: CancellationToken) -> Result<(), AgentError> {
    let mut backoff = FullJitter::new(BACKOFF_BASE, BACKOFF_CAP);
    let mut index = 0usize;
    loop {
        let url = agent.config.coordinators[index % agent.config.coordinators.len()].clone();
        let end = match session_once(agent, &url, &shutdown).await {
            Ok(end) => end,
            Err(fatal @ (AgentError::Revoked(_) | AgentError::CredentialsRefused(_))) => {
                return Err(fatal);
            }
            Err(other) => SessionEnd::Lost {
                established: false,
                reason: other.to_string(),
            },
        };
        match end {
            SessionEnd::Shutdown => return Ok(()),
            SessionEnd::Lost {
                established,
                reason,
            } => {
                if established {
                    backoff.reset();
                }
                index += 1;
                let wait = backoff.next().unwrap_or(BACKOFF_CAP);
                tracing::warn!(coordinator = %url, %reason, retry_in_ms = wait.as_millis() as u64, "session lost");
                tokio::select! {
                    _ = shutdown.cancelled() => return Ok(()),
                    _ = tokio::time::sleep(wait) => {}
                }
            }
        }
    }
}

/// Classifies a status from the coordinator: fatal refusals become errors,
/// everything else is a lost session worth retrying.
fn classify(status: &tonic::Status) -> Result<String, AgentError> {
    let refusal = status
        .metadata()
        .get(REFUSAL_KEY)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    match (status.code(), refusal) {
        (_, "revoked") => Err(AgentError::Revoked(status.message().to_string())),
        (tonic::Code::Unauthenticated, _) | (tonic::Code::PermissionDenied, _) => {
            Err(AgentError::CredentialsRefused(status.message().to_string()))
        }
        _ => Ok(format!("{:?}: {}", status.code(), tls::error_chain(status))),
    }
}

async fn session_once(
    agent: &Agent,
    url: &str,
    shutdown: &CancellationToken,
) -> Result<SessionEnd, AgentError> {
    let identity = Identity::load(&agent.state_dir)?;
    let config = tls::client_config(
        &identity.ca_pem,
        Some((&identity.cert_pem, &identity.key_pem)),
    )?;
    let channel = tokio::select! {
        _ = shutdown.cancelled() => return Ok(SessionEnd::Shutdown),
        c = tls::channel(url, config) => c?,
    };
    let mut client = AgentServiceClient::new(channel.clone());
    // Unbounded: the spool pushes into it while holding its lock, and every
    // event in it is also on disk until acknowledged.
    let (tx, rx) = mpsc::unbounded_channel::<pb::AgentMessage>();
    let spool = Arc::clone(agent.runner.spool());
    let hello = pb::AgentMessage {
        msg: Some(pb::agent_message::Msg::Hello(pb::Hello {
            agent_id: agent.config.agent_id.clone(),
            version: ferry_common::VERSION.into(),
            capabilities: agent
                .runner
                .capabilities()
                .iter()
                .map(|k| k.as_str().to_string())
                .collect(),
            held_tasks: spool.held(),
            hostname: ferry_common::host::hostname(),
        })),
    };
    tx.send(hello)
        .map_err(|_| AgentError::Unreachable("session closed".into()))?;
    let mut inbound = match client.session(UnboundedReceiverStream::new(rx)).await {
        Ok(r) => r.into_inner(),
        Err(status) => {
            let reason = classify(&status)?;
            return Ok(SessionEnd::Lost {
                established: false,
                reason,
            });
        }
    };
    let welcome = match tokio::time::timeout(WELCOME_TIMEOUT, inbound.message()).await {
        Ok(Ok(Some(pb::CoordinatorMessage {
            msg: Some(pb::coordinator_message::Msg::Welcome(w)),
        }))) => w,
        Ok(Err(status)) => {
            let reason = classify(&status)?;
            return Ok(SessionEnd::Lost {
                established: false,
                reason,
            });
        }
        _ => {
            return Ok(SessionEnd::Lost {
                established: false,
                reason: "no Welcome from the coordinator".into(),
            });
        }
    };
    tracing::info!(
        coordinator = %url,
        coordinator_id = %welcome.coordinator_id,
        name = %welcome.agent_name,
        "connected"
    );
    agent
        .runner
        .set_clock_offset(ferry_common::time::now_ms() - welcome.server_time_ms);
    let interval = Duration::from_millis(u64::from(welcome.heartbeat_interval_ms.max(100)));
    let session_done = CancellationToken::new();
    let _stop_helpers = session_done.clone().drop_guard();
    // Replays every unacknowledged event, then forwards new ones live.
    spool.attach(tx.clone());
    let _detach = Detach(Arc::clone(&spool));
    tokio::spawn(heartbeats(
        Arc::clone(&agent.probe),
        tx.clone(),
        interval,
        session_done.clone(),
    ));
    // A renewed certificate replaces the old one at the coordinator, which
    // then accepts the old one only briefly: reconnect with the new one.
    let renewed = CancellationToken::new();
    tokio::spawn(renewals(
        agent.state_dir.clone(),
        channel,
        session_done.clone(),
        renewed.clone(),
    ));
    tokio::spawn(resend_stale(Arc::clone(&spool), session_done.clone()));

    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return Ok(SessionEnd::Shutdown),
            _ = renewed.cancelled() => {
                return Ok(SessionEnd::Lost { established: true, reason: "certificate renewed; reconnecting with the new one".into() });
            }
            msg = inbound.message() => match msg {
                Ok(Some(m)) => handle(agent, m),
                Ok(None) => {
                    return Ok(SessionEnd::Lost { established: true, reason: "coordinator closed the session".into() });
                }
                Err(status) => {
                    let reason = classify(&status)?;
                    return Ok(SessionEnd::Lost { established: true, reason });
                }
            },
        }
    }
}

/// Stops forwarding spooled events when the session ends, however it ends.
struct Detach(Arc<Spool>);

impl Drop for Detach {
    fn drop(&mut self) {
        self.0.detach();
    }
}

fn handle(agent: &Agent, msg: pb::CoordinatorMessage) {
    use pb::coordinator_message::Msg;
    match msg.msg {
        Some(Msg::Assign(a)) => agent.runner.assign(a),
        Some(Msg::Cancel(c)) => {
            if let Ok(id) = uuid::Uuid::parse_str(&c.task_id) {
                let running = agent.runner.cancel(id);
                tracing::info!(task_id = %id, reason = %c.reason, running, "cancel requested");
            }
        }
        Some(Msg::Ack(ack)) => {
            if let Ok(id) = uuid::Uuid::parse_str(&ack.task_id)
                && let Err(e) = agent.runner.spool().ack(id, ack.seq)
            {
                tracing::error!(task_id = %id, error = %e, "cannot record an acknowledgement");
            }
        }
        Some(Msg::Welcome(_)) | None => {}
    }
}

async fn heartbeats(
    probe: Arc<HealthProbe>,
    tx: mpsc::UnboundedSender<pb::AgentMessage>,
    interval: Duration,
    done: CancellationToken,
) {
    let mut ticker = tokio::time::interval(interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = done.cancelled() => return,
            _ = ticker.tick() => {}
        }
        let health = probe.collect().await;
        let msg = pb::AgentMessage {
            msg: Some(pb::agent_message::Msg::Heartbeat(pb::Heartbeat {
                health: Some(health.into()),
                sent_at_ms: ferry_common::time::now_ms(),
            })),
        };
        if tx.send(msg).is_err() {
            return;
        }
    }
}

/// Events unacknowledged this long are sent again on the live session.
const RESEND_AFTER: Duration = Duration::from_secs(10);

/// Every second, sends again what the coordinator has left unacknowledged
/// for [`RESEND_AFTER`] (see [`Spool::resend_stale`]), until `done`.
async fn resend_stale(spool: Arc<Spool>, done: CancellationToken) {
    loop {
        tokio::select! {
            _ = done.cancelled() => return,
            _ = tokio::time::sleep(Duration::from_secs(1)) => {}
        }
        let sent = spool.resend_stale(RESEND_AFTER);
        if sent > 0 {
            tracing::warn!(
                events = sent,
                "the coordinator acknowledged nothing for a while; sent its unacknowledged events again"
            );
        }
    }
}

/// When the certificate in `cert_pem` should be renewed: at two thirds of
/// its validity.
pub fn renewal_due(cert_pem: &str) -> Result<time::OffsetDateTime, AgentError> {
    let info = pki::cert_info_pem(cert_pem)?;
    let life = info.not_after - info.not_before;
    Ok(info.not_before + life * 2 / 3)
}

async fn renewals(
    state_dir: PathBuf,
    channel: Channel,
    done: CancellationToken,
    renewed: CancellationToken,
) {
    let mut client = AgentServiceClient::new(channel);
    loop {
        let wait = match Identity::load(&state_dir).and_then(|id| renewal_due(&id.cert_pem)) {
            Ok(due) => {
                let left = due - time::OffsetDateTime::now_utc();
                Duration::try_from(left).unwrap_or(Duration::ZERO)
            }
            Err(e) => {
                tracing::error!(error = %e, "cannot read this agent's certificate");
                return;
            }
        };
        // Re-check at least every minute: the clock may jump.
        tokio::select! {
            _ = done.cancelled() => return,
            _ = tokio::time::sleep(wait.min(Duration::from_secs(60))) => {}
        }
        if wait > Duration::from_secs(60) {
            continue;
        }
        match renew_once(&state_dir, &mut client).await {
            Ok(not_after) => {
                tracing::info!(%not_after, "renewed certificate");
                renewed.cancel();
                return;
            }
            Err(e) => {
                tracing::warn!(error = %e, "certificate renewal failed; retrying in 5s");
                tokio::select! {
                    _ = done.cancelled() => return,
                    _ = tokio::time::sleep(Duration::from_secs(5)) => {}
                }
            }
        }
    }
}

async fn renew_once(
    state_dir: &Path,
    client: &mut AgentServiceClient<Channel>,
) -> Result<String, AgentError> {
    let (key_pem, csr_pem) = pki::generate_key_and_csr("ferry-agent")?;
    let reply = client
        .renew(pb::RenewRequest { csr_pem })
        .await
        .map_err(|s| AgentError::CredentialsRefused(s.message().to_string()))?
        .into_inner();
    Identity::store_renewed(state_dir, &key_pem, &reply.certificate_pem)?;
    Ok(ferry_common::time::rfc3339_ms(reply.not_after_ms))
}
