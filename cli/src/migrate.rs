//! `ferry migrate` and `ferry migrate status`: an app's schema migrations
//! (`[databases.NAME.migrations]`, and `[databases.NAME.tenants]`) applied
//! to its main database and then its tenants, each backed up first; or a
//! read-only look at what each database has applied and what is pending.
//!
//! The app file is read here first: a `dir` folder is read with the same
//! reader the agent uses (`ferry_common::migration_layout`), so a folder in
//! the wrong layout is refused before anything is submitted, and its files
//! go with the request. Each database's run is one job on the host that
//! works on it, followed live (databases done / total, each one's current
//! migration); the per-database report is printed at the end, and the exit
//! code is 1 when any database failed. On a protected environment the dry
//! run is shown first and confirmation asked, unless `--yes`.

use std::io::{self, Write};
use std::path::{Path, PathBuf};

use ferry_common::appfile::{AppFile, Database, Migrations, MigrationsMode};
use ferry_common::exit;
use ferry_common::job::{DatabaseOutcome, MigrateReport};
use ferry_common::migration_layout;
use ferry_common::status::MigrationStatus;
use ferry_proto::v1 as pb;
use serde::Serialize;
use serde_json::{Value, json};

use crate::follow::follow;

use crate::render::{Render, Text};
use crate::{CliError, Ctx};

#[derive(Debug, clap::Subcommand)]
pub enum Command {
    /// Apply the app's schema migrations: the main database, then every
    /// tenant database its tenant query lists, each backed up first (reason
    /// pre-migration) unless --no-backup; a per-database report at the end.
    /// Exit 0 when every database is migrated, 1 if one failed.
    Migrate(MigrateCmd),
}

#[derive(Debug, clap::Args)]
#[command(args_conflicts_with_subcommands = true, subcommand_negates_reqs = true)]
pub struct MigrateCmd {
    #[command(subcommand)]
    pub sub: Option<MigrateSub>,
    #[command(flatten)]
    pub run: RunArgs,
}

#[derive(Debug, clap::Subcommand)]
pub enum MigrateSub {
    /// Per database: the migrations applied, those pending, and drift
    /// (ledger rows with no file, files changed since they ran). Read-only:
    /// a dry run on each database.
    Status(StatusArgs),
}

#[derive(Debug, clap::Args)]
pub struct RunArgs {
    /// The app file; its [databases.NAME] (with their migrations) for the
    /// environment are sent, and `dir` folders are read beside it.
    #[arg(short = 'f', long = "file", default_value = "ferry.toml")]
    pub file: PathBuf,
    /// Environment, e.g. production.
    #[arg(long, required = true)]
    pub env: Option<String>,
    /// Only this database (default: every database with migrations).
    #[arg(long)]
    pub db: Option<String>,
    /// Apply up to and including this migration version only.
    #[arg(long = "version", value_name = "V")]
    pub target_version: Option<String>,
    /// Change nothing: list per database the migrations that would run.
    #[arg(long)]
    pub dry_run: bool,
    /// Only this tenant (its database name, as the tenant query returns
    /// it); repeat for several. The main database still goes first unless
    /// --skip-main.
    #[arg(long = "tenant", value_name = "NAME")]
    pub tenants: Vec<String>,
    /// Only the tenant with this id (the tenant query's id_column).
    #[arg(long = "tenant-id", value_name = "ID")]
    pub tenant_ids: Vec<String>,
    /// Only the main database, no tenant.
    #[arg(long, conflicts_with_all = ["skip_main", "tenants", "tenant_ids"])]
    pub main_only: bool,
    /// Only the tenants, not the main database.
    #[arg(long)]
    pub skip_main: bool,
    /// Tenant databases migrated at once (default: the app file's
    /// concurrency, 4).
    #[arg(long, value_name = "N")]
    pub concurrency: Option<u32>,
    /// After a database fails, go on with the others (default: start no
    /// new tenant; those running finish).
    #[arg(long)]
    pub continue_on_error: bool,
    /// Take no pre-migration backup.
    #[arg(long)]
    pub no_backup: bool,
    /// Do not ask for confirmation on a protected environment.
    #[arg(long, short = 'y')]
    pub yes: bool,
    /// The image whose `image_path` folder or `command` runs (the new
    /// release's); default: the migrations' service's image, if it names
    /// no {version}.
    #[arg(long, value_name = "IMAGE")]
    pub image: Option<String>,
}

#[derive(Debug, clap::Args)]
pub struct StatusArgs {
    /// The app file.
    #[arg(short = 'f', long = "file", default_value = "ferry.toml")]
    pub file: PathBuf,
    /// Environment, e.g. production.
    #[arg(long)]
    pub env: String,
    /// Only this database.
    #[arg(long)]
    pub db: Option<String>,
    /// The image whose `image_path` folder or `status_command` runs.
    #[arg(long, value_name = "IMAGE")]
    pub image: Option<String>,
}

pub async fn run(command: Command, ctx: &Ctx) -> Result<View, CliError> {
    let Command::Migrate(cmd) = command;
    match cmd.sub {
        Some(MigrateSub::Status(args)) => {
            let run = RunArgs {
                file: args.file,
                env: Some(args.env),
                db: args.db,
                target_version: None,
                dry_run: true,
                tenants: Vec::new(),
                tenant_ids: Vec::new(),
                main_only: false,
                skip_main: false,
                concurrency: None,
                continue_on_error: true,
                no_backup: true,
                yes: true,
                image: args.image,
            };
            let (req, _) = request(&run)?;
            let mut view = submit_and_follow(ctx, req).await?;
            view.status = true;
            Ok(view)
        }
        None => {
            let args = cmd.run;
            let (req, protected) = request(&args)?;
            if protected && !args.yes && !args.dry_run {
                let preview = submit_and_follow(
                    ctx,
                    pb::RunMigrateRequest {
                        dry_run: true,
                        no_backup: true,
                        ..req.clone()
                    },
                )
                .await?;
                if preview.exit_code() != exit::OK {
                    return Ok(preview);
                }
                confirm(ctx, &req, &preview)?;
            }
            submit_and_follow(ctx, req).await
        }
    }
}

/// The request for `args`, and whether the environment is protected.
fn request(args: &RunArgs) -> Result<(pb::RunMigrateRequest, bool), CliError> {
    let env_name = args.env.clone().unwrap_or_default();
    let path = &args.file;
    let file = ferry_common::appfile::load(path).map_err(|e| CliError::usage(e.to_string()))?;
    let env = file
        .environment(&env_name)
        .map_err(|e| CliError::usage(format!("{}: {e}", path.display())))?;
    let with: Vec<&Database> = file
        .databases
        .values()
        .filter(|d| d.migrations.is_some())
        .collect();
    if with.is_empty() {
        return Err(CliError::usage(format!(
            "{} has no [databases.NAME.migrations]; add one, e.g. dir = \"migrations\" with layout = \"sqlx\"",
            path.display()
        )));
    }
    let chosen: Vec<&Database> = match &args.db {
        None => with,
        Some(name) => match file.databases.get(name) {
            Some(d) if d.migrations.is_some() => vec![d],
            Some(_) => {
                return Err(CliError::usage(format!(
                    "--db {name:?}: {} has no [databases.{name}.migrations]",
                    path.display()
                )));
            }
            None => {
                let names: Vec<&str> = file.databases.keys().map(String::as_str).collect();
                return Err(CliError::usage(format!(
                    "--db {name:?}: {} has no such database; it has {}",
                    path.display(),
                    names.join(", ")
                )));
            }
        },
    };
    if !args.tenants.is_empty() || !args.tenant_ids.is_empty() || args.skip_main {
        for d in &chosen {
            if d.tenants.is_none() {
                return Err(CliError::usage(format!(
                    "--tenant / --tenant-id / --skip-main: database {} has no [databases.{}.tenants]",
                    d.name, d.name
                )));
            }
        }
    }
    if let Some(n) = args.concurrency
        && !(1..=ferry_common::job::migrate::MAX_MIGRATE_CONCURRENCY).contains(&n)
    {
        return Err(CliError::usage(format!(
            "--concurrency {n}: between 1 and {}",
            ferry_common::job::migrate::MAX_MIGRATE_CONCURRENCY
        )));
    }
    let base = path.parent().unwrap_or(Path::new("."));
    let mut folders = Vec::new();
    let mut image = args.image.clone();
    for d in &chosen {
        let sets = [
            (false, d.migrations.as_ref()),
            (true, d.tenants.as_ref().and_then(|t| t.migrations.as_ref())),
        ];
        for (tenants, m) in sets {
            let Some(m) = m else { continue };
            match &m.mode {
                MigrationsMode::Dir { dir, layout } => {
                    let folder = base.join(dir);
                    let files = read_folder(&folder, *layout).map_err(|e| {
                        CliError::usage(format!(
                            "{}: [databases.{}{}.migrations] dir {dir:?}: {e}",
                            path.display(),
                            d.name,
                            if tenants { ".tenants" } else { "" }
                        ))
                    })?;
                    folders.push(pb::MigrationFolder {
                        database: d.name.clone(),
                        tenants,
                        files: files.into_iter().collect(),
                    });
                }
                MigrationsMode::ImagePath { .. } | MigrationsMode::Command { .. } => {
                    if image.is_none() {
                        image = Some(service_image(&file, &env_name, d, m)?);
                    }
                }
            }
        }
    }
    let mut req = pb::RunMigrateRequest {
        app: file.app.clone(),
        env: env_name.clone(),
        database: args.db.clone().unwrap_or_default(),
        databases_json: Vec::new(),
        folders,
        dry_run: args.dry_run,
        target_version: args.target_version.clone().unwrap_or_default(),
        tenants: args.tenants.clone(),
        tenant_ids: args.tenant_ids.clone(),
        main_only: args.main_only,
        skip_main: args.skip_main,
        concurrency: args.concurrency.unwrap_or(0),
        continue_on_error: args.continue_on_error,
        no_backup: args.no_backup,
        image: image.unwrap_or_default(),
    };
    for db in file.databases.values() {
        req.databases_json.push(
            serde_json::to_string(&db.target(env)).map_err(|e| CliError::failed(e.to_string()))?,
        );
    }
    Ok((req, env.is_protected(&env_name)))
}

/// A `dir` folder's files, refused here when its layout is wrong.
fn read_folder(
    folder: &Path,
    layout: migration_layout::Layout,
) -> Result<migration_layout::Files, String> {
    let files = migration_layout::read_dir(folder).map_err(|e| e.to_string())?;
    let bytes: usize = files.values().map(Vec::len).sum();
    let most = ferry_common::job::migrate::MAX_CARRIED_BYTES;
    if bytes > most {
        return Err(format!(
            "holds {bytes} bytes of files, more than the {} MiB a job carries; build them into the image and use image_path",
            most / 1024 / 1024
        ));
    }
    let set = migration_layout::load(layout, &files).map_err(|e| e.to_string())?;
    if set.migrations.is_empty() {
        return Err(format!(
            "holds no {layout} migration (is this the folder, and the layout?)"
        ));
    }
    Ok(files)
}

/// The image of the migrations' service, when it names no placeholder.
fn service_image(
    file: &AppFile,
    env: &str,
    d: &Database,
    m: &Migrations,
) -> Result<String, CliError> {
    let service = match &m.service {
        Some(s) => file.services.iter().find(|x| &x.name == s),
        None if file.services.len() == 1 => file.services.first(),
        None => None,
    }
    .ok_or_else(|| {
        CliError::usage(format!(
            "[databases.{}.migrations] runs an image: give --image IMAGE (or service = \"NAME\")",
            d.name
        ))
    })?;
    let image = service
        .image
        .replace("{app}", &file.app)
        .replace("{env}", env);
    if image.contains('{') {
        return Err(CliError::usage(format!(
            "[databases.{}.migrations] runs service {}'s image {:?}, which names the release's version; give --image IMAGE (the new release's)",
            d.name, service.name, service.image
        )));
    }
    Ok(image)
}

async fn submit_and_follow(ctx: &Ctx, req: pb::RunMigrateRequest) -> Result<View, CliError> {
    let dry_run = req.dry_run;
    let mut s = ctx.connect().await?;
    let jobs = s.client.run_migrate(req).await?.into_inner().jobs;
    let mut runs = Vec::new();
    for job in jobs {
        let database = serde_json::from_str::<Value>(&job.spec_json)
            .ok()
            .and_then(|v| v["database"].as_str().map(str::to_string))
            .unwrap_or_default();
        let (job, code) = follow(ctx, &job.id, ctx.json()).await?;
        let report = job
            .tasks
            .first()
            .and_then(|t| MigrateReport::from_json(&t.result_json).ok());
        runs.push(Run {
            database,
            job,
            code,
            report,
        });
    }
    Ok(View {
        dry_run,
        status: false,
        runs,
    })
}

/// Asks on the terminal, having shown the dry run; refuses without one.
fn confirm(ctx: &Ctx, req: &pb::RunMigrateRequest, preview: &View) -> Result<(), CliError> {
    let mut err = io::stderr();
    let mut text = Text {
        out: &mut io::stderr(),
        err: &mut io::stderr(),
        terminal: ctx.env.stdin_is_terminal,
    };
    let _ = writeln!(
        err,
        "{} is protected. Dry run of the migrations of {} there:",
        req.env, req.app
    );
    let _ = preview.text(&mut text);
    if !ctx.env.stdin_is_terminal {
        return Err(CliError::usage(format!(
            "{} is protected: migrating there needs confirmation, and there is no terminal to ask on; pass --yes",
            req.env
        )));
    }
    let _ = write!(
        err,
        "Type the environment's name ({}) to migrate: ",
        req.env
    );
    let _ = err.flush();
    let mut line = String::new();
    io::stdin()
        .read_line(&mut line)
        .map_err(|e| CliError::usage(format!("reading the confirmation: {e}")))?;
    if line.trim() != req.env {
        return Err(CliError::usage(format!(
            "not confirmed (expected {:?}); nothing was migrated",
            req.env
        )));
    }
    Ok(())
}

/// One database's (`[databases.NAME]`) run, finished.
#[derive(Debug)]
pub struct Run {
    pub database: String,
    pub job: pb::Job,
    /// `follow`'s exit code for the job.
    pub code: i32,
    pub report: Option<MigrateReport>,
}

/// What `ferry migrate` (or `migrate status`) shows.
#[derive(Debug)]
pub struct View {
    pub dry_run: bool,
    pub status: bool,
    pub runs: Vec<Run>,
}

impl View {
    fn rows(&self) -> impl Iterator<Item = &DatabaseOutcome> {
        self.runs
            .iter()
            .filter_map(|r| r.report.as_ref())
            .flat_map(|r| &r.databases)
    }

    fn row_json(&self, d: &DatabaseOutcome) -> Value {
        // A struct, not `json!`: its field names are the JSON contract.
        #[derive(Serialize)]
        struct Row<'a> {
            database: &'a str,
            role: &'a str,
            tenant_id: &'a Option<String>,
            applied: Vec<&'a String>,
            pending: &'a [String],
            status: &'a str,
            error: &'a Option<String>,
            #[serde(skip_serializing_if = "Option::is_none")]
            backup_id: Option<&'a Option<String>>,
            #[serde(skip_serializing_if = "Option::is_none")]
            adopted: Option<&'a [String]>,
            drift: &'a [String],
        }
        let row = Row {
            database: &d.database,
            role: &d.role,
            tenant_id: &d.tenant_id,
            applied: if self.status {
                d.previously_applied.iter().chain(&d.adopted).collect()
            } else {
                d.applied.iter().collect()
            },
            pending: &d.pending,
            status: &d.status,
            error: &d.error,
            backup_id: (!self.status).then_some(&d.backup_id),
            adopted: (!self.status).then_some(d.adopted.as_slice()),
            drift: &d.drift,
        };
        serde_json::to_value(row).unwrap_or(Value::Null)
    }
}

impl Serialize for View {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        json!({
            "job_id": self.runs.first().map(|r| r.job.id.clone()),
            "dry_run": self.dry_run,
            "databases": self.rows().map(|d| self.row_json(d)).collect::<Vec<_>>(),
            "jobs": self.runs.iter().map(|r| json!({
                "database": r.database,
                "job_id": r.job.id,
                "status": r.job.status,
                "message": r.job.tasks.first().map(|t| t.message.clone()),
            })).collect::<Vec<_>>(),
        })
        .serialize(s)
    }
}

fn list(v: &[String]) -> String {
    match v.len() {
        0 => "-".into(),
        1..=3 => v.join(", "),
        n => format!("{}, … ({n})", v[..2].join(", ")),
    }
}

impl Render for View {
    fn text(&self, t: &mut Text<'_>) -> io::Result<()> {
        for r in &self.runs {
            if r.report.is_none() {
                let message = r
                    .job
                    .tasks
                    .first()
                    .map(|t| t.message.as_str())
                    .unwrap_or("");
                writeln!(
                    t.out,
                    "database {}: job {} {}: {message}",
                    r.database, r.job.id, r.job.status
                )?;
            }
        }
        let rows: Vec<&DatabaseOutcome> = self.rows().collect();
        if rows.is_empty() {
            return Ok(());
        }
        if self.status || self.dry_run {
            t.table(
                &[
                    "DATABASE", "ROLE", "TENANT", "STATUS", "APPLIED", "PENDING", "DRIFT",
                ],
                rows.iter().map(|d| {
                    let applied: Vec<String> = d
                        .previously_applied
                        .iter()
                        .chain(&d.adopted)
                        .cloned()
                        .collect();
                    vec![
                        d.database.clone(),
                        d.role.clone(),
                        d.tenant_id.clone().unwrap_or_else(|| "-".into()),
                        d.status.clone(),
                        list(&applied),
                        list(&d.pending),
                        match (&d.error, d.drift.is_empty()) {
                            (Some(e), _) => e.clone(),
                            (None, true) => "-".into(),
                            (None, false) => d.drift.join("; "),
                        },
                    ]
                }),
            )?;
        } else {
            t.table(
                &[
                    "DATABASE", "ROLE", "TENANT", "STATUS", "APPLIED", "PENDING", "BACKUP", "ERROR",
                ],
                rows.iter().map(|d| {
                    vec![
                        d.database.clone(),
                        d.role.clone(),
                        d.tenant_id.clone().unwrap_or_else(|| "-".into()),
                        d.status.clone(),
                        list(&d.applied),
                        list(&d.pending),
                        d.backup_id.clone().unwrap_or_else(|| "-".into()),
                        d.error.clone().unwrap_or_else(|| "-".into()),
                    ]
                }),
            )?;
        }
        let failed = rows
            .iter()
            .filter(|d| d.status == MigrationStatus::Failed.as_str())
            .count();
        if failed > 0 {
            writeln!(
                t.out,
                "{failed} of {} databases failed; a re-run applies only what is still pending",
                rows.len()
            )?;
        }
        Ok(())
    }

    fn exit_code(&self) -> i32 {
        let worst = self.runs.iter().map(|r| r.code).max().unwrap_or(exit::OK);
        if self
            .rows()
            .any(|d| d.status == MigrationStatus::Failed.as_str())
        {
            worst.max(exit::FAILED)
        } else {
            worst
        }
    }
}
