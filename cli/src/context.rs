//! What every command gets: the global flags, the process environment, the
//! printer, and a way to connect to the coordinator.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;

use ferry_common::credentials::{self, Credentials};
use ferry_common::tls;
use ferry_proto::v1::operator_service_client::OperatorServiceClient;
use tonic::transport::Channel;

use crate::error::CliError;
use crate::render::{Output, Printer, Render};

/// The process environment the CLI reads, passed in by `main`.
#[derive(Debug, Clone, Default)]
pub struct CliEnv {
    pub vars: HashMap<String, String>,
    /// Whether stdout is a terminal (progress display, table widths).
    pub stdout_is_terminal: bool,
    /// Whether stdin is a terminal (`ferry secret set` then reads one line
    /// instead of everything up to end of file; protected deploys ask).
    pub stdin_is_terminal: bool,
}

impl CliEnv {
    pub fn get(&self, key: &str) -> Option<&str> {
        self.vars.get(key).map(String::as_str)
    }
}

/// One invocation's context.
#[derive(Debug)]
pub struct Ctx {
    pub output: Output,
    /// `--credentials`, if given.
    pub credentials: Option<PathBuf>,
    pub env: CliEnv,
    printer: Printer,
}

/// A connected CLI: the credentials in use and a client.
pub struct Session {
    pub credentials: Credentials,
    pub client: OperatorServiceClient<Channel>,
}

impl Ctx {
    pub fn new(output: Output, credentials: Option<PathBuf>, env: CliEnv) -> Self {
        let printer = Printer::new(output, env.stdout_is_terminal);
        Ctx {
            output,
            credentials,
            env,
            printer,
        }
    }

    /// Whether scripts are reading (`--output json`).
    pub fn json(&self) -> bool {
        self.output == Output::Json
    }

    /// Prints a view (or one item of a streaming view) in the chosen format.
    pub fn print<V: Render + ?Sized>(&self, view: &V) -> Result<(), CliError> {
        self.printer.print(view)
    }

    /// Loads the credentials and connects.
    pub async fn connect(&self) -> Result<Session, CliError> {
        let path = credentials::resolve(
            self.credentials.as_deref(),
            self.env.get("FERRY_CREDENTIALS"),
            self.env.get("HOME"),
        )
        .map_err(|e| CliError::usage(e.to_string()))?;
        let credentials = Credentials::load(&path).map_err(|e| CliError::usage(e.to_string()))?;
        let config = tls::client_config(
            &credentials.ca,
            Some((&credentials.certificate, &credentials.key)),
        )
        .map_err(|e| CliError::usage(format!("{}: {e}", path.display())))?;
        // Coordinators sharing a store are tried in turn, as agents do, so
        // the CLI fails over with them.
        let from_env = self.env.get("FERRY_COORDINATOR");
        let source = match from_env {
            Some(v) if !v.trim().is_empty() => "FERRY_COORDINATOR".to_string(),
            _ => path.display().to_string(),
        };
        let mut failures = Vec::new();
        for address in credentials.coordinators(from_env) {
            match tls::channel(address, Arc::clone(&config)).await {
                Ok(channel) => {
                    return Ok(Session {
                        client: OperatorServiceClient::new(channel),
                        credentials,
                    });
                }
                Err(e) => failures.push(e.to_string()),
            }
        }
        Err(CliError::unavailable(if failures.is_empty() {
            format!("no coordinator address in {source}")
        } else {
            format!(
                "{} (coordinator addresses from {source})",
                failures.join("; ")
            )
        }))
    }
}
