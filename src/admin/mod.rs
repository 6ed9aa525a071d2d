//! The admin HTTP server: `GET /metrics` (Prometheus text format), `GET /healthz` (the process is
//! alive) and `GET /readyz` (every shard is listening and a token source can answer).
//!
//! It runs on a thread of its own with a one-thread tokio runtime, apart from the shards. It never
//! writes anything a shard reads: a scrape loads each shard's counters (relaxed loads of values
//! only that shard writes) and sums them, so the hot path has no shared counter. It serves nothing
//! but these three paths, and no TLS: bind it to loopback or a management network.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use bytes::Bytes;
use http_body_util::Full;
use hyper::{Method, Request, Response, StatusCode};
use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::info::Info;
use prometheus_client::registry::Registry;

use crate::shard::stats::{ShardStats, DROP_REASONS, METHODS, OUTCOMES};
use crate::shard::{Server, Shared};

/// What the admin server reads; all of it is shared with the running server, none of it copied.
#[derive(Clone)]
pub struct State {
    pub shared: Arc<Shared>,
    pub stats: Vec<Arc<ShardStats>>,
    pub listening: Arc<AtomicUsize>,
    pub shards: usize,
    pub driver: &'static str,
}

impl State {
    pub fn of(server: &Server) -> State {
        State {
            shared: server.shared.clone(),
            stats: server.stats.clone(),
            listening: server.listening.clone(),
            shards: server.stats.len(),
            driver: server.driver.name(),
        }
    }

    /// Why the server is not ready, or `None` when it is.
    pub fn not_ready(&self) -> Option<&'static str> {
        if self.listening.load(Ordering::Relaxed) < self.shards {
            return Some("not every shard is listening");
        }
        let tokens = &self.shared.tokens;
        if tokens.has_source() && !tokens.source_healthy() {
            return Some("no token source host is healthy");
        }
        None
    }
}

type Labels = Vec<(&'static str, String)>;

fn sum(stats: &[Arc<ShardStats>], f: impl Fn(&ShardStats) -> u64) -> u64 {
    stats.iter().map(|s| f(s)).sum()
}

/// The `/metrics` body: every shard's counters summed, the cache and token source figures, and the
/// token source metrics kept since start.
pub fn render(state: &State) -> String {
    let stats = &state.stats;
    let mut reg = Registry::with_prefix("sipward");

    let requests = Family::<Labels, Counter>::default();
    for (m, method) in METHODS.iter().enumerate() {
        for (o, outcome) in OUTCOMES.iter().enumerate() {
            let n = sum(stats, |s| s.requests(m, o));
            if n > 0 {
                requests
                    .get_or_create(&vec![
                        ("method", (*method).to_string()),
                        ("outcome", (*outcome).to_string()),
                    ])
                    .inc_by(n);
            }
        }
    }
    reg.register(
        "requests",
        "SIP requests handled, by method and outcome (not_required: no token needed; silent: ACK)",
        requests,
    );

    let responses = Family::<Labels, Counter>::default();
    for code in 100..=699u16 {
        let n = sum(stats, |s| s.responses(code));
        if n > 0 {
            responses
                .get_or_create(&vec![("code", code.to_string())])
                .inc_by(n);
        }
    }
    reg.register("responses", "SIP responses sent, by status code", responses);

    let dropped = Family::<Labels, Counter>::default();
    let mut by_reason = [0u64; DROP_REASONS.len()];
    for s in stats {
        for (t, n) in by_reason.iter_mut().zip(s.dropped_by_reason()) {
            *t += n;
        }
    }
    for (reason, n) in DROP_REASONS.iter().zip(by_reason) {
        dropped
            .get_or_create(&vec![("reason", (*reason).to_string())])
            .inc_by(n);
    }
    reg.register(
        "messages_dropped",
        "Messages dropped without a response, by reason (overloaded: answered 503 instead of waiting; not_our_via, unroutable: forward mode)",
        dropped,
    );

    let tokens = &state.shared.tokens;
    let counter = |n: u64| {
        let c = Counter::<u64>::default();
        c.inc_by(n);
        c
    };
    let gauge = |n: u64| {
        let g = Gauge::<i64>::default();
        g.set(i64::try_from(n).unwrap_or(i64::MAX));
        g
    };
    reg.register(
        "cache_hits",
        "Token lookups answered from the cache",
        counter(sum(stats, |s| s.cache_hits.load(Ordering::Relaxed))),
    );
    reg.register(
        "cache_misses",
        "Token lookups the cache could not answer",
        counter(sum(stats, |s| s.cache_misses.load(Ordering::Relaxed))),
    );
    reg.register(
        "cache_coalesced_waiters",
        "Lookups that waited on a token source request already in flight instead of starting one",
        counter(tokens.coalesced()),
    );
    reg.register(
        "cache_evictions",
        "Cache entries dropped to keep the cache within max_entries",
        counter(tokens.cache().evictions()),
    );
    reg.register(
        "cache_entries",
        "Entries in the token cache now",
        gauge(tokens.cache().len() as u64),
    );
    reg.register(
        "token_source_in_flight",
        "Requests to the token source in flight now (one per distinct token)",
        gauge(tokens.in_flight() as u64),
    );
    reg.register(
        "messages_relayed",
        "Forward mode: messages relayed (requests to the core, its responses and requests to clients)",
        counter(sum(stats, |s| s.relayed.load(Ordering::Relaxed))),
    );
    reg.register(
        "tcp_connections_open",
        "TCP connections open now",
        gauge(sum(stats, |s| s.tcp_open.load(Ordering::Relaxed))),
    );
    reg.register(
        "tcp_connections_refused",
        "TCP connections refused at tcp_max_connections",
        counter(sum(stats, |s| s.tcp_refused.load(Ordering::Relaxed))),
    );
    reg.register(
        "shards",
        "Shards (threads with their own sockets) configured",
        gauge(state.shards as u64),
    );
    reg.register(
        "shards_listening",
        "Shards whose receive loops are running",
        gauge(state.listening.load(Ordering::Relaxed) as u64),
    );
    reg.register(
        "io_driver",
        "The I/O driver in use",
        Info::new(vec![("driver", state.driver.to_string())]),
    );
    let m = &state.shared.source_metrics;
    reg.register(
        "introspection_requests",
        "HTTP requests to the token source by host and result (ok, rejected, timeout, unreachable, server_error)",
        m.requests.clone(),
    );
    reg.register(
        "introspection_duration_seconds",
        "Time to an answer from the token source, by host",
        m.latency.clone(),
    );
    let mut out = String::with_capacity(8192);
    // Writing into a String cannot fail.
    let _ = encode(&mut out, &reg);
    out
}

fn text(
    status: StatusCode,
    body: impl Into<Bytes>,
    content_type: &'static str,
) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(body.into()));
    *r.status_mut() = status;
    if let Ok(v) = hyper::header::HeaderValue::from_str(content_type) {
        r.headers_mut().insert(hyper::header::CONTENT_TYPE, v);
    }
    r
}

/// Answers one admin request.
pub fn respond(state: &State, method: &Method, path: &str) -> Response<Full<Bytes>> {
    const PLAIN: &str = "text/plain; charset=utf-8";
    if method != Method::GET && method != Method::HEAD {
        return text(StatusCode::METHOD_NOT_ALLOWED, "GET only\n", PLAIN);
    }
    match path {
        "/metrics" => text(
            StatusCode::OK,
            render(state),
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        ),
        "/healthz" => text(StatusCode::OK, "ok\n", PLAIN),
        "/readyz" => match state.not_ready() {
            None => text(StatusCode::OK, "ready\n", PLAIN),
            Some(why) => text(StatusCode::SERVICE_UNAVAILABLE, format!("{why}\n"), PLAIN),
        },
        _ => text(StatusCode::NOT_FOUND, "not found\n", PLAIN),
    }
}

/// A running admin server.
pub struct Admin {
    pub addr: SocketAddr,
}

/// Binds `addr` (errors come back here, before anything runs) and serves on a thread of its own
/// until the process exits.
pub fn start(addr: SocketAddr, state: State) -> std::io::Result<Admin> {
    let listener = std::net::TcpListener::bind(addr)?;
    listener.set_nonblocking(true)?;
    let addr = listener.local_addr()?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .enable_time()
        .build()?;
    std::thread::Builder::new()
        .name("sipward-admin".into())
        .spawn(move || runtime.block_on(serve(listener, state)))?;
    tracing::info!("admin listening on http {addr}");
    Ok(Admin { addr })
}

async fn serve(listener: std::net::TcpListener, state: State) {
    let listener = match tokio::net::TcpListener::from_std(listener) {
        Ok(l) => l,
        Err(e) => {
            tracing::error!(error = %e, "admin listener unusable");
            return;
        }
    };
    let warnings = crate::logs::RateLimit::new(std::time::Duration::from_secs(10));
    loop {
        let stream = match listener.accept().await {
            Ok((s, _)) => s,
            Err(e) => {
                if let Some(suppressed) = warnings.allow() {
                    tracing::warn!(error = %e, suppressed, "admin accept failed");
                }
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                continue;
            }
        };
        let state = state.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |req: Request<hyper::body::Incoming>| {
                let resp = respond(&state, req.method(), req.uri().path());
                async move { Ok::<_, Infallible>(resp) }
            });
            let conn = hyper::server::conn::http1::Builder::new()
                .serve_connection(hyper_util::rt::TokioIo::new(stream), service);
            // A scraper that stalls is cut off rather than holding a task forever.
            let _ = tokio::time::timeout(std::time::Duration::from_secs(30), conn).await;
        });
    }
}
