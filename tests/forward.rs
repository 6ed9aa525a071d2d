//! Forward mode with the real binary: a plain UDP socket stands in for the SIP core, so that every
//! relayed byte can be checked; clients over UDP and TCP, under both I/O drivers.

mod common;

use std::net::{SocketAddr, UdpSocket};
use std::time::Duration;

use common::*;

struct Setup {
    sipward: Sipward,
    core: UdpSocket,
}

fn start(io: &str) -> Setup {
    start_with_cores(io, &[])
}

/// Sipward relaying to `core`; `more` are further sockets of the core, trusted too.
fn start_with_cores(io: &str, more: &[&UdpSocket]) -> Setup {
    let core = udp_client();
    let port = free_port();
    let trusted: Vec<String> = std::iter::once(&core)
        .chain(more.iter().copied())
        .map(|s| format!("\"{}\"", s.local_addr().unwrap()))
        .collect();
    let config = format!(
        "[server]\nudp = [\"127.0.0.1:{port}\"]\ntcp = [\"127.0.0.1:{port}\"]\nio = \"{io}\"\n\
         realm = \"example.com\"\nshards = 2\n[static_tokens]\nfile = \"tokens.toml\"\n\
         [forward]\nupstream = \"udp:{}\"\nflow_key = \"a test key of some length\"\n\
         trusted = [{}]\n",
        core.local_addr().unwrap(),
        trusted.join(", ")
    );
    let sipward = Sipward::launch(io, &config, &[("tokens.toml", TOKENS)]);
    Setup { sipward, core }
}

fn recv(sock: &UdpSocket) -> (String, SocketAddr) {
    let mut buf = [0u8; 65536];
    let (n, from) = sock.recv_from(&mut buf).expect("a datagram");
    (String::from_utf8(buf[..n].to_vec()).unwrap(), from)
}

fn headers<'a>(msg: &'a str, name: &str) -> Vec<&'a str> {
    msg.split("\r\n")
        .take_while(|l| !l.is_empty())
        .filter_map(|l| l.strip_prefix(name)?.strip_prefix(": "))
        .collect()
}

/// The response a core (or a UAS) sends to `req`: its Vias, From, To with a tag, Call-ID, CSeq.
fn answer(req: &str, status: &str) -> String {
    let mut text = format!("SIP/2.0 {status}\r\n");
    for v in headers(req, "Via") {
        text.push_str(&format!("Via: {v}\r\n"));
    }
    for name in ["From", "To", "Call-ID", "CSeq"] {
        let v = headers(req, name)[0];
        let v = if name == "To" && !v.contains("tag=") {
            format!("{v};tag=answer")
        } else {
            v.to_owned()
        };
        text.push_str(&format!("{name}: {v}\r\n"));
    }
    text.push_str("Content-Length: 0\r\n\r\n");
    text
}

/// An INVITE from the core to the contact registered with `path`, routed by it.
fn invite_from_core(core: &UdpSocket, path: &str, call_id: &str) -> String {
    let via = core.local_addr().unwrap();
    format!(
        "INVITE sip:alice@127.0.0.1:5999 SIP/2.0\r\nVia: SIP/2.0/UDP {via};branch=z9hG4bK-{call_id}\r\n\
         Route: {path}\r\nMax-Forwards: 69\r\nFrom: <sip:bob@example.com>;tag=b\r\nTo: <sip:alice@example.com>\r\n\
         Call-ID: {call_id}\r\nCSeq: 1 INVITE\r\nContact: <sip:bob@127.0.0.1:1>\r\nContent-Length: 0\r\n\r\n"
    )
}

#[test]
fn udp_register_and_call_through_the_core() {
    for io in DRIVERS {
        let s = start(io);
        let client = udp_client();
        let to = s.sipward.udp;
        let reg = register("alice", "f1", "UDP", Some("alice-token")).replace(
            "Content-Length",
            "P-Asserted-Identity: <sip:root@example.com>\r\nContent-Length",
        );
        client.send_to(reg.as_bytes(), to).unwrap();
        let (relayed, from) = recv(&s.core);
        assert_eq!(from, to, "{io}: relayed from sipward's listen address");
        let vias = headers(&relayed, "Via");
        assert!(
            vias[0].starts_with(&format!("SIP/2.0/UDP {to};branch=z9hG4bKsw")),
            "{relayed}"
        );
        let port = client.local_addr().unwrap().port();
        assert!(vias[1].ends_with(&format!(";received=127.0.0.1;rport={port}")));
        assert!(!relayed.contains("alice-token") && !relayed.contains("Authorization"));
        assert_eq!(
            headers(&relayed, "P-Asserted-Identity"),
            ["<sip:alice@example.com>"]
        );
        assert_eq!(headers(&relayed, "Max-Forwards"), ["69"]);
        let path = headers(&relayed, "Path")[0].to_owned();
        assert!(path.ends_with(&format!("@{to};lr>")), "{path}");

        // The core's 200 goes back to the client without sipward's Via.
        s.core
            .send_to(answer(&relayed, "200 OK").as_bytes(), to)
            .unwrap();
        let (ok, from) = recv(&client);
        assert_eq!((status(&ok), from), (200, to), "{ok}");
        assert_eq!(headers(&ok, "Via").len(), 1);

        // A bad token is answered by sipward and never reaches the core.
        let r = udp_exchange(
            &client,
            to,
            &register("alice", "f2", "UDP", Some("unknown-token")),
        );
        assert_eq!(status(&r), 401, "{r}");
        assert!(udp_silent(&s.core, Duration::from_millis(300)));

        // The core calls the registered contact through the Path: it reaches the client's address.
        s.core
            .send_to(invite_from_core(&s.core, &path, "c1").as_bytes(), to)
            .unwrap();
        let (invite, _) = recv(&client);
        assert!(
            invite.starts_with("INVITE sip:alice@127.0.0.1:5999 SIP/2.0\r\n"),
            "{invite}"
        );
        assert!(headers(&invite, "Route").is_empty());
        assert_eq!(headers(&invite, "Via").len(), 2);
        let rr = headers(&invite, "Record-Route");
        assert_eq!(rr.len(), 1, "{invite}");
        // The client answers sipward, which passes the answer to the core without its Via.
        client
            .send_to(answer(&invite, "200 OK").as_bytes(), to)
            .unwrap();
        let (ok, _) = recv(&s.core);
        assert_eq!(status(&ok), 200);
        let core = s.core.local_addr().unwrap();
        assert_eq!(
            headers(&ok, "Via"),
            [format!("SIP/2.0/UDP {core};branch=z9hG4bK-c1")]
        );

        // A Route with a forged flow gets 430 from sipward.
        let forged = path
            .replacen("<sip:A", "<sip:B", 1)
            .replacen("<sip:", "<sip:x", 1);
        s.core
            .send_to(invite_from_core(&s.core, &forged, "c2").as_bytes(), to)
            .unwrap();
        let (r, _) = recv(&s.core);
        assert_eq!(status(&r), 430, "{r}");

        // A response sipward did not send a request for is dropped.
        client
            .send_to(answer(&reg, "200 OK").as_bytes(), to)
            .unwrap();
        assert!(udp_silent(&s.core, Duration::from_millis(300)));
    }
}

#[test]
fn tcp_client_flow_across_shards() {
    for io in DRIVERS {
        let cores: Vec<UdpSocket> = (0..6).map(|_| udp_client()).collect();
        let s = start_with_cores(io, &cores.iter().collect::<Vec<_>>());
        let mut c = tcp_client(s.sipward.tcp);
        tcp_write(
            &mut c,
            register("alice", "t1", "TCP", Some("alice-token")).as_bytes(),
        );
        let (relayed, _) = recv(&s.core);
        let path = headers(&relayed, "Path")[0].to_owned();
        assert!(
            headers(&relayed, "Via")[0].contains(";sw-flow="),
            "{relayed}"
        );
        s.core
            .send_to(answer(&relayed, "200 OK").as_bytes(), s.sipward.udp)
            .unwrap();
        let ok = tcp_read_messages(&mut c, 1).remove(0);
        assert_eq!(status(&ok), 200, "{io}: {ok}");
        assert_eq!(headers(&ok, "Via").len(), 1);

        // The core's requests reach the connection whichever shard their datagram lands on: the
        // core sends from several ports, which SO_REUSEPORT spreads over the two shards.
        for (i, core) in cores.iter().enumerate() {
            let msg = invite_from_core(core, &path, &format!("tc{i}"));
            core.send_to(msg.as_bytes(), s.sipward.udp).unwrap();
            let got = tcp_read_messages(&mut c, 1).remove(0);
            assert!(got.starts_with("INVITE "), "{got}");
            assert!(got.contains(&format!("Call-ID: tc{i}")));
            // The client's answer goes back to the core socket the INVITE came from.
            tcp_write(&mut c, answer(&got, "200 OK").as_bytes());
            let (ok, _) = recv(core);
            assert_eq!(status(&ok), 200, "{ok}");
        }
        // Once the connection is gone, its flow fails.
        drop(c);
        std::thread::sleep(Duration::from_millis(200));
        s.core
            .send_to(
                invite_from_core(&s.core, &path, "gone").as_bytes(),
                s.sipward.udp,
            )
            .unwrap();
        let (r, _) = recv(&s.core);
        assert_eq!(status(&r), 430, "{r}");
    }
}

#[test]
fn tcp_upstream_carries_both_directions() {
    use std::io::Read;
    // One shard: each shard opens its own connection to the upstream, and this core reads one.
    for io in DRIVERS {
        let core = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = free_port();
        let config = format!(
            "[server]\nudp = [\"127.0.0.1:{port}\"]\ntcp = [\"127.0.0.1:{port}\"]\nio = \"{io}\"\n\
             realm = \"example.com\"\nshards = 1\n[static_tokens]\nfile = \"tokens.toml\"\n\
             [forward]\nupstream = \"tcp:{}\"\ntrusted = [\"{}\"]\n",
            core.local_addr().unwrap(),
            core.local_addr().unwrap()
        );
        let sw = Sipward::launch(io, &config, &[("tokens.toml", TOKENS)]);
        let client = udp_client();
        client
            .send_to(
                register("alice", "up1", "UDP", Some("alice-token")).as_bytes(),
                sw.udp,
            )
            .unwrap();
        let (mut conn, from) = core.accept().unwrap();
        assert_eq!(from.ip(), sw.udp.ip());
        conn.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let relayed = tcp_read_messages(&mut conn, 1).remove(0);
        assert!(
            headers(&relayed, "Via")[0].starts_with(&format!("SIP/2.0/TCP {};branch=", sw.udp)),
            "{io}: {relayed}"
        );
        let path = headers(&relayed, "Path")[0].to_owned();
        assert!(path.ends_with(";transport=tcp;lr>"), "{path}");
        // The core answers on sipward's connection.
        tcp_write(&mut conn, answer(&relayed, "200 OK").as_bytes());
        let (ok, _) = recv(&client);
        assert_eq!(status(&ok), 200, "{ok}");
        // And sends a request for the client's flow on it; the client's answer comes back on it.
        let invite = invite_from_core(&client, &path, "up2").replace("SIP/2.0/UDP", "SIP/2.0/TCP");
        tcp_write(&mut conn, invite.as_bytes());
        let (got, _) = recv(&client);
        assert!(got.starts_with("INVITE "), "{got}");
        client
            .send_to(answer(&got, "200 OK").as_bytes(), sw.udp)
            .unwrap();
        let back = tcp_read_messages(&mut conn, 1).remove(0);
        assert_eq!(status(&back), 200, "{back}");
        assert_eq!(headers(&back, "Via").len(), 1, "{back}");
        let mut rest = [0u8; 1];
        conn.set_read_timeout(Some(Duration::from_millis(100)))
            .unwrap();
        assert!(
            conn.read(&mut rest).is_err(),
            "nothing else on the connection"
        );
    }
}

#[test]
fn sigterm_stops_a_forward_mode_server() {
    // Found running forward mode by hand: the cross-shard lane task was awaited with the receive
    // loops, never ended, and SIGTERM left the process running for ever.
    for io in DRIVERS {
        for upstream in ["udp", "tcp"] {
            let core_udp = udp_client();
            let core_tcp = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            let core = match upstream {
                "udp" => core_udp.local_addr().unwrap(),
                _ => core_tcp.local_addr().unwrap(),
            };
            let port = free_port();
            let config = format!(
                "[server]\nudp = [\"127.0.0.1:{port}\"]\ntcp = [\"127.0.0.1:{port}\"]\nio = \"{io}\"\n\
                 realm = \"example.com\"\nshards = 2\nshutdown_grace_s = 5\n\
                 [static_tokens]\nfile = \"tokens.toml\"\n\
                 [forward]\nupstream = \"{upstream}:{core}\"\nflow_key = \"a test key of some length\"\n\
                 trusted = [\"{core}\"]\n"
            );
            let mut sw = Sipward::launch(io, &config, &[("tokens.toml", TOKENS)]);
            // One request relayed, so the upstream side (and over TCP its connection) is in use.
            let client = udp_client();
            client
                .send_to(
                    register("alice", "stop1", "UDP", Some("alice-token")).as_bytes(),
                    sw.udp,
                )
                .unwrap();
            let _conn = if upstream == "tcp" {
                core_tcp.set_nonblocking(true).unwrap();
                let deadline = std::time::Instant::now() + Duration::from_secs(5);
                loop {
                    match core_tcp.accept() {
                        Ok((c, _)) => break Some(c),
                        Err(_) if std::time::Instant::now() < deadline => {
                            std::thread::sleep(Duration::from_millis(10))
                        }
                        Err(e) => {
                            panic!("{io}: sipward did not connect upstream: {e}\n{}", sw.log())
                        }
                    }
                }
            } else {
                let (relayed, _) = recv(&core_udp);
                assert!(relayed.starts_with("REGISTER "), "{relayed}");
                None
            };
            sw.signal(libc::SIGTERM);
            assert_eq!(
                sw.wait_exit(Duration::from_secs(10)),
                Some(0),
                "{io} {upstream}: {}",
                sw.log()
            );
        }
    }
}
