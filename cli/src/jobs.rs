//! Job commands: `ferry probe`, `ferry jobs`, `ferry job show|cancel`,
//! `ferry watch`.

use ferry_common::status::{JobStatus, TaskState};
use std::io::{self, Write};

use ferry_common::exit;
use ferry_common::health::human_bytes;
use ferry_common::labels::{format_labels, parse_labels};
use ferry_common::time::{now_ms, parse_duration, rfc3339_ms};
use ferry_proto::v1 as pb;
use serde::Serialize;
use serde_json::{Value, json};

use crate::follow::{exit_code, follow};
use crate::render::{Json, Render, Text, opt_time};
use crate::{CliError, Ctx};

#[derive(Debug, clap::Subcommand)]
pub enum Command {
    /// Report hosts' facts (OS, CPU, memory, disks, Docker, PostgreSQL, clock): a preflight.
    Probe(ProbeArgs),
    /// List jobs, newest first.
    Jobs(ListArgs),
    /// Show or cancel one job.
    Job {
        #[command(subcommand)]
        command: JobCommand,
    },
    /// Follow a job live until it ends; exit 0 succeeded, 1 failed, 3 cancelled.
    Watch {
        /// Job id: the whole id, or at least 8 characters from either end (as `ferry jobs` shows it).
        id: String,
    },
}

#[derive(Debug, clap::Args)]
pub struct ProbeArgs {
    /// Agent to probe (repeat for several; default: every agent).
    #[arg(long = "agent", value_name = "NAME")]
    pub agents: Vec<String>,
    /// Only agents with these labels, e.g. env=production.
    #[arg(long, default_value = "")]
    pub labels: String,
    /// Print the job id and return at once instead of watching.
    #[arg(long)]
    pub detach: bool,
    /// How long to wait for offline agents, e.g. 10m (default: the coordinator's, 1h).
    #[arg(long)]
    pub deadline: Option<String>,
    /// Submitting again with the same key returns the first job.
    #[arg(long, value_name = "KEY")]
    pub idempotency_key: Option<String>,
}

#[derive(Debug, clap::Args)]
pub struct ListArgs {
    /// Only jobs with this status: pending, running, succeeded, failed or cancelled.
    #[arg(long)]
    pub status: Option<String>,
    /// Only jobs of this kind, e.g. probe, smoke, deploy.
    #[arg(long)]
    pub kind: Option<String>,
    /// Only jobs with a task on this agent.
    #[arg(long)]
    pub agent: Option<String>,
    /// Only jobs created within this long, e.g. 1h, 7d.
    #[arg(long)]
    pub since: Option<String>,
    /// At most this many jobs.
    #[arg(long, default_value_t = 50)]
    pub limit: u32,
}

#[derive(Debug, clap::Subcommand)]
pub enum JobCommand {
    /// A job with its tasks and results.
    Show {
        /// Job id: the whole id, or at least 8 characters from either end (as `ferry jobs` shows it).
        id: String,
    },
    /// Cancel a job: what has not started never will, running tasks are stopped.
    Cancel {
        /// Job id: the whole id, or at least 8 characters from either end (as `ferry jobs` shows it).
        id: String,
    },
}

pub async fn run(command: Command, ctx: &Ctx) -> Result<View, CliError> {
    match command {
        Command::Probe(args) => probe(args, ctx).await,
        Command::Jobs(args) => list(args, ctx).await.map(View::List),
        Command::Job {
            command: JobCommand::Show { id },
        } => Ok(View::Shown(get(ctx, id).await?)),
        Command::Job {
            command: JobCommand::Cancel { id },
        } => {
            let mut s = ctx.connect().await?;
            let job = s
                .client
                .cancel_job(pb::CancelJobRequest { job_id: id })
                .await?
                .into_inner()
                .job
                .unwrap_or_default();
            Ok(View::Cancelled(job))
        }
        Command::Watch { id } => {
            let (job, _) = follow(ctx, &id, false).await?;
            Ok(View::Watched(job))
        }
    }
}

async fn get(ctx: &Ctx, job_id: String) -> Result<pb::Job, CliError> {
    let mut s = ctx.connect().await?;
    Ok(s.client
        .get_job(pb::GetJobRequest { job_id })
        .await?
        .into_inner()
        .job
        .unwrap_or_default())
}

/// Submits a probe and, unless `--detach`, follows it.
async fn probe(args: ProbeArgs, ctx: &Ctx) -> Result<View, CliError> {
    let labels =
        parse_labels(&args.labels).map_err(|e| CliError::usage(format!("--labels: {e}")))?;
    let deadline_seconds = match &args.deadline {
        Some(d) => parse_duration(d)
            .map_err(|e| CliError::usage(format!("--deadline: {e}")))?
            .as_secs()
            .max(1),
        None => 0,
    };
    let mut s = ctx.connect().await?;
    let reply = s
        .client
        .submit_job(pb::SubmitJobRequest {
            kind: "probe".into(),
            spec_json: "{}".into(),
            target: Some(pb::Selector {
                agents: args.agents,
                labels: labels.into_iter().collect(),
            }),
            idempotency_key: args.idempotency_key.unwrap_or_default(),
            deadline_seconds,
        })
        .await?
        .into_inner();
    let job = reply.job.unwrap_or_default();
    if args.detach {
        return Ok(View::Submitted {
            job_id: job.id,
            created: reply.created,
        });
    }
    // With --output json, only the final job is printed.
    let (job, _) = follow(ctx, &job.id, ctx.json()).await?;
    Ok(View::Probed(job))
}

async fn list(args: ListArgs, ctx: &Ctx) -> Result<Vec<pb::Job>, CliError> {
    let since_ms = match &args.since {
        Some(s) => {
            now_ms()
                - parse_duration(s)
                    .map_err(|e| CliError::usage(format!("--since: {e}")))?
                    .as_millis() as i64
        }
        None => 0,
    };
    let mut s = ctx.connect().await?;
    Ok(s.client
        .list_jobs(pb::ListJobsRequest {
            status: args.status.unwrap_or_default(),
            kind: args.kind.unwrap_or_default(),
            agent: args.agent.unwrap_or_default(),
            since_ms,
            limit: args.limit,
        })
        .await?
        .into_inner()
        .jobs)
}

/// What a job command shows.
#[derive(Debug)]
pub enum View {
    /// `probe --detach`: the job id (JSON: `{"created", "job_id"}` on one line).
    Submitted { job_id: String, created: bool },
    /// `probe`: each host's facts; exits with the job's status.
    Probed(pb::Job),
    /// `jobs`.
    List(Vec<pb::Job>),
    /// `job show`.
    Shown(pb::Job),
    /// `job cancel`.
    Cancelled(pb::Job),
    /// `watch`, once the events were shown: how it ended (text only; the
    /// JSON was the events); exits with the job's status.
    Watched(pb::Job),
}

impl Serialize for View {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            View::Submitted { job_id, created } => {
                json!({ "job_id": job_id, "created": created }).serialize(s)
            }
            View::List(jobs) => s.collect_seq(jobs.iter().map(job_json)),
            View::Probed(j) | View::Shown(j) | View::Cancelled(j) | View::Watched(j) => {
                job_json(j).serialize(s)
            }
        }
    }
}

impl Render for View {
    fn text(&self, t: &mut Text<'_>) -> io::Result<()> {
        match self {
            View::Submitted { job_id, .. } => writeln!(t.out, "{job_id}"),
            View::Probed(job) => {
                writeln!(t.out)?;
                facts(job, t.out)
            }
            View::List(jobs) => list_text(jobs, t),
            View::Shown(job) => job_text(job, t),
            View::Cancelled(job) if job.status == JobStatus::Cancelled.as_str() => {
                writeln!(t.out, "cancelled job {}", job.id)
            }
            View::Cancelled(job) => writeln!(
                t.out,
                "cancelling job {}: agents are stopping its tasks (ferry watch {} to follow)",
                job.id, job.id
            ),
            View::Watched(job) => writeln!(t.out, "job {} {}", job.id, job.status),
        }
    }

    fn json_style(&self) -> Json {
        match self {
            View::Submitted { .. } => Json::Line,
            View::Watched(_) => Json::None,
            _ => Json::Pretty,
        }
    }

    fn exit_code(&self) -> i32 {
        match self {
            View::Probed(job) | View::Watched(job) => exit_code(&job.status),
            _ => exit::OK,
        }
    }
}

/// A job as JSON: `id`, `kind`, `status`, `tasks`, …
pub fn job_json(j: &pb::Job) -> Value {
    let target = j.target.clone().unwrap_or_default();
    let labels: std::collections::BTreeMap<_, _> = target.labels.iter().collect();
    json!({
        "id": j.id,
        "kind": j.kind,
        "status": j.status,
        "created_by": j.created_by,
        "created_at": opt_time(j.created_at_ms),
        "finished_at": opt_time(j.finished_at_ms),
        "deadline": opt_time(j.deadline_ms),
        "cancel_requested": j.cancel_requested,
        "idempotency_key": if j.idempotency_key.is_empty() { Value::Null } else { json!(j.idempotency_key) },
        "target": { "agents": target.agents, "labels": labels },
        "trace_id": j.trace_id,
        "last_seq": j.last_seq,
        "tasks": j.tasks.iter().map(|t| json!({
            "id": t.id,
            "agent": t.agent_name,
            "agent_id": t.agent_id,
            "state": t.state,
            "attempt": t.attempt,
            "message": t.message,
            "events": t.last_seq,
            "started_at": opt_time(t.started_at_ms),
            "finished_at": opt_time(t.finished_at_ms),
            "result": serde_json::from_str::<Value>(&t.result_json).unwrap_or(Value::Null),
        })).collect::<Vec<_>>(),
    })
}

fn job_text(j: &pb::Job, t: &mut Text<'_>) -> io::Result<()> {
    writeln!(t.out, "job      {} ({})", j.id, j.kind)?;
    writeln!(
        t.out,
        "status   {}{}",
        j.status,
        if j.cancel_requested && j.status != JobStatus::Cancelled.as_str() {
            " (cancelling)"
        } else {
            ""
        }
    )?;
    writeln!(
        t.out,
        "by       {} at {}",
        j.created_by,
        rfc3339_ms(j.created_at_ms)
    )?;
    if j.finished_at_ms > 0 {
        writeln!(t.out, "finished {}", rfc3339_ms(j.finished_at_ms))?;
    }
    writeln!(t.out, "trace    {}", j.trace_id)?;
    writeln!(t.out)?;
    let rows = j.tasks.iter().map(|task| {
        vec![
            task.agent_name.clone(),
            task.state.clone(),
            task.message.clone(),
        ]
    });
    t.table(&["AGENT", "STATE", "MESSAGE"], rows)
}

fn list_text(jobs: &[pb::Job], t: &mut Text<'_>) -> io::Result<()> {
    if jobs.is_empty() {
        return writeln!(t.out, "no jobs");
    }
    let rows = jobs.iter().map(|j| {
        let target = j.target.clone().unwrap_or_default();
        let target = ferry_common::job::Selector {
            agents: target.agents,
            labels: target.labels.into_iter().collect(),
        };
        let done = j
            .tasks
            .iter()
            .filter(|t| t.state == TaskState::Succeeded.as_str())
            .count();
        vec![
            crate::render::short_id(&j.id),
            j.kind.clone(),
            j.status.clone(),
            rfc3339_ms(j.created_at_ms),
            format!("{done}/{}", j.tasks.len()),
            if target.labels.is_empty() {
                target.describe()
            } else {
                format!("{} ({})", target.describe(), format_labels(&target.labels))
            },
        ]
    });
    t.table(
        &["ID", "KIND", "STATUS", "CREATED", "TASKS", "TARGET"],
        rows,
    )
}

/// Each host's facts from a finished probe.
fn facts(job: &pb::Job, out: &mut dyn Write) -> io::Result<()> {
    for t in &job.tasks {
        let Ok(f) = serde_json::from_str::<ferry_common::job::HostFacts>(&t.result_json) else {
            writeln!(out, "{:<14} {} {}", t.agent_name, t.state, t.message)?;
            continue;
        };
        let disks: Vec<String> = f
            .disks
            .iter()
            .map(|d| format!("{} {} free", d.mount, human_bytes(d.free_bytes)))
            .collect();
        writeln!(out, "{}", t.agent_name)?;
        writeln!(out, "  os        {} ({}, {})", f.os, f.kernel, f.arch)?;
        writeln!(
            out,
            "  cpu/mem   {} CPUs, {} of {} available",
            f.cpus,
            human_bytes(f.memory_available_bytes),
            human_bytes(f.memory_total_bytes)
        )?;
        writeln!(out, "  disks     {}", disks.join(", "))?;
        writeln!(
            out,
            "  docker    {}",
            f.docker_version
                .map(|v| format!("engine {v}"))
                .unwrap_or_else(|| format!("unreachable: {}", f.docker_error.unwrap_or_default()))
        )?;
        writeln!(
            out,
            "  postgres  {}",
            f.postgres_version
                .map(|v| format!("server {v}"))
                .unwrap_or_else(|| f.postgres_error.unwrap_or_default())
        )?;
        writeln!(
            out,
            "  clock     {} ms from the coordinator",
            f.clock_offset_ms
        )?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::render::{Output, Printer, json_of, text_of};

    fn job(status: &str) -> pb::Job {
        pb::Job {
            id: "j1".into(),
            kind: "probe".into(),
            status: status.into(),
            created_at_ms: 1_700_000_000_000,
            target: Some(pb::Selector {
                agents: vec![],
                labels: [("env".to_string(), "staging".to_string())].into(),
            }),
            tasks: vec![pb::JobTask {
                agent_name: "web-1".into(),
                state: "succeeded".into(),
                result_json: "{\"cpus\":2}".into(),
                ..Default::default()
            }],
            ..Default::default()
        }
    }

    #[test]
    fn job_json_keeps_the_fields_scripts_use() {
        let j = json_of(&View::Shown(job("succeeded")));
        assert_eq!(j["id"], "j1");
        assert_eq!(j["status"], "succeeded");
        assert_eq!(j["created_at"], "2023-11-14T22:13:20Z");
        assert!(j["finished_at"].is_null());
        assert_eq!(j["target"]["labels"]["env"], "staging");
        assert_eq!(j["tasks"][0]["agent"], "web-1");
        assert_eq!(j["tasks"][0]["result"]["cpus"], 2);
        let list = json_of(&View::List(vec![job("failed")]));
        assert_eq!(list[0]["status"], "failed");
    }

    #[test]
    fn a_detached_probe_prints_one_line() {
        let v = View::Submitted {
            job_id: "j1".into(),
            created: true,
        };
        let (mut out, mut err) = (Vec::new(), Vec::new());
        Printer::new(Output::Json, false)
            .write(&v, &mut out, &mut err)
            .unwrap();
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "{\"created\":true,\"job_id\":\"j1\"}\n"
        );
        assert_eq!(text_of(&v), "j1\n");
    }

    #[test]
    fn a_watch_ends_with_the_status_and_its_exit_code() {
        let v = View::Watched(job("cancelled"));
        assert_eq!(text_of(&v), "job j1 cancelled\n");
        assert_eq!(v.json_style(), Json::None);
        assert_eq!(v.exit_code(), exit::CANCELLED);
        assert_eq!(View::Shown(job("failed")).exit_code(), exit::OK);
    }

    #[test]
    fn jobs_table() {
        let text = text_of(&View::List(vec![job("succeeded")]));
        let lines: Vec<&str> = text.lines().collect();
        assert!(
            lines[0].starts_with("ID  KIND   STATUS     CREATED"),
            "{text}"
        );
        assert!(lines[1].contains("1/1"), "{text}");
        assert!(lines[1].contains("env=staging"), "{text}");
        assert_eq!(text_of(&View::List(vec![])), "no jobs\n");
    }
}
