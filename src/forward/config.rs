//! The `[forward]` configuration section: parsed by [`crate::config`], validated here so that the
//! forward-mode keys live beside the code that uses them. Every error names its key.

use std::net::{IpAddr, SocketAddr};
use std::path::Path;

use serde::Deserialize;

use super::Transport;
use crate::config::{invalid, ConfigError};
use crate::token::http::Secret;

/// `[forward]` as written.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawForward {
    pub upstream: String,
    pub strip_token: bool,
    pub identity_header: String,
    pub flow_key: Option<Secret>,
    pub flow_key_file: Option<String>,
    pub trusted: Option<Vec<String>>,
    pub advertise: Option<String>,
}

impl Default for RawForward {
    fn default() -> RawForward {
        RawForward {
            upstream: String::new(),
            strip_token: true,
            identity_header: "P-Asserted-Identity".into(),
            flow_key: None,
            flow_key_file: None,
            trusted: None,
            advertise: None,
        }
    }
}

/// A validated `[forward]` section.
#[derive(Debug, Clone, PartialEq)]
pub struct ForwardConfig {
    pub upstream: SocketAddr,
    pub upstream_transport: Transport,
    pub strip_token: bool,
    pub identity_header: String,
    /// The flow-token signing key; random per process when none is configured.
    pub flow_key: Secret,
    /// No key was configured and `flow_key` is a random one: flow tokens (and so the Paths the
    /// core stored) do not outlive the process.
    pub flow_key_random: bool,
    /// Sources whose messages are the core's: an address, and a port unless any port is trusted.
    pub trusted: Vec<(IpAddr, Option<u16>)>,
    pub advertise_host: String,
    pub advertise_port: u16,
}

/// Bytes a configured flow key must have at least: shorter ones can be guessed offline.
const MIN_KEY_LEN: usize = 16;

impl RawForward {
    /// `listen` is the first configured UDP listen address: forward mode relays through it, and it
    /// stands in for `advertise` when it names a specific address and port.
    pub fn validate(
        &self,
        base: &Path,
        listen: Option<SocketAddr>,
    ) -> Result<ForwardConfig, ConfigError> {
        if listen.is_none() {
            return Err(invalid(
                "server.udp",
                "forward mode relays over UDP: listen on at least one UDP address",
            ));
        }
        let (transport, addr) = match self.upstream.split_once(':') {
            Some((t, rest)) if t.eq_ignore_ascii_case("udp") => (Transport::Udp, rest),
            Some((t, rest)) if t.eq_ignore_ascii_case("tcp") => (Transport::Tcp, rest),
            _ => {
                return Err(invalid(
                    "forward.upstream",
                    format!(
                        "{:?}: expected \"udp:IP:PORT\" or \"tcp:IP:PORT\"",
                        self.upstream
                    ),
                ))
            }
        };
        let upstream: SocketAddr = addr.parse().map_err(|_| {
            invalid(
                "forward.upstream",
                format!("{addr:?} is not an IP:port address"),
            )
        })?;
        let name = &self.identity_header;
        if name.is_empty()
            || !name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-_.!%*+`'~".contains(&b))
        {
            return Err(invalid(
                "forward.identity_header",
                format!("{name:?} is not a header name"),
            ));
        }
        let flow_key = match (&self.flow_key, &self.flow_key_file) {
            (Some(k), None) => k.clone(),
            (None, Some(f)) => {
                let path = base.join(f);
                let text = std::fs::read_to_string(&path).map_err(|e| {
                    invalid("forward.flow_key_file", format!("{}: {e}", path.display()))
                })?;
                Secret(text.trim().to_owned())
            }
            (Some(_), Some(_)) => {
                return Err(invalid(
                    "forward.flow_key_file",
                    "set flow_key or flow_key_file, not both",
                ))
            }
            (None, None) => {
                let (a, b) = crate::token::random_keys();
                tracing::warn!(
                    "forward.flow_key is not set: a random key signs flow tokens, so Paths and \
                     Record-Routes the core stored stop working when sipward restarts"
                );
                Secret(format!("{a:016x}{b:016x}"))
            }
        };
        if flow_key.0.len() < MIN_KEY_LEN {
            let key = if self.flow_key.is_some() {
                "forward.flow_key"
            } else {
                "forward.flow_key_file"
            };
            return Err(invalid(
                key,
                format!("must be at least {MIN_KEY_LEN} bytes"),
            ));
        }
        let trusted = match &self.trusted {
            // Over UDP the core sends from the address sipward relays to. Over TCP it answers on
            // sipward's connection, but opens its own from any port to reach a flow.
            None if transport == Transport::Udp => vec![(upstream.ip(), Some(upstream.port()))],
            None => vec![(upstream.ip(), None)],
            Some(list) => list
                .iter()
                .enumerate()
                .map(
                    |(i, a)| match (a.parse::<IpAddr>(), a.parse::<SocketAddr>()) {
                        (Ok(ip), _) => Ok((ip, None)),
                        (_, Ok(sa)) => Ok((sa.ip(), Some(sa.port()))),
                        _ => Err(invalid(
                            format!("forward.trusted[{i}]"),
                            format!("{a:?} is neither an IP address nor IP:port"),
                        )),
                    },
                )
                .collect::<Result<_, _>>()?,
        };
        let advertised: SocketAddr =
            match &self.advertise {
                Some(a) => a.parse().map_err(|_| {
                    invalid(
                        "forward.advertise",
                        format!("{a:?} is not an IP:port address"),
                    )
                })?,
                None => match listen {
                    Some(l) if !l.ip().is_unspecified() && l.port() != 0 => l,
                    _ => return Err(invalid(
                        "forward.advertise",
                        "required when the first listen address is unspecified (0.0.0.0, ::) or \
                         has port 0: the address the core sends to sipward",
                    )),
                },
            };
        let advertise_host = match advertised.ip() {
            IpAddr::V4(ip) => ip.to_string(),
            IpAddr::V6(ip) => format!("[{ip}]"),
        };
        Ok(ForwardConfig {
            upstream,
            upstream_transport: transport,
            strip_token: self.strip_token,
            identity_header: name.clone(),
            flow_key_random: self.flow_key.is_none() && self.flow_key_file.is_none(),
            flow_key,
            trusted,
            advertise_host,
            advertise_port: advertised.port(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<ForwardConfig, ConfigError> {
        let raw: RawForward = toml::from_str(text).unwrap();
        raw.validate(Path::new("."), Some("192.0.2.1:5060".parse().unwrap()))
    }

    fn err(text: &str) -> String {
        parse(text).unwrap_err().to_string()
    }

    #[test]
    fn defaults_from_upstream_and_listen_address() {
        let c = parse("upstream = \"udp:127.0.0.1:5070\"\n").unwrap();
        assert_eq!(c.upstream, "127.0.0.1:5070".parse().unwrap());
        assert_eq!(
            c.trusted,
            vec![("127.0.0.1".parse::<IpAddr>().unwrap(), Some(5070))]
        );
        assert!(c.strip_token);
        assert_eq!(c.identity_header, "P-Asserted-Identity");
        assert_eq!(
            (c.advertise_host.as_str(), c.advertise_port),
            ("192.0.2.1", 5060)
        );
        assert!(c.flow_key.0.len() >= MIN_KEY_LEN);
        assert!(!format!("{c:?}").contains(&c.flow_key.0));
    }

    #[test]
    fn tcp_upstream_trusts_any_port_of_its_address() {
        let c = parse("upstream = \"tcp:127.0.0.1:5070\"\n").unwrap();
        assert_eq!(c.upstream_transport, Transport::Tcp);
        assert_eq!(c.trusted, vec![("127.0.0.1".parse().unwrap(), None)]);
    }

    #[test]
    fn explicit_values() {
        let c = parse(
            "upstream = \"UDP:[::1]:5070\"\nstrip_token = false\nidentity_header = \"X-Id\"\n\
             flow_key = \"0123456789abcdef0\"\ntrusted = [\"10.0.0.1\", \"[::1]:5070\"]\n\
             advertise = \"[2001:db8::5]:5080\"\n",
        )
        .unwrap();
        assert!(!c.strip_token);
        assert_eq!(c.trusted[0], ("10.0.0.1".parse().unwrap(), None));
        assert_eq!(c.trusted[1], ("::1".parse().unwrap(), Some(5070)));
        assert_eq!(
            (c.advertise_host.as_str(), c.advertise_port),
            ("[2001:db8::5]", 5080)
        );
        assert_eq!(c.flow_key.0, "0123456789abcdef0");
    }

    #[test]
    fn errors_name_the_key() {
        assert!(err("upstream = \"127.0.0.1:5070\"\n").starts_with("forward.upstream:"));
        assert!(err("upstream = \"udp:host:5070\"\n").starts_with("forward.upstream:"));
        let up = "upstream = \"udp:127.0.0.1:5070\"\n";
        assert!(err(&format!("{up}identity_header = \"P A\"\n"))
            .starts_with("forward.identity_header:"));
        assert!(err(&format!("{up}flow_key = \"short\"\n")).starts_with("forward.flow_key:"));
        assert!(err(&format!("{up}flow_key_file = \"/nonexistent/k\"\n"))
            .starts_with("forward.flow_key_file:"));
        assert!(err(&format!("{up}trusted = [\"x\"]\n")).starts_with("forward.trusted[0]:"));
        assert!(err(&format!("{up}advertise = \"h\"\n")).starts_with("forward.advertise:"));
        let raw: RawForward = toml::from_str(up).unwrap();
        let e = raw
            .validate(Path::new("."), Some("0.0.0.0:5060".parse().unwrap()))
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("forward.advertise:"), "{e}");
        let e = raw.validate(Path::new("."), None).unwrap_err().to_string();
        assert!(e.starts_with("server.udp:"), "{e}");
    }
}
