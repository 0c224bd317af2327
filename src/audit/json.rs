//! JSON for audit lines: serde_json's compact output with a stricter string escaper.
//!
//! serde_json already escapes `"`, `\` and every C0 control character (so CR, LF and the ANSI
//! ESC become `\r`, `\n`, `\u001b`). [`SafeFormatter`] also escapes, as `\uXXXX`:
//! - U+2028 and U+2029 (line and paragraph separators: some readers split lines on them),
//! - U+007F and the C1 controls U+0080..=U+009F (U+009B is an 8-bit ANSI CSI),
//! - the bidirectional overrides and isolates U+202A..=U+202E and U+2066..=U+2069, which can
//!   make a terminal show a line in an order other than its bytes.
//!
//! Invariant: the output of [`to_line_body`] never contains a byte below 0x20, nor any of the
//! characters above unescaped, so one record is always exactly one line.

use std::io;

use serde::Serialize;
use serde_json::ser::Formatter;

/// serde_json's compact formatter, with the extra escapes described in the module doc.
#[derive(Clone, Copy, Debug, Default)]
pub struct SafeFormatter;

fn must_escape(c: char) -> bool {
    matches!(c, '\u{7f}'..='\u{9f}' | '\u{2028}' | '\u{2029}' | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}')
}

impl Formatter for SafeFormatter {
    fn write_string_fragment<W>(&mut self, writer: &mut W, fragment: &str) -> io::Result<()>
    where
        W: ?Sized + io::Write,
    {
        // 0x7f is ASCII; anything else we escape starts with a byte >= 0xc2.
        if fragment.bytes().all(|b| b < 0x7f) {
            return writer.write_all(fragment.as_bytes());
        }
        let mut start = 0;
        for (i, c) in fragment.char_indices() {
            if must_escape(c) {
                writer.write_all(&fragment.as_bytes()[start..i])?;
                write!(writer, "\\u{:04x}", c as u32)?;
                start = i + c.len_utf8();
            }
        }
        writer.write_all(&fragment.as_bytes()[start..])
    }
}

/// Serializes `value` (a JSON object) with [`SafeFormatter`] into `out`, without its outer
/// braces: the members only, ready to be spliced into a line. Returns false (and leaves `out`
/// as it was) if `value` is not a non-empty object or cannot be serialized.
pub fn to_line_body<T: Serialize>(value: &T, out: &mut Vec<u8>) -> bool {
    let start = out.len();
    let mut ser = serde_json::Serializer::with_formatter(&mut *out, SafeFormatter);
    if value.serialize(&mut ser).is_err() {
        out.truncate(start);
        return false;
    }
    let written = &out[start..];
    if written.len() < 3 || written[0] != b'{' || written[written.len() - 1] != b'}' {
        out.truncate(start);
        return false;
    }
    out.pop();
    out.remove(start);
    true
}

/// Writes `s` as a JSON string (quotes included) with [`SafeFormatter`].
pub fn write_str(out: &mut Vec<u8>, s: &str) {
    let mut ser = serde_json::Serializer::with_formatter(&mut *out, SafeFormatter);
    // Serializing a &str into a Vec cannot fail.
    let _ = s.serialize(&mut ser);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn separators_c1_controls_and_bidi_overrides_are_escaped() {
        let mut out = Vec::new();
        write_str(
            &mut out,
            "a\u{2028}b\u{2029}c\u{9b}d\u{202e}e\u{1b}[31mf\r\ng\u{7f}é",
        );
        let text = String::from_utf8(out).unwrap();
        assert_eq!(
            text,
            "\"a\\u2028b\\u2029c\\u009bd\\u202ee\\u001b[31mf\\r\\ng\\u007fé\""
        );
        let back: String = serde_json::from_str(&text).unwrap();
        assert_eq!(
            back,
            "a\u{2028}b\u{2029}c\u{9b}d\u{202e}e\u{1b}[31mf\r\ng\u{7f}é"
        );
    }

    #[test]
    fn a_body_is_the_members_without_braces() {
        let mut out = b"{\"seq\":1,".to_vec();
        assert!(to_line_body(
            &serde_json::json!({"k": "v\u{2028}"}),
            &mut out
        ));
        out.push(b'}');
        assert_eq!(out, b"{\"seq\":1,\"k\":\"v\\u2028\"}");
        let mut empty = Vec::new();
        assert!(!to_line_body(&serde_json::json!({}), &mut empty));
        assert!(!to_line_body(&"not an object", &mut empty));
        assert!(empty.is_empty());
    }
}
