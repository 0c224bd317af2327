//! Where keys and consent records come from: JWKS (a file or an HTTPS endpoint, refreshed),
//! authorization server metadata (RFC 8414), RFC 7662 token introspection, revocation of client certificates (CRL URLs, OCSP, the CRLs
//! certificates name), consent records (a file or an HTTPS endpoint), and the
//! proxy's own client authentication to such endpoints (bearer token files, client credentials). The I/O of
//! the proxy's checks lives here; the checks themselves are pure (`portcullis-crypto`,
//! `portcullis-policy`).

pub mod client_auth;
pub mod clientkeys;
pub mod consent;
pub mod crl;
pub mod discovery;
pub mod https;
pub mod introspect;
pub mod keys;
pub mod leafcrl;
pub mod ocsp;
pub mod revocation;
