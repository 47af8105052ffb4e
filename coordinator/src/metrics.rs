//! Prometheus metrics, rendered on the admin port's `/metrics` by the
//! `prometheus-client` crate (which keeps the text format and the escaping
//! of label values right).
//!
//! Every label has a bounded set of values, so nobody can grow the
//! exposition by sending requests: RPCs are labelled with their method only
//! when it is one this server serves (read from the services' descriptors),
//! anything else is `other`; refusals and dropped connections are labelled
//! with a reason from a fixed list; and nothing is counted for a request
//! before it has been authenticated except as a refusal by reason.

use std::collections::BTreeSet;
use std::sync::Mutex;
use std::sync::atomic::{AtomicI64, AtomicU64};

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use prost::Message;

/// The label value for a request path this server does not serve.
pub const OTHER_METHOD: &str = "other";

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct MethodLabel {
    method: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReasonLabel {
    reason: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct DatabaseLabels {
    app: String,
    env: String,
    database: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ScheduleLabels {
    app: String,
    env: String,
    database: String,
    kind: String,
}

/// What the store says about backups at scrape time: the newest catalogued
/// backup of each database (app, env, database, ms), and each schedule's
/// (app, env, database, kind) whether its last run failed.
#[derive(Debug, Clone, Default)]
pub struct BackupGauges {
    pub newest_backups: Vec<(String, String, String, i64)>,
    pub schedules_failed: Vec<(String, String, String, String, bool)>,
}

#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    /// `/package.Service/Method` of every RPC served here.
    known_methods: BTreeSet<String>,
    agents_online: Gauge<i64, AtomicI64>,
    agents_enrolled: Gauge<i64, AtomicI64>,
    leader: Gauge<i64, AtomicI64>,
    rpcs: Family<MethodLabel, Counter>,
    refusals: Family<ReasonLabel, Counter>,
    connections_refused: Family<ReasonLabel, Counter>,
    connections_closed: Family<ReasonLabel, Counter>,
    enroll_failures: Counter,
    sessions_opened: Counter,
    heartbeats: Counter,
    backup_last_success: Family<DatabaseLabels, Gauge<f64, AtomicU64>>,
    schedule_last_run_failed: Family<ScheduleLabels, Gauge<i64, AtomicI64>>,
    /// Held while the store-derived families are cleared, refilled and
    /// encoded, so two scrapes at once do not interleave.
    scrape: Mutex<()>,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

/// The RPC paths of every service in these encoded descriptor sets.
fn methods_of(descriptor_sets: &[&[u8]]) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    for set in descriptor_sets {
        let Ok(set) = prost_types::FileDescriptorSet::decode(*set) else {
            continue;
        };
        for file in set.file {
            let package = file.package.unwrap_or_default();
            for service in file.service {
                let service_name = service.name.unwrap_or_default();
                for method in service.method {
                    out.insert(format!(
                        "/{package}.{service_name}/{}",
                        method.name.unwrap_or_default()
                    ));
                }
            }
        }
    }
    out
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::default();
        let m = Metrics {
            known_methods: methods_of(&[
                ferry_proto::FILE_DESCRIPTOR_SET,
                tonic_health::pb::FILE_DESCRIPTOR_SET,
                tonic_reflection::pb::v1::FILE_DESCRIPTOR_SET,
            ]),
            agents_online: Gauge::default(),
            agents_enrolled: Gauge::default(),
            leader: Gauge::default(),
            rpcs: Family::default(),
            refusals: Family::default(),
            connections_refused: Family::default(),
            connections_closed: Family::default(),
            enroll_failures: Counter::default(),
            sessions_opened: Counter::default(),
            heartbeats: Counter::default(),
            backup_last_success: Family::default(),
            schedule_last_run_failed: Family::default(),
            scrape: Mutex::new(()),
            registry: Registry::default(),
        };
        registry.register(
            "ferry_agents_online",
            "Agents with a live session on this coordinator",
            m.agents_online.clone(),
        );
        registry.register(
            "ferry_agents_enrolled",
            "Agents enrolled and not revoked",
            m.agents_enrolled.clone(),
        );
        registry.register(
            "ferry_leader",
            "1 while this coordinator runs the time-based duties (deadlines, lost agents), else 0",
            m.leader.clone(),
        );
        registry.register(
            "ferry_rpc_requests",
            "Authenticated gRPC requests (and enrollments), by method; unknown paths are counted as other",
            m.rpcs.clone(),
        );
        registry.register(
            "ferry_rpc_refused",
            "Requests refused by authentication or authorization, by reason",
            m.refusals.clone(),
        );
        registry.register(
            "ferry_connections_refused",
            "TCP connections closed at once because a connection limit was reached, by limit",
            m.connections_refused.clone(),
        );
        registry.register(
            "ferry_connections_timed_out",
            "Connections closed because a stage took longer than its deadline, by stage",
            m.connections_closed.clone(),
        );
        registry.register(
            "ferry_enroll_failures",
            "Enrollments refused (unknown, used or expired token, bad request)",
            m.enroll_failures.clone(),
        );
        registry.register(
            "ferry_agent_sessions_opened",
            "Agent sessions accepted",
            m.sessions_opened.clone(),
        );
        registry.register(
            "ferry_agent_heartbeats",
            "Heartbeats received",
            m.heartbeats.clone(),
        );
        registry.register(
            "ferry_backup_last_success_timestamp_seconds",
            "When the newest catalogued backup of each database was made (Unix seconds); alert on time() minus this",
            m.backup_last_success.clone(),
        );
        registry.register(
            "ferry_schedule_last_run_failed",
            "1 if the last run of a backup, verify or prune schedule failed (or could not start), else 0",
            m.schedule_last_run_failed.clone(),
        );
        Metrics { registry, ..m }
    }

    /// Counts an authenticated request (or an enrollment) to `path`.
    pub fn count_rpc(&self, path: &str) {
        let method = if self.known_methods.contains(path) {
            path.to_string()
        } else {
            OTHER_METHOD.to_string()
        };
        self.rpcs.get_or_create(&MethodLabel { method }).inc();
    }

    /// Whether `path` is an RPC this server serves.
    pub fn is_known_method(&self, path: &str) -> bool {
        self.known_methods.contains(path)
    }

    pub fn count_refusal(&self, reason: &'static str) {
        self.refusals.get_or_create(&ReasonLabel { reason }).inc();
    }

    /// A connection dropped at accept because `limit` was reached.
    pub fn connection_refused(&self, limit: &'static str) {
        self.connections_refused
            .get_or_create(&ReasonLabel { reason: limit })
            .inc();
    }

    /// A connection closed because `stage` passed its deadline.
    pub fn connection_timed_out(&self, stage: &'static str) {
        self.connections_closed
            .get_or_create(&ReasonLabel { reason: stage })
            .inc();
    }

    pub fn enroll_failed(&self) {
        self.enroll_failures.inc();
    }

    pub fn session_opened(&self) {
        self.sessions_opened.inc();
    }

    pub fn heartbeat(&self) {
        self.heartbeats.inc();
    }

    /// Records whether this coordinator leads; returns whether that changed.
    pub fn set_leader(&self, leading: bool) -> bool {
        self.leader.set(i64::from(leading)) != i64::from(leading)
    }

    /// The exposition (OpenMetrics text, which Prometheus reads), with the
    /// gauges that are computed at scrape time set first. `backups`: None
    /// when the store could not be read (the last values stay).
    pub fn render(
        &self,
        agents_online: usize,
        agents_enrolled: Option<usize>,
        backups: Option<&BackupGauges>,
    ) -> String {
        let _scrape = self.scrape.lock().unwrap_or_else(|p| p.into_inner());
        self.agents_online.set(agents_online as i64);
        if let Some(n) = agents_enrolled {
            self.agents_enrolled.set(n as i64);
        }
        if let Some(b) = backups {
            // Rebuilt from the store each time: a database or schedule that
            // is gone leaves no stale series behind.
            self.backup_last_success.clear();
            for (app, env, database, ms) in &b.newest_backups {
                self.backup_last_success
                    .get_or_create(&DatabaseLabels {
                        app: app.clone(),
                        env: env.clone(),
                        database: database.clone(),
                    })
                    .set(*ms as f64 / 1000.0);
            }
            self.schedule_last_run_failed.clear();
            for (app, env, database, kind, failed) in &b.schedules_failed {
                let g = self
                    .schedule_last_run_failed
                    .get_or_create(&ScheduleLabels {
                        app: app.clone(),
                        env: env.clone(),
                        database: database.clone(),
                        kind: kind.clone(),
                    });
                // Several schedules of one kind: failed if any failed.
                if *failed {
                    g.set(1);
                }
            }
        }
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = encode(&mut out, &self.registry);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_counters_with_known_methods_only() {
        let m = Metrics::new();
        m.count_rpc("/ferry.v1.OperatorService/GetStatus");
        m.count_rpc("/ferry.v1.OperatorService/GetStatus");
        m.count_rpc("/x\"}_bad_\n");
        m.count_rpc("/grpc.health.v1.Health/Check");
        m.count_refusal("role");
        assert!(m.set_leader(true));
        assert!(!m.set_leader(true));
        let text = m.render(3, Some(4), None);
        assert!(text.contains("ferry_agents_online 3"), "{text}");
        assert!(text.contains("ferry_agents_enrolled 4"), "{text}");
        assert!(text.contains("ferry_leader 1"), "{text}");
        assert!(
            text.contains(
                "ferry_rpc_requests_total{method=\"/ferry.v1.OperatorService/GetStatus\"} 2"
            ),
            "{text}"
        );
        assert!(
            text.contains("ferry_rpc_requests_total{method=\"/grpc.health.v1.Health/Check\"} 1"),
            "{text}"
        );
        assert!(
            text.contains("ferry_rpc_requests_total{method=\"other\"} 1"),
            "{text}"
        );
        assert!(!text.contains("_bad_"), "{text}");
        assert!(
            text.contains("ferry_rpc_refused_total{reason=\"role\"} 1"),
            "{text}"
        );
    }

    #[test]
    fn backup_gauges_follow_the_store() {
        let m = Metrics::new();
        let gauges = BackupGauges {
            newest_backups: vec![(
                "shop".into(),
                "prod".into(),
                "main".into(),
                1_700_000_000_500,
            )],
            schedules_failed: vec![
                (
                    "shop".into(),
                    "prod".into(),
                    "main".into(),
                    "backup".into(),
                    false,
                ),
                (
                    "shop".into(),
                    "prod".into(),
                    "main".into(),
                    "verify".into(),
                    true,
                ),
                (
                    "shop".into(),
                    "prod".into(),
                    "main".into(),
                    "verify".into(),
                    false,
                ),
            ],
        };
        let text = m.render(0, None, Some(&gauges));
        assert!(
            text.contains("ferry_backup_last_success_timestamp_seconds{app=\"shop\",env=\"prod\",database=\"main\"} 1700000000.5"),
            "{text}"
        );
        assert!(
            text.contains("ferry_schedule_last_run_failed{app=\"shop\",env=\"prod\",database=\"main\",kind=\"backup\"} 0"),
            "{text}"
        );
        assert!(
            text.contains("ferry_schedule_last_run_failed{app=\"shop\",env=\"prod\",database=\"main\",kind=\"verify\"} 1"),
            "{text}"
        );
        // The store unreadable: the last values stay; emptied: they go.
        assert!(m.render(0, None, None).contains("1700000000.5"));
        let text = m.render(0, None, Some(&BackupGauges::default()));
        assert!(!text.contains("database=\"main\""), "{text}");
    }

    #[test]
    fn knows_every_service_method() {
        let m = Metrics::new();
        for path in [
            "/ferry.v1.AgentService/Enroll",
            "/ferry.v1.AgentService/Session",
            "/ferry.v1.OperatorService/GetStatus",
            "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo",
        ] {
            assert!(m.is_known_method(path), "{path}");
        }
        assert!(!m.is_known_method("/ferry.v1.AgentService/Nope"));
    }

    #[test]
    fn many_unknown_paths_do_not_grow_the_exposition() {
        let m = Metrics::new();
        m.count_rpc("/a");
        let before = m.render(0, None, None).len();
        for i in 0..1000 {
            m.count_rpc(&format!("/unknown/{i}"));
        }
        let after = m.render(0, None, None).len();
        // Only the count's digits change.
        assert!(after <= before + 4, "{before} -> {after}");
    }
}
