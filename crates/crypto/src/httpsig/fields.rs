//! `Signature-Input` and `Signature` (RFC 9421 §4): dictionaries whose members are labelled
//! signatures. All field lines are joined (RFC 9110 §5.3) and parsed once as RFC 8941
//! dictionaries; a label given twice is refused rather than "last one wins", so no two readers
//! of the same headers can disagree on which signature a label names.

use std::convert::Infallible;

use http::header::GetAll;
use http::HeaderValue;
use sfv::visitor::{DictionaryVisitor, EntryVisitor};
use sfv::{BareItem, Dictionary, InnerList, KeyRef, ListEntry};

use super::HttpSigError;

#[derive(Debug)]
struct DuplicateKey;

impl std::fmt::Display for DuplicateKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("duplicate dictionary key")
    }
}

impl std::error::Error for DuplicateKey {}

/// Builds a [`Dictionary`] but refuses a repeated key.
struct NoDuplicates(Dictionary);

impl<'de> DictionaryVisitor<'de> for NoDuplicates {
    type Out = Dictionary;
    type Error = DuplicateKey;

    fn entry(&mut self, key: &'de KeyRef) -> Result<impl EntryVisitor<'de>, Self::Error> {
        if self.0.contains_key(key.as_str()) {
            return Err(DuplicateKey);
        }
        <Dictionary as DictionaryVisitor<'de>>::entry(&mut self.0, key)
            .map_err(|never: Infallible| match never {})
    }

    fn finish(self) -> Result<Self::Out, Self::Error> {
        Ok(self.0)
    }
}

/// Parses an RFC 8941 dictionary, refusing repeated keys.
pub fn parse_dictionary_str(s: &str) -> Result<Dictionary, sfv::Error> {
    sfv::Parser::new(s)
        .with_version(sfv::Version::Rfc8941)
        .parse_dictionary_with_visitor(NoDuplicates(Dictionary::new()))
}

/// Joins every line of a field (`None` when absent) and parses it as a dictionary.
pub fn parse_field(lines: GetAll<'_, HeaderValue>) -> Result<Option<Dictionary>, HttpSigError> {
    let mut joined = String::new();
    let mut any = false;
    for l in lines {
        let s = l.to_str().map_err(|_| HttpSigError::Malformed)?;
        if any {
            joined.push_str(", ");
        }
        joined.push_str(s);
        any = true;
    }
    if !any {
        return Ok(None);
    }
    parse_dictionary_str(&joined)
        .map(Some)
        .map_err(|_| HttpSigError::Malformed)
}

/// One labelled signature's input: the covered components with their parameters.
#[derive(Clone, Debug)]
pub struct SignatureInput {
    pub label: String,
    /// The inner list exactly as parsed (components and parameters), re-serialized canonically
    /// for `@signature-params`.
    pub covered: InnerList,
    pub created: Option<i64>,
    pub expires: Option<i64>,
    pub nonce: Option<String>,
    pub alg: Option<String>,
    pub keyid: Option<String>,
    pub tag: Option<String>,
}

impl SignatureInput {
    /// Whether a component with this name (any parameters) is covered, without `req`.
    pub fn covers(&self, name: &str) -> bool {
        self.covered.items.iter().any(|i| {
            matches!(&i.bare_item, BareItem::String(s) if s.as_str() == name)
                && !i.params.contains_key("req")
        })
    }
}

/// Reads one `Signature-Input` member; parameters of the wrong type are malformed.
pub fn input(label: &str, entry: &ListEntry) -> Result<SignatureInput, HttpSigError> {
    let ListEntry::InnerList(list) = entry else {
        return Err(HttpSigError::Malformed);
    };
    if list
        .items
        .iter()
        .any(|i| !matches!(i.bare_item, BareItem::String(_)))
    {
        return Err(HttpSigError::Malformed);
    }
    let mut s = SignatureInput {
        label: label.to_string(),
        covered: list.clone(),
        created: None,
        expires: None,
        nonce: None,
        alg: None,
        keyid: None,
        tag: None,
    };
    for (k, v) in &list.params {
        match (k.as_str(), v) {
            ("created", BareItem::Integer(i)) => s.created = Some(i64::from(*i)),
            ("expires", BareItem::Integer(i)) => s.expires = Some(i64::from(*i)),
            ("nonce", BareItem::String(v)) => s.nonce = Some(v.as_str().to_string()),
            ("alg", BareItem::String(v)) => s.alg = Some(v.as_str().to_string()),
            ("keyid", BareItem::String(v)) => s.keyid = Some(v.as_str().to_string()),
            ("tag", BareItem::String(v)) => s.tag = Some(v.as_str().to_string()),
            ("created" | "expires" | "nonce" | "alg" | "keyid" | "tag", _) => {
                return Err(HttpSigError::Malformed)
            }
            // Extension parameters are signed (they are part of @signature-params) but mean
            // nothing to us.
            _ => {}
        }
    }
    Ok(s)
}

/// The `Signature` byte sequence for `label` (RFC 9421 §3.2 step 1: a label without a
/// signature, or a signature that is not a byte sequence, is refused).
pub fn signature_bytes<'d>(sigs: &'d Dictionary, label: &str) -> Result<&'d [u8], HttpSigError> {
    match sigs.get(label) {
        Some(ListEntry::Item(i)) => match &i.bare_item {
            BareItem::ByteSequence(b) if i.params.is_empty() => Ok(b),
            _ => Err(HttpSigError::Malformed),
        },
        Some(ListEntry::InnerList(_)) => Err(HttpSigError::Malformed),
        None => Err(HttpSigError::Label),
    }
}
