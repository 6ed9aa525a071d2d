//! io_uring blocked the way container runtimes block it (a seccomp filter refusing io_uring_setup
//! with EPERM): `io = "auto"` falls back to epoll and says why; `io = "io_uring"` refuses to start.

#![cfg(target_arch = "x86_64")]

mod common;

use std::os::unix::process::CommandExt;
use std::process::Command;

use common::*;

const SYS_IO_URING_SETUP: u32 = 425;
const AUDIT_ARCH_X86_64: u32 = 0xC000_003E;

#[repr(C)]
struct SockFilter {
    code: u16,
    jt: u8,
    jf: u8,
    k: u32,
}

#[repr(C)]
struct SockFprog {
    len: u16,
    filter: *const SockFilter,
}

/// Installs, in the child before exec, a filter that fails io_uring_setup with EPERM.
fn block_io_uring(cmd: &mut Command) {
    // SAFETY: between fork and exec only async-signal-safe calls are made (two prctl), on data that
    // lives on this closure's stack.
    unsafe {
        cmd.pre_exec(|| {
            let filter = [
                // A = seccomp_data.arch; other architectures are let through untouched.
                SockFilter {
                    code: 0x20,
                    jt: 0,
                    jf: 0,
                    k: 4,
                },
                SockFilter {
                    code: 0x15,
                    jt: 0,
                    jf: 3,
                    k: AUDIT_ARCH_X86_64,
                },
                // A = seccomp_data.nr
                SockFilter {
                    code: 0x20,
                    jt: 0,
                    jf: 0,
                    k: 0,
                },
                SockFilter {
                    code: 0x15,
                    jt: 0,
                    jf: 1,
                    k: SYS_IO_URING_SETUP,
                },
                SockFilter {
                    code: 0x06,
                    jt: 0,
                    jf: 0,
                    k: 0x0005_0000 | libc::EPERM as u32,
                },
                SockFilter {
                    code: 0x06,
                    jt: 0,
                    jf: 0,
                    k: 0x7fff_0000,
                },
            ];
            let prog = SockFprog {
                len: filter.len() as u16,
                filter: filter.as_ptr(),
            };
            if libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0
                || libc::prctl(libc::PR_SET_SECCOMP, 2, &prog as *const SockFprog) != 0
            {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
}

fn config(io: &str) -> String {
    format!(
        "[server]\nudp = [\"127.0.0.1:0\"]\ntcp = [\"127.0.0.1:0\"]\nio = \"{io}\"\nshards = 1\n"
    )
}

#[test]
fn auto_falls_back_to_epoll_and_says_why() {
    let s = Sipward::launch_with("epoll", &config("auto"), &[], block_io_uring);
    let log = s.log();
    let warn = log
        .lines()
        .find(|l| l.contains("WARN"))
        .expect("one WARN line");
    assert!(warn.contains("io_uring unavailable, using epoll"), "{warn}");
    assert!(warn.contains("seccomp"), "the reason is named: {warn}");
    assert_eq!(log.matches("WARN").count(), 1, "{log}");
    // And it serves.
    let c = udp_client();
    assert_eq!(
        status(&udp_exchange(
            &c,
            s.udp,
            &register("alice", "sc", "UDP", None)
        )),
        401
    );
    let mut t = tcp_client(s.tcp);
    tcp_write(&mut t, register("alice", "sct", "TCP", None).as_bytes());
    assert_eq!(status(&tcp_read_messages(&mut t, 1)[0]), 401);
}

#[test]
fn io_uring_required_but_blocked_refuses_to_start() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("c.toml");
    std::fs::write(&path, config("io_uring")).unwrap();
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_sipward"));
    cmd.arg("--config").arg(&path);
    block_io_uring(&mut cmd);
    let out = cmd.output().unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("server.io = \"io_uring\"") && err.contains("seccomp"),
        "{err}"
    );
}
