//! OTLP export (cargo feature `otlp`): a request's span reaches a collector with the trace id
//! the client sent, and the audit record carries the same ids.
#![cfg(feature = "otlp")]

mod common;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use common::*;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::{TokioExecutor, TokioIo};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_spans_reach_the_collector_with_the_clients_trace_id() {
    let got: Arc<Mutex<Vec<String>>> = Arc::default();
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let collector = l.local_addr().unwrap();
    let sink = got.clone();
    tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = l.accept().await else {
                return;
            };
            let sink = sink.clone();
            tokio::spawn(async move {
                let svc =
                    hyper::service::service_fn(move |req: http::Request<hyper::body::Incoming>| {
                        let sink = sink.clone();
                        async move {
                            let path = req.uri().path().to_string();
                            let body = req.into_body().collect().await.unwrap().to_bytes();
                            sink.lock()
                                .unwrap()
                                .push(format!("{path} {}", String::from_utf8_lossy(&body)));
                            Ok::<_, std::convert::Infallible>(http::Response::new(Full::new(
                                Bytes::from_static(b"{}"),
                            )))
                        }
                    });
                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(tcp), svc)
                    .await;
            });
        }
    });
    let up = Upstream::start(Behaviour::Ok).await;
    let mut o = Options::new(up.addr);
    o.config.tracing = FileTracing {
        otlp_endpoint: Some(format!("http://{collector}/v1/traces")),
        service_name: Some("bank-edge".into()),
    };
    let p = Proxy::start(o).await;
    let trace = "4bf92f3577b34da6a3ce929d0e0e4736";
    let (a, id) = p
        .send(
            req("GET", "/open-banking/v3.1/aisp/accounts")
                .header("traceparent", format!("00-{trace}-00f067aa0ba902b7-01"))
                .body(Full::new(Bytes::new()))
                .unwrap(),
        )
        .await;
    assert_eq!(a.status, 200);
    let mut body = String::new();
    for _ in 0..40 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        if let Some(b) = got.lock().unwrap().first() {
            body = b.clone();
            break;
        }
    }
    assert!(body.starts_with("/v1/traces "), "{body}");
    assert!(
        body.contains(trace) && body.contains("accounts.list") && body.contains("bank-edge"),
        "{body}"
    );
    let rec = p.audit_of(&id).await;
    assert_eq!(rec["trace_id"], trace);
    assert!(body.contains(rec["span_id"].as_str().unwrap()), "{body}");
}
