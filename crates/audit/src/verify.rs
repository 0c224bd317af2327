//! `portcullis audit verify`: checks the hash chain and the signed checkpoints of an audit log
//! across its files, and names the first damaged record and the kind of damage.
//!
//! What it proves: every record up to the last valid checkpoint is exactly as the writer
//! wrote it, in order, with none missing or added — an edited, deleted, inserted or reordered
//! record, a truncated earlier file or a torn record all break the chain or a signature, and
//! a checkpoint cannot be forged without the audit key.
//!
//! What it cannot prove, and says so: records after the last checkpoint are chained but not
//! signed, so whoever can write the file could cut them off (tail truncation) or rewrite them
//! consistently. A truncation back past an earlier checkpoint is visible only against an
//! external copy of a newer one: the proxy logs each checkpoint's `seq` and `hash` (tracing,
//! `audit checkpoint`), and `--anchor SEQ:HASH` fails unless the log holds that record.
//!
//! A request record that names its connection (`"conn":N`) must follow that connection's
//! `connection` record in the same file (the writer repeats connection records in each file);
//! a missing one is damage (`dangling_reference`) even when the chain holds, as it does after
//! a connection record is cut out and the rest re-chained without a signing key to stop it.
//!
//! Files are checked in the order given (rotated files first, oldest first — their names sort
//! that way — then the current file). A log may start after seq 1 when older files were
//! rotated away; its first link is then reported, not checked.

use std::collections::HashSet;
use std::fmt;
use std::path::{Path, PathBuf};

use serde::Serialize;

use super::chain::{self, AuditPublicKey, GENESIS};

/// The kinds of damage `verify` tells apart.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum DamageKind {
    /// Not a sealed JSON record.
    Malformed,
    /// The record's bytes do not match its own hash.
    Edited,
    /// The record does not link to the one before it (that one was altered and re-hashed,
    /// or replaced).
    ChainBroken,
    /// Records are missing.
    Deleted,
    /// A sequence number appears twice.
    Inserted,
    /// Records are out of order.
    Reordered,
    /// A file ends early or mid-record, or an earlier file does not reach the next one.
    Truncated,
    /// A checkpoint's signature does not verify.
    BadSignature,
    /// A checkpoint is signed by a key none of the given public keys matches.
    UnknownKey,
    /// The `--anchor` record is not in the log.
    MissingAnchor,
    /// A request names a connection whose `connection` record is not before it in its file.
    DanglingReference,
}

impl DamageKind {
    pub fn as_str(self) -> &'static str {
        match self {
            DamageKind::Malformed => "malformed",
            DamageKind::Edited => "edited",
            DamageKind::ChainBroken => "chain_broken",
            DamageKind::Deleted => "deleted",
            DamageKind::Inserted => "inserted",
            DamageKind::Reordered => "reordered",
            DamageKind::Truncated => "truncated",
            DamageKind::BadSignature => "bad_signature",
            DamageKind::UnknownKey => "unknown_key",
            DamageKind::MissingAnchor => "missing_anchor",
            DamageKind::DanglingReference => "dangling_reference",
        }
    }
}

/// The first damage found.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Damage {
    pub kind: DamageKind,
    /// The sequence number of the first bad record, when it can be read or inferred.
    pub seq: Option<u64>,
    pub file: String,
    /// 1-based line in `file`.
    pub line: u64,
    pub detail: String,
}

/// A checkpoint that verified.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct CheckpointSeen {
    pub seq: u64,
    pub hash: String,
    pub time: String,
    pub reason: String,
}

/// What `verify` found.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Outcome {
    pub files: usize,
    pub records: u64,
    pub first_seq: Option<u64>,
    pub last_seq: Option<u64>,
    pub checkpoints: u64,
    /// Whether checkpoint signatures were checked (false with `--no-signatures`).
    pub signatures_checked: bool,
    pub last_checkpoint: Option<CheckpointSeen>,
    /// Records after the last checkpoint: chained, not signed.
    pub unsigned_tail: u64,
    pub damage: Option<Damage>,
    pub notes: Vec<String>,
}

impl Outcome {
    pub fn ok(&self) -> bool {
        self.damage.is_none()
    }
}

/// How to verify.
#[derive(Clone, Debug, Default)]
pub struct Options {
    pub keys: Vec<AuditPublicKey>,
    /// Check signatures (a key is then required for every checkpoint).
    pub check_signatures: bool,
    /// `(seq, hash)` of a record the log must contain.
    pub anchor: Option<(u64, String)>,
}

/// Parses `SEQ:HASH`.
pub fn parse_anchor(s: &str) -> Option<(u64, String)> {
    let (seq, hash) = s.split_once(':')?;
    let seq = seq.parse().ok()?;
    (hash.len() == chain::HASH_LEN).then(|| (seq, hash.to_string()))
}

/// Reads the `seq` of a line cheaply (`{"seq":N,` prefix), without a full parse.
fn quick_seq(line: &[u8]) -> Option<u64> {
    let rest = line.strip_prefix(b"{\"seq\":")?;
    let end = rest.iter().position(|b| !b.is_ascii_digit())?;
    std::str::from_utf8(&rest[..end]).ok()?.parse().ok()
}

struct Line<'a> {
    bytes: &'a [u8],
    /// Whether the line ended with a newline.
    complete: bool,
}

fn lines(data: &[u8]) -> Vec<Line<'_>> {
    let mut out = Vec::new();
    let mut rest = data;
    while !rest.is_empty() {
        match rest.iter().position(|&b| b == b'\n') {
            Some(i) => {
                out.push(Line {
                    bytes: &rest[..i],
                    complete: true,
                });
                rest = &rest[i + 1..];
            }
            None => {
                out.push(Line {
                    bytes: rest,
                    complete: false,
                });
                rest = &[];
            }
        }
    }
    out
}

struct State<'o> {
    opts: &'o Options,
    out: Outcome,
    expected: Option<u64>,
    prev: Option<String>,
    all_seqs: HashSet<u64>,
    anchor_found: bool,
    /// Length of a malformed line that a `recovery` record may account for.
    torn: Option<(u64, String, u64)>,
    /// Connections whose `connection` record the current file has shown so far.
    conns: HashSet<u64>,
}

/// Verifies `files` in order. Files are read twice, one at a time (a first pass collects the
/// sequence numbers, to tell a reordering from a deletion), so memory holds one file and one
/// number per record.
pub fn verify_files(files: &[PathBuf], opts: &Options) -> std::io::Result<Outcome> {
    let mut all_seqs = HashSet::new();
    for f in files {
        let data = std::fs::read(f)?;
        all_seqs.extend(lines(&data).into_iter().filter_map(|l| quick_seq(l.bytes)));
    }
    let mut st = State::new(opts, files.len(), all_seqs);
    for (fi, f) in files.iter().enumerate() {
        let data = std::fs::read(f)?;
        if !st.file(&f.display().to_string(), &data, fi, files.len()) {
            break;
        }
    }
    Ok(st.finish(files.last().map(|p| p.display().to_string())))
}

/// Verifies files already in memory, in order.
pub fn verify_bytes(files: &[(&Path, &[u8])], opts: &Options) -> Outcome {
    let all_seqs = files
        .iter()
        .flat_map(|(_, d)| lines(d).into_iter().filter_map(|l| quick_seq(l.bytes)))
        .collect();
    let mut st = State::new(opts, files.len(), all_seqs);
    for (fi, (path, data)) in files.iter().enumerate() {
        if !st.file(&path.display().to_string(), data, fi, files.len()) {
            break;
        }
    }
    st.finish(files.last().map(|(p, _)| p.display().to_string()))
}

type At<'a> = (&'a str, u64, bool);

fn damage(kind: DamageKind, seq: Option<u64>, at: At<'_>, detail: impl Into<String>) -> Damage {
    Damage {
        kind,
        seq,
        file: at.0.to_string(),
        line: at.1,
        detail: detail.into(),
    }
}

impl<'o> State<'o> {
    fn new(opts: &'o Options, files: usize, all_seqs: HashSet<u64>) -> State<'o> {
        State {
            opts,
            out: Outcome {
                files,
                signatures_checked: opts.check_signatures,
                ..Outcome::default()
            },
            expected: None,
            prev: None,
            all_seqs,
            anchor_found: false,
            torn: None,
            conns: HashSet::new(),
        }
    }

    /// Checks one file (index `fi` of `count`); false once damage is found.
    fn file(&mut self, name: &str, data: &[u8], fi: usize, count: usize) -> bool {
        let last_file = fi + 1 == count;
        // References resolve within a file: each file carries its own connection records.
        self.conns.clear();
        for (li, line) in lines(data).iter().enumerate() {
            let at = (name, li as u64 + 1, fi > 0 && li == 0);
            if let Err(d) = self.line(line, at, last_file) {
                self.out.damage = Some(d);
                return false;
            }
        }
        true
    }

    fn line(&mut self, line: &Line<'_>, at: At<'_>, last_file: bool) -> Result<(), Damage> {
        let guess = self.expected;
        if !line.complete {
            let detail = if last_file {
                "the file ends in an incomplete record (a torn write, or truncation; a log being written may show this briefly)"
            } else {
                "the file ends in an incomplete record before the next file (truncated)"
            };
            return Err(damage(DamageKind::Truncated, guess, at, detail));
        }
        let sealed = chain::split_hash(line.bytes);
        let parsed: Option<serde_json::Value> = serde_json::from_slice(line.bytes).ok();
        let fields = parsed.as_ref().and_then(|v| {
            Some((
                v,
                v.get("seq")?.as_u64()?,
                v.get("prev")?.as_str()?,
                v.get("kind")?.as_str()?,
            ))
        });
        let (Some((prefix, hash)), Some((v, seq, prev, kind))) = (sealed, fields) else {
            if self.torn.is_none() {
                // Maybe a torn write that the writer recovered from on restart: the next
                // record then says so.
                self.torn = Some((line.bytes.len() as u64, at.0.to_string(), at.1));
                return Ok(());
            }
            return Err(damage(
                DamageKind::Malformed,
                guess,
                at,
                "the line is not a sealed audit record",
            ));
        };
        if let Some((len, file, line_no)) = self.torn.take() {
            let accounted =
                kind == "recovery" && v.get("torn_bytes").and_then(|t| t.as_u64()) == Some(len);
            if !accounted {
                return Err(damage(
                    DamageKind::Malformed,
                    guess,
                    (&file, line_no, false),
                    "the line is not a sealed audit record",
                ));
            }
            self.out.notes.push(format!(
                "{file} line {line_no}: a torn record of {len} bytes (a crash during a write), recovered by the writer at seq {seq}"
            ));
        }
        if chain::hash_of(prefix) != hash {
            return Err(damage(
                DamageKind::Edited,
                Some(seq),
                at,
                format!("record {seq} does not match its hash: its bytes were changed"),
            ));
        }
        match self.expected {
            None => {
                if seq == 1 && prev != GENESIS {
                    return Err(damage(
                        DamageKind::ChainBroken,
                        Some(seq),
                        at,
                        "record 1 does not start from the genesis hash",
                    ));
                }
                if seq > 1 {
                    self.out.notes.push(format!(
                        "the log starts at seq {seq}: earlier records were not given (rotated away?), so its link to them is not checked"
                    ));
                }
            }
            Some(exp) if seq == exp => {
                if self.prev.as_deref() != Some(prev) {
                    return Err(damage(
                        DamageKind::ChainBroken,
                        Some(seq),
                        at,
                        format!(
                            "record {seq} does not link to record {}: that record was altered and re-hashed, or replaced",
                            seq - 1
                        ),
                    ));
                }
            }
            Some(exp) if seq > exp => {
                // The first record of the gap that appears elsewhere: scan the records there
                // are, not the gap (a forged seq near u64::MAX would make that endless).
                let moved = self
                    .all_seqs
                    .iter()
                    .copied()
                    .filter(|s| (exp..seq).contains(s))
                    .min();
                return Err(match moved {
                    Some(s) => damage(
                        DamageKind::Reordered,
                        Some(seq),
                        at,
                        format!("record {seq} comes where {exp} was expected; record {s} appears later"),
                    ),
                    None if at.2 => damage(
                        DamageKind::Truncated,
                        Some(exp),
                        at,
                        format!(
                            "the previous file ends at record {}, this one starts at {seq}: records {exp}..{} are missing (the earlier file was truncated or a file is missing)",
                            exp - 1,
                            seq - 1
                        ),
                    ),
                    None => damage(
                        DamageKind::Deleted,
                        Some(exp),
                        at,
                        format!("records {exp}..{} are missing", seq - 1),
                    ),
                });
            }
            Some(_) => {
                return Err(damage(
                    DamageKind::Inserted,
                    Some(seq),
                    at,
                    format!(
                        "record {seq} appears again: a record was inserted, duplicated or moved"
                    ),
                ));
            }
        }
        let Some(next) = seq.checked_add(1) else {
            return Err(damage(
                DamageKind::Malformed,
                Some(seq),
                at,
                format!(
                    "record {seq} has the largest sequence number there is; no writer reaches it"
                ),
            ));
        };
        self.reference(v, kind, seq, at)?;
        if kind == "checkpoint" {
            self.checkpoint(v, prefix, seq, hash, at)?;
        } else {
            self.out.unsigned_tail += 1;
        }
        if let Some((aseq, ahash)) = &self.opts.anchor {
            if *aseq == seq {
                if ahash != hash {
                    return Err(damage(
                        DamageKind::MissingAnchor,
                        Some(seq),
                        at,
                        format!("record {seq} has hash {hash}, the anchor says {ahash}"),
                    ));
                }
                self.anchor_found = true;
            }
        }
        self.out.records += 1;
        self.out.first_seq.get_or_insert(seq);
        self.out.last_seq = Some(seq);
        self.expected = Some(next);
        self.prev = Some(hash.to_string());
        Ok(())
    }

    /// Remembers a `connection` record; checks that a record naming a connection follows it.
    fn reference(
        &mut self,
        v: &serde_json::Value,
        kind: &str,
        seq: u64,
        at: At<'_>,
    ) -> Result<(), Damage> {
        if kind == "connection" {
            let Some(id) = v.get("conn_id").and_then(|c| c.as_u64()) else {
                return Err(damage(
                    DamageKind::Malformed,
                    Some(seq),
                    at,
                    format!("connection record {seq} has no numeric conn_id"),
                ));
            };
            self.conns.insert(id);
            return Ok(());
        }
        let Some(r) = v.get("conn") else {
            return Ok(());
        };
        match r.as_u64() {
            Some(id) if self.conns.contains(&id) => Ok(()),
            Some(id) => Err(damage(
                DamageKind::DanglingReference,
                Some(seq),
                at,
                format!(
                    "record {seq} names connection {id}, but no connection record of {id} comes before it in {}: the connection record was removed, or the record was moved here from another file",
                    at.0
                ),
            )),
            None => Err(damage(
                DamageKind::Malformed,
                Some(seq),
                at,
                format!("record {seq} names a connection that is not a number"),
            )),
        }
    }

    fn checkpoint(
        &mut self,
        v: &serde_json::Value,
        prefix: &[u8],
        seq: u64,
        hash: &str,
        at: At<'_>,
    ) -> Result<(), Damage> {
        if self.opts.check_signatures {
            let mut canonical = prefix.to_vec();
            canonical.push(b'}');
            let Some((signed, sig)) = chain::split_sig(&canonical) else {
                return Err(damage(
                    DamageKind::BadSignature,
                    Some(seq),
                    at,
                    format!("checkpoint {seq} carries no signature"),
                ));
            };
            let key_id = v.get("key_id").and_then(|k| k.as_str()).unwrap_or("");
            let Some(key) = self.opts.keys.iter().find(|k| k.key_id() == key_id) else {
                return Err(damage(
                    DamageKind::UnknownKey,
                    Some(seq),
                    at,
                    format!("checkpoint {seq} is signed by key id {key_id}, which none of the given public keys has"),
                ));
            };
            if !key.verify(signed, sig) {
                return Err(damage(
                    DamageKind::BadSignature,
                    Some(seq),
                    at,
                    format!("the signature of checkpoint {seq} does not verify"),
                ));
            }
        }
        self.out.checkpoints += 1;
        self.out.unsigned_tail = 0;
        self.out.last_checkpoint = Some(CheckpointSeen {
            seq,
            hash: hash.to_string(),
            time: v
                .get("time")
                .and_then(|t| t.as_str())
                .unwrap_or("")
                .to_string(),
            reason: v
                .get("reason")
                .and_then(|t| t.as_str())
                .unwrap_or("")
                .to_string(),
        });
        Ok(())
    }

    fn finish(mut self, last_file: Option<String>) -> Outcome {
        if self.out.damage.is_none() {
            if let Some((len, file, line)) = self.torn.take() {
                self.out.damage = Some(damage(
                    DamageKind::Malformed,
                    self.expected,
                    (&file, line, false),
                    format!("the last line ({len} bytes) is not a sealed audit record"),
                ));
            }
        }
        if self.out.damage.is_none() {
            if let Some((seq, hash)) = &self.opts.anchor {
                if !self.anchor_found {
                    self.out.damage = Some(damage(
                        DamageKind::MissingAnchor,
                        Some(*seq),
                        (last_file.as_deref().unwrap_or(""), 0, false),
                        format!(
                            "the log does not hold the anchored record {seq} ({hash}): it was truncated back past it, or this is another log"
                        ),
                    ));
                }
            }
        }
        self.out
    }
}

impl fmt::Display for Outcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let range = match (self.first_seq, self.last_seq) {
            (Some(a), Some(b)) => format!("seq {a}..{b}"),
            _ => "no records".to_string(),
        };
        if let Some(d) = &self.damage {
            writeln!(
                f,
                "DAMAGED: {} at {}{} (line {}): {}",
                d.kind.as_str(),
                d.seq
                    .map_or("an unknown record".into(), |s| format!("seq {s}")),
                if d.file.is_empty() {
                    String::new()
                } else {
                    format!(" in {}", d.file)
                },
                d.line,
                d.detail
            )?;
            writeln!(
                f,
                "before it: {} record(s) verified ({range}), {} checkpoint(s)",
                self.records, self.checkpoints
            )?;
        } else {
            writeln!(
                f,
                "OK: {} file(s), {} record(s) ({range}), {} checkpoint(s){}",
                self.files,
                self.records,
                self.checkpoints,
                if self.signatures_checked {
                    " with valid signatures"
                } else {
                    " (signatures NOT checked: --no-signatures)"
                }
            )?;
            match &self.last_checkpoint {
                Some(c) => {
                    writeln!(
                        f,
                        "last checkpoint: seq {} ({}, {}), anchor {}:{}",
                        c.seq, c.time, c.reason, c.seq, c.hash
                    )?;
                    if self.unsigned_tail > 0 {
                        writeln!(
                            f,
                            "not covered: the {} record(s) after it are chained but not signed; whoever can write the file could cut them off (tail truncation) or rewrite them, and that cannot be detected",
                            self.unsigned_tail
                        )?;
                    }
                    writeln!(
                        f,
                        "not covered: a truncation back to this checkpoint (or an earlier one) cannot be detected from the files alone; compare with the newest `audit checkpoint` the proxy logged (--anchor SEQ:HASH)"
                    )?;
                }
                None => writeln!(
                    f,
                    "not covered: there is no signed checkpoint, so the chain shows internal consistency only; whoever can write the file could rewrite or truncate it undetected"
                )?,
            }
        }
        for n in &self.notes {
            writeln!(f, "note: {n}")?;
        }
        Ok(())
    }
}
