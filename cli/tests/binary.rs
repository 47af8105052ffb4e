//! The `ferry` binary itself: a closed stdout ends quietly, and the shell
//! completion scripts come out on stdout.

use std::path::Path;
use std::process::{Command, Output, Stdio};

fn ferry() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_ferry"));
    cmd.stdin(Stdio::null())
        // Neither needs credentials; make sure none are found by accident.
        .env("FERRY_CREDENTIALS", "/nonexistent/ferry.credentials");
    cmd
}

fn example() -> String {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../deploy/example/ferry.toml")
        .display()
        .to_string()
}

/// Runs `cmd` with stdout a pipe whose reading end is closed before the
/// process starts, so its first write fails with a broken pipe.
async fn with_closed_stdout(mut cmd: Command) -> Output {
    let (writer, reader) = tokio::net::unix::pipe::pipe().unwrap();
    drop(reader);
    let fd = writer.into_blocking_fd().unwrap();
    cmd.stdout(Stdio::from(fd))
        .stderr(Stdio::piped())
        .output()
        .unwrap()
}

#[tokio::test]
async fn a_closed_stdout_ends_quietly_with_exit_0() {
    let runs: [&[&str]; 3] = [
        &["validate", "-f", &example(), "--output", "json"],
        &["validate", "-f", &example()],
        &["completions", "bash"],
    ];
    for args in runs {
        let mut cmd = ferry();
        cmd.args(args);
        let out = with_closed_stdout(cmd).await;
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(0), "{args:?}: {stderr}");
        assert!(
            !stderr.contains("panicked") && !stderr.contains("Broken pipe"),
            "{args:?}: {stderr}"
        );
        assert_eq!(stderr, "", "{args:?}");
    }
}

#[test]
fn completions_print_a_script_for_each_shell() {
    for shell in ["bash", "zsh", "fish"] {
        let out = ferry().args(["completions", shell]).output().unwrap();
        assert_eq!(out.status.code(), Some(0), "{shell}");
        let script = String::from_utf8_lossy(&out.stdout);
        for word in ["deploy", "secret", "agents", "validate"] {
            assert!(script.contains(word), "{shell} script lacks {word}");
        }
    }
    let bad = ferry().args(["completions", "tcsh"]).output().unwrap();
    assert_eq!(bad.status.code(), Some(2));
}

/// A join token lifetime the coordinator would refuse is refused before
/// anything is sent: `0s` and `500ms` once became a 1-hour token.
#[test]
fn a_token_lifetime_out_of_range_is_refused_before_connecting() {
    for ttl in ["0s", "500ms", "59s", "31d"] {
        let out = ferry()
            .args(["token", "create", "--ttl", ttl])
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{ttl}: {stderr}");
        assert!(
            stderr.contains("--ttl:") && stderr.contains("a join token lives from 1m to 30d"),
            "{ttl}: {stderr}"
        );
    }
}
