//! The agent's spool: every event of every task is written here before it
//! is sent, and kept until the coordinator acknowledges it, so a lost
//! connection, a restarted coordinator or a restarted agent loses nothing.
//!
//! Layout under `<state_dir>/spool/<task_id>/`: `meta.json` (which job,
//! attempt, kind) and `events.log` (length-prefixed, prost-encoded
//! `TaskEvent`s). The acknowledged seq lives in `acked`. A task's directory
//! is removed once it has finished and everything is acknowledged.
//!
//! Events are written with a plain `write`, not `fsync`ed one by one: a
//! crashed agent process loses nothing (the kernel has the bytes); a
//! crashed machine may lose the last events of a running task, which then
//! ends `lost` on restart like any task interrupted by a restart.

use std::collections::{BTreeMap, VecDeque};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use ferry_common::fsutil::{self, FileError, Mode};
use ferry_proto::v1 as pb;
use prost::Message;
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc::UnboundedSender;
use uuid::Uuid;

/// Why a task in the spool was never finished: the agent restarted.
pub const LOST_ON_RESTART: &str =
    "the agent restarted while this task was running; its work may be incomplete";

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TaskMeta {
    pub task_id: Uuid,
    pub job_id: Uuid,
    pub attempt: u32,
    pub kind: String,
}

struct TaskSpool {
    meta: TaskMeta,
    dir: PathBuf,
    log: std::fs::File,
    last_seq: u64,
    acked: u64,
    finished: bool,
    unacked: VecDeque<pb::TaskEvent>,
    /// When the coordinator last acknowledged something of this task (or
    /// its events were last sent again).
    progress_at: Instant,
}

struct Inner {
    tasks: BTreeMap<Uuid, TaskSpool>,
    outbox: Option<UnboundedSender<pb::AgentMessage>>,
}

pub struct Spool {
    dir: PathBuf,
    inner: Mutex<Inner>,
}

fn event_message(ev: pb::TaskEvent) -> pb::AgentMessage {
    pb::AgentMessage {
        msg: Some(pb::agent_message::Msg::TaskEvent(ev)),
    }
}

fn is_finish(ev: &pb::TaskEvent) -> bool {
    matches!(
        ev.body.as_ref().and_then(|b| b.body.as_ref()),
        Some(pb::event_body::Body::TaskFinished(_))
    )
}

impl Spool {
    /// Opens the spool, loading every task in it. Tasks that had not
    /// finished were interrupted by a restart: they get a final `lost`
    /// event, so the coordinator hears what happened to them.
    pub fn open(state_dir: &Path) -> Result<Spool, FileError> {
        let dir = state_dir.join("spool");
        std::fs::create_dir_all(&dir).map_err(|e| FileError::io(&dir, e))?;
        let spool = Spool {
            dir: dir.clone(),
            inner: Mutex::new(Inner {
                tasks: BTreeMap::new(),
                outbox: None,
            }),
        };
        let entries = std::fs::read_dir(&dir).map_err(|e| FileError::io(&dir, e))?;
        let mut interrupted = Vec::new();
        for entry in entries.flatten() {
            let path = entry.path();
            let Some(task) = load_task(&path)? else {
                // Not a task directory we wrote, or created but never used.
                let _ = std::fs::remove_dir_all(&path);
                continue;
            };
            if !task.finished {
                interrupted.push(task.meta.task_id);
            }
            spool.lock().tasks.insert(task.meta.task_id, task);
        }
        for task_id in interrupted {
            tracing::warn!(%task_id, "task interrupted by an agent restart; reporting it lost");
            spool.finish(
                task_id,
                pb::TaskOutcome::Lost,
                LOST_ON_RESTART,
                String::new(),
            )?;
        }
        Ok(spool)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Whether the spool holds this task (any attempt).
    pub fn holds(&self, task_id: Uuid) -> bool {
        self.lock().tasks.contains_key(&task_id)
    }

    /// Starts spooling a new task. Returns false if it is already held.
    pub fn begin(&self, meta: TaskMeta) -> Result<bool, FileError> {
        let mut inner = self.lock();
        if inner.tasks.contains_key(&meta.task_id) {
            return Ok(false);
        }
        let dir = self.dir.join(meta.task_id.to_string());
        std::fs::create_dir_all(&dir).map_err(|e| FileError::io(&dir, e))?;
        let body = serde_json::to_vec(&meta).unwrap_or_default();
        fsutil::write_atomic(&dir.join("meta.json"), &body, Mode::Private, true)?;
        let log_path = dir.join("events.log");
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log_path)
            .map_err(|e| FileError::io(&log_path, e))?;
        inner.tasks.insert(
            meta.task_id,
            TaskSpool {
                meta,
                dir,
                log,
                last_seq: 0,
                acked: 0,
                finished: false,
                unacked: VecDeque::new(),
                progress_at: Instant::now(),
            },
        );
        Ok(true)
    }

    /// Appends the next event of a task and sends it if a session is
    /// attached. Returns its seq. Events after the task finished are refused.
    pub fn append(
        &self,
        task_id: Uuid,
        body: pb::event_body::Body,
    ) -> Result<Option<u64>, FileError> {
        let mut inner = self.lock();
        let Inner { tasks, outbox } = &mut *inner;
        let Some(task) = tasks.get_mut(&task_id) else {
            return Ok(None);
        };
        if task.finished {
            return Ok(None);
        }
        let ev = pb::TaskEvent {
            task_id: task_id.to_string(),
            attempt: task.meta.attempt,
            seq: task.last_seq + 1,
            at_ms: ferry_common::time::now_ms(),
            body: Some(pb::EventBody { body: Some(body) }),
        };
        let bytes = ev.encode_length_delimited_to_vec();
        let log_path = task.dir.join("events.log");
        task.log
            .write_all(&bytes)
            .map_err(|e| FileError::io(&log_path, e))?;
        task.last_seq = ev.seq;
        task.finished = is_finish(&ev);
        if task.finished {
            // The end of a task is worth an fsync.
            let _ = task.log.sync_data();
        }
        if let Some(tx) = outbox {
            let _ = tx.send(event_message(ev.clone()));
        }
        let seq = ev.seq;
        task.unacked.push_back(ev);
        Ok(Some(seq))
    }

    /// Appends the task's final event.
    pub fn finish(
        &self,
        task_id: Uuid,
        outcome: pb::TaskOutcome,
        message: &str,
        result_json: String,
    ) -> Result<(), FileError> {
        self.append(
            task_id,
            pb::event_body::Body::TaskFinished(pb::TaskFinished {
                outcome: outcome as i32,
                message: message.to_string(),
                result_json,
            }),
        )
        .map(|_| ())
    }

    /// The coordinator stored everything up to `seq`.
    pub fn ack(&self, task_id: Uuid, seq: u64) -> Result<(), FileError> {
        let mut inner = self.lock();
        let Some(task) = inner.tasks.get_mut(&task_id) else {
            return Ok(());
        };
        if seq <= task.acked {
            return Ok(());
        }
        task.acked = seq.min(task.last_seq);
        task.progress_at = Instant::now();
        while task.unacked.front().is_some_and(|e| e.seq <= task.acked) {
            task.unacked.pop_front();
        }
        if task.finished && task.acked == task.last_seq {
            let dir = task.dir.clone();
            inner.tasks.remove(&task_id);
            std::fs::remove_dir_all(&dir).map_err(|e| FileError::io(&dir, e))?;
        } else {
            let path = task.dir.join("acked");
            fsutil::write_atomic(
                &path,
                task.acked.to_string().as_bytes(),
                Mode::Private,
                true,
            )?;
        }
        Ok(())
    }

    /// What `Hello` reports.
    pub fn held(&self) -> Vec<pb::HeldTask> {
        self.lock()
            .tasks
            .values()
            .map(|t| pb::HeldTask {
                task_id: t.meta.task_id.to_string(),
                attempt: t.meta.attempt,
                last_seq: t.last_seq,
                finished: t.finished,
            })
            .collect()
    }

    /// Sends every unacknowledged event to `outbox`, in order, and every
    /// later event as it is appended, until [`Spool::detach`].
    pub fn attach(&self, outbox: UnboundedSender<pb::AgentMessage>) {
        let mut inner = self.lock();
        for task in inner.tasks.values() {
            for ev in &task.unacked {
                let _ = outbox.send(event_message(ev.clone()));
            }
        }
        inner.outbox = Some(outbox);
    }

    /// Sends again, on the live session, the unacknowledged events of every
    /// task the coordinator has acknowledged nothing of for `after`: a
    /// coordinator that failed to store a batch may otherwise wait for
    /// them until the next session. It stores each (task, seq) once, so a
    /// copy it already has is dropped there. Returns how many were sent.
    pub fn resend_stale(&self, after: Duration) -> usize {
        let mut inner = self.lock();
        let Inner { tasks, outbox } = &mut *inner;
        let Some(outbox) = outbox else {
            return 0;
        };
        let now = Instant::now();
        let mut sent = 0;
        for task in tasks.values_mut() {
            if task.unacked.is_empty() || now.duration_since(task.progress_at) < after {
                continue;
            }
            for ev in &task.unacked {
                let _ = outbox.send(event_message(ev.clone()));
                sent += 1;
            }
            task.progress_at = now;
        }
        sent
    }

    pub fn detach(&self) {
        self.lock().outbox = None;
    }

    /// Number of unacknowledged events, over all tasks.
    pub fn unacked_count(&self) -> usize {
        self.lock().tasks.values().map(|t| t.unacked.len()).sum()
    }
}

/// Reads one task directory. `None` if it has no usable meta.
fn load_task(dir: &Path) -> Result<Option<TaskSpool>, FileError> {
    let Ok(meta_text) = std::fs::read(dir.join("meta.json")) else {
        return Ok(None);
    };
    let Ok(meta) = serde_json::from_slice::<TaskMeta>(&meta_text) else {
        return Ok(None);
    };
    let log_path = dir.join("events.log");
    let bytes = std::fs::read(&log_path).unwrap_or_default();
    let mut events = Vec::new();
    let mut buf = bytes.as_slice();
    let mut good_len = 0usize;
    while !buf.is_empty() {
        match pb::TaskEvent::decode_length_delimited(&mut buf) {
            Ok(ev) => {
                good_len = bytes.len() - buf.len();
                events.push(ev);
            }
            // A torn last record (killed mid-write): drop it.
            Err(_) => break,
        }
    }
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&log_path)
        .map_err(|e| FileError::io(&log_path, e))?;
    log.set_len(good_len as u64)
        .map_err(|e| FileError::io(&log_path, e))?;
    let acked: u64 = std::fs::read_to_string(dir.join("acked"))
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(0);
    let last_seq = events.last().map_or(0, |e| e.seq);
    let finished = events.last().is_some_and(is_finish);
    let unacked = events.into_iter().filter(|e| e.seq > acked).collect();
    Ok(Some(TaskSpool {
        meta,
        dir: dir.to_path_buf(),
        log,
        last_seq,
        acked,
        finished,
        unacked,
        progress_at: Instant::now(),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn meta() -> TaskMeta {
        TaskMeta {
            task_id: Uuid::now_v7(),
            job_id: Uuid::now_v7(),
            attempt: 1,
            kind: "probe".into(),
        }
    }

    fn log(line: &str) -> pb::event_body::Body {
        pb::event_body::Body::Log(pb::LogLine {
            step: "s".into(),
            stream: "info".into(),
            line: line.into(),
        })
    }

    #[test]
    fn events_survive_a_restart_and_unfinished_tasks_become_lost() {
        let dir = tempfile::tempdir().unwrap();
        let m = meta();
        {
            let spool = Spool::open(dir.path()).unwrap();
            assert!(spool.begin(m.clone()).unwrap());
            assert!(!spool.begin(m.clone()).unwrap(), "a task is spooled once");
            for i in 0..5 {
                assert_eq!(
                    spool.append(m.task_id, log(&format!("line {i}"))).unwrap(),
                    Some(i + 1)
                );
            }
            spool.ack(m.task_id, 2).unwrap();
        }
        let spool = Spool::open(dir.path()).unwrap();
        let held = spool.held();
        assert_eq!(held.len(), 1);
        assert_eq!(
            (held[0].last_seq, held[0].finished),
            (6, true),
            "restart appends a lost event"
        );
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        spool.attach(tx);
        let mut seqs = Vec::new();
        while let Ok(m) = rx.try_recv() {
            if let Some(pb::agent_message::Msg::TaskEvent(e)) = m.msg {
                seqs.push(e.seq);
            }
        }
        assert_eq!(
            seqs,
            vec![3, 4, 5, 6],
            "only unacknowledged events are replayed"
        );
        spool.ack(m.task_id, 6).unwrap();
        assert!(spool.held().is_empty());
        assert!(
            !dir.path()
                .join("spool")
                .join(m.task_id.to_string())
                .exists()
        );
    }

    #[test]
    fn a_torn_last_record_is_dropped() {
        let dir = tempfile::tempdir().unwrap();
        let m = meta();
        {
            let spool = Spool::open(dir.path()).unwrap();
            spool.begin(m.clone()).unwrap();
            spool.append(m.task_id, log("a")).unwrap();
            spool
                .finish(m.task_id, pb::TaskOutcome::Succeeded, "done", String::new())
                .unwrap();
        }
        let path = dir
            .path()
            .join("spool")
            .join(m.task_id.to_string())
            .join("events.log");
        let mut bytes = std::fs::read(&path).unwrap();
        bytes.extend_from_slice(&[0x20, 0x01, 0x02]);
        std::fs::write(&path, bytes).unwrap();
        let spool = Spool::open(dir.path()).unwrap();
        let held = spool.held();
        assert_eq!((held[0].last_seq, held[0].finished), (2, true));
        assert_eq!(
            spool.append(m.task_id, log("late")).unwrap(),
            None,
            "no events after the end"
        );
    }
}
