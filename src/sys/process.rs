//! Fork-then-exec, written once. The command (runtime::spawn), the credential broker
//! (runtime::broker::launch) and the as-user credential writer (stages::credentials) fork
//! here, and their children reset signals, arrange and close descriptors, exec and exit
//! through these calls.
//!
//! A forked child of a process that had threads holds copies of locks nobody will release,
//! so between fork and exec it may only make async-signal-safe calls. Nothing in this
//! module allocates or locks once the child runs, except the pre-5.11 fallback of
//! `mark_cloexec_from`, which reads a directory (see there).

use nix::errno::Errno;
use nix::sys::signal::{self, SigHandler, SigSet, SigmaskHow, Signal};
use nix::unistd::{ForkResult, Pid};
use std::ffi::{c_char, CString};
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::sync::atomic::{AtomicU64, Ordering};

/// Proof that the code holding it runs in a child made by `fork_child`: a process that
/// leaves with `_exit` and never returns into the frames it was copied from. Descriptors
/// owned by the parent's objects can be closed or replaced there, because those objects
/// are never used or dropped again.
pub struct Child {
    _only_fork_child_makes_one: (),
}

/// Forks. The child runs `work` and exits with the code it returns (`_exit`: no atexit
/// handlers, no flushing of stdio buffers that belong to the parent); a panic in `work`
/// aborts the child. The parent gets the child's pid; `work` and what it captured are
/// dropped there unrun.
///
/// The caller keeps `work` to async-signal-safe calls, or forks only while the process is
/// single-threaded, and says which.
pub fn fork_child(work: impl FnOnce(&Child) -> i32) -> Result<Pid, Errno> {
    // SAFETY: the child runs `work` and then _exits, so it never returns into the caller's
    // frames or drops the parent's objects; what `work` may call is the caller's contract
    // (above). fork has no safe form in any crate: its soundness depends on the caller.
    match unsafe { nix::unistd::fork() }? {
        ForkResult::Parent { child } => Ok(child),
        ForkResult::Child => {
            let proof = Child {
                _only_fork_child_makes_one: (),
            };
            let code = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| work(&proof)))
                .unwrap_or_else(|_| std::process::abort());
            exit_now(code)
        }
    }
}

/// Ends this process at once with `code`.
fn exit_now(code: i32) -> ! {
    // SAFETY: _exit ends the process and touches no memory. Neither nix nor rustix's public
    // API has it (std::process::exit would run the parent's atexit handlers).
    unsafe { libc::_exit(code) }
}

/// A signal's disposition that installs no handler code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Disposition {
    Default,
    Ignore,
}

/// Sets `sig` to its default action or to ignored.
pub fn set_disposition(sig: Signal, to: Disposition) -> Result<(), Errno> {
    let handler = match to {
        Disposition::Default => SigHandler::SigDfl,
        Disposition::Ignore => SigHandler::SigIgn,
    };
    // SAFETY: SIG_DFL and SIG_IGN run no code of ours at signal time, which is the only
    // hazard of sigaction; nix's signal() needs a proof because it also takes handlers.
    unsafe { signal::signal(sig, handler) }.map(drop)
}

/// Signals as a new program expects them: none blocked, every one at its default action
/// (PID 1 blocks and ignores some). Async-signal-safe.
pub fn reset_signals() {
    let _ = signal::sigprocmask(SigmaskHow::SIG_SETMASK, Some(&SigSet::empty()), None);
    for sig in Signal::iterator() {
        if !matches!(sig, Signal::SIGKILL | Signal::SIGSTOP) {
            let _ = set_disposition(sig, Disposition::Default);
        }
    }
}

/// close_range(2) over `first..=last`; false when the kernel lacks it (before 5.9, or
/// before 5.11 for CLOSE_RANGE_CLOEXEC).
fn close_range(first: RawFd, last: RawFd, flags: libc::c_uint) -> bool {
    // SAFETY: close_range reads no memory. Closing numbers that objects of this process
    // own is sound only in a `Child`, and the callers ensure that (`Child::close_from`) or
    // pass CLOSE_RANGE_CLOEXEC, which closes nothing before exec. Neither nix nor rustix
    // wraps close_range.
    unsafe { libc::syscall(libc::SYS_close_range, first as u32, last as u32, flags) == 0 }
}

/// Runs `each` over the ranges of numbers from `first` up that miss every number in
/// `keep`; true when every call said yes.
fn ranges_except(
    first: RawFd,
    keep: &[BorrowedFd<'_>],
    mut each: impl FnMut(RawFd, RawFd) -> bool,
) -> bool {
    let mut ok = true;
    let mut low = first;
    loop {
        let next = keep
            .iter()
            .map(|fd| fd.as_raw_fd())
            .filter(|&k| k >= low)
            .min();
        match next {
            None => return ok && each(low, RawFd::MAX),
            Some(k) => {
                if k > low {
                    ok &= each(low, k - 1);
                }
                low = k + 1;
            }
        }
    }
}

/// The highest descriptor number the pre-5.9 fallback of `Child::close_from` closes.
const FALLBACK_LAST_FD: RawFd = 65_535;

/// `Child::close_from` on kernels before 5.9: one number at a time.
fn close_each(first: RawFd, keep: &[BorrowedFd<'_>]) {
    let _ = ranges_except(first, keep, |low, high| {
        for fd in low..=high.min(FALLBACK_LAST_FD) {
            let _ = nix::unistd::close(fd);
        }
        true
    });
}

impl Child {
    /// Closes every descriptor numbered `first` or higher except those in `keep`.
    /// Async-signal-safe. Descriptors the child's own objects hold above `first` must be in
    /// `keep` or be given up (into_raw_fd) before they drop.
    pub fn close_from(&self, first: RawFd, keep: &[BorrowedFd<'_>]) {
        if !ranges_except(first, keep, |low, high| close_range(low, high, 0)) {
            close_each(first, keep);
        }
    }

    /// Makes descriptor number `target` a copy of `fd` (dup2, without close-on-exec),
    /// replacing whatever was there. Async-signal-safe.
    pub fn place(&self, fd: BorrowedFd<'_>, target: RawFd) -> Result<(), Errno> {
        // SAFETY: dup2 reads no memory; the number it replaces belongs at most to the
        // parent's objects, which a `Child` never uses or drops again. nix's and rustix's
        // dup2 want an owned descriptor at the target, and nothing owns 0, 1 or the
        // numbers a child hands to the program it execs.
        Errno::result(unsafe { libc::dup2(fd.as_raw_fd(), target) }).map(drop)
    }

    /// Closes one descriptor the parent's objects hold (the child has no use for it).
    pub fn close(&self, fd: BorrowedFd<'_>) {
        let _ = nix::unistd::close(fd.as_raw_fd());
    }
}

/// Marks every descriptor numbered `first` or higher, except those in `keep`,
/// close-on-exec: the program exec starts gets none of them, while stderr and the rest
/// stay usable to report a failed exec. Sound in any process, since nothing closes
/// before exec. On kernels before 5.11 it lists /proc/self/fd, which allocates: only for
/// a child of a single-threaded parent.
pub fn mark_cloexec_from(first: RawFd, keep: &[BorrowedFd<'_>]) {
    let cloexec = |low, high| close_range(low, high, libc::CLOSE_RANGE_CLOEXEC);
    if !ranges_except(first, keep, cloexec) {
        mark_each_listed(first, keep);
    }
}

/// `mark_cloexec_from` on kernels before 5.11: each descriptor /proc/self/fd lists.
fn mark_each_listed(first: RawFd, keep: &[BorrowedFd<'_>]) {
    let Ok(dir) = std::fs::read_dir("/proc/self/fd") else {
        return;
    };
    let fds: Vec<RawFd> = dir
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
        .filter(|fd| *fd >= first && keep.iter().all(|k| k.as_raw_fd() != *fd))
        .collect();
    for fd in fds {
        // SAFETY: F_SETFD reads no memory and only sets a flag that acts at exec; a number
        // that closed since the listing is EBADF. nix's and rustix's fcntl want a borrowed
        // descriptor, which a bare number from a listing is not.
        unsafe { libc::fcntl(fd, libc::F_SETFD, libc::FD_CLOEXEC) };
    }
}

/// Numbers `take_inherited` has handed out, so that each gets one owner.
static TAKEN: AtomicU64 = AtomicU64::new(0);

/// The descriptor number `fd` (3 to 63) that this process was given at exec, as an owned
/// descriptor: None when it is not open or was taken before. Call it while the number
/// still holds what exec handed over: before this process closes it and opens another.
pub fn take_inherited(fd: RawFd) -> Option<OwnedFd> {
    if !(3..64).contains(&fd) {
        return None;
    }
    let bit = 1u64 << fd;
    if TAKEN.fetch_or(bit, Ordering::SeqCst) & bit != 0 {
        return None;
    }
    // SAFETY: F_GETFD proves the number open; it came with exec and TAKEN gives it a single
    // owner. std::os::fd has no checked conversion from a number a process inherited.
    unsafe { (libc::fcntl(fd, libc::F_GETFD) != -1).then(|| OwnedFd::from_raw_fd(fd)) }
}

/// Arguments or an environment for exec, laid out before the fork, so that exec in the
/// child needs no allocation.
pub struct ExecArgs {
    /// Owns the strings `pointers` points into (moving a CString keeps its bytes in place).
    _strings: Vec<CString>,
    /// NULL-terminated, as exec reads it.
    pointers: Vec<*const c_char>,
}

impl ExecArgs {
    pub fn new(strings: Vec<CString>) -> Self {
        let pointers = strings
            .iter()
            .map(|s| s.as_ptr())
            .chain(std::iter::once(std::ptr::null()))
            .collect();
        ExecArgs {
            _strings: strings,
            pointers,
        }
    }
}

/// Executes the program open at `program` (execveat with AT_EMPTY_PATH; an O_PATH
/// descriptor will do) with `argv` and `envp`. Returns only on failure, with its errno.
/// Async-signal-safe.
pub fn exec_fd(program: BorrowedFd<'_>, argv: &ExecArgs, envp: &ExecArgs) -> Errno {
    // SAFETY: both arrays are NULL-terminated arrays of NUL-terminated strings that
    // `argv` and `envp` own for the whole call, and the path is "" as AT_EMPTY_PATH wants.
    // nix's execveat builds these arrays on the heap in the child; rustix's takes raw
    // pointers as well.
    unsafe {
        libc::syscall(
            libc::SYS_execveat,
            program.as_raw_fd(),
            c"".as_ptr(),
            argv.pointers.as_ptr(),
            envp.pointers.as_ptr(),
            libc::AT_EMPTY_PATH,
        )
    };
    Errno::last()
}

#[cfg(test)]
mod tests {
    //! Each child here only makes system calls: the test harness has threads.
    use super::*;
    use nix::sys::wait::{waitpid, WaitStatus};
    use std::os::fd::AsFd;

    fn exit_of(pid: Pid) -> WaitStatus {
        waitpid(pid, None).unwrap()
    }

    /// Runs `check` in a forked child and asserts it held there.
    fn holds_in_child(check: impl FnOnce(&Child) -> bool) {
        let pid = fork_child(|c| if check(c) { 0 } else { 1 }).unwrap();
        assert_eq!(exit_of(pid), WaitStatus::Exited(pid, 0));
    }

    fn pipe() -> (OwnedFd, OwnedFd) {
        nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).unwrap()
    }

    #[test]
    fn the_child_exits_with_the_code_its_work_returns() {
        let pid = fork_child(|_| 42).unwrap();
        assert_eq!(exit_of(pid), WaitStatus::Exited(pid, 42));
    }

    #[test]
    fn close_from_closes_all_but_the_kept_descriptors() {
        let (_r1, w1) = pipe();
        let (_r2, w2) = pipe();
        // Control: without close_from, the child can still write to both.
        let control = fork_child(|_| {
            let a = nix::unistd::write(&w1, b"x").is_ok();
            let b = nix::unistd::write(&w2, b"x").is_ok();
            if a && b {
                0
            } else {
                1
            }
        })
        .unwrap();
        assert_eq!(exit_of(control), WaitStatus::Exited(control, 0));

        let low = w1.as_raw_fd().min(w2.as_raw_fd());
        holds_in_child(|child| {
            child.close_from(low, &[w2.as_fd()]);
            let closed = nix::unistd::write(&w1, b"x") == Err(Errno::EBADF);
            let kept = nix::unistd::write(&w2, b"x").is_ok();
            closed && kept
        });
    }

    #[test]
    fn the_fallbacks_for_older_kernels_close_and_mark_the_same() {
        let (_r1, w1) = pipe();
        let (_r2, w2) = pipe();
        let low = w1.as_raw_fd().min(w2.as_raw_fd());
        holds_in_child(|_| {
            close_each(low, &[w2.as_fd()]);
            let closed = nix::unistd::write(&w1, b"x") == Err(Errno::EBADF);
            let kept = nix::unistd::write(&w2, b"x").is_ok();
            closed && kept
        });

        let flags = |fd: &OwnedFd| nix::fcntl::fcntl(fd, nix::fcntl::FcntlArg::F_GETFD);
        holds_in_child(|_| {
            let none = nix::fcntl::FdFlag::empty();
            for fd in [&w1, &w2] {
                if nix::fcntl::fcntl(fd, nix::fcntl::FcntlArg::F_SETFD(none)).is_err() {
                    return false;
                }
            }
            mark_each_listed(low, &[w2.as_fd()]);
            let marked = flags(&w1).is_ok_and(|f| f & libc::FD_CLOEXEC != 0);
            let kept = flags(&w2).is_ok_and(|f| f & libc::FD_CLOEXEC == 0);
            marked && kept
        });
    }

    #[test]
    fn ranges_skip_the_kept_numbers() {
        let (a, b) = pipe();
        let (lo, hi) = (
            a.as_raw_fd().min(b.as_raw_fd()),
            a.as_raw_fd().max(b.as_raw_fd()),
        );
        let mut seen = Vec::new();
        ranges_except(lo - 1, &[a.as_fd(), b.as_fd()], |l, h| {
            seen.push((l, h));
            true
        });
        let mut want = vec![(lo - 1, lo - 1)];
        if hi > lo + 1 {
            want.push((lo + 1, hi - 1));
        }
        want.push((hi + 1, RawFd::MAX));
        assert_eq!(seen, want);
    }

    #[test]
    fn place_puts_a_copy_at_the_number_asked_for() {
        let (r, w) = pipe();
        let (_r2, target) = pipe();
        let number = target.as_raw_fd();
        let pid = fork_child(|child| {
            if child.place(w.as_fd(), number).is_err() {
                return 1;
            }
            // `target`'s number now writes into the first pipe.
            match nix::unistd::write(&target, b"placed") {
                Ok(6) => 0,
                _ => 2,
            }
        })
        .unwrap();
        assert_eq!(exit_of(pid), WaitStatus::Exited(pid, 0));
        drop(w);
        let mut got = [0u8; 6];
        assert_eq!(nix::unistd::read(&r, &mut got), Ok(6));
        assert_eq!(&got, b"placed");
    }

    #[test]
    fn mark_cloexec_from_marks_but_keeps_open() {
        let (_r, w) = pipe();
        let flags = || nix::fcntl::fcntl(&w, nix::fcntl::FcntlArg::F_GETFD).unwrap_or(-1);
        let pid = fork_child(|_| {
            // Control: a descriptor exec would hand on (in the child only, so no other
            // test's command inherits it).
            let none = nix::fcntl::FdFlag::empty();
            if nix::fcntl::fcntl(&w, nix::fcntl::FcntlArg::F_SETFD(none)).is_err()
                || flags() & libc::FD_CLOEXEC != 0
            {
                return 2;
            }
            mark_cloexec_from(w.as_raw_fd(), &[]);
            let marked = flags() & libc::FD_CLOEXEC != 0;
            let open = nix::unistd::write(&w, b"x").is_ok();
            if marked && open {
                0
            } else {
                1
            }
        })
        .unwrap();
        assert_eq!(exit_of(pid), WaitStatus::Exited(pid, 0));
    }

    #[test]
    fn reset_signals_unblocks_and_restores_the_default_action() {
        // Control: an ignored SIGTERM does not end the child.
        let control = fork_child(|_| {
            let _ = set_disposition(Signal::SIGTERM, Disposition::Ignore);
            let _ = signal::raise(Signal::SIGTERM);
            0
        })
        .unwrap();
        assert_eq!(exit_of(control), WaitStatus::Exited(control, 0));

        let ignored = fork_child(|_| {
            let _ = set_disposition(Signal::SIGTERM, Disposition::Ignore);
            reset_signals();
            let _ = signal::raise(Signal::SIGTERM);
            0
        })
        .unwrap();
        assert!(matches!(
            exit_of(ignored),
            WaitStatus::Signaled(_, Signal::SIGTERM, _)
        ));

        let blocked = fork_child(|_| {
            let mut set = SigSet::empty();
            set.add(Signal::SIGUSR1);
            let _ = signal::sigprocmask(SigmaskHow::SIG_BLOCK, Some(&set), None);
            reset_signals();
            // Delivered at once when unblocked; pending (and the child exits 0) when not.
            let _ = signal::raise(Signal::SIGUSR1);
            0
        })
        .unwrap();
        assert!(matches!(
            exit_of(blocked),
            WaitStatus::Signaled(_, Signal::SIGUSR1, _)
        ));
    }

    #[test]
    fn take_inherited_gives_each_number_one_owner() {
        let (_r, w) = pipe();
        let number = std::os::fd::IntoRawFd::into_raw_fd(w);
        assert!(number < 64, "the harness has few descriptors open");
        let first = take_inherited(number);
        assert!(first.is_some());
        assert!(take_inherited(number).is_none());
        assert!(take_inherited(1).is_none());
        assert!(take_inherited(64).is_none());
    }

    #[test]
    fn exec_fd_reports_why_it_failed() {
        let dir = nix::fcntl::open(
            "/",
            nix::fcntl::OFlag::O_PATH | nix::fcntl::OFlag::O_CLOEXEC,
            nix::sys::stat::Mode::empty(),
        )
        .unwrap();
        let argv = ExecArgs::new(vec![CString::new("x").unwrap()]);
        let envp = ExecArgs::new(Vec::new());
        let errno = exec_fd(dir.as_fd(), &argv, &envp);
        if errno == Errno::ENOSYS {
            // qemu-user (the arm64 unit tests) has no execveat; a kernel always has.
            eprintln!("exec_fd: execveat is not implemented here; skipped");
            return;
        }
        assert_eq!(errno, Errno::EACCES);
    }
}
