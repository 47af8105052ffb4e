//! `ferry deploy`, `ferry rollback`, `ferry releases`: rollouts of an app
//! to an environment. The coordinator runs them (a CLI that dies does not
//! stop or break a rollout); the CLI shows the plan, asks for confirmation
//! where the environment is protected, and follows each step live.

use std::io::BufRead;
use std::path::Path;
use std::time::Duration;

use ferry_common::exit;
use ferry_common::time::{now_ms, rfc3339_ms};
use ferry_proto::v1 as pb;
use ferry_proto::v1::operator_service_client::OperatorServiceClient;
use serde_json::{Value, json};
use tonic::transport::Channel;

use super::watch::follow;
use super::{Cli, CliEnv, CliError, Output, connect};

/// How often a busy (app, env) is asked again with `--wait`.
const LOCK_RETRY: Duration = Duration::from_secs(2);
/// How often the rollout is looked at between its steps: a cheap read, and
/// the next step's job or the end usually follows within milliseconds, so
/// the first look comes soon and the pause doubles from there.
const POLL_FIRST: Duration = Duration::from_millis(2);
const POLL_MAX: Duration = Duration::from_millis(200);

/// What to start: a deploy from an app file, or a rollback.
pub enum Start<'a> {
    Deploy {
        file: &'a Path,
        env: &'a str,
        version: &'a str,
    },
    Rollback {
        app: &'a str,
        env: &'a str,
        to: Option<&'a str>,
    },
}

/// Options shared by `ferry deploy` and `ferry rollback`.
pub struct Flags {
    pub dry_run: bool,
    pub yes: bool,
    pub wait: bool,
    pub detach: bool,
}

pub async fn start(
    cli: &Cli,
    env: &CliEnv,
    what: Start<'_>,
    flags: Flags,
) -> Result<i32, CliError> {
    // The file is checked here first, so its problems show with lines even
    // when the coordinator is down.
    let file_text = match &what {
        Start::Deploy { file, .. } => {
            let name = file.display().to_string();
            let text = std::fs::read_to_string(file)
                .map_err(|e| CliError::usage(format!("{name}: cannot read: {e}")))?;
            ferry_common::appfile::parse(&name, &text)
                .map_err(|e| CliError::usage(e.to_string()))?;
            Some((name, text))
        }
        Start::Rollback { .. } => None,
    };
    let json_out = cli.output == Output::Json;
    let mut s = connect(cli, env).await?;
    let plan = request(&mut s.client, &what, file_text.as_ref(), true).await?;
    if !json_out {
        print_plan(&plan);
    }
    if flags.dry_run {
        if json_out {
            println!("{}", pretty(&rollout_json(&plan)));
        }
        return Ok(exit::OK);
    }
    if plan.protected && !flags.yes {
        confirm(env, &plan)?;
    }
    let rollout = loop {
        match request(&mut s.client, &what, file_text.as_ref(), false).await {
            Ok(r) => break r,
            Err(status) if status.code() == tonic::Code::Aborted && flags.wait => {
                if !json_out {
                    eprintln!("waiting: {}", status.message());
                }
                tokio::time::sleep(LOCK_RETRY).await;
            }
            Err(status) => return Err(status.into()),
        }
    };
    if flags.detach {
        if json_out {
            println!("{}", pretty(&rollout_json(&rollout)));
        } else {
            println!("{}", rollout.id);
        }
        return Ok(exit::OK);
    }
    if !json_out {
        println!("rollout {} started", rollout.id);
    }
    let done = follow_rollout(cli, env, &mut s, &rollout.id).await?;
    if json_out {
        println!("{}", pretty(&rollout_json(&done)));
    } else {
        println!();
        println!("{}: {}", done.status, done.message);
    }
    Ok(exit_code(&done.status))
}

/// Asks the coordinator to plan (`dry_run`) or start the rollout.
async fn request(
    client: &mut OperatorServiceClient<Channel>,
    what: &Start<'_>,
    file: Option<&(String, String)>,
    dry_run: bool,
) -> Result<pb::Rollout, tonic::Status> {
    let reply = match what {
        Start::Deploy { env, version, .. } => {
            let (file_name, app_file) = file.cloned().unwrap_or_default();
            client
                .start_rollout(pb::StartRolloutRequest {
                    app_file,
                    file_name,
                    env: env.to_string(),
                    version: version.to_string(),
                    dry_run,
                })
                .await?
        }
        Start::Rollback { app, env, to } => {
            client
                .rollback(pb::RollbackRequest {
                    app: app.to_string(),
                    env: env.to_string(),
                    to_version: to.unwrap_or_default().to_string(),
                    dry_run,
                })
                .await?
        }
    };
    Ok(reply.into_inner().rollout.unwrap_or_default())
}

/// Follows every step of a rollout until it ends.
async fn follow_rollout(
    cli: &Cli,
    env: &CliEnv,
    s: &mut super::Session,
    id: &str,
) -> Result<pb::Rollout, CliError> {
    let json_out = cli.output == Output::Json;
    let mut followed = 0usize;
    let mut pause = POLL_FIRST;
    loop {
        let r = s
            .client
            .get_rollout(pb::GetRolloutRequest {
                rollout_id: id.to_string(),
            })
            .await?
            .into_inner()
            .rollout
            .unwrap_or_default();
        if followed < r.steps.len() {
            let step = &r.steps[followed];
            if !json_out {
                println!("==> {}", step.name);
            }
            follow(cli, env, &step.job_id, json_out).await?;
            followed += 1;
            pause = POLL_FIRST;
            continue;
        }
        if r.status != "running" {
            return Ok(r);
        }
        tokio::time::sleep(pause).await;
        pause = (pause * 2).min(POLL_MAX);
    }
}

/// Asks on the terminal; without one, refuses (scripts pass `--yes`).
fn confirm(env: &CliEnv, plan: &pb::Rollout) -> Result<(), CliError> {
    if !env.stdin_is_terminal {
        return Err(CliError::usage(format!(
            "{} is protected: a rollout there needs confirmation, and there is no terminal to ask on; pass --yes",
            plan.env
        )));
    }
    eprint!(
        "{} is protected. Type its name to deploy {} {} there: ",
        plan.env, plan.app, plan.version
    );
    let mut line = String::new();
    std::io::stdin()
        .lock()
        .read_line(&mut line)
        .map_err(|e| CliError::usage(format!("reading the confirmation: {e}")))?;
    if line.trim() != plan.env {
        return Err(CliError::usage(format!(
            "not confirmed (expected {:?}); nothing was deployed",
            plan.env
        )));
    }
    Ok(())
}

fn print_plan(r: &pb::Rollout) {
    let hosts: usize = r.batches.iter().map(|b| b.hosts.len()).sum();
    let verb = if r.kind == crate::store::RolloutKind::Rollback.as_str() {
        "roll back"
    } else {
        "deploy"
    };
    println!(
        "Plan: {verb} {} {} to {} — {hosts} host(s) in {} batch(es) of up to {}",
        r.app,
        r.version,
        r.env,
        r.batches.len(),
        r.max_parallel
    );
    for s in &r.services {
        println!("  service {:<12} {}  ({})", s.name, s.image, s.strategy);
    }
    let now = now_ms();
    for (i, b) in r.batches.iter().enumerate() {
        let hosts: Vec<String> = b
            .hosts
            .iter()
            .map(|h| {
                if h.online {
                    h.agent.clone()
                } else {
                    format!(
                        "{} (OFFLINE, last seen {})",
                        h.agent,
                        ferry_common::time::ago(h.last_seen_ms, now)
                    )
                }
            })
            .collect();
        println!("  batch {}: {}", i + 1, hosts.join(", "));
    }
    if r.smoke_checks > 0 {
        println!("  smoke: {} check(s) after each batch", r.smoke_checks);
    }
    if r.previous_version.is_empty() {
        println!("  previous release: none (a failure cannot be reverted)");
    } else {
        println!(
            "  previous release: {} (restored on failure)",
            r.previous_version
        );
    }
}

pub async fn releases(
    cli: &Cli,
    env: &CliEnv,
    app: &str,
    environment: Option<&str>,
    limit: u32,
) -> Result<i32, CliError> {
    let mut s = connect(cli, env).await?;
    let releases = s
        .client
        .list_releases(pb::ListReleasesRequest {
            app: app.to_string(),
            env: environment.unwrap_or_default().to_string(),
            limit,
        })
        .await?
        .into_inner()
        .releases;
    if cli.output == Output::Json {
        let list: Vec<Value> = releases.iter().map(rollout_json).collect();
        println!("{}", pretty(&json!(list)));
        return Ok(exit::OK);
    }
    if releases.is_empty() {
        println!("no releases of {app}");
        return Ok(exit::OK);
    }
    println!(
        "{:<12} {:<12} {:<9} {:<14} {:<24} {:<20} {:<25} ID",
        "ENV", "VERSION", "KIND", "OUTCOME", "IMAGE", "BY", "STARTED"
    );
    for r in &releases {
        let image = r
            .services
            .first()
            .map(|s| s.image.clone())
            .unwrap_or_default();
        let by = r.created_by.rsplit('/').next().unwrap_or_default();
        println!(
            "{:<12} {:<12} {:<9} {:<14} {:<24} {:<20} {:<25} {}",
            r.env,
            r.version,
            r.kind,
            r.status,
            image,
            by,
            rfc3339_ms(r.created_at_ms),
            r.id
        );
    }
    Ok(exit::OK)
}

/// `ferry rollout ID`: follows a rollout (or shows how it ended).
pub async fn show(cli: &Cli, env: &CliEnv, id: &str) -> Result<i32, CliError> {
    let mut s = connect(cli, env).await?;
    let done = follow_rollout(cli, env, &mut s, id).await?;
    if cli.output == Output::Json {
        println!("{}", pretty(&rollout_json(&done)));
    } else {
        println!();
        println!("{}: {}", done.status, done.message);
    }
    Ok(exit_code(&done.status))
}

/// 0 when the release is out, 1 otherwise (failed, reverted, revert failed).
pub fn exit_code(status: &str) -> i32 {
    match status {
        "succeeded" | "planned" => exit::OK,
        _ => exit::FAILED,
    }
}

fn pretty(v: &Value) -> String {
    serde_json::to_string_pretty(v).unwrap_or_default()
}

pub fn rollout_json(r: &pb::Rollout) -> Value {
    let ms = |v: i64| (v > 0).then(|| rfc3339_ms(v));
    json!({
        "id": r.id,
        "app": r.app,
        "env": r.env,
        "version": r.version,
        "kind": r.kind,
        "status": r.status,
        "protected": r.protected,
        "previous_version": Some(&r.previous_version).filter(|v| !v.is_empty()),
        "services": r.services.iter().map(|s| json!({
            "name": s.name, "image": s.image, "strategy": s.strategy,
        })).collect::<Vec<_>>(),
        "batches": r.batches.iter().map(|b| b.hosts.iter().map(|h| json!({
            "agent": h.agent, "online": h.online,
        })).collect::<Vec<_>>()).collect::<Vec<_>>(),
        "max_parallel": r.max_parallel,
        "smoke_checks": r.smoke_checks,
        "steps": r.steps.iter().map(|s| json!({
            "name": s.name, "kind": s.kind, "job_id": s.job_id,
            "agents": s.agents, "status": s.status,
        })).collect::<Vec<_>>(),
        "message": r.message,
        "created_by": r.created_by,
        "created_at": ms(r.created_at_ms),
        "finished_at": ms(r.finished_at_ms),
        "trace_id": Some(&r.trace_id).filter(|v| !v.is_empty()),
        "rollback_of": Some(&r.rollback_of).filter(|v| !v.is_empty()),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_release_that_went_out_exits_zero() {
        assert_eq!(exit_code("succeeded"), 0);
        for s in ["failed", "reverted", "revert_failed", "running"] {
            assert_eq!(exit_code(s), 1, "{s}");
        }
    }

    #[test]
    fn json_names_every_field_scripts_use() {
        let r = pb::Rollout {
            id: "r1".into(),
            app: "shop".into(),
            env: "staging".into(),
            version: "1.2".into(),
            kind: "deploy".into(),
            status: "reverted".into(),
            previous_version: "1.1".into(),
            created_at_ms: 1_700_000_000_000,
            ..Default::default()
        };
        let j = rollout_json(&r);
        assert_eq!(j["status"], "reverted");
        assert_eq!(j["previous_version"], "1.1");
        assert_eq!(j["created_at"], "2023-11-14T22:13:20Z");
        assert!(j["finished_at"].is_null());
        assert!(j["trace_id"].is_null());
    }
}
