//! Client certificate evidence: turns a TLS peer's leaf certificate (DER) into the facts the
//! proxy logs and authorizes on (x5t#S256 thumbprint, DN attributes, SANs, PSD2 roles).
//!
//! Invariants:
//! - Never panics on hostile input: every input byte string yields `Ok` or `Err`.
//! - This module does **not** verify anything. Chain, expiry, EKU and revocation checks belong to
//!   rustls' `WebPkiClientVerifier`; call [`ClientCert::from_der`] only on a certificate that the
//!   TLS layer has already accepted.
//! - DN attributes are read structurally by OID, never by parsing a DN string.
//! - Ambiguous evidence is no evidence: a single-valued DN attribute present more than once
//!   yields `None`, and a duplicated or malformed PSD2 QCStatement yields no roles and no NCA id.
//! - Optional evidence (QCStatements) is tolerated when garbled; bytes that are not exactly one
//!   DER X.509 certificate are an error.

pub mod ocsp;

use std::fmt::{self, Write as _};
use std::net::{Ipv4Addr, Ipv6Addr};

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use x509_parser::asn1_rs::{Class, Oid, Tag};
use x509_parser::certificate::X509Certificate;
use x509_parser::der_parser::ber::BerObject;
use x509_parser::der_parser::der::parse_der;
use x509_parser::der_parser::oid;
use x509_parser::extensions::GeneralName;
use x509_parser::x509::{AttributeTypeAndValue, X509Name};

const OID_CN: Oid<'static> = oid!(2.5.4 .3);
const OID_SERIAL_NUMBER: Oid<'static> = oid!(2.5.4 .5);
const OID_C: Oid<'static> = oid!(2.5.4 .6);
const OID_L: Oid<'static> = oid!(2.5.4 .7);
const OID_ST: Oid<'static> = oid!(2.5.4 .8);
const OID_STREET: Oid<'static> = oid!(2.5.4 .9);
const OID_O: Oid<'static> = oid!(2.5.4 .10);
const OID_OU: Oid<'static> = oid!(2.5.4 .11);
/// organizationIdentifier (X.520), carries the PSD2 authorisation number, e.g. `PSDGB-FCA-123456`.
const OID_ORG_ID: Oid<'static> = oid!(2.5.4 .97);
const OID_DC: Oid<'static> = oid!(0.9.2342 .19200300 .100 .1 .25);
const OID_UID: Oid<'static> = oid!(0.9.2342 .19200300 .100 .1 .1);
const OID_EMAIL: Oid<'static> = oid!(1.2.840 .113549 .1 .9 .1);

/// id-pe-qcStatements (RFC 3739).
const OID_QC_STATEMENTS: Oid<'static> = oid!(1.3.6 .1 .5 .5 .7 .1 .3);
/// id-etsi-psd2-qcStatement (ETSI TS 119 495).
const OID_QC_PSD2: Oid<'static> = oid!(0.4.0 .19495 .2);

/// PSD2 roles (ETSI TS 119 495 §5.1): role OID and the only role name allowed with it.
static PSD2_ROLES: [(Oid<'static>, &str); 4] = [
    (oid!(0.4.0 .19495 .1 .1), "PSP_AS"),
    (oid!(0.4.0 .19495 .1 .2), "PSP_PI"),
    (oid!(0.4.0 .19495 .1 .3), "PSP_AI"),
    (oid!(0.4.0 .19495 .1 .4), "PSP_IC"),
];

/// Evidence extracted from a client (TPP) certificate.
#[derive(Clone)]
pub struct ClientCert {
    /// The certificate exactly as received (DER).
    pub der: Vec<u8>,
    /// x5t#S256: unpadded base64url SHA-256 of the DER (RFC 8705 certificate binding).
    pub thumbprint: String,
    /// RFC 4514-style subject (most specific RDN first, special and control characters
    /// escaped), for logs only: never compare DNs as strings.
    pub subject: String,
    /// Subject commonName (2.5.4.3); `None` if absent, repeated or not a string.
    pub common_name: Option<String>,
    /// Subject organizationName (2.5.4.10); `None` if absent, repeated or not a string.
    pub organization: Option<String>,
    /// Subject organizationIdentifier (2.5.4.97), e.g. `PSDGB-FCA-123456`.
    pub organization_identifier: Option<String>,
    /// Subject organizationalUnitName (2.5.4.11); OB Directory certificates carry the OB
    /// organisation id here. `None` if absent, repeated or not a string.
    pub organizational_unit: Option<String>,
    /// Subject countryName (2.5.4.6).
    pub country: Option<String>,
    /// RFC 4514-style issuer, for logs only.
    pub issuer: String,
    /// Serial number, lower-case hex without separators or DER sign padding.
    pub serial_hex: String,
    /// The issuer name and serial number as DER, the pair a CRL entry names.
    pub issuer_der: Vec<u8>,
    pub serial_der: Vec<u8>,
    /// notAfter, unix seconds.
    pub not_after: i64,
    /// Subject alternative names as `dns:..`, `uri:..`, `email:..`, `ip:..`; other kinds skipped.
    pub sans: Vec<String>,
    /// PSD2 roles from the QCStatements extension, e.g. `["PSP_AI", "PSP_PI"]`, in certificate
    /// order without duplicates. Derived from the role OIDs.
    pub psd2_roles: Vec<String>,
    /// PSD2 nCAId, e.g. `GB-FCA`.
    pub psd2_nca_id: Option<String>,
}

impl fmt::Debug for ClientCert {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClientCert")
            .field("thumbprint", &self.thumbprint)
            .field("subject", &self.subject)
            .field("common_name", &self.common_name)
            .field("organization", &self.organization)
            .field("organization_identifier", &self.organization_identifier)
            .field("country", &self.country)
            .field("issuer", &self.issuer)
            .field("serial_hex", &self.serial_hex)
            .field("not_after", &self.not_after)
            .field("sans", &self.sans)
            .field("psd2_roles", &self.psd2_roles)
            .field("psd2_nca_id", &self.psd2_nca_id)
            .finish_non_exhaustive()
    }
}

/// Why bytes could not be turned into [`ClientCert`] evidence.
#[derive(Debug, thiserror::Error)]
pub enum CertError {
    /// The input is empty.
    #[error("empty certificate")]
    Empty,
    /// The input is not a DER X.509 certificate.
    #[error("not a valid x.509 certificate: {0}")]
    Malformed(String),
    /// The input holds a certificate followed by extra bytes.
    #[error("trailing data after certificate")]
    TrailingData,
    /// A security-relevant extension is present but cannot be read unambiguously.
    #[error("malformed {0} extension")]
    BadExtension(&'static str),
}

impl ClientCert {
    /// Parses one DER certificate. Does not verify it (see the module docs).
    pub fn from_der(der: &[u8]) -> Result<ClientCert, CertError> {
        if der.is_empty() {
            return Err(CertError::Empty);
        }
        let (rest, cert) = x509_parser::parse_x509_certificate(der)
            .map_err(|e| CertError::Malformed(e.to_string()))?;
        if !rest.is_empty() {
            return Err(CertError::TrailingData);
        }

        let subject = cert.subject();
        let sans = subject_alt_names(&cert)?;
        let psd2 = cert
            .get_extension_unique(&OID_QC_STATEMENTS)
            .ok()
            .flatten()
            .and_then(|ext| parse_psd2_qc_statements(ext.value))
            .unwrap_or_default();

        Ok(ClientCert {
            der: der.to_vec(),
            thumbprint: thumbprint_s256(der),
            subject: format_name(subject),
            common_name: single_attribute(subject, &OID_CN),
            organization: single_attribute(subject, &OID_O),
            organization_identifier: single_attribute(subject, &OID_ORG_ID),
            organizational_unit: single_attribute(subject, &OID_OU),
            country: single_attribute(subject, &OID_C),
            issuer: format_name(cert.issuer()),
            serial_hex: serial_hex(cert.raw_serial()),
            issuer_der: cert.issuer().as_raw().to_vec(),
            serial_der: cert.raw_serial().to_vec(),
            not_after: cert.validity().not_after.timestamp(),
            sans,
            psd2_roles: psd2.roles,
            psd2_nca_id: psd2.nca_id,
        })
    }
}

/// What one CRL says about itself: who issued it and until when it is current.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CrlInfo {
    /// The issuer's name, as [`ClientCert::issuer`] writes names.
    pub issuer: String,
    /// `thisUpdate` (Unix seconds): when it was issued.
    pub this_update: i64,
    /// `nextUpdate` (Unix seconds): after it the CRL no longer says anything (RFC 5280
    /// §5.1.2.5); `None` when absent (rustls refuses such a CRL).
    pub next_update: Option<i64>,
}

impl CrlInfo {
    /// Reads a DER CRL's issuer and `nextUpdate`; an error says why it does not parse.
    pub fn from_der(der: &[u8]) -> Result<CrlInfo, String> {
        let (_, crl) = x509_parser::parse_x509_crl(der)
            .map_err(|e| format!("the CRL cannot be parsed: {e}"))?;
        Ok(CrlInfo {
            issuer: format_name(crl.issuer()),
            this_update: crl.last_update().timestamp(),
            next_update: crl.next_update().map(|t| t.timestamp()),
        })
    }
}

/// Checks that the DER CRL is signed by one of the DER CA certificates `cas`: one whose subject
/// is the CRL's issuer and whose key verifies its signature (RFC 5280 §6.3.3 (f), (g)). SHA-1
/// signatures are refused, as rustls refuses them when it checks the CRL at a handshake. The
/// error says why, in words for `check` and logs.
pub fn check_crl_signer<'a>(
    crl_der: &[u8],
    cas: impl IntoIterator<Item = &'a [u8]>,
) -> Result<(), String> {
    use x509_parser::oid_registry::{OID_PKCS1_SHA1WITHRSA, OID_SHA1_WITH_RSA};
    let (_, crl) = x509_parser::parse_x509_crl(crl_der)
        .map_err(|e| format!("the CRL cannot be parsed: {e}"))?;
    let alg = &crl.signature_algorithm.algorithm;
    if *alg == OID_PKCS1_SHA1WITHRSA || *alg == OID_SHA1_WITH_RSA {
        return Err("the CRL is signed with SHA-1".to_string());
    }
    let mut named = false;
    for der in cas {
        let Ok((_, ca)) = x509_parser::parse_x509_certificate(der) else {
            continue;
        };
        if ca.subject().as_raw() != crl.issuer().as_raw() {
            continue;
        }
        named = true;
        if crl.verify_signature(ca.public_key()).is_ok() {
            return Ok(());
        }
    }
    Err(if named {
        format!(
            "the CRL's signature does not verify with the key of the client CA `{}`",
            format_name(crl.issuer())
        )
    } else {
        format!(
            "the CRL's issuer `{}` is none of the client CAs",
            format_name(crl.issuer())
        )
    })
}

/// The certificates the loaded CRLs revoke, as (issuer name DER, serial DER) pairs: the
/// handshake's verifier checks them once per connection, and every request checks the current
/// set again, so a CRL reload ends a revoked client's open keep-alive and HTTP/2 connections.
/// It also keeps each issuer's latest `nextUpdate`, so that an open connection stops once the
/// CRL covering its certificate has expired, as new handshakes do.
#[derive(Debug, Default)]
pub struct Revoked {
    /// Revoked serial numbers (DER) by issuer name (DER).
    by_issuer: std::collections::HashMap<Vec<u8>, std::collections::HashSet<Vec<u8>>>,
    /// The latest `nextUpdate` (Unix seconds) of the CRLs of each issuer (name DER).
    next_update: std::collections::HashMap<Vec<u8>, i64>,
}

impl Revoked {
    /// The entries of DER CRLs; a CRL that does not parse is an error naming why (the caller
    /// says which file).
    pub fn from_crls<'a>(crls: impl IntoIterator<Item = &'a [u8]>) -> Result<Revoked, String> {
        let mut by_issuer: std::collections::HashMap<_, std::collections::HashSet<_>> =
            std::collections::HashMap::new();
        let mut next_update = std::collections::HashMap::new();
        for der in crls {
            let (_, crl) = x509_parser::parse_x509_crl(der)
                .map_err(|e| format!("the CRL cannot be parsed: {e}"))?;
            let issuer = crl.issuer().as_raw().to_vec();
            // A CRL without nextUpdate never expires here; rustls refuses those at load.
            let until = crl.next_update().map_or(i64::MAX, |t| t.timestamp());
            next_update
                .entry(issuer.clone())
                .and_modify(|t: &mut i64| *t = (*t).max(until))
                .or_insert(until);
            let serials = by_issuer.entry(issuer).or_default();
            for r in crl.iter_revoked_certificates() {
                serials.insert(r.raw_serial().to_vec());
            }
        }
        Ok(Revoked {
            by_issuer,
            next_update,
        })
    }

    /// Whether the CRLs loaded include one of the issuer named `issuer` (DER).
    pub fn covers(&self, issuer: &[u8]) -> bool {
        self.next_update.contains_key(issuer)
    }

    /// The issuer names (DER) the loaded CRLs cover.
    pub fn issuers(&self) -> impl Iterator<Item = &[u8]> {
        self.next_update.keys().map(Vec::as_slice)
    }

    /// Checked on every request: two hash lookups, no allocation.
    pub fn contains(&self, cert: &ClientCert) -> bool {
        self.by_issuer
            .get(cert.issuer_der.as_slice())
            .is_some_and(|serials| serials.contains(cert.serial_der.as_slice()))
    }

    /// Whether every CRL of `cert`'s issuer is past its `nextUpdate` at `now` (Unix seconds):
    /// its revocation status is then unknown. A certificate whose issuer has no CRL is not
    /// covered, and so not expired (as rustls treats it).
    pub fn expired_for(&self, cert: &ClientCert, now: i64) -> bool {
        self.next_update
            .get(cert.issuer_der.as_slice())
            .is_some_and(|t| *t < now)
    }
}

/// A CRL fetched from the distribution point a client certificate names, taken after
/// [`VerifiedCrl::check`]: the serials it revokes and until when it speaks.
#[derive(Debug)]
pub struct VerifiedCrl {
    /// The issuer's name (DER), which is the certificate's issuer.
    pub issuer_der: Vec<u8>,
    /// `thisUpdate` and `nextUpdate`, Unix seconds.
    pub this_update: i64,
    pub next_update: i64,
    serials: std::collections::HashSet<Vec<u8>>,
}

impl VerifiedCrl {
    /// Takes the DER CRL fetched from `url` for a certificate issued by `issuer` (a DER CA
    /// certificate, one of the client CAs) at `now` (Unix seconds), or says why not. The CRL
    /// must be signed by `issuer` (its name and key; never SHA-1), current (`thisUpdate` at
    /// most 5 minutes ahead of the clock, `nextUpdate` present and not past: RFC 5280
    /// §6.3.3 (a)), complete for the issuer's end-entity certificates (no delta CRL, no
    /// indirect or partial scope in an issuingDistributionPoint, whose point, when it names
    /// one, includes `url`: §6.3.3 (b)), with no critical extension we do not understand
    /// and no critical entry extension (an entry's `certificateIssuer` would move it to
    /// another CA). The error is in words for logs.
    pub fn check(
        crl_der: &[u8],
        issuer: &[u8],
        url: &str,
        now: i64,
    ) -> Result<VerifiedCrl, String> {
        use x509_parser::extensions::{DistributionPointName, ParsedExtension};
        use x509_parser::oid_registry::OID_X509_EXT_DELTA_CRL_INDICATOR;
        check_crl_signer(crl_der, [issuer])?;
        let crl = match x509_parser::parse_x509_crl(crl_der) {
            Ok(([], crl)) => crl,
            Ok(_) => return Err("trailing bytes after the CRL".to_string()),
            Err(e) => return Err(format!("the CRL cannot be parsed: {e}")),
        };
        let this_update = crl.last_update().timestamp();
        if this_update > now.saturating_add(300) {
            return Err("the CRL's thisUpdate is in the future".to_string());
        }
        let next_update = crl
            .next_update()
            .ok_or("the CRL has no nextUpdate")?
            .timestamp();
        if next_update < now {
            return Err("the CRL is past its nextUpdate".to_string());
        }
        for ext in crl.extensions() {
            if ext.oid == OID_X509_EXT_DELTA_CRL_INDICATOR {
                return Err("a delta CRL, not a complete one".to_string());
            }
            match ext.parsed_extension() {
                ParsedExtension::IssuingDistributionPoint(idp) => {
                    if idp.indirect_crl
                        || idp.only_contains_ca_certs
                        || idp.only_contains_attribute_certs
                        || idp.only_some_reasons.is_some()
                    {
                        return Err(
                            "the CRL's issuingDistributionPoint limits its scope (indirect, CA or attribute certificates only, or some reasons only)"
                                .to_string(),
                        );
                    }
                    if let Some(DistributionPointName::FullName(names)) = &idp.distribution_point {
                        let named = names
                            .iter()
                            .any(|n| matches!(n, GeneralName::URI(u) if *u == url));
                        if !named {
                            return Err(format!(
                                "the CRL's issuingDistributionPoint does not name {url}"
                            ));
                        }
                    }
                }
                ParsedExtension::CRLNumber(_) | ParsedExtension::AuthorityKeyIdentifier(_) => {}
                _ if ext.critical => {
                    return Err(format!(
                        "the CRL has a critical extension {} this proxy does not understand",
                        ext.oid.to_id_string()
                    ));
                }
                _ => {}
            }
        }
        let mut serials = std::collections::HashSet::new();
        for r in crl.iter_revoked_certificates() {
            if r.extensions().iter().any(|e| e.critical) {
                return Err("a CRL entry has a critical extension".to_string());
            }
            serials.insert(r.raw_serial().to_vec());
        }
        Ok(VerifiedCrl {
            issuer_der: crl.issuer().as_raw().to_vec(),
            this_update,
            next_update,
            serials,
        })
    }

    /// Whether it revokes `cert` (issuer name and serial).
    pub fn revokes(&self, cert: &ClientCert) -> bool {
        self.issuer_der == cert.issuer_der && self.serials.contains(cert.serial_der.as_slice())
    }
}

/// The issuer name (DER) of a DER certificate; `None` when it does not parse.
pub fn issuer_name_der(der: &[u8]) -> Option<Vec<u8>> {
    match x509_parser::parse_x509_certificate(der) {
        Ok(([], c)) => Some(c.issuer().as_raw().to_vec()),
        _ => None,
    }
}

/// The `http://` and `https://` URIs of a DER certificate's CRL Distribution Points extension
/// (RFC 5280 §4.2.1.13: full names only; a point with a `cRLIssuer` names an indirect CRL,
/// which is skipped), in certificate order without duplicates. Nothing for a certificate that
/// does not parse or has none.
pub fn crl_distribution_points(der: &[u8]) -> Vec<String> {
    use x509_parser::extensions::{DistributionPointName, ParsedExtension};
    let Ok((_, cert)) = x509_parser::parse_x509_certificate(der) else {
        return Vec::new();
    };
    let mut out: Vec<String> = Vec::new();
    for ext in cert.extensions() {
        let ParsedExtension::CRLDistributionPoints(points) = ext.parsed_extension() else {
            continue;
        };
        for point in points.iter().filter(|p| p.crl_issuer.is_none()) {
            let Some(DistributionPointName::FullName(names)) = &point.distribution_point else {
                continue;
            };
            for name in names {
                if let GeneralName::URI(u) = name {
                    let http = u.starts_with("http://") || u.starts_with("https://");
                    if http && !out.iter().any(|o| o == u) {
                        out.push((*u).to_string());
                    }
                }
            }
        }
    }
    out
}

/// x5t#S256 of a DER certificate: unpadded base64url SHA-256 (RFC 8705 §3.1).
pub fn thumbprint_s256(der: &[u8]) -> String {
    let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, der);
    URL_SAFE_NO_PAD.encode(digest.as_ref())
}

/// Lower-case hex of the serial's magnitude: DER sign-padding zero bytes are dropped, so the
/// value matches what CRL tooling prints.
pub fn serial_hex(raw: &[u8]) -> String {
    let start = raw
        .iter()
        .position(|&b| b != 0)
        .unwrap_or(raw.len().saturating_sub(1));
    let mut out = String::new();
    push_hex(raw.get(start..).unwrap_or_default(), &mut out);
    out
}

fn push_hex(bytes: &[u8], out: &mut String) {
    out.reserve(2 * bytes.len());
    for b in bytes {
        // Writing to a String cannot fail.
        let _ = write!(out, "{b:02x}");
    }
}

fn subject_alt_names(cert: &X509Certificate<'_>) -> Result<Vec<String>, CertError> {
    let Some(san) = cert
        .subject_alternative_name()
        .map_err(|_| CertError::BadExtension("subjectAltName"))?
    else {
        return Ok(Vec::new());
    };
    let mut out = Vec::with_capacity(san.value.general_names.len());
    for name in &san.value.general_names {
        match name {
            GeneralName::DNSName(s) => out.push(format!("dns:{s}")),
            GeneralName::URI(s) => out.push(format!("uri:{s}")),
            GeneralName::RFC822Name(s) => out.push(format!("email:{s}")),
            GeneralName::IPAddress(bytes) => {
                if let Ok(v4) = <[u8; 4]>::try_from(*bytes) {
                    out.push(format!("ip:{}", Ipv4Addr::from(v4)));
                } else if let Ok(v6) = <[u8; 16]>::try_from(*bytes) {
                    out.push(format!("ip:{}", Ipv6Addr::from(v6)));
                }
            }
            _ => {}
        }
    }
    Ok(out)
}

/// The value of a single-valued DN attribute: `None` when absent, present more than once
/// (ambiguous) or not a character string.
fn single_attribute(name: &X509Name<'_>, oid: &Oid<'static>) -> Option<String> {
    let mut values = name.iter_by_oid(oid);
    let first = values.next()?;
    if values.next().is_some() {
        return None;
    }
    attribute_string(first)
}

/// Decodes the DirectoryString-ish types found in real certificates. Only universal-class
/// tags are accepted, so a context-specific tag that reuses a string tag number is not text.
fn attribute_string(attr: &AttributeTypeAndValue<'_>) -> Option<String> {
    let value = attr.attr_value();
    if value.class() != Class::Universal {
        return None;
    }
    let data = value.data;
    match value.tag() {
        Tag::Utf8String
        | Tag::PrintableString
        | Tag::Ia5String
        | Tag::NumericString
        | Tag::VisibleString => std::str::from_utf8(data).ok().map(str::to_owned),
        Tag::BmpString => {
            let (units, []) = data.as_chunks::<2>() else {
                return None;
            };
            let units = units.iter().map(|u| u16::from_be_bytes(*u));
            char::decode_utf16(units)
                .collect::<Result<String, _>>()
                .ok()
        }
        Tag::UniversalString => {
            let (units, []) = data.as_chunks::<4>() else {
                return None;
            };
            units
                .iter()
                .map(|u| char::from_u32(u32::from_be_bytes(*u)))
                .collect()
        }
        // T.61 in practice carries Latin-1.
        Tag::TeletexString => Some(data.iter().map(|&b| char::from(b)).collect()),
        _ => None,
    }
}

fn attribute_short_name(oid: &Oid<'_>) -> Option<&'static str> {
    static NAMES: [(Oid<'static>, &str); 12] = [
        (OID_CN, "CN"),
        (OID_SERIAL_NUMBER, "serialNumber"),
        (OID_C, "C"),
        (OID_L, "L"),
        (OID_ST, "ST"),
        (OID_STREET, "STREET"),
        (OID_O, "O"),
        (OID_OU, "OU"),
        (OID_ORG_ID, "organizationIdentifier"),
        (OID_DC, "DC"),
        (OID_UID, "UID"),
        (OID_EMAIL, "emailAddress"),
    ];
    NAMES.iter().find(|(o, _)| o == oid).map(|(_, n)| *n)
}

/// RFC 4514-style rendering: RDNs in reverse order joined by `,`, multi-valued RDNs joined by
/// `+`, unknown types as dotted OIDs, non-string values as `#` + hex of the value bytes.
/// Control characters are escaped as `\XX` so the result is safe to put in a log line.
fn format_name(name: &X509Name<'_>) -> String {
    let rdns: Vec<_> = name.iter_rdn().collect();
    let mut out = String::new();
    for (i, rdn) in rdns.iter().rev().enumerate() {
        if i > 0 {
            out.push(',');
        }
        for (j, attr) in rdn.iter().enumerate() {
            if j > 0 {
                out.push('+');
            }
            match attribute_short_name(attr.attr_type()) {
                Some(n) => out.push_str(n),
                None => out.push_str(&attr.attr_type().to_id_string()),
            }
            out.push('=');
            match attribute_string(attr) {
                Some(s) => escape_rfc4514(&s, &mut out),
                None => {
                    out.push('#');
                    push_hex(attr.as_slice(), &mut out);
                }
            }
        }
    }
    out
}

fn escape_rfc4514(value: &str, out: &mut String) {
    let last = value.chars().count().saturating_sub(1);
    for (i, c) in value.chars().enumerate() {
        match c {
            '"' | '+' | ',' | ';' | '<' | '>' | '\\' => {
                out.push('\\');
                out.push(c);
            }
            '#' if i == 0 => out.push_str("\\#"),
            ' ' if i == 0 || i == last => out.push_str("\\ "),
            c if c.is_control() => {
                let mut buf = [0u8; 4];
                for b in c.encode_utf8(&mut buf).bytes() {
                    // Writing to a String cannot fail.
                    let _ = write!(out, "\\{b:02x}");
                }
            }
            c => out.push(c),
        }
    }
}

/// The PSD2 evidence of a certificate's QCStatements (ETSI TS 119 495).
#[derive(Debug, Default)]
pub struct Psd2Info {
    pub roles: Vec<String>,
    pub nca_id: Option<String>,
}

/// `QCStatements ::= SEQUENCE OF QCStatement { statementId OID, statementInfo ANY OPTIONAL }`.
/// Returns `None` (no PSD2 evidence) when the extension is malformed, has no PSD2 statement,
/// or has more than one.
pub fn parse_psd2_qc_statements(ext_value: &[u8]) -> Option<Psd2Info> {
    let (rest, obj) = parse_der(ext_value).ok()?;
    if !rest.is_empty() {
        return None;
    }
    let mut found = None;
    for statement in obj.as_sequence().ok()? {
        let parts = statement.as_sequence().ok()?;
        let id = parts.first()?.as_oid().ok()?;
        if *id != OID_QC_PSD2 {
            continue;
        }
        let [_, info] = parts.as_slice() else {
            return None;
        };
        if found.is_some() {
            return None;
        }
        found = Some(parse_psd2_statement(info)?);
    }
    found
}

/// `PSD2QcType ::= SEQUENCE { rolesOfPSP SEQUENCE OF RoleOfPSP, nCAName UTF8String,
/// nCAId UTF8String }`, `RoleOfPSP ::= SEQUENCE { roleOfPspOid OID, roleOfPspName UTF8String }`.
/// A known role OID paired with a different name makes the whole statement malformed; unknown
/// role OIDs are skipped.
fn parse_psd2_statement(info: &BerObject<'_>) -> Option<Psd2Info> {
    let fields = info.as_sequence().ok()?;
    let [roles, nca_name, nca_id] = fields.as_slice() else {
        return None;
    };
    nca_name.as_str().ok()?;
    let nca_id = nca_id.as_str().ok()?;
    let mut out = Psd2Info {
        roles: Vec::new(),
        nca_id: (!nca_id.is_empty()).then(|| nca_id.to_owned()),
    };
    for role in roles.as_sequence().ok()? {
        let [role_oid, role_name] = role.as_sequence().ok()?.as_slice() else {
            return None;
        };
        let role_oid = role_oid.as_oid().ok()?;
        let role_name = role_name.as_str().ok()?;
        let Some((_, canonical)) = PSD2_ROLES.iter().find(|(o, _)| o == role_oid) else {
            continue;
        };
        if role_name != *canonical {
            return None;
        }
        if !out.roles.iter().any(|r| r == canonical) {
            out.roles.push((*canonical).to_owned());
        }
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: i64 = 1_800_000_000;
    const URL: &str = "http://crl.example/ca.crl";

    fn ca_params(cn: &str) -> rcgen::CertificateParams {
        let mut p = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        p.distinguished_name = rcgen::DistinguishedName::new();
        p.distinguished_name.push(rcgen::DnType::CommonName, cn);
        p.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        p.key_usages = vec![
            rcgen::KeyUsagePurpose::KeyCertSign,
            rcgen::KeyUsagePurpose::CrlSign,
        ];
        p
    }

    fn at(t: i64) -> time::OffsetDateTime {
        time::OffsetDateTime::from_unix_timestamp(t).unwrap()
    }

    /// A CRL of `issuer` current from `this` to `next`, revoking serial 7, with `idp`.
    fn crl(
        issuer: &rcgen::Issuer<'_, &rcgen::KeyPair>,
        (this, next): (i64, i64),
        idp: Option<rcgen::CrlIssuingDistributionPoint>,
    ) -> Vec<u8> {
        rcgen::CertificateRevocationListParams {
            this_update: at(this),
            next_update: at(next),
            crl_number: rcgen::SerialNumber::from(1u64),
            issuing_distribution_point: idp,
            revoked_certs: vec![rcgen::RevokedCertParams {
                serial_number: rcgen::SerialNumber::from(7u64),
                revocation_time: at(this),
                reason_code: None,
                invalidity_date: None,
            }],
            key_identifier_method: rcgen::KeyIdMethod::Sha256,
        }
        .signed_by(issuer)
        .unwrap()
        .der()
        .to_vec()
    }

    fn idp(
        uri: &str,
        scope: Option<rcgen::CrlScope>,
    ) -> Option<rcgen::CrlIssuingDistributionPoint> {
        Some(rcgen::CrlIssuingDistributionPoint {
            distribution_point: rcgen::CrlDistributionPoint {
                uris: vec![uri.to_string()],
            },
            scope,
        })
    }

    #[test]
    fn a_crl_is_taken_only_from_its_issuer_current_and_complete_for_the_url() {
        let key = rcgen::KeyPair::generate().unwrap();
        let ca = ca_params("ca").self_signed(&key).unwrap();
        let issuer = rcgen::Issuer::new(ca_params("ca"), &key);
        let current = (NOW - 60, NOW + 3600);

        let good = VerifiedCrl::check(&crl(&issuer, current, None), ca.der(), URL, NOW).unwrap();
        assert_eq!(good.next_update, NOW + 3600);
        assert!(good.serials.contains([7u8].as_slice()));
        let named = crl(
            &issuer,
            current,
            idp(URL, Some(rcgen::CrlScope::UserCertsOnly)),
        );
        assert!(VerifiedCrl::check(&named, ca.der(), URL, NOW).is_ok());

        let refused = |der: Vec<u8>, why: &str| {
            let e = VerifiedCrl::check(&der, ca.der(), URL, NOW).unwrap_err();
            assert!(e.contains(why), "{e}");
        };
        refused(
            crl(&issuer, (NOW - 7200, NOW - 60), None),
            "past its nextUpdate",
        );
        refused(
            crl(&issuer, (NOW + 3600, NOW + 7200), None),
            "in the future",
        );
        refused(
            crl(&issuer, current, idp("http://elsewhere/ca.crl", None)),
            "does not name",
        );
        refused(
            crl(
                &issuer,
                current,
                idp(URL, Some(rcgen::CrlScope::CaCertsOnly)),
            ),
            "limits its scope",
        );
        // The CA's name, another key.
        let other = rcgen::KeyPair::generate().unwrap();
        let forger = rcgen::Issuer::new(ca_params("ca"), &other);
        refused(crl(&forger, current, None), "does not verify");
        // Another CA altogether.
        let stranger = rcgen::Issuer::new(ca_params("stranger"), &other);
        refused(crl(&stranger, current, None), "none of the client CAs");
        refused(b"\x30\x03\x02\x01\x01".to_vec(), "cannot be parsed");
        refused(Vec::new(), "cannot be parsed");
    }
}
