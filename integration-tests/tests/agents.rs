//! Agent sessions: online state and health, revocation cutting a live
//! stream, certificate renewal, reconnection after a coordinator restart.

use std::time::{Duration, Instant};

use ferry_agent::error::AgentError;
use ferry_common::tls;
use ferry_coordinator::config::CoordinatorConfig;
use ferry_integration_tests::proxy::Proxy;
use ferry_integration_tests::{CoordinatorOptions, TestCoordinator, fast_heartbeats};
use ferry_proto::v1 as pb;
use ferry_proto::v1::agent_service_client::AgentServiceClient;
use tonic::Code;

#[tokio::test]
async fn agent_comes_online_with_health_and_labels() {
    let c = TestCoordinator::start().await.unwrap();
    let _agent = c.start_agent("web-1", &[("env", "staging")]).await.unwrap();
    let a = c.agent("web-1").await.unwrap().unwrap();
    assert_eq!(a.labels.get("env").map(String::as_str), Some("staging"));
    assert_eq!(a.version, ferry_common::VERSION);
    // Heartbeats carry health; the first arrives right after Welcome.
    let deadline = Instant::now() + Duration::from_secs(5);
    let health = loop {
        if let Some(h) = c.agent("web-1").await.unwrap().unwrap().health {
            break h;
        }
        assert!(Instant::now() < deadline, "no health reported");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(!health.disks.is_empty() && health.disks[0].total_bytes > 0);
    assert!(health.docker_reachable || !health.docker_error.is_empty());

    let status = c
        .operator()
        .await
        .unwrap()
        .get_status(pb::GetStatusRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!((status.agents_online, status.agents_total), (1, 1));
    assert_eq!(status.store_backend, "sqlite");

    let (code, metrics) = c.admin_get("/metrics").await.unwrap();
    assert_eq!(code, 200);
    assert!(metrics.contains("ferry_agents_online 1"), "{metrics}");
    assert_eq!(c.admin_get("/readyz").await.unwrap().0, 200);
    assert_eq!(c.admin_get("/healthz").await.unwrap().0, 200);
}

#[tokio::test]
async fn stopped_agent_goes_offline() {
    let c = TestCoordinator::start().await.unwrap();
    let mut agent = c.start_agent("worker-1", &[]).await.unwrap();
    agent.stop().await.unwrap().unwrap();
    c.wait_for_agent("worker-1", "offline", Duration::from_secs(5))
        .await
        .unwrap();
}

#[tokio::test]
async fn revoking_cuts_the_live_session_within_a_second_and_refuses_it_after() {
    let c = TestCoordinator::start().await.unwrap();
    let mut agent = c.start_agent("db-1", &[]).await.unwrap();
    let identity = agent.agent.identity().unwrap();
    let started = Instant::now();
    let reply = c
        .operator()
        .await
        .unwrap()
        .revoke_agent(pb::RevokeAgentRequest {
            agent: "db-1".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert!(reply.was_connected);
    let ended = agent
        .wait_exit(Duration::from_secs(1))
        .await
        .expect("agent must stop within 1s");
    let elapsed = started.elapsed();
    match ended {
        Err(e @ AgentError::Revoked(_)) => assert_eq!(e.exit_code(), ferry_common::exit::REFUSED),
        other => panic!("expected Revoked, got {other:?}"),
    }
    assert!(elapsed < Duration::from_secs(1), "took {elapsed:?}");
    c.wait_for_agent("db-1", "revoked", Duration::from_secs(1))
        .await
        .unwrap();

    // Its certificate is still unexpired, but it is refused from now on.
    let config = tls::client_config(
        &identity.ca_pem,
        Some((&identity.cert_pem, &identity.key_pem)),
    )
    .unwrap();
    let mut client = AgentServiceClient::new(tls::channel(&c.url, config).await.unwrap());
    let err = client
        .renew(pb::RenewRequest {
            csr_pem: String::new(),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied);
    assert!(
        err.message().contains("has been revoked"),
        "{}",
        err.message()
    );

    // A fresh agent may take the name again.
    let _again = c.start_agent("db-1", &[]).await.unwrap();
}

/// A revocation whose notification never reached this coordinator (written
/// by another one, say, while this one's `LISTEN` was reconnecting): the
/// periodic sweep of revoked agents still cuts the live session.
#[tokio::test]
async fn a_revocation_the_coordinator_was_not_told_of_is_enforced_by_the_sweep() {
    let c = TestCoordinator::start().await.unwrap();
    let mut agent = c.start_agent("db-2", &[]).await.unwrap();
    let id = c.agent("db-2").await.unwrap().unwrap().id;
    // Straight into the store: no RPC, no notification.
    let store = ferry_coordinator::store::open(c.store_location())
        .await
        .unwrap();
    store
        .revoke_agent(id.parse().unwrap(), ferry_common::time::now_ms())
        .await
        .unwrap();
    // The sweep runs every 20 ticks (4 s with the test's 200 ms heartbeats).
    let ended = agent
        .wait_exit(Duration::from_secs(10))
        .await
        .expect("the sweep must cut the session within 10s");
    assert!(
        matches!(ended, Err(AgentError::Revoked(_))),
        "expected Revoked, got {ended:?}"
    );
}

fn short_agent_certs(c: &mut CoordinatorConfig) {
    fast_heartbeats(c);
    c.agent_cert_ttl = Duration::from_secs(6);
}

#[tokio::test]
async fn agent_renews_its_certificate_before_expiry_and_stays_online() {
    let c = TestCoordinator::start_with(CoordinatorOptions {
        tweak: Some(short_agent_certs),
        ..Default::default()
    })
    .await
    .unwrap();
    let agent = c.start_agent("renewer", &[]).await.unwrap();
    let first = agent.agent.identity().unwrap();
    // Renewal is due at two thirds of the 6s lifetime: about 4s in.
    let first_serial = ferry_common::pki::cert_info_pem(&first.cert_pem)
        .unwrap()
        .serial_hex;
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let now = agent.agent.identity().unwrap();
        let serial = ferry_common::pki::cert_info_pem(&now.cert_pem)
            .unwrap()
            .serial_hex;
        if serial != first_serial {
            assert_ne!(now.key_pem, first.key_pem, "renewal rotates the key too");
            break;
        }
        assert!(Instant::now() < deadline, "certificate was not renewed");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(agent.is_running());
    c.wait_for_agent("renewer", "online", Duration::from_secs(2))
        .await
        .unwrap();
}

#[tokio::test]
async fn agent_reconnects_after_the_coordinator_restarts() {
    let mut c = TestCoordinator::start().await.unwrap();
    let agent = c.start_agent("web-2", &[]).await.unwrap();
    c.restart().await.unwrap();
    c.wait_for_agent("web-2", "online", Duration::from_secs(10))
        .await
        .unwrap();
    assert!(agent.is_running());
}

/// `serve` returns only once its listening socket is closed, with agents
/// connected: a supervisor restarting it on the same address can bind at
/// once (before, the accept loop could still hold the port for a moment).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopped_coordinator_has_released_its_port() {
    let mut c = TestCoordinator::start().await.unwrap();
    let _agent = c.start_agent("web-3", &[]).await.unwrap();
    for round in 0..5 {
        c.stop().await.unwrap();
        let rebound = std::net::TcpListener::bind(c.config.listen);
        assert!(
            rebound.is_ok(),
            "round {round}: {} still taken after stop: {rebound:?}",
            c.config.listen
        );
        drop(rebound);
        c.restart().await.unwrap();
    }
}
/// The value of a metric on the coordinator's admin port.
async fn metric(c: &TestCoordinator, name: &str) -> u64 {
    let (_, body) = c.admin_get("/metrics").await.unwrap();
    body.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
        .unwrap_or_else(|| panic!("no {name} in {body}"))
}

/// An agent whose connection breaks while its session is being set up
/// (here while the coordinator reconciles the 2,000 tasks its Hello says it
/// holds, which takes a while) leaves no session behind: once the
/// coordinator has noticed, the agent is offline, as after any other
/// broken session.
#[tokio::test]
async fn a_session_cut_during_setup_leaves_no_session_behind() {
    let c = TestCoordinator::start().await.unwrap();
    let enrolled = c.enroll("ghost-1", &[]).await.unwrap();
    let identity = enrolled.identity().unwrap();
    let config = tls::client_config(
        &identity.ca_pem,
        Some((&identity.cert_pem, &identity.key_pem)),
    )
    .unwrap();
    let proxy = Proxy::start(c.config.listen).await.unwrap();
    let mut client = AgentServiceClient::new(tls::channel(&proxy.url(), config).await.unwrap());
    let hello = pb::AgentMessage {
        msg: Some(pb::agent_message::Msg::Hello(pb::Hello {
            agent_id: enrolled.enrolled.agent_id.clone(),
            version: "0.0.0-test".into(),
            capabilities: Vec::new(),
            held_tasks: (0..2_000)
                .map(|_| pb::HeldTask {
                    task_id: uuid::Uuid::now_v7().to_string(),
                    attempt: 1,
                    last_seq: 1,
                    finished: false,
                })
                .collect(),
            hostname: "ghost-1.example.net".into(),
        })),
    };
    // Hello, then nothing: the stream stays open until the connection breaks.
    let outbound =
        futures::StreamExt::chain(futures::stream::iter([hello]), futures::stream::pending());
    let call = tokio::spawn(async move {
        let response = client.session(outbound).await;
        futures::future::pending::<()>().await;
        drop((client, response));
    });
    // Cut as soon as the coordinator has accepted the session, whether it
    // has answered or not (before the fix it answered after reconciling).
    let deadline = Instant::now() + Duration::from_secs(10);
    while metric(&c, "ferry_agent_sessions_opened_total").await == 0 {
        assert!(Instant::now() < deadline, "the session was never accepted");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert_eq!(proxy.cut(), 1);

    let cut = Instant::now();
    let deadline = cut + Duration::from_secs(30);
    loop {
        let online = metric(&c, "ferry_agents_online").await;
        let state = c.agent("ghost-1").await.unwrap().unwrap().state;
        if online == 0 && state == pb::AgentState::Offline as i32 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "a session outlived its connection: {online} online, agent state {state}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    eprintln!("offline {:?} after the cut", cut.elapsed());
    call.abort();
}

#[tokio::test]
async fn agents_work_on_a_postgres_store() {
    let Some(c) = TestCoordinator::start_on_postgres().await.unwrap() else {
        return;
    };
    let _agent = c
        .start_agent("pg-agent", &[("env", "production")])
        .await
        .unwrap();
    let status = c
        .operator()
        .await
        .unwrap()
        .get_status(pb::GetStatusRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(status.store_backend, "postgres");
    assert_eq!(status.agents_online, 1);
}
