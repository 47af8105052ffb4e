//! `ferry logs`: a service's container logs from each host of an
//! environment, read by the agents (a `logs` job) and streamed through the
//! coordinator. With `-f` new lines keep coming until the command ends
//! (Ctrl-C, a closed pipe) or an hour has passed; the coordinator cancels
//! the job when the command goes away.

use std::collections::BTreeSet;
use std::io::{self, Write};

use ferry_common::exit;
use ferry_common::job::logs::{DEFAULT_TAIL, MAX_TAIL};
use ferry_common::time::{ago, now_ms, parse_since};
use ferry_proto::v1 as pb;
use serde::Serialize;

use crate::render::{Json, Render, Text};
use crate::{CliError, Ctx};

#[derive(Debug, clap::Subcommand)]
pub enum Command {
    /// Show a service's container logs from each host of an environment
    /// (the running containers, or the newest one if none runs), secrets
    /// redacted. -f keeps following (at most an hour).
    Logs(LogsArgs),
}

#[derive(Debug, clap::Args)]
pub struct LogsArgs {
    /// App name, e.g. shop (default: the app of ./ferry.toml).
    #[arg(long)]
    pub app: Option<String>,
    /// Environment, e.g. production.
    #[arg(long)]
    pub env: String,
    /// The service, e.g. web.
    pub service: String,
    /// Only this host (an agent name; default: every host of the environment).
    #[arg(long, value_name = "NAME")]
    pub host: Option<String>,
    /// Only lines written since then: a duration back (10m, 1h) or an RFC 3339 time.
    #[arg(long, value_name = "WHEN")]
    pub since: Option<String>,
    /// Keep following new lines until interrupted (at most an hour).
    #[arg(short = 'f', long)]
    pub follow: bool,
    /// Lines from the end of each container's log (1 to 10000).
    #[arg(long, value_name = "N", default_value_t = DEFAULT_TAIL)]
    pub tail: u32,
}

pub async fn run(command: Command, ctx: &Ctx) -> Result<Ended, CliError> {
    let Command::Logs(args) = command;
    let app = ctx.app(args.app)?;
    if args.tail == 0 || args.tail > MAX_TAIL {
        return Err(CliError::usage(format!(
            "--tail: {} is out of range; give 1 to {MAX_TAIL} lines",
            args.tail
        )));
    }
    let since_ms = match &args.since {
        None => 0,
        Some(text) => {
            parse_since(text, now_ms()).map_err(|e| CliError::usage(format!("--since: {e}")))?
        }
    };
    let mut s = ctx.connect().await?;
    let mut stream = s
        .client
        .stream_logs(pb::StreamLogsRequest {
            app,
            env: args.env,
            service: args.service,
            host: args.host.unwrap_or_default(),
            since_ms,
            follow: args.follow,
            tail: args.tail,
        })
        .await?
        .into_inner();
    let mut shown = Shown::default();
    let mut ended = Ended::default();
    while let Some(item) = stream.message().await? {
        if !item.job_id.is_empty() {
            ended.job_id = item.job_id;
        }
        for h in &item.offline {
            let line = format!(
                "{}: offline (last seen {}); its logs are not shown",
                h.agent,
                ago(h.last_seen_ms, now_ms())
            );
            ended.offline.push(h.agent.clone());
            if !ctx.json() {
                let _ = writeln!(io::stderr(), "{line}");
            }
        }
        let Some(event) = item.event else { continue };
        use pb::event_body::Body;
        match event.body.and_then(|b| b.body) {
            Some(Body::Log(l)) => {
                shown.note(&event.agent_name, &l.step);
                ctx.print(&Line::new(&event.agent_name, &l, &shown))?;
            }
            Some(Body::TaskFinished(f)) if f.outcome != pb::TaskOutcome::Succeeded as i32 => {
                let (summary, _) = crate::follow::summary_line(&f.message);
                let outcome = crate::follow::outcome_name(f.outcome);
                ended
                    .failed
                    .push(format!("{}: {outcome}: {summary}", event.agent_name));
            }
            Some(Body::TaskStateChanged(st))
                if st
                    .state
                    .parse()
                    .is_ok_and(ferry_common::status::TaskState::is_unfinished) =>
            {
                ended.failed.push(format!(
                    "{}: {}: {}",
                    event.agent_name, st.state, st.message
                ));
            }
            _ => {}
        }
    }
    Ok(ended)
}

/// Which hosts and containers lines came from so far: the prefix names
/// the host once several hosts send lines, and the container once a host
/// sends from several.
#[derive(Debug, Default)]
struct Shown {
    hosts: BTreeSet<String>,
    containers: BTreeSet<(String, String)>,
}

impl Shown {
    fn note(&mut self, host: &str, container: &str) {
        self.hosts.insert(host.to_string());
        self.containers
            .insert((host.to_string(), container.to_string()));
    }

    fn prefix(&self, host: &str, container: &str) -> String {
        let several_hosts = self.hosts.len() > 1;
        let several_here = self.containers.iter().filter(|(h, _)| h == host).count() > 1;
        match (several_hosts, several_here) {
            (false, false) => String::new(),
            (true, false) => format!("{host} | "),
            (false, true) => format!("{container} | "),
            (true, true) => format!("{host} {container} | "),
        }
    }
}

/// One log line: text with a prefix when needed, one JSON object per line.
#[derive(Debug, Serialize)]
pub struct Line {
    pub host: String,
    pub container: String,
    pub stream: String,
    /// Docker's timestamp of the line.
    pub time: Option<String>,
    pub line: String,
    #[serde(skip)]
    prefix: String,
}

impl Line {
    fn new(host: &str, l: &pb::LogLine, shown: &Shown) -> Line {
        // The agent sends Docker's timestamp, a space, then the text.
        let (time, text) = match l.line.split_once(' ') {
            Some((t, rest)) if ferry_common::time::parse_rfc3339_ms(t).is_some() => {
                (Some(t.to_string()), rest.to_string())
            }
            _ => (None, l.line.clone()),
        };
        Line {
            host: host.into(),
            container: l.step.clone(),
            stream: l.stream.clone(),
            time,
            line: text,
            prefix: shown.prefix(host, &l.step),
        }
    }
}

impl Render for Line {
    fn text(&self, t: &mut Text<'_>) -> io::Result<()> {
        writeln!(t.out, "{}{}", self.prefix, self.line)
    }
    fn json_style(&self) -> Json {
        Json::Line
    }
}

/// How the stream ended: quietly when every host sent its lines; a host
/// that could not (no container, the engine failed, offline) is reported,
/// and the exit code says so.
#[derive(Debug, Default, Serialize)]
pub struct Ended {
    pub job_id: String,
    pub offline: Vec<String>,
    pub failed: Vec<String>,
}

impl Render for Ended {
    fn text(&self, t: &mut Text<'_>) -> io::Result<()> {
        for f in &self.failed {
            writeln!(t.err, "{f}")?;
        }
        Ok(())
    }
    fn json_style(&self) -> Json {
        // Scripts read the lines; a last object says which hosts failed.
        if self.failed.is_empty() {
            Json::None
        } else {
            Json::Line
        }
    }
    fn exit_code(&self) -> i32 {
        if self.failed.is_empty() {
            exit::OK
        } else {
            exit::FAILED
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::render::text_of;

    fn log(container: &str, line: &str) -> pb::LogLine {
        pb::LogLine {
            step: container.into(),
            stream: "stdout".into(),
            line: line.into(),
        }
    }

    #[test]
    fn prefixes_appear_once_there_are_several_hosts_or_containers() {
        let mut shown = Shown::default();
        shown.note("web-1", "shop-prod-web-1.2");
        let one = Line::new(
            "web-1",
            &log("shop-prod-web-1.2", "2026-12-07T00:22:01.123456789Z hello"),
            &shown,
        );
        assert_eq!(text_of(&one), "hello\n");
        assert_eq!(one.time.as_deref(), Some("2026-12-07T00:22:01.123456789Z"));
        shown.note("web-2", "shop-prod-web-1.2");
        let two = Line::new(
            "web-2",
            &log("shop-prod-web-1.2", "no timestamp here"),
            &shown,
        );
        assert_eq!(text_of(&two), "web-2 | no timestamp here\n");
        assert_eq!(two.time, None);
        shown.note("web-2", "shop-prod-web-1.1");
        let both = Line::new("web-2", &log("shop-prod-web-1.1", "x"), &shown);
        assert_eq!(text_of(&both), "web-2 shop-prod-web-1.1 | x\n");
        let j = serde_json::to_value(&both).unwrap();
        assert_eq!(j["host"], "web-2");
        assert_eq!(j["container"], "shop-prod-web-1.1");
        assert_eq!(j["stream"], "stdout");
        assert_eq!(j["line"], "x");
        assert!(j.get("prefix").is_none());
    }

    #[test]
    fn a_host_that_sent_nothing_fails_the_command() {
        let ok = Ended::default();
        assert_eq!(ok.exit_code(), 0);
        let failed = Ended {
            failed: vec![
                "web-1: failed: no container of shop prod service web on this host".into(),
            ],
            ..Default::default()
        };
        assert_eq!(failed.exit_code(), 1);
        assert!(text_of(&failed).contains("no container"));
    }
}
