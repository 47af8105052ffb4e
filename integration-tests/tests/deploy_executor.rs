//! The agent's deploy executor against the real Docker engine: blue-green
//! switch of the nginx upstream file, a failed health gate leaving the old
//! release serving with the new container's logs in the failure, recreate,
//! and app/env isolation of names and labels. Images are built locally
//! from scratch (busybox httpd); nginx is not run here (the reload command
//! is `true`) — the rollout tests drive real nginx.

use std::collections::HashMap;
use std::time::Duration;

use ferry_integration_tests::TestCoordinator;
use ferry_integration_tests::docker::{self, AppCleanup};
use ferry_proto::v1 as pb;
use serde_json::json;

fn spec(app: &str, env: &str, release: &str, image: &str, strategy: &str) -> String {
    json!({
        "app": app, "env": env, "release": release,
        "services": [{
            "name": "web",
            "image": image,
            "pull": "never",
            "env": {"GREETING": "hi"},
            "ports": [{"container": 8080}],
            "restart": "unless-stopped",
            "health": {"check": {"http": {"path": "/health"}}, "interval": "200ms", "timeout": "1s", "retries": 10},
            "strategy": strategy,
        }]
    })
    .to_string()
}

async fn deploy(c: &TestCoordinator, spec_json: &str) -> pb::Job {
    let job = c.submit("deploy", spec_json, &["web-1"], 0).await.unwrap();
    c.watch_to_end(&job.id, Duration::from_secs(60))
        .await
        .unwrap();
    c.job(&job.id).await.unwrap()
}

fn get(port: u16, path: &str) -> String {
    use std::io::{Read, Write};
    let Ok(mut s) = std::net::TcpStream::connect(("127.0.0.1", port)) else {
        return String::new();
    };
    let _ = write!(s, "GET {path} HTTP/1.0\r\n\r\n");
    let mut out = String::new();
    let _ = s.read_to_string(&mut out);
    out
}

fn upstream_port(dir: &std::path::Path, app: &str) -> u16 {
    let text = std::fs::read_to_string(dir.join(format!("{app}-production-web.conf"))).unwrap();
    let line = text
        .lines()
        .find(|l| l.starts_with("server 127.0.0.1:"))
        .unwrap();
    line.trim_start_matches("server 127.0.0.1:")
        .trim_end_matches(';')
        .parse()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn blue_green_switches_and_a_failed_health_gate_keeps_the_old_release() {
    if !docker::available() {
        return;
    }
    let app = format!("bg{}", &uuid::Uuid::now_v7().simple().to_string()[24..]);
    let _cleanup = AppCleanup(app.clone());
    let (v1, v2, bad) = (
        format!("{app}:v1"),
        format!("{app}:v2"),
        format!("{app}:bad"),
    );
    docker::build_busybox_site(&v1, &[("health", "ok v1")]).unwrap();
    docker::build_busybox_site(&v2, &[("health", "ok v2")]).unwrap();
    docker::build_busybox_site(&bad, &[("index.html", "no health here")]).unwrap();

    let upstreams = tempfile::tempdir().unwrap();
    let c = TestCoordinator::start().await.unwrap();
    let env = HashMap::from([
        (
            "FERRY_NGINX_UPSTREAM_DIR".to_string(),
            upstreams.path().display().to_string(),
        ),
        ("FERRY_NGINX_RELOAD".to_string(), "true".to_string()),
    ]);
    let _agent = c.enroll("web-1", &[]).await.unwrap().start_with_env(env);
    c.wait_for_agent("web-1", "online", Duration::from_secs(10))
        .await
        .unwrap();

    let job = deploy(&c, &spec(&app, "production", "v1", &v1, "blue-green")).await;
    assert_eq!(job.status, "succeeded", "{job:#?}");
    let p1 = upstream_port(upstreams.path(), &app);
    assert!(get(p1, "/health").contains("ok v1"));
    let names = docker::containers(&format!("ferry.app={app}"));
    assert_eq!(names, vec![format!("{app}-production-web-v1 running")]);

    let job = deploy(&c, &spec(&app, "production", "v2", &v2, "blue-green")).await;
    assert_eq!(job.status, "succeeded", "{job:#?}");
    let p2 = upstream_port(upstreams.path(), &app);
    assert_ne!(p1, p2);
    assert!(get(p2, "/health").contains("ok v2"));
    let mut names = docker::containers(&format!("ferry.app={app}"));
    names.sort();
    assert_eq!(
        names,
        vec![
            format!("{app}-production-web-v1 exited"),
            format!("{app}-production-web-v2 running")
        ],
        "the previous release is kept, stopped, for rollback"
    );
    let result: serde_json::Value = serde_json::from_str(&job.tasks[0].result_json).unwrap();
    assert_eq!(result["services"][0]["previous_release"], "v1");

    // A release whose health fails: the new container is removed, v2 keeps
    // serving, the failure carries the reason and the container's logs.
    let job = deploy(&c, &spec(&app, "production", "v3", &bad, "blue-green")).await;
    assert_eq!(job.status, "failed");
    let message = &job.tasks[0].message;
    assert!(message.contains("new container not healthy"), "{message}");
    assert!(message.contains("404"), "{message}");
    assert!(
        message.contains("last") && message.contains("log lines"),
        "{message}"
    );
    assert_eq!(
        upstream_port(upstreams.path(), &app),
        p2,
        "nginx still points at v2"
    );
    assert!(get(p2, "/health").contains("ok v2"));
    let mut names = docker::containers(&format!("ferry.app={app}"));
    names.sort();
    assert_eq!(
        names,
        vec![
            format!("{app}-production-web-v1 exited"),
            format!("{app}-production-web-v2 running")
        ]
    );

    // Deploying the running release again changes nothing.
    let job = deploy(&c, &spec(&app, "production", "v2", &v2, "blue-green")).await;
    assert_eq!(job.status, "succeeded");
    assert_eq!(upstream_port(upstreams.path(), &app), p2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn recreate_restarts_the_old_release_when_the_new_one_fails_and_envs_are_isolated() {
    if !docker::available() {
        return;
    }
    let app = format!("rc{}", &uuid::Uuid::now_v7().simple().to_string()[24..]);
    let _cleanup = AppCleanup(app.clone());
    let (v1, bad) = (format!("{app}:v1"), format!("{app}:bad"));
    docker::build_busybox_site(&v1, &[("health", "ok v1")]).unwrap();
    docker::build_busybox_site(&bad, &[("index.html", "nope")]).unwrap();
    let c = TestCoordinator::start().await.unwrap();
    let _agent = c.start_agent("web-1", &[]).await.unwrap();

    for env in ["staging", "production"] {
        let job = deploy(&c, &spec(&app, env, "v1", &v1, "recreate")).await;
        assert_eq!(job.status, "succeeded", "{job:#?}");
    }
    let job = deploy(&c, &spec(&app, "staging", "v2", &bad, "recreate")).await;
    assert_eq!(job.status, "failed");
    let mut names = docker::containers(&format!("ferry.app={app}"));
    names.sort();
    assert_eq!(
        names,
        vec![
            format!("{app}-production-web-v1 running"),
            format!("{app}-staging-web-v1 running")
        ],
        "staging's failed deploy restarted staging v1 and never touched production"
    );
    let networks = std::process::Command::new("docker")
        .args([
            "network",
            "ls",
            "--filter",
            &format!("label=ferry.app={app}"),
            "--format",
            "{{.Name}}",
        ])
        .output()
        .unwrap();
    let mut networks: Vec<String> = String::from_utf8_lossy(&networks.stdout)
        .lines()
        .map(str::to_string)
        .collect();
    networks.sort();
    assert_eq!(
        networks,
        vec![format!("{app}-production"), format!("{app}-staging")]
    );
}

fn walk_contains(dir: &std::path::Path, needle: &[u8]) -> Vec<String> {
    let mut hits = Vec::new();
    let Ok(entries) = std::fs::read_dir(dir) else {
        return hits;
    };
    for entry in entries.flatten() {
        let p = entry.path();
        if p.is_dir() {
            hits.extend(walk_contains(&p, needle));
        } else if let Ok(bytes) = std::fs::read(&p)
            && bytes.windows(needle.len()).any(|w| w == needle)
        {
            hits.push(p.display().to_string());
        }
    }
    hits
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_secret_reaches_only_the_container_environment() {
    if !docker::available() {
        return;
    }
    let app = format!("sc{}", &uuid::Uuid::now_v7().simple().to_string()[24..]);
    let _cleanup = AppCleanup(app.clone());
    let value = "s3cr3t-value-for-ferry-tests";
    let (good, leaky) = (format!("{app}:v1"), format!("{app}:leaky"));
    docker::build_busybox_site(&good, &[("health", "ok")]).unwrap();
    // Prints its token, then serves no /health: its failure logs must be redacted.
    docker::build_busybox_image(
        &leaky,
        &[("index.html", "x")],
        &[
            "/bin/busybox",
            "sh",
            "-c",
            "echo token is $API_TOKEN; exec /bin/busybox httpd -f -p 8080 -h /www",
        ],
    )
    .unwrap();
    let c = TestCoordinator::start().await.unwrap();
    let agent = c.start_agent("web-1", &[]).await.unwrap();
    let with_secret = |release: &str, image: &str| {
        let mut s: serde_json::Value =
            serde_json::from_str(&spec(&app, "production", release, image, "recreate")).unwrap();
        s["services"][0]["secrets"] = json!(["API_TOKEN"]);
        s.to_string()
    };

    // Not set yet: the task fails before anything is sent to the agent.
    let job = deploy(&c, &with_secret("v1", &good)).await;
    assert_eq!(job.status, "failed");
    assert!(
        job.tasks[0].message.contains("missing secrets"),
        "{}",
        job.tasks[0].message
    );
    assert!(docker::containers(&format!("ferry.app={app}")).is_empty());

    c.operator()
        .await
        .unwrap()
        .set_secret(pb::SetSecretRequest {
            app: app.clone(),
            env: "production".into(),
            name: "API_TOKEN".into(),
            value: value.into(),
        })
        .await
        .unwrap();
    let job = deploy(&c, &with_secret("v1", &good)).await;
    assert_eq!(job.status, "succeeded", "{job:#?}");
    let inspect = std::process::Command::new("docker")
        .args([
            "inspect",
            "--format",
            "{{json .Config.Env}}",
            &docker::full_name(&format!("{app}-production-web-v1")),
        ])
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&inspect.stdout).contains(&format!("API_TOKEN={value}")));

    let job = deploy(&c, &with_secret("v2", &leaky)).await;
    assert_eq!(job.status, "failed");
    let message = &job.tasks[0].message;
    assert!(
        message.contains("token is [redacted:API_TOKEN]"),
        "{message}"
    );

    // Nowhere else: job specs, results and messages, every event, the
    // agent's state dir (spool included), the coordinator's data dir.
    let mut everything = String::new();
    for j in c
        .operator()
        .await
        .unwrap()
        .list_jobs(pb::ListJobsRequest::default())
        .await
        .unwrap()
        .into_inner()
        .jobs
    {
        everything.push_str(&format!("{j:?}"));
        everything.push_str(&format!("{:?}", c.job(&j.id).await.unwrap()));
        everything.push_str(&format!(
            "{:?}",
            c.watch_to_end(&j.id, Duration::from_secs(10))
                .await
                .unwrap()
        ));
    }
    assert!(
        !everything.contains(value),
        "a job, task or event carries the secret"
    );
    assert!(walk_contains(agent.state_dir(), value.as_bytes()).is_empty());
    assert!(walk_contains(&c.data_dir, value.as_bytes()).is_empty());
}

/// `docker inspect -f FORMAT NAME`, trimmed.
fn inspect_container(name: &str, format: &str) -> String {
    let out = std::process::Command::new("docker")
        .args(["inspect", "-f", format, name])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// Two agents on ONE Docker engine (as the tests run them) deploying the
/// same app, environment and release: each starts, finds, stops and lists
/// only its own containers (the `ferry.host` label), and their names
/// never collide.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_agents_on_one_engine_never_touch_each_others_containers() {
    if !docker::available() {
        return;
    }
    let app = format!("tw{}", &uuid::Uuid::now_v7().simple().to_string()[24..]);
    let _cleanup = AppCleanup(app.clone());
    let (v1, v2) = (format!("{app}:v1"), format!("{app}:v2"));
    docker::build_busybox_site(&v1, &[("health", "ok v1")]).unwrap();
    docker::build_busybox_site(&v2, &[("health", "ok v2")]).unwrap();
    let c = TestCoordinator::start().await.unwrap();
    let mut dirs = Vec::new();
    let mut agents = Vec::new();
    for name in ["web-1", "web-2"] {
        let dir = tempfile::tempdir().unwrap();
        let env = HashMap::from([
            (
                "FERRY_NGINX_UPSTREAM_DIR".to_string(),
                dir.path().display().to_string(),
            ),
            ("FERRY_NGINX_RELOAD".to_string(), "true".to_string()),
        ]);
        agents.push(c.enroll(name, &[]).await.unwrap().start_with_env(env));
        c.wait_for_agent(name, "online", Duration::from_secs(10))
            .await
            .unwrap();
        dirs.push(dir);
    }
    let on = |agent: &'static str, spec: String| {
        let c = &c;
        async move {
            let job = c.submit("deploy", &spec, &[agent], 0).await.unwrap();
            c.watch_to_end(&job.id, Duration::from_secs(60))
                .await
                .unwrap();
            c.job(&job.id).await.unwrap()
        }
    };
    let result = |job: &pb::Job| -> serde_json::Value {
        serde_json::from_str(&job.tasks[0].result_json).unwrap()
    };

    let j1 = on("web-1", spec(&app, "production", "v1", &v1, "blue-green")).await;
    assert_eq!(j1.status, "succeeded", "{j1:#?}");
    let j2 = on("web-2", spec(&app, "production", "v1", &v1, "blue-green")).await;
    assert_eq!(j2.status, "succeeded", "{j2:#?}");
    let (r1, r2) = (result(&j1), result(&j2));
    assert_eq!(
        r2["services"][0]["changed"], true,
        "web-2 started its own container rather than taking web-1's as already running: {r2}"
    );
    let (n1, n2) = (
        r1["services"][0]["container"].as_str().unwrap().to_string(),
        r2["services"][0]["container"].as_str().unwrap().to_string(),
    );
    assert_ne!(n1, n2, "one engine, two agents: two names");
    assert!(n1.len() <= 63 && n2.len() <= 63);
    assert_eq!(
        inspect_container(&n1, "{{index .Config.Labels \"ferry.host\"}}"),
        "web-1"
    );
    assert_eq!(
        inspect_container(&n2, "{{index .Config.Labels \"ferry.host\"}}"),
        "web-2"
    );
    let id2 = inspect_container(&n2, "{{.Id}}");
    assert!(get(upstream_port(dirs[1].path(), &app), "/health").contains("ok v1"));

    // web-1 moves to v2: its v1 stops; web-2's v1 runs on, untouched.
    let j = on("web-1", spec(&app, "production", "v2", &v2, "blue-green")).await;
    assert_eq!(j.status, "succeeded", "{j:#?}");
    assert_eq!(result(&j)["services"][0]["previous_release"], "v1");
    assert_eq!(inspect_container(&n1, "{{.State.Status}}"), "exited");
    assert_eq!(inspect_container(&n2, "{{.State.Status}}"), "running");
    assert_eq!(inspect_container(&n2, "{{.Id}}"), id2);
    let web1 = docker::containers("ferry.host=web-1")
        .into_iter()
        .filter(|l| l.starts_with(&app))
        .count();
    assert_eq!(web1, 2, "web-1 has its v1 (stopped) and v2");

    // Each agent's status lists its own containers only.
    for (agent, want) in [("web-1", 2), ("web-2", 1)] {
        let job = c
            .submit("inspect", &json!({"app": app}).to_string(), &[agent], 0)
            .await
            .unwrap();
        c.watch_to_end(&job.id, Duration::from_secs(30))
            .await
            .unwrap();
        let job = c.job(&job.id).await.unwrap();
        let found: serde_json::Value = serde_json::from_str(&job.tasks[0].result_json).unwrap();
        assert_eq!(
            found["containers"].as_array().unwrap().len(),
            want,
            "{agent}: {found}"
        );
    }
    // And a redeploy of v1 on web-2 finds its own v1 already running.
    let j = on("web-2", spec(&app, "production", "v1", &v1, "blue-green")).await;
    assert_eq!(j.status, "succeeded", "{j:#?}");
    assert_eq!(
        result(&j)["services"][0]["changed"],
        false,
        "{}",
        result(&j)
    );
}
