//! Attacks on the coordinator's network edge, each performed against the
//! real server: idle and half-open connections, a flood of strangers while
//! an operator works, hostile request paths against `/metrics`, oversized
//! and control-character fields in an enrollment, and token guessing.

use std::io::ErrorKind;
use std::time::{Duration, Instant};

use ferry_common::pki;
use ferry_common::tls;
use ferry_coordinator::config::CoordinatorConfig;
use ferry_integration_tests::{CoordinatorOptions, TestCoordinator, fast_heartbeats};
use ferry_proto::v1 as pb;
use ferry_proto::v1::agent_service_client::AgentServiceClient;
use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;
use tonic::Code;

/// Short deadlines and small pools, so the attacks finish in seconds.
fn tight_limits(c: &mut CoordinatorConfig) {
    fast_heartbeats(c);
    c.limits.handshake_timeout = Duration::from_secs(1);
    c.limits.first_request_timeout = Duration::from_secs(1);
    c.limits.untrusted_lifetime = Duration::from_secs(3);
    c.limits.max_untrusted = 40;
    c.limits.max_untrusted_per_address = 20;
}

async fn tight_coordinator() -> TestCoordinator {
    TestCoordinator::start_with(CoordinatorOptions {
        tweak: Some(tight_limits),
        ..Default::default()
    })
    .await
    .expect("coordinator")
}

fn grpc_addr(c: &TestCoordinator) -> std::net::SocketAddr {
    c.config.listen
}

/// Waits until the server closes `stream` (EOF or reset); returns how long
/// that took, or `None` if it stayed open for `within`.
async fn closed_within(stream: &mut TcpStream, within: Duration) -> Option<Duration> {
    let start = Instant::now();
    let mut buf = [0u8; 4096];
    loop {
        match tokio::time::timeout(
            within.saturating_sub(start.elapsed()),
            stream.read(&mut buf),
        )
        .await
        {
            Err(_) => return None,
            Ok(Ok(0)) => return Some(start.elapsed()),
            Ok(Ok(_)) => continue, // TLS records (alerts) before the close
            Ok(Err(e))
                if matches!(
                    e.kind(),
                    ErrorKind::ConnectionReset | ErrorKind::BrokenPipe | ErrorKind::UnexpectedEof
                ) =>
            {
                return Some(start.elapsed());
            }
            Ok(Err(e)) => panic!("unexpected read error: {e}"),
        }
    }
}

/// The value of the first sample of `name` (with these labels) in a
/// Prometheus exposition.
fn sample(metrics: &str, series: &str) -> Option<f64> {
    metrics
        .lines()
        .find(|l| l.starts_with(series) && l[series.len()..].starts_with(' '))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn idle_connections_are_closed_within_their_deadlines_while_operators_get_in() {
    let c = tight_coordinator().await;
    let addr = grpc_addr(&c);

    // 1. Strangers that connect and say nothing, not even a TLS hello:
    // beyond the per-address limit they are closed at once, the rest when
    // the handshake deadline passes.
    let mut silent = Vec::new();
    for _ in 0..60 {
        silent.push(TcpStream::connect(addr).await.expect("connect"));
    }
    // 2. Meanwhile an operator works.
    let mut op = c.operator().await.unwrap();
    let started = Instant::now();
    op.get_status(pb::GetStatusRequest {})
        .await
        .expect("an operator gets in during the flood");
    assert!(started.elapsed() < Duration::from_secs(2));

    let mut closed_at_once = 0;
    let mut closed_at_deadline = 0;
    for s in &mut silent {
        let took = closed_within(s, Duration::from_secs(4))
            .await
            .expect("every silent connection is closed");
        if took < Duration::from_millis(500) {
            closed_at_once += 1;
        } else {
            assert!(took < Duration::from_secs(3), "closed after {took:?}");
            closed_at_deadline += 1;
        }
    }
    assert!(
        closed_at_once >= 40,
        "{closed_at_once} closed at once (limit 20 per address)"
    );
    assert!(closed_at_deadline >= 1, "the admitted ones time out");

    // 3. A stranger that completes TLS without a certificate and then sends
    // no HTTP/2 preface: closed at the first-request deadline.
    let config = tls::client_config(&c.admin.ca, None).unwrap();
    let connector = tokio_rustls::TlsConnector::from(config);
    let tcp = TcpStream::connect(addr).await.unwrap();
    let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
    let mut tls = connector.connect(name, tcp).await.expect("TLS handshake");
    let start = Instant::now();
    let mut buf = [0u8; 1024];
    let eof = tokio::time::timeout(Duration::from_secs(4), async {
        loop {
            match tls.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(_) => continue,
            }
        }
    })
    .await;
    assert!(eof.is_ok(), "an idle TLS connection stays open");
    assert!(
        start.elapsed() >= Duration::from_millis(800),
        "closed before its deadline: {:?}",
        start.elapsed()
    );

    // 4. The operator's own connection, used, is not cut by the deadline.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    op.get_status(pb::GetStatusRequest {})
        .await
        .expect("a connection in use outlives the first-request deadline");

    let (_, metrics) = c.admin_get("/metrics").await.unwrap();
    assert!(
        sample(
            &metrics,
            "ferry_connections_refused_total{reason=\"max_untrusted_per_address\"}"
        )
        .unwrap_or(0.0)
            >= 40.0,
        "{metrics}"
    );
    assert!(
        sample(
            &metrics,
            "ferry_connections_timed_out_total{reason=\"handshake\"}"
        )
        .unwrap_or(0.0)
            >= 1.0,
        "{metrics}"
    );
    assert!(
        sample(
            &metrics,
            "ferry_connections_timed_out_total{reason=\"first_request\"}"
        )
        .unwrap_or(0.0)
            >= 1.0,
        "{metrics}"
    );
}

/// Calls `path` on the coordinator with the admin's certificate.
async fn call_path(channel: tonic::transport::Channel, path: &str) -> tonic::Status {
    let mut grpc = tonic::client::Grpc::new(channel);
    grpc.ready().await.unwrap();
    let codec = tonic_prost::ProstCodec::<pb::GetStatusRequest, pb::GetStatusResponse>::default();
    let path: http::uri::PathAndQuery = path.parse().expect("a path http accepts");
    grpc.unary(tonic::Request::new(pb::GetStatusRequest {}), path, codec)
        .await
        .expect_err("no such method")
}

/// Every line of a text exposition is a comment or `name{labels} value`.
fn assert_valid_exposition(text: &str) {
    for line in text.lines() {
        if line.starts_with('#') || line.is_empty() {
            continue;
        }
        let (series, value) = line.rsplit_once(' ').expect(line);
        assert!(value.parse::<f64>().is_ok(), "bad value in {line:?}");
        let name_end = series.find('{').unwrap_or(series.len());
        let name = &series[..name_end];
        assert!(
            !name.is_empty()
                && name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':'),
            "bad metric name in {line:?}"
        );
        if name_end < series.len() {
            assert!(series.ends_with('}'), "unterminated labels in {line:?}");
        }
    }
}

#[tokio::test]
async fn metrics_stay_bounded_and_valid_whatever_paths_clients_send() {
    let c = TestCoordinator::start().await.unwrap();
    let admin =
        tls::client_config(&c.admin.ca, Some((&c.admin.certificate, &c.admin.key))).unwrap();
    let channel = tls::channel(&c.url, admin).await.unwrap();
    let stranger = tls::channel(&c.url, tls::client_config(&c.admin.ca, None).unwrap())
        .await
        .unwrap();

    let hostile = "/x\"}_bad_";
    let status = call_path(channel.clone(), hostile).await;
    assert_eq!(status.code(), Code::Unimplemented, "{status:?}");
    // Every series the loop below touches exists from here on: one refusal.
    call_path(stranger.clone(), hostile).await;
    let (_, first) = c.admin_get("/metrics").await.unwrap();
    assert_valid_exposition(&first);
    assert!(!first.contains("_bad_"), "{first}");

    for i in 0..1000 {
        let path = format!("/ferry.v1.Nope/Method{i}");
        if i % 2 == 0 {
            call_path(channel.clone(), &path).await;
        } else {
            // Unauthenticated: counted by reason only.
            let status = call_path(stranger.clone(), &path).await;
            assert_eq!(status.code(), Code::Unauthenticated);
        }
    }
    let (_, after) = c.admin_get("/metrics").await.unwrap();
    assert_valid_exposition(&after);
    assert!(
        after.len() <= first.len() + 16,
        "the exposition grew from {} to {} bytes",
        first.len(),
        after.len()
    );
    assert!(!after.contains("Nope"), "{after}");
    assert!(
        sample(&after, "ferry_rpc_requests_total{method=\"other\"}").unwrap() >= 501.0,
        "{after}"
    );
    assert!(
        sample(
            &after,
            "ferry_rpc_refused_total{reason=\"unauthenticated\"}"
        )
        .unwrap()
            >= 500.0,
        "{after}"
    );
}

async fn stranger_agent_client(
    c: &TestCoordinator,
) -> AgentServiceClient<tonic::transport::Channel> {
    let config = tls::client_config(&c.admin.ca, None).unwrap();
    AgentServiceClient::new(tls::channel(&c.url, config).await.unwrap())
}

#[tokio::test]
async fn an_enrollment_with_oversized_or_control_fields_is_refused_and_listings_stay_readable() {
    let c = TestCoordinator::start().await.unwrap();
    let mut agents = stranger_agent_client(&c).await;
    let (_key, csr) = pki::generate_key_and_csr("h").unwrap();
    let token = c.join_token(None, &[]).await.unwrap();
    let cases = [
        ("9".repeat(1 << 20), "web-1".to_string(), "version"),
        (
            "1.0.0".to_string(),
            "web-1\nagent.revoke forged".to_string(),
            "hostname",
        ),
        ("1.0\u{1b}[2J".to_string(), "web-1".to_string(), "version"),
    ];
    for (version, hostname, field) in cases {
        let err = agents
            .enroll(pb::EnrollRequest {
                token: token.token.clone(),
                csr_pem: csr.clone(),
                hostname,
                version,
                name: String::new(),
            })
            .await
            .expect_err("refused");
        assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");
        assert!(err.message().contains(field), "{}", err.message());
        assert!(err.message().len() < 300, "the value is not echoed");
    }
    // The token was not spent by the refusals, and listings work.
    c.enroll("web-1", &[]).await.expect("a good enrollment");
    let list = c
        .operator()
        .await
        .unwrap()
        .list_agents(pb::ListAgentsRequest {})
        .await
        .unwrap()
        .into_inner();
    assert!(list.agents.iter().all(|a| a.version.len() <= 64));
}

#[tokio::test]
async fn guessed_tokens_are_rate_limited_per_address_and_counted() {
    let c = TestCoordinator::start().await.unwrap();
    let mut agents = stranger_agent_client(&c).await;
    let (_key, csr) = pki::generate_key_and_csr("h").unwrap();
    let guess = |n: usize| pb::EnrollRequest {
        token: format!("ferry_guess{n}"),
        csr_pem: csr.clone(),
        hostname: "h".into(),
        version: "1".into(),
        name: format!("guess-{n}"),
    };
    for n in 0..ferry_coordinator::core::ENROLL_FAILURES_ALLOWED {
        let err = agents.enroll(guess(n)).await.unwrap_err();
        assert_eq!(err.code(), Code::Unauthenticated, "guess {n}: {err:?}");
    }
    let err = agents.enroll(guess(99)).await.unwrap_err();
    assert_eq!(err.code(), Code::ResourceExhausted, "{err:?}");
    assert!(
        err.message()
            .contains("too many failed enrollments from 127.0.0.1"),
        "{}",
        err.message()
    );
    // Even a good token waits while the address is limited.
    let token = c.join_token(Some("later"), &[]).await.unwrap();
    let mut good = guess(100);
    good.token = token.token;
    good.name = "later".into();
    let err = agents.enroll(good).await.unwrap_err();
    assert_eq!(err.code(), Code::ResourceExhausted);

    let (_, metrics) = c.admin_get("/metrics").await.unwrap();
    let failures = sample(&metrics, "ferry_enroll_failures_total").unwrap();
    assert!(
        failures >= (ferry_coordinator::core::ENROLL_FAILURES_ALLOWED + 2) as f64,
        "{metrics}"
    );
}

#[tokio::test]
async fn a_revoked_operators_watch_ends_within_a_second() {
    let c = TestCoordinator::start().await.unwrap();
    // A job that stays open: its agent is enrolled but never started.
    let _offline = c.enroll("offline-1", &[]).await.unwrap();
    let job = c.submit("probe", "", &["offline-1"], 600).await.unwrap();
    let vera = c.add_operator("vera", pb::Role::Viewer).await.unwrap();
    let mut watch = c
        .operator_as(&vera)
        .await
        .unwrap()
        .watch_job(pb::WatchJobRequest {
            job_id: job.id.clone(),
            after_seq: 0,
        })
        .await
        .expect("vera may watch")
        .into_inner();
    // Events so far arrive; the stream stays open.
    let first = tokio::time::timeout(Duration::from_secs(5), watch.message())
        .await
        .expect("a first event")
        .expect("no error");
    assert!(first.is_some());

    c.operator()
        .await
        .unwrap()
        .revoke_operator(pb::RevokeOperatorRequest {
            name: "vera".into(),
        })
        .await
        .unwrap();
    let revoked_at = Instant::now();
    let end = tokio::time::timeout(Duration::from_secs(2), async {
        loop {
            match watch.message().await {
                Ok(Some(_)) => continue,
                Ok(None) => return None,
                Err(status) => return Some(status),
            }
        }
    })
    .await
    .expect("the watch ends");
    assert!(revoked_at.elapsed() < Duration::from_secs(1));
    let status = end.expect("it ends with a refusal, not quietly");
    assert_eq!(status.code(), Code::PermissionDenied);
    assert!(
        status.message().contains("vera has been revoked"),
        "{status:?}"
    );
}

#[tokio::test]
async fn join_token_lifetimes_outside_the_limits_are_refused() {
    let c = TestCoordinator::start().await.unwrap();
    let mut op = c.operator().await.unwrap();
    for ttl_seconds in [1, 59, 31 * 86_400] {
        let err = op
            .create_join_token(pb::CreateJoinTokenRequest {
                name: String::new(),
                labels: Default::default(),
                ttl_seconds,
            })
            .await
            .expect_err("refused");
        assert_eq!(err.code(), Code::InvalidArgument);
        assert!(
            err.message().contains("from 1m to 30d"),
            "{ttl_seconds}: {}",
            err.message()
        );
    }
    op.create_join_token(pb::CreateJoinTokenRequest {
        name: String::new(),
        labels: Default::default(),
        ttl_seconds: 60,
    })
    .await
    .expect("one minute is allowed");
}

/// The example app's deploy spec, as `ferry deploy` would make it.
fn example_deploy_spec() -> ferry_common::job::DeploySpec {
    let file =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/example/ferry.toml");
    ferry_common::appfile::load(&file)
        .unwrap()
        .deploy_spec("staging", "1.0.0")
        .unwrap()
}

#[tokio::test]
async fn a_raw_deploy_is_admin_only_and_held_to_the_app_files_rules() {
    let c = TestCoordinator::start().await.unwrap();
    let _web = c.enroll("web-1", &[]).await.unwrap();
    let submit = |spec: ferry_common::job::DeploySpec| pb::SubmitJobRequest {
        kind: "deploy".into(),
        spec_json: serde_json::to_string(&spec).unwrap(),
        target: Some(pb::Selector {
            agents: vec!["web-1".into()],
            labels: Default::default(),
        }),
        idempotency_key: String::new(),
        deadline_seconds: 60,
    };
    // A traversal in a name never reaches Docker: refused at submit.
    let mut evil = example_deploy_spec();
    evil.app = "../../../../tmp/ferrypwn-x".into();
    let err = c
        .operator()
        .await
        .unwrap()
        .submit_job(submit(evil))
        .await
        .expect_err("refused");
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(
        err.message().contains("deploy spec: app:"),
        "{}",
        err.message()
    );
    let mut spaced = example_deploy_spec();
    spaced.services[0].name = "web x".into();
    let err = c
        .operator()
        .await
        .unwrap()
        .submit_job(submit(spaced))
        .await
        .expect_err("refused");
    assert!(
        err.message().contains("deploy spec: services[0].name:"),
        "{}",
        err.message()
    );

    // A deployer deploys through `ferry deploy`, not a raw job.
    let dee = c.add_operator("dee", pb::Role::Deployer).await.unwrap();
    let err = c
        .operator_as(&dee)
        .await
        .unwrap()
        .submit_job(submit(example_deploy_spec()))
        .await
        .expect_err("refused");
    assert_eq!(err.code(), Code::PermissionDenied);
    assert!(
        err.message().contains("use `ferry deploy`"),
        "{}",
        err.message()
    );

    let jobs = c
        .operator()
        .await
        .unwrap()
        .list_jobs(pb::ListJobsRequest::default())
        .await
        .unwrap()
        .into_inner();
    assert!(jobs.jobs.is_empty(), "no job was created: {:?}", jobs.jobs);
}

fn no_renewal_overlap(c: &mut CoordinatorConfig) {
    fast_heartbeats(c);
    c.renewal_overlap = Duration::ZERO;
}

async fn as_agent(
    c: &TestCoordinator,
    id: &ferry_agent::config::Identity,
) -> AgentServiceClient<tonic::transport::Channel> {
    let config = tls::client_config(&id.ca_pem, Some((&id.cert_pem, &id.key_pem))).unwrap();
    AgentServiceClient::new(tls::channel(&c.url, config).await.unwrap())
}

/// A certificate that a renewal replaced is refused, and may never renew
/// itself: a stolen copy cannot outlive the agent's own renewal.
#[tokio::test]
async fn a_renewed_agents_old_certificate_is_refused() {
    let c = TestCoordinator::start_with(CoordinatorOptions {
        tweak: Some(no_renewal_overlap),
        ..Default::default()
    })
    .await
    .unwrap();
    let enrolled = c.enroll("renewed-1", &[]).await.unwrap();
    let old = enrolled.identity().unwrap();
    let (key, csr) = pki::generate_key_and_csr("ferry-agent").unwrap();
    let reply = as_agent(&c, &old)
        .await
        .renew(pb::RenewRequest { csr_pem: csr })
        .await
        .expect("the current certificate renews")
        .into_inner();

    let (_, csr) = pki::generate_key_and_csr("ferry-agent").unwrap();
    let err = as_agent(&c, &old)
        .await
        .renew(pb::RenewRequest { csr_pem: csr })
        .await
        .expect_err("the replaced certificate may not renew");
    assert_eq!(err.code(), Code::PermissionDenied);
    assert!(
        err.message().contains("was replaced by a renewal"),
        "{}",
        err.message()
    );
    let hello = pb::AgentMessage {
        msg: Some(pb::agent_message::Msg::Hello(pb::Hello::default())),
    };
    let err = as_agent(&c, &old)
        .await
        .session(tokio_stream::iter(vec![hello]))
        .await
        .expect_err("nor open a session");
    assert_eq!(err.code(), Code::PermissionDenied);

    let new = ferry_agent::config::Identity {
        ca_pem: old.ca_pem.clone(),
        cert_pem: reply.certificate_pem,
        key_pem: key,
    };
    let (_, csr) = pki::generate_key_and_csr("ferry-agent").unwrap();
    as_agent(&c, &new)
        .await
        .renew(pb::RenewRequest { csr_pem: csr })
        .await
        .expect("the new certificate works");
    let (_, metrics) = c.admin_get("/metrics").await.unwrap();
    assert!(
        sample(
            &metrics,
            "ferry_rpc_refused_total{reason=\"superseded_certificate\"}"
        )
        .unwrap_or(0.0)
            >= 2.0,
        "{metrics}"
    );
}

/// `ferry` tries the coordinators of its credentials in turn: with the
/// first one gone it works through the second, as agents do.
#[tokio::test]
async fn the_cli_fails_over_to_the_next_coordinator() {
    let c = TestCoordinator::start().await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let dead = format!(
        "https://127.0.0.1:{}",
        ferry_integration_tests::stable_port()
    );
    let mut creds = c.admin.clone();
    creds.coordinator = format!("{dead}, {}", c.url);
    let path = dir.path().join("two.credentials");
    creds.save(&path, false).unwrap();
    let ferry = |env: &[(&str, &str)]| {
        let mut cmd = tokio::process::Command::new(ferry_integration_tests::bin::path("ferry"));
        cmd.args(["status", "--output", "json", "--credentials"])
            .arg(&path)
            .env_remove("FERRY_COORDINATOR");
        for (k, v) in env {
            cmd.env(k, v);
        }
        cmd.output()
    };
    let out = ferry(&[]).await.unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // FERRY_COORDINATOR overrides the file; with only dead addresses the
    // CLI says so, naming where they came from, and exits 5.
    let out = ferry(&[("FERRY_COORDINATOR", &dead)]).await.unwrap();
    assert_eq!(out.status.code(), Some(ferry_common::exit::UNAVAILABLE));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("FERRY_COORDINATOR"), "{stderr}");
}
