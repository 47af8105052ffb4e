//! `verify`: a backup proved by a test restore on its host: a scratch
//! database on the backup's server, the file streamed into `pg_restore`
//! through the agent's own zstd decoder with its checksum checked on the
//! same read (a damaged file never reaches `pg_restore` whole), every
//! table's rows counted against the manifest, the app file's checks, and
//! the scratch database dropped.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::path::Path;
use std::process::Stdio;
use std::str::FromStr;
use std::time::Instant;

use ferry_common::appfile::DbLocation;
use ferry_common::job::{VerifyReport, VerifySpec};
use sha2::{Digest, Sha256};
use sqlx::postgres::PgConnectOptions;
use sqlx::{ConnectOptions, Connection, PgConnection, Row};
use tokio_util::sync::CancellationToken;

use super::backup::{CONNECT_TIMEOUT, PgTarget, describe_sqlx, failed, quote_ident};
use super::backup_file::{CHUNK, CheckedChunks, mismatch};
use super::{Done, KindExecutor, TaskContext, TaskFailure};

mod container;

/// Why reading or restoring stopped early: the task's cancellation.
const STOPPED: &str = "stopped: the task was cancelled";

/// Runs `verify` tasks.
pub struct Verify;

#[async_trait::async_trait]
impl KindExecutor for Verify {
    type Spec = VerifySpec;
    async fn run(&self, spec: VerifySpec, ctx: &TaskContext) -> Result<Done, TaskFailure> {
        run(spec, ctx).await
    }
}

/// The SHA-256 of the file at `path`, lowercase hex.
pub fn file_sha256(path: &Path, cancel: &CancellationToken) -> Result<String, String> {
    let mut file =
        std::fs::File::open(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    let mut sha = Sha256::new();
    let mut buf = vec![0u8; CHUNK];
    loop {
        if cancel.is_cancelled() {
            return Err(STOPPED.into());
        }
        let n = file
            .read(&mut buf)
            .map_err(|e| format!("reading {}: {e}", path.display()))?;
        if n == 0 {
            break;
        }
        sha.update(&buf[..n]);
    }
    Ok(hex::encode(sha.finalize()))
}

/// Checks the file against the catalogue's checksum, naming both on a
/// mismatch.
pub async fn check_checksum(
    path: &str,
    want: &str,
    cancel: &CancellationToken,
) -> Result<(), TaskFailure> {
    let (p, c) = (path.to_string(), cancel.clone());
    let got = tokio::task::spawn_blocking(move || file_sha256(Path::new(&p), &c))
        .await
        .map_err(|e| failed(format!("checksum: {e}")))?
        .map_err(failed)?;
    if got != want {
        return Err(failed(mismatch(path, &got, want)));
    }
    Ok(())
}

/// Streams the zstd file at `path` through the agent's decoder into
/// `pg_restore` (with `args`), the password in `PGPASSWORD`; with
/// `sha256`, the file's checksum is checked on the same read and a
/// damaged file never reaches its end ([`CheckedChunks`]). Stops (kills
/// `pg_restore`) on `cancel`.
pub async fn restore_file(
    pg_restore: &Path,
    path: &str,
    sha256: Option<&str>,
    args: Vec<String>,
    password: Option<String>,
    cancel: &CancellationToken,
) -> Result<(), String> {
    let (program, path, cancel) = (pg_restore.to_path_buf(), path.to_string(), cancel.clone());
    let sha256 = sha256.map(str::to_string);
    tokio::task::spawn_blocking(move || {
        let mut chunks = CheckedChunks::open(&path, sha256.as_deref())?;
        let mut cmd = std::process::Command::new(&program);
        cmd.args(&args)
            .env("PGCONNECT_TIMEOUT", CONNECT_TIMEOUT.as_secs().to_string())
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        match &password {
            Some(p) => cmd.env("PGPASSWORD", p),
            None => cmd.env_remove("PGPASSWORD"),
        };
        let mut child = cmd
            .spawn()
            .map_err(|e| format!("cannot run {}: {e}", program.display()))?;
        let mut stdin = child.stdin.take().ok_or("no stdin")?;
        // A pipe as large as a chunk: one write per chunk rather than four
        // wake-ups of pg_restore (a smaller pipe only costs time).
        let _ = nix::fcntl::fcntl(
            &stdin,
            nix::fcntl::FcntlArg::F_SETPIPE_SZ(CHUNK as nix::libc::c_int),
        );
        let copied: Result<(), String> = loop {
            if cancel.is_cancelled() {
                let _ = child.kill();
                break Err(STOPPED.into());
            }
            let chunk = match chunks.next_chunk() {
                Ok(None) => break Ok(()),
                Ok(Some(chunk)) => chunk,
                Err(e) => {
                    let _ = child.kill();
                    break Err(e);
                }
            };
            if stdin.write_all(&chunk).is_err() {
                // pg_restore stopped reading: its exit says why.
                break Ok(());
            }
        };
        drop(stdin);
        let out = child
            .wait_with_output()
            .map_err(|e| format!("waiting for pg_restore: {e}"))?;
        copied?;
        if out.status.success() {
            Ok(())
        } else {
            let stderr = String::from_utf8_lossy(&out.stderr);
            let lines: Vec<&str> = stderr
                .lines()
                .filter(|l| !l.trim().is_empty())
                .take(8)
                .collect();
            Err(format!(
                "pg_restore failed ({}): {}",
                out.status,
                lines.join("; ")
            ))
        }
    })
    .await
    .map_err(|e| format!("restore: {e}"))?
}

/// A scratch database, dropped when this is dropped (a cancelled task's
/// future is dropped where it stands): the drop runs on a task of its own.
struct Scratch {
    admin_url: String,
    name: String,
    armed: bool,
}

impl Scratch {
    async fn drop_now(mut self) -> Result<(), String> {
        self.armed = false;
        drop_database(&self.admin_url, &self.name).await
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        if self.armed {
            let (url, name) = (self.admin_url.clone(), self.name.clone());
            tokio::spawn(async move {
                if let Err(e) = drop_database(&url, &name).await {
                    tracing::warn!(database = %name, error = %e, "could not drop a scratch database");
                }
            });
        }
    }
}

async fn drop_database(admin_url: &str, name: &str) -> Result<(), String> {
    let mut conn = PgConnection::connect(admin_url)
        .await
        .map_err(|e| describe_sqlx(&e))?;
    let sql = sqlx::AssertSqlSafe(format!(
        "DROP DATABASE IF EXISTS {} WITH (FORCE)",
        quote_ident(name)
    ));
    sqlx::raw_sql(sql)
        .execute(&mut conn)
        .await
        .map_err(|e| format!("dropping {name}: {}", describe_sqlx(&e)))?;
    let _ = conn.close().await;
    Ok(())
}

/// A check's one value as text: the first column of the first row.
fn value_text(row: &sqlx::postgres::PgRow) -> Result<Option<String>, String> {
    if let Ok(v) = row.try_get::<Option<String>, _>(0) {
        return Ok(v);
    }
    if let Ok(v) = row.try_get::<Option<i64>, _>(0) {
        return Ok(v.map(|n| n.to_string()));
    }
    if let Ok(v) = row.try_get::<Option<i32>, _>(0) {
        return Ok(v.map(|n| n.to_string()));
    }
    if let Ok(v) = row.try_get::<Option<f64>, _>(0) {
        return Ok(v.map(|n| n.to_string()));
    }
    if let Ok(v) = row.try_get::<Option<bool>, _>(0) {
        return Ok(v.map(|b| b.to_string()));
    }
    Err("its value is of a type Ferry does not read; cast it, e.g. (…)::text".into())
}

async fn run(spec: VerifySpec, ctx: &TaskContext) -> Result<Done, TaskFailure> {
    let DbLocation::UrlSecret(secret) = &spec.location else {
        return container::run(&spec, ctx).await;
    };
    let url = ctx
        .secrets
        .get(secret)
        .ok_or_else(|| failed(format!("the secret {secret} was not sent with the task")))?;
    let target = PgTarget::parse(url)
        .map_err(|e| failed(format!("the secret {secret} is not a PostgreSQL URL: {e}")))?;

    // The scratch database, on the backup's server; the file's checksum
    // is checked as it is restored into it.
    let step = Instant::now();
    let name = format!("ferry_verify_{}", ctx.task_id.simple());
    ctx.step_started("restore", &format!("into scratch database {name}"));
    let mut admin = tokio::time::timeout(CONNECT_TIMEOUT, PgConnection::connect(url))
        .await
        .map_err(|_| {
            failed(format!(
                "cannot connect to database {}: no answer",
                spec.database
            ))
        })?
        .map_err(|e| {
            failed(format!(
                "cannot connect to database {} ({secret}): {}",
                spec.database,
                describe_sqlx(&e)
            ))
        })?;
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
        "CREATE DATABASE {}",
        quote_ident(&name)
    )))
    .execute(&mut admin)
    .await
    .map_err(|e| {
        failed(format!(
            "creating the scratch database {name}: {}",
            describe_sqlx(&e)
        ))
    })?;
    let _ = admin.close().await;
    let scratch = Scratch {
        admin_url: url.clone(),
        name: name.clone(),
        armed: true,
    };
    let outcome = verify_in(&spec, ctx, &target, url, &name, step).await;
    let dropped = scratch.drop_now().await;
    let report = outcome?;
    if let Err(e) = dropped {
        ctx.log("restore", "stderr", &format!("could not drop {name}: {e}"));
    }
    Ok(Done {
        message: format!(
            "backup {} verified: sha256 matches, {} tables and {} rows as in the manifest, {} checks passed",
            spec.backup_id, report.tables, report.rows, report.checks
        ),
        result_json: serde_json::to_string(&report).map_err(|e| failed(e.to_string()))?,
    })
}

/// Restore, counts and checks in the scratch database `name`.
async fn verify_in(
    spec: &VerifySpec,
    ctx: &TaskContext,
    target: &PgTarget,
    url: &str,
    name: &str,
    step: Instant,
) -> Result<VerifyReport, TaskFailure> {
    let args = vec![
        "--no-owner".to_string(),
        "--exit-on-error".to_string(),
        format!("--dbname={}", target.url_for(name)),
    ];
    let pg_restore = ctx.host.pg_tool("pg_restore");
    if let Err(e) = restore_file(
        &pg_restore,
        &spec.path,
        Some(&spec.sha256),
        args,
        target.password.clone(),
        &ctx.cancel,
    )
    .await
    {
        ctx.step_finished("restore", false, &e, step);
        return Err(if ctx.cancel.is_cancelled() {
            TaskFailure::Cancelled
        } else {
            failed(e)
        });
    }
    ctx.step_finished("restore", true, "restored", step);

    let step = Instant::now();
    ctx.step_started("counts", &format!("{} tables", spec.row_counts.len()));
    let options = PgConnectOptions::from_str(url)
        .map_err(|e| failed(describe_sqlx(&e)))?
        .database(name);
    let mut conn = options
        .connect()
        .await
        .map_err(|e| failed(format!("connecting to {name}: {}", describe_sqlx(&e))))?;
    let mut differ = Vec::new();
    let mut found = BTreeMap::new();
    for (table, want) in &spec.row_counts {
        let (schema, rel) = table.split_once('.').unwrap_or(("public", table));
        let sql = sqlx::AssertSqlSafe(format!(
            "SELECT count(*) FROM {}.{}",
            quote_ident(schema),
            quote_ident(rel)
        ));
        match sqlx::query_scalar::<_, i64>(sql).fetch_one(&mut conn).await {
            Ok(n) if n as u64 == *want => {
                found.insert(table.clone(), n as u64);
            }
            Ok(n) => differ.push(format!("{table}: {n} rows, the manifest says {want}")),
            Err(e) => differ.push(format!("{table}: {}", describe_sqlx(&e))),
        }
    }
    if !differ.is_empty() {
        let why = format!("row counts differ from the manifest: {}", differ.join("; "));
        ctx.step_finished("counts", false, &why, step);
        return Err(failed(why));
    }
    let rows: u64 = found.values().sum();
    ctx.step_finished(
        "counts",
        true,
        &format!("{} tables, {rows} rows, as in the manifest", found.len()),
        step,
    );

    let step = Instant::now();
    ctx.step_started("checks", &format!("{} checks", spec.checks.len()));
    for (i, check) in spec.checks.iter().enumerate() {
        let label = format!("check {} ({})", i + 1, check.sql);
        let row = sqlx::query(sqlx::AssertSqlSafe(check.sql.clone()))
            .fetch_optional(&mut conn)
            .await
            .map_err(|e| failed(format!("{label}: {}", describe_sqlx(&e))))?;
        let value = match &row {
            Some(r) => value_text(r).map_err(|e| failed(format!("{label}: {e}")))?,
            None => None,
        };
        if let Err(e) = check.expect.check(value.as_deref()) {
            let why = format!("{label}: {e}");
            ctx.step_finished("checks", false, &why, step);
            return Err(failed(why));
        }
        ctx.log("checks", "stdout", &format!("{label}: passed"));
    }
    ctx.step_finished("checks", true, "all passed", step);
    let _ = conn.close().await;
    Ok(VerifyReport {
        backup_id: spec.backup_id.clone(),
        tables: found.len(),
        rows,
        checks: spec.checks.len(),
    })
}
