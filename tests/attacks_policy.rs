//! The attack suite, policy side (docs/attacks.md F BOLA rows, H rate limits, I audit hygiene,
//! J idempotency, and cases it does not list: consent states, an object named in a header
//! twice). One table run through `support::attack::run` (status + reason, nothing upstream,
//! one audit record each), and the pre-authentication limit (H08, G34) on its own proxy.

mod common;
mod support {
    pub(crate) mod attack;
    pub(crate) mod h2raw;
}

use common::{dur, FileConsentSource, FileQuota, FileRateLimits};
use portcullis_crypto::jose::sign::SigningKey;
use portcullis_crypto::jose::Alg;
use serde_json::{json, Value};
use support::attack::*;

const POLICY: &str = r#"
group: policy
upstream: bank
routes:
  - id: balances
    method: GET
    path: /accounts/{AccountId}/balances
    auth: {profile: fapi2}
    scopes: {all_of: [accounts]}
    consent: {claim: openbanking_intent_id, permissions: [ReadBalances]}
    rules:
      - {id: account-in-consent, value: {path: AccountId}, in: {consent: accounts}}
  - id: hidden
    method: GET
    path: /hidden/{AccountId}
    auth: {profile: fapi2}
    rules:
      - {id: hide, value: {path: AccountId}, in: {claim: accounts}, deny_status: 404}
  - id: transactions
    method: GET
    path: /transactions
    auth: {profile: fapi2}
    rules:
      - {id: query-account, value: {query: accountId}, in: {claim: accounts}}
  - id: by-header
    method: GET
    path: /statements
    auth: {profile: fapi2}
    rules:
      - {id: header-account, value: {header: x-account-id}, in: {claim: accounts}}
  - id: account.update
    method: PUT
    path: /accounts/{AccountId}
    auth: {profile: fapi2}
    rules:
      - {id: body-matches-path, value: {path: AccountId}, in: {claim: accounts}, equals: {json: /Data/AccountId}}
  - id: payments
    method: POST
    path: /payments
    auth: {profile: fapi2}
    scopes: {all_of: [payments]}
    rules:
      - {id: debtor, value: {json: /Data/DebtorAccount}, in: {claim: accounts}}
  - id: pay
    method: POST
    path: /pay
    body_limit: 4096
    idempotency: required
  - id: pay.put
    method: PUT
    path: /pay
    body_limit: 4096
    idempotency: required
  - id: pay.slow
    method: POST
    path: /pay-slow
    upstream: slow
    idempotency: required
  - id: limited.h01
    method: GET
    path: /limited/{Id}
    rate_limit: h01
  - id: limited.h03
    method: GET
    path: /limited-token
    auth: {profile: fapi2}
    rate_limit: h03
  - id: limited.h05
    method: GET
    path: /limited-h05/{Id}
    rate_limit: h05
  - id: limited.h05b
    method: GET
    path: /limited-h05b
    rate_limit: h05
  - id: logged
    method: GET
    path: /logged
    auth: {profile: fapi2}
"#;

/// One request a minute with a burst of `burst`.
fn per_minute(burst: u32) -> FileQuota {
    FileQuota {
        rate: 1,
        per: dur("60s"),
        burst: Some(burst),
        shadow: false,
    }
}

/// The rate-limit classes of group H: `h01`, `h03` and `h05`, a burst of three each.
fn limits() -> FileRateLimits {
    FileRateLimits {
        classes: ["h01", "h03", "h05"]
            .map(|c| (c.to_string(), per_minute(3)))
            .into(),
        ..FileRateLimits::default()
    }
}

fn consents(dir: &std::path::Path) -> FileConsentSource {
    let file = dir.join("consents.json");
    let c = |status: &str, expires: &str, perms: &[&str]| json!({"status": status, "expires": expires, "permissions": perms, "accounts": ["acc-1"]});
    let all = json!({"consents": {
        "aac-1": c("Authorised", "2099-01-01T00:00:00Z", &["ReadBalances"]),
        "aac-revoked": c("Revoked", "2099-01-01T00:00:00Z", &["ReadBalances"]),
        "aac-expired": c("Authorised", "2020-01-01T00:00:00Z", &["ReadBalances"]),
        "aac-noperm": c("Authorised", "2099-01-01T00:00:00Z", &["ReadAccountsBasic"]),
    }});
    std::fs::write(&file, all.to_string()).unwrap();
    FileConsentSource {
        file: Some(file.display().to_string()),
        ..FileConsentSource::default()
    }
}

/// A token for tpp1 with the accounts and payments scopes, consent aac-1 and account acc-1.
fn token(lab: &Lab, extra: Value) -> String {
    let mut c = json!({"scope": "accounts payments", "openbanking_intent_id": "aac-1", "accounts": ["acc-1"]});
    for (k, v) in extra.as_object().unwrap() {
        c[k] = v.clone();
    }
    lab.token(c)
}

fn rule(want: &'static str) -> impl Fn(&Outcome) -> Result<(), String> {
    move |o| match o.record["rule_id"].as_str() {
        Some(r) if r == want => Ok(()),
        r => Err(format!("rule_id {r:?}, want {want}")),
    }
}

/// The exact `WWW-Authenticate` of the answer (`None`: no challenge at all).
fn challenge(want: Option<&'static str>) -> impl Fn(&Outcome) -> Result<(), String> {
    move |o| {
        let got: Vec<&str> = o
            .headers
            .get_all("www-authenticate")
            .iter()
            .map(|v| v.to_str().unwrap_or("(not text)"))
            .collect();
        match (got.as_slice(), want) {
            ([], None) => Ok(()),
            ([g], Some(w)) if *g == w => Ok(()),
            _ => Err(format!("WWW-Authenticate {got:?}, want {want:?}")),
        }
    }
}

/// Both checks.
fn and(
    a: impl Fn(&Outcome) -> Result<(), String>,
    b: impl Fn(&Outcome) -> Result<(), String>,
) -> impl Fn(&Outcome) -> Result<(), String> {
    move |o| a(o).and_then(|()| b(o))
}

/// RFC 6750 §3.1: a 403 authorization denial of a Bearer caller.
const INSUFFICIENT: Option<&str> = Some("Bearer error=\"insufficient_scope\"");

/// Group F, the BOLA rows (paths are in attacks_http.rs), and consent states. Every 403 carries
/// RFC 6750 §3.1 `insufficient_scope` in the caller's scheme; the 400s and the hidden 404 carry
/// no challenge.
fn group_f(lab: &Lab) -> Vec<Case> {
    let t = token(lab, json!({}));
    let get = |path: &str| Req::get(path).bearer(&t);
    let put = |path: &str, body: &str| Req {
        body: body.to_string().into(),
        ..Req::new("PUT", path)
            .bearer(&t)
            .header("content-type", "application/json")
    };
    let with = |extra: Value| Req::get("/accounts/acc-1/balances").bearer(&token(lab, extra));
    // The same grant as `token`, bound to a DPoP key and sent with a proof for the request.
    let client = SigningKey::generate(Alg::ES256, "dpop-client").unwrap();
    let dpop = |r: Req, extra: Value, jti: &str| {
        let mut c = json!({"scope": "accounts payments", "openbanking_intent_id": "aac-1", "accounts": ["acc-1"], "jti": jti});
        for (k, v) in extra.as_object().unwrap() {
            c[k] = v.clone();
        }
        let t = lab.dpop_token(&client, c);
        let p = proof(&client, &r.method, &r.path, &t, jti);
        r.header("authorization", format!("DPoP {t}"))
            .header("dpop", p)
    };
    vec![
        case(
            "F16",
            "a repeated identifier parameter",
            get("/transactions?accountId=acc-1&accountId=victim"),
            refused(400, "authz.ambiguous"),
        )
        .check(challenge(None)),
        case(
            "F16",
            "one identifier parameter passes",
            get("/transactions?accountId=acc-1"),
            Expect::Allowed,
        ),
        case(
            "F17",
            "path and body ids disagree",
            put("/accounts/acc-1", r#"{"Data":{"AccountId":"victim"}}"#),
            refused(400, "authz.mismatch"),
        )
        .check(challenge(None)),
        case(
            "F17",
            "path and body ids agree",
            put("/accounts/acc-1", r#"{"Data":{"AccountId":"acc-1"}}"#),
            Expect::Allowed,
        ),
        case(
            "F18",
            "duplicate keys in the body",
            put(
                "/accounts/acc-1",
                r#"{"Data":{"AccountId":"acc-1","AccountId":"victim"}}"#,
            ),
            refused(400, "authz.ambiguous"),
        )
        .check(challenge(None)),
        case(
            "F19",
            "another PSU's account",
            get("/accounts/acc-victim/balances"),
            refused(403, "authz.object"),
        )
        .check(and(rule("account-in-consent"), challenge(INSUFFICIENT))),
        case(
            "F19",
            "a hidden object answers exactly like an unknown path",
            get("/hidden/acc-victim"),
            refused(404, "route.not_found"),
        )
        .check(challenge(None))
        .recorded_as("authz.object_hidden")
        .check(rule("hide")),
        case(
            "F19",
            "the consented account passes",
            get("/accounts/acc-1/balances"),
            Expect::Allowed,
        ),
        case(
            "F20",
            "accounts scope on a payment",
            Req::post("/payments", br#"{"Data":{"DebtorAccount":"acc-1"}}"#)
                .bearer(&token(lab, json!({"scope": "accounts"}))),
            refused(403, "authz.scope"),
        )
        .check(challenge(Some(
            "Bearer error=\"insufficient_scope\", scope=\"payments\"",
        ))),
        // RFC 9449 §7.1: a DPoP caller is challenged in the DPoP scheme, with `algs`.
        case(
            "Fx10",
            "a DPoP caller's token lacks the scope",
            dpop(
                Req::post("/payments", br#"{"Data":{"DebtorAccount":"acc-1"}}"#),
                json!({"scope": "accounts"}),
                "fx10",
            ),
            refused(403, "authz.scope"),
        )
        .check(challenge(Some(
            "DPoP error=\"insufficient_scope\", scope=\"payments\", algs=\"PS256 ES256 EdDSA\"",
        ))),
        case(
            "Fx10",
            "a DPoP caller's consent is revoked",
            dpop(
                Req::get("/accounts/acc-1/balances"),
                json!({"openbanking_intent_id": "aac-revoked"}),
                "fx10-consent",
            ),
            refused(403, "authz.consent_status"),
        )
        .check(challenge(Some(
            "DPoP error=\"insufficient_scope\", algs=\"PS256 ES256 EdDSA\"",
        ))),
        case(
            "Fx10",
            "a DPoP caller's hidden object answers like an unknown path",
            dpop(Req::get("/hidden/acc-victim"), json!({}), "fx10-hidden"),
            refused(404, "route.not_found"),
        )
        .recorded_as("authz.object_hidden")
        .check(and(rule("hide"), challenge(None))),
        case(
            "Fx10",
            "a DPoP caller with the scope and consent passes",
            dpop(Req::get("/accounts/acc-1/balances"), json!({}), "fx10-ok"),
            Expect::Allowed,
        ),
        case(
            "F25",
            "a form body where the rule reads JSON",
            Req {
                body: "Data.DebtorAccount=acc-1".into(),
                ..Req::new("POST", "/payments")
                    .bearer(&t)
                    .header("content-type", "application/x-www-form-urlencoded")
            },
            refused(400, "authz.body_not_json"),
        )
        .check(challenge(None)),
        case(
            "F25",
            "JSON with a charset trick in the body",
            Req::post(
                "/payments",
                b"\xef\xbb\xbf{\"Data\":{\"DebtorAccount\":\"acc-victim\"}}",
            )
            .bearer(&t),
            refused(400, "authz.body_not_json"),
        ),
        case(
            "Fx01",
            "a token naming no consent",
            with(json!({"openbanking_intent_id": null})),
            refused(403, "authz.consent_missing"),
        )
        .check(challenge(INSUFFICIENT)),
        case(
            "Fx02",
            "an unknown consent",
            with(json!({"openbanking_intent_id": "aac-missing"})),
            refused(403, "authz.consent_not_found"),
        )
        .check(challenge(INSUFFICIENT)),
        case(
            "Fx03",
            "a revoked consent",
            with(json!({"openbanking_intent_id": "aac-revoked"})),
            refused(403, "authz.consent_status"),
        )
        .check(challenge(INSUFFICIENT)),
        case(
            "Fx04",
            "an expired consent",
            with(json!({"openbanking_intent_id": "aac-expired"})),
            refused(403, "authz.consent_expired"),
        )
        .check(challenge(INSUFFICIENT)),
        case(
            "Fx05",
            "a consent without the permission",
            with(json!({"openbanking_intent_id": "aac-noperm"})),
            refused(403, "authz.consent_permission"),
        )
        .check(challenge(INSUFFICIENT)),
        case(
            "Fx06",
            "the object header sent twice",
            get("/statements")
                .header("x-account-id", "acc-1")
                .header("x-account-id", "victim"),
            refused(400, "authz.ambiguous"),
        )
        .check(challenge(None)),
        case(
            "Fx07",
            "the object header missing",
            get("/statements"),
            refused(403, "authz.object_missing"),
        )
        .check(challenge(INSUFFICIENT)),
        case(
            "Fx08",
            "a case-variant object id",
            get("/accounts/ACC-1/balances"),
            refused(403, "authz.object"),
        )
        .check(challenge(INSUFFICIENT)),
        case(
            "Fx09",
            "a fullwidth look-alike object id (encoded)",
            get("/accounts/acc%EF%BC%8D1/balances"),
            refused(400, "path.non_ascii"),
        ),
    ]
}

fn retry_after(o: &Outcome) -> Result<(), String> {
    let h = &o.headers;
    match (h.get("retry-after"), h.get("ratelimit-policy")) {
        (Some(r), Some(_))
            if r.to_str()
                .ok()
                .and_then(|s| s.parse::<u64>().ok())
                .is_some() =>
        {
            match o.record["rate_limit"]["limited"].as_bool() {
                Some(true) => Ok(()),
                _ => Err(format!("record rate_limit {}", o.record["rate_limit"])),
            }
        }
        other => Err(format!("429 headers {other:?}")),
    }
}

/// Group H: rate-limit evasion. Each row spends its own class or bucket.
fn group_h(lab: &Lab) -> Vec<Case> {
    let xff = |n: u32| {
        Req::get(&format!("/limited/{n}"))
            .header("x-forwarded-for", format!("10.0.0.{n}"))
            .header("forwarded", format!("for=10.0.0.{n}"))
    };
    let tok = |jti: &str| token(lab, json!({"jti": jti, "sub": jti}));
    let r429 = refused(429, "rate_limit.client");
    vec![
        case(
            "H01",
            "rotating X-Forwarded-For and Forwarded",
            xff(4),
            r429,
        )
        .before(xff(1), 200)
        .before(xff(2), 200)
        .before(xff(3), 200)
        .check(retry_after),
        case(
            "H02",
            "client-id variants in headers",
            Req::get("/limited/9").header("x-client-id", "ClientA "),
            r429,
        )
        .check(retry_after),
        case(
            "H03",
            "a fresh token per request",
            Req::get("/limited-token").bearer(&tok("r4")),
            r429,
        )
        .before(Req::get("/limited-token").bearer(&tok("r1")), 200)
        .before(Req::get("/limited-token").bearer(&tok("r2")), 200)
        .before(Req::get("/limited-token").bearer(&tok("r3")), 200)
        .check(retry_after),
        case(
            "H05",
            "path variants share the class bucket",
            Req::get("/limited-h05b"),
            r429,
        )
        .before(Req::get("/limited-h05/a"), 200)
        .before(Req::get("/limited-h05/b"), 200)
        .before(Req::get("/limited-h05/c").h2(), 200)
        .check(retry_after),
        case(
            "H05",
            "an upper-case variant is another path (404), not another bucket",
            Req::get("/LIMITED-h05/a"),
            refused(404, "route.not_found"),
        ),
        case(
            "H05",
            "an encoded-slash variant is refused before the limit",
            Req::get("/limited-h05/a%2Fb"),
            refused(400, "path.encoded_separator"),
        ),
        case(
            "H07",
            "the 429 over HTTP/2 says when to retry",
            Req::get("/limited-h05b").h2(),
            r429,
        )
        .check(retry_after),
        case(
            "H07",
            "another client is not limited by tpp1's bucket",
            Req::get("/limited-h05b").as_(Some("tpp2")),
            Expect::Allowed,
        ),
    ]
}

fn raw_log(lab: &Lab) -> std::path::PathBuf {
    lab.p.dir.path().join("audit.log")
}

/// Group I: audit-log injection and hygiene. The record must round-trip the hostile value,
/// stay one line of valid JSON, and hold no raw control bytes.
fn group_i(lab: &Lab) -> Vec<Case> {
    let log = raw_log(lab);
    let hostile = |value: &'static str| {
        let log = log.clone();
        move |o: &Outcome| -> Result<(), String> {
            if o.record["client_id"] != value || o.record["subject"] != value {
                return Err(format!(
                    "client_id {} subject {}",
                    o.record["client_id"], o.record["subject"]
                ));
            }
            if o.record.get("admin").is_some() {
                return Err("a member was injected".into());
            }
            let text = std::fs::read_to_string(&log).unwrap();
            // The writer may be mid-line: only complete lines count.
            let text = &text[..text.rfind('\n').map_or(0, |i| i + 1)];
            let bad = text.bytes().any(|b| (b < 0x20 && b != b'\n') || b == 0x7f);
            if bad || text.contains('\u{1b}') || text.contains('\u{2028}') {
                return Err("a raw control character reached the log".into());
            }
            if text
                .lines()
                .any(|l| serde_json::from_str::<Value>(l).is_err())
            {
                return Err("a log line is not JSON".into());
            }
            Ok(())
        }
    };
    let as_claims = |v: &str, jti: &str| token(lab, json!({"client_id": v, "sub": v, "jti": jti}));
    let long = "j".repeat(4000);
    let good = token(lab, json!({"jti": "i07"}));
    vec![
        case(
            "I01",
            "CR/LF in logged claims",
            Req::get("/logged").bearer(&as_claims("a\r\n{\"kind\":\"forged\"}", "i01")),
            Expect::Allowed,
        )
        .check(hostile("a\r\n{\"kind\":\"forged\"}")),
        case(
            "I01",
            "CR/LF in the path (encoded)",
            Req::get("/logged/%0d%0aforged"),
            refused(400, "path.control_char"),
        )
        .check(|o| {
            if o.record["path"].as_str().is_some_and(|p| !p.contains('\n')) {
                Ok(())
            } else {
                Err(format!("path {}", o.record["path"]))
            }
        }),
        case(
            "I02",
            "JSON breakout in logged claims",
            Req::get("/logged").bearer(&as_claims("x\"},\"admin\":true,\"x\":\"\\", "i02")),
            Expect::Allowed,
        )
        .check(hostile("x\"},\"admin\":true,\"x\":\"\\")),
        case(
            "I03",
            "ANSI escapes and an OSC title in logged claims",
            Req::get("/logged").bearer(&as_claims("\u{1b}[2J\u{1b}]0;pwned\u{7}", "i03")),
            Expect::Allowed,
        )
        .check(hostile("\u{1b}[2J\u{1b}]0;pwned\u{7}")),
        case(
            "I03",
            "bidi override and U+2028 in logged claims",
            Req::get("/logged").bearer(&as_claims("a\u{202e}b\u{2028}c", "i03b")),
            Expect::Allowed,
        )
        .check(hostile("a\u{202e}b\u{2028}c")),
        case(
            "I05",
            "a 4,000-byte claim is truncated with a marker",
            Req::get("/logged").bearer(&token(lab, json!({"jti": long}))),
            Expect::Allowed,
        )
        .check(|o| match o.record["token_jti"].as_str() {
            Some(j) if j.len() < 600 && j.ends_with("[truncated]") => Ok(()),
            j => Err(format!("token_jti of {} bytes", j.map_or(0, str::len))),
        }),
        case(
            "I05",
            "a 1 MiB User-Agent never reaches the log",
            Req::get("/logged")
                .bearer(&good)
                .header("user-agent", "u".repeat(1 << 20)),
            Expect::Parser(431, "http_headers_too_large"),
        ),
        case(
            "I07",
            "credentials in every place are kept out of the record",
            Req::get(&format!("/logged?access_token={good}"))
                .bearer(&good)
                .header("cookie", format!("session={good}"))
                .header("dpop", good.clone())
                .header("x-jws-signature", good.clone()),
            refused(400, "token.in_query"),
        )
        .check(|o| {
            if o.record["path"] == "/logged" && o.record["has_query"] == true {
                Ok(())
            } else {
                Err(format!(
                    "path {} has_query {}",
                    o.record["path"], o.record["has_query"]
                ))
            }
        }),
        case(
            "I08",
            "a non-UUID interaction id is replaced, echoed and logged",
            Req::get("/logged")
                .bearer(&good)
                .header("x-fapi-interaction-id", "not-a-uuid\t"),
            Expect::Allowed,
        )
        .check(|o| {
            let echoed = o
                .headers
                .get("x-fapi-interaction-id")
                .and_then(|v| v.to_str().ok())
                .unwrap_or("");
            let forwarded = o.forwarded[0]
                .headers
                .get("x-fapi-interaction-id")
                .and_then(|v| v.to_str().ok())
                .unwrap_or("");
            if uuid::Uuid::parse_str(echoed).is_ok()
                && echoed == forwarded
                && o.record["interaction_id"] == echoed
            {
                Ok(())
            } else {
                Err(format!(
                    "echoed {echoed} forwarded {forwarded} record {}",
                    o.record["interaction_id"]
                ))
            }
        }),
    ]
}

const BODY: &[u8] = br#"{"Data":{"Amount":"10.00","Currency":"GBP"}}"#;

fn pay(key: Option<&str>, body: &[u8]) -> Req {
    let r = Req::post("/pay", body);
    match key {
        Some(k) => r.header("x-idempotency-key", k),
        None => r,
    }
}

fn replayed(o: &Outcome) -> Result<(), String> {
    match o.headers.get("x-idempotent-replay") {
        Some(v) if v == "true" => Ok(()),
        v => Err(format!("x-idempotent-replay {v:?}")),
    }
}

/// Group J: idempotency keys (the store is the in-memory one; Redis is tests/redis.rs).
fn group_j() -> Vec<Case> {
    let r422 = refused(422, "idempotency.key_reused");
    let bad = refused(400, "idempotency.key_invalid");
    let spaced = br#"{ "Data": {"Amount":"10.00","Currency":"GBP"}}"#;
    vec![
        case(
            "J01",
            "the same key with another body",
            pay(Some("k-j01"), br#"{"Data":{"Amount":"99.00"}}"#),
            r422,
        )
        .before(pay(Some("k-j01"), BODY), 200),
        case(
            "J01",
            "the same key and body is replayed, not executed",
            pay(Some("k-j01"), BODY),
            Expect::Served,
        )
        .check(replayed),
        case(
            "J02",
            "the same key while the first is in flight",
            Req {
                path: "/pay-slow".into(),
                ..pay(Some("k-j02"), BODY)
            },
            refused(409, "idempotency.in_flight"),
        )
        .background(Req {
            path: "/pay-slow".into(),
            ..pay(Some("k-j02"), BODY)
        }),
        case(
            "J04",
            "the same key on another path",
            Req {
                path: "/pay-slow".into(),
                ..pay(Some("k-j04"), BODY)
            },
            r422,
        )
        .before(pay(Some("k-j04"), BODY), 200),
        case(
            "J04",
            "the same key with another method",
            Req {
                method: "PUT".into(),
                ..pay(Some("k-j04"), BODY)
            },
            r422,
        ),
        case(
            "J05",
            "no key on a route that requires one",
            pay(None, BODY),
            refused(400, "idempotency.key_missing"),
        ),
        case(
            "J06",
            "a 41-character key",
            pay(Some(&"k".repeat(41)), BODY),
            bad,
        ),
        case("J06", "an empty key", pay(Some(""), BODY), bad),
        case("J06", "a key with a tab", pay(Some("k\tj06"), BODY), bad),
        case("J06", "a non-ASCII key", pay(Some("kéy"), BODY), bad),
        case(
            "J06",
            "two different keys (both header names)",
            pay(Some("k-a"), BODY).header("idempotency-key", "k-b"),
            bad,
        ),
        case(
            "J06",
            "the key header twice",
            pay(Some("k-a"), BODY).header("x-idempotency-key", "k-b"),
            bad,
        ),
        case(
            "J07",
            "a key is new again after its TTL",
            pay(Some("k-j07"), br#"{"Data":{"Amount":"7.00"}}"#),
            Expect::Allowed,
        )
        .before(pay(Some("k-j07"), BODY), 200)
        .advance(25 * 3600),
        case(
            "J08",
            "semantically equal JSON, other bytes",
            pay(Some("k-j08"), spaced),
            r422,
        )
        .before(pay(Some("k-j08"), BODY), 200),
        case(
            "Jx01",
            "another client's key of the same name is its own",
            pay(Some("k-j01"), br#"{"Data":{"Amount":"99.00"}}"#).as_(Some("tpp2")),
            Expect::Allowed,
        ),
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_policy_attack_table() {
    let dir = tempfile::tempdir().unwrap();
    let mut o = LabOptions::new(POLICY);
    o.config.consent = Some(consents(dir.path()));
    o.config.rate_limits = limits();
    let lab = Lab::start(o).await;
    let mut cases = group_f(&lab);
    cases.extend(group_h(&lab));
    cases.extend(group_i(&lab));
    cases.extend(group_j());
    run(&lab, cases).await;
}

/// H08 and G34: the pre-authentication limit per peer comes before any token is parsed or
/// signature checked, so a flood of invalid tokens is bounded; the refusals are audited.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_pre_auth_limit_bounds_an_invalid_token_flood() {
    let mut o = LabOptions::new("group: p\nupstream: bank\nroutes:\n  - id: a\n    method: GET\n    path: /accounts\n    auth: {profile: fapi2}\n");
    o.config.rate_limits.peer = Some(per_minute(20));
    let lab = Lab::start(o).await;
    let forged = |i: usize| {
        Req::get("/accounts").bearer(&format!(
            "eyJhbGciOiJFUzI1NiIsImtpZCI6ImFzLTEifQ.e30.{}",
            "A".repeat(86 + i % 2)
        ))
    };
    let mut cases = Vec::new();
    for i in 0..20 {
        cases.push(case(
            "H08",
            format!("invalid token {i} within the peer burst"),
            forged(i),
            refused(401, "token.typ"),
        ));
    }
    cases.push(
        case(
            "H08",
            "the 21st request from this peer, before its token is read",
            forged(21),
            refused(429, "rate_limit.peer"),
        )
        .check(retry_after_only),
    );
    cases.push(case(
        "G34",
        "a valid token from the same peer is limited too",
        Req::get("/accounts").bearer(&lab.token(json!({}))),
        refused(429, "rate_limit.peer"),
    ));
    run(&lab, cases).await;
    let verified = lab
        .p
        .shared
        .runtime
        .load()
        .tokens
        .verifications
        .load(std::sync::atomic::Ordering::Relaxed);
    assert_eq!(
        verified, 0,
        "no signature was verified for a limited request"
    );
}

fn retry_after_only(o: &Outcome) -> Result<(), String> {
    match o.headers.get("retry-after") {
        Some(_) => Ok(()),
        None => Err("no Retry-After".into()),
    }
}
