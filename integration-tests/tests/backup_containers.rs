//! Backups of databases served from inside containers (`service =` and
//! `container =` in `[databases.NAME]`), against real servers: a
//! PostgreSQL and a MariaDB container started from the images of
//! `scripts/ensure-db-images.sh`, labelled as a Ferry-deployed service of
//! the app is (`ferry.app`, `ferry.env`, `ferry.service`). Everything goes
//! through the `ferry` CLI, the coordinator and an agent, which runs the
//! containers' own client tools with `docker exec`: backup (catalogued,
//! row counts exact), verify (passes; a flipped byte refused naming the
//! checksum), restore --into, restore swap while a client holds a
//! connection, MariaDB's --clean refused, and the manifest's hand restore.
//! Never skipped in CI.

use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use ferry_integration_tests::{TestCoordinator, bin, docker};
use ferry_proto::v1 as pb;

const ENV: &str = "staging";

/// A container removed when the test ends, however it ends.
struct Container(String);

impl Drop for Container {
    fn drop(&mut self) {
        let _ = Command::new("docker")
            .args(["rm", "-f", &self.0])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
}

/// A unique app name, so that tests running at once (here or in other
/// checkouts on the same engine) never find each other's containers.
fn unique_app() -> String {
    format!("dbx{}", &uuid::Uuid::now_v7().simple().to_string()[24..])
}

/// Starts `image` as the running container of service `service` of
/// (app, staging), as a Ferry deploy labels it.
fn start_service(image: &str, app: &str, service: &str, env: &[(&str, &str)]) -> Container {
    let name = format!("{app}-{ENV}-{service}");
    let mut cmd = Command::new("docker");
    cmd.args(["run", "-d", "--name", &name])
        .args(["--label", &format!("ferry.app={app}")])
        .args(["--label", &format!("ferry.env={ENV}")])
        .args(["--label", &format!("ferry.service={service}")])
        .args(["--label", "ferry.release=1"]);
    for (k, v) in env {
        cmd.args(["-e", &format!("{k}={v}")]);
    }
    let out = cmd.arg(image).output().unwrap();
    assert!(
        out.status.success(),
        "docker run {image}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Container(name)
}

/// `docker exec -i` of `args` in `container` with `stdin`; its stdout.
fn exec(container: &str, env: &[&str], args: &[&str], stdin: &str) -> String {
    let mut cmd = Command::new("docker");
    cmd.args(["exec", "-i"]);
    for e in env {
        cmd.args(["-e", e]);
    }
    let mut child = cmd
        .arg(container)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(stdin.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "docker exec {container} {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap().trim().to_string()
}

/// Waits for `ready`, off the runtime's workers (the coordinator and the
/// agent run on them meanwhile).
fn wait_until(what: &str, mut ready: impl FnMut() -> bool) {
    tokio::task::block_in_place(|| {
        let start = Instant::now();
        while !ready() {
            assert!(
                start.elapsed() < Duration::from_secs(90),
                "{what} did not become ready"
            );
            std::thread::sleep(Duration::from_millis(300));
        }
    })
}

/// Runs the `ferry` CLI, off the runtime's workers (it talks to the
/// coordinator running on them).
fn ferry(creds: &Path, args: &[&str]) -> std::process::Output {
    tokio::task::block_in_place(|| {
        Command::new(bin::path("ferry"))
            .arg("--credentials")
            .arg(creds)
            .args(args)
            .output()
            .unwrap()
    })
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

/// Runs `ferry args --output json`, expecting `code`; its JSON.
fn ferry_json(creds: &Path, args: &[&str], code: i32) -> serde_json::Value {
    let mut all = args.to_vec();
    all.extend(["--output", "json"]);
    let out = ferry(creds, &all);
    let v = json_of(&out);
    assert_eq!(
        out.status.code(),
        Some(code),
        "ferry {args:?}: {v} {}",
        String::from_utf8_lossy(&out.stderr)
    );
    v
}

/// A coordinator, one agent `db-1` writing backups under `dir`, the admin's
/// credentials, and the secrets of (app, staging).
async fn setup(
    dir: &Path,
    app: &str,
    secrets: &[(&str, &str)],
) -> (
    TestCoordinator,
    ferry_integration_tests::TestAgent,
    std::path::PathBuf,
) {
    let c = TestCoordinator::start().await.unwrap();
    let agent = c.enroll("db-1", &[]).await.unwrap().start_with_env(
        [(
            "FERRY_BACKUP_DIR".to_string(),
            dir.join("backups").display().to_string(),
        )]
        .into(),
    );
    c.wait_for_agent("db-1", "online", Duration::from_secs(10))
        .await
        .unwrap();
    let creds = dir.join("admin.credentials");
    c.admin.save(&creds, false).unwrap();
    for (name, value) in secrets {
        c.operator()
            .await
            .unwrap()
            .set_secret(pb::SetSecretRequest {
                app: app.into(),
                env: ENV.into(),
                name: name.to_string(),
                value: value.to_string(),
            })
            .await
            .unwrap();
    }
    (c, agent, creds)
}

/// Every file under `dir`.
fn walk(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                stack.push(e.path());
            } else {
                out.push(e.path());
            }
        }
    }
    out
}

fn flip_a_byte(path: &str) {
    let mut bytes = std::fs::read(path).unwrap();
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0x01;
    std::fs::write(path, &bytes).unwrap();
}

const PG_POPULATE: &str = r#"
CREATE SEQUENCE invoice_no START 1000;
CREATE TABLE customers (id bigserial PRIMARY KEY, name text NOT NULL, city text);
CREATE INDEX customers_name ON customers (name);
CREATE TABLE orders (id bigserial PRIMARY KEY, customer_id bigint REFERENCES customers(id),
                     invoice int DEFAULT nextval('invoice_no'), note text);
CREATE SCHEMA billing;
CREATE TABLE billing.events (id bigserial PRIMARY KEY, payload jsonb);
CREATE TABLE "Empty Table" (x int);
CREATE FUNCTION greet(who text) RETURNS text LANGUAGE plpgsql AS $body$
BEGIN
  RETURN 'Grüß dich, ' || who || $q$ ! 'quoted' $q$;
END
$body$;
INSERT INTO customers (name, city) SELECT 'Zoë Ångström ' || g, 'Kraków 東京' FROM generate_series(1, 1500) g;
INSERT INTO orders (customer_id, note) SELECT (g % 1500) + 1, repeat('données ', 5) || g FROM generate_series(1, 6000) g;
INSERT INTO billing.events (payload) SELECT jsonb_build_object('n', g, 'emoji', '🚢') FROM generate_series(1, 700) g;
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_in_a_service_container_backs_up_verifies_and_restores_every_way() {
    if !docker::available() {
        return;
    }
    let Some((pg_image, _)) = docker::db_images() else {
        return;
    };
    let app = unique_app();
    let db = start_service(
        &pg_image,
        &app,
        "db",
        &[
            ("POSTGRES_PASSWORD", "s3cret pw"),
            ("POSTGRES_USER", "app"),
            ("POSTGRES_DB", "appdb"),
        ],
    );
    let psql = |database: &str, sql: &str| {
        exec(
            &db.0,
            &[],
            &[
                "psql",
                "-X",
                "-q",
                "-A",
                "-t",
                "-v",
                "ON_ERROR_STOP=1",
                "-U",
                "app",
                "-d",
                database,
            ],
            sql,
        )
    };
    wait_until("postgres in its container", || {
        Command::new("docker")
            .args(["exec", &db.0, "pg_isready", "-U", "app", "-d", "appdb"])
            .output()
            .is_ok_and(|o| o.status.success())
    });
    psql("appdb", PG_POPULATE);

    let dir = tempfile::tempdir().unwrap();
    let (c, _agent, creds) = setup(dir.path(), &app, &[("DB_PASSWORD", "s3cret pw")]).await;
    let file = dir.path().join("ferry.toml");
    std::fs::write(
        &file,
        format!(
            r#"app = "{app}"
[environments.staging]
agents = ["db-1"]
[services.db]
image = "ferry-test-postgres:{{version}}"
[databases.main]
service = "db"
name = "appdb"
user = "app"
password_secret = "DB_PASSWORD"
[[databases.main.checks]]
sql = "SELECT count(*) FROM customers"
expect = "> 0"
[[databases.main.checks]]
sql = "SELECT greet('x')"
expect = "Grüß dich, x ! 'quoted' "
[databases.bycontainer]
container = "{}"
name = "appdb"
user = "app"
"#,
            db.0
        ),
    )
    .unwrap();
    let file = file.display().to_string();

    // Backup: catalogued, every table counted exactly.
    let v = ferry_json(
        &creds,
        &["backup", "run", "-f", &file, "--env", ENV, "--db", "main"],
        0,
    );
    let b = &v[0]["backup"];
    let id = b["id"].as_str().unwrap().to_string();
    let path = b["path"].as_str().unwrap().to_string();
    let out = ferry_json(&creds, &["backup", "show", &id], 0);
    let m = &out["manifest"];
    assert_eq!(m["format"], "pg_dump-custom", "{out}");
    assert_eq!(m["engine"], "postgres");
    assert!(
        m["dump_tool"].as_str().unwrap().contains("in container"),
        "{m}"
    );
    let counts = &m["row_counts"];
    assert_eq!(counts["public.customers"], 1500, "{counts}");
    assert_eq!(counts["public.orders"], 6000);
    assert_eq!(counts["billing.events"], 700);
    assert_eq!(counts["public.Empty Table"], 0);
    assert_eq!(counts.as_object().unwrap().len(), 4, "{counts}");
    let hint = m["restore_hint"].as_str().unwrap();
    assert!(hint.contains("docker exec -i"), "{hint}");

    // The file restores by hand with the container's pg_restore, as the
    // manifest says.
    psql("postgres", "CREATE DATABASE byhand");
    let sh = format!(
        "zstd -dc {path} | docker exec -i {} pg_restore --no-owner --exit-on-error -U app -d byhand",
        db.0
    );
    let out = Command::new("sh").args(["-c", &sh]).output().unwrap();
    assert!(
        out.status.success(),
        "{sh}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        psql("byhand", "SELECT count(*), min(city) FROM customers"),
        "1500|Kraków 東京"
    );

    // Verify: passes, the scratch database is gone.
    let v = ferry_json(&creds, &["backup", "verify", &id], 0);
    assert_eq!(v["verify_result"], "passed", "{v}");
    assert_eq!(v["report"]["tables"], 4);
    assert_eq!(v["report"]["rows"], 1500 + 6000 + 700);
    assert_eq!(v["report"]["checks"], 2);
    assert_eq!(
        psql(
            "postgres",
            "SELECT count(*) FROM pg_database WHERE datname LIKE 'ferry_verify_%'"
        ),
        "0"
    );

    // --into: a new database, the live one untouched.
    psql("appdb", "DELETE FROM orders WHERE id > 100");
    let v = ferry_json(
        &creds,
        &["backup", "restore", &id, "--into", "appdb_copy", "--yes"],
        0,
    );
    assert_eq!(v["report"]["restored_into"], "appdb_copy", "{v}");
    assert_eq!(psql("appdb_copy", "SELECT count(*) FROM orders"), "6000");
    assert_eq!(psql("appdb", "SELECT count(*) FROM orders"), "100");

    // --clean: in place, one transaction.
    ferry_json(&creds, &["backup", "restore", &id, "--clean", "--yes"], 0);
    assert_eq!(psql("appdb", "SELECT count(*) FROM orders"), "6000");

    // The default swap while a client holds a connection to the live
    // database: swapped, the old one kept, the client cut off.
    psql("appdb", "DELETE FROM orders WHERE id > 7");
    let mut client = Command::new("docker")
        .args([
            "exec", "-i", &db.0, "psql", "-X", "-q", "-A", "-t", "-U", "app", "-d", "appdb",
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut client_in = client.stdin.take().unwrap();
    client_in.write_all(b"SELECT 1;\n").unwrap();
    client_in.flush().unwrap();
    wait_until("the client's connection", || {
        psql(
            "postgres",
            "SELECT count(*) FROM pg_stat_activity WHERE datname = 'appdb' AND application_name = 'psql'",
        ) != "0"
    });
    let v = ferry_json(&creds, &["backup", "restore", &id, "--yes"], 0);
    let previous = v["report"]["previous"].as_str().unwrap().to_string();
    assert!(previous.starts_with("appdb_before_restore_"), "{v}");
    assert_eq!(psql("appdb", "SELECT count(*) FROM orders"), "6000");
    assert_eq!(psql(&previous, "SELECT count(*) FROM orders"), "7");
    client_in.write_all(b"SELECT 2;\n").unwrap();
    drop(client_in);
    let out = client.wait_with_output().unwrap();
    assert!(
        !out.status.success(),
        "the client was cut off: {}",
        String::from_utf8_lossy(&out.stderr)
    );

    // `container =`: the same server found by the container's name.
    let v = ferry_json(
        &creds,
        &[
            "backup",
            "run",
            "-f",
            &file,
            "--env",
            ENV,
            "--db",
            "bycontainer",
        ],
        0,
    );
    assert_eq!(v[0]["database"], "bycontainer", "{v}");
    assert_eq!(v[0]["backup"]["row_counts"]["public.orders"], 6000, "{v}");

    // A flipped byte: verify and restore refuse it, naming the checksum.
    flip_a_byte(&path);
    let v = ferry_json(&creds, &["backup", "verify", &id], 1);
    let message = v["message"].as_str().unwrap();
    assert!(
        message.contains("checksum mismatch") && message.contains(b["sha256"].as_str().unwrap()),
        "{message}"
    );
    let v = ferry_json(&creds, &["backup", "restore", &id, "--clean", "--yes"], 1);
    assert!(
        v["message"].as_str().unwrap().contains("checksum mismatch"),
        "{v}"
    );

    // Rows written while the dump runs: the manifest counts what the dump's
    // snapshot holds, which verify then finds exactly in the restored copy.
    psql(
        "appdb",
        "CREATE TABLE ticks (id bigserial PRIMARY KEY, note text); \
         INSERT INTO ticks (note) SELECT repeat('tick ', 20) || g FROM generate_series(1, 300000) g;",
    );
    let before: u64 = psql("appdb", "SELECT count(*) FROM ticks").parse().unwrap();
    let writer = {
        let container = db.0.clone();
        std::thread::spawn(move || {
            exec(
                &container,
                &[],
                &[
                    "psql",
                    "-X",
                    "-q",
                    "-v",
                    "ON_ERROR_STOP=1",
                    "-U",
                    "app",
                    "-d",
                    "appdb",
                ],
                "DO $$ BEGIN FOR i IN 1..400 LOOP INSERT INTO ticks (note) VALUES ('during'); COMMIT; PERFORM pg_sleep(0.005); END LOOP; END $$;",
            )
        })
    };
    let v = ferry_json(
        &creds,
        &["backup", "run", "-f", &file, "--env", ENV, "--db", "main"],
        0,
    );
    writer.join().unwrap();
    let after: u64 = psql("appdb", "SELECT count(*) FROM ticks").parse().unwrap();
    let counted = v[0]["backup"]["row_counts"]["public.ticks"]
        .as_u64()
        .unwrap();
    assert!(
        (before..=after).contains(&counted),
        "{before} <= {counted} <= {after}"
    );
    let during = v[0]["backup"]["id"].as_str().unwrap().to_string();
    let v = ferry_json(&creds, &["backup", "verify", &during], 0);
    assert_eq!(v["verify_result"], "passed", "{v}");

    // Cancelled while pg_dump waits for a lock, in the container: the job
    // ends cancelled, no file is left, and pg_dump is stopped (its session
    // leaves the server).
    let mut holder = Command::new("docker")
        .args([
            "exec", "-i", &db.0, "psql", "-X", "-q", "-U", "app", "-d", "appdb",
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut holder_in = holder.stdin.take().unwrap();
    holder_in
        .write_all(b"BEGIN; LOCK TABLE orders IN ACCESS EXCLUSIVE MODE; SELECT 1;\n")
        .unwrap();
    holder_in.flush().unwrap();
    wait_until("the lock", || {
        psql(
            "appdb",
            "SELECT count(*) FROM pg_locks l JOIN pg_class c ON c.oid = l.relation WHERE c.relname = 'orders' AND l.mode = 'AccessExclusiveLock' AND l.granted",
        ) != "0"
    });
    let files_before = walk(&dir.path().join("backups"));
    let spec = serde_json::json!({
        "app": app, "env": ENV, "database": "main",
        "location": {"service": {"name": "db", "database": "appdb", "user": "app", "password_secret": "DB_PASSWORD"}},
    });
    let job = c
        .submit("backup", &spec.to_string(), &["db-1"], 0)
        .await
        .unwrap();
    let dump_waits = || {
        psql(
            "appdb",
            "SELECT count(*) FROM pg_stat_activity WHERE application_name = 'pg_dump' AND wait_event_type = 'Lock'",
        ) != "0"
    };
    wait_until("pg_dump waiting for the lock", dump_waits);
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
    assert_eq!(c.job(&job.id).await.unwrap().status, "cancelled");
    wait_until("pg_dump stopped", || {
        psql(
            "appdb",
            "SELECT count(*) FROM pg_stat_activity WHERE application_name = 'pg_dump'",
        ) == "0"
    });
    let mut files_after = walk(&dir.path().join("backups"));
    let mut files_before = files_before;
    files_before.sort();
    files_after.sort();
    assert_eq!(files_after, files_before, "no file was left");
    holder_in.write_all(b"ROLLBACK;\n").unwrap();
    drop(holder_in);
    let _ = holder.wait();

    // A service with no running container: a clear error naming it.
    let stopped = Command::new("docker")
        .args(["stop", "-t", "1", &db.0])
        .output()
        .unwrap();
    assert!(stopped.status.success());
    let v = ferry_json(
        &creds,
        &["backup", "run", "-f", &file, "--env", ENV, "--db", "main"],
        1,
    );
    let text = v.to_string();
    assert!(
        text.contains(&format!(
            "service db of {app} {ENV} has no running container on this host"
        )),
        "{text}"
    );
    drop(c);
}

const MARIADB_POPULATE: &str = r#"
CREATE TABLE customers (id INT PRIMARY KEY AUTO_INCREMENT, name VARCHAR(200) NOT NULL, city VARCHAR(100)) DEFAULT CHARSET=utf8mb4;
CREATE TABLE orders (id INT PRIMARY KEY AUTO_INCREMENT, customer_id INT, note TEXT, blob_col VARBINARY(16)) DEFAULT CHARSET=utf8mb4;
CREATE TABLE `empty` (x INT);
INSERT INTO customers (name, city) SELECT CONCAT('Zoë Ångström ', seq), 'Kraków 東京' FROM seq_1_to_1200;
INSERT INTO customers (name, city) VALUES ('it''s (tricky); really', 'back\\slash'), ('"dq" ),( ', NULL), ('new\nline', 'tab\there');
INSERT INTO orders (customer_id, note, blob_col) SELECT (seq % 1200) + 1, CONCAT(REPEAT('données ', 5), seq, ' ;),('), UNHEX('00FF27225C28293B') FROM seq_1_to_4000;
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mariadb_in_a_service_container_backs_up_verifies_and_restores_and_refuses_clean() {
    if !docker::available() {
        return;
    }
    let Some((_, maria_image)) = docker::db_images() else {
        return;
    };
    let app = unique_app();
    let db = start_service(
        &maria_image,
        &app,
        "db",
        &[
            ("MARIADB_ROOT_PASSWORD", "r00t pw"),
            ("MARIADB_DATABASE", "shop"),
        ],
    );
    let pw = "MYSQL_PWD=r00t pw";
    let sql = |database: &str, sql: &str| {
        exec(
            &db.0,
            &[pw],
            &[
                "mariadb",
                "--default-character-set=utf8mb4",
                "-N",
                "-B",
                "-uroot",
                database,
            ],
            sql,
        )
    };
    wait_until("mariadb in its container", || {
        Command::new("docker")
            .args([
                "exec", "-e", pw, &db.0, "mariadb", "-uroot", "-e", "SELECT 1", "shop",
            ])
            .output()
            .is_ok_and(|o| o.status.success())
    });
    sql("shop", MARIADB_POPULATE);

    let dir = tempfile::tempdir().unwrap();
    let (c, _agent, creds) = setup(
        dir.path(),
        &app,
        &[("DB_ROOT_PASSWORD", "r00t pw"), ("WRONG_PASSWORD", "nope")],
    )
    .await;
    let file = dir.path().join("ferry.toml");
    std::fs::write(
        &file,
        format!(
            r#"app = "{app}"
[environments.staging]
agents = ["db-1"]
[services.db]
image = "ferry-test-mariadb:{{version}}"
[databases.shop]
engine = "mariadb"
service = "db"
user = "root"
password_secret = "DB_ROOT_PASSWORD"
[[databases.shop.checks]]
sql = "SELECT COUNT(*) FROM customers WHERE city = 'Kraków 東京'"
expect = "1200"
[databases.wrongpw]
engine = "mariadb"
service = "db"
name = "shop"
user = "root"
password_secret = "WRONG_PASSWORD"
[databases.shopcheck]
engine = "mariadb"
service = "db"
name = "shop"
password_secret = "DB_ROOT_PASSWORD"
[[databases.shopcheck.checks]]
sql = "SELECT COUNT(*) FROM orders;"
expect = "7"
[databases.gone]
engine = "mariadb"
container = "{app}-no-such-container"
"#
        ),
    )
    .unwrap();
    let file = file.display().to_string();

    // A wrong password and a missing container: clear failures, no file.
    let v = ferry_json(
        &creds,
        &[
            "backup", "run", "-f", &file, "--env", ENV, "--db", "wrongpw",
        ],
        1,
    );
    let text = v.to_string();
    assert!(text.contains("Access denied for user 'root'"), "{text}");
    let v = ferry_json(
        &creds,
        &["backup", "run", "-f", &file, "--env", ENV, "--db", "gone"],
        1,
    );
    let text = v.to_string();
    assert!(
        text.contains(&format!(
            "there is no container named {app}-no-such-container on this host"
        )),
        "{text}"
    );
    let leftovers: Vec<_> = walk(&dir.path().join("backups"));
    assert!(leftovers.is_empty(), "{leftovers:?}");

    // Backup: catalogued, rows counted in the dump exactly.
    let v = ferry_json(
        &creds,
        &["backup", "run", "-f", &file, "--env", ENV, "--db", "shop"],
        0,
    );
    let b = &v[0]["backup"];
    let id = b["id"].as_str().unwrap().to_string();
    let path = b["path"].as_str().unwrap().to_string();
    let shown = ferry_json(&creds, &["backup", "show", &id], 0);
    let m = &shown["manifest"];
    assert_eq!(m["format"], "mariadb-dump-sql", "{shown}");
    assert_eq!(m["engine"], "mariadb");
    assert!(
        m["server_version"].as_str().unwrap().contains("MariaDB"),
        "{m}"
    );
    let counts = &m["row_counts"];
    assert_eq!(counts["customers"], 1203, "{counts}");
    assert_eq!(counts["orders"], 4000);
    assert_eq!(counts["empty"], 0);
    assert_eq!(counts.as_object().unwrap().len(), 3, "{counts}");
    let ls = ferry_json(&creds, &["backup", "ls", "--app", &app], 0);
    assert_eq!(ls[0]["id"], id.as_str(), "{ls}");

    // By hand, as the manifest says.
    sql("shop", "CREATE DATABASE byhand");
    let sh = format!(
        "zstd -dc {path} | docker exec -i -e 'MYSQL_PWD=r00t pw' {} mariadb -uroot byhand",
        db.0
    );
    let out = Command::new("sh").args(["-c", &sh]).output().unwrap();
    assert!(
        out.status.success(),
        "{sh}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let digest = "SELECT COUNT(*), MD5(GROUP_CONCAT(CONCAT_WS('|', id, name, IFNULL(city, '-')) ORDER BY id SEPARATOR '#')) FROM customers";
    assert_eq!(sql("byhand", digest), sql("shop", digest));
    let blobs = "SELECT COUNT(*), HEX(MIN(blob_col)) FROM orders";
    assert_eq!(sql("byhand", blobs), "4000\t00FF27225C28293B");

    // Verify: passes, the scratch database is gone.
    let v = ferry_json(&creds, &["backup", "verify", &id], 0);
    assert_eq!(v["verify_result"], "passed", "{v}");
    assert_eq!(v["report"]["rows"], 1203 + 4000);
    assert_eq!(v["report"]["checks"], 1);
    assert_eq!(
        sql(
            "shop",
            "SELECT COUNT(*) FROM information_schema.SCHEMATA WHERE SCHEMA_NAME LIKE 'ferry_verify_%'"
        ),
        "0"
    );

    // A check that does not hold fails the verification, naming it.
    let v = ferry_json(
        &creds,
        &[
            "backup",
            "run",
            "-f",
            &file,
            "--env",
            ENV,
            "--db",
            "shopcheck",
        ],
        0,
    );
    let checked = v[0]["backup"]["id"].as_str().unwrap().to_string();
    let v = ferry_json(&creds, &["backup", "verify", &checked], 1);
    let message = v["message"].as_str().unwrap();
    assert!(
        message.contains(
            "check 1 (SELECT COUNT(*) FROM orders;): got \"4000\", expected exactly \"7\""
        ),
        "{message}"
    );

    // --clean is refused, saying why and what to use.
    let out = ferry(&creds, &["backup", "restore", &id, "--clean", "--yes"]);
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert_ne!(out.status.code(), Some(0), "{said}");
    assert!(
        said.contains("--clean is refused for MariaDB")
            && said.contains("not transactional")
            && said.contains("--into"),
        "{said}"
    );

    // --into: a new database, the live one untouched.
    sql("shop", "DELETE FROM orders WHERE id > 10");
    let v = ferry_json(
        &creds,
        &["backup", "restore", &id, "--into", "shop_copy", "--yes"],
        0,
    );
    assert_eq!(v["report"]["restored_into"], "shop_copy", "{v}");
    assert_eq!(sql("shop_copy", "SELECT COUNT(*) FROM orders"), "4000");
    assert_eq!(sql("shop", "SELECT COUNT(*) FROM orders"), "10");

    // The swap while a client holds a connection to the live database:
    // one RENAME TABLE; the client's next query sees the restored rows.
    let mut client = Command::new("docker")
        .args([
            "exec", "-i", "-e", pw, &db.0, "mariadb", "-N", "-B", "-uroot", "shop",
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut client_in = client.stdin.take().unwrap();
    client_in
        .write_all(b"SELECT COUNT(*) FROM orders;\n")
        .unwrap();
    client_in.flush().unwrap();
    wait_until("the client's connection", || {
        sql(
            "shop",
            "SELECT COUNT(*) FROM information_schema.PROCESSLIST WHERE DB = 'shop' AND ID <> CONNECTION_ID()",
        ) != "0"
    });
    let v = ferry_json(&creds, &["backup", "restore", &id, "--yes"], 0);
    let previous = v["report"]["previous"].as_str().unwrap().to_string();
    assert!(previous.starts_with("shop_before_restore_"), "{v}");
    assert_eq!(sql("shop", "SELECT COUNT(*) FROM orders"), "4000");
    assert_eq!(sql(&previous, "SELECT COUNT(*) FROM orders"), "10");
    assert_eq!(sql("shop", digest), sql("byhand", digest));
    client_in
        .write_all(b"SELECT COUNT(*) FROM orders;\n")
        .unwrap();
    drop(client_in);
    let out = client.wait_with_output().unwrap();
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "10\n4000",
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // The emptied restore database is gone.
    assert_eq!(
        sql(
            "shop",
            "SELECT COUNT(*) FROM information_schema.SCHEMATA WHERE SCHEMA_NAME LIKE 'shop_restore_%'"
        ),
        "0"
    );

    // A flipped byte: verify refuses it, naming the checksum.
    flip_a_byte(&path);
    let v = ferry_json(&creds, &["backup", "verify", &id], 1);
    let message = v["message"].as_str().unwrap();
    assert!(
        message.contains("checksum mismatch") && message.contains(b["sha256"].as_str().unwrap()),
        "{message}"
    );
    // A container with only the older names (mysqldump, mysql): used.
    exec(
        &db.0,
        &[],
        &[
            "sh",
            "-c",
            "rm /usr/bin/mysqldump /usr/bin/mysql && mv /usr/bin/mariadb-dump /usr/bin/mysqldump && mv /usr/bin/mariadb /usr/bin/mysql",
        ],
        "",
    );
    let v = ferry_json(
        &creds,
        &["backup", "run", "-f", &file, "--env", ENV, "--db", "shop"],
        0,
    );
    let old_names = v[0]["backup"]["id"].as_str().unwrap().to_string();
    assert_eq!(v[0]["backup"]["row_counts"]["orders"], 4000, "{v}");
    let shown = ferry_json(&creds, &["backup", "show", &old_names], 0);
    assert!(
        shown["manifest"]["dump_tool"]
            .as_str()
            .unwrap()
            .starts_with("mysqldump"),
        "{shown}"
    );
    let v = ferry_json(
        &creds,
        &[
            "backup",
            "restore",
            &old_names,
            "--into",
            "shop_old_names",
            "--yes",
        ],
        0,
    );
    assert_eq!(v["report"]["restored_into"], "shop_old_names", "{v}");
    drop(c);
}
