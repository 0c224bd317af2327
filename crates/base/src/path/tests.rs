use super::*;

#[test]
fn canonical_paths_are_accepted() {
    for p in [
        "/",
        "/open-banking/v3.1/aisp/accounts",
        "/open-banking/v3.1/aisp/accounts/acc-1",
        "/a/b:c@d/e~f_g.h",
        "/x/a%20b",
        "/x/a%3Ab",
        "/x/..a",
        "/x/a..",
        "/x/.well-known",
    ] {
        assert_eq!(check_path(p), Ok(()), "{p}");
    }
}

#[test]
fn the_normalization_table_is_refused_with_its_reason() {
    let table: &[(&str, PathError)] = &[
        ("", PathError::NotOriginForm),
        ("accounts", PathError::NotOriginForm),
        ("*", PathError::NotOriginForm),
        ("/accounts/123/../../admin", PathError::DotSegment),
        ("/accounts/./123", PathError::DotSegment),
        ("/accounts/..", PathError::DotSegment),
        ("/%2e%2e/admin", PathError::EncodedDot),
        ("/.%2e/admin", PathError::EncodedDot),
        ("/accounts%2F456", PathError::EncodedSeparator),
        ("/accounts%2f456", PathError::EncodedSeparator),
        ("/accounts%5C456", PathError::EncodedSeparator),
        ("/accounts/%252e%252e/x", PathError::DoubleEncoding),
        ("/accounts/%252F", PathError::DoubleEncoding),
        ("/accounts\\..\\admin", PathError::Backslash),
        ("//accounts", PathError::EmptySegment),
        ("/accounts//123", PathError::EmptySegment),
        ("/accounts/123/", PathError::EmptySegment),
        ("/accounts/%00", PathError::ControlChar),
        ("/accounts/\0", PathError::ControlChar),
        ("/accounts/a b", PathError::ControlChar),
        ("/accounts/a\tb", PathError::ControlChar),
        ("/accounts/1#x", PathError::Fragment),
        ("/accounts/%c0%ae", PathError::NonAscii),
        ("/accounts/\u{ff0f}", PathError::NonAscii),
        ("/accounts/é", PathError::NonAscii),
        ("/accounts/%41", PathError::NeedlessEncoding),
        ("/accounts/%7e", PathError::NeedlessEncoding),
        ("/accounts/%4", PathError::BadEscape),
        ("/accounts/%", PathError::BadEscape),
        ("/accounts/%zz", PathError::BadEscape),
        // Lower-case hex is a second spelling of the same octet (found by the `path` fuzz target).
        ("/x/a%3ab", PathError::BadEscape),
        ("/%2admin", PathError::BadEscape),
        ("/accounts/<x>", PathError::InvalidChar),
        ("/accounts/a\"b", PathError::InvalidChar),
        ("/accounts/{id}", PathError::InvalidChar),
    ];
    for (path, want) in table {
        assert_eq!(check_path(path), Err(*want), "{path:?}");
    }
}

#[test]
fn queries_allow_data_but_not_control_or_non_ascii() {
    assert_eq!(check_query("a=1&b=%2F..%2e/x?y"), Ok(()));
    assert_eq!(check_query(""), Ok(()));
    assert_eq!(check_query("a=%00"), Err(PathError::ControlChar));
    assert_eq!(check_query("a=%e9"), Err(PathError::NonAscii));
    assert_eq!(check_query("a=b#c"), Err(PathError::Fragment));
    assert_eq!(check_query("a=%x1"), Err(PathError::BadEscape));
    assert_eq!(check_query("a=b c"), Err(PathError::ControlChar));
}

proptest::proptest! {
    #[test]
    fn any_input_is_decided_without_panicking(s in ".{0,64}") {
        let _ = check_path(&s);
        let _ = check_query(&s);
    }

    #[test]
    fn an_accepted_path_has_no_ambiguous_form(s in "/[a-zA-Z0-9%./\\\\-]{0,40}") {
        if check_path(&s).is_ok() {
            proptest::prop_assert!(!s.contains("//"));
            proptest::prop_assert!(!s.contains("/./") && !s.contains("/../"));
            proptest::prop_assert!(!s.to_ascii_lowercase().contains("%2f"));
            proptest::prop_assert!(!s.to_ascii_lowercase().contains("%2e"));
            proptest::prop_assert!(!s.contains('\\'));
        }
    }
}

#[test]
fn percent_decoding_of_a_segment_keeps_plus_and_refuses_bad_escapes() {
    assert_eq!(
        percent_decode("cert%3Aab+c").as_deref(),
        Some(&b"cert:ab+c"[..])
    );
    assert_eq!(form_decode("ab+c").as_deref(), Some(&b"ab c"[..]));
    for bad in ["%", "%4", "%zz", "a%4g"] {
        assert_eq!(percent_decode(bad), None, "{bad}");
    }
}
