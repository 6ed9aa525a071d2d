//! Token validation behind the sans-io core: the [`TokenSource`] boundary, the keyed token hash, the
//! cache shared by all shards, and [`TokenService`], which a shard asks.
//!
//! The token text lives only as long as the request that carries it: the cache is keyed by a keyed
//! 128-bit hash ([`TokenKey`]), and no type here prints a token in `Debug`. Remote sources (RFC 7662
//! introspection, userinfo GET) and request coalescing belong here too and arrive with issue #3.

pub mod cache;
pub mod claims;
pub mod flight;
pub mod http;
pub mod metrics;
pub mod static_file;

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use arc_swap::ArcSwap;
use siphasher::sip128::{Hasher128, SipHasher13};

use crate::auth::{SourceError, TokenFacts};
use crate::config::CacheConfig;

pub use cache::TokenCache;
pub use static_file::StaticTokens;

/// A future answering one validation. It owns what it needs, so it can run detached from the request
/// that started it (see [`flight`]). It runs on the shard that started it (remote sources do their
/// HTTP there), so it need not be `Send`.
pub type SourceFuture = Pin<Box<dyn Future<Output = Result<TokenFacts, SourceError>> + 'static>>;

/// Something that can tell what a token is worth. Unknown tokens are `Ok(TokenFacts::inactive())`;
/// `Err` means the source could not answer.
pub trait TokenSource: Send + Sync + 'static {
    /// A short name for logs ("static", "introspection", …).
    fn name(&self) -> &'static str;
    fn validate(&self, token: &str) -> SourceFuture;
    /// Whether the source can answer now (for readiness); a remote source is unhealthy while every
    /// host is marked down.
    fn healthy(&self) -> bool {
        true
    }
}

/// A keyed 128-bit hash of a token: what the cache stores instead of the token.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub struct TokenKey(pub u128);

/// Hashes tokens with a per-process random key, so cache keys reveal nothing across processes.
#[derive(Clone)]
pub struct TokenHasher {
    keys: (u64, u64),
}

impl TokenHasher {
    pub fn new(keys: (u64, u64)) -> TokenHasher {
        TokenHasher { keys }
    }

    /// A hasher with a key from the operating system's random source.
    pub fn random() -> TokenHasher {
        TokenHasher::new(random_keys())
    }

    #[inline]
    pub fn key(&self, token: impl AsRef<[u8]>) -> TokenKey {
        let mut h = SipHasher13::new_with_keys(self.keys.0, self.keys.1);
        std::hash::Hasher::write(&mut h, token.as_ref());
        TokenKey(h.finish128().as_u128())
    }
}

/// Two random 64-bit keys from the OS (std's RandomState is seeded from it).
pub fn random_keys() -> (u64, u64) {
    use std::hash::{BuildHasher, Hasher};
    let a = std::collections::hash_map::RandomState::new()
        .build_hasher()
        .finish();
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u64(a);
    (a, h.finish())
}

/// Why [`TokenService::resolve`] has no facts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unresolved {
    NoSource,
    Failed(SourceError),
}

/// Cache in front of a source; what shards ask. The source and the TTLs can be replaced while
/// shards run ([`TokenService::reconfigure`], for a live reload); the cache and the flights stay.
pub struct TokenService {
    hasher: TokenHasher,
    cache: Arc<TokenCache>,
    flights: Arc<flight::Flights>,
    settings: ArcSwap<Settings>,
}

/// What a reload may replace.
struct Settings {
    source: Option<Arc<dyn TokenSource>>,
    ttl: Ttl,
}

/// How long answers are cached.
#[derive(Clone, Copy)]
struct Ttl {
    max_s: u64,
    negative_s: u64,
}

impl Ttl {
    fn of(cache: &CacheConfig) -> Ttl {
        Ttl {
            max_s: cache.max_ttl_s,
            negative_s: cache.negative_ttl_s,
        }
    }

    /// Until when an answer given at `now` may be served: a positive one until
    /// `min(exp, now + max_s)`, never past `exp` (RFC 7662 section 4); a negative one `negative_s`.
    fn until(self, facts: &TokenFacts, now: u64) -> u64 {
        if facts.active {
            let cap = now.saturating_add(self.max_s);
            facts.exp.map_or(cap, |exp| exp.min(cap))
        } else {
            now.saturating_add(self.negative_s)
        }
    }
}

impl TokenService {
    pub fn new(
        source: Option<Arc<dyn TokenSource>>,
        cache: &CacheConfig,
        hasher: TokenHasher,
    ) -> TokenService {
        TokenService {
            hasher,
            cache: Arc::new(TokenCache::new(cache.max_entries)),
            flights: Arc::default(),
            settings: ArcSwap::from_pointee(Settings {
                source,
                ttl: Ttl::of(cache),
            }),
        }
    }

    /// Replaces the source and the TTLs. Lookups already waiting finish with the source they asked;
    /// cached answers stay. `cache.max_entries` is not changed (the cache is not rebuilt).
    pub fn reconfigure(&self, source: Option<Arc<dyn TokenSource>>, cache: &CacheConfig) {
        self.settings.store(Arc::new(Settings {
            source,
            ttl: Ttl::of(cache),
        }));
    }

    #[inline]
    pub fn has_source(&self) -> bool {
        self.settings.load().source.is_some()
    }

    /// The source's name, if there is one.
    pub fn source_name(&self) -> Option<&'static str> {
        self.settings.load().source.as_ref().map(|s| s.name())
    }

    /// Whether a source is configured and can answer now.
    pub fn source_healthy(&self) -> bool {
        self.settings
            .load()
            .source
            .as_ref()
            .is_some_and(|s| s.healthy())
    }

    /// Lookups so far that joined a request already in flight instead of starting one.
    pub fn coalesced(&self) -> u64 {
        self.flights.coalesced()
    }

    #[inline]
    pub fn key(&self, token: impl AsRef<[u8]>) -> TokenKey {
        self.hasher.key(token)
    }

    /// Runs `f` on the cached answer for `key` if one is valid at `now` (Unix seconds). The facts are
    /// lent, not cloned: see [`cache`].
    #[inline]
    pub fn with_cached<R>(
        &self,
        key: TokenKey,
        now: u64,
        f: impl FnOnce(&TokenFacts) -> R,
    ) -> Option<R> {
        self.cache.with(key, now, f)
    }

    /// The cache held for a batch of lookups: see [`cache::Snapshot`].
    #[inline]
    pub fn snapshot(&self) -> cache::Snapshot {
        self.cache.snapshot()
    }

    /// [`TokenService::with_cached`] through a pinned [`cache::Snapshot`].
    #[inline]
    pub fn with_pinned<R>(
        &self,
        pinned: &cache::Pinned<'_>,
        key: TokenKey,
        now: u64,
        f: impl FnOnce(&TokenFacts) -> R,
    ) -> Option<R> {
        self.cache.with_pinned(pinned, key, now, f)
    }

    pub fn cache(&self) -> &TokenCache {
        &self.cache
    }

    /// Flights to the source in the air now.
    pub fn in_flight(&self) -> usize {
        self.flights.in_air()
    }

    /// Asks the source, unless a request for the same token is already in flight, in which case this
    /// waits for that one (singleflight). The answer is cached (see [`Ttl`]); failures are not.
    /// Must run inside a shard's runtime: the request to the source runs on a detached task there,
    /// so that it lands for every waiter even if this caller goes away.
    pub async fn resolve(
        &self,
        token: &str,
        key: TokenKey,
        now: u64,
    ) -> Result<Arc<TokenFacts>, Unresolved> {
        // An Arc, not a guard: this is held across the wait below, and a guard would keep one of
        // the thread's few arc-swap debt slots for as long as the source takes.
        let settings = self.settings.load_full();
        let source = settings.source.as_ref().ok_or(Unresolved::NoSource)?;
        let (flight, leader) = self.flights.join(key.0);
        if leader {
            let request = source.validate(token);
            let (cache, flights, ttl, landing) = (
                self.cache.clone(),
                self.flights.clone(),
                settings.ttl,
                flight.clone(),
            );
            monoio::spawn(async move {
                let result = request.await.map(Arc::new);
                if let Ok(facts) = &result {
                    let until = ttl.until(facts, now);
                    if until > now {
                        cache.insert(key, TokenFacts::clone(facts), until, now);
                    }
                }
                flights.land(key.0, &landing, result);
            });
        }
        flight.wait().await.map_err(Unresolved::Failed)
    }
}

/// Seconds since the Unix epoch, the time base of token claims.
#[inline]
pub fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Counting {
        facts: TokenFacts,
        calls: std::sync::atomic::AtomicUsize,
    }

    impl TokenSource for Counting {
        fn name(&self) -> &'static str {
            "counting"
        }
        fn validate(&self, _token: &str) -> SourceFuture {
            self.calls
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            Box::pin(std::future::ready(Ok(self.facts.clone())))
        }
    }

    fn block_on<F: Future>(f: F) -> F::Output {
        monoio::RuntimeBuilder::<monoio::LegacyDriver>::new()
            .build()
            .unwrap()
            .block_on(f)
    }

    fn service(facts: TokenFacts) -> (TokenService, Arc<Counting>) {
        let src = Arc::new(Counting {
            facts,
            calls: Default::default(),
        });
        let cfg = CacheConfig {
            max_entries: 100,
            max_ttl_s: 300,
            negative_ttl_s: 10,
        };
        (
            TokenService::new(Some(src.clone()), &cfg, TokenHasher::new((3, 4))),
            src,
        )
    }

    #[test]
    fn hash_depends_on_key_and_token() {
        let a = TokenHasher::new((1, 2));
        let b = TokenHasher::new((1, 3));
        assert_eq!(a.key("t"), a.key("t"));
        assert_ne!(a.key("t"), a.key("u"));
        assert_ne!(a.key("t"), b.key("t"));
        assert_ne!(random_keys(), random_keys());
    }

    #[test]
    fn positive_answers_are_cached_until_exp_at_most() {
        let now = 1000;
        let (svc, src) = service(TokenFacts {
            active: true,
            exp: Some(now + 20),
            ..Default::default()
        });
        let key = svc.key("tok");
        assert!(svc.with_cached(key, now, |_| ()).is_none());
        block_on(svc.resolve("tok", key, now)).unwrap();
        assert!(svc.with_cached(key, now + 19, |_| ()).is_some());
        // Never served at or past exp, although max_ttl_s is longer.
        assert!(svc.with_cached(key, now + 20, |_| ()).is_none());
        assert_eq!(src.calls.load(std::sync::atomic::Ordering::Relaxed), 1);
    }

    #[test]
    fn positive_answers_without_exp_live_max_ttl() {
        let (svc, _) = service(TokenFacts {
            active: true,
            ..Default::default()
        });
        let key = svc.key("tok");
        block_on(svc.resolve("tok", key, 1000)).unwrap();
        assert!(svc.with_cached(key, 1299, |_| ()).is_some());
        assert!(svc.with_cached(key, 1300, |_| ()).is_none());
    }

    #[test]
    fn negative_answers_live_negative_ttl() {
        let (svc, _) = service(TokenFacts::inactive());
        let key = svc.key("tok");
        block_on(svc.resolve("tok", key, 1000)).unwrap();
        assert!(svc.with_cached(key, 1009, |f| f.active) == Some(false));
        assert!(svc.with_cached(key, 1010, |_| ()).is_none());
    }

    #[test]
    fn expired_answers_are_not_cached() {
        let (svc, _) = service(TokenFacts {
            active: true,
            exp: Some(900),
            ..Default::default()
        });
        let key = svc.key("tok");
        block_on(svc.resolve("tok", key, 1000)).unwrap();
        assert_eq!(svc.cache().len(), 0);
    }

    #[test]
    fn concurrent_misses_share_one_request() {
        let (svc, src) = service(TokenFacts {
            active: true,
            ..Default::default()
        });
        let svc = std::rc::Rc::new(svc);
        let answers = block_on(async {
            let tasks: Vec<_> = (0..100)
                .map(|_| {
                    let svc = svc.clone();
                    monoio::spawn(async move { svc.resolve("tok", svc.key("tok"), 1000).await })
                })
                .collect();
            let mut answers = Vec::new();
            for t in tasks {
                answers.push(t.await);
            }
            answers
        });
        assert!(answers.iter().all(|a| a.as_ref().is_ok_and(|f| f.active)));
        assert_eq!(src.calls.load(std::sync::atomic::Ordering::Relaxed), 1);
        assert_eq!(svc.in_flight(), 0);
        assert_eq!(svc.coalesced(), 99);
    }

    #[test]
    fn reconfigure_keeps_the_cache_and_changes_the_ttl() {
        let (svc, _) = service(TokenFacts {
            active: true,
            ..Default::default()
        });
        let key = svc.key("tok");
        block_on(svc.resolve("tok", key, 1000)).unwrap();
        let short = CacheConfig {
            max_entries: 100,
            max_ttl_s: 5,
            negative_ttl_s: 1,
        };
        let (other, _) = service(TokenFacts::inactive());
        let src = other.settings.load().source.clone();
        svc.reconfigure(src, &short);
        // The answer cached before the reload is still served...
        assert!(svc.with_cached(key, 1200, |f| f.active) == Some(true));
        // ...and a new one comes from the new source, cached for the new negative TTL.
        let key2 = svc.key("tok2");
        let facts = block_on(svc.resolve("tok2", key2, 2000)).unwrap();
        assert!(!facts.active);
        assert!(svc.with_cached(key2, 2000, |_| ()).is_some());
        assert!(svc.with_cached(key2, 2001, |_| ()).is_none());
        svc.reconfigure(None, &short);
        assert!(!svc.has_source());
    }

    #[test]
    fn no_source() {
        let cfg = CacheConfig {
            max_entries: 1,
            max_ttl_s: 1,
            negative_ttl_s: 1,
        };
        let svc = TokenService::new(None, &cfg, TokenHasher::new((0, 0)));
        assert!(!svc.has_source());
        assert_eq!(
            block_on(svc.resolve("t", svc.key("t"), 0)).unwrap_err(),
            Unresolved::NoSource
        );
    }
}
