//! Token files and the token mix.
//!
//! A token file is CSV with `;` separators, the format SIPp injection files use: `user;token`, or
//! `user;domain;token` like `sipp_scenarios/users.csv`; blank lines and lines starting with `#` are
//! skipped, and so is a leading SIPp header line (`SEQUENTIAL`, `RANDOM`, `USER`, optionally with
//! `,PRINTF=…`). The mix decides, per request, whether it carries a known token from the file, a new
//! token nobody has seen (`new.<user>.<run>.<n>`, which `mock-as` answers as active for `<user>`) or
//! an invalid one (`invalid.<n>`). This module only decides and formats; it does no I/O.

use anyhow::{bail, Context as _};

use crate::rng::Rng;

/// One line of a token file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Row {
    pub user: String,
    /// The middle column of a three-column file.
    pub domain: Option<String>,
    pub token: String,
}

/// Parses a token file (see the module docs). Errors name the line.
pub fn parse_csv(text: &str) -> anyhow::Result<Vec<Row>> {
    let mut rows = Vec::new();
    let mut seen_data = false;
    for (i, raw) in text.lines().enumerate() {
        let line = raw.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        if !seen_data && is_sipp_header(line) {
            seen_data = true;
            continue;
        }
        seen_data = true;
        let fields: Vec<&str> = line.split(';').map(str::trim).collect();
        let (user, domain, token) = match fields.as_slice() {
            [u, t] => (*u, None, *t),
            [u, d, t] => (*u, Some(*d), *t),
            _ => bail!(
                "line {}: expected `user;token` or `user;domain;token`, got {} fields",
                i + 1,
                fields.len()
            ),
        };
        if user.is_empty() || token.is_empty() || domain.is_some_and(str::is_empty) {
            bail!("line {}: empty field", i + 1);
        }
        rows.push(Row {
            user: user.to_owned(),
            domain: domain.map(str::to_owned),
            token: token.to_owned(),
        });
    }
    Ok(rows)
}

fn is_sipp_header(line: &str) -> bool {
    let word = line.split(',').next().unwrap_or("").trim();
    matches!(word, "SEQUENTIAL" | "RANDOM" | "USER")
}

/// Reads and parses a token file; an empty one is an error, since nothing could be sent.
pub fn load_csv(path: &std::path::Path) -> anyhow::Result<Vec<Row>> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let rows = parse_csv(&text).with_context(|| format!("{}", path.display()))?;
    if rows.is_empty() {
        bail!("{}: no `user;token` lines", path.display());
    }
    Ok(rows)
}

/// What one request carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Choice {
    /// The token of this row.
    Known { row: usize },
    /// A never-sent token for this row's user.
    New { row: usize, n: u64 },
    /// A token no source knows, sent as this row's user.
    Invalid { row: usize, n: u64 },
}

impl Choice {
    pub fn row(self) -> usize {
        match self {
            Choice::Known { row } | Choice::New { row, .. } | Choice::Invalid { row, .. } => row,
        }
    }
}

/// Picks rows round-robin and replaces the token by a new or invalid one with the given shares.
#[derive(Debug)]
pub struct Mix {
    rows: usize,
    new_share: f64,
    invalid_share: f64,
    next_row: usize,
    new_n: u64,
    invalid_n: u64,
    rng: Rng,
}

impl Mix {
    pub fn new(rows: usize, new_share: f64, invalid_share: f64, rng: Rng) -> anyhow::Result<Self> {
        if rows == 0 {
            bail!("no token rows");
        }
        for (name, v) in [
            ("--new-share", new_share),
            ("--invalid-share", invalid_share),
        ] {
            if !(0.0..=1.0).contains(&v) {
                bail!("{name} must be between 0.0 and 1.0, got {v}");
            }
        }
        if new_share + invalid_share > 1.0 + 1e-9 {
            bail!("--new-share + --invalid-share must not exceed 1.0");
        }
        Ok(Mix {
            rows,
            new_share,
            invalid_share,
            next_row: 0,
            new_n: 0,
            invalid_n: 0,
            rng,
        })
    }

    pub fn pick(&mut self) -> Choice {
        let row = self.next_row;
        self.next_row = (self.next_row + 1) % self.rows;
        // Skip the draw when no replacement is asked for, so the common all-known run stays exact.
        if self.new_share == 0.0 && self.invalid_share == 0.0 {
            return Choice::Known { row };
        }
        let x = self.rng.f64();
        if x < self.new_share {
            self.new_n += 1;
            Choice::New { row, n: self.new_n }
        } else if x < self.new_share + self.invalid_share {
            self.invalid_n += 1;
            Choice::Invalid {
                row,
                n: self.invalid_n,
            }
        } else {
            Choice::Known { row }
        }
    }
}

/// The user as it appears inside a `new.` token: RFC 6750 b64token characters only, and no `.`, so
/// `new.<user>.<rest>` splits at the first dot. Bytes other than ASCII letters, digits, `-` and `_`
/// become `~XX` (hex); `alice` stays `alice`, `john.doe@example.com` becomes
/// `john~2Edoe~40example~2Ecom`.
pub fn encode_user(user: &str) -> String {
    let mut out = String::with_capacity(user.len());
    for &b in user.as_bytes() {
        if b.is_ascii_alphanumeric() || b == b'-' || b == b'_' {
            out.push(b as char);
        } else {
            out.push('~');
            out.push_str(&format!("{b:02X}"));
        }
    }
    out
}

fn decode_user(s: &str) -> Option<String> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'~' {
            let hex = std::str::from_utf8(b.get(i + 1..i + 3)?).ok()?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

/// Writes `new.<encoded user>.<run hex>.<n>`.
pub fn write_new_token(out: &mut Vec<u8>, encoded_user: &str, run: u64, n: u64) {
    use std::io::Write as _;
    // Writing to a Vec cannot fail.
    let _ = write!(out, "new.{encoded_user}.{run:x}.{n}");
}

/// Writes `invalid.<n>`.
pub fn write_invalid_token(out: &mut Vec<u8>, n: u64) {
    use std::io::Write as _;
    let _ = write!(out, "invalid.{n}");
}

/// The user a `new.<user>.<anything>` token stands for (the mock AS's rule), or `None` when the token
/// is not of that form.
pub fn new_token_user(token: &str) -> Option<String> {
    let rest = token.strip_prefix("new.")?;
    let (user, _anything) = rest.split_once('.')?;
    if user.is_empty() {
        return None;
    }
    decode_user(user)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn csv_two_and_three_columns_comments_and_sipp_header() {
        let text = "SEQUENTIAL\n# a comment\n\nalice;alice-token\r\nbob;example.org;bob-token\n  # indented comment\ncarol ; carol-token \n";
        let rows = parse_csv(text).unwrap();
        assert_eq!(
            rows,
            vec![
                Row {
                    user: "alice".into(),
                    domain: None,
                    token: "alice-token".into()
                },
                Row {
                    user: "bob".into(),
                    domain: Some("example.org".into()),
                    token: "bob-token".into()
                },
                Row {
                    user: "carol".into(),
                    domain: None,
                    token: "carol-token".into()
                },
            ]
        );
    }

    #[test]
    fn csv_header_variants_only_at_the_top() {
        assert_eq!(parse_csv("RANDOM\na;t\n").unwrap().len(), 1);
        assert_eq!(
            parse_csv("# c\nSEQUENTIAL,PRINTF=10\na;t\n").unwrap().len(),
            1
        );
        assert_eq!(parse_csv("USER\na;t\n").unwrap().len(), 1);
        // Past the first data line, a lone word is a malformed row, not a header.
        let err = parse_csv("a;t\nRANDOM\n").unwrap_err().to_string();
        assert!(err.contains("line 2"), "{err}");
    }

    #[test]
    fn csv_errors_name_the_line() {
        let err = parse_csv("a;t\nb;c;d;e\n").unwrap_err().to_string();
        assert!(err.contains("line 2") && err.contains("4 fields"), "{err}");
        let err = parse_csv("a;\n").unwrap_err().to_string();
        assert!(err.contains("line 1") && err.contains("empty"), "{err}");
        assert!(parse_csv("").unwrap().is_empty());
    }

    #[test]
    fn mix_round_robin_without_shares() {
        let mut m = Mix::new(3, 0.0, 0.0, Rng::seeded(1)).unwrap();
        let rows: Vec<usize> = (0..7).map(|_| m.pick().row()).collect();
        assert_eq!(rows, vec![0, 1, 2, 0, 1, 2, 0]);
        assert!((0..100).all(|_| matches!(m.pick(), Choice::Known { .. })));
    }

    #[test]
    fn mix_shares_are_respected_and_counters_are_unique() {
        let mut m = Mix::new(8, 0.3, 0.1, Rng::seeded(42)).unwrap();
        let n = 200_000;
        let (mut new, mut invalid, mut known) = (0u64, 0u64, 0u64);
        let (mut last_new, mut last_invalid) = (0, 0);
        for _ in 0..n {
            match m.pick() {
                Choice::New { n, .. } => {
                    assert_eq!(n, last_new + 1);
                    last_new = n;
                    new += 1;
                }
                Choice::Invalid { n, .. } => {
                    assert_eq!(n, last_invalid + 1);
                    last_invalid = n;
                    invalid += 1;
                }
                Choice::Known { .. } => known += 1,
            }
        }
        let share = |k: u64| k as f64 / n as f64;
        assert!((share(new) - 0.3).abs() < 0.01, "new {}", share(new));
        assert!(
            (share(invalid) - 0.1).abs() < 0.01,
            "invalid {}",
            share(invalid)
        );
        assert!((share(known) - 0.6).abs() < 0.01, "known {}", share(known));
    }

    #[test]
    fn mix_is_deterministic_for_a_seed_and_all_new_at_one() {
        let draw = |seed| {
            let mut m = Mix::new(4, 0.5, 0.25, Rng::seeded(seed)).unwrap();
            (0..1000).map(|_| m.pick()).collect::<Vec<_>>()
        };
        assert_eq!(draw(9), draw(9));
        assert_ne!(draw(9), draw(10));
        let mut m = Mix::new(2, 1.0, 0.0, Rng::seeded(3)).unwrap();
        assert!((0..1000).all(|_| matches!(m.pick(), Choice::New { .. })));
        let mut m = Mix::new(2, 0.0, 1.0, Rng::seeded(3)).unwrap();
        assert!((0..1000).all(|_| matches!(m.pick(), Choice::Invalid { .. })));
    }

    #[test]
    fn mix_rejects_bad_shares() {
        assert!(Mix::new(1, 1.1, 0.0, Rng::seeded(0)).is_err());
        assert!(Mix::new(1, 0.0, -0.1, Rng::seeded(0)).is_err());
        assert!(Mix::new(1, 0.7, 0.4, Rng::seeded(0)).is_err());
        assert!(Mix::new(0, 0.0, 0.0, Rng::seeded(0)).is_err());
    }

    #[test]
    fn new_tokens_round_trip_through_the_mock_rule() {
        let mut buf = Vec::new();
        write_new_token(&mut buf, &encode_user("alice"), 0xabc, 7);
        assert_eq!(buf, b"new.alice.abc.7");
        let tok = String::from_utf8(buf).unwrap();
        assert_eq!(new_token_user(&tok).as_deref(), Some("alice"));

        let odd = "john.doe@example.com";
        let enc = encode_user(odd);
        assert_eq!(enc, "john~2Edoe~40example~2Ecom");
        let mut buf = Vec::new();
        write_new_token(&mut buf, &enc, 1, 1);
        let tok = String::from_utf8(buf).unwrap();
        // Every character is an RFC 6750 b64token character, so sipward does not reject it as malformed.
        assert!(tok
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-._~+/".contains(&b)));
        assert_eq!(new_token_user(&tok).as_deref(), Some(odd));
    }

    #[test]
    fn new_token_rule_edges() {
        assert_eq!(
            new_token_user("new.bob.anything.at.all").as_deref(),
            Some("bob")
        );
        assert_eq!(new_token_user("new.bob.").as_deref(), Some("bob"));
        assert_eq!(new_token_user("new.bob"), None);
        assert_eq!(new_token_user("new..x"), None);
        assert_eq!(new_token_user("New.bob.x"), None);
        assert_eq!(new_token_user("invalid.3"), None);
        assert_eq!(new_token_user("new.bad~Z.x"), None);
        assert_eq!(new_token_user("new.trunc~4.x"), None);
        let mut buf = Vec::new();
        write_invalid_token(&mut buf, 12);
        assert_eq!(buf, b"invalid.12");
    }
}
