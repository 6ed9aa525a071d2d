//! Reading what an authorization server answered, sans-io: an RFC 7662 introspection response, or a
//! userinfo-style answer (seed 002), into [`TokenFacts`]. No HTTP here: status and body come in as
//! values, so every rule is tested without a server.

use serde_json::{Map, Value};

use crate::auth::{SourceError, TokenFacts};

/// Bodies larger than this are refused unread (an authorization server never needs more).
pub const MAX_BODY: usize = 64 * 1024;

fn object(body: &[u8]) -> Result<Map<String, Value>, SourceError> {
    if body.len() > MAX_BODY {
        return Err(SourceError::BadBody("body over 64 KiB"));
    }
    match serde_json::from_slice::<Value>(body) {
        Ok(Value::Object(map)) => Ok(map),
        Ok(_) => Err(SourceError::BadBody("not a JSON object")),
        Err(_) => Err(SourceError::BadBody("not JSON")),
    }
}

fn seconds(map: &Map<String, Value>, claim: &'static str) -> Result<Option<u64>, SourceError> {
    match map.get(claim) {
        None | Some(Value::Null) => Ok(None),
        // NumericDate may carry a fraction (RFC 7519 2); whole seconds are enough here.
        Some(Value::Number(n)) => n
            .as_u64()
            .or_else(|| n.as_f64().filter(|f| *f >= 0.0).map(|f| f as u64))
            .map(Some)
            .ok_or(SourceError::BadBody("exp or nbf is not a positive number")),
        Some(_) => Err(SourceError::BadBody("exp or nbf is not a number")),
    }
}

/// The claims other than `active`, shared by both kinds of answer.
fn facts(map: &Map<String, Value>, username_claim: &str) -> Result<TokenFacts, SourceError> {
    let username = match map.get(username_claim) {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) if !s.is_empty() => Some(s.as_str().into()),
        Some(Value::String(_)) => None,
        Some(_) => return Err(SourceError::BadBody("username claim is not a string")),
    };
    let scope = match map.get("scope") {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) => Some(s.as_str().into()),
        Some(_) => return Err(SourceError::BadBody("scope is not a string")),
    };
    let aud = match map.get("aud") {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::String(s)) => vec![s.as_str().into()],
        Some(Value::Array(items)) => items
            .iter()
            .map(|v| v.as_str().map(Into::into))
            .collect::<Option<Vec<_>>>()
            .ok_or(SourceError::BadBody(
                "aud holds something other than strings",
            ))?,
        Some(_) => return Err(SourceError::BadBody("aud is neither a string nor an array")),
    };
    Ok(TokenFacts {
        active: true,
        username,
        exp: seconds(map, "exp")?,
        nbf: seconds(map, "nbf")?,
        scope,
        aud,
    })
}

/// An RFC 7662 answer: `status` is the HTTP status, `body` the response body.
/// Only 200 carries an answer (RFC 7662 2.3); `active` must be a boolean (2.2).
pub fn introspection(
    status: u16,
    body: &[u8],
    username_claim: &str,
) -> Result<TokenFacts, SourceError> {
    if status != 200 {
        return Err(SourceError::BadStatus(status));
    }
    let map = object(body)?;
    match map.get("active") {
        Some(Value::Bool(true)) => facts(&map, username_claim),
        Some(Value::Bool(false)) => Ok(TokenFacts::inactive()),
        _ => Err(SourceError::BadBody("active is missing or not a boolean")),
    }
}

/// A userinfo-style answer (seed 002): 200 with a JSON object means the token is good; 401 or 403
/// means it is not (RFC 6750 3.1 invalid_token); anything else is the server's failure.
pub fn userinfo(status: u16, body: &[u8], username_claim: &str) -> Result<TokenFacts, SourceError> {
    match status {
        200 => facts(&object(body)?, username_claim),
        401 | 403 => Ok(TokenFacts::inactive()),
        other => Err(SourceError::BadStatus(other)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn intro(body: &str) -> Result<TokenFacts, SourceError> {
        introspection(200, body.as_bytes(), "username")
    }

    #[test]
    fn active_token_with_claims() {
        let f = intro(r#"{"active":true,"username":"alice","exp":1900000000,"nbf":1700000000.5,"scope":"sip openid","aud":["sipward","other"],"client_id":"x"}"#).unwrap();
        assert!(f.active);
        assert_eq!(f.username.as_deref(), Some("alice"));
        assert_eq!(f.exp, Some(1_900_000_000));
        assert_eq!(f.nbf, Some(1_700_000_000));
        assert_eq!(f.scope.as_deref(), Some("sip openid"));
        assert_eq!(f.aud, vec![Box::from("sipward"), Box::from("other")]);
        let f = intro(r#"{"active":true,"aud":"sipward"}"#).unwrap();
        assert_eq!(f.aud, vec![Box::from("sipward")]);
        assert_eq!(f.username, None);
    }

    #[test]
    fn inactive_token_carries_nothing_else() {
        let f = intro(r#"{"active":false,"username":"alice"}"#).unwrap();
        assert_eq!(f, TokenFacts::inactive());
    }

    #[test]
    fn active_must_be_a_boolean() {
        for body in [
            r#"{}"#,
            r#"{"active":"true"}"#,
            r#"{"active":1}"#,
            r#"{"active":null}"#,
        ] {
            assert_eq!(
                intro(body),
                Err(SourceError::BadBody("active is missing or not a boolean")),
                "{body}"
            );
        }
    }

    #[test]
    fn unusable_bodies() {
        assert_eq!(intro("not json"), Err(SourceError::BadBody("not JSON")));
        assert_eq!(
            intro("[true]"),
            Err(SourceError::BadBody("not a JSON object"))
        );
        assert_eq!(
            intro(r#"{"active":true,"exp":"tomorrow"}"#),
            Err(SourceError::BadBody("exp or nbf is not a number"))
        );
        assert_eq!(
            intro(r#"{"active":true,"exp":-5}"#),
            Err(SourceError::BadBody("exp or nbf is not a positive number"))
        );
        assert_eq!(
            intro(r#"{"active":true,"scope":["sip"]}"#),
            Err(SourceError::BadBody("scope is not a string"))
        );
        assert_eq!(
            intro(r#"{"active":true,"aud":[1]}"#),
            Err(SourceError::BadBody(
                "aud holds something other than strings"
            ))
        );
        assert_eq!(
            intro(r#"{"active":true,"username":7}"#),
            Err(SourceError::BadBody("username claim is not a string"))
        );
        let big = format!(r#"{{"active":true,"pad":"{}"}}"#, "x".repeat(MAX_BODY));
        assert_eq!(intro(&big), Err(SourceError::BadBody("body over 64 KiB")));
    }

    #[test]
    fn introspection_status_other_than_200_is_the_servers_answer() {
        assert_eq!(
            introspection(401, b"{}", "username"),
            Err(SourceError::BadStatus(401))
        );
        assert_eq!(
            introspection(503, b"", "username"),
            Err(SourceError::BadStatus(503))
        );
    }

    #[test]
    fn username_claim_is_configurable() {
        let body =
            br#"{"active":true,"sub":"42","preferred_username":"alice","upn":"alice@example.com"}"#;
        assert_eq!(
            introspection(200, body, "preferred_username")
                .unwrap()
                .username
                .as_deref(),
            Some("alice")
        );
        assert_eq!(
            introspection(200, body, "upn").unwrap().username.as_deref(),
            Some("alice@example.com")
        );
        assert_eq!(
            introspection(200, body, "sub").unwrap().username.as_deref(),
            Some("42")
        );
        assert_eq!(introspection(200, body, "username").unwrap().username, None);
    }

    #[test]
    fn userinfo_answers() {
        let f = userinfo(200, br#"{"sub":"alice","email":"a@x"}"#, "sub").unwrap();
        assert!(f.active);
        assert_eq!(f.username.as_deref(), Some("alice"));
        assert_eq!(userinfo(401, b"", "sub").unwrap(), TokenFacts::inactive());
        assert_eq!(userinfo(403, b"", "sub").unwrap(), TokenFacts::inactive());
        assert_eq!(userinfo(404, b"", "sub"), Err(SourceError::BadStatus(404)));
        assert_eq!(userinfo(500, b"", "sub"), Err(SourceError::BadStatus(500)));
        assert_eq!(
            userinfo(200, b"<html>", "sub"),
            Err(SourceError::BadBody("not JSON"))
        );
    }
}
