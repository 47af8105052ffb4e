//! What coordinators sharing a store tell each other, and how it travels
//! on PostgreSQL's `NOTIFY` channel (one process on SQLite hears only
//! itself; see [`super::meta`]).

use uuid::Uuid;

/// Something other coordinators sharing the store may need to act on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Notification {
    /// New pending tasks exist for this job: whoever holds their agents' sessions assigns them.
    JobSubmitted(Uuid),
    /// New events for this job: wake its watchers.
    JobEvents(Uuid),
    /// Tell `agent` (on whichever coordinator holds its session) to stop `task`.
    CancelTask { task: Uuid, agent: Uuid },
    /// Cut this agent's session wherever it is.
    AgentRevoked(Uuid),
    /// This process's listener lost its connection: notifications sent by
    /// other coordinators meanwhile are lost, so whatever waits on them
    /// must look at the store again. Raised locally, never sent.
    Missed,
}

/// The `NOTIFY` channel coordinators sharing a PostgreSQL store talk on.
pub(crate) const NOTIFY_CHANNEL: &str = "ferry_events";

/// The text sent with `NOTIFY`: `submitted:<job>`, `events:<job>`,
/// `cancel:<task>:<agent>` or `revoked:<agent>`.
pub(crate) fn notification_payload(notification: &Notification) -> String {
    match notification {
        Notification::JobSubmitted(job) => format!("submitted:{job}"),
        Notification::JobEvents(job) => format!("events:{job}"),
        Notification::CancelTask { task, agent } => format!("cancel:{task}:{agent}"),
        Notification::AgentRevoked(agent) => format!("revoked:{agent}"),
        // Local only: no coordinator accepts it from the channel.
        Notification::Missed => "missed:".to_string(),
    }
}

/// The notification a payload of [`notification_payload`] stands for;
/// `None` for anything else on the channel.
pub(crate) fn parse_notification(payload: &str) -> Option<Notification> {
    let (kind, rest) = payload.split_once(':')?;
    let id = |text: &str| Uuid::parse_str(text).ok();
    match kind {
        "submitted" => id(rest).map(Notification::JobSubmitted),
        "events" => id(rest).map(Notification::JobEvents),
        "cancel" => {
            let (task, agent) = rest.split_once(':')?;
            Some(Notification::CancelTask {
                task: id(task)?,
                agent: id(agent)?,
            })
        }
        "revoked" => id(rest).map(Notification::AgentRevoked),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn notification_payloads_round_trip() {
        let (a, b) = (Uuid::now_v7(), Uuid::now_v7());
        for n in [
            Notification::JobSubmitted(a),
            Notification::JobEvents(a),
            Notification::CancelTask { task: a, agent: b },
            Notification::AgentRevoked(b),
        ] {
            assert_eq!(parse_notification(&notification_payload(&n)), Some(n));
        }
        assert_eq!(
            parse_notification(&notification_payload(&Notification::Missed)),
            None,
            "a peer cannot make others think they missed something"
        );
        for junk in ["", "submitted", "submitted:nope", "cancel:x", "other:1"] {
            assert_eq!(parse_notification(junk), None, "{junk:?}");
        }
    }
}
