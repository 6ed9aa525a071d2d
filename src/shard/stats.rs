//! Per-shard counters. Each shard writes only its own (relaxed load and store, no locked
//! read-modify-write, no cache line written by two cores); the admin server's scrape sums over shards
//! when it looks (see `crate::admin`). Nothing here is shared between shards on the hot path.
//!
//! Requests are counted by method and outcome in a fixed table: the methods a SIP edge sees, and one
//! bucket for the rest, so that a peer sending made-up methods cannot grow the label set.

use std::sync::atomic::{AtomicU64, Ordering};

use crate::auth::{DropReason, Invalid, Outcome};
use crate::sip::Method;

/// Method labels; the last one takes every method not listed.
pub const METHODS: [&str; 15] = [
    "REGISTER",
    "INVITE",
    "ACK",
    "BYE",
    "CANCEL",
    "OPTIONS",
    "MESSAGE",
    "SUBSCRIBE",
    "NOTIFY",
    "REFER",
    "INFO",
    "UPDATE",
    "PRACK",
    "PUBLISH",
    "other",
];

/// Outcome labels: [`Outcome::label`]'s, then `not_required` (answered without a token check) and
/// `silent` (nothing sent by design: an ACK).
pub const OUTCOMES: [&str; 15] = [
    "accept",
    "no_credentials",
    "malformed",
    "inactive",
    "expired",
    "not_yet_valid",
    "wrong_audience",
    "user_mismatch",
    "insufficient_scope",
    "source_unavailable",
    "source_rejected",
    "source_failed",
    "no_source",
    "not_required",
    "silent",
];

/// Drop reason labels, in the order of [`ShardStats::dropped_by_reason`].
pub const DROP_REASONS: [&str; 8] = [
    "unparseable",
    "unexpected_response",
    "no_via",
    "bad_ack",
    "oversize",
    "overloaded",
    "not_our_via",
    "unroutable",
];

/// Response codes counted one by one: 100 to 699.
const CODES: usize = 600;

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
    /// A gauge: connections open on this shard now.
    pub tcp_open: AtomicU64,
    pub tcp_refused: AtomicU64,
    pub token_lookups: AtomicU64,
    pub cache_hits: AtomicU64,
    pub cache_misses: AtomicU64,
    /// `[method][outcome]`, indexed as [`METHODS`] and [`OUTCOMES`].
    requests: [[AtomicU64; OUTCOMES.len()]; METHODS.len()],
    /// Responses by status code, `code - 100`.
    responses: Box<[AtomicU64; CODES]>,
}

impl Default for ShardStats {
    fn default() -> ShardStats {
        ShardStats {
            received: AtomicU64::new(0),
            replied: AtomicU64::new(0),
            silent: AtomicU64::new(0),
            dropped_unparseable: AtomicU64::new(0),
            dropped_response: AtomicU64::new(0),
            dropped_no_via: AtomicU64::new(0),
            dropped_bad_ack: AtomicU64::new(0),
            dropped_oversize: AtomicU64::new(0),
            dropped_overloaded: AtomicU64::new(0),
            dropped_not_our_via: AtomicU64::new(0),
            dropped_unroutable: AtomicU64::new(0),
            relayed: AtomicU64::new(0),
            tcp_open: AtomicU64::new(0),
            tcp_refused: AtomicU64::new(0),
            token_lookups: AtomicU64::new(0),
            cache_hits: AtomicU64::new(0),
            cache_misses: AtomicU64::new(0),
            requests: std::array::from_fn(|_| std::array::from_fn(|_| AtomicU64::new(0))),
            responses: Box::new(std::array::from_fn(|_| AtomicU64::new(0))),
        }
    }
}

impl std::fmt::Debug for ShardStats {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ShardStats")
            .field("received", &self.received)
            .field("replied", &self.replied)
            .finish_non_exhaustive()
    }
}

#[inline]
pub fn bump(c: &AtomicU64) {
    // Single writer per shard: a load and a store avoid the locked read-modify-write.
    c.store(c.load(Ordering::Relaxed) + 1, Ordering::Relaxed);
}

/// The [`METHODS`] index of the request line at the start of `data` (a response or garbage counts
/// as "other"; such messages are dropped before they are counted as requests anyway): the name
/// read as the scanner reads it ([`Method::parse`], a `match` that compiles to a switch on the
/// length and one comparison), then [`method_slot`]. For messages the engine did not parse.
#[inline]
pub fn method_index(data: &[u8]) -> usize {
    let end = data.iter().take(16).position(|&b| b == b' ').unwrap_or(0);
    method_slot(Method::parse(data.get(..end).unwrap_or_default()))
}

/// The [`METHODS`] index of a method the scanner parsed already: where the engine looked at the
/// request, this replaces reading the request line again with [`method_index`] (166 instructions
/// per answer under callgrind, `loadtest/instructions_per_answer.sh`, against a jump table).
#[inline]
pub fn method_slot(method: Method) -> usize {
    match method {
        Method::Register => 0,
        Method::Invite => 1,
        Method::Ack => 2,
        Method::Bye => 3,
        Method::Cancel => 4,
        Method::Options => 5,
        Method::Message => 6,
        Method::Subscribe => 7,
        Method::Notify => 8,
        Method::Refer => 9,
        Method::Info => 10,
        Method::Update => 11,
        Method::Prack => 12,
        Method::Publish => 13,
        Method::Other => METHODS.len() - 1,
    }
}

/// The [`OUTCOMES`] index of an outcome; `None` is a request that needed no token.
pub fn outcome_index(outcome: Option<Outcome>) -> usize {
    match outcome {
        Some(Outcome::Accept) => 0,
        Some(Outcome::NoCredentials) => 1,
        Some(Outcome::Malformed(_)) => 2,
        Some(Outcome::Invalid(Invalid::Inactive)) => 3,
        Some(Outcome::Invalid(Invalid::Expired)) => 4,
        Some(Outcome::Invalid(Invalid::NotYetValid)) => 5,
        Some(Outcome::Invalid(Invalid::WrongAudience)) => 6,
        Some(Outcome::UserMismatch) => 7,
        Some(Outcome::InsufficientScope) => 8,
        Some(Outcome::SourceUnavailable(_)) => 9,
        Some(Outcome::SourceRejected(_)) => 10,
        Some(Outcome::SourceFailed(_)) => 11,
        Some(Outcome::NoSource) => 12,
        None => 13,
    }
}

/// Index of the `silent` outcome.
pub const SILENT: usize = 14;

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

    /// Counts one request of method `method` (a [`METHODS`] index) that ended as `outcome` (an
    /// [`OUTCOMES`] index).
    #[inline]
    pub fn request(&self, method: usize, outcome: usize) {
        if let Some(c) = self.requests.get(method).and_then(|row| row.get(outcome)) {
            bump(c);
        }
    }

    /// Counts one response sent with status `code`.
    #[inline]
    pub fn response(&self, code: u16) {
        if let Some(c) = (code as usize)
            .checked_sub(100)
            .and_then(|i| self.responses.get(i))
        {
            bump(c);
        }
    }

    /// Requests so far by method and outcome index.
    pub fn requests(&self, method: usize, outcome: usize) -> u64 {
        self.requests
            .get(method)
            .and_then(|row| row.get(outcome))
            .map_or(0, |c| c.load(Ordering::Relaxed))
    }

    /// Responses so far with status `code`.
    pub fn responses(&self, code: u16) -> u64 {
        (code as usize)
            .checked_sub(100)
            .and_then(|i| self.responses.get(i))
            .map_or(0, |c| c.load(Ordering::Relaxed))
    }

    /// Drops so far, in the order of [`DROP_REASONS`].
    pub fn dropped_by_reason(&self) -> [u64; DROP_REASONS.len()] {
        [
            &self.dropped_unparseable,
            &self.dropped_response,
            &self.dropped_no_via,
            &self.dropped_bad_ack,
            &self.dropped_oversize,
            &self.dropped_overloaded,
            &self.dropped_not_our_via,
            &self.dropped_unroutable,
        ]
        .map(|c| c.load(Ordering::Relaxed))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn methods_are_bucketed() {
        assert_eq!(
            METHODS[method_index(b"REGISTER sip:x SIP/2.0\r\n")],
            "REGISTER"
        );
        assert_eq!(METHODS[method_index(b"INVITE sip:x SIP/2.0")], "INVITE");
        assert_eq!(METHODS[method_index(b"FOO sip:x SIP/2.0")], "other");
        assert_eq!(METHODS[method_index(b"")], "other");
        assert_eq!(METHODS[method_index(b"REGISTERX sip:x")], "other");
        // Every label but the last is found where it stands in METHODS, case-sensitively.
        for (i, name) in METHODS[..METHODS.len() - 1].iter().enumerate() {
            assert_eq!(method_index(format!("{name} sip:x SIP/2.0").as_bytes()), i);
            let lower = name.to_ascii_lowercase();
            assert_eq!(
                method_index(format!("{lower} sip:x").as_bytes()),
                METHODS.len() - 1
            );
        }
    }

    #[test]
    fn method_slot_agrees_with_reading_the_request_line() {
        for name in METHODS.iter().chain(&["FOO", "register", "REGISTERX"]) {
            let line = format!("{name} sip:x SIP/2.0");
            assert_eq!(
                method_slot(Method::parse(name.as_bytes())),
                method_index(line.as_bytes()),
                "{name}"
            );
        }
    }

    #[test]
    fn outcome_labels_match_the_engine() {
        use crate::auth::SourceError;
        for o in [
            Outcome::Accept,
            Outcome::NoCredentials,
            Outcome::Malformed("x"),
            Outcome::Invalid(Invalid::Inactive),
            Outcome::Invalid(Invalid::Expired),
            Outcome::Invalid(Invalid::NotYetValid),
            Outcome::Invalid(Invalid::WrongAudience),
            Outcome::UserMismatch,
            Outcome::InsufficientScope,
            Outcome::SourceUnavailable(SourceError::Timeout),
            Outcome::SourceRejected(SourceError::BadStatus(400)),
            Outcome::SourceFailed(500),
            Outcome::NoSource,
        ] {
            assert_eq!(OUTCOMES[outcome_index(Some(o))], o.label());
        }
    }

    #[test]
    fn codes_outside_the_range_are_ignored() {
        let s = ShardStats::default();
        s.response(200);
        s.response(200);
        s.response(99);
        s.response(700);
        assert_eq!(s.responses(200), 2);
        assert_eq!(s.responses(700), 0);
        s.request(0, 0);
        s.request(99, 0);
        assert_eq!(s.requests(0, 0), 1);
    }
}
