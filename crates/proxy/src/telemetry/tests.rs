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
    m.rate_limit_refused("client");
    m.server_cert(Some(1_900_000_000));
    m.client_cert_seen("abc", 0);
    let text = m.render();
    for want in [
        "portcullis_requests_by_decision_total{decision=\"allow\"} 1",
        "portcullis_requests_by_decision_total{decision=\"deny\"} 1",
        "portcullis_upstream_duration_seconds_count 1",
        "portcullis_upstream_duration_seconds_bucket{le=\"0.0025\"} 1",
        "portcullis_rate_limit_refusals_total{scope=\"client\"} 1",
        "portcullis_server_cert_expiry_timestamp_seconds 1900000000",
        "portcullis_client_cert_expiry_timestamp_seconds{thumbprint=\"abc\"} 0",
    ] {
        assert!(text.contains(want), "{want} missing in\n{text}");
    }
}

/// One sample line of the text exposition format: a metric name, optional labels whose values
/// use only the three escapes the format defines, a space and a number. Returns the label
/// values, unescaped.
fn parse_sample(line: &str) -> Result<Vec<String>, String> {
    let name_end = line
        .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == ':'))
        .ok_or("no value")?;
    let mut rest = &line[name_end..];
    let mut values = Vec::new();
    if let Some(r) = rest.strip_prefix('{') {
        rest = r;
        loop {
            let eq = rest.find("=\"").ok_or("label without =\"")?;
            let label = &rest[..eq];
            if label.is_empty()
                || !label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'_')
            {
                return Err(format!("bad label name {label:?}"));
            }
            let mut chars = rest[eq + 2..].char_indices();
            let mut v = String::new();
            let end = loop {
                match chars.next().ok_or("unterminated value")? {
                    (i, '"') => break eq + 2 + i + 1,
                    (_, '\\') => match chars.next().ok_or("dangling escape")?.1 {
                        '\\' => v.push('\\'),
                        '"' => v.push('"'),
                        'n' => v.push('\n'),
                        c => return Err(format!("unknown escape \\{c}")),
                    },
                    (_, '\n') => return Err("raw line feed".into()),
                    (_, c) => v.push(c),
                }
            };
            values.push(v);
            rest = &rest[end..];
            if let Some(r) = rest.strip_prefix(',') {
                rest = r;
            } else {
                rest = rest.strip_prefix('}').ok_or("labels not closed")?;
                break;
            }
        }
    }
    let value = rest.strip_prefix(' ').ok_or("no space before the value")?;
    if value.parse::<f64>().is_err() {
        return Err(format!("value {value:?} is not a number"));
    }
    Ok(values)
}

#[test]
fn label_values_are_escaped_as_the_exposition_format_requires() {
    assert_eq!(LabelValue("plain.id").to_string(), "plain.id");
    assert_eq!(
        LabelValue("a\"b\\c\nd").to_string(),
        "a\\\"b\\\\c\\nd",
        "backslash, double quote and line feed"
    );
    assert_eq!(LabelValue("\\\\\"\n").to_string(), "\\\\\\\\\\\"\\n");
    // Other bytes, carriage return and non-ASCII included, are left alone: the format only
    // names these three.
    assert_eq!(LabelValue("x\ry é").to_string(), "x\ry é");
}

#[test]
fn a_route_id_with_quotes_backslashes_and_newlines_keeps_the_page_parseable() {
    let m = Metrics::default();
    let nasty = "pay\"ments\\list\n} 1\nportcullis_forged 9";
    m.request(Some(nasty), 200, "ok", Duration::from_millis(1));
    m.would_deny(Some(nasty), "authz.scope");
    m.request(
        Some("accounts.list"),
        404,
        "route.not_found",
        Duration::from_millis(1),
    );
    let text = m.render();
    // The forged sample stays inside the label value: no line of the page starts with it.
    assert!(
        !text.lines().any(|l| l.starts_with("portcullis_forged")),
        "{text}"
    );
    let mut routes = Vec::new();
    for line in text
        .lines()
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
    {
        let values = parse_sample(line).unwrap_or_else(|e| panic!("{e}: {line:?}\n{text}"));
        if line.starts_with("portcullis_requests_total")
            || line.starts_with("portcullis_would_deny")
        {
            routes.push(values[0].clone());
        }
    }
    // Unescaped, the label reads back as the route id it was.
    assert_eq!(
        routes.iter().filter(|r| *r == nasty).count(),
        2,
        "{routes:?}"
    );
    assert!(routes.iter().any(|r| r == "accounts.list"));
    // And the parser does catch what the escaping prevents.
    assert!(parse_sample("x{route=\"a\"b\"} 1").is_err());
    assert!(parse_sample("x{route=\"a\\qb\"} 1").is_err());
}
