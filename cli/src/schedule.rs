//! `ferry schedule apply|add|rm|ls`: the backup, verify and prune
//! schedules the coordinator fires, and how each one's last run went.
//! `apply` registers the app file's `[databases.NAME.backup]` schedules
//! (every `ferry deploy` does too); `add` and `rm` manage schedules by
//! hand; `ls` shows each one's last run, its outcome and its next run.

use std::io;
use std::path::PathBuf;

use ferry_proto::v1 as pb;
use serde::Serialize;
use serde_json::{Value, json};

use crate::render::{Render, Text, opt_time, short_id};
use crate::{CliError, Ctx};

#[derive(Debug, clap::Subcommand)]
pub enum Command {
    /// Backup, verify and prune schedules: register the app file's, add or
    /// remove one by hand, list them with their last and next run.
    #[command(subcommand)]
    Schedule(ScheduleCommand),
}

#[derive(Debug, clap::Subcommand)]
pub enum ScheduleCommand {
    /// Register the app file's schedules for an environment: per
    /// [databases.NAME.backup], `backup` and `prune` (retention) at
    /// `schedule`, `verify` at `verify_schedule`, in `timezone`. Replaces
    /// the environment's earlier app-file schedules (unchanged ones keep
    /// their id and history) and leaves manual ones; the file's databases
    /// become the settings the coordinator keeps. `ferry deploy` does this
    /// too.
    Apply(ApplyArgs),
    /// Add a schedule by hand (source `manual`, left alone by apply).
    Add(AddArgs),
    /// Remove a schedule.
    Rm {
        /// Schedule id, whole or 8+ of its characters (see `ferry schedule ls`).
        id: String,
    },
    /// Every schedule with its last run (when, outcome, late, error, job)
    /// and its next run.
    Ls(LsArgs),
}

#[derive(Debug, clap::Args)]
pub struct ApplyArgs {
    /// The app file.
    #[arg(short = 'f', long = "file", default_value = "ferry.toml")]
    pub file: PathBuf,
    /// Environment, e.g. production.
    #[arg(long)]
    pub env: String,
}

#[derive(Debug, clap::Args)]
pub struct AddArgs {
    /// App name, e.g. shop (default: the app of ./ferry.toml).
    #[arg(long)]
    pub app: Option<String>,
    /// Environment, e.g. production.
    #[arg(long)]
    pub env: String,
    /// Database name, as in [databases.NAME] of the app file the
    /// coordinator was given.
    #[arg(long)]
    pub db: String,
    /// What runs: backup (reason `scheduled`), verify (a test restore of
    /// the newest backup) or prune (retention).
    #[arg(long, value_parser = ["backup", "verify", "prune"])]
    pub kind: String,
    /// Five cron fields: minute hour day-of-month month day-of-week, e.g. "0 2 * * *".
    #[arg(long)]
    pub cron: String,
    /// IANA time zone the cron is read in, e.g. Europe/Paris.
    #[arg(long, default_value = "UTC")]
    pub timezone: String,
}

#[derive(Debug, clap::Args)]
pub struct LsArgs {
    /// Only this app's schedules (default: the app of ./ferry.toml if
    /// there is one, else every app).
    #[arg(long)]
    pub app: Option<String>,
    /// Only this environment's schedules.
    #[arg(long)]
    pub env: Option<String>,
}

pub async fn run(command: Command, ctx: &Ctx) -> Result<View, CliError> {
    let Command::Schedule(command) = command;
    match command {
        ScheduleCommand::Apply(args) => {
            // The file is checked here first, so its problems show with
            // lines even when the coordinator is down.
            let file_name = args.file.display().to_string();
            let app_file = ferry_common::appfile::read(&args.file)
                .map_err(|e| CliError::usage(e.to_string()))?;
            let app = ferry_common::appfile::parse(&file_name, &app_file)
                .map_err(|e| CliError::usage(e.to_string()))?;
            app.environment(&args.env)
                .map_err(|e| CliError::usage(format!("{file_name}: {e}")))?;
            let mut s = ctx.connect().await?;
            let reply = s
                .client
                .apply_schedules(pb::ApplySchedulesRequest {
                    app_file,
                    file_name,
                    env: args.env,
                })
                .await?
                .into_inner();
            Ok(View::Applied(Box::new(reply)))
        }
        ScheduleCommand::Add(args) => {
            let cron: ferry_common::appfile::CronSchedule = args
                .cron
                .parse()
                .map_err(|e: String| CliError::usage(format!("--cron: {e}")))?;
            ferry_common::appfile::check_time_zone(&args.timezone)
                .map_err(|e| CliError::usage(format!("--timezone: {e}")))?;
            let app = ctx.app(args.app)?;
            let mut s = ctx.connect().await?;
            let added = s
                .client
                .add_schedule(pb::AddScheduleRequest {
                    app,
                    env: args.env,
                    database: args.db,
                    kind: args.kind,
                    cron: cron.as_str().to_string(),
                    timezone: args.timezone,
                })
                .await?
                .into_inner()
                .schedule
                .unwrap_or_default();
            Ok(View::Added(Box::new(added)))
        }
        ScheduleCommand::Rm { id } => {
            let mut s = ctx.connect().await?;
            let removed = s
                .client
                .remove_schedule(pb::RemoveScheduleRequest { id })
                .await?
                .into_inner()
                .removed
                .unwrap_or_default();
            Ok(View::Removed(Box::new(removed)))
        }
        ScheduleCommand::Ls(args) => {
            let app = match args.app {
                Some(app) => app,
                None if std::path::Path::new(crate::context::APP_FILE).exists() => ctx.app(None)?,
                None => String::new(),
            };
            let mut s = ctx.connect().await?;
            let schedules = s
                .client
                .list_schedules(pb::ListSchedulesRequest {
                    app,
                    env: args.env.unwrap_or_default(),
                })
                .await?
                .into_inner()
                .schedules;
            Ok(View::Listed(schedules))
        }
    }
}

#[derive(Debug)]
pub enum View {
    Applied(Box<pb::ApplySchedulesResponse>),
    Added(Box<pb::Schedule>),
    Removed(Box<pb::Schedule>),
    Listed(Vec<pb::Schedule>),
}

/// A schedule as JSON: the fields `schedule ls` promises.
pub fn schedule_json(s: &pb::Schedule) -> Value {
    let some = |t: &str| Some(t.to_string()).filter(|t| !t.is_empty());
    json!({
        "id": s.id,
        "app": s.app,
        "env": s.env,
        "database": s.database,
        "kind": s.kind,
        "cron": s.cron,
        "timezone": s.timezone,
        "source": s.source,
        "created_at": opt_time(s.created_at_ms),
        "created_by": s.created_by,
        "last_run_at": opt_time(s.last_run_at_ms),
        "last_scheduled_for": opt_time(s.last_scheduled_for_ms),
        "last_outcome": some(&s.last_outcome),
        "last_late": s.last_late,
        "last_error": some(&s.last_error),
        "last_job_id": some(&s.last_job_id),
        "next_run_at": opt_time(s.next_run_at_ms),
        "overdue": s.overdue,
    })
}

impl Serialize for View {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            View::Listed(list) => {
                Value::Array(list.iter().map(schedule_json).collect()).serialize(s)
            }
            View::Added(one) | View::Removed(one) => schedule_json(one).serialize(s),
            View::Applied(a) => json!({
                "schedules": a.schedules.iter().map(schedule_json).collect::<Vec<_>>(),
                "added": a.added,
                "changed": a.changed,
                "removed": a.removed.iter().map(schedule_json).collect::<Vec<_>>(),
            })
            .serialize(s),
        }
    }
}

fn or_dash(s: Option<String>) -> String {
    s.unwrap_or_else(|| "-".into())
}

/// The last run in one cell: outcome, late, and why it could not start.
pub fn last_run(s: &pb::Schedule) -> String {
    if s.last_run_at_ms == 0 {
        return "never".into();
    }
    let mut out = format!(
        "{} {}",
        or_dash(opt_time(s.last_run_at_ms)),
        if s.last_outcome.is_empty() {
            "-"
        } else {
            &s.last_outcome
        }
    );
    if s.last_late {
        out.push_str(" (late)");
    }
    if !s.last_error.is_empty() {
        out.push_str(": ");
        out.push_str(&s.last_error);
    }
    out
}

/// The next run in one cell, marked when it is overdue.
pub fn next_run(s: &pb::Schedule) -> String {
    let next = or_dash(opt_time(s.next_run_at_ms));
    if s.overdue {
        format!("{next} OVERDUE")
    } else {
        next
    }
}

fn describe(s: &pb::Schedule) -> String {
    format!(
        "{} {} {} {} {} at \"{}\" ({}), {}",
        short_id(&s.id),
        s.app,
        s.env,
        s.database,
        s.kind,
        s.cron,
        s.timezone,
        s.source
    )
}

impl Render for View {
    fn text(&self, t: &mut Text<'_>) -> io::Result<()> {
        match self {
            View::Listed(list) => {
                if list.is_empty() {
                    return writeln!(t.out, "no schedules");
                }
                t.table(
                    &[
                        "ID", "APP", "ENV", "DATABASE", "KIND", "CRON", "TIMEZONE", "SOURCE",
                        "LAST RUN", "JOB", "NEXT RUN",
                    ],
                    list.iter().map(|s| {
                        vec![
                            short_id(&s.id),
                            s.app.clone(),
                            s.env.clone(),
                            s.database.clone(),
                            s.kind.clone(),
                            s.cron.clone(),
                            s.timezone.clone(),
                            s.source.clone(),
                            last_run(s),
                            if s.last_job_id.is_empty() {
                                "-".into()
                            } else {
                                short_id(&s.last_job_id)
                            },
                            next_run(s),
                        ]
                    }),
                )
            }
            View::Added(s) => writeln!(
                t.out,
                "added schedule {}; next run {}",
                describe(s),
                next_run(s)
            ),
            View::Removed(s) => writeln!(t.out, "removed schedule {}", describe(s)),
            View::Applied(a) => {
                for s in &a.schedules {
                    let what = if a.added.contains(&s.id) {
                        "added  "
                    } else if a.changed.contains(&s.id) {
                        "changed"
                    } else {
                        "kept   "
                    };
                    writeln!(t.out, "{what} {}; next run {}", describe(s), next_run(s))?;
                }
                for s in &a.removed {
                    writeln!(t.out, "removed {}", describe(s))?;
                }
                if a.schedules.is_empty() && a.removed.is_empty() {
                    writeln!(
                        t.out,
                        "no schedules: the app file's [databases.NAME.backup] set no schedule or verify_schedule"
                    )?;
                }
                Ok(())
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn schedule() -> pb::Schedule {
        pb::Schedule {
            id: "019af3c2-7d1e-7b4a-9c3e-5f1d2a3b4c5d".into(),
            app: "shop".into(),
            env: "production".into(),
            database: "main".into(),
            kind: "backup".into(),
            cron: "0 2 * * *".into(),
            timezone: "Europe/Paris".into(),
            source: "app-file".into(),
            next_run_at_ms: 1_700_000_000_000,
            ..Default::default()
        }
    }

    #[test]
    fn ls_says_never_or_the_last_run_with_its_outcome_lateness_and_error() {
        let never = schedule();
        assert_eq!(last_run(&never), "never");
        let v = schedule_json(&never);
        assert!(v["last_run_at"].is_null() && v["last_outcome"].is_null());
        assert_eq!(v["next_run_at"], "2023-11-14T22:13:20Z");
        let failed = pb::Schedule {
            last_run_at_ms: 1_700_000_000_000,
            last_outcome: "failed".into(),
            last_late: true,
            last_error: "no catalogued backup of database main of shop production to verify".into(),
            overdue: true,
            ..schedule()
        };
        assert_eq!(
            last_run(&failed),
            "2023-11-14T22:13:20Z failed (late): no catalogued backup of database main of shop production to verify"
        );
        assert!(next_run(&failed).ends_with(" OVERDUE"));
        let v = schedule_json(&failed);
        assert_eq!(
            (v["last_outcome"].as_str(), v["last_late"].as_bool()),
            (Some("failed"), Some(true))
        );
        assert!(v["last_job_id"].is_null());
    }
}
