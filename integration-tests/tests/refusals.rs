//! Every refusal the coordinator makes, each with words a user can act on.

use std::time::Duration;

use ferry_agent::enroll::EnrollOptions;
use ferry_agent::error::AgentError;
use ferry_common::credentials::Credentials;
use ferry_common::pki::{self, CertificateAuthority};
use ferry_common::tls;
use ferry_integration_tests::TestCoordinator;
use ferry_proto::v1 as pb;
use ferry_proto::v1::agent_service_client::AgentServiceClient;
use ferry_proto::v1::operator_service_client::OperatorServiceClient;
use tonic::Code;

/// Credentials for `uri` signed by `ca`, valid from `start` for `ttl`.
fn minted(
    c: &TestCoordinator,
    ca: &CertificateAuthority,
    uri: &str,
    start: time::OffsetDateTime,
    ttl: Duration,
) -> Credentials {
    let (key, csr) = pki::generate_key_and_csr("test").unwrap();
    let cert = ca
        .sign_client_csr_at(&csr, uri, "test", start, ttl)
        .unwrap();
    Credentials {
        coordinator: c.url.clone(),
        name: "test".into(),
        ca: c.admin.ca.clone(),
        certificate: cert.cert_pem,
        key,
    }
}

async fn status_of(c: &TestCoordinator, creds: &Credentials) -> tonic::Status {
    let mut client = c
        .operator_as(creds)
        .await
        .expect("TLS handshake completes; refusal comes per RPC");
    client
        .get_status(pb::GetStatusRequest {})
        .await
        .expect_err("must be refused")
}

#[tokio::test]
async fn no_client_certificate_is_refused_except_for_enroll() {
    let c = TestCoordinator::start().await.unwrap();
    let config = tls::client_config(&c.admin.ca, None).unwrap();
    let channel = tls::channel(&c.url, config).await.unwrap();
    let err = OperatorServiceClient::new(channel.clone())
        .list_agents(pb::ListAgentsRequest {})
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Unauthenticated);
    assert!(
        err.message().contains("a client certificate is required"),
        "{}",
        err.message()
    );
    let err = AgentServiceClient::new(channel.clone())
        .renew(pb::RenewRequest {
            csr_pem: String::new(),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Unauthenticated);
    // Enroll is reachable without a certificate (and refuses the bad token itself).
    let err = AgentServiceClient::new(channel)
        .enroll(pb::EnrollRequest {
            token: "ferry_nope".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert!(
        err.message().contains("join token not recognised"),
        "{}",
        err.message()
    );
}

#[tokio::test]
async fn certificate_from_a_foreign_ca_is_refused() {
    let c = TestCoordinator::start().await.unwrap();
    let foreign = CertificateAuthority::generate("ferry.test").unwrap();
    let creds = minted(
        &c,
        &foreign,
        "spiffe://ferry.test/operator/admin",
        time::OffsetDateTime::now_utc(),
        Duration::from_secs(600),
    );
    let err = status_of(&c, &creds).await;
    assert_eq!(err.code(), Code::Unauthenticated);
    assert!(
        err.message()
            .contains("not issued by this coordinator's CA"),
        "{}",
        err.message()
    );
}

#[tokio::test]
async fn expired_certificate_is_refused() {
    let c = TestCoordinator::start().await.unwrap();
    let ca = c.ca().unwrap();
    let start = time::OffsetDateTime::now_utc() - Duration::from_secs(3600);
    let creds = minted(
        &c,
        &ca,
        "spiffe://ferry.test/operator/admin",
        start,
        Duration::from_secs(60),
    );
    let err = status_of(&c, &creds).await;
    assert_eq!(err.code(), Code::Unauthenticated);
    assert!(err.message().contains("expired at"), "{}", err.message());
}

#[tokio::test]
async fn identity_of_another_trust_domain_is_refused() {
    let c = TestCoordinator::start().await.unwrap();
    let ca = c.ca().unwrap();
    let creds = minted(
        &c,
        &ca,
        "spiffe://elsewhere/operator/admin",
        time::OffsetDateTime::now_utc(),
        Duration::from_secs(600),
    );
    let err = status_of(&c, &creds).await;
    assert_eq!(err.code(), Code::Unauthenticated);
    assert!(err.message().contains("trust domain"), "{}", err.message());
}

#[tokio::test]
async fn agent_certificate_cannot_call_operator_service() {
    let c = TestCoordinator::start().await.unwrap();
    let agent = c.enroll("web-1", &[]).await.unwrap();
    let id = agent.identity().unwrap();
    let config = tls::client_config(&id.ca_pem, Some((&id.cert_pem, &id.key_pem))).unwrap();
    let mut client = OperatorServiceClient::new(tls::channel(&c.url, config).await.unwrap());
    let err = client
        .list_agents(pb::ListAgentsRequest {})
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied);
    assert!(
        err.message().contains("may only call AgentService"),
        "{}",
        err.message()
    );
}

#[tokio::test]
async fn operator_certificate_cannot_open_an_agent_session() {
    let c = TestCoordinator::start().await.unwrap();
    let config =
        tls::client_config(&c.admin.ca, Some((&c.admin.certificate, &c.admin.key))).unwrap();
    let mut client = AgentServiceClient::new(tls::channel(&c.url, config).await.unwrap());
    let err = client
        .renew(pb::RenewRequest {
            csr_pem: String::new(),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied);
    assert!(
        err.message().contains("may only call OperatorService"),
        "{}",
        err.message()
    );
}

#[tokio::test]
async fn viewer_cannot_create_tokens_but_can_read() {
    let c = TestCoordinator::start().await.unwrap();
    let (key, csr) = pki::generate_key_and_csr("viewer").unwrap();
    let added = c
        .operator()
        .await
        .unwrap()
        .add_operator(pb::AddOperatorRequest {
            name: "vera".into(),
            role: pb::Role::Viewer as i32,
            csr_pem: csr,
        })
        .await
        .unwrap()
        .into_inner();
    let viewer = Credentials {
        coordinator: c.url.clone(),
        name: "vera".into(),
        ca: added.ca_pem,
        certificate: added.certificate_pem,
        key,
    };
    let mut client = c.operator_as(&viewer).await.unwrap();
    let status = client
        .get_status(pb::GetStatusRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(status.caller, "spiffe://ferry.test/operator/vera");
    let err = client
        .create_join_token(pb::CreateJoinTokenRequest::default())
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied);
    assert_eq!(
        err.message(),
        "permission denied: role viewer cannot create join tokens (needs admin)"
    );
    let err = client
        .revoke_agent(pb::RevokeAgentRequest { agent: "x".into() })
        .await
        .unwrap_err();
    assert!(
        err.message().contains("role viewer cannot revoke agents"),
        "{}",
        err.message()
    );

    // Revoked operators are refused from then on, and the name stays taken.
    c.operator()
        .await
        .unwrap()
        .revoke_operator(pb::RevokeOperatorRequest {
            name: "vera".into(),
        })
        .await
        .unwrap();
    let err = client
        .get_status(pb::GetStatusRequest {})
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied);
    assert!(
        err.message().contains("operator vera has been revoked"),
        "{}",
        err.message()
    );
}

#[tokio::test]
async fn join_token_is_single_use() {
    let c = TestCoordinator::start().await.unwrap();
    let token = c.join_token(None, &[("env", "staging")]).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let opts = |sub: &str, name: &str| EnrollOptions {
        coordinator: token.coordinator.clone(),
        token: token.token.clone(),
        ca_pin: token.ca_pin.clone(),
        state_dir: dir.path().join(sub),
        name: Some(name.into()),
        postgres_url: None,
        ..Default::default()
    };
    let first = ferry_agent::enroll::enroll(&opts("a", "first"))
        .await
        .unwrap();
    assert_eq!(first.labels.get("env").map(String::as_str), Some("staging"));
    let err = ferry_agent::enroll::enroll(&opts("b", "second"))
        .await
        .unwrap_err();
    assert!(matches!(err, AgentError::EnrollRefused(_)), "{err}");
    assert!(
        err.to_string().contains("join token was already used"),
        "{err}"
    );
    assert!(
        !dir.path().join("b/agent.toml").exists(),
        "a refused enrollment writes no state"
    );
}

#[tokio::test]
async fn expired_join_token_is_refused() {
    let c = TestCoordinator::start().await.unwrap();
    // No admin can make a token that expires in under a minute, so this one
    // is written into the store as if it had been made two hours ago.
    let secret = "ferry_expired-for-the-test";
    let store = ferry_coordinator::store::open(c.store_location())
        .await
        .unwrap();
    let now = ferry_common::time::now_ms();
    store
        .insert_join_token(&ferry_coordinator::store::JoinTokenRecord {
            token_hash: ferry_coordinator::agents::hash_token(secret),
            name: Some("late".into()),
            labels: Default::default(),
            created_by: "test".into(),
            created_at_ms: now - 7_200_000,
            expires_at_ms: now - 3_600_000,
            used_at_ms: None,
            used_by: None,
        })
        .await
        .unwrap();
    let issued = c.join_token(None, &[]).await.unwrap();
    let token = pb::CreateJoinTokenResponse {
        token: secret.into(),
        ..issued
    };
    let dir = tempfile::tempdir().unwrap();
    let err = ferry_agent::enroll::enroll(&EnrollOptions {
        coordinator: token.coordinator,
        token: token.token,
        ca_pin: token.ca_pin,
        state_dir: dir.path().join("a"),
        ..Default::default()
    })
    .await
    .unwrap_err();
    assert!(err.to_string().contains("join token expired at"), "{err}");
}

#[tokio::test]
async fn wrong_ca_pin_is_refused_before_sending_the_token() {
    let c = TestCoordinator::start().await.unwrap();
    let token = c.join_token(Some("pinned"), &[]).await.unwrap();
    let other = CertificateAuthority::generate("ferry.test").unwrap();
    let dir = tempfile::tempdir().unwrap();
    let opts = EnrollOptions {
        coordinator: token.coordinator.clone(),
        token: token.token.clone(),
        ca_pin: other.pin(),
        state_dir: dir.path().join("a"),
        ..Default::default()
    };
    let err = ferry_agent::enroll::enroll(&opts).await.unwrap_err();
    match &err {
        AgentError::PinMismatch {
            presented,
            expected,
        } => {
            assert_eq!(presented, &token.ca_pin);
            assert_eq!(expected, &other.pin());
        }
        other => panic!("expected a pin mismatch, got {other}"),
    }
    assert_eq!(err.exit_code(), ferry_common::exit::REFUSED);
    // The token never reached the coordinator, so it still works.
    let ok = ferry_agent::enroll::enroll(&EnrollOptions {
        ca_pin: token.ca_pin.clone(),
        ..opts
    })
    .await
    .unwrap();
    assert_eq!(ok.name, "pinned");
}
