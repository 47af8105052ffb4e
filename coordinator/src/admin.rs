//! The admin HTTP port: `/healthz` (the process is up), `/readyz` (the store
//! answers), `/metrics` (Prometheus text).

use std::sync::Arc;

use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::get;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::core::Core;

pub fn router(core: Arc<Core>) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .with_state(core)
}

/// How long `/readyz` waits for the store: a probe must get an answer,
/// and a store that takes longer than this is not ready for work either.
const READY_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(2);

async fn readyz(State(core): State<Arc<Core>>) -> (StatusCode, String) {
    match tokio::time::timeout(READY_TIMEOUT, core.store.ping()).await {
        Ok(Ok(())) => (StatusCode::OK, "ready\n".into()),
        Ok(Err(e)) => (StatusCode::SERVICE_UNAVAILABLE, format!("not ready: {e}\n")),
        Err(_) => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!(
                "not ready: the store did not answer within {}s\n",
                READY_TIMEOUT.as_secs()
            ),
        ),
    }
}

async fn metrics(State(core): State<Arc<Core>>) -> String {
    let enrolled = core
        .store
        .list_agents()
        .await
        .ok()
        .map(|agents| agents.iter().filter(|a| a.revoked_at_ms.is_none()).count());
    let backups = backup_gauges(&core).await;
    core.metrics
        .render(core.sessions.online_count(), enrolled, backups.as_ref())
}

/// The backup and schedule gauges, read from the store now; None if it
/// cannot be read.
async fn backup_gauges(core: &Core) -> Option<crate::metrics::BackupGauges> {
    let newest_backups = core.store.newest_backups().await.ok()?;
    let schedules = crate::schedules::all(core).await.ok()?;
    let now = ferry_common::time::now_ms();
    Some(crate::metrics::BackupGauges {
        newest_backups,
        schedules_failed: schedules
            .iter()
            .map(|s| {
                (
                    s.app.clone(),
                    s.env.clone(),
                    s.database.clone(),
                    s.kind.as_str().to_string(),
                    s.last_outcome(now) == Some(crate::store::RunOutcome::Failed),
                )
            })
            .collect(),
    })
}

pub async fn serve(
    listener: TcpListener,
    core: Arc<Core>,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    axum::serve(listener, router(core))
        .with_graceful_shutdown(shutdown.cancelled_owned())
        .await
}
