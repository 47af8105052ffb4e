//! `probe`: the host's facts, as a preflight. Unreachable parts (no Docker,
//! no PostgreSQL) are facts too: the probe reports why and still succeeds.

use std::time::Instant;

use ferry_common::job::{HostFacts, ProbeSpec};

use super::{Done, KindExecutor, TaskContext, TaskFailure};

/// Runs `probe` tasks.
pub struct Probe;

#[async_trait::async_trait]
impl KindExecutor for Probe {
    type Spec = ProbeSpec;
    async fn run(&self, _spec: ProbeSpec, ctx: &TaskContext) -> Result<Done, TaskFailure> {
        run(ctx).await
    }
}

pub async fn run(ctx: &TaskContext) -> Result<Done, TaskFailure> {
    let mut facts = HostFacts {
        hostname: ferry_common::host::hostname(),
        clock_offset_ms: ctx.clock_offset_ms,
        ..Default::default()
    };

    let started = Instant::now();
    ctx.step_started("system", "operating system, CPU, memory, disks");
    let uts = nix::sys::utsname::uname().ok();
    facts.kernel = uts
        .as_ref()
        .map(|u| {
            format!(
                "{} {}",
                u.sysname().to_string_lossy(),
                u.release().to_string_lossy()
            )
        })
        .unwrap_or_default();
    facts.arch = std::env::consts::ARCH.to_string();
    facts.os = os_release().unwrap_or_else(|| std::env::consts::OS.to_string());
    facts.cpus = std::thread::available_parallelism().map_or(1, |n| n.get() as u32);
    let (total, available) = meminfo();
    facts.memory_total_bytes = total;
    facts.memory_available_bytes = available;
    facts.disks = crate::health::mounted_disks();
    ctx.step_finished(
        "system",
        true,
        &format!(
            "{}, {}, {} CPUs, {} disks",
            facts.os,
            facts.kernel,
            facts.cpus,
            facts.disks.len()
        ),
        started,
    );

    let started = Instant::now();
    ctx.step_started("docker", "Docker engine");
    let health = ctx.probe.collect().await;
    if health.docker_reachable {
        ctx.step_finished(
            "docker",
            true,
            &format!("engine {}", health.docker_version),
            started,
        );
        facts.docker_version = Some(health.docker_version.clone());
    } else {
        ctx.step_finished(
            "docker",
            false,
            &format!("unreachable: {}", health.docker_error),
            started,
        );
        facts.docker_error = Some(health.docker_error.clone());
    }

    let started = Instant::now();
    ctx.step_started("postgres", "PostgreSQL");
    if !health.postgres_configured {
        let why = "no postgres_url configured on this agent".to_string();
        ctx.step_finished("postgres", true, &why, started);
        facts.postgres_error = Some(why);
    } else if health.postgres_reachable {
        ctx.step_finished(
            "postgres",
            true,
            &format!("server {}", health.postgres_version),
            started,
        );
        facts.postgres_version = Some(health.postgres_version.clone());
    } else {
        ctx.step_finished(
            "postgres",
            false,
            &format!("unreachable: {}", health.postgres_error),
            started,
        );
        facts.postgres_error = Some(health.postgres_error.clone());
    }

    let started = Instant::now();
    ctx.step_started("clock", "clock offset against the coordinator");
    ctx.step_finished(
        "clock",
        true,
        &format!("{} ms", facts.clock_offset_ms),
        started,
    );

    if ctx.cancel.is_cancelled() {
        return Err(TaskFailure::Cancelled);
    }
    let result_json =
        serde_json::to_string(&facts).map_err(|e| TaskFailure::Failed(e.to_string()))?;
    Ok(Done {
        message: format!("{} ({}, {} CPUs)", facts.hostname, facts.os, facts.cpus),
        result_json,
    })
}

fn os_release() -> Option<String> {
    let text = std::fs::read_to_string("/etc/os-release").ok()?;
    text.lines()
        .find_map(|l| l.strip_prefix("PRETTY_NAME="))
        .map(|v| v.trim_matches('"').to_string())
}

/// (MemTotal, MemAvailable) in bytes from /proc/meminfo.
fn meminfo() -> (u64, u64) {
    let text = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    let field = |name: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
            .map_or(0, |kb| kb * 1024)
    };
    (field("MemTotal:"), field("MemAvailable:"))
}
