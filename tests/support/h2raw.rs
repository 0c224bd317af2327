//! A raw HTTP/2 client over TLS, for abuse tests: frames are written byte by byte, header
//! blocks are HPACK literals without Huffman coding (or with incremental indexing, to abuse the
//! dynamic table), and a reader task records what the server sent — GOAWAY, RST_STREAM codes,
//! which streams got HEADERS, DATA bytes per stream — without decoding the server's HPACK.
//! A refusal's reason is read from the problem+json body in DATA (which is not compressed).
#![allow(dead_code)]

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt, WriteHalf};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;

pub(crate) const DATA: u8 = 0;
pub(crate) const HEADERS: u8 = 1;
pub(crate) const PRIORITY: u8 = 2;
pub(crate) const RST_STREAM: u8 = 3;
pub(crate) const SETTINGS: u8 = 4;
pub(crate) const PING: u8 = 6;
pub(crate) const GOAWAY: u8 = 7;
pub(crate) const WINDOW_UPDATE: u8 = 8;
pub(crate) const CONTINUATION: u8 = 9;

pub(crate) const END_STREAM: u8 = 0x1;
pub(crate) const ACK: u8 = 0x1;
pub(crate) const END_HEADERS: u8 = 0x4;

pub(crate) const NO_ERROR: u32 = 0;
pub(crate) const PROTOCOL_ERROR: u32 = 1;
pub(crate) const CANCEL: u32 = 8;
pub(crate) const COMPRESSION_ERROR: u32 = 9;
pub(crate) const REFUSED_STREAM: u32 = 7;
pub(crate) const ENHANCE_YOUR_CALM: u32 = 0xb;

/// What the server sent so far.
#[derive(Debug, Default, Clone)]
pub(crate) struct Seen {
    /// Last stream id, error code and debug data of a GOAWAY.
    pub goaway: Option<(u32, u32, Vec<u8>)>,
    /// RST_STREAM error codes by stream.
    pub resets: HashMap<u32, u32>,
    /// Streams the server answered with HEADERS.
    pub headers: HashSet<u32>,
    /// The first header block fragment the server sent on each stream (HPACK, undecoded).
    pub blocks: HashMap<u32, Vec<u8>>,
    /// DATA bytes by stream.
    pub data: HashMap<u32, Vec<u8>>,
    /// Streams the server ended (END_STREAM).
    pub ended: HashSet<u32>,
    /// The server's SETTINGS (id, value).
    pub settings: Vec<(u16, u32)>,
    /// PING ACKs received.
    pub ping_acks: usize,
    /// The connection was closed (EOF or error) by the server.
    pub closed: bool,
    pub frames: usize,
}

impl Seen {
    /// The `:status` the server sent on `stream`, when its header block starts with it (as
    /// servers send it): a static-table index, or a literal with the indexed name `:status`,
    /// plain or Huffman-coded (only digits are decoded).
    pub(crate) fn status(&self, stream: u32) -> Option<u16> {
        let b = self.blocks.get(&stream)?;
        let first = *b.first()?;
        let statics = [
            (0x88, 200),
            (0x89, 204),
            (0x8a, 206),
            (0x8b, 304),
            (0x8c, 400),
        ];
        if let Some((_, s)) = statics.iter().find(|(i, _)| *i == first) {
            return Some(*s);
        }
        match first {
            0x8d => return Some(404),
            0x8e => return Some(500),
            _ => {}
        }
        if first & 0x80 != 0 || first & 0xe0 == 0x20 {
            return None; // another indexed field, or a table size update
        }
        // Literal (with or without indexing) whose name is static index 8..=14 (:status).
        let name = if first & 0xc0 == 0x40 {
            first & 0x3f
        } else {
            first & 0x0f
        };
        if !(8..=14).contains(&name) {
            return None;
        }
        let len_byte = *b.get(1)?;
        let (huff, len) = (len_byte & 0x80 != 0, (len_byte & 0x7f) as usize);
        let v = b.get(2..2 + len)?;
        let text = if huff {
            huffman_digits(v)?
        } else {
            String::from_utf8(v.to_vec()).ok()?
        };
        text.parse().ok()
    }

    /// The problem+json body the server sent on `stream`, if any.
    pub(crate) fn json(&self, stream: u32) -> serde_json::Value {
        self.data
            .get(&stream)
            .and_then(|d| serde_json::from_slice(d).ok())
            .unwrap_or(serde_json::Value::Null)
    }
}

pub(crate) struct H2 {
    w: Arc<tokio::sync::Mutex<WriteHalf<TlsStream<TcpStream>>>>,
    pub seen: Arc<Mutex<Seen>>,
    next_stream: u32,
}

/// HPACK integer with an `n`-bit prefix; `first` holds the bits above the prefix.
pub(crate) fn hpack_int(out: &mut Vec<u8>, first: u8, n: u8, v: usize) {
    let max = (1usize << n) - 1;
    if v < max {
        out.push(first | v as u8);
        return;
    }
    out.push(first | max as u8);
    let mut rest = v - max;
    while rest >= 128 {
        out.push((rest % 128) as u8 | 0x80);
        rest /= 128;
    }
    out.push(rest as u8);
}

fn hpack_str(out: &mut Vec<u8>, s: &[u8]) {
    hpack_int(out, 0, 7, s.len());
    out.extend_from_slice(s);
}

/// A literal header field without indexing, new name (RFC 7541 §6.2.2).
pub(crate) fn literal(out: &mut Vec<u8>, name: &[u8], value: &[u8]) {
    out.push(0x00);
    hpack_str(out, name);
    hpack_str(out, value);
}

/// A literal header field with incremental indexing, new name (RFC 7541 §6.2.1).
pub(crate) fn literal_indexed(out: &mut Vec<u8>, name: &[u8], value: &[u8]) {
    out.push(0x40);
    hpack_str(out, name);
    hpack_str(out, value);
}

/// An indexed header field (RFC 7541 §6.1); dynamic entries start at 62.
pub(crate) fn indexed(out: &mut Vec<u8>, index: usize) {
    hpack_int(out, 0x80, 7, index);
}

/// A header block of literals.
pub(crate) fn block(fields: &[(&str, &str)]) -> Vec<u8> {
    let mut b = Vec::new();
    for (n, v) in fields {
        literal(&mut b, n.as_bytes(), v.as_bytes());
    }
    b
}

/// The request pseudo-headers and a fresh interaction id, then `extra`.
pub(crate) fn request_block(method: &str, path: &str, id: &str, extra: &[(&str, &str)]) -> Vec<u8> {
    let mut fields = vec![
        (":method", method),
        (":scheme", "https"),
        (":authority", "localhost"),
        (":path", path),
        ("x-fapi-interaction-id", id),
    ];
    fields.extend_from_slice(extra);
    block(&fields)
}

pub(crate) fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let len = payload.len();
    let mut f = Vec::with_capacity(9 + len);
    f.extend_from_slice(&[(len >> 16) as u8, (len >> 8) as u8, len as u8, kind, flags]);
    f.extend_from_slice(&(stream & 0x7fff_ffff).to_be_bytes());
    f.extend_from_slice(payload);
    f
}

pub(crate) fn settings(pairs: &[(u16, u32)]) -> Vec<u8> {
    let mut p = Vec::new();
    for (id, v) in pairs {
        p.extend_from_slice(&id.to_be_bytes());
        p.extend_from_slice(&v.to_be_bytes());
    }
    frame(SETTINGS, 0, 0, &p)
}

pub(crate) fn rst(stream: u32, code: u32) -> Vec<u8> {
    frame(RST_STREAM, 0, stream, &code.to_be_bytes())
}

impl H2 {
    /// Connects as `identity` with ALPN h2 and sends the preface and our SETTINGS (a large
    /// window, so the server is never blocked on us).
    pub(crate) async fn connect(addr: SocketAddr, certs: &std::path::Path, identity: &str) -> H2 {
        let cfg = portcullis_tools::client::tls_config(
            &certs.join("ca.pem"),
            Some((
                &certs.join(format!("{identity}.pem")),
                &certs.join(format!("{identity}.key")),
            )),
            true,
        )
        .unwrap();
        let tcp = TcpStream::connect(addr).await.unwrap();
        tcp.set_nodelay(true).unwrap();
        let name = rustls_pki_types::ServerName::try_from("localhost").unwrap();
        let tls = tokio_rustls::TlsConnector::from(cfg)
            .connect(name, tcp)
            .await
            .unwrap();
        assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
        let (mut r, w) = tokio::io::split(tls);
        let w = Arc::new(tokio::sync::Mutex::new(w));
        let seen: Arc<Mutex<Seen>> = Arc::default();
        let (w2, s2) = (w.clone(), seen.clone());
        tokio::spawn(async move {
            let mut head = [0u8; 9];
            loop {
                if r.read_exact(&mut head).await.is_err() {
                    break;
                }
                let len = (head[0] as usize) << 16 | (head[1] as usize) << 8 | head[2] as usize;
                let (kind, flags) = (head[3], head[4]);
                let stream = u32::from_be_bytes([head[5], head[6], head[7], head[8]]) & 0x7fff_ffff;
                let mut payload = vec![0u8; len];
                if r.read_exact(&mut payload).await.is_err() {
                    break;
                }
                let mut ack = None;
                {
                    let mut s = s2.lock().unwrap();
                    s.frames += 1;
                    match kind {
                        DATA => {
                            s.data
                                .entry(stream)
                                .or_default()
                                .extend_from_slice(&payload);
                            if flags & END_STREAM != 0 {
                                s.ended.insert(stream);
                            }
                        }
                        HEADERS => {
                            s.headers.insert(stream);
                            s.blocks.entry(stream).or_insert_with(|| payload.clone());
                            if flags & END_STREAM != 0 {
                                s.ended.insert(stream);
                            }
                        }
                        RST_STREAM if payload.len() == 4 => {
                            let code = u32::from_be_bytes(payload[..4].try_into().unwrap());
                            s.resets.insert(stream, code);
                        }
                        SETTINGS if flags & ACK == 0 => {
                            for c in payload.chunks(6) {
                                if c.len() == 6 {
                                    s.settings.push((
                                        u16::from_be_bytes([c[0], c[1]]),
                                        u32::from_be_bytes([c[2], c[3], c[4], c[5]]),
                                    ));
                                }
                            }
                            ack = Some(frame(SETTINGS, ACK, 0, &[]));
                        }
                        PING if flags & ACK != 0 => s.ping_acks += 1,
                        GOAWAY if payload.len() >= 8 => {
                            let last =
                                u32::from_be_bytes(payload[..4].try_into().unwrap()) & 0x7fff_ffff;
                            let code = u32::from_be_bytes(payload[4..8].try_into().unwrap());
                            s.goaway = Some((last, code, payload[8..].to_vec()));
                        }
                        _ => {}
                    }
                }
                if let Some(a) = ack {
                    let _ = w2.lock().await.write_all(&a).await;
                }
            }
            s2.lock().unwrap().closed = true;
        });
        let h = H2 {
            w,
            seen,
            next_stream: 1,
        };
        let mut hello = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
        // INITIAL_WINDOW_SIZE 16 MiB; and the connection window likewise.
        hello.extend(settings(&[(4, 16 << 20)]));
        hello.extend(frame(WINDOW_UPDATE, 0, 0, &(16u32 << 20).to_be_bytes()));
        let _ = h.send(&hello).await;
        h
    }

    /// Writes raw bytes; false once the server has closed the connection.
    pub(crate) async fn send(&self, bytes: &[u8]) -> bool {
        let mut w = self.w.lock().await;
        w.write_all(bytes).await.is_ok() && w.flush().await.is_ok()
    }

    /// The next client stream id (odd, increasing).
    pub(crate) fn stream(&mut self) -> u32 {
        let s = self.next_stream;
        self.next_stream += 2;
        s
    }

    /// One HEADERS frame with END_HEADERS (and END_STREAM when `end`).
    pub(crate) fn headers_frame(stream: u32, block: &[u8], end: bool) -> Vec<u8> {
        let flags = END_HEADERS | if end { END_STREAM } else { 0 };
        frame(HEADERS, flags, stream, block)
    }

    pub(crate) fn snapshot(&self) -> Seen {
        self.seen.lock().unwrap().clone()
    }

    /// Waits until `done` holds for what was seen, or `limit` passes; returns the last view.
    pub(crate) async fn wait(&self, limit: Duration, done: impl Fn(&Seen) -> bool) -> Seen {
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            let s = self.snapshot();
            if done(&s) || tokio::time::Instant::now() >= deadline {
                return s;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

/// Resident set size of this process in KiB (Linux), 0 where unknown.
pub(crate) fn rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1).and_then(|v| v.parse().ok()))
        })
        .unwrap_or(0)
}

/// Decodes an HPACK Huffman string made only of digits (RFC 7541 Appendix B).
fn huffman_digits(v: &[u8]) -> Option<String> {
    const CODES: [(u32, u32); 10] = [
        (0b00000, 5),
        (0b00001, 5),
        (0b00010, 5),
        (0b011001, 6),
        (0b011010, 6),
        (0b011011, 6),
        (0b011100, 6),
        (0b011101, 6),
        (0b011110, 6),
        (0b011111, 6),
    ];
    let bits: Vec<u8> = v
        .iter()
        .flat_map(|b| (0..8).rev().map(move |i| (b >> i) & 1))
        .collect();
    let (mut out, mut at) = (String::new(), 0);
    'next: while at < bits.len() {
        for (d, (code, n)) in CODES.iter().enumerate() {
            let n = *n as usize;
            if at + n <= bits.len() {
                let got = bits[at..at + n]
                    .iter()
                    .fold(0u32, |a, b| a << 1 | u32::from(*b));
                if got == *code {
                    out.push(char::from(b'0' + d as u8));
                    at += n;
                    continue 'next;
                }
            }
        }
        // Padding: the rest must be ones (at most 7 bits).
        return (bits.len() - at < 8 && bits[at..].iter().all(|b| *b == 1)).then_some(out);
    }
    Some(out)
}
