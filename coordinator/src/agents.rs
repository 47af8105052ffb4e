//! Agents: enrollment, certificate renewal, the live session, listing and
//! revocation.

use std::sync::Arc;
use std::time::Duration;

use ferry_common::health::HostHealth;
use ferry_common::identity::{Identity, validate_name};
use ferry_common::time::{now_ms, to_ms};
use ferry_proto::v1 as pb;
use futures::{Stream, StreamExt};
use sha2::{Digest, Sha256};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::Status;
use uuid::Uuid;

use crate::core::Core;
use crate::error::CoordinatorError;
use crate::store::{AgentRecord, NewAgent, StoreError};

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
    /// `AgentService.Enroll`: a join token and a CSR become an agent and its
    /// certificate.
    pub async fn enroll(
        &self,
        req: pb::EnrollRequest,
    ) -> Result<pb::EnrollResponse, CoordinatorError> {
        let token_hash = hash_token(&req.token);
        let token = self
            .store
            .get_join_token(&token_hash)
            .await?
            .ok_or(StoreError::TokenUnknown)?;
        let requested = req.name.trim();
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
            (None, _) => req.hostname.trim().to_lowercase(),
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
                    hostname: req.hostname.clone(),
                    labels: token.labels.clone(),
                    version: req.version.clone(),
                    cert_serial: issued.serial_hex.clone(),
                    cert_not_after_ms: to_ms(issued.not_after),
                },
            )
            .await?;
        self.audit(
            &uri,
            "agent.enroll",
            &name,
            format!("hostname={} token_by={}", req.hostname, token.created_by),
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
            .agent_cert_renewed(agent.id, &issued.serial_hex, not_after_ms)
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
        let hello = match first {
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
        self.store
            .agent_connected(
                agent.id,
                &self.coordinator_id,
                &hello.version,
                &hello.hostname,
                now_ms(),
            )
            .await?;
        let (tx, rx) = mpsc::channel(1024);
        let (session_id, kill) = self.sessions.register(agent.id, tx.clone());
        self.metrics.session_opened();
        tracing::info!(agent = %agent.name, id = %agent.id, version = %hello.version, %session_id, "agent connected");

        let welcome = pb::CoordinatorMessage {
            msg: Some(pb::coordinator_message::Msg::Welcome(pb::Welcome {
                session_id: session_id.to_string(),
                coordinator_id: self.coordinator_id.clone(),
                heartbeat_interval_ms: self.config.heartbeat_interval.as_millis() as u32,
                server_time_ms: now_ms(),
                agent_name: agent.name.clone(),
            })),
        };
        tx.send(Ok(welcome))
            .await
            .map_err(|_| CoordinatorError::Internal("session closed before Welcome".into()))?;
        self.reconcile(agent.id, &hello.held_tasks).await?;
        let core = Arc::clone(self);
        tokio::spawn(async move {
            let reason = core.run_session(&agent, &mut inbound, &tx, kill).await;
            core.sessions.unregister(agent.id, session_id);
            if let Err(e) = core
                .store
                .agent_disconnected(agent.id, &core.coordinator_id, now_ms())
                .await
            {
                tracing::warn!(agent = %agent.name, error = %e, "could not record disconnect");
            }
            tracing::info!(agent = %agent.name, %session_id, reason, "agent session ended");
        });
        Ok(ReceiverStream::new(rx))
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
                .send(crate::scheduler::Inbound {
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
