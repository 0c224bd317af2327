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
//! - a raw backslash, and `#`.
//!
//! The check is a single pass over the bytes, allocation-free, and never panics.

use std::fmt;

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
                match seg {
                    b"" => return Err(PathError::EmptySegment),
                    b"." | b".." => return Err(PathError::DotSegment),
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
