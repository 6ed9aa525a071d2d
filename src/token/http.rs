//! Remote token sources over HTTP: RFC 7662 introspection (POST) and a userinfo-style GET (seed 002).
//!
//! Requests run on the shard that asks, on its own monoio runtime: hyper's connection-level client
//! over monoio's poll-style TCP stream, HTTPS through rustls (ring provider only) verified against
//! the webpki roots plus an optional CA file, HTTP/2 when TLS negotiates it and HTTP/1.1 keep-alive
//! otherwise. Each shard keeps its own pool of connections per host: no thread hop, no lock and no
//! shared connection table between a request and its answer. There is no way to turn verification
//! off. Host names are resolved off the shards, by a small thread that refreshes the addresses.
//!
//! Limits: at most `max_inflight` requests at once over all shards, past which a validation fails at
//! once as "overloaded" (no queue); a connect timeout and a total timeout. Failover over `urls`: the
//! first healthy host is used; a connect error, timeout or 5xx marks it down for `retry_after_s` and
//! the request is retried once on the next host; a down host is tried again once that time has
//! passed. A pooled connection the server closed while idle is replaced without counting as a
//! failure.

use std::cell::RefCell;
use std::net::{IpAddr, SocketAddr, ToSocketAddrs};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::client::conn::{http1, http2};
use hyper::header::{HeaderValue, ACCEPT, AUTHORIZATION, CONTENT_TYPE, HOST};
use hyper::{Method, Request, Uri};
use hyper_util::rt::TokioIo;
use monoio::io::IntoPollIo;
use rustls_pki_types::ServerName;
use thread_local::ThreadLocal;
use tokio::sync::Semaphore;

use super::claims;
use super::{SourceFuture, TokenSource};
use crate::auth::{SourceError, TokenFacts};

/// How often host names are resolved again.
const DNS_REFRESH: Duration = Duration::from_secs(30);

/// A secret string that never prints.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(pub String);

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("<redacted>")
    }
}

/// How the introspection client authenticates itself (RFC 7662 2.1 leaves it to the AS).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientAuth {
    /// `Authorization: Basic` (RFC 6749 2.3.1, the default).
    Basic,
    /// `client_id` and `client_secret` in the form body.
    Post,
}

/// What kind of remote source, with what it needs.
#[derive(Debug, Clone)]
pub enum Kind {
    Introspection {
        client_id: String,
        client_secret: Secret,
        client_auth: ClientAuth,
    },
    Userinfo,
}

/// Validated settings of a remote source.
#[derive(Debug, Clone)]
pub struct RemoteConfig {
    pub kind: Kind,
    pub urls: Vec<Uri>,
    pub timeout: Duration,
    pub connect_timeout: Duration,
    pub username_claim: String,
    pub max_inflight: usize,
    pub retry_after: Duration,
    /// Extra trust anchors (PEM), beside the webpki roots.
    pub ca_file: Option<std::path::PathBuf>,
}

/// Why a remote source cannot be built.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    #[error("ca_file {0}: {1}")]
    CaFile(String, String),
    #[error("TLS setup: {0}")]
    Tls(String),
    #[error("{0}: {1}")]
    Url(String, &'static str),
    #[error("cannot start the resolver thread: {0}")]
    Resolver(std::io::Error),
}

struct Host {
    uri: Uri,
    /// Milliseconds since `epoch` until which the host is not used.
    down_until_ms: AtomicU64,
    /// Where to connect, and what to say in TLS and HTTP.
    target: Target,
}

struct Target {
    https: bool,
    /// `Host` header (HTTP/1.1): the URL's authority as written.
    authority: HeaderValue,
    /// The request target of HTTP/1.1 (origin form); HTTP/2 takes the whole URL.
    origin_form: Uri,
    server_name: ServerName<'static>,
    /// Addresses to connect to: fixed for an IP literal, refreshed by the resolver thread otherwise.
    addrs: ArcSwap<Vec<SocketAddr>>,
    /// The name to resolve, when the URL has one.
    name: Option<(String, u16)>,
}

impl Target {
    fn of(uri: &Uri) -> Result<Target, BuildError> {
        let shown = uri.to_string();
        let bad = |why| BuildError::Url(shown.clone(), why);
        let https = match uri.scheme_str() {
            Some("https") => true,
            Some("http") => false,
            _ => return Err(bad("must be an http:// or https:// URL")),
        };
        let auth = uri.authority().ok_or_else(|| bad("has no host"))?;
        let port = auth.port_u16().unwrap_or(if https { 443 } else { 80 });
        let host = auth.host().trim_start_matches('[').trim_end_matches(']');
        let server_name =
            ServerName::try_from(host.to_owned()).map_err(|_| bad("host is not a valid name"))?;
        let (addrs, name) = match host.parse::<IpAddr>() {
            Ok(ip) => (vec![SocketAddr::new(ip, port)], None),
            Err(_) => (resolve(host, port), Some((host.to_owned(), port))),
        };
        let origin = uri.path_and_query().map_or("/", |pq| pq.as_str());
        Ok(Target {
            https,
            authority: HeaderValue::from_str(auth.as_str()).map_err(|_| bad("bad authority"))?,
            origin_form: origin.parse().map_err(|_| bad("bad path"))?,
            server_name,
            addrs: ArcSwap::from_pointee(addrs),
            name,
        })
    }
}

/// Blocking name resolution, for the resolver thread and start-up only; failures leave no addresses
/// (requests then fail as unreachable, and the next refresh tries again).
fn resolve(host: &str, port: u16) -> Vec<SocketAddr> {
    match (host, port).to_socket_addrs() {
        Ok(a) => a.collect(),
        Err(e) => {
            tracing::warn!(host, error = %e, "token source host does not resolve");
            Vec::new()
        }
    }
}

/// Idle connections of one shard to one host.
#[derive(Default)]
struct HostPool {
    /// HTTP/1.1 connections between requests.
    idle: Vec<http1::SendRequest<Full<Bytes>>>,
    /// One HTTP/2 connection, shared by every request of the shard.
    h2: Option<http2::SendRequest<Full<Bytes>>>,
}

enum Sender {
    H1(http1::SendRequest<Full<Bytes>>),
    H2(http2::SendRequest<Full<Bytes>>),
}

/// Runs hyper's HTTP/2 connection tasks on the shard's runtime.
#[derive(Clone, Copy)]
struct ShardExec;

impl<F: std::future::Future + 'static> hyper::rt::Executor<F> for ShardExec {
    fn execute(&self, fut: F) {
        monoio::spawn(fut);
    }
}

struct Inner {
    cfg: RemoteConfig,
    hosts: Vec<Host>,
    epoch: Instant,
    /// `Basic` header value, built once.
    basic: Option<HeaderValue>,
    tls: tokio_rustls::TlsConnector,
    /// Per shard thread: one pool per host, in `hosts` order.
    pools: ThreadLocal<RefCell<Vec<HostPool>>>,
    metrics: super::metrics::SourceMetrics,
    /// Limits "host marked down" warnings while a host keeps failing.
    down_warnings: crate::logs::RateLimit,
}

/// A remote token source (introspection or userinfo). Shared by all shards; each shard's requests
/// run on that shard.
pub struct RemoteSource {
    inner: Arc<Inner>,
    inflight: Arc<Semaphore>,
}

fn tls_config(ca_file: Option<&std::path::Path>) -> Result<rustls::ClientConfig, BuildError> {
    use rustls_pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore {
        roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
    };
    if let Some(path) = ca_file {
        let shown = path.display().to_string();
        let certs = rustls_pki_types::CertificateDer::pem_file_iter(path)
            .map_err(|e| BuildError::CaFile(shown.clone(), e.to_string()))?
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| BuildError::CaFile(shown.clone(), e.to_string()))?;
        if certs.is_empty() {
            return Err(BuildError::CaFile(
                shown,
                "no certificate in the file".into(),
            ));
        }
        for cert in certs {
            roots
                .add(cert)
                .map_err(|e| BuildError::CaFile(shown.clone(), e.to_string()))?;
        }
    }
    let mut cfg = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|e| BuildError::Tls(e.to_string()))?
    .with_root_certificates(roots)
    .with_no_client_auth();
    cfg.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(cfg)
}

impl RemoteSource {
    pub fn new(cfg: RemoteConfig) -> Result<RemoteSource, BuildError> {
        RemoteSource::with_metrics(cfg, Default::default())
    }

    /// As [`RemoteSource::new`], recording into `metrics` (shared with the source a reload replaces).
    pub fn with_metrics(
        cfg: RemoteConfig,
        metrics: super::metrics::SourceMetrics,
    ) -> Result<RemoteSource, BuildError> {
        let tls = tokio_rustls::TlsConnector::from(Arc::new(tls_config(cfg.ca_file.as_deref())?));
        let basic = match &cfg.kind {
            Kind::Introspection {
                client_id,
                client_secret,
                client_auth: ClientAuth::Basic,
            } => {
                use base64::Engine as _;
                // RFC 6749 2.3.1: id and secret are form-urlencoded before Basic encoding.
                let pair = format!(
                    "{}:{}",
                    form_encode(client_id),
                    form_encode(&client_secret.0)
                );
                let mut v = HeaderValue::from_str(&format!(
                    "Basic {}",
                    base64::engine::general_purpose::STANDARD.encode(pair)
                ))
                .map_err(|e| BuildError::Tls(e.to_string()))?;
                v.set_sensitive(true);
                Some(v)
            }
            _ => None,
        };
        let hosts = cfg
            .urls
            .iter()
            .map(|u| {
                Ok(Host {
                    uri: u.clone(),
                    down_until_ms: AtomicU64::new(0),
                    target: Target::of(u)?,
                })
            })
            .collect::<Result<Vec<_>, BuildError>>()?;
        let needs_resolver = hosts.iter().any(|h| h.target.name.is_some());
        let inner = Arc::new(Inner {
            cfg,
            hosts,
            epoch: Instant::now(),
            basic,
            tls,
            pools: ThreadLocal::new(),
            metrics,
            down_warnings: crate::logs::RateLimit::new(Duration::from_secs(10)),
        });
        if needs_resolver {
            spawn_resolver(Arc::downgrade(&inner))?;
        }
        Ok(RemoteSource {
            inflight: Arc::new(Semaphore::new(inner.cfg.max_inflight)),
            inner,
        })
    }

    /// Requests to the source in progress now.
    pub fn inflight(&self) -> usize {
        self.inner.cfg.max_inflight - self.inflight.available_permits()
    }

    /// Whether at least one host is not marked down.
    pub fn healthy(&self) -> bool {
        let now = self.inner.now_ms();
        self.inner
            .hosts
            .iter()
            .any(|h| h.down_until_ms.load(Ordering::Relaxed) <= now)
    }
}

/// Re-resolves the source's host names every [`DNS_REFRESH`] until the source is dropped.
fn spawn_resolver(inner: Weak<Inner>) -> Result<(), BuildError> {
    std::thread::Builder::new()
        .name("sipward-dns".into())
        .spawn(move || loop {
            std::thread::sleep(DNS_REFRESH);
            let Some(inner) = inner.upgrade() else {
                return;
            };
            for h in &inner.hosts {
                if let Some((name, port)) = &h.target.name {
                    let addrs = resolve(name, *port);
                    if !addrs.is_empty() {
                        h.target.addrs.store(Arc::new(addrs));
                    }
                }
            }
        })
        .map(drop)
        .map_err(BuildError::Resolver)
}

fn form_encode(s: &str) -> String {
    // application/x-www-form-urlencoded: everything but unreserved characters is escaped.
    const SET: &percent_encoding::AsciiSet = &percent_encoding::NON_ALPHANUMERIC
        .remove(b'-')
        .remove(b'.')
        .remove(b'_')
        .remove(b'~');
    percent_encoding::utf8_percent_encode(s, SET).to_string()
}

/// How one attempt at one host went.
enum Attempt {
    Answer(Result<TokenFacts, SourceError>),
    /// The host failed (connect error, timeout, 5xx): try the next one.
    HostFailed(SourceError),
}

impl Inner {
    fn now_ms(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64
    }

    fn request(
        &self,
        host: &Host,
        token: &str,
        h2: bool,
    ) -> Result<Request<Full<Bytes>>, SourceError> {
        let mut builder = Request::builder().header(ACCEPT, "application/json");
        builder = if h2 {
            builder.uri(host.uri.clone())
        } else {
            builder
                .uri(host.target.origin_form.clone())
                .header(HOST, host.target.authority.clone())
        };
        let req = match &self.cfg.kind {
            Kind::Introspection {
                client_id,
                client_secret,
                client_auth,
            } => {
                let mut body = format!("token={}&token_type_hint=access_token", form_encode(token));
                if *client_auth == ClientAuth::Post {
                    body.push_str(&format!(
                        "&client_id={}&client_secret={}",
                        form_encode(client_id),
                        form_encode(&client_secret.0)
                    ));
                }
                let mut b = builder
                    .method(Method::POST)
                    .header(CONTENT_TYPE, "application/x-www-form-urlencoded");
                if let Some(basic) = &self.basic {
                    b = b.header(AUTHORIZATION, basic.clone());
                }
                b.body(Full::new(Bytes::from(body)))
            }
            Kind::Userinfo => {
                let mut bearer = HeaderValue::from_str(&format!("Bearer {token}"))
                    .map_err(|_| SourceError::BadBody("token not sendable"))?;
                bearer.set_sensitive(true);
                builder
                    .method(Method::GET)
                    .header(AUTHORIZATION, bearer)
                    .body(Full::new(Bytes::new()))
            }
        };
        req.map_err(|_| SourceError::Unreachable)
    }

    /// This shard's pools, one per host.
    fn pool<R>(&self, f: impl FnOnce(&mut Vec<HostPool>) -> R) -> R {
        let cell = self
            .pools
            .get_or(|| RefCell::new(self.hosts.iter().map(|_| HostPool::default()).collect()));
        f(&mut cell.borrow_mut())
    }

    /// A connection to host `i`: an idle one of this shard if one is still open (`true`), else a
    /// new one.
    async fn checkout(&self, i: usize) -> Result<(Sender, bool), SourceError> {
        while let Some(mut s) = self.pool(|p| p[i].idle.pop()) {
            if s.ready().await.is_ok() {
                return Ok((Sender::H1(s), true));
            }
        }
        if let Some(s) = self.pool(|p| p[i].h2.clone()) {
            if !s.is_closed() {
                return Ok((Sender::H2(s), true));
            }
        }
        Ok((self.connect(i).await?, false))
    }

    async fn connect(&self, i: usize) -> Result<Sender, SourceError> {
        let host = &self.hosts[i];
        let t = &host.target;
        let unreachable = |what: &str, e: &dyn std::fmt::Display| {
            tracing::debug!(host = %host.uri, error = %e, "token source {what} failed");
            SourceError::Unreachable
        };
        let addrs = t.addrs.load_full();
        let tcp = monoio::time::timeout(self.cfg.connect_timeout, async {
            let mut last = std::io::Error::new(std::io::ErrorKind::NotFound, "no address");
            for &a in addrs.iter() {
                match monoio::net::TcpStream::connect_addr(a).await {
                    Ok(s) => return Ok(s),
                    Err(e) => last = e,
                }
            }
            Err(last)
        })
        .await
        .map_err(|e| unreachable("connect", &e))?
        .map_err(|e| unreachable("connect", &e))?;
        let _ = tcp.set_nodelay(true);
        let tcp = tcp.into_poll_io().map_err(|e| unreachable("connect", &e))?;
        if !t.https {
            return h1(TokioIo::new(tcp))
                .await
                .map_err(|e| unreachable("handshake", &e));
        }
        let tls = monoio::time::timeout(
            self.cfg.connect_timeout,
            self.tls.connect(t.server_name.clone(), tcp),
        )
        .await
        .map_err(|e| unreachable("TLS handshake", &e))?
        .map_err(|e| unreachable("TLS handshake", &e))?;
        if tls.get_ref().1.alpn_protocol() == Some(b"h2") {
            let (s, conn) = http2::handshake(ShardExec, TokioIo::new(tls))
                .await
                .map_err(|e| unreachable("HTTP/2 handshake", &e))?;
            monoio::spawn(conn);
            self.pool(|p| p[i].h2 = Some(s.clone()));
            return Ok(Sender::H2(s));
        }
        h1(TokioIo::new(tls))
            .await
            .map_err(|e| unreachable("handshake", &e))
    }

    /// One request and its whole body on `sender`; an HTTP/1.1 connection goes back to the pool.
    async fn send(&self, i: usize, sender: Sender, token: &str) -> Result<(u16, Bytes), SendError> {
        let host = &self.hosts[i];
        let (resp, h1) = match sender {
            Sender::H1(mut s) => {
                let req = self.request(host, token, false)?;
                (s.send_request(req).await, Some(s))
            }
            Sender::H2(mut s) => {
                let req = self.request(host, token, true)?;
                (s.send_request(req).await, None)
            }
        };
        let resp = resp.map_err(|e| {
            tracing::debug!(host = %host.uri, error = %e, "token source request failed");
            if e.is_canceled() || e.is_incomplete_message() {
                SendError::Closed
            } else {
                SendError::Failed(SourceError::Unreachable)
            }
        })?;
        let status = resp.status().as_u16();
        let body = Limited::new(resp.into_body(), claims::MAX_BODY)
            .collect()
            .await
            .map_err(|_| SourceError::BadBody("body over 64 KiB or cut short"))?
            .to_bytes();
        if let Some(s) = h1 {
            if !s.is_closed() {
                let cap = self.cfg.max_inflight;
                self.pool(|p| {
                    if p[i].idle.len() < cap {
                        p[i].idle.push(s);
                    }
                });
            }
        }
        Ok((status, body))
    }

    async fn exchange(&self, i: usize, token: &str) -> Result<(u16, Bytes), SourceError> {
        let (sender, reused) = self.checkout(i).await?;
        match self.send(i, sender, token).await {
            Ok(x) => Ok(x),
            // The server closed a kept-alive connection as the request went out (its idle timeout
            // racing this request): it goes again once, on a new connection. Introspection and
            // userinfo only read, so a request the server saw but did not answer is safe to repeat.
            Err(SendError::Closed) if reused => {
                let sender = self.connect(i).await?;
                self.send(i, sender, token).await.map_err(SourceError::from)
            }
            Err(e) => Err(e.into()),
        }
    }

    async fn attempt(&self, i: usize, token: &str, budget: Duration) -> Attempt {
        let started = Instant::now();
        let attempt = self.timed_attempt(i, token, budget).await;
        let result = match &attempt {
            Attempt::Answer(Ok(_)) => "ok",
            Attempt::Answer(Err(_)) => "rejected",
            Attempt::HostFailed(SourceError::Timeout) => "timeout",
            Attempt::HostFailed(SourceError::BadStatus(_)) => "server_error",
            Attempt::HostFailed(_) => "unreachable",
        };
        if let Some(host) = self.hosts.get(i) {
            self.metrics.observe(
                &host.uri.to_string(),
                result,
                started.elapsed().as_secs_f64(),
            );
        }
        attempt
    }

    async fn timed_attempt(&self, i: usize, token: &str, budget: Duration) -> Attempt {
        let (status, body) = match monoio::time::timeout(budget, self.exchange(i, token)).await {
            Err(_) => return Attempt::HostFailed(SourceError::Timeout),
            Ok(Err(SourceError::Unreachable)) => {
                return Attempt::HostFailed(SourceError::Unreachable)
            }
            Ok(Err(e)) => return Attempt::Answer(Err(e)),
            Ok(Ok(x)) => x,
        };
        if (500..=599).contains(&status) {
            return Attempt::HostFailed(SourceError::BadStatus(status));
        }
        Attempt::Answer(match self.cfg.kind {
            Kind::Introspection { .. } => {
                claims::introspection(status, &body, &self.cfg.username_claim)
            }
            Kind::Userinfo => claims::userinfo(status, &body, &self.cfg.username_claim),
        })
    }

    async fn validate(&self, token: &str) -> Result<TokenFacts, SourceError> {
        let deadline = Instant::now() + self.cfg.timeout;
        let now = self.now_ms();
        let candidates: Vec<usize> = (0..self.hosts.len())
            .filter(|&i| self.hosts[i].down_until_ms.load(Ordering::Relaxed) <= now)
            .collect();
        if candidates.is_empty() {
            return Err(SourceError::Unreachable);
        }
        let mut last = SourceError::Unreachable;
        // The first host and, if it fails, one retry on the next.
        for (n, &i) in candidates.iter().take(2).enumerate() {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(SourceError::Timeout);
            }
            // Leave the retry half the time when there is a host to retry on.
            let budget = if n == 0 && candidates.len() > 1 {
                left / 2
            } else {
                left
            };
            match self.attempt(i, token, budget).await {
                Attempt::Answer(r) => return r,
                Attempt::HostFailed(e) => {
                    let host = &self.hosts[i];
                    let until = self.now_ms() + self.cfg.retry_after.as_millis() as u64;
                    host.down_until_ms.store(until, Ordering::Relaxed);
                    if let Some(suppressed) = self.down_warnings.allow() {
                        tracing::warn!(host = %host.uri, error = %e, down_for_s = self.cfg.retry_after.as_secs(), suppressed, "token source host marked down");
                    }
                    last = e;
                }
            }
        }
        Err(last)
    }
}

/// How sending on one connection failed.
enum SendError {
    /// The connection was closed before the request was written: safe to send again.
    Closed,
    Failed(SourceError),
}

impl From<SourceError> for SendError {
    fn from(e: SourceError) -> SendError {
        SendError::Failed(e)
    }
}

impl From<SendError> for SourceError {
    fn from(e: SendError) -> SourceError {
        match e {
            SendError::Closed => SourceError::Unreachable,
            SendError::Failed(e) => e,
        }
    }
}

/// An HTTP/1.1 connection whose driver runs on this shard until the connection closes.
async fn h1<T>(io: T) -> hyper::Result<Sender>
where
    T: hyper::rt::Read + hyper::rt::Write + Unpin + 'static,
{
    let (s, conn) = http1::handshake(io).await?;
    monoio::spawn(async move {
        let _ = conn.await;
    });
    Ok(Sender::H1(s))
}

impl TokenSource for RemoteSource {
    fn name(&self) -> &'static str {
        match self.inner.cfg.kind {
            Kind::Introspection { .. } => "introspection",
            Kind::Userinfo => "userinfo",
        }
    }

    fn healthy(&self) -> bool {
        RemoteSource::healthy(self)
    }

    fn validate(&self, token: &str) -> SourceFuture {
        let Ok(permit) = self.inflight.clone().try_acquire_owned() else {
            return Box::pin(std::future::ready(Err(SourceError::Overloaded)));
        };
        let inner = self.inner.clone();
        let token = token.to_owned();
        Box::pin(async move {
            let _permit = permit;
            inner.validate(&token).await
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_do_not_print() {
        let k = Kind::Introspection {
            client_id: "rs".into(),
            client_secret: Secret("hunter2".into()),
            client_auth: ClientAuth::Basic,
        };
        assert!(!format!("{k:?}").contains("hunter2"));
    }

    #[test]
    fn form_encoding() {
        assert_eq!(
            form_encode("a b+c/d=e&f~g.h_i-j"),
            "a%20b%2Bc%2Fd%3De%26f~g.h_i-j"
        );
    }

    #[test]
    fn missing_ca_file_is_named() {
        let e = tls_config(Some(std::path::Path::new("/nonexistent/ca.pem")))
            .unwrap_err()
            .to_string();
        assert!(e.contains("/nonexistent/ca.pem"), "{e}");
    }

    /// A plain HTTP/1.1 introspection endpoint on a std thread: answers every request active for
    /// alice, and after `per_conn` answers on a connection reads one more request and closes without
    /// answering it (a server's keep-alive timeout racing the client's next request). Counts
    /// connections accepted.
    fn raw_server(per_conn: usize) -> (SocketAddr, Arc<std::sync::atomic::AtomicUsize>) {
        use std::io::{Read, Write};
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        let accepted = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let count = accepted.clone();
        std::thread::spawn(move || {
            for conn in l.incoming() {
                let Ok(mut c) = conn else { return };
                count.fetch_add(1, Ordering::SeqCst);
                std::thread::spawn(move || {
                    let mut buf = Vec::new();
                    for n in 0..=per_conn {
                        // Read one request: headers, then Content-Length bytes of body.
                        let body_at = loop {
                            if let Some(p) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                                break p + 4;
                            }
                            let mut chunk = [0u8; 4096];
                            match c.read(&mut chunk) {
                                Ok(0) | Err(_) => return,
                                Ok(n) => buf.extend_from_slice(&chunk[..n]),
                            }
                        };
                        let head = String::from_utf8_lossy(&buf[..body_at]).to_ascii_lowercase();
                        let len: usize = head
                            .lines()
                            .find_map(|l| l.strip_prefix("content-length:"))
                            .map_or(0, |v| v.trim().parse().unwrap());
                        while buf.len() < body_at + len {
                            let mut chunk = [0u8; 4096];
                            match c.read(&mut chunk) {
                                Ok(0) | Err(_) => return,
                                Ok(n) => buf.extend_from_slice(&chunk[..n]),
                            }
                        }
                        buf.drain(..body_at + len);
                        if n == per_conn {
                            return;
                        }
                        let body = r#"{"active":true,"username":"alice"}"#;
                        let resp = format!(
                            "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
                            body.len()
                        );
                        if c.write_all(resp.as_bytes()).is_err() {
                            return;
                        }
                    }
                });
            }
        });
        (addr, accepted)
    }

    fn source(url: &str) -> RemoteSource {
        RemoteSource::new(RemoteConfig {
            kind: Kind::Introspection {
                client_id: "rs".into(),
                client_secret: Secret("s".into()),
                client_auth: ClientAuth::Basic,
            },
            urls: vec![url.parse().unwrap()],
            timeout: Duration::from_secs(5),
            connect_timeout: Duration::from_secs(2),
            username_claim: "username".into(),
            max_inflight: 64,
            retry_after: Duration::from_secs(30),
            ca_file: None,
        })
        .unwrap()
    }

    /// Runs `f` under io_uring (when this kernel has it) and under epoll.
    fn on_both_drivers<F: std::future::Future>(f: impl Fn() -> F) {
        if let Ok(mut rt) = monoio::RuntimeBuilder::<monoio::IoUringDriver>::new()
            .enable_timer()
            .build()
        {
            rt.block_on(f());
        }
        monoio::RuntimeBuilder::<monoio::LegacyDriver>::new()
            .enable_timer()
            .build()
            .unwrap()
            .block_on(f());
    }

    #[test]
    fn one_connection_serves_sequential_validations() {
        on_both_drivers(|| async {
            let (addr, accepted) = raw_server(usize::MAX);
            let src = source(&format!("http://{addr}/introspect"));
            for _ in 0..20 {
                let facts = src.validate("tok").await.unwrap();
                assert_eq!(facts.username.as_deref(), Some("alice"));
            }
            assert_eq!(accepted.load(Ordering::SeqCst), 1);
            assert_eq!(src.inflight(), 0);
        });
    }

    #[test]
    fn a_pooled_connection_the_server_closed_is_replaced_not_failed() {
        on_both_drivers(|| async {
            let (addr, accepted) = raw_server(1);
            let src = source(&format!("http://{addr}/introspect"));
            for i in 0..10 {
                let facts = src.validate("tok").await.unwrap();
                assert_eq!(facts.username.as_deref(), Some("alice"));
                // Give the close time to arrive, or not: both orders must work.
                if i % 2 == 1 {
                    monoio::time::sleep(Duration::from_millis(2)).await;
                }
            }
            assert_eq!(accepted.load(Ordering::SeqCst), 10);
            assert!(
                src.healthy(),
                "a closed idle connection marked the host down"
            );
        });
    }

    #[test]
    fn host_names_are_resolved() {
        on_both_drivers(|| async {
            let (addr, _) = raw_server(usize::MAX);
            let src = source(&format!("http://localhost:{}/introspect", addr.port()));
            let facts = src.validate("tok").await.unwrap();
            assert_eq!(facts.username.as_deref(), Some("alice"));
        });
    }

    #[test]
    fn urls_that_cannot_be_used_are_named() {
        let e = Target::of(&"ftp://h/x".parse().unwrap())
            .err()
            .unwrap()
            .to_string();
        assert!(e.contains("ftp://h/x"), "{e}");
    }
}
