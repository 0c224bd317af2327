//! Idempotency keys (issue #6): the route setting; the store follows.

/// A route's `idempotency:` setting.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum IdempotencyMode {
    /// A key is required (400 without one).
    Required,
    /// A key is honoured when sent.
    Optional,
    /// Keys are ignored (default).
    #[default]
    None,
}

impl IdempotencyMode {
    pub fn parse(s: &str) -> Option<IdempotencyMode> {
        match s {
            "required" => Some(IdempotencyMode::Required),
            "optional" => Some(IdempotencyMode::Optional),
            "none" => Some(IdempotencyMode::None),
            _ => None,
        }
    }
}
