//! The process's subscriber: logs to stderr, and, when enabled, request spans exported over
//! OTLP/gRPC (etcd's `--enable-distributed-tracing` and its companions).
//!
//! Spans are at TRACE level under `synod_server`, so with tracing off (the default) they are
//! disabled at their call sites and cost a branch. With it on, the exporter's layer takes them:
//! one span per gRPC call (`etcdserverpb.KV/Put`, with the caller's W3C `traceparent` as its
//! parent when it sent one), a `propose` or `read_index` span under it for the trip through the
//! node loop (Raft append, replication, commit, apply), with `queued` and `applied` events from
//! the node loop, and a `node.turn` span per turn of the node loop.

use opentelemetry::propagation::{Extractor, TextMapPropagator};
use opentelemetry::trace::TracerProvider as _;
use opentelemetry_otlp::WithExportConfig;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::{Sampler, SdkTracerProvider};
use tracing_opentelemetry::OpenTelemetrySpanExt;
use tracing_subscriber::Layer;
use tracing_subscriber::layer::SubscriberExt;

/// `--enable-distributed-tracing` and the settings that go with it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TracingSettings {
    /// The OTLP/gRPC collector, `host:port` or a URL (`--distributed-tracing-address`).
    pub address: String,
    /// `service.name` of the spans (`--distributed-tracing-service-name`).
    pub service_name: String,
    /// `service.instance.id` (`--distributed-tracing-instance-id`); empty for none.
    pub instance_id: String,
    /// Requests traced per million that arrive without a sampled parent
    /// (`--distributed-tracing-sampling-rate`; 0: only those whose caller traces them).
    pub samples_per_million: u32,
}

/// Keeps the exporter running; flushes what is buffered when dropped.
pub struct Telemetry {
    provider: Option<SdkTracerProvider>,
}

impl Drop for Telemetry {
    fn drop(&mut self) {
        if let Some(provider) = self.provider.take() {
            let _ = provider.shutdown();
        }
    }
}

/// Installs the global subscriber: the log filter from `SYNOD_LOG` (default `info,raft=warn`),
/// JSON lines with `SYNOD_LOG_FORMAT=json`, and the span exporter when `tracing` is set. Call it
/// inside the runtime: the exporter's gRPC client lives on it.
pub fn install(tracing: Option<&TracingSettings>) -> Result<Telemetry, String> {
    let filter = tracing_subscriber::EnvFilter::try_from_env("SYNOD_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,raft=warn"));
    let json = std::env::var("SYNOD_LOG_FORMAT").is_ok_and(|format| format == "json");
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let logs = tracing_subscriber::fmt::layer()
        .with_ansi(ansi)
        .with_writer(std::io::stderr);
    let logs = if json {
        logs.json().with_filter(filter).boxed()
    } else {
        logs.with_filter(filter).boxed()
    };
    let mut provider = None;
    let spans = match tracing {
        None => None,
        Some(settings) => {
            let built = tracer_provider(settings)?;
            let tracer = built.tracer("synod");
            provider = Some(built);
            opentelemetry::global::set_text_map_propagator(TraceContextPropagator::new());
            let only_requests = tracing_subscriber::filter::Targets::new()
                .with_target("synod_server", tracing::Level::TRACE);
            Some(
                tracing_opentelemetry::layer()
                    .with_tracer(tracer)
                    .with_filter(only_requests),
            )
        }
    };
    let subscriber = tracing_subscriber::registry().with(logs).with(spans);
    // Not `init()`: that would install tracing-log's bridge for `log` records, and raft-engine's
    // need ours (see `crate::log_bridge`).
    if tracing::subscriber::set_global_default(subscriber).is_ok() {
        crate::log_bridge::install();
    }
    Ok(Telemetry { provider })
}

fn tracer_provider(settings: &TracingSettings) -> Result<SdkTracerProvider, String> {
    let endpoint = if settings.address.contains("://") {
        settings.address.clone()
    } else {
        format!("http://{}", settings.address)
    };
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_tonic()
        .with_endpoint(endpoint)
        .build()
        .map_err(|e| format!("--distributed-tracing-address: {e}"))?;
    let mut resource = opentelemetry_sdk::Resource::builder_empty()
        .with_service_name(settings.service_name.clone());
    if !settings.instance_id.is_empty() {
        resource = resource.with_attribute(opentelemetry::KeyValue::new(
            "service.instance.id",
            settings.instance_id.clone(),
        ));
    }
    let ratio = f64::from(settings.samples_per_million) / 1_000_000.0;
    Ok(SdkTracerProvider::builder()
        .with_batch_exporter(exporter)
        .with_sampler(Sampler::ParentBased(Box::new(Sampler::TraceIdRatioBased(
            ratio,
        ))))
        .with_resource(resource.build())
        .build())
}

/// Makes the caller's trace (a W3C `traceparent` header, as OpenTelemetry's gRPC clients send
/// it) the parent of `span`.
pub fn continue_trace(span: &tracing::Span, headers: &axum::http::HeaderMap) {
    if span.is_disabled() || !headers.contains_key("traceparent") {
        return;
    }
    let parent = TraceContextPropagator::new().extract(&Headers(headers));
    let _ = span.set_parent(parent);
}

struct Headers<'h>(&'h axum::http::HeaderMap);

impl Extractor for Headers<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|value| value.to_str().ok())
    }

    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(|name| name.as_str()).collect()
    }
}
