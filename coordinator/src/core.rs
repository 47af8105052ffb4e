//! The coordinator's shared state: configuration, store, CA, secrets key,
//! live sessions, metrics. Every gRPC adapter and the admin server hold an `Arc<Core>`.

use std::sync::Arc;

use ferry_common::pki::CertificateAuthority;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::config::CoordinatorConfig;
use crate::metrics::Metrics;
use crate::ratelimit::{FailureLimiter, LogLimiter};
use crate::secrets_key::SecretsKey;
use crate::sessions::Inbound;
use crate::sessions::{OperatorStreams, SessionRegistry};
use crate::store::{AuditEntry, Store};

pub struct Core {
    pub config: CoordinatorConfig,
    pub store: Arc<Store>,
    pub ca: CertificateAuthority,
    /// Seals and opens secrets (see [`crate::secrets`]); checked against the
    /// store at start.
    pub secrets_key: SecretsKey,
    pub sessions: SessionRegistry,
    /// Operators' open watch streams, ended when the operator is revoked.
    pub operator_streams: OperatorStreams,
    pub metrics: Arc<Metrics>,
    /// Identifies this process among coordinators sharing a store.
    pub coordinator_id: String,
    pub started_at_ms: i64,
    /// Cancelled when the coordinator shuts down; sessions end with it.
    pub shutdown: CancellationToken,
    /// Agent events on their way to the store (see `scheduler::start`).
    pub ingest: mpsc::Sender<Inbound>,
    /// Open trace spans of jobs and tasks this process started, by job or
    /// task id; each ends when its job or task does.
    pub spans: std::sync::Mutex<std::collections::HashMap<uuid::Uuid, tracing::Span>>,
    /// Heartbeats received since the last flush, latest per agent; written
    /// to the store in one batch per tick (see `scheduler::start`).
    pub heartbeats:
        std::sync::Mutex<std::collections::HashMap<uuid::Uuid, crate::store::Heartbeat>>,
    /// Failed enrollments per source address (token guessing).
    pub enroll_failures: FailureLimiter,
    /// Bounds the WARN lines failed enrollments write.
    pub enroll_failure_log: LogLimiter,
    /// Whether this process led at the scheduler's last tick (set by its
    /// leader duties), for time-based work that runs on the leader only,
    /// such as firing schedules (`schedules::start`).
    pub leading: std::sync::atomic::AtomicBool,
}

/// Failed enrollments one address may make in [`ENROLL_FAILURE_WINDOW`]
/// before it is refused until the oldest leaves the window.
pub const ENROLL_FAILURES_ALLOWED: usize = 10;
pub const ENROLL_FAILURE_WINDOW: std::time::Duration = std::time::Duration::from_secs(60);

/// The limiter of failed enrollments, as [`Core::enroll_failures`] holds it.
pub fn enroll_failure_limiter() -> FailureLimiter {
    FailureLimiter::new(ENROLL_FAILURE_WINDOW, ENROLL_FAILURES_ALLOWED)
}

/// At most this many enrollment-failure lines per 10 s are logged; the
/// next line says how many were held back.
pub fn enroll_failure_log() -> LogLimiter {
    LogLimiter::new(std::time::Duration::from_secs(10), 10)
}

impl Core {
    /// Keeps `span` open until [`Core::end_span`] for `id`.
    pub fn keep_span(&self, id: uuid::Uuid, span: tracing::Span) {
        self.spans
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(id, span);
    }

    /// Whether a span is kept for `id`.
    pub fn spans_contains(&self, id: uuid::Uuid) -> bool {
        self.spans
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .contains_key(&id)
    }

    /// Ends the span kept for `id`, if this process has it.
    pub fn end_span(&self, id: uuid::Uuid) {
        self.spans
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&id);
    }

    /// Appends to the audit log an entry about no app (tokens, operators,
    /// agents). A failure is logged, not returned: the action itself
    /// already happened and must not be reported as failed.
    pub async fn audit(&self, actor: &str, action: &str, target: &str, detail: String) {
        self.append_audit(audit_entry(actor, action, target, detail))
            .await;
    }

    /// [`Core::audit`] for an action on an app (and environment), so
    /// `ferry audit --app --env` finds it.
    pub async fn audit_app(
        &self,
        actor: &str,
        action: &str,
        target: &str,
        app: &str,
        env: Option<&str>,
        detail: String,
    ) {
        let entry = AuditEntry {
            app: Some(app.to_string()),
            env: env.map(str::to_string),
            ..audit_entry(actor, action, target, detail)
        };
        self.append_audit(entry).await;
    }

    async fn append_audit(&self, entry: AuditEntry) {
        log_audit(&entry);
        if let Err(e) = self.store.append_audit(&entry).await {
            tracing::error!(error = %e, action = %entry.action, target = %entry.target, "could not write the audit log");
        }
    }
}

/// An audit entry about no app, stamped now; for a caller that stores it
/// in a transaction of its own (as `SubmitJob` does) and logs it with
/// [`log_audit`] once that committed.
pub fn audit_entry(actor: &str, action: &str, target: &str, detail: String) -> AuditEntry {
    AuditEntry {
        at_ms: ferry_common::time::now_ms(),
        actor: actor.to_string(),
        action: action.to_string(),
        target: target.to_string(),
        detail,
        app: None,
        env: None,
    }
}

/// Writes an audit entry to the coordinator's log too, once it is stored.
pub fn log_audit(entry: &AuditEntry) {
    tracing::info!(
        actor = %entry.actor,
        action = %entry.action,
        target = %entry.target,
        app = entry.app.as_deref().unwrap_or(""),
        env = entry.env.as_deref().unwrap_or(""),
        detail = %entry.detail,
        "audit"
    );
}
