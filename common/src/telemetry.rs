//! Logging and tracing setup for the binaries, and W3C trace-context
//! propagation between the coordinator and the agents.
//!
//! [`init`] installs the global `tracing` subscriber: `RUST_LOG` (or the
//! given default) selects what is logged to stderr, and, when
//! `OTEL_EXPORTER_OTLP_ENDPOINT` is set, spans are also exported with OTLP
//! over gRPC. The coordinator puts [`traceparent_of`] its task span into
//! `Assign`; the agent calls [`set_parent`] on its task span, so the agent's
//! spans join the rollout's trace.
//!
//! The same `EnvFilter` decides what is logged and what is exported: a span
//! below the `RUST_LOG` level is neither, and has no trace context.

use std::collections::HashMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use opentelemetry::propagation::TextMapPropagator;
use opentelemetry::trace::{TraceContextExt, TracerProvider as _};
use opentelemetry_otlp::WithExportConfig;
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::SdkTracerProvider;
use tracing_opentelemetry::{OpenTelemetrySpanExt, SetParentError};
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer};

/// The variable that turns OTLP export on; its value is the collector's
/// gRPC endpoint, e.g. `http://127.0.0.1:4317`.
pub const OTLP_ENDPOINT_VAR: &str = "OTEL_EXPORTER_OTLP_ENDPOINT";

/// How long [`Telemetry::shutdown`] waits for the last spans to be exported.
/// Bounded so that an unreachable collector cannot stop a process exiting.
const SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(5);

/// How long one OTLP export may take. Shorter than [`SHUTDOWN_TIMEOUT`], so
/// the final flush can finish (or fail and say so) within it.
const EXPORT_TIMEOUT: Duration = Duration::from_secs(3);

/// The name of the W3C trace-context header, and of its key in the carrier
/// maps below.
const TRACEPARENT: &str = "traceparent";

/// Set by the first [`init`]; later calls see it and do nothing.
static INSTALLED: AtomicBool = AtomicBool::new(false);

/// Whether the OpenTelemetry layer is part of the global subscriber, so
/// [`set_parent`] can tell "export is off" (expected) from "the layer is
/// missing" (a bug worth a warning).
static OTEL_ACTIVE: AtomicBool = AtomicBool::new(false);

/// Installs the global `tracing` subscriber and the W3C TraceContext
/// propagator, and returns the guard that flushes exported spans.
///
/// - Logging: `RUST_LOG` from `env`, else `default_filter`, to stderr.
/// - Tracing: only when `OTEL_EXPORTER_OTLP_ENDPOINT` is set and non-empty in
///   `env`, spans go with OTLP/gRPC to that endpoint, with resource
///   `service.name = service_name`. A bad endpoint is logged as a warning and
///   logging still starts, since traces are not worth refusing to run for.
///
/// The environment is passed in, not read here, so tests can turn export on
/// without touching the process environment. (The OTLP exporter itself still
/// reads the optional `OTEL_EXPORTER_OTLP_HEADERS`/`_COMPRESSION` variables
/// from the process environment.)
///
/// Safe to call more than once: later calls change nothing and return an
/// inert guard, so every test can call it.
///
/// Keep the guard for the life of the process and call
/// [`Telemetry::shutdown`] before exiting (dropping it does the same);
/// `let _ = init(..)` would shut export down at once.
/// Whether log lines carry ANSI colour codes: only on a terminal, and not
/// with `NO_COLOR` set. A log written to a file or journald holds plain
/// text, not escape sequences.
fn colour(stderr_is_terminal: bool, env: &HashMap<String, String>) -> bool {
    stderr_is_terminal && env.get("NO_COLOR").is_none_or(|v| v.is_empty())
}

#[must_use = "dropping the guard shuts span export down"]
pub fn init(
    service_name: &'static str,
    default_filter: &str,
    env: &HashMap<String, String>,
) -> Telemetry {
    opentelemetry::global::set_text_map_propagator(TraceContextPropagator::new());
    if INSTALLED.swap(true, Ordering::SeqCst) {
        return Telemetry::inert();
    }

    let filter = match env.get("RUST_LOG").filter(|v| !v.is_empty()) {
        Some(directives) => EnvFilter::try_new(directives).unwrap_or_else(|err| {
            // No subscriber yet, so stderr is the only place to say it.
            eprintln!("ignoring RUST_LOG={directives:?} ({err}); using {default_filter:?}");
            EnvFilter::new(default_filter)
        }),
        None => EnvFilter::new(default_filter),
    };
    let fmt = tracing_subscriber::fmt::layer()
        .with_writer(std::io::stderr)
        .with_ansi(colour(
            std::io::IsTerminal::is_terminal(&std::io::stderr()),
            env,
        ))
        .with_target(false);

    // Building the exporter can fail (a malformed or https endpoint); report
    // it once the subscriber is up, so it reaches the log like anything else.
    let endpoint = env
        .get(OTLP_ENDPOINT_VAR)
        .map(|e| e.trim())
        .filter(|e| !e.is_empty());
    let (exporter, build_error) = match endpoint.map(|e| Exporter::start(service_name, e)) {
        Some(Ok(exporter)) => (Some(exporter), None),
        Some(Err(err)) => (None, Some(err)),
        None => (None, None),
    };
    let otel_layer = exporter.as_ref().map(|exporter| {
        tracing_opentelemetry::layer()
            .with_tracer(exporter.provider.tracer("ferry"))
            .with_filter(tracing_subscriber::filter::filter_fn(|meta| {
                !is_export_machinery(meta.target())
            }))
    });

    let installed = tracing_subscriber::registry()
        .with(filter)
        .with(fmt)
        .with(otel_layer)
        .try_init();
    if let Err(err) = installed {
        // Someone else's subscriber is global (a test harness, say); ours
        // cannot be, so neither is our exporter.
        tracing::warn!(error = %err, "a global tracing subscriber is already set; not installing ours");
        let telemetry = Telemetry {
            exporter: Mutex::new(exporter),
        };
        telemetry.shutdown();
        return Telemetry::inert();
    }

    if let Some(err) = build_error {
        tracing::warn!(endpoint = endpoint.unwrap_or_default(), error = %err, "OTLP span export is off");
    }
    // The provider is deliberately not made OpenTelemetry's global one:
    // spans come only through `tracing`, and nothing uses `global::tracer`.
    if exporter.is_some() {
        OTEL_ACTIVE.store(true, Ordering::SeqCst);
        tracing::debug!(
            endpoint = endpoint.unwrap_or_default(),
            service_name,
            "exporting spans with OTLP"
        );
    }
    Telemetry {
        exporter: Mutex::new(exporter),
    }
}

/// The W3C `traceparent` of `span` (`00-<trace id>-<span id>-<flags>`), to
/// hand to another process; `""` when the span has no valid OpenTelemetry
/// context: export is off, or the span is disabled by the filter.
///
/// This starts the span's OpenTelemetry span, so call [`set_parent`] on it,
/// if at all, before this.
pub fn traceparent_of(span: &tracing::Span) -> String {
    let cx = span.context();
    if !cx.span().span_context().is_valid() {
        return String::new();
    }
    let mut carrier = HashMap::new();
    TraceContextPropagator::new().inject_context(&cx, &mut carrier);
    carrier.remove(TRACEPARENT).unwrap_or_default()
}

/// Makes `span` a child of the remote span in `traceparent`, so it joins
/// that trace. Does nothing when `traceparent` is empty, or when export is
/// off; an unparsable `traceparent` is logged and ignored, since a broken
/// trace is no reason to fail the work it describes.
///
/// Call it right after creating the span, before entering it, creating
/// children of it or calling [`traceparent_of`] on it: once the span's
/// OpenTelemetry span has started, its parent is fixed.
pub fn set_parent(span: &tracing::Span, traceparent: &str) {
    if traceparent.is_empty() {
        return;
    }
    let carrier = HashMap::from([(TRACEPARENT.to_owned(), traceparent.to_owned())]);
    let cx = TraceContextPropagator::new().extract(&carrier);
    if !cx.span().span_context().is_valid() {
        tracing::warn!(traceparent, "ignoring an invalid traceparent");
        return;
    }
    match span.set_parent(cx) {
        Ok(()) => {}
        // Export is off, so there is no trace to join.
        Err(SetParentError::LayerNotFound) if !OTEL_ACTIVE.load(Ordering::SeqCst) => {}
        // The span is filtered out; the filter decided it is not wanted.
        Err(SetParentError::SpanDisabled) => {}
        Err(err @ (SetParentError::LayerNotFound | SetParentError::AlreadyStarted)) => {
            tracing::warn!(traceparent, error = %err, "could not join the remote trace");
        }
    }
}

/// Whether spans from this target belong to the OTLP export itself (the
/// exporter's gRPC client and the SDK). Exporting those would make every
/// export produce spans for the next one, at debug and trace levels.
fn is_export_machinery(target: &str) -> bool {
    const PREFIXES: [&str; 6] = [
        "h2",
        "hyper",
        "tonic",
        "tower",
        "opentelemetry",
        "tracing_opentelemetry",
    ];
    PREFIXES.iter().any(|prefix| {
        target
            .strip_prefix(prefix)
            .is_some_and(|rest| rest.is_empty() || rest.starts_with("::") || rest.starts_with('_'))
    })
}

/// The guard [`init`] returns. [`Telemetry::shutdown`] (or dropping it)
/// exports the spans still buffered and stops export; an inert guard, from
/// a repeated [`init`] or with export off, does nothing.
#[must_use = "dropping the guard shuts span export down"]
pub struct Telemetry {
    exporter: Mutex<Option<Exporter>>,
}

impl Telemetry {
    fn inert() -> Self {
        Self {
            exporter: Mutex::new(None),
        }
    }

    /// Exports the spans still buffered, waiting at most about 5 s, and
    /// stops export. Later calls do nothing; spans ended afterwards are
    /// dropped. It blocks, but is safe on any thread, including inside a
    /// tokio current-thread runtime: the exporter's gRPC I/O runs on a
    /// thread of its own, not on the caller's runtime.
    pub fn shutdown(&self) {
        let exporter = match self.exporter.lock() {
            Ok(mut guard) => guard.take(),
            // A panic elsewhere mid-shutdown; the exporter is still ours to stop.
            Err(poisoned) => poisoned.into_inner().take(),
        };
        if let Some(exporter) = exporter {
            exporter.shutdown();
        }
    }
}

impl Drop for Telemetry {
    fn drop(&mut self) {
        self.shutdown();
    }
}

impl std::fmt::Debug for Telemetry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let active = self.exporter.lock().map(|e| e.is_some()).unwrap_or(false);
        f.debug_struct("Telemetry")
            .field("exporting", &active)
            .finish()
    }
}

/// The OTLP pipeline: a tracer provider whose batch processor exports from
/// its own thread, and a tokio runtime on another thread of our own for the
/// exporter's gRPC I/O.
///
/// Why the separate runtime: the SDK's batch processor drives the tonic
/// client with `block_on` on its own thread, but the client's connection
/// tasks run on whichever runtime was current when the exporter was built.
/// Were that the caller's runtime, a flush from a tokio current-thread
/// runtime (`#[tokio::main(flavor = "current_thread")]`, `#[tokio::test]`)
/// would block the only thread that can drive the connection, and hang until
/// the timeout, losing the spans. With our own I/O thread, flushing needs
/// nothing from the caller's runtime; [`SHUTDOWN_TIMEOUT`] still bounds it
/// against an unreachable collector.
struct Exporter {
    provider: SdkTracerProvider,
    /// Stops the I/O runtime; its thread drops the runtime and ends.
    stop_io: tokio::sync::oneshot::Sender<()>,
}

impl Exporter {
    fn start(service_name: &'static str, endpoint: &str) -> Result<Self, ExportSetupError> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(ExportSetupError::Runtime)?;
        let exporter = {
            // The tonic channel spawns its connection tasks here.
            let _entered = runtime.enter();
            opentelemetry_otlp::SpanExporter::builder()
                .with_tonic()
                .with_endpoint(endpoint)
                .with_timeout(EXPORT_TIMEOUT)
                .build()
                .map_err(ExportSetupError::Exporter)?
        };
        let (stop_io, stopped) = tokio::sync::oneshot::channel::<()>();
        // The runtime is dropped on its own thread, outside any async
        // context, where dropping a runtime is allowed.
        std::thread::Builder::new()
            .name("ferry-otel-io".to_owned())
            .spawn(move || {
                runtime.block_on(async {
                    // An error only means the sender is gone: stop either way.
                    let _ = stopped.await;
                });
            })
            .map_err(ExportSetupError::Runtime)?;

        let provider = SdkTracerProvider::builder()
            .with_batch_exporter(exporter)
            .with_resource(
                Resource::builder_empty()
                    .with_service_name(service_name)
                    .build(),
            )
            .build();
        Ok(Self { provider, stop_io })
    }

    fn shutdown(self) {
        if let Err(err) = self.provider.shutdown_with_timeout(SHUTDOWN_TIMEOUT) {
            tracing::warn!(error = %err, "flushing spans to the OTLP endpoint failed; some are lost");
        }
        // The I/O thread is not joined: it only has to drop an idle runtime,
        // and a process that is exiting need not wait for that.
        if self.stop_io.send(()).is_err() {
            tracing::warn!("the OTLP I/O thread had already stopped");
        }
    }
}

/// Why OTLP export could not be set up.
#[derive(Debug, thiserror::Error)]
enum ExportSetupError {
    #[error("starting the exporter's I/O thread: {0}")]
    Runtime(std::io::Error),
    #[error("building the OTLP exporter: {0}")]
    Exporter(opentelemetry_otlp::ExporterBuildError),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn colour_only_on_a_terminal_without_no_color() {
        let none = HashMap::new();
        assert!(colour(true, &none));
        assert!(!colour(false, &none), "a file or journald gets plain text");
        let no_color = HashMap::from([("NO_COLOR".to_string(), "1".to_string())]);
        assert!(!colour(true, &no_color));
    }

    #[test]
    fn export_machinery_targets_are_recognised() {
        for target in [
            "h2",
            "h2::proto",
            "hyper_util::client",
            "tonic::transport",
            "tower::buffer",
        ] {
            assert!(is_export_machinery(target), "{target}");
        }
        for target in [
            "ferry_agent::runner",
            "ferry_coordinator",
            "h2o",
            "towering",
        ] {
            assert!(!is_export_machinery(target), "{target}");
        }
        assert!(is_export_machinery("opentelemetry_sdk"));
        assert!(is_export_machinery("opentelemetry_otlp::exporter"));
    }

    #[test]
    fn without_the_otel_layer_there_is_no_traceparent_and_set_parent_is_a_no_op() {
        let span = tracing::info_span!("job");
        assert_eq!(traceparent_of(&span), "");
        set_parent(
            &span,
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        );
        set_parent(&span, "not a traceparent");
        set_parent(&span, "");
    }
}
