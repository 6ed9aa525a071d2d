//! Operations on the real binary: /metrics after known traffic, /healthz and /readyz, JSON logs and
//! the rejected-request debug line, no token or secret in a full run's logs, SIGHUP reload (while
//! traffic flows, and with a broken file), and SIGTERM with requests waiting on the token source.

mod common;

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::mock_as::{MockAs, Script, CLIENT_ID, CLIENT_SECRET};
use common::*;
use serde_json::json;

const ADMIN: &str = "[admin]\nlisten = \"127.0.0.1:0\"\n";

/// The value of the metric line that starts with `series ` (name and labels exactly as written).
fn metric(body: &str, series: &str) -> Option<f64> {
    body.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
        .and_then(|v| v.trim().parse().ok())
}

fn introspection(url: &str, extra: &str, server_extra: &str) -> String {
    format!(
        "[server]\nudp = [\"127.0.0.1:0\"]\ntcp = [\"127.0.0.1:0\"]\nio = \"epoll\"\nshards = 1\nrealm = \"example.com\"\n{server_extra}\n\
         [introspection]\nurl = \"{url}\"\nclient_id = \"{CLIENT_ID}\"\nclient_secret = \"{CLIENT_SECRET}\"\ntimeout_ms = 3000\n{extra}\n"
    )
}

#[test]
fn metrics_after_known_traffic_and_health() {
    for io in DRIVERS {
        let s = Sipward::start_with(io, ADMIN, "shards = 2");
        let admin = s.admin();
        assert_eq!(http_get(admin, "/healthz"), (200, "ok\n".into()));
        assert_eq!(http_get(admin, "/readyz"), (200, "ready\n".into()));

        let c = udp_client();
        for i in 0..3 {
            let r = udp_exchange(
                &c,
                s.udp,
                &register("alice", &format!("ok{i}"), "UDP", Some("alice-token")),
            );
            assert_eq!(status(&r), 200, "{r}");
        }
        for i in 0..2 {
            let r = udp_exchange(
                &c,
                s.udp,
                &register("alice", &format!("no{i}"), "UDP", None),
            );
            assert_eq!(status(&r), 401);
        }
        let r = udp_exchange(
            &c,
            s.udp,
            &register("alice", "bad", "UDP", Some("unknown-token")),
        );
        assert_eq!(status(&r), 401);
        c.send_to(b"not sip at all\r\n\r\n", s.udp).unwrap();
        let _conn = tcp_client(s.tcp);

        // The garbage datagram and the TCP accept are counted by the time they are looked at.
        let deadline = Instant::now() + Duration::from_secs(5);
        let body = loop {
            let (code, body) = http_get(admin, "/metrics");
            assert_eq!(code, 200);
            let settled = metric(
                &body,
                "sipward_messages_dropped_total{reason=\"unparseable\"}",
            ) == Some(1.0)
                && metric(&body, "sipward_tcp_connections_open") == Some(1.0);
            if settled || Instant::now() > deadline {
                break body;
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        let expect = [
            (
                "sipward_requests_total{method=\"REGISTER\",outcome=\"accept\"}",
                3.0,
            ),
            (
                "sipward_requests_total{method=\"REGISTER\",outcome=\"no_credentials\"}",
                2.0,
            ),
            (
                "sipward_requests_total{method=\"REGISTER\",outcome=\"inactive\"}",
                1.0,
            ),
            ("sipward_responses_total{code=\"200\"}", 3.0),
            ("sipward_responses_total{code=\"401\"}", 3.0),
            (
                "sipward_messages_dropped_total{reason=\"unparseable\"}",
                1.0,
            ),
            ("sipward_messages_dropped_total{reason=\"no_via\"}", 0.0),
            // alice-token: one miss, then two hits; unknown-token: one miss.
            ("sipward_cache_hits_total", 2.0),
            ("sipward_cache_misses_total", 2.0),
            ("sipward_cache_entries", 2.0),
            ("sipward_cache_evictions_total", 0.0),
            ("sipward_cache_coalesced_waiters_total", 0.0),
            ("sipward_token_source_in_flight", 0.0),
            ("sipward_tcp_connections_open", 1.0),
            ("sipward_shards", 2.0),
            ("sipward_shards_listening", 2.0),
        ];
        for (series, value) in expect {
            assert_eq!(
                metric(&body, series),
                Some(value),
                "{io}: {series} in\n{body}"
            );
        }
        let driver = format!("sipward_io_driver_info{{driver=\"{io}\"}}");
        assert_eq!(metric(&body, &driver), Some(1.0), "{body}");
        assert!(body.contains("# TYPE sipward_requests counter"), "{body}");
        assert!(body.ends_with("# EOF\n"), "{body}");
        assert_eq!(http_get(admin, "/nothing").0, 404);
    }
}

#[test]
fn introspection_metrics_and_readiness_follow_the_source() {
    let m = MockAs::http();
    m.add_token("metrics-tok-1", json!({"username": "alice"}));
    let url = m.url("/introspect");
    let s = Sipward::launch(
        "epoll",
        &format!("{}{ADMIN}", introspection(&url, "retry_after_s = 60\n", "")),
        &[],
    );
    let admin = s.admin();
    assert_eq!(http_get(admin, "/readyz").0, 200);
    let c = udp_client();
    let r = udp_exchange(
        &c,
        s.udp,
        &register("alice", "i1", "UDP", Some("metrics-tok-1")),
    );
    assert_eq!(status(&r), 200, "{r}");
    let (_, body) = http_get(admin, "/metrics");
    let ok = format!("sipward_introspection_requests_total{{host=\"{url}\",result=\"ok\"}}");
    assert_eq!(metric(&body, &ok), Some(1.0), "{body}");
    let count = format!("sipward_introspection_duration_seconds_count{{host=\"{url}\"}}");
    assert_eq!(metric(&body, &count), Some(1.0), "{body}");

    // Five requests with one new token while the source is slow: one request to the source, four
    // waiters coalesced onto it, one flight in the air meanwhile.
    m.add_token("metrics-tok-3", json!({"username": "alice"}));
    m.script(Script {
        latency: Duration::from_millis(600),
        ..Default::default()
    });
    let clients: Vec<_> = (0..5).map(|_| udp_client()).collect();
    for (i, c) in clients.iter().enumerate() {
        c.send_to(
            register("alice", &format!("co{i}"), "UDP", Some("metrics-tok-3")).as_bytes(),
            s.udp,
        )
        .unwrap();
    }
    std::thread::sleep(Duration::from_millis(200));
    let (_, during) = http_get(admin, "/metrics");
    assert_eq!(
        metric(&during, "sipward_token_source_in_flight"),
        Some(1.0),
        "{during}"
    );
    for c in &clients {
        let mut buf = [0u8; 4096];
        let n = c.recv(&mut buf).unwrap();
        assert_eq!(status(&String::from_utf8_lossy(&buf[..n])), 200);
    }
    let (_, body) = http_get(admin, "/metrics");
    assert_eq!(
        metric(&body, "sipward_cache_coalesced_waiters_total"),
        Some(4.0),
        "{body}"
    );
    assert_eq!(
        metric(&body, "sipward_token_source_in_flight"),
        Some(0.0),
        "{body}"
    );
    assert_eq!(metric(&body, &ok), Some(2.0), "{body}");

    // The only host fails: it is marked down, and the server is no longer ready.
    m.script(Script {
        status: Some(500),
        ..Default::default()
    });
    let r = udp_exchange(
        &c,
        s.udp,
        &register("alice", "i2", "UDP", Some("metrics-tok-2")),
    );
    assert_eq!(status(&r), 503, "{r}");
    let (code, why) = http_get(admin, "/readyz");
    assert_eq!(code, 503);
    assert!(why.contains("token source"), "{why}");
    assert_eq!(http_get(admin, "/healthz").0, 200);
    let (_, body) = http_get(admin, "/metrics");
    let failed =
        format!("sipward_introspection_requests_total{{host=\"{url}\",result=\"server_error\"}}");
    assert_eq!(metric(&body, &failed), Some(1.0), "{body}");
}

#[test]
fn repeated_warnings_are_rate_limited() {
    // A host nothing listens on, retried at once: every request marks it down again.
    let dead = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let s = Sipward::launch(
        "epoll",
        &introspection(
            &format!("http://{dead}/introspect"),
            "retry_after_s = 0\n",
            "",
        ),
        &[],
    );
    let c = udp_client();
    for i in 0..5 {
        let r = udp_exchange(
            &c,
            s.udp,
            &register(
                "alice",
                &format!("d{i}"),
                "UDP",
                Some(&format!("dead-tok-{i}")),
            ),
        );
        assert_eq!(status(&r), 503, "{r}");
    }
    let log = s.log();
    assert_eq!(log.matches("marked down").count(), 1, "{log}");
}

#[test]
fn rejected_request_logs_one_debug_line() {
    let s = Sipward::launch_with(
        "epoll",
        "[server]\nudp = [\"127.0.0.1:0\"]\ntcp = []\nio = \"epoll\"\nshards = 1\nrealm = \"example.com\"\n\
         [static_tokens]\nfile = \"tokens.toml\"\n",
        &[("tokens.toml", TOKENS)],
        |cmd| {
            cmd.env("RUST_LOG", "debug");
        },
    );
    let c = udp_client();
    let r = udp_exchange(
        &c,
        s.udp,
        &register("alice", "rejected-call-7", "UDP", None),
    );
    assert_eq!(status(&r), 401);
    let r = udp_exchange(
        &c,
        s.udp,
        &register("bob", "accepted-call-8", "UDP", Some("bob-token")),
    );
    assert_eq!(status(&r), 200, "{r}");
    assert!(s.wait_log("request rejected", 1, Duration::from_secs(5)));
    let log = s.log();
    let lines: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("request rejected"))
        .collect();
    assert_eq!(lines.len(), 1, "{log}");
    let line = lines[0];
    for part in [
        "DEBUG",
        "call_id=rejected-call-7",
        "src=127.0.0.1:",
        "method=REGISTER",
        "outcome=\"no_credentials\"",
        "code=401",
    ] {
        assert!(line.contains(part), "{part} not in {line}");
    }
    assert!(!log.contains("bob-token"));
}

/// Starts the binary with `--log-format json` itself: the harness reads text lines.
#[test]
fn json_log_format() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("tokens.toml"), TOKENS).unwrap();
    let path = dir.path().join("c.toml");
    std::fs::write(
        &path,
        "[server]\nudp = [\"127.0.0.1:0\"]\ntcp = []\nio = \"epoll\"\nshards = 1\nrealm = \"example.com\"\n\
         [static_tokens]\nfile = \"tokens.toml\"\n",
    )
    .unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_sipward"))
        .args(["--log-format", "json", "--log-level", "debug", "--config"])
        .arg(&path)
        .env_remove("RUST_LOG")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let (tx, rx) = std::sync::mpsc::channel::<serde_json::Value>();
    let stderr = child.stderr.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            let v: serde_json::Value = serde_json::from_str(&line)
                .unwrap_or_else(|e| panic!("not a JSON line ({e}): {line}"));
            let _ = tx.send(v);
        }
    });
    let next = |what: &str| -> serde_json::Value {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let v = rx
                .recv_timeout(left)
                .unwrap_or_else(|_| panic!("no JSON line with {what}"));
            if v["fields"]["message"]
                .as_str()
                .is_some_and(|m| m.contains(what))
            {
                return v;
            }
        }
    };
    let listening = next("listening on udp ");
    assert_eq!(listening["level"], "INFO");
    let udp: SocketAddr = listening["fields"]["message"]
        .as_str()
        .unwrap()
        .trim_start_matches("listening on udp ")
        .parse()
        .unwrap();
    let c = udp_client();
    let r = udp_exchange(&c, udp, &register("alice", "json-call-1", "UDP", None));
    assert_eq!(status(&r), 401);
    let line = next("request rejected");
    assert_eq!(line["level"], "DEBUG");
    assert_eq!(line["fields"]["call_id"], "json-call-1");
    assert_eq!(line["fields"]["method"], "REGISTER");
    assert_eq!(line["fields"]["outcome"], "no_credentials");
    let _ = child.kill();
    let _ = child.wait();
}

#[test]
fn no_token_or_secret_in_a_full_runs_logs() {
    let m = MockAs::http();
    m.add_token("full-run-secret-tok-1", json!({"username": "alice"}));
    let config = format!(
        "{}{ADMIN}",
        introspection(&m.url("/introspect"), "", "shutdown_grace_s = 5")
    );
    let mut s = Sipward::launch_with("epoll", &config, &[], |cmd| {
        cmd.env("RUST_LOG", "trace");
    });
    let c = udp_client();
    let r = udp_exchange(
        &c,
        s.udp,
        &register("alice", "f1", "UDP", Some("full-run-secret-tok-1")),
    );
    assert_eq!(status(&r), 200, "{r}");
    let r = udp_exchange(
        &c,
        s.udp,
        &register("bob", "f2", "UDP", Some("full-run-secret-tok-1")),
    );
    assert_eq!(status(&r), 401, "{r}");
    let r = udp_exchange(
        &c,
        s.udp,
        &register("alice", "f3", "UDP", Some("full-run-secret-tok-2")),
    );
    assert_eq!(status(&r), 401, "{r}");
    http_get(s.admin(), "/metrics");
    // A reload (same file) and a stop are part of the run.
    s.signal(libc::SIGHUP);
    assert!(s.wait_log("configuration reloaded", 1, Duration::from_secs(5)));
    m.script(Script {
        status: Some(500),
        ..Default::default()
    });
    let r = udp_exchange(
        &c,
        s.udp,
        &register("alice", "f4", "UDP", Some("full-run-secret-tok-3")),
    );
    assert_eq!(status(&r), 503, "{r}");
    s.signal(libc::SIGTERM);
    assert_eq!(s.wait_exit(Duration::from_secs(10)), Some(0));
    std::thread::sleep(Duration::from_millis(100));
    let log = s.log();
    assert!(log.contains("TRACE") || log.contains("DEBUG"), "{log}");
    assert!(log.contains("marked down"), "{log}");
    for secret in ["full-run-secret-tok", CLIENT_SECRET] {
        assert!(!log.contains(secret), "{secret} in log:\n{log}");
    }
}

/// A REGISTER without credentials: 401 while REGISTER needs a token, 200 once it does not.
fn unauthenticated(i: usize) -> String {
    register("alice", &format!("flow-{i}"), "UDP", None)
}

#[test]
fn reload_changes_the_method_list_while_traffic_flows() {
    for io in DRIVERS {
        let s = Sipward::start_with(io, "", "shards = 2");
        let to = s.udp;
        let traffic = std::thread::spawn(move || {
            let c = udp_client();
            let (mut challenged, mut passed, mut order_ok) = (0usize, 0usize, true);
            let mut buf = [0u8; 65536];
            let started = Instant::now();
            // Bounded: at most 20,000 requests or 30 s; stops once 200 have passed after the reload.
            for i in 0..20_000 {
                c.send_to(unauthenticated(i).as_bytes(), to).unwrap();
                let n = c.recv(&mut buf).expect("every request is answered");
                let r = String::from_utf8_lossy(&buf[..n]);
                assert!(r.contains(&format!("Call-ID: flow-{i}\r\n")), "{r}");
                match status(&r) {
                    401 => {
                        challenged += 1;
                        order_ok &= passed == 0;
                    }
                    200 => passed += 1,
                    other => panic!("unexpected {other}: {r}"),
                }
                if passed >= 200 || started.elapsed() > Duration::from_secs(30) {
                    break;
                }
            }
            (challenged, passed, order_ok)
        });
        // Let some traffic flow under the first method list.
        std::thread::sleep(Duration::from_millis(150));
        let old = std::fs::read_to_string(s.config_path()).unwrap();
        std::fs::write(
            s.config_path(),
            format!("{old}\n[auth]\nmethods = [\"INVITE\"]\n"),
        )
        .unwrap();
        s.signal(libc::SIGHUP);
        let (challenged, passed, order_ok) = traffic.join().unwrap();
        assert!(challenged > 0, "{io}: traffic before the reload");
        assert!(passed >= 200, "{io}: traffic after the reload");
        assert!(order_ok, "{io}: no challenge after the first pass");
        assert!(s.wait_for_log("configuration reloaded"), "{}", s.log());
        assert!(!s.log().contains("restart"), "{}", s.log());
    }
}

#[test]
fn reload_with_a_broken_file_keeps_the_running_config() {
    let s = Sipward::start_with("epoll", ADMIN, "shards = 1");
    let c = udp_client();
    let good = std::fs::read_to_string(s.config_path()).unwrap();
    let broken = [
        (
            "[auth]\nmethods = \"REGISTER\"\n",
            "invalid type: string \"REGISTER\", expected a sequence",
        ),
        ("[auth]\nmethods = [\"ACK\"]\n", "auth.methods[0]"),
        ("[cache]\nmax_ttl_s = 0\n", "cache.max_ttl_s"),
    ];
    for (n, (extra, key)) in broken.iter().enumerate() {
        std::fs::write(s.config_path(), format!("{good}\n{extra}")).unwrap();
        s.signal(libc::SIGHUP);
        assert!(
            s.wait_log("reload refused", n + 1, Duration::from_secs(5)),
            "{}",
            s.log()
        );
        let log = s.log();
        let refused: Vec<&str> = log
            .lines()
            .filter(|l| l.contains("reload refused"))
            .collect();
        assert_eq!(
            refused.len(),
            n + 1,
            "one error line per refused reload: {log}"
        );
        assert!(refused[n].contains(key), "{key}: {log}");
        assert!(!refused[n].contains(" | "), "no quoted file line: {log}");
        // Still the running policy: REGISTER needs a token, and the cache answers.
        let r = udp_exchange(&c, s.udp, &register("alice", &format!("b{n}"), "UDP", None));
        assert_eq!(status(&r), 401, "{r}");
        let r = udp_exchange(
            &c,
            s.udp,
            &register("alice", &format!("t{n}"), "UDP", Some("alice-token")),
        );
        assert_eq!(status(&r), 200, "{r}");
    }
    // A token file that does not load is refused too, and the static source stays.
    std::fs::write(
        s.config_path(),
        good.replace("tokens.toml", "missing-tokens.toml"),
    )
    .unwrap();
    s.signal(libc::SIGHUP);
    assert!(s.wait_log("reload refused", 4, Duration::from_secs(5)));
    let r = udp_exchange(
        &c,
        s.udp,
        &register("alice", "t9", "UDP", Some("bob-token")),
    );
    assert_eq!(
        status(&r),
        401,
        "bob's token, alice's AOR: the source still answers"
    );
    assert_eq!(http_get(s.admin(), "/readyz").0, 200);
    assert!(!s.log().contains("configuration reloaded"));

    // A listen address change is logged as needing a restart; the rest applies.
    std::fs::write(
        s.config_path(),
        good.replace("udp = [\"127.0.0.1:0\"]", "udp = [\"127.0.0.1:1\"]")
            + "\n[auth]\nmethods = [\"INVITE\"]\n",
    )
    .unwrap();
    s.signal(libc::SIGHUP);
    assert!(s.wait_log("configuration reloaded", 1, Duration::from_secs(5)));
    let log = s.log();
    assert!(
        log.lines()
            .any(|l| l.contains("server.udp") && l.contains("restart")),
        "{log}"
    );
    let r = udp_exchange(&c, s.udp, &register("alice", "after", "UDP", None));
    assert_eq!(status(&r), 200, "{r}");
}

#[test]
fn sigterm_lets_waiting_requests_finish_then_exits_zero() {
    for io in DRIVERS {
        let m = MockAs::http();
        for i in 0..3 {
            m.add_token(&format!("slow-tok-{i}"), json!({"username": "alice"}));
        }
        m.script(Script {
            latency: Duration::from_millis(700),
            ..Default::default()
        });
        let config = introspection(&m.url("/introspect"), "", "shutdown_grace_s = 10")
            .replace("io = \"epoll\"", &format!("io = \"{io}\""));
        let mut s = Sipward::launch(io, &config, &[]);
        let clients: Vec<_> = (0..2).map(|_| udp_client()).collect();
        for (i, c) in clients.iter().enumerate() {
            c.send_to(
                register(
                    "alice",
                    &format!("w{i}"),
                    "UDP",
                    Some(&format!("slow-tok-{i}")),
                )
                .as_bytes(),
                s.udp,
            )
            .unwrap();
        }
        let mut tcp = tcp_client(s.tcp);
        tcp_write(
            &mut tcp,
            register("alice", "wt", "TCP", Some("slow-tok-2")).as_bytes(),
        );
        std::thread::sleep(Duration::from_millis(200));
        let t0 = Instant::now();
        s.signal(libc::SIGTERM);
        assert!(s.wait_log("stopping", 1, Duration::from_secs(2)));
        std::thread::sleep(Duration::from_millis(50));
        // Stopped accepting: a new request is not answered, a new connection is refused.
        let late = udp_client();
        late.send_to(register("alice", "late", "UDP", None).as_bytes(), s.udp)
            .unwrap();
        assert!(udp_silent(&late, Duration::from_millis(200)), "{io}");
        assert!(std::net::TcpStream::connect(s.tcp).is_err(), "{io}");
        for c in &clients {
            let mut buf = [0u8; 4096];
            let n = c.recv(&mut buf).expect("answered during the grace period");
            let r = String::from_utf8_lossy(&buf[..n]);
            assert_eq!(status(&r), 200, "{io}: {r}");
        }
        let r = tcp_read_messages(&mut tcp, 1);
        assert_eq!(status(&r[0]), 200, "{io}: {}", r[0]);
        assert_eq!(
            s.wait_exit(Duration::from_secs(10)),
            Some(0),
            "{io}: {}",
            s.log()
        );
        assert!(t0.elapsed() < Duration::from_secs(10));
        assert!(s.log().contains("stopped"), "{}", s.log());
        // Nothing listens any more.
        assert!(std::net::TcpStream::connect(s.tcp).is_err());
    }
}

#[test]
fn sigterm_gives_up_after_the_grace_period() {
    let m = MockAs::http();
    m.add_token("very-slow", json!({"username": "alice"}));
    m.script(Script {
        latency: Duration::from_millis(2500),
        ..Default::default()
    });
    let mut s = Sipward::launch(
        "epoll",
        &introspection(&m.url("/introspect"), "", "shutdown_grace_s = 1"),
        &[],
    );
    let c = udp_client();
    c.send_to(
        register("alice", "g", "UDP", Some("very-slow")).as_bytes(),
        s.udp,
    )
    .unwrap();
    std::thread::sleep(Duration::from_millis(200));
    let t0 = Instant::now();
    s.signal(libc::SIGINT);
    assert_eq!(s.wait_exit(Duration::from_secs(10)), Some(0), "{}", s.log());
    let took = t0.elapsed();
    assert!(took >= Duration::from_millis(900), "{took:?}");
    assert!(s.log().contains("shutdown grace over"), "{}", s.log());
}
