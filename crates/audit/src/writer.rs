//! The writer thread: sequence numbers, the hash chain, checkpoints, batching, fsync,
//! rotation, retention and recovery from a failing disk.
//!
//! How it works: the thread takes one message from the queue (waiting at most one tick), then
//! whatever else is already queued (up to [`BATCH`] records), seals each into the pending
//! buffer (seq, `prev`, `hash`; see `chain.rs`), and writes the buffer with as few `write`
//! calls as the kernel allows. Between batches it fsyncs when the interval has passed, writes
//! a time-based checkpoint when one is due, and rotates the file when it is too big or old.
//!
//! Invariants:
//! - Only this thread assigns `seq` and `prev`, so the chain is total: every record links to
//!   the one written before it, across rotations and restarts (on start it resumes from the
//!   last record on disk).
//! - A record is sealed exactly once. When a write fails, the unwritten bytes stay pending and
//!   are retried every [`RETRY`]; meanwhile nothing more is taken from the queue, so it fills
//!   and the queue-full policy decides (block, refuse, drop). Nothing is re-sealed or lost
//!   while the process lives.
//! - Rotation happens only at a batch boundary with nothing pending: the last record of the
//!   old file is a checkpoint (when a key is configured), the first record of the new file is a
//!   `rotation` marker whose `prev` is the hash of the last record of the old file.
//! - A torn last line found on start (a crash mid-write) is never rewritten: it is terminated
//!   with a newline and followed by a `recovery` record naming its length, chained to the last
//!   complete record.
//! - A request record that names its connection (`"conn":N`) follows that connection's
//!   `connection` record in the same file: the writer remembers which connections it has
//!   written to the current file and writes the connection record just before the first
//!   request of a connection it has not, so a file kept alone (retention, export) never holds
//!   a request without its connection. The memory is forgotten on rotation, on start, when the
//!   file is reopened after a failure, and when it reaches [`MAX_CONNS`] (a connection record
//!   may then appear twice in a file; readers take the latest before the request). A
//!   connection that sends no request gets no connection record.

use std::collections::HashSet;
use std::fs::{File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use crossbeam_channel::{Receiver, RecvTimeoutError, Sender};

use super::chain::{self, AuditKey, GENESIS};
use super::{json, AuditStats, Rotation};

/// Most records sealed before the buffer is written.
pub(crate) const BATCH: usize = 512;
/// How long the writer lets records accumulate after writing a batch.
const LINGER: Duration = Duration::from_millis(10);
/// Added to the writer thread's nice value (the one it inherits from the thread that started
/// the log, the data plane's): its bursts (sealing a batch) then run in the workers' idle gaps
/// instead of preempting them. It still gets a share of a contended core (weight 335 against a
/// worker's 1024 at +5), and under `block` a full queue stops the workers, which leaves it the
/// cores. Raising a nice value needs no privilege.
pub(crate) const WRITER_NICE: i32 = 5;

/// Pending bytes that end a batch early.
const BATCH_BYTES: usize = 256 * 1024;
/// Delay between attempts while the output fails.
pub(crate) const RETRY: Duration = Duration::from_millis(200);
/// How far from the end of a file we look for its last record on start.
const TAIL: u64 = 64 * 1024;
/// Connections remembered as written to the current file; past this the memory starts over,
/// which bounds it on a log that never rotates at the price of a repeated connection record.
pub(crate) const MAX_CONNS: usize = 65_536;

/// The connection a request record names, and its members as `connection_members` encoded them.
pub(crate) struct ConnRef {
    pub id: u64,
    pub members: Arc<str>,
}

/// What the request path sends to the writer.
pub(crate) enum Msg {
    /// The members of one record (`"time":…,"kind":…`), already serialized, and the
    /// connection it names, whose record must precede it in the file.
    Record(Vec<u8>, Option<ConnRef>),
    /// Write and fsync everything queued before this, then answer whether that worked.
    Sync(Sender<bool>),
    /// Write a final checkpoint, fsync, answer and stop.
    Close(Sender<bool>),
}

/// Checkpoint and durability settings of the writer.
pub(crate) struct Settings {
    pub key: Option<Arc<AuditKey>>,
    /// Records between checkpoints; 0 = only by time.
    pub checkpoint_every: u64,
    pub checkpoint_interval: Option<Duration>,
    /// `Some(ZERO)`: fsync after every batch; `None`: never.
    pub fsync_interval: Option<Duration>,
}

/// Where the chain continues from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Resume {
    pub seq: u64,
    pub prev: String,
    /// Bytes of a torn last line that was terminated on start.
    pub torn: Option<u64>,
}

impl Resume {
    pub(crate) fn genesis() -> Resume {
        Resume {
            seq: 0,
            prev: GENESIS.to_string(),
            torn: None,
        }
    }
}

/// The current audit file and its rotation state.
pub(crate) struct FileOut {
    path: PathBuf,
    file: Option<File>,
    size: u64,
    opened_at: SystemTime,
    /// Seq of the first record in the current file.
    first_seq: u64,
    records: u64,
    rotation: Rotation,
    /// Set when the file was opened again after a failure: it may be another file now.
    reopened: bool,
}

pub(crate) enum Output {
    File(FileOut),
    Stream(Box<dyn Write + Send>),
}

impl Output {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Output::File(f) => {
                if f.file.is_none() {
                    f.file = Some(open_append(&f.path)?);
                    f.reopened = true;
                }
                let file = f.file.as_mut().ok_or(io::ErrorKind::NotConnected)?;
                let n = file.write(buf)?;
                f.size += n as u64;
                Ok(n)
            }
            Output::Stream(w) => w.write(buf),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        match self {
            Output::File(_) => Ok(()),
            Output::Stream(w) => w.flush(),
        }
    }

    fn sync(&mut self) -> io::Result<()> {
        match self {
            Output::File(FileOut {
                file: Some(file), ..
            }) => file.sync_data(),
            _ => Ok(()),
        }
    }
}

fn open_append(path: &Path) -> io::Result<File> {
    OpenOptions::new()
        .create(true)
        .append(true)
        .read(true)
        .open(path)
}

/// `audit.log` -> `audit.log.000000000042` for a file whose first record is seq 42.
pub fn rotated_name(path: &Path, first_seq: u64) -> PathBuf {
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push(format!(".{first_seq:012}"));
    path.with_file_name(name)
}

/// Rotated siblings of `path`, oldest first.
pub fn rotated_files(path: &Path) -> Vec<PathBuf> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let Some(base) = path.file_name().and_then(|n| n.to_str()) else {
        return Vec::new();
    };
    let prefix = format!("{base}.");
    let mut found: Vec<PathBuf> = std::fs::read_dir(&dir)
        .map(|rd| {
            rd.filter_map(|e| e.ok())
                .filter(|e| {
                    e.file_name().to_str().is_some_and(|n| {
                        n.strip_prefix(&prefix).is_some_and(|rest| {
                            rest.len() == 12 && rest.bytes().all(|b| b.is_ascii_digit())
                        })
                    })
                })
                .map(|e| e.path())
                .collect()
        })
        .unwrap_or_default();
    found.sort();
    found
}

/// The seq and hash of a sealed line, when it is one.
fn parse_sealed(line: &[u8]) -> Option<(u64, String, Option<String>)> {
    let (_, hash) = chain::split_hash(line)?;
    let v: serde_json::Value = serde_json::from_slice(line).ok()?;
    let seq = v.get("seq")?.as_u64()?;
    let time = v.get("time").and_then(|t| t.as_str()).map(str::to_string);
    Some((seq, hash.to_string(), time))
}

fn read_tail(file: &mut File, size: u64) -> io::Result<Vec<u8>> {
    let from = size.saturating_sub(TAIL);
    file.seek(SeekFrom::Start(from))?;
    let mut buf = Vec::with_capacity((size - from) as usize);
    file.take(TAIL).read_to_end(&mut buf)?;
    Ok(buf)
}

fn unreadable(path: &Path, what: &str) -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidData,
        format!(
            "cannot continue the audit chain: {what} in {}; move the file aside (and verify it) before starting",
            path.display()
        ),
    )
}

/// Finds the last sealed record in `path` (size `size`), terminating a torn last line.
fn resume_from(path: &Path, file: &mut File, size: u64) -> io::Result<Option<Resume>> {
    if size == 0 {
        return Ok(None);
    }
    let tail = read_tail(file, size)?;
    let mut torn = None;
    let complete = if tail.last() == Some(&b'\n') {
        &tail[..tail.len() - 1]
    } else {
        let cut = tail.iter().rposition(|&b| b == b'\n');
        let fragment = match cut {
            Some(i) => tail.len() - i - 1,
            None if size <= TAIL => tail.len(),
            None => return Err(unreadable(path, "no complete record in the last 64 KiB")),
        };
        torn = Some(fragment as u64);
        match cut {
            Some(i) => &tail[..i],
            None => &tail[..0],
        }
    };
    if torn.is_some() {
        // Terminate the fragment so the next record starts on its own line.
        let mut f = open_append(path)?;
        f.write_all(b"\n")?;
        f.sync_data()?;
    }
    if complete.is_empty() {
        return Ok(torn.map(|t| Resume {
            torn: Some(t),
            ..Resume::genesis()
        }));
    }
    let last = complete.rsplit(|&b| b == b'\n').next().unwrap_or(complete);
    match parse_sealed(last) {
        Some((seq, prev, _)) => Ok(Some(Resume { seq, prev, torn })),
        None => Err(unreadable(
            path,
            "the last line is not a sealed audit record",
        )),
    }
}

fn first_record(file: &mut File) -> Option<(u64, Option<SystemTime>)> {
    file.seek(SeekFrom::Start(0)).ok()?;
    let mut head = Vec::new();
    file.take(TAIL).read_to_end(&mut head).ok()?;
    let line = head.split(|&b| b == b'\n').next()?;
    let (seq, _, time) = parse_sealed(line)?;
    let t = time.and_then(|t| {
        time::OffsetDateTime::parse(&t, &time::format_description::well_known::Rfc3339).ok()
    });
    Some((seq, t.map(SystemTime::from)))
}

impl FileOut {
    /// Opens (or creates) `path` for appending and finds where the chain continues: the last
    /// record of `path`, or of the newest rotated file when `path` is empty.
    pub(crate) fn open(path: &Path, rotation: Rotation) -> io::Result<(FileOut, Resume)> {
        let mut file = open_append(path)?;
        let size = file.metadata()?.len();
        let mut resume = resume_from(path, &mut file, size)?;
        let has_records = resume.as_ref().is_some_and(|r| r.seq > 0);
        if !has_records {
            let torn = resume.as_ref().and_then(|r| r.torn);
            if let Some(newest) = rotated_files(path).pop() {
                let mut f = File::open(&newest)?;
                let n = f.metadata()?.len();
                if let Some(mut r) = resume_from(&newest, &mut f, n)? {
                    r.torn = torn;
                    resume = Some(r);
                }
            }
        }
        let resume = resume.unwrap_or_else(Resume::genesis);
        let (first_seq, opened_at) = match first_record(&mut file) {
            Some((seq, t)) if has_records => (seq, t.unwrap_or_else(SystemTime::now)),
            _ => (resume.seq + 1, SystemTime::now()),
        };
        let size = file.metadata()?.len();
        Ok((
            FileOut {
                path: path.to_path_buf(),
                file: Some(file),
                size,
                opened_at,
                first_seq,
                records: u64::from(has_records),
                rotation,
                reopened: false,
            },
            resume,
        ))
    }

    fn due(&self) -> bool {
        if self.records == 0 {
            return false;
        }
        let by_size = self.rotation.max_bytes.is_some_and(|m| self.size >= m);
        let by_age = self.rotation.max_age.is_some_and(|a| {
            SystemTime::now()
                .duration_since(self.opened_at)
                .is_ok_and(|d| d >= a)
        });
        by_size || by_age
    }
}

pub(crate) struct Writer {
    out: Output,
    settings: Settings,
    stats: Arc<AuditStats>,
    seq: u64,
    prev: String,
    pending: Vec<u8>,
    /// Bytes of `pending` already written (a short write or an error part-way).
    written_upto: usize,
    /// Records in `pending` not yet counted as written.
    pending_records: u64,
    since_checkpoint: u64,
    checkpoint_first: u64,
    last_checkpoint: Instant,
    last_sync: Instant,
    dirty: bool,
    /// Connections whose `connection` record is in the current file.
    conns: HashSet<u64>,
}

impl Writer {
    pub(crate) fn new(
        out: Output,
        settings: Settings,
        stats: Arc<AuditStats>,
        resume: &Resume,
    ) -> Writer {
        Writer {
            out,
            settings,
            stats,
            seq: resume.seq,
            prev: resume.prev.clone(),
            pending: Vec::with_capacity(BATCH_BYTES),
            written_upto: 0,
            pending_records: 0,
            since_checkpoint: 0,
            checkpoint_first: resume.seq + 1,
            last_checkpoint: Instant::now(),
            last_sync: Instant::now(),
            dirty: false,
            conns: HashSet::new(),
        }
    }

    /// Runs until the queue closes or a `Close` message arrives.
    pub(crate) fn run(mut self, rx: Receiver<Msg>, torn: Option<u64>) {
        // Per thread on Linux: only this thread's nice value changes.
        let me = Some(rustix::thread::gettid());
        let nice = rustix::process::getpriority_process(me).unwrap_or(0);
        if let Err(e) = rustix::process::setpriority_process(me, (nice + WRITER_NICE).min(19)) {
            tracing::warn!(error = %e, "audit writer: could not lower its priority");
        }
        if let Some(n) = torn {
            tracing::warn!(
                failure = "audit_torn_tail",
                bytes = n,
                "the audit log ended in a torn record (crash during a write?); continuing the chain after it"
            );
            self.append_marker("recovery", &format!("\"torn_bytes\":{n}"));
            self.write_out();
        }
        loop {
            if self.failing() {
                std::thread::sleep(RETRY);
                self.write_out();
                continue;
            }
            let first = match rx.recv_timeout(self.tick()) {
                Ok(m) => Some(m),
                Err(RecvTimeoutError::Timeout) => None,
                Err(RecvTimeoutError::Disconnected) => {
                    self.close();
                    return;
                }
            };
            let mut next = first;
            let mut taken = 0;
            while let Some(msg) = next.take() {
                match msg {
                    Msg::Record(body, conn) => {
                        if let Some(c) = conn {
                            self.connection(&c);
                        }
                        self.append(&body);
                    }
                    Msg::Sync(ack) => {
                        let ok = self.write_out() && self.sync();
                        let _ = ack.send(ok);
                    }
                    Msg::Close(ack) => {
                        let ok = self.close();
                        let _ = ack.send(ok);
                        return;
                    }
                }
                taken += 1;
                if taken < BATCH && self.pending.len() < BATCH_BYTES {
                    next = rx.try_recv().ok();
                }
            }
            // A full batch means the queue was not drained: write it and go on at once, so the
            // writer keeps up with any rate instead of BATCH records per LINGER.
            let full = taken >= BATCH || self.pending.len() >= BATCH_BYTES;
            self.write_out();
            self.maintain();
            // Under load, let records accumulate instead of parking on the queue: a parked
            // writer is woken by every enqueue (a futex call on the request path) and writes a
            // batch of one. Sleeping briefly after a batch keeps the request path free of
            // wake-ups and makes batches real. Records reach the file at most LINGER later;
            // durability is governed by the fsync interval either way. A 10 ms linger (~450
            // records a batch at 45k/s) used ~4% less CPU per request than 2 ms; at nice 0
            // its bursts preempted a worker on a 2-core machine (p99 1.8 -> 2.5 ms in an
            // A/B), hence WRITER_NICE.
            if full {
                continue;
            }
            if taken > 1 || !rx.is_empty() {
                std::thread::sleep(LINGER);
            } else if taken == 1 {
                std::thread::sleep(LINGER / 4);
            }
        }
    }

    fn failing(&self) -> bool {
        self.written_upto < self.pending.len() || self.stats.failing.load(Ordering::Relaxed)
    }

    fn tick(&self) -> Duration {
        let mut t = Duration::from_secs(1);
        if let Some(i) = self.settings.checkpoint_interval {
            t = t.min(i);
        }
        if let Some(f) = self.settings.fsync_interval.filter(|f| !f.is_zero()) {
            t = t.min(f);
        }
        t.max(Duration::from_millis(5))
    }

    /// Seals one record: `{"seq":N,` + members + [`,"dropped_before":D`] + `,"prev":"P"}`.
    fn append(&mut self, members: &[u8]) {
        self.seal(members, true);
    }

    /// [`Writer::append`]; `report_drops`: the record carries the drops not yet reported (a
    /// `connection` record leaves them to the request that follows it, whose record they
    /// were dropped before from the reader's point of view).
    fn seal(&mut self, members: &[u8], report_drops: bool) {
        self.seq += 1;
        let start = self.pending.len();
        self.pending.extend_from_slice(b"{\"seq\":");
        self.pending
            .extend_from_slice(itoa::Buffer::new().format(self.seq).as_bytes());
        self.pending.push(b',');
        self.pending.extend_from_slice(members);
        let dropped = if report_drops {
            self.stats.dropped_unreported.swap(0, Ordering::Relaxed)
        } else {
            0
        };
        if dropped > 0 {
            let _ = write!(self.pending, ",\"dropped_before\":{dropped}");
        }
        self.pending.extend_from_slice(b",\"prev\":\"");
        self.pending.extend_from_slice(self.prev.as_bytes());
        self.pending.extend_from_slice(b"\"}");
        self.prev = chain::seal(&mut self.pending, start);
        self.record_sealed();
        if self.settings.checkpoint_every > 0
            && self.since_checkpoint >= self.settings.checkpoint_every
        {
            self.checkpoint("count");
        }
    }

    /// Writes the `connection` record of `c` unless the current file has it.
    fn connection(&mut self, c: &ConnRef) {
        if let Output::File(f) = &mut self.out {
            if std::mem::take(&mut f.reopened) {
                // Records written from now on may land in a file that lacks the earlier
                // connection records.
                self.conns.clear();
            }
        }
        if self.conns.contains(&c.id) {
            return;
        }
        if self.conns.len() >= MAX_CONNS {
            self.conns.clear();
        }
        self.conns.insert(c.id);
        let mut members = Vec::with_capacity(64 + c.members.len());
        members.extend_from_slice(b"\"time\":");
        json::push_str(&mut members, &super::now_rfc3339());
        super::record::write_connection(&mut json::Members::after(&mut members), c.id, &c.members);
        self.seal(&members, false);
    }

    fn record_sealed(&mut self) {
        self.pending_records += 1;
        self.since_checkpoint += 1;
        if let Output::File(f) = &mut self.out {
            f.records += 1;
        }
    }

    /// A record the writer makes itself (`rotation`, `recovery`); `extra` are JSON members.
    fn append_marker(&mut self, kind: &str, extra: &str) {
        let mut members = Vec::with_capacity(128 + extra.len());
        members.extend_from_slice(b"\"time\":");
        json::push_str(&mut members, &super::now_rfc3339());
        let _ = write!(members, ",\"kind\":\"{kind}\"");
        if !extra.is_empty() {
            members.push(b',');
            members.extend_from_slice(extra.as_bytes());
        }
        self.append(&members);
    }

    /// A signed checkpoint covering every record since the previous one.
    fn checkpoint(&mut self, reason: &str) {
        let Some(key) = self.settings.key.clone() else {
            return;
        };
        let covered_last = self.seq;
        self.seq += 1;
        let start = self.pending.len();
        let _ = write!(self.pending, "{{\"seq\":{},\"time\":", self.seq);
        json::push_str(&mut self.pending, &super::now_rfc3339());
        let _ = write!(
            self.pending,
            ",\"kind\":\"checkpoint\",\"reason\":\"{reason}\",\"first_seq\":{},\"last_seq\":{covered_last},\"records\":{},\"dropped_total\":{},\"write_errors\":{},\"key_id\":\"{}\",\"prev\":\"{}\"}}",
            self.checkpoint_first,
            (covered_last + 1).saturating_sub(self.checkpoint_first),
            self.stats.dropped.load(Ordering::Relaxed),
            self.stats.write_errors.load(Ordering::Relaxed),
            key.key_id(),
            self.prev,
        );
        key.sign_into(&mut self.pending, start);
        self.prev = chain::seal(&mut self.pending, start);
        self.pending_records += 1;
        if let Output::File(f) = &mut self.out {
            f.records += 1;
        }
        self.since_checkpoint = 0;
        self.checkpoint_first = self.seq + 1;
        self.last_checkpoint = Instant::now();
        self.stats.checkpoints.fetch_add(1, Ordering::Relaxed);
        // An external copy of the anchor: `audit verify --anchor SEQ:HASH` checks the log
        // still holds it, which catches a truncation back past this checkpoint.
        tracing::info!(seq = self.seq, hash = %self.prev, reason, "audit checkpoint");
    }

    /// Writes the pending buffer; true when nothing is left pending.
    fn write_out(&mut self) -> bool {
        if self.pending.is_empty() {
            return true;
        }
        let started = Instant::now();
        while self.written_upto < self.pending.len() {
            match self.out.write(&self.pending[self.written_upto..]) {
                Ok(0) => {
                    self.fail(&io::Error::from(io::ErrorKind::WriteZero));
                    return false;
                }
                Ok(n) => self.written_upto += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    self.fail(&e);
                    return false;
                }
            }
        }
        if let Err(e) = self.out.flush() {
            self.fail(&e);
            return false;
        }
        self.stats.write_latency.observe(started.elapsed());
        self.pending.clear();
        self.written_upto = 0;
        self.dirty = true;
        self.stats
            .written
            .fetch_add(self.pending_records, Ordering::Relaxed);
        self.pending_records = 0;
        if self.stats.failing.swap(false, Ordering::Relaxed) {
            tracing::warn!("audit output recovered; pending records written");
        }
        if self.settings.fsync_interval.is_some_and(|d| d.is_zero()) {
            self.sync();
        }
        true
    }

    fn fail(&mut self, e: &io::Error) {
        self.stats.write_errors.fetch_add(1, Ordering::Relaxed);
        if !self.stats.failing.swap(true, Ordering::Relaxed) {
            tracing::error!(
                failure = "audit_write",
                error = %e,
                pending_bytes = self.pending.len() - self.written_upto,
                "audit write failed; retrying, and the queue-full policy now applies"
            );
        }
        if let Output::File(f) = &mut self.out {
            // Reopen on the next attempt (the file may have been replaced or remounted).
            f.file = None;
        }
    }

    fn sync(&mut self) -> bool {
        if !self.dirty {
            return true;
        }
        match self.out.sync() {
            Ok(()) => {
                self.dirty = false;
                self.last_sync = Instant::now();
                true
            }
            Err(e) => {
                self.fail(&e);
                false
            }
        }
    }

    fn maintain(&mut self) {
        if let (Some(i), true) = (self.settings.checkpoint_interval, self.since_checkpoint > 0) {
            if self.last_checkpoint.elapsed() >= i {
                self.checkpoint("interval");
                self.write_out();
            }
        }
        if let Some(d) = self.settings.fsync_interval {
            if self.last_sync.elapsed() >= d {
                self.sync();
            }
        }
        if matches!(&self.out, Output::File(f) if f.due()) && !self.failing() {
            self.rotate();
        }
    }

    fn rotate(&mut self) {
        self.checkpoint("rotation");
        if !self.write_out() || !self.sync() {
            return;
        }
        let Output::File(f) = &mut self.out else {
            return;
        };
        let target = rotated_name(&f.path, f.first_seq);
        f.file = None;
        if let Err(e) = std::fs::rename(&f.path, &target) {
            self.stats.write_errors.fetch_add(1, Ordering::Relaxed);
            tracing::error!(failure = "audit_rotate", error = %e, "audit rotation failed; writing on to the current file");
            f.opened_at = SystemTime::now();
            return;
        }
        if let Some(dir) = f.path.parent().filter(|d| !d.as_os_str().is_empty()) {
            // Make the rename durable (best effort: not every filesystem allows it).
            let _ = File::open(dir).and_then(|d| d.sync_all());
        }
        f.size = 0;
        f.records = 0;
        f.first_seq = self.seq + 1;
        // The new file must carry its own connection records.
        self.conns.clear();
        f.opened_at = SystemTime::now();
        let retain = f.rotation.retain;
        let path = f.path.clone();
        self.stats.rotations.fetch_add(1, Ordering::Relaxed);
        let previous = target
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or_default()
            .to_string();
        let mut extra = b"\"previous_file\":".to_vec();
        json::push_str(&mut extra, &previous);
        self.append_marker("rotation", &String::from_utf8_lossy(&extra));
        self.write_out();
        if retain > 0 {
            let files = rotated_files(&path);
            for old in files.iter().take(files.len().saturating_sub(retain)) {
                match std::fs::remove_file(old) {
                    Ok(()) => {
                        tracing::info!(file = %old.display(), "audit retention removed a rotated file")
                    }
                    Err(e) => {
                        tracing::warn!(file = %old.display(), error = %e, "audit retention could not remove a file")
                    }
                }
            }
        }
    }

    /// Final checkpoint, write and fsync; true when everything reached the output.
    fn close(&mut self) -> bool {
        self.checkpoint("shutdown");
        for _ in 0..10 {
            if self.write_out() {
                return self.sync();
            }
            std::thread::sleep(RETRY);
        }
        tracing::error!(
            failure = "audit_lost_on_close",
            bytes = self.pending.len() - self.written_upto,
            "audit output still failing at shutdown; pending records are lost"
        );
        false
    }
}
