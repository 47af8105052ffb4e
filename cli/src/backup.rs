//! `ferry backup run|ls|show|verify|restore|prune`: back up an app's databases (`[databases.NAME]`
//! of the app file, or the ones the coordinator kept from the last file it
//! was given), follow each backup live, read the catalogue, and verify a
//! backup by a test restore or restore it.

use std::io::{self, Write};
use std::path::PathBuf;

use ferry_common::exit;
use ferry_common::health::human_bytes;
use ferry_common::job::{BackupManifest, PruneReport};
use ferry_common::status::{JobStatus, VerifyResult};
use ferry_proto::v1 as pb;
use serde::Serialize;
use serde_json::{Value, json};

use crate::follow::follow;
use crate::render::{Render, Text, opt_time};
use crate::{CliError, Ctx};

#[derive(Debug, clap::Subcommand)]
pub enum Command {
    /// Database backups: run one now, list the catalogue, show one.
    #[command(subcommand)]
    Backup(BackupCommand),
}

#[derive(Debug, clap::Subcommand)]
pub enum BackupCommand {
    /// Back up an app's databases now (each on the one host that works on
    /// it) and follow them: exit 0 when every backup is written and
    /// catalogued, 1 if one failed, 3 if cancelled.
    Run(RunArgs),
    /// The backup catalogue, newest first.
    Ls(LsArgs),
    /// One backup: where it is, its checksum, row counts, how to restore it.
    Show {
        /// Backup id (see `ferry backup ls`).
        id: String,
    },
    /// Prove a backup restores: checksum, restore into a scratch database
    /// on its server, every table's rows against the manifest, the app
    /// file's checks; recorded in the catalogue. Exit 0 passed, 1 failed.
    Verify {
        /// Backup id (see `ferry backup ls`).
        id: String,
    },
    /// Restore a backup, checksum first. Default: into a new database that
    /// replaces the live one by name only once it restored (the live one
    /// is kept as <db>_before_restore_<time>). Asks for confirmation
    /// unless --yes. Exit 0 restored, 1 failed.
    Restore(RestoreArgs),
    /// Delete the backups retention lets go (keep_last, keep_days of the
    /// database settings kept; pre-deploy after 7 days), file and catalogue
    /// entry; a file missing on disk is reported and stays listed.
    Prune(PruneArgs),
}

#[derive(Debug, clap::Args)]
pub struct PruneArgs {
    /// App name, e.g. shop (default: the app of ./ferry.toml).
    #[arg(long)]
    pub app: Option<String>,
    /// Environment, e.g. production.
    #[arg(long)]
    pub env: String,
    /// Only list what would be deleted.
    #[arg(long)]
    pub dry_run: bool,
}

#[derive(Debug, clap::Args)]
pub struct RestoreArgs {
    /// Backup id (see `ferry backup ls`).
    pub id: String,
    /// Restore into a new database of this name; the live one is untouched.
    #[arg(long, value_name = "NAME", conflicts_with = "clean")]
    pub into: Option<String>,
    /// Restore in place, in one transaction (pg_restore --clean): a failure
    /// leaves the database as it was.
    #[arg(long)]
    pub clean: bool,
    /// Do not ask for confirmation.
    #[arg(long, short = 'y')]
    pub yes: bool,
}

#[derive(Debug, clap::Args)]
pub struct RunArgs {
    /// The app file; its [databases.NAME] for the environment are sent and
    /// kept by the coordinator. Without it, the ones it kept are used.
    #[arg(short = 'f', long = "file")]
    pub file: Option<PathBuf>,
    /// App name (with -f: taken from the file).
    #[arg(long)]
    pub app: Option<String>,
    /// Environment, e.g. production.
    #[arg(long)]
    pub env: String,
    /// Only this database (default: every database of the app).
    #[arg(long)]
    pub db: Option<String>,
    /// Only this table (`table` or `schema.table`); repeat for several.
    #[arg(long = "table", value_name = "TABLE")]
    pub tables: Vec<String>,
}

#[derive(Debug, clap::Args)]
pub struct LsArgs {
    /// Only this app's backups.
    #[arg(long)]
    pub app: Option<String>,
    /// Only this environment's backups.
    #[arg(long)]
    pub env: Option<String>,
    /// Only this database.
    #[arg(long)]
    pub db: Option<String>,
    /// At most this many, newest first.
    #[arg(long, default_value_t = 100)]
    pub limit: u32,
}

pub async fn run(command: Command, ctx: &Ctx) -> Result<View, CliError> {
    let Command::Backup(command) = command;
    match command {
        BackupCommand::Run(args) => run_backup(args, ctx).await,
        BackupCommand::Ls(args) => {
            let mut s = ctx.connect().await?;
            let backups = s
                .client
                .list_backups(pb::ListBackupsRequest {
                    app: args.app.unwrap_or_default(),
                    env: args.env.unwrap_or_default(),
                    database: args.db.unwrap_or_default(),
                    limit: args.limit,
                })
                .await?
                .into_inner()
                .backups;
            Ok(View::Listed(backups))
        }
        BackupCommand::Show { id } => {
            let mut s = ctx.connect().await?;
            let backup = s
                .client
                .get_backup(pb::GetBackupRequest { id })
                .await?
                .into_inner()
                .backup
                .unwrap_or_default();
            Ok(View::Shown(Box::new(backup)))
        }
        BackupCommand::Verify { id } => {
            let mut s = ctx.connect().await?;
            let job = s
                .client
                .verify_backup(pb::VerifyBackupRequest { id: id.clone() })
                .await?
                .into_inner()
                .job
                .unwrap_or_default();
            let (job, _) = follow(ctx, &job.id, ctx.json()).await?;
            Ok(View::Verified(Box::new(Verified { id, job })))
        }
        BackupCommand::Restore(args) => {
            if let Some(name) = &args.into {
                ferry_common::job::restore::check_database_name(name)
                    .map_err(|e| CliError::usage(format!("--into: {e}")))?;
            }
            let mut s = ctx.connect().await?;
            if !args.yes {
                let backup = s
                    .client
                    .get_backup(pb::GetBackupRequest {
                        id: args.id.clone(),
                    })
                    .await?
                    .into_inner()
                    .backup
                    .unwrap_or_default();
                confirm(ctx, &backup, &args)?;
            }
            let job = s
                .client
                .restore_backup(pb::RestoreBackupRequest {
                    id: args.id.clone(),
                    into: args.into.clone().unwrap_or_default(),
                    clean: args.clean,
                })
                .await?
                .into_inner()
                .job
                .unwrap_or_default();
            let (job, _) = follow(ctx, &job.id, ctx.json()).await?;
            Ok(View::Restored(Box::new(Verified { id: args.id, job })))
        }
        BackupCommand::Prune(args) => {
            let app = ctx.app(args.app)?;
            let mut s = ctx.connect().await?;
            let reply = s
                .client
                .prune_backups(pb::PruneBackupsRequest {
                    app,
                    env: args.env,
                    dry_run: args.dry_run,
                })
                .await?
                .into_inner();
            let mut jobs = Vec::new();
            for job in reply.jobs {
                jobs.push(follow(ctx, &job.id, ctx.json()).await?.0);
            }
            Ok(View::Pruned(Box::new(Pruned {
                dry_run: args.dry_run,
                expired: reply.expired,
                jobs,
            })))
        }
    }
}

/// What a prune found and did.
#[derive(Debug)]
pub struct Pruned {
    pub dry_run: bool,
    pub expired: Vec<pb::Backup>,
    pub jobs: Vec<pb::Job>,
}

impl Pruned {
    fn report(&self) -> PruneReport {
        let mut all = PruneReport::default();
        for t in self.jobs.iter().flat_map(|j| &j.tasks) {
            if let Ok(r) = serde_json::from_str::<PruneReport>(&t.result_json) {
                all.deleted.extend(r.deleted);
                all.missing.extend(r.missing);
            }
        }
        all
    }
}

/// A restore replaces data: it asks on the terminal; without one, it
/// refuses (scripts pass `--yes`).
fn confirm(ctx: &Ctx, b: &pb::Backup, args: &RestoreArgs) -> Result<(), CliError> {
    let what = match (&args.into, args.clean) {
        (Some(name), _) => format!("into a new database {name}"),
        (None, true) => format!("over database {} in place", b.database),
        (None, false) => format!(
            "as database {} (the current one is kept under a new name)",
            b.database
        ),
    };
    if !ctx.env.stdin_is_terminal {
        return Err(CliError::usage(format!(
            "restoring backup {} {what} needs confirmation, and there is no terminal to ask on; pass --yes",
            b.id
        )));
    }
    let mut stderr = std::io::stderr();
    let _ = write!(
        stderr,
        "Restore backup {} of {} {} {what}? Type the database's name ({}) to go on: ",
        b.id, b.app, b.env, b.database
    );
    let _ = stderr.flush();
    let mut line = String::new();
    std::io::stdin()
        .read_line(&mut line)
        .map_err(|e| CliError::usage(format!("reading the confirmation: {e}")))?;
    if line.trim() != b.database {
        return Err(CliError::usage(format!(
            "not confirmed (expected {:?}); nothing was restored",
            b.database
        )));
    }
    Ok(())
}

/// A finished verification.
#[derive(Debug)]
pub struct Verified {
    pub id: String,
    pub job: pb::Job,
}

/// The request `backup run` sends: with `-f`, the app and its databases
/// come from the file (checked here first, so its problems show with lines
/// even when the coordinator is down).
fn request(args: &RunArgs) -> Result<pb::RunBackupRequest, CliError> {
    let mut req = pb::RunBackupRequest {
        app: args.app.clone().unwrap_or_default(),
        env: args.env.clone(),
        database: args.db.clone().unwrap_or_default(),
        tables: args.tables.clone(),
        databases_json: Vec::new(),
    };
    for (i, t) in args.tables.iter().enumerate() {
        ferry_common::appfile::check_table_name(t)
            .map_err(|e| CliError::usage(format!("--table #{}: {e}", i + 1)))?;
    }
    let Some(path) = &args.file else {
        if req.app.is_empty() {
            return Err(CliError::usage(
                "give the app file (-f ferry.toml) or the app (--app NAME) whose databases the coordinator kept",
            ));
        }
        return Ok(req);
    };
    let file = ferry_common::appfile::load(path).map_err(|e| CliError::usage(e.to_string()))?;
    if args.app.as_ref().is_some_and(|a| *a != file.app) {
        return Err(CliError::usage(format!(
            "--app {:?} but {} is the app file of {:?}",
            req.app,
            path.display(),
            file.app
        )));
    }
    let env = file
        .environment(&args.env)
        .map_err(|e| CliError::usage(format!("{}: {e}", path.display())))?;
    if file.databases.is_empty() {
        return Err(CliError::usage(format!(
            "{} has no [databases.NAME]; add one, e.g. [databases.main] with url_secret = \"DATABASE_URL\"",
            path.display()
        )));
    }
    if let Some(db) = &args.db
        && !file.databases.contains_key(db)
    {
        let names: Vec<&str> = file.databases.keys().map(String::as_str).collect();
        return Err(CliError::usage(format!(
            "--db {db:?}: {} has no such database; it has {}",
            path.display(),
            names.join(", ")
        )));
    }
    req.app = file.app.clone();
    for db in file.databases.values() {
        req.databases_json.push(
            serde_json::to_string(&db.target(env)).map_err(|e| CliError::failed(e.to_string()))?,
        );
    }
    Ok(req)
}

async fn run_backup(args: RunArgs, ctx: &Ctx) -> Result<View, CliError> {
    let req = request(&args)?;
    let mut s = ctx.connect().await?;
    let jobs = s.client.run_backup(req).await?.into_inner().jobs;
    let mut ran = Vec::new();
    for job in jobs {
        let database = serde_json::from_str::<Value>(&job.spec_json)
            .ok()
            .and_then(|v| v["database"].as_str().map(str::to_string))
            .unwrap_or_default();
        let (job, _) = follow(ctx, &job.id, ctx.json()).await?;
        ran.push(Ran { database, job });
    }
    Ok(View::Ran(ran))
}

/// One database's backup job, finished.
#[derive(Debug)]
pub struct Ran {
    pub database: String,
    pub job: pb::Job,
}

impl Ran {
    fn manifest(&self) -> Option<BackupManifest> {
        let task = self.job.tasks.first()?;
        BackupManifest::from_json(&task.result_json).ok()
    }

    fn json(&self) -> Value {
        let task = self.job.tasks.first();
        json!({
            "database": self.database,
            "job_id": self.job.id,
            "status": self.job.status,
            "host": task.map(|t| t.agent_name.clone()),
            "message": task.map(|t| t.message.clone()),
            "backup": self.manifest().map(|m| json!({
                "id": m.id,
                "path": m.path,
                "size_bytes": m.size_bytes,
                "sha256": m.sha256,
                "row_counts": m.row_counts,
            })),
        })
    }
}

#[derive(Debug)]
pub enum View {
    Ran(Vec<Ran>),
    Listed(Vec<pb::Backup>),
    Shown(Box<pb::Backup>),
    Verified(Box<Verified>),
    Restored(Box<Verified>),
    Pruned(Box<Pruned>),
}

/// A catalogued backup as JSON: the fields `backup ls` promises.
pub fn backup_json(b: &pb::Backup) -> Value {
    json!({
        "id": b.id,
        "app": b.app,
        "env": b.env,
        "database": b.database,
        "tenant": if b.tenant.is_empty() { None } else { Some(&b.tenant) },
        "host": b.host,
        "engine": b.engine,
        "reason": b.reason,
        "path": b.path,
        "size_bytes": b.size_bytes,
        "sha256": b.sha256,
        "job_id": b.job_id,
        "created_at": opt_time(b.created_at_ms),
        "expires_at": opt_time(b.expires_at_ms),
        "verified_at": opt_time(b.verified_at_ms),
        "verify_result": Some(&b.verify_result).filter(|r| !r.is_empty()),
        "verify_message": Some(&b.verify_message).filter(|r| !r.is_empty()),
    })
}

impl Serialize for View {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            View::Ran(ran) => Value::Array(ran.iter().map(Ran::json).collect()).serialize(s),
            View::Listed(list) => Value::Array(list.iter().map(backup_json).collect()).serialize(s),
            View::Verified(v) => {
                let task = v.job.tasks.first();
                json!({
                    "id": v.id,
                    "job_id": v.job.id,
                    "status": v.job.status,
                    "verify_result": match v.job.status.parse() {
                        Ok(JobStatus::Succeeded) => Some(VerifyResult::Passed.as_str()),
                        Ok(JobStatus::Failed) => Some(VerifyResult::Failed.as_str()),
                        _ => None,
                    },
                    "message": task.map(|t| t.message.clone()),
                    "report": task.and_then(|t| serde_json::from_str::<Value>(&t.result_json).ok()),
                })
                .serialize(s)
            }
            View::Pruned(p) => {
                let report = p.report();
                json!({
                    "dry_run": p.dry_run,
                    "prunable": p.expired.iter().map(backup_json).collect::<Vec<_>>(),
                    "deleted": report.deleted,
                    "missing": report.missing,
                    "jobs": p.jobs.iter().map(|j| json!({"job_id": j.id, "status": j.status})).collect::<Vec<_>>(),
                })
                .serialize(s)
            }
            View::Restored(v) => {
                let task = v.job.tasks.first();
                json!({
                    "id": v.id,
                    "job_id": v.job.id,
                    "status": v.job.status,
                    "message": task.map(|t| t.message.clone()),
                    "report": task.and_then(|t| serde_json::from_str::<Value>(&t.result_json).ok()),
                })
                .serialize(s)
            }
            View::Shown(b) => {
                let mut v = backup_json(b);
                v["manifest"] = serde_json::from_str(&b.manifest_json).unwrap_or(Value::Null);
                v.serialize(s)
            }
        }
    }
}

fn or_dash(s: Option<String>) -> String {
    s.unwrap_or_else(|| "-".into())
}

impl Render for View {
    fn text(&self, t: &mut Text<'_>) -> io::Result<()> {
        match self {
            View::Ran(ran) => {
                for r in ran {
                    let task = r.job.tasks.first();
                    match (r.job.status.parse(), r.manifest()) {
                        (Ok(JobStatus::Succeeded), Some(m)) => {
                            writeln!(
                                t.out,
                                "✔ {}: backup {} on {}: {} ({} rows in {} tables), sha256 {}",
                                r.database,
                                m.id,
                                task.map(|t| t.agent_name.as_str()).unwrap_or_default(),
                                human_bytes(m.size_bytes),
                                m.row_counts.values().sum::<u64>(),
                                m.row_counts.len(),
                                m.sha256
                            )?;
                            writeln!(t.out, "  {}", m.path)?;
                        }
                        _ => writeln!(
                            t.out,
                            "✘ {}: {}: {}",
                            r.database,
                            r.job.status,
                            task.map(|t| t.message.as_str()).unwrap_or_default()
                        )?,
                    }
                }
                Ok(())
            }
            View::Listed(list) => {
                if list.is_empty() {
                    return writeln!(t.out, "no backups");
                }
                t.table(
                    &[
                        "ID", "APP", "ENV", "DATABASE", "REASON", "SIZE", "CREATED", "EXPIRES",
                        "VERIFIED",
                    ],
                    list.iter().map(|b| {
                        vec![
                            b.id.clone(),
                            b.app.clone(),
                            b.env.clone(),
                            if b.tenant.is_empty() {
                                b.database.clone()
                            } else {
                                format!("{} (tenant {})", b.database, b.tenant)
                            },
                            b.reason.clone(),
                            human_bytes(b.size_bytes),
                            or_dash(opt_time(b.created_at_ms)),
                            or_dash(opt_time(b.expires_at_ms)),
                            if b.verify_result.is_empty() {
                                "-".into()
                            } else {
                                b.verify_result.clone()
                            },
                        ]
                    }),
                )
            }
            View::Verified(v) => {
                let message = v
                    .job
                    .tasks
                    .first()
                    .map(|t| t.message.as_str())
                    .unwrap_or_default();
                match v.job.status.parse() {
                    Ok(JobStatus::Succeeded) => writeln!(t.out, "✔ {message}"),
                    _ => writeln!(t.out, "✘ backup {} {}: {message}", v.id, v.job.status),
                }
            }
            View::Pruned(p) => {
                if p.expired.is_empty() {
                    return writeln!(t.out, "nothing to prune");
                }
                let report = p.report();
                for b in &p.expired {
                    let what = if p.dry_run {
                        "would delete"
                    } else if report.deleted.contains(&b.id) {
                        "deleted"
                    } else if report.missing.contains(&b.id) {
                        "MISSING on disk, kept in the catalogue:"
                    } else {
                        "not deleted:"
                    };
                    writeln!(
                        t.out,
                        "{what} {} {} {} ({}) {}",
                        b.id,
                        b.database,
                        b.reason,
                        human_bytes(b.size_bytes),
                        b.path
                    )?;
                }
                Ok(())
            }
            View::Restored(v) => {
                let message = v
                    .job
                    .tasks
                    .first()
                    .map(|t| t.message.as_str())
                    .unwrap_or_default();
                match v.job.status.parse() {
                    Ok(JobStatus::Succeeded) => writeln!(t.out, "✔ {message}"),
                    _ => writeln!(t.out, "✘ backup {} {}: {message}", v.id, v.job.status),
                }
            }
            View::Shown(b) => {
                writeln!(t.out, "backup   {}", b.id)?;
                writeln!(
                    t.out,
                    "database {} {} {} ({})",
                    b.app, b.env, b.database, b.engine
                )?;
                writeln!(t.out, "file     {} on {}", b.path, b.host)?;
                writeln!(t.out, "size     {}", human_bytes(b.size_bytes))?;
                writeln!(t.out, "sha256   {}", b.sha256)?;
                writeln!(t.out, "reason   {}", b.reason)?;
                writeln!(t.out, "created  {}", or_dash(opt_time(b.created_at_ms)))?;
                writeln!(t.out, "expires  {}", or_dash(opt_time(b.expires_at_ms)))?;
                if b.verify_result.is_empty() {
                    writeln!(t.out, "verified never")?;
                } else {
                    writeln!(
                        t.out,
                        "verified {} {} {}",
                        or_dash(opt_time(b.verified_at_ms)),
                        b.verify_result,
                        b.verify_message
                    )?;
                }
                if let Ok(m) = BackupManifest::from_json(&b.manifest_json) {
                    writeln!(
                        t.out,
                        "server   PostgreSQL {}, dumped by {}",
                        m.server_version, m.dump_tool
                    )?;
                    writeln!(t.out, "rows")?;
                    for (table, n) in &m.row_counts {
                        writeln!(t.out, "  {table:<40} {n}")?;
                    }
                    writeln!(t.out, "restore by hand: {}", m.restore_hint)?;
                }
                Ok(())
            }
        }
    }

    fn exit_code(&self) -> i32 {
        match self {
            View::Verified(v) | View::Restored(v) => crate::follow::exit_code(&v.job.status),
            View::Pruned(p) => p
                .jobs
                .iter()
                .map(|j| crate::follow::exit_code(&j.status))
                .max()
                .unwrap_or(exit::OK),
            View::Ran(ran) => ran
                .iter()
                .map(|r| crate::follow::exit_code(&r.job.status))
                .max_by_key(|c| match *c {
                    exit::OK => 0,
                    exit::CANCELLED => 1,
                    _ => 2,
                })
                .unwrap_or(exit::OK),
            _ => exit::OK,
        }
    }
}
