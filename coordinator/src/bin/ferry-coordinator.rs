//! `ferry-coordinator`: `init` a data dir, then `serve`.

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::{Parser, Subcommand};
use ferry_common::exit;
use ferry_coordinator::init::{InitOptions, init};
use ferry_coordinator::server::{self, ServeOverrides};

#[derive(Debug, Parser)]
#[command(name = "ferry-coordinator", version, about = "The Ferry coordinator")]
struct Args {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// Create a data dir: CA, server certificate, config, admin credentials.
    Init {
        /// Directory to create for the coordinator's CA, certificates, config and store.
        #[arg(long, value_name = "DIR")]
        data_dir: PathBuf,
        /// Trust domain of every identity (spiffe://NAME/...).
        #[arg(long, value_name = "NAME")]
        trust_domain: Option<String>,
        /// gRPC listen address.
        #[arg(long, value_name = "ADDR")]
        listen: Option<SocketAddr>,
        /// Admin HTTP listen address (/healthz, /readyz, /metrics).
        #[arg(long, value_name = "ADDR")]
        admin_listen: Option<SocketAddr>,
        /// Name in the server certificate (repeat; default localhost and 127.0.0.1).
        #[arg(long = "san", value_name = "NAME")]
        sans: Vec<String>,
        /// Address agents and operators use (default https://LISTEN-ADDR).
        #[arg(long, value_name = "URL")]
        advertise: Option<String>,
    },
    /// Serve agents and operators.
    Serve {
        /// The data directory `init` created.
        #[arg(long, value_name = "DIR")]
        data_dir: PathBuf,
        /// gRPC listen address (default: the config's).
        #[arg(long, value_name = "ADDR")]
        listen: Option<SocketAddr>,
        /// Admin HTTP listen address, /healthz, /readyz, /metrics (default: the config's).
        #[arg(long, value_name = "ADDR")]
        admin_listen: Option<SocketAddr>,
        /// postgres://… to use PostgreSQL instead of the SQLite file in the data dir.
        /// A password here shows in `ps`: prefer FERRY_DATABASE_URL.
        #[arg(long, value_name = "URL")]
        database_url: Option<String>,
    },
}

#[tokio::main]
async fn main() {
    ferry_common::tls::install_crypto_provider();
    let env: std::collections::HashMap<String, String> = std::env::vars().collect();
    let telemetry = ferry_common::telemetry::init("ferry-coordinator", "info", &env);
    let code = match Args::parse().command {
        Cmd::Init {
            data_dir,
            trust_domain,
            listen,
            admin_listen,
            sans,
            advertise,
        } => {
            let opts = InitOptions {
                data_dir,
                trust_domain,
                listen,
                admin_listen,
                sans,
                advertise,
                ..Default::default()
            };
            match init(&opts) {
                Ok(out) => {
                    println!("initialised coordinator in {}", opts.data_dir.display());
                    println!("  trust domain   {}", out.config.trust_domain);
                    println!(
                        "  listen         {} (advertised as {})",
                        out.config.listen, out.config.advertise
                    );
                    println!("  CA pin         {}", out.ca_pin);
                    println!("  admin          {}", out.credentials_path.display());
                    println!(
                        "  secrets key    {} (coordinators sharing a PostgreSQL store need a copy)",
                        out.secrets_key_path.display()
                    );
                    println!();
                    println!(
                        "next: ferry-coordinator serve --data-dir {}",
                        opts.data_dir.display()
                    );
                    println!(
                        "      export FERRY_CREDENTIALS={}",
                        out.credentials_path.display()
                    );
                    exit::OK
                }
                Err(e) => {
                    eprintln!("error: {e}");
                    exit::FAILED
                }
            }
        }
        Cmd::Serve {
            data_dir,
            listen,
            admin_listen,
            database_url,
        } => {
            let shutdown = ferry_common::shutdown::on_signals();
            let overrides = ServeOverrides {
                listen,
                admin_listen,
                database_url,
            };
            match server::run(&data_dir, &env, overrides, shutdown).await {
                Ok(()) => exit::OK,
                Err(e) => {
                    eprintln!("error: {e}");
                    exit::FAILED
                }
            }
        }
    };
    telemetry.shutdown();
    std::process::exit(code);
}
