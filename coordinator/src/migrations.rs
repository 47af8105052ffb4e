//! Migrations as operators ask for them: `RunMigrate` keeps the app file's
//! databases as the (app, env)'s settings (as `RunBackup` does), builds one
//! `migrate` spec per database from its `[databases.NAME.migrations]` and
//! `.tenants` with the files the CLI read, and submits it to the one agent
//! that works on that database — after claiming the database in the store,
//! so that one migrate job per (app, env, database) runs at a time across
//! the fleet (a second is refused, naming the running job; the claim ends
//! with the job). `MigrateStatus` returns each database's last run and its
//! per-database report (the job's stored result).

use std::collections::BTreeMap;

use ferry_common::appfile::{DatabaseTarget, Migrations, MigrationsMode};
use ferry_common::job::migrate::{MigrateFilter, MigrateSpec, MigrationSource, TenantSpec};
use ferry_common::job::{KindSpec, Selector};
use ferry_common::migration_layout::Files;
use ferry_common::rules::dns_name;
use ferry_common::time::now_ms;
use ferry_proto::v1 as pb;

use crate::backups::agent_for;
use crate::core::Core;
use crate::error::CoordinatorError;
use crate::scheduler::Submission;
use crate::store::{JobFilter, JobRecord};

/// The migrations source of `m` for database `db`: the files the CLI sent
/// for `dir`, or the image for `image_path` / `command`.
fn source(
    db: &str,
    m: &Migrations,
    tenants: bool,
    folders: &[pb::MigrationFolder],
    image: &str,
) -> Result<MigrationSource, CoordinatorError> {
    let which = if tenants {
        format!("[databases.{db}.tenants.migrations]")
    } else {
        format!("[databases.{db}.migrations]")
    };
    let need_image = || {
        if image.is_empty() {
            Err(CoordinatorError::invalid(
                "image",
                format!(
                    "{which} runs an image; the request names none (`ferry migrate --image IMAGE`)"
                ),
            ))
        } else {
            Ok(image.to_string())
        }
    };
    Ok(match &m.mode {
        MigrationsMode::Dir { layout, .. } => {
            let folder = folders
                .iter()
                .find(|f| f.database == db && f.tenants == tenants)
                .ok_or_else(|| {
                    CoordinatorError::invalid(
                        "folders",
                        format!("{which} reads dir, whose files the CLI sends with the request; none were sent"),
                    )
                })?;
            let files: Files = folder
                .files
                .iter()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect();
            // The same reader the agent uses: a bad folder is refused here
            // too, not only by the CLI.
            ferry_common::migration_layout::load(*layout, &files)
                .map_err(|e| CoordinatorError::invalid(format!("{which} dir"), e.to_string()))?;
            MigrationSource::carried(*layout, &files)
        }
        MigrationsMode::ImagePath { path, layout } => MigrationSource::ImagePath {
            layout: *layout,
            image: need_image()?,
            path: path.clone(),
        },
        MigrationsMode::Command {
            command,
            status_command,
        } => MigrationSource::Command {
            image: need_image()?,
            command: command.clone(),
            status_command: status_command.clone(),
        },
    })
}

/// The spec of one database's run.
fn spec_for(
    app: &str,
    env: &str,
    target: &DatabaseTarget,
    req: &pb::RunMigrateRequest,
) -> Result<MigrateSpec, CoordinatorError> {
    let db = &target.database;
    let m = db.migrations.as_ref().ok_or_else(|| {
        CoordinatorError::invalid(
            "database",
            format!(
                "database {} has no [databases.{}.migrations]",
                db.name, db.name
            ),
        )
    })?;
    let tenants = match &db.tenants {
        None => None,
        Some(t) => Some(Box::new(TenantSpec {
            query: t.query.clone(),
            id_column: t.id_column.clone(),
            url_template: t.url_template.clone(),
            source: t
                .migrations
                .as_ref()
                .map(|tm| source(&db.name, tm, true, &req.folders, &req.image))
                .transpose()?,
        })),
    };
    let spec = MigrateSpec {
        app: app.to_string(),
        env: env.to_string(),
        database: db.name.clone(),
        location: db.location.clone(),
        source: source(&db.name, m, false, &req.folders, &req.image)?,
        tenants,
        filter: MigrateFilter {
            tenants: req.tenants.clone(),
            tenant_ids: req.tenant_ids.clone(),
            main_only: req.main_only,
            skip_main: req.skip_main,
        },
        dry_run: req.dry_run,
        target_version: Some(req.target_version.trim().to_string()).filter(|v| !v.is_empty()),
        concurrency: if req.concurrency == 0 {
            m.concurrency
        } else {
            req.concurrency
        },
        continue_on_error: req.continue_on_error,
        backup: !req.no_backup,
        ledger: m.ledger.clone(),
        lock_timeout: m.lock_timeout,
        statement_timeout: m.statement_timeout,
    };
    spec.validate()
        .map_err(|e| CoordinatorError::invalid(format!("database {}", db.name), e))?;
    Ok(spec)
}

/// `RunMigrate`: the jobs submitted, one per database, by database name.
pub async fn run_migrate(
    core: &Core,
    actor: &str,
    req: pb::RunMigrateRequest,
) -> Result<Vec<JobRecord>, CoordinatorError> {
    let app = req.app.trim().to_string();
    let env = req.env.trim().to_string();
    dns_name(&app).map_err(|e| CoordinatorError::invalid("app", e))?;
    dns_name(&env).map_err(|e| CoordinatorError::invalid("env", e))?;
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
            .put_database_settings(&app, &env, &settings, now_ms())
            .await?;
    }
    let known = core.store.database_settings(&app, &env).await?;
    let mut targets: BTreeMap<String, DatabaseTarget> = BTreeMap::new();
    for s in &known {
        let t: DatabaseTarget = serde_json::from_str(&s.settings_json).map_err(|e| {
            CoordinatorError::Internal(format!("stored settings of database {}: {e}", s.name))
        })?;
        targets.insert(s.name.clone(), t);
    }
    let wanted = req.database.trim();
    let chosen: Vec<&DatabaseTarget> = if wanted.is_empty() {
        targets
            .values()
            .filter(|t| t.database.migrations.is_some())
            .collect()
    } else {
        let t = targets.get(wanted).ok_or_else(|| {
            let names: Vec<&str> = targets.keys().map(String::as_str).collect();
            CoordinatorError::invalid(
                "database",
                format!(
                    "{app} {env} has no database {wanted:?}; it has {}",
                    if names.is_empty() {
                        "none (give the app file: `ferry migrate -f ferry.toml`)".to_string()
                    } else {
                        names.join(", ")
                    }
                ),
            )
        })?;
        vec![t]
    };
    if chosen.is_empty() {
        return Err(CoordinatorError::invalid(
            "databases",
            format!(
                "no database of {app} {env} has migrations; add [databases.NAME.migrations] to the app file and give it (`ferry migrate -f ferry.toml --env {env}`)"
            ),
        ));
    }
    // Every spec and agent first: nothing is claimed for a request that
    // cannot be submitted whole.
    let mut planned = Vec::new();
    for target in chosen {
        let spec = spec_for(&app, &env, target, &req)?;
        let agent = agent_for(core, &spec.database, &target.selector).await?;
        planned.push((spec, agent));
    }
    let now = now_ms();
    let mut claimed: Vec<&str> = Vec::new();
    for (spec, _) in &planned {
        if let Err(e) = core
            .store
            .claim_migration(&app, &env, &spec.database, actor, now)
            .await
        {
            for db in claimed {
                let _ = core.store.release_migration(&app, &env, db).await;
            }
            return Err(e.into());
        }
        claimed.push(&spec.database);
    }
    let mut jobs = Vec::new();
    for (i, (spec, agent)) in planned.iter().enumerate() {
        let submission = Submission {
            kind: MigrateSpec::NAME.to_string(),
            spec_json: serde_json::to_string(spec)
                .map_err(|e| CoordinatorError::Internal(e.to_string()))?,
            target: Selector {
                agents: vec![agent.clone()],
                labels: Default::default(),
            },
            idempotency_key: None,
            deadline: None,
            parent: None,
        };
        match core.submit_job(actor, submission).await {
            Ok((job, _)) => {
                core.store
                    .set_migration_job(&app, &env, &spec.database, job.id)
                    .await?;
                jobs.push(job);
            }
            Err(e) => {
                for (s, _) in &planned[i..] {
                    let _ = core.store.release_migration(&app, &env, &s.database).await;
                }
                return Err(e);
            }
        }
    }
    Ok(jobs)
}

/// `MigrateStatus`: the newest migrate job of each database of (app, env)
/// (or of `database`), by database name.
pub async fn migrate_status(
    core: &Core,
    app: &str,
    env: &str,
    database: &str,
) -> Result<Vec<(String, JobRecord)>, CoordinatorError> {
    dns_name(app).map_err(|e| CoordinatorError::invalid("app", e))?;
    dns_name(env).map_err(|e| CoordinatorError::invalid("env", e))?;
    let jobs = core
        .store
        .list_jobs(&JobFilter {
            kind: Some(MigrateSpec::NAME.to_string()),
            limit: 1000,
            ..Default::default()
        })
        .await?;
    let mut last: BTreeMap<String, JobRecord> = BTreeMap::new();
    // Newest first: the first job seen of a database is its last run.
    for job in jobs {
        let Ok(spec) = serde_json::from_str::<MigrateSpec>(&job.spec_json) else {
            continue;
        };
        if spec.app != app || spec.env != env || (!database.is_empty() && spec.database != database)
        {
            continue;
        }
        last.entry(spec.database.clone()).or_insert(job);
    }
    Ok(last.into_iter().collect())
}
