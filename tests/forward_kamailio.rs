//! Forward mode in front of a real SIP core: Kamailio (Debian package, installed by
//! scripts/test.sh) as registrar and proxy, which accepts requests from sipward's address only, and
//! SIPp as the clients. A UAC registers through sipward; a bad token never reaches Kamailio; a UAS
//! registers, then a UAC calls it: INVITE through sipward to Kamailio, back through sipward along
//! the Path to the UAS, then 200, ACK and BYE. Client sides over UDP and over TCP; sipward's upstream
//! over UDP and over TCP (Kamailio then on 127.0.0.2, so that its own connections to sipward, which
//! come from any port, are told apart from the clients' on 127.0.0.1).

mod common;

use std::io::{BufRead, BufReader};
use std::net::{SocketAddr, UdpSocket};
use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::*;

/// Registrar (usrloc in memory, Path stored) and record-routing proxy; requests from anywhere but
/// sipward are refused. Each received request and each stored binding is logged for the test.
/// Over UDP sipward sends from its listen port; over TCP from any port of its address.
fn kamailio_cfg(upstream: Upstream, kamailio: u16, sipward: u16) -> String {
    let (transport_options, listen, source_check) = match upstream {
        Upstream::Udp => (
            "disable_tcp=yes",
            format!("udp:127.0.0.1:{kamailio}"),
            format!("$si != \"127.0.0.1\" || $sp != {sipward}"),
        ),
        Upstream::Tcp => (
            "tcp_children=1",
            format!("tcp:127.0.0.2:{kamailio}"),
            "$si != \"127.0.0.1\"".to_owned(),
        ),
    };
    format!(
        r#"#!KAMAILIO
debug=2
log_stderror=yes
children=1
{transport_options}
auto_aliases=no
listen={listen}
mpath="/usr/lib/x86_64-linux-gnu/kamailio/modules/"
loadmodule "tm.so"
loadmodule "sl.so"
loadmodule "rr.so"
loadmodule "pv.so"
loadmodule "maxfwd.so"
loadmodule "textops.so"
loadmodule "siputils.so"
loadmodule "xlog.so"
loadmodule "usrloc.so"
loadmodule "registrar.so"
loadmodule "path.so"
modparam("registrar", "use_path", 1)
modparam("registrar", "path_mode", 0)
modparam("usrloc", "db_mode", 0)

request_route {{
    xlog("L_NOTICE", "KAM-RECV $rm $ci from $si:$sp\n");
    if ({source_check}) {{
        sl_send_reply("403", "Only sipward may send here");
        exit;
    }}
    if (!mf_process_maxfwd_header("10")) {{ sl_send_reply("483", "Too Many Hops"); exit; }}
    if (has_totag()) {{
        if (loose_route()) {{ t_relay(); exit; }}
        if (is_method("ACK") && t_check_trans()) {{ t_relay(); }}
        exit;
    }}
    if (is_method("CANCEL")) {{ if (t_check_trans()) {{ t_relay(); }} exit; }}
    if (is_method("REGISTER")) {{
        if (!save("location")) {{ sl_reply_error(); exit; }}
        if (reg_fetch_contacts("location", "$tu", "reg")) {{
            xlog("L_NOTICE", "KAM-LOCATION $tU path=$(ulc(reg=>path)) contact=$(ulc(reg=>addr))\n");
        }}
        exit;
    }}
    if (!is_present_hf("P-Asserted-Identity")) {{ sl_send_reply("403", "No asserted identity"); exit; }}
    xlog("L_NOTICE", "KAM-PAI $hdr(P-Asserted-Identity)\n");
    record_route();
    if (!lookup("location")) {{ sl_send_reply("404", "Not Found"); exit; }}
    t_relay();
}}
"#
    )
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Upstream {
    Udp,
    Tcp,
}

struct Kamailio {
    child: Child,
    log: Arc<Mutex<String>>,
    _dir: tempfile::TempDir,
}

impl Kamailio {
    fn start(upstream: Upstream, port: u16, sipward: u16) -> Kamailio {
        let dir = tempfile::tempdir().unwrap();
        let cfg = dir.path().join("kamailio.cfg");
        std::fs::write(&cfg, kamailio_cfg(upstream, port, sipward)).unwrap();
        let mut child = Command::new("kamailio")
            .arg("-f")
            .arg(&cfg)
            .args(["-DD", "-E", "-Y"])
            .arg(dir.path())
            .arg("-w")
            .arg(dir.path())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("kamailio runs (Debian package kamailio; scripts/test.sh installs it)");
        let log = Arc::new(Mutex::new(String::new()));
        let sink = log.clone();
        let stderr = child.stderr.take().unwrap();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                let mut l = sink.lock().unwrap();
                l.push_str(&line);
                l.push('\n');
            }
        });
        let k = Kamailio {
            child,
            log,
            _dir: dir,
        };
        if upstream == Upstream::Tcp {
            let deadline = Instant::now() + Duration::from_secs(15);
            while std::net::TcpStream::connect(("127.0.0.2", port)).is_err() {
                assert!(
                    Instant::now() < deadline,
                    "kamailio did not start:\n{}",
                    k.log()
                );
                std::thread::sleep(Duration::from_millis(50));
            }
            return k;
        }
        // Ready once its UDP socket answers: an OPTIONS from a stranger gets the 403.
        let probe = UdpSocket::bind("127.0.0.1:0").unwrap();
        probe
            .set_read_timeout(Some(Duration::from_millis(200)))
            .unwrap();
        let options = "OPTIONS sip:k@127.0.0.1 SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.1:9;branch=z9hG4bKprobe;rport\r\n\
            From: <sip:p@x>;tag=1\r\nTo: <sip:k@x>\r\nCall-ID: probe\r\nCSeq: 1 OPTIONS\r\nContent-Length: 0\r\n\r\n";
        let deadline = Instant::now() + Duration::from_secs(15);
        let mut buf = [0u8; 2048];
        loop {
            let _ = probe.send_to(options.as_bytes(), ("127.0.0.1", port));
            if let Ok(n) = probe.recv(&mut buf) {
                assert!(
                    buf[..n].starts_with(b"SIP/2.0 403"),
                    "kamailio refuses strangers"
                );
                break;
            }
            assert!(
                Instant::now() < deadline,
                "kamailio did not start:\n{}",
                k.log()
            );
        }
        k
    }

    fn log(&self) -> String {
        self.log.lock().unwrap().clone()
    }

    /// The first log line containing `needle`, waiting for it a little: Kamailio logs after it
    /// answered, so the client may be done before the line is written.
    fn wait_for_line(&self, needle: &str) -> Option<String> {
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            if let Some(l) = self.log().lines().find(|l| l.contains(needle)) {
                return Some(l.to_owned());
            }
            if Instant::now() > deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Kamailio {
    fn drop(&mut self) {
        // SIGTERM lets the main process stop the workers it forked; SIGKILL would orphan them.
        let pid = self.child.id() as libc::pid_t;
        // SAFETY: signalling a child process this test started and has not reaped yet.
        unsafe {
            libc::kill(pid, libc::SIGTERM);
        }
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

struct Setup {
    kamailio: Kamailio,
    sipward: Sipward,
    dir: tempfile::TempDir,
}

fn start(io: &str, upstream: Upstream) -> Setup {
    let port = free_port();
    let kport = loop {
        let p = free_port();
        if p != port {
            break p;
        }
    };
    let kamailio = Kamailio::start(upstream, kport, port);
    let up = match upstream {
        Upstream::Udp => format!("udp:127.0.0.1:{kport}"),
        Upstream::Tcp => format!("tcp:127.0.0.2:{kport}"),
    };
    let config = format!(
        "[server]\nudp = [\"127.0.0.1:{port}\"]\ntcp = [\"127.0.0.1:{port}\"]\nio = \"{io}\"\n\
         shards = 2\n[static_tokens]\nfile = \"tokens.toml\"\n\
         [forward]\nupstream = \"{up}\"\nflow_key = \"kamailio test flow key\"\n"
    );
    let tokens = std::fs::read_to_string(repo_path("examples/tokens.toml")).unwrap();
    let sipward = Sipward::launch(io, &config, &[("tokens.toml", &tokens)]);
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("bob.csv"),
        "SEQUENTIAL\nbob;example.com;bob-token-41d2e8\n",
    )
    .unwrap();
    Setup {
        kamailio,
        sipward,
        dir,
    }
}

fn sipp(dir: &Path, scenario: &str, inf: &Path, transport: &str, to: SocketAddr) -> Command {
    let mut c = Command::new("sipp");
    c.current_dir(dir)
        .args(["-sf", repo_path(scenario).to_str().unwrap()])
        .arg("-inf")
        .arg(inf)
        .args([
            "-m",
            "1",
            "-t",
            transport,
            "-i",
            "127.0.0.1",
            "-timeout",
            "15s",
            "-timeout_error",
            "-nostdin",
        ])
        .arg(to.to_string());
    c
}

fn check(what: &str, out: &Output, s: &Setup) {
    assert!(
        out.status.success(),
        "{what} exited {:?}\n{}\n{}\nsipward log:\n{}\nkamailio log:\n{}",
        out.status.code(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
        s.sipward.log(),
        s.kamailio.log()
    );
}

fn lines_with(log: &str, needle: &str) -> usize {
    log.lines().filter(|l| l.contains(needle)).count()
}

fn register_and_call(io: &str, transport: &str, upstream: Upstream) {
    let s = start(io, upstream);
    let to = if transport == "t1" {
        s.sipward.tcp
    } else {
        s.sipward.udp
    };
    let users = repo_path("sipp_scenarios/users.csv");

    // A UAC registers through sipward; Kamailio's location table holds the contact with the Path.
    let out = sipp(
        s.dir.path(),
        "sipp_scenarios/register_bearer.xml",
        &users,
        transport,
        to,
    )
    .output()
    .unwrap();
    check("register", &out, &s);
    let stored = s
        .kamailio
        .wait_for_line("KAM-LOCATION alice ")
        .unwrap_or_else(|| {
            panic!(
                "{io} {transport}: no binding for alice:\n{}",
                s.kamailio.log()
            )
        });
    assert!(
        stored.contains(&format!("@{}", s.sipward.udp)) && stored.contains(";lr>"),
        "{io} {transport}: the binding's Path names sipward: {stored}"
    );

    // A bad token is answered by sipward and never reaches Kamailio.
    let before = lines_with(&s.kamailio.log(), "KAM-RECV REGISTER");
    let out = sipp(
        s.dir.path(),
        "sipp_scenarios/register_invalid_token.xml",
        &users,
        transport,
        to,
    )
    .output()
    .unwrap();
    check("invalid token", &out, &s);
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(
        lines_with(&s.kamailio.log(), "KAM-RECV REGISTER"),
        before,
        "{io} {transport}: a REGISTER with a bad token reached Kamailio"
    );

    // The UAS (bob) registers, then alice calls bob: INVITE to Kamailio, back along the Path.
    let cid = ["-cid_str", "fwd-%u-call"];
    let mut uas = sipp(
        s.dir.path(),
        "sipp_scenarios/uas_register_forward.xml",
        &s.dir.path().join("bob.csv"),
        transport,
        to,
    );
    let uas = uas
        .args(cid)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    assert!(
        s.kamailio.wait_for_line("KAM-LOCATION bob ").is_some(),
        "{io} {transport}: bob never registered:\n{}",
        s.kamailio.log()
    );
    let uac = sipp(
        s.dir.path(),
        "sipp_scenarios/invite_bearer_uac_forward.xml",
        &users,
        transport,
        to,
    )
    .args(cid)
    .args(["-s", "bob"])
    .output()
    .unwrap();
    let uas = uas.wait_with_output().unwrap();
    check("caller", &uac, &s);
    check("callee", &uas, &s);
    // The BYE is the last request Kamailio sees; once it is logged, so is everything before it.
    s.kamailio.wait_for_line("KAM-RECV BYE fwd-1-call");
    let log = s.kamailio.log();
    assert!(
        log.contains("KAM-PAI <sip:alice@example.com>"),
        "{io} {transport}: Kamailio got alice's asserted identity:\n{log}"
    );
    for method in ["INVITE", "ACK", "BYE"] {
        assert!(
            lines_with(&log, &format!("KAM-RECV {method} fwd-1-call")) >= 1,
            "{io} {transport}: {method} did not pass Kamailio:\n{log}"
        );
    }
}

#[test]
fn kamailio_behind_sipward_udp() {
    for io in DRIVERS {
        register_and_call(io, "u1", Upstream::Udp);
    }
}

#[test]
fn kamailio_behind_sipward_tcp_clients() {
    for io in DRIVERS {
        register_and_call(io, "t1", Upstream::Udp);
    }
}

#[test]
fn kamailio_over_tcp_behind_sipward() {
    for io in DRIVERS {
        register_and_call(io, "u1", Upstream::Tcp);
        register_and_call(io, "t1", Upstream::Tcp);
    }
}
