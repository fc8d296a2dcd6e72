//! CPU time and peak RSS from `getrusage(2)`, and per-child resource usage
//! from `wait4(2)`.
//!
//! The `unix` module zeroes the `rusage` struct before the call, checks the
//! return code, and normalises `ru_maxrss` to bytes: the kernel reports it in
//! KiB on Linux and the BSDs, in bytes on macOS/iOS. Elsewhere every reading
//! is zero (the benchmark still runs; CPU time and RSS are then meaningless).

use std::io;

/// One reading, already in nanoseconds and bytes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Usage {
    /// User CPU time, ns.
    pub user_ns: u64,
    /// System CPU time, ns.
    pub sys_ns: u64,
    /// Peak resident set size so far, bytes (`ru_maxrss`, normalised).
    pub max_rss_bytes: u64,
}

impl Usage {
    /// `user + sys`, ns.
    pub fn cpu_ns(&self) -> u64 {
        self.user_ns + self.sys_ns
    }
}

/// Whose usage to read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Who {
    /// The calling process: all of its threads (`RUSAGE_SELF`).
    SelfProcess,
}

#[cfg(unix)]
mod unix {
    use super::{Usage, Who};
    use std::io;

    /// Bytes per unit of `ru_maxrss`.
    #[cfg(target_vendor = "apple")]
    pub const MAXRSS_UNIT_BYTES: u64 = 1;
    /// Bytes per unit of `ru_maxrss`.
    #[cfg(not(target_vendor = "apple"))]
    pub const MAXRSS_UNIT_BYTES: u64 = 1024;

    fn timeval_ns(tv: libc::timeval) -> u64 {
        (tv.tv_sec.max(0) as u64) * 1_000_000_000 + (tv.tv_usec.max(0) as u64) * 1_000
    }

    /// Converts a raw `rusage` (units: timevals, `ru_maxrss` per OS).
    pub fn from_raw(ru: &libc::rusage) -> Usage {
        Usage {
            user_ns: timeval_ns(ru.ru_utime),
            sys_ns: timeval_ns(ru.ru_stime),
            max_rss_bytes: (ru.ru_maxrss.max(0) as u64).saturating_mul(MAXRSS_UNIT_BYTES),
        }
    }

    fn zeroed() -> libc::rusage {
        // SAFETY: `rusage` is a plain C struct of integers and timevals, for
        // which the all-zero bit pattern is a valid value.
        unsafe { std::mem::zeroed() }
    }

    pub fn getrusage(who: Who) -> io::Result<Usage> {
        let who = match who {
            Who::SelfProcess => libc::RUSAGE_SELF,
        };
        let mut ru = zeroed();
        // SAFETY: `ru` is a valid, writable `rusage` that outlives the call;
        // `who` is one of the two constants the call accepts.
        let rc = unsafe { libc::getrusage(who, &mut ru) };
        if rc != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(from_raw(&ru))
    }

    /// Reaps `pid` with `wait4`, returning its exit code (128 + signal if it
    /// was killed) and its own resource usage.
    pub fn wait4(pid: u32) -> io::Result<(i32, Usage)> {
        let pid = libc::pid_t::try_from(pid)
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "pid out of range"))?;
        let mut ru = zeroed();
        let mut status: libc::c_int = 0;
        loop {
            // SAFETY: `status` and `ru` are valid, writable and outlive the
            // call; `pid` is a child of this process that nobody else waits for.
            let rc = unsafe { libc::wait4(pid, &mut status, 0, &mut ru) };
            if rc == pid {
                break;
            }
            let err = io::Error::last_os_error();
            if err.kind() != io::ErrorKind::Interrupted {
                return Err(err);
            }
        }
        let code = if libc::WIFEXITED(status) {
            libc::WEXITSTATUS(status)
        } else if libc::WIFSIGNALED(status) {
            128 + libc::WTERMSIG(status)
        } else {
            -1
        };
        Ok((code, from_raw(&ru)))
    }
}

/// Reads the resource usage of `who`.
///
/// # Errors
/// The OS error if `getrusage` fails.
pub fn getrusage(who: Who) -> io::Result<Usage> {
    #[cfg(unix)]
    {
        unix::getrusage(who)
    }
    #[cfg(not(unix))]
    {
        let _ = who;
        Ok(Usage::default())
    }
}

/// Waits for `child` to exit and returns its exit code and its own resource
/// usage (via `wait4` on unix; zeros elsewhere). Take its pipes out first.
///
/// # Errors
/// The OS error of the wait.
pub fn wait_child(child: std::process::Child) -> io::Result<(i32, Usage)> {
    #[cfg(unix)]
    {
        // `wait4` reaps the child; `child` is dropped without waiting again
        // (dropping a `Child` neither waits nor kills).
        unix::wait4(child.id())
    }
    #[cfg(not(unix))]
    {
        let mut child = child;
        let status = child.wait()?;
        Ok((status.code().unwrap_or(-1), Usage::default()))
    }
}

#[cfg(all(test, unix))]
mod tests {
    use super::*;

    #[test]
    fn maxrss_is_normalised_to_bytes() {
        let mut ru: libc::rusage = unsafe_zeroed();
        ru.ru_maxrss = 2;
        ru.ru_utime.tv_sec = 1;
        ru.ru_utime.tv_usec = 500;
        ru.ru_stime.tv_usec = 7;
        let u = unix::from_raw(&ru);
        let unit = if cfg!(target_vendor = "apple") {
            1
        } else {
            1024
        };
        assert_eq!(u.max_rss_bytes, 2 * unit);
        assert_eq!(u.user_ns, 1_000_500_000);
        assert_eq!(u.sys_ns, 7_000);
        assert_eq!(u.cpu_ns(), 1_000_507_000);
    }

    fn unsafe_zeroed() -> libc::rusage {
        // SAFETY: all-zero is a valid `rusage` (plain integers and timevals).
        unsafe { std::mem::zeroed() }
    }

    #[test]
    fn self_usage_sees_cpu_and_a_touched_buffer() {
        const MIB: usize = 1 << 20;
        let before = getrusage(Who::SelfProcess).expect("getrusage");
        // Touch 64 MiB so that the peak RSS is at least that, in bytes: if the
        // KiB → bytes normalisation were missing on Linux this would read ~64 K.
        let mut buf = vec![0u8; 64 * MIB];
        for i in (0..buf.len()).step_by(4096) {
            buf[i] = 1;
        }
        let mut acc = 0u64;
        for i in 0..20_000_000u64 {
            acc = acc
                .wrapping_mul(6364136223846793005)
                .wrapping_add(i ^ buf[(i as usize) % buf.len()] as u64);
        }
        std::hint::black_box((acc, &buf));
        let after = getrusage(Who::SelfProcess).expect("getrusage");
        assert!(after.cpu_ns() > before.cpu_ns(), "{before:?} -> {after:?}");
        assert!(after.max_rss_bytes >= 64 * MIB as u64, "{after:?}");
        assert!(after.max_rss_bytes < 1 << 40, "{after:?}");
    }

    #[test]
    fn wait_child_reports_exit_code() {
        let child = std::process::Command::new("sh")
            .args(["-c", "exit 3"])
            .spawn()
            .expect("spawn sh");
        let (code, usage) = wait_child(child).expect("wait4");
        assert_eq!(code, 3);
        assert!(usage.max_rss_bytes > 0, "{usage:?}");
    }
}
