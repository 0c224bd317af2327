//! HTTP framing, size limits and header hygiene, checked before anything reads the request.
//!
//! hyper already refuses what it cannot parse (obs-fold, bad header names, spaces before the
//! colon, malformed chunking) with a 400 and a closed connection. These checks cover what hyper
//! lets through but a proxy must not: both Content-Length and Transfer-Encoding, repeated
//! Content-Length, any Transfer-Encoding but `chunked`, header names with `_`, method-override
//! and upgrade headers, and the configured header and URI limits.

// Public for the `internals` feature (the fuzz harness and the benchmarks drive it directly).
#![cfg_attr(not(feature = "internals"), allow(unreachable_pub))]

use http::header::{CONTENT_LENGTH, HOST, TRANSFER_ENCODING};
use http::request::Parts;

use crate::config::Limits;

portcullis_base::variants! {
    #[derive(Clone, Copy, Debug, PartialEq, Eq)]
    pub enum HttpError {
        ConflictingFraming,
        BadContentLength,
        BadTransferEncoding,
        UriTooLong,
        TooManyHeaders,
        HeadersTooLarge,
        HeaderUnderscore,
        MethodOverride,
        /// `Connection` nominates an end-to-end field (which a hop would then strip).
        ConnectionNominates,
        UpgradeRefused,
        MisdirectedHost,
        MissingHost,
        BodyTooLarge,
        BodyTimeout,
        BodyRead,
        /// The body's `Content-Type` is not one the route takes.
        UnsupportedMediaType,
        /// `Accept` rules out every media type the route answers with.
        NotAcceptable,
    }
}

/// Headers with which frameworks let a request name another method (ASP.NET, Spring's
/// HiddenHttpMethodFilter variants, Express's method-override, Laravel, nginx and IIS rewrites).
const METHOD_OVERRIDE: &[&str] = &[
    "x-http-method-override",
    "x-http-method",
    "x-method-override",
    "x-original-method",
];

/// The query parameter Rails, Laravel, Symfony and Express's method-override read as the
/// method (compared after decoding, ignoring case).
pub const METHOD_PARAM: &str = "_method";

/// What `Connection` may nominate: the hop-by-hop fields of RFC 9110 §7.6.1 that a client has a
/// reason to send (an upgrade is refused on its own, by name). Anything else is an end-to-end
/// field a hop would strip.
const CONNECTION_OPTIONS: &[&str] = &["close", "keep-alive", "te", "upgrade", "http2-settings"];

pub fn check(parts: &Parts, limits: &Limits, server_names: &[String]) -> Result<(), HttpError> {
    let uri_len = parts.uri.path_and_query().map_or(0, |pq| pq.as_str().len());
    if uri_len > limits.max_uri_bytes {
        return Err(HttpError::UriTooLong);
    }
    let headers = &parts.headers;
    if headers.len() > limits.max_headers {
        return Err(HttpError::TooManyHeaders);
    }
    // One pass over the fields: size, and the names we refuse outright.
    let mut bytes = 0usize;
    for (name, value) in headers {
        let name = name.as_str();
        bytes += name.len() + value.len() + 4;
        if name.contains('_') {
            return Err(HttpError::HeaderUnderscore);
        }
        if METHOD_OVERRIDE.contains(&name) {
            return Err(HttpError::MethodOverride);
        }
        if name == "connection" && !connection_options_ok(value.as_bytes()) {
            return Err(HttpError::ConnectionNominates);
        }
        if name == "upgrade" || name == "http2-settings" {
            return Err(HttpError::UpgradeRefused);
        }
    }
    if bytes > limits.max_header_bytes {
        return Err(HttpError::HeadersTooLarge);
    }
    let mut cl = headers.get_all(CONTENT_LENGTH).iter();
    if let Some(v) = cl.next() {
        let ok = !v.is_empty() && v.as_bytes().iter().all(u8::is_ascii_digit);
        if !ok || cl.next().is_some() {
            return Err(HttpError::BadContentLength);
        }
    }
    let mut te = headers.get_all(TRANSFER_ENCODING).iter();
    if let Some(v) = te.next() {
        if headers.contains_key(CONTENT_LENGTH) {
            return Err(HttpError::ConflictingFraming);
        }
        if te.next().is_some()
            || !v.as_bytes().eq_ignore_ascii_case(b"chunked")
            || parts.version != http::Version::HTTP_11
        {
            return Err(HttpError::BadTransferEncoding);
        }
    }
    check_host(parts, server_names)
}

/// RFC 9110 §7.6.1: `Connection` lists fields the next hop removes. A client that nominates a
/// signature, an idempotency key or a content type would have the proxy verify a field the
/// upstream never sees, so only the hop-by-hop options are accepted.
fn connection_options_ok(value: &[u8]) -> bool {
    value.split(|&b| b == b',').all(|opt| {
        let opt = opt.trim_ascii();
        opt.is_empty()
            || CONNECTION_OPTIONS
                .iter()
                .any(|o| o.as_bytes().eq_ignore_ascii_case(opt))
    })
}

/// Whether the query carries a method override (`_method`, however encoded or cased).
pub fn query_overrides_method(query: &str) -> bool {
    portcullis_base::path::query_pairs(query).any(|(k, _)| {
        match portcullis_base::path::decode_query_component(k) {
            Some(name) => portcullis_base::path::same_name_ignoring_case(
                name.split('[').next().unwrap_or_default(),
                METHOD_PARAM,
            ),
            // An undecodable name cannot be told apart from `_method`.
            None => true,
        }
    })
}

/// The body length a message declares in `Content-Length`, when it declares one we read.
pub fn declared_length(headers: &http::HeaderMap) -> Option<u64> {
    headers
        .get(CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok())
}

/// The request's host name, lower-cased, without port: `:authority` for HTTP/2, else `Host`.
pub fn host(parts: &Parts) -> Option<String> {
    let raw = match parts.uri.authority() {
        Some(a) => a.host().to_string(),
        None => {
            let v = parts.headers.get(HOST)?.to_str().ok()?;
            let a: http::uri::Authority = v.parse().ok()?;
            a.host().to_string()
        }
    };
    Some(raw.to_ascii_lowercase())
}

/// The request's external target URI without query, for DPoP `htu` (RFC 9449 §4.3 check 9):
/// `base` (the configured public base URL) or `https://` + Host / `:authority`, then the path,
/// normalized as the proof's `htu` is.
pub fn external_htu(parts: &Parts, base: Option<&str>) -> Option<String> {
    let path = parts.uri.path();
    let uri = match base {
        Some(b) => format!("{b}{path}"),
        None => {
            let authority = match parts.uri.authority() {
                Some(a) => a.as_str().to_string(),
                None => parts.headers.get(HOST)?.to_str().ok()?.to_string(),
            };
            format!("https://{authority}{path}")
        }
    };
    portcullis_crypto::jose::dpop::normalize_htu(&uri)
}

fn check_host(parts: &Parts, server_names: &[String]) -> Result<(), HttpError> {
    let mut hosts = parts.headers.get_all(HOST).iter();
    let first = hosts.next();
    if hosts.next().is_some() {
        return Err(HttpError::MissingHost);
    }
    if parts.version == http::Version::HTTP_2 {
        // RFC 9113 §8.3.1: a Host that disagrees with :authority is malformed.
        if let (Some(a), Some(h)) = (parts.uri.authority(), first) {
            if !a.as_str().as_bytes().eq_ignore_ascii_case(h.as_bytes()) {
                return Err(HttpError::MisdirectedHost);
            }
        }
    }
    // RFC 9112 §3.2 and RFC 9113 §8.3.1: no userinfo in Host or :authority (two parsers
    // could take different hosts from `a@b`).
    let userinfo = parts
        .uri
        .authority()
        .is_some_and(|a| a.as_str().contains('@'))
        || first.is_some_and(|h| h.as_bytes().contains(&b'@'));
    if userinfo {
        return Err(HttpError::MissingHost);
    }
    let Some(name) = host(parts) else {
        return Err(HttpError::MissingHost);
    };
    // The names of the host the handshake chose (SNI): a request naming another host, even
    // one this listener serves, would escape that host's client-certificate rules.
    let ours = server_names
        .iter()
        .any(|n| *n == name || crate::config::wildcard_matches(n, &name));
    if !server_names.is_empty() && !ours {
        return Err(HttpError::MisdirectedHost);
    }
    Ok(())
}

/// The route's media types, before anything upstream: a body whose `Content-Type` the route
/// does not take is refused with 415 (RFC 9110 §15.5.16), and a request whose `Accept` rules out
/// everything the route answers with is refused with 406 (RFC 9110 §12.5.1, §15.5.7). An empty
/// list checks nothing. `has_body`: the request carries (or may carry) body bytes.
pub fn check_media(
    headers: &http::HeaderMap,
    has_body: bool,
    accepts: &[String],
    produces: &[String],
) -> Result<(), HttpError> {
    if has_body && !accepts.is_empty() {
        let mut ct = headers.get_all(http::header::CONTENT_TYPE).iter();
        // One Content-Type only: two would let the proxy and the upstream read different ones.
        let ok = match (ct.next(), ct.next()) {
            (Some(v), None) => content_type_ok(v.as_bytes(), accepts),
            _ => false,
        };
        if !ok {
            return Err(HttpError::UnsupportedMediaType);
        }
    }
    if !produces.is_empty() && !acceptable(headers, produces) {
        return Err(HttpError::NotAcceptable);
    }
    Ok(())
}

/// `type/subtype` with at most a `charset` parameter, which must be UTF-8 (RFC 8259 §8.1: JSON
/// exchanged between systems is UTF-8; a body the proxy reads as UTF-8 must be that).
fn content_type_ok(v: &[u8], accepts: &[String]) -> bool {
    let Ok(v) = std::str::from_utf8(v) else {
        return false;
    };
    let mut parts = v.split(';');
    let ty = parts.next().unwrap_or_default().trim();
    if !accepts.iter().any(|a| a.eq_ignore_ascii_case(ty)) {
        return false;
    }
    parts.all(|p| match p.split_once('=') {
        Some((k, val)) if k.trim().eq_ignore_ascii_case("charset") => {
            let val = val.trim();
            let val = val
                .strip_prefix('"')
                .and_then(|x| x.strip_suffix('"'))
                .unwrap_or(val);
            val.eq_ignore_ascii_case("utf-8")
        }
        _ => false,
    })
}

/// RFC 9110 §12.5.1: whether some media type the route produces is acceptable. No `Accept`
/// accepts anything; each produced type takes the weight of the most specific range that
/// matches it (`type/subtype` over `type/*` over `*/*`), and `q=0` means "not acceptable".
/// Elements that do not parse are ignored; a field that is not ASCII accepts nothing.
fn acceptable(headers: &http::HeaderMap, produces: &[String]) -> bool {
    let mut ranges: Vec<(String, String, u16)> = Vec::new();
    let mut any = false;
    for v in headers.get_all(http::header::ACCEPT) {
        any = true;
        let Ok(v) = v.to_str() else {
            return false;
        };
        for el in v.split(',') {
            let mut ps = el.split(';');
            let range = ps.next().unwrap_or_default().trim();
            let Some((t, st)) = range.split_once('/') else {
                continue;
            };
            let mut q = 1000u16;
            for p in ps {
                if let Some((k, val)) = p.split_once('=') {
                    if k.trim().eq_ignore_ascii_case("q") {
                        match qvalue(val.trim()) {
                            Some(x) => q = x,
                            None => q = 0,
                        }
                    }
                }
            }
            ranges.push((
                t.trim().to_ascii_lowercase(),
                st.trim().to_ascii_lowercase(),
                q,
            ));
        }
    }
    if !any {
        return true;
    }
    produces.iter().any(|p| {
        let (pt, pst) = p.split_once('/').unwrap_or((p.as_str(), ""));
        let mut best: Option<(u8, u16)> = None;
        for (t, st, q) in &ranges {
            let specificity = match (t.as_str(), st.as_str()) {
                ("*", "*") => 0,
                (t, "*") if t == pt => 1,
                (t, st) if t == pt && st == pst => 2,
                _ => continue,
            };
            // Of equally specific ranges, the lowest weight wins: a client that says both
            // `application/json` and `application/json;q=0` is not sent JSON.
            best = match best {
                Some((s, bq)) if s > specificity || (s == specificity && bq <= *q) => Some((s, bq)),
                _ => Some((specificity, *q)),
            };
        }
        best.is_some_and(|(_, q)| q > 0)
    })
}

/// RFC 9110 §12.4.2: `qvalue = ( "0" [ "." 0*3DIGIT ] ) / ( "1" [ "." 0*3("0") ] )`, in
/// thousandths.
fn qvalue(s: &str) -> Option<u16> {
    let (int, frac) = s.split_once('.').unwrap_or((s, ""));
    if frac.len() > 3 || !frac.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let frac_v: u16 = format!("{frac:0<3}").parse().ok()?;
    match int {
        "0" => Some(frac_v),
        "1" if frac_v == 0 => Some(1000),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parts(build: http::request::Builder) -> Parts {
        build.body(()).unwrap().into_parts().0
    }

    fn get(uri: &str) -> http::request::Builder {
        http::Request::get(uri).header(HOST, "api.example")
    }

    #[test]
    fn a_plain_request_passes() {
        let l = Limits::default();
        assert_eq!(check(&parts(get("/a")), &l, &[]), Ok(()));
    }

    #[test]
    fn framing_and_hygiene_errors_are_named() {
        let l = Limits::default();
        let cases = [
            (
                get("/a")
                    .header("content-length", "5")
                    .header("transfer-encoding", "chunked"),
                HttpError::ConflictingFraming,
            ),
            (
                get("/a")
                    .header("content-length", "5")
                    .header("content-length", "5"),
                HttpError::BadContentLength,
            ),
            (
                get("/a").header("content-length", "+5"),
                HttpError::BadContentLength,
            ),
            (
                get("/a").header("transfer-encoding", "gzip"),
                HttpError::BadTransferEncoding,
            ),
            (
                get("/a").header("transfer-encoding", "chunked, chunked"),
                HttpError::BadTransferEncoding,
            ),
            (
                get("/a").header("x_forwarded_for", "1.2.3.4"),
                HttpError::HeaderUnderscore,
            ),
            (
                get("/a").header("x-http-method-override", "DELETE"),
                HttpError::MethodOverride,
            ),
            (
                get("/a").header("upgrade", "h2c"),
                HttpError::UpgradeRefused,
            ),
            (http::Request::get("/a"), HttpError::MissingHost),
            (
                http::Request::get("/a").header(HOST, "evil@api.example"),
                HttpError::MissingHost,
            ),
            (
                http::Request::get("https://evil@api.example/a").header(HOST, "api.example"),
                HttpError::MissingHost,
            ),
            (
                get("/a").header(HOST, "other.example"),
                HttpError::MissingHost,
            ),
        ];
        for (req, want) in cases {
            assert_eq!(check(&parts(req), &l, &[]), Err(want));
        }
    }

    #[test]
    fn limits_give_414_and_431_reasons() {
        let l = Limits {
            max_uri_bytes: 300,
            max_headers: 10,
            max_header_bytes: 2000,
            ..Limits::default()
        };
        let long = format!("/{}", "a".repeat(400));
        assert_eq!(
            check(&parts(get(&long)), &l, &[]),
            Err(HttpError::UriTooLong)
        );
        let mut many = get("/a");
        for i in 0..11 {
            many = many.header(format!("x-h{i}"), "v");
        }
        assert_eq!(check(&parts(many), &l, &[]), Err(HttpError::TooManyHeaders));
        let big = get("/a").header("x-big", "v".repeat(3000));
        assert_eq!(check(&parts(big), &l, &[]), Err(HttpError::HeadersTooLarge));
    }

    #[test]
    fn media_types_give_415_and_406() {
        let json = vec!["application/json".to_string()];
        let h = |pairs: &[(&str, &str)]| {
            let mut m = http::HeaderMap::new();
            for (k, v) in pairs {
                m.append(
                    http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
                    http::HeaderValue::from_str(v).unwrap(),
                );
            }
            m
        };
        let ct = |v: &str| check_media(&h(&[("content-type", v)]), true, &json, &[]);
        assert_eq!(ct("application/json"), Ok(()));
        assert_eq!(ct("Application/JSON; charset=UTF-8"), Ok(()));
        assert_eq!(ct("application/json;charset=\"utf-8\""), Ok(()));
        for bad in [
            "text/plain",
            "application/json; charset=latin1",
            "application/json; boundary=x",
            "application/jsonx",
            "",
        ] {
            assert_eq!(ct(bad), Err(HttpError::UnsupportedMediaType), "{bad}");
        }
        // No body, no Content-Type needed; a body needs exactly one.
        assert_eq!(check_media(&h(&[]), false, &json, &[]), Ok(()));
        assert_eq!(
            check_media(&h(&[]), true, &json, &[]),
            Err(HttpError::UnsupportedMediaType)
        );
        let two = h(&[
            ("content-type", "application/json"),
            ("content-type", "application/json"),
        ]);
        assert_eq!(
            check_media(&two, true, &json, &[]),
            Err(HttpError::UnsupportedMediaType)
        );
        let acc = |v: &str| check_media(&h(&[("accept", v)]), false, &[], &json);
        for ok in [
            "application/json",
            "*/*",
            "application/*",
            "text/html, application/json;q=0.1",
            "application/json; charset=utf-8",
            "*/*;q=0.001",
            "APPLICATION/JSON",
        ] {
            assert_eq!(acc(ok), Ok(()), "{ok}");
        }
        for bad in [
            "text/html",
            "application/json;q=0",
            "application/*;q=0, text/*",
            "*/*, application/json;q=0",
            "application/json;q=0.000",
            "application/json;q=2",
            "application/xml",
        ] {
            assert_eq!(acc(bad), Err(HttpError::NotAcceptable), "{bad}");
        }
        assert_eq!(check_media(&h(&[]), false, &[], &json), Ok(()));
        // Empty lists check nothing.
        assert_eq!(
            check_media(&h(&[("accept", "text/html")]), true, &[], &[]),
            Ok(())
        );
    }

    #[test]
    fn server_names_refuse_other_hosts_with_421() {
        let l = Limits::default();
        let names = vec!["api.example".to_string()];
        assert_eq!(check(&parts(get("/a")), &l, &names), Ok(()));
        let other = http::Request::get("/a").header(HOST, "admin.internal:8443");
        assert_eq!(
            check(&parts(other), &l, &names),
            Err(HttpError::MisdirectedHost)
        );
    }

    #[test]
    fn a_wildcard_name_covers_one_label() {
        let l = Limits::default();
        let names = vec!["*.bank.test".to_string()];
        let with = |host: &str| {
            let r = http::Request::get("/a").header(HOST, host);
            check(&parts(r), &l, &names)
        };
        assert_eq!(with("api.bank.test"), Ok(()));
        assert_eq!(with("API.bank.test:443"), Ok(()));
        for other in ["bank.test", "a.b.bank.test", "xbank.test", ".bank.test"] {
            assert_eq!(with(other), Err(HttpError::MisdirectedHost), "{other}");
        }
    }
}
