//! Configuration: a TOML file deserialised into [`RawConfig`] (unknown keys rejected), then
//! [`RawConfig::validate`]d into [`Config`] before anything binds. Every error names the key at fault.
//!
//! The README's "Configuration reference" documents each key; keep the two in step.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::auth::{ChallengeMode, Policy, Profile};

/// A configuration error: the key (dotted path) and what is wrong with it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    #[error("{path}: {reason}")]
    Read { path: String, reason: String },
    #[error("{0}")]
    Parse(String),
    #[error("{key}: {reason}")]
    Invalid { key: String, reason: String },
}

fn invalid(key: impl Into<String>, reason: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        key: key.into(),
        reason: reason.into(),
    }
}

/// One address or a list of them.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum Addrs {
    One(String),
    Many(Vec<String>),
}

impl Addrs {
    fn list(&self) -> Vec<&str> {
        match self {
            Addrs::One(a) => vec![a.as_str()],
            Addrs::Many(v) => v.iter().map(String::as_str).collect(),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum IoMode {
    Auto,
    IoUring,
    Epoll,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawConfig {
    #[serde(default)]
    pub server: RawServer,
    #[serde(default)]
    pub auth: RawAuth,
    pub static_tokens: Option<RawStaticTokens>,
    #[serde(default)]
    pub respond: RawRespond,
    #[serde(default)]
    pub cache: RawCache,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawServer {
    pub udp: Addrs,
    pub tcp: Addrs,
    pub shards: usize,
    pub realm: String,
    pub io: IoMode,
    pub max_message_size: usize,
    pub tcp_idle_timeout_s: u64,
    pub tcp_max_connections: usize,
    pub udp_recv_buffer: usize,
}

impl Default for RawServer {
    fn default() -> RawServer {
        RawServer {
            udp: Addrs::Many(vec!["0.0.0.0:5060".into()]),
            tcp: Addrs::Many(vec!["0.0.0.0:5060".into()]),
            shards: 0,
            realm: "sipward".into(),
            io: IoMode::Auto,
            max_message_size: 65536,
            tcp_idle_timeout_s: 300,
            tcp_max_connections: 10_000,
            udp_recv_buffer: 4 << 20,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawAuth {
    pub methods: Vec<String>,
    pub profile: String,
    pub challenge: String,
    pub in_dialog: bool,
    pub scope: Option<String>,
    pub authz_server: Option<String>,
    pub retry_after_s: u32,
}

impl Default for RawAuth {
    fn default() -> RawAuth {
        RawAuth {
            methods: vec!["REGISTER".into(), "INVITE".into()],
            profile: "rfc8898".into(),
            challenge: "www".into(),
            in_dialog: false,
            scope: None,
            authz_server: None,
            retry_after_s: 5,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawStaticTokens {
    pub file: String,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawRespond {
    pub status: u16,
}

impl Default for RawRespond {
    fn default() -> RawRespond {
        RawRespond { status: 200 }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawCache {
    pub max_entries: usize,
    pub max_ttl_s: u64,
    pub negative_ttl_s: u64,
}

impl Default for RawCache {
    fn default() -> RawCache {
        RawCache {
            max_entries: 100_000,
            max_ttl_s: 300,
            negative_ttl_s: 10,
        }
    }
}

/// Validated settings for the server layer.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    pub udp: Vec<SocketAddr>,
    pub tcp: Vec<SocketAddr>,
    /// Resolved: at least 1.
    pub shards: usize,
    pub io: IoMode,
    pub max_message_size: usize,
    pub tcp_idle_timeout_s: u64,
    pub tcp_max_connections: usize,
    pub udp_recv_buffer: usize,
}

#[derive(Debug, Clone)]
pub struct CacheConfig {
    pub max_entries: usize,
    pub max_ttl_s: u64,
    pub negative_ttl_s: u64,
}

/// A configuration that passed validation.
#[derive(Debug, Clone)]
pub struct Config {
    pub server: ServerConfig,
    pub policy: Policy,
    pub respond_status: u16,
    /// Static token file, resolved against the configuration file's directory.
    pub static_tokens: Option<PathBuf>,
    pub cache: CacheConfig,
}

impl Config {
    /// Reads, parses and validates a configuration file.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|e| ConfigError::Read {
            path: path.display().to_string(),
            reason: e.to_string(),
        })?;
        let base = path.parent().unwrap_or(Path::new("."));
        Config::parse(&text, base)
    }

    /// Parses and validates configuration text; relative paths are resolved against `base`.
    pub fn parse(text: &str, base: &Path) -> Result<Config, ConfigError> {
        let raw: RawConfig = toml::from_str(text).map_err(|e| ConfigError::Parse(e.to_string()))?;
        raw.validate(base)
    }
}

/// Values that end up inside a quoted string of a challenge header.
fn check_quotable(key: &str, v: &str) -> Result<(), ConfigError> {
    if v.is_empty() {
        return Err(invalid(key, "must not be empty"));
    }
    if v.chars().any(|c| c == '"' || c == '\\' || c.is_control()) {
        return Err(invalid(
            key,
            "must not contain quotes, backslashes or control characters",
        ));
    }
    Ok(())
}

fn parse_addrs(key: &str, addrs: &Addrs) -> Result<Vec<SocketAddr>, ConfigError> {
    addrs
        .list()
        .into_iter()
        .enumerate()
        .map(|(i, a)| {
            a.parse::<SocketAddr>().map_err(|_| {
                invalid(
                    format!("{key}[{i}]"),
                    format!("{a:?} is not an IP:port address"),
                )
            })
        })
        .collect()
}

impl RawConfig {
    pub fn validate(self, base: &Path) -> Result<Config, ConfigError> {
        let s = &self.server;
        let udp = parse_addrs("server.udp", &s.udp)?;
        let tcp = parse_addrs("server.tcp", &s.tcp)?;
        if udp.is_empty() && tcp.is_empty() {
            return Err(invalid("server.udp", "no UDP or TCP address to listen on"));
        }
        let shards = match s.shards {
            0 => std::thread::available_parallelism().map_or(1, |n| n.get()),
            n if n > 1024 => return Err(invalid("server.shards", "at most 1024")),
            n => n,
        };
        check_quotable("server.realm", &s.realm)?;
        if !(512..=1 << 20).contains(&s.max_message_size) {
            return Err(invalid(
                "server.max_message_size",
                "must be between 512 and 1048576 bytes",
            ));
        }
        if s.tcp_idle_timeout_s == 0 {
            return Err(invalid("server.tcp_idle_timeout_s", "must be at least 1"));
        }
        if s.tcp_max_connections == 0 {
            return Err(invalid("server.tcp_max_connections", "must be at least 1"));
        }
        let a = &self.auth;
        let mut methods: Vec<Box<[u8]>> = Vec::new();
        for (i, m) in a.methods.iter().enumerate() {
            let key = format!("auth.methods[{i}]");
            if m.is_empty()
                || !m
                    .bytes()
                    .all(|b| b.is_ascii_alphabetic() || b == b'-' || b == b'_')
            {
                return Err(invalid(key, format!("{m:?} is not a SIP method name")));
            }
            if m == "ACK" || m == "CANCEL" {
                return Err(invalid(
                    key,
                    format!("{m} cannot be challenged (RFC 3261 22.1)"),
                ));
            }
            methods.push(m.as_bytes().into());
        }
        let profile = match a.profile.as_str() {
            "rfc8898" => Profile::Rfc8898,
            "oracle" => Profile::Oracle,
            other => {
                return Err(invalid(
                    "auth.profile",
                    format!("{other:?}: expected \"rfc8898\" or \"oracle\""),
                ))
            }
        };
        let challenge = match a.challenge.as_str() {
            "www" => ChallengeMode::Www,
            "proxy" => ChallengeMode::Proxy,
            other => {
                return Err(invalid(
                    "auth.challenge",
                    format!("{other:?}: expected \"www\" or \"proxy\""),
                ))
            }
        };
        if let Some(scope) = &a.scope {
            check_quotable("auth.scope", scope)?;
        }
        if let Some(server) = &a.authz_server {
            check_quotable("auth.authz_server", server)?;
            if !(server.starts_with("https://") || server.starts_with("http://")) {
                return Err(invalid(
                    "auth.authz_server",
                    "must be an http:// or https:// URI",
                ));
            }
        }
        if !(200..=699).contains(&self.respond.status) {
            return Err(invalid(
                "respond.status",
                "must be a final status, 200 to 699",
            ));
        }
        let c = &self.cache;
        if c.max_entries == 0 {
            return Err(invalid("cache.max_entries", "must be at least 1"));
        }
        if c.max_ttl_s == 0 {
            return Err(invalid("cache.max_ttl_s", "must be at least 1"));
        }
        let static_tokens = match &self.static_tokens {
            Some(st) if st.file.is_empty() => {
                return Err(invalid("static_tokens.file", "must not be empty"))
            }
            Some(st) => Some(base.join(&st.file)),
            None => None,
        };
        Ok(Config {
            server: ServerConfig {
                udp,
                tcp,
                shards,
                io: s.io,
                max_message_size: s.max_message_size,
                tcp_idle_timeout_s: s.tcp_idle_timeout_s,
                tcp_max_connections: s.tcp_max_connections,
                udp_recv_buffer: s.udp_recv_buffer,
            },
            policy: Policy {
                methods,
                in_dialog: a.in_dialog,
                profile,
                challenge,
                realm: s.realm.as_str().into(),
                scope: a.scope.as_deref().map(Into::into),
                authz_server: a.authz_server.as_deref().map(Into::into),
                retry_after_s: a.retry_after_s,
                clock_skew_s: 0,
            },
            respond_status: self.respond.status,
            static_tokens,
            cache: CacheConfig {
                max_entries: c.max_entries,
                max_ttl_s: c.max_ttl_s,
                negative_ttl_s: c.negative_ttl_s,
            },
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn err(text: &str) -> String {
        Config::parse(text, Path::new("/etc/sipward"))
            .unwrap_err()
            .to_string()
    }

    #[test]
    fn defaults() {
        let c = Config::parse("", Path::new(".")).unwrap();
        assert_eq!(c.server.udp, vec!["0.0.0.0:5060".parse().unwrap()]);
        assert!(c.server.shards >= 1);
        assert_eq!(c.server.io, IoMode::Auto);
        assert_eq!(c.policy.profile, Profile::Rfc8898);
        assert_eq!(c.policy.methods.len(), 2);
        assert_eq!(c.respond_status, 200);
        assert!(c.static_tokens.is_none());
    }

    #[test]
    fn full_example() {
        let c = Config::parse(
            r#"
[server]
udp = "127.0.0.1:5070"
tcp = ["127.0.0.1:5070", "[::1]:5070"]
shards = 2
realm = "example.com"
io = "epoll"
[auth]
methods = ["REGISTER", "INVITE", "MESSAGE"]
profile = "oracle"
challenge = "proxy"
in_dialog = true
scope = "sip"
authz_server = "https://as.example.com"
[static_tokens]
file = "tokens.toml"
[respond]
status = 202
"#,
            Path::new("/etc/sipward"),
        )
        .unwrap();
        assert_eq!(c.server.tcp.len(), 2);
        assert_eq!(c.server.shards, 2);
        assert_eq!(c.server.io, IoMode::Epoll);
        assert_eq!(c.policy.profile, Profile::Oracle);
        assert_eq!(c.policy.challenge, ChallengeMode::Proxy);
        assert_eq!(&*c.policy.realm, "example.com");
        assert_eq!(
            c.static_tokens,
            Some(PathBuf::from("/etc/sipward/tokens.toml"))
        );
        assert_eq!(c.respond_status, 202);
    }

    #[test]
    fn unknown_keys_are_rejected_by_name() {
        assert!(err("[server]\nudpp = \"x\"\n").contains("unknown field `udpp`"));
        assert!(err("[nonsense]\n").contains("unknown field `nonsense`"));
        assert!(err("[auth]\nmethod = []\n").contains("unknown field `method`"));
    }

    #[test]
    fn errors_name_the_key() {
        assert_eq!(
            err("[server]\nudp = [\"127.0.0.1:5060\", \"nope\"]\n"),
            "server.udp[1]: \"nope\" is not an IP:port address"
        );
        assert!(err("[server]\nio = \"kqueue\"\n").contains("io"));
        assert_eq!(
            err("[server]\nshards = 5000\n"),
            "server.shards: at most 1024"
        );
        assert!(err("[server]\nrealm = \"a\\\"b\"\n").starts_with("server.realm:"));
        assert_eq!(
            err("[server]\nudp = []\ntcp = []\n"),
            "server.udp: no UDP or TCP address to listen on"
        );
        assert!(err("[auth]\nprofile = \"x\"\n").starts_with("auth.profile:"));
        assert!(err("[auth]\nchallenge = \"x\"\n").starts_with("auth.challenge:"));
        assert!(
            err("[auth]\nmethods = [\"REGISTER\", \"ACK\"]\n").starts_with("auth.methods[1]: ACK")
        );
        assert!(err("[auth]\nmethods = [\"REG ISTER\"]\n").starts_with("auth.methods[0]:"));
        assert!(err("[auth]\nauthz_server = \"ftp://x\"\n").starts_with("auth.authz_server:"));
        assert!(err("[respond]\nstatus = 100\n").starts_with("respond.status:"));
        assert!(err("[cache]\nmax_entries = 0\n").starts_with("cache.max_entries:"));
        assert!(err("[server]\nmax_message_size = 10\n").starts_with("server.max_message_size:"));
        assert!(err("[static_tokens]\nfile = \"\"\n").starts_with("static_tokens.file:"));
    }

    #[test]
    fn type_errors_name_the_key() {
        let e = err("[server]\nshards = \"two\"\n");
        assert!(e.contains("shards"), "{e}");
    }
}
