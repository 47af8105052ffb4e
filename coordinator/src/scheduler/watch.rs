//! `WatchJob`: every event after a seq, then live ones until the job ends.

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
    pub async fn watch_job(
        self: &Arc<Self>,
        job_id: Uuid,
        after_seq: u64,
    ) -> Result<ReceiverStream<Result<pb::JobEvent, Status>>, CoordinatorError> {
        self.store
            .get_job(job_id)
            .await?
            .ok_or(StoreError::JobNotFound(job_id))?;
        let (tx, rx) = mpsc::channel(256);
        let core = Arc::clone(self);
        tokio::spawn(async move {
            if let Err(status) = core.stream_job(job_id, after_seq, &tx).await {
                let _ = tx.send(Err(status)).await;
            }
        });
        Ok(ReceiverStream::new(rx))
    }

    async fn stream_job(
        &self,
        job_id: Uuid,
        mut seq: u64,
        tx: &mpsc::Sender<Result<pb::JobEvent, Status>>,
    ) -> Result<(), Status> {
        let store_err = |e: StoreError| Status::from(CoordinatorError::from(e));
        // Subscribe before reading, so nothing lands between read and wait.
        let mut notes = self.store.subscribe();
        loop {
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
