//! The migration engine: applies an app's SQL migrations to its main
//! database and then to every tenant database, the way the app's own tool
//! would order them, with a ledger, a lock per database, dry runs and a
//! per-database report. The future `migrate` executor calls [`run`] (or
//! [`run_database`] for one database).
//!
//! - [`layout`]: a folder (on disk, or the files a job carried) read into
//!   the ordered migrations of a sqlx, Prisma, Drizzle or plain layout.
//! - [`script`]: where a file's statements and `COPY … FROM stdin` data are,
//!   read as psql reads them; never a naive split on `;`.
//! - [`apply`]: one migration as written, in its own transaction with its
//!   ledger row (or outside one for `-- no-transaction`).
//! - [`ledger`]: Ferry's table of applied migrations in each database.
//! - [`lock`]: the per-database advisory lock, taken with a timeout and
//!   always released.
//! - [`adopt`]: what `_sqlx_migrations` / `_prisma_migrations` recorded, so
//!   moving an app onto Ferry never re-runs a migration.
//! - [`plan`]: applied, to adopt, pending and drift, decided without I/O.
//! - [`database`]: one database's run on its own connection.
//! - [`tenants`]: the tenant list, tenant URLs, filters.
//! - [`fleet`]: main first, then the tenants with bounded concurrency and
//!   the failure policy.
//! - [`report`]: per-database reports and progress events.
//! - [`error`]: the engine's error type.

pub mod adopt;
pub mod apply;
pub mod database;
pub mod error;
pub mod fleet;
pub mod layout;
pub mod ledger;
pub mod lock;
pub mod plan;
pub mod report;
pub mod script;
pub mod tenants;

pub use database::{BeforeChange, BeforeChangeFuture, Settings, Target, run_database};
pub use error::MigrateError;
pub use fleet::{
    DEFAULT_CONCURRENCY, OnFailure, Request, RunOne, RunReport, Tenants, run, run_with,
};
pub use layout::{Files, Layout, Migration, MigrationSet, load, load_dir};
pub use ledger::LedgerName;
pub use report::{DatabaseReport, Progress, ProgressFn, Role};
pub use tenants::{Filter, Tenant, TenantSource};
