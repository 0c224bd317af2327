//! Audit: exactly one JSON-lines record per request, and one per failed TLS handshake.
//!
//! The request path only fills a record and enqueues it; a dedicated writer thread behind a
//! bounded queue assigns the sequence number, serializes and writes in batches. When the queue
//! is full the request blocks (no record is ever dropped). Records never carry credentials or
//! bodies; attacker-controlled strings are truncated with a marker, and JSON escaping keeps
//! every record one line.
//!
//! (The tamper-evident hash chain, signed checkpoints, rotation and `audit verify` are issue #7.)

use std::io::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use serde::Serialize;

use crate::config::AuditSink;

/// Longest attacker-controlled string kept in a record.
const MAX_FIELD: usize = 512;
const TRUNCATED: &str = "...[truncated]";

/// Truncates `s` at a char boundary to `MAX_FIELD` bytes, marking the cut.
pub fn bounded(s: &str) -> String {
    if s.len() <= MAX_FIELD {
        return s.to_string();
    }
    let mut end = MAX_FIELD;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}{TRUNCATED}", &s[..end])
}

/// One request's record; filled by the outer handler as the request moves through the stages.
#[derive(Clone, Debug, Default, Serialize)]
pub struct RequestRecord {
    pub interaction_id: String,
    pub conn_id: u64,
    pub peer: String,
    pub tls_version: &'static str,
    pub cipher: &'static str,
    pub http_version: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub client_cert_thumbprint: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub client_subject: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub client_org_id: Option<String>,
    pub method: String,
    /// The request path (no query: query values may be sensitive), bounded.
    pub path: String,
    pub has_query: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub route_id: Option<String>,
    pub decision: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stage: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<&'static str>,
    pub status: u16,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub upstream_status: Option<u16>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub upstream_latency_us: Option<u64>,
    pub total_latency_us: u64,
    pub policy_version: String,
}

/// A failed handshake: there is no request, only the connection and a bounded category.
#[derive(Clone, Debug, Serialize)]
pub struct HandshakeRecord {
    pub peer: String,
    pub failure: &'static str,
}

#[derive(Debug, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Record {
    Request(Box<RequestRecord>),
    TlsHandshake(HandshakeRecord),
}

#[derive(Serialize)]
struct Line<'a> {
    seq: u64,
    time: String,
    #[serde(flatten)]
    record: &'a Record,
}

/// Handle for enqueueing records; cheap to clone.
#[derive(Clone)]
pub struct AuditLog {
    tx: Option<crossbeam_channel::Sender<Record>>,
    written: Arc<AtomicU64>,
}

impl AuditLog {
    /// Starts the writer thread for `sink`. Fails if the file cannot be opened.
    pub fn start(sink: &AuditSink, capacity: usize) -> std::io::Result<AuditLog> {
        let written = Arc::new(AtomicU64::new(0));
        let out: Box<dyn Write + Send> = match sink {
            AuditSink::None => {
                return Ok(AuditLog { tx: None, written });
            }
            AuditSink::Stdout => Box::new(std::io::stdout()),
            AuditSink::File(p) => Box::new(
                std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(p)?,
            ),
        };
        let (tx, rx) = crossbeam_channel::bounded::<Record>(capacity.max(1));
        let counter = Arc::clone(&written);
        std::thread::Builder::new()
            .name("portcullis-audit".into())
            .spawn(move || writer(rx, out, counter))?;
        Ok(AuditLog {
            tx: Some(tx),
            written,
        })
    }

    /// A log that discards everything (for `check` and tests of other parts).
    pub fn disabled() -> AuditLog {
        AuditLog {
            tx: None,
            written: Arc::new(AtomicU64::new(0)),
        }
    }

    /// Enqueues a record, waiting for room when the queue is full.
    pub fn emit(&self, record: Record) {
        let Some(tx) = &self.tx else { return };
        match tx.try_send(record) {
            Ok(()) => {}
            Err(crossbeam_channel::TrySendError::Full(r)) => {
                let block = || {
                    let _ = tx.send(r);
                };
                match tokio::runtime::Handle::try_current().map(|h| h.runtime_flavor()) {
                    Ok(tokio::runtime::RuntimeFlavor::MultiThread) => {
                        tokio::task::block_in_place(block)
                    }
                    _ => block(),
                }
            }
            Err(crossbeam_channel::TrySendError::Disconnected(_)) => {
                tracing::error!(failure = "audit_writer_gone", "audit record lost");
            }
        }
    }

    /// Records written so far.
    pub fn written(&self) -> u64 {
        self.written.load(Ordering::Relaxed)
    }
}

fn writer(
    rx: crossbeam_channel::Receiver<Record>,
    out: Box<dyn Write + Send>,
    written: Arc<AtomicU64>,
) {
    let mut out = std::io::BufWriter::with_capacity(64 * 1024, out);
    let mut seq: u64 = 0;
    let mut buf = Vec::with_capacity(1024);
    while let Ok(first) = rx.recv() {
        let mut batch = 0u64;
        let mut next = Some(first);
        while let Some(record) = next.take() {
            seq += 1;
            buf.clear();
            let line = Line {
                seq,
                time: now_rfc3339(),
                record: &record,
            };
            if serde_json::to_writer(&mut buf, &line).is_ok() {
                buf.push(b'\n');
                if let Err(e) = out.write_all(&buf) {
                    tracing::error!(failure = "audit_write", error = %e, "audit write failed");
                }
            }
            batch += 1;
            if batch < 512 {
                next = rx.try_recv().ok();
            }
        }
        if let Err(e) = out.flush() {
            tracing::error!(failure = "audit_flush", error = %e, "audit flush failed");
        }
        written.fetch_add(batch, Ordering::Relaxed);
    }
    let _ = out.flush();
}

fn now_rfc3339() -> String {
    time::OffsetDateTime::now_utc()
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_hostile_values_are_truncated_with_a_marker_on_a_char_boundary() {
        let s = "é".repeat(400);
        let b = bounded(&s);
        assert!(b.ends_with(TRUNCATED));
        assert!(b.len() <= MAX_FIELD + TRUNCATED.len());
        assert_eq!(bounded("short"), "short");
    }

    #[test]
    fn a_record_with_control_characters_stays_one_json_line() {
        let r = Record::Request(Box::new(RequestRecord {
            path: bounded("/a\r\n{\"forged\":1}\u{2028}"),
            ..RequestRecord::default()
        }));
        let line = serde_json::to_string(&Line {
            seq: 1,
            time: now_rfc3339(),
            record: &r,
        })
        .unwrap();
        assert!(!line.contains('\n') && !line.contains('\r'));
        let v: serde_json::Value = serde_json::from_str(&line).unwrap();
        assert_eq!(v["kind"], "request");
        assert_eq!(v["path"], "/a\r\n{\"forged\":1}\u{2028}");
    }
}
