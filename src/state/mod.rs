//! Shared request state: the DPoP `jti` replay store (and, with issue #6, rate limits, nonces
//! and idempotency keys), behind interfaces with an in-memory backend; Redis backs the same
//! interfaces for a fleet.

pub mod idempotency;
pub mod nonce;
pub mod ratelimit;
pub mod replay;
