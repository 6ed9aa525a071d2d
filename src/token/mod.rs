//! Token validation behind the sans-io core: the [`TokenSource`] boundary, the keyed token hash, the
//! cache shared by all shards, and [`TokenService`], which a shard asks.
//!
//! The token text lives only as long as the request that carries it: the cache is keyed by a keyed
//! 128-bit hash ([`TokenKey`]), and no type here prints a token in `Debug`. Remote sources (RFC 7662
//! introspection, userinfo GET) and request coalescing belong here too and arrive with issue #3.

pub mod cache;
pub mod static_file;

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use siphasher::sip128::{Hasher128, SipHasher13};

use crate::auth::{SourceError, TokenFacts};
use crate::config::CacheConfig;

pub use cache::TokenCache;
pub use static_file::StaticTokens;

/// A future answering one validation.
pub type SourceFuture<'a> =
    Pin<Box<dyn Future<Output = Result<TokenFacts, SourceError>> + Send + 'a>>;

/// Something that can tell what a token is worth. Unknown tokens are `Ok(TokenFacts::inactive())`;
/// `Err` means the source could not answer.
pub trait TokenSource: Send + Sync + 'static {
    /// A short name for logs ("static", "introspection", …).
    fn name(&self) -> &'static str;
    fn validate<'a>(&'a self, token: &'a str) -> SourceFuture<'a>;
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
    pub fn key(&self, token: &str) -> TokenKey {
        let mut h = SipHasher13::new_with_keys(self.keys.0, self.keys.1);
        std::hash::Hasher::write(&mut h, token.as_bytes());
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

/// Cache in front of a source; what shards ask.
pub struct TokenService {
    hasher: TokenHasher,
    cache: TokenCache,
    source: Option<Arc<dyn TokenSource>>,
    max_ttl_s: u64,
    negative_ttl_s: u64,
}

impl TokenService {
    pub fn new(
        source: Option<Arc<dyn TokenSource>>,
        cache: &CacheConfig,
        hasher: TokenHasher,
    ) -> TokenService {
        TokenService {
            hasher,
            cache: TokenCache::new(cache.max_entries),
            source,
            max_ttl_s: cache.max_ttl_s,
            negative_ttl_s: cache.negative_ttl_s,
        }
    }

    #[inline]
    pub fn has_source(&self) -> bool {
        self.source.is_some()
    }

    #[inline]
    pub fn key(&self, token: &str) -> TokenKey {
        self.hasher.key(token)
    }

    /// A cached answer that is still valid at `now` (Unix seconds).
    #[inline]
    pub fn cached(&self, key: TokenKey, now: u64) -> Option<Arc<TokenFacts>> {
        self.cache.get(key, now)
    }

    pub fn cache(&self) -> &TokenCache {
        &self.cache
    }

    /// Asks the source and caches what it says: a positive answer until `min(exp, now + max_ttl_s)`
    /// (never past `exp`, RFC 7662 section 4), a negative one for `negative_ttl_s`. Failures are not
    /// cached.
    pub async fn resolve(
        &self,
        token: &str,
        key: TokenKey,
        now: u64,
    ) -> Result<Arc<TokenFacts>, Unresolved> {
        let source = self.source.as_ref().ok_or(Unresolved::NoSource)?;
        let facts = Arc::new(source.validate(token).await.map_err(Unresolved::Failed)?);
        let until = if facts.active {
            let cap = now.saturating_add(self.max_ttl_s);
            facts.exp.map_or(cap, |exp| exp.min(cap))
        } else {
            now.saturating_add(self.negative_ttl_s)
        };
        if until > now {
            self.cache.insert(key, facts.clone(), until);
        }
        Ok(facts)
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
        fn validate<'a>(&'a self, _token: &'a str) -> SourceFuture<'a> {
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
        assert!(svc.cached(key, now).is_none());
        block_on(svc.resolve("tok", key, now)).unwrap();
        assert!(svc.cached(key, now + 19).is_some());
        // Never served at or past exp, although max_ttl_s is longer.
        assert!(svc.cached(key, now + 20).is_none());
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
        assert!(svc.cached(key, 1299).is_some());
        assert!(svc.cached(key, 1300).is_none());
    }

    #[test]
    fn negative_answers_live_negative_ttl() {
        let (svc, _) = service(TokenFacts::inactive());
        let key = svc.key("tok");
        block_on(svc.resolve("tok", key, 1000)).unwrap();
        assert!(svc.cached(key, 1009).is_some_and(|f| !f.active));
        assert!(svc.cached(key, 1010).is_none());
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
