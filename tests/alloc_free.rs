//! Proof that the hot path does not touch the heap: a counting global allocator counts allocations
//! made by the current thread, and a well-formed REGISTER of about 600 bytes is scanned (and its
//! decision inputs extracted) without one. The respond-mode path with a cached token, writing into
//! a reused output buffer, is held to the same standard, and so is forward mode's: relaying the
//! request (with its Path and flow token) and relaying the core's response back.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::net::SocketAddr;
use std::sync::Arc;

use sipward::auth::{bearer, Begin, Credentials, Done, Engine, Lookup, Outcome, Policy};
use sipward::config::CacheConfig;
use sipward::forward::Flow;
use sipward::sip::{scan, Aor, HeaderKind};
use sipward::token::{StaticTokens, TokenHasher, TokenService};

struct Counting;

thread_local! {
    // const-initialised: reading it never allocates, so the allocator may use it.
    static ALLOCATIONS: Cell<u64> = const { Cell::new(0) };
}

// SAFETY: every call is forwarded to the system allocator unchanged; the thread-local counter is a
// plain Cell with const initialisation and no destructor.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        ALLOCATIONS.with(|c| c.set(c.get() + 1));
        System.alloc(layout)
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        ALLOCATIONS.with(|c| c.set(c.get() + 1));
        System.alloc_zeroed(layout)
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        ALLOCATIONS.with(|c| c.set(c.get() + 1));
        System.realloc(ptr, layout, new_size)
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        System.dealloc(ptr, layout)
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

/// Allocations made by this thread while `f` runs.
fn allocations_in<R>(f: impl FnOnce() -> R) -> (R, u64) {
    let before = ALLOCATIONS.with(Cell::get);
    let r = f();
    (r, ALLOCATIONS.with(Cell::get) - before)
}

const TOKEN: &str = "eyJhbGciOiJFUzI1NiIsInR5cCI6IkpXVCJ9.eyJzdWIiOiJhbGljZSIsImF1ZCI6InNpcCJ9.\
MEUCIQDx3kq9Lr7aVb2p0fGg4sHtS1nWcQx8yZ5mJ0uKeTqWBgIgZ";

fn register() -> Vec<u8> {
    format!(
        "REGISTER sip:example.com SIP/2.0\r\n\
Via: SIP/2.0/UDP 192.0.2.10:5060;branch=z9hG4bK776asdhds;rport\r\n\
Max-Forwards: 70\r\n\
From: \"Alice\" <sip:alice@example.com>;tag=1928301774\r\n\
To: \"Alice\" <sip:alice@example.com>\r\n\
Call-ID: a84b4c76e66710@pc33.example.com\r\n\
CSeq: 1 REGISTER\r\n\
Contact: <sip:alice@192.0.2.10:5060>;+sip.instance=\"<urn:uuid:f81d4fae-7dec-11d0-a765-00a0c91e6bf6>\";reg-id=1\r\n\
Expires: 600\r\n\
Authorization: Bearer {TOKEN}\r\n\
Allow: INVITE, ACK, CANCEL, BYE, OPTIONS\r\n\
Supported: path, outbound\r\n\
User-Agent: Phone/2.1\r\n\
Content-Length: 0\r\n\r\n"
    )
    .into_bytes()
}

#[test]
fn scanning_a_600_byte_register_does_not_allocate() {
    let msg = register();
    assert!(
        (550..=700).contains(&msg.len()),
        "about 600 bytes: {}",
        msg.len()
    );
    let (found, n) = allocations_in(|| {
        let m = scan(&msg).expect("scans");
        let top_via = m.top_via().expect("top via");
        let aor = Aor::from_header(m.first(HeaderKind::To).expect("To")).expect("aor");
        let token = match bearer(&m, HeaderKind::Authorization) {
            Credentials::Bearer(t) => t,
            other => panic!("{other:?}"),
        };
        m.check_request().expect("well formed");
        (
            top_via.len(),
            aor.user.len(),
            token.len(),
            m.headers().len(),
        )
    });
    assert_eq!(found, (57, 5, TOKEN.len(), 13));
    assert_eq!(n, 0, "scanning allocated {n} times");
}

#[test]
fn the_counter_sees_allocations() {
    // Guards the test above against a counter that counts nothing.
    let (_, n) = allocations_in(|| std::hint::black_box(vec![1u8; 64]));
    assert!(n >= 1);
}

/// A token service whose cache holds TOKEN (for alice), looked up once through the static source;
/// with the time it was cached at.
fn cached_service() -> (TokenService, u64) {
    let tokens = StaticTokens::parse(&format!(
        "[[tokens]]\ntoken = \"{TOKEN}\"\nusername = \"alice\"\n"
    ))
    .expect("token file");
    let cfg = CacheConfig {
        max_entries: 100,
        max_ttl_s: 3600,
        negative_ttl_s: 10,
    };
    let svc = TokenService::new(Some(Arc::new(tokens)), &cfg, TokenHasher::new((1, 2)));
    let now = 1_700_000_000;
    let key = svc.key(TOKEN);
    monoio::RuntimeBuilder::<monoio::LegacyDriver>::new()
        .build()
        .expect("runtime")
        .block_on(svc.resolve(TOKEN, key, now))
        .expect("the static source answers");
    (svc, now)
}

/// `msg` through `engine` with its token answered from `svc`'s cache, as a shard's hit path runs
/// (`shard::process`): the cache's snapshot taken and pinned (per batch there), the request lent
/// where the engine scanned it.
fn pass_cached(
    engine: &Engine,
    svc: &TokenService,
    msg: &[u8],
    src: SocketAddr,
    now: u64,
    out: &mut Vec<u8>,
) -> Done {
    let snapshot = svc.snapshot();
    let pinned = snapshot.pin();
    let arrival = Flow::Udp(src);
    engine
        .begin_then(msg, arrival, out, |ready, out| {
            let key = svc.key(ready.token);
            svc.with_pinned(&pinned, key, now, |facts| {
                engine.finish_ready(ready, arrival, Lookup::Found(facts), now, out)
            })
            .expect("cached")
        })
        .unwrap_or_else(|done| panic!("a token is needed, got {done:?}"))
}

#[test]
fn cached_token_respond_path_does_not_allocate() {
    let (svc, now) = cached_service();

    let engine = Engine::new(Policy::default(), 200, (5, 6));
    let src: SocketAddr = "192.0.2.10:5060".parse().unwrap();
    let msg = register();
    let mut out = Vec::with_capacity(2048);
    let respond = |out: &mut Vec<u8>| pass_cached(&engine, &svc, &msg, src, now, out);
    // Once to warm whatever lazily initialises per thread (the cache's epoch guard slot).
    assert_eq!(
        respond(&mut out),
        Done::Replied {
            code: 200,
            outcome: Some(Outcome::Accept)
        }
    );
    let (done, n) = allocations_in(|| respond(&mut out));
    assert_eq!(
        done,
        Done::Replied {
            code: 200,
            outcome: Some(Outcome::Accept)
        }
    );
    assert!(out.starts_with(b"SIP/2.0 200 OK\r\n"));
    assert_eq!(n, 0, "the cached respond path allocated {n} times");
}

#[test]
fn cached_token_forward_path_does_not_allocate() {
    let (svc, now) = cached_service();

    let cfg = sipward::config::Config::parse(
        "[server]\nudp = [\"192.0.2.1:5060\"]\n[forward]\nupstream = \"udp:192.0.2.100:5060\"\n\
         flow_key = \"0123456789abcdef0123\"\n",
        std::path::Path::new("."),
    )
    .expect("config");
    let fwd = sipward::forward::Forwarder::new(cfg.forward.as_ref().expect("[forward]"), (3, 4));
    let engine = Engine::new(Policy::default(), 200, (5, 6)).with_forward(Some(fwd));
    let src: SocketAddr = "192.0.2.10:5060".parse().unwrap();
    let core: SocketAddr = "192.0.2.100:5060".parse().unwrap();
    let msg = register();
    let mut out = Vec::with_capacity(2048);
    let relay = |out: &mut Vec<u8>| pass_cached(&engine, &svc, &msg, src, now, out);
    let upstream = Done::Forwarded(sipward::forward::Dest::Upstream);
    assert_eq!(relay(&mut out), upstream);
    let (done, n) = allocations_in(|| relay(&mut out));
    assert_eq!(done, upstream);
    assert_eq!(n, 0, "the cached forward path allocated {n} times");

    // The core's 200 with the relayed request's Vias, back through the engine.
    let relayed = String::from_utf8(out.clone()).unwrap();
    let mut response = String::from("SIP/2.0 200 OK\r\n");
    for line in relayed.lines().filter(|l| l.starts_with("Via: ")) {
        response.push_str(line);
        response.push_str("\r\n");
    }
    response.push_str("Call-ID: a84b4c76e66710@pc33.example.com\r\nCSeq: 1 REGISTER\r\n\
From: <sip:alice@example.com>;tag=1\r\nTo: <sip:alice@example.com>;tag=2\r\nContent-Length: 0\r\n\r\n");
    let (done, n) = allocations_in(|| match engine.begin(response.as_bytes(), core, &mut out) {
        Begin::Done(done) => done,
        Begin::NeedToken(_) => panic!("responses need no token"),
    });
    assert_eq!(
        done,
        Done::Forwarded(sipward::forward::Dest::Flow(sipward::forward::Flow::Udp(
            src
        )))
    );
    assert_eq!(n, 0, "relaying the response allocated {n} times");
}
