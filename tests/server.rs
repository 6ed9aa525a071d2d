//! The real binary on ephemeral loopback ports, over UDP and TCP, under both I/O drivers.

mod common;

use std::time::Duration;

use common::*;

#[test]
fn udp_register_outcomes() {
    for io in DRIVERS {
        let s = Sipward::start(io, "");
        let c = udp_client();
        let ok = udp_exchange(
            &c,
            s.udp,
            &register("alice", "u1", "UDP", Some("alice-token")),
        );
        assert_eq!(status(&ok), 200, "{io}: {ok}");
        assert_eq!(
            header(&ok, "Contact"),
            Some("<sip:alice@127.0.0.1:5999>;expires=600")
        );
        let port = c.local_addr().unwrap().port();
        assert!(
            header(&ok, "Via")
                .unwrap()
                .ends_with(&format!(";received=127.0.0.1;rport={port}")),
            "{ok}"
        );
        assert!(header(&ok, "To").unwrap().contains(";tag="));
        assert_eq!(header(&ok, "Call-ID"), Some("u1"));

        let r = udp_exchange(&c, s.udp, &register("alice", "u2", "UDP", None));
        assert_eq!(status(&r), 401);
        assert_eq!(
            header(&r, "WWW-Authenticate"),
            Some("Bearer realm=\"example.com\"")
        );

        let r = udp_exchange(
            &c,
            s.udp,
            &register("alice", "u3", "UDP", Some("unknown-token")),
        );
        assert_eq!(status(&r), 401);
        assert_eq!(
            header(&r, "WWW-Authenticate"),
            Some("Bearer realm=\"example.com\", error=\"invalid_token\"")
        );

        let r = udp_exchange(
            &c,
            s.udp,
            &register("alice", "u4", "UDP", Some("expired-token")),
        );
        assert!(r.contains("error=\"invalid_token\""), "{r}");

        let r = udp_exchange(
            &c,
            s.udp,
            &register("alice", "u5", "UDP", Some("bob-token")),
        );
        assert_eq!(status(&r), 401);
        assert!(r.contains("error=\"invalid_request\""), "{r}");

        // bob's token carries user@host: the whole AOR is compared.
        let r = udp_exchange(&c, s.udp, &register("bob", "u6", "UDP", Some("bob-token")));
        assert_eq!(status(&r), 200, "{r}");

        // Cached now: the same answer again.
        let r = udp_exchange(
            &c,
            s.udp,
            &register("alice", "u7", "UDP", Some("alice-token")),
        );
        assert_eq!(status(&r), 200);
    }
}

#[test]
fn udp_malformed_credentials_and_unlisted_methods() {
    for io in DRIVERS {
        let s = Sipward::start(io, "");
        let c = udp_client();
        let r = udp_exchange(&c, s.udp, &register("alice", "m1", "UDP", Some("a b")));
        assert!(
            r.starts_with("SIP/2.0 400 Malformed Bearer token\r\n"),
            "{io}: {r}"
        );
        let options = register("alice", "m2", "UDP", None).replace("REGISTER", "OPTIONS");
        let r = udp_exchange(&c, s.udp, &options);
        assert_eq!(status(&r), 200, "OPTIONS is not in auth.methods: {r}");
    }
}

#[test]
fn oracle_profile_and_proxy_challenge() {
    for io in DRIVERS {
        let s = Sipward::start(io, "[auth]\nprofile = \"oracle\"\nchallenge = \"proxy\"\n");
        let c = udp_client();
        let r = udp_exchange(&c, s.udp, &register("alice", "o1", "UDP", None));
        assert_eq!(status(&r), 407, "{io}: {r}");
        assert_eq!(
            header(&r, "Proxy-Authenticate"),
            Some("Bearer realm=\"example.com\"")
        );
        let proxied = register("alice", "o2", "UDP", None).replace(
            "Content-Length: 0",
            "Proxy-Authorization: Bearer unknown\r\nContent-Length: 0",
        );
        let r = udp_exchange(&c, s.udp, &proxied);
        assert_eq!(status(&r), 403, "{r}");
        let good = register("alice", "o3", "UDP", None).replace(
            "Content-Length: 0",
            "Proxy-Authorization: Bearer alice-token\r\nContent-Length: 0",
        );
        assert_eq!(status(&udp_exchange(&c, s.udp, &good)), 200);
    }
}

#[test]
fn bearer_without_a_token_source_is_500() {
    for io in DRIVERS {
        let config =
            format!("[server]\nudp = [\"127.0.0.1:0\"]\ntcp = []\nio = \"{io}\"\nshards = 1\n");
        let s = Sipward::launch(io, &config, &[]);
        let c = udp_client();
        let r = udp_exchange(
            &c,
            s.udp,
            &register("alice", "n1", "UDP", Some("alice-token")),
        );
        assert_eq!(status(&r), 500, "{io}: {r}");
        let r = udp_exchange(&c, s.udp, &register("alice", "n2", "UDP", None));
        assert_eq!(status(&r), 401, "{io}: no credentials is still a challenge");
    }
}

#[test]
fn bad_input_never_stops_a_shard() {
    for io in DRIVERS {
        let s = Sipward::start(io, "");
        let c = udp_client();
        for junk in [
            &b"garbage"[..],
            b"\x00\xff\xfe",
            b"SIP/2.0 200 OK\r\n\r\n",
            b"",
            b"INVITE sip:x SIP/2.0\r\nbad header\r\n\r\n",
        ] {
            c.send_to(junk, s.udp).unwrap();
        }
        assert!(
            udp_silent(&c, Duration::from_millis(300)),
            "{io}: junk gets no answer"
        );
        // A routable request missing Call-ID gets a 400 naming the problem.
        let no_cid = register("alice", "b1", "UDP", None).replace("Call-ID: b1\r\n", "");
        let r = udp_exchange(&c, s.udp, &no_cid);
        assert!(
            r.starts_with("SIP/2.0 400 Missing Call-ID header\r\n"),
            "{r}"
        );
        let bad_cseq =
            register("alice", "b2", "UDP", None).replace("CSeq: 1 REGISTER", "CSeq: one REGISTER");
        let r = udp_exchange(&c, s.udp, &bad_cseq);
        assert!(
            r.starts_with("SIP/2.0 400 Malformed CSeq header\r\n"),
            "{r}"
        );
        // The shard still serves.
        let r = udp_exchange(
            &c,
            s.udp,
            &register("alice", "b3", "UDP", Some("alice-token")),
        );
        assert_eq!(status(&r), 200);
    }
}

#[test]
fn ack_gets_no_response() {
    for io in DRIVERS {
        let s = Sipward::start(io, "");
        let c = udp_client();
        let ack = "ACK sip:bob@example.com SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.1:5999;branch=z9hG4bKack\r\n\
                   From: <sip:alice@example.com>;tag=a\r\nTo: <sip:bob@example.com>;tag=b\r\nCall-ID: ack1\r\n\
                   CSeq: 1 ACK\r\nContent-Length: 0\r\n\r\n";
        c.send_to(ack.as_bytes(), s.udp).unwrap();
        assert!(
            udp_silent(&c, Duration::from_millis(300)),
            "{io}: ACK answered"
        );
    }
}

#[test]
fn tcp_framing_several_messages_and_keepalive() {
    for io in DRIVERS {
        let s = Sipward::start(io, "");
        let mut t = tcp_client(s.tcp);
        // Two messages and a ping in one write.
        let mut batch = register("alice", "t1", "TCP", Some("alice-token"));
        batch.push_str("\r\n\r\n");
        batch.push_str(&register("alice", "t2", "TCP", None));
        tcp_write(&mut t, batch.as_bytes());
        // A response that waited for the token source may overtake one that did not: SIP matches
        // responses to transactions, not to order on the connection.
        let mut rs = tcp_read_messages(&mut t, 2);
        rs.sort_by_key(|r| header(r, "Call-ID").map(str::to_string));
        assert_eq!(header(&rs[0], "Call-ID"), Some("t1"));
        assert_eq!(status(&rs[0]), 200, "{io}: {}", rs[0]);
        assert_eq!(header(&rs[1], "Call-ID"), Some("t2"));
        assert_eq!(status(&rs[1]), 401);

        // A lone ping gets a lone CRLF pong (RFC 5626 4.4.1).
        tcp_write(&mut t, b"\r\n\r\n");
        let mut pong = [0u8; 2];
        std::io::Read::read_exact(&mut t, &mut pong).unwrap();
        assert_eq!(&pong, b"\r\n");

        // One message over many writes.
        let msg = register("alice", "t3", "TCP", Some("alice-token"));
        for chunk in msg.as_bytes().chunks(7) {
            tcp_write(&mut t, chunk);
            std::thread::sleep(Duration::from_millis(1));
        }
        let rs = tcp_read_messages(&mut t, 1);
        assert_eq!(header(&rs[0], "Call-ID"), Some("t3"));
        assert_eq!(status(&rs[0]), 200);
    }
}

#[test]
fn tcp_oversize_message_gets_513_and_close() {
    for io in DRIVERS {
        let s = Sipward::start_with(io, "", "shards = 1\nmax_message_size = 2048");
        let mut t = tcp_client(s.tcp);
        let big = register("alice", "big", "TCP", None).replace(
            "Content-Length: 0\r\n",
            &format!("X-Pad: {}\r\nContent-Length: 0\r\n", "x".repeat(4000)),
        );
        tcp_write(&mut t, big.as_bytes());
        let rs = tcp_read_messages(&mut t, 1);
        assert!(
            rs[0].starts_with("SIP/2.0 513 Message Too Large\r\n"),
            "{io}: {}",
            rs[0]
        );
        assert!(
            tcp_closed_within(&mut t, Duration::from_secs(3)),
            "{io}: closed after 513"
        );
    }
}

#[test]
fn tcp_missing_content_length_gets_400_and_close() {
    for io in DRIVERS {
        let s = Sipward::start(io, "");
        let mut t = tcp_client(s.tcp);
        let msg = register("alice", "ncl", "TCP", None).replace("Content-Length: 0\r\n", "");
        tcp_write(&mut t, msg.as_bytes());
        let rs = tcp_read_messages(&mut t, 1);
        assert!(
            rs[0].starts_with("SIP/2.0 400 Missing Content-Length header\r\n"),
            "{io}: {}",
            rs[0]
        );
        assert!(tcp_closed_within(&mut t, Duration::from_secs(3)));
    }
}

#[test]
fn tcp_idle_connections_are_closed() {
    for io in DRIVERS {
        let s = Sipward::start_with(io, "", "shards = 1\ntcp_idle_timeout_s = 1");
        let mut t = tcp_client(s.tcp);
        let started = std::time::Instant::now();
        assert!(
            tcp_closed_within(&mut t, Duration::from_secs(5)),
            "{io}: idle connection closed"
        );
        assert!(
            started.elapsed() >= Duration::from_millis(900),
            "not before the idle timeout"
        );
    }
}

#[test]
fn tcp_connection_cap_per_shard() {
    for io in DRIVERS {
        let s = Sipward::start_with(io, "", "shards = 1\ntcp_max_connections = 1");
        let mut first = tcp_client(s.tcp);
        tcp_write(&mut first, register("alice", "c1", "TCP", None).as_bytes());
        assert_eq!(status(&tcp_read_messages(&mut first, 1)[0]), 401);
        let mut second = tcp_client(s.tcp);
        assert!(
            tcp_closed_within(&mut second, Duration::from_secs(3)),
            "{io}: over the cap, closed"
        );
        // The first keeps working.
        tcp_write(
            &mut first,
            register("alice", "c2", "TCP", Some("alice-token")).as_bytes(),
        );
        assert_eq!(status(&tcp_read_messages(&mut first, 1)[0]), 200);
    }
}

#[test]
fn udp_oversize_datagram_is_dropped() {
    for io in DRIVERS {
        let s = Sipward::start_with(io, "", "shards = 1\nmax_message_size = 1024");
        let c = udp_client();
        let big = register("alice", "ob", "UDP", None).replace(
            "Content-Length: 0\r\n",
            &format!("X-Pad: {}\r\nContent-Length: 0\r\n", "x".repeat(2000)),
        );
        c.send_to(big.as_bytes(), s.udp).unwrap();
        assert!(udp_silent(&c, Duration::from_millis(300)), "{io}");
        let r = udp_exchange(&c, s.udp, &register("alice", "ok", "UDP", None));
        assert_eq!(status(&r), 401);
    }
}

#[test]
fn several_shards_share_the_port() {
    for io in DRIVERS {
        let s = Sipward::start_with(io, "", "shards = 2");
        // Many source ports, so SO_REUSEPORT spreads them over both shards; all get answers.
        for i in 0..16 {
            let c = udp_client();
            let r = udp_exchange(
                &c,
                s.udp,
                &register("alice", &format!("s{i}"), "UDP", Some("alice-token")),
            );
            assert_eq!(status(&r), 200, "{io}");
        }
        for i in 0..8 {
            let mut t = tcp_client(s.tcp);
            tcp_write(
                &mut t,
                register("alice", &format!("ts{i}"), "TCP", Some("alice-token")).as_bytes(),
            );
            assert_eq!(status(&tcp_read_messages(&mut t, 1)[0]), 200);
        }
    }
}

#[test]
fn auto_io_runs_a_driver() {
    let s = Sipward::start("auto", "");
    assert!(s.io == "io_uring" || s.io == "epoll");
    if s.io == "epoll" {
        assert!(
            s.log().contains("io_uring unavailable, using epoll:"),
            "the fallback is explained"
        );
    }
    let c = udp_client();
    assert_eq!(
        status(&udp_exchange(
            &c,
            s.udp,
            &register("alice", "a", "UDP", None)
        )),
        401
    );
}

#[test]
fn logs_hold_no_tokens() {
    let s = Sipward::start("epoll", "");
    let c = udp_client();
    udp_exchange(
        &c,
        s.udp,
        &register("alice", "l1", "UDP", Some("alice-token")),
    );
    udp_exchange(
        &c,
        s.udp,
        &register("alice", "l2", "UDP", Some("never-seen-token")),
    );
    std::thread::sleep(Duration::from_millis(100));
    let log = s.log();
    assert!(
        !log.contains("alice-token") && !log.contains("never-seen-token"),
        "{log}"
    );
}
