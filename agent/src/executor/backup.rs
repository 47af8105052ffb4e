//! `backup`: a PostgreSQL database dumped by `pg_dump` (custom format,
//! uncompressed) and compressed here with zstd while the SHA-256 of the
//! file is computed on the same pass, then fsynced and renamed into place
//! with a manifest beside it. The rows of every dumped table are counted in
//! the dump's own snapshot while the dump runs, so the manifest says
//! exactly what the file holds.
//!
//! No partial file survives a failure: everything is written to
//! `<name>.partial` first and removed on any error or cancellation, and
//! [`remove_partial_files`] clears what an agent killed mid-backup left.

use std::collections::BTreeMap;
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use ferry_common::appfile::DbLocation;
use ferry_common::health::human_bytes;
use ferry_common::job::backup::{
    BackupManifest, BackupSpec, COMPRESSION_ZSTD, FORMAT_PG_CUSTOM, restore_hint,
};
use sha2::{Digest, Sha256};
use sqlx::{Connection, PgConnection};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, BufReader};
use tokio_util::sync::CancellationToken;

use super::backup_file::CHUNK;
use super::{Done, KindExecutor, TaskContext, TaskFailure};

mod container;

/// Runs `backup` tasks.
pub struct Backup;

#[async_trait::async_trait]
impl KindExecutor for Backup {
    type Spec = BackupSpec;
    async fn run(&self, spec: BackupSpec, ctx: &TaskContext) -> Result<Done, TaskFailure> {
        run(spec, ctx).await
    }
}

/// What a partial file is called while it is written.
const PARTIAL: &str = ".partial";
/// zstd's level: 1 is several times faster than gzip at a smaller size;
/// higher levels cost CPU the host's app needs.
const ZSTD_LEVEL: i32 = 1;
pub(super) const CONNECT_TIMEOUT: Duration = Duration::from_secs(15);
const PROGRESS_EVERY: Duration = Duration::from_secs(1);
/// What the dump or the count says when the other one's failure stopped it.
const STOPPED: &str = "stopped";

pub(super) fn failed(message: impl Into<String>) -> TaskFailure {
    TaskFailure::Failed(message.into())
}

/// The folder of one database's backups.
pub fn database_dir(backup_dir: &Path, app: &str, env: &str, database: &str) -> PathBuf {
    backup_dir.join(app).join(env).join(database)
}

/// The backup file of backup `id` in `dir`.
pub fn backup_file(dir: &Path, id: &str) -> PathBuf {
    dir.join(format!("{id}.dump.zst"))
}

/// The manifest of backup `id` in `dir`.
pub fn manifest_file(dir: &Path, id: &str) -> PathBuf {
    dir.join(format!("{id}.manifest.json"))
}

fn partial(path: &Path) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(PARTIAL);
    PathBuf::from(name)
}

/// Files removed when dropped unless disarmed: the runner drops an
/// executor's future where it stands on cancellation, so cleanup that must
/// happen cannot wait for code after an `.await`.
struct RemoveOnDrop(Vec<PathBuf>);

impl RemoveOnDrop {
    fn disarm(mut self) {
        self.0.clear();
    }
}

impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        for path in &self.0 {
            let _ = std::fs::remove_file(path);
        }
    }
}

/// Removes every `*.partial` file under `backup_dir` (three levels:
/// app/env/database), left by an agent killed while writing one. Returns
/// what it removed.
pub fn remove_partial_files(backup_dir: &Path) -> Vec<PathBuf> {
    let mut removed = Vec::new();
    let mut dirs = vec![(backup_dir.to_path_buf(), 0)];
    while let Some((dir, depth)) = dirs.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            let is_dir = entry.file_type().is_ok_and(|t| t.is_dir());
            if is_dir && depth < 3 {
                dirs.push((path, depth + 1));
            } else if !is_dir
                && path.to_string_lossy().ends_with(PARTIAL)
                && std::fs::remove_file(&path).is_ok()
            {
                tracing::warn!(path = %path.display(), "removed a partial backup file left by an interrupted backup");
                removed.push(path);
            }
        }
    }
    removed
}

async fn run(spec: BackupSpec, ctx: &TaskContext) -> Result<Done, TaskFailure> {
    let manifest = match &spec.location {
        DbLocation::UrlSecret(secret) => {
            let url = ctx.secrets.get(secret).ok_or_else(|| {
                failed(format!(
                    "the secret {secret} (the URL of database {}) was not sent with the task; set it with `ferry secret set --app {} --env {} {secret}`",
                    spec.database, spec.app, spec.env
                ))
            })?;
            backup_postgres_url(&spec, url, ctx).await?
        }
        DbLocation::Service(_) | DbLocation::Container(_) => container::run(&spec, ctx).await?,
    };
    Ok(Done {
        message: format!(
            "{}: {} ({} before compression), sha256 {}",
            manifest.path,
            human_bytes(manifest.size_bytes),
            human_bytes(manifest.dump_bytes),
            &manifest.sha256[..12]
        ),
        result_json: serde_json::to_string(&manifest)
            .map_err(|e| failed(format!("manifest: {e}")))?,
    })
}

/// A PostgreSQL database reached from the host at `url` (the value of
/// `spec.location`'s secret) dumped by the host's `pg_dump` into the
/// agent's backup folder; the manifest is written beside the file and
/// returned. The entry point for every backup of a database given by URL
/// (a `backup` task's, a pre-migration backup's).
pub async fn backup_postgres_url(
    spec: &BackupSpec,
    url: &str,
    ctx: &TaskContext,
) -> Result<BackupManifest, TaskFailure> {
    let secret = match &spec.location {
        DbLocation::UrlSecret(s) => s.as_str(),
        _ => "the URL",
    };
    backup_to_file(spec, url, secret, None, ctx.task_id.to_string(), ctx).await
}

/// A backup of the PostgreSQL database at `url`, for other executors (the
/// `migrate` job's pre-migration backups): the same dump, file, manifest
/// and cleanup as a `backup` task, under a new id, in the folder of
/// (`app`, `env`, `database`) — a tenant's in `tenants/<tenant>` below it.
/// The manifest is returned; the caller reports it for cataloguing.
pub async fn backup_url(
    url: &str,
    app: &str,
    env: &str,
    database: &str,
    tenant: Option<&str>,
    reason: ferry_common::status::BackupReason,
    ctx: &TaskContext,
) -> Result<BackupManifest, TaskFailure> {
    let spec = BackupSpec {
        app: app.to_string(),
        env: env.to_string(),
        database: database.to_string(),
        engine: ferry_common::job::backup::DbEngine::Postgres,
        location: DbLocation::UrlSecret(String::new()),
        tables: Vec::new(),
        reason,
    };
    let id = uuid::Uuid::now_v7().to_string();
    backup_to_file(&spec, url, "the database URL", tenant, id, ctx).await
}

/// A tenant's name as a folder name: bytes outside `[A-Za-z0-9_.-]`
/// percent-encoded, and never `.` or `..`.
fn tenant_folder(tenant: &str) -> String {
    let mut out = String::new();
    for b in tenant.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-') || (b == b'.' && !out.is_empty()) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// The dump of `backup_postgres_url` and `backup_url`: backup `id`, of
/// the tenant `tenant` of the database when it is one.
async fn backup_to_file(
    spec: &BackupSpec,
    url: &str,
    secret: &str,
    tenant: Option<&str>,
    id: String,
    ctx: &TaskContext,
) -> Result<BackupManifest, TaskFailure> {
    let target = PgTarget::parse(url).map_err(|e| {
        failed(format!(
            "the secret {secret} is not a PostgreSQL URL: {e}; expected postgres://USER:PASSWORD@HOST:PORT/DATABASE"
        ))
    })?;
    let started_at = ferry_common::time::rfc3339(time::OffsetDateTime::now_utc());

    // 1. The server, and a pg_dump that can dump it.
    let step = Instant::now();
    ctx.step_started("connect", &format!("database {}", spec.database));
    let mut conn = match tokio::time::timeout(CONNECT_TIMEOUT, PgConnection::connect(url)).await {
        Ok(Ok(c)) => c,
        Ok(Err(e)) => {
            let why = format!(
                "cannot connect to database {} ({secret}): {}",
                spec.database,
                describe_sqlx(&e)
            );
            ctx.step_finished("connect", false, &why, step);
            return Err(failed(why));
        }
        Err(_) => {
            let why = format!(
                "cannot connect to database {} ({secret}): no answer within {}s",
                spec.database,
                CONNECT_TIMEOUT.as_secs()
            );
            ctx.step_finished("connect", false, &why, step);
            return Err(failed(why));
        }
    };
    let server = server_version(&mut conn).await.map_err(failed)?;
    let pg_dump = ctx.host.pg_tool("pg_dump");
    let tool = match tool_version(&pg_dump).await {
        Ok(v) => v,
        Err(why) => {
            ctx.step_finished("connect", false, &why, step);
            return Err(failed(why));
        }
    };
    if tool.major < server.major {
        let why = format!(
            "{} is version {} but the server is PostgreSQL {}: an older pg_dump cannot dump a newer server; install the client of version {} or newer (agent.toml pg_bin_dir names where it is)",
            pg_dump.display(),
            tool.text,
            server.text,
            server.major
        );
        ctx.step_finished("connect", false, &why, step);
        return Err(failed(why));
    }
    ctx.step_finished(
        "connect",
        true,
        &format!("PostgreSQL {}, pg_dump {}", server.text, tool.text),
        step,
    );

    // 2. One snapshot for the dump and the counts.
    let (snapshot, tables) = snapshot_and_tables(&mut conn, &spec.tables)
        .await
        .map_err(|e| failed(format!("database {}: {e}", spec.database)))?;

    // 3. Dump, compress, hash, count.
    let (file, manifest_path, guard) = prepare_files(spec, ctx, &id, tenant)?;
    let step = Instant::now();
    ctx.step_started(
        "dump",
        &format!("pg_dump of {} tables to {}", tables.len(), file.display()),
    );
    let mut args = vec![
        "--format=custom".to_string(),
        "--compress=0".to_string(),
        "--verbose".to_string(),
        "--no-password".to_string(),
        format!("--snapshot={snapshot}"),
        format!("--dbname={}", target.url_without_password),
    ];
    if !spec.tables.is_empty() {
        args.extend(tables.iter().map(|t| format!("--table={}", t.quoted())));
    }
    let stop = ctx.cancel.child_token();
    let dump = dump(
        &pg_dump,
        &args,
        target.password.as_deref(),
        &file,
        ctx,
        &stop,
    );
    let counts = async {
        let r = tokio::select! {
            _ = stop.cancelled() => Err(STOPPED.to_string()),
            r = count_rows(&mut conn, &tables, ctx) => r,
        };
        if r.is_err() {
            stop.cancel();
        }
        r
    };
    let (dumped, counted) = tokio::join!(dump, counts);
    if counted.is_ok() {
        let _ = sqlx::query("COMMIT").execute(&mut conn).await;
        let _ = conn.close().await;
    } else {
        // A count was abandoned mid-query: dropping the connection closes
        // it, which ends the transaction on the server.
        drop(conn);
    }
    // The first real failure wins: the other side only saw "stopped".
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
            let failure = failure.unwrap_or_else(|| failed("the dump stopped"));
            let why = match &failure {
                TaskFailure::Cancelled => "cancelled; no file left".to_string(),
                TaskFailure::Failed(m) | TaskFailure::Undone(m) => m.clone(),
            };
            ctx.step_finished("dump", false, &why, step);
            return Err(failure);
        }
    };
    ctx.step_finished(
        "dump",
        true,
        &format!(
            "{} dumped, {} written (zstd), {} rows in {} tables",
            human_bytes(dumped.dump_bytes),
            human_bytes(dumped.size_bytes),
            row_counts.values().sum::<u64>(),
            row_counts.len()
        ),
        step,
    );

    // 4. The manifest beside the file.
    let path = file.display().to_string();
    let manifest = BackupManifest {
        id: id.clone(),
        app: spec.app.clone(),
        env: spec.env.clone(),
        database: spec.database.clone(),
        tenant: tenant.map(str::to_string),
        engine: spec.engine,
        server_version: server.text,
        dump_tool: format!("pg_dump {}", tool.text),
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
        restore_hint: restore_hint(&path),
    };
    write_manifest(&manifest, &manifest_path, guard)?;
    Ok(manifest)
}

/// Writes `manifest` beside its file and disarms `guard` (which removes
/// both unless both are written: a file without its manifest is not a
/// backup anyone can trust).
fn write_manifest(
    manifest: &BackupManifest,
    manifest_path: &Path,
    guard: RemoveOnDrop,
) -> Result<(), TaskFailure> {
    let json =
        serde_json::to_string_pretty(manifest).map_err(|e| failed(format!("manifest: {e}")))?;
    write_durably(manifest_path, json.as_bytes()).map_err(failed)?;
    guard.disarm();
    Ok(())
}

/// The folder, file, manifest path and cleanup guard of a new backup
/// `id` of `spec`'s database (of its tenant `tenant`, in `tenants/<tenant>`
/// below the database's folder).
fn prepare_files(
    spec: &BackupSpec,
    ctx: &TaskContext,
    id: &str,
    tenant: Option<&str>,
) -> Result<(PathBuf, PathBuf, RemoveOnDrop), TaskFailure> {
    let mut dir = database_dir(&ctx.host.backup_dir, &spec.app, &spec.env, &spec.database);
    if let Some(t) = tenant {
        dir = dir.join("tenants").join(tenant_folder(t));
    }
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(&dir)
        .map_err(|e| failed(format!("cannot create {}: {e}", dir.display())))?;
    let file = backup_file(&dir, id);
    let manifest_path = manifest_file(&dir, id);
    let guard = RemoveOnDrop(vec![
        partial(&file),
        file.clone(),
        partial(&manifest_path),
        manifest_path.clone(),
    ]);
    Ok((file, manifest_path, guard))
}

/// A connection URL split so that the password travels in `PGPASSWORD`,
/// never on a command line other users can read.
#[derive(Debug, PartialEq, Eq)]
pub struct PgTarget {
    pub url_without_password: String,
    pub password: Option<String>,
    /// `scheme://[user@]host[:port]`.
    base: String,
    /// `?…` or empty.
    query: String,
    /// The database the URL names (empty: the server's default).
    pub database: String,
}

impl PgTarget {
    pub fn parse(url: &str) -> Result<PgTarget, String> {
        let (scheme, rest) = url
            .split_once("://")
            .ok_or("it has no scheme (postgres://)")?;
        if scheme != "postgres" && scheme != "postgresql" {
            return Err(format!("its scheme is {scheme:?}"));
        }
        let end = rest.find(['/', '?']).unwrap_or(rest.len());
        let (authority, tail) = rest.split_at(end);
        let query = tail
            .find('?')
            .map(|i| tail[i..].to_string())
            .unwrap_or_default();
        let database = tail
            .strip_prefix('/')
            .map(|p| p.split('?').next().unwrap_or_default().to_string())
            .unwrap_or_default();
        let (user, hostport, password) = match authority.rsplit_once('@') {
            None => (None, authority, None),
            Some((userinfo, hostport)) => match userinfo.split_once(':') {
                Some((u, p)) => (Some(u), hostport, Some(percent_decode(p)?)),
                None => (Some(userinfo), hostport, None),
            },
        };
        let base = match user {
            Some(u) => format!("{scheme}://{u}@{hostport}"),
            None => format!("{scheme}://{hostport}"),
        };
        Ok(PgTarget {
            url_without_password: format!("{base}{tail}"),
            password,
            base,
            query,
            database,
        })
    }

    /// The URL (without the password) of database `name` on the same server.
    pub fn url_for(&self, name: &str) -> String {
        format!("{}/{name}{}", self.base, self.query)
    }
}

fn percent_decode(text: &str) -> Result<String, String> {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = text
                .get(i + 1..i + 3)
                .and_then(|h| u8::from_str_radix(h, 16).ok())
                .ok_or("a '%' in the password is not followed by two hex digits")?;
            out.push(hex);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).map_err(|_| "the password is not UTF-8 once decoded".to_string())
}

/// sqlx's error, without anything that could carry the URL.
pub(super) fn describe_sqlx(e: &sqlx::Error) -> String {
    match e {
        sqlx::Error::Database(db) => db.message().to_string(),
        sqlx::Error::Io(io) => io.to_string(),
        other => other.to_string(),
    }
}

#[derive(Debug, PartialEq, Eq)]
struct Version {
    text: String,
    major: u32,
}

async fn server_version(conn: &mut PgConnection) -> Result<Version, String> {
    let (text, num): (String, String) = sqlx::query_as(
        "SELECT current_setting('server_version'), current_setting('server_version_num')",
    )
    .fetch_one(&mut *conn)
    .await
    .map_err(|e| format!("reading the server's version: {}", describe_sqlx(&e)))?;
    let num: u32 = num
        .parse()
        .map_err(|_| format!("the server reports version number {num:?}"))?;
    let text = text
        .split_whitespace()
        .next()
        .unwrap_or_default()
        .to_string();
    Ok(Version {
        text,
        major: num / 10000,
    })
}

/// `pg_dump --version` (`pg_dump (PostgreSQL) 15.18 (Debian …)`).
async fn tool_version(program: &Path) -> Result<Version, String> {
    let out = tokio::process::Command::new(program)
        .arg("--version")
        .stdin(Stdio::null())
        .output()
        .await
        .map_err(|e| {
            if e.kind() == std::io::ErrorKind::NotFound {
                format!(
                    "{} is not installed on this host; install the PostgreSQL client (Debian: postgresql-client) or set pg_bin_dir in agent.toml",
                    program.display()
                )
            } else {
                format!("cannot run {}: {e}", program.display())
            }
        })?;
    let text = String::from_utf8_lossy(&out.stdout);
    parse_tool_version(&text)
        .ok_or_else(|| format!("{} --version printed {:?}", program.display(), text.trim()))
}

fn parse_tool_version(text: &str) -> Option<Version> {
    let after = text.split(')').nth(1)?.split_whitespace().next()?;
    let major = after.split('.').next()?.parse().ok()?;
    Some(Version {
        text: after.to_string(),
        major,
    })
}

/// A table the dump holds.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Table {
    schema: String,
    name: String,
}

impl Table {
    fn quoted(&self) -> String {
        format!("{}.{}", quote_ident(&self.schema), quote_ident(&self.name))
    }

    fn key(&self) -> String {
        format!("{}.{}", self.schema, self.name)
    }
}

pub(super) fn quote_ident(s: &str) -> String {
    format!("\"{}\"", s.replace('"', "\"\""))
}

/// The tables `pg_dump` dumps: ordinary and partitioned tables outside the
/// system schemas, not members of an extension.
const TABLES_SQL: &str = "SELECT n.nspname::text, c.relname::text
    FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
    WHERE c.relkind IN ('r', 'p')
      AND n.nspname <> 'information_schema' AND n.nspname NOT LIKE 'pg\\_%'
      AND NOT EXISTS (SELECT 1 FROM pg_depend d
                      WHERE d.classid = 'pg_class'::regclass AND d.objid = c.oid AND d.deptype = 'e')
    ORDER BY 1, 2";

/// Opens the `REPEATABLE READ` transaction whose snapshot the dump and the
/// counts share, and lists the tables to dump (the ones asked for, each of
/// which must exist).
async fn snapshot_and_tables(
    conn: &mut PgConnection,
    wanted: &[String],
) -> Result<(String, Vec<Table>), String> {
    let e = |what: &str, err: sqlx::Error| format!("{what}: {}", describe_sqlx(&err));
    sqlx::query("BEGIN ISOLATION LEVEL REPEATABLE READ, READ ONLY")
        .execute(&mut *conn)
        .await
        .map_err(|err| e("opening the snapshot", err))?;
    let snapshot: String = sqlx::query_scalar("SELECT pg_export_snapshot()")
        .fetch_one(&mut *conn)
        .await
        .map_err(|err| e("exporting the snapshot", err))?;
    let all: Vec<Table> = sqlx::query_as::<_, (String, String)>(TABLES_SQL)
        .fetch_all(&mut *conn)
        .await
        .map_err(|err| e("listing the tables", err))?
        .into_iter()
        .map(|(schema, name)| Table { schema, name })
        .collect();
    Ok((snapshot, select_tables(all, wanted)?))
}

/// The tables of `all` that are `wanted` (each must exist); all of them
/// if none is named.
fn select_tables(all: Vec<Table>, wanted: &[String]) -> Result<Vec<Table>, String> {
    if wanted.is_empty() {
        return Ok(all);
    }
    let mut tables = Vec::new();
    for w in wanted {
        let (schema, name) = w.split_once('.').unwrap_or(("public", w));
        match all.iter().find(|t| t.schema == schema && t.name == name) {
            Some(t) => tables.push(t.clone()),
            None => {
                return Err(format!(
                    "table {w:?} does not exist (tables: {})",
                    list(&all)
                ));
            }
        }
    }
    Ok(tables)
}

fn list(tables: &[Table]) -> String {
    let names: Vec<String> = tables.iter().take(20).map(Table::key).collect();
    if names.is_empty() {
        "none".into()
    } else {
        names.join(", ")
    }
}

/// Every table's exact row count, in the transaction's snapshot.
async fn count_rows(
    conn: &mut PgConnection,
    tables: &[Table],
    ctx: &TaskContext,
) -> Result<BTreeMap<String, u64>, String> {
    let mut counts = BTreeMap::new();
    for t in tables {
        // Names come from pg_class and are quoted as identifiers.
        let sql = sqlx::AssertSqlSafe(format!("SELECT count(*) FROM {}", t.quoted()));
        let n: i64 = sqlx::query_scalar(sql)
            .fetch_one(&mut *conn)
            .await
            .map_err(|e| format!("{}: {}", t.key(), describe_sqlx(&e)))?;
        ctx.log("count", "stdout", &format!("{}: {n} rows", t.key()));
        counts.insert(t.key(), n as u64);
    }
    Ok(counts)
}

pub(super) struct Dumped {
    size_bytes: u64,
    dump_bytes: u64,
    sha256: String,
}

/// Runs `pg_dump`, hands its output to the compressing writer, reports
/// progress, and on success leaves the finished file at `file`. On any
/// failure or on `stop`, kills `pg_dump` and leaves at most the partial
/// file (which the caller removes).
async fn dump(
    pg_dump: &Path,
    args: &[String],
    password: Option<&str>,
    file: &Path,
    ctx: &TaskContext,
    stop: &CancellationToken,
) -> Result<Dumped, TaskFailure> {
    let result = dump_inner(pg_dump, args, password, file, ctx, stop).await;
    if result.is_err() {
        // Counting rows is pointless once the dump has failed.
        stop.cancel();
    }
    result
}

async fn dump_inner(
    pg_dump: &Path,
    args: &[String],
    password: Option<&str>,
    file: &Path,
    ctx: &TaskContext,
    stop: &CancellationToken,
) -> Result<Dumped, TaskFailure> {
    let mut cmd = tokio::process::Command::new(pg_dump);
    cmd.args(args)
        .env("PGCONNECT_TIMEOUT", CONNECT_TIMEOUT.as_secs().to_string())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    match password {
        Some(p) => cmd.env("PGPASSWORD", p),
        None => cmd.env_remove("PGPASSWORD"),
    };
    let mut child = cmd
        .spawn()
        .map_err(|e| failed(format!("cannot run {}: {e}", pg_dump.display())))?;
    let stdout = child.stdout.take().ok_or_else(|| failed("no stdout"))?;
    let stderr = child.stderr.take().ok_or_else(|| failed("no stderr"))?;

    // pg_dump --verbose names each table as it dumps it; other lines are
    // kept for the failure message.
    let current = Arc::new(Mutex::new(String::new()));
    let stderr_task = {
        let current = Arc::clone(&current);
        let ctx = ctx.clone();
        tokio::spawn(async move {
            let mut lines = BufReader::new(stderr).lines();
            let mut kept: Vec<String> = Vec::new();
            while let Ok(Some(line)) = lines.next_line().await {
                if let Some(t) = line
                    .split("dumping contents of table ")
                    .nth(1)
                    .map(|t| t.trim_matches('"').to_string())
                {
                    ctx.log("dump", "stderr", &format!("dumping {t}"));
                    *current.lock().unwrap_or_else(|p| p.into_inner()) = t;
                } else if !line.starts_with("pg_dump: ")
                    || line.contains("error")
                    || line.contains("detail")
                    || line.contains("hint")
                {
                    kept.push(line);
                }
            }
            kept
        })
    };

    let source = Box::pin(futures::stream::unfold(stdout, |mut r| async move {
        let mut chunk = vec![0u8; CHUNK];
        match r.read(&mut chunk).await {
            Ok(0) => None,
            Ok(n) => {
                chunk.truncate(n);
                Some((Ok(chunk), r))
            }
            Err(e) => Some((Err(format!("reading pg_dump's output: {e}")), r)),
        }
    }));
    let pumped = pump(source, file, ctx, stop, "pg_dump", &mut |_| {
        current.lock().unwrap_or_else(|p| p.into_inner()).clone()
    })
    .await;
    if pumped.outcome.is_err() || pumped.written.is_err() {
        let _ = child.start_kill();
    }
    let status = child.wait().await;
    let kept = stderr_task.await.unwrap_or_default();
    let tool = match status {
        Err(e) => Err(failed(format!("waiting for pg_dump: {e}"))),
        Ok(status) if !status.success() => {
            let detail = if kept.is_empty() {
                "no message".to_string()
            } else {
                kept.join("; ")
            };
            Err(failed(format!("pg_dump failed ({status}): {detail}")))
        }
        Ok(_) => Ok(()),
    };
    pumped.finish(tool, file)
}

/// What [`pump`] did: how its reading ended, the bytes read, and the
/// writer's outcome (size and SHA-256 of the partial file).
pub(super) struct Pumped {
    outcome: Result<(), TaskFailure>,
    raw: u64,
    written: std::io::Result<(u64, String)>,
}

impl Pumped {
    /// Whether the bytes were all read and written.
    pub(super) fn is_ok(&self) -> bool {
        self.outcome.is_ok() && self.written.is_ok()
    }

    /// The finished file moved into place at `file`, once the tool that
    /// made the bytes said it succeeded (`tool`). The first failure wins:
    /// the disk's (a full disk stops the tool too), the reading's, the
    /// tool's.
    pub(super) fn finish(
        self,
        tool: Result<(), TaskFailure>,
        file: &Path,
    ) -> Result<Dumped, TaskFailure> {
        let part = partial(file);
        if let Err(e) = &self.written
            && self.outcome.is_ok()
        {
            return Err(failed(format!("writing {}: {e}", part.display())));
        }
        self.outcome?;
        tool?;
        let (size_bytes, sha256) = self
            .written
            .map_err(|e| failed(format!("writing {}: {e}", part.display())))?;
        std::fs::rename(&part, file)
            .and_then(|()| sync_dir(file))
            .map_err(|e| failed(format!("moving {} into place: {e}", file.display())))?;
        Ok(Dumped {
            size_bytes,
            dump_bytes: self.raw,
            sha256,
        })
    }
}

/// The one writer path of every backup: the dump's bytes from `source`
/// (a host `pg_dump`'s stdout, or a dump tool's stdout through `docker
/// exec`) compressed with zstd and hashed on one pass into the partial
/// file of `file`, fsynced; [`Pumped::finish`] renames it into place.
/// `observe` sees every chunk and returns the table being dumped, for the
/// progress events. On `stop` or a reading error the partial file is
/// removed (the caller stops the tool).
pub(super) async fn pump(
    mut source: std::pin::Pin<Box<dyn futures::Stream<Item = Result<Vec<u8>, String>> + Send>>,
    file: &Path,
    ctx: &TaskContext,
    stop: &CancellationToken,
    tool: &str,
    observe: &mut (dyn FnMut(&[u8]) -> String + Send),
) -> Pumped {
    use futures::StreamExt;
    let written = Arc::new(AtomicU64::new(0));
    // Set only once the dump's output has been read to its end: a writer
    // whose input stops without it (an error, a cancellation, the future
    // dropped) removes its file instead of finishing it.
    let complete = Arc::new(AtomicBool::new(false));
    let (tx, rx) = tokio::sync::mpsc::channel::<Vec<u8>>(8);
    let part = partial(file);
    let writer = {
        let (written, complete, part) = (Arc::clone(&written), Arc::clone(&complete), part.clone());
        tokio::task::spawn_blocking(move || write_compressed(rx, &part, &written, &complete))
    };

    let mut raw: u64 = 0;
    let mut last_progress = Instant::now();
    let outcome: Result<(), TaskFailure> = loop {
        let next = tokio::select! {
            _ = stop.cancelled() => {
                break Err(if ctx.cancel.is_cancelled() {
                    TaskFailure::Cancelled
                } else {
                    failed(STOPPED)
                });
            }
            r = source.next() => r,
        };
        match next {
            None => break Ok(()),
            Some(Ok(chunk)) => {
                raw += chunk.len() as u64;
                let table = observe(&chunk);
                if tx.send(chunk).await.is_err() {
                    // The writer stopped: its error says why.
                    break Ok(());
                }
                if last_progress.elapsed() >= PROGRESS_EVERY {
                    last_progress = Instant::now();
                    ctx.progress_bytes(
                        "dump",
                        written.load(Ordering::Relaxed),
                        0,
                        &format!("{} read from {tool}; table {table}", human_bytes(raw)),
                    );
                }
            }
            Some(Err(e)) => break Err(failed(e)),
        }
    };
    if outcome.is_ok() {
        complete.store(true, Ordering::SeqCst);
    }
    drop(tx);
    let written = match writer.await {
        Ok(r) => r,
        Err(e) => Err(std::io::Error::other(format!(
            "the backup writer panicked: {e}"
        ))),
    };
    Pumped {
        outcome,
        raw,
        written,
    }
}

/// Counts and hashes what passes through to the file.
struct HashingWriter<W> {
    inner: W,
    sha: Sha256,
    bytes: u64,
    shared: Arc<AtomicU64>,
}

impl<W: Write> Write for HashingWriter<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.sha.update(&buf[..n]);
        self.bytes += n as u64;
        self.shared.store(self.bytes, Ordering::Relaxed);
        Ok(n)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

/// Compresses the chunks from `rx` into a new file at `path`, hashing the
/// file's bytes as they are written; fsyncs it. Returns its size and
/// SHA-256. Input that ends without `complete` set is not a finished dump:
/// the file is removed, as on any error.
fn write_compressed(
    rx: tokio::sync::mpsc::Receiver<Vec<u8>>,
    path: &Path,
    written: &Arc<AtomicU64>,
    complete: &AtomicBool,
) -> std::io::Result<(u64, String)> {
    let result = write_compressed_inner(rx, path, written, complete);
    if result.is_err() {
        let _ = std::fs::remove_file(path);
    }
    result
}

fn write_compressed_inner(
    mut rx: tokio::sync::mpsc::Receiver<Vec<u8>>,
    path: &Path,
    written: &Arc<AtomicU64>,
    complete: &AtomicBool,
) -> std::io::Result<(u64, String)> {
    let file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)?;
    let sink = HashingWriter {
        inner: std::io::BufWriter::with_capacity(1 << 20, file),
        sha: Sha256::new(),
        bytes: 0,
        shared: Arc::clone(written),
    };
    let behind = WriteBehind::start(sink.inner.get_ref())?;
    let mut encoder = zstd::Encoder::new(sink, ZSTD_LEVEL)?;
    let mut kicked = 0u64;
    while let Some(chunk) = rx.blocking_recv() {
        encoder.write_all(&chunk)?;
        let out = encoder.get_ref().bytes;
        if out - kicked >= WRITE_BEHIND_EVERY {
            kicked = out;
            behind.kick();
        }
    }
    if !complete.load(Ordering::SeqCst) {
        return Err(std::io::Error::other("stopped"));
    }
    let mut sink = encoder.finish()?;
    sink.flush()?;
    let file = sink.inner.into_inner().map_err(|e| e.into_error())?;
    behind.finish()?;
    file.sync_all()?;
    Ok((sink.bytes, hex::encode(sink.sha.finalize())))
}

/// How much compressed output is written between two write-behind kicks.
const WRITE_BEHIND_EVERY: u64 = 16 << 20;

/// Flushes the file being written to the disk while the dump goes on
/// (`fdatasync` on a thread of its own, at most one pending), so the
/// final fsync that makes the backup durable finds little left to write
/// instead of the whole file.
struct WriteBehind {
    tx: std::sync::mpsc::SyncSender<()>,
    thread: std::thread::JoinHandle<std::io::Result<()>>,
}

impl WriteBehind {
    fn start(file: &std::fs::File) -> std::io::Result<WriteBehind> {
        let file = file.try_clone()?;
        let (tx, rx) = std::sync::mpsc::sync_channel::<()>(1);
        let thread = std::thread::Builder::new()
            .name("backup-write-behind".into())
            .spawn(move || {
                while rx.recv().is_ok() {
                    file.sync_data()?;
                }
                Ok(())
            })?;
        Ok(WriteBehind { tx, thread })
    }

    /// Asks for a flush of what was written so far (none is queued twice).
    fn kick(&self) {
        let _ = self.tx.try_send(());
    }

    /// Waits for the flush in progress; its error is the file's.
    fn finish(self) -> std::io::Result<()> {
        drop(self.tx);
        self.thread
            .join()
            .map_err(|_| std::io::Error::other("the write-behind thread panicked"))?
    }
}

/// fsyncs the folder holding `path`, so a rename into it survives a crash.
pub(super) fn sync_dir(path: &Path) -> std::io::Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    std::fs::File::open(dir)?.sync_all()
}

/// Writes `bytes` to `path` through a partial file: fsynced, renamed,
/// folder fsynced. Nothing is left at either name on failure.
fn write_durably(path: &Path, bytes: &[u8]) -> Result<(), String> {
    let part = partial(path);
    let result = (|| {
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&part)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        std::fs::rename(&part, path)?;
        sync_dir(path)
    })();
    result.map_err(|e| {
        let _ = std::fs::remove_file(&part);
        let _ = std::fs::remove_file(path);
        format!("writing {}: {e}", path.display())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_password_leaves_the_url() {
        let t = PgTarget::parse("postgres://shop:s%40cret@db.internal:5432/shop?sslmode=disable")
            .unwrap();
        assert_eq!(
            t.url_without_password,
            "postgres://shop@db.internal:5432/shop?sslmode=disable"
        );
        assert_eq!(t.password.as_deref(), Some("s@cret"));
        assert_eq!(t.database, "shop");
        assert_eq!(
            PgTarget::parse("postgresql://localhost/shop")
                .unwrap()
                .password,
            None
        );
        assert!(
            PgTarget::parse("mysql://a@b/c")
                .unwrap_err()
                .contains("scheme")
        );
        assert!(PgTarget::parse("shop").is_err());
        assert!(PgTarget::parse("postgres://u:%zz@h/d").is_err());
    }

    #[test]
    fn tool_versions_are_read() {
        let v =
            parse_tool_version("pg_dump (PostgreSQL) 15.18 (Debian 15.18-0+deb12u1)\n").unwrap();
        assert_eq!((v.text.as_str(), v.major), ("15.18", 15));
        assert_eq!(
            parse_tool_version("pg_dump (PostgreSQL) 9.6.24\n")
                .unwrap()
                .major,
            9
        );
        assert_eq!(parse_tool_version("nonsense"), None);
    }

    #[test]
    fn partial_files_are_removed_at_start_and_nothing_else() {
        let dir = tempfile::tempdir().unwrap();
        let db = database_dir(dir.path(), "shop", "prod", "main");
        std::fs::create_dir_all(&db).unwrap();
        std::fs::write(db.join("a.dump.zst.partial"), b"x").unwrap();
        std::fs::write(db.join("a.manifest.json.partial"), b"x").unwrap();
        std::fs::write(db.join("b.dump.zst"), b"x").unwrap();
        std::fs::write(db.join("b.manifest.json"), b"x").unwrap();
        let mut removed = remove_partial_files(dir.path());
        removed.sort();
        assert_eq!(
            removed,
            [
                db.join("a.dump.zst.partial"),
                db.join("a.manifest.json.partial")
            ]
        );
        assert!(db.join("b.dump.zst").exists() && db.join("b.manifest.json").exists());
        assert!(remove_partial_files(&dir.path().join("missing")).is_empty());
    }

    #[test]
    fn the_writer_compresses_hashes_and_refuses_an_aborted_stream() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("x.partial");
        let (tx, rx) = tokio::sync::mpsc::channel(4);
        let data = b"hello backup ".repeat(10_000);
        let n = Arc::new(AtomicU64::new(0));
        let d = data.clone();
        let t = std::thread::spawn(move || {
            tx.blocking_send(d[..50_000].to_vec()).unwrap();
            tx.blocking_send(d[50_000..].to_vec()).unwrap();
        });
        let (size, sha) = write_compressed(rx, &path, &n, &AtomicBool::new(true)).unwrap();
        t.join().unwrap();
        let bytes = std::fs::read(&path).unwrap();
        assert_eq!(size, bytes.len() as u64);
        assert_eq!(n.load(Ordering::Relaxed), size);
        assert_eq!(sha, hex::encode(Sha256::digest(&bytes)));
        assert_eq!(zstd::decode_all(&bytes[..]).unwrap(), data);
        assert!(size < 2_000, "compressed to {size}");

        // Input that stops short is not a dump: no file is left.
        let (tx, rx) = tokio::sync::mpsc::channel(4);
        tx.blocking_send(data.clone()).unwrap();
        drop(tx);
        let y = dir.path().join("y");
        let err = write_compressed(rx, &y, &n, &AtomicBool::new(false)).unwrap_err();
        assert_eq!(err.to_string(), "stopped");
        assert!(!y.exists());
    }
}
