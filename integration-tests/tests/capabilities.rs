//! A job kind reaches only agents that run it: an agent says which kinds it
//! runs in `Hello`, the coordinator keeps that, shows it in `ferry agents`,
//! refuses at submit a job aimed at an agent known not to run its kind, and
//! never sends such a task to an agent whose session says so.

use std::process::Command;
use std::time::Duration;

use ferry_common::appfile;
use ferry_common::job::JobKind;
use ferry_integration_tests::{TestCoordinator, bin};
use tonic::Code;

/// A deploy spec of the example app, for `agent`.
fn deploy_spec_json() -> String {
    let file =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/example/ferry.toml");
    let app = appfile::load(&file).expect("the example app file");
    let spec = app
        .deploy_spec("staging", "1.0.0")
        .expect("a deploy spec for staging");
    serde_json::to_string(&spec).unwrap()
}

// Multi-threaded: the `ferry` process of step 3 is waited for on this
// thread while the coordinator answers it on another.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_that_runs_only_probe_never_receives_a_deploy() {
    let c = TestCoordinator::start().await.unwrap();

    // 1. An agent never seen yet: a deploy aimed at it is accepted (nobody
    // knows what it runs), and checked again when it is sent.
    let fresh = c.enroll("old-2", &[]).await.unwrap();
    fresh.set_capabilities(&[JobKind::Probe]).unwrap();
    let early = c
        .submit("deploy", &deploy_spec_json(), &["old-2"], 600)
        .await
        .expect("an agent not seen yet may be targeted");
    let _old2 = fresh.start();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let job = loop {
        let job = c.job(&early.id).await.unwrap();
        if job.status == "failed" || tokio::time::Instant::now() > deadline {
            break job;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(job.status, "failed", "{job:?}");
    let message = &job.tasks[0].message;
    assert!(
        message.contains("agent old-2 (ferry-agent ")
            && message.contains("does not run deploy jobs; it runs probe"),
        "the coordinator failed it without sending it: {message}"
    );

    // 2. An agent that said what it runs: refused at submit, naming the
    // agent, its version and the missing kind.
    let enrolled = c.enroll("old-1", &[]).await.unwrap();
    enrolled.set_capabilities(&[JobKind::Probe]).unwrap();
    let _old1 = enrolled.start();
    c.wait_for_agent("old-1", "online", Duration::from_secs(10))
        .await
        .unwrap();
    let listed = c.agent("old-1").await.unwrap().expect("listed");
    assert_eq!(listed.capabilities, vec!["probe".to_string()]);
    assert_eq!(listed.version, ferry_common::VERSION);

    let err = c
        .submit("deploy", &deploy_spec_json(), &["old-1"], 600)
        .await
        .expect_err("refused at submit");
    let status = err.downcast_ref::<tonic::Status>().expect("a gRPC status");
    assert_eq!(status.code(), Code::InvalidArgument);
    assert!(
        status.message().contains(&format!(
            "agent old-1 (ferry-agent {}) does not run deploy jobs; it runs probe",
            ferry_common::VERSION
        )),
        "{}",
        status.message()
    );
    // What it runs still works.
    let probe = c.submit("probe", "", &["old-1"], 60).await.unwrap();
    let events = c
        .watch_to_end(&probe.id, Duration::from_secs(20))
        .await
        .unwrap();
    assert!(!events.is_empty());
    assert_eq!(c.job(&probe.id).await.unwrap().status, "succeeded");

    // 3. `ferry agents --output json` shows versions and capabilities.
    let out = Command::new(bin::path("ferry"))
        .args(["agents", "--output", "json"])
        .arg("--credentials")
        .arg(c.data_dir.join("admin.credentials"))
        .output()
        .expect("run ferry");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let agents: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let old1 = agents
        .as_array()
        .unwrap()
        .iter()
        .find(|a| a["name"] == "old-1")
        .expect("old-1 listed");
    assert_eq!(old1["version"], ferry_common::VERSION);
    assert_eq!(old1["capabilities"], serde_json::json!(["probe"]));
}
