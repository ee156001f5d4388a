//! Logging and tracing set-up: `RUST_LOG` filter, text or JSON lines; with
//! `OTEL_EXPORTER_OTLP_ENDPOINT`, the spans that make a transfer's trace exported over
//! OTLP/HTTP (protobuf) to `<endpoint>/v1/traces`.
//!
//! The traced spans are an HTTP request's ([`crate::http`], its parent the request's
//! `traceparent`), a river's delivery of an event (`rapids`, its parent the envelope's
//! `traceparent`) and the tailer's publishing of one (its parent the event's). The
//! `RUST_LOG` filter decides the log lines only: the traced spans are exported whatever
//! it says. The SDK's own variables apply (`OTEL_TRACES_SAMPLER` and its argument,
//! `OTEL_BSP_*`, `OTEL_EXPORTER_OTLP_HEADERS`); the endpoint is
//! `OTEL_EXPORTER_OTLP_ENDPOINT`'s alone.

use opentelemetry::trace::TracerProvider as _;
use opentelemetry_otlp::{Protocol, WithExportConfig, WithHttpConfig};
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::trace::SdkTracerProvider;
use std::sync::OnceLock;
use tracing_subscriber::EnvFilter;
use tracing_subscriber::Layer as _;
use tracing_subscriber::layer::SubscriberExt as _;
use tracing_subscriber::util::SubscriberInitExt as _;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

/// The spans a trace is made of: `(target prefix, span name)`.
const TRACED: [(&str, &str); 3] = [("service_kit", "request"), ("rapids", "delivery"), ("tailer", "publish")];

/// The tracer provider, kept to flush what it holds at exit ([`shutdown`]).
static PROVIDER: OnceLock<SdkTracerProvider> = OnceLock::new();

/// Installs the global subscriber once; later calls (tests) are ignored. `service` is
/// the traces' `service.name`; `otlp_endpoint` turns the export on. Must run inside
/// the tokio runtime (the exporter sends on it).
pub fn init(service: &str, format: LogFormat, otlp_endpoint: Option<&str>) {
    let filter = || EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info,sqlx=warn,aws=warn"));
    let Some(endpoint) = otlp_endpoint.filter(|e| !e.is_empty()) else {
        let builder = tracing_subscriber::fmt().with_env_filter(filter()).with_target(false);
        let _ = match format {
            LogFormat::Text => builder.try_init(),
            // every line carries its spans' fields (a delivery's correlation and causation
            // ids, stream and version; a request's id): one grep follows a flow
            LogFormat::Json => {
                builder.json().flatten_event(true).with_current_span(true).with_span_list(true).try_init()
            }
        };
        return;
    };
    let tracer = match exporter(endpoint) {
        Ok(exporter) => {
            let provider = SdkTracerProvider::builder()
                .with_batch_exporter(exporter)
                .with_resource(Resource::builder().with_service_name(service.to_owned()).build())
                .build();
            let tracer = provider.tracer("bank");
            let _ = PROVIDER.set(provider);
            Some(tracer)
        }
        Err(e) => {
            eprintln!("traces are not exported: the OTLP exporter could not be built: {e}");
            None
        }
    };
    let traced = tracing_subscriber::filter::filter_fn(|m| {
        m.is_span() && TRACED.iter().any(|(target, name)| m.name() == *name && m.target().starts_with(target))
    });
    let otel = tracer.map(|t| tracing_opentelemetry::layer().with_tracer(t).with_filter(traced));
    let fmt = tracing_subscriber::fmt::layer().with_target(false);
    let logs = match format {
        LogFormat::Text => fmt.with_filter(filter()).boxed(),
        LogFormat::Json => {
            fmt.json().flatten_event(true).with_current_span(true).with_span_list(true).with_filter(filter()).boxed()
        }
    };
    let _ = tracing_subscriber::registry().with(logs).with(otel).try_init();
}

/// Exports what the tracer provider still holds and stops it (a process's last act).
pub async fn shutdown() {
    if let Some(provider) = PROVIDER.get() {
        // the exporter sends on the runtime: wait for it off the runtime's threads
        let provider = provider.clone();
        let _ = tokio::task::spawn_blocking(move || provider.shutdown()).await;
    }
}

fn exporter(endpoint: &str) -> Result<opentelemetry_otlp::SpanExporter, opentelemetry_otlp::ExporterBuildError> {
    let client = OtlpClient { http: reqwest::Client::new(), runtime: tokio::runtime::Handle::current() };
    opentelemetry_otlp::SpanExporter::builder()
        .with_http()
        .with_protocol(Protocol::HttpBinary)
        .with_endpoint(format!("{}/v1/traces", endpoint.trim_end_matches('/')))
        .with_http_client(client)
        .build()
}

/// The exporter's HTTP client: the workspace's reqwest, run on the service's runtime
/// (the SDK exports from a thread of its own, which has none).
#[derive(Debug)]
struct OtlpClient {
    http: reqwest::Client,
    runtime: tokio::runtime::Handle,
}

#[async_trait::async_trait]
impl opentelemetry_http::HttpClient for OtlpClient {
    async fn send_bytes(
        &self,
        request: http::Request<bytes::Bytes>,
    ) -> Result<http::Response<bytes::Bytes>, opentelemetry_http::HttpError> {
        let request = reqwest::Request::try_from(request)?;
        let http = self.http.clone();
        let sent = self.runtime.spawn(async move {
            let response = tokio::time::timeout(std::time::Duration::from_secs(10), http.execute(request)).await??;
            let answer = http::Response::builder().status(response.status());
            let body = response.bytes().await?;
            Ok::<_, opentelemetry_http::HttpError>(answer.body(body)?)
        });
        sent.await?
    }
}
