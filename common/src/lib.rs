//! `ferry-common`: what the coordinator, the agent and the CLI share.
//!
//! - [`appfile`]: the app file `ferry.toml`: one module per section
//!   (`environment`, `service` with `ports` and `volumes`, `healthcheck`,
//!   `secrets`, `smoke`), each with its types, checks, defaults and tests;
//!   `raw` (the serde layer and the line index), `check` (the checking
//!   pass), `errors` (problems with file, line and field path) and
//!   `release` (a release as a deploy spec).
//! - [`identity`]: SPIFFE identities of agents and operators, roles, names.
//! - [`job`]: target selectors, probe results, and the job kind registry:
//!   one module per kind (`probe`, `smoke`, `deploy`) with its spec type and
//!   its `KindSpec` impl (name, CLI commands, doc, validation, secrets,
//!   timeout, host lock); `JobKind` and `JobSpec` are generated from the
//!   registry's one line per kind. `docs/job-kinds.md` describes each kind.
//! - [`status`]: job statuses, task states, rollout statuses: one spelling each.
//! - [`pki`]: the certificate authority, CSRs, pins, certificate details.
//! - [`tls`]: rustls configurations for server and clients, the per-RPC peer
//!   verifier, and tonic channels over our own TLS connector.
//! - [`credentials`]: the operator credentials file and where to find it.
//! - [`labels`], [`time`]: small shared parsers and formatters.
//! - [`limits`]: limits the coordinator enforces and the CLI checks first.
//! - [`rules`]: the rules for names and values that reach Docker (app,
//!   env and service names, images, users, variables, versions), used by
//!   the app file and by the deploy spec's own validation.
//! - [`backoff`]: exponential backoff with full jitter.
//! - [`fsutil`]: atomic, private file writes.
//! - [`migration_layout`]: an app's migrations folder read in its tool's
//!   order (sqlx, Prisma, Drizzle, plain), by the CLI and the agent alike.
//! - [`health`], [`host`]: host health as stored and shown, local host facts.
//! - [`exit`]: process exit codes; [`shutdown`]: SIGINT/SIGTERM handling.
//! - [`redact`]: replacing secret values in log lines with `[redacted:NAME]`.
//! - [`secret`]: the rules for secrets' names and values.
//! - [`telemetry`]: logging, OpenTelemetry export (OTLP) and W3C trace context.

pub mod appfile;
pub mod backoff;
pub mod credentials;
pub mod exit;
pub mod fsutil;
pub mod health;
pub mod host;
pub mod identity;
pub mod job;
pub mod labels;
pub mod limits;
pub mod migration_layout;
pub mod pki;
pub mod redact;
pub mod rules;
pub mod secret;
pub mod shutdown;
pub mod status;
pub mod telemetry;
pub mod time;
pub mod tls;

/// The version every Ferry binary reports.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");
