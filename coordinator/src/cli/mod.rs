//! `ferry`, the operator CLI. Every command but `validate` (which checks an
//! app file locally) talks to the coordinator over mutually authenticated
//! gRPC with the operator's credentials file, prints
//! text for people or JSON (`--output json`) for scripts, and exits with the
//! codes in [`ferry_common::exit`].

use std::collections::HashMap;
use std::path::PathBuf;

use clap::{Parser, Subcommand, ValueEnum};
use ferry_common::credentials::{self, Credentials};
use ferry_common::exit;
use ferry_common::tls;
use ferry_proto::v1::operator_service_client::OperatorServiceClient;
use tonic::transport::Channel;

mod commands;
pub mod jobs;
pub mod rollout;
pub mod secrets;
pub mod validate;
pub mod watch;

#[derive(Debug, Parser)]
#[command(
    name = "ferry",
    version,
    about = "Operate a Ferry coordinator: deploys, releases, agents, join tokens, operators, jobs, secrets"
)]
pub struct Cli {
    /// Credentials file (default: $FERRY_CREDENTIALS, then ~/.config/ferry/credentials).
    #[arg(long, global = true, value_name = "FILE")]
    pub credentials: Option<PathBuf>,
    /// Output format.
    #[arg(long, global = true, value_enum, default_value_t = Output::Text)]
    pub output: Output,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Output {
    Text,
    Json,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Show the coordinator, its store, agent counts and who you are.
    Status,
    /// List enrolled agents with their state and host health.
    Agents,
    /// Manage one agent.
    Agent {
        #[command(subcommand)]
        command: AgentCommand,
    },
    /// Manage join tokens.
    Token {
        #[command(subcommand)]
        command: TokenCommand,
    },
    /// Manage operators (people and CI systems using this CLI).
    Operator {
        #[command(subcommand)]
        command: OperatorCommand,
    },
    /// Report hosts' facts (OS, CPU, memory, disks, Docker, PostgreSQL, clock): a preflight.
    Probe {
        /// Agent to probe (repeat for several; default: every agent).
        #[arg(long = "agent", value_name = "NAME")]
        agents: Vec<String>,
        /// Only agents with these labels, e.g. env=production.
        #[arg(long, default_value = "")]
        labels: String,
        /// Print the job id and return at once instead of watching.
        #[arg(long)]
        detach: bool,
        /// How long to wait for offline agents, e.g. 10m (default: the coordinator's, 1h).
        #[arg(long)]
        deadline: Option<String>,
        /// Submitting again with the same key returns the first job.
        #[arg(long, value_name = "KEY")]
        idempotency_key: Option<String>,
    },
    /// List jobs, newest first.
    Jobs {
        /// pending, running, succeeded, failed or cancelled.
        #[arg(long)]
        status: Option<String>,
        #[arg(long)]
        kind: Option<String>,
        /// Jobs with a task on this agent.
        #[arg(long)]
        agent: Option<String>,
        /// Only jobs created within this long, e.g. 1h, 7d.
        #[arg(long)]
        since: Option<String>,
        #[arg(long, default_value_t = 50)]
        limit: u32,
    },
    /// Show or cancel one job.
    Job {
        #[command(subcommand)]
        command: JobCommand,
    },
    /// Follow a job live until it ends; exit 0 succeeded, 1 failed, 3 cancelled.
    Watch {
        /// Job id.
        id: String,
    },
    /// Manage secrets of an app's environments (values are write-only).
    Secret {
        #[command(subcommand)]
        command: SecretCommand,
    },
    /// Deploy a version of an app to an environment: shows the plan, asks
    /// for confirmation on protected environments, deploys batch by batch,
    /// runs the smoke checks, and reverts updated hosts on the first
    /// failure. Exit 0 when the release is out, 1 if it failed (reverted).
    Deploy {
        /// The app file.
        #[arg(short = 'f', long = "file", default_value = "ferry.toml")]
        file: PathBuf,
        /// Environment, e.g. staging.
        #[arg(long)]
        env: String,
        /// The version to deploy (fills {version} in images), e.g. 1.4.2.
        #[arg(long)]
        version: String,
        #[command(flatten)]
        flags: RolloutFlags,
    },
    /// Redeploy an earlier release of an app's environment through the same
    /// health-gated path (default: the release before the current one).
    Rollback {
        #[arg(long)]
        app: String,
        #[arg(long)]
        env: String,
        /// The version to go back to (it must have deployed successfully).
        #[arg(long, value_name = "VERSION")]
        to: Option<String>,
        #[command(flatten)]
        flags: RolloutFlags,
    },
    /// Release history of an app: version, image, who, when, outcome.
    Releases {
        #[arg(long)]
        app: String,
        /// Only this environment (default: every one).
        #[arg(long)]
        env: Option<String>,
        #[arg(long, default_value_t = 20)]
        limit: u32,
    },
    /// Follow a rollout by id until it ends (exit 0 succeeded, 1 otherwise).
    Rollout {
        /// Rollout id (see `ferry releases`).
        id: String,
    },
    /// Check an app file (ferry.toml) without contacting the coordinator;
    /// every problem is printed with its line, exit 2 if there is any.
    Validate {
        /// The app file.
        #[arg(short = 'f', long = "file", default_value = "ferry.toml")]
        file: PathBuf,
    },
}

/// Options of `ferry deploy` and `ferry rollback`.
#[derive(Debug, Clone, clap::Args)]
pub struct RolloutFlags {
    /// Show the plan and exit; nothing runs.
    #[arg(long)]
    pub dry_run: bool,
    /// Do not ask for confirmation on protected environments (production).
    #[arg(long, short = 'y')]
    pub yes: bool,
    /// If another rollout of this app and environment runs, wait for it
    /// instead of failing.
    #[arg(long)]
    pub wait: bool,
    /// Print the rollout id and return once it started (it runs on the
    /// coordinator; follow it with `ferry rollout ID`).
    #[arg(long)]
    pub detach: bool,
}

#[derive(Debug, Subcommand)]
pub enum SecretCommand {
    /// Set a secret, reading its value from standard input (one trailing
    /// newline is dropped), e.g. `printf %s "$TOKEN" | ferry secret set --app shop --env production API_TOKEN`.
    Set {
        /// App name, e.g. shop.
        #[arg(long)]
        app: String,
        /// Environment, e.g. production.
        #[arg(long)]
        env: String,
        /// Environment variable name the deploy sets, e.g. DATABASE_URL.
        name: String,
    },
    /// List an app's secrets: names and who set them when, never values.
    #[command(alias = "list")]
    Ls {
        #[arg(long)]
        app: String,
        /// Only this environment (default: every one).
        #[arg(long)]
        env: Option<String>,
    },
    /// Delete a secret.
    #[command(alias = "delete")]
    Rm {
        #[arg(long)]
        app: String,
        #[arg(long)]
        env: String,
        name: String,
    },
}

#[derive(Debug, Subcommand)]
pub enum JobCommand {
    /// A job with its tasks and results.
    Show { id: String },
    /// Cancel a job: what has not started never will, running tasks are stopped.
    Cancel { id: String },
}

#[derive(Debug, Subcommand)]
pub enum AgentCommand {
    /// Revoke an agent: its session is cut now and it is refused from then on.
    Revoke {
        /// Agent name or id.
        agent: String,
    },
}

#[derive(Debug, Subcommand)]
pub enum TokenCommand {
    /// Create a one-time join token and print the command that enrolls a host.
    Create {
        /// Name the enrolling agent will get (default: the agent chooses, usually its hostname).
        #[arg(long)]
        name: Option<String>,
        /// Labels the agent will carry, e.g. env=production,region=eu.
        #[arg(long, default_value = "")]
        labels: String,
        /// How long the token stays valid, e.g. 30m, 1h, 2d (default: the coordinator's, 1h).
        #[arg(long)]
        ttl: Option<String>,
    },
}

#[derive(Debug, Subcommand)]
pub enum OperatorCommand {
    /// Add an operator and write its credentials file (mode 0600).
    Add {
        name: String,
        /// viewer, deployer or admin.
        #[arg(long)]
        role: String,
        /// Where to write the credentials (default: ./NAME.credentials).
        #[arg(long, value_name = "FILE")]
        out: Option<PathBuf>,
    },
    /// List operators.
    #[command(alias = "list")]
    Ls,
    /// Revoke an operator; its credentials are refused from then on.
    Revoke { name: String },
}

/// A failed command: what to print and the exit code.
#[derive(Debug)]
pub struct CliError {
    pub code: i32,
    pub message: String,
}

impl CliError {
    pub fn usage(message: impl Into<String>) -> Self {
        CliError {
            code: exit::USAGE,
            message: message.into(),
        }
    }

    pub fn failed(message: impl Into<String>) -> Self {
        CliError {
            code: exit::FAILED,
            message: message.into(),
        }
    }
}

impl std::fmt::Display for CliError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

/// The one place a gRPC status becomes an exit code and a message.
impl From<tonic::Status> for CliError {
    fn from(status: tonic::Status) -> Self {
        use tonic::Code;
        let code = match status.code() {
            Code::Unauthenticated | Code::PermissionDenied => exit::REFUSED,
            Code::Unavailable | Code::DeadlineExceeded => exit::UNAVAILABLE,
            Code::InvalidArgument => exit::USAGE,
            _ => exit::FAILED,
        };
        let message = if status.code() == Code::Unavailable {
            format!("coordinator unavailable: {}", tls::error_chain(&status))
        } else {
            status.message().to_string()
        };
        CliError { code, message }
    }
}

/// The process environment the CLI reads, passed in by `main`.
#[derive(Debug, Clone, Default)]
pub struct CliEnv {
    pub vars: HashMap<String, String>,
    /// Whether stdout is a terminal (for progress display).
    pub stdout_is_terminal: bool,
    /// Whether stdin is a terminal (`ferry secret set` then reads one line
    /// instead of everything up to end of file).
    pub stdin_is_terminal: bool,
}

impl CliEnv {
    fn get(&self, key: &str) -> Option<&str> {
        self.vars.get(key).map(String::as_str)
    }
}

/// A connected CLI: the credentials in use and a client.
pub struct Session {
    pub credentials: Credentials,
    pub client: OperatorServiceClient<Channel>,
}

/// Loads the credentials and connects.
pub async fn connect(cli: &Cli, env: &CliEnv) -> Result<Session, CliError> {
    let path = credentials::resolve(
        cli.credentials.as_deref(),
        env.get("FERRY_CREDENTIALS"),
        env.get("HOME"),
    )
    .map_err(|e| CliError::usage(e.to_string()))?;
    let credentials = Credentials::load(&path).map_err(|e| CliError::usage(e.to_string()))?;
    let config = tls::client_config(
        &credentials.ca,
        Some((&credentials.certificate, &credentials.key)),
    )
    .map_err(|e| CliError::usage(format!("{}: {e}", path.display())))?;
    let channel = tls::channel(&credentials.coordinator, config)
        .await
        .map_err(|e| CliError {
            code: exit::UNAVAILABLE,
            message: format!("{e} (coordinator address from {})", path.display()),
        })?;
    Ok(Session {
        credentials,
        client: OperatorServiceClient::new(channel),
    })
}

/// Runs one CLI invocation and returns its exit code; output goes to
/// stdout, errors to stderr.
pub async fn run(cli: Cli, env: CliEnv) -> i32 {
    match commands::dispatch(&cli, &env).await {
        Ok(code) => code,
        Err(e) => {
            if cli.output == Output::Json {
                let body = serde_json::json!({ "error": e.message, "exit_code": e.code });
                eprintln!("{body}");
            } else {
                eprintln!("error: {}", e.message);
            }
            e.code
        }
    }
}
