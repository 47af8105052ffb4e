//! The store itself: which backend, a health check, the one-time
//! bootstrap of the first admin (recorded in the `meta` table), and the
//! coordination of coordinators sharing the store (notifications,
//! leadership), which only PostgreSQL has more than one of.

use ferry_common::identity::Role;
use tokio::sync::broadcast;

use super::db::query;
use super::{Backend, Notification, Store, StoreError, rows};

impl Store {
    pub fn backend(&self) -> Backend {
        self.pool.backend()
    }

    /// Cheap round trip, for `/readyz`.
    pub async fn ping(&self) -> Result<(), StoreError> {
        query("SELECT 1").execute(&self.pool).await?;
        Ok(())
    }

    /// On the very first start of a store (recorded in a meta table), adds
    /// the admin operator `name`. Returns whether it did. Never re-adds it
    /// later, even if every operator has since been revoked.
    ///
    /// Relies on `INSERT … ON CONFLICT DO NOTHING` on its `meta` key, which
    /// on PostgreSQL makes a concurrent second inserter wait for the first
    /// and then do nothing.
    pub async fn bootstrap_admin(&self, name: &str, now_ms: i64) -> Result<bool, StoreError> {
        let mut tx = self.pool.begin().await?;
        let first_start =
            query("INSERT INTO meta (key, value) VALUES ($1, $2) ON CONFLICT (key) DO NOTHING")
                .bind(rows::BOOTSTRAP_KEY)
                .bind(name)
                .execute(&mut tx)
                .await?
                == 1;
        if !first_start {
            return Ok(false);
        }
        let added = query(
            "INSERT INTO operators (name, role, created_at_ms, created_by) VALUES ($1, $2, $3, $4) \
             ON CONFLICT (name) DO NOTHING",
        )
        .bind(name)
        .bind(Role::Admin.as_str())
        .bind(now_ms)
        .bind(rows::SYSTEM_ACTOR)
        .execute(&mut tx)
        .await?
            == 1;
        tx.commit().await?;
        Ok(added)
    }

    /// Receives notifications from this process and (PostgreSQL) from
    /// every coordinator sharing the store.
    pub fn subscribe(&self) -> broadcast::Receiver<Notification> {
        self.notifications.subscribe()
    }

    /// Publishes to every subscriber of every coordinator sharing the store
    /// (PostgreSQL: `NOTIFY ferry_events`, heard back through the listener
    /// like every other coordinator's), this one included. An SQLite store
    /// has one coordinator: only this process's subscribers hear it.
    pub async fn notify(&self, notification: Notification) -> Result<(), StoreError> {
        match &self.postgres {
            Some(pg) => pg.notify(&self.pool, &notification).await,
            None => {
                // No subscriber is not an error: nobody needed to hear it.
                let _ = self.notifications.send(notification);
                Ok(())
            }
        }
    }

    /// Whether this process is the leader that runs time-based duties.
    /// SQLite: always (one coordinator per store). PostgreSQL: takes or
    /// renews the leader's lease, which expires when its holder stops
    /// renewing it (see `postgres::LEADER_LEASE`); call it every tick.
    pub async fn try_lead(&self) -> Result<bool, StoreError> {
        match &self.postgres {
            Some(pg) => pg.try_lead().await,
            None => Ok(true),
        }
    }
}
