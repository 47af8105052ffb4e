//! One migration run per database at a time, held by the database itself:
//! a session-level advisory lock on the run's dedicated connection.
//!
//! It is taken with `pg_try_advisory_lock` in a bounded loop (never a
//! blocking `pg_advisory_lock`, which would wait past any deadline and past
//! a cancel), and it is always released: [`LockedConnection::release`]
//! unlocks and closes on every path the run takes, and when a run is
//! cancelled or the agent dies the connection closes, and PostgreSQL frees
//! a session's advisory locks when its session ends. (sqlx's own `Migrator`
//! is not used: it keeps its lock after a failed migration.)

use std::ops::{Deref, DerefMut};
use std::time::{Duration, Instant};

use sqlx::{Connection, PgConnection};
use tokio_util::sync::CancellationToken;

use super::error::MigrateError;

/// The advisory lock key: the bytes of `ferry_mg`. Advisory locks are per
/// database already, so one key serves every database on a server.
pub const LOCK_KEY: i64 = 0x6665_7272_795f_6d67;

/// How often the lock is tried while another run holds it.
const RETRY: Duration = Duration::from_millis(100);

/// A connection holding its database's migration lock.
pub struct LockedConnection {
    conn: PgConnection,
}

impl std::fmt::Debug for LockedConnection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("LockedConnection")
    }
}

/// Takes the lock on `conn`'s database, trying for at most `wait`. On any
/// error the connection is closed (so nothing is left half-held).
pub async fn acquire(
    mut conn: PgConnection,
    database: &str,
    wait: Duration,
    cancel: &CancellationToken,
) -> Result<LockedConnection, MigrateError> {
    let start = Instant::now();
    loop {
        let got = sqlx::query_scalar::<_, bool>("SELECT pg_try_advisory_lock($1)")
            .bind(LOCK_KEY)
            .fetch_one(&mut conn)
            .await;
        match got {
            Ok(true) => return Ok(LockedConnection { conn }),
            Ok(false) => {}
            Err(e) => {
                let err = MigrateError::database(database, &e);
                let _ = conn.close().await;
                return Err(err);
            }
        }
        if start.elapsed() + RETRY > wait {
            let holder = holder(&mut conn).await.unwrap_or_default();
            let _ = conn.close().await;
            return Err(MigrateError::LockBusy {
                database: database.to_owned(),
                waited: start.elapsed(),
                holder,
            });
        }
        tokio::select! {
            () = tokio::time::sleep(RETRY) => {}
            () = cancel.cancelled() => {
                let _ = conn.close().await;
                return Err(MigrateError::Cancelled);
            }
        }
    }
}

/// `, held by pid N (application)` when the server can say who holds it.
async fn holder(conn: &mut PgConnection) -> Option<String> {
    let row: Option<(i32, String)> = sqlx::query_as(
        "SELECT a.pid, coalesce(a.application_name, '') FROM pg_locks l \
         JOIN pg_stat_activity a ON a.pid = l.pid \
         WHERE l.locktype = 'advisory' AND l.granted \
           AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database()) \
           AND l.classid::bigint = $1 AND l.objid::bigint = $2 AND l.objsubid = 1",
    )
    .bind((LOCK_KEY as u64 >> 32) as i64)
    .bind((LOCK_KEY as u64 & 0xffff_ffff) as i64)
    .fetch_optional(conn)
    .await
    .ok()?;
    row.map(|(pid, app)| {
        if app.is_empty() {
            format!(", held by pid {pid}")
        } else {
            format!(", held by pid {pid} ({app})")
        }
    })
}

impl LockedConnection {
    /// Unlocks and closes. An unlock that fails (a broken connection) is
    /// still a release: the session is gone, and its lock with it.
    pub async fn release(mut self) {
        let _ = sqlx::query("SELECT pg_advisory_unlock($1)")
            .bind(LOCK_KEY)
            .execute(&mut self.conn)
            .await;
        let _ = self.conn.close().await;
    }
}

impl Deref for LockedConnection {
    type Target = PgConnection;
    fn deref(&self) -> &PgConnection {
        &self.conn
    }
}

impl DerefMut for LockedConnection {
    fn deref_mut(&mut self) -> &mut PgConnection {
        &mut self.conn
    }
}
