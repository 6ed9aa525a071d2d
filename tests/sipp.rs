//! SIPp, the load tester carriers use, against the real binary with the quickstart tokens.

mod common;

use std::process::Command;

use common::*;

fn sipp_register(s: &Sipward, transport: &str, to: std::net::SocketAddr) {
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new("sipp")
        .current_dir(dir.path())
        .args([
            "-sf",
            repo_path("sipp_scenarios/register_bearer.xml")
                .to_str()
                .unwrap(),
        ])
        .args([
            "-inf",
            repo_path("sipp_scenarios/users.csv").to_str().unwrap(),
        ])
        .args([
            "-m",
            "3",
            "-t",
            transport,
            "-i",
            "127.0.0.1",
            "-timeout",
            "15s",
            "-timeout_error",
            "-nostdin",
        ])
        .arg(to.to_string())
        .output()
        .expect("sipp runs (Debian package sip-tester; scripts/test.sh installs it)");
    assert!(
        out.status.success(),
        "sipp {transport} against {} exited {:?}\n{}\n{}\nsipward log:\n{}",
        s.io,
        out.status.code(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
        s.log()
    );
}

#[test]
fn sipp_register_bearer_udp_and_tcp() {
    for io in DRIVERS {
        let s = Sipward::launch(
            io,
            &format!(
                "[server]\nudp = [\"127.0.0.1:0\"]\ntcp = [\"127.0.0.1:0\"]\nio = \"{io}\"\nshards = 1\n\
                 [static_tokens]\nfile = \"tokens.toml\"\n"
            ),
            &[("tokens.toml", &std::fs::read_to_string(repo_path("examples/tokens.toml")).unwrap())],
        );
        sipp_register(&s, "u1", s.udp);
        sipp_register(&s, "t1", s.tcp);
    }
}

/// Runs `sipp_scenarios/run_all.sh` (every client scenario, each checking its expected answer)
/// against `to` over `transport`, and fails with the runner's report unless every scenario passed.
fn run_all(s: &Sipward, transport: &str, to: std::net::SocketAddr) {
    let script = repo_path("sipp_scenarios/run_all.sh");
    let out = Command::new("bash")
        .arg(&script)
        .arg(to.to_string())
        .arg(transport)
        .env("SIPP_TIMEOUT", "20")
        .output()
        .expect("bash runs sipp_scenarios/run_all.sh");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "run_all.sh {transport} against {} exited {:?}\n{stdout}\n{}\nsipward log:\n{}",
        s.io,
        out.status.code(),
        String::from_utf8_lossy(&out.stderr),
        s.log()
    );
    let summary = stdout.lines().last().unwrap_or_default();
    assert!(
        summary.ends_with(" passed, 0 failed") && !summary.starts_with("0 "),
        "run_all.sh {transport} ends with its summary line: {stdout}"
    );
}

/// The whole scenario set against a server configured like examples/quickstart.toml (its [auth]
/// and [respond] values, its token file), on ephemeral ports, over UDP and TCP, under each driver.
#[test]
fn sipp_run_all_scenarios_udp_and_tcp() {
    let tokens = std::fs::read_to_string(repo_path("examples/tokens.toml")).unwrap();
    for io in DRIVERS {
        let s = Sipward::launch(
            io,
            &format!(
                "[server]\nudp = [\"127.0.0.1:0\"]\ntcp = [\"127.0.0.1:0\"]\nio = \"{io}\"\nshards = 1\n\
                 realm = \"example.com\"\n\
                 [auth]\nmethods = [\"REGISTER\", \"INVITE\"]\nprofile = \"rfc8898\"\n\
                 [static_tokens]\nfile = \"tokens.toml\"\n\
                 [respond]\nstatus = 200\n"
            ),
            &[("tokens.toml", &tokens)],
        );
        run_all(&s, "udp", s.udp);
        run_all(&s, "tcp", s.tcp);
    }
}

/// The runner fails when an answer is not the expected one: register_bearer.xml against a server
/// whose token file does not hold the quickstart tokens gets 401 invalid_token instead of 200.
#[test]
fn sipp_run_all_fails_on_an_unexpected_answer() {
    let s = Sipward::start("auto", "");
    let logs = tempfile::tempdir().unwrap();
    let out = Command::new("bash")
        .arg(repo_path("sipp_scenarios/run_all.sh"))
        .arg(s.udp.to_string())
        .args(["udp", "register_bearer.xml"])
        .env("SIPP_TIMEOUT", "20")
        .env("TMPDIR", logs.path())
        .output()
        .expect("bash runs sipp_scenarios/run_all.sh");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stdout}\n{stderr}");
    assert!(stdout.contains("FAIL  register_bearer.xml"), "{stdout}");
    assert_eq!(
        stdout.lines().last(),
        Some("0 passed, 1 failed"),
        "{stdout}"
    );
    assert!(
        stderr.contains("error=\"invalid_token\""),
        "the report shows the answer: {stderr}"
    );
}
