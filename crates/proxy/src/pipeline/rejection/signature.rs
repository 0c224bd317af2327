//! Request signatures: OBIE detached JWS (400, OBIE error body) and RFC 9421 (401).

use http::StatusCode as S;

use super::{ObieError, Wire};
use crate::pipeline::signature::{JwsSigError, SignatureError};
use portcullis_crypto::httpsig::{ComponentError, HttpSigError};
use portcullis_crypto::jose::detached::{DetachedError, OB_IAT, OB_ISS, OB_TAN};

pub(super) fn wire(e: SignatureError) -> Wire {
    let bad = |reason, detail| Wire::new(S::BAD_REQUEST, reason, detail);
    let unauth = |reason, detail| Wire::new(S::UNAUTHORIZED, reason, detail);
    match e {
        SignatureError::Jws(j) => match j {
            // OBIE Read/Write Data API profile, message signing: a missing or failed
            // signature where one is required is 400.
            JwsSigError::Missing => bad(
                "signature.jws_missing",
                "the request must carry an x-jws-signature",
            ),
            // RFC 9110 §5.3: one field line only; a comma-joined JWS is ambiguous.
            JwsSigError::Multiple => bad(
                "signature.jws_multiple",
                "exactly one x-jws-signature is allowed",
            ),
            // OBIE: the signing key must resolve for this client at the trust anchor.
            JwsSigError::UnknownClient => bad(
                "signature.jws_unknown_client",
                "no signing keys are registered for this client",
            ),
            JwsSigError::UnknownKey => bad(
                "signature.jws_unknown_key",
                "the x-jws-signature kid is not a key of this client",
            ),
            // Fail closed (RFC 9110 §15.6.4).
            JwsSigError::KeysUnavailable => Wire::new(
                S::SERVICE_UNAVAILABLE,
                "signature.jws_keys_unavailable",
                "signing keys cannot be checked now",
            ),
            JwsSigError::Detached(d) => match d {
                // RFC 7515 Appendix F: `header..signature`, the payload is the body.
                DetachedError::Malformed => bad(
                    "signature.jws_malformed",
                    "the x-jws-signature is not a detached JWS",
                ),
                // OBIE: PS256 (RFC 8725 §3.1: an allow-list).
                DetachedError::AlgNotAllowed => bad(
                    "signature.jws_alg",
                    "the x-jws-signature algorithm is not allowed",
                ),
                // RFC 7515 §4.1.4.
                DetachedError::KidMissing => bad(
                    "signature.jws_kid_missing",
                    "the x-jws-signature header has no kid",
                ),
                // RFC 7515 §4.1.11 and OBIE: crit lists exactly the OB claims.
                DetachedError::CritMissing => bad(
                    "signature.jws_crit_missing",
                    "the x-jws-signature header has no crit",
                ),
                DetachedError::Crit => bad(
                    "signature.jws_crit",
                    "the x-jws-signature crit is not the required set",
                ),
                // RFC 7797 §3 and OBIE 3.1.3: b64 false.
                DetachedError::B64Missing => bad(
                    "signature.jws_b64_missing",
                    "this API version requires b64: false",
                ),
                // RFC 7797 §6 and OBIE 3.1.4: no b64.
                DetachedError::B64 => bad(
                    "signature.jws_b64",
                    "the x-jws-signature b64 header does not fit this API version",
                ),
                // OBIE: http://openbanking.org.uk/iat, a JSON number in the past.
                DetachedError::IatMissing => bad(
                    "signature.jws_iat_missing",
                    "the x-jws-signature has no iat claim",
                ),
                DetachedError::Iat => bad(
                    "signature.jws_iat",
                    "the x-jws-signature iat is too old, in the future or not a number",
                ),
                // OBIE: http://openbanking.org.uk/iss names the signer.
                DetachedError::IssMissing => bad(
                    "signature.jws_iss_missing",
                    "the x-jws-signature has no iss claim",
                ),
                DetachedError::Iss => bad(
                    "signature.jws_iss",
                    "the x-jws-signature iss is not the calling client",
                ),
                // OBIE: http://openbanking.org.uk/tan is a trust anchor we accept.
                DetachedError::TanMissing => bad(
                    "signature.jws_tan_missing",
                    "the x-jws-signature has no tan claim",
                ),
                DetachedError::Tan => bad(
                    "signature.jws_tan",
                    "the x-jws-signature trust anchor is not accepted",
                ),
                // RFC 8725 §3.10: no key-carrying headers; OBIE typ JOSE, cty json.
                DetachedError::Header => bad(
                    "signature.jws_header",
                    "the x-jws-signature header has a member that is not accepted",
                ),
                // RFC 8725 §3.1: a key verifies one algorithm.
                DetachedError::KeyMismatch => bad(
                    "signature.jws_key_mismatch",
                    "the x-jws-signature algorithm does not match its key",
                ),
                // RFC 7515 §5.2 over the body exactly as received.
                DetachedError::BadSignature => bad(
                    "signature.jws_invalid",
                    "the x-jws-signature does not verify over the body",
                ),
            },
        },
        SignatureError::Http(h) => match h {
            // FAPI 2.0 Message Signing: missing or invalid signatures are rejected with 401.
            HttpSigError::Missing => unauth(
                "signature.http_missing",
                "a request signature (RFC 9421) with the required tag is required",
            ),
            // RFC 9421 §4 / RFC 8941: both fields are dictionaries.
            HttpSigError::Malformed => unauth(
                "signature.http_malformed",
                "Signature-Input or Signature is malformed",
            ),
            // RFC 9421 §3.2 step 1.
            HttpSigError::Label => unauth(
                "signature.http_label",
                "Signature-Input names a signature that Signature does not carry",
            ),
            // RFC 9421 §7.2.6: multiple signature confusion.
            HttpSigError::Ambiguous => unauth(
                "signature.http_ambiguous",
                "more than one signature carries the required tag",
            ),
            // RFC 9421 §3.2.1 / FAPI 2.0: @method, @target-uri, authorization, dpop, content-digest.
            HttpSigError::Coverage => unauth(
                "signature.http_coverage",
                "the signature does not cover a required component",
            ),
            // RFC 9421 §2 and §7.5: components that are absent or could be read two ways.
            HttpSigError::Component(c) => match c {
                ComponentError::Missing => unauth(
                    "signature.http_component_missing",
                    "a covered component is not in the request",
                ),
                ComponentError::Unsupported => unauth(
                    "signature.http_component_unsupported",
                    "a covered component is not supported",
                ),
                ComponentError::Duplicate => unauth(
                    "signature.http_component_duplicate",
                    "a component is covered twice",
                ),
                ComponentError::Invalid => unauth(
                    "signature.http_component_invalid",
                    "a covered component value is ambiguous or not ASCII",
                ),
            },
            // FAPI 2.0: created is required and within the window (RFC 9421 §3.2.1).
            HttpSigError::CreatedMissing => unauth(
                "signature.http_created_missing",
                "the signature has no created parameter",
            ),
            HttpSigError::Created => unauth(
                "signature.http_created",
                "the signature is too old or from the future",
            ),
            // RFC 9421 §2.3 expires.
            HttpSigError::Expired => unauth("signature.http_expired", "the signature has expired"),
            // RFC 9421 §3.2 step 5: the key is found by keyid.
            HttpSigError::KeyidMissing => {
                unauth("signature.http_keyid_missing", "the signature has no keyid")
            }
            // RFC 9421 §7.2.2: signature replay.
            HttpSigError::NonceMissing => unauth(
                "signature.http_nonce_missing",
                "this resource requires a signature nonce",
            ),
            HttpSigError::Replay => unauth(
                "signature.http_replay",
                "the signature nonce was already used",
            ),
            // Fail closed rather than forget a nonce (RFC 9110 §15.6.4).
            HttpSigError::ReplayUnavailable => Wire::new(
                S::SERVICE_UNAVAILABLE,
                "signature.http_replay_unavailable",
                "replay protection is unavailable",
            ),
            // FAPI 2.0: the client's keys come from its registration.
            HttpSigError::UnknownClient => unauth(
                "signature.http_unknown_client",
                "no signing keys are registered for this client",
            ),
            HttpSigError::UnknownKey => unauth(
                "signature.http_unknown_key",
                "the signature keyid is not a key of this client",
            ),
            HttpSigError::KeysUnavailable => Wire::new(
                S::SERVICE_UNAVAILABLE,
                "signature.http_keys_unavailable",
                "signing keys cannot be checked now",
            ),
            // RFC 9421 §3.2 step 6.4 / §7.3.6: alg must agree with the key.
            HttpSigError::Alg => unauth(
                "signature.http_alg",
                "the signature algorithm does not match the key or is not allowed",
            ),
            // RFC 9421 §3.3.
            HttpSigError::BadSignature => unauth(
                "signature.http_invalid",
                "the request signature does not verify",
            ),
            // RFC 9530 / FAPI 2.0: a body must be covered by Content-Digest.
            HttpSigError::DigestMissing => unauth(
                "signature.digest_missing",
                "a request with a body must carry Content-Digest",
            ),
            HttpSigError::DigestMalformed => unauth(
                "signature.digest_malformed",
                "Content-Digest is malformed or has no sha-256 or sha-512",
            ),
            // RFC 9421 §7.2.8: the digest is recomputed over the body received.
            HttpSigError::DigestMismatch => unauth(
                "signature.digest_mismatch",
                "Content-Digest does not match the body",
            ),
        },
    }
}

/// The OBIE error code of an `x-jws-signature` refusal (OBIE "Standard Error Codes").
pub(super) fn obie(e: JwsSigError) -> ObieError {
    let ob = |code, path| ObieError { code, path };
    const MISSING: &str = "UK.OBIE.Signature.Missing";
    const MALFORMED: &str = "UK.OBIE.Signature.Malformed";
    const INVALID: &str = "UK.OBIE.Signature.Invalid";
    const INVALID_CLAIM: &str = "UK.OBIE.Signature.InvalidClaim";
    const MISSING_CLAIM: &str = "UK.OBIE.Signature.MissingClaim";
    match e {
        JwsSigError::Missing => ob(MISSING, None),
        JwsSigError::Multiple => ob(MALFORMED, None),
        JwsSigError::UnknownClient | JwsSigError::UnknownKey => ob(INVALID_CLAIM, Some("kid")),
        JwsSigError::KeysUnavailable => ob("UK.OBIE.UnexpectedError", None),
        JwsSigError::Detached(d) => match d {
            DetachedError::Malformed => ob(MALFORMED, None),
            // OBIE has no algorithm code: a disallowed alg is an invalid header claim.
            DetachedError::AlgNotAllowed | DetachedError::KeyMismatch => {
                ob(INVALID_CLAIM, Some("alg"))
            }
            DetachedError::KidMissing => ob(MISSING_CLAIM, Some("kid")),
            DetachedError::CritMissing => ob(MISSING_CLAIM, Some("crit")),
            DetachedError::Crit => ob(INVALID_CLAIM, Some("crit")),
            DetachedError::B64Missing => ob(MISSING_CLAIM, Some("b64")),
            DetachedError::B64 => ob(INVALID_CLAIM, Some("b64")),
            DetachedError::IatMissing => ob(MISSING_CLAIM, Some(OB_IAT)),
            DetachedError::Iat => ob(INVALID_CLAIM, Some(OB_IAT)),
            DetachedError::IssMissing => ob(MISSING_CLAIM, Some(OB_ISS)),
            DetachedError::Iss => ob(INVALID_CLAIM, Some(OB_ISS)),
            DetachedError::TanMissing => ob(MISSING_CLAIM, Some(OB_TAN)),
            DetachedError::Tan => ob(INVALID_CLAIM, Some(OB_TAN)),
            DetachedError::Header => ob(INVALID_CLAIM, None),
            DetachedError::BadSignature => ob(INVALID, None),
        },
    }
}

/// The OBIE error code of an RFC 9421 refusal on an OBIE route: the `UK.OBIE.Signature.*`
/// codes read the same for either kind of signature, with the signature parameter or the
/// header at fault as `Path`.
pub(super) fn http_obie(e: HttpSigError) -> ObieError {
    let ob = |code, path| ObieError { code, path };
    const MISSING: &str = "UK.OBIE.Signature.Missing";
    const MALFORMED: &str = "UK.OBIE.Signature.Malformed";
    const INVALID: &str = "UK.OBIE.Signature.Invalid";
    const INVALID_CLAIM: &str = "UK.OBIE.Signature.InvalidClaim";
    const MISSING_CLAIM: &str = "UK.OBIE.Signature.MissingClaim";
    const DIGEST: Option<&str> = Some("Content-Digest");
    match e {
        HttpSigError::Missing => ob(MISSING, None),
        HttpSigError::Malformed
        | HttpSigError::Label
        | HttpSigError::Ambiguous
        | HttpSigError::Component(_) => ob(MALFORMED, None),
        HttpSigError::Coverage => ob(INVALID_CLAIM, None),
        HttpSigError::CreatedMissing => ob(MISSING_CLAIM, Some("created")),
        HttpSigError::Created => ob(INVALID_CLAIM, Some("created")),
        HttpSigError::Expired => ob(INVALID_CLAIM, Some("expires")),
        HttpSigError::KeyidMissing => ob(MISSING_CLAIM, Some("keyid")),
        HttpSigError::NonceMissing => ob(MISSING_CLAIM, Some("nonce")),
        HttpSigError::Replay => ob(INVALID_CLAIM, Some("nonce")),
        HttpSigError::UnknownClient | HttpSigError::UnknownKey => ob(INVALID_CLAIM, Some("keyid")),
        HttpSigError::Alg => ob(INVALID_CLAIM, Some("alg")),
        HttpSigError::BadSignature => ob(INVALID, None),
        HttpSigError::DigestMissing => ob(super::HEADER_MISSING, DIGEST),
        HttpSigError::DigestMalformed | HttpSigError::DigestMismatch => {
            ob(super::HEADER_INVALID, DIGEST)
        }
        HttpSigError::ReplayUnavailable | HttpSigError::KeysUnavailable => {
            ob(super::UNEXPECTED, None)
        }
    }
}
