//! A request waiting for its token source does not hold up the shard: other requests on the same
//! shard are answered meanwhile. Runs the server in-process with a token source that answers late.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use sipward::auth::{SourceError, TokenFacts};
use sipward::config::Config;
use sipward::shard::{Server, Shared};
use sipward::token::{SourceFuture, TokenHasher, TokenService, TokenSource};

/// Completes at a deadline; a helper thread wakes the task, so any executor can poll it.
struct Delay {
    until: Instant,
    armed: bool,
}

impl Future for Delay {
    type Output = ();
    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        if Instant::now() >= self.until {
            return Poll::Ready(());
        }
        if !self.armed {
            self.armed = true;
            let (waker, until) = (cx.waker().clone(), self.until);
            std::thread::spawn(move || {
                std::thread::sleep(until.saturating_duration_since(Instant::now()));
                waker.wake();
            });
        }
        Poll::Pending
    }
}

struct SlowSource {
    delay: Duration,
    calls: AtomicUsize,
}

impl TokenSource for SlowSource {
    fn name(&self) -> &'static str {
        "slow"
    }
    fn validate(&self, token: &str) -> SourceFuture {
        self.calls.fetch_add(1, Ordering::SeqCst);
        let token = token.to_owned();
        let delay = Delay {
            until: Instant::now() + self.delay,
            armed: false,
        };
        Box::pin(async move {
            delay.await;
            match token.as_str() {
                "slow-alice" => Ok(TokenFacts {
                    active: true,
                    username: Some("alice".into()),
                    ..Default::default()
                }),
                "broken" => Err(SourceError::Timeout),
                _ => Ok(TokenFacts::inactive()),
            }
        })
    }
}

fn register(user: &str, call_id: &str, token: Option<&str>) -> String {
    let auth = token
        .map(|t| format!("Authorization: Bearer {t}\r\n"))
        .unwrap_or_default();
    format!(
        "REGISTER sip:example.com SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.1:5999;branch=z9hG4bK-{call_id}\r\n\
         From: <sip:{user}@example.com>;tag=f\r\nTo: <sip:{user}@example.com>\r\nCall-ID: {call_id}\r\n\
         CSeq: 1 REGISTER\r\n{auth}Content-Length: 0\r\n\r\n"
    )
}

fn start(io: &str, source: Arc<SlowSource>) -> Server {
    let cfg = Config::parse(
        &format!("[server]\nudp = [\"127.0.0.1:0\"]\ntcp = []\nshards = 1\nio = \"{io}\"\n"),
        std::path::Path::new("."),
    )
    .unwrap();
    let shared = Shared::new(
        sipward::auth::Engine::new(cfg.policy.clone(), 200, (1, 2)),
        TokenService::new(Some(source), &cfg.cache, TokenHasher::new((5, 6))),
        cfg.server.clone(),
    );
    Server::start_with(Arc::new(shared)).unwrap()
}

fn recv(sock: &std::net::UdpSocket) -> String {
    let mut buf = [0u8; 4096];
    let n = sock.recv(&mut buf).expect("a response");
    String::from_utf8(buf[..n].to_vec()).unwrap()
}

#[test]
fn shard_serves_others_while_a_token_is_looked_up() {
    for io in ["io_uring", "epoll"] {
        let source = Arc::new(SlowSource {
            delay: Duration::from_millis(800),
            calls: AtomicUsize::new(0),
        });
        let server = start(io, source.clone());
        assert_eq!(server.driver.name(), io);
        let to = server.bound.udp[0];
        let waiting = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let other = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        for s in [&waiting, &other] {
            s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        }
        let t0 = Instant::now();
        waiting
            .send_to(register("alice", "slow", Some("slow-alice")).as_bytes(), to)
            .unwrap();
        waiting
            .send_to(register("alice", "fail", Some("broken")).as_bytes(), to)
            .unwrap();
        // While both lookups wait, ten other requests are answered.
        for i in 0..10 {
            other
                .send_to(register("alice", &format!("quick{i}"), None).as_bytes(), to)
                .unwrap();
            assert!(recv(&other).starts_with("SIP/2.0 401 "), "{io}");
        }
        let quick = t0.elapsed();
        assert!(
            quick < Duration::from_millis(800),
            "{io}: others answered after {quick:?}"
        );
        let mut late = [recv(&waiting), recv(&waiting)];
        late.sort();
        assert!(t0.elapsed() >= Duration::from_millis(800));
        assert!(late[0].starts_with("SIP/2.0 200 OK"), "{io}: {}", late[0]);
        assert!(
            late[1].starts_with("SIP/2.0 503 Service Unavailable"),
            "{io}: {}",
            late[1]
        );
        assert!(late[1].contains("Retry-After: 5\r\n"));
        assert_eq!(source.calls.load(Ordering::SeqCst), 2);
        // The answer is cached now; the failure was not.
        waiting
            .send_to(
                register("alice", "again", Some("slow-alice")).as_bytes(),
                to,
            )
            .unwrap();
        assert!(recv(&waiting).starts_with("SIP/2.0 200 OK"));
        assert_eq!(source.calls.load(Ordering::SeqCst), 2);
    }
}
