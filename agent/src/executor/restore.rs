//! `restore`: a catalogued backup put back on its server. The checksum
//! first; then, by mode: into a new database that is swapped in by name
//! only once it restored (the live one kept under
//! `<db>_before_restore_<time>`), in place with `pg_restore --clean
//! --if-exists --single-transaction` (a failure leaves it as it was), or
//! into a new database of the operator's choosing.

use std::time::{Duration, Instant};

use ferry_common::appfile::DbLocation;
use ferry_common::job::{RestoreMode, RestoreReport, RestoreSpec};
use sqlx::postgres::PgConnectOptions;
use sqlx::{ConnectOptions, Connection, PgConnection};
use std::str::FromStr;

use super::backup::{PgTarget, describe_sqlx, failed, quote_ident};
use super::verify::{check_checksum, restore_file};
use super::{Done, KindExecutor, TaskContext, TaskFailure};

mod container;

/// Runs `restore` tasks.
pub struct Restore;

#[async_trait::async_trait]
impl KindExecutor for Restore {
    type Spec = RestoreSpec;
    async fn run(&self, spec: RestoreSpec, ctx: &TaskContext) -> Result<Done, TaskFailure> {
        run(spec, ctx).await
    }
}

/// Clients reconnecting between the terminate and the rename make the
/// rename fail; it is tried this many times.
const SWAP_ATTEMPTS: u32 = 10;

async fn exec(conn: &mut PgConnection, sql: String) -> Result<(), String> {
    sqlx::raw_sql(sqlx::AssertSqlSafe(sql.clone()))
        .execute(conn)
        .await
        .map(|_| ())
        .map_err(|e| format!("{sql}: {}", describe_sqlx(&e)))
}

/// A connection to the server's maintenance database, from which other
/// databases can be created, renamed and dropped.
async fn maintenance(url: &str) -> Result<PgConnection, TaskFailure> {
    let options = PgConnectOptions::from_str(url)
        .map_err(|e| failed(describe_sqlx(&e)))?
        .database("postgres");
    tokio::time::timeout(super::backup::CONNECT_TIMEOUT, options.connect())
        .await
        .map_err(|_| failed("cannot connect to the server: no answer"))?
        .map_err(|e| {
            failed(format!(
                "cannot connect to the server: {}",
                describe_sqlx(&e)
            ))
        })
}

async fn run(spec: RestoreSpec, ctx: &TaskContext) -> Result<Done, TaskFailure> {
    let DbLocation::UrlSecret(secret) = &spec.location else {
        return container::run(&spec, ctx).await;
    };
    let url = ctx
        .secrets
        .get(secret)
        .ok_or_else(|| failed(format!("the secret {secret} was not sent with the task")))?;
    let tenant_url = tenant_url(&spec, url)?;
    let url = tenant_url.as_deref().unwrap_or(url);
    let target = PgTarget::parse(url)
        .map_err(|e| failed(format!("the secret {secret} is not a PostgreSQL URL: {e}")))?;
    let live = target.database.clone();
    if live.is_empty() {
        return Err(failed(format!("the URL in {secret} names no database")));
    }

    // In place, the file is checked before anything is touched; into a
    // new database, on the same read as the restore.
    if spec.mode == RestoreMode::Clean {
        checksum_first(&spec, ctx).await?;
    }
    let pg_restore = ctx.host.pg_tool("pg_restore");
    let mut admin = maintenance(url).await?;
    let step = Instant::now();
    let report = match &spec.mode {
        RestoreMode::Clean => {
            ctx.step_started("restore", &format!("in place into {live}, one transaction"));
            let args = vec![
                "--no-owner".into(),
                "--clean".into(),
                "--if-exists".into(),
                "--single-transaction".into(),
                "--exit-on-error".into(),
                format!("--dbname={}", target.url_for(&live)),
            ];
            restore_file(
                &pg_restore,
                &spec.path,
                None,
                args,
                target.password.clone(),
                &ctx.cancel,
            )
            .await
            .map_err(|e| {
                let why = format!("{e}; {live} is unchanged (the restore was one transaction)");
                ctx.step_finished("restore", false, &why, step);
                failed(why)
            })?;
            RestoreReport {
                backup_id: spec.backup_id.clone(),
                restored_into: live.clone(),
                previous: None,
            }
        }
        RestoreMode::Into(name) => {
            restore_new(ctx, &spec, &target, &mut admin, &live, name, step).await?;
            RestoreReport {
                backup_id: spec.backup_id.clone(),
                restored_into: name.clone(),
                previous: None,
            }
        }
        RestoreMode::Swap => {
            let new = swap_name(&live, ctx);
            restore_new(ctx, &spec, &target, &mut admin, &live, &new, step).await?;
            let previous = swap(ctx, &mut admin, &live, &new).await?;
            RestoreReport {
                backup_id: spec.backup_id.clone(),
                restored_into: live.clone(),
                previous: Some(previous),
            }
        }
    };
    if matches!(spec.mode, RestoreMode::Clean) {
        ctx.step_finished("restore", true, &format!("{live} restored in place"), step);
    }
    let _ = admin.close().await;
    done(&spec, &live, report)
}

/// The task's outcome: what now holds the backup, and what to drop when
/// done with the previous data.
fn done(spec: &RestoreSpec, live: &str, report: RestoreReport) -> Result<Done, TaskFailure> {
    let message = match &report.previous {
        Some(previous) => format!(
            "backup {} restored into {live}; the database it replaced is kept as {previous}: drop it when done with `DROP DATABASE {previous};`",
            spec.backup_id
        ),
        None => format!(
            "backup {} restored into {}",
            spec.backup_id, report.restored_into
        ),
    };
    Ok(Done {
        message,
        result_json: serde_json::to_string(&report).map_err(|e| failed(e.to_string()))?,
    })
}

/// `live` with `suffix`, cut to PostgreSQL's 63 bytes by shortening
/// `live` (the server would cut the suffix instead, silently).
fn derived_name(live: &str, suffix: &str) -> String {
    let mut end = 63usize.saturating_sub(suffix.len()).min(live.len());
    while !live.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}{suffix}", &live[..end])
}

/// `<live>_before_restore_<time>`: what the live database (or its tables)
/// is kept as after a swap.
fn before_restore_name(live: &str) -> String {
    let stamp = time::OffsetDateTime::now_utc();
    derived_name(
        live,
        &format!(
            "_before_restore_{:04}{:02}{:02}{:02}{:02}{:02}",
            stamp.year(),
            u8::from(stamp.month()),
            stamp.day(),
            stamp.hour(),
            stamp.minute(),
            stamp.second()
        ),
    )
}

/// The name of the new database a swap restores into first.
fn swap_name(live: &str, ctx: &TaskContext) -> String {
    derived_name(
        live,
        &format!("_restore_{}", &ctx.task_id.simple().to_string()[20..]),
    )
}

/// The `checksum` step: the whole file checked against the catalogue
/// before a restore in place starts.
pub(super) async fn checksum_first(
    spec: &RestoreSpec,
    ctx: &TaskContext,
) -> Result<(), TaskFailure> {
    let step = Instant::now();
    ctx.step_started("checksum", &spec.path);
    if let Err(e) = check_checksum(&spec.path, &spec.sha256, &ctx.cancel).await {
        if let TaskFailure::Failed(m) = &e {
            ctx.step_finished("checksum", false, m, step);
        }
        return Err(e);
    }
    ctx.step_finished("checksum", true, &format!("sha256 {}", spec.sha256), step);
    Ok(())
}

/// Creates database `new` and restores the backup into it; on failure
/// drops it again, leaving everything as it was.
async fn restore_new(
    ctx: &TaskContext,
    spec: &RestoreSpec,
    target: &PgTarget,
    admin: &mut PgConnection,
    live: &str,
    new: &str,
    step: Instant,
) -> Result<(), TaskFailure> {
    ctx.step_started("restore", &format!("into new database {new}"));
    exec(admin, format!("CREATE DATABASE {}", quote_ident(new)))
        .await
        .map_err(|e| {
            ctx.step_finished("restore", false, &e, step);
            failed(e)
        })?;
    let args = vec![
        "--no-owner".into(),
        "--exit-on-error".into(),
        format!("--dbname={}", target.url_for(new)),
    ];
    let pg_restore = ctx.host.pg_tool("pg_restore");
    if let Err(e) = restore_file(
        &pg_restore,
        &spec.path,
        Some(&spec.sha256),
        args,
        target.password.clone(),
        &ctx.cancel,
    )
    .await
    {
        let _ = exec(
            admin,
            format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", quote_ident(new)),
        )
        .await;
        let why = format!("{e}; {new} was dropped and {live} is unchanged");
        ctx.step_finished("restore", false, &why, step);
        return Err(failed(why));
    }
    ctx.step_finished("restore", true, &format!("restored into {new}"), step);
    Ok(())
}

/// Renames `live` to `<live>_before_restore_<time>` and `new` to `live`,
/// terminating `live`'s connections first (and again, if clients came
/// back before the rename). Returns the old database's new name.
async fn swap(
    ctx: &TaskContext,
    admin: &mut PgConnection,
    live: &str,
    new: &str,
) -> Result<String, TaskFailure> {
    let step = Instant::now();
    let previous = before_restore_name(live);
    ctx.step_started("swap", &format!("{live} → {previous}, {new} → {live}"));
    let mut last = String::new();
    for _ in 0..SWAP_ATTEMPTS {
        let terminate = sqlx::query(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = $1 AND pid <> pg_backend_pid()",
        )
        .bind(live)
        .execute(&mut *admin)
        .await;
        if let Err(e) = terminate {
            last = describe_sqlx(&e);
            continue;
        }
        match exec(
            admin,
            format!(
                "ALTER DATABASE {} RENAME TO {}",
                quote_ident(live),
                quote_ident(&previous)
            ),
        )
        .await
        {
            Ok(()) => {
                // The live name is free: nothing can connect to it until
                // the restored database takes it.
                exec(
                    admin,
                    format!("ALTER DATABASE {} RENAME TO {}", quote_ident(new), quote_ident(live)),
                )
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

/// The URL of the tenant database a tenant's backup goes back into (the
/// main database's URL with the tenant's name, or the tenants'
/// `url_template`); `None` for a backup of the database itself.
fn tenant_url(spec: &RestoreSpec, main_url: &str) -> Result<Option<String>, TaskFailure> {
    let Some(tenant) = &spec.tenant else {
        return Ok(None);
    };
    let t = crate::migrate::Tenant {
        database: tenant.clone(),
        id: None,
    };
    crate::migrate::tenants::tenant_url(main_url, &t, spec.tenant_url_template.as_deref())
        .map(Some)
        .map_err(|e| failed(format!("tenant {tenant}: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn derived_names_fit_postgres() {
        assert_eq!(derived_name("shop", "_restore_x"), "shop_restore_x");
        let long = "ferry_test_0123456789abcdef0123456789abcdef";
        let n = derived_name(long, "_before_restore_20261207013500");
        assert_eq!(n.len(), 63);
        assert!(n.ends_with("_before_restore_20261207013500"));
        assert_eq!(derived_name("ééé", &"x".repeat(60)).len(), 62);
    }
}
