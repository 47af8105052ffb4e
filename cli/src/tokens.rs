//! `ferry token create`: a one-time join token and the command that
//! enrolls a host with it.

use std::collections::BTreeMap;
use std::io;

use ferry_common::labels::parse_labels;
use ferry_common::time::{parse_duration, rfc3339_ms};
use ferry_proto::v1 as pb;
use serde::Serialize;
use serde_json::{Value, json};

use crate::render::{Render, Text};
use crate::{CliError, Ctx};

#[derive(Debug, clap::Subcommand)]
pub enum Command {
    /// Manage join tokens.
    Token {
        #[command(subcommand)]
        command: TokenCommand,
    },
}

#[derive(Debug, clap::Subcommand)]
pub enum TokenCommand {
    /// Create a one-time join token and print the command that enrolls a host.
    Create(CreateArgs),
}

#[derive(Debug, clap::Args)]
pub struct CreateArgs {
    /// Name the enrolling agent will get (default: the agent chooses, usually its hostname).
    #[arg(long)]
    pub name: Option<String>,
    /// Labels the agent will carry, e.g. env=production,region=eu.
    #[arg(long, default_value = "")]
    pub labels: String,
    /// How long the token stays valid, e.g. 30m, 1h, 2d (default: the coordinator's, 1h).
    #[arg(long)]
    pub ttl: Option<String>,
}

pub async fn run(command: Command, ctx: &Ctx) -> Result<View, CliError> {
    let Command::Token {
        command: TokenCommand::Create(args),
    } = command;
    let labels =
        parse_labels(&args.labels).map_err(|e| CliError::usage(format!("--labels: {e}")))?;
    let ttl_seconds = match &args.ttl {
        Some(t) => {
            let ttl = parse_duration(t).map_err(|e| CliError::usage(format!("--ttl: {e}")))?;
            // Checked here, where 500ms would otherwise round to 0 seconds,
            // which the wire reads as "the default".
            ferry_common::limits::check_token_ttl(ttl)
                .map_err(|e| CliError::usage(format!("--ttl: {e}")))?;
            ttl.as_secs()
        }
        None => 0,
    };
    let mut s = ctx.connect().await?;
    let token = s
        .client
        .create_join_token(pb::CreateJoinTokenRequest {
            name: args.name.unwrap_or_default(),
            labels: labels.into_iter().collect(),
            ttl_seconds,
        })
        .await?
        .into_inner();
    Ok(View { token })
}

/// A created token.
#[derive(Debug)]
pub struct View {
    pub token: pb::CreateJoinTokenResponse,
}

impl View {
    /// What to run on the host.
    pub fn command(&self) -> String {
        let t = &self.token;
        let mut command = format!(
            "ferry-agent enroll --coordinator {} --token {} --ca-pin {} --state-dir /var/lib/ferry-agent",
            t.coordinator, t.token, t.ca_pin
        );
        if !t.name.is_empty() {
            command.push_str(&format!(" --name {}", t.name));
        }
        command
    }
}

impl Serialize for View {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let t = &self.token;
        let labels: BTreeMap<_, _> = t.labels.iter().collect();
        json!({
            "token": t.token,
            "ca_pin": t.ca_pin,
            "coordinator": t.coordinator,
            "expires_at": rfc3339_ms(t.expires_at_ms),
            "name": if t.name.is_empty() { Value::Null } else { Value::String(t.name.clone()) },
            "labels": labels,
            "command": self.command(),
        })
        .serialize(s)
    }
}

impl Render for View {
    fn text(&self, t: &mut Text<'_>) -> io::Result<()> {
        let token = &self.token;
        writeln!(
            t.out,
            "join token (single use, valid until {}):",
            rfc3339_ms(token.expires_at_ms)
        )?;
        writeln!(t.out, "  {}", token.token)?;
        writeln!(t.out, "CA pin: {}", token.ca_pin)?;
        writeln!(t.out)?;
        writeln!(t.out, "on the host, run:")?;
        writeln!(t.out, "  {}", self.command())
    }
}
