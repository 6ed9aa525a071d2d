//! The whole sans-io respond path, bytes in and response bytes out: `Engine::begin`, then (when a
//! token must be looked up) `Engine::finish` with a chosen lookup result.
//!
//! Input layout: when the first byte has its high bit set it is a selector and the rest is the
//! message; no SIP message starts with such a byte, so nothing reachable is lost. Selector bits:
//! 0-3 the lookup (index into `LOOKUPS`, modulo its length), 4 the `oracle` profile (else
//! `rfc8898`), 5 proxy challenges (else www), 6 the strict policy (scope, audience, in-dialog,
//! more methods, `[respond] status` 202, an IPv6 source). Any other input is a message as it
//! arrives (the seed corpus is plain SIP) and runs under every profile, mode and policy with every
//! lookup. The source address (IPv4, or IPv6 under the strict policy) is derived from the message
//! bytes, so the `received` writer sees many addresses; it must match `Display` for `IpAddr`.
//!
//! Checked whenever a response is written: it scans, it is a response with the status `Done`
//! reports, it copies Call-ID, From and CSeq (unfolded) and To (plus our tag), it ends with an
//! empty body, its top Via names the source, and its status and challenge follow the profile
//! table. An `Accept` needs an active, current token for the request's address of record, and a
//! request that needs a token never gets a 2xx without one. `Silent` and `Dropped` leave the output
//! untouched. With a selector byte the run is repeated and must give the same bytes. The shard's
//! own path (`Engine::begin_then` lending the request to `Engine::finish_ready`) must give the same
//! `Done` and bytes as `begin` and `finish` for every lookup.

#![no_main]

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::LazyLock;

use libfuzzer_sys::fuzz_target;
use sipward::auth::{
    response_for, Begin, ChallengeMode, Done, Engine, Lookup, Outcome, Policy, Profile,
    SourceError, TokenFacts,
};
use sipward::forward::Flow;
use sipward::sip::reply::to_has_tag;
use sipward::sip::{scan, Aor, HeaderKind, Message, Method, StartLine};

const NOW: u64 = 1_800_000_000;

/// The token source's possible answers, by index.
enum Answer {
    Found(TokenFacts),
    Failed(SourceError),
    NoSource,
}

impl Answer {
    fn lookup(&self) -> Lookup<'_> {
        match self {
            Answer::Found(f) => Lookup::Found(f),
            Answer::Failed(e) => Lookup::Failed(*e),
            Answer::NoSource => Lookup::NoSource,
        }
    }
}

fn alice() -> TokenFacts {
    TokenFacts {
        active: true,
        username: Some("alice".into()),
        exp: Some(NOW + 600),
        nbf: Some(NOW - 600),
        scope: Some("sip openid".into()),
        aud: vec!["sipward".into()],
    }
}

static LOOKUPS: LazyLock<Vec<Answer>> = LazyLock::new(|| {
    vec![
        Answer::Found(alice()),
        Answer::Found(TokenFacts::inactive()),
        // Expired well beyond the strict policy's clock skew.
        Answer::Found(TokenFacts {
            exp: Some(NOW - 3600),
            ..alice()
        }),
        Answer::Found(TokenFacts {
            nbf: Some(NOW + 3600),
            ..alice()
        }),
        Answer::Found(TokenFacts {
            username: None,
            ..alice()
        }),
        Answer::Found(TokenFacts {
            username: Some("bob".into()),
            ..alice()
        }),
        // user@host form, no scope and no audience.
        Answer::Found(TokenFacts {
            active: true,
            username: Some("alice@example.com".into()),
            ..TokenFacts::default()
        }),
        Answer::Failed(SourceError::Unreachable),
        Answer::Failed(SourceError::Timeout),
        Answer::Failed(SourceError::Overloaded),
        Answer::Failed(SourceError::BadStatus(401)),
        Answer::Failed(SourceError::BadStatus(503)),
        Answer::Failed(SourceError::BadBody("not JSON")),
        Answer::NoSource,
    ]
});

/// Engines by selector bits 4-6.
static ENGINES: LazyLock<Vec<Engine>> = LazyLock::new(|| {
    (0..8u8)
        .map(|bits| {
            let profile = if bits & 1 != 0 {
                Profile::Oracle
            } else {
                Profile::Rfc8898
            };
            let challenge = if bits & 2 != 0 {
                ChallengeMode::Proxy
            } else {
                ChallengeMode::Www
            };
            if bits & 4 == 0 {
                let policy = Policy {
                    profile,
                    challenge,
                    ..Policy::default()
                };
                Engine::new(policy, 200, (1, 2))
            } else {
                let policy = Policy {
                    methods: ["REGISTER", "INVITE", "MESSAGE", "SUBSCRIBE"]
                        .iter()
                        .map(|m| Box::from(m.as_bytes()))
                        .collect(),
                    in_dialog: true,
                    profile,
                    challenge,
                    realm: "example.com".into(),
                    scope: Some("sip".into()),
                    authz_server: Some("https://as.example.com/token".into()),
                    retry_after_s: 30,
                    clock_skew_s: 30,
                    audience: Some("sipward".into()),
                };
                Engine::new(policy, 202, (0x0123_4567, 0x89ab_cdef))
            }
        })
        .collect()
});

/// Where the request came from: an address derived from the message bytes (FNV-1a), so the
/// `received`/`rport` writer sees many addresses; IPv6 under the strict policy.
fn source(strict: bool, msg: &[u8]) -> SocketAddr {
    let h = msg.iter().fold(0xcbf2_9ce4_8422_2325_u64, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
    });
    let port = (h >> 48) as u16;
    if strict {
        let ip = Ipv6Addr::from(u128::from(h) << 64 | u128::from(h.rotate_left(17) & 0xffff));
        SocketAddr::new(IpAddr::V6(ip), port)
    } else {
        SocketAddr::new(IpAddr::V4(Ipv4Addr::from(h as u32)), port)
    }
}

fuzz_target!(|data: &[u8]| {
    match data.split_first() {
        Some((&sel, msg)) if sel & 0x80 != 0 => {
            let bits = usize::from((sel >> 4) & 7);
            let answer = &LOOKUPS[usize::from(sel & 0x0f) % LOOKUPS.len()];
            let first = run(&ENGINES[bits], msg, source(bits & 4 != 0, msg), &[answer]);
            let second = run(&ENGINES[bits], msg, source(bits & 4 != 0, msg), &[answer]);
            assert_eq!(first, second, "same request, different response");
        }
        _ => {
            let all: Vec<&Answer> = LOOKUPS.iter().collect();
            for (bits, engine) in ENGINES.iter().enumerate() {
                run(engine, data, source(bits & 4 != 0, data), &all);
            }
        }
    }
});

/// Runs one request through `engine`, finishing it with each of `answers` when it needs a token.
/// Returns every (Done, output) pair for the determinism check.
fn run(engine: &Engine, msg: &[u8], src: SocketAddr, answers: &[&Answer]) -> Vec<(Done, Vec<u8>)> {
    let mut results = Vec::new();
    let mut out = Vec::new();
    match engine.begin(msg, src, &mut out) {
        Begin::Done(done) => {
            check_done(engine, msg, src, done, &out, None);
            results.push((done, out));
        }
        Begin::NeedToken(pending) => {
            assert!(
                out.is_empty(),
                "begin wrote output although it needs a token"
            );
            assert!(std::ptr::eq(pending.msg.bytes(), msg));
            assert!(!pending.token.is_empty());
            assert!(msg.len() >= pending.token.len());
            // The shard calls begin again on the same bytes when the source answers.
            match engine.begin(msg, src, &mut out) {
                Begin::NeedToken(again) => assert_eq!(again.token, pending.token),
                Begin::Done(d) => panic!("second begin on the same bytes gave {d:?}"),
            }
            // One buffer for every answer: finish must replace what an earlier response left.
            out.extend_from_slice(b"stale bytes from an earlier response");
            for answer in answers {
                let done = engine.finish(&pending, src, answer.lookup(), NOW, &mut out);
                assert!(
                    matches!(done, Done::Replied { .. }),
                    "finish did not reply: {done:?}"
                );
                check_done(engine, msg, src, done, &out, Some(answer));
                results.push((done, out.clone()));
            }
        }
    }
    // The shard's path, the lookup lent the request where it was scanned, answers as the two
    // halves do.
    let arrival = Flow::Udp(src);
    let mut lent = Vec::new();
    for answer in answers {
        let mut out = Vec::new();
        let done = engine.begin_then(msg, arrival, &mut out, |ready, out| {
            assert!(std::ptr::eq(ready.msg.bytes(), msg));
            engine.finish_ready(ready, arrival, answer.lookup(), NOW, out)
        });
        match done {
            Ok(done) => lent.push((done, out)),
            Err(done) => {
                lent.push((done, out));
                break;
            }
        }
    }
    if !answers.is_empty() {
        assert_eq!(
            lent, results,
            "begin_then and finish_ready differ from begin and finish"
        );
    }
    results
}

fn check_done(
    engine: &Engine,
    req_bytes: &[u8],
    src: SocketAddr,
    done: Done,
    out: &[u8],
    answer: Option<&Answer>,
) {
    let (code, outcome) = match done {
        Done::Replied { code, outcome } => (code, outcome),
        // This target builds a respond-mode engine, which has nothing to relay to.
        Done::Forwarded(dest) => panic!("respond mode relayed a message to {dest:?}"),
        Done::Silent | Done::Dropped(_) => {
            // The engine writes nothing unless it replies (the shard sends `out` only on Replied).
            assert!(out.is_empty(), "{done:?} left {} bytes in out", out.len());
            return;
        }
    };
    let req = scan(req_bytes).expect("replied to a message that does not scan");
    assert!(req.is_request());
    assert_ne!(req.method(), Some(Method::Ack), "replied to an ACK");

    let resp = match scan(out) {
        Ok(r) => r,
        Err(e) => panic!(
            "response does not scan ({e}): {:?}",
            String::from_utf8_lossy(out)
        ),
    };
    match resp.start {
        StartLine::Response { code: c, .. } => assert_eq!(c, code, "status line vs Done"),
        StartLine::Request { .. } => panic!("response scans as a request"),
    }
    assert!(out.ends_with(b"\r\nContent-Length: 0\r\n\r\n"));
    assert_eq!(resp.content_length(), Ok(Some(0)));
    assert!(resp.after_headers().is_empty());
    assert_eq!(resp.duplicate(), None);

    // Copied headers, unfolded.
    for kind in [HeaderKind::CallId, HeaderKind::From, HeaderKind::CSeq] {
        let want = req.first(kind).map(unfolded);
        assert_eq!(
            resp.first(kind).map(<[u8]>::to_vec),
            want,
            "{} not copied",
            kind.name()
        );
    }
    match req.first(HeaderKind::To) {
        None => assert_eq!(resp.first(HeaderKind::To), None),
        Some(to) => {
            let to = unfolded(to);
            let got = resp.first(HeaderKind::To).expect("To not copied");
            let tag = got.strip_prefix(&to[..]).expect("To changed");
            assert!(
                tag.is_empty()
                    || (tag.len() == 5 + 16
                        && tag.starts_with(b";tag=")
                        && tag[5..].iter().all(u8::is_ascii_hexdigit)),
                "unexpected To suffix {tag:?}"
            );
        }
    }
    let top = resp.top_via().expect("response without Via");
    let mark = format!(";received={};rport={}", src.ip(), src.port());
    assert!(top.ends_with(mark.as_bytes()), "top Via {top:?}");

    let policy = &engine.policy;
    let header = |name: &[u8]| {
        resp.headers()
            .iter()
            .any(|h| resp.name_of(h).eq_ignore_ascii_case(name))
    };
    match outcome {
        None | Some(Outcome::Accept) => {
            let allowed_code = match req.method() {
                Some(Method::Cancel) => 200,
                _ => engine.respond_status,
            };
            // Problems (400, 505, ...) carry no outcome and are not 2xx.
            assert!(code == allowed_code || (outcome.is_none() && code >= 400));
        }
        Some(o) => {
            let spec = response_for(policy, &o);
            assert_eq!(code, spec.code, "{o:?}");
            let challenge: &[u8] = match policy.challenge {
                ChallengeMode::Www => b"WWW-Authenticate",
                ChallengeMode::Proxy => b"Proxy-Authenticate",
            };
            assert_eq!(header(challenge), spec.challenge, "challenge for {o:?}");
            assert_eq!(
                header(b"Retry-After"),
                spec.retry_after,
                "Retry-After for {o:?}"
            );
        }
    }

    // Security: 2xx only with a good token, or for requests that need none.
    if outcome == Some(Outcome::Accept) {
        let Some(Answer::Found(facts)) = answer else {
            panic!("accepted without token facts");
        };
        let skew = policy.clock_skew_s;
        assert!(facts.active, "accepted an inactive token");
        assert!(
            facts.exp.is_none_or(|e| NOW < e + skew),
            "accepted an expired token"
        );
        assert!(
            facts.nbf.is_none_or(|n| NOW + skew >= n),
            "accepted an early token"
        );
        if let Some(aud) = &policy.audience {
            assert!(
                facts.aud.contains(aud),
                "accepted a token for another audience"
            );
        }
        if let Some(required) = &policy.scope {
            let granted = facts.scope.as_deref().unwrap_or("");
            assert!(
                required
                    .split_ascii_whitespace()
                    .all(|r| granted.split_ascii_whitespace().any(|g| g == r)),
                "accepted a token without the required scope"
            );
        }
        let aor_header = match req.method() {
            Some(Method::Register) => HeaderKind::To,
            _ => HeaderKind::From,
        };
        let aor = req
            .first(aor_header)
            .and_then(|v| Aor::from_header(v).ok())
            .expect("accepted without an address of record");
        match (&facts.username, policy.profile) {
            (Some(user), _) => assert!(aor.matches_username(user), "accepted {user} for {aor:?}"),
            (None, profile) => assert_eq!(profile, Profile::Rfc8898),
        }
    } else if (200..300).contains(&code) && answer.is_none() && needs_token(policy, &req) {
        panic!("2xx without a token for a request that needs one");
    }
}

/// Whether `policy` asks `req` for a token (mirrors `assess`, independently written).
fn needs_token(policy: &Policy, req: &Message<'_>) -> bool {
    let method = req.method_bytes();
    !matches!(req.method(), Some(Method::Ack | Method::Cancel) | None)
        && policy.methods.iter().any(|m| &m[..] == method)
        && (policy.in_dialog || !to_has_tag(req))
}

/// A header value as responses carry it: a folded value (one holding a line break) has each run
/// of white space turned into one space; any other value is copied as it is.
fn unfolded(v: &[u8]) -> Vec<u8> {
    if !v.contains(&b'\n') {
        return v.to_vec();
    }
    let mut out = Vec::with_capacity(v.len());
    let mut in_ws = false;
    for &b in v {
        if matches!(b, b' ' | b'\t' | b'\r' | b'\n') {
            if !in_ws {
                out.push(b' ');
            }
            in_ws = true;
        } else {
            out.push(b);
            in_ws = false;
        }
    }
    out
}
