//! Trace propagation end to end through a real OTLP exporter: a "job" span
//! (the coordinator's), a "task.run" span joined to it through a
//! `traceparent` string (as the agent does with `Assign`), and a "step"
//! under that, all arrive at the collector as one trace.
//!
//! `telemetry::init` installs the process-wide subscriber, so this file
//! holds one test: each test binary is its own process.

use std::collections::HashMap;
use std::time::Duration;

use ferry_common::telemetry;
use ferry_integration_tests::otlp::{OtlpReceiver, ReceivedSpan};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agent_spans_join_the_coordinators_trace_through_traceparent() {
    let receiver = OtlpReceiver::start().await;
    let env = HashMap::from([(
        "OTEL_EXPORTER_OTLP_ENDPOINT".to_owned(),
        receiver.endpoint.clone(),
    )]);
    let guard = telemetry::init("ferry-test", "info", &env);

    // The coordinator's side: the job span, and its context as a string.
    let job = tracing::info_span!("job", job.id = "j-1");
    let traceparent = job.in_scope(|| telemetry::traceparent_of(&job));
    assert!(
        traceparent.starts_with("00-") && traceparent.len() == 55,
        "traceparent {traceparent:?}"
    );
    drop(job);

    // The agent's side: a root span of its own, made a child of the job by
    // the traceparent alone, with a step inside it.
    let task = tracing::info_span!(parent: None, "task.run", task.id = "t-1");
    telemetry::set_parent(&task, &traceparent);
    task.in_scope(|| {
        let _step = tracing::info_span!("step", step = "pull").entered();
    });
    drop(task);

    guard.shutdown();

    let spans = receiver
        .wait_for(|spans| spans.len() >= 3, Duration::from_secs(10))
        .await;
    let find = |name: &str| -> ReceivedSpan {
        spans
            .iter()
            .find(|s| s.name == name)
            .cloned()
            .unwrap_or_else(|| panic!("no {name:?} span in {spans:#?}"))
    };
    let (job, task, step) = (find("job"), find("task.run"), find("step"));

    assert_eq!(spans.len(), 3, "{spans:#?}");
    assert_eq!(job.parent_span_id, "", "the job is the trace's root");
    assert_eq!(
        traceparent,
        format!("00-{}-{}-01", job.trace_id, job.span_id)
    );
    assert_eq!(
        task.trace_id, job.trace_id,
        "the task joins the job's trace"
    );
    assert_eq!(task.parent_span_id, job.span_id);
    assert_eq!(step.trace_id, job.trace_id);
    assert_eq!(step.parent_span_id, task.span_id);
    for span in [&job, &task, &step] {
        assert_eq!(span.service_name, "ferry-test");
    }
    assert_eq!(
        job.attributes.get("job.id").map(String::as_str),
        Some("j-1")
    );
    assert_eq!(
        task.attributes.get("task.id").map(String::as_str),
        Some("t-1")
    );
    assert_eq!(
        step.attributes.get("step").map(String::as_str),
        Some("pull")
    );
}
