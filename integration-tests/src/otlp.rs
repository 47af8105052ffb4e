//! An in-process OTLP trace receiver: the `TraceService/Export` gRPC
//! endpoint of an OpenTelemetry collector, keeping what it is sent, so a
//! test can point `OTEL_EXPORTER_OTLP_ENDPOINT` at it and check the spans
//! without a real collector.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::{AnyValue, KeyValue, any_value};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tonic::transport::Server;
use tonic::transport::server::TcpIncoming;
use tonic::{Request, Response, Status};

/// One span as received, flattened for assertions: ids in lowercase hex
/// (`parent_span_id` is `""` for a root span), attribute values as strings.
#[derive(Debug, Clone, PartialEq)]
pub struct ReceivedSpan {
    pub trace_id: String,
    pub span_id: String,
    pub parent_span_id: String,
    pub name: String,
    /// The `service.name` of the resource the span came with.
    pub service_name: String,
    pub attributes: BTreeMap<String, String>,
}

/// The receiver, serving on `127.0.0.1` until dropped.
pub struct OtlpReceiver {
    /// What to set `OTEL_EXPORTER_OTLP_ENDPOINT` to, e.g. `http://127.0.0.1:4317`.
    pub endpoint: String,
    spans: Arc<Mutex<Vec<ReceivedSpan>>>,
    stop: CancellationToken,
}

impl OtlpReceiver {
    /// Starts serving on a free port of `127.0.0.1`. Panics if it cannot
    /// bind one: a test cannot go on without it.
    pub async fn start() -> OtlpReceiver {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind the OTLP receiver to 127.0.0.1:0");
        let addr = listener
            .local_addr()
            .expect("the OTLP receiver's local address");
        let spans = Arc::new(Mutex::new(Vec::new()));
        let stop = CancellationToken::new();
        let service = TraceServiceServer::new(Collector {
            spans: Arc::clone(&spans),
        });
        let shutdown = stop.clone().cancelled_owned();
        tokio::spawn(async move {
            let served = Server::builder()
                .add_service(service)
                .serve_with_incoming_shutdown(TcpIncoming::from(listener), shutdown)
                .await;
            if let Err(err) = served {
                tracing::warn!(error = %err, "the OTLP test receiver failed");
            }
        });
        OtlpReceiver {
            endpoint: format!("http://{addr}"),
            spans,
            stop,
        }
    }

    /// Every span received so far, in the order they arrived.
    pub fn spans(&self) -> Vec<ReceivedSpan> {
        self.spans.lock().unwrap().clone()
    }

    /// Waits until `pred` holds for the spans received so far and returns
    /// them. Panics after `timeout`, listing what did arrive, since a test
    /// waiting for spans has nothing better to do than fail saying so.
    pub async fn wait_for(
        &self,
        pred: impl Fn(&[ReceivedSpan]) -> bool,
        timeout: Duration,
    ) -> Vec<ReceivedSpan> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let spans = self.spans();
            if pred(&spans) {
                return spans;
            }
            if tokio::time::Instant::now() >= deadline {
                panic!(
                    "the expected spans did not arrive within {timeout:?}; received: {spans:#?}"
                );
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

impl Drop for OtlpReceiver {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

/// The gRPC service; it shares the span list with its [`OtlpReceiver`].
struct Collector {
    spans: Arc<Mutex<Vec<ReceivedSpan>>>,
}

#[tonic::async_trait]
impl TraceService for Collector {
    async fn export(
        &self,
        request: Request<ExportTraceServiceRequest>,
    ) -> Result<Response<ExportTraceServiceResponse>, Status> {
        let mut received = Vec::new();
        for resource_spans in request.into_inner().resource_spans {
            let service_name = resource_spans
                .resource
                .map(|resource| attributes(&resource.attributes))
                .and_then(|mut attrs| attrs.remove("service.name"))
                .unwrap_or_default();
            for span in resource_spans
                .scope_spans
                .into_iter()
                .flat_map(|scope| scope.spans)
            {
                received.push(ReceivedSpan {
                    trace_id: hex(&span.trace_id),
                    span_id: hex(&span.span_id),
                    parent_span_id: hex(&span.parent_span_id),
                    name: span.name,
                    service_name: service_name.clone(),
                    attributes: attributes(&span.attributes),
                });
            }
        }
        self.spans.lock().unwrap().extend(received);
        // No `partial_success`: everything was accepted.
        Ok(Response::new(ExportTraceServiceResponse::default()))
    }
}

fn attributes(kvs: &[KeyValue]) -> BTreeMap<String, String> {
    kvs.iter()
        .map(|kv| {
            let value = kv.value.as_ref().map(render).unwrap_or_default();
            (kv.key.clone(), value)
        })
        .collect()
}

/// An attribute value as a string: scalars as written, arrays and maps in
/// a JSON-like form, bytes in hex.
fn render(value: &AnyValue) -> String {
    match &value.value {
        None => String::new(),
        Some(any_value::Value::StringValue(s)) => s.clone(),
        Some(any_value::Value::BoolValue(b)) => b.to_string(),
        Some(any_value::Value::IntValue(i)) => i.to_string(),
        Some(any_value::Value::DoubleValue(d)) => d.to_string(),
        Some(any_value::Value::BytesValue(bytes)) => hex(bytes),
        Some(any_value::Value::ArrayValue(array)) => {
            let items: Vec<String> = array.values.iter().map(render).collect();
            format!("[{}]", items.join(","))
        }
        Some(any_value::Value::KvlistValue(list)) => {
            let items: Vec<String> = list
                .values
                .iter()
                .map(|kv| {
                    let value = kv.value.as_ref().map(render).unwrap_or_default();
                    format!("{}={value}", kv.key)
                })
                .collect();
            format!("{{{}}}", items.join(","))
        }
        // Only the profiling signal uses string tables; spans never should.
        Some(any_value::Value::StringValueStrindex(index)) => format!("<strindex {index}>"),
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes
        .iter()
        .fold(String::with_capacity(bytes.len() * 2), |mut out, b| {
            // Writing to a String cannot fail.
            let _ = write!(out, "{b:02x}");
            out
        })
}
