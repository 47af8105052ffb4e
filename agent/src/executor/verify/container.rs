//! Verification of a backup of a database served from inside a container:
//! a scratch database in the container's server, the file streamed into
//! the container's client (`pg_restore`, `mariadb`) through the agent's
//! zstd decoder, every table's rows counted and the app file's checks run
//! through the client in the container, the scratch database dropped.

use std::collections::BTreeMap;
use std::time::Instant;

use bollard::Docker;
use ferry_common::job::backup::DbEngine;
use ferry_common::job::{VerifyReport, VerifySpec};

use super::super::dbexec::{
    self, Located, Login, MariaTools, PG_MAINTENANCE_DB, Psql, backquote, psql_command, psql_query,
};
use super::{Done, TaskContext, TaskFailure, failed, quote_ident};

/// The server the scratch database lives on, and how to reach it.
#[derive(Clone)]
struct Server {
    docker: Docker,
    on: Located,
    login: Login,
    /// MariaDB's client programs; `None` for PostgreSQL.
    tools: Option<std::sync::Arc<MariaTools>>,
}

impl Server {
    /// Runs `sql` in `database` (`None`: the maintenance connection).
    async fn query(
        &self,
        database: Option<&str>,
        sql: &str,
    ) -> Result<Vec<Vec<Option<String>>>, String> {
        match &self.tools {
            None => {
                psql_query(
                    &self.docker,
                    &self.on,
                    &self.login,
                    database.unwrap_or(PG_MAINTENANCE_DB),
                    sql,
                )
                .await
            }
            Some(t) => {
                t.query(&self.docker, &self.on, &self.login, database, sql)
                    .await
            }
        }
    }

    async fn drop_database(&self, name: &str) -> Result<(), String> {
        let sql = match self.tools {
            None => format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", quote_ident(name)),
            Some(_) => format!("DROP DATABASE IF EXISTS {}", backquote(name)),
        };
        self.query(None, &sql).await.map(|_| ())
    }
}

/// The scratch database, dropped when this is dropped (a cancelled task's
/// future is dropped where it stands): the drop runs on a task of its own.
struct Scratch {
    server: Server,
    name: String,
    armed: bool,
}

impl Scratch {
    async fn drop_now(mut self) -> Result<(), String> {
        self.armed = false;
        self.server.drop_database(&self.name).await
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        if self.armed {
            let (server, name) = (self.server.clone(), self.name.clone());
            tokio::spawn(async move {
                if let Err(e) = server.drop_database(&name).await {
                    tracing::warn!(database = %name, error = %e, "could not drop a scratch database");
                }
            });
        }
    }
}

pub(super) async fn run(spec: &VerifySpec, ctx: &TaskContext) -> Result<Done, TaskFailure> {
    let c = spec
        .location
        .in_container()
        .ok_or_else(|| failed("not a database in a container"))?;
    let docker = ctx.host.docker()?.clone();
    let login = Login::of(spec.engine, c, ctx, &spec.app, &spec.env).map_err(failed)?;

    let on = dbexec::locate(
        &docker,
        &ctx.host.name,
        &spec.app,
        &spec.env,
        &spec.location,
    )
    .await
    .map_err(failed)?;
    let tools = match spec.engine {
        DbEngine::Mariadb => Some(std::sync::Arc::new(
            MariaTools::find(&docker, &on).await.map_err(failed)?,
        )),
        DbEngine::Postgres => None,
    };
    let server = Server {
        docker,
        on,
        login,
        tools,
    };

    let step = Instant::now();
    let name = format!("ferry_verify_{}", ctx.task_id.simple());
    ctx.step_started(
        "restore",
        &format!(
            "into scratch database {name} in container {}",
            server.on.name
        ),
    );
    let create = match spec.engine {
        DbEngine::Postgres => format!("CREATE DATABASE {}", quote_ident(&name)),
        DbEngine::Mariadb => format!("CREATE DATABASE {}", backquote(&name)),
    };
    if let Err(e) = server.query(None, &create).await {
        let why = format!("creating the scratch database {name}: {e}");
        ctx.step_finished("restore", false, &why, step);
        return Err(failed(why));
    }
    let scratch = Scratch {
        server: server.clone(),
        name: name.clone(),
        armed: true,
    };
    let outcome = verify_in(spec, ctx, &server, &name, step).await;
    let dropped = scratch.drop_now().await;
    let report = outcome?;
    if let Err(e) = dropped {
        ctx.log("restore", "stderr", &format!("could not drop {name}: {e}"));
    }
    Ok(Done {
        message: format!(
            "backup {} verified: sha256 matches, {} tables and {} rows as in the manifest, {} checks passed",
            spec.backup_id, report.tables, report.rows, report.checks
        ),
        result_json: serde_json::to_string(&report).map_err(|e| failed(e.to_string()))?,
    })
}

async fn verify_in(
    spec: &VerifySpec,
    ctx: &TaskContext,
    server: &Server,
    name: &str,
    step: Instant,
) -> Result<VerifyReport, TaskFailure> {
    let cmd: Vec<String> = match &server.tools {
        None => [
            "pg_restore",
            "--no-owner",
            "--exit-on-error",
            "-U",
            &server.login.user,
            "-d",
            name,
        ]
        .iter()
        .map(|s| s.to_string())
        .collect(),
        Some(t) => {
            let mut cmd = t.client_cmd(&server.login, &[]);
            cmd.push(name.to_string());
            cmd
        }
    };
    if let Err(e) = dbexec::stream_file_into(
        &server.docker,
        &server.on,
        &cmd,
        &server.login.env(),
        &spec.path,
        Some(&spec.sha256),
        &ctx.cancel,
    )
    .await
    {
        ctx.step_finished("restore", false, &e, step);
        return Err(if ctx.cancel.is_cancelled() {
            TaskFailure::Cancelled
        } else {
            failed(e)
        });
    }
    ctx.step_finished("restore", true, "restored", step);

    let step = Instant::now();
    ctx.step_started("counts", &format!("{} tables", spec.row_counts.len()));
    let mut differ = Vec::new();
    let mut found = BTreeMap::new();
    // PostgreSQL: one session for all the counts and checks (reopened
    // after a failed statement, which ends it).
    let mut psql: Option<Psql> = None;
    for (table, want) in &spec.row_counts {
        let sql = match &server.tools {
            None => {
                let (schema, rel) = table.split_once('.').unwrap_or(("public", table));
                format!(
                    "SELECT count(*) FROM {}.{}",
                    quote_ident(schema),
                    quote_ident(rel)
                )
            }
            Some(_) => format!("SELECT COUNT(*) FROM {}", backquote(table)),
        };
        match one_value(server, &mut psql, name, &sql).await {
            Ok(Some(v)) if v.parse::<u64>().ok() == Some(*want) => {
                found.insert(table.clone(), *want);
            }
            Ok(v) => differ.push(format!(
                "{table}: {} rows, the manifest says {want}",
                v.unwrap_or_else(|| "NULL".into())
            )),
            Err(e) => differ.push(format!("{table}: {e}")),
        }
    }
    if !differ.is_empty() {
        if let Some(s) = psql.take() {
            s.close().await;
        }
        let why = format!("row counts differ from the manifest: {}", differ.join("; "));
        ctx.step_finished("counts", false, &why, step);
        return Err(failed(why));
    }
    let rows: u64 = found.values().sum();
    ctx.step_finished(
        "counts",
        true,
        &format!("{} tables, {rows} rows, as in the manifest", found.len()),
        step,
    );

    let step = Instant::now();
    ctx.step_started("checks", &format!("{} checks", spec.checks.len()));
    for (i, check) in spec.checks.iter().enumerate() {
        let label = format!("check {} ({})", i + 1, check.sql);
        let sql = check.sql.trim().trim_end_matches(';');
        let value = match check_value(server, name, sql).await {
            Ok(v) => v,
            Err(e) => {
                let why = format!("{label}: {e}");
                ctx.step_finished("checks", false, &why, step);
                if let Some(s) = psql.take() {
                    s.close().await;
                }
                return Err(failed(why));
            }
        };
        if let Err(e) = check.expect.check(value.as_deref()) {
            let why = format!("{label}: {e}");
            ctx.step_finished("checks", false, &why, step);
            if let Some(s) = psql.take() {
                s.close().await;
            }
            return Err(failed(why));
        }
        ctx.log("checks", "stdout", &format!("{label}: passed"));
    }
    if let Some(s) = psql.take() {
        s.close().await;
    }
    ctx.step_finished("checks", true, "all passed", step);
    Ok(VerifyReport {
        backup_id: spec.backup_id.clone(),
        tables: found.len(),
        rows,
        checks: spec.checks.len(),
    })
}

/// A check's value: its query (the app file's text) run as one command in
/// database `name`.
async fn check_value(server: &Server, name: &str, sql: &str) -> Result<Option<String>, String> {
    let rows = match &server.tools {
        Some(_) => server.query(Some(name), sql).await?,
        None => psql_command(&server.docker, &server.on, &server.login, name, sql).await?,
    };
    Ok(rows
        .into_iter()
        .next()
        .and_then(|r| r.into_iter().next().flatten()))
}

/// The first value of `sql`'s first row in database `name`.
async fn one_value(
    server: &Server,
    psql: &mut Option<Psql>,
    name: &str,
    sql: &str,
) -> Result<Option<String>, String> {
    if server.tools.is_some() {
        return Ok(server
            .query(Some(name), sql)
            .await?
            .into_iter()
            .next()
            .and_then(|r| r.into_iter().next().flatten()));
    }
    let session = match psql.take() {
        Some(s) => s,
        None => Psql::open(&server.docker, &server.on, &server.login, name).await?,
    };
    let mut session = session;
    match session.value(sql).await {
        Ok(v) => {
            *psql = Some(session);
            Ok(v)
        }
        // The failed statement ended the session; the next one opens anew.
        Err(e) => Err(e),
    }
}
