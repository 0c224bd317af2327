//! OTLP trace export (cargo feature `otlp`): one server span per request, sent in batches as
//! OTLP/HTTP JSON (`POST {endpoint}`, e.g. `http://collector:4318/v1/traces`).
//!
//! The request path only builds a small span and `try_send`s it; a background task batches
//! (up to 512 spans or every second) and posts. A full queue or a collector that is down never
//! slows or fails a request: spans are dropped and counted. Span ids are the ones the audit
//! record and the upstream `traceparent` carry, so a trace joins the audit log.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http_body_util::Full;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use serde_json::{json, Value};
use tokio::sync::mpsc;

/// One finished request.
pub struct Span {
    pub trace_id: String,
    pub span_id: String,
    pub name: String,
    pub start: SystemTime,
    pub end: SystemTime,
    pub method: String,
    pub status: u16,
    pub decision: &'static str,
    pub reason: Option<&'static str>,
}

pub struct Exporter {
    tx: mpsc::Sender<Span>,
    pub dropped: AtomicU64,
    pub exported: std::sync::Arc<AtomicU64>,
}

fn nanos(t: SystemTime) -> String {
    t.duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos())
        .to_string()
}

fn attr(key: &str, v: Value) -> Value {
    let value = match v {
        Value::Number(n) => json!({"intValue": n.to_string()}),
        other => json!({"stringValue": other.as_str().unwrap_or_default()}),
    };
    json!({"key": key, "value": value})
}

fn encode(service: &str, spans: &[Span]) -> Value {
    let spans: Vec<Value> = spans
        .iter()
        .map(|s| {
            let mut attrs = vec![
                attr("http.request.method", json!(s.method)),
                attr("http.response.status_code", json!(s.status)),
                attr("portcullis.decision", json!(s.decision)),
            ];
            if let Some(r) = s.reason {
                attrs.push(attr("portcullis.reason", json!(r)));
            }
            json!({
                "traceId": s.trace_id, "spanId": s.span_id, "name": s.name, "kind": 2,
                "startTimeUnixNano": nanos(s.start), "endTimeUnixNano": nanos(s.end),
                "attributes": attrs,
                "status": {"code": if s.status >= 500 { 2 } else { 1 }},
            })
        })
        .collect();
    json!({"resourceSpans": [{
        "resource": {"attributes": [attr("service.name", json!(service))]},
        "scopeSpans": [{"scope": {"name": "portcullis"}, "spans": spans}],
    }]})
}

impl Exporter {
    /// Starts the export task (needs a Tokio runtime).
    pub fn start(endpoint: http::Uri, service: String) -> Exporter {
        let (tx, mut rx) = mpsc::channel::<Span>(8192);
        let exported = std::sync::Arc::new(AtomicU64::new(0));
        let done = std::sync::Arc::clone(&exported);
        tokio::spawn(async move {
            let client: Client<HttpConnector, Full<Bytes>> =
                Client::builder(TokioExecutor::new()).build_http();
            let mut batch = Vec::with_capacity(512);
            loop {
                let first = tokio::time::timeout(Duration::from_secs(1), rx.recv()).await;
                match first {
                    Ok(Some(s)) => batch.push(s),
                    Ok(None) => break,
                    Err(_) => {}
                }
                while batch.len() < 512 {
                    match rx.try_recv() {
                        Ok(s) => batch.push(s),
                        Err(_) => break,
                    }
                }
                if batch.is_empty() {
                    continue;
                }
                let body = encode(&service, &batch).to_string();
                let n = batch.len() as u64;
                batch.clear();
                let req = http::Request::post(endpoint.clone())
                    .header(http::header::CONTENT_TYPE, "application/json")
                    .body(Full::new(Bytes::from(body)));
                let Ok(req) = req else { continue };
                match tokio::time::timeout(Duration::from_secs(5), client.request(req)).await {
                    Ok(Ok(r)) if r.status().is_success() => {
                        done.fetch_add(n, Ordering::Relaxed);
                    }
                    _ => tracing::debug!(spans = n, "OTLP export failed; spans dropped"),
                }
            }
        });
        Exporter {
            tx,
            dropped: AtomicU64::new(0),
            exported,
        }
    }

    /// Hands a span to the export task without waiting.
    pub fn record(&self, span: Span) {
        if self.tx.try_send(span).is_err() {
            self.dropped.fetch_add(1, Ordering::Relaxed);
        }
    }
}
