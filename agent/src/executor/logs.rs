//! `logs`: a service's container logs, line by line as log events, with
//! the environment's secrets redacted (as the deploy executor redacts what
//! it forwards). The running containers are read; with none running, the
//! newest one. Without `follow` the task ends after the tail; with it, when
//! cancelled (the CLI went away) or after [`FOLLOW_MAX`].

use std::collections::HashMap;

use bollard::Docker;
use bollard::container::LogOutput;
use bollard::models::ContainerSummaryStateEnum;
use bollard::query_parameters::{ListContainersOptions, LogsOptions};
use ferry_common::job::LogsSpec;
use ferry_common::job::logs::{FOLLOW_MAX, MAX_LINE_BYTES};
use ferry_common::job::naming::{self, LABEL_APP, LABEL_ENV, LABEL_SERVICE};
use ferry_common::redact::Redactor;
use futures::StreamExt;

use super::{Done, KindExecutor, TaskContext, TaskFailure};

/// Runs `logs` tasks.
pub struct Logs;

#[async_trait::async_trait]
impl KindExecutor for Logs {
    type Spec = LogsSpec;
    async fn run(&self, spec: LogsSpec, ctx: &TaskContext) -> Result<Done, TaskFailure> {
        run(&spec, ctx).await
    }
}

/// A container whose log is read: its id and name.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Source {
    id: String,
    name: String,
}

pub async fn run(spec: &LogsSpec, ctx: &TaskContext) -> Result<Done, TaskFailure> {
    let docker = ctx.host.docker()?.clone();
    let redactor = Redactor::new(ctx.secrets.iter().map(|(k, v)| (k.clone(), v.as_str())))
        .map_err(|e| TaskFailure::Failed(e.to_string()))?;
    let sources = sources(&docker, spec, &ctx.host.name).await?;
    if sources.is_empty() {
        return Err(TaskFailure::Failed(format!(
            "no container of {} {} service {} on this host",
            spec.app, spec.env, spec.service
        )));
    }
    let options = LogsOptions {
        follow: spec.follow,
        stdout: true,
        stderr: true,
        timestamps: true,
        tail: spec.tail.to_string(),
        // Docker takes whole seconds; the line filter below is exact.
        since: spec
            .since_ms
            .map_or(0, |ms| i32::try_from(ms / 1000).unwrap_or(i32::MAX)),
        ..Default::default()
    };
    let mut streams = futures::stream::select_all(sources.iter().map(|s| {
        let name = s.name.clone();
        docker
            .logs(&s.id, Some(options.clone()))
            .map(move |item| (name.clone(), item))
            .boxed()
    }));
    let mut lines = Lines {
        ctx,
        redactor: &redactor,
        since_ms: spec.since_ms,
        partial: HashMap::new(),
        sent: 0,
    };
    let give_up = tokio::time::sleep(FOLLOW_MAX);
    tokio::pin!(give_up);
    let mut ended_by_limit = false;
    loop {
        tokio::select! {
            _ = ctx.cancel.cancelled() => return Err(TaskFailure::Cancelled),
            _ = &mut give_up, if spec.follow => {
                ended_by_limit = true;
                break;
            }
            item = streams.next() => match item {
                None => break,
                Some((name, Ok(out))) => lines.chunk(&name, out),
                Some((name, Err(e))) => {
                    return Err(TaskFailure::Failed(format!("read the logs of {name}: {e}")));
                }
            },
        }
    }
    lines.flush();
    let names: Vec<&str> = sources.iter().map(|s| s.name.as_str()).collect();
    let mut message = format!("{} line(s) of {}", lines.sent, names.join(", "));
    if ended_by_limit {
        message.push_str(&format!(
            "; stopped following after {}",
            ferry_common::time::format_duration(FOLLOW_MAX)
        ));
    }
    Ok(Done {
        message,
        result_json: serde_json::json!({ "containers": names, "lines": lines.sent }).to_string(),
    })
}

/// The service's running containers, or the newest one if none runs.
async fn sources(docker: &Docker, spec: &LogsSpec, host: &str) -> Result<Vec<Source>, TaskFailure> {
    let filters = HashMap::from([(
        "label".to_string(),
        vec![
            format!("{LABEL_APP}={}", spec.app),
            format!("{LABEL_ENV}={}", spec.env),
            format!("{LABEL_SERVICE}={}", spec.service),
        ],
    )]);
    let list = docker
        .list_containers(Some(ListContainersOptions {
            all: true,
            filters: Some(filters),
            ..Default::default()
        }))
        .await
        .map_err(|e| TaskFailure::Failed(format!("list containers: {e}")))?;
    let mut all: Vec<(bool, i64, Source)> = list
        .into_iter()
        .filter(|c| naming::is_mine(c.labels.as_ref(), host))
        .map(|c| {
            let name = c
                .names
                .unwrap_or_default()
                .first()
                .map(|n| n.trim_start_matches('/').to_string())
                .unwrap_or_default();
            (
                c.state == Some(ContainerSummaryStateEnum::RUNNING),
                c.created.unwrap_or(0),
                Source {
                    id: c.id.unwrap_or_default(),
                    name,
                },
            )
        })
        .collect();
    all.sort_by(|a, b| a.2.name.cmp(&b.2.name));
    if all.iter().any(|(running, _, _)| *running) {
        return Ok(all
            .into_iter()
            .filter(|(running, _, _)| *running)
            .map(|(_, _, s)| s)
            .collect());
    }
    Ok(all
        .into_iter()
        .max_by_key(|(_, created, _)| *created)
        .map(|(_, _, s)| s)
        .into_iter()
        .collect())
}

/// Turns Docker's log frames into one event per line: frames may hold
/// several lines or part of one, so each (container, stream) keeps what
/// follows its last newline until the rest arrives.
struct Lines<'a> {
    ctx: &'a TaskContext,
    redactor: &'a Redactor,
    since_ms: Option<i64>,
    partial: HashMap<(String, &'static str), String>,
    sent: u64,
}

impl Lines<'_> {
    fn chunk(&mut self, container: &str, out: LogOutput) {
        let (stream, bytes) = match out {
            LogOutput::StdErr { message } => ("stderr", message),
            LogOutput::StdOut { message } | LogOutput::Console { message } => ("stdout", message),
            LogOutput::StdIn { .. } => return,
        };
        let key = (container.to_string(), stream);
        let mut text = self.partial.remove(&key).unwrap_or_default();
        text.push_str(&String::from_utf8_lossy(&bytes));
        let mut rest = text.as_str();
        while let Some(end) = rest.find('\n') {
            self.line(container, stream, &rest[..end]);
            rest = &rest[end + 1..];
        }
        if !rest.is_empty() {
            self.partial.insert(key, rest.to_string());
        }
    }

    /// Sends what is left without a newline (the stream ended).
    fn flush(&mut self) {
        for ((container, stream), text) in std::mem::take(&mut self.partial) {
            self.line(&container, stream, &text);
        }
    }

    fn line(&mut self, container: &str, stream: &str, line: &str) {
        let line = line.trim_end_matches('\r');
        if let Some(since) = self.since_ms {
            let at = line
                .split_once(' ')
                .and_then(|(t, _)| ferry_common::time::parse_rfc3339_ms(t));
            if at.is_some_and(|at| at < since) {
                return;
            }
        }
        let redacted = self.redactor.redact(line);
        self.ctx
            .log(container, stream, &bounded(&redacted, MAX_LINE_BYTES));
        self.sent += 1;
    }
}

/// `line` cut to at most `max` bytes (on a character boundary), saying how
/// much was cut.
fn bounded(line: &str, max: usize) -> String {
    if line.len() <= max {
        return line.to_string();
    }
    let mut end = max;
    while !line.is_char_boundary(end) {
        end -= 1;
    }
    format!("{} [cut: {} more bytes]", &line[..end], line.len() - end)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_lines_are_cut_on_a_character_boundary() {
        assert_eq!(bounded("short", 10), "short");
        assert_eq!(bounded("abcdefgh", 4), "abcd [cut: 4 more bytes]");
        // "é" is two bytes: a cut inside it moves back before it.
        assert_eq!(bounded("aé", 2), "a [cut: 2 more bytes]");
    }
}
