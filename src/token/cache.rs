//! The token cache shared by every shard: token hash → facts, each entry with the second from which
//! it is no longer served.
//!
//! Reads are lock-free: an `ArcSwap` load (thread-local, no shared write) and a papaya lookup (an
//! epoch guard, no shared write). A hit lends the facts to a closure instead of cloning them out, so
//! shards reading one popular token do not fight over a reference count's cache line.
//! BENCHMARKS.md has the comparison that chose papaya (dashmap, quick_cache, moka, and a
//! `Mutex<HashMap>` baseline).
//!
//! The bound is kept by generations, not by deleting entries: papaya 0.2.5 livelocks in its resize
//! once deletions have filled a table with tombstones (regression test
//! `eviction_churn_does_not_livelock`: it stopped after about 260,000 inserts into a 100,000-entry
//! cache swept by `retain`). Entries go into the young generation; when it holds half of
//! `max_entries`, the old generation is dropped whole and the young one becomes old. A hit in the
//! old generation is copied into the young one, so a token in use survives rotations. Expired
//! entries are never served and leave with their generation.
//!
//! Keys are keyed SipHash outputs already, so the maps' hasher passes them through.

use std::hash::{BuildHasherDefault, Hasher};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use arc_swap::ArcSwap;

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

type Generation = papaya::HashMap<u128, Entry, BuildHasherDefault<KeyHasher>>;

fn generation(capacity: usize) -> Arc<Generation> {
    Arc::new(
        papaya::HashMap::builder()
            .capacity(capacity)
            .hasher(BuildHasherDefault::default())
            .build(),
    )
}

pub struct TokenCache {
    young: ArcSwap<Generation>,
    old: ArcSwap<Generation>,
    /// Entries a generation may hold before it is retired: half the bound, at least one.
    per_generation: usize,
    /// Serialises rotations; readers and inserts never take it.
    rotating: Mutex<()>,
    evictions: AtomicU64,
}

impl TokenCache {
    pub fn new(max_entries: usize) -> TokenCache {
        let per_generation = (max_entries / 2).max(1);
        // Presized up to a point: a small deployment should not pay for a huge bound up front.
        let initial = per_generation.min(1 << 15);
        TokenCache {
            young: ArcSwap::new(generation(initial)),
            old: ArcSwap::new(generation(0)),
            per_generation,
            rotating: Mutex::new(()),
            evictions: AtomicU64::new(0),
        }
    }

    /// Runs `f` on the facts for `key` if present and valid at `now`. An expired entry is never
    /// served.
    #[inline]
    pub fn with<R>(&self, key: TokenKey, now: u64, f: impl FnOnce(&TokenFacts) -> R) -> Option<R> {
        let young = self.young.load();
        if let Some(e) = young.pin().get(&key.0) {
            return (now < e.until).then(|| f(&e.facts));
        }
        let old = self.old.load();
        let map = old.pin();
        let e = map.get(&key.0)?;
        if now >= e.until {
            return None;
        }
        let r = f(&e.facts);
        // In use: carry it into the young generation so the next rotation keeps it.
        self.insert(key, e.facts.clone(), e.until, now);
        Some(r)
    }

    pub fn insert(&self, key: TokenKey, facts: TokenFacts, until: u64, _now: u64) {
        let young = self.young.load();
        young.pin().insert(key.0, Entry { facts, until });
        if young.len() >= self.per_generation {
            self.rotate(&young);
        }
    }

    /// Retires the old generation and makes `full` (the young one an insert found full) old.
    fn rotate(&self, full: &Arc<Generation>) {
        let _one_at_a_time = self.rotating.lock().unwrap_or_else(|p| p.into_inner());
        if !Arc::ptr_eq(&self.young.load(), full) {
            // Another insert rotated while this one waited.
            return;
        }
        self.young
            .store(generation(self.per_generation.min(1 << 15)));
        let retired = self.old.swap(full.clone());
        self.evictions
            .fetch_add(retired.len() as u64, Ordering::Relaxed);
        // `retired` is freed when the last reader holding it lets go.
    }

    /// Entries held, across both generations (a token carried forward may count twice).
    pub fn len(&self) -> usize {
        self.young.load().len() + self.old.load().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Entries dropped to keep within the bound (expired or not).
    pub fn evictions(&self) -> u64 {
        self.evictions.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn facts() -> TokenFacts {
        TokenFacts::inactive()
    }

    #[test]
    fn bounded() {
        let c = TokenCache::new(100);
        for i in 0..1000u128 {
            c.insert(TokenKey(i), facts(), 100, 0);
            assert!(c.len() <= 100, "{} entries", c.len());
        }
        assert!(
            c.with(TokenKey(999), 0, |_| ()).is_some(),
            "the newest entry is kept"
        );
        assert!(c.evictions() >= 900 - 100);
    }

    #[test]
    fn tokens_in_use_survive_rotations() {
        let c = TokenCache::new(100);
        c.insert(TokenKey(u128::MAX), facts(), 100, 0);
        for i in 0..10_000u128 {
            c.insert(TokenKey(i), facts(), 100, 0);
            if i % 10 == 0 {
                assert!(
                    c.with(TokenKey(u128::MAX), 0, |_| ()).is_some(),
                    "lost at {i}"
                );
            }
        }
    }

    #[test]
    fn expired_entries_are_not_served() {
        let c = TokenCache::new(3);
        c.insert(TokenKey(1), facts(), 100, 0);
        assert!(c.with(TokenKey(1), 99, |f| f.active) == Some(false));
        assert!(c.with(TokenKey(1), 100, |_| ()).is_none());
    }

    #[test]
    fn expired_entries_in_the_old_generation_are_not_served() {
        let c = TokenCache::new(4);
        c.insert(TokenKey(1), facts(), 100, 0);
        c.insert(TokenKey(2), facts(), 100, 0);
        // The young generation (two entries) is now old.
        assert!(c.with(TokenKey(1), 99, |_| ()).is_some());
        assert!(c.with(TokenKey(2), 100, |_| ()).is_none());
    }

    #[test]
    fn eviction_churn_does_not_livelock() {
        // With papaya swept by `retain`, a 100,000-entry cache stopped answering (100% CPU in the
        // resize) after about 260,000 distinct inserts, which an all-miss load reaches in seconds.
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let c = TokenCache::new(100_000);
            for i in 0..1_000_000u128 {
                let k = i.wrapping_mul(0x9E37_79B9_7F4A_7C15_F39C_C060_5CED_C834);
                c.insert(TokenKey(k), facts(), 1000, 0);
            }
            let _ = tx.send(c.len());
        });
        let len = rx
            .recv_timeout(std::time::Duration::from_secs(120))
            .expect("1,000,000 inserts finish");
        assert!(len <= 100_000);
    }
}
