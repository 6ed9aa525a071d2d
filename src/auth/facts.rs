//! What a token source says about a token, and how a source can fail. Plain values: no token text is
//! kept here, so these types can be logged and cached freely.

/// The claims sipward decides on (RFC 7662 section 2.2 names).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct TokenFacts {
    pub active: bool,
    /// The identity to compare with the AOR; `None` when the source gave none.
    pub username: Option<Box<str>>,
    /// Expiry, seconds since the Unix epoch.
    pub exp: Option<u64>,
    /// Not-before, seconds since the Unix epoch.
    pub nbf: Option<u64>,
    /// Space-separated scopes.
    pub scope: Option<Box<str>>,
    pub aud: Vec<Box<str>>,
}

impl TokenFacts {
    /// The answer for a token the source does not know or no longer honours.
    pub fn inactive() -> TokenFacts {
        TokenFacts::default()
    }
}

/// Why a token source gave no answer about a token. Never cached.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum SourceError {
    #[error("token source unreachable")]
    Unreachable,
    #[error("token source timed out")]
    Timeout,
    #[error("token source overloaded")]
    Overloaded,
    #[error("token source answered HTTP {0}")]
    BadStatus(u16),
    #[error("token source answered an unusable body: {0}")]
    BadBody(&'static str),
}
