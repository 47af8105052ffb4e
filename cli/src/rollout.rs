//! `ferry releases`, `ferry rollout ID`, `ferry rollout cancel ID`, and
//! what every rollout command shows: the plan, a rollout followed step by
//! step, how it ended.

use ferry_common::status::{RolloutKind, RolloutStatus};
use std::io::{self, Write};
use std::time::Duration;

use ferry_common::exit;
use ferry_common::time::{ago, now_ms, rfc3339_ms};
use ferry_proto::v1 as pb;
use serde::Serialize;
use serde_json::{Value, json};

use crate::context::Session;
use crate::follow::follow;
use crate::render::{Note, Render, Text};
use crate::{CliError, Ctx};

/// How often the rollout is looked at between its steps: a cheap read, and
/// the next step's job or the end usually follows within milliseconds, so
/// the first look comes soon and the pause doubles from there.
const POLL_FIRST: Duration = Duration::from_millis(2);
const POLL_MAX: Duration = Duration::from_millis(200);

#[derive(Debug, clap::Subcommand)]
pub enum Command {
    /// Release history of an app: version, image, who, when, outcome.
    Releases(ReleasesArgs),
    /// Follow a rollout by id until it ends (exit 0 succeeded, 1 otherwise);
    /// `ferry rollout cancel ID` stops one.
    Rollout(RolloutArgs),
}

#[derive(Debug, clap::Args)]
#[command(args_conflicts_with_subcommands = true, subcommand_negates_reqs = true)]
pub struct RolloutArgs {
    /// Rollout id: the whole id, or at least 8 characters from either end (as `ferry releases` shows it).
    #[arg(required = true)]
    pub id: Option<String>,
    #[command(subcommand)]
    pub action: Option<Action>,
}

#[derive(Debug, clap::Subcommand)]
pub enum Action {
    /// Cancel a running rollout: its running step's job is cancelled, no
    /// step starts after it, and hosts it (possibly) changed go back to the
    /// previous release. Waits for the rollout to end; exit 0 when it ended
    /// cancelled with every host back, 1 otherwise.
    Cancel {
        /// Rollout id: the whole id, or at least 8 characters from either end (as `ferry releases` shows it).
        id: String,
    },
}

#[derive(Debug, clap::Args)]
pub struct ReleasesArgs {
    /// App name, e.g. shop (default: the app of ./ferry.toml).
    #[arg(long)]
    pub app: Option<String>,
    /// Only this environment (default: every one).
    #[arg(long)]
    pub env: Option<String>,
    /// At most this many releases, newest first.
    #[arg(long, default_value_t = 20)]
    pub limit: u32,
}

pub async fn run(command: Command, ctx: &Ctx) -> Result<View, CliError> {
    let mut s = ctx.connect().await?;
    match command {
        Command::Releases(args) => {
            let app = ctx.app(args.app)?;
            let reply = s
                .client
                .list_releases(pb::ListReleasesRequest {
                    app: app.clone(),
                    env: args.env.unwrap_or_default(),
                    limit: args.limit,
                })
                .await?
                .into_inner();
            Ok(View::Releases(Releases {
                app,
                releases: reply.releases,
                current_ids: reply.current_ids,
            }))
        }
        Command::Rollout(RolloutArgs {
            action: Some(Action::Cancel { id }),
            ..
        }) => {
            s.client
                .cancel_rollout(pb::CancelRolloutRequest {
                    rollout_id: id.clone(),
                })
                .await?;
            ctx.print(&Note(format!(
                "cancel of rollout {id} requested; waiting for it to stop and revert"
            )))?;
            Ok(View::Cancelled(Box::new(Cancelled(
                wait_rollout(&mut s, &id).await?,
            ))))
        }
        Command::Rollout(RolloutArgs { id, .. }) => {
            let id = id.unwrap_or_default();
            Ok(View::Finished(Box::new(Finished(
                follow_rollout(ctx, &mut s, &id).await?,
            ))))
        }
    }
}

/// Waits for a rollout to end, quietly.
async fn wait_rollout(s: &mut Session, id: &str) -> Result<pb::Rollout, CliError> {
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
        if r.status != RolloutStatus::Running.as_str() {
            return Ok(r);
        }
        tokio::time::sleep(pause).await;
        pause = (pause * 2).min(POLL_MAX);
    }
}

/// What a rollout of this kind does, as a verb ("roll back").
pub fn verb(kind: &str) -> &'static str {
    match kind.parse::<RolloutKind>() {
        Ok(RolloutKind::Rollback) => "roll back",
        Ok(RolloutKind::Redeploy) => "redeploy",
        Ok(RolloutKind::Restart) => "restart",
        Ok(RolloutKind::Deploy) | Err(_) => "deploy",
    }
}

#[derive(Debug, Serialize)]
#[serde(untagged)]
pub enum View {
    Releases(Releases),
    Finished(Box<Finished>),
    Cancelled(Box<Cancelled>),
}

impl Render for View {
    fn text(&self, t: &mut Text<'_>) -> io::Result<()> {
        match self {
            View::Releases(v) => v.text(t),
            View::Finished(v) => v.text(t),
            View::Cancelled(v) => v.text(t),
        }
    }
    fn exit_code(&self) -> i32 {
        match self {
            View::Releases(v) => v.exit_code(),
            View::Finished(v) => v.exit_code(),
            View::Cancelled(v) => v.exit_code(),
        }
    }
}

/// Follows every step of a rollout until it ends: each step's job as
/// `ferry watch` shows it (nothing with `--output json`).
pub async fn follow_rollout(ctx: &Ctx, s: &mut Session, id: &str) -> Result<pb::Rollout, CliError> {
    let mut followed = 0usize;
    let mut pause = POLL_FIRST;
    // The whole id once the coordinator has resolved what was typed.
    let mut id = id.to_string();
    loop {
        let r = s
            .client
            .get_rollout(pb::GetRolloutRequest {
                rollout_id: id.clone(),
            })
            .await?
            .into_inner()
            .rollout
            .unwrap_or_default();
        id.clone_from(&r.id);
        if followed < r.steps.len() {
            let step = &r.steps[followed];
            ctx.print(&Note(format!("==> {}", step.name)))?;
            follow(ctx, &step.job_id, ctx.json()).await?;
            followed += 1;
            pause = POLL_FIRST;
            continue;
        }
        if r.status != RolloutStatus::Running.as_str() {
            return Ok(r);
        }
        tokio::time::sleep(pause).await;
        pause = (pause * 2).min(POLL_MAX);
    }
}

/// 0 when the release is out, 1 otherwise (failed, reverted, revert failed).
pub fn exit_code(status: &str) -> i32 {
    match status.parse::<RolloutStatus>() {
        Ok(s) if s.is_success() => exit::OK,
        _ => exit::FAILED,
    }
}

/// A rollout as JSON, the shape every rollout command prints.
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
            "replicas": s.replicas.max(1), "hosts": s.hosts,
        })).collect::<Vec<_>>(),
        "accessories": r.accessories.iter().map(|s| json!({
            "name": s.name, "image": s.image, "hosts": s.hosts,
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
        "only_services": r.only_services,
        "cancel_requested_by": Some(&r.cancel_requested_by).filter(|v| !v.is_empty()),
    })
}

/// [`rollout_json`] of a listed release, with `"current"`: whether it is
/// the release that runs now.
pub fn release_json(r: &pb::Rollout, current: bool) -> Value {
    let mut v = rollout_json(r);
    v["current"] = json!(current);
    v
}

/// Serializes as [`rollout_json`].
macro_rules! rollout_view_json {
    ($t:ty) => {
        impl Serialize for $t {
            fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                rollout_json(&self.0).serialize(s)
            }
        }
    };
}
rollout_view_json!(Plan);
rollout_view_json!(Detached);
rollout_view_json!(Finished);
rollout_view_json!(Cancelled);

/// A rollout's plan: hosts in batches, services, smoke checks, what a
/// failure returns to.
#[derive(Debug)]
pub struct Plan(pub pb::Rollout);

impl Render for Plan {
    fn text(&self, t: &mut Text<'_>) -> io::Result<()> {
        let r = &self.0;
        let out = &mut t.out;
        let hosts: usize = r.batches.iter().map(|b| b.hosts.len()).sum();
        let verb = verb(&r.kind);
        writeln!(
            out,
            "Plan: {verb} {} {} to {} — {hosts} host(s) in {} batch(es) of up to {}",
            r.app,
            r.version,
            r.env,
            r.batches.len(),
            r.max_parallel
        )?;
        for s in r
            .services
            .iter()
            .filter(|s| r.only_services.is_empty() || r.only_services.contains(&s.name))
        {
            let mut line = format!("  service {:<12} {}  ({})", s.name, s.image, s.strategy);
            if s.replicas > 1 {
                line.push_str(&format!(" ×{}", s.replicas));
            }
            if !s.hosts.is_empty() {
                line.push_str(&format!(" on {}", s.hosts.join(", ")));
            }
            writeln!(out, "{line}")?;
        }
        // A restart names what it restarts in `only_services`: services,
        // or (a restart of accessories) accessories.
        let restart_of_accessories = r.kind == "restart"
            && !r.only_services.is_empty()
            && r.only_services
                .iter()
                .all(|n| r.accessories.iter().any(|a| &a.name == n));
        if r.kind != "restart" || restart_of_accessories {
            for a in r
                .accessories
                .iter()
                .filter(|a| !restart_of_accessories || r.only_services.contains(&a.name))
            {
                let mut line = format!("  accessory {:<10} {}", a.name, a.image);
                if !a.hosts.is_empty() {
                    line.push_str(&format!(" on {}", a.hosts.join(", ")));
                }
                writeln!(out, "{line}")?;
            }
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
                            ago(h.last_seen_ms, now)
                        )
                    }
                })
                .collect();
            writeln!(out, "  batch {}: {}", i + 1, hosts.join(", "))?;
        }
        if r.smoke_checks > 0 {
            writeln!(out, "  smoke: {} check(s) after each batch", r.smoke_checks)?;
        }
        if r.kind == RolloutKind::Restart.as_str() {
            writeln!(
                out,
                "  a failure stops the restart; it is not reverted (no release changes)"
            )
        } else if r.previous_version.is_empty() {
            writeln!(
                out,
                "  previous release: none (a failure cannot be reverted)"
            )
        } else {
            writeln!(
                out,
                "  previous release: {} (restored on failure)",
                r.previous_version
            )
        }
    }
}

/// A rollout started with `--detach`: its id.
#[derive(Debug)]
pub struct Detached(pub pb::Rollout);

impl Render for Detached {
    fn text(&self, t: &mut Text<'_>) -> io::Result<()> {
        writeln!(t.out, "{}", self.0.id)
    }
}

/// A rollout that ended: its status and message; exit 0 only if the
/// release is out.
#[derive(Debug)]
pub struct Finished(pub pb::Rollout);

impl Render for Finished {
    fn text(&self, t: &mut Text<'_>) -> io::Result<()> {
        // The summary on a line of its own; the details (a failed
        // container's last log lines) were shown above as they came.
        let (summary, more) = crate::follow::summary_line(&self.0.message);
        writeln!(t.out)?;
        writeln!(
            t.out,
            "{}: {summary}{}",
            self.0.status,
            if more { " (details above)" } else { "" }
        )
    }
    fn exit_code(&self) -> i32 {
        exit_code(&self.0.status)
    }
}

/// `ferry rollout cancel`: the rollout as it ended; exit 0 when it ended
/// cancelled (every host possibly changed is back), 1 otherwise (it ended
/// otherwise first, or its revert failed: hosts need a look).
#[derive(Debug)]
pub struct Cancelled(pub pb::Rollout);

impl Render for Cancelled {
    fn text(&self, t: &mut Text<'_>) -> io::Result<()> {
        writeln!(t.out, "{}: {}", self.0.status, self.0.message)
    }
    fn exit_code(&self) -> i32 {
        if self.0.status == RolloutStatus::Cancelled.as_str() {
            exit::OK
        } else {
            exit::FAILED
        }
    }
}

/// `ferry releases`.
#[derive(Debug)]
pub struct Releases {
    pub app: String,
    pub releases: Vec<pb::Rollout>,
    /// The release running now in each environment (`ListReleases`).
    pub current_ids: Vec<String>,
}

impl Releases {
    fn is_current(&self, r: &pb::Rollout) -> bool {
        self.current_ids.contains(&r.id)
    }
}

impl Serialize for Releases {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_seq(
            self.releases
                .iter()
                .map(|r| release_json(r, self.is_current(r))),
        )
    }
}

impl Render for Releases {
    fn text(&self, t: &mut Text<'_>) -> io::Result<()> {
        if self.releases.is_empty() {
            return writeln!(t.out, "no releases of {}", self.app);
        }
        let rows = self.releases.iter().map(|r| {
            // Every service's image: one service's would hide what the
            // others ran.
            let images = r
                .services
                .iter()
                .map(|s| {
                    if r.services.len() == 1 {
                        s.image.clone()
                    } else {
                        format!("{}={}", s.name, s.image)
                    }
                })
                .collect::<Vec<_>>()
                .join(" ");
            let by = r.created_by.rsplit('/').next().unwrap_or_default();
            vec![
                if self.is_current(r) { "*" } else { "" }.to_string(),
                r.env.clone(),
                r.version.clone(),
                r.kind.clone(),
                r.status.clone(),
                images,
                by.to_string(),
                rfc3339_ms(r.created_at_ms),
                crate::render::short_id(&r.id),
            ]
        });
        t.table(
            &[
                "CURRENT", "ENV", "VERSION", "KIND", "OUTCOME", "IMAGE", "BY", "STARTED", "ID",
            ],
            rows,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::render::{json_of, text_of};

    #[test]
    fn only_a_release_that_went_out_exits_zero() {
        assert_eq!(exit_code("succeeded"), 0);
        for s in ["failed", "reverted", "revert_failed", "running"] {
            assert_eq!(exit_code(s), 1, "{s}");
        }
        let r = |status: &str| pb::Rollout {
            status: status.into(),
            ..Default::default()
        };
        assert_eq!(Finished(r("reverted")).exit_code(), 1);
        assert_eq!(Finished(r("succeeded")).exit_code(), 0);
    }

    fn rollout() -> pb::Rollout {
        pb::Rollout {
            id: "r1".into(),
            app: "shop".into(),
            env: "staging".into(),
            version: "1.2".into(),
            kind: "deploy".into(),
            status: "reverted".into(),
            previous_version: "1.1".into(),
            created_by: "spiffe://ferry.test/operator/ada".into(),
            created_at_ms: 1_700_000_000_000,
            ..Default::default()
        }
    }

    #[test]
    fn json_names_every_field_scripts_use() {
        let j = json_of(&Finished(rollout()));
        assert_eq!(j["status"], "reverted");
        assert_eq!(j["previous_version"], "1.1");
        assert_eq!(j["created_at"], "2023-11-14T22:13:20Z");
        assert!(j["finished_at"].is_null());
        assert!(j["trace_id"].is_null());
        for field in [
            "id",
            "app",
            "env",
            "version",
            "kind",
            "protected",
            "services",
            "batches",
            "max_parallel",
            "smoke_checks",
            "steps",
            "message",
            "created_by",
            "rollback_of",
        ] {
            assert!(j.get(field).is_some(), "{field}: {j}");
        }
        let list = json_of(&View::Releases(Releases {
            app: "shop".into(),
            releases: vec![rollout()],
            current_ids: vec![],
        }));
        let mut listed = j.clone();
        listed["current"] = json!(false);
        assert_eq!(list[0], listed);
    }

    #[test]
    fn a_plan_names_hosts_batches_and_what_a_failure_returns_to() {
        let mut r = rollout();
        r.max_parallel = 1;
        r.smoke_checks = 2;
        r.services = vec![
            pb::RolloutService {
                name: "web".into(),
                image: "shop:1.2".into(),
                strategy: "blue-green".into(),
                ..Default::default()
            },
            pb::RolloutService {
                name: "api".into(),
                image: "shop-api:1.2".into(),
                strategy: "blue-green".into(),
                replicas: 4,
                hosts: vec!["web-1".into()],
            },
        ];
        r.accessories = vec![pb::RolloutService {
            name: "db".into(),
            image: "postgres:16".into(),
            strategy: "accessory".into(),
            replicas: 1,
            hosts: vec!["db-1".into()],
        }];
        r.batches = vec![pb::RolloutBatch {
            hosts: vec![pb::RolloutHost {
                agent: "web-1".into(),
                online: true,
                ..Default::default()
            }],
        }];
        let text = text_of(&Plan(r));
        assert_eq!(
            text,
            "Plan: deploy shop 1.2 to staging — 1 host(s) in 1 batch(es) of up to 1\n\
             \x20 service web          shop:1.2  (blue-green)\n\
             \x20 service api          shop-api:1.2  (blue-green) ×4 on web-1\n\
             \x20 accessory db         postgres:16 on db-1\n\
             \x20 batch 1: web-1\n\
             \x20 smoke: 2 check(s) after each batch\n\
             \x20 previous release: 1.1 (restored on failure)\n"
        );
        let plan = Plan(rollout());
        let shown = crate::render::TextOnly(&plan);
        assert_eq!(shown.json_style(), crate::render::Json::None);
        assert_eq!(json_of(&plan)["id"], "r1");
    }

    #[test]
    fn rollout_follows_an_id_and_cancel_cancels_one() {
        use clap::Parser;
        let parse = |args: &[&str]| crate::Cli::try_parse_from(args).map(|c| c.command);
        match parse(&["ferry", "rollout", "0190a000-0000-7000-8000-000000000001"]) {
            Ok(crate::Command::Rollout(Command::Rollout(RolloutArgs {
                id: Some(id),
                action: None,
            }))) => assert_eq!(id, "0190a000-0000-7000-8000-000000000001"),
            other => panic!("{other:?}"),
        }
        match parse(&["ferry", "rollout", "cancel", "abc"]) {
            Ok(crate::Command::Rollout(Command::Rollout(RolloutArgs {
                id: None,
                action: Some(Action::Cancel { id }),
            }))) => assert_eq!(id, "abc"),
            other => panic!("{other:?}"),
        }
        assert!(parse(&["ferry", "rollout"]).is_err(), "an id is required");
        assert!(parse(&["ferry", "rollout", "cancel"]).is_err());
        let r = |status: &str| pb::Rollout {
            status: status.into(),
            ..Default::default()
        };
        assert_eq!(Cancelled(r("cancelled")).exit_code(), 0);
        for s in ["revert_failed", "succeeded", "failed"] {
            assert_eq!(Cancelled(r(s)).exit_code(), 1, "{s}");
        }
    }

    #[test]
    fn plans_name_what_the_kind_does() {
        let mut r = rollout();
        r.kind = "restart".into();
        r.only_services = vec!["web".into()];
        r.services = ["web", "worker"]
            .iter()
            .map(|n| pb::RolloutService {
                name: n.to_string(),
                image: format!("shop-{n}:1.2"),
                strategy: "recreate".into(),
                ..Default::default()
            })
            .collect();
        let text = text_of(&Plan(r.clone()));
        assert!(
            text.starts_with("Plan: restart shop 1.2 to staging"),
            "{text}"
        );
        assert!(
            text.contains("service web") && !text.contains("worker"),
            "{text}"
        );
        assert!(text.contains("it is not reverted"), "{text}");
        r.kind = "redeploy".into();
        let text = text_of(&Plan(r));
        assert!(text.starts_with("Plan: redeploy shop 1.2"), "{text}");
        assert!(text.contains("previous release: 1.1 (restored on failure)"));
        assert_eq!(verb("rollback"), "roll back");
    }

    #[test]
    fn releases_mark_the_current_one_and_show_every_image() {
        let mut failed = rollout();
        failed.id = "019af3c2-7d1e-7b4a-9c3e-00000000f41d".into();
        failed.version = "1.3".into();
        failed.status = "failed".into();
        failed.services = vec![
            pb::RolloutService {
                name: "web".into(),
                image: "shop-web:1.3".into(),
                ..Default::default()
            },
            pb::RolloutService {
                name: "worker".into(),
                image: "shop-worker:1.3".into(),
                ..Default::default()
            },
        ];
        let mut current = rollout();
        current.id = "019af3c2-7d1e-7b4a-9c3e-00000000c0de".into();
        current.status = "succeeded".into();
        let view = Releases {
            app: "shop".into(),
            releases: vec![failed, current],
            current_ids: vec!["019af3c2-7d1e-7b4a-9c3e-00000000c0de".into()],
        };
        let text = text_of(&view);
        let lines: Vec<&str> = text.lines().collect();
        assert!(
            lines[0].starts_with("CURRENT  ENV      VERSION  KIND    OUTCOME"),
            "{text}"
        );
        assert!(
            !lines[1].starts_with('*'),
            "a failed newer one is not current: {text}"
        );
        assert!(
            lines[1].contains("web=shop-web:1.3 worker=shop-worker:1.3"),
            "{text}"
        );
        assert!(lines[1].ends_with("0000f41d"), "short ids: {text}");
        assert!(lines[2].starts_with('*'), "{text}");
        assert!(lines[2].contains(" ada "), "{text}");
        let json = json_of(&view);
        assert_eq!(json[0]["current"], false);
        assert_eq!(json[1]["current"], true);
        assert_eq!(json[1]["id"], "019af3c2-7d1e-7b4a-9c3e-00000000c0de");
        let none = text_of(&Releases {
            app: "shop".into(),
            releases: vec![],
            current_ids: vec![],
        });
        assert_eq!(none, "no releases of shop\n");
    }

    #[test]
    fn a_finished_rollout_keeps_its_summary_apart_from_the_details() {
        let mut r = rollout();
        r.message = "deploy failed on web-1 (failed): service web: new container not healthy: exited\nlast 2 log lines of the new container:\nboom\nbang".into();
        let text = text_of(&Finished(r));
        assert_eq!(
            text,
            "\nreverted: deploy failed on web-1 (failed): service web: new container not healthy: exited (details above)\n"
        );
    }
}
