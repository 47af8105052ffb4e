//! The app model real stacks need, on the real Docker engine: per-service
//! placement (`hosts` / `labels` within the environment's hosts, resolved
//! when the rollout is planned and shown in the plan) and `replicas`. The
//! agents here share one engine, which the `ferry.host` label makes safe.
//! Images are built locally from scratch (busybox httpd).

use std::collections::HashMap;
use std::time::Duration;

use ferry_integration_tests::docker::{self, AppCleanup};
use ferry_integration_tests::{TestAgent, TestCoordinator};
use ferry_proto::v1 as pb;

fn unique_app(prefix: &str) -> String {
    format!(
        "{prefix}{}",
        &uuid::Uuid::now_v7().simple().to_string()[24..]
    )
}

async fn start(
    c: &TestCoordinator,
    file: &str,
    env: &str,
    version: &str,
    dry_run: bool,
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
            dry_run,
        })
        .await?
        .into_inner()
        .rollout
        .unwrap())
}

async fn wait_end(c: &TestCoordinator, id: &str) -> pb::Rollout {
    let mut op = c.operator().await.unwrap();
    let until = tokio::time::Instant::now() + Duration::from_secs(180);
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

async fn deploy(c: &TestCoordinator, file: &str, env: &str, version: &str) -> pb::Rollout {
    let r = start(c, file, env, version, false).await.unwrap();
    wait_end(c, &r.id).await
}

/// An agent on this machine's engine with its own upstream directory (no
/// nginx: its reload is `true`).
async fn agent(
    c: &TestCoordinator,
    name: &str,
    labels: &[(&str, &str)],
    upstreams: &std::path::Path,
) -> TestAgent {
    let env = HashMap::from([
        (
            "FERRY_NGINX_UPSTREAM_DIR".to_string(),
            upstreams.display().to_string(),
        ),
        ("FERRY_NGINX_RELOAD".to_string(), "true".to_string()),
    ]);
    let agent = c.enroll(name, labels).await.unwrap().start_with_env(env);
    c.wait_for_agent(name, "online", Duration::from_secs(10))
        .await
        .unwrap();
    agent
}

/// `service STATE` of the app's containers an agent started, sorted.
fn on_host(app: &str, host: &str) -> Vec<String> {
    let out = std::process::Command::new("docker")
        .args([
            "ps",
            "-a",
            "--filter",
            &format!("label=ferry.app={app}"),
            "--filter",
            &format!("label=ferry.host={host}"),
            "--format",
            "{{.Label \"ferry.service\"}} {{.Label \"ferry.release\"}} {{.State}}",
        ])
        .output()
        .unwrap();
    let mut lines: Vec<String> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::to_string)
        .collect();
    lines.sort();
    lines
}

fn placed_file(app: &str, worker_hosts: &str) -> String {
    format!(
        r#"app = "{app}"
[environments.production]
labels = {{ stack = "{app}" }}
[services.web]
image = "{app}:{{version}}"
pull = "never"
ports = [8080]
strategy = "recreate"
labels = {{ role = "web" }}
[services.web.healthcheck]
http = "/health"
interval = "200ms"
timeout = "1s"
retries = 10
[services.worker]
image = "{app}:{{version}}"
pull = "never"
hosts = {worker_hosts}
"#
    )
}

/// A service runs only on the hosts its placement selects, the plan says
/// where, moving it stops it where it no longer runs, and a placement
/// selecting none of the environment's hosts is refused naming the service.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn services_run_where_they_are_placed_and_the_plan_says_where() {
    if !docker::available() {
        return;
    }
    let app = unique_app("pl");
    let _cleanup = AppCleanup(app.clone());
    for v in ["1.0.0", "1.1.0"] {
        docker::build_busybox_site(&format!("{app}:{v}"), &[("health", "ok")]).unwrap();
    }
    let c = TestCoordinator::start().await.unwrap();
    let (u1, u2) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let _web = agent(&c, "web-1", &[("stack", &app), ("role", "web")], u1.path()).await;
    let _jobs = agent(
        &c,
        "jobs-1",
        &[("stack", &app), ("role", "jobs")],
        u2.path(),
    )
    .await;

    let file = placed_file(&app, r#"["jobs-1"]"#);
    let plan = start(&c, &file, "production", "1.0.0", true).await.unwrap();
    let placed: Vec<(String, Vec<String>)> = plan
        .services
        .iter()
        .map(|s| (s.name.clone(), s.hosts.clone()))
        .collect();
    assert_eq!(
        placed,
        [
            ("web".to_string(), vec!["web-1".to_string()]),
            ("worker".to_string(), vec!["jobs-1".to_string()])
        ]
    );

    let r = deploy(&c, &file, "production", "1.0.0").await;
    assert_eq!(r.status, "succeeded", "{r:#?}");
    assert_eq!(on_host(&app, "web-1"), ["web 1.0.0 running"]);
    assert_eq!(on_host(&app, "jobs-1"), ["worker 1.0.0 running"]);

    // The worker moves to web-1: it starts there and stops on jobs-1.
    let file = placed_file(&app, r#"["web-1"]"#);
    let r = deploy(&c, &file, "production", "1.1.0").await;
    assert_eq!(r.status, "succeeded", "{r:#?}");
    assert_eq!(
        on_host(&app, "web-1"),
        [
            "web 1.0.0 exited",
            "web 1.1.0 running",
            "worker 1.1.0 running"
        ]
    );
    assert_eq!(on_host(&app, "jobs-1"), ["worker 1.0.0 exited"]);

    // A placement with none of the environment's hosts: refused, before
    // anything runs, naming the service.
    let file = placed_file(&app, r#"["db-9"]"#);
    let err = start(&c, &file, "production", "1.2.0", false)
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument, "{err:?}");
    assert!(
        err.message()
            .contains("service worker: its placement (agents db-9) selects none of the hosts")
            && err.message().contains("jobs-1, web-1"),
        "{}",
        err.message()
    );
}

/// A recreate service with 2 replicas and a worker with 3: each replica has
/// its own container (`ferry.replica`, `-r<i>` in the name), a release
/// replaces them one by one (stop r1, start r1, its health, then r2), the
/// previous release is kept stopped per replica, and a restart restarts
/// every replica.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_are_recreated_one_by_one_and_restarted_all() {
    if !docker::available() {
        return;
    }
    let app = unique_app("rc");
    let _cleanup = AppCleanup(app.clone());
    for v in ["1.0.0", "1.1.0"] {
        docker::build_busybox_site(&format!("{app}:{v}"), &[("health", v)]).unwrap();
    }
    let c = TestCoordinator::start().await.unwrap();
    let u = tempfile::tempdir().unwrap();
    let _web = agent(&c, "web-1", &[("stack", &app)], u.path()).await;
    let file = format!(
        r#"app = "{app}"
[environments.production]
labels = {{ stack = "{app}" }}
[services.web]
image = "{app}:{{version}}"
pull = "never"
ports = [8080]
strategy = "recreate"
replicas = 2
[services.web.healthcheck]
http = "/health"
interval = "200ms"
timeout = "1s"
retries = 10
[services.worker]
image = "{app}:{{version}}"
pull = "never"
replicas = 3
"#
    );
    let plan = start(&c, &file, "production", "1.0.0", true).await.unwrap();
    let counts: Vec<u32> = plan.services.iter().map(|s| s.replicas).collect();
    assert_eq!(counts, [2, 3]);

    let r = deploy(&c, &file, "production", "1.0.0").await;
    assert_eq!(r.status, "succeeded", "{r:#?}");
    assert_eq!(
        on_host(&app, "web-1"),
        [
            "web 1.0.0 running",
            "web 1.0.0 running",
            "worker 1.0.0 running",
            "worker 1.0.0 running",
            "worker 1.0.0 running"
        ]
    );
    let names = docker::containers(&format!("ferry.app={app}"));
    for i in 1..=2 {
        let prefix = format!("{app}-production-web-r{i}-1.0.0 running");
        assert!(names.contains(&prefix), "{prefix} in {names:?}");
    }
    let job = c.job(&r.steps[0].job_id).await.unwrap();
    let result: serde_json::Value = serde_json::from_str(&job.tasks[0].result_json).unwrap();
    assert_eq!(
        result["services"][0]["containers"]
            .as_array()
            .unwrap()
            .len(),
        2
    );
    assert_eq!(
        result["services"][1]["containers"]
            .as_array()
            .unwrap()
            .len(),
        3
    );

    let r = deploy(&c, &file, "production", "1.1.0").await;
    assert_eq!(r.status, "succeeded", "{r:#?}");
    let events = c
        .watch_to_end(&r.steps[0].job_id, Duration::from_secs(30))
        .await
        .unwrap();
    let steps: Vec<String> = events
        .iter()
        .filter_map(|e| match e.body.as_ref().and_then(|b| b.body.as_ref()) {
            Some(pb::event_body::Body::StepStarted(s))
                if s.step.starts_with("stop web") || s.step.starts_with("start web") =>
            {
                Some(s.step.clone())
            }
            _ => None,
        })
        .collect();
    assert_eq!(
        steps,
        [
            "stop web r1 1.0.0",
            "start web r1",
            "stop web r2 1.0.0",
            "start web r2"
        ],
        "one replica at a time"
    );
    assert_eq!(
        on_host(&app, "web-1"),
        [
            "web 1.0.0 exited",
            "web 1.0.0 exited",
            "web 1.1.0 running",
            "web 1.1.0 running",
            "worker 1.0.0 exited",
            "worker 1.0.0 exited",
            "worker 1.0.0 exited",
            "worker 1.1.0 running",
            "worker 1.1.0 running",
            "worker 1.1.0 running"
        ]
    );

    // The same release again: every replica already runs.
    let r = deploy(&c, &file, "production", "1.1.0").await;
    assert_eq!(r.status, "succeeded", "{r:#?}");
    let job = c.job(&r.steps[0].job_id).await.unwrap();
    let result: serde_json::Value = serde_json::from_str(&job.tasks[0].result_json).unwrap();
    assert_eq!(result["services"][0]["changed"], false, "{result}");
    assert_eq!(result["services"][1]["changed"], false, "{result}");

    // `ferry restart`: every replica of every service, gated.
    let mut op = c.operator().await.unwrap();
    let r = op
        .restart(pb::RedeployRequest {
            accessories: false,
            app: app.clone(),
            env: "production".into(),
            services: vec![],
            dry_run: false,
        })
        .await
        .unwrap()
        .into_inner()
        .rollout
        .unwrap();
    let r = wait_end(&c, &r.id).await;
    assert_eq!(r.status, "succeeded", "{r:#?}");
    let job = c.job(&r.steps[0].job_id).await.unwrap();
    let result: serde_json::Value = serde_json::from_str(&job.tasks[0].result_json).unwrap();
    assert_eq!(result["services"].as_array().unwrap().len(), 5, "{result}");
}

/// `docker exec NAME ARGS...`: its output, trimmed.
fn exec(container: &str, args: &[&str]) -> String {
    let out = std::process::Command::new("docker")
        .arg("exec")
        .arg(container)
        .args(args)
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// A container's id.
fn inspect_id(name: &str) -> String {
    let out = std::process::Command::new("docker")
        .args(["inspect", "-f", "{{.Id}}", name])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// The id and name of the app's running accessory `name`.
fn accessory(app: &str, name: &str) -> (String, String) {
    let out = std::process::Command::new("docker")
        .args([
            "ps",
            "--filter",
            &format!("label=ferry.app={app}"),
            "--filter",
            &format!("label=ferry.accessory={name}"),
            "--format",
            "{{.ID}} {{.Names}}",
        ])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).trim().to_string();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 1, "one running accessory {name}: {text:?}");
    let (id, n) = lines[0].split_once(' ').unwrap();
    (id.to_string(), n.to_string())
}

fn accessory_file(app: &str, mode: &str) -> String {
    format!(
        r#"app = "{app}"
[environments.production]
labels = {{ stack = "{app}" }}
[accessories.db]
image = "{app}-db:1"
pull = "never"
env = {{ MODE = "{mode}" }}
volumes = ["dbdata:/data"]
ports = [8080]
[accessories.db.healthcheck]
http = "/health"
interval = "200ms"
timeout = "1s"
retries = 10
[services.web]
image = "{app}:{{version}}"
pull = "never"
ports = [8080]
[services.web.healthcheck]
http = "/health"
interval = "200ms"
timeout = "1s"
retries = 10
"#
    )
}

/// An accessory is started before the services, reachable by its name on
/// the environment's network; a release bump leaves its container (same
/// id) and its data alone; a change to its own settings recreates it on
/// the same volume.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_accessory_outlives_releases_and_a_settings_change_keeps_its_volume() {
    if !docker::available() {
        return;
    }
    let app = unique_app("ac");
    let _cleanup = AppCleanup(app.clone());
    docker::build_busybox_site(&format!("{app}-db:1"), &[("health", "db")]).unwrap();
    for v in ["1.0.0", "1.1.0", "1.2.0"] {
        docker::build_busybox_site(&format!("{app}:{v}"), &[("health", v)]).unwrap();
    }
    let c = TestCoordinator::start().await.unwrap();
    let u = tempfile::tempdir().unwrap();
    let _web = agent(&c, "web-1", &[("stack", &app)], u.path()).await;

    let plan = start(&c, &accessory_file(&app, "a"), "production", "1.0.0", true)
        .await
        .unwrap();
    let planned: Vec<(&str, &str)> = plan
        .accessories
        .iter()
        .map(|a| (a.name.as_str(), a.image.as_str()))
        .collect();
    assert_eq!(planned, [("db", format!("{app}-db:1").as_str())]);
    let r = deploy(&c, &accessory_file(&app, "a"), "production", "1.0.0").await;
    assert_eq!(r.status, "succeeded", "{r:#?}");
    let (id, name) = accessory(&app, "db");
    assert!(name.starts_with(&format!("{app}-production-db-")), "{name}");
    exec(
        &name,
        &["/bin/busybox", "sh", "-c", "echo kept > /data/row"],
    );
    // The services reach it by its name.
    let web = docker::full_name(&format!("{app}-production-web-1.0.0"));
    assert_eq!(
        exec(
            &web,
            &["/bin/busybox", "wget", "-qO-", "http://db:8080/health"]
        ),
        "db"
    );

    // `ferry accessory ls` reads this: the host's inspection names it.
    let mut op = c.operator().await.unwrap();
    let status = op
        .get_app_status(pb::GetAppStatusRequest {
            app: app.clone(),
            env: "production".into(),
        })
        .await
        .unwrap()
        .into_inner();
    let listed: Vec<(String, String)> = status.environments[0].hosts[0]
        .containers
        .iter()
        .filter(|c| !c.accessory.is_empty())
        .map(|c| (c.accessory.clone(), c.name.clone()))
        .collect();
    assert_eq!(listed, [("db".to_string(), name.clone())]);

    // A release bump: the same accessory container, untouched.
    let r = deploy(&c, &accessory_file(&app, "a"), "production", "1.1.0").await;
    assert_eq!(r.status, "succeeded", "{r:#?}");
    let job = c.job(&r.steps[0].job_id).await.unwrap();
    let result: serde_json::Value = serde_json::from_str(&job.tasks[0].result_json).unwrap();
    assert_eq!(result["accessories"][0]["changed"], false, "{result}");
    assert_eq!(accessory(&app, "db").0, id, "same container");
    assert_eq!(exec(&name, &["/bin/busybox", "cat", "/data/row"]), "kept");

    // Its own settings change: a new container, the same volume.
    let r = deploy(&c, &accessory_file(&app, "b"), "production", "1.2.0").await;
    assert_eq!(r.status, "succeeded", "{r:#?}");
    let (id2, name2) = accessory(&app, "db");
    assert_ne!(id2, id, "recreated");
    assert_eq!(exec(&name2, &["/bin/busybox", "cat", "/data/row"]), "kept");
    assert!(
        exec(&name2, &["/bin/busybox", "env"]).contains("MODE=b"),
        "the new settings"
    );
    let all = docker::containers("ferry.accessory=db")
        .into_iter()
        .filter(|l| l.starts_with(&app))
        .count();
    assert_eq!(all, 1, "the old accessory container is removed");

    // `ferry accessory restart`: the same container, started again, gated.
    let started = || {
        let out = std::process::Command::new("docker")
            .args(["inspect", "-f", "{{.State.StartedAt}}", &name2])
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    };
    let before = started();
    let restart = |names: Vec<String>| pb::RedeployRequest {
        app: app.clone(),
        env: "production".into(),
        services: names,
        dry_run: false,
        accessories: true,
    };
    let err = op.restart(restart(vec!["nope".into()])).await.unwrap_err();
    assert!(
        err.message()
            .contains("has no accessory \"nope\"; it has db"),
        "{}",
        err.message()
    );
    let r = op
        .restart(restart(vec![]))
        .await
        .unwrap()
        .into_inner()
        .rollout
        .unwrap();
    assert_eq!(r.only_services, ["db"], "the plan names what it restarts");
    let r = wait_end(&c, &r.id).await;
    assert_eq!(r.status, "succeeded", "{r:#?}");
    assert_eq!(accessory(&app, "db").0, id2, "restarted in place");
    assert_ne!(started(), before, "started again");
    let job = c.job(&r.steps[0].job_id).await.unwrap();
    let result: serde_json::Value = serde_json::from_str(&job.tasks[0].result_json).unwrap();
    assert_eq!(
        result["services"][0]["container"],
        name2.as_str(),
        "{result}"
    );
    assert_eq!(
        result["services"].as_array().unwrap().len(),
        1,
        "the web service is not restarted: {result}"
    );

    // `ferry accessory upgrade`: the current release again with the file's
    // new accessory settings; the accessory is recreated, the service is
    // left alone.
    let web_id = |release: &str| {
        let name = docker::full_name(&format!("{app}-production-web-{release}"));
        inspect_id(&name)
    };
    let web_before = web_id("1.2.0");
    let r = op
        .start_rollout(pb::StartRolloutRequest {
            app_file: accessory_file(&app, "c"),
            file_name: "ferry.toml".into(),
            env: "production".into(),
            version: String::new(),
            dry_run: false,
            accessories_only: true,
            accessories: vec!["db".into()],
        })
        .await
        .unwrap()
        .into_inner()
        .rollout
        .unwrap();
    let r = wait_end(&c, &r.id).await;
    assert_eq!(r.status, "succeeded", "{r:#?}");
    assert_eq!(r.version, "1.2.0", "the current release");
    let (id3, name3) = accessory(&app, "db");
    assert_ne!(id3, id2, "recreated");
    assert!(exec(&name3, &["/bin/busybox", "env"]).contains("MODE=c"));
    assert_eq!(exec(&name3, &["/bin/busybox", "cat", "/data/row"]), "kept");
    assert_eq!(web_id("1.2.0"), web_before, "the service is left alone");
}
