//! Path safety: the path that is authorized is the path that is forwarded.
//!
//! portcullis does not rewrite request paths. A path is accepted only when it is already in the
//! one canonical form that route matching, policy and the upstream all read the same way;
//! anything that two parsers could read differently is refused with 400:
//!
//! - dot segments (`.`, `..`) and their encoded forms (`%2e`), encoded `/` and `\` (`%2f`, `%5c`);
//! - empty segments: duplicate slashes (`//`) and a trailing slash;
//! - `%25` (a second layer of encoding) and needless encoding of unreserved characters (`%41`);
//! - malformed escapes (`%4`, `%zz`) and escapes with lower-case hex digits (`%3a`: only `%3A`
//!   is canonical, RFC 3986 §6.2.2.1), encoded or raw control bytes, NUL, space, and any byte
//!   outside ASCII;
//! - a raw backslash, and `#`;
//! - a segment whose part before a `;` is empty or a dot segment (`..;x`): servlet containers
//!   (Tomcat, Jetty, Spring) strip `;` path parameters before they resolve dot segments, so to
//!   them `/a/..;/b` is `/b`.
//!
//! Path parameters themselves (`;` or `%3B` in a segment) are refused after the route match
//! unless the route allows them ([`has_parameters`]): the upstream may strip them, so the
//! segment a rule read is not the segment the upstream acts on.
//!
//! The check is a single pass over the bytes, allocation-free, and never panics.

use std::fmt;

crate::variants! {
    /// Why a path or query was refused. Each maps to its own reason code.
    #[derive(Clone, Copy, Debug, PartialEq, Eq)]
    pub enum PathError {
        /// Does not start with `/` (absolute-form and authority-form targets included).
        NotOriginForm,
        DotSegment,
        EncodedSeparator,
        EncodedDot,
        DoubleEncoding,
        NeedlessEncoding,
        BadEscape,
        Backslash,
        ControlChar,
        Fragment,
        NonAscii,
        EmptySegment,
        /// A byte that RFC 3986 does not allow unencoded in a path or query.
        InvalidChar,
        /// A `;` path parameter on a route that does not allow them.
        Parameter,
    }
}

impl PathError {
    /// The stable reason code.
    pub fn reason(self) -> &'static str {
        match self {
            PathError::NotOriginForm => "path.not_origin_form",
            PathError::DotSegment => "path.dot_segment",
            PathError::EncodedSeparator => "path.encoded_separator",
            PathError::EncodedDot => "path.encoded_dot",
            PathError::DoubleEncoding => "path.double_encoding",
            PathError::NeedlessEncoding => "path.needless_encoding",
            PathError::BadEscape => "path.bad_escape",
            PathError::Backslash => "path.backslash",
            PathError::ControlChar => "path.control_char",
            PathError::Fragment => "path.fragment",
            PathError::NonAscii => "path.non_ascii",
            PathError::EmptySegment => "path.empty_segment",
            PathError::InvalidChar => "path.invalid_char",
            PathError::Parameter => "path.parameter",
        }
    }
}

impl PathError {
    /// The public words for this refusal.
    pub fn detail(self) -> &'static str {
        match self {
            PathError::NotOriginForm => "the request target must be a path starting with /",
            PathError::DotSegment => "the path contains a dot segment",
            PathError::EncodedSeparator => "the path contains an encoded slash or backslash",
            PathError::EncodedDot => "the path contains an encoded dot",
            PathError::DoubleEncoding => "the path contains an encoded percent sign",
            PathError::NeedlessEncoding => "the path encodes a character that needs no encoding",
            PathError::BadEscape => "the path contains a malformed percent escape",
            PathError::Backslash => "the path contains a backslash",
            PathError::ControlChar => "the path contains a control character or space",
            PathError::Fragment => "the request target contains a fragment",
            PathError::NonAscii => "the path contains a non-ASCII byte",
            PathError::EmptySegment => "the path contains an empty segment (// or a trailing /)",
            PathError::InvalidChar => "the path contains a character that must be encoded",
            PathError::Parameter => {
                "the path contains a ; parameter, which this route does not take"
            }
        }
    }
}

impl fmt::Display for PathError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.detail())
    }
}

fn hex(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

fn is_unreserved(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~')
}

/// RFC 3986 `pchar` minus `%` (handled apart): unreserved, sub-delims, `:` and `@`.
fn is_plain_pchar(b: u8) -> bool {
    is_unreserved(b)
        || matches!(
            b,
            b'!' | b'$'
                | b'&'
                | b'\''
                | b'('
                | b')'
                | b'*'
                | b'+'
                | b','
                | b';'
                | b'='
                | b':'
                | b'@'
        )
}

/// Classifies a raw byte that is not a plain pchar.
fn raw_error(b: u8) -> PathError {
    match b {
        b'\\' => PathError::Backslash,
        b'#' => PathError::Fragment,
        0x00..=0x20 | 0x7f => PathError::ControlChar,
        0x80..=0xff => PathError::NonAscii,
        _ => PathError::InvalidChar,
    }
}

/// Decodes the escape at `bytes[i]` (which is `%`), or says why it is refused.
fn escape(bytes: &[u8], i: usize) -> Result<u8, PathError> {
    let (Some(&h), Some(&l)) = (bytes.get(i + 1), bytes.get(i + 2)) else {
        return Err(PathError::BadEscape);
    };
    let (Some(h), Some(l)) = (hex(h), hex(l)) else {
        return Err(PathError::BadEscape);
    };
    let v = h << 4 | l;
    match v {
        b'/' | b'\\' => Err(PathError::EncodedSeparator),
        b'.' => Err(PathError::EncodedDot),
        b'%' => Err(PathError::DoubleEncoding),
        0x00..=0x1f | 0x7f => Err(PathError::ControlChar),
        0x80..=0xff => Err(PathError::NonAscii),
        v if is_unreserved(v) => Err(PathError::NeedlessEncoding),
        // RFC 3986 §6.2.2.1: `%3a` and `%3A` are the same octet; only the upper-case spelling
        // is canonical, so a path has one spelling.
        _ if bytes[i + 1..i + 3].iter().any(u8::is_ascii_lowercase) => Err(PathError::BadEscape),
        v => Ok(v),
    }
}

/// Accepts `path` only if it is in canonical form (see the module doc).
pub fn check_path(path: &str) -> Result<(), PathError> {
    let bytes = path.as_bytes();
    if bytes.first() != Some(&b'/') {
        return Err(PathError::NotOriginForm);
    }
    if bytes.len() == 1 {
        return Ok(());
    }
    let mut i = 1;
    let mut seg_start = 1;
    loop {
        let b = bytes.get(i).copied();
        match b {
            None | Some(b'/') => {
                let seg = &bytes[seg_start..i];
                // What a servlet container resolves: the segment without its parameters.
                let stem = seg.split(|&c| c == b';').next().unwrap_or_default();
                match (seg, stem) {
                    (b"", _) | (_, b"") => return Err(PathError::EmptySegment),
                    (_, b"." | b"..") => return Err(PathError::DotSegment),
                    _ => {}
                }
                if b.is_none() {
                    return Ok(());
                }
                seg_start = i + 1;
                i += 1;
            }
            Some(b'%') => {
                escape(bytes, i)?;
                i += 3;
            }
            Some(b) if is_plain_pchar(b) => i += 1,
            Some(b) => return Err(raw_error(b)),
        }
    }
}

/// Whether a checked path carries `;` path parameters, raw or encoded.
pub fn has_parameters(path: &str) -> bool {
    let b = path.as_bytes();
    b.contains(&b';') || b.windows(3).any(|w| w == b"%3B")
}

/// `application/x-www-form-urlencoded` percent-decoding (WHATWG): `+` is a space, then percent
/// escapes. `None` for a malformed escape. The bytes need not be UTF-8.
pub fn form_decode(s: &str) -> Option<Vec<u8>> {
    decode(s, true)
}

/// RFC 3986 percent-decoding of a path segment: `%XX` escapes, `+` stays `+`. `None` for a
/// malformed escape. The bytes need not be UTF-8.
pub fn percent_decode(s: &str) -> Option<Vec<u8>> {
    decode(s, false)
}

fn decode(s: &str, plus_is_space: bool) -> Option<Vec<u8>> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while let Some(&c) = b.get(i) {
        match c {
            b'%' => {
                let (Some(h), Some(l)) = (
                    b.get(i + 1).copied().and_then(hex),
                    b.get(i + 2).copied().and_then(hex),
                ) else {
                    return None;
                };
                out.push(h << 4 | l);
                i += 3;
            }
            b'+' if plus_is_space => {
                out.push(b' ');
                i += 1;
            }
            c => {
                out.push(c);
                i += 1;
            }
        }
    }
    Some(out)
}

/// One query component as upstream frameworks read names and values ([`form_decode`]), as
/// text. `None` for a malformed escape or bytes that are not UTF-8.
pub fn decode_query_component(s: &str) -> Option<std::borrow::Cow<'_, str>> {
    if !s.bytes().any(|c| c == b'%' || c == b'+') {
        return Some(std::borrow::Cow::Borrowed(s));
    }
    String::from_utf8(form_decode(s)?)
        .ok()
        .map(std::borrow::Cow::Owned)
}

/// The query's `name=value` pairs, raw (empty pieces between `&`s skipped).
pub fn query_pairs(query: &str) -> impl Iterator<Item = (&str, &str)> {
    query
        .split('&')
        .filter(|s| !s.is_empty())
        .map(|kv| kv.split_once('=').unwrap_or((kv, "")))
}

/// Whether two member or parameter names are the same to a case-insensitive binder (ASP.NET
/// Core, Jackson's case-insensitive properties): equal under ASCII case folding, or under
/// Unicode lower- or upper-casing.
pub fn same_name_ignoring_case(a: &str, b: &str) -> bool {
    if a.eq_ignore_ascii_case(b) {
        return true;
    }
    if a.is_ascii() && b.is_ascii() {
        return false;
    }
    a.to_lowercase() == b.to_lowercase() || a.to_uppercase() == b.to_uppercase()
}

/// Accepts a query string (without `?`): pchars, `/`, `?` and well-formed escapes of bytes
/// other than control characters and non-ASCII. Query values are data, so encoded dots and
/// slashes are allowed here.
pub fn check_query(query: &str) -> Result<(), PathError> {
    let bytes = query.as_bytes();
    let mut i = 0;
    while let Some(&b) = bytes.get(i) {
        match b {
            b'%' => {
                let (Some(&h), Some(&l)) = (bytes.get(i + 1), bytes.get(i + 2)) else {
                    return Err(PathError::BadEscape);
                };
                let (Some(h), Some(l)) = (hex(h), hex(l)) else {
                    return Err(PathError::BadEscape);
                };
                match h << 4 | l {
                    0x00..=0x1f | 0x7f => return Err(PathError::ControlChar),
                    0x80..=0xff => return Err(PathError::NonAscii),
                    _ => {}
                }
                i += 3;
            }
            b'/' | b'?' => i += 1,
            b if is_plain_pchar(b) => i += 1,
            b => return Err(raw_error(b)),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests;
