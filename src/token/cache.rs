//! The token cache shared by every shard: token hash → facts, each entry with the second from which
//! it is no longer served.
//!
//! Reads are lock-free: each generation is loaded from an `ArcSwap` (a thread-local debt slot, no
//! shared write) and looked up in papaya under an epoch guard (no shared write).
//! [`TokenCache::with`] does that per lookup; a shard does it once per batch of messages through a
//! [`Snapshot`], since each load and pin costs locked instructions (on thread-local lines, but
//! still tens of cycles). A hit lends the facts to a closure instead of cloning them out, so
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

/// The cache's two generations held for a run of lookups. Per lookup, loading each generation
/// from its `ArcSwap` writes a debt slot and pays it back with a locked instruction, and pinning a
/// map enters and leaves its epoch with another (an `xchg`); perf put those locked instructions
/// among the hottest of the shard's own code under cached load. A snapshot loads both once and
/// [`Snapshot::pin`] pins them once. It holds `ArcSwap` guards, not `Arc`s: a guard takes one of
/// the thread's debt slots, where cloning the `Arc` would write a reference count every shard
/// shares, twice a batch.
///
/// A rotation while a snapshot is held is seen by the next one. Until then the snapshot reads the
/// generations as they were: a token inserted after the rotation is missed (looked up at the
/// source again), and a hit in what was young and is now old is not carried into the new young
/// generation (so it is retired one rotation early if it is not looked up again meanwhile).
/// Neither serves anything expired or wrong.
pub struct Snapshot {
    young: arc_swap::Guard<Arc<Generation>>,
    old: arc_swap::Guard<Arc<Generation>>,
}

impl Snapshot {
    /// Pins both generations. Holding the pin delays the freeing of entries removed meanwhile,
    /// so it is held for a batch, never across an await.
    #[inline]
    pub fn pin(&self) -> Pinned<'_> {
        Pinned {
            young: &self.young,
            young_guard: self.young.guard(),
            old: &self.old,
            old_guard: self.old.guard(),
        }
    }
}

/// A [`Snapshot`]'s generations, pinned: what [`TokenCache::with_pinned`] reads through.
pub struct Pinned<'s> {
    young: &'s Generation,
    young_guard: papaya::LocalGuard<'s>,
    old: &'s Generation,
    old_guard: papaya::LocalGuard<'s>,
}

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
        self.with_pinned(&self.snapshot().pin(), key, now, f)
    }

    /// Both generations as they are now, for a run of lookups (a shard's batch) that should not
    /// each pay for loading and pinning them: see [`Snapshot`].
    #[inline]
    pub fn snapshot(&self) -> Snapshot {
        Snapshot {
            young: self.young.load(),
            old: self.old.load(),
        }
    }

    /// [`TokenCache::with`] through generations loaded and pinned once for many lookups.
    #[inline]
    pub fn with_pinned<R>(
        &self,
        pinned: &Pinned<'_>,
        key: TokenKey,
        now: u64,
        f: impl FnOnce(&TokenFacts) -> R,
    ) -> Option<R> {
        if let Some(e) = pinned.young.get(&key.0, &pinned.young_guard) {
            return (now < e.until).then(|| f(&e.facts));
        }
        let e = pinned.old.get(&key.0, &pinned.old_guard)?;
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
    fn a_snapshot_reads_the_generations_as_they_were_when_taken() {
        // Three entries a generation.
        let c = TokenCache::new(6);
        c.insert(TokenKey(1), facts(), 100, 0);
        let snap = c.snapshot();
        {
            let pinned = snap.pin();
            // Inserted after the snapshot, into the generation it holds: seen.
            c.insert(TokenKey(2), facts(), 100, 0);
            for key in [1, 2] {
                assert!(c.with_pinned(&pinned, TokenKey(key), 99, |_| ()).is_some());
                assert!(c.with_pinned(&pinned, TokenKey(key), 100, |_| ()).is_none());
            }
            assert!(c.with_pinned(&pinned, TokenKey(3), 0, |_| ()).is_none());
        }
        // 3 fills the young generation, which rotates: 1, 2 and 3 are old, and 4 goes into a
        // young generation the held snapshot does not have. It still serves what it holds (as
        // young, so without carrying it forward) and misses 4 (a lookup at the source, as
        // documented); a new snapshot finds both, and its hit in the old generation carries 1
        // forward.
        c.insert(TokenKey(3), facts(), 100, 0);
        c.insert(TokenKey(4), facts(), 100, 0);
        assert!(c.with_pinned(&snap.pin(), TokenKey(1), 0, |_| ()).is_some());
        assert!(c.with_pinned(&snap.pin(), TokenKey(3), 0, |_| ()).is_some());
        assert!(
            c.young.load().pin().get(&3).is_none(),
            "not carried by the old snapshot"
        );
        assert!(c.with_pinned(&snap.pin(), TokenKey(4), 0, |_| ()).is_none());
        drop(snap);
        let fresh = c.snapshot();
        assert!(c
            .with_pinned(&fresh.pin(), TokenKey(4), 0, |_| ())
            .is_some());
        assert!(c
            .with_pinned(&fresh.pin(), TokenKey(1), 0, |_| ())
            .is_some());
        let young = c.young.load();
        assert!(young.pin().get(&1).is_some(), "carried forward");
        assert!(young.pin().get(&2).is_none(), "not in use, not carried");
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
