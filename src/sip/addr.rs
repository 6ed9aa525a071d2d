//! Addresses in SIP headers: name-addr and addr-spec (RFC 3261 20.10, 25.1), header parameters, and
//! sip / sips / tel URIs reduced to what an address of record needs.
//!
//! Values may come straight from a folded header, so CR and LF count as white space everywhere here.
//! URI parsing extracts scheme, user, host and port; it does not check every character class of the
//! RFC 3261 grammar, and it does not decode or normalise URI parameters (an AOR ignores them).

use super::{
    find_byte, find_byte_near, find_either, first_bit, has_lws, is_lws, trim_lws, Block64,
};

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum AddrError {
    #[error("empty address")]
    Empty,
    #[error("unterminated quoted display name")]
    Unquoted,
    #[error("unterminated <")]
    Unbracketed,
    #[error("unexpected text after >")]
    Trailing,
    #[error("URI without a scheme")]
    NoScheme,
    #[error("URI scheme is not sip, sips or tel")]
    Scheme,
    #[error("URI without a host")]
    NoHost,
    #[error("bad port")]
    Port,
    #[error("white space inside a URI")]
    Space,
}

/// A From / To / Contact / Route value split into its parts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NameAddr<'a> {
    /// Display name as written (quotes included when quoted), if any.
    pub display: Option<&'a [u8]>,
    /// The URI, without angle brackets.
    pub uri: &'a [u8],
    /// Header parameters: empty, or starting with `;`.
    pub params: &'a [u8],
    /// Whether the URI was enclosed in `<>` (name-addr form).
    pub bracketed: bool,
}

/// Parses `"Display" <uri>;params`, `Display <uri>;params`, `<uri>;params` or `uri;params`.
/// In the addr-spec form (no brackets) everything after the first `;` is a header parameter, as RFC
/// 3261 20 requires for From, To and Contact.
pub fn parse_name_addr(v: &[u8]) -> Result<NameAddr<'_>, AddrError> {
    let v = trim_lws(v);
    if v.is_empty() {
        return Err(AddrError::Empty);
    }
    if v == b"*" {
        // Contact: * (RFC 3261 10.2.2) has neither URI nor display name.
        return Ok(NameAddr {
            display: None,
            uri: v,
            params: b"",
            bracketed: false,
        });
    }
    let mut i = 0;
    let mut display = None;
    if v[0] == b'"' {
        i = 1;
        // The closing quote is the first `"` not escaped by a backslash; an escape may run past
        // the end.
        loop {
            let rest = v.get(i..).unwrap_or_default();
            match find_either(rest, b'"', b'\\') {
                None => return Err(AddrError::Unquoted),
                Some(k) if rest[k] == b'\\' => i += k + 2,
                Some(k) => {
                    i += k;
                    break;
                }
            }
        }
        display = Some(&v[..=i]);
        i += 1;
    }
    match find_byte_near(&v[i..], b'<') {
        Some(lt) => {
            let lt = i + lt;
            if display.is_none() {
                let name = trim_lws(&v[..lt]);
                if !name.is_empty() {
                    display = Some(name);
                }
            } else if !v[i..lt].iter().all(|&b| super::is_lws(b)) {
                return Err(AddrError::Trailing);
            }
            let gt = find_byte(&v[lt..], b'>').ok_or(AddrError::Unbracketed)? + lt;
            let uri = trim_lws(&v[lt + 1..gt]);
            let params = trim_lws(&v[gt + 1..]);
            if !params.is_empty() && params[0] != b';' {
                return Err(AddrError::Trailing);
            }
            Ok(NameAddr {
                display,
                uri,
                params,
                bracketed: true,
            })
        }
        None => {
            if display.is_some() {
                return Err(AddrError::Unbracketed);
            }
            let semi = find_byte_near(v, b';').unwrap_or(v.len());
            let uri = trim_lws(&v[..semi]);
            if has_lws(uri) {
                return Err(AddrError::Space);
            }
            Ok(NameAddr {
                display: None,
                uri,
                params: &v[semi..],
                bracketed: false,
            })
        }
    }
}

/// [`parse_name_addr`] and then [`parse_uri`] of its URI, as a From or To value is read. The usual
/// `[display] <sip:user@host[:port][;uri-params]>[;params]` of at most 64 bytes is read from one
/// copy and a few masks of it (see [`Block64`]), where the two general parsers search the value
/// again for each part; anything else goes the general way. Either way the result is the same.
pub fn parse_name_addr_uri(v: &[u8]) -> Result<(NameAddr<'_>, Uri<'_>), AddrError> {
    if let Some(both) = usual_name_addr_uri(v) {
        return Ok(both);
    }
    let na = parse_name_addr(v)?;
    let uri = parse_uri(na.uri)?;
    Ok((na, uri))
}

/// The fast path of [`parse_name_addr_uri`]: `None` for a value it does not take, which is then
/// read by the general parsers (errors included: this never reports one).
#[inline]
fn usual_name_addr_uri(v: &[u8]) -> Option<(NameAddr<'_>, Uri<'_>)> {
    let v = trim_lws(v);
    let n = v.len();
    let block = Block64::new(v)?;
    let angles = block.mask(b'<');
    let (display, lt) = if v.first() == Some(&b'"') {
        // A quoted name without escapes, then only white space before `<`.
        let close = first_bit(block.mask(b'"'), 1, n)?;
        if first_bit(block.mask(b'\\'), 1, close).is_some() {
            return None;
        }
        let lt = first_bit(angles, close + 1, n)?;
        if !v[close + 1..lt].iter().all(|&b| is_lws(b)) {
            return None;
        }
        (Some(&v[..=close]), lt)
    } else {
        let lt = first_bit(angles, 0, n)?;
        let name = trim_lws(&v[..lt]);
        ((!name.is_empty()).then_some(name), lt)
    };
    let gt = first_bit(block.mask(b'>'), lt + 1, n)?;
    // No white space (nor other control bytes) in the URI: nothing to trim, nothing to refuse.
    if first_bit(block.controls(), lt + 1, gt).is_some() {
        return None;
    }
    let uri = &v[lt + 1..gt];
    let params = trim_lws(&v[gt + 1..]);
    if params.first().is_some_and(|&b| b != b';') {
        return None;
    }
    // `sip:` in either case: setting bit 0x20 of the three letters matches exactly their cases.
    let scheme = uri.first_chunk::<4>()?;
    if u32::from_le_bytes(*scheme) | 0x20_2020 != u32::from_le_bytes(*b"sip:") {
        return None;
    }
    let rest = lt + 5;
    let colons = block.mask(b':');
    let (user, hp_start) = match first_bit(block.mask(b'@'), rest, gt) {
        Some(at) => (
            Some(&v[rest..first_bit(colons, rest, at).unwrap_or(at)]),
            at + 1,
        ),
        None => (None, rest),
    };
    let hp_end = first_bit(block.mask(b';') | block.mask(b'?'), hp_start, gt).unwrap_or(gt);
    if v.get(hp_start) == Some(&b'[') {
        return None;
    }
    let (host, port) = match first_bit(colons, hp_start, hp_end) {
        Some(c) => (&v[hp_start..c], Some(parse_port(&v[c + 1..hp_end]).ok()?)),
        None => (&v[hp_start..hp_end], None),
    };
    if host.is_empty() {
        return None;
    }
    Some((
        NameAddr {
            display,
            uri,
            params,
            bracketed: true,
        },
        Uri {
            scheme: Scheme::Sip,
            user,
            host,
            port,
            rest: &v[hp_end..gt],
        },
    ))
}

/// Iterates `;name[=value]` parameters as (name, value) pairs, trimmed. Quoted values keep quotes.
pub fn params(p: &[u8]) -> impl Iterator<Item = (&[u8], Option<&[u8]>)> {
    let mut rest = p;
    std::iter::from_fn(move || loop {
        let r = trim_lws(rest);
        if r.is_empty() {
            return None;
        }
        let r = if r[0] == b';' { &r[1..] } else { r };
        let end = param_end(r);
        rest = &r[end..];
        let item = trim_lws(&r[..end]);
        if item.is_empty() {
            continue;
        }
        return Some(match find_byte_near(item, b'=') {
            Some(eq) => (trim_lws(&item[..eq]), Some(trim_lws(&item[eq + 1..]))),
            None => (item, None),
        });
    })
}

/// The parameters of `p` as written, `name[=value]` each, without their `;` and untrimmed. For a `p`
/// without white space this is [`params`] without the trimming it would not need: each item is
/// its name, then `=` and its value if it has one.
pub(crate) fn param_items(p: &[u8]) -> impl Iterator<Item = &[u8]> {
    let mut rest = p;
    std::iter::from_fn(move || loop {
        if rest.is_empty() {
            return None;
        }
        let r = if rest[0] == b';' { &rest[1..] } else { rest };
        let end = param_end(r);
        rest = &r[end..];
        if end > 0 {
            return Some(&r[..end]);
        }
    })
}

/// The name of a parameter item from [`param_items`].
#[inline]
pub(crate) fn item_name(item: &[u8]) -> &[u8] {
    &item[..find_byte_near(item, b'=').unwrap_or(item.len())]
}

/// Where the parameter at the start of `r` ends: at the first `;` outside a quoted string, or at
/// the end. An unterminated quote runs to the end.
#[inline]
fn param_end(r: &[u8]) -> usize {
    let mut at = 0;
    loop {
        match find_either(&r[at..], b';', b'"') {
            None => return r.len(),
            Some(i) if r[at + i] == b';' => return at + i,
            Some(i) => {
                let open = at + i + 1;
                match find_byte(&r[open..], b'"') {
                    Some(close) => at = open + close + 1,
                    None => return r.len(),
                }
            }
        }
    }
}

/// The parameter `name` (case-insensitive): `Some(None)` for a flag, `Some(Some(v))` with a value.
pub fn param<'a>(p: &'a [u8], name: &[u8]) -> Option<Option<&'a [u8]>> {
    params(p)
        .find(|(n, _)| n.eq_ignore_ascii_case(name))
        .map(|(_, v)| v)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scheme {
    Sip,
    Sips,
    Tel,
}

impl Scheme {
    pub fn as_str(self) -> &'static str {
        match self {
            Scheme::Sip => "sip",
            Scheme::Sips => "sips",
            Scheme::Tel => "tel",
        }
    }
}

/// The parts of a URI an address of record is built from. `user` is still percent-encoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Uri<'a> {
    pub scheme: Scheme,
    pub user: Option<&'a [u8]>,
    /// Host as written (IPv6 with brackets); empty for tel URIs.
    pub host: &'a [u8],
    pub port: Option<u16>,
    /// URI parameters and headers, unparsed (starting with `;` or `?`, or empty).
    pub rest: &'a [u8],
}

/// Parses a sip, sips or tel URI (scheme case-insensitive).
pub fn parse_uri(u: &[u8]) -> Result<Uri<'_>, AddrError> {
    let u = trim_lws(u);
    if has_lws(u) {
        return Err(AddrError::Space);
    }
    let colon = find_byte_near(u, b':').ok_or(AddrError::NoScheme)?;
    let scheme = &u[..colon];
    let rest = &u[colon + 1..];
    let scheme = if scheme.eq_ignore_ascii_case(b"sip") {
        Scheme::Sip
    } else if scheme.eq_ignore_ascii_case(b"sips") {
        Scheme::Sips
    } else if scheme.eq_ignore_ascii_case(b"tel") {
        Scheme::Tel
    } else {
        return Err(AddrError::Scheme);
    };
    if scheme == Scheme::Tel {
        let end = find_byte_near(rest, b';').unwrap_or(rest.len());
        if end == 0 {
            return Err(AddrError::Empty);
        }
        return Ok(Uri {
            scheme,
            user: Some(&rest[..end]),
            host: b"",
            port: None,
            rest: &rest[end..],
        });
    }
    // The user part may itself contain ';' and '?' (RFC 3261 25.1 user-unreserved), but never '@'.
    // The '@' and the port's ':' are looked for eight or more bytes at a time (`find_byte`): over a
    // user and a host name a byte loop cost 55 instructions more per URI.
    let (user, hostport) = match find_byte(rest, b'@') {
        Some(at) => {
            let userinfo = &rest[..at];
            let user = &userinfo[..find_byte_near(userinfo, b':').unwrap_or(userinfo.len())];
            (Some(user), &rest[at + 1..])
        }
        None => (None, rest),
    };
    let hp_end = find_either(hostport, b';', b'?').unwrap_or(hostport.len());
    let (hp, tail) = hostport.split_at(hp_end);
    let (host, port) = if hp.first() == Some(&b'[') {
        let close = find_byte_near(hp, b']').ok_or(AddrError::NoHost)?;
        let host = &hp[..=close];
        match &hp[close + 1..] {
            [] => (host, None),
            [b':', port @ ..] => (host, Some(parse_port(port)?)),
            _ => return Err(AddrError::Port),
        }
    } else {
        match find_byte(hp, b':') {
            Some(c) => (&hp[..c], Some(parse_port(&hp[c + 1..])?)),
            None => (hp, None),
        }
    };
    if host.is_empty() {
        return Err(AddrError::NoHost);
    }
    Ok(Uri {
        scheme,
        user,
        host,
        port,
        rest: tail,
    })
}

fn parse_port(p: &[u8]) -> Result<u16, AddrError> {
    if p.is_empty() || p.len() > 5 || !p.iter().all(u8::is_ascii_digit) {
        return Err(AddrError::Port);
    }
    let n = p.iter().fold(0u32, |a, d| a * 10 + u32::from(d - b'0'));
    u16::try_from(n).map_err(|_| AddrError::Port)
}

/// An address of record: scheme, user and host of a From or To URI; port and parameters ignored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Aor<'a> {
    pub scheme: Scheme,
    /// Percent-encoded as received; compare with [`Aor::user_is`].
    pub user: &'a [u8],
    /// As received; compare case-insensitively.
    pub host: &'a [u8],
}

impl<'a> Aor<'a> {
    /// The AOR of a From or To header value.
    pub fn from_header(v: &'a [u8]) -> Result<Aor<'a>, AddrError> {
        let na = parse_name_addr(v)?;
        Ok(Aor::from_uri(&parse_uri(na.uri)?))
    }

    /// The AOR of a From or To URI already parsed.
    #[inline]
    pub fn from_uri(uri: &Uri<'a>) -> Aor<'a> {
        Aor {
            scheme: uri.scheme,
            user: uri.user.unwrap_or_default(),
            host: uri.host,
        }
    }

    /// Whether the percent-decoded user part equals `user` (case-sensitive, RFC 3261 19.1.4).
    pub fn user_is(&self, user: &[u8]) -> bool {
        pct_decoded_eq(self.user, user)
    }

    /// The comparison of seed 000 and RFC 8898: a username with `@` is compared with `user@host`
    /// (user case-sensitive, host case-insensitive), otherwise with the user part alone.
    pub fn matches_username(&self, username: &str) -> bool {
        let username = username.as_bytes();
        // A byte loop from the end: usernames are a few bytes, and memchr's reverse search paid
        // its dispatch and set-up (about 60 instructions an answer) before looking at any.
        match username.iter().rposition(|&b| b == b'@') {
            Some(at) => {
                self.user_is(&username[..at]) && self.host.eq_ignore_ascii_case(&username[at + 1..])
            }
            None => self.user_is(username),
        }
    }
}

fn hex_val(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

/// Compares a percent-encoded string with a plain one without allocating. A `%` not followed by two
/// hex digits stands for itself.
pub fn pct_decoded_eq(encoded: &[u8], plain: &[u8]) -> bool {
    let mut i = 0;
    let mut j = 0;
    while i < encoded.len() {
        let mut b = encoded[i];
        i += 1;
        if b == b'%' {
            if let (Some(h), Some(l)) = (
                encoded.get(i).copied().and_then(hex_val),
                encoded.get(i + 1).copied().and_then(hex_val),
            ) {
                b = h << 4 | l;
                i += 2;
            }
        }
        if plain.get(j) != Some(&b) {
            return false;
        }
        j += 1;
    }
    j == plain.len()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What `parse_name_addr_uri` did before its fast path: the two general parsers in turn.
    fn by_general_parsers(v: &[u8]) -> Result<(NameAddr<'_>, Uri<'_>), AddrError> {
        let na = parse_name_addr(v)?;
        Ok((na, parse_uri(na.uri)?))
    }

    #[test]
    fn name_addr_uri_fast_path_reads_as_the_general_parsers() {
        let pieces: [&[u8]; 20] = [
            b"\"", b"\\", b"<", b">", b"sip:", b"SiP:", b"sips:", b"tel:", b"@", b":", b";", b"?",
            b"[", b"]", b" ", b"\r\n ", b"al", b"5060", b"99999", b";tag=1",
        ];
        let check = |v: &[u8]| {
            let fast = usual_name_addr_uri(v);
            if let Some(fast) = fast {
                assert_eq!(
                    Ok(fast),
                    by_general_parsers(v),
                    "{:?}",
                    String::from_utf8_lossy(v)
                );
            }
            assert_eq!(
                parse_name_addr_uri(v),
                by_general_parsers(v),
                "{:?}",
                String::from_utf8_lossy(v)
            );
            fast.is_some()
        };
        // Every value of up to four pieces.
        let mut cases: Vec<Vec<u8>> = crate::sip::tests::joined_pieces(&pieces, 4).collect();
        // And every combination of the parts of a From or To, each usual or odd.
        let displays: [&[u8]; 6] = [
            b"",
            b"\"Alice\" ",
            b"\"A\\\"b\" ",
            b"Bob ",
            b"\"x\"y ",
            b"\"open ",
        ];
        let schemes: [&[u8]; 6] = [b"sip:", b"SIP:", b"sips:", b"tel:", b"sip :", b""];
        let users: [&[u8]; 6] = [b"", b"alice@", b"a:pw@", b"@", b"a b@", b"a@b@"];
        let hosts: [&[u8]; 5] = [b"example.com", b"", b"[::1]", b"h", b"h\r\n"];
        let ports: [&[u8]; 5] = [b"", b":5060", b":", b":99999", b":50a"];
        let uri_params: [&[u8]; 4] = [b"", b";transport=tcp", b"?x=y", b";lr?a=b"];
        let closes: [&[u8]; 3] = [b">", b"", b">>"];
        let params: [&[u8]; 5] = [b"", b";tag=1", b" ;tag=2", b"x", b";tag=\"a b\""];
        for d in displays {
            for open in [&b"<"[..], b""] {
                for sc in schemes {
                    for u in users {
                        for h in hosts {
                            for p in ports {
                                for up in uri_params {
                                    for c in closes {
                                        for pa in params {
                                            cases.push([d, open, sc, u, h, p, up, c, pa].concat());
                                        }
                                    }
                                }
                            }
                        }
                    }
                }
            }
        }
        let taken = cases.iter().filter(|v| check(v)).count();
        // The usual shapes, which must take the fast path.
        for v in [
            &b"\"Alice\" <sip:alice@example.com>;tag=1928301774"[..],
            b"<sip:user0@example.com>;tag=0123456789abcdef",
            b"Bob <SIP:bob:secret@[::1]:5060;transport=tcp?x=y>",
            b"<sip:h>",
            b"<sip:u@h:5060;lr>",
        ] {
            let fast = usual_name_addr_uri(v);
            assert!(
                fast.is_some() || v.contains(&b'['),
                "{:?}",
                String::from_utf8_lossy(v)
            );
            check(v);
        }
        assert!(taken > 1000, "only {taken} values took the fast path");
    }

    #[test]
    fn name_addr_forms() {
        let na =
            parse_name_addr(b"\"Alice \\\"A\\\" <x>\" <sip:alice@h;transport=tcp>;tag=1").unwrap();
        assert_eq!(na.display, Some(&b"\"Alice \\\"A\\\" <x>\""[..]));
        assert_eq!(na.uri, b"sip:alice@h;transport=tcp");
        assert_eq!(na.params, b";tag=1");
        let na = parse_name_addr(b"Alice Smith <sip:alice@h>").unwrap();
        assert_eq!(na.display, Some(&b"Alice Smith"[..]));
        assert_eq!(na.uri, b"sip:alice@h");
        assert_eq!(na.params, b"");
        // addr-spec: the parameters belong to the header, not to the URI.
        let na = parse_name_addr(b"sip:alice@h;tag=x").unwrap();
        assert_eq!(na.uri, b"sip:alice@h");
        assert_eq!(param(na.params, b"tag"), Some(Some(&b"x"[..])));
        assert!(!na.bracketed);
        let na = parse_name_addr(b"<sip:a@h>\r\n ;tag=9").unwrap();
        assert_eq!(param(na.params, b"TAG"), Some(Some(&b"9"[..])));
    }

    #[test]
    fn name_addr_errors() {
        assert_eq!(parse_name_addr(b"").unwrap_err(), AddrError::Empty);
        assert_eq!(
            parse_name_addr(b"\"open <sip:a@h>").unwrap_err(),
            AddrError::Unquoted
        );
        assert_eq!(
            parse_name_addr(b"<sip:a@h").unwrap_err(),
            AddrError::Unbracketed
        );
        assert_eq!(
            parse_name_addr(b"<sip:a@h> junk").unwrap_err(),
            AddrError::Trailing
        );
        assert_eq!(
            parse_name_addr(b"Alice sip:a@h").unwrap_err(),
            AddrError::Space
        );
    }

    #[test]
    fn params_flags_and_values() {
        let p: Vec<_> = params(b";lr; tag = abc ;q=\"a;b\";;x").collect();
        assert_eq!(
            p,
            vec![
                (&b"lr"[..], None),
                (&b"tag"[..], Some(&b"abc"[..])),
                (&b"q"[..], Some(&b"\"a;b\""[..])),
                (&b"x"[..], None)
            ]
        );
        assert_eq!(param(b";lr", b"lr"), Some(None));
        assert_eq!(param(b";lr", b"tag"), None);
    }

    #[test]
    fn params_with_quotes_and_stray_equals() {
        let p: Vec<_> = params(b";a=\"x;y=z\";b;\"q=1\";c=\"open;d").collect();
        assert_eq!(
            p,
            vec![
                (&b"a"[..], Some(&b"\"x;y=z\""[..])),
                (&b"b"[..], None),
                // The first `=` splits, even inside quotes.
                (&b"\"q"[..], Some(&b"1\""[..])),
                // An unterminated quote runs to the end.
                (&b"c"[..], Some(&b"\"open;d"[..])),
            ]
        );
        let p: Vec<_> = params(b" ; a = \"b c\" ;; ").collect();
        assert_eq!(p, vec![(&b"a"[..], Some(&b"\"b c\""[..]))]);
    }

    #[test]
    fn param_items_are_params_when_there_is_nothing_to_trim() {
        for p in [
            &b";branch=z9hG4bK776asdhds;rport"[..],
            b";+sip.instance=\"<urn:uuid:f81d4fae>\";reg-id=1;expires=60",
            b";a=\"x;y=z\";b;\"q=1\";;c=\"open;d",
            b"lr;;x=;=y",
            b"",
            b";",
        ] {
            let raw: Vec<_> = param_items(p)
                .map(|item| {
                    let name = item_name(item);
                    (name, item.get(name.len() + 1..))
                })
                .collect();
            assert_eq!(raw, params(p).collect::<Vec<_>>(), "{p:?}");
        }
    }

    #[test]
    fn quoted_display_names_with_escapes() {
        let na = parse_name_addr(b"\"a\\\\\" <sip:x@h>").unwrap();
        assert_eq!(na.display, Some(&b"\"a\\\\\""[..]));
        let na = parse_name_addr(b"\"a\\\"b\\\\\"<sip:x@h>").unwrap();
        assert_eq!(na.display, Some(&b"\"a\\\"b\\\\\""[..]));
        assert_eq!(na.uri, b"sip:x@h");
        // An escape at the very end leaves the quote open.
        assert_eq!(
            parse_name_addr(b"\"abc\\").unwrap_err(),
            AddrError::Unquoted
        );
        assert_eq!(
            parse_name_addr(b"\"abc\\\"").unwrap_err(),
            AddrError::Unquoted
        );
    }

    #[test]
    fn uris() {
        let u = parse_uri(b"sip:alice:secret@Example.COM:5070;transport=tcp?h=v").unwrap();
        assert_eq!(u.scheme, Scheme::Sip);
        assert_eq!(u.user, Some(&b"alice"[..]));
        assert_eq!(u.host, b"Example.COM");
        assert_eq!(u.port, Some(5070));
        assert_eq!(u.rest, b";transport=tcp?h=v");
        let u = parse_uri(b"SIPS:[2001:db8::1]:5061").unwrap();
        assert_eq!(u.scheme, Scheme::Sips);
        assert_eq!(u.user, None);
        assert_eq!(u.host, b"[2001:db8::1]");
        assert_eq!(u.port, Some(5061));
        let u = parse_uri(b"sip:+1234;phone-context=x@h").unwrap();
        assert_eq!(u.user, Some(&b"+1234;phone-context=x"[..]));
        let u = parse_uri(b"tel:+1-201-555-0123;phone-context=example.com").unwrap();
        assert_eq!(u.scheme, Scheme::Tel);
        assert_eq!(u.user, Some(&b"+1-201-555-0123"[..]));
        assert_eq!(u.host, b"");
        assert_eq!(parse_uri(b"http://h").unwrap_err(), AddrError::Scheme);
        assert_eq!(parse_uri(b"alice").unwrap_err(), AddrError::NoScheme);
        assert_eq!(parse_uri(b"sip:a@").unwrap_err(), AddrError::NoHost);
        assert_eq!(parse_uri(b"sip:a@h:99999").unwrap_err(), AddrError::Port);
        assert_eq!(parse_uri(b"sip:a@h:").unwrap_err(), AddrError::Port);
    }

    #[test]
    fn aor_user_is_percent_decoded() {
        let aor = Aor::from_header(b"<sip:us%65r0@h>").unwrap();
        assert!(aor.user_is(b"user0"));
        assert!(aor.matches_username("user0"));
        assert!(!aor.matches_username("User0"));
        assert!(pct_decoded_eq(b"a%2", b"a%2"));
        assert!(pct_decoded_eq(b"100%", b"100%"));
        assert!(!pct_decoded_eq(b"ab", b"abc"));
        assert!(!pct_decoded_eq(b"abc", b"ab"));
    }

    #[test]
    fn aor_ignores_port_and_params_and_lowercases_host() {
        let aor =
            Aor::from_header(b"\"A\" <sips:alice@EXAMPLE.com:5061;transport=tls>;tag=1").unwrap();
        assert_eq!(aor.scheme, Scheme::Sips);
        assert!(aor.matches_username("alice@example.com"));
        assert!(aor.matches_username("alice@Example.Com"));
        assert!(aor.matches_username("alice"));
        assert!(!aor.matches_username("Alice@example.com"));
        assert!(!aor.matches_username("alice@example.org"));
        assert!(!aor.matches_username("bob"));
    }

    #[test]
    fn tel_aor_compares_the_number() {
        let aor = Aor::from_header(b"<tel:+15551234;phone-context=x>").unwrap();
        assert!(aor.matches_username("+15551234"));
        assert!(!aor.matches_username("+15551234@example.com"));
    }

    #[test]
    fn aor_without_user_never_matches() {
        let aor = Aor::from_header(b"<sip:example.com>").unwrap();
        assert!(!aor.matches_username("alice"));
    }
}
