use serde_json::json;

use super::*;

fn compile_yaml(yaml: &str, params: &[&str], has_auth: bool) -> Result<Authz, Vec<String>> {
    #[derive(Deserialize)]
    struct R {
        #[serde(default)]
        scopes: Option<FileScopes>,
        #[serde(default)]
        consent: Option<FileConsent>,
        #[serde(default)]
        rules: Vec<FileRule>,
        #[serde(default)]
        response_rules: Vec<FileResponseRule>,
        #[serde(default)]
        shadow: bool,
    }
    let r: R = serde_saphyr::from_str(yaml).unwrap();
    let mut errors = Vec::new();
    let path = std::path::PathBuf::from("t.yaml");
    let mut p = Problems::new(&path, &mut errors);
    let params: Vec<String> = params.iter().map(|s| s.to_string()).collect();
    let out = compile(
        &mut p,
        &|s: &str| s.to_string(),
        FileAuthz {
            scopes: &r.scopes,
            consent: &r.consent,
            rules: &r.rules,
            response_rules: &r.response_rules,
            shadow: r.shadow,
        },
        &params,
        has_auth,
    );
    match out {
        Some(a) if errors.is_empty() => Ok(a),
        _ => Err(errors
            .iter()
            .map(|e| format!("{}: {}", e.field, e.reason))
            .collect()),
    }
}

fn claims(v: serde_json::Value) -> Map<String, Value> {
    v.as_object().unwrap().clone()
}

fn consent(status: &str, expires: Option<i64>, perms: &[&str], accounts: &[&str]) -> ConsentRecord {
    record_of(
        json!({"status": status, "expires": expires, "permissions": perms, "accounts": accounts}),
    )
}

fn record_of(v: serde_json::Value) -> ConsentRecord {
    crate::rules::ConsentRecord::from_json(&v).unwrap()
}

struct Req {
    params: Vec<(String, String)>,
    query: Option<String>,
    headers: HeaderMap,
    body: Option<Vec<u8>>,
}

impl Req {
    fn path(p: &[(&str, &str)]) -> Req {
        Req {
            params: p
                .iter()
                .map(|(a, b)| (a.to_string(), b.to_string()))
                .collect(),
            query: None,
            headers: HeaderMap::new(),
            body: None,
        }
    }
    fn facts(&self) -> Facts<'_> {
        Facts {
            params: &self.params,
            query: self.query.as_deref(),
            headers: &self.headers,
            body: self.body.as_deref(),
        }
    }
}

fn decide(
    a: &Authz,
    scopes: &[&str],
    c: &Map<String, Value>,
    rec: Option<&ConsentRecord>,
    r: &Req,
) -> Result<(), (AuthzError, String, bool)> {
    let scopes: Vec<String> = scopes.iter().map(|s| s.to_string()).collect();
    evaluate(a, &scopes, c, Ok(rec), &r.facts(), 1000).map_err(|d| (d.error, d.rule, d.hidden))
}

#[test]
fn scopes_all_of_and_any_of() {
    let a = compile_yaml("scopes: {all_of: [accounts, balances]}", &[], true).unwrap();
    let c = claims(json!({}));
    let r = Req::path(&[]);
    assert!(decide(&a, &["accounts", "balances", "x"], &c, None, &r).is_ok());
    assert_eq!(
        decide(&a, &["accounts"], &c, None, &r).unwrap_err().0,
        AuthzError::Scope("accounts balances".into())
    );
    let a = compile_yaml("scopes: {any_of: [accounts, payments]}", &[], true).unwrap();
    assert!(decide(&a, &["payments"], &c, None, &r).is_ok());
    assert!(decide(&a, &["openid"], &c, None, &r).is_err());
}

#[test]
fn object_rules_bind_request_values_to_claims_details_and_consent() {
    let a = compile_yaml(
        "rules:\n  - {id: r1, value: {path: AccountId}, in: {claim: ob.account_ids}}\n",
        &["AccountId"],
        true,
    )
    .unwrap();
    let c = claims(json!({"ob": {"account_ids": ["acc-1", "acc-2"]}}));
    assert!(decide(&a, &[], &c, None, &Req::path(&[("AccountId", "acc-1")])).is_ok());
    assert_eq!(
        decide(&a, &[], &c, None, &Req::path(&[("AccountId", "acc-3")])).unwrap_err(),
        (AuthzError::Object, "r1".into(), false)
    );
    // Exact bytes: no case folding.
    assert!(decide(&a, &[], &c, None, &Req::path(&[("AccountId", "ACC-1")])).is_err());

    let rar = compile_yaml(
        "rules:\n  - {id: rar, value: {path: AccountId}, in: {authorization_details: {type: account_information, field: accounts}}, deny_status: 404}\n",
        &["AccountId"],
        true,
    )
    .unwrap();
    let c = claims(json!({"authorization_details": [
        {"type": "account_information", "accounts": ["acc-9"]},
        {"type": "payment_initiation", "accounts": ["acc-7"]}
    ]}));
    assert!(decide(&rar, &[], &c, None, &Req::path(&[("AccountId", "acc-9")])).is_ok());
    // `deny_status: 404`: the refusal is hidden (answered as an unknown resource).
    assert!(
        decide(&rar, &[], &c, None, &Req::path(&[("AccountId", "acc-7")]))
            .unwrap_err()
            .2
    );

    let con = compile_yaml(
        "consent: {claim: openbanking_intent_id, permissions: [ReadBalances]}\nrules:\n  - {id: c1, value: {path: AccountId}, in: {consent: accounts}}\n",
        &["AccountId"],
        true,
    )
    .unwrap();
    let c = claims(json!({"openbanking_intent_id": "aac-1"}));
    let good = consent("Authorised", Some(2000), &["ReadBalances"], &["acc-1"]);
    let r = Req::path(&[("AccountId", "acc-1")]);
    assert!(decide(&con, &[], &c, Some(&good), &r).is_ok());
    assert_eq!(
        decide(
            &con,
            &[],
            &c,
            Some(&good),
            &Req::path(&[("AccountId", "acc-2")])
        )
        .unwrap_err()
        .0,
        AuthzError::Object
    );
    for (rec, want) in [
        (
            consent("AwaitingAuthorisation", None, &["ReadBalances"], &["acc-1"]),
            AuthzError::ConsentStatus,
        ),
        (
            consent("Authorised", Some(500), &["ReadBalances"], &["acc-1"]),
            AuthzError::ConsentExpired,
        ),
        (
            consent("Authorised", None, &["ReadAccountsBasic"], &["acc-1"]),
            AuthzError::ConsentPermission,
        ),
    ] {
        assert_eq!(decide(&con, &[], &c, Some(&rec), &r).unwrap_err().0, want);
    }
    assert_eq!(
        decide(&con, &[], &c, None, &r).unwrap_err().0,
        AuthzError::ConsentNotFound
    );
    assert_eq!(
        decide(&con, &[], &claims(json!({})), Some(&good), &r)
            .unwrap_err()
            .0,
        AuthzError::ConsentMissing
    );
    let down = evaluate(
        &con,
        &[],
        &c,
        Err(AuthzError::ConsentUnavailable),
        &r.facts(),
        1000,
    )
    .unwrap_err();
    assert_eq!(
        (down.error, down.hidden),
        (AuthzError::ConsentUnavailable, false)
    );
}

#[test]
fn ambiguity_is_refused_never_resolved() {
    let q = compile_yaml(
        "rules:\n  - {id: q, value: {query: accountId}, in: {claim: accounts}}\n",
        &[],
        true,
    )
    .unwrap();
    let c = claims(json!({"accounts": ["mine"]}));
    let mut r = Req::path(&[]);
    r.query = Some("accountId=mine".into());
    assert!(decide(&q, &[], &c, None, &r).is_ok());
    r.query = Some("accountId=mine&accountId=victim".into());
    assert_eq!(
        decide(&q, &[], &c, None, &r).unwrap_err(),
        (AuthzError::Ambiguous, "q".into(), false)
    );
    r.query = Some("accountId=mine&account%49d=victim".into());
    assert_eq!(
        decide(&q, &[], &c, None, &r).unwrap_err().0,
        AuthzError::Ambiguous
    );
    r.query = None;
    assert_eq!(
        decide(&q, &[], &c, None, &r).unwrap_err().0,
        AuthzError::ObjectMissing
    );

    let j = compile_yaml(
        "rules:\n  - {id: j, value: {json: /Data/Initiation/DebtorAccount/Identification}, in: {claim: accounts}, equals: {path: AccountId}}\n",
        &["AccountId"],
        true,
    )
    .unwrap();
    let mut r = Req::path(&[("AccountId", "mine")]);
    r.body =
        Some(br#"{"Data":{"Initiation":{"DebtorAccount":{"Identification":"mine"}}}}"#.to_vec());
    assert!(decide(&j, &[], &c, None, &r).is_ok());
    r.body = Some(br#"{"Data":{"Initiation":{"DebtorAccount":{"Identification":"mine","Identification":"victim"}}}}"#.to_vec());
    assert_eq!(
        decide(&j, &[], &c, None, &r).unwrap_err().0,
        AuthzError::Ambiguous
    );
    r.body =
        Some(br#"{"Data":{"Initiation":{"DebtorAccount":{"Identification":"victim"}}}}"#.to_vec());
    assert_eq!(
        decide(&j, &[], &c, None, &r).unwrap_err().0,
        AuthzError::Mismatch
    );
    r.body = Some(b"accountId=mine".to_vec());
    assert_eq!(
        decide(&j, &[], &c, None, &r).unwrap_err().0,
        AuthzError::BodyNotJson
    );

    let h = compile_yaml(
        "rules:\n  - {id: h, value: {header: x-account}, in: {claim: accounts}}\n",
        &[],
        true,
    )
    .unwrap();
    let mut r = Req::path(&[]);
    r.headers.append("x-account", "mine".parse().unwrap());
    r.headers.append("x-account", "victim".parse().unwrap());
    assert_eq!(
        decide(&h, &[], &c, None, &r).unwrap_err().0,
        AuthzError::Ambiguous
    );
}

#[test]
fn shadow_rules_decide_but_say_so() {
    let a = compile_yaml(
        "rules:\n  - {id: s, value: {path: Id}, in: {claim: ids}, shadow: true}\n",
        &["Id"],
        true,
    )
    .unwrap();
    let d = evaluate(
        &a,
        &[],
        &claims(json!({"ids": ["a"]})),
        Ok(None),
        &Req::path(&[("Id", "b")]).facts(),
        0,
    )
    .unwrap_err();
    assert!(d.shadow);
    let a = compile_yaml("shadow: true\nscopes: {all_of: [x]}\n", &[], true).unwrap();
    assert!(
        evaluate(
            &a,
            &[],
            &claims(json!({})),
            Ok(None),
            &Req::path(&[]).facts(),
            0
        )
        .unwrap_err()
        .shadow
    );
}

#[test]
fn response_rules_withhold_or_remove_foreign_objects() {
    let w = compile_yaml(
        "response_rules:\n  - {id: w, pointer: /Data/Account/*/AccountId, in: {claim: accounts}}\n",
        &[],
        true,
    )
    .unwrap();
    let c = claims(json!({"accounts": ["acc-1"]}));
    let mut doc = json!({"Data": {"Account": [{"AccountId": "acc-1"}, {"AccountId": "acc-2"}]}});
    assert_eq!(
        check_response(&w.response_rules, &c, None, &mut doc).map_err(|r| r.id.as_str()),
        Err("w")
    );
    let mut ok = json!({"Data": {"Account": [{"AccountId": "acc-1"}]}});
    assert_eq!(
        check_response(&w.response_rules, &c, None, &mut ok),
        Ok(false)
    );
    let r = compile_yaml(
        "response_rules:\n  - {id: r, pointer: /Data/Account/*/AccountId, in: {claim: accounts}, action: remove}\n",
        &[],
        true,
    )
    .unwrap();
    assert_eq!(
        check_response(&r.response_rules, &c, None, &mut doc),
        Ok(true)
    );
    assert_eq!(doc, json!({"Data": {"Account": [{"AccountId": "acc-1"}]}}));
    // `forbid`: a foreign owner, and an answer that names none, are refused; ours passes.
    let f = compile_yaml(
        "response_rules:\n  - {id: own, pointer: /Data/ConsentId, in: {claim: openbanking_intent_id}, action: forbid}\n",
        &[],
        true,
    )
    .unwrap();
    let c = claims(json!({"openbanking_intent_id": "pdc-1"}));
    for (mut answer, refused) in [
        (json!({"Data": {"ConsentId": "pdc-victim"}}), true),
        (
            json!({"Data": {"Status": "AcceptedSettlementCompleted"}}),
            true,
        ),
        (json!({"Data": {"ConsentId": "pdc-1"}}), false),
    ] {
        let r = check_response(&f.response_rules, &c, None, &mut answer);
        assert_eq!(r.is_err(), refused, "{answer}");
        if let Err(rule) = r {
            assert_eq!(rule.action, ResponseAction::Forbid);
        }
    }
}

#[test]
fn bad_rules_are_refused_at_load_with_the_field() {
    for (yaml, params, auth, want) in [
        ("rules:\n  - {id: a, value: {path: Nope}, in: {claim: x}}\n", &["Id"][..], true, "no parameter {Nope}"),
        ("rules:\n  - {id: a, value: {path: Id, query: q}, in: {claim: x}}\n", &["Id"][..], true, "exactly one of path"),
        ("rules:\n  - {id: a, value: {json: Data/x}, in: {claim: x}}\n", &[][..], true, "not a JSON pointer"),
        ("rules:\n  - {id: a, value: {query: q}}\n", &[][..], true, "needs `in`"),
        ("rules:\n  - {id: a, value: {query: q}, in: {claim: x}, deny_status: 401}\n", &[][..], true, "403 or 404"),
        ("rules:\n  - {id: a, value: {query: q}, in: {consent: accounts}}\n", &[][..], true, "no `consent` section"),
        ("rules:\n  - {id: a, value: {query: q}, in: {claim: x}}\n  - {id: a, value: {query: r}, in: {claim: x}}\n", &[][..], true, "used twice"),
        ("rules:\n  - {id: a, value: {query: q}, in: {claim: a..b}}\n", &[][..], true, "not a claim path"),
        ("consent: {claim: c}\nrules:\n  - {id: a, value: {query: q}, in: {consent: Initiation..Identification}}\n", &[][..], true, "not a member path"),
        ("scopes: {all_of: [x]}\n", &[][..], false, "need a token"),
        ("response_rules:\n  - {id: a, pointer: /Data/x, in: {claim: x}, action: remove}\n", &[][..], true, "remove needs a `*`"),
    ] {
        let errs = compile_yaml(yaml, params, auth).unwrap_err();
        assert!(errs.iter().any(|e| e.contains(want)), "want `{want}` in {errs:?}");
    }
}

/// OBIE consent resources as the UK Open Banking Read/Write API (v3.1 / v4) answers them.
fn obie(name: &str) -> Value {
    let text = match name {
        "account-access" => include_str!("obie/account-access-consent.json"),
        "domestic-payment" => include_str!("obie/domestic-payment-consent.json"),
        "domestic-vrp" => include_str!("obie/domestic-vrp-consent.json"),
        _ => unreachable!(),
    };
    serde_json::from_str(text).unwrap()
}

fn with_data(mut v: Value, member: &str, value: Value) -> Value {
    v["Data"][member] = value;
    v
}

#[test]
fn an_obie_account_access_consent_gives_status_expiry_and_permissions() {
    let rec = record_of(obie("account-access"));
    assert_eq!(rec.status, "Authorised");
    assert_eq!(rec.expires_at, Some(1_817_164_800)); // 2027-08-02T00:00:00+00:00
    assert_eq!(rec.permissions.len(), 15);
    assert!(rec.permissions.iter().any(|p| p == "ReadBalances"));
    assert_eq!(rec.raw["ConsentId"], "urn-alphabank-intent-88379");
    let con = compile_yaml(
        "consent: {claim: openbanking_intent_id, permissions: [ReadBalances, ReadTransactionsDetail]}\n",
        &[],
        true,
    )
    .unwrap();
    let c = claims(json!({"openbanking_intent_id": "urn-alphabank-intent-88379"}));
    let r = Req::path(&[]);
    let now = 1_800_000_000;
    let run = |rec: &ConsentRecord| {
        evaluate(&con, &[], &c, Ok(Some(rec)), &r.facts(), now).map_err(|d| d.error)
    };
    assert_eq!(run(&rec), Ok(()));
    for (status, want) in [
        ("AwaitingAuthorisation", AuthzError::ConsentStatus),
        ("Rejected", AuthzError::ConsentStatus),
        ("Revoked", AuthzError::ConsentStatus),
    ] {
        let v = with_data(obie("account-access"), "Status", json!(status));
        assert_eq!(run(&record_of(v)), Err(want), "{status}");
    }
    let v = with_data(
        obie("account-access"),
        "ExpirationDateTime",
        json!("2026-01-01T00:00:00+00:00"),
    );
    assert_eq!(run(&record_of(v)), Err(AuthzError::ConsentExpired));
    let v = with_data(
        obie("account-access"),
        "Permissions",
        json!(["ReadBalances"]),
    );
    assert_eq!(run(&record_of(v)), Err(AuthzError::ConsentPermission));
}

#[test]
fn an_obie_domestic_payment_consent_binds_the_submission_to_its_initiation() {
    let rec = record_of(obie("domestic-payment"));
    assert_eq!(rec.status, "Authorised");
    // A payment consent has no ExpirationDateTime (its CutOffDateTime is the bank's business).
    assert_eq!((rec.expires_at, rec.permissions.len()), (None, 0));
    let con = compile_yaml(
        "consent: {claim: openbanking_intent_id}\nrules:\n  - {id: creditor, value: {json: /Data/Initiation/CreditorAccount/Identification}, in: {consent: Initiation.CreditorAccount.Identification}}\n  - {id: debtor, value: {json: /Data/Initiation/DebtorAccount/Identification}, in: {consent: Initiation.DebtorAccount.Identification}}\n  - {id: amount, value: {json: /Data/Initiation/InstructedAmount/Amount}, in: {consent: Initiation.InstructedAmount.Amount}}\n  - {id: currency, value: {json: /Data/Initiation/InstructedAmount/Currency}, in: {consent: Initiation.InstructedAmount.Currency}}\n",
        &[],
        true,
    )
    .unwrap();
    let c = claims(json!({"openbanking_intent_id": "58923"}));
    let submission = |initiation: Value| {
        let mut r = Req::path(&[]);
        r.body = Some(
            json!({"Data": {"ConsentId": "58923", "Initiation": initiation}, "Risk": {}})
                .to_string()
                .into_bytes(),
        );
        r
    };
    let initiation = obie("domestic-payment")["Data"]["Initiation"].clone();
    let run = |rec: &ConsentRecord, r: &Req| {
        evaluate(&con, &[], &c, Ok(Some(rec)), &r.facts(), 1_800_000_000)
            .map_err(|d| (d.error, d.rule))
    };
    assert_eq!(run(&rec, &submission(initiation.clone())), Ok(()));
    for (pointer, value, rule) in [
        (
            "/CreditorAccount/Identification",
            "99999999999999",
            "creditor",
        ),
        ("/DebtorAccount/Identification", "99999999999999", "debtor"),
        ("/InstructedAmount/Amount", "1165.88", "amount"),
        ("/InstructedAmount/Currency", "EUR", "currency"),
    ] {
        let mut changed = initiation.clone();
        *changed.pointer_mut(pointer).unwrap() = json!(value);
        assert_eq!(
            run(&rec, &submission(changed)),
            Err((AuthzError::Object, rule.to_string())),
            "{pointer}"
        );
    }
    // A consumed consent pays once: by default only Authorised is accepted.
    let consumed = record_of(with_data(
        obie("domestic-payment"),
        "Status",
        json!("Consumed"),
    ));
    assert_eq!(
        run(&consumed, &submission(initiation.clone()))
            .unwrap_err()
            .0,
        AuthzError::ConsentStatus
    );
}

#[test]
fn an_obie_domestic_vrp_consent_gives_its_control_parameters_and_ends_at_valid_to() {
    let rec = record_of(obie("domestic-vrp"));
    assert_eq!(rec.status, "Authorised");
    assert_eq!(rec.expires_at, Some(1_806_921_787)); // 2027-04-05T10:43:07+00:00
    let con = compile_yaml(
        "consent: {claim: openbanking_intent_id}\nrules:\n  - {id: creditor, value: {json: /Data/Initiation/CreditorAccount/Identification}, in: {consent: Initiation.CreditorAccount.Identification}}\n  - {id: vrp-type, value: {header: x-vrp-type}, in: {consent: ControlParameters.VRPType}}\n  - {id: currency, value: {json: /Data/Instruction/InstructedAmount/Currency}, in: {consent: ControlParameters.MaximumIndividualAmount.Currency}}\n",
        &[],
        true,
    )
    .unwrap();
    let c = claims(json!({"openbanking_intent_id": "DVRP-2f5e9a1c"}));
    let payment = |creditor: &str, currency: &str, vrp_type: &str| {
        let mut r = Req::path(&[]);
        r.headers.insert("x-vrp-type", vrp_type.parse().unwrap());
        r.body = Some(
            json!({"Data": {"ConsentId": "DVRP-2f5e9a1c",
                "Initiation": {"CreditorAccount": {"Identification": creditor}},
                "Instruction": {"InstructedAmount": {"Amount": "10.00", "Currency": currency}}}})
            .to_string()
            .into_bytes(),
        );
        r
    };
    let run = |rec: &ConsentRecord, r: &Req, now: i64| {
        evaluate(&con, &[], &c, Ok(Some(rec)), &r.facts(), now).map_err(|d| (d.error, d.rule))
    };
    let now = 1_800_000_000;
    let good = payment("30949330000011", "GBP", "UK.OBIE.VRPType.Sweeping");
    assert_eq!(run(&rec, &good, now), Ok(()));
    for (r, rule) in [
        (
            payment("30949330000099", "GBP", "UK.OBIE.VRPType.Sweeping"),
            "creditor",
        ),
        (
            payment("30949330000011", "EUR", "UK.OBIE.VRPType.Sweeping"),
            "currency",
        ),
        (
            payment("30949330000011", "GBP", "UK.OBIE.VRPType.Other"),
            "vrp-type",
        ),
    ] {
        assert_eq!(
            run(&rec, &r, now),
            Err((AuthzError::Object, rule.to_string()))
        );
    }
    // After ControlParameters.ValidToDateTime the consent is over.
    assert_eq!(
        run(&rec, &good, 1_806_921_788).unwrap_err().0,
        AuthzError::ConsentExpired
    );
    let revoked = record_of(with_data(obie("domestic-vrp"), "Status", json!("Revoked")));
    assert_eq!(
        run(&revoked, &good, now).unwrap_err().0,
        AuthzError::ConsentStatus
    );
}

#[test]
fn amounts_compare_as_exact_decimals() {
    use std::cmp::Ordering::*;
    let a = |s: &str| Amount::parse(s).unwrap_or_else(|| panic!("{s} parses"));
    for (x, y, o) in [
        ("10.50", "10.5", Equal),
        ("10", "10.00", Equal),
        ("0", "0.000", Equal),
        ("000", "0", Equal),
        ("007.10", "7.1", Equal),
        ("10.49", "10.5", Less),
        ("10.51", "10.5", Greater),
        ("9.99", "10", Less),
        ("100", "99.999", Greater),
        ("0.05", "0.5", Less),
        ("0.5", "0.51", Less),
        ("1.000000000000000001", "1", Greater),
        // Beyond any float's or u64's precision, still exact.
        (
            "123456789012345678901234567890.1",
            "123456789012345678901234567890.09",
            Greater,
        ),
        ("99999999999999999999", "100000000000000000000", Less),
    ] {
        assert_eq!(a(x).cmp(&a(y)), o, "{x} vs {y}");
        assert_eq!(a(y).cmp(&a(x)), o.reverse(), "{y} vs {x}");
    }
    for bad in [
        "",
        "-1",
        "+1",
        "-0.00",
        "1e2",
        "1E2",
        "1.5e-3",
        ".5",
        "5.",
        "1..2",
        "1.2.3",
        " 1",
        "1 ",
        "1,00",
        "0x10",
        "NaN",
        "Infinity",
        "١٢",
        "１",
        "1_000",
        &"9".repeat(65),
    ] {
        assert_eq!(Amount::parse(bad), None, "{bad:?} must be refused");
    }
    assert!(Amount::parse(&"9".repeat(64)).is_some());
    for (c, ok) in [
        ("EUR", true),
        ("GBP", true),
        ("eur", false),
        ("EU", false),
        ("EURO", false),
        ("E1R", false),
        ("ÉUR", false),
        ("", false),
    ] {
        assert_eq!(is_currency(c), ok, "{c}");
    }
}

const ONE_GRANT: &str = r#"
rules:
  - id: g
    authorization_details:
      type: payment_initiation
      match:
        - {value: {json: /debtorAccount/iban}, field: debtorAccount/iban}
        - {value: {json: /creditorAccount/iban}, field: creditorAccount/iban}
      amount: {value: {json: /instructedAmount}, field: instructedAmount}
      actions: [initiate]
      locations: https://api.bank.example
"#;

fn payment(debtor: &str, creditor: &str, amount: Value) -> Req {
    let mut r = Req::path(&[]);
    r.body = Some(
        json!({"debtorAccount": {"iban": debtor}, "creditorAccount": {"iban": creditor},
               "instructedAmount": amount})
        .to_string()
        .into_bytes(),
    );
    r
}

fn entry(debtor: &str, creditor: &str, amount: &str, currency: &str) -> Value {
    json!({"type": "payment_initiation", "debtorAccount": {"iban": debtor},
           "creditorAccount": {"iban": creditor},
           "instructedAmount": {"amount": amount, "currency": currency}})
}

#[test]
fn one_authorization_details_entry_must_grant_every_value_and_the_amount() {
    let a = compile_yaml(ONE_GRANT, &[], true).unwrap();
    assert!(a.reads_body());
    let eur = |x: &str| json!({"amount": x, "currency": "EUR"});
    let c = claims(json!({"authorization_details": [
        entry("DE02", "DE89", "100.00", "EUR"),
        entry("FR76", "GB33", "5000", "EUR"),
    ]}));
    let run = |r: &Req| decide(&a, &[], &c, None, r).map_err(|e| e.0);
    assert_eq!(run(&payment("DE02", "DE89", eur("100"))), Ok(()));
    assert_eq!(run(&payment("FR76", "GB33", eur("4999.99"))), Ok(()));
    // Each value is granted by some entry, but no entry grants both.
    assert_eq!(
        run(&payment("DE02", "GB33", eur("1"))),
        Err(AuthzError::Object)
    );
    assert_eq!(
        run(&payment("DE02", "DE89", eur("100.001"))),
        Err(AuthzError::GrantAmount)
    );
    assert_eq!(
        run(&payment(
            "DE02",
            "DE89",
            json!({"amount": "1", "currency": "GBP"})
        )),
        Err(AuthzError::GrantAmount)
    );
    // OBIE's member names bind the same way upstream binders read them.
    assert_eq!(
        run(&payment(
            "DE02",
            "DE89",
            json!({"Amount": "1", "Currency": "EUR"})
        )),
        Ok(())
    );
    for bad in [
        json!({"amount": 1, "currency": "EUR"}),
        json!({"amount": 1.5, "currency": "EUR"}),
        json!({"amount": "1e1", "currency": "EUR"}),
        json!({"amount": "-1", "currency": "EUR"}),
        json!({"amount": "1", "currency": "eur"}),
        json!({"amount": "1"}),
        json!({"currency": "EUR"}),
        json!("1.00 EUR"),
    ] {
        assert_eq!(
            run(&payment("DE02", "DE89", bad.clone())),
            Err(AuthzError::AmountMalformed),
            "{bad}"
        );
    }
    assert_eq!(
        run(&payment(
            "DE02",
            "DE89",
            json!({"amount": "1", "Amount": "1000", "currency": "EUR"})
        )),
        Err(AuthzError::Ambiguous)
    );
    let mut missing = Req::path(&[]);
    missing.body = Some(
        br#"{"debtorAccount":{"iban":"DE02"},"instructedAmount":{"amount":"1","currency":"EUR"}}"#
            .to_vec(),
    );
    assert_eq!(run(&missing), Err(AuthzError::ObjectMissing));
    let mut no_amount = Req::path(&[]);
    no_amount.body =
        Some(br#"{"debtorAccount":{"iban":"DE02"},"creditorAccount":{"iban":"DE89"}}"#.to_vec());
    assert_eq!(run(&no_amount), Err(AuthzError::ObjectMissing));
    // No entries, or entries of another type, grant nothing.
    assert_eq!(
        decide(
            &a,
            &[],
            &claims(json!({})),
            None,
            &payment("DE02", "DE89", eur("1"))
        )
        .map_err(|e| e.0),
        Err(AuthzError::Object)
    );
}

#[test]
fn actions_locations_and_datatypes_narrow_only_where_the_entry_lists_them() {
    let a = compile_yaml(ONE_GRANT, &[], true).unwrap();
    let with = |k: &str, v: Value| {
        let mut e = entry("DE02", "DE89", "100", "EUR");
        e[k] = v;
        claims(json!({ "authorization_details": [e] }))
    };
    let r = payment("DE02", "DE89", json!({"amount": "1", "currency": "EUR"}));
    let run = |c: &Map<String, Value>| decide(&a, &[], c, None, &r).map_err(|e| e.0);
    assert_eq!(run(&with("actions", json!(["initiate", "status"]))), Ok(()));
    assert_eq!(
        run(&with("actions", json!(["status"]))),
        Err(AuthzError::Object)
    );
    assert_eq!(
        run(&with("actions", json!("initiate"))),
        Err(AuthzError::Object)
    );
    assert_eq!(
        run(&with("locations", json!(["https://api.bank.example"]))),
        Ok(())
    );
    assert_eq!(
        run(&with("locations", json!(["https://other.example"]))),
        Err(AuthzError::Object)
    );
    // The rule names no datatypes, so the entry's do not matter.
    assert_eq!(run(&with("datatypes", json!(["x"]))), Ok(()));
    let d = compile_yaml(
        "rules:\n  - id: d\n    authorization_details: {type: account_information, datatypes: [balances]}\n",
        &[],
        true,
    )
    .unwrap();
    let ai = |v: Value| claims(json!({"authorization_details": [v]}));
    let none = Req::path(&[]);
    let run = |c: &Map<String, Value>| decide(&d, &[], c, None, &none).map_err(|e| e.0);
    assert_eq!(run(&ai(json!({"type": "account_information"}))), Ok(()));
    assert_eq!(
        run(&ai(
            json!({"type": "account_information", "datatypes": ["balances", "details"]})
        )),
        Ok(())
    );
    assert_eq!(
        run(&ai(
            json!({"type": "account_information", "datatypes": ["details"]})
        )),
        Err(AuthzError::Object)
    );
    assert!(!d.reads_body());
}

#[test]
fn a_hidden_grant_rule_hides_its_refusals_but_not_malformed_requests() {
    let a = compile_yaml(&format!("{ONE_GRANT}    deny_status: 404\n"), &[], true).unwrap();
    let c = claims(json!({"authorization_details": [entry("DE02", "DE89", "1", "EUR")]}));
    let run = |r: &Req| decide(&a, &[], &c, None, r).map_err(|e| (e.0, e.2));
    assert_eq!(
        run(&payment(
            "DE02",
            "DE89",
            json!({"amount": "2", "currency": "EUR"})
        )),
        Err((AuthzError::GrantAmount, true))
    );
    assert_eq!(
        run(&payment(
            "DE02",
            "XX",
            json!({"amount": "1", "currency": "EUR"})
        )),
        Err((AuthzError::Object, true))
    );
    assert_eq!(
        run(&payment(
            "DE02",
            "DE89",
            json!({"amount": "1e0", "currency": "EUR"})
        )),
        Err((AuthzError::AmountMalformed, false))
    );
}

#[test]
fn grant_rules_are_validated_at_load_with_the_field_and_the_reason() {
    let errs = |y: &str| compile_yaml(y, &["Id"], true).unwrap_err().join("\n");
    let e = errs("rules:\n  - {id: x}\n");
    assert!(
        e.contains("rules[0]: a rule names exactly one of `value` or `authorization_details`"),
        "{e}"
    );
    let e = errs("rules:\n  - id: x\n    value: {path: Id}\n    authorization_details: {type: t, actions: [a]}\n");
    assert!(e.contains("rules[0]: a rule names exactly one"), "{e}");
    let e = errs("rules:\n  - id: x\n    authorization_details: {type: t}\n");
    assert!(
        e.contains("rules[0].authorization_details: list what the entry must grant"),
        "{e}"
    );
    let e = errs("rules:\n  - id: x\n    authorization_details: {type: '', actions: [a]}\n");
    assert!(
        e.contains("rules[0].authorization_details.type: name the entry type"),
        "{e}"
    );
    let e = errs("rules:\n  - id: x\n    authorization_details: {type: t, match: [{value: {path: Id}, field: 'a//b'}]}\n");
    assert!(
        e.contains("rules[0].authorization_details.match[0].field: `a//b` is not a member path"),
        "{e}"
    );
    let e = errs("rules:\n  - id: x\n    authorization_details: {type: t, match: [{value: {path: Nope}, field: a}]}\n");
    assert!(e.contains("rules[0].authorization_details.match[0].value.path: the route template has no parameter {Nope}"), "{e}");
    let e = errs("rules:\n  - id: x\n    authorization_details: {type: t, amount: {value: {path: Id}, field: a}}\n");
    assert!(
        e.contains(
            "rules[0].authorization_details.amount.value: an amount is read from the JSON body"
        ),
        "{e}"
    );
    let e = errs("rules:\n  - id: x\n    authorization_details: {type: t, amount: {value: {json: /a/*/b}, field: a}}\n");
    assert!(
        e.contains(
            "rules[0].authorization_details.amount.value: an amount is read from the JSON body"
        ),
        "{e}"
    );
    let e = errs("rules:\n  - id: x\n    authorization_details: {type: t, locations: not-a-uri}\n");
    assert!(
        e.contains("rules[0].authorization_details.locations: `not-a-uri` is not an absolute URI"),
        "{e}"
    );
    let e = errs("rules:\n  - id: x\n    authorization_details: {type: t, actions: ['']}\n");
    assert!(
        e.contains("rules[0].authorization_details.actions: an empty string names nothing"),
        "{e}"
    );
    let e = errs("rules:\n  - id: x\n    authorization_details: {type: t, actions: [a]}\n    in: {claim: c}\n");
    assert!(
        e.contains("rules[0]: `in` and `equals` belong to a `value` rule"),
        "{e}"
    );
}
