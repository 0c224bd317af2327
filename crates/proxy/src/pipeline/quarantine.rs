//! Quarantine: a client a detector quarantined (`portcullis-detect`) is refused as soon as it is
//! known — by peer address before anything is verified, by certificate thumbprint once the
//! identity stage has run, by client id once the token has — until the quarantine ends or an
//! operator lifts it from the admin listener.

use portcullis_detect::{Detector, Subject};

/// The client is quarantined; seconds until it ends (`Retry-After`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Quarantined {
    pub retry_after_s: u64,
}

impl portcullis_base::variants::Variants for Quarantined {
    fn variants() -> Vec<Self> {
        vec![Quarantined { retry_after_s: 1 }]
    }
}

/// Refuses `subject` when it is quarantined now. Costs one atomic load while nobody is.
pub(crate) fn check(detect: &Detector, subject: Subject<'_>, now: i64) -> Result<(), Quarantined> {
    match detect.quarantined(&subject, now) {
        // At least 1 s: `Retry-After: 0` would invite an immediate retry.
        Some(left) => Err(Quarantined {
            retry_after_s: left.max(1),
        }),
        None => Ok(()),
    }
}
