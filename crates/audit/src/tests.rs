//! The writer and the verifier together: the chain holds across batches, checkpoints, rotation,
//! restarts, a torn tail and a failing output, and every kind of tampering is named.

use std::io::Write;
use std::path::Path;
use std::sync::atomic::AtomicBool;
use std::sync::{Condvar, Mutex};

use super::verify::{self, DamageKind, Options};
use super::*;

const WAIT: Duration = Duration::from_secs(10);

/// A byte sink the test can read, fail, or hold shut.
#[derive(Clone, Default)]
struct Sink {
    buf: Arc<Mutex<Vec<u8>>>,
    fail: Arc<AtomicBool>,
    gate: Arc<(Mutex<bool>, Condvar)>,
    held: Arc<AtomicBool>,
    waiting: Arc<AtomicBool>,
}

impl Sink {
    fn text(&self) -> String {
        String::from_utf8(self.buf.lock().unwrap().clone()).unwrap()
    }
    fn hold(&self) {
        self.held.store(true, Ordering::SeqCst);
    }
    fn release(&self) {
        self.held.store(false, Ordering::SeqCst);
        let (m, c) = &*self.gate;
        *m.lock().unwrap() = true;
        c.notify_all();
    }
}

impl Write for Sink {
    fn write(&mut self, b: &[u8]) -> io::Result<usize> {
        if self.held.load(Ordering::SeqCst) {
            self.waiting.store(true, Ordering::SeqCst);
            let (m, c) = &*self.gate;
            let mut open = m.lock().unwrap();
            while !*open {
                open = c.wait(open).unwrap();
            }
        }
        if self.fail.load(Ordering::SeqCst) {
            return Err(io::Error::other("disk on fire"));
        }
        // Write at most half, to exercise short writes.
        let n = b.len().div_ceil(2);
        self.buf.lock().unwrap().extend_from_slice(&b[..n]);
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

fn settings() -> AuditSettings {
    AuditSettings::new(AuditSink::Stdout)
}

fn keyed(every: u64) -> (AuditSettings, AuditPublicKey) {
    let (key, _, _) = AuditKey::generate().unwrap();
    let public = key.public();
    let mut s = settings();
    s.signing_key = Some(Arc::new(key));
    s.checkpoint_every = every;
    (s, public)
}

fn request(i: usize) -> Record {
    Record::Request(Box::new(RequestRecord {
        interaction_id: format!("id-{i}"),
        path: "/open-banking/v3.1/aisp/accounts".into(),
        decision: "allow",
        status: 200,
        ..RequestRecord::default()
    }))
}

fn check(text: &str, public: Option<&AuditPublicKey>) -> verify::Outcome {
    check_files(&[("audit.log", text.as_bytes())], public, None)
}

fn check_files(
    files: &[(&str, &[u8])],
    public: Option<&AuditPublicKey>,
    anchor: Option<(u64, String)>,
) -> verify::Outcome {
    let files: Vec<(&Path, &[u8])> = files.iter().map(|(n, d)| (Path::new(*n), *d)).collect();
    verify::verify_bytes(
        &files,
        &Options {
            keys: public.into_iter().cloned().collect(),
            check_signatures: public.is_some(),
            anchor,
        },
    )
}

fn lines(text: &str) -> Vec<String> {
    text.lines().map(str::to_string).collect()
}

fn join(lines: &[String]) -> String {
    lines.iter().map(|l| format!("{l}\n")).collect()
}

/// Re-seals a line after `edit` changed its canonical bytes, as an attacker who knows the
/// format would.
fn reseal(line: &str, edit: impl Fn(&str) -> String) -> String {
    let (prefix, _) = split_hash(line.as_bytes()).unwrap();
    let canonical = format!("{}}}", std::str::from_utf8(prefix).unwrap());
    let mut buf = edit(&canonical).into_bytes();
    chain::seal(&mut buf, 0);
    String::from_utf8(buf).unwrap().trim_end().to_string()
}

fn field(line: &str, k: &str) -> serde_json::Value {
    serde_json::from_str::<serde_json::Value>(line).unwrap()[k].clone()
}

#[test]
fn records_are_numbered_chained_and_verify_across_batches_and_short_writes() {
    let sink = Sink::default();
    let log = AuditLog::start_with_writer(&settings(), Box::new(sink.clone())).unwrap();
    for i in 0..1500 {
        log.emit(request(i));
    }
    assert!(log.sync(WAIT));
    let text = sink.text();
    let ls = lines(&text);
    assert_eq!(ls.len(), 1500);
    assert_eq!(field(&ls[0], "prev"), GENESIS);
    for (i, l) in ls.iter().enumerate() {
        assert_eq!(field(l, "seq"), i as u64 + 1);
        assert_eq!(field(l, "interaction_id"), format!("id-{i}"));
    }
    let o = check(&text, None);
    assert!(o.ok(), "{o}");
    assert_eq!((o.records, o.checkpoints), (1500, 0));
    assert!(o.to_string().contains("no signed checkpoint"), "{o}");
    assert_eq!(log.written(), 1500);
}

/// The nice value (field 19) in a `/proc/.../stat` line.
fn nice_in(stat: &str) -> Option<i64> {
    portcullis_base::metrics::stat_field(stat, 19)?.parse().ok()
}

/// The nice values of this process's threads named `comm` (15 bytes at most).
fn nice_of_threads(comm: &str) -> Vec<i64> {
    let mut out = Vec::new();
    for task in std::fs::read_dir("/proc/self/task").unwrap().flatten() {
        let dir = task.path();
        let name = std::fs::read_to_string(dir.join("comm")).unwrap_or_default();
        if name.trim_end() != comm {
            continue;
        }
        let stat = std::fs::read_to_string(dir.join("stat")).unwrap_or_default();
        out.extend(nice_in(&stat));
    }
    out
}

#[test]
fn the_writer_thread_runs_below_the_data_plane_priority() {
    let sink = Sink::default();
    let log = AuditLog::start_with_writer(&settings(), Box::new(sink.clone())).unwrap();
    log.emit(request(0));
    // Once a record is through, this log's writer has set its priority.
    assert!(log.sync(WAIT));
    // The writer started at this thread's nice value (inherited) and raised its own only.
    let mine = nice_in(&std::fs::read_to_string("/proc/thread-self/stat").unwrap()).unwrap();
    let want = (mine + i64::from(writer::WRITER_NICE)).min(19);
    let writers = nice_of_threads("portcullis-audi");
    assert!(
        writers.contains(&want),
        "writers' nice values {writers:?}, want {want}"
    );
}

#[test]
fn signed_checkpoints_cover_every_n_records_and_the_shutdown() {
    let (s, public) = keyed(10);
    let sink = Sink::default();
    let log = AuditLog::start_with_writer(&s, Box::new(sink.clone())).unwrap();
    for i in 0..25 {
        log.emit(request(i));
    }
    assert!(log.close(WAIT));
    let text = sink.text();
    let kinds: Vec<String> = lines(&text)
        .iter()
        .map(|l| field(l, "kind").as_str().unwrap().to_string())
        .collect();
    assert_eq!(kinds.iter().filter(|k| *k == "checkpoint").count(), 3);
    assert_eq!(kinds[10], "checkpoint");
    let cp = &lines(&text)[10];
    assert_eq!(field(cp, "first_seq"), 1);
    assert_eq!(field(cp, "last_seq"), 10);
    assert_eq!(field(cp, "records"), 10);
    assert_eq!(field(lines(&text).last().unwrap(), "reason"), "shutdown");
    let o = check(&text, Some(&public));
    assert!(o.ok(), "{o}");
    assert_eq!(o.checkpoints, 3);
    assert_eq!(o.unsigned_tail, 0);
    assert!(
        o.to_string().contains("truncation back to this checkpoint"),
        "{o}"
    );

    // The right format with the wrong key.
    let (other, _) = keyed(10);
    let other_public = other.signing_key.as_ref().unwrap().public();
    let o = check(&text, Some(&other_public));
    assert_eq!(o.damage.unwrap().kind, DamageKind::UnknownKey);

    // A checkpoint edited and re-sealed keeps a valid hash but not a valid signature.
    let mut ls = lines(&text);
    ls[10] = reseal(&ls[10], |c| c.replace("\"records\":10", "\"records\":11"));
    let o = check(&join(&ls), Some(&public));
    let d = o.damage.unwrap();
    assert_eq!((d.kind, d.seq), (DamageKind::BadSignature, Some(11)));
}

/// A signed log of 40 requests with a checkpoint every 10 records.
fn signed_log() -> (Vec<String>, AuditPublicKey) {
    let (s, public) = keyed(10);
    let sink = Sink::default();
    let log = AuditLog::start_with_writer(&s, Box::new(sink.clone())).unwrap();
    for i in 0..40 {
        log.emit(request(i));
    }
    assert!(log.sync(WAIT));
    (lines(&sink.text()), public)
}

fn damage_of(ls: &[String], public: &AuditPublicKey) -> (DamageKind, Option<u64>) {
    let o = check(&join(ls), Some(public));
    let d = o
        .damage
        .clone()
        .unwrap_or_else(|| panic!("no damage found:\n{o}"));
    (d.kind, d.seq)
}

#[test]
fn an_edited_record_is_named_with_its_sequence_number() {
    let (mut ls, public) = signed_log();
    assert!(check(&join(&ls), Some(&public)).ok());
    ls[4] = ls[4].replace("\"status\":200", "\"status\":201");
    assert_eq!(damage_of(&ls, &public), (DamageKind::Edited, Some(5)));
}

#[test]
fn an_edited_and_resealed_record_breaks_the_link_of_the_next() {
    let (mut ls, public) = signed_log();
    ls[4] = reseal(&ls[4], |c| {
        c.replace("\"decision\":\"allow\"", "\"decision\":\"deny\"")
    });
    assert_eq!(damage_of(&ls, &public), (DamageKind::ChainBroken, Some(6)));
}

#[test]
fn a_deleted_record_is_named() {
    let (mut ls, public) = signed_log();
    ls.remove(6);
    assert_eq!(damage_of(&ls, &public), (DamageKind::Deleted, Some(7)));
}

#[test]
fn an_inserted_record_is_named_even_when_it_is_well_formed() {
    let (mut ls, public) = signed_log();
    // A forged record 7 that links to record 6, inserted before the real record 7.
    let prev = field(&ls[5], "hash").as_str().unwrap().to_string();
    let orig_prev = field(&ls[6], "prev").as_str().unwrap().to_string();
    assert_eq!(prev, orig_prev);
    let forged = reseal(&ls[6], |c| c.replace("id-6", "id-forged"));
    ls.insert(6, forged);
    assert_eq!(damage_of(&ls, &public), (DamageKind::Inserted, Some(7)));
    // A plain duplicate is caught the same way.
    let (mut ls, public) = signed_log();
    let dup = ls[3].clone();
    ls.insert(4, dup);
    assert_eq!(damage_of(&ls, &public), (DamageKind::Inserted, Some(4)));
}

#[test]
fn reordered_records_are_named() {
    let (mut ls, public) = signed_log();
    ls.swap(2, 3);
    assert_eq!(damage_of(&ls, &public), (DamageKind::Reordered, Some(4)));
}

#[test]
fn a_truncation_is_caught_mid_record_and_before_an_anchored_checkpoint() {
    let (ls, public) = signed_log();
    // Cut in the middle of a record.
    let mut text = join(&ls[..15]);
    text.push_str(&ls[15][..20]);
    let o = check(&text, Some(&public));
    assert_eq!(o.damage.unwrap().kind, DamageKind::Truncated);
    // Cut cleanly before the last checkpoint (seq 44): the files alone look fine...
    let last_cp = ls
        .iter()
        .rev()
        .find(|l| field(l, "kind") == "checkpoint")
        .unwrap();
    let anchor = (
        field(last_cp, "seq").as_u64().unwrap(),
        field(last_cp, "hash").as_str().unwrap().to_string(),
    );
    let cut = join(&ls[..30]);
    let plain = check(&cut, Some(&public));
    assert!(plain.ok());
    assert!(plain.to_string().contains("cannot be detected"), "{plain}");
    // ...and the anchor the proxy logged says what is missing.
    let o = check_files(
        &[("audit.log", cut.as_bytes())],
        Some(&public),
        Some(anchor.clone()),
    );
    let d = o.damage.unwrap();
    assert_eq!((d.kind, d.seq), (DamageKind::MissingAnchor, Some(anchor.0)));
    let whole = join(&ls);
    assert!(check_files(
        &[("audit.log", whole.as_bytes())],
        Some(&public),
        Some(anchor)
    )
    .ok());
}

#[test]
fn an_earlier_file_cut_short_is_caught_at_the_next_file() {
    let (ls, public) = signed_log();
    let (a, b) = (join(&ls[..20]), join(&ls[25..]));
    let o = check_files(
        &[("audit.log.1", a.as_bytes()), ("audit.log", b.as_bytes())],
        Some(&public),
        None,
    );
    let d = o.damage.unwrap();
    assert_eq!((d.kind, d.seq), (DamageKind::Truncated, Some(21)));
    assert_eq!(d.file, "audit.log");
    let (a, b) = (join(&ls[..20]), join(&ls[20..]));
    assert!(check_files(
        &[("audit.log.1", a.as_bytes()), ("audit.log", b.as_bytes())],
        Some(&public),
        None
    )
    .ok());
}

#[test]
fn a_garbage_line_is_malformed() {
    let (mut ls, public) = signed_log();
    ls[8] = "{\"seq\":9,\"oops\"".into();
    assert_eq!(damage_of(&ls, &public).0, DamageKind::Malformed);
    let (mut ls, public) = signed_log();
    ls.push("garbage".into());
    assert_eq!(damage_of(&ls, &public).0, DamageKind::Malformed);
}

fn file_settings(path: &Path, rotation: Rotation) -> (AuditSettings, AuditPublicKey) {
    let (mut s, public) = keyed(0);
    s.sink = AuditSink::File(path.to_path_buf());
    s.rotation = rotation;
    s.fsync_interval = Some(Duration::ZERO);
    (s, public)
}

fn read_all(files: &[std::path::PathBuf]) -> Vec<(String, Vec<u8>)> {
    files
        .iter()
        .map(|f| (f.display().to_string(), std::fs::read(f).unwrap()))
        .collect()
}

fn check_paths(files: &[std::path::PathBuf], public: &AuditPublicKey) -> verify::Outcome {
    let data = read_all(files);
    let refs: Vec<(&str, &[u8])> = data
        .iter()
        .map(|(n, d)| (n.as_str(), d.as_slice()))
        .collect();
    check_files(&refs, Some(public), None)
}

#[test]
fn rotation_by_size_keeps_the_chain_and_retention_keeps_the_newest_files() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("audit.log");
    let (s, public) = file_settings(
        &path,
        Rotation {
            max_bytes: Some(4096),
            max_age: None,
            retain: 3,
        },
    );
    let log = AuditLog::start(&s).unwrap();
    for i in 0..200 {
        log.emit(request(i));
        if i % 10 == 0 {
            assert!(log.sync(WAIT));
        }
    }
    assert!(log.close(WAIT));
    let rotated = rotated_files(&path);
    assert_eq!(rotated.len(), 3, "{rotated:?}");
    assert!(log.stats().unwrap().rotations() > 3);
    let mut all = rotated.clone();
    all.push(path.clone());
    let o = check_paths(&all, &public);
    assert!(o.ok(), "{o}");
    assert!(o.first_seq.unwrap() > 1);
    assert!(
        o.to_string().contains("earlier records were not given"),
        "{o}"
    );
    // Each rotated file ends in a checkpoint; the next begins with a marker naming it.
    for (i, f) in rotated.iter().enumerate() {
        let text = std::fs::read_to_string(f).unwrap();
        let last = text.lines().last().unwrap();
        assert_eq!(field(last, "kind"), "checkpoint");
        assert_eq!(field(last, "reason"), "rotation");
        let next = all[i + 1].clone();
        let first = std::fs::read_to_string(&next).unwrap();
        let first = first.lines().next().unwrap().to_string();
        assert_eq!(field(&first, "kind"), "rotation");
        assert_eq!(
            field(&first, "previous_file"),
            f.file_name().unwrap().to_str().unwrap()
        );
        assert_eq!(field(&first, "prev"), field(last, "hash"));
        let first_seq = field(text.lines().next().unwrap(), "seq").as_u64().unwrap();
        assert_eq!(*f, rotated_name(&path, first_seq));
    }
    // Files out of order do not verify.
    let mut swapped = all.clone();
    swapped.swap(0, 1);
    assert!(!check_paths(&swapped, &public).ok());
}

#[test]
fn a_restart_continues_the_chain_and_a_torn_tail_is_recovered_not_rewritten() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("audit.log");
    let (s, public) = file_settings(&path, Rotation::default());
    let log = AuditLog::start(&s).unwrap();
    for i in 0..5 {
        log.emit(request(i));
    }
    assert!(log.close(WAIT));
    drop(log);
    // A crash mid-write leaves half a record.
    let torn = "{\"seq\":7,\"time\":\"2026-";
    std::fs::OpenOptions::new()
        .append(true)
        .open(&path)
        .unwrap()
        .write_all(torn.as_bytes())
        .unwrap();
    let log = AuditLog::start(&s).unwrap();
    for i in 5..8 {
        log.emit(request(i));
    }
    assert!(log.close(WAIT));
    let text = std::fs::read_to_string(&path).unwrap();
    assert!(
        text.contains(&format!("{torn}\n")),
        "the torn bytes stay as they were"
    );
    let recovery = text
        .lines()
        .find(|l| l.contains("\"kind\":\"recovery\""))
        .unwrap();
    assert_eq!(field(recovery, "seq"), 7);
    assert_eq!(field(recovery, "torn_bytes"), torn.len());
    let o = check(&text, Some(&public));
    assert!(o.ok(), "{o}");
    assert!(o.to_string().contains("torn record"), "{o}");
    assert_eq!(o.last_seq, Some(11));
    // An unreadable last line is refused at start rather than guessed around.
    std::fs::write(&path, "not a record\n").unwrap();
    let e = AuditLog::start(&s).err().unwrap();
    assert!(
        e.to_string().contains("cannot continue the audit chain"),
        "{e}"
    );
}

#[test]
fn a_failing_output_is_retried_without_losing_or_resealing_a_record() {
    let sink = Sink::default();
    let mut s = settings();
    s.queue_full = QueueFull::Refuse;
    let log = AuditLog::start_with_writer(&s, Box::new(sink.clone())).unwrap();
    log.emit(request(0));
    assert!(log.sync(WAIT));
    sink.fail.store(true, Ordering::SeqCst);
    log.emit(request(1));
    let deadline = std::time::Instant::now() + WAIT;
    while !log.stats().unwrap().failing() {
        assert!(std::time::Instant::now() < deadline);
        std::thread::sleep(Duration::from_millis(5));
    }
    assert!(!log.healthy());
    assert!(
        log.refusing(),
        "refuse policy refuses while the output fails"
    );
    assert!(log.stats().unwrap().write_errors() >= 1);
    log.emit(request(2));
    sink.fail.store(false, Ordering::SeqCst);
    assert!(log.sync(WAIT));
    assert!(log.healthy() && !log.refusing());
    let o = check(&sink.text(), None);
    assert!(o.ok(), "{o}");
    assert_eq!(o.records, 3);
}

/// Waits until the writer is stuck in a held write, then fills the queue.
fn stall(sink: &Sink, log: &AuditLog) {
    sink.hold();
    log.emit(request(0));
    let deadline = std::time::Instant::now() + WAIT;
    while !sink.waiting.load(Ordering::SeqCst) {
        assert!(std::time::Instant::now() < deadline);
        std::thread::sleep(Duration::from_millis(2));
    }
    while log.queue_depth().0 < log.queue_depth().1 {
        log.emit(request(1));
    }
}

#[test]
fn the_drop_policy_counts_and_reports_dropped_records_in_the_next_record() {
    let sink = Sink::default();
    let mut s = settings();
    s.queue_capacity = 4;
    s.queue_full = QueueFull::Drop;
    let log = AuditLog::start_with_writer(&s, Box::new(sink.clone())).unwrap();
    stall(&sink, &log);
    for i in 0..3 {
        log.emit(request(100 + i));
    }
    assert_eq!(log.stats().unwrap().dropped(), 3);
    assert!(!log.refusing(), "drop never refuses");
    sink.release();
    assert!(log.sync(WAIT));
    log.emit(request(200));
    assert!(log.sync(WAIT));
    let text = sink.text();
    let reported: u64 = lines(&text)
        .iter()
        .filter_map(|l| field(l, "dropped_before").as_u64())
        .sum();
    assert_eq!(reported, 3);
    assert!(check(&text, None).ok());
}

#[test]
fn the_refuse_policy_refuses_when_full_but_still_records_admitted_requests() {
    let sink = Sink::default();
    let mut s = settings();
    s.queue_capacity = 4;
    s.queue_full = QueueFull::Refuse;
    let log = AuditLog::start_with_writer(&s, Box::new(sink.clone())).unwrap();
    stall(&sink, &log);
    assert!(log.refusing());
    // A refusal's own record is best effort when the queue is full...
    log.emit(Record::Request(Box::new(RequestRecord {
        reason: Some(UNAVAILABLE_REASON),
        ..RequestRecord::default()
    })));
    assert_eq!(log.stats().unwrap().dropped(), 1);
    // ...while an admitted request waits for room.
    let admitted = {
        let log = log.clone();
        std::thread::spawn(move || log.emit(request(300)))
    };
    std::thread::sleep(Duration::from_millis(50));
    assert!(
        !admitted.is_finished(),
        "an admitted request blocks for its record"
    );
    sink.release();
    admitted.join().unwrap();
    assert!(log.sync(WAIT));
    let text = sink.text();
    assert!(text.contains("\"interaction_id\":\"id-300\""));
    assert!(check(&text, None).ok());
}

#[test]
fn many_threads_emitting_at_once_leave_exactly_one_record_each_in_one_chain() {
    let sink = Sink::default();
    let (mut s, public) = keyed(7);
    s.queue_capacity = 8;
    let log = AuditLog::start_with_writer(&s, Box::new(sink.clone())).unwrap();
    let threads: Vec<_> = (0..8)
        .map(|t| {
            let log = log.clone();
            std::thread::spawn(move || {
                for i in 0..250 {
                    log.emit(request(t * 1000 + i));
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    assert!(log.close(WAIT));
    let text = sink.text();
    let o = check(&text, Some(&public));
    assert!(o.ok(), "{o}");
    let ids: std::collections::HashSet<String> = lines(&text)
        .iter()
        .filter(|l| field(l, "kind") == "request")
        .map(|l| field(l, "interaction_id").as_str().unwrap().to_string())
        .collect();
    assert_eq!(ids.len(), 2000);
}

#[test]
fn event_times_are_written_as_the_time_crate_writes_rfc3339() {
    use time::format_description::well_known::Rfc3339;
    let cases: [(u64, u32); 7] = [
        (0, 0),
        (1_796_223_845, 0),
        (1_796_223_845, 1),
        (1_796_223_845, 120_000_000),
        (1_796_223_845, 999_999_999),
        (1_796_223_846, 450_000),
        (4_102_444_799, 10),
    ];
    for (secs, nanos) in cases {
        let mut ours = b"x".to_vec();
        super::push_rfc3339(&mut ours, secs, nanos);
        let expected = time::OffsetDateTime::from_unix_timestamp_nanos(
            i128::from(secs) * 1_000_000_000 + i128::from(nanos),
        )
        .unwrap()
        .format(&Rfc3339)
        .unwrap();
        assert_eq!(String::from_utf8(ours).unwrap(), format!("x{expected}"));
    }
    let now = now_rfc3339();
    assert!(time::OffsetDateTime::parse(&now, &Rfc3339).is_ok(), "{now}");
}
