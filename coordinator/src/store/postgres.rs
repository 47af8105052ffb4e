//! The PostgreSQL backend, for production: several coordinators may share
//! one database, so every check-then-write is made safe against the others
//! (row locks, see `db::row_lock` and [`super::jobs`]).
//!
//! What only this backend has is here: connecting and migrating, and the
//! coordination of coordinators. They wake each other with `NOTIFY
//! ferry_events`: a task started by [`Store::connect_postgres`] listens on
//! a connection of its own and forwards what it hears to
//! [`Store::subscribe`]rs until the store is dropped. The leader is
//! whoever holds the unexpired lease in `leader_lease`.

use std::str::FromStr;
use std::time::Duration;

use sqlx::Connection;
use sqlx::postgres::{PgConnectOptions, PgConnection, PgListener, PgPoolOptions};
use tokio::sync::broadcast;
use tokio_util::sync::{CancellationToken, DropGuard};

use super::db::{Pool, query};
use super::notify::{self, NOTIFY_CHANNEL};
use super::rows::{self, EmbeddedMigration};
use super::{Notification, Store, StoreError};

pub(crate) const MIGRATIONS: &[EmbeddedMigration] = &[
    (
        1,
        "foundation",
        include_str!("../../../migrations/postgres/0001_foundation.sql"),
    ),
    (
        2,
        "jobs",
        include_str!("../../../migrations/postgres/0002_jobs.sql"),
    ),
    (
        3,
        "secrets",
        include_str!("../../../migrations/postgres/0003_secrets.sql"),
    ),
    (
        4,
        "rollouts",
        include_str!("../../../migrations/postgres/0004_rollouts.sql"),
    ),
    (
        5,
        "agent_capabilities",
        include_str!("../../../migrations/postgres/0005_agent_capabilities.sql"),
    ),
    (
        6,
        "leader_lease",
        include_str!("../../../migrations/postgres/0006_leader_lease.sql"),
    ),
    (
        7,
        "agent_previous_certificate",
        include_str!("../../../migrations/postgres/0007_agent_previous_certificate.sql"),
    ),
    (
        8,
        "audit_scope",
        include_str!("../../../migrations/postgres/0008_audit_scope.sql"),
    ),
    (
        9,
        "rollout_cancel_redeploy_restart",
        include_str!("../../../migrations/postgres/0009_rollout_cancel_redeploy_restart.sql"),
    ),
    (
        10,
        "backups",
        include_str!("../../../migrations/postgres/0010_backups.sql"),
    ),
    (
        11,
        "schedules",
        include_str!("../../../migrations/postgres/0011_schedules.sql"),
    ),
    (
        12,
        "migrations",
        include_str!("../../../migrations/postgres/0012_migrations.sql"),
    ),
];

/// How long a leader's lease lasts without renewal. The scheduler renews
/// it every tick (500 ms); a leader that stops (killed, frozen by SIGSTOP
/// or a VM pause, cut off by a partition) loses it this long after its
/// last renewal, and another coordinator takes the duties over.
pub(super) const LEADER_LEASE: Duration = Duration::from_secs(5);

/// Notifications a slow subscriber may lag behind before it misses some.
const NOTIFICATION_BUFFER: usize = 1024;

/// Waits between attempts to get the listener's connection back.
const LISTEN_RETRY_MIN: Duration = Duration::from_millis(100);
const LISTEN_RETRY_MAX: Duration = Duration::from_secs(10);

/// What a PostgreSQL store has beyond its pool: the notification listener
/// and this process's name as a leader.
pub(super) struct Coordination {
    /// Who holds the lease when this store does: unique per process.
    holder: String,
    /// The lease is renewed on a connection of its own, so a busy pool
    /// never costs a live leader its leadership.
    lease_conn: tokio::sync::Mutex<Option<PgConnection>>,
    options: PgConnectOptions,
    /// Ends the notification listener when the store is dropped.
    _listener: DropGuard,
}

/// How long a caller waits for a pooled connection before the store
/// reports the database unreachable. Not shorter: when 10,000 agents
/// reconnect at once their sessions queue for the pool, and a 3 s wait
/// turned one such storm into 57,000 refused sessions (ferry-bench). What
/// must answer fast bounds its own wait (`/readyz`: 2 s), the ingest
/// retries until stored, and the leader's lease has a connection of its
/// own.
const ACQUIRE_TIMEOUT: Duration = Duration::from_secs(30);

impl Store {
    /// Connects to the PostgreSQL database at `url` and applies pending
    /// migrations; concurrent coordinators wait for each other's migration.
    pub async fn connect_postgres(url: &str) -> Result<Self, StoreError> {
        let options = PgConnectOptions::from_str(url).map_err(|_| StoreError::BadUrl {
            url: without_credentials(url),
        })?;
        migrate(&options).await?;
        let pool = PgPoolOptions::new()
            .acquire_timeout(ACQUIRE_TIMEOUT)
            .connect_with(options.clone())
            .await?;
        // Listening before returning: a notification sent once `connect`
        // is done reaches this store's subscribers.
        let listener = listen(&options).await?;
        let notifications = broadcast::Sender::new(NOTIFICATION_BUFFER);
        let stop = CancellationToken::new();
        tokio::spawn(forward_notifications(
            listener,
            notifications.clone(),
            stop.clone(),
        ));
        Ok(Self {
            pool: Pool::Postgres(pool),
            notifications,
            postgres: Some(Coordination {
                holder: uuid::Uuid::now_v7().to_string(),
                lease_conn: tokio::sync::Mutex::new(None),
                options: options.clone(),
                _listener: stop.drop_guard(),
            }),
        })
    }
}

impl Coordination {
    /// Heard back through the listener, like every other coordinator's.
    pub(super) async fn notify(
        &self,
        pool: &Pool,
        notification: &Notification,
    ) -> Result<(), StoreError> {
        query("SELECT pg_notify($1, $2)")
            .bind(NOTIFY_CHANNEL)
            .bind(notify::notification_payload(notification))
            .execute(pool)
            .await?;
        Ok(())
    }

    /// Takes or renews the leader's lease: it is this store's if it
    /// already was, or if the last holder let it expire. Times are the
    /// database server's (`clock_timestamp()`), so coordinators' clocks
    /// need not agree. A leader that stops renewing is no longer one
    /// [`LEADER_LEASE`] later, even if its connections stay open (a frozen
    /// process keeps its sockets, which is why a session advisory lock
    /// was not enough).
    pub(super) async fn try_lead(&self) -> Result<bool, StoreError> {
        let mut conn = self.lease_conn.lock().await;
        if conn.is_none() {
            *conn = Some(PgConnection::connect_with(&self.options).await?);
        }
        let Some(c) = conn.as_mut() else {
            unreachable!("connected just above")
        };
        let renewed = query(
            "UPDATE leader_lease SET holder = $1, \
             expires_at_ms = CAST(extract(epoch FROM clock_timestamp()) * 1000 AS BIGINT) + $2 \
             WHERE id = 1 AND (holder = $1 \
               OR expires_at_ms < CAST(extract(epoch FROM clock_timestamp()) * 1000 AS BIGINT))",
        )
        .bind(self.holder.as_str())
        .bind(LEADER_LEASE.as_millis() as i64)
        .execute(&mut *c)
        .await;
        match renewed {
            Ok(n) => Ok(n == 1),
            Err(e) => {
                // A broken connection is replaced on the next tick.
                *conn = None;
                Err(e)
            }
        }
    }
}

/// A listener on a connection of its own (a pool of one, through which it
/// reconnects), so it never holds one of the main pool's connections.
async fn listen(options: &PgConnectOptions) -> Result<PgListener, StoreError> {
    let pool = PgPoolOptions::new()
        .max_connections(1)
        .max_lifetime(None)
        .idle_timeout(None)
        .connect_with(options.clone())
        .await?;
    let mut listener = PgListener::connect_with(&pool).await?;
    listener.listen(NOTIFY_CHANNEL).await?;
    Ok(listener)
}

/// Forwards every notification on the channel, this process's own
/// included, to the local subscribers until `stop`. The listener
/// reconnects by itself; notifications sent while it is away are lost, so
/// subscribers must not rely on them alone.
async fn forward_notifications(
    mut listener: PgListener,
    to: broadcast::Sender<Notification>,
    stop: CancellationToken,
) {
    let mut retry = LISTEN_RETRY_MIN;
    loop {
        let received = tokio::select! {
            () = stop.cancelled() => return,
            received = listener.try_recv() => received,
        };
        match received {
            Ok(Some(notification)) => {
                retry = LISTEN_RETRY_MIN;
                match notify::parse_notification(notification.payload()) {
                    // No subscriber is not an error: nobody needed to hear it.
                    Some(notification) => drop(to.send(notification)),
                    None => tracing::warn!(
                        payload = notification.payload(),
                        "ignoring an unknown notification on {NOTIFY_CHANNEL}"
                    ),
                }
            }
            Ok(None) => {
                tracing::warn!(
                    "the notification listener lost its connection and reconnects; subscribers look at the store again"
                );
                drop(to.send(Notification::Missed));
            }
            Err(error) => {
                tracing::warn!(%error, "the notification listener failed; retrying in {retry:?}");
                tokio::select! {
                    () = stop.cancelled() => return,
                    () = tokio::time::sleep(retry) => {}
                }
                retry = (retry * 2).min(LISTEN_RETRY_MAX);
                // Whatever was sent while it was down is lost.
                drop(to.send(Notification::Missed));
            }
        }
    }
}

/// sqlx's migrator takes a session-level advisory lock and keeps it when a
/// migration fails; only ending the session releases it. So migrations run
/// on a connection of their own, closed whatever the outcome, never on a
/// pooled one that would go on holding the lock and block every other
/// coordinator's start.
async fn migrate(options: &PgConnectOptions) -> Result<(), StoreError> {
    let mut conn = PgConnection::connect_with(options).await?;
    // `run_direct` rather than `run(&mut conn)`: the latter's `Acquire`
    // bound makes this future fail to be `Send` (an "implementation of
    // `Acquire` is not general enough" error wherever it is spawned).
    let outcome = rows::migrator(MIGRATIONS)
        .run_direct(None, &mut conn, false)
        .await;
    let closed = conn.close().await;
    outcome?;
    closed?;
    Ok(())
}

/// A URL fit for an error message: errors get logged, passwords must not.
fn without_credentials(url: &str) -> String {
    match url.split_once("://") {
        Some((scheme, rest)) => match rest.rsplit_once('@') {
            Some((_, host)) => format!("{scheme}://***@{host}"),
            None => url.into(),
        },
        None => url.into(),
    }
}
