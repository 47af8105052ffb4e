//! `ferry audit`: who did what, when, from the coordinator's audit log.

use std::io;

use ferry_common::time::{now_ms, parse_since, rfc3339_ms};
use ferry_proto::v1 as pb;
use serde::Serialize;

use crate::render::{Render, Text};
use crate::{CliError, Ctx};

#[derive(Debug, clap::Subcommand)]
pub enum Command {
    /// Show the audit log, newest first: deploys, secrets, jobs, tokens,
    /// operators, agents; who did each and when.
    Audit(AuditArgs),
}

#[derive(Debug, clap::Args)]
pub struct AuditArgs {
    /// Only entries about this app (not defaulted from ./ferry.toml: without it, everything).
    #[arg(long)]
    pub app: Option<String>,
    /// Only entries about this environment.
    #[arg(long)]
    pub env: Option<String>,
    /// Only what this operator did (a name, or a spiffe:// URI).
    #[arg(long, value_name = "NAME")]
    pub actor: Option<String>,
    /// Only entries since then: a duration back (1h, 7d) or an RFC 3339 time.
    #[arg(long, value_name = "WHEN")]
    pub since: Option<String>,
    /// At most this many entries, newest first (at most 10000).
    #[arg(long, default_value_t = 50)]
    pub limit: u32,
}

pub async fn run(command: Command, ctx: &Ctx) -> Result<View, CliError> {
    let Command::Audit(args) = command;
    let since_ms = match &args.since {
        None => 0,
        Some(text) => {
            parse_since(text, now_ms()).map_err(|e| CliError::usage(format!("--since: {e}")))?
        }
    };
    let mut s = ctx.connect().await?;
    let entries = s
        .client
        .list_audit(pb::ListAuditRequest {
            app: args.app.unwrap_or_default(),
            env: args.env.unwrap_or_default(),
            actor: args.actor.unwrap_or_default(),
            since_ms,
            limit: args.limit,
        })
        .await?
        .into_inner()
        .entries;
    Ok(View(entries))
}

/// The entries, newest first.
#[derive(Debug)]
pub struct View(pub Vec<pb::AuditEntry>);

impl Serialize for View {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let opt = |v: &String| Some(v.clone()).filter(|v| !v.is_empty());
        s.collect_seq(self.0.iter().map(|e| {
            serde_json::json!({
                "at": rfc3339_ms(e.at_ms),
                "actor": e.actor,
                "action": e.action,
                "target": e.target,
                "app": opt(&e.app),
                "env": opt(&e.env),
                "detail": e.detail,
            })
        }))
    }
}

impl Render for View {
    fn text(&self, t: &mut Text<'_>) -> io::Result<()> {
        if self.0.is_empty() {
            return writeln!(t.out, "no audit entries match");
        }
        let rows = self.0.iter().map(|e| {
            let place = match (e.app.as_str(), e.env.as_str()) {
                ("", _) => "-".to_string(),
                (app, "") => app.to_string(),
                (app, env) => format!("{app} {env}"),
            };
            vec![
                rfc3339_ms(e.at_ms),
                // Operators by name; agents and "system" as they are.
                e.actor
                    .rsplit_once("/operator/")
                    .map_or(e.actor.clone(), |(_, name)| name.to_string()),
                e.action.clone(),
                place,
                e.target.clone(),
                e.detail.clone(),
            ]
        });
        t.table(&["AT", "ACTOR", "ACTION", "APP", "TARGET", "DETAIL"], rows)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::render::{json_of, text_of};

    #[test]
    fn entries_show_operators_by_name_and_their_app() {
        let view = View(vec![
            pb::AuditEntry {
                at_ms: 1_700_000_000_000,
                actor: "spiffe://ferry.test/operator/ada".into(),
                action: "rollout.deploy".into(),
                target: "019af3c2-7d1e-7b4a-9c3e-5f1d2a3b4c5d".into(),
                detail: "version=1.2".into(),
                app: "shop".into(),
                env: "staging".into(),
            },
            pb::AuditEntry {
                at_ms: 1_699_999_999_000,
                actor: "system".into(),
                action: "token.create".into(),
                target: "web-1".into(),
                ..Default::default()
            },
        ]);
        let text = text_of(&view);
        let lines: Vec<&str> = text.lines().collect();
        assert!(lines[0].starts_with("AT"), "{text}");
        assert!(
            lines[1].contains(" ada ") && lines[1].contains("shop staging"),
            "{text}"
        );
        assert!(
            lines[2].contains("system") && lines[2].contains(" - "),
            "{text}"
        );
        let j = json_of(&view);
        assert_eq!(j[0]["actor"], "spiffe://ferry.test/operator/ada");
        assert_eq!(j[0]["app"], "shop");
        assert!(j[1]["app"].is_null());
        assert_eq!(text_of(&View(vec![])), "no audit entries match\n");
    }
}
