//! Flow tokens: a client's flow (its UDP address, or the shard and connection its TCP stream lives on)
//! written into a URI user part or a Via parameter, signed so that only this deployment can mint one.
//!
//! A token is `base64url(body || mac)`, where `body` is a kind byte, for TCP the shard (u16) and the
//! connection number (u64), then the IP address (4 or 16 bytes) and the port (u16), all big-endian,
//! and `mac` is HMAC-SHA256 over `body` under the configured key, truncated to [`MAC_LEN`] bytes.
//! The alphabet (`A-Z a-z 0-9 - _`) is unreserved in SIP URIs and a token in Via parameters, so
//! the token needs no escaping anywhere it is put.
//!
//! What it does not do: know whether the flow still exists (the shard's connection table does), or
//! expire tokens: a flow token names a flow, and a flow that is gone fails when it is looked up.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use hmac::{Hmac, Mac};
use sha2::Sha256;

/// Bytes of the HMAC kept: 96 bits, beyond guessing over a network.
pub const MAC_LEN: usize = 12;
/// The longest body: kind, shard, connection, IPv6 address, port.
const BODY_MAX: usize = 1 + 2 + 8 + 16 + 2;
/// The longest token in characters.
pub const TOKEN_MAX: usize = (BODY_MAX + MAC_LEN).div_ceil(3) * 4;

const KIND_UDP4: u8 = 1;
const KIND_UDP6: u8 = 2;
const KIND_TCP4: u8 = 3;
const KIND_TCP6: u8 = 4;

/// Where a client can be reached: what a flow token names.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Flow {
    /// A UDP client at this address; any shard's socket can send to it.
    Udp(SocketAddr),
    /// A TCP connection owned by `shard`, numbered `conn` there, to `peer`.
    Tcp {
        shard: u16,
        conn: u64,
        peer: SocketAddr,
    },
}

impl Flow {
    /// The client's address.
    pub fn peer(&self) -> SocketAddr {
        match *self {
            Flow::Udp(a) => a,
            Flow::Tcp { peer, .. } => peer,
        }
    }
}

/// Why a flow token was not accepted. Both mean the same to a peer (430 Flow Failed); they are
/// told apart for the counters.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum FlowError {
    #[error("flow token is not well formed")]
    Malformed,
    #[error("flow token signature does not verify")]
    Forged,
}

/// The signing key. Its `Debug` output hides it.
#[derive(Clone)]
pub struct FlowKey(Hmac<Sha256>);

impl std::fmt::Debug for FlowKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("FlowKey(<redacted>)")
    }
}

impl FlowKey {
    /// A key from secret bytes (any length; HMAC hashes long keys down).
    pub fn new(secret: &[u8]) -> FlowKey {
        // HMAC accepts keys of every length, so this cannot fail.
        FlowKey(Hmac::<Sha256>::new_from_slice(secret).unwrap_or_else(|_| unreachable!()))
    }

    fn mac(&self, body: &[u8]) -> [u8; MAC_LEN] {
        let mut m = self.0.clone();
        m.update(body);
        let full = m.finalize().into_bytes();
        let mut out = [0u8; MAC_LEN];
        out.copy_from_slice(&full[..MAC_LEN]);
        out
    }

    /// Appends the token for `flow` to `out`.
    pub fn put(&self, flow: &Flow, out: &mut Vec<u8>) {
        let mut raw = [0u8; BODY_MAX + MAC_LEN];
        let mut len = 0;
        let mut push = |bytes: &[u8]| {
            raw[len..len + bytes.len()].copy_from_slice(bytes);
            len += bytes.len();
        };
        let peer = flow.peer();
        let v6 = peer.is_ipv6();
        match *flow {
            Flow::Udp(_) => push(&[if v6 { KIND_UDP6 } else { KIND_UDP4 }]),
            Flow::Tcp { shard, conn, .. } => {
                push(&[if v6 { KIND_TCP6 } else { KIND_TCP4 }]);
                push(&shard.to_be_bytes());
                push(&conn.to_be_bytes());
            }
        }
        match peer.ip() {
            IpAddr::V4(ip) => push(&ip.octets()),
            IpAddr::V6(ip) => push(&ip.octets()),
        }
        push(&peer.port().to_be_bytes());
        let mac = self.mac(&raw[..len]);
        raw[len..len + MAC_LEN].copy_from_slice(&mac);
        len += MAC_LEN;
        let mut text = [0u8; TOKEN_MAX];
        // The buffer is sized for the longest body, so encoding cannot run out of room.
        let n = URL_SAFE_NO_PAD
            .encode_slice(&raw[..len], &mut text)
            .unwrap_or(0);
        out.extend_from_slice(&text[..n]);
    }

    /// The flow a token names, if this key signed it.
    pub fn verify(&self, token: &[u8]) -> Result<Flow, FlowError> {
        if token.len() > TOKEN_MAX {
            return Err(FlowError::Malformed);
        }
        let mut raw = [0u8; TOKEN_MAX];
        let n = URL_SAFE_NO_PAD
            .decode_slice(token, &mut raw)
            .map_err(|_| FlowError::Malformed)?;
        let raw = &raw[..n];
        let body_len = n.checked_sub(MAC_LEN).ok_or(FlowError::Malformed)?;
        let (body, mac) = raw.split_at(body_len);
        let mut m = self.0.clone();
        m.update(body);
        m.verify_truncated_left(mac)
            .map_err(|_| FlowError::Forged)?;
        parse_body(body).ok_or(FlowError::Malformed)
    }
}

fn parse_body(body: &[u8]) -> Option<Flow> {
    let (&kind, rest) = body.split_first()?;
    let (tcp, rest) = match kind {
        KIND_UDP4 | KIND_UDP6 => (None, rest),
        KIND_TCP4 | KIND_TCP6 => {
            let shard = u16::from_be_bytes(rest.get(..2)?.try_into().ok()?);
            let conn = u64::from_be_bytes(rest.get(2..10)?.try_into().ok()?);
            (Some((shard, conn)), rest.get(10..)?)
        }
        _ => return None,
    };
    let ip_len = if matches!(kind, KIND_UDP4 | KIND_TCP4) {
        4
    } else {
        16
    };
    if rest.len() != ip_len + 2 {
        return None;
    }
    let ip = match ip_len {
        4 => IpAddr::V4(Ipv4Addr::from(<[u8; 4]>::try_from(&rest[..4]).ok()?)),
        _ => IpAddr::V6(Ipv6Addr::from(<[u8; 16]>::try_from(&rest[..16]).ok()?)),
    };
    let port = u16::from_be_bytes(rest.get(ip_len..)?.try_into().ok()?);
    let peer = SocketAddr::new(ip, port);
    Some(match tcp {
        None => Flow::Udp(peer),
        Some((shard, conn)) => Flow::Tcp { shard, conn, peer },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn token(key: &FlowKey, flow: &Flow) -> Vec<u8> {
        let mut out = Vec::new();
        key.put(flow, &mut out);
        out
    }

    #[test]
    fn round_trips_every_kind() {
        let key = FlowKey::new(b"secret");
        for flow in [
            Flow::Udp("192.0.2.1:5060".parse().unwrap()),
            Flow::Udp("[2001:db8::1]:5062".parse().unwrap()),
            Flow::Tcp {
                shard: 3,
                conn: u64::MAX - 7,
                peer: "198.51.100.9:40000".parse().unwrap(),
            },
            Flow::Tcp {
                shard: 0,
                conn: 1,
                peer: "[::1]:1".parse().unwrap(),
            },
        ] {
            let t = token(&key, &flow);
            assert!(t.len() <= TOKEN_MAX);
            assert!(t
                .iter()
                .all(|b| b.is_ascii_alphanumeric() || *b == b'-' || *b == b'_'));
            assert_eq!(key.verify(&t), Ok(flow));
        }
    }

    #[test]
    fn another_key_or_a_changed_byte_is_refused() {
        let key = FlowKey::new(b"secret");
        let flow = Flow::Udp("192.0.2.1:5060".parse().unwrap());
        let t = token(&key, &flow);
        assert_eq!(FlowKey::new(b"other").verify(&t), Err(FlowError::Forged));
        for i in 0..t.len() {
            let mut bad = t.clone();
            bad[i] = if bad[i] == b'A' { b'B' } else { b'A' };
            assert!(key.verify(&bad).is_err(), "byte {i}");
        }
        assert!(key.verify(b"").is_err());
        assert_eq!(key.verify(b"!!!!"), Err(FlowError::Malformed));
        assert_eq!(key.verify(&[b'A'; 200]), Err(FlowError::Malformed));
    }

    #[test]
    fn debug_hides_the_key() {
        assert_eq!(format!("{:?}", FlowKey::new(b"x")), "FlowKey(<redacted>)");
    }
}
