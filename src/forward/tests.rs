//! The forward-mode rewrites as pure functions over bytes.

use super::*;
use crate::sip::scan;

const KEY: &str = "0123456789abcdef-test";

fn fwd() -> Forwarder {
    let raw: RawForward = toml::from_str(&format!(
        "upstream = \"udp:192.0.2.100:5070\"\nflow_key = \"{KEY}\"\nadvertise = \"192.0.2.1:5060\"\n"
    ))
    .unwrap();
    let cfg = raw
        .validate(
            std::path::Path::new("."),
            Some("0.0.0.0:5060".parse().unwrap()),
        )
        .unwrap();
    Forwarder::new(&cfg, (7, 9))
}

fn client() -> SocketAddr {
    "198.51.100.7:40000".parse().unwrap()
}

/// The flow of a client connected over TCP to `shard`'s connection `conn`.
fn tcp_client(shard: u16, conn: u64) -> Flow {
    Flow::Tcp {
        shard,
        conn,
        peer: client(),
    }
}

fn udp_client() -> Relay<'static> {
    Relay {
        arrival: Flow::Udp(client()),
        identity: None,
    }
}

fn register(extra: &str) -> String {
    format!(
        "REGISTER sip:example.com SIP/2.0\r\nVia: SIP/2.0/UDP 10.0.0.7:5062;branch=z9hG4bKr1;rport\r\n\
Max-Forwards: 70\r\nFrom: <sip:alice@example.com>;tag=f1\r\nTo: <sip:alice@example.com>\r\n\
Call-ID: reg-1\r\nCSeq: 1 REGISTER\r\nContact: <sip:alice@10.0.0.7:5062>\r\n{extra}\
Content-Length: 0\r\n\r\n"
    )
}

fn invite(extra: &str, branch: &str, method: &str) -> String {
    format!(
        "{method} sip:bob@example.com SIP/2.0\r\nVia: SIP/2.0/UDP 10.0.0.7:5062;branch={branch}\r\n\
Max-Forwards: 5\r\nFrom: <sip:alice@example.com>;tag=f1\r\nTo: <sip:bob@example.com>\r\n\
Call-ID: call-1\r\nCSeq: 1 {method}\r\n{extra}Content-Type: application/sdp\r\nContent-Length: 4\r\n\r\nv=0\n"
    )
}

fn relay(f: &Forwarder, text: &str, r: Relay<'_>) -> (Result<Dest, Refusal>, String) {
    let msg = scan(text.as_bytes()).unwrap();
    let mut out = Vec::new();
    let res = f.relay_from_client(&msg, r, &mut out);
    (res, String::from_utf8(out).unwrap())
}

fn header<'a>(text: &'a str, name: &str) -> Vec<&'a str> {
    text.split("\r\n")
        .filter_map(|l| l.strip_prefix(name)?.strip_prefix(": "))
        .collect()
}

#[test]
fn register_is_relayed_with_via_path_identity_and_without_the_token() {
    let f = fwd();
    let aor = Aor::from_header(b"<sip:alice@example.com>").unwrap();
    let text = register(
        "Authorization: Bearer secret-token\r\nP-Asserted-Identity: <sip:boss@example.com>\r\n",
    );
    let (res, out) = relay(
        &f,
        &text,
        Relay {
            arrival: Flow::Udp(client()),
            identity: Some(aor),
        },
    );
    assert_eq!(res, Ok(Dest::Upstream));
    assert!(
        out.starts_with(
            "REGISTER sip:example.com SIP/2.0\r\nVia: SIP/2.0/UDP 192.0.2.1:5060;branch=z9hG4bKsw"
        ),
        "{out}"
    );
    let vias = header(&out, "Via");
    assert_eq!(vias.len(), 2);
    assert_eq!(
        vias[1],
        "SIP/2.0/UDP 10.0.0.7:5062;branch=z9hG4bKr1;received=198.51.100.7;rport=40000"
    );
    assert!(!out.contains("secret-token"));
    assert!(!out.contains("Authorization"));
    assert_eq!(
        header(&out, "P-Asserted-Identity"),
        ["<sip:alice@example.com>"]
    );
    assert_eq!(header(&out, "Max-Forwards"), ["69"]);
    let path = header(&out, "Path");
    assert_eq!(path.len(), 1);
    let token = path[0]
        .strip_prefix("<sip:")
        .and_then(|p| p.strip_suffix("@192.0.2.1:5060;lr>"))
        .unwrap();
    assert_eq!(f.key.verify(token.as_bytes()), Ok(Flow::Udp(client())));
    assert!(header(&out, "Record-Route").is_empty());
    assert!(out.ends_with("Content-Length: 0\r\n\r\n"));
    // What was relayed scans as a request again, with the same Call-ID.
    let again = scan(out.as_bytes()).unwrap();
    assert_eq!(again.first(HeaderKind::CallId), Some(&b"reg-1"[..]));
}

#[test]
fn tokens_stay_when_strip_token_is_off_but_client_identity_never_does() {
    let raw: RawForward = toml::from_str(&format!(
        "upstream = \"udp:192.0.2.100:5070\"\nflow_key = \"{KEY}\"\nadvertise = \"192.0.2.1:5060\"\n\
         strip_token = false\nidentity_header = \"X-Identity\"\n"
    ))
    .unwrap();
    let f = Forwarder::new(
        &raw.validate(
            std::path::Path::new("."),
            Some("0.0.0.0:5060".parse().unwrap()),
        )
        .unwrap(),
        (1, 1),
    );
    let (_, out) = relay(
        &f,
        &register("Authorization: Bearer tok\r\nx-identity: <sip:boss@example.com>\r\n"),
        udp_client(),
    );
    assert_eq!(header(&out, "Authorization"), ["Bearer tok"]);
    assert!(!out.contains("boss"));
}

#[test]
fn invite_gets_record_route_and_keeps_its_body() {
    let f = fwd();
    let (res, out) = relay(&f, &invite("", "z9hG4bKi1", "INVITE"), udp_client());
    assert_eq!(res, Ok(Dest::Upstream));
    assert_eq!(header(&out, "Max-Forwards"), ["4"]);
    let rr = header(&out, "Record-Route");
    assert_eq!(rr.len(), 1);
    assert!(rr[0].ends_with("@192.0.2.1:5060;lr>"));
    assert!(header(&out, "Path").is_empty());
    assert!(out.ends_with("Content-Length: 4\r\n\r\nv=0\n"));
    // In-dialog requests create nothing.
    let (_, out) = relay(
        &f,
        &invite("", "z9hG4bKi2", "INVITE").replace(
            "To: <sip:bob@example.com>",
            "To: <sip:bob@example.com>;tag=t",
        ),
        udp_client(),
    );
    assert!(header(&out, "Record-Route").is_empty());
}

fn our_branch(out: &str) -> String {
    header(out, "Via")[0]
        .split(";branch=")
        .nth(1)
        .unwrap()
        .split(';')
        .next()
        .unwrap()
        .to_owned()
}

#[test]
fn branch_is_stable_for_retransmissions_cancel_and_ack() {
    let f = fwd();
    let (_, first) = relay(&f, &invite("", "z9hG4bKi1", "INVITE"), udp_client());
    let (_, again) = relay(&f, &invite("", "z9hG4bKi1", "INVITE"), udp_client());
    let (_, cancel) = relay(&f, &invite("", "z9hG4bKi1", "CANCEL"), udp_client());
    let (_, ack) = relay(&f, &invite("", "z9hG4bKi1", "ACK"), udp_client());
    let (_, other) = relay(&f, &invite("", "z9hG4bKi2", "INVITE"), udp_client());
    let b = our_branch(&first);
    assert!(b.starts_with("z9hG4bKsw") && b.len() == 9 + 32, "{b}");
    assert_eq!(our_branch(&again), b);
    assert_eq!(our_branch(&cancel), b);
    assert_eq!(our_branch(&ack), b);
    assert_ne!(our_branch(&other), b);
    // RFC 2543 branches: the request's identity without the method decides.
    let (_, old) = relay(&f, &invite("", "1", "INVITE"), udp_client());
    let (_, old_cancel) = relay(&f, &invite("", "1", "CANCEL"), udp_client());
    assert_eq!(our_branch(&old), our_branch(&old_cancel));
    assert_ne!(our_branch(&old), b);
}

#[test]
fn max_forwards_zero_is_refused_and_absent_becomes_seventy() {
    let f = fwd();
    let text = invite("", "z9hG4bKi1", "INVITE").replace("Max-Forwards: 5", "Max-Forwards: 0");
    assert_eq!(
        relay(&f, &text, udp_client()).0,
        Err(Refusal::Reply(TOO_MANY_HOPS))
    );
    let text = invite("", "z9hG4bKi1", "INVITE").replace("Max-Forwards: 5\r\n", "");
    let (_, out) = relay(&f, &text, udp_client());
    assert_eq!(header(&out, "Max-Forwards"), ["70"]);
}

#[test]
fn tcp_client_flow_goes_in_the_via() {
    let f = fwd();
    let flow = tcp_client(2, 41);
    let (_, out) = relay(
        &f,
        &invite("", "z9hG4bKi1", "INVITE"),
        Relay {
            arrival: flow,
            identity: None,
        },
    );
    let via = header(&out, "Via")[0];
    let token = via.split(";sw-flow=").nth(1).unwrap();
    assert_eq!(f.key.verify(token.as_bytes()), Ok(flow));
}

#[test]
fn a_route_to_sipward_is_popped_others_kept() {
    let f = fwd();
    let (_, out) = relay(
        &f,
        &invite(
            "Route: <sip:192.0.2.1:5060;lr>, <sip:core.example.com;lr>\r\n",
            "z9hG4bKi1",
            "BYE",
        ),
        udp_client(),
    );
    assert_eq!(header(&out, "Route"), ["<sip:core.example.com;lr>"]);
    let (_, out) = relay(
        &f,
        &invite("Route: <sip:core.example.com;lr>\r\n", "z9hG4bKi1", "BYE"),
        udp_client(),
    );
    assert_eq!(header(&out, "Route"), ["<sip:core.example.com;lr>"]);
}

fn response_to(relayed: &str, code: &str) -> String {
    // A core answers with the Vias of what it got, top first.
    let msg = scan(relayed.as_bytes()).unwrap();
    let mut text = format!("SIP/2.0 {code}\r\n");
    for v in msg.vias() {
        text.push_str(&format!("Via: {}\r\n", String::from_utf8_lossy(v)));
    }
    text.push_str(
        "From: <sip:alice@example.com>;tag=f1\r\nTo: <sip:alice@example.com>;tag=t\r\n\
Call-ID: reg-1\r\nCSeq: 1 REGISTER\r\nContent-Length: 0\r\n\r\n",
    );
    text
}

#[test]
fn response_loses_our_via_and_goes_to_received_rport() {
    let f = fwd();
    let (_, relayed) = relay(&f, &register(""), udp_client());
    let resp = response_to(&relayed, "200 OK");
    let msg = scan(resp.as_bytes()).unwrap();
    let mut out = Vec::new();
    assert_eq!(
        f.relay_response(&msg, &mut out),
        Ok(Dest::Flow(Flow::Udp(client())))
    );
    let out = String::from_utf8(out).unwrap();
    assert!(out.starts_with("SIP/2.0 200 OK\r\nVia: SIP/2.0/UDP 10.0.0.7:5062;branch=z9hG4bKr1;received=198.51.100.7;rport=40000\r\nFrom:"), "{out}");
    assert_eq!(header(&out, "Via").len(), 1);
}

#[test]
fn response_over_tcp_goes_to_the_flow_in_our_via() {
    let f = fwd();
    let flow = tcp_client(1, 9);
    let (_, relayed) = relay(
        &f,
        &register(""),
        Relay {
            arrival: flow,
            identity: None,
        },
    );
    let resp = response_to(&relayed, "200 OK");
    let mut out = Vec::new();
    assert_eq!(
        f.relay_response(&scan(resp.as_bytes()).unwrap(), &mut out),
        Ok(Dest::Flow(flow))
    );
    // A forged flow in a Via that looks like ours goes nowhere.
    let forged = resp.replace(";sw-flow=", ";sw-flow=A");
    assert_eq!(
        f.relay_response(&scan(forged.as_bytes()).unwrap(), &mut out),
        Err(Refusal::Unroutable)
    );
}

#[test]
fn response_without_our_via_is_refused() {
    let f = fwd();
    for resp in [
        response_to(&register(""), "200 OK"),
        "SIP/2.0 200 OK\r\nVia: SIP/2.0/UDP 192.0.2.1:5060;branch=z9hG4bKnotours\r\nVia: SIP/2.0/UDP 10.0.0.7\r\n\r\n".to_owned(),
        "SIP/2.0 200 OK\r\n\r\n".to_owned(),
    ] {
        let mut out = Vec::new();
        assert_eq!(
            f.relay_response(&scan(resp.as_bytes()).unwrap(), &mut out),
            Err(Refusal::NotOurVia),
            "{resp}"
        );
    }
    // Ours, but nothing below it.
    let resp = "SIP/2.0 200 OK\r\nVia: SIP/2.0/UDP 192.0.2.1:5060;branch=z9hG4bKswx\r\n\r\n";
    assert_eq!(
        f.relay_response(&scan(resp.as_bytes()).unwrap(), &mut Vec::new()),
        Err(Refusal::Unroutable)
    );
}

fn from_core(route: &str, method: &str) -> String {
    format!(
        "{method} sip:bob@10.0.0.8:5064 SIP/2.0\r\nVia: SIP/2.0/UDP 192.0.2.100:5070;branch=z9hG4bKk1\r\n\
Via: SIP/2.0/UDP 192.0.2.1:5060;branch=z9hG4bKswa\r\n{route}Record-Route: <sip:192.0.2.100:5070;lr>\r\n\
Max-Forwards: 69\r\nFrom: <sip:alice@example.com>;tag=f1\r\nTo: <sip:bob@example.com>\r\n\
Call-ID: call-1\r\nCSeq: 1 {method}\r\nP-Asserted-Identity: <sip:alice@example.com>\r\nContent-Length: 0\r\n\r\n"
    )
}

fn path_for(f: &Forwarder, flow: &Flow) -> String {
    let mut t = Vec::new();
    f.key.put(flow, &mut t);
    format!("<sip:{}@192.0.2.1:5060;lr>", String::from_utf8(t).unwrap())
}

#[test]
fn core_request_follows_the_flow_token_of_its_route() {
    let f = fwd();
    let uas: SocketAddr = "203.0.113.5:5064".parse().unwrap();
    let flow = Flow::Udp(uas);
    let text = from_core(&format!("Route: {}\r\n", path_for(&f, &flow)), "INVITE");
    let mut out = Vec::new();
    assert_eq!(
        f.relay_from_core(&scan(text.as_bytes()).unwrap(), &mut out),
        Ok(Dest::Flow(flow))
    );
    let out = String::from_utf8(out).unwrap();
    assert!(header(&out, "Route").is_empty(), "{out}");
    let vias = header(&out, "Via");
    assert_eq!(vias.len(), 3);
    assert!(vias[0].starts_with("SIP/2.0/UDP 192.0.2.1:5060;branch=z9hG4bKsw"));
    assert!(!vias[0].contains("sw-flow"));
    // Identity asserted by the core stays.
    assert_eq!(header(&out, "P-Asserted-Identity").len(), 1);
    // Our Record-Route on top of the core's, naming the callee's flow.
    let rr = header(&out, "Record-Route");
    assert_eq!(
        rr,
        [path_for(&f, &flow).as_str(), "<sip:192.0.2.100:5070;lr>"]
    );
    assert_eq!(header(&out, "Max-Forwards"), ["68"]);

    // The callee answers; the response goes back to the core's Via.
    let resp = response_to(&out, "180 Ringing");
    let mut back = Vec::new();
    assert_eq!(
        f.relay_response(&scan(resp.as_bytes()).unwrap(), &mut back),
        Ok(Dest::Flow(Flow::Udp("192.0.2.100:5070".parse().unwrap())))
    );
}

#[test]
fn core_request_with_forged_or_missing_flow() {
    let f = fwd();
    let other = Forwarder::new(
        &toml::from_str::<RawForward>(
            "upstream = \"udp:192.0.2.100:5070\"\nflow_key = \"another-key-0123456\"\nadvertise = \"192.0.2.1:5060\"\n",
        )
        .unwrap()
        .validate(std::path::Path::new("."), Some("0.0.0.0:5060".parse().unwrap()))
        .unwrap(),
        (7, 9),
    );
    let flow = Flow::Udp("203.0.113.5:5064".parse().unwrap());
    let forged = from_core(&format!("Route: {}\r\n", path_for(&other, &flow)), "INVITE");
    let mut out = Vec::new();
    assert_eq!(
        f.relay_from_core(&scan(forged.as_bytes()).unwrap(), &mut out),
        Err(Refusal::Reply(FLOW_FAILED))
    );
    let no_token = from_core("Route: <sip:192.0.2.1:5060;lr>\r\n", "INVITE");
    assert_eq!(
        f.relay_from_core(&scan(no_token.as_bytes()).unwrap(), &mut out),
        Err(Refusal::Reply(FLOW_FAILED))
    );
    for none in [
        from_core("", "INVITE"),
        from_core("Route: <sip:elsewhere.example.com;lr>\r\n", "INVITE"),
    ] {
        assert_eq!(
            f.relay_from_core(&scan(none.as_bytes()).unwrap(), &mut out),
            Err(Refusal::Reply(NO_ROUTE))
        );
    }
    // ACKs are never answered.
    let ack = from_core("", "ACK");
    assert_eq!(
        f.relay_from_core(&scan(ack.as_bytes()).unwrap(), &mut out),
        Err(Refusal::Unroutable)
    );
}

#[test]
fn trusted_sources_are_the_upstream_by_default() {
    let f = fwd();
    assert!(f.is_trusted("192.0.2.100:5070".parse().unwrap()));
    assert!(!f.is_trusted("192.0.2.100:5071".parse().unwrap()));
    assert!(!f.is_trusted(client()));
}

#[test]
fn via_destinations() {
    let d = |v: &str| via_destination(v.as_bytes());
    let udp = |a: &str| Some(Dest::Flow(Flow::Udp(a.parse().unwrap())));
    assert_eq!(d("SIP/2.0/UDP 10.0.0.1"), udp("10.0.0.1:5060"));
    assert_eq!(
        d("SIP/2.0/UDP 10.0.0.1:5070;branch=x"),
        udp("10.0.0.1:5070")
    );
    assert_eq!(
        d("SIP/2.0/UDP h.example;received=10.0.0.2;rport=7"),
        udp("10.0.0.2:7")
    );
    assert_eq!(d("SIP/2.0/UDP [::1]:5062"), udp("[::1]:5062"));
    assert_eq!(d("SIP/2.0/UDP h.example"), None);
    assert_eq!(d("SIP/2.0/TCP 10.0.0.1"), Some(Dest::Upstream));
    assert_eq!(d("garbage"), None);
}

mod engine {
    //! Forward mode through [`crate::auth::Engine`]: the same verdicts as respond mode, relayed when
    //! they pass.
    use super::*;
    use crate::auth::{Begin, Done, Engine, Lookup, Policy, TokenFacts};

    const NOW: u64 = 1_800_000_000;

    fn engine() -> Engine {
        Engine::new(Policy::default(), 200, (1, 2)).with_forward(Some(fwd()))
    }

    /// Both halves, as the slow path runs them; the shard's own path (`begin_then` lending the
    /// request to `finish_ready`) must give the same, which every test here then checks too.
    fn run(e: &Engine, text: &str, from: SocketAddr, facts: Option<&TokenFacts>) -> (Done, String) {
        run_on(e, text, Flow::Udp(from), facts)
    }

    fn run_on(e: &Engine, text: &str, arrival: Flow, facts: Option<&TokenFacts>) -> (Done, String) {
        let lookup = facts.map_or(Lookup::NoSource, Lookup::Found);
        let mut out = Vec::new();
        let done = match e.begin_on(text.as_bytes(), arrival, &mut out) {
            Begin::Done(d) => d,
            Begin::NeedToken(p) => e.finish_on(&p, arrival, lookup, NOW, &mut out),
        };
        let mut lent = Vec::new();
        let lent_done = e
            .begin_then(text.as_bytes(), arrival, &mut lent, |ready, out| {
                e.finish_ready(ready, arrival, lookup, NOW, out)
            })
            .unwrap_or_else(|done| done);
        assert_eq!((lent_done, &lent), (done, &out), "begin_then differs");
        (done, String::from_utf8(out).unwrap())
    }

    #[test]
    fn a_tcp_client_is_relayed_with_its_flow() {
        let e = engine();
        let arrival = tcp_client(1, 7);
        let (done, out) = run_on(
            &e,
            &register("Authorization: Bearer tok\r\n"),
            arrival,
            Some(&alice()),
        );
        assert_eq!(done, Done::Forwarded(Dest::Upstream));
        assert!(out.starts_with("REGISTER "), "{out}");
    }

    fn alice() -> TokenFacts {
        TokenFacts {
            active: true,
            username: Some("alice".into()),
            exp: Some(NOW + 600),
            ..TokenFacts::default()
        }
    }

    #[test]
    fn passing_requests_are_relayed_failing_ones_answered() {
        let e = engine();
        let (done, out) = run(
            &e,
            &register("Authorization: Bearer tok\r\n"),
            client(),
            Some(&alice()),
        );
        assert_eq!(done, Done::Forwarded(Dest::Upstream));
        assert!(out.starts_with("REGISTER "), "{out}");
        assert_eq!(
            header(&out, "P-Asserted-Identity"),
            ["<sip:alice@example.com>"]
        );

        let (done, out) = run(
            &e,
            &register("Authorization: Bearer tok\r\n"),
            client(),
            Some(&TokenFacts::inactive()),
        );
        assert!(matches!(done, Done::Replied { code: 401, .. }), "{done:?}");
        assert!(out.contains("error=\"invalid_token\""));

        // Methods that need no token pass without an asserted identity.
        let (done, out) = run(&e, &invite("", "z9hG4bKo", "OPTIONS"), client(), None);
        assert_eq!(done, Done::Forwarded(Dest::Upstream));
        assert!(header(&out, "P-Asserted-Identity").is_empty());

        // The same request from the core is not authenticated: it has no route to a flow here.
        let core: SocketAddr = "192.0.2.100:5070".parse().unwrap();
        let (done, _) = run(&e, &register(""), core, None);
        assert!(matches!(done, Done::Replied { code: 404, .. }), "{done:?}");

        // A response that is not for sipward is dropped.
        let (done, _) = run(&e, &response_to(&register(""), "200 OK"), core, None);
        assert_eq!(done, Done::Dropped(crate::auth::DropReason::NotOurVia));

        // A client's response with sipward's Via on top goes only to the core: one whose next Via
        // names another address (a reflection attempt) is dropped.
        let (_, relayed) = relay(&fwd(), &register(""), udp_client());
        let to_victim = response_to(&relayed, "200 OK");
        let (done, _) = run(&e, &to_victim, client(), None);
        assert_eq!(done, Done::Dropped(crate::auth::DropReason::Unroutable));
        let (done, _) = run(&e, &to_victim, core, None);
        assert_eq!(done, Done::Forwarded(Dest::Flow(Flow::Udp(client()))));
    }

    #[test]
    fn the_ack_of_sipwards_own_challenge_stays_here() {
        let e = engine();
        let (done, out) = run(&e, &invite("", "z9hG4bKc", "INVITE"), client(), None);
        assert!(matches!(done, Done::Replied { code: 401, .. }));
        let to = header(&out, "To")[0].to_owned();
        let ack = invite("", "z9hG4bKc", "ACK")
            .replace("To: <sip:bob@example.com>", &format!("To: {to}"));
        assert_eq!(run(&e, &ack, client(), None).0, Done::Silent);
        // An ACK for a response of the core (another tag) goes on.
        let other = invite("", "z9hG4bKc", "ACK").replace(
            "To: <sip:bob@example.com>",
            "To: <sip:bob@example.com>;tag=core",
        );
        assert_eq!(
            run(&e, &other, client(), None).0,
            Done::Forwarded(Dest::Upstream)
        );
    }
}
