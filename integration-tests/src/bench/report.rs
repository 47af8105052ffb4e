//! The figures of a run, their targets, and how they are printed: a table
//! for people (stdout), or JSON for tools (`--output json`).

use std::time::Duration;

use serde_json::{Value, json};

use super::coordinator::Memory;
use super::cpu::CpuShares;

/// Latency distribution (nearest-rank percentiles).
#[derive(Debug, Clone, Copy)]
pub struct Percentiles {
    pub n: usize,
    pub p50: Duration,
    pub p90: Duration,
    pub p99: Duration,
    pub max: Duration,
    pub mean: Duration,
}

impl Percentiles {
    pub fn of(mut samples: Vec<Duration>) -> Option<Percentiles> {
        if samples.is_empty() {
            return None;
        }
        samples.sort();
        let n = samples.len();
        let rank = |p: f64| samples[((p * n as f64).ceil() as usize).clamp(1, n) - 1];
        Some(Percentiles {
            n,
            p50: rank(0.50),
            p90: rank(0.90),
            p99: rank(0.99),
            max: samples[n - 1],
            mean: samples.iter().sum::<Duration>() / n as u32,
        })
    }

    fn json(&self) -> Value {
        json!({
            "n": self.n,
            "p50_ms": ms(self.p50),
            "p90_ms": ms(self.p90),
            "p99_ms": ms(self.p99),
            "max_ms": ms(self.max),
            "mean_ms": ms(self.mean),
        })
    }
}

#[derive(Debug, Clone, Copy)]
pub struct EventsFigure {
    pub agents: usize,
    pub per_agent: u64,
    pub elapsed: Duration,
}

impl EventsFigure {
    pub fn events(&self) -> u64 {
        self.agents as u64 * self.per_agent
    }
    pub fn per_second(&self) -> f64 {
        self.events() as f64 / self.elapsed.as_secs_f64()
    }
}

#[derive(Debug, Clone, Default)]
pub struct RestartFigure {
    /// Events emitted but not acknowledged when the coordinator died.
    pub unacked_at_kill: u64,
    /// Events produced while it was down (spooled, sent after reconnect).
    pub produced_while_down: u64,
    /// From spawning the new process until its gRPC port accepted TCP.
    pub coordinator_listening: Duration,
    /// From the `SIGKILL` until the last agent had a session again.
    pub all_back_from_kill: Duration,
    /// From spawning the new process until the last agent had a session.
    pub all_back_from_start: Duration,
    /// From the `SIGKILL` until every spooled event was acknowledged.
    pub all_stored_from_kill: Duration,
    /// Reconnect attempts that failed before `Welcome` (refused while the
    /// coordinator was down, timed out, reset), over all agents.
    pub failed_attempts: u64,
    pub tasks_checked: usize,
    pub events_checked: u64,
    pub lost: u64,
    pub duplicated: u64,
    /// Tasks whose stored `last_seq` or state is not what the agent sent.
    pub mismatched_tasks: usize,
    pub job_status: String,
}

impl RestartFigure {
    pub fn clean(&self) -> bool {
        self.lost == 0
            && self.duplicated == 0
            && self.mismatched_tasks == 0
            && self.job_status == "succeeded"
    }
}

/// Everything measured against one store backend.
#[derive(Debug, Clone, Default)]
pub struct BackendReport {
    pub backend: String,
    pub agents: usize,
    pub enroll: Option<Duration>,
    pub enroll_concurrency: usize,
    pub connect: Option<Duration>,
    /// First-connect attempts that failed before `Welcome` (each agent
    /// retried with backoff).
    pub connect_failed_attempts: Option<u64>,
    pub memory_idle: Option<Memory>,
    pub memory_enrolled: Option<Memory>,
    pub memory_connected: Option<Memory>,
    pub memory_end: Option<Memory>,
    pub fanout: Option<Duration>,
    pub fanout_submit_rpc: Option<Duration>,
    pub fanout_done: Option<Duration>,
    pub latency: Option<Percentiles>,
    pub submit_rpc: Option<Percentiles>,
    pub events: Option<EventsFigure>,
    pub restart: Option<RestartFigure>,
    /// Shares of the machine other processes and PostgreSQL used, by phase.
    pub cpu: Vec<(&'static str, CpuShares)>,
    /// The phase that failed and why; later phases did not run.
    pub error: Option<String>,
    pub coordinator_log: String,
}

impl BackendReport {
    /// `(RSS with N sessions − RSS before any agent)/N`, KiB.
    pub fn per_agent_kib(&self) -> Option<f64> {
        let (idle, connected) = (self.memory_idle?, self.memory_connected?);
        Some((connected.rss_kib as f64 - idle.rss_kib as f64) / self.agents.max(1) as f64)
    }

    fn json(&self) -> Value {
        let mem =
            |m: Option<Memory>| m.map(|m| json!({"rss_kib": m.rss_kib, "peak_kib": m.peak_kib}));
        json!({
            "backend": self.backend,
            "agents": self.agents,
            "enroll_s": self.enroll.map(secs),
            "enroll_concurrency": self.enroll_concurrency,
            "connect_s": self.connect.map(secs),
            "connect_failed_attempts": self.connect_failed_attempts,
            "fanout_s": self.fanout.map(secs),
            "fanout_submit_rpc_ms": self.fanout_submit_rpc.map(ms),
            "fanout_job_done_s": self.fanout_done.map(secs),
            "assign_latency": self.latency.as_ref().map(Percentiles::json),
            "submit_rpc_latency": self.submit_rpc.as_ref().map(Percentiles::json),
            "events": self.events.map(|e| json!({
                "agents": e.agents,
                "per_agent": e.per_agent,
                "events": e.events(),
                "elapsed_s": secs(e.elapsed),
                "per_second": e.per_second(),
            })),
            "memory": {
                "idle": mem(self.memory_idle),
                "enrolled": mem(self.memory_enrolled),
                "connected": mem(self.memory_connected),
                "end": mem(self.memory_end),
                "per_agent_kib": self.per_agent_kib(),
            },
            "restart": self.restart.as_ref().map(|r| json!({
                "unacked_at_kill": r.unacked_at_kill,
                "produced_while_down": r.produced_while_down,
                "coordinator_listening_s": secs(r.coordinator_listening),
                "all_back_from_kill_s": secs(r.all_back_from_kill),
                "all_back_from_start_s": secs(r.all_back_from_start),
                "all_stored_from_kill_s": secs(r.all_stored_from_kill),
                "failed_attempts": r.failed_attempts,
                "tasks_checked": r.tasks_checked,
                "events_checked": r.events_checked,
                "lost": r.lost,
                "duplicated": r.duplicated,
                "mismatched_tasks": r.mismatched_tasks,
                "job_status": r.job_status,
            })),
            "cpu_share_by_phase": self
                .cpu
                .iter()
                .map(|(p, s)| {
                    let round = |x: f64| (x * 1000.0).round() / 1000.0;
                    (
                        p.to_string(),
                        json!({"other": round(s.other), "postgres": round(s.database)}),
                    )
                })
                .collect::<serde_json::Map<_, _>>(),
            "error": self.error,
            "coordinator_log": self.coordinator_log,
        })
    }
}

/// The run as a whole.
#[derive(Debug, Clone)]
pub struct Report {
    pub date: String,
    pub machine: String,
    pub command: String,
    pub heartbeats: bool,
    pub backends: Vec<BackendReport>,
    /// Backends not run, and why.
    pub skipped: Vec<String>,
}

/// The targets of the issue, for N = 10,000 on a 2-core machine.
pub const TARGET_AGENTS: usize = 10_000;
pub const TARGET_RSS_KIB: u64 = 1024 * 1024;
pub const TARGET_FANOUT: Duration = Duration::from_secs(2);
pub const TARGET_P50: Duration = Duration::from_millis(5);
pub const TARGET_EVENTS_PER_S: f64 = 50_000.0;
pub const TARGET_RECONNECT: Duration = Duration::from_secs(30);

fn secs(d: Duration) -> f64 {
    (d.as_secs_f64() * 1000.0).round() / 1000.0
}

fn ms(d: Duration) -> f64 {
    (d.as_secs_f64() * 1e6).round() / 1000.0
}

fn fmt_dur(d: Duration) -> String {
    if d < Duration::from_millis(10) {
        format!("{:.2} ms", d.as_secs_f64() * 1000.0)
    } else if d < Duration::from_secs(1) {
        format!("{:.0} ms", d.as_secs_f64() * 1000.0)
    } else {
        format!("{:.2} s", d.as_secs_f64())
    }
}

fn fmt_mib(kib: u64) -> String {
    format!("{:.0} MiB", kib as f64 / 1024.0)
}

fn verdict(met: bool) -> &'static str {
    if met { "met" } else { "NOT met" }
}

/// One row: a label, the target, and per backend a value with its verdict.
struct Row {
    label: String,
    target: String,
    cells: Vec<String>,
}

impl Report {
    pub fn json(&self) -> Value {
        json!({
            "date": self.date,
            "machine": self.machine,
            "command": self.command,
            "heartbeats": self.heartbeats,
            "targets": {
                "agents": TARGET_AGENTS,
                "rss_kib_max": TARGET_RSS_KIB,
                "fanout_s_max": secs(TARGET_FANOUT),
                "assign_latency_p50_ms_max": ms(TARGET_P50),
                "events_per_second_min": TARGET_EVENTS_PER_S,
                "reconnect_s_max": secs(TARGET_RECONNECT),
            },
            "backends": self.backends.iter().map(BackendReport::json).collect::<Vec<_>>(),
            "skipped": self.skipped,
        })
    }

    /// Whether every figure that has a target met it (figures not measured
    /// count as not met).
    pub fn all_met(&self) -> bool {
        !self.backends.is_empty()
            && self.backends.iter().all(|b| {
                b.error.is_none()
                    && b.fanout.is_some_and(|d| d < TARGET_FANOUT)
                    && b.latency.is_some_and(|l| l.p50 < TARGET_P50)
                    && b.events
                        .is_some_and(|e| e.per_second() >= TARGET_EVENTS_PER_S)
                    && b.memory_connected
                        .is_some_and(|m| m.rss_kib < TARGET_RSS_KIB)
                    && b.restart
                        .as_ref()
                        .is_some_and(|r| r.clean() && r.all_back_from_kill < TARGET_RECONNECT)
            })
    }

    fn rows(&self) -> Vec<Row> {
        let bs = &self.backends;
        let cell = |f: &dyn Fn(&BackendReport) -> Option<String>| -> Vec<String> {
            bs.iter()
                .map(|b| f(b).unwrap_or_else(|| "—".into()))
                .collect()
        };
        let n = bs.first().map_or(0, |b| b.agents);
        let mut rows = vec![
            Row {
                label: format!("enrollment of {n} agents"),
                target: "—".into(),
                cells: cell(&|b| {
                    b.enroll.map(|d| {
                        format!(
                            "{} ({:.0}/s, {} in flight)",
                            fmt_dur(d),
                            b.agents as f64 / d.as_secs_f64(),
                            b.enroll_concurrency
                        )
                    })
                }),
            },
            Row {
                label: format!("connect: all {n} sessions up"),
                target: "—".into(),
                cells: cell(&|b| {
                    b.connect.map(|d| {
                        format!(
                            "{} ({} attempts failed before Welcome)",
                            fmt_dur(d),
                            b.connect_failed_attempts.unwrap_or(0)
                        )
                    })
                }),
            },
            Row {
                label: format!("fan-out: one probe job → all {n} Assigns"),
                target: format!("< {}", fmt_dur(TARGET_FANOUT)),
                cells: cell(&|b| {
                    b.fanout
                        .map(|d| format!("{} {}", fmt_dur(d), verdict(d < TARGET_FANOUT)))
                }),
            },
            Row {
                label: "  of which SubmitJob RPC".into(),
                target: "—".into(),
                cells: cell(&|b| b.fanout_submit_rpc.map(fmt_dur)),
            },
            Row {
                label: "  until the fan-out job succeeded".into(),
                target: "—".into(),
                cells: cell(&|b| b.fanout_done.map(fmt_dur)),
            },
            Row {
                label: "submit→Assign latency p50".into(),
                target: format!("< {}", fmt_dur(TARGET_P50)),
                cells: cell(&|b| {
                    b.latency.map(|l| {
                        format!(
                            "{} {} (n={})",
                            fmt_dur(l.p50),
                            verdict(l.p50 < TARGET_P50),
                            l.n
                        )
                    })
                }),
            },
            Row {
                label: "submit→Assign latency p99 / max".into(),
                target: "—".into(),
                cells: cell(&|b| {
                    b.latency
                        .map(|l| format!("{} / {}", fmt_dur(l.p99), fmt_dur(l.max)))
                }),
            },
            Row {
                label: "  SubmitJob RPC alone p50 / p99".into(),
                target: "—".into(),
                cells: cell(&|b| {
                    b.submit_rpc
                        .map(|l| format!("{} / {}", fmt_dur(l.p50), fmt_dur(l.p99)))
                }),
            },
            Row {
                label: "events ingested per second".into(),
                target: format!("≥ {:.0}/s", TARGET_EVENTS_PER_S),
                cells: cell(&|b| {
                    b.events.map(|e| {
                        format!(
                            "{:.0}/s {} ({}×{} in {})",
                            e.per_second(),
                            verdict(e.per_second() >= TARGET_EVENTS_PER_S),
                            e.agents,
                            e.per_agent,
                            fmt_dur(e.elapsed)
                        )
                    })
                }),
            },
            Row {
                label: format!("coordinator RSS with {n} sessions"),
                target: format!("< {}", fmt_mib(TARGET_RSS_KIB)),
                cells: cell(&|b| {
                    b.memory_connected.map(|m| {
                        format!(
                            "{} {}",
                            fmt_mib(m.rss_kib),
                            verdict(m.rss_kib < TARGET_RSS_KIB)
                        )
                    })
                }),
            },
            Row {
                label: "  RSS idle / enrolled / peak at end".into(),
                target: "—".into(),
                cells: cell(&|b| {
                    Some(format!(
                        "{} / {} / {}",
                        b.memory_idle.map_or("—".into(), |m| fmt_mib(m.rss_kib)),
                        b.memory_enrolled.map_or("—".into(), |m| fmt_mib(m.rss_kib)),
                        b.memory_end.map_or("—".into(), |m| fmt_mib(m.peak_kib)),
                    ))
                }),
            },
            Row {
                label: "  memory per agent (connected − idle)/N".into(),
                target: "—".into(),
                cells: cell(&|b| b.per_agent_kib().map(|k| format!("{k:.1} KiB"))),
            },
            Row {
                label: format!("reconnect: all {n} back after SIGKILL"),
                target: format!("< {}", fmt_dur(TARGET_RECONNECT)),
                cells: cell(&|b| {
                    b.restart.as_ref().map(|r| {
                        format!(
                            "{} {} ({} attempts failed before Welcome)",
                            fmt_dur(r.all_back_from_kill),
                            verdict(r.all_back_from_kill < TARGET_RECONNECT && r.clean()),
                            r.failed_attempts
                        )
                    })
                }),
            },
            Row {
                label: "  new coordinator listening / all back after it".into(),
                target: "—".into(),
                cells: cell(&|b| {
                    b.restart.as_ref().map(|r| {
                        format!(
                            "{} / {}",
                            fmt_dur(r.coordinator_listening),
                            fmt_dur(r.all_back_from_start)
                        )
                    })
                }),
            },
            Row {
                label: "  unacked at kill + made while down".into(),
                target: "—".into(),
                cells: cell(&|b| {
                    b.restart.as_ref().map(|r| {
                        format!(
                            "{} + {} (all stored {} after kill)",
                            r.unacked_at_kill,
                            r.produced_while_down,
                            fmt_dur(r.all_stored_from_kill)
                        )
                    })
                }),
            },
            Row {
                label: "  lost / duplicated / wrong tasks".into(),
                target: "0 / 0 / 0".into(),
                cells: cell(&|b| {
                    b.restart.as_ref().map(|r| {
                        format!(
                            "{} / {} / {} of {} tasks, {} events; job {}",
                            r.lost,
                            r.duplicated,
                            r.mismatched_tasks,
                            r.tasks_checked,
                            r.events_checked,
                            r.job_status
                        )
                    })
                }),
            },
            Row {
                label: "other processes' share of the CPUs, by phase".into(),
                target: "0%".into(),
                cells: cell(&|b| {
                    (!b.cpu.is_empty()).then(|| {
                        b.cpu
                            .iter()
                            .map(|(p, s)| format!("{p} {:.0}%", s.other * 100.0))
                            .collect::<Vec<_>>()
                            .join(", ")
                    })
                }),
            },
            Row {
                label: "PostgreSQL server's share of the CPUs".into(),
                target: "—".into(),
                cells: cell(&|b| {
                    (b.cpu.iter().any(|(_, s)| s.database > 0.005)).then(|| {
                        b.cpu
                            .iter()
                            .map(|(p, s)| format!("{p} {:.0}%", s.database * 100.0))
                            .collect::<Vec<_>>()
                            .join(", ")
                    })
                }),
            },
        ];
        rows.retain(|r| r.cells.iter().any(|c| c != "—"));
        rows
    }

    pub fn table(&self) -> String {
        let mut out = String::new();
        out.push_str(&format!("Ferry benchmark, {}\n", self.date));
        out.push_str(&format!("machine: {}\n", self.machine));
        out.push_str(&format!("command: {}\n", self.command));
        out.push_str(&format!(
            "agents send heartbeats: {}\n",
            if self.heartbeats {
                "yes, at the interval Welcome asks for"
            } else {
                "no"
            }
        ));
        let n = self.backends.first().map_or(0, |b| b.agents);
        if n != TARGET_AGENTS {
            out.push_str(&format!(
                "note: N = {n}; the targets are stated for N = {TARGET_AGENTS}\n"
            ));
        }
        out.push('\n');
        let rows = self.rows();
        let mut header = vec!["figure".to_string(), "target".to_string()];
        header.extend(self.backends.iter().map(|b| b.backend.clone()));
        let mut table: Vec<Vec<String>> = vec![header];
        for r in rows {
            let mut line = vec![r.label, r.target];
            line.extend(r.cells);
            table.push(line);
        }
        let cols = table[0].len();
        let widths: Vec<usize> = (0..cols)
            .map(|c| {
                table
                    .iter()
                    .map(|r| r.get(c).map_or(0, |s| s.chars().count()))
                    .max()
                    .unwrap_or(0)
            })
            .collect();
        for (i, r) in table.iter().enumerate() {
            let cells: Vec<String> = r
                .iter()
                .zip(&widths)
                .map(|(s, w)| format!("{s}{}", " ".repeat(w - s.chars().count())))
                .collect();
            out.push_str(cells.join("  ").trim_end());
            out.push('\n');
            if i == 0 {
                out.push_str(&"-".repeat(widths.iter().sum::<usize>() + 2 * (cols - 1)));
                out.push('\n');
            }
        }
        for b in &self.backends {
            if let Some(e) = &b.error {
                out.push_str(&format!("\n{} FAILED: {e}\n", b.backend));
                out.push_str(&format!(
                    "{} coordinator log: {}\n",
                    b.backend, b.coordinator_log
                ));
            }
        }
        for s in &self.skipped {
            out.push_str(&format!("skipped: {s}\n"));
        }
        out.push_str(&format!(
            "\nall targets met: {}\n",
            if self.all_met() { "yes" } else { "no" }
        ));
        out
    }
}
