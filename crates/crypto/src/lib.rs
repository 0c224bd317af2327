//! Pure crypto for portcullis: JOSE (access tokens, DPoP proofs, OBIE detached JWS), RFC 9421
//! HTTP message signatures, and the evidence a client certificate carries. No I/O: keys come
//! in as values, and fetching them is `portcullis-sources`' job.

pub mod httpsig;
pub mod jose;
pub mod pki;
