//! A shard's UDP loop: receive a datagram, process it, answer to its source address and port.

use std::net::SocketAddr;
use std::rc::Rc;

use monoio::net::udp::UdpSocket;

use super::process::{process, Handled, ReplyTo, ShardCtx};
use super::stats::bump;

pub async fn serve(sock: UdpSocket, ctx: Rc<ShardCtx>) {
    let sock = Rc::new(sock);
    let max = ctx.shared.server.max_message_size;
    // One byte more than the cap: a datagram that fills it was larger than allowed.
    let mut buf: Vec<u8> = Vec::with_capacity(max + 1);
    let mut out: Vec<u8> = Vec::with_capacity(2048);
    loop {
        let (res, b) = sock.recv_from(buf).await;
        buf = b;
        let (n, src): (usize, SocketAddr) = match res {
            Ok(r) => r,
            Err(e) => {
                // ICMP errors surface here on some kernels; the socket itself stays usable.
                tracing::debug!(shard = ctx.id, error = %e, "udp receive error");
                continue;
            }
        };
        if n > max {
            bump(&ctx.stats.dropped_oversize);
            tracing::debug!(shard = ctx.id, %src, "oversized datagram dropped");
            continue;
        }
        let handled = process(&ctx, &buf[..n], src, &mut out, || {
            ReplyTo::Udp(sock.clone(), src)
        });
        if handled == Handled::Reply {
            let (res, o) = sock.send_to(out, src).await;
            out = o;
            if let Err(e) = res {
                tracing::debug!(shard = ctx.id, %src, error = %e, "udp send failed");
            }
        }
    }
}
