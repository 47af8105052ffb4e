//! The real binaries, end to end, as an operator would use them: init,
//! serve, token, enroll, run, agents, operators, refusals and exit codes.

use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use ferry_integration_tests::bin;
use serde_json::Value;

struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn run(cmd: &mut Command) -> Output {
    cmd.stdin(Stdio::null()).output().expect("spawn")
}

fn ferry(creds: &Path, args: &[&str]) -> Output {
    run(Command::new(bin::path("ferry"))
        .arg("--credentials")
        .arg(creds)
        .args(args))
}

fn json(out: &Output) -> Value {
    assert!(
        out.status.success(),
        "stdout: {}\nstderr: {}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("JSON on stdout")
}

/// A pipe whose reading end is already closed: the first write to it fails
/// with a broken pipe.
fn closed_pipe() -> std::os::fd::OwnedFd {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .build()
        .unwrap();
    let _entered = rt.enter();
    let (writer, reader) = tokio::net::unix::pipe::pipe().unwrap();
    drop(reader);
    writer.into_blocking_fd().unwrap()
}

fn wait_until(what: &str, within: Duration, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + within;
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn operator_workflow_with_the_real_binaries() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("coord");
    let (port, admin_port) = (
        ferry_integration_tests::stable_port(),
        ferry_integration_tests::stable_port(),
    );
    let listen = format!("127.0.0.1:{port}");
    let admin_listen = format!("127.0.0.1:{admin_port}");

    let init = run(Command::new(bin::path("ferry-coordinator"))
        .args(["init", "--data-dir"])
        .arg(&data)
        .args([
            "--trust-domain",
            "ferry.test",
            "--listen",
            &listen,
            "--admin-listen",
            &admin_listen,
        ]));
    assert!(
        init.status.success(),
        "{}",
        String::from_utf8_lossy(&init.stderr)
    );
    let again = run(Command::new(bin::path("ferry-coordinator"))
        .args(["init", "--data-dir"])
        .arg(&data));
    assert_eq!(again.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&again.stderr).contains("refusing to overwrite"));

    let _coordinator = Killed(
        Command::new(bin::path("ferry-coordinator"))
            .args(["serve", "--data-dir"])
            .arg(&data)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let admin = data.join("admin.credentials");
    wait_until("the coordinator", Duration::from_secs(15), || {
        ferry(&admin, &["status"]).status.success()
    });
    let status = json(&ferry(&admin, &["status", "--output", "json"]));
    assert_eq!(status["caller_role"], "admin");
    assert_eq!(status["store"], "sqlite");

    // Token → enroll → run.
    let token = json(&ferry(
        &admin,
        &[
            "token",
            "create",
            "--name",
            "web-1",
            "--labels",
            "env=staging",
            "--output",
            "json",
        ],
    ));
    assert!(token["ca_pin"].as_str().unwrap().starts_with("sha256:"));
    assert!(
        token["command"]
            .as_str()
            .unwrap()
            .contains("ferry-agent enroll")
    );
    let state = tmp.path().join("agent");
    let enroll_with = |nginx: &[&str]| {
        run(Command::new(bin::path("ferry-agent"))
            .args([
                "enroll",
                "--coordinator",
                token["coordinator"].as_str().unwrap(),
                "--token",
                token["token"].as_str().unwrap(),
                "--ca-pin",
                token["ca_pin"].as_str().unwrap(),
                "--state-dir",
                state.to_str().unwrap(),
            ])
            .args(nginx))
    };
    // A relative upstream directory is refused before the token is used.
    let refused = enroll_with(&["--nginx-upstream-dir", "upstreams"]);
    assert_eq!(refused.status.code(), Some(ferry_common::exit::USAGE));
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(
        stderr.contains("--nginx-upstream-dir") && stderr.contains("not an absolute path"),
        "{stderr}"
    );
    let enroll = enroll_with(&[
        "--nginx-upstream-dir",
        "/srv/nginx/ferry-upstreams",
        "--nginx-reload",
        "nginx -p /srv/nginx -s reload",
    ]);
    assert!(
        enroll.status.success(),
        "{}",
        String::from_utf8_lossy(&enroll.stderr)
    );
    let config = ferry_agent::config::AgentConfig::load(&state).unwrap();
    assert_eq!(
        config.nginx.upstream_dir,
        Path::new("/srv/nginx/ferry-upstreams")
    );
    assert_eq!(
        config.nginx.reload_command,
        ["nginx", "-p", "/srv/nginx", "-s", "reload"]
    );
    assert_eq!(
        config.nginx.test_command().unwrap(),
        ["nginx", "-p", "/srv/nginx", "-T"]
    );
    let key_mode = std::os::unix::fs::PermissionsExt::mode(
        &std::fs::metadata(state.join("agent.key"))
            .unwrap()
            .permissions(),
    );
    assert_eq!(key_mode & 0o777, 0o600);

    let mut agent = Killed(
        Command::new(bin::path("ferry-agent"))
            .args(["run", "--state-dir"])
            .arg(&state)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    wait_until("the agent online", Duration::from_secs(15), || {
        let out = ferry(&admin, &["agents", "--output", "json"]);
        out.status.success()
            && serde_json::from_slice::<Value>(&out.stdout).unwrap()[0]["state"] == "online"
    });
    let agents = json(&ferry(&admin, &["agents", "--output", "json"]));
    let a = &agents[0];
    assert_eq!(a["name"], "web-1");
    assert_eq!(a["labels"]["env"], "staging");
    for field in ["id", "last_seen", "version"] {
        assert!(a[field].is_string(), "agents JSON lacks {field}: {a}");
    }
    let text = ferry(&admin, &["agents"]);
    assert!(String::from_utf8_lossy(&text.stdout).contains("web-1"));
    // A listing whose reader went away (`ferry agents | head -0`) ends
    // quietly with 0, not with a panic about a broken pipe.
    for args in [&["agents"][..], &["operator", "ls", "--output", "json"]] {
        let out = Command::new(bin::path("ferry"))
            .arg("--credentials")
            .arg(&admin)
            .args(args)
            .stdin(Stdio::null())
            .stdout(closed_pipe())
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(0), "{args:?}");
        assert_eq!(String::from_utf8_lossy(&out.stderr), "", "{args:?}");
    }

    // A viewer reads but cannot create tokens: exit 4 and a reason.
    let viewer = tmp.path().join("vera.credentials");
    let add = ferry(
        &admin,
        &[
            "operator",
            "add",
            "vera",
            "--role",
            "viewer",
            "--out",
            viewer.to_str().unwrap(),
        ],
    );
    assert!(
        add.status.success(),
        "{}",
        String::from_utf8_lossy(&add.stderr)
    );
    assert!(ferry(&viewer, &["agents"]).status.success());
    let denied = ferry(&viewer, &["token", "create"]);
    assert_eq!(denied.status.code(), Some(4));
    assert_eq!(
        String::from_utf8_lossy(&denied.stderr).trim(),
        "error: permission denied: role viewer cannot create join tokens (needs admin)"
    );
    let ops = json(&ferry(&admin, &["operator", "ls", "--output", "json"]));
    assert_eq!(ops.as_array().unwrap().len(), 2);

    // Bad input is a usage error naming the flag.
    let bad = ferry(&admin, &["token", "create", "--ttl", "soon"]);
    assert_eq!(bad.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&bad.stderr).contains("--ttl"));

    // Revoke: the running agent exits with code 4 within a second or two.
    let started = Instant::now();
    let revoke = ferry(&admin, &["agent", "revoke", "web-1"]);
    assert!(
        revoke.status.success(),
        "{}",
        String::from_utf8_lossy(&revoke.stderr)
    );
    let code = loop {
        if let Some(status) = agent.0.try_wait().unwrap() {
            break status.code();
        }
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "agent did not exit after revocation"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    assert_eq!(code, Some(4));
    let mut stderr = String::new();
    std::io::Read::read_to_string(agent.0.stderr.as_mut().unwrap(), &mut stderr).unwrap();
    assert!(stderr.contains("has been revoked"), "{stderr}");
    let agents = json(&ferry(&admin, &["agents", "--output", "json"]));
    assert_eq!(agents[0]["state"], "revoked");

    // Admin port.
    let metrics = http_get(admin_port, "/metrics");
    assert!(metrics.contains("ferry_rpc_requests_total"), "{metrics}");
}

#[test]
fn missing_credentials_and_unreachable_coordinator_are_explained() {
    let tmp = tempfile::tempdir().unwrap();
    let out = run(Command::new(bin::path("ferry"))
        .arg("status")
        .env_remove("FERRY_CREDENTIALS")
        .env("HOME", tmp.path()));
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--credentials FILE"));

    // Credentials pointing at a port nobody listens on.
    let ca = ferry_common::pki::CertificateAuthority::generate("ferry.test").unwrap();
    let creds = ferry_common::credentials::Credentials {
        coordinator: format!(
            "https://127.0.0.1:{}",
            ferry_integration_tests::stable_port()
        ),
        name: "x".into(),
        ca: ca.cert_pem().into(),
        certificate: ca.cert_pem().into(),
        key: ca.key_pem(),
    };
    let path = tmp.path().join("x.credentials");
    creds.save(&path, false).unwrap();
    let out = ferry(&path, &["agents"]);
    assert_eq!(
        out.status.code(),
        Some(5),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stderr).contains("cannot connect to"));
}

fn http_get(port: u16, path: &str) -> String {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    write!(s, "GET {path} HTTP/1.0\r\nHost: x\r\n\r\n").unwrap();
    let mut body = String::new();
    s.read_to_string(&mut body).unwrap();
    body
}
