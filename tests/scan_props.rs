//! Property tests of the scanner: messages generated with random header order, random name case,
//! compact or long names, folded values, Via values split over lines or joined by commas, and
//! headers sipward does not interpret; the scanner must extract exactly what was written.

use proptest::prelude::*;
use sipward::auth::{bearer, BearerToken, Credentials};
use sipward::sip::{scan, Aor, HeaderKind};

/// One header as the generator writes it, and what the scanner should report for it.
#[derive(Debug, Clone)]
struct Gen {
    kind: HeaderKind,
    /// Long name; the compact form, when the header has one, may be used instead.
    long: &'static str,
    compact: Option<&'static str>,
    /// Value with single spaces where white space may be folded.
    value: String,
}

fn compact_of(kind: HeaderKind) -> Option<&'static str> {
    match kind {
        HeaderKind::Via => Some("v"),
        HeaderKind::From => Some("f"),
        HeaderKind::To => Some("t"),
        HeaderKind::CallId => Some("i"),
        HeaderKind::Contact => Some("m"),
        HeaderKind::ContentLength => Some("l"),
        _ => None,
    }
}

fn token_chars() -> impl Strategy<Value = String> {
    "[a-zA-Z0-9]{1,12}"
}

fn host() -> impl Strategy<Value = String> {
    (
        "[a-z][a-z0-9]{0,8}",
        prop::sample::select(vec!["com", "net", "example.org"]),
    )
        .prop_map(|(a, b)| format!("{a}.{b}"))
}

/// A From/To value: name-addr with or without display name, or addr-spec; tag or not.
fn addr_value() -> impl Strategy<Value = (String, String, String)> {
    (
        "[a-z][a-z0-9]{0,10}",
        host(),
        0u8..3,
        prop::option::of(token_chars()),
        prop::sample::select(vec!["sip", "sips"]),
    )
        .prop_map(|(user, host, form, tag, scheme)| {
            let tag = tag.map(|t| format!(";tag={t}")).unwrap_or_default();
            let v = match form {
                0 => format!("\"Some One\" <{scheme}:{user}@{host};transport=udp>{tag}"),
                1 => format!("<{scheme}:{user}@{host}:5061>{tag}"),
                _ => format!("{scheme}:{user}@{host}{tag}"),
            };
            (v, user, host)
        })
}

fn via_value() -> impl Strategy<Value = String> {
    (
        host(),
        1024u16..,
        token_chars(),
        prop::sample::select(vec!["UDP", "TCP", "TLS"]),
    )
        .prop_map(|(h, port, branch, t)| format!("SIP/2.0/{t} {h}:{port};branch=z9hG4bK{branch}"))
}

/// Writes `name` with each letter's case chosen by the bits of `case`.
fn cased(name: &str, case: u64) -> String {
    name.chars()
        .enumerate()
        .map(|(i, c)| {
            if case >> (i % 64) & 1 == 1 {
                c.to_ascii_uppercase()
            } else {
                c.to_ascii_lowercase()
            }
        })
        .collect()
}

/// The value as written on the wire: every space may become a fold (CRLF + SP or HTAB) when the
/// corresponding bit of `fold` is set.
fn folded(value: &str, fold: u64) -> String {
    let mut out = String::new();
    for (i, part) in value.split(' ').enumerate() {
        if i > 0 {
            let bit = fold >> (i % 64) & 1 == 1;
            out.push_str(if bit {
                if i % 2 == 0 {
                    "\r\n "
                } else {
                    "\r\n\t"
                }
            } else {
                " "
            });
        }
        out.push_str(part);
    }
    out
}

/// Linear white space folded back to single spaces, to compare values across folds.
fn unfold(v: &[u8]) -> String {
    let s = std::str::from_utf8(v).expect("generated values are ASCII");
    s.split([' ', '\t', '\r', '\n'])
        .filter(|p| !p.is_empty())
        .collect::<Vec<_>>()
        .join(" ")
}

#[derive(Debug, Clone)]
struct Case {
    bytes: Vec<u8>,
    headers: Vec<Gen>,
    vias: Vec<String>,
    to_user: String,
    to_host: String,
    token: String,
}

fn message() -> impl Strategy<Value = Case> {
    (
        prop::collection::vec(via_value(), 1..5),
        addr_value(),
        addr_value(),
        token_chars(),
        1u32..100_000,
        "[A-Za-z0-9_.~+/-]{8,64}",
        prop::collection::vec(
            ("X-[A-Za-z]{1,8}", "[a-z0-9]{1,10}( [a-z0-9]{1,10}){0,2}"),
            0..4,
        ),
        any::<u64>(),
        any::<u64>(),
        any::<u64>(),
        any::<u64>(),
        any::<u64>(),
    )
        .prop_map(
            |(vias, from, to, call_id, cseq, token, others, order, case, compact, fold, join)| {
                let mut hs: Vec<Gen> = Vec::new();
                let g = |kind, long, value: String| Gen {
                    kind,
                    long,
                    compact: compact_of(kind),
                    value,
                };
                // Via lines: consecutive vias may share a line joined by a comma.
                let mut via_lines: Vec<String> = Vec::new();
                for (i, v) in vias.iter().enumerate() {
                    match via_lines.last_mut() {
                        Some(line) if join >> i & 1 == 1 => {
                            line.push_str(", ");
                            line.push_str(v);
                        }
                        _ => via_lines.push(v.clone()),
                    }
                }
                hs.push(g(HeaderKind::From, "From", from.0));
                hs.push(g(HeaderKind::To, "To", to.0.clone()));
                hs.push(g(HeaderKind::CallId, "Call-ID", format!("{call_id}@host")));
                hs.push(g(HeaderKind::CSeq, "CSeq", format!("{cseq} REGISTER")));
                hs.push(g(HeaderKind::MaxForwards, "Max-Forwards", "70".into()));
                hs.push(g(
                    HeaderKind::Contact,
                    "Contact",
                    "<sip:c@192.0.2.1:5060> ;expires=600".into(),
                ));
                hs.push(g(HeaderKind::Expires, "Expires", "600".into()));
                hs.push(g(
                    HeaderKind::Authorization,
                    "Authorization",
                    format!("Bearer {token}"),
                ));
                for (name, value) in &others {
                    hs.push(Gen {
                        kind: HeaderKind::Other,
                        long: Box::leak(name.clone().into_boxed_str()),
                        compact: None,
                        value: value.clone(),
                    });
                }
                // Shuffle deterministically from `order` (Fisher-Yates with its bits).
                let mut seed = order;
                for i in (1..hs.len()).rev() {
                    seed = seed
                        .wrapping_mul(6364136223846793005)
                        .wrapping_add(1442695040888963407);
                    let j = (seed >> 33) as usize % (i + 1);
                    hs.swap(i, j);
                }
                // The Via lines go in as a block at a position chosen by `order`, keeping their
                // order (Via order is meaningful; other headers' relative order is not).
                let at = (order >> 7) as usize % (hs.len() + 1);
                let via_gens: Vec<Gen> = via_lines
                    .into_iter()
                    .map(|v| g(HeaderKind::Via, "Via", v))
                    .collect();
                hs.splice(at..at, via_gens);
                // Content-Length last, as senders usually put it.
                hs.push(g(HeaderKind::ContentLength, "Content-Length", "0".into()));

                let mut bytes = b"REGISTER sip:example.com SIP/2.0\r\n".to_vec();
                for (i, h) in hs.iter().enumerate() {
                    let use_compact = compact >> (i % 64) & 1 == 1;
                    let name = match h.compact {
                        Some(c) if use_compact => c.to_string(),
                        _ => cased(h.long, case.rotate_left(i as u32)),
                    };
                    let value = folded(&h.value, fold.rotate_left(3 * i as u32));
                    bytes.extend_from_slice(format!("{name}: {value}\r\n").as_bytes());
                }
                bytes.extend_from_slice(b"\r\n");
                Case {
                    bytes,
                    headers: hs,
                    vias,
                    to_user: to.1,
                    to_host: to.2,
                    token,
                }
            },
        )
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn scanner_extracts_what_was_written(case in message()) {
        let msg = scan(&case.bytes).map_err(|e| TestCaseError::fail(format!("{e}")))?;
        prop_assert!(msg.is_request());
        prop_assert_eq!(msg.headers().len(), case.headers.len());

        // Every header in order, with its kind, its value (modulo folding) and a raw span that
        // starts with its name.
        for (got, want) in msg.headers().iter().zip(&case.headers) {
            prop_assert_eq!(got.kind, want.kind);
            prop_assert_eq!(unfold(msg.value_of(got)), want.value.clone());
            let raw = got.raw.of(&case.bytes);
            prop_assert!(raw.starts_with(msg.name_of(got)));
            prop_assert!(raw.ends_with(b"\r\n"));
            prop_assert!(msg.name_of(got).eq_ignore_ascii_case(want.long.as_bytes())
                || want.compact.is_some_and(|c| msg.name_of(got).eq_ignore_ascii_case(c.as_bytes())));
        }
        // The raw spans tile the header section: a relay copying them loses nothing.
        let raws: Vec<u8> = msg.headers().iter().flat_map(|h| h.raw.of(&case.bytes).to_vec()).collect();
        let head_start = case.bytes.iter().position(|&b| b == b'\n').unwrap() + 1;
        prop_assert_eq!(&raws[..], &case.bytes[head_start..case.bytes.len() - 2]);

        // Via values in order, comma-joined or not.
        let vias: Vec<String> = msg.vias().map(unfold).collect();
        prop_assert_eq!(vias, case.vias.clone());

        // The AOR of the To header, and the bearer token.
        let to = msg.first(HeaderKind::To).unwrap();
        let aor = Aor::from_header(to).map_err(|e| TestCaseError::fail(format!("{e:?}")))?;
        prop_assert_eq!(aor.user, case.to_user.as_bytes());
        prop_assert_eq!(aor.host, case.to_host.as_bytes());
        let token = BearerToken::new(case.token.as_bytes()).unwrap();
        prop_assert_eq!(bearer(&msg, HeaderKind::Authorization), Credentials::Bearer(token));
        prop_assert_eq!(msg.content_length(), Ok(Some(0)));
        prop_assert!(msg.duplicate().is_none());
        prop_assert!(msg.check_request().is_ok());
    }

    #[test]
    fn scanner_never_panics_on_mutations(case in message(), cut in any::<usize>(), flips in prop::collection::vec((any::<usize>(), any::<u8>()), 0..8)) {
        let mut bytes = case.bytes.clone();
        for (at, b) in flips {
            let i = at % bytes.len();
            bytes[i] = b;
        }
        bytes.truncate(cut % (bytes.len() + 1));
        if let Ok(msg) = scan(&bytes) {
            for h in msg.headers() {
                prop_assert!(h.raw.end as usize <= bytes.len());
                prop_assert!(h.value.start <= h.value.end);
                let _ = msg.check_request();
                let _ = bearer(&msg, HeaderKind::Authorization);
                let _ = msg.first(HeaderKind::To).map(Aor::from_header);
                let _ = msg.vias().count();
            }
        }
    }
}
