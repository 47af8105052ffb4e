//! The job engine end to end: submit, dispatch, progress, results, and what
//! happens across dropped connections, restarts, cancellation, offline
//! agents and deadlines. Every job's stored events are checked to be exactly
//! seq 1..N per task and 1..M per job: no gap, no duplicate.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use ferry_common::job::HostFacts;
use ferry_integration_tests::http::TestService;
use ferry_integration_tests::proxy::Proxy;
use ferry_integration_tests::{CoordinatorOptions, TestCoordinator, fast_heartbeats};
use ferry_proto::v1 as pb;
use pb::event_body::Body;

fn smoke(url: &str, retry_for: &str, interval: &str) -> String {
    format!(
        r#"{{"checks":[{{"name":"health","url":"{url}","body_contains":"ok","timeout":"2s","retry_for":"{retry_for}","interval":"{interval}"}}]}}"#
    )
}

/// Job seqs are 1..M; each task's agent events are 1..N with N = its last seq.
fn assert_exact_sequences(events: &[pb::JobEvent], job: &pb::Job) {
    let seqs: Vec<u64> = events.iter().map(|e| e.seq).collect();
    let expected: Vec<u64> = (1..=events.len() as u64).collect();
    assert_eq!(
        seqs, expected,
        "job seqs must be 1..M without gaps or repeats"
    );
    for t in &job.tasks {
        let task_seqs: Vec<u64> = events
            .iter()
            .filter(|e| e.task_id == t.id && e.task_seq > 0)
            .map(|e| e.task_seq)
            .collect();
        let expected: Vec<u64> = (1..=t.last_seq).collect();
        assert_eq!(
            task_seqs, expected,
            "task {} ({}) events must be 1..N",
            t.id, t.agent_name
        );
    }
}

fn finished(events: &[pb::JobEvent], agent: &str) -> Option<pb::TaskFinished> {
    events
        .iter()
        .rev()
        .find_map(|e| match e.body.as_ref()?.body.as_ref()? {
            Body::TaskFinished(f) if e.agent_name == agent => Some(f.clone()),
            _ => None,
        })
}

fn has_log(e: &pb::JobEvent) -> bool {
    matches!(
        e.body.as_ref().and_then(|b| b.body.as_ref()),
        Some(Body::Log(_))
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn probe_runs_on_every_agent_and_reports_facts() {
    let c = TestCoordinator::start().await.unwrap();
    let _a = c.start_agent("web-1", &[("env", "staging")]).await.unwrap();
    let _b = c.start_agent("web-2", &[("env", "staging")]).await.unwrap();
    let job = c.submit("probe", "{}", &[], 0).await.unwrap();
    assert_eq!(job.tasks.len(), 2);
    let events = c
        .watch_to_end(&job.id, Duration::from_secs(20))
        .await
        .unwrap();
    let job = c.job(&job.id).await.unwrap();
    assert_eq!(job.status, "succeeded", "{events:#?}");
    assert_exact_sequences(&events, &job);
    for t in &job.tasks {
        assert_eq!(t.state, "succeeded");
        let facts: HostFacts = serde_json::from_str(&t.result_json).unwrap();
        assert!(facts.cpus >= 1 && facts.memory_total_bytes > 0 && !facts.kernel.is_empty());
        assert!(!facts.disks.is_empty());
        assert!(facts.docker_version.is_some() || facts.docker_error.is_some());
        assert!(facts.clock_offset_ms.abs() < 5_000);
    }
    let last = events.last().unwrap();
    assert!(matches!(
        last.body.as_ref().unwrap().body,
        Some(Body::JobFinished(_))
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resubmitting_with_an_idempotency_key_returns_the_same_job() {
    let c = TestCoordinator::start().await.unwrap();
    let _a = c.start_agent("web-1", &[]).await.unwrap();
    let mut client = c.operator().await.unwrap();
    let req = pb::SubmitJobRequest {
        kind: "probe".into(),
        spec_json: "{}".into(),
        target: None,
        idempotency_key: "deploy-42".into(),
        deadline_seconds: 0,
    };
    let first = client.submit_job(req.clone()).await.unwrap().into_inner();
    let again = client.submit_job(req).await.unwrap().into_inner();
    assert!(first.created && !again.created);
    assert_eq!(first.job.unwrap().id, again.job.unwrap().id);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_submissions_are_refused_with_reasons() {
    let c = TestCoordinator::start().await.unwrap();
    let _a = c.start_agent("web-1", &[]).await.unwrap();
    let mut client = c.operator().await.unwrap();
    let submit = |kind: &str, spec: &str, agents: Vec<String>| pb::SubmitJobRequest {
        kind: kind.into(),
        spec_json: spec.into(),
        target: Some(pb::Selector {
            agents,
            labels: Default::default(),
        }),
        idempotency_key: String::new(),
        deadline_seconds: 0,
    };
    let err = client
        .submit_job(submit("shell", "{}", vec![]))
        .await
        .unwrap_err();
    assert!(
        err.message().contains("unknown job kind \"shell\""),
        "{}",
        err.message()
    );
    let err = client
        .submit_job(submit("probe", "{}", vec!["nope".into()]))
        .await
        .unwrap_err();
    assert!(
        err.message().contains("no enrolled agent named \"nope\""),
        "{}",
        err.message()
    );
    let err = client
        .submit_job(submit("smoke", r#"{"checks":[]}"#, vec![]))
        .await
        .unwrap_err();
    assert!(
        err.message().contains("at least one check"),
        "{}",
        err.message()
    );
    assert_eq!(err.code(), tonic::Code::InvalidArgument);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_task_for_an_offline_agent_waits_and_runs_when_it_returns() {
    let c = TestCoordinator::start().await.unwrap();
    let enrolled = c.enroll("late-1", &[]).await.unwrap();
    let job = c.submit("probe", "{}", &["late-1"], 60).await.unwrap();
    let waiting = c
        .wait_for_event(&job.id, Duration::from_secs(5), |e| {
            matches!(e.body.as_ref().and_then(|b| b.body.as_ref()),
                Some(Body::TaskStateChanged(s)) if s.message.contains("waiting for agent late-1 (offline"))
        })
        .await
        .unwrap();
    assert_eq!(waiting.agent_name, "late-1");
    assert_eq!(c.job(&job.id).await.unwrap().status, "pending");
    let _agent = enrolled.start();
    let events = c
        .watch_to_end(&job.id, Duration::from_secs(20))
        .await
        .unwrap();
    let job = c.job(&job.id).await.unwrap();
    assert_eq!(job.status, "succeeded");
    assert_exact_sequences(&events, &job);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_task_whose_agent_never_returns_expires_at_the_deadline() {
    let c = TestCoordinator::start().await.unwrap();
    let _never = c.enroll("gone-1", &[]).await.unwrap();
    let job = c.submit("probe", "{}", &["gone-1"], 1).await.unwrap();
    c.watch_to_end(&job.id, Duration::from_secs(10))
        .await
        .unwrap();
    let job = c.job(&job.id).await.unwrap();
    assert_eq!(job.status, "failed");
    assert_eq!(job.tasks[0].state, "expired");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dropped_connection_mid_task_loses_and_repeats_no_event() {
    let c = TestCoordinator::start().await.unwrap();
    let proxy = Proxy::start(c.config.listen).await.unwrap();
    let agent = c
        .enroll_via("web-1", &[], Some(&proxy.url()))
        .await
        .unwrap()
        .start();
    c.wait_for_agent("web-1", "online", Duration::from_secs(10))
        .await
        .unwrap();
    let service = TestService::start(false).await.unwrap();
    let job = c
        .submit(
            "smoke",
            &smoke(&service.url("/health"), "30s", "50ms"),
            &["web-1"],
            0,
        )
        .await
        .unwrap();
    c.wait_for_event(&job.id, Duration::from_secs(10), has_log)
        .await
        .unwrap();
    // Cut mid-task, twice, while the agent keeps producing events.
    for _ in 0..2 {
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert!(
            proxy.cut() >= 1,
            "the agent's connection went through the proxy"
        );
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    service.set_healthy(true);
    let events = c
        .watch_to_end(&job.id, Duration::from_secs(30))
        .await
        .unwrap();
    let job = c.job(&job.id).await.unwrap();
    assert_eq!(job.status, "succeeded", "{events:#?}");
    assert!(
        job.tasks[0].last_seq > 10,
        "the task produced events throughout"
    );
    assert_exact_sequences(&events, &job);
    assert!(agent.is_running());
}

async fn coordinator_restart_mid_job(c: &mut TestCoordinator) {
    let agent = c.start_agent("web-1", &[]).await.unwrap();
    let service = TestService::start(false).await.unwrap();
    let job = c
        .submit(
            "smoke",
            &smoke(&service.url("/health"), "60s", "50ms"),
            &["web-1"],
            0,
        )
        .await
        .unwrap();
    c.wait_for_event(&job.id, Duration::from_secs(10), has_log)
        .await
        .unwrap();
    c.stop().await.unwrap();
    // The agent keeps working and spooling while the coordinator is down.
    tokio::time::sleep(Duration::from_millis(500)).await;
    service.set_healthy(true);
    tokio::time::sleep(Duration::from_millis(300)).await;
    c.restart().await.unwrap();
    let events = c
        .watch_to_end(&job.id, Duration::from_secs(30))
        .await
        .unwrap();
    let job = c.job(&job.id).await.unwrap();
    assert_eq!(job.status, "succeeded", "{events:#?}");
    assert_exact_sequences(&events, &job);
    assert!(agent.is_running());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_coordinator_restart_mid_job_loses_nothing_on_sqlite() {
    let mut c = TestCoordinator::start().await.unwrap();
    coordinator_restart_mid_job(&mut c).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_coordinator_restart_mid_job_loses_nothing_on_postgres() {
    let Some(mut c) = TestCoordinator::start_on_postgres().await.unwrap() else {
        return;
    };
    coordinator_restart_mid_job(&mut c).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_killed_mid_task_reports_it_lost_when_it_restarts() {
    let c = TestCoordinator::start().await.unwrap();
    let agent = c.start_agent("web-1", &[]).await.unwrap();
    let service = TestService::start(false).await.unwrap();
    let job = c
        .submit(
            "smoke",
            &smoke(&service.url("/health"), "60s", "50ms"),
            &["web-1"],
            0,
        )
        .await
        .unwrap();
    c.wait_for_event(&job.id, Duration::from_secs(10), has_log)
        .await
        .unwrap();
    let enrolled = agent.kill().await.unwrap();
    let _again = enrolled.start();
    let events = c
        .watch_to_end(&job.id, Duration::from_secs(20))
        .await
        .unwrap();
    let job = c.job(&job.id).await.unwrap();
    assert_eq!(job.tasks[0].state, "lost");
    assert_eq!(job.status, "failed");
    let f = finished(&events, "web-1").unwrap();
    assert_eq!(f.outcome, pb::TaskOutcome::Lost as i32);
    assert!(f.message.contains("agent restarted"), "{}", f.message);
    assert_exact_sequences(&events, &job);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_reaches_the_agent_and_stops_the_task_within_a_second() {
    let c = TestCoordinator::start().await.unwrap();
    let _agent = c.start_agent("web-1", &[]).await.unwrap();
    let service = TestService::start(false).await.unwrap();
    let job = c
        .submit(
            "smoke",
            &smoke(&service.url("/health"), "60s", "100ms"),
            &["web-1"],
            0,
        )
        .await
        .unwrap();
    c.wait_for_event(&job.id, Duration::from_secs(10), has_log)
        .await
        .unwrap();
    let started = Instant::now();
    c.operator()
        .await
        .unwrap()
        .cancel_job(pb::CancelJobRequest {
            job_id: job.id.clone(),
        })
        .await
        .unwrap();
    let stopped = c
        .wait_for_event(&job.id, Duration::from_secs(5), |e| {
            matches!(
                e.body.as_ref().and_then(|b| b.body.as_ref()),
                Some(Body::TaskFinished(_))
            )
        })
        .await
        .unwrap();
    let elapsed = started.elapsed();
    let Some(Body::TaskFinished(f)) = stopped.body.unwrap().body else {
        unreachable!()
    };
    assert_eq!(f.outcome, pb::TaskOutcome::Cancelled as i32);
    assert!(elapsed < Duration::from_secs(1), "cancel took {elapsed:?}");
    let events = c
        .watch_to_end(&job.id, Duration::from_secs(10))
        .await
        .unwrap();
    let job = c.job(&job.id).await.unwrap();
    assert_eq!(job.status, "cancelled");
    assert_exact_sequences(&events, &job);
    let hits = service.hits.load(std::sync::atomic::Ordering::Relaxed);
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert_eq!(
        service.hits.load(std::sync::atomic::Ordering::Relaxed),
        hits,
        "the agent stopped checking"
    );
}

fn quick_loss(c: &mut ferry_coordinator::config::CoordinatorConfig) {
    fast_heartbeats(c);
    c.lost_after = Duration::from_millis(1500);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_away_past_the_grace_period_is_marked_lost_and_its_report_wins() {
    let c = TestCoordinator::start_with(CoordinatorOptions {
        tweak: Some(quick_loss),
        ..Default::default()
    })
    .await
    .unwrap();
    let proxy = Proxy::start(c.config.listen).await.unwrap();
    let _agent = c
        .enroll_via("web-1", &[], Some(&proxy.url()))
        .await
        .unwrap()
        .start();
    c.wait_for_agent("web-1", "online", Duration::from_secs(10))
        .await
        .unwrap();
    let service = TestService::start(false).await.unwrap();
    let job = c
        .submit(
            "smoke",
            &smoke(&service.url("/health"), "60s", "100ms"),
            &["web-1"],
            0,
        )
        .await
        .unwrap();
    c.wait_for_event(&job.id, Duration::from_secs(10), has_log)
        .await
        .unwrap();
    proxy.block();
    c.wait_for_event(&job.id, Duration::from_secs(10), |e| {
        matches!(e.body.as_ref().and_then(|b| b.body.as_ref()), Some(Body::TaskStateChanged(s)) if s.state == "lost")
    })
    .await
    .unwrap();
    assert_eq!(c.job(&job.id).await.unwrap().status, "failed");
    service.set_healthy(true);
    proxy.unblock();
    let deadline = Instant::now() + Duration::from_secs(20);
    let job = loop {
        let j = c.job(&job.id).await.unwrap();
        if j.status == "succeeded" {
            break j;
        }
        assert!(
            Instant::now() < deadline,
            "the agent's report did not win: {j:#?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(job.tasks[0].state, "succeeded");
    let events = c
        .watch_to_end(&job.id, Duration::from_secs(10))
        .await
        .unwrap();
    assert_exact_sequences(&events, &job);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_coordinators_on_one_postgres_share_the_work_and_agents_fail_over() {
    let Some(a) = TestCoordinator::start_on_postgres().await.unwrap() else {
        return;
    };
    let mut b = a.start_peer().await.unwrap();
    // The agent talks to B first, A second.
    let enrolled = b.enroll("web-1", &[]).await.unwrap();
    enrolled
        .set_coordinators(&[b.url.clone(), a.url.clone()])
        .unwrap();
    let _agent = enrolled.start();
    a.wait_for_agent("web-1", "online", Duration::from_secs(10))
        .await
        .unwrap();

    // Submitted on A, run by the agent connected to B.
    let job = a.submit("probe", "{}", &["web-1"], 0).await.unwrap();
    let events = a
        .watch_to_end(&job.id, Duration::from_secs(20))
        .await
        .unwrap();
    let done = a.job(&job.id).await.unwrap();
    assert_eq!(done.status, "succeeded");
    assert_exact_sequences(&events, &done);

    // A job in flight when B dies still completes, through A.
    let service = TestService::start(false).await.unwrap();
    let job = a
        .submit(
            "smoke",
            &smoke(&service.url("/health"), "60s", "50ms"),
            &["web-1"],
            0,
        )
        .await
        .unwrap();
    a.wait_for_event(&job.id, Duration::from_secs(10), has_log)
        .await
        .unwrap();
    b.stop().await.unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    service.set_healthy(true);
    let events = a
        .watch_to_end(&job.id, Duration::from_secs(30))
        .await
        .unwrap();
    let done = a.job(&job.id).await.unwrap();
    assert_eq!(done.status, "succeeded", "{events:#?}");
    assert_exact_sequences(&events, &done);
    let connected: BTreeMap<_, _> = done
        .tasks
        .iter()
        .map(|t| (t.agent_name.clone(), t.state.clone()))
        .collect();
    assert_eq!(connected["web-1"], "succeeded");
}

/// One job on agents of two coordinators: the one it is submitted to
/// claims its own agent's task in the submit's transaction, and the other
/// claims the rest (told by `NOTIFY`, or else by its pending-work sweep).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_across_two_coordinators_is_split_between_them() {
    let Some(a) = TestCoordinator::start_on_postgres().await.unwrap() else {
        return;
    };
    let b = a.start_peer().await.unwrap();
    let _on_a = a.start_agent("web-a", &[]).await.unwrap();
    let on_b = b.enroll("web-b", &[]).await.unwrap();
    on_b.set_coordinators(std::slice::from_ref(&b.url)).unwrap();
    let _on_b = on_b.start();
    a.wait_for_agent("web-b", "online", Duration::from_secs(10))
        .await
        .unwrap();

    let job = a
        .submit("probe", "{}", &["web-a", "web-b"], 0)
        .await
        .unwrap();
    let events = a
        .watch_to_end(&job.id, Duration::from_secs(20))
        .await
        .unwrap();
    let done = a.job(&job.id).await.unwrap();
    assert_eq!(done.status, "succeeded", "{events:#?}");
    assert_eq!(done.tasks.len(), 2);
    assert!(
        done.tasks.iter().all(|t| t.state == "succeeded"),
        "{done:#?}"
    );
    assert_exact_sequences(&events, &done);
}
