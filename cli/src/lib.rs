//! `ferry`, the operator CLI. Every command but `validate` and
//! `completions` talks to the coordinator over mutually authenticated gRPC
//! with the operator's credentials file, prints text for people or JSON
//! (`--output json`) for scripts, and exits with the codes in
//! [`ferry_common::exit`].
//!
//! One module per capability, each owning its clap arguments, a `run` that
//! does the RPCs and returns a view, and that view's rendering:
//!
//! - [`status`], [`agents`], [`tokens`], [`operators`]: the coordinator,
//!   its agents, join tokens and operators.
//! - [`backup`]: `backup run|ls|show`, database backups and their catalogue;
//!   [`schedule`]: `schedule apply|add|rm|ls`, their schedules.
//! - [`migrate`]: `migrate`, `migrate status`: schema migrations of the
//!   main and tenant databases, with a per-database report.
//! - [`jobs`]: `probe`, `jobs`, `job show|cancel`, `watch`; [`follow`]
//!   streams a job's events (shared with rollouts).
//! - [`deploy`]: `deploy`, `rollback`, `redeploy`, `restart`; [`rollout`]:
//!   `releases`, `rollout`, `rollout cancel`; [`accessory`]: `accessory
//!   ls|restart|upgrade`, the long-lived containers beside the services.
//! - [`logs`]: a service's container logs; [`audit`]: the audit log;
//!   `status --app` (in [`status`]): what runs where.
//! - [`secrets`], [`validate`], [`completions`].
//!
//! Around them: [`context`] (flags, environment, connecting), [`render`]
//! (the [`render::Render`] trait, the one printer, tables) and [`error`]
//! (the one map from failures to exit codes).
//!
//! A new command is a new module and one line in [`Command`] (and its arm
//! in [`run`]).

use clap::{Parser, Subcommand};

pub mod accessory;
pub mod agents;
pub mod audit;
pub mod backup;
pub mod completions;
pub mod context;
pub mod deploy;
pub mod error;
pub mod follow;
pub mod jobs;
pub mod logs;
pub mod migrate;
pub mod operators;
pub mod render;
pub mod rollout;
pub mod schedule;
pub mod secrets;
pub mod status;
pub mod tokens;
pub mod validate;

pub use context::{CliEnv, Ctx};
pub use error::CliError;
pub use render::{Output, Render};

#[derive(Debug, Parser)]
#[command(
    name = "ferry",
    version,
    about = "Operate a Ferry coordinator: deploys, releases, agents, join tokens, operators, jobs, secrets"
)]
pub struct Cli {
    /// Credentials file (default: $FERRY_CREDENTIALS, then ~/.config/ferry/credentials).
    #[arg(long, global = true, value_name = "FILE")]
    pub credentials: Option<std::path::PathBuf>,
    /// Output format: text for people, json for scripts.
    #[arg(long, global = true, value_enum, default_value_t = Output::Text)]
    pub output: Output,
    #[command(subcommand)]
    pub command: Command,
}

/// Every capability, one line each; the subcommands are the modules'.
#[derive(Debug, Subcommand)]
pub enum Command {
    #[command(flatten)]
    Status(status::Command),
    #[command(flatten)]
    Agents(agents::Command),
    #[command(flatten)]
    Tokens(tokens::Command),
    #[command(flatten)]
    Operators(operators::Command),
    #[command(flatten)]
    Jobs(jobs::Command),
    #[command(flatten)]
    Secrets(secrets::Command),
    #[command(flatten)]
    Deploy(deploy::Command),
    #[command(flatten)]
    Rollout(rollout::Command),
    #[command(flatten)]
    Logs(logs::Command),
    #[command(flatten)]
    Audit(audit::Command),
    #[command(flatten)]
    Validate(validate::Command),
    #[command(flatten)]
    Completions(completions::Command),
    #[command(flatten)]
    Backup(backup::Command),
    #[command(flatten)]
    Schedule(schedule::Command),
    #[command(flatten)]
    Migrate(migrate::Command),
    #[command(flatten)]
    Accessory(accessory::Command),
}

/// Runs one CLI invocation and returns its exit code; output goes to
/// stdout, errors to stderr.
pub async fn run(cli: Cli, env: CliEnv) -> i32 {
    let ctx = Ctx::new(cli.output, cli.credentials, env);
    let result = match cli.command {
        Command::Status(c) => show(&ctx, status::run(c, &ctx).await),
        Command::Agents(c) => show(&ctx, agents::run(c, &ctx).await),
        Command::Tokens(c) => show(&ctx, tokens::run(c, &ctx).await),
        Command::Operators(c) => show(&ctx, operators::run(c, &ctx).await),
        Command::Jobs(c) => show(&ctx, jobs::run(c, &ctx).await),
        Command::Secrets(c) => show(&ctx, secrets::run(c, &ctx).await),
        Command::Deploy(c) => show(&ctx, deploy::run(c, &ctx).await),
        Command::Rollout(c) => show(&ctx, rollout::run(c, &ctx).await),
        Command::Logs(c) => show(&ctx, logs::run(c, &ctx).await),
        Command::Audit(c) => show(&ctx, audit::run(c, &ctx).await),
        Command::Validate(c) => show(&ctx, validate::run(c, &ctx).await),
        Command::Completions(c) => show(&ctx, completions::run(c, &ctx).await),
        Command::Backup(c) => show(&ctx, backup::run(c, &ctx).await),
        Command::Schedule(c) => show(&ctx, schedule::run(c, &ctx).await),
        Command::Migrate(c) => show(&ctx, migrate::run(c, &ctx).await),
        Command::Accessory(c) => show(&ctx, accessory::run(c, &ctx).await),
    };
    match result {
        Ok(code) => code,
        Err(e) => render::report(&e, ctx.output),
    }
}

/// Prints a command's view; its exit code is the view's.
fn show<V: Render>(ctx: &Ctx, view: Result<V, CliError>) -> Result<i32, CliError> {
    let view = view?;
    ctx.print(&view)?;
    Ok(view.exit_code())
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;
    use ferry_common::job::JobKind;

    /// Every flag and argument of every command has help text: `ferry
    /// help` is where operators learn what `--limit` or `--env` means.
    #[test]
    fn every_argument_of_every_command_has_help() {
        fn walk(cmd: &clap::Command, path: &str, missing: &mut Vec<String>) {
            for arg in cmd.get_arguments() {
                let builtin = matches!(arg.get_id().as_str(), "help" | "version");
                if !builtin && arg.get_help().is_none() && arg.get_long_help().is_none() {
                    missing.push(format!("{path} {}", arg.get_id()));
                }
            }
            for sub in cmd.get_subcommands() {
                walk(sub, &format!("{path} {}", sub.get_name()), missing);
            }
        }
        let mut missing = Vec::new();
        walk(&Cli::command(), "ferry", &mut missing);
        assert!(missing.is_empty(), "arguments without help: {missing:?}");
    }

    /// Every job kind names the commands that submit it (the registry in
    /// `ferry_common::job`), and each of those is a real `ferry` command: a
    /// kind added without its command fails here.
    #[test]
    fn every_job_kind_is_submitted_by_a_real_command() {
        let cli = Cli::command();
        let commands: Vec<&str> = cli.get_subcommands().map(|c| c.get_name()).collect();
        for kind in JobKind::ALL {
            assert!(!kind.cli().is_empty(), "{kind} names no command");
            for name in kind.cli() {
                assert!(
                    commands.contains(name),
                    "job kind {kind} says `ferry {name}` submits it, but there is no such command (have: {})",
                    commands.join(", ")
                );
            }
        }
    }
}
