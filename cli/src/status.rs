//! `ferry status`: the coordinator, its store, agent counts and who you are.

use std::io::{self, Write};

use ferry_common::identity::Role;
use ferry_common::time::{ago, rfc3339_ms};
use ferry_proto::v1 as pb;
use serde::Serialize;

use crate::render::{Render, Text, opt_time};
use crate::{CliError, Ctx};

#[derive(Debug, clap::Subcommand)]
pub enum Command {
    /// Show the coordinator, its store, agent counts and who you are.
    Status,
}

pub async fn run(_: Command, ctx: &Ctx) -> Result<View, CliError> {
    let mut s = ctx.connect().await?;
    let st = s
        .client
        .get_status(pb::GetStatusRequest {})
        .await?
        .into_inner();
    Ok(View {
        coordinator: s.credentials.coordinator,
        status: st,
    })
}

/// The coordinator as the credentials name it, and its status.
#[derive(Debug)]
pub struct View {
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

impl Serialize for View {
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
        })
        .serialize(s)
    }
}

impl Render for View {
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
        )
    }
}
