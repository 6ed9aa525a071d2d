//! Configuration: a TOML file deserialised into [`RawConfig`] (unknown keys rejected), then
//! [`RawConfig::validate`]d into [`Config`] before anything binds. Every error names the key at fault.
//!
//! The README's "Configuration reference" documents each key; keep the two in step.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::auth::{ChallengeMode, Policy, Profile};
use crate::token::http::{ClientAuth, Kind, RemoteConfig, Secret};

impl<'de> Deserialize<'de> for Secret {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Secret, D::Error> {
        String::deserialize(d).map(Secret)
    }
}

/// Where token answers come from.
#[derive(Debug, Clone)]
pub enum SourceConfig {
    /// None configured: requests with Bearer credentials get the "no source" answer.
    None,
    /// `[static_tokens] file`, resolved against the configuration file's directory.
    Static(PathBuf),
    /// `[introspection]` or `[userinfo]`.
    Remote(RemoteConfig),
}

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

pub(crate) fn invalid(key: impl Into<String>, reason: impl Into<String>) -> ConfigError {
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
    pub introspection: Option<RawRemote>,
    pub userinfo: Option<RawRemote>,
    #[serde(default)]
    pub respond: RawRespond,
    #[serde(default)]
    pub cache: RawCache,
    #[serde(default)]
    pub admin: RawAdmin,
    pub forward: Option<crate::forward::RawForward>,
}

/// `[admin]`: the HTTP server for /metrics, /healthz and /readyz; off unless `listen` is set.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawAdmin {
    pub listen: Option<String>,
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
    pub shutdown_grace_s: u64,
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
            shutdown_grace_s: 10,
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

/// `[introspection]` and `[userinfo]`: the same keys, except that the client credentials belong to
/// introspection only.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawRemote {
    pub url: Option<String>,
    pub urls: Option<Vec<String>>,
    pub client_id: Option<String>,
    pub client_secret: Option<Secret>,
    pub client_secret_file: Option<String>,
    pub client_auth: String,
    pub timeout_ms: u64,
    pub connect_timeout_ms: u64,
    pub username_claim: Option<String>,
    pub required_scope: Option<String>,
    pub audience: Option<String>,
    pub clock_skew_s: u64,
    pub max_inflight: usize,
    pub ca_file: Option<String>,
    pub retry_after_s: u64,
}

impl Default for RawRemote {
    fn default() -> RawRemote {
        RawRemote {
            url: None,
            urls: None,
            client_id: None,
            client_secret: None,
            client_secret_file: None,
            client_auth: "basic".into(),
            timeout_ms: 2000,
            connect_timeout_ms: 1000,
            username_claim: None,
            required_scope: None,
            audience: None,
            clock_skew_s: 30,
            max_inflight: 256,
            ca_file: None,
            retry_after_s: 30,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawRespond {
    pub status: u16,
    /// URI for the Contact of a 2xx to INVITE (RFC 3261 13.3.1.4: it MUST carry one).
    pub contact: Option<String>,
}

impl Default for RawRespond {
    fn default() -> RawRespond {
        RawRespond {
            status: 200,
            contact: None,
        }
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
    /// How long a stopping shard waits for requests still waiting on the token source.
    pub shutdown_grace: std::time::Duration,
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
    /// `[respond] contact`: the URI a 2xx to INVITE names in its Contact; without it the
    /// Request-URI stands in.
    pub respond_contact: Option<String>,
    pub source: SourceConfig,
    pub cache: CacheConfig,
    /// `[admin] listen`.
    pub admin: Option<SocketAddr>,
    /// `[forward]`: relay requests that pass to this upstream instead of answering them.
    pub forward: Option<crate::forward::ForwardConfig>,
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
        let raw: RawConfig =
            toml::from_str(text).map_err(|e| ConfigError::Parse(parse_error(text, &e)))?;
        raw.validate(base)
    }
}

/// A TOML error on one line, naming the line and the key but not quoting the file: the line it
/// would quote may hold a client secret, and this text reaches the log on a reload.
fn parse_error(text: &str, e: &toml::de::Error) -> String {
    let msg = e.message().trim();
    let Some(start) = e.span().map(|s| s.start) else {
        return msg.to_string();
    };
    let before = text.get(..start).unwrap_or(text);
    let line_no = before.matches('\n').count() + 1;
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    let line = text
        .get(line_start..)
        .and_then(|l| l.lines().next())
        .unwrap_or("");
    // The key, when the error is in the value of a `key = value` line.
    let key = line
        .split_once('=')
        .map(|(k, _)| k.trim())
        .filter(|k| !k.is_empty() && line_start + line.find('=').unwrap_or(0) < start);
    match key {
        Some(k) => format!("line {line_no}: {k}: {msg}"),
        None => format!("line {line_no}: {msg}"),
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

/// A URI that goes between `<` and `>` in a Contact header as written.
fn check_contact_uri(v: &str) -> Result<(), ConfigError> {
    let key = "respond.contact";
    let lower = v.to_ascii_lowercase();
    if !(lower.starts_with("sip:") || lower.starts_with("sips:")) {
        return Err(invalid(key, "must be a sip: or sips: URI"));
    }
    if v.chars()
        .any(|c| c == '<' || c == '>' || c == '"' || c.is_whitespace() || c.is_control())
    {
        return Err(invalid(
            key,
            "must not contain angle brackets, quotes, white space or control characters",
        ));
    }
    if crate::sip::parse_uri(v.as_bytes()).is_err() {
        return Err(invalid(key, "is not a SIP URI"));
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

/// Validates `[introspection]` or `[userinfo]` (named `section` in errors).
fn remote(section: &str, r: &RawRemote, base: &Path) -> Result<RemoteConfig, ConfigError> {
    let key = |k: &str| format!("{section}.{k}");
    let raw_urls: Vec<&String> = match (&r.url, &r.urls) {
        (Some(u), None) => vec![u],
        (None, Some(us)) if !us.is_empty() => us.iter().collect(),
        (None, Some(_)) => return Err(invalid(key("urls"), "must not be empty")),
        (Some(_), Some(_)) => return Err(invalid(key("url"), "give url or urls, not both")),
        (None, None) => return Err(invalid(key("url"), "missing (or give urls)")),
    };
    let mut urls = Vec::new();
    for (i, u) in raw_urls.into_iter().enumerate() {
        let k = if r.url.is_some() {
            key("url")
        } else {
            format!("{section}.urls[{i}]")
        };
        let uri: hyper::Uri = u
            .parse()
            .map_err(|_| invalid(&k, format!("{u:?} is not a URL")))?;
        match uri.scheme_str() {
            Some("http") | Some("https") if uri.host().is_some() => urls.push(uri),
            _ => {
                return Err(invalid(
                    &k,
                    format!("{u:?}: expected an http:// or https:// URL with a host"),
                ))
            }
        }
    }
    if r.timeout_ms == 0 || r.timeout_ms > 60_000 {
        return Err(invalid(key("timeout_ms"), "must be between 1 and 60000"));
    }
    if r.connect_timeout_ms == 0 {
        return Err(invalid(key("connect_timeout_ms"), "must be at least 1"));
    }
    if r.max_inflight == 0 {
        return Err(invalid(key("max_inflight"), "must be at least 1"));
    }
    let kind = if section == "introspection" {
        let client_id = r
            .client_id
            .clone()
            .filter(|c| !c.is_empty())
            .ok_or_else(|| invalid(key("client_id"), "missing"))?;
        let client_secret = match (&r.client_secret, &r.client_secret_file) {
            (Some(s), None) => s.clone(),
            (None, Some(f)) => {
                let path = base.join(f);
                let text = std::fs::read_to_string(&path).map_err(|e| {
                    invalid(
                        key("client_secret_file"),
                        format!("{}: {e}", path.display()),
                    )
                })?;
                Secret(text.trim_end_matches(['\r', '\n']).to_string())
            }
            (Some(_), Some(_)) => {
                return Err(invalid(
                    key("client_secret"),
                    "give client_secret or client_secret_file, not both",
                ))
            }
            (None, None) => {
                return Err(invalid(
                    key("client_secret"),
                    "missing (or give client_secret_file)",
                ))
            }
        };
        if client_secret.0.is_empty() {
            return Err(invalid(key("client_secret"), "must not be empty"));
        }
        let client_auth = match r.client_auth.as_str() {
            "basic" => ClientAuth::Basic,
            "post" => ClientAuth::Post,
            other => {
                return Err(invalid(
                    key("client_auth"),
                    format!("{other:?}: expected \"basic\" or \"post\""),
                ))
            }
        };
        Kind::Introspection {
            client_id,
            client_secret,
            client_auth,
        }
    } else {
        for (k, set) in [
            ("client_id", r.client_id.is_some()),
            ("client_secret", r.client_secret.is_some()),
            ("client_secret_file", r.client_secret_file.is_some()),
        ] {
            if set {
                return Err(invalid(
                    key(k),
                    "not used by userinfo: the token itself authenticates the request",
                ));
            }
        }
        Kind::Userinfo
    };
    let default_claim = if section == "introspection" {
        "username"
    } else {
        "sub"
    };
    let username_claim = r
        .username_claim
        .clone()
        .unwrap_or_else(|| default_claim.into());
    if username_claim.is_empty() {
        return Err(invalid(key("username_claim"), "must not be empty"));
    }
    Ok(RemoteConfig {
        kind,
        urls,
        timeout: std::time::Duration::from_millis(r.timeout_ms),
        connect_timeout: std::time::Duration::from_millis(r.connect_timeout_ms.min(r.timeout_ms)),
        username_claim,
        max_inflight: r.max_inflight,
        retry_after: std::time::Duration::from_secs(r.retry_after_s),
        ca_file: r.ca_file.as_ref().map(|f| base.join(f)),
    })
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
        if s.shutdown_grace_s > 3600 {
            return Err(invalid("server.shutdown_grace_s", "at most 3600"));
        }
        let admin = match &self.admin.listen {
            None => None,
            Some(a) => Some(a.parse::<SocketAddr>().map_err(|_| {
                invalid("admin.listen", format!("{a:?} is not an IP:port address"))
            })?),
        };
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
        if let Some(contact) = &self.respond.contact {
            check_contact_uri(contact)?;
        }
        let c = &self.cache;
        if c.max_entries == 0 {
            return Err(invalid("cache.max_entries", "must be at least 1"));
        }
        if c.max_ttl_s == 0 {
            return Err(invalid("cache.max_ttl_s", "must be at least 1"));
        }
        let configured: Vec<&str> = [
            ("static_tokens", self.static_tokens.is_some()),
            ("introspection", self.introspection.is_some()),
            ("userinfo", self.userinfo.is_some()),
        ]
        .into_iter()
        .filter_map(|(name, on)| on.then_some(name))
        .collect();
        if configured.len() > 1 {
            return Err(invalid(
                configured[1],
                format!(
                    "only one token source at a time; [{}] is configured too",
                    configured[0]
                ),
            ));
        }
        let mut required_scope = a.scope.clone();
        let mut audience = None;
        let mut clock_skew_s = 0;
        let source = if let Some(st) = &self.static_tokens {
            if st.file.is_empty() {
                return Err(invalid("static_tokens.file", "must not be empty"));
            }
            SourceConfig::Static(base.join(&st.file))
        } else if let Some((section, r)) = self
            .introspection
            .as_ref()
            .map(|r| ("introspection", r))
            .or(self.userinfo.as_ref().map(|r| ("userinfo", r)))
        {
            let remote = remote(section, r, base)?;
            if let Some(scope) = &r.required_scope {
                if required_scope.as_ref().is_some_and(|s| s != scope) {
                    return Err(invalid(
                        format!("{section}.required_scope"),
                        "differs from auth.scope; set it in one place",
                    ));
                }
                check_quotable(&format!("{section}.required_scope"), scope)?;
                required_scope = Some(scope.clone());
            }
            if let Some(aud) = &r.audience {
                if aud.is_empty() {
                    return Err(invalid(format!("{section}.audience"), "must not be empty"));
                }
                audience = Some(aud.as_str().into());
            }
            clock_skew_s = r.clock_skew_s;
            SourceConfig::Remote(remote)
        } else {
            SourceConfig::None
        };
        let forward = match &self.forward {
            Some(f) => Some(f.validate(base, udp.first().copied())?),
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
                shutdown_grace: std::time::Duration::from_secs(s.shutdown_grace_s),
            },
            policy: Policy {
                methods,
                in_dialog: a.in_dialog,
                profile,
                challenge,
                realm: s.realm.as_str().into(),
                scope: required_scope.as_deref().map(Into::into),
                authz_server: a.authz_server.as_deref().map(Into::into),
                retry_after_s: a.retry_after_s,
                clock_skew_s,
                audience,
            },
            respond_status: self.respond.status,
            respond_contact: self.respond.contact.clone(),
            source,
            cache: CacheConfig {
                max_entries: c.max_entries,
                max_ttl_s: c.max_ttl_s,
                negative_ttl_s: c.negative_ttl_s,
            },
            admin,
            forward,
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
        assert!(matches!(c.source, SourceConfig::None));
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
contact = "sip:sipward@192.0.2.1:5070;transport=tcp"
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
        assert!(
            matches!(&c.source, SourceConfig::Static(p) if p == Path::new("/etc/sipward/tokens.toml"))
        );
        assert_eq!(c.respond_status, 202);
        assert_eq!(
            c.respond_contact.as_deref(),
            Some("sip:sipward@192.0.2.1:5070;transport=tcp")
        );
    }

    #[test]
    fn admin_and_shutdown_keys() {
        let cfg = Config::parse(
            "[admin]\nlisten = \"127.0.0.1:9090\"\n[server]\nshutdown_grace_s = 3\n",
            Path::new("."),
        )
        .unwrap();
        assert_eq!(cfg.admin, Some("127.0.0.1:9090".parse().unwrap()));
        assert_eq!(cfg.server.shutdown_grace, std::time::Duration::from_secs(3));
        let d = Config::parse("", Path::new(".")).unwrap();
        assert_eq!(d.admin, None);
        assert_eq!(d.server.shutdown_grace, std::time::Duration::from_secs(10));
        assert!(err("[admin]\nlisten = \"localhost\"\n").starts_with("admin.listen:"));
        assert!(err("[server]\nshutdown_grace_s = 9999\n").starts_with("server.shutdown_grace_s:"));
    }

    #[test]
    fn respond_contact_must_be_a_bare_sip_uri() {
        for bad in ["http://h", "<sip:h>", "sip:a b@h", r"sip:h\r\nX: 1", "sip:"] {
            let e = err(&format!("[respond]\ncontact = \"{bad}\"\n"));
            assert!(e.starts_with("respond.contact:"), "{bad}: {e}");
        }
        let c = Config::parse("[respond]\ncontact = \"SIPS:h\"\n", Path::new(".")).unwrap();
        assert_eq!(c.respond_contact.as_deref(), Some("SIPS:h"));
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
    fn introspection_section() {
        let c = Config::parse(
            "[introspection]\nurls = [\"https://a.example/introspect\", \"http://127.0.0.1:8080/i\"]\n\
             client_id = \"rs\"\nclient_secret = \"s3cret\"\nclient_auth = \"post\"\nusername_claim = \"preferred_username\"\n\
             required_scope = \"sip\"\naudience = \"sipward\"\nclock_skew_s = 5\n",
            Path::new("."),
        )
        .unwrap();
        let SourceConfig::Remote(r) = &c.source else {
            panic!("remote source expected")
        };
        assert_eq!(r.urls.len(), 2);
        assert_eq!(r.username_claim, "preferred_username");
        assert!(matches!(
            &r.kind,
            Kind::Introspection {
                client_auth: ClientAuth::Post,
                ..
            }
        ));
        assert_eq!(c.policy.scope.as_deref(), Some("sip"));
        assert_eq!(c.policy.audience.as_deref(), Some("sipward"));
        assert_eq!(c.policy.clock_skew_s, 5);
        assert!(
            !format!("{c:?}").contains("s3cret"),
            "secrets stay out of Debug"
        );
    }

    #[test]
    fn remote_source_errors_name_the_key() {
        assert_eq!(
            err("[introspection]\nclient_id = \"a\"\nclient_secret = \"b\"\n"),
            "introspection.url: missing (or give urls)"
        );
        assert_eq!(
            err("[introspection]\nurl = \"ftp://x/\"\nclient_id = \"a\"\nclient_secret = \"b\"\n"),
            "introspection.url: \"ftp://x/\": expected an http:// or https:// URL with a host"
        );
        assert!(err("[introspection]\nurls = [\"http://a/\", \"nope nope\"]\nclient_id = \"a\"\nclient_secret = \"b\"\n").starts_with("introspection.urls[1]:"));
        assert_eq!(
            err("[introspection]\nurl = \"http://a/\"\nclient_secret = \"b\"\n"),
            "introspection.client_id: missing"
        );
        assert_eq!(
            err("[introspection]\nurl = \"http://a/\"\nclient_id = \"a\"\n"),
            "introspection.client_secret: missing (or give client_secret_file)"
        );
        assert!(err("[introspection]\nurl = \"http://a/\"\nclient_id = \"a\"\nclient_secret_file = \"/nonexistent\"\n")
            .starts_with("introspection.client_secret_file: /nonexistent"));
        assert!(err("[userinfo]\nurl = \"http://a/\"\nclient_id = \"a\"\n")
            .starts_with("userinfo.client_id: not used by userinfo"));
        assert!(err("[introspection]\nurl = \"http://a/\"\nclient_id = \"a\"\nclient_secret = \"b\"\ntimeout_ms = 0\n").starts_with("introspection.timeout_ms:"));
        assert!(
            err("[static_tokens]\nfile = \"t\"\n[userinfo]\nurl = \"http://a/\"\n")
                .starts_with("userinfo: only one token source")
        );
        assert!(err(
            "[auth]\nscope = \"a\"\n[userinfo]\nurl = \"http://a/\"\nrequired_scope = \"b\"\n"
        )
        .starts_with("userinfo.required_scope: differs"));
        let e = err("[introspection]\nurl = \"http://a/\"\nclient_id = \"a\"\nclient_secret = \"topsecret\"\nbogus = 1\n");
        assert!(
            e.contains("unknown field `bogus`") && !e.contains("topsecret"),
            "{e}"
        );
    }

    #[test]
    fn userinfo_defaults_to_sub() {
        let c = Config::parse(
            "[userinfo]\nurl = \"https://sts.example/userinfo\"\n",
            Path::new("."),
        )
        .unwrap();
        let SourceConfig::Remote(r) = &c.source else {
            panic!()
        };
        assert_eq!(r.username_claim, "sub");
        assert!(matches!(r.kind, Kind::Userinfo));
    }

    #[test]
    fn type_errors_name_the_key() {
        let e = err("[server]\nshards = \"two\"\n");
        assert!(e.starts_with("line 2: shards: invalid type"), "{e}");
    }

    #[test]
    fn parse_errors_do_not_quote_the_file() {
        let e = err("[introspection]\nurl = \"http://as/i\"\nclient_id = \"c\"\nclient_secret = \"hunter2\nx\"\n");
        assert!(!e.contains("hunter2"), "{e}");
        assert!(!e.contains('\n'), "{e}");
        assert!(e.starts_with("line 4:"), "{e}");
    }
}
