//! Resident memory of the token cache holding 1,000,000 answers (issue #3: at most 200 bytes an
//! entry). Each entry is realistic: a username, an expiry and a scope, as introspection returns.
//!
//!     cargo run --release --example cache_memory

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

use sipward::auth::TokenFacts;
use sipward::token::{TokenCache, TokenHasher};

fn rss_bytes() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let kb: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches(" kB").trim().parse().ok())
        .unwrap();
    kb * 1024
}

fn main() {
    const N: usize = 1_000_000;
    let hasher = TokenHasher::new((1, 2));
    let keys: Vec<_> = (0..N)
        .map(|i| hasher.key(format!("access-token-{i:08}")))
        .collect();
    // Generations hold half the bound each: a bound of 2N keeps all N in the young one, so RSS
    // counts exactly N entries.
    let cache = TokenCache::new(2 * N + 2);
    let before = rss_bytes();
    for (i, k) in keys.iter().enumerate() {
        let facts = TokenFacts {
            active: true,
            username: Some(format!("user{i:07}").into()),
            exp: Some(1_900_000_000 + i as u64),
            nbf: None,
            scope: Some("sip".into()),
            aud: Vec::new(),
        };
        cache.insert(*k, facts, 1_900_000_000, 0);
    }
    let after = rss_bytes();
    assert_eq!(cache.len(), N);
    let per = (after - before) as f64 / N as f64;
    println!("entries: {N}\nrss before: {before} B\nrss after: {after} B\nper entry: {per:.1} B (target: at most 200)");
}
