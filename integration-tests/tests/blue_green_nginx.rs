//! Blue-green through a real nginx under continuous HTTP load: zero failed
//! requests across a deploy (v1 → v2) and across a rollback (v2 → v1), with
//! one container and with `replicas = 4` (all four answering, switched at
//! once).
//!
//! Both go through rollouts (`ferry deploy`, then `ferry rollback`): the
//! agent (in-process, with a coordinator) switches the upstream file of
//! a site this test puts into the nginx of `scripts/ensure-nginx.sh` and
//! reloads that nginx, while eight clients send `GET /version` through it
//! in a loop (four over keep-alive connections, four with a new connection
//! per request). Every answer must be a 200 with a version; after each
//! deploy only the new version answers and the old container is stopped.
//!
//! Needs that nginx: run `eval "$(bash scripts/ensure-nginx.sh)"` first
//! (`scripts/test.sh` does). Without `FERRY_TEST_NGINX_PREFIX` the test
//! fails rather than skips. Needs Docker (skipped without it outside CI,
//! like every Docker test) and builds `ferry-example:bg-v1` / `bg-v2` with
//! `deploy/example/build-image.sh`.
//!
//! What counts as a failure: anything but a complete `200` with a version
//! body, including connection errors and timeouts. One thing is retried, as
//! every HTTP client does (RFC 9112 §9.3.1; curl, browsers, hyper): a GET on
//! a *reused* keep-alive connection that the server closed before sending
//! any byte of an answer is sent again on a new connection. nginx closes
//! idle keep-alive connections when a reload retires its old workers, so a
//! client can race that close on any nginx reload, with or without Ferry.
//! Those retries are counted and printed per phase (they come with the two
//! switches, at most one per keep-alive client each; they are not asserted
//! on, because other tests may reload the same shared nginx meanwhile); a
//! retry that fails is a failure.
//!
//! What keeps failures at zero is the agent's `drain` (2 s by default):
//! `nginx -s reload` returns once it has signalled the master, and until the
//! master has started new workers the old ones still send requests to the
//! old container. With `drain = "0s"` this test sees tens of 502s in the
//! ~40 ms after each switch.

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use ferry_integration_tests::TestCoordinator;
use ferry_integration_tests::docker::{self, AppCleanup};
use ferry_proto::v1 as pb;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

const ENV: &str = "production";
const SERVICE: &str = "web";

/// What one test deploys and where nginx serves it.
struct Target {
    /// Names its containers, its site file and its upstream file
    /// (`bgload-production-web.conf`).
    app: &'static str,
    /// The port of this test's server block in the shared nginx (its main
    /// server is on 18080).
    listen: &'static str,
    /// The service's `replicas`.
    replicas: u32,
}

/// One container behind nginx.
const ONE: Target = Target {
    app: "bgload",
    listen: "127.0.0.1:18090",
    replicas: 1,
};
/// Four replicas behind nginx.
const FOUR: Target = Target {
    app: "bgfour",
    listen: "127.0.0.1:18091",
    replicas: 4,
};
/// Load: this many clients, each sending its next request this long after
/// the previous answer.
const CLIENTS: usize = 8;
const PAUSE: Duration = Duration::from_millis(1);
/// Longest a request may take before it counts as failed.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
/// Load before the first deploy and after each one.
const SETTLE: Duration = Duration::from_secs(1);

fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("integration-tests sits in the repository root")
        .to_path_buf()
}

/// The private nginx of `scripts/ensure-nginx.sh`.
struct Nginx {
    prefix: PathBuf,
}

impl Nginx {
    fn from_env() -> Nginx {
        let prefix = std::env::var("FERRY_TEST_NGINX_PREFIX")
            .ok()
            .filter(|p| !p.is_empty())
            .unwrap_or_else(|| {
                panic!(
                    "FERRY_TEST_NGINX_PREFIX is not set: this test needs the nginx of \
                     scripts/ensure-nginx.sh; run `eval \"$(bash scripts/ensure-nginx.sh)\"` \
                     in this shell first (scripts/test.sh does)"
                )
            });
        let nginx = Nginx {
            prefix: PathBuf::from(prefix),
        };
        assert!(
            nginx.prefix.join("nginx.pid").exists(),
            "no nginx runs under {} (no nginx.pid); run `eval \"$(bash scripts/ensure-nginx.sh)\"` first",
            nginx.prefix.display()
        );
        nginx
    }

    fn path(&self, rel: &str) -> String {
        self.prefix.join(rel).display().to_string()
    }

    /// `nginx -p PREFIX -c PREFIX/nginx.conf -e PREFIX/logs/error.log ARGS`:
    /// the command line of the script's header, as a vector.
    fn command(&self, args: &[&str]) -> Vec<String> {
        let mut cmd = vec![
            "nginx".to_string(),
            "-p".into(),
            self.path(""),
            "-c".into(),
            self.path("nginx.conf"),
            "-e".into(),
            self.path("logs/error.log"),
        ];
        cmd.extend(args.iter().map(|a| a.to_string()));
        cmd
    }

    /// `nginx -s reload`. It parses the whole configuration before it
    /// signals the master, so a broken file fails it (exit 1) rather than
    /// being ignored by the master: no separate `-t` is needed.
    fn reload(&self) -> Result<()> {
        let cmd = self.command(&["-s", "reload"]);
        let out = Command::new(&cmd[0])
            .args(&cmd[1..])
            .stdin(Stdio::null())
            .output()
            .context("run nginx")?;
        if !out.status.success() {
            bail!(
                "{} failed: {}",
                cmd.join(" "),
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        Ok(())
    }

    fn site_file(&self, t: &Target) -> PathBuf {
        self.prefix
            .join("sites")
            .join(format!("{}-{ENV}-{SERVICE}.conf", t.app))
    }

    fn upstream_file(&self, t: &Target) -> PathBuf {
        self.prefix
            .join("upstreams")
            .join(ferry_common::job::naming::upstream_file(
                t.app, ENV, SERVICE,
            ))
    }

    /// This test's site: an upstream whose body is the file the agent
    /// rewrites, and a server on the target's `listen` proxying to it,
    /// saying which backend answered (nginx defaults otherwise, as an
    /// operator's site would be).
    fn write_site(&self, t: &Target) -> Result<()> {
        let (app, listen) = (t.app, t.listen);
        let site = format!(
            "# Written by integration-tests/tests/blue_green_nginx.rs; removed when it ends.\n\
             upstream ferry_{app}_{ENV}_{SERVICE} {{\n    include {};\n}}\n\
             server {{\n    listen {listen};\n    location / {{\n        proxy_pass http://ferry_{app}_{ENV}_{SERVICE};\n        add_header X-Ferry-Upstream $upstream_addr always;\n    }}\n}}\n",
            self.upstream_file(t).display()
        );
        std::fs::write(self.site_file(t), site)?;
        Ok(())
    }

    /// Removes the site and upstream files (of this run or an earlier,
    /// failed one) and reloads, so the listen port is free again.
    fn remove_site(&self, t: &Target) -> Result<()> {
        for f in [self.site_file(t), self.upstream_file(t)] {
            match std::fs::remove_file(&f) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(e).with_context(|| format!("remove {}", f.display())),
            }
        }
        self.reload()
    }
}

/// Removes the site, the upstream file and the app's containers however
/// the test ends.
struct Cleanup<'a> {
    nginx: &'a Nginx,
    target: &'a Target,
    _app: AppCleanup,
}

impl Drop for Cleanup<'_> {
    fn drop(&mut self) {
        if let Err(e) = self.nginx.remove_site(self.target) {
            eprintln!("cleanup: {e:#}");
        }
    }
}

/// `deploy/example/build-image.sh TAG` (cached by cargo and Docker: quick
/// when the app did not change).
fn build_image(tag: &str) {
    let started = Instant::now();
    let out = Command::new("bash")
        .arg(repo_root().join("deploy/example/build-image.sh"))
        .arg(tag)
        .current_dir(std::env::temp_dir())
        .env_remove("FAIL_HEALTH")
        .env_remove("HEALTHCHECK_CMD")
        .stdin(Stdio::null())
        .stderr(Stdio::inherit())
        .output()
        .expect("run build-image.sh");
    assert!(
        out.status.success(),
        "build-image.sh {tag} failed (its log is above)"
    );
    eprintln!("built ferry-example:{tag} in {:.1?}", started.elapsed());
}

/// The deploy spec of release `release` (image `ferry-example:bg-RELEASE`).
/// The app file: one blue-green web service of the example image.
fn app_file(t: &Target) -> String {
    format!(
        r#"app = "{}"
[environments.{ENV}]
agents = ["web-1"]
[services.{SERVICE}]
image = "ferry-example:bg-{{version}}"
pull = "never"
ports = [8080]
strategy = "blue-green"
restart = "unless-stopped"
replicas = {}
[services.{SERVICE}.healthcheck]
http = "/health"
interval = "100ms"
timeout = "1s"
retries = 100
"#,
        t.app, t.replicas
    )
}

/// Deploys `release` with a rollout (`ferry deploy`), or rolls back to the
/// release before the current one (`ferry rollback`) when `release` is
/// None; returns the deploy job of the (single-host) rollout.
async fn deploy_release(c: &TestCoordinator, t: &Target, release: Option<&str>) -> pb::Job {
    let started = Instant::now();
    let mut op = c.operator().await.unwrap();
    let rollout = match release {
        Some(version) => op
            .start_rollout(pb::StartRolloutRequest {
                accessories_only: false,
                accessories: Vec::new(),
                app_file: app_file(t),
                file_name: "ferry.toml".into(),
                env: ENV.into(),
                version: version.into(),
                dry_run: false,
            })
            .await
            .unwrap(),
        None => op
            .rollback(pb::RollbackRequest {
                app: t.app.into(),
                env: ENV.into(),
                to_version: String::new(),
                dry_run: false,
            })
            .await
            .unwrap(),
    }
    .into_inner()
    .rollout
    .unwrap();
    let until = Instant::now() + Duration::from_secs(120);
    let rollout = loop {
        let r = op
            .get_rollout(pb::GetRolloutRequest {
                rollout_id: rollout.id.clone(),
            })
            .await
            .unwrap()
            .into_inner()
            .rollout
            .unwrap();
        if r.status != "running" {
            break r;
        }
        assert!(Instant::now() < until, "rollout still running: {r:#?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(
        rollout.status, "succeeded",
        "{} {} failed: {rollout:#?}",
        rollout.kind, rollout.version
    );
    eprintln!(
        "{} {} in {:.1?}",
        rollout.kind,
        rollout.version,
        started.elapsed()
    );
    c.job(&rollout.steps[0].job_id).await.unwrap()
}

/// `name state` of the app's containers, sorted.
fn containers(t: &Target) -> Vec<String> {
    let mut names = docker::containers(&format!("ferry.app={}", t.app));
    names.sort();
    names
}

// ---------------------------------------------------------------------------
// The load: a minimal HTTP/1.1 client, so that every way a request can go
// wrong is seen and classified (no retries hidden in a library).

/// One answer.
struct Answer {
    status: u16,
    body: String,
    /// The server said `Connection: close` (or the answer ended at EOF).
    close: bool,
    /// `X-Ferry-Upstream`: the backend nginx sent the request to.
    upstream: Option<String>,
}

enum Failure {
    /// Nothing at all came back on a reused connection: it was closed (or
    /// reset) before the server read the request. Safe to send again.
    NothingOnReused(String),
    Other(String),
}

struct Conn {
    reader: BufReader<TcpStream>,
}

async fn connect(listen: &str) -> std::io::Result<Conn> {
    let stream = TcpStream::connect(listen).await?;
    stream.set_nodelay(true)?;
    Ok(Conn {
        reader: BufReader::new(stream),
    })
}

/// Sends `GET /version` on `conn` and reads the answer. `reused`: the
/// connection carried an earlier request.
async fn exchange(
    conn: &mut Conn,
    listen: &str,
    keep_alive: bool,
    reused: bool,
) -> Result<Answer, Failure> {
    let request = format!(
        "GET /version HTTP/1.1\r\nHost: {listen}\r\nConnection: {}\r\n\r\n",
        if keep_alive { "keep-alive" } else { "close" }
    );
    let nothing = |what: String| {
        if reused {
            Failure::NothingOnReused(what)
        } else {
            Failure::Other(what)
        }
    };
    if let Err(e) = conn.reader.get_mut().write_all(request.as_bytes()).await {
        return Err(nothing(format!("write: {e}")));
    }
    let mut status_line = String::new();
    match conn.reader.read_line(&mut status_line).await {
        Ok(0) => return Err(nothing("closed before any answer".into())),
        Ok(_) => {}
        Err(e) if status_line.is_empty() => return Err(nothing(format!("read: {e}"))),
        Err(e) => return Err(Failure::Other(format!("read status line: {e}"))),
    }
    let other = |what: String| Failure::Other(format!("{what} (after {status_line:?})"));
    let status: u16 = status_line
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| other("not an HTTP status line".into()))?;
    let (mut length, mut chunked, mut close) = (None, false, false);
    let mut upstream = None;
    loop {
        let mut line = String::new();
        match conn.reader.read_line(&mut line).await {
            Ok(0) => return Err(other("closed inside the headers".into())),
            Ok(_) => {}
            Err(e) => return Err(other(format!("read headers: {e}"))),
        }
        let line = line.trim_end();
        if line.is_empty() {
            break;
        }
        let Some((name, value)) = line.split_once(':') else {
            return Err(other(format!("bad header {line:?}")));
        };
        let value = value.trim();
        match name.to_ascii_lowercase().as_str() {
            "content-length" => length = value.parse::<usize>().ok(),
            "transfer-encoding" => chunked = value.eq_ignore_ascii_case("chunked"),
            "connection" => close = value.eq_ignore_ascii_case("close"),
            "x-ferry-upstream" => upstream = Some(value.to_string()),
            _ => {}
        }
    }
    let mut body = Vec::new();
    if chunked {
        loop {
            let mut size = String::new();
            conn.reader
                .read_line(&mut size)
                .await
                .map_err(|e| other(format!("read chunk size: {e}")))?;
            let size = usize::from_str_radix(size.trim(), 16)
                .map_err(|_| other(format!("bad chunk size {size:?}")))?;
            let mut chunk = vec![0; size + 2];
            conn.reader
                .read_exact(&mut chunk)
                .await
                .map_err(|e| other(format!("read chunk: {e}")))?;
            if size == 0 {
                break;
            }
            body.extend_from_slice(&chunk[..size]);
        }
    } else if let Some(n) = length {
        body.resize(n, 0);
        conn.reader
            .read_exact(&mut body)
            .await
            .map_err(|e| other(format!("read body: {e}")))?;
    } else {
        conn.reader
            .read_to_end(&mut body)
            .await
            .map_err(|e| other(format!("read body to EOF: {e}")))?;
        close = true;
    }
    Ok(Answer {
        status,
        body: String::from_utf8_lossy(&body).trim().to_string(),
        close,
        upstream,
    })
}

/// The phases of the run; each request is counted in the phase it started in.
const PHASES: [&str; 5] = [
    "v1 serving",
    "deploying v2",
    "after v2",
    "rolling back to v1",
    "after the rollback",
];

#[derive(Default)]
struct Tally {
    ok: usize,
    failed: usize,
    /// Sent again after a reused connection closed before any answer,
    /// per phase, and why.
    retried: Vec<Vec<String>>,
    /// Version → answers, per phase.
    versions: Vec<BTreeMap<String, usize>>,
    /// The backends (`X-Ferry-Upstream`) that answered, per phase.
    upstreams: Vec<std::collections::BTreeSet<String>>,
    /// The first failures, with when and where.
    failures: Vec<String>,
}

struct Load {
    phase: AtomicUsize,
    stop: AtomicBool,
    tally: Mutex<Tally>,
    started: Instant,
}

impl Load {
    fn record(&self, phase: usize, outcome: Result<Answer, String>) {
        let mut t = self.tally.lock().unwrap();
        match outcome {
            Ok(a) if a.status == 200 && a.body.starts_with("bg-") => {
                t.ok += 1;
                if let Some(u) = a.upstream {
                    t.upstreams[phase].insert(u);
                }
                *t.versions[phase].entry(a.body).or_default() += 1;
            }
            Ok(a) => {
                t.failed += 1;
                let at = self.started.elapsed();
                if t.failures.len() < 20 {
                    t.failures.push(format!(
                        "{at:.3?} [{}] status {}: {:?}",
                        PHASES[phase], a.status, a.body
                    ));
                }
            }
            Err(why) => {
                t.failed += 1;
                let at = self.started.elapsed();
                if t.failures.len() < 20 {
                    t.failures
                        .push(format!("{at:.3?} [{}] {why}", PHASES[phase]));
                }
            }
        }
    }
}

/// One client: GETs until told to stop, over one keep-alive connection
/// (opened again when the server closes it) or a new connection each time.
async fn client(load: Arc<Load>, listen: &'static str, keep_alive: bool) {
    let mut conn: Option<Conn> = None;
    while !load.stop.load(Ordering::Relaxed) {
        let phase = load.phase.load(Ordering::SeqCst);
        let outcome = tokio::time::timeout(REQUEST_TIMEOUT, async {
            let reused = conn.is_some();
            let mut c = match conn.take() {
                Some(c) => c,
                None => connect(listen).await.map_err(|e| format!("connect: {e}"))?,
            };
            let answer = match exchange(&mut c, listen, keep_alive, reused).await {
                Ok(a) => a,
                Err(Failure::NothingOnReused(why)) => {
                    load.tally.lock().unwrap().retried[phase].push(why.clone());
                    c = connect(listen)
                        .await
                        .map_err(|e| format!("connect (retry after {why}): {e}"))?;
                    match exchange(&mut c, listen, keep_alive, false).await {
                        Ok(a) => a,
                        Err(Failure::NothingOnReused(e) | Failure::Other(e)) => {
                            return Err(format!("retry after {why}: {e}"));
                        }
                    }
                }
                Err(Failure::Other(e)) => return Err(e),
            };
            if keep_alive && !answer.close {
                conn = Some(c);
            }
            Ok(answer)
        })
        .await
        .unwrap_or_else(|_| {
            conn = None;
            Err(format!("no answer within {REQUEST_TIMEOUT:?}"))
        });
        load.record(phase, outcome);
        tokio::time::sleep(PAUSE).await;
    }
}

/// GET /version through nginx until it answers `version` (nginx applies a
/// reload asynchronously).
async fn wait_for_version(listen: &str, version: &str) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let got = match connect(listen).await {
            Ok(mut c) => match exchange(&mut c, listen, false, false).await {
                Ok(a) => format!("{} {}", a.status, a.body),
                Err(Failure::NothingOnReused(e) | Failure::Other(e)) => e,
            },
            Err(e) => e.to_string(),
        };
        if got == format!("200 {version}") {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "nginx on {listen} answers {got:?}, not {version}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn blue_green_through_nginx_loses_no_request_across_a_deploy_and_a_rollback() {
    run(&ONE).await;
}

/// `replicas = 4`: the four new containers all healthy before the upstream
/// file lists them (four `server` lines, one switch), nginx spreads the
/// load over all four, and no request fails across the deploy and the
/// rollback.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn four_replicas_behind_nginx_lose_no_request_across_a_deploy_and_a_rollback() {
    run(&FOUR).await;
}

/// `name state` of every replica of `release`, as [`containers`] shows them.
fn expected(t: &Target, release: &str, state: &str) -> Vec<String> {
    if t.replicas == 1 {
        return vec![format!("{}-{ENV}-{SERVICE}-{release} {state}", t.app)];
    }
    (1..=t.replicas)
        .map(|i| format!("{}-{ENV}-{SERVICE}-r{i}-{release} {state}", t.app))
        .collect()
}

fn sorted(mut v: Vec<String>) -> Vec<String> {
    v.sort();
    v
}

async fn run(t: &'static Target) {
    let nginx = Nginx::from_env();
    if !docker::available() {
        return;
    }
    // Whatever an earlier, failed run left behind.
    docker::cleanup_app(t.app);
    nginx
        .remove_site(t)
        .expect("nginx must reload without this test's site");
    assert!(
        std::net::TcpStream::connect(t.listen).is_err(),
        "something still listens on {}, which this test's nginx site needs",
        t.listen
    );
    let _cleanup = Cleanup {
        nginx: &nginx,
        target: t,
        _app: AppCleanup(t.app.into()),
    };
    build_image("bg-v1");
    build_image("bg-v2");

    let c = TestCoordinator::start().await.unwrap();
    let env = HashMap::from([
        (
            "FERRY_NGINX_UPSTREAM_DIR".to_string(),
            nginx.path("upstreams"),
        ),
        (
            "FERRY_NGINX_RELOAD".to_string(),
            nginx.command(&["-s", "reload"]).join(" "),
        ),
    ]);
    let _agent = c.enroll("web-1", &[]).await.unwrap().start_with_env(env);
    c.wait_for_agent("web-1", "online", Duration::from_secs(10))
        .await
        .unwrap();

    // v1, then the site in front of it.
    deploy_release(&c, t, Some("v1")).await;
    nginx.write_site(t).unwrap();
    nginx.reload().unwrap();
    wait_for_version(t.listen, "bg-v1").await;

    let load = Arc::new(Load {
        phase: AtomicUsize::new(0),
        stop: AtomicBool::new(false),
        tally: Mutex::new(Tally {
            versions: vec![BTreeMap::new(); PHASES.len()],
            retried: vec![Vec::new(); PHASES.len()],
            upstreams: vec![Default::default(); PHASES.len()],
            ..Default::default()
        }),
        started: Instant::now(),
    });
    let clients: Vec<_> = (0..CLIENTS)
        .map(|i| tokio::spawn(client(Arc::clone(&load), t.listen, i % 2 == 0)))
        .collect();
    tokio::time::sleep(SETTLE).await;

    // The deploy, under load.
    load.phase.store(1, Ordering::SeqCst);
    let job = deploy_release(&c, t, Some("v2")).await;
    load.phase.store(2, Ordering::SeqCst);
    let result: serde_json::Value = serde_json::from_str(&job.tasks[0].result_json).unwrap();
    assert_eq!(result["services"][0]["previous_release"], "v1");
    assert_eq!(
        containers(t),
        sorted([expected(t, "v1", "exited"), expected(t, "v2", "running")].concat()),
        "v1 is stopped (kept for a rollback) once the deploy of v2 has succeeded"
    );
    assert_eq!(
        result["services"][0]["host_ports"].as_array().map(Vec::len),
        Some(t.replicas as usize),
        "{result}"
    );
    let upstream = std::fs::read_to_string(nginx.upstream_file(t)).unwrap();
    assert_eq!(
        upstream
            .lines()
            .filter(|l| l.starts_with("server "))
            .count(),
        t.replicas as usize,
        "{upstream}"
    );
    tokio::time::sleep(SETTLE).await;

    // `ferry rollback` (to v1, the release before the current one), under load.
    load.phase.store(3, Ordering::SeqCst);
    let job = deploy_release(&c, t, None).await;
    load.phase.store(4, Ordering::SeqCst);
    let result: serde_json::Value = serde_json::from_str(&job.tasks[0].result_json).unwrap();
    assert_eq!(result["services"][0]["previous_release"], "v2");
    assert_eq!(
        containers(t),
        sorted([expected(t, "v1", "running"), expected(t, "v2", "exited")].concat()),
        "v2 is stopped once the rollback to v1 has succeeded"
    );
    tokio::time::sleep(SETTLE).await;

    load.stop.store(true, Ordering::SeqCst);
    for c in clients {
        c.await.unwrap();
    }
    let elapsed = load.started.elapsed();
    let t_replicas = t.replicas as usize;
    let t = load.tally.lock().unwrap();
    let total = t.ok + t.failed;
    let retried: usize = t.retried.iter().map(Vec::len).sum();
    eprintln!(
        "load: {total} requests in {elapsed:.1?} ({:.0}/s) by {CLIENTS} clients: {} ok, {} failed; \
         {retried} sent again after a reused keep-alive connection closed before any answer",
        total as f64 / elapsed.as_secs_f64(),
        t.ok,
        t.failed,
    );
    for (i, phase) in PHASES.iter().enumerate() {
        eprintln!(
            "  {phase:<20} answers {:?}, sent again {:?}",
            t.versions[i], t.retried[i]
        );
    }
    for f in &t.failures {
        eprintln!("  failed: {f}");
    }
    assert_eq!(t.failed, 0, "failed requests (first ones above)");
    assert!(total >= 2_000, "only {total} requests: not a real load");
    let only = |phase: usize, version: &str| {
        let v = &t.versions[phase];
        assert!(
            v.len() == 1 && v.get(version).is_some_and(|n| *n > 0),
            "{}: expected answers from {version} only, got {v:?}",
            PHASES[phase]
        );
    };
    only(0, "bg-v1");
    only(2, "bg-v2");
    only(4, "bg-v1");
    // Every replica served: as many backends answered after each switch.
    for phase in [0, 2, 4] {
        assert_eq!(
            t.upstreams[phase].len(),
            t_replicas,
            "{}: answered by {:?}",
            PHASES[phase],
            t.upstreams[phase]
        );
    }
    let seen: std::collections::BTreeSet<&String> =
        t.versions.iter().flat_map(|v| v.keys()).collect();
    assert_eq!(seen.len(), 2, "both versions answered: {seen:?}");
}
