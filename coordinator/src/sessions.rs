//! The live agent sessions on this coordinator: who is connected, the
//! channel to each, a way to end a session from elsewhere (revocation,
//! or the same agent connecting again), and what a session hands on for
//! storing ([`Inbound`]).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use ferry_proto::v1 as pb;
use tokio::sync::{mpsc, oneshot};
use tonic::Status;
use uuid::Uuid;

/// An event from an agent's session, waiting to be stored (the
/// scheduler's ingest loop drains these).
pub struct Inbound {
    pub agent: Uuid,
    pub event: pb::TaskEvent,
}

/// The open streams (watches) of each operator on this coordinator, so that
/// revoking an operator ends them at once.
#[derive(Debug, Default)]
pub struct OperatorStreams {
    inner: Mutex<HashMap<String, Vec<tokio_util::sync::CancellationToken>>>,
}

impl OperatorStreams {
    /// A token cancelled when `operator` is revoked here.
    pub fn open(&self, operator: &str) -> tokio_util::sync::CancellationToken {
        let token = tokio_util::sync::CancellationToken::new();
        let mut map = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        let list = map.entry(operator.to_string()).or_default();
        list.retain(|t| !t.is_cancelled());
        list.push(token.clone());
        token
    }

    /// Ends every open stream of `operator`; returns how many there were.
    pub fn revoke(&self, operator: &str) -> usize {
        let list = self
            .inner
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(operator)
            .unwrap_or_default();
        let n = list.iter().filter(|t| !t.is_cancelled()).count();
        for t in list {
            t.cancel();
        }
        n
    }
}

/// Messages to one agent's stream.
pub type Outbound = mpsc::Sender<Result<pb::CoordinatorMessage, Status>>;

struct Entry {
    session_id: Uuid,
    kill: Option<oneshot::Sender<Status>>,
    tx: Outbound,
    /// What the agent said in this session's `Hello`.
    hello: Arc<AgentHello>,
}

/// What an agent said of itself when its session opened.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct AgentHello {
    pub version: String,
    /// The job kinds it runs.
    pub capabilities: Vec<String>,
}

impl AgentHello {
    pub fn runs(&self, kind: &str) -> bool {
        self.capabilities.iter().any(|k| k == kind)
    }
}

#[derive(Default)]
pub struct SessionRegistry {
    inner: Mutex<HashMap<Uuid, Entry>>,
}

impl SessionRegistry {
    /// Registers session `session_id` for `agent`, ending any older one (the
    /// agent reconnected before the old stream was noticed as dead).
    /// Returns the receiver that ends this session with a status. Whatever
    /// is already queued on `tx` (the `Welcome`) reaches the agent before
    /// anything sent through the registry.
    pub fn register(
        &self,
        agent: Uuid,
        session_id: Uuid,
        tx: Outbound,
        hello: AgentHello,
    ) -> oneshot::Receiver<Status> {
        let (kill_tx, kill_rx) = oneshot::channel();
        let old = self.lock().insert(
            agent,
            Entry {
                session_id,
                kill: Some(kill_tx),
                tx,
                hello: Arc::new(hello),
            },
        );
        if let Some(Entry {
            kill: Some(kill), ..
        }) = old
        {
            let _ = kill.send(Status::aborted(
                "superseded by a newer session of the same agent",
            ));
        }
        kill_rx
    }

    /// Removes the session if it is still the agent's current one. Returns
    /// false if a newer session of the agent is registered: then the agent
    /// is still connected here, and its disconnect is not to be recorded.
    pub fn unregister(&self, agent: Uuid, session_id: Uuid) -> bool {
        let mut map = self.lock();
        match map.get(&agent) {
            Some(e) if e.session_id == session_id => {
                map.remove(&agent);
                true
            }
            Some(_) => false,
            None => true,
        }
    }

    /// Ends the agent's live session with `status`. Returns whether there was one.
    pub fn kill(&self, agent: Uuid, status: Status) -> bool {
        match self.lock().remove(&agent) {
            Some(Entry {
                kill: Some(kill), ..
            }) => kill.send(status).is_ok(),
            _ => false,
        }
    }

    /// Queues a message for the agent without waiting. False if it is not
    /// connected here or its queue is full (the caller falls back on the
    /// store: an unsent assignment is sent again on reconnect).
    pub fn send(&self, agent: Uuid, msg: pb::coordinator_message::Msg) -> bool {
        let tx = match self.lock().get(&agent) {
            Some(e) => e.tx.clone(),
            None => return false,
        };
        tx.try_send(Ok(pb::CoordinatorMessage { msg: Some(msg) }))
            .is_ok()
    }

    /// What the agent said in its live session here, if it has one.
    pub fn hello(&self, agent: Uuid) -> Option<Arc<AgentHello>> {
        self.lock().get(&agent).map(|e| Arc::clone(&e.hello))
    }

    pub fn is_online(&self, agent: Uuid) -> bool {
        self.lock().contains_key(&agent)
    }

    /// The agents with a live session here.
    pub fn agents(&self) -> Vec<Uuid> {
        self.lock().keys().copied().collect()
    }

    pub fn online_count(&self) -> usize {
        self.lock().len()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<Uuid, Entry>> {
        // A panic while holding this lock cannot leave the map inconsistent.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn newer_session_supersedes_older() {
        let reg = SessionRegistry::default();
        let a = Uuid::now_v7();
        let (tx, mut rx) = mpsc::channel(4);
        let (s1, s2) = (Uuid::now_v7(), Uuid::now_v7());
        let mut k1 = reg.register(a, s1, tx.clone(), AgentHello::default());
        let mut k2 = reg.register(a, s2, tx, AgentHello::default());
        assert_eq!(k1.try_recv().unwrap().code(), tonic::Code::Aborted);
        assert!(!reg.unregister(a, s1), "a newer session is live");
        assert!(
            reg.is_online(a),
            "unregistering a stale session must not drop the live one"
        );
        assert!(reg.send(a, pb::coordinator_message::Msg::Ack(pb::Ack::default())));
        assert!(rx.try_recv().is_ok());
        assert_eq!(reg.online_count(), 1);
        assert!(reg.kill(a, Status::permission_denied("revoked")));
        assert_eq!(k2.try_recv().unwrap().code(), tonic::Code::PermissionDenied);
        assert!(!reg.is_online(a));
        assert!(!reg.send(a, pb::coordinator_message::Msg::Ack(pb::Ack::default())));
        assert!(reg.unregister(a, s2), "killed: nothing newer is live");
        assert_eq!(reg.online_count(), 0);
    }
}
