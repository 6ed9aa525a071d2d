//! The embedded token source: a TOML file of `[[tokens]]`, for deployments without an authorization
//! server, for tests, and for the quickstart.
//!
//! ```toml
//! [[tokens]]
//! token = "alice-secret"            # or token_sha256 = "<64 hex digits>", so the file holds no secret
//! username = "alice"
//! expires = "2030-01-01T00:00:00Z"  # optional, RFC 3339
//! scope = "sip"                     # optional
//! ```
//!
//! Tokens are held only as their SHA-256; a lookup hashes the presented token. Unknown tokens are
//! inactive.

use std::collections::HashMap;
use std::path::Path;

use serde::Deserialize;
use sha2::{Digest, Sha256};

use super::{SourceFuture, TokenSource};
use crate::auth::TokenFacts;
use crate::config::ConfigError;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    #[serde(default)]
    tokens: Vec<RawToken>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawToken {
    token: Option<String>,
    token_sha256: Option<String>,
    username: String,
    expires: Option<String>,
    scope: Option<String>,
}

// Deliberately not Debug: nothing here should be printable by accident.
pub struct StaticTokens {
    by_hash: HashMap<[u8; 32], TokenFacts>,
}

impl StaticTokens {
    pub fn load(path: &Path) -> Result<StaticTokens, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|e| ConfigError::Read {
            path: path.display().to_string(),
            reason: e.to_string(),
        })?;
        StaticTokens::parse(&text).map_err(|e| match e {
            ConfigError::Parse(m) => ConfigError::Parse(format!("{}: {m}", path.display())),
            ConfigError::Invalid { key, reason } => ConfigError::Invalid {
                key: format!("{}: {key}", path.display()),
                reason,
            },
            other => other,
        })
    }

    pub fn parse(text: &str) -> Result<StaticTokens, ConfigError> {
        let file: File = toml::from_str(text).map_err(|e| ConfigError::Parse(e.to_string()))?;
        let mut by_hash = HashMap::with_capacity(file.tokens.len());
        for (i, t) in file.tokens.into_iter().enumerate() {
            let key = |k: &str| format!("tokens[{i}].{k}");
            let bad = |k: &str, reason: &str| ConfigError::Invalid {
                key: key(k),
                reason: reason.into(),
            };
            let hash: [u8; 32] = match (&t.token, &t.token_sha256) {
                (Some(tok), None) => {
                    if !crate::auth::credentials::is_b64token(tok.as_bytes()) {
                        return Err(bad("token", "not a valid bearer token (RFC 6750 b64token)"));
                    }
                    Sha256::digest(tok.as_bytes()).into()
                }
                (None, Some(hex_hash)) => {
                    let mut out = [0u8; 32];
                    hex::decode_to_slice(hex_hash, &mut out)
                        .map_err(|_| bad("token_sha256", "expected 64 hexadecimal digits"))?;
                    out
                }
                (Some(_), Some(_)) => {
                    return Err(bad("token", "give token or token_sha256, not both"))
                }
                (None, None) => return Err(bad("token", "missing (or give token_sha256)")),
            };
            if t.username.is_empty() {
                return Err(bad("username", "must not be empty"));
            }
            let exp = match &t.expires {
                None => None,
                Some(s) => {
                    let when = time::OffsetDateTime::parse(
                        s,
                        &time::format_description::well_known::Rfc3339,
                    )
                    .map_err(|_| bad("expires", "not an RFC 3339 date-time"))?;
                    Some(u64::try_from(when.unix_timestamp()).unwrap_or(0))
                }
            };
            let facts = TokenFacts {
                active: true,
                username: Some(t.username.into()),
                exp,
                nbf: None,
                scope: t.scope.map(Into::into),
                aud: Vec::new(),
            };
            if by_hash.insert(hash, facts).is_some() {
                return Err(bad("token", "the same token appears twice"));
            }
        }
        Ok(StaticTokens { by_hash })
    }

    pub fn len(&self) -> usize {
        self.by_hash.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_hash.is_empty()
    }

    pub fn lookup(&self, token: &str) -> TokenFacts {
        let hash: [u8; 32] = Sha256::digest(token.as_bytes()).into();
        self.by_hash
            .get(&hash)
            .cloned()
            .unwrap_or_else(TokenFacts::inactive)
    }
}

impl TokenSource for StaticTokens {
    fn name(&self) -> &'static str {
        "static"
    }

    fn validate(&self, token: &str) -> SourceFuture {
        Box::pin(std::future::ready(Ok(self.lookup(token))))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_and_hashes() {
        let hash = hex::encode(Sha256::digest(b"bob-secret"));
        let st = StaticTokens::parse(&format!(
            r#"
[[tokens]]
token = "alice-secret"
username = "alice"
expires = "2030-01-01T00:00:00Z"
scope = "sip"
[[tokens]]
token_sha256 = "{hash}"
username = "bob@example.com"
"#
        ))
        .unwrap();
        assert_eq!(st.len(), 2);
        let a = st.lookup("alice-secret");
        assert!(a.active);
        assert_eq!(a.username.as_deref(), Some("alice"));
        assert_eq!(a.exp, Some(1_893_456_000));
        assert_eq!(a.scope.as_deref(), Some("sip"));
        let b = st.lookup("bob-secret");
        assert_eq!(b.username.as_deref(), Some("bob@example.com"));
        assert_eq!(b.exp, None);
        assert!(!st.lookup("nobody").active);
    }

    fn err(text: &str) -> String {
        StaticTokens::parse(text)
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default()
    }

    #[test]
    fn errors_name_the_entry_and_key() {
        assert_eq!(
            err("[[tokens]]\nusername = \"a\"\n"),
            "tokens[0].token: missing (or give token_sha256)"
        );
        assert_eq!(
            err("[[tokens]]\ntoken = \"t\"\nusername = \"a\"\n[[tokens]]\ntoken = \"t\"\nusername = \"b\"\n"),
            "tokens[1].token: the same token appears twice"
        );
        assert_eq!(
            err("[[tokens]]\ntoken_sha256 = \"xyz\"\nusername = \"a\"\n"),
            "tokens[0].token_sha256: expected 64 hexadecimal digits"
        );
        assert_eq!(
            err("[[tokens]]\ntoken = \"t\"\nusername = \"a\"\nexpires = \"tomorrow\"\n"),
            "tokens[0].expires: not an RFC 3339 date-time"
        );
        assert_eq!(
            err("[[tokens]]\ntoken = \"has space\"\nusername = \"a\"\n"),
            "tokens[0].token: not a valid bearer token (RFC 6750 b64token)"
        );
        assert!(err("[[tokens]]\ntoken = \"t\"\nuser = \"a\"\n").contains("unknown field `user`"));
    }
}
