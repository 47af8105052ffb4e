//! `ferry-example`: parse the command line, read the environment, call the
//! library. Exit codes: 0 success, 1 failure, 2 usage or configuration
//! error, 130/143 interrupted by SIGINT/SIGTERM during `migrate`.

use std::process::ExitCode;
use std::time::Duration;

use ferry_example::cli::{self, Command};
use ferry_example::config::{self, BUILD_VERSION, Config};
use ferry_example::server::{self, Signals, log};
use ferry_example::{db, healthcheck};

fn main() -> ExitCode {
    let command = match cli::parse(std::env::args().skip(1)) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("ferry-example: {e}\n{}", cli::USAGE);
            return ExitCode::from(2);
        }
    };
    let env = |name: &str| std::env::var(name).ok();
    match command {
        Command::Help => {
            println!("{}", cli::USAGE);
            ExitCode::SUCCESS
        }
        Command::Version => {
            println!("ferry-example {BUILD_VERSION}");
            ExitCode::SUCCESS
        }
        Command::Healthcheck => healthcheck_command(env("PORT")),
        Command::Serve => match Config::from_env(env) {
            Ok(config) => runtime_then(|| async {
                match server::run(config).await {
                    Ok(()) => ExitCode::SUCCESS,
                    Err(e) => {
                        eprintln!("ferry-example: {e}");
                        ExitCode::FAILURE
                    }
                }
            }),
            Err(e) => {
                eprintln!("ferry-example: {e}");
                ExitCode::from(2)
            }
        },
        Command::Migrate { database_url } => {
            match database_url
                .or_else(|| env("DATABASE_URL"))
                .filter(|u| !u.is_empty())
            {
                Some(url) => runtime_then(|| migrate_command(url)),
                None => {
                    eprintln!("ferry-example: migrate needs --database-url or DATABASE_URL");
                    ExitCode::from(2)
                }
            }
        }
    }
}

/// A single-threaded runtime: the service is small, and one thread keeps
/// the process light in a container.
fn runtime_then<F, Fut>(f: F) -> ExitCode
where
    F: FnOnce() -> Fut,
    Fut: std::future::Future<Output = ExitCode>,
{
    match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt.block_on(f()),
        Err(e) => {
            eprintln!("ferry-example: cannot start the runtime: {e}");
            ExitCode::FAILURE
        }
    }
}

fn healthcheck_command(port: Option<String>) -> ExitCode {
    let port = match config::port(port) {
        Ok(p) => p,
        Err(e) => {
            eprintln!("ferry-example: {e}");
            return ExitCode::from(2);
        }
    };
    match healthcheck::check(port, Duration::from_secs(3)) {
        Ok(()) => {
            println!("healthy");
            ExitCode::SUCCESS
        }
        Err(e) => {
            println!("{e}");
            ExitCode::FAILURE
        }
    }
}

/// Runs the migrations, stopping on SIGTERM/SIGINT: in a one-off container
/// this process is PID 1, and each migration is its own transaction, so
/// being interrupted loses nothing.
async fn migrate_command(url: String) -> ExitCode {
    let mut signals = match Signals::install() {
        Ok(s) => s,
        Err(e) => {
            eprintln!("ferry-example: {e}");
            return ExitCode::FAILURE;
        }
    };
    let work = db::migrate(&url, |version| log(format_args!("applied {version}")));
    let result = tokio::select! {
        r = work => r,
        name = signals.recv() => {
            eprintln!("ferry-example: interrupted by {name}; the migration in progress was rolled back");
            return ExitCode::from(if name == "SIGINT" { 130 } else { 143 });
        }
    };
    match result {
        Ok(report) => {
            if !report.unknown.is_empty() {
                log(format_args!(
                    "note: the database has migrations this build does not know: {}",
                    report.unknown.join(", ")
                ));
            }
            log(format_args!(
                "{} applied, {} already applied",
                report.applied.len(),
                report.already_applied.len()
            ));
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("ferry-example: migrate: {e}");
            ExitCode::FAILURE
        }
    }
}
