//! OCSP (RFC 6960) for client certificates: the request for one certificate, and the check of
//! the responder's answer. No I/O: the caller posts the request and hands back the body.
//!
//! Invariants:
//! - Never panics on hostile input: a response is bytes from the network, and every byte string
//!   yields an [`OcspAnswer`] or an [`OcspError`].
//! - An answer counts only when its `BasicOCSPResponse` is signed by the certificate's issuing
//!   CA itself, or by a delegated responder certificate that this CA issued for the purpose
//!   (`id-kp-OCSPSigning`, RFC 6960 §4.2.2.2), valid now, and not with SHA-1; when it speaks
//!   of exactly this certificate (issuer name hash, issuer key hash, serial); and when it is
//!   current (`thisUpdate` not in the future beyond a small skew, `nextUpdate` not past).
//! - The CertID uses SHA-1, which RFC 5019 §2.1.1 makes the one hash lightweight responders
//!   (and `openssl ocsp`) must understand. SHA-1 only names the certificate here; nothing
//!   is trusted because of it.

use x509_cert::der::asn1::OctetString;
use x509_cert::der::{Any, Decode, Encode};
use x509_cert::serial_number::SerialNumber;
use x509_cert::spki::{AlgorithmIdentifierOwned, ObjectIdentifier};
use x509_ocsp::{
    BasicOcspResponse, CertId, CertStatus, OcspRequest, OcspResponse, OcspResponseStatus, Request,
    TbsRequest,
};
use x509_parser::certificate::X509Certificate;
use x509_parser::der_parser::oid;
use x509_parser::extensions::{GeneralName, ParsedExtension};
use x509_parser::prelude::FromDer;

/// SHA-1 (RFC 5019 §2.1.1: the CertID hash responders must support).
const OID_SHA1: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.3.14.3.2.26");
/// id-pkix-ocsp-basic (RFC 6960 §4.2.1): the only response type there is.
const OID_OCSP_BASIC: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.3.6.1.5.5.7.48.1.1");
/// id-ad-ocsp (RFC 5280 §4.2.2.1): the responder's location in Authority Information Access.
const OID_AD_OCSP: x509_parser::asn1_rs::Oid<'static> = oid!(1.3.6 .1 .5 .5 .7 .48 .1);

/// How far in the future a `thisUpdate` may be (clock skew between us and the responder).
pub const MAX_SKEW_SECS: i64 = 300;

/// What a responder said about one certificate, once its answer was verified.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OcspStatus {
    Good,
    Revoked,
    /// The responder does not know the certificate (RFC 6960 §2.2).
    Unknown,
}

/// A verified answer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct OcspAnswer {
    pub status: OcspStatus,
    /// Unix seconds.
    pub this_update: i64,
    /// Unix seconds; `None` when the responder gave none (the caller's maximum age applies).
    pub next_update: Option<i64>,
}

/// Why an answer is not taken. The words are for logs; none quotes the response.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum OcspError {
    /// Not DER, not an OCSP response, or not a basic one.
    #[error("malformed OCSP response: {0}")]
    Malformed(&'static str),
    /// `responseStatus` other than successful (RFC 6960 §4.2.1), e.g. `tryLater`.
    #[error("the responder answered {0}")]
    NotSuccessful(&'static str),
    /// Signed by no key that may speak for the certificate's issuer, or with SHA-1.
    #[error("the OCSP response's signature does not verify with the issuing CA or a delegated responder it issued (or is SHA-1)")]
    BadSignature,
    /// The answer speaks of another certificate (or another issuer).
    #[error("the OCSP response does not name the certificate asked about")]
    WrongCertificate,
    #[error("the OCSP response's thisUpdate is in the future")]
    NotYetValid,
    #[error("the OCSP response is past its nextUpdate")]
    Expired,
}

/// What identifies one certificate to a responder, and the request that asks about it.
#[derive(Clone, Debug)]
pub struct OcspQuery {
    cert_id: CertId,
    /// `OCSPRequest` (DER), to POST as `application/ocsp-request` (RFC 6960 §A.1).
    pub request_der: Vec<u8>,
    /// The issuing CA (DER), which the answer's signature is checked against.
    issuer_der: Vec<u8>,
}

fn sha1(data: &[u8]) -> Vec<u8> {
    aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA1_FOR_LEGACY_USE_ONLY, data)
        .as_ref()
        .to_vec()
}

fn parse_cert(der: &[u8]) -> Option<X509Certificate<'_>> {
    match x509_parser::parse_x509_certificate(der) {
        Ok(([], c)) => Some(c),
        _ => None,
    }
}

/// The issuing CA of the DER certificate `leaf` among `cas` (DER): the one whose subject is the
/// leaf's issuer and whose key verifies the leaf's signature.
pub fn find_issuer<'a>(leaf: &[u8], cas: impl IntoIterator<Item = &'a [u8]>) -> Option<&'a [u8]> {
    let leaf = parse_cert(leaf)?;
    cas.into_iter().find(|ca| {
        parse_cert(ca).is_some_and(|ca| {
            ca.subject().as_raw() == leaf.issuer().as_raw()
                && leaf.verify_signature(Some(ca.public_key())).is_ok()
        })
    })
}

/// The OCSP responder URLs of a DER certificate's Authority Information Access extension
/// (`id-ad-ocsp`, http or https only), in certificate order.
pub fn responder_urls(cert: &[u8]) -> Vec<String> {
    let Some(cert) = parse_cert(cert) else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for ext in cert.extensions() {
        if let ParsedExtension::AuthorityInfoAccess(aia) = ext.parsed_extension() {
            for d in &aia.accessdescs {
                if d.access_method != OID_AD_OCSP {
                    continue;
                }
                if let GeneralName::URI(u) = &d.access_location {
                    if u.starts_with("http://") || u.starts_with("https://") {
                        out.push((*u).to_string());
                    }
                }
            }
        }
    }
    out
}

impl OcspQuery {
    /// The query for the DER certificate `leaf` issued by the DER CA certificate `issuer`.
    pub fn new(leaf: &[u8], issuer: &[u8]) -> Result<OcspQuery, String> {
        let leaf_c = parse_cert(leaf).ok_or("the certificate cannot be parsed")?;
        let ca = parse_cert(issuer).ok_or("the issuing CA cannot be parsed")?;
        let der_err = |e: x509_cert::der::Error| format!("cannot encode the OCSP request: {e}");
        let cert_id = CertId {
            hash_algorithm: AlgorithmIdentifierOwned {
                oid: OID_SHA1,
                parameters: Some(Any::null()),
            },
            issuer_name_hash: OctetString::new(sha1(leaf_c.issuer().as_raw())).map_err(der_err)?,
            issuer_key_hash: OctetString::new(sha1(&ca.public_key().subject_public_key.data))
                .map_err(der_err)?,
            serial_number: SerialNumber::new(leaf_c.raw_serial()).map_err(der_err)?,
        };
        let request = OcspRequest {
            tbs_request: TbsRequest {
                version: x509_ocsp::Version::V1,
                requestor_name: None,
                request_list: vec![Request {
                    req_cert: cert_id.clone(),
                    single_request_extensions: None,
                }],
                // No nonce: RFC 5019 responders answer from pre-signed responses, and the
                // freshness that matters is checked on thisUpdate / nextUpdate.
                request_extensions: None,
            },
            optional_signature: None,
        };
        Ok(OcspQuery {
            cert_id,
            request_der: request.to_der().map_err(der_err)?,
            issuer_der: issuer.to_vec(),
        })
    }

    /// Checks a responder's answer (DER `OCSPResponse`) at `now` (Unix seconds).
    pub fn check(&self, response: &[u8], now: i64) -> Result<OcspAnswer, OcspError> {
        let resp = OcspResponse::from_der(response)
            .map_err(|_| OcspError::Malformed("not a DER OCSPResponse"))?;
        match resp.response_status {
            OcspResponseStatus::Successful => {}
            OcspResponseStatus::MalformedRequest => {
                return Err(OcspError::NotSuccessful("malformedRequest"))
            }
            OcspResponseStatus::InternalError => {
                return Err(OcspError::NotSuccessful("internalError"))
            }
            OcspResponseStatus::TryLater => return Err(OcspError::NotSuccessful("tryLater")),
            OcspResponseStatus::SigRequired => return Err(OcspError::NotSuccessful("sigRequired")),
            OcspResponseStatus::Unauthorized => {
                return Err(OcspError::NotSuccessful("unauthorized"))
            }
        }
        let bytes = resp.response_bytes.ok_or(OcspError::Malformed(
            "a successful response without responseBytes",
        ))?;
        if bytes.response_type != OID_OCSP_BASIC {
            return Err(OcspError::Malformed("not a basic OCSP response"));
        }
        let raw = bytes.response.as_bytes();
        let basic = BasicOcspResponse::from_der(raw)
            .map_err(|_| OcspError::Malformed("not a DER BasicOCSPResponse"))?;
        // The signature covers tbsResponseData exactly as the responder sent it.
        let tbs = first_element(raw).ok_or(OcspError::Malformed("no tbsResponseData"))?;
        self.check_signature(&basic, tbs, now)?;
        let single = basic
            .tbs_response_data
            .responses
            .iter()
            .find(|s| self.names(&s.cert_id))
            .ok_or(OcspError::WrongCertificate)?;
        let this_update = unix(&single.this_update);
        let next_update = single.next_update.as_ref().map(unix);
        if this_update > now.saturating_add(MAX_SKEW_SECS) {
            return Err(OcspError::NotYetValid);
        }
        if next_update.is_some_and(|t| t < now) {
            return Err(OcspError::Expired);
        }
        let status = match single.cert_status {
            CertStatus::Good(_) => OcspStatus::Good,
            CertStatus::Revoked(_) => OcspStatus::Revoked,
            CertStatus::Unknown(_) => OcspStatus::Unknown,
        };
        Ok(OcspAnswer {
            status,
            this_update,
            next_update,
        })
    }

    /// Whether a response's CertID is ours. The hash algorithm must be ours too: a responder
    /// answers with the CertID it was asked about (RFC 6960 §4.2.1).
    fn names(&self, id: &CertId) -> bool {
        let ours = &self.cert_id;
        id.hash_algorithm.oid == ours.hash_algorithm.oid
            && id.issuer_name_hash == ours.issuer_name_hash
            && id.issuer_key_hash == ours.issuer_key_hash
            && id.serial_number.to_der().ok() == ours.serial_number.to_der().ok()
    }

    /// RFC 6960 §4.2.2.2: signed by the CA itself, or by a certificate the CA issued with the
    /// OCSPSigning EKU (valid at `now`). Anything else — another CA's responder, a
    /// self-signed one, an expired delegate — is refused.
    fn check_signature(
        &self,
        basic: &BasicOcspResponse,
        tbs: &[u8],
        now: i64,
    ) -> Result<(), OcspError> {
        let ca = parse_cert(&self.issuer_der).ok_or(OcspError::BadSignature)?;
        let alg_der = basic
            .signature_algorithm
            .to_der()
            .map_err(|_| OcspError::Malformed("signatureAlgorithm"))?;
        let (_, alg) = x509_parser::x509::AlgorithmIdentifier::from_der(&alg_der)
            .map_err(|_| OcspError::Malformed("signatureAlgorithm"))?;
        // SHA-1 signatures are refused, as for CRLs (and as rustls refuses them).
        {
            use x509_parser::oid_registry::{OID_PKCS1_SHA1WITHRSA, OID_SHA1_WITH_RSA};
            if alg.algorithm == OID_PKCS1_SHA1WITHRSA || alg.algorithm == OID_SHA1_WITH_RSA {
                return Err(OcspError::BadSignature);
            }
        }
        let sig_bytes = basic
            .signature
            .as_bytes()
            .ok_or(OcspError::Malformed("signature"))?;
        let sig = x509_parser::asn1_rs::BitString::new(0, sig_bytes);
        let verifies = |spki: &x509_parser::x509::SubjectPublicKeyInfo<'_>| {
            x509_parser::verify::verify_signature(spki, &alg, &sig, tbs).is_ok()
        };
        if verifies(ca.public_key()) {
            return Ok(());
        }
        for delegate in basic.certs.iter().flatten() {
            let Ok(der) = delegate.to_der() else {
                continue;
            };
            let Some(d) = parse_cert(&der) else {
                continue;
            };
            let issued_by_ca = d.issuer().as_raw() == ca.subject().as_raw()
                && d.verify_signature(Some(ca.public_key())).is_ok();
            let ocsp_signing =
                matches!(d.extended_key_usage(), Ok(Some(eku)) if eku.value.ocsp_signing);
            let validity = d.validity();
            let current = validity.not_before.timestamp() <= now.saturating_add(MAX_SKEW_SECS)
                && now <= validity.not_after.timestamp();
            if issued_by_ca && ocsp_signing && current && verifies(d.public_key()) {
                return Ok(());
            }
        }
        Err(OcspError::BadSignature)
    }
}

fn unix(t: &x509_ocsp::OcspGeneralizedTime) -> i64 {
    i64::try_from(t.0.to_unix_duration().as_secs()).unwrap_or(i64::MAX)
}

/// The first element (tag, length and value, as sent) of the DER SEQUENCE `der`.
fn first_element(der: &[u8]) -> Option<&[u8]> {
    let (_, body) = tlv(der)?;
    let (len, _) = tlv(body)?;
    body.get(..len)
}

/// Splits a DER TLV at the start of `der`: returns the TLV's total length and its value.
/// Only single-byte tags and definite lengths (DER).
fn tlv(der: &[u8]) -> Option<(usize, &[u8])> {
    let first = *der.get(1)?;
    let (len, head) = if first < 0x80 {
        (usize::from(first), 2)
    } else {
        let n = usize::from(first & 0x7f);
        if n == 0 || n > 4 {
            return None;
        }
        let mut len = 0usize;
        for b in der.get(2..2 + n)? {
            len = (len << 8) | usize::from(*b);
        }
        (len, 2 + n)
    };
    let total = head.checked_add(len)?;
    Some((total, der.get(head..total)?))
}

#[cfg(test)]
mod tests {
    use super::*;
    use rcgen::SigningKey as _;
    use x509_cert::der::asn1::{BitString, GeneralizedTime};
    use x509_ocsp::{
        OcspGeneralizedTime, ResponderId, ResponseBytes, ResponseData, SingleResponse,
    };

    const ECDSA_SHA256: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.10045.4.3.2");
    const NOW: i64 = 1_800_000_000;

    struct Pki {
        ca_key: rcgen::KeyPair,
        ca: rcgen::Certificate,
        leaf: rcgen::Certificate,
    }

    fn ca_params(cn: &str) -> rcgen::CertificateParams {
        let mut p = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        p.distinguished_name = rcgen::DistinguishedName::new();
        p.distinguished_name.push(rcgen::DnType::CommonName, cn);
        p.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        p
    }

    fn pki() -> Pki {
        let ca_key = rcgen::KeyPair::generate().unwrap();
        let ca = ca_params("ca").self_signed(&ca_key).unwrap();
        let issuer = rcgen::Issuer::new(ca_params("ca"), &ca_key);
        let leaf = rcgen::CertificateParams::new(vec!["leaf".to_string()])
            .unwrap()
            .signed_by(&rcgen::KeyPair::generate().unwrap(), &issuer)
            .unwrap();
        Pki { ca_key, ca, leaf }
    }

    /// A responder certificate for `key`, issued by `issuer`, with or without OCSPSigning.
    fn responder(
        key: &rcgen::KeyPair,
        issuer: &rcgen::Issuer<'_, &rcgen::KeyPair>,
        ocsp_signing: bool,
    ) -> Vec<u8> {
        let mut p = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        if ocsp_signing {
            p.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::OcspSigning];
        }
        p.not_before = time::OffsetDateTime::from_unix_timestamp(NOW - 3600).unwrap();
        p.not_after = time::OffsetDateTime::from_unix_timestamp(NOW + 3600).unwrap();
        p.signed_by(key, issuer).unwrap().der().to_vec()
    }

    fn time(t: i64) -> OcspGeneralizedTime {
        OcspGeneralizedTime(
            GeneralizedTime::from_unix_duration(std::time::Duration::from_secs(t as u64)).unwrap(),
        )
    }

    /// A successful basic response about `id`, signed by `signer`, carrying `certs`.
    fn response(
        id: CertId,
        status: CertStatus,
        this: i64,
        next: Option<i64>,
        signer: &rcgen::KeyPair,
        certs: &[&[u8]],
    ) -> Vec<u8> {
        response_alg(ECDSA_SHA256, id, status, this, next, signer, certs)
    }

    /// As [`response`], naming `alg` as the signature algorithm.
    fn response_alg(
        alg: ObjectIdentifier,
        id: CertId,
        status: CertStatus,
        this: i64,
        next: Option<i64>,
        signer: &rcgen::KeyPair,
        certs: &[&[u8]],
    ) -> Vec<u8> {
        let tbs = ResponseData {
            version: x509_ocsp::Version::V1,
            responder_id: ResponderId::ByName(Default::default()),
            produced_at: time(this),
            responses: vec![SingleResponse {
                cert_id: id,
                cert_status: status,
                this_update: time(this),
                next_update: next.map(time),
                single_extensions: None,
            }],
            response_extensions: None,
        };
        let sig = signer.sign(&tbs.to_der().unwrap()).unwrap();
        let certs = (!certs.is_empty()).then(|| {
            certs
                .iter()
                .map(|c| x509_cert::Certificate::from_der(c).unwrap())
                .collect()
        });
        let basic = BasicOcspResponse {
            tbs_response_data: tbs,
            signature_algorithm: AlgorithmIdentifierOwned {
                oid: alg,
                parameters: None,
            },
            signature: BitString::from_bytes(&sig).unwrap(),
            certs,
        };
        OcspResponse {
            response_status: OcspResponseStatus::Successful,
            response_bytes: Some(ResponseBytes {
                response_type: OID_OCSP_BASIC,
                response: OctetString::new(basic.to_der().unwrap()).unwrap(),
            }),
        }
        .to_der()
        .unwrap()
    }

    #[test]
    fn answers_are_taken_only_from_the_ca_or_its_delegate_about_this_certificate_while_current() {
        let pki = pki();
        let q = OcspQuery::new(pki.leaf.der(), pki.ca.der()).unwrap();
        let id = q.cert_id.clone();
        let good = CertStatus::good();
        let ok = |r: Vec<u8>| q.check(&r, NOW);

        // The CA itself.
        let a = ok(response(
            id.clone(),
            good,
            NOW - 10,
            Some(NOW + 60),
            &pki.ca_key,
            &[],
        ))
        .unwrap();
        assert_eq!(
            a,
            OcspAnswer {
                status: OcspStatus::Good,
                this_update: NOW - 10,
                next_update: Some(NOW + 60)
            }
        );
        let unknown = CertStatus::Unknown(x509_cert::der::asn1::Null);
        assert_eq!(
            ok(response(id.clone(), unknown, NOW, None, &pki.ca_key, &[]))
                .unwrap()
                .status,
            OcspStatus::Unknown
        );

        // A delegate of the CA with OCSPSigning; without the EKU, or from another CA: refused.
        let issuer = rcgen::Issuer::new(ca_params("ca"), &pki.ca_key);
        let d_key = rcgen::KeyPair::generate().unwrap();
        let delegate = responder(&d_key, &issuer, true);
        assert!(ok(response(id.clone(), good, NOW, None, &d_key, &[&delegate])).is_ok());
        let no_eku = responder(&d_key, &issuer, false);
        assert_eq!(
            ok(response(id.clone(), good, NOW, None, &d_key, &[&no_eku])),
            Err(OcspError::BadSignature)
        );
        let other_key = rcgen::KeyPair::generate().unwrap();
        let other = rcgen::Issuer::new(ca_params("ca"), &other_key);
        let foreign = responder(&d_key, &other, true);
        assert_eq!(
            ok(response(id.clone(), good, NOW, None, &d_key, &[&foreign])),
            Err(OcspError::BadSignature)
        );
        // A key that is nobody's.
        assert_eq!(
            ok(response(id.clone(), good, NOW, None, &other_key, &[])),
            Err(OcspError::BadSignature)
        );

        // Named SHA-1 (sha1WithRSAEncryption): refused whatever the signature.
        let sha1_rsa = ObjectIdentifier::new_unwrap("1.2.840.113549.1.1.5");
        assert_eq!(
            q.check(
                &response_alg(sha1_rsa, id.clone(), good, NOW, None, &pki.ca_key, &[]),
                NOW
            ),
            Err(OcspError::BadSignature)
        );

        // About another certificate (another serial).
        let mut other_id = id.clone();
        other_id.serial_number = SerialNumber::new(&[0x01, 0x02]).unwrap();
        assert_eq!(
            ok(response(other_id, good, NOW, None, &pki.ca_key, &[])),
            Err(OcspError::WrongCertificate)
        );

        // Not current.
        assert_eq!(
            ok(response(
                id.clone(),
                good,
                NOW + 3600,
                None,
                &pki.ca_key,
                &[]
            )),
            Err(OcspError::NotYetValid)
        );
        assert_eq!(
            ok(response(
                id.clone(),
                good,
                NOW - 7200,
                Some(NOW - 1),
                &pki.ca_key,
                &[]
            )),
            Err(OcspError::Expired)
        );

        // One bit changed anywhere, or the answer cut short: refused, never a panic.
        let r = response(id, good, NOW, None, &pki.ca_key, &[]);
        assert!(q.check(&r, NOW).is_ok());
        for i in 0..r.len() {
            let mut bad = r.clone();
            bad[i] ^= 0x01;
            assert!(q.check(&bad, NOW).is_err(), "byte {i} changed and taken");
            assert!(q.check(&r[..i], NOW).is_err(), "cut at {i} and taken");
        }
    }

    #[test]
    fn garbage_is_malformed() {
        let pki = pki();
        let q = OcspQuery::new(pki.leaf.der(), pki.ca.der()).unwrap();
        assert!(!q.request_der.is_empty());
        assert_eq!(
            find_issuer(pki.leaf.der(), [pki.ca.der().as_ref()]),
            Some(pki.ca.der().as_ref())
        );
        assert_eq!(find_issuer(pki.ca.der(), [pki.leaf.der().as_ref()]), None);
        assert!(responder_urls(pki.leaf.der()).is_empty());
        for bad in [
            &b""[..],
            &b"\x30"[..],
            &b"\x30\x84\xff\xff\xff\xff"[..],
            &b"\x30\x03\x0a\x01\x00"[..],
            &b"<html>"[..],
        ] {
            assert!(q.check(bad, 0).is_err());
        }
        // tryLater (3) with no body.
        assert_eq!(
            q.check(b"\x30\x03\x0a\x01\x03", 0),
            Err(OcspError::NotSuccessful("tryLater"))
        );
        assert_eq!(tlv(b"\x30\x82\x00"), None);
        assert_eq!(first_element(b"\x30\x02\x05\x00"), Some(&b"\x05\x00"[..]));
    }
}
