//! The conformance suite against both backends, plus what only a real
//! database shows: reopening, two coordinators starting at once, a failed
//! migration, corrupt rows, equivalent schemas and unusable locations; and
//! what several coordinators sharing a PostgreSQL store do to each other:
//! claims, notifications, leadership.
//!
//! PostgreSQL tests each get a fresh database on the server named by
//! `FERRY_TEST_DATABASE_URL` (`scripts/ensure-postgres.sh` provides one).

use std::collections::BTreeSet;
use std::future::Future;
use std::io::Write;
use std::path::Path;
use std::time::Duration;

use sqlx::postgres::PgConnection;
use sqlx::sqlite::{SqliteConnectOptions, SqliteConnection};
use sqlx::{AssertSqlSafe, Connection};
use uuid::Uuid;

use super::{
    Backend, IncomingEvent, JobFilter, JoinTokenRecord, NewAgent, NewJob, NewTask, Notification,
    Store, StoreError, conformance, open, postgres, sqlite,
};
use crate::job::{Outcome, TaskEvent, TaskState};

/// Rows no backend would write: an agent whose id is not a UUID and a token
/// whose labels are not a JSON object.
const CORRUPT_ROWS: &str = "
    INSERT INTO agents (id, name, hostname, labels_json, version, enrolled_at_ms, cert_serial, cert_not_after_ms)
    VALUES ('not-a-uuid', 'corrupt', 'h', '{}', 'v', 1, 's', 1);
    INSERT INTO join_tokens (token_hash, labels_json, created_by, created_at_ms, expires_at_ms)
    VALUES ('corrupt', '[\"not\", \"a\", \"map\"]', 'x', 1, 2);
";

async fn assert_corrupt_rows_reported(store: &Store) {
    let agents = store.list_agents().await;
    assert!(
        matches!(
            agents,
            Err(StoreError::Corrupt {
                table: "agents",
                ..
            })
        ),
        "{agents:?}"
    );
    let found = store.find_agent("corrupt").await;
    assert!(
        matches!(
            found,
            Err(StoreError::Corrupt {
                table: "agents",
                ..
            })
        ),
        "{found:?}"
    );
    let token = store.get_join_token("corrupt").await;
    assert!(
        matches!(
            token,
            Err(StoreError::Corrupt {
                table: "join_tokens",
                ..
            })
        ),
        "{token:?}"
    );
}

fn sqlite_location(dir: &Path) -> String {
    format!("sqlite://{}", dir.join("ferry.db").display())
}

#[tokio::test]
async fn sqlite_reopen_keeps_state() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("ferry.db");
    let store = Store::open_sqlite(&path).await.expect("open");
    assert!(store.bootstrap_admin("root", 1).await.expect("bootstrap"));
    drop(store);
    let store = Store::open_sqlite(&path).await.expect("reopen");
    assert!(!store.bootstrap_admin("root", 2).await.expect("bootstrap"));
    assert_eq!(store.list_operators().await.expect("list").len(), 1);
}

#[tokio::test]
async fn sqlite_reports_corrupt_rows() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("ferry.db");
    let store = Store::open_sqlite(&path).await.expect("open");
    let mut raw = SqliteConnection::connect_with(&SqliteConnectOptions::new().filename(&path))
        .await
        .expect("raw connection");
    sqlx::raw_sql(CORRUPT_ROWS)
        .execute(&mut raw)
        .await
        .expect("insert corrupt rows");
    assert_corrupt_rows_reported(&store).await;
}

#[tokio::test]
async fn open_refuses_unusable_locations() {
    for location in ["", "mysql://root@db/ferry"] {
        let err = open(location).await.err();
        assert!(
            matches!(err, Some(StoreError::BadUrl { .. })),
            "{location:?}: {err:?}"
        );
    }
    match open("postgres://ferry:hunter2@db:notaport/ferry")
        .await
        .err()
    {
        Some(err @ StoreError::BadUrl { .. }) => {
            assert!(
                !err.to_string().contains("hunter2"),
                "the password leaks: {err}"
            );
        }
        other => panic!("a malformed postgres URL gave {other:?}"),
    }
    let err = open("/nonexistent-ferry-dir/sub/ferry.db").await.err();
    assert!(
        matches!(&err, Some(StoreError::Database(_)))
            && err
                .as_ref()
                .is_some_and(|e| e.to_string().contains("unable to open")),
        "{err:?}"
    );
}

#[test]
fn every_migration_file_is_embedded() {
    for (backend, embedded) in [
        ("sqlite", sqlite::MIGRATIONS),
        ("postgres", postgres::MIGRATIONS),
    ] {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../migrations")
            .join(backend);
        let mut files: Vec<(i64, String, String)> = std::fs::read_dir(&dir)
            .expect("migrations directory")
            .map(|entry| entry.expect("entry").path())
            .filter(|path| path.extension().is_some_and(|ext| ext == "sql"))
            .map(|path| {
                let stem = path
                    .file_stem()
                    .expect("stem")
                    .to_string_lossy()
                    .into_owned();
                let (version, description) = stem.split_once('_').expect("NNNN_description.sql");
                let sql = std::fs::read_to_string(&path).expect("read migration");
                (
                    version.parse().expect("numeric version"),
                    description.into(),
                    sql,
                )
            })
            .collect();
        files.sort();
        let embedded: Vec<(i64, String, String)> = embedded
            .iter()
            .map(|&(version, description, sql)| (version, description.into(), sql.into()))
            .collect();
        assert_eq!(
            files, embedded,
            "migrations/{backend} and its embedded list differ"
        );
    }
}

/// The server to create test databases on. Outside CI a missing server
/// skips the PostgreSQL tests; in CI it fails them.
fn postgres_server() -> Option<String> {
    match std::env::var("FERRY_TEST_DATABASE_URL") {
        Ok(url) if !url.is_empty() => Some(url),
        _ if std::env::var_os("CI").is_some() => {
            panic!(
                "PostgreSQL is required in CI: set FERRY_TEST_DATABASE_URL (scripts/ensure-postgres.sh prints it)"
            )
        }
        _ => {
            // Straight to stderr: the test harness would swallow `eprintln!`.
            let _ = writeln!(
                std::io::stderr(),
                "skipped: set FERRY_TEST_DATABASE_URL (scripts/test.sh does)"
            );
            None
        }
    }
}

/// Runs `test` with the URL of a database created for it, and drops that
/// database afterwards even if `test` panics.
async fn with_fresh_database<F, Fut>(test: F)
where
    F: FnOnce(String) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    let Some(server) = postgres_server() else {
        return;
    };
    let url = conformance::fresh_postgres_database(&server)
        .await
        .expect("create test database");
    let name = url
        .rsplit('/')
        .next()
        .unwrap_or_default()
        .split('?')
        .next()
        .unwrap_or_default()
        .to_string();
    let mut admin = PgConnection::connect(&server)
        .await
        .expect("connect to FERRY_TEST_DATABASE_URL");
    let outcome = tokio::spawn(test(url)).await;
    sqlx::raw_sql(AssertSqlSafe(format!("DROP DATABASE {name} WITH (FORCE)")))
        .execute(&mut admin)
        .await
        .expect("drop test database");
    admin.close().await.expect("close");
    match outcome {
        Ok(()) => {}
        Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
        Err(e) => panic!("test task failed: {e}"),
    }
}

/// One test per behaviour of the conformance suite and backend, so a
/// failure names both: `conformance!(join_tokens)` makes
/// `join_tokens::sqlite` and `join_tokens::postgres`, each on a store of
/// its own (PostgreSQL: a fresh database, see [`with_fresh_database`]).
macro_rules! conformance {
    ($($behaviour:ident),* $(,)?) => {$(
        mod $behaviour {
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn sqlite() {
                let dir = tempfile::tempdir().expect("tempdir");
                let store = super::open(&super::sqlite_location(dir.path()))
                    .await
                    .expect("open");
                assert_eq!(store.backend(), super::Backend::Sqlite);
                super::conformance::$behaviour(&store).await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn postgres() {
                super::with_fresh_database(|url| async move {
                    let store = super::open(&url).await.expect("open");
                    assert_eq!(store.backend(), super::Backend::Postgres);
                    super::conformance::$behaviour(&store).await;
                })
                .await;
            }
        }
    )*};
}

conformance!(
    basics,
    bootstrap_admin_once,
    join_tokens,
    enrollment_refusals,
    names_and_revocation,
    agent_sessions,
    operators,
    audit_log,
    id_parts,
    concurrent_enrollment,
    secrets,
    concurrent_secret_writes,
    create_jobs,
    start_jobs,
    list_job_filters,
    claims,
    job_claims,
    transitions,
    agent_events,
    coordinator_events_and_paging,
    jobs_finish,
    concurrent_agent_events,
    cancellation,
    notifications,
    leadership,
    rollouts,
    rollout_cancel_requests,
    expiry,
    absent_agents,
    lost_then_reported,
    backups,
    schedules,
    newest_backups,
    migration_runs,
);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_coordinators_start_at_once() {
    with_fresh_database(|url| async move {
        let (a, b) = tokio::join!(Store::connect_postgres(&url), Store::connect_postgres(&url));
        let (a, b) = (
            a.expect("first coordinator"),
            b.expect("second coordinator"),
        );

        let (x, y) = tokio::join!(a.bootstrap_admin("root", 1), b.bootstrap_admin("root", 2));
        let added = [x.expect("bootstrap on a"), y.expect("bootstrap on b")];
        assert_eq!(added.iter().filter(|&&added| added).count(), 1, "{added:?}");
        assert_eq!(a.list_operators().await.expect("list").len(), 1);

        let token = JoinTokenRecord {
            token_hash: "shared".into(),
            name: None,
            labels: Default::default(),
            created_by: "root".into(),
            created_at_ms: 1,
            expires_at_ms: i64::MAX,
            used_at_ms: None,
            used_by: None,
        };
        a.insert_join_token(&token).await.expect("insert token");
        let agent = |name: &str| NewAgent {
            id: Uuid::now_v7(),
            name: name.into(),
            hostname: name.into(),
            labels: Default::default(),
            version: "0.1.0".into(),
            cert_serial: name.into(),
            cert_not_after_ms: 10,
        };
        let (on_a, on_b) = (agent("via-a"), agent("via-b"));
        let (x, y) = tokio::join!(
            a.enroll_agent("shared", 5, &on_a),
            b.enroll_agent("shared", 5, &on_b)
        );
        assert_eq!(
            [x.is_ok(), y.is_ok()].iter().filter(|&&ok| ok).count(),
            1,
            "{x:?} {y:?}"
        );
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_failed_migration_releases_its_lock() {
    with_fresh_database(|url| async move {
        let mut raw = PgConnection::connect(&url).await.expect("raw connection");
        sqlx::raw_sql("CREATE TABLE agents (squatter INT)")
            .execute(&mut raw)
            .await
            .expect("squat");
        let failed = Store::connect_postgres(&url).await.err();
        assert!(matches!(failed, Some(StoreError::Migrate(_))), "{failed:?}");

        sqlx::raw_sql("DROP TABLE agents")
            .execute(&mut raw)
            .await
            .expect("unsquat");
        let store = tokio::time::timeout(Duration::from_secs(30), Store::connect_postgres(&url))
            .await
            .expect("the failed migration still holds its advisory lock")
            .expect("connect after the failure");
        store.ping().await.expect("ping");
    })
    .await;
}

#[tokio::test]
async fn postgres_reports_corrupt_rows() {
    with_fresh_database(|url| async move {
        let store = Store::connect_postgres(&url).await.expect("connect");
        let mut raw = PgConnection::connect(&url).await.expect("raw connection");
        sqlx::raw_sql(CORRUPT_ROWS)
            .execute(&mut raw)
            .await
            .expect("insert corrupt rows");
        assert_corrupt_rows_reported(&store).await;
    })
    .await;
}

/// Both migrations must build the same tables, columns and indexes; the
/// queries differ only in placeholder syntax and a few functions.
#[tokio::test]
async fn postgres_schema_matches_sqlite() {
    with_fresh_database(|url| async move {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("ferry.db");
        Store::open_sqlite(&path).await.expect("open sqlite");
        Store::connect_postgres(&url).await.expect("connect postgres");

        let mut lite = SqliteConnection::connect_with(&SqliteConnectOptions::new().filename(&path))
            .await
            .expect("sqlite connection");
        let mut pg = PgConnection::connect(&url).await.expect("postgres connection");

        let lite_columns: BTreeSet<(String, String)> = sqlx::query_as(
            "SELECT m.name, p.name FROM sqlite_master m JOIN pragma_table_info(m.name) p \
             WHERE m.type = 'table' AND m.name NOT LIKE 'sqlite_%' AND m.name <> '_sqlx_migrations'",
        )
        .fetch_all(&mut lite)
        .await
        .expect("sqlite columns")
        .into_iter()
        .collect();
        let pg_columns: BTreeSet<(String, String)> = sqlx::query_as(
            "SELECT table_name::text, column_name::text FROM information_schema.columns \
             WHERE table_schema = 'public' AND table_name <> '_sqlx_migrations'",
        )
        .fetch_all(&mut pg)
        .await
        .expect("postgres columns")
        .into_iter()
        .collect();
        assert_eq!(lite_columns, pg_columns);

        let lite_indexes: BTreeSet<(String, String)> = sqlx::query_as(
            "SELECT tbl_name, name FROM sqlite_master WHERE type = 'index' AND name NOT LIKE 'sqlite_autoindex_%'",
        )
        .fetch_all(&mut lite)
        .await
        .expect("sqlite indexes")
        .into_iter()
        .collect();
        let pg_indexes: BTreeSet<(String, String)> = sqlx::query_as(
            "SELECT tablename::text, indexname::text FROM pg_indexes \
             WHERE schemaname = 'public' AND indexname NOT LIKE '%_pkey'",
        )
        .fetch_all(&mut pg)
        .await
        .expect("postgres indexes")
        .into_iter()
        .collect();
        assert_eq!(lite_indexes, pg_indexes);
    })
    .await;
}

/// Enrolls `n` agents through `store` and submits `jobs` jobs with a task
/// on each; returns the agents' ids and the tasks' ids.
async fn agents_with_work(store: &Store, n: usize, jobs: usize) -> (Vec<Uuid>, Vec<Uuid>) {
    // Unique per call, so a test may ask for work more than once.
    let round = &Uuid::now_v7().simple().to_string()[24..];
    let mut agents = Vec::new();
    for i in 0..n {
        let hash = format!("hash-{round}-{i}");
        store
            .insert_join_token(&JoinTokenRecord {
                token_hash: hash.clone(),
                name: None,
                labels: Default::default(),
                created_by: "root".into(),
                created_at_ms: 1,
                expires_at_ms: i64::MAX,
                used_at_ms: None,
                used_by: None,
            })
            .await
            .expect("insert token");
        let agent = NewAgent {
            id: Uuid::now_v7(),
            name: format!("agent-{round}-{i}"),
            hostname: format!("host-{i}"),
            labels: Default::default(),
            version: "0.1.0".into(),
            cert_serial: format!("serial-{i}"),
            cert_not_after_ms: i64::MAX,
        };
        agents.push(store.enroll_agent(&hash, 2, &agent).await.expect("enroll"));
    }
    let mut tasks = Vec::new();
    for j in 0..jobs {
        let job = NewJob {
            id: Uuid::now_v7(),
            kind: "deploy".into(),
            spec_json: "{}".into(),
            target_json: "{}".into(),
            created_by: "root".into(),
            idempotency_key: None,
            created_at_ms: 10 + j as i64,
            deadline_ms: i64::MAX,
            traceparent: String::new(),
        };
        let new_tasks: Vec<NewTask> = agents
            .iter()
            .map(|a| NewTask {
                id: Uuid::now_v7(),
                agent_id: a.id,
                agent_name: a.name.clone(),
            })
            .collect();
        tasks.extend(new_tasks.iter().map(|t| t.id));
        store
            .create_job(&job, &new_tasks)
            .await
            .expect("create job");
    }
    (agents.iter().map(|a| a.id).collect(), tasks)
}

/// Claims a few tasks at a time until none is left; returns each claimed
/// task with its `assigned_by`.
async fn drain(store: &Store, agents: &[Uuid], name: &str) -> Vec<(Uuid, Option<String>)> {
    let mut claimed = Vec::new();
    loop {
        let batch = store
            .claim_pending_tasks(agents, name, 100, 7)
            .await
            .expect("claim");
        if batch.is_empty() {
            return claimed;
        }
        claimed.extend(batch.into_iter().map(|(t, _)| (t.id, t.assigned_by)));
    }
}

/// Two coordinators claiming the same agents' work at once, a few tasks
/// at a time: every task is claimed, and by exactly one of them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_two_coordinators_never_claim_a_task_twice() {
    with_fresh_database(|url| async move {
        let (a, b) = (
            Store::connect_postgres(&url)
                .await
                .expect("first coordinator"),
            Store::connect_postgres(&url)
                .await
                .expect("second coordinator"),
        );
        // The claims only race if both coordinators get some of the work;
        // now and then one drains everything before the other starts, so
        // the race is run again (every round must claim each task once).
        let mut raced = false;
        for _ in 0..5 {
            let (agents, tasks) = agents_with_work(&a, 6, 40).await;
            let (by_a, by_b) =
                tokio::join!(drain(&a, &agents, "coord-a"), drain(&b, &agents, "coord-b"));
            let mut all: Vec<Uuid> = by_a.iter().chain(&by_b).map(|(id, _)| *id).collect();
            all.sort();
            let mut expected = tasks.clone();
            expected.sort();
            assert_eq!(all, expected, "every task claimed exactly once");
            for (id, by) in by_a.iter().chain(&by_b) {
                let task = a.get_task(*id).await.expect("get").expect("exists");
                assert_eq!(task.state, TaskState::Assigned);
                assert_eq!(task.attempt, 1, "claimed once");
                assert_eq!(&task.assigned_by, by);
            }
            if !by_a.is_empty() && !by_b.is_empty() {
                raced = true;
                break;
            }
        }
        assert!(
            raced,
            "in 5 rounds, one coordinator always got all the work"
        );
    })
    .await;
}

/// Claims a job's tasks for every agent, a few at a time, in one pass;
/// returns each claimed task with its `assigned_by`.
async fn drain_job(store: &Store, job: Uuid, name: &str) -> Vec<(Uuid, Option<String>)> {
    let mut claimed = Vec::new();
    let mut after = None;
    loop {
        let batch = store
            .claim_job_tasks(job, after, &|_| true, name, 100, 7)
            .await
            .expect("claim");
        claimed.extend(
            batch
                .claimed
                .into_iter()
                .map(|(t, _)| (t.id, t.assigned_by)),
        );
        match batch.next {
            Some(next) => after = Some(next),
            None => return claimed,
        }
    }
}

/// Two coordinators that both believe every agent is theirs claim one
/// job's tasks at once: the look before locking does not make them claim a
/// task twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_two_coordinators_never_claim_a_job_task_twice() {
    with_fresh_database(|url| async move {
        let (a, b) = (
            Store::connect_postgres(&url)
                .await
                .expect("first coordinator"),
            Store::connect_postgres(&url)
                .await
                .expect("second coordinator"),
        );
        let (_, tasks) = agents_with_work(&a, 120, 1).await;
        let job = a
            .get_task(tasks[0])
            .await
            .expect("get")
            .expect("exists")
            .job_id;
        let (by_a, by_b) =
            tokio::join!(drain_job(&a, job, "coord-a"), drain_job(&b, job, "coord-b"));
        let mut all: Vec<Uuid> = by_a.iter().chain(&by_b).map(|(id, _)| *id).collect();
        all.sort();
        let mut expected = tasks.clone();
        expected.sort();
        assert_eq!(all, expected, "every task claimed exactly once");
        for (id, by) in by_a.iter().chain(&by_b) {
            let task = a.get_task(*id).await.expect("get").expect("exists");
            assert_eq!(task.state, TaskState::Assigned);
            assert_eq!(task.attempt, 1, "claimed once");
            assert_eq!(&task.assigned_by, by);
        }
        let events = a.job_events_after(job, 0, 10_000).await.expect("events");
        assert_eq!(events.len(), tasks.len(), "one assignment event per task");
    })
    .await;
}

/// One coordinator claims work and stores its agents' events while another
/// cancels the jobs and sweeps for absent agents, on the same rows: no
/// transaction deadlocks or fails, and the event log stays whole.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_concurrent_writers_do_not_deadlock() {
    with_fresh_database(|url| async move {
        let (a, b) = (
            Store::connect_postgres(&url)
                .await
                .expect("first coordinator"),
            Store::connect_postgres(&url)
                .await
                .expect("second coordinator"),
        );
        let (agents, _) = agents_with_work(&a, 5, 12).await;
        let jobs: Vec<Uuid> = a
            .list_jobs(&JobFilter::default())
            .await
            .expect("list")
            .into_iter()
            .map(|j| j.id)
            .collect();
        let work = async {
            let mut seqs = std::collections::HashMap::<Uuid, u64>::new();
            loop {
                let claimed = a
                    .claim_pending_tasks(&agents, "coord-a", 100, 4)
                    .await
                    .expect("claim");
                if claimed.is_empty() {
                    return;
                }
                let mut batch = Vec::new();
                for (task, _) in &claimed {
                    for _ in 0..3 {
                        let seq = seqs.entry(task.id).or_default();
                        *seq += 1;
                        batch.push(IncomingEvent {
                            task_id: task.id,
                            attempt: task.attempt,
                            seq: *seq,
                            at_ms: 100,
                            body: vec![1, 2, 3],
                            machine_event: if *seq == 3 {
                                TaskEvent::Finished(Outcome::Succeeded)
                            } else {
                                TaskEvent::Reported
                            },
                            message: None,
                            result_json: None,
                        });
                    }
                }
                a.append_agent_events(&batch, 100).await.expect("append");
            }
        };
        let interfere = async {
            for (i, job) in jobs.iter().enumerate() {
                if i % 2 == 0 {
                    b.request_cancel(*job, 100).await.expect("cancel");
                }
                b.mark_tasks_of_absent_agents_lost(50, 100)
                    .await
                    .expect("mark lost");
                b.append_coordinator_event(*job, None, b"note", 100)
                    .await
                    .expect("coordinator event");
            }
        };
        tokio::join!(work, interfere);
        for job in jobs {
            let events = a.job_events_after(job, 0, 10_000).await.expect("events");
            let seqs: Vec<u64> = events.iter().map(|e| e.seq).collect();
            assert_eq!(seqs, (1..=events.len() as u64).collect::<Vec<_>>());
            for task in a.list_tasks(job).await.expect("tasks") {
                let stored: Vec<u64> = events
                    .iter()
                    .filter(|e| e.task_id == Some(task.id))
                    .filter_map(|e| e.task_seq)
                    .collect();
                assert_eq!(stored, (1..=task.last_seq).collect::<Vec<_>>());
            }
        }
    })
    .await;
}

async fn receive(rx: &mut tokio::sync::broadcast::Receiver<Notification>) -> Option<Notification> {
    tokio::time::timeout(Duration::from_secs(10), rx.recv())
        .await
        .ok()
        .map(|received| received.expect("receive"))
}

/// A notification on one coordinator reaches the subscribers of another,
/// and of itself; after the listener's connection is killed, it comes back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_notifications_reach_other_coordinators() {
    with_fresh_database(|url| async move {
        let (a, b) = (
            Store::connect_postgres(&url)
                .await
                .expect("first coordinator"),
            Store::connect_postgres(&url)
                .await
                .expect("second coordinator"),
        );
        let (mut on_a, mut on_b) = (a.subscribe(), b.subscribe());
        let job = Uuid::now_v7();
        a.notify(Notification::JobSubmitted(job))
            .await
            .expect("notify");
        assert_eq!(
            receive(&mut on_b).await,
            Some(Notification::JobSubmitted(job))
        );
        assert_eq!(
            receive(&mut on_a).await,
            Some(Notification::JobSubmitted(job))
        );
        let (task, agent) = (Uuid::now_v7(), Uuid::now_v7());
        b.notify(Notification::CancelTask { task, agent })
            .await
            .expect("notify");
        assert_eq!(
            receive(&mut on_a).await,
            Some(Notification::CancelTask { task, agent })
        );

        // Kill both listeners' connections: they reconnect and listen again.
        let mut raw = PgConnection::connect(&url).await.expect("raw connection");
        let killed: Vec<bool> = sqlx::query_scalar(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
             WHERE datname = current_database() AND query LIKE 'LISTEN%'",
        )
        .fetch_all(&mut raw)
        .await
        .expect("terminate listeners");
        assert_eq!(killed, vec![true, true]);
        // Each store tells its subscribers that they may have missed
        // something, so they look at the store again.
        for rx in [&mut on_a, &mut on_b] {
            tokio::time::timeout(Duration::from_secs(10), async {
                // Skipping what was heard before the kill.
                while rx.recv().await.expect("the channel is open") != Notification::Missed {}
            })
            .await
            .expect("told within 10 s");
        }
        // Notifications sent while a listener is away are lost: send until
        // one arrives.
        let again = Uuid::now_v7();
        let heard = tokio::time::timeout(Duration::from_secs(20), async {
            loop {
                b.notify(Notification::JobEvents(again))
                    .await
                    .expect("notify");
                if let Ok(Ok(n)) =
                    tokio::time::timeout(Duration::from_millis(200), on_a.recv()).await
                    && n != Notification::Missed
                {
                    return n;
                }
            }
        })
        .await
        .expect("the listener came back");
        assert_eq!(heard, Notification::JobEvents(again));
    })
    .await;
}

/// Dropping a store ends its listener: subscribers see the channel close.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_dropped_store_stops_listening() {
    with_fresh_database(|url| async move {
        let store = Store::connect_postgres(&url).await.expect("connect");
        let mut rx = store.subscribe();
        drop(store);
        let closed = tokio::time::timeout(Duration::from_secs(10), rx.recv())
            .await
            .expect("the listener task ended");
        assert!(
            matches!(
                closed,
                Err(tokio::sync::broadcast::error::RecvError::Closed)
            ),
            "{closed:?}"
        );
        // Its connection goes too.
        let mut raw = PgConnection::connect(&url).await.expect("raw connection");
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        loop {
            let listening: i64 = sqlx::query_scalar(
                "SELECT count(*) FROM pg_stat_activity \
                 WHERE datname = current_database() AND query LIKE 'LISTEN%'",
            )
            .fetch_one(&mut raw)
            .await
            .expect("count listeners");
            if listening == 0 {
                break;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "the listener's connection stays open"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await;
}

/// Of two coordinators exactly one leads; when it goes, the other takes
/// over. A leader that stops renewing its lease while its process and
/// connections stay up (SIGSTOP, a VM pause, a partition) loses it within
/// the lease, and cannot take it back from the new leader.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_one_leader_at_a_time() {
    with_fresh_database(|url| async move {
        let (a, b) = (
            Store::connect_postgres(&url)
                .await
                .expect("first coordinator"),
            Store::connect_postgres(&url)
                .await
                .expect("second coordinator"),
        );
        let (x, y) = tokio::join!(a.try_lead(), b.try_lead());
        let (x, y) = (x.expect("a tries"), y.expect("b tries"));
        assert!(x ^ y, "exactly one leads: {x} {y}");
        let (leader, other) = if x { (a, b) } else { (b, a) };
        // While the leader renews, the other never leads.
        for _ in 0..5 {
            assert!(leader.try_lead().await.expect("leader renews"));
            assert!(!other.try_lead().await.expect("other tries"));
            tokio::time::sleep(Duration::from_millis(100)).await;
        }

        // The leader freezes: it stops renewing, its connections stay open.
        let frozen_at = tokio::time::Instant::now();
        while !other.try_lead().await.expect("other tries") {
            assert!(
                frozen_at.elapsed() < super::postgres::LEADER_LEASE + Duration::from_secs(2),
                "the other coordinator did not take over within the lease"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        assert!(
            frozen_at.elapsed() >= super::postgres::LEADER_LEASE - Duration::from_millis(600),
            "taken over before the lease ran out: {:?}",
            frozen_at.elapsed()
        );
        // Thawed, the old leader finds it is no longer one.
        assert!(!leader.try_lead().await.expect("old leader tries"));
        assert!(other.try_lead().await.expect("new leader renews"));
    })
    .await;
}

#[tokio::test]
async fn sqlite_always_leads() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = Store::open_sqlite(&dir.path().join("ferry.db"))
        .await
        .expect("open");
    assert!(store.try_lead().await.expect("try lead"));
    let mut rx = store.subscribe();
    drop(store);
    assert!(matches!(
        rx.recv().await,
        Err(tokio::sync::broadcast::error::RecvError::Closed)
    ));
}

/// SQLite rebuilds the rollouts table in migration 9 (to widen its
/// CHECKs): a store of migration 7 keeps every rollout, the links between
/// them and the deploy lock, and takes the new words.
#[tokio::test]
async fn sqlite_rollouts_survive_the_rebuild_of_migration_8() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("ferry.db");
    {
        let pool = sqlx::sqlite::SqlitePoolOptions::new()
            .connect_with(
                SqliteConnectOptions::new()
                    .filename(&path)
                    .create_if_missing(true)
                    .foreign_keys(true),
            )
            .await
            .expect("open");
        super::rows::migrator(&sqlite::MIGRATIONS[..7])
            .run(&pool)
            .await
            .expect("migrations 1-7");
        sqlx::raw_sql(
            "INSERT INTO rollouts (id, app, env, version, kind, status, protected, spec_json, \
             plan_json, created_by, created_at_ms, updated_at_ms, lease_expires_at_ms, traceparent) \
             VALUES ('0190a000-0000-7000-8000-000000000001', 'shop', 'prod', '1.0', 'deploy', \
             'succeeded', 1, '{}', '{}', 'alice', 1, 1, 1, 't'); \
             INSERT INTO rollouts (id, app, env, version, kind, status, protected, spec_json, \
             plan_json, previous_id, previous_version, created_by, created_at_ms, updated_at_ms, \
             lease_expires_at_ms, traceparent) \
             VALUES ('0190a000-0000-7000-8000-000000000002', 'shop', 'prod', '1.1', 'deploy', \
             'running', 1, '{}', '{}', '0190a000-0000-7000-8000-000000000001', '1.0', 'alice', \
             2, 2, 2, 't');",
        )
        .execute(&pool)
        .await
        .expect("rollouts of migration 7");
        pool.close().await;
    }
    let store = Store::open_sqlite(&path).await.expect("migrate to 8");
    let first = Uuid::parse_str("0190a000-0000-7000-8000-000000000001").unwrap();
    let second = Uuid::parse_str("0190a000-0000-7000-8000-000000000002").unwrap();
    let got = store.get_rollout(second).await.unwrap().expect("kept");
    assert_eq!(got.previous_id, Some(first));
    assert_eq!(got.cancel_requested_by, None);
    assert_eq!(store.list_rollouts("shop", None, 0).await.unwrap().len(), 2);
    // The lock survived: a second running rollout of (shop, prod) is refused.
    let mut again = got.clone();
    again.id = Uuid::now_v7();
    assert!(matches!(
        store.create_rollout(&again).await,
        Err(StoreError::RolloutInProgress { .. })
    ));
    // A cancel request and the new words are taken.
    let asked = store
        .request_rollout_cancel(second, "bob", 3)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(asked.cancel_requested_by.as_deref(), Some("bob"));
    let update = super::RolloutUpdate {
        steps_json: "[]".into(),
        message: "stopped".into(),
        status: super::RolloutStatus::Cancelled,
        lease_expires_at_ms: 10,
    };
    let super::db::Pool::Sqlite(pool) = &store.pool else {
        unreachable!("an SQLite store")
    };
    // Its keys point at the new table itself, not at the one renamed aside.
    let parents: Vec<(String,)> =
        sqlx::query_as("SELECT \"table\" FROM pragma_foreign_key_list('rollouts')")
            .fetch_all(pool)
            .await
            .unwrap();
    assert_eq!(
        parents,
        [("rollouts".to_string(),), ("rollouts".to_string(),)]
    );
    sqlx::raw_sql(
        "UPDATE rollouts SET owner = 'c' WHERE id = '0190a000-0000-7000-8000-000000000002'",
    )
    .execute(pool)
    .await
    .unwrap();
    assert!(store.update_rollout(second, "c", &update, 4).await.unwrap());
}
