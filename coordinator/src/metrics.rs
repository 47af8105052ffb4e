//! Prometheus counters, rendered as text on the admin port's `/metrics`.
//! A handful of series; a mutex-guarded map is plenty.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

#[derive(Debug, Default)]
pub struct Metrics {
    rpcs: Mutex<BTreeMap<String, u64>>,
    refusals: Mutex<BTreeMap<&'static str, u64>>,
    sessions_opened: AtomicU64,
    heartbeats: AtomicU64,
}

impl Metrics {
    pub fn count_rpc(&self, path: &str) {
        if let Ok(mut m) = self.rpcs.lock() {
            *m.entry(path.to_string()).or_default() += 1;
        }
    }

    pub fn count_refusal(&self, reason: &'static str) {
        if let Ok(mut m) = self.refusals.lock() {
            *m.entry(reason).or_default() += 1;
        }
    }

    pub fn session_opened(&self) {
        self.sessions_opened.fetch_add(1, Ordering::Relaxed);
    }

    pub fn heartbeat(&self) {
        self.heartbeats.fetch_add(1, Ordering::Relaxed);
    }

    /// Prometheus text exposition format.
    pub fn render(&self, agents_online: usize, agents_enrolled: Option<usize>) -> String {
        let mut out = String::new();
        let _ = writeln!(
            out,
            "# HELP ferry_agents_online Agents with a live session on this coordinator."
        );
        let _ = writeln!(out, "# TYPE ferry_agents_online gauge");
        let _ = writeln!(out, "ferry_agents_online {agents_online}");
        if let Some(n) = agents_enrolled {
            let _ = writeln!(
                out,
                "# HELP ferry_agents_enrolled Agents enrolled and not revoked."
            );
            let _ = writeln!(out, "# TYPE ferry_agents_enrolled gauge");
            let _ = writeln!(out, "ferry_agents_enrolled {n}");
        }
        let _ = writeln!(
            out,
            "# HELP ferry_rpc_requests_total gRPC requests received, by method."
        );
        let _ = writeln!(out, "# TYPE ferry_rpc_requests_total counter");
        if let Ok(m) = self.rpcs.lock() {
            for (path, n) in m.iter() {
                let _ = writeln!(out, "ferry_rpc_requests_total{{method=\"{path}\"}} {n}");
            }
        }
        let _ = writeln!(
            out,
            "# HELP ferry_rpc_refused_total Requests refused by authentication or authorization, by reason."
        );
        let _ = writeln!(out, "# TYPE ferry_rpc_refused_total counter");
        if let Ok(m) = self.refusals.lock() {
            for (reason, n) in m.iter() {
                let _ = writeln!(out, "ferry_rpc_refused_total{{reason=\"{reason}\"}} {n}");
            }
        }
        let _ = writeln!(
            out,
            "# HELP ferry_agent_sessions_opened_total Agent sessions accepted."
        );
        let _ = writeln!(out, "# TYPE ferry_agent_sessions_opened_total counter");
        let _ = writeln!(
            out,
            "ferry_agent_sessions_opened_total {}",
            self.sessions_opened.load(Ordering::Relaxed)
        );
        let _ = writeln!(
            out,
            "# HELP ferry_agent_heartbeats_total Heartbeats received."
        );
        let _ = writeln!(out, "# TYPE ferry_agent_heartbeats_total counter");
        let _ = writeln!(
            out,
            "ferry_agent_heartbeats_total {}",
            self.heartbeats.load(Ordering::Relaxed)
        );
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_counters() {
        let m = Metrics::default();
        m.count_rpc("/ferry.v1.OperatorService/GetStatus");
        m.count_rpc("/ferry.v1.OperatorService/GetStatus");
        m.count_refusal("role");
        let text = m.render(3, Some(4));
        assert!(text.contains("ferry_agents_online 3"));
        assert!(text.contains("ferry_agents_enrolled 4"));
        assert!(text.contains(
            "ferry_rpc_requests_total{method=\"/ferry.v1.OperatorService/GetStatus\"} 2"
        ));
        assert!(text.contains("ferry_rpc_refused_total{reason=\"role\"} 1"));
    }
}
