//! A shard's UDP loop, in batches. The runtime's awaited `recv_from` waits for the first datagram, so
//! an idle shard sleeps and its other tasks run; then the datagrams already queued are drained with
//! non-blocking `recvmmsg` calls of up to `BATCH - 1`, again as long as one comes back full. Each is processed, its immediate response written into
//! a buffer of its own, and all of them go out with one non-blocking `sendmmsg`, answering each
//! datagram to its source address and port. What `sendmmsg` does not take because the send buffer
//! is full goes out through the runtime's awaited `send_to`. Responses that wait for the token source
//! are sent later by their own task (`ReplyTo::Udp`).
//!
//! Why: one awaited receive and one awaited send per datagram cost a ring submission (or a readiness
//! round trip) each, which under load was most of the shard's CPU. Under the epoll driver the direct
//! calls are what the runtime would make anyway; under io_uring they complete inline because the
//! data (or the buffer room) is already there, so nothing is gained by queueing them on the ring.
//!
//! Buffers and message headers are allocated once per socket; the loop itself does not allocate.

use std::io;
use std::mem;
use std::net::SocketAddr;
use std::os::fd::{AsRawFd, RawFd};
use std::ptr;
use std::rc::Rc;

use monoio::net::udp::UdpSocket;
use socket2::SockAddr;

use super::process::{process, Handled, Reads, ReplyTo, ShardCtx, Turn};
use super::stats::bump;

/// Datagrams handled per wake-up: the awaited one plus what one `recvmmsg` drains.
const BATCH: usize = 32;

/// `recvmmsg` rounds per wake-up at most (see `serve`).
const DRAIN_ROUNDS: usize = 8;

/// Room reserved for each response; the engine's replies are well under it, a larger one grows the
/// buffer once and it stays grown.
const OUT_CAPACITY: usize = 2048;

pub async fn serve(sock: UdpSocket, ctx: Rc<ShardCtx>) {
    let sock = Rc::new(sock);
    // Forward mode relays through the shard's first UDP socket, whatever received the message.
    let _ = ctx.relay.udp.set(sock.clone());
    let fd = sock.as_raw_fd();
    let max = ctx.shared.server.max_message_size;
    // One byte more than the cap: a datagram that fills it was larger than allowed.
    let mut first: Vec<u8> = Vec::with_capacity(max + 1);
    let mut rx = RecvBatch::new(BATCH - 1, max + 1);
    let mut tx = SendBatch::new(BATCH);
    // Registered once; the channel is this shard's own, so polling it takes no lock another core
    // holds. A stop cancels the receive in progress; deferred responses still go out on `sock`.
    let mut stop = ctx.stop.clone();
    let mut stopped = std::pin::pin!(stop.wait_for(|s| *s));
    loop {
        let (res, b) = monoio::select! {
            r = sock.recv_from(first) => r,
            _ = &mut stopped => break,
        };
        first = b;
        match res {
            Ok((n, src)) => take(
                &ctx,
                &Turn::new(&ctx).reads(),
                &sock,
                &first[..n.min(first.len())],
                n > max,
                src,
                &mut tx,
            ),
            Err(e) => {
                // ICMP errors surface here on some kernels; the socket itself stays usable.
                tracing::debug!(shard = ctx.id, error = %e, "udp receive error");
                continue;
            }
        }
        // A full drain means more may be queued: drain again before going back to the awaited
        // receive, whose wake-up costs a ring round trip. A partial one means the queue is empty,
        // so an idle shard pays no extra call. At most DRAIN_ROUNDS in a row, so that under a
        // flood the shard's other tasks (TCP, answers that waited for the token source) still run.
        for _ in 0..DRAIN_ROUNDS {
            let got = rx.drain(fd, ctx.id);
            if got > 0 {
                // Dropped before the flush below awaits (see `Turn`).
                let turn = Turn::new(&ctx);
                let reads = turn.reads();
                for i in 0..got {
                    match rx.datagram(i, max) {
                        Some((data, oversize, src)) => {
                            take(&ctx, &reads, &sock, data, oversize, src, &mut tx)
                        }
                        None => tracing::debug!(
                            shard = ctx.id,
                            "udp datagram from an unknown address family"
                        ),
                    }
                }
            }
            tx.flush(&sock, fd, &ctx).await;
            if got < BATCH - 1 {
                break;
            }
        }
    }
}

/// Processes one datagram; an immediate response is queued in `tx` for the batch's `sendmmsg`.
fn take(
    ctx: &Rc<ShardCtx>,
    reads: &Reads<'_>,
    sock: &Rc<UdpSocket>,
    data: &[u8],
    oversize: bool,
    src: SocketAddr,
    tx: &mut SendBatch,
) {
    if oversize {
        bump(&ctx.stats.dropped_oversize);
        tracing::debug!(shard = ctx.id, %src, "oversized datagram dropped");
        return;
    }
    let handled = process(ctx, reads, data, src, tx.next_out(), || {
        ReplyTo::Udp(sock.clone(), src)
    });
    match handled {
        Handled::Reply => tx.queue(src),
        Handled::Forward(dest) => match super::relay::udp_target(ctx, dest) {
            Some(to) => tx.queue(to),
            None => {
                // A client's TCP flow: its connection's writer (maybe on another shard) sends it.
                let bytes = tx.next_out().clone();
                let ctx = ctx.clone();
                monoio::spawn(async move { super::relay::deliver(&ctx, dest, bytes).await });
            }
        },
        Handled::Nothing => {}
    }
}

/// An all-zero C message header: null pointers and zero lengths, filled in before each call.
fn zeroed_mmsghdr() -> libc::mmsghdr {
    // SAFETY: mmsghdr is a plain C struct of integers and raw pointers; all-zero is a valid value.
    unsafe { mem::zeroed() }
}

/// Points a message header at one address and one iovec, with no control data, ready for a call.
fn point(
    h: &mut libc::mmsghdr,
    name: *mut libc::c_void,
    namelen: libc::socklen_t,
    iov: *mut libc::iovec,
) {
    h.msg_hdr.msg_name = name;
    h.msg_hdr.msg_namelen = namelen;
    h.msg_hdr.msg_iov = iov;
    h.msg_hdr.msg_iovlen = 1;
    h.msg_hdr.msg_control = ptr::null_mut();
    h.msg_hdr.msg_controllen = 0;
    h.msg_hdr.msg_flags = 0;
    h.msg_len = 0;
}

/// Receive side: buffers, source addresses and headers for the datagrams drained after the first.
struct RecvBatch {
    /// Zero-filled once, so any prefix the kernel wrote is an initialised slice.
    bufs: Vec<Box<[u8]>>,
    names: Vec<libc::sockaddr_storage>,
    iovs: Vec<libc::iovec>,
    hdrs: Vec<libc::mmsghdr>,
}

impl RecvBatch {
    fn new(slots: usize, buf_len: usize) -> Self {
        // SAFETY: sockaddr_storage is a plain C struct; all-zero is a valid (AF_UNSPEC) value.
        let empty_name: libc::sockaddr_storage = unsafe { mem::zeroed() };
        RecvBatch {
            bufs: (0..slots)
                .map(|_| vec![0u8; buf_len].into_boxed_slice())
                .collect(),
            names: vec![empty_name; slots],
            iovs: vec![
                libc::iovec {
                    iov_base: ptr::null_mut(),
                    iov_len: 0,
                };
                slots
            ],
            hdrs: (0..slots).map(|_| zeroed_mmsghdr()).collect(),
        }
    }

    /// Receives what is queued on `fd` without waiting; returns how many headers now describe a
    /// datagram (0 when nothing was queued).
    fn drain(&mut self, fd: RawFd, shard: usize) -> usize {
        for (iov, buf) in self.iovs.iter_mut().zip(self.bufs.iter_mut()) {
            iov.iov_base = buf.as_mut_ptr().cast();
            iov.iov_len = buf.len();
        }
        // Element pointers from the vectors' base pointers, so no later borrow of one element
        // invalidates those taken before it.
        let iovs = self.iovs.as_mut_ptr();
        let names = self.names.as_mut_ptr();
        for (i, h) in self.hdrs.iter_mut().enumerate() {
            point(
                h,
                names.wrapping_add(i).cast(),
                mem::size_of::<libc::sockaddr_storage>() as libc::socklen_t,
                iovs.wrapping_add(i),
            );
        }
        // SAFETY: every header points at one iovec and one sockaddr_storage of this batch, and each
        // iovec at a live buffer of its stated length; none of them moves or is touched until the
        // call returns. MSG_DONTWAIT keeps the call from blocking the shard.
        let got = unsafe {
            libc::recvmmsg(
                fd,
                self.hdrs.as_mut_ptr(),
                self.hdrs.len() as libc::c_uint,
                libc::MSG_DONTWAIT as _,
                ptr::null_mut(),
            )
        };
        if got < 0 {
            let e = io::Error::last_os_error();
            if e.kind() != io::ErrorKind::WouldBlock {
                // ICMP errors of earlier sends and EINTR land here; the next awaited receive goes on.
                tracing::debug!(shard, error = %e, "udp batch receive error");
            }
            return 0;
        }
        (got as usize).min(self.hdrs.len())
    }

    /// Datagram `i` of the last drain: its bytes, whether it exceeded `max` (then the bytes are not
    /// to be used), and its source; `None` when the source is not an IP address.
    fn datagram(&self, i: usize, max: usize) -> Option<(&[u8], bool, SocketAddr)> {
        let h = &self.hdrs[i];
        let buf = &self.bufs[i];
        let len = h.msg_len as usize;
        let oversize = h.msg_hdr.msg_flags & libc::MSG_TRUNC != 0 || len > max;
        let name_len = h
            .msg_hdr
            .msg_namelen
            .min(mem::size_of::<libc::sockaddr_storage>() as _);
        // SAFETY: the storage is fully initialised (zeroed at construction, then written by the
        // kernel) and `name_len` is clamped to its size, which is all SockAddr::new requires.
        let name = unsafe { SockAddr::new(self.names[i], name_len) };
        let src = name.as_socket()?;
        Some((&buf[..len.min(buf.len())], oversize, src))
    }
}

/// Send side: one output buffer per datagram of a batch, and the queued responses' destinations.
struct SendBatch {
    outs: Vec<Vec<u8>>,
    /// Destinations of the queued responses; response `k` is in `outs[k]`.
    to: Vec<SocketAddr>,
    names: Vec<SockAddr>,
    iovs: Vec<libc::iovec>,
    hdrs: Vec<libc::mmsghdr>,
}

impl SendBatch {
    fn new(slots: usize) -> Self {
        SendBatch {
            outs: (0..slots)
                .map(|_| Vec::with_capacity(OUT_CAPACITY))
                .collect(),
            to: Vec::with_capacity(slots),
            names: Vec::with_capacity(slots),
            iovs: vec![
                libc::iovec {
                    iov_base: ptr::null_mut(),
                    iov_len: 0,
                };
                slots
            ],
            hdrs: (0..slots).map(|_| zeroed_mmsghdr()).collect(),
        }
    }

    /// The buffer the next response is written into; it is kept only if `queue` follows.
    fn next_out(&mut self) -> &mut Vec<u8> {
        // A batch is at most as many datagrams as there are buffers, and each queues at most once.
        &mut self.outs[self.to.len()]
    }

    fn queue(&mut self, to: SocketAddr) {
        self.to.push(to);
        self.names.push(SockAddr::from(to));
    }

    /// Sends every queued response, then empties the queue.
    async fn flush(&mut self, sock: &UdpSocket, fd: RawFd, ctx: &ShardCtx) {
        let queued = self.to.len();
        let mut sent = 0;
        while sent < queued {
            match self.send_from(fd, sent) {
                Ok(0) => self.send_awaited(sock, sent, ctx).await,
                Ok(k) => {
                    sent += k;
                    continue;
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    // Send buffer full: wait for room the runtime's way, then batch again.
                    self.send_awaited(sock, sent, ctx).await;
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    // This destination cannot be sent to (unreachable, refused); the rest may be.
                    tracing::debug!(shard = ctx.id, to = %self.to[sent], error = %e, "udp send failed");
                }
            }
            sent += 1;
        }
        self.to.clear();
        self.names.clear();
    }

    /// One non-blocking `sendmmsg` of the queued responses from `from` on; how many it took.
    fn send_from(&mut self, fd: RawFd, from: usize) -> io::Result<usize> {
        let n = self.to.len() - from;
        for (iov, out) in self.iovs.iter_mut().zip(&self.outs[from..from + n]) {
            // The kernel only reads through this pointer for a send.
            iov.iov_base = out.as_ptr().cast_mut().cast();
            iov.iov_len = out.len();
        }
        let iovs = self.iovs.as_mut_ptr();
        for (i, (h, name)) in self.hdrs.iter_mut().zip(&self.names[from..]).enumerate() {
            // The kernel only reads through the name pointer for a send.
            point(
                h,
                name.as_ptr().cast_mut().cast(),
                name.len(),
                iovs.wrapping_add(i),
            );
        }
        // SAFETY: the first `n` headers each point at one iovec and one socket address of this
        // batch, and each iovec at a live output buffer of its stated length; nothing moves or is
        // written until the call returns. MSG_DONTWAIT keeps the call from blocking the shard.
        let sent = unsafe {
            libc::sendmmsg(
                fd,
                self.hdrs.as_mut_ptr(),
                n as libc::c_uint,
                libc::MSG_DONTWAIT as _,
            )
        };
        if sent < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok((sent as usize).min(n))
    }

    /// Sends queued response `k` with the runtime's awaited `send_to`.
    async fn send_awaited(&mut self, sock: &UdpSocket, k: usize, ctx: &ShardCtx) {
        let to = self.to[k];
        // Moved out and back: the buffer keeps its allocation.
        let out = mem::take(&mut self.outs[k]);
        let (res, out) = sock.send_to(out, to).await;
        self.outs[k] = out;
        if let Err(e) = res {
            tracing::debug!(shard = ctx.id, %to, error = %e, "udp send failed");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::UdpSocket as StdUdp;
    use std::time::Duration;

    fn pair(local: &str) -> Option<(StdUdp, StdUdp)> {
        Some((StdUdp::bind(local).ok()?, StdUdp::bind(local).ok()?))
    }

    #[test]
    fn drain_reads_sources_and_flags_oversize() {
        for local in ["127.0.0.1:0", "[::1]:0"] {
            let Some((server, client)) = pair(local) else {
                assert!(local.starts_with('['), "no IPv4 loopback");
                continue; // no IPv6 loopback here
            };
            let to = server.local_addr().unwrap();
            client.send_to(b"one", to).unwrap();
            client.send_to(&[b'x'; 20], to).unwrap();
            client.send_to(&[b'y'; 10], to).unwrap();
            // Loopback delivery is synchronous, but leave the kernel a moment all the same.
            std::thread::sleep(Duration::from_millis(20));
            let max = 10;
            let mut rx = RecvBatch::new(4, max + 1);
            assert_eq!(rx.drain(server.as_raw_fd(), 0), 3);
            let from = client.local_addr().unwrap();
            let (d, over, src) = rx.datagram(0, max).unwrap();
            assert_eq!((d, over, src), (&b"one"[..], false, from));
            let (_, over, src) = rx.datagram(1, max).unwrap();
            assert_eq!((over, src), (true, from));
            let (d, over, _) = rx.datagram(2, max).unwrap();
            assert_eq!((d, over), (&[b'y'; 10][..], false));
            // Nothing left: a non-blocking drain returns at once.
            assert_eq!(rx.drain(server.as_raw_fd(), 0), 0);
        }
    }

    #[test]
    fn send_from_sends_each_queued_response_to_its_destination() {
        let (server, a) = pair("127.0.0.1:0").unwrap();
        let b = StdUdp::bind("127.0.0.1:0").unwrap();
        let mut tx = SendBatch::new(4);
        for (peer, body) in [(&a, &b"to a"[..]), (&b, &b"to b"[..])] {
            let out = tx.next_out();
            out.clear();
            out.extend_from_slice(body);
            tx.queue(peer.local_addr().unwrap());
        }
        assert_eq!(tx.send_from(server.as_raw_fd(), 0).unwrap(), 2);
        let mut buf = [0u8; 16];
        for (peer, body) in [(&a, &b"to a"[..]), (&b, &b"to b"[..])] {
            peer.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
            let (n, src) = peer.recv_from(&mut buf).unwrap();
            assert_eq!((&buf[..n], src), (body, server.local_addr().unwrap()));
        }
    }
}
