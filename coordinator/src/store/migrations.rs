//! Migration runs (`ferry migrate`): at most one migrate job per (app, env,
//! database) at a time across the whole fleet, on both backends.
//!
//! A run is claimed by [`Store::claim_migration`]: in one transaction, the
//! row of a run that has ended (its job final, its task lost, or a claim
//! that never got a job within a minute) is dropped, and the new row is
//! inserted unless one is still there (the primary key decides; on
//! PostgreSQL a concurrent claim waits on the key and then finds the row).
//! The claim names its job once submitted ([`Store::set_migration_job`]),
//! and is released when the job's task finishes (`on_task_finished`, in the
//! transaction storing that) or by [`Store::release_migration`] when the
//! submission failed. A run whose job ends any other way (cancelled before
//! its task started, lost) never blocks the next claim: its row counts as
//! ended.

use uuid::Uuid;

use super::db::{On, query};
use super::rows::Columns;
use super::{Store, StoreError};

/// A claim with no job after this long was left by a coordinator that
/// stopped between claiming and submitting.
pub const UNSUBMITTED_CLAIM_MS: i64 = 60_000;

/// A run holding (app, env, database).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MigrationClaim {
    pub app: String,
    pub env: String,
    pub database: String,
    pub job_id: Option<Uuid>,
    pub claimed_by: String,
    pub claimed_at_ms: i64,
}

fn claim(row: &impl Columns) -> Result<MigrationClaim, StoreError> {
    Ok(MigrationClaim {
        app: row.text("app")?,
        env: row.text("env")?,
        database: row.text("database_name")?,
        job_id: row
            .opt_text("job_id")?
            .map(|t| super::rows::uuid("migration_runs", "job_id", &t))
            .transpose()?,
        claimed_by: row.text("claimed_by")?,
        claimed_at_ms: row.int("claimed_at_ms")?,
    })
}

/// Drops the claim of `job_id` (its task finished).
pub(crate) async fn release_job<'c>(on: impl Into<On<'c>>, job_id: Uuid) -> Result<(), StoreError> {
    query("DELETE FROM migration_runs WHERE job_id = $1")
        .bind(job_id.to_string())
        .execute(on)
        .await?;
    Ok(())
}

impl Store {
    /// Claims (app, env, database) for a new run. `Err(MigrationRunning)`
    /// names the run that holds it.
    pub async fn claim_migration(
        &self,
        app: &str,
        env: &str,
        database: &str,
        actor: &str,
        now_ms: i64,
    ) -> Result<(), StoreError> {
        let mut tx = self.pool.begin().await?;
        query(
            "DELETE FROM migration_runs WHERE app = $1 AND env = $2 AND database_name = $3 AND ( \
               (job_id IS NULL AND claimed_at_ms < $4) \
               OR job_id IN (SELECT id FROM jobs WHERE status IN ('succeeded', 'failed', 'cancelled')) \
               OR job_id IN (SELECT job_id FROM tasks WHERE state IN ('lost', 'expired')))",
        )
        .bind(app)
        .bind(env)
        .bind(database)
        .bind(now_ms - UNSUBMITTED_CLAIM_MS)
        .execute(&mut tx)
        .await?;
        let inserted = query(
            "INSERT INTO migration_runs (app, env, database_name, job_id, claimed_by, claimed_at_ms) \
             VALUES ($1, $2, $3, NULL, $4, $5) ON CONFLICT (app, env, database_name) DO NOTHING",
        )
        .bind(app)
        .bind(env)
        .bind(database)
        .bind(actor)
        .bind(now_ms)
        .execute(&mut tx)
        .await?;
        if inserted == 1 {
            return tx.commit().await;
        }
        let holder = query(
            "SELECT * FROM migration_runs WHERE app = $1 AND env = $2 AND database_name = $3",
        )
        .bind(app)
        .bind(env)
        .bind(database)
        .fetch_optional(&mut tx)
        .await?
        .as_ref()
        .map(claim)
        .transpose()?;
        tx.commit().await?;
        Err(match holder {
            Some(running) => StoreError::MigrationRunning {
                running: Box::new(running),
            },
            // Released between the insert and the read: a retry gets it.
            None => StoreError::MigrationRunning {
                running: Box::new(MigrationClaim {
                    app: app.into(),
                    env: env.into(),
                    database: database.into(),
                    job_id: None,
                    claimed_by: "another operator".into(),
                    claimed_at_ms: now_ms,
                }),
            },
        })
    }

    /// Names the job of the claim on (app, env, database).
    pub async fn set_migration_job(
        &self,
        app: &str,
        env: &str,
        database: &str,
        job_id: Uuid,
    ) -> Result<(), StoreError> {
        query(
            "UPDATE migration_runs SET job_id = $4 WHERE app = $1 AND env = $2 AND database_name = $3 AND job_id IS NULL",
        )
        .bind(app)
        .bind(env)
        .bind(database)
        .bind(job_id.to_string())
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Drops the claim on (app, env, database) that has no job yet (its
    /// submission failed).
    pub async fn release_migration(
        &self,
        app: &str,
        env: &str,
        database: &str,
    ) -> Result<(), StoreError> {
        query(
            "DELETE FROM migration_runs WHERE app = $1 AND env = $2 AND database_name = $3 AND job_id IS NULL",
        )
        .bind(app)
        .bind(env)
        .bind(database)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// The claims held now, by app, env and database.
    pub async fn migration_claims(&self) -> Result<Vec<MigrationClaim>, StoreError> {
        query("SELECT * FROM migration_runs ORDER BY app, env, database_name")
            .fetch_all(&self.pool)
            .await?
            .iter()
            .map(claim)
            .collect()
    }
}
