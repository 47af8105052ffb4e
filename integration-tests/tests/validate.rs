//! `ferry validate` as a real process: no credentials, no coordinator; a
//! good file says ok and exits 0, a bad one lists every problem with its
//! line and exits 2, in text and in JSON.

use std::path::Path;
use std::process::{Command, Output, Stdio};

use ferry_integration_tests::bin;
use serde_json::Value;

fn validate(dir: &Path, args: &[&str]) -> Output {
    Command::new(bin::path("ferry"))
        .arg("validate")
        .args(args)
        .current_dir(dir)
        // Whatever the developer's environment holds, validate needs none of it.
        .env("FERRY_CREDENTIALS", dir.join("no-such.credentials"))
        .stdin(Stdio::null())
        .output()
        .expect("spawn ferry")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

const GOOD: &str = r#"app = "tecket"

[environments.staging]
labels = { env = "staging" }

[environments.production]
labels = { env = "production" }

[services.web]
image = "registry.example.com/tecket:{version}"
ports = [3000]
[services.web.healthcheck]
http = "/health"
"#;

const BAD: &str = r#"app = "tecket"

[environments.staging]
lables = { env = "staging" }
"#;

const BAD_SEMANTICS: &str = r#"app = "Tecket"

[environments.staging]
labels = { env = "staging" }

[services.web]
image = "tecket:{tag}"
strategy = "blue-green"
[services.web.healthcheck]
http = "/health"
interval = "soon"
"#;

#[test]
fn a_good_file_is_ok_with_a_summary() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("ferry.toml"), GOOD).unwrap();

    // -f defaults to ./ferry.toml.
    let out = validate(dir.path(), &[]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert_eq!(
        text(&out.stdout),
        "ferry.toml: ok (app tecket, 2 environments, 1 service)\n"
    );

    let out = validate(dir.path(), &["-f", "ferry.toml", "--output", "json"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["file"], "ferry.toml");
    assert_eq!(v["ok"], true);
    assert_eq!(v["errors"], serde_json::json!([]));
    assert_eq!(v["app"], "tecket");
    assert_eq!(
        v["environments"],
        serde_json::json!(["production", "staging"])
    );
    assert_eq!(v["services"], serde_json::json!(["web"]));
}

#[test]
fn the_repository_example_is_ok() {
    let example = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/example/ferry.toml");
    let dir = tempfile::tempdir().unwrap();
    let out = validate(dir.path(), &["--file", example.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert!(
        text(&out.stdout).ends_with(": ok (app ferry-example, 2 environments, 1 service)\n"),
        "{}",
        text(&out.stdout)
    );
}

#[test]
fn a_bad_file_lists_every_problem_and_exits_2() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("bad.toml"), BAD).unwrap();
    std::fs::write(dir.path().join("worse.toml"), BAD_SEMANTICS).unwrap();

    let out = validate(dir.path(), &["-f", "bad.toml"]);
    assert_eq!(out.status.code(), Some(2));
    assert_eq!(text(&out.stdout), "");
    assert_eq!(
        text(&out.stderr),
        "bad.toml:4: environments.staging: unknown field `lables`, expected one of `agents`, `labels`, `protected`, `max_parallel`, `variables`, `smoke`\n"
    );

    let out = validate(dir.path(), &["-f", "worse.toml"]);
    assert_eq!(out.status.code(), Some(2));
    let stderr = text(&out.stderr);
    let lines: Vec<&str> = stderr.lines().collect();
    assert_eq!(lines.len(), 5, "{stderr}");
    assert!(
        lines[0].starts_with("worse.toml:1: app: \"Tecket\" must start with a lowercase letter"),
        "{stderr}"
    );
    assert!(
        lines[1].starts_with("worse.toml:7: services.web.image: unknown placeholder \"{tag}\""),
        "{stderr}"
    );
    assert!(
        lines[2].starts_with("worse.toml:8: services.web.strategy: blue-green needs a port"),
        "{stderr}"
    );
    assert!(lines[3].starts_with("worse.toml:10: services.web.healthcheck.http: an http check GETs the first container port"), "{stderr}");
    assert!(
        lines[4].starts_with(
            "worse.toml:11: services.web.healthcheck.interval: \"soon\" is not a duration"
        ),
        "{stderr}"
    );

    let out = validate(dir.path(), &["-f", "worse.toml", "--output", "json"]);
    assert_eq!(out.status.code(), Some(2));
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["ok"], false);
    assert_eq!(v["file"], "worse.toml");
    let errors = v["errors"].as_array().unwrap();
    assert_eq!(errors.len(), 5);
    assert_eq!(errors[4]["line"], 11);
    assert_eq!(errors[4]["path"], "services.web.healthcheck.interval");
    assert!(
        errors[4]["message"]
            .as_str()
            .unwrap()
            .contains("is not a duration")
    );
}

#[test]
fn a_missing_file_exits_2() {
    let dir = tempfile::tempdir().unwrap();
    let out = validate(dir.path(), &["-f", "nope.toml"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        text(&out.stderr).starts_with("nope.toml: cannot read: "),
        "{}",
        text(&out.stderr)
    );

    let out = validate(dir.path(), &["-f", "nope.toml", "--output", "json"]);
    assert_eq!(out.status.code(), Some(2));
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["ok"], false);
    assert_eq!(v["errors"][0]["line"], Value::Null);
}
