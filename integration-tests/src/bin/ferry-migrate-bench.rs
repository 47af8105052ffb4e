//! `ferry-migrate-bench`: Ferry's migration engine against the same work
//! done without it, on N tenant databases (default 1,000) of one real
//! PostgreSQL server, one migration each. A benchmark program that prints
//! figures, not a test: see BENCHMARKS.md.
//!
//! Measured, each on databases where the migration has not run (the tables
//! a run made are dropped between measurements, untimed):
//!
//! - **sequential**: one process, one database after another: connect,
//!   the migration and its ledger row in one transaction, close (what the
//!   Nizam-ERP runbook's runner does);
//! - **parallel floor**: 4 `psql` sessions, each given a quarter of the
//!   databases, reconnecting (`\c`) to each and running the same SQL;
//! - **ferry**: `ferry_agent::migrate::run` at its default concurrency, the
//!   tenants listed by a query on a main database (`--skip-main`);
//! - **ferry no-op**: the same run again (everything already applied);
//! - **connect floor**: 4 `psql` sessions, `\c` + `SELECT 1` per database.
//!
//! Targets (issue 13): ferry ≤ 1.1× the parallel floor; the no-op re-run ≤
//! 1.2× the connect floor.
//!
//! `cargo run --release -p ferry-integration-tests --bin ferry-migrate-bench
//! -- --databases 1000` with `FERRY_TEST_DATABASE_URL` set
//! (`scripts/ensure-postgres.sh`). `psql` must be on PATH.

use std::process::Stdio;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use clap::Parser;
use ferry_agent::migrate::{
    self, Filter, Layout, OnFailure, Request, Settings, TenantSource, Tenants,
};
use sqlx::{Connection, PgConnection};
use tokio_util::sync::CancellationToken;

const MIGRATION: &str = "CREATE TABLE items (id bigserial PRIMARY KEY, label text NOT NULL, created_at timestamptz NOT NULL DEFAULT now());
CREATE INDEX items_label ON items (label);
";

/// The same work the baselines do: the migration and a ledger row, in one
/// transaction, the ledger created if missing (as Ferry's first run does).
const BASELINE_WORK: &str = "BEGIN;
CREATE TABLE items (id bigserial PRIMARY KEY, label text NOT NULL, created_at timestamptz NOT NULL DEFAULT now());
CREATE INDEX items_label ON items (label);
CREATE SCHEMA IF NOT EXISTS ferry;
CREATE TABLE IF NOT EXISTS ferry.migrations (version text PRIMARY KEY, name text NOT NULL, checksum text NOT NULL, applied_at timestamptz NOT NULL DEFAULT clock_timestamp(), duration_ms bigint NOT NULL, job_id text, adopted_from text);
INSERT INTO ferry.migrations (version, name, checksum, duration_ms) VALUES ('1', 'add_items', 'x', 0);
COMMIT;
";

#[derive(Debug, Parser)]
struct Args {
    /// Tenant databases to create and migrate.
    #[arg(long, default_value_t = 1000)]
    databases: usize,
    /// The server (a URL of any database on it); default
    /// FERRY_TEST_DATABASE_URL.
    #[arg(long, env = "FERRY_TEST_DATABASE_URL")]
    server: String,
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> Result<()> {
    let args = Args::parse();
    let unique = uuid::Uuid::now_v7().simple().to_string();
    let prefix = format!("ferry_mbench_{}", &unique[unique.len() - 8..]);
    let main_db = format!("{prefix}_main");
    let tenants: Vec<String> = (0..args.databases)
        .map(|i| format!("{prefix}_{i:05}"))
        .collect();
    let mut all = vec![main_db.clone()];
    all.extend(tenants.iter().cloned());

    let clock = Instant::now();
    let created = each_parallel(&args.server, &all, |db| format!("CREATE DATABASE {db}")).await;
    let result = match created {
        Ok(()) => {
            eprintln!("created {} databases in {:.1?}", all.len(), clock.elapsed());
            measure(&args, &main_db, &tenants).await
        }
        Err(e) => Err(e),
    };
    let clock = Instant::now();
    each_parallel(&args.server, &all, |db| {
        format!("DROP DATABASE IF EXISTS {db} WITH (FORCE)")
    })
    .await
    .context("dropping the bench databases")?;
    eprintln!("dropped them in {:.1?}", clock.elapsed());
    result
}

async fn measure(args: &Args, main_db: &str, tenants: &[String]) -> Result<()> {
    let server = &args.server;
    let mut main = PgConnection::connect(&db_url(server, main_db)).await?;
    sqlx::raw_sql("CREATE TABLE tenant (id serial PRIMARY KEY, db_name text NOT NULL UNIQUE)")
        .execute(&mut main)
        .await?;
    for chunk in tenants.chunks(500) {
        let values: Vec<String> = chunk.iter().map(|t| format!("('{t}')")).collect();
        sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
            "INSERT INTO tenant (db_name) VALUES {}",
            values.join(",")
        )))
        .execute(&mut main)
        .await?;
    }
    main.close().await?;
    let reset =
        |_: &str| "DROP TABLE IF EXISTS items; DROP SCHEMA IF EXISTS ferry CASCADE".to_owned();

    let sequential = timed(|| async {
        for db in tenants {
            let mut c = PgConnection::connect(&db_url(server, db)).await?;
            sqlx::raw_sql(BASELINE_WORK).execute(&mut c).await?;
            c.close().await?;
        }
        Ok(())
    })
    .await?;
    each_parallel_in(server, tenants, reset).await?;

    let parallel_floor = timed(|| psql_sessions(server, tenants, BASELINE_WORK)).await?;
    each_parallel_in(server, tenants, reset).await?;

    let set = Arc::new(migrate::load(
        Layout::Sqlx,
        &[("1_add_items.sql".to_owned(), MIGRATION.as_bytes().to_vec())]
            .into_iter()
            .collect(),
    )?);
    let request = Request {
        main_url: db_url(server, main_db),
        migrations: set,
        tenants: Some(Tenants {
            source: TenantSource {
                query: "SELECT db_name FROM tenant ORDER BY id".into(),
                id_column: None,
                url_template: None,
            },
            migrations: None,
        }),
        filter: Filter {
            skip_main: true,
            ..Filter::default()
        },
        settings: Settings::default(),
        concurrency: migrate::DEFAULT_CONCURRENCY,
        on_failure: OnFailure::Stop,
    };
    let run = |req: Request| async move {
        let report = migrate::run(req, Arc::new(|_| {}), CancellationToken::new()).await?;
        if !report.ok() || report.databases.len() != tenants.len() {
            bail!("a Ferry run failed: {:?}", report.failed().next());
        }
        Ok(report)
    };
    let mut applied = 0;
    let ferry = timed(|| async {
        let r = run(request.clone()).await?;
        applied = r.databases.iter().map(|d| d.applied.len()).sum();
        Ok(())
    })
    .await?;
    let mut reapplied = 0;
    let noop = timed(|| async {
        let r = run(request.clone()).await?;
        reapplied = r.databases.iter().map(|d| d.applied.len()).sum();
        Ok(())
    })
    .await?;
    if applied != tenants.len() || reapplied != 0 {
        bail!(
            "expected {} migrations applied then none, got {applied} then {reapplied}",
            tenants.len()
        );
    }
    let connect_floor = timed(|| psql_sessions(server, tenants, "SELECT 1;\n")).await?;

    let n = tenants.len();
    let secs = |d: Duration| d.as_secs_f64();
    println!(
        "{n} tenant databases, one migration each, Ferry at concurrency {}",
        migrate::DEFAULT_CONCURRENCY
    );
    println!("{:<44} {:>9} {:>12}", "", "seconds", "ms/database");
    for (what, d) in [
        ("sequential one-process runner", sequential),
        ("parallel floor (4 psql sessions)", parallel_floor),
        ("ferry", ferry),
        ("ferry no-op re-run", noop),
        ("connect floor (4 psql sessions, SELECT 1)", connect_floor),
    ] {
        println!(
            "{what:<44} {:>9.2} {:>12.2}",
            secs(d),
            secs(d) * 1000.0 / n as f64
        );
    }
    let vs_floor = secs(ferry) / secs(parallel_floor);
    let vs_seq = secs(sequential) / secs(ferry);
    let noop_ratio = secs(noop) / secs(connect_floor);
    println!(
        "ferry / parallel floor   {vs_floor:.2}x (target <= 1.10: {})",
        if vs_floor <= 1.1 { "met" } else { "MISSED" }
    );
    println!("sequential / ferry       {vs_seq:.2}x faster");
    println!(
        "no-op / connect floor    {noop_ratio:.2}x (target <= 1.20: {})",
        if noop_ratio <= 1.2 { "met" } else { "MISSED" }
    );
    Ok(())
}

async fn timed<F, Fut>(f: F) -> Result<Duration>
where
    F: FnOnce() -> Fut,
    Fut: std::future::Future<Output = Result<()>>,
{
    let start = Instant::now();
    f().await?;
    Ok(start.elapsed())
}

fn db_url(server: &str, db: &str) -> String {
    ferry_coordinator::store::conformance::database_url(server, db)
}

/// Runs `sql(db)` for every database, 4 connections to the server at once.
async fn each_parallel(server: &str, dbs: &[String], sql: impl Fn(&str) -> String) -> Result<()> {
    run_parallel(server, dbs, sql, false).await
}

/// Runs `sql(db)` inside every database, 4 at a time.
async fn each_parallel_in(
    server: &str,
    dbs: &[String],
    sql: impl Fn(&str) -> String,
) -> Result<()> {
    run_parallel(server, dbs, sql, true).await
}

async fn run_parallel(
    server: &str,
    dbs: &[String],
    sql: impl Fn(&str) -> String,
    inside: bool,
) -> Result<()> {
    let mut tasks = tokio::task::JoinSet::new();
    for chunk in dbs.chunks(dbs.len().div_ceil(4).max(1)) {
        let work: Vec<(String, String)> = chunk.iter().map(|db| (db.clone(), sql(db))).collect();
        let server = server.to_owned();
        tasks.spawn(async move {
            let mut admin = if inside {
                None
            } else {
                Some(PgConnection::connect(&server).await?)
            };
            for (db, sql) in work {
                if let Some(admin) = admin.as_mut() {
                    sqlx::raw_sql(sqlx::AssertSqlSafe(sql))
                        .execute(admin)
                        .await?;
                } else {
                    let mut c = PgConnection::connect(&db_url(&server, &db)).await?;
                    sqlx::raw_sql(sqlx::AssertSqlSafe(sql))
                        .execute(&mut c)
                        .await?;
                    c.close().await?;
                }
            }
            if let Some(admin) = admin {
                admin.close().await?;
            }
            anyhow::Ok(())
        });
    }
    while let Some(r) = tasks.join_next().await {
        r??;
    }
    Ok(())
}

/// 4 `psql` processes, each `\c`-ing to a quarter of the databases in turn
/// and running `sql` in each. Each reads its script from a file, so the four
/// start together (a pipe written one after the other would stagger them).
async fn psql_sessions(server: &str, dbs: &[String], sql: &str) -> Result<()> {
    let (user, password, host, port) = parts(server)?;
    let dir = tempfile::tempdir()?;
    let mut children = Vec::new();
    for (i, chunk) in dbs.chunks(dbs.len().div_ceil(4).max(1)).enumerate() {
        let mut script = String::new();
        for db in chunk {
            script.push_str(&format!("\\c {db}\n{sql}"));
        }
        let file = dir.path().join(format!("session{i}.sql"));
        std::fs::write(&file, script)?;
        let child = tokio::process::Command::new("psql")
            .args([
                "-X",
                "-q",
                "-v",
                "ON_ERROR_STOP=1",
                "-h",
                &host,
                "-p",
                &port,
                "-U",
                &user,
                "-d",
                &chunk[0],
                "-f",
            ])
            .arg(&file)
            .env("PGPASSWORD", &password)
            .stdout(Stdio::null())
            .spawn()
            .context("run psql (is it on PATH?)")?;
        children.push(child);
    }
    for mut child in children {
        let status = child.wait().await?;
        if !status.success() {
            bail!("psql failed: {status}");
        }
    }
    Ok(())
}

/// user, password, host, port of a `postgres://user:password@host:port/db` URL.
fn parts(url: &str) -> Result<(String, String, String, String)> {
    let rest = url.split_once("://").context("a postgres:// URL")?.1;
    let (auth, rest) = rest.split_once('@').context("a URL with user:password@")?;
    let (user, password) = auth.split_once(':').unwrap_or((auth, ""));
    let hostport = rest.split(['/', '?']).next().unwrap_or(rest);
    let (host, port) = hostport.split_once(':').unwrap_or((hostport, "5432"));
    Ok((user.into(), password.into(), host.into(), port.into()))
}
