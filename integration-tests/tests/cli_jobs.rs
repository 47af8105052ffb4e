//! The job CLI and agent as real processes: `ferry watch` resuming through
//! a cut connection without gaps or repeats, `ferry probe` exit codes and
//! JSON, and `ferry-agent` killed with SIGKILL in the middle of a task.

use std::process::Stdio;
use std::time::Duration;

use ferry_common::credentials::Credentials;
use ferry_integration_tests::http::TestService;
use ferry_integration_tests::proxy::Proxy;
use ferry_integration_tests::{TestCoordinator, bin};
use serde_json::Value;
use tokio::process::Command;

fn smoke(url: &str) -> String {
    format!(
        r#"{{"checks":[{{"name":"health","url":"{url}","retry_for":"60s","interval":"50ms"}}]}}"#
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_resumes_after_its_connection_is_cut_without_gaps_or_repeats() {
    let c = TestCoordinator::start().await.unwrap();
    let _agent = c.start_agent("web-1", &[]).await.unwrap();
    let proxy = Proxy::start(c.config.listen).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let creds = dir.path().join("via-proxy.credentials");
    Credentials {
        coordinator: proxy.url(),
        ..c.admin.clone()
    }
    .save(&creds, false)
    .unwrap();

    let service = TestService::start(false).await.unwrap();
    let job = c
        .submit("smoke", &smoke(&service.url("/health")), &["web-1"], 0)
        .await
        .unwrap();
    let watch = Command::new(bin::path("ferry"))
        .arg("--credentials")
        .arg(&creds)
        .args(["watch", "--output", "json", &job.id])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    for _ in 0..3 {
        tokio::time::sleep(Duration::from_millis(400)).await;
        proxy.cut();
    }
    service.set_healthy(true);
    let out = tokio::time::timeout(Duration::from_secs(30), watch.wait_with_output())
        .await
        .expect("watch ends when the job does")
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    let seqs: Vec<u64> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| {
            serde_json::from_str::<Value>(l).unwrap()["seq"]
                .as_u64()
                .unwrap()
        })
        .collect();
    let stored = c.job(&job.id).await.unwrap().last_seq;
    assert_eq!(
        seqs,
        (1..=stored).collect::<Vec<_>>(),
        "every event once, in order"
    );
    assert!(stored > 10);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn probe_exit_codes_and_json() {
    let c = TestCoordinator::start().await.unwrap();
    let _agent = c.start_agent("web-1", &[("env", "staging")]).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let creds = dir.path().join("admin.credentials");
    c.admin.save(&creds, false).unwrap();
    let ferry = |args: &[&str]| {
        let mut cmd = Command::new(bin::path("ferry"));
        cmd.arg("--credentials")
            .arg(&creds)
            .args(args)
            .stdin(Stdio::null());
        cmd
    };
    let out = ferry(&["probe", "--labels", "env=staging", "--output", "json"])
        .output()
        .await
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let job: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(job["status"], "succeeded");
    assert_eq!(job["kind"], "probe");
    assert!(job["tasks"][0]["result"]["cpus"].as_u64().unwrap() >= 1);

    let out = ferry(&["probe", "--detach", "--output", "json"])
        .output()
        .await
        .unwrap();
    let detached: Value = serde_json::from_slice(&out.stdout).unwrap();
    let id = detached["job_id"].as_str().unwrap().to_string();
    let out = ferry(&["watch", &id]).output().await.unwrap();
    assert_eq!(out.status.code(), Some(0));
    let out = ferry(&["job", "show", &id, "--output", "json"])
        .output()
        .await
        .unwrap();
    let shown: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(shown["id"], id.as_str());
    assert_eq!(shown["tasks"][0]["agent"], "web-1");

    let out = ferry(&["probe", "--labels", "env=nowhere"])
        .output()
        .await
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("no enrolled agent matches"));
    let out = ferry(&["job", "show", "not-a-job"]).output().await.unwrap();
    assert_eq!(out.status.code(), Some(2));
    let out = ferry(&["jobs", "--status", "done"]).output().await.unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("pending, running"));

    // A cancelled job's watch exits 3.
    let service = TestService::start(false).await.unwrap();
    let job = c
        .submit("smoke", &smoke(&service.url("/")), &["web-1"], 0)
        .await
        .unwrap();
    let watch = ferry(&["watch", &job.id])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let out = ferry(&["job", "cancel", &job.id]).output().await.unwrap();
    assert_eq!(out.status.code(), Some(0));
    let out = tokio::time::timeout(Duration::from_secs(10), watch.wait_with_output())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(out.status.code(), Some(3));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_process_killed_mid_task_reports_it_lost_after_restart() {
    let c = TestCoordinator::start().await.unwrap();
    let enrolled = c.enroll("web-1", &[]).await.unwrap();
    let run = || {
        Command::new(bin::path("ferry-agent"))
            .args(["run", "--state-dir"])
            .arg(&enrolled.state_dir)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .unwrap()
    };
    let mut agent = run();
    c.wait_for_agent("web-1", "online", Duration::from_secs(15))
        .await
        .unwrap();
    let service = TestService::start(false).await.unwrap();
    let job = c
        .submit("smoke", &smoke(&service.url("/health")), &["web-1"], 0)
        .await
        .unwrap();
    c.wait_for_event(&job.id, Duration::from_secs(10), |e| e.task_seq >= 3)
        .await
        .unwrap();
    agent.start_kill().unwrap(); // SIGKILL
    agent.wait().await.unwrap();
    let _agent = run();
    let events = c
        .watch_to_end(&job.id, Duration::from_secs(20))
        .await
        .unwrap();
    let job = c.job(&job.id).await.unwrap();
    assert_eq!(job.tasks[0].state, "lost", "{events:#?}");
    let task_seqs: Vec<u64> = events
        .iter()
        .filter(|e| e.task_seq > 0)
        .map(|e| e.task_seq)
        .collect();
    assert_eq!(task_seqs, (1..=job.tasks[0].last_seq).collect::<Vec<_>>());
}
