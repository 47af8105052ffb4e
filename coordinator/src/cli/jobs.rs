//! Job commands: `ferry probe`, `ferry jobs`, `ferry job show|cancel`,
//! `ferry watch`.

use ferry_common::exit;
use ferry_common::labels::{format_labels, parse_labels};
use ferry_common::time::{now_ms, parse_duration, rfc3339_ms};
use ferry_proto::v1 as pb;
use serde_json::{Value, json};

use super::watch::follow;
use super::{Cli, CliEnv, CliError, Output, connect};

fn opt_time(ms: i64) -> Value {
    if ms == 0 {
        Value::Null
    } else {
        Value::String(rfc3339_ms(ms))
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

fn print_job(j: &pb::Job) {
    println!("job      {} ({})", j.id, j.kind);
    println!(
        "status   {}{}",
        j.status,
        if j.cancel_requested && j.status != "cancelled" {
            " (cancelling)"
        } else {
            ""
        }
    );
    println!(
        "by       {} at {}",
        j.created_by,
        rfc3339_ms(j.created_at_ms)
    );
    if j.finished_at_ms > 0 {
        println!("finished {}", rfc3339_ms(j.finished_at_ms));
    }
    println!("trace    {}", j.trace_id);
    println!();
    for t in &j.tasks {
        println!("  {:<14} {:<10} {}", t.agent_name, t.state, t.message);
    }
}

/// Submits a job and, unless `detach`, follows it.
#[allow(clippy::too_many_arguments)]
pub async fn probe(
    cli: &Cli,
    env: &CliEnv,
    agents: &[String],
    labels: &str,
    detach: bool,
    deadline: Option<&str>,
    idempotency_key: Option<&str>,
) -> Result<i32, CliError> {
    let labels = parse_labels(labels).map_err(|e| CliError::usage(format!("--labels: {e}")))?;
    let deadline_seconds = match deadline {
        Some(d) => parse_duration(d)
            .map_err(|e| CliError::usage(format!("--deadline: {e}")))?
            .as_secs()
            .max(1),
        None => 0,
    };
    let mut s = connect(cli, env).await?;
    let reply = s
        .client
        .submit_job(pb::SubmitJobRequest {
            kind: "probe".into(),
            spec_json: "{}".into(),
            target: Some(pb::Selector {
                agents: agents.to_vec(),
                labels: labels.into_iter().collect(),
            }),
            idempotency_key: idempotency_key.unwrap_or_default().to_string(),
            deadline_seconds,
        })
        .await?
        .into_inner();
    let job = reply.job.unwrap_or_default();
    if detach {
        if cli.output == Output::Json {
            println!("{}", json!({ "job_id": job.id, "created": reply.created }));
        } else {
            println!("{}", job.id);
        }
        return Ok(exit::OK);
    }
    let json_out = cli.output == Output::Json;
    let (job, code) = follow(cli, env, &job.id, json_out).await?;
    if json_out {
        println!(
            "{}",
            serde_json::to_string_pretty(&job_json(&job)).unwrap_or_default()
        );
    } else {
        println!();
        print_facts(&job);
    }
    Ok(code)
}

fn print_facts(job: &pb::Job) {
    for t in &job.tasks {
        let Ok(f) = serde_json::from_str::<ferry_common::job::HostFacts>(&t.result_json) else {
            println!("{:<14} {} {}", t.agent_name, t.state, t.message);
            continue;
        };
        let disks: Vec<String> = f
            .disks
            .iter()
            .map(|d| {
                format!(
                    "{} {} free",
                    d.mount,
                    ferry_common::health::human_bytes(d.free_bytes)
                )
            })
            .collect();
        println!("{}", t.agent_name);
        println!("  os        {} ({}, {})", f.os, f.kernel, f.arch);
        println!(
            "  cpu/mem   {} CPUs, {} of {} available",
            f.cpus,
            ferry_common::health::human_bytes(f.memory_available_bytes),
            ferry_common::health::human_bytes(f.memory_total_bytes)
        );
        println!("  disks     {}", disks.join(", "));
        println!(
            "  docker    {}",
            f.docker_version
                .map(|v| format!("engine {v}"))
                .unwrap_or_else(|| format!("unreachable: {}", f.docker_error.unwrap_or_default()))
        );
        println!(
            "  postgres  {}",
            f.postgres_version
                .map(|v| format!("server {v}"))
                .unwrap_or_else(|| f.postgres_error.unwrap_or_default())
        );
        println!("  clock     {} ms from the coordinator", f.clock_offset_ms);
    }
}

pub async fn list(
    cli: &Cli,
    env: &CliEnv,
    status: Option<&str>,
    kind: Option<&str>,
    agent: Option<&str>,
    since: Option<&str>,
    limit: u32,
) -> Result<i32, CliError> {
    let since_ms = match since {
        Some(s) => {
            now_ms()
                - parse_duration(s)
                    .map_err(|e| CliError::usage(format!("--since: {e}")))?
                    .as_millis() as i64
        }
        None => 0,
    };
    let mut s = connect(cli, env).await?;
    let jobs = s
        .client
        .list_jobs(pb::ListJobsRequest {
            status: status.unwrap_or_default().into(),
            kind: kind.unwrap_or_default().into(),
            agent: agent.unwrap_or_default().into(),
            since_ms,
            limit,
        })
        .await?
        .into_inner()
        .jobs;
    if cli.output == Output::Json {
        println!(
            "{}",
            serde_json::to_string_pretty(&Value::Array(jobs.iter().map(job_json).collect()))
                .unwrap_or_default()
        );
        return Ok(exit::OK);
    }
    if jobs.is_empty() {
        println!("no jobs");
        return Ok(exit::OK);
    }
    println!(
        "{:<36}  {:<8} {:<10} {:<20}  {:<6} TARGET",
        "ID", "KIND", "STATUS", "CREATED", "TASKS"
    );
    for j in &jobs {
        let t = j.target.clone().unwrap_or_default();
        let target = ferry_common::job::Selector {
            agents: t.agents,
            labels: t.labels.into_iter().collect(),
        };
        let done = j
            .tasks
            .iter()
            .filter(|t| matches!(t.state.as_str(), "succeeded"))
            .count();
        println!(
            "{:<36}  {:<8} {:<10} {:<20}  {:<6} {}",
            j.id,
            j.kind,
            j.status,
            rfc3339_ms(j.created_at_ms),
            format!("{done}/{}", j.tasks.len()),
            if target.labels.is_empty() {
                target.describe()
            } else {
                format!("{} ({})", target.describe(), format_labels(&target.labels))
            }
        );
    }
    Ok(exit::OK)
}

pub async fn show(cli: &Cli, env: &CliEnv, id: &str) -> Result<i32, CliError> {
    let mut s = connect(cli, env).await?;
    let job = s
        .client
        .get_job(pb::GetJobRequest {
            job_id: id.to_string(),
        })
        .await?
        .into_inner()
        .job
        .unwrap_or_default();
    if cli.output == Output::Json {
        println!(
            "{}",
            serde_json::to_string_pretty(&job_json(&job)).unwrap_or_default()
        );
    } else {
        print_job(&job);
    }
    Ok(exit::OK)
}

pub async fn cancel(cli: &Cli, env: &CliEnv, id: &str) -> Result<i32, CliError> {
    let mut s = connect(cli, env).await?;
    let job = s
        .client
        .cancel_job(pb::CancelJobRequest {
            job_id: id.to_string(),
        })
        .await?
        .into_inner()
        .job
        .unwrap_or_default();
    if cli.output == Output::Json {
        println!(
            "{}",
            serde_json::to_string_pretty(&job_json(&job)).unwrap_or_default()
        );
    } else if job.status == "cancelled" {
        println!("cancelled job {}", job.id);
    } else {
        println!(
            "cancelling job {}: agents are stopping its tasks (ferry watch {} to follow)",
            job.id, job.id
        );
    }
    Ok(exit::OK)
}

pub async fn watch(cli: &Cli, env: &CliEnv, id: &str) -> Result<i32, CliError> {
    let (job, code) = follow(cli, env, id, false).await?;
    if cli.output == Output::Text {
        println!("job {} {}", job.id, job.status);
    }
    Ok(code)
}
