//! The whole respond-mode path for a cached token (issue #2 target: at most 1 µs), done the way a
//! shard's hot path does it (`src/shard/process.rs::process`):
//!
//! `Engine::begin_then` → (the request lent where it was scanned) `TokenService::key` →
//! `TokenService::with_pinned` (hit, facts lent) → `Engine::finish_ready(Lookup::Found)` →
//! response bytes in a reused `out` buffer. The clock is read once per iteration here; the server reads it
//! once per batch, and takes and pins the cache's snapshot once per batch, which here is done once
//! per benchmark.
//!
//! Beside it, the parts, so a reader sees where the time goes: token key hashing, the cache hit,
//! `begin` alone, `finish` alone, the clock read; and the 401 challenge path (no Authorization),
//! which never reaches the cache; and `finish` split into the decision (AOR + `judge`) and the
//! response bytes. `cached_token_full_ops` adds what issue #6 put on the path: the engine loaded
//! from its `ArcSwap` (live reload), the source looked up behind its `ArcSwap`, and the shard's
//! counters (cache hit, response code, method × outcome). The server now takes those two loads
//! once per batch (`shard::process::Turn`), so this is the per-message worst case. Not included:
//! the socket I/O around `process`.
//!
//! A second group, `forward_path`, times forward mode's counterpart beside the same respond path:
//! the cached-token REGISTER relayed to the upstream (Via with the derived branch, received/rport,
//! Path with a signed flow token, P-Asserted-Identity, Bearer line dropped), and the core's 200
//! relayed back (sipward's Via checked and popped, destination from the next Via).
//!
//! Run: `cargo bench --bench respond_path` (see BENCHMARKS.md for recorded figures).

use std::hint::black_box;
use std::net::SocketAddr;
use std::sync::Arc;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use sipward::auth::{judge, Begin, Done, Engine, Lookup, Outcome, Pending, Policy, TokenFacts};
use sipward::config::CacheConfig;
use sipward::forward::Flow;
use sipward::shard::stats::{bump, method_slot, outcome_index, ShardStats};
use sipward::sip::reply::{finish_response, put_register_contacts, start_response_with_tag};
use sipward::sip::Method;
use sipward::token::cache::Pinned;
use sipward::token::{unix_now, StaticTokens, TokenHasher, TokenService};

#[path = "fixtures/register.rs"]
mod fixtures;
use fixtures::{register, TOKEN};

fn src() -> SocketAddr {
    "192.0.2.10:5060".parse().unwrap()
}

/// A token service backed by a static source holding [`TOKEN`] for user `alice` (no expiry, so an
/// answer is cached for `max_ttl_s`), with the answer already in the cache.
fn warmed_service(now: u64) -> TokenService {
    let tokens = StaticTokens::parse(&format!(
        "[[tokens]]\ntoken = \"{TOKEN}\"\nusername = \"alice\"\n"
    ))
    .expect("static token file parses");
    let cfg = CacheConfig {
        max_entries: 10_000,
        // Long enough that the entry outlives the benchmark run, whose clock moves on.
        max_ttl_s: 24 * 3600,
        negative_ttl_s: 10,
    };
    let svc = TokenService::new(Some(Arc::new(tokens)), &cfg, TokenHasher::new((3, 4)));
    let key = svc.key(TOKEN);
    let facts = monoio::RuntimeBuilder::<monoio::LegacyDriver>::new()
        .build()
        .expect("monoio runtime")
        .block_on(svc.resolve(TOKEN, key, now))
        .expect("the static source answers");
    assert!(facts.active);
    assert!(
        svc.with_cached(key, now, |_| ()).is_some(),
        "resolve filled the cache"
    );
    svc
}

const ACCEPTED: Done = Done::Replied {
    code: 200,
    outcome: Some(Outcome::Accept),
};

/// The shard's hot path for a request whose token is cached (cf. `shard::process::process`): the
/// token looked up on the request where the engine scanned it. With the method the engine parsed,
/// which the shard counts by.
#[inline(always)]
fn respond(
    engine: &Engine,
    tokens: &TokenService,
    pinned: &Pinned<'_>,
    data: &[u8],
    src: SocketAddr,
    out: &mut Vec<u8>,
) -> (Done, Option<Method>) {
    let now = unix_now();
    let arrival = Flow::Udp(src);
    let done = engine.begin_then(data, arrival, out, |ready, out| {
        let key = tokens.key(ready.token);
        let done = tokens
            .with_pinned(pinned, key, now, |facts| {
                engine.finish_ready(ready, arrival, Lookup::Found(facts), now, out)
            })
            .expect("the benchmark token is cached");
        (done, ready.msg.method())
    });
    done.unwrap_or_else(|done| (done, None))
}

/// [`respond`] once, outside a timed loop, through a snapshot of its own.
fn respond_once(
    engine: &Engine,
    tokens: &TokenService,
    data: &[u8],
    src: SocketAddr,
    out: &mut Vec<u8>,
) -> Done {
    respond(engine, tokens, &tokens.snapshot().pin(), data, src, out).0
}

fn need_token<'a>(
    engine: &Engine,
    data: &'a [u8],
    src: SocketAddr,
    out: &mut Vec<u8>,
) -> Pending<'a> {
    match engine.begin(data, src, out) {
        Begin::NeedToken(p) => p,
        Begin::Done(d) => panic!("expected NeedToken, got {d:?}"),
    }
}

fn bench_respond(c: &mut Criterion) {
    let engine = Engine::new(Policy::default(), 200, (1, 2));
    let now = unix_now();
    let tokens = warmed_service(now);
    let src = src();
    let with_token = register(true);
    let without = register(false);
    println!(
        "REGISTER with token: {} bytes; without: {} bytes",
        with_token.len(),
        without.len()
    );
    assert_eq!(TOKEN.len(), 150);

    // What is timed must do what the server does: a 200 with the contact for the cached token, a
    // 401 Bearer challenge without one.
    let mut out = Vec::with_capacity(1024);
    assert_eq!(
        respond_once(&engine, &tokens, &with_token, src, &mut out),
        ACCEPTED
    );
    let text = String::from_utf8(out.clone()).unwrap();
    assert!(text.starts_with("SIP/2.0 200 OK\r\n"), "{text}");
    assert!(
        text.contains("Contact: <sip:alice@192.0.2.10:5060>;+sip.instance="),
        "{text}"
    );
    println!("200 response: {} bytes", out.len());
    match engine.begin(&without, src, &mut out) {
        Begin::Done(Done::Replied {
            code: 401,
            outcome: Some(Outcome::NoCredentials),
        }) => {}
        other => panic!("expected a 401 challenge, got {other:?}"),
    }
    assert!(out.starts_with(b"SIP/2.0 401 Unauthorized\r\n"));
    println!("401 response: {} bytes", out.len());

    let mut g = c.benchmark_group("respond_path");
    g.throughput(Throughput::Elements(1));

    let snapshot = tokens.snapshot();
    let pinned = snapshot.pin();
    g.bench_function("cached_token_full", |b| {
        let mut out = Vec::with_capacity(1024);
        b.iter(|| {
            let done = respond(
                &engine,
                &tokens,
                &pinned,
                black_box(&with_token),
                src,
                &mut out,
            );
            black_box(&out);
            done.0
        })
    });

    let live = arc_swap::ArcSwap::from_pointee(engine.clone());
    let stats = ShardStats::default();
    g.bench_function("cached_token_full_ops", |b| {
        let mut out = Vec::with_capacity(1024);
        b.iter(|| {
            let data = black_box(&with_token);
            let engine = live.load();
            assert!(tokens.has_source());
            let (done, method) = respond(&engine, &tokens, &pinned, data, src, &mut out);
            bump(&stats.cache_hits);
            if let Done::Replied { code, outcome } = done {
                bump(&stats.replied);
                stats.response(code);
                let method = method.expect("the engine parsed the request");
                stats.request(method_slot(method), outcome_index(outcome));
            }
            black_box(&out);
            done
        })
    });

    g.bench_function("challenge_401_full", |b| {
        let mut out = Vec::with_capacity(1024);
        b.iter(|| {
            let done = engine.begin(black_box(&without), src, &mut out);
            black_box(&out);
            matches!(done, Begin::Done(_))
        })
    });

    g.bench_function("part_begin", |b| {
        let mut out = Vec::with_capacity(1024);
        b.iter(|| {
            let p = need_token(&engine, black_box(&with_token), src, &mut out);
            black_box(p.token.len())
        })
    });

    let key = tokens.key(TOKEN);
    g.bench_function("part_unix_now", |b| b.iter(unix_now));
    g.bench_function("part_token_key", |b| {
        b.iter(|| tokens.key(black_box(TOKEN)))
    });
    g.bench_function("part_cache_hit", |b| {
        b.iter(|| {
            tokens
                .with_pinned(&pinned, black_box(key), now, |f| f.active)
                .expect("cached")
        })
    });

    g.bench_function("part_finish", |b| {
        let mut out = Vec::with_capacity(1024);
        let pending = need_token(&engine, &with_token, src, &mut out);
        let facts = tokens.with_cached(key, now, TokenFacts::clone).unwrap();
        b.iter(|| {
            let done = engine.finish(
                black_box(&pending),
                src,
                Lookup::Found(&facts),
                now,
                &mut out,
            );
            black_box(&out);
            done
        })
    });

    // finish() split in two: the decision, then the response bytes (status line, copied headers
    // with the top Via rewritten, To tag, Contact echo for the REGISTER). Neither parses From or
    // To: `begin` did, once, and the pending request carries the result.
    g.bench_function("part_finish_judge", |b| {
        let pending = need_token(&engine, &with_token, src, &mut out);
        let facts = tokens.with_cached(key, now, TokenFacts::clone).unwrap();
        b.iter(|| {
            let aor = black_box(&pending).parties.to.aor();
            judge(&engine.policy, Lookup::Found(&facts), &aor, now)
        })
    });
    // Without deriving the To tag (a SipHash of Call-ID, From and CSeq), which is in part_finish.
    g.bench_function("part_finish_response_bytes", |b| {
        let mut resp = Vec::with_capacity(1024);
        let pending = need_token(&engine, &with_token, src, &mut out);
        b.iter(|| {
            let msg = &black_box(&pending).msg;
            let tag = Some(&b"0123456789abcdef"[..]);
            start_response_with_tag(&mut resp, msg, src, 200, "OK", tag);
            put_register_contacts(&mut resp, msg);
            finish_response(&mut resp);
            black_box(&resp);
        })
    });

    g.finish();
}

fn bench_forward(c: &mut Criterion) {
    let now = unix_now();
    let tokens = warmed_service(now);
    let src = src();
    let with_token = register(true);
    let cfg = sipward::config::Config::parse(
        "[server]\nudp = [\"192.0.2.1:5060\"]\n[forward]\nupstream = \"udp:192.0.2.100:5060\"\n\
         flow_key = \"0123456789abcdef0123\"\n",
        std::path::Path::new("."),
    )
    .expect("config");
    let fwd = sipward::forward::Forwarder::new(cfg.forward.as_ref().expect("[forward]"), (3, 4));
    let respond_engine = Engine::new(Policy::default(), 200, (1, 2));
    let forward_engine = Engine::new(Policy::default(), 200, (1, 2)).with_forward(Some(fwd));
    let core: SocketAddr = "192.0.2.100:5060".parse().unwrap();

    // What is timed must do what the server does: relay the REGISTER, then the core's answer.
    let mut out = Vec::with_capacity(2048);
    let relayed = Done::Forwarded(sipward::forward::Dest::Upstream);
    assert_eq!(
        respond_once(&forward_engine, &tokens, &with_token, src, &mut out),
        relayed
    );
    let text = String::from_utf8(out.clone()).unwrap();
    assert!(
        text.contains("\r\nPath: <sip:") && !text.contains(TOKEN),
        "{text}"
    );
    println!("relayed REGISTER: {} bytes", out.len());
    let mut answer = String::from("SIP/2.0 200 OK\r\n");
    for line in text.lines().filter(|l| l.starts_with("Via: ")) {
        answer.push_str(line);
        answer.push_str("\r\n");
    }
    answer.push_str(
        "From: <sip:alice@example.com>;tag=1\r\nTo: <sip:alice@example.com>;tag=2\r\n\
         Call-ID: a84b4c76e66710@pc33.example.com\r\nCSeq: 1 REGISTER\r\nContent-Length: 0\r\n\r\n",
    );
    let answer = answer.into_bytes();
    let back = Done::Forwarded(sipward::forward::Dest::Flow(Flow::Udp(src)));
    match forward_engine.begin(&answer, core, &mut out) {
        Begin::Done(done) => assert_eq!(done, back),
        Begin::NeedToken(_) => panic!("a response needs no token"),
    }

    let snapshot = tokens.snapshot();
    let pinned = snapshot.pin();
    let mut g = c.benchmark_group("forward_path");
    g.throughput(Throughput::Elements(1));
    for (name, engine) in [
        ("respond_cached_token_full", &respond_engine),
        ("relay_cached_token_full", &forward_engine),
    ] {
        g.bench_function(name, |b| {
            let mut out = Vec::with_capacity(2048);
            b.iter(|| {
                let done = respond(
                    engine,
                    &tokens,
                    &pinned,
                    black_box(&with_token),
                    src,
                    &mut out,
                );
                black_box(&out);
                done.0
            })
        });
    }
    g.bench_function("relay_core_response", |b| {
        let mut out = Vec::with_capacity(2048);
        b.iter(|| {
            let done = forward_engine.begin(black_box(&answer), core, &mut out);
            black_box(&out);
            matches!(done, Begin::Done(_))
        })
    });
    g.finish();
}

criterion_group!(benches, bench_respond, bench_forward);
criterion_main!(benches);
