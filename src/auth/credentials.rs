//! Finding the Bearer credentials of a request (RFC 8898 section 2.2, RFC 6750 section 2.1).

use crate::sip::{HeaderKind, Message};

/// A bearer token as received: bytes that passed the b64token check (RFC 6750 2.1), so ASCII.
/// Kept as bytes because the hot path only hashes them (the cache key): checking them again as
/// UTF-8 to hold a `&str` cost 143 instructions a request; [`BearerToken::as_str`] does it where
/// a string is needed (a request to the token source). `Debug` shows its length, not the token.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct BearerToken<'a>(&'a [u8]);

impl<'a> BearerToken<'a> {
    /// `token` if it is a b64token.
    pub fn new(token: &'a [u8]) -> Option<BearerToken<'a>> {
        is_b64token(token).then_some(BearerToken(token))
    }

    #[inline]
    pub fn as_bytes(&self) -> &'a [u8] {
        self.0
    }

    /// The token as a string. A b64token is ASCII, so this never comes out empty for a
    /// token that is not.
    pub fn as_str(&self) -> &'a str {
        std::str::from_utf8(self.0).unwrap_or_default()
    }

    #[inline]
    pub fn len(&self) -> usize {
        self.0.len()
    }

    #[inline]
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl std::fmt::Debug for BearerToken<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "BearerToken({} bytes)", self.0.len())
    }
}

impl AsRef<[u8]> for BearerToken<'_> {
    fn as_ref(&self) -> &[u8] {
        self.0
    }
}

impl PartialEq<&str> for BearerToken<'_> {
    fn eq(&self, other: &&str) -> bool {
        self.0 == other.as_bytes()
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Credentials<'a> {
    /// No Bearer credentials (there may be credentials of another scheme, e.g. Digest).
    Absent,
    /// The b64token of the one Bearer credential.
    Bearer(BearerToken<'a>),
    /// Bearer credentials that cannot be used; the reason names the defect.
    Malformed(&'static str),
}

/// RFC 6750 b64token: `1*( ALPHA / DIGIT / "-" / "." / "_" / "~" / "+" / "/" ) *"="`.
pub fn is_b64token(t: &[u8]) -> bool {
    let body = &t[..t.iter().rposition(|&b| b != b'=').map_or(0, |p| p + 1)];
    if body.is_empty() {
        return false;
    }
    #[cfg(all(target_arch = "x86_64", target_feature = "sse2"))]
    return b64_body_sse2(body);
    #[cfg(not(all(target_arch = "x86_64", target_feature = "sse2")))]
    b64_body_bytes(body)
}

/// Every byte of `body` a b64token byte, each looked at: no early exit, so that the loop
/// vectorises where SSE2 is not there to do it by hand.
#[cfg_attr(all(target_arch = "x86_64", target_feature = "sse2"), allow(dead_code))]
fn b64_body_bytes(body: &[u8]) -> bool {
    body.iter().fold(true, |ok, &b| ok & is_b64_byte(b))
}

/// [`b64_body_bytes`] sixteen bytes a step with SSE2 (through `safe_arch`: safe functions), the
/// last step overlapping the one before, and a body under sixteen bytes padded with `a`. The
/// loop LLVM vectorised by itself took 264 instructions for the benches' 150-byte token and 177
/// for the 20-byte tokens of the load generator (its set-up dominated), this about half
/// (`examples/respond_loop.rs`, `loadtest/instructions_per_answer.sh`).
#[cfg(all(target_arch = "x86_64", target_feature = "sse2"))]
fn b64_body_sse2(body: &[u8]) -> bool {
    use crate::sip::{any_lane16, at_most};
    use safe_arch::{add_i8_m128i, bitandnot_m128i, bitor_m128i, cmp_eq_mask_i8_m128i, m128i};
    let splat = |b: u8| safe_arch::set_splat_i8_m128i(b as i8);
    // A byte is in `lo ..= lo + span` when, less `lo` (wrapping), it is at most `span`.
    let within = |v: m128i, lo: u8, span: u8| {
        at_most(add_i8_m128i(v, splat(lo.wrapping_neg())), splat(span))
    };
    let refused = |v: m128i| {
        // As is_b64_byte: both cases of letters, `-` to `9`, and three single bytes.
        let letters = within(bitor_m128i(v, splat(0x20)), b'a', 25);
        let dash_to_nine = within(v, b'-', 12);
        let singles = bitor_m128i(
            cmp_eq_mask_i8_m128i(v, splat(b'_')),
            bitor_m128i(
                cmp_eq_mask_i8_m128i(v, splat(b'~')),
                cmp_eq_mask_i8_m128i(v, splat(b'+')),
            ),
        );
        let valid = bitor_m128i(letters, bitor_m128i(dash_to_nine, singles));
        bitandnot_m128i(valid, splat(0xff))
    };
    match body.len() {
        n @ 0..16 => {
            // Padded with a byte the grammar takes.
            let mut padded = [b'a'; 16];
            padded[..n].copy_from_slice(body);
            !any_lane16(&padded, refused)
        }
        _ => !any_lane16(body, refused),
    }
}

/// A b64token byte before the padding, in as few comparisons as the vectorised loop can do: one
/// range for both cases of letters, one for `-`, `.`, `/` and the digits (0x2d to 0x39), three
/// single bytes. `is_ascii_alphanumeric` and a `matches!` of the rest took twice the instructions.
#[inline(always)]
fn is_b64_byte(b: u8) -> bool {
    ((b | 0x20).wrapping_sub(b'a') < 26)
        | (b.wrapping_sub(b'-') < 13)
        | (b == b'_')
        | (b == b'~')
        | (b == b'+')
}

/// The Bearer credentials among the `kind` headers (Authorization or Proxy-Authorization). Each
/// header line carries one credential (RFC 3261 7.3.1 exempts these headers from comma joining);
/// lines of other schemes are skipped; two Bearer credentials are ambiguous and so malformed.
pub fn bearer<'a>(msg: &Message<'a>, kind: HeaderKind) -> Credentials<'a> {
    let mut found = Credentials::Absent;
    for value in msg.lines(kind) {
        let scheme_end = value
            .iter()
            .position(|&b| crate::sip::is_lws(b))
            .unwrap_or(value.len());
        if !value[..scheme_end].eq_ignore_ascii_case(b"bearer") {
            continue;
        }
        if !matches!(found, Credentials::Absent) {
            return Credentials::Malformed("Two Bearer credentials");
        }
        let token = crate::sip::trim_lws(&value[scheme_end..]);
        found = match BearerToken::new(token) {
            Some(t) => Credentials::Bearer(t),
            None if token.is_empty() => Credentials::Malformed("Empty Bearer credentials"),
            None => Credentials::Malformed("Malformed Bearer token"),
        };
    }
    found
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sip::scan;

    fn creds(headers: &str) -> Credentials<'static> {
        let msg = format!("REGISTER sip:h SIP/2.0\r\n{headers}\r\n");
        let leaked: &'static [u8] = Box::leak(msg.into_bytes().into_boxed_slice());
        bearer(&scan(leaked).unwrap(), HeaderKind::Authorization)
    }

    #[test]
    fn bearer_scheme_is_case_insensitive() {
        assert_eq!(
            creds("Authorization: Bearer abc.DEF-_~+/==\r\n"),
            Credentials::Bearer(BearerToken(b"abc.DEF-_~+/=="))
        );
        assert_eq!(
            creds("Authorization: bearer abc\r\n"),
            Credentials::Bearer(BearerToken(b"abc"))
        );
        assert_eq!(
            creds("Authorization: BEARER   abc  \r\n"),
            Credentials::Bearer(BearerToken(b"abc"))
        );
    }

    #[test]
    fn absent_when_no_bearer() {
        assert_eq!(creds(""), Credentials::Absent);
        assert_eq!(
            creds("Authorization: Digest username=\"a\", realm=\"r\"\r\n"),
            Credentials::Absent
        );
        assert_eq!(
            creds("Proxy-Authorization: Bearer abc\r\n"),
            Credentials::Absent
        );
    }

    #[test]
    fn bearer_among_several_authorization_headers() {
        assert_eq!(
            creds("Authorization: Digest username=\"a\"\r\nAuthorization: Bearer tok\r\n"),
            Credentials::Bearer(BearerToken(b"tok"))
        );
    }

    #[test]
    fn malformed_bearer() {
        assert_eq!(
            creds("Authorization: Bearer a\r\nAuthorization: Bearer b\r\n"),
            Credentials::Malformed("Two Bearer credentials")
        );
        assert_eq!(
            creds("Authorization: Bearer\r\n"),
            Credentials::Malformed("Empty Bearer credentials")
        );
        assert_eq!(
            creds("Authorization: Bearer a b\r\n"),
            Credentials::Malformed("Malformed Bearer token")
        );
        assert_eq!(
            creds("Authorization: Bearer a,b\r\n"),
            Credentials::Malformed("Malformed Bearer token")
        );
        assert_eq!(
            creds("Authorization: Bearer ==\r\n"),
            Credentials::Malformed("Malformed Bearer token")
        );
        assert_eq!(
            creds("Authorization: Bearer a=b\r\n"),
            Credentials::Malformed("Malformed Bearer token")
        );
    }

    #[test]
    fn bearer_tokens_are_checked_bytes_shown_only_by_length() {
        let t = BearerToken::new(b"abc.DEF-_~+/==").unwrap();
        assert_eq!(t.as_str(), "abc.DEF-_~+/==");
        assert_eq!(t.as_bytes(), b"abc.DEF-_~+/==");
        assert_eq!(t, "abc.DEF-_~+/==");
        assert_eq!(format!("{t:?}"), "BearerToken(14 bytes)");
        for bad in [&b""[..], b"a b", b"\xc3\xa9", b"==", b"a=b"] {
            assert_eq!(BearerToken::new(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn b64_bytes_are_exactly_the_grammar() {
        for b in 0..=u8::MAX {
            let grammar =
                b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~' | b'+' | b'/');
            assert_eq!(is_b64_byte(b), grammar, "byte {b:#04x}");
        }
    }

    #[test]
    fn b64token_blocks_and_tails() {
        // Lengths around the 16-byte steps, with a bad byte at every position and padding after.
        for len in 1..=70 {
            let mut t: Vec<u8> = (0..len).map(|i| b"aZ09-._~+/"[i % 10]).collect();
            assert!(is_b64token(&t), "{len}");
            assert!(b64_body_bytes(&t), "{len}");
            t.extend_from_slice(b"==");
            assert!(is_b64token(&t), "{len} padded");
            for at in 0..len {
                let keep = t[at];
                // Every byte the grammar refuses, at every position.
                for bad in (0..=u8::MAX).filter(|&b| !is_b64_byte(b) && b != b'=') {
                    t[at] = bad;
                    assert!(!is_b64token(&t), "{len} bad {bad:#04x} at {at}");
                    assert!(!b64_body_bytes(&t[..len]), "{len} bad {bad:#04x} at {at}");
                }
                t[at] = keep;
            }
        }
    }

    #[test]
    fn b64token_grammar() {
        assert!(is_b64token(b"a"));
        assert!(is_b64token(b"a=="));
        assert!(!is_b64token(b""));
        assert!(!is_b64token(b"="));
        assert!(!is_b64token(b"a\"b"));
        assert!(!is_b64token("é".as_bytes()));
        assert!(is_b64token(b"abc.DEF-_~+/=="));
        assert!(!is_b64token(b"a=b"), "padding only at the end");
        assert!(!is_b64token(b"a b"));
        assert!(!is_b64token(b"a,b"));
    }
}
