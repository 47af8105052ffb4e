//! `ferry deploy`, `ferry rollback`, `ferry redeploy`, `ferry restart`:
//! start a rollout of an app to an environment. The coordinator runs it (a CLI that dies does not stop or
//! break a rollout); the CLI shows the plan, asks for confirmation where
//! the environment is protected, and follows each step live.

use std::io::{self, BufRead, Write};
use std::path::PathBuf;
use std::time::Duration;

use ferry_proto::v1 as pb;
use ferry_proto::v1::operator_service_client::OperatorServiceClient;
use serde::Serialize;
use tonic::transport::Channel;

use crate::render::{Note, Render, Text, TextOnly};
use crate::rollout::{Detached, Finished, Plan, follow_rollout};
use crate::{CliError, Ctx};

/// How often a busy (app, env) is asked again with `--wait`.
const LOCK_RETRY: Duration = Duration::from_secs(2);

#[derive(Debug, clap::Subcommand)]
pub enum Command {
    /// Deploy a version of an app to an environment: shows the plan, asks
    /// for confirmation on protected environments, deploys batch by batch,
    /// runs the smoke checks, and reverts updated hosts on the first
    /// failure. Exit 0 when the release is out, 1 if it failed (reverted).
    Deploy(DeployArgs),
    /// Redeploy an earlier release of an app's environment through the same
    /// health-gated path (default: the release before the current one).
    Rollback(RollbackArgs),
    /// Redeploy the current release (its stored spec, containers recreated
    /// even where it already runs) through the same batches, health gates,
    /// switch, smoke checks and auto-revert: after `ferry secret set`, or
    /// for a crashed container. Exit 0 when it is out, 1 otherwise.
    Redeploy(AgainArgs),
    /// Restart the current release's containers in place, host batch by
    /// host batch, each gated on its service's health check before the
    /// next batch. Exit 0 when every one is back and healthy, 1 otherwise.
    Restart(AgainArgs),
}

#[derive(Debug, clap::Args)]
pub struct AgainArgs {
    /// App name, e.g. shop.
    #[arg(long)]
    pub app: String,
    /// Environment, e.g. production.
    #[arg(long)]
    pub env: String,
    /// Only these services of the release (default: every one).
    #[arg(value_name = "SERVICE")]
    pub services: Vec<String>,
    #[command(flatten)]
    pub flags: Flags,
}

#[derive(Debug, clap::Args)]
pub struct DeployArgs {
    /// The app file.
    #[arg(short = 'f', long = "file", default_value = "ferry.toml")]
    pub file: PathBuf,
    /// Environment, e.g. staging.
    #[arg(long)]
    pub env: String,
    /// The version to deploy (fills {version} in images), e.g. 1.4.2.
    #[arg(long)]
    pub version: String,
    #[command(flatten)]
    pub flags: Flags,
}

#[derive(Debug, clap::Args)]
pub struct RollbackArgs {
    /// App name, e.g. shop (default: the app of ./ferry.toml).
    #[arg(long)]
    pub app: Option<String>,
    /// Environment, e.g. production.
    #[arg(long)]
    pub env: String,
    /// The version to go back to (it must have deployed successfully).
    #[arg(long, value_name = "VERSION")]
    pub to: Option<String>,
    #[command(flatten)]
    pub flags: Flags,
}

/// Options of `ferry deploy`, `rollback`, `redeploy` and `restart`.
#[derive(Debug, Clone, clap::Args)]
pub struct Flags {
    /// Show the plan and exit; nothing runs.
    #[arg(long)]
    pub dry_run: bool,
    /// Do not ask for confirmation on protected environments (production).
    #[arg(long, short = 'y')]
    pub yes: bool,
    /// If another rollout of this app and environment runs, wait for it
    /// instead of failing.
    #[arg(long)]
    pub wait: bool,
    /// Print the rollout id and return once it started (it runs on the
    /// coordinator; follow it with `ferry rollout ID`).
    #[arg(long)]
    pub detach: bool,
}

/// What to start: a deploy of an app file (already read and checked), or
/// a rollback.
enum Start {
    Deploy {
        file_name: String,
        app_file: String,
        env: String,
        version: String,
        /// `ferry accessory upgrade`: the current release with these
        /// accessories of the file (every one if empty).
        accessories: Option<Vec<String>>,
    },
    Rollback {
        app: String,
        env: String,
        to: Option<String>,
    },
    /// The current release again: redeployed, or restarted.
    Again {
        restart: bool,
        app: String,
        env: String,
        services: Vec<String>,
        /// `services` names accessories (`ferry accessory restart`).
        accessories: bool,
    },
}

pub async fn run(command: Command, ctx: &Ctx) -> Result<View, CliError> {
    let (what, flags) = match command {
        Command::Deploy(a) => {
            // The file is checked here first, so its problems show with
            // lines even when the coordinator is down.
            let file_name = a.file.display().to_string();
            let app_file =
                ferry_common::appfile::read(&a.file).map_err(|e| CliError::usage(e.to_string()))?;
            ferry_common::appfile::parse(&file_name, &app_file)
                .map_err(|e| CliError::usage(e.to_string()))?;
            let what = Start::Deploy {
                file_name,
                app_file,
                env: a.env,
                version: a.version,
                accessories: None,
            };
            (what, a.flags)
        }
        Command::Rollback(a) => {
            let what = Start::Rollback {
                app: ctx.app(a.app)?,
                env: a.env,
                to: a.to,
            };
            (what, a.flags)
        }
        Command::Redeploy(a) => again(false, a),
        Command::Restart(a) => again(true, a),
    };
    start(ctx, &what, &flags).await
}

fn again(restart: bool, a: AgainArgs) -> (Start, Flags) {
    let what = Start::Again {
        restart,
        app: a.app,
        env: a.env,
        services: a.services,
        accessories: false,
    };
    (what, a.flags)
}

/// `ferry accessory upgrade`: the current release rolled out again with
/// the app file's accessories `names` (every one if none) in place of the
/// release's; services that already run are left alone.
pub async fn upgrade_accessories(
    ctx: &Ctx,
    file: &std::path::Path,
    env: String,
    names: Vec<String>,
    flags: &Flags,
) -> Result<View, CliError> {
    let file_name = file.display().to_string();
    let app_file = ferry_common::appfile::read(file).map_err(|e| CliError::usage(e.to_string()))?;
    ferry_common::appfile::parse(&file_name, &app_file)
        .map_err(|e| CliError::usage(e.to_string()))?;
    let what = Start::Deploy {
        file_name,
        app_file,
        env,
        version: String::new(),
        accessories: Some(names),
    };
    start(ctx, &what, flags).await
}

/// `ferry accessory restart`: a restart rollout of the current release's
/// accessories named (every one if none), host batch by host batch.
pub async fn restart_accessories(
    ctx: &Ctx,
    app: String,
    env: String,
    names: Vec<String>,
    flags: &Flags,
) -> Result<View, CliError> {
    let what = Start::Again {
        restart: true,
        app,
        env,
        services: names,
        accessories: true,
    };
    start(ctx, &what, flags).await
}

async fn start(ctx: &Ctx, what: &Start, flags: &Flags) -> Result<View, CliError> {
    let mut s = ctx.connect().await?;
    let plan = Plan(request(&mut s.client, what, true).await?);
    if flags.dry_run {
        return Ok(View::Planned(plan));
    }
    ctx.print(&TextOnly(&plan))?;
    if plan.0.protected && !flags.yes {
        confirm(ctx, &plan.0)?;
    }
    let rollout = loop {
        match request(&mut s.client, what, false).await {
            Ok(r) => break r,
            Err(status) if status.code() == tonic::Code::Aborted && flags.wait => {
                if !ctx.json() {
                    let _ = writeln!(io::stderr(), "waiting: {}", status.message());
                }
                tokio::time::sleep(LOCK_RETRY).await;
            }
            Err(status) => return Err(status.into()),
        }
    };
    if flags.detach {
        return Ok(View::Detached(Detached(rollout)));
    }
    ctx.print(&Note(format!("rollout {} started", rollout.id)))?;
    let done = follow_rollout(ctx, &mut s, &rollout.id).await?;
    Ok(View::Finished(Finished(done)))
}

/// Asks the coordinator to plan (`dry_run`) or start the rollout.
async fn request(
    client: &mut OperatorServiceClient<Channel>,
    what: &Start,
    dry_run: bool,
) -> Result<pb::Rollout, tonic::Status> {
    let reply = match what {
        Start::Deploy {
            file_name,
            app_file,
            env,
            version,
            accessories,
        } => {
            client
                .start_rollout(pb::StartRolloutRequest {
                    app_file: app_file.clone(),
                    file_name: file_name.clone(),
                    env: env.clone(),
                    version: version.clone(),
                    dry_run,
                    accessories_only: accessories.is_some(),
                    accessories: accessories.clone().unwrap_or_default(),
                })
                .await?
        }
        Start::Rollback { app, env, to } => {
            client
                .rollback(pb::RollbackRequest {
                    app: app.clone(),
                    env: env.clone(),
                    to_version: to.clone().unwrap_or_default(),
                    dry_run,
                })
                .await?
        }
        Start::Again {
            restart,
            app,
            env,
            services,
            accessories,
        } => {
            let req = pb::RedeployRequest {
                app: app.clone(),
                env: env.clone(),
                services: services.clone(),
                dry_run,
                accessories: *accessories,
            };
            if *restart {
                client.restart(req).await?
            } else {
                client.redeploy(req).await?
            }
        }
    };
    Ok(reply.into_inner().rollout.unwrap_or_default())
}

/// Asks on the terminal; without one, refuses (scripts pass `--yes`).
fn confirm(ctx: &Ctx, plan: &pb::Rollout) -> Result<(), CliError> {
    if !ctx.env.stdin_is_terminal {
        return Err(CliError::usage(format!(
            "{} is protected: a rollout there needs confirmation, and there is no terminal to ask on; pass --yes",
            plan.env
        )));
    }
    let mut stderr = io::stderr();
    let _ = write!(
        stderr,
        "{} is protected. Type its name to {} {} {} there: ",
        plan.env,
        crate::rollout::verb(&plan.kind),
        plan.app,
        plan.version
    );
    let _ = stderr.flush();
    let mut line = String::new();
    io::stdin()
        .lock()
        .read_line(&mut line)
        .map_err(|e| CliError::usage(format!("reading the confirmation: {e}")))?;
    if line.trim() != plan.env {
        return Err(CliError::usage(format!(
            "not confirmed (expected {:?}); nothing was started",
            plan.env
        )));
    }
    Ok(())
}

/// How a deploy or rollback ended; every one is a rollout in JSON.
#[derive(Debug, Serialize)]
#[serde(untagged)]
pub enum View {
    /// `--dry-run`: the plan, nothing ran.
    Planned(Plan),
    /// `--detach`: started; its id.
    Detached(Detached),
    /// Followed to its end.
    Finished(Finished),
}

impl Render for View {
    fn text(&self, t: &mut Text<'_>) -> io::Result<()> {
        match self {
            View::Planned(v) => v.text(t),
            View::Detached(v) => v.text(t),
            View::Finished(v) => v.text(t),
        }
    }
    fn exit_code(&self) -> i32 {
        match self {
            View::Planned(v) => v.exit_code(),
            View::Detached(v) => v.exit_code(),
            View::Finished(v) => v.exit_code(),
        }
    }
}
