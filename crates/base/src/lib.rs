//! The base every portcullis crate builds on: the body type, time as a parameter, bounded text,
//! config problems and durations, strict JSON, the canonical path check and metric primitives.
//! Nothing here does I/O or knows about a request's stages.

#![forbid(unsafe_code)]

pub mod body;
pub mod clock;
pub mod duration;
pub mod html;
pub mod json;
pub mod metrics;
pub mod path;
pub mod problems;
pub mod text;
pub mod variants;
