//! The findings of an independent review (docs/attacks.md, group R), one test each, named for
//! the finding. Refusals run through `support::attack::run`: exact status and reason, nothing at
//! any recording upstream, one audit record with the reason. The tests that need a connection
//! the client abandons, a CRL reload or an HTTP/2 upstream drive their own proxy.

mod common;
mod support {
    pub(crate) mod attack;
    pub(crate) mod h2raw;
}

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use common::*;
use http_body_util::BodyExt;
use serde_json::{json, Value};
use support::attack::*;
use tokio::io::AsyncWriteExt;

const POLICY: &str = r#"
group: review
upstream: bank
routes:
  - id: payments.details
    method: GET
    path: /payments/{PaymentId}/details
    auth: {profile: fapi2}
  - id: public.any
    method: GET
    path: /public/{Name}
    client_cert: optional
  - id: legacy.params
    method: GET
    path: /legacy/{Id}
    path_parameters: true
  - id: consents.create
    method: POST
    path: /consents
    auth: {profile: fapi2}
    rules:
      - {id: consent-granted, value: {json: /Data/ConsentId}, in: {claim: consents}}
  - id: transactions
    method: GET
    path: /transactions
    auth: {profile: fapi2}
    rules:
      - {id: query-account, value: {query: AccountId}, in: {claim: accounts}}
  - id: accounts.list
    method: GET
    path: /accounts
    auth: {profile: fapi2}
    scopes: {all_of: [accounts]}
  - id: forms.legacy
    method: POST
    path: /forms
    method_override: true
  - id: payments.create
    method: POST
    path: /payments
    auth: {profile: fapi2}
    scopes: {all_of: [payments]}
    idempotency: required
  - id: bearer.accounts
    method: GET
    path: /bearer/accounts
    auth: {profile: bearer}
    scopes: {any_of: [accounts, balances]}
  - id: signed.payments
    method: POST
    path: /signed-payments
    idempotency: required
"#;

async fn lab() -> Lab {
    Lab::start(LabOptions::new(POLICY)).await
}

async fn lab_with(behaviour: Behaviour) -> Lab {
    let mut o = LabOptions::new(POLICY);
    o.behaviour = behaviour;
    Lab::start(o).await
}

/// A tpp1 token granting consent `pdc-a` and account `acc-a1`.
fn token(lab: &Lab) -> String {
    lab.token(json!({"consents": ["pdc-a"], "accounts": ["acc-a1"]}))
}

fn r400(reason: &'static str) -> Expect {
    refused(400, reason)
}

#[tokio::test]
async fn r02_path_parameters_are_refused_unless_the_route_takes_them() {
    let lab = lab().await;
    let t = token(&lab);
    let cases = vec![
        case(
            "R02",
            "`..;` is `..` to a servlet container",
            Req::get("/payments/..;/details").bearer(&t),
            r400("path.dot_segment"),
        ),
        case(
            "R02",
            "a jsessionid parameter in an id segment",
            Req::get("/payments/p1;jsessionid=x/details").bearer(&t),
            r400("path.parameter"),
        ),
        case(
            "R02",
            "`..;` as the last segment of a public route",
            Req::get("/public/..;"),
            r400("path.dot_segment"),
        ),
        case(
            "R02",
            "`.;x` is `.`",
            Req::get("/public/.;x"),
            r400("path.dot_segment"),
        ),
        case(
            "R02",
            "an empty segment with a parameter",
            Req::get("/public/;x"),
            r400("path.empty_segment"),
        ),
        case(
            "R02",
            "an encoded semicolon",
            Req::get("/public/a%3Bb"),
            r400("path.parameter"),
        ),
        case(
            "R02",
            "a route that takes parameters still refuses `..;`",
            Req::get("/legacy/..;"),
            r400("path.dot_segment"),
        ),
        case(
            "R02",
            "a route that takes parameters forwards them as sent",
            Req::get("/legacy/p1;v=2"),
            Expect::Allowed,
        )
        .check(|o| match o.forwarded.first() {
            Some(s) if s.path_and_query == "/legacy/p1;v=2" => Ok(()),
            other => Err(format!("forwarded {other:?}")),
        }),
    ];
    run(&lab, cases).await;
}

#[tokio::test]
async fn r03_names_equal_ignoring_case_are_ambiguous_where_a_rule_reads_them() {
    let lab = lab().await;
    let t = token(&lab);
    let consent = |body: &str| Req::post("/consents", body.as_bytes()).bearer(&t);
    let txns = |q: &str| Req::get(&format!("/transactions?{q}")).bearer(&t);
    let cases = vec![
        case(
            "R03",
            "ConsentId and consentId siblings",
            consent(r#"{"Data":{"ConsentId":"pdc-a","consentId":"pdc-b"}}"#),
            r400("authz.ambiguous"),
        ),
        case(
            "R03",
            "Data and data siblings",
            consent(r#"{"Data":{"ConsentId":"pdc-a"},"data":{"ConsentId":"pdc-b"}}"#),
            r400("authz.ambiguous"),
        ),
        case(
            "R03",
            "a lone member in another case is the value a case-insensitive binder reads",
            consent(r#"{"Data":{"consentid":"pdc-b"}}"#),
            refused(403, "authz.object"),
        ),
        case(
            "R03",
            "a Unicode case twin (Kelvin sign folds to k)",
            Req::post(
                "/consents",
                "{\"Data\":{\"ConsentId\":\"pdc-a\",\"CONSENTID\":\"pdc-b\"}}".as_bytes(),
            )
            .bearer(&t),
            r400("authz.ambiguous"),
        ),
        case(
            "R03",
            "the granted consent in the exact case",
            consent(r#"{"Data":{"ConsentId":"pdc-a"}}"#),
            Expect::Allowed,
        ),
        case(
            "R03",
            "accountid and AccountId in the query",
            txns("accountid=acc-b1&AccountId=acc-a1"),
            r400("authz.ambiguous"),
        ),
        case(
            "R03",
            "a lone parameter in another case",
            txns("ACCOUNTID=acc-b1"),
            refused(403, "authz.object"),
        ),
        case(
            "R03",
            "an encoded name in another case",
            txns("%61ccountId=acc-b1&AccountId=acc-a1"),
            r400("authz.ambiguous"),
        ),
        case(
            "R03",
            "array syntax (qs, PHP, Rails), encoded",
            txns("AccountId%5B%5D=acc-b1"),
            r400("authz.ambiguous"),
        ),
        case(
            "R03",
            "a plus is a space to a form decoder",
            txns("AccountId=acc+a1"),
            refused(403, "authz.object"),
        ),
        case(
            "R03",
            "the granted account in the exact case",
            txns("AccountId=acc-a1"),
            Expect::Allowed,
        ),
    ];
    run(&lab, cases).await;
}

#[tokio::test]
async fn r04_method_overrides_by_query_or_header_are_refused() {
    let lab = lab().await;
    let t = token(&lab);
    let body = br#"{"Data":{"ConsentId":"pdc-a"}}"#;
    let cases = vec![
        case(
            "R04",
            "GET with _method=DELETE",
            Req::get("/accounts?_method=DELETE").bearer(&t),
            r400("http.method_override"),
        ),
        case(
            "R04",
            "POST with _method=DELETE",
            Req::post("/consents?_method=DELETE", body).bearer(&t),
            r400("http.method_override"),
        ),
        case(
            "R04",
            "an encoded _method",
            Req::get("/accounts?%5Fmethod=DELETE").bearer(&t),
            r400("http.method_override"),
        ),
        case(
            "R04",
            "_METHOD",
            Req::get("/accounts?a=1&_METHOD=PUT").bearer(&t),
            r400("http.method_override"),
        ),
        case(
            "R04",
            "X-Original-Method",
            Req::get("/accounts")
                .bearer(&t)
                .header("x-original-method", "DELETE"),
            r400("http.method_override"),
        ),
        case(
            "R04",
            "a route that allows _method",
            Req::post("/forms?_method=PUT", b"{}"),
            Expect::Allowed,
        ),
    ];
    run(&lab, cases).await;
}

#[tokio::test]
async fn r07_a_token_in_the_query_is_refused_however_its_name_is_spelled() {
    let lab = lab().await;
    let t = token(&lab);
    let cases = [
        "access%5Ftoken",
        "%61ccess_token",
        "ACCESS_TOKEN",
        "access_token",
    ]
    .into_iter()
    .map(|name| {
        case(
            "R07",
            format!("?{name}="),
            Req::get(&format!("/accounts?{name}={t}")).bearer(&t),
            r400("token.in_query"),
        )
    })
    .collect();
    run(&lab, cases).await;
}

#[tokio::test]
async fn r08_connection_may_not_nominate_what_a_route_depends_on() {
    let lab = lab().await;
    let t = token(&lab);
    let body = br#"{"Data":{"ConsentId":"pdc-a"}}"#;
    let cases = vec![
        case(
            "R08",
            "Connection: x-jws-signature, content-type",
            Req::post("/consents", body)
                .bearer(&t)
                .header("connection", "x-jws-signature, content-type")
                .header("x-jws-signature", "a..b"),
            r400("http.connection_nominates"),
        ),
        case(
            "R08",
            "Connection: x-idempotency-key",
            Req::post("/payments", body)
                .bearer(&t)
                .header("connection", "x-idempotency-key")
                .header("x-idempotency-key", "k-r08"),
            r400("http.connection_nominates"),
        ),
        case(
            "R08",
            "Connection: close is fine",
            Req::get("/accounts")
                .bearer(&t)
                .header("connection", "close"),
            Expect::Allowed,
        ),
    ];
    run(&lab, cases).await;
}

#[tokio::test]
async fn r10_the_idempotency_fingerprint_covers_the_query() {
    let lab = lab_with(Behaviour::Created).await;
    let body = br#"{"Data":{"Amount":"1.00"}}"#;
    let pay = |q: &str| {
        Req::post(&format!("/signed-payments{q}"), body).header("x-idempotency-key", "k-r10")
    };
    let cases = vec![
        case("R10", "first use", pay("?debtor=a"), Expect::Allowed),
        case(
            "R10",
            "the same key and body with another query",
            pay("?debtor=b"),
            refused(422, "idempotency.key_reused"),
        ),
        case(
            "R10",
            "the same request again",
            pay("?debtor=a"),
            Expect::Served,
        ),
    ];
    run(&lab, cases).await;
}

#[tokio::test]
async fn r11_a_bearer_route_refuses_confirmation_methods_it_cannot_verify() {
    let lab = lab().await;
    let unbound = |cnf: Value| lab.token(json!({ "cnf": cnf }));
    let mut cases: Vec<Case> = [
        json!({"jwk": {"kty": "EC", "crv": "P-256", "x": "a", "y": "b"}}),
        json!({"kid": "k1"}),
        json!({"jku": "https://as.example/jwks"}),
        json!({"x5t#S256": thumb("tpp1"), "jwk": {"kty": "oct"}}),
    ]
    .into_iter()
    .map(|cnf| {
        case(
            "R11",
            format!("cnf {cnf}"),
            Req::get("/bearer/accounts").bearer(&unbound(cnf)),
            refused(401, "token.cnf_unsupported"),
        )
    })
    .collect();
    cases.push(case(
        "R11",
        "a token without cnf is a plain bearer token there",
        Req::get("/bearer/accounts").bearer(&lab.token(json!({"cnf": null}))),
        Expect::Allowed,
    ));
    run(&lab, cases).await;
}

/// Two OAuth clients on one certificate (an aggregator) do not share keys; one client retrying
/// over its second certificate does.
#[tokio::test]
async fn r09_idempotency_keys_belong_to_the_oauth_client_not_the_certificate() {
    let lab = lab_with(Behaviour::Created).await;
    let body = br#"{"Data":{"Amount":"1.00"}}"#;
    let pay = |identity: &'static str, client: &str| {
        let t = lab.token_for(identity, json!({"client_id": client}));
        Req::post("/payments", body)
            .bearer(&t)
            .header("x-idempotency-key", "k-r09")
            .as_(Some(identity))
    };
    let payment = |want: &'static str| {
        move |o: &Outcome| match o.json()["Data"]["PaymentId"].as_str() {
            Some(p) if p == want => Ok(()),
            other => Err(format!("payment {other:?}, want {want}")),
        }
    };
    let cases = vec![
        case(
            "R09",
            "client one",
            pay("tpp1", "client-one"),
            Expect::Allowed,
        )
        .check(payment("p-1")),
        case(
            "R09",
            "client two on the same certificate and key: a payment of its own",
            pay("tpp1", "client-two"),
            Expect::Allowed,
        )
        .check(payment("p-2")),
        case(
            "R09",
            "client one again over its other certificate: the stored answer",
            pay("tpp2", "client-one"),
            Expect::Served,
        )
        .check(payment("p-1")),
    ];
    run(&lab, cases).await;
}

/// RFC 7662 answers for tokens that are not access tokens for this resource server.
#[tokio::test]
async fn r12_introspection_answers_without_our_audience_or_for_refresh_tokens_are_refused() {
    let x5t = thumb("tpp1");
    let handler: Handler = Arc::new(move |_: &http::request::Parts, body: &[u8]| {
        let body = String::from_utf8_lossy(body).to_string();
        let base = json!({"active": true, "iss": ISS, "exp": NOW + 600, "client_id": "tpp-one",
            "scope": "accounts", "cnf": {"x5t#S256": x5t}});
        let mut a = base.clone();
        if body.starts_with("token=refresh-no-aud&") {
            // What oidc-provider answers for a refresh token: no aud, no token_type.
        } else if body.starts_with("token=refresh-typed&") {
            a["aud"] = json!(AUD);
            a["token_type"] = json!("refresh_token");
        } else if body.starts_with("token=other-aud&") {
            a["aud"] = json!("https://other.example");
        } else if body.starts_with("token=access&") {
            a["aud"] = json!([AUD]);
            a["token_type"] = json!("Bearer");
        } else {
            a = json!({"active": false});
        }
        (200, a.to_string())
    });
    let addr = https_endpoint(handler).await;
    let secret = tempfile::tempdir().unwrap();
    std::fs::write(secret.path().join("secret"), "s3cret\n").unwrap();
    let mut o = LabOptions::new(POLICY);
    o.issuer().introspection = Some(FileIntrospection {
        url: Some(format!("https://localhost:{}/introspect", addr.port())),
        ca: vec![certs().join("ca.pem").display().to_string()],
        client_id: Some("rs-client".into()),
        client_secret_file: Some(secret.path().join("secret").display().to_string()),
        cache_ttl: Some(dur("60s")),
        ..FileIntrospection::default()
    });
    let lab = Lab::start(o).await;
    let get = |t: &str| Req::get("/accounts").bearer(t);
    let cases = vec![
        case(
            "R12",
            "a refresh token: active, no aud, no token_type",
            get("refresh-no-aud"),
            refused(401, "token.audience"),
        ),
        case(
            "R12",
            "token_type refresh_token",
            get("refresh-typed"),
            refused(401, "token.not_access_token"),
        ),
        case(
            "R12",
            "another resource server's token",
            get("other-aud"),
            refused(401, "token.audience"),
        ),
        case(
            "R12",
            "an access token for us",
            get("access"),
            Expect::Allowed,
        ),
    ];
    run(&lab, cases).await;
}

/// The route's declared-length limit is checked before the token is verified (413, not 401).
#[tokio::test]
async fn rx_a_declared_body_over_the_limit_is_refused_before_any_crypto() {
    let lab = lab().await;
    let big = vec![b'x'; 8 * 1024];
    let cases = vec![case(
        "Rx",
        "8 KiB declared on a 4 KiB route with a garbage token",
        Req::post("/consents", &big).bearer("not-a-token"),
        refused(413, "http.body_too_large"),
    )];
    run(&lab, cases).await;
}

/// `WWW-Authenticate: DPoP algs=...` names what `dpop.algorithms` allows.
#[tokio::test]
async fn rx_dpop_challenges_name_the_configured_algorithms() {
    let mut o = LabOptions::new(POLICY);
    o.config.dpop.algorithms = Some(vec!["ES256".into()]);
    let lab = Lab::start(o).await;
    let cases = vec![case(
        "Rx",
        "no credentials",
        Req::get("/accounts"),
        refused(401, "token.missing"),
    )
    .check(|o| match o.headers.get("www-authenticate") {
        Some(v) if v == "Bearer, DPoP algs=\"ES256\"" => Ok(()),
        other => Err(format!("challenge {other:?}")),
    })];
    run(&lab, cases).await;
}

/// `audit report` counts a scope as used when a route required it of a request.
#[tokio::test]
async fn rx_the_audit_record_names_the_scopes_a_request_used() {
    let lab = lab().await;
    let t = lab.token(json!({"scope": "accounts payments balances"}));
    let body = br#"{"Data":{"Amount":"1.00"}}"#;
    for r in [
        Req::get("/accounts").bearer(&t),
        Req::get("/bearer/accounts").bearer(&lab.token(json!({"scope": "balances", "cnf": null}))),
        Req::post("/payments", body)
            .bearer(&t)
            .header("x-idempotency-key", "k-scopes"),
    ] {
        let id = uuid::Uuid::new_v4().to_string();
        let a = send(&lab.p, &r, &id).await.unwrap();
        assert!(a.status.is_success(), "{} {}", a.status, r.path);
        let rec = lab.p.audit_of(&id).await;
        let want = match r.path.as_str() {
            "/accounts" => json!(["accounts"]),
            "/bearer/accounts" => json!(["balances"]),
            _ => json!(["payments"]),
        };
        assert_eq!(rec["scopes_required"], want, "{}", r.path);
    }
    // The report counts every scope these requests needed as used (it listed them all as
    // unused while records carried no `scopes_required`).
    let log = std::fs::read(lab.p.dir.path().join("audit.log")).unwrap();
    let report = portcullis_audit::report::build(&[&log], None);
    let used: std::collections::BTreeSet<String> = report
        .clients
        .iter()
        .flat_map(|c| c.scopes_used.iter().cloned())
        .collect();
    for scope in ["accounts", "payments", "balances"] {
        assert!(used.contains(scope), "{scope} not used: {report:?}");
    }
    let tpp1 = report
        .clients
        .iter()
        .find(|c| c.scopes_granted.contains("payments"))
        .unwrap();
    assert!(tpp1.scopes_unused.is_empty(), "{tpp1:?}");
}

/// An AS-issued consent id is one path segment of the consent lookup: an id that could leave it
/// (`..`, `/`, `?`, `#`) is never looked up, and the consent is not found.
#[tokio::test]
async fn rx_a_consent_id_cannot_steer_the_consent_lookup() {
    let asked: Arc<std::sync::Mutex<Vec<String>>> = Arc::default();
    let seen = Arc::clone(&asked);
    let handler: Handler = Arc::new(move |parts: &http::request::Parts, _: &[u8]| {
        let pq = parts.uri.path_and_query().map(|p| p.to_string());
        seen.lock().unwrap().push(pq.unwrap_or_default());
        (404, "{}".into())
    });
    let addr = https_endpoint(handler).await;
    let policy = "group: c\nupstream: bank\nroutes:\n  - id: balances\n    method: GET\n    path: /balances\n    auth: {profile: fapi2}\n    consent: {claim: openbanking_intent_id, permissions: [ReadBalances]}\n";
    let mut o = LabOptions::new(policy);
    o.config.consent = Some(FileConsentSource {
        url: Some(format!("https://localhost:{}/consents/{{id}}", addr.port())),
        ca: vec![certs().join("ca.pem").display().to_string()],
        ..FileConsentSource::default()
    });
    let lab = Lab::start(o).await;
    let cases = ["..", ".", "../admin?x=1#f", "a/b"]
        .into_iter()
        .map(|id| {
            let t = lab.token(json!({ "openbanking_intent_id": id }));
            case(
                "Rx",
                format!("consent id {id:?}"),
                Req::get("/balances").bearer(&t),
                refused(403, "authz.consent_not_found"),
            )
        })
        .collect();
    run(&lab, cases).await;
    assert!(
        asked.lock().unwrap().is_empty(),
        "{:?}",
        asked.lock().unwrap()
    );
    // An ordinary id is looked up as its own segment.
    let t = lab.token(json!({"openbanking_intent_id": "pdc-1.a"}));
    let a = send(&lab.p, &Req::get("/balances").bearer(&t), "x")
        .await
        .unwrap();
    assert_eq!(a.status, 403);
    assert_eq!(asked.lock().unwrap().as_slice(), ["/consents/pdc-1.a"]);
}

// --- a client that leaves ------------------------------------------------------------------

/// A proxy in front of a payment upstream that takes 400 ms, with idempotency required.
async fn slow_payments() -> (Proxy, Upstream) {
    let up = Upstream::start(Behaviour::DelayCreated(Duration::from_millis(400))).await;
    let mut o = Options::new(up.addr);
    o.policy = r#"
group: leave
upstream: bank
routes:
  - id: payments.create
    method: POST
    path: /payments
    idempotency: required
  - id: notes.create
    method: POST
    path: /notes
  - id: accounts.get
    method: GET
    path: /accounts/{AccountId}
  - id: statements.download
    method: GET
    path: /statements
"#
    .to_string();
    (Proxy::start(o).await, up)
}

const PAYMENT: &str = r#"{"Data":{"Amount":"10.00"}}"#;

/// A TLS connection to the proxy as tpp1, offering only `h2` or only `http/1.1`.
async fn tls(p: &Proxy, h2: bool) -> tokio_rustls::client::TlsStream<tokio::net::TcpStream> {
    p.tls(Some("tpp1"), h2).await.unwrap()
}

/// Writes an HTTP/1.1 request head (and `body`) and closes the connection after `wait`.
async fn h1_and_leave(p: &Proxy, head: &str, body: &[u8], wait: Duration) {
    let mut s = tls(p, false).await;
    s.write_all(head.as_bytes()).await.unwrap();
    s.write_all(body).await.unwrap();
    s.flush().await.unwrap();
    tokio::time::sleep(wait).await;
    drop(s);
}

fn payment_head(id: &str, key: &str, len: usize) -> String {
    format!(
        "POST /payments HTTP/1.1\r\nHost: localhost\r\nx-fapi-interaction-id: {id}\r\nx-idempotency-key: {key}\r\ncontent-type: application/json\r\ncontent-length: {len}\r\n\r\n"
    )
}

/// Sends `req` over HTTP/2 and resets the stream after `wait` (dropping the response future
/// makes hyper send RST_STREAM(CANCEL)); the connection stays open.
async fn h2_and_reset<B>(p: &Proxy, req: http::Request<B>, wait: Duration)
where
    B: hyper::body::Body<Data = Bytes> + Send + Unpin + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let io = hyper_util::rt::TokioIo::new(tls(p, true).await);
    let (mut send, conn) =
        hyper::client::conn::http2::handshake(hyper_util::rt::TokioExecutor::new(), io)
            .await
            .unwrap();
    let driver = tokio::spawn(conn);
    send.ready().await.unwrap();
    let answer = send.send_request(req);
    let _ = tokio::time::timeout(wait, answer).await;
    // Keep the connection a moment so the reset goes out before the connection ends.
    tokio::time::sleep(Duration::from_millis(100)).await;
    driver.abort();
}

/// The retry a client sends once it is back: the stored answer, not a second execution.
async fn retry_is_replayed(p: &Proxy, up: &Upstream, key: &str) {
    let (a, id) = p
        .send(
            req("POST", "/payments")
                .header("content-type", "application/json")
                .header("x-idempotency-key", key)
                .body(http_body_util::Full::new(Bytes::from(PAYMENT)))
                .unwrap(),
        )
        .await;
    assert_eq!(a.status, 201, "{}", String::from_utf8_lossy(&a.body));
    assert_eq!(a.headers["x-idempotent-replay"], "true");
    assert_eq!(up.count(), 1, "the payment reached the bank once");
    let rec = p.audit_of(&id).await;
    assert_eq!(rec["idempotency"], "replayed");
}

/// The one record of the abandoned payment: forwarded, answered by the upstream, stored, and
/// marked `client_gone`.
async fn abandoned_payment_record(p: &Proxy, id: &str) {
    let recs = p.audit_where(1, |r| r["interaction_id"] == id).await;
    assert_eq!(recs.len(), 1, "one record for {id}: {recs:?}");
    let r = &recs[0];
    assert_eq!(r["client_gone"], true, "{r}");
    assert_eq!(r["decision"], "allow", "{r}");
    assert_eq!(r["upstream_status"], 201, "{r}");
    assert_eq!(r["status"], 201, "{r}");
    assert_eq!(r["idempotency"], "stored", "{r}");
}

#[tokio::test]
async fn r01_h1_close_after_forwarding_the_payment_runs_once_and_is_recorded_once() {
    let (p, up) = slow_payments().await;
    let id = uuid::Uuid::new_v4().to_string();
    let head = payment_head(&id, "k-h1-leave", PAYMENT.len());
    h1_and_leave(&p, &head, PAYMENT.as_bytes(), Duration::from_millis(100)).await;
    // The exchange finishes without the client.
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert_eq!(up.count(), 1);
    abandoned_payment_record(&p, &id).await;
    retry_is_replayed(&p, &up, "k-h1-leave").await;
}

#[tokio::test]
async fn r01_h2_reset_after_forwarding_the_payment_runs_once_and_is_recorded_once() {
    let (p, up) = slow_payments().await;
    let id = uuid::Uuid::new_v4().to_string();
    let r = http::Request::post("https://localhost/payments")
        .header("x-fapi-interaction-id", &id)
        .header("x-idempotency-key", "k-h2-leave")
        .header("content-type", "application/json")
        .body(http_body_util::Full::new(Bytes::from(PAYMENT)))
        .unwrap();
    h2_and_reset(&p, r, Duration::from_millis(100)).await;
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert_eq!(up.count(), 1);
    abandoned_payment_record(&p, &id).await;
    retry_is_replayed(&p, &up, "k-h2-leave").await;
}

/// A client that leaves before its request is complete: nothing is forwarded, the key is not
/// reserved, and one record says why and that the client left.
#[tokio::test]
async fn r01_a_client_leaving_during_the_request_leaves_one_record_and_nothing_upstream() {
    let (p, up) = slow_payments().await;
    // HTTP/1.1: the head and half the body, then a close.
    let id1 = uuid::Uuid::new_v4().to_string();
    let head = payment_head(&id1, "k-half", PAYMENT.len());
    h1_and_leave(
        &p,
        &head,
        &PAYMENT.as_bytes()[..10],
        Duration::from_millis(100),
    )
    .await;
    // HTTP/2: the headers and no body, then RST_STREAM.
    let id2 = uuid::Uuid::new_v4().to_string();
    let (_tx, rx) = tokio::sync::mpsc::channel::<Bytes>(1);
    let body = Channel(rx);
    let r = http::Request::post("https://localhost/payments")
        .header("x-fapi-interaction-id", &id2)
        .header("x-idempotency-key", "k-none")
        .header("content-type", "application/json")
        .body(body)
        .unwrap();
    h2_and_reset(&p, r, Duration::from_millis(100)).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(up.count(), 0, "nothing reached the bank");
    for id in [&id1, &id2] {
        let recs = p
            .audit_where(1, |r| r["interaction_id"] == id.as_str())
            .await;
        assert_eq!(recs.len(), 1, "one record for {id}: {recs:?}");
        let r = &recs[0];
        assert_eq!(r["client_gone"], true, "{r}");
        assert_eq!(r["reason"], "http.body_read", "{r}");
        assert!(r.get("upstream_status").is_none(), "{r}");
    }
    // Neither key was reserved: both are new.
    for key in ["k-half", "k-none"] {
        let (a, _) = p
            .send(
                req("POST", "/payments")
                    .header("content-type", "application/json")
                    .header("x-idempotency-key", key)
                    .body(http_body_util::Full::new(Bytes::from(PAYMENT)))
                    .unwrap(),
            )
            .await;
        assert_eq!(a.status, 201);
        assert!(a.headers.get("x-idempotent-replay").is_none());
    }
}

/// A POST without idempotency is finished too (the upstream may act on it); a GET whose client
/// left is cancelled, and its record says so.
#[tokio::test]
async fn r01_unsafe_requests_finish_and_safe_ones_are_cancelled_when_the_client_leaves() {
    let (p, up) = slow_payments().await;
    let id = uuid::Uuid::new_v4().to_string();
    let head = format!(
        "POST /notes HTTP/1.1\r\nHost: localhost\r\nx-fapi-interaction-id: {id}\r\ncontent-length: 2\r\n\r\n"
    );
    h1_and_leave(&p, &head, b"{}", Duration::from_millis(100)).await;
    let recs = p
        .audit_where(1, |r| r["interaction_id"] == id.as_str())
        .await;
    assert_eq!(recs.len(), 1, "{recs:?}");
    assert_eq!(recs[0]["upstream_status"], 201, "{}", recs[0]);
    assert_eq!(recs[0]["client_gone"], true);

    let id = uuid::Uuid::new_v4().to_string();
    let head = format!(
        "GET /accounts/acc-1 HTTP/1.1\r\nHost: localhost\r\nx-fapi-interaction-id: {id}\r\n\r\n"
    );
    h1_and_leave(&p, &head, b"", Duration::from_millis(100)).await;
    let recs = p
        .audit_where(1, |r| r["interaction_id"] == id.as_str())
        .await;
    assert_eq!(recs.len(), 1, "{recs:?}");
    let r = &recs[0];
    assert_eq!(r["decision"], "cancelled", "{r}");
    assert_eq!(r["reason"], "client_gone", "{r}");
    assert_eq!(r["stage"], "upstream", "{r}");
    assert_eq!(r["status"], 499, "{r}");
    assert_eq!(r["client_gone"], true, "{r}");
    assert_eq!(up.count(), 2, "both reached the upstream");
}

/// A client that leaves while the response body streams: the record says so.
#[tokio::test]
async fn r01_a_client_leaving_during_the_response_body_is_recorded() {
    let up = Upstream::start(Behaviour::Trickle).await;
    let mut o = Options::new(up.addr);
    o.policy = "group: t\nupstream: bank\nroutes:\n  - id: statements\n    method: GET\n    path: /statements\n".into();
    let p = Proxy::start(o).await;
    for h2 in [false, true] {
        let id = uuid::Uuid::new_v4().to_string();
        if h2 {
            let r = http::Request::get("https://localhost/statements")
                .header("x-fapi-interaction-id", &id)
                .body(http_body_util::Empty::<Bytes>::new())
                .unwrap();
            // Long enough for the head, far too short for the 3 s body.
            h2_and_reset(&p, r, Duration::from_millis(300)).await;
        } else {
            let head = format!(
                "GET /statements HTTP/1.1\r\nHost: localhost\r\nx-fapi-interaction-id: {id}\r\n\r\n"
            );
            h1_and_leave(&p, &head, b"", Duration::from_millis(300)).await;
        }
        let recs = p
            .audit_where(1, |r| r["interaction_id"] == id.as_str())
            .await;
        assert_eq!(recs.len(), 1, "h2 {h2}: {recs:?}");
        let r = &recs[0];
        assert_eq!(r["status"], 200, "{r}");
        assert_eq!(r["decision"], "allow", "{r}");
        assert_eq!(r["client_gone"], true, "{r}");
    }
    // A response read in full is not marked.
    let (a, id) = p.get("/statements").await;
    assert_eq!(a.body.len(), 64 * 1024);
    let r = p.audit_of(&id).await;
    assert!(r.get("client_gone").is_none(), "{r}");
}

/// A client that leaves while a stage waits (a slow introspection endpoint): the handler is
/// dropped, and its guard writes the record as `cancelled`.
#[tokio::test]
async fn r01_a_client_leaving_while_a_stage_waits_leaves_a_cancelled_record() {
    let handler: Handler = Arc::new(|_: &http::request::Parts, _: &[u8]| {
        let a = json!({"active": true, "iss": ISS, "aud": AUD, "exp": NOW + 600,
            "client_id": "tpp-one", "scope": "accounts"});
        (200, a.to_string())
    });
    let addr = https_endpoint_after(Duration::from_millis(600), handler).await;
    let secret = tempfile::tempdir().unwrap();
    std::fs::write(secret.path().join("secret"), "s3cret\n").unwrap();
    let mut o = LabOptions::new(POLICY);
    o.issuer().introspection = Some(FileIntrospection {
        url: Some(format!("https://localhost:{}/introspect", addr.port())),
        ca: vec![certs().join("ca.pem").display().to_string()],
        client_id: Some("rs-client".into()),
        client_secret_file: Some(secret.path().join("secret").display().to_string()),
        cache_ttl: Some(dur("60s")),
        timeout: Some(dur("5s")),
        ..FileIntrospection::default()
    });
    let lab = Lab::start(o).await;
    for h2 in [false, true] {
        let id = uuid::Uuid::new_v4().to_string();
        let token = format!("opaque-{h2}");
        if h2 {
            let r = http::Request::get("https://localhost/bearer/accounts")
                .header("x-fapi-interaction-id", &id)
                .header("authorization", format!("Bearer {token}"))
                .body(http_body_util::Empty::<Bytes>::new())
                .unwrap();
            h2_and_reset(&lab.p, r, Duration::from_millis(150)).await;
        } else {
            let head = format!(
                "GET /bearer/accounts HTTP/1.1\r\nHost: localhost\r\nx-fapi-interaction-id: {id}\r\nauthorization: Bearer {token}\r\n\r\n"
            );
            h1_and_leave(&lab.p, &head, b"", Duration::from_millis(150)).await;
        }
        let recs = lab
            .p
            .audit_where(1, |r| r["interaction_id"] == id.as_str())
            .await;
        assert_eq!(recs.len(), 1, "h2 {h2}: {recs:?}");
        let r = &recs[0];
        assert_eq!(r["decision"], "cancelled", "{r}");
        assert_eq!(r["reason"], "client_gone", "{r}");
        assert_eq!(r["status"], 499, "{r}");
        assert_eq!(r["client_gone"], true, "{r}");
        assert!(r.get("stage").is_none(), "{r}");
    }
    // The introspection answers arrive later; nothing is forwarded for the abandoned requests.
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert_eq!(lab.forwarded().len(), 0);
}

// --- trailers, revocation, HTTP/2 framing ---------------------------------------------------

/// A body of one data frame and one trailer block.
struct WithTrailers(Option<Bytes>, Option<http::HeaderMap>);

impl hyper::body::Body for WithTrailers {
    type Data = Bytes;
    type Error = std::convert::Infallible;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<hyper::body::Frame<Bytes>, Self::Error>>> {
        let frame = match self.0.take() {
            Some(d) => Some(hyper::body::Frame::data(d)),
            None => self.1.take().map(hyper::body::Frame::trailers),
        };
        std::task::Poll::Ready(frame.map(Ok))
    }
}

#[tokio::test]
async fn r05_client_trailers_never_reach_an_http2_upstream() {
    let up = Upstream::start(Behaviour::Ok).await;
    let mut o = Options::new(up.addr);
    o.policy =
        "group: t\nupstream: bank\nroutes:\n  - id: notes\n    method: POST\n    path: /notes\n"
            .into();
    o.bank().http2 = true;
    let p = Proxy::start(o).await;
    for declared in [true, false] {
        let mut trailers = http::HeaderMap::new();
        for name in [
            "x-portcullis-client-id",
            "client-cert",
            "x-forwarded-for",
            "authorization",
        ] {
            trailers.insert(name, "forged".parse().unwrap());
        }
        let id = uuid::Uuid::new_v4().to_string();
        let mut b = http::Request::post("https://localhost/notes")
            .header("x-fapi-interaction-id", &id)
            .header("te", "trailers");
        if declared {
            b = b.header("content-length", "2");
        }
        let r = b
            .body(WithTrailers(
                Some(Bytes::from_static(b"{}")),
                Some(trailers),
            ))
            .unwrap();
        let io = hyper_util::rt::TokioIo::new(tls(&p, true).await);
        let (mut send, conn) =
            hyper::client::conn::http2::handshake(hyper_util::rt::TokioExecutor::new(), io)
                .await
                .unwrap();
        tokio::spawn(conn);
        send.ready().await.unwrap();
        let resp = send.send_request(r).await.unwrap();
        assert_eq!(resp.status(), 200);
        let _ = resp.into_body().collect().await;
        let seen = up.seen();
        let last = seen.last().unwrap();
        assert_eq!(&last.body[..], b"{}");
        assert!(
            last.trailers.as_ref().is_none_or(|t| t.is_empty()),
            "declared {declared}: trailers forwarded: {:?}",
            last.trailers
        );
        assert_eq!(p.audit_of(&id).await["decision"], "allow");
    }
}

/// A CRL that revokes tpp1, signed by the dev CA.
fn crl_revoking_tpp1() -> String {
    let now = time::OffsetDateTime::now_utc();
    dev_ca_crl(certs(), &["tpp1"], now + time::Duration::days(1))
}

#[tokio::test]
async fn r06_a_certificate_revoked_by_a_reloaded_crl_loses_its_open_connection() {
    let up = Upstream::start(Behaviour::Ok).await;
    let p = Proxy::start(Options::new(up.addr)).await;
    let path = "/open-banking/v3.1/aisp/accounts";
    let mut open = p.client(Some("tpp1"), false).await.unwrap();
    let get = || {
        req("GET", path)
            .body(http_body_util::Full::new(Bytes::new()))
            .unwrap()
    };
    assert_eq!(open.send(get()).await.unwrap().status, 200);
    // The CRL file now revokes tpp1 as well; reload.
    let crl = p.dir.path().join("revoking.crl");
    std::fs::write(&crl, crl_revoking_tpp1()).unwrap();
    p.edit_config(|c| c.listener.tls.crl = vec![crl.display().to_string()]);
    p.shared.reload().expect("reload");
    let before = up.count();
    let id = uuid::Uuid::new_v4().to_string();
    let mut r = get();
    r.headers_mut()
        .insert("x-fapi-interaction-id", id.parse().unwrap());
    let a = open.send(r).await.unwrap();
    assert_eq!(a.status, 401);
    assert_eq!(a.json()["reason"], "identity.client_cert_revoked");
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(up.count(), before, "nothing forwarded");
    let rec = p.audit_of(&id).await;
    assert_eq!(rec["reason"], "identity.client_cert_revoked");
    // The connection is closed after the refusal; tpp2 still works.
    assert!(open.send(get()).await.is_err() || !open.is_open());
    let (a, _) = {
        let mut c = p.client(Some("tpp2"), false).await.unwrap();
        (c.send(get()).await.unwrap(), ())
    };
    assert_eq!(a.status, 200);
}

#[tokio::test]
async fn r06_connections_older_than_max_connection_age_are_closed() {
    let up = Upstream::start(Behaviour::Ok).await;
    let mut o = Options::new(up.addr);
    o.config.listener.limits.max_connection_age = Some(dur("300ms"));
    let p = Proxy::start(o).await;
    let path = "/open-banking/v3.1/aisp/accounts";
    let get = || {
        req("GET", path)
            .body(http_body_util::Full::new(Bytes::new()))
            .unwrap()
    };
    let mut c = p.client(Some("tpp1"), false).await.unwrap();
    assert_eq!(c.send(get()).await.unwrap().status, 200);
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert!(!c.is_open(), "the connection outlived max_connection_age");
}

/// HTTP/2 DATA beyond the declared content-length: not answered 200, nothing forwarded.
#[tokio::test]
async fn rx_http2_data_beyond_content_length_is_not_answered_before_it_ends() {
    use support::h2raw::*;
    let up = Upstream::start(Behaviour::Ok).await;
    let mut o = Options::new(up.addr);
    o.policy =
        "group: t\nupstream: bank\nroutes:\n  - id: notes\n    method: POST\n    path: /notes\n"
            .into();
    let p = Proxy::start(o).await;
    let id = uuid::Uuid::new_v4().to_string();
    let conn = H2::connect(p.addr, certs(), "tpp1").await;
    let mut frames = frame(
        1,
        4,
        1,
        &request_block("POST", "/notes", &id, &[("content-length", "2")]),
    );
    frames.extend(frame(0, 0, 1, b"{}"));
    conn.send(&frames).await;
    // The declared two bytes have arrived; an answer now would precede the excess.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let early = conn.snapshot();
    assert!(
        !early.headers.contains(&1),
        "answered before the stream ended"
    );
    conn.send(&frame(0, 1, 1, b"excess")).await;
    let seen = conn
        .wait(Duration::from_secs(3), |s| {
            s.resets.contains_key(&1) || s.ended.contains(&1) || s.closed
        })
        .await;
    assert!(
        seen.resets.contains_key(&1) || !seen.headers.contains(&1),
        "the excess was answered: {seen:?}"
    );
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(up.count(), 0, "nothing forwarded");
    let recs = p
        .audit_where(1, |r| r["interaction_id"] == id.as_str())
        .await;
    assert_eq!(recs.len(), 1, "{recs:?}");
    assert_eq!(recs[0]["reason"], "http.body_read");
}
