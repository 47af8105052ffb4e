//! `ferry-bench`: a coordinator (the real binary, as a child process) and
//! N simulated agents (in this process), measured phase by phase. See
//! `BENCHMARKS.md` at the repository root for what each figure means.
//!
//! - [`coordinator`]: the child `ferry-coordinator`: init, serve, SIGKILL,
//!   restart, its memory.
//! - [`agent`]: a simulated agent speaking the real session protocol.
//! - [`cpu`]: how much of the machine other processes took meanwhile.
//! - [`observe`]: waiting for sessions, `Assign`s and `Ack`s, with deadlines.
//! - [`suite`]: the phases against one store backend.
//! - [`report`]: the figures, targets, table and JSON.

pub mod agent;
pub mod coordinator;
pub mod cpu;
pub mod observe;
pub mod report;
pub mod suite;

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result};

use report::Report;
use suite::Suite;

/// What to run; see `ferry-bench --help`.
#[derive(Debug, Clone)]
pub struct Options {
    pub agents: usize,
    pub jobs: usize,
    pub events_agents: usize,
    pub events_per_agent: u64,
    pub postgres_url: Option<String>,
    pub skip_postgres: bool,
    pub skip_sqlite: bool,
    pub enroll_concurrency: usize,
    /// 0: every agent dials at once.
    pub connect_concurrency: usize,
    pub heartbeats: bool,
    pub coordinator_bin: PathBuf,
    pub work_dir: Option<PathBuf>,
    /// Bound on each wait for many agents (sessions, Assigns, Acks).
    pub wait_timeout: Duration,
    /// Pause between "all connected" and the memory figure.
    pub settle: Duration,
    /// The command line, echoed in the report.
    pub command: String,
}

/// "2 CPUs (model), 23.4 GiB RAM, Linux 6.x", from /proc.
fn machine() -> String {
    let cpus = std::thread::available_parallelism().map_or(0, |n| n.get());
    let model = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|t| {
            t.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split_once(':'))
                .map(|(_, v)| v.trim().to_string())
        })
        .unwrap_or_else(|| "unknown CPU".into());
    let mem_gib = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|t| {
            t.lines()
                .find_map(|l| l.strip_prefix("MemTotal:"))
                .and_then(|v| v.split_whitespace().next()?.parse::<f64>().ok())
        })
        .map_or(0.0, |kib| kib / 1024.0 / 1024.0);
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|s| s.trim().to_string())
        .unwrap_or_default();
    format!("{cpus} CPUs ({model}), {mem_gib:.1} GiB RAM, Linux {kernel}")
}

/// Runs SQLite, then PostgreSQL (unless skipped or no server is given).
/// Phase failures are recorded in the report, not returned: the figures
/// measured before them are still worth printing.
pub async fn run(opts: Options) -> Result<Report> {
    if !opts.coordinator_bin.exists() {
        anyhow::bail!(
            "{} not found; build it first: cargo build --release -p ferry-coordinator --bin ferry-coordinator (or pass --coordinator-bin)",
            opts.coordinator_bin.display()
        );
    }
    let (work_dir, temp) = match &opts.work_dir {
        Some(d) => {
            std::fs::create_dir_all(d).with_context(|| format!("cannot create {}", d.display()))?;
            (d.clone(), None)
        }
        None => {
            let t = tempfile::Builder::new().prefix("ferry-bench-").tempdir()?;
            (t.path().to_path_buf(), Some(t))
        }
    };
    eprintln!("work dir: {}", work_dir.display());
    let mut report = Report {
        date: time::OffsetDateTime::now_utc()
            .format(&time::format_description::well_known::Rfc3339)
            .unwrap_or_default(),
        machine: machine(),
        command: opts.command.clone(),
        heartbeats: opts.heartbeats,
        backends: Vec::new(),
        skipped: Vec::new(),
    };
    if opts.skip_sqlite {
        report.skipped.push("sqlite (--skip-sqlite)".into());
    } else {
        let mut suite = Suite::new(&opts, "sqlite", &work_dir, None).await?;
        suite.run().await;
        report.backends.push(suite.report);
    }
    match (&opts.postgres_url, opts.skip_postgres) {
        (_, true) => report.skipped.push("postgres (--skip-postgres)".into()),
        (None, false) => report.skipped.push(
            "postgres: no --postgres-url and no FERRY_TEST_DATABASE_URL (scripts/ensure-postgres.sh prints one)"
                .into(),
        ),
        (Some(server), false) => {
            let url = ferry_coordinator::store::conformance::fresh_postgres_database(server)
                .await
                .with_context(|| format!("cannot create a fresh database on {server}"))?;
            eprintln!("postgres database: {url}");
            let mut suite = Suite::new(&opts, "postgres", &work_dir, Some(url)).await?;
            suite.run().await;
            report.backends.push(suite.report);
        }
    }
    if report.backends.iter().any(|b| b.error.is_some())
        && let Some(t) = temp
    {
        // Keep the coordinator logs the report points at.
        eprintln!("kept {} for its coordinator logs", t.keep().display());
    }
    Ok(report)
}
