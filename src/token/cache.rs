//! The token cache shared by every shard: token hash → facts, each entry with the second from which
//! it is no longer served.
//!
//! A papaya hash map: reads are lock-free (an epoch guard, no shared write), and a hit lends the
//! facts to a closure instead of cloning them out, so that shards reading one popular token do not
//! fight over a reference count's cache line. BENCHMARKS.md has the comparison that chose it
//! (dashmap, quick_cache, moka, and a `Mutex<HashMap>` baseline).
//!
//! Keys are keyed SipHash outputs already, so the map's hasher passes them through. The size is
//! bounded: an insert into a full map first sweeps out expired entries and, if that frees too
//! little, drops arbitrary entries down to 90% of the bound; the sweep's cost is spread over the
//! tenth of the capacity it frees.

use std::hash::{BuildHasherDefault, Hasher};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use super::TokenKey;
use crate::auth::TokenFacts;

/// Passes a key that is already a keyed hash through (folded to 64 bits).
#[derive(Default)]
pub struct KeyHasher(u64);

impl Hasher for KeyHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        // Only u128 keys are hashed here; this keeps the hasher total anyway.
        for &b in bytes {
            self.0 = self.0.rotate_left(8) ^ u64::from(b);
        }
    }
    fn write_u128(&mut self, v: u128) {
        self.0 = (v as u64) ^ ((v >> 64) as u64);
    }
}

struct Entry {
    facts: TokenFacts,
    until: u64,
}

pub struct TokenCache {
    map: papaya::HashMap<u128, Entry, BuildHasherDefault<KeyHasher>>,
    max_entries: usize,
    evictions: AtomicU64,
    sweeping: AtomicBool,
}

impl TokenCache {
    pub fn new(max_entries: usize) -> TokenCache {
        TokenCache {
            map: papaya::HashMap::builder()
                .capacity(max_entries.min(1 << 16))
                .hasher(BuildHasherDefault::default())
                .build(),
            max_entries,
            evictions: AtomicU64::new(0),
            sweeping: AtomicBool::new(false),
        }
    }

    /// Runs `f` on the facts for `key` if present and valid at `now`. An expired entry is never
    /// served.
    #[inline]
    pub fn with<R>(&self, key: TokenKey, now: u64, f: impl FnOnce(&TokenFacts) -> R) -> Option<R> {
        let guard = self.map.guard();
        let e = self.map.get(&key.0, &guard)?;
        (now < e.until).then(|| f(&e.facts))
    }

    pub fn insert(&self, key: TokenKey, facts: TokenFacts, until: u64, now: u64) {
        if self.map.len() >= self.max_entries {
            self.make_room(now);
        }
        self.map.pin().insert(key.0, Entry { facts, until });
    }

    fn make_room(&self, now: u64) {
        // One sweeper at a time; the others insert and may overshoot by a little meanwhile.
        if self.sweeping.swap(true, Ordering::Acquire) {
            return;
        }
        let target = self.max_entries - self.max_entries / 10;
        let map = self.map.pin();
        let before = map.len();
        map.retain(|_, e| now < e.until);
        let mut over = map.len().saturating_sub(target);
        if over > 0 {
            map.retain(|_, _| {
                if over > 0 {
                    over -= 1;
                    false
                } else {
                    true
                }
            });
        }
        let removed = before.saturating_sub(map.len()) as u64;
        self.evictions.fetch_add(removed, Ordering::Relaxed);
        self.sweeping.store(false, Ordering::Release);
    }

    pub fn len(&self) -> usize {
        self.map.len()
    }

    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    /// Entries removed to keep within the bound (expired or not).
    pub fn evictions(&self) -> u64 {
        self.evictions.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bounded() {
        let c = TokenCache::new(100);
        for i in 0..1000u128 {
            c.insert(TokenKey(i), TokenFacts::inactive(), 100, 0);
            assert!(c.len() <= 100);
        }
        assert!(
            c.with(TokenKey(999), 0, |_| ()).is_some(),
            "the newest entry is kept"
        );
        assert!(c.evictions() >= 900);
    }

    #[test]
    fn expired_entries_go_first() {
        let c = TokenCache::new(10);
        for i in 0..5u128 {
            c.insert(TokenKey(i), TokenFacts::inactive(), 50, 0);
        }
        for i in 5..10u128 {
            c.insert(TokenKey(i), TokenFacts::inactive(), 500, 0);
        }
        c.insert(TokenKey(10), TokenFacts::inactive(), 500, 100);
        assert_eq!(c.len(), 6, "the five expired ones were swept");
        for i in 5..=10u128 {
            assert!(c.with(TokenKey(i), 100, |_| ()).is_some());
        }
    }

    #[test]
    fn expired_entries_are_not_served() {
        let c = TokenCache::new(3);
        c.insert(TokenKey(1), TokenFacts::inactive(), 100, 0);
        assert!(c.with(TokenKey(1), 99, |f| f.active) == Some(false));
        assert!(c.with(TokenKey(1), 100, |_| ()).is_none());
    }
}
