//! Authentication and authorization.
//!
//! [`AuthLayer`] runs in front of every gRPC service: except for
//! `AgentService/Enroll`, a request must carry a client certificate that
//! this coordinator's CA issued, unexpired, with a Ferry identity of this
//! trust domain; the layer puts the [`Peer`] into the request extensions.
//! Handlers then authorize with [`Core::require_agent`] and
//! [`Core::require_operator`], which consult the store (revocation, roles).

use std::sync::Arc;
use std::task::{Context, Poll};

use ferry_common::identity::{Identity, Role};
use ferry_common::tls::PeerVerifier;
use futures::future::BoxFuture;
use tonic::Request;
use tower::{Layer, Service};
use uuid::Uuid;

use crate::core::Core;
use crate::error::CoordinatorError;
use crate::metrics::Metrics;
use crate::net::PeerInfo;
use crate::ratelimit::{LogDecision, LogLimiter};
use crate::store::{AgentRecord, OperatorRecord};

/// The one RPC that needs no client certificate.
pub const ENROLL_PATH: &str = "/ferry.v1.AgentService/Enroll";

/// An authenticated caller.
#[derive(Debug, Clone)]
pub struct Peer {
    pub identity: Identity,
    pub uri: String,
    /// Serial (hex) of the certificate presented.
    pub serial: String,
}

#[derive(Clone)]
pub struct AuthLayer {
    verifier: PeerVerifier,
    trust_domain: Arc<str>,
    metrics: Arc<Metrics>,
    refusal_log: Arc<LogLimiter>,
}

impl AuthLayer {
    pub fn new(verifier: PeerVerifier, trust_domain: &str, metrics: Arc<Metrics>) -> Self {
        AuthLayer {
            verifier,
            trust_domain: trust_domain.into(),
            metrics,
            refusal_log: Arc::new(LogLimiter::new(std::time::Duration::from_secs(10), 5)),
        }
    }

    fn authenticate(&self, info: Option<&PeerInfo>) -> Result<Peer, String> {
        let certs = info.and_then(|i| i.certs.clone()).unwrap_or_default();
        let uris = self.verifier.verify(&certs).map_err(|e| e.to_string())?;
        // `verify` parsed the end entity already; it cannot fail here.
        let serial = certs
            .first()
            .and_then(|c| ferry_common::pki::cert_info(c).ok())
            .map(|info| info.serial_hex)
            .unwrap_or_default();
        let mut last_err = String::new();
        for uri in uris {
            match Identity::parse(&uri, &self.trust_domain) {
                Ok(identity) => {
                    return Ok(Peer {
                        identity,
                        uri,
                        serial,
                    });
                }
                Err(e) => last_err = e.to_string(),
            }
        }
        Err(last_err)
    }
}

impl<S> Layer<S> for AuthLayer {
    type Service = AuthService<S>;
    fn layer(&self, inner: S) -> AuthService<S> {
        AuthService {
            inner,
            layer: self.clone(),
        }
    }
}

#[derive(Clone)]
pub struct AuthService<S> {
    inner: S,
    layer: AuthLayer,
}

impl<S, B> Service<http::Request<B>> for AuthService<S>
where
    S: Service<http::Request<B>, Response = http::Response<tonic::body::Body>>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
    B: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = BoxFuture<'static, Result<S::Response, S::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: http::Request<B>) -> Self::Future {
        // The clone that was not polled ready goes back into `self`.
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let path = req.uri().path().to_string();
        let path = path.as_str();
        if let Some(info) = req.extensions().get::<PeerInfo>() {
            info.state.request_seen();
        }
        if path != ENROLL_PATH {
            match self.layer.authenticate(req.extensions().get::<PeerInfo>()) {
                Ok(peer) => {
                    req.extensions_mut().insert(peer);
                }
                Err(reason) => {
                    // Counted by reason only, and logged at most a few
                    // times per interval: a flood must grow neither the
                    // metrics nor the log.
                    self.layer.metrics.count_refusal("unauthenticated");
                    if let LogDecision::Log { suppressed } = self.layer.refusal_log.check() {
                        let remote = req.extensions().get::<PeerInfo>().and_then(|i| i.remote);
                        let known = self.layer.metrics.is_known_method(path);
                        tracing::info!(
                            ?remote,
                            method = if known { path } else { crate::metrics::OTHER_METHOD },
                            %reason,
                            suppressed,
                            "refused unauthenticated request (`suppressed` similar refusals were not logged)"
                        );
                    }
                    let status = tonic::Status::from(CoordinatorError::Unauthenticated(reason));
                    return Box::pin(async move { Ok(status.into_http()) });
                }
            }
        }
        self.layer.metrics.count_rpc(path);
        Box::pin(inner.call(req))
    }
}

fn peer<T>(req: &Request<T>) -> Result<&Peer, CoordinatorError> {
    req.extensions().get::<Peer>().ok_or_else(|| {
        CoordinatorError::Unauthenticated("no verified client certificate on this request".into())
    })
}

/// Whether the certificate a renewal just replaced is still accepted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Overlap {
    Allowed,
    Refused,
}

/// What an admin-only or deployer-only action is called in refusals.
fn role_needed_text(needed: Role) -> &'static str {
    match needed {
        Role::Viewer => "needs viewer or above",
        Role::Deployer => "needs deployer or admin",
        Role::Admin => "needs admin",
    }
}

impl Core {
    /// The calling agent, if it is an agent this coordinator knows and has
    /// not revoked.
    pub async fn require_agent<T>(
        &self,
        req: &Request<T>,
    ) -> Result<AgentRecord, CoordinatorError> {
        self.require_agent_with(req, Overlap::Allowed).await
    }

    /// [`Core::require_agent`] for `Renew`: only the agent's current
    /// certificate may renew itself, never one that a renewal replaced
    /// (else a stolen copy could renew itself forever).
    pub async fn require_current_agent<T>(
        &self,
        req: &Request<T>,
    ) -> Result<AgentRecord, CoordinatorError> {
        self.require_agent_with(req, Overlap::Refused).await
    }

    async fn require_agent_with<T>(
        &self,
        req: &Request<T>,
        overlap: Overlap,
    ) -> Result<AgentRecord, CoordinatorError> {
        let peer = peer(req)?;
        let Identity::Agent(id) = &peer.identity else {
            self.metrics.count_refusal("wrong_service");
            return Err(CoordinatorError::denied(format!(
                "{} may only call OperatorService; AgentService is for agents",
                peer.identity
            )));
        };
        let agent = self.check_agent(*id).await?;
        if peer.serial == agent.cert_serial {
            return Ok(agent);
        }
        // The certificate a renewal just replaced still works for a moment,
        // for the session the agent had open while it renewed.
        let just_replaced = overlap == Overlap::Allowed
            && agent.previous_cert_serial.as_deref() == Some(peer.serial.as_str())
            && agent.cert_renewed_at_ms.is_some_and(|at| {
                ferry_common::time::now_ms() - at < self.config.renewal_overlap.as_millis() as i64
            });
        if just_replaced {
            return Ok(agent);
        }
        self.metrics.count_refusal("superseded_certificate");
        // Someone holds a copy of a replaced certificate and its key.
        tracing::error!(
            agent = %agent.name,
            presented = %peer.serial,
            current = %agent.cert_serial,
            remote = ?req.extensions().get::<PeerInfo>().and_then(|i| i.remote),
            "an agent certificate that a renewal replaced was presented: a copy of the agent's old key exists"
        );
        Err(CoordinatorError::PermissionDenied {
            reason: format!(
                "this certificate of agent {} (serial {}) was replaced by a renewal; \
                 only its current certificate is accepted",
                agent.name, peer.serial
            ),
            refusal: "superseded",
        })
    }

    /// Loads agent `id` and refuses it if unknown or revoked.
    pub async fn check_agent(&self, id: Uuid) -> Result<AgentRecord, CoordinatorError> {
        let Some(agent) = self.store.get_agent(id).await? else {
            self.metrics.count_refusal("unknown_agent");
            return Err(CoordinatorError::denied(format!(
                "agent {id} is not enrolled with this coordinator"
            )));
        };
        if agent.revoked_at_ms.is_some() {
            self.metrics.count_refusal("revoked");
            return Err(CoordinatorError::PermissionDenied {
                reason: format!(
                    "agent {} ({}) has been revoked; enroll the host again with a new join token",
                    agent.name, agent.id
                ),
                refusal: "revoked",
            });
        }
        Ok(agent)
    }

    /// The calling operator, if its role allows `needed`. `action` completes
    /// "role viewer cannot …" in the refusal.
    pub async fn require_operator<T>(
        &self,
        req: &Request<T>,
        needed: Role,
        action: &str,
    ) -> Result<OperatorRecord, CoordinatorError> {
        let peer = peer(req)?;
        let Identity::Operator(name) = &peer.identity else {
            self.metrics.count_refusal("wrong_service");
            return Err(CoordinatorError::denied(format!(
                "{} may only call AgentService; OperatorService is for operators",
                peer.identity
            )));
        };
        let Some(op) = self.store.get_operator(name).await? else {
            self.metrics.count_refusal("unknown_operator");
            return Err(CoordinatorError::denied(format!(
                "operator {name} is not known to this coordinator"
            )));
        };
        if op.revoked_at_ms.is_some() {
            self.metrics.count_refusal("revoked");
            return Err(CoordinatorError::PermissionDenied {
                reason: format!("operator {name} has been revoked"),
                refusal: "revoked",
            });
        }
        if !op.role.allows(needed) {
            self.metrics.count_refusal("role");
            return Err(CoordinatorError::denied(format!(
                "role {} cannot {action} ({})",
                op.role,
                role_needed_text(needed)
            )));
        }
        Ok(op)
    }
}
