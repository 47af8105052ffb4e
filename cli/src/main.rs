//! `ferry`: the operator CLI.

use clap::Parser;
use ferry_cli::{Cli, CliEnv};
use std::io::IsTerminal;

#[tokio::main]
async fn main() {
    ferry_common::tls::install_crypto_provider();
    let vars: std::collections::HashMap<String, String> = std::env::vars().collect();
    let telemetry = ferry_common::telemetry::init("ferry", "warn", &vars);
    let cli = Cli::parse();
    let env = CliEnv {
        vars,
        stdout_is_terminal: std::io::stdout().is_terminal(),
        stdin_is_terminal: std::io::stdin().is_terminal(),
    };
    let code = ferry_cli::run(cli, env).await;
    telemetry.shutdown();
    std::process::exit(code);
}
