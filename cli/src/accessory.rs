//! `ferry accessory ls --app A --env ENV [NAME]`: an environment's
//! accessories (`[accessories.NAME]`) as its hosts run them: host,
//! container, image, state, settings hash. The hosts are asked what runs
//! (the `inspect` job of `ferry status --app`).

use std::io;

use ferry_proto::v1 as pb;
use serde::Serialize;

use crate::render::{Render, Text};
use crate::{CliError, Ctx};

#[derive(Debug, clap::Subcommand)]
pub enum Command {
    /// An environment's accessories (databases, caches, brokers started by
    /// `ferry deploy` beside the services).
    #[command(subcommand)]
    Accessory(Action),
}

#[derive(Debug, clap::Subcommand)]
pub enum Action {
    /// List the accessories each host runs: name, host, container, image,
    /// state, settings hash.
    Ls(LsArgs),
    /// Restart the accessories' containers in place (same containers, same
    /// volumes), host batch by host batch, each gated on its health check.
    /// Exit 0 when every one is back and healthy, 1 otherwise.
    Restart(RestartArgs),
    /// Roll the current release out again with the app file's settings of
    /// these accessories (default: every one): a changed accessory is
    /// recreated on its volumes, health-gated; services that run are left
    /// alone. Exit 0 when it is out, 1 otherwise.
    Upgrade(UpgradeArgs),
}

#[derive(Debug, clap::Args)]
pub struct UpgradeArgs {
    /// The app file.
    #[arg(short = 'f', long = "file", default_value = "ferry.toml")]
    pub file: std::path::PathBuf,
    /// The environment.
    #[arg(long)]
    pub env: String,
    /// Only these accessories (default: every one).
    #[arg(value_name = "NAME")]
    pub names: Vec<String>,
    #[command(flatten)]
    pub flags: crate::deploy::Flags,
}

#[derive(Debug, clap::Args)]
pub struct RestartArgs {
    /// The app (as `app` in ferry.toml).
    #[arg(long)]
    pub app: String,
    /// The environment.
    #[arg(long)]
    pub env: String,
    /// Only these accessories (default: every one).
    #[arg(value_name = "NAME")]
    pub names: Vec<String>,
    #[command(flatten)]
    pub flags: crate::deploy::Flags,
}

/// What `ferry accessory` shows.
#[derive(Debug, Serialize)]
#[serde(untagged)]
pub enum View {
    Ls(Accessories),
    /// A restart or upgrade rollout.
    Rollout(Box<crate::deploy::View>),
}

impl Render for View {
    fn text(&self, t: &mut Text<'_>) -> io::Result<()> {
        match self {
            View::Ls(v) => v.text(t),
            View::Rollout(v) => v.text(t),
        }
    }

    fn exit_code(&self) -> i32 {
        match self {
            View::Ls(v) => v.exit_code(),
            View::Rollout(v) => v.exit_code(),
        }
    }
}

#[derive(Debug, clap::Args)]
pub struct LsArgs {
    /// The app (as `app` in ferry.toml).
    #[arg(long)]
    pub app: String,
    /// The environment.
    #[arg(long)]
    pub env: String,
    /// Only this accessory.
    pub name: Option<String>,
}

pub async fn run(command: Command, ctx: &Ctx) -> Result<View, CliError> {
    let Command::Accessory(action) = command;
    let args = match action {
        Action::Ls(args) => args,
        Action::Restart(a) => {
            return crate::deploy::restart_accessories(ctx, a.app, a.env, a.names, &a.flags)
                .await
                .map(|v| View::Rollout(Box::new(v)));
        }
        Action::Upgrade(a) => {
            return crate::deploy::upgrade_accessories(ctx, &a.file, a.env, a.names, &a.flags)
                .await
                .map(|v| View::Rollout(Box::new(v)));
        }
    };
    let mut s = ctx.connect().await?;
    let status = s
        .client
        .get_app_status(pb::GetAppStatusRequest {
            app: args.app.clone(),
            env: args.env.clone(),
        })
        .await?
        .into_inner();
    Ok(View::Ls(Accessories::of(&status, args.name.as_deref())))
}

/// One accessory container on one host.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Row {
    pub name: String,
    pub host: String,
    pub container: String,
    pub image: String,
    pub state: String,
    pub hash: String,
}

/// `ferry accessory ls`: the rows, and the hosts that could not say.
#[derive(Debug, Serialize)]
pub struct Accessories {
    pub accessories: Vec<Row>,
    /// `host: why` for each host whose containers could not be listed.
    pub unreachable: Vec<String>,
}

impl Accessories {
    fn of(status: &pb::GetAppStatusResponse, only: Option<&str>) -> Accessories {
        let mut accessories = Vec::new();
        let mut unreachable = Vec::new();
        for e in &status.environments {
            for h in &e.hosts {
                if !h.error.is_empty() {
                    unreachable.push(format!("{}: {}", h.agent, h.error));
                }
                for c in h
                    .containers
                    .iter()
                    .filter(|c| !c.accessory.is_empty())
                    .filter(|c| only.is_none_or(|n| n == c.accessory))
                {
                    accessories.push(Row {
                        name: c.accessory.clone(),
                        host: h.agent.clone(),
                        container: c.name.clone(),
                        image: c.image.clone(),
                        state: c.state.clone(),
                        hash: c.hash.clone(),
                    });
                }
            }
        }
        accessories.sort_by(|a, b| (&a.name, &a.host).cmp(&(&b.name, &b.host)));
        Accessories {
            accessories,
            unreachable,
        }
    }
}

impl Render for Accessories {
    fn text(&self, t: &mut Text<'_>) -> io::Result<()> {
        let rows: Vec<Vec<String>> = self
            .accessories
            .iter()
            .map(|r| {
                vec![
                    r.name.clone(),
                    r.host.clone(),
                    r.container.clone(),
                    r.image.clone(),
                    r.state.clone(),
                    r.hash.chars().take(12).collect(),
                ]
            })
            .collect();
        t.table(
            &["NAME", "HOST", "CONTAINER", "IMAGE", "STATE", "HASH"],
            rows,
        )?;
        for u in &self.unreachable {
            writeln!(t.out, "not listed: {u}")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::render::{json_of, text_of};

    #[test]
    fn accessory_commands_parse() {
        use clap::Parser;
        let parse = |args: &[&str]| crate::Cli::try_parse_from(args).map(|c| c.command);
        match parse(&[
            "ferry",
            "accessory",
            "ls",
            "--app",
            "shop",
            "--env",
            "prod",
            "db",
        ]) {
            Ok(crate::Command::Accessory(Command::Accessory(Action::Ls(a)))) => {
                assert_eq!((a.app.as_str(), a.name.as_deref()), ("shop", Some("db")))
            }
            other => panic!("{other:?}"),
        }
        match parse(&[
            "ferry",
            "accessory",
            "restart",
            "--app",
            "shop",
            "--env",
            "prod",
            "db",
            "redis",
            "--yes",
        ]) {
            Ok(crate::Command::Accessory(Command::Accessory(Action::Restart(a)))) => {
                assert_eq!(a.names, ["db", "redis"]);
                assert!(a.flags.yes);
            }
            other => panic!("{other:?}"),
        }
        assert!(
            parse(&["ferry", "accessory", "ls", "--app", "shop"]).is_err(),
            "--env is required"
        );
        match parse(&["ferry", "accessory", "upgrade", "--env", "prod", "db"]) {
            Ok(crate::Command::Accessory(Command::Accessory(Action::Upgrade(a)))) => {
                assert_eq!(a.file, std::path::PathBuf::from("ferry.toml"));
                assert_eq!(a.names, ["db"]);
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn ls_shows_each_accessory_per_host_and_hosts_that_could_not_say() {
        let c = |name: &str, accessory: &str| pb::AppContainer {
            name: name.into(),
            image: "postgres:16".into(),
            state: "running".into(),
            hash: "0123456789abcdef".into(),
            accessory: accessory.into(),
            ..Default::default()
        };
        let status = pb::GetAppStatusResponse {
            app: "shop".into(),
            environments: vec![pb::AppEnvironment {
                env: "production".into(),
                hosts: vec![
                    pb::AppHost {
                        agent: "db-1".into(),
                        containers: vec![
                            c("shop-production-db-aaaa", "db"),
                            c("shop-production-web-1.0-bbbb", ""),
                            c("shop-production-redis-cccc", "redis"),
                        ],
                        ..Default::default()
                    },
                    pb::AppHost {
                        agent: "db-2".into(),
                        error: "offline".into(),
                        ..Default::default()
                    },
                ],
                ..Default::default()
            }],
            ..Default::default()
        };
        let all = Accessories::of(&status, None);
        let names: Vec<&str> = all.accessories.iter().map(|r| r.name.as_str()).collect();
        assert_eq!(names, ["db", "redis"], "services are not accessories");
        let text = text_of(&all);
        assert!(text.contains("shop-production-db-aaaa"), "{text}");
        assert!(
            text.contains("0123456789ab") && !text.contains("0123456789abc"),
            "{text}"
        );
        assert!(text.contains("not listed: db-2: offline"), "{text}");
        let one = Accessories::of(&status, Some("redis"));
        let json = json_of(&one);
        assert_eq!(json["accessories"][0]["host"], "db-1");
        assert_eq!(json["accessories"][0]["hash"], "0123456789abcdef");
        assert_eq!(json["accessories"].as_array().unwrap().len(), 1);
    }
}
