//! The UDP driver of `register`: one OS thread, K connected non-blocking sockets, batched
//! `sendmmsg`/`recvmmsg` (up to 64 datagrams per system call), `ppoll` only when there is nothing to
//! do.
//!
//! Each socket has its own ephemeral source port, so a server with SO_REUSEPORT hashes the sockets
//! over its shards. One thread is enough: with batching, one core of this loop saturates more than one
//! core of server, and a single thread keeps the bookkeeping in [`Engine`] free of locks. The driver
//! does no retransmission (a stateless server gives none either): a lost request is a timeout.

use std::io;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::os::fd::AsRawFd as _;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use socket2::{Domain, Protocol, Socket, Type};

use crate::engine::{DriverStats, Engine, Load};
use crate::sip::{Method, Template};

const BATCH: usize = 64;
/// Responses to our requests are well under 2 KiB; anything cut off is flagged by MSG_TRUNC.
const RECV_BUF: usize = 4096;
/// Loop passes spent sending before receiving again, so a large backlog cannot starve receiving.
const MAX_SEND_BATCHES_PER_PASS: usize = 8;

/// Reusable `mmsghdr` arrays for one batch. The headers point into `send_bufs` / `recv_buf`, so they
/// are rebuilt on each call (cheap) instead of being kept in a self-referential struct.
struct Mmsg {
    send_bufs: Vec<Vec<u8>>,
    recv_buf: Vec<u8>,
    iov: Vec<libc::iovec>,
    hdrs: Vec<libc::mmsghdr>,
}

impl Mmsg {
    fn new() -> Mmsg {
        Mmsg {
            send_bufs: (0..BATCH).map(|_| Vec::with_capacity(1024)).collect(),
            recv_buf: vec![0; BATCH * RECV_BUF],
            iov: Vec::with_capacity(BATCH),
            // SAFETY: mmsghdr is a plain C struct; all-zero is a valid (empty) value.
            hdrs: (0..BATCH).map(|_| unsafe { std::mem::zeroed() }).collect(),
        }
    }

    fn prepare(&mut self, n: usize, recv: bool) {
        self.iov.clear();
        for i in 0..n {
            let (base, len) = if recv {
                let b = &mut self.recv_buf[i * RECV_BUF..(i + 1) * RECV_BUF];
                (b.as_mut_ptr(), RECV_BUF)
            } else {
                let b = &mut self.send_bufs[i];
                (b.as_mut_ptr(), b.len())
            };
            self.iov.push(libc::iovec {
                iov_base: base.cast(),
                iov_len: len,
            });
        }
        for i in 0..n {
            // SAFETY: as in `new`.
            let mut h: libc::mmsghdr = unsafe { std::mem::zeroed() };
            h.msg_hdr.msg_iov = &mut self.iov[i];
            h.msg_hdr.msg_iovlen = 1;
            self.hdrs[i] = h;
        }
    }

    /// Sends `send_bufs[..n]` on connected `fd`; returns how many the kernel took.
    fn send(&mut self, fd: i32, n: usize) -> io::Result<usize> {
        self.prepare(n, false);
        // SAFETY: hdrs[..n] point at iov[..n], which point at live buffers of the stated lengths;
        // nothing touches them until the call returns.
        unsafe { send_mmsg(fd, &mut self.hdrs[..n]) }
    }

    /// Receives up to a batch without blocking; returns how many datagrams arrived.
    fn recv(&mut self, fd: i32) -> io::Result<usize> {
        self.prepare(BATCH, true);
        // SAFETY: as in `send`, with buffers of RECV_BUF bytes.
        unsafe { recv_mmsg(fd, &mut self.hdrs[..BATCH]) }
    }

    /// Datagram `i` of the last `recv`, or `None` if it was truncated.
    fn received(&self, i: usize) -> Option<&[u8]> {
        let h = &self.hdrs[i];
        if h.msg_hdr.msg_flags & libc::MSG_TRUNC != 0 {
            return None;
        }
        let len = (h.msg_len as usize).min(RECV_BUF);
        Some(&self.recv_buf[i * RECV_BUF..i * RECV_BUF + len])
    }
}

fn udp_socket(target: SocketAddr) -> anyhow::Result<(Socket, SocketAddr)> {
    let sock = Socket::new(
        Domain::for_address(target),
        Type::DGRAM,
        Some(Protocol::UDP),
    )?;
    sock.set_nonblocking(true)?;
    // Best effort: a small buffer only costs drops, which show up as timeouts.
    let _ = sock.set_recv_buffer_size(4 << 20);
    let _ = sock.set_send_buffer_size(4 << 20);
    let any: SocketAddr = if target.is_ipv4() {
        (Ipv4Addr::UNSPECIFIED, 0).into()
    } else {
        (Ipv6Addr::UNSPECIFIED, 0).into()
    };
    sock.bind(&any.into())?;
    // Connected: sends need no address, and the kernel drops datagrams from anyone else.
    sock.connect(&target.into())
        .with_context(|| format!("connecting a UDP socket to {target}"))?;
    let local = sock
        .local_addr()?
        .as_socket()
        .context("UDP socket has no IP address")?;
    Ok((sock, local))
}

fn is_refused(e: &io::Error) -> bool {
    e.raw_os_error() == Some(libc::ECONNREFUSED)
}

/// Runs the whole schedule against `target`; returns when the engine's hard end is reached or every
/// measured request is settled.
pub fn run(
    engine: &mut Engine,
    target: SocketAddr,
    sockets: usize,
    load: Load,
    method: Method,
) -> anyhow::Result<DriverStats> {
    let k = match load {
        // More sockets than window slots would leave some idle.
        Load::Window(w) => sockets.min(usize::try_from(w).unwrap_or(usize::MAX)).max(1),
        Load::Rate(_) => sockets.max(1),
    };
    let mut socks = Vec::with_capacity(k);
    let mut templates = Vec::with_capacity(k);
    for _ in 0..k {
        let (s, local) = udp_socket(target)?;
        templates.push(Template::new(method, "UDP", local));
        socks.push(s);
    }
    let fds: Vec<i32> = socks.iter().map(|s| s.as_raw_fd()).collect();
    let targets: Vec<u64> = match load {
        Load::Window(w) => (0..k as u64)
            .map(|i| w / k as u64 + u64::from(i < w % k as u64))
            .collect(),
        Load::Rate(_) => vec![0; k],
    };
    let mut inflight = vec![0u64; k];
    let mut pollfds: Vec<libc::pollfd> = fds
        .iter()
        .map(|&fd| libc::pollfd {
            fd,
            events: libc::POLLIN,
            revents: 0,
        })
        .collect();
    let mut mm = Mmsg::new();
    let mut seqs = [0u64; BATCH];
    let mut st = DriverStats::default();
    let sched = engine.schedule();
    let mut scheduled: u64 = 0;
    let mut rr = 0usize;

    loop {
        let now = Instant::now();
        if now >= sched.hard_end {
            engine.expire(now, |_| {});
            break;
        }
        let mut busy = false;
        let mut blocked = false;

        for (s, &fd) in fds.iter().enumerate() {
            loop {
                match mm.recv(fd) {
                    Ok(n) => {
                        let t = Instant::now();
                        for i in 0..n {
                            match mm.received(i) {
                                Some(msg) => {
                                    if let Some(c) = engine.on_message(msg, t) {
                                        inflight[c as usize] -= 1;
                                    }
                                }
                                None => st.truncated += 1,
                            }
                        }
                        busy |= n > 0;
                        if n < BATCH {
                            break;
                        }
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                    Err(e) if is_refused(&e) => {
                        st.refused += 1;
                        break;
                    }
                    Err(e) => return Err(e).context(format!("recvmmsg on socket {s}")),
                }
            }
        }

        let now = Instant::now();
        engine.expire(now, |c| inflight[c as usize] -= 1);

        let sending = now < sched.measure_end;
        if sending {
            let mut batches = 0;
            match load {
                Load::Window(_) => {
                    for s in 0..k {
                        while inflight[s] < targets[s] && batches < MAX_SEND_BATCHES_PER_PASS {
                            let n = ((targets[s] - inflight[s]) as usize).min(BATCH);
                            for (i, seq) in seqs.iter_mut().enumerate().take(n) {
                                *seq = engine.build(&templates[s], &mut mm.send_bufs[i]);
                            }
                            batches += 1;
                            let t = Instant::now();
                            let m = match mm.send(fds[s], n) {
                                Ok(m) => m,
                                Err(e) if e.kind() == io::ErrorKind::WouldBlock => 0,
                                Err(e) if is_refused(&e) => {
                                    st.refused += 1;
                                    0
                                }
                                Err(e) => return Err(e).context("sendmmsg"),
                            };
                            for &seq in &seqs[..m] {
                                engine.commit(seq, s as u32, t);
                            }
                            inflight[s] += m as u64;
                            st.sent_total += m as u64;
                            busy |= m > 0;
                            if m < n {
                                // The slots stay empty and are refilled on a later pass.
                                blocked = true;
                                break;
                            }
                        }
                    }
                }
                Load::Rate(rate) => {
                    let due = (now.duration_since(sched.start).as_secs_f64() * rate) as u64 + 1;
                    while scheduled < due && batches < MAX_SEND_BATCHES_PER_PASS {
                        let n = ((due - scheduled) as usize).min(BATCH);
                        let s = rr;
                        rr = (rr + 1) % k;
                        for (i, seq) in seqs.iter_mut().enumerate().take(n) {
                            *seq = engine.build(&templates[s], &mut mm.send_bufs[i]);
                        }
                        batches += 1;
                        let t = Instant::now();
                        let m = match mm.send(fds[s], n) {
                            Ok(m) => m,
                            Err(e) if e.kind() == io::ErrorKind::WouldBlock => 0,
                            Err(e) if is_refused(&e) => {
                                st.refused += 1;
                                0
                            }
                            Err(e) => return Err(e).context("sendmmsg"),
                        };
                        for &seq in &seqs[..m] {
                            engine.commit(seq, s as u32, t);
                        }
                        // Not a window here, but responses and timeouts decrement it all the same.
                        inflight[s] += m as u64;
                        // An open loop keeps its schedule: what the socket refused is dropped, not
                        // sent late.
                        scheduled += n as u64;
                        st.dropped += (n - m) as u64;
                        st.sent_total += m as u64;
                        busy = true;
                        if m < n {
                            blocked = true;
                            break;
                        }
                    }
                }
            }
        } else if engine.pending_measured() == 0 {
            break;
        }

        if busy {
            continue;
        }
        // Idle: sleep until a response arrives or the next thing is due.
        let mut wake = sched.hard_end;
        if let Some(d) = engine.next_deadline() {
            wake = wake.min(d);
        }
        if sending {
            wake = wake.min(sched.measure_end);
            if let Load::Rate(rate) = load {
                wake = wake.min(sched.start + Duration::from_secs_f64(scheduled as f64 / rate));
            }
        }
        if blocked {
            wake = wake.min(now + Duration::from_micros(200));
        }
        let wait = wake.saturating_duration_since(Instant::now());
        if wait.is_zero() {
            continue;
        }
        let ts = libc::timespec {
            tv_sec: wait.as_secs() as libc::time_t,
            tv_nsec: libc::c_long::from(wait.subsec_nanos() as i32),
        };
        // SAFETY: pollfds is a live array of pollfds.len() entries; a null sigmask keeps the current one.
        let r = unsafe {
            libc::ppoll(
                pollfds.as_mut_ptr(),
                pollfds.len() as libc::nfds_t,
                &ts,
                std::ptr::null(),
            )
        };
        if r < 0 {
            let e = io::Error::last_os_error();
            if e.kind() != io::ErrorKind::Interrupted {
                return Err(e).context("ppoll");
            }
        }
    }
    Ok(st)
}

/// `sendmmsg` of every header in `hdrs`; how many the kernel took.
///
/// # Safety
/// Each header must point at live iovecs (and, unconnected, a live address) of the stated lengths,
/// untouched until the call returns.
pub(crate) unsafe fn send_mmsg(fd: i32, hdrs: &mut [libc::mmsghdr]) -> io::Result<usize> {
    // SAFETY: the caller's.
    let r = unsafe { libc::sendmmsg(fd, hdrs.as_mut_ptr(), hdrs.len() as libc::c_uint, 0) };
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(r as usize)
    }
}

/// Non-blocking `recvmmsg` into `hdrs`; how many datagrams arrived.
///
/// # Safety
/// As [`send_mmsg`], with writable buffers and address slots.
pub(crate) unsafe fn recv_mmsg(fd: i32, hdrs: &mut [libc::mmsghdr]) -> io::Result<usize> {
    // SAFETY: the caller's; a null timeout means none.
    let r = unsafe {
        libc::recvmmsg(
            fd,
            hdrs.as_mut_ptr(),
            hdrs.len() as libc::c_uint,
            libc::MSG_DONTWAIT,
            std::ptr::null_mut(),
        )
    };
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(r as usize)
    }
}
