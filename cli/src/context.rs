//! What every command gets: the global flags, the process environment, the
//! printer, and a way to connect to the coordinator.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
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

    /// Where the credentials file's path came from, for messages.
    fn credentials_source(&self) -> &'static str {
        if self.credentials.is_some() {
            "--credentials"
        } else if self
            .env
            .get("FERRY_CREDENTIALS")
            .is_some_and(|p| !p.is_empty())
        {
            "FERRY_CREDENTIALS"
        } else {
            "the default location, ~/.config/ferry/credentials"
        }
    }

    /// The app a command is about: `--app` if given, else the `app` of
    /// `./ferry.toml` (see [`app_or_file`]).
    pub fn app(&self, flag: Option<String>) -> Result<String, CliError> {
        app_or_file(flag, Path::new(APP_FILE))
    }

    /// Loads the credentials and connects.
    pub async fn connect(&self) -> Result<Session, CliError> {
        let path = credentials::resolve(
            self.credentials.as_deref(),
            self.env.get("FERRY_CREDENTIALS"),
            self.env.get("HOME"),
        )
        .map_err(|e| CliError::usage(e.to_string()))?;
        let credentials = Credentials::load(&path).map_err(|e| {
            CliError::usage(format!(
                "cannot read the credentials file {} (the path came from {}): {e}",
                path.display(),
                self.credentials_source()
            ))
        })?;
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

/// The app file a command looks for in the current directory when `--app`
/// is not given.
pub const APP_FILE: &str = "ferry.toml";

/// `--app` if given, else the `app` of the app file at `file`. Only that
/// one key is read, so a file with other problems still names its app
/// (`ferry validate` reports those).
pub fn app_or_file(flag: Option<String>, file: &Path) -> Result<String, CliError> {
    if let Some(app) = flag {
        return Ok(app);
    }
    let missing = || {
        CliError::usage(format!(
            "--app is required: no app named, and there is no {} in this directory to take it from",
            file.display()
        ))
    };
    let text = match std::fs::read_to_string(file) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Err(missing()),
        Err(e) => {
            return Err(CliError::usage(format!(
                "--app is not given and {} cannot be read for it: {e}",
                file.display()
            )));
        }
    };
    let table: toml::Table = toml::from_str(&text).map_err(|e| {
        CliError::usage(format!(
            "--app is not given and {} is not TOML, so it names no app: {}",
            file.display(),
            e.message()
        ))
    })?;
    match table.get("app") {
        Some(toml::Value::String(app)) if !app.trim().is_empty() => Ok(app.trim().to_string()),
        _ => Err(CliError::usage(format!(
            "--app is not given and {} has no `app = \"NAME\"` to take it from",
            file.display()
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn app_comes_from_the_flag_then_the_app_file() {
        let dir = std::env::temp_dir().join(format!("ferry-cli-app-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("ferry.toml");
        let _ = std::fs::remove_file(&file);

        let err = app_or_file(None, &file).unwrap_err();
        assert_eq!(err.code, ferry_common::exit::USAGE);
        assert!(err.message.contains("--app is required"), "{}", err.message);
        assert!(err.message.contains("ferry.toml"), "{}", err.message);

        std::fs::write(&file, "app = \"shop\"\n[services.web]\nimage = 3\n").unwrap();
        assert_eq!(
            app_or_file(None, &file).unwrap(),
            "shop",
            "only `app` is read"
        );
        assert_eq!(
            app_or_file(Some("other".into()), &file).unwrap(),
            "other",
            "the flag wins"
        );

        std::fs::write(&file, "[services.web]\n").unwrap();
        let err = app_or_file(None, &file).unwrap_err();
        assert!(err.message.contains("no `app = "), "{}", err.message);

        std::fs::write(&file, "app = [").unwrap();
        let err = app_or_file(None, &file).unwrap_err();
        assert!(err.message.contains("is not TOML"), "{}", err.message);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
