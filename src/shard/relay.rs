//! Forward mode's I/O: sending a relayed message to where [`crate::forward`] decided, which may be
//! the upstream, a UDP address, or a TCP connection owned by this shard or another one.
//!
//! Each shard keeps its own table of TCP flows (connection number → writer queue) and a lane, a
//! cross-thread channel, on which other shards hand it messages for its connections; no shard
//! reads another's table. UDP goes out through the shard's own UDP socket, so the core and the
//! clients see sipward's listen address. A TCP upstream is reached over a connection the shard opens
//! when it first needs one (and again after it closed); it is served like an accepted one, so the
//! core's responses and requests on it go through the engine like any other message.

use std::cell::{OnceCell, RefCell};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::rc::Rc;

use monoio::net::udp::UdpSocket;
use tokio::sync::mpsc::{channel, Receiver, Sender};

use super::process::ShardCtx;
use super::stats::bump;
use crate::auth::Done;
use crate::forward::{Dest, Flow, Transport};

/// A message for connection `conn` of the receiving shard.
pub struct Handoff {
    pub conn: u64,
    pub peer: SocketAddr,
    pub bytes: Vec<u8>,
}

/// Messages a lane holds for its shard before further ones are dropped (and counted): a shard
/// that cannot keep up sheds load instead of growing a queue without bound.
const LANE_CAPACITY: usize = 8192;

/// The senders of every shard's lane, indexed by shard.
pub struct Lanes {
    senders: Vec<Sender<Handoff>>,
}

impl Lanes {
    /// One lane per shard; the receivers go to the shards in order.
    pub fn new(shards: usize) -> (Lanes, Vec<Receiver<Handoff>>) {
        let (senders, receivers) = (0..shards).map(|_| channel(LANE_CAPACITY)).unzip();
        (Lanes { senders }, receivers)
    }
}

/// A connection's writer queue.
type Writer = local_sync::mpsc::bounded::Tx<Vec<u8>>;

/// What forward mode needs of a shard beyond what respond mode does.
pub struct RelayState {
    pub lanes: std::sync::Arc<Lanes>,
    /// The shard's UDP socket, once its loop started: relays to the upstream and UDP clients.
    pub udp: OnceCell<Rc<UdpSocket>>,
    /// This shard's TCP connections by number, with the peer each belongs to.
    flows: RefCell<HashMap<u64, (SocketAddr, Writer)>>,
    next_conn: std::cell::Cell<u64>,
    /// The number of this shard's connection to a TCP upstream, once opened.
    upstream_conn: std::cell::Cell<Option<u64>>,
}

impl RelayState {
    pub fn new(lanes: std::sync::Arc<Lanes>) -> RelayState {
        RelayState {
            lanes,
            udp: OnceCell::new(),
            flows: RefCell::new(HashMap::new()),
            next_conn: std::cell::Cell::new(0),
            upstream_conn: std::cell::Cell::new(None),
        }
    }

    /// Registers a TCP connection; its number goes into flow tokens.
    pub fn open(&self, peer: SocketAddr, tx: Writer) -> u64 {
        let conn = self.next_conn.get();
        self.next_conn.set(conn + 1);
        self.flows.borrow_mut().insert(conn, (peer, tx));
        conn
    }

    pub fn close(&self, conn: u64) {
        self.flows.borrow_mut().remove(&conn);
        if self.upstream_conn.get() == Some(conn) {
            self.upstream_conn.set(None);
        }
    }

    fn writer(
        &self,
        conn: u64,
        peer: SocketAddr,
    ) -> Option<local_sync::mpsc::bounded::Tx<Vec<u8>>> {
        let flows = self.flows.borrow();
        let (p, tx) = flows.get(&conn)?;
        (*p == peer).then(|| tx.clone())
    }
}

/// The UDP address a destination is sent to, when it is one; `None` for TCP flows.
#[inline]
pub fn udp_target(ctx: &ShardCtx, dest: Dest) -> Option<SocketAddr> {
    match dest {
        Dest::Upstream => ctx
            .shared
            .engine
            .load()
            .forwarder()
            .filter(|f| f.upstream_transport == Transport::Udp)
            .map(|f| f.upstream),
        Dest::Flow(Flow::Udp(a)) => Some(a),
        Dest::Flow(Flow::Tcp { .. }) => None,
    }
}

/// Sends a relayed message wherever `dest` is, awaiting the send.
pub async fn deliver(ctx: &Rc<ShardCtx>, dest: Dest, bytes: Vec<u8>) {
    match dest {
        Dest::Flow(Flow::Tcp { shard, conn, peer }) => to_tcp(ctx, shard, conn, peer, bytes).await,
        Dest::Upstream if udp_target(ctx, dest).is_none() => to_upstream_tcp(ctx, bytes).await,
        _ => {
            let (Some(to), Some(sock)) = (udp_target(ctx, dest), ctx.relay.udp.get()) else {
                bump(&ctx.stats.dropped_unroutable);
                tracing::debug!(shard = ctx.id, "no UDP socket to relay on");
                return;
            };
            let sock = sock.clone();
            if let (Err(e), _) = sock.send_to(bytes, to).await {
                tracing::debug!(shard = ctx.id, %to, error = %e, "udp relay failed");
            }
        }
    }
}

/// Sends to the TCP upstream over this shard's connection to it, opening one when there is none.
async fn to_upstream_tcp(ctx: &Rc<ShardCtx>, bytes: Vec<u8>) {
    let Some(up) = ctx.shared.engine.load().forwarder().map(|f| f.upstream) else {
        return;
    };
    let open = ctx
        .relay
        .upstream_conn
        .get()
        .and_then(|conn| ctx.relay.writer(conn, up));
    let tx = match open {
        Some(tx) => tx,
        None => match connect_upstream(ctx, up).await {
            Some(tx) => tx,
            None => {
                bump(&ctx.stats.dropped_unroutable);
                return;
            }
        },
    };
    if tx.send(bytes).await.is_err() {
        bump(&ctx.stats.dropped_unroutable);
    }
}

/// How long a connection to the upstream may take to open before the message is dropped.
const UPSTREAM_CONNECT_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(3);

async fn connect_upstream(ctx: &Rc<ShardCtx>, up: SocketAddr) -> Option<Writer> {
    let stream = match monoio::time::timeout(
        UPSTREAM_CONNECT_TIMEOUT,
        monoio::net::TcpStream::connect_addr(up),
    )
    .await
    {
        Ok(Ok(stream)) => stream,
        Ok(Err(e)) => {
            tracing::warn!(shard = ctx.id, %up, error = %e, "cannot connect to the upstream");
            return None;
        }
        Err(_) => {
            tracing::warn!(shard = ctx.id, %up, "connecting to the upstream timed out");
            return None;
        }
    };
    let (opened, conn) = local_sync::oneshot::channel();
    let task_ctx = ctx.clone();
    monoio::spawn(async move {
        super::tcp::connection(stream, up, &task_ctx, Some(opened)).await;
    });
    let conn = conn.await.ok()?;
    ctx.relay.upstream_conn.set(Some(conn));
    ctx.relay.writer(conn, up)
}

/// Sends to a TCP flow: this shard's connection directly, another shard's through its lane.
pub async fn to_tcp(ctx: &Rc<ShardCtx>, shard: u16, conn: u64, peer: SocketAddr, bytes: Vec<u8>) {
    if usize::from(shard) != ctx.id {
        let sent = ctx
            .relay
            .lanes
            .senders
            .get(usize::from(shard))
            .is_some_and(|lane| lane.try_send(Handoff { conn, peer, bytes }).is_ok());
        if !sent {
            // The lane is full, or the token names a shard this process does not run (signed
            // before a restart with fewer shards).
            bump(&ctx.stats.dropped_unroutable);
        }
        return;
    }
    match ctx.relay.writer(conn, peer) {
        Some(tx) => {
            if tx.send(bytes).await.is_err() {
                // The connection closed while the message waited for room.
                bump(&ctx.stats.dropped_unroutable);
            }
        }
        None => flow_gone(ctx, &bytes).await,
    }
}

/// The flow a message was for is closed: a request is answered 430 Flow Failed toward whoever
/// sent it (RFC 5626 5.3), anything else is dropped.
async fn flow_gone(ctx: &Rc<ShardCtx>, relayed: &[u8]) {
    let mut out = Vec::with_capacity(512);
    match ctx.shared.engine.load().flow_failed(relayed, &mut out) {
        Done::Forwarded(dest) if !matches!(dest, Dest::Flow(Flow::Tcp { .. })) => {
            bump(&ctx.stats.replied);
            Box::pin(deliver(ctx, dest, out)).await;
        }
        _ => bump(&ctx.stats.dropped_unroutable),
    }
}

/// Serves this shard's lane: messages other shards relay to its TCP connections.
pub async fn serve_lane(ctx: Rc<ShardCtx>, mut rx: Receiver<Handoff>) {
    while let Some(h) = rx.recv().await {
        let id = u16::try_from(ctx.id).unwrap_or(u16::MAX);
        to_tcp(&ctx, id, h.conn, h.peer, h.bytes).await;
    }
}
