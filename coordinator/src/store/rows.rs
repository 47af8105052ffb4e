//! What the two backends share, so a column means the same thing on SQLite
//! and on PostgreSQL: decoding rows into records, label JSON, the embedded
//! migrations, and the decisions behind refusals (which error a failed
//! enrollment, revoke or operator insert reports). What the job methods
//! share beyond decoding is in [`super::engine`].

use std::borrow::Cow;
use std::collections::BTreeMap;

use ferry_common::identity::Role;
use ferry_common::time::rfc3339_ms;
use sqlx::migrate::{Migration, MigrationType, Migrator};
use sqlx::{ColumnIndex, Decode, Row, SqlSafeStr, Type};
use uuid::Uuid;

use super::{
    AgentRecord, AuditEntry, JobEventRecord, JobRecord, JoinTokenRecord, NewAgent, NewJob, NewTask,
    OperatorRecord, SecretMeta, SecretRecord, StoreError, TaskRecord,
};
use crate::job::{JobStatus, TaskState};

/// The `meta` key whose presence records that the first admin was added;
/// it is never deleted, which is what makes the bootstrap happen only once.
pub(crate) const BOOTSTRAP_KEY: &str = "bootstrap_admin";

/// `created_by` of the bootstrapped admin: nobody created it through the API.
pub(crate) const SYSTEM_ACTOR: &str = "system";

/// A migration compiled into the binary (version, description, SQL), so an
/// installed coordinator needs no `migrations/` directory beside it.
pub(crate) type EmbeddedMigration = (i64, &'static str, &'static str);

pub(crate) fn migrator(migrations: &[EmbeddedMigration]) -> Migrator {
    Migrator::with_migrations(
        migrations
            .iter()
            .map(|&(version, description, sql)| {
                Migration::new(
                    version,
                    Cow::Borrowed(description),
                    MigrationType::Simple,
                    sql.into_sql_str(),
                    false,
                )
            })
            .collect(),
    )
}

/// Column access by name for the rows of either backend, so each record
/// type is decoded by one function instead of one per backend.
pub(crate) trait Columns {
    fn text(&self, column: &'static str) -> Result<String, StoreError>;
    fn opt_text(&self, column: &'static str) -> Result<Option<String>, StoreError>;
    fn int(&self, column: &'static str) -> Result<i64, StoreError>;
    fn opt_int(&self, column: &'static str) -> Result<Option<i64>, StoreError>;
    fn flag(&self, column: &'static str) -> Result<bool, StoreError>;
    fn bytes(&self, column: &'static str) -> Result<Vec<u8>, StoreError>;
}

impl<R> Columns for R
where
    R: Row,
    &'static str: ColumnIndex<R>,
    for<'r> String: Decode<'r, R::Database> + Type<R::Database>,
    for<'r> i64: Decode<'r, R::Database> + Type<R::Database>,
    for<'r> bool: Decode<'r, R::Database> + Type<R::Database>,
    for<'r> Vec<u8>: Decode<'r, R::Database> + Type<R::Database>,
{
    fn text(&self, column: &'static str) -> Result<String, StoreError> {
        Ok(self.try_get(column)?)
    }
    fn opt_text(&self, column: &'static str) -> Result<Option<String>, StoreError> {
        Ok(self.try_get(column)?)
    }
    fn int(&self, column: &'static str) -> Result<i64, StoreError> {
        Ok(self.try_get(column)?)
    }
    fn opt_int(&self, column: &'static str) -> Result<Option<i64>, StoreError> {
        Ok(self.try_get(column)?)
    }
    fn flag(&self, column: &'static str) -> Result<bool, StoreError> {
        Ok(self.try_get(column)?)
    }
    fn bytes(&self, column: &'static str) -> Result<Vec<u8>, StoreError> {
        Ok(self.try_get(column)?)
    }
}

/// Labels are one JSON object of strings; building a `Value` cannot fail,
/// unlike `serde_json::to_string`, so there is no error to invent here.
pub(crate) fn labels_json(labels: &BTreeMap<String, String>) -> String {
    serde_json::Value::Object(
        labels
            .iter()
            .map(|(k, v)| (k.clone(), serde_json::Value::String(v.clone())))
            .collect(),
    )
    .to_string()
}

/// A list of strings as one JSON array.
pub(crate) fn strings_json(values: &[String]) -> String {
    serde_json::Value::from(values.to_vec()).to_string()
}

fn strings(
    table: &'static str,
    column: &'static str,
    json: &str,
) -> Result<Vec<String>, StoreError> {
    serde_json::from_str(json).map_err(|e| StoreError::Corrupt {
        table,
        reason: format!("{column} {json:?}: {e}"),
    })
}

fn labels(table: &'static str, json: &str) -> Result<BTreeMap<String, String>, StoreError> {
    serde_json::from_str(json).map_err(|e| StoreError::Corrupt {
        table,
        reason: format!("labels_json {json:?}: {e}"),
    })
}

pub(crate) fn uuid(
    table: &'static str,
    column: &'static str,
    text: &str,
) -> Result<Uuid, StoreError> {
    Uuid::parse_str(text).map_err(|e| StoreError::Corrupt {
        table,
        reason: format!("{column} {text:?} is not a UUID: {e}"),
    })
}

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
        health_json: row.opt_text("health_json")?,
        capabilities: strings(TABLE, "capabilities_json", &row.text("capabilities_json")?)?,
    })
}

pub(crate) fn join_token(row: &impl Columns) -> Result<JoinTokenRecord, StoreError> {
    const TABLE: &str = "join_tokens";
    Ok(JoinTokenRecord {
        token_hash: row.text("token_hash")?,
        name: row.opt_text("name")?,
        labels: labels(TABLE, &row.text("labels_json")?)?,
        created_by: row.text("created_by")?,
        created_at_ms: row.int("created_at_ms")?,
        expires_at_ms: row.int("expires_at_ms")?,
        used_at_ms: row.opt_int("used_at_ms")?,
        used_by: row
            .opt_text("used_by")?
            .map(|text| uuid(TABLE, "used_by", &text))
            .transpose()?,
    })
}

pub(crate) fn operator(row: &impl Columns) -> Result<OperatorRecord, StoreError> {
    let role = row.text("role")?;
    Ok(OperatorRecord {
        name: row.text("name")?,
        role: role.parse::<Role>().map_err(|e| StoreError::Corrupt {
            table: "operators",
            reason: format!("role {role:?}: {e}"),
        })?,
        created_at_ms: row.int("created_at_ms")?,
        created_by: row.text("created_by")?,
        revoked_at_ms: row.opt_int("revoked_at_ms")?,
    })
}

pub(crate) fn audit_entry(row: &impl Columns) -> Result<AuditEntry, StoreError> {
    Ok(AuditEntry {
        at_ms: row.int("at_ms")?,
        actor: row.text("actor")?,
        action: row.text("action")?,
        target: row.text("target")?,
        detail: row.text("detail")?,
    })
}

/// A `secrets` row, sealed value included.
pub(crate) fn secret(row: &impl Columns) -> Result<SecretRecord, StoreError> {
    Ok(SecretRecord {
        app: row.text("app")?,
        env: row.text("env")?,
        name: row.text("name")?,
        nonce: row.bytes("nonce")?,
        ciphertext: row.bytes("ciphertext")?,
        created_at_ms: row.int("created_at_ms")?,
        updated_at_ms: row.int("updated_at_ms")?,
        updated_by: row.text("updated_by")?,
    })
}

/// A `secrets` row without its sealed value (listings never select it).
pub(crate) fn secret_meta(row: &impl Columns) -> Result<SecretMeta, StoreError> {
    Ok(SecretMeta {
        app: row.text("app")?,
        env: row.text("env")?,
        name: row.text("name")?,
        created_at_ms: row.int("created_at_ms")?,
        updated_at_ms: row.int("updated_at_ms")?,
        updated_by: row.text("updated_by")?,
    })
}

/// The token checks of `enroll_agent`, once the token row is locked. A token
/// expires at `expires_at_ms` itself, not a millisecond later.
pub(crate) fn check_token_usable(token: &JoinTokenRecord, now_ms: i64) -> Result<(), StoreError> {
    if let Some(used_at) = token.used_at_ms {
        return Err(StoreError::TokenUsed {
            used_at: rfc3339_ms(used_at),
        });
    }
    if now_ms >= token.expires_at_ms {
        return Err(StoreError::TokenExpired {
            expired_at: rfc3339_ms(token.expires_at_ms),
        });
    }
    Ok(())
}

/// The record `enroll_agent` inserted: a fresh agent was never seen and
/// holds no session yet.
pub(crate) fn enrolled(agent: &NewAgent, now_ms: i64) -> AgentRecord {
    AgentRecord {
        id: agent.id,
        name: agent.name.clone(),
        hostname: agent.hostname.clone(),
        labels: agent.labels.clone(),
        version: agent.version.clone(),
        enrolled_at_ms: now_ms,
        last_seen_ms: 0,
        connected_to: None,
        revoked_at_ms: None,
        cert_serial: agent.cert_serial.clone(),
        cert_not_after_ms: agent.cert_not_after_ms,
        health_json: None,
        capabilities: Vec::new(),
    }
}

/// Why `revoke_agent` changed nothing, given what the row holds now.
pub(crate) fn revoke_refusal(id: Uuid, existing: Option<AgentRecord>) -> StoreError {
    match existing {
        Some(agent) => StoreError::AgentAlreadyRevoked { name: agent.name },
        None => StoreError::AgentNotFound(id.to_string()),
    }
}

/// Why `add_operator` inserted nothing: the name is taken, for good if its
/// operator was revoked.
pub(crate) fn operator_refusal(name: &str, existing: Option<OperatorRecord>) -> StoreError {
    match existing {
        Some(op) if op.revoked_at_ms.is_some() => StoreError::OperatorRevoked { name: name.into() },
        _ => StoreError::OperatorExists { name: name.into() },
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

fn opt_uuid(
    table: &'static str,
    column: &'static str,
    text: Option<String>,
) -> Result<Option<Uuid>, StoreError> {
    text.map(|text| uuid(table, column, &text)).transpose()
}

/// Seqs, attempts and counters are never negative; SQL integers are signed.
fn unsigned<T: TryFrom<i64>>(
    table: &'static str,
    column: &'static str,
    value: i64,
) -> Result<T, StoreError> {
    T::try_from(value).map_err(|_| StoreError::Corrupt {
        table,
        reason: format!("{column} {value} is out of range"),
    })
}

pub(crate) fn parsed<T: std::str::FromStr<Err = String>>(
    table: &'static str,
    column: &'static str,
    text: &str,
) -> Result<T, StoreError> {
    text.parse().map_err(|e| StoreError::Corrupt {
        table,
        reason: format!("{column}: {e}"),
    })
}

/// An unsigned counter as an SQL integer; a seq beyond `i64::MAX` cannot
/// occur (it would take millennia of events), so saturating is no loss.
pub(crate) fn sql_int(value: u64) -> i64 {
    i64::try_from(value).unwrap_or(i64::MAX)
}

pub(crate) fn job(row: &impl Columns) -> Result<JobRecord, StoreError> {
    const TABLE: &str = "jobs";
    Ok(JobRecord {
        id: uuid(TABLE, "id", &row.text("id")?)?,
        kind: row.text("kind")?,
        spec_json: row.text("spec_json")?,
        target_json: row.text("target_json")?,
        status: parsed::<JobStatus>(TABLE, "status", &row.text("status")?)?,
        created_by: row.text("created_by")?,
        idempotency_key: row.opt_text("idempotency_key")?,
        created_at_ms: row.int("created_at_ms")?,
        updated_at_ms: row.int("updated_at_ms")?,
        finished_at_ms: row.opt_int("finished_at_ms")?,
        deadline_ms: row.int("deadline_ms")?,
        cancel_requested: row.flag("cancel_requested")?,
        last_seq: unsigned(TABLE, "last_seq", row.int("last_seq")?)?,
        traceparent: row.text("traceparent")?,
    })
}

pub(crate) fn task(row: &impl Columns) -> Result<TaskRecord, StoreError> {
    const TABLE: &str = "tasks";
    Ok(TaskRecord {
        id: uuid(TABLE, "id", &row.text("id")?)?,
        job_id: uuid(TABLE, "job_id", &row.text("job_id")?)?,
        agent_id: uuid(TABLE, "agent_id", &row.text("agent_id")?)?,
        agent_name: row.text("agent_name")?,
        state: parsed::<TaskState>(TABLE, "state", &row.text("state")?)?,
        attempt: unsigned(TABLE, "attempt", row.int("attempt")?)?,
        last_seq: unsigned(TABLE, "last_seq", row.int("last_seq")?)?,
        assigned_by: row.opt_text("assigned_by")?,
        started_at_ms: row.opt_int("started_at_ms")?,
        finished_at_ms: row.opt_int("finished_at_ms")?,
        message: row.text("message")?,
        result_json: row.opt_text("result_json")?,
        updated_at_ms: row.int("updated_at_ms")?,
    })
}

/// A task row with its agent's `last_seen_ms` as `agent_last_seen_ms`.
pub(crate) fn task_with_last_seen(row: &impl Columns) -> Result<(TaskRecord, i64), StoreError> {
    Ok((task(row)?, row.int("agent_last_seen_ms")?))
}

/// A `job_events` row joined with its task's `agent_name` (NULL for
/// job-level events).
/// A task's `id` and `agent_id`: what a claim looks at before it locks.
pub(crate) fn task_and_agent(row: &impl Columns) -> Result<(Uuid, Uuid), StoreError> {
    Ok((
        uuid("tasks", "id", &row.text("id")?)?,
        uuid("tasks", "agent_id", &row.text("agent_id")?)?,
    ))
}

/// A task's `job_id`.
pub(crate) fn agent_id(row: &impl Columns) -> Result<Uuid, StoreError> {
    uuid("agents", "id", &row.text("id")?)
}

pub(crate) fn task_job_id(row: &impl Columns) -> Result<Uuid, StoreError> {
    uuid("tasks", "job_id", &row.text("job_id")?)
}

pub(crate) fn job_event(row: &impl Columns) -> Result<JobEventRecord, StoreError> {
    const TABLE: &str = "job_events";
    Ok(JobEventRecord {
        job_id: uuid(TABLE, "job_id", &row.text("job_id")?)?,
        seq: unsigned(TABLE, "seq", row.int("seq")?)?,
        at_ms: row.int("at_ms")?,
        task_id: opt_uuid(TABLE, "task_id", row.opt_text("task_id")?)?,
        agent_name: row.opt_text("agent_name")?,
        task_seq: row
            .opt_int("task_seq")?
            .map(|seq| unsigned(TABLE, "task_seq", seq))
            .transpose()?,
        body: row.bytes("body")?,
    })
}

/// One `(state, count)` row of a job's tasks grouped by state.
pub(crate) fn state_count(row: &impl Columns) -> Result<(TaskState, u64), StoreError> {
    const TABLE: &str = "tasks";
    Ok((
        parsed::<TaskState>(TABLE, "state", &row.text("state")?)?,
        unsigned(TABLE, "count", row.int("n")?)?,
    ))
}

/// The record `create_job` inserted.
pub(crate) fn created_job(job: &NewJob) -> JobRecord {
    JobRecord {
        id: job.id,
        kind: job.kind.clone(),
        spec_json: job.spec_json.clone(),
        target_json: job.target_json.clone(),
        status: JobStatus::Pending,
        created_by: job.created_by.clone(),
        idempotency_key: job.idempotency_key.clone(),
        created_at_ms: job.created_at_ms,
        updated_at_ms: job.created_at_ms,
        finished_at_ms: None,
        deadline_ms: job.deadline_ms,
        cancel_requested: false,
        last_seq: 0,
        traceparent: job.traceparent.clone(),
    }
}

/// The record of a task as `start_job` inserts it.
pub(crate) fn created_task(job: &JobRecord, task: &NewTask) -> TaskRecord {
    TaskRecord {
        id: task.id,
        job_id: job.id,
        agent_id: task.agent_id,
        agent_name: task.agent_name.clone(),
        state: TaskState::Pending,
        attempt: 0,
        last_seq: 0,
        assigned_by: None,
        started_at_ms: None,
        finished_at_ms: None,
        message: String::new(),
        result_json: None,
        updated_at_ms: job.created_at_ms,
    }
}

/// `JobFilter::limit`, where 0 means the default.
pub(crate) fn job_list_limit(limit: u32) -> i64 {
    if limit == 0 { 50 } else { i64::from(limit) }
}
