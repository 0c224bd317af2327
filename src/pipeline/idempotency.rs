//! Stage 11: idempotency keys on routes that ask for them (see [`crate::state::idempotency`]).

/// Why a request was refused by the idempotency stage.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IdempotencyError {
    /// The route requires a key and none was sent.
    KeyMissing,
    /// The key is empty, too long, not printable ASCII, or sent twice.
    KeyInvalid,
    /// A request with this key is still being processed.
    InFlight,
    /// The key was used with another method, path or body.
    Mismatch,
    /// The store cannot be reached: fail closed.
    Unavailable,
}
