//! One job is one trace: the coordinator's `job` and `task` spans and the
//! agent's `task.run` and `step` spans all arrive at an OTLP collector with
//! the same trace id, the agent's joined through `Assign.traceparent`.
//!
//! `telemetry::init` installs the process-wide subscriber, so this file
//! holds one test (each test binary is its own process).

use std::collections::HashMap;
use std::time::Duration;

use ferry_common::telemetry;
use ferry_integration_tests::TestCoordinator;
use ferry_integration_tests::otlp::OtlpReceiver;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_is_one_trace_across_coordinator_and_agent() {
    let receiver = OtlpReceiver::start().await;
    let env = HashMap::from([(
        "OTEL_EXPORTER_OTLP_ENDPOINT".to_owned(),
        receiver.endpoint.clone(),
    )]);
    let guard = telemetry::init("ferry-test", "info", &env);

    let c = TestCoordinator::start().await.unwrap();
    let _agent = c.start_agent("web-1", &[]).await.unwrap();
    let job = c.submit("probe", "{}", &[], 0).await.unwrap();
    c.watch_to_end(&job.id, Duration::from_secs(20))
        .await
        .unwrap();
    let job = c.job(&job.id).await.unwrap();
    assert_eq!(job.status, "succeeded");
    // The task's span closes when the agent's events are stored; give the
    // batch processor its flush.
    tokio::time::sleep(Duration::from_millis(200)).await;
    guard.shutdown();

    let spans = receiver.spans();
    let in_trace: Vec<_> = spans
        .iter()
        .filter(|s| s.trace_id == job.trace_id)
        .collect();
    let names: Vec<&str> = in_trace.iter().map(|s| s.name.as_str()).collect();
    for expected in ["job", "task", "task.run", "step"] {
        assert!(
            names.contains(&expected),
            "no {expected:?} span in the job's trace; got {names:?}"
        );
    }
    let by_name = |n: &str| in_trace.iter().find(|s| s.name == n).unwrap();
    let (job_span, task, run) = (by_name("job"), by_name("task"), by_name("task.run"));
    assert_eq!(job_span.parent_span_id, "", "the job span is the root");
    assert_eq!(
        task.parent_span_id, job_span.span_id,
        "coordinator task under the job"
    );
    assert_eq!(
        run.parent_span_id, task.span_id,
        "the agent's span joined through Assign.traceparent"
    );
    let steps: Vec<_> = in_trace.iter().filter(|s| s.name == "step").collect();
    assert!(steps.len() >= 4, "a span per probe step");
    assert!(steps.iter().all(|s| s.parent_span_id == run.span_id));
    let other_traces: Vec<_> = spans
        .iter()
        .filter(|s| s.name == "task.run" && s.trace_id != job.trace_id)
        .collect();
    assert!(
        other_traces.is_empty(),
        "the agent's spans belong to no other trace"
    );
}
