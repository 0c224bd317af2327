//! OTLP export with the OpenTelemetry SDK (cargo feature `otlp`), against a collector on
//! loopback that decodes the OTLP/HTTP protobuf it receives: the proxy's server span is a child
//! of the client's `traceparent`, its id is the parent id the upstream receives and the span id
//! of the audit record, the sampled flag sent upstream says exactly whether the span is
//! exported, the `OTEL_*` variables configure the real process, and a collector that is down
//! costs requests nothing.
#![cfg(feature = "otlp")]

mod common;

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::*;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::{TokioExecutor, TokioIo};
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::any_value::Value;
use opentelemetry_proto::tonic::common::v1::KeyValue;
use opentelemetry_proto::tonic::trace::v1::span::SpanKind;
use prost::Message;

/// One span as the collector decoded it, with what came with it.
#[derive(Clone, Debug)]
struct Got {
    path: String,
    content_type: String,
    resource: Vec<KeyValue>,
    span: opentelemetry_proto::tonic::trace::v1::Span,
}

impl Got {
    fn trace_id(&self) -> String {
        hex(&self.span.trace_id)
    }
    fn attr(&self, key: &str) -> Option<Value> {
        find(&self.span.attributes, key)
    }
    fn resource_attr(&self, key: &str) -> Option<Value> {
        find(&self.resource, key)
    }
}

fn find(attrs: &[KeyValue], key: &str) -> Option<Value> {
    attrs
        .iter()
        .find(|kv| kv.key == key)
        .and_then(|kv| kv.value.clone())
        .and_then(|v| v.value)
}

fn s(v: &str) -> Option<Value> {
    Some(Value::StringValue(v.into()))
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// A collector on loopback: decodes every `ExportTraceServiceRequest` and keeps its spans.
struct Collector {
    addr: SocketAddr,
    got: Arc<Mutex<Vec<Got>>>,
}

impl Collector {
    async fn start() -> Collector {
        let got: Arc<Mutex<Vec<Got>>> = Arc::default();
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let sink = got.clone();
        tokio::spawn(async move {
            loop {
                let Ok((tcp, _)) = l.accept().await else {
                    return;
                };
                let sink = sink.clone();
                tokio::spawn(async move {
                    let svc = hyper::service::service_fn(
                        move |req: http::Request<hyper::body::Incoming>| {
                            let sink = sink.clone();
                            async move {
                                let path = req.uri().path().to_string();
                                let content_type = req
                                    .headers()
                                    .get("content-type")
                                    .and_then(|v| v.to_str().ok())
                                    .unwrap_or_default()
                                    .to_string();
                                let body = req.into_body().collect().await.unwrap().to_bytes();
                                let decoded = ExportTraceServiceRequest::decode(body)
                                    .expect("the body is an OTLP ExportTraceServiceRequest");
                                let mut sink = sink.lock().unwrap();
                                for rs in decoded.resource_spans {
                                    let resource =
                                        rs.resource.map(|r| r.attributes).unwrap_or_default();
                                    for ss in rs.scope_spans {
                                        for span in ss.spans {
                                            sink.push(Got {
                                                path: path.clone(),
                                                content_type: content_type.clone(),
                                                resource: resource.clone(),
                                                span,
                                            });
                                        }
                                    }
                                }
                                Ok::<_, std::convert::Infallible>(http::Response::new(Full::new(
                                    Bytes::new(),
                                )))
                            }
                        },
                    );
                    let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(tcp), svc)
                        .await;
                });
            }
        });
        Collector { addr, got }
    }

    fn spans(&self) -> Vec<Got> {
        self.got.lock().unwrap().clone()
    }

    /// Waits (up to 15 s: the batch processor exports every 5 s) for the span of `trace`.
    async fn span_of(&self, trace: &str) -> Got {
        let t0 = Instant::now();
        loop {
            if let Some(g) = self.spans().into_iter().find(|g| g.trace_id() == trace) {
                return g;
            }
            assert!(
                t0.elapsed() < Duration::from_secs(15),
                "no span of trace {trace}; got {:?}",
                self.spans()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

/// The `traceparent` the upstream received on request number `n`: trace id, parent id, flags.
fn upstream_traceparent(up: &Upstream, n: usize) -> (String, String, String) {
    let seen = up.seen();
    let tp = seen[n].headers["traceparent"].to_str().unwrap().to_string();
    let parts: Vec<&str> = tp.split('-').collect();
    assert_eq!(parts.len(), 4, "{tp}");
    assert_eq!(parts[0], "00", "{tp}");
    (parts[1].into(), parts[2].into(), parts[3].into())
}

fn traced(path: &str, traceparent: Option<&str>) -> http::Request<Full<Bytes>> {
    let mut r = req("GET", path);
    if let Some(tp) = traceparent {
        r = r.header("traceparent", tp).header("tracestate", "bank=7");
    }
    r.body(Full::new(Bytes::new())).unwrap()
}

const ACCOUNTS: &str = "/open-banking/v3.1/aisp/accounts";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_span_is_a_child_of_the_callers_and_the_sampled_flag_says_whether_it_is_exported() {
    let collector = Collector::start().await;
    let up = Upstream::start(Behaviour::Ok).await;
    let mut o = Options::new(up.addr);
    o.config.tracing = FileTracing {
        otlp_endpoint: Some(format!("http://{}/v1/traces", collector.addr)),
        service_name: Some("bank-edge".into()),
        // Only a caller's sampled flag gets a trace exported: roots are never sampled.
        sample_ratio: Some(0.0),
    };
    let p = Proxy::start(o).await;

    // Not sampled by the caller, ratio 0: nothing exported, and the upstream is told so.
    let unsampled = "0af7651916cd43dd8448eb211c80319c";
    let (a, unsampled_id) = p
        .send(traced(
            ACCOUNTS,
            Some(&format!("00-{unsampled}-b7ad6b7169203331-00")),
        ))
        .await;
    assert_eq!(a.status, 200);
    let (t, parent, flags) = upstream_traceparent(&up, 0);
    assert_eq!((t.as_str(), flags.as_str()), (unsampled, "00"));
    assert_ne!(
        parent, "b7ad6b7169203331",
        "the proxy's span is the upstream's parent"
    );
    let rec = p.audit_of(&unsampled_id).await;
    assert_eq!(
        (rec["trace_id"].as_str(), rec["span_id"].as_str()),
        (Some(unsampled), Some(parent.as_str()))
    );

    // No traceparent at all, ratio 0: a new root trace, not sampled, not exported.
    let (a, root_id) = p.send(traced(ACCOUNTS, None)).await;
    assert_eq!(a.status, 200);
    let (root_trace, _, flags) = upstream_traceparent(&up, 1);
    assert_eq!(flags, "00");
    assert!(
        up.seen()[1].headers.get("tracestate").is_none(),
        "no trace was continued, so no tracestate travels"
    );
    let rec = p.audit_of(&root_id).await;
    assert_eq!(rec["trace_id"].as_str(), Some(root_trace.as_str()));

    // Sampled by the caller: exported as a child of the caller's span.
    let trace = "4bf92f3577b34da6a3ce929d0e0e4736";
    let (a, id) = p
        .send(traced(
            ACCOUNTS,
            Some(&format!("00-{trace}-00f067aa0ba902b7-01")),
        ))
        .await;
    assert_eq!(a.status, 200);
    let (t, our_span, flags) = upstream_traceparent(&up, 2);
    assert_eq!((t.as_str(), flags.as_str()), (trace, "01"));
    assert_eq!(
        up.seen()[2].headers["tracestate"],
        "bank=7",
        "the caller's tracestate travels on"
    );
    let got = collector.span_of(trace).await;
    assert_eq!(got.path, "/v1/traces");
    assert_eq!(got.content_type, "application/x-protobuf");
    assert_eq!(hex(&got.span.parent_span_id), "00f067aa0ba902b7");
    assert_eq!(hex(&got.span.span_id), our_span);
    assert_eq!(got.span.kind, SpanKind::Server as i32);
    assert_eq!(got.span.name, "GET accounts.list");
    assert_eq!(got.span.trace_state, "bank=7");
    assert!(got.span.end_time_unix_nano >= got.span.start_time_unix_nano);
    assert_eq!(got.resource_attr("service.name"), s("bank-edge"));
    assert_eq!(got.attr("http.request.method"), s("GET"));
    assert_eq!(
        got.attr("http.response.status_code"),
        Some(Value::IntValue(200))
    );
    assert_eq!(got.attr("portcullis.route"), s("accounts.list"));
    assert_eq!(got.attr("portcullis.decision"), s("allow"));
    assert_eq!(got.attr("portcullis.reason"), None);
    let rec = p.audit_of(&id).await;
    assert_eq!(rec["trace_id"], trace);
    assert_eq!(rec["span_id"].as_str(), Some(our_span.as_str()));

    // A refusal, sampled: exported with its status, decision and reason; the upstream got
    // nothing.
    let refused = "5bf92f3577b34da6a3ce929d0e0e4737";
    let (a, refused_id) = p
        .send(traced(
            "/nope",
            Some(&format!("00-{refused}-10f067aa0ba902b7-01")),
        ))
        .await;
    assert_eq!(a.status, 404);
    assert_eq!(
        up.count(),
        3,
        "the refused request never reached the upstream"
    );
    let got = collector.span_of(refused).await;
    let rec = p.audit_of(&refused_id).await;
    assert_eq!(rec["reason"], "route.not_found");
    assert_eq!(hex(&got.span.span_id), rec["span_id"].as_str().unwrap());
    assert_eq!(hex(&got.span.parent_span_id), "10f067aa0ba902b7");
    assert_eq!(
        got.attr("http.response.status_code"),
        Some(Value::IntValue(404))
    );
    assert_eq!(
        got.attr("portcullis.decision"),
        s(rec["decision"].as_str().unwrap())
    );
    assert_eq!(got.attr("portcullis.reason"), s("route.not_found"));
    assert_eq!(got.attr("portcullis.route"), s("unrouted"));

    // The batches that carried the sampled spans came after the unsampled requests: had those
    // been exported, they would be here by now.
    let traces: Vec<String> = collector.spans().iter().map(Got::trace_id).collect();
    assert!(!traces.contains(&unsampled.to_string()), "{traces:?}");
    assert!(!traces.contains(&root_trace), "{traces:?}");
    assert_eq!(traces.len(), 2, "{traces:?}");
    assert_eq!(
        metric_reaches(&p, "portcullis_otlp_spans_exported_total", 2).await,
        2
    );
    assert_eq!(metric(&p, "portcullis_otlp_spans_failed_total").await, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_collector_that_is_down_costs_requests_nothing() {
    let dead = Upstream::dead_addr().await;
    let up = Upstream::start(Behaviour::Ok).await;
    let mut o = Options::new(up.addr);
    o.config.tracing = FileTracing {
        otlp_endpoint: Some(format!("http://{dead}/v1/traces")),
        ..FileTracing::default()
    };
    let p = Proxy::start(o).await;
    let t0 = Instant::now();
    for i in 0..20 {
        let tp = format!("00-4bf92f3577b34da6a3ce929d0e0e47{i:02x}-00f067aa0ba902b7-01");
        let (a, id) = p.send(traced(ACCOUNTS, Some(&tp))).await;
        assert_eq!(a.status, 200);
        let rec = p.audit_of(&id).await;
        assert_eq!(rec["decision"], "allow");
    }
    assert_eq!(up.count(), 20);
    // Sampled (ratio 1.0 by default): the upstream is told so, whether or not export succeeds.
    assert_eq!(upstream_traceparent(&up, 19).2, "01");
    assert!(
        t0.elapsed() < Duration::from_secs(10),
        "requests waited on the collector: {:?}",
        t0.elapsed()
    );
    // The lost spans are counted once the batch processor has tried (every 5 s).
    assert_eq!(
        metric_reaches(&p, "portcullis_otlp_spans_failed_total", 20).await,
        20
    );
    assert_eq!(metric(&p, "portcullis_otlp_spans_exported_total").await, 0);
}

/// A counter's value on `/metrics`.
async fn metric(p: &Proxy, name: &str) -> u64 {
    let (status, body) = p.admin_get("/metrics").await;
    assert_eq!(status, 200);
    body.lines()
        .find_map(|l| l.strip_prefix(&format!("{name} ")))
        .unwrap_or_else(|| panic!("no {name} in {body}"))
        .parse()
        .unwrap()
}

/// Waits (up to 15 s) until counter `name` is at least `n`; its value then.
async fn metric_reaches(p: &Proxy, name: &str, n: u64) -> u64 {
    let t0 = Instant::now();
    loop {
        let v = metric(p, name).await;
        if v >= n || t0.elapsed() > Duration::from_secs(15) {
            return v;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// `r` on a new TLS connection as TPP One to the process at `addr`, with a fresh interaction
/// id: the status and that id.
async fn get_from(addr: SocketAddr, r: http::Request<Full<Bytes>>) -> Option<(u16, String)> {
    let id = uuid::Uuid::new_v4().to_string();
    let (mut parts, body) = r.into_parts();
    parts
        .headers
        .insert("x-fapi-interaction-id", id.parse().unwrap());
    let a = send_fresh(addr, http::Request::from_parts(parts, body)).await?;
    Some((a.status.as_u16(), id))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_real_process_takes_its_exporter_sampler_and_resource_from_otel_variables() {
    let collector = Collector::start().await;
    let up = Upstream::start(Behaviour::Ok).await;
    let addr = free_addr();
    let mut o = Options::new(up.addr);
    o.config.listener.address = addr.to_string();
    o.config.admin = None;
    // No `tracing:` in the file: everything comes from the environment.
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("policies")).unwrap();
    std::fs::write(dir.path().join("policies/test.yaml"), &o.policy).unwrap();
    let config = dir.path().join("portcullis.yaml");
    std::fs::write(&config, o.config_text()).unwrap();
    let mut child = ChildGuard(
        std::process::Command::new(env!("CARGO_BIN_EXE_portcullis"))
            .args(["run", "--config"])
            .arg(&config)
            .current_dir(dir.path())
            .env_remove("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
            // The SDK appends /v1/traces to the generic endpoint.
            .env(
                "OTEL_EXPORTER_OTLP_ENDPOINT",
                format!("http://{}", collector.addr),
            )
            .env("OTEL_SERVICE_NAME", "edge-from-env")
            .env("OTEL_RESOURCE_ATTRIBUTES", "deployment.environment=test")
            .env("OTEL_TRACES_SAMPLER", "parentbased_traceidratio")
            .env("OTEL_TRACES_SAMPLER_ARG", "0")
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap(),
    );
    let unsampled = "0af7651916cd43dd8448eb211c80319c";
    let t0 = Instant::now();
    let first = loop {
        let r = traced(
            ACCOUNTS,
            Some(&format!("00-{unsampled}-b7ad6b7169203331-00")),
        );
        if let Some(answer) = get_from(addr, r).await {
            break answer;
        }
        assert!(t0.elapsed() < Duration::from_secs(20), "never served");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(first.0, 200);
    assert_eq!(upstream_traceparent(&up, 0).2, "00");

    let trace = "4bf92f3577b34da6a3ce929d0e0e4736";
    let (status, id) = get_from(
        addr,
        traced(ACCOUNTS, Some(&format!("00-{trace}-00f067aa0ba902b7-01"))),
    )
    .await
    .expect("served");
    assert_eq!(status, 200);
    let (t, our_span, flags) = upstream_traceparent(&up, 1);
    assert_eq!((t.as_str(), flags.as_str()), (trace, "01"));

    let got = collector.span_of(trace).await;
    assert_eq!(got.path, "/v1/traces");
    assert_eq!(hex(&got.span.parent_span_id), "00f067aa0ba902b7");
    assert_eq!(hex(&got.span.span_id), our_span);
    assert_eq!(got.resource_attr("service.name"), s("edge-from-env"));
    assert_eq!(got.resource_attr("deployment.environment"), s("test"));

    // The audit record (written by the process) carries the exported ids.
    let t0 = Instant::now();
    let rec = loop {
        let text = std::fs::read_to_string(dir.path().join("audit.log")).unwrap_or_default();
        let found = text
            .lines()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .find(|r| r["interaction_id"] == id.as_str());
        if let Some(r) = found {
            break r;
        }
        assert!(t0.elapsed() < Duration::from_secs(10), "no audit record");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(rec["trace_id"], trace);
    assert_eq!(rec["span_id"].as_str(), Some(our_span.as_str()));
    let traces: Vec<String> = collector.spans().iter().map(Got::trace_id).collect();
    assert!(!traces.contains(&unsampled.to_string()), "{traces:?}");

    // A span still queued when SIGTERM comes is exported before the process exits (the batch
    // processor alone would wait up to 5 s, and the process is gone by then).
    let last = "6bf92f3577b34da6a3ce929d0e0e4738";
    let (status, _) = get_from(
        addr,
        traced(ACCOUNTS, Some(&format!("00-{last}-00f067aa0ba902b7-01"))),
    )
    .await
    .expect("served");
    assert_eq!(status, 200);
    let term = Instant::now();
    let killed = std::process::Command::new("kill")
        .args(["-TERM", &child.0.id().to_string()])
        .status()
        .unwrap();
    assert!(killed.success());
    let exit = tokio::task::spawn_blocking(move || {
        let code = child.0.wait().unwrap();
        (code, child)
    })
    .await
    .unwrap()
    .0;
    assert!(exit.success(), "{exit:?}");
    assert!(
        collector.spans().iter().any(|g| g.trace_id() == last),
        "the last span was lost at shutdown ({:?} after SIGTERM)",
        term.elapsed()
    );
}

#[test]
fn bad_tracing_settings_are_refused_at_load_by_file_field_and_reason() {
    let up: SocketAddr = "127.0.0.1:9".parse().unwrap();
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("policies")).unwrap();
    std::fs::write(dir.path().join("policies/test.yaml"), POLICY).unwrap();
    let write = |name: &str, tracing: FileTracing| {
        let mut o = Options::new(up);
        o.config.tracing = tracing;
        let path = dir.path().join(name);
        std::fs::write(&path, o.config_text()).unwrap();
        path
    };
    let check = |path: &std::path::Path, env: Option<&str>| {
        let mut c = std::process::Command::new(env!("CARGO_BIN_EXE_portcullis"));
        c.args(["check", "--config"])
            .arg(path)
            .env_remove("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
            .env_remove("OTEL_EXPORTER_OTLP_ENDPOINT");
        if let Some(e) = env {
            c.env("OTEL_EXPORTER_OTLP_ENDPOINT", e);
        }
        let out = c.output().unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stderr).to_string(),
        )
    };

    let ratio = write(
        "ratio.yaml",
        FileTracing {
            otlp_endpoint: Some("http://127.0.0.1:4318/v1/traces".into()),
            sample_ratio: Some(1.5),
            ..FileTracing::default()
        },
    );
    let (code, err) = check(&ratio, None);
    assert_eq!(code, Some(1), "{err}");
    assert!(
        err.contains("ratio.yaml")
            && err.contains("tracing.sample_ratio")
            && err.contains("between 0.0 and 1.0"),
        "{err}"
    );

    let scheme = write(
        "scheme.yaml",
        FileTracing {
            otlp_endpoint: Some("ftp://collector/v1/traces".into()),
            ..FileTracing::default()
        },
    );
    let (code, err) = check(&scheme, None);
    assert_eq!(code, Some(1), "{err}");
    assert!(
        err.contains("scheme.yaml")
            && err.contains("tracing.otlp_endpoint")
            && err.contains("http:// or https://"),
        "{err}"
    );

    // An endpoint from the environment is checked as strictly, and named.
    let plain = write("plain.yaml", FileTracing::default());
    let (code, err) = check(&plain, Some("collector:4318"));
    assert_eq!(code, Some(1), "{err}");
    assert!(
        err.contains("OTEL_EXPORTER_OTLP_ENDPOINT (environment)")
            && err.contains("`collector:4318`"),
        "{err}"
    );
    let (code, err) = check(&plain, Some("http://127.0.0.1:4318"));
    assert_eq!(code, Some(0), "{err}");
}
