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
