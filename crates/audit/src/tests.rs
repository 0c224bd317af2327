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

/// A request on connection `conn`, whose facts are encoded once as the proxy does.
fn request_on(i: usize, conn: u64, members: &Arc<str>) -> Record {
    Record::Request(Box::new(RequestRecord {
        interaction_id: format!("id-{i}"),
        conn_id: conn,
        conn_members: Some(Arc::clone(members)),
        http_version: "HTTP/2",
        path: "/open-banking/v3.1/aisp/accounts".into(),
        decision: "allow",
        status: 200,
        ..RequestRecord::default()
    }))
}

/// The facts of connection `conn`, with a client certificate's members as the proxy adds them.
fn facts(conn: u64) -> Arc<str> {
    let m = connection_members(&ConnectionFacts {
        local: "127.0.0.1:8443".parse().unwrap(),
        peer: format!("10.0.0.{conn}:5000").parse().unwrap(),
        host: "api.bank.example",
        tls_version: "TLSv1.3",
        cipher: "TLS13_AES_128_GCM_SHA256",
        client_cert: None,
    });
    format!(
        "{m},\"client_cert_thumbprint\":\"T{conn}\",\"client_subject\":\"CN=tpp{conn}\",\"client_org_id\":\"ORG{conn}\",\"client_cert_not_after\":\"2030-01-01T00:00:00Z\""
    )
    .into()
}

fn json_lines(text: &str) -> Vec<serde_json::Value> {
    text.lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

#[test]
fn a_request_names_its_connection_whose_record_is_written_once_before_it() {
    let sink = Sink::default();
    let log = AuditLog::start_with_writer(&settings(), Box::new(sink.clone())).unwrap();
    let (a, b) = (facts(1), facts(2));
    for i in 0..10 {
        log.emit(request_on(
            i,
            1 + (i as u64 % 2),
            if i % 2 == 0 { &a } else { &b },
        ));
    }
    assert!(log.close(WAIT));
    let recs = json_lines(&sink.text());
    let conns: Vec<&serde_json::Value> =
        recs.iter().filter(|r| r["kind"] == "connection").collect();
    assert_eq!(conns.len(), 2, "one connection record per connection");
    assert_eq!(conns[0]["conn_id"], 1);
    assert_eq!(conns[0]["peer"], "10.0.0.1:5000");
    assert_eq!(conns[0]["cipher"], "TLS13_AES_128_GCM_SHA256");
    assert_eq!(conns[0]["listener"], "127.0.0.1:8443");
    let first = recs.iter().position(|r| r["kind"] == "request").unwrap();
    assert_eq!(
        recs[first - 1]["kind"],
        "connection",
        "written just before its first request"
    );
    for r in recs.iter().filter(|r| r["kind"] == "request") {
        assert!(r["conn"].is_u64(), "{r}");
        for inline in ["conn_id", "peer", "tls_version", "cipher", "listener"] {
            assert!(r.get(inline).is_none(), "{inline} inline: {r}");
        }
    }
    assert!(check(&sink.text(), None).ok());

    // The inline form (`connection_records: false`) is the format before, and resolving the
    // reference gives it back member for member.
    let old = Sink::default();
    let mut s = settings();
    s.connection_records = false;
    let log = AuditLog::start_with_writer(&s, Box::new(old.clone())).unwrap();
    for i in 0..10 {
        log.emit(request_on(
            i,
            1 + (i as u64 % 2),
            if i % 2 == 0 { &a } else { &b },
        ));
    }
    assert!(log.close(WAIT));
    let before = json_lines(&old.text());
    assert!(before.iter().all(|r| r["kind"] != "connection"));
    let after = resolve::inline_file(recs);
    let strip = |v: &serde_json::Value| {
        let mut v = v.clone();
        for k in ["seq", "time", "prev", "hash"] {
            v.as_object_mut().unwrap().remove(k);
        }
        v
    };
    assert_eq!(before.len(), after.len());
    for (x, y) in before.iter().zip(&after) {
        assert_eq!(strip(x), strip(y));
    }
}

#[test]
fn every_rotated_file_holds_the_connection_records_of_its_requests_and_verifies_alone() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("audit.log");
    let (s, public) = file_settings(
        &path,
        Rotation {
            max_bytes: Some(4096),
            max_age: None,
            retain: 0,
        },
    );
    let log = AuditLog::start(&s).unwrap();
    // One long-lived connection and a second one, across many files.
    let (a, b) = (facts(7), facts(8));
    for i in 0..120 {
        log.emit(request_on(
            i,
            if i % 5 == 0 { 8 } else { 7 },
            if i % 5 == 0 { &b } else { &a },
        ));
        if i % 10 == 0 {
            assert!(log.sync(WAIT));
        }
    }
    assert!(log.close(WAIT));
    let mut all = rotated_files(&path);
    all.push(path.clone());
    assert!(all.len() >= 4, "{all:?}");
    assert!(check_paths(&all, &public).ok());
    for f in &all {
        let o = check_paths(std::slice::from_ref(f), &public);
        assert!(o.ok(), "{} alone: {o}", f.display());
        let recs = json_lines(&std::fs::read_to_string(f).unwrap());
        let mut seen = std::collections::HashMap::new();
        for r in &recs {
            if r["kind"] == "connection" {
                *seen.entry(r["conn_id"].as_u64().unwrap()).or_insert(0) += 1;
            }
            if let Some(c) = r["conn"].as_u64() {
                assert!(seen.contains_key(&c), "{}: {r}", f.display());
            }
        }
        assert!(seen.values().all(|&n| n == 1), "{}: {seen:?}", f.display());
    }
}

#[test]
fn a_removed_connection_record_fails_verify_even_when_the_chain_is_rewritten() {
    let sink = Sink::default();
    let log = AuditLog::start_with_writer(&settings(), Box::new(sink.clone())).unwrap();
    let a = facts(3);
    log.emit(Record::TlsHandshake(HandshakeRecord {
        peer: "10.0.0.9:1".into(),
        failure: "no_client_cert",
    }));
    for i in 0..4 {
        log.emit(request_on(i, 3, &a));
    }
    assert!(log.close(WAIT));
    let ls = lines(&sink.text());
    let at = ls
        .iter()
        .position(|l| field(l, "kind") == "connection")
        .unwrap();
    assert!(at > 0);
    // Cut out: the chain says so.
    let mut cut = ls.clone();
    cut.remove(at);
    let o = check(&join(&cut), None);
    assert_eq!(o.damage.unwrap().kind, DamageKind::Deleted);
    // Cut out where it was the first record of a file: the chain alone cannot tell (a log may
    // start after seq 1 when older files were rotated away), the dangling reference can.
    let o = check(&join(&ls[at + 1..]), None);
    assert_eq!(o.damage.unwrap().kind, DamageKind::DanglingReference);
    // Cut out and every later record renumbered and re-sealed (no checkpoint key to stop it):
    // the dangling reference still says so.
    let mut prev = field(&ls[at], "prev").as_str().unwrap().to_string();
    let mut forged = ls[..at].to_vec();
    for l in &ls[at + 1..] {
        let seq = field(l, "seq").as_u64().unwrap() - 1;
        let old_seq = format!("{{\"seq\":{},", seq + 1);
        let old_prev = format!(",\"prev\":\"{}\"}}", field(l, "prev").as_str().unwrap());
        let p = prev.clone();
        let line = reseal(l, |c| {
            c.replace(&old_seq, &format!("{{\"seq\":{seq},"))
                .replace(&old_prev, &format!(",\"prev\":\"{p}\"}}"))
        });
        prev = field(&line, "hash").as_str().unwrap().to_string();
        forged.push(line);
    }
    let o = check(&join(&forged), None);
    let d = o.damage.clone().expect("damage");
    assert_eq!(d.kind, DamageKind::DanglingReference, "{o}");
    assert!(d.detail.contains("names connection 3"), "{}", d.detail);
    // The chain split into two files after the first request: the chain holds across them,
    // but the second file's requests have no connection record in their file.
    let req = ls
        .iter()
        .position(|l| field(l, "kind") == "request")
        .unwrap();
    let (first, second) = ls.split_at(req + 1);
    let o = check_files(
        &[
            ("a", join(first).as_bytes()),
            ("b", join(second).as_bytes()),
        ],
        None,
        None,
    );
    let d = o.damage.expect("damage");
    assert_eq!(
        (d.kind, d.file.as_str(), d.line),
        (DamageKind::DanglingReference, "b", 1)
    );
}

#[test]
fn the_report_is_the_same_for_a_log_with_connection_records_and_one_with_the_facts_inline() {
    let mut logs = Vec::new();
    for by_ref in [false, true] {
        let sink = Sink::default();
        let mut s = settings();
        s.connection_records = by_ref;
        let log = AuditLog::start_with_writer(&s, Box::new(sink.clone())).unwrap();
        let (a, b) = (facts(1), facts(2));
        for i in 0..20 {
            log.emit(request_on(
                i,
                1 + (i as u64 % 2),
                if i % 2 == 0 { &a } else { &b },
            ));
        }
        assert!(log.close(WAIT));
        logs.push(sink.text());
    }
    let report = |t: &str| {
        let mut v = serde_json::to_value(report::build(&[t.as_bytes()], None)).unwrap();
        // The requests were made twice, at different times.
        for c in v["clients"].as_array_mut().unwrap() {
            c.as_object_mut().unwrap().remove("first_seen");
            c.as_object_mut().unwrap().remove("last_seen");
        }
        v
    };
    assert_eq!(report(&logs[0]), report(&logs[1]));
    let r = report(&logs[1]);
    assert_eq!(r["records"], 20);
    assert_eq!(r["clients"].as_array().unwrap().len(), 2, "{r}");
    assert_eq!(r["clients"][0]["thumbprint"], "T1");
}
