//! Restores into a database served from inside a container: the file
//! decompressed by the agent and streamed into the container's own client
//! (`pg_restore`, `mariadb`) on its stdin through `docker exec`.
//!
//! - PostgreSQL: every mode, as for a database given by URL (swap by
//!   `ALTER DATABASE … RENAME` after terminating the live one's
//!   connections, `--clean` in one transaction, `--into`), the statements
//!   run by `psql` in the container on the `postgres` database.
//! - MariaDB: `--into` restores into a new database; the default swap
//!   restores into a new database and then moves every table with ONE
//!   `RENAME TABLE live.t TO before.t, new.t TO live.t, …` (atomic: clients
//!   see the old tables or the new ones, never a mix), since MariaDB cannot
//!   rename a database. Views, triggers and routines cannot be moved to
//!   another database, so a swap where either side has them is refused
//!   (use `--into`). `--clean` is refused: MariaDB's DDL is not
//!   transactional, a failure halfway would leave the live database
//!   half-restored.

use std::time::{Duration, Instant};

use bollard::Docker;
use ferry_common::job::backup::DbEngine;
use ferry_common::job::restore::MARIADB_CLEAN_REFUSED;
use ferry_common::job::{RestoreMode, RestoreReport, RestoreSpec};

use super::super::dbexec::{
    self, Located, Login, MariaTools, PG_MAINTENANCE_DB, backquote, psql_query,
};
use super::checksum_first;
use super::{
    Done, SWAP_ATTEMPTS, TaskContext, TaskFailure, before_restore_name, done, failed, quote_ident,
    swap_name,
};

pub(super) async fn run(spec: &RestoreSpec, ctx: &TaskContext) -> Result<Done, TaskFailure> {
    if spec.engine == DbEngine::Mariadb && spec.mode == RestoreMode::Clean {
        return Err(failed(MARIADB_CLEAN_REFUSED));
    }
    let c = spec
        .location
        .in_container()
        .ok_or_else(|| failed("not a database in a container"))?;
    let docker = ctx.host.docker()?.clone();
    let login = Login::of(spec.engine, c, ctx, &spec.app, &spec.env).map_err(failed)?;
    let live = login.database.clone();

    if spec.mode == RestoreMode::Clean {
        checksum_first(spec, ctx).await?;
    }
    let on = dbexec::locate(
        &docker,
        &ctx.host.name,
        &spec.app,
        &spec.env,
        &spec.location,
    )
    .await
    .map_err(failed)?;

    let r = Restorer {
        docker: &docker,
        on: &on,
        login: &login,
        spec,
        ctx,
        tools: match spec.engine {
            DbEngine::Mariadb => Some(MariaTools::find(&docker, &on).await.map_err(failed)?),
            DbEngine::Postgres => None,
        },
    };
    let step = Instant::now();
    let report = match &spec.mode {
        RestoreMode::Clean => {
            ctx.step_started(
                "restore",
                &format!(
                    "in place into {live} in container {}, one transaction",
                    on.name
                ),
            );
            let cmd = r.pg_restore(&live, &["--clean", "--if-exists", "--single-transaction"]);
            r.stream(&cmd).await.map_err(|e| {
                let why = format!("{e}; {live} is unchanged (the restore was one transaction)");
                ctx.step_finished("restore", false, &why, step);
                failed(why)
            })?;
            ctx.step_finished("restore", true, &format!("{live} restored in place"), step);
            RestoreReport {
                backup_id: spec.backup_id.clone(),
                restored_into: live.clone(),
                previous: None,
            }
        }
        RestoreMode::Into(name) => {
            r.restore_new(&live, name, step).await?;
            RestoreReport {
                backup_id: spec.backup_id.clone(),
                restored_into: name.clone(),
                previous: None,
            }
        }
        RestoreMode::Swap => {
            let new = swap_name(&live, ctx);
            r.restore_new(&live, &new, step).await?;
            let previous = match spec.engine {
                DbEngine::Postgres => r.swap_postgres(&live, &new).await?,
                DbEngine::Mariadb => r.swap_mariadb(&live, &new).await?,
            };
            RestoreReport {
                backup_id: spec.backup_id.clone(),
                restored_into: live.clone(),
                previous: Some(previous),
            }
        }
    };
    done(spec, &live, report)
}

struct Restorer<'a> {
    docker: &'a Docker,
    on: &'a Located,
    login: &'a Login,
    spec: &'a RestoreSpec,
    ctx: &'a TaskContext,
    tools: Option<MariaTools>,
}

impl Restorer<'_> {
    fn pg_restore(&self, database: &str, extra: &[&str]) -> Vec<String> {
        let mut cmd: Vec<String> = vec![
            "pg_restore".into(),
            "--no-owner".into(),
            "--exit-on-error".into(),
        ];
        cmd.extend(extra.iter().map(|s| s.to_string()));
        cmd.extend([
            "-U".into(),
            self.login.user.clone(),
            "-d".into(),
            database.into(),
        ]);
        cmd
    }

    /// Streams the backup into `cmd`'s stdin, its checksum checked.
    async fn stream(&self, cmd: &[String]) -> Result<(), String> {
        dbexec::stream_file_into(
            self.docker,
            self.on,
            cmd,
            &self.login.env(),
            &self.spec.path,
            // In place it was checked first; into a new database, here.
            (self.spec.mode != RestoreMode::Clean).then_some(self.spec.sha256.as_str()),
            &self.ctx.cancel,
        )
        .await
    }

    /// Runs one administrative statement (not in the live database).
    async fn admin(&self, sql: &str) -> Result<Vec<Vec<Option<String>>>, String> {
        match &self.tools {
            None => psql_query(self.docker, self.on, self.login, PG_MAINTENANCE_DB, sql).await,
            Some(t) => t.query(self.docker, self.on, self.login, None, sql).await,
        }
    }

    fn quote(&self, name: &str) -> String {
        match self.spec.engine {
            DbEngine::Postgres => quote_ident(name),
            DbEngine::Mariadb => backquote(name),
        }
    }

    async fn drop_database(&self, name: &str) -> Result<(), String> {
        let sql = match self.spec.engine {
            DbEngine::Postgres => {
                format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", quote_ident(name))
            }
            DbEngine::Mariadb => format!("DROP DATABASE IF EXISTS {}", backquote(name)),
        };
        self.admin(&sql).await.map(|_| ())
    }

    /// Creates database `new` in the container's server and restores the
    /// backup into it; on failure drops it again, leaving all as it was.
    async fn restore_new(&self, live: &str, new: &str, step: Instant) -> Result<(), TaskFailure> {
        let ctx = self.ctx;
        ctx.step_started(
            "restore",
            &format!("into new database {new} in container {}", self.on.name),
        );
        self.admin(&format!("CREATE DATABASE {}", self.quote(new)))
            .await
            .map_err(|e| {
                let why = format!("creating database {new}: {e}");
                ctx.step_finished("restore", false, &why, step);
                failed(why)
            })?;
        let cmd = match &self.tools {
            None => self.pg_restore(new, &[]),
            Some(t) => {
                let mut cmd = t.client_cmd(self.login, &[]);
                cmd.push(new.to_string());
                cmd
            }
        };
        if let Err(e) = self.stream(&cmd).await {
            let _ = self.drop_database(new).await;
            let why = format!("{e}; {new} was dropped and {live} is unchanged");
            ctx.step_finished("restore", false, &why, step);
            return Err(if ctx.cancel.is_cancelled() {
                TaskFailure::Cancelled
            } else {
                failed(why)
            });
        }
        ctx.step_finished("restore", true, &format!("restored into {new}"), step);
        Ok(())
    }

    /// PostgreSQL: `live` renamed to `<live>_before_restore_<time>` and
    /// `new` to `live`, the live one's connections terminated first (and
    /// again if clients came back before the rename).
    async fn swap_postgres(&self, live: &str, new: &str) -> Result<String, TaskFailure> {
        let ctx = self.ctx;
        let step = Instant::now();
        let previous = before_restore_name(live);
        ctx.step_started("swap", &format!("{live} → {previous}, {new} → {live}"));
        let mut last = String::new();
        for _ in 0..SWAP_ATTEMPTS {
            let terminate = format!(
                "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity WHERE datname = '{live}' AND pid <> pg_backend_pid()"
            );
            if let Err(e) = self.admin(&terminate).await {
                last = e;
                continue;
            }
            match self
                .admin(&format!(
                    "ALTER DATABASE {} RENAME TO {}",
                    quote_ident(live),
                    quote_ident(&previous)
                ))
                .await
            {
                Ok(_) => {
                    self.admin(&format!(
                        "ALTER DATABASE {} RENAME TO {}",
                        quote_ident(new),
                        quote_ident(live)
                    ))
                    .await
                    .map_err(|e| {
                        let why = format!(
                            "{e}; the restored database is {new} and the previous one {previous}: rename by hand"
                        );
                        ctx.step_finished("swap", false, &why, step);
                        failed(why)
                    })?;
                    ctx.step_finished(
                        "swap",
                        true,
                        &format!("{live} is the restored database; the previous one is {previous}"),
                        step,
                    );
                    return Ok(previous);
                }
                Err(e) => last = e,
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        let why = format!(
            "could not rename {live} after {SWAP_ATTEMPTS} attempts ({last}); {live} is unchanged and the restored copy is {new}"
        );
        ctx.step_finished("swap", false, &why, step);
        Err(failed(why))
    }

    /// What a MariaDB database holds that `RENAME TABLE` cannot move to
    /// another one: views, triggers, routines (each `kind name`).
    async fn unmovable(&self, database: &str) -> Result<Vec<String>, String> {
        let sql = format!(
            "SELECT CONCAT('view ', TABLE_NAME) FROM information_schema.VIEWS WHERE TABLE_SCHEMA = '{database}' \
             UNION ALL SELECT CONCAT('trigger ', TRIGGER_NAME) FROM information_schema.TRIGGERS WHERE TRIGGER_SCHEMA = '{database}' \
             UNION ALL SELECT CONCAT(LOWER(ROUTINE_TYPE), ' ', ROUTINE_NAME) FROM information_schema.ROUTINES WHERE ROUTINE_SCHEMA = '{database}'"
        );
        Ok(self
            .admin(&sql)
            .await?
            .into_iter()
            .filter_map(|r| r.into_iter().next().flatten())
            .collect())
    }

    async fn base_tables(&self, database: &str) -> Result<Vec<String>, String> {
        let sql = format!(
            "SELECT TABLE_NAME FROM information_schema.TABLES WHERE TABLE_SCHEMA = '{database}' AND TABLE_TYPE = 'BASE TABLE' ORDER BY TABLE_NAME"
        );
        Ok(self
            .admin(&sql)
            .await?
            .into_iter()
            .filter_map(|r| r.into_iter().next().flatten())
            .collect())
    }

    /// MariaDB: the live tables moved to a new database
    /// `<live>_before_restore_<time>` and the restored ones into `live`,
    /// all in one atomic `RENAME TABLE`; the emptied restore database is
    /// dropped.
    async fn swap_mariadb(&self, live: &str, new: &str) -> Result<String, TaskFailure> {
        let ctx = self.ctx;
        let step = Instant::now();
        let previous = before_restore_name(live);
        ctx.step_started(
            "swap",
            &format!("tables of {live} → {previous}, tables of {new} → {live}, one RENAME TABLE"),
        );
        let fail = |why: String| {
            ctx.step_finished("swap", false, &why, step);
            failed(why)
        };
        let mut unmovable = Vec::new();
        for db in [live, new] {
            let found = self.unmovable(db).await.map_err(&fail)?;
            unmovable.extend(found.into_iter().map(|x| format!("{x} in {db}")));
        }
        if !unmovable.is_empty() {
            let _ = self.drop_database(new).await;
            return Err(fail(format!(
                "cannot swap: MariaDB's RENAME TABLE cannot move views, triggers or routines to another database, and there are: {}; {live} is unchanged and {new} was dropped; restore with --into NAME and point the app at NAME",
                unmovable.join(", ")
            )));
        }
        let old_tables = self.base_tables(live).await.map_err(&fail)?;
        let new_tables = self.base_tables(new).await.map_err(&fail)?;
        self.admin(&format!("CREATE DATABASE {}", backquote(&previous)))
            .await
            .map_err(|e| fail(format!("creating {previous}: {e}")))?;
        let moves: Vec<String> = old_tables
            .iter()
            .map(|t| {
                format!(
                    "{}.{} TO {}.{}",
                    backquote(live),
                    backquote(t),
                    backquote(&previous),
                    backquote(t)
                )
            })
            .chain(new_tables.iter().map(|t| {
                format!(
                    "{}.{} TO {}.{}",
                    backquote(new),
                    backquote(t),
                    backquote(live),
                    backquote(t)
                )
            }))
            .collect();
        if !moves.is_empty() {
            self.admin(&format!("RENAME TABLE {}", moves.join(", ")))
                .await
                .map_err(|e| {
                    fail(format!(
                        "RENAME TABLE: {e}; it is atomic, so {live} is unchanged; the restored copy is {new}"
                    ))
                })?;
        }
        if let Err(e) = self.drop_database(new).await {
            ctx.log(
                "swap",
                "stderr",
                &format!("could not drop the emptied {new}: {e}"),
            );
        }
        ctx.step_finished(
            "swap",
            true,
            &format!(
                "{live} holds the restored tables ({}); the previous ones are in {previous}",
                new_tables.len()
            ),
            step,
        );
        Ok(previous)
    }
}
