//! `ferry agents`, `ferry agent revoke`.

use std::collections::BTreeMap;
use std::io;

use ferry_common::health::{HostHealth, human_bytes};
use ferry_common::labels::format_labels;
use ferry_common::time::{ago, now_ms};
use ferry_proto::v1 as pb;
use serde::Serialize;
use serde_json::{Value, json};

use crate::render::{Render, Text, opt_time};
use crate::{CliError, Ctx};

#[derive(Debug, clap::Subcommand)]
pub enum Command {
    /// List enrolled agents with their state, version, capabilities and host health.
    Agents,
    /// Manage one agent.
    Agent {
        #[command(subcommand)]
        command: AgentCommand,
    },
}

#[derive(Debug, clap::Subcommand)]
pub enum AgentCommand {
    /// Revoke an agent: its session is cut now and it is refused from then on.
    Revoke {
        /// Agent name or id.
        agent: String,
    },
}

pub async fn run(command: Command, ctx: &Ctx) -> Result<View, CliError> {
    let mut s = ctx.connect().await?;
    match command {
        Command::Agents => {
            let agents = s
                .client
                .list_agents(pb::ListAgentsRequest {})
                .await?
                .into_inner()
                .agents;
            Ok(View::List(List {
                agents,
                now_ms: now_ms(),
            }))
        }
        Command::Agent {
            command: AgentCommand::Revoke { agent },
        } => {
            let r = s
                .client
                .revoke_agent(pb::RevokeAgentRequest { agent })
                .await?
                .into_inner();
            Ok(View::Revoked(Box::new(Revoked {
                agent: r.agent.unwrap_or_default(),
                was_connected: r.was_connected,
            })))
        }
    }
}

#[derive(Debug, Serialize)]
#[serde(untagged)]
pub enum View {
    List(List),
    Revoked(Box<Revoked>),
}

impl Render for View {
    fn text(&self, t: &mut Text<'_>) -> io::Result<()> {
        match self {
            View::List(v) => v.text(t),
            View::Revoked(v) => v.text(t),
        }
    }
}

/// `ferry agents`: every agent (JSON: an array of [`agent_json`]).
#[derive(Debug)]
pub struct List {
    pub agents: Vec<pb::Agent>,
    /// When the list was read, for "last seen … ago".
    pub now_ms: i64,
}

impl Serialize for List {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_seq(self.agents.iter().map(agent_json))
    }
}

impl Render for List {
    fn text(&self, t: &mut Text<'_>) -> io::Result<()> {
        if self.agents.is_empty() {
            return writeln!(
                t.out,
                "no agents enrolled; create a join token with `ferry token create`"
            );
        }
        let rows = self.agents.iter().map(|a| {
            let labels: BTreeMap<String, String> = a.labels.clone().into_iter().collect();
            let (docker, disk) = health_summary(a, self.now_ms);
            vec![
                a.name.clone(),
                state_name(a.state).to_string(),
                a.version.clone(),
                or_dash(a.capabilities.join(",")),
                ago(a.last_seen_ms, self.now_ms),
                or_dash(format_labels(&labels)),
                docker,
                disk,
            ]
        });
        t.table(
            &[
                "NAME",
                "STATE",
                "VERSION",
                "CAPABILITIES",
                "LAST SEEN",
                "LABELS",
                "DOCKER",
                "FREE DISK",
            ],
            rows,
        )
    }
}

/// `ferry agent revoke`.
#[derive(Debug)]
pub struct Revoked {
    pub agent: pb::Agent,
    pub was_connected: bool,
}

impl Serialize for Revoked {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        json!({ "agent": agent_json(&self.agent), "was_connected": self.was_connected })
            .serialize(s)
    }
}

impl Render for Revoked {
    fn text(&self, t: &mut Text<'_>) -> io::Result<()> {
        writeln!(
            t.out,
            "revoked agent {} ({}){}",
            self.agent.name,
            self.agent.id,
            if self.was_connected {
                "; its live session was cut"
            } else {
                ""
            }
        )
    }
}

fn or_dash(s: String) -> String {
    if s.is_empty() { "-".into() } else { s }
}

/// An agent's state as scripts see it.
pub fn state_name(s: i32) -> &'static str {
    match pb::AgentState::try_from(s) {
        Ok(pb::AgentState::Online) => "online",
        Ok(pb::AgentState::Offline) => "offline",
        Ok(pb::AgentState::Revoked) => "revoked",
        _ => "unknown",
    }
}

/// An agent as JSON: `name`, `id`, `state`, `labels`, `last_seen`,
/// `version`, `capabilities`, `hostname`, `enrolled_at`, `revoked_at`, `health`.
pub fn agent_json(a: &pb::Agent) -> Value {
    let labels: BTreeMap<_, _> = a.labels.iter().collect();
    json!({
        "name": a.name,
        "id": a.id,
        "state": state_name(a.state),
        "labels": labels,
        "last_seen": opt_time(a.last_seen_ms),
        "version": a.version,
        "capabilities": a.capabilities,
        "hostname": a.hostname,
        "enrolled_at": opt_time(a.enrolled_at_ms),
        "revoked_at": opt_time(a.revoked_at_ms),
        "health": a.health.clone().map(|h| serde_json::to_value(HostHealth::from(h)).unwrap_or(Value::Null)),
    })
}

/// Docker and free disk, for the table. An agent that is not online
/// reports nothing new: what it said last is shown as stale, with its age,
/// never as "ok".
fn health_summary(a: &pb::Agent, now_ms: i64) -> (String, String) {
    let Some(h) = a.health.as_ref() else {
        return ("-".into(), "-".into());
    };
    let docker = if h.docker_reachable {
        format!("ok {}", h.docker_version)
    } else {
        "unreachable".into()
    };
    let docker = if a.state == pb::AgentState::Online as i32 {
        docker
    } else {
        let observed = if h.observed_at_ms > 0 {
            h.observed_at_ms
        } else {
            a.last_seen_ms
        };
        format!(
            "stale ({}, {})",
            ago(observed, now_ms).replace(" ago", " old"),
            docker
        )
    };
    let disk = h
        .disks
        .iter()
        .map(|d| format!("{} {}", d.mount, human_bytes(d.free_bytes)))
        .collect::<Vec<_>>()
        .join(", ");
    (docker, or_dash(disk))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::render::{json_of, text_of};

    fn agent() -> pb::Agent {
        pb::Agent {
            id: "a1".into(),
            name: "web-1".into(),
            state: pb::AgentState::Online as i32,
            labels: [("env".to_string(), "staging".to_string())].into(),
            last_seen_ms: 1_700_000_000_000,
            version: "0.1.0".into(),
            capabilities: vec!["docker".into(), "nginx".into()],
            ..Default::default()
        }
    }

    #[test]
    fn an_offline_agents_health_is_stale_with_its_age() {
        let health = pb::HostHealth {
            docker_reachable: true,
            docker_version: "27.1".into(),
            observed_at_ms: 1_700_000_000_000,
            ..Default::default()
        };
        let mut a = agent();
        a.health = Some(health);
        assert_eq!(health_summary(&a, 1_700_000_300_000).0, "ok 27.1");
        a.state = pb::AgentState::Offline as i32;
        assert_eq!(
            health_summary(&a, 1_700_000_300_000).0,
            "stale (5m old, ok 27.1)"
        );
    }

    #[test]
    fn agents_show_their_capabilities() {
        let list = View::List(List {
            agents: vec![agent(), pb::Agent::default()],
            now_ms: 1_700_000_005_000,
        });
        let text = text_of(&list);
        let lines: Vec<&str> = text.lines().collect();
        assert!(
            lines[0].starts_with("NAME   STATE    VERSION  CAPABILITIES  LAST SEEN"),
            "{text}"
        );
        assert!(lines[1].contains("0.1.0    docker,nginx"), "{text}");
        assert!(lines[1].contains("env=staging"), "{text}");
        let json = json_of(&list);
        assert_eq!(json[0]["capabilities"], json!(["docker", "nginx"]));
        assert_eq!(json[1]["capabilities"], json!([]));
        for field in [
            "name",
            "id",
            "state",
            "labels",
            "last_seen",
            "version",
            "hostname",
            "enrolled_at",
            "revoked_at",
            "health",
        ] {
            assert!(json[0].get(field).is_some(), "{field}: {json}");
        }
        assert_eq!(json[0]["state"], "online");
        assert_eq!(json[0]["last_seen"], "2023-11-14T22:13:20Z");
        assert!(json[1]["last_seen"].is_null());
    }

    /// The exact document scripts parse: field names, their order (sorted,
    /// as always) and how absent times and health show.
    #[test]
    fn agents_json_is_the_documented_contract() {
        let list = List {
            agents: vec![agent()],
            now_ms: 0,
        };
        let (mut out, mut err) = (Vec::new(), Vec::new());
        crate::render::Printer::new(crate::Output::Json, false)
            .write(&list, &mut out, &mut err)
            .unwrap();
        assert_eq!(
            String::from_utf8(out).unwrap(),
            r#"[
  {
    "capabilities": [
      "docker",
      "nginx"
    ],
    "enrolled_at": null,
    "health": null,
    "hostname": "",
    "id": "a1",
    "labels": {
      "env": "staging"
    },
    "last_seen": "2023-11-14T22:13:20Z",
    "name": "web-1",
    "revoked_at": null,
    "state": "online",
    "version": "0.1.0"
  }
]
"#
        );
    }

    #[test]
    fn revocation() {
        let v = View::Revoked(Box::new(Revoked {
            agent: agent(),
            was_connected: true,
        }));
        assert_eq!(
            text_of(&v),
            "revoked agent web-1 (a1); its live session was cut\n"
        );
        let json = json_of(&v);
        assert_eq!(json["agent"]["name"], "web-1");
        assert_eq!(json["was_connected"], true);
    }
}
