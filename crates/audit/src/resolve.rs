//! Following a request record's reference to its connection: the one place readers (`audit
//! report`, the test kit, scripts through `audit report --json`) turn a request record that
//! names its connection (`"conn":N`) back into the inline form, with `conn_id` and the
//! connection's members (`listener`, `host`, `peer`, `tls_version`, `cipher`, `client_cert_*`).
//!
//! Invariants:
//! - References resolve within one file: call [`Connections::new_file`] between files. The
//!   writer puts a connection's record before its first request in every file.
//! - A request refers to the latest `connection` record of its id before it in the file (a
//!   restarted proxy numbers its connections from 1 again, and the writer may repeat a record).
//! - Memory grows with the connections of one file, not with its records.

use std::collections::HashMap;

use serde_json::{Map, Value};

/// Members of a `connection` record that are its frame, not facts of the connection.
const FRAME: [&str; 6] = ["seq", "time", "kind", "prev", "hash", "dropped_before"];

/// The connection records seen so far in the current file.
#[derive(Default)]
pub struct Connections {
    seen: HashMap<u64, Map<String, Value>>,
}

/// A request names a connection whose record is not before it in the file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Dangling(pub u64);

impl Connections {
    /// Forgets the connections of the previous file.
    pub fn new_file(&mut self) {
        self.seen.clear();
    }

    /// Remembers `v` when it is a `connection` record (and says so).
    pub fn observe(&mut self, v: &Value) -> bool {
        if v.get("kind").and_then(Value::as_str) != Some("connection") {
            return false;
        }
        if let (Some(id), Some(obj)) = (v.get("conn_id").and_then(Value::as_u64), v.as_object()) {
            let facts = obj
                .iter()
                .filter(|(k, _)| !FRAME.contains(&k.as_str()))
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect();
            self.seen.insert(id, facts);
        }
        true
    }

    /// Replaces `"conn":N` in `v` with the members of connection N's record (`conn_id`
    /// included); a record without `conn` is left as it is.
    pub fn inline(&self, v: &mut Value) -> Result<(), Dangling> {
        let Some(obj) = v.as_object_mut() else {
            return Ok(());
        };
        let Some(r) = obj.get("conn") else {
            return Ok(());
        };
        let id = r.as_u64().ok_or(Dangling(0))?;
        let facts = self.seen.get(&id).ok_or(Dangling(id))?;
        obj.remove("conn");
        for (k, val) in facts {
            obj.insert(k.clone(), val.clone());
        }
        Ok(())
    }

    /// Whether connection `id` has a record in the current file.
    pub fn has(&self, id: u64) -> bool {
        self.seen.contains_key(&id)
    }
}

/// The records of one file in the inline form: connection records are folded into the
/// requests that name them and left out. A dangling reference leaves the request as it is.
pub fn inline_file(records: Vec<Value>) -> Vec<Value> {
    let mut conns = Connections::default();
    records
        .into_iter()
        .filter_map(|mut v| {
            if conns.observe(&v) {
                return None;
            }
            let _ = conns.inline(&mut v);
            Some(v)
        })
        .collect()
}
