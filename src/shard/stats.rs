//! Per-shard counters. Each shard writes only its own (relaxed stores, no cross-core contention);
//! readers sum over shards when they look.

use std::sync::atomic::{AtomicU64, Ordering};

use crate::auth::DropReason;

#[derive(Default, Debug)]
pub struct ShardStats {
    pub received: AtomicU64,
    pub replied: AtomicU64,
    pub silent: AtomicU64,
    pub dropped_unparseable: AtomicU64,
    pub dropped_response: AtomicU64,
    pub dropped_no_via: AtomicU64,
    pub dropped_bad_ack: AtomicU64,
    pub dropped_oversize: AtomicU64,
    pub dropped_overloaded: AtomicU64,
    /// Forward mode: responses whose top Via is not sipward's.
    pub dropped_not_our_via: AtomicU64,
    /// Forward mode: messages with no usable destination (bad Via, forged or closed flow).
    pub dropped_unroutable: AtomicU64,
    /// Forward mode: messages relayed.
    pub relayed: AtomicU64,
    pub tcp_open: AtomicU64,
    pub tcp_refused: AtomicU64,
    pub token_lookups: AtomicU64,
}

#[inline]
pub fn bump(c: &AtomicU64) {
    // Single writer per shard: a load and a store avoid the locked read-modify-write.
    c.store(c.load(Ordering::Relaxed) + 1, Ordering::Relaxed);
}

impl ShardStats {
    pub fn dropped(&self, why: DropReason) {
        bump(match why {
            DropReason::Unparseable(_) => &self.dropped_unparseable,
            DropReason::UnexpectedResponse => &self.dropped_response,
            DropReason::NoVia => &self.dropped_no_via,
            DropReason::BadAck => &self.dropped_bad_ack,
            DropReason::NotOurVia => &self.dropped_not_our_via,
            DropReason::Unroutable => &self.dropped_unroutable,
        });
    }
}
