//! portcullis: a security inspection reverse proxy for financial APIs.
//!
//! A request goes through TLS (mTLS), HTTP limits, path and route checks, identity, rate limits,
//! token, sender binding, request signature, authorization and idempotency, in the order
//! `pipeline::run` holds them. Refusals become responses in one place (`pipeline::rejection`);
//! every request leaves one audit record, composed in one place (`record`).
//!
//! What an embedder uses: the [`config`] (load a file, or build one), [`Shared`] (the state of a
//! running proxy), [`start`] and the [`Running`] handle, reloads ([`watch`], [`on_sighup`]), the
//! [`Clock`], tracing set-up, and the refusal contract ([`Rejection`], [`all_reasons`],
//! [`all_obie_codes`]) that tools deciding requests the proxy's way need.

// The modules of the proxy; only what an embedder needs is exported below.
pub mod config;
mod conn;
mod detection;
mod linger;
#[cfg(feature = "otlp")]
mod otlp;
mod pipeline;
mod proxy;
mod record;
mod reload;
mod response_signing;
mod runtime;
mod server;
mod telemetry;
mod tls;
mod upstream;
mod worker;

pub use pipeline::rejection::{all_obie_codes, all_reasons, Rejection};
pub use portcullis_base::clock::{Clock, ManualClock, SystemClock};
pub use reload::{on_sighup, watch};
pub use runtime::Shared;
pub use server::{start, wait_for_signal, Running};
pub use telemetry::{init_check_tracing, init_tracing, Metrics};
pub use tls::{crypto_provider, install_crypto_provider};

/// Entry points for the fuzz harness and the benchmarks: functions on the request path that
/// they drive directly. Not part of the API; the shipped binary is built without it.
#[cfg(feature = "internals")]
#[doc(hidden)]
pub mod internals {
    pub use crate::pipeline::{fapi, http, route, token};
    pub use crate::telemetry::parse_traceparent;
}
