//! Agents: enrollment, certificate renewal, the live session, listing and
//! revocation.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use ferry_common::health::HostHealth;
use ferry_common::identity::{Identity, validate_name};
use ferry_common::time::{now_ms, to_ms};
use ferry_proto::v1 as pb;
use futures::{Stream, StreamExt};
use sha2::{Digest, Sha256};
use tokio::sync::{mpsc, oneshot};
use tokio_stream::wrappers::ReceiverStream;
use tonic::Status;
use uuid::Uuid;

use crate::core::Core;
use crate::error::CoordinatorError;
use crate::ratelimit::LogDecision;
use crate::store::{AgentHello, AgentRecord, NewAgent, StoreError};
use crate::wire;

/// How long a new session may take to say `Hello`.
const HELLO_TIMEOUT: Duration = Duration::from_secs(10);

/// What an agent's state is, as operators see it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AgentState {
    Online,
    Offline,
    Revoked,
}

impl AgentState {
    pub fn as_str(self) -> &'static str {
        match self {
            AgentState::Online => "online",
            AgentState::Offline => "offline",
            AgentState::Revoked => "revoked",
        }
    }
}

/// The store keeps only a hash of each join token.
pub fn hash_token(token: &str) -> String {
    hex::encode(Sha256::digest(token.trim().as_bytes()))
}

impl Core {
    /// `AgentService.Enroll` from `remote`: refused at once while that
    /// address has used up its failed attempts; a failure is logged at WARN
    /// with the address (never the token) and counted in `/metrics`.
    pub async fn enroll_from(
        &self,
        remote: Option<IpAddr>,
        req: pb::EnrollRequest,
    ) -> Result<pb::EnrollResponse, CoordinatorError> {
        if let Some(addr) = remote
            && let Err(retry_after) = self.enroll_failures.check(addr)
        {
            self.metrics.enroll_failed();
            return Err(CoordinatorError::RateLimited {
                what: "failed enrollments",
                addr: addr.to_string(),
                retry_after,
            });
        }
        let result = self.enroll(req).await;
        if let Err(e) = &result {
            self.metrics.enroll_failed();
            if let Some(addr) = remote {
                self.enroll_failures.failed(addr);
            }
            if let LogDecision::Log { suppressed } = self.enroll_failure_log.check() {
                tracing::warn!(
                    remote = ?remote,
                    error = %e,
                    suppressed,
                    "enrollment refused (`suppressed` similar refusals were not logged)"
                );
            }
        }
        result
    }

    /// `AgentService.Enroll`: a join token and a CSR become an agent and its
    /// certificate.
    pub async fn enroll(
        &self,
        req: pb::EnrollRequest,
    ) -> Result<pb::EnrollResponse, CoordinatorError> {
        let hostname = wire::text("hostname", &req.hostname, wire::MAX_HOSTNAME)?;
        let version = wire::text("version", &req.version, wire::MAX_VERSION)?;
        let requested = wire::text("agent name", &req.name, wire::MAX_HOSTNAME)?;
        let token_hash = hash_token(&req.token);
        let token = self
            .store
            .get_join_token(&token_hash)
            .await?
            .ok_or(StoreError::TokenUnknown)?;
        let requested = requested.as_str();
        let name = match (&token.name, requested) {
            (Some(t), r) if !r.is_empty() && r != t => {
                return Err(CoordinatorError::invalid(
                    "agent name",
                    format!(
                        "this join token is for an agent named {t:?}, not {r:?}; drop --name or use another token"
                    ),
                ));
            }
            (Some(t), _) => t.clone(),
            (None, r) if !r.is_empty() => r.to_string(),
            (None, _) => hostname.to_lowercase(),
        };
        validate_name(&name).map_err(|reason| {
            CoordinatorError::invalid(
                "agent name",
                format!("{reason}; pass --name NAME to choose one"),
            )
        })?;
        let id = Uuid::now_v7();
        let uri = Identity::Agent(id).uri(&self.config.trust_domain);
        let issued =
            self.ca
                .sign_client_csr(&req.csr_pem, &uri, &name, self.config.agent_cert_ttl)?;
        let agent = self
            .store
            .enroll_agent(
                &token_hash,
                now_ms(),
                &NewAgent {
                    id,
                    name: name.clone(),
                    hostname: hostname.clone(),
                    labels: token.labels.clone(),
                    version,
                    cert_serial: issued.serial_hex.clone(),
                    cert_not_after_ms: to_ms(issued.not_after),
                },
            )
            .await?;
        self.audit(
            &uri,
            "agent.enroll",
            &name,
            format!("hostname={hostname} token_by={}", token.created_by),
        )
        .await;
        Ok(pb::EnrollResponse {
            agent_id: agent.id.to_string(),
            name: agent.name,
            certificate_pem: issued.cert_pem,
            ca_pem: self.ca.cert_pem().to_string(),
            trust_domain: self.config.trust_domain.clone(),
            labels: agent.labels.into_iter().collect(),
        })
    }

    /// `AgentService.Renew`: a fresh certificate for the same identity.
    pub async fn renew(
        &self,
        agent: &AgentRecord,
        csr_pem: &str,
    ) -> Result<pb::RenewResponse, CoordinatorError> {
        let uri = Identity::Agent(agent.id).uri(&self.config.trust_domain);
        let issued =
            self.ca
                .sign_client_csr(csr_pem, &uri, &agent.name, self.config.agent_cert_ttl)?;
        let not_after_ms = to_ms(issued.not_after);
        self.store
            .agent_cert_renewed(agent.id, &issued.serial_hex, not_after_ms, now_ms())
            .await?;
        tracing::info!(agent = %agent.name, serial = %issued.serial_hex, "renewed agent certificate");
        Ok(pb::RenewResponse {
            certificate_pem: issued.cert_pem,
            not_after_ms,
        })
    }

    /// `AgentService.Session`: waits for `Hello`, answers `Welcome`, then
    /// keeps the session until the agent leaves, is revoked or superseded,
    /// or the coordinator stops.
    ///
    /// Cancel-safe: the RPC's future is dropped whenever the agent goes away
    /// before the response, so nothing it would have to undo happens in it.
    /// It only reads `Hello`; the session is recorded, registered,
    /// reconciled and run by a task of its own, which ends it (unregisters
    /// it and records the disconnect) however it ends. The response goes out
    /// as soon as `Welcome` is queued, before reconciliation.
    pub async fn open_session<S>(
        self: &Arc<Self>,
        agent: AgentRecord,
        mut inbound: S,
    ) -> Result<ReceiverStream<Result<pb::CoordinatorMessage, Status>>, CoordinatorError>
    where
        S: Stream<Item = Result<pb::AgentMessage, Status>> + Send + Unpin + 'static,
    {
        let first = tokio::time::timeout(HELLO_TIMEOUT, inbound.next())
            .await
            .map_err(|_| CoordinatorError::invalid("session", "no Hello within 10s"))?;
        let mut hello = match first {
            Some(Ok(pb::AgentMessage {
                msg: Some(pb::agent_message::Msg::Hello(h)),
            })) => h,
            _ => {
                return Err(CoordinatorError::invalid(
                    "session",
                    "the first message must be Hello",
                ));
            }
        };
        if hello.agent_id != agent.id.to_string() {
            return Err(CoordinatorError::invalid(
                "hello.agent_id",
                format!(
                    "{:?} does not match the certificate's agent {}",
                    hello.agent_id, agent.id
                ),
            ));
        }
        // What the store keeps and `ferry agents` shows: bounded, printable.
        hello.version = wire::text("hello.version", &hello.version, wire::MAX_VERSION)?;
        hello.hostname = wire::text("hello.hostname", &hello.hostname, wire::MAX_HOSTNAME)?;
        hello.capabilities = wire::capabilities(&hello.capabilities)?;
        let (tx, rx) = mpsc::channel(1024);
        let (ready_tx, ready_rx) = oneshot::channel();
        let core = Arc::clone(self);
        tokio::spawn(async move {
            core.session_task(agent, hello, inbound, tx, ready_tx).await;
        });
        match ready_rx.await {
            Ok(Ok(())) => Ok(ReceiverStream::new(rx)),
            Ok(Err(e)) => Err(e),
            Err(_) => Err(CoordinatorError::Internal(
                "the session ended before Welcome".into(),
            )),
        }
    }

    /// The life of one session, from its record in the store to its end.
    /// `ready` tells `open_session` whether the session is up (`Welcome`
    /// queued); if `open_session` is gone by then, the session ends at once,
    /// its stream being closed.
    async fn session_task<S>(
        self: Arc<Self>,
        agent: AgentRecord,
        hello: pb::Hello,
        mut inbound: S,
        tx: mpsc::Sender<Result<pb::CoordinatorMessage, Status>>,
        ready: oneshot::Sender<Result<(), CoordinatorError>>,
    ) where
        S: Stream<Item = Result<pb::AgentMessage, Status>> + Send + Unpin + 'static,
    {
        if ready.is_closed() {
            // open_session was dropped (the agent went away) before this
            // task started: nothing to set up.
            return;
        }
        if let Err(e) = self
            .store
            .agent_connected(&AgentHello {
                id: agent.id,
                coordinator_id: &self.coordinator_id,
                version: &hello.version,
                hostname: &hello.hostname,
                capabilities: &hello.capabilities,
                now_ms: now_ms(),
            })
            .await
        {
            let _ = ready.send(Err(e.into()));
            return;
        }
        let session_id = Uuid::now_v7();
        let welcome = pb::CoordinatorMessage {
            msg: Some(pb::coordinator_message::Msg::Welcome(pb::Welcome {
                session_id: session_id.to_string(),
                coordinator_id: self.coordinator_id.clone(),
                heartbeat_interval_ms: self.config.heartbeat_interval.as_millis() as u32,
                server_time_ms: now_ms(),
                agent_name: agent.name.clone(),
            })),
        };
        // Queued before the session is registered: nothing sent through the
        // registry (an Assign of a concurrent dispatch) may overtake it. The
        // channel is new and empty.
        let _ = tx.try_send(Ok(welcome));
        let kill = self.sessions.register(
            agent.id,
            session_id,
            tx.clone(),
            crate::sessions::AgentHello {
                version: hello.version.clone(),
                capabilities: hello.capabilities.clone(),
            },
        );
        let guard = SessionGuard {
            core: Arc::clone(&self),
            agent: agent.id,
            name: agent.name.clone(),
            session_id,
            open: true,
        };
        self.metrics.session_opened();
        tracing::info!(agent = %agent.name, id = %agent.id, version = %hello.version, %session_id, "agent connected");
        let _ = ready.send(Ok(()));

        let reconciled = self.reconcile(agent.id, &hello.held_tasks).await;
        let reason = match reconciled {
            Ok(()) => self.run_session(&agent, &mut inbound, &tx, kill).await,
            Err(e) => {
                tracing::warn!(agent = %agent.name, error = %e, "could not reconcile the agent's tasks");
                let _ = tx.send(Err(Status::from(CoordinatorError::from(e)))).await;
                "reconciliation failed"
            }
        };
        guard.close(reason).await;
    }

    /// Removes a session from the registry and, unless a newer session of
    /// the same agent is live here, records the disconnect.
    async fn end_session(&self, agent: Uuid, name: &str, session_id: Uuid, reason: &str) {
        if self.sessions.unregister(agent, session_id)
            && let Err(e) = self
                .store
                .agent_disconnected(agent, &self.coordinator_id, now_ms())
                .await
        {
            tracing::warn!(agent = %name, error = %e, "could not record disconnect");
        }
        tracing::info!(agent = %name, %session_id, reason, "agent session ended");
    }

    async fn run_session<S>(
        &self,
        agent: &AgentRecord,
        inbound: &mut S,
        tx: &mpsc::Sender<Result<pb::CoordinatorMessage, Status>>,
        mut kill: tokio::sync::oneshot::Receiver<Status>,
    ) -> &'static str
    where
        S: Stream<Item = Result<pb::AgentMessage, Status>> + Send + Unpin,
    {
        loop {
            tokio::select! {
                status = &mut kill => {
                    if let Ok(status) = status {
                        let _ = tx.send(Err(status)).await;
                    }
                    return "ended by the coordinator";
                }
                _ = self.shutdown.cancelled() => {
                    let _ = tx.send(Err(Status::unavailable("coordinator shutting down"))).await;
                    return "coordinator shutting down";
                }
                _ = tx.closed() => return "agent stopped reading",
                msg = inbound.next() => match msg {
                    None => return "agent closed the stream",
                    Some(Err(_)) => return "stream broken",
                    Some(Ok(m)) => {
                        if let Err(status) = self.handle_agent_message(agent, m).await {
                            let _ = tx.send(Err(status)).await;
                            return "refused";
                        }
                    }
                },
            }
        }
    }

    async fn handle_agent_message(
        &self,
        agent: &AgentRecord,
        msg: pb::AgentMessage,
    ) -> Result<(), Status> {
        match msg.msg {
            Some(pb::agent_message::Msg::Heartbeat(hb)) => {
                self.metrics.heartbeat();
                let health: HostHealth = hb.health.unwrap_or_default().into();
                let json =
                    serde_json::to_string(&health).map_err(|e| Status::internal(e.to_string()))?;
                // Buffered: the scheduler's tick writes every agent's latest
                // heartbeat in one transaction.
                self.heartbeats
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .insert(
                        agent.id,
                        crate::store::Heartbeat {
                            id: agent.id,
                            seen_ms: now_ms(),
                            health_json: Some(json),
                        },
                    );
                Ok(())
            }
            Some(pb::agent_message::Msg::TaskEvent(event)) => self
                .ingest
                .send(crate::sessions::Inbound {
                    agent: agent.id,
                    event,
                })
                .await
                .map_err(|_| Status::unavailable("coordinator shutting down")),
            Some(pb::agent_message::Msg::Hello(_)) => Err(Status::invalid_argument(
                "Hello may only be sent once per session",
            )),
            None => Err(Status::invalid_argument("empty agent message")),
        }
    }

    pub fn agent_state(&self, agent: &AgentRecord, now: i64) -> AgentState {
        if agent.revoked_at_ms.is_some() {
            AgentState::Revoked
        } else if self.sessions.is_online(agent.id)
            || (agent.connected_to.is_some()
                && now - agent.last_seen_ms <= self.config.offline_after.as_millis() as i64)
        {
            AgentState::Online
        } else {
            AgentState::Offline
        }
    }

    /// Revokes an agent by name or id and cuts its live session.
    pub async fn revoke_agent(
        &self,
        actor: &str,
        name_or_id: &str,
    ) -> Result<(AgentRecord, bool), CoordinatorError> {
        let agent = self
            .store
            .find_agent(name_or_id)
            .await?
            .ok_or_else(|| StoreError::AgentNotFound(name_or_id.to_string()))?;
        let agent = self.store.revoke_agent(agent.id, now_ms()).await?;
        let was_connected = self.sessions.kill(
            agent.id,
            Status::from(CoordinatorError::PermissionDenied {
                reason: format!("agent {} ({}) has been revoked", agent.name, agent.id),
                refusal: "revoked",
            }),
        );
        self.audit(
            actor,
            "agent.revoke",
            &agent.name,
            format!("id={} was_connected={was_connected}", agent.id),
        )
        .await;
        Ok((agent, was_connected))
    }
}

/// Ends a registered session however its task ends: through
/// [`SessionGuard::close`] normally; on drop if the task panicked or was
/// dropped (the runtime shutting down), in which case the disconnect is
/// recorded by a task of its own.
struct SessionGuard {
    core: Arc<Core>,
    agent: Uuid,
    name: String,
    session_id: Uuid,
    open: bool,
}

impl SessionGuard {
    async fn close(mut self, reason: &str) {
        self.open = false;
        self.core
            .end_session(self.agent, &self.name, self.session_id, reason)
            .await;
    }
}

impl Drop for SessionGuard {
    fn drop(&mut self) {
        if !self.open {
            return;
        }
        let (core, agent, name, session_id) = (
            Arc::clone(&self.core),
            self.agent,
            std::mem::take(&mut self.name),
            self.session_id,
        );
        match tokio::runtime::Handle::try_current() {
            Ok(runtime) => {
                runtime.spawn(async move {
                    core.end_session(agent, &name, session_id, "session task ended early")
                        .await;
                });
            }
            Err(_) => {
                core.sessions.unregister(agent, session_id);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_hash_ignores_surrounding_whitespace() {
        assert_eq!(hash_token("abc"), hash_token(" abc\n"));
        assert_ne!(hash_token("abc"), hash_token("abd"));
        assert_eq!(hash_token("abc").len(), 64);
    }
}
