//! `application/x-www-form-urlencoded` bodies and HTTP Basic client credentials, as RFC 6749 uses
//! them for RFC 7662 introspection: encode on the `as-bench` side, decode on the `mock-as` side.
//!
//! Decoding is lenient where leniency cannot change the meaning (a stray `%` stays literal) and
//! strict where it could (invalid UTF-8 is an error).

use base64::Engine as _;

/// Escapes everything but RFC 3986 unreserved characters; space becomes `%20`.
pub fn encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for &b in s.as_bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// Decodes one form component: `+` is a space, `%XX` a byte.
pub fn decode(s: &str) -> Option<String> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            b'%' => {
                let byte = b
                    .get(i + 1..i + 3)
                    .and_then(|h| std::str::from_utf8(h).ok())
                    .and_then(|h| u8::from_str_radix(h, 16).ok());
                match byte {
                    Some(v) => {
                        out.push(v);
                        i += 3;
                    }
                    None => {
                        out.push(b'%');
                        i += 1;
                    }
                }
            }
            c => {
                out.push(c);
                i += 1;
            }
        }
    }
    String::from_utf8(out).ok()
}

/// All `name=value` pairs of a form body, decoded, in order. `None` if a component is not UTF-8.
pub fn parse(body: &[u8]) -> Option<Vec<(String, String)>> {
    let body = std::str::from_utf8(body).ok()?;
    body.split('&')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            Some((decode(k)?, decode(v)?))
        })
        .collect()
}

/// The first value of `name` in parsed form pairs.
pub fn get<'a>(pairs: &'a [(String, String)], name: &str) -> Option<&'a str> {
    pairs
        .iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.as_str())
}

/// `Basic base64(encode(id) ":" encode(secret))` (RFC 6749 2.3.1 form-encodes both first).
pub fn basic_header(id: &str, secret: &str) -> String {
    let pair = format!("{}:{}", encode(id), encode(secret));
    format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(pair)
    )
}

/// Client id and secret from an `Authorization: Basic …` value; `None` if it is not one.
pub fn parse_basic(value: &str) -> Option<(String, String)> {
    let (scheme, rest) = value.trim().split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("basic") {
        return None;
    }
    let raw = base64::engine::general_purpose::STANDARD
        .decode(rest.trim())
        .ok()?;
    let pair = String::from_utf8(raw).ok()?;
    let (id, secret) = pair.split_once(':')?;
    Some((decode(id)?, decode(secret)?))
}

/// The token of an `Authorization: Bearer …` value.
pub fn parse_bearer(value: &str) -> Option<&str> {
    let (scheme, token) = value.trim().split_once(' ')?;
    let token = token.trim();
    (scheme.eq_ignore_ascii_case("bearer") && !token.is_empty()).then_some(token)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn form_round_trip_and_decoding_rules() {
        let s = "a b+c/d=e&f~g.h_i-j%é";
        assert_eq!(decode(&encode(s)).as_deref(), Some(s));
        assert_eq!(decode("a+b%20c").as_deref(), Some("a b c"));
        assert_eq!(decode("100%").as_deref(), Some("100%"));
        assert_eq!(decode("%zz").as_deref(), Some("%zz"));
        assert_eq!(decode("%FF"), None);
    }

    #[test]
    fn parse_introspection_body() {
        let pairs = parse(b"token=new.alice.ab.1&token_type_hint=access_token&client_id=lo%61d&client_secret=s+3&&flag").unwrap();
        assert_eq!(get(&pairs, "token"), Some("new.alice.ab.1"));
        assert_eq!(get(&pairs, "token_type_hint"), Some("access_token"));
        assert_eq!(get(&pairs, "client_id"), Some("load"));
        assert_eq!(get(&pairs, "client_secret"), Some("s 3"));
        assert_eq!(get(&pairs, "flag"), Some(""));
        assert_eq!(get(&pairs, "missing"), None);
        assert!(parse(b"").unwrap().is_empty());
        assert!(parse(&[0xff]).is_none());
    }

    #[test]
    fn basic_round_trip_and_rejections() {
        let h = basic_header("load", "load-secret");
        assert_eq!(h, "Basic bG9hZDpsb2FkLXNlY3JldA==");
        assert_eq!(
            parse_basic(&h),
            Some(("load".to_owned(), "load-secret".to_owned()))
        );
        // Form-encoded before base64, so a colon in the id survives.
        let h = basic_header("a:b", "p w");
        assert_eq!(parse_basic(&h), Some(("a:b".to_owned(), "p w".to_owned())));
        assert_eq!(
            parse_basic("basic bG9hZDpsb2FkLXNlY3JldA=="),
            Some(("load".to_owned(), "load-secret".to_owned()))
        );
        assert_eq!(parse_basic("Bearer abc"), None);
        assert_eq!(parse_basic("Basic !!!"), None);
        assert_eq!(parse_basic("Basic bm9jb2xvbg=="), None); // "nocolon"
        assert_eq!(parse_basic("Basic"), None);
    }

    #[test]
    fn bearer() {
        assert_eq!(parse_bearer("Bearer abc.def"), Some("abc.def"));
        assert_eq!(parse_bearer("bearer  abc "), Some("abc"));
        assert_eq!(parse_bearer("Basic abc"), None);
        assert_eq!(parse_bearer("Bearer "), None);
    }
}
