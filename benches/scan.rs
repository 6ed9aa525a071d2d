//! Scanning a typical REGISTER (issue #2 target: at most 300 ns for ~600 bytes).
//!
//! Three things are measured on the same bytes:
//! - `sipward_scan`: [`sipward::sip::scan`] alone (start line, header lines classified, spans kept);
//! - `sipward_scan_extract`: scan plus what the respond-mode decision reads from it: the top Via,
//!   the To AOR (via [`Aor::from_header`]) and the Bearer token (via [`sipward::auth::bearer`]);
//! - `naive_*`: a naive baseline beside the chosen structure (per DESIGN): UTF-8 check, split on
//!   CRLF, `split_once(':')`, lower-cased owned names into a `HashMap<String, Vec<String>>`.
//!
//! A second group, `decision_parts`, times each extraction step alone on an already scanned message.
//!
//! The naive baseline does *less* than the scanner (no compact header forms, no folded lines, no
//! bare-LF endings, no header-name validation, no duplicate tracking), so the ratio understates the
//! gap rather than flattering the scanner.
//!
//! Run: `cargo bench --bench scan` (see BENCHMARKS.md for recorded figures).

use std::collections::HashMap;
use std::hint::black_box;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use sipward::auth::credentials::is_b64token;
use sipward::auth::{bearer, Credentials};
use sipward::sip::reply::to_has_tag;
use sipward::sip::{scan, Aor, HeaderKind};

#[path = "fixtures/register.rs"]
mod fixtures;
use fixtures::{register, TOKEN};

/// What the respond-mode decision needs from a REGISTER, borrowed from the buffer.
struct Extracted<'a> {
    top_via: &'a [u8],
    aor_user: &'a [u8],
    aor_host: &'a [u8],
    token: &'a [u8],
}

fn sipward_extract(buf: &[u8]) -> Option<Extracted<'_>> {
    let msg = scan(buf).ok()?;
    let top_via = msg.top_via()?;
    let aor = Aor::from_header(msg.first(HeaderKind::To)?).ok()?;
    let Credentials::Bearer(token) = bearer(&msg, HeaderKind::Authorization) else {
        return None;
    };
    Some(Extracted {
        top_via,
        aor_user: aor.user,
        aor_host: aor.host,
        token: token.as_bytes(),
    })
}

/// The naive way: owned, lower-cased names, every value copied, a hash map per message.
fn naive_scan(buf: &[u8]) -> Option<(String, HashMap<String, Vec<String>>)> {
    let text = std::str::from_utf8(buf).ok()?;
    let head = text.split("\r\n\r\n").next()?;
    let mut lines = head.split("\r\n");
    let start = lines.next()?.to_string();
    let mut headers: HashMap<String, Vec<String>> = HashMap::new();
    for line in lines {
        let (name, value) = line.split_once(':')?;
        headers
            .entry(name.trim().to_lowercase())
            .or_default()
            .push(value.trim().to_string());
    }
    Some((start, headers))
}

/// The same extraction as [`sipward_extract`], done naively on the map (owned results).
fn naive_extract(buf: &[u8]) -> Option<(String, String, String, String)> {
    let (_, headers) = naive_scan(buf)?;
    let top_via = headers
        .get("via")?
        .first()?
        .split(',')
        .next()?
        .trim()
        .to_string();
    let to = headers.get("to")?.first()?;
    let uri = match (to.find('<'), to.find('>')) {
        (Some(a), Some(b)) if a < b => &to[a + 1..b],
        _ => to.split(';').next()?,
    };
    let addr = uri.strip_prefix("sip:")?;
    let addr = addr.split(';').next()?;
    let (user, host) = addr.split_once('@')?;
    let token = headers
        .get("authorization")?
        .iter()
        .find_map(|v| v.strip_prefix("Bearer "))?
        .trim()
        .to_string();
    Some((top_via, user.to_string(), host.to_string(), token))
}

fn bench_scan(c: &mut Criterion) {
    let msg = register(true);
    println!(
        "REGISTER under test: {} bytes, token {} characters",
        msg.len(),
        TOKEN.len()
    );
    assert!(
        (550..=700).contains(&msg.len()),
        "the benchmark message should be a typical ~600-byte REGISTER, is {} bytes",
        msg.len()
    );
    assert_eq!(TOKEN.len(), 150);

    // The three variants must agree before they are timed.
    let ours = sipward_extract(&msg).expect("sipward extracts the decision inputs");
    let naive = naive_extract(&msg).expect("the naive baseline extracts them too");
    assert_eq!(ours.top_via, naive.0.as_bytes());
    assert_eq!(ours.aor_user, naive.1.as_bytes());
    assert_eq!(ours.aor_host, naive.2.as_bytes());
    assert_eq!(ours.token, naive.3.as_bytes());
    assert_eq!(ours.token, TOKEN.as_bytes());
    let scanned = scan(&msg).unwrap();
    assert_eq!(scanned.headers().len(), 13);
    assert!(scanned.check_request().is_ok());
    assert_eq!(naive_scan(&msg).unwrap().1.len(), 13);

    let mut g = c.benchmark_group("scan_register");
    g.throughput(Throughput::Bytes(msg.len() as u64));
    g.bench_function("sipward_scan", |b| {
        b.iter(|| {
            let m = scan(black_box(&msg[..])).unwrap();
            // By reference: every header span the scanner stored must really be written.
            black_box(&m);
        })
    });
    g.bench_function("sipward_scan_extract", |b| {
        b.iter(|| {
            let e = sipward_extract(black_box(&msg[..])).unwrap();
            black_box((e.top_via, e.aor_user, e.aor_host, e.token));
        })
    });
    g.bench_function("naive_scan", |b| {
        b.iter(|| black_box(naive_scan(black_box(&msg[..])).unwrap()))
    });
    g.bench_function("naive_scan_extract", |b| {
        b.iter(|| black_box(naive_extract(black_box(&msg[..])).unwrap()))
    });
    g.finish();

    // Where the extraction (and `Engine::begin`'s checks) spend their time: each step alone on an
    // already scanned message.
    let mut g = c.benchmark_group("decision_parts");
    g.bench_function("top_via", |b| b.iter(|| black_box(&scanned).top_via()));
    g.bench_function("to_aor", |b| {
        b.iter(|| {
            let to = black_box(&scanned).first(HeaderKind::To).unwrap();
            Aor::from_header(to).unwrap().user.len()
        })
    });
    g.bench_function("bearer", |b| {
        b.iter(|| bearer(black_box(&scanned), HeaderKind::Authorization))
    });
    // `bearer` was dominated by the b64token check on the 150-byte token until that check stopped
    // exiting early (so it vectorises): 143 ns before, 37 ns after, on the same run.
    g.bench_function("is_b64token", |b| {
        b.iter(|| is_b64token(black_box(TOKEN.as_bytes())))
    });
    g.bench_function("check_request", |b| {
        b.iter(|| black_box(&scanned).check_request())
    });
    g.bench_function("to_has_tag", |b| b.iter(|| to_has_tag(black_box(&scanned))));
    g.bench_function("contact_values", |b| {
        b.iter(|| black_box(&scanned).values(HeaderKind::Contact).count())
    });
    g.finish();
}

criterion_group!(benches, bench_scan);
criterion_main!(benches);
