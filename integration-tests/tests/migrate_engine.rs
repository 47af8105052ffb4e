//! The migration engine (`ferry_agent::migrate`) on the real PostgreSQL of
//! `scripts/ensure-postgres.sh`: 200 tenant databases migrated and re-run
//! as a no-op; a broken tenant left exactly at its previous version with its
//! lock released; two runs at once on one database; SQL as written (dollar
//! quotes, `DO`, `COPY … FROM stdin`, `-- no-transaction` `CREATE INDEX
//! CONCURRENTLY`); each layout's order; a dry run that leaves the schema
//! byte for byte as it was; adoption of `_sqlx_migrations` (written by
//! sqlx's own migrator) and `_prisma_migrations`; cancellation.
//!
//! Every database a test creates is named `ferry_mig_<unique>_…` and dropped
//! at its end, also when it fails.

use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use ferry_agent::migrate::{
    self, DatabaseReport, Files, Filter, Layout, LedgerName, MigrationSet, OnFailure, Progress,
    Request, Role, RunReport, Settings, Target, TenantSource, Tenants,
};
use ferry_common::status::MigrationStatus;
use futures::FutureExt;
use sqlx::{Connection, PgConnection};
use tokio_util::sync::CancellationToken;

/// The test server, and every database a test made on it.
struct Pg {
    server: String,
    prefix: String,
    created: Mutex<Vec<String>>,
}

impl Pg {
    fn url(&self, db: &str) -> String {
        ferry_coordinator::store::conformance::database_url(&self.server, db)
    }

    fn name(&self, label: &str) -> String {
        format!("{}_{label}", self.prefix)
    }

    /// Creates the databases, four at a time (a database is a copy of the
    /// template; four sessions make that ~4× faster on this server).
    async fn create(&self, labels: &[String]) -> Vec<String> {
        let names: Vec<String> = labels.iter().map(|l| self.name(l)).collect();
        self.created.lock().unwrap().extend(names.iter().cloned());
        let chunks: Vec<Vec<String>> = names
            .chunks(names.len().div_ceil(4).max(1))
            .map(<[String]>::to_vec)
            .collect();
        let mut tasks = Vec::new();
        for chunk in chunks {
            let server = self.server.clone();
            tasks.push(tokio::spawn(async move {
                let mut admin = PgConnection::connect(&server).await.unwrap();
                for name in chunk {
                    sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
                        "CREATE DATABASE {name} STRATEGY FILE_COPY"
                    )))
                    .execute(&mut admin)
                    .await
                    .unwrap();
                }
                admin.close().await.unwrap();
            }));
        }
        for t in tasks {
            t.await.unwrap();
        }
        names
    }

    async fn create_one(&self, label: &str) -> String {
        self.create(&[label.to_owned()]).await.remove(0)
    }

    async fn conn(&self, db: &str) -> PgConnection {
        PgConnection::connect(&self.url(db)).await.unwrap()
    }

    /// Drops every database the test made, four sessions at a time.
    async fn drop_all(&self) {
        let names = std::mem::take(&mut *self.created.lock().unwrap());
        let mut tasks = Vec::new();
        for chunk in names.chunks(names.len().div_ceil(4).max(1)) {
            let (server, chunk) = (self.server.clone(), chunk.to_vec());
            tasks.push(tokio::spawn(async move {
                let Ok(mut admin) = PgConnection::connect(&server).await else {
                    return;
                };
                for name in chunk {
                    let _ = sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
                        "DROP DATABASE IF EXISTS {name} WITH (FORCE)"
                    )))
                    .execute(&mut admin)
                    .await;
                }
                let _ = admin.close().await;
            }));
        }
        for t in tasks {
            let _ = t.await;
        }
    }
}

/// Runs `body` against the test server, then drops what it created, also
/// when it panicked. Skips (saying so) without a server, unless in CI.
async fn with_pg<F, Fut>(body: F)
where
    F: FnOnce(Arc<Pg>) -> Fut,
    Fut: Future<Output = ()>,
{
    let server = match std::env::var("FERRY_TEST_DATABASE_URL") {
        Ok(url) if !url.is_empty() => url,
        _ if std::env::var_os("CI").is_some() => panic!(
            "FERRY_TEST_DATABASE_URL is not set, and PostgreSQL tests must run in CI (scripts/test.sh starts a server)"
        ),
        _ => {
            eprintln!(
                "skipped: set FERRY_TEST_DATABASE_URL (scripts/test.sh does) to run PostgreSQL tests"
            );
            return;
        }
    };
    let unique = uuid::Uuid::now_v7().simple().to_string();
    let pg = Arc::new(Pg {
        server,
        prefix: format!("ferry_mig_{}", &unique[unique.len() - 12..]),
        created: Mutex::new(Vec::new()),
    });
    let result = AssertUnwindSafe(body(pg.clone())).catch_unwind().await;
    pg.drop_all().await;
    if let Err(panic) = result {
        std::panic::resume_unwind(panic);
    }
}

fn files(list: &[(&str, &str)]) -> Files {
    list.iter()
        .map(|(n, t)| (n.to_string(), t.as_bytes().to_vec()))
        .collect()
}

fn set(layout: Layout, list: &[(&str, &str)]) -> Arc<MigrationSet> {
    Arc::new(migrate::load(layout, &files(list)).unwrap())
}

fn quiet() -> Arc<migrate::ProgressFn> {
    Arc::new(|_| {})
}

fn target(pg: &Pg, db: &str) -> Target {
    Target {
        database: db.to_owned(),
        url: pg.url(db),
        role: Role::Main,
        tenant_id: None,
    }
}

async fn one(pg: &Pg, db: &str, set: &MigrationSet, settings: &Settings) -> DatabaseReport {
    migrate::run_database(
        &target(pg, db),
        set,
        settings,
        &|_| {},
        &CancellationToken::new(),
    )
    .await
}

fn versions(r: &DatabaseReport) -> Vec<&str> {
    r.applied.iter().map(|a| a.version.as_str()).collect()
}

async fn ledger_versions(conn: &mut PgConnection) -> Vec<String> {
    sqlx::query_scalar("SELECT version FROM ferry.migrations ORDER BY applied_at, version")
        .fetch_all(conn)
        .await
        .unwrap()
}

async fn scalar_i64(conn: &mut PgConnection, sql: &'static str) -> i64 {
    sqlx::query_scalar(sql).fetch_one(conn).await.unwrap()
}

/// Advisory locks held in `db`, seen from any session on the server.
async fn advisory_locks(pg: &Pg, db: &str) -> i64 {
    let mut c = PgConnection::connect(&pg.server).await.unwrap();
    let n = sqlx::query_scalar(
        "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' \
         AND database = (SELECT oid FROM pg_database WHERE datname = $1)",
    )
    .bind(db)
    .fetch_one(&mut c)
    .await
    .unwrap();
    c.close().await.unwrap();
    n
}

/// The main database's migrations: the tenant table, and the tenants.
fn main_set(tenants: &[String]) -> Arc<MigrationSet> {
    let values: Vec<String> = tenants.iter().map(|t| format!("('{t}')")).collect();
    let register = format!(
        "INSERT INTO tenant (db_name) VALUES {};",
        values.join(",\n")
    );
    set(
        Layout::Sqlx,
        &[
            (
                "1_tenant.sql",
                "CREATE TABLE tenant (id serial PRIMARY KEY, db_name text NOT NULL UNIQUE);",
            ),
            ("2_register.sql", &register),
        ],
    )
}

const TENANT_V1: &str = "
CREATE TABLE accounts (id bigserial PRIMARY KEY, name text NOT NULL, balance numeric NOT NULL DEFAULT 0);
-- a function whose body holds semicolons
CREATE FUNCTION accounts_touch() RETURNS trigger LANGUAGE plpgsql AS $fn$
BEGIN
    NEW.name := trim(NEW.name); -- ; inside the body
    RETURN NEW;
END;
$fn$;
CREATE TRIGGER accounts_touch BEFORE INSERT ON accounts FOR EACH ROW EXECUTE FUNCTION accounts_touch();
";

fn tenants_request(
    pg: &Pg,
    main: &str,
    main_set: Arc<MigrationSet>,
    tenant_set: Arc<MigrationSet>,
) -> Request {
    Request {
        main_url: pg.url(main),
        migrations: main_set,
        tenants: Some(Tenants {
            source: TenantSource {
                query: "SELECT id, db_name FROM tenant ORDER BY id".into(),
                id_column: Some("id".into()),
                url_template: None,
            },
            migrations: Some(tenant_set),
        }),
        filter: Filter::default(),
        settings: Settings::default(),
        concurrency: migrate::DEFAULT_CONCURRENCY,
        on_failure: OnFailure::Stop,
    }
}

fn statuses(r: &RunReport) -> Vec<(String, MigrationStatus)> {
    r.databases
        .iter()
        .map(|d| (d.database.clone(), d.status))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_hundred_tenants_are_migrated_and_a_second_run_is_a_no_op() {
    with_pg(|pg| async move {
        let labels: Vec<String> = (0..200).map(|i| format!("t{i:03}")).collect();
        let clock = std::time::Instant::now();
        let main = pg.create_one("main").await;
        let tenants = pg.create(&labels).await;
        eprintln!("created 201 databases in {:.1?}", clock.elapsed());
        let tenant_set = set(
            Layout::Sqlx,
            &[
                ("1_accounts.sql", TENANT_V1),
                (
                    "2_seed.sql",
                    "INSERT INTO accounts (name, balance) VALUES ('  opening  ', 0);",
                ),
                (
                    "3_index.sql",
                    "CREATE INDEX accounts_name ON accounts (name);",
                ),
            ],
        );
        let events = Arc::new(Mutex::new(Vec::new()));
        let seen = events.clone();
        let progress: Arc<migrate::ProgressFn> = Arc::new(move |p| seen.lock().unwrap().push(p));
        let req = tenants_request(&pg, &main, main_set(&tenants), tenant_set.clone());

        let clock = std::time::Instant::now();
        let first = migrate::run(req.clone(), progress.clone(), CancellationToken::new())
            .await
            .unwrap();
        eprintln!(
            "first run (main + 200 tenants, 3 migrations each): {:.1?}",
            clock.elapsed()
        );
        assert!(first.ok(), "{:#?}", first.failed().collect::<Vec<_>>());
        assert_eq!(first.databases.len(), 201);
        assert_eq!(first.databases[0].database, main);
        assert_eq!(first.databases[0].role, Role::Main);
        assert_eq!(versions(&first.databases[0]), ["1", "2"]);
        for (r, name) in first.databases[1..].iter().zip(&tenants) {
            assert_eq!(&r.database, name, "tenants reported in the query's order");
            assert_eq!(r.status, MigrationStatus::Applied);
            assert_eq!(versions(r), ["1", "2", "3"]);
            assert!(r.tenant_id.is_some());
        }
        {
            let events = events.lock().unwrap();
            let started = events
                .iter()
                .filter(|e| matches!(e, Progress::MigrationStarted { .. }))
                .count();
            assert_eq!(started, 2 + 200 * 3);
            let finished: Vec<(usize, usize)> = events
                .iter()
                .filter_map(|e| match e {
                    Progress::DatabaseFinished { done, total, .. } => Some((*done, *total)),
                    _ => None,
                })
                .collect();
            assert_eq!(finished.len(), 201);
            assert_eq!(finished.last(), Some(&(201, 201)));
        }

        // Every ledger matches the files, and the SQL really ran.
        for name in &tenants {
            let mut c = pg.conn(name).await;
            let rows: Vec<(String, String)> = sqlx::query_as(
                "SELECT version, checksum FROM ferry.migrations ORDER BY version::int",
            )
            .fetch_all(&mut c)
            .await
            .unwrap();
            let want: Vec<(String, String)> = tenant_set
                .migrations
                .iter()
                .map(|m| (m.version.clone(), m.checksum.clone()))
                .collect();
            assert_eq!(rows, want, "{name}");
            let trimmed: String = sqlx::query_scalar("SELECT name FROM accounts")
                .fetch_one(&mut c)
                .await
                .unwrap();
            assert_eq!(trimmed, "opening", "{name}: the trigger's function ran");
            c.close().await.unwrap();
        }

        let clock = std::time::Instant::now();
        let second = migrate::run(req, quiet(), CancellationToken::new())
            .await
            .unwrap();
        eprintln!("second run (no-op): {:.1?}", clock.elapsed());
        assert!(second.ok());
        assert_eq!(second.databases.len(), 201);
        for r in &second.databases {
            assert_eq!(r.status, MigrationStatus::UpToDate, "{}", r.database);
            assert!(r.applied.is_empty() && r.pending.is_empty());
        }
        let mut c = pg.conn(&tenants[17]).await;
        assert_eq!(ledger_versions(&mut c).await, ["1", "2", "3"]);
        assert_eq!(
            scalar_i64(&mut c, "SELECT count(*) FROM accounts").await,
            1,
            "seed ran once"
        );
        c.close().await.unwrap();
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broken_tenant_stays_at_its_previous_version_with_its_lock_released() {
    with_pg(|pg| async move {
        let labels: Vec<String> = (0..6).map(|i| format!("b{i}")).collect();
        let main = pg.create_one("main").await;
        let tenants = pg.create(&labels).await;
        let v1 = set(Layout::Sqlx, &[("1_accounts.sql", TENANT_V1)]);
        let mut req = tenants_request(&pg, &main, main_set(&tenants), v1);
        req.concurrency = 1;
        assert!(
            migrate::run(req.clone(), quiet(), CancellationToken::new())
                .await
                .unwrap()
                .ok()
        );

        // Tenant 2 holds a row that the next migration's constraint refuses,
        // after that migration already created a table.
        let bad = &tenants[2];
        let mut c = pg.conn(bad).await;
        sqlx::raw_sql("INSERT INTO accounts (name, balance) VALUES ('overdrawn', -5)")
            .execute(&mut c)
            .await
            .unwrap();
        let v2 = set(
            Layout::Sqlx,
            &[
                ("1_accounts.sql", TENANT_V1),
                (
                    "2_positive_balance.sql",
                    "CREATE TABLE audit (at timestamptz DEFAULT now());\n\
                     ALTER TABLE accounts ADD CONSTRAINT positive CHECK (balance >= 0);\n",
                ),
            ],
        );
        req.tenants.as_mut().unwrap().migrations = Some(v2);
        let run = migrate::run(req.clone(), quiet(), CancellationToken::new())
            .await
            .unwrap();
        assert!(!run.ok());
        let s = statuses(&run);
        assert_eq!(s[0].1, MigrationStatus::UpToDate, "main");
        assert_eq!(s[1].1, MigrationStatus::Applied);
        assert_eq!(s[2].1, MigrationStatus::Applied);
        assert_eq!(s[3], (bad.clone(), MigrationStatus::Failed));
        for later in &s[4..] {
            assert_eq!(
                later.1,
                MigrationStatus::Skipped,
                "{later:?}: stop on the first failure"
            );
        }
        let failed: Vec<&DatabaseReport> = run.failed().collect();
        assert_eq!(failed.len(), 1);
        let error = failed[0].error.as_deref().unwrap();
        assert!(
            error.contains(bad)
                && error.contains("2_positive_balance.sql")
                && error.contains("positive"),
            "{error}"
        );
        assert_eq!(failed[0].pending, ["2"]);
        assert_eq!(failed[0].previously_applied, ["1"]);

        // Exactly at its previous version: the failing migration rolled back
        // whole (its first statement too), the ledger unchanged.
        assert_eq!(ledger_versions(&mut c).await, ["1"]);
        assert_eq!(
            scalar_i64(
                &mut c,
                "SELECT count(*) FROM pg_class WHERE relname = 'audit'"
            )
            .await,
            0
        );
        c.close().await.unwrap();
        // Its lock is released: none held, and a new run starts at once.
        assert_eq!(advisory_locks(&pg, bad).await, 0);
        let mut again = req.clone();
        again.filter = Filter {
            tenants: vec![bad.clone()],
            skip_main: true,
            ..Default::default()
        };
        again.settings.lock_wait = Duration::ZERO;
        let r = migrate::run(again, quiet(), CancellationToken::new())
            .await
            .unwrap();
        assert_eq!(r.databases.len(), 1);
        let err = r.databases[0].error.as_deref().unwrap();
        assert!(err.contains("positive") && !err.contains("lock"), "{err}");

        // --continue-on-error migrates every other tenant.
        let mut all = req.clone();
        all.on_failure = OnFailure::Continue;
        all.concurrency = 3;
        let r = migrate::run(all, quiet(), CancellationToken::new())
            .await
            .unwrap();
        let s = statuses(&r);
        assert_eq!(s[3], (bad.clone(), MigrationStatus::Failed));
        for (i, (db, st)) in s.iter().enumerate().skip(1) {
            if i != 3 {
                assert!(
                    matches!(st, MigrationStatus::Applied | MigrationStatus::UpToDate),
                    "{db}: {st}"
                );
            }
        }
        for name in &tenants[3..] {
            let mut c = pg.conn(name).await;
            assert_eq!(ledger_versions(&mut c).await, ["1", "2"], "{name}");
            c.close().await.unwrap();
        }

        // Filters: by id, main only.
        let mut by_id = req.clone();
        let id_of_4 = r.databases[5].tenant_id.clone().unwrap();
        by_id.filter = Filter {
            tenant_ids: vec![id_of_4],
            ..Default::default()
        };
        by_id.settings.dry_run = true;
        let r = migrate::run(by_id, quiet(), CancellationToken::new())
            .await
            .unwrap();
        let names: Vec<&str> = r.databases.iter().map(|d| d.database.as_str()).collect();
        assert_eq!(names, [main.as_str(), tenants[4].as_str()]);
        let mut main_only = req.clone();
        main_only.filter = Filter {
            main_only: true,
            ..Default::default()
        };
        let r = migrate::run(main_only, quiet(), CancellationToken::new())
            .await
            .unwrap();
        assert_eq!(r.databases.len(), 1);
        let mut unknown = req.clone();
        unknown.filter = Filter {
            tenants: vec!["no_such_tenant".into()],
            ..Default::default()
        };
        let err = migrate::run(unknown, quiet(), CancellationToken::new())
            .await
            .unwrap_err();
        assert!(err.to_string().contains("--tenant no_such_tenant"), "{err}");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_runs_at_once_on_one_database_never_both_apply() {
    with_pg(|pg| async move {
        let db = pg.create_one("race").await;
        let s = set(
            Layout::Sqlx,
            &[
                (
                    "1_slow.sql",
                    "CREATE TABLE hits (n int); SELECT pg_sleep(0.7);",
                ),
                ("2_hit.sql", "INSERT INTO hits VALUES (1);"),
            ],
        );
        let settings = Settings::default();
        let (a, b) = tokio::join!(one(&pg, &db, &s, &settings), one(&pg, &db, &s, &settings));
        let mut both = [a, b];
        both.sort_by_key(|r| r.applied.len());
        assert_eq!(
            both[0].status,
            MigrationStatus::UpToDate,
            "{:?}",
            both[0].error
        );
        assert!(
            both[0].applied.is_empty(),
            "the second run waited, then found nothing pending"
        );
        assert_eq!(both[1].status, MigrationStatus::Applied);
        assert_eq!(versions(&both[1]), ["1", "2"]);
        let mut c = pg.conn(&db).await;
        assert_eq!(scalar_i64(&mut c, "SELECT count(*) FROM hits").await, 1);
        assert_eq!(ledger_versions(&mut c).await, ["1", "2"]);

        // A run that cannot get the lock in time says who holds it.
        sqlx::query("SELECT pg_advisory_lock($1)")
            .bind(migrate::lock::LOCK_KEY)
            .execute(&mut c)
            .await
            .unwrap();
        let short = Settings {
            lock_wait: Duration::from_millis(300),
            ..Settings::default()
        };
        let r = one(&pg, &db, &s, &short).await;
        assert_eq!(r.status, MigrationStatus::Failed);
        let err = r.error.unwrap();
        assert!(
            err.contains("another migration run holds its lock") && err.contains("held by pid"),
            "{err}"
        );
        c.close().await.unwrap();
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sql_goes_to_the_server_as_written() {
    with_pg(|pg| async move {
        let db = pg.create_one("sql").await;
        let s = set(
            Layout::Sqlx,
            &[
                (
                    "1_functions.sql",
                    "/* a header comment; with a semicolon */
CREATE TABLE items (id int PRIMARY KEY, label text NOT NULL);
CREATE FUNCTION label_of(i int) RETURNS text LANGUAGE plpgsql AS $$
DECLARE
    result text;
BEGIN
    SELECT label INTO result FROM items WHERE id = i; -- ; in a comment
    RETURN coalesce(result, 'none; really');
END;
$$;
CREATE FUNCTION twice(i int) RETURNS int LANGUAGE sql
BEGIN ATOMIC
    SELECT i * 2;
END;
DO $do$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'nobody_at_all') THEN
        RAISE NOTICE 'no such role; fine';
    END IF;
END
$do$;
",
                ),
                (
                    "2_load.sql",
                    "COPY items (id, label) FROM stdin;
1\tfirst; with a semicolon
2\tsecond
\\.
UPDATE items SET label = upper(label) WHERE id = 2;
",
                ),
                (
                    "3_concurrently.sql",
                    "-- no-transaction
CREATE INDEX CONCURRENTLY items_label ON items (label);
CREATE INDEX CONCURRENTLY items_upper ON items (upper(label));
",
                ),
            ],
        );
        let r = one(&pg, &db, &s, &Settings::default()).await;
        assert_eq!(r.status, MigrationStatus::Applied, "{:?}", r.error);
        assert_eq!(versions(&r), ["1", "2", "3"]);
        let mut c = pg.conn(&db).await;
        let label: String = sqlx::query_scalar("SELECT label_of(1)")
            .fetch_one(&mut c)
            .await
            .unwrap();
        assert_eq!(label, "first; with a semicolon");
        let label: String = sqlx::query_scalar("SELECT label_of(2)")
            .fetch_one(&mut c)
            .await
            .unwrap();
        assert_eq!(label, "SECOND");
        let label: String = sqlx::query_scalar("SELECT label_of(9)")
            .fetch_one(&mut c)
            .await
            .unwrap();
        assert_eq!(label, "none; really");
        assert_eq!(scalar_i64(&mut c, "SELECT twice(21)::bigint").await, 42);
        let valid = scalar_i64(
            &mut c,
            "SELECT count(*) FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid \
             WHERE c.relname IN ('items_label', 'items_upper') AND i.indisvalid",
        )
        .await;
        assert_eq!(valid, 2, "both concurrent indexes built and valid");
        assert_eq!(ledger_versions(&mut c).await, ["1", "2", "3"]);

        // A broken file: the error names the file and the line.
        let broken = set(
            Layout::Sqlx,
            &[("4_typo.sql", "SELECT 1;\n\nSELEC oops;\n")],
        );
        let r = one(&pg, &db, &broken, &Settings::default()).await;
        let err = r.error.unwrap();
        assert!(err.contains("4_typo.sql: line 3: syntax error"), "{err}");
        c.close().await.unwrap();
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_layout_runs_in_its_tools_order() {
    with_pg(|pg| async move {
        // sqlx: 1…12 in numeric order (10 after 9, not after 1).
        let db = pg.create_one("sqlx").await;
        let mut list: Vec<(String, String)> = vec![(
            "1_seq.sql".into(),
            "CREATE TABLE seq (at serial, version int); INSERT INTO seq (version) VALUES (1);".into(),
        )];
        for v in 2..=12 {
            list.push((format!("{v}_step.sql"), format!("INSERT INTO seq (version) VALUES ({v});")));
        }
        let f: Files = list.iter().map(|(n, t)| (n.clone(), t.clone().into_bytes())).collect();
        let s = migrate::load(Layout::Sqlx, &f).unwrap();
        let r = one(&pg, &db, &s, &Settings::default()).await;
        assert_eq!(r.status, MigrationStatus::Applied, "{:?}", r.error);
        let mut c = pg.conn(&db).await;
        let order: Vec<i32> = sqlx::query_scalar("SELECT version FROM seq ORDER BY at").fetch_all(&mut c).await.unwrap();
        assert_eq!(order, (1..=12).collect::<Vec<i32>>());
        c.close().await.unwrap();

        // Drizzle: the journal's files, split at the breakpoints; a file
        // missing from the journal does not run.
        let db = pg.create_one("drizzle").await;
        let journal = r#"{"version":"7","dialect":"postgresql","entries":[
            {"idx":0,"version":"7","when":1717000000000,"tag":"0000_curious_start","breakpoints":true},
            {"idx":1,"version":"7","when":1717000100000,"tag":"0001_orders","breakpoints":true}]}"#;
        let s = set(
            Layout::Drizzle,
            &[
                ("meta/_journal.json", journal),
                ("meta/0000_snapshot.json", "{}"),
                (
                    "0000_curious_start.sql",
                    "CREATE TABLE \"users\" (\n\t\"id\" serial PRIMARY KEY NOT NULL,\n\t\"email\" text NOT NULL\n);\n--> statement-breakpoint\nCREATE UNIQUE INDEX \"users_email_idx\" ON \"users\" USING btree (\"email\");",
                ),
                (
                    "0001_orders.sql",
                    "CREATE TABLE \"orders\" (\"id\" serial PRIMARY KEY, \"user_id\" integer NOT NULL);\n--> statement-breakpoint\nALTER TABLE \"orders\" ADD CONSTRAINT \"orders_user_id_users_id_fk\" FOREIGN KEY (\"user_id\") REFERENCES \"public\".\"users\"(\"id\") ON DELETE no action ON UPDATE no action;",
                ),
                ("0002_stray.sql", "CREATE TABLE never_run (x int);"),
            ],
        );
        assert_eq!(s.ignored, ["0002_stray.sql"]);
        let r = one(&pg, &db, &s, &Settings::default()).await;
        assert_eq!(versions(&r), ["0000_curious_start", "0001_orders"], "{:?}", r.error);
        let mut c = pg.conn(&db).await;
        assert_eq!(scalar_i64(&mut c, "SELECT count(*) FROM pg_class WHERE relname = 'never_run'").await, 0);
        assert_eq!(
            scalar_i64(&mut c, "SELECT count(*) FROM pg_constraint WHERE conname = 'orders_user_id_users_id_fk'").await,
            1
        );
        c.close().await.unwrap();

        // Prisma: folders in name order; plain: files in name order.
        let db = pg.create_one("prisma").await;
        let s = set(
            Layout::Prisma,
            &[
                ("migration_lock.toml", "provider = \"postgresql\"\n"),
                ("20240301000000_add_role/migration.sql", "ALTER TABLE \"User\" ADD COLUMN \"role\" TEXT NOT NULL DEFAULT 'member';"),
                ("20240101000000_init/migration.sql", "-- CreateTable\nCREATE TABLE \"User\" (\n    \"id\" SERIAL NOT NULL,\n    CONSTRAINT \"User_pkey\" PRIMARY KEY (\"id\")\n);"),
            ],
        );
        let r = one(&pg, &db, &s, &Settings::default()).await;
        assert_eq!(versions(&r), ["20240101000000_init", "20240301000000_add_role"], "{:?}", r.error);
    })
    .await;
}

/// `pg_dump -s` of `db`, without the `\restrict` lines (a random key per
/// dump, newer pg_dump versions).
fn schema_dump(pg: &Pg, db: &str) -> String {
    ferry_integration_tests::postgres::schema(&pg.url(db))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dry_run_changes_nothing_at_all() {
    with_pg(|pg| async move {
        let db = pg.create_one("dry").await;
        let mut c = pg.conn(&db).await;
        sqlx::raw_sql("CREATE TABLE existing (id int PRIMARY KEY); CREATE INDEX existing_id ON existing (id);")
            .execute(&mut c)
            .await
            .unwrap();
        let s = set(
            Layout::Sqlx,
            &[
                ("1_a.sql", "CREATE TABLE a (x int);"),
                ("2_b.sql", "-- no-transaction\nCREATE INDEX CONCURRENTLY a_x ON a (x);"),
                ("10_c.sql", "DROP TABLE existing;"),
            ],
        );
        let before = schema_dump(&pg, &db);
        let dry = Settings {
            dry_run: true,
            ..Settings::default()
        };
        let r = one(&pg, &db, &s, &dry).await;
        assert_eq!(r.status, MigrationStatus::Pending, "{:?}", r.error);
        assert_eq!(r.pending, ["1", "2", "10"]);
        assert!(r.applied.is_empty());
        let after = schema_dump(&pg, &db);
        assert_eq!(before, after, "the schema is byte for byte as it was");
        assert!(before.contains("CREATE TABLE public.existing"), "the dump is a real dump");
        assert_eq!(scalar_i64(&mut c, "SELECT count(*) FROM pg_namespace WHERE nspname = 'ferry'").await, 0);

        // After a partial real run, a dry run lists only what is left, and
        // still writes nothing (the ledger keeps its rows).
        let partial = Settings {
            target_version: Some("2".into()),
            ..Settings::default()
        };
        let r = one(&pg, &db, &s, &partial).await;
        assert_eq!(versions(&r), ["1", "2"], "{:?}", r.error);
        assert_eq!(r.pending, ["10"], "beyond the target, still pending");
        let before = schema_dump(&pg, &db);
        let r = one(&pg, &db, &s, &dry).await;
        assert_eq!(r.pending, ["10"]);
        assert_eq!(r.previously_applied, ["1", "2"]);
        assert_eq!(schema_dump(&pg, &db), before);
        assert_eq!(ledger_versions(&mut c).await, ["1", "2"]);

        // A changed file is drift: a dry run reports it, a run refuses it.
        let changed = set(
            Layout::Sqlx,
            &[
                ("1_a.sql", "CREATE TABLE a (x bigint);"),
                ("2_b.sql", "-- no-transaction\nCREATE INDEX CONCURRENTLY a_x ON a (x);"),
            ],
        );
        let r = one(&pg, &db, &changed, &dry).await;
        assert_eq!(r.status, MigrationStatus::Failed);
        assert_eq!(r.drift.len(), 1);
        let r = one(&pg, &db, &changed, &Settings::default()).await;
        let err = r.error.unwrap();
        assert!(err.contains("1_a.sql was applied (version 1) with checksum"), "{err}");
        c.close().await.unwrap();
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_database_migrated_by_sqlx_is_adopted_not_migrated_again() {
    with_pg(|pg| async move {
        let db = pg.create_one("adopt_sqlx").await;
        let dir = tempfile::tempdir().unwrap();
        let write = |name: &str, text: &str| std::fs::write(dir.path().join(name), text).unwrap();
        write(
            "20240101000000_users.sql",
            "CREATE TABLE users (id bigserial PRIMARY KEY, email text);",
        );
        write(
            "20240102000000_email_index.sql",
            "CREATE UNIQUE INDEX users_email ON users (email);",
        );
        // sqlx's own migrator applies the first two, as the app did so far.
        let mut c = pg.conn(&db).await;
        let migrator = sqlx::migrate::Migrator::new(dir.path()).await.unwrap();
        migrator.run(&mut c).await.unwrap();
        write(
            "20240201000000_names.sql",
            "ALTER TABLE users ADD COLUMN name text;",
        );

        let s = migrate::load_dir(Layout::Sqlx, dir.path()).unwrap();
        let dry = Settings {
            dry_run: true,
            ..Settings::default()
        };
        let r = one(&pg, &db, &s, &dry).await;
        assert_eq!(
            r.adopted,
            ["20240101000000", "20240102000000"],
            "{:?}",
            r.error
        );
        assert_eq!(r.pending, ["20240201000000"]);

        let r = one(&pg, &db, &s, &Settings::default()).await;
        assert_eq!(r.status, MigrationStatus::Applied, "{:?}", r.error);
        assert_eq!(versions(&r), ["20240201000000"], "only the new one ran");
        let rows: Vec<(String, Option<String>)> =
            sqlx::query_as("SELECT version, adopted_from FROM ferry.migrations ORDER BY version")
                .fetch_all(&mut c)
                .await
                .unwrap();
        assert_eq!(
            rows,
            [
                (
                    "20240101000000".to_owned(),
                    Some("_sqlx_migrations".to_owned())
                ),
                (
                    "20240102000000".to_owned(),
                    Some("_sqlx_migrations".to_owned())
                ),
                ("20240201000000".to_owned(), None),
            ]
        );
        assert_eq!(
            scalar_i64(&mut c, "SELECT count(*) FROM _sqlx_migrations").await,
            2,
            "sqlx's table untouched"
        );

        // A file sqlx applied and that changed since is refused, naming it.
        let db2 = pg.create_one("adopt_sqlx_changed").await;
        let mut c2 = pg.conn(&db2).await;
        migrator.run(&mut c2).await.unwrap();
        write(
            "20240102000000_email_index.sql",
            "CREATE INDEX users_email ON users (email);",
        );
        let s = migrate::load_dir(Layout::Sqlx, dir.path()).unwrap();
        let r = one(&pg, &db2, &s, &Settings::default()).await;
        let err = r.error.unwrap();
        assert!(err.contains("20240102000000_email_index.sql"), "{err}");
        assert_eq!(
            scalar_i64(
                &mut c2,
                "SELECT count(*) FROM pg_namespace WHERE nspname = 'ferry'"
            )
            .await,
            0
        );

        // A migration sqlx left unfinished (a dirty database) is refused.
        sqlx::raw_sql("UPDATE _sqlx_migrations SET success = false WHERE version = 20240101000000")
            .execute(&mut c2)
            .await
            .unwrap();
        let r = one(&pg, &db2, &s, &Settings::default()).await;
        assert!(r.error.unwrap().contains("dirty"));
        c.close().await.unwrap();
        c2.close().await.unwrap();
    })
    .await;
}

/// `_prisma_migrations` as `prisma migrate deploy` creates it (Prisma 5).
const PRISMA_TABLE: &str = r#"CREATE TABLE "_prisma_migrations" (
    "id" VARCHAR(36) PRIMARY KEY NOT NULL,
    "checksum" VARCHAR(64) NOT NULL,
    "finished_at" TIMESTAMPTZ,
    "migration_name" VARCHAR(255) NOT NULL,
    "logs" TEXT,
    "rolled_back_at" TIMESTAMPTZ,
    "started_at" TIMESTAMPTZ NOT NULL DEFAULT now(),
    "applied_steps_count" INTEGER NOT NULL DEFAULT 0
);"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_database_migrated_by_prisma_is_adopted_not_migrated_again() {
    with_pg(|pg| async move {
        let db = pg.create_one("adopt_prisma").await;
        let s = set(
            Layout::Prisma,
            &[
                ("migration_lock.toml", "provider = \"postgresql\"\n"),
                ("20240101000000_init/migration.sql", "CREATE TABLE \"Post\" (\"id\" SERIAL PRIMARY KEY, \"title\" TEXT NOT NULL);"),
                ("20240201000000_body/migration.sql", "ALTER TABLE \"Post\" ADD COLUMN \"body\" TEXT;"),
                ("20240301000000_slug/migration.sql", "ALTER TABLE \"Post\" ADD COLUMN \"slug\" TEXT;"),
            ],
        );
        // What Prisma leaves behind after deploying the first two, with a
        // failed attempt at the second that was rolled back and re-applied.
        let mut c = pg.conn(&db).await;
        sqlx::raw_sql(sqlx::AssertSqlSafe(PRISMA_TABLE)).execute(&mut c).await.unwrap();
        for (i, m) in s.migrations[..2].iter().enumerate() {
            sqlx::raw_sql(sqlx::AssertSqlSafe(m.sql.as_str())).execute(&mut c).await.unwrap();
            sqlx::query(
                "INSERT INTO _prisma_migrations (id, checksum, finished_at, migration_name, applied_steps_count) \
                 VALUES ($1, $2, now(), $3, 1)",
            )
            .bind(format!("00000000-0000-0000-0000-00000000000{i}"))
            .bind(&m.checksum)
            .bind(&m.version)
            .execute(&mut c)
            .await
            .unwrap();
        }
        sqlx::query(
            "INSERT INTO _prisma_migrations (id, checksum, rolled_back_at, migration_name) \
             VALUES ('00000000-0000-0000-0000-000000000009', $1, now(), '20240201000000_body')",
        )
        .bind(&s.migrations[1].checksum)
        .execute(&mut c)
        .await
        .unwrap();

        let r = one(&pg, &db, &s, &Settings::default()).await;
        assert_eq!(r.status, MigrationStatus::Applied, "{:?}", r.error);
        assert_eq!(r.adopted, ["20240101000000_init", "20240201000000_body"]);
        assert_eq!(versions(&r), ["20240301000000_slug"]);
        let again = one(&pg, &db, &s, &Settings::default()).await;
        assert_eq!(again.status, MigrationStatus::UpToDate);

        // A failed Prisma migration (neither finished nor rolled back).
        let db2 = pg.create_one("adopt_prisma_failed").await;
        let mut c2 = pg.conn(&db2).await;
        sqlx::raw_sql(sqlx::AssertSqlSafe(PRISMA_TABLE)).execute(&mut c2).await.unwrap();
        sqlx::query(
            "INSERT INTO _prisma_migrations (id, checksum, migration_name) \
             VALUES ('00000000-0000-0000-0000-000000000001', $1, '20240101000000_init')",
        )
        .bind(&s.migrations[0].checksum)
        .execute(&mut c2)
        .await
        .unwrap();
        let r = one(&pg, &db2, &s, &Settings::default()).await;
        let err = r.error.unwrap();
        assert!(err.contains("20240101000000_init as failed") && err.contains("prisma migrate resolve"), "{err}");
        c.close().await.unwrap();
        c2.close().await.unwrap();
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancelled_run_leaves_no_lock_and_no_half_migration() {
    with_pg(|pg| async move {
        let db = pg.create_one("cancel").await;
        let s = set(
            Layout::Sqlx,
            &[(
                "1_slow.sql",
                "CREATE TABLE started (x int); SELECT pg_sleep(30);",
            )],
        );
        let cancel = CancellationToken::new();
        let trip = cancel.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(800)).await;
            trip.cancel();
        });
        let t = target(&pg, &db);
        let started = std::time::Instant::now();
        let r = migrate::run_database(&t, &s, &Settings::default(), &|_| {}, &cancel).await;
        assert_eq!(r.status, MigrationStatus::Cancelled);
        assert!(started.elapsed() < Duration::from_secs(5));
        // The server ends the session (client_connection_check_interval) and
        // with it the lock and the transaction.
        let mut freed = false;
        for _ in 0..50 {
            if advisory_locks(&pg, &db).await == 0 {
                freed = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        assert!(
            freed,
            "the lock is freed when the cancelled run's connection closes"
        );
        let mut c = pg.conn(&db).await;
        assert_eq!(
            scalar_i64(
                &mut c,
                "SELECT count(*) FROM pg_class WHERE relname = 'started'"
            )
            .await,
            0
        );
        c.close().await.unwrap();
        let custom = Settings {
            ledger: LedgerName::parse("ops.schema_history").unwrap(),
            ..Settings::default()
        };
        let quick = set(
            Layout::Plain,
            &[("001_init.sql", "CREATE TABLE quick (x int);")],
        );
        let r = one(&pg, &db, &quick, &custom).await;
        assert_eq!(r.status, MigrationStatus::Applied, "{:?}", r.error);
        let mut c = pg.conn(&db).await;
        assert_eq!(
            scalar_i64(&mut c, "SELECT count(*) FROM ops.schema_history").await,
            1
        );
        c.close().await.unwrap();
    })
    .await;
}
