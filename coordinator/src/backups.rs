//! Backups as operators ask for them: `RunBackup` keeps the app file's
//! databases as the (app, env)'s settings and submits one `backup` job per
//! database to the one agent that works on it; the catalogue itself
//! (`store::backups`) is filled when those jobs' tasks succeed.
//! `VerifyBackup` and `RestoreBackup` send a backup's test restore or
//! restore to the host holding its file (a restore is audited);
//! `PruneBackups` applies retention.

use ferry_common::appfile::DatabaseTarget;
use ferry_common::job::{
    BackupSpec, KindSpec, PruneItem, PruneSpec, RestoreMode, RestoreSpec, Selector, VerifySpec,
};
use ferry_common::rules::dns_name;
use ferry_common::status::BackupReason;
use ferry_common::time::now_ms;
use ferry_proto::v1 as pb;

use crate::core::Core;
use crate::error::CoordinatorError;
use crate::scheduler::Submission;
use crate::store::{AuditEntry, BackupRecord, JobRecord, StoreError};
use uuid::Uuid;

/// The agent that works on a database: the first (by name) of the
/// enrolled, unrevoked agents its selector matches, so one database is
/// always worked on by one agent.
pub(crate) async fn agent_for(
    core: &Core,
    database: &str,
    selector: &Selector,
) -> Result<String, CoordinatorError> {
    let agents = core.store.list_agents().await?;
    agents
        .iter()
        .filter(|a| a.revoked_at_ms.is_none() && selector.matches(&a.name, &a.labels))
        .map(|a| a.name.clone())
        .min()
        .ok_or_else(|| {
            CoordinatorError::invalid(
                format!("database {database}"),
                format!(
                    "no enrolled agent matches its host ({}); check `host` in [databases.{database}] and `ferry agents`",
                    selector.describe()
                ),
            )
        })
}

/// `RunBackup`: the jobs submitted, one per database, by database name;
/// `reason` is `manual` for an operator's, `scheduled` for a schedule's
/// (whose `actor` is `schedule:<id>`).
pub async fn run_backup(
    core: &Core,
    actor: &str,
    req: pb::RunBackupRequest,
    reason: BackupReason,
) -> Result<Vec<JobRecord>, CoordinatorError> {
    let app = req.app.trim();
    let env = req.env.trim();
    dns_name(app).map_err(|e| CoordinatorError::invalid("app", e))?;
    dns_name(env).map_err(|e| CoordinatorError::invalid("env", e))?;
    if !req.databases_json.is_empty() {
        let mut settings = Vec::new();
        for json in &req.databases_json {
            let target: DatabaseTarget = serde_json::from_str(json).map_err(|e| {
                CoordinatorError::invalid(
                    "databases",
                    format!("not a database of an app file: {e}"),
                )
            })?;
            dns_name(&target.database.name)
                .map_err(|e| CoordinatorError::invalid("databases", e))?;
            settings.push((target.database.name.clone(), json.clone()));
        }
        core.store
            .put_database_settings(app, env, &settings, now_ms())
            .await?;
    }
    let known = core.store.database_settings(app, env).await?;
    if known.is_empty() {
        return Err(CoordinatorError::invalid(
            "databases",
            format!(
                "no databases are known for {app} {env}; give the app file once (`ferry backup run -f ferry.toml --env {env}`), whose [databases.NAME] the coordinator then keeps"
            ),
        ));
    }
    let wanted = req.database.trim();
    let chosen: Vec<_> = known
        .iter()
        .filter(|s| wanted.is_empty() || s.name == wanted)
        .collect();
    if chosen.is_empty() {
        let names: Vec<&str> = known.iter().map(|s| s.name.as_str()).collect();
        return Err(CoordinatorError::invalid(
            "database",
            format!(
                "{app} {env} has no database {wanted:?}; it has {}",
                names.join(", ")
            ),
        ));
    }
    let mut jobs = Vec::new();
    for s in chosen {
        let target: DatabaseTarget = serde_json::from_str(&s.settings_json).map_err(|e| {
            CoordinatorError::Internal(format!("stored settings of database {}: {e}", s.name))
        })?;
        let db = &target.database;
        let spec = BackupSpec {
            app: app.to_string(),
            env: env.to_string(),
            database: db.name.clone(),
            engine: db.engine,
            location: db.location.clone(),
            tables: if req.tables.is_empty() {
                db.backup.tables.clone()
            } else {
                req.tables.clone()
            },
            reason,
        };
        spec.validate()
            .map_err(|e| CoordinatorError::invalid(format!("database {}", db.name), e))?;
        let agent = agent_for(core, &db.name, &target.selector).await?;
        let submission = Submission {
            kind: BackupSpec::NAME.to_string(),
            spec_json: serde_json::to_string(&spec)
                .map_err(|e| CoordinatorError::Internal(e.to_string()))?,
            target: Selector {
                agents: vec![agent],
                labels: Default::default(),
            },
            idempotency_key: None,
            deadline: None,
            parent: None,
        };
        let (job, _) = core.submit_job(actor, submission).await?;
        jobs.push(job);
    }
    Ok(jobs)
}

/// `VerifyBackup`: a verify job for backup `id` on the host holding its
/// file, with the checks of the database settings the coordinator kept.
pub async fn verify_backup(
    core: &Core,
    actor: &str,
    id: Uuid,
) -> Result<JobRecord, CoordinatorError> {
    let backup = catalogued(core, id).await?;
    let manifest = backup
        .manifest()
        .map_err(|e| CoordinatorError::Internal(format!("backup {id}: {e}")))?;
    let target = settings_of(core, &backup).await?;
    let spec = VerifySpec {
        backup_id: id.to_string(),
        app: backup.app.clone(),
        env: backup.env.clone(),
        database: backup.database.clone(),
        engine: target.database.engine,
        location: target.database.location.clone(),
        path: backup.path.clone(),
        sha256: backup.sha256.clone(),
        row_counts: manifest.row_counts,
        checks: target.database.checks.clone(),
    };
    spec.validate()
        .map_err(|e| CoordinatorError::invalid(format!("backup {id}"), e))?;
    submit_on(core, actor, VerifySpec::NAME, &spec, &backup.host).await
}

/// `RestoreBackup`: a restore job for backup `id` on the host holding its
/// file, recorded in the audit log.
pub async fn restore_backup(
    core: &Core,
    actor: &str,
    id: Uuid,
    into: &str,
    clean: bool,
) -> Result<JobRecord, CoordinatorError> {
    let into = into.trim();
    let mode = match (into.is_empty(), clean) {
        (true, false) => RestoreMode::Swap,
        (true, true) => RestoreMode::Clean,
        (false, false) => RestoreMode::Into(into.to_string()),
        (false, true) => {
            return Err(CoordinatorError::invalid(
                "restore",
                "--into and --clean exclude each other: --into NAME restores into a new database, --clean into the live one",
            ));
        }
    };
    let backup = catalogued(core, id).await?;
    let target = settings_of(core, &backup).await?;
    let spec = RestoreSpec {
        backup_id: id.to_string(),
        app: backup.app.clone(),
        env: backup.env.clone(),
        database: backup.database.clone(),
        engine: target.database.engine,
        location: target.database.location.clone(),
        path: backup.path.clone(),
        sha256: backup.sha256.clone(),
        mode,
        tenant: backup.tenant.clone(),
        tenant_url_template: backup
            .tenant
            .as_ref()
            .and(target.database.tenants.as_ref())
            .and_then(|t| t.url_template.clone()),
    };
    spec.validate()
        .map_err(|e| CoordinatorError::invalid(format!("backup {id}"), e))?;
    let job = submit_on(core, actor, RestoreSpec::NAME, &spec, &backup.host).await?;
    // Written before the job is reported submitted, and its failure fails
    // the request: a restore is never unaudited.
    let entry = AuditEntry {
        at_ms: now_ms(),
        actor: actor.to_string(),
        action: "backup.restore".into(),
        target: match &backup.tenant {
            None => format!("{}/{}/{}", backup.app, backup.env, backup.database),
            Some(t) => format!(
                "{}/{}/{} tenant {t}",
                backup.app, backup.env, backup.database
            ),
        },
        detail: format!(
            "backup {id}, mode {}, job {}",
            serde_json::to_string(&spec.mode).unwrap_or_default(),
            job.id
        ),
        app: Some(backup.app.clone()),
        env: Some(backup.env.clone()),
    };
    crate::core::log_audit(&entry);
    core.store.append_audit(&entry).await?;
    Ok(job)
}

/// The backups of (app, env) that retention lets go at `now_ms`, newest
/// first. Per database (`backups` newest first): the newest `keep_last`
/// are kept whatever their age; beyond them, a backup goes once its expiry
/// has passed, or at once when only `keep_last` is set. Pre-migration
/// backups are never pruned here.
pub fn expired(
    backups: &[BackupRecord],
    keep_last: &std::collections::BTreeMap<String, (Option<u32>, bool)>,
    now_ms: i64,
) -> Vec<BackupRecord> {
    let mut seen: std::collections::BTreeMap<&str, usize> = Default::default();
    let mut out = Vec::new();
    for b in backups {
        if b.reason == BackupReason::PreMigration {
            continue;
        }
        let i = seen.entry(b.database.as_str()).or_default();
        let position = *i;
        *i += 1;
        let (last, has_days) = keep_last.get(&b.database).copied().unwrap_or((None, false));
        if last.is_some_and(|k| position < k as usize) {
            continue;
        }
        let aged = b.expires_at_ms.is_some_and(|e| e <= now_ms);
        let counted = last.is_some() && !has_days;
        if aged || counted {
            out.push(b.clone());
        }
    }
    out
}

/// `PruneBackups`: what retention lets go, of every database of (app, env)
/// or (a prune schedule's) only `database`, and (unless `dry_run`) one
/// prune job per host holding some of it.
pub async fn prune_backups(
    core: &Core,
    actor: &str,
    app: &str,
    env: &str,
    database: Option<&str>,
    dry_run: bool,
) -> Result<(Vec<BackupRecord>, Vec<JobRecord>), CoordinatorError> {
    dns_name(app).map_err(|e| CoordinatorError::invalid("app", e))?;
    dns_name(env).map_err(|e| CoordinatorError::invalid("env", e))?;
    let mut rules = std::collections::BTreeMap::new();
    for s in core.store.database_settings(app, env).await? {
        let target: DatabaseTarget = serde_json::from_str(&s.settings_json)
            .map_err(|e| CoordinatorError::Internal(format!("stored database settings: {e}")))?;
        let policy = &target.database.backup;
        rules.insert(s.name, (policy.keep_last, policy.keep_days.is_some()));
    }
    let filter = crate::store::BackupFilter {
        app: Some(app.to_string()),
        env: Some(env.to_string()),
        database: database.map(str::to_string),
    };
    let all = core.store.list_backups(&filter, 100_000).await?;
    let gone = expired(&all, &rules, now_ms());
    if dry_run || gone.is_empty() {
        return Ok((gone, Vec::new()));
    }
    let mut by_host: std::collections::BTreeMap<&str, Vec<PruneItem>> = Default::default();
    for b in &gone {
        by_host.entry(b.host.as_str()).or_default().push(PruneItem {
            id: b.id.to_string(),
            path: b.path.clone(),
        });
    }
    let mut jobs = Vec::new();
    for (host, backups) in by_host {
        let spec = PruneSpec {
            app: app.to_string(),
            env: env.to_string(),
            backups,
        };
        spec.validate()
            .map_err(|e| CoordinatorError::invalid("prune", e))?;
        jobs.push(submit_on(core, actor, PruneSpec::NAME, &spec, host).await?);
    }
    Ok((gone, jobs))
}

async fn catalogued(core: &Core, id: Uuid) -> Result<BackupRecord, CoordinatorError> {
    Ok(core
        .store
        .get_backup(id)
        .await?
        .ok_or(StoreError::BackupNotFound(id))?)
}

/// The kept settings of a backup's database, or why there are none.
async fn settings_of(
    core: &Core,
    backup: &BackupRecord,
) -> Result<DatabaseTarget, CoordinatorError> {
    let settings = core
        .store
        .database_settings(&backup.app, &backup.env)
        .await?;
    settings
        .iter()
        .find(|s| s.name == backup.database)
        .map(|s| serde_json::from_str(&s.settings_json))
        .transpose()
        .map_err(|e| CoordinatorError::Internal(format!("stored database settings: {e}")))?
        .ok_or_else(|| {
            CoordinatorError::invalid(
                "backup",
                format!(
                    "the settings of database {} of {} {} are not known (where its server is, its checks); give the app file once with `ferry backup run -f ferry.toml --env {}`",
                    backup.database, backup.app, backup.env, backup.env
                ),
            )
        })
}

/// Submits a job of `kind` with `spec` to the one agent `host`.
async fn submit_on<S: serde::Serialize>(
    core: &Core,
    actor: &str,
    kind: &str,
    spec: &S,
    host: &str,
) -> Result<JobRecord, CoordinatorError> {
    let submission = Submission {
        kind: kind.to_string(),
        spec_json: serde_json::to_string(spec)
            .map_err(|e| CoordinatorError::Internal(e.to_string()))?,
        target: Selector {
            agents: vec![host.to_string()],
            labels: Default::default(),
        },
        idempotency_key: None,
        deadline: None,
        parent: None,
    };
    Ok(core.submit_job(actor, submission).await?.0)
}

/// A catalogued backup on the wire.
pub fn to_wire(b: &BackupRecord) -> pb::Backup {
    pb::Backup {
        id: b.id.to_string(),
        job_id: b.job_id.to_string(),
        host: b.host.clone(),
        app: b.app.clone(),
        env: b.env.clone(),
        database: b.database.clone(),
        engine: b.engine.clone(),
        path: b.path.clone(),
        size_bytes: b.size_bytes,
        sha256: b.sha256.clone(),
        reason: b.reason.as_str().into(),
        created_at_ms: b.created_at_ms,
        expires_at_ms: b.expires_at_ms.unwrap_or(0),
        verified_at_ms: b.verified_at_ms.unwrap_or(0),
        verify_result: b
            .verify_result
            .map(|r| r.as_str().to_string())
            .unwrap_or_default(),
        verify_message: b.verify_message.clone(),
        manifest_json: b.manifest_json.clone(),
        tenant: b.tenant.clone().unwrap_or_default(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    fn record(
        database: &str,
        created: i64,
        expires: Option<i64>,
        reason: BackupReason,
    ) -> BackupRecord {
        BackupRecord {
            id: Uuid::now_v7(),
            job_id: Uuid::now_v7(),
            host: "db-1".into(),
            app: "shop".into(),
            env: "prod".into(),
            database: database.into(),
            tenant: None,
            engine: "postgres".into(),
            path: format!("/b/{created}.dump.zst"),
            size_bytes: 1,
            sha256: String::new(),
            reason,
            created_at_ms: created,
            expires_at_ms: expires,
            verified_at_ms: None,
            verify_result: None,
            verify_message: String::new(),
            manifest_json: String::new(),
        }
    }

    #[test]
    fn retention_keeps_the_last_and_lets_the_old_go() {
        let m = BackupReason::Manual;
        // Newest first, as the catalogue lists them.
        let main = [
            record("main", 3, None, m),
            record("main", 2, None, m),
            record("main", 1, None, m),
            record("main", 0, None, BackupReason::PreMigration),
        ];
        let only_last = BTreeMap::from([("main".to_string(), (Some(2), false))]);
        let gone = expired(&main, &only_last, 100);
        assert_eq!(
            gone.iter().map(|b| b.created_at_ms).collect::<Vec<_>>(),
            [1]
        );
        // keep_days and keep_last: beyond the last two, only what aged out.
        let aged = [
            record("main", 30, Some(200), m),
            record("main", 20, Some(200), m),
            record("main", 10, Some(50), m),
            record("main", 5, Some(150), m),
        ];
        let both = BTreeMap::from([("main".to_string(), (Some(2), true))]);
        let gone = expired(&aged, &both, 100);
        assert_eq!(
            gone.iter().map(|b| b.created_at_ms).collect::<Vec<_>>(),
            [10]
        );
        // No rules: only expiries (pre-deploy's week) count.
        let gone = expired(&aged, &BTreeMap::new(), 100);
        assert_eq!(
            gone.iter().map(|b| b.created_at_ms).collect::<Vec<_>>(),
            [10]
        );
        assert!(expired(&main, &BTreeMap::new(), 100).is_empty());
    }
}
