//! DPoP server nonces (RFC 9449 §8-9), stateless: a nonce is a time bucket and an HMAC of it
//! under a server secret, so any instance sharing the secret accepts it and nothing is stored.
//! The current nonce changes every half lifetime; a nonce is accepted for one lifetime.

use aws_lc_rs::hmac;

use portcullis_crypto::jose::{b64url, b64url_decode};

pub struct NonceIssuer {
    key: hmac::Key,
    lifetime: i64,
}

impl NonceIssuer {
    /// `secret`: shared by a fleet (from the config) or random per process.
    pub fn new(secret: &[u8], lifetime_secs: i64) -> NonceIssuer {
        NonceIssuer {
            key: hmac::Key::new(hmac::HMAC_SHA256, secret),
            lifetime: lifetime_secs.max(2),
        }
    }

    /// A process-local issuer with a random secret.
    pub fn random(lifetime_secs: i64) -> NonceIssuer {
        let mut secret = [0u8; 32];
        let _ = aws_lc_rs::rand::fill(&mut secret);
        NonceIssuer::new(&secret, lifetime_secs)
    }

    fn make(&self, bucket: i64) -> String {
        let tag = hmac::sign(&self.key, &bucket.to_be_bytes());
        let mut raw = bucket.to_be_bytes().to_vec();
        raw.extend_from_slice(&tag.as_ref()[..16]);
        b64url(&raw)
    }

    /// The nonce to hand out now.
    pub fn current(&self, now: i64) -> String {
        let step = self.lifetime / 2;
        self.make(now - now.rem_euclid(step))
    }

    /// Whether `nonce` is one we issued and is still within its lifetime.
    pub fn is_valid(&self, nonce: &str, now: i64) -> bool {
        let Some(raw) = b64url_decode(nonce).filter(|r| r.len() == 24) else {
            return false;
        };
        let mut b = [0u8; 8];
        b.copy_from_slice(&raw[..8]);
        let bucket = i64::from_be_bytes(b);
        if bucket > now || bucket + self.lifetime < now {
            return false;
        }
        // The tag is truncated to 16 bytes; compare it in constant time.
        let tag = hmac::sign(&self.key, &bucket.to_be_bytes());
        aws_lc_rs::constant_time::verify_slices_are_equal(&tag.as_ref()[..16], &raw[8..]).is_ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nonces_rotate_and_expire_and_cannot_be_forged() {
        let n = NonceIssuer::new(b"secret", 300);
        let a = n.current(1000);
        assert!(n.is_valid(&a, 1000));
        assert!(n.is_valid(&a, 1100));
        assert!(!n.is_valid(&a, 1000 + 400), "older than a lifetime");
        assert_ne!(a, n.current(1000 + 150), "rotates every half lifetime");
        let other = NonceIssuer::new(b"other", 300);
        assert!(!other.is_valid(&a, 1000), "another server's nonce");
        assert!(!n.is_valid("AAAA", 1000));
        assert!(!n.is_valid(&format!("{a}x"), 1000));
        // A future bucket is refused.
        let future = n.current(5000);
        assert!(!n.is_valid(&future, 1000));
    }
}
