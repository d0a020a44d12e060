//! Whether a process of this machine still exists, for what a process
//! leaves behind it (a lease of a default worker id, a pass's spool
//! directory). It only asks the kernel (signal 0); it must never signal a
//! process, and it answers "gone" only when the kernel says there is no
//! such process (a process of another user is alive).

/// No process `pid` exists on this machine (`kill(pid, 0)` fails with
/// `ESRCH`). Any other answer, `EPERM` included, means it may be alive.
pub fn gone(pid: libc::pid_t) -> bool {
    if pid <= 0 {
        return false;
    }
    // SAFETY: signal 0 only checks that the process exists.
    unsafe { libc::kill(pid, 0) != 0 && std::io::Error::last_os_error().raw_os_error() == Some(libc::ESRCH) }
}

#[cfg(test)]
mod tests {
    #[test]
    fn this_process_is_not_gone_and_an_unused_pid_is() {
        assert!(!super::gone(std::process::id() as libc::pid_t));
        // Above the kernel's pid_max (at most 2^22): never a process.
        assert!(super::gone(i32::MAX));
    }
}
