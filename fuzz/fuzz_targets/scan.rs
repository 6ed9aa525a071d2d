//! Bytes into the scanner and the stream framer: neither may panic, and what they report must
//! describe the input they were given.
//!
//! Checked for `sipward::sip::scan` when it accepts the input: every span lies inside the input and
//! in order, header names are what their kind says, values are trimmed, the lookup helpers agree
//! with the header list, `split_list` agrees with a plain reference splitter, and scanning is
//! deterministic and unaffected by leading CRLFs. The From / To fast path
//! (`addr::parse_name_addr_uri`) reads the input and each of its lines as the general parsers do.
//! Checked for `sipward::sip::framing::next_frame`: every consuming frame is non-empty, no longer
//! than the input, and starts with what its variant names; walking a buffer frame by frame always
//! makes progress.

#![no_main]

use libfuzzer_sys::fuzz_target;
use sipward::sip::addr::parse_name_addr_uri;
use sipward::sip::framing::{next_frame, Frame};
use sipward::sip::scan::{split_list, Span};
use sipward::sip::{parse_name_addr, parse_uri, scan, HeaderKind, Message, Method, StartLine};

/// The default `[server] max_message_size`.
const MAX_MESSAGE: usize = 65536;

const SINGLE_KINDS: [HeaderKind; 7] = [
    HeaderKind::From,
    HeaderKind::To,
    HeaderKind::CallId,
    HeaderKind::CSeq,
    HeaderKind::MaxForwards,
    HeaderKind::Expires,
    HeaderKind::ContentLength,
];

fuzz_target!(|data: &[u8]| {
    check_scan(data);
    check_framing(data, MAX_MESSAGE);
    // A cap below the input's length reaches the size checks with short inputs.
    check_framing(data, data.len() / 2);
});

fn is_lws(b: u8) -> bool {
    matches!(b, b' ' | b'\t' | b'\r' | b'\n')
}

fn trim(v: &[u8]) -> &[u8] {
    let start = v.iter().position(|&b| !is_lws(b)).unwrap_or(v.len());
    let end = v.iter().rposition(|&b| !is_lws(b)).map_or(start, |e| e + 1);
    &v[start..end]
}

fn is_trimmed(v: &[u8]) -> bool {
    v.first().is_none_or(|&b| !is_lws(b)) && v.last().is_none_or(|&b| !is_lws(b))
}

/// The span lies inside a buffer of `len` bytes.
fn span_in(s: Span, len: usize) -> std::ops::Range<usize> {
    let (start, end) = (s.start as usize, s.end as usize);
    assert!(start <= end && end <= len, "span {s:?} outside 0..{len}");
    start..end
}

/// `part` is empty or a sub-slice of `whole` (the scanner borrows, never copies).
fn borrowed_from(part: &[u8], whole: &[u8]) -> bool {
    let w = whole.as_ptr_range();
    let p = part.as_ptr_range();
    part.is_empty() || (w.start <= p.start && p.end <= w.end)
}

fn contains_crlfcrlf(v: &[u8]) -> Option<usize> {
    v.windows(4).position(|w| w == b"\r\n\r\n")
}

/// Reference for `split_list`: commas outside quoted strings and angle brackets split, elements
/// are trimmed and empty ones dropped.
fn reference_split(v: &[u8]) -> Vec<&[u8]> {
    let mut items = Vec::new();
    let (mut quoted, mut angle, mut escaped) = (false, false, false);
    let mut start = 0;
    for (i, &b) in v.iter().enumerate() {
        if escaped {
            escaped = false;
            continue;
        }
        match b {
            b'\\' if quoted => escaped = true,
            b'"' if !angle => quoted = !quoted,
            b'<' if !quoted => angle = true,
            b'>' if !quoted => angle = false,
            b',' if !quoted && !angle => {
                items.push(trim(&v[start..i]));
                start = i + 1;
            }
            _ => {}
        }
    }
    items.push(trim(&v[start..]));
    items.retain(|i| !i.is_empty());
    items
}

/// The From / To fast path reads a value as the two general parsers do, on the whole input and on
/// each of its lines.
fn check_name_addr_uri(data: &[u8]) {
    for v in std::iter::once(data).chain(data.split(|&b| b == b'\n')) {
        let general = parse_name_addr(v).and_then(|na| Ok((na, parse_uri(na.uri)?)));
        assert_eq!(parse_name_addr_uri(v), general, "{v:?}");
    }
}

fn check_scan(data: &[u8]) {
    check_name_addr_uri(data);
    let msg = match scan(data) {
        Ok(m) => m,
        Err(e) => {
            assert_eq!(scan(data).err(), Some(e), "scan is not deterministic");
            return;
        }
    };
    let len = data.len();
    assert!(std::ptr::eq(msg.bytes(), data));

    check_start_line(&msg, data);

    let headers = msg.headers();
    let mut prev_raw_end = None;
    for h in headers {
        let name = &data[span_in(h.name, len)];
        let value = &data[span_in(h.value, len)];
        let raw = span_in(h.raw, len);
        assert_eq!(msg.name_of(h), name);
        assert_eq!(msg.value_of(h), value);
        // Header lines follow one another with nothing in between.
        if let Some(end) = prev_raw_end {
            assert_eq!(raw.start, end, "gap or overlap between header lines");
        }
        prev_raw_end = Some(raw.end);
        assert!(!name.is_empty(), "empty header name");
        assert!(
            name.iter().all(|&b| b > b' ' && b < 0x7f),
            "header name span holds white space or control bytes: {name:?}"
        );
        assert_eq!(
            HeaderKind::classify(name),
            h.kind,
            "kind disagrees with name"
        );
        // The raw line is the line as received; the name is its content after leading white
        // space, bare CRs included (a line starting with a bare CR is named by what follows:
        // `header_line_starting_with_a_bare_cr_is_named_by_its_name` in src/sip/scan.rs). This
        // assertion used to demand that the raw line start at the name, contradicting that test;
        // the fuzzer found the case.
        assert!(
            raw.start <= h.name.start as usize
                && data[raw.start..h.name.start as usize]
                    .iter()
                    .all(|&b| matches!(b, b' ' | b'\t' | b'\r')),
            "raw does not start at the name or at white space before it"
        );
        // name, colon, value, all inside the raw header.
        assert!(h.name.end < h.value.start);
        assert!(
            data[h.name.end as usize..h.value.start as usize].contains(&b':'),
            "no colon between name and value"
        );
        assert!(h.value.end as usize <= raw.end);
        assert!(is_trimmed(value), "value not trimmed: {value:?}");
    }
    if let Some(end) = prev_raw_end {
        assert!(end <= msg.body_offset());
    }
    assert!(msg.body_offset() <= len);
    assert_eq!(msg.after_headers(), &data[msg.body_offset()..]);

    // Single-valued headers: first() is the first occurrence, duplicates are reported.
    // (The index is kept in a u16; fuzz inputs stay far below 65535 headers.)
    if headers.len() < usize::from(u16::MAX) {
        let mut any_duplicate = false;
        for kind in SINGLE_KINDS {
            let mut of_kind = headers.iter().filter(|h| h.kind == kind);
            let first = of_kind.next().map(|h| msg.value_of(h));
            assert_eq!(msg.first(kind), first, "first({kind:?})");
            any_duplicate |= of_kind.next().is_some();
        }
        match msg.duplicate() {
            Some(kind) => {
                assert!(SINGLE_KINDS.contains(&kind));
                assert!(headers.iter().filter(|h| h.kind == kind).count() > 1);
            }
            None => assert!(!any_duplicate, "duplicate() missed a duplicate"),
        }
    }
    for kind in [HeaderKind::Via, HeaderKind::Contact, HeaderKind::Route] {
        let lines: Vec<&[u8]> = msg.lines(kind).collect();
        assert_eq!(
            lines.len(),
            headers.iter().filter(|h| h.kind == kind).count()
        );
        let values: Vec<&[u8]> = msg.values(kind).collect();
        let expected: Vec<&[u8]> = lines.iter().flat_map(|l| reference_split(l)).collect();
        assert_eq!(
            values, expected,
            "values({kind:?}) disagree with the reference split"
        );
        for v in &values {
            assert!(!v.is_empty() && is_trimmed(v) && borrowed_from(v, data));
        }
    }
    assert_eq!(msg.top_via(), msg.vias().next());
    for h in headers {
        let v = msg.value_of(h);
        let got: Vec<&[u8]> = split_list(v).collect();
        assert_eq!(got, reference_split(v), "split_list({v:?})");
    }

    // Body: Content-Length delimits it when it fits, else everything after the headers.
    let after = msg.after_headers();
    let body = msg.body();
    assert!(after.starts_with(body));
    match msg.content_length() {
        Ok(Some(n)) if n <= after.len() => assert_eq!(body.len(), n),
        Ok(None) => {
            assert!(msg.first(HeaderKind::ContentLength).is_none());
            assert_eq!(body, after);
        }
        _ => assert_eq!(body, after),
    }

    if msg.check_request().is_ok() {
        assert!(msg.is_request());
        assert!(msg.duplicate().is_none());
        for kind in [
            HeaderKind::From,
            HeaderKind::To,
            HeaderKind::CallId,
            HeaderKind::CSeq,
        ] {
            assert!(
                msg.first(kind).is_some(),
                "check_request passed without {kind:?}"
            );
        }
        let call_id = msg.first(HeaderKind::CallId).unwrap_or_default();
        assert!(!call_id.is_empty() && !call_id.iter().any(|&b| is_lws(b)));
    }

    // Same bytes, same message.
    let again = scan(data).expect("second scan of the same bytes failed");
    assert_eq!(again.headers().len(), headers.len());
    assert_eq!(again.start, msg.start);

    // Leading CRLFs are skipped (RFC 3261 7.5): same message, shifted by two bytes.
    let mut shifted = b"\r\n".to_vec();
    shifted.extend_from_slice(data);
    let moved = scan(&shifted).expect("scan failed after a leading CRLF");
    assert_eq!(moved.headers().len(), headers.len());
    for (a, b) in moved.headers().iter().zip(headers) {
        assert_eq!(a.kind, b.kind);
        assert_eq!(a.value.start, b.value.start + 2);
        assert_eq!(a.value.end, b.value.end + 2);
    }
}

fn check_start_line(msg: &Message<'_>, data: &[u8]) {
    let len = data.len();
    match msg.start {
        StartLine::Request {
            method,
            method_span,
            uri,
            version,
        } => {
            assert!(msg.is_request());
            assert_eq!(msg.method(), Some(method));
            let m = &data[span_in(method_span, len)];
            assert_eq!(msg.method_bytes(), m);
            assert!(!m.is_empty() && m.iter().all(u8::is_ascii_graphic));
            assert_eq!(Method::parse(m), method);
            let u = &data[span_in(uri, len)];
            assert_eq!(msg.request_uri(), Some(u));
            assert!(!u.is_empty() && !u.contains(&b' '));
            let v = &data[span_in(version, len)];
            assert!(v.starts_with(b"SIP/") || v.starts_with(b"sip/"));
            assert!(!v.contains(&b' '));
            assert!(method_span.end < uri.start && uri.end < version.start);
        }
        StartLine::Response { code, reason } => {
            assert!(!msg.is_request());
            assert_eq!(msg.method(), None);
            assert_eq!(msg.request_uri(), None);
            assert!(msg.method_bytes().is_empty());
            assert!((100..=699).contains(&code));
            span_in(reason, len);
        }
    }
}

fn check_framing(data: &[u8], max: usize) {
    check_frame(data, max);
    // Walk the buffer as a connection would: consume frames until one needs more bytes or ends
    // the connection.
    let mut pos = 0;
    loop {
        let rest = &data[pos..];
        let n = match check_frame(rest, max) {
            Frame::Message(n) => {
                // Whatever the framer cut out, the scanner must cope with it.
                let _ = scan(&rest[..n]).map(|m| m.check_request());
                n
            }
            Frame::Skip(n) | Frame::Ping(n) => n,
            _ => break,
        };
        pos += n;
        assert!(pos <= data.len());
    }
}

fn check_frame(data: &[u8], max: usize) -> Frame {
    let frame = next_frame(data, max);
    match frame {
        Frame::Incomplete => assert!(
            data.len() < max.max(4),
            "Incomplete with {} bytes, cap {max}",
            data.len()
        ),
        Frame::Ping(n) => {
            assert_eq!(n, 4);
            assert!(data.starts_with(b"\r\n\r\n"));
        }
        Frame::Skip(n) => {
            assert!(n > 0 && n <= data.len());
            assert!(data[..n] == *b"\r\n" || data[..n] == *b"\n", "Skip({n})");
        }
        Frame::Message(n) => {
            assert!(n > 0 && n <= data.len() && n <= max, "Message({n})");
            let end = contains_crlfcrlf(&data[..n]).expect("message without a header end");
            assert!(end + 4 <= n);
        }
        Frame::MissingContentLength(h) | Frame::BadContentLength(h) => {
            assert!(h >= 4 && h <= data.len() && h <= max, "{frame:?}");
            assert_eq!(&data[h - 4..h], b"\r\n\r\n");
            assert_eq!(
                contains_crlfcrlf(data),
                Some(h - 4),
                "not the first header end"
            );
        }
        Frame::TooLarge => assert!(
            data.len() >= max || contains_crlfcrlf(data).is_some(),
            "TooLarge with {} bytes under cap {max} and no header end",
            data.len()
        ),
    }
    frame
}
