//! One received message through the engine, the way both transports need it: answered at once when
//! no token lookup is needed or the cache knows the token, otherwise handed to a task that waits for
//! the source while the shard goes on serving.

use std::cell::Cell;
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::Arc;

use super::stats::{bump, method_index, method_slot, outcome_index, ShardStats, SILENT};
use super::Shared;
use crate::auth::{Begin, Done, Engine, Lookup, Outcome, SourceError};
use crate::forward::{Dest, Flow};
use crate::sip::Method;
use crate::token::cache::{Pinned, Snapshot};
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
    /// Becomes true when the server stops: loops stop taking new messages (see [`super::Server`]).
    pub stop: tokio::sync::watch::Receiver<bool>,
    /// Forward mode's sockets, flows and lanes.
    pub relay: super::relay::RelayState,
}

/// What a shard reads once per batch of messages (one `recvmmsg` round, one TCP read) instead of
/// once per message: the engine, whether a token source is configured, and the clock. Each read
/// of an `ArcSwap` writes a debt slot and clears it with a locked instruction, and the clock is a
/// vDSO call (per message, perf put the clock at 0.44% of the shard's samples under cached load,
/// a sixtieth of sipward's own time). A reload takes effect from the next batch, microseconds
/// later. `now` is in whole seconds and a batch lasts microseconds: a token is at most accepted
/// for the rest of a batch that began in its last valid second.
///
/// The token cache is held the same way (see [`crate::token::cache::Snapshot`]): [`Turn::reads`]
/// pins it for the batch.
///
/// Not to be held across an await: its three `ArcSwap` guards (the engine, the cache's two
/// generations) take three of the thread's few debt slots.
pub struct Turn {
    engine: arc_swap::Guard<Arc<Engine>>,
    has_source: bool,
    now: u64,
    cache: Snapshot,
}

impl Turn {
    #[inline]
    pub fn new(ctx: &ShardCtx) -> Turn {
        Turn {
            engine: ctx.shared.engine.load(),
            has_source: ctx.shared.tokens.has_source(),
            now: unix_now(),
            cache: ctx.shared.tokens.snapshot(),
        }
    }

    pub fn engine(&self) -> &Engine {
        &self.engine
    }

    /// What [`process`] reads for each message of the batch, with the token cache pinned.
    #[inline]
    pub fn reads(&self) -> Reads<'_> {
        Reads {
            turn: self,
            cache: self.cache.pin(),
        }
    }
}

/// A [`Turn`] with its cache snapshot pinned. Not to be held across an await either: the pin
/// keeps entries removed meanwhile from being freed.
pub struct Reads<'t> {
    turn: &'t Turn,
    cache: Pinned<'t>,
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

/// Counts how `data` ended. `method` is the request's method when the engine parsed it on the way
/// (every request that reached a token lookup); otherwise the request line is read again.
fn record(
    stats: &ShardStats,
    done: Done,
    method: Option<Method>,
    data: &[u8],
    src: SocketAddr,
) -> Handled {
    let method = || method.map_or_else(|| method_index(data), method_slot);
    match done {
        Done::Replied { code, outcome } => {
            bump(&stats.replied);
            stats.response(code);
            stats.request(method(), outcome_index(outcome));
            if let Some(o) = outcome.filter(|o| *o != Outcome::Accept) {
                rejected(data, src, o, code);
            }
            Handled::Reply
        }
        Done::Silent => {
            bump(&stats.silent);
            stats.request(method(), SILENT);
            Handled::Nothing
        }
        Done::Forwarded(dest) => {
            bump(&stats.relayed);
            Handled::Forward(dest)
        }
        Done::Dropped(why) => {
            stats.dropped(why);
            tracing::debug!(reason = why.label(), %src, "message dropped");
            Handled::Nothing
        }
    }
}

/// The debug line for a rejected request. The message is scanned again only when debug is on; the
/// Call-ID and the method are printed, never a header that could carry a token.
#[cold]
fn rejected(data: &[u8], src: SocketAddr, outcome: Outcome, code: u16) {
    if !tracing::enabled!(tracing::Level::DEBUG) {
        return;
    }
    let (method, call_id) = match crate::sip::scan::scan(data) {
        Ok(m) => (
            String::from_utf8_lossy(m.method_bytes()).into_owned(),
            m.first(crate::sip::scan::HeaderKind::CallId)
                .map(|c| String::from_utf8_lossy(c).into_owned())
                .unwrap_or_default(),
        ),
        Err(_) => (String::new(), String::new()),
    };
    tracing::debug!(
        call_id = %call_id,
        %src,
        method = %method,
        outcome = outcome.label(),
        code,
        "request rejected"
    );
}

/// Processes `data` from `src`; a response to send now is left in `out`. `reply_to` is called only
/// when the answer must wait for the token source.
pub fn process(
    ctx: &Rc<ShardCtx>,
    reads: &Reads<'_>,
    data: &[u8],
    src: SocketAddr,
    out: &mut Vec<u8>,
    reply_to: impl FnOnce() -> ReplyTo,
) -> Handled {
    process_on(ctx, reads, data, Flow::Udp(src), out, reply_to)
}

/// [`process`] for a message that arrived on `arrival` (a TCP connection names itself).
pub fn process_on(
    ctx: &Rc<ShardCtx>,
    reads: &Reads<'_>,
    data: &[u8],
    arrival: Flow,
    out: &mut Vec<u8>,
    reply_to: impl FnOnce() -> ReplyTo,
) -> Handled {
    bump(&ctx.stats.received);
    let turn = reads.turn;
    let engine = turn.engine();
    let src = arrival.peer();
    let tokens = &ctx.shared.tokens;
    let now = turn.now;
    // The lookup runs on the request where the engine scanned it (see `Engine::begin_then`); only
    // a miss comes back out, to be looked up again by a task of its own.
    let mut method = None;
    let looked_up = engine.begin_then(data, arrival, out, |ready, out| {
        method = ready.msg.method();
        if !turn.has_source {
            return Some(engine.finish_ready(ready, arrival, Lookup::NoSource, now, out));
        }
        let key = tokens.key(ready.token);
        let hit = tokens.with_pinned(&reads.cache, key, now, |facts| {
            engine.finish_ready(ready, arrival, Lookup::Found(facts), now, out)
        });
        if hit.is_some() {
            bump(&ctx.stats.cache_hits);
            return hit;
        }
        bump(&ctx.stats.cache_misses);
        if ctx.pending.get() >= MAX_PENDING_PER_SHARD {
            bump(&ctx.stats.dropped_overloaded);
            let overloaded = Lookup::Failed(SourceError::Overloaded);
            return Some(engine.finish_ready(ready, arrival, overloaded, now, out));
        }
        None
    });
    match looked_up {
        Err(done) | Ok(Some(done)) => return record(&ctx.stats, done, method, data, src),
        Ok(None) => {}
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
        match record(&ctx.stats, done, method, &copy, src) {
            Handled::Reply => reply_to.send(out).await,
            Handled::Forward(dest) => super::relay::deliver(&ctx, dest, out).await,
            Handled::Nothing => {}
        }
        // Counted down only once the response is out: a stopping shard waits for this to reach 0.
        ctx.pending.set(ctx.pending.get() - 1);
    });
    Handled::Nothing
}

async fn engine_again(
    ctx: &ShardCtx,
    data: &[u8],
    arrival: Flow,
    out: &mut Vec<u8>,
) -> Option<Done> {
    // The engine may have been reloaded since the first pass: its answer stands either way. Held
    // as an Arc across the wait, not as a guard, so the shard's few guard slots stay free.
    let engine = ctx.shared.engine.load_full();
    let p = match engine.begin_on(data, arrival, out) {
        Begin::NeedToken(p) => p,
        Begin::Done(done) => return Some(done),
    };
    let tokens = &ctx.shared.tokens;
    let key = tokens.key(p.token);
    let now = unix_now();
    let result = tokens.resolve(p.token.as_str(), key, now).await;
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
