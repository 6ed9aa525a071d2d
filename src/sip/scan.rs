//! Zero-copy scanner for one SIP message held in a byte slice.
//!
//! [`scan`] reads the start line and splits the header section into lines, classifying each header by
//! name (case-insensitive, compact forms equal to long forms, folded continuation lines joined to the
//! header they continue). It records where each header's name and value lie and nothing else: values
//! are interpreted lazily by the accessors and by [`crate::sip::addr`]. Up to [`INLINE_HEADERS`]
//! headers are kept without touching the heap.
//!
//! What it does not do: decide whether the message is acceptable (see [`Message::check_request`]),
//! find message boundaries on a stream (see [`crate::sip::framing`]), or decode bodies.

use memchr::memchr;
use smallvec::SmallVec;

use super::addr::{param, Aor, Uri};
use super::trim_lws;

/// Headers kept on the stack; a message with more spills to the heap, which is correct but slower.
pub const INLINE_HEADERS: usize = 32;

/// Why a byte sequence is not a SIP message at all. Such input is dropped, never answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ScanError {
    #[error("empty message")]
    Empty,
    #[error("malformed start line: {0}")]
    StartLine(&'static str),
    #[error("header line without a colon")]
    NoColon,
    #[error("header with an empty or invalid name")]
    BadHeaderName,
    #[error("continuation line before any header")]
    OrphanContinuation,
    #[error("message larger than 4 GiB")]
    TooLarge,
}

/// The headers sipward looks at. Everything else is [`HeaderKind::Other`] and kept as raw bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HeaderKind {
    Via,
    From,
    To,
    CallId,
    CSeq,
    MaxForwards,
    Contact,
    Expires,
    Authorization,
    ProxyAuthorization,
    Route,
    ContentLength,
    Other,
}

impl HeaderKind {
    /// Classifies a header name; long and compact forms (RFC 3261 7.3.3) are the same kind.
    ///
    /// Each candidate of the name's length is compared as two words that overlap where the name
    /// is shorter than both (the first bytes and the last), with bit 0x20 set in every byte. For a
    /// name as the scanner accepts one (visible ASCII without the colon) that is exact: among such
    /// bytes only letters map onto letters and only `-` onto `-`. Of other bytes only CR maps onto
    /// a name's byte (`-`), as it did before; [`crate::sip::framing`], which passes any trimmed
    /// name, only looks for Content-Length, and a name with a CR in it fails the scan anyway.
    /// The byte-wise comparison this replaced took 344 instructions for the 13 names of the
    /// benches' REGISTER, this 234 (`examples/respond_loop.rs`).
    #[inline]
    pub fn classify(name: &[u8]) -> HeaderKind {
        use HeaderKind::*;
        match name.len() {
            1 => match name[0] | 0x20 {
                b'v' => Via,
                b'f' => From,
                b't' => To,
                b'i' => CallId,
                b'm' => Contact,
                b'l' => ContentLength,
                _ => Other,
            },
            2 if words::<2>(name) == const { ends::<2>(b"to") } => To,
            3 if words::<2>(name) == const { ends::<2>(b"via") } => Via,
            4 => match words::<4>(name) {
                w if w == const { ends::<4>(b"from") } => From,
                w if w == const { ends::<4>(b"cseq") } => CSeq,
                _ => Other,
            },
            5 if words::<4>(name) == const { ends::<4>(b"route") } => Route,
            7 => match words::<4>(name) {
                w if w == const { ends::<4>(b"call-id") } => CallId,
                w if w == const { ends::<4>(b"contact") } => Contact,
                w if w == const { ends::<4>(b"expires") } => Expires,
                _ => Other,
            },
            12 if words::<8>(name) == const { ends::<8>(b"max-forwards") } => MaxForwards,
            13 if words::<8>(name) == const { ends::<8>(b"authorization") } => Authorization,
            14 if words::<8>(name) == const { ends::<8>(b"content-length") } => ContentLength,
            // Two words cover 16 of its 19 bytes; the middle ones are compared on their own.
            19 if words::<8>(name) == const { ends::<8>(b"proxy-authorization") }
                && words::<8>(&name[3..16]) == const { ends::<8>(b"xy-authorizat") } =>
            {
                ProxyAuthorization
            }
            _ => Other,
        }
    }
    /// Long name, as used in responses and in error reasons.
    pub fn name(self) -> &'static str {
        match self {
            HeaderKind::Via => "Via",
            HeaderKind::From => "From",
            HeaderKind::To => "To",
            HeaderKind::CallId => "Call-ID",
            HeaderKind::CSeq => "CSeq",
            HeaderKind::MaxForwards => "Max-Forwards",
            HeaderKind::Contact => "Contact",
            HeaderKind::Expires => "Expires",
            HeaderKind::Authorization => "Authorization",
            HeaderKind::ProxyAuthorization => "Proxy-Authorization",
            HeaderKind::Route => "Route",
            HeaderKind::ContentLength => "Content-Length",
            HeaderKind::Other => "(other)",
        }
    }

    /// Single-valued headers whose index is remembered; a second occurrence makes the request bad.
    /// A table read: 29 instructions fewer per REGISTER than the `match` it replaced.
    #[inline]
    fn single_slot(self) -> Option<usize> {
        const NONE: u8 = u8::MAX;
        // By discriminant (`Other` is the last variant), built from SINGLE_KINDS.
        const SLOTS: [u8; HeaderKind::Other as usize + 1] = {
            let mut slots = [NONE; HeaderKind::Other as usize + 1];
            let mut slot = 0;
            while slot < SINGLE_KINDS.len() {
                slots[SINGLE_KINDS[slot] as usize] = slot as u8;
                slot += 1;
            }
            slots
        };
        // A kind declared after `Other` would read as not single-valued, not panic.
        let slot = SLOTS.get(self as usize).copied().unwrap_or(NONE);
        (slot != NONE).then_some(usize::from(slot))
    }
}

/// The first `N` and the last `N` bytes of `s` (`N` ≤ `s.len()` ≤ 2`N`, so together they cover
/// it), each read as one little-endian word with bit 0x20 set in every byte; see
/// [`HeaderKind::classify`]. The constant names fold at compile time.
#[inline(always)]
const fn ends<const N: usize>(s: &[u8]) -> (u64, u64) {
    let (mut head, mut tail) = (0u64, 0u64);
    let mut i = 0;
    while i < N {
        head |= ((s[i] | 0x20) as u64) << (8 * i);
        tail |= ((s[s.len() - N + i] | 0x20) as u64) << (8 * i);
        i += 1;
    }
    (head, tail)
}

/// [`ends`] of a name read at run time: two loads, not a byte at a time.
#[inline(always)]
fn words<const N: usize>(s: &[u8]) -> (u64, u64) {
    let word = |at: usize| {
        let mut w = [0u8; 8];
        w[..N].copy_from_slice(&s[at..at + N]);
        u64::from_le_bytes(w) | (u64::from_le_bytes([0x20; 8]) >> (64 - 8 * N))
    };
    (word(0), word(s.len() - N))
}

/// A byte that may stand in a header name as the scanner accepts it: visible ASCII but the colon.
#[inline(always)]
fn is_name_byte(b: u8) -> bool {
    b > b' ' && b < 0x7f && b != b':'
}

const SINGLE_KINDS: [HeaderKind; 7] = [
    HeaderKind::From,
    HeaderKind::To,
    HeaderKind::CallId,
    HeaderKind::CSeq,
    HeaderKind::MaxForwards,
    HeaderKind::Expires,
    HeaderKind::ContentLength,
];

/// A byte range of the scanned buffer. `u32` keeps [`Header`] small; messages are capped far below.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Span {
    pub start: u32,
    pub end: u32,
}

impl Span {
    #[inline]
    fn new(start: usize, end: usize) -> Span {
        // Callers only build spans inside a buffer whose length was checked to fit in u32.
        Span {
            start: start as u32,
            end: end as u32,
        }
    }

    #[inline]
    pub fn of<'a>(&self, buf: &'a [u8]) -> &'a [u8] {
        buf.get(self.start as usize..self.end as usize)
            .unwrap_or_default()
    }
}

/// One header line (with its continuation lines when folded).
#[derive(Debug, Clone, Copy)]
pub struct Header {
    pub kind: HeaderKind,
    pub name: Span,
    /// The value without surrounding white space; may contain CRLF + WSP where the header was folded.
    pub value: Span,
    /// The whole header including its name and its line ending(s), for relaying it untouched.
    pub raw: Span,
}

/// Request methods sipward tells apart; anything else keeps its bytes in [`StartLine::Request`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Method {
    Register,
    Invite,
    Ack,
    Cancel,
    Bye,
    Options,
    Message,
    Subscribe,
    Notify,
    Refer,
    Info,
    Update,
    Prack,
    Publish,
    Other,
}

impl Method {
    /// Methods are case-sensitive (RFC 3261 7.1).
    pub fn parse(m: &[u8]) -> Method {
        match m {
            b"REGISTER" => Method::Register,
            b"INVITE" => Method::Invite,
            b"ACK" => Method::Ack,
            b"CANCEL" => Method::Cancel,
            b"BYE" => Method::Bye,
            b"OPTIONS" => Method::Options,
            b"MESSAGE" => Method::Message,
            b"SUBSCRIBE" => Method::Subscribe,
            b"NOTIFY" => Method::Notify,
            b"REFER" => Method::Refer,
            b"INFO" => Method::Info,
            b"UPDATE" => Method::Update,
            b"PRACK" => Method::Prack,
            b"PUBLISH" => Method::Publish,
            _ => Method::Other,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StartLine {
    Request {
        method: Method,
        method_span: Span,
        uri: Span,
        version: Span,
    },
    Response {
        code: u16,
        reason: Span,
    },
}

/// A scanned message borrowing the buffer it was scanned from.
#[derive(Clone)]
pub struct Message<'a> {
    buf: &'a [u8],
    pub start: StartLine,
    headers: SmallVec<[Header; INLINE_HEADERS]>,
    /// Index + 1 of the first occurrence of each single-valued header (0 = absent). u32, like
    /// spans: a 1 MiB message over TCP can hold more than 65,535 header lines.
    single: [u32; 7],
    /// The value of each single-valued header's first occurrence (empty when absent), read
    /// from the header table once the scan is done: [`Message::first`] is asked for them about a
    /// dozen times a request.
    single_values: [Span; 7],
    /// Bit i set: the single-valued header in slot i occurs more than once.
    duplicates: u8,
    /// Everything after the blank line that ends the headers.
    after_headers: Span,
    /// Some header continues on a folded line; see [`Message::has_folding`].
    folded: bool,
}

/// A header that should hold a decimal number does not.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BadNumber;

/// Why a request cannot be processed although it can be answered: the reason phrase of a 400 (or the
/// status of another final response), naming the problem.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Problem {
    pub code: u16,
    pub reason: &'static str,
}

impl Problem {
    const fn bad(reason: &'static str) -> Problem {
        Problem { code: 400, reason }
    }
}

/// A From or To header value as [`Message::check_request`] parsed it: what the respond path uses
/// of it. (The display name is left out: it is never used, and this is moved with every pending
/// request.)
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Party<'a> {
    pub uri: Uri<'a>,
    /// The header parameters, as [`crate::sip::NameAddr::params`].
    pub params: &'a [u8],
}

impl<'a> Party<'a> {
    /// The address of record; the same as [`Aor::from_header`] on the header value.
    #[inline]
    pub fn aor(&self) -> Aor<'a> {
        Aor::from_uri(&self.uri)
    }
}

/// What [`Message::check_request`] parsed on its way, handed on so that nothing after it parses
/// From or To again: the policy (in-dialog or not), the AOR for the verdict and the response's To
/// tag all come from here.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Parties<'a> {
    pub from: Party<'a>,
    pub to: Party<'a>,
    /// Whether To carries a `tag` parameter, i.e. the request is inside a dialog; the same as
    /// [`crate::sip::reply::to_has_tag`].
    pub to_tagged: bool,
}

/// Scans one message. Bytes after the header section are the body (see [`Message::body`]).
pub fn scan(buf: &[u8]) -> Result<Message<'_>, ScanError> {
    let mut msg = Message::unscanned(buf);
    scan_into(&mut msg)?;
    Ok(msg)
}

/// [`scan`] of `msg`'s buffer (see [`Message::unscanned`]) into `msg`, whatever it held. A
/// `Message` is a kilobyte (its inline header table), and returning one from [`scan`] copies it:
/// a hot caller that keeps it where it is saves that copy (124 instructions a request under
/// callgrind). On `Err` the message is to be thrown away.
#[inline]
pub fn scan_into(msg: &mut Message<'_>) -> Result<(), ScanError> {
    let buf = msg.buf;
    msg.headers.clear();
    msg.single = [0; 7];
    msg.duplicates = 0;
    msg.folded = false;
    if buf.len() > u32::MAX as usize {
        return Err(ScanError::TooLarge);
    }
    // RFC 3261 7.5: ignore CRLFs before the start line (keep-alives on streams, sloppy senders).
    let mut pos = 0;
    while pos < buf.len() && (buf[pos] == b'\r' || buf[pos] == b'\n') {
        pos += 1;
    }
    if pos == buf.len() {
        return Err(ScanError::Empty);
    }
    let mut lf = LineFeeds::new(buf, pos);
    let (line, next) = lf.line_at(pos);
    msg.start = start_line(buf, line)?;
    pos = next;
    msg.after_headers = Span::new(buf.len(), buf.len());
    while pos < buf.len() {
        let (line, next) = lf.line_at(pos);
        if line.0 == line.1 {
            msg.after_headers = Span::new(next, buf.len());
            break;
        }
        let first = buf[line.0];
        if first == b' ' || first == b'\t' {
            let last = msg
                .headers
                .last_mut()
                .ok_or(ScanError::OrphanContinuation)?;
            msg.folded = true;
            if let Some((cs, ce)) = content_bounds(&buf[line.0..line.1]) {
                // The value now spans the fold; CRLF + WSP inside it reads as white space.
                if last.value.start == last.value.end {
                    last.value = Span::new(line.0 + cs, line.0 + ce);
                } else {
                    last.value.end = (line.0 + ce) as u32;
                }
            }
            last.raw.end = next as u32;
        } else {
            let (name_start, name_end, colon) = name_and_colon(buf, line)?;
            let name = &buf[name_start..name_end];
            let kind = HeaderKind::classify(name);
            let (vs, ve) = content_bounds(&buf[colon + 1..line.1]).unwrap_or((0, 0));
            let (vstart, vend) = (colon + 1 + vs, colon + 1 + ve);
            let header = Header {
                kind,
                name: Span::new(name_start, name_end),
                value: Span::new(vstart, vend),
                raw: Span::new(line.0, next),
            };
            if let Some(slot) = kind.single_slot() {
                if msg.single[slot] == 0 {
                    // Fits: there are fewer header lines than bytes, and the length fits in u32.
                    msg.single[slot] = (msg.headers.len() + 1) as u32;
                } else {
                    msg.duplicates |= 1 << slot;
                }
            }
            msg.headers.push(header);
        }
        pos = next;
    }
    // After the loop: a folded line may still have moved a value's end.
    for (value, &i) in msg.single_values.iter_mut().zip(&msg.single) {
        *value = match (i as usize).checked_sub(1) {
            Some(i) => msg.headers.get(i).map_or(Span::default(), |h| h.value),
            None => Span::default(),
        };
    }
    Ok(())
}

/// Where the header name on `line` starts and ends, and where its colon is: the name is what
/// precedes the first colon, without surrounding white space, and must be non-empty visible ASCII.
///
/// The usual `Name:` or `Name :` is read in one pass that stops at the first byte that cannot be
/// in a name; anything else (no colon, odd white space, bad bytes) goes the general way.
#[inline]
fn name_and_colon(buf: &[u8], line: (usize, usize)) -> Result<(usize, usize, usize), ScanError> {
    let bytes = &buf[line.0..line.1];
    let name_len = name_run(bytes);
    let mut at = name_len;
    while matches!(bytes.get(at), Some(b' ' | b'\t')) {
        at += 1;
    }
    if name_len > 0 && bytes.get(at) == Some(&b':') {
        return Ok((line.0, line.0 + name_len, line.0 + at));
    }
    let colon = memchr(b':', bytes).ok_or(ScanError::NoColon)?;
    let before = &bytes[..colon];
    let start = before.iter().position(|&b| !super::is_lws(b));
    let end = before
        .iter()
        .rposition(|&b| !super::is_lws(b))
        .map(|e| e + 1);
    match (start, end) {
        (Some(s), Some(e)) if bytes[s..e].iter().all(|&b| is_name_byte(b)) => {
            Ok((line.0 + s, line.0 + e, line.0 + colon))
        }
        _ => Err(ScanError::BadHeaderName),
    }
}

/// How many bytes at the start of `bytes` may stand in a header name (see [`is_name_byte`]).
/// Eight bytes are tested at a time, which halves the cost of the name on a typical line; the
/// bytes left over at the end of a short line go one by one.
#[inline]
fn name_run(bytes: &[u8]) -> usize {
    let mut words = bytes.chunks_exact(8);
    let mut at = 0;
    for word in &mut words {
        let word = u64::from_le_bytes(word.try_into().unwrap_or_default());
        let stops = super::bytes_below(word, b'!')
            | super::bytes_above(word, b'~')
            | super::zero_bytes(word ^ (super::LOW_BITS * u64::from(b':')));
        if stops != 0 {
            return at + super::first_marked(stops);
        }
        at += 8;
    }
    let rest = words.remainder();
    at + rest
        .iter()
        .position(|&b| !is_name_byte(b))
        .unwrap_or(rest.len())
}

/// Start and end of `s` without surrounding white space; `None` when it is all white space.
#[inline]
fn content_bounds(s: &[u8]) -> Option<(usize, usize)> {
    // `Name: value`: one space before the value and nothing after it, settled without a loop. The
    // same shape as `trim_lws`'s, kept here as offsets: deriving them from `trim_lws`'s slice cost
    // 16 instructions a header line more (callgrind, `examples/respond_loop.rs`).
    if let [b' ', second, .., last] = s {
        if *second > b' ' && *last > b' ' {
            return Some((1, s.len()));
        }
    }
    let start = s.iter().position(|&b| !super::is_lws(b))?;
    let end = s.iter().rposition(|&b| !super::is_lws(b))? + 1;
    Some((start, end))
}

/// The line feeds of a buffer in order, from a bitmask of each 64-byte block (see
/// [`super::byte_mask64`]): a block's mask is made once and each line feed then costs a few
/// instructions, where a search per line (memchr's SSE2 searcher, called directly) paid its set-up
/// and its first unaligned load on every header line.
struct LineFeeds<'a> {
    buf: &'a [u8],
    /// Where the block in `mask` starts: a multiple of 64.
    base: usize,
    /// The block's line feeds not yet returned, byte `base + i` in bit i.
    mask: u64,
}

impl<'a> LineFeeds<'a> {
    /// The line feeds of `buf` from `pos` on.
    #[inline]
    fn new(buf: &'a [u8], pos: usize) -> LineFeeds<'a> {
        let base = pos & !63;
        LineFeeds {
            buf,
            base,
            mask: Self::block(buf, base) & (!0u64 << (pos - base)),
        }
    }

    /// The mask of the 64 bytes from `base`; the short last block is read from a copy padded with
    /// zeros, which are not line feeds.
    #[inline]
    fn block(buf: &[u8], base: usize) -> u64 {
        match buf.get(base..base + 64) {
            Some(block) => super::byte_mask64(block.try_into().unwrap_or(&[0; 64]), b'\n'),
            None => {
                let rest = buf.get(base..).unwrap_or_default();
                let mut padded = [0u8; 64];
                padded[..rest.len()].copy_from_slice(rest);
                super::byte_mask64(&padded, b'\n')
            }
        }
    }

    /// The next line feed, if any is left.
    #[inline]
    fn next(&mut self) -> Option<usize> {
        while self.mask == 0 {
            self.base += 64;
            if self.base >= self.buf.len() {
                return None;
            }
            self.mask = Self::block(self.buf, self.base);
        }
        let at = self.base + self.mask.trailing_zeros() as usize;
        self.mask &= self.mask - 1;
        Some(at)
    }

    /// The line starting at `pos`, the byte after the last line feed returned (or where the
    /// search began): (start, end without CR/LF) and where the next line starts. A bare LF ends a
    /// line too; RFC 3261 asks for CRLF but senders in the wild use LF alone.
    #[inline]
    fn line_at(&mut self, pos: usize) -> ((usize, usize), usize) {
        let buf = self.buf;
        match self.next() {
            Some(lf) => {
                let end = if lf > pos && buf[lf - 1] == b'\r' {
                    lf - 1
                } else {
                    lf
                };
                ((pos, end), lf + 1)
            }
            None => ((pos, buf.len()), buf.len()),
        }
    }
}

fn start_line(buf: &[u8], (s, e): (usize, usize)) -> Result<StartLine, ScanError> {
    let line = &buf[s..e];
    if line.len() >= 8 && line[..8].eq_ignore_ascii_case(b"SIP/2.0 ") {
        let code = line
            .get(8..11)
            .ok_or(ScanError::StartLine("no status code"))?;
        if !code.iter().all(u8::is_ascii_digit) || line.get(11).is_some_and(|&b| b != b' ') {
            return Err(ScanError::StartLine("status code is not three digits"));
        }
        let code = code.iter().fold(0u16, |a, d| a * 10 + u16::from(d - b'0'));
        if !(100..=699).contains(&code) {
            return Err(ScanError::StartLine("status code out of range"));
        }
        let reason = if line.len() > 12 {
            Span::new(s + 12, e)
        } else {
            Span::new(e, e)
        };
        return Ok(StartLine::Response { code, reason });
    }
    let sp1 = super::find_byte_near(line, b' ').ok_or(ScanError::StartLine("no request URI"))?;
    let rest = &line[sp1 + 1..];
    let sp2 = super::find_byte(rest, b' ').ok_or(ScanError::StartLine("no SIP version"))?;
    let method = &line[..sp1];
    let uri = &rest[..sp2];
    let version = &rest[sp2 + 1..];
    if method.is_empty() || !method.iter().all(|&b| b.is_ascii_graphic()) {
        return Err(ScanError::StartLine("invalid method"));
    }
    if uri.is_empty() || version.is_empty() || super::find_byte_near(version, b' ').is_some() {
        return Err(ScanError::StartLine("expected METHOD URI VERSION"));
    }
    if !version.starts_with(b"SIP/") && !version.starts_with(b"sip/") {
        return Err(ScanError::StartLine("not a SIP version"));
    }
    Ok(StartLine::Request {
        method: Method::parse(method),
        method_span: Span::new(s, s + sp1),
        uri: Span::new(s + sp1 + 1, s + sp1 + 1 + sp2),
        version: Span::new(s + sp1 + 2 + sp2, e),
    })
}

/// Shows the start line and header names only: header values may hold bearer tokens.
impl std::fmt::Debug for Message<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let names: Vec<_> = self
            .headers
            .iter()
            .map(|h| String::from_utf8_lossy(h.name.of(self.buf)))
            .collect();
        f.debug_struct("Message")
            .field("start", &self.start)
            .field("headers", &names)
            .finish_non_exhaustive()
    }
}

impl<'a> Message<'a> {
    /// A message not scanned yet, for [`scan_into`]: no start line (it reads as a response with
    /// status 0), no headers.
    #[inline]
    pub fn unscanned(buf: &'a [u8]) -> Message<'a> {
        Message {
            buf,
            start: StartLine::Response {
                code: 0,
                reason: Span::default(),
            },
            headers: SmallVec::new(),
            single: [0; 7],
            single_values: [Span::default(); 7],
            duplicates: 0,
            after_headers: Span::default(),
            folded: false,
        }
    }

    /// The buffer this message was scanned from.
    #[inline]
    pub fn bytes(&self) -> &'a [u8] {
        self.buf
    }

    #[inline]
    pub fn is_request(&self) -> bool {
        matches!(self.start, StartLine::Request { .. })
    }

    /// The method, or `None` for a response.
    #[inline]
    pub fn method(&self) -> Option<Method> {
        match self.start {
            StartLine::Request { method, .. } => Some(method),
            StartLine::Response { .. } => None,
        }
    }

    /// The method as sent, or empty for a response.
    #[inline]
    pub fn method_bytes(&self) -> &'a [u8] {
        match self.start {
            StartLine::Request { method_span, .. } => method_span.of(self.buf),
            StartLine::Response { .. } => b"",
        }
    }

    #[inline]
    pub fn request_uri(&self) -> Option<&'a [u8]> {
        match self.start {
            StartLine::Request { uri, .. } => Some(uri.of(self.buf)),
            StartLine::Response { .. } => None,
        }
    }

    /// Whether some header continues on a folded line. When none does, no header value holds a
    /// line break, and a response can copy values without looking for folds to undo.
    #[inline]
    pub fn has_folding(&self) -> bool {
        self.folded
    }

    /// Every header in order, including the ones sipward does not interpret.
    #[inline]
    pub fn headers(&self) -> &[Header] {
        &self.headers
    }

    #[inline]
    pub fn name_of(&self, h: &Header) -> &'a [u8] {
        h.name.of(self.buf)
    }

    #[inline]
    pub fn value_of(&self, h: &Header) -> &'a [u8] {
        h.value.of(self.buf)
    }

    /// The first value of a single-valued header (From, To, Call-ID, CSeq, Max-Forwards, Expires,
    /// Content-Length); for other kinds, the first header line of that kind.
    #[inline]
    pub fn first(&self, kind: HeaderKind) -> Option<&'a [u8]> {
        match kind.single_slot() {
            Some(slot) => (self.single[slot] != 0).then(|| self.single_values[slot].of(self.buf)),
            None => self
                .headers
                .iter()
                .find(|h| h.kind == kind)
                .map(|h| h.value.of(self.buf)),
        }
    }

    /// Values of every header line of `kind`, in order, without splitting comma-separated lists.
    #[inline]
    pub fn lines(&self, kind: HeaderKind) -> impl Iterator<Item = &'a [u8]> + '_ {
        let buf = self.buf;
        self.headers
            .iter()
            .filter(move |h| h.kind == kind)
            .map(move |h| h.value.of(buf))
    }

    /// Every value of a list header (Via, Contact, Route), in order: one per header line and one per
    /// comma-separated element within a line.
    #[inline]
    pub fn values(&self, kind: HeaderKind) -> impl Iterator<Item = &'a [u8]> + '_ {
        self.lines(kind).flat_map(split_list)
    }

    /// Every Via value in order, top first.
    #[inline]
    pub fn vias(&self) -> impl Iterator<Item = &'a [u8]> + '_ {
        self.values(HeaderKind::Via)
    }

    #[inline]
    pub fn top_via(&self) -> Option<&'a [u8]> {
        // The first element of the first Via line that has one, as `vias().next()`, without the
        // bookkeeping of the flattening iterator.
        self.lines(HeaderKind::Via)
            .find_map(|line| split_list(line).next())
    }

    /// The header section's end and the body as received (datagrams may carry trailing bytes that
    /// Content-Length excludes; [`Message::body`] applies it).
    #[inline]
    pub fn after_headers(&self) -> &'a [u8] {
        self.after_headers.of(self.buf)
    }

    /// Offset where the body starts.
    #[inline]
    pub fn body_offset(&self) -> usize {
        self.after_headers.start as usize
    }

    /// Content-Length as a number: `Ok(None)` when absent, `Err` when not a decimal number.
    pub fn content_length(&self) -> Result<Option<usize>, BadNumber> {
        match self.first(HeaderKind::ContentLength) {
            None => Ok(None),
            Some(v) => parse_decimal(v).map(Some).ok_or(BadNumber),
        }
    }

    /// The body as Content-Length delimits it, or everything after the headers when it is absent.
    pub fn body(&self) -> &'a [u8] {
        let rest = self.after_headers();
        match self.content_length() {
            Ok(Some(n)) if n <= rest.len() => &rest[..n],
            _ => rest,
        }
    }

    /// The header that occurs more than once although it must not, if any.
    pub fn duplicate(&self) -> Option<HeaderKind> {
        if self.duplicates == 0 {
            return None;
        }
        (0..SINGLE_KINDS.len())
            .find(|i| self.duplicates & (1 << i) != 0)
            .map(|i| SINGLE_KINDS[i])
    }

    /// What a request needs before it can be processed: the headers every response copies (RFC 3261
    /// 8.1.1) present, parseable and unique. `Err` carries the reason phrase of the 400 to send;
    /// `Ok` the parsed From and To.
    pub fn check_request(&self) -> Result<Parties<'a>, Problem> {
        let StartLine::Request { version, .. } = self.start else {
            return Err(Problem::bad("Not a request"));
        };
        if version.of(self.buf) != b"SIP/2.0" {
            return Err(Problem {
                code: 505,
                reason: "Version Not Supported",
            });
        }
        if let Some(kind) = self.duplicate() {
            return Err(Problem::bad(match kind {
                HeaderKind::From => "Duplicate From header",
                HeaderKind::To => "Duplicate To header",
                HeaderKind::CallId => "Duplicate Call-ID header",
                HeaderKind::CSeq => "Duplicate CSeq header",
                HeaderKind::MaxForwards => "Duplicate Max-Forwards header",
                HeaderKind::Expires => "Duplicate Expires header",
                _ => "Duplicate Content-Length header",
            }));
        }
        let from = self
            .first(HeaderKind::From)
            .ok_or(Problem::bad("Missing From header"))?;
        let from = party(from).ok_or(Problem::bad("Malformed From header"))?;
        let to = self
            .first(HeaderKind::To)
            .ok_or(Problem::bad("Missing To header"))?;
        let to = party(to).ok_or(Problem::bad("Malformed To header"))?;
        let call_id = self
            .first(HeaderKind::CallId)
            .ok_or(Problem::bad("Missing Call-ID header"))?;
        if call_id.is_empty() || super::has_lws(call_id) {
            return Err(Problem::bad("Malformed Call-ID header"));
        }
        let cseq = self
            .first(HeaderKind::CSeq)
            .ok_or(Problem::bad("Missing CSeq header"))?;
        let (_, cseq_method) = parse_cseq(cseq).ok_or(Problem::bad("Malformed CSeq header"))?;
        // ACK and CANCEL carry the CSeq number of the request they refer to but their own method.
        if cseq_method != self.method_bytes() {
            return Err(Problem::bad("CSeq method does not match the request"));
        }
        if let Some(mf) = self.first(HeaderKind::MaxForwards) {
            if parse_decimal(mf).is_none_or(|n| n > 255) {
                return Err(Problem::bad("Malformed Max-Forwards header"));
            }
        }
        if let Some(exp) = self.first(HeaderKind::Expires) {
            if parse_decimal(exp).is_none_or(|n| n > u32::MAX as usize) {
                return Err(Problem::bad("Malformed Expires header"));
            }
        }
        match self.content_length() {
            Err(BadNumber) => return Err(Problem::bad("Malformed Content-Length header")),
            // RFC 3261 18.3: a datagram shorter than its Content-Length is an error.
            Ok(Some(n)) if n > self.after_headers().len() => {
                return Err(Problem::bad("Content-Length exceeds the body"))
            }
            _ => {}
        }
        Ok(Parties {
            from,
            to,
            to_tagged: param(to.params, b"tag").is_some(),
        })
    }
}

fn party(v: &[u8]) -> Option<Party<'_>> {
    let (addr, uri) = super::addr::parse_name_addr_uri(v).ok()?;
    Some(Party {
        uri,
        params: addr.params,
    })
}

/// CSeq value: (sequence number, method).
pub fn parse_cseq(v: &[u8]) -> Option<(u32, &[u8])> {
    let v = trim_lws(v);
    // The digits and where they end, in one pass: the number is then known without a second.
    let split = v.iter().position(|&b| !b.is_ascii_digit())?;
    if !super::is_lws(v[split]) {
        return None;
    }
    let num = decimal_digits(&v[..split])?;
    let method = trim_lws(&v[split..]);
    if method.is_empty() || super::has_lws(method) {
        return None;
    }
    Some((u32::try_from(num).ok()?, method))
}

/// A decimal number of at most 10 digits (RFC 3261 caps these values at 2^32 - 1).
pub fn parse_decimal(v: &[u8]) -> Option<usize> {
    decimal_digits(trim_lws(v))
}

/// `digits` as a number: one to ten ASCII digits and nothing else. One loop that checks and adds
/// up, where a check of every byte and then a sum of them took two.
#[inline]
fn decimal_digits(digits: &[u8]) -> Option<usize> {
    if digits.is_empty() || digits.len() > 10 {
        return None;
    }
    let mut n = 0usize;
    for &b in digits {
        let d = b.wrapping_sub(b'0');
        if d > 9 {
            return None;
        }
        n = n * 10 + usize::from(d);
    }
    Some(n)
}

/// Splits a header value at commas that are outside quoted strings and angle brackets; elements are
/// trimmed and empty ones skipped.
pub fn split_list(v: &[u8]) -> impl Iterator<Item = &[u8]> {
    let mut rest = v;
    std::iter::from_fn(move || loop {
        if rest.is_empty() {
            return None;
        }
        // Fast path for the usual single-element value: with no comma at all nothing can be cut, so
        // the loop below would take the whole rest; memchr finds that out without the per-byte
        // quote/bracket tracking (which dominated `top_via` and the Contact echo in benchmarks).
        if !super::has_byte(rest, b',') {
            let item = trim_lws(rest);
            rest = &[];
            return (!item.is_empty()).then_some(item);
        }
        let mut quoted = false;
        let mut angle = false;
        let mut escaped = false;
        let mut cut = rest.len();
        for (i, &b) in rest.iter().enumerate() {
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
                    cut = i;
                    break;
                }
                _ => {}
            }
        }
        let item = trim_lws(&rest[..cut]);
        rest = rest.get(cut + 1..).unwrap_or_default();
        if !item.is_empty() {
            return Some(item);
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cseq_and_decimals_read_as_by_splitting_first() {
        // The parsers as they were: split at white space, check every byte, then add up.
        let decimal = |v: &[u8]| {
            let v = trim_lws(v);
            if v.is_empty() || v.len() > 10 || !v.iter().all(u8::is_ascii_digit) {
                return None;
            }
            Some(v.iter().fold(0usize, |a, d| a * 10 + usize::from(d - b'0')))
        };
        fn cseq(v: &[u8]) -> Option<(u32, &[u8])> {
            let decimal = |v: &[u8]| {
                let v = trim_lws(v);
                if v.is_empty() || v.len() > 10 || !v.iter().all(u8::is_ascii_digit) {
                    return None;
                }
                Some(v.iter().fold(0usize, |a, d| a * 10 + usize::from(d - b'0')))
            };
            let v = trim_lws(v);
            let split = v.iter().position(|&b| crate::sip::is_lws(b))?;
            let num = decimal(&v[..split])?;
            let method = trim_lws(&v[split..]);
            if method.is_empty() || crate::sip::has_lws(method) {
                return None;
            }
            Some((u32::try_from(num).ok()?, method))
        }
        const PIECES: [&[u8]; 12] = [
            b"0",
            b"7",
            b"99999",
            b" ",
            b"\t",
            b"\r\n ",
            b"R",
            b"INVITE",
            b"-",
            b"/",
            b":",
            b"4294967296",
        ];
        for v in crate::sip::tests::joined_pieces(&PIECES, 5) {
            assert_eq!(parse_decimal(&v), decimal(&v), "{v:?}");
            assert_eq!(parse_cseq(&v), cseq(&v), "{v:?}");
        }
    }

    #[test]
    fn line_feeds_are_those_a_byte_loop_finds() {
        // Buffers of every length to three blocks and a bit, line feeds at varying density, so
        // that lines start and end on both sides of block edges and the last block is short.
        for len in 0..200 {
            for density in [1, 3, 17, 64, 1000] {
                let buf: Vec<u8> = (0..len)
                    .map(|i| match (i * 7 + len) % density {
                        0 => b'\n',
                        1 => b'\r',
                        _ => b'a' + (i % 26) as u8,
                    })
                    .collect();
                for pos in 0..=len {
                    let want: Vec<usize> = (pos..len).filter(|&i| buf[i] == b'\n').collect();
                    let mut lf = LineFeeds::new(&buf, pos);
                    let got: Vec<usize> = std::iter::from_fn(|| lf.next()).collect();
                    assert_eq!(got, want, "len {len}, density {density}, from {pos}");
                }
            }
        }
    }

    pub(crate) const REGISTER: &[u8] = b"REGISTER sip:example.com SIP/2.0\r\n\
Via: SIP/2.0/UDP 192.0.2.10:5060;branch=z9hG4bK776asdhds;rport\r\n\
Max-Forwards: 70\r\n\
To: \"Alice\" <sip:alice@example.com>\r\n\
From: \"Alice\" <sip:alice@example.com>;tag=1928301774\r\n\
Call-ID: a84b4c76e66710@pc33.example.com\r\n\
CSeq: 314159 REGISTER\r\n\
Contact: <sip:alice@192.0.2.10:5060;transport=udp>;expires=600\r\n\
Authorization: Bearer eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJhbGljZSJ9.c2lnbmF0dXJl\r\n\
Expires: 600\r\n\
User-Agent: test\r\n\
Content-Length: 0\r\n\r\n";

    #[test]
    fn request_line_and_headers() {
        let m = scan(REGISTER).unwrap();
        assert_eq!(m.method(), Some(Method::Register));
        assert_eq!(m.request_uri(), Some(&b"sip:example.com"[..]));
        assert_eq!(
            m.first(HeaderKind::CallId),
            Some(&b"a84b4c76e66710@pc33.example.com"[..])
        );
        assert_eq!(m.first(HeaderKind::CSeq), Some(&b"314159 REGISTER"[..]));
        assert_eq!(m.first(HeaderKind::Expires), Some(&b"600"[..]));
        assert_eq!(m.content_length(), Ok(Some(0)));
        assert_eq!(m.headers().len(), 11);
        let other = m
            .headers()
            .iter()
            .find(|h| h.kind == HeaderKind::Other)
            .unwrap();
        assert_eq!(m.name_of(other), b"User-Agent");
        assert_eq!(other.raw.of(REGISTER), b"User-Agent: test\r\n");
        assert!(m.check_request().is_ok());
    }

    #[test]
    fn debug_output_holds_no_header_values() {
        let shown = format!("{:?}", scan(REGISTER).unwrap());
        assert!(shown.contains("Authorization"));
        assert!(!shown.contains("eyJ"), "{shown}");
    }

    #[test]
    fn status_line() {
        let m = scan(b"SIP/2.0 180 Ringing\r\nVia: SIP/2.0/UDP h;branch=z9hG4bKx\r\n\r\n").unwrap();
        match m.start {
            StartLine::Response { code, reason } => {
                assert_eq!(code, 180);
                assert_eq!(reason.of(m.bytes()), b"Ringing");
            }
            _ => panic!("not a response"),
        }
        assert!(!m.is_request());
        assert!(scan(b"SIP/2.0 18x Ringing\r\n\r\n").is_err());
        assert!(scan(b"SIP/2.0 800 Nope\r\n\r\n").is_err());
    }

    #[test]
    fn compact_forms_equal_long_forms() {
        let m = scan(
            b"INVITE sip:b@h SIP/2.0\r\nv: SIP/2.0/UDP a;branch=z9hG4bK1\r\nf: <sip:a@h>;tag=1\r\n\
t: <sip:b@h>\r\ni: cid\r\nCSeq: 1 INVITE\r\nm: <sip:a@1.2.3.4>\r\nl: 0\r\n\r\n",
        )
        .unwrap();
        assert_eq!(m.top_via(), Some(&b"SIP/2.0/UDP a;branch=z9hG4bK1"[..]));
        assert_eq!(m.first(HeaderKind::From), Some(&b"<sip:a@h>;tag=1"[..]));
        assert_eq!(m.first(HeaderKind::To), Some(&b"<sip:b@h>"[..]));
        assert_eq!(m.first(HeaderKind::CallId), Some(&b"cid"[..]));
        assert_eq!(m.first(HeaderKind::Contact), Some(&b"<sip:a@1.2.3.4>"[..]));
        assert_eq!(m.content_length(), Ok(Some(0)));
        assert!(m.check_request().is_ok());
    }

    #[test]
    fn classify_agrees_with_comparing_names_byte_by_byte() {
        use HeaderKind::*;
        const NAMES: [(&str, HeaderKind); 19] = [
            ("via", Via),
            ("v", Via),
            ("from", From),
            ("f", From),
            ("to", To),
            ("t", To),
            ("call-id", CallId),
            ("i", CallId),
            ("cseq", CSeq),
            ("max-forwards", MaxForwards),
            ("contact", Contact),
            ("m", Contact),
            ("expires", Expires),
            ("authorization", Authorization),
            ("proxy-authorization", ProxyAuthorization),
            ("route", Route),
            ("content-length", ContentLength),
            ("l", ContentLength),
            ("proxy-require", Other),
        ];
        let reference = |name: &[u8]| {
            NAMES
                .iter()
                .find(|(n, _)| n.as_bytes().eq_ignore_ascii_case(name))
                .map_or(Other, |&(_, k)| k)
        };
        // Every byte a name may hold, at every position of every known name (so every name one
        // byte away from a known one, in either case), and each name cut short or made longer.
        let name_bytes: Vec<u8> = (b'!'..=b'~').filter(|&b| b != b':').collect();
        for (n, _) in NAMES {
            for name in [n.to_string(), n.to_ascii_uppercase()] {
                let mut name = name.into_bytes();
                for at in 0..name.len() {
                    let keep = name[at];
                    for &b in &name_bytes {
                        name[at] = b;
                        assert_eq!(HeaderKind::classify(&name), reference(&name), "{name:?}");
                    }
                    name[at] = keep;
                }
                for len in 1..name.len() {
                    assert_eq!(HeaderKind::classify(&name[..len]), reference(&name[..len]));
                }
                for &b in &name_bytes {
                    let longer = [&name[..], &[b]].concat();
                    assert_eq!(
                        HeaderKind::classify(&longer),
                        reference(&longer),
                        "{longer:?}"
                    );
                    let longer = [&[b], &name[..]].concat();
                    assert_eq!(
                        HeaderKind::classify(&longer),
                        reference(&longer),
                        "{longer:?}"
                    );
                }
            }
        }
    }

    #[test]
    fn scan_into_reads_as_scan_and_forgets_what_the_message_held() {
        let raw = b"INVITE sip:b@h SIP/2.0\r\nVia: SIP/2.0/UDP a;branch=z9hG4bK1\r\nf: <sip:a@h>;tag=1\r\n\
t: <sip:b@h>\r\nt: <sip:c@h>\r\ni: cid\r\nCSeq: 1 INVITE\r\nX: a\r\n  folded\r\nl: 4\r\n\r\nbody";
        let want = scan(raw).unwrap();
        let mut msg = Message::unscanned(raw);
        for _ in 0..2 {
            scan_into(&mut msg).unwrap();
            assert_eq!(msg.start, want.start);
            assert_eq!(msg.headers().len(), want.headers().len());
            for (a, b) in msg.headers().iter().zip(want.headers()) {
                assert_eq!(
                    (a.kind, a.name, a.value, a.raw),
                    (b.kind, b.name, b.value, b.raw)
                );
            }
            assert_eq!(msg.duplicate(), Some(HeaderKind::To));
            assert_eq!(msg.first(HeaderKind::To), Some(&b"<sip:b@h>"[..]));
            assert_eq!(msg.first(HeaderKind::CSeq), Some(&b"1 INVITE"[..]));
            assert_eq!(msg.first(HeaderKind::Expires), None);
            assert!(msg.has_folding());
            assert_eq!(msg.body(), b"body");
        }
        assert_eq!(
            scan_into(&mut Message::unscanned(b"\r\n")).unwrap_err(),
            ScanError::Empty
        );
    }

    #[test]
    fn single_slots_are_the_single_kinds_in_order() {
        use HeaderKind::*;
        for (slot, &kind) in SINGLE_KINDS.iter().enumerate() {
            assert_eq!(kind.single_slot(), Some(slot), "{kind:?}");
        }
        for kind in [
            Via,
            Contact,
            Authorization,
            ProxyAuthorization,
            Route,
            Other,
        ] {
            assert_eq!(kind.single_slot(), None, "{kind:?}");
        }
    }

    #[test]
    fn header_names_are_case_insensitive() {
        for name in ["call-id", "CALL-ID", "Call-Id", "cAlL-iD"] {
            assert_eq!(HeaderKind::classify(name.as_bytes()), HeaderKind::CallId);
        }
        assert_eq!(
            HeaderKind::classify(b"PROXY-authorization"),
            HeaderKind::ProxyAuthorization
        );
        assert_eq!(HeaderKind::classify(b"V"), HeaderKind::Via);
        assert_eq!(HeaderKind::classify(b"X-Via"), HeaderKind::Other);
    }

    #[test]
    fn folded_header_is_joined_to_the_previous_one() {
        let m = scan(
            b"OPTIONS sip:h SIP/2.0\r\nVia: SIP/2.0/UDP a;branch=z9hG4bK1\r\nSubject: I know\r\n  you're there\r\n\
From: <sip:a@h>\r\n ;tag=9\r\nTo:\r\n\t<sip:b@h>\r\nCall-ID: c\r\nCSeq: 2 OPTIONS\r\n\r\n",
        )
        .unwrap();
        assert_eq!(
            m.first(HeaderKind::From),
            Some(&b"<sip:a@h>\r\n ;tag=9"[..])
        );
        assert_eq!(m.first(HeaderKind::To), Some(&b"<sip:b@h>"[..]));
        let subj = m
            .headers()
            .iter()
            .find(|h| h.kind == HeaderKind::Other)
            .unwrap();
        assert_eq!(m.value_of(subj), b"I know\r\n  you're there");
        assert!(m.check_request().is_ok());
    }

    #[test]
    fn continuation_before_any_header_is_an_error() {
        assert_eq!(
            scan(b"OPTIONS sip:h SIP/2.0\r\n folded: x\r\n\r\n").unwrap_err(),
            ScanError::OrphanContinuation
        );
    }

    #[test]
    fn via_values_in_order_across_lines_and_commas() {
        let m = scan(
            b"BYE sip:h SIP/2.0\r\nVia: SIP/2.0/UDP a;branch=z9hG4bK1, SIP/2.0/TCP b;branch=z9hG4bK2\r\n\
Via: SIP/2.0/UDP c;branch=z9hG4bK3;x=\"q,uoted\"\r\nv: SIP/2.0/UDP d;branch=z9hG4bK4\r\n\r\n",
        )
        .unwrap();
        let vias: Vec<&[u8]> = m.vias().collect();
        assert_eq!(
            vias,
            vec![
                &b"SIP/2.0/UDP a;branch=z9hG4bK1"[..],
                b"SIP/2.0/TCP b;branch=z9hG4bK2",
                b"SIP/2.0/UDP c;branch=z9hG4bK3;x=\"q,uoted\"",
                b"SIP/2.0/UDP d;branch=z9hG4bK4",
            ]
        );
    }

    #[test]
    fn bare_lf_line_endings_are_accepted() {
        let m = scan(b"OPTIONS sip:h SIP/2.0\nVia: SIP/2.0/UDP a;branch=z9hG4bK1\nCall-ID: x\n\n")
            .unwrap();
        assert_eq!(m.first(HeaderKind::CallId), Some(&b"x"[..]));
    }

    #[test]
    fn leading_crlf_is_skipped() {
        let m = scan(b"\r\n\r\nOPTIONS sip:h SIP/2.0\r\nCall-ID: x\r\n\r\n").unwrap();
        assert_eq!(m.method(), Some(Method::Options));
    }

    #[test]
    fn body_is_delimited_by_content_length() {
        let m = scan(b"MESSAGE sip:h SIP/2.0\r\nContent-Length: 5\r\n\r\nhello-trailing").unwrap();
        assert_eq!(m.body(), b"hello");
        let m = scan(b"MESSAGE sip:h SIP/2.0\r\n\r\nall of it").unwrap();
        assert_eq!(m.body(), b"all of it");
    }

    #[test]
    fn structural_errors() {
        assert_eq!(scan(b"").unwrap_err(), ScanError::Empty);
        assert_eq!(scan(b"\r\n\r\n").unwrap_err(), ScanError::Empty);
        assert!(matches!(
            scan(b"REGISTER\r\n\r\n"),
            Err(ScanError::StartLine(_))
        ));
        assert!(matches!(
            scan(b"REGISTER sip:h\r\n\r\n"),
            Err(ScanError::StartLine(_))
        ));
        assert!(matches!(
            scan(b"REGISTER sip:h HTTP/1.1\r\n\r\n"),
            Err(ScanError::StartLine(_))
        ));
        assert_eq!(
            scan(b"REGISTER sip:h SIP/2.0\r\nNoColonHere\r\n\r\n").unwrap_err(),
            ScanError::NoColon
        );
        assert_eq!(
            scan(b"REGISTER sip:h SIP/2.0\r\n: empty\r\n\r\n").unwrap_err(),
            ScanError::BadHeaderName
        );
    }

    fn problem(msg: &[u8]) -> &'static str {
        scan(msg).unwrap().check_request().unwrap_err().reason
    }

    const VIA: &str = "Via: SIP/2.0/UDP a;branch=z9hG4bK1\r\n";

    #[test]
    fn missing_or_broken_headers_name_the_problem() {
        let base = |hdrs: &str| format!("REGISTER sip:h SIP/2.0\r\n{VIA}{hdrs}\r\n").into_bytes();
        let full = "From: <sip:a@h>;tag=1\r\nTo: <sip:a@h>\r\nCall-ID: c\r\nCSeq: 1 REGISTER\r\n";
        assert!(scan(&base(full)).unwrap().check_request().is_ok());
        let without = |name: &str| {
            full.split("\r\n")
                .filter(|l| !l.is_empty() && !l.starts_with(name))
                .map(|l| format!("{l}\r\n"))
                .collect::<String>()
        };
        assert_eq!(problem(&base(&without("From"))), "Missing From header");
        assert_eq!(problem(&base(&without("To"))), "Missing To header");
        assert_eq!(
            problem(&base(&without("Call-ID"))),
            "Missing Call-ID header"
        );
        assert_eq!(problem(&base(&without("CSeq"))), "Missing CSeq header");
        let replace = |from: &str, to: &str| base(&full.replace(from, to));
        assert_eq!(
            problem(&replace("<sip:a@h>;tag=1", "<sip:a@h")),
            "Malformed From header"
        );
        assert_eq!(
            problem(&replace("To: <sip:a@h>", "To: <http://x>")),
            "Malformed To header"
        );
        assert_eq!(
            problem(&replace("1 REGISTER", "x REGISTER")),
            "Malformed CSeq header"
        );
        assert_eq!(
            problem(&replace("1 REGISTER", "1 INVITE")),
            "CSeq method does not match the request"
        );
        assert_eq!(
            problem(&replace("1 REGISTER", "99999999999 REGISTER")),
            "Malformed CSeq header"
        );
        assert_eq!(
            problem(&base(&format!("{full}To: <sip:b@h>\r\n"))),
            "Duplicate To header"
        );
        assert_eq!(
            problem(&base(&format!("{full}Max-Forwards: abc\r\n"))),
            "Malformed Max-Forwards header"
        );
        assert_eq!(
            problem(&base(&format!("{full}Content-Length: 10\r\n"))),
            "Content-Length exceeds the body"
        );
        assert_eq!(
            problem(&base(&format!("{full}Content-Length: -1\r\n"))),
            "Malformed Content-Length header"
        );
        let v3 = format!("REGISTER sip:h SIP/3.0\r\n{VIA}{full}\r\n");
        assert_eq!(
            scan(v3.as_bytes())
                .unwrap()
                .check_request()
                .unwrap_err()
                .code,
            505
        );
    }

    #[test]
    fn many_headers_spill_but_still_scan() {
        let mut msg = b"OPTIONS sip:h SIP/2.0\r\n".to_vec();
        for i in 0..200 {
            msg.extend_from_slice(format!("X-H{i}: {i}\r\n").as_bytes());
        }
        msg.extend_from_slice(b"Call-ID: last\r\n\r\n");
        let m = scan(&msg).unwrap();
        assert_eq!(m.headers().len(), 201);
        assert_eq!(m.first(HeaderKind::CallId), Some(&b"last"[..]));
    }

    #[test]
    fn split_list_respects_quotes_and_brackets() {
        let v: Vec<&[u8]> = split_list(b"\"a, b\" <sip:x@h;p=1,2>;q=1 , <sip:y@h>,,").collect();
        assert_eq!(v, vec![&b"\"a, b\" <sip:x@h;p=1,2>;q=1"[..], b"<sip:y@h>"]);
    }

    #[test]
    fn split_list_without_commas_is_one_trimmed_element() {
        let one = |v: &'static [u8]| split_list(v).collect::<Vec<&[u8]>>();
        assert_eq!(
            one(b" \t<sip:a@h>;+sip.instance=\"<urn:x>\";reg-id=1\r\n "),
            vec![&b"<sip:a@h>;+sip.instance=\"<urn:x>\";reg-id=1"[..]]
        );
        assert_eq!(
            one(b"\"unterminated <sip:a@h"),
            vec![&b"\"unterminated <sip:a@h"[..]]
        );
        assert!(one(b"").is_empty());
        assert!(one(b" \r\n\t ").is_empty());
        // After the last comma the rest has none: same elements as before the fast path.
        assert_eq!(one(b"a, b ,c"), vec![&b"a"[..], b"b", b"c"]);
        assert_eq!(one(b"a,  "), vec![&b"a"[..]]);
    }

    #[test]
    fn header_line_starting_with_a_bare_cr_is_named_by_its_name() {
        // Found by the `scan` fuzz target: the name span started at the CR but had the trimmed
        // name's length, so `name_of` returned "\r" for a Contact.
        let m = scan(b"E s SIP/\n\rm:").unwrap();
        let h = &m.headers()[0];
        assert_eq!(h.kind, HeaderKind::Contact);
        assert_eq!(m.name_of(h), b"m");
        let m = scan(b"OPTIONS sip:h SIP/2.0\r\n\rcrFrom : <sip:a@h>\r\n\r\n").unwrap();
        assert_eq!(m.name_of(&m.headers()[0]), b"crFrom");
        assert_eq!(
            m.headers()[0].raw.start,
            23,
            "the raw line still starts at the CR"
        );
    }

    #[test]
    fn header_names_with_white_space_before_the_colon_or_inside() {
        let m = scan(b"OPTIONS sip:h SIP/2.0\r\nVia \t: SIP/2.0/UDP h\r\n\r\n").unwrap();
        assert_eq!(m.name_of(&m.headers()[0]), b"Via");
        assert_eq!(m.top_via(), Some(&b"SIP/2.0/UDP h"[..]));
        assert_eq!(
            scan(b"OPTIONS sip:h SIP/2.0\r\nVi a: x\r\n").unwrap_err(),
            ScanError::BadHeaderName
        );
        assert_eq!(
            scan(b"OPTIONS sip:h SIP/2.0\r\n: x\r\n").unwrap_err(),
            ScanError::BadHeaderName
        );
        assert_eq!(
            scan(b"OPTIONS sip:h SIP/2.0\r\nVia x\r\n").unwrap_err(),
            ScanError::NoColon
        );
        assert_eq!(
            scan(b"OPTIONS sip:h SIP/2.0\r\nV\x01a: x\r\n").unwrap_err(),
            ScanError::BadHeaderName
        );
    }

    #[test]
    fn content_bounds_agree_with_trimming_byte_by_byte() {
        for s in crate::sip::tests::short_strings() {
            let want = s.iter().position(|&b| !crate::sip::is_lws(b)).map(|start| {
                let end = s
                    .iter()
                    .rposition(|&b| !crate::sip::is_lws(b))
                    .unwrap_or(start);
                (start, end + 1)
            });
            assert_eq!(content_bounds(&s), want, "{s:?}");
        }
    }

    #[test]
    fn name_run_agrees_with_a_byte_loop() {
        let plain = |b: &[u8]| b.iter().position(|&c| !is_name_byte(c)).unwrap_or(b.len());
        for len in 0..=20 {
            let mut line: Vec<u8> = (0..len).map(|i| b"Content-Length: 0"[i % 17]).collect();
            for at in 0..len {
                for b in 0..=u8::MAX {
                    let keep = line[at];
                    line[at] = b;
                    assert_eq!(name_run(&line), plain(&line), "{line:?}");
                    line[at] = keep;
                }
            }
        }
    }

    #[test]
    fn folding_is_recorded() {
        assert!(!scan(REGISTER).unwrap().has_folding());
        let m = scan(b"OPTIONS sip:h SIP/2.0\r\nSubject: a\r\n b\r\n\r\n").unwrap();
        assert!(m.has_folding());
    }

    #[test]
    fn check_request_hands_on_from_and_to_parsed() {
        let m = scan(REGISTER).unwrap();
        let parties = m.check_request().unwrap();
        let from = Aor::from_header(m.first(HeaderKind::From).unwrap()).unwrap();
        let to = Aor::from_header(m.first(HeaderKind::To).unwrap()).unwrap();
        assert_eq!(parties.from.aor(), from);
        assert_eq!(parties.to.aor(), to);
        assert_eq!(parties.from.params, b";tag=1928301774");
        assert_eq!(parties.to.uri.host, b"example.com");
        assert!(!parties.to_tagged);
        let tagged = String::from_utf8(REGISTER.to_vec()).unwrap().replace(
            "To: \"Alice\" <sip:alice@example.com>",
            "t: <sip:alice@example.com> ;TAG=x",
        );
        let m = scan(tagged.as_bytes()).unwrap();
        assert!(m.check_request().unwrap().to_tagged);
        assert!(crate::sip::reply::to_has_tag(&m));
    }

    #[test]
    fn first_finds_a_header_after_65535_others() {
        // Found in review of the fuzz run: the index of a single-valued header saturated at
        // u16::MAX, so `first(From)` answered another header's value.
        let mut msg = b"OPTIONS sip:h SIP/2.0\r\n".to_vec();
        for _ in 0..65_540 {
            msg.extend_from_slice(b"a:x\r\n");
        }
        msg.extend_from_slice(b"From: <sip:real@h>\r\n\r\n");
        let m = scan(&msg).unwrap();
        assert_eq!(m.first(HeaderKind::From), Some(&b"<sip:real@h>"[..]));
    }
}
