//! `ferry deploy`, `ferry releases`, `ferry rollback` and `ferry rollout`
//! as operators run them: the real `ferry` binary against a coordinator and
//! an agent (in this process) deploying to the real Docker engine.

use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use ferry_integration_tests::docker::{self, AppCleanup};
use ferry_integration_tests::{TestCoordinator, bin};
use serde_json::Value;
use tokio::process::Command;

fn app_file(app: &str) -> String {
    format!(
        r#"app = "{app}"
[environments.production]
labels = {{ env = "production" }}
[services.web]
image = "{app}:{{version}}"
pull = "never"
ports = [8080]
strategy = "recreate"
[services.web.healthcheck]
http = "/health"
interval = "200ms"
timeout = "1s"
retries = 25
"#
    )
}

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

async fn ferry(creds: &Path, args: &[&str]) -> Out {
    let out = Command::new(bin::path("ferry"))
        .arg("--credentials")
        .arg(creds)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .await
        .unwrap();
    Out {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deploy_releases_and_rollback_from_the_ferry_binary() {
    if !docker::available() {
        return;
    }
    let app = format!("cli{}", &uuid::Uuid::now_v7().simple().to_string()[24..]);
    let _cleanup = AppCleanup(app.clone());
    for v in ["v1", "v2"] {
        docker::build_busybox_site(&format!("{app}:{v}"), &[("health", v)]).unwrap();
    }
    docker::build_busybox_site(&format!("{app}:slow"), &[("index.html", "never healthy")]).unwrap();
    let c = TestCoordinator::start().await.unwrap();
    let _agent = c
        .start_agent("web-1", &[("env", "production")])
        .await
        .unwrap();
    c.wait_for_agent("web-1", "online", Duration::from_secs(10))
        .await
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let creds = dir.path().join("admin.credentials");
    c.admin.save(&creds, false).unwrap();
    let file = dir.path().join("ferry.toml");
    std::fs::write(&file, app_file(&app)).unwrap();
    let f = file.to_str().unwrap();
    let deploy = |version: &'static str, extra: &'static [&'static str]| {
        let creds = creds.clone();
        let f = f.to_string();
        async move {
            let mut args = vec![
                "deploy",
                "-f",
                &f,
                "--env",
                "production",
                "--version",
                version,
            ];
            args.extend_from_slice(extra);
            ferry(&creds, &args).await
        }
    };

    // Production is protected: without --yes, and no terminal to ask on,
    // nothing runs.
    let out = deploy("v1", &[]).await;
    assert_eq!(out.code, 2, "{}", out.stderr);
    assert!(
        out.stderr.contains("production is protected"),
        "{}",
        out.stderr
    );
    assert!(out.stderr.contains("--yes"), "{}", out.stderr);
    assert!(out.stdout.contains("Plan: deploy"), "{}", out.stdout);

    let out = deploy("v1", &["--dry-run", "--output", "json"]).await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    let plan = out.json();
    assert_eq!(plan["status"], "planned");
    assert_eq!(plan["protected"], true);
    assert_eq!(plan["batches"][0][0]["agent"], "web-1");
    assert_eq!(plan["services"][0]["image"], format!("{app}:v1"));
    let out = ferry(&creds, &["releases", "--app", &app, "--output", "json"]).await;
    assert_eq!(out.json(), serde_json::json!([]), "a plan records nothing");

    let out = deploy("v1", &["--yes"]).await;
    assert_eq!(out.code, 0, "{}\n{}", out.stdout, out.stderr);
    assert!(
        out.stdout.contains("==> deploy batch 1/1: web-1"),
        "{}",
        out.stdout
    );
    assert!(out.stdout.contains("succeeded:"), "{}", out.stdout);

    // A slow rollout holds the lock: a second one is refused, or waits.
    let out = deploy("slow", &["--yes", "--detach", "--output", "json"]).await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    let slow_id = out.json()["id"].as_str().unwrap().to_string();
    let out = deploy("v2", &["--yes"]).await;
    assert_eq!(out.code, 1, "{}", out.stderr);
    assert!(out.stderr.contains("is being deployed"), "{}", out.stderr);
    assert!(out.stderr.contains(&slow_id), "{}", out.stderr);
    let out = deploy("v2", &["--yes", "--wait", "--output", "json"]).await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    let r = out.json();
    assert_eq!(r["status"], "succeeded");
    assert_eq!(r["previous_version"], "v1");
    // The slow one failed on its health gate; v1 kept serving meanwhile.
    let out = ferry(&creds, &["rollout", &slow_id, "--output", "json"]).await;
    assert_eq!(out.code, 1, "{}", out.stderr);
    let slow = out.json();
    assert_eq!(slow["status"], "failed");
    assert!(
        slow["message"]
            .as_str()
            .unwrap()
            .contains("no host was changed"),
        "{slow}"
    );

    let out = ferry(
        &creds,
        &[
            "rollback",
            "--app",
            &app,
            "--env",
            "production",
            "--yes",
            "--output",
            "json",
        ],
    )
    .await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    let r = out.json();
    assert_eq!(
        (r["kind"].as_str(), r["version"].as_str()),
        (Some("rollback"), Some("v1"))
    );
    assert_eq!(r["status"], "succeeded");

    let out = ferry(
        &creds,
        &[
            "releases",
            "--app",
            &app,
            "--env",
            "production",
            "--output",
            "json",
        ],
    )
    .await;
    let list = out.json();
    let summary: Vec<(String, String, String)> = list
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            (
                r["version"].as_str().unwrap().to_string(),
                r["kind"].as_str().unwrap().to_string(),
                r["status"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    let s = |v: &str, k: &str, st: &str| (v.to_string(), k.to_string(), st.to_string());
    assert_eq!(
        summary,
        [
            s("v1", "rollback", "succeeded"),
            s("v2", "deploy", "succeeded"),
            s("slow", "deploy", "failed"),
            s("v1", "deploy", "succeeded"),
        ]
    );
    assert!(
        list[0]["created_by"]
            .as_str()
            .unwrap()
            .ends_with("/operator/admin")
    );
    let out = ferry(&creds, &["releases", "--app", &app]).await;
    assert_eq!(out.code, 0);
    assert!(out.stdout.contains("OUTCOME"), "{}", out.stdout);
    assert!(out.stdout.contains("rollback"), "{}", out.stdout);

    // A broken file is refused locally, with its line, before any RPC.
    std::fs::write(
        &file,
        app_file(&app).replace("retries = 25", "retries = \"x\""),
    )
    .unwrap();
    let out = deploy("v3", &["--yes"]).await;
    assert_eq!(out.code, 2, "{}", out.stderr);
    assert!(out.stderr.contains("ferry.toml:"), "{}", out.stderr);
    assert!(out.stderr.contains("retries"), "{}", out.stderr);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redeploy_and_rollout_cancel_from_the_ferry_binary() {
    if !docker::available() {
        return;
    }
    let app = format!("clr{}", &uuid::Uuid::now_v7().simple().to_string()[24..]);
    let _cleanup = AppCleanup(app.clone());
    docker::build_busybox_site(&format!("{app}:v1"), &[("health", "v1")]).unwrap();
    docker::build_busybox_site(&format!("{app}:slow"), &[("index.html", "never healthy")]).unwrap();
    let c = TestCoordinator::start().await.unwrap();
    let _agent = c
        .start_agent("web-1", &[("env", "production")])
        .await
        .unwrap();
    c.wait_for_agent("web-1", "online", Duration::from_secs(10))
        .await
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let creds = dir.path().join("admin.credentials");
    c.admin.save(&creds, false).unwrap();
    let file = dir.path().join("ferry.toml");
    std::fs::write(
        &file,
        app_file(&app).replace("retries = 25", "retries = 100"),
    )
    .unwrap();
    let f = file.to_str().unwrap();
    let deploy = |version: &'static str, extra: &'static [&'static str]| {
        let creds = creds.clone();
        let f = f.to_string();
        async move {
            let mut args = vec![
                "deploy",
                "-f",
                &f,
                "--env",
                "production",
                "--version",
                version,
            ];
            args.extend_from_slice(extra);
            ferry(&creds, &args).await
        }
    };
    let out = deploy("v1", &["--yes", "--output", "json"]).await;
    assert_eq!(out.code, 0, "{}", out.stderr);

    // A redeploy of a protected environment asks first, like a deploy.
    let redeploy = ["redeploy", "--app", &app, "--env", "production", "web"];
    let out = ferry(&creds, &redeploy).await;
    assert_eq!(out.code, 2, "{}", out.stderr);
    assert!(
        out.stderr.contains("production is protected"),
        "{}",
        out.stderr
    );
    assert!(out.stdout.contains("Plan: redeploy"), "{}", out.stdout);
    let mut args = redeploy.to_vec();
    args.extend(["--yes", "--output", "json"]);
    let out = ferry(&creds, &args).await;
    assert_eq!(out.code, 0, "{}\n{}", out.stdout, out.stderr);
    let r = out.json();
    assert_eq!(
        (
            r["kind"].as_str(),
            r["version"].as_str(),
            r["status"].as_str()
        ),
        (Some("redeploy"), Some("v1"), Some("succeeded")),
        "{r}"
    );
    assert_eq!(r["only_services"], serde_json::json!(["web"]));

    // A rollout cancelled from the binary ends cancelled; `ferry rollout`
    // shows it so, and who asked.
    let out = deploy("slow", &["--yes", "--detach", "--output", "json"]).await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    let id = out.json()["id"].as_str().unwrap().to_string();
    tokio::time::sleep(Duration::from_secs(1)).await;
    let out = ferry(&creds, &["rollout", "cancel", &id, "--output", "json"]).await;
    assert_eq!(out.code, 0, "{}\n{}", out.stdout, out.stderr);
    let r = out.json();
    assert_eq!(r["status"], "cancelled", "{r}");
    assert!(
        r["cancel_requested_by"]
            .as_str()
            .unwrap()
            .ends_with("/operator/admin"),
        "{r}"
    );
    let out = ferry(&creds, &["rollout", &id, "--output", "json"]).await;
    assert_eq!(
        out.code, 1,
        "a cancelled rollout did not go out: {}",
        out.stderr
    );
    assert_eq!(out.json()["status"], "cancelled");
    let out = ferry(&creds, &["rollout", "cancel", &id]).await;
    assert_eq!(out.code, 2, "an ended rollout: {}", out.stderr);
    assert!(out.stderr.contains("already ended"), "{}", out.stderr);

    // `ferry job cancel` on a step's job stops the rollout the same way.
    let out = deploy("slow", &["--yes", "--detach", "--output", "json"]).await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    let id = out.json()["id"].as_str().unwrap().to_string();
    let job = loop {
        let out = ferry(&creds, &["releases", "--app", &app, "--output", "json"]).await;
        let list = out.json();
        let step = list
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["id"] == id.as_str())
            .and_then(|r| r["steps"].get(0).cloned());
        if let Some(step) = step {
            break step["job_id"].as_str().unwrap().to_string();
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let out = ferry(&creds, &["job", "cancel", &job, "--output", "json"]).await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    let out = ferry(&creds, &["rollout", &id, "--output", "json"]).await;
    let r = out.json();
    assert_eq!(r["status"], "cancelled", "{r}");
    assert!(
        r["message"]
            .as_str()
            .unwrap()
            .contains(&format!("its job {job} was cancelled")),
        "{r}"
    );
}
