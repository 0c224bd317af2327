//! What one audit record says: the request record the outer handler fills, the handshake
//! record, and the helpers that keep attacker-controlled values bounded.
//!
//! Invariants:
//! - No field ever holds a credential or a body: tokens appear only as [`token_hash`] (SHA-256),
//!   signatures only as key id, algorithm and a digest, never the signature value or the key.
//! - Every attacker-controlled string goes through [`bounded`] (or [`bounded_bytes`] for raw
//!   header bytes) before it is stored, so no field is longer than [`MAX_FIELD`] bytes plus the
//!   [`TRUNCATED`] marker; escaping is the encoder's job (see `json.rs`).
//! - Optional fields are skipped when `None`, so a stage that has not run adds no noise.

use base64::Engine;

use super::json::Members;

pub use portcullis_base::text::{bounded, bounded_bytes, MAX_FIELD, TRUNCATED};

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
#[derive(Clone, Debug, Default, PartialEq, Eq)]
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

/// The rate-limit state a request met.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
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

/// What a route's request contract (an OpenAPI operation) found: the operation, the mode, and
/// where the request broke it — a JSON pointer and the keyword, never the value.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ContractRecord {
    pub operation: String,
    /// `enforce` or `shadow`.
    pub mode: &'static str,
    /// `valid` or `invalid`.
    pub result: &'static str,
    pub pointer: Option<String>,
    pub keyword: Option<String>,
    /// The check of the upstream's answer, on routes whose contract checks responses.
    pub response: Option<ContractResponseRecord>,
}

/// What the check of the upstream's answer against the operation's responses found: where
/// the answer broke its contract (a JSON pointer and the keyword), never a value of it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ContractResponseRecord {
    /// `shadow` or `enforce`.
    pub mode: &'static str,
    /// `ok`, `invalid` or `unchecked`.
    pub result: &'static str,
    /// The upstream's status.
    pub status: u16,
    pub pointer: Option<String>,
    pub keyword: Option<String>,
    /// Why an answer was not checked: `streamed`, `over_limit`, `read_failed` or `head`.
    pub why: Option<&'static str>,
}

/// One request's record; filled by the outer handler as the request moves through the stages.
///
/// Stages that have not landed yet leave their fields `None`; they are then absent from the
/// JSON line.
#[derive(Clone, Debug, Default)]
pub struct RequestRecord {
    pub interaction_id: String,
    /// W3C trace id (32 lower-case hex), from a valid incoming `traceparent` or generated.
    pub trace_id: Option<String>,
    /// Our span id: the `parent-id` the upstream receives in `traceparent` (16 hex).
    pub span_id: Option<String>,
    /// The connection's facts (listener, peer, TLS version and cipher, client certificate
    /// thumbprint, subject, organization id and notAfter) as JSON members encoded once per
    /// connection by [`connection_members`]. With connection records (the default) they go
    /// into the connection's `connection` record and the request record names it (`conn`);
    /// without, the encoder appends them to every record of the connection. When set, the
    /// per-field forms below are left empty.
    pub conn_members: Option<std::sync::Arc<str>>,
    /// The local address of the listener that accepted the connection.
    pub listener: Option<String>,
    pub conn_id: u64,
    pub peer: String,
    pub tls_version: &'static str,
    pub cipher: &'static str,
    pub http_version: &'static str,
    pub client_cert_thumbprint: Option<String>,
    pub client_subject: Option<String>,
    pub client_org_id: Option<String>,
    /// The client certificate's notAfter, RFC 3339.
    pub client_cert_not_after: Option<String>,
    /// OAuth client id from the access token.
    pub client_id: Option<String>,
    /// The token's `sub`.
    pub subject: Option<String>,
    pub token_jti: Option<String>,
    /// [`token_hash`] of the access token; never the token.
    pub token_hash: Option<String>,
    /// Scopes the token grants.
    pub scopes: Option<Vec<String>>,
    /// Scopes the matched route requires (the scopes this request used).
    pub scopes_required: Option<Vec<String>>,
    pub consent_id: Option<String>,
    pub method: String,
    /// The request path (no query: query values may be sensitive), bounded.
    pub path: String,
    pub has_query: bool,
    pub route_id: Option<String>,
    /// The policy rule that decided.
    pub rule_id: Option<String>,
    pub decision: &'static str,
    pub stage: Option<&'static str>,
    pub reason: Option<&'static str>,
    pub status: u16,
    /// Request body bytes, where the request declared a length.
    pub bytes_in: Option<u64>,
    /// Response body bytes, where the response declared a length.
    pub bytes_out: Option<u64>,
    pub signature: Option<SignatureRecord>,
    /// Idempotency outcome: a bounded set such as `new`, `replayed`, `conflict`.
    pub idempotency: Option<&'static str>,
    /// The OCSP check of the client certificate, where the listener has one: a bounded set
    /// such as `ocsp_good`, `ocsp_revoked`, `ocsp_unavailable`, `ocsp_invalid_fail_open`.
    pub revocation: Option<&'static str>,
    /// The check of the CRL the client certificate's distribution point serves, where the
    /// listener has `leaf_crls`: a bounded set such as `crl_dp_good`, `crl_dp_revoked`,
    /// `crl_dp_unavailable_fail_open`.
    pub revocation_crl: Option<&'static str>,
    pub rate_limit: Option<RateLimitRecord>,
    /// The request contract's check, on routes that have one.
    pub contract: Option<ContractRecord>,
    pub upstream_status: Option<u16>,
    pub upstream_latency_us: Option<u64>,
    /// Tries made upstream (absent when the request was never sent): more than 1 when it
    /// was retried on another endpoint; 0 when no endpoint could take it.
    pub upstream_attempts: Option<u64>,
    /// The endpoints tried, in order (`host:port`, or the address a DNS name gave).
    pub upstream_endpoints: Option<Vec<String>>,
    pub total_latency_us: u64,
    pub policy_version: String,
    /// The client left before the answer was delivered (it reset the stream or closed the
    /// connection); the request may still have been forwarded and finished.
    pub client_gone: bool,
}

impl RequestRecord {
    /// The members in their fixed order; the connection's members (when set) come last. With
    /// `by_ref` and `conn_members` set, the record names its connection (`"conn":N`) instead of
    /// carrying its members: the writer puts the `connection` record before it in the file.
    fn write(&self, m: &mut Members<'_>, by_ref: bool) {
        let by_ref = by_ref && self.conn_members.is_some();
        m.str("interaction_id", &self.interaction_id);
        m.opt_str("trace_id", self.trace_id.as_deref());
        m.opt_str("span_id", self.span_id.as_deref());
        m.opt_str("listener", self.listener.as_deref());
        m.u64(if by_ref { "conn" } else { "conn_id" }, self.conn_id);
        m.nonempty_str("peer", &self.peer);
        m.nonempty_str("tls_version", self.tls_version);
        m.nonempty_str("cipher", self.cipher);
        m.str("http_version", self.http_version);
        m.opt_str(
            "client_cert_thumbprint",
            self.client_cert_thumbprint.as_deref(),
        );
        m.opt_str("client_subject", self.client_subject.as_deref());
        m.opt_str("client_org_id", self.client_org_id.as_deref());
        m.opt_str(
            "client_cert_not_after",
            self.client_cert_not_after.as_deref(),
        );
        m.opt_str("client_id", self.client_id.as_deref());
        m.opt_str("subject", self.subject.as_deref());
        m.opt_str("token_jti", self.token_jti.as_deref());
        m.opt_str("token_hash", self.token_hash.as_deref());
        m.opt_strs("scopes", self.scopes.as_deref());
        m.opt_strs("scopes_required", self.scopes_required.as_deref());
        m.opt_str("consent_id", self.consent_id.as_deref());
        m.str("method", &self.method);
        m.str("path", &self.path);
        m.bool("has_query", self.has_query);
        m.opt_str("route_id", self.route_id.as_deref());
        m.opt_str("rule_id", self.rule_id.as_deref());
        m.str("decision", self.decision);
        m.opt_str("stage", self.stage);
        m.opt_str("reason", self.reason);
        m.u64("status", u64::from(self.status));
        m.opt_u64("bytes_in", self.bytes_in);
        m.opt_u64("bytes_out", self.bytes_out);
        if let Some(s) = &self.signature {
            m.object("signature", |o| {
                o.str("kind", s.kind);
                o.str("kid", &s.kid);
                o.str("alg", &s.alg);
                o.str("hash", &s.hash);
            });
        }
        m.opt_str("idempotency", self.idempotency);
        m.opt_str("revocation", self.revocation);
        m.opt_str("revocation_crl", self.revocation_crl);
        if let Some(r) = &self.rate_limit {
            m.object("rate_limit", |o| {
                o.str("scope", r.scope);
                o.u64("limit", r.limit);
                o.u64("remaining", r.remaining);
                o.u64("reset_s", r.reset_s);
                o.bool("limited", r.limited);
            });
        }
        if let Some(c) = &self.contract {
            m.object("contract", |o| {
                o.str("operation", &c.operation);
                o.str("mode", c.mode);
                o.str("result", c.result);
                if let Some(p) = &c.pointer {
                    o.str("pointer", p);
                }
                if let Some(k) = &c.keyword {
                    o.str("keyword", k);
                }
                if let Some(r) = &c.response {
                    o.object("response", |a| {
                        a.str("mode", r.mode);
                        a.str("result", r.result);
                        a.u64("status", u64::from(r.status));
                        if let Some(p) = &r.pointer {
                            a.str("pointer", p);
                        }
                        if let Some(k) = &r.keyword {
                            a.str("keyword", k);
                        }
                        if let Some(w) = r.why {
                            a.str("why", w);
                        }
                    });
                }
            });
        }
        m.opt_u64("upstream_status", self.upstream_status.map(u64::from));
        m.opt_u64("upstream_latency_us", self.upstream_latency_us);
        m.opt_u64("upstream_attempts", self.upstream_attempts);
        m.opt_strs("upstream_endpoints", self.upstream_endpoints.as_deref());
        m.u64("total_latency_us", self.total_latency_us);
        m.str("policy_version", &self.policy_version);
        if self.client_gone {
            m.bool("client_gone", true);
        }
        if let Some(c) = self.conn_members.as_ref().filter(|_| !by_ref) {
            m.splice(c.as_bytes());
        }
    }
}

/// The `connection` record of connection `conn_id` whose members [`connection_members`] encoded:
/// the members after `time`, as the writer frames them. The writer writes it once per file,
/// before the first request record of that connection in the file (see `writer.rs`).
pub(crate) fn write_connection(m: &mut Members<'_>, conn_id: u64, members: &str) {
    m.str("kind", "connection");
    m.u64("conn_id", conn_id);
    m.splice(members.as_bytes());
}

/// What the audit log records of a connection.
pub struct ConnectionFacts<'a> {
    pub local: std::net::SocketAddr,
    /// The virtual host the handshake chose (its first configured name, `*` for a listener's
    /// only host that takes any name).
    pub host: &'a str,
    pub peer: std::net::SocketAddr,
    pub tls_version: &'static str,
    pub cipher: &'static str,
    pub client_cert: Option<&'a portcullis_crypto::pki::ClientCert>,
}

/// The members of a connection's `connection` record (or, in the inline form, of each of its
/// request records), encoded once per connection (escaped and bounded like every other value):
/// `"listener":…,"host":…,"peer":…,"tls_version":…,"cipher":…` and, with a client certificate,
/// its thumbprint, subject, organization id and notAfter.
pub fn connection_members(conn: &ConnectionFacts<'_>) -> std::sync::Arc<str> {
    let cert = conn.client_cert;
    let mut out = Vec::with_capacity(512);
    let mut m = Members::new(&mut out);
    m.str("listener", &conn.local.to_string());
    m.str("host", &bounded(conn.host));
    m.str("peer", &conn.peer.to_string());
    m.str("tls_version", conn.tls_version);
    m.str("cipher", conn.cipher);
    if let Some(c) = cert {
        m.str("client_cert_thumbprint", &c.thumbprint);
        m.str("client_subject", &bounded(&c.subject));
        m.opt_str(
            "client_org_id",
            c.organization_identifier.as_deref().map(bounded).as_deref(),
        );
        m.opt_str(
            "client_cert_not_after",
            unix_to_rfc3339(c.not_after).as_deref(),
        );
    }
    // The members are escaped JSON, so valid UTF-8.
    String::from_utf8(out).unwrap_or_default().into()
}

/// A failed handshake: there is no request, only the connection and a bounded category.
#[derive(Clone, Debug)]
pub struct HandshakeRecord {
    pub peer: String,
    pub failure: &'static str,
}

/// An event the request path hands to the writer.
#[derive(Debug)]
pub enum Record {
    Request(Box<RequestRecord>),
    TlsHandshake(HandshakeRecord),
    /// A request the HTTP parser refused before any handler ran (malformed, over hyper's
    /// backstop limits, or too slow to send its headers): there is no request to record, only
    /// the connection and a bounded category.
    HttpError(HttpErrorRecord),
    /// A behavioural detector fired (`portcullis-detect`): who, which detector, what it
    /// counted and what was done. In the chain like every record, so checkpoints sign it.
    Alert(AlertRecord),
    /// An operator lifted a quarantine early from the admin listener.
    QuarantineLifted(QuarantineLiftedRecord),
}

impl Record {
    /// The record's members after `time`, `kind` first, as the writer frames them; `by_ref`:
    /// a request record refers to its connection's record instead of carrying its members.
    pub(crate) fn write(&self, m: &mut Members<'_>, by_ref: bool) {
        match self {
            Record::Request(r) => {
                m.str("kind", "request");
                r.write(m, by_ref);
            }
            Record::TlsHandshake(h) => {
                m.str("kind", "tls_handshake");
                m.str("peer", &h.peer);
                m.str("failure", h.failure);
            }
            Record::HttpError(h) => {
                m.str("kind", "http_error");
                m.str("peer", &h.peer);
                m.u64("conn_id", h.conn_id);
                m.str("failure", h.failure);
            }
            Record::Alert(a) => {
                m.str("kind", "alert");
                m.str("detector", a.detector);
                m.str("action", a.action);
                m.str("subject", &a.subject);
                m.u64("count", u64::from(a.count));
                m.u64("threshold", u64::from(a.threshold));
                m.u64("window_s", a.window_s);
                m.str("reason", &a.reason);
                m.opt_str("route_id", a.route_id.as_deref());
                m.opt_str("scope", a.scope.as_deref());
                m.opt_str("client_id", a.client_id.as_deref());
                m.opt_str("quarantined_until", a.quarantined_until.as_deref());
                m.opt_str("interaction_id", a.interaction_id.as_deref());
            }
            Record::QuarantineLifted(l) => {
                m.str("kind", "quarantine_lifted");
                m.str("subject", &l.subject);
                m.str("admin_peer", &l.admin_peer);
            }
        }
    }
}

/// See [`Record::QuarantineLifted`]: whose quarantine, and from which address the
/// authenticated admin request came.
#[derive(Clone, Debug, Default)]
pub struct QuarantineLiftedRecord {
    pub subject: String,
    pub admin_peer: String,
}

/// See [`Record::Alert`]. Every string is bounded by whoever composes it.
#[derive(Clone, Debug, Default)]
pub struct AlertRecord {
    pub detector: &'static str,
    /// `alert` or `quarantine` (`observe` makes no record).
    pub action: &'static str,
    /// `cert:<thumbprint>`, `client:<client id>` or `peer:<address>`.
    pub subject: String,
    pub count: u32,
    pub threshold: u32,
    pub window_s: u64,
    /// The reason code of the refusal that fired it.
    pub reason: String,
    pub route_id: Option<String>,
    /// First use: the scope the client had never used.
    pub scope: Option<String>,
    pub client_id: Option<String>,
    /// RFC 3339.
    pub quarantined_until: Option<String>,
    /// The request that fired it.
    pub interaction_id: Option<String>,
}

/// See [`Record::HttpError`].
#[derive(Clone, Debug)]
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

    fn json(record: &Record) -> serde_json::Value {
        let mut out = b"{".to_vec();
        record.write(&mut Members::new(&mut out), false);
        out.push(b'}');
        serde_json::from_slice(&out).unwrap()
    }

    #[test]
    fn stages_that_did_not_run_leave_no_fields() {
        let v = json(&Record::Request(Box::default()));
        for absent in [
            "trace_id",
            "token_hash",
            "scopes",
            "signature",
            "rate_limit",
            "peer",
            "cipher",
        ] {
            assert!(v.get(absent).is_none(), "{absent} present: {v}");
        }
        assert_eq!(v["kind"], "request");
        assert_eq!(v["status"], 0);
    }

    #[test]
    fn every_member_is_written_under_its_name_with_its_value() {
        let r = RequestRecord {
            interaction_id: "i\n".into(),
            trace_id: Some("t".into()),
            conn_id: 7,
            conn_members: Some("\"peer\":\"p\"".into()),
            http_version: "HTTP/2",
            scopes: Some(vec!["a".into(), "b".into()]),
            scopes_required: Some(vec![]),
            method: "GET".into(),
            path: "/x\u{2028}".into(),
            has_query: true,
            decision: "deny",
            reason: Some("authz.scope"),
            status: 403,
            signature: Some(SignatureRecord {
                kind: "obie-jws",
                kid: "k".into(),
                alg: "PS256".into(),
                hash: "h".into(),
            }),
            rate_limit: Some(RateLimitRecord {
                scope: "client",
                limit: 10,
                remaining: 9,
                reset_s: 1,
                limited: false,
            }),
            upstream_status: Some(502),
            total_latency_us: 12,
            policy_version: "v".into(),
            ..RequestRecord::default()
        };
        let v = json(&Record::Request(Box::new(r)));
        let expected = serde_json::json!({
            "kind": "request", "interaction_id": "i\n", "trace_id": "t", "conn_id": 7,
            "http_version": "HTTP/2", "scopes": ["a", "b"], "scopes_required": [],
            "method": "GET", "path": "/x\u{2028}", "has_query": true, "decision": "deny",
            "reason": "authz.scope", "status": 403,
            "signature": {"kind": "obie-jws", "kid": "k", "alg": "PS256", "hash": "h"},
            "rate_limit": {"scope": "client", "limit": 10, "remaining": 9, "reset_s": 1,
                           "limited": false},
            "upstream_status": 502, "total_latency_us": 12, "policy_version": "v", "peer": "p",
        });
        assert_eq!(v, expected);
        let h = json(&Record::HttpError(HttpErrorRecord {
            peer: "q".into(),
            conn_id: 3,
            failure: "header_timeout",
        }));
        assert_eq!(
            h,
            serde_json::json!({"kind": "http_error", "peer": "q", "conn_id": 3,
                               "failure": "header_timeout"})
        );
        let t = json(&Record::TlsHandshake(HandshakeRecord {
            peer: "q".into(),
            failure: "no_client_cert",
        }));
        assert_eq!(
            t,
            serde_json::json!({"kind": "tls_handshake", "peer": "q", "failure": "no_client_cert"})
        );
    }
}
