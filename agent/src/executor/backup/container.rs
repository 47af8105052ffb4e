//! Backups of a database served from inside a container: the container's
//! own dump tool run there with `docker exec`, its stdout streamed through
//! the same writer as every backup ([`super::pump`]).
//!
//! - PostgreSQL: a long-lived `psql` session in the container opens the
//!   `REPEATABLE READ` transaction and exports its snapshot; `pg_dump
//!   --snapshot` dumps it while the same session counts every table's rows
//!   in it (no network path from the host to the server is needed, nor a
//!   password the socket does not ask for). The container's `pg_dump` must
//!   not be older than its server.
//! - MariaDB: `mariadb-dump --single-transaction --routines --triggers`
//!   (or `mysqldump`); its snapshot cannot be shared, so the rows are
//!   counted in the dump text itself as it passes ([`RowCounter`]): exact
//!   counts of what the file holds.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use bollard::Docker;
use ferry_common::health::human_bytes;
use ferry_common::job::backup::{
    BackupManifest, BackupSpec, COMPRESSION_ZSTD, DbEngine, FORMAT_MARIADB_SQL, FORMAT_PG_CUSTOM,
    restore_hint_for,
};
use tokio::io::AsyncWriteExt;

use super::super::dbexec::{
    self, KillOnDrop, Located, Login, MariaTools, Psql, RowCounter, first_lines,
};
use super::{
    STOPPED, TABLES_SQL, Table, TaskContext, TaskFailure, Version, failed, parse_tool_version,
    prepare_files, pump, select_tables, write_manifest,
};

pub(super) async fn run(
    spec: &BackupSpec,
    ctx: &TaskContext,
) -> Result<BackupManifest, TaskFailure> {
    let c = spec
        .location
        .in_container()
        .ok_or_else(|| failed("not a database in a container"))?;
    let docker = ctx.host.docker()?.clone();
    let login = Login::of(spec.engine, c, ctx, &spec.app, &spec.env).map_err(failed)?;
    let step = Instant::now();
    ctx.step_started(
        "connect",
        &format!(
            "database {} in {} {}",
            c.database,
            spec.location.field(),
            c.name
        ),
    );
    let on = match dbexec::locate(
        &docker,
        &ctx.host.name,
        &spec.app,
        &spec.env,
        &spec.location,
    )
    .await
    {
        Ok(on) => on,
        Err(why) => {
            ctx.step_finished("connect", false, &why, step);
            return Err(failed(why));
        }
    };
    match spec.engine {
        DbEngine::Postgres => postgres(spec, ctx, &docker, &on, &login, step).await,
        DbEngine::Mariadb => mariadb(spec, ctx, &docker, &on, &login, step).await,
    }
}

/// Ends the "connect" step with `why` and returns it as the failure.
fn connect_failed(ctx: &TaskContext, step: Instant, why: String) -> TaskFailure {
    ctx.step_finished("connect", false, &why, step);
    failed(why)
}

async fn postgres(
    spec: &BackupSpec,
    ctx: &TaskContext,
    docker: &Docker,
    on: &Located,
    login: &Login,
    step: Instant,
) -> Result<BackupManifest, TaskFailure> {
    let id = ctx.task_id.to_string();
    let started_at = ferry_common::time::rfc3339(time::OffsetDateTime::now_utc());
    let in_db = |e: String| format!("database {} in container {}: {e}", login.database, on.name);

    // 1. The server (through the session that will hold the snapshot), and
    // a pg_dump in the container that can dump it.
    let mut psql = Psql::open(docker, on, login, &login.database)
        .await
        .map_err(|e| connect_failed(ctx, step, in_db(e)))?;
    let version = psql
        .query("SELECT current_setting('server_version'), current_setting('server_version_num')")
        .await
        .map_err(|e| connect_failed(ctx, step, in_db(e)))?;
    let server = version
        .first()
        .and_then(|row| {
            let text = row
                .first()?
                .as_deref()?
                .split_whitespace()
                .next()?
                .to_string();
            let num: u32 = row.get(1)?.as_deref()?.parse().ok()?;
            Some(Version {
                text,
                major: num / 10000,
            })
        })
        .ok_or_else(|| {
            connect_failed(
                ctx,
                step,
                in_db("the server's version is unreadable".into()),
            )
        })?;
    let ran = dbexec::run(docker, on, &["pg_dump".into(), "--version".into()], &[])
        .await
        .map_err(|e| connect_failed(ctx, step, e))?;
    let tool_line = ran
        .ok("pg_dump --version")
        .map_err(|e| connect_failed(ctx, step, format!("container {}: {e}", on.name)))?;
    let tool = parse_tool_version(&tool_line).ok_or_else(|| {
        connect_failed(
            ctx,
            step,
            format!(
                "pg_dump --version in {} printed {:?}",
                on.name,
                tool_line.trim()
            ),
        )
    })?;
    if tool.major < server.major {
        return Err(connect_failed(
            ctx,
            step,
            format!(
                "the pg_dump in container {} is version {} but its server is PostgreSQL {}: an older pg_dump cannot dump a newer server; the image needs the client of version {} or newer",
                on.name, tool.text, server.text, server.major
            ),
        ));
    }
    ctx.step_finished(
        "connect",
        true,
        &format!(
            "PostgreSQL {}, pg_dump {} in container {}",
            server.text, tool.text, on.name
        ),
        step,
    );

    // 2. One snapshot for the dump and the counts.
    let snapshot = async {
        psql.query("BEGIN ISOLATION LEVEL REPEATABLE READ, READ ONLY")
            .await?;
        let snapshot = psql
            .value("SELECT pg_export_snapshot()")
            .await?
            .ok_or("no snapshot was exported")?;
        let all: Vec<Table> = psql
            .query(TABLES_SQL)
            .await?
            .into_iter()
            .filter_map(|row| {
                let mut f = row.into_iter();
                Some(Table {
                    schema: f.next()??,
                    name: f.next()??,
                })
            })
            .collect();
        Ok::<_, String>((snapshot, select_tables(all, &spec.tables)?))
    }
    .await;
    let (snapshot, tables) = snapshot.map_err(|e| failed(in_db(e)))?;

    // 3. Dump (in the container), compress, hash, count (in the session).
    let (file, manifest_path, guard) = prepare_files(spec, ctx, &id, None)?;
    let step = Instant::now();
    ctx.step_started(
        "dump",
        &format!(
            "pg_dump in container {} of {} tables to {}",
            on.name,
            tables.len(),
            file.display()
        ),
    );
    let mut cmd: Vec<String> = vec![
        "pg_dump".into(),
        "--format=custom".into(),
        "--compress=0".into(),
        "--verbose".into(),
        "--no-password".into(),
        format!("--snapshot={snapshot}"),
        "-U".into(),
        login.user.clone(),
        "-d".into(),
        login.database.clone(),
    ];
    if !spec.tables.is_empty() {
        cmd.extend(tables.iter().map(|t| format!("--table={}", t.quoted())));
    }
    let stop = ctx.cancel.child_token();
    let dump = async {
        let r = dump_in_container(docker, on, &cmd, &login.env(), &file, ctx, &stop, None).await;
        if r.is_err() {
            stop.cancel();
        }
        r.map(|(d, _)| d)
    };
    let counts = async {
        let r = tokio::select! {
            _ = stop.cancelled() => Err(STOPPED.to_string()),
            r = count_rows(&mut psql, &tables, ctx) => r,
        };
        if r.is_err() {
            stop.cancel();
        }
        r
    };
    let (dumped, counted) = tokio::join!(dump, counts);
    if counted.is_ok() {
        let _ = psql.query("COMMIT").await;
        psql.close().await;
    } else {
        psql.kill().await;
    }
    let failure = match (&dumped, &counted) {
        (_, Err(c)) if c != STOPPED => Some(failed(format!(
            "counting rows in the dump's snapshot failed: {c}"
        ))),
        (Err(e), _) => Some(e.clone()),
        _ => None,
    };
    let (dumped, row_counts) = match (failure, dumped, counted) {
        (None, Ok(d), Ok(c)) => (d, c),
        (failure, _, _) => {
            drop(guard);
            return Err(dump_failed(ctx, step, failure));
        }
    };
    ctx.step_finished("dump", true, &summary(&dumped, &row_counts), step);
    let path = file.display().to_string();
    let manifest = BackupManifest {
        tenant: None,
        id,
        app: spec.app.clone(),
        env: spec.env.clone(),
        database: spec.database.clone(),
        engine: spec.engine,
        server_version: server.text,
        dump_tool: format!("pg_dump {} (in container {})", tool.text, on.name),
        format: FORMAT_PG_CUSTOM.into(),
        compression: COMPRESSION_ZSTD.into(),
        path: path.clone(),
        size_bytes: dumped.size_bytes,
        dump_bytes: dumped.dump_bytes,
        sha256: dumped.sha256.clone(),
        tables: spec.tables.clone(),
        row_counts,
        started_at,
        ended_at: ferry_common::time::rfc3339(time::OffsetDateTime::now_utc()),
        job_id: ctx.job_id.to_string(),
        reason: spec.reason,
        restore_hint: restore_hint_for(spec.engine, &spec.location, &path),
    };
    write_manifest(&manifest, &manifest_path, guard)?;
    Ok(manifest)
}

fn summary(dumped: &super::Dumped, counts: &BTreeMap<String, u64>) -> String {
    format!(
        "{} dumped, {} written (zstd), {} rows in {} tables",
        human_bytes(dumped.dump_bytes),
        human_bytes(dumped.size_bytes),
        counts.values().sum::<u64>(),
        counts.len()
    )
}

fn dump_failed(ctx: &TaskContext, step: Instant, failure: Option<TaskFailure>) -> TaskFailure {
    let failure = failure.unwrap_or_else(|| failed("the dump stopped"));
    let why = match &failure {
        TaskFailure::Cancelled => "cancelled; no file left".to_string(),
        TaskFailure::Failed(m) | TaskFailure::Undone(m) => m.clone(),
    };
    ctx.step_finished("dump", false, &why, step);
    failure
}

/// Every table's exact row count, in the session's snapshot.
async fn count_rows(
    psql: &mut Psql,
    tables: &[Table],
    ctx: &TaskContext,
) -> Result<BTreeMap<String, u64>, String> {
    let mut counts = BTreeMap::new();
    for t in tables {
        // Names come from pg_class and are quoted as identifiers.
        let n = psql
            .value(&format!("SELECT count(*) FROM {}", t.quoted()))
            .await
            .map_err(|e| format!("{}: {e}", t.key()))?
            .and_then(|v| v.parse::<u64>().ok())
            .ok_or_else(|| format!("{}: no count", t.key()))?;
        ctx.log("count", "stdout", &format!("{}: {n} rows", t.key()));
        counts.insert(t.key(), n);
    }
    Ok(counts)
}

/// Runs the dump command `cmd` in the container and streams its stdout
/// into the backup file through [`pump`]; with `counter`, the MariaDB
/// dump's rows are counted as they pass. Returns what was written, and
/// the counter.
#[allow(clippy::too_many_arguments)]
async fn dump_in_container(
    docker: &Docker,
    on: &Located,
    cmd: &[String],
    env: &[String],
    file: &std::path::Path,
    ctx: &TaskContext,
    stop: &tokio_util::sync::CancellationToken,
    counter: Option<RowCounter>,
) -> Result<(super::Dumped, Option<RowCounter>), TaskFailure> {
    let tool = cmd[0].clone();
    let started = dbexec::start(docker, on, cmd, env).await.map_err(failed)?;
    let killer = KillOnDrop::new(docker, &started.id);
    let dbexec::Started {
        id,
        output,
        mut input,
    } = started;
    let _ = input.shutdown().await;
    let stderr = Arc::new(Mutex::new(String::new()));
    // pg_dump --verbose names each table as it dumps it.
    let current = Arc::new(Mutex::new(String::new()));
    let on_line = {
        let (current, ctx) = (Arc::clone(&current), ctx.clone());
        move |line: &str| {
            if let Some(t) = line
                .split("dumping contents of table ")
                .nth(1)
                .map(|t| t.trim_matches('"').to_string())
            {
                ctx.log("dump", "stderr", &format!("dumping {t}"));
                *current.lock().unwrap_or_else(|p| p.into_inner()) = t;
            }
        }
    };
    let source = dbexec::stdout_stream(output, Arc::clone(&stderr), on_line);
    let mut counter = counter;
    let pumped = {
        let mut observe = |chunk: &[u8]| match &mut counter {
            Some(c) => {
                c.feed(chunk);
                c.current().to_string()
            }
            None => current.lock().unwrap_or_else(|p| p.into_inner()).clone(),
        };
        pump(source, file, ctx, stop, &tool, &mut observe).await
    };
    if !pumped.is_ok() {
        dbexec::kill(docker, &id).await;
    }
    killer.disarm();
    let code = dbexec::exit_code(docker, &id).await;
    let said = stderr.lock().unwrap_or_else(|p| p.into_inner()).clone();
    let said: String = said
        .lines()
        .filter(|l| {
            !l.starts_with("pg_dump: ")
                || l.contains("error")
                || l.contains("detail")
                || l.contains("hint")
        })
        .collect::<Vec<_>>()
        .join("\n");
    let tool_result = match code {
        Ok(0) => Ok(()),
        Ok(code) if dbexec::not_found(code) => Err(failed(format!(
            "{tool} is not in container {} (exit {code}): {}",
            on.name,
            first_lines(&said)
        ))),
        Ok(code) => Err(failed(format!(
            "{tool} in container {} failed (exit {code}): {}",
            on.name,
            first_lines(&said)
        ))),
        Err(e) => Err(failed(e)),
    };
    let dumped = pumped.finish(tool_result, file)?;
    Ok((dumped, counter))
}

async fn mariadb(
    spec: &BackupSpec,
    ctx: &TaskContext,
    docker: &Docker,
    on: &Located,
    login: &Login,
    step: Instant,
) -> Result<BackupManifest, TaskFailure> {
    let id = ctx.task_id.to_string();
    let started_at = ferry_common::time::rfc3339(time::OffsetDateTime::now_utc());
    let tools = MariaTools::find(docker, on)
        .await
        .map_err(|e| connect_failed(ctx, step, e))?;
    let server = tools
        .query(docker, on, login, Some(&login.database), "SELECT VERSION()")
        .await
        .map_err(|e| {
            connect_failed(
                ctx,
                step,
                format!("database {} in container {}: {e}", login.database, on.name),
            )
        })?
        .into_iter()
        .next()
        .and_then(|r| r.into_iter().next().flatten())
        .unwrap_or_default();
    ctx.step_finished(
        "connect",
        true,
        &format!(
            "MariaDB {server}, {} in container {}",
            tools.dump_version, on.name
        ),
        step,
    );

    let (file, manifest_path, guard) = prepare_files(spec, ctx, &id, None)?;
    let step = Instant::now();
    ctx.step_started(
        "dump",
        &format!(
            "{} in container {} to {}",
            tools.dump,
            on.name,
            file.display()
        ),
    );
    let mut cmd: Vec<String> = vec![
        tools.dump.into(),
        "--default-character-set=utf8mb4".into(),
        "--single-transaction".into(),
        "--routines".into(),
        "--triggers".into(),
        "--hex-blob".into(),
        "-u".into(),
        login.user.clone(),
        login.database.clone(),
    ];
    cmd.extend(spec.tables.iter().cloned());
    let stop = ctx.cancel.child_token();
    let result = dump_in_container(
        docker,
        on,
        &cmd,
        &login.env(),
        &file,
        ctx,
        &stop,
        Some(RowCounter::default()),
    )
    .await;
    let (dumped, counter) = match result {
        Ok(r) => r,
        Err(e) => {
            drop(guard);
            return Err(dump_failed(ctx, step, Some(e)));
        }
    };
    let row_counts = match counter.map(RowCounter::finish) {
        Some(Ok(c)) => c,
        Some(Err(e)) => {
            drop(guard);
            return Err(dump_failed(ctx, step, Some(failed(e))));
        }
        None => BTreeMap::new(),
    };
    for (t, n) in &row_counts {
        ctx.log("count", "stdout", &format!("{t}: {n} rows"));
    }
    ctx.step_finished("dump", true, &summary(&dumped, &row_counts), step);
    let path = file.display().to_string();
    let manifest = BackupManifest {
        tenant: None,
        id,
        app: spec.app.clone(),
        env: spec.env.clone(),
        database: spec.database.clone(),
        engine: spec.engine,
        server_version: server,
        dump_tool: format!("{} (in container {})", tools.dump_version, on.name),
        format: FORMAT_MARIADB_SQL.into(),
        compression: COMPRESSION_ZSTD.into(),
        path: path.clone(),
        size_bytes: dumped.size_bytes,
        dump_bytes: dumped.dump_bytes,
        sha256: dumped.sha256.clone(),
        tables: spec.tables.clone(),
        row_counts,
        started_at,
        ended_at: ferry_common::time::rfc3339(time::OffsetDateTime::now_utc()),
        job_id: ctx.job_id.to_string(),
        reason: spec.reason,
        restore_hint: restore_hint_for(spec.engine, &spec.location, &path),
    };
    write_manifest(&manifest, &manifest_path, guard)?;
    Ok(manifest)
}
