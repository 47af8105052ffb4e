//! What runs on a host is what the release says, on the real Docker engine
//! and the nginx of `scripts/ensure-nginx.sh`:
//!
//! - a same-version deploy with a changed env variable starts a container
//!   with the new value; an identical one is "already running";
//! - a cancel during the health gate removes the new container, says what
//!   the host is back on, and the next deploy of that version is gated again;
//! - a running container of the wanted release and settings that nginx does
//!   not point at is taken over (gated, switched to), not started twice;
//! - a stray running container of an old release is stopped after a deploy,
//!   and only `keep_releases` stopped releases are kept;
//! - through a real nginx: a switch is confirmed by a request through
//!   `nginx_url`, and an upstream file the site does not include fails the
//!   switch while the old container keeps serving every request.
//!
//! Images are built locally from busybox (`docker::build_busybox_site`).
//! The nginx test fails rather than skips without `FERRY_TEST_NGINX_PREFIX`.

use std::collections::HashMap;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use ferry_integration_tests::docker::{self, AppCleanup};
use ferry_integration_tests::{TestAgent, TestCoordinator};
use ferry_proto::v1 as pb;
use serde_json::{Value, json};

fn unique_app(prefix: &str) -> String {
    format!(
        "{prefix}{}",
        &uuid::Uuid::now_v7().simple().to_string()[24..]
    )
}

/// One blue-green web service on 8080, GET /health gated.
fn spec(app: &str, release: &str, image: &str, greeting: &str) -> Value {
    json!({
        "app": app, "env": "production", "release": release,
        "services": [{
            "name": "web",
            "image": image,
            "pull": "never",
            "env": {"GREETING": greeting},
            "ports": [{"container": 8080}],
            "restart": "unless-stopped",
            "health": {"check": {"http": {"path": "/health"}}, "interval": "200ms", "timeout": "1s", "retries": 150},
            "strategy": "blue-green",
        }]
    })
}

async fn deploy(c: &TestCoordinator, spec: &Value) -> pb::Job {
    let job = c
        .submit("deploy", &spec.to_string(), &["web-1"], 0)
        .await
        .unwrap();
    c.watch_to_end(&job.id, Duration::from_secs(90))
        .await
        .unwrap();
    c.job(&job.id).await.unwrap()
}

fn result(job: &pb::Job) -> Value {
    serde_json::from_str(&job.tasks[0].result_json).unwrap_or(Value::Null)
}

/// `name state` of the app's containers (names without the hash), sorted.
fn containers(app: &str) -> Vec<String> {
    let mut names = docker::containers(&format!("ferry.app={app}"));
    names.sort();
    names
}

/// `docker inspect --format FORMAT NAME`.
fn inspect(name: &str, format: &str) -> String {
    let out = Command::new("docker")
        .args(["inspect", "--format", format, name])
        .output()
        .unwrap();
    assert!(out.status.success(), "docker inspect {name}");
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

fn upstream_port(file: &std::path::Path) -> u16 {
    let text = std::fs::read_to_string(file).unwrap();
    text.lines()
        .find_map(|l| l.strip_prefix("server 127.0.0.1:"))
        .and_then(|p| p.trim_end_matches(';').parse().ok())
        .unwrap_or_else(|| panic!("no server line in {text:?}"))
}

/// An agent whose upstream files go to `dir` and whose nginx reload
/// command is `reload` (split at whitespace).
async fn agent(c: &TestCoordinator, dir: &str, reload: &str) -> TestAgent {
    let env = HashMap::from([
        ("FERRY_NGINX_UPSTREAM_DIR".to_string(), dir.to_string()),
        ("FERRY_NGINX_RELOAD".to_string(), reload.to_string()),
    ]);
    let a = c.enroll("web-1", &[]).await.unwrap().start_with_env(env);
    c.wait_for_agent("web-1", "online", Duration::from_secs(10))
        .await
        .unwrap();
    a
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_changed_setting_is_deployed_and_the_same_settings_are_already_running() {
    if !docker::available() {
        return;
    }
    let app = unique_app("tr");
    let _cleanup = AppCleanup(app.clone());
    let image = format!("{app}:v1");
    docker::build_busybox_site(&image, &[("health", "ok")]).unwrap();
    let upstreams = tempfile::tempdir().unwrap();
    let c = TestCoordinator::start().await.unwrap();
    let _agent = agent(&c, &upstreams.path().display().to_string(), "true").await;
    let upstream = upstreams.path().join(format!("{app}-production-web.conf"));

    let job = deploy(&c, &spec(&app, "1.0.0", &image, "hi")).await;
    assert_eq!(job.status, "succeeded", "{job:#?}");
    let first = result(&job)["services"][0]["container"]
        .as_str()
        .unwrap()
        .to_string();
    let env = inspect(&first, "{{json .Config.Env}}");
    assert!(env.contains("GREETING=hi"), "{env}");
    let hash = inspect(&first, "{{index .Config.Labels \"ferry.hash\"}}");
    assert_eq!(hash.len(), 64, "{hash}");
    assert!(
        docker::without_hash(&first).len() + 13 == first.len(),
        "{first} ends with its 12-digit digest"
    );

    // The same version with a changed variable: a real deploy, beside the
    // old container, through the health gate and the switch.
    let job = deploy(&c, &spec(&app, "1.0.0", &image, "hello")).await;
    assert_eq!(job.status, "succeeded", "{job:#?}");
    let r = result(&job);
    assert_eq!(r["services"][0]["changed"], true, "{r}");
    let second = r["services"][0]["container"].as_str().unwrap().to_string();
    assert_ne!(second, first);
    let env = inspect(&second, "{{json .Config.Env}}");
    assert!(env.contains("GREETING=hello"), "{env}");
    assert_eq!(inspect(&second, "{{.State.Status}}"), "running");
    let port = upstream_port(&upstream);
    assert_eq!(
        r["services"][0]["host_port"], port,
        "nginx points at the new one"
    );
    // The old settings of the running release are no rollback target.
    assert_eq!(
        containers(&app),
        [format!("{app}-production-web-1.0.0 running")]
    );

    // Identical: already running, no new container, nothing switched.
    let id = inspect(&second, "{{.Id}}");
    let job = deploy(&c, &spec(&app, "1.0.0", &image, "hello")).await;
    assert_eq!(job.status, "succeeded", "{job:#?}");
    let r = result(&job);
    assert_eq!(r["services"][0]["changed"], false, "{r}");
    assert_eq!(r["services"][0]["container"], second.as_str());
    assert_eq!(inspect(&second, "{{.Id}}"), id);
    assert_eq!(upstream_port(&upstream), port);
    assert_eq!(
        containers(&app),
        [format!("{app}-production-web-1.0.0 running")]
    );

    // `force` (ferry redeploy): a new container of the same name beside
    // the one that serves (moved aside), switched to, the old one gone.
    let mut forced = spec(&app, "1.0.0", &image, "hello");
    forced["force"] = json!(true);
    let job = deploy(&c, &forced).await;
    assert_eq!(job.status, "succeeded", "{job:#?}");
    let r = result(&job);
    assert_eq!(r["services"][0]["changed"], true, "{r}");
    assert_eq!(r["services"][0]["container"], second.as_str());
    assert_ne!(inspect(&second, "{{.Id}}"), id, "a new container");
    assert_ne!(upstream_port(&upstream), port, "switched to it");
    assert_eq!(
        docker::containers_full_on(None, &format!("ferry.app={app}")),
        [format!("{second} running")]
    );
}

/// Deploys `bad` (whose /health never answers 2xx) over `good`, cancels
/// the job once its health gate runs, and checks what is left.
async fn cancel_during_the_health_gate(c: &TestCoordinator, app: &str, strategy: &str) {
    let (good, bad) = (format!("{app}:v1"), format!("{app}:bad"));
    let with = |release: &str, image: &str| {
        let mut s = spec(app, release, image, "hi");
        s["services"][0]["strategy"] = json!(strategy);
        // Time enough (5 s) to cancel the gate; the same spec again must
        // go through the gate, so it fails as soon as that.
        s["services"][0]["health"]["retries"] = json!(25);
        s
    };
    let job = deploy(c, &with("v1", &good)).await;
    assert_eq!(job.status, "succeeded", "{job:#?}");
    let serving = result(&job)["services"][0]["container"]
        .as_str()
        .unwrap()
        .to_string();

    let job = c
        .submit("deploy", &with("v2", &bad).to_string(), &["web-1"], 0)
        .await
        .unwrap();
    c.wait_for_event(&job.id, Duration::from_secs(60), |e| {
        matches!(
            e.body.as_ref().and_then(|b| b.body.as_ref()),
            Some(pb::event_body::Body::Log(l)) if l.step == "health web"
        )
    })
    .await
    .unwrap();
    assert!(
        containers(app)
            .iter()
            .any(|c| c.starts_with(&format!("{app}-production-web-v2 "))),
        "the new container runs during its gate: {:?}",
        containers(app)
    );
    c.operator()
        .await
        .unwrap()
        .cancel_job(pb::CancelJobRequest {
            job_id: job.id.clone(),
        })
        .await
        .unwrap();
    c.watch_to_end(&job.id, Duration::from_secs(60))
        .await
        .unwrap();
    let job = c.job(&job.id).await.unwrap();
    assert_eq!(job.status, "cancelled", "{job:#?}");
    let task = &job.tasks[0];
    assert_eq!(task.state, "cancelled", "{task:#?}");
    assert_eq!(
        task.message, "cancelled; web back on release v1",
        "{strategy}: the task says what the host is in"
    );
    assert_eq!(
        containers(app),
        [format!("{app}-production-web-v1 running")],
        "{strategy}: no container of the cancelled release is left"
    );
    assert_eq!(inspect(&serving, "{{.State.Status}}"), "running");

    // The next deploy of v2 is not "already running": it is gated (and
    // fails, the image has no /health).
    let job = deploy(c, &with("v2", &bad)).await;
    assert_eq!(job.status, "failed", "{job:#?}");
    assert!(
        job.tasks[0].message.contains("new container not healthy"),
        "{}",
        job.tasks[0].message
    );
    assert_eq!(
        containers(app),
        [format!("{app}-production-web-v1 running")]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancel_during_the_health_gate_cleans_up_like_a_failure() {
    if !docker::available() {
        return;
    }
    let (bg, rc) = (unique_app("cb"), unique_app("cr"));
    let _cleanup = (AppCleanup(bg.clone()), AppCleanup(rc.clone()));
    for app in [&bg, &rc] {
        docker::build_busybox_site(&format!("{app}:v1"), &[("health", "ok")]).unwrap();
        docker::build_busybox_site(&format!("{app}:bad"), &[("index.html", "no health")]).unwrap();
    }
    let upstreams = tempfile::tempdir().unwrap();
    let c = TestCoordinator::start().await.unwrap();
    let _agent = agent(&c, &upstreams.path().display().to_string(), "true").await;
    cancel_during_the_health_gate(&c, &bg, "blue-green").await;
    cancel_during_the_health_gate(&c, &rc, "recreate").await;
}

/// A cancel while the second service is gated switches the first one,
/// already on the new release, back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancel_switches_back_the_services_already_switched() {
    if !docker::available() {
        return;
    }
    let app = unique_app("cs");
    let _cleanup = AppCleanup(app.clone());
    for (tag, health) in [("v1", "ok v1"), ("v2", "ok v2")] {
        docker::build_busybox_site(&format!("{app}:{tag}"), &[("health", health)]).unwrap();
    }
    docker::build_busybox_site(&format!("{app}:bad"), &[("index.html", "no health")]).unwrap();
    let upstreams = tempfile::tempdir().unwrap();
    let c = TestCoordinator::start().await.unwrap();
    let _agent = agent(&c, &upstreams.path().display().to_string(), "true").await;
    let two = |release: &str, web: &str, api: &str| {
        let mut s = spec(&app, release, &format!("{app}:{web}"), "hi");
        let mut second = s["services"][0].clone();
        second["name"] = json!("api");
        second["image"] = json!(format!("{app}:{api}"));
        s["services"].as_array_mut().unwrap().push(second);
        s
    };
    let job = deploy(&c, &two("v1", "v1", "v1")).await;
    assert_eq!(job.status, "succeeded", "{job:#?}");
    let web_file = upstreams.path().join(format!("{app}-production-web.conf"));
    let web_v1 = upstream_port(&web_file);

    let job = c
        .submit("deploy", &two("v2", "v2", "bad").to_string(), &["web-1"], 0)
        .await
        .unwrap();
    c.wait_for_event(&job.id, Duration::from_secs(60), |e| {
        matches!(
            e.body.as_ref().and_then(|b| b.body.as_ref()),
            Some(pb::event_body::Body::Log(l)) if l.step == "health api"
        )
    })
    .await
    .unwrap();
    assert_ne!(upstream_port(&web_file), web_v1, "web was switched to v2");
    c.operator()
        .await
        .unwrap()
        .cancel_job(pb::CancelJobRequest {
            job_id: job.id.clone(),
        })
        .await
        .unwrap();
    c.watch_to_end(&job.id, Duration::from_secs(60))
        .await
        .unwrap();
    let job = c.job(&job.id).await.unwrap();
    assert_eq!(job.tasks[0].state, "cancelled", "{job:#?}");
    assert_eq!(
        job.tasks[0].message,
        "cancelled; web back on release v1, api back on release v1"
    );
    assert_eq!(upstream_port(&web_file), web_v1, "web switched back");
    assert_eq!(
        containers(&app),
        [
            format!("{app}-production-api-v1 running"),
            format!("{app}-production-web-v1 running"),
        ]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_running_container_of_the_wanted_release_is_taken_over_and_orphans_are_stopped() {
    if !docker::available() {
        return;
    }
    let app = unique_app("to");
    let _cleanup = AppCleanup(app.clone());
    for v in ["v1", "v2", "v3", "v4"] {
        docker::build_busybox_site(&format!("{app}:{v}"), &[("health", v)]).unwrap();
    }
    let upstreams = tempfile::tempdir().unwrap();
    let upstream = upstreams.path().join(format!("{app}-production-web.conf"));
    let c = TestCoordinator::start().await.unwrap();
    let _agent = agent(&c, &upstreams.path().display().to_string(), "true").await;
    let release = |v: &str| {
        let mut s = spec(&app, v, &format!("{app}:{v}"), "hi");
        s["keep_releases"] = json!(2);
        s
    };
    let name_of = |job: &pb::Job| {
        result(job)["services"][0]["container"]
            .as_str()
            .unwrap()
            .to_string()
    };

    let v1 = name_of(&deploy(&c, &release("v1")).await);
    let v1_id = inspect(&v1, "{{.Id}}");
    assert_eq!(deploy(&c, &release("v2")).await.status, "succeeded");

    // v1 runs again (an agent killed mid-revert, an operator's `docker
    // start`) while nginx points at v2: a deploy of v1 takes it over.
    assert!(
        Command::new("docker")
            .args(["start", &v1])
            .stdout(Stdio::null())
            .status()
            .unwrap()
            .success()
    );
    let job = deploy(&c, &release("v1")).await;
    assert_eq!(job.status, "succeeded", "{job:#?}");
    assert_eq!(name_of(&job), v1);
    assert_eq!(inspect(&v1, "{{.Id}}"), v1_id, "not started twice");
    let events = c
        .watch_to_end(&job.id, Duration::from_secs(10))
        .await
        .unwrap();
    assert!(
        events.iter().any(|e| matches!(
            e.body.as_ref().and_then(|b| b.body.as_ref()),
            Some(pb::event_body::Body::StepFinished(s))
                if s.step == "start web" && s.message.contains("already running")
        )),
        "the step says it took the running container over"
    );
    let port: u16 = inspect(
        &v1,
        "{{(index (index .NetworkSettings.Ports \"8080/tcp\") 0).HostPort}}",
    )
    .parse()
    .unwrap();
    assert_eq!(upstream_port(&upstream), port, "switched to v1");
    assert_eq!(
        containers(&app),
        [
            format!("{app}-production-web-v1 running"),
            format!("{app}-production-web-v2 exited"),
        ]
    );

    // A stray v2 (started by hand) is an orphan: stopped after v3.
    let v2 = docker::full_name(&format!("{app}-production-web-v2"));
    assert!(
        Command::new("docker")
            .args(["start", &v2])
            .stdout(Stdio::null())
            .status()
            .unwrap()
            .success()
    );
    assert_eq!(deploy(&c, &release("v3")).await.status, "succeeded");
    assert_eq!(
        containers(&app),
        [
            format!("{app}-production-web-v1 exited"),
            format!("{app}-production-web-v2 exited"),
            format!("{app}-production-web-v3 running"),
        ]
    );
    // keep_releases = 2: v4 running, v3 and v2 kept, v1 removed.
    assert_eq!(deploy(&c, &release("v4")).await.status, "succeeded");
    assert_eq!(
        containers(&app),
        [
            format!("{app}-production-web-v2 exited"),
            format!("{app}-production-web-v3 exited"),
            format!("{app}-production-web-v4 running"),
        ]
    );
}

// ---------------------------------------------------------------------------
// Through the real nginx.

/// The private nginx of `scripts/ensure-nginx.sh`, and this test's site in it.
struct Site {
    prefix: PathBuf,
    app: String,
    listen: u16,
    /// A directory of upstream files no site includes but this one, when
    /// it is pointed there.
    elsewhere: tempfile::TempDir,
}

impl Site {
    fn new(app: &str) -> Site {
        let prefix = std::env::var("FERRY_TEST_NGINX_PREFIX")
            .ok()
            .filter(|p| !p.is_empty())
            .unwrap_or_else(|| {
                panic!(
                    "FERRY_TEST_NGINX_PREFIX is not set: this test needs the nginx of \
                     scripts/ensure-nginx.sh; run `eval \"$(bash scripts/ensure-nginx.sh)\"` first"
                )
            });
        let prefix = PathBuf::from(prefix);
        assert!(
            prefix.join("nginx.pid").exists(),
            "no nginx runs under {}",
            prefix.display()
        );
        // A free port for this test's server block.
        let listen = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        Site {
            prefix,
            app: app.to_string(),
            listen,
            elsewhere: tempfile::tempdir().unwrap(),
        }
    }

    fn nginx(&self, args: &[&str]) -> Vec<String> {
        let p = |rel: &str| self.prefix.join(rel).display().to_string();
        let mut cmd = vec![
            "nginx".to_string(),
            "-p".into(),
            p(""),
            "-c".into(),
            p("nginx.conf"),
            "-e".into(),
            p("logs/error.log"),
        ];
        cmd.extend(args.iter().map(|a| a.to_string()));
        cmd
    }

    fn reload(&self) {
        let cmd = self.nginx(&["-s", "reload"]);
        let out = Command::new(&cmd[0]).args(&cmd[1..]).output().unwrap();
        assert!(
            out.status.success(),
            "{}: {}",
            cmd.join(" "),
            String::from_utf8_lossy(&out.stderr)
        );
    }

    fn upstreams(&self) -> PathBuf {
        self.prefix.join("upstreams")
    }

    fn upstream_file(&self) -> PathBuf {
        self.upstreams()
            .join(format!("{}-production-web.conf", self.app))
    }

    fn site_file(&self) -> PathBuf {
        self.prefix
            .join("sites")
            .join(format!("{}-production-web.conf", self.app))
    }

    /// The documented site: an upstream whose body is `include`, and
    /// a server that says which backend answered.
    fn write(&self, include: &std::path::Path) {
        let app = &self.app;
        std::fs::write(
            self.site_file(),
            format!(
                "# Written by integration-tests/tests/deploy_trust.rs; removed when it ends.\n\
                 upstream ferry_{app}_production_web {{\n    include {};\n}}\n\
                 server {{\n    listen 127.0.0.1:{};\n    add_header X-Ferry-Upstream $upstream_addr always;\n    \
                 location / {{\n        proxy_pass http://ferry_{app}_production_web;\n    }}\n}}\n",
                include.display(),
                self.listen
            ),
        )
        .unwrap();
        self.reload();
        // `nginx -s reload` returns once the master is signalled; the new
        // server block listens once the master has read the configuration.
        let until = std::time::Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", self.listen)).is_err() {
            if std::time::Instant::now() > until {
                let t = self.nginx(&["-T"]);
                let out = Command::new(&t[0]).args(&t[1..]).output().unwrap();
                panic!(
                    "nginx never listened on 127.0.0.1:{} after the reload: {}\n{}",
                    self.listen,
                    String::from_utf8_lossy(&out.stderr),
                    String::from_utf8_lossy(&out.stdout)
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.listen)
    }
}

impl Drop for Site {
    fn drop(&mut self) {
        for f in [self.site_file(), self.upstream_file()] {
            let _ = std::fs::remove_file(f);
        }
        let cmd = self.nginx(&["-s", "reload"]);
        let _ = Command::new(&cmd[0]).args(&cmd[1..]).output();
    }
}

/// `GET path` through the site: (status, body).
fn get(port: u16, path: &str) -> Result<(u16, String), String> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).map_err(|e| e.to_string())?;
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    write!(s, "GET {path} HTTP/1.0\r\n\r\n").map_err(|e| e.to_string())?;
    let mut out = String::new();
    s.read_to_string(&mut out).map_err(|e| e.to_string())?;
    let status = out
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| format!("not HTTP: {out:?}"))?;
    let body = out
        .split("\r\n\r\n")
        .nth(1)
        .unwrap_or("")
        .trim()
        .to_string();
    Ok((status, body))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_switch_is_confirmed_through_nginx_and_an_unincluded_upstream_fails_it() {
    let app = unique_app("sw");
    let site = Site::new(&app);
    if !docker::available() {
        return;
    }
    let _cleanup = AppCleanup(app.clone());
    for v in ["v1", "v2", "v3"] {
        docker::build_busybox_site(&format!("{app}:{v}"), &[("health", v)]).unwrap();
    }
    let c = TestCoordinator::start().await.unwrap();
    let _agent = agent(
        &c,
        &site.upstreams().display().to_string(),
        &site.nginx(&["-s", "reload"]).join(" "),
    )
    .await;
    let release = |v: &str| {
        let mut s = spec(&app, v, &format!("{app}:{v}"), "hi");
        s["services"][0]["nginx_url"] = json!(site.url());
        s
    };
    let switch_message = |events: &[pb::JobEvent]| {
        events
            .iter()
            .find_map(|e| match e.body.as_ref().and_then(|b| b.body.as_ref()) {
                Some(pb::event_body::Body::StepFinished(s)) if s.step == "switch web" => {
                    Some(s.message.clone())
                }
                _ => None,
            })
            .unwrap_or_default()
    };

    // The first deploy comes before its site (nginx cannot include a file
    // that does not exist yet): the switch is reported unconfirmed.
    let job = deploy(&c, &release("v1")).await;
    assert_eq!(job.status, "succeeded", "{job:#?}");
    let events = c
        .watch_to_end(&job.id, Duration::from_secs(5))
        .await
        .unwrap();
    let message = switch_message(&events);
    assert!(
        message.contains("not confirmed: nginx does not include"),
        "{message}"
    );
    site.write(&site.upstream_file());
    assert_eq!(get(site.listen, "/health").unwrap(), (200, "v1".into()));

    // v2: confirmed by nginx's configuration and a request through it.
    let job = deploy(&c, &release("v2")).await;
    assert_eq!(job.status, "succeeded", "{job:#?}");
    let port = upstream_port(&site.upstream_file());
    let events = c
        .watch_to_end(&job.id, Duration::from_secs(5))
        .await
        .unwrap();
    let message = switch_message(&events);
    assert!(
        message.contains(&format!(
            "nginx includes {}",
            site.upstream_file().display()
        )) && message.contains(&format!("answered by 127.0.0.1:{port} through nginx")),
        "{message}"
    );
    assert_eq!(get(site.listen, "/health").unwrap(), (200, "v2".into()));

    // The site now includes a file elsewhere (pointing at v2): the agent's
    // upstream file is in no nginx configuration, and v3's switch fails.
    let elsewhere = site.elsewhere.path().join("web.conf");
    std::fs::copy(site.upstream_file(), &elsewhere).unwrap();
    site.write(&elsewhere);
    let before = std::fs::read_to_string(site.upstream_file()).unwrap();

    let stop = Arc::new(AtomicBool::new(false));
    let listen = site.listen;
    let load = {
        let stop = Arc::clone(&stop);
        std::thread::spawn(move || {
            let (mut ok, mut bad) = (0usize, Vec::new());
            while !stop.load(Ordering::Relaxed) {
                match get(listen, "/health") {
                    Ok((200, body)) if body == "v2" => ok += 1,
                    other => bad.push(format!("{other:?}")),
                }
                std::thread::sleep(Duration::from_millis(5));
            }
            (ok, bad)
        })
    };
    let started = Instant::now();
    let job = deploy(&c, &release("v3")).await;
    stop.store(true, Ordering::Relaxed);
    let (ok, bad) = load.join().unwrap();
    assert_eq!(job.status, "failed", "{job:#?}");
    let message = &job.tasks[0].message;
    assert!(
        message.contains(&format!(
            "nginx does not include {}: add `include {}/*.conf;`",
            site.upstream_file().display(),
            site.upstreams().display()
        )),
        "{message}"
    );
    assert!(
        bad.is_empty(),
        "{} of {} requests through nginx during the failed switch did not get v2: {:?}",
        bad.len(),
        ok + bad.len(),
        &bad[..bad.len().min(10)]
    );
    assert!(ok > 10, "only {ok} requests in {:?}", started.elapsed());
    assert_eq!(
        std::fs::read_to_string(site.upstream_file()).unwrap(),
        before,
        "the upstream file is restored"
    );
    assert_eq!(
        containers(&app),
        [
            format!("{app}-production-web-v1 exited"),
            format!("{app}-production-web-v2 running"),
        ],
        "v2 keeps serving, v3 is removed"
    );
}
