//! `smoke`: HTTP checks run from the host, in order. Each check is retried
//! every `interval` for up to `retry_for` (a service that is still starting
//! is given time), and every attempt is reported as a log line.

use std::time::{Duration, Instant};

use ferry_common::job::{HttpCheck, SmokeSpec};

use super::http::HttpClient;
use super::{Done, KindExecutor, TaskContext, TaskFailure};

/// Runs `smoke` tasks.
pub struct Smoke;

#[async_trait::async_trait]
impl KindExecutor for Smoke {
    type Spec = SmokeSpec;
    async fn run(&self, spec: SmokeSpec, ctx: &TaskContext) -> Result<Done, TaskFailure> {
        run(&spec, ctx).await
    }
}

pub async fn run(spec: &SmokeSpec, ctx: &TaskContext) -> Result<Done, TaskFailure> {
    let client = HttpClient::default();
    for check in &spec.checks {
        run_check(&client, check, ctx).await?;
    }
    Ok(Done {
        message: format!("{} check(s) passed", spec.checks.len()),
        result_json: String::new(),
    })
}

async fn run_check(
    client: &HttpClient,
    check: &HttpCheck,
    ctx: &TaskContext,
) -> Result<(), TaskFailure> {
    let step = format!("check {}", check.label());
    let started = Instant::now();
    ctx.step_started(
        &step,
        &format!("GET {} expecting {}", check.url, check.expect_status),
    );
    let mut attempt = 0u32;
    loop {
        attempt += 1;
        let result = attempt_once(client, check).await;
        match &result {
            Ok(latency) => ctx.log(
                &step,
                "info",
                &format!("attempt {attempt}: ok in {} ms", latency.as_millis()),
            ),
            Err(why) => ctx.log(&step, "info", &format!("attempt {attempt}: {why}")),
        }
        if result.is_ok() {
            ctx.step_finished(
                &step,
                true,
                &format!("passed after {attempt} attempt(s)"),
                started,
            );
            return Ok(());
        }
        if started.elapsed() + check.interval > check.retry_for {
            let why = result.err().unwrap_or_default();
            ctx.step_finished(&step, false, &why, started);
            return Err(TaskFailure::Failed(format!(
                "{step} failed after {attempt} attempt(s): {why}"
            )));
        }
        tokio::select! {
            _ = ctx.cancel.cancelled() => return Err(TaskFailure::Cancelled),
            _ = tokio::time::sleep(check.interval) => {}
        }
    }
}

/// One GET; the latency on success, why not otherwise.
async fn attempt_once(client: &HttpClient, check: &HttpCheck) -> Result<Duration, String> {
    let answer = client.get(&check.url, check.timeout).await?;
    if answer.status != check.expect_status {
        return Err(format!(
            "status {}, expected {}",
            answer.status, check.expect_status
        ));
    }
    if let Some(needle) = &check.body_contains
        && !String::from_utf8_lossy(&answer.body).contains(needle.as_str())
    {
        return Err(format!("body does not contain {needle:?}"));
    }
    if let Some(max) = check.max_latency
        && answer.latency > max
    {
        return Err(format!(
            "took {} ms, more than the allowed {} ms",
            answer.latency.as_millis(),
            max.as_millis()
        ));
    }
    Ok(answer.latency)
}
