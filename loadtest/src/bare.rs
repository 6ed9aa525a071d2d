//! `bare-responder`: the packet-rate ceiling of a setup. One thread, one UDP socket: `recvmmsg` a
//! batch, answer each datagram with a minimal `SIP/2.0 200 OK` that carries the request's Call-ID
//! line (all `register` needs to match it) and `Content-Length: 0`, `sendmmsg` the batch back to the
//! sources. No SIP parsing beyond finding that one line, no token, no state. With `--echo-headers`
//! the response also carries the request's Via, From, To and CSeq lines, as a SIP core behind a
//! proxy answers (sipward's forward mode drops a response whose top Via is not its own; Kamailio
//! drops a reply without From, To and CSeq).
//!
//! The loop drains the socket with non-blocking `recvmmsg` and sleeps in `poll` only when it is
//! empty, so under load it costs two system calls per batch, as a real server's best case would.
//! SIGINT or SIGTERM stops it; it then prints its counters on stderr.

use std::io;
use std::net::SocketAddr;
use std::os::fd::AsRawFd as _;
use std::sync::atomic::{AtomicBool, Ordering};

use anyhow::Context as _;
use socket2::{Domain, Protocol, Socket, Type};

const BATCH: usize = 64;
/// Requests larger than this are cut off (MSG_TRUNC) and dropped, as a server would.
const RECV_BUF: usize = 4096;
/// `SIP/2.0 200 OK\r\n` + (echoed lines) + Call-ID line + `\r\nContent-Length: 0\r\n\r\n`; a
/// longer answer is dropped rather than sent truncated.
const SEND_BUF: usize = 1024;
const STATUS_LINE: &[u8] = b"SIP/2.0 200 OK\r\n";
const TAIL: &[u8] = b"\r\nContent-Length: 0\r\n\r\n";

pub struct Config {
    pub listen: SocketAddr,
    /// SO_RCVBUF and SO_SNDBUF asked for (capped by net.core.rmem_max / wmem_max).
    pub buffer: usize,
    /// Copy the request's Via, From, To and CSeq lines into the response.
    pub echo_headers: bool,
}

#[derive(Debug, Default)]
pub struct Stats {
    pub received: u64,
    pub answered: u64,
    /// Datagrams without a Call-ID line, with one too long, or truncated.
    pub dropped: u64,
    /// Responses the kernel refused (send error other than EAGAIN, or EAGAIN that did not clear).
    pub send_errors: u64,
    pub recv_calls: u64,
    pub send_calls: u64,
}

static STOP: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(_: libc::c_int) {
    STOP.store(true, Ordering::Relaxed);
}

fn install_signal_handlers() -> io::Result<()> {
    for sig in [libc::SIGINT, libc::SIGTERM] {
        // SAFETY: a zeroed sigaction is valid; the handler only stores to an atomic, which is
        // async-signal-safe. No SA_RESTART, so a blocked `poll` returns EINTR and the loop sees STOP.
        unsafe {
            let mut sa: libc::sigaction = std::mem::zeroed();
            sa.sa_sigaction = on_signal as extern "C" fn(libc::c_int) as libc::sighandler_t;
            libc::sigemptyset(&mut sa.sa_mask);
            if libc::sigaction(sig, &sa, std::ptr::null_mut()) != 0 {
                return Err(io::Error::last_os_error());
            }
        }
    }
    Ok(())
}

/// The Call-ID header line of a request (`Call-ID: …` or compact `i: …`, name case-insensitive),
/// without its line ending, as it appears on the wire. Stops at the end of the header section.
pub fn call_id_line(msg: &[u8]) -> Option<&[u8]> {
    // Skip the request line.
    let mut pos = msg.iter().position(|&b| b == b'\n')? + 1;
    while pos < msg.len() {
        let rest = &msg[pos..];
        let end = rest.iter().position(|&b| b == b'\n').unwrap_or(rest.len());
        let line = rest[..end].strip_suffix(b"\r").unwrap_or(&rest[..end]);
        if line.is_empty() {
            return None;
        }
        if let Some(colon) = line.iter().position(|&b| b == b':') {
            let mut name = &line[..colon];
            while let [rest @ .., b' ' | b'\t'] = name {
                name = rest;
            }
            if name.eq_ignore_ascii_case(b"call-id") || name.eq_ignore_ascii_case(b"i") {
                return Some(line);
            }
        }
        pos += end + 1;
    }
    None
}

/// The Via, From, To and CSeq header lines of a request, in order, without their line endings.
fn echoed_lines(msg: &[u8]) -> impl Iterator<Item = &[u8]> {
    let start = msg
        .iter()
        .position(|&b| b == b'\n')
        .map_or(msg.len(), |p| p + 1);
    msg[start..]
        .split(|&b| b == b'\n')
        .map(|l| l.strip_suffix(b"\r").unwrap_or(l))
        .take_while(|l| !l.is_empty())
        .filter(|l| {
            l.iter().position(|&b| b == b':').is_some_and(|colon| {
                let name = l[..colon].trim_ascii();
                [&b"via"[..], b"v", b"from", b"f", b"to", b"t", b"cseq"]
                    .iter()
                    .any(|n| name.eq_ignore_ascii_case(n))
            })
        })
}

/// Writes the response to `req` into `out`: its length, or `None` when `req` has no usable Call-ID
/// or the answer would not fit. The request's Via, From, To and CSeq lines are copied when
/// `echo_headers` is set.
pub fn respond_with(req: &[u8], out: &mut [u8; SEND_BUF], echo_headers: bool) -> Option<usize> {
    let line = call_id_line(req)?;
    let mut at = 0;
    let mut put = |part: &[u8]| -> Option<()> {
        out.get_mut(at..at + part.len())?.copy_from_slice(part);
        at += part.len();
        Some(())
    };
    put(STATUS_LINE)?;
    if echo_headers {
        for echoed in echoed_lines(req) {
            put(echoed)?;
            put(b"\r\n")?;
        }
    }
    put(line)?;
    put(TAIL)?;
    Some(at)
}

struct Batch {
    recv_buf: Vec<u8>,
    send_buf: Vec<[u8; SEND_BUF]>,
    addrs: Vec<libc::sockaddr_storage>,
    recv_iov: Vec<libc::iovec>,
    recv_hdrs: Vec<libc::mmsghdr>,
    send_iov: Vec<libc::iovec>,
    send_hdrs: Vec<libc::mmsghdr>,
}

impl Batch {
    fn new() -> Box<Batch> {
        let mut b = Box::new(Batch {
            recv_buf: vec![0; BATCH * RECV_BUF],
            send_buf: vec![[0; SEND_BUF]; BATCH],
            // SAFETY: plain C structs; all-zero is a valid value for each.
            addrs: (0..BATCH).map(|_| unsafe { std::mem::zeroed() }).collect(),
            recv_iov: Vec::with_capacity(BATCH),
            recv_hdrs: (0..BATCH).map(|_| unsafe { std::mem::zeroed() }).collect(),
            send_iov: Vec::with_capacity(BATCH),
            send_hdrs: (0..BATCH).map(|_| unsafe { std::mem::zeroed() }).collect(),
        });
        // The buffers never move or reallocate after this (the Vecs are sized once and only
        // written in place), so the receive-side iovecs are built once.
        let base = b.recv_buf.as_mut_ptr();
        for i in 0..BATCH {
            // SAFETY: i * RECV_BUF < recv_buf.len().
            let p = unsafe { base.add(i * RECV_BUF) };
            b.recv_iov.push(libc::iovec {
                iov_base: p.cast(),
                iov_len: RECV_BUF,
            });
        }
        b
    }

    /// Non-blocking receive of up to a batch; the number of datagrams.
    fn recv(&mut self, fd: i32) -> io::Result<usize> {
        for i in 0..BATCH {
            let h = &mut self.recv_hdrs[i].msg_hdr;
            h.msg_name = (&mut self.addrs[i] as *mut libc::sockaddr_storage).cast();
            h.msg_namelen = std::mem::size_of::<libc::sockaddr_storage>() as libc::socklen_t;
            h.msg_iov = &mut self.recv_iov[i];
            h.msg_iovlen = 1;
            h.msg_control = std::ptr::null_mut();
            h.msg_controllen = 0;
            h.msg_flags = 0;
            self.recv_hdrs[i].msg_len = 0;
        }
        // SAFETY: every header points at a live sockaddr_storage and iovec, and each iovec at
        // RECV_BUF bytes of recv_buf; nothing else touches them during the call.
        unsafe { crate::udp::recv_mmsg(fd, &mut self.recv_hdrs[..BATCH]) }
    }

    /// Builds the answers to the `n` datagrams just received; returns how many there are to send.
    fn build(&mut self, n: usize, st: &mut Stats, echo_headers: bool) -> usize {
        self.send_iov.clear();
        let mut k = 0;
        for i in 0..n {
            let h = &self.recv_hdrs[i];
            let len = (h.msg_len as usize).min(RECV_BUF);
            let req = &self.recv_buf[i * RECV_BUF..i * RECV_BUF + len];
            let answer = if h.msg_hdr.msg_flags & libc::MSG_TRUNC != 0 {
                None
            } else {
                respond_with(req, &mut self.send_buf[i], echo_headers)
            };
            let Some(len) = answer else {
                st.dropped += 1;
                continue;
            };
            self.send_iov.push(libc::iovec {
                iov_base: self.send_buf[i].as_mut_ptr().cast(),
                iov_len: len,
            });
            // SAFETY: all-zero is a valid mmsghdr.
            let mut sh: libc::mmsghdr = unsafe { std::mem::zeroed() };
            sh.msg_hdr.msg_name = (&mut self.addrs[i] as *mut libc::sockaddr_storage).cast();
            sh.msg_hdr.msg_namelen = h.msg_hdr.msg_namelen;
            self.send_hdrs[k] = sh;
            k += 1;
        }
        // The iovec Vec has its final contents now (capacity BATCH, never reallocated).
        for j in 0..k {
            self.send_hdrs[j].msg_hdr.msg_iov = &mut self.send_iov[j];
            self.send_hdrs[j].msg_hdr.msg_iovlen = 1;
        }
        k
    }

    /// Sends answers `from..k`; how many the kernel took.
    fn send(&mut self, fd: i32, from: usize, k: usize) -> io::Result<usize> {
        // SAFETY: send_hdrs[from..k] point at live addresses, iovecs and send buffers.
        unsafe { crate::udp::send_mmsg(fd, &mut self.send_hdrs[from..k]) }
    }
}

fn poll_one(fd: i32, events: libc::c_short, timeout_ms: libc::c_int) -> io::Result<()> {
    let mut p = libc::pollfd {
        fd,
        events,
        revents: 0,
    };
    // SAFETY: one live pollfd.
    let r = unsafe { libc::poll(&mut p, 1, timeout_ms) };
    if r < 0 {
        let e = io::Error::last_os_error();
        if e.kind() != io::ErrorKind::Interrupted {
            return Err(e);
        }
    }
    Ok(())
}

/// Runs until SIGINT or SIGTERM.
pub fn run(cfg: Config) -> anyhow::Result<Stats> {
    install_signal_handlers().context("installing signal handlers")?;
    let sock = Socket::new(
        Domain::for_address(cfg.listen),
        Type::DGRAM,
        Some(Protocol::UDP),
    )?;
    let _ = sock.set_recv_buffer_size(cfg.buffer);
    let _ = sock.set_send_buffer_size(cfg.buffer);
    sock.set_nonblocking(true)?;
    sock.bind(&cfg.listen.into())
        .with_context(|| format!("binding udp {}", cfg.listen))?;
    let local = sock
        .local_addr()?
        .as_socket()
        .context("socket has no IP address")?;
    eprintln!(
        "bare-responder listening on udp {local} (SO_RCVBUF {} bytes)",
        sock.recv_buffer_size().unwrap_or(0)
    );
    let fd = sock.as_raw_fd();
    let mut b = Batch::new();
    let mut st = Stats::default();
    while !STOP.load(Ordering::Relaxed) {
        let n = match b.recv(fd) {
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                // Empty: sleep until a datagram arrives (or 200 ms, to look at STOP).
                poll_one(fd, libc::POLLIN, 200).context("poll")?;
                continue;
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            // ICMP errors queued by earlier sends (a client that went away) surface here once.
            Err(e) if e.raw_os_error() == Some(libc::ECONNREFUSED) => continue,
            Err(e) => return Err(e).context("recvmmsg"),
        };
        st.recv_calls += 1;
        st.received += n as u64;
        let k = b.build(n, &mut st, cfg.echo_headers);
        let mut done = 0;
        let mut stalls = 0;
        while done < k {
            st.send_calls += 1;
            match b.send(fd, done, k) {
                Ok(m) => {
                    done += m;
                    st.answered += m as u64;
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock && stalls < 10 => {
                    stalls += 1;
                    poll_one(fd, libc::POLLOUT, 10).context("poll")?;
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => {
                    // The first of the remaining answers failed (EAGAIN that did not clear, or an
                    // address the kernel refuses): skip it, keep the rest.
                    st.send_errors += 1;
                    done += 1;
                }
            }
        }
    }
    eprintln!(
        "bare-responder: received {} answered {} dropped {} send_errors {} recvmmsg calls {} sendmmsg calls {}",
        st.received, st.answered, st.dropped, st.send_errors, st.recv_calls, st.send_calls
    );
    Ok(st)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sip::{self, Method, Template, Who};

    #[test]
    fn answers_a_register_so_that_register_can_match_it() {
        let local: SocketAddr = "127.0.0.1:40001".parse().unwrap();
        let mut req = Vec::new();
        Template::new(Method::Register, "UDP", local).render(
            &mut req,
            7,
            9,
            &Who::new("alice", None, "example.com"),
            b"tok",
        );
        let mut out = [0u8; SEND_BUF];
        let n = respond_with(&req, &mut out, false).unwrap();
        let r = sip::parse_response(&out[..n]).unwrap();
        assert_eq!(r.status, 200);
        assert_eq!(sip::parse_call_id(r.call_id), Some((7, 9)));
        assert!(out[..n].ends_with(b"\r\nContent-Length: 0\r\n\r\n"));
        // Every request of a run gets an answer of the same size.
        let mut req2 = Vec::new();
        Template::new(Method::Register, "UDP", local).render(
            &mut req2,
            7,
            u64::MAX,
            &Who::new("bob", None, "example.org"),
            b"another-token",
        );
        assert_eq!(respond_with(&req2, &mut [0u8; SEND_BUF], false), Some(n));
    }

    #[test]
    fn echoes_the_transaction_headers_when_asked() {
        let req = b"REGISTER sip:h SIP/2.0\r\nVia: SIP/2.0/UDP a:1;branch=z9hG4bKa\r\nv: SIP/2.0/UDP b;branch=z9hG4bKb\r\n\
Call-ID: c1\r\nFrom: <sip:a@h>;tag=1\r\nContact: <sip:a@x>\r\nTo: <sip:a@h>\r\nCSeq: 1 REGISTER\r\n\
Via: SIP/2.0/UDP c\r\n\r\nVia: body";
        let mut out = [0u8; SEND_BUF];
        let n = respond_with(req, &mut out, true).unwrap();
        assert_eq!(
            &out[..n],
            &b"SIP/2.0 200 OK\r\nVia: SIP/2.0/UDP a:1;branch=z9hG4bKa\r\nv: SIP/2.0/UDP b;branch=z9hG4bKb\r\n\
From: <sip:a@h>;tag=1\r\nTo: <sip:a@h>\r\nCSeq: 1 REGISTER\r\nVia: SIP/2.0/UDP c\r\nCall-ID: c1\r\n\
Content-Length: 0\r\n\r\n"[..]
        );
        let n = respond_with(req, &mut out, false).unwrap();
        assert_eq!(
            &out[..n],
            &b"SIP/2.0 200 OK\r\nCall-ID: c1\r\nContent-Length: 0\r\n\r\n"[..]
        );
        // Too long for the send buffer: dropped, not cut.
        let long = format!(
            "OPTIONS sip:h SIP/2.0\r\nVia: {}\r\nCall-ID: c\r\n\r\n",
            "x".repeat(1100)
        );
        assert_eq!(respond_with(long.as_bytes(), &mut out, true), None);
    }

    #[test]
    fn call_id_forms() {
        assert_eq!(
            call_id_line(b"OPTIONS sip:x SIP/2.0\r\nVia: a\r\ni :abc\r\n\r\n"),
            Some(&b"i :abc"[..])
        );
        assert_eq!(
            call_id_line(b"OPTIONS sip:x SIP/2.0\nCALL-ID: q\n\n"),
            Some(&b"CALL-ID: q"[..])
        );
        // Not in the body, not a prefix of another name, not the request line.
        assert_eq!(
            call_id_line(b"MESSAGE sip:x SIP/2.0\r\nl: 11\r\n\r\nCall-ID: a\r\n"),
            None
        );
        assert_eq!(
            call_id_line(b"OPTIONS sip:x SIP/2.0\r\nCall-IDx: a\r\nii: b\r\n\r\n"),
            None
        );
        assert_eq!(call_id_line(b"Call-ID: a"), None);
        let long = format!(
            "X sip:x SIP/2.0\r\nCall-ID: {}\r\n\r\n",
            "a".repeat(SEND_BUF)
        );
        assert_eq!(
            respond_with(long.as_bytes(), &mut [0u8; SEND_BUF], false),
            None
        );
    }
}
