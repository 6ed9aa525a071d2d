//! From token facts to an outcome, and from an outcome to a response under each profile.
//!
//! The table (issue #2, seeds 000 and 002):
//!
//! | outcome | `rfc8898` | `oracle` |
//! |---|---|---|
//! | no Bearer credentials | 401 challenge | 401 challenge |
//! | malformed credentials | 400 | 403 |
//! | inactive / unknown / expired / not yet valid | 401 `invalid_token` | 403 |
//! | username ≠ AOR | 401 `invalid_request` | 403 |
//! | scope missing | 403 `insufficient_scope` | 403 |
//! | source unreachable / timeout / overloaded | 503 + Retry-After | 500 |
//! | source 4xx or unusable body | 500 | 403 |
//! | source 5xx | 503 + Retry-After | 403 |
//! | Bearer present, no source | 500 | 500 |

use crate::sip::Aor;

use super::facts::{SourceError, TokenFacts};
use super::policy::{ChallengeMode, Policy, Profile};

/// What the token lookup produced.
#[derive(Debug, Clone, Copy)]
pub enum Lookup<'f> {
    Found(&'f TokenFacts),
    Failed(SourceError),
    /// No token source is configured.
    NoSource,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Invalid {
    Inactive,
    Expired,
    NotYetValid,
    /// The token is not meant for this resource server (its `aud` lacks ours).
    WrongAudience,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Accept,
    NoCredentials,
    Malformed(&'static str),
    Invalid(Invalid),
    UserMismatch,
    InsufficientScope,
    /// Unreachable, timed out or overloaded.
    SourceUnavailable(SourceError),
    /// Answered a 4xx (or another non-success status) or a body that cannot be used.
    SourceRejected(SourceError),
    /// Answered a 5xx.
    SourceFailed(u16),
    NoSource,
}

impl Outcome {
    /// A short stable name, for logs and metrics labels.
    pub fn label(&self) -> &'static str {
        match self {
            Outcome::Accept => "accept",
            Outcome::NoCredentials => "no_credentials",
            Outcome::Malformed(_) => "malformed",
            Outcome::Invalid(Invalid::Inactive) => "inactive",
            Outcome::Invalid(Invalid::Expired) => "expired",
            Outcome::Invalid(Invalid::NotYetValid) => "not_yet_valid",
            Outcome::Invalid(Invalid::WrongAudience) => "wrong_audience",
            Outcome::UserMismatch => "user_mismatch",
            Outcome::InsufficientScope => "insufficient_scope",
            Outcome::SourceUnavailable(_) => "source_unavailable",
            Outcome::SourceRejected(_) => "source_rejected",
            Outcome::SourceFailed(_) => "source_failed",
            Outcome::NoSource => "no_source",
        }
    }
}

/// Whether every space-separated scope of `required` is among those of `granted`.
fn has_scopes(granted: &str, required: &str) -> bool {
    required
        .split_ascii_whitespace()
        .all(|r| granted.split_ascii_whitespace().any(|g| g == r))
}

/// Judges a token lookup for the request whose address of record is `aor`, at `now` (Unix seconds).
pub fn judge(policy: &Policy, lookup: Lookup<'_>, aor: &Aor<'_>, now: u64) -> Outcome {
    let facts = match lookup {
        Lookup::Found(f) => f,
        Lookup::NoSource => return Outcome::NoSource,
        Lookup::Failed(e) => {
            return match e {
                SourceError::Unreachable | SourceError::Timeout | SourceError::Overloaded => {
                    Outcome::SourceUnavailable(e)
                }
                SourceError::BadStatus(code) if (500..=599).contains(&code) => {
                    Outcome::SourceFailed(code)
                }
                SourceError::BadStatus(_) | SourceError::BadBody(_) => Outcome::SourceRejected(e),
            }
        }
    };
    if !facts.active {
        return Outcome::Invalid(Invalid::Inactive);
    }
    let skew = policy.clock_skew_s;
    // RFC 7519 4.1.4: the token must not be accepted on or after its expiry.
    if facts.exp.is_some_and(|exp| now >= exp.saturating_add(skew)) {
        return Outcome::Invalid(Invalid::Expired);
    }
    if facts.nbf.is_some_and(|nbf| now.saturating_add(skew) < nbf) {
        return Outcome::Invalid(Invalid::NotYetValid);
    }
    if let Some(aud) = &policy.audience {
        if !facts.aud.iter().any(|a| a == aud) {
            return Outcome::Invalid(Invalid::WrongAudience);
        }
    }
    match (&facts.username, policy.profile) {
        (Some(user), _) if !aor.matches_username(user) => return Outcome::UserMismatch,
        // No identity to compare: RFC 8898 lets the token stand alone; Oracle requires the user ID.
        (None, Profile::Oracle) => return Outcome::UserMismatch,
        _ => {}
    }
    if let Some(required) = &policy.scope {
        if !has_scopes(facts.scope.as_deref().unwrap_or(""), required) {
            return Outcome::InsufficientScope;
        }
    }
    Outcome::Accept
}

/// A response to send for a rejected request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ResponseSpec {
    pub code: u16,
    pub reason: &'static str,
    /// Send a Bearer challenge header (`WWW-Authenticate` or `Proxy-Authenticate`).
    pub challenge: bool,
    /// The challenge's `error` parameter.
    pub error: Option<&'static str>,
    /// Send `Retry-After`.
    pub retry_after: bool,
}

impl ResponseSpec {
    const fn plain(code: u16, reason: &'static str) -> ResponseSpec {
        ResponseSpec {
            code,
            reason,
            challenge: false,
            error: None,
            retry_after: false,
        }
    }
}

/// The response for a non-accepting `outcome` (for [`Outcome::Accept`] the caller answers or relays).
pub fn response_for(policy: &Policy, outcome: &Outcome) -> ResponseSpec {
    let (unauth, unauth_reason) = match policy.challenge {
        ChallengeMode::Www => (401, "Unauthorized"),
        ChallengeMode::Proxy => (407, "Proxy Authentication Required"),
    };
    let challenge = |error| ResponseSpec {
        code: unauth,
        reason: unauth_reason,
        challenge: true,
        error,
        retry_after: false,
    };
    const FORBIDDEN: ResponseSpec = ResponseSpec::plain(403, "Forbidden");
    const SERVER_ERROR: ResponseSpec = ResponseSpec::plain(500, "Server Internal Error");
    const UNAVAILABLE: ResponseSpec = ResponseSpec {
        retry_after: true,
        ..ResponseSpec::plain(503, "Service Unavailable")
    };
    match (policy.profile, *outcome) {
        (_, Outcome::Accept) => ResponseSpec::plain(200, "OK"),
        (_, Outcome::NoCredentials) => challenge(None),
        (_, Outcome::NoSource) => SERVER_ERROR,
        (Profile::Rfc8898, Outcome::Malformed(why)) => ResponseSpec::plain(400, why),
        (Profile::Rfc8898, Outcome::Invalid(_)) => challenge(Some("invalid_token")),
        (Profile::Rfc8898, Outcome::UserMismatch) => challenge(Some("invalid_request")),
        (Profile::Rfc8898, Outcome::InsufficientScope) => ResponseSpec {
            challenge: true,
            error: Some("insufficient_scope"),
            ..FORBIDDEN
        },
        (Profile::Rfc8898, Outcome::SourceUnavailable(_) | Outcome::SourceFailed(_)) => UNAVAILABLE,
        (Profile::Rfc8898, Outcome::SourceRejected(_)) => SERVER_ERROR,
        (Profile::Oracle, Outcome::SourceUnavailable(_)) => SERVER_ERROR,
        (
            Profile::Oracle,
            Outcome::Malformed(_)
            | Outcome::Invalid(_)
            | Outcome::UserMismatch
            | Outcome::InsufficientScope
            | Outcome::SourceRejected(_)
            | Outcome::SourceFailed(_),
        ) => FORBIDDEN,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: u64 = 1_800_000_000;

    fn facts(user: Option<&str>) -> TokenFacts {
        TokenFacts {
            active: true,
            username: user.map(Into::into),
            exp: Some(NOW + 60),
            nbf: None,
            scope: Some("sip openid".into()),
            aud: vec![],
        }
    }

    fn alice() -> Aor<'static> {
        Aor::from_header(b"<sip:alice@example.com>").unwrap()
    }

    fn judged(policy: &Policy, f: &TokenFacts) -> Outcome {
        judge(policy, Lookup::Found(f), &alice(), NOW)
    }

    #[test]
    fn active_matching_token_is_accepted() {
        let p = Policy::default();
        assert_eq!(judged(&p, &facts(Some("alice"))), Outcome::Accept);
        assert_eq!(
            judged(&p, &facts(Some("alice@EXAMPLE.com"))),
            Outcome::Accept
        );
    }

    #[test]
    fn inactive_expired_not_yet_valid() {
        let p = Policy::default();
        assert_eq!(
            judged(&p, &TokenFacts::inactive()),
            Outcome::Invalid(Invalid::Inactive)
        );
        let expired = TokenFacts {
            exp: Some(NOW),
            ..facts(Some("alice"))
        };
        assert_eq!(judged(&p, &expired), Outcome::Invalid(Invalid::Expired));
        let early = TokenFacts {
            nbf: Some(NOW + 1),
            ..facts(Some("alice"))
        };
        assert_eq!(judged(&p, &early), Outcome::Invalid(Invalid::NotYetValid));
        let skewed = Policy {
            clock_skew_s: 5,
            ..Policy::default()
        };
        assert_eq!(judged(&skewed, &expired), Outcome::Accept);
        assert_eq!(judged(&skewed, &early), Outcome::Accept);
    }

    #[test]
    fn audience_must_be_ours_when_configured() {
        let p = Policy {
            audience: Some("sipward".into()),
            ..Policy::default()
        };
        let mut f = facts(Some("alice"));
        assert_eq!(judged(&p, &f), Outcome::Invalid(Invalid::WrongAudience));
        f.aud = vec!["other".into(), "sipward".into()];
        assert_eq!(judged(&p, &f), Outcome::Accept);
        assert_eq!(
            judged(&Policy::default(), &facts(Some("alice"))),
            Outcome::Accept
        );
        assert_eq!(
            response_for(&p, &Outcome::Invalid(Invalid::WrongAudience)).error,
            Some("invalid_token")
        );
    }

    #[test]
    fn username_must_match_the_aor() {
        let p = Policy::default();
        assert_eq!(judged(&p, &facts(Some("bob"))), Outcome::UserMismatch);
        assert_eq!(
            judged(&p, &facts(Some("alice@example.org"))),
            Outcome::UserMismatch
        );
    }

    #[test]
    fn missing_username_is_accepted_by_rfc8898_and_refused_by_oracle() {
        assert_eq!(judged(&Policy::default(), &facts(None)), Outcome::Accept);
        let oracle = Policy {
            profile: Profile::Oracle,
            ..Policy::default()
        };
        assert_eq!(judged(&oracle, &facts(None)), Outcome::UserMismatch);
    }

    #[test]
    fn required_scopes() {
        let p = Policy {
            scope: Some("sip".into()),
            ..Policy::default()
        };
        assert_eq!(judged(&p, &facts(Some("alice"))), Outcome::Accept);
        let p = Policy {
            scope: Some("sip admin".into()),
            ..Policy::default()
        };
        assert_eq!(
            judged(&p, &facts(Some("alice"))),
            Outcome::InsufficientScope
        );
        let no_scope = TokenFacts {
            scope: None,
            ..facts(Some("alice"))
        };
        assert_eq!(judged(&p, &no_scope), Outcome::InsufficientScope);
    }

    #[test]
    fn source_failures() {
        let p = Policy::default();
        let fail = |e| judge(&p, Lookup::Failed(e), &alice(), NOW);
        assert_eq!(
            fail(SourceError::Timeout),
            Outcome::SourceUnavailable(SourceError::Timeout)
        );
        assert_eq!(
            fail(SourceError::BadStatus(502)),
            Outcome::SourceFailed(502)
        );
        assert_eq!(
            fail(SourceError::BadStatus(404)),
            Outcome::SourceRejected(SourceError::BadStatus(404))
        );
        assert_eq!(
            fail(SourceError::BadBody("x")),
            Outcome::SourceRejected(SourceError::BadBody("x"))
        );
        assert_eq!(
            judge(&p, Lookup::NoSource, &alice(), NOW),
            Outcome::NoSource
        );
    }

    /// (outcome, rfc8898 (code, error, retry-after), oracle (code, error, retry-after))
    type Row = (
        Outcome,
        (u16, Option<&'static str>, bool),
        (u16, Option<&'static str>, bool),
    );

    /// Every row of the profile table, both columns.
    #[test]
    fn profile_table() {
        let rfc = Policy::default();
        let ora = Policy {
            profile: Profile::Oracle,
            ..Policy::default()
        };
        let rows: &[Row] = &[
            (
                Outcome::NoCredentials,
                (401, None, false),
                (401, None, false),
            ),
            (
                Outcome::Malformed("Malformed Bearer token"),
                (400, None, false),
                (403, None, false),
            ),
            (
                Outcome::Invalid(Invalid::Inactive),
                (401, Some("invalid_token"), false),
                (403, None, false),
            ),
            (
                Outcome::Invalid(Invalid::Expired),
                (401, Some("invalid_token"), false),
                (403, None, false),
            ),
            (
                Outcome::Invalid(Invalid::NotYetValid),
                (401, Some("invalid_token"), false),
                (403, None, false),
            ),
            (
                Outcome::UserMismatch,
                (401, Some("invalid_request"), false),
                (403, None, false),
            ),
            (
                Outcome::InsufficientScope,
                (403, Some("insufficient_scope"), false),
                (403, None, false),
            ),
            (
                Outcome::SourceUnavailable(SourceError::Unreachable),
                (503, None, true),
                (500, None, false),
            ),
            (
                Outcome::SourceUnavailable(SourceError::Timeout),
                (503, None, true),
                (500, None, false),
            ),
            (
                Outcome::SourceUnavailable(SourceError::Overloaded),
                (503, None, true),
                (500, None, false),
            ),
            (
                Outcome::SourceRejected(SourceError::BadStatus(400)),
                (500, None, false),
                (403, None, false),
            ),
            (
                Outcome::SourceRejected(SourceError::BadBody("x")),
                (500, None, false),
                (403, None, false),
            ),
            (
                Outcome::SourceFailed(503),
                (503, None, true),
                (403, None, false),
            ),
            (Outcome::NoSource, (500, None, false), (500, None, false)),
        ];
        for (outcome, r, o) in rows {
            let got = response_for(&rfc, outcome);
            assert_eq!(
                (got.code, got.error, got.retry_after),
                *r,
                "rfc8898 {outcome:?}"
            );
            let got = response_for(&ora, outcome);
            assert_eq!(
                (got.code, got.error, got.retry_after),
                *o,
                "oracle {outcome:?}"
            );
        }
        assert!(response_for(&rfc, &Outcome::NoCredentials).challenge);
        assert!(response_for(&ora, &Outcome::NoCredentials).challenge);
        assert!(response_for(&rfc, &Outcome::InsufficientScope).challenge);
        assert!(!response_for(&ora, &Outcome::Invalid(Invalid::Inactive)).challenge);
    }

    #[test]
    fn proxy_challenge_is_407() {
        let p = Policy {
            challenge: ChallengeMode::Proxy,
            ..Policy::default()
        };
        assert_eq!(response_for(&p, &Outcome::NoCredentials).code, 407);
        assert_eq!(
            response_for(&p, &Outcome::Invalid(Invalid::Inactive)).code,
            407
        );
        assert_eq!(response_for(&p, &Outcome::InsufficientScope).code, 403);
    }
}
