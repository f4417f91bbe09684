//! Request tracing: with `--enable-distributed-tracing`, a member exports its request spans over
//! OTLP/gRPC. A small collector here (OpenTelemetry's own protocol definitions, served by tonic)
//! receives them.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::any_value::Value;
use opentelemetry_proto::tonic::trace::v1::Span;

use crate::harness::Member;

/// A span as received, with its resource's attributes.
type Received = (Vec<(String, String)>, Span);

#[derive(Clone, Default)]
struct Collector {
    spans: Arc<Mutex<Vec<Received>>>,
}

#[tonic::async_trait]
impl TraceService for Collector {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        let mut spans = self.spans.lock().expect("spans");
        for resource_spans in request.into_inner().resource_spans {
            let resource: Vec<(String, String)> = resource_spans
                .resource
                .map(|r| r.attributes)
                .unwrap_or_default()
                .into_iter()
                .map(|kv| (kv.key, text(kv.value.and_then(|v| v.value))))
                .collect();
            for scope in resource_spans.scope_spans {
                for span in scope.spans {
                    spans.push((resource.clone(), span));
                }
            }
        }
        Ok(tonic::Response::new(ExportTraceServiceResponse::default()))
    }
}

fn text(value: Option<Value>) -> String {
    match value {
        Some(Value::StringValue(s)) => s,
        Some(Value::IntValue(i)) => i.to_string(),
        Some(Value::BoolValue(b)) => b.to_string(),
        other => format!("{other:?}"),
    }
}

fn attribute(span: &Span, key: &str) -> Option<String> {
    span.attributes
        .iter()
        .find(|kv| kv.key == key)
        .map(|kv| text(kv.value.clone().and_then(|v| v.value)))
}

/// Goal: a Put produces a server span named after the gRPC method, with its status code, and a
/// `propose` span under it carrying the node loop's `queued` and `applied` events; a caller's W3C
/// `traceparent` makes the call part of the caller's trace; the resource names the service and
/// the member.
#[tokio::test]
async fn request_spans_reach_an_otlp_collector() {
    let collector = Collector::default();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind the collector");
    let address = listener.local_addr().expect("address");
    let server = tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(TraceServiceServer::new(collector.clone()))
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
    );
    let root = tempfile::tempdir().expect("temp dir");
    let address = address.to_string();
    let member = Member::start(
        root.path(),
        &[
            "--name",
            "traced",
            "--enable-distributed-tracing",
            "--distributed-tracing-address",
            &address,
            "--distributed-tracing-sampling-rate",
            "1000000",
        ],
    );
    let mut client = member.etcd_client().await;
    client.put("traced-key", "v", None).await.expect("put");
    // A call that continues a caller's trace.
    let synod = synod_client::Client::connect(&member.endpoint(), Duration::from_secs(2))
        .await
        .expect("connect");
    let trace_id = "4bf92f3577b34da6a3ce929d0e0e4736";
    let caller_span = "00f067aa0ba902b7";
    let mut request = tonic::Request::new(synod_api::etcdserverpb::RangeRequest {
        key: b"traced-key".to_vec(),
        ..Default::default()
    });
    request.metadata_mut().insert(
        "traceparent",
        format!("00-{trace_id}-{caller_span}-01")
            .parse()
            .expect("header"),
    );
    synod.kv().range(request).await.expect("range");

    let hex = |bytes: &[u8]| bytes.iter().map(|b| format!("{b:02x}")).collect::<String>();
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let spans = collector.spans.lock().expect("spans").clone();
        let put = spans.iter().find(|(_, s)| s.name == "etcdserverpb.KV/Put");
        let range = spans
            .iter()
            .find(|(_, s)| s.name == "etcdserverpb.KV/Range" && hex(&s.trace_id) == trace_id);
        if let (Some((resource, put)), Some((_, range))) = (put, range) {
            let propose = spans
                .iter()
                .map(|(_, s)| s)
                .find(|s| s.name == "propose" && s.parent_span_id == put.span_id)
                .expect("a propose span under the Put");
            assert_eq!(propose.trace_id, put.trace_id);
            let events: Vec<&str> = propose.events.iter().map(|e| e.name.as_str()).collect();
            assert!(
                events.contains(&"queued") && events.contains(&"applied"),
                "{events:?}"
            );
            assert_eq!(attribute(put, "rpc.grpc.status_code").as_deref(), Some("0"));
            assert_eq!(attribute(put, "rpc.method").as_deref(), Some("Put"));
            assert!(resource.contains(&("service.name".to_owned(), "synod".to_owned())));
            assert!(resource.contains(&("service.instance.id".to_owned(), "traced".to_owned())));
            assert_eq!(
                hex(&range.parent_span_id),
                caller_span,
                "the caller's span is the parent"
            );
            break;
        }
        assert!(
            Instant::now() < deadline,
            "spans did not arrive: {:?}",
            spans
                .iter()
                .map(|(_, s)| s.name.clone())
                .collect::<Vec<_>>()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    server.abort();
}
