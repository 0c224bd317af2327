use super::*;

const VALID: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

#[test]
fn a_valid_traceparent_is_parsed() {
    let (trace, parent, flags) = parse_traceparent(VALID.as_bytes()).unwrap();
    assert_eq!(trace[0], 0x4b);
    assert_eq!(parent[7], 0xb7);
    assert_eq!(flags, 1);
    // A later version may append fields.
    let v2 = format!("01{}-extra", &VALID[2..]);
    assert!(parse_traceparent(v2.as_bytes()).is_some());
}

#[test]
fn malformed_traceparents_are_refused() {
    for bad in [
        "",
        "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-0",
        "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
        "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
        "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
        "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
        "00_4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        "00-4bf92f3577b34da6a3ce929d0e0e473g-00f067aa0ba902b7-01",
        "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01x",
        "zz-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
    ] {
        assert!(parse_traceparent(bad.as_bytes()).is_none(), "{bad}");
    }
}

#[test]
fn a_valid_incoming_trace_is_continued_with_our_span_and_its_tracestate() {
    let mut h = HeaderMap::new();
    h.insert(TRACEPARENT, HeaderValue::from_static(VALID));
    h.insert(TRACESTATE, HeaderValue::from_static("vendor=x"));
    let t = TraceContext::from_headers(&h);
    assert!(t.continued());
    assert_eq!(t.trace_id(), "4bf92f3577b34da6a3ce929d0e0e4736");
    assert_ne!(t.span_id(), "00f067aa0ba902b7");
    t.inject(&mut h);
    let sent = h[TRACEPARENT].to_str().unwrap().to_string();
    assert!(sent.starts_with("00-4bf92f3577b34da6a3ce929d0e0e4736-"));
    assert!(sent.ends_with("-01"));
    assert_eq!(parse_traceparent(sent.as_bytes()).unwrap().1.len(), 8);
    assert_eq!(h[TRACESTATE], "vendor=x");
}

#[test]
fn an_invalid_or_repeated_traceparent_starts_a_new_trace_and_drops_tracestate() {
    for values in [vec!["garbage"], vec![VALID, VALID], vec![]] {
        let mut h = HeaderMap::new();
        for v in &values {
            h.append(TRACEPARENT, HeaderValue::from_str(v).unwrap());
        }
        h.insert(TRACESTATE, HeaderValue::from_static("vendor=x"));
        let t = TraceContext::from_headers(&h);
        assert!(!t.continued());
        assert_ne!(t.trace_id(), "4bf92f3577b34da6a3ce929d0e0e4736");
        t.inject(&mut h);
        assert_eq!(h.get_all(TRACEPARENT).iter().count(), 1);
        let sent = h[TRACEPARENT].to_str().unwrap();
        assert!(parse_traceparent(sent.as_bytes()).is_some(), "{sent}");
        assert!(sent.ends_with("-00"));
        assert!(!h.contains_key(TRACESTATE));
    }
    let a = TraceContext::from_headers(&HeaderMap::new());
    let b = TraceContext::from_headers(&HeaderMap::new());
    assert_ne!(a.trace_id(), b.trace_id());
}

#[test]
fn client_cert_expiry_tracking_is_capped_and_keeps_the_soonest() {
    let m = Metrics::default();
    for i in 0..MAX_CLIENT_CERTS {
        m.client_cert_seen(&format!("t{i:04}"), 1_000_000 + i as i64);
    }
    m.client_cert_seen("late", 9_000_000);
    m.client_cert_seen("early", 10);
    let certs = m.client_certs.lock().unwrap();
    assert_eq!(certs.len(), MAX_CLIENT_CERTS);
    assert!(certs.contains_key("early"));
    assert!(!certs.contains_key("late"));
    assert!(!certs.contains_key(&format!("t{:04}", MAX_CLIENT_CERTS - 1)));
    drop(certs);
    assert_eq!(m.client_certs_untracked.load(Ordering::Relaxed), 2);
}

#[test]
fn hooks_and_outcomes_render_with_bounded_labels() {
    let m = Metrics::default();
    m.request_outcome("allow", Some(1500));
    m.request_outcome("deny", None);
    m.key_source_refresh("jwks", false);
    m.cache_lookup("token", true);
    m.cache_lookup("token", false);
    m.rate_limit_refused("client");
    m.server_cert(Some(
        time::OffsetDateTime::now_utc().unix_timestamp() + 86_400 * 10 + 3_600,
    ));
    m.client_cert_seen("abc", 0);
    let text = m.render();
    for want in [
        "portcullis_requests_by_decision_total{decision=\"allow\"} 1",
        "portcullis_requests_by_decision_total{decision=\"deny\"} 1",
        "portcullis_upstream_duration_seconds_count 1",
        "portcullis_upstream_duration_seconds_bucket{le=\"0.0025\"} 1",
        "portcullis_key_source_refreshes_total{source=\"jwks\",result=\"failed\"} 1",
        "portcullis_cache_lookups_total{cache=\"token\",result=\"hit\"} 1",
        "portcullis_cache_lookups_total{cache=\"token\",result=\"miss\"} 1",
        "portcullis_rate_limit_refusals_total{scope=\"client\"} 1",
        "portcullis_server_cert_expiry_days 10.04",
        "portcullis_client_cert_expiry_days{thumbprint=\"abc\"} -",
    ] {
        assert!(text.contains(want), "{want} missing in\n{text}");
    }
}
