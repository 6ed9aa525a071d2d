//! The TCP driver of `register`: one OS thread, C non-blocking connections, each one framed stream
//! of requests out and Content-Length-framed responses in; `ppoll` only when there is nothing to do.
//!
//! Requests due on a connection in one pass are appended to its write buffer and go out in one
//! `write`, the stream counterpart of `sendmmsg`. A connection that breaks is not re-opened: its
//! requests in flight count as timeouts and the run goes on with the others (and ends early if none
//! is left), since a server dropping connections under load is a finding, not noise to paper over.

use std::io::{self, Read as _, Write as _};
use std::net::{SocketAddr, TcpStream};
use std::os::fd::AsRawFd as _;
use std::time::{Duration, Instant};

use anyhow::Context as _;

use crate::engine::{DriverStats, Engine, Load};
use crate::sip::{self, Frame, Method, Template};

/// Requests queued but not yet written, per connection, before the sender waits: bounds memory when
/// the server reads slower than we write.
const MAX_QUEUED: usize = 256 * 1024;
const READ_CHUNK: usize = 64 * 1024;

struct Conn {
    stream: TcpStream,
    template: Template,
    rbuf: Vec<u8>,
    wbuf: Vec<u8>,
    woff: usize,
    inflight: u64,
    target: u64,
    alive: bool,
}

impl Conn {
    fn queued(&self) -> usize {
        self.wbuf.len() - self.woff
    }

    /// Reads what is there; `Ok(false)` when the peer closed.
    fn fill(&mut self) -> io::Result<bool> {
        loop {
            let len = self.rbuf.len();
            self.rbuf.resize(len + READ_CHUNK, 0);
            match self.stream.read(&mut self.rbuf[len..]) {
                Ok(0) => {
                    self.rbuf.truncate(len);
                    return Ok(false);
                }
                Ok(n) => {
                    self.rbuf.truncate(len + n);
                    if n < READ_CHUNK {
                        return Ok(true);
                    }
                }
                Err(e) => {
                    self.rbuf.truncate(len);
                    return match e.kind() {
                        io::ErrorKind::WouldBlock => Ok(true),
                        io::ErrorKind::Interrupted => continue,
                        _ => Err(e),
                    };
                }
            }
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        while self.woff < self.wbuf.len() {
            match self.stream.write(&self.wbuf[self.woff..]) {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(n) => self.woff += n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        if self.woff == self.wbuf.len() {
            self.wbuf.clear();
            self.woff = 0;
        }
        Ok(())
    }
}

/// Appends `n` requests to connection `c` and marks them in flight.
fn enqueue(engine: &mut Engine, conn: &mut Conn, c: usize, n: usize, scratch: &mut Vec<u8>) {
    let t = Instant::now();
    for _ in 0..n {
        let seq = engine.build(&conn.template, scratch);
        conn.wbuf.extend_from_slice(scratch);
        engine.commit(seq, c as u32, t);
    }
    conn.inflight += n as u64;
}

fn connect(target: SocketAddr, timeout: Duration) -> anyhow::Result<TcpStream> {
    let s = TcpStream::connect_timeout(&target, timeout)
        .with_context(|| format!("connecting to {target} over TCP"))?;
    // Each pass writes whole requests; Nagle would hold the next pass's behind an ACK.
    s.set_nodelay(true)?;
    s.set_nonblocking(true)?;
    Ok(s)
}

/// Runs the whole schedule against `target` over `connections` TCP connections.
pub fn run(
    engine: &mut Engine,
    target: SocketAddr,
    connections: usize,
    load: Load,
    method: Method,
) -> anyhow::Result<DriverStats> {
    let k = match load {
        Load::Window(w) => connections
            .min(usize::try_from(w).unwrap_or(usize::MAX))
            .max(1),
        Load::Rate(_) => connections.max(1),
    };
    let mut conns = Vec::with_capacity(k);
    for i in 0..k {
        let stream = connect(target, Duration::from_secs(2))?;
        let local = stream.local_addr()?;
        let target_window = match load {
            Load::Window(w) => w / k as u64 + u64::from((i as u64) < w % k as u64),
            Load::Rate(_) => 0,
        };
        conns.push(Conn {
            stream,
            template: Template::new(method, "TCP", local),
            rbuf: Vec::with_capacity(READ_CHUNK),
            wbuf: Vec::with_capacity(64 * 1024),
            woff: 0,
            inflight: 0,
            target: target_window,
            alive: true,
        });
    }
    let mut st = DriverStats::default();
    let sched = engine.schedule();
    let mut scratch = Vec::with_capacity(1024);
    let mut scheduled: u64 = 0;
    let mut rr = 0usize;
    let mut pollfds: Vec<libc::pollfd> = Vec::with_capacity(k);
    let mut freed: Vec<u32> = Vec::with_capacity(64);

    loop {
        let now = Instant::now();
        if now >= sched.hard_end {
            engine.expire(now, |_| {});
            break;
        }
        let mut busy = false;

        for c in 0..k {
            let conn = &mut conns[c];
            if !conn.alive {
                continue;
            }
            let before = conn.rbuf.len();
            // A read error (reset) ends the connection just as a close does.
            let open = conn.fill().unwrap_or(false);
            busy |= conn.rbuf.len() > before;
            let t = Instant::now();
            let mut off = 0;
            let mut bad = false;
            loop {
                match sip::next_frame(&conn.rbuf[off..]) {
                    Frame::Incomplete => break,
                    Frame::Skip(n) => off += n,
                    Frame::Message(n) => {
                        if let Some(owner) = engine.on_message(&conn.rbuf[off..off + n], t) {
                            freed.push(owner);
                        }
                        off += n;
                    }
                    Frame::Bad => {
                        bad = true;
                        break;
                    }
                }
            }
            conn.rbuf.drain(..off);
            // Normally the connection itself, but a slot is freed where its request was sent.
            for o in freed.drain(..) {
                let owner = &mut conns[o as usize];
                owner.inflight = owner.inflight.saturating_sub(1);
            }
            let conn = &mut conns[c];
            if !open || bad {
                conn.alive = false;
                st.broken += 1;
                engine.drop_conn(c as u32);
                conn.inflight = 0;
            }
        }
        if conns.iter().all(|c| !c.alive) {
            eprintln!("sipward-load: every TCP connection broke; ending the run early");
            break;
        }

        let now = Instant::now();
        engine.expire(now, |c| {
            let conn = &mut conns[c as usize];
            conn.inflight = conn.inflight.saturating_sub(1);
        });

        let sending = now < sched.measure_end;
        if sending {
            match load {
                Load::Window(_) => {
                    for (c, conn) in conns.iter_mut().enumerate() {
                        if conn.alive && conn.inflight < conn.target && conn.queued() < MAX_QUEUED {
                            let n = (conn.target - conn.inflight) as usize;
                            enqueue(engine, conn, c, n, &mut scratch);
                            st.sent_total += n as u64;
                            busy = true;
                        }
                    }
                }
                Load::Rate(rate) => {
                    let due = (now.duration_since(sched.start).as_secs_f64() * rate) as u64 + 1;
                    while scheduled < due {
                        let c = rr;
                        rr = (rr + 1) % k;
                        scheduled += 1;
                        let conn = &mut conns[c];
                        if conn.alive && conn.queued() < MAX_QUEUED {
                            enqueue(engine, conn, c, 1, &mut scratch);
                            st.sent_total += 1;
                        } else {
                            // An open loop keeps its schedule: a request with nowhere to go is dropped.
                            st.dropped += 1;
                        }
                        busy = true;
                    }
                }
            }
        } else if engine.pending_measured() == 0 {
            break;
        }

        for (c, conn) in conns.iter_mut().enumerate() {
            if conn.alive && conn.queued() > 0 && conn.flush().is_err() {
                conn.alive = false;
                st.broken += 1;
                engine.drop_conn(c as u32);
                conn.inflight = 0;
            }
        }

        if busy {
            continue;
        }
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
        let wait = wake.saturating_duration_since(Instant::now());
        if wait.is_zero() {
            continue;
        }
        pollfds.clear();
        for conn in conns.iter().filter(|c| c.alive) {
            let mut events = libc::POLLIN;
            if conn.queued() > 0 {
                events |= libc::POLLOUT;
            }
            pollfds.push(libc::pollfd {
                fd: conn.stream.as_raw_fd(),
                events,
                revents: 0,
            });
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
