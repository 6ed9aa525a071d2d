//! Message boundaries on a byte stream (TCP): RFC 3261 18.3 framing by Content-Length, and the
//! RFC 5626 CRLF keep-alive.
//!
//! [`next_frame`] looks at the start of a connection's receive buffer and says what is there; the
//! caller consumes that many bytes and asks again. It never buffers or copies anything itself.

use memchr::memmem;

use super::scan::{parse_decimal, HeaderKind};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Frame {
    /// Not enough bytes yet to know.
    Incomplete,
    /// A double-CRLF keep-alive "ping" of this many bytes: answer with a single CRLF "pong".
    Ping(usize),
    /// Stray line endings between messages (a "pong", or padding): consume and ignore.
    Skip(usize),
    /// A whole message of this many bytes starts the buffer.
    Message(usize),
    /// The message would exceed the size cap. The connection cannot be resynchronised.
    TooLarge,
    /// The header section (this many bytes) has no Content-Length, which streams require.
    MissingContentLength(usize),
    /// The header section (this many bytes) has a Content-Length that is not a number.
    BadContentLength(usize),
}

/// What the buffer starts with; `max` caps a message (headers and body).
pub fn next_frame(buf: &[u8], max: usize) -> Frame {
    match buf {
        [] => return Frame::Incomplete,
        [b'\r', b'\n', b'\r', b'\n', ..] => return Frame::Ping(4),
        // Could be the first half of a ping.
        [b'\r'] | [b'\r', b'\n'] | [b'\r', b'\n', b'\r'] => return Frame::Incomplete,
        [b'\r', b'\n', ..] => return Frame::Skip(2),
        [b'\n', ..] => return Frame::Skip(1),
        _ => {}
    }
    let window = &buf[..buf.len().min(max)];
    let Some(end) = memmem::find(window, b"\r\n\r\n") else {
        return if buf.len() >= max {
            Frame::TooLarge
        } else {
            Frame::Incomplete
        };
    };
    let head_len = end + 4;
    let mut content_length = None;
    for line in buf[..end].split(|&b| b == b'\n') {
        let Some(colon) = memchr::memchr(b':', line) else {
            continue;
        };
        if line.first().is_some_and(|&b| b == b' ' || b == b'\t') {
            continue;
        }
        let name = super::trim_lws(&line[..colon]);
        if HeaderKind::classify(name) == HeaderKind::ContentLength {
            match parse_decimal(&line[colon + 1..]) {
                Some(n) => content_length = Some(n),
                None => return Frame::BadContentLength(head_len),
            }
            break;
        }
    }
    let Some(body) = content_length else {
        return Frame::MissingContentLength(head_len);
    };
    match head_len.checked_add(body) {
        Some(total) if total <= max => {
            if buf.len() >= total {
                Frame::Message(total)
            } else {
                Frame::Incomplete
            }
        }
        _ => Frame::TooLarge,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MSG: &[u8] = b"MESSAGE sip:h SIP/2.0\r\nl: 5\r\n\r\nhello";

    #[test]
    fn whole_message() {
        assert_eq!(next_frame(MSG, 65536), Frame::Message(MSG.len()));
    }

    #[test]
    fn several_messages_in_one_buffer() {
        let mut buf = MSG.to_vec();
        buf.extend_from_slice(MSG);
        buf.extend_from_slice(&MSG[..10]);
        let mut pos = 0;
        let mut seen = 0;
        while let Frame::Message(n) = next_frame(&buf[pos..], 65536) {
            pos += n;
            seen += 1;
        }
        assert_eq!(seen, 2);
        assert_eq!(next_frame(&buf[pos..], 65536), Frame::Incomplete);
    }

    #[test]
    fn one_message_over_many_reads() {
        for cut in 1..MSG.len() {
            assert_eq!(
                next_frame(&MSG[..cut], 65536),
                Frame::Incomplete,
                "cut at {cut}"
            );
        }
    }

    #[test]
    fn keep_alives() {
        assert_eq!(next_frame(b"\r\n\r\n", 100), Frame::Ping(4));
        assert_eq!(next_frame(b"\r\n", 100), Frame::Incomplete);
        assert_eq!(next_frame(b"\r\nREG", 100), Frame::Skip(2));
        assert_eq!(next_frame(b"\nREG", 100), Frame::Skip(1));
    }

    #[test]
    fn content_length_is_required_and_numeric() {
        let m = b"OPTIONS sip:h SIP/2.0\r\nVia: x\r\n\r\n";
        assert_eq!(next_frame(m, 100), Frame::MissingContentLength(m.len()));
        let m = b"OPTIONS sip:h SIP/2.0\r\nContent-Length: x\r\n\r\n";
        assert_eq!(next_frame(m, 100), Frame::BadContentLength(m.len()));
    }

    #[test]
    fn size_cap() {
        assert_eq!(next_frame(MSG, MSG.len()), Frame::Message(MSG.len()));
        assert_eq!(next_frame(MSG, MSG.len() - 1), Frame::TooLarge);
        let endless = vec![b'a'; 200];
        assert_eq!(next_frame(&endless, 100), Frame::TooLarge);
        assert_eq!(next_frame(&endless, 300), Frame::Incomplete);
        let huge = b"MESSAGE sip:h SIP/2.0\r\nContent-Length: 999999\r\n\r\n";
        assert_eq!(next_frame(huge, 65536), Frame::TooLarge);
    }
}
