//! Process and file-lock calls for `moe train`'s output directory: an
//! exclusive advisory lock (`flock(2)`) held for the whole run, and whether a
//! process id is alive (`kill(pid, 0)`), to tell stale temporary files of a
//! killed run from those of a running one.

use std::fs::File;
use std::io;

/// Outcome of [`try_lock_exclusive`].
#[derive(Debug, PartialEq, Eq, Clone, Copy)]
pub enum LockState {
    /// The lock is now held through the file (until it is closed).
    Acquired,
    /// Another open file description holds it.
    HeldElsewhere,
}

/// Takes an exclusive advisory lock on `file` without blocking
/// (`flock(fd, LOCK_EX | LOCK_NB)`). It is released when `file` is closed
/// (or the process dies, including by `SIGKILL`).
///
/// # Errors
/// The OS error of `flock` other than "would block".
#[cfg(unix)]
pub fn try_lock_exclusive(file: &File) -> io::Result<LockState> {
    use std::os::fd::AsRawFd;
    let fd = file.as_raw_fd();
    loop {
        // SAFETY: `fd` is an open descriptor owned by `file`, which outlives
        // the call; flock takes no pointers.
        let r = unsafe { libc::flock(fd, libc::LOCK_EX | libc::LOCK_NB) };
        if r == 0 {
            return Ok(LockState::Acquired);
        }
        let e = io::Error::last_os_error();
        match e.raw_os_error() {
            Some(libc::EINTR) => continue,
            Some(c) if c == libc::EWOULDBLOCK || c == libc::EAGAIN => {
                return Ok(LockState::HeldElsewhere)
            }
            _ => return Err(e),
        }
    }
}

/// No advisory locks off unix: always acquired.
///
/// # Errors
/// Never.
#[cfg(not(unix))]
pub fn try_lock_exclusive(_file: &File) -> io::Result<LockState> {
    Ok(LockState::Acquired)
}

/// Whether a process with id `pid` exists (`kill(pid, 0)`: success or
/// `EPERM` mean it does). Ids that do not fit a `pid_t`, and 0, are not alive.
#[cfg(unix)]
pub fn pid_alive(pid: u64) -> bool {
    let Ok(p) = libc::pid_t::try_from(pid) else {
        return false;
    };
    if p <= 0 {
        return false;
    }
    // SAFETY: signal 0 only checks for the existence of the process; no
    // signal is sent and no memory is passed.
    let r = unsafe { libc::kill(p, 0) };
    r == 0 || io::Error::last_os_error().raw_os_error() == Some(libc::EPERM)
}

/// Off unix every process is assumed alive (nothing is removed).
#[cfg(not(unix))]
pub fn pid_alive(_pid: u64) -> bool {
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn own_pid_is_alive_and_a_reaped_child_is_not() {
        assert!(pid_alive(u64::from(std::process::id())));
        let mut child = std::process::Command::new("true").spawn().unwrap();
        let pid = u64::from(child.id());
        child.wait().unwrap();
        assert!(!pid_alive(pid));
        assert!(!pid_alive(0));
        assert!(!pid_alive(u64::MAX));
    }

    #[test]
    fn second_lock_on_the_same_file_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("lock");
        let a = File::create(&p).unwrap();
        let b = File::options().write(true).open(&p).unwrap();
        assert_eq!(try_lock_exclusive(&a).unwrap(), LockState::Acquired);
        assert_eq!(try_lock_exclusive(&b).unwrap(), LockState::HeldElsewhere);
        drop(a);
        assert_eq!(try_lock_exclusive(&b).unwrap(), LockState::Acquired);
    }
}
