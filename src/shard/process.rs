//! One received message through the engine, the way both transports need it: answered at once when
//! no token lookup is needed or the cache knows the token, otherwise handed to a task that waits for
//! the source while the shard goes on serving.

use std::cell::Cell;
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use super::stats::{bump, ShardStats};
use super::Shared;
use crate::auth::{Begin, Done, Lookup, SourceError};
use crate::forward::{Dest, Flow};
use crate::token::{unix_now, Unresolved};

/// Requests a shard lets wait for the token source at once; past that they are answered as if the
/// source were overloaded rather than queued without bound.
pub const MAX_PENDING_PER_SHARD: usize = 16_384;

/// What one shard owns and every task on it shares.
pub struct ShardCtx {
    pub id: usize,
    pub shared: Arc<Shared>,
    pub stats: Arc<ShardStats>,
    pub pending: Cell<usize>,
    pub tcp_conns: Cell<usize>,
    /// Forward mode's sockets, flows and lanes.
    pub relay: super::relay::RelayState,
}

/// Where a deferred response goes.
pub enum ReplyTo {
    Udp(Rc<monoio::net::udp::UdpSocket>, SocketAddr),
    Tcp(local_sync::mpsc::bounded::Tx<Vec<u8>>),
}

impl ReplyTo {
    async fn send(self, bytes: Vec<u8>) {
        match self {
            ReplyTo::Udp(sock, to) => {
                let _ = sock.send_to(bytes, to).await;
            }
            ReplyTo::Tcp(tx) => {
                let _ = tx.send(bytes).await;
            }
        }
    }
}

/// Whether `out` holds a response to send now, or a relayed message to send to `Dest`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Handled {
    Reply,
    Forward(Dest),
    Nothing,
}

fn record(stats: &ShardStats, done: Done) -> Handled {
    match done {
        Done::Replied { .. } => {
            bump(&stats.replied);
            Handled::Reply
        }
        Done::Silent => {
            bump(&stats.silent);
            Handled::Nothing
        }
        Done::Forwarded(dest) => {
            bump(&stats.relayed);
            Handled::Forward(dest)
        }
        Done::Dropped(why) => {
            stats.dropped(why);
            tracing::debug!(reason = why.label(), "message dropped");
            Handled::Nothing
        }
    }
}

/// Processes `data` from `src`; a response to send now is left in `out`. `reply_to` is called only
/// when the answer must wait for the token source.
pub fn process(
    ctx: &Rc<ShardCtx>,
    data: &[u8],
    src: SocketAddr,
    out: &mut Vec<u8>,
    reply_to: impl FnOnce() -> ReplyTo,
) -> Handled {
    process_on(ctx, data, Flow::Udp(src), out, reply_to)
}

/// [`process`] for a message that arrived on `arrival` (a TCP connection names itself).
pub fn process_on(
    ctx: &Rc<ShardCtx>,
    data: &[u8],
    arrival: Flow,
    out: &mut Vec<u8>,
    reply_to: impl FnOnce() -> ReplyTo,
) -> Handled {
    bump(&ctx.stats.received);
    let engine = &ctx.shared.engine;
    let pending = match engine.begin_on(data, arrival, out) {
        Begin::Done(done) => return record(&ctx.stats, done),
        Begin::NeedToken(p) => p,
    };
    let tokens = &ctx.shared.tokens;
    let now = unix_now();
    if !tokens.has_source() {
        return record(
            &ctx.stats,
            engine.finish_on(&pending, arrival, Lookup::NoSource, now, out),
        );
    }
    let key = tokens.key(pending.token);
    let hit = tokens.with_cached(key, now, |facts| {
        engine.finish_on(&pending, arrival, Lookup::Found(facts), now, out)
    });
    if let Some(done) = hit {
        return record(&ctx.stats, done);
    }
    if ctx.pending.get() >= MAX_PENDING_PER_SHARD {
        bump(&ctx.stats.dropped_overloaded);
        let done = engine.finish_on(
            &pending,
            arrival,
            Lookup::Failed(SourceError::Overloaded),
            now,
            out,
        );
        return record(&ctx.stats, done);
    }
    // Slow path: keep a copy of the request, answer when the source has.
    let copy = data.to_vec();
    let reply_to = reply_to();
    let ctx = ctx.clone();
    ctx.pending.set(ctx.pending.get() + 1);
    bump(&ctx.stats.token_lookups);
    monoio::spawn(async move {
        let mut out = Vec::with_capacity(1024);
        let done = match engine_again(&ctx, &copy, arrival, &mut out).await {
            Some(done) => done,
            None => Done::Silent,
        };
        ctx.pending.set(ctx.pending.get() - 1);
        match record(&ctx.stats, done) {
            Handled::Reply => reply_to.send(out).await,
            Handled::Forward(dest) => super::relay::deliver(&ctx, dest, out).await,
            Handled::Nothing => {}
        }
    });
    Handled::Nothing
}

async fn engine_again(
    ctx: &ShardCtx,
    data: &[u8],
    arrival: Flow,
    out: &mut Vec<u8>,
) -> Option<Done> {
    let engine = &ctx.shared.engine;
    // Same bytes, same engine: begin() reaches the same token again.
    let Begin::NeedToken(p) = engine.begin_on(data, arrival, out) else {
        return None;
    };
    let tokens = &ctx.shared.tokens;
    let key = tokens.key(p.token);
    let now = unix_now();
    let result = tokens.resolve(p.token, key, now).await;
    let now = unix_now();
    Some(match result {
        Ok(facts) => engine.finish_on(&p, arrival, Lookup::Found(&facts), now, out),
        Err(Unresolved::NoSource) => engine.finish_on(&p, arrival, Lookup::NoSource, now, out),
        Err(Unresolved::Failed(e)) => {
            tracing::debug!(error = %e, "token source failed");
            engine.finish_on(&p, arrival, Lookup::Failed(e), now, out)
        }
    })
}

/// Sum of a counter over shards.
pub fn total(
    stats: &[Arc<ShardStats>],
    f: impl Fn(&ShardStats) -> &std::sync::atomic::AtomicU64,
) -> u64 {
    stats.iter().map(|s| f(s).load(Ordering::Relaxed)).sum()
}
