//! Authentication decisions, sans-io: which requests need a token, what the credentials are, what a
//! token's facts mean for a request, and which response each outcome gets under each profile.
//!
//! Nothing here performs I/O or reads a clock: the time is an argument, token facts arrive as plain
//! values. [`engine::Engine`] strings the steps together over one message and writes the response
//! bytes; the caller (a shard, a test, a fuzz target) supplies the token lookup between its two
//! halves. Token sources, caching and HTTP live in [`crate::token`].

pub mod credentials;
pub mod engine;
pub mod facts;
pub mod policy;
pub mod verdict;

pub use credentials::{bearer, BearerToken, Credentials};
pub use engine::{Begin, Done, DropReason, Engine, Pending, Ready};
pub use facts::{SourceError, TokenFacts};
pub use policy::{assess, assess_checked, ChallengeMode, Need, Policy, Profile};
pub use verdict::{judge, response_for, Invalid, Lookup, Outcome, ResponseSpec};
