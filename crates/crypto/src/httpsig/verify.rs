//! Verifying one request signature (RFC 9421 §3.2) under a profile such as FAPI 2.0 Message
//! Signing.
//!
//! Two steps, so the caller can resolve the key (which may need I/O) in between:
//! [`select`] picks the one signature whose `tag` is the profile's and checks everything that
//! needs no key (coverage, `created`/`expires`, `keyid`, `nonce` presence); [`verify_with`] then
//! checks the algorithm against the key and the signature over the rebuilt base. Signatures
//! with other tags are never read: a second signature, under any key, grants nothing (§7.2.6);
//! two signatures with the profile's tag are refused as ambiguous.

use http::HeaderMap;
use sfv::{BareItem, ListEntry};

use super::base::{signature_base, Message};
use super::fields::{input, parse_field, signature_bytes, SignatureInput};
use super::{alg_agrees, HttpSigError};
use crate::jose::jwk::VerifyingKey;
use crate::jose::Alg;

/// What the profile requires of the signature.
pub struct Policy<'a> {
    /// The `tag` that marks the signature to verify (FAPI: `fapi-2-request`).
    pub tag: &'a str,
    pub now: i64,
    /// How old `created` may be, in seconds.
    pub window: i64,
    /// How far in the future `created` may be, in seconds.
    pub skew: i64,
    pub require_nonce: bool,
    /// Components that must be covered (by name, without `req`).
    pub required: &'a [&'a str],
}

/// The chosen signature, checked as far as possible without its key.
#[derive(Debug)]
pub struct Selected {
    pub input: SignatureInput,
    pub signature: Vec<u8>,
    pub keyid: String,
    pub created: i64,
}

fn has_tag(entry: &ListEntry, tag: &str) -> bool {
    match entry {
        ListEntry::InnerList(l) => {
            matches!(l.params.get("tag"), Some(BareItem::String(t)) if t.as_str() == tag)
        }
        ListEntry::Item(_) => false,
    }
}

/// Picks the signature with the profile's tag and checks it without its key.
pub fn select(headers: &HeaderMap, p: &Policy<'_>) -> Result<Selected, HttpSigError> {
    let inputs = parse_field(headers.get_all("signature-input"))?;
    let sigs = parse_field(headers.get_all("signature"))?;
    let (Some(inputs), Some(sigs)) = (inputs, sigs) else {
        return Err(HttpSigError::Missing);
    };
    let mut chosen = None;
    for (label, entry) in &inputs {
        if !has_tag(entry, p.tag) {
            continue;
        }
        if chosen.is_some() {
            return Err(HttpSigError::Ambiguous);
        }
        chosen = Some(input(label.as_str(), entry)?);
    }
    let input = chosen.ok_or(HttpSigError::Missing)?;
    let signature = signature_bytes(&sigs, &input.label)?.to_vec();
    if p.required.iter().any(|name| !input.covers(name)) {
        return Err(HttpSigError::Coverage);
    }
    let created = input.created.ok_or(HttpSigError::CreatedMissing)?;
    if created > p.now.saturating_add(p.skew) || created < p.now.saturating_sub(p.window) {
        return Err(HttpSigError::Created);
    }
    if input.expires.is_some_and(|e| e <= p.now) {
        return Err(HttpSigError::Expired);
    }
    let keyid = match &input.keyid {
        Some(k) if !k.is_empty() => k.clone(),
        _ => return Err(HttpSigError::KeyidMissing),
    };
    if p.require_nonce && input.nonce.as_deref().is_none_or(str::is_empty) {
        return Err(HttpSigError::NonceMissing);
    }
    Ok(Selected {
        input,
        signature,
        keyid,
        created,
    })
}

/// Checks the algorithm against `key` (resolved by `keyid`) and the signature over the base
/// rebuilt from `msg`.
pub fn verify_with(
    sel: &Selected,
    msg: Message<'_>,
    key: &VerifyingKey,
    allowed: &[Alg],
) -> Result<(), HttpSigError> {
    if !allowed.contains(&key.alg) || !alg_agrees(sel.input.alg.as_deref(), key.alg) {
        return Err(HttpSigError::Alg);
    }
    let base = signature_base(&sel.input.covered, msg).map_err(HttpSigError::Component)?;
    if key.verify(base.as_bytes(), &sel.signature) {
        Ok(())
    } else {
        Err(HttpSigError::BadSignature)
    }
}
