//! The command line: `sipward check` validates without binding and names the key at fault.

use std::process::Command;

fn sipward(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_sipward"))
        .args(args)
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn check(config: &str, tokens: Option<&str>) -> (i32, String, String) {
    let dir = tempfile::tempdir().unwrap();
    if let Some(t) = tokens {
        std::fs::write(dir.path().join("tokens.toml"), t).unwrap();
    }
    let path = dir.path().join("c.toml");
    std::fs::write(&path, config).unwrap();
    sipward(&["check", "--config", path.to_str().unwrap()])
}

#[test]
fn quickstart_config_is_valid() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/examples/quickstart.toml");
    let (code, out, err) = sipward(&["check", "--config", path]);
    assert_eq!(code, 0, "{err}");
    assert!(out.ends_with(": ok\n"), "{out}");
}

#[test]
fn check_names_the_offending_key() {
    let (code, _, err) = check("[server]\nudp = [\"not-an-address\"]\n", None);
    assert_ne!(code, 0);
    assert!(
        err.contains("server.udp[0]: \"not-an-address\" is not an IP:port address"),
        "{err}"
    );

    let (code, _, err) = check("[auth]\nprofile = \"digest\"\n", None);
    assert_ne!(code, 0);
    assert!(err.contains("auth.profile:"), "{err}");

    let (code, _, err) = check("[server]\nshard = 2\n", None);
    assert_ne!(code, 0);
    assert!(err.contains("unknown field `shard`"), "{err}");
}

#[test]
fn check_validates_the_token_file() {
    let cfg = "[static_tokens]\nfile = \"tokens.toml\"\n";
    let (code, _, err) = check(
        cfg,
        Some("[[tokens]]\ntoken = \"t\"\nusername = \"a\"\nexpires = \"soon\"\n"),
    );
    assert_ne!(code, 0);
    assert!(
        err.contains("tokens[0].expires: not an RFC 3339 date-time"),
        "{err}"
    );
    let (code, _, err) = check(cfg, None);
    assert_ne!(code, 0);
    assert!(
        err.contains("tokens.toml"),
        "the missing file is named: {err}"
    );
    let (code, _, err) = check(cfg, Some("[[tokens]]\ntoken = \"t\"\nusername = \"a\"\n"));
    assert_eq!(code, 0, "{err}");
}

#[test]
fn run_without_config_is_a_usage_error() {
    let (code, _, err) = sipward(&[]);
    assert_eq!(code, 2);
    assert!(err.contains("--config"), "{err}");
}

#[test]
fn bind_failure_is_reported() {
    let taken = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("c.toml");
    std::fs::write(
        &path,
        format!("[server]\nudp = [\"{addr}\"]\ntcp = []\nio = \"epoll\"\nshards = 1\n"),
    )
    .unwrap();
    let (code, _, err) = sipward(&["--config", path.to_str().unwrap()]);
    assert_ne!(code, 0);
    assert!(err.contains(&format!("udp {addr}")), "{err}");
}
