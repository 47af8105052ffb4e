//! Agents: the enrolled hosts, their sessions (which coordinator holds
//! each) and heartbeats. Enrollment itself, which consumes a join token, is
//! in [`super::tokens`].

use std::collections::BTreeMap;

use uuid::Uuid;

use super::db::{Arg, Ty, query};
use super::rows::{self, Columns, labels, strings, uuid};
use super::{Store, StoreError};

/// An enrolled agent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AgentRecord {
    pub id: Uuid,
    pub name: String,
    pub hostname: String,
    pub labels: BTreeMap<String, String>,
    pub version: String,
    pub enrolled_at_ms: i64,
    /// Last hello or heartbeat; 0 if never connected.
    pub last_seen_ms: i64,
    /// The coordinator holding its session, if any.
    pub connected_to: Option<String>,
    pub revoked_at_ms: Option<i64>,
    pub cert_serial: String,
    pub cert_not_after_ms: i64,
    /// The certificate the last renewal replaced, and when it did.
    pub previous_cert_serial: Option<String>,
    pub cert_renewed_at_ms: Option<i64>,
    /// Last reported host health (JSON of `ferry_proto::v1::HostHealth`'s
    /// serde mirror, opaque to the store).
    pub health_json: Option<String>,
    /// What the agent said it can do in its last `Hello`; empty until it
    /// first connects.
    pub capabilities: Vec<String>,
}

/// What an agent's `Hello` tells the store when its session opens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AgentHello<'a> {
    pub id: Uuid,
    /// The coordinator the session is on.
    pub coordinator_id: &'a str,
    pub version: &'a str,
    pub hostname: &'a str,
    pub capabilities: &'a [String],
    pub now_ms: i64,
}

/// One agent's latest heartbeat, as flushed to the store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Heartbeat {
    pub id: Uuid,
    pub seen_ms: i64,
    pub health_json: Option<String>,
}

impl Store {
    pub async fn get_agent(&self, id: Uuid) -> Result<Option<AgentRecord>, StoreError> {
        query("SELECT * FROM agents WHERE id = $1")
            .bind(id)
            .fetch_optional(&self.pool)
            .await?
            .map(|row| agent(&row))
            .transpose()
    }

    /// By id (if `name_or_id` parses as a UUID) or by name; by name, an
    /// unrevoked agent wins over revoked ones, then the newest.
    pub async fn find_agent(&self, name_or_id: &str) -> Result<Option<AgentRecord>, StoreError> {
        if let Ok(id) = Uuid::parse_str(name_or_id) {
            return self.get_agent(id).await;
        }
        query(
            "SELECT * FROM agents WHERE name = $1 \
             ORDER BY (revoked_at_ms IS NULL) DESC, enrolled_at_ms DESC, id DESC LIMIT 1",
        )
        .bind(name_or_id)
        .fetch_optional(&self.pool)
        .await?
        .map(|row| agent(&row))
        .transpose()
    }

    /// All agents, revoked ones included, ordered by name then enrollment.
    pub async fn list_agents(&self) -> Result<Vec<AgentRecord>, StoreError> {
        query("SELECT * FROM agents ORDER BY name, enrolled_at_ms, id")
            .fetch_all(&self.pool)
            .await?
            .iter()
            .map(agent)
            .collect()
    }

    /// The ids of the revoked agents, in id order: what the revocation
    /// sweep needs, without reading every agent.
    pub async fn revoked_agent_ids(&self) -> Result<Vec<Uuid>, StoreError> {
        query("SELECT id FROM agents WHERE revoked_at_ms IS NOT NULL ORDER BY id")
            .fetch_all(&self.pool)
            .await?
            .iter()
            .map(agent_id)
            .collect()
    }

    /// A session opened on `hello.coordinator_id`: records it, and the
    /// version, hostname and capabilities the agent sent (replacing those
    /// of its last session). `AgentNotFound` if the agent is unknown.
    pub async fn agent_connected(&self, hello: &AgentHello<'_>) -> Result<(), StoreError> {
        let updated = query(
            "UPDATE agents SET connected_to = $1, version = $2, hostname = $3, \
             capabilities_json = $4, last_seen_ms = $5 WHERE id = $6",
        )
        .bind(hello.coordinator_id)
        .bind(hello.version)
        .bind(hello.hostname)
        .bind(rows::strings_json(hello.capabilities))
        .bind(hello.now_ms)
        .bind(hello.id)
        .execute(&self.pool)
        .await?;
        agent_found(updated, hello.id)
    }

    /// Records a batch of heartbeats in one transaction: `last_seen_ms`
    /// (never moved backwards) and, when given, `health_json`. Unknown ids
    /// are ignored: heartbeats are buffered and flushed in batches, so the
    /// agent may be gone by then.
    ///
    /// Multi-row statements rather than one per agent: on SQLite the flush
    /// holds the one write lock, every 500 ms, and submits, claims and
    /// event batches wait behind it (a statement each was ~1,000 round
    /// trips to the database thread at 10,000 agents). Sorted by id, so
    /// concurrent flushes from several coordinators sharing a PostgreSQL
    /// store lock rows in the same order.
    pub async fn record_heartbeats(&self, beats: &[Heartbeat]) -> Result<(), StoreError> {
        if beats.is_empty() {
            return Ok(());
        }
        let mut sorted: Vec<&Heartbeat> = beats.iter().collect();
        sorted.sort_by_key(|b| b.id);
        let rows = sorted
            .into_iter()
            .map(|b| {
                vec![
                    Arg::from(b.id),
                    Arg::from(b.seen_ms),
                    Arg::from(b.health_json.as_deref()),
                ]
            })
            .collect();
        let mut tx = self.pool.begin().await?;
        tx.bulk(
            "b",
            &[("id", Ty::Text), ("seen", Ty::Int), ("health", Ty::Text)],
            rows,
            "UPDATE agents SET last_seen_ms = CASE WHEN b.seen > agents.last_seen_ms \
             THEN b.seen ELSE agents.last_seen_ms END, \
             health_json = coalesce(b.health, agents.health_json) FROM b WHERE agents.id = b.id",
        )
        .await?;
        tx.commit().await
    }

    /// A session closed; clears `connected_to` only if it is still
    /// `coordinator_id` (the agent may already be on another coordinator).
    pub async fn agent_disconnected(
        &self,
        id: Uuid,
        coordinator_id: &str,
        now_ms: i64,
    ) -> Result<(), StoreError> {
        query(
            "UPDATE agents SET connected_to = NULL, \
             last_seen_ms = CASE WHEN last_seen_ms > $1 THEN last_seen_ms ELSE $1 END \
             WHERE id = $2 AND connected_to = $3",
        )
        .bind(now_ms)
        .bind(id)
        .bind(coordinator_id)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// The agent's certificate is now `serial`; the one it replaces is
    /// kept as `previous_cert_serial`, renewed at `now_ms`.
    pub async fn agent_cert_renewed(
        &self,
        id: Uuid,
        serial: &str,
        not_after_ms: i64,
        now_ms: i64,
    ) -> Result<(), StoreError> {
        let updated = query(
            "UPDATE agents SET previous_cert_serial = cert_serial, cert_serial = $1, \
             cert_not_after_ms = $2, cert_renewed_at_ms = $3 WHERE id = $4",
        )
        .bind(serial)
        .bind(not_after_ms)
        .bind(now_ms)
        .bind(id)
        .execute(&self.pool)
        .await?;
        agent_found(updated, id)
    }

    /// Marks the agent revoked (`AgentNotFound`, `AgentAlreadyRevoked`).
    pub async fn revoke_agent(&self, id: Uuid, now_ms: i64) -> Result<AgentRecord, StoreError> {
        let revoked = query(
            "UPDATE agents SET revoked_at_ms = $1 WHERE id = $2 AND revoked_at_ms IS NULL RETURNING *",
        )
        .bind(now_ms)
        .bind(id)
        .fetch_optional(&self.pool)
        .await?;
        match revoked {
            Some(row) => agent(&row),
            None => Err(revoke_refusal(id, self.get_agent(id).await?)),
        }
    }
}

// --- decoding -----------------------------------------------------------

pub(crate) fn agent(row: &impl Columns) -> Result<AgentRecord, StoreError> {
    const TABLE: &str = "agents";
    Ok(AgentRecord {
        id: uuid(TABLE, "id", &row.text("id")?)?,
        name: row.text("name")?,
        hostname: row.text("hostname")?,
        labels: labels(TABLE, &row.text("labels_json")?)?,
        version: row.text("version")?,
        enrolled_at_ms: row.int("enrolled_at_ms")?,
        last_seen_ms: row.int("last_seen_ms")?,
        connected_to: row.opt_text("connected_to")?,
        revoked_at_ms: row.opt_int("revoked_at_ms")?,
        cert_serial: row.text("cert_serial")?,
        cert_not_after_ms: row.int("cert_not_after_ms")?,
        previous_cert_serial: row.opt_text("previous_cert_serial")?,
        cert_renewed_at_ms: row.opt_int("cert_renewed_at_ms")?,
        health_json: row.opt_text("health_json")?,
        capabilities: strings(TABLE, "capabilities_json", &row.text("capabilities_json")?)?,
    })
}

/// Why `revoke_agent` changed nothing, given what the row holds now.
pub(crate) fn revoke_refusal(id: Uuid, existing: Option<AgentRecord>) -> StoreError {
    match existing {
        Some(agent) => StoreError::AgentAlreadyRevoked { name: agent.name },
        None => StoreError::AgentNotFound(id.to_string()),
    }
}

/// An update of one agent by id touched no row: there is no such agent.
pub(crate) fn agent_found(rows_affected: u64, id: Uuid) -> Result<(), StoreError> {
    if rows_affected == 0 {
        Err(StoreError::AgentNotFound(id.to_string()))
    } else {
        Ok(())
    }
}

/// A task's `job_id`.
pub(crate) fn agent_id(row: &impl Columns) -> Result<Uuid, StoreError> {
    uuid("agents", "id", &row.text("id")?)
}
