//! Shared request state: the replay store (DPoP `jti`, RFC 9421 nonces), rate limits, DPoP
//! nonces and idempotency keys, behind interfaces with an in-memory backend (one instance, the
//! default); [`redis`] backs the same interfaces for a fleet, chosen by the `state:` config
//! section ([`settings`]). DPoP nonces need no store: a fleet shares `dpop.nonce_secret_file`.

pub mod idempotency;
pub mod limits;
pub mod nonce;
pub mod ratelimit;
pub mod redis;
pub mod replay;
pub mod settings;
