//! A route's message-signature requirement: which kind of request signature it
//! needs, under which profile, and whether its responses are signed.
//!
//! ```yaml
//! signature:
//!   kind: obie-jws          # obie-jws (x-jws-signature) | http-sig (RFC 9421, FAPI 2.0)
//!   profile: obie-3.1.4     # obie-jws: obie-3.1.3 (b64: false) | obie-3.1.4 (no b64)
//!   nonce: optional         # http-sig: optional (checked for replay when present) | required
//!   sign_response: true     # sign responses (x-jws-signature, or RFC 9421 fapi-2-response)
//! ```

use serde::Deserialize;

use portcullis_base::problems::Problems;
use portcullis_crypto::jose::detached::Profile;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct FileSignature {
    kind: String,
    #[serde(default)]
    profile: Option<String>,
    #[serde(default)]
    nonce: Option<String>,
    #[serde(default)]
    sign_response: bool,
}

/// Which request signature a route needs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SignatureKind {
    /// OBIE `x-jws-signature` (detached JWS) under a profile; refusals use the OBIE error body.
    ObieJws(Profile),
    /// RFC 9421 HTTP Message Signatures as FAPI 2.0 Message Signing profiles them.
    HttpSig { nonce_required: bool },
}

impl SignatureKind {
    pub fn as_str(self) -> &'static str {
        match self {
            SignatureKind::ObieJws(_) => "obie-jws",
            SignatureKind::HttpSig { .. } => "http-sig",
        }
    }
}

/// A route's signature requirement.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RouteSignature {
    pub kind: SignatureKind,
    /// Sign the upstream's response before it goes back.
    pub sign_response: bool,
}

pub(crate) fn validate(
    f: &FileSignature,
    p: &mut Problems<'_>,
    field: &dyn Fn(&str) -> String,
) -> Option<RouteSignature> {
    let kind = match f.kind.as_str() {
        "obie-jws" => {
            if f.nonce.is_some() {
                p.push(field("signature.nonce"), "applies only to kind http-sig");
            }
            match f.profile.as_deref().map(|n| (n, Profile::from_name(n))) {
                Some((_, Some(profile))) => SignatureKind::ObieJws(profile),
                Some((other, None)) => {
                    p.push(
                        field("signature.profile"),
                        format!("unknown profile `{other}` (obie-3.1.3 or obie-3.1.4)"),
                    );
                    return None;
                }
                None => {
                    p.push(
                        field("signature.profile"),
                        "required for obie-jws: obie-3.1.3 (b64: false) or obie-3.1.4 (no b64)",
                    );
                    return None;
                }
            }
        }
        "http-sig" => {
            if f.profile.is_some() {
                p.push(field("signature.profile"), "applies only to kind obie-jws");
            }
            let nonce_required = match f.nonce.as_deref() {
                None | Some("optional") => false,
                Some("required") => true,
                Some(other) => {
                    p.push(
                        field("signature.nonce"),
                        format!("unknown value `{other}` (optional or required)"),
                    );
                    return None;
                }
            };
            SignatureKind::HttpSig { nonce_required }
        }
        other => {
            p.push(
                field("signature.kind"),
                format!("unknown kind `{other}` (obie-jws or http-sig)"),
            );
            return None;
        }
    };
    Some(RouteSignature {
        kind,
        sign_response: f.sign_response,
    })
}
