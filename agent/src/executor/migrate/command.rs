//! Command mode: the app's own migration tool (`npx prisma migrate
//! deploy`, a TypeORM or Drizzle script, the app's `migrate` subcommand)
//! run once per database in a one-off container of the release's image,
//! with `DATABASE_URL` set to that database's URL (a tenant's for each
//! tenant) and the host's network, so a server the host reaches on
//! 127.0.0.1 is reached the same way. Its output is streamed as the task's
//! log lines (secrets redacted); an exit code other than 0 fails that
//! database; a cancel removes the container, which kills the tool.
//!
//! Databases are visited by the engine's fleet ([`migrate::run_with`]): main
//! first, then the tenants with the same concurrency and failure policy as
//! SQL mode. A dry run runs `status_command` if there is one.

use std::sync::Arc;
use std::time::Instant;

use bollard::Docker;
use bollard::models::{ContainerCreateBody, HostConfig};
use bollard::query_parameters::{
    CreateContainerOptions, LogsOptions, RemoveContainerOptions, StartContainerOptions,
    WaitContainerOptions,
};
use ferry_common::job::migrate::{MigrateSpec, MigrationSource};
use ferry_common::migration_layout::{Layout, MigrationSet};
use ferry_common::redact::Redactor;
use ferry_common::status::MigrationStatus;
use futures::StreamExt;
use tokio_util::sync::CancellationToken;

use super::{STEP, progress_fn, tenant_source};
use crate::executor::{TaskContext, TaskFailure};
use crate::migrate::{
    self, BeforeChange, DatabaseReport, Filter, OnFailure, Progress, Request, RunOne, RunReport,
    Settings, Target, Tenants,
};

/// Label on every one-off container, so an operator can find a leftover.
const LABEL: &str = "ferry.migrate.job";

/// What one database's container runs.
#[derive(Clone)]
struct Plan {
    image: String,
    command: Option<Vec<String>>,
}

fn plan(source: &MigrationSource, dry_run: bool) -> Option<Plan> {
    let MigrationSource::Command {
        image,
        command,
        status_command,
    } = source
    else {
        return None;
    };
    Some(Plan {
        image: image.clone(),
        command: if dry_run {
            status_command.clone()
        } else {
            Some(command.clone())
        },
    })
}

pub(super) async fn run(
    spec: &MigrateSpec,
    url: &str,
    filter: Filter,
    on_failure: OnFailure,
    hook: Option<BeforeChange>,
    ctx: &TaskContext,
) -> Result<RunReport, TaskFailure> {
    let docker = ctx.host.docker()?.clone();
    let main = plan(&spec.source, spec.dry_run)
        .ok_or_else(|| TaskFailure::Failed("not a command-mode spec".into()))?;
    let tenant = spec
        .tenants
        .as_ref()
        .and_then(|t| t.source.as_ref())
        .and_then(|s| plan(s, spec.dry_run))
        .unwrap_or_else(|| main.clone());
    // The fleet hands each database "its migrations": here an empty set,
    // the tenants' own one, so the runner knows which plan to use.
    let empty = || {
        Arc::new(MigrationSet {
            layout: Layout::Plain,
            migrations: Vec::new(),
            ignored: Vec::new(),
        })
    };
    let (main_marker, tenant_marker) = (empty(), empty());
    let progress = progress_fn(ctx);
    let one: Arc<RunOne> = {
        let (ctx, progress, docker) = (ctx.clone(), progress.clone(), docker.clone());
        let (dry_run, job) = (spec.dry_run, ctx.job_id.to_string());
        let tenant_marker = tenant_marker.clone();
        Arc::new(move |target: Target, set: Arc<MigrationSet>| {
            let plan = if Arc::ptr_eq(&set, &tenant_marker) {
                tenant.clone()
            } else {
                main.clone()
            };
            let (ctx, progress, docker, hook, job) = (
                ctx.clone(),
                progress.clone(),
                docker.clone(),
                hook.clone(),
                job.clone(),
            );
            Box::pin(async move {
                progress(Progress::DatabaseStarted {
                    database: target.database.clone(),
                });
                let start = Instant::now();
                let mut report =
                    DatabaseReport::new(&target.database, target.role, target.tenant_id.clone());
                let result = one_database(
                    &docker,
                    &plan,
                    &target,
                    dry_run,
                    hook,
                    &job,
                    &ctx,
                    &mut report,
                )
                .await;
                report.status = match result {
                    Ok(status) => status,
                    Err(e) if ctx.cancel.is_cancelled() => {
                        report.error = Some(e);
                        MigrationStatus::Cancelled
                    }
                    Err(e) => {
                        report.error = Some(e);
                        MigrationStatus::Failed
                    }
                };
                report.duration_ms = start.elapsed().as_millis() as i64;
                report
            })
        })
    };
    let req = Request {
        main_url: url.to_string(),
        migrations: main_marker,
        tenants: spec.tenants.as_deref().map(|t| Tenants {
            source: tenant_source(t),
            migrations: Some(tenant_marker),
        }),
        filter,
        settings: Settings::default(),
        concurrency: spec.concurrency as usize,
        on_failure,
    };
    let started = Instant::now();
    ctx.step_started(
        STEP,
        &format!(
            "{} in one-off containers of {}",
            if spec.dry_run {
                "status command"
            } else {
                "migration command"
            },
            match &spec.source {
                MigrationSource::Command { image, .. } => image.as_str(),
                _ => "",
            }
        ),
    );
    migrate::run_with(req, one, progress, ctx.cancel.clone())
        .await
        .map_err(|e| {
            let why = e.to_string();
            ctx.step_finished(STEP, false, &why, started);
            TaskFailure::Failed(why)
        })
}

#[allow(clippy::too_many_arguments)]
async fn one_database(
    docker: &Docker,
    plan: &Plan,
    target: &Target,
    dry_run: bool,
    hook: Option<BeforeChange>,
    job: &str,
    ctx: &TaskContext,
    report: &mut DatabaseReport,
) -> Result<MigrationStatus, String> {
    let db = &target.database;
    let Some(command) = &plan.command else {
        // A dry run without status_command: the tool is not asked, so what
        // is pending is not known.
        report.error = Some(
            "no status_command: a dry run does not run the migration command, so what is pending is unknown"
                .into(),
        );
        return Ok(MigrationStatus::Pending);
    };
    if !dry_run && let Some(hook) = hook {
        // The tool says nothing about what is pending before it runs: every
        // database it will run on is backed up.
        let id = (hook.0)(target).await.map_err(|e| {
            format!("database {db}: not migrated, its pre-migration backup failed: {e}")
        })?;
        report.backup_id = Some(id);
    }
    let redactor = Redactor::new(
        ctx.secrets
            .iter()
            .map(|(k, v)| (k.clone(), v.as_str()))
            .chain(std::iter::once((
                "DATABASE_URL".to_string(),
                target.url.as_str(),
            ))),
    )
    .map_err(|e| e.to_string())?;
    let code = run_container(
        docker,
        &plan.image,
        command,
        &target.url,
        job,
        db,
        &redactor,
        ctx,
        &ctx.cancel,
    )
    .await?;
    match (code, dry_run) {
        (0, false) => Ok(MigrationStatus::Applied),
        (0, true) => Ok(MigrationStatus::UpToDate),
        // Status tools (`prisma migrate status`) exit non-zero when
        // migrations are waiting.
        (c, true) => {
            report.error = Some(format!(
                "status_command exited with {c}: migrations may be pending (see its output)"
            ));
            Ok(MigrationStatus::Pending)
        }
        (c, false) => Err(format!(
            "database {db}: {} exited with code {c} (its output is in the job's log)",
            command.join(" ")
        )),
    }
}

/// Runs `command` in a new container of `image` and returns its exit code;
/// the container is removed in every case.
#[allow(clippy::too_many_arguments)]
async fn run_container(
    docker: &Docker,
    image: &str,
    command: &[String],
    url: &str,
    job: &str,
    db: &str,
    redactor: &Redactor,
    ctx: &TaskContext,
    cancel: &CancellationToken,
) -> Result<i64, String> {
    let body = ContainerCreateBody {
        image: Some(image.to_string()),
        cmd: Some(command.to_vec()),
        env: Some(vec![format!("DATABASE_URL={url}")]),
        labels: Some([(LABEL.to_string(), job.to_string())].into_iter().collect()),
        host_config: Some(HostConfig {
            network_mode: Some("host".into()),
            ..Default::default()
        }),
        ..Default::default()
    };
    let created = docker
        .create_container(None::<CreateContainerOptions>, body)
        .await
        .map_err(|e| format!("database {db}: cannot create a container of {image}: {e}"))?;
    let id = created.id;
    let work = async {
        docker
            .start_container(&id, None::<StartContainerOptions>)
            .await
            .map_err(|e| format!("database {db}: cannot start {}: {e}", command.join(" ")))?;
        let mut logs = docker.logs(
            &id,
            Some(LogsOptions {
                follow: true,
                stdout: true,
                stderr: true,
                ..Default::default()
            }),
        );
        while let Some(chunk) = logs.next().await {
            let Ok(chunk) = chunk else { break };
            let stream = match &chunk {
                bollard::container::LogOutput::StdErr { .. } => "stderr",
                _ => "stdout",
            };
            let text = chunk.to_string();
            for line in text.lines().filter(|l| !l.is_empty()) {
                ctx.log(STEP, stream, &format!("{db}: {}", redactor.redact(line)));
            }
        }
        let mut wait = docker.wait_container(&id, None::<WaitContainerOptions>);
        match wait.next().await {
            Some(Ok(r)) => Ok(r.status_code),
            Some(Err(bollard::errors::Error::DockerContainerWaitError { code, .. })) => Ok(code),
            Some(Err(e)) => Err(format!("database {db}: waiting for the container: {e}")),
            None => Err(format!(
                "database {db}: the container's wait ended without a code"
            )),
        }
    };
    let result = tokio::select! {
        r = work => r,
        () = cancel.cancelled() => Err(format!("database {db}: cancelled; the container was stopped")),
    };
    let _ = docker
        .remove_container(
            &id,
            Some(RemoveContainerOptions {
                force: true,
                ..Default::default()
            }),
        )
        .await;
    result
}
