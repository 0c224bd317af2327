use super::*;

fn known<'a>(upstreams: &[&'a str], limit: u64) -> Known<'a> {
    Known {
        upstreams: upstreams.to_vec(),
        issuers: vec!["as"],
        default_body_limit: limit,
        has_consent: true,
        standalone: false,
    }
}

fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, text).unwrap();
    p
}

const OK: &str = r#"
group: g
upstream: bank
routes:
  - id: list
    method: GET
    path: /accounts
  - id: get
    method: GET
    path: /accounts/{AccountId}
  - id: balances
    method: GET
    path: /accounts/{AccountId}/balances
  - id: create
    method: POST
    path: /accounts
    body_limit: 10
    client_cert: optional
"#;

#[test]
fn routes_match_by_method_and_template_with_params() {
    let d = tempfile::tempdir().unwrap();
    let f = write(d.path(), "p.yaml", OK);
    let set = load_files(&[f], &known(&["bank"], 100)).unwrap();
    let m = set.lookup(&http::Method::GET, "/accounts/acc-1").unwrap();
    assert_eq!(m.route.id, "get");
    assert_eq!(
        m.params,
        vec![("AccountId".to_string(), "acc-1".to_string())]
    );
    assert_eq!(m.route.body_limit, 100);
    let m = set.lookup(&http::Method::POST, "/accounts").unwrap();
    assert_eq!((m.route.id.as_str(), m.route.body_limit), ("create", 10));
    assert_eq!(m.route.client_cert, CertRequirement::Optional);
    assert_eq!(
        set.lookup(&http::Method::DELETE, "/accounts").unwrap_err(),
        NoRoute::MethodNotAllowed {
            allow: vec![http::Method::GET, http::Method::POST]
        }
    );
    assert_eq!(
        set.lookup(&http::Method::GET, "/accounts/acc-1/other")
            .unwrap_err(),
        NoRoute::NotFound
    );
    assert_eq!(
        set.lookup(&http::Method::GET, "/").unwrap_err(),
        NoRoute::NotFound
    );
    assert_eq!(set.version.len(), 16);
}

#[test]
fn the_policy_version_changes_with_the_content() {
    let d = tempfile::tempdir().unwrap();
    let f = write(d.path(), "p.yaml", OK);
    let a = load_files(std::slice::from_ref(&f), &known(&["bank"], 100))
        .unwrap()
        .version;
    write(
        d.path(),
        "p.yaml",
        &OK.replace("body_limit: 10", "body_limit: 11"),
    );
    let b = load_files(&[f], &known(&["bank"], 100)).unwrap().version;
    assert_ne!(a, b);
}

#[test]
fn a_directory_loads_its_yaml_files_in_order_and_skips_test_files() {
    let d = tempfile::tempdir().unwrap();
    write(d.path(), "b.yaml", &OK.replace("group: g", "group: b"));
    write(
        d.path(),
        "a.yml",
        "group: a\nupstream: bank\nroutes:\n  - id: other\n    method: GET\n    path: /other\n",
    );
    write(d.path(), "x.test.yaml", "this is not a policy");
    write(d.path(), "notes.txt", "ignored");
    let set = load_files(&[d.path().to_path_buf()], &known(&["bank"], 100)).unwrap();
    let groups: Vec<&str> = set.routes().iter().map(|r| r.group.as_str()).collect();
    assert_eq!(groups, ["a", "b", "b", "b", "b"]);
}

fn errors_of(text: &str) -> Vec<String> {
    let d = tempfile::tempdir().unwrap();
    let f = write(d.path(), "bad.yaml", text);
    match load_files(&[f], &known(&["bank"], 100)) {
        Ok(_) => vec![],
        Err(e) => {
            e.0.iter()
                .map(|e| format!("{}: {}", e.field, e.reason))
                .collect()
        }
    }
}

#[test]
fn bad_policies_are_refused_with_the_field_and_reason() {
    let cases: &[(&str, &str)] = &[
        (
            "group: g\nupstream: nowhere\nroutes:\n  - id: a\n    method: GET\n    path: /a\n",
            "upstream: unknown upstream `nowhere`",
        ),
        (
            "group: g\nupstream: bank\nroutes:\n  - id: a\n    method: FETCH\n    path: /a\n",
            "routes[0].method: `FETCH` is not one of",
        ),
        (
            "group: g\nupstream: bank\nroutes:\n  - id: a\n    method: GET\n    path: /a/../b\n",
            "routes[0].path: must not contain dot segments",
        ),
        (
            "group: g\nupstream: bank\nroutes:\n  - id: a\n    method: GET\n    path: /a//b\n",
            "routes[0].path: must not contain empty segments",
        ),
        (
            "group: g\nupstream: bank\nroutes:\n  - id: a\n    method: GET\n    path: /a/{*rest}\n",
            "routes[0].path: parameter `{*rest}`",
        ),
        (
            "group: g\nupstream: bank\nroutes:\n  - id: a\n    method: GET\n    path: /a\n  - id: a\n    method: POST\n    path: /a\n",
            "routes[1].id: `a` is already used",
        ),
        (
            "group: g\nupstream: bank\nroutes:\n  - id: a\n    method: GET\n    path: /a/{x}\n  - id: b\n    method: GET\n    path: /a/{y}\n",
            "routes[1].path: conflicts with another GET route",
        ),
        (
            "group: g\nupstream: bank\nroutes:\n  - id: a\n    method: GET\n    path: /a\n    client_cert: sometimes\n",
            "routes[0].client_cert: unknown value `sometimes`",
        ),
        (
            "group: g\nupstream: bank\nroutes:\n  - id: a\n    method: GET\n    path: /a\n    bogus_field: [x]\n",
            "unknown field `bogus_field`",
        ),
        ("group: g\nupstream: bank\nroutes: []\n", "routes: at least one route"),
        (
            "group: g\nupstream: bank\nerrors: soap\nroutes:\n  - id: a\n    method: GET\n    path: /a\n",
            "errors: unknown value `soap` (obie or problem)",
        ),
        (
            "group: g\nupstream: bank\nroutes:\n  - id: a\n    method: GET\n    path: /a\n    errors: xml\n",
            "routes[0].errors: unknown value `xml`",
        ),
        (
            "group: g\nupstream: bank\nroutes:\n  - id: a\n    method: POST\n    path: /a\n    accepts: [application/*]\n",
            "routes[0].accepts[0]: `application/*` is not a media type",
        ),
        (
            "group: g\nupstream: bank\nroutes:\n  - id: a\n    method: GET\n    path: /a\n    produces: [\"application/json; charset=utf-8\"]\n",
            "routes[0].produces[0]: `application/json; charset=utf-8` is not a media type",
        ),
        (
            "group: g\nupstream: bank\nroutes:\n  - id: a\n    method: GET\n    path: /a\n    produces: []\n",
            "routes[0].produces: must name at least one media type",
        ),
    ];
    for (text, want) in cases {
        let errs = errors_of(text);
        assert!(
            errs.iter().any(|e| e.contains(want)),
            "want `{want}` in {errs:?}"
        );
    }
}

#[test]
fn route_problems_name_the_line_of_the_route() {
    let errs = errors_of(
        "group: g\nupstream: bank\nroutes:\n  - id: a\n    method: GET\n    path: /a\n\n  # a comment\n  - id: b\n    method: FETCH\n    path: /b\n",
    );
    assert!(
        errs.iter()
            .any(|e| e.contains("routes[1].method") && e.contains("(route at line 9)")),
        "{errs:?}"
    );
}

/// The error dialect and media types: a group's `errors` is its routes' default, a route may
/// override it, and an `obie-jws` route is an OBIE one unless told otherwise; OBIE routes take
/// and make JSON by default, other routes assume nothing; media types are lowercased.
#[test]
fn error_dialects_and_media_types_default_by_route_kind() {
    let d = tempfile::tempdir().unwrap();
    let f = write(
        d.path(),
        "p.yaml",
        r#"
group: g
upstream: bank
errors: obie
routes:
  - {id: a, method: GET, path: /a}
  - {id: b, method: GET, path: /b, errors: problem}
  - {id: c, method: POST, path: /c, accepts: [Text/XML, application/json], produces: [application/xml]}
"#,
    );
    let g = write(
        d.path(),
        "q.yaml",
        r#"
group: h
upstream: bank
routes:
  - {id: d, method: POST, path: /d, signature: {kind: obie-jws, profile: obie-3.1.4}}
  - {id: e, method: POST, path: /e}
"#,
    );
    let mut k = known(&["bank"], 100);
    k.standalone = true;
    let set = load_files(&[f, g], &k).unwrap();
    let r = |id: &str| {
        let r = set.routes().iter().find(|r| r.id == id).unwrap();
        (r.errors, r.accepts.clone(), r.produces.clone())
    };
    let json = || vec![JSON.to_string()];
    assert_eq!(r("a"), (ErrorDialect::Obie, json(), json()));
    assert_eq!(r("b"), (ErrorDialect::Problem, vec![], vec![]));
    assert_eq!(
        r("c"),
        (
            ErrorDialect::Obie,
            vec!["text/xml".to_string(), JSON.to_string()],
            vec!["application/xml".to_string()]
        )
    );
    assert_eq!(r("d"), (ErrorDialect::Obie, json(), json()));
    assert_eq!(r("e"), (ErrorDialect::Problem, vec![], vec![]));
}

#[test]
fn a_subset_serves_only_its_groups_routes() {
    let d = tempfile::tempdir().unwrap();
    let a = write(d.path(), "a.yaml", OK);
    let other = "group: other\nupstream: bank\nroutes:\n  - id: pay\n    method: PUT\n    path: /payments\n";
    let b = write(d.path(), "b.yaml", other);
    let set = load_files(&[a, b], &known(&["bank"], 100)).unwrap();
    assert_eq!(set.groups(), ["g", "other"]);
    let g = set.subset(&["g".to_string()]);
    assert_eq!(g.routes().len(), 4);
    assert_eq!(g.version, set.version);
    assert_eq!(
        g.lookup(&http::Method::POST, "/accounts").unwrap().route.id,
        "create"
    );
    // Another group's path is unknown here, not a 405 naming its methods.
    assert_eq!(
        g.lookup(&http::Method::GET, "/payments").unwrap_err(),
        NoRoute::NotFound
    );
    let o = set.subset(&["other".to_string()]);
    assert_eq!(
        o.lookup(&http::Method::GET, "/payments").unwrap_err(),
        NoRoute::MethodNotAllowed {
            allow: vec![http::Method::PUT]
        }
    );
    assert_eq!(
        o.lookup(&http::Method::GET, "/accounts").unwrap_err(),
        NoRoute::NotFound
    );
}
