//! The `backup` job kind against the real PostgreSQL of the test suite
//! (`FERRY_TEST_DATABASE_URL`) and the host's real `pg_dump`, `pg_restore`
//! and `zstd`: a round trip of a database with several tables, an index,
//! a sequence, a function with a dollar-quoted body and non-ASCII text,
//! restored by hand as the docs say and compared by queries; exact row
//! counts while rows are written during the dump; and every failure
//! (unreachable server, wrong password, unknown database, pg_dump missing
//! or too old, a full disk, cancellation, an agent killed mid-dump) ending
//! clearly with no file left.

use ferry_integration_tests::postgres::{database_name, psql, schema, with_database};
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use ferry_common::job::BackupManifest;
use ferry_integration_tests::postgres::fresh_database;
use ferry_integration_tests::{TestCoordinator, bin};
use ferry_proto::v1 as pb;
use pb::event_body::Body;
use serde_json::json;
use sqlx::Connection;

const APP: &str = "shop";
const ENV: &str = "staging";

/// Several tables (two schemas), an index, a sequence, a function with a
/// dollar-quoted body, non-ASCII text; `orders` rows are `rows`.
fn populate(url: &str, rows: u32) {
    psql(
        url,
        &format!(
            r#"
CREATE SEQUENCE invoice_no START 1000;
CREATE TABLE customers (id bigserial PRIMARY KEY, name text NOT NULL, city text);
CREATE INDEX customers_name ON customers (name);
CREATE TABLE orders (id bigserial PRIMARY KEY, customer_id bigint REFERENCES customers(id),
                     invoice int DEFAULT nextval('invoice_no'), amount numeric(10,2), note text);
CREATE SCHEMA billing;
CREATE TABLE billing.events (id bigserial PRIMARY KEY, payload jsonb);
CREATE TABLE "Empty Table" (x int);
CREATE FUNCTION greet(who text) RETURNS text LANGUAGE plpgsql AS $body$
BEGIN
  RETURN 'Grüß dich, ' || who || $q$ ! 'quoted' $q$;
END
$body$;
INSERT INTO customers (name, city) SELECT 'Zoë Ångström ' || g, 'Kraków 東京' FROM generate_series(1, 5000) g;
INSERT INTO orders (customer_id, amount, note)
  SELECT (g % 5000) + 1, g * 1.25, repeat('données ', 10) || md5(g::text) FROM generate_series(1, {rows}) g;
INSERT INTO billing.events (payload) SELECT jsonb_build_object('n', g, 'emoji', '🚢') FROM generate_series(1, 2000) g;
"#
        ),
    );
}

/// A digest of a table's rows, order-independent.
fn table_digest(url: &str, table: &str, filter: &str) -> String {
    psql(
        url,
        &format!(
            "SELECT count(*) || ':' || coalesce(md5(string_agg(t::text, '|' ORDER BY t::text)), '') FROM {table} t {filter}"
        ),
    )
}

/// Restores `file` into a new database by hand, as the docs say.
fn restore_by_hand(server_url: &str, file: &str) -> String {
    restore_by_hand_after(server_url, file, "")
}

/// The same, into a database where `prepare` (SQL) ran first.
fn restore_by_hand_after(server_url: &str, file: &str, prepare: &str) -> String {
    let name = format!("restored_{}", uuid::Uuid::now_v7().simple());
    psql(server_url, &format!("CREATE DATABASE {name}"));
    let target = with_database(server_url, &name);
    if !prepare.is_empty() {
        psql(&target, prepare);
    }
    let sh = format!("zstd -dc {file} | pg_restore --no-owner --exit-on-error -d '{target}'");
    let out = Command::new("sh").args(["-c", &sh]).output().unwrap();
    assert!(
        out.status.success(),
        "{sh}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    target
}

fn spec(database: &str, secret: &str) -> String {
    json!({"app": APP, "env": ENV, "database": database, "location": {"url_secret": secret}})
        .to_string()
}

/// Every file under `dir`, relative.
fn files(dir: &Path) -> Vec<String> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in entries.flatten() {
            if e.file_type().unwrap().is_dir() {
                stack.push(e.path());
            } else {
                out.push(e.path().strip_prefix(dir).unwrap().display().to_string());
            }
        }
    }
    out.sort();
    out
}

struct Setup {
    c: TestCoordinator,
    _agents: Vec<ferry_integration_tests::TestAgent>,
}

/// A coordinator and one agent per `(name, env)`.
async fn setup(agents: &[(&str, HashMap<String, String>)]) -> Setup {
    let c = TestCoordinator::start().await.unwrap();
    let mut started = Vec::new();
    for (name, env) in agents {
        let a = c
            .enroll(name, &[])
            .await
            .unwrap()
            .start_with_env(env.clone());
        c.wait_for_agent(name, "online", Duration::from_secs(10))
            .await
            .unwrap();
        started.push(a);
    }
    Setup {
        c,
        _agents: started,
    }
}

async fn set_secret(c: &TestCoordinator, name: &str, value: &str) {
    c.operator()
        .await
        .unwrap()
        .set_secret(pb::SetSecretRequest {
            app: APP.into(),
            env: ENV.into(),
            name: name.into(),
            value: value.into(),
        })
        .await
        .unwrap();
}

async fn run_backup(c: &TestCoordinator, agent: &str, spec_json: &str) -> pb::Job {
    let job = c.submit("backup", spec_json, &[agent], 0).await.unwrap();
    c.watch_to_end(&job.id, Duration::from_secs(120))
        .await
        .unwrap();
    c.job(&job.id).await.unwrap()
}

fn backup_env(dir: &Path) -> HashMap<String, String> {
    HashMap::from([("FERRY_BACKUP_DIR".to_string(), dir.display().to_string())])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_round_trip_keeps_schema_and_rows_and_counts_are_exact_while_rows_are_written() {
    let Some(url) = fresh_database().await else {
        return;
    };
    populate(&url, 150_000);
    let dir = tempfile::tempdir().unwrap();
    let s = setup(&[("db-1", backup_env(dir.path()))]).await;
    set_secret(&s.c, "DATABASE_URL", &url).await;

    // A writer commits rows one by one for as long as the backup runs.
    let writing = tokio_util::sync::CancellationToken::new();
    let writer = {
        let (url, writing) = (url.clone(), writing.clone());
        tokio::spawn(async move {
            let mut conn = sqlx::PgConnection::connect(&url).await.unwrap();
            let mut n = 0u64;
            while !writing.is_cancelled() {
                sqlx::query(
                    "INSERT INTO orders (customer_id, amount, note) VALUES (1, 9.99, 'während')",
                )
                .execute(&mut conn)
                .await
                .unwrap();
                n += 1;
            }
            n
        })
    };
    tokio::time::sleep(Duration::from_millis(200)).await;
    let job = run_backup(&s.c, "db-1", &spec("main", "DATABASE_URL")).await;
    writing.cancel();
    let written = writer.await.unwrap();
    assert_eq!(job.status, "succeeded", "{job:#?}");
    let task = &job.tasks[0];
    let m = BackupManifest::from_json(&task.result_json).unwrap();

    // The manifest beside the file says what the task said.
    let db_dir = dir.path().join(APP).join(ENV).join("main");
    assert_eq!(
        files(dir.path()),
        [
            format!("{APP}/{ENV}/main/{}.dump.zst", m.id),
            format!("{APP}/{ENV}/main/{}.manifest.json", m.id)
        ]
    );
    let on_disk: BackupManifest = serde_json::from_str(
        &std::fs::read_to_string(db_dir.join(format!("{}.manifest.json", m.id))).unwrap(),
    )
    .unwrap();
    assert_eq!(on_disk, m);
    assert_eq!(m.id, task.id);
    assert_eq!(m.job_id, job.id);
    assert_eq!(
        (m.app.as_str(), m.env.as_str(), m.database.as_str()),
        (APP, ENV, "main")
    );
    assert_eq!(
        (m.format.as_str(), m.compression.as_str()),
        ("pg_dump-custom", "zstd")
    );
    assert!(
        m.server_version
            .starts_with(&psql(&url, "SHOW server_version_num")[..2])
    );
    let bytes = std::fs::read(&m.path).unwrap();
    assert_eq!(m.size_bytes, bytes.len() as u64);
    let sha = Command::new("sha256sum").arg(&m.path).output().unwrap();
    assert_eq!(
        String::from_utf8(sha.stdout)
            .unwrap()
            .split_whitespace()
            .next(),
        Some(m.sha256.as_str()),
        "sha256sum agrees with the manifest"
    );
    assert!(m.size_bytes * 2 < m.dump_bytes, "zstd compressed it: {m:?}");

    // Restored by hand: the same schema, the same rows.
    let restored = restore_by_hand(&url, &m.path);
    assert_eq!(schema(&restored), schema(&url));
    for table in ["customers", "billing.events", "\"Empty Table\""] {
        assert_eq!(
            table_digest(&restored, table, ""),
            table_digest(&url, table, ""),
            "{table}"
        );
    }
    assert_eq!(
        psql(&restored, "SELECT greet('Ferry')"),
        "Grüß dich, Ferry ! 'quoted'"
    );
    // A sequence is not transactional: pg_dump saves its value as it was
    // read, never behind the rows it numbered.
    let last: i64 = psql(&restored, "SELECT last_value FROM invoice_no")
        .parse()
        .unwrap();
    let max: i64 = psql(&restored, "SELECT max(invoice) FROM orders")
        .parse()
        .unwrap();
    assert!(last >= max, "{last} >= {max}");

    // The counts are the dump's, exactly, while rows were written during it.
    let mut restored_counts = BTreeMap::new();
    for key in m.row_counts.keys() {
        let (schema, table) = key.split_once('.').unwrap();
        let n: u64 = psql(
            &restored,
            &format!("SELECT count(*) FROM \"{schema}\".\"{table}\""),
        )
        .parse()
        .unwrap();
        restored_counts.insert(key.clone(), n);
    }
    assert_eq!(restored_counts, m.row_counts);
    assert_eq!(
        m.row_counts.keys().collect::<Vec<_>>(),
        [
            "billing.events",
            "public.Empty Table",
            "public.customers",
            "public.orders"
        ]
    );
    let live: u64 = psql(&url, "SELECT count(*) FROM orders").parse().unwrap();
    let before = 150_000;
    assert!(
        m.row_counts["public.orders"] > before && m.row_counts["public.orders"] < live,
        "rows were committed before and after the snapshot: {before} < {} < {live} ({written} written)",
        m.row_counts["public.orders"]
    );
    let max_id = psql(&restored, "SELECT max(id) FROM orders");
    assert_eq!(
        table_digest(&restored, "orders", ""),
        table_digest(&url, "orders", &format!("WHERE id <= {max_id}"))
    );

    // Progress and the tables dumped were reported.
    let events =
        s.c.watch_to_end(&job.id, Duration::from_secs(5))
            .await
            .unwrap();
    let logs: Vec<String> = events
        .iter()
        .filter_map(|e| match e.body.as_ref()?.body.as_ref()? {
            Body::Log(l) => Some(l.line.clone()),
            _ => None,
        })
        .collect();
    assert!(
        logs.iter().any(|l| l == "dumping public.orders"),
        "{logs:?}"
    );
    assert!(
        logs.iter().any(|l| l.starts_with("public.orders: ")),
        "{logs:?}"
    );

    // Only some tables, when asked.
    let only = json!({"app": APP, "env": ENV, "database": "main",
        "location": {"url_secret": "DATABASE_URL"}, "tables": ["customers", "billing.events"]});
    let job = run_backup(&s.c, "db-1", &only.to_string()).await;
    assert_eq!(job.status, "succeeded", "{job:#?}");
    let m = BackupManifest::from_json(&job.tasks[0].result_json).unwrap();
    assert_eq!(
        m.row_counts,
        BTreeMap::from([
            ("billing.events".into(), 2000),
            ("public.customers".into(), 5000)
        ])
    );
    // pg_dump --table dumps the tables, not their schemas.
    let partial = restore_by_hand_after(&url, &m.path, "CREATE SCHEMA billing");
    assert_eq!(
        psql(
            &partial,
            "SELECT count(*) FROM pg_tables WHERE schemaname IN ('public', 'billing')"
        ),
        "2"
    );
    let job = run_backup(
        &s.c,
        "db-1",
        &json!({"app": APP, "env": ENV, "database": "main",
            "location": {"url_secret": "DATABASE_URL"}, "tables": ["nope"]})
        .to_string(),
    )
    .await;
    assert_eq!(job.status, "failed");
    assert!(
        job.tasks[0]
            .message
            .contains("table \"nope\" does not exist"),
        "{}",
        job.tasks[0].message
    );

    for db in [restored, partial] {
        psql(
            &url,
            &format!("DROP DATABASE {} WITH (FORCE)", database_name(&db)),
        );
    }
}

/// A fake `pg_dump` that reports an old version, in its own folder.
fn old_pg_dump(dir: &Path) -> PathBuf {
    let bin = dir.join("old-bin");
    std::fs::create_dir_all(&bin).unwrap();
    let script = bin.join("pg_dump");
    std::fs::write(&script, "#!/bin/sh\necho 'pg_dump (PostgreSQL) 9.6.24'\n").unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
    bin
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_bad_case_fails_clearly_and_leaves_no_file() {
    let Some(url) = fresh_database().await else {
        return;
    };
    populate(&url, 1000);
    let dir = tempfile::tempdir().unwrap();
    let backups = dir.path().join("backups");
    let mut old = backup_env(&backups);
    old.insert(
        "FERRY_PG_BIN_DIR".into(),
        old_pg_dump(dir.path()).display().to_string(),
    );
    let mut missing = backup_env(&backups);
    let empty = dir.path().join("empty-bin");
    std::fs::create_dir_all(&empty).unwrap();
    missing.insert("FERRY_PG_BIN_DIR".into(), empty.display().to_string());
    let s = setup(&[
        ("db-1", backup_env(&backups)),
        ("old-1", old),
        ("bare-1", missing),
    ])
    .await;

    let wrong_password = url.replacen("ferry:ferry@", "ferry:wrong@", 1);
    assert_ne!(wrong_password, url);
    let cases = [
        (
            "UNKNOWN_DB",
            with_database(&url, "no_such_database"),
            "db-1",
            "database \"no_such_database\" does not exist",
        ),
        (
            "WRONG_PASSWORD",
            wrong_password,
            "db-1",
            "password authentication failed",
        ),
        (
            "UNREACHABLE",
            "postgres://ferry:ferry@127.0.0.1:1/x".to_string(),
            "db-1",
            "cannot connect to database main (UNREACHABLE)",
        ),
        (
            "NOT_A_URL",
            "mysql://x@y/z".to_string(),
            "db-1",
            "the secret NOT_A_URL is not a PostgreSQL URL",
        ),
        (
            "DATABASE_URL",
            url.clone(),
            "old-1",
            "is version 9.6.24 but the server is PostgreSQL",
        ),
        (
            "DATABASE_URL",
            url.clone(),
            "bare-1",
            "pg_dump is not installed on this host",
        ),
    ];
    for (secret, value, agent, expected) in cases {
        set_secret(&s.c, secret, &value).await;
        let job = run_backup(&s.c, agent, &spec("main", secret)).await;
        assert_eq!(job.status, "failed", "{secret} on {agent}: {job:#?}");
        let message = &job.tasks[0].message;
        assert!(message.contains(expected), "{secret} on {agent}: {message}");
        assert!(!message.contains(":ferry@"), "no password in {message}");
        assert!(
            files(&backups).is_empty(),
            "{secret}: {:?}",
            files(&backups)
        );
    }
    // A secret that was never set fails the task before it reaches the host.
    let job = run_backup(&s.c, "db-1", &spec("main", "NEVER_SET")).await;
    assert_eq!(job.status, "failed");
    assert!(
        job.tasks[0]
            .message
            .contains("missing secrets for app shop env staging: NEVER_SET"),
        "{}",
        job.tasks[0].message
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_fails_the_backup_with_no_partial_file() {
    let Some(url) = fresh_database().await else {
        return;
    };
    // Rows of random text do not compress below the 2 MiB of the tmpfs.
    psql(
        &url,
        "CREATE TABLE blobs (id serial PRIMARY KEY, data text);
         INSERT INTO blobs (data) SELECT string_agg(md5(random()::text), '') FROM generate_series(1, 300000) g GROUP BY g % 2000;",
    );
    let dir = tempfile::tempdir().unwrap();
    let mnt = dir.path().join("small");
    std::fs::create_dir_all(&mnt).unwrap();
    let mounted = Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=2m", "tmpfs"])
        .arg(&mnt)
        .status()
        .is_ok_and(|s| s.success());
    if !mounted {
        assert!(
            std::env::var_os("CI").is_none(),
            "mounting a 2 MiB tmpfs needs root, which CI has"
        );
        eprintln!("skipped: cannot mount a tmpfs (not root)");
        return;
    }
    struct Unmount(PathBuf);
    impl Drop for Unmount {
        fn drop(&mut self) {
            let _ = Command::new("umount").arg(&self.0).status();
        }
    }
    let _unmount = Unmount(mnt.clone());
    let s = setup(&[("db-1", backup_env(&mnt))]).await;
    set_secret(&s.c, "DATABASE_URL", &url).await;
    let job = run_backup(&s.c, "db-1", &spec("main", "DATABASE_URL")).await;
    assert_eq!(job.status, "failed", "{job:#?}");
    let message = &job.tasks[0].message;
    assert!(
        message.contains("No space left on device") && message.contains(".dump.zst.partial"),
        "{message}"
    );
    assert!(files(&mnt).is_empty(), "{:?}", files(&mnt));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancelled_or_killed_backup_leaves_no_file() {
    let Some(url) = fresh_database().await else {
        return;
    };
    populate(&url, 1000);
    let dir = tempfile::tempdir().unwrap();
    let c = TestCoordinator::start().await.unwrap();
    let enrolled = c.enroll("db-1", &[]).await.unwrap();
    let agent = enrolled.start_with_env(backup_env(dir.path()));
    c.wait_for_agent("db-1", "online", Duration::from_secs(10))
        .await
        .unwrap();
    set_secret(&c, "DATABASE_URL", &url).await;

    // pg_dump waits for this lock, mid-backup, for as long as it is held.
    let mut holder = sqlx::PgConnection::connect(&url).await.unwrap();
    sqlx::query("BEGIN").execute(&mut holder).await.unwrap();
    sqlx::query("LOCK TABLE orders IN ACCESS EXCLUSIVE MODE")
        .execute(&mut holder)
        .await
        .unwrap();
    let dumping = |e: &pb::JobEvent| {
        matches!(e.body.as_ref().and_then(|b| b.body.as_ref()),
            Some(Body::StepStarted(s)) if s.step == "dump")
    };

    let job = c
        .submit("backup", &spec("main", "DATABASE_URL"), &["db-1"], 0)
        .await
        .unwrap();
    c.wait_for_event(&job.id, Duration::from_secs(20), dumping)
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    c.operator()
        .await
        .unwrap()
        .cancel_job(pb::CancelJobRequest {
            job_id: job.id.clone(),
        })
        .await
        .unwrap();
    c.watch_to_end(&job.id, Duration::from_secs(30))
        .await
        .unwrap();
    let job = c.job(&job.id).await.unwrap();
    assert_eq!(job.status, "cancelled", "{job:#?}");
    assert!(files(dir.path()).is_empty(), "{:?}", files(dir.path()));

    // An agent stopped mid-dump (its futures dropped) leaves nothing either.
    let job = c
        .submit("backup", &spec("main", "DATABASE_URL"), &["db-1"], 0)
        .await
        .unwrap();
    c.wait_for_event(&job.id, Duration::from_secs(20), dumping)
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let enrolled = agent.kill().await.unwrap();
    // The aborted task's future is dropped (and its guard removes the
    // partial file) when tokio next gets to it, and the blocking writer
    // finishes its chunk first: shortly after the agent's run returned.
    let until = std::time::Instant::now() + Duration::from_secs(5);
    while !files(dir.path()).is_empty() && std::time::Instant::now() < until {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(files(dir.path()).is_empty(), "{:?}", files(dir.path()));

    // The agent process killed (SIGKILL) mid-dump: its partial file stays
    // until it starts again, which removes it and reports the task lost.
    let run = || {
        tokio::process::Command::new(bin::path("ferry-agent"))
            .args(["run", "--state-dir"])
            .arg(&enrolled.state_dir)
            .env("FERRY_BACKUP_DIR", dir.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .unwrap()
    };
    let mut process = run();
    c.watch_to_end(&job.id, Duration::from_secs(30))
        .await
        .unwrap();
    let job = c
        .submit("backup", &spec("main", "DATABASE_URL"), &["db-1"], 0)
        .await
        .unwrap();
    c.wait_for_event(&job.id, Duration::from_secs(20), dumping)
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    process.start_kill().unwrap();
    process.wait().await.unwrap();
    let left = files(dir.path());
    assert_eq!(left.len(), 1, "{left:?}");
    assert!(left[0].ends_with(".dump.zst.partial"), "{left:?}");
    let _process = run();
    c.watch_to_end(&job.id, Duration::from_secs(30))
        .await
        .unwrap();
    let job = c.job(&job.id).await.unwrap();
    assert_eq!(job.tasks[0].state, "lost", "{job:#?}");
    assert!(files(dir.path()).is_empty(), "{:?}", files(dir.path()));
    sqlx::query("ROLLBACK").execute(&mut holder).await.unwrap();
}

fn ferry(creds: &Path, args: &[&str]) -> std::process::Output {
    Command::new(bin::path("ferry"))
        .arg("--credentials")
        .arg(creds)
        .args(args)
        .output()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cli_runs_lists_and_shows_backups_and_a_failed_one_is_not_catalogued() {
    let Some(url) = fresh_database().await else {
        return;
    };
    populate(&url, 1000);
    let dir = tempfile::tempdir().unwrap();
    let backups = dir.path().join("backups");
    let s = setup(&[("db-1", backup_env(&backups))]).await;
    let creds = dir.path().join("admin.credentials");
    s.c.admin.save(&creds, false).unwrap();
    set_secret(&s.c, "DATABASE_URL", &url).await;
    set_secret(
        &s.c,
        "BROKEN_URL",
        &url.replacen("ferry:ferry@", "ferry:wrong@", 1),
    )
    .await;
    let file = dir.path().join("ferry.toml");
    std::fs::write(
        &file,
        r#"app = "shop"
[environments.staging]
agents = ["db-1"]
[services.web]
image = "shop:{version}"
[databases.main]
url_secret = "DATABASE_URL"
[databases.main.backup]
keep_days = 30
[databases.broken]
url_secret = "BROKEN_URL"
"#,
    )
    .unwrap();
    let f = file.to_str().unwrap();

    // Both databases: one written and catalogued, one failed and not.
    let out = ferry(
        &creds,
        &["backup", "run", "-f", f, "--env", ENV, "--output", "json"],
    );
    assert_eq!(
        out.status.code(),
        Some(1),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let ran: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(ran[0]["database"], "broken");
    assert_eq!(ran[0]["status"], "failed");
    assert!(ran[0]["backup"].is_null());
    assert!(
        ran[0]["message"]
            .as_str()
            .unwrap()
            .contains("password authentication failed"),
        "{ran}"
    );
    assert_eq!(ran[1]["database"], "main");
    assert_eq!(ran[1]["status"], "succeeded");
    assert_eq!(ran[1]["host"], "db-1");
    let id = ran[1]["backup"]["id"].as_str().unwrap().to_string();
    assert_eq!(ran[1]["backup"]["row_counts"]["public.orders"], 1000);

    let out = ferry(&creds, &["backup", "ls", "--app", APP, "--output", "json"]);
    assert_eq!(out.status.code(), Some(0));
    let list: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let list = list.as_array().unwrap();
    assert_eq!(list.len(), 1, "only the backup that was written: {list:?}");
    let b = &list[0];
    assert_eq!(b["id"], id.as_str());
    assert_eq!(
        (b["app"].as_str(), b["env"].as_str(), b["database"].as_str()),
        (Some(APP), Some(ENV), Some("main"))
    );
    assert_eq!(b["reason"], "manual");
    assert_eq!(b["host"], "db-1");
    let path = b["path"].as_str().unwrap();
    assert_eq!(
        b["size_bytes"].as_u64(),
        Some(std::fs::metadata(path).unwrap().len())
    );
    assert_eq!(b["sha256"].as_str().unwrap().len(), 64);
    let created = time::OffsetDateTime::parse(
        b["created_at"].as_str().unwrap(),
        &time::format_description::well_known::Rfc3339,
    )
    .unwrap();
    let expires = time::OffsetDateTime::parse(
        b["expires_at"].as_str().unwrap(),
        &time::format_description::well_known::Rfc3339,
    )
    .unwrap();
    assert_eq!(
        expires - created,
        time::Duration::days(30),
        "keep_days of the app file"
    );
    assert!(b["verified_at"].is_null() && b["verify_result"].is_null());

    // Without the file: the databases the coordinator kept; text lines.
    let out = ferry(
        &creds,
        &["backup", "run", "--app", APP, "--env", ENV, "--db", "main"],
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("✔ main: backup "), "{stdout}");
    let out = ferry(&creds, &["backup", "ls", "--app", APP, "--db", "main"]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        stdout.lines().count(),
        3,
        "a header and two backups: {stdout}"
    );

    let out = ferry(&creds, &["backup", "show", &id, "--output", "json"]);
    assert_eq!(out.status.code(), Some(0));
    let shown: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(shown["manifest"]["row_counts"]["public.customers"], 5000);
    assert_eq!(shown["manifest"]["job_id"], shown["job_id"]);
    let out = ferry(&creds, &["backup", "show", &id]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("restore by hand: zstd -dc "), "{stdout}");

    // Refusals, each with its exit code.
    let out = ferry(
        &creds,
        &["backup", "show", &uuid::Uuid::now_v7().to_string()],
    );
    assert_ne!(out.status.code(), Some(0));
    assert!(String::from_utf8_lossy(&out.stderr).contains("no backup with id"));
    let out = ferry(&creds, &["backup", "run", "-f", f, "--env", "nope"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("unknown environment \"nope\""));
    let out = ferry(
        &creds,
        &["backup", "run", "--app", APP, "--env", ENV, "--db", "other"],
    );
    assert_eq!(
        out.status.code(),
        Some(2),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        String::from_utf8_lossy(&out.stderr)
            .contains("has no database \"other\"; it has broken, main")
    );
}

fn app_file(dir: &Path, name: &str, expect: &str) -> String {
    let file = dir.join(name);
    std::fs::write(
        &file,
        format!(
            r#"app = "shop"
[environments.staging]
agents = ["db-1"]
[services.web]
image = "shop:{{version}}"
[databases.main]
url_secret = "DATABASE_URL"
[[databases.main.checks]]
sql = "SELECT count(*) FROM customers"
expect = "{expect}"
[[databases.main.checks]]
sql = "SELECT greet('x')"
expect = "Grüß dich, x ! 'quoted' "
"#
        ),
    )
    .unwrap();
    file.display().to_string()
}

fn json_of(out: &std::process::Output) -> serde_json::Value {
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "{e}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verify_restores_into_a_scratch_database_and_refuses_a_flipped_byte() {
    let Some(url) = fresh_database().await else {
        return;
    };
    populate(&url, 20_000);
    let dir = tempfile::tempdir().unwrap();
    let s = setup(&[("db-1", backup_env(&dir.path().join("backups")))]).await;
    let creds = dir.path().join("admin.credentials");
    s.c.admin.save(&creds, false).unwrap();
    set_secret(&s.c, "DATABASE_URL", &url).await;
    let good = app_file(dir.path(), "good.toml", "> 0");
    let bad = app_file(dir.path(), "bad.toml", "= 4");

    let out = ferry(
        &creds,
        &[
            "backup", "run", "-f", &good, "--env", ENV, "--output", "json",
        ],
    );
    assert_eq!(out.status.code(), Some(0));
    let id = json_of(&out)[0]["backup"]["id"]
        .as_str()
        .unwrap()
        .to_string();

    // Passed: recorded, and the scratch database is gone.
    let out = ferry(&creds, &["backup", "verify", &id, "--output", "json"]);
    let v = json_of(&out);
    assert_eq!(out.status.code(), Some(0), "{v}");
    assert_eq!(v["verify_result"], "passed");
    assert_eq!(v["report"]["checks"], 2);
    assert_eq!(v["report"]["tables"], 4);
    assert_eq!(v["report"]["rows"], 20_000 + 5000 + 2000);
    let job = s.c.job(v["job_id"].as_str().unwrap()).await.unwrap();
    let scratch = format!("ferry_verify_{}", job.tasks[0].id.replace('-', ""));
    assert_eq!(
        psql(
            &url,
            &format!("SELECT count(*) FROM pg_database WHERE datname = '{scratch}'")
        ),
        "0"
    );
    let out = ferry(&creds, &["backup", "ls", "--app", APP, "--output", "json"]);
    let b = &json_of(&out)[0];
    assert_eq!(b["verify_result"], "passed");
    assert!(b["verified_at"].is_string());

    // A failing check fails the verification, naming it.
    let out = ferry(
        &creds,
        &[
            "backup", "run", "-f", &bad, "--env", ENV, "--output", "json",
        ],
    );
    let id2 = json_of(&out)[0]["backup"]["id"]
        .as_str()
        .unwrap()
        .to_string();
    let out = ferry(&creds, &["backup", "verify", &id2]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{stdout}");
    assert!(
        stdout.contains("check 1 (SELECT count(*) FROM customers): got 5000, expected = 4"),
        "{stdout}"
    );
    let out = ferry(&creds, &["backup", "show", &id2, "--output", "json"]);
    let b = json_of(&out);
    assert_eq!(b["verify_result"], "failed");
    assert!(
        b["verify_message"]
            .as_str()
            .unwrap()
            .contains("expected = 4")
    );

    // A flipped byte: refused before anything is restored, naming both sums.
    let path = b["path"].as_str().unwrap();
    let mut bytes = std::fs::read(path).unwrap();
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0x01;
    std::fs::write(path, &bytes).unwrap();
    let out = ferry(&creds, &["backup", "verify", &id2, "--output", "json"]);
    let v = json_of(&out);
    assert_eq!(out.status.code(), Some(1));
    let message = v["message"].as_str().unwrap();
    assert!(
        message.contains("checksum mismatch") && message.contains(b["sha256"].as_str().unwrap()),
        "{message}"
    );
    assert!(message.contains("was not restored"), "{message}");
    let job = s.c.job(v["job_id"].as_str().unwrap()).await.unwrap();
    let scratch = format!("ferry_verify_{}", job.tasks[0].id.replace('-', ""));
    assert_eq!(
        psql(
            &url,
            &format!("SELECT count(*) FROM pg_database WHERE datname = '{scratch}'")
        ),
        "0",
        "nothing was created"
    );
    let out = ferry(&creds, &["backup", "show", &id2, "--output", "json"]);
    assert!(
        json_of(&out)["verify_message"]
            .as_str()
            .unwrap()
            .contains("checksum mismatch")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restore_swaps_in_a_new_database_restores_into_one_or_in_place_and_never_half() {
    let Some(url) = fresh_database().await else {
        return;
    };
    populate(&url, 5000);
    let live = database_name(&url);
    let dir = tempfile::tempdir().unwrap();
    let s = setup(&[("db-1", backup_env(&dir.path().join("backups")))]).await;
    let creds = dir.path().join("admin.credentials");
    s.c.admin.save(&creds, false).unwrap();
    set_secret(&s.c, "DATABASE_URL", &url).await;
    let file = app_file(dir.path(), "ferry.toml", "> 0");
    let out = ferry(
        &creds,
        &[
            "backup", "run", "-f", &file, "--env", ENV, "--output", "json",
        ],
    );
    let id = json_of(&out)[0]["backup"]["id"]
        .as_str()
        .unwrap()
        .to_string();
    let orders = |u: &str| psql(u, "SELECT count(*) FROM orders");
    psql(&url, "DELETE FROM orders WHERE id > 100");

    // Without --yes and without a terminal: refused, nothing runs.
    let out = ferry(&creds, &["backup", "restore", &id]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("pass --yes"));

    // --into: a new database; the live one untouched.
    let copy = format!("{live}_copy");
    let out = ferry(
        &creds,
        &[
            "backup", "restore", &id, "--into", &copy, "--yes", "--output", "json",
        ],
    );
    let v = json_of(&out);
    assert_eq!(out.status.code(), Some(0), "{v}");
    assert_eq!(v["report"]["restored_into"], copy.as_str());
    assert_eq!(orders(&with_database(&url, &copy)), "5000");
    assert_eq!(orders(&url), "100");

    // --clean that fails (a view outside the backup depends on a table it
    // drops): one transaction, so the database is exactly as it was.
    psql(
        &url,
        "CREATE VIEW customer_names AS SELECT name FROM customers",
    );
    let out = ferry(
        &creds,
        &[
            "backup", "restore", &id, "--clean", "--yes", "--output", "json",
        ],
    );
    let v = json_of(&out);
    assert_eq!(out.status.code(), Some(1), "{v}");
    let message = v["message"].as_str().unwrap();
    assert!(
        message.contains("pg_restore failed") && message.contains("is unchanged"),
        "{message}"
    );
    assert_eq!(orders(&url), "100");
    assert_eq!(psql(&url, "SELECT count(*) FROM customer_names"), "5000");
    psql(&url, "DROP VIEW customer_names");
    let out = ferry(&creds, &["backup", "restore", &id, "--clean", "--yes"]);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    assert_eq!(orders(&url), "5000");

    // The default, while a client holds a connection to the live database:
    // swapped by name, the old one kept, the client cut off.
    psql(&url, "DELETE FROM orders WHERE id > 7");
    let mut client = sqlx::PgConnection::connect(&url).await.unwrap();
    sqlx::query("SELECT 1").execute(&mut client).await.unwrap();
    let out = ferry(
        &creds,
        &["backup", "restore", &id, "--yes", "--output", "json"],
    );
    let v = json_of(&out);
    assert_eq!(out.status.code(), Some(0), "{v}");
    let previous = v["report"]["previous"].as_str().unwrap().to_string();
    assert!(previous.contains("_before_restore_"), "{previous}");
    let message = v["message"].as_str().unwrap();
    assert!(
        message.contains(&format!("DROP DATABASE {previous};")),
        "{message}"
    );
    assert_eq!(
        orders(&url),
        "5000",
        "the live name is the restored database"
    );
    assert_eq!(
        orders(&with_database(&url, &previous)),
        "7",
        "the old one is kept"
    );
    assert!(
        sqlx::query("SELECT 1").execute(&mut client).await.is_err(),
        "its clients were cut off"
    );

    // A flipped byte: refused, the live database untouched.
    let path = json_of(&ferry(&creds, &["backup", "show", &id, "--output", "json"]))["path"]
        .as_str()
        .unwrap()
        .to_string();
    let mut bytes = std::fs::read(&path).unwrap();
    bytes[100] ^= 0x80;
    std::fs::write(&path, &bytes).unwrap();
    psql(&url, "DELETE FROM orders WHERE id > 3");
    let out = ferry(
        &creds,
        &[
            "backup", "restore", &id, "--clean", "--yes", "--output", "json",
        ],
    );
    let v = json_of(&out);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        v["message"].as_str().unwrap().contains("checksum mismatch"),
        "{v}"
    );
    assert_eq!(orders(&url), "3");

    // Every restore submitted is in the audit log, with its mode.
    let store = ferry_coordinator::store::open(s.c.store_location())
        .await
        .unwrap();
    let restores: Vec<String> = store
        .list_audit(&ferry_coordinator::store::AuditFilter {
            app: Some(APP.to_string()),
            env: Some(ENV.to_string()),
            limit: 100,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_iter()
        .filter(|e| e.action == "backup.restore")
        .map(|e| {
            assert_eq!(e.target, format!("{APP}/{ENV}/main"));
            assert!(e.actor.ends_with("/operator/admin"), "{}", e.actor);
            e.detail
        })
        .collect();
    assert_eq!(restores.len(), 5, "{restores:?}");
    assert!(
        restores.iter().any(|d| d.contains("\"swap\"")),
        "{restores:?}"
    );
    assert!(
        restores.iter().any(|d| d.contains("\"into\"")),
        "{restores:?}"
    );

    for db in [copy, previous] {
        psql(&url, &format!("DROP DATABASE {db} WITH (FORCE)"));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keep_last_two_prunes_the_first_of_three_and_a_missing_file_is_reported() {
    let Some(url) = fresh_database().await else {
        return;
    };
    populate(&url, 100);
    let dir = tempfile::tempdir().unwrap();
    let s = setup(&[("db-1", backup_env(&dir.path().join("backups")))]).await;
    let creds = dir.path().join("admin.credentials");
    s.c.admin.save(&creds, false).unwrap();
    set_secret(&s.c, "DATABASE_URL", &url).await;
    let file = dir.path().join("ferry.toml");
    let write = |keep_last: u32| {
        std::fs::write(
            &file,
            format!(
                "app = \"shop\"\n[environments.staging]\nagents = [\"db-1\"]\n[services.web]\nimage = \"x\"\n[databases.main]\nurl_secret = \"DATABASE_URL\"\n[databases.main.backup]\nkeep_last = {keep_last}\n"
            ),
        )
        .unwrap();
    };
    write(2);
    let f = file.to_str().unwrap();
    let mut ids = Vec::new();
    for _ in 0..3 {
        let out = ferry(
            &creds,
            &["backup", "run", "-f", f, "--env", ENV, "--output", "json"],
        );
        ids.push(
            json_of(&out)[0]["backup"]["id"]
                .as_str()
                .unwrap()
                .to_string(),
        );
    }
    let listed = || {
        let out = ferry(&creds, &["backup", "ls", "--app", APP, "--output", "json"]);
        json_of(&out)
            .as_array()
            .unwrap()
            .iter()
            .map(|b| b["id"].as_str().unwrap().to_string())
            .collect::<Vec<_>>()
    };
    let path_of = |id: &str| {
        json_of(&ferry(&creds, &["backup", "show", id, "--output", "json"]))["path"]
            .as_str()
            .unwrap()
            .to_string()
    };
    let first = path_of(&ids[0]);

    let out = ferry(
        &creds,
        &[
            "backup",
            "prune",
            "--app",
            APP,
            "--env",
            ENV,
            "--dry-run",
            "--output",
            "json",
        ],
    );
    let v = json_of(&out);
    assert_eq!(v["prunable"].as_array().unwrap().len(), 1);
    assert_eq!(v["prunable"][0]["id"], ids[0].as_str());
    assert!(v["deleted"].as_array().unwrap().is_empty());
    assert_eq!(listed().len(), 3, "a dry run deletes nothing");

    let out = ferry(&creds, &["backup", "prune", "--app", APP, "--env", ENV]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{stdout}");
    assert!(stdout.contains(&format!("deleted {}", ids[0])), "{stdout}");
    assert_eq!(
        listed(),
        [ids[2].clone(), ids[1].clone()],
        "only the first went"
    );
    assert!(!Path::new(&first).exists());
    assert!(!Path::new(&first.replace(".dump.zst", ".manifest.json")).exists());
    for id in &ids[1..] {
        assert!(Path::new(&path_of(id)).exists());
    }
    let out = ferry(&creds, &["backup", "prune", "--app", APP, "--env", ENV]);
    assert!(String::from_utf8_lossy(&out.stdout).contains("nothing to prune"));

    // keep_last = 1 with the older file gone from disk: reported, kept listed.
    write(1);
    let out = ferry(
        &creds,
        &["backup", "run", "-f", f, "--env", ENV, "--db", "main"],
    );
    assert_eq!(out.status.code(), Some(0));
    let gone = path_of(&ids[1]);
    std::fs::remove_file(&gone).unwrap();
    let out = ferry(
        &creds,
        &[
            "backup", "prune", "--app", APP, "--env", ENV, "--output", "json",
        ],
    );
    let v = json_of(&out);
    assert_eq!(v["missing"], serde_json::json!([ids[1]]), "{v}");
    assert_eq!(v["deleted"], serde_json::json!([ids[2]]), "{v}");
    let left = listed();
    assert_eq!(left.len(), 2, "the new one and the missing one: {left:?}");
    assert!(left.contains(&ids[1]));
}
