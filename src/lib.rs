//! portcullis: a security inspection reverse proxy for financial APIs.
//!
//! A request goes through TLS (mTLS), HTTP limits, path and route checks, identity and — as the
//! later stages land — token, binding, signature, authorization and idempotency checks, in the
//! order [`pipeline`] documents. Refusals become responses in one place ([`rejection`]); every
//! request leaves one audit record ([`audit`]).

#![forbid(unsafe_code)]

pub mod audit;
pub mod cli;
pub mod client;
pub mod clock;
pub mod config;
pub mod conn;
pub mod consent;
pub mod demo;
#[doc(hidden)]
pub mod fuzzing;
pub mod httpsig;
pub mod introspect;
pub mod jose;
pub mod linger;
pub mod loadgen;
pub mod mockbank;
#[cfg(feature = "otlp")]
pub mod otlp;
pub mod path;
pub mod pipeline;
pub mod pki;
pub mod policy;
pub mod proxy;
pub mod rejection;
pub mod reload;
pub mod runtime;
pub mod server;
pub mod signature;
pub mod state;
pub mod telemetry;
pub mod tls;
pub mod tokentool;
pub mod upstream;
