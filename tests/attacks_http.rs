//! The attack suite, HTTP side (docs/attacks.md groups F and G, and the cases it does not list:
//! HTTP/1.0 without Host, absolute-form and `*` targets, CONNECT/TRACE, duplicate and
//! case-variant headers, oversize values, Unicode look-alikes, header injection, HTTP/2
//! pseudo-header abuse). One table run through `support::attack::run` (status + reason,
//! nothing upstream, one audit record each), then the HTTP/2 floods with h2raw while a good
//! client keeps being served.

mod common;
mod support {
    pub(crate) mod attack;
    pub(crate) mod h2raw;
}

use std::time::Duration;

use common::dur;
use support::attack::*;
use support::h2raw::{self, H2};

const POLICY: &str = r#"
group: http
upstream: bank
routes:
  - id: accounts.list
    method: GET
    path: /accounts
  - id: accounts.get
    method: GET
    path: /accounts/{AccountId}
  - id: payments.create
    method: POST
    path: /payments
    body_limit: 1024
  - id: slow.get
    method: GET
    path: /slow
    upstream: slow
"#;

async fn lab() -> Lab {
    let mut o = LabOptions::new(POLICY);
    let listener = &mut o.config.listener;
    listener.limits.request_timeout = Some(dur("2s"));
    listener.limits.header_read_timeout = Some(dur("1s"));
    listener.server_names = vec!["localhost".into()];
    Lab::start(o).await
}

fn get(path: &str) -> Req {
    Req::get(path)
}

/// A raw HTTP/1.1 request line and headers (Host and the interaction id added), then `rest`
/// (more headers, the blank line, a body) verbatim.
fn wire(line: &str, rest: &str) -> String {
    format!("{line}\r\nHost: localhost\r\nx-fapi-interaction-id: {{id}}\r\n{rest}")
}

fn forwarded_path(want: &'static str) -> impl Fn(&Outcome) -> Result<(), String> {
    move |o| match o.forwarded.first() {
        Some(s) if s.path_and_query == want => Ok(()),
        other => Err(format!("forwarded {other:?}, want {want}")),
    }
}

fn lacks(names: &'static [&'static str]) -> impl Fn(&Outcome) -> Result<(), String> {
    move |o| {
        let h = &o.forwarded[0].headers;
        match names.iter().find(|n| h.contains_key(**n)) {
            Some(n) => Err(format!("{n} reached the upstream: {:?}", h.get(*n))),
            None => Ok(()),
        }
    }
}

/// Group F: paths and routing (the BOLA rows are in attacks_policy.rs).
fn group_f() -> Vec<Case> {
    let r400 = |reason| refused(400, reason);
    vec![
        case(
            "F01",
            "dot-dot segments",
            get("/accounts/123/../../admin"),
            r400("path.dot_segment"),
        ),
        case(
            "F01",
            "encoded dot-dot",
            get("/accounts/%2e%2e/admin"),
            r400("path.encoded_dot"),
        ),
        case(
            "F01",
            "half-encoded dot-dot",
            get("/accounts/.%2e/admin"),
            r400("path.encoded_dot"),
        ),
        case(
            "F01",
            "single dot segment",
            get("/accounts/./123"),
            r400("path.dot_segment"),
        ),
        case(
            "F02",
            "encoded slash",
            get("/accounts/123%2F456"),
            r400("path.encoded_separator"),
        ),
        case(
            "F02",
            "lower-case encoded slash",
            get("/accounts/123%2f456"),
            r400("path.encoded_separator"),
        ),
        case(
            "F02",
            "encoded backslash",
            get("/accounts/123%5C456"),
            r400("path.encoded_separator"),
        ),
        case(
            "F03",
            "double-encoded dots",
            get("/accounts/%252e%252e"),
            r400("path.double_encoding"),
        ),
        case(
            "F03",
            "double-encoded slash",
            get("/accounts/1%252F2"),
            r400("path.double_encoding"),
        ),
        raw(
            "F04",
            "backslash dot-dot",
            wire(
                "GET /accounts\\..\\admin HTTP/1.1",
                "Connection: close\r\n\r\n",
            ),
            r400("path.backslash"),
        ),
        case(
            "F06",
            "trailing slash",
            get("/accounts/123/"),
            r400("path.empty_segment"),
        ),
        case(
            "F06",
            "trailing slash on a collection",
            get("/accounts/"),
            r400("path.empty_segment"),
        ),
        case(
            "F07",
            "upper-case first segment",
            get("/Accounts/123"),
            refused(404, "route.not_found"),
        ),
        case(
            "F07",
            "all upper case",
            get("/ACCOUNTS"),
            refused(404, "route.not_found"),
        ),
        case(
            "F08",
            "duplicate slashes",
            get("//accounts//123"),
            r400("path.empty_segment"),
        ),
        case(
            "F08",
            "leading double slash",
            get("//internal/"),
            r400("path.empty_segment"),
        ),
        raw(
            "F09",
            "fragment in the raw target",
            wire(
                "GET /accounts/1#/../../admin HTTP/1.1",
                "Connection: close\r\n\r\n",
            ),
            Expect::Allowed,
        )
        .check(forwarded_path("/accounts/1")),
        case(
            "F10",
            "overlong UTF-8 dot",
            get("/accounts/%c0%ae%c0%ae"),
            r400("path.non_ascii"),
        ),
        case(
            "F10",
            "fullwidth solidus, encoded",
            get("/accounts/1%EF%BC%8F2"),
            r400("path.non_ascii"),
        ),
        raw(
            "F10",
            "fullwidth solidus, raw UTF-8",
            wire("GET /accounts/1／2 HTTP/1.1", "Connection: close\r\n\r\n"),
            r400("path.non_ascii"),
        ),
        case(
            "F11",
            "encoded tab",
            get("/accounts/1%092"),
            r400("path.control_char"),
        ),
        raw(
            "F11",
            "unescaped space",
            wire("GET /accounts/a b HTTP/1.1", "Connection: close\r\n\r\n"),
            Expect::Parser(400, "http_malformed"),
        ),
        // The authority of an absolute-form target is checked like Host (server_names) first.
        raw(
            "F12",
            "absolute-form to another host",
            wire(
                "GET http://other.example/admin HTTP/1.1",
                "Connection: close\r\n\r\n",
            ),
            refused(421, "http.misdirected"),
        ),
        case(
            "F14",
            "HEAD on a GET-only route",
            Req::new("HEAD", "/accounts"),
            refused(405, "route.method_not_allowed"),
        )
        .check(|o| match o.headers.get("allow") {
            Some(v) if v == "GET" => Ok(()),
            v => Err(format!("Allow {v:?}")),
        }),
        case(
            "F14",
            "HEAD on a write route",
            Req::new("HEAD", "/payments"),
            refused(405, "route.method_not_allowed"),
        ),
        case(
            "F15",
            "lower-case method",
            Req::new("get", "/accounts"),
            refused(405, "route.method_not_allowed"),
        ),
        case(
            "F15",
            "GETS",
            Req::new("GETS", "/accounts"),
            refused(405, "route.method_not_allowed"),
        ),
        case(
            "F15",
            "PROPFIND",
            Req::new("PROPFIND", "/accounts"),
            refused(405, "route.method_not_allowed"),
        ),
        case(
            "F15",
            "TRACE",
            Req::new("TRACE", "/accounts"),
            refused(405, "route.method_not_allowed"),
        ),
        raw(
            "F15",
            "CONNECT in authority form",
            wire(
                "CONNECT localhost:443 HTTP/1.1",
                "Connection: close\r\n\r\n",
            ),
            r400("path.not_origin_form"),
        ),
        case(
            "F21",
            "another Host",
            get("/accounts").header("host", "admin.internal"),
            refused(421, "http.misdirected"),
        ),
        case(
            "F21",
            "another :authority over HTTP/2",
            Req {
                path: "https://admin.internal/accounts".into(),
                ..get("/accounts").h2()
            },
            refused(421, "http.misdirected"),
        ),
        case(
            "F22",
            "encoded NUL",
            get("/accounts/1%00"),
            r400("path.control_char"),
        ),
        case(
            "F23",
            "10 KiB path",
            get(&format!("/accounts/{}", "a".repeat(10 * 1024))),
            refused(414, "http.uri_too_long"),
        ),
        case(
            "F23",
            "5,000 segments",
            get(&"/a".repeat(5000)),
            refused(414, "http.uri_too_long"),
        ),
        raw(
            "F23",
            "100 KiB path: over hyper's buffer",
            wire(
                &format!("GET /accounts/{} HTTP/1.1", "a".repeat(100 * 1024)),
                "Connection: close\r\n\r\n",
            ),
            Expect::Parser(431, "http_headers_too_large"),
        ),
        case(
            "F24",
            "client-supplied original-path headers",
            get("/accounts/1")
                .header("x-envoy-original-path", "/admin")
                .header("x-original-url", "/admin")
                .header("x-rewrite-url", "/admin")
                .header("x-original-uri", "/admin"),
            Expect::Allowed,
        )
        .check(|o| {
            forwarded_path("/accounts/1")(o)?;
            lacks(&[
                "x-envoy-original-path",
                "x-original-url",
                "x-rewrite-url",
                "x-original-uri",
            ])(o)
        }),
    ]
}

const SMUGGLED: &str = "GET /accounts/smuggled HTTP/1.1\r\nHost: localhost\r\n\r\n";

fn post_raw(headers: &str, body: &str) -> String {
    wire(
        "POST /payments HTTP/1.1",
        &format!("{headers}\r\n\r\n{body}"),
    )
}

/// The one forwarded request was the POST, with an empty body: the smuggled bytes never
/// became a request.
fn one_post_empty(o: &Outcome) -> Result<(), String> {
    let s = &o.forwarded[0];
    if s.method != "POST" || !s.body.is_empty() || s.path_and_query != "/payments" {
        return Err(format!("forwarded {s:?}"));
    }
    Ok(())
}

fn body_is(want: &'static [u8]) -> impl Fn(&Outcome) -> Result<(), String> {
    move |o| match o.forwarded.first() {
        Some(s) if s.body.as_ref() == want => Ok(()),
        other => Err(format!("forwarded {other:?}")),
    }
}

/// Group G: HTTP/1 framing, header trust, limits and slow clients (the HTTP/2 rows are the
/// h2raw cases and the flood tests below).
fn group_g() -> Vec<Case> {
    let malformed = Expect::Parser(400, "http_malformed");
    let r400 = |reason| refused(400, reason);
    let cl_te = "Content-Length: 6\r\nTransfer-Encoding: chunked";
    let te_cl = "Transfer-Encoding: chunked\r\nContent-Length: 6";
    let mut v = vec![
        raw(
            "G01",
            "CL.TE with a smuggled request",
            post_raw(cl_te, &format!("0\r\n\r\n{SMUGGLED}")),
            Expect::Allowed,
        )
        .check(one_post_empty),
        raw(
            "G02",
            "TE.CL with a smuggled request",
            post_raw(te_cl, &format!("0\r\n\r\n{SMUGGLED}")),
            Expect::Allowed,
        )
        .check(one_post_empty),
    ];
    // hyper refuses what it cannot frame; what it can (chunked last) we refuse unless the
    // coding is exactly `chunked`.
    let bad_te = r400("http.bad_transfer_encoding");
    for (what, te, expect) in [
        ("xchunked", "Transfer-Encoding: xchunked", malformed),
        (
            "chunked, chunked",
            "Transfer-Encoding: chunked, chunked",
            bad_te,
        ),
        (
            "chunked, gzip",
            "Transfer-Encoding: chunked, gzip",
            malformed,
        ),
        ("gzip, chunked", "Transfer-Encoding: gzip, chunked", bad_te),
        ("gzip", "Transfer-Encoding: gzip", malformed),
        (
            "two TE headers",
            "Transfer-Encoding: chunked\r\nTransfer-Encoding: chunked",
            bad_te,
        ),
        (
            "space before the colon",
            "Transfer-Encoding : chunked",
            malformed,
        ),
        (
            "TE by obs-fold",
            "Transfer-Encoding:\r\n chunked",
            malformed,
        ),
        ("vertical tab", "Transfer-Encoding:\x0bchunked", malformed),
    ] {
        v.push(raw(
            "G03",
            format!("TE obfuscation: {what}"),
            post_raw(&format!("{te}\r\nConnection: close"), "0\r\n\r\n"),
            expect,
        ));
    }
    for (what, te) in [
        ("leading space", "Transfer-Encoding:  chunked"),
        ("trailing space", "Transfer-Encoding: chunked "),
        ("upper case", "Transfer-Encoding: CHUNKED"),
    ] {
        // Optional whitespace and case are not obfuscation (RFC 9110 §5.6.3, §7.8): one
        // chunked body, read and forwarded as the same bytes.
        v.push(
            raw(
                "G03",
                format!("TE {what}"),
                post_raw(
                    &format!("{te}\r\nConnection: close"),
                    "2\r\nok\r\n0\r\n\r\n",
                ),
                Expect::Allowed,
            )
            .check(body_is(b"ok")),
        );
    }
    for (id, what, cl, expect) in [
        (
            "G04",
            "differing Content-Lengths",
            "Content-Length: 2\r\nContent-Length: 3",
            malformed,
        ),
        (
            "G04",
            "comma-joined Content-Length",
            "Content-Length: 2, 2",
            malformed,
        ),
        ("G05", "empty Content-Length", "Content-Length: ", malformed),
        (
            "G05",
            "signed Content-Length",
            "Content-Length: +2",
            malformed,
        ),
        (
            "G05",
            "list Content-Length",
            "Content-Length: 2,3",
            malformed,
        ),
        (
            "G05",
            "hex Content-Length",
            "Content-Length: 0x2",
            malformed,
        ),
        (
            "G05",
            "Content-Length with an inner space",
            "Content-Length: 2 2",
            malformed,
        ),
    ] {
        v.push(raw(
            id,
            what,
            post_raw(&format!("{cl}\r\nConnection: close"), "ok"),
            expect,
        ));
    }
    for (what, cl) in [
        (
            "identical Content-Lengths",
            "Content-Length: 2\r\nContent-Length: 2",
        ),
        (
            "case-variant identical Content-Lengths",
            "content-length: 2\r\nCONTENT-LENGTH: 2",
        ),
    ] {
        // RFC 9110 §8.6 lets a recipient take identical duplicates as one value; hyper does,
        // and one Content-Length frames one body for the upstream.
        v.push(
            raw(
                "G04",
                what,
                post_raw(&format!("{cl}\r\nConnection: close"), "ok"),
                Expect::Allowed,
            )
            .check(body_is(b"ok")),
        );
    }
    v.extend([
        raw("G06", "obs-fold in a header", wire("GET /accounts HTTP/1.1", "X-A: 1\r\n  folded\r\nConnection: close\r\n\r\n"), malformed),
        raw("G07", "space before the colon", "GET /accounts HTTP/1.1\r\nHost : localhost\r\nConnection: close\r\n\r\n".into(), malformed),
        raw("G07", "tab before the colon", wire("GET /accounts HTTP/1.1", "X-A\t: 1\r\nConnection: close\r\n\r\n"), malformed),
        raw("G08", "empty header name", wire("GET /accounts HTTP/1.1", ": x\r\nConnection: close\r\n\r\n"), malformed),
        raw("G09", "NUL in a header value", wire("GET /accounts HTTP/1.1", "X-A: a\0b\r\nConnection: close\r\n\r\n"), malformed),
        raw("G09", "bare CR in a header value", wire("GET /accounts HTTP/1.1", "X-A: a\rX-Injected: 1\r\nConnection: close\r\n\r\n"), malformed),
        case("G09", "CRLF decoded from the path into a header", get("/accounts/a%0d%0aX-Injected:%201"), r400("path.control_char")),
        raw("G11", "chunk-size overflow", post_raw("Transfer-Encoding: chunked\r\nConnection: close", "ffffffffffffffff1\r\nx\r\n0\r\n\r\n"), r400("http.body_read")),
        raw("G11", "trailers carrying credentials and Content-Length", post_raw("Transfer-Encoding: chunked\r\nConnection: close", "2\r\nok\r\n0\r\nAuthorization: Bearer smuggled\r\nContent-Length: 99\r\n\r\n"), Expect::Allowed)
            .check(|o| {
                body_is(b"ok")(o)?;
                lacks(&["authorization"])(o)
            }),
        raw("G11", "no final CRLF: the body never ends", post_raw("Transfer-Encoding: chunked\r\nConnection: close", "2\r\nok\r\n0\r\n"), refused(408, "http.body_timeout")),
        raw("G12", "HTTP/1.0 with Transfer-Encoding", "POST /payments HTTP/1.0\r\nHost: localhost\r\nx-fapi-interaction-id: {id}\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nok\r\n0\r\n\r\n".into(), malformed),
        raw("G13", "pipelined GET with a body, then a second request", format!("{}{}", wire("GET /accounts HTTP/1.1", "Content-Length: 5\r\n\r\nhello"), wire("GET /accounts/2 HTTP/1.1", "Connection: close\r\n\r\n")), Expect::Forwarded(2))
            .check(|o| {
                let paths: Vec<&str> = o.forwarded.iter().map(|s| s.path_and_query.as_str()).collect();
                if paths == ["/accounts", "/accounts/2"] && o.forwarded[0].body.as_ref() == b"hello" {
                    Ok(())
                } else {
                    Err(format!("forwarded {:?}", o.forwarded))
                }
            }),
        case("G14", "20 KiB of headers", get("/accounts").header("x-big", "v".repeat(20 * 1024)), refused(431, "http.headers_too_large")),
        case("G14", "150 header fields", (0..150).fold(get("/accounts"), |r, i| r.header(&format!("x-h{i}"), "v")), refused(431, "http.too_many_headers")),
        raw("G14", "100 KiB of headers: over hyper's buffer", wire("GET /accounts HTTP/1.1", &format!("X-Big: {}\r\nConnection: close\r\n\r\n", "v".repeat(100 * 1024))), Expect::Parser(431, "http_headers_too_large")),
        raw("G15", "oversize headers split across reads", wire("GET /accounts HTTP/1.1", &format!("X-A: {}\r\n{{pause:300}}X-B: {}\r\nConnection: close\r\n\r\n", "a".repeat(9000), "b".repeat(9000))), refused(431, "http.headers_too_large")),
        raw("G16", "request line over 8 KiB", wire(&format!("GET /accounts/{} HTTP/1.1", "a".repeat(9000)), "Connection: close\r\n\r\n"), refused(414, "http.uri_too_long")),
        case("G18", "client forwarding headers", get("/accounts")
            .header("x-forwarded-for", "6.6.6.6")
            .header("forwarded", "for=6.6.6.6")
            .header("x-real-ip", "6.6.6.6")
            .header("true-client-ip", "6.6.6.6"), Expect::Allowed)
            .check(|o| {
                lacks(&["forwarded", "x-real-ip", "true-client-ip"])(o)?;
                let xff: Vec<_> = o.forwarded[0].headers.get_all("x-forwarded-for").iter().collect();
                if xff.len() == 1 && xff[0] == "127.0.0.1" { Ok(()) } else { Err(format!("x-forwarded-for {xff:?}")) }
            }),
        case("G19", "client certificate headers", get("/accounts")
            .header("x-forwarded-client-cert", "Hash=forged")
            .header("client-cert", ":Zm9yZ2Vk:")
            .header("client-cert-chain", ":Zm9yZ2Vk:"), Expect::Allowed)
            .check(|o| {
                lacks(&["x-forwarded-client-cert", "client-cert-chain"])(o)?;
                match o.forwarded[0].headers.get("client-cert") {
                    Some(v) if v != ":Zm9yZ2Vk:" && v.len() > 100 => Ok(()),
                    v => Err(format!("client-cert {v:?}")),
                }
            }),
        case("G20", "customer IP that is not an IP literal", get("/accounts").header("x-fapi-customer-ip-address", "10.0.0.1, 6.6.6.6"), r400("fapi.customer_ip_invalid")),
        case("G20", "customer IP literal: forwarded as data", get("/accounts").header("x-fapi-customer-ip-address", "2001:db8::1"), Expect::Allowed)
            .check(|o| match o.forwarded[0].headers.get("x-fapi-customer-ip-address") {
                Some(v) if v == "2001:db8::1" => Ok(()),
                v => Err(format!("{v:?}")),
            }),
        case("G21", "X_Forwarded_For", get("/accounts").header("X_Forwarded_For", "1.2.3.4"), r400("http.header_underscore")),
        case("G21", "x_fapi_customer_ip_address", get("/accounts").header("x_fapi_customer_ip_address", "1.2.3.4"), r400("http.header_underscore")),
        case("G21", "Authorization_", get("/accounts").header("Authorization_", "Bearer x"), r400("http.header_underscore")),
        case("G22", "internal headers", get("/accounts")
            .header("x-envoy-internal", "true")
            .header("x-portcullis-client-id", "forged")
            .header("x-portcullis-subject", "forged"), Expect::Allowed)
            .check(lacks(&["x-envoy-internal", "x-portcullis-client-id", "x-portcullis-subject"])),
        case("G23", "h2c upgrade", get("/accounts").header("connection", "Upgrade, HTTP2-Settings").header("upgrade", "h2c").header("http2-settings", "AAMAAABkAAQCAAAAAAIAAAAA"), r400("http.upgrade_refused")),
        case("G23", "websocket upgrade", get("/accounts").header("connection", "Upgrade").header("upgrade", "websocket").header("sec-websocket-key", "dGhlIHNhbXBsZSBub25jZQ=="), r400("http.upgrade_refused")),
        raw("G23", "CONNECT to an API route", wire("CONNECT /accounts HTTP/1.1", "Connection: close\r\n\r\n"), refused(405, "route.method_not_allowed")),
        raw("G29", "slowloris: headers trickled past the header-read timeout", "GET /accounts HTTP/1.1\r\nHost: localhost\r\n{pause:1500}X-A: 1\r\n\r\n".into(), Expect::Parser(0, "http_header_timeout")),
        raw("G30", "slow POST: a chunked body trickled past the request timeout", post_raw("Transfer-Encoding: chunked", "2\r\nok\r\n{pause:2500}2\r\nok\r\n0\r\n\r\n"), refused(408, "http.body_timeout")),
        case("G32", "body over the route limit (Content-Length)", Req::post("/payments", &[b'x'; 2000]), refused(413, "http.body_too_large")),
        raw("G32", "body over the route limit (chunked)", post_raw("Transfer-Encoding: chunked", &format!("400\r\n{}\r\n400\r\n{}\r\n0\r\n\r\n", "y".repeat(1024), "y".repeat(1024))), refused(413, "http.body_too_large")),
        raw("G33", "Expect: 100-continue with a huge Content-Length", post_raw("Content-Length: 10000000\r\nExpect: 100-continue", ""), refused(413, "http.body_too_large"))
            .check(|o| if o.responses == 1 { Ok(()) } else { Err(format!("{} responses (a 100 Continue?)", o.responses)) }),
    ]);
    v
}

/// HEADERS on stream 1 (END_STREAM unless `data` follows) from these fields, in this order;
/// `{id}` in a value is the interaction id.
fn h2_fields(fields: &[(&str, &str)], data: Option<&'static [u8]>) -> impl Fn(&str) -> Vec<u8> {
    let fields: Vec<(String, String)> = fields
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    move |id| {
        let f: Vec<(String, String)> = fields
            .iter()
            .map(|(k, v)| (k.clone(), v.replace("{id}", id)))
            .collect();
        let refs: Vec<(&str, &str)> = f.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        let mut out = H2::headers_frame(1, &h2raw::block(&refs), data.is_none());
        if let Some(d) = data {
            out.extend(h2raw::frame(h2raw::DATA, h2raw::END_STREAM, 1, d));
        }
        out
    }
}

const PSEUDO: [(&str, &str); 5] = [
    (":method", "GET"),
    (":scheme", "https"),
    (":authority", "localhost"),
    (":path", "/accounts"),
    ("x-fapi-interaction-id", "{id}"),
];

fn with(extra: &[(&'static str, &'static str)]) -> Vec<(&'static str, &'static str)> {
    let mut v = PSEUDO.to_vec();
    v.extend_from_slice(extra);
    v
}

/// Group G, HTTP/2 to HTTP/1 downgrade (G10), and HTTP/2 pseudo-header abuse (Gx).
fn group_g_h2() -> Vec<Case> {
    let reset = Expect::H2Reset(h2raw::PROTOCOL_ERROR);
    let post = [
        (":method", "POST"),
        (":scheme", "https"),
        (":authority", "localhost"),
        (":path", "/payments"),
        ("x-fapi-interaction-id", "{id}"),
    ];
    let mut mismatch = post.to_vec();
    mismatch.push(("content-length", "10"));
    vec![
        h2(
            "G10",
            "CRLF inside a header value",
            h2_fields(&with(&[("x-a", "a\r\nx-injected: 1")]), None),
            reset,
        ),
        h2(
            "G10",
            "upper case in a header name",
            h2_fields(&with(&[("X-Upper", "1")]), None),
            reset,
        ),
        h2(
            "G10",
            "colon inside a header name",
            h2_fields(&with(&[("x:a", "1")]), None),
            reset,
        ),
        h2(
            "G10",
            "transfer-encoding over HTTP/2",
            h2_fields(&with(&[("transfer-encoding", "chunked")]), None),
            reset,
        ),
        h2(
            "G10",
            "connection over HTTP/2",
            h2_fields(&with(&[("connection", "keep-alive")]), None),
            reset,
        ),
        h2(
            "G10",
            "content-length that disagrees with DATA",
            h2_fields(&mismatch, Some(b"ok")),
            Expect::H2ResetRecorded(1, "http.body_read"),
        ),
        h2(
            "G10",
            "a pseudo-header after a regular header",
            h2_fields(
                &[
                    (":method", "GET"),
                    (":scheme", "https"),
                    ("x-fapi-interaction-id", "{id}"),
                    (":authority", "localhost"),
                    (":path", "/accounts"),
                ],
                None,
            ),
            reset,
        ),
        h2(
            "Gx01",
            "two :path pseudo-headers",
            h2_fields(&with(&[(":path", "/admin")]), None),
            reset,
        ),
        h2("Gx02", "no :method", h2_fields(&PSEUDO[1..], None), reset),
        h2(
            "Gx03",
            "empty :path",
            h2_fields(
                &[
                    (":method", "GET"),
                    (":scheme", "https"),
                    (":authority", "localhost"),
                    (":path", ""),
                    ("x-fapi-interaction-id", "{id}"),
                ],
                None,
            ),
            reset,
        ),
        h2(
            "Gx04",
            "unknown pseudo-header",
            h2_fields(&with(&[(":protocol-x", "1")]), None),
            reset,
        ),
        h2(
            "Gx05",
            "a response pseudo-header in a request",
            h2_fields(&with(&[(":status", "200")]), None),
            reset,
        ),
        h2(
            "Gx06",
            ":path without a leading slash",
            h2_fields(
                &[
                    (":method", "GET"),
                    (":scheme", "https"),
                    (":authority", "localhost"),
                    (":path", "accounts"),
                    ("x-fapi-interaction-id", "{id}"),
                ],
                None,
            ),
            reset,
        ),
        h2(
            "Gx07",
            "Host that disagrees with :authority",
            h2_fields(&with(&[("host", "admin.internal")]), None),
            refused(421, "http.misdirected"),
        ),
        h2(
            "Gx08",
            "te other than trailers",
            h2_fields(&with(&[("te", "gzip")]), None),
            reset,
        ),
        h2(
            "G14",
            "20 KiB header list over HTTP/2 (under h2's limit, over ours)",
            |id| {
                let mut b = h2raw::request_block("GET", "/accounts", id, &[]);
                for i in 0..20 {
                    h2raw::literal(&mut b, format!("x-big{i}").as_bytes(), &[b'v'; 1024]);
                }
                split_block(1, &b, true)
            },
            refused(431, "http.headers_too_large"),
        ),
        h2(
            "Gx09",
            "a request smuggled in a header value for the HTTP/1 upstream",
            h2_fields(&with(&[("x-a", "1\r\n\r\nGET /admin HTTP/1.1")]), None),
            reset,
        ),
    ]
}

/// Cases docs/attacks.md does not list: Host handling, request-target forms, look-alikes,
/// duplicate and case-variant headers, injection and oversize values.
fn extras() -> Vec<Case> {
    let r400 = |reason| refused(400, reason);
    vec![
        raw("Gx10", "HTTP/1.0 without Host", "GET /accounts HTTP/1.0\r\nx-fapi-interaction-id: {id}\r\n\r\n".into(), r400("http.missing_host")),
        raw("Gx11", "HTTP/1.1 without Host", "GET /accounts HTTP/1.1\r\nx-fapi-interaction-id: {id}\r\nConnection: close\r\n\r\n".into(), r400("http.missing_host")),
        raw("Gx12", "two Host headers", wire("GET /accounts HTTP/1.1", "Host: localhost\r\nConnection: close\r\n\r\n"), r400("http.missing_host")),
        raw("Gx13", "case-variant Host headers", wire("GET /accounts HTTP/1.1", "HOST: admin.internal\r\nConnection: close\r\n\r\n"), r400("http.missing_host")),
        raw("Gx14", "Host with userinfo", "GET /accounts HTTP/1.1\r\nHost: evil@localhost\r\nx-fapi-interaction-id: {id}\r\nConnection: close\r\n\r\n".into(), r400("http.missing_host")),
        raw("Gx15", "absolute-form naming ourselves", wire("GET https://localhost/accounts HTTP/1.1", "Connection: close\r\n\r\n"), r400("path.not_origin_form")),
        raw("Gx16", "asterisk-form", wire("OPTIONS * HTTP/1.1", "Connection: close\r\n\r\n"), r400("path.not_origin_form")),
        // Refused rather than repaired: a hop that honours the nomination would strip fields the
        // proxy vouches for or verified (see R08 in tests/review.rs).
        case("Gx17", "Connection naming the headers the proxy adds", get("/accounts").header("connection", "x-forwarded-for, client-cert, x-fapi-interaction-id"), r400("http.connection_nominates")),
        case("Gx18", "Proxy-Authorization is not forwarded", get("/accounts").header("proxy-authorization", "Basic dXNlcjpwYXNz"), Expect::Allowed)
            .check(lacks(&["proxy-authorization"])),
        case("Gx19", "a 20 KiB single header value", get("/accounts").header("x-fapi-auth-date", "d".repeat(20 * 1024)), refused(431, "http.headers_too_large")),
        case("Gx20", "Cyrillic look-alike in a segment, encoded", get("/%D0%B0ccounts"), r400("path.non_ascii")),
        raw("Gx21", "Cyrillic look-alike in a segment, raw UTF-8", wire("GET /аccounts HTTP/1.1", "Connection: close\r\n\r\n"), r400("path.non_ascii")),
        case("Gx22", "right-to-left override in an id", get("/accounts/1%E2%80%AE2"), r400("path.non_ascii")),
        case("Gx23", "needless escape of a letter", get("/%61ccounts"), r400("path.needless_encoding")),
        case("Gx24", "malformed escape", get("/accounts/1%zz"), r400("path.bad_escape")),
        case("Gx25", "encoded fragment stays data", get("/accounts/1%23x"), Expect::Allowed)
            .check(forwarded_path("/accounts/1%23x")),
        case("Gx26", "method override header", get("/accounts").header("x-http-method-override", "DELETE"), r400("http.method_override")),
        case("Gx27", "method override (x-method-override)", get("/accounts").header("x-method-override", "DELETE"), r400("http.method_override")),
        case("Gx28", "interaction id with CR/LF-like garbage is replaced", get("/accounts").header("x-fapi-interaction-id", "not-a-uuid\"},{\"admin\":true"), Expect::Allowed)
            .check(|o| match o.headers.get("x-fapi-interaction-id").and_then(|v| uuid::Uuid::parse_str(v.to_str().ok()?).ok()) {
                Some(_) => Ok(()),
                None => Err(format!("{:?}", o.headers.get("x-fapi-interaction-id"))),
            }),
        case("Gx29", "duplicate interaction ids", get("/accounts").header("x-fapi-interaction-id", uuid::Uuid::new_v4().to_string()).header("x-fapi-interaction-id", uuid::Uuid::new_v4().to_string()), Expect::Allowed)
            .check(|o| match o.forwarded[0].headers.get_all("x-fapi-interaction-id").iter().count() {
                1 => Ok(()),
                n => Err(format!("{n} interaction ids forwarded")),
            }),
    ]
}

/// The memory-sensitive tests of this binary run one at a time (RSS is per process).
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_http_attack_table() {
    let _serial = SERIAL.lock().await;
    let lab = lab().await;
    let mut cases = group_f();
    cases.extend(group_g());
    cases.extend(group_g_h2());
    cases.extend(extras());
    run(&lab, cases).await;
}

// ---------------------------------------------------------------------------------------------
// HTTP/2 floods (G24–G28): each runs against a proxy while a good client on its own
// connection keeps sending requests; the good client must see every one answered 200.
// Memory is bounded by the proxy's HTTP/2 settings (max_concurrent_streams 100, pending-accept
// resets 20, local-error resets 1024, max_header_list_size 2 × (16 KiB + 8 KiB)); the test
// measures it as the growth of this process's RSS (proxy, upstreams and attacker all live here)
// against the volume the attacker sent. CPU is the user + system time of the proxy's own
// data-plane worker threads (`portcullis_worker_cpu_seconds_total`; the attacker, the good
// client and the upstreams run on the test's threads), bounded per flood.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

/// A good client: one HTTP/2 connection as tpp1, GET /accounts every 20 ms until stopped.
struct Good {
    stop: Arc<AtomicBool>,
    answered: Arc<std::sync::atomic::AtomicUsize>,
    task: tokio::task::JoinHandle<(usize, Vec<String>, Duration)>,
}

impl Good {
    async fn start(p: &common::Proxy) -> Good {
        let mut c = p.client(Some("tpp1"), true).await.unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let s = stop.clone();
        let answered = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let n = answered.clone();
        let task = tokio::spawn(async move {
            let (mut ok, mut bad, mut worst) = (0, Vec::new(), Duration::ZERO);
            while !s.load(Ordering::SeqCst) {
                let t = std::time::Instant::now();
                let r = http::Request::get("https://localhost/accounts")
                    .body(http_body_util::Full::new(bytes::Bytes::new()))
                    .unwrap();
                match tokio::time::timeout(Duration::from_secs(10), c.send(r)).await {
                    Ok(Ok(a)) if a.status == 200 => {
                        ok += 1;
                        n.fetch_add(1, Ordering::SeqCst);
                    }
                    Ok(Ok(a)) => bad.push(format!("status {}", a.status)),
                    Ok(Err(e)) => bad.push(e.to_string()),
                    Err(_) => bad.push("no answer in 10 s".into()),
                }
                worst = worst.max(t.elapsed());
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            (ok, bad, worst)
        });
        Good {
            stop,
            answered,
            task,
        }
    }

    /// Stops the client; asserts it was served throughout.
    /// Lets the client get at least 5 more answers (10 s at most), then stops it.
    async fn finish(self, what: &str) -> (usize, Duration) {
        let target = self.answered.load(Ordering::SeqCst) + 5;
        for _ in 0..500 {
            if self.answered.load(Ordering::SeqCst) >= target || self.task.is_finished() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        self.stop.store(true, Ordering::SeqCst);
        let (ok, bad, worst) = self.task.await.unwrap();
        assert!(bad.is_empty(), "{what}: the good client failed: {bad:?}");
        assert!(ok >= 5, "{what}: the good client got only {ok} answers");
        assert!(
            worst < Duration::from_secs(5),
            "{what}: a good request took {worst:?}"
        );
        (ok, worst)
    }
}

fn id() -> String {
    uuid::Uuid::new_v4().to_string()
}

/// HEADERS without END_HEADERS, then CONTINUATION frames: `block` split into 16 KiB pieces.
fn split_block(stream: u32, block: &[u8], end_stream: bool) -> Vec<u8> {
    let mut out = Vec::new();
    let chunks: Vec<&[u8]> = block.chunks(16 * 1024).collect();
    for (i, c) in chunks.iter().enumerate() {
        let last = i + 1 == chunks.len();
        let flags = if last { h2raw::END_HEADERS } else { 0 };
        if i == 0 {
            let es = if end_stream { h2raw::END_STREAM } else { 0 };
            out.extend(h2raw::frame(h2raw::HEADERS, flags | es, stream, c));
        } else {
            out.extend(h2raw::frame(h2raw::CONTINUATION, flags, stream, c));
        }
    }
    out
}

/// Flood requests that reached an upstream (the floods ask for /accounts/attack; the good
/// client for /accounts).
fn attacker_forwarded(lab: &Lab) -> usize {
    lab.forwarded()
        .iter()
        .filter(|s| s.path_and_query == "/accounts/attack")
        .count()
}

// CPU limits per flood, seconds of the proxy's worker threads (unoptimized test build; a run
// took: rapid reset and CONTINUATION < 0.01 s — the connection is closed early —, 130 streams
// 0.11 s, header lists 0.02 s, each control flood of 20,000 frames ~0.2 s).
const CPU_LIMIT_RAPID_RESET: f64 = 1.0;
const CPU_LIMIT_CONTINUATION: f64 = 1.0;
const CPU_LIMIT_STREAMS: f64 = 1.0;
const CPU_LIMIT_HEADER_LISTS: f64 = 0.5;
const CPU_LIMIT_CONTROL_FLOOD: f64 = 1.5;

/// CPU seconds the proxy's data-plane worker threads have used so far.
fn proxy_cpu(lab: &Lab) -> f64 {
    let workers = lab.p.shared.metrics.worker_cpu_seconds();
    assert!(
        !workers.is_empty(),
        "no worker thread's CPU time is readable"
    );
    workers.iter().map(|(_, s)| s).sum()
}

/// Prints what a flood cost the proxy in CPU and asserts it stayed within `limit` seconds
/// (the tests run unoptimized; the limits are several times what a run takes).
fn assert_cpu(what: &str, cpu0: f64, lab: &Lab, sent: usize, limit: f64) {
    let used = proxy_cpu(lab) - cpu0;
    eprintln!("{what}: proxy CPU {used:.2} s for {} KiB sent", sent / 1024);
    assert!(
        used <= limit,
        "{what}: the proxy spent {used:.2} s of CPU (limit {limit} s)"
    );
}

fn report(what: &str, sent: usize, rss: (u64, u64), seen: &h2raw::Seen, good: (usize, Duration)) {
    eprintln!(
        "{what}: sent {} KiB; RSS {} -> {} KiB; goaway {:?}; {} resets (codes {:?}); {} streams answered; closed {}; good client {} answers, worst {:?}",
        sent / 1024,
        rss.0,
        rss.1,
        seen.goaway.as_ref().map(|g| (g.0, g.1)),
        seen.resets.len(),
        seen.resets.values().collect::<std::collections::BTreeSet<_>>(),
        seen.headers.len(),
        seen.closed,
        good.0,
        good.1
    );
}

/// G24: HEADERS then RST_STREAM at once, 5,000 times, for a route whose upstream is slow.
async fn rapid_reset(lab: &Lab) {
    let good = Good::start(&lab.p).await;
    let rss0 = h2raw::rss_kib();
    let cpu0 = proxy_cpu(lab);
    let slow_before = lab.slow.count();
    let mut a = H2::connect(lab.p.addr, common::certs(), "tpp2").await;
    let (mut buf, mut sent) = (Vec::new(), 0);
    for _ in 0..5000 {
        let s = a.stream();
        let block = h2raw::request_block("GET", "/slow", &id(), &[]);
        buf.extend(H2::headers_frame(s, &block, true));
        buf.extend(h2raw::rst(s, h2raw::CANCEL));
        if buf.len() > 32 * 1024 {
            sent += buf.len();
            if !a.send(&buf).await {
                break;
            }
            buf.clear();
        }
    }
    let seen = a
        .wait(Duration::from_secs(5), |s| s.goaway.is_some() || s.closed)
        .await;
    let rss1 = h2raw::rss_kib();
    let forwarded = lab.slow.count() - slow_before;
    let g = good.finish("rapid reset").await;
    report("G24 rapid reset", sent, (rss0, rss1), &seen, g);
    assert_cpu("G24 rapid reset", cpu0, lab, sent, CPU_LIMIT_RAPID_RESET);
    eprintln!("G24: {forwarded} of 5000 reset requests reached the slow upstream");
    let goaway = seen.goaway.as_ref().map(|g| g.1);
    assert_eq!(goaway, Some(h2raw::ENHANCE_YOUR_CALM), "{seen:?}");
    // The GOAWAY comes after at most the pending-reset limit (20) of streams.
    assert!(seen.goaway.as_ref().unwrap().0 <= 2 * 25 + 1, "{seen:?}");
    assert!(
        forwarded <= 25,
        "{forwarded} reset requests reached the upstream"
    );
    assert!(
        rss1.saturating_sub(rss0) < 64 * 1024,
        "RSS grew {rss0} -> {rss1} KiB"
    );
}

/// G25: one HEADERS and then CONTINUATION frames without END_HEADERS, up to 64 MiB.
async fn continuation_flood(lab: &Lab) {
    let good = Good::start(&lab.p).await;
    let rss0 = h2raw::rss_kib();
    let cpu0 = proxy_cpu(lab);
    let a = H2::connect(lab.p.addr, common::certs(), "tpp2").await;
    let first = h2raw::request_block("GET", "/accounts/attack", &id(), &[]);
    let mut sent = 0;
    let mut ok = a
        .send(&h2raw::frame(h2raw::HEADERS, h2raw::END_STREAM, 1, &first))
        .await;
    let mut piece = Vec::new();
    for i in 0..16 {
        h2raw::literal(&mut piece, format!("x-c{i}").as_bytes(), &[b'v'; 1000]);
    }
    let cont = h2raw::frame(h2raw::CONTINUATION, 0, 1, &piece);
    let batch: Vec<u8> = cont.iter().copied().cycle().take(cont.len() * 16).collect();
    while ok && sent < 64 << 20 {
        ok = a.send(&batch).await;
        sent += batch.len();
        if a.snapshot().goaway.is_some() {
            break;
        }
    }
    let seen = a.wait(Duration::from_secs(5), |s| s.closed).await;
    let rss1 = h2raw::rss_kib();
    let g = good.finish("continuation flood").await;
    report("G25 CONTINUATION flood", sent, (rss0, rss1), &seen, g);
    assert_cpu(
        "G25 CONTINUATION flood",
        cpu0,
        lab,
        sent,
        CPU_LIMIT_CONTINUATION,
    );
    assert!(seen.goaway.is_some() || seen.closed, "{seen:?}");
    assert!(
        sent < 64 << 20,
        "the server read 64 MiB of one header block"
    );
    assert!(
        !seen.headers.contains(&1),
        "the flooded stream was answered"
    );
    assert!(
        rss1.saturating_sub(rss0) < 32 * 1024,
        "RSS grew {rss0} -> {rss1} KiB"
    );
    assert_eq!(attacker_forwarded(lab), 0);
}

/// G27: 130 requests at once on one connection to a route whose upstream holds each 1.5 s.
async fn stream_limit(lab: &Lab) {
    let good = Good::start(&lab.p).await;
    let before = lab.slow.count();
    let cpu0 = proxy_cpu(lab);
    let mut a = H2::connect(lab.p.addr, common::certs(), "tpp2").await;
    let settings = a
        .wait(Duration::from_secs(3), |s| !s.settings.is_empty())
        .await
        .settings;
    assert!(
        settings.contains(&(3, 100)),
        "MAX_CONCURRENT_STREAMS: {settings:?}"
    );
    let mut buf = Vec::new();
    let mut streams = Vec::new();
    for _ in 0..130 {
        let s = a.stream();
        streams.push(s);
        buf.extend(H2::headers_frame(
            s,
            &h2raw::request_block("GET", "/slow", &id(), &[]),
            true,
        ));
    }
    a.send(&buf).await;
    let seen = a
        .wait(Duration::from_secs(10), |s| {
            streams
                .iter()
                .all(|st| s.ended.contains(st) || s.resets.contains_key(st))
                || s.goaway.is_some()
        })
        .await;
    let g = good.finish("stream limit").await;
    report("G27 streams over the limit", buf.len(), (0, 0), &seen, g);
    assert_cpu(
        "G27 streams over the limit",
        cpu0,
        lab,
        buf.len(),
        CPU_LIMIT_STREAMS,
    );
    let answered = streams.iter().filter(|s| seen.headers.contains(s)).count();
    let refused = streams
        .iter()
        .filter(|s| seen.resets.get(s) == Some(&h2raw::REFUSED_STREAM))
        .count();
    eprintln!(
        "G27: {answered} answered, {refused} refused, goaway {:?}",
        seen.goaway
    );
    assert_eq!(answered, 100, "every stream within the limit is served");
    assert_eq!(
        refused, 30,
        "every stream over the limit is refused (REFUSED_STREAM)"
    );
    assert!(lab.slow.count() - before <= 100);
}

/// G14/G26 over HTTP/2: a header list over h2's limit (64 KiB of literals), and an HPACK
/// bomb (one 4 KiB entry in the dynamic table referenced 100 times: ~400 KiB decoded).
async fn oversized_header_lists(lab: &Lab) {
    let good = Good::start(&lab.p).await;
    let rss0 = h2raw::rss_kib();
    let cpu0 = proxy_cpu(lab);
    let a = H2::connect(lab.p.addr, common::certs(), "tpp2").await;
    let mut big = h2raw::request_block("GET", "/accounts/attack", &id(), &[]);
    for i in 0..64 {
        h2raw::literal(&mut big, format!("x-big{i}").as_bytes(), &[b'v'; 1024]);
    }
    a.send(&split_block(1, &big, true)).await;
    let seen = a
        .wait(Duration::from_secs(3), |s| {
            s.ended.contains(&1) || s.resets.contains_key(&1) || s.goaway.is_some() || s.closed
        })
        .await;
    report(
        "G14 64 KiB header list",
        big.len(),
        (rss0, h2raw::rss_kib()),
        &seen,
        (0, Duration::ZERO),
    );
    let bomb_conn = H2::connect(lab.p.addr, common::certs(), "tpp2").await;
    let mut bomb = h2raw::request_block("GET", "/accounts/attack", &id(), &[]);
    h2raw::literal_indexed(&mut bomb, b"x-bomb", &[b'b'; 4000]);
    for _ in 0..100 {
        h2raw::indexed(&mut bomb, 62);
    }
    bomb_conn.send(&split_block(1, &bomb, true)).await;
    let bombed = bomb_conn
        .wait(Duration::from_secs(3), |s| {
            s.ended.contains(&1) || s.resets.contains_key(&1) || s.goaway.is_some() || s.closed
        })
        .await;
    let rss1 = h2raw::rss_kib();
    let g = good.finish("oversized header lists").await;
    report("G26 HPACK bomb", bomb.len(), (rss0, rss1), &bombed, g);
    assert_cpu(
        "G14/G26 oversized header lists",
        cpu0,
        lab,
        big.len() + bomb.len(),
        CPU_LIMIT_HEADER_LISTS,
    );
    // Over h2's own limit the codec answers 431 itself (no body, no handler: no record); the
    // bomb, decoded past the limit, ends the connection.
    assert_eq!(seen.status(1), Some(431), "64 KiB list: {seen:?}");
    assert_eq!(
        bombed.goaway.as_ref().map(|g| g.1),
        Some(h2raw::ENHANCE_YOUR_CALM),
        "HPACK bomb: {bombed:?}"
    );
    assert!(
        rss1.saturating_sub(rss0) < 16 * 1024,
        "RSS grew {rss0} -> {rss1} KiB"
    );
    assert_eq!(
        attacker_forwarded(lab),
        0,
        "nothing of either reached an upstream"
    );
}

/// G28: control-frame floods — 20,000 each of PING, SETTINGS, PRIORITY and WINDOW_UPDATE,
/// and empty DATA frames on an open request stream.
async fn control_floods(lab: &Lab) {
    let good = Good::start(&lab.p).await;
    let rss0 = h2raw::rss_kib();
    let mut outcomes = Vec::new();
    let floods: Vec<(&str, Vec<u8>, Vec<u8>)> = vec![
        ("PING", Vec::new(), h2raw::frame(h2raw::PING, 0, 0, &[7; 8])),
        ("SETTINGS", Vec::new(), h2raw::settings(&[(4, 65535)])),
        (
            "PRIORITY",
            Vec::new(),
            h2raw::frame(h2raw::PRIORITY, 0, 3, &[0, 0, 0, 0, 16]),
        ),
        (
            "WINDOW_UPDATE",
            Vec::new(),
            h2raw::frame(h2raw::WINDOW_UPDATE, 0, 0, &1u32.to_be_bytes()),
        ),
        (
            "empty DATA",
            H2::headers_frame(
                1,
                &h2raw::request_block("POST", "/payments", &id(), &[]),
                false,
            ),
            h2raw::frame(h2raw::DATA, 0, 1, &[]),
        ),
    ];
    for (what, open, one) in floods {
        let cpu0 = proxy_cpu(lab);
        let a = H2::connect(lab.p.addr, common::certs(), "tpp2").await;
        a.send(&open).await;
        let batch: Vec<u8> = one.iter().copied().cycle().take(one.len() * 1000).collect();
        let mut sent = 0;
        for _ in 0..20 {
            if !a.send(&batch).await {
                break;
            }
            sent += batch.len();
        }
        let seen = a
            .wait(Duration::from_secs(3), |s| s.goaway.is_some() || s.closed)
            .await;
        eprintln!(
            "G28 {what} flood: sent {} KiB; goaway {:?}; closed {}; {} PING ACKs",
            sent / 1024,
            seen.goaway.as_ref().map(|g| (g.0, g.1)),
            seen.closed,
            seen.ping_acks
        );
        assert_cpu(
            &format!("G28 {what} flood"),
            cpu0,
            lab,
            sent,
            CPU_LIMIT_CONTROL_FLOOD,
        );
        outcomes.push((what, seen));
    }
    // Control frames cost one answer each (PING ACK, SETTINGS ACK) and are tolerated; empty
    // DATA frames carry nothing and end the connection (h2's limit of 100).
    for (what, seen) in &outcomes {
        let code = seen.goaway.as_ref().map(|g| g.1);
        match *what {
            "empty DATA" => assert_eq!(code, Some(h2raw::ENHANCE_YOUR_CALM), "{what}: {seen:?}"),
            "PING" => assert_eq!(seen.ping_acks, 20_000, "{what}"),
            _ => assert_eq!(code, None, "{what}: {seen:?}"),
        }
    }
    let rss1 = h2raw::rss_kib();
    let g = good.finish("control floods").await;
    eprintln!(
        "G28: RSS {rss0} -> {rss1} KiB; good client {} answers, worst {:?}",
        g.0, g.1
    );
    assert!(
        rss1.saturating_sub(rss0) < 32 * 1024,
        "RSS grew {rss0} -> {rss1} KiB"
    );
    assert_eq!(attacker_forwarded(lab), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http2_floods_are_bounded_while_a_good_client_is_served() {
    let _serial = SERIAL.lock().await;
    let lab = lab().await;
    let before = lab.up.count();
    rapid_reset(&lab).await;
    continuation_flood(&lab).await;
    stream_limit(&lab).await;
    oversized_header_lists(&lab).await;
    control_floods(&lab).await;
    eprintln!(
        "good-client requests forwarded: {}",
        lab.up.count() - before
    );
}
