//! Which structure holds the shared token cache: reads (the hot path: every authenticated request)
//! with 1 and 2 threads, and inserts, for the candidates and a naive `Mutex<HashMap>` baseline.
//! Keys are already keyed SipHash-1-3 outputs, so every map here uses a pass-through hasher
//! ([`KeyHasher`]) rather than hashing them again; the baseline included.

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use sipward::auth::TokenFacts;

#[derive(Default)]
struct KeyHasher(u64);

impl Hasher for KeyHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for chunk in bytes.chunks(8) {
            let mut b = [0u8; 8];
            b[..chunk.len()].copy_from_slice(chunk);
            self.0 ^= u64::from_le_bytes(b);
        }
    }
    fn write_u128(&mut self, v: u128) {
        self.0 = (v as u64) ^ ((v >> 64) as u64);
    }
}

type Build = BuildHasherDefault<KeyHasher>;

#[derive(Clone)]
struct Entry {
    facts: Arc<TokenFacts>,
    until: u64,
}

/// Reads lend the facts to a closure instead of cloning the `Arc`: a clone is an atomic write to one
/// cache line that every core reading a popular token would fight over.
type Probe<'a> = &'a dyn Fn(&TokenFacts) -> bool;

trait Cache: Send + Sync {
    fn get(&self, k: u128, now: u64) -> Option<Arc<TokenFacts>>;
    fn with(&self, k: u128, now: u64, f: Probe<'_>) -> Option<bool>;
    fn insert(&self, k: u128, e: Entry);
}

struct Baseline(Mutex<HashMap<u128, Entry, Build>>);
impl Cache for Baseline {
    fn with(&self, k: u128, now: u64, f: Probe<'_>) -> Option<bool> {
        let m = self.0.lock().unwrap();
        m.get(&k).filter(|e| now < e.until).map(|e| f(&e.facts))
    }
    fn get(&self, k: u128, now: u64) -> Option<Arc<TokenFacts>> {
        let m = self.0.lock().unwrap();
        m.get(&k).filter(|e| now < e.until).map(|e| e.facts.clone())
    }
    fn insert(&self, k: u128, e: Entry) {
        self.0.lock().unwrap().insert(k, e);
    }
}

struct Dash(dashmap::DashMap<u128, Entry, Build>);
impl Cache for Dash {
    fn with(&self, k: u128, now: u64, f: Probe<'_>) -> Option<bool> {
        self.0
            .get(&k)
            .filter(|e| now < e.until)
            .map(|e| f(&e.facts))
    }
    fn get(&self, k: u128, now: u64) -> Option<Arc<TokenFacts>> {
        self.0
            .get(&k)
            .filter(|e| now < e.until)
            .map(|e| e.facts.clone())
    }
    fn insert(&self, k: u128, e: Entry) {
        self.0.insert(k, e);
    }
}

struct Papaya(papaya::HashMap<u128, Entry, Build>);
impl Cache for Papaya {
    fn with(&self, k: u128, now: u64, f: Probe<'_>) -> Option<bool> {
        let g = self.0.guard();
        self.0
            .get(&k, &g)
            .filter(|e| now < e.until)
            .map(|e| f(&e.facts))
    }
    fn get(&self, k: u128, now: u64) -> Option<Arc<TokenFacts>> {
        let g = self.0.guard();
        self.0
            .get(&k, &g)
            .filter(|e| now < e.until)
            .map(|e| e.facts.clone())
    }
    fn insert(&self, k: u128, e: Entry) {
        let g = self.0.guard();
        self.0.insert(k, e, &g);
    }
}

struct Quick(quick_cache::sync::Cache<u128, Entry, quick_cache::UnitWeighter, Build>);
impl Cache for Quick {
    fn with(&self, k: u128, now: u64, f: Probe<'_>) -> Option<bool> {
        // quick_cache hands out clones only.
        self.0
            .get(&k)
            .filter(|e| now < e.until)
            .map(|e| f(&e.facts))
    }
    fn get(&self, k: u128, now: u64) -> Option<Arc<TokenFacts>> {
        self.0.get(&k).filter(|e| now < e.until).map(|e| e.facts)
    }
    fn insert(&self, k: u128, e: Entry) {
        self.0.insert(k, e);
    }
}

struct Moka(moka::sync::Cache<u128, Entry, Build>);
impl Cache for Moka {
    fn with(&self, k: u128, now: u64, f: Probe<'_>) -> Option<bool> {
        // moka hands out clones only.
        self.0
            .get(&k)
            .filter(|e| now < e.until)
            .map(|e| f(&e.facts))
    }
    fn get(&self, k: u128, now: u64) -> Option<Arc<TokenFacts>> {
        self.0.get(&k).filter(|e| now < e.until).map(|e| e.facts)
    }
    fn insert(&self, k: u128, e: Entry) {
        self.0.insert(k, e);
    }
}

/// The cache sipward uses: two insert-only papaya generations behind `ArcSwap` (src/token/cache.rs).
/// It stores facts by value and lends them; its "clone" row clones the facts into a new `Arc`,
/// which is not how sipward reads it, and is shown for completeness only.
struct Sipward(sipward::token::TokenCache);
impl Cache for Sipward {
    fn with(&self, k: u128, now: u64, f: Probe<'_>) -> Option<bool> {
        self.0.with(sipward::token::TokenKey(k), now, f)
    }
    fn get(&self, k: u128, now: u64) -> Option<Arc<TokenFacts>> {
        self.0
            .with(sipward::token::TokenKey(k), now, |f| Arc::new(f.clone()))
    }
    fn insert(&self, k: u128, e: Entry) {
        self.0.insert(
            sipward::token::TokenKey(k),
            TokenFacts::clone(&e.facts),
            e.until,
            0,
        );
    }
}

const ENTRIES: usize = 100_000;
const CAPACITY: usize = 200_000;

fn candidates() -> Vec<(&'static str, Arc<dyn Cache>)> {
    vec![
        (
            "mutex_hashmap",
            Arc::new(Baseline(Mutex::new(HashMap::with_capacity_and_hasher(
                CAPACITY,
                Build::default(),
            )))),
        ),
        (
            "dashmap",
            Arc::new(Dash(dashmap::DashMap::with_capacity_and_hasher(
                CAPACITY,
                Build::default(),
            ))),
        ),
        (
            "papaya",
            Arc::new(Papaya(papaya::HashMap::with_capacity_and_hasher(
                CAPACITY,
                Build::default(),
            ))),
        ),
        (
            // Twice the capacity: each generation holds half, and every entry must stay young
            // here so that reads measure the common path, not the carry-forward.
            "sipward_generations",
            Arc::new(Sipward(sipward::token::TokenCache::new(2 * CAPACITY))),
        ),
        (
            "quick_cache",
            Arc::new(Quick(quick_cache::sync::Cache::with(
                CAPACITY,
                CAPACITY as u64,
                quick_cache::UnitWeighter,
                Build::default(),
                quick_cache::sync::DefaultLifecycle::default(),
            ))),
        ),
        (
            "moka",
            Arc::new(Moka(
                moka::sync::Cache::builder()
                    .max_capacity(CAPACITY as u64)
                    .build_with_hasher(Build::default()),
            )),
        ),
    ]
}

fn keys() -> Vec<u128> {
    let h = sipward::token::TokenHasher::new((7, 9));
    (0..ENTRIES)
        .map(|i| h.key(format!("token-{i}")).0)
        .collect()
}

/// `hot`: every read hits one of 8 tokens (one `Arc` each), as in the Kamailio comparison;
/// otherwise reads spread over 100,000 tokens. `clone`: the read clones the `Arc` out; `borrow`:
/// it lends the facts to a closure.
fn reads(c: &mut Criterion) {
    let keys = keys();
    let mut group = c.benchmark_group("cache_read");
    group
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2));
    for (name, cache) in candidates() {
        for &k in &keys {
            let facts = Arc::new(TokenFacts {
                active: true,
                username: Some("alice".into()),
                ..TokenFacts::default()
            });
            cache.insert(
                k,
                Entry {
                    facts,
                    until: u64::MAX,
                },
            );
        }
        for (spread, span) in [("hot8", 8usize), ("spread", keys.len())] {
            for style in ["clone", "borrow"] {
                for threads in [1usize, 2] {
                    group.throughput(Throughput::Elements(threads as u64));
                    let id = BenchmarkId::new(name, format!("{spread}/{style}/{threads}t"));
                    group.bench_with_input(id, &threads, |b, &threads| {
                        b.iter_custom(|iters| {
                            let start = Instant::now();
                            std::thread::scope(|s| {
                                for t in 0..threads {
                                    let (cache, keys) = (&cache, &keys);
                                    s.spawn(move || {
                                        let mut i = t * 7919;
                                        for _ in 0..iters {
                                            i = (i + 1) % span;
                                            if style == "clone" {
                                                std::hint::black_box(cache.get(keys[i], 1000));
                                            } else {
                                                std::hint::black_box(cache.with(
                                                    keys[i],
                                                    1000,
                                                    &|f| f.active,
                                                ));
                                            }
                                        }
                                    });
                                }
                            });
                            start.elapsed()
                        })
                    });
                }
            }
        }
    }
    group.finish();
}

fn inserts(c: &mut Criterion) {
    let keys = keys();
    let facts = Arc::new(TokenFacts::inactive());
    let mut group = c.benchmark_group("cache_insert");
    group
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2));
    group.throughput(Throughput::Elements(1));
    for (name, cache) in candidates() {
        group.bench_function(name, |b| {
            let mut i = 0;
            b.iter(|| {
                i = (i + 1) % keys.len();
                cache.insert(
                    keys[i],
                    Entry {
                        facts: facts.clone(),
                        until: 2000,
                    },
                );
            })
        });
    }
    group.finish();
}

criterion_group!(benches, reads, inserts);
criterion_main!(benches);
