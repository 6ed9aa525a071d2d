//! The I/O layer: one thread per shard, each pinned to a core with its own monoio runtime (io_uring or
//! epoll) and its own UDP socket and TCP listener per configured address, all bound with SO_REUSEPORT
//! so the kernel spreads clients over shards. Shards share only [`Shared`] (the engine and the token
//! service); everything else a shard owns.
//!
//! This layer makes no decisions about SIP or tokens: it moves bytes between sockets and
//! [`crate::auth::Engine`].
//!
//! What a live reload may change (the engine, the token source, the cache TTLs) sits behind
//! `arc-swap` in [`Shared`] and is loaded once per batch of messages ([`reload`],
//! [`process::Turn`]). [`Server::shutdown`] stops the receive and accept loops, lets requests
//! waiting on the token source finish within `[server] shutdown_grace_s`, and ends the shard threads.

pub mod driver;
pub mod process;
pub mod relay;
pub mod reload;
pub mod stats;
pub mod tcp;
pub mod udp;

use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use arc_swap::ArcSwap;
use socket2::{Domain, Protocol, Socket, Type};

use crate::auth::Engine;
use crate::config::{Config, ConfigError, ServerConfig};
use crate::token::metrics::SourceMetrics;
use crate::token::{TokenHasher, TokenService};

pub use driver::Driver;
use process::ShardCtx;
use stats::ShardStats;

/// What every shard reads.
pub struct Shared {
    /// Swapped whole by a reload; shards load it once per batch of messages (`process::Turn`).
    pub engine: ArcSwap<Engine>,
    pub tokens: TokenService,
    /// Fixed for the life of the process: listen addresses and shard count need a restart.
    pub server: ServerConfig,
    /// Introspection / userinfo requests by host; kept across reloads.
    pub source_metrics: SourceMetrics,
    /// Keys the To-tag hash; kept across reloads so tags stay stable.
    tag_key: (u64, u64),
}

impl Shared {
    /// Shared state around a prepared engine and token service (tests give their own source).
    pub fn new(engine: Engine, tokens: TokenService, server: ServerConfig) -> Shared {
        Shared {
            engine: ArcSwap::from_pointee(engine),
            tokens,
            server,
            source_metrics: SourceMetrics::default(),
            tag_key: crate::token::random_keys(),
        }
    }

    /// Builds the engine and the token service from a validated configuration; loads token files.
    pub fn from_config(cfg: &Config) -> Result<Shared, ConfigError> {
        let tag_key = crate::token::random_keys();
        let mut shared = Shared {
            engine: ArcSwap::from_pointee(reload::engine(cfg, tag_key, cfg.forward.as_ref())),
            tokens: TokenService::new(None, &cfg.cache, TokenHasher::random()),
            server: cfg.server.clone(),
            source_metrics: SourceMetrics::default(),
            tag_key,
        };
        let source = shared.source(&cfg.source)?;
        shared.tokens = TokenService::new(source, &cfg.cache, TokenHasher::random());
        Ok(shared)
    }
}

/// The sockets of one shard, bound and ready to hand to its runtime.
#[derive(Default)]
pub struct ShardSockets {
    pub udp: Vec<std::net::UdpSocket>,
    pub tcp: Vec<std::net::TcpListener>,
}

/// Where the server listens, with ports resolved (a configured port 0 becomes the one the kernel chose).
#[derive(Debug, Clone, Default)]
pub struct Bound {
    pub udp: Vec<SocketAddr>,
    pub tcp: Vec<SocketAddr>,
}

fn udp_socket(addr: SocketAddr, recv_buffer: usize) -> std::io::Result<std::net::UdpSocket> {
    let s = Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP))?;
    s.set_reuse_port(true)?;
    if addr.is_ipv6() {
        s.set_only_v6(true)?;
    }
    // The kernel caps this at net.core.rmem_max; see tuning/README.md.
    let _ = s.set_recv_buffer_size(recv_buffer);
    s.set_nonblocking(true)?;
    s.bind(&addr.into())?;
    Ok(s.into())
}

fn tcp_listener(addr: SocketAddr) -> std::io::Result<std::net::TcpListener> {
    let s = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    s.set_reuse_address(true)?;
    s.set_reuse_port(true)?;
    if addr.is_ipv6() {
        s.set_only_v6(true)?;
    }
    s.set_nonblocking(true)?;
    s.bind(&addr.into())?;
    s.listen(1024)?;
    Ok(s.into())
}

/// Binds every shard's sockets. The first shard's socket fixes the port when the configured one is 0,
/// so that all shards share one port.
pub fn bind(server: &ServerConfig) -> std::io::Result<(Vec<ShardSockets>, Bound)> {
    let mut shards: Vec<ShardSockets> = (0..server.shards)
        .map(|_| ShardSockets::default())
        .collect();
    let mut bound = Bound::default();
    let with_addr = |e: std::io::Error, what: &str, a: SocketAddr| {
        std::io::Error::new(e.kind(), format!("{what} {a}: {e}"))
    };
    for &addr in &server.udp {
        let mut actual = addr;
        for shard in shards.iter_mut() {
            let s = udp_socket(actual, server.udp_recv_buffer)
                .map_err(|e| with_addr(e, "udp", actual))?;
            actual = s.local_addr()?;
            shard.udp.push(s);
        }
        bound.udp.push(actual);
    }
    for &addr in &server.tcp {
        let mut actual = addr;
        for shard in shards.iter_mut() {
            let l = tcp_listener(actual).map_err(|e| with_addr(e, "tcp", actual))?;
            actual = l.local_addr()?;
            shard.tcp.push(l);
        }
        bound.tcp.push(actual);
    }
    Ok((shards, bound))
}

/// A running server: its shard threads and counters.
pub struct Server {
    pub bound: Bound,
    pub driver: Driver,
    pub stats: Vec<Arc<ShardStats>>,
    pub shared: Arc<Shared>,
    /// Shards whose loops are running (all of them once started, 0 once stopping).
    pub listening: Arc<AtomicUsize>,
    /// One channel per shard, so that no two shards poll the same lock.
    stop: Vec<tokio::sync::watch::Sender<bool>>,
    threads: Vec<std::thread::JoinHandle<()>>,
}

impl Server {
    /// Binds, starts every shard, and returns once each has its runtime and sockets registered.
    pub fn start(cfg: &Config) -> anyhow::Result<Server> {
        Server::start_with(Arc::new(Shared::from_config(cfg)?))
    }

    /// Stops the shards: no more messages are taken, requests waiting on the token source get up
    /// to `[server] shutdown_grace_s` to be answered, then every shard thread ends.
    pub fn shutdown(self) {
        for s in &self.stop {
            let _ = s.send(true);
        }
        for t in self.threads {
            let _ = t.join();
        }
    }

    /// Starts the server around prepared shared state (a token source of the caller's choosing).
    pub fn start_with(shared: Arc<Shared>) -> anyhow::Result<Server> {
        let (driver, fallback) = driver::choose(shared.server.io)
            .map_err(|why| anyhow::anyhow!("server.io = \"io_uring\": {why}"))?;
        if let Some(why) = fallback {
            tracing::warn!("io_uring unavailable, using epoll: {why}");
        }
        let (sockets, bound) = bind(&shared.server)?;
        let cores = core_affinity::get_core_ids().unwrap_or_default();
        let (ready_tx, ready_rx) = std::sync::mpsc::channel::<Result<(), String>>();
        let mut threads = Vec::new();
        let mut stats = Vec::new();
        let mut stop = Vec::new();
        let listening = Arc::new(AtomicUsize::new(0));
        let (lanes, lane_rxs) = relay::Lanes::new(sockets.len());
        let lanes = Arc::new(lanes);
        for ((id, socks), lane_rx) in sockets.into_iter().enumerate().zip(lane_rxs) {
            let lanes = lanes.clone();
            let shard_stats = Arc::new(ShardStats::default());
            stats.push(shard_stats.clone());
            let shared = shared.clone();
            let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
            stop.push(stop_tx);
            let stop = stop_rx;
            let live = listening.clone();
            let core = (!cores.is_empty()).then(|| cores[id % cores.len()]);
            let ready = ready_tx.clone();
            let t = std::thread::Builder::new()
                .name(format!("sipward-shard-{id}"))
                .spawn(move || {
                    if let Some(core) = core {
                        core_affinity::set_for_current(core);
                    }
                    let ctx = Rc::new(ShardCtx {
                        id,
                        shared,
                        stats: shard_stats,
                        pending: Default::default(),
                        tcp_conns: Default::default(),
                        stop,
                        relay: relay::RelayState::new(lanes),
                    });
                    let result = match driver {
                        Driver::IoUring => monoio::RuntimeBuilder::<monoio::IoUringDriver>::new()
                            .enable_timer()
                            .build()
                            .map(|mut rt| {
                                rt.block_on(shard_main(
                                    ctx,
                                    socks,
                                    lane_rx,
                                    ready.clone(),
                                    live.clone(),
                                ))
                            }),
                        Driver::Epoll => monoio::RuntimeBuilder::<monoio::LegacyDriver>::new()
                            .enable_timer()
                            .build()
                            .map(|mut rt| {
                                rt.block_on(shard_main(
                                    ctx,
                                    socks,
                                    lane_rx,
                                    ready.clone(),
                                    live.clone(),
                                ))
                            }),
                    };
                    if let Err(e) = result {
                        let _ = ready.send(Err(format!(
                            "shard {id}: cannot build the {} runtime: {e}",
                            driver.name()
                        )));
                    }
                })?;
            threads.push(t);
        }
        drop(ready_tx);
        for _ in 0..threads.len() {
            match ready_rx.recv() {
                Ok(Ok(())) => {}
                Ok(Err(e)) => anyhow::bail!(e),
                Err(_) => anyhow::bail!("a shard stopped while starting"),
            }
        }
        for a in &bound.udp {
            tracing::info!("listening on udp {a}");
        }
        for a in &bound.tcp {
            tracing::info!("listening on tcp {a}");
        }
        tracing::info!(shards = threads.len(), io = driver.name(), "sipward ready");
        Ok(Server {
            bound,
            driver,
            stats,
            shared,
            listening,
            stop,
            threads,
        })
    }

    /// Blocks until every shard thread ends (they run until [`Server::shutdown`] or the process
    /// exits).
    pub fn wait(self) {
        for t in self.threads {
            let _ = t.join();
        }
    }
}

async fn shard_main(
    ctx: Rc<ShardCtx>,
    socks: ShardSockets,
    lane: tokio::sync::mpsc::Receiver<relay::Handoff>,
    ready: std::sync::mpsc::Sender<Result<(), String>>,
    listening: Arc<AtomicUsize>,
) {
    let mut tasks = Vec::new();
    if ctx.shared.engine.load().forwarder().is_some() {
        // Not one of the loops awaited below: its senders live in every shard, so it never sees
        // its channel close, and it must keep delivering to this shard's TCP flows while the
        // grace period runs. It ends with the runtime.
        monoio::spawn(relay::serve_lane(ctx.clone(), lane));
    }
    for s in socks.udp {
        match monoio::net::udp::UdpSocket::from_std(s) {
            Ok(sock) => tasks.push(monoio::spawn(udp::serve(sock, ctx.clone()))),
            Err(e) => {
                let _ = ready.send(Err(format!("shard {}: udp socket: {e}", ctx.id)));
                return;
            }
        }
    }
    for l in socks.tcp {
        match monoio::net::TcpListener::from_std(l) {
            Ok(listener) => tasks.push(monoio::spawn(tcp::serve(listener, ctx.clone()))),
            Err(e) => {
                let _ = ready.send(Err(format!("shard {}: tcp listener: {e}", ctx.id)));
                return;
            }
        }
    }
    listening.fetch_add(1, Ordering::Relaxed);
    let _ = ready.send(Ok(()));
    // The loops return once the stop signal is seen.
    for t in tasks {
        t.await;
    }
    listening.fetch_sub(1, Ordering::Relaxed);
    drain(&ctx).await;
}

/// After the loops stopped: waits for requests still waiting on the token source (and for TCP
/// connections to write what they owe) up to the grace period.
async fn drain(ctx: &ShardCtx) {
    let deadline = std::time::Instant::now() + ctx.shared.server.shutdown_grace;
    while ctx.pending.get() > 0 || ctx.tcp_conns.get() > 0 {
        if std::time::Instant::now() >= deadline {
            tracing::warn!(
                shard = ctx.id,
                waiting = ctx.pending.get(),
                connections = ctx.tcp_conns.get(),
                "shutdown grace over; unanswered requests are dropped"
            );
            return;
        }
        monoio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
}
