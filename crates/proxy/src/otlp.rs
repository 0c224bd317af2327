//! OTLP trace export (cargo feature `otlp`) with the OpenTelemetry SDK: one server span per
//! request, exported in batches as OTLP/HTTP protobuf.
//!
//! The SDK is used directly (`Tracer::build_with_context`) rather than through
//! `tracing-opentelemetry`: the proxy has exactly one span per request, started when the request
//! arrives and ended where the audit record is written, and its ids must be known before the
//! request goes upstream. A `tracing` layer would turn every log event's span into an exported
//! span and hide the ids behind the subscriber.
//!
//! - Parent: the incoming `traceparent` (with its `tracestate`) is the remote parent, so the
//!   proxy's span joins the client's trace instead of starting a second root.
//! - Sampling: the SDK's sampler decides when the span starts; the `traceparent` sent upstream
//!   carries the SDK's decision, so the flag says "sampled" exactly when the span is exported.
//!   `tracing.sample_ratio` sets `ParentBased(TraceIdRatioBased(ratio))`; without it the SDK
//!   reads `OTEL_TRACES_SAMPLER` / `OTEL_TRACES_SAMPLER_ARG` (default `parentbased_always_on`).
//! - Off the request path: the SDK's batch span processor queues ended spans (2,048) and
//!   exports from its own thread. A full queue or a collector that is down drops spans. Spans
//!   of batches the collector did not accept are counted on `/metrics`
//!   (`portcullis_otlp_spans_failed_total`); spans dropped at a full queue are only reported in
//!   the SDK's internal log (`RUST_LOG=opentelemetry_sdk=warn`): it exposes no count of them.
//! - Transport: a hyper client over rustls (the platform's roots) for `https://` collectors,
//!   plain TCP for `http://`. The batch processor's thread is not a Tokio thread, so each export
//!   runs as a task on the runtime the exporter was started on.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use http::{HeaderMap, Request, Response};
use opentelemetry::trace::{
    Span as _, SpanContext, SpanId, SpanKind, Status, TraceContextExt, TraceFlags, TraceId,
    TraceState, Tracer as _, TracerProvider as _,
};
use opentelemetry::{Context, KeyValue};
use opentelemetry_http::{HttpClient, HttpError};
use opentelemetry_otlp::{Protocol, WithExportConfig, WithHttpConfig};
use opentelemetry_sdk::error::OTelSdkResult;
use opentelemetry_sdk::trace::{
    BatchSpanProcessor, Sampler, SdkTracer, SdkTracerProvider, SpanData, SpanExporter,
};
use opentelemetry_sdk::Resource;

use crate::config::Otlp;
use crate::telemetry::{TraceContext, TRACESTATE};

/// The span of one request, from arrival to the audit record.
pub(crate) type RequestSpan = opentelemetry_sdk::trace::Span;

/// What a finished request tells its span.
pub(crate) struct Finished<'a> {
    pub(crate) route: Option<&'a str>,
    pub(crate) method: &'a str,
    pub(crate) status: u16,
    pub(crate) decision: &'static str,
    pub(crate) reason: Option<&'static str>,
}

pub struct Exporter {
    provider: SdkTracerProvider,
    tracer: SdkTracer,
    counts: Arc<Counts>,
}

/// Spans by how their export ended (the SDK keeps no such count).
#[derive(Debug, Default)]
struct Counts {
    exported: AtomicU64,
    failed: AtomicU64,
}

/// The OTLP exporter, counting the spans of each batch by outcome for `/metrics`.
#[derive(Debug)]
struct Counted<E> {
    inner: E,
    counts: Arc<Counts>,
}

impl<E: SpanExporter> SpanExporter for Counted<E> {
    async fn export(&self, batch: Vec<SpanData>) -> OTelSdkResult {
        let n = batch.len() as u64;
        let result = self.inner.export(batch).await;
        let c = match result {
            Ok(()) => &self.counts.exported,
            Err(_) => &self.counts.failed,
        };
        c.fetch_add(n, Ordering::Relaxed);
        result
    }

    fn shutdown_with_timeout(&self, timeout: Duration) -> OTelSdkResult {
        self.inner.shutdown_with_timeout(timeout)
    }

    fn force_flush(&self) -> OTelSdkResult {
        self.inner.force_flush()
    }

    // The provider hands its resource (service.name, ...) to the exporter this way.
    fn set_resource(&mut self, resource: &Resource) {
        self.inner.set_resource(resource);
    }
}

impl std::fmt::Debug for Exporter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Exporter")
    }
}

/// The OTLP HTTP client: hyper over rustls, each request spawned on the proxy's runtime
/// (hyper needs a Tokio reactor; the SDK's batch thread has none).
#[derive(Debug)]
struct SpawnedClient {
    inner: opentelemetry_http::hyper::HyperClient<Connector>,
    runtime: tokio::runtime::Handle,
}

#[async_trait::async_trait]
impl HttpClient for SpawnedClient {
    async fn send_bytes(&self, request: Request<Bytes>) -> Result<Response<Bytes>, HttpError> {
        let inner = self.inner.clone();
        self.runtime
            .spawn(async move { inner.send_bytes(request).await })
            .await?
    }
}

type Connector = hyper_rustls::HttpsConnector<hyper_util::client::legacy::connect::HttpConnector>;

fn https_connector() -> Result<Connector, String> {
    let mut roots = rustls::RootCertStore::empty();
    // Roots that fail to parse are skipped: an unusable root can only make a collector
    // unreachable, never trusted.
    for cert in rustls_native_certs::load_native_certs().certs {
        let _ = roots.add(cert);
    }
    let tls = rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(
        rustls::crypto::aws_lc_rs::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|e| e.to_string())?
    .with_root_certificates(roots)
    .with_no_client_auth();
    Ok(hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(tls)
        .https_or_http()
        .enable_http1()
        .build())
}

/// Whether the environment names a service (`OTEL_SERVICE_NAME`, or `service.name` in
/// `OTEL_RESOURCE_ATTRIBUTES`), which then wins over our default name.
fn env_names_service() -> bool {
    let set = |k: &str| std::env::var(k).is_ok_and(|v| !v.trim().is_empty());
    set("OTEL_SERVICE_NAME")
        || std::env::var("OTEL_RESOURCE_ATTRIBUTES").is_ok_and(|v| {
            v.split(',')
                .any(|kv| kv.split('=').next().map(str::trim) == Some("service.name"))
        })
}

impl Exporter {
    /// Builds the exporter and the batch processor (needs a Tokio runtime: exports run on it).
    pub fn start(settings: &Otlp) -> Result<Exporter, String> {
        let client = SpawnedClient {
            inner: opentelemetry_http::hyper::HyperClient::new(
                https_connector()?,
                Duration::from_secs(10),
                None,
            ),
            runtime: tokio::runtime::Handle::try_current().map_err(|e| e.to_string())?,
        };
        let mut builder = opentelemetry_otlp::SpanExporter::builder()
            .with_http()
            .with_http_client(client)
            .with_protocol(Protocol::HttpBinary);
        // The config wins over OTEL_EXPORTER_OTLP_(TRACES_)ENDPOINT, which the SDK reads when
        // no endpoint is given here.
        if let Some(e) = &settings.endpoint {
            builder = builder.with_endpoint(e.clone());
        }
        let counts = Arc::new(Counts::default());
        let exporter = Counted {
            inner: builder.build().map_err(|e| e.to_string())?,
            counts: Arc::clone(&counts),
        };
        let mut resource = Resource::builder();
        match &settings.service_name {
            Some(name) => resource = resource.with_service_name(name.clone()),
            None if !env_names_service() => resource = resource.with_service_name("portcullis"),
            None => {}
        }
        let mut provider = SdkTracerProvider::builder()
            .with_span_processor(BatchSpanProcessor::builder(exporter).build())
            .with_resource(resource.build());
        if let Some(ratio) = settings.sample_ratio {
            provider = provider.with_sampler(Sampler::ParentBased(Box::new(
                Sampler::TraceIdRatioBased(ratio),
            )));
        }
        let provider = provider.build();
        let tracer = provider.tracer("portcullis");
        Ok(Exporter {
            provider,
            tracer,
            counts,
        })
    }

    /// Starts the request's server span under the incoming trace context, and the trace context
    /// the request carries on (upstream `traceparent`, audit record) with the span's ids and
    /// the sampler's decision.
    pub(crate) fn begin(&self, h: &HeaderMap) -> (TraceContext, RequestSpan) {
        let incoming = crate::telemetry::incoming_traceparent(h);
        let parent = match incoming {
            Some((trace, span, flags)) => {
                // An invalid tracestate is dropped, as W3C Trace Context says; the traceparent
                // still counts.
                let state = h
                    .get(TRACESTATE)
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| v.parse::<TraceState>().ok())
                    .unwrap_or_default();
                let sc = SpanContext::new(
                    TraceId::from_bytes(trace),
                    SpanId::from_bytes(span),
                    TraceFlags::new(flags & 0x01),
                    true,
                    state,
                );
                Context::new().with_remote_span_context(sc)
            }
            None => Context::new(),
        };
        let span = self.tracer.build_with_context(
            self.tracer
                .span_builder("portcullis")
                .with_kind(SpanKind::Server),
            &parent,
        );
        let sc = span.span_context();
        let trace = TraceContext::of_span(
            sc.trace_id().to_bytes(),
            sc.span_id().to_bytes(),
            sc.is_sampled(),
            incoming.is_some(),
        );
        (trace, span)
    }

    /// Ends the span with what the audit record says; a span the sampler dropped costs nothing.
    pub(crate) fn end(&self, mut span: RequestSpan, f: &Finished<'_>) {
        if !span.is_recording() {
            return;
        }
        let route = f.route.unwrap_or("unrouted");
        span.update_name(format!("{} {route}", f.method));
        let mut attrs = vec![
            KeyValue::new("http.request.method", f.method.to_string()),
            KeyValue::new("http.response.status_code", i64::from(f.status)),
            KeyValue::new("portcullis.route", route.to_string()),
            KeyValue::new("portcullis.decision", f.decision),
        ];
        if let Some(r) = f.reason {
            attrs.push(KeyValue::new("portcullis.reason", r));
        }
        span.set_attributes(attrs);
        // Server spans: 5xx is an error of ours; a 4xx refusal is the proxy doing its job.
        if f.status >= 500 {
            span.set_status(Status::error(f.reason.unwrap_or("server error")));
        }
        span.end_with_timestamp(SystemTime::now());
    }
}

impl Exporter {
    /// Exports what is queued now (at shutdown, after the drain). The SDK's flush blocks until
    /// the batch processor is done, and the export itself runs on this runtime, so it waits on
    /// a blocking thread rather than on a worker the export needs.
    pub(crate) async fn flush(&self) {
        let provider = self.provider.clone();
        if let Ok(Err(e)) = tokio::task::spawn_blocking(move || provider.force_flush()).await {
            tracing::warn!(error = %e, "OTLP spans could not all be exported at shutdown");
        }
    }

    /// The export counters, for `/metrics`.
    pub(crate) fn write_metrics(&self, out: &mut portcullis_base::metrics::Exposition) {
        use portcullis_base::metrics::Kind;
        out.family(
            "portcullis_otlp_spans_exported_total",
            Kind::Counter,
            "Spans the OTLP collector accepted.",
        )
        .sample(&[], self.counts.exported.load(Ordering::Relaxed));
        out.family(
            "portcullis_otlp_spans_failed_total",
            Kind::Counter,
            "Spans dropped because their batch was not accepted (collector down, refused, timed out).",
        )
        .sample(&[], self.counts.failed.load(Ordering::Relaxed));
    }
}

impl Drop for Exporter {
    fn drop(&mut self) {
        // Flushes what is queued; bounded by the SDK's shutdown timeout.
        let _ = self.provider.shutdown();
    }
}
