//! The remote token sources against the in-repo mock authorization server: each profile-table row a
//! remote source can produce, each failure kind, each claim rule, caching, singleflight, failover,
//! HTTPS with a private CA, and secrets kept out of the logs.

mod common;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use common::mock_as::{MockAs, Script, CLIENT_ID, CLIENT_SECRET};
use common::*;
use serde_json::json;

fn introspection(urls: &[String], extra: &str, auth_extra: &str) -> String {
    let urls: Vec<String> = urls.iter().map(|u| format!("\"{u}\"")).collect();
    format!(
        "[server]\nudp = [\"127.0.0.1:0\"]\ntcp = [\"127.0.0.1:0\"]\nio = \"epoll\"\nshards = 1\nrealm = \"example.com\"\n\
         [auth]\n{auth_extra}\n\
         [introspection]\nurls = [{}]\nclient_id = \"{CLIENT_ID}\"\nclient_secret = \"{CLIENT_SECRET}\"\ntimeout_ms = 1000\n{extra}\n",
        urls.join(", ")
    )
}

fn userinfo(url: &str, extra: &str, auth_extra: &str) -> String {
    format!(
        "[server]\nudp = [\"127.0.0.1:0\"]\ntcp = [\"127.0.0.1:0\"]\nio = \"epoll\"\nshards = 1\nrealm = \"example.com\"\n\
         [auth]\n{auth_extra}\n[userinfo]\nurl = \"{url}\"\ntimeout_ms = 1000\n{extra}\n"
    )
}

fn reg(s: &Sipward, user: &str, token: Option<&str>) -> String {
    let c = udp_client();
    let call_id = format!("{user}-{}", rand_id());
    udp_exchange(&c, s.udp, &register(user, &call_id, "UDP", token))
}

fn rand_id() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    std::collections::hash_map::RandomState::new()
        .build_hasher()
        .finish()
}

fn www(r: &str) -> &str {
    header(r, "WWW-Authenticate").unwrap_or("")
}

/// A port nothing listens on (bound and released).
fn dead_port() -> SocketAddr {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
}

#[test]
fn introspection_outcomes_and_caching() {
    let m = MockAs::http();
    m.add_token("tok-alice", json!({"username": "alice", "scope": "sip"}));
    m.add_token("tok-bob", json!({"username": "bob@example.com"}));
    for io in DRIVERS {
        let cfg = introspection(&[m.url("/introspect")], "", "")
            .replace("io = \"epoll\"", &format!("io = \"{io}\""));
        let s = Sipward::launch(io, &cfg, &[]);
        let before = m.requests();
        // A valid token sent 5 times costs one introspection.
        for _ in 0..5 {
            let r = reg(&s, "alice", Some("tok-alice"));
            assert_eq!(status(&r), 200, "{io}: {r}");
        }
        assert_eq!(m.requests() - before, 1, "{io}: cached after the first");
        let r = reg(&s, "alice", Some("unknown"));
        assert_eq!(
            www(&r),
            "Bearer realm=\"example.com\", error=\"invalid_token\""
        );
        let r = reg(&s, "alice", Some("tok-bob"));
        assert_eq!(status(&r), 401);
        assert!(www(&r).contains("error=\"invalid_request\""));
        assert_eq!(status(&reg(&s, "bob", Some("tok-bob"))), 200);
    }
    assert!(m
        .state
        .client_auth
        .lock()
        .unwrap()
        .iter()
        .all(|k| *k == "basic"));
}

#[test]
fn client_secret_post_and_wrong_secret() {
    let m = MockAs::http();
    m.add_token("t", json!({"username": "alice"}));
    let s = Sipward::launch(
        "epoll",
        &introspection(&[m.url("/introspect")], "client_auth = \"post\"", ""),
        &[],
    );
    assert_eq!(status(&reg(&s, "alice", Some("t"))), 200);
    assert_eq!(m.state.client_auth.lock().unwrap().as_slice(), &["post"]);
    // The AS refuses our client credentials (401): the "answered 4xx" row, 500 under rfc8898.
    let cfg = introspection(&[m.url("/introspect")], "", "").replace(CLIENT_SECRET, "wrong");
    let s = Sipward::launch("epoll", &cfg, &[]);
    assert_eq!(status(&reg(&s, "alice", Some("t"))), 500);
}

/// The rows of the profile table that only a remote source can reach, under both profiles.
#[test]
fn source_failures_map_to_the_profile_table() {
    let cases: &[(&str, Script, u16, u16)] = &[
        (
            "5xx",
            Script {
                status: Some(502),
                ..Default::default()
            },
            503,
            403,
        ),
        (
            "4xx",
            Script {
                status: Some(404),
                ..Default::default()
            },
            500,
            403,
        ),
        (
            "bad body",
            Script {
                body: Some("<html>".into()),
                ..Default::default()
            },
            500,
            403,
        ),
        (
            "active not boolean",
            Script {
                body: Some(r#"{"active":"yes"}"#.into()),
                ..Default::default()
            },
            500,
            403,
        ),
        (
            "timeout",
            Script {
                latency: Duration::from_millis(1500),
                ..Default::default()
            },
            503,
            500,
        ),
    ];
    for (what, script, rfc, oracle) in cases {
        let m = MockAs::http();
        m.script(script.clone());
        for (profile, expect) in [("rfc8898", rfc), ("oracle", oracle)] {
            let s = Sipward::launch(
                "epoll",
                &introspection(
                    &[m.url("/introspect")],
                    "",
                    &format!("profile = \"{profile}\""),
                ),
                &[],
            );
            let r = reg(
                &s,
                "alice",
                Some(&format!("tok-{what}-{profile}").replace(' ', "-")),
            );
            assert_eq!(status(&r), *expect, "{what} under {profile}: {r}");
            if *expect == 503 {
                assert_eq!(header(&r, "Retry-After"), Some("5"));
            }
        }
    }
    // Unreachable: nothing listens.
    let url = format!("http://{}/introspect", dead_port());
    for (profile, expect) in [("rfc8898", 503), ("oracle", 500)] {
        let s = Sipward::launch(
            "epoll",
            &introspection(
                std::slice::from_ref(&url),
                "",
                &format!("profile = \"{profile}\""),
            ),
            &[],
        );
        assert_eq!(
            status(&reg(&s, "alice", Some("x"))),
            expect,
            "unreachable under {profile}"
        );
    }
}

#[test]
fn overloaded_when_max_inflight_is_reached() {
    let m = MockAs::http();
    m.script(Script {
        latency: Duration::from_millis(600),
        ..Default::default()
    });
    let s = Sipward::launch(
        "epoll",
        &introspection(&[m.url("/introspect")], "max_inflight = 1", ""),
        &[],
    );
    let slow = udp_client();
    slow.send_to(
        register("alice", "first", "UDP", Some("tok-a")).as_bytes(),
        s.udp,
    )
    .unwrap();
    std::thread::sleep(Duration::from_millis(100));
    let t0 = Instant::now();
    let r = reg(&s, "alice", Some("tok-b"));
    assert_eq!(status(&r), 503, "{r}");
    assert!(
        t0.elapsed() < Duration::from_millis(400),
        "overload fails at once, not after a wait"
    );
}

#[test]
fn claim_rules() {
    let m = MockAs::http();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    m.add_token(
        "pu",
        json!({"preferred_username": "alice", "username": "mallory"}),
    );
    m.add_token("nouser", json!({"scope": "sip"}));
    m.add_token("expired", json!({"username": "alice", "exp": now - 10}));
    m.add_token("early", json!({"username": "alice", "nbf": now + 3600}));
    m.add_token(
        "noscope",
        json!({"username": "alice", "scope": "openid", "aud": "sipward"}),
    );
    m.add_token(
        "otheraud",
        json!({"username": "alice", "scope": "sip", "aud": ["other"]}),
    );
    m.add_token(
        "good",
        json!({"username": "alice", "scope": "openid sip", "aud": "sipward", "exp": now + 3600}),
    );
    let url = [m.url("/introspect")];
    let s = Sipward::launch(
        "epoll",
        &introspection(&url, "username_claim = \"preferred_username\"", ""),
        &[],
    );
    assert_eq!(
        status(&reg(&s, "alice", Some("pu"))),
        200,
        "the configured claim is compared"
    );
    let s = Sipward::launch(
        "epoll",
        &introspection(&url, "required_scope = \"sip\"\naudience = \"sipward\"", ""),
        &[],
    );
    assert_eq!(status(&reg(&s, "alice", Some("good"))), 200);
    assert!(www(&reg(&s, "alice", Some("expired"))).contains("invalid_token"));
    assert!(www(&reg(&s, "alice", Some("early"))).contains("invalid_token"));
    let r = reg(&s, "alice", Some("noscope"));
    assert_eq!(status(&r), 403);
    assert!(
        www(&r).contains("error=\"insufficient_scope\"") && www(&r).contains("scope=\"sip\""),
        "{r}"
    );
    assert!(www(&reg(&s, "alice", Some("otheraud"))).contains("invalid_token"));
    // Missing username claim: accepted under rfc8898, a mismatch (403) under oracle.
    let s = Sipward::launch("epoll", &introspection(&url, "", ""), &[]);
    assert_eq!(status(&reg(&s, "alice", Some("nouser"))), 200);
    let s = Sipward::launch(
        "epoll",
        &introspection(&url, "", "profile = \"oracle\""),
        &[],
    );
    assert_eq!(status(&reg(&s, "alice", Some("nouser"))), 403);
}

#[test]
fn userinfo_source() {
    let m = MockAs::http();
    m.add_token(
        "u-alice",
        json!({"sub": "alice", "email": "alice@example.com"}),
    );
    m.add_token("u-nosub", json!({"email": "x@example.com"}));
    let s = Sipward::launch("epoll", &userinfo(&m.url("/userinfo"), "", ""), &[]);
    assert_eq!(status(&reg(&s, "alice", Some("u-alice"))), 200);
    let r = reg(&s, "alice", Some("revoked"));
    assert!(
        www(&r).contains("invalid_token"),
        "AS 401 means the token is not valid: {r}"
    );
    assert!(www(&reg(&s, "bob", Some("u-alice"))).contains("invalid_request"));
    assert_eq!(status(&reg(&s, "alice", Some("u-nosub"))), 200);
    // Oracle: anything but a good answer is 403; an unreachable STS is 500.
    let s = Sipward::launch(
        "epoll",
        &userinfo(&m.url("/userinfo"), "", "profile = \"oracle\""),
        &[],
    );
    assert_eq!(status(&reg(&s, "alice", Some("revoked"))), 403);
    assert_eq!(status(&reg(&s, "alice", Some("u-nosub"))), 403);
    assert_eq!(status(&reg(&s, "alice", Some("u-alice"))), 200);
    m.script(Script {
        status: Some(500),
        ..Default::default()
    });
    assert_eq!(status(&reg(&s, "alice", Some("fresh"))), 403);
    let s = Sipward::launch(
        "epoll",
        &userinfo(
            &format!("http://{}/userinfo", dead_port()),
            "",
            "profile = \"oracle\"",
        ),
        &[],
    );
    assert_eq!(status(&reg(&s, "alice", Some("x"))), 500);
}

#[test]
fn https_with_a_private_ca() {
    let m = MockAs::https();
    m.add_token("tls-tok", json!({"username": "alice"}));
    let dir = tempfile::tempdir().unwrap();
    let ca = dir.path().join("ca.pem");
    std::fs::write(&ca, m.ca_pem.as_ref().unwrap()).unwrap();
    let cfg = introspection(
        &[m.url("/introspect")],
        &format!("ca_file = \"{}\"", ca.display()),
        "",
    );
    let s = Sipward::launch("epoll", &cfg, &[]);
    assert_eq!(status(&reg(&s, "alice", Some("tls-tok"))), 200);
    // Without the CA the certificate is not trusted: no answer from the source, 503.
    let s = Sipward::launch(
        "epoll",
        &introspection(&[m.url("/introspect")], "", ""),
        &[],
    );
    assert_eq!(status(&reg(&s, "alice", Some("tls-tok"))), 503);
    assert_eq!(
        m.requests(),
        1,
        "no request was sent over the untrusted connection"
    );
}

#[test]
fn failover_and_recovery() {
    let m = MockAs::http();
    m.add_token("f", json!({"username": "alice"}));
    let dead = dead_port();
    let dead_url = format!("http://{dead}/introspect");
    // First host down: the second answers.
    let s = Sipward::launch(
        "epoll",
        &introspection(
            &[dead_url.clone(), m.url("/introspect")],
            "retry_after_s = 1",
            "",
        ),
        &[],
    );
    assert_eq!(status(&reg(&s, "alice", Some("f"))), 200);
    assert!(
        s.wait_for_log("token source host marked down"),
        "{}",
        s.log()
    );
    // Both down: 503 within the timeout (1 s).
    let dead2 = format!("http://{}/introspect", dead_port());
    let s = Sipward::launch(
        "epoll",
        &introspection(&[dead_url.clone(), dead2], "retry_after_s = 1", ""),
        &[],
    );
    let t0 = Instant::now();
    assert_eq!(status(&reg(&s, "alice", Some("f"))), 503);
    assert!(t0.elapsed() < Duration::from_millis(1500));
    // Service resumes once a host returns and its down time has passed.
    let back = MockAs::start(dead, false);
    back.add_token("f", json!({"username": "alice"}));
    std::thread::sleep(Duration::from_millis(1100));
    assert_eq!(status(&reg(&s, "alice", Some("f"))), 200);
}

#[test]
fn one_introspection_for_a_thousand_concurrent_registers() {
    let m = MockAs::http();
    m.add_token("shared", json!({"username": "alice"}));
    m.script(Script {
        latency: Duration::from_millis(300),
        ..Default::default()
    });
    for io in DRIVERS {
        let cfg = introspection(&[m.url("/introspect")], "", "")
            .replace("io = \"epoll\"", &format!("io = \"{io}\""));
        let s = Sipward::launch(io, &cfg, &[]);
        let before = m.requests();
        let token = format!("shared-{io}");
        m.add_token(&token, json!({"username": "alice"}));
        let clients: Vec<_> = (0..50).map(|_| udp_client()).collect();
        for (i, c) in clients.iter().enumerate() {
            for j in 0..20 {
                c.send_to(
                    register("alice", &format!("sf-{i}-{j}"), "UDP", Some(&token)).as_bytes(),
                    s.udp,
                )
                .unwrap();
            }
        }
        let mut ok = 0;
        for c in &clients {
            for _ in 0..20 {
                let mut buf = [0u8; 4096];
                let n = c.recv(&mut buf).expect("every REGISTER is answered");
                if buf[..n].starts_with(b"SIP/2.0 200 ") {
                    ok += 1;
                }
            }
        }
        assert_eq!(ok, 1000, "{io}");
        assert_eq!(
            m.requests() - before,
            1,
            "{io}: 1000 concurrent misses, one introspection"
        );
    }
}

#[test]
fn no_token_or_secret_in_logs() {
    let m = MockAs::http();
    m.add_token("visible-nowhere-1", json!({"username": "alice"}));
    let s = Sipward::launch(
        "epoll",
        &introspection(
            &[m.url("/introspect"), format!("http://{}/x", dead_port())],
            "",
            "",
        ),
        &[],
    );
    reg(&s, "alice", Some("visible-nowhere-1"));
    reg(&s, "alice", Some("visible-nowhere-2"));
    m.script(Script {
        status: Some(500),
        ..Default::default()
    });
    reg(&s, "alice", Some("visible-nowhere-3"));
    std::thread::sleep(Duration::from_millis(200));
    let log = s.log();
    assert!(
        log.contains("marked down"),
        "the run exercised the failure paths: {log}"
    );
    for secret in ["visible-nowhere", CLIENT_SECRET] {
        assert!(!log.contains(secret), "{secret} in log:\n{log}");
    }
}
