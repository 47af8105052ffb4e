//! Rollout records: a release of an app to an environment, which is also
//! the (app, env) deploy lock while it runs (see
//! `migrations/*/0004_rollouts.sql`). What a rollout does is
//! `crate::rollout`'s; the store only keeps it and arbitrates who drives it.

use uuid::Uuid;

use super::db::query;
use super::rows::{Columns, parsed, uuid};
use super::{Store, StoreError};

pub use ferry_common::status::{RolloutKind, RolloutStatus};

/// One rollout as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RolloutRecord {
    pub id: Uuid,
    pub app: String,
    pub env: String,
    pub version: String,
    pub kind: RolloutKind,
    pub status: RolloutStatus,
    pub protected: bool,
    /// The `DeploySpec` every host gets, JSON.
    pub spec_json: String,
    /// `crate::rollout::Plan`, JSON.
    pub plan_json: String,
    pub previous_id: Option<Uuid>,
    pub previous_version: Option<String>,
    pub rollback_of: Option<Uuid>,
    /// `Vec<crate::rollout::Step>`, JSON.
    pub steps_json: String,
    pub message: String,
    pub created_by: String,
    pub created_at_ms: i64,
    pub updated_at_ms: i64,
    pub finished_at_ms: Option<i64>,
    /// The coordinator driving it.
    pub owner: Option<String>,
    pub lease_expires_at_ms: i64,
    pub traceparent: String,
    /// `ferry rollout cancel`: who asked (SPIFFE URI), and when. The
    /// driver stops starting steps once it sees it.
    pub cancel_requested_by: Option<String>,
    pub cancel_requested_at_ms: Option<i64>,
}

/// What the driving coordinator writes as a rollout proceeds. Writing it
/// also renews the lease; a final `status` releases the lock.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RolloutUpdate {
    pub steps_json: String,
    pub message: String,
    pub status: RolloutStatus,
    pub lease_expires_at_ms: i64,
}

fn rollout(row: &impl Columns) -> Result<RolloutRecord, StoreError> {
    const TABLE: &str = "rollouts";
    let opt_uuid = |column: &'static str| -> Result<Option<Uuid>, StoreError> {
        row.opt_text(column)?
            .map(|t| uuid(TABLE, column, &t))
            .transpose()
    };
    Ok(RolloutRecord {
        id: uuid(TABLE, "id", &row.text("id")?)?,
        app: row.text("app")?,
        env: row.text("env")?,
        version: row.text("version")?,
        kind: parsed::<RolloutKind>(TABLE, "kind", &row.text("kind")?)?,
        status: parsed::<RolloutStatus>(TABLE, "status", &row.text("status")?)?,
        protected: row.flag("protected")?,
        spec_json: row.text("spec_json")?,
        plan_json: row.text("plan_json")?,
        previous_id: opt_uuid("previous_id")?,
        previous_version: row.opt_text("previous_version")?,
        rollback_of: opt_uuid("rollback_of")?,
        steps_json: row.text("steps_json")?,
        message: row.text("message")?,
        created_by: row.text("created_by")?,
        created_at_ms: row.int("created_at_ms")?,
        updated_at_ms: row.int("updated_at_ms")?,
        finished_at_ms: row.opt_int("finished_at_ms")?,
        owner: row.opt_text("owner")?,
        lease_expires_at_ms: row.int("lease_expires_at_ms")?,
        traceparent: row.text("traceparent")?,
        cancel_requested_by: row.opt_text("cancel_requested_by")?,
        cancel_requested_at_ms: row.opt_int("cancel_requested_at_ms")?,
    })
}

/// The list limit: 0 means 20, and never more than 1000.
fn list_limit(limit: u32) -> i64 {
    match limit {
        0 => 20,
        n => i64::from(n.min(1000)),
    }
}

/// Whether an insert failed on a unique index (the deploy lock). Both
/// engines report it; sqlx tells which.
fn is_unique_violation(e: &StoreError) -> bool {
    matches!(e, StoreError::Database(sqlx::Error::Database(d)) if d.is_unique_violation())
}

impl Store {
    /// Inserts a `running` rollout owned by `rollout.owner`.
    /// `RolloutInProgress` (with the running one) if (app, env) already has
    /// a running rollout; nothing is written then.
    pub async fn create_rollout(&self, r: &RolloutRecord) -> Result<(), StoreError> {
        let inserted = query(
            "INSERT INTO rollouts (id, app, env, version, kind, status, protected, spec_json, \
             plan_json, previous_id, previous_version, rollback_of, steps_json, message, created_by, \
             created_at_ms, updated_at_ms, finished_at_ms, owner, lease_expires_at_ms, traceparent) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17, \
             $18, $19, $20, $21)",
        )
        .bind(r.id)
        .bind(&r.app)
        .bind(&r.env)
        .bind(&r.version)
        .bind(r.kind.as_str())
        .bind(r.status.as_str())
        .bind(r.protected)
        .bind(&r.spec_json)
        .bind(&r.plan_json)
        .bind(r.previous_id)
        .bind(r.previous_version.as_deref())
        .bind(r.rollback_of)
        .bind(&r.steps_json)
        .bind(&r.message)
        .bind(&r.created_by)
        .bind(r.created_at_ms)
        .bind(r.updated_at_ms)
        .bind(r.finished_at_ms)
        .bind(r.owner.as_deref())
        .bind(r.lease_expires_at_ms)
        .bind(&r.traceparent)
        .execute(&self.pool)
        .await;
        match inserted {
            Ok(_) => Ok(()),
            Err(e) if is_unique_violation(&e) => {
                let running =
                    query("SELECT * FROM rollouts WHERE app = $1 AND env = $2 AND status = $3")
                        .bind(&r.app)
                        .bind(&r.env)
                        .bind(RolloutStatus::Running.as_str())
                        .fetch_optional(&self.pool)
                        .await?;
                match running {
                    Some(row) => Err(StoreError::RolloutInProgress {
                        running: Box::new(rollout(&row)?),
                    }),
                    // Not the lock (the id was reused?), or it just ended.
                    None => Err(e),
                }
            }
            Err(e) => Err(e),
        }
    }

    pub async fn get_rollout(&self, id: Uuid) -> Result<Option<RolloutRecord>, StoreError> {
        query("SELECT * FROM rollouts WHERE id = $1")
            .bind(id)
            .fetch_optional(&self.pool)
            .await?
            .map(|row| rollout(&row))
            .transpose()
    }

    /// The rollouts of `app` (of one env, if given), newest first, at most
    /// `limit` (0 means 20).
    pub async fn list_rollouts(
        &self,
        app: &str,
        env: Option<&str>,
        limit: u32,
    ) -> Result<Vec<RolloutRecord>, StoreError> {
        query(
            "SELECT * FROM rollouts WHERE app = $1 AND (CAST($2 AS TEXT) IS NULL OR env = $2) \
             ORDER BY created_at_ms DESC, id DESC LIMIT $3",
        )
        .bind(app)
        .bind(env)
        .bind(list_limit(limit))
        .fetch_all(&self.pool)
        .await?
        .iter()
        .map(rollout)
        .collect()
    }

    /// Writes progress, renews the lease and, with a final status, ends the
    /// rollout (`finished_at_ms = now_ms`), which releases the lock. Only
    /// while it is `running` and owned by `owner`; returns whether it was
    /// (false: another coordinator took it over, stop driving it).
    pub async fn update_rollout(
        &self,
        id: Uuid,
        owner: &str,
        update: &RolloutUpdate,
        now_ms: i64,
    ) -> Result<bool, StoreError> {
        let finished = update.status.is_final().then_some(now_ms);
        let done = query(
            "UPDATE rollouts SET steps_json = $1, message = $2, status = $3, \
             finished_at_ms = $4, updated_at_ms = $5, lease_expires_at_ms = $6 \
             WHERE id = $7 AND owner = $8 AND status = $9",
        )
        .bind(&update.steps_json)
        .bind(&update.message)
        .bind(update.status.as_str())
        .bind(finished)
        .bind(now_ms)
        .bind(update.lease_expires_at_ms)
        .bind(id)
        .bind(owner)
        .bind(RolloutStatus::Running.as_str())
        .execute(&self.pool)
        .await?;
        Ok(done == 1)
    }

    /// Records `actor`'s request to cancel a running rollout; the first
    /// request is kept (a second changes nothing). Returns the rollout as
    /// stored afterwards (`None`: no such rollout); one that already ended
    /// is returned unchanged, without a request.
    pub async fn request_rollout_cancel(
        &self,
        id: Uuid,
        actor: &str,
        now_ms: i64,
    ) -> Result<Option<RolloutRecord>, StoreError> {
        query(
            "UPDATE rollouts SET cancel_requested_by = $1, cancel_requested_at_ms = $2 \
             WHERE id = $3 AND status = $4 AND cancel_requested_by IS NULL",
        )
        .bind(actor)
        .bind(now_ms)
        .bind(id)
        .bind(RolloutStatus::Running.as_str())
        .execute(&self.pool)
        .await?;
        self.get_rollout(id).await
    }

    /// Takes over every `running` rollout whose lease expired before
    /// `now_ms` (its coordinator died): `owner` and the lease become the
    /// caller's. Returns those taken.
    pub async fn claim_abandoned_rollouts(
        &self,
        owner: &str,
        now_ms: i64,
        lease_expires_at_ms: i64,
    ) -> Result<Vec<RolloutRecord>, StoreError> {
        query(
            "UPDATE rollouts SET owner = $1, lease_expires_at_ms = $2, updated_at_ms = $3 \
             WHERE status = $4 AND lease_expires_at_ms < $3 RETURNING *",
        )
        .bind(owner)
        .bind(lease_expires_at_ms)
        .bind(now_ms)
        .bind(RolloutStatus::Running.as_str())
        .fetch_all(&self.pool)
        .await?
        .iter()
        .map(rollout)
        .collect()
    }
}
