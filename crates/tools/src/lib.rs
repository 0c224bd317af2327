//! Tools around the proxy, not on its request path: dev certificates, the mock bank API, the
//! demo, the token and signing dev tools, `policy test`, `audit` commands, and a small HTTPS
//! client for the demo, the load generator and tests.

pub mod auditcmd;
pub mod client;
pub mod demo;
pub mod devcerts;
pub mod mockbank;
pub mod openapi;
pub mod policytest;
pub mod sign;
pub mod tokentool;

/// Certificate evidence (`portcullis_crypto::pki`) checked on certificates made like the dev ones.
#[cfg(test)]
mod pki_tests;
