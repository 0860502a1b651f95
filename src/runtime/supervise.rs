//! PID 1's job after the start: forward signals to the command, reap every zombie (orphans
//! included), and exit with the command's status. Modelled on tini and dumb-init.
//!
//! Signals are blocked and read from a signalfd, so nothing runs in signal-handler context
//! and the loop can wait on other descriptors later (DNS, NFLOG).

use crate::sys::process::{self, Disposition};
use nix::errno::Errno;
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::sys::signal::{kill, SigSet, SigmaskHow, Signal};
use nix::sys::signalfd::{SfdFlags, SignalFd};
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::Pid;
use std::os::fd::{AsFd, BorrowedFd};
use std::time::{Duration, Instant};

/// Passed on to the command as they arrive (docker stop, Ctrl-C without a tty, resize...).
pub const FORWARDED: &[Signal] = &[
    Signal::SIGTERM,
    Signal::SIGINT,
    Signal::SIGHUP,
    Signal::SIGQUIT,
    Signal::SIGUSR1,
    Signal::SIGUSR2,
    Signal::SIGWINCH,
];

/// How long the rest of the command's process group may live after the command exits.
pub const GRACE: Duration = Duration::from_millis(500);

/// Work PID 1 does beside supervising while the command runs (answering DNS, reporting
/// blocked destinations). Everything runs on PID 1's one thread: a duty waits on its
/// descriptors through the supervisor's poll and must never block.
///
/// A duty that must also wait for writability (output a peer has not taken yet) keeps its
/// sockets in an epoll set of its own, registered for `EPOLLOUT` while output waits, and
/// hands out that set's descriptor: it is readable whenever any event registered in it is
/// ready, writability included. So no duty needs a timer to retry a write (the DNS
/// filter's TCP clients work this way).
pub trait Duty {
    /// Descriptors to wait for readability on; asked again before every wait.
    fn fds(&self) -> Vec<BorrowedFd<'_>>;
    /// Some descriptor may be readable, or the deadline passed: do the work that is ready.
    fn on_ready(&mut self, now: Instant);
    /// When `on_ready` must run even if nothing arrives (timeouts, expiry, flushing).
    fn deadline(&self) -> Option<Instant> {
        None
    }
    /// The command has exited: last words (a summary), before PID 1 exits.
    fn finish(&mut self) {}
}

/// The exit code a shell would report for this status.
pub fn exit_code(status: WaitStatus) -> Option<i32> {
    match status {
        WaitStatus::Exited(_, code) => Some(code),
        WaitStatus::Signaled(_, sig, _) => Some(128 + sig as i32),
        _ => None,
    }
}

/// Blocks the signals PID 1 handles, before the child exists, so none is lost in between;
/// the child unblocks them before exec. Also ignores the job-control signals that would
/// stop a PID 1 that is not in the foreground.
pub fn block_signals() -> Result<SignalFd, String> {
    let mut set = SigSet::empty();
    for s in FORWARDED {
        set.add(*s);
    }
    set.add(Signal::SIGCHLD);
    nix::sys::signal::sigprocmask(SigmaskHow::SIG_BLOCK, Some(&set), None)
        .map_err(|e| format!("cannot block signals: {e}"))?;
    for s in [
        Signal::SIGTTIN,
        Signal::SIGTTOU,
        Signal::SIGTSTP,
        Signal::SIGPIPE,
    ] {
        let _ = process::set_disposition(s, Disposition::Ignore);
    }
    SignalFd::with_flags(&set, SfdFlags::SFD_CLOEXEC | SfdFlags::SFD_NONBLOCK)
        .map_err(|e| format!("cannot create signalfd: {e}"))
}

/// Makes this process the reaper of orphans below it when it is not PID 1 (tini -s).
pub fn become_subreaper() {
    if std::process::id() != 1 && nix::sys::prctl::set_child_subreaper(true).is_err() {
        log::warn!(
            "cannot become a child subreaper: orphans of the command will not be reaped here"
        );
    }
}

/// Processes beside the command whose end is said once on stderr (the credential broker),
/// with what to say.
static WATCHED: std::sync::Mutex<Vec<(Pid, String)>> = std::sync::Mutex::new(Vec::new());

/// Says `message` once (a warning) when `pid` ends; the session goes on.
pub fn watch_exit(pid: Pid, message: String) {
    if let Ok(mut w) = WATCHED.lock() {
        w.push((pid, message));
    }
}

fn ended(status: WaitStatus) {
    let Some(pid) = status.pid().filter(|_| exit_code(status).is_some()) else {
        return;
    };
    if let Ok(mut w) = WATCHED.lock() {
        if let Some(i) = w.iter().position(|(p, _)| *p == pid) {
            let (_, message) = w.swap_remove(i);
            log::warn!("{message}");
        }
    }
}

/// Reaps every exited child; returns the command's status when it was among them.
fn reap(child: Pid) -> Option<WaitStatus> {
    let mut mine = None;
    loop {
        match waitpid(Pid::from_raw(-1), Some(WaitPidFlag::WNOHANG)) {
            Ok(WaitStatus::StillAlive) | Err(Errno::ECHILD) => return mine,
            Ok(st) if st.pid() == Some(child) && exit_code(st).is_some() => mine = Some(st),
            Ok(st) => ended(st),
            Err(Errno::EINTR) => continue,
            Err(e) => {
                log::warn!("waitpid: {e}");
                return mine;
            }
        }
    }
}

fn drain(sfd: &mut SignalFd) -> Vec<Signal> {
    let mut got = vec![];
    while let Ok(Some(info)) = sfd.read_signal() {
        if let Ok(sig) = Signal::try_from(info.ssi_signo as i32) {
            got.push(sig);
        }
    }
    got
}

/// How long until the earliest duty deadline, for poll.
fn timeout(duties: &[Box<dyn Duty>], now: Instant) -> PollTimeout {
    match duties.iter().filter_map(|d| d.deadline()).min() {
        None => PollTimeout::NONE,
        Some(t) => {
            let ms = t.saturating_duration_since(now).as_millis();
            // Round up so we never wake just before the deadline and spin.
            PollTimeout::try_from(ms.saturating_add(1).min(60_000) as i32)
                .unwrap_or(PollTimeout::NONE)
        }
    }
}

/// Runs until the command exits; returns the exit code for PID 1.
pub fn supervise(child: Pid, mut sfd: SignalFd, mut duties: Vec<Box<dyn Duty>>) -> i32 {
    let status = loop {
        // A status may already be waiting (the command can exit before we get here).
        if let Some(st) = reap(child) {
            break st;
        }
        let wait = timeout(&duties, Instant::now());
        let mut duty_ready = false;
        {
            let mut fds = vec![PollFd::new(sfd.as_fd(), PollFlags::POLLIN)];
            for d in &duties {
                fds.extend(
                    d.fds()
                        .into_iter()
                        .map(|fd| PollFd::new(fd, PollFlags::POLLIN)),
                );
            }
            match poll(&mut fds, wait) {
                Ok(0) => duty_ready = true, // a deadline passed
                Ok(_) => duty_ready = fds[1..].iter().any(|f| f.any().unwrap_or(false)),
                Err(Errno::EINTR) => {}
                Err(e) => log::warn!("poll: {e}"),
            }
        }
        if duty_ready {
            let now = Instant::now();
            for d in duties.iter_mut() {
                d.on_ready(now);
            }
        }
        for sig in drain(&mut sfd) {
            if sig == Signal::SIGCHLD {
                continue;
            }
            log::debug!("forwarding {sig} to the command (pid {child})");
            if let Err(e) = kill(child, sig) {
                log::debug!("forwarding {sig}: {e}");
            }
        }
    };
    let code = exit_code(status).unwrap_or(crate::policy::exit::SOFTWARE);
    log::debug!("command exited: {status:?} -> exit code {code}");
    end_group(child, &mut sfd);
    for d in duties.iter_mut() {
        d.finish();
    }
    code
}

/// The command is gone; what remains of its process group gets SIGTERM, a short grace
/// period, then SIGKILL (dumb-init's behaviour), and every zombie is reaped.
fn end_group(group: Pid, sfd: &mut SignalFd) {
    let pgid = Pid::from_raw(-group.as_raw());
    if kill(pgid, None).is_err() {
        reap(group);
        return;
    }
    log::debug!("terminating the rest of the command's process group");
    let _ = kill(pgid, Signal::SIGTERM);
    let deadline = Instant::now() + GRACE;
    while kill(pgid, None).is_ok() {
        reap(group);
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            log::debug!("grace period over: killing the rest of the process group");
            let _ = kill(pgid, Signal::SIGKILL);
            break;
        }
        let ms = u16::try_from(left.as_millis().min(50)).unwrap_or(50);
        let mut fds = [PollFd::new(sfd.as_fd(), PollFlags::POLLIN)];
        let _ = poll(&mut fds, PollTimeout::from(ms));
        drain(sfd);
    }
    // Members killed just now may still be zombies for a moment.
    let until = Instant::now() + Duration::from_millis(100);
    while Instant::now() < until {
        reap(group);
        if kill(pgid, None).is_err() {
            break;
        }
        std::thread::sleep(Duration::from_millis(2));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exit_codes_follow_the_shell() {
        let p = Pid::from_raw(42);
        assert_eq!(exit_code(WaitStatus::Exited(p, 0)), Some(0));
        assert_eq!(exit_code(WaitStatus::Exited(p, 3)), Some(3));
        assert_eq!(
            exit_code(WaitStatus::Signaled(p, Signal::SIGKILL, false)),
            Some(137)
        );
        assert_eq!(
            exit_code(WaitStatus::Signaled(p, Signal::SIGTERM, true)),
            Some(143)
        );
        assert_eq!(exit_code(WaitStatus::Stopped(p, Signal::SIGSTOP)), None);
    }

    struct Due(Option<Instant>);
    impl Duty for Due {
        fn fds(&self) -> Vec<BorrowedFd<'_>> {
            vec![]
        }
        fn on_ready(&mut self, _now: Instant) {}
        fn deadline(&self) -> Option<Instant> {
            self.0
        }
    }

    #[test]
    fn poll_waits_until_the_earliest_duty_deadline() {
        let now = Instant::now();
        assert_eq!(timeout(&[], now), PollTimeout::NONE);
        let none: Vec<Box<dyn Duty>> = vec![Box::new(Due(None))];
        assert_eq!(timeout(&none, now), PollTimeout::NONE);
        let two: Vec<Box<dyn Duty>> = vec![
            Box::new(Due(Some(now + Duration::from_millis(300)))),
            Box::new(Due(Some(now + Duration::from_millis(20)))),
        ];
        assert_eq!(timeout(&two, now), PollTimeout::from(21u16));
        let past: Vec<Box<dyn Duty>> = vec![Box::new(Due(Some(now - Duration::from_secs(1))))];
        assert_eq!(
            timeout(&past, now),
            PollTimeout::from(1u16),
            "never a busy 0"
        );
        let far: Vec<Box<dyn Duty>> = vec![Box::new(Due(Some(now + Duration::from_secs(3600))))];
        assert_eq!(timeout(&far, now), PollTimeout::from(60_000u16));
    }

    #[test]
    fn forwards_what_docker_and_terminals_send() {
        for s in [
            "SIGTERM", "SIGINT", "SIGHUP", "SIGQUIT", "SIGUSR1", "SIGUSR2", "SIGWINCH",
        ] {
            assert!(FORWARDED.iter().any(|f| f.as_str() == s), "{s}");
        }
        assert!(!FORWARDED.contains(&Signal::SIGCHLD));
    }
}
