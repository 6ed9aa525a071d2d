//! SIP request templates and the little response parsing the load generator needs.
//!
//! A [`Template`] is built once per socket or connection (its Via and Contact carry that local
//! address) and rendered per request into a reused buffer, filling in branch, tag, Call-ID, the
//! user's AOR and the token: no formatting machinery on the request path. Responses are only read
//! for their status code and Call-ID (which encodes the run id and the request's sequence number),
//! and, on streams, framed by Content-Length. This is not a SIP parser: no folding, no multiple
//! Call-IDs, no retransmission timers; sipward answers statelessly, so none of that is needed.

use std::net::SocketAddr;

/// The request method sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Method {
    #[value(name = "REGISTER")]
    Register,
    #[value(name = "INVITE")]
    Invite,
    #[value(name = "MESSAGE")]
    Message,
}

impl Method {
    pub fn as_str(self) -> &'static str {
        match self {
            Method::Register => "REGISTER",
            Method::Invite => "INVITE",
            Method::Message => "MESSAGE",
        }
    }
}

/// The identity one token row stands for, pre-rendered for the template.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Who {
    /// `user@host` of the To and From URIs.
    pub aor: String,
    /// The host part, the Request-URI of a REGISTER.
    pub domain: String,
    /// The user part alone, for the Contact.
    pub contact_user: String,
}

impl Who {
    /// A user that already reads `user@host` keeps its host; otherwise the row's domain, else
    /// `fallback`, is appended.
    pub fn new(user: &str, row_domain: Option<&str>, fallback: &str) -> Who {
        match user.split_once('@') {
            Some((u, host)) => Who {
                aor: user.to_owned(),
                domain: host.to_owned(),
                contact_user: u.to_owned(),
            },
            None => {
                let domain = row_domain.unwrap_or(fallback);
                Who {
                    aor: format!("{user}@{domain}"),
                    domain: domain.to_owned(),
                    contact_user: user.to_owned(),
                }
            }
        }
    }
}

#[derive(Debug, Clone)]
enum Part {
    Lit(Vec<u8>),
    Aor,
    Domain,
    ContactUser,
    Branch,
    Tag,
    CallId,
    Token,
}

/// A request with holes; see [`Template::render`].
#[derive(Debug, Clone)]
pub struct Template {
    parts: Vec<Part>,
}

impl Template {
    /// `transport` is `UDP` or `TCP`, as in the Via.
    pub fn new(method: Method, transport: &str, local: SocketAddr) -> Template {
        let m = method.as_str();
        let lower = transport.to_ascii_lowercase();
        let mut parts = Vec::new();
        let lit = |parts: &mut Vec<Part>, s: &str| parts.push(Part::Lit(s.as_bytes().to_vec()));
        lit(&mut parts, &format!("{m} sip:"));
        // A REGISTER goes to the registrar's domain; other requests to the AOR itself.
        parts.push(if method == Method::Register {
            Part::Domain
        } else {
            Part::Aor
        });
        lit(
            &mut parts,
            &format!(" SIP/2.0\r\nVia: SIP/2.0/{transport} {local};branch=z9hG4bK"),
        );
        parts.push(Part::Branch);
        lit(&mut parts, ";rport\r\nMax-Forwards: 70\r\nFrom: <sip:");
        parts.push(Part::Aor);
        lit(&mut parts, ">;tag=");
        parts.push(Part::Tag);
        lit(&mut parts, "\r\nTo: <sip:");
        parts.push(Part::Aor);
        lit(&mut parts, ">\r\nCall-ID: ");
        parts.push(Part::CallId);
        lit(&mut parts, &format!("\r\nCSeq: 1 {m}\r\n"));
        if method != Method::Message {
            lit(&mut parts, "Contact: <sip:");
            parts.push(Part::ContactUser);
            lit(
                &mut parts,
                &format!(
                    "@{local};transport={lower};ob>;+sip.instance=\"<urn:uuid:00000000-0000-4000-8000-{:012}>\"\r\n",
                    local.port()
                ),
            );
        }
        if method == Method::Register {
            lit(&mut parts, "Expires: 3600\r\n");
        }
        lit(
            &mut parts,
            "Allow: INVITE, ACK, CANCEL, BYE, NOTIFY, REFER, MESSAGE, OPTIONS, INFO, SUBSCRIBE, UPDATE, PRACK\r\n\
             Supported: replaces, outbound, gruu, path, timer\r\n\
             User-Agent: sipward-load/0.1.0\r\n\
             Authorization: Bearer ",
        );
        parts.push(Part::Token);
        lit(&mut parts, "\r\nContent-Length: 0\r\n\r\n");
        Template { parts }
    }

    /// Writes request `seq` of run `run` into `out` (cleared first).
    pub fn render(&self, out: &mut Vec<u8>, run: u64, seq: u64, who: &Who, token: &[u8]) {
        out.clear();
        for p in &self.parts {
            match p {
                Part::Lit(b) => out.extend_from_slice(b),
                Part::Aor => out.extend_from_slice(who.aor.as_bytes()),
                Part::Domain => out.extend_from_slice(who.domain.as_bytes()),
                Part::ContactUser => out.extend_from_slice(who.contact_user.as_bytes()),
                Part::Branch => {
                    push_hex16(out, run);
                    push_hex16(out, seq);
                }
                Part::Tag => push_hex16(out, seq ^ run),
                Part::CallId => write_call_id(out, run, seq),
                Part::Token => out.extend_from_slice(token),
            }
        }
    }
}

fn push_hex16(out: &mut Vec<u8>, v: u64) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    for i in (0..16).rev() {
        out.push(HEX[((v >> (i * 4)) & 0xf) as usize]);
    }
}

const CALL_ID_HOST: &[u8] = b"@sipward-load";

/// `<run:016x>-<seq:016x>@sipward-load`: the response's Call-ID tells which request it answers, and
/// responses left over from another run are recognised as strays.
pub fn write_call_id(out: &mut Vec<u8>, run: u64, seq: u64) {
    push_hex16(out, run);
    out.push(b'-');
    push_hex16(out, seq);
    out.extend_from_slice(CALL_ID_HOST);
}

/// Reads `(run, seq)` back from a Call-ID written by [`write_call_id`].
pub fn parse_call_id(v: &[u8]) -> Option<(u64, u64)> {
    if v.len() != 33 + CALL_ID_HOST.len() || v[16] != b'-' || &v[33..] != CALL_ID_HOST {
        return None;
    }
    let hex = |b: &[u8]| u64::from_str_radix(std::str::from_utf8(b).ok()?, 16).ok();
    Some((hex(&v[..16])?, hex(&v[17..33])?))
}

/// What the load generator reads from a response.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Response<'a> {
    pub status: u16,
    pub call_id: &'a [u8],
}

/// Status code from `SIP/2.0 NNN …` and the value of the first `Call-ID` (or compact `i`) header,
/// names compared case-insensitively. `None` for requests, malformed status lines and responses
/// without a Call-ID.
pub fn parse_response(msg: &[u8]) -> Option<Response<'_>> {
    let mut lines = msg.split(|&b| b == b'\n').map(strip_cr);
    let status_line = lines.next()?;
    let rest = status_line
        .get(..8)
        .filter(|p| p.eq_ignore_ascii_case(b"SIP/2.0 "))
        .map(|_| &status_line[8..])?;
    let code = rest.get(..3)?;
    if !code.iter().all(u8::is_ascii_digit) || rest.get(3).is_some_and(|&b| b != b' ') {
        return None;
    }
    let status = code
        .iter()
        .fold(0u16, |acc, &d| acc * 10 + u16::from(d - b'0'));
    if !(100..=699).contains(&status) {
        return None;
    }
    for line in lines {
        if line.is_empty() {
            break;
        }
        let Some(colon) = line.iter().position(|&b| b == b':') else {
            continue;
        };
        let name = trim(&line[..colon]);
        if name.eq_ignore_ascii_case(b"call-id") || name.eq_ignore_ascii_case(b"i") {
            return Some(Response {
                status,
                call_id: trim(&line[colon + 1..]),
            });
        }
    }
    None
}

fn strip_cr(line: &[u8]) -> &[u8] {
    line.strip_suffix(b"\r").unwrap_or(line)
}

fn trim(mut s: &[u8]) -> &[u8] {
    while let [b' ' | b'\t', rest @ ..] = s {
        s = rest;
    }
    while let [rest @ .., b' ' | b'\t'] = s {
        s = rest;
    }
    s
}

/// The next thing at the front of a stream's receive buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Frame {
    /// Not a whole message yet.
    Incomplete,
    /// This many bytes of CR/LF (keep-alive pongs) to drop.
    Skip(usize),
    /// A whole message of this many bytes.
    Message(usize),
    /// A header section without a usable Content-Length: the stream cannot be resynchronised.
    Bad,
}

/// Frames a SIP message on a stream by Content-Length (long or compact `l`), as RFC 3261 18.3
/// requires there.
pub fn next_frame(buf: &[u8]) -> Frame {
    let crlf = buf
        .iter()
        .take_while(|&&b| b == b'\r' || b == b'\n')
        .count();
    if crlf > 0 {
        return Frame::Skip(crlf);
    }
    let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") else {
        // A peer that never ends its header section would grow the buffer without bound.
        return if buf.len() > 65536 {
            Frame::Bad
        } else {
            Frame::Incomplete
        };
    };
    let head = &buf[..end];
    let mut length = None;
    for line in head.split(|&b| b == b'\n').map(strip_cr).skip(1) {
        let Some(colon) = line.iter().position(|&b| b == b':') else {
            continue;
        };
        let name = trim(&line[..colon]);
        if name.eq_ignore_ascii_case(b"content-length") || name.eq_ignore_ascii_case(b"l") {
            length = std::str::from_utf8(trim(&line[colon + 1..]))
                .ok()
                .and_then(|v| v.parse::<usize>().ok());
            if length.is_none() {
                return Frame::Bad;
            }
        }
    }
    match length {
        Some(n) if n <= 1 << 20 => {
            let total = end + 4 + n;
            if buf.len() >= total {
                Frame::Message(total)
            } else {
                Frame::Incomplete
            }
        }
        _ => Frame::Bad,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn who() -> Who {
        Who::new("alice", None, "example.com")
    }

    #[test]
    fn who_forms() {
        assert_eq!(
            Who::new("bob", Some("example.org"), "example.com"),
            Who {
                aor: "bob@example.org".into(),
                domain: "example.org".into(),
                contact_user: "bob".into()
            }
        );
        assert_eq!(
            Who::new("carol@corp.test", Some("example.org"), "example.com"),
            Who {
                aor: "carol@corp.test".into(),
                domain: "corp.test".into(),
                contact_user: "carol".into()
            }
        );
    }

    #[test]
    fn register_renders_like_a_softphone() {
        let local: SocketAddr = "127.0.0.1:40001".parse().unwrap();
        let t = Template::new(Method::Register, "UDP", local);
        let mut out = Vec::new();
        t.render(&mut out, 0x1234, 5, &who(), b"alice-token-7f3a9c");
        let s = String::from_utf8(out.clone()).unwrap();
        assert!(s.starts_with("REGISTER sip:example.com SIP/2.0\r\n"), "{s}");
        assert!(s.contains(
            "\r\nVia: SIP/2.0/UDP 127.0.0.1:40001;branch=z9hG4bK00000000000012340000000000000005;rport\r\n"
        ));
        assert!(s.contains("\r\nFrom: <sip:alice@example.com>;tag="));
        assert!(s.contains("\r\nTo: <sip:alice@example.com>\r\n"));
        assert!(s.contains("\r\nCall-ID: 0000000000001234-0000000000000005@sipward-load\r\n"));
        assert!(s.contains("\r\nCSeq: 1 REGISTER\r\n"));
        assert!(s.contains("\r\nContact: <sip:alice@127.0.0.1:40001;transport=udp;ob>"));
        assert!(s.contains("\r\nExpires: 3600\r\n"));
        assert!(s.contains("\r\nAuthorization: Bearer alice-token-7f3a9c\r\n"));
        assert!(s.ends_with("\r\nContent-Length: 0\r\n\r\n"));
        assert!((520..700).contains(&s.len()), "{} bytes", s.len());
        // Rendering again into the same buffer replaces, not appends, and changes only the holes.
        t.render(&mut out, 0x1234, 6, &who(), b"alice-token-7f3a9c");
        assert_eq!(out.len(), s.len());
        assert_ne!(out, s.as_bytes());
    }

    #[test]
    fn invite_and_message_address_the_aor() {
        let local: SocketAddr = "[::1]:5999".parse().unwrap();
        let mut out = Vec::new();
        Template::new(Method::Invite, "TCP", local).render(&mut out, 1, 2, &who(), b"t");
        let s = String::from_utf8(out.clone()).unwrap();
        assert!(s.starts_with("INVITE sip:alice@example.com SIP/2.0\r\n"));
        assert!(s.contains("Via: SIP/2.0/TCP [::1]:5999;branch="));
        assert!(s.contains("CSeq: 1 INVITE\r\n") && !s.contains("Expires"));
        Template::new(Method::Message, "UDP", local).render(&mut out, 1, 2, &who(), b"t");
        let s = String::from_utf8(out).unwrap();
        assert!(s.starts_with("MESSAGE sip:alice@example.com SIP/2.0\r\n"));
        assert!(!s.contains("Contact:"));
    }

    #[test]
    fn call_id_round_trip() {
        let mut out = Vec::new();
        write_call_id(&mut out, u64::MAX, 42);
        assert_eq!(parse_call_id(&out), Some((u64::MAX, 42)));
        assert_eq!(parse_call_id(b"abc@host"), None);
        assert_eq!(
            parse_call_id(b"0000000000000001-000000000000002a@elsewhere"),
            None
        );
        assert_eq!(
            parse_call_id(b"000000000000000g-000000000000002a@sipward-load"),
            None
        );
    }

    #[test]
    fn response_long_and_compact_call_id_case_insensitive() {
        let r = parse_response(
            b"SIP/2.0 200 OK\r\nVia: SIP/2.0/UDP x;branch=z9hG4bK1\r\nCALL-id:   abc@h \r\nCSeq: 1 REGISTER\r\n\r\n",
        )
        .unwrap();
        assert_eq!(
            r,
            Response {
                status: 200,
                call_id: b"abc@h"
            }
        );
        let r = parse_response(b"SIP/2.0 401 Unauthorized\r\nI:xyz\r\n\r\n").unwrap();
        assert_eq!((r.status, r.call_id), (401, &b"xyz"[..]));
        let r = parse_response(b"sip/2.0 503 Service Unavailable\ni\t: q\n\n").unwrap();
        assert_eq!((r.status, r.call_id), (503, &b"q"[..]));
        // Reason phrase optional.
        let r = parse_response(b"SIP/2.0 180\r\nCall-ID: c\r\n\r\n").unwrap();
        assert_eq!(r.status, 180);
    }

    #[test]
    fn response_rejects_requests_and_junk() {
        assert_eq!(
            parse_response(b"REGISTER sip:x SIP/2.0\r\nCall-ID: a\r\n\r\n"),
            None
        );
        assert_eq!(parse_response(b"SIP/2.0 20 OK\r\nCall-ID: a\r\n\r\n"), None);
        assert_eq!(
            parse_response(b"SIP/2.0 2000 OK\r\nCall-ID: a\r\n\r\n"),
            None
        );
        assert_eq!(parse_response(b"SIP/2.0 099 x\r\nCall-ID: a\r\n\r\n"), None);
        assert_eq!(parse_response(b"SIP/2.0 200 OK\r\nCSeq: 1 X\r\n\r\n"), None);
        // A Call-ID in the body is not a header.
        assert_eq!(
            parse_response(b"SIP/2.0 200 OK\r\nContent-Length: 11\r\n\r\nCall-ID: a\r\n"),
            None
        );
        // `Call-ID-ish` or `ii` are other headers.
        assert_eq!(
            parse_response(b"SIP/2.0 200 OK\r\nCall-IDx: a\r\nii: b\r\n\r\n"),
            None
        );
        assert_eq!(parse_response(b""), None);
    }

    #[test]
    fn stream_framing() {
        let msg = b"SIP/2.0 200 OK\r\nCall-ID: a\r\nContent-Length: 4\r\n\r\nbody";
        assert_eq!(next_frame(msg), Frame::Message(msg.len()));
        assert_eq!(next_frame(&msg[..msg.len() - 1]), Frame::Incomplete);
        let mut two = msg.to_vec();
        two.extend_from_slice(b"SIP/2.0 401 x\r\nl: 0\r\n\r\n");
        assert_eq!(next_frame(&two), Frame::Message(msg.len()));
        assert_eq!(
            next_frame(&two[msg.len()..]),
            Frame::Message(two.len() - msg.len())
        );
        assert_eq!(next_frame(b"\r\n\r\nSIP"), Frame::Skip(4));
        assert_eq!(
            next_frame(b"SIP/2.0 200 OK\r\nCall-ID: a\r\n\r\n"),
            Frame::Bad
        );
        assert_eq!(
            next_frame(b"SIP/2.0 200 OK\r\nContent-Length: x\r\n\r\n"),
            Frame::Bad
        );
        assert_eq!(next_frame(b"SIP/2.0 200 OK\r\nCall-ID"), Frame::Incomplete);
    }
}
