//! Bounded text: every attacker-controlled string kept in a record, a log line or a metric goes
//! through [`bounded`] (or [`bounded_bytes`] for raw header bytes), so no stored value is longer
//! than [`MAX_FIELD`] bytes plus the [`TRUNCATED`] marker.

/// Longest attacker-controlled string kept in a record, in bytes.
pub const MAX_FIELD: usize = 512;
/// Appended where a value was cut at [`MAX_FIELD`].
pub const TRUNCATED: &str = "...[truncated]";

/// Truncates `s` at a char boundary to [`MAX_FIELD`] bytes, marking the cut.
pub fn bounded(s: &str) -> String {
    if s.len() <= MAX_FIELD {
        return s.to_string();
    }
    let mut end = MAX_FIELD;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}{TRUNCATED}", &s[..end])
}

/// A raw byte string (a header value, say) as text: valid UTF-8 runs are kept, a backslash is
/// doubled, and every byte that is not part of valid UTF-8 becomes `\xNN`; the result is
/// [`bounded`]. The mapping is unambiguous, so the original bytes can be told from the record.
pub fn bounded_bytes(b: &[u8]) -> String {
    let mut out = String::with_capacity(b.len().min(MAX_FIELD + 16));
    for chunk in b.utf8_chunks() {
        for c in chunk.valid().chars() {
            if c == '\\' {
                out.push_str("\\\\");
            } else {
                out.push(c);
            }
        }
        for byte in chunk.invalid() {
            out.push_str(&format!("\\x{byte:02x}"));
        }
        if out.len() > MAX_FIELD {
            break;
        }
    }
    bounded(&out)
}
