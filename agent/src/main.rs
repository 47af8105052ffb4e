//! `ferry-agent`: `enroll` once, then `run` (as a systemd service).

use std::path::PathBuf;

use clap::{Parser, Subcommand};
use ferry_agent::enroll::{EnrollOptions, enroll};
use ferry_common::exit;
use ferry_common::labels::format_labels;

#[derive(Debug, Parser)]
#[command(
    name = "ferry-agent",
    version,
    about = "The Ferry agent (one per host)"
)]
struct Args {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// Enroll this host with a coordinator, using a join token.
    Enroll {
        /// Coordinator address, https://HOST:PORT.
        #[arg(long, value_name = "URL")]
        coordinator: String,
        /// The one-time join token from `ferry token create`.
        #[arg(long)]
        token: String,
        /// The CA pin from `ferry token create` (sha256:...).
        #[arg(long, value_name = "PIN")]
        ca_pin: String,
        /// Where the agent keeps its key, certificate and config.
        #[arg(long, value_name = "DIR")]
        state_dir: PathBuf,
        /// Agent name (default: the token's name, else the hostname).
        #[arg(long)]
        name: Option<String>,
        /// PostgreSQL this host serves, checked in every heartbeat.
        #[arg(long, value_name = "URL")]
        postgres_url: Option<String>,
        /// Blue-green: where the agent writes each service's nginx upstream
        /// file (the site's upstream block includes it).
        #[arg(long, value_name = "DIR", default_value = "/etc/nginx/ferry-upstreams")]
        nginx_upstream_dir: PathBuf,
        /// Blue-green: the command that reloads nginx, as one string split
        /// at spaces.
        #[arg(long, value_name = "CMD", default_value = "nginx -s reload")]
        nginx_reload: String,
        /// Blue-green: the command that dumps nginx's configuration, to
        /// confirm it includes the upstream file (default: the reload
        /// command with its trailing `-s reload` replaced by `-T`).
        #[arg(long, value_name = "CMD")]
        nginx_test: Option<String>,
    },
    /// Run the agent: keep the session to the coordinator.
    Run {
        #[arg(long, value_name = "DIR")]
        state_dir: PathBuf,
    },
}

#[tokio::main]
async fn main() {
    ferry_common::tls::install_crypto_provider();
    let env: std::collections::HashMap<String, String> = std::env::vars().collect();
    let telemetry = ferry_common::telemetry::init("ferry-agent", "info", &env);
    let code = match Args::parse().command {
        Cmd::Enroll {
            coordinator,
            token,
            ca_pin,
            state_dir,
            name,
            postgres_url,
            nginx_upstream_dir,
            nginx_reload,
            nginx_test,
        } => {
            let words = |cmd: &str| cmd.split_whitespace().map(str::to_string).collect();
            let opts = EnrollOptions {
                coordinator,
                token,
                ca_pin,
                state_dir,
                name,
                postgres_url,
                nginx: ferry_agent::config::NginxConfig {
                    upstream_dir: nginx_upstream_dir,
                    reload_command: words(&nginx_reload),
                    test_command: nginx_test.as_deref().map(words).unwrap_or_default(),
                    ..Default::default()
                },
            };
            match enroll(&opts).await {
                Ok(e) => {
                    println!("enrolled as {} ({})", e.name, e.agent_id);
                    if !e.labels.is_empty() {
                        println!("  labels       {}", format_labels(&e.labels));
                    }
                    println!(
                        "  certificate  valid until {} (renewed automatically)",
                        e.not_after
                    );
                    println!("  state dir    {}", opts.state_dir.display());
                    println!(
                        "  nginx        upstream files in {}, reloaded with `{}`",
                        opts.nginx.upstream_dir.display(),
                        opts.nginx.reload_command.join(" ")
                    );
                    println!();
                    println!(
                        "next: ferry-agent run --state-dir {}",
                        opts.state_dir.display()
                    );
                    exit::OK
                }
                Err(e) => {
                    eprintln!("error: {e}");
                    e.exit_code()
                }
            }
        }
        Cmd::Run { state_dir } => {
            let shutdown = ferry_common::shutdown::on_signals();
            match ferry_agent::run(&state_dir, &env, shutdown).await {
                Ok(()) => exit::OK,
                Err(e) => {
                    eprintln!("error: {e}");
                    e.exit_code()
                }
            }
        }
    };
    telemetry.shutdown();
    std::process::exit(code);
}
