//! `ferry-bench`: starts a coordinator (the real `ferry-coordinator` binary,
//! as a child process) and N simulated agents, and prints how fast agents
//! connect, how fast work fans out and reaches an agent, how many events
//! per second are stored, how much memory each agent costs the coordinator,
//! and how fast every agent is back after the coordinator is killed, with
//! no event lost. A benchmark program, not a test: see BENCHMARKS.md.

#[path = "../bench/mod.rs"]
mod bench;

use std::path::PathBuf;
use std::time::Duration;

use clap::{Parser, ValueEnum};

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Output {
    Table,
    Json,
}

#[derive(Debug, Parser)]
#[command(
    name = "ferry-bench",
    about = "Benchmark a Ferry coordinator with N simulated agents"
)]
struct Args {
    /// Simulated agents (each enrolled, with its own certificate and connection).
    #[arg(long, default_value_t = 10_000)]
    agents: usize,
    /// Jobs of the latency phase, one agent each, submitted one after another.
    #[arg(long, default_value_t = 1_000)]
    jobs: usize,
    /// Agents that send events in the ingest phase (at most --agents).
    #[arg(long, default_value_t = 1_000)]
    events_agents: usize,
    /// Events each of them sends (a StepStarted, log lines, a TaskFinished).
    #[arg(long, default_value_t = 100)]
    events_per_agent: u64,
    /// PostgreSQL server on which to create a fresh database for the
    /// PostgreSQL run.
    #[arg(long, env = "FERRY_TEST_DATABASE_URL", value_name = "URL")]
    postgres_url: Option<String>,
    /// Run against SQLite only.
    #[arg(long)]
    skip_postgres: bool,
    /// Run against PostgreSQL only.
    #[arg(long)]
    skip_sqlite: bool,
    /// Enrollments in flight.
    #[arg(long, default_value_t = 64)]
    enroll_concurrency: usize,
    /// First connections in flight (0: all agents dial at once). Reconnects
    /// after the restart are paced by backoff only, as in real agents.
    #[arg(long, default_value_t = 0)]
    connect_concurrency: usize,
    /// Agents send no heartbeats (the coordinator does not require them).
    #[arg(long)]
    no_heartbeats: bool,
    /// The coordinator binary (default: `ferry-coordinator` beside this one).
    #[arg(long, value_name = "PATH")]
    coordinator_bin: Option<PathBuf>,
    /// Where coordinator data dirs and logs go (kept); default a temporary
    /// dir, removed unless a phase failed.
    #[arg(long, value_name = "DIR")]
    work_dir: Option<PathBuf>,
    /// Longest wait for many agents at once (sessions, Assigns, Acks), seconds.
    #[arg(long, default_value_t = 300)]
    wait_timeout: u64,
    /// Seconds between "all connected" and the memory figure.
    #[arg(long, default_value_t = 3)]
    settle: u64,
    /// A table for people, or JSON for tools (progress always goes to stderr).
    #[arg(long, value_enum, default_value_t = Output::Table)]
    output: Output,
}

fn main() -> std::process::ExitCode {
    ferry_common::tls::install_crypto_provider();
    let args = Args::parse();
    let coordinator_bin = args.coordinator_bin.clone().unwrap_or_else(|| {
        std::env::current_exe()
            .ok()
            .and_then(|p| p.parent().map(|d| d.join("ferry-coordinator")))
            .unwrap_or_else(|| PathBuf::from("ferry-coordinator"))
    });
    let opts = bench::Options {
        agents: args.agents.max(1),
        jobs: args.jobs.max(1),
        events_agents: args.events_agents.max(1),
        events_per_agent: args.events_per_agent,
        postgres_url: args.postgres_url.filter(|u| !u.is_empty()),
        skip_postgres: args.skip_postgres,
        skip_sqlite: args.skip_sqlite,
        enroll_concurrency: args.enroll_concurrency.max(1),
        connect_concurrency: args.connect_concurrency,
        heartbeats: !args.no_heartbeats,
        coordinator_bin,
        work_dir: args.work_dir,
        wait_timeout: Duration::from_secs(args.wait_timeout.max(1)),
        settle: Duration::from_secs(args.settle),
        command: std::env::args().collect::<Vec<_>>().join(" "),
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: cannot start the runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    let outcome = runtime.block_on(async {
        // Interrupting drops the run, and with it the child coordinator
        // (killed on drop).
        tokio::select! {
            r = bench::run(opts) => r,
            _ = interrupted() => Err(anyhow::anyhow!("interrupted")),
        }
    });
    // Agents' session tasks may still be winding down; do not wait for them.
    runtime.shutdown_timeout(Duration::from_secs(1));
    match outcome {
        Ok(report) => {
            match args.output {
                Output::Table => print!("{}", report.table()),
                Output::Json => println!(
                    "{}",
                    serde_json::to_string_pretty(&report.json()).unwrap_or_default()
                ),
            }
            if report.backends.iter().any(|b| b.error.is_some()) {
                std::process::ExitCode::FAILURE
            } else {
                std::process::ExitCode::SUCCESS
            }
        }
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

/// SIGINT or SIGTERM.
async fn interrupted() {
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term => {}
    }
}
