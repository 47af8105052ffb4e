//! What the operator sees, through the real `ferry` binary: `ferry logs
//! -f` showing a line a container writes after the command started (its
//! secret redacted), `ferry status --app` and `ferry audit` showing the
//! test's deploys with the operator's name, `ferry releases` marking the
//! current release, ids given by their short form, `--app` taken from
//! ./ferry.toml; every listing command ending quietly when its reader goes
//! away; and help text on every flag of every binary.

use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use ferry_integration_tests::docker::{self, AppCleanup};
use ferry_integration_tests::{TestCoordinator, bin};
use ferry_proto::v1 as pb;
use serde_json::Value;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::process::Command;

struct Out {
    code: i32,
    stdout: String,
    stderr: String,
}

impl Out {
    fn json(&self) -> Value {
        serde_json::from_str(&self.stdout)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}\nstderr: {}", self.stdout, self.stderr))
    }
}

fn ferry_cmd(creds: &Path, args: &[&str]) -> Command {
    let mut cmd = Command::new(bin::path("ferry"));
    cmd.arg("--credentials").arg(creds).args(args);
    cmd
}

async fn ferry_in(dir: Option<&Path>, creds: &Path, args: &[&str], stdin: Option<&str>) -> Out {
    let mut cmd = ferry_cmd(creds, args);
    if let Some(dir) = dir {
        cmd.current_dir(dir);
    }
    cmd.stdin(if stdin.is_some() {
        Stdio::piped()
    } else {
        Stdio::null()
    })
    .stdout(Stdio::piped())
    .stderr(Stdio::piped());
    let mut child = cmd.spawn().unwrap();
    if let Some(input) = stdin {
        let mut pipe = child.stdin.take().unwrap();
        pipe.write_all(input.as_bytes()).await.unwrap();
        drop(pipe);
    }
    let out = child.wait_with_output().await.unwrap();
    Out {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

async fn ferry(creds: &Path, args: &[&str]) -> Out {
    ferry_in(None, creds, args, None).await
}

fn app_file(app: &str) -> String {
    format!(
        r#"app = "{app}"
[environments.staging]
labels = {{ env = "staging" }}
[services.web]
image = "{app}:{{version}}"
pull = "never"
ports = [8080]
strategy = "recreate"
secrets = ["API_TOKEN"]
[services.web.healthcheck]
http = "/health"
interval = "200ms"
timeout = "1s"
retries = 10
"#
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logs_status_audit_and_releases_show_what_runs_and_who_did_it() {
    if !docker::available() {
        return;
    }
    let tag = &uuid::Uuid::now_v7().simple().to_string()[24..];
    let app = format!("ov{tag}");
    let _cleanup = AppCleanup(app.clone());
    docker::build_busybox_site(&format!("{app}:v1"), &[("health", "v1")]).unwrap();
    // Never healthy: its deploy fails and is reverted, so v1 stays current.
    docker::build_busybox_site(&format!("{app}:v2"), &[("index.html", "no health")]).unwrap();
    let c = TestCoordinator::start().await.unwrap();
    let _agent = c.start_agent("web-1", &[("env", "staging")]).await.unwrap();
    c.wait_for_agent("web-1", "online", Duration::from_secs(10))
        .await
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let admin = dir.path().join("admin.credentials");
    c.admin.save(&admin, false).unwrap();
    let operator = format!("ada{tag}");
    let ada = dir.path().join("ada.credentials");
    c.add_operator(&operator, pb::Role::Deployer)
        .await
        .unwrap()
        .save(&ada, false)
        .unwrap();
    let app_dir = dir.path().join("app");
    std::fs::create_dir(&app_dir).unwrap();
    let file = app_dir.join("ferry.toml");
    std::fs::write(&file, app_file(&app)).unwrap();
    let f = file.to_str().unwrap();

    // A secret the services need is not set: refused before anything
    // ran, with the same code as any refusal (an offline host's too).
    let out = ferry(
        &ada,
        &["deploy", "-f", f, "--env", "staging", "--version", "v1"],
    )
    .await;
    assert_eq!(out.code, 2, "{}\n{}", out.stdout, out.stderr);
    assert!(out.stderr.contains("API_TOKEN"), "{}", out.stderr);

    let secret = format!("tok-{tag}-s3cr3t");
    let out = ferry_in(
        None,
        &admin,
        &[
            "secret",
            "set",
            "--app",
            &app,
            "--env",
            "staging",
            "API_TOKEN",
        ],
        Some(&secret),
    )
    .await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert!(
        out.stderr.contains(&format!(
            "warning: no release and no app file knows app \"{app}\""
        )),
        "{}",
        out.stderr
    );
    // From the app's directory, ./ferry.toml knows it (and names the app).
    let out = ferry_in(
        Some(&app_dir),
        &admin,
        &["secret", "set", "--env", "staging", "API_TOKEN"],
        Some(&secret),
    )
    .await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert!(!out.stderr.contains("warning"), "{}", out.stderr);
    let out = ferry_in(
        Some(&app_dir),
        &admin,
        &["secret", "set", "--env", "prod", "OTHER"],
        Some("value-of-other"),
    )
    .await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert!(
        out.stderr.contains("has no environment \"prod\"")
            && out.stderr.contains("(known: staging)"),
        "{}",
        out.stderr
    );
    for (version, code) in [("v1", 0), ("v2", 1)] {
        let out = ferry(
            &ada,
            &["deploy", "-f", f, "--env", "staging", "--version", version],
        )
        .await;
        assert_eq!(out.code, code, "{version}: {}\n{}", out.stdout, out.stderr);
        if version == "v2" {
            // The failed container's log lines (httpd's access log of the
            // health checks) are shown once each, and the closing line is
            // the summary alone.
            let logged: Vec<&str> = out
                .stdout
                .lines()
                .filter(|l| l.contains("response:"))
                .collect();
            assert!(!logged.is_empty(), "{}", out.stdout);
            for line in &logged {
                let text = line.rsplit(" | ").next().unwrap();
                let times = out.stdout.matches(text).count();
                assert_eq!(times, 1, "{text:?} shown {times} times:\n{}", out.stdout);
            }
            let last = out.stdout.trim_end().lines().last().unwrap();
            assert!(
                last.starts_with("reverted: ") || last.starts_with("failed: "),
                "{}",
                out.stdout
            );
        }
    }

    // releases: v1 is current, the newer failed v2 is not; `--app` comes
    // from ./ferry.toml.
    let out = ferry_in(
        Some(&app_dir),
        &ada,
        &["releases", "--output", "json"],
        None,
    )
    .await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    let releases = out.json();
    assert_eq!(releases[0]["version"], "v2");
    assert_ne!(releases[0]["status"], "succeeded");
    assert_eq!(releases[0]["current"], false);
    assert_eq!(releases[1]["version"], "v1");
    assert_eq!(releases[1]["current"], true);
    let v1_id = releases[1]["id"].as_str().unwrap().to_string();
    let out = ferry_in(Some(&app_dir), &ada, &["releases"], None).await;
    let v1_line = out
        .stdout
        .lines()
        .find(|l| l.contains(" v1 "))
        .unwrap_or_else(|| panic!("{}", out.stdout));
    assert!(v1_line.starts_with('*'), "{}", out.stdout);
    assert!(v1_line.contains(&format!("{app}:v1")), "{}", out.stdout);
    let short = &v1_id[v1_id.len() - 8..];
    assert!(v1_line.ends_with(short), "short ids: {}", out.stdout);
    let out = ferry(&ada, &["releases", "--app", &app, "--env", "prod"]).await;
    assert_eq!(out.code, 2, "{}", out.stderr);
    assert!(
        out.stderr.contains("no environment \"prod\"") && out.stderr.contains("staging"),
        "{}",
        out.stderr
    );
    // The short id names the rollout.
    let out = ferry(&ada, &["rollout", short, "--output", "json"]).await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert_eq!(out.json()["id"], v1_id.as_str());

    // status --app: the current release, who deployed it, what runs.
    let out = ferry(&ada, &["status", "--app", &app, "--output", "json"]).await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    let status = out.json();
    let staging = &status["environments"][0];
    assert_eq!(staging["env"], "staging");
    assert_eq!(staging["current"]["version"], "v1");
    assert!(
        staging["current"]["deployed_by"]
            .as_str()
            .unwrap()
            .ends_with(&format!("/operator/{operator}")),
        "{status}"
    );
    assert_eq!(staging["latest"]["version"], "v2");
    let host = &staging["hosts"][0];
    assert_eq!(host["agent"], "web-1");
    let running: Vec<&Value> = host["containers"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|c| c["state"] == "running")
        .collect();
    assert_eq!(running.len(), 1, "{status}");
    assert_eq!(running[0]["release"], "v1");
    assert_eq!(running[0]["service"], "web");
    assert!(running[0]["started_at"].is_string(), "{status}");
    let container = running[0]["name"].as_str().unwrap().to_string();
    let out = ferry(&ada, &["status", "--app", &app]).await;
    assert!(
        out.stdout
            .contains(&format!("{app} staging: release v1 deployed by {operator}")),
        "{}",
        out.stdout
    );

    // audit: both deploys and the secret, with who did them.
    let out = ferry(
        &ada,
        &[
            "audit", "--app", &app, "--env", "staging", "--output", "json",
        ],
    )
    .await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    let entries = out.json();
    let deploys: Vec<&Value> = entries
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["action"] == "rollout.deploy")
        .collect();
    assert_eq!(deploys.len(), 2, "{entries}");
    for d in &deploys {
        assert!(
            d["actor"]
                .as_str()
                .unwrap()
                .ends_with(&format!("/operator/{operator}")),
            "{d}"
        );
        assert_eq!(d["app"], app.as_str());
        assert_eq!(d["env"], "staging");
    }
    assert!(
        entries
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["action"] == "secret.set"),
        "{entries}"
    );
    let out = ferry(&ada, &["audit", "--actor", &operator, "--since", "1h"]).await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert!(
        out.stdout.contains("rollout.deploy") && out.stdout.contains(&operator),
        "{}",
        out.stdout
    );
    assert!(
        !out.stdout.contains("secret.set"),
        "only {operator}'s: {}",
        out.stdout
    );

    // logs without -f: the tail, then the command ends.
    let out = ferry(
        &ada,
        &[
            "logs", "--app", &app, "--env", "staging", "web", "--tail", "5",
        ],
    )
    .await;
    assert_eq!(out.code, 0, "{}\n{}", out.stdout, out.stderr);

    // A service with no container on the host fails, saying so; a host
    // that is not the environment's is refused, naming those that are.
    let out = ferry(&ada, &["logs", "--app", &app, "--env", "staging", "worker"]).await;
    assert_eq!(out.code, 1, "{}\n{}", out.stdout, out.stderr);
    assert!(
        out.stderr.contains("web-1") && out.stderr.contains("no container of"),
        "{}",
        out.stderr
    );
    let out = ferry(
        &ada,
        &[
            "logs", "--app", &app, "--env", "staging", "web", "--host", "db-9",
        ],
    )
    .await;
    assert_eq!(out.code, 2, "{}", out.stderr);
    assert!(
        out.stderr.contains("\"db-9\" is not a host") && out.stderr.contains("web-1"),
        "{}",
        out.stderr
    );

    // logs -f: a line the container writes after the command started.
    let mut follow = ferry_cmd(
        &ada,
        &[
            "logs", "--app", &app, "--env", "staging", "web", "-f", "--tail", "1", "--output",
            "json",
        ],
    )
    .stdin(Stdio::null())
    .stdout(Stdio::piped())
    .stderr(Stdio::piped())
    .kill_on_drop(true)
    .spawn()
    .unwrap();
    let mut lines = BufReader::new(follow.stdout.take().unwrap()).lines();
    // The stream is open once the tail line arrives (the health checks
    // left access log lines).
    let first = tokio::time::timeout(Duration::from_secs(20), lines.next_line())
        .await
        .expect("the tail within 20 s")
        .unwrap()
        .expect("a line");
    let first: Value = serde_json::from_str(&first).unwrap();
    assert_eq!(first["host"], "web-1");
    let marker = format!("marker-{tag}");
    let wrote = std::process::Command::new("docker")
        .args(["exec", &container, "/bin/busybox", "sh", "-c"])
        .arg(format!("echo \"{marker} token=$API_TOKEN\" > /proc/1/fd/1"))
        .status()
        .unwrap();
    assert!(wrote.success());
    let seen = tokio::time::timeout(Duration::from_secs(20), async {
        loop {
            let line = lines.next_line().await.unwrap().expect("the stream ended");
            let v: Value = serde_json::from_str(&line).unwrap();
            if v["line"].as_str().is_some_and(|l| l.contains(&marker)) {
                return v;
            }
        }
    })
    .await
    .expect("the new line within 20 s");
    assert_eq!(seen["container"], container.as_str());
    assert_eq!(seen["stream"], "stdout");
    assert!(seen["time"].is_string(), "{seen}");
    let text = seen["line"].as_str().unwrap();
    assert!(text.contains("[redacted:API_TOKEN]"), "{text}");
    assert!(!text.contains(&secret), "the secret leaked: {text}");

    // The command goes away: the coordinator cancels its job.
    follow.kill().await.unwrap();
    let _ = follow.wait().await;
    let cancelled = tokio::time::timeout(Duration::from_secs(20), async {
        loop {
            let out = ferry(&admin, &["jobs", "--kind", "logs", "--output", "json"]).await;
            let jobs = out.json();
            // Newest first: the -f job, after the one without -f.
            if let Some(j) = jobs.get(0).filter(|j| j["status"] == "cancelled") {
                return j.clone();
            }
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
    })
    .await;
    assert!(cancelled.is_ok(), "the logs job was not cancelled");
}

/// Every listing command, its reader gone before it writes: it ends with
/// 0 and no panic (`ferry releases --app A | head -n1`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn listing_commands_end_quietly_when_their_reader_goes_away() {
    let c = TestCoordinator::start().await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let creds = dir.path().join("admin.credentials");
    c.admin.save(&creds, false).unwrap();
    let listings: &[&[&str]] = &[
        &["releases", "--app", "shop"],
        &["jobs"],
        &["agents"],
        &["operator", "ls"],
        &["audit"],
        &["status"],
        &["secret", "ls", "--app", "shop"],
    ];
    for args in listings {
        for output in ["text", "json"] {
            let mut child = ferry_cmd(&creds, args)
                .args(["--output", output])
                .stdin(Stdio::null())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap();
            // Closed before the command has connected, let alone written.
            drop(child.stdout.take());
            let out = child.wait_with_output().await.unwrap();
            let stderr = String::from_utf8_lossy(&out.stderr);
            assert_eq!(
                out.status.code(),
                Some(0),
                "ferry {} --output {output}: {stderr}",
                args.join(" ")
            );
            assert!(!stderr.contains("panicked"), "{stderr}");
        }
    }
    // A credentials file that is not there says it is the credentials
    // file, and where its path came from.
    let missing = dir.path().join("nope.credentials");
    let out = ferry(&missing, &["agents"]).await;
    assert_eq!(out.code, 2, "{}", out.stderr);
    assert!(
        out.stderr.contains("credentials file")
            && out.stderr.contains("nope.credentials")
            && out.stderr.contains("--credentials"),
        "{}",
        out.stderr
    );
    let out = Command::new(bin::path("ferry"))
        .arg("agents")
        .env("FERRY_CREDENTIALS", &missing)
        .output()
        .await
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("credentials file") && stderr.contains("FERRY_CREDENTIALS"),
        "{stderr}"
    );

    // And as people write it, through a shell.
    let out = tokio::process::Command::new("bash")
        .arg("-c")
        .arg(format!(
            "set -o pipefail; {} --credentials {} audit --limit 1000 | head -n1",
            bin::path("ferry").display(),
            creds.display()
        ))
        .output()
        .await
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    assert!(!String::from_utf8_lossy(&out.stderr).contains("panicked"));
}

/// Every flag and argument of every command of every binary has help text,
/// as `--help` shows it.
#[test]
fn every_flag_of_every_binary_has_help() {
    fn help(binary: &str, path: &[String]) -> String {
        let out = std::process::Command::new(bin::path(binary))
            .arg("help")
            .args(path)
            .output()
            .unwrap();
        assert!(out.status.success(), "{binary} help {path:?}");
        String::from_utf8_lossy(&out.stdout).into_owned()
    }
    fn walk(binary: &str, path: Vec<String>, missing: &mut Vec<String>) {
        let text = help(binary, &path);
        let mut section = "";
        for line in text.lines() {
            if !line.starts_with(' ') && line.ends_with(':') {
                section = line;
                continue;
            }
            let item = line.trim();
            match section {
                "Commands:" => {
                    let name = item.split_whitespace().next().unwrap_or_default();
                    if !name.is_empty() && name != "help" {
                        let mut sub = path.clone();
                        sub.push(name.to_string());
                        walk(binary, sub, missing);
                    }
                }
                // "--flag <VALUE>  help" or "<ARG>  help": the help
                // follows two spaces after the flag's own words.
                "Options:" | "Arguments:" if !item.is_empty() && !item.contains("  ") => {
                    missing.push(format!("{binary} {} {item}", path.join(" ")));
                }
                _ => {}
            }
        }
    }
    let mut missing = Vec::new();
    for binary in ["ferry", "ferry-agent", "ferry-coordinator"] {
        walk(binary, Vec::new(), &mut missing);
    }
    assert!(missing.is_empty(), "flags without help: {missing:#?}");
}

/// `ferry secret set` at a terminal (a pty from `script`): the prompt
/// says the value is not shown, and the terminal does not echo it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn secret_set_at_a_terminal_does_not_echo_the_value() {
    use tokio::io::AsyncReadExt;
    let c = TestCoordinator::start().await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let creds = dir.path().join("admin.credentials");
    c.admin.save(&creds, false).unwrap();
    let value = format!("typed-{}", uuid::Uuid::now_v7().simple());
    let command = format!(
        "{} --credentials {} secret set --app shop --env staging TYPED",
        bin::path("ferry").display(),
        creds.display()
    );
    let mut child = Command::new("script")
        .args(["-qec", &command, "/dev/null"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut stdout = child.stdout.take().unwrap();
    let mut seen = Vec::new();
    // Type only once the prompt shows, as a person would: input arriving
    // earlier would be echoed before the CLI could turn echo off.
    tokio::time::timeout(Duration::from_secs(20), async {
        let mut buf = [0u8; 512];
        while !String::from_utf8_lossy(&seen).contains("not shown): ") {
            let n = stdout.read(&mut buf).await.unwrap();
            assert!(
                n > 0,
                "ended before the prompt: {}",
                String::from_utf8_lossy(&seen)
            );
            seen.extend_from_slice(&buf[..n]);
        }
    })
    .await
    .expect("the prompt within 20 s");
    let mut stdin = child.stdin.take().unwrap();
    stdin
        .write_all(format!("{value}\n").as_bytes())
        .await
        .unwrap();
    stdout.read_to_end(&mut seen).await.unwrap();
    drop(stdin);
    let status = child.wait().await.unwrap();
    let shown = String::from_utf8_lossy(&seen);
    assert!(status.success(), "{shown}");
    assert!(shown.contains("set secret TYPED"), "{shown}");
    assert!(!shown.contains(&value), "the value was echoed: {shown}");
}
