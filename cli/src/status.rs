//! `ferry status`: the coordinator, its store, agent counts and who you
//! are; `ferry status --app A [--env E]`: the app's environments, each with
//! its current release and, per host, the app's containers (the `ps` of
//! Ferry).

use std::io::{self, Write};

use ferry_common::identity::Role;
use ferry_common::time::{ago, rfc3339_ms};
use ferry_proto::v1 as pb;
use serde::Serialize;

use crate::render::{Render, Text, opt_time};
use crate::{CliError, Ctx};

#[derive(Debug, clap::Subcommand)]
pub enum Command {
    /// Show the coordinator, its store, agent counts and who you are; with
    /// --app, the app's environments: current release, who deployed it
    /// when, and each host's containers (state, health, release).
    Status(StatusArgs),
}

#[derive(Debug, clap::Args)]
pub struct StatusArgs {
    /// Show this app instead of the coordinator (its hosts are asked what
    /// runs; an `inspect` job).
    #[arg(long)]
    pub app: Option<String>,
    /// With --app: only this environment (default: every one).
    #[arg(long, requires = "app")]
    pub env: Option<String>,
}

pub async fn run(command: Command, ctx: &Ctx) -> Result<View, CliError> {
    let Command::Status(args) = command;
    let mut s = ctx.connect().await?;
    if let Some(app) = args.app {
        let status = s
            .client
            .get_app_status(pb::GetAppStatusRequest {
                app,
                env: args.env.unwrap_or_default(),
            })
            .await?
            .into_inner();
        return Ok(View::App(AppStatus(status)));
    }
    let st = s
        .client
        .get_status(pb::GetStatusRequest {})
        .await?
        .into_inner();
    Ok(View::Coordinator(Coordinator {
        coordinator: s.credentials.coordinator,
        status: st,
    }))
}

/// `ferry status`, or `ferry status --app`.
#[derive(Debug, Serialize)]
#[serde(untagged)]
pub enum View {
    Coordinator(Coordinator),
    App(AppStatus),
}

impl Render for View {
    fn text(&self, t: &mut Text<'_>) -> io::Result<()> {
        match self {
            View::Coordinator(v) => v.text(t),
            View::App(v) => v.text(t),
        }
    }
}

/// The coordinator as the credentials name it, and its status.
#[derive(Debug)]
pub struct Coordinator {
    pub coordinator: String,
    pub status: pb::GetStatusResponse,
}

/// A role's name (`viewer`, `deployer`, `admin`), or `unknown`.
pub fn role_name(r: i32) -> &'static str {
    pb::Role::try_from(r)
        .ok()
        .and_then(|r| Role::try_from(r).ok())
        .map(Role::as_str)
        .unwrap_or("unknown")
}

impl Serialize for Coordinator {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let st = &self.status;
        serde_json::json!({
            "coordinator": self.coordinator,
            "version": st.version,
            "coordinator_id": st.coordinator_id,
            "trust_domain": st.trust_domain,
            "store": st.store_backend,
            "agents_online": st.agents_online,
            "agents_enrolled": st.agents_total,
            "caller": st.caller,
            "caller_role": role_name(st.caller_role),
            "started_at": opt_time(st.started_at_ms),
            "schedules_needing_attention": st
                .schedules_needing_attention
                .iter()
                .map(crate::schedule::schedule_json)
                .collect::<Vec<_>>(),
        })
        .serialize(s)
    }
}

impl Render for Coordinator {
    fn text(&self, t: &mut Text<'_>) -> io::Result<()> {
        let st = &self.status;
        let out = &mut t.out;
        writeln!(
            out,
            "coordinator   {} (ferry {}, id {})",
            self.coordinator, st.version, st.coordinator_id
        )?;
        writeln!(out, "trust domain  {}", st.trust_domain)?;
        writeln!(out, "store         {}", st.store_backend)?;
        writeln!(
            out,
            "agents        {} online / {} enrolled",
            st.agents_online, st.agents_total
        )?;
        writeln!(
            out,
            "up since      {} ({})",
            rfc3339_ms(st.started_at_ms),
            ago(st.started_at_ms, st.server_time_ms)
        )?;
        writeln!(
            out,
            "you           {} (role {})",
            st.caller,
            role_name(st.caller_role)
        )?;
        // A schedule that failed or does not fire is said where operators
        // look first.
        for s in &st.schedules_needing_attention {
            let why = if s.overdue {
                format!(
                    "OVERDUE: due {} and not fired",
                    opt_time(s.next_run_at_ms).unwrap_or_default()
                )
            } else {
                format!("last run {}", crate::schedule::last_run(s))
            };
            writeln!(
                out,
                "schedule      {} {} {} {} {} ({}): {why}",
                crate::render::short_id(&s.id),
                s.app,
                s.env,
                s.database,
                s.kind,
                s.cron
            )?;
        }
        Ok(())
    }
}

/// `ferry status --app`: per environment the current release and the
/// hosts' containers.
#[derive(Debug)]
pub struct AppStatus(pub pb::GetAppStatusResponse);

/// A release as `status` shows it: version, who, when.
fn release_json(r: Option<&pb::Rollout>) -> serde_json::Value {
    match r {
        None => serde_json::Value::Null,
        Some(r) => serde_json::json!({
            "id": r.id,
            "version": r.version,
            "kind": r.kind,
            "status": r.status,
            "deployed_by": r.created_by,
            "started_at": opt_time(r.created_at_ms),
            "finished_at": opt_time(r.finished_at_ms),
            "message": r.message,
        }),
    }
}

/// An operator's name from their SPIFFE URI.
fn who(uri: &str) -> &str {
    uri.rsplit('/').next().unwrap_or(uri)
}

impl Serialize for AppStatus {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let st = &self.0;
        let envs: Vec<serde_json::Value> = st
            .environments
            .iter()
            .map(|e| {
                serde_json::json!({
                    "env": e.env,
                    "current": release_json(e.current.as_ref()),
                    "latest": release_json(e.latest.as_ref()),
                    "hosts": e.hosts.iter().map(|h| serde_json::json!({
                        "agent": h.agent,
                        "online": h.online,
                        "last_seen": opt_time(h.last_seen_ms),
                        "error": Some(&h.error).filter(|e| !e.is_empty()),
                        "containers": h.containers.iter().map(|c| serde_json::json!({
                            "name": c.name,
                            "service": c.service,
                            "release": c.release,
                            "image": c.image,
                            "state": c.state,
                            "health": Some(&c.health).filter(|h| !h.is_empty()),
                            "started_at": opt_time(c.started_at_ms),
                            "hash": Some(&c.hash).filter(|h| !h.is_empty()),
                            "accessory": Some(&c.accessory).filter(|a| !a.is_empty()),
                            "replica": Some(c.replica).filter(|r| *r > 0),
                        })).collect::<Vec<_>>(),
                    })).collect::<Vec<_>>(),
                })
            })
            .collect();
        serde_json::json!({
            "app": st.app,
            "environments": envs,
            "inspect_job_id": Some(&st.inspect_job_id).filter(|j| !j.is_empty()),
        })
        .serialize(s)
    }
}

impl Render for AppStatus {
    fn text(&self, t: &mut Text<'_>) -> io::Result<()> {
        let st = &self.0;
        let now = st.server_time_ms;
        for (i, e) in st.environments.iter().enumerate() {
            if i > 0 {
                writeln!(t.out)?;
            }
            match &e.current {
                Some(r) => writeln!(
                    t.out,
                    "{} {}: release {} deployed by {} at {} ({})",
                    st.app,
                    e.env,
                    r.version,
                    who(&r.created_by),
                    rfc3339_ms(r.created_at_ms),
                    ago(r.created_at_ms, now)
                )?,
                None => writeln!(t.out, "{} {}: no release has succeeded", st.app, e.env)?,
            }
            if let Some(l) = e
                .latest
                .as_ref()
                .filter(|l| e.current.as_ref().is_none_or(|c| c.id != l.id))
            {
                writeln!(
                    t.out,
                    "  newest rollout: {} {} by {} at {}: {}",
                    l.version,
                    l.status,
                    who(&l.created_by),
                    rfc3339_ms(l.created_at_ms),
                    crate::follow::summary_line(&l.message).0
                )?;
            }
            let mut rows = Vec::new();
            for h in &e.hosts {
                if !h.error.is_empty() {
                    rows.push(vec![
                        h.agent.clone(),
                        "-".into(),
                        "-".into(),
                        "-".into(),
                        h.error.clone(),
                        "-".into(),
                        "-".into(),
                        "-".into(),
                    ]);
                    continue;
                }
                if h.containers.is_empty() {
                    rows.push(vec![
                        h.agent.clone(),
                        "-".into(),
                        "-".into(),
                        "-".into(),
                        "no containers".into(),
                        "-".into(),
                        "-".into(),
                        "-".into(),
                    ]);
                }
                for c in &h.containers {
                    rows.push(vec![
                        h.agent.clone(),
                        c.service.clone(),
                        c.name.clone(),
                        c.release.clone(),
                        c.state.clone(),
                        if c.health.is_empty() {
                            "-".into()
                        } else {
                            c.health.clone()
                        },
                        if c.started_at_ms == 0 {
                            "-".into()
                        } else {
                            ago(c.started_at_ms, now)
                        },
                        if c.hash.is_empty() {
                            "-".into()
                        } else {
                            c.hash.chars().take(12).collect()
                        },
                    ]);
                }
            }
            t.table(
                &[
                    "HOST",
                    "SERVICE",
                    "CONTAINER",
                    "RELEASE",
                    "STATE",
                    "HEALTH",
                    "STARTED",
                    "HASH",
                ],
                rows,
            )?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::render::{json_of, text_of};

    fn status() -> AppStatus {
        let release = |id: &str, version: &str, status: &str| pb::Rollout {
            id: id.into(),
            version: version.into(),
            status: status.into(),
            kind: "deploy".into(),
            created_by: "spiffe://ferry.test/operator/ada".into(),
            created_at_ms: 1_700_000_000_000,
            ..Default::default()
        };
        AppStatus(pb::GetAppStatusResponse {
            app: "shop".into(),
            server_time_ms: 1_700_000_600_000,
            inspect_job_id: "j1".into(),
            environments: vec![pb::AppEnvironment {
                env: "staging".into(),
                current: Some(release("r1", "1.1", "succeeded")),
                latest: Some(release("r2", "1.2", "reverted")),
                hosts: vec![
                    pb::AppHost {
                        agent: "web-1".into(),
                        online: true,
                        containers: vec![pb::AppContainer {
                            name: "shop-staging-web-1.1".into(),
                            service: "web".into(),
                            release: "1.1".into(),
                            state: "running".into(),
                            health: "healthy".into(),
                            started_at_ms: 1_700_000_300_000,
                            ..Default::default()
                        }],
                        ..Default::default()
                    },
                    pb::AppHost {
                        agent: "web-2".into(),
                        online: false,
                        last_seen_ms: 1_700_000_000_000,
                        error: "offline, last seen 10m ago".into(),
                        ..Default::default()
                    },
                ],
            }],
        })
    }

    #[test]
    fn app_status_names_the_current_release_and_each_host() {
        let text = text_of(&status());
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(
            lines[0],
            "shop staging: release 1.1 deployed by ada at 2023-11-14T22:13:20Z (10m ago)"
        );
        assert!(
            lines[1].contains("newest rollout: 1.2 reverted by ada"),
            "{text}"
        );
        assert!(lines[2].starts_with("HOST"), "{text}");
        assert!(
            lines[3].contains("shop-staging-web-1.1")
                && lines[3].contains("healthy")
                && lines[3].contains("5m ago"),
            "{text}"
        );
        assert!(
            lines[4].starts_with("web-2") && lines[4].contains("offline, last seen"),
            "{text}"
        );
        let j = json_of(&status());
        assert_eq!(j["environments"][0]["current"]["version"], "1.1");
        assert_eq!(
            j["environments"][0]["current"]["deployed_by"],
            "spiffe://ferry.test/operator/ada"
        );
        assert_eq!(
            j["environments"][0]["hosts"][0]["containers"][0]["state"],
            "running"
        );
        assert!(j["environments"][0]["hosts"][0]["containers"][0]["hash"].is_null());
        assert_eq!(j["environments"][0]["hosts"][1]["online"], false);
    }
}
