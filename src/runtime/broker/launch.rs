//! Starting the broker (PID 1's side): fork; in the child drop to the broker's account
//! (no groups, no capabilities in any set, no_new_privs, not dumpable, its own session)
//! and exec this same binary as `sandbox-init-broker` with a clean address space and an
//! empty environment. The secret travels through a pipe; the listening socket is bound
//! here, so the broker's address is known before it runs.
//!
//! Everything the child needs is prepared before the fork. The child makes system calls
//! and execs; only the privilege drop's verification allocates (it reads
//! /proc/self/status), and so does the text of a failure, which is safe: PID 1 is
//! single-threaded here, and musl's fork leaves malloc usable in the child of a threaded
//! parent (the tests). A failure is written to the status pipe and the child exits 70.

use super::account::Account;
use super::wire::{self, Spec};
use crate::stages::privileges;
use crate::sys::process::{self, Child, ExecArgs};
use crate::sys::{Kernel, Real};
use nix::errno::Errno;
use nix::sys::signal::{self, Signal};
use nix::sys::wait::{waitpid, WaitStatus};
use nix::unistd::Pid;
use std::ffi::CString;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd, RawFd};
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
    let argv = ExecArgs::new(vec![argv0]);
    let envp = ExecArgs::new(Vec::new());
    let identity = launch.account.identity();
    let listen_fd: OwnedFd = listener.into();
    // Descriptors the child moves into place (source, target number).
    let mut moves: Vec<(BorrowedFd, RawFd)> = vec![
        (devnull.as_fd(), 0),
        (devnull.as_fd(), 1),
        (spec_r.as_fd(), wire::SPEC_FD),
        (listen_fd.as_fd(), wire::LISTEN_FD),
        (status_w.as_fd(), wire::STATUS_FD),
    ];
    if let Some(s) = &launch.store {
        moves.push((s.as_fd(), wire::STORE_FD));
    }
    let last_fd = if launch.store.is_some() {
        wire::STORE_FD
    } else {
        wire::STATUS_FD
    };
    let plan = ChildPlan {
        moves: &moves,
        last_fd,
        identity: &identity,
        program: program.as_fd(),
        argv: &argv,
        envp: &envp,
    };

    // The child keeps to system calls on what is prepared here and then execs or exits
    // (the module's note says where it allocates).
    let forked = process::fork_child(|child| {
        // A copy of the status pipe above the broker's numbers: it outlives the moves and
        // the closing below, and exec closes it.
        let status = match rustix::io::fcntl_dupfd_cloexec(status_w.as_fd(), LIFTED_FDS) {
            Ok(s) => s,
            Err(_) => {
                let _ = nix::unistd::write(&status_w, ARRANGE.as_bytes());
                return CHILD_FAILED;
            }
        };
        let why = confine_and_exec(child, &plan, status.as_fd());
        let _ = nix::unistd::write(&status, why.as_bytes());
        CHILD_FAILED
    });
    drop(moves);
    let child = forked.map_err(|e| fail(format!("cannot fork: {e}")))?;
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

/// The child's exit status when it cannot start the broker (its reason goes to the status
/// pipe).
const CHILD_FAILED: i32 = 70;

/// Where the child lifts descriptors it still needs, above every number it hands on.
const LIFTED_FDS: RawFd = 100;

const ARRANGE: &str = "cannot arrange descriptors\n";

/// What the child between fork and exec works from, all prepared before the fork.
struct ChildPlan<'a> {
    /// Descriptors to put at fixed numbers (source, target).
    moves: &'a [(BorrowedFd<'a>, RawFd)],
    /// The highest of those numbers: everything above it is closed.
    last_fd: RawFd,
    identity: &'a crate::policy::identity::Identity,
    program: BorrowedFd<'a>,
    argv: &'a ExecArgs,
    envp: &'a ExecArgs,
}

/// The most descriptors the child moves (stdin, stdout and the four of `wire`).
const MAX_MOVES: usize = 8;

/// The child between fork and exec: arranges descriptors, resets signals, starts a
/// session, drops every privilege and execs. Returns why it failed (one line).
fn confine_and_exec(child: &Child, plan: &ChildPlan, status: BorrowedFd) -> String {
    let said = |m: &str| format!("{m}\n");
    if plan.moves.len() > MAX_MOVES {
        return ARRANGE.into();
    }
    // Sources may sit on target numbers: lift them all above the targets first.
    let mut lifted = [const { None::<OwnedFd> }; MAX_MOVES];
    for (slot, (source, _)) in lifted.iter_mut().zip(plan.moves) {
        match rustix::io::fcntl_dupfd_cloexec(source, LIFTED_FDS) {
            Ok(fd) => *slot = Some(fd),
            Err(_) => return ARRANGE.into(),
        }
    }
    let Ok(program) = rustix::io::fcntl_dupfd_cloexec(plan.program, LIFTED_FDS) else {
        return ARRANGE.into();
    };
    for (fd, (_, target)) in lifted.iter().zip(plan.moves) {
        let placed = fd.as_ref().map(|fd| child.place(fd.as_fd(), *target));
        if !matches!(placed, Some(Ok(()))) {
            return ARRANGE.into();
        }
    }
    drop(lifted);
    // Everything above the broker's descriptors goes, except the program and the status
    // copy (both close-on-exec).
    child.close_from(plan.last_fd + 1, &[program.as_fd(), status]);
    process::reset_signals();
    if nix::unistd::setsid().is_err() {
        return said("cannot start a session");
    }
    if let Err(e) = privileges::drop_all(&Real, plan.identity) {
        return said(&format!("dropping to uid {}: {e}", plan.identity.uid));
    }
    if let Err(e) = Real.set_dumpable(false) {
        return said(&format!("cannot make the broker non-dumpable: {e}"));
    }
    // After the uid change, which clears it: the broker ends when PID 1 does.
    let _ = nix::sys::prctl::set_pdeathsig(Signal::SIGKILL);
    match process::exec_fd(program.as_fd(), plan.argv, plan.envp) {
        Errno::EACCES => said(
            "cannot execute sandbox-init as the broker's uid: make it executable by everyone \
             (chmod 755)",
        ),
        e => said(&format!(
            "cannot execute sandbox-init as the broker: {}",
            std::io::Error::from(e)
        )),
    }
}
