//! The store going away under a live coordinator: PostgreSQL behind a
//! proxy that the test cuts for longer than every pool timeout while an
//! agent's task keeps reporting. Nothing the agent sent may be dropped: the
//! job ends by itself once the store is back, with every event stored
//! exactly once, and `/readyz` says 503 promptly while the store is gone.
//! The same outage on two coordinators sharing the store, under a deploy
//! rollout: it ends by itself once the store is back, its step run once.

use std::time::{Duration, Instant};

use ferry_integration_tests::proxy::Proxy;
use ferry_integration_tests::{
    CoordinatorOptions, StoreChoice, TestCoordinator, postgres, stable_port,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// `url` with its host and port replaced by `addr`.
fn via(url: &str, addr: std::net::SocketAddr) -> String {
    let (scheme, rest) = url.split_once("://").unwrap();
    let (userinfo, after) = rest.rsplit_once('@').unwrap();
    let path = &after[after.find('/').unwrap()..];
    format!("{scheme}://{userinfo}@{addr}{path}")
}

/// The `host:port` of a PostgreSQL URL.
fn server_of(url: &str) -> std::net::SocketAddr {
    let after = url.rsplit_once('@').unwrap().1;
    let hostport = &after[..after.find('/').unwrap()];
    hostport.parse().unwrap()
}

/// Answers `200 ok` to every request on `port`, from now on.
async fn serve_ok(port: u16) {
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", port))
        .await
        .unwrap();
    tokio::spawn(async move {
        while let Ok((mut sock, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut buf = [0u8; 2048];
                let _ = sock.read(&mut buf).await;
                let _ = sock
                    .write_all(
                        b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok",
                    )
                    .await;
            });
        }
    });
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_store_outage_loses_no_event_and_the_job_ends_by_itself() {
    let Some(url) = postgres::fresh_database().await else {
        return;
    };
    let proxy = Proxy::start(server_of(&url)).await.unwrap();
    let c = TestCoordinator::start_with(CoordinatorOptions {
        store: StoreChoice::Postgres(via(&url, proxy.addr)),
        ..Default::default()
    })
    .await
    .unwrap();
    let _agent = c.start_agent("web-1", &[]).await.unwrap();

    // A smoke check against a port where nothing listens yet: the agent
    // retries it every 200 ms, reporting each attempt, for up to 60 s.
    let port = stable_port();
    let spec = format!(
        r#"{{"checks":[{{"url":"http://127.0.0.1:{port}/ok","retry_for":"60s","interval":"200ms","timeout":"300ms"}}]}}"#
    );
    let job = c.submit("smoke", &spec, &["web-1"], 600).await.unwrap();
    let started = Instant::now();
    loop {
        if c.job(&job.id).await.unwrap().status == "running" {
            break;
        }
        assert!(started.elapsed() < Duration::from_secs(10), "job never ran");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;

    // The store goes away for longer than the pool's acquire timeout (3 s)
    // and the ingest's backoff; meanwhile the check starts to succeed, so
    // the task's last events, its end included, are sent while the store
    // is gone.
    proxy.block();
    let cut_at = Instant::now();
    let (code, body) = c.admin_get("/readyz").await.unwrap();
    assert_eq!(code, 503, "{body}");
    assert!(
        cut_at.elapsed() < Duration::from_secs(3),
        "/readyz took {:?}",
        cut_at.elapsed()
    );
    tokio::time::sleep(Duration::from_secs(3)).await;
    serve_ok(port).await;
    tokio::time::sleep(Duration::from_secs(5)).await;
    proxy.unblock();

    // The job ends by itself, with every event of the task stored once.
    let deadline = Instant::now() + Duration::from_secs(30);
    let job = loop {
        let j = c.job(&job.id).await.unwrap();
        if j.status != "running" && j.status != "pending" {
            break j;
        }
        assert!(
            Instant::now() < deadline,
            "the job did not end within 30 s of the store coming back: {j:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(job.status, "succeeded", "{job:?}");
    let events = c
        .watch_to_end(&job.id, Duration::from_secs(10))
        .await
        .unwrap();
    let task = &job.tasks[0];
    let mut seqs: Vec<u64> = events
        .iter()
        .filter(|e| e.task_id == task.id && e.task_seq > 0)
        .map(|e| e.task_seq)
        .collect();
    seqs.sort();
    let expected: Vec<u64> = (1..=seqs.len() as u64).collect();
    assert_eq!(
        seqs, expected,
        "every agent event once, in order, none missing"
    );
    assert_eq!(seqs.len() as u64, task.last_seq, "the store's count agrees");
    assert!(
        seqs.len() > 10,
        "the task reported during the outage ({} events)",
        seqs.len()
    );
}

/// Running containers of `app` on this machine's engine, by name.
fn running_containers(app: &str) -> Vec<String> {
    let mut names: Vec<String> =
        ferry_integration_tests::docker::containers(&format!("ferry.app={app}"))
            .into_iter()
            .filter_map(|l| l.strip_suffix(" running").map(str::to_string))
            .collect();
    names.sort();
    names
}

/// A deploy rollout on two coordinators sharing PostgreSQL, with the store
/// cut for longer than every pool timeout (the 30 s acquire wait) while
/// the agent deploys: the deploy finishes on the host during the outage,
/// and once the store is back the rollout ends by itself — driven on by its
/// coordinator or taken over by the other when its lease ran out — with
/// the step run once and every event of the task stored exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deploy_rollout_on_two_coordinators_outlives_a_store_outage() {
    use ferry_integration_tests::docker::{self, AppCleanup};
    use ferry_proto::v1 as pb;
    if !docker::available() {
        return;
    }
    let Some(url) = postgres::fresh_database().await else {
        return;
    };
    let app = format!("outage{}", &uuid::Uuid::now_v7().simple().to_string()[24..]);
    let _cleanup = AppCleanup(app.clone());
    // A worker that counts as healthy once it has run for 20 s: the deploy
    // step outlasts the start of the outage and ends inside it.
    docker::build_busybox_image(
        &format!("{app}:1.0.0"),
        &[],
        &[
            "/bin/busybox",
            "sh",
            "-c",
            "trap 'exit 0' TERM; sleep 3600 & wait",
        ],
    )
    .unwrap();
    let proxy = Proxy::start(server_of(&url)).await.unwrap();
    let a = TestCoordinator::start_with(CoordinatorOptions {
        store: StoreChoice::Postgres(via(&url, proxy.addr)),
        ..Default::default()
    })
    .await
    .unwrap();
    let b = a.start_peer().await.unwrap();
    let enrolled = a.enroll("web-1", &[]).await.unwrap();
    enrolled
        .set_coordinators(&[a.url.clone(), b.url.clone()])
        .unwrap();
    let _agent = enrolled.start();
    a.wait_for_agent("web-1", "online", Duration::from_secs(10))
        .await
        .unwrap();

    let file = format!(
        r#"app = "{app}"
[environments.staging]
agents = ["web-1"]
[services.worker]
image = "{app}:{{version}}"
pull = "never"
[services.worker.healthcheck]
running_for = "20s"
"#
    );
    let mut op = a.operator().await.unwrap();
    let rollout = op
        .start_rollout(pb::StartRolloutRequest {
            accessories_only: false,
            accessories: Vec::new(),
            app_file: file,
            file_name: "ferry.toml".into(),
            env: "staging".into(),
            version: "1.0.0".into(),
            dry_run: false,
        })
        .await
        .unwrap()
        .into_inner()
        .rollout
        .unwrap();
    // Cut the store once the agent is at work on the deploy step.
    let started = Instant::now();
    let job_id = loop {
        let r = op
            .get_rollout(pb::GetRolloutRequest {
                rollout_id: rollout.id.clone(),
            })
            .await
            .unwrap()
            .into_inner()
            .rollout
            .unwrap();
        if let Some(step) = r.steps.first()
            && a.job(&step.job_id).await.unwrap().status == "running"
        {
            break step.job_id.clone();
        }
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "the deploy never started: {r:#?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    proxy.block();
    tokio::time::sleep(Duration::from_secs(35)).await;
    // The host finished its deploy while nothing could be stored.
    assert_eq!(
        running_containers(&app).len(),
        1,
        "the worker runs: {:?}",
        running_containers(&app)
    );
    proxy.unblock();

    // The rollout ends by itself, through either coordinator.
    let deadline = Instant::now() + Duration::from_secs(60);
    let done = loop {
        let r = match b.operator().await {
            Ok(mut c) => c
                .get_rollout(pb::GetRolloutRequest {
                    rollout_id: rollout.id.clone(),
                })
                .await
                .ok()
                .and_then(|r| r.into_inner().rollout),
            Err(_) => None,
        };
        if let Some(r) = r
            && r.status != "running"
        {
            break r;
        }
        assert!(
            Instant::now() < deadline,
            "the rollout did not end within 60 s of the store coming back"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_eq!(done.status, "succeeded", "{done:#?}");
    assert_eq!(done.steps.len(), 1, "the step ran once: {done:#?}");
    assert_eq!(done.steps[0].job_id, job_id);
    let jobs = op
        .list_jobs(pb::ListJobsRequest {
            kind: "deploy".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .jobs;
    assert_eq!(jobs.len(), 1, "one deploy job, never a second: {jobs:#?}");

    // Every event of the task once, in order, none missing.
    let job = a.job(&job_id).await.unwrap();
    assert_eq!(job.status, "succeeded", "{job:?}");
    let events = a
        .watch_to_end(&job_id, Duration::from_secs(10))
        .await
        .unwrap();
    let task = &job.tasks[0];
    let mut seqs: Vec<u64> = events
        .iter()
        .filter(|e| e.task_id == task.id && e.task_seq > 0)
        .map(|e| e.task_seq)
        .collect();
    seqs.sort();
    let expected: Vec<u64> = (1..=seqs.len() as u64).collect();
    assert_eq!(seqs, expected, "every agent event once, in order");
    assert_eq!(seqs.len() as u64, task.last_seq, "the store's count agrees");
    assert_eq!(running_containers(&app).len(), 1);
}
