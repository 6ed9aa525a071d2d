//! `mock-as`: a stand-in authorization server for load tests. It answers RFC 7662 introspection
//! (`POST /introspect`) and a userinfo-style `GET /userinfo` from a fixed rule, with optional
//! latency, jitter and injected 503s, and counts what it saw (`GET /stats`).
//!
//! The rule: a token listed in `--tokens` is active for its user; `new.<user>.<anything>` is active
//! for `<user>` (so `register --new-share` and `as-bench` can send tokens nobody has seen before
//! without a shared file); anything else is inactive. It is not an OAuth server: it issues nothing,
//! checks no expiry, and only checks client credentials when `--client-id` is given.

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use bytes::Bytes;
use http_body_util::{BodyExt as _, Full, Limited};
use hyper::body::Incoming;
use hyper::header::{HeaderValue, AUTHORIZATION, CONTENT_TYPE, WWW_AUTHENTICATE};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;

use crate::form;
use crate::rng::Rng;
use crate::tokens;

/// Introspection bodies are a few dozen bytes; anything much larger is not a client of ours.
const MAX_BODY: usize = 64 * 1024;

pub struct Config {
    pub listen: SocketAddr,
    /// Token → user.
    pub tokens: HashMap<String, String>,
    pub latency: Duration,
    pub jitter: Duration,
    pub error_rate: f64,
    /// Expected client id and secret; `None` accepts any client.
    pub client: Option<(String, String)>,
    pub threads: usize,
}

#[derive(Default)]
struct Counters {
    /// Every request but `GET /stats`, which must not disturb what it reports.
    requests: AtomicU64,
    introspections: AtomicU64,
    userinfo: AtomicU64,
    active: AtomicU64,
    inactive: AtomicU64,
    /// Injected 503s, rejected client credentials and malformed requests.
    errors: AtomicU64,
}

impl Counters {
    fn json(&self) -> serde_json::Value {
        serde_json::json!({
            "requests": self.requests.load(Relaxed),
            "introspections": self.introspections.load(Relaxed),
            "userinfo": self.userinfo.load(Relaxed),
            "active": self.active.load(Relaxed),
            "inactive": self.inactive.load(Relaxed),
            "errors": self.errors.load(Relaxed),
        })
    }
}

struct State {
    cfg: Config,
    counters: Counters,
}

thread_local! {
    static RNG: std::cell::RefCell<Rng> = std::cell::RefCell::new(Rng::from_entropy());
}

fn random() -> f64 {
    RNG.with(|r| r.borrow_mut().f64())
}

/// The user a token is active for, by the module's rule.
pub fn token_user(tokens: &HashMap<String, String>, token: &str) -> Option<String> {
    tokens
        .get(token)
        .cloned()
        .or_else(|| tokens::new_token_user(token))
}

/// Whether the client authenticated as `expected`: Basic credentials if the request has an
/// Authorization header, else `client_id`/`client_secret` form fields. Any client passes when
/// nothing is expected.
pub fn client_ok(
    expected: Option<&(String, String)>,
    authorization: Option<&str>,
    form_pairs: &[(String, String)],
) -> bool {
    let Some((id, secret)) = expected else {
        return true;
    };
    let given = match authorization {
        Some(h) => form::parse_basic(h),
        None => match (
            form::get(form_pairs, "client_id"),
            form::get(form_pairs, "client_secret"),
        ) {
            (Some(i), Some(s)) => Some((i.to_owned(), s.to_owned())),
            _ => None,
        },
    };
    given.is_some_and(|(i, s)| &i == id && &s == secret)
}

/// The introspection answer for a token whose user is `user` (`None`: inactive).
pub fn introspection_body(user: Option<&str>, now_unix: u64) -> serde_json::Value {
    match user {
        Some(u) => serde_json::json!({
            "active": true,
            "username": u,
            "scope": "sip",
            "exp": now_unix + 3600,
            "token_type": "Bearer",
            "client_id": "load",
        }),
        None => serde_json::json!({ "active": false }),
    }
}

type Resp = Response<Full<Bytes>>;

fn json(status: StatusCode, v: &serde_json::Value) -> Resp {
    let mut r = Response::new(Full::new(Bytes::from(v.to_string())));
    *r.status_mut() = status;
    r.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    r
}

fn error(status: StatusCode, code: &str) -> Resp {
    json(status, &serde_json::json!({ "error": code }))
}

impl State {
    /// Waits `latency ± jitter` (uniform). Tokio's timer has millisecond resolution, so sub-ms values
    /// round up to the next tick.
    async fn delay(&self) {
        let base = self.cfg.latency.as_secs_f64();
        let j = self.cfg.jitter.as_secs_f64();
        if base == 0.0 && j == 0.0 {
            return;
        }
        let d = (base + (random() * 2.0 - 1.0) * j).max(0.0);
        tokio::time::sleep(Duration::from_secs_f64(d)).await;
    }

    fn inject_error(&self) -> bool {
        self.cfg.error_rate > 0.0 && random() < self.cfg.error_rate
    }

    fn count_user(&self, user: &Option<String>) {
        let c = if user.is_some() {
            &self.counters.active
        } else {
            &self.counters.inactive
        };
        c.fetch_add(1, Relaxed);
    }
}

async fn introspect(state: &State, req: Request<Incoming>) -> Resp {
    let c = &state.counters;
    c.introspections.fetch_add(1, Relaxed);
    let authorization = req
        .headers()
        .get(AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let body = match Limited::new(req.into_body(), MAX_BODY).collect().await {
        Ok(b) => b.to_bytes(),
        Err(_) => {
            c.errors.fetch_add(1, Relaxed);
            return error(StatusCode::BAD_REQUEST, "invalid_request");
        }
    };
    state.delay().await;
    if state.inject_error() {
        c.errors.fetch_add(1, Relaxed);
        return error(StatusCode::SERVICE_UNAVAILABLE, "temporarily_unavailable");
    }
    let Some(pairs) = form::parse(&body) else {
        c.errors.fetch_add(1, Relaxed);
        return error(StatusCode::BAD_REQUEST, "invalid_request");
    };
    if !client_ok(state.cfg.client.as_ref(), authorization.as_deref(), &pairs) {
        c.errors.fetch_add(1, Relaxed);
        let mut r = error(StatusCode::UNAUTHORIZED, "invalid_client");
        r.headers_mut().insert(
            WWW_AUTHENTICATE,
            HeaderValue::from_static("Basic realm=\"mock-as\""),
        );
        return r;
    }
    let Some(token) = form::get(&pairs, "token") else {
        c.errors.fetch_add(1, Relaxed);
        return error(StatusCode::BAD_REQUEST, "invalid_request");
    };
    let user = token_user(&state.cfg.tokens, token);
    state.count_user(&user);
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    json(StatusCode::OK, &introspection_body(user.as_deref(), now))
}

async fn userinfo(state: &State, req: Request<Incoming>) -> Resp {
    let c = &state.counters;
    c.userinfo.fetch_add(1, Relaxed);
    state.delay().await;
    if state.inject_error() {
        c.errors.fetch_add(1, Relaxed);
        return error(StatusCode::SERVICE_UNAVAILABLE, "temporarily_unavailable");
    }
    let user = req
        .headers()
        .get(AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(form::parse_bearer)
        .and_then(|t| token_user(&state.cfg.tokens, t));
    state.count_user(&user);
    match user {
        Some(u) => json(
            StatusCode::OK,
            &serde_json::json!({ "sub": u, "username": u }),
        ),
        None => {
            let mut r = error(StatusCode::UNAUTHORIZED, "invalid_token");
            r.headers_mut().insert(
                WWW_AUTHENTICATE,
                HeaderValue::from_static("Bearer error=\"invalid_token\""),
            );
            r
        }
    }
}

async fn handle(state: Arc<State>, req: Request<Incoming>) -> Result<Resp, Infallible> {
    let path = req.uri().path();
    if path == "/stats" {
        return Ok(if req.method() == Method::GET {
            json(StatusCode::OK, &state.counters.json())
        } else {
            error(StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed")
        });
    }
    state.counters.requests.fetch_add(1, Relaxed);
    Ok(match (req.method(), path) {
        (&Method::POST, "/introspect") => introspect(&state, req).await,
        (&Method::GET, "/userinfo") => userinfo(&state, req).await,
        (_, "/introspect" | "/userinfo") => {
            error(StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed")
        }
        _ => error(StatusCode::NOT_FOUND, "not_found"),
    })
}

/// Runs until SIGINT or SIGTERM.
pub fn run(cfg: Config) -> anyhow::Result<()> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(cfg.threads.max(1))
        .enable_all()
        .build()
        .context("starting the tokio runtime")?;
    let r = rt.block_on(serve(cfg));
    // Connections still open (keep-alive clients) must not hold the exit up.
    rt.shutdown_timeout(Duration::from_millis(100));
    r
}

async fn serve(cfg: Config) -> anyhow::Result<()> {
    use tokio::signal::unix::{signal, SignalKind};

    let listener = tokio::net::TcpListener::bind(cfg.listen)
        .await
        .with_context(|| format!("binding {}", cfg.listen))?;
    let mut int = signal(SignalKind::interrupt())?;
    let mut term = signal(SignalKind::terminate())?;
    let state = Arc::new(State {
        cfg,
        counters: Counters::default(),
    });
    eprintln!("mock-as listening on http://{}", listener.local_addr()?);
    loop {
        tokio::select! {
            r = listener.accept() => match r {
                Ok((stream, _)) => {
                    // Responses are written whole, but a delayed ACK must not add 40 ms to each one.
                    let _ = stream.set_nodelay(true);
                    let st = state.clone();
                    tokio::spawn(async move {
                        let svc = hyper::service::service_fn(move |req| handle(st.clone(), req));
                        // A client closing mid-request is its business.
                        let _ = hyper::server::conn::http1::Builder::new()
                            .keep_alive(true)
                            .serve_connection(TokioIo::new(stream), svc)
                            .await;
                    });
                }
                Err(e) => {
                    // Typically EMFILE: back off instead of spinning.
                    eprintln!("mock-as: accept: {e}");
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
            },
            _ = int.recv() => break,
            _ = term.recv() => break,
        }
    }
    eprintln!("mock-as stopped: {}", state.counters.json());
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table() -> HashMap<String, String> {
        [("alice-token-7f3a9c", "alice"), ("new.bob.x.1", "carol")]
            .into_iter()
            .map(|(t, u)| (t.to_owned(), u.to_owned()))
            .collect()
    }

    #[test]
    fn token_rule() {
        let t = table();
        assert_eq!(
            token_user(&t, "alice-token-7f3a9c").as_deref(),
            Some("alice")
        );
        // The file wins over the `new.` rule.
        assert_eq!(token_user(&t, "new.bob.x.1").as_deref(), Some("carol"));
        assert_eq!(token_user(&t, "new.bob.x.2").as_deref(), Some("bob"));
        assert_eq!(
            token_user(&t, "new.dave.0123abcd.99").as_deref(),
            Some("dave")
        );
        assert_eq!(token_user(&t, "invalid.1"), None);
        assert_eq!(token_user(&t, "alice-token"), None);
        assert_eq!(token_user(&HashMap::new(), "new.x"), None);
    }

    #[test]
    fn introspection_answers() {
        let v = introspection_body(Some("alice"), 1000);
        assert_eq!(v["active"], true);
        assert_eq!(v["username"], "alice");
        assert_eq!(v["scope"], "sip");
        assert_eq!(v["exp"], 4600);
        assert_eq!(v["token_type"], "Bearer");
        assert_eq!(v["client_id"], "load");
        assert_eq!(
            introspection_body(None, 1000).to_string(),
            r#"{"active":false}"#
        );
    }

    #[test]
    fn client_authentication() {
        let exp = ("load".to_owned(), "load-secret".to_owned());
        let basic = form::basic_header("load", "load-secret");
        let wrong = form::basic_header("load", "nope");
        let post = form::parse(b"token=t&client_id=load&client_secret=load-secret").unwrap();
        let bad_post = form::parse(b"token=t&client_id=load").unwrap();
        assert!(client_ok(None, None, &[]));
        assert!(client_ok(Some(&exp), Some(&basic), &[]));
        assert!(!client_ok(Some(&exp), Some(&wrong), &[]));
        assert!(!client_ok(Some(&exp), Some("Bearer x"), &post));
        assert!(client_ok(Some(&exp), None, &post));
        assert!(!client_ok(Some(&exp), None, &bad_post));
        assert!(!client_ok(Some(&exp), None, &[]));
    }
}
