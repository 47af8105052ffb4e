//! Docker helpers for tests: images built locally `FROM scratch` (nothing
//! can be pulled here), and cleanup of what a test created.

use std::path::Path;
use std::process::Command;

use anyhow::{Context, Result, bail};

/// `docker`, against the engine at `socket` (None: the default engine).
fn docker_on(socket: Option<&str>) -> Command {
    let mut cmd = Command::new("docker");
    if let Some(socket) = socket {
        cmd.arg("-H").arg(format!("unix://{socket}"));
    }
    cmd
}

/// The second engine's socket (`scripts/ensure-docker2.sh`), standing in
/// for a second host. In CI a missing one is a failure, not a skip.
pub fn second_engine() -> Option<String> {
    let socket = std::env::var("FERRY_TEST_DOCKER2_SOCKET").ok();
    let ok = socket.as_deref().is_some_and(|s| {
        docker_on(Some(s))
            .args(["version", "--format", "{{.Server.Version}}"])
            .output()
            .map(|o| o.status.success())
            .unwrap_or(false)
    });
    if !ok && std::env::var_os("CI").is_some() {
        panic!(
            "no second Docker engine (FERRY_TEST_DOCKER2_SOCKET); multi-host tests must run in CI: eval \"$(bash scripts/ensure-docker2.sh)\""
        );
    }
    if !ok {
        eprintln!(
            "skipped: no second Docker engine; run: eval \"$(bash scripts/ensure-docker2.sh)\""
        );
    }
    socket.filter(|_| ok)
}

/// Whether the Docker engine answers. In CI (`CI` set) a missing engine is
/// a failure, not a skip.
pub fn available() -> bool {
    let ok = Command::new("docker")
        .args(["version", "--format", "{{.Server.Version}}"])
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false);
    if !ok && std::env::var_os("CI").is_some() {
        panic!("the Docker engine is not reachable, and Docker tests must run in CI");
    }
    if !ok {
        eprintln!("skipped: the Docker engine is not reachable");
    }
    ok
}

/// Builds `tag` from scratch: busybox's httpd serving `files` (path, body)
/// on port 8080.
pub fn build_busybox_site(tag: &str, files: &[(&str, &str)]) -> Result<()> {
    build_busybox_site_on(None, tag, files)
}

/// [`build_busybox_site`] on the engine at `socket`.
pub fn build_busybox_site_on(
    socket: Option<&str>,
    tag: &str,
    files: &[(&str, &str)],
) -> Result<()> {
    build_image_on(
        socket,
        tag,
        files,
        // A shell as PID 1 that exits on SIGTERM: httpd as PID 1 would
        // ignore it, and every `docker stop` would wait its full timeout.
        &[
            "/bin/busybox",
            "sh",
            "-c",
            "trap 'exit 0' TERM; /bin/busybox httpd -f -v -p 8080 -h /www & wait",
        ],
    )
}

/// Like [`build_busybox_site`] with another entrypoint (busybox applets
/// such as `sh` are reached through `/bin/busybox`).
pub fn build_busybox_image(tag: &str, files: &[(&str, &str)], entrypoint: &[&str]) -> Result<()> {
    build_image_on(None, tag, files, entrypoint)
}

fn build_image_on(
    socket: Option<&str>,
    tag: &str,
    files: &[(&str, &str)],
    entrypoint: &[&str],
) -> Result<()> {
    let dir = tempfile::tempdir()?;
    let busybox = Path::new("/bin/busybox");
    if !busybox.exists() {
        bail!("/bin/busybox not found; install Debian's busybox-static (scripts/test.sh does)");
    }
    std::fs::copy(busybox, dir.path().join("busybox"))?;
    let www = dir.path().join("www");
    std::fs::create_dir_all(&www)?;
    for (path, body) in files {
        let p = www.join(path.trim_start_matches('/'));
        if let Some(parent) = p.parent() {
            std::fs::create_dir_all(parent)?;
        }
        std::fs::write(p, body)?;
    }
    let entry = serde_json::to_string(entrypoint)?;
    std::fs::write(
        dir.path().join("Dockerfile"),
        format!(
            "FROM scratch\nCOPY busybox /bin/busybox\nCOPY www /www\nEXPOSE 8080\nENTRYPOINT {entry}\n"
        ),
    )?;
    let out = docker_on(socket)
        .args(["build", "-q", "-t", tag])
        .arg(dir.path())
        .output()
        .context("run docker build")?;
    if !out.status.success() {
        bail!(
            "docker build {tag}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(())
}

/// `NAME STATE` of the containers with this label filter (`key=value`),
/// any state, each name without the agent's settings-hash suffix
/// (`shop-production-web-v1`, not `shop-production-web-v1-0123456789ab`):
/// tests compare releases. [`full_name`] finds the real name.
pub fn containers(label: &str) -> Vec<String> {
    containers_on(None, label)
}

/// [`containers`] on the engine at `socket`.
pub fn containers_on(socket: Option<&str>, label: &str) -> Vec<String> {
    containers_full_on(socket, label)
        .into_iter()
        .map(|line| match line.split_once(' ') {
            Some((name, state)) => format!("{} {state}", without_hash(name)),
            None => line,
        })
        .collect()
}

/// `NAME STATE` with the real names, hash suffix and all.
pub fn containers_full_on(socket: Option<&str>, label: &str) -> Vec<String> {
    let out = docker_on(socket)
        .args([
            "ps",
            "-a",
            "--filter",
            &format!("label={label}"),
            "--format",
            "{{.Names}} {{.State}}",
        ])
        .output();
    out.map(|o| {
        String::from_utf8_lossy(&o.stdout)
            .lines()
            .map(str::to_string)
            .collect()
    })
    .unwrap_or_default()
}

/// `name` without a trailing `-<12 hex digits>` (the settings hash).
pub fn without_hash(name: &str) -> &str {
    let n = ferry_common::job::naming::NAME_HASH_LEN;
    match name.rsplit_once('-') {
        Some((prefix, hash)) if hash.len() == n && hash.chars().all(|c| c.is_ascii_hexdigit()) => {
            prefix
        }
        _ => name,
    }
}

/// The real name of the one container named `prefix-<hash>` (a name as
/// [`containers`] shows it), for `docker inspect`; panics if there is not
/// exactly one.
pub fn full_name(prefix: &str) -> String {
    let out = docker_on(None)
        .args([
            "ps",
            "-a",
            "--filter",
            &format!("name=^/?{prefix}-[0-9a-f]{{12}}$"),
            "--format",
            "{{.Names}}",
        ])
        .output()
        .expect("run docker ps");
    let names: Vec<String> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::to_string)
        .collect();
    assert_eq!(
        names.len(),
        1,
        "containers named {prefix}-<hash>: {names:?}"
    );
    names.into_iter().next().unwrap_or_default()
}

/// Removes containers, networks and volumes of an app (label `ferry.app`).
pub fn cleanup_app(app: &str) {
    cleanup_app_on(None, app)
}

/// [`cleanup_app`] on the engine at `socket`.
pub fn cleanup_app_on(socket: Option<&str>, app: &str) {
    let ids = docker_on(socket)
        .args(["ps", "-aq", "--filter", &format!("label=ferry.app={app}")])
        .output()
        .map(|o| {
            String::from_utf8_lossy(&o.stdout)
                .split_whitespace()
                .map(str::to_string)
                .collect::<Vec<_>>()
        })
        .unwrap_or_default();
    if !ids.is_empty() {
        let _ = docker_on(socket).arg("rm").arg("-f").args(&ids).output();
    }
    for kind in ["network", "volume"] {
        let names = docker_on(socket)
            .args([
                kind,
                "ls",
                "-q",
                "--filter",
                &format!("label=ferry.app={app}"),
            ])
            .output()
            .map(|o| {
                String::from_utf8_lossy(&o.stdout)
                    .split_whitespace()
                    .map(str::to_string)
                    .collect::<Vec<_>>()
            })
            .unwrap_or_default();
        if !names.is_empty() {
            let _ = docker_on(socket).arg(kind).arg("rm").args(&names).output();
        }
    }
}

/// Removes an app's objects when dropped, however the test ends.
pub struct AppCleanup(pub String);

impl Drop for AppCleanup {
    fn drop(&mut self) {
        cleanup_app(&self.0);
    }
}

/// The database server images of `scripts/ensure-db-images.sh`
/// (`FERRY_TEST_POSTGRES_IMAGE`, `FERRY_TEST_MARIADB_IMAGE`), present in
/// the engine. In CI missing ones are a failure, not a skip.
pub fn db_images() -> Option<(String, String)> {
    let image = |var: &str| {
        std::env::var(var).ok().filter(|i| {
            !i.is_empty()
                && Command::new("docker")
                    .args(["image", "inspect", i])
                    .output()
                    .map(|o| o.status.success())
                    .unwrap_or(false)
        })
    };
    match (
        image("FERRY_TEST_POSTGRES_IMAGE"),
        image("FERRY_TEST_MARIADB_IMAGE"),
    ) {
        (Some(pg), Some(maria)) => Some((pg, maria)),
        _ if std::env::var_os("CI").is_some() => panic!(
            "no database server images; tests of databases in containers must run in CI: eval \"$(bash scripts/ensure-db-images.sh)\""
        ),
        _ => {
            eprintln!(
                "skipped: no database server images; run: eval \"$(bash scripts/ensure-db-images.sh)\""
            );
            None
        }
    }
}
