//! The `migrate` job kind end to end: a coordinator and an agent in this
//! process, the real PostgreSQL of the test suite (`FERRY_TEST_DATABASE_URL`)
//! with a main database and tenant databases on it, the host's real
//! `pg_dump` for the pre-migration backups, and `ferry` itself for the CLI.
//!
//! - main + tenants migrated through the job, each backed up first (the
//!   backups catalogued with reason pre-migration and their tenant, and a
//!   tenant's restorable into that tenant's database); a re-run is a no-op;
//! - a broken tenant migration: that tenant at its previous version, named
//!   in the report with its error, its lock released, the others following
//!   the failure policy; `--no-backup` takes none;
//! - two runs at once on one database: the second is refused naming the
//!   first, and the claim ends with the job;
//! - a dry run changes nothing (schema dump and catalog equal, no ledger);
//! - `ferry migrate` / `ferry migrate status` through the real binary: the
//!   JSON contract, exit codes, a bad folder refused before submitting.

use ferry_integration_tests::postgres::{database_name, psql, schema, with_database};
use std::collections::HashMap;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use ferry_common::job::MigrateReport;
use ferry_common::migration_layout;
use ferry_integration_tests::postgres::fresh_database;
use ferry_integration_tests::{TestAgent, TestCoordinator, bin};
use ferry_proto::v1 as pb;

const APP: &str = "erp";
const ENV: &str = "staging";

fn write(dir: &Path, files: &[(&str, &str)]) {
    for (name, text) in files {
        let p = dir.join(name);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, text).unwrap();
    }
}

/// A main database with a tenant table listing `n` tenant databases (each
/// created, empty), and the app's folders: main and tenant migrations.
struct Fleet {
    main: String,
    tenants: Vec<String>,
    dir: tempfile::TempDir,
}

impl Fleet {
    fn tenant_url(&self, i: usize) -> String {
        with_database(&self.main, &self.tenants[i])
    }

    fn app_file(&self) -> std::path::PathBuf {
        self.dir.path().join("ferry.toml")
    }
}

async fn fleet(n: usize) -> Option<Fleet> {
    let main = fresh_database().await?;
    let name = database_name(&main);
    let mut tenants = Vec::new();
    psql(
        &main,
        "CREATE TABLE tenant (id int PRIMARY KEY, db_name text NOT NULL)",
    );
    for i in 1..=n {
        let t = format!("{name}_t{i}");
        psql(&main, &format!("CREATE DATABASE {t}"));
        psql(
            &main,
            &format!("INSERT INTO tenant VALUES ({}, '{t}')", 100 + i),
        );
        tenants.push(t);
    }
    let dir = tempfile::tempdir().unwrap();
    write(
        dir.path(),
        &[
            (
                "migrations/main/1_accounts.sql",
                "CREATE TABLE accounts (id bigserial PRIMARY KEY, name text NOT NULL);",
            ),
            (
                "migrations/main/2_accounts_email.sql",
                "ALTER TABLE accounts ADD COLUMN email text;\nCREATE FUNCTION shout(t text) RETURNS text LANGUAGE sql AS $$ SELECT upper(t) || '!'; $$;",
            ),
            (
                "migrations/tenant/1_items.sql",
                "CREATE TABLE items (id bigserial PRIMARY KEY, title text);\nINSERT INTO items (title) VALUES ('first');",
            ),
            (
                "migrations/tenant/2_blocker.sql",
                "CREATE TABLE two_a (x int);\nCREATE TABLE blocker (y int);",
            ),
        ],
    );
    std::fs::write(
        dir.path().join("ferry.toml"),
        r#"app = "erp"
[environments.staging]
agents = ["db-1"]
[services.web]
image = "erp:{version}"
[databases.main]
url_secret = "DATABASE_URL"
[databases.main.migrations]
dir = "migrations/main"
layout = "sqlx"
lock_timeout = "5s"
concurrency = 1
[databases.main.tenants]
query = "SELECT db_name, id FROM tenant ORDER BY id"
id_column = "id"
[databases.main.tenants.migrations]
dir = "migrations/tenant"
layout = "sqlx"
"#,
    )
    .unwrap();
    Some(Fleet { main, tenants, dir })
}

struct Setup {
    c: TestCoordinator,
    _agent: TestAgent,
    backups: tempfile::TempDir,
}

async fn setup(main_url: &str) -> Setup {
    let c = TestCoordinator::start().await.unwrap();
    let backups = tempfile::tempdir().unwrap();
    let agent = c
        .enroll("db-1", &[])
        .await
        .unwrap()
        .start_with_env(HashMap::from([(
            "FERRY_BACKUP_DIR".to_string(),
            backups.path().display().to_string(),
        )]));
    c.wait_for_agent("db-1", "online", Duration::from_secs(10))
        .await
        .unwrap();
    c.operator()
        .await
        .unwrap()
        .set_secret(pb::SetSecretRequest {
            app: APP.into(),
            env: ENV.into(),
            name: "DATABASE_URL".into(),
            value: main_url.into(),
        })
        .await
        .unwrap();
    Setup {
        c,
        _agent: agent,
        backups,
    }
}

/// The request `ferry migrate -f` sends for `fleet`'s app file.
fn request(fleet: &Fleet) -> pb::RunMigrateRequest {
    let path = fleet.app_file();
    let text = std::fs::read_to_string(&path).unwrap();
    let file = ferry_common::appfile::parse("ferry.toml", &text).unwrap();
    let env = file.environment(ENV).unwrap();
    let mut folders = Vec::new();
    for (tenants, dir) in [(false, "migrations/main"), (true, "migrations/tenant")] {
        let files = migration_layout::read_dir(&fleet.dir.path().join(dir)).unwrap();
        folders.push(pb::MigrationFolder {
            database: "main".into(),
            tenants,
            files: files.into_iter().collect(),
        });
    }
    pb::RunMigrateRequest {
        app: APP.into(),
        env: ENV.into(),
        databases_json: file
            .databases
            .values()
            .map(|d| serde_json::to_string(&d.target(env)).unwrap())
            .collect(),
        folders,
        ..Default::default()
    }
}

/// Submits `req`, follows its one job to the end; the job and its report.
async fn migrate(c: &TestCoordinator, req: pb::RunMigrateRequest) -> (pb::Job, MigrateReport) {
    let jobs = c
        .operator()
        .await
        .unwrap()
        .run_migrate(req)
        .await
        .unwrap()
        .into_inner()
        .jobs;
    assert_eq!(jobs.len(), 1);
    c.watch_to_end(&jobs[0].id, Duration::from_secs(120))
        .await
        .unwrap();
    let job = c.job(&jobs[0].id).await.unwrap();
    let report = MigrateReport::from_json(&job.tasks[0].result_json)
        .unwrap_or_else(|e| panic!("{e}: {:?}", job.tasks[0]));
    (job, report)
}

/// The versions in the database's ledger; none when it has no ledger.
fn ledger(url: &str) -> Vec<String> {
    if psql(url, "SELECT to_regclass('ferry.migrations') IS NULL") == "t" {
        return Vec::new();
    }
    psql(
        url,
        "SELECT string_agg(version, ',' ORDER BY version::int) FROM ferry.migrations",
    )
    .split(',')
    .filter(|s| !s.is_empty())
    .map(str::to_string)
    .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn main_and_tenants_migrate_each_backed_up_first_and_a_rerun_is_a_noop() {
    let Some(f) = fleet(3).await else { return };
    // The tenants' second migration must succeed here.
    std::fs::write(
        f.dir.path().join("migrations/tenant/2_blocker.sql"),
        "CREATE TABLE two_a (x int);",
    )
    .unwrap();
    let s = setup(&f.main).await;
    let (job, report) = migrate(&s.c, request(&f)).await;
    assert_eq!(job.status, "succeeded", "{job:?}");
    // Progress: databases done / total, and each one's migration.
    let events =
        s.c.watch_to_end(&job.id, Duration::from_secs(5))
            .await
            .unwrap();
    let progress: Vec<String> = events
        .iter()
        .filter_map(|e| match e.body.as_ref().and_then(|b| b.body.as_ref()) {
            Some(pb::event_body::Body::Progress(p)) => Some(p.message.clone()),
            _ => None,
        })
        .collect();
    assert!(
        progress.iter().any(|m| m.starts_with("4/4 databases")),
        "{progress:?}"
    );
    assert!(
        progress
            .iter()
            .any(|m| m.contains(&format!("{}: 1 items", f.tenants[2]))),
        "{progress:?}"
    );
    let names: Vec<&str> = report
        .databases
        .iter()
        .map(|d| d.database.as_str())
        .collect();
    let mut want = vec![database_name(&f.main)];
    want.extend(f.tenants.iter().cloned());
    assert_eq!(
        names, want,
        "main first, then the tenants in the query's order"
    );
    assert_eq!(report.databases[0].role, "main");
    assert_eq!(report.databases[0].applied, ["1", "2"]);
    assert_eq!(report.databases[1].tenant_id.as_deref(), Some("101"));
    for d in &report.databases[1..] {
        assert_eq!((d.role.as_str(), d.status.as_str()), ("tenant", "applied"));
        assert_eq!(d.applied, ["1", "2"]);
        assert!(d.pending.is_empty());
    }
    assert_eq!(ledger(&f.main), ["1", "2"]);
    assert_eq!(psql(&f.main, "SELECT shout('hi')"), "HI!");
    for i in 0..3 {
        assert_eq!(ledger(&f.tenant_url(i)), ["1", "2"]);
        assert_eq!(psql(&f.tenant_url(i), "SELECT title FROM items"), "first");
    }

    // Every database was backed up first, and each backup is catalogued
    // with reason pre-migration, a tenant's with its tenant.
    assert_eq!(report.backups.len(), 4);
    let listed =
        s.c.operator()
            .await
            .unwrap()
            .list_backups(pb::ListBackupsRequest {
                app: APP.into(),
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner()
            .backups;
    assert_eq!(listed.len(), 4, "{listed:?}");
    for d in &report.databases {
        let id = d
            .backup_id
            .as_deref()
            .expect("each database names its backup");
        let b = listed.iter().find(|b| b.id == id).expect("catalogued");
        assert_eq!(b.reason, "pre-migration");
        assert_eq!(b.database, "main");
        assert_eq!(b.job_id, job.id);
        if d.role == "tenant" {
            assert_eq!(b.tenant, d.database);
            assert!(b.path.contains("/tenants/"), "{}", b.path);
        } else {
            assert_eq!(b.tenant, "");
        }
        assert!(Path::new(&b.path).exists());
        assert!(b.path.starts_with(&s.backups.path().display().to_string()));
    }

    // A re-run touches nothing and backs nothing up.
    let (job, report) = migrate(&s.c, request(&f)).await;
    assert_eq!(job.status, "succeeded");
    assert!(
        report
            .databases
            .iter()
            .all(|d| d.status == "up_to_date" && d.applied.is_empty() && d.backup_id.is_none()),
        "{report:?}"
    );
    assert!(report.backups.is_empty());

    // The first tenant's backup restores that tenant's database: before its
    // migrations, it had no table at all.
    let t1 = &report.databases[1].database;
    let first_run_t1 = listed.iter().find(|b| &b.tenant == t1).unwrap();
    let restore =
        s.c.operator()
            .await
            .unwrap()
            .restore_backup(pb::RestoreBackupRequest {
                id: first_run_t1.id.clone(),
                into: String::new(),
                clean: false,
            })
            .await
            .unwrap()
            .into_inner()
            .job
            .unwrap();
    s.c.watch_to_end(&restore.id, Duration::from_secs(60))
        .await
        .unwrap();
    let restore = s.c.job(&restore.id).await.unwrap();
    assert_eq!(restore.status, "succeeded", "{restore:?}");
    assert_eq!(
        psql(
            &f.tenant_url(0),
            "SELECT coalesce(to_regclass('items')::text, 'none')"
        ),
        "none",
        "the tenant is back as it was before its migrations"
    );
    assert_eq!(
        ledger(&f.tenant_url(1)),
        ["1", "2"],
        "other tenants untouched"
    );
    assert_eq!(ledger(&f.main), ["1", "2"], "the main database untouched");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broken_tenant_stays_at_its_previous_version_and_the_others_follow_the_policy() {
    let Some(f) = fleet(3).await else { return };
    // The second tenant already has what its second migration creates.
    psql(&f.tenant_url(1), "CREATE TABLE blocker (z int)");
    let s = setup(&f.main).await;
    let (job, report) = migrate(&s.c, request(&f)).await;
    assert_eq!(job.status, "failed");
    let status: Vec<&str> = report.databases.iter().map(|d| d.status.as_str()).collect();
    assert_eq!(
        status,
        ["applied", "applied", "failed", "skipped"],
        "one at a time (concurrency 1): after the failure no new tenant starts"
    );
    let broken = &report.databases[2];
    assert_eq!(broken.database, f.tenants[1]);
    let error = broken.error.as_deref().unwrap();
    assert!(
        error.contains("2_blocker.sql") && error.contains("\"blocker\" already exists"),
        "{error}"
    );
    assert_eq!(broken.applied, ["1"]);
    assert_eq!(broken.pending, ["2"]);
    assert!(
        job.tasks[0].message.contains(&f.tenants[1]),
        "the task's message names the tenant: {}",
        job.tasks[0].message
    );
    // Exactly at its previous version: its failed migration rolled back.
    let t2 = f.tenant_url(1);
    assert_eq!(ledger(&t2), ["1"]);
    assert_eq!(
        psql(&t2, "SELECT coalesce(to_regclass('two_a')::text, 'none')"),
        "none"
    );
    // Its lock is free: no session holds an advisory lock on it.
    assert_eq!(
        psql(
            &f.main,
            &format!(
                "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND database = (SELECT oid FROM pg_database WHERE datname = '{}')",
                f.tenants[1]
            )
        ),
        "0"
    );
    assert_eq!(
        ledger(&f.tenant_url(2)).len(),
        0,
        "the third tenant never started"
    );
    // Backups of what changed, also in a failed run, catalogued.
    assert_eq!(report.backups.len(), 3);
    assert!(report.databases[3].backup_id.is_none());

    // --continue-on-error --no-backup: the third tenant is migrated, the
    // second fails again, no backup is taken.
    let (job, report) = migrate(
        &s.c,
        pb::RunMigrateRequest {
            continue_on_error: true,
            no_backup: true,
            ..request(&f)
        },
    )
    .await;
    assert_eq!(job.status, "failed");
    let status: Vec<&str> = report.databases.iter().map(|d| d.status.as_str()).collect();
    assert_eq!(status, ["up_to_date", "up_to_date", "failed", "applied"]);
    assert!(report.backups.is_empty() && report.databases.iter().all(|d| d.backup_id.is_none()));
    assert_eq!(ledger(&f.tenant_url(2)), ["1", "2"]);
    let listed =
        s.c.operator()
            .await
            .unwrap()
            .list_backups(pb::ListBackupsRequest::default())
            .await
            .unwrap()
            .into_inner()
            .backups;
    assert_eq!(listed.len(), 3, "--no-backup took none");

    // Filters: one tenant by id, skipping the main database.
    let (_, report) = migrate(
        &s.c,
        pb::RunMigrateRequest {
            skip_main: true,
            tenant_ids: vec!["101".into()],
            ..request(&f)
        },
    )
    .await;
    let names: Vec<&str> = report
        .databases
        .iter()
        .map(|d| d.database.as_str())
        .collect();
    assert_eq!(names, [f.tenants[0].as_str()]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_runs_on_one_database_never_run_together() {
    let Some(f) = fleet(2).await else { return };
    // Slow enough that the second request arrives while the first runs.
    std::fs::write(
        f.dir.path().join("migrations/tenant/2_blocker.sql"),
        "SELECT pg_sleep(2);",
    )
    .unwrap();
    let s = setup(&f.main).await;
    let mut op = s.c.operator().await.unwrap();
    let first = op
        .run_migrate(request(&f))
        .await
        .unwrap()
        .into_inner()
        .jobs
        .remove(0);
    let second = op.run_migrate(request(&f)).await.unwrap_err();
    assert_eq!(second.code(), tonic::Code::Aborted);
    assert!(
        second.message().contains("is being migrated")
            && second.message().contains(&format!("job {}", first.id)),
        "{}",
        second.message()
    );
    s.c.watch_to_end(&first.id, Duration::from_secs(120))
        .await
        .unwrap();
    // The claim ends with the job: a new run starts at once.
    let (job, report) = migrate(&s.c, request(&f)).await;
    assert_eq!(job.status, "succeeded");
    assert!(report.databases.iter().all(|d| d.status == "up_to_date"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dry_run_changes_nothing_and_lists_what_would_run() {
    let Some(f) = fleet(1).await else { return };
    let s = setup(&f.main).await;
    let before = (schema(&f.main), schema(&f.tenant_url(0)));
    let catalog = "SELECT count(*) FROM pg_namespace WHERE nspname = 'ferry'";
    let (job, report) = migrate(
        &s.c,
        pb::RunMigrateRequest {
            dry_run: true,
            ..request(&f)
        },
    )
    .await;
    assert_eq!(job.status, "succeeded", "{job:?}");
    for d in &report.databases {
        assert_eq!(d.status, "pending");
        assert_eq!(d.pending, ["1", "2"]);
        assert!(d.applied.is_empty() && d.backup_id.is_none());
    }
    assert!(report.backups.is_empty());
    assert_eq!((schema(&f.main), schema(&f.tenant_url(0))), before);
    assert_eq!(psql(&f.main, catalog), "0", "not even the ledger table");
    assert_eq!(psql(&f.tenant_url(0), catalog), "0");
    assert!(
        std::fs::read_dir(s.backups.path())
            .unwrap()
            .next()
            .is_none(),
        "no backup on a dry run"
    );
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
async fn the_cli_migrates_reports_status_and_refuses_a_bad_folder_before_submitting() {
    let Some(f) = fleet(2).await else { return };
    let s = setup(&f.main).await;
    let creds = f.dir.path().join("admin.credentials");
    s.c.admin.save(&creds, false).unwrap();
    let file = f.app_file();
    let file = file.to_str().unwrap();

    // status: everything pending, nothing applied.
    let out = ferry(
        &creds,
        &[
            "migrate", "status", "-f", file, "--env", ENV, "--output", "json",
        ],
    );
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["databases"].as_array().unwrap().len(), 3);
    assert_eq!(v["databases"][0]["pending"], serde_json::json!(["1", "2"]));
    assert_eq!(v["databases"][0]["applied"], serde_json::json!([]));

    // One tenant is broken: exit 1, the JSON names it.
    psql(&f.tenant_url(1), "CREATE TABLE blocker (z int)");
    let out = ferry(
        &creds,
        &[
            "migrate",
            "-f",
            file,
            "--env",
            ENV,
            "--continue-on-error",
            "--output",
            "json",
        ],
    );
    assert_eq!(
        out.status.code(),
        Some(1),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(v["job_id"].is_string());
    let dbs = v["databases"].as_array().unwrap();
    assert_eq!(dbs.len(), 3);
    for field in [
        "database",
        "role",
        "tenant_id",
        "applied",
        "pending",
        "status",
        "error",
        "backup_id",
    ] {
        assert!(dbs[0].get(field).is_some(), "{field} missing: {}", dbs[0]);
    }
    assert_eq!(dbs[0]["role"], "main");
    assert_eq!(dbs[0]["applied"], serde_json::json!(["1", "2"]));
    assert!(dbs[0]["backup_id"].is_string());
    assert_eq!(dbs[2]["database"], f.tenants[1].as_str());
    assert_eq!(dbs[2]["tenant_id"], "102");
    assert_eq!(dbs[2]["status"], "failed");
    assert!(dbs[2]["error"].as_str().unwrap().contains("blocker"));

    // Text: the table, and the failure said.
    psql(&f.tenant_url(1), "DROP TABLE blocker");
    let out = ferry(
        &creds,
        &["migrate", "-f", file, "--env", ENV, "--no-backup"],
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains("DATABASE") && stdout.contains("applied"),
        "{stdout}"
    );
    let out = ferry(
        &creds,
        &[
            "migrate", "status", "-f", file, "--env", ENV, "--output", "json",
        ],
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(
        v["databases"]
            .as_array()
            .unwrap()
            .iter()
            .all(|d| d["pending"] == serde_json::json!([])
                && d["applied"] == serde_json::json!(["1", "2"])),
        "{v}"
    );

    // A folder that is not in its layout is refused before anything is
    // submitted, naming the file.
    write(
        f.dir.path(),
        &[("migrations/main/create_users.sql", "SELECT 1;")],
    );
    let out = ferry(&creds, &["migrate", "-f", file, "--env", ENV]);
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("create_users.sql") && stderr.contains("not a sqlx migration name"),
        "{stderr}"
    );
    std::fs::remove_file(f.dir.path().join("migrations/main/create_users.sql")).unwrap();

    // A protected environment: the dry run is shown, and without a
    // terminal to confirm on nothing runs; --yes runs it.
    write(
        f.dir.path(),
        &[("migrations/main/3_more.sql", "CREATE TABLE more (x int);")],
    );
    let text = std::fs::read_to_string(f.app_file()).unwrap();
    std::fs::write(
        f.app_file(),
        text.replace(
            "agents = [\"db-1\"]",
            "agents = [\"db-1\"]\nprotected = true",
        ),
    )
    .unwrap();
    let out = ferry(&creds, &["migrate", "-f", file, "--env", ENV]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("is protected") && stderr.contains("pass --yes") && stderr.contains("3"),
        "{stderr}"
    );
    assert_eq!(ledger(&f.main), ["1", "2"], "nothing ran unconfirmed");
    let out = ferry(
        &creds,
        &["migrate", "-f", file, "--env", ENV, "--yes", "--main-only"],
    );
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(ledger(&f.main), ["1", "2", "3"]);

    // The coordinator keeps each database's last run and its report.
    let runs =
        s.c.operator()
            .await
            .unwrap()
            .migrate_status(pb::MigrateStatusRequest {
                app: APP.into(),
                env: ENV.into(),
                database: String::new(),
            })
            .await
            .unwrap()
            .into_inner()
            .runs;
    assert_eq!(runs.len(), 1);
    assert_eq!(runs[0].database, "main");
    let job = runs[0].job.as_ref().unwrap();
    let report = MigrateReport::from_json(&job.tasks[0].result_json).unwrap();
    assert_eq!(report.databases.len(), 1, "the --main-only run is the last");
    assert_eq!(report.databases[0].applied, ["3"]);
}

/// Whether Docker answers; outside CI, a missing engine skips the test.
fn docker_available(test: &str) -> bool {
    let ok = Command::new("docker")
        .args(["version", "--format", "{{.Server.Version}}"])
        .output()
        .is_ok_and(|o| o.status.success());
    if !ok {
        if std::env::var_os("CI").is_some() {
            panic!("{test}: docker is not reachable, and command-mode tests must run in CI");
        }
        eprintln!("skipped {test}: docker is not reachable");
    }
    ok
}

/// The example app's image (`deploy/example/build-image.sh`), whose
/// `migrate` subcommand applies its embedded migrations to `DATABASE_URL`.
fn example_image() -> String {
    let tag = format!("it-migrate-{}", std::process::id());
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap();
    let out = Command::new("bash")
        .arg(root.join("deploy/example/build-image.sh"))
        .arg(&tag)
        .stderr(std::process::Stdio::inherit())
        .output()
        .expect("run build-image.sh");
    assert!(
        out.status.success(),
        "build-image.sh failed (its log is above)"
    );
    format!("ferry-example:{tag}")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn command_mode_runs_the_apps_own_tool_per_tenant_in_one_off_containers() {
    if !docker_available("command_mode") {
        return;
    }
    let Some(f) = fleet(2).await else { return };
    // A third tenant whose database does not exist: the tool fails there.
    let missing = format!("{}_missing", database_name(&f.main));
    psql(
        &f.main,
        &format!("INSERT INTO tenant VALUES (103, '{missing}')"),
    );
    std::fs::write(
        f.app_file(),
        r#"app = "erp"
[environments.staging]
agents = ["db-1"]
[services.web]
image = "erp:{version}"
[databases.main]
url_secret = "DATABASE_URL"
[databases.main.migrations]
command = ["migrate"]
concurrency = 2
[databases.main.tenants]
query = "SELECT db_name, id FROM tenant ORDER BY id"
id_column = "id"
"#,
    )
    .unwrap();
    let image = example_image();
    let s = setup(&f.main).await;
    let text = std::fs::read_to_string(f.app_file()).unwrap();
    let file = ferry_common::appfile::parse("ferry.toml", &text).unwrap();
    let env = file.environment(ENV).unwrap();
    let req = pb::RunMigrateRequest {
        app: APP.into(),
        env: ENV.into(),
        databases_json: file
            .databases
            .values()
            .map(|d| serde_json::to_string(&d.target(env)).unwrap())
            .collect(),
        image: image.clone(),
        continue_on_error: true,
        ..Default::default()
    };
    let jobs =
        s.c.operator()
            .await
            .unwrap()
            .run_migrate(req.clone())
            .await
            .unwrap()
            .into_inner()
            .jobs;
    let events =
        s.c.watch_to_end(&jobs[0].id, Duration::from_secs(180))
            .await
            .unwrap();
    let job = s.c.job(&jobs[0].id).await.unwrap();
    assert_eq!(job.status, "failed", "{job:?}");
    let report = MigrateReport::from_json(&job.tasks[0].result_json).unwrap();
    let status: Vec<(&str, &str)> = report
        .databases
        .iter()
        .map(|d| (d.database.as_str(), d.status.as_str()))
        .collect();
    let main = database_name(&f.main);
    assert_eq!(
        status,
        [
            (main.as_str(), "applied"),
            (f.tenants[0].as_str(), "applied"),
            (f.tenants[1].as_str(), "applied"),
            (missing.as_str(), "failed"),
        ]
    );
    let error = report.databases[3].error.as_deref().unwrap();
    assert!(
        error.contains("pre-migration backup failed") && error.contains("does not exist"),
        "{error}"
    );
    // Each database backed up first; the missing one's backup failed, so
    // it was never migrated.
    assert!(report.databases[..3].iter().all(|d| d.backup_id.is_some()));
    assert_eq!(report.backups.len(), 3);
    // The tool really ran on each: its tables and its own ledger.
    for url in [f.main.clone(), f.tenant_url(0), f.tenant_url(1)] {
        assert_eq!(
            psql(&url, "SELECT to_regclass('visits') IS NOT NULL"),
            "t",
            "{url}"
        );
    }
    // Its output was streamed, per database.
    let logs: Vec<String> = events
        .iter()
        .filter_map(|e| match e.body.as_ref().and_then(|b| b.body.as_ref()) {
            Some(pb::event_body::Body::Log(l)) => Some(l.line.clone()),
            _ => None,
        })
        .collect();
    for db in [&main, &f.tenants[0], &f.tenants[1]] {
        assert!(
            logs.iter()
                .any(|l| l.starts_with(&format!("{db}: "))
                    && l.contains("applied 0001_create_visits")),
            "{db}: {logs:?}"
        );
    }
    assert!(
        !logs.iter().any(|l| l.contains("ferry:ferry@")),
        "the URL's password is redacted"
    );
    // No container is left behind.
    let left = Command::new("docker")
        .args([
            "ps",
            "-aq",
            "--filter",
            &format!("label=ferry.migrate.job={}", job.id),
        ])
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&left.stdout).trim().is_empty());

    // The missing tenant alone with --no-backup: the tool's own exit code
    // fails it.
    let jobs =
        s.c.operator()
            .await
            .unwrap()
            .run_migrate(pb::RunMigrateRequest {
                no_backup: true,
                skip_main: true,
                tenants: vec![missing.clone()],
                ..req
            })
            .await
            .unwrap()
            .into_inner()
            .jobs;
    s.c.watch_to_end(&jobs[0].id, Duration::from_secs(120))
        .await
        .unwrap();
    let job = s.c.job(&jobs[0].id).await.unwrap();
    assert_eq!(job.status, "failed");
    let report = MigrateReport::from_json(&job.tasks[0].result_json).unwrap();
    assert_eq!(report.databases.len(), 1);
    let error = report.databases[0].error.as_deref().unwrap();
    assert!(
        error.contains("migrate exited with code") && error.contains(&missing),
        "{error}"
    );
    let _ = Command::new("docker").args(["rmi", &image]).output();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn image_path_copies_the_folder_out_of_the_image() {
    if !docker_available("image_path") {
        return;
    }
    let Some(f) = fleet(1).await else { return };
    // An image holding the main and tenant folders, built from nothing.
    let ctx = f.dir.path().join("image");
    std::fs::create_dir_all(&ctx).unwrap();
    let copy = |from: &str, to: &str| {
        let status = Command::new("cp").args(["-r", from, to]).status().unwrap();
        assert!(status.success());
    };
    copy(
        f.dir.path().join("migrations").to_str().unwrap(),
        ctx.to_str().unwrap(),
    );
    std::fs::write(
        ctx.join("migrations/tenant/2_blocker.sql"),
        "CREATE TABLE two_a (x int);",
    )
    .unwrap();
    std::fs::write(
        ctx.join("Dockerfile"),
        "FROM scratch\nCOPY migrations /app/migrations\n",
    )
    .unwrap();
    let image = format!("ferry-migrations:it-{}", std::process::id());
    let out = Command::new("docker")
        .args(["build", "-q", "-t", &image])
        .arg(&ctx)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    std::fs::write(
        f.app_file(),
        r#"app = "erp"
[environments.staging]
agents = ["db-1"]
[services.web]
image = "erp:{version}"
[databases.main]
url_secret = "DATABASE_URL"
[databases.main.migrations]
image_path = "/app/migrations/main"
layout = "sqlx"
[databases.main.tenants]
query = "SELECT db_name, id FROM tenant ORDER BY id"
[databases.main.tenants.migrations]
image_path = "/app/migrations/tenant"
layout = "sqlx"
"#,
    )
    .unwrap();
    let s = setup(&f.main).await;
    let text = std::fs::read_to_string(f.app_file()).unwrap();
    let file = ferry_common::appfile::parse("ferry.toml", &text).unwrap();
    let env = file.environment(ENV).unwrap();
    let (job, report) = migrate(
        &s.c,
        pb::RunMigrateRequest {
            app: APP.into(),
            env: ENV.into(),
            databases_json: file
                .databases
                .values()
                .map(|d| serde_json::to_string(&d.target(env)).unwrap())
                .collect(),
            image: image.clone(),
            no_backup: true,
            ..Default::default()
        },
    )
    .await;
    let _ = Command::new("docker").args(["rmi", &image]).output();
    assert_eq!(job.status, "succeeded", "{job:?}");
    assert!(
        report.databases.iter().all(|d| d.applied == ["1", "2"]),
        "{report:?}"
    );
    assert_eq!(ledger(&f.main), ["1", "2"]);
    assert_eq!(ledger(&f.tenant_url(0)), ["1", "2"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancelling_a_command_mode_run_kills_and_removes_its_container() {
    if !docker_available("command_mode_cancel") {
        return;
    }
    let Some(f) = fleet(1).await else { return };
    std::fs::write(
        f.app_file(),
        r#"app = "erp"
[environments.staging]
agents = ["db-1"]
[services.web]
image = "erp:{version}"
[databases.main]
url_secret = "DATABASE_URL"
[databases.main.migrations]
command = ["migrate"]
"#,
    )
    .unwrap();
    let image = example_image();
    let s = setup(&f.main).await;
    // The example's migrate waits for its advisory lock, held here: the
    // tool runs until it is stopped.
    use sqlx::Connection;
    let mut holder = sqlx::PgConnection::connect(&f.main).await.unwrap();
    sqlx::query("SELECT pg_advisory_lock(7378429400504558968)")
        .execute(&mut holder)
        .await
        .unwrap();
    let text = std::fs::read_to_string(f.app_file()).unwrap();
    let file = ferry_common::appfile::parse("ferry.toml", &text).unwrap();
    let env = file.environment(ENV).unwrap();
    let mut op = s.c.operator().await.unwrap();
    let job = op
        .run_migrate(pb::RunMigrateRequest {
            app: APP.into(),
            env: ENV.into(),
            databases_json: file
                .databases
                .values()
                .map(|d| serde_json::to_string(&d.target(env)).unwrap())
                .collect(),
            image: image.clone(),
            no_backup: true,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .jobs
        .remove(0);
    let containers = || {
        let out = Command::new("docker")
            .args([
                "ps",
                "-aq",
                "--filter",
                &format!("label=ferry.migrate.job={}", job.id),
            ])
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while containers().is_empty() {
        assert!(std::time::Instant::now() < deadline, "no container started");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    op.cancel_job(pb::CancelJobRequest {
        job_id: job.id.clone(),
    })
    .await
    .unwrap();
    s.c.watch_to_end(&job.id, Duration::from_secs(60))
        .await
        .unwrap();
    let job = s.c.job(&job.id).await.unwrap();
    assert_eq!(job.status, "cancelled", "{job:?}");
    assert!(containers().is_empty(), "the container was removed");
    let report = MigrateReport::from_json(&job.tasks[0].result_json).unwrap();
    assert_eq!(report.databases[0].status, "cancelled", "{report:?}");
    assert_eq!(
        psql(&f.main, "SELECT to_regclass('visits') IS NULL"),
        "t",
        "the tool never got to migrate"
    );
    let _ = holder.close().await;
    // The run is over: the next one starts, and migrates.
    let (job, report) = migrate(
        &s.c,
        pb::RunMigrateRequest {
            app: APP.into(),
            env: ENV.into(),
            image: image.clone(),
            no_backup: true,
            ..Default::default()
        },
    )
    .await;
    let _ = Command::new("docker").args(["rmi", &image]).output();
    assert_eq!(job.status, "succeeded", "{job:?}");
    assert_eq!(report.databases[0].status, "applied");
}
