//! A shard's TCP side: accept within the per-shard connection cap, then per connection frame
//! messages by Content-Length, answer keep-alive pings, and write responses in order of completion.
//!
//! Each connection has a reader task (this module's `connection`) and a writer task fed by a bounded
//! channel, so a response that waited for the token source can be written while the reader goes on,
//! and a peer that stops reading slows its own reader down instead of growing a queue.

use std::net::SocketAddr;
use std::os::fd::AsRawFd;
use std::rc::Rc;
use std::time::Duration;

use monoio::buf::IoBufMut;
use monoio::io::{AsyncReadRent, AsyncWriteRentExt, Splitable};
use monoio::net::{TcpListener, TcpStream};

use super::process::{process_on, Handled, ReplyTo, ShardCtx, Turn};
use super::stats::bump;
use crate::auth::Done;
use crate::forward::Flow;
use crate::sip::framing::{next_frame, Frame};

/// Out of descriptors, every shard's accept fails every 50 ms: one warning per 10 s is enough.
static ACCEPT_WARNINGS: std::sync::LazyLock<crate::logs::RateLimit> =
    std::sync::LazyLock::new(|| crate::logs::RateLimit::new(Duration::from_secs(10)));

/// Responses queued for one connection's writer before its reader waits.
const WRITE_QUEUE: usize = 256;
const READ_CHUNK: usize = 16 * 1024;

pub async fn serve(listener: TcpListener, ctx: Rc<ShardCtx>) {
    let mut stop = ctx.stop.clone();
    let mut stopped = std::pin::pin!(stop.wait_for(|s| *s));
    loop {
        let accepted = monoio::select! {
            a = listener.accept() => a,
            // The listener closes when this returns: new connections are refused by the kernel.
            _ = &mut stopped => break,
        };
        match accepted {
            Ok((stream, peer)) => {
                if ctx.tcp_conns.get() >= ctx.shared.server.tcp_max_connections {
                    bump(&ctx.stats.tcp_refused);
                    tracing::debug!(shard = ctx.id, %peer, "tcp connection refused: shard at its connection cap");
                    drop(stream);
                    continue;
                }
                ctx.tcp_conns.set(ctx.tcp_conns.get() + 1);
                bump(&ctx.stats.tcp_open);
                let ctx = ctx.clone();
                monoio::spawn(async move {
                    connection(stream, peer, &ctx, None).await;
                    ctx.tcp_conns.set(ctx.tcp_conns.get() - 1);
                    let open = &ctx.stats.tcp_open;
                    open.store(
                        open.load(std::sync::atomic::Ordering::Relaxed) - 1,
                        std::sync::atomic::Ordering::Relaxed,
                    );
                });
            }
            Err(e) => {
                // Out of descriptors or memory: back off instead of spinning on the error.
                if let Some(suppressed) = ACCEPT_WARNINGS.allow() {
                    tracing::warn!(shard = ctx.id, error = %e, suppressed, "tcp accept failed");
                }
                monoio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

/// Serves one connection until it closes. `opened` learns the connection's number in forward mode's
/// flow table (the upstream connection sipward opens itself is found that way).
pub(super) async fn connection(
    stream: TcpStream,
    peer: SocketAddr,
    ctx: &Rc<ShardCtx>,
    opened: Option<local_sync::oneshot::Sender<u64>>,
) {
    let _ = stream.set_nodelay(true);
    let fd = stream.as_raw_fd();
    let (mut rd, mut wr) = stream.into_split();
    let (tx, mut rx) = local_sync::mpsc::bounded::channel::<Vec<u8>>(WRITE_QUEUE);
    let writer = monoio::spawn(async move {
        while let Some(mut data) = rx.recv().await {
            while let Ok(more) = rx.try_recv() {
                data.extend_from_slice(&more);
            }
            let (res, _) = wr.write_all(data).await;
            if res.is_err() {
                break;
            }
        }
    });

    // Forward mode names this connection in flow tokens, so that the core's messages reach it.
    let forwarding = ctx.shared.engine.load().forwarder().is_some();
    let conn = if forwarding {
        ctx.relay.open(peer, tx.clone())
    } else {
        0
    };
    if let Some(opened) = opened {
        let _ = opened.send(conn);
    }
    let arrival = Flow::Tcp {
        shard: u16::try_from(ctx.id).unwrap_or(u16::MAX),
        conn,
        peer,
    };
    let mut relayed = Vec::new();
    let max = ctx.shared.server.max_message_size;
    let idle = Duration::from_secs(ctx.shared.server.tcp_idle_timeout_s);
    let mut buf: Vec<u8> = Vec::with_capacity(READ_CHUNK);
    let mut out: Vec<u8> = Vec::with_capacity(2048);
    let mut batch: Vec<u8> = Vec::new();
    let mut stop = ctx.stop.clone();
    let mut stopped = std::pin::pin!(stop.wait_for(|s| *s));
    'conn: loop {
        let mut pos = 0;
        let mut close = false;
        // One per read; its block ends before the awaits below (see `Turn`).
        {
            let turn = Turn::new(ctx);
            let reads = turn.reads();
            loop {
                match next_frame(&buf[pos..], max) {
                    Frame::Incomplete => break,
                    Frame::Skip(n) => pos += n,
                    Frame::Ping(n) => {
                        pos += n;
                        batch.extend_from_slice(b"\r\n");
                    }
                    Frame::Message(n) => {
                        let msg = &buf[pos..pos + n];
                        pos += n;
                        let reply_to = || ReplyTo::Tcp(tx.clone());
                        match process_on(ctx, &reads, msg, arrival, &mut out, reply_to) {
                            Handled::Reply => batch.extend_from_slice(&out),
                            Handled::Forward(dest) => relayed.push((dest, out.clone())),
                            Handled::Nothing => {}
                        }
                    }
                    Frame::TooLarge => {
                        bump(&ctx.stats.dropped_oversize);
                        let head = &buf[pos..buf.len().min(pos + max)];
                        let done = turn.engine().too_large(head, peer, &mut out);
                        framing_reply(ctx, done, &out, &mut batch);
                        close = true;
                        break;
                    }
                    Frame::MissingContentLength(h) | Frame::BadContentLength(h) => {
                        let reason = if matches!(
                            next_frame(&buf[pos..], max),
                            Frame::MissingContentLength(_)
                        ) {
                            "Missing Content-Length header"
                        } else {
                            "Malformed Content-Length header"
                        };
                        let done =
                            turn.engine()
                                .bad_framing(&buf[pos..pos + h], reason, peer, &mut out);
                        framing_reply(ctx, done, &out, &mut batch);
                        // Without a length the next message's start is unknown: the stream is lost.
                        close = true;
                        break;
                    }
                }
            }
        }
        for (dest, bytes) in relayed.drain(..) {
            super::relay::deliver(ctx, dest, bytes).await;
        }
        if !batch.is_empty() && tx.send(std::mem::take(&mut batch)).await.is_err() {
            break 'conn;
        }
        if close {
            break 'conn;
        }
        buf.drain(..pos);
        if buf.capacity() - buf.len() < READ_CHUNK / 4 {
            buf.reserve(READ_CHUNK);
        }
        let len = buf.len();
        let read = monoio::select! {
            r = monoio::time::timeout(idle, rd.read(buf.slice_mut(len..))) => r,
            // Stopping: read no more; what is owed is still written before the connection ends.
            _ = &mut stopped => break 'conn,
        };
        match read {
            Err(_) => {
                tracing::debug!(shard = ctx.id, %peer, "tcp connection idle, closing");
                // The cancelled read took the buffer with it; nothing more is read on this stream.
                break 'conn;
            }
            Ok((Ok(0), _)) => break 'conn,
            Ok((Ok(_), slice)) => buf = slice.into_inner(),
            Ok((Err(e), _)) => {
                tracing::debug!(shard = ctx.id, %peer, error = %e, "tcp read failed");
                break 'conn;
            }
        }
    }
    if forwarding {
        ctx.relay.close(conn);
    }
    drop(tx);
    // The writer ends once every queued and deferred response is written.
    writer.await;
    // SAFETY: `fd` belongs to the stream whose halves are still alive here; shutdown does not close
    // it, it only tells the peer we are done and ends any read still pending in the kernel.
    unsafe {
        libc::shutdown(fd, libc::SHUT_RDWR);
    }
    drop(rd);
}

fn framing_reply(ctx: &ShardCtx, done: Done, out: &[u8], batch: &mut Vec<u8>) {
    match done {
        Done::Replied { .. } => {
            bump(&ctx.stats.replied);
            batch.extend_from_slice(out);
        }
        // Framing errors are answered, never relayed.
        Done::Silent | Done::Forwarded(_) => {}
        Done::Dropped(why) => ctx.stats.dropped(why),
    }
}
