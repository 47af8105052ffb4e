//! A simulated agent: the real agent's session protocol (`agent/src/session.rs`
//! and `agent/src/spool.rs`) without Docker, disks or executors, so ten
//! thousand of them fit in one process.
//!
//! What is imitated, because the figures depend on it:
//! - its own certificate and its own TCP + TLS connection
//!   ([`ferry_common::tls::channel`]), one `Session` stream on it;
//! - `Hello` with `held_tasks`; no deadline on the stream's response
//!   headers, then `Welcome` within 10 s; heartbeats at the interval
//!   `Welcome` asks for (the first one at once, as `tokio::time::interval`
//!   does in the real agent), unless the bench turns them off;
//! - a spool: every event is kept until a cumulative `Ack` covers it, all
//!   unacknowledged events are replayed when a session starts, and a task
//!   leaves the spool once it finished and everything is acknowledged;
//! - reconnects with [`FullJitter`] backoff (the real agent's base and cap),
//!   reset once a session got going.
//!
//! What is not: the spool lives in memory (the coordinator cannot tell), and
//! tasks do nothing by themselves. The bench decides which events a task
//! emits and when ([`SimAgent::emit`], [`SimAgent::finish`]), so a phase can
//! measure exactly what it wants.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use ferry_agent::session::{BACKOFF_BASE, BACKOFF_CAP};
use ferry_common::backoff::FullJitter;
use ferry_common::tls;
use ferry_proto::v1 as pb;
use ferry_proto::v1::agent_service_client::AgentServiceClient;
use tokio::sync::{Semaphore, mpsc};
use tokio_stream::wrappers::UnboundedReceiverStream;
use tokio_util::sync::CancellationToken;

/// How long the real agent waits for `Welcome` once the stream is open.
const WELCOME_TIMEOUT: Duration = Duration::from_secs(10);
/// Outer bound on TCP + TLS, above the channel's own 5 s connect timeout.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(15);

/// What the bench learns from its agents, stamped where it happened (in the
/// agent's task, on the bench's clock), so latencies do not include the
/// time the bench takes to look.
#[derive(Debug)]
pub enum HubEvent {
    Welcome {
        agent: usize,
        at: Instant,
    },
    Assign {
        agent: usize,
        job_id: String,
        task_id: String,
        at: Instant,
    },
}

/// Shared by every agent: the event channel to the bench and counters of
/// events emitted and acknowledged (an acknowledged event is stored), and
/// of session attempts that failed before `Welcome` (each one is work the
/// coordinator may have done for nothing).
#[derive(Debug)]
pub struct Hub {
    events: mpsc::UnboundedSender<HubEvent>,
    emitted: AtomicU64,
    acked: AtomicU64,
    failed_attempts: AtomicU64,
    /// Why attempts failed before `Welcome`, digits blanked so that alike
    /// reasons count together.
    failure_reasons: Mutex<BTreeMap<String, u64>>,
}

impl Hub {
    pub fn new() -> (Arc<Hub>, mpsc::UnboundedReceiver<HubEvent>) {
        let (events, rx) = mpsc::unbounded_channel();
        (
            Arc::new(Hub {
                events,
                emitted: AtomicU64::new(0),
                acked: AtomicU64::new(0),
                failed_attempts: AtomicU64::new(0),
                failure_reasons: Mutex::default(),
            }),
            rx,
        )
    }

    /// Events emitted so far, by every agent.
    pub fn emitted(&self) -> u64 {
        self.emitted.load(Ordering::Acquire)
    }

    /// Events acknowledged so far (each counted once, however often acked).
    pub fn acked(&self) -> u64 {
        self.acked.load(Ordering::Acquire)
    }

    /// Session attempts so far that ended before `Welcome`.
    pub fn failed_attempts(&self) -> u64 {
        self.failed_attempts.load(Ordering::Acquire)
    }

    /// The most frequent reasons of failed attempts since the last call,
    /// most frequent first: `(count, reason)`.
    pub fn take_failure_reasons(&self, most: usize) -> Vec<(u64, String)> {
        let reasons = std::mem::take(
            &mut *self
                .failure_reasons
                .lock()
                .unwrap_or_else(|p| p.into_inner()),
        );
        let mut reasons: Vec<(u64, String)> = reasons.into_iter().map(|(r, n)| (n, r)).collect();
        reasons.sort_by(|a, b| b.cmp(a));
        reasons.truncate(most);
        reasons
    }

    fn failed(&self, reason: &str) {
        self.failed_attempts.fetch_add(1, Ordering::AcqRel);
        let reason: String = reason
            .chars()
            .map(|c| if c.is_ascii_digit() { '#' } else { c })
            .take(160)
            .collect();
        *self
            .failure_reasons
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(reason)
            .or_default() += 1;
    }
}

/// How sessions are run; the same for every agent of a run.
#[derive(Debug, Clone)]
pub struct SessionParams {
    pub url: String,
    pub heartbeats: bool,
    /// Bounds connection attempts in flight for the *first* session only;
    /// reconnects after a loss are paced by backoff alone, as in real agents.
    pub first_connect_gate: Option<Arc<Semaphore>>,
}

/// One task in the spool.
#[derive(Debug)]
struct HeldTask {
    attempt: u32,
    last_seq: u64,
    acked: u64,
    finished: bool,
    unacked: VecDeque<pb::TaskEvent>,
}

#[derive(Debug, Default)]
struct Spool {
    tasks: BTreeMap<String, HeldTask>,
    /// Highest seq of tasks that left the spool (finished and acknowledged).
    done: HashMap<String, u64>,
    outbox: Option<mpsc::UnboundedSender<pb::AgentMessage>>,
}

/// An enrolled agent's identity.
#[derive(Debug, Clone)]
pub struct Identity {
    pub id: String,
    pub name: String,
    pub ca_pem: String,
    pub cert_pem: String,
    pub key_pem: String,
}

#[derive(Debug)]
pub struct SimAgent {
    pub index: usize,
    pub identity: Identity,
    hub: Arc<Hub>,
    spool: Mutex<Spool>,
    sessions: AtomicU64,
    last_error: Mutex<Option<String>>,
}

enum SessionEnd {
    Shutdown,
    Lost { established: bool, reason: String },
}

fn event_message(ev: pb::TaskEvent) -> pb::AgentMessage {
    pb::AgentMessage {
        msg: Some(pb::agent_message::Msg::TaskEvent(ev)),
    }
}

impl SimAgent {
    pub fn new(index: usize, identity: Identity, hub: Arc<Hub>) -> Arc<SimAgent> {
        Arc::new(SimAgent {
            index,
            identity,
            hub,
            spool: Mutex::new(Spool::default()),
            sessions: AtomicU64::new(0),
            last_error: Mutex::new(None),
        })
    }

    fn spool(&self) -> MutexGuard<'_, Spool> {
        self.spool.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Why the last session attempt failed or ended, if one did.
    pub fn last_error(&self) -> Option<String> {
        self.last_error
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    fn set_error(&self, reason: String) {
        *self.last_error.lock().unwrap_or_else(|p| p.into_inner()) = Some(reason);
    }

    /// Sessions established so far (Welcomes received).
    pub fn sessions(&self) -> u64 {
        self.sessions.load(Ordering::Acquire)
    }

    /// Appends the next event of `task_id` to the spool and sends it if a
    /// session is attached. Returns its seq, or `None` if the task is not
    /// held or already finished.
    pub fn emit(&self, task_id: &str, body: pb::event_body::Body) -> Option<u64> {
        let mut spool = self.spool();
        let Spool { tasks, outbox, .. } = &mut *spool;
        let task = tasks.get_mut(task_id)?;
        if task.finished {
            return None;
        }
        let finished = matches!(body, pb::event_body::Body::TaskFinished(_));
        let ev = pb::TaskEvent {
            task_id: task_id.to_string(),
            attempt: task.attempt,
            seq: task.last_seq + 1,
            at_ms: ferry_common::time::now_ms(),
            body: Some(pb::EventBody { body: Some(body) }),
        };
        task.last_seq = ev.seq;
        task.finished = finished;
        self.hub.emitted.fetch_add(1, Ordering::AcqRel);
        if let Some(tx) = outbox {
            let _ = tx.send(event_message(ev.clone()));
        }
        let seq = ev.seq;
        task.unacked.push_back(ev);
        Some(seq)
    }

    /// Ends `task_id` successfully (a probe's last event), with a result
    /// shaped like a real probe's.
    pub fn finish(&self, task_id: &str) -> Option<u64> {
        let result = serde_json::json!({
            "hostname": self.identity.name,
            "agent_version": ferry_common::VERSION,
            "docker": { "reachable": true, "version": "27.3.1" },
        });
        self.emit(
            task_id,
            pb::event_body::Body::TaskFinished(pb::TaskFinished {
                outcome: pb::TaskOutcome::Succeeded as i32,
                message: "probe complete".into(),
                result_json: result.to_string(),
            }),
        )
    }

    /// The highest seq produced for `task_id`, whether still held or not.
    pub fn produced(&self, task_id: &str) -> Option<u64> {
        let spool = self.spool();
        spool
            .tasks
            .get(task_id)
            .map(|t| t.last_seq)
            .or_else(|| spool.done.get(task_id).copied())
    }

    fn held(&self) -> Vec<pb::HeldTask> {
        self.spool()
            .tasks
            .iter()
            .map(|(id, t)| pb::HeldTask {
                task_id: id.clone(),
                attempt: t.attempt,
                last_seq: t.last_seq,
                finished: t.finished,
            })
            .collect()
    }

    /// Replays every unacknowledged event, then forwards new ones live.
    fn attach(&self, tx: &mpsc::UnboundedSender<pb::AgentMessage>) {
        let mut spool = self.spool();
        for task in spool.tasks.values() {
            for ev in &task.unacked {
                let _ = tx.send(event_message(ev.clone()));
            }
        }
        spool.outbox = Some(tx.clone());
    }

    fn detach(&self) {
        self.spool().outbox = None;
    }

    fn on_assign(&self, assign: pb::Assign, at: Instant) {
        let Some(task) = assign.task else { return };
        {
            let mut spool = self.spool();
            // The same task twice never runs twice (the real runner keys by
            // task id); neither does it count twice here.
            if spool.tasks.contains_key(&task.task_id) || spool.done.contains_key(&task.task_id) {
                return;
            }
            spool.tasks.insert(
                task.task_id.clone(),
                HeldTask {
                    attempt: assign.attempt,
                    last_seq: 0,
                    acked: 0,
                    finished: false,
                    unacked: VecDeque::new(),
                },
            );
        }
        let _ = self.hub.events.send(HubEvent::Assign {
            agent: self.index,
            job_id: task.job_id,
            task_id: task.task_id,
            at,
        });
    }

    fn on_ack(&self, ack: &pb::Ack) {
        let mut spool = self.spool();
        let Some(task) = spool.tasks.get_mut(&ack.task_id) else {
            return;
        };
        let upto = ack.seq.min(task.last_seq);
        if upto <= task.acked {
            return;
        }
        self.hub
            .acked
            .fetch_add(upto - task.acked, Ordering::AcqRel);
        task.acked = upto;
        while task.unacked.front().is_some_and(|e| e.seq <= upto) {
            task.unacked.pop_front();
        }
        if task.finished && task.acked == task.last_seq {
            let last = task.last_seq;
            spool.tasks.remove(&ack.task_id);
            spool.done.insert(ack.task_id.clone(), last);
        }
    }

    /// Keeps a session up until `shutdown`, reconnecting after every loss.
    pub async fn run(self: Arc<Self>, params: Arc<SessionParams>, shutdown: CancellationToken) {
        let mut backoff = FullJitter::new(BACKOFF_BASE, BACKOFF_CAP);
        loop {
            let gate = if self.sessions() == 0 {
                params.first_connect_gate.clone()
            } else {
                None
            };
            match self.session_once(&params, gate, &shutdown).await {
                SessionEnd::Shutdown => return,
                SessionEnd::Lost {
                    established,
                    reason,
                } => {
                    if established {
                        backoff.reset();
                    } else {
                        self.hub.failed(&reason);
                    }
                    self.set_error(reason);
                    let wait = backoff.next().unwrap_or(BACKOFF_CAP);
                    tokio::select! {
                        _ = shutdown.cancelled() => return,
                        _ = tokio::time::sleep(wait) => {}
                    }
                }
            }
        }
    }

    async fn session_once(
        &self,
        params: &SessionParams,
        gate: Option<Arc<Semaphore>>,
        shutdown: &CancellationToken,
    ) -> SessionEnd {
        let lost = |reason: String| SessionEnd::Lost {
            established: false,
            reason,
        };
        // Held until Welcome (or failure): the gate bounds handshakes and
        // Hellos in flight, not sessions.
        let permit = match gate {
            Some(gate) => tokio::select! {
                _ = shutdown.cancelled() => return SessionEnd::Shutdown,
                p = gate.acquire_owned() => p.ok(),
            },
            None => None,
        };
        let id = &self.identity;
        let config = match tls::client_config(
            &id.ca_pem,
            Some((id.cert_pem.as_str(), id.key_pem.as_str())),
        ) {
            Ok(c) => c,
            Err(e) => return lost(format!("client TLS config: {e}")),
        };
        let channel = tokio::select! {
            _ = shutdown.cancelled() => return SessionEnd::Shutdown,
            c = tokio::time::timeout(CONNECT_TIMEOUT, tls::channel(&params.url, config)) => match c {
                Ok(Ok(c)) => c,
                Ok(Err(e)) => return lost(e.to_string()),
                Err(_) => return lost(format!("no connection within {CONNECT_TIMEOUT:?}")),
            },
        };
        let mut client = AgentServiceClient::new(channel);
        let (tx, rx) = mpsc::unbounded_channel::<pb::AgentMessage>();
        let hello = pb::AgentMessage {
            msg: Some(pb::agent_message::Msg::Hello(pb::Hello {
                agent_id: id.id.clone(),
                version: ferry_common::VERSION.into(),
                capabilities: ferry_common::job::JobKind::ALL
                    .iter()
                    .map(|k| k.as_str().to_string())
                    .collect(),
                held_tasks: self.held(),
                hostname: id.name.clone(),
            })),
        };
        let _ = tx.send(hello);
        // Like the real agent: no deadline on the response headers (the
        // coordinator sends them once the session is set up, Welcome
        // already queued), then 10 s for Welcome. A stricter client would
        // give up on a busy coordinator and make it redo the work.
        let opened = tokio::select! {
            _ = shutdown.cancelled() => return SessionEnd::Shutdown,
            r = client.session(UnboundedReceiverStream::new(rx)) => r,
        };
        let mut inbound = match opened {
            Ok(r) => r.into_inner(),
            Err(status) => {
                return lost(format!("session refused: {}", tls::error_chain(&status)));
            }
        };
        let first = tokio::select! {
            _ = shutdown.cancelled() => return SessionEnd::Shutdown,
            m = tokio::time::timeout(WELCOME_TIMEOUT, inbound.message()) => m,
        };
        let welcome = match first {
            Ok(Ok(Some(pb::CoordinatorMessage {
                msg: Some(pb::coordinator_message::Msg::Welcome(w)),
            }))) => w,
            Ok(Err(status)) => {
                return lost(format!("session ended: {}", tls::error_chain(&status)));
            }
            Ok(Ok(_)) => return lost("the first message was not Welcome".into()),
            Err(_) => return lost(format!("no Welcome within {WELCOME_TIMEOUT:?}")),
        };
        let at = Instant::now();
        drop(permit);
        self.sessions.fetch_add(1, Ordering::AcqRel);
        let _ = self.hub.events.send(HubEvent::Welcome {
            agent: self.index,
            at,
        });
        self.attach(&tx);
        let _detach = Detach(self);
        let session_done = CancellationToken::new();
        let _stop_heartbeats = session_done.clone().drop_guard();
        if params.heartbeats {
            let interval = Duration::from_millis(u64::from(welcome.heartbeat_interval_ms.max(100)));
            tokio::spawn(heartbeats(tx.clone(), interval, session_done.clone()));
        }
        drop(tx);
        loop {
            let msg = tokio::select! {
                _ = shutdown.cancelled() => return SessionEnd::Shutdown,
                m = inbound.message() => m,
            };
            match msg {
                Ok(Some(m)) => match m.msg {
                    Some(pb::coordinator_message::Msg::Assign(a)) => {
                        self.on_assign(a, Instant::now())
                    }
                    Some(pb::coordinator_message::Msg::Ack(ack)) => self.on_ack(&ack),
                    Some(pb::coordinator_message::Msg::Cancel(_))
                    | Some(pb::coordinator_message::Msg::Welcome(_))
                    | None => {}
                },
                Ok(None) => {
                    return SessionEnd::Lost {
                        established: true,
                        reason: "coordinator closed the session".into(),
                    };
                }
                Err(status) => {
                    return SessionEnd::Lost {
                        established: true,
                        reason: format!("session lost: {}", tls::error_chain(&status)),
                    };
                }
            }
        }
    }
}

/// Stops forwarding spooled events when the session ends, however it ends.
struct Detach<'a>(&'a SimAgent);

impl Drop for Detach<'_> {
    fn drop(&mut self) {
        self.0.detach();
    }
}

/// Host health like a real agent's on a host with Docker and one disk, so
/// each heartbeat the coordinator stores has a realistic size.
fn health() -> pb::HostHealth {
    pb::HostHealth {
        docker_reachable: true,
        docker_version: "27.3.1".into(),
        docker_error: String::new(),
        postgres_configured: false,
        postgres_reachable: false,
        postgres_version: String::new(),
        postgres_error: String::new(),
        disks: vec![pb::DiskUsage {
            mount: "/".into(),
            free_bytes: 41_000_000_000,
            total_bytes: 80_000_000_000,
        }],
        observed_at_ms: ferry_common::time::now_ms(),
    }
}

async fn heartbeats(
    tx: mpsc::UnboundedSender<pb::AgentMessage>,
    interval: Duration,
    done: CancellationToken,
) {
    let mut ticker = tokio::time::interval(interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = done.cancelled() => return,
            _ = ticker.tick() => {}
        }
        let msg = pb::AgentMessage {
            msg: Some(pb::agent_message::Msg::Heartbeat(pb::Heartbeat {
                health: Some(health()),
                sent_at_ms: ferry_common::time::now_ms(),
            })),
        };
        if tx.send(msg).is_err() {
            return;
        }
    }
}
