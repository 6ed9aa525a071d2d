//! `as-bench`: hammers an RFC 7662 introspection endpoint directly, to know what the authorization
//! server (or `mock-as`) can take before putting sipward in front of it.
//!
//! C tasks each own one HTTP/1.1 keep-alive connection and issue requests back to back; each request
//! introspects a fresh `new.<user>.<run>.<n>` token with Basic client credentials, which is the same
//! work an all-miss sipward run causes. A broken connection is re-opened; a request unanswered within
//! the timeout counts as a timeout and costs its connection (an HTTP/1.1 stream cannot skip an answer).

use std::collections::BTreeMap;
use std::net::{SocketAddr, ToSocketAddrs as _};
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use bytes::Bytes;
use hdrhistogram::Histogram;
use http_body_util::{BodyExt as _, Full};
use hyper::header::{HeaderValue, AUTHORIZATION, CONTENT_TYPE, HOST};
use hyper::Request;
use hyper_util::rt::TokioIo;

use crate::engine::Schedule;
use crate::report::{self, Summary};
use crate::rng::Rng;
use crate::{form, tokens};

pub struct Config {
    pub url: String,
    pub concurrency: usize,
    pub warmup: Duration,
    pub duration: Duration,
    pub timeout: Duration,
    pub client: Option<(String, String)>,
    /// Users the fresh tokens are minted for, round-robin.
    pub users: Vec<String>,
    pub threads: usize,
}

/// What one run measured.
pub struct Outcome {
    pub summary: Summary,
    /// 2xx answers whose body said `"active":true`.
    pub active: u64,
    /// Connections opened, the first ones included.
    pub connects: u64,
}

struct Target {
    addr: SocketAddr,
    authority: HeaderValue,
    path: String,
}

fn parse_url(url: &str) -> anyhow::Result<Target> {
    let uri: hyper::Uri = url.parse().with_context(|| format!("--url {url:?}"))?;
    if uri.scheme_str() != Some("http") {
        bail!("--url must be http:// (as-bench speaks plain HTTP/1.1)");
    }
    let auth = uri.authority().context("--url has no host")?;
    let port = auth.port_u16().unwrap_or(80);
    let addr = (auth.host().trim_matches(['[', ']']), port)
        .to_socket_addrs()
        .with_context(|| format!("resolving {auth}"))?
        .next()
        .with_context(|| format!("{auth} resolves to nothing"))?;
    Ok(Target {
        addr,
        authority: HeaderValue::from_str(auth.as_str())?,
        path: uri
            .path_and_query()
            .map_or("/".to_owned(), |p| p.as_str().to_owned()),
    })
}

struct Shared {
    target: Target,
    basic: Option<HeaderValue>,
    users: Vec<String>,
    run: u64,
    next: AtomicU64,
    schedule: Schedule,
    timeout: Duration,
}

struct Tally {
    sent: u64,
    received: u64,
    status: Vec<u64>,
    timeouts: u64,
    errors: u64,
    active: u64,
    connects: u64,
    latency: Histogram<u64>,
}

impl Tally {
    fn new() -> Tally {
        Tally {
            sent: 0,
            received: 0,
            status: vec![0; 600],
            timeouts: 0,
            errors: 0,
            active: 0,
            connects: 0,
            latency: report::histogram(),
        }
    }

    fn merge(&mut self, o: &Tally) {
        self.sent += o.sent;
        self.received += o.received;
        for (a, b) in self.status.iter_mut().zip(&o.status) {
            *a += b;
        }
        self.timeouts += o.timeouts;
        self.errors += o.errors;
        self.active += o.active;
        self.connects += o.connects;
        // Both histograms have the same bounds, so adding cannot fail.
        let _ = self.latency.add(&o.latency);
    }
}

fn request(sh: &Shared) -> anyhow::Result<Request<Full<Bytes>>> {
    let n = sh.next.fetch_add(1, Relaxed);
    let user = &sh.users[(n % sh.users.len() as u64) as usize];
    let mut token = Vec::with_capacity(64);
    tokens::write_new_token(&mut token, user, sh.run, n);
    let token = String::from_utf8(token)?;
    let body = format!(
        "token={}&token_type_hint=access_token",
        form::encode(&token)
    );
    let mut b = Request::post(&sh.target.path)
        .header(HOST, sh.target.authority.clone())
        .header(
            CONTENT_TYPE,
            HeaderValue::from_static("application/x-www-form-urlencoded"),
        );
    if let Some(basic) = &sh.basic {
        b = b.header(AUTHORIZATION, basic.clone());
    }
    Ok(b.body(Full::new(Bytes::from(body)))?)
}

async fn worker(sh: Arc<Shared>) -> Tally {
    let mut t = Tally::new();
    let sched = sh.schedule;
    'connection: while Instant::now() < sched.measure_end {
        let measured_now = || {
            let now = Instant::now();
            now >= sched.measure_start && now < sched.measure_end
        };
        let stream =
            match tokio::time::timeout(sh.timeout, tokio::net::TcpStream::connect(sh.target.addr))
                .await
            {
                Ok(Ok(s)) => s,
                _ => {
                    if measured_now() {
                        t.errors += 1;
                    }
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    continue;
                }
            };
        let _ = stream.set_nodelay(true);
        t.connects += 1;
        let (mut sender, conn) =
            match hyper::client::conn::http1::handshake(TokioIo::new(stream)).await {
                Ok(x) => x,
                Err(_) => {
                    if measured_now() {
                        t.errors += 1;
                    }
                    continue;
                }
            };
        let conn = tokio::spawn(conn);
        loop {
            let start = Instant::now();
            if start >= sched.measure_end {
                conn.abort();
                break 'connection;
            }
            let measured = start >= sched.measure_start;
            let req = match request(&sh) {
                Ok(r) => r,
                Err(_) => {
                    t.errors += 1;
                    continue;
                }
            };
            if measured {
                t.sent += 1;
            }
            let exchange = async {
                sender.ready().await?;
                let resp = sender.send_request(req).await?;
                let status = resp.status().as_u16();
                let body = resp.into_body().collect().await?.to_bytes();
                Ok::<_, hyper::Error>((status, body))
            };
            match tokio::time::timeout(sh.timeout, exchange).await {
                Ok(Ok((status, body))) => {
                    if measured {
                        t.received += 1;
                        if let Some(c) = t.status.get_mut(usize::from(status)) {
                            *c += 1;
                        }
                        report::record(&mut t.latency, start.elapsed());
                        if (200..300).contains(&status)
                            && body.windows(13).any(|w| w == b"\"active\":true")
                        {
                            t.active += 1;
                        }
                    }
                }
                Ok(Err(_)) => {
                    if measured {
                        t.errors += 1;
                    }
                    conn.abort();
                    continue 'connection;
                }
                Err(_) => {
                    if measured {
                        t.timeouts += 1;
                    }
                    conn.abort();
                    continue 'connection;
                }
            }
        }
    }
    t
}

pub fn run(cfg: Config) -> anyhow::Result<Outcome> {
    if cfg.concurrency == 0 {
        bail!("--concurrency must be at least 1");
    }
    let target = parse_url(&cfg.url)?;
    let users: Vec<String> = cfg.users.iter().map(|u| tokens::encode_user(u)).collect();
    if users.is_empty() {
        bail!("no users to mint tokens for");
    }
    let basic = match &cfg.client {
        Some((id, secret)) => Some(HeaderValue::from_str(&form::basic_header(id, secret))?),
        None => None,
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(cfg.threads.max(1))
        .enable_all()
        .build()
        .context("starting the tokio runtime")?;
    let schedule = Schedule::new(Instant::now(), cfg.warmup, cfg.duration, cfg.timeout);
    let shared = Arc::new(Shared {
        target,
        basic,
        users,
        run: Rng::from_entropy().next_u64() & 0xffff_ffff,
        next: AtomicU64::new(1),
        schedule,
        timeout: cfg.timeout,
    });
    let total = rt.block_on(async {
        let handles: Vec<_> = (0..cfg.concurrency)
            .map(|_| tokio::spawn(worker(shared.clone())))
            .collect();
        let mut total = Tally::new();
        for h in handles {
            // A worker only ends by returning its tally; a panic would be a bug worth surfacing.
            let t = h.await.context("as-bench worker failed")?;
            total.merge(&t);
        }
        anyhow::Ok(total)
    })?;
    rt.shutdown_timeout(Duration::from_millis(100));
    let status: BTreeMap<String, u64> = report::status_map(&total.status);
    Ok(Outcome {
        summary: Summary::new(
            total.sent,
            total.received,
            status,
            total.timeouts,
            total.errors,
            &total.latency,
            cfg.duration,
        ),
        active: total.active,
        connects: total.connects,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn url_parsing() {
        let t = parse_url("http://127.0.0.1:8080/introspect").unwrap();
        assert_eq!(t.addr, "127.0.0.1:8080".parse().unwrap());
        assert_eq!(t.authority, "127.0.0.1:8080");
        assert_eq!(t.path, "/introspect");
        let t = parse_url("http://[::1]/x?y=1").unwrap();
        assert_eq!(t.addr, "[::1]:80".parse().unwrap());
        assert_eq!(t.path, "/x?y=1");
        assert!(parse_url("https://127.0.0.1/introspect").is_err());
        assert!(parse_url("not a url").is_err());
    }
}
