//! `smoke`: HTTP checks run from the host, in order. Each check is retried
//! every `interval` for up to `retry_for` (a service that is still starting
//! is given time), and every attempt is reported as a log line.

use std::time::{Duration, Instant};

use ferry_common::job::{HttpCheck, SmokeSpec};
use http_body_util::{BodyExt, Empty};
use hyper::body::Bytes;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;

use super::{Done, TaskFailure};
use crate::runner::TaskContext;

/// Most of a response body read for `body_contains`.
const BODY_LIMIT: usize = 1 << 20;

type HttpClient = Client<HttpConnector, Empty<Bytes>>;

pub async fn run(spec: &SmokeSpec, ctx: &TaskContext) -> Result<Done, TaskFailure> {
    let client: HttpClient = Client::builder(TokioExecutor::new()).build(HttpConnector::new());
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
    let uri: hyper::Uri = check.url.parse().map_err(|e| format!("bad URL: {e}"))?;
    let started = Instant::now();
    let response = tokio::time::timeout(check.timeout, async {
        let res = client
            .get(uri)
            .await
            .map_err(|e| ferry_common::tls::error_chain(&e))?;
        let status = res.status().as_u16();
        let body = res
            .into_body()
            .collect()
            .await
            .map_err(|e| e.to_string())?
            .to_bytes();
        Ok::<_, String>((status, body))
    })
    .await
    .map_err(|_| format!("no answer within {} ms", check.timeout.as_millis()))??;
    let latency = started.elapsed();
    let (status, body) = response;
    if status != check.expect_status {
        return Err(format!("status {status}, expected {}", check.expect_status));
    }
    if let Some(needle) = &check.body_contains {
        let text = String::from_utf8_lossy(&body[..body.len().min(BODY_LIMIT)]);
        if !text.contains(needle.as_str()) {
            return Err(format!("body does not contain {needle:?}"));
        }
    }
    if let Some(max) = check.max_latency
        && latency > max
    {
        return Err(format!(
            "took {} ms, more than the allowed {} ms",
            latency.as_millis(),
            max.as_millis()
        ));
    }
    Ok(latency)
}
