//! The cached-token respond path in a plain loop, for exact instruction counts where wall time is
//! too noisy to compare two builds:
//!
//!     cargo build --release --example respond_loop
//!     valgrind --tool=callgrind target/release/examples/respond_loop
//!
//! Instructions per request = the `I refs` total / 100,000 (start-up is under 0.1% of it). The
//! message is the benches' REGISTER (benches/fixtures/register.rs); the token facts are passed in
//! directly, so the count is `Engine::begin_then` + `Engine::finish_ready` (the server's path),
//! without the cache lookup.

use sipward::auth::{Engine, Lookup, Policy, TokenFacts};
use sipward::forward::Flow;

#[path = "../benches/fixtures/register.rs"]
mod fixtures;

fn main() {
    let msg = fixtures::register(true);
    let engine = Engine::new(Policy::default(), 200, (1, 2));
    let src = "192.0.2.10:5060".parse().expect("address");
    let facts = TokenFacts {
        active: true,
        username: Some("alice".into()),
        ..Default::default()
    };
    let mut out = Vec::with_capacity(2048);
    let mut bytes = 0usize;
    for _ in 0..100_000 {
        let arrival = Flow::Udp(src);
        let msg = std::hint::black_box(&msg[..]);
        let done = engine.begin_then(msg, arrival, &mut out, |ready, out| {
            engine.finish_ready(ready, arrival, Lookup::Found(&facts), 1_700_000_000, out)
        });
        if done.is_ok() {
            bytes += out.len();
        }
    }
    println!("{bytes} response bytes");
}
