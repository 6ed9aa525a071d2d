//! Stateless responses (RFC 3261 8.2.6): built from the request alone, into a caller-owned buffer.
//!
//! Every Via is copied in order, the top one given `received` and `rport` (RFC 3581); From, Call-ID
//! and CSeq are copied; To is copied with a tag added when it has none. Folded values are unfolded on
//! the way out. This module writes bytes only: which status to send is decided in [`crate::auth`].

use std::io::Write as _;
use std::net::SocketAddr;

use super::addr::{item_name, param, param_items, params, parse_name_addr};
use super::scan::{split_list, HeaderKind, Message, Parties};
use super::{has_lws, is_lws, trim_lws};

/// Registration lifetime when neither the Contact nor the request says (RFC 3261 10.2.1.1).
pub const DEFAULT_EXPIRES: u32 = 3600;

/// Canonical reason phrase for the statuses sipward sends.
pub fn reason_phrase(code: u16) -> &'static str {
    match code {
        100 => "Trying",
        200 => "OK",
        202 => "Accepted",
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        407 => "Proxy Authentication Required",
        408 => "Request Timeout",
        430 => "Flow Failed",
        480 => "Temporarily Unavailable",
        483 => "Too Many Hops",
        486 => "Busy Here",
        500 => "Server Internal Error",
        503 => "Service Unavailable",
        505 => "Version Not Supported",
        513 => "Message Too Large",
        600 => "Busy Everywhere",
        603 => "Decline",
        _ => match code / 100 {
            2 => "OK",
            3 => "Redirect",
            4 => "Request Failure",
            5 => "Server Failure",
            _ => "Global Failure",
        },
    }
}

/// Appends `v` with each fold (CRLF followed by white space) replaced by one space. Out of line:
/// only folded requests get here, and the copy of an unfolded value stays small enough to inline.
#[inline(never)]
pub fn put_unfolded(out: &mut Vec<u8>, v: &[u8]) {
    if memchr::memchr(b'\n', v).is_none() {
        out.extend_from_slice(v);
        return;
    }
    let mut in_ws = false;
    for &b in v {
        if is_lws(b) {
            if !in_ws {
                out.push(b' ');
            }
            in_ws = true;
        } else {
            out.push(b);
            in_ws = false;
        }
    }
}

/// Appends (part of) a header value of a request whose [`Message::has_folding`] is `folded`. An
/// unfolded request's values hold no line break, so they are copied without looking for one.
#[inline]
fn put_value(out: &mut Vec<u8>, v: &[u8], folded: bool) {
    if folded {
        put_unfolded(out, v);
    } else {
        out.extend_from_slice(v);
    }
}

/// `name` includes the `: ` that follows it. Out of line, like the other writers here: a response
/// is written once per request, straight through, so its code is run once and then evicted; the
/// fewer copies of it, the fewer instruction-cache misses on the respond path. The name's length
/// is a constant of each of its four copies (Via, From, Call-ID, CSeq), so that the name is stored
/// in place rather than copied by a call to `memcpy`: 80 instructions less per REGISTER.
#[inline(never)]
fn put_header<const N: usize>(out: &mut Vec<u8>, name: &[u8; N], value: &[u8], folded: bool) {
    out.extend_from_slice(name);
    put_value(out, value, folded);
    out.extend_from_slice(b"\r\n");
}

/// Appends `n` in decimal: a Contact's expiry, a status code outside 100 to 999, an IPv6 source's
/// port. Out of line (see [`put_header`] on why); the usual status code and IPv4 port are written in
/// place.
#[inline(never)]
fn put_decimal(out: &mut Vec<u8>, n: u32) {
    out.extend_from_slice(itoa::Buffer::new().format(n).as_bytes());
}

/// Writes the top Via with `received` and `rport` set to where the request came from; other
/// parameters keep their order.
pub fn put_top_via(out: &mut Vec<u8>, via: &[u8], source: SocketAddr) {
    write_top_via(out, via, source, true);
}

fn write_top_via(out: &mut Vec<u8>, via: &[u8], source: SocketAddr, folded: bool) {
    let semi = super::find_byte(via, b';').unwrap_or(via.len());
    out.extend_from_slice(b"Via: ");
    put_value(out, trim_lws(&via[..semi]), folded);
    let p = &via[semi..];
    if has_lws(p) {
        for (name, value) in params(p).filter(|(name, _)| !replaced(name)) {
            out.push(b';');
            put_value(out, name, folded);
            if let Some(v) = value {
                out.push(b'=');
                put_value(out, v, folded);
            }
        }
    } else if !put_kept_params(out, p) {
        // Nothing to trim or unfold, but a quoted string or over 64 bytes: each parameter goes
        // out as written, as the general loop above would write it.
        put_kept_items(out, p);
    }
    put_received(out, source);
}

/// Whether a Via parameter's name is one the response sets itself (RFC 3581).
#[inline]
fn replaced(name: &[u8]) -> bool {
    name.eq_ignore_ascii_case(b"received") || name.eq_ignore_ascii_case(b"rport")
}

/// The top Via's parameters `p` (from its first `;`, without white space) as [`param_items`] and
/// [`replaced`] would have them written, `;item` for each non-empty item not replaced: for the
/// usual Via of at most 64 bytes of parameters and no quoted string, the items are found from a
/// mask of the `;`s and the ones kept go out as runs of the bytes they were received as, one copy
/// a run where the item loop took a search, a name and a copy per item. `false`, having written
/// nothing, for a `p` that does not fit that shape.
fn put_kept_params(out: &mut Vec<u8>, p: &[u8]) -> bool {
    let Some(block) = super::Block64::new(p) else {
        return false;
    };
    if block.mask(b'"') != 0 {
        return false;
    }
    let mut semis = block.mask(b';');
    // The run of kept items being gathered starts at this `;`.
    let mut run = None;
    while semis != 0 {
        let at = semis.trailing_zeros() as usize;
        semis &= semis - 1;
        let end = if semis == 0 {
            p.len()
        } else {
            semis.trailing_zeros() as usize
        };
        let item = &p[at + 1..end];
        // Only a name starting with an `r` can be replaced: the others skip the comparisons.
        let keep = match item.first() {
            None => false,
            Some(&first) => first | 0x20 != b'r' || !replaced(item_name(item)),
        };
        match (keep, run) {
            (true, None) => run = Some(at),
            (false, Some(from)) => {
                out.extend_from_slice(&p[from..at]);
                run = None;
            }
            _ => {}
        }
    }
    if let Some(from) = run {
        out.extend_from_slice(&p[from..]);
    }
    true
}

/// [`put_kept_params`] item by item, for any `p` without white space.
fn put_kept_items(out: &mut Vec<u8>, p: &[u8]) {
    for item in param_items(p).filter(|item| !replaced(item_name(item))) {
        out.push(b';');
        out.extend_from_slice(item);
    }
}

/// Each byte value in decimal, padded to three bytes, and how many of them are digits.
const OCTETS: [([u8; 3], u8); 256] = {
    let mut t = [([0u8; 3], 0u8); 256];
    let mut n = 0;
    while n < 256 {
        let (h, d, o) = ((n / 100) as u8, (n / 10 % 10) as u8, (n % 10) as u8);
        t[n] = match n {
            0..=9 => ([b'0' + o, 0, 0], 1),
            10..=99 => ([b'0' + d, b'0' + o, 0], 2),
            _ => ([b'0' + h, b'0' + d, b'0' + o], 3),
        };
        n += 1;
    }
    t
};

/// `;received=ADDRESS;rport=PORT` and the line's end: where the request came from (RFC 3581). For
/// IPv4, the usual case, the whole tail is spelled out on the stack from a table of octets and
/// copied once; formatting each number and copying each piece cost four times as much (about 300
/// instructions, `examples/respond_loop.rs`). IPv6 goes through `Display`.
#[inline(never)]
fn put_received(out: &mut Vec<u8>, source: SocketAddr) {
    let SocketAddr::V4(v4) = source else {
        out.extend_from_slice(b";received=");
        // Writing into a Vec cannot fail.
        let _ = write!(out, "{}", source.ip());
        out.extend_from_slice(b";rport=");
        put_decimal(out, source.port().into());
        out.extend_from_slice(b"\r\n");
        return;
    };
    // ";received=" 10, the address at most 15, ";rport=" 7, the port at most 5, CRLF 2: 39 bytes.
    let mut text = [0u8; 40];
    text[..10].copy_from_slice(b";received=");
    let mut len = 10;
    for (i, octet) in v4.ip().octets().into_iter().enumerate() {
        let (digits, n) = OCTETS[usize::from(octet)];
        text[len..len + 3].copy_from_slice(&digits);
        len += usize::from(n);
        if i < 3 {
            text[len] = b'.';
            len += 1;
        }
    }
    text[len..len + 7].copy_from_slice(b";rport=");
    len += 7;
    let port = v4.port();
    let digits = match port {
        0..=9 => 1,
        10..=99 => 2,
        100..=999 => 3,
        1000..=9999 => 4,
        _ => 5,
    };
    let mut rest = port;
    for at in (len..len + digits).rev() {
        text[at] = b'0' + (rest % 10) as u8;
        rest /= 10;
    }
    len += digits;
    text[len..len + 2].copy_from_slice(b"\r\n");
    out.extend_from_slice(&text[..len + 2]);
}

/// The request's To header as a response treats it, known from one parse.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ToState {
    /// Absent, or not a name-addr: copied as received, never tagged.
    Unusable,
    /// Carries a tag already (the request is inside a dialog): copied as received.
    Tagged,
    /// Has no tag: a response other than 100 Trying adds one (RFC 3261 8.2.6.2).
    Untagged,
}

impl ToState {
    /// Parses the request's To header; a caller holding [`Parties`] has the answer already.
    pub fn of(req: &Message<'_>) -> ToState {
        match req.first(HeaderKind::To).map(parse_name_addr) {
            Some(Ok(na)) if param(na.params, b"tag").is_some() => ToState::Tagged,
            Some(Ok(_)) => ToState::Untagged,
            _ => ToState::Unusable,
        }
    }

    /// Whether a response with status `code` adds a To tag.
    #[inline]
    pub fn adds_tag(self, code: u16) -> bool {
        code > 100 && self == ToState::Untagged
    }
}

impl From<&Parties<'_>> for ToState {
    #[inline]
    fn from(parties: &Parties<'_>) -> ToState {
        if parties.to_tagged {
            ToState::Tagged
        } else {
            ToState::Untagged
        }
    }
}

/// Whether the To header already carries a tag (the request is inside a dialog).
pub fn to_has_tag(req: &Message<'_>) -> bool {
    ToState::of(req) == ToState::Tagged
}

/// Head of a response: the status line and the headers copied from the request, up to (not
/// including) any extra headers and Content-Length. `to_tag` is added to a To without a tag, unless
/// the response is provisional 100 (RFC 3261 8.2.6.2). `reason` names the problem for 400s.
pub fn start_response(
    out: &mut Vec<u8>,
    req: &Message<'_>,
    source: SocketAddr,
    code: u16,
    reason: &str,
    to_tag: &[u8],
) {
    let tag = (ToState::of(req).adds_tag(code) && !to_tag.is_empty()).then_some(to_tag);
    start_response_with_tag(out, req, source, code, reason, tag);
}

/// [`start_response`] for a caller that knows the request's [`ToState`] already (from
/// [`Message::check_request`]) and so derives a tag only when [`ToState::adds_tag`] says one is
/// added: `Some(tag)` is appended to To, `None` leaves To as received.
pub fn start_response_with_tag(
    out: &mut Vec<u8>,
    req: &Message<'_>,
    source: SocketAddr,
    code: u16,
    reason: &str,
    to_tag: Option<&[u8]>,
) {
    out.clear();
    // A status code is three digits (the engine sends 100 to 699), written in place; anything
    // else is written as it is rather than bent into shape.
    if !(100..1000).contains(&code) {
        out.extend_from_slice(b"SIP/2.0 ");
        put_decimal(out, code.into());
        out.push(b' ');
    } else {
        out.extend_from_slice(&[
            b'S',
            b'I',
            b'P',
            b'/',
            b'2',
            b'.',
            b'0',
            b' ',
            b'0' + (code / 100) as u8,
            b'0' + (code / 10 % 10) as u8,
            b'0' + (code % 10) as u8,
            b' ',
        ]);
    }
    out.extend_from_slice(reason.as_bytes());
    out.extend_from_slice(b"\r\n");
    let folded = req.has_folding();
    // Nested loops rather than `req.vias()`: the flattening iterator cost more than the copying.
    let mut top = true;
    for line in req.lines(HeaderKind::Via) {
        for via in split_list(line) {
            if top {
                write_top_via(out, via, source, folded);
                top = false;
            } else {
                put_header(out, b"Via: ", via, folded);
            }
        }
    }
    if let Some(from) = req.first(HeaderKind::From) {
        put_header(out, b"From: ", from, folded);
    }
    if let Some(to) = req.first(HeaderKind::To) {
        out.extend_from_slice(b"To: ");
        put_value(out, to, folded);
        if let Some(tag) = to_tag {
            out.extend_from_slice(b";tag=");
            out.extend_from_slice(tag);
        }
        out.extend_from_slice(b"\r\n");
    }
    if let Some(cid) = req.first(HeaderKind::CallId) {
        put_header(out, b"Call-ID: ", cid, folded);
    }
    if let Some(cseq) = req.first(HeaderKind::CSeq) {
        put_header(out, b"CSeq: ", cseq, folded);
    }
}

/// Ends a response started with [`start_response`]: no body.
pub fn finish_response(out: &mut Vec<u8>) {
    out.extend_from_slice(b"Content-Length: 0\r\n\r\n");
}

/// For a 2xx to REGISTER: one Contact line per binding the request asked for, each with the expiry it
/// gets (its own `expires` parameter, else the Expires header, else [`DEFAULT_EXPIRES`]). Bindings
/// being removed (`expires=0`, `Contact: *`) are not echoed, since they no longer exist.
pub fn put_register_contacts(out: &mut Vec<u8>, req: &Message<'_>) {
    let header_expires = req
        .first(HeaderKind::Expires)
        .and_then(super::scan::parse_decimal)
        .map(|n| u32::try_from(n).unwrap_or(u32::MAX));
    let folded = req.has_folding();
    for line in req.lines(HeaderKind::Contact) {
        for contact in split_list(line) {
            put_contact(out, contact, header_expires, folded);
        }
    }
}

/// One Contact line of [`put_register_contacts`], unless the binding is being removed.
fn put_contact(out: &mut Vec<u8>, contact: &[u8], header_expires: Option<u32>, folded: bool) {
    let Ok(na) = parse_name_addr(contact) else {
        return;
    };
    if na.uri == b"*" {
        return;
    }
    if params_go_out_as_written(na.params) {
        // No `expires` among them, so the binding is not being removed by one, and nothing to
        // take out: the parameters go out in one copy.
        let expires = header_expires.unwrap_or(DEFAULT_EXPIRES);
        if expires == 0 {
            return;
        }
        out.extend_from_slice(b"Contact: <");
        put_value(out, na.uri, folded);
        out.push(b'>');
        out.extend_from_slice(na.params);
        out.extend_from_slice(b";expires=");
        put_decimal(out, expires);
        out.extend_from_slice(b"\r\n");
        return;
    }
    put_contact_by_parameter(out, na, header_expires, folded);
}

/// [`put_contact`] one parameter at a time: what it does for any Contact.
fn put_contact_by_parameter(
    out: &mut Vec<u8>,
    na: super::NameAddr<'_>,
    header_expires: Option<u32>,
    folded: bool,
) {
    // The line is written while its parameters are read, and taken back if the binding turns
    // out to be a removal: one pass over the parameters instead of two.
    let line_start = out.len();
    out.extend_from_slice(b"Contact: <");
    put_value(out, na.uri, folded);
    out.push(b'>');
    // The first `expires` parameter counts, as `param` would find it.
    let mut own_expires = None;
    if !has_lws(na.params) {
        // As for the Via: nothing to trim, so each parameter goes out as written.
        for item in param_items(na.params) {
            let name = item_name(item);
            if name.eq_ignore_ascii_case(b"expires") {
                own_expires.get_or_insert(item.get(name.len() + 1..));
                continue;
            }
            out.push(b';');
            out.extend_from_slice(item);
        }
    } else {
        for (name, value) in params(na.params) {
            if name.eq_ignore_ascii_case(b"expires") {
                own_expires.get_or_insert(value);
                continue;
            }
            out.push(b';');
            put_value(out, name, folded);
            if let Some(v) = value {
                out.push(b'=');
                put_value(out, v, folded);
            }
        }
    }
    let expires = match own_expires {
        Some(Some(v)) => {
            super::scan::parse_decimal(v).map(|n| u32::try_from(n).unwrap_or(u32::MAX))
        }
        _ => None,
    }
    .or(header_expires)
    .unwrap_or(DEFAULT_EXPIRES);
    if expires == 0 {
        out.truncate(line_start);
        return;
    }
    out.extend_from_slice(b";expires=");
    put_decimal(out, expires);
    out.extend_from_slice(b"\r\n");
}

/// Whether a Contact's parameters (empty, or starting with `;`, as [`parse_name_addr`] gives
/// them) are written back exactly as [`put_contact_by_parameter`] would write them, and hold no
/// `expires`: no white space or other control byte (nothing to trim or unfold; a quoted value with
/// them goes the general way too), no `x` or `X` anywhere (so no parameter is named `expires`), no
/// `;;` and no `;` at the end (no empty parameter to leave out). A softphone's
/// `;+sip.instance="<urn:uuid:…>";reg-id=1` passes, and the one copy instead of the loop took 73
/// instructions off the benches' REGISTER (`examples/respond_loop.rs`).
fn params_go_out_as_written(p: &[u8]) -> bool {
    if p.last() == Some(&b';') {
        return false;
    }
    #[cfg(all(target_arch = "x86_64", target_feature = "sse2"))]
    return !refused_sse2(p);
    #[cfg(not(all(target_arch = "x86_64", target_feature = "sse2")))]
    !refused_bytes(p)
}

/// A byte [`params_go_out_as_written`] refuses wherever it is.
#[inline]
fn refused_byte(b: u8) -> bool {
    b <= b' ' || b | 0x20 == b'x'
}

/// Whether `p` holds a refused byte or `;;`, byte by byte: what the vector test below must say.
#[cfg_attr(all(target_arch = "x86_64", target_feature = "sse2"), allow(dead_code))]
fn refused_bytes(p: &[u8]) -> bool {
    p.iter().copied().any(refused_byte) || p.windows(2).any(|w| w == b";;")
}

/// [`refused_bytes`] sixteen bytes a step: each step reads the bytes from `i` and from `i + 1`,
/// tests the second for refused bytes and the pair for `;;`; the last step overlaps the one
/// before, which does not matter for a yes-or-no answer. The word-at-a-time test it replaced took
/// about 400 instructions for a softphone's 72 bytes of Contact parameters, nine steps of 41.
#[cfg(all(target_arch = "x86_64", target_feature = "sse2"))]
fn refused_sse2(p: &[u8]) -> bool {
    use safe_arch::{bitand_m128i, bitor_m128i, cmp_eq_mask_i8_m128i, load_unaligned_m128i};
    use safe_arch::{m128i, move_mask_i8_m128i, set_splat_i8_m128i};
    let Some(&first) = p.first() else {
        return false;
    };
    if refused_byte(first) {
        return true;
    }
    let (space, case, x, semi) = (
        set_splat_i8_m128i(b' ' as i8),
        set_splat_i8_m128i(0x20),
        set_splat_i8_m128i(b'x' as i8),
        set_splat_i8_m128i(b';' as i8),
    );
    let step = |from: &[u8]| -> m128i {
        let this = load_unaligned_m128i(from[..16].try_into().unwrap_or(&[0; 16]));
        let next = load_unaligned_m128i(from[1..17].try_into().unwrap_or(&[0; 16]));
        let controls = super::at_most(next, space);
        let xs = cmp_eq_mask_i8_m128i(bitor_m128i(next, case), x);
        let pairs = bitand_m128i(
            cmp_eq_mask_i8_m128i(this, semi),
            cmp_eq_mask_i8_m128i(next, semi),
        );
        bitor_m128i(bitor_m128i(controls, xs), pairs)
    };
    let n = p.len();
    let hits = if n < 17 {
        // Padded with a byte that is neither refused nor a `;`.
        let mut padded = [b'a'; 33];
        padded[..n].copy_from_slice(p);
        bitor_m128i(step(&padded[..17]), step(&padded[16..]))
    } else {
        let mut hits = step(&p[n - 17..]);
        let mut at = 0;
        while at + 17 <= n {
            hits = bitor_m128i(hits, step(&p[at..at + 17]));
            at += 16;
        }
        hits
    };
    move_mask_i8_m128i(hits) != 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn contact_params_refused_as_byte_by_byte() {
        // Every length to 40 with each refused byte or `;;` at each place, and clean ones.
        for n in 0..40 {
            let clean: Vec<u8> = (0..n).map(|i| b"ab;=c+\"<>~"[i % 10]).collect();
            let mut cases = vec![clean.clone()];
            for at in 0..n {
                for b in [
                    b' ',
                    b'\t',
                    b'\r',
                    0,
                    0x1f,
                    b'x',
                    b'X',
                    b';',
                    b'!',
                    0x80,
                    0xff,
                    0x58 | 0x80,
                ] {
                    let mut c = clean.clone();
                    c[at] = b;
                    cases.push(c.clone());
                    if at + 1 < n {
                        c[at + 1] = b';';
                        c[at] = b';';
                        cases.push(c);
                    }
                }
            }
            for c in cases {
                let want = c.last() != Some(&b';') && !refused_bytes(&c);
                assert_eq!(
                    params_go_out_as_written(&c),
                    want,
                    "{:?}",
                    String::from_utf8_lossy(&c)
                );
            }
        }
    }

    #[test]
    fn kept_params_in_runs_are_those_kept_item_by_item() {
        // Every string of up to five pieces over names, values, separators and a quote, and long
        // ones that do not fit a block: the runs must write what the item loop writes.
        let pieces: [&[u8]; 10] = [
            b";",
            b"rport",
            b"RECEIVED",
            b"=1",
            b"branch=z9hG4bK",
            b"r",
            b"\"",
            b"x",
            b";;",
            b"rport=5",
        ];
        let mut cases: Vec<Vec<u8>> = crate::sip::tests::joined_pieces(&pieces, 5).collect();
        cases.push([&b";branch=z9hG4bK"[..], &[b'a'; 60], b";rport"].concat());
        for case in cases {
            let p = [&b";"[..], &case].concat();
            let (mut runs, mut items) = (Vec::new(), Vec::new());
            put_kept_items(&mut items, &p);
            if put_kept_params(&mut runs, &p) {
                assert_eq!(runs, items, "{:?}", String::from_utf8_lossy(&p));
            } else {
                assert!(runs.is_empty());
                assert!(p.len() > 64 || p.contains(&b'"'));
            }
        }
    }
    use crate::sip::scan::scan;

    #[test]
    fn received_and_rport_read_as_formatted() {
        let mut addrs: Vec<SocketAddr> = Vec::new();
        for v in 0..=255u8 {
            for port in [0u16, 9, 10, 99, 100, 999, 1000, 9999, 10000, 65535] {
                addrs.push(SocketAddr::from(([v, 0, 255, v], port)));
                addrs.push(SocketAddr::from(([1, v, v, 10], port)));
            }
        }
        addrs.push("[2001:db8::9]:5062".parse().unwrap());
        addrs.push("[::ffff:192.0.2.1]:7".parse().unwrap());
        for a in addrs {
            let mut out = b"Via: x".to_vec();
            put_received(&mut out, a);
            let want = format!("Via: x;received={};rport={}\r\n", a.ip(), a.port());
            assert_eq!(String::from_utf8(out).unwrap(), want);
        }
    }

    fn src() -> SocketAddr {
        "203.0.113.7:40000".parse().unwrap()
    }

    #[test]
    fn copies_vias_in_order_and_marks_the_top_one() {
        let req = scan(
            b"OPTIONS sip:h SIP/2.0\r\nVia: SIP/2.0/UDP 10.0.0.1:5060;branch=z9hG4bKa;rport;received=1.1.1.1, \
SIP/2.0/TCP b;branch=z9hG4bKb\r\nVia: SIP/2.0/UDP c\r\n ;branch=z9hG4bKc\r\nFrom: <sip:a@h>;tag=f\r\n\
To: <sip:b@h>\r\nCall-ID: cid\r\nCSeq: 7 OPTIONS\r\n\r\n",
        )
        .unwrap();
        let mut out = Vec::new();
        start_response(&mut out, &req, src(), 200, "OK", b"abc");
        finish_response(&mut out);
        let text = String::from_utf8(out).unwrap();
        assert_eq!(
            text,
            "SIP/2.0 200 OK\r\n\
Via: SIP/2.0/UDP 10.0.0.1:5060;branch=z9hG4bKa;received=203.0.113.7;rport=40000\r\n\
Via: SIP/2.0/TCP b;branch=z9hG4bKb\r\n\
Via: SIP/2.0/UDP c ;branch=z9hG4bKc\r\n\
From: <sip:a@h>;tag=f\r\n\
To: <sip:b@h>;tag=abc\r\n\
Call-ID: cid\r\n\
CSeq: 7 OPTIONS\r\n\
Content-Length: 0\r\n\r\n"
        );
        assert!(scan(text.as_bytes()).is_ok());
    }

    #[test]
    fn keeps_an_existing_to_tag() {
        let req = scan(b"BYE sip:h SIP/2.0\r\nVia: SIP/2.0/UDP a\r\nTo: <sip:b@h>;tag=x\r\n\r\n")
            .unwrap();
        let mut out = Vec::new();
        start_response(&mut out, &req, src(), 200, "OK", b"abc");
        assert!(String::from_utf8(out)
            .unwrap()
            .contains("To: <sip:b@h>;tag=x\r\n"));
    }

    #[test]
    fn ipv6_source_in_received() {
        let req =
            scan(b"OPTIONS sip:h SIP/2.0\r\nVia: SIP/2.0/UDP [::1]:5060;branch=z9hG4bKa\r\n\r\n")
                .unwrap();
        let mut out = Vec::new();
        start_response(
            &mut out,
            &req,
            "[2001:db8::9]:5062".parse().unwrap(),
            200,
            "OK",
            b"t",
        );
        let text = String::from_utf8(out).unwrap();
        assert!(text.contains(
            "Via: SIP/2.0/UDP [::1]:5060;branch=z9hG4bKa;received=2001:db8::9;rport=5062\r\n"
        ));
    }

    #[test]
    fn register_contacts_get_their_expiry() {
        let req = scan(
            b"REGISTER sip:h SIP/2.0\r\nVia: SIP/2.0/UDP a\r\n\
Contact: <sip:a@1.2.3.4;transport=tcp>;expires=60;+sip.instance=\"<urn:uuid:1>\", sip:a@5.6.7.8;q=0.5\r\n\
Contact: <sip:gone@h>;expires=0\r\nExpires: 120\r\n\r\n",
        )
        .unwrap();
        let mut out = Vec::new();
        put_register_contacts(&mut out, &req);
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "Contact: <sip:a@1.2.3.4;transport=tcp>;+sip.instance=\"<urn:uuid:1>\";expires=60\r\n\
Contact: <sip:a@5.6.7.8>;q=0.5;expires=120\r\n"
        );
        let req = scan(b"REGISTER sip:h SIP/2.0\r\nContact: <sip:a@h>\r\n\r\n").unwrap();
        let mut out = Vec::new();
        put_register_contacts(&mut out, &req);
        assert_eq!(out, b"Contact: <sip:a@h>;expires=3600\r\n");
        let req = scan(b"REGISTER sip:h SIP/2.0\r\nContact: *\r\nExpires: 0\r\n\r\n").unwrap();
        let mut out = Vec::new();
        put_register_contacts(&mut out, &req);
        assert!(out.is_empty());
    }

    #[test]
    fn contacts_copied_whole_read_as_written_parameter_by_parameter() {
        // Every sequence of up to four pieces, among them the ones that must send a Contact the
        // general way (white space, an `x`, an empty parameter, `expires`, quotes).
        const PIECES: [&str; 16] = [
            ";",
            ";;",
            "q=0.5",
            "+sip.instance=\"<urn:uuid:1>\"",
            ";reg-id=1",
            "\"",
            "=",
            " ",
            "\t",
            "x",
            "X",
            ";expires=30",
            ";EXPIRES=0",
            "a;b",
            "\u{80}",
            "\u{ff}",
        ];
        let mut fast = 0;
        for len in 0..=4u32 {
            for mut n in 0..PIECES.len().pow(len) {
                let mut params = String::new();
                for _ in 0..len {
                    params.push_str(PIECES[n % PIECES.len()]);
                    n /= PIECES.len();
                }
                let contact = format!("<sip:a@h>{params}");
                let Ok(na) = parse_name_addr(contact.as_bytes()) else {
                    continue;
                };
                fast += usize::from(params_go_out_as_written(na.params));
                for header_expires in [None, Some(0), Some(60)] {
                    for folded in [false, true] {
                        let mut whole = Vec::new();
                        put_contact(&mut whole, contact.as_bytes(), header_expires, folded);
                        let mut general = Vec::new();
                        put_contact_by_parameter(&mut general, na, header_expires, folded);
                        assert_eq!(whole, general, "{contact:?} {header_expires:?} {folded}");
                    }
                }
            }
        }
        assert!(fast > 1000, "{fast} Contacts copied whole");
    }

    #[test]
    fn to_state_of_a_request() {
        let state = |to: &str| {
            let msg = format!("BYE sip:h SIP/2.0\r\nVia: SIP/2.0/UDP a\r\n{to}\r\n");
            ToState::of(&scan(msg.as_bytes()).unwrap())
        };
        assert_eq!(state("To: <sip:b@h>;tag=x\r\n"), ToState::Tagged);
        assert_eq!(state("To: sip:b@h;tag\r\n"), ToState::Tagged);
        assert_eq!(state("To: <sip:b@h>\r\n"), ToState::Untagged);
        // The URI need not parse for a tag to be added, only the name-addr.
        assert_eq!(state("To: <http://b>\r\n"), ToState::Untagged);
        assert_eq!(state("To: <sip:b@h\r\n"), ToState::Unusable);
        assert_eq!(state(""), ToState::Unusable);
        assert!(ToState::Untagged.adds_tag(180));
        assert!(!ToState::Untagged.adds_tag(100));
        assert!(!ToState::Tagged.adds_tag(200));
        assert!(!ToState::Unusable.adds_tag(200));
    }

    #[test]
    fn with_tag_adds_only_the_tag_it_is_given() {
        let req = scan(
            b"OPTIONS sip:h SIP/2.0\r\nVia: SIP/2.0/UDP a\r\nTo: <sip:b@h>\r\nCall-ID: c\r\n\r\n",
        )
        .unwrap();
        let mut with = Vec::new();
        start_response_with_tag(&mut with, &req, src(), 200, "OK", Some(b"t1"));
        let mut plain = Vec::new();
        start_response(&mut plain, &req, src(), 200, "OK", b"t1");
        assert_eq!(with, plain);
        let mut without = Vec::new();
        start_response_with_tag(&mut without, &req, src(), 200, "OK", None);
        let text = String::from_utf8(without).unwrap();
        assert!(
            text.contains("\r\nTo: <sip:b@h>\r\nCall-ID: c\r\n"),
            "{text}"
        );
    }

    #[test]
    fn folded_values_are_unfolded_and_others_copied_as_they_are() {
        // One folded header makes the request folded; the other values hold no line break and go
        // out byte for byte, tabs and all.
        let req = scan(
            b"REGISTER sip:h SIP/2.0\r\nVia: SIP/2.0/UDP a;branch=z9hG4bK1\r\nFrom: <sip:a@h>;\ttag=1\r\n\
To: <sip:a@h>\r\n\t;x=1\r\nCall-ID: c\r\nCSeq: 1 REGISTER\r\nContact: <sip:a@1.2.3.4>;\r\n q=1\r\n\r\n",
        )
        .unwrap();
        assert!(req.has_folding());
        let mut out = Vec::new();
        start_response(&mut out, &req, src(), 200, "OK", b"t");
        put_register_contacts(&mut out, &req);
        let text = String::from_utf8(out).unwrap();
        assert!(text.contains("\r\nFrom: <sip:a@h>;\ttag=1\r\n"), "{text}");
        assert!(text.contains("\r\nTo: <sip:a@h> ;x=1;tag=t\r\n"), "{text}");
        assert!(
            text.contains("\r\nContact: <sip:a@1.2.3.4>;q=1;expires=3600\r\n"),
            "{text}"
        );
    }

    #[test]
    fn reason_phrases() {
        assert_eq!(reason_phrase(407), "Proxy Authentication Required");
        assert_eq!(reason_phrase(299), "OK");
        assert_eq!(reason_phrase(599), "Server Failure");
    }
}
