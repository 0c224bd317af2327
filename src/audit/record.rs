//! What one audit record says: the request record the outer handler fills, the handshake
//! record, and the helpers that keep attacker-controlled values bounded.
//!
//! Invariants:
//! - No field ever holds a credential or a body: tokens appear only as [`token_hash`] (SHA-256),
//!   signatures only as key id, algorithm and a digest, never the signature value or the key.
//! - Every attacker-controlled string goes through [`bounded`] (or [`bounded_bytes`] for raw
//!   header bytes) before it is stored, so no field is longer than [`MAX_FIELD`] bytes plus the
//!   [`TRUNCATED`] marker; escaping is the serializer's job (see `json.rs`).
//! - Optional fields are skipped when `None`, so a stage that has not run adds no noise.

use base64::Engine;
use serde::Serialize;

/// Longest attacker-controlled string kept in a record, in bytes.
pub const MAX_FIELD: usize = 512;
/// Appended where a value was cut at [`MAX_FIELD`].
pub const TRUNCATED: &str = "...[truncated]";

/// Truncates `s` at a char boundary to [`MAX_FIELD`] bytes, marking the cut.
pub fn bounded(s: &str) -> String {
    if s.len() <= MAX_FIELD {
        return s.to_string();
    }
    let mut end = MAX_FIELD;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}{TRUNCATED}", &s[..end])
}

/// A raw byte string (a header value, say) as text: valid UTF-8 runs are kept, a backslash is
/// doubled, and every byte that is not part of valid UTF-8 becomes `\xNN`; the result is
/// [`bounded`]. The mapping is unambiguous, so the original bytes can be told from the record.
pub fn bounded_bytes(b: &[u8]) -> String {
    let mut out = String::with_capacity(b.len().min(MAX_FIELD + 16));
    for chunk in b.utf8_chunks() {
        for c in chunk.valid().chars() {
            if c == '\\' {
                out.push_str("\\\\");
            } else {
                out.push(c);
            }
        }
        for byte in chunk.invalid() {
            out.push_str(&format!("\\x{byte:02x}"));
        }
        if out.len() > MAX_FIELD {
            break;
        }
    }
    bounded(&out)
}

/// Unix seconds as RFC 3339 UTC (`2027-01-01T00:00:00Z`); `None` when out of range.
pub fn unix_to_rfc3339(secs: i64) -> Option<String> {
    time::OffsetDateTime::from_unix_timestamp(secs)
        .ok()?
        .format(&time::format_description::well_known::Rfc3339)
        .ok()
}

/// The audit form of an access token: unpadded base64url SHA-256 of its bytes. The token
/// itself is never recorded.
pub fn token_hash(token: &[u8]) -> String {
    let d = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, token);
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(d.as_ref())
}

/// A verified request signature, as the audit log sees it.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct SignatureRecord {
    /// `obie-jws` (x-jws-signature) or `http-sig` (RFC 9421).
    pub kind: &'static str,
    /// The key id that verified the signature.
    pub kid: String,
    /// The JWS / RFC 9421 algorithm, e.g. `PS256`.
    pub alg: String,
    /// Unpadded base64url SHA-256 of the signature value: names the exact signature a
    /// non-repudiation store keeps, without the record holding the signature or the content.
    pub hash: String,
}

/// The rate-limit state a request met (issue #6 fills it).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct RateLimitRecord {
    /// Which limit: `peer`, `client`, `route`, ... (a bounded set).
    pub scope: &'static str,
    pub limit: u64,
    pub remaining: u64,
    /// Seconds until the window resets.
    pub reset_s: u64,
    /// Whether this request was refused by the limit.
    pub limited: bool,
}

/// One request's record; filled by the outer handler as the request moves through the stages.
///
/// Stages that have not landed yet leave their fields `None`; they are then absent from the
/// JSON line.
#[derive(Clone, Debug, Default, Serialize)]
pub struct RequestRecord {
    pub interaction_id: String,
    /// W3C trace id (32 lower-case hex), from a valid incoming `traceparent` or generated.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub trace_id: Option<String>,
    /// Our span id: the `parent-id` the upstream receives in `traceparent` (16 hex).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub span_id: Option<String>,
    /// The connection's facts (listener, peer, TLS version and cipher, client certificate
    /// thumbprint, subject, organization id and notAfter) as JSON members encoded once per
    /// connection by [`connection_members`]; the encoder appends them to every record of the
    /// connection. When set, the per-field forms below are left empty.
    #[serde(skip)]
    pub conn_members: Option<std::sync::Arc<str>>,
    /// The local address of the listener that accepted the connection.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub listener: Option<String>,
    pub conn_id: u64,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub peer: String,
    #[serde(skip_serializing_if = "is_empty")]
    pub tls_version: &'static str,
    #[serde(skip_serializing_if = "is_empty")]
    pub cipher: &'static str,
    pub http_version: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub client_cert_thumbprint: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub client_subject: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub client_org_id: Option<String>,
    /// The client certificate's notAfter, RFC 3339.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub client_cert_not_after: Option<String>,
    /// OAuth client id from the access token (issue #3).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub client_id: Option<String>,
    /// The token's `sub` (issue #3).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub subject: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub token_jti: Option<String>,
    /// [`token_hash`] of the access token; never the token.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub token_hash: Option<String>,
    /// Scopes the token grants.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub scopes: Option<Vec<String>>,
    /// Scopes the matched route requires (the scopes this request used).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub scopes_required: Option<Vec<String>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub consent_id: Option<String>,
    pub method: String,
    /// The request path (no query: query values may be sensitive), bounded.
    pub path: String,
    pub has_query: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub route_id: Option<String>,
    /// The policy rule that decided (issue #5).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rule_id: Option<String>,
    pub decision: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stage: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<&'static str>,
    pub status: u16,
    /// Request body bytes, where the request declared a length.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub bytes_in: Option<u64>,
    /// Response body bytes, where the response declared a length.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub bytes_out: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub signature: Option<SignatureRecord>,
    /// Idempotency outcome (issue #6): a bounded set such as `new`, `replayed`, `conflict`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub idempotency: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rate_limit: Option<RateLimitRecord>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub upstream_status: Option<u16>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub upstream_latency_us: Option<u64>,
    pub total_latency_us: u64,
    pub policy_version: String,
}

fn is_empty(s: &&str) -> bool {
    s.is_empty()
}

/// The members a connection adds to each of its request records, encoded once per connection
/// (escaped and bounded like every other value): `"listener":…,"peer":…,"tls_version":…,
/// "cipher":…` and, with a client certificate, its thumbprint, subject, organization id and
/// notAfter.
pub fn connection_members(conn: &crate::conn::ConnInfo) -> std::sync::Arc<str> {
    #[derive(Serialize)]
    struct Facts<'a> {
        listener: String,
        peer: String,
        tls_version: &'static str,
        cipher: &'static str,
        #[serde(skip_serializing_if = "Option::is_none")]
        client_cert_thumbprint: Option<&'a str>,
        #[serde(skip_serializing_if = "Option::is_none")]
        client_subject: Option<String>,
        #[serde(skip_serializing_if = "Option::is_none")]
        client_org_id: Option<String>,
        #[serde(skip_serializing_if = "Option::is_none")]
        client_cert_not_after: Option<String>,
    }
    let cert = conn.client_cert.as_deref();
    let facts = Facts {
        listener: conn.local.to_string(),
        peer: conn.peer.to_string(),
        tls_version: conn.tls_version,
        cipher: conn.cipher,
        client_cert_thumbprint: cert.map(|c| c.thumbprint.as_str()),
        client_subject: cert.map(|c| bounded(&c.subject)),
        client_org_id: cert.and_then(|c| c.organization_identifier.as_deref().map(bounded)),
        client_cert_not_after: cert.and_then(|c| unix_to_rfc3339(c.not_after)),
    };
    let mut out = Vec::with_capacity(512);
    super::json::to_line_body(&facts, &mut out);
    // The members are escaped JSON, so valid UTF-8.
    String::from_utf8(out).unwrap_or_default().into()
}

/// A failed handshake: there is no request, only the connection and a bounded category.
#[derive(Clone, Debug, Serialize)]
pub struct HandshakeRecord {
    pub peer: String,
    pub failure: &'static str,
}

/// An event the request path hands to the writer.
#[derive(Debug, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Record {
    Request(Box<RequestRecord>),
    TlsHandshake(HandshakeRecord),
    /// A request the HTTP parser refused before any handler ran (malformed, over hyper's
    /// backstop limits, or too slow to send its headers): there is no request to record, only
    /// the connection and a bounded category.
    HttpError(HttpErrorRecord),
}

/// See [`Record::HttpError`].
#[derive(Clone, Debug, Serialize)]
pub struct HttpErrorRecord {
    pub peer: String,
    pub conn_id: u64,
    pub failure: &'static str,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_hostile_values_are_truncated_with_a_marker_on_a_char_boundary() {
        let s = "é".repeat(400);
        let b = bounded(&s);
        assert!(b.ends_with(TRUNCATED));
        assert!(b.len() <= MAX_FIELD + TRUNCATED.len());
        assert_eq!(bounded("short"), "short");
    }

    #[test]
    fn invalid_utf8_bytes_are_hex_escaped_and_backslashes_doubled() {
        assert_eq!(bounded_bytes(b"ok"), "ok");
        assert_eq!(bounded_bytes(b"a\xffb\\x41"), "a\\xffb\\\\x41");
        assert_eq!(bounded_bytes("é".as_bytes()), "é");
        let long = vec![0xfeu8; 10_000];
        let b = bounded_bytes(&long);
        assert!(b.ends_with(TRUNCATED) && b.len() <= MAX_FIELD + TRUNCATED.len());
    }

    #[test]
    fn token_hash_is_sha256_base64url_without_padding() {
        // SHA-256("abc"), RFC 6234 test vector.
        assert_eq!(
            token_hash(b"abc"),
            "ungWv48Bz-pBQUDeXa4iI7ADYaOWF3qctBD_YfIAFa0"
        );
    }

    #[test]
    fn stages_that_did_not_run_leave_no_fields() {
        let v = serde_json::to_value(Record::Request(Box::default())).unwrap();
        for absent in [
            "trace_id",
            "token_hash",
            "scopes",
            "signature",
            "rate_limit",
        ] {
            assert!(v.get(absent).is_none(), "{absent} present: {v}");
        }
        assert_eq!(v["kind"], "request");
    }
}
