//! Component values and the signature base (RFC 9421 §2).
//!
//! Derived components: `@method`, `@target-uri`, `@authority`, `@scheme`, `@request-target`,
//! `@path`, `@query`, `@query-param;name=`, `@status`. Field components with the `sf`, `key`,
//! `bs` and `req` parameters (`tr` — trailers — is not supported and refused). Field values are
//! the field lines in order, each trimmed, joined with `", "`; a value with bytes outside
//! printable ASCII is refused, so two parsers can never build different bases from it.

use std::fmt::Write as _;

use base64::Engine;
use http::HeaderMap;
use sfv::{BareItem, Dictionary, InnerList, Item, ItemSerializer, List, ListEntry, ListSerializer};

use super::fields::parse_dictionary_str;

/// A request as the signer saw it: the external target URI, not the upstream one (RFC 9421
/// §7.4.3).
#[derive(Debug)]
pub struct RequestView<'a> {
    pub method: &'a str,
    /// Lower-case scheme, e.g. `https`.
    pub scheme: &'a str,
    /// Normalized authority: lower-case host, default port removed (see [`normalize_authority`]).
    pub authority: &'a str,
    pub path: &'a str,
    pub query: Option<&'a str>,
    pub headers: &'a HeaderMap,
}

#[derive(Debug)]
pub struct ResponseView<'a> {
    pub status: u16,
    pub headers: &'a HeaderMap,
}

/// The message a signature covers; a response may carry its request for `req` components.
#[derive(Clone, Copy, Debug)]
pub enum Message<'a> {
    Request(&'a RequestView<'a>),
    Response(&'a ResponseView<'a>, Option<&'a RequestView<'a>>),
}

portcullis_base::variants! {
    #[derive(Clone, Copy, Debug, PartialEq, Eq)]
    pub enum ComponentError {
        /// A covered component is not in the message.
        Missing,
        /// Not a component we can evaluate: not a string, an unknown derived component, an unknown
        /// or ill-typed parameter, `tr`, a field name that is not lower-case, `@signature-params`.
        Unsupported,
        /// The same component identifier is covered twice.
        Duplicate,
        /// The value cannot be put in the base unambiguously: bytes outside printable ASCII, a
        /// repeated query parameter, an `sf`/`key` value that does not parse.
        Invalid,
    }
}

/// RFC 9110 §4.2.3 / RFC 9421 §2.2.3: lower-case host, default port for the scheme removed.
pub fn normalize_authority(scheme: &str, authority: &str) -> Option<String> {
    let a: http::uri::Authority = authority.parse().ok()?;
    if authority.contains('@') {
        return None;
    }
    let host = a.host().to_ascii_lowercase();
    let default = match scheme {
        "https" => 443,
        "http" => 80,
        _ => return None,
    };
    Some(match a.port_u16() {
        Some(p) if p != default => format!("{host}:{p}"),
        _ => host,
    })
}

/// Whether a field is a dictionary (for `sf` and `key=`); other fields are parsed as lists.
fn is_dictionary_field(name: &str) -> bool {
    matches!(
        name,
        "content-digest"
            | "repr-digest"
            | "want-content-digest"
            | "want-repr-digest"
            | "signature"
            | "signature-input"
            | "accept-signature"
            | "priority"
    )
}

#[derive(Default)]
struct Flags<'i> {
    sf: bool,
    bs: bool,
    req: bool,
    key: Option<&'i str>,
    name: Option<&'i str>,
}

fn flags(item: &Item) -> Result<Flags<'_>, ComponentError> {
    let mut f = Flags::default();
    for (k, v) in &item.params {
        match (k.as_str(), v) {
            ("sf", BareItem::Boolean(true)) => f.sf = true,
            ("bs", BareItem::Boolean(true)) => f.bs = true,
            ("req", BareItem::Boolean(true)) => f.req = true,
            ("key", BareItem::String(s)) => f.key = Some(s.as_str()),
            ("name", BareItem::String(s)) => f.name = Some(s.as_str()),
            _ => return Err(ComponentError::Unsupported),
        }
    }
    Ok(f)
}

/// Printable ASCII plus SP/HTAB only (RFC 9421 §2.5: the base is ASCII).
fn clean(b: &[u8]) -> Result<&str, ComponentError> {
    let t = trim(b);
    if t.iter().all(|c| (0x20..0x7f).contains(c) || *c == b'\t') {
        std::str::from_utf8(t).map_err(|_| ComponentError::Invalid)
    } else {
        Err(ComponentError::Invalid)
    }
}

fn trim(mut b: &[u8]) -> &[u8] {
    while let [b' ' | b'\t', rest @ ..] = b {
        b = rest;
    }
    while let [rest @ .., b' ' | b'\t'] = b {
        b = rest;
    }
    b
}

/// Percent-encoding with the `application/x-www-form-urlencoded` percent-encode set, space as
/// `%20` (RFC 9421 §2.2.8).
fn form_encode(b: &[u8]) -> String {
    let mut out = String::with_capacity(b.len());
    for &c in b {
        if c.is_ascii_alphanumeric() || matches!(c, b'*' | b'-' | b'.' | b'_') {
            out.push(c as char);
        } else {
            let _ = write!(out, "%{c:02X}");
        }
    }
    out
}

/// `@query-param;name=`: the one parameter of that (encoded) name, re-encoded. A parameter that
/// appears twice is refused (RFC 9421 §7.5.8, attacks C12).
fn query_param(query: Option<&str>, name: &str) -> Result<String, ComponentError> {
    let mut found = None;
    for pair in query.unwrap_or("").split('&').filter(|p| !p.is_empty()) {
        let (n, v) = pair.split_once('=').unwrap_or((pair, ""));
        let n = portcullis_base::path::form_decode(n).ok_or(ComponentError::Invalid)?;
        if form_encode(&n) != name {
            continue;
        }
        if found.is_some() {
            return Err(ComponentError::Invalid);
        }
        let v = portcullis_base::path::form_decode(v).ok_or(ComponentError::Invalid)?;
        found = Some(form_encode(&v));
    }
    found.ok_or(ComponentError::Missing)
}

fn derived(name: &str, f: &Flags<'_>, msg: Message<'_>) -> Result<String, ComponentError> {
    if f.sf || f.bs || f.key.is_some() || (f.name.is_some() && name != "@query-param") {
        return Err(ComponentError::Unsupported);
    }
    if name == "@status" {
        return match (msg, f.req) {
            (Message::Response(r, _), false) => Ok(r.status.to_string()),
            _ => Err(ComponentError::Unsupported),
        };
    }
    let req = match (msg, f.req) {
        (Message::Request(r), false) => r,
        (Message::Response(_, Some(r)), true) => r,
        (Message::Response(_, None), true) => return Err(ComponentError::Missing),
        _ => return Err(ComponentError::Unsupported),
    };
    let path = if req.path.is_empty() { "/" } else { req.path };
    Ok(match name {
        "@method" => req.method.to_string(),
        "@target-uri" => match req.query {
            Some(q) => format!("{}://{}{path}?{q}", req.scheme, req.authority),
            None => format!("{}://{}{path}", req.scheme, req.authority),
        },
        "@authority" => req.authority.to_string(),
        "@scheme" => req.scheme.to_string(),
        "@request-target" => match req.query {
            Some(q) => format!("{path}?{q}"),
            None => path.to_string(),
        },
        "@path" => path.to_string(),
        "@query" => format!("?{}", req.query.unwrap_or("")),
        "@query-param" => {
            let n = f.name.ok_or(ComponentError::Unsupported)?;
            query_param(req.query, n)?
        }
        _ => return Err(ComponentError::Unsupported),
    })
}

fn serialize_entry(e: &ListEntry) -> String {
    let mut s = ListSerializer::new();
    s.members([e]);
    s.finish().unwrap_or_default()
}

fn field(name: &str, f: &Flags<'_>, msg: Message<'_>) -> Result<String, ComponentError> {
    if f.name.is_some() || name.is_empty() || name.bytes().any(|b| b.is_ascii_uppercase()) {
        return Err(ComponentError::Unsupported);
    }
    if f.bs && (f.sf || f.key.is_some()) {
        return Err(ComponentError::Unsupported);
    }
    let headers = match (msg, f.req) {
        (Message::Request(r), false) => r.headers,
        (Message::Response(r, _), false) => r.headers,
        (Message::Response(_, Some(r)), true) => r.headers,
        (Message::Response(_, None), true) => return Err(ComponentError::Missing),
        (Message::Request(_), true) => return Err(ComponentError::Unsupported),
    };
    let hn =
        http::HeaderName::from_bytes(name.as_bytes()).map_err(|_| ComponentError::Unsupported)?;
    let lines: Vec<&[u8]> = headers.get_all(&hn).iter().map(|v| v.as_bytes()).collect();
    if lines.is_empty() {
        return Err(ComponentError::Missing);
    }
    if f.bs {
        let b64 = base64::engine::general_purpose::STANDARD;
        return Ok(lines
            .iter()
            .map(|l| format!(":{}:", b64.encode(trim(l))))
            .collect::<Vec<_>>()
            .join(", "));
    }
    let mut joined = String::new();
    for (i, l) in lines.iter().enumerate() {
        if i > 0 {
            joined.push_str(", ");
        }
        joined.push_str(clean(l)?);
    }
    if let Some(key) = f.key {
        let dict: Dictionary =
            parse_dictionary_str(&joined).map_err(|_| ComponentError::Invalid)?;
        let member = dict.get(key).ok_or(ComponentError::Missing)?;
        return Ok(serialize_entry(member));
    }
    if f.sf {
        if is_dictionary_field(name) {
            let dict: Dictionary =
                parse_dictionary_str(&joined).map_err(|_| ComponentError::Invalid)?;
            let mut s = sfv::DictSerializer::new();
            s.members(&dict);
            return s.finish().ok_or(ComponentError::Invalid);
        }
        let list: List = sfv::Parser::new(&joined)
            .with_version(sfv::Version::Rfc8941)
            .parse()
            .map_err(|_| ComponentError::Invalid)?;
        let mut s = ListSerializer::new();
        s.members(&list);
        return s.finish().ok_or(ComponentError::Invalid);
    }
    Ok(joined)
}

/// The value of one covered component in `msg`.
pub fn component_value(item: &Item, msg: Message<'_>) -> Result<String, ComponentError> {
    let BareItem::String(name) = &item.bare_item else {
        return Err(ComponentError::Unsupported);
    };
    let name = name.as_str();
    let f = flags(item)?;
    if name == "@signature-params" {
        return Err(ComponentError::Unsupported);
    }
    if name.starts_with('@') {
        derived(name, &f, msg)
    } else {
        field(name, &f, msg)
    }
}

/// A component identifier, serialized (`"content-digest";req`).
pub fn identifier(item: &Item) -> String {
    ItemSerializer::new()
        .bare_item(&item.bare_item)
        .parameters(&item.params)
        .finish()
}

/// The `@signature-params` value: the inner list with its parameters, canonically serialized.
pub fn signature_params(covered: &InnerList) -> String {
    serialize_entry(&ListEntry::InnerList(covered.clone()))
}

/// The signature base (RFC 9421 §2.5) for the covered components and parameters in `covered`.
pub fn signature_base(covered: &InnerList, msg: Message<'_>) -> Result<String, ComponentError> {
    let mut out = String::with_capacity(512);
    let mut seen: Vec<String> = Vec::with_capacity(covered.items.len());
    for item in &covered.items {
        let id = identifier(item);
        if seen.contains(&id) {
            return Err(ComponentError::Duplicate);
        }
        let value = component_value(item, msg)?;
        out.push_str(&id);
        out.push_str(": ");
        out.push_str(&value);
        out.push('\n');
        seen.push(id);
    }
    out.push_str("\"@signature-params\": ");
    out.push_str(&signature_params(covered));
    Ok(out)
}
