//! Store records to wire messages.

use ferry_common::health::HostHealth;
use ferry_proto::v1 as pb;

use crate::agents::AgentState;
use crate::store::{AgentRecord, OperatorRecord, SecretMeta};

pub fn agent_state(s: AgentState) -> pb::AgentState {
    match s {
        AgentState::Online => pb::AgentState::Online,
        AgentState::Offline => pb::AgentState::Offline,
        AgentState::Revoked => pb::AgentState::Revoked,
    }
}

pub fn agent(a: AgentRecord, state: AgentState) -> pb::Agent {
    let health = a
        .health_json
        .as_deref()
        .and_then(|j| serde_json::from_str::<HostHealth>(j).ok())
        .map(Into::into);
    pb::Agent {
        id: a.id.to_string(),
        name: a.name,
        state: agent_state(state) as i32,
        labels: a.labels.into_iter().collect(),
        last_seen_ms: a.last_seen_ms,
        version: a.version,
        hostname: a.hostname,
        enrolled_at_ms: a.enrolled_at_ms,
        health,
        revoked_at_ms: a.revoked_at_ms.unwrap_or(0),
        capabilities: a.capabilities,
    }
}

pub fn operator(o: OperatorRecord) -> pb::Operator {
    pb::Operator {
        name: o.name,
        role: pb::Role::from(o.role) as i32,
        created_at_ms: o.created_at_ms,
        created_by: o.created_by,
        revoked_at_ms: o.revoked_at_ms.unwrap_or(0),
    }
}

/// A secret's metadata; there is no value to convert, by construction.
pub fn secret(s: SecretMeta) -> pb::Secret {
    pb::Secret {
        app: s.app,
        env: s.env,
        name: s.name,
        created_at_ms: s.created_at_ms,
        updated_at_ms: s.updated_at_ms,
        updated_by: s.updated_by,
    }
}
