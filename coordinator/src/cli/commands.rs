//! The subcommands of `ferry`.

use std::collections::BTreeMap;

use ferry_common::credentials::Credentials;
use ferry_common::health::{HostHealth, human_bytes};
use ferry_common::identity::Role;
use ferry_common::labels::{format_labels, parse_labels};
use ferry_common::pki;
use ferry_common::time::{ago, now_ms, parse_duration, rfc3339_ms};
use ferry_proto::v1 as pb;
use serde_json::{Value, json};

use super::{
    AgentCommand, Cli, CliEnv, CliError, Command, JobCommand, OperatorCommand, Output,
    SecretCommand, TokenCommand, connect,
};

fn rollout_flags(f: &super::RolloutFlags) -> super::rollout::Flags {
    super::rollout::Flags {
        dry_run: f.dry_run,
        yes: f.yes,
        wait: f.wait,
        detach: f.detach,
    }
}

/// Runs the command; returns the exit code (for jobs, from their status).
pub async fn dispatch(cli: &Cli, env: &CliEnv) -> Result<i32, CliError> {
    use super::{jobs, rollout, secrets};
    let done = |r: Result<(), CliError>| r.map(|()| ferry_common::exit::OK);
    match &cli.command {
        Command::Probe {
            agents,
            labels,
            detach,
            deadline,
            idempotency_key,
        } => {
            jobs::probe(
                cli,
                env,
                agents,
                labels,
                *detach,
                deadline.as_deref(),
                idempotency_key.as_deref(),
            )
            .await
        }
        Command::Jobs {
            status,
            kind,
            agent,
            since,
            limit,
        } => {
            jobs::list(
                cli,
                env,
                status.as_deref(),
                kind.as_deref(),
                agent.as_deref(),
                since.as_deref(),
                *limit,
            )
            .await
        }
        Command::Job {
            command: JobCommand::Show { id },
        } => jobs::show(cli, env, id).await,
        Command::Job {
            command: JobCommand::Cancel { id },
        } => jobs::cancel(cli, env, id).await,
        Command::Watch { id } => jobs::watch(cli, env, id).await,
        Command::Validate { file } => super::validate::validate(cli.output, file),
        Command::Deploy {
            file,
            env: environment,
            version,
            flags,
        } => {
            rollout::start(
                cli,
                env,
                rollout::Start::Deploy {
                    file,
                    env: environment,
                    version,
                },
                rollout_flags(flags),
            )
            .await
        }
        Command::Rollback {
            app,
            env: environment,
            to,
            flags,
        } => {
            rollout::start(
                cli,
                env,
                rollout::Start::Rollback {
                    app,
                    env: environment,
                    to: to.as_deref(),
                },
                rollout_flags(flags),
            )
            .await
        }
        Command::Releases {
            app,
            env: environment,
            limit,
        } => rollout::releases(cli, env, app, environment.as_deref(), *limit).await,
        Command::Rollout { id } => rollout::show(cli, env, id).await,
        Command::Status => done(status(cli, env).await),
        Command::Agents => done(agents(cli, env).await),
        Command::Agent {
            command: AgentCommand::Revoke { agent },
        } => done(revoke_agent(cli, env, agent).await),
        Command::Token {
            command: TokenCommand::Create { name, labels, ttl },
        } => done(create_token(cli, env, name.clone(), labels, ttl.as_deref()).await),
        Command::Operator { command } => done(match command {
            OperatorCommand::Add { name, role, out } => {
                add_operator(cli, env, name, role, out.clone()).await
            }
            OperatorCommand::Ls => list_operators(cli, env).await,
            OperatorCommand::Revoke { name } => revoke_operator(cli, env, name).await,
        }),
        Command::Secret { command } => done(match command {
            SecretCommand::Set {
                app,
                env: app_env,
                name,
            } => secrets::set(cli, env, app, app_env, name).await,
            SecretCommand::Ls { app, env: app_env } => {
                secrets::list(cli, env, app, app_env.as_deref()).await
            }
            SecretCommand::Rm {
                app,
                env: app_env,
                name,
            } => secrets::remove(cli, env, app, app_env, name).await,
        }),
    }
}

pub(super) fn print_json(v: &Value) {
    println!("{}", serde_json::to_string_pretty(v).unwrap_or_default());
}

pub(super) fn opt_time(ms: i64) -> Value {
    if ms == 0 {
        Value::Null
    } else {
        Value::String(rfc3339_ms(ms))
    }
}

fn role_name(r: i32) -> &'static str {
    pb::Role::try_from(r)
        .ok()
        .and_then(|r| Role::try_from(r).ok())
        .map(Role::as_str)
        .unwrap_or("unknown")
}

fn state_name(s: i32) -> &'static str {
    match pb::AgentState::try_from(s) {
        Ok(pb::AgentState::Online) => "online",
        Ok(pb::AgentState::Offline) => "offline",
        Ok(pb::AgentState::Revoked) => "revoked",
        _ => "unknown",
    }
}

async fn status(cli: &Cli, env: &CliEnv) -> Result<(), CliError> {
    let mut s = connect(cli, env).await?;
    let st = s
        .client
        .get_status(pb::GetStatusRequest {})
        .await?
        .into_inner();
    if cli.output == Output::Json {
        print_json(&json!({
            "coordinator": s.credentials.coordinator,
            "version": st.version,
            "coordinator_id": st.coordinator_id,
            "trust_domain": st.trust_domain,
            "store": st.store_backend,
            "agents_online": st.agents_online,
            "agents_enrolled": st.agents_total,
            "caller": st.caller,
            "caller_role": role_name(st.caller_role),
            "started_at": opt_time(st.started_at_ms),
        }));
    } else {
        println!(
            "coordinator   {} (ferry {}, id {})",
            s.credentials.coordinator, st.version, st.coordinator_id
        );
        println!("trust domain  {}", st.trust_domain);
        println!("store         {}", st.store_backend);
        println!(
            "agents        {} online / {} enrolled",
            st.agents_online, st.agents_total
        );
        println!(
            "up since      {} ({})",
            rfc3339_ms(st.started_at_ms),
            ago(st.started_at_ms, st.server_time_ms)
        );
        println!(
            "you           {} (role {})",
            st.caller,
            role_name(st.caller_role)
        );
    }
    Ok(())
}

fn agent_json(a: &pb::Agent) -> Value {
    let labels: BTreeMap<_, _> = a.labels.iter().collect();
    json!({
        "name": a.name,
        "id": a.id,
        "state": state_name(a.state),
        "labels": labels,
        "last_seen": opt_time(a.last_seen_ms),
        "version": a.version,
        "hostname": a.hostname,
        "enrolled_at": opt_time(a.enrolled_at_ms),
        "revoked_at": opt_time(a.revoked_at_ms),
        "health": a.health.clone().map(|h| serde_json::to_value(HostHealth::from(h)).unwrap_or(Value::Null)),
    })
}

fn health_summary(h: Option<&pb::HostHealth>) -> (String, String) {
    let Some(h) = h else {
        return ("-".into(), "-".into());
    };
    let docker = if h.docker_reachable {
        format!("ok {}", h.docker_version)
    } else {
        "unreachable".into()
    };
    let disk = h
        .disks
        .iter()
        .map(|d| format!("{} {}", d.mount, human_bytes(d.free_bytes)))
        .collect::<Vec<_>>()
        .join(", ");
    (docker, if disk.is_empty() { "-".into() } else { disk })
}

async fn agents(cli: &Cli, env: &CliEnv) -> Result<(), CliError> {
    let mut s = connect(cli, env).await?;
    let list = s
        .client
        .list_agents(pb::ListAgentsRequest {})
        .await?
        .into_inner()
        .agents;
    if cli.output == Output::Json {
        print_json(&Value::Array(list.iter().map(agent_json).collect()));
        return Ok(());
    }
    if list.is_empty() {
        println!("no agents enrolled; create a join token with `ferry token create`");
        return Ok(());
    }
    let now = now_ms();
    let rows: Vec<[String; 7]> = list
        .iter()
        .map(|a| {
            let labels: BTreeMap<String, String> = a.labels.clone().into_iter().collect();
            let (docker, disk) = health_summary(a.health.as_ref());
            [
                a.name.clone(),
                state_name(a.state).to_string(),
                a.version.clone(),
                ago(a.last_seen_ms, now),
                if labels.is_empty() {
                    "-".into()
                } else {
                    format_labels(&labels)
                },
                docker,
                disk,
            ]
        })
        .collect();
    print_table(
        &[
            "NAME",
            "STATE",
            "VERSION",
            "LAST SEEN",
            "LABELS",
            "DOCKER",
            "FREE DISK",
        ],
        &rows,
    );
    Ok(())
}

pub(super) fn print_table<const N: usize>(header: &[&str; N], rows: &[[String; N]]) {
    let mut widths = header.map(str::len);
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row.iter()) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let line = |cells: Vec<&str>| {
        let text: Vec<String> = cells
            .iter()
            .zip(widths.iter())
            .map(|(c, w)| format!("{c:<w$}"))
            .collect();
        println!("{}", text.join("  ").trim_end());
    };
    line(header.to_vec());
    for row in rows {
        line(row.iter().map(String::as_str).collect());
    }
}

async fn revoke_agent(cli: &Cli, env: &CliEnv, agent: &str) -> Result<(), CliError> {
    let mut s = connect(cli, env).await?;
    let r = s
        .client
        .revoke_agent(pb::RevokeAgentRequest {
            agent: agent.to_string(),
        })
        .await?
        .into_inner();
    let a = r.agent.unwrap_or_default();
    if cli.output == Output::Json {
        print_json(&json!({ "agent": agent_json(&a), "was_connected": r.was_connected }));
    } else {
        println!(
            "revoked agent {} ({}){}",
            a.name,
            a.id,
            if r.was_connected {
                "; its live session was cut"
            } else {
                ""
            }
        );
    }
    Ok(())
}

async fn create_token(
    cli: &Cli,
    env: &CliEnv,
    name: Option<String>,
    labels: &str,
    ttl: Option<&str>,
) -> Result<(), CliError> {
    let labels = parse_labels(labels).map_err(|e| CliError::usage(format!("--labels: {e}")))?;
    let ttl_seconds = match ttl {
        Some(t) => parse_duration(t)
            .map_err(|e| CliError::usage(format!("--ttl: {e}")))?
            .as_secs(),
        None => 0,
    };
    let mut s = connect(cli, env).await?;
    let t = s
        .client
        .create_join_token(pb::CreateJoinTokenRequest {
            name: name.unwrap_or_default(),
            labels: labels.into_iter().collect(),
            ttl_seconds,
        })
        .await?
        .into_inner();
    let mut command = format!(
        "ferry-agent enroll --coordinator {} --token {} --ca-pin {} --state-dir /var/lib/ferry-agent",
        t.coordinator, t.token, t.ca_pin
    );
    if !t.name.is_empty() {
        command.push_str(&format!(" --name {}", t.name));
    }
    if cli.output == Output::Json {
        let labels: BTreeMap<_, _> = t.labels.iter().collect();
        print_json(&json!({
            "token": t.token,
            "ca_pin": t.ca_pin,
            "coordinator": t.coordinator,
            "expires_at": rfc3339_ms(t.expires_at_ms),
            "name": if t.name.is_empty() { Value::Null } else { Value::String(t.name.clone()) },
            "labels": labels,
            "command": command,
        }));
    } else {
        println!(
            "join token (single use, valid until {}):",
            rfc3339_ms(t.expires_at_ms)
        );
        println!("  {}", t.token);
        println!("CA pin: {}", t.ca_pin);
        println!();
        println!("on the host, run:");
        println!("  {command}");
    }
    Ok(())
}

async fn add_operator(
    cli: &Cli,
    env: &CliEnv,
    name: &str,
    role: &str,
    out: Option<std::path::PathBuf>,
) -> Result<(), CliError> {
    let role: Role = role
        .parse()
        .map_err(|e: String| CliError::usage(format!("--role: {e}")))?;
    let out = out.unwrap_or_else(|| std::path::PathBuf::from(format!("{name}.credentials")));
    // Check before the coordinator creates anything, so a refusal here
    // leaves no operator without a credentials file.
    if out.exists() {
        return Err(CliError::usage(format!(
            "{}: already exists; refusing to overwrite it (choose another --out)",
            out.display()
        )));
    }
    let (key_pem, csr_pem) =
        pki::generate_key_and_csr(name).map_err(|e| CliError::failed(e.to_string()))?;
    let mut s = connect(cli, env).await?;
    let r = s
        .client
        .add_operator(pb::AddOperatorRequest {
            name: name.to_string(),
            role: pb::Role::from(role) as i32,
            csr_pem,
        })
        .await?
        .into_inner();
    Credentials {
        coordinator: r.coordinator,
        name: name.to_string(),
        ca: r.ca_pem,
        certificate: r.certificate_pem,
        key: key_pem,
    }
    .save(&out, false)
    .map_err(|e| {
        CliError::failed(format!(
            "operator {name} was added, but its credentials could not be written: {e}"
        ))
    })?;
    if cli.output == Output::Json {
        print_json(
            &json!({ "name": name, "role": role.as_str(), "credentials_file": out.display().to_string() }),
        );
    } else {
        println!(
            "added operator {name} (role {role}); credentials written to {}",
            out.display()
        );
        println!(
            "hand that file over privately; they use it with `ferry --credentials {}`",
            out.display()
        );
    }
    Ok(())
}

async fn list_operators(cli: &Cli, env: &CliEnv) -> Result<(), CliError> {
    let mut s = connect(cli, env).await?;
    let list = s
        .client
        .list_operators(pb::ListOperatorsRequest {})
        .await?
        .into_inner()
        .operators;
    if cli.output == Output::Json {
        let items: Vec<Value> = list
            .iter()
            .map(|o| {
                json!({
                    "name": o.name,
                    "role": role_name(o.role),
                    "created_at": opt_time(o.created_at_ms),
                    "created_by": o.created_by,
                    "revoked_at": opt_time(o.revoked_at_ms),
                })
            })
            .collect();
        print_json(&Value::Array(items));
        return Ok(());
    }
    let rows: Vec<[String; 4]> = list
        .iter()
        .map(|o| {
            [
                o.name.clone(),
                role_name(o.role).to_string(),
                rfc3339_ms(o.created_at_ms),
                if o.revoked_at_ms > 0 {
                    format!("revoked {}", rfc3339_ms(o.revoked_at_ms))
                } else {
                    "active".into()
                },
            ]
        })
        .collect();
    print_table(&["NAME", "ROLE", "CREATED", "STATUS"], &rows);
    Ok(())
}

async fn revoke_operator(cli: &Cli, env: &CliEnv, name: &str) -> Result<(), CliError> {
    let mut s = connect(cli, env).await?;
    let r = s
        .client
        .revoke_operator(pb::RevokeOperatorRequest {
            name: name.to_string(),
        })
        .await?
        .into_inner();
    let o = r.operator.unwrap_or_default();
    if cli.output == Output::Json {
        print_json(
            &json!({ "name": o.name, "role": role_name(o.role), "revoked_at": opt_time(o.revoked_at_ms) }),
        );
    } else {
        println!("revoked operator {}", o.name);
    }
    Ok(())
}
