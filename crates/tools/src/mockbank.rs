//! A built-in mock bank API (plain HTTP on loopback) for the demo and the load comparison:
//! accounts, balances, transactions, domestic payment consents and payments in OBIE-like JSON.
//! It is a stand-in upstream, not part of the security boundary.
//!
//! With [`Options::record`] it appends one line per request it received to a file — method,
//! path, the SHA-256 of the body (hex), the `x-idempotency-key` (`-` without one), the `Host`
//! it was asked for (the HTTP/2 authority; `-` without one) — written
//! with one `write` before the answer, so a test that kills the process with SIGKILL still
//! reads every request it took; with [`Options::delay`] it waits that long before answering
//! (requests in flight when it is killed).

use std::convert::Infallible;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use serde_json::{json, Value};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

const BASE: &str = "/open-banking/v3.1";

/// Payments remembered for their status reads (the oldest forgotten beyond this).
const MAX_PAYMENTS: usize = 100_000;

/// What the mock bank remembers: an id counter and each payment's consent, so a payment's
/// status answer names its consent as a real bank's does.
#[derive(Default)]
struct Bank {
    ids: AtomicU64,
    payments: std::sync::Mutex<std::collections::HashMap<String, String>>,
    options: Options,
}

/// How the mock bank behaves beyond its API.
#[derive(Debug, Default)]
pub struct Options {
    /// Where each request received is recorded (see the module doc).
    pub record: Option<std::fs::File>,
    /// How long each answer waits.
    pub delay: std::time::Duration,
}

/// Serves the mock bank on `listener` until `shutdown` is cancelled.
pub async fn serve(listener: TcpListener, shutdown: CancellationToken) {
    serve_with(vec![listener], shutdown, Options::default()).await
}

/// Serves one mock bank (one id counter, one record) on every listener until `shutdown`.
pub async fn serve_with(
    listeners: Vec<TcpListener>,
    shutdown: CancellationToken,
    options: Options,
) {
    let bank = Arc::new(Bank {
        ids: AtomicU64::new(1000),
        options,
        ..Bank::default()
    });
    let mut all = tokio::task::JoinSet::new();
    for l in listeners {
        all.spawn(accept(l, Arc::clone(&bank), shutdown.clone()));
    }
    while all.join_next().await.is_some() {}
}

async fn accept(listener: TcpListener, bank: Arc<Bank>, shutdown: CancellationToken) {
    loop {
        let (tcp, _) = tokio::select! {
            r = listener.accept() => match r { Ok(x) => x, Err(_) => continue },
            _ = shutdown.cancelled() => return,
        };
        let _ = tcp.set_nodelay(true);
        let bank = Arc::clone(&bank);
        tokio::spawn(async move {
            let svc = service_fn(move |req| handle(req, Arc::clone(&bank)));
            let mut b = auto::Builder::new(TokioExecutor::new());
            b.http1().timer(TokioTimer::new());
            let _ = b.serve_connection(TokioIo::new(tcp), svc).await;
        });
    }
}

/// `bytes` as one word of a record line: visible ASCII, anything else as `_`.
fn printable(bytes: &[u8]) -> String {
    bytes
        .iter()
        .map(|&b| if b.is_ascii_graphic() { b as char } else { '_' })
        .collect()
}

fn reply(status: StatusCode, body: Value) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from(body.to_string())));
    *r.status_mut() = status;
    r.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/json"),
    );
    r
}

fn links(path: &str) -> Value {
    json!({ "Links": { "Self": format!("https://api.bank.example{path}") }, "Meta": { "TotalPages": 1 } })
}

fn account(id: &str) -> Value {
    json!({
        "AccountId": id, "Currency": "GBP", "AccountType": "Personal", "AccountSubType": "CurrentAccount",
        "Nickname": format!("Account {id}"),
        "Account": [{ "SchemeName": "UK.OBIE.SortCodeAccountNumber", "Identification": "80200110203345", "Name": "Mr Kevin" }]
    })
}

fn merge(mut a: Value, b: Value) -> Value {
    if let (Some(a), Value::Object(b)) = (a.as_object_mut(), b) {
        a.extend(b);
    }
    a
}

async fn handle(
    req: Request<Incoming>,
    bank: Arc<Bank>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let path = req.uri().path().to_string();
    let method = req.method().clone();
    let key = req
        .headers()
        .get("x-idempotency-key")
        .map(|v| printable(v.as_bytes()));
    // Recorded so a test can see which name a proxy put on a request it sent to an address
    // (a DNS upstream names the service, not the address it connected to).
    let host = req
        .headers()
        .get(http::header::HOST)
        .map(|v| v.as_bytes().to_vec())
        .or_else(|| {
            req.uri()
                .authority()
                .map(|a| a.as_str().as_bytes().to_vec())
        })
        .map(|h| printable(&h));
    let body = match Limited::new(req.into_body(), 1024 * 1024).collect().await {
        Ok(c) => c.to_bytes(),
        Err(_) => return Ok(reply(StatusCode::BAD_REQUEST, json!({"Code": "400"}))),
    };
    if let Some(f) = &bank.options.record {
        let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, &body);
        let hash: String = digest.as_ref().iter().map(|b| format!("{b:02x}")).collect();
        let line = format!(
            "{method} {} {hash} {} {}\n",
            printable(path.as_bytes()),
            key.as_deref().unwrap_or("-"),
            host.as_deref().unwrap_or("-")
        );
        use std::io::Write as _;
        // One write per line: the kernel has it before the answer leaves, whatever kills
        // the process afterwards.
        let mut f: &std::fs::File = f;
        let _ = f.write_all(line.as_bytes());
    }
    if !bank.options.delay.is_zero() {
        tokio::time::sleep(bank.options.delay).await;
    }
    let Some(rest) = path.strip_prefix(BASE) else {
        return Ok(reply(StatusCode::NOT_FOUND, json!({"Code": "404"})));
    };
    let segs: Vec<&str> = rest.trim_start_matches('/').split('/').collect();
    let next_id = |prefix: &str| format!("{prefix}-{}", bank.ids.fetch_add(1, Ordering::Relaxed));
    let resp = match (method, segs.as_slice()) {
        (Method::GET, ["aisp", "accounts"]) => reply(
            StatusCode::OK,
            merge(
                json!({"Data": {"Account": [account("acc-1"), account("acc-2")]}}),
                links(&path),
            ),
        ),
        (Method::GET, ["aisp", "accounts", id]) => reply(
            StatusCode::OK,
            merge(json!({"Data": {"Account": [account(id)]}}), links(&path)),
        ),
        (Method::GET, ["aisp", "accounts", id, "balances"]) => reply(
            StatusCode::OK,
            merge(
                json!({"Data": {"Balance": [{
                    "AccountId": id, "CreditDebitIndicator": "Credit", "Type": "InterimAvailable",
                    "DateTime": "2026-11-22T09:00:00+00:00",
                    "Amount": {"Amount": "1230.45", "Currency": "GBP"}
                }]}}),
                links(&path),
            ),
        ),
        (Method::GET, ["aisp", "accounts", id, "transactions"]) => reply(
            StatusCode::OK,
            merge(
                json!({"Data": {"Transaction": [
                    {"AccountId": id, "TransactionId": "tx-1", "CreditDebitIndicator": "Debit", "Status": "Booked",
                     "BookingDateTime": "2026-11-20T10:00:00+00:00", "Amount": {"Amount": "10.50", "Currency": "GBP"},
                     "TransactionInformation": "Coffee"},
                    {"AccountId": id, "TransactionId": "tx-2", "CreditDebitIndicator": "Credit", "Status": "Booked",
                     "BookingDateTime": "2026-11-21T08:00:00+00:00", "Amount": {"Amount": "2500.00", "Currency": "GBP"},
                     "TransactionInformation": "Salary"}
                ]}}),
                links(&path),
            ),
        ),
        (Method::POST, ["pisp", "domestic-payment-consents"]) => {
            let initiation = serde_json::from_slice::<Value>(&body)
                .ok()
                .and_then(|v| v.pointer("/Data/Initiation").cloned())
                .unwrap_or(Value::Null);
            reply(
                StatusCode::CREATED,
                merge(
                    json!({"Data": {"ConsentId": next_id("pdc"), "Status": "AwaitingAuthorisation",
                        "CreationDateTime": "2026-11-22T09:00:00+00:00", "Initiation": initiation},
                        "Risk": {}}),
                    links(&path),
                ),
            )
        }
        (Method::GET, ["pisp", "domestic-payment-consents", id]) => reply(
            StatusCode::OK,
            merge(
                json!({"Data": {"ConsentId": id, "Status": "Authorised"}, "Risk": {}}),
                links(&path),
            ),
        ),
        (Method::POST, ["pisp", "domestic-payments"]) => {
            let consent = serde_json::from_slice::<Value>(&body)
                .ok()
                .and_then(|v| v.pointer("/Data/ConsentId").cloned())
                .unwrap_or(Value::Null);
            let id = next_id("dp");
            if let (Some(c), Ok(mut m)) = (consent.as_str(), bank.payments.lock()) {
                if m.len() >= MAX_PAYMENTS {
                    m.clear();
                }
                m.insert(id.clone(), c.to_string());
            }
            reply(
                StatusCode::CREATED,
                merge(
                    json!({"Data": {"DomesticPaymentId": id, "ConsentId": consent,
                        "Status": "AcceptedSettlementInProcess",
                        "CreationDateTime": "2026-11-22T09:00:00+00:00"}}),
                    links(&path),
                ),
            )
        }
        (Method::GET, ["pisp", "domestic-payments", id]) => {
            let consent = bank.payments.lock().ok().and_then(|m| m.get(*id).cloned());
            match consent {
                Some(c) => reply(
                    StatusCode::OK,
                    merge(
                        json!({"Data": {"DomesticPaymentId": id, "ConsentId": c,
                            "Status": "AcceptedSettlementCompleted"}}),
                        links(&path),
                    ),
                ),
                None => reply(
                    StatusCode::NOT_FOUND,
                    json!({"Code": "404", "Message": "Not found"}),
                ),
            }
        }
        // OBIE's payment-details answer names no consent; this bank adds the payment's
        // `ConsentId` to it, as a bank behind the shipped policy must, so that the proxy can
        // tell whose payment it is.
        (Method::GET, ["pisp", "domestic-payments", id, "payment-details"]) => {
            let consent = bank.payments.lock().ok().and_then(|m| m.get(*id).cloned());
            match consent {
                Some(c) => reply(
                    StatusCode::OK,
                    merge(
                        json!({"Data": {"ConsentId": c, "PaymentStatus": [{
                            "PaymentTransactionId": format!("{id}-tx"),
                            "Status": "AcceptedSettlementCompleted",
                            "StatusUpdateDateTime": "2026-11-22T09:00:05+00:00"
                        }]}}),
                        links(&path),
                    ),
                ),
                None => reply(
                    StatusCode::NOT_FOUND,
                    json!({"Code": "404", "Message": "Not found"}),
                ),
            }
        }
        _ => reply(
            StatusCode::NOT_FOUND,
            json!({"Code": "404", "Message": "Not found"}),
        ),
    };
    Ok(resp)
}
