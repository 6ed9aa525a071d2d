//! sipward against a real authorization server nobody here wrote: oidc-provider (npm), started by
//! tests/oidc/server.mjs with introspection enabled and client-credentials clients. Real access
//! tokens register through sipward over UDP and TCP; an unknown and a revoked token get
//! invalid_token; a token used for another user gets invalid_request.

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};

use common::*;

struct Node(std::process::Child);

impl Drop for Node {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn oidc_provider_introspection() {
    let dir = repo_path("tests/oidc");
    assert!(
        dir.join("node_modules/oidc-provider").exists(),
        "tests/oidc/node_modules is missing: run `npm ci --prefix tests/oidc` (scripts/test.sh does)"
    );
    let mut child = Command::new("node")
        .arg(dir.join("server.mjs"))
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("node runs");
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let node = Node(child);
    let minted: serde_json::Value =
        serde_json::from_str(&line).unwrap_or_else(|e| panic!("{e}: {line:?}"));
    let port = minted["port"].as_u64().unwrap();
    let tok = |k: &str| minted[k].as_str().unwrap().to_string();

    for io in DRIVERS {
        let cfg = format!(
            "[server]\nudp = [\"127.0.0.1:0\"]\ntcp = [\"127.0.0.1:0\"]\nio = \"{io}\"\nshards = 1\nrealm = \"example.com\"\n\
             [introspection]\nurl = \"http://127.0.0.1:{port}/token/introspection\"\nclient_id = \"sipward-rs\"\n\
             client_secret = \"sipward-rs-secret\"\n"
        );
        let s = Sipward::launch(io, &cfg, &[]);
        let c = udp_client();
        let udp = |user: &str, id: &str, t: &str| {
            udp_exchange(&c, s.udp, &register(user, id, "UDP", Some(t)))
        };
        assert_eq!(
            status(&udp("alice", &format!("{io}-1"), &tok("alice"))),
            200,
            "{io}: {}",
            s.log()
        );
        assert_eq!(status(&udp("bob", &format!("{io}-2"), &tok("bob"))), 200);
        let r = udp("alice", &format!("{io}-3"), "never-issued-token");
        assert!(
            header(&r, "WWW-Authenticate")
                .unwrap()
                .contains("error=\"invalid_token\""),
            "{r}"
        );
        let r = udp("alice", &format!("{io}-4"), &tok("revoked"));
        assert!(
            header(&r, "WWW-Authenticate")
                .unwrap()
                .contains("error=\"invalid_token\""),
            "{r}"
        );
        let r = udp("bob", &format!("{io}-5"), &tok("alice"));
        assert_eq!(status(&r), 401);
        assert!(
            header(&r, "WWW-Authenticate")
                .unwrap()
                .contains("error=\"invalid_request\""),
            "{r}"
        );

        let mut t = tcp_client(s.tcp);
        for (user, key, id) in [("alice", "alice", "t1"), ("bob", "bob", "t2")] {
            tcp_write(
                &mut t,
                register(user, &format!("{io}-{id}"), "TCP", Some(&tok(key))).as_bytes(),
            );
            assert_eq!(status(&tcp_read_messages(&mut t, 1)[0]), 200);
        }
        tcp_write(
            &mut t,
            register("alice", &format!("{io}-t3"), "TCP", Some(&tok("revoked"))).as_bytes(),
        );
        assert_eq!(status(&tcp_read_messages(&mut t, 1)[0]), 401);
    }
    drop(node);
}
