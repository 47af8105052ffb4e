//! `WatchJob`: every event after a seq, then live ones until the job ends,
//! or until its operator is revoked (at once on this coordinator, within a
//! second on the others).

use std::sync::Arc;
use std::time::Duration;

use ferry_proto::v1 as pb;
use prost::Message;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::Status;
use uuid::Uuid;

use crate::core::Core;
use crate::error::CoordinatorError;
use crate::store::{Notification, StoreError};

const PAGE: u32 = 500;
/// Re-read even without a notification, in case one was missed.
const POLL: Duration = Duration::from_secs(1);

impl Core {
    /// Streams job `job_id`'s events after `after_seq` to `operator`.
    pub async fn watch_job(
        self: &Arc<Self>,
        job_id: Uuid,
        after_seq: u64,
        operator: &str,
    ) -> Result<ReceiverStream<Result<pb::JobEvent, Status>>, CoordinatorError> {
        self.store
            .get_job(job_id)
            .await?
            .ok_or(StoreError::JobNotFound(job_id))?;
        let (tx, rx) = mpsc::channel(256);
        let core = Arc::clone(self);
        let revoked = self.operator_streams.open(operator);
        let operator = operator.to_string();
        tokio::spawn(async move {
            let result = tokio::select! {
                r = core.stream_job(job_id, after_seq, &operator, &tx) => r,
                _ = revoked.cancelled() => Err(revoked_status(&operator)),
            };
            if let Err(status) = result {
                let _ = tx.send(Err(status)).await;
            }
        });
        Ok(ReceiverStream::new(rx))
    }

    async fn stream_job(
        &self,
        job_id: Uuid,
        mut seq: u64,
        operator: &str,
        tx: &mpsc::Sender<Result<pb::JobEvent, Status>>,
    ) -> Result<(), Status> {
        let store_err = |e: StoreError| Status::from(CoordinatorError::from(e));
        // Subscribe before reading, so nothing lands between read and wait.
        let mut notes = self.store.subscribe();
        loop {
            // Revoked through another coordinator: this one learns it here,
            // at least once per POLL.
            let still_allowed = self
                .store
                .get_operator(operator)
                .await
                .map_err(store_err)?
                .is_some_and(|op| op.revoked_at_ms.is_none());
            if !still_allowed {
                return Err(revoked_status(operator));
            }
            let events = self
                .store
                .job_events_after(job_id, seq, PAGE)
                .await
                .map_err(store_err)?;
            let full_page = events.len() == PAGE as usize;
            for e in events {
                seq = e.seq;
                let event = pb::JobEvent {
                    job_id: job_id.to_string(),
                    seq: e.seq,
                    at_ms: e.at_ms,
                    task_id: e.task_id.map(|t| t.to_string()).unwrap_or_default(),
                    agent_name: e.agent_name.unwrap_or_default(),
                    task_seq: e.task_seq.unwrap_or(0),
                    body: pb::EventBody::decode(e.body.as_slice()).ok(),
                };
                if tx.send(Ok(event)).await.is_err() {
                    return Ok(());
                }
            }
            if full_page {
                continue;
            }
            let job = self
                .store
                .get_job(job_id)
                .await
                .map_err(store_err)?
                .ok_or_else(|| Status::not_found("job deleted"))?;
            if job.status.is_final() && job.last_seq <= seq {
                return Ok(());
            }
            let wait = async {
                loop {
                    match notes.recv().await {
                        Ok(Notification::JobEvents(j)) if j == job_id => return,
                        Ok(Notification::Missed) => return,
                        Ok(_) => {}
                        Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => return,
                        Err(tokio::sync::broadcast::error::RecvError::Closed) => {
                            std::future::pending::<()>().await;
                        }
                    }
                }
            };
            tokio::select! {
                _ = self.shutdown.cancelled() => return Err(Status::unavailable("coordinator shutting down")),
                _ = tx.closed() => return Ok(()),
                _ = wait => {}
                _ = tokio::time::sleep(POLL) => {}
            }
        }
    }
}

/// What a revoked operator's open stream ends with.
fn revoked_status(operator: &str) -> Status {
    Status::from(CoordinatorError::PermissionDenied {
        reason: format!("operator {operator} has been revoked"),
        refusal: "revoked",
    })
}
