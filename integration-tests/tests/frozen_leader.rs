//! Two real `ferry-coordinator` processes on one PostgreSQL store: the
//! leader is frozen with SIGSTOP (its process and sockets stay, as in a VM
//! pause or a partition) and the other takes the leadership within the
//! lease and enforces the deadlines; thawed, the old leader sees it has
//! lost it.

use std::net::SocketAddr;
use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

use ferry_integration_tests::{bin, postgres, setup, stable_port};
use ferry_proto::v1 as pb;
use ferry_proto::v1::operator_service_client::OperatorServiceClient;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::process::{Child, Command};

/// `GET path` on an admin port: (status, body), or None if it does not answer.
async fn get(addr: SocketAddr, path: &str) -> Option<(u16, String)> {
    let fetch = async {
        let mut s = tokio::net::TcpStream::connect(addr).await.ok()?;
        s.write_all(format!("GET {path} HTTP/1.0\r\nHost: x\r\n\r\n").as_bytes())
            .await
            .ok()?;
        let mut buf = String::new();
        s.read_to_string(&mut buf).await.ok()?;
        let code = buf.split_whitespace().nth(1)?.parse().ok()?;
        let body = buf.split_once("\r\n\r\n").map(|(_, b)| b.to_string())?;
        Some((code, body))
    };
    tokio::time::timeout(Duration::from_secs(2), fetch)
        .await
        .ok()
        .flatten()
}

/// Whether the coordinator with this admin port says it leads.
async fn leads(admin: SocketAddr) -> Option<bool> {
    let (_, body) = get(admin, "/metrics").await?;
    body.lines()
        .find(|l| l.starts_with("ferry_leader "))
        .map(|l| l.ends_with(" 1"))
}

fn serve(data_dir: &Path, grpc: SocketAddr, admin: SocketAddr, url: &str) -> Child {
    Command::new(bin::path("ferry-coordinator"))
        .arg("serve")
        .arg("--data-dir")
        .arg(data_dir)
        .arg("--listen")
        .arg(grpc.to_string())
        .arg("--admin-listen")
        .arg(admin.to_string())
        // Not a flag: a password there would show in `ps`.
        .env("FERRY_DATABASE_URL", url)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("start ferry-coordinator")
}

fn signal(child: &Child, sig: &str) {
    let pid = child.id().expect("running").to_string();
    let ok = std::process::Command::new("kill")
        .args([sig, &pid])
        .status()
        .expect("run kill")
        .success();
    assert!(ok, "kill {sig} {pid}");
}

async fn wait_for<F, Fut>(within: Duration, what: &str, mut check: F) -> Duration
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let start = Instant::now();
    while !check().await {
        assert!(start.elapsed() < within, "{what} within {within:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    start.elapsed()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frozen_leader_loses_the_leadership_within_its_lease() {
    setup();
    let Some(url) = postgres::fresh_database().await else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let (a_dir, b_dir) = (dir.path().join("a"), dir.path().join("b"));
    let port = |_| -> SocketAddr { format!("127.0.0.1:{}", stable_port()).parse().unwrap() };
    let (a_grpc, a_admin, b_grpc, b_admin) = (port(1), port(2), port(3), port(4));
    let init = std::process::Command::new(bin::path("ferry-coordinator"))
        .args(["init", "--data-dir"])
        .arg(&a_dir)
        .stdout(Stdio::null())
        .status()
        .unwrap();
    assert!(init.success());
    // Coordinators sharing a store share the CA and the secrets key.
    std::fs::create_dir_all(&b_dir).unwrap();
    for entry in std::fs::read_dir(&a_dir).unwrap() {
        let entry = entry.unwrap();
        if entry.file_type().unwrap().is_file() {
            std::fs::copy(entry.path(), b_dir.join(entry.file_name())).unwrap();
        }
    }
    let a = serve(&a_dir, a_grpc, a_admin, &url);
    let b = serve(&b_dir, b_grpc, b_admin, &url);
    for admin in [a_admin, b_admin] {
        wait_for(Duration::from_secs(20), "ready", || async move {
            matches!(get(admin, "/readyz").await, Some((200, _)))
        })
        .await;
    }
    wait_for(Duration::from_secs(10), "one leader", || async {
        leads(a_admin).await.unwrap_or(false) != leads(b_admin).await.unwrap_or(false)
    })
    .await;
    let a_leads = leads(a_admin).await.unwrap();
    let (leader, leader_admin, other_admin) = if a_leads {
        (&a, a_admin, b_admin)
    } else {
        (&b, b_admin, a_admin)
    };

    // An operator of the coordinator that stays up, and a job whose only
    // agent never comes: its deadline is a leader's duty to enforce.
    let mut creds = ferry_common::credentials::Credentials::load(&a_dir.join("admin.credentials"))
        .expect("admin credentials");
    creds.coordinator = format!("https://{}", if a_leads { b_grpc } else { a_grpc });
    let config =
        ferry_common::tls::client_config(&creds.ca, Some((&creds.certificate, &creds.key)))
            .unwrap();
    let mut op = OperatorServiceClient::new(
        ferry_common::tls::channel(&creds.coordinator, config)
            .await
            .expect("connect to the coordinator that stays up"),
    );
    let token = op
        .create_join_token(pb::CreateJoinTokenRequest {
            name: "away".into(),
            labels: Default::default(),
            ttl_seconds: 0,
        })
        .await
        .unwrap()
        .into_inner();
    ferry_agent::enroll::enroll(&ferry_agent::enroll::EnrollOptions {
        // The token names the advertised address; this one is on another port.
        coordinator: creds.coordinator.clone(),
        token: token.token,
        ca_pin: token.ca_pin,
        state_dir: dir.path().join("agent"),
        ..Default::default()
    })
    .await
    .expect("enroll an agent that never runs");

    signal(leader, "-STOP");
    let job = op
        .submit_job(pb::SubmitJobRequest {
            kind: "probe".into(),
            spec_json: String::new(),
            target: Some(pb::Selector {
                agents: vec!["away".into()],
                labels: Default::default(),
            }),
            idempotency_key: String::new(),
            deadline_seconds: 2,
        })
        .await
        .expect("submit to the coordinator that stays up")
        .into_inner()
        .job
        .unwrap();
    let took = wait_for(
        Duration::from_secs(10),
        "the other coordinator leads",
        || async { leads(other_admin).await == Some(true) },
    )
    .await;
    // The lease is 5 s; the other renews every 500 ms.
    assert!(took <= Duration::from_secs(7), "took over after {took:?}");

    // Its deadline passes while the old leader is still frozen: the new
    // one expires the task.
    wait_for(
        Duration::from_secs(10),
        "the job's deadline enforced",
        || {
            let mut op = op.clone();
            let id = job.id.clone();
            async move {
                let job = op
                    .get_job(pb::GetJobRequest { job_id: id })
                    .await
                    .unwrap()
                    .into_inner()
                    .job
                    .unwrap();
                job.tasks.iter().all(|t| t.state == "expired")
            }
        },
    )
    .await;

    signal(leader, "-CONT");
    wait_for(
        Duration::from_secs(5),
        "the thawed coordinator sees it lost the leadership",
        || async { leads(leader_admin).await == Some(false) },
    )
    .await;
    assert_eq!(leads(other_admin).await, Some(true), "one leader, not two");
}
