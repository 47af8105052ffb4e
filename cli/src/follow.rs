//! Following a job (`ferry watch`, `ferry probe`, each step of a rollout):
//! its events as they happen. On a terminal, one line per agent with a
//! spinner (or a bar when the step reports a percentage) and its current
//! step, redrawn in place (on stderr), with log lines printed above; plain
//! lines otherwise; one JSON object per line with `--output json`. Each
//! event is an [`Event`] view, printed by the one printer. A lost
//! connection is resumed from the last event shown, without gaps or repeats.

use ferry_common::status::{JobStatus, Outcome, TaskState};
use std::collections::HashMap;
use std::time::Duration;

use ferry_common::backoff::FullJitter;
use ferry_common::exit;
use ferry_common::time::rfc3339_ms;
use ferry_proto::v1 as pb;
use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};
use serde::Serialize;
use serde_json::{Value, json};

use crate::render::{Json, Note, Render, Text};
use crate::{CliError, Ctx};

/// How long a watch keeps trying to reconnect before giving up.
const RECONNECT_FOR: Duration = Duration::from_secs(300);

/// One event as a JSON object (the `--output json` line format).
pub fn event_json(e: &pb::JobEvent) -> Value {
    use pb::event_body::Body;
    let mut v = json!({
        "job_id": e.job_id,
        "seq": e.seq,
        "at": rfc3339_ms(e.at_ms),
        "task_id": if e.task_id.is_empty() { Value::Null } else { Value::String(e.task_id.clone()) },
        "agent": if e.agent_name.is_empty() { Value::Null } else { Value::String(e.agent_name.clone()) },
        "task_seq": if e.task_seq == 0 { Value::Null } else { json!(e.task_seq) },
    });
    let (kind, fields) = match e.body.as_ref().and_then(|b| b.body.as_ref()) {
        Some(Body::StepStarted(s)) => (
            "step_started",
            json!({"step": s.step, "message": s.message}),
        ),
        Some(Body::Progress(p)) => (
            "progress",
            json!({"step": p.step, "percent": if p.percent < 0.0 { Value::Null } else { json!(p.percent) },
                   "bytes_done": p.bytes_done, "bytes_total": p.bytes_total, "message": p.message}),
        ),
        Some(Body::Log(l)) => (
            "log",
            json!({"step": l.step, "stream": l.stream, "line": l.line}),
        ),
        Some(Body::StepFinished(s)) => (
            "step_finished",
            json!({"step": s.step, "ok": s.ok, "message": s.message, "duration_ms": s.duration_ms}),
        ),
        Some(Body::TaskFinished(f)) => (
            "task_finished",
            json!({"outcome": outcome_name(f.outcome), "message": f.message,
                   "result": serde_json::from_str::<Value>(&f.result_json).unwrap_or(Value::Null)}),
        ),
        Some(Body::TaskStateChanged(s)) => (
            "task_state",
            json!({"state": s.state, "message": s.message}),
        ),
        Some(Body::JobFinished(j)) => (
            "job_finished",
            json!({"status": j.status, "message": j.message}),
        ),
        None => ("unknown", json!({})),
    };
    v["type"] = json!(kind);
    if let (Some(obj), Value::Object(extra)) = (v.as_object_mut(), fields) {
        obj.extend(extra);
    }
    v
}

pub fn outcome_name(o: i32) -> &'static str {
    let outcome = match pb::TaskOutcome::try_from(o) {
        Ok(pb::TaskOutcome::Succeeded) => Outcome::Succeeded,
        Ok(pb::TaskOutcome::Failed) => Outcome::Failed,
        Ok(pb::TaskOutcome::Cancelled) => Outcome::Cancelled,
        Ok(pb::TaskOutcome::Lost) => Outcome::Lost,
        _ => return "unknown",
    };
    outcome.as_str()
}

/// One line of plain text for an event.
pub fn event_line(e: &pb::JobEvent) -> Option<String> {
    use pb::event_body::Body;
    let who = if e.agent_name.is_empty() {
        "job".to_string()
    } else {
        e.agent_name.clone()
    };
    let text = match e.body.as_ref()?.body.as_ref()? {
        Body::StepStarted(s) => format!("{}: started{}", s.step, suffix(&s.message)),
        Body::Progress(p) if p.percent >= 0.0 => {
            format!("{}: {:.0}%{}", p.step, p.percent, suffix(&p.message))
        }
        Body::Progress(p) => format!("{}: {}", p.step, p.message),
        Body::Log(l) => format!("{} | {}", l.step, l.line),
        Body::StepFinished(s) => format!(
            "{}: {}{}",
            s.step,
            if s.ok {
                "done"
            } else {
                Outcome::Failed.as_str()
            },
            suffix(&s.message)
        ),
        Body::TaskFinished(f) => format!(
            "finished: {}{}",
            outcome_name(f.outcome),
            suffix(&f.message)
        ),
        Body::TaskStateChanged(s) => format!("{}{}", s.state, suffix(&s.message)),
        Body::JobFinished(j) => format!("job {}{}", j.status, suffix(&j.message)),
    };
    Some(format!("{} {who:<12} {text}", rfc3339_ms(e.at_ms)))
}

/// A message's first line, its summary, and whether more lines follow:
/// a failed deploy's message carries the container's last log lines,
/// which were already shown, each as a log event.
pub fn summary_line(message: &str) -> (&str, bool) {
    let trimmed = message.trim_end();
    match trimmed.split_once('\n') {
        Some((first, _)) => (first.trim_end(), true),
        None => (trimmed, false),
    }
}

/// " — summary" of a message for one line of output.
fn suffix(m: &str) -> String {
    let (m, _) = summary_line(m);
    if m.is_empty() {
        String::new()
    } else {
        format!(" — {m}")
    }
}

/// One event of a followed job: a line of text, or one JSON object per line.
#[derive(Debug)]
pub struct Event<'a>(pub &'a pb::JobEvent);

impl Serialize for Event<'_> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        event_json(self.0).serialize(s)
    }
}

impl Render for Event<'_> {
    fn text(&self, t: &mut Text<'_>) -> std::io::Result<()> {
        match event_line(self.0) {
            Some(line) => writeln!(t.out, "{line}"),
            None => Ok(()),
        }
    }
    fn json_style(&self) -> Json {
        Json::Line
    }
}

/// The exit code for a finished job's status.
pub fn exit_code(status: &str) -> i32 {
    match status.parse() {
        Ok(JobStatus::Succeeded) => exit::OK,
        Ok(JobStatus::Cancelled) => exit::CANCELLED,
        _ => exit::FAILED,
    }
}

/// Live display on a terminal.
struct Bars {
    multi: MultiProgress,
    bars: HashMap<String, ProgressBar>,
}

impl Bars {
    fn new(job: &pb::Job) -> Self {
        let multi = MultiProgress::with_draw_target(ProgressDrawTarget::stderr());
        let mut bars = HashMap::new();
        for t in &job.tasks {
            let bar = multi.add(ProgressBar::new_spinner());
            bar.set_style(spinner_style());
            bar.set_prefix(t.agent_name.clone());
            bar.set_message(t.state.clone());
            bar.enable_steady_tick(Duration::from_millis(120));
            bars.insert(t.agent_name.clone(), bar);
        }
        Bars { multi, bars }
    }

    fn show(&self, e: &pb::JobEvent) {
        use pb::event_body::Body;
        let Some(body) = e.body.as_ref().and_then(|b| b.body.as_ref()) else {
            return;
        };
        let Some(bar) = self.bars.get(&e.agent_name) else {
            if let Some(line) = event_line(e) {
                let _ = self.multi.println(line);
            }
            return;
        };
        match body {
            Body::StepStarted(s) => {
                bar.set_style(spinner_style());
                bar.set_message(format!("{}{}", s.step, suffix(&s.message)));
            }
            Body::Progress(p) if p.percent >= 0.0 => {
                bar.set_style(bar_style());
                bar.set_length(100);
                bar.set_position(p.percent.clamp(0.0, 100.0) as u64);
                bar.set_message(format!("{}{}", p.step, suffix(&p.message)));
            }
            Body::Progress(p) => bar.set_message(format!("{}{}", p.step, suffix(&p.message))),
            Body::Log(l) => {
                let _ = self.multi.println(format!("{} | {}", e.agent_name, l.line));
            }
            Body::StepFinished(s) if !s.ok => {
                let _ = self.multi.println(format!(
                    "{} | {} failed{}",
                    e.agent_name,
                    s.step,
                    suffix(&s.message)
                ));
            }
            Body::StepFinished(_) => {}
            Body::TaskFinished(f) => {
                let mark = if f.outcome == pb::TaskOutcome::Succeeded as i32 {
                    "✔"
                } else {
                    "✘"
                };
                bar.set_style(done_style());
                bar.finish_with_message(format!(
                    "{mark} {}{}",
                    outcome_name(f.outcome),
                    suffix(&f.message)
                ));
            }
            Body::TaskStateChanged(s) => {
                if !bar.is_finished() {
                    bar.set_message(format!("{}{}", s.state, suffix(&s.message)));
                }
                if s.state.parse().is_ok_and(TaskState::is_unfinished) {
                    bar.set_style(done_style());
                    bar.finish_with_message(format!("✘ {}{}", s.state, suffix(&s.message)));
                }
            }
            Body::JobFinished(_) => {}
        }
    }

    fn finish(&self) {
        for bar in self.bars.values() {
            if !bar.is_finished() {
                bar.abandon();
            }
        }
    }
}

fn spinner_style() -> ProgressStyle {
    ProgressStyle::with_template("{spinner} {prefix:<14} {wide_msg}")
        .unwrap_or_else(|_| ProgressStyle::default_spinner())
}

fn bar_style() -> ProgressStyle {
    ProgressStyle::with_template("{spinner} {prefix:<14} [{bar:24}] {pos:>3}% {wide_msg}")
        .unwrap_or_else(|_| ProgressStyle::default_bar())
        .progress_chars("=> ")
}

fn done_style() -> ProgressStyle {
    ProgressStyle::with_template("  {prefix:<14} {wide_msg}")
        .unwrap_or_else(|_| ProgressStyle::default_spinner())
}

/// Follows a job until it ends; returns the exit code for its status.
/// `quiet` shows nothing (used by `ferry probe --output json`).
pub async fn follow(ctx: &Ctx, job_id: &str, quiet: bool) -> Result<(pb::Job, i32), CliError> {
    let mut session = ctx.connect().await?;
    let job = get_job(&mut session, job_id).await?;
    // The whole id from here on, however it was given.
    let job_id = job.id.as_str();
    let json = ctx.json();
    let bars = (!quiet && !json && ctx.env.stdout_is_terminal).then(|| Bars::new(&job));
    if !quiet && bars.is_none() {
        ctx.print(&Note(format!(
            "job {} ({}) on {} agent(s)",
            job.id,
            job.kind,
            job.tasks.len()
        )))?;
    }
    let mut last_seq = 0u64;
    let mut backoff = FullJitter::new(Duration::from_millis(200), Duration::from_secs(5));
    let mut lost_since: Option<tokio::time::Instant> = None;
    loop {
        let stream = session
            .client
            .watch_job(pb::WatchJobRequest {
                job_id: job_id.to_string(),
                after_seq: last_seq,
            })
            .await;
        let mut stream = match stream {
            Ok(s) => s.into_inner(),
            Err(status) if status.code() == tonic::Code::Unavailable => {
                reconnect_wait(&mut lost_since, &mut backoff, &status).await?;
                session = match ctx.connect().await {
                    Ok(s) => s,
                    Err(_) => continue,
                };
                continue;
            }
            Err(status) => return Err(status.into()),
        };
        let ended = loop {
            match stream.message().await {
                Ok(Some(e)) => {
                    lost_since = None;
                    backoff.reset();
                    // Never show an event twice, even if a resumed stream repeats.
                    if e.seq <= last_seq {
                        continue;
                    }
                    last_seq = e.seq;
                    if quiet {
                        continue;
                    }
                    match &bars {
                        Some(b) => b.show(&e),
                        None => ctx.print(&Event(&e))?,
                    }
                }
                Ok(None) => break true,
                Err(status)
                    if matches!(
                        status.code(),
                        tonic::Code::Unavailable
                            | tonic::Code::Unknown
                            | tonic::Code::Internal
                            | tonic::Code::Cancelled
                    ) =>
                {
                    reconnect_wait(&mut lost_since, &mut backoff, &status).await?;
                    if let Ok(s) = ctx.connect().await {
                        session = s;
                    }
                    break false;
                }
                Err(status) => return Err(status.into()),
            }
        };
        if ended {
            break;
        }
    }
    if let Some(b) = &bars {
        b.finish();
    }
    let job = get_job(&mut session, job_id).await?;
    Ok((job.clone(), exit_code(&job.status)))
}

/// The job as the coordinator has it now.
async fn get_job(session: &mut crate::context::Session, job_id: &str) -> Result<pb::Job, CliError> {
    Ok(session
        .client
        .get_job(pb::GetJobRequest {
            job_id: job_id.to_string(),
        })
        .await?
        .into_inner()
        .job
        .unwrap_or_default())
}

async fn reconnect_wait(
    lost_since: &mut Option<tokio::time::Instant>,
    backoff: &mut FullJitter,
    status: &tonic::Status,
) -> Result<(), CliError> {
    let since = *lost_since.get_or_insert_with(tokio::time::Instant::now);
    if since.elapsed() > RECONNECT_FOR {
        return Err(CliError::unavailable(format!(
            "lost the coordinator for more than {}s: {}",
            RECONNECT_FOR.as_secs(),
            ferry_common::tls::error_chain(status)
        )));
    }
    tracing::info!("watch connection lost; resuming");
    tokio::time::sleep(backoff.next().unwrap_or(Duration::from_secs(1))).await;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ev(body: pb::event_body::Body) -> pb::JobEvent {
        pb::JobEvent {
            job_id: "j".into(),
            seq: 3,
            at_ms: 1_700_000_000_000,
            task_id: "t".into(),
            agent_name: "web-1".into(),
            task_seq: 2,
            body: Some(pb::EventBody { body: Some(body) }),
        }
    }

    #[test]
    fn events_render_as_lines_and_json() {
        let e = ev(pb::event_body::Body::StepStarted(pb::StepStarted {
            step: "docker".into(),
            message: "Docker engine".into(),
        }));
        assert_eq!(
            event_line(&e).unwrap(),
            "2023-11-14T22:13:20Z web-1        docker: started — Docker engine"
        );
        let j = event_json(&e);
        assert_eq!(j["type"], "step_started");
        assert_eq!(j["step"], "docker");
        assert_eq!(j["agent"], "web-1");
        assert_eq!(j["seq"], 3);

        let f = ev(pb::event_body::Body::TaskFinished(pb::TaskFinished {
            outcome: pb::TaskOutcome::Succeeded as i32,
            message: "ok".into(),
            result_json: "{\"cpus\":2}".into(),
        }));
        let j = event_json(&f);
        assert_eq!(j["outcome"], "succeeded");
        assert_eq!(j["result"]["cpus"], 2);
    }

    #[test]
    fn exit_codes_follow_the_status() {
        assert_eq!(exit_code("succeeded"), 0);
        assert_eq!(exit_code("failed"), 1);
        assert_eq!(exit_code("cancelled"), 3);
    }
}
