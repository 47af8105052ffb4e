//! `ferry operator add|ls|revoke`: people and CI systems using this CLI.

use std::io;
use std::path::PathBuf;

use ferry_common::credentials::Credentials;
use ferry_common::identity::Role;
use ferry_common::pki;
use ferry_common::time::rfc3339_ms;
use ferry_proto::v1 as pb;
use serde::Serialize;
use serde_json::json;

use crate::render::{Render, Text, opt_time};
use crate::status::role_name;
use crate::{CliError, Ctx};

#[derive(Debug, clap::Subcommand)]
pub enum Command {
    /// Manage operators (people and CI systems using this CLI).
    Operator {
        #[command(subcommand)]
        command: OperatorCommand,
    },
}

#[derive(Debug, clap::Subcommand)]
pub enum OperatorCommand {
    /// Add an operator and write its credentials file (mode 0600).
    Add(AddArgs),
    /// List operators.
    #[command(alias = "list")]
    Ls,
    /// Revoke an operator; its credentials are refused from then on.
    Revoke {
        /// The operator's name.
        name: String,
    },
}

#[derive(Debug, clap::Args)]
pub struct AddArgs {
    /// The operator's name, e.g. ada or ci-deployer.
    pub name: String,
    /// viewer, deployer or admin.
    #[arg(long)]
    pub role: String,
    /// Where to write the credentials (default: ./NAME.credentials).
    #[arg(long, value_name = "FILE")]
    pub out: Option<PathBuf>,
}

pub async fn run(command: Command, ctx: &Ctx) -> Result<View, CliError> {
    let Command::Operator { command } = command;
    match command {
        OperatorCommand::Add(args) => add(args, ctx).await.map(View::Added),
        OperatorCommand::Ls => {
            let mut s = ctx.connect().await?;
            let operators = s
                .client
                .list_operators(pb::ListOperatorsRequest {})
                .await?
                .into_inner()
                .operators;
            Ok(View::List(List(operators)))
        }
        OperatorCommand::Revoke { name } => {
            let mut s = ctx.connect().await?;
            let r = s
                .client
                .revoke_operator(pb::RevokeOperatorRequest { name })
                .await?
                .into_inner();
            Ok(View::Revoked(Revoked(r.operator.unwrap_or_default())))
        }
    }
}

async fn add(args: AddArgs, ctx: &Ctx) -> Result<Added, CliError> {
    let AddArgs { name, role, out } = args;
    let role: Role = role
        .parse()
        .map_err(|e: String| CliError::usage(format!("--role: {e}")))?;
    let out = out.unwrap_or_else(|| PathBuf::from(format!("{name}.credentials")));
    // Check before the coordinator creates anything, so a refusal here
    // leaves no operator without a credentials file.
    if out.exists() {
        return Err(CliError::usage(format!(
            "{}: already exists; refusing to overwrite it (choose another --out)",
            out.display()
        )));
    }
    let (key_pem, csr_pem) =
        pki::generate_key_and_csr(&name).map_err(|e| CliError::failed(e.to_string()))?;
    let mut s = ctx.connect().await?;
    let r = s
        .client
        .add_operator(pb::AddOperatorRequest {
            name: name.clone(),
            role: pb::Role::from(role) as i32,
            csr_pem,
        })
        .await?
        .into_inner();
    Credentials {
        coordinator: r.coordinator,
        name: name.clone(),
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
    Ok(Added {
        name,
        role,
        credentials_file: out,
    })
}

#[derive(Debug, Serialize)]
#[serde(untagged)]
pub enum View {
    Added(Added),
    List(List),
    Revoked(Revoked),
}

impl Render for View {
    fn text(&self, t: &mut Text<'_>) -> io::Result<()> {
        match self {
            View::Added(v) => v.text(t),
            View::List(v) => v.text(t),
            View::Revoked(v) => v.text(t),
        }
    }
}

/// `ferry operator add`: who was added and where the credentials are.
#[derive(Debug)]
pub struct Added {
    pub name: String,
    pub role: Role,
    pub credentials_file: PathBuf,
}

impl Serialize for Added {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        json!({
            "name": self.name,
            "role": self.role.as_str(),
            "credentials_file": self.credentials_file.display().to_string(),
        })
        .serialize(s)
    }
}

impl Render for Added {
    fn text(&self, t: &mut Text<'_>) -> io::Result<()> {
        let file = self.credentials_file.display();
        writeln!(
            t.out,
            "added operator {} (role {}); credentials written to {file}",
            self.name, self.role
        )?;
        writeln!(
            t.out,
            "hand that file over privately; they use it with `ferry --credentials {file}`"
        )
    }
}

/// `ferry operator ls`.
#[derive(Debug)]
pub struct List(pub Vec<pb::Operator>);

impl Serialize for List {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_seq(self.0.iter().map(|o| {
            json!({
                "name": o.name,
                "role": role_name(o.role),
                "created_at": opt_time(o.created_at_ms),
                "created_by": o.created_by,
                "revoked_at": opt_time(o.revoked_at_ms),
            })
        }))
    }
}

impl Render for List {
    fn text(&self, t: &mut Text<'_>) -> io::Result<()> {
        let rows = self.0.iter().map(|o| {
            vec![
                o.name.clone(),
                role_name(o.role).to_string(),
                rfc3339_ms(o.created_at_ms),
                if o.revoked_at_ms > 0 {
                    format!("revoked {}", rfc3339_ms(o.revoked_at_ms))
                } else {
                    "active".into()
                },
            ]
        });
        t.table(&["NAME", "ROLE", "CREATED", "STATUS"], rows)
    }
}

/// `ferry operator revoke`.
#[derive(Debug)]
pub struct Revoked(pub pb::Operator);

impl Serialize for Revoked {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let o = &self.0;
        json!({ "name": o.name, "role": role_name(o.role), "revoked_at": opt_time(o.revoked_at_ms) })
            .serialize(s)
    }
}

impl Render for Revoked {
    fn text(&self, t: &mut Text<'_>) -> io::Result<()> {
        writeln!(t.out, "revoked operator {}", self.0.name)
    }
}
