//! portcullis: a security inspection reverse proxy for financial APIs.
//!
//! A request goes through TLS (mTLS), HTTP limits, path and route checks, identity, rate limits,
//! token, sender binding, request signature, authorization and idempotency, in the order
//! [`pipeline`] documents. Refusals become responses in one place ([`rejection`]); every request
//! leaves one audit record.

pub mod config;
pub mod conn;
pub mod linger;
#[cfg(feature = "otlp")]
pub mod otlp;
pub mod pipeline;
pub mod proxy;
mod record;

pub mod reload;
pub mod response_signing;
pub mod runtime;
pub mod server;
pub mod telemetry;
pub mod tls;
pub mod upstream;
pub mod worker;
