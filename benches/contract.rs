//! Criterion bench: checking a realistic OBIE domestic payment consent (OBWriteDomesticConsent4,
//! v4.0.0) against its operation's compiled contract, strict — from the buffered bytes, as the
//! proxy does: strict parse (duplicates refused), the case-twin and depth walk, the headers and
//! the JSON Schema check. Target: 20 µs. Also what a load costs: reading the 0.5 MB description
//! and compiling the operation.

use std::hint::black_box;
use std::path::PathBuf;
use std::sync::Arc;

use criterion::{criterion_group, criterion_main, Criterion};
use portcullis_policy::contract::{ContractMode, Request, Spec};

const CONSENT: &str = r#"{"Data":{"ReadRefundAccount":"No","Initiation":{"InstructionIdentification":"ACME412","EndToEndIdentification":"FRESCO.21302.GFX.20","LocalInstrument":"UK.OBIE.FPS","InstructedAmount":{"Amount":"165.88","Currency":"GBP"},"CreditorAccount":{"SchemeName":"UK.OBIE.SortCodeAccountNumber","Identification":"08080021325698","Name":"ACME Inc","SecondaryIdentification":"0002"},"RemittanceInformation":{"Unstructured":["Internal ops code 5120101"]}},"Authorisation":{"AuthorisationType":"Single","CompletionDateTime":"2027-01-01T10:00:00+00:00"}},"Risk":{"PaymentContextCode":"TransferToThirdParty","MerchantCategoryCode":"5967","MerchantCustomerIdentification":"053598653254","DeliveryAddress":{"AddressLine":["Flat 7","Acacia Lodge"],"TownName":"Sparsholt","Country":"UK"}}}"#;

fn bench(c: &mut Criterion) {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/vectors/openapi/obie-payment-initiation-v4.0.0.yaml");
    let spec = Arc::new(Spec::read(&path).expect("the description"));
    let contract = spec
        .compile(
            &path,
            "CreateDomesticPaymentConsents",
            ContractMode::Enforce,
            true,
        )
        .expect("the contract");
    let mut headers = http::HeaderMap::new();
    headers.insert("x-idempotency-key", "a1b2c3d4".parse().unwrap());
    headers.insert("x-jws-signature", "header..signature".parse().unwrap());
    headers.insert(
        "x-fapi-auth-date",
        "Sun, 10 Sep 2017 19:43:31 GMT".parse().unwrap(),
    );
    let check = |body: &[u8]| {
        contract.check(&Request {
            params: &[],
            query: None,
            headers: &headers,
            body: Some(body),
        })
    };
    assert_eq!(check(CONSENT.as_bytes()), Ok(()));
    let mut g = c.benchmark_group("contract");
    g.bench_function("obie_domestic_payment_consent_strict", |b| {
        b.iter(|| check(black_box(CONSENT.as_bytes())))
    });
    let bad = CONSENT.replace("\"GBP\"", "\"gbp\"");
    assert!(check(bad.as_bytes()).is_err());
    g.bench_function("obie_domestic_payment_consent_refused", |b| {
        b.iter(|| check(black_box(bad.as_bytes())))
    });
    g.finish();
    // Loading: the half-megabyte description read, and the operation compiled, once per load.
    let text = std::fs::read_to_string(&path).unwrap();
    let mut g = c.benchmark_group("contract_load");
    g.sample_size(10);
    g.bench_function("obie_payment_description_read", |b| {
        b.iter(|| Spec::parse(black_box(&text)).unwrap())
    });
    g.bench_function("obie_domestic_payment_consent_compile", |b| {
        b.iter(|| {
            spec.compile(
                &path,
                "CreateDomesticPaymentConsents",
                ContractMode::Enforce,
                true,
            )
            .unwrap()
        })
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
