//! Audit: exactly one tamper-evident JSON line per request, and one per failed TLS handshake.
//!
//! How it works: the request path fills a [`RequestRecord`], and [`AuditLog::emit`] encodes it
//! (with the event time) on the calling thread, by hand (`json.rs`), and puts the bytes on a
//! bounded queue. One writer thread (`writer.rs`) numbers, chains and seals each record
//! (`chain.rs` defines the canonical bytes and the hash), writes in batches, fsyncs on an
//! interval, writes Ed25519-signed checkpoints every N records and/or T seconds, and rotates
//! files by size and age with retention. `portcullis audit verify` ([`verify`]) checks a log; `portcullis audit report`
//! ([`report`]) summarizes it per client.
//!
//! A connection's facts (listener, peer, TLS version and cipher, client certificate) are
//! written once per file in a `connection` record, and each request record names it
//! (`"conn":N`) instead of repeating them, unless `connection_records` is off. The writer
//! writes the connection record before the first request record of that connection in each
//! file, so every file that holds a request also holds its connection; [`resolve`] puts the
//! members back into the request for readers that want the inline form.
//!
//! Invariants:
//! - One record per request on every path, and one per failed handshake; each is exactly one
//!   valid JSON line (`json.rs` writes it by hand and escapes C0/C1 controls, U+2028/U+2029
//!   and bidi overrides).
//! - Records never carry credentials or bodies: no `Authorization`, DPoP proof, JWS signature,
//!   cookie or body content; tokens only as [`token_hash`]. Attacker-controlled strings are
//!   bounded with a marker ([`bounded`], [`bounded_bytes`]).
//! - When the queue is full, [`QueueFull`] decides: `block` (the default) never loses a
//!   record; `refuse` lets [`AuditLog::refusing`] turn new requests away with 503
//!   `audit.unavailable` while requests already admitted still block for their record; `drop`
//!   drops and counts, and the next record written carries `dropped_before`. A failing output
//!   (disk full, unwritable) stops the writer from draining the queue until a retry succeeds,
//!   so the same policy applies; `refusing` is true at once while the output fails.

mod chain;
mod json;
mod record;
pub mod report;
pub mod resolve;
pub mod verify;
mod writer;

use std::io;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use crossbeam_channel::{Sender, TrySendError};

pub use chain::{split_hash, split_sig, AuditKey, AuditPublicKey, KeyError, GENESIS};
pub use record::{
    bounded, bounded_bytes, connection_members, token_hash, unix_to_rfc3339, AlertRecord,
    ConnectionFacts, ContractRecord, ContractResponseRecord, HandshakeRecord, HttpErrorRecord,
    QuarantineLiftedRecord, RateLimitRecord, Record, RequestRecord, SignatureRecord, MAX_FIELD,
    TRUNCATED,
};
pub use writer::{rotated_files, rotated_name};

use portcullis_base::metrics::Histogram;
use writer::{ConnRef, FileOut, Msg, Output, Resume, Writer};

/// The reason code of a request refused because the audit log cannot take its record.
pub const UNAVAILABLE_REASON: &str = "audit.unavailable";

/// What to do when the audit queue is full (or the output is failing and the queue fills).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum QueueFull {
    /// Wait for room: no record is ever lost; requests slow down with the disk.
    #[default]
    Block,
    /// Refuse new requests with 503 `audit.unavailable`; admitted requests still block.
    Refuse,
    /// Drop the record, count it, and report the count in the next record written.
    Drop,
}

impl QueueFull {
    pub fn as_str(self) -> &'static str {
        match self {
            QueueFull::Block => "block",
            QueueFull::Refuse => "refuse",
            QueueFull::Drop => "drop",
        }
    }
}

/// File rotation: by size and/or age, keeping `retain` rotated files (0 keeps all).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Rotation {
    pub max_bytes: Option<u64>,
    pub max_age: Option<Duration>,
    pub retain: usize,
}

portcullis_base::variants! {
    /// A refusal made on the audit log's account (see [`AuditLog::refusing`]).
    #[derive(Clone, Copy, Debug, PartialEq, Eq)]
    pub enum AuditError {
        /// The audit queue is full or the audit output is failing, under `queue_full: refuse`.
        Unavailable,
    }
}

const WRITE_BUCKETS: [f64; 10] = [
    0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.05, 0.25,
];

/// Counters the writer and `emit` keep; rendered by the metrics endpoint.
pub struct AuditStats {
    written: AtomicU64,
    dropped: AtomicU64,
    dropped_unreported: AtomicU64,
    write_errors: AtomicU64,
    failing: AtomicBool,
    checkpoints: AtomicU64,
    rotations: AtomicU64,
    write_latency: Histogram,
}

impl AuditStats {
    fn new() -> AuditStats {
        AuditStats {
            written: AtomicU64::new(0),
            dropped: AtomicU64::new(0),
            dropped_unreported: AtomicU64::new(0),
            write_errors: AtomicU64::new(0),
            failing: AtomicBool::new(false),
            checkpoints: AtomicU64::new(0),
            rotations: AtomicU64::new(0),
            write_latency: Histogram::new(&WRITE_BUCKETS),
        }
    }

    /// Records written to the output (checkpoints and markers included).
    pub fn written(&self) -> u64 {
        self.written.load(Ordering::Relaxed)
    }
    /// Records dropped (`drop` policy, or best-effort records under `refuse`).
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }
    /// Failed write or fsync attempts.
    pub fn write_errors(&self) -> u64 {
        self.write_errors.load(Ordering::Relaxed)
    }
    /// Whether the output is failing right now.
    pub fn failing(&self) -> bool {
        self.failing.load(Ordering::Relaxed)
    }
    pub fn checkpoints(&self) -> u64 {
        self.checkpoints.load(Ordering::Relaxed)
    }
    pub fn rotations(&self) -> u64 {
        self.rotations.load(Ordering::Relaxed)
    }
    /// Time per batch write.
    pub fn write_latency(&self) -> &Histogram {
        &self.write_latency
    }
}

struct Inner {
    tx: Sender<Msg>,
    policy: QueueFull,
    /// Request records refer to their connection's record instead of carrying its members.
    connection_records: bool,
    capacity: usize,
    stats: Arc<AuditStats>,
}

/// Handle for enqueueing records; cheap to clone. The writer stops when every clone is gone
/// or [`AuditLog::close`] is called.
#[derive(Clone)]
pub struct AuditLog {
    inner: Option<Arc<Inner>>,
}

/// Runs a blocking call without stalling a multi-threaded Tokio runtime.
fn blocking<T>(f: impl FnOnce() -> T) -> T {
    match tokio::runtime::Handle::try_current().map(|h| h.runtime_flavor()) {
        Ok(tokio::runtime::RuntimeFlavor::MultiThread) => tokio::task::block_in_place(f),
        _ => f(),
    }
}

impl AuditLog {
    /// Starts the writer thread for `settings`. For a file sink this opens the file and
    /// resumes the chain from its last record; it fails if the file cannot be opened or its
    /// last line is not a sealed record (a torn last line is recovered, see `writer.rs`).
    pub fn start(settings: &AuditSettings) -> io::Result<AuditLog> {
        let (out, resume) = match &settings.sink {
            AuditSink::None => return Ok(AuditLog::disabled()),
            AuditSink::Stdout => (Output::Stream(Box::new(io::stdout())), Resume::genesis()),
            AuditSink::File(p) => {
                let (f, r) = FileOut::open(p, settings.rotation.clone())?;
                (Output::File(f), r)
            }
        };
        AuditLog::spawn(settings, out, resume)
    }

    /// Starts a writer on any byte sink (tests, benches): a fresh chain, no rotation.
    pub fn start_with_writer(
        settings: &AuditSettings,
        out: Box<dyn io::Write + Send>,
    ) -> io::Result<AuditLog> {
        AuditLog::spawn(settings, Output::Stream(out), Resume::genesis())
    }

    fn spawn(settings: &AuditSettings, out: Output, resume: Resume) -> io::Result<AuditLog> {
        let capacity = settings.queue_capacity.max(1);
        let (tx, rx) = crossbeam_channel::bounded::<Msg>(capacity);
        let stats = Arc::new(AuditStats::new());
        let w = Writer::new(
            out,
            writer::Settings {
                key: settings.signing_key.clone(),
                checkpoint_every: settings.checkpoint_every,
                checkpoint_interval: settings.checkpoint_interval,
                fsync_interval: settings.fsync_interval,
            },
            Arc::clone(&stats),
            &resume,
        );
        let torn = resume.torn;
        std::thread::Builder::new()
            .name("portcullis-audit".into())
            .spawn(move || w.run(rx, torn))?;
        if settings.queue_full != QueueFull::Block {
            tracing::warn!(
                queue_full = settings.queue_full.as_str(),
                "audit queue-full policy is not `block`: records or requests may be refused or dropped under pressure"
            );
        }
        Ok(AuditLog {
            inner: Some(Arc::new(Inner {
                tx,
                policy: settings.queue_full,
                connection_records: settings.connection_records,
                capacity,
                stats,
            })),
        })
    }

    /// A log that discards everything (`audit.sink: none`, `check`, tests of other parts).
    pub fn disabled() -> AuditLog {
        AuditLog { inner: None }
    }

    /// Encodes `record` with the current time and enqueues it; what happens when the queue
    /// is full depends on the [`QueueFull`] policy (see the module doc).
    pub fn emit(&self, record: Record) {
        let Some(inner) = &self.inner else { return };
        let body = encode_with(&record, inner.connection_records);
        // The writer needs the connection's members only when the record refers to them.
        let conn = match &record {
            Record::Request(r) if inner.connection_records => {
                r.conn_members.as_ref().map(|members| ConnRef {
                    id: r.conn_id,
                    members: std::sync::Arc::clone(members),
                })
            }
            _ => None,
        };
        let best_effort = match inner.policy {
            QueueFull::Block => false,
            QueueFull::Drop => true,
            // Under `refuse`, a request that was let through always gets its record; the
            // records of requests refused for the audit's sake, and of failed handshakes,
            // are best effort (counted when dropped).
            QueueFull::Refuse => match &record {
                Record::Request(r) => r.reason == Some(UNAVAILABLE_REASON),
                Record::TlsHandshake(_) | Record::HttpError(_) => true,
                // An alert outranks the request that fired it: never dropped under `refuse`.
                Record::Alert(_) | Record::QuarantineLifted(_) => false,
            },
        };
        match inner.tx.try_send(Msg::Record(body, conn)) {
            Ok(()) => {}
            Err(TrySendError::Full(msg)) if !best_effort => {
                let _ = blocking(|| inner.tx.send(msg));
            }
            Err(TrySendError::Full(_)) => {
                inner.stats.dropped.fetch_add(1, Ordering::Relaxed);
                inner
                    .stats
                    .dropped_unreported
                    .fetch_add(1, Ordering::Relaxed);
            }
            Err(TrySendError::Disconnected(_)) => {
                inner.stats.dropped.fetch_add(1, Ordering::Relaxed);
                tracing::error!(failure = "audit_writer_gone", "audit record lost");
            }
        }
    }

    /// True when new requests must be refused with `audit.unavailable`: the policy is
    /// `refuse` and the queue is full or the output is failing.
    pub fn refusing(&self) -> bool {
        self.inner
            .as_ref()
            .is_some_and(|i| i.policy == QueueFull::Refuse && (i.tx.is_full() || i.stats.failing()))
    }

    /// False while the audit output is failing (for readiness).
    pub fn healthy(&self) -> bool {
        self.inner.as_ref().is_none_or(|i| !i.stats.failing())
    }

    /// Records written so far.
    pub fn written(&self) -> u64 {
        self.inner.as_ref().map_or(0, |i| i.stats.written())
    }

    /// Records waiting in the queue, and its capacity.
    pub fn queue_depth(&self) -> (usize, usize) {
        self.inner
            .as_ref()
            .map_or((0, 0), |i| (i.tx.len(), i.capacity))
    }

    pub fn stats(&self) -> Option<&AuditStats> {
        self.inner.as_deref().map(|i| &*i.stats)
    }

    pub fn policy(&self) -> Option<QueueFull> {
        self.inner.as_ref().map(|i| i.policy)
    }

    /// Waits (up to `timeout`) until every record enqueued before this call is written and
    /// fsynced; true when that happened.
    pub fn sync(&self, timeout: Duration) -> bool {
        self.ask(timeout, Msg::Sync)
    }

    /// Writes a final checkpoint (when a key is configured), fsyncs and stops the writer;
    /// waits up to `timeout`. Records emitted afterwards are counted as dropped.
    pub fn close(&self, timeout: Duration) -> bool {
        self.ask(timeout, Msg::Close)
    }

    fn ask(&self, timeout: Duration, msg: fn(Sender<bool>) -> Msg) -> bool {
        let Some(inner) = &self.inner else {
            return true;
        };
        let (ack, done) = crossbeam_channel::bounded(1);
        blocking(|| {
            inner.tx.send_timeout(msg(ack), timeout).is_ok()
                && done.recv_timeout(timeout).unwrap_or(false)
        })
    }
}

/// The members of one record as the writer splices them: `"time":"…","kind":"…",…`, with a
/// request's connection members inline.
pub fn encode(record: &Record) -> Vec<u8> {
    encode_with(record, false)
}

/// [`encode`]; with `connection_records`, a request record that has its connection's members
/// names the connection (`"conn":N`) instead, and the writer writes the `connection` record.
pub fn encode_with(record: &Record, connection_records: bool) -> Vec<u8> {
    let mut body = Vec::with_capacity(1024);
    body.extend_from_slice(b"\"time\":\"");
    push_now_rfc3339(&mut body);
    body.push(b'"');
    record.write(&mut json::Members::after(&mut body), connection_records);
    body
}

pub(crate) fn now_rfc3339() -> String {
    let mut out = Vec::with_capacity(32);
    push_now_rfc3339(&mut out);
    String::from_utf8(out).unwrap_or_default()
}

/// Appends the current UTC time as RFC 3339 with the fraction of a second as the `time`
/// crate writes it (nanoseconds, trailing zeros dropped, none when zero):
/// `2026-12-02T15:04:05.123456789Z`. The date and time of day are formatted once per second
/// per thread; the request path only writes the fraction.
pub(crate) fn push_now_rfc3339(out: &mut Vec<u8>) {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    push_rfc3339(out, now.as_secs(), now.subsec_nanos());
}

fn push_rfc3339(out: &mut Vec<u8>, secs: u64, nanos: u32) {
    use std::cell::RefCell;
    thread_local! {
        /// The last second formatted on this thread, and its `YYYY-MM-DDTHH:MM:SS`.
        static SECOND: RefCell<(u64, String)> = const { RefCell::new((u64::MAX, String::new())) };
    }
    SECOND.with_borrow_mut(|(cached, prefix)| {
        if *cached != secs {
            let full = i64::try_from(secs)
                .ok()
                .and_then(unix_to_rfc3339)
                .unwrap_or_default();
            *prefix = full.trim_end_matches('Z').to_string();
            *cached = secs;
        }
        out.extend_from_slice(prefix.as_bytes());
    });
    if nanos != 0 {
        let digits = format_nanos(nanos);
        let keep = digits.iter().rposition(|&d| d != b'0').map_or(0, |i| i + 1);
        out.push(b'.');
        out.extend_from_slice(&digits[..keep]);
    }
    out.push(b'Z');
}

fn format_nanos(mut n: u32) -> [u8; 9] {
    let mut d = [b'0'; 9];
    for slot in d.iter_mut().rev() {
        *slot = b'0' + (n % 10) as u8;
        n /= 10;
    }
    d
}

/// Where the audit log goes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum AuditSink {
    File(PathBuf),
    Stdout,
    None,
}

/// The audit log: sink, queue, durability, rotation and checkpoints (see `portcullis_audit`).
#[derive(Clone, Debug)]
pub struct AuditSettings {
    pub sink: AuditSink,
    pub queue_capacity: usize,
    pub queue_full: crate::QueueFull,
    /// `Some(ZERO)`: fsync after every batch.
    pub fsync_interval: Option<Duration>,
    pub rotation: crate::Rotation,
    pub signing_key: Option<Arc<crate::AuditKey>>,
    /// Records between signed checkpoints; 0 = by time only.
    pub checkpoint_every: u64,
    pub checkpoint_interval: Option<Duration>,
    /// Write each connection's facts once per file in a `connection` record that request
    /// records refer to (the default), instead of in every request record.
    pub connection_records: bool,
}

impl AuditSettings {
    /// Defaults for `sink`: block when full, fsync every second, no rotation, no key.
    pub fn new(sink: AuditSink) -> AuditSettings {
        AuditSettings {
            sink,
            queue_capacity: 65_536,
            queue_full: crate::QueueFull::Block,
            fsync_interval: Some(Duration::from_secs(1)),
            rotation: crate::Rotation::default(),
            signing_key: None,
            checkpoint_every: 0,
            checkpoint_interval: None,
            connection_records: true,
        }
    }
}

#[cfg(test)]
mod tests;
