//! `ferry-common`: what the coordinator, the agent and the CLI share.
//!
//! - [`appfile`]: the app file `ferry.toml` (services, environments,
//!   rollout, smoke checks): types, parsing and validation with line numbers.
//! - [`identity`]: SPIFFE identities of agents and operators, roles, names.
//! - [`job`]: job kinds, typed specs, target selectors, probe results.
//! - [`pki`]: the certificate authority, CSRs, pins, certificate details.
//! - [`tls`]: rustls configurations for server and clients, the per-RPC peer
//!   verifier, and tonic channels over our own TLS connector.
//! - [`credentials`]: the operator credentials file and where to find it.
//! - [`labels`], [`time`]: small shared parsers and formatters.
//! - [`backoff`]: exponential backoff with full jitter.
//! - [`fsutil`]: atomic, private file writes.
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
pub mod pki;
pub mod redact;
pub mod secret;
pub mod shutdown;
pub mod telemetry;
pub mod time;
pub mod tls;

/// The version every Ferry binary reports.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");
