//! Message signatures around the request path (issue #4): the evidence a verified request
//! signature leaves ([`VerifiedSignature`]), how callers are named for key lookup
//! ([`template`]), where their keys come from ([`clientkeys`]), signing responses
//! ([`response`]) and the `portcullis sign` dev tool ([`cli`]).
//!
//! The verification itself is a pipeline stage (`crate::pipeline::signature`) built on
//! `portcullis_crypto::jose::detached` (OBIE `x-jws-signature`) and `portcullis_crypto::httpsig` (RFC 9421).

pub mod clientkeys;
pub mod response;
pub mod template;

use http::HeaderMap;

/// What a verified request signature proves, for the audit record, the idempotency
/// fingerprint and the response signature. Never the signature value or the key.
#[derive(Clone, Debug)]
pub struct VerifiedSignature {
    /// `obie-jws` or `http-sig`.
    pub kind: &'static str,
    /// The key id that verified it (from the caller's key set).
    pub kid: String,
    /// The algorithm: a JOSE name (`PS256`), or the RFC 9421 `alg` parameter when one was given.
    pub alg: String,
    /// Unpadded base64url SHA-256 of the signature bytes: names this exact signature (for
    /// non-repudiation records) without storing it.
    pub hash: String,
    /// RFC 9421 only: the request facts a response signature binds to with `req`.
    pub request: Option<SignedRequest>,
}

/// The parts of a signed request that a response signature covers with `req` (FAPI 2.0
/// Message Signing: `@method`, `@target-uri`, `content-digest` and the request signature).
#[derive(Clone, Debug)]
pub struct SignedRequest {
    pub label: String,
    pub method: String,
    pub scheme: String,
    pub authority: String,
    pub path: String,
    pub query: Option<String>,
    /// `content-digest`, `signature` and `signature-input` as received.
    pub headers: HeaderMap,
}

impl SignedRequest {
    pub fn view(&self) -> portcullis_crypto::httpsig::RequestView<'_> {
        portcullis_crypto::httpsig::RequestView {
            method: &self.method,
            scheme: &self.scheme,
            authority: &self.authority,
            path: &self.path,
            query: self.query.as_deref(),
            headers: &self.headers,
        }
    }
}
