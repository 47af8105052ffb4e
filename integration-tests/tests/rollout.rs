//! Rollouts on real Docker engines, coordinator and agents in this process:
//! two hosts (the machine's engine and a second one standing in for another
//! host, `scripts/ensure-docker2.sh`) deployed one at a time with a failure
//! on the second that reverts the first; rollback; the (app, env) lock;
//! staging and production of one app on one engine. Images are built
//! locally from scratch (busybox httpd). The `ferry` binary's deploy,
//! releases and rollback commands are exercised in `rollout_cli.rs`.

use std::collections::HashMap;
use std::time::Duration;

use ferry_integration_tests::docker::{self, AppCleanup};
use ferry_integration_tests::{TestAgent, TestCoordinator};
use ferry_proto::v1 as pb;

/// An app whose service `web` is `APP:{version}`, recreated, HTTP health on
/// /health, in staging (label env=staging, or the agents named) and
/// production (agents named).
fn app_file(app: &str, max_parallel: u32, staging: &str, production: &str) -> String {
    format!(
        r#"app = "{app}"
[rollout]
max_parallel = {max_parallel}
[environments.staging]
{staging}
[environments.production]
{production}
[services.web]
image = "{app}:{{version}}"
pull = "never"
ports = [8080]
strategy = "recreate"
[services.web.healthcheck]
http = "/health"
interval = "200ms"
timeout = "1s"
retries = 10
"#
    )
}

fn unique_app(prefix: &str) -> String {
    format!(
        "{prefix}{}",
        &uuid::Uuid::now_v7().simple().to_string()[24..]
    )
}

/// Starts a rollout and waits for its end.
async fn deploy(c: &TestCoordinator, file: &str, env: &str, version: &str) -> pb::Rollout {
    let r = start(c, file, env, version).await.unwrap();
    wait_end(c, &r.id).await
}

async fn start(
    c: &TestCoordinator,
    file: &str,
    env: &str,
    version: &str,
) -> Result<pb::Rollout, tonic::Status> {
    let mut op = c.operator().await.unwrap();
    Ok(op
        .start_rollout(pb::StartRolloutRequest {
            app_file: file.to_string(),
            file_name: "ferry.toml".into(),
            env: env.into(),
            version: version.into(),
            dry_run: false,
        })
        .await?
        .into_inner()
        .rollout
        .unwrap())
}

async fn wait_end(c: &TestCoordinator, id: &str) -> pb::Rollout {
    let mut op = c.operator().await.unwrap();
    let until = tokio::time::Instant::now() + Duration::from_secs(120);
    loop {
        let r = op
            .get_rollout(pb::GetRolloutRequest {
                rollout_id: id.into(),
            })
            .await
            .unwrap()
            .into_inner()
            .rollout
            .unwrap();
        if r.status != "running" {
            return r;
        }
        assert!(
            tokio::time::Instant::now() < until,
            "rollout still running: {r:#?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn releases(c: &TestCoordinator, app: &str, env: &str) -> Vec<(String, String, String)> {
    let mut op = c.operator().await.unwrap();
    op.list_releases(pb::ListReleasesRequest {
        app: app.into(),
        env: env.into(),
        limit: 0,
    })
    .await
    .unwrap()
    .into_inner()
    .releases
    .into_iter()
    .map(|r| (r.version, r.kind, r.status))
    .collect()
}

/// Running containers of the app on an engine, by name.
fn running(socket: Option<&str>, app: &str) -> Vec<String> {
    let mut names: Vec<String> = docker::containers_on(socket, &format!("ferry.app={app}"))
        .into_iter()
        .filter_map(|l| l.strip_suffix(" running").map(str::to_string))
        .collect();
    names.sort();
    names
}

async fn agent_on(
    c: &TestCoordinator,
    name: &str,
    labels: &[(&str, &str)],
    socket: Option<&str>,
) -> TestAgent {
    let mut env = HashMap::new();
    if let Some(s) = socket {
        env.insert("FERRY_DOCKER_SOCKET".to_string(), s.to_string());
    }
    let agent = c.enroll(name, labels).await.unwrap().start_with_env(env);
    c.wait_for_agent(name, "online", Duration::from_secs(10))
        .await
        .unwrap();
    agent
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_hosts_one_at_a_time_a_failure_on_the_second_reverts_the_first() {
    if !docker::available() {
        return;
    }
    let Some(engine2) = docker::second_engine() else {
        return;
    };
    let e2 = Some(engine2.as_str());
    let app = unique_app("two");
    let _cleanup = AppCleanup(app.clone());
    struct Cleanup2(String, String);
    impl Drop for Cleanup2 {
        fn drop(&mut self) {
            docker::cleanup_app_on(Some(&self.0), &self.1);
        }
    }
    let _cleanup2 = Cleanup2(engine2.clone(), app.clone());
    // v2 is healthy on the first host and not on the second (its image
    // there has no /health): a release that breaks on one host only.
    for (socket, version, health) in [
        (None, "v1", Some("ok v1")),
        (e2, "v1", Some("ok v1")),
        (None, "v2", Some("ok v2")),
        (e2, "v2", None),
        (None, "v3", Some("ok v3")),
        (e2, "v3", Some("ok v3")),
    ] {
        let files: Vec<(&str, &str)> = match health {
            Some(body) => vec![("health", body)],
            None => vec![("index.html", "no health here")],
        };
        docker::build_busybox_site_on(socket, &format!("{app}:{version}"), &files).unwrap();
    }
    let c = TestCoordinator::start().await.unwrap();
    let _a1 = agent_on(&c, "web-1", &[("env", "staging")], None).await;
    let _a2 = agent_on(&c, "web-2", &[("env", "staging")], e2).await;
    let file = app_file(
        &app,
        1,
        r#"labels = { env = "staging" }"#,
        r#"agents = ["web-1"]"#,
    );

    let r = deploy(&c, &file, "staging", "v1").await;
    assert_eq!(r.status, "succeeded", "{r:#?}");
    let steps: Vec<&str> = r.steps.iter().map(|s| s.name.as_str()).collect();
    assert_eq!(
        steps,
        ["deploy batch 1/2: web-1", "deploy batch 2/2: web-2"],
        "one host at a time"
    );
    let v1 = vec![format!("{app}-staging-web-v1")];
    assert_eq!(running(None, &app), v1);
    assert_eq!(running(e2, &app), v1);

    // web-1 takes v2, web-2 fails its health gate: web-1 goes back to v1.
    let r = deploy(&c, &file, "staging", "v2").await;
    assert_eq!(r.status, "reverted", "{r:#?}");
    assert_eq!(r.previous_version, "v1");
    assert!(r.message.contains("web-2"), "{}", r.message);
    assert!(r.message.contains("reverted web-1 to v1"), "{}", r.message);
    let kinds: Vec<(&str, &str)> = r
        .steps
        .iter()
        .map(|s| (s.kind.as_str(), s.status.as_str()))
        .collect();
    assert_eq!(
        kinds,
        [
            ("deploy", "succeeded"),
            ("deploy", "failed"),
            ("revert", "succeeded")
        ]
    );
    assert_eq!(
        r.steps[2].agents,
        ["web-1"],
        "only the updated host reverts"
    );
    // The rollout is one trace: each of its jobs is in it.
    assert_eq!(r.trace_id.len(), 32);
    for step in &r.steps {
        assert_eq!(c.job(&step.job_id).await.unwrap().trace_id, r.trace_id);
    }
    assert_eq!(running(None, &app), v1, "web-1 is back on v1");
    assert_eq!(running(e2, &app), v1, "web-2 never stopped serving v1");
    assert_eq!(
        releases(&c, &app, "staging").await,
        [
            ("v2".into(), "deploy".into(), "reverted".into()),
            ("v1".into(), "deploy".into(), "succeeded".into())
        ]
    );

    // v3 goes out; a rollback returns to the release before it that went
    // out (v1: v2 never did), through the same health-gated path.
    let r = deploy(&c, &file, "staging", "v3").await;
    assert_eq!(r.status, "succeeded", "{r:#?}");
    assert_eq!(r.previous_version, "v1");
    let v3 = vec![format!("{app}-staging-web-v3")];
    assert_eq!(running(None, &app), v3);
    assert_eq!(running(e2, &app), v3);
    let mut op = c.operator().await.unwrap();
    let r = op
        .rollback(pb::RollbackRequest {
            app: app.clone(),
            env: "staging".into(),
            to_version: String::new(),
            dry_run: false,
        })
        .await
        .unwrap()
        .into_inner()
        .rollout
        .unwrap();
    assert_eq!((r.kind.as_str(), r.version.as_str()), ("rollback", "v1"));
    let r = wait_end(&c, &r.id).await;
    assert_eq!(r.status, "succeeded", "{r:#?}");
    assert_eq!(running(None, &app), v1);
    assert_eq!(running(e2, &app), v1);
    let history = releases(&c, &app, "staging").await;
    assert_eq!(
        history[0],
        ("v1".into(), "rollback".into(), "succeeded".into())
    );
    // Rolling back to a version that never went out is refused, naming those that did.
    let err = op
        .rollback(pb::RollbackRequest {
            app: app.clone(),
            env: "staging".into(),
            to_version: "v2".into(),
            dry_run: false,
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument);
    assert!(err.message().contains("v1, v3"), "{}", err.message());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_rollout_per_app_and_env_at_a_time() {
    if !docker::available() {
        return;
    }
    let app = unique_app("lock");
    let _cleanup = AppCleanup(app.clone());
    docker::build_busybox_site(&format!("{app}:slow"), &[("index.html", "never healthy")]).unwrap();
    docker::build_busybox_site(&format!("{app}:v1"), &[("health", "ok")]).unwrap();
    let c = TestCoordinator::start().await.unwrap();
    let _a = agent_on(&c, "web-1", &[("env", "staging")], None).await;
    let file = app_file(&app, 1, r#"agents = ["web-1"]"#, r#"agents = ["web-1"]"#)
        .replace("retries = 10", "retries = 25");

    // A rollout that takes a while (its health never passes, 25 tries).
    let slow = start(&c, &file, "staging", "slow").await.unwrap();
    let err = start(&c, &file, "staging", "v1").await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::Aborted, "{err:?}");
    assert!(err.message().contains(&slow.id), "{}", err.message());
    assert!(
        err.message().contains("is being deployed"),
        "{}",
        err.message()
    );
    // Another environment of the app is not locked.
    let prod = start(&c, &file, "production", "v1").await.unwrap();
    assert_eq!(wait_end(&c, &prod.id).await.status, "succeeded");

    let slow = wait_end(&c, &slow.id).await;
    assert_eq!(slow.status, "failed", "{slow:#?}");
    assert!(
        slow.message.contains("no host was changed"),
        "{}",
        slow.message
    );
    // The lock went with it.
    let r = deploy(&c, &file, "staging", "v1").await;
    assert_eq!(r.status, "succeeded", "{r:#?}");

    // Refused before anything runs: an unknown environment, a bad version,
    // an offline host.
    let err = start(&c, &file, "qa", "v1").await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument);
    assert!(
        err.message().contains("unknown environment"),
        "{}",
        err.message()
    );
    let err = start(&c, &file, "staging", "1 2").await.unwrap_err();
    assert!(err.message().contains("Docker tag"), "{}", err.message());
    let err = start(&c, &file.replace("8080]", "8080"), "staging", "v1")
        .await
        .unwrap_err();
    assert!(err.message().contains("ferry.toml:"), "{}", err.message());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn staging_and_production_of_one_app_on_one_engine_never_touch_each_other() {
    if !docker::available() {
        return;
    }
    let app = unique_app("iso");
    let _cleanup = AppCleanup(app.clone());
    for v in ["v1", "v2"] {
        docker::build_busybox_site(&format!("{app}:{v}"), &[("health", v)]).unwrap();
    }
    docker::build_busybox_site(&format!("{app}:bad"), &[("index.html", "no health")]).unwrap();
    let c = TestCoordinator::start().await.unwrap();
    // One host (the Tecket runbook's VPS) runs both environments.
    let _a = agent_on(&c, "vps-1", &[], None).await;
    let file = app_file(&app, 1, r#"agents = ["vps-1"]"#, r#"agents = ["vps-1"]"#);

    assert_eq!(
        deploy(&c, &file, "production", "v1").await.status,
        "succeeded"
    );
    let prod = inspect(&format!("{app}-production-web-v1"));
    for v in ["v1", "v2", "bad"] {
        deploy(&c, &file, "staging", v).await;
        assert_eq!(
            inspect(&format!("{app}-production-web-v1")),
            prod,
            "deploying staging {v} touched production"
        );
    }
    assert_eq!(
        running(None, &app),
        [
            format!("{app}-production-web-v1"),
            format!("{app}-staging-web-v2")
        ]
    );
    let staging = inspect(&format!("{app}-staging-web-v2"));
    assert_eq!(
        deploy(&c, &file, "production", "v2").await.status,
        "succeeded"
    );
    assert_eq!(
        inspect(&format!("{app}-staging-web-v2")),
        staging,
        "deploying production touched staging"
    );
    assert_eq!(
        releases(&c, &app, "production").await,
        [
            ("v2".into(), "deploy".into(), "succeeded".into()),
            ("v1".into(), "deploy".into(), "succeeded".into())
        ]
    );
}

/// A container's id, state and start time: any restart or replacement changes it.
fn inspect(name: &str) -> String {
    let name = docker::full_name(name);
    let out = std::process::Command::new("docker")
        .args([
            "inspect",
            "--format",
            "{{.Id}} {{.State.Status}} {{.State.StartedAt}}",
            &name,
        ])
        .output()
        .unwrap();
    assert!(out.status.success(), "no container {name}");
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rollout_outlives_its_coordinator_and_is_finished_without_redoing_steps() {
    if !docker::available() {
        return;
    }
    let app = unique_app("ha");
    let _cleanup = AppCleanup(app.clone());
    // Never healthy: the deploy step takes 40 tries × 200 ms.
    docker::build_busybox_site(&format!("{app}:slow"), &[("index.html", "never healthy")]).unwrap();
    let mut c = TestCoordinator::start().await.unwrap();
    let _a = agent_on(&c, "web-1", &[], None).await;
    let file = app_file(&app, 1, r#"agents = ["web-1"]"#, r#"agents = ["web-1"]"#)
        .replace("retries = 10", "retries = 40");
    let r = start(&c, &file, "staging", "slow").await.unwrap();
    tokio::time::sleep(Duration::from_secs(1)).await;
    // The coordinator stops mid-step; the one that starts in its place
    // adopts the rollout once its lease has run out.
    c.restart().await.unwrap();
    let done = wait_end(&c, &r.id).await;
    assert_eq!(done.status, "failed", "{done:#?}");
    assert!(
        done.message.contains("no host was changed"),
        "{}",
        done.message
    );
    assert_eq!(
        done.steps.len(),
        1,
        "the step was found again, not run twice: {done:#?}"
    );
    let mut op = c.operator().await.unwrap();
    let jobs = op
        .list_jobs(pb::ListJobsRequest {
            kind: "deploy".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .jobs;
    assert_eq!(jobs.len(), 1, "{jobs:#?}");
    // The lock went with it.
    let again = start(&c, &file, "staging", "slow").await.unwrap();
    assert_ne!(again.id, r.id);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_host_revoked_mid_rollout_fails_the_rollout_and_reverts_the_others() {
    if !docker::available() {
        return;
    }
    let app = unique_app("rev");
    let _cleanup = AppCleanup(app.clone());
    docker::build_busybox_site(&format!("{app}:v1"), &[("health", "ok")]).unwrap();
    // Healthy, but only after 3 s: time to revoke the second host while
    // the first batch runs.
    docker::build_busybox_image(
        &format!("{app}:v2"),
        &[("health", "ok")],
        &[
            "/bin/busybox",
            "sh",
            "-c",
            "trap 'exit 0' TERM; sleep 3 & wait; /bin/busybox httpd -f -p 8080 -h /www & wait",
        ],
    )
    .unwrap();
    let c = TestCoordinator::start().await.unwrap();
    // Two agents on one engine: web-2's deploys find web-1's containers and
    // change nothing, which is all this test needs of it.
    let _a1 = agent_on(&c, "web-1", &[("env", "staging")], None).await;
    let _a2 = agent_on(&c, "web-2", &[("env", "staging")], None).await;
    let file = app_file(
        &app,
        1,
        r#"labels = { env = "staging" }"#,
        r#"agents = ["web-1"]"#,
    )
    .replace("retries = 10", "retries = 50");
    assert_eq!(deploy(&c, &file, "staging", "v1").await.status, "succeeded");

    let r = start(&c, &file, "staging", "v2").await.unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let mut op = c.operator().await.unwrap();
    op.revoke_agent(pb::RevokeAgentRequest {
        agent: "web-2".into(),
    })
    .await
    .unwrap();
    let r = wait_end(&c, &r.id).await;
    assert_eq!(r.status, "reverted", "{r:#?}");
    assert!(r.message.contains("deploy refused"), "{}", r.message);
    assert!(r.message.contains("web-2"), "{}", r.message);
    assert!(r.message.contains("reverted web-1 to v1"), "{}", r.message);
    assert_eq!(running(None, &app), [format!("{app}-staging-web-v1")]);
}
