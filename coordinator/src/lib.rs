//! `ferry-coordinator`: keeps the desired work and its history, holds the
//! agents' sessions, and answers the operators' CLI.
//!
//! - [`server`]: [`server::run`] (the binary's entry) and [`server::serve`]
//!   (start a coordinator on given listeners and store, as tests do).
//! - [`init`]: `ferry-coordinator init` (CA, server certificate, config, admin credentials).
//! - [`config`]: layered configuration (defaults, file, environment, flags).
//! - [`net`]: the TLS listener: deadlines and connection limits, and peer
//!   certificates carried to the RPC layer.
//! - [`ratelimit`]: rate limits for log lines and failed attempts per address.
//! - [`auth`]: authentication layer and per-RPC authorization.
//! - [`grpc`]: thin `AgentService` / `OperatorService` adapters.
//! - [`agents`], [`operators`]: what those RPCs do (enrollment, sessions,
//!   renewal, revocation, join tokens, operators).
//! - [`migrations`]: `RunMigrate` (one migrate job per database, claimed
//!   in the store so one runs at a time per database), `MigrateStatus`.
//! - [`backups`]: `RunBackup` (databases kept per (app, env), one backup
//!   job per database on its one agent) and the catalogue on the wire.
//! - [`rollout`]: rollouts (deploy, rollback, redeploy, restart) and their
//!   restartable driver; [`pipeline`]: the driver's decisions, without I/O.
//! - [`schedules`]: backup, verify and prune schedules: applying an app
//!   file's (also on every deploy), adding and removing by hand, and
//!   firing what is due on the leader (`schedules::due` is the pure timing).
//! - [`secrets_key`]: the key every secret is sealed with; sealing and opening.
//! - [`secrets`]: secrets per (app, env): setting, listing, deleting and
//!   resolving them, and the start-time key check.
//! - [`scheduler`]: submit, dispatch, event ingestion and acks, cancel,
//!   leader duties, watch.
//! - [`observe`]: what operators see of an app: status (an `inspect` job),
//!   logs (a `logs` job streamed back), the audit log.
//! - [`sessions`]: live agent sessions on this process.
//! - [`job`]: the pure job and task state machines.
//! - [`store`]: the persistent state on SQLite or PostgreSQL.
//! - [`admin`], [`metrics`]: `/healthz`, `/readyz`, `/metrics`.
//! - [`wire`]: bounds and character checks of free text that arrives over the network.
//! - [`error`]: the error type and its mapping to gRPC statuses.

pub mod admin;
pub mod agents;
pub mod auth;
pub mod backups;
pub mod config;
pub mod core;
pub mod error;
pub mod grpc;
pub mod init;
pub mod job;
pub mod metrics;
pub mod migrations;
pub mod net;
pub mod observe;
pub mod operators;
pub mod pipeline;
pub mod ratelimit;
pub mod rollout;
pub mod scheduler;
pub mod schedules;
pub mod secrets;
pub mod secrets_key;
pub mod server;
pub mod sessions;
pub mod store;
pub mod wire;
