//! Starting the broker (PID 1's side): fork; in the child drop to the broker's account
//! (no groups, no capabilities in any set, no_new_privs, not dumpable, its own session)
//! and exec this same binary as `sandbox-init-broker` with a clean address space and an
//! empty environment. The secret travels through a pipe; the listening socket is bound
//! here, so the broker's address is known before it runs.
//!
//! Everything the child needs is prepared before the fork. The child makes system calls
//! and execs; only the privilege drop's verification allocates (it reads
//! /proc/self/status), which is safe: PID 1 is single-threaded here, and musl's fork
//! leaves malloc usable in the child of a threaded parent (the tests). A failure is
//! written to the status pipe and the child exits 70.

use super::account::Account;
use super::wire::{self, Spec};
use crate::stages::privileges;
use crate::sys::{Kernel, Real};
use nix::sys::signal::{self, Signal};
use nix::sys::wait::{waitpid, WaitStatus};
use nix::unistd::{ForkResult, Pid};
use std::ffi::CString;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::path::Path;
use std::time::{Duration, Instant};

/// What PID 1 decides about the broker process.
pub struct Launch<'a> {
    /// The executable to run as the broker: /proc/self/exe in PID 1.
    pub program: &'a Path,
    pub account: Account,
    /// Where to listen: 127.0.0.1:0 picks a free port.
    pub listen: SocketAddr,
    /// The token directory from `store::prepare`, when refreshed tokens are kept.
    pub store: Option<OwnedFd>,
    /// How long to wait for `ready`.
    pub timeout: Duration,
}

/// A running broker.
#[derive(Debug)]
pub struct Running {
    pub pid: Pid,
    pub addr: SocketAddr,
}

impl Running {
    /// What the CLI gets as ANTHROPIC_BASE_URL.
    pub fn base_url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Ends the broker and reaps it (tests and `apply`; PID 1 simply exits with it).
    pub fn stop(self) {
        let _ = signal::kill(self.pid, Signal::SIGKILL);
        let _ = waitpid(self.pid, None);
    }
}

fn pipe() -> Result<(OwnedFd, OwnedFd), String> {
    nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)
        .map_err(|e| format!("cannot create a pipe: {e}"))
}

/// Starts the broker and waits until it is ready to serve.
pub fn spawn(launch: Launch, spec: &Spec) -> Result<Running, String> {
    let fail = |m: String| format!("the credential broker cannot start: {m}");
    if spec.store != launch.store.is_some() {
        return Err(fail(
            "the spec and the launch disagree about the token directory".into(),
        ));
    }
    let listener = TcpListener::bind(launch.listen)
        .map_err(|e| fail(format!("cannot listen on {}: {e}", launch.listen)))?;
    let addr = listener.local_addr().map_err(|e| fail(e.to_string()))?;

    let payload =
        zeroize::Zeroizing::new(serde_json::to_vec(spec).map_err(|e| fail(e.to_string()))?);
    if payload.len() > wire::MAX_SPEC {
        return Err(fail("the credentials are too large".into()));
    }
    let (spec_r, spec_w) = pipe().map_err(fail)?;
    // The whole spec sits in the pipe before the fork, so neither side waits on the other.
    let capacity = nix::fcntl::fcntl(
        &spec_w,
        nix::fcntl::FcntlArg::F_SETPIPE_SZ(wire::MAX_SPEC as libc::c_int),
    );
    if capacity.map_or(true, |c| (c as usize) < payload.len()) {
        return Err(fail("the credentials do not fit in a pipe".into()));
    }
    std::fs::File::from(spec_w)
        .write_all(&payload)
        .map_err(|e| fail(format!("cannot hand over the credentials: {e}")))?;
    drop(payload);
    let (status_r, status_w) = pipe().map_err(fail)?;

    let program = nix::fcntl::open(
        launch.program,
        nix::fcntl::OFlag::O_PATH | nix::fcntl::OFlag::O_CLOEXEC,
        nix::sys::stat::Mode::empty(),
    )
    .map_err(|e| fail(format!("cannot open {}: {e}", launch.program.display())))?;
    let devnull = nix::fcntl::open(
        "/dev/null",
        nix::fcntl::OFlag::O_RDWR | nix::fcntl::OFlag::O_CLOEXEC,
        nix::sys::stat::Mode::empty(),
    )
    .map_err(|e| fail(format!("cannot open /dev/null: {e}")))?;
    let argv0 = CString::new(wire::ARGV0).map_err(|e| fail(e.to_string()))?;
    let argv = [argv0.as_ptr(), std::ptr::null()];
    let envp = [std::ptr::null::<libc::c_char>()];
    let empty = CString::default();
    let identity = launch.account.identity();
    let listen_fd: OwnedFd = listener.into();
    // Descriptor numbers the child moves into place (source, target).
    let store_raw = launch.store.as_ref().map(|f| f.as_raw_fd());
    let mut moves: Vec<(RawFd, RawFd)> = vec![
        (devnull.as_raw_fd(), 0),
        (devnull.as_raw_fd(), 1),
        (spec_r.as_raw_fd(), wire::SPEC_FD),
        (listen_fd.as_raw_fd(), wire::LISTEN_FD),
        (status_w.as_raw_fd(), wire::STATUS_FD),
    ];
    if let Some(s) = store_raw {
        moves.push((s, wire::STORE_FD));
    }
    let last_fd = if store_raw.is_some() {
        wire::STORE_FD
    } else {
        wire::STATUS_FD
    };

    // SAFETY: the child only makes system calls on prepared data (no allocation) and
    // then execs or _exits.
    match unsafe { nix::unistd::fork() } {
        Err(e) => Err(fail(format!("cannot fork: {e}"))),
        Ok(ForkResult::Child) => {
            let original_status = status_w.as_raw_fd();
            let mut moved = false;
            let why = child(
                &moves,
                last_fd,
                &identity,
                program.as_raw_fd(),
                &empty,
                &argv,
                &envp,
                &mut moved,
            );
            let fd = if moved {
                wire::STATUS_FD
            } else {
                original_status
            };
            // SAFETY: writing the message to the status pipe, then _exit.
            unsafe {
                libc::write(fd, why.as_ptr().cast(), why.len());
                libc::_exit(70)
            }
        }
        Ok(ForkResult::Parent { child }) => {
            drop((spec_r, status_w, listen_fd, devnull, program, launch.store));
            match wait_ready(status_r, launch.timeout) {
                Ok(()) => Ok(Running { pid: child, addr }),
                Err(e) => {
                    let _ = signal::kill(child, Signal::SIGKILL);
                    let st = waitpid(child, None);
                    let detail = match (e.is_empty(), st) {
                        (false, _) => e,
                        (true, Ok(WaitStatus::Exited(_, c))) => format!("it exited with {c}"),
                        (true, Ok(WaitStatus::Signaled(_, s, _))) => {
                            format!("it was killed by {s}")
                        }
                        (true, _) => "it ended without a word".into(),
                    };
                    Err(fail(detail))
                }
            }
        }
    }
}

fn fcntl_ok(fd: RawFd) -> bool {
    // SAFETY: F_GETFD on any number is harmless.
    unsafe { libc::fcntl(fd, libc::F_GETFD) != -1 }
}

/// Reads the status pipe: Ok on `ready`, the broker's own message otherwise ("" when it
/// said nothing).
fn wait_ready(status: OwnedFd, timeout: Duration) -> Result<(), String> {
    let deadline = Instant::now() + timeout;
    let mut file = std::fs::File::from(status);
    let mut got = Vec::new();
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(format!("no answer within {} s", timeout.as_secs()));
        }
        use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
        let ms = left.as_millis().min(i32::MAX as u128) as i32;
        let mut fds = [PollFd::new(
            std::os::fd::AsFd::as_fd(&file),
            PollFlags::POLLIN,
        )];
        match poll(
            &mut fds,
            PollTimeout::try_from(ms).unwrap_or(PollTimeout::MAX),
        ) {
            Ok(0) | Err(nix::errno::Errno::EINTR) => continue,
            Ok(_) => {}
            Err(e) => return Err(format!("waiting for it: {e}")),
        }
        let mut buf = [0u8; 512];
        match file.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => {
                got.extend_from_slice(&buf[..n]);
                if got.starts_with(b"ready\n") {
                    return Ok(());
                }
                if got.len() > 4096 {
                    break;
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(format!("waiting for it: {e}")),
        }
    }
    Err(String::from_utf8_lossy(&got).trim().to_string())
}

/// The child between fork and exec. Returns why it failed; `moved` tells whether the
/// status pipe is at its final number yet.
#[allow(clippy::too_many_arguments)]
fn child(
    moves: &[(RawFd, RawFd)],
    last_fd: RawFd,
    identity: &crate::policy::identity::Identity,
    program: RawFd,
    empty: &CString,
    argv: &[*const libc::c_char; 2],
    envp: &[*const libc::c_char; 1],
    moved: &mut bool,
) -> String {
    let said = |m: &str| format!("{m}\n");
    // SAFETY (whole function): system calls on descriptors and memory prepared before the
    // fork.
    unsafe {
        // Sources may sit on target numbers: lift them all above the targets first.
        let mut lifted = [-1 as RawFd; 8];
        for (i, (src, _)) in moves.iter().enumerate() {
            lifted[i] = libc::fcntl(*src, libc::F_DUPFD_CLOEXEC, 100);
            if lifted[i] < 0 {
                return said("cannot arrange descriptors");
            }
        }
        let program = libc::fcntl(program, libc::F_DUPFD_CLOEXEC, 100);
        for (i, (_, dst)) in moves.iter().enumerate() {
            if libc::dup2(lifted[i], *dst) < 0 {
                return said("cannot arrange descriptors");
            }
        }
        *moved = true;
        // Everything above the broker's descriptors goes, except the program (close-on-exec).
        close_from(last_fd + 1, program);
        reset_signals();
        if libc::setsid() < 0 {
            return said("cannot start a session");
        }
        if let Err(e) = privileges::drop_all(&Real, identity) {
            return said(&format!("dropping to uid {}: {e}", identity.uid));
        }
        if let Err(e) = Real.set_dumpable(false) {
            return said(&format!("cannot make the broker non-dumpable: {e}"));
        }
        // After the uid change, which clears it: the broker ends when PID 1 does.
        libc::prctl(
            libc::PR_SET_PDEATHSIG,
            libc::SIGKILL as libc::c_ulong,
            0,
            0,
            0,
        );
        libc::syscall(
            libc::SYS_execveat,
            program,
            empty.as_ptr(),
            argv.as_ptr(),
            envp.as_ptr(),
            libc::AT_EMPTY_PATH,
        );
        let e = std::io::Error::last_os_error();
        if e.raw_os_error() == Some(libc::EACCES) {
            said("cannot execute sandbox-init as the broker's uid: make it executable by everyone (chmod 755)")
        } else {
            said(&format!("cannot execute sandbox-init as the broker: {e}"))
        }
    }
}

/// Closes every descriptor from `first` up, except `keep`.
unsafe fn close_from(first: RawFd, keep: RawFd) {
    // SAFETY: close_range(2) and close(2) on numbers only.
    unsafe {
        let ok = libc::syscall(libc::SYS_close_range, first as u32, (keep - 1) as u32, 0) == 0
            && libc::syscall(libc::SYS_close_range, (keep + 1) as u32, u32::MAX, 0) == 0;
        if !ok {
            // Kernels before 5.9.
            for fd in first..65_536 {
                if fd != keep {
                    libc::close(fd);
                }
            }
        }
    }
}

/// PID 1 blocks and ignores signals; the broker starts with the defaults so that SIGTERM
/// ends it.
unsafe fn reset_signals() {
    // SAFETY: signal-mask and disposition calls with stack data.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigprocmask(libc::SIG_SETMASK, &set, std::ptr::null_mut());
        for sig in 1..32 {
            if sig != libc::SIGKILL && sig != libc::SIGSTOP {
                libc::signal(sig, libc::SIG_DFL);
            }
        }
    }
}

/// Turns a raw descriptor the broker was given into an owned one, if it is open.
pub fn take_fd(fd: RawFd) -> Option<OwnedFd> {
    // SAFETY: the descriptor is open (checked) and nothing else in this process owns it.
    fcntl_ok(fd).then(|| unsafe { OwnedFd::from_raw_fd(fd) })
}
