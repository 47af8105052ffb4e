//! The example app's image, built and run as a deploy would: through
//! `deploy/example/build-image.sh` and the docker CLI. Later deploy tests
//! rely on what this checks: the image builds with nothing pulled, answers
//! its health and version endpoints, fails on purpose when asked to, stops
//! promptly on SIGTERM as PID 1, and runs its migrations in a one-off
//! container.
//!
//! Needs a reachable Docker engine: without one the tests say so and pass,
//! except in CI (`CI` set), where they fail. The first build compiles the
//! example in release mode, which takes minutes on a cold cache (hence the
//! longer nextest timeout in .config/nextest.toml).

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// Whether Docker answers; outside CI, a missing engine skips the test.
fn docker_available(test: &str) -> bool {
    let ok = Command::new("docker")
        .args(["version", "--format", "{{.Server.Version}}"])
        .stdin(Stdio::null())
        .output()
        .is_ok_and(|o| o.status.success());
    if !ok {
        if std::env::var_os("CI").is_some() {
            panic!("{test}: docker is not reachable, and the example image tests must run in CI");
        }
        eprintln!("skipped {test}: docker is not reachable");
    }
    ok
}

fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("integration-tests sits in the repository root")
        .to_path_buf()
}

/// A tag no other run (or concurrent test) uses.
fn unique_tag(what: &str) -> String {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    format!("it-{what}-{}-{nanos}", std::process::id())
}

fn docker(args: &[&str]) -> Output {
    Command::new("docker")
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("run docker")
}

/// Runs docker, insists on success, returns trimmed stdout.
fn docker_ok(args: &[&str]) -> String {
    let out = docker(args);
    assert!(
        out.status.success(),
        "docker {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

/// Everything a test made in Docker, removed when it ends, pass or fail.
#[derive(Default)]
struct Cleanup {
    containers: Vec<String>,
    images: Vec<String>,
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        for c in &self.containers {
            let _ = docker(&["rm", "-f", c]);
        }
        for i in &self.images {
            let _ = docker(&["rmi", "-f", i]);
        }
    }
}

impl Cleanup {
    /// `deploy/example/build-image.sh tag` with `env` added; returns the
    /// image name after checking the script printed its id.
    fn build(&mut self, tag: &str, env: &[(&str, &str)]) -> String {
        let image = format!("ferry-example:{tag}");
        self.images.push(image.clone());
        let mut cmd = Command::new("bash");
        cmd.arg(repo_root().join("deploy/example/build-image.sh"))
            .arg(tag)
            // From elsewhere than the repository, as the script promises.
            .current_dir(std::env::temp_dir())
            .env_remove("FAIL_HEALTH")
            .env_remove("HEALTHCHECK_CMD")
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stderr(Stdio::inherit());
        let started = Instant::now();
        let out = cmd.output().expect("run build-image.sh");
        assert!(
            out.status.success(),
            "build-image.sh {tag} failed (its log is above)"
        );
        eprintln!("built {image} in {:.1?}", started.elapsed());
        let id = String::from_utf8_lossy(&out.stdout).trim().to_owned();
        assert!(
            id.starts_with("sha256:"),
            "build-image.sh printed {id:?}, not an image id"
        );
        assert_eq!(
            docker_ok(&["image", "inspect", "--format", "{{.Id}}", &image]),
            id
        );
        image
    }

    /// `docker run -d args...`; remembers the container.
    fn run(&mut self, args: &[&str]) -> String {
        let mut all = vec!["run", "-d"];
        all.extend_from_slice(args);
        let id = docker_ok(&all);
        self.containers.push(id.clone());
        id
    }
}

/// The host address Docker published the container's port 8080 on.
fn published(container: &str) -> SocketAddr {
    let out = docker_ok(&["port", container, "8080/tcp"]);
    out.lines()
        .find_map(|l| l.trim().parse().ok())
        .unwrap_or_else(|| panic!("no IPv4 address published: {out:?}"))
}

/// A raw HTTP/1.0 GET (the server closes after answering): status and body.
fn get(addr: SocketAddr, path: &str) -> std::io::Result<(u16, String)> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(2))?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    write!(s, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n")?;
    let mut answer = String::new();
    s.read_to_string(&mut answer)?;
    let (head, body) = answer.split_once("\r\n\r\n").unwrap_or((&answer, ""));
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| std::io::Error::other(format!("not an HTTP answer: {answer:?}")))?;
    Ok((status, body.to_owned()))
}

/// GETs `path` once the server answers at all (it may still be starting:
/// Docker publishes the port before the process listens).
fn get_when_up(addr: SocketAddr, path: &str) -> (u16, String) {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        match get(addr, path) {
            Ok(answer) => return answer,
            Err(e) if Instant::now() > deadline => panic!("{addr}{path}: {e}"),
            Err(_) => std::thread::sleep(Duration::from_millis(100)),
        }
    }
}

#[test]
fn example_image_serves_health_and_version_fails_on_purpose_and_stops_on_sigterm() {
    if !docker_available("example_image") {
        return;
    }
    let mut made = Cleanup::default();
    let tag = unique_tag("good");
    let image = made.build(&tag, &[("HEALTHCHECK_CMD", "1")]);
    let fail_tag = unique_tag("failing");
    let fail_image = made.build(&fail_tag, &[("FAIL_HEALTH", "1")]);

    // A healthy release.
    let good = made.run(&["-p", "127.0.0.1::8080", &image]);
    let addr = published(&good);
    assert_eq!(get_when_up(addr, "/health"), (200, "ok".into()));
    assert_eq!(get_when_up(addr, "/version"), (200, tag.clone()));
    assert_eq!(
        get_when_up(addr, "/health/db"),
        (503, "DATABASE_URL not set".into())
    );
    // The HEALTHCHECK baked in by HEALTHCHECK_CMD=1, as Docker runs it.
    let out = docker(&["exec", &good, "/ferry-example", "healthcheck"]);
    assert!(out.status.success(), "{out:?}");
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let health = docker_ok(&["inspect", "--format", "{{.State.Health.Status}}", &good]);
        if health == "healthy" {
            break;
        }
        assert!(
            health == "starting" && Instant::now() < deadline,
            "docker says the container is {health:?}"
        );
        std::thread::sleep(Duration::from_millis(250));
    }

    // A release whose health fails on purpose, at run time too.
    let failing = made.run(&["-p", "127.0.0.1::8080", &fail_image]);
    let fail_addr = published(&failing);
    assert_eq!(
        get_when_up(fail_addr, "/health"),
        (503, "failing on purpose".into())
    );
    assert_eq!(get_when_up(fail_addr, "/version"), (200, fail_tag.clone()));
    let out = docker(&["exec", &failing, "/ferry-example", "healthcheck"]);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    // The run-time APP_VERSION wins over the image's.
    let renamed = made.run(&[
        "-p",
        "127.0.0.1::8080",
        "-e",
        "APP_VERSION=v-override",
        &image,
    ]);
    assert_eq!(
        get_when_up(published(&renamed), "/version"),
        (200, "v-override".into())
    );

    // PID 1 must act on SIGTERM: `docker stop` would otherwise wait out its
    // 10s grace period and SIGKILL (exit code 137).
    let started = Instant::now();
    docker_ok(&["stop", &good]);
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "docker stop took {:?}",
        started.elapsed()
    );
    assert_eq!(
        docker_ok(&["inspect", "--format", "{{.State.ExitCode}}", &good]),
        "0"
    );
    let logs = docker_ok(&["logs", &good]);
    assert!(
        logs.contains("GET /health 200"),
        "one line per request: {logs}"
    );
    assert!(logs.contains("received SIGTERM"), "{logs}");
}

#[test]
fn example_image_migrates_in_a_one_off_container_and_reaches_its_database() {
    if !docker_available("example_image_database") {
        return;
    }
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let Some(url) = rt.block_on(ferry_integration_tests::postgres::fresh_database()) else {
        return;
    };
    let mut made = Cleanup::default();
    let tag = unique_tag("db");
    let image = made.build(&tag, &[]);

    // The test server listens on loopback only, so the containers share the
    // host's network rather than publish a port.
    let migrate = |how: &[&str]| {
        let mut args = vec!["run", "--rm", "--network", "host"];
        args.extend_from_slice(how);
        docker_ok(&args)
    };
    let first = migrate(&[&image, "migrate", "--database-url", &url]);
    assert!(first.contains("applied 0001_create_visits"), "{first}");
    assert!(first.contains("applied 0002_visits_user_agent"), "{first}");
    assert!(first.ends_with("2 applied, 0 already applied"), "{first}");
    let again = migrate(&["-e", &format!("DATABASE_URL={url}"), &image, "migrate"]);
    assert_eq!(again, "0 applied, 2 already applied");

    let port = ferry_integration_tests::stable_port().to_string();
    made.run(&[
        "--network",
        "host",
        "-e",
        &format!("PORT={port}"),
        "-e",
        &format!("DATABASE_URL={url}"),
        &image,
    ]);
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    assert_eq!(get_when_up(addr, "/health/db"), (200, "ok".into()));

    // A wrong password is a 503 that says why, not a hang.
    let port = ferry_integration_tests::stable_port().to_string();
    let wrong = url.replacen("ferry:ferry@", "ferry:wrong@", 1);
    assert_ne!(
        wrong, url,
        "the test URL carries the ferry:ferry credentials"
    );
    made.run(&[
        "--network",
        "host",
        "-e",
        &format!("PORT={port}"),
        "-e",
        &format!("DATABASE_URL={wrong}"),
        &image,
    ]);
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let (status, body) = get_when_up(addr, "/health/db");
    assert_eq!(status, 503, "{body}");
    assert!(body.contains("password authentication failed"), "{body}");
}

/// Push with credentials and pull back, against the registry of
/// scripts/ensure-registry.sh; skipped unless FERRY_TEST_REGISTRY is set.
#[test]
fn example_image_round_trips_through_a_registry_with_credentials() {
    let (Ok(registry), Ok(user), Ok(password)) = (
        std::env::var("FERRY_TEST_REGISTRY"),
        std::env::var("FERRY_TEST_REGISTRY_USER"),
        std::env::var("FERRY_TEST_REGISTRY_PASSWORD"),
    ) else {
        eprintln!(
            "skipped: set FERRY_TEST_REGISTRY* (eval \"$(scripts/ensure-registry.sh)\") to test push and pull"
        );
        return;
    };
    if !docker_available("example_image_registry") {
        return;
    }
    let mut made = Cleanup::default();
    let tag = unique_tag("push");
    let image = made.build(&tag, &[]);
    let remote = format!("{registry}/ferry-example:{tag}");
    made.images.push(remote.clone());

    // A private docker config: the login must not touch the user's.
    let config = tempfile::tempdir().unwrap();
    let docker_cfg = |args: &[&str], stdin: Option<&str>| {
        let mut child = Command::new("docker")
            .arg("--config")
            .arg(config.path())
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("run docker");
        let mut input = child.stdin.take().unwrap();
        input.write_all(stdin.unwrap_or("").as_bytes()).unwrap();
        drop(input);
        child.wait_with_output().unwrap()
    };
    let ok = |out: Output, what: &str| {
        assert!(
            out.status.success(),
            "{what}: {}",
            String::from_utf8_lossy(&out.stderr)
        )
    };

    let id = docker_ok(&["image", "inspect", "--format", "{{.Id}}", &image]);
    docker_ok(&["tag", &image, &remote]);
    let anonymous = docker_cfg(&["push", &remote], None);
    assert!(
        !anonymous.status.success(),
        "the registry accepted a push without credentials"
    );
    ok(
        docker_cfg(
            &["login", &registry, "-u", &user, "--password-stdin"],
            Some(&password),
        ),
        "login",
    );
    ok(docker_cfg(&["push", &remote], None), "push");
    docker_ok(&["rmi", &remote]);
    ok(docker_cfg(&["pull", &remote], None), "pull");
    assert_eq!(
        docker_ok(&["image", "inspect", "--format", "{{.Id}}", &remote]),
        id
    );
    ok(docker_cfg(&["logout", &registry], None), "logout");
}
