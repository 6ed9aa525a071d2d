//! Choosing the I/O driver: io_uring when the kernel and the sandbox allow it, epoll otherwise.

use crate::config::IoMode;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Driver {
    IoUring,
    Epoll,
}

impl Driver {
    pub fn name(self) -> &'static str {
        match self {
            Driver::IoUring => "io_uring",
            Driver::Epoll => "epoll",
        }
    }
}

/// Why io_uring cannot be used here, or `Ok` when a ring can be set up.
///
/// The probe ring lives on a thread of its own: tearing a ring down queues kernel task work on the
/// thread that owned it, which can interrupt that thread's next blocking call with EINTR.
pub fn probe_io_uring() -> Result<(), String> {
    std::thread::spawn(probe_here)
        .join()
        .unwrap_or_else(|_| Err("io_uring probe panicked".into()))
}

fn probe_here() -> Result<(), String> {
    match io_uring::IoUring::new(8) {
        Ok(_) => Ok(()),
        Err(e) => {
            let sysctl = std::fs::read_to_string("/proc/sys/kernel/io_uring_disabled")
                .ok()
                .map(|s| s.trim().to_string())
                .filter(|s| s != "0");
            Err(match (e.raw_os_error(), sysctl) {
                (_, Some(v)) => format!("kernel.io_uring_disabled = {v} ({e})"),
                (Some(libc::EPERM), None) => {
                    format!("io_uring_setup refused, likely by a seccomp filter ({e})")
                }
                (Some(libc::ENOSYS), None) => format!("the kernel has no io_uring ({e})"),
                (Some(libc::ENOMEM), None) => {
                    format!("locked-memory limit too low for a ring (raise LimitMEMLOCK) ({e})")
                }
                _ => format!("io_uring_setup failed: {e}"),
            })
        }
    }
}

/// The driver for `mode`; for `Auto`, the second value is the reason io_uring was passed over.
pub fn choose(mode: IoMode) -> Result<(Driver, Option<String>), String> {
    match mode {
        IoMode::Epoll => Ok((Driver::Epoll, None)),
        IoMode::IoUring => probe_io_uring().map(|()| (Driver::IoUring, None)),
        IoMode::Auto => Ok(match probe_io_uring() {
            Ok(()) => (Driver::IoUring, None),
            Err(why) => (Driver::Epoll, Some(why)),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn epoll_is_always_available() {
        assert_eq!(choose(IoMode::Epoll).unwrap(), (Driver::Epoll, None));
    }

    #[test]
    fn auto_agrees_with_the_probe() {
        let (driver, why) = choose(IoMode::Auto).unwrap();
        match probe_io_uring() {
            Ok(()) => assert_eq!((driver, why), (Driver::IoUring, None)),
            Err(reason) => assert_eq!((driver, why), (Driver::Epoll, Some(reason))),
        }
    }
}
