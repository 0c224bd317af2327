//! A private `redis-server` for one test: a free port on 127.0.0.1, a temp directory, no
//! persistence (`--save "" --appendonly no`), never the system service. `./test.sh` installs
//! Debian's `redis-server` when it is missing.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::{dur, FileRedis, FileState};

pub(crate) struct RedisServer {
    pub port: u16,
    dir: tempfile::TempDir,
    child: Option<Child>,
    /// Extra server arguments (e.g. `--requirepass`).
    extra: Vec<String>,
}

fn binary() -> &'static str {
    for b in ["/usr/bin/redis-server", "/usr/local/bin/redis-server"] {
        if std::path::Path::new(b).exists() {
            return b;
        }
    }
    "redis-server"
}

fn free_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().port()
}

/// Sends one inline command and returns the first reply line (`+PONG`, `:1`, ...).
pub(crate) fn command(port: u16, cmd: &str) -> Option<String> {
    let mut s = TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    s.write_all(format!("{cmd}\r\n").as_bytes()).ok()?;
    let mut buf = [0u8; 512];
    let n = s.read(&mut buf).ok()?;
    let text = String::from_utf8_lossy(&buf[..n]).to_string();
    Some(text.lines().next().unwrap_or("").to_string())
}

impl RedisServer {
    /// Starts a server on a free port and waits until it answers PING.
    pub(crate) fn start() -> RedisServer {
        RedisServer::start_with(&[])
    }

    /// As [`RedisServer::start`], with extra server arguments.
    pub(crate) fn start_with(extra: &[&str]) -> RedisServer {
        let mut s = RedisServer {
            port: free_port(),
            dir: tempfile::tempdir().unwrap(),
            child: None,
            extra: extra.iter().map(|a| a.to_string()).collect(),
        };
        s.launch();
        s
    }

    fn launch(&mut self) {
        let child = Command::new(binary())
            .args([
                "--port",
                &self.port.to_string(),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                &self.dir.path().display().to_string(),
            ])
            .args(&self.extra)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| {
                panic!("cannot start redis-server ({e}); ./test.sh installs Debian's redis-server")
            });
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            // With a password, an unauthenticated PING answers -NOAUTH: it is up all the same.
            if command(self.port, "PING").is_some_and(|r| r == "+PONG" || r.starts_with("-NOAUTH"))
            {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("redis-server on port {} did not answer PING", self.port);
    }

    pub(crate) fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/0", self.port)
    }

    /// Kills the server (all its data is lost) and waits until the port refuses connections.
    pub(crate) fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline && TcpStream::connect(("127.0.0.1", self.port)).is_ok() {
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Starts the server again on the same port, empty.
    pub(crate) fn restart(&mut self) {
        self.stop();
        self.launch();
    }

    /// A `state:` config section that uses this server.
    /// The `state:` section of a proxy on this server: 500 ms connect and command timeouts,
    /// health checks every 100 ms.
    pub(crate) fn state(&self) -> FileState {
        FileState {
            backend: Some("redis".into()),
            redis: Some(FileRedis {
                url: self.url(),
                command_timeout: Some(dur("500ms")),
                connect_timeout: Some(dur("500ms")),
                health_interval: Some(dur("100ms")),
                ..FileRedis::default()
            }),
            ..FileState::default()
        }
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}
