//! Shared harness for integration tests: start the real `sipward` binary on ephemeral loopback
//! ports with a generated configuration, and talk SIP to it over UDP and TCP.

#![allow(dead_code)]

pub mod mock_as;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream, UdpSocket};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// The I/O drivers every I/O test runs under.
pub const DRIVERS: [&str; 2] = ["io_uring", "epoll"];

pub const TOKENS: &str = r#"
[[tokens]]
token = "alice-token"
username = "alice"
scope = "sip"

[[tokens]]
token = "bob-token"
username = "bob@example.com"

[[tokens]]
token = "expired-token"
username = "alice"
expires = "2001-01-01T00:00:00Z"
"#;

pub struct Sipward {
    child: Child,
    pub udp: SocketAddr,
    pub tcp: SocketAddr,
    pub io: String,
    log: Arc<Mutex<String>>,
    _dir: tempfile::TempDir,
}

impl Sipward {
    /// Starts sipward with `extra` TOML appended to a base configuration (one shard, `io` driver,
    /// UDP and TCP on 127.0.0.1 ephemeral ports, the static tokens above).
    pub fn start(io: &str, extra: &str) -> Sipward {
        Sipward::start_with(io, extra, "shards = 1")
    }

    pub fn start_with(io: &str, extra: &str, server_extra: &str) -> Sipward {
        let config = format!(
            "[server]\nudp = [\"127.0.0.1:0\"]\ntcp = [\"127.0.0.1:0\"]\nio = \"{io}\"\nrealm = \"example.com\"\n{server_extra}\n\
             [static_tokens]\nfile = \"tokens.toml\"\n{extra}\n"
        );
        Sipward::launch(io, &config, &[("tokens.toml", TOKENS)])
    }

    /// Starts sipward on a complete configuration, with `files` written beside it. The configuration
    /// must listen on ephemeral ports; `io` is the driver the test expects it to run.
    pub fn launch(io: &str, config: &str, files: &[(&str, &str)]) -> Sipward {
        Sipward::launch_with(io, config, files, |_| {})
    }

    /// As [`Sipward::launch`], letting the test adjust the command (environment, pre-exec hooks).
    pub fn launch_with(
        io: &str,
        config: &str,
        files: &[(&str, &str)],
        adjust: impl FnOnce(&mut Command),
    ) -> Sipward {
        let dir = tempfile::tempdir().unwrap();
        for (name, text) in files {
            std::fs::write(dir.path().join(name), text).unwrap();
        }
        let path = dir.path().join("sipward.toml");
        std::fs::write(&path, config).unwrap();
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_sipward"));
        cmd.arg("--config")
            .arg(&path)
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        adjust(&mut cmd);
        let mut child = cmd.spawn().expect("start sipward");
        let log = Arc::new(Mutex::new(String::new()));
        let (tx, rx) = std::sync::mpsc::channel();
        let stderr = child.stderr.take().unwrap();
        let sink = log.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                sink.lock().unwrap().push_str(&line);
                sink.lock().unwrap().push('\n');
                let _ = tx.send(line);
            }
        });
        let (mut udp, mut tcp, mut driver) = (None, None, None);
        let deadline = Instant::now() + Duration::from_secs(20);
        while driver.is_none() {
            let left = deadline.saturating_duration_since(Instant::now());
            let line = rx.recv_timeout(left).unwrap_or_else(|_| {
                panic!(
                    "sipward did not become ready; log:\n{}",
                    log.lock().unwrap()
                )
            });
            if let Some(a) = line.split("listening on udp ").nth(1) {
                udp = Some(a.trim().parse().unwrap());
            } else if let Some(a) = line.split("listening on tcp ").nth(1) {
                tcp = Some(a.trim().parse().unwrap());
            } else if line.contains("sipward ready") {
                driver = line
                    .split("io=\"")
                    .nth(1)
                    .map(|s| s.trim_end_matches('"').to_string());
            }
        }
        let io_used = driver.unwrap();
        if io != "auto" {
            assert_eq!(io_used, io, "sipward runs the driver the test asked for");
        }
        Sipward {
            child,
            udp: udp.unwrap_or_else(|| ([127, 0, 0, 1], 0).into()),
            tcp: tcp.unwrap_or_else(|| ([127, 0, 0, 1], 0).into()),
            io: io_used,
            log,
            _dir: dir,
        }
    }

    pub fn log(&self) -> String {
        self.log.lock().unwrap().clone()
    }

    /// Whether the log holds `needle`, waiting up to 5 s for it: a thread copies sipward's
    /// output into the log, so a line sipward wrote before answering may reach it after the
    /// answer reached the test (`failover_and_recovery` failed so once in CI).
    pub fn wait_for_log(&self, needle: &str) -> bool {
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            if self.log().contains(needle) {
                return true;
            }
            if Instant::now() > deadline {
                return false;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The configuration file it runs on (rewrite it, then [`Sipward::signal`] SIGHUP).
    pub fn config_path(&self) -> PathBuf {
        self._dir.path().join("sipward.toml")
    }

    pub fn signal(&self, sig: i32) {
        // SAFETY: kill(2) on the pid of a child this harness started and has not reaped.
        assert_eq!(unsafe { libc::kill(self.child.id() as i32, sig) }, 0);
    }

    /// Waits up to `wait` for the process to exit; its exit code, or `None` if it still runs.
    pub fn wait_exit(&mut self, wait: Duration) -> Option<i32> {
        let deadline = Instant::now() + wait;
        while Instant::now() < deadline {
            if let Some(status) = self.child.try_wait().unwrap() {
                return Some(status.code().unwrap_or(-1));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }

    /// Waits up to `wait` for the log to contain `needle` `count` times; whether it did.
    pub fn wait_log(&self, needle: &str, count: usize, wait: Duration) -> bool {
        let deadline = Instant::now() + wait;
        loop {
            if self.log().matches(needle).count() >= count {
                return true;
            }
            if Instant::now() >= deadline {
                return false;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The admin server's address, from its start line (the config must set `[admin] listen`).
    pub fn admin(&self) -> SocketAddr {
        assert!(
            self.wait_log("admin listening on http ", 1, Duration::from_secs(10)),
            "no admin server; log:\n{}",
            self.log()
        );
        let log = self.log();
        let rest = log.split("admin listening on http ").nth(1).unwrap();
        rest.split_whitespace().next().unwrap().parse().unwrap()
    }
}

/// One HTTP/1.1 GET: the status and the body.
pub fn http_get(to: SocketAddr, path: &str) -> (u16, String) {
    let mut s = TcpStream::connect(to).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: admin\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut text = String::new();
    s.read_to_string(&mut text).unwrap();
    let status = text
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    (status, body)
}

impl Drop for Sipward {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A REGISTER for `user` at example.com over `transport` with the given Authorization line (or none).
pub fn register(user: &str, call_id: &str, transport: &str, auth: Option<&str>) -> String {
    let auth = auth
        .map(|t| format!("Authorization: Bearer {t}\r\n"))
        .unwrap_or_default();
    format!(
        "REGISTER sip:example.com SIP/2.0\r\n\
         Via: SIP/2.0/{transport} 127.0.0.1:5999;branch=z9hG4bK-{call_id};rport\r\n\
         Max-Forwards: 70\r\n\
         From: <sip:{user}@example.com>;tag=t-{call_id}\r\n\
         To: <sip:{user}@example.com>\r\n\
         Call-ID: {call_id}\r\n\
         CSeq: 1 REGISTER\r\n\
         Contact: <sip:{user}@127.0.0.1:5999>;expires=600\r\n\
         {auth}Content-Length: 0\r\n\r\n"
    )
}

/// A port free on 127.0.0.1 for both UDP and TCP, for a configuration that must name its port
/// (forward mode advertises it in Via, Path and Record-Route).
pub fn free_port() -> u16 {
    loop {
        let u = UdpSocket::bind("127.0.0.1:0").unwrap();
        let port = u.local_addr().unwrap().port();
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
}

pub fn udp_client() -> UdpSocket {
    let s = UdpSocket::bind("127.0.0.1:0").unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    s
}

/// Sends one datagram and returns the response text.
pub fn udp_exchange(sock: &UdpSocket, to: SocketAddr, msg: &str) -> String {
    sock.send_to(msg.as_bytes(), to).unwrap();
    let mut buf = [0u8; 65536];
    let (n, from) = sock.recv_from(&mut buf).expect("a response over UDP");
    assert_eq!(
        from, to,
        "the response comes from the address the request went to"
    );
    String::from_utf8(buf[..n].to_vec()).unwrap()
}

/// Whether a datagram arrives within `wait`.
pub fn udp_silent(sock: &UdpSocket, wait: Duration) -> bool {
    sock.set_read_timeout(Some(wait)).unwrap();
    let mut buf = [0u8; 65536];
    let silent = sock.recv_from(&mut buf).is_err();
    sock.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    silent
}

pub fn tcp_client(to: SocketAddr) -> TcpStream {
    let s = TcpStream::connect(to).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    s.set_nodelay(true).unwrap();
    s
}

/// Reads `count` whole SIP messages (framed by Content-Length) from a stream, skipping CRLF pongs.
pub fn tcp_read_messages(s: &mut TcpStream, count: usize) -> Vec<String> {
    let mut buf = Vec::new();
    let mut out = Vec::new();
    while out.len() < count {
        while buf.starts_with(b"\r\n") {
            buf.drain(..2);
        }
        if let Some(end) = find(&buf, b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..end]).to_string();
            let cl: usize = head
                .lines()
                .find_map(|l| l.strip_prefix("Content-Length: "))
                .map(|v| v.trim().parse().unwrap())
                .expect("responses carry Content-Length");
            if buf.len() >= end + 4 + cl {
                out.push(String::from_utf8(buf.drain(..end + 4 + cl).collect()).unwrap());
                continue;
            }
        }
        let mut chunk = [0u8; 8192];
        let n = s.read(&mut chunk).expect("read a response over TCP");
        assert!(
            n > 0,
            "connection closed after {} of {count} messages",
            out.len()
        );
        buf.extend_from_slice(&chunk[..n]);
    }
    out
}

pub fn tcp_write(s: &mut TcpStream, bytes: &[u8]) {
    s.write_all(bytes).unwrap();
}

/// Whether the peer closed the stream (read returns 0 or a reset) within `wait`.
pub fn tcp_closed_within(s: &mut TcpStream, wait: Duration) -> bool {
    s.set_read_timeout(Some(wait)).unwrap();
    let mut chunk = [0u8; 8192];
    let start = Instant::now();
    loop {
        match s.read(&mut chunk) {
            Ok(0) => return true,
            Ok(_) => continue,
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return true,
            Err(_) => return start.elapsed() < wait,
        }
    }
}

pub fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

pub fn status(resp: &str) -> u16 {
    resp.split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0)
}

pub fn header<'a>(resp: &'a str, name: &str) -> Option<&'a str> {
    resp.lines()
        .find(|l| {
            l.len() > name.len()
                && l[..name.len()].eq_ignore_ascii_case(name)
                && l[name.len()..].starts_with(':')
        })
        .map(|l| l[name.len() + 1..].trim())
}

pub fn repo_path(rel: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(rel)
}
