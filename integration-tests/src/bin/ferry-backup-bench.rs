//! `ferry-backup-bench`: Ferry's backup and restore against `pg_dump` and
//! `pg_restore` on the same generated database of one real PostgreSQL
//! server, in one run. A benchmark program that prints figures, not a
//! test: see BENCHMARKS.md.
//!
//! The database is `pgbench -i -s SCALE` plus a `notes` table of random
//! text (`--notes-rows`): pgbench's own rows are mostly blank padding that
//! any compressor shrinks to nothing, which flatters gzip; random text is
//! what compression and checksums really have to chew through. The
//! defaults make about 1 GB. Measured:
//!
//! - **pg_dump -Fc**: the custom format with pg_dump's own (gzip) compression;
//! - **pg_dump -Fc -Z0 | zstd -1**: the pipeline a careful operator writes;
//! - **ferry backup**: a `backup` job through a coordinator and an agent in
//!   this process, from submit to the job's end: version check, exported
//!   snapshot, the dump streamed through zstd and SHA-256, fsync, rename,
//!   manifest, and every table counted in the dump's snapshot meanwhile;
//! - **row-count pass**: those counts alone (one `count(*)` per table in a
//!   REPEATABLE READ transaction), to show what they cost;
//! - **pg_restore** of the `-Fc` file into a new database (its `CREATE
//!   DATABASE` included, as in Ferry's), against a **ferry restore**
//!   (`restore --into`) of Ferry's file: the new database, zstd
//!   decompression and `pg_restore`, the checksum checked on the same read.
//!
//! Targets (issue 12): backup ≥ 3× faster than `pg_dump -Fc` at no larger
//! size and within 1.1× of the zstd pipeline; restore no slower than
//! `pg_restore` of the `-Fc` file.
//!
//! `cargo run --release -p ferry-integration-tests --bin ferry-backup-bench
//! -- --scale 70` with `FERRY_TEST_DATABASE_URL` set
//! (`scripts/ensure-postgres.sh`); `pg_dump`, `pg_restore`, `pgbench` and
//! `zstd` on PATH.

use std::collections::HashMap;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use clap::Parser;
use ferry_common::job::BackupManifest;
use ferry_integration_tests::{TestCoordinator, postgres};
use ferry_proto::v1 as pb;
use sqlx::{Connection, PgConnection, Row};

const APP: &str = "bench";
const ENV: &str = "bench";

#[derive(Debug, Parser)]
struct Args {
    /// pgbench scale factor (10 is about 160 MB of tables and indexes).
    #[arg(long, default_value_t = 20)]
    scale: u32,
    /// Rows of random text (about 200 bytes each) added in a `notes` table.
    #[arg(long, default_value_t = 3_500_000)]
    notes_rows: u64,
}

/// Runs `bash -c script` (with `pipefail`), timed; fails with its stderr.
fn timed_shell(script: &str) -> Result<Duration> {
    let started = Instant::now();
    let out = Command::new("bash")
        .args(["-o", "pipefail", "-c", script])
        .output()?;
    if !out.status.success() {
        bail!("{script}: {}", String::from_utf8_lossy(&out.stderr));
    }
    Ok(started.elapsed())
}

fn size(path: &Path) -> Result<u64> {
    Ok(std::fs::metadata(path)
        .with_context(|| path.display().to_string())?
        .len())
}

/// `url` with its database replaced by `db`.
fn with_db(url: &str, db: &str) -> String {
    let (base, _) = url.rsplit_once('/').expect("a URL with a database");
    format!("{base}/{db}")
}

async fn run_job(c: &TestCoordinator, kind: &str, spec: &str) -> Result<(pb::Job, Duration)> {
    let started = Instant::now();
    let job = c.submit(kind, spec, &["db-1"], 0).await?;
    c.watch_to_end(&job.id, Duration::from_secs(3600)).await?;
    let elapsed = started.elapsed();
    let job = c.job(&job.id).await?;
    if job.status != "succeeded" {
        bail!("{kind} job {}: {:?}", job.status, job.tasks);
    }
    Ok((job, elapsed))
}

fn ratio(a: Duration, b: Duration) -> f64 {
    a.as_secs_f64() / b.as_secs_f64()
}

#[tokio::main(flavor = "multi_thread")]
async fn main() -> Result<()> {
    let args = Args::parse();
    ferry_integration_tests::setup();
    let Some(url) = postgres::fresh_database().await else {
        bail!("set FERRY_TEST_DATABASE_URL (scripts/ensure-postgres.sh)");
    };
    let work = tempfile::tempdir()?;
    let dir = work.path();

    eprintln!("generating: pgbench -i -s {} ...", args.scale);
    let generated = timed_shell(&format!(
        "pgbench -q -i -s {} '{url}' 2>&1 >/dev/null",
        args.scale
    ))?;
    let mut conn = PgConnection::connect(&url).await?;
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "CREATE TABLE notes AS SELECT g AS id, \
         md5(random()::text) || ' ' || md5(random()::text) || ' ' || md5(random()::text) || ' ' || md5(random()::text) AS body, \
         now() - random() * interval '900 days' AS written_at \
         FROM generate_series(1, {}) AS g",
        args.notes_rows
    )))
    .execute(&mut conn)
    .await?;
    sqlx::query("ALTER TABLE notes ADD PRIMARY KEY (id)")
        .execute(&mut conn)
        .await?;
    let db_size: i64 = sqlx::query("SELECT pg_database_size(current_database())")
        .fetch_one(&mut conn)
        .await?
        .get(0);
    println!(
        "database: pgbench scale {} + {} rows of random text = {:.2} GB (pgbench in {:.1} s)",
        args.scale,
        args.notes_rows,
        db_size as f64 / 1e9,
        generated.as_secs_f64()
    );

    // The row-count pass alone.
    let tables: Vec<String> = sqlx::query(
        "SELECT quote_ident(schemaname) || '.' || quote_ident(relname) FROM pg_stat_user_tables",
    )
    .fetch_all(&mut conn)
    .await?
    .into_iter()
    .map(|r| r.get(0))
    .collect();
    let started = Instant::now();
    sqlx::query("BEGIN ISOLATION LEVEL REPEATABLE READ")
        .execute(&mut conn)
        .await?;
    for t in &tables {
        sqlx::query(sqlx::AssertSqlSafe(format!("SELECT count(*) FROM {t}")))
            .fetch_one(&mut conn)
            .await?;
    }
    sqlx::query("COMMIT").execute(&mut conn).await?;
    let counts = started.elapsed();

    let fc = dir.join("db.Fc");
    let pg_dump_fc = timed_shell(&format!("pg_dump -Fc -f '{}' '{url}'", fc.display()))?;
    let zst = dir.join("db.Fc.zst");
    let pipeline = timed_shell(&format!(
        "pg_dump -Fc -Z0 '{url}' | zstd -q -1 -o '{}'",
        zst.display()
    ))?;

    // Ferry: a coordinator and an agent in this process.
    let c = TestCoordinator::start().await?;
    let backups = dir.join("ferry");
    let agent = c.enroll("db-1", &[]).await?.start_with_env(HashMap::from([(
        "FERRY_BACKUP_DIR".to_string(),
        backups.display().to_string(),
    )]));
    c.wait_for_agent("db-1", "online", Duration::from_secs(10))
        .await?;
    c.operator()
        .await?
        .set_secret(pb::SetSecretRequest {
            app: APP.into(),
            env: ENV.into(),
            name: "DATABASE_URL".into(),
            value: url.clone(),
        })
        .await?;
    let location = serde_json::json!({"url_secret": "DATABASE_URL"});
    let spec =
        serde_json::json!({"app": APP, "env": ENV, "database": "main", "location": location});
    let (job, ferry_backup) = run_job(&c, "backup", &spec.to_string()).await?;
    let manifest = BackupManifest::from_json(&job.tasks[0].result_json)
        .map_err(anyhow::Error::msg)
        .context("the backup's manifest")?;

    // Restores into new databases.
    let restored_pg = format!("bench_restore_pg_{}", std::process::id());
    let restored_ferry = format!("bench_restore_ferry_{}", std::process::id());
    // What an operator runs to restore into a new database, timed whole
    // as Ferry's `--into` is: the CREATE DATABASE, then pg_restore.
    let started = Instant::now();
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "CREATE DATABASE {restored_pg}"
    )))
    .execute(&mut conn)
    .await?;
    let create_db = started.elapsed();
    let pg_restore = create_db
        + timed_shell(&format!(
            "pg_restore --no-owner --exit-on-error -d '{}' '{}'",
            with_db(&url, &restored_pg),
            fc.display()
        ))?;
    let restore = serde_json::json!({
        "backup_id": manifest.id, "app": APP, "env": ENV, "database": "main",
        "location": location, "path": manifest.path, "sha256": manifest.sha256,
        "mode": {"into": restored_ferry},
    });
    let (_, ferry_restore) = run_job(&c, "restore", &restore.to_string()).await?;
    drop(agent);
    let bench_db = url.rsplit_once('/').map(|(_, db)| db.to_string());
    drop(conn);
    let mut conn = PgConnection::connect(&with_db(&url, "postgres")).await?;
    for db in [&restored_pg, &restored_ferry]
        .into_iter()
        .chain(bench_db.as_ref())
    {
        sqlx::query(sqlx::AssertSqlSafe(format!(
            "DROP DATABASE IF EXISTS {db} WITH (FORCE)"
        )))
        .execute(&mut conn)
        .await?;
    }

    let mb = |b: u64| b as f64 / 1e6;
    println!();
    println!("| | seconds | MB | vs pg_dump -Fc |");
    println!("|---|---:|---:|---:|");
    println!(
        "| pg_dump -Fc (gzip) | {:.2} | {:.1} | 1.00× |",
        pg_dump_fc.as_secs_f64(),
        mb(size(&fc)?)
    );
    println!(
        "| pg_dump -Fc -Z0 \\| zstd -1 | {:.2} | {:.1} | {:.2}× faster |",
        pipeline.as_secs_f64(),
        mb(size(&zst)?),
        ratio(pg_dump_fc, pipeline)
    );
    println!(
        "| **ferry backup** (job, checksum and fsync included) | **{:.2}** | **{:.1}** | **{:.2}× faster** |",
        ferry_backup.as_secs_f64(),
        mb(manifest.size_bytes),
        ratio(pg_dump_fc, ferry_backup)
    );
    println!(
        "| row-count pass alone ({} tables, in the dump's snapshot during the backup) | {:.2} | | |",
        tables.len(),
        counts.as_secs_f64()
    );
    println!(
        "| CREATE DATABASE + pg_restore of the -Fc file (of which CREATE DATABASE {:.2} s) | {:.2} | | |",
        create_db.as_secs_f64(),
        pg_restore.as_secs_f64()
    );
    println!(
        "| **ferry restore --into** (job, checksum included) | **{:.2}** | | {:.2}× pg_restore |",
        ferry_restore.as_secs_f64(),
        ratio(ferry_restore, pg_restore)
    );
    println!();
    println!(
        "backup vs pg_dump -Fc: {:.2}× faster (target ≥ 3); size {:.2}× of -Fc's (target ≤ 1); vs the zstd pipeline {:.2}× (target ≤ 1.1); restore {:.2}× pg_restore (target ≤ 1)",
        ratio(pg_dump_fc, ferry_backup),
        manifest.size_bytes as f64 / size(&fc)? as f64,
        ratio(ferry_backup, pipeline),
        ratio(ferry_restore, pg_restore)
    );
    Ok(())
}
