//! Forward mode, sans-io: how sipward relays a request that passed authentication to the SIP core,
//! and how it relays what the core sends back, statelessly (RFC 3261 16.11).
//!
//! Client → core: Max-Forwards decremented, sipward's Via pushed with a branch derived from the
//! request (so retransmissions, the CANCEL and the non-2xx ACK of an INVITE map to its branch),
//! `received`/`rport` added to the client's Via, Bearer credentials and any client-sent identity
//! header removed, the authenticated identity asserted, a `Path` (REGISTER) or `Record-Route`
//! (dialog-creating requests) carrying a signed [`flow`] token added, a top Route naming sipward
//! popped. Core → client: responses must carry sipward's Via on top, which is popped, and go where
//! the next Via (or the flow token in sipward's Via) says; requests must carry sipward's Route on
//! top, whose flow token says which client flow they go to.
//!
//! What it does not do: authenticate (see [`crate::auth`], whose verdict decides whether a request
//! is relayed), hold transaction state (there is none), resolve host names (destinations are IP
//! addresses taken from Via parameters and flow tokens), or know which flows are still open (the
//! shard layer does; a closed one is answered 430 there).

pub mod config;
pub mod flow;

use std::hash::Hasher as _;
use std::net::{IpAddr, SocketAddr};

use siphasher::sip128::{Hasher128 as _, SipHasher13};

use crate::sip::addr::{param, parse_name_addr, parse_uri, Aor};
use crate::sip::reply::put_top_via;
use crate::sip::scan::{parse_decimal, split_list, Problem};
use crate::sip::{trim_lws, HeaderKind, Message, Method};

pub use config::{ForwardConfig, RawForward};
pub use flow::{Flow, FlowError, FlowKey};

/// RFC 3261 magic cookie, then a prefix that marks branches sipward derived.
const BRANCH_PREFIX: &[u8] = b"z9hG4bKsw";
/// The Via parameter that carries the client's flow when a response cannot find it from the Via
/// below (TCP clients: the connection, not an address, is where the response goes).
const FLOW_PARAM: &[u8] = b"sw-flow";
/// Max-Forwards given to a request that arrives without one (RFC 3261 8.1.1.6).
const DEFAULT_MAX_FORWARDS: usize = 70;

/// The transport of a hop.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    Udp,
    Tcp,
}

impl Transport {
    fn via_name(self) -> &'static [u8] {
        match self {
            Transport::Udp => b"UDP",
            Transport::Tcp => b"TCP",
        }
    }
}

/// Where a relayed message goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dest {
    /// The configured upstream (the SIP core).
    Upstream,
    /// A client flow, or for a response to the core's request, the core's UDP address.
    Flow(Flow),
}

/// Why a message from or to the core is not relayed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// Answer the request with this status.
    Reply(Problem),
    /// A response whose top Via is not sipward's: nobody asked for it.
    NotOurVia,
    /// A message whose destination cannot be told (no usable Via below ours, a forged flow in
    /// sipward's own Via, a request to answer that is an ACK).
    Unroutable,
}

const TOO_MANY_HOPS: Problem = Problem {
    code: 483,
    reason: "Too Many Hops",
};
const FLOW_FAILED: Problem = Problem {
    code: 430,
    reason: "Flow Failed",
};
const NO_ROUTE: Problem = Problem {
    code: 404,
    reason: "Not Found",
};
const BAD_MAX_FORWARDS: Problem = Problem {
    code: 400,
    reason: "Malformed Max-Forwards header",
};

/// Forward-mode decisions for one configuration. Cheap to share between shards.
#[derive(Debug, Clone)]
pub struct Forwarder {
    pub upstream: SocketAddr,
    pub upstream_transport: Transport,
    trusted: Vec<(IpAddr, Option<u16>)>,
    key: FlowKey,
    branch_key: (u64, u64),
    strip_token: bool,
    identity_header: Box<[u8]>,
    /// Host (IPv6 in brackets) and port written in sipward's Via, Path and Record-Route.
    host: Box<[u8]>,
    port: u16,
}

/// What a request from a client is relayed with.
#[derive(Debug, Clone, Copy)]
pub struct Relay<'a> {
    /// Where it arrived: the flow that Path and Record-Route name.
    pub arrival: Flow,
    /// The authenticated address of record, asserted to the core; `None` when the request passed
    /// without a token (policy exemptions, ACK, CANCEL, in-dialog requests).
    pub identity: Option<Aor<'a>>,
}

impl Forwarder {
    pub fn new(cfg: &ForwardConfig, branch_key: (u64, u64)) -> Forwarder {
        Forwarder {
            upstream: cfg.upstream,
            upstream_transport: cfg.upstream_transport,
            trusted: cfg.trusted.clone(),
            key: FlowKey::new(cfg.flow_key.0.as_bytes()),
            branch_key,
            strip_token: cfg.strip_token,
            identity_header: cfg.identity_header.as_bytes().into(),
            host: cfg.advertise_host.as_bytes().into(),
            port: cfg.advertise_port,
        }
    }

    /// Whether messages from `source` come from the core: never authenticated, routed by flow token.
    #[inline]
    pub fn is_trusted(&self, source: SocketAddr) -> bool {
        self.trusted
            .iter()
            .any(|&(ip, port)| ip == source.ip() && port.is_none_or(|p| p == source.port()))
    }

    /// Whether `dest` is the core: the upstream, or a trusted address.
    pub fn leads_to_core(&self, dest: Dest) -> bool {
        match dest {
            Dest::Upstream => true,
            Dest::Flow(Flow::Udp(a)) => self.is_trusted(a),
            Dest::Flow(Flow::Tcp { .. }) => false,
        }
    }

    /// Writes the relayed form of a client's request into `out`, or says why it is answered instead.
    pub fn relay_from_client(
        &self,
        msg: &Message<'_>,
        relay: Relay<'_>,
        out: &mut Vec<u8>,
    ) -> Result<Dest, Refusal> {
        let max_forwards = next_max_forwards(msg)?;
        out.clear();
        put_request_line(out, msg);
        self.put_via(out, msg, self.upstream_transport, Some(relay.arrival));
        let dialog_creating = creates_dialog(msg);
        if msg.method() == Some(Method::Register) {
            self.put_uri_header(out, b"Path: <sip:", &relay.arrival);
        } else if dialog_creating {
            self.put_uri_header(out, b"Record-Route: <sip:", &relay.arrival);
        }
        if let Some(aor) = relay.identity {
            out.extend_from_slice(&self.identity_header);
            out.extend_from_slice(b": <");
            out.extend_from_slice(aor.scheme.as_str().as_bytes());
            out.push(b':');
            if !aor.user.is_empty() {
                out.extend_from_slice(aor.user);
                out.push(b'@');
            }
            out.extend_from_slice(aor.host);
            out.extend_from_slice(b">\r\n");
        }
        let pop_route = self.top_route_is_ours(msg);
        self.copy_rest(
            out,
            msg,
            Copy {
                client_source: Some(relay.arrival.peer()),
                max_forwards,
                pop_route,
                strip_client_headers: true,
            },
        );
        Ok(Dest::Upstream)
    }

    /// Writes the relayed form of a request from the core, which must be routed to a client flow by
    /// the flow token of its top Route (a Path or Record-Route sipward wrote).
    pub fn relay_from_core(&self, msg: &Message<'_>, out: &mut Vec<u8>) -> Result<Dest, Refusal> {
        let answerable = |p: Problem| {
            if msg.method() == Some(Method::Ack) {
                Refusal::Unroutable
            } else {
                Refusal::Reply(p)
            }
        };
        let Some(route) = msg.values(HeaderKind::Route).next() else {
            return Err(answerable(NO_ROUTE));
        };
        let Some(user) = self.our_uri_user(route) else {
            return Err(answerable(NO_ROUTE));
        };
        let flow = self
            .key
            .verify(user.unwrap_or_default())
            .map_err(|_| answerable(FLOW_FAILED))?;
        let max_forwards = next_max_forwards(msg).map_err(|r| match r {
            Refusal::Reply(p) => answerable(p),
            other => other,
        })?;
        let transport = match flow {
            Flow::Udp(_) => Transport::Udp,
            Flow::Tcp { .. } => Transport::Tcp,
        };
        out.clear();
        put_request_line(out, msg);
        // No flow parameter: the response goes back to the core, found from the core's Via.
        self.put_via(out, msg, transport, None);
        if creates_dialog(msg) {
            // So that the client's in-dialog requests come back through sipward, and the core's
            // reach the client's flow again.
            self.put_uri_header(out, b"Record-Route: <sip:", &flow);
        }
        self.copy_rest(
            out,
            msg,
            Copy {
                client_source: None,
                max_forwards,
                pop_route: true,
                strip_client_headers: false,
            },
        );
        Ok(Dest::Flow(flow))
    }

    /// Writes a response (from the core or from a client answering the core) without sipward's Via,
    /// and says where it goes.
    pub fn relay_response(&self, msg: &Message<'_>, out: &mut Vec<u8>) -> Result<Dest, Refusal> {
        let mut vias = msg.vias();
        let top = vias.next().ok_or(Refusal::NotOurVia)?;
        let (_, sent_by, params) = split_via(top).ok_or(Refusal::NotOurVia)?;
        if !self.is_us(sent_by) {
            return Err(Refusal::NotOurVia);
        }
        let [branch, flow] = params_named(params, [b"branch", FLOW_PARAM]);
        if !branch
            .flatten()
            .is_some_and(|b| b.starts_with(BRANCH_PREFIX))
        {
            return Err(Refusal::NotOurVia);
        }
        let dest = match flow {
            Some(token) => Dest::Flow(
                self.key
                    .verify(token.unwrap_or_default())
                    .map_err(|_| Refusal::Unroutable)?,
            ),
            None => {
                let next = vias.next().ok_or(Refusal::Unroutable)?;
                via_destination(next).ok_or(Refusal::Unroutable)?
            }
        };
        out.clear();
        let bytes = msg.bytes();
        let start_end = msg
            .headers()
            .first()
            .map_or(msg.body_offset(), |h| h.raw.start as usize);
        out.extend_from_slice(bytes.get(..start_end).unwrap_or_default());
        let mut popped = false;
        for h in msg.headers() {
            if h.kind == HeaderKind::Via && !popped {
                popped = true;
                put_list_rest(out, b"Via: ", msg.value_of(h));
            } else {
                out.extend_from_slice(h.raw.of(bytes));
            }
        }
        out.extend_from_slice(b"\r\n");
        out.extend_from_slice(msg.body());
        Ok(dest)
    }

    /// `Via: SIP/2.0/T host:port;branch=…[;sw-flow=…]`. The branch follows RFC 3261 16.11: a hash
    /// of the incoming top Via's branch and sent-by when it is RFC 3261 conformant, else of what
    /// identifies the transaction in RFC 2543 terms.
    fn put_via(
        &self,
        out: &mut Vec<u8>,
        msg: &Message<'_>,
        transport: Transport,
        flow: Option<Flow>,
    ) {
        out.extend_from_slice(b"Via: SIP/2.0/");
        out.extend_from_slice(transport.via_name());
        out.push(b' ');
        self.put_host_port(out);
        out.extend_from_slice(b";branch=");
        out.extend_from_slice(BRANCH_PREFIX);
        let hash = self.branch_hash(msg);
        let mut hex = [0u8; 32];
        for (i, h) in hex.iter_mut().enumerate() {
            *h = b"0123456789abcdef"[((hash >> (124 - 4 * i)) & 0xf) as usize];
        }
        out.extend_from_slice(&hex);
        if let Some(flow @ Flow::Tcp { .. }) = flow {
            out.push(b';');
            out.extend_from_slice(FLOW_PARAM);
            out.push(b'=');
            self.key.put(&flow, out);
        }
        out.extend_from_slice(b"\r\n");
    }

    fn branch_hash(&self, msg: &Message<'_>) -> u128 {
        let mut h = SipHasher13::new_with_keys(self.branch_key.0, self.branch_key.1);
        let top = msg.top_via().unwrap_or_default();
        let parts = split_via(top);
        let branch = parts
            .and_then(|(_, _, params)| param(params, b"branch").flatten())
            .filter(|b| b.starts_with(b"z9hG4bK"));
        match (branch, parts) {
            (Some(branch), Some((_, sent_by, _))) => {
                h.write(branch);
                h.write_u8(0xff);
                h.write(sent_by);
            }
            _ => {
                // RFC 2543 peers: the request's identity without the method, so that a CANCEL
                // or ACK maps to its INVITE's branch.
                let cseq = msg.first(HeaderKind::CSeq).unwrap_or_default();
                let cseq_number = cseq
                    .trim_ascii_start()
                    .split(u8::is_ascii_whitespace)
                    .next()
                    .unwrap_or_default();
                for part in [
                    msg.request_uri().unwrap_or_default(),
                    msg.first(HeaderKind::CallId).unwrap_or_default(),
                    msg.first(HeaderKind::From).unwrap_or_default(),
                    to_without_tag(msg.first(HeaderKind::To).unwrap_or_default()),
                    cseq_number,
                    top,
                ] {
                    h.write(part);
                    h.write_u8(0xff);
                }
            }
        }
        h.finish128().as_u128()
    }

    fn put_host_port(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.host);
        out.push(b':');
        out.extend_from_slice(itoa::Buffer::new().format(self.port).as_bytes());
    }

    /// `<name>TOKEN@host:port;lr>` with the URI transport of the hop from the core to sipward.
    fn put_uri_header(&self, out: &mut Vec<u8>, name: &[u8], flow: &Flow) {
        out.extend_from_slice(name);
        self.key.put(flow, out);
        out.push(b'@');
        self.put_host_port(out);
        if self.upstream_transport == Transport::Tcp {
            out.extend_from_slice(b";transport=tcp");
        }
        out.extend_from_slice(b";lr>\r\n");
    }

    /// Whether a Via sent-by names sipward.
    fn is_us(&self, sent_by: &[u8]) -> bool {
        let (host, port) = split_host_port(sent_by);
        host.eq_ignore_ascii_case(&self.host) && port.unwrap_or(5060) == self.port
    }

    /// `Some(user)` when a Route value names sipward (its user part, the flow token if any).
    fn our_uri_user<'a>(&self, route: &'a [u8]) -> Option<Option<&'a [u8]>> {
        let na = parse_name_addr(route).ok()?;
        let uri = parse_uri(na.uri).ok()?;
        (uri.host.eq_ignore_ascii_case(&self.host) && uri.port.unwrap_or(5060) == self.port)
            .then_some(uri.user)
    }

    fn top_route_is_ours(&self, msg: &Message<'_>) -> bool {
        msg.values(HeaderKind::Route)
            .next()
            .is_some_and(|r| self.our_uri_user(r).is_some())
    }

    /// The headers after those sipward adds, rewritten, then the blank line and the body.
    fn copy_rest(&self, out: &mut Vec<u8>, msg: &Message<'_>, c: Copy) {
        let bytes = msg.bytes();
        let mut first_via = true;
        let mut first_route = true;
        let mut wrote_max_forwards = false;
        for h in msg.headers() {
            match h.kind {
                HeaderKind::Via if first_via => {
                    first_via = false;
                    match c.client_source {
                        Some(source) => {
                            let line = msg.value_of(h);
                            let mut values = split_list(line);
                            if let Some(top) = values.next() {
                                put_top_via(out, top, source);
                            }
                            for v in values {
                                out.extend_from_slice(b"Via: ");
                                out.extend_from_slice(v);
                                out.extend_from_slice(b"\r\n");
                            }
                        }
                        None => out.extend_from_slice(h.raw.of(bytes)),
                    }
                }
                HeaderKind::MaxForwards => {
                    if !wrote_max_forwards {
                        wrote_max_forwards = true;
                        put_max_forwards(out, c.max_forwards);
                    }
                }
                HeaderKind::Route if first_route && c.pop_route => {
                    first_route = false;
                    put_list_rest(out, b"Route: ", msg.value_of(h));
                }
                HeaderKind::Authorization | HeaderKind::ProxyAuthorization
                    if c.strip_client_headers && self.strip_token && is_bearer(msg.value_of(h)) => {
                }
                HeaderKind::Other
                    if c.strip_client_headers
                        && msg.name_of(h).eq_ignore_ascii_case(&self.identity_header) => {}
                _ => out.extend_from_slice(h.raw.of(bytes)),
            }
        }
        if !wrote_max_forwards {
            put_max_forwards(out, c.max_forwards);
        }
        out.extend_from_slice(b"\r\n");
        out.extend_from_slice(msg.body());
    }
}

/// How [`Forwarder::copy_rest`] treats the received headers.
#[derive(Debug, Clone, Copy)]
struct Copy {
    /// A client's request: `received`/`rport` for its top Via.
    client_source: Option<SocketAddr>,
    max_forwards: usize,
    pop_route: bool,
    /// Bearer credentials and the identity header are removed from what clients send.
    strip_client_headers: bool,
}

fn put_request_line(out: &mut Vec<u8>, msg: &Message<'_>) {
    let bytes = msg.bytes();
    let end = msg
        .headers()
        .first()
        .map_or(msg.body_offset(), |h| h.raw.start as usize);
    // The start line as received, with leading CRLFs (RFC 3261 7.5) left out.
    let line = bytes.get(..end).unwrap_or_default();
    let skip = line
        .iter()
        .position(|&b| b != b'\r' && b != b'\n')
        .unwrap_or(line.len());
    out.extend_from_slice(&line[skip..]);
}

fn put_max_forwards(out: &mut Vec<u8>, n: usize) {
    out.extend_from_slice(b"Max-Forwards: ");
    out.extend_from_slice(itoa::Buffer::new().format(n).as_bytes());
    out.extend_from_slice(b"\r\n");
}

/// A list header without its first value; nothing when that was the only one.
fn put_list_rest(out: &mut Vec<u8>, name: &[u8], line: &[u8]) {
    let mut first = true;
    for v in split_list(line).skip(1) {
        if first {
            out.extend_from_slice(name);
            first = false;
        } else {
            out.extend_from_slice(b", ");
        }
        out.extend_from_slice(v);
    }
    if !first {
        out.extend_from_slice(b"\r\n");
    }
}

/// The Max-Forwards the relayed request carries, or the answer when it may go no further.
fn next_max_forwards(msg: &Message<'_>) -> Result<usize, Refusal> {
    match msg.first(HeaderKind::MaxForwards) {
        None => Ok(DEFAULT_MAX_FORWARDS),
        Some(v) => match parse_decimal(v) {
            Some(0) => Err(Refusal::Reply(TOO_MANY_HOPS)),
            Some(n) => Ok(n.min(255) - 1),
            None => Err(Refusal::Reply(BAD_MAX_FORWARDS)),
        },
    }
}

/// Out-of-dialog requests that establish a dialog whose later requests must pass sipward.
fn creates_dialog(msg: &Message<'_>) -> bool {
    matches!(
        msg.method(),
        Some(Method::Invite | Method::Subscribe | Method::Refer)
    ) && !msg
        .first(HeaderKind::To)
        .is_some_and(|to| parse_name_addr(to).is_ok_and(|na| param(na.params, b"tag").is_some()))
}

fn is_bearer(v: &[u8]) -> bool {
    let v = trim_lws(v);
    v.len() > 6 && v[..6].eq_ignore_ascii_case(b"bearer") && crate::sip::is_lws(v[6])
}

fn to_without_tag(to: &[u8]) -> &[u8] {
    match parse_name_addr(to) {
        Ok(na) => na.uri,
        Err(_) => to,
    }
}

/// A Via value's transport, sent-by and parameters (starting at the first `;`).
fn split_via(via: &[u8]) -> Option<(&[u8], &[u8], &[u8])> {
    let semi = crate::sip::find_byte(via, b';').unwrap_or(via.len());
    let (head, params) = via.split_at(semi);
    let mut parts = head.splitn(3, |&b| b == b'/');
    let (_, _, rest) = (parts.next()?, parts.next()?, parts.next()?);
    let rest = trim_lws(rest);
    let sp = rest.iter().position(|&b| crate::sip::is_lws(b))?;
    Some((&rest[..sp], trim_lws(&rest[sp..]), params))
}

/// `host` and `port` of a sent-by or hostport; an IPv6 host keeps its brackets.
fn split_host_port(hp: &[u8]) -> (&[u8], Option<u16>) {
    let colon = if hp.first() == Some(&b'[') {
        crate::sip::find_byte(hp, b']').map(|close| close + 1)
    } else {
        crate::sip::find_byte(hp, b':')
    };
    match colon {
        Some(at) if hp.get(at) == Some(&b':') => {
            let port = std::str::from_utf8(&hp[at + 1..])
                .ok()
                .and_then(|p| p.parse().ok());
            (&hp[..at], port)
        }
        Some(at) => (&hp[..at], None),
        None => (hp, None),
    }
}

/// The values of the parameters named `names` (case-insensitive, first occurrence), as [`param`]
/// gives them, in one pass over the parameters.
fn params_named<'a, const N: usize>(
    p: &'a [u8],
    names: [&[u8]; N],
) -> [Option<Option<&'a [u8]>>; N] {
    let mut found = [None; N];
    for (name, value) in crate::sip::addr::params(p) {
        for (slot, wanted) in found.iter_mut().zip(names) {
            if slot.is_none() && name.eq_ignore_ascii_case(wanted) {
                *slot = Some(value);
            }
        }
    }
    found
}

/// An IP address as a Via parameter or host writes it (IPv6 with or without brackets).
fn parse_ip(host: &[u8]) -> Option<IpAddr> {
    let host = host
        .strip_prefix(b"[")
        .and_then(|h| h.strip_suffix(b"]"))
        .unwrap_or(host);
    std::str::from_utf8(host).ok()?.parse().ok()
}

/// Where a response to the request that carried `via` goes (RFC 3261 18.2.2, RFC 3581): UDP to
/// `received` (else the sent-by host) and `rport` (else the sent-by port, else 5060). A Via over
/// another transport names the core reached over its connection.
fn via_destination(via: &[u8]) -> Option<Dest> {
    let (transport, sent_by, params) = split_via(via)?;
    if !transport.eq_ignore_ascii_case(b"UDP") {
        return Some(Dest::Upstream);
    }
    let (host, port) = split_host_port(sent_by);
    let [received, rport] = params_named(params, [b"received", b"rport"]);
    let ip = match received.flatten() {
        Some(r) => parse_ip(r)?,
        None => parse_ip(host)?,
    };
    let port = match rport.flatten() {
        Some(p) => std::str::from_utf8(p).ok()?.parse().ok()?,
        None => port.unwrap_or(5060),
    };
    Some(Dest::Flow(Flow::Udp(SocketAddr::new(ip, port))))
}

#[cfg(test)]
mod tests;
