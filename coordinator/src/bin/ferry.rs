//! `ferry`: the operator CLI.

use clap::Parser;
use ferry_coordinator::cli::{self, Cli, CliEnv};
use std::io::IsTerminal;

#[tokio::main]
async fn main() {
    ferry_common::tls::install_crypto_provider();
    ferry_common::telemetry::init("warn");
    let cli = Cli::parse();
    let env = CliEnv {
        vars: std::env::vars().collect(),
        stdout_is_terminal: std::io::stdout().is_terminal(),
    };
    std::process::exit(cli::run(cli, env).await);
}
