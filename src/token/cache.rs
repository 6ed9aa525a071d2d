//! The token cache shared by every shard: token hash → facts, each entry with the second it stops
//! being served.
//!
//! This first version is a [`DashMap`] (sharded reader-writer locks; reads never wait on each other)
//! with a size bound that evicts an arbitrary entry when full. Issue #3 chooses the final structure
//! by benchmark; the interface stays.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use dashmap::DashMap;

use super::TokenKey;
use crate::auth::TokenFacts;

struct Entry {
    facts: Arc<TokenFacts>,
    /// Unix second from which the entry is no longer served.
    until: u64,
}

pub struct TokenCache {
    map: DashMap<u128, Entry>,
    max_entries: usize,
    evictions: AtomicU64,
}

impl TokenCache {
    pub fn new(max_entries: usize) -> TokenCache {
        TokenCache {
            map: DashMap::with_capacity(max_entries.min(1 << 16)),
            max_entries,
            evictions: AtomicU64::new(0),
        }
    }

    /// The facts for `key` if present and valid at `now`. An expired entry is never returned.
    #[inline]
    pub fn get(&self, key: TokenKey, now: u64) -> Option<Arc<TokenFacts>> {
        let e = self.map.get(&key.0)?;
        (now < e.until).then(|| e.facts.clone())
    }

    pub fn insert(&self, key: TokenKey, facts: Arc<TokenFacts>, until: u64) {
        if self.map.len() >= self.max_entries && !self.map.contains_key(&key.0) {
            self.evict_one(key.0);
        }
        self.map.insert(key.0, Entry { facts, until });
    }

    fn evict_one(&self, avoid: u128) {
        let victim = self.map.iter().map(|e| *e.key()).find(|k| *k != avoid);
        if let Some(k) = victim {
            self.map.remove(&k);
            self.evictions.fetch_add(1, Ordering::Relaxed);
        }
    }

    pub fn len(&self) -> usize {
        self.map.len()
    }

    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    pub fn evictions(&self) -> u64 {
        self.evictions.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bounded() {
        let c = TokenCache::new(3);
        for i in 0..10u128 {
            c.insert(TokenKey(i), Arc::new(TokenFacts::inactive()), 100);
            assert!(c.len() <= 3);
        }
        assert_eq!(c.evictions(), 7);
        assert!(c.get(TokenKey(9), 0).is_some(), "the newest entry is kept");
    }

    #[test]
    fn expired_entries_are_not_served() {
        let c = TokenCache::new(3);
        c.insert(TokenKey(1), Arc::new(TokenFacts::inactive()), 100);
        assert!(c.get(TokenKey(1), 99).is_some());
        assert!(c.get(TokenKey(1), 100).is_none());
    }
}
