//! SIP wire format: zero-copy scanning of messages, name-addr and URI parsing, stream framing, and
//! stateless responses.
//!
//! Everything here is sans-io: plain functions over byte slices, no sockets, clocks or runtimes. The
//! scanner borrows from the receive buffer and does not allocate for ordinary messages; it extracts only
//! the headers sipward decides on and keeps every other header as a raw byte range. It does not
//! validate the full RFC 3261 grammar: what it does not need, it does not judge.

pub mod addr;
pub mod framing;
pub mod reply;
pub mod scan;

pub use addr::{parse_name_addr, parse_uri, Aor, NameAddr, Scheme, Uri};
pub use scan::{scan, Header, HeaderKind, Message, Method, ScanError, StartLine};

/// Linear white space inside a header value: folding leaves CR and LF inside a value's range.
#[inline]
pub(crate) fn is_lws(b: u8) -> bool {
    matches!(b, b' ' | b'\t' | b'\r' | b'\n')
}

/// `s` without leading and trailing linear white space.
#[inline]
pub(crate) fn trim_lws(mut s: &[u8]) -> &[u8] {
    while let [first, rest @ ..] = s {
        if is_lws(*first) {
            s = rest;
        } else {
            break;
        }
    }
    while let [rest @ .., last] = s {
        if is_lws(*last) {
            s = rest;
        } else {
            break;
        }
    }
    s
}
