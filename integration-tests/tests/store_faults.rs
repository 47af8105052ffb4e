//! The store going away under a live coordinator: PostgreSQL behind a
//! proxy that the test cuts for longer than every pool timeout while an
//! agent's task keeps reporting. Nothing the agent sent may be dropped: the
//! job ends by itself once the store is back, with every event stored
//! exactly once, and `/readyz` says 503 promptly while the store is gone.

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
