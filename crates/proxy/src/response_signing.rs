//! Signing responses on routes with `sign_response`: OBIE `x-jws-signature` (detached JWS of the
//! body with the OB claims, the route's profile) or an RFC 9421 signature (FAPI 2.0 Message
//! Signing: `tag=fapi-2-response`, `@status`, `content-digest`, `created`, and — bound to the
//! request with `req` — its `@method`, `@target-uri`, `content-digest`, `signature-input` and
//! `signature`).
//!
//! Only these routes buffer response bodies (up to [`MAX_SIGNED_RESPONSE`]); the bytes signed
//! are the bytes sent. Headers the proxy signs with are its own: any the upstream sent
//! (`x-jws-signature`, `signature`, `signature-input`, `content-digest`) are replaced. A response
//! that cannot be read or signed is not sent unsigned: it is refused with 502.

use bytes::Bytes;
use http::HeaderValue;
use http_body_util::BodyExt;

use crate::config::ResponseSigning;
use crate::pipeline::signature::VerifiedSignature;
use crate::upstream::UpstreamError;
use portcullis_base::body::{full, ProxyBody};
use portcullis_crypto::httpsig::digest::{content_digest, DigestAlg};
use portcullis_crypto::httpsig::sign::{component, sign, Params};
use portcullis_crypto::httpsig::{registry_name, Message, ResponseView};
use portcullis_crypto::jose::detached::{ob_header, sign_detached};
use portcullis_policy::signature::SignatureKind;

/// Largest response body a signed route buffers.
pub(crate) const MAX_SIGNED_RESPONSE: usize = 16 * 1024 * 1024;

/// Reads the response body and signs it; returns the body to send.
pub(crate) async fn sign_response(
    parts: &mut http::response::Parts,
    body: ProxyBody,
    kind: SignatureKind,
    verified: Option<&VerifiedSignature>,
    key: &ResponseSigning,
    now: i64,
) -> Result<ProxyBody, UpstreamError> {
    // A plain frame loop: `Limited` over a boxed body trips a higher-ranked `From` bound in
    // the connection future.
    let mut body = body;
    let mut buf = bytes::BytesMut::new();
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|_| UpstreamError::Protocol)?;
        if let Ok(data) = frame.into_data() {
            if buf.len() + data.len() > MAX_SIGNED_RESPONSE {
                return Err(UpstreamError::Protocol);
            }
            buf.extend_from_slice(&data);
        }
    }
    let bytes = buf.freeze();
    sign_bytes(parts, &bytes, kind, verified, key, now)?;
    Ok(full(bytes))
}

/// Adds the signature headers for `body` to `parts`.
pub(crate) fn sign_bytes(
    parts: &mut http::response::Parts,
    body: &Bytes,
    kind: SignatureKind,
    verified: Option<&VerifiedSignature>,
    key: &ResponseSigning,
    now: i64,
) -> Result<(), UpstreamError> {
    let h = &mut parts.headers;
    for name in [
        "x-jws-signature",
        "signature",
        "signature-input",
        "content-digest",
    ] {
        h.remove(name);
    }
    let kp = &key.key;
    match kind {
        SignatureKind::ObieJws(profile) => {
            let header = ob_header(profile, kp.alg, &kp.kid, now, &key.iss, &key.tan);
            let jws = sign_detached(&header, body, |m| kp.sign(m));
            h.insert(
                "x-jws-signature",
                HeaderValue::from_str(&jws).map_err(|_| UpstreamError::Protocol)?,
            );
        }
        SignatureKind::HttpSig { .. } => {
            let bad = |_| UpstreamError::Protocol;
            let mut comps = vec![component("@status", &[], &[]).map_err(bad)?];
            if !body.is_empty() {
                let d = content_digest(DigestAlg::Sha256, body);
                h.insert(
                    "content-digest",
                    HeaderValue::from_str(&d).map_err(|_| UpstreamError::Protocol)?,
                );
                comps.push(component("content-digest", &[], &[]).map_err(bad)?);
            }
            let req = verified.and_then(|v| v.request());
            if let Some(r) = req {
                comps.push(component("@method", &[], &["req"]).map_err(bad)?);
                comps.push(component("@target-uri", &[], &["req"]).map_err(bad)?);
                if r.has_content_digest() {
                    comps.push(component("content-digest", &[], &["req"]).map_err(bad)?);
                }
                // The request's signature and its parameters (FAPI 2.0 Message Signing binds
                // the response to both: a signature value alone does not say what it covered).
                comps.push(
                    component("signature-input", &[("key", r.label())], &["req"]).map_err(bad)?,
                );
                comps.push(component("signature", &[("key", r.label())], &["req"]).map_err(bad)?);
            }
            let view = req.map(|r| r.view());
            let resp = ResponseView {
                status: parts.status.as_u16(),
                headers: &parts.headers,
            };
            let (input, signature) = sign(
                "sig1",
                comps,
                &Params {
                    created: now,
                    keyid: &kp.kid,
                    alg: registry_name(kp.alg),
                    tag: Some(&key.tag),
                    ..Params::default()
                },
                Message::Response(&resp, view.as_ref()),
                |m| kp.sign(m),
            )
            .map_err(bad)?;
            let h = &mut parts.headers;
            h.insert(
                "signature-input",
                HeaderValue::from_str(&input).map_err(|_| UpstreamError::Protocol)?,
            );
            h.insert(
                "signature",
                HeaderValue::from_str(&signature).map_err(|_| UpstreamError::Protocol)?,
            );
        }
    }
    Ok(())
}
