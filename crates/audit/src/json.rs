//! JSON for audit lines, written by hand: the record's members straight into the line buffer,
//! with a string escaper stricter than JSON needs.
//!
//! [`push_str`] escapes what JSON requires, as serde_json does: `"` and `\` with a backslash,
//! `\b \f \n \r \t`, every other C0 control as `\u00XX` (so the ANSI ESC becomes `\u001b`). It
//! also escapes, as `\uXXXX`:
//! - U+007F and the C1 controls U+0080..=U+009F (U+009B is an 8-bit ANSI CSI),
//! - U+2028 and U+2029 (line and paragraph separators: some readers split lines on them),
//! - the bidirectional overrides and isolates U+202A..=U+202E and U+2066..=U+2069, which can
//!   make a terminal show a line in an order other than its bytes.
//!
//! The output is byte for byte what serde_json's compact serializer writes with those extra
//! escapes (tested against it), without a serializer, a formatter or a per-field `Result`: the
//! request path pays for one record in well under a microsecond.
//!
//! Invariant: nothing [`Members`] writes contains a byte below 0x20, nor any of the characters
//! above unescaped, so one record is always exactly one line.

const HEX: &[u8; 16] = b"0123456789abcdef";

/// Appends `\u00XX`-style escapes for the code point `cp` (at most U+FFFF).
fn push_u_escape(out: &mut Vec<u8>, cp: u32) {
    out.extend_from_slice(&[
        b'\\',
        b'u',
        HEX[(cp >> 12) as usize & 0xf],
        HEX[(cp >> 8) as usize & 0xf],
        HEX[(cp >> 4) as usize & 0xf],
        HEX[cp as usize & 0xf],
    ]);
}

/// The code point to escape at `b[i..]` when it starts a character we escape beyond ASCII
/// (C1 controls, line separators, bidi controls), and its length in bytes.
fn escaped_non_ascii(b: &[u8], i: usize) -> Option<(u32, usize)> {
    // Every such character starts with 0xC2 (U+0080..U+00BF) or 0xE2 (U+2000..U+2FFF); the
    // input is a `&str`, so the continuation bytes are there.
    match (b[i], b.get(i + 1).copied(), b.get(i + 2).copied()) {
        (0xc2, Some(c @ 0x80..=0x9f), _) => Some((u32::from(c), 2)),
        (0xe2, Some(0x80), Some(c @ 0xa8..=0xae)) => Some((0x2000 + u32::from(c & 0x3f), 3)),
        (0xe2, Some(0x81), Some(c @ 0xa6..=0xa9)) => Some((0x2040 + u32::from(c & 0x3f), 3)),
        _ => None,
    }
}

/// True when `c` is written as it is: printable ASCII other than `"` and `\`.
#[inline]
fn plain_byte(c: u8) -> bool {
    (0x20..0x7f).contains(&c) && c != b'"' && c != b'\\'
}

/// True when none of the eight bytes of `w` needs a look (each is a [`plain_byte`]). Exact
/// (no false positives or negatives): the byte-wise tests below are the classic
/// `hasless`/`haszero` word tricks, whose "any byte" answers are exact.
#[inline]
fn plain_word(w: u64) -> bool {
    const ONES: u64 = 0x0101_0101_0101_0101;
    const HIGHS: u64 = 0x8080_8080_8080_8080;
    let has_zero = |x: u64| x.wrapping_sub(ONES) & !x & HIGHS;
    // A byte below 0x20.
    let control = w.wrapping_sub(ONES * 0x20) & !w & HIGHS;
    // A byte of 0x7f or above (0x7f + 1 sets the high bit; a byte >= 0x80 has it already).
    let high = (w | w.wrapping_add(ONES)) & HIGHS;
    let quote = has_zero(w ^ (ONES * u64::from(b'"')));
    let backslash = has_zero(w ^ (ONES * u64::from(b'\\')));
    (control | high | quote | backslash) == 0
}

/// Appends `s` as a JSON string, quotes included, with the escapes of the module doc.
///
/// Runs of plain ASCII are skipped eight bytes at a time ([`plain_word`]); every other byte
/// is looked at one by one.
pub(crate) fn push_str(out: &mut Vec<u8>, s: &str) {
    let b = s.as_bytes();
    out.reserve(b.len() + 2);
    out.push(b'"');
    let mut start = 0;
    let mut i = 0;
    while i < b.len() {
        if let Some(word) = b.get(i..i + 8).and_then(|w| <[u8; 8]>::try_from(w).ok()) {
            if plain_word(u64::from_le_bytes(word)) {
                i += 8;
                continue;
            }
        }
        let c = b[i];
        if plain_byte(c) {
            i += 1;
            continue;
        }
        let (cp, len) = if c >= 0x80 {
            match escaped_non_ascii(b, i) {
                Some(e) => e,
                None => {
                    i += 1;
                    continue;
                }
            }
        } else {
            (u32::from(c), 1)
        };
        out.extend_from_slice(&b[start..i]);
        match c {
            b'"' => out.extend_from_slice(b"\\\""),
            b'\\' => out.extend_from_slice(b"\\\\"),
            b'\n' => out.extend_from_slice(b"\\n"),
            b'\r' => out.extend_from_slice(b"\\r"),
            b'\t' => out.extend_from_slice(b"\\t"),
            0x08 => out.extend_from_slice(b"\\b"),
            0x0c => out.extend_from_slice(b"\\f"),
            _ => push_u_escape(out, cp),
        }
        i += len;
        start = i;
    }
    out.extend_from_slice(&b[start..]);
    out.push(b'"');
}

/// Writes the members of one JSON object, `"k":v,"k2":v2`, without the braces (the writer
/// frames them); optional members are skipped when absent, so a stage that has not run adds
/// no noise. Keys are our own constants and are written as they are.
pub(crate) struct Members<'a> {
    out: &'a mut Vec<u8>,
    first: bool,
}

impl<'a> Members<'a> {
    /// Members appended to `out`; the first one is written without a leading comma.
    pub(crate) fn new(out: &'a mut Vec<u8>) -> Members<'a> {
        Members { out, first: true }
    }

    /// Members continuing a list `out` already holds members of.
    pub(crate) fn after(out: &'a mut Vec<u8>) -> Members<'a> {
        Members { out, first: false }
    }

    fn key(&mut self, k: &str) {
        if !self.first {
            self.out.push(b',');
        }
        self.first = false;
        self.out.push(b'"');
        self.out.extend_from_slice(k.as_bytes());
        self.out.extend_from_slice(b"\":");
    }

    pub(crate) fn str(&mut self, k: &str, v: &str) {
        self.key(k);
        push_str(self.out, v);
    }

    /// A string member, skipped when `v` is `None`.
    pub(crate) fn opt_str(&mut self, k: &str, v: Option<&str>) {
        if let Some(v) = v {
            self.str(k, v);
        }
    }

    /// A string member, skipped when `v` is empty.
    pub(crate) fn nonempty_str(&mut self, k: &str, v: &str) {
        if !v.is_empty() {
            self.str(k, v);
        }
    }

    pub(crate) fn u64(&mut self, k: &str, v: u64) {
        self.key(k);
        self.out
            .extend_from_slice(itoa::Buffer::new().format(v).as_bytes());
    }

    /// A number member, skipped when `v` is `None`.
    pub(crate) fn opt_u64(&mut self, k: &str, v: Option<u64>) {
        if let Some(v) = v {
            self.u64(k, v);
        }
    }

    pub(crate) fn bool(&mut self, k: &str, v: bool) {
        self.key(k);
        self.out
            .extend_from_slice(if v { b"true" } else { b"false" });
    }

    /// An array of strings, skipped when `v` is `None`.
    pub(crate) fn opt_strs(&mut self, k: &str, v: Option<&[String]>) {
        let Some(v) = v else { return };
        self.key(k);
        self.out.push(b'[');
        for (i, s) in v.iter().enumerate() {
            if i > 0 {
                self.out.push(b',');
            }
            push_str(self.out, s);
        }
        self.out.push(b']');
    }

    /// A nested object whose members `f` writes.
    pub(crate) fn object(&mut self, k: &str, f: impl FnOnce(&mut Members<'_>)) {
        self.key(k);
        self.out.push(b'{');
        f(&mut Members::new(self.out));
        self.out.push(b'}');
    }

    /// Members encoded earlier by a [`Members`] (so already escaped), spliced in as they are;
    /// nothing when `members` is empty.
    pub(crate) fn splice(&mut self, members: &[u8]) {
        if members.is_empty() {
            return;
        }
        if !self.first {
            self.out.push(b',');
        }
        self.first = false;
        self.out.extend_from_slice(members);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What serde_json writes for `s`, with the extra escapes of the module doc applied to
    /// its output (none of those characters is escaped by serde_json itself).
    fn reference(s: &str) -> String {
        let mut r = String::new();
        for c in serde_json::to_string(s).unwrap().chars() {
            if matches!(c, '\u{7f}'..='\u{9f}' | '\u{2028}' | '\u{2029}' | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}')
            {
                r.push_str(&format!("\\u{:04x}", c as u32));
            } else {
                r.push(c);
            }
        }
        r
    }

    fn ours(s: &str) -> String {
        let mut out = Vec::new();
        push_str(&mut out, s);
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn separators_c1_controls_and_bidi_overrides_are_escaped() {
        let hostile = "a\u{2028}b\u{2029}c\u{9b}d\u{202e}e\u{1b}[31mf\r\ng\u{7f}é";
        let text = ours(hostile);
        assert_eq!(
            text,
            "\"a\\u2028b\\u2029c\\u009bd\\u202ee\\u001b[31mf\\r\\ng\\u007fé\""
        );
        let back: String = serde_json::from_str(&text).unwrap();
        assert_eq!(back, hostile);
    }

    #[test]
    fn every_code_point_near_an_escaped_one_matches_serde_json_with_the_extra_escapes() {
        let mut points: Vec<char> = (0u32..0x3000).filter_map(char::from_u32).collect();
        points.extend(['\u{feff}', '\u{10ffff}', '😀', '\u{e000}']);
        for c in points {
            let s = format!("x{c}y\"{c}\\");
            assert_eq!(ours(&s), reference(&s), "U+{:04X}", c as u32);
            let back: String = serde_json::from_str(&ours(&s)).unwrap();
            assert_eq!(back, s);
        }
    }

    #[test]
    fn every_escaped_code_point_is_found_at_every_offset_of_a_word() {
        // Each escaped code point and its unescaped neighbours, at offsets 0..16 inside plain
        // ASCII, so the eight-byte skip meets it at every position of a word and across two.
        let mut cps: Vec<u32> = (0..0x100).collect();
        cps.extend([
            0x2027, 0x2028, 0x2029, 0x202a, 0x202e, 0x202f, 0x2065, 0x2066, 0x2069, 0x206a,
            0x10ffff, 0xe9,
        ]);
        for cp in cps {
            let Some(c) = char::from_u32(cp) else {
                continue;
            };
            for before in 0..16 {
                for after in [0, 1, 7, 8, 9] {
                    let s = format!("{}{c}{}", "a".repeat(before), "z".repeat(after));
                    assert_eq!(ours(&s), reference(&s), "U+{cp:04X} after {before} bytes");
                }
            }
        }
    }

    #[test]
    fn plain_word_accepts_exactly_printable_ascii_without_quote_and_backslash() {
        for v in 0u8..=255 {
            let plain = plain_byte(v);
            for pos in 0..8 {
                let mut w = *b"abcdefgh";
                w[pos] = v;
                assert_eq!(
                    plain_word(u64::from_le_bytes(w)),
                    plain,
                    "byte {v:#04x} at {pos}"
                );
            }
        }
    }

    proptest::proptest! {
        #[test]
        fn any_string_is_one_safe_line_that_reads_back(s in "\\PC*|[\\x00-\\x20\"\\\\\u{7f}-\u{a0}\u{2028}-\u{202f}\u{2066}-\u{2069}a-z]{0,40}") {
            let text = ours(&s);
            proptest::prop_assert_eq!(&text, &reference(&s));
            proptest::prop_assert!(text.bytes().all(|b| b >= 0x20));
            let back: String = serde_json::from_str(&text).unwrap();
            proptest::prop_assert_eq!(back, s);
        }

        #[test]
        fn plain_word_is_the_byte_wise_test(bytes in proptest::array::uniform8(0x10u8..0x90)) {
            let w = u64::from_le_bytes(bytes);
            let plain = bytes.into_iter().all(plain_byte);
            proptest::prop_assert_eq!(plain_word(w), plain);
        }
    }

    #[test]
    fn members_skip_what_is_absent_and_nest_and_splice() {
        let mut out = Vec::new();
        let mut m = Members::new(&mut out);
        m.str("a", "x\"y");
        m.opt_str("absent", None);
        m.nonempty_str("empty", "");
        m.u64("n", u64::MAX);
        m.opt_u64("none", None);
        m.bool("t", true);
        m.opt_strs("s", Some(&["p".to_string(), "q\n".to_string()]));
        m.opt_strs("no", None);
        m.object("o", |o| {
            o.u64("z", 0);
            o.bool("f", false);
        });
        m.splice(b"\"pre\":1");
        m.splice(b"");
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "\"a\":\"x\\\"y\",\"n\":18446744073709551615,\"t\":true,\"s\":[\"p\",\"q\\n\"],\"o\":{\"z\":0,\"f\":false},\"pre\":1"
        );
        let mut out = b"\"seq\":1".to_vec();
        Members::after(&mut out).str("k", "v");
        assert_eq!(out, b"\"seq\":1,\"k\":\"v\"");
    }
}
