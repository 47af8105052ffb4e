//! How much of the machine other work took while a phase ran: on a shared
//! 2-core box a compiler or a test suite next door changes the figures, and
//! the report should say so rather than leave it to guesswork.
//!
//! From `/proc/stat` (all CPUs: busy and total ticks, steal counted as
//! busy since another guest had the CPU) minus the ticks of this process,
//! of the coordinator and of the PostgreSQL server's processes (part of the
//! system under test in the PostgreSQL run, so reported on their own). All
//! in the same USER_HZ units, so no clock rate is needed.

/// One reading of the machine's and our processes' CPU ticks.
#[derive(Debug, Clone, Copy)]
pub struct CpuSample {
    total: u64,
    busy: u64,
    ours: u64,
    database: u64,
}

/// Shares of the machine's capacity (0..1) between two samples.
#[derive(Debug, Clone, Copy)]
pub struct CpuShares {
    /// Anything but the bench, the coordinator and PostgreSQL.
    pub other: f64,
    /// PostgreSQL server processes (backends of every database).
    pub database: f64,
}

fn machine_ticks() -> Option<(u64, u64)> {
    let text = std::fs::read_to_string("/proc/stat").ok()?;
    let line = text.lines().find(|l| l.starts_with("cpu "))?;
    let v: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .filter_map(|x| x.parse().ok())
        .collect();
    // user nice system idle iowait irq softirq steal (guest* are in user).
    let get = |i: usize| v.get(i).copied().unwrap_or(0);
    let busy = get(0) + get(1) + get(2) + get(5) + get(6) + get(7);
    let total = busy + get(3) + get(4);
    Some((total, busy))
}

/// The command name and utime + stime of a process (all its threads).
fn process_ticks(pid: &str) -> Option<(String, u64)> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name may hold spaces; fields resume after its ')'.
    let (head, rest) = text.rsplit_once(')')?;
    let comm = head.split_once('(').map_or("", |(_, c)| c).to_string();
    let f: Vec<&str> = rest.split_whitespace().collect();
    let get = |i: usize| f.get(i).and_then(|x| x.parse::<u64>().ok()).unwrap_or(0);
    Some((comm, get(11) + get(12)))
}

/// Ticks of every process named `postgres` (server and backends).
fn postgres_ticks() -> u64 {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return 0;
    };
    entries
        .flatten()
        .filter_map(|e| e.file_name().to_str().map(str::to_string))
        .filter(|name| name.bytes().all(|b| b.is_ascii_digit()))
        .filter_map(|pid| process_ticks(&pid))
        .filter(|(comm, _)| comm == "postgres")
        .map(|(_, ticks)| ticks)
        .sum()
}

/// Reads the machine and our processes: this one and `coordinator`.
pub fn sample(coordinator: Option<u32>) -> Option<CpuSample> {
    let (total, busy) = machine_ticks()?;
    let ticks = |pid: &str| process_ticks(pid).map_or(0, |(_, t)| t);
    let ours = ticks("self") + coordinator.map_or(0, |p| ticks(&p.to_string()));
    Some(CpuSample {
        total,
        busy,
        ours,
        database: postgres_ticks(),
    })
}

/// What others used between two samples.
pub fn shares(before: &CpuSample, after: &CpuSample) -> Option<CpuShares> {
    let total = after.total.checked_sub(before.total)?;
    if total == 0 {
        return None;
    }
    let busy = after.busy.saturating_sub(before.busy);
    let ours = after.ours.saturating_sub(before.ours);
    let database = after.database.saturating_sub(before.database);
    Some(CpuShares {
        other: busy.saturating_sub(ours + database) as f64 / total as f64,
        database: database as f64 / total as f64,
    })
}
