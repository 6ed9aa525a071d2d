//! Remote token sources over HTTP: RFC 7662 introspection (POST) and a userinfo-style GET (seed 002).
//!
//! Requests run on a small tokio runtime of their own (hyper needs one; shards run monoio), on one
//! pooled hyper-util client: HTTP/1.1 keep-alive, HTTP/2 where TLS negotiates it, HTTPS verified with
//! rustls (ring provider only) against the webpki roots plus an optional CA file. There is no way to
//! turn verification off. Shards receive a future that completes when the side runtime has the
//! answer; they never block on it.
//!
//! Limits: at most `max_inflight` requests at once, past which a validation fails at once as
//! "overloaded" (no queue); a connect timeout and a total timeout. Failover over `urls`: the first
//! healthy host is used; a connect error, timeout or 5xx marks it down for `retry_after_s` and the
//! request is retried once on the next host; a down host is tried again once that time has passed.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::header::{HeaderValue, ACCEPT, AUTHORIZATION, CONTENT_TYPE};
use hyper::{Method, Request, Uri};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use tokio::sync::Semaphore;

use super::claims;
use super::{SourceFuture, TokenSource};
use crate::auth::{SourceError, TokenFacts};

type HttpsClient = Client<hyper_rustls::HttpsConnector<HttpConnector>, Full<Bytes>>;

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
    #[error("cannot start the HTTP runtime: {0}")]
    Runtime(std::io::Error),
}

struct Host {
    uri: Uri,
    /// Milliseconds since `epoch` until which the host is not used.
    down_until_ms: AtomicU64,
}

struct Inner {
    cfg: RemoteConfig,
    client: HttpsClient,
    hosts: Vec<Host>,
    epoch: Instant,
    /// `Basic` header value, built once.
    basic: Option<HeaderValue>,
    metrics: super::metrics::SourceMetrics,
    /// Limits "host marked down" warnings while a host keeps failing.
    down_warnings: crate::logs::RateLimit,
}

/// A remote token source (introspection or userinfo) with its side runtime.
pub struct RemoteSource {
    inner: Arc<Inner>,
    inflight: Arc<Semaphore>,
    runtime: Arc<SideRuntime>,
}

/// The tokio runtime the HTTP client runs on: one thread, since the work is waiting, not computing.
pub struct SideRuntime {
    handle: tokio::runtime::Handle,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl SideRuntime {
    pub fn start() -> Result<Arc<SideRuntime>, BuildError> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(BuildError::Runtime)?;
        let handle = rt.handle().clone();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let thread = std::thread::Builder::new()
            .name("sipward-http".into())
            .spawn(move || {
                rt.block_on(async {
                    let _ = stopped.await;
                })
            })
            .map_err(BuildError::Runtime)?;
        Ok(Arc::new(SideRuntime {
            handle,
            stop: Some(stop),
            thread: Some(thread),
        }))
    }

    pub fn handle(&self) -> &tokio::runtime::Handle {
        &self.handle
    }
}

impl Drop for SideRuntime {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
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
    rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .map_err(|e| BuildError::Tls(e.to_string()))
        .map(|b| b.with_root_certificates(roots).with_no_client_auth())
}

impl RemoteSource {
    pub fn new(cfg: RemoteConfig, runtime: Arc<SideRuntime>) -> Result<RemoteSource, BuildError> {
        RemoteSource::with_metrics(cfg, runtime, Default::default())
    }

    /// As [`RemoteSource::new`], recording into `metrics` (shared with the source a reload replaces).
    pub fn with_metrics(
        cfg: RemoteConfig,
        runtime: Arc<SideRuntime>,
        metrics: super::metrics::SourceMetrics,
    ) -> Result<RemoteSource, BuildError> {
        let tls = tls_config(cfg.ca_file.as_deref())?;
        let mut http = HttpConnector::new();
        http.enforce_http(false);
        http.set_connect_timeout(Some(cfg.connect_timeout));
        http.set_nodelay(true);
        let https = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(tls)
            .https_or_http()
            .enable_http1()
            .enable_http2()
            .wrap_connector(http);
        // The pool's idle timer needs the side runtime's context.
        let client = {
            let _guard = runtime.handle().enter();
            Client::builder(TokioExecutor::new())
                .pool_idle_timeout(Duration::from_secs(90))
                .pool_max_idle_per_host(cfg.max_inflight.min(1024))
                .build(https)
        };
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
            .map(|u| Host {
                uri: u.clone(),
                down_until_ms: AtomicU64::new(0),
            })
            .collect();
        Ok(RemoteSource {
            inflight: Arc::new(Semaphore::new(cfg.max_inflight)),
            inner: Arc::new(Inner {
                cfg,
                client,
                hosts,
                epoch: Instant::now(),
                basic,
                metrics,
                down_warnings: crate::logs::RateLimit::new(Duration::from_secs(10)),
            }),
            runtime,
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

    fn request(&self, host: &Uri, token: &str) -> Result<Request<Full<Bytes>>, SourceError> {
        let builder = Request::builder()
            .uri(host.clone())
            .header(ACCEPT, "application/json");
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

    async fn attempt(&self, host: &Uri, token: &str, budget: Duration) -> Attempt {
        let started = Instant::now();
        let attempt = self.exchange(host, token, budget).await;
        let result = match &attempt {
            Attempt::Answer(Ok(_)) => "ok",
            Attempt::Answer(Err(_)) => "rejected",
            Attempt::HostFailed(SourceError::Timeout) => "timeout",
            Attempt::HostFailed(SourceError::BadStatus(_)) => "server_error",
            Attempt::HostFailed(_) => "unreachable",
        };
        self.metrics
            .observe(&host.to_string(), result, started.elapsed().as_secs_f64());
        attempt
    }

    async fn exchange(&self, host: &Uri, token: &str, budget: Duration) -> Attempt {
        let req = match self.request(host, token) {
            Ok(r) => r,
            Err(e) => return Attempt::Answer(Err(e)),
        };
        let exchange = async {
            let resp = self.client.request(req).await.map_err(|e| {
                tracing::debug!(host = %host, error = %e, "token source request failed");
                SourceError::Unreachable
            })?;
            let status = resp.status().as_u16();
            let body = Limited::new(resp.into_body(), claims::MAX_BODY)
                .collect()
                .await
                .map_err(|_| SourceError::BadBody("body over 64 KiB or cut short"))?
                .to_bytes();
            Ok::<_, SourceError>((status, body))
        };
        let (status, body) = match tokio::time::timeout(budget, exchange).await {
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
        let candidates: Vec<&Host> = self
            .hosts
            .iter()
            .filter(|h| h.down_until_ms.load(Ordering::Relaxed) <= now)
            .collect();
        if candidates.is_empty() {
            return Err(SourceError::Unreachable);
        }
        let mut last = SourceError::Unreachable;
        // The first host and, if it fails, one retry on the next.
        for (i, host) in candidates.iter().take(2).enumerate() {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(SourceError::Timeout);
            }
            // Leave the retry half the time when there is a host to retry on.
            let budget = if i == 0 && candidates.len() > 1 {
                left / 2
            } else {
                left
            };
            match self.attempt(&host.uri, token, budget).await {
                Attempt::Answer(r) => return r,
                Attempt::HostFailed(e) => {
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
        let job = self.runtime.handle().spawn(async move {
            let _permit = permit;
            inner.validate(&token).await
        });
        Box::pin(async move { job.await.unwrap_or(Err(SourceError::Unreachable)) })
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
}
