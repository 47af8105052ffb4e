//! Backup schedules, fired by the coordinator at real minute boundaries
//! against the real PostgreSQL of the test suite and the agent's real
//! `pg_dump`: a `* * * * *` schedule registered by `ferry schedule apply`
//! fires within the minute and `ferry schedule ls` (the real binary) shows
//! its run succeeded with its catalogued `scheduled` backup, while a verify
//! schedule with nothing to verify shows failed with why (in `ls`, `ferry
//! status` and `/metrics`); two coordinators on one PostgreSQL store fire a
//! run exactly once; a run missed while the coordinator was down fires once
//! when it returns, marked late; a prune schedule applies `keep_last`;
//! every deploy registers the app file's schedules (and a later file's
//! replace them).
//!
//! Each test waits for at most one real minute boundary; they run in
//! parallel. Nothing is timed beyond "fired within the minute".

use ferry_integration_tests::postgres::psql;
use std::collections::HashMap;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use ferry_integration_tests::postgres::fresh_database;
use ferry_integration_tests::{TestAgent, TestCoordinator, bin};
use ferry_proto::v1 as pb;
use serde_json::Value;

const APP: &str = "shop";
const ENV: &str = "staging";
/// A minute boundary, the backup it starts, and slack for a loaded machine.
const FIRES_WITHIN: Duration = Duration::from_secs(150);

/// A small database to back up.
fn populate(url: &str) {
    psql(
        url,
        "CREATE TABLE orders (id bigserial PRIMARY KEY, note text); \
         INSERT INTO orders (note) SELECT 'order ' || g FROM generate_series(1, 500) g;",
    );
}

/// The app file: `main` at the database under test with `backup` (its
/// `[databases.main.backup]` body).
fn app_file(backup: &str) -> String {
    format!(
        r#"app = "{APP}"
[environments.{ENV}]
agents = ["db-1"]
[services.web]
image = "shop:{{version}}"
[databases.main]
url_secret = "DATABASE_URL"
[databases.main.backup]
{backup}
"#
    )
}

fn ferry(creds: &Path, args: &[&str]) -> std::process::Output {
    Command::new(bin::path("ferry"))
        .arg("--credentials")
        .arg(creds)
        .args(args)
        .output()
        .unwrap()
}

fn json_of(out: &std::process::Output) -> Value {
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

async fn start_agent(c: &TestCoordinator, backups: &Path) -> TestAgent {
    let a = c
        .enroll("db-1", &[])
        .await
        .unwrap()
        .start_with_env(HashMap::from([(
            "FERRY_BACKUP_DIR".to_string(),
            backups.display().to_string(),
        )]));
    c.wait_for_agent("db-1", "online", Duration::from_secs(10))
        .await
        .unwrap();
    a
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

async fn apply(c: &TestCoordinator, text: &str) -> pb::ApplySchedulesResponse {
    c.operator()
        .await
        .unwrap()
        .apply_schedules(pb::ApplySchedulesRequest {
            app_file: text.into(),
            file_name: "ferry.toml".into(),
            env: ENV.into(),
        })
        .await
        .unwrap()
        .into_inner()
}

async fn schedules(c: &TestCoordinator) -> Vec<pb::Schedule> {
    c.operator()
        .await
        .unwrap()
        .list_schedules(pb::ListSchedulesRequest {
            app: APP.into(),
            env: ENV.into(),
        })
        .await
        .unwrap()
        .into_inner()
        .schedules
}

async fn backups(c: &TestCoordinator) -> Vec<pb::Backup> {
    c.operator()
        .await
        .unwrap()
        .list_backups(pb::ListBackupsRequest {
            app: APP.into(),
            env: ENV.into(),
            database: String::new(),
            limit: 100,
        })
        .await
        .unwrap()
        .into_inner()
        .backups
}

/// Polls schedule `id` until its last run has ended (an outcome other than
/// running), within [`FIRES_WITHIN`].
async fn ended_run(c: &TestCoordinator, id: &str) -> pb::Schedule {
    let deadline = tokio::time::Instant::now() + FIRES_WITHIN;
    loop {
        let s = schedules(c)
            .await
            .into_iter()
            .find(|s| s.id == id)
            .expect("the schedule is listed");
        if !s.last_outcome.is_empty() && s.last_outcome != "running" {
            return s;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "schedule {id} did not fire and end within {FIRES_WITHIN:?}: {s:?}"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// The backup jobs a schedule submitted (its actor is `schedule:<last 8>`).
async fn jobs_of(c: &TestCoordinator, schedule_id: &str, kind: &str) -> Vec<pb::Job> {
    let actor = format!("schedule:{}", &schedule_id[schedule_id.len() - 8..]);
    c.operator()
        .await
        .unwrap()
        .list_jobs(pb::ListJobsRequest {
            kind: kind.into(),
            limit: 1000,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .jobs
        .into_iter()
        .filter(|j| j.created_by == actor)
        .collect()
}

/// Waits until the next run of `s` is at least `margin` away, so that
/// what a test counts after a run is not blurred by the following one.
fn clear_of_next_run(s: &pb::Schedule, margin: Duration) -> bool {
    let now = ferry_common::time::now_ms();
    s.next_run_at_ms - now >= margin.as_millis() as i64
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_every_minute_schedule_fires_within_the_minute_and_ls_shows_its_outcome() {
    let Some(url) = fresh_database().await else {
        return;
    };
    populate(&url);
    let dir = tempfile::tempdir().unwrap();
    let c = TestCoordinator::start().await.unwrap();
    let _agent = start_agent(&c, &dir.path().join("backups")).await;
    set_secret(&c, "DATABASE_URL", &url).await;
    let creds = dir.path().join("admin.credentials");
    c.admin.save(&creds, false).unwrap();
    let file = dir.path().join("ferry.toml");
    // `other` has a verify schedule and never a backup: its runs fail,
    // visibly.
    std::fs::write(
        &file,
        app_file("schedule = \"* * * * *\"\ntimezone = \"Europe/Paris\"\nkeep_last = 5")
            + "[databases.other]\nurl_secret = \"DATABASE_URL\"\n[databases.other.backup]\nverify_schedule = \"* * * * *\"\n",
    )
    .unwrap();
    let f = file.to_str().unwrap();

    let applied = json_of(&ferry(
        &creds,
        &[
            "schedule", "apply", "-f", f, "--env", ENV, "--output", "json",
        ],
    ));
    let listed: Vec<(String, String, String)> = applied["schedules"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| {
            (
                s["database"].as_str().unwrap().to_string(),
                s["kind"].as_str().unwrap().to_string(),
                s["source"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    let owned = |d: &str, k: &str| (d.to_string(), k.to_string(), "app-file".to_string());
    assert_eq!(
        listed,
        [
            owned("main", "backup"),
            owned("main", "prune"),
            owned("other", "verify")
        ]
    );
    assert_eq!(applied["added"].as_array().unwrap().len(), 3);
    let backup_id = applied["schedules"][0]["id"].as_str().unwrap().to_string();
    let verify_id = applied["schedules"][2]["id"].as_str().unwrap().to_string();
    // Applying the same file again keeps them (ids and all).
    let again = json_of(&ferry(
        &creds,
        &[
            "schedule", "apply", "-f", f, "--env", ENV, "--output", "json",
        ],
    ));
    assert!(again["added"].as_array().unwrap().is_empty());
    assert_eq!(again["schedules"][0]["id"], backup_id.as_str());

    // It fires at the next minute; its job's outcome is what ls shows.
    let s = ended_run(&c, &backup_id).await;
    assert_eq!(s.last_outcome, "succeeded", "{s:?}");
    let out = ferry(
        &creds,
        &["schedule", "ls", "--app", APP, "--output", "json"],
    );
    let ls = json_of(&out);
    let row = ls
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["id"] == backup_id.as_str())
        .expect("listed")
        .clone();
    for field in [
        "id",
        "app",
        "env",
        "database",
        "kind",
        "cron",
        "timezone",
        "source",
        "last_run_at",
        "last_outcome",
        "last_late",
        "last_error",
        "last_job_id",
        "next_run_at",
    ] {
        assert!(row.get(field).is_some(), "ls lacks {field}: {row}");
    }
    assert_eq!(
        (
            row["kind"].as_str(),
            row["cron"].as_str(),
            row["timezone"].as_str(),
            row["last_outcome"].as_str(),
            row["last_late"].as_bool(),
        ),
        (
            Some("backup"),
            Some("* * * * *"),
            Some("Europe/Paris"),
            Some("succeeded"),
            Some(false)
        ),
        "{row}"
    );
    assert!(row["last_error"].is_null(), "{row}");
    assert!(row["next_run_at"].as_str().unwrap() > row["last_run_at"].as_str().unwrap());
    // The catalogued backup is the run's, reason scheduled.
    let job_id = row["last_job_id"].as_str().unwrap();
    let catalogued = backups(&c).await;
    let b = catalogued
        .iter()
        .find(|b| b.job_id == job_id)
        .unwrap_or_else(|| panic!("the run's backup is catalogued: {catalogued:?}"));
    assert_eq!(
        (b.reason.as_str(), b.database.as_str()),
        ("scheduled", "main")
    );
    // Text for people: the table says it too.
    let out = ferry(&creds, &["schedule", "ls", "--app", APP]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("LAST RUN") && text.contains("succeeded"),
        "{text}"
    );

    // The verify schedule of `other` failed, with why; status and
    // metrics say so.
    let v = ended_run(&c, &verify_id).await;
    assert_eq!(v.last_outcome, "failed", "{v:?}");
    assert!(v.last_job_id.is_empty());
    assert!(
        v.last_error
            .contains("no catalogued backup of database other"),
        "{v:?}"
    );
    let status = json_of(&ferry(&creds, &["status", "--output", "json"]));
    let attention = status["schedules_needing_attention"].as_array().unwrap();
    assert!(
        attention.iter().any(|s| s["id"] == verify_id.as_str()),
        "{status}"
    );
    assert!(
        !attention.iter().any(|s| s["id"] == backup_id.as_str()),
        "{status}"
    );
    let out = ferry(&creds, &["status"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("schedule") && text.contains("no catalogued backup of database other"),
        "{text}"
    );
    let (code, metrics) = c.admin_get("/metrics").await.unwrap();
    assert_eq!(code, 200);
    assert!(
        metrics.contains(&format!(
            "ferry_backup_last_success_timestamp_seconds{{app=\"{APP}\",env=\"{ENV}\",database=\"main\"}} {}",
            b.created_at_ms / 1000
        )),
        "{metrics}"
    );
    assert!(
        metrics.contains(&format!(
            "ferry_schedule_last_run_failed{{app=\"{APP}\",env=\"{ENV}\",database=\"other\",kind=\"verify\"}} 1"
        )),
        "{metrics}"
    );
    assert!(
        metrics.contains(&format!(
            "ferry_schedule_last_run_failed{{app=\"{APP}\",env=\"{ENV}\",database=\"main\",kind=\"backup\"}} 0"
        )),
        "{metrics}"
    );

    // By hand: add (with --app from ./ferry.toml), remove by 8 characters.
    let out = Command::new(bin::path("ferry"))
        .current_dir(dir.path())
        .arg("--credentials")
        .arg(&creds)
        .args([
            "schedule",
            "add",
            "--env",
            ENV,
            "--db",
            "main",
            "--kind",
            "verify",
            "--cron",
            "0 4 * * 0",
            "--timezone",
            "America/New_York",
            "--output",
            "json",
        ])
        .output()
        .unwrap();
    let added = json_of(&out);
    assert_eq!(
        (added["source"].as_str(), added["app"].as_str()),
        (Some("manual"), Some(APP))
    );
    let manual = added["id"].as_str().unwrap().to_string();
    let out = ferry(&creds, &["schedule", "rm", &manual[manual.len() - 8..]]);
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    assert!(!schedules(&c).await.iter().any(|s| s.id == manual));
    // A bad cron is refused before anything is sent, naming the fields.
    let out = ferry(
        &creds,
        &[
            "schedule",
            "add",
            "--app",
            APP,
            "--env",
            ENV,
            "--db",
            "main",
            "--kind",
            "backup",
            "--cron",
            "every day",
        ],
    );
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stderr).contains("five fields"));
    // An unknown database is refused by the coordinator, naming the known.
    let out = ferry(
        &creds,
        &[
            "schedule",
            "add",
            "--app",
            APP,
            "--env",
            ENV,
            "--db",
            "nope",
            "--kind",
            "backup",
            "--cron",
            "0 2 * * *",
        ],
    );
    assert_ne!(out.status.code(), Some(0));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("has no database \"nope\"") && err.contains("main, other"),
        "{err}"
    );

    // The schedules' changes are in the audit log.
    let audit = c
        .operator()
        .await
        .unwrap()
        .list_audit(pb::ListAuditRequest {
            app: APP.into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .entries;
    for action in ["schedule.apply", "schedule.add", "schedule.remove"] {
        assert!(
            audit.iter().any(|e| e.action == action),
            "{action}: {audit:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_coordinators_on_one_postgres_store_fire_a_run_exactly_once() {
    let Some(url) = fresh_database().await else {
        return;
    };
    populate(&url);
    let Some(a) = TestCoordinator::start_on_postgres().await.unwrap() else {
        return;
    };
    let b = a.start_peer().await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let _agent = start_agent(&a, &dir.path().join("backups")).await;
    set_secret(&a, "DATABASE_URL", &url).await;
    let applied = apply(&b, &app_file("schedule = \"* * * * *\"")).await;
    let backup = applied
        .schedules
        .iter()
        .find(|s| s.kind == "backup")
        .unwrap()
        .clone();

    let s = ended_run(&a, &backup.id).await;
    assert_eq!(s.last_outcome, "succeeded", "{s:?}");
    // Counted while the next run is still ahead: one job, one backup.
    assert!(
        clear_of_next_run(&s, Duration::from_secs(5)),
        "the backup took most of a minute: {s:?}"
    );
    let jobs = jobs_of(&a, &backup.id, "backup").await;
    assert_eq!(jobs.len(), 1, "fired exactly once: {jobs:?}");
    assert_eq!(jobs[0].id, s.last_job_id);
    let scheduled: Vec<_> = backups(&b)
        .await
        .into_iter()
        .filter(|b| b.reason == "scheduled")
        .collect();
    assert_eq!(scheduled.len(), 1, "{scheduled:?}");
    // Both coordinators tell the same story.
    let seen_by_b = schedules(&b)
        .await
        .into_iter()
        .find(|x| x.id == backup.id)
        .unwrap();
    assert_eq!(
        (seen_by_b.last_job_id, seen_by_b.last_outcome),
        (s.last_job_id.clone(), "succeeded".to_string())
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_missed_while_the_coordinator_was_down_fires_once_on_return_marked_late() {
    let Some(url) = fresh_database().await else {
        return;
    };
    populate(&url);
    let Some(mut c) = TestCoordinator::start_on_postgres().await.unwrap() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let _agent = start_agent(&c, &dir.path().join("backups")).await;
    set_secret(&c, "DATABASE_URL", &url).await;
    // Hourly, at the minute five minutes before now: its next run is most
    // of an hour away.
    let minute = (ferry_common::time::now_ms() / 60_000 + 55) % 60;
    let applied = apply(&c, &app_file(&format!("schedule = \"{minute} * * * *\""))).await;
    let backup = applied
        .schedules
        .iter()
        .find(|s| s.kind == "backup")
        .unwrap()
        .clone();
    assert!(backup.last_run_at_ms == 0);

    // The coordinator goes down; while it is down, three runs come due:
    // the store is set as it would stand had the schedule been due three
    // hours ago (the time written is one of its real runs).
    c.stop().await.unwrap();
    let missed = backup.next_run_at_ms - 3 * 3_600_000;
    let changed = psql(
        c.store_location(),
        &format!(
            "UPDATE schedules SET next_run_at_ms = {missed} WHERE id = '{}' RETURNING id",
            backup.id
        ),
    );
    assert_eq!(changed, backup.id);
    c.restart().await.unwrap();

    let s = ended_run(&c, &backup.id).await;
    assert_eq!(s.last_outcome, "succeeded", "{s:?}");
    assert!(s.last_late, "a run fired after its grace is late: {s:?}");
    assert_eq!(s.last_scheduled_for_ms, missed);
    assert_eq!(
        s.next_run_at_ms, backup.next_run_at_ms,
        "the next run is the next one after now, not one of those missed"
    );
    // Once, not three times.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let jobs = jobs_of(&c, &backup.id, "backup").await;
    assert_eq!(jobs.len(), 1, "{jobs:?}");
    let out = {
        let creds = dir.path().join("admin.credentials");
        c.admin.save(&creds, false).unwrap();
        json_of(&ferry(
            &creds,
            &["schedule", "ls", "--app", APP, "--output", "json"],
        ))
    };
    let row = out
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["id"] == backup.id.as_str())
        .unwrap()
        .clone();
    assert_eq!(row["last_late"], true, "{row}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keep_last_is_applied_by_the_prune_schedule() {
    let Some(url) = fresh_database().await else {
        return;
    };
    populate(&url);
    let dir = tempfile::tempdir().unwrap();
    let c = TestCoordinator::start().await.unwrap();
    let _agent = start_agent(&c, &dir.path().join("backups")).await;
    set_secret(&c, "DATABASE_URL", &url).await;
    // No schedule in the file; keep_last = 1.
    let text = app_file("keep_last = 1");
    let applied = apply(&c, &text).await;
    assert!(applied.schedules.is_empty());

    // Three backups by hand.
    for _ in 0..3 {
        let jobs = c
            .operator()
            .await
            .unwrap()
            .run_backup(pb::RunBackupRequest {
                app: APP.into(),
                env: ENV.into(),
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner()
            .jobs;
        c.watch_to_end(&jobs[0].id, Duration::from_secs(60))
            .await
            .unwrap();
        assert_eq!(c.job(&jobs[0].id).await.unwrap().status, "succeeded");
    }
    let before = backups(&c).await;
    assert_eq!(before.len(), 3);
    let newest = before[0].clone();

    let prune = c
        .operator()
        .await
        .unwrap()
        .add_schedule(pb::AddScheduleRequest {
            app: APP.into(),
            env: ENV.into(),
            database: "main".into(),
            kind: "prune".into(),
            cron: "* * * * *".into(),
            timezone: String::new(),
        })
        .await
        .unwrap()
        .into_inner()
        .schedule
        .unwrap();
    assert_eq!(
        (prune.source.as_str(), prune.timezone.as_str()),
        ("manual", "UTC")
    );
    let s = ended_run(&c, &prune.id).await;
    assert_eq!(s.last_outcome, "succeeded", "{s:?}");
    assert!(!s.last_job_id.is_empty(), "a prune job ran: {s:?}");

    // Only the newest is left: file and catalogue entry; the others' files
    // are gone.
    let after = backups(&c).await;
    assert_eq!(
        after.iter().map(|b| b.id.as_str()).collect::<Vec<_>>(),
        [newest.id.as_str()]
    );
    assert!(Path::new(&newest.path).exists());
    for gone in &before[1..] {
        assert!(
            !Path::new(&gone.path).exists(),
            "{} still on disk",
            gone.path
        );
    }
}

/// (database, kind, source) of `app`'s production schedules, sorted.
async fn listed(c: &TestCoordinator, app: &str) -> Vec<(String, String, String)> {
    let mut ks: Vec<(String, String, String)> = c
        .operator()
        .await
        .unwrap()
        .list_schedules(pb::ListSchedulesRequest {
            app: app.into(),
            env: "production".into(),
        })
        .await
        .unwrap()
        .into_inner()
        .schedules
        .into_iter()
        .map(|s| (s.database, s.kind, s.source))
        .collect();
    ks.sort();
    ks
}

/// Starts a rollout of `file` to production and waits for its end.
async fn deploy(c: &TestCoordinator, file: &str, version: &str, dry_run: bool) -> pb::Rollout {
    let mut op = c.operator().await.unwrap();
    let r = op
        .start_rollout(pb::StartRolloutRequest {
            app_file: file.into(),
            file_name: "ferry.toml".into(),
            env: "production".into(),
            version: version.into(),
            dry_run,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .rollout
        .unwrap();
    if dry_run {
        return r;
    }
    let until = tokio::time::Instant::now() + Duration::from_secs(120);
    loop {
        let r = op
            .get_rollout(pb::GetRolloutRequest {
                rollout_id: r.id.clone(),
            })
            .await
            .unwrap()
            .into_inner()
            .rollout
            .unwrap();
        if r.status != "running" {
            return r;
        }
        assert!(tokio::time::Instant::now() < until, "{r:#?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_deploy_registers_the_app_files_schedules() {
    use ferry_integration_tests::docker::{self, AppCleanup};
    if !docker::available() {
        return;
    }
    let app = format!("sch{}", &uuid::Uuid::now_v7().simple().to_string()[24..]);
    let _cleanup = AppCleanup(app.clone());
    for v in ["v1", "v2"] {
        docker::build_busybox_site(&format!("{app}:{v}"), &[("health", v)]).unwrap();
    }
    let c = TestCoordinator::start().await.unwrap();
    let _a = c.enroll("vps-1", &[]).await.unwrap().start();
    c.wait_for_agent("vps-1", "online", Duration::from_secs(10))
        .await
        .unwrap();
    let file = |databases: &str| {
        format!(
            r#"app = "{app}"
[environments.production]
agents = ["vps-1"]
[services.web]
image = "{app}:{{version}}"
pull = "never"
ports = [8080]
strategy = "recreate"
[services.web.healthcheck]
http = "/health"
interval = "200ms"
timeout = "1s"
retries = 10
{databases}"#
        )
    };
    let with_schedules = file(
        "[databases.main]\nurl_secret = \"DATABASE_URL\"\n[databases.main.backup]\nschedule = \"0 2 * * *\"\ntimezone = \"Europe/Paris\"\nverify_schedule = \"0 4 * * 0\"\n",
    );

    assert_eq!(
        deploy(&c, &with_schedules, "v1", false).await.status,
        "succeeded"
    );
    let owned = |k: &str| ("main".to_string(), k.to_string(), "app-file".to_string());
    assert_eq!(
        listed(&c, &app).await,
        [owned("backup"), owned("prune"), owned("verify")]
    );
    // A dry run changes nothing; a deploy of a file without them removes them.
    deploy(&c, &file(""), "v2", true).await;
    assert_eq!(listed(&c, &app).await.len(), 3);
    assert_eq!(deploy(&c, &file(""), "v2", false).await.status, "succeeded");
    assert!(listed(&c, &app).await.is_empty());
}
