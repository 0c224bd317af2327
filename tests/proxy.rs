//! End-to-end behaviour of the core proxy: real TLS clients, a recording upstream, the audit log.

mod common;

use std::time::Duration;

use base64::Engine;
use bytes::Bytes;
use common::*;
use http_body_util::Full;

fn empty() -> Full<Bytes> {
    Full::new(Bytes::new())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_mtls_request_reaches_the_upstream_with_only_vouched_identity_headers() {
    let up = Upstream::start(Behaviour::Ok).await;
    let p = Proxy::start(Options::new(up.addr)).await;
    let r = req(
        "GET",
        "/open-banking/v3.1/aisp/accounts/acc-1?fromBookingDateTime=2026-01-01",
    )
    .header("x-forwarded-for", "6.6.6.6")
    .header("forwarded", "for=6.6.6.6")
    .header("x-real-ip", "6.6.6.6")
    .header("client-cert", ":Zm9yZ2Vk:")
    .header("x-forwarded-client-cert", "Hash=forged")
    .header("x-envoy-original-path", "/admin")
    .header("connection", "keep-alive")
    .header("x-fapi-customer-ip-address", "203.0.113.7")
    .body(empty())
    .unwrap();
    let (a, id) = p.send(r).await;
    assert_eq!(a.status, 200);
    assert_eq!(a.headers["x-fapi-interaction-id"], id.as_str());
    assert!(a.headers.contains_key("date"));
    assert!(
        !a.headers.contains_key("x-upstream-secret"),
        "hop-by-hop from upstream removed"
    );

    let seen = up.seen();
    assert_eq!(seen.len(), 1);
    let s = &seen[0];
    assert_eq!(
        s.path_and_query,
        "/open-banking/v3.1/aisp/accounts/acc-1?fromBookingDateTime=2026-01-01"
    );
    assert_eq!(s.headers.get_all("x-forwarded-for").iter().count(), 1);
    assert_eq!(s.headers["x-forwarded-for"], "127.0.0.1");
    assert_eq!(s.headers["x-forwarded-proto"], "https");
    assert_eq!(s.headers["x-fapi-interaction-id"], id.as_str());
    assert_eq!(s.headers["x-fapi-customer-ip-address"], "203.0.113.7");
    for gone in [
        "forwarded",
        "x-real-ip",
        "x-forwarded-client-cert",
        "x-envoy-original-path",
        "connection",
    ] {
        assert!(!s.headers.contains_key(gone), "{gone} reached the upstream");
    }
    let der = rustls_pki_types::CertificateDer::from_pem_file(certs().join("tpp1.pem"));
    use rustls_pki_types::pem::PemObject;
    let der = der.unwrap();
    let want = format!(
        ":{}:",
        base64::engine::general_purpose::STANDARD.encode(der.as_ref())
    );
    assert_eq!(s.headers["client-cert"], want.as_str());

    let rec = p.audit_of(&id).await;
    assert_eq!(rec["kind"], "request");
    assert_eq!(rec["decision"], "allow");
    assert_eq!(rec["status"], 200);
    assert_eq!(rec["upstream_status"], 200);
    assert_eq!(rec["route_id"], "accounts.get");
    assert_eq!(rec["client_org_id"], "PSDGB-FCA-123456");
    assert_eq!(
        rec["client_cert_thumbprint"],
        portcullis_crypto::pki::thumbprint_s256(der.as_ref())
    );
    assert_eq!(rec["path"], "/open-banking/v3.1/aisp/accounts/acc-1");
    assert_eq!(rec["has_query"], true);
    assert!(
        !rec.to_string().contains("fromBookingDateTime"),
        "query values stay out of the audit log"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http2_requests_are_proxied_and_refused_the_same_way() {
    let up = Upstream::start(Behaviour::Ok).await;
    let p = Proxy::start(Options::new(up.addr)).await;
    let mut c = p.client(Some("tpp1"), true).await.unwrap();
    let ok = c
        .send(
            http::Request::get("https://localhost/open-banking/v3.1/aisp/accounts")
                .body(empty())
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(ok.status, 200);
    assert_eq!(up.count(), 1);
    let bad = c
        .send(
            http::Request::get("https://localhost/open-banking/v3.1/aisp/accounts/a%2Fb")
                .body(empty())
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(bad.status, 400);
    assert_eq!(bad.json()["reason"], "path.encoded_separator");
    let big = c
        .send(
            http::Request::post(
                "https://localhost/open-banking/v3.1/pisp/domestic-payment-consents",
            )
            .body(Full::new(Bytes::from(vec![b'x'; 5000])))
            .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(big.status, 413);
    assert_eq!(big.json()["reason"], "http.body_too_large");
    assert!(!big.headers.contains_key("connection"));
    assert_eq!(up.count(), 1);
    // The connection is still usable after refusals.
    let ok = c
        .send(
            http::Request::get("https://localhost/open-banking/v3.1/aisp/accounts")
                .body(empty())
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(ok.status, 200);
}

async fn handshake_refused(identity: Option<&str>, failure: &str) {
    let up = Upstream::start(Behaviour::Ok).await;
    let p = Proxy::start(Options::new(up.addr)).await;
    // With TLS 1.3 the client's connect() may succeed; the refusal shows on first use.
    let outcome = match p.client(identity, false).await {
        Err(_) => true,
        Ok(mut c) => c
            .send(
                req("GET", "/open-banking/v3.1/aisp/accounts")
                    .body(empty())
                    .unwrap(),
            )
            .await
            .is_err(),
    };
    assert!(outcome, "handshake with {identity:?} must fail");
    assert_eq!(up.count(), 0);
    let recs = p.audit_where(1, |r| r["kind"] == "tls_handshake").await;
    assert_eq!(recs.len(), 1, "{recs:?}");
    assert_eq!(recs[0]["failure"], failure);
    let (_, metrics) = p.admin_get("/metrics").await;
    assert!(
        metrics.contains(&format!(
            "portcullis_tls_handshake_failures_total{{failure=\"{failure}\"}} 1"
        )),
        "{metrics}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_without_a_certificate_is_refused_in_the_handshake() {
    handshake_refused(None, "no_client_cert").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_certificate_from_an_unknown_ca_is_refused() {
    handshake_refused(Some("rogue"), "unknown_ca").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expired_certificate_is_refused() {
    handshake_refused(Some("expired"), "cert_expired").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revoked_certificate_is_refused_through_the_crl() {
    handshake_refused(Some("revoked"), "cert_revoked").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_optional_mtls_a_route_that_needs_a_certificate_answers_401() {
    let up = Upstream::start(Behaviour::Ok).await;
    let mut o = Options::new(up.addr);
    o.config.listener.tls.client_auth = Some("optional".into());
    let p = Proxy::start(o).await;
    let mut c = p.client(None, false).await.unwrap();
    let id = uuid::Uuid::new_v4().to_string();
    let a = c
        .send(
            req("GET", "/open-banking/v3.1/aisp/accounts")
                .header("x-fapi-interaction-id", &id)
                .body(empty())
                .unwrap(),
        )
        .await
        .unwrap();
    assert_refused(&p, &up, &a, &id, 401, "identity.client_cert_required").await;
    let open = c
        .send(req("GET", "/status").body(empty()).unwrap())
        .await
        .unwrap();
    assert_eq!(open.status, 200);
    assert_eq!(up.count(), 1);
    assert!(!up.seen()[0].headers.contains_key("client-cert"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_paths_are_404_and_other_methods_405_with_allow() {
    let up = Upstream::start(Behaviour::Ok).await;
    let p = Proxy::start(Options::new(up.addr)).await;
    let (a, id) = p.get("/admin").await;
    assert_refused(&p, &up, &a, &id, 404, "route.not_found").await;
    let (a, id) = p
        .send(
            req("DELETE", "/open-banking/v3.1/aisp/accounts")
                .body(empty())
                .unwrap(),
        )
        .await;
    assert_refused(&p, &up, &a, &id, 405, "route.method_not_allowed").await;
    assert_eq!(a.headers["allow"], "GET");
    let (a, id) = p
        .send(
            req("TRACE", "/open-banking/v3.1/aisp/accounts")
                .body(empty())
                .unwrap(),
        )
        .await;
    assert_refused(&p, &up, &a, &id, 405, "route.method_not_allowed").await;
    let (a, id) = p
        .send(
            req("get", "/open-banking/v3.1/aisp/accounts")
                .body(empty())
                .unwrap(),
        )
        .await;
    assert_refused(&p, &up, &a, &id, 405, "route.method_not_allowed").await;
    let (a, id) = p.get("/Open-Banking/v3.1/aisp/accounts").await;
    assert_refused(&p, &up, &a, &id, 404, "route.not_found").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_path_normalization_table_is_refused_before_routing() {
    let up = Upstream::start(Behaviour::Ok).await;
    let p = Proxy::start(Options::new(up.addr)).await;
    let base = "/open-banking/v3.1/aisp/accounts";
    let table = [
        (format!("{base}/acc-1/../../../admin"), "path.dot_segment"),
        (format!("{base}/./acc-1"), "path.dot_segment"),
        (format!("{base}/%2e%2e/x"), "path.encoded_dot"),
        (format!("{base}/acc-1%2Facc-2"), "path.encoded_separator"),
        (format!("{base}/acc-1%5cacc-2"), "path.encoded_separator"),
        (format!("{base}/%252e%252e"), "path.double_encoding"),
        (format!("{base}//acc-1"), "path.empty_segment"),
        (format!("{base}/"), "path.empty_segment"),
        (format!("/{base}"), "path.empty_segment"),
        (format!("{base}/acc%00"), "path.control_char"),
        (format!("{base}/%c0%ae"), "path.non_ascii"),
        (format!("{base}/%61cc-1"), "path.needless_encoding"),
        (format!("{base}/acc%zz"), "path.bad_escape"),
        (format!("{base}?a=%00"), "path.control_char"),
    ];
    for (path, reason) in table {
        let (a, id) = p.get(&path).await;
        assert_eq!(a.json()["reason"], reason, "{path}");
        assert_refused(&p, &up, &a, &id, 400, reason).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn raw_targets_hyper_would_not_build_are_refused_on_the_wire() {
    let up = Upstream::start(Behaviour::Ok).await;
    let p = Proxy::start(Options::new(up.addr)).await;
    let base = "/open-banking/v3.1/aisp/accounts";
    // Backslash, absolute-form with another authority, a fragment.
    for (target, reason) in [
        (format!("{base}/acc-1\\..\\x"), Some("path.backslash")),
        (
            format!("http://internal.example{base}"),
            Some("path.not_origin_form"),
        ),
        (format!("{base}/acc-1#/../../admin"), None),
    ] {
        let raw = format!("GET {target} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n");
        let out = p.raw(raw.as_bytes(), Duration::from_secs(2)).await;
        let status = out.split(' ').nth(1).unwrap_or("");
        match reason {
            Some(r) => {
                assert_eq!(status, "400", "{target}: {out}");
                assert!(out.contains(r), "{target}: {out}");
            }
            // hyper's URI parser drops a fragment before any handler sees it, so the request
            // is the fragment-less path: exactly what is matched is what is forwarded.
            None => assert!(status == "400" || status == "200", "{target}: {out}"),
        }
    }
    let forwarded: Vec<String> = up.seen().iter().map(|s| s.path_and_query.clone()).collect();
    assert!(
        forwarded.iter().all(|p| p == &format!("{base}/acc-1")),
        "{forwarded:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn header_and_uri_limits_answer_431_and_414() {
    let up = Upstream::start(Behaviour::Ok).await;
    let mut o = Options::new(up.addr);
    let limits = &mut o.config.listener.limits;
    limits.max_headers = Some(20);
    limits.max_header_bytes = Some(4096);
    limits.max_uri_bytes = Some(1024);
    let p = Proxy::start(o).await;
    let mut many = req("GET", "/open-banking/v3.1/aisp/accounts");
    for i in 0..25 {
        many = many.header(format!("x-h{i}"), "v");
    }
    let (a, id) = p.send(many.body(empty()).unwrap()).await;
    assert_refused(&p, &up, &a, &id, 431, "http.too_many_headers").await;
    let big = req("GET", "/open-banking/v3.1/aisp/accounts").header("x-big", "v".repeat(5000));
    let (a, id) = p.send(big.body(empty()).unwrap()).await;
    assert_refused(&p, &up, &a, &id, 431, "http.headers_too_large").await;
    let (a, id) = p
        .get(&format!(
            "/open-banking/v3.1/aisp/accounts/{}",
            "a".repeat(2000)
        ))
        .await;
    assert_refused(&p, &up, &a, &id, 414, "http.uri_too_long").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bodies_over_the_route_limit_are_413_before_anything_is_forwarded() {
    let up = Upstream::start(Behaviour::Ok).await;
    let p = Proxy::start(Options::new(up.addr)).await;
    let path = "/open-banking/v3.1/pisp/domestic-payment-consents";
    let (a, id) = p
        .send(
            req("POST", path)
                .body(Full::new(Bytes::from(vec![b'x'; 2000])))
                .unwrap(),
        )
        .await;
    assert_refused(&p, &up, &a, &id, 413, "http.body_too_large").await;
    // Chunked (no Content-Length): buffered up to the limit, then refused.
    let id = uuid::Uuid::new_v4().to_string();
    let mut raw = format!(
        "POST {path} HTTP/1.1\r\nHost: localhost\r\nx-fapi-interaction-id: {id}\r\nTransfer-Encoding: chunked\r\n\r\n"
    );
    for _ in 0..3 {
        raw += &format!("200\r\n{}\r\n", "y".repeat(0x200));
    }
    raw += "0\r\n\r\n";
    let out = p.raw(raw.as_bytes(), Duration::from_secs(2)).await;
    assert!(out.starts_with("HTTP/1.1 413"), "{out}");
    assert!(out.contains("http.body_too_large"));
    assert_eq!(up.count(), 0);
    assert_eq!(p.audit_of(&id).await["reason"], "http.body_too_large");
    // Within the limit, chunked or not, the body arrives intact.
    let body = r#"{"Data":{"Initiation":{"InstructedAmount":{"Amount":"10.50"}}}}"#;
    let (a, _) = p
        .send(
            req("POST", path)
                .body(Full::new(Bytes::from(body)))
                .unwrap(),
        )
        .await;
    assert_eq!(a.status, 200);
    let raw = format!("POST {path} HTTP/1.1\r\nHost: localhost\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n{:x}\r\n{body}\r\n0\r\n\r\n", body.len());
    let out = p.raw(raw.as_bytes(), Duration::from_secs(2)).await;
    assert!(out.starts_with("HTTP/1.1 200"), "{out}");
    let seen = up.seen();
    assert_eq!(seen.len(), 2);
    assert!(seen.iter().all(|s| s.body == body.as_bytes()));
}

/// The proxy answers before the client has finished sending (a header block over hyper's
/// buffer, a body over the limit) and closes: with a lingering close the client still reads the
/// answer, instead of a reset that can destroy it in its receive queue (`src/linger.rs`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_answer_given_while_the_client_is_still_sending_reaches_it() {
    let up = Upstream::start(Behaviour::Ok).await;
    let p = Proxy::start(Options::new(up.addr)).await;
    let mut seen = Vec::new();
    for _ in 0..10 {
        let big =
            req("GET", "/open-banking/v3.1/aisp/accounts").header("x-big", "v".repeat(1 << 20));
        let mut c = p.client(Some("tpp1"), false).await.expect("connect");
        seen.push(
            c.send(big.body(empty()).unwrap())
                .await
                .map(|a| a.status.as_u16())
                .map_err(|e| e.to_string()),
        );
        let body = req("POST", "/open-banking/v3.1/pisp/domestic-payment-consents")
            .body(Full::new(Bytes::from(vec![b'x'; 4 << 20])))
            .unwrap();
        let mut c = p.client(Some("tpp1"), false).await.expect("connect");
        seen.push(
            c.send(body)
                .await
                .map(|a| a.status.as_u16())
                .map_err(|e| e.to_string()),
        );
    }
    let want: Vec<Result<u16, String>> = (0..10).flat_map(|_| [Ok(431), Ok(413)]).collect();
    assert_eq!(seen, want);
    assert_eq!(up.count(), 0);
    let recs = p
        .audit_where(20, |r| {
            r["kind"] == "http_error" || r["reason"] == "http.body_too_large"
        })
        .await;
    assert_eq!(recs.len(), 20, "{recs:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn smuggling_framing_is_refused_and_nothing_extra_reaches_the_upstream() {
    let up = Upstream::start(Behaviour::Ok).await;
    let p = Proxy::start(Options::new(up.addr)).await;
    let path = "/open-banking/v3.1/pisp/domestic-payment-consents";
    let smuggle = "GET /open-banking/v3.1/aisp/accounts HTTP/1.1\r\nHost: localhost\r\n\r\n";
    // CL.TE with a smuggled request after the zero chunk. hyper applies RFC 9112 §6.3: the
    // chunked coding wins, Content-Length is discarded, and the connection is closed after the
    // response. We re-frame the body for the upstream, so it sees one request with an empty
    // body; the smuggled bytes never become a request.
    for order in [
        "Content-Length: 6\r\nTransfer-Encoding: chunked",
        "Transfer-Encoding: chunked\r\nContent-Length: 6",
    ] {
        let raw =
            format!("POST {path} HTTP/1.1\r\nHost: localhost\r\n{order}\r\n\r\n0\r\n\r\n{smuggle}");
        let before = up.count();
        let out = p.raw(raw.as_bytes(), Duration::from_secs(2)).await;
        assert_eq!(
            out.matches("HTTP/1.1 ").count(),
            1,
            "exactly one response, then close: {out}"
        );
        let seen = up.seen();
        assert_eq!(seen.len(), before + 1, "{seen:?}");
        assert_eq!(seen[before].method, "POST");
        assert!(seen[before].body.is_empty());
    }
    let forwarded = up.count();
    let cases = [
        // Two differing Content-Lengths.
        format!("POST {path} HTTP/1.1\r\nHost: localhost\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nhello!"),
        // Obfuscated Transfer-Encoding.
        format!("POST {path} HTTP/1.1\r\nHost: localhost\r\nTransfer-Encoding: xchunked\r\n\r\n0\r\n\r\n"),
        format!("POST {path} HTTP/1.1\r\nHost: localhost\r\nTransfer-Encoding: chunked, chunked\r\n\r\n0\r\n\r\n"),
        // obs-fold and a space before the colon.
        format!("GET {path} HTTP/1.1\r\nHost: localhost\r\nX-A: 1\r\n  folded\r\n\r\n"),
        format!("GET {path} HTTP/1.1\r\nHost : localhost\r\n\r\n"),
        // Content-Length with a sign.
        format!("POST {path} HTTP/1.1\r\nHost: localhost\r\nContent-Length: +5\r\n\r\nhello"),
    ];
    for raw in cases {
        let out = p.raw(raw.as_bytes(), Duration::from_secs(2)).await;
        assert!(out.starts_with("HTTP/1.1 400"), "{raw:?} -> {out}");
        assert!(
            !out.contains("HTTP/1.1 200"),
            "a smuggled request was answered: {out}"
        );
    }
    assert_eq!(up.count(), forwarded, "{:?}", up.seen());
    // hyper refuses most of these itself, before any handler: each still leaves a record.
    let parser = p
        .audit_where(4, |r| {
            r["kind"] == "http_error" && r["failure"] == "http_malformed"
        })
        .await;
    assert!(parser.len() >= 4, "{parser:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn header_hygiene_refusals_have_their_reasons() {
    let up = Upstream::start(Behaviour::Ok).await;
    let p = Proxy::start(Options::new(up.addr)).await;
    let path = "/open-banking/v3.1/aisp/accounts";
    for (name, value, reason) in [
        ("x_forwarded_for", "1.2.3.4", "http.header_underscore"),
        ("x-http-method-override", "DELETE", "http.method_override"),
        ("upgrade", "h2c", "http.upgrade_refused"),
        (
            "x-fapi-customer-ip-address",
            "not-an-ip",
            "fapi.customer_ip_invalid",
        ),
    ] {
        let (a, id) = p
            .send(req("GET", path).header(name, value).body(empty()).unwrap())
            .await;
        assert_refused(&p, &up, &a, &id, 400, reason).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn interaction_ids_are_echoed_generated_or_refused_by_config() {
    let up = Upstream::start(Behaviour::Ok).await;
    let p = Proxy::start(Options::new(up.addr)).await;
    let mut c = p.client(Some("tpp1"), false).await.unwrap();
    let path = "/open-banking/v3.1/aisp/accounts";
    let a = c
        .send(req("GET", path).body(empty()).unwrap())
        .await
        .unwrap();
    let generated = a.headers["x-fapi-interaction-id"]
        .to_str()
        .unwrap()
        .to_string();
    assert!(uuid::Uuid::try_parse(&generated).is_ok());
    let a = c
        .send(
            req("GET", path)
                .header("x-fapi-interaction-id", "<not a uuid>")
                .body(empty())
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(a.status, 200);
    let replaced = a.headers["x-fapi-interaction-id"].to_str().unwrap();
    assert!(uuid::Uuid::try_parse(replaced).is_ok());
    assert_eq!(up.seen()[1].headers["x-fapi-interaction-id"], replaced);

    let up2 = Upstream::start(Behaviour::Ok).await;
    let mut o = Options::new(up2.addr);
    o.config.fapi.interaction_id = Some("reject_invalid".into());
    let strict = Proxy::start(o).await;
    let mut c = strict.client(Some("tpp1"), false).await.unwrap();
    let a = c
        .send(
            req("GET", path)
                .header("x-fapi-interaction-id", "<not a uuid>")
                .body(empty())
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(a.status, 400);
    assert_eq!(a.json()["reason"], "fapi.interaction_id_invalid");
    assert_eq!(up2.count(), 0);
    let id = a.headers["x-fapi-interaction-id"]
        .to_str()
        .unwrap()
        .to_string();
    assert_eq!(
        strict.audit_of(&id).await["reason"],
        "fapi.interaction_id_invalid"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_down_is_502_and_slow_is_504() {
    let dead = Upstream::dead_addr().await;
    let p = Proxy::start(Options::new(dead)).await;
    let (a, id) = p.get("/open-banking/v3.1/aisp/accounts").await;
    assert_eq!(a.status, 502);
    assert_eq!(a.json()["reason"], "upstream.connect_failed");
    let rec = p.audit_of(&id).await;
    assert_eq!(rec["decision"], "error");
    assert_eq!(rec["stage"], "upstream");

    let slow = Upstream::start(Behaviour::Delay(Duration::from_secs(3))).await;
    let mut o = Options::new(slow.addr);
    o.bank().response_timeout = Some(dur("300ms"));
    let p = Proxy::start(o).await;
    let (a, id) = p.get("/open-banking/v3.1/aisp/accounts").await;
    assert_eq!(a.status, 504);
    assert_eq!(a.json()["reason"], "upstream.timeout");
    assert_eq!(p.audit_of(&id).await["reason"], "upstream.timeout");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_headers_are_cut_off_at_the_header_read_timeout() {
    let up = Upstream::start(Behaviour::Ok).await;
    let mut o = Options::new(up.addr);
    o.config.listener.limits.header_read_timeout = Some(dur("500ms"));
    let p = Proxy::start(o).await;
    let mut tls = p.tls(Some("tpp1"), false).await.unwrap();
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    tls.write_all(b"GET /open-banking/v3.1/aisp/accounts HTTP/1.1\r\nHost: local")
        .await
        .unwrap();
    let started = std::time::Instant::now();
    let mut out = Vec::new();
    let r = tokio::time::timeout(Duration::from_secs(5), tls.read_to_end(&mut out)).await;
    assert!(r.is_ok(), "the connection must be closed by the server");
    assert!(started.elapsed() < Duration::from_secs(3));
    let text = String::from_utf8_lossy(&out);
    assert!(
        text.is_empty() || text.starts_with("HTTP/1.1 408"),
        "{text}"
    );
    assert_eq!(up.count(), 0);
    let rec = p
        .audit_where(1, |r| {
            r["kind"] == "http_error" && r["failure"] == "http_header_timeout"
        })
        .await;
    assert_eq!(rec.len(), 1, "{rec:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_drains_in_flight_requests_and_stops_accepting() {
    let up = Upstream::start(Behaviour::Delay(Duration::from_millis(700))).await;
    let mut p = Proxy::start(Options::new(up.addr)).await;
    let mut c = p.client(Some("tpp1"), false).await.unwrap();
    let inflight = tokio::spawn(async move {
        c.send(
            req("GET", "/open-banking/v3.1/aisp/accounts")
                .body(empty())
                .unwrap(),
        )
        .await
    });
    tokio::time::sleep(Duration::from_millis(200)).await;
    let running = p.running.take().unwrap();
    let addr = p.addr;
    let drained = tokio::spawn(running.shutdown());
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(
        tokio::net::TcpStream::connect(addr).await.is_err(),
        "no new connections while draining"
    );
    let a = inflight
        .await
        .unwrap()
        .expect("the in-flight request completes");
    assert_eq!(a.status, 200);
    assert!(drained.await.unwrap(), "drained before the deadline");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_valid_reload_applies_and_an_invalid_one_keeps_the_old_config() {
    let up = Upstream::start(Behaviour::Ok).await;
    let p = Proxy::start(Options::new(up.addr)).await;
    let (a, _) = p
        .get("/open-banking/v3.1/aisp/accounts/acc-1/balances")
        .await;
    assert_eq!(a.status, 404);
    let policy = p.dir.path().join("policies/test.yaml");
    let mut text = std::fs::read_to_string(&policy).unwrap();
    text += "  - id: balances.get\n    method: GET\n    path: /open-banking/v3.1/aisp/accounts/{AccountId}/balances\n";
    std::fs::write(&policy, &text).unwrap();
    p.shared.reload().expect("valid reload");
    let (a, _) = p
        .get("/open-banking/v3.1/aisp/accounts/acc-1/balances")
        .await;
    assert_eq!(a.status, 200);

    std::fs::write(
        &policy,
        text.replace(
            "method: GET\n    path: /open-banking/v3.1/aisp/accounts/{AccountId}/balances",
            "method: FETCH\n    path: /x",
        ),
    )
    .unwrap();
    let err = p.shared.reload().expect_err("invalid reload is refused");
    let msg = err.to_string();
    assert!(
        msg.contains("test.yaml") && msg.contains("routes[4].method") && msg.contains("FETCH"),
        "{msg}"
    );
    let (a, _) = p
        .get("/open-banking/v3.1/aisp/accounts/acc-1/balances")
        .await;
    assert_eq!(a.status, 200, "the old config still serves");
    let (_, metrics) = p.admin_get("/metrics").await;
    assert!(
        metrics.contains("portcullis_config_reloads_total{result=\"ok\"} 1"),
        "{metrics}"
    );
    assert!(
        metrics.contains("portcullis_config_reloads_total{result=\"failed\"} 1"),
        "{metrics}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_changed_file_is_reloaded_by_the_watcher() {
    let up = Upstream::start(Behaviour::Ok).await;
    let p = Proxy::start(Options::new(up.addr)).await;
    portcullis_proxy::watch(p.shared.clone(), tokio_util::sync::CancellationToken::new()).unwrap();
    let policy = p.dir.path().join("policies/test.yaml");
    let text = std::fs::read_to_string(&policy).unwrap()
        + "  - id: tx.get\n    method: GET\n    path: /open-banking/v3.1/aisp/accounts/{AccountId}/transactions\n";
    // Replace by rename, as editors and ConfigMaps do.
    let tmp = p.dir.path().join("policies/.test.yaml.tmp");
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(&tmp, &policy).unwrap();
    let mut status = 0;
    for _ in 0..50 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        status = p
            .get("/open-banking/v3.1/aisp/accounts/acc-1/transactions")
            .await
            .0
            .status
            .as_u16();
        if status == 200 {
            break;
        }
    }
    assert_eq!(status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_endpoints_report_health_readiness_and_metrics() {
    let up = Upstream::start(Behaviour::Ok).await;
    let p = Proxy::start(Options::new(up.addr)).await;
    assert_eq!(p.admin_get("/healthz").await.0, 200);
    assert_eq!(p.admin_get("/readyz").await.0, 200);
    p.get("/open-banking/v3.1/aisp/accounts").await;
    p.get("/nope").await;
    let (s, m) = p.admin_get("/metrics").await;
    assert_eq!(s, 200);
    assert!(
        m.contains(
            "portcullis_requests_total{route=\"accounts.list\",status=\"200\",reason=\"ok\"} 1"
        ),
        "{m}"
    );
    assert!(
        m.contains(
            "portcullis_requests_total{route=\"unrouted\",status=\"404\",reason=\"route.not_found\"} 1"
        ),
        "{m}"
    );
    for route in ["accounts.list", "unrouted"] {
        let want = format!("portcullis_request_duration_seconds_count{{route=\"{route}\"}} 1");
        assert!(m.contains(&want), "{want} missing in\n{m}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_route_id_with_quotes_and_newlines_does_not_break_the_metrics_page() {
    // Route ids are free text in policy files; the scrape must stay parseable whatever they hold.
    let up = Upstream::start(Behaviour::Ok).await;
    let mut o = Options::new(up.addr);
    o.policy = POLICY.replace(
        "id: accounts.list",
        r#"id: "accounts \"list\"\\v1\nportcullis_forged 1""#,
    );
    let p = Proxy::start(o).await;
    assert_eq!(
        p.get("/open-banking/v3.1/aisp/accounts").await.0.status,
        200
    );
    let (s, m) = p.admin_get("/metrics").await;
    assert_eq!(s, 200);
    let want = r#"portcullis_requests_total{route="accounts \"list\"\\v1\nportcullis_forged 1",status="200",reason="ok"} 1"#;
    assert!(m.lines().any(|l| l == want), "{want} missing in\n{m}");
    assert!(
        !m.lines().any(|l| l.starts_with("portcullis_forged")),
        "{m}"
    );
    for line in m.lines().filter(|l| !l.is_empty() && !l.starts_with('#')) {
        // Outside the label values (whose escapes were checked above), a sample is
        // `name{labels} value`: a stray quote would leave an odd count of unescaped quotes.
        let unescaped_quotes = line
            .replace("\\\\", "")
            .replace("\\\"", "")
            .matches('"')
            .count();
        assert_eq!(unescaped_quotes % 2, 0, "{line}");
        assert!(
            line.rsplit_once(' ')
                .is_some_and(|(_, v)| v.parse::<f64>().is_ok()),
            "{line}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_concurrent_requests_leave_exactly_one_audit_record_each() {
    let up = Upstream::start(Behaviour::Ok).await;
    let p = std::sync::Arc::new(Proxy::start(Options::new(up.addr)).await);
    let mut tasks = Vec::new();
    for i in 0..40 {
        let p = p.clone();
        tasks.push(tokio::spawn(async move {
            let path = if i % 2 == 0 {
                "/open-banking/v3.1/aisp/accounts"
            } else {
                "/nope"
            };
            p.get(path).await.1
        }));
    }
    let mut ids = Vec::new();
    for t in tasks {
        ids.push(t.await.unwrap());
    }
    let recs = p.audit_where(40, |r| r["kind"] == "request").await;
    assert_eq!(recs.len(), 40);
    for id in ids {
        assert_eq!(
            recs.iter()
                .filter(|r| r["interaction_id"] == id.as_str())
                .count(),
            1
        );
    }
    // Every request on its own connection: a connection record before each, all in one chain
    // without gaps.
    let all = p.raw_audit();
    assert_eq!(all.iter().filter(|r| r["kind"] == "connection").count(), 40);
    let mut seqs: Vec<u64> = all.iter().map(|r| r["seq"].as_u64().unwrap()).collect();
    seqs.sort();
    assert_eq!(seqs, (1..=80).collect::<Vec<_>>());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reloaded_client_ca_governs_new_connections_only() {
    let up = Upstream::start(Behaviour::Ok).await;
    let p = Proxy::start(Options::new(up.addr)).await;
    let mut old = p.client(Some("tpp1"), false).await.unwrap();
    assert_eq!(
        old.send(
            req("GET", "/open-banking/v3.1/aisp/accounts")
                .body(empty())
                .unwrap()
        )
        .await
        .unwrap()
        .status,
        200
    );
    // Trust only the rogue CA from now on.
    let rogue_ca = certs().join("rogue-ca.pem").display().to_string();
    // The dev CRL is the old CA's; with it, every rogue-CA certificate would have an unknown
    // revocation status and be refused (fail closed), so the new config drops it.
    p.edit_config(|c| {
        c.listener.tls.client_ca = vec![rogue_ca];
        c.listener.tls.crl = Vec::new();
    });
    p.shared.reload().expect("reload");
    let refused = match p.client(Some("tpp1"), false).await {
        Err(_) => true,
        Ok(mut c) => c
            .send(
                req("GET", "/open-banking/v3.1/aisp/accounts")
                    .body(empty())
                    .unwrap(),
            )
            .await
            .is_err(),
    };
    assert!(
        refused,
        "a new connection with a certificate of the old CA is refused"
    );
    let mut rogue = p.client(Some("rogue"), false).await.unwrap();
    assert_eq!(
        rogue
            .send(
                req("GET", "/open-banking/v3.1/aisp/accounts")
                    .body(empty())
                    .unwrap()
            )
            .await
            .unwrap()
            .status,
        200
    );
    // The connection made before the reload was verified then; it keeps its identity.
    assert_eq!(
        old.send(
            req("GET", "/open-banking/v3.1/aisp/accounts")
                .body(empty())
                .unwrap()
        )
        .await
        .unwrap()
        .status,
        200
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_connections_are_closed_after_the_idle_timeout() {
    let up = Upstream::start(Behaviour::Ok).await;
    let mut o = Options::new(up.addr);
    o.config.listener.limits.idle_timeout = Some(dur("300ms"));
    let p = Proxy::start(o).await;
    for h2 in [false, true] {
        let mut c = p.client(Some("tpp1"), h2).await.unwrap();
        let uri = if h2 {
            "https://localhost/open-banking/v3.1/aisp/accounts"
        } else {
            "/open-banking/v3.1/aisp/accounts"
        };
        assert_eq!(
            c.send(req("GET", uri).body(empty()).unwrap())
                .await
                .unwrap()
                .status,
            200
        );
        let mut closed = false;
        for _ in 0..30 {
            tokio::time::sleep(Duration::from_millis(100)).await;
            if !c.is_open() {
                closed = true;
                break;
            }
        }
        assert!(closed, "idle connection (h2={h2}) must be closed");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_connection_cap_holds_new_connections_until_a_slot_frees() {
    let up = Upstream::start(Behaviour::Ok).await;
    let mut o = Options::new(up.addr);
    o.config.listener.limits.max_connections = Some(1);
    let p = Proxy::start(o).await;
    let mut first = p.client(Some("tpp1"), false).await.unwrap();
    assert_eq!(
        first
            .send(
                req("GET", "/open-banking/v3.1/aisp/accounts")
                    .body(empty())
                    .unwrap()
            )
            .await
            .unwrap()
            .status,
        200
    );
    let second =
        tokio::time::timeout(Duration::from_millis(500), p.client(Some("tpp1"), false)).await;
    assert!(
        second.is_err(),
        "the second handshake waits while the cap is reached"
    );
    drop(first);
    let mut second = tokio::time::timeout(Duration::from_secs(3), p.client(Some("tpp1"), false))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        second
            .send(
                req("GET", "/open-banking/v3.1/aisp/accounts")
                    .body(empty())
                    .unwrap()
            )
            .await
            .unwrap()
            .status,
        200
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_body_of_unknown_length_is_408_and_never_forwarded() {
    let up = Upstream::start(Behaviour::Ok).await;
    let mut o = Options::new(up.addr);
    o.config.listener.limits.request_timeout = Some(dur("400ms"));
    let p = Proxy::start(o).await;
    let id = uuid::Uuid::new_v4().to_string();
    let raw = format!(
        "POST /open-banking/v3.1/pisp/domestic-payment-consents HTTP/1.1\r\nHost: localhost\r\nx-fapi-interaction-id: {id}\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhel"
    );
    let out = p.raw(raw.as_bytes(), Duration::from_secs(3)).await;
    assert!(out.starts_with("HTTP/1.1 408"), "{out}");
    assert!(out.contains("http.body_timeout"));
    assert_eq!(up.count(), 0);
    assert_eq!(p.audit_of(&id).await["reason"], "http.body_timeout");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_https_upstream_is_reached_over_pinned_tls_with_the_proxy_client_certificate() {
    for h2 in [false, true] {
        let up = Upstream::start_tls(Behaviour::Ok).await;
        let mut o = Options::new(up.addr);
        let c = |f: &str| certs().join(f).display().to_string();
        *o.bank() = FileUpstream {
            url: format!("https://localhost:{}", up.addr.port()),
            http2: h2,
            tls: Some(FileUpstreamTls {
                ca: vec![c("ca.pem")],
                client_certificate: Some(c("tpp2.pem")),
                client_private_key: Some(c("tpp2.key")),
            }),
            ..FileUpstream::default()
        };
        let p = Proxy::start(o).await;
        let (a, _) = p.get("/open-banking/v3.1/aisp/accounts").await;
        assert_eq!(
            a.status,
            200,
            "h2={h2}: {}",
            String::from_utf8_lossy(&a.body)
        );
        let seen = up.seen();
        assert_eq!(seen.len(), 1);
        use rustls_pki_types::pem::PemObject;
        let tpp2 =
            rustls_pki_types::CertificateDer::from_pem_file(certs().join("tpp2.pem")).unwrap();
        assert_eq!(
            seen[0].headers["x-test-peer-cert"],
            portcullis_crypto::pki::thumbprint_s256(tpp2.as_ref()).as_str()
        );
    }
}
