//! The backup catalogue: every backup an agent made, where its file is,
//! its checksum, why it was taken, when it expires and how its last
//! verification went; and each (app, env)'s database settings from the
//! last app file the coordinator was given.
//!
//! A backup is catalogued by [`catalogue`], which the job methods call in
//! the transaction that stores a `backup` task's success, from the task's
//! result (the manifest): a backup the catalogue lists is one whose task
//! succeeded, and a failed task leaves the catalogue unchanged. A `prune`
//! task's success removes what it deleted, in the same way.

use ferry_common::job::{
    BackupManifest, BackupSpec, KindSpec, MigrateReport, MigrateSpec, PruneReport, PruneSpec,
    VerifySpec,
};
use ferry_common::status::{BackupReason, VerifyResult};
use uuid::Uuid;

use super::db::{On, Tx, query};
use super::rows::{self, Columns};
use super::{Store, StoreError};

/// A pre-deploy backup is for undoing that deploy: a week is plenty.
pub const PRE_DEPLOY_KEEP_MS: i64 = 7 * 24 * 3_600_000;
const DAY_MS: i64 = 24 * 3_600_000;

/// One catalogued backup.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BackupRecord {
    /// The id of the task that made it.
    pub id: Uuid,
    pub job_id: Uuid,
    /// The agent holding the file.
    pub host: String,
    pub app: String,
    pub env: String,
    pub database: String,
    /// A tenant database of `database` (its name on the server), for the
    /// pre-migration backups of tenants; none: `database` itself.
    pub tenant: Option<String>,
    pub engine: String,
    pub path: String,
    pub size_bytes: u64,
    pub sha256: String,
    pub reason: BackupReason,
    pub created_at_ms: i64,
    pub expires_at_ms: Option<i64>,
    pub verified_at_ms: Option<i64>,
    pub verify_result: Option<VerifyResult>,
    pub verify_message: String,
    /// The manifest as the agent wrote it.
    pub manifest_json: String,
}

impl BackupRecord {
    pub fn manifest(&self) -> Result<BackupManifest, String> {
        BackupManifest::from_json(&self.manifest_json)
    }
}

/// Which backups a listing shows; `None` matches any.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct BackupFilter {
    pub app: Option<String>,
    pub env: Option<String>,
    pub database: Option<String>,
}

/// `[databases.NAME]` of the last app file given for (app, env).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DatabaseSettings {
    pub app: String,
    pub env: String,
    pub name: String,
    /// `ferry_common::appfile::Database` as JSON.
    pub settings_json: String,
    pub updated_at_ms: i64,
}

/// When a backup taken at `created_at_ms` for `reason` expires, given its
/// database's settings (`keep_days` of `[databases.NAME.backup]`).
pub fn expiry(
    reason: BackupReason,
    created_at_ms: i64,
    settings_json: Option<&str>,
) -> Option<i64> {
    match reason {
        BackupReason::PreDeploy => Some(created_at_ms + PRE_DEPLOY_KEEP_MS),
        // Kept until a later backup of the database has been verified.
        BackupReason::PreMigration => None,
        BackupReason::Manual | BackupReason::Scheduled => {
            let settings: serde_json::Value = serde_json::from_str(settings_json?).ok()?;
            let days = settings.get("backup")?.get("keep_days")?.as_i64()?;
            Some(created_at_ms + days * DAY_MS)
        }
    }
}

/// What the job methods pass about a task that just finished.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Finished<'a> {
    pub task_id: Uuid,
    pub job_id: Uuid,
    pub host: &'a str,
    pub succeeded: bool,
    /// Cancelled (neither succeeded nor failed): only a `migrate` task's
    /// end is acted on then (its claim, the backups it took before).
    pub cancelled: bool,
    pub message: &'a str,
    pub result_json: Option<&'a str>,
}

/// Called by the job methods, in the transaction that stores a task's
/// success or failure: a `backup` task's success catalogues the backup its
/// result describes; a `verify` task's end records the verification of its
/// backup. Other kinds change nothing here.
pub(crate) async fn on_task_finished(
    tx: &mut Tx,
    task: Finished<'_>,
    now_ms: i64,
) -> Result<(), StoreError> {
    let Some(row) = query("SELECT kind, spec_json FROM jobs WHERE id = $1")
        .bind(task.job_id.to_string())
        .fetch_optional(&mut *tx)
        .await?
    else {
        return Ok(());
    };
    let kind = row.text("kind")?;
    if task.cancelled && kind != MigrateSpec::NAME {
        return Ok(());
    }
    if kind == BackupSpec::NAME && task.succeeded {
        let manifest = match BackupManifest::from_json(task.result_json.unwrap_or_default()) {
            Ok(m) => m,
            Err(e) => {
                tracing::error!(task_id = %task.task_id, error = %e, "a backup task succeeded without a manifest; not catalogued");
                return Ok(());
            }
        };
        let raw = task.result_json.unwrap_or_default().to_string();
        catalogue(tx, task, task.task_id, &manifest, raw, now_ms).await
    } else if kind == MigrateSpec::NAME {
        // The run is over: the next one may start. Its pre-migration
        // backups (taken also when a database then failed) are catalogued.
        super::migrations::release_job(&mut *tx, task.job_id).await?;
        let Some(json) = task.result_json.filter(|j| !j.is_empty()) else {
            return Ok(());
        };
        let report = match MigrateReport::from_json(json) {
            Ok(r) => r,
            Err(e) => {
                tracing::error!(task_id = %task.task_id, error = %e, "a migrate task's report does not parse; its backups are not catalogued");
                return Ok(());
            }
        };
        for manifest in &report.backups {
            let Ok(id) = Uuid::parse_str(&manifest.id) else {
                tracing::error!(task_id = %task.task_id, id = %manifest.id, "a pre-migration backup without a uuid; not catalogued");
                continue;
            };
            let raw = serde_json::to_string(manifest).unwrap_or_default();
            catalogue(tx, task, id, manifest, raw, now_ms).await?;
        }
        Ok(())
    } else if kind == PruneSpec::NAME && task.succeeded {
        // What the agent deleted leaves the catalogue; a missing file stays
        // listed (its task reported it).
        let report: PruneReport = match serde_json::from_str(task.result_json.unwrap_or("{}")) {
            Ok(r) => r,
            Err(e) => {
                tracing::error!(task_id = %task.task_id, error = %e, "a prune task's result does not parse");
                return Ok(());
            }
        };
        for id in &report.deleted {
            query("DELETE FROM backups WHERE id = $1")
                .bind(id)
                .execute(&mut *tx)
                .await?;
        }
        Ok(())
    } else if kind == VerifySpec::NAME {
        let spec: VerifySpec = match serde_json::from_str(&row.text("spec_json")?) {
            Ok(s) => s,
            Err(e) => {
                tracing::error!(task_id = %task.task_id, error = %e, "a verify job's spec does not parse");
                return Ok(());
            }
        };
        let Ok(backup_id) = Uuid::parse_str(&spec.backup_id) else {
            return Ok(());
        };
        let result = if task.succeeded {
            VerifyResult::Passed
        } else {
            VerifyResult::Failed
        };
        set_verification(&mut *tx, backup_id, now_ms, result, task.message).await?;
        Ok(())
    } else {
        Ok(())
    }
}

/// Catalogues backup `id` of `manifest`, made by `task` (a `backup` task's
/// result, or one of a `migrate` task's pre-migration backups). A result
/// that is not a manifest is logged by the caller, not catalogued: failing
/// the transaction would refuse the agent's events forever.
async fn catalogue(
    tx: &mut Tx,
    task: Finished<'_>,
    id: Uuid,
    manifest: &BackupManifest,
    manifest_json: String,
    now_ms: i64,
) -> Result<(), StoreError> {
    let (job_id, host) = (task.job_id, task.host);
    let settings = query(
        "SELECT settings_json FROM database_settings WHERE app = $1 AND env = $2 AND name = $3",
    )
    .bind(&manifest.app)
    .bind(&manifest.env)
    .bind(&manifest.database)
    .fetch_optional(&mut *tx)
    .await?
    .map(|row| row.text("settings_json"))
    .transpose()?;
    let record = BackupRecord {
        id,
        job_id,
        host: host.to_string(),
        app: manifest.app.clone(),
        env: manifest.env.clone(),
        database: manifest.database.clone(),
        tenant: manifest.tenant.clone(),
        engine: manifest.engine.as_str().to_string(),
        path: manifest.path.clone(),
        size_bytes: manifest.size_bytes,
        sha256: manifest.sha256.clone(),
        reason: manifest.reason,
        created_at_ms: now_ms,
        expires_at_ms: expiry(manifest.reason, now_ms, settings.as_deref()),
        verified_at_ms: None,
        verify_result: None,
        verify_message: String::new(),
        manifest_json,
    };
    insert(tx, &record).await
}

/// Replaces (app, env)'s database settings in `tx` (see
/// [`Store::put_database_settings`]); also used by
/// [`Store::apply_app_file`], which changes the schedules in the same
/// transaction.
pub(crate) async fn replace_database_settings(
    tx: &mut Tx,
    app: &str,
    env: &str,
    settings: &[(String, String)],
    now_ms: i64,
) -> Result<(), StoreError> {
    query("DELETE FROM database_settings WHERE app = $1 AND env = $2")
        .bind(app)
        .bind(env)
        .execute(&mut *tx)
        .await?;
    for (name, json) in settings {
        query(
            "INSERT INTO database_settings (app, env, name, settings_json, updated_at_ms) \
             VALUES ($1, $2, $3, $4, $5)",
        )
        .bind(app)
        .bind(env)
        .bind(name)
        .bind(json)
        .bind(now_ms)
        .execute(&mut *tx)
        .await?;
    }
    Ok(())
}

/// Records a verification's outcome; returns whether the backup exists.
async fn set_verification<'c>(
    on: impl Into<On<'c>>,
    id: Uuid,
    at_ms: i64,
    result: VerifyResult,
    message: &str,
) -> Result<bool, StoreError> {
    let n = query(
        "UPDATE backups SET verified_at_ms = $2, verify_result = $3, verify_message = $4 \
         WHERE id = $1",
    )
    .bind(id.to_string())
    .bind(at_ms)
    .bind(result.as_str())
    .bind(message)
    .execute(on)
    .await?;
    Ok(n == 1)
}

/// Inserts a record; one already catalogued under its id stays as it is
/// (a task's success is stored once, but this never fails a retry).
async fn insert<'c>(on: impl Into<On<'c>>, b: &BackupRecord) -> Result<(), StoreError> {
    query(
        "INSERT INTO backups (id, job_id, host, app, env, database_name, engine, path, size_bytes, \
         sha256, reason, created_at_ms, expires_at_ms, verified_at_ms, verify_result, \
         verify_message, manifest_json, tenant) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17, $18) \
         ON CONFLICT (id) DO NOTHING",
    )
    .bind(b.id.to_string())
    .bind(b.job_id.to_string())
    .bind(&b.host)
    .bind(&b.app)
    .bind(&b.env)
    .bind(&b.database)
    .bind(&b.engine)
    .bind(&b.path)
    .bind(rows::sql_int(b.size_bytes))
    .bind(&b.sha256)
    .bind(b.reason.as_str())
    .bind(b.created_at_ms)
    .bind(b.expires_at_ms)
    .bind(b.verified_at_ms)
    .bind(b.verify_result.map(VerifyResult::as_str))
    .bind(&b.verify_message)
    .bind(&b.manifest_json)
    .bind(b.tenant.as_deref())
    .execute(on)
    .await?;
    Ok(())
}

impl Store {
    /// Catalogues a backup directly (imports, tests); agents' backups are
    /// catalogued with their task's success.
    pub async fn add_backup(&self, record: &BackupRecord) -> Result<(), StoreError> {
        insert(&self.pool, record).await
    }

    pub async fn get_backup(&self, id: Uuid) -> Result<Option<BackupRecord>, StoreError> {
        query("SELECT * FROM backups WHERE id = $1")
            .bind(id.to_string())
            .fetch_optional(&self.pool)
            .await?
            .as_ref()
            .map(backup)
            .transpose()
    }

    /// Newest first, at most `limit`.
    pub async fn list_backups(
        &self,
        filter: &BackupFilter,
        limit: u32,
    ) -> Result<Vec<BackupRecord>, StoreError> {
        query(
            "SELECT * FROM backups WHERE (CAST($1 AS TEXT) IS NULL OR app = $1) \
             AND (CAST($2 AS TEXT) IS NULL OR env = $2) \
             AND (CAST($3 AS TEXT) IS NULL OR database_name = $3) \
             ORDER BY created_at_ms DESC, id DESC LIMIT $4",
        )
        .bind(filter.app.as_deref())
        .bind(filter.env.as_deref())
        .bind(filter.database.as_deref())
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await?
        .iter()
        .map(backup)
        .collect()
    }

    /// Records how a verification of backup `id` ended; returns whether
    /// the backup exists.
    pub async fn record_verification(
        &self,
        id: Uuid,
        at_ms: i64,
        result: VerifyResult,
        message: &str,
    ) -> Result<bool, StoreError> {
        set_verification(&self.pool, id, at_ms, result, message).await
    }

    /// Replaces (app, env)'s database settings with `settings` (name,
    /// JSON), as the last app file says: databases it no longer has go.
    pub async fn put_database_settings(
        &self,
        app: &str,
        env: &str,
        settings: &[(String, String)],
        now_ms: i64,
    ) -> Result<(), StoreError> {
        let mut tx = self.pool.begin().await?;
        replace_database_settings(&mut tx, app, env, settings, now_ms).await?;
        tx.commit().await
    }

    /// The newest catalogued backup of every database: (app, env,
    /// database, created_at_ms), for `/metrics`. A tenant's backup (taken
    /// before a migration) is not one of its main database.
    pub async fn newest_backups(&self) -> Result<Vec<(String, String, String, i64)>, StoreError> {
        query(
            "SELECT app, env, database_name, MAX(created_at_ms) AS newest FROM backups \
             WHERE tenant IS NULL \
             GROUP BY app, env, database_name ORDER BY app, env, database_name",
        )
        .fetch_all(&self.pool)
        .await?
        .iter()
        .map(|row| {
            Ok((
                row.text("app")?,
                row.text("env")?,
                row.text("database_name")?,
                row.int("newest")?,
            ))
        })
        .collect()
    }

    /// (app, env)'s database settings, by name.
    pub async fn database_settings(
        &self,
        app: &str,
        env: &str,
    ) -> Result<Vec<DatabaseSettings>, StoreError> {
        query("SELECT * FROM database_settings WHERE app = $1 AND env = $2 ORDER BY name")
            .bind(app)
            .bind(env)
            .fetch_all(&self.pool)
            .await?
            .iter()
            .map(|row| {
                Ok(DatabaseSettings {
                    app: row.text("app")?,
                    env: row.text("env")?,
                    name: row.text("name")?,
                    settings_json: row.text("settings_json")?,
                    updated_at_ms: row.int("updated_at_ms")?,
                })
            })
            .collect()
    }
}

// --- decoding -----------------------------------------------------------

pub(crate) fn backup(row: &impl Columns) -> Result<BackupRecord, StoreError> {
    const TABLE: &str = "backups";
    Ok(BackupRecord {
        id: rows::uuid(TABLE, "id", &row.text("id")?)?,
        job_id: rows::uuid(TABLE, "job_id", &row.text("job_id")?)?,
        host: row.text("host")?,
        app: row.text("app")?,
        env: row.text("env")?,
        database: row.text("database_name")?,
        tenant: row.opt_text("tenant")?,
        engine: row.text("engine")?,
        path: row.text("path")?,
        size_bytes: rows::unsigned(TABLE, "size_bytes", row.int("size_bytes")?)?,
        sha256: row.text("sha256")?,
        reason: rows::parsed(TABLE, "reason", &row.text("reason")?)?,
        created_at_ms: row.int("created_at_ms")?,
        expires_at_ms: row.opt_int("expires_at_ms")?,
        verified_at_ms: row.opt_int("verified_at_ms")?,
        verify_result: row
            .opt_text("verify_result")?
            .map(|t| rows::parsed(TABLE, "verify_result", &t))
            .transpose()?,
        verify_message: row.text("verify_message")?,
        manifest_json: row.text("manifest_json")?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn expiry_follows_reason_and_keep_days() {
        let settings = r#"{"backup":{"keep_days":30}}"#;
        assert_eq!(
            expiry(BackupReason::Manual, 0, Some(settings)),
            Some(30 * DAY_MS)
        );
        assert_eq!(expiry(BackupReason::Scheduled, 5, None), None);
        assert_eq!(
            expiry(BackupReason::Scheduled, 5, Some(r#"{"backup":{}}"#)),
            None
        );
        assert_eq!(
            expiry(BackupReason::PreDeploy, 5, Some(settings)),
            Some(5 + PRE_DEPLOY_KEEP_MS)
        );
        assert_eq!(expiry(BackupReason::PreMigration, 5, Some(settings)), None);
    }
}
