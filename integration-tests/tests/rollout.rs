//! Rollouts on real Docker engines, coordinator and agents in this process:
//! two hosts (the machine's engine and a second one standing in for another
//! host, `scripts/ensure-docker2.sh`) deployed one at a time with a failure
//! on the second that reverts the first; rollback; the (app, env) lock;
//! staging and production of one app on one engine; a revert that does not
//! pass the smoke checks; a cancel during a health gate; redeploy after a
//! secret rotation; restarts in place, batch by batch. Images are built
//! locally from scratch (busybox httpd). The `ferry` binary's deploy,
//! releases, rollback, redeploy and rollout cancel commands are exercised
//! in `rollout_cli.rs`.

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
            accessories_only: false,
            accessories: Vec::new(),
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
    assert!(
        r.message
            .contains("web-1: deployed v2, switched back to v1"),
        "{}",
        r.message
    );
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
    assert!(
        err.message()
            .contains(&format!("follow it with `ferry rollout {}`", slow.id)),
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
    inspect_on(None, name)
}

/// [`inspect`] on the engine at `socket`; `name` without the settings hash
/// the container's real name ends with.
fn inspect_on(socket: Option<&str>, name: &str) -> String {
    let docker = || {
        let mut cmd = std::process::Command::new("docker");
        if let Some(socket) = socket {
            cmd.arg("-H").arg(format!("unix://{socket}"));
        }
        cmd
    };
    let listed = docker()
        .args(["ps", "-a", "--format", "{{.Names}}", "--filter"])
        .arg(format!("name=^/?{name}-[0-9a-f]{{12}}$"))
        .output()
        .unwrap();
    let full = String::from_utf8_lossy(&listed.stdout)
        .lines()
        .next()
        .unwrap_or_else(|| panic!("no container {name}-<hash>"))
        .to_string();
    let out = docker()
        .args([
            "inspect",
            "--format",
            "{{.Id}} {{.State.Status}} {{.State.StartedAt}}",
            &full,
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
    // Two agents on one engine, each with its own containers (`ferry.host`).
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
    assert!(
        r.message
            .contains("web-1: deployed v2, switched back to v1"),
        "{}",
        r.message
    );
    // v1 on each host: web-1's switched back, web-2's never replaced.
    assert_eq!(
        running(None, &app),
        [
            format!("{app}-staging-web-v1"),
            format!("{app}-staging-web-v1")
        ]
    );
    for host in ["web-1", "web-2"] {
        let on_host = docker::containers(&format!("ferry.host={host}"))
            .into_iter()
            .filter(|l| l.starts_with(&format!("{app}-staging-web-v1 running")))
            .count();
        assert_eq!(on_host, 1, "{host}");
    }
}

/// The audit log's (action, target) pairs whose target is one of `ids`.
async fn audited(c: &TestCoordinator, ids: &[&str]) -> Vec<(String, String)> {
    use sqlx::Connection;
    let mut raw = sqlx::sqlite::SqliteConnection::connect_with(
        &sqlx::sqlite::SqliteConnectOptions::new().filename(c.store_location()),
    )
    .await
    .unwrap();
    let all: Vec<(String, String)> =
        sqlx::query_as("SELECT action, target FROM audit_log ORDER BY id")
            .fetch_all(&mut raw)
            .await
            .unwrap();
    all.into_iter()
        .filter(|(_, target)| ids.contains(&target.as_str()))
        .collect()
}

async fn cancel(c: &TestCoordinator, id: &str) -> pb::Rollout {
    c.operator()
        .await
        .unwrap()
        .cancel_rollout(pb::CancelRolloutRequest {
            rollout_id: id.into(),
        })
        .await
        .unwrap()
        .into_inner()
        .rollout
        .unwrap()
}

/// `Redeploy` (or `Restart`) of (app, env), waited for.
async fn again(
    c: &TestCoordinator,
    restart: bool,
    app: &str,
    env: &str,
    services: &[&str],
) -> Result<pb::Rollout, tonic::Status> {
    let mut op = c.operator().await.unwrap();
    let req = pb::RedeployRequest {
        accessories: false,
        app: app.into(),
        env: env.into(),
        services: services.iter().map(|s| s.to_string()).collect(),
        dry_run: false,
    };
    let r = if restart {
        op.restart(req).await?
    } else {
        op.redeploy(req).await?
    }
    .into_inner()
    .rollout
    .unwrap();
    Ok(wait_end(c, &r.id).await)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revert_whose_release_fails_the_smoke_checks_is_revert_failed() {
    if !docker::available() {
        return;
    }
    let app = unique_app("rsm");
    let _cleanup = AppCleanup(app.clone());
    for v in ["v1", "v2"] {
        docker::build_busybox_site(&format!("{app}:{v}"), &[("health", v)]).unwrap();
    }
    let c = TestCoordinator::start().await.unwrap();
    let _a = agent_on(&c, "web-1", &[], None).await;
    let port = ferry_integration_tests::stable_port();
    let file = app_file(&app, 1, r#"agents = ["web-1"]"#, r#"agents = ["web-1"]"#).replace(
        "ports = [8080]",
        &format!("ports = [\"127.0.0.1:{port}:8080\"]"),
    );
    assert_eq!(deploy(&c, &file, "staging", "v1").await.status, "succeeded");

    // v2's file adds a smoke check that neither release passes: v2 fails
    // it and is reverted, and v1, back in place, fails it too.
    let smoked = format!("{file}[[smoke]]\nurl = \"http://127.0.0.1:{port}/only-in-v3\"\n");
    let r = deploy(&c, &smoked, "staging", "v2").await;
    assert_eq!(r.status, "revert_failed", "{r:#?}");
    let kinds: Vec<(&str, &str)> = r
        .steps
        .iter()
        .map(|s| (s.kind.as_str(), s.status.as_str()))
        .collect();
    assert_eq!(
        kinds,
        [
            ("deploy", "succeeded"),
            ("smoke", "failed"),
            ("revert", "succeeded"),
            ("revert smoke", "failed"),
        ]
    );
    assert!(
        r.message
            .contains("web-1: deployed v2, switched back to v1; but v1 does not serve there"),
        "{}",
        r.message
    );
    assert!(r.message.contains("only-in-v3"), "{}", r.message);
    assert_eq!(running(None, &app), [format!("{app}-staging-web-v1")]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancel_during_the_health_gate_leaves_no_container_of_the_release() {
    if !docker::available() {
        return;
    }
    let app = unique_app("can");
    let _cleanup = AppCleanup(app.clone());
    docker::build_busybox_site(&format!("{app}:v1"), &[("health", "ok")]).unwrap();
    docker::build_busybox_site(&format!("{app}:slow"), &[("index.html", "never healthy")]).unwrap();
    let c = TestCoordinator::start().await.unwrap();
    let _a = agent_on(&c, "web-1", &[], None).await;
    let file = app_file(&app, 1, r#"agents = ["web-1"]"#, r#"agents = ["web-1"]"#)
        .replace("retries = 10", "retries = 100");
    assert_eq!(deploy(&c, &file, "staging", "v1").await.status, "succeeded");

    let r = start(&c, &file, "staging", "slow").await.unwrap();
    // Cancel once the health gate of the new container runs.
    let mut op = c.operator().await.unwrap();
    let step_job = loop {
        let now = op
            .get_rollout(pb::GetRolloutRequest {
                rollout_id: r.id.clone(),
            })
            .await
            .unwrap()
            .into_inner()
            .rollout
            .unwrap();
        if let Some(step) = now.steps.first() {
            break step.job_id.clone();
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    c.wait_for_event(&step_job, Duration::from_secs(60), |e| {
        matches!(
            e.body.as_ref().and_then(|b| b.body.as_ref()),
            Some(pb::event_body::Body::StepStarted(s)) if s.step == "health web"
        )
    })
    .await
    .unwrap();
    let asked = cancel(&c, &r.id).await;
    assert!(
        asked.cancel_requested_by.ends_with("/operator/admin"),
        "{asked:#?}"
    );
    let r = wait_end(&c, &r.id).await;
    assert_eq!(r.status, "cancelled", "{r:#?}");
    assert!(r.message.contains("cancelled by"), "{}", r.message);
    assert_eq!(running(None, &app), [format!("{app}-staging-web-v1")]);
    assert!(
        docker::containers(&format!("ferry.app={app}"))
            .iter()
            .all(|c| !c.starts_with(&format!("{app}-staging-web-slow"))),
        "a container of the cancelled release is left: {:?}",
        docker::containers(&format!("ferry.app={app}"))
    );
    assert!(
        audited(&c, &[&r.id])
            .await
            .contains(&("rollout.cancel".to_string(), r.id.clone())),
        "the cancel is audited"
    );
    // An ended rollout is not cancelled again: refused, saying so.
    let err = op
        .cancel_rollout(pb::CancelRolloutRequest {
            rollout_id: r.id.clone(),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument);
    assert!(err.message().contains("already ended"), "{}", err.message());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redeploy_after_a_secret_rotation_runs_the_new_value() {
    if !docker::available() {
        return;
    }
    let app = unique_app("rot");
    let _cleanup = AppCleanup(app.clone());
    docker::build_busybox_site(&format!("{app}:v1"), &[("health", "ok")]).unwrap();
    let c = TestCoordinator::start().await.unwrap();
    let _a = agent_on(&c, "web-1", &[], None).await;
    let file = app_file(&app, 1, r#"agents = ["web-1"]"#, r#"agents = ["web-1"]"#).replace(
        "strategy = \"recreate\"",
        "strategy = \"recreate\"\nsecrets = [\"API_KEY\"]",
    );
    let mut op = c.operator().await.unwrap();
    let set = |value: &str| pb::SetSecretRequest {
        app: app.clone(),
        env: "staging".into(),
        name: "API_KEY".into(),
        value: value.into(),
    };
    op.set_secret(set("first-value")).await.unwrap();
    assert_eq!(deploy(&c, &file, "staging", "v1").await.status, "succeeded");
    let name = format!("{app}-staging-web-v1");
    // The environment of the running container of v1.
    let env_of = || {
        let out = std::process::Command::new("docker")
            .args(["inspect", "--format", "{{json .Config.Env}}"])
            .arg(running_id(&app, "v1"))
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    assert!(env_of().contains("API_KEY=first-value"), "{}", env_of());

    op.set_secret(set("rotated-value")).await.unwrap();
    let r = again(&c, false, &app, "staging", &["web"]).await.unwrap();
    assert_eq!(
        (r.kind.as_str(), r.status.as_str()),
        ("redeploy", "succeeded"),
        "{r:#?}"
    );
    assert_eq!(r.version, "v1");
    assert_eq!(r.only_services, ["web"]);
    assert_eq!(
        audited(&c, &[&r.id]).await,
        [("rollout.redeploy".to_string(), r.id.clone())]
    );
    assert!(env_of().contains("API_KEY=rotated-value"), "{}", env_of());
    assert_eq!(running(None, &app), [name]);
    assert_eq!(
        releases(&c, &app, "staging").await,
        [
            ("v1".into(), "redeploy".into(), "succeeded".into()),
            ("v1".into(), "deploy".into(), "succeeded".into())
        ]
    );
    // An unknown service is refused before anything runs, naming those there are.
    let err = again(&c, false, &app, "staging", &["nope"])
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument);
    assert!(
        err.message().contains("no service \"nope\""),
        "{}",
        err.message()
    );
    assert!(err.message().contains("it has web"), "{}", err.message());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_restarts_the_same_containers_host_batch_by_host_batch() {
    if !docker::available() {
        return;
    }
    let Some(engine2) = docker::second_engine() else {
        return;
    };
    let e2 = Some(engine2.as_str());
    let app = unique_app("rst");
    let _cleanup = AppCleanup(app.clone());
    struct Cleanup2(String, String);
    impl Drop for Cleanup2 {
        fn drop(&mut self) {
            docker::cleanup_app_on(Some(&self.0), &self.1);
        }
    }
    let _cleanup2 = Cleanup2(engine2.clone(), app.clone());
    for socket in [None, e2] {
        docker::build_busybox_site_on(socket, &format!("{app}:v1"), &[("health", "ok")]).unwrap();
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
    assert_eq!(deploy(&c, &file, "staging", "v1").await.status, "succeeded");
    let name = format!("{app}-staging-web-v1");
    let parts = |s: String| -> (String, String, String) {
        let mut p = s.split(' ').map(str::to_string);
        (p.next().unwrap(), p.next().unwrap(), p.next().unwrap())
    };
    let before = [parts(inspect_on(None, &name)), parts(inspect_on(e2, &name))];

    let r = again(&c, true, &app, "staging", &[]).await.unwrap();
    assert_eq!(
        (r.kind.as_str(), r.status.as_str()),
        ("restart", "succeeded"),
        "{r:#?}"
    );
    assert_eq!(
        audited(&c, &[&r.id]).await,
        [("rollout.restart".to_string(), r.id.clone())]
    );
    let steps: Vec<(&str, &str)> = r
        .steps
        .iter()
        .map(|s| (s.name.as_str(), s.kind.as_str()))
        .collect();
    assert_eq!(
        steps,
        [
            ("restart batch 1/2: web-1", "restart"),
            ("restart batch 2/2: web-2", "restart")
        ]
    );
    let after = [parts(inspect_on(None, &name)), parts(inspect_on(e2, &name))];
    for (b, a) in before.iter().zip(&after) {
        assert_eq!(a.0, b.0, "the same container");
        assert_eq!(a.1, "running");
        assert_ne!(a.2, b.2, "started again");
    }
    // One batch after the other: web-2 restarted after web-1's job ended.
    let first = c.job(&r.steps[0].job_id).await.unwrap();
    let second = c.job(&r.steps[1].job_id).await.unwrap();
    assert!(
        second.created_at_ms >= first.finished_at_ms,
        "{first:#?} {second:#?}"
    );
    assert!(after[1].2 > after[0].2, "{after:?}");

    // A host with no running container of the release fails the restart,
    // naming the service; the hosts before it were restarted.
    let out = std::process::Command::new("docker")
        .args([
            "-H",
            &format!("unix://{engine2}"),
            "stop",
            "-t",
            "1",
            &after[1].0,
        ])
        .output()
        .unwrap();
    assert!(out.status.success());
    let r = again(&c, true, &app, "staging", &["web"]).await.unwrap();
    assert_eq!(r.status, "failed", "{r:#?}");
    assert!(
        r.message.contains("service web of")
            && r.message.contains("no running container of release v1"),
        "{}",
        r.message
    );
    assert!(
        r.message.contains("restarted before it: web-1"),
        "{}",
        r.message
    );
    assert_eq!(
        releases(&c, &app, "staging").await[..2],
        [
            ("v1".into(), "restart".into(), "failed".into()),
            ("v1".into(), "restart".into(), "succeeded".into()),
        ]
    );
}

/// The id of the app's one running container of `release` (names carry
/// more than the release; ids do not change across a restart).
fn running_id(app: &str, release: &str) -> String {
    let out = std::process::Command::new("docker")
        .args(["ps", "-q", "--no-trunc", "--filter"])
        .arg(format!("label=ferry.app={app}"))
        .arg("--filter")
        .arg(format!("label=ferry.release={release}"))
        .output()
        .unwrap();
    let ids: Vec<String> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::to_string)
        .collect();
    assert_eq!(
        ids.len(),
        1,
        "one running container of {app} {release}: {ids:?}"
    );
    ids[0].clone()
}

/// The loopback port an nginx upstream file points at.
fn upstream_port(file: &std::path::Path) -> u16 {
    let text = std::fs::read_to_string(file).unwrap();
    text.lines()
        .find_map(|l| l.strip_prefix("server 127.0.0.1:"))
        .and_then(|p| p.trim_end_matches(';').parse().ok())
        .unwrap_or_else(|| panic!("no server line in {text:?}"))
}

/// The loopback port a running container's 8080 is published on.
fn published_port(container: &str) -> u16 {
    let out = std::process::Command::new("docker")
        .args([
            "inspect",
            "--format",
            "{{range (index .NetworkSettings.Ports \"8080/tcp\")}}{{if eq .HostIp \"127.0.0.1\"}}{{.HostPort}}{{end}}{{end}}",
            container,
        ])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    text.trim()
        .parse()
        .unwrap_or_else(|e| panic!("port of {container}: {text:?}: {e}"))
}

/// An agent whose nginx upstream files go to `dir`; no nginx in front (its
/// reload is `true`): the upstream file is what nginx would serve.
async fn agent_with_upstreams(
    c: &TestCoordinator,
    dir: &std::path::Path,
) -> (TestAgent, HashMap<String, String>) {
    let env = HashMap::from([
        (
            "FERRY_NGINX_UPSTREAM_DIR".to_string(),
            dir.display().to_string(),
        ),
        ("FERRY_NGINX_RELOAD".to_string(), "true".to_string()),
    ]);
    let agent = c
        .enroll("web-1", &[])
        .await
        .unwrap()
        .start_with_env(env.clone());
    c.wait_for_agent("web-1", "online", Duration::from_secs(10))
        .await
        .unwrap();
    (agent, env)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_blue_green_container_is_served_on_its_new_port() {
    if !docker::available() {
        return;
    }
    let app = unique_app("rbg");
    let _cleanup = AppCleanup(app.clone());
    docker::build_busybox_site(&format!("{app}:v1"), &[("health", "ok")]).unwrap();
    let upstreams = tempfile::tempdir().unwrap();
    let upstream = upstreams.path().join(format!("{app}-staging-web.conf"));
    let c = TestCoordinator::start().await.unwrap();
    let _agent = agent_with_upstreams(&c, upstreams.path()).await;
    let file = app_file(&app, 1, r#"agents = ["web-1"]"#, r#"agents = ["web-1"]"#)
        .replace("strategy = \"recreate\"", "strategy = \"blue-green\"");
    assert_eq!(deploy(&c, &file, "staging", "v1").await.status, "succeeded");
    let id = running_id(&app, "v1");
    assert_eq!(upstream_port(&upstream), published_port(&id));

    let r = again(&c, true, &app, "staging", &[]).await.unwrap();
    assert_eq!(r.status, "succeeded", "{r:#?}");
    assert_eq!(running_id(&app, "v1"), id, "restarted in place");
    assert_eq!(
        upstream_port(&upstream),
        published_port(&id),
        "nginx follows the port Docker published the restarted container on"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_killed_after_its_switch_is_reverted_from_what_it_reports() {
    if !docker::available() {
        return;
    }
    let app = unique_app("kil");
    let _cleanup = AppCleanup(app.clone());
    for v in ["v1", "v2"] {
        docker::build_busybox_site(&format!("{app}:{v}"), &[("health", v)]).unwrap();
    }
    let upstreams = tempfile::tempdir().unwrap();
    let upstream = upstreams.path().join(format!("{app}-staging-web.conf"));
    let c = TestCoordinator::start().await.unwrap();
    let (agent, env) = agent_with_upstreams(&c, upstreams.path()).await;
    let file = app_file(&app, 1, r#"agents = ["web-1"]"#, r#"agents = ["web-1"]"#)
        .replace("strategy = \"recreate\"", "strategy = \"blue-green\"");
    assert_eq!(deploy(&c, &file, "staging", "v1").await.status, "succeeded");
    let v1 = running_id(&app, "v1");
    assert_eq!(upstream_port(&upstream), published_port(&v1));

    // v2 switches, and its agent dies (as a SIGKILL would) while the old
    // container drains: nginx serves v2, the task never ends.
    let r = start(&c, &file, "staging", "v2").await.unwrap();
    let mut op = c.operator().await.unwrap();
    let job = loop {
        let now = op
            .get_rollout(pb::GetRolloutRequest {
                rollout_id: r.id.clone(),
            })
            .await
            .unwrap()
            .into_inner()
            .rollout
            .unwrap();
        if let Some(step) = now.steps.first() {
            break step.job_id.clone();
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    c.wait_for_event(&job, Duration::from_secs(60), |e| {
        matches!(
            e.body.as_ref().and_then(|b| b.body.as_ref()),
            Some(pb::event_body::Body::StepFinished(s)) if s.step == "switch web" && s.ok
        )
    })
    .await
    .unwrap();
    let enrolled = agent.kill().await.unwrap();
    let v2 = running_id(&app, "v2");
    assert_eq!(
        upstream_port(&upstream),
        published_port(&v2),
        "killed after the switch"
    );

    // Back: it reports the task lost; the revert's deploy finds v2 serving
    // and switches back to v1.
    let _agent = enrolled.start_with_env(env);
    let r = wait_end(&c, &r.id).await;
    assert_eq!(r.status, "reverted", "{r:#?}");
    assert!(
        r.message.contains("web-1 (lost)"),
        "the failure names the lost task: {}",
        r.message
    );
    assert!(
        r.message.contains("web-1: task lost, switched back to v1"),
        "{}",
        r.message
    );
    assert_eq!(r.steps[1].kind, "revert");
    // The record is what runs: v1 serves, and nothing else runs.
    assert_eq!(running(None, &app), [format!("{app}-staging-web-v1")]);
    assert_eq!(running_id(&app, "v1"), v1, "the v1 container taken back");
    assert_eq!(upstream_port(&upstream), published_port(&v1));
    assert_eq!(
        releases(&c, &app, "staging").await[0],
        ("v2".into(), "deploy".into(), "reverted".into())
    );
}
