//! Which requests need a token (the `[auth]` section) and what a request presents.

use crate::sip::{reply::to_has_tag, HeaderKind, Message, Method, Parties};

use super::credentials::{bearer, BearerToken, Credentials};

/// Maps outcomes to responses: RFC 8898 semantics (seed 000) or the Oracle SBC behaviour (seed 002).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Profile {
    Rfc8898,
    Oracle,
}

/// Where credentials are read and how challenges are sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChallengeMode {
    /// `Authorization` in, 401 + `WWW-Authenticate` out (a registrar or UAS).
    Www,
    /// `Proxy-Authorization` in, 407 + `Proxy-Authenticate` out (a proxy).
    Proxy,
}

/// The validated authentication policy. Built from configuration; immutable while shared.
#[derive(Debug, Clone)]
pub struct Policy {
    /// Methods that need a token, as sent on the wire (methods are case-sensitive).
    pub methods: Vec<Box<[u8]>>,
    pub in_dialog: bool,
    pub profile: Profile,
    pub challenge: ChallengeMode,
    pub realm: Box<str>,
    /// Space-separated scopes a token must carry, also advertised in challenges.
    pub scope: Option<Box<str>>,
    /// Authorization server URI advertised in challenges (RFC 8898 `authz_server`).
    pub authz_server: Option<Box<str>>,
    /// Seconds in `Retry-After` when the token source is unavailable.
    pub retry_after_s: u32,
    /// Seconds of clock difference tolerated when checking `exp` and `nbf`.
    pub clock_skew_s: u64,
    /// An audience the token's `aud` must contain.
    pub audience: Option<Box<str>>,
}

impl Default for Policy {
    fn default() -> Policy {
        Policy {
            methods: vec![Box::from(&b"REGISTER"[..]), Box::from(&b"INVITE"[..])],
            in_dialog: false,
            profile: Profile::Rfc8898,
            challenge: ChallengeMode::Www,
            realm: "sipward".into(),
            scope: None,
            authz_server: None,
            retry_after_s: 5,
            clock_skew_s: 0,
            audience: None,
        }
    }
}

/// What a request needs before it can be answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Need<'a> {
    /// ACK: never answered (RFC 3261 17.1.1.3, 22.1).
    NoResponse,
    /// No authentication needed.
    Pass,
    /// Needs a token and presents no Bearer credentials.
    Challenge,
    /// Bearer credentials that cannot be used.
    Malformed(&'static str),
    /// The token to validate.
    Token(BearerToken<'a>),
}

/// Decides what `msg` (a request that passed [`Message::check_request`]) needs under `policy`.
pub fn assess<'a>(policy: &Policy, msg: &Message<'a>) -> Need<'a> {
    decide(policy, msg, || to_has_tag(msg))
}

/// [`assess`] with the [`Parties`] that [`Message::check_request`] returned for `msg`, so that To
/// is not parsed again.
pub fn assess_checked<'a>(policy: &Policy, msg: &Message<'a>, parties: &Parties<'_>) -> Need<'a> {
    decide(policy, msg, || parties.to_tagged)
}

/// `in_dialog` is asked only when the answer matters: without [`Parties`] it parses To.
#[inline]
fn decide<'a>(policy: &Policy, msg: &Message<'a>, in_dialog: impl FnOnce() -> bool) -> Need<'a> {
    match msg.method() {
        Some(Method::Ack) => return Need::NoResponse,
        // CANCEL cannot be challenged: it cannot be resubmitted with credentials (RFC 3261 22.1).
        Some(Method::Cancel) | None => return Need::Pass,
        Some(_) => {}
    }
    let method = msg.method_bytes();
    if !policy.methods.iter().any(|m| &m[..] == method) {
        return Need::Pass;
    }
    if !policy.in_dialog && in_dialog() {
        return Need::Pass;
    }
    let kind = match policy.challenge {
        ChallengeMode::Www => HeaderKind::Authorization,
        ChallengeMode::Proxy => HeaderKind::ProxyAuthorization,
    };
    match bearer(msg, kind) {
        Credentials::Absent => Need::Challenge,
        Credentials::Malformed(why) => Need::Malformed(why),
        Credentials::Bearer(token) => Need::Token(token),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sip::scan;

    fn need(policy: &Policy, method: &str, extra: &str) -> Need<'static> {
        let msg = format!(
            "{method} sip:h SIP/2.0\r\nVia: SIP/2.0/UDP a;branch=z9hG4bK1\r\nFrom: <sip:a@h>;tag=1\r\n\
{extra}Call-ID: c\r\nCSeq: 1 {method}\r\n\r\n"
        );
        let leaked: &'static [u8] = Box::leak(msg.into_bytes().into_boxed_slice());
        assess(policy, &scan(leaked).unwrap())
    }

    const TO: &str = "To: <sip:a@h>\r\n";
    const TO_TAG: &str = "To: <sip:a@h>;tag=x\r\n";
    const AUTH: &str = "Authorization: Bearer tok\r\n";

    #[test]
    fn listed_methods_need_a_token() {
        let p = Policy::default();
        assert_eq!(need(&p, "REGISTER", TO), Need::Challenge);
        assert_eq!(need(&p, "INVITE", TO), Need::Challenge);
        assert_eq!(
            need(&p, "REGISTER", &format!("{TO}{AUTH}")),
            Need::Token(BearerToken::new(b"tok").unwrap())
        );
    }

    #[test]
    fn unlisted_methods_pass() {
        let p = Policy::default();
        assert_eq!(need(&p, "OPTIONS", TO), Need::Pass);
        assert_eq!(need(&p, "MESSAGE", TO), Need::Pass);
        // Methods are case-sensitive: "register" is another method.
        assert_eq!(need(&p, "register", TO), Need::Pass);
        let p = Policy {
            methods: vec![Box::from(&b"MESSAGE"[..])],
            ..Policy::default()
        };
        assert_eq!(need(&p, "MESSAGE", TO), Need::Challenge);
        assert_eq!(need(&p, "REGISTER", TO), Need::Pass);
    }

    #[test]
    fn ack_is_never_answered_and_cancel_never_challenged() {
        let p = Policy {
            methods: vec![Box::from(&b"ACK"[..]), Box::from(&b"CANCEL"[..])],
            in_dialog: true,
            ..Policy::default()
        };
        assert_eq!(need(&p, "ACK", TO), Need::NoResponse);
        assert_eq!(need(&p, "CANCEL", TO), Need::Pass);
    }

    #[test]
    fn in_dialog_requests_pass_unless_configured() {
        let p = Policy::default();
        assert_eq!(need(&p, "INVITE", TO_TAG), Need::Pass);
        let p = Policy {
            in_dialog: true,
            ..Policy::default()
        };
        assert_eq!(need(&p, "INVITE", TO_TAG), Need::Challenge);
    }

    #[test]
    fn proxy_mode_reads_proxy_authorization() {
        let p = Policy {
            challenge: ChallengeMode::Proxy,
            ..Policy::default()
        };
        assert_eq!(need(&p, "INVITE", &format!("{TO}{AUTH}")), Need::Challenge);
        assert_eq!(
            need(
                &p,
                "INVITE",
                &format!("{TO}Proxy-Authorization: Bearer ptok\r\n")
            ),
            Need::Token(BearerToken::new(b"ptok").unwrap())
        );
    }

    #[test]
    fn malformed_credentials() {
        let p = Policy::default();
        assert_eq!(
            need(
                &p,
                "REGISTER",
                &format!("{TO}Authorization: Bearer a b\r\n")
            ),
            Need::Malformed("Malformed Bearer token")
        );
    }
}
