//! Starting a coordinator: [`run`] for the binary (configuration, listeners,
//! store), [`serve`] for anything that already has those (tests, benches).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use ferry_common::fsutil::{self, Mode};
use ferry_common::pki::{self, CertificateAuthority};
use ferry_common::tls::{self, PeerVerifier};
use ferry_proto::v1::agent_service_server::AgentServiceServer;
use ferry_proto::v1::operator_service_server::OperatorServiceServer;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::auth::AuthLayer;
use crate::config::{self, CoordinatorConfig};
use crate::core::Core;
use crate::error::CoordinatorError;
use crate::grpc::agent::AgentApi;
use crate::grpc::operator::OperatorApi;
use crate::metrics::Metrics;
use crate::secrets;
use crate::secrets_key::{self, SecretsKey};
use crate::sessions::SessionRegistry;
use crate::store::{self, Store};

/// Reissue the server certificate when less than this is left.
const SERVER_CERT_RENEW_BEFORE: Duration = Duration::from_secs(30 * 86_400);

/// Flags of `ferry-coordinator serve`; unset keeps the file's values.
#[derive(Debug, Clone, Default)]
pub struct ServeOverrides {
    pub listen: Option<SocketAddr>,
    pub admin_listen: Option<SocketAddr>,
    pub database_url: Option<String>,
}

/// The sockets a coordinator serves on.
#[derive(Debug)]
pub struct Listeners {
    pub grpc: TcpListener,
    pub admin: Option<TcpListener>,
}

/// Loads the configuration from `data_dir` (then `env`, then `overrides`),
/// binds, opens the store and serves until `shutdown`.
pub async fn run(
    data_dir: &Path,
    env: &HashMap<String, String>,
    overrides: ServeOverrides,
    shutdown: CancellationToken,
) -> Result<(), CoordinatorError> {
    let mut config = CoordinatorConfig::load(data_dir)?;
    config.apply_env(env)?;
    if let Some(l) = overrides.listen {
        config.listen = l;
    }
    if let Some(l) = overrides.admin_listen {
        config.admin_listen = l;
    }
    if let Some(url) = overrides.database_url {
        if url_has_password(&url) {
            // Command lines are world-readable (`ps`, /proc/*/cmdline).
            tracing::warn!(
                "--database-url carries a password, which every user of this host can read \
                 with `ps`; set FERRY_DATABASE_URL (e.g. from a systemd EnvironmentFile of \
                 mode 0600) instead"
            );
        }
        config.database_url = Some(url);
    }
    let grpc = bind(config.listen).await?;
    let admin = bind(config.admin_listen).await?;
    let store = store::open(&config.store_location(data_dir)).await?;
    tracing::info!(
        grpc = %config.listen,
        admin = %config.admin_listen,
        store = store.backend().as_str(),
        "coordinator listening"
    );
    serve(
        data_dir.to_path_buf(),
        config,
        Listeners {
            grpc,
            admin: Some(admin),
        },
        store,
        shutdown,
    )
    .await
}

async fn bind(addr: SocketAddr) -> Result<TcpListener, CoordinatorError> {
    TcpListener::bind(addr)
        .await
        .map_err(|source| CoordinatorError::Listen {
            addr: addr.to_string(),
            source,
        })
}

/// Serves gRPC (and the admin port, if given) with the PKI in `data_dir`
/// until `shutdown` is cancelled.
pub async fn serve(
    data_dir: PathBuf,
    config: CoordinatorConfig,
    listeners: Listeners,
    store: Arc<Store>,
    shutdown: CancellationToken,
) -> Result<(), CoordinatorError> {
    let data_dir = data_dir.as_path();
    let read = |name: &str| fsutil::read_to_string(&data_dir.join(name));
    let ca =
        CertificateAuthority::from_pem(&read(config::CA_CERT_FILE)?, &read(config::CA_KEY_FILE)?)?;
    let (chain_pem, key_pem) = server_identity(data_dir, &config, &ca)?;
    let tls_config = tls::server_config(&chain_pem, &key_pem)?;
    let verifier = PeerVerifier::new(ca.cert_pem())?;
    let secrets_key = secrets_key(data_dir, &config)?;
    secrets::check_key(store.as_ref(), &secrets_key).await?;
    // The fingerprint lets operators compare coordinators' keys; it is a
    // truncated one-way hash and says nothing about the key itself.
    tracing::info!(
        from = %secrets_key.origin(),
        fingerprint = %secrets_key.fingerprint(),
        "secrets key matches the store"
    );

    if store
        .bootstrap_admin(&config.admin_name, ferry_common::time::now_ms())
        .await?
    {
        tracing::info!(admin = %config.admin_name, "new store: added the admin operator");
    }
    let metrics = Arc::new(Metrics::default());
    let (ingest, ingest_rx) = tokio::sync::mpsc::channel(65_536);
    let core = Arc::new(Core {
        ingest,
        spans: Default::default(),
        heartbeats: Default::default(),
        enroll_failures: crate::core::enroll_failure_limiter(),
        enroll_failure_log: crate::core::enroll_failure_log(),
        leading: Default::default(),
        coordinator_id: format!(
            "{}-{}",
            ferry_common::host::hostname(),
            &uuid::Uuid::now_v7().simple().to_string()[20..]
        ),
        started_at_ms: ferry_common::time::now_ms(),
        sessions: SessionRegistry::default(),
        operator_streams: Default::default(),
        metrics: Arc::clone(&metrics),
        shutdown: shutdown.clone(),
        store,
        ca,
        secrets_key,
        config,
    });

    crate::scheduler::start(&core, ingest_rx);
    crate::rollout::start(&core);
    crate::schedules::start(&core);

    let admin_task = listeners.admin.map(|listener| {
        let core = Arc::clone(&core);
        let shutdown = shutdown.clone();
        tokio::spawn(async move {
            if let Err(e) = crate::admin::serve(listener, core, shutdown).await {
                tracing::error!(error = %e, "admin HTTP server failed");
            }
        })
    });

    let (health_reporter, health_service) = tonic_health::server::health_reporter();
    health_reporter
        .set_serving::<AgentServiceServer<AgentApi>>()
        .await;
    health_reporter
        .set_serving::<OperatorServiceServer<OperatorApi>>()
        .await;
    let reflection = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(ferry_proto::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1()
        .map_err(|e| CoordinatorError::Internal(format!("reflection: {e}")))?;

    // A child token, so the accept loop also stops when the server fails
    // without a shutdown; it is awaited below so that the port is closed
    // when `serve` returns (a restart on the same port must be able to bind).
    let stop_accepting = shutdown.child_token();
    let (incoming, accept_loop) = crate::net::incoming(
        listeners.grpc,
        crate::net::Incoming {
            config: tls_config,
            verifier: verifier.clone(),
            limits: core.config.limits.clone(),
            metrics: Arc::clone(&metrics),
        },
        stop_accepting.clone(),
    );
    let auth = AuthLayer::new(verifier, &core.config.trust_domain, metrics);
    let result = tonic::transport::Server::builder()
        .http2_keepalive_interval(Some(Duration::from_secs(10)))
        .http2_keepalive_timeout(Some(Duration::from_secs(10)))
        .layer(auth)
        .add_service(health_service)
        .add_service(reflection)
        .add_service(AgentServiceServer::new(AgentApi {
            core: Arc::clone(&core),
        }))
        .add_service(OperatorServiceServer::new(OperatorApi {
            core: Arc::clone(&core),
        }))
        .serve_with_incoming_shutdown(incoming, shutdown.cancelled_owned())
        .await
        .map_err(|e| CoordinatorError::Internal(format!("gRPC server: {}", tls::error_chain(&e))));
    stop_accepting.cancel();
    let _ = accept_loop.await;
    if let Some(task) = admin_task {
        let _ = task.await;
    }
    result
}

/// The secrets key: `FERRY_SECRETS_KEY` (already in `config`), else the
/// data dir's `secrets.key`, created here for data dirs initialised before
/// secrets existed (`init` writes it for new ones).
fn secrets_key(
    data_dir: &Path,
    config: &CoordinatorConfig,
) -> Result<SecretsKey, CoordinatorError> {
    if let Some(key) = &config.secrets_key {
        return Ok(key.clone());
    }
    let (key, created) = SecretsKey::load_or_create(data_dir)?;
    if created {
        tracing::info!(
            path = %data_dir.join(secrets_key::KEY_FILE).display(),
            "created the secrets key; coordinators sharing this store need a copy of it"
        );
    }
    Ok(key)
}

/// The server certificate chain and key, reissued from the CA when it is
/// close to expiry (the coordinator holds the CA, so it never has to lapse).
fn server_identity(
    data_dir: &Path,
    config: &CoordinatorConfig,
    ca: &CertificateAuthority,
) -> Result<(String, String), CoordinatorError> {
    let cert_path: PathBuf = data_dir.join(config::SERVER_CERT_FILE);
    let key_path = data_dir.join(config::SERVER_KEY_FILE);
    let chain = fsutil::read_to_string(&cert_path)?;
    let info = pki::cert_info_pem(&chain)?;
    let remaining = info.not_after - time::OffsetDateTime::now_utc();
    if remaining > SERVER_CERT_RENEW_BEFORE {
        return Ok((chain, fsutil::read_to_string(&key_path)?));
    }
    tracing::info!(not_after = %info.not_after, "server certificate close to expiry; reissuing");
    let fresh = ca.issue_server(&config.sans, config.server_cert_ttl)?;
    let chain = format!("{}{}", fresh.cert_pem, ca.cert_pem());
    fsutil::write_atomic(&key_path, fresh.key_pem.as_bytes(), Mode::Private, true)?;
    fsutil::write_atomic(&cert_path, chain.as_bytes(), Mode::Public, true)?;
    Ok((chain, fresh.key_pem))
}

/// Whether a `postgres://user:password@host/db` URL holds a password.
fn url_has_password(url: &str) -> bool {
    let Some((_, rest)) = url.split_once("://") else {
        return false;
    };
    let authority = rest.split(['/', '?']).next().unwrap_or("");
    authority
        .rsplit_once('@')
        .is_some_and(|(userinfo, _)| userinfo.split_once(':').is_some_and(|(_, p)| !p.is_empty()))
}

#[cfg(test)]
mod tests {
    use super::url_has_password;

    #[test]
    fn passwords_in_database_urls_are_noticed() {
        assert!(url_has_password("postgres://ferry:s3cret@db/ferry"));
        assert!(!url_has_password("postgres://ferry@db/ferry"));
        assert!(!url_has_password("postgres://db/ferry?user=x"));
        assert!(!url_has_password("/var/lib/ferry/ferry.db"));
    }
}
