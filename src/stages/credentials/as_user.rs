//! Running a piece of work as the target user: fork, drop to the user's ids in the child,
//! do the work, exit. Root never writes into a tree the user controls; whatever a planted
//! link points at, the child can reach no more than the user itself could.
//!
//! The work (and any secret it carries) reaches the child as a copy of our memory, never
//! through argv or the environment. Its error comes back through a pipe, its variant
//! through the exit status.

use super::{Error, Result};
use crate::policy::identity::Identity;
use crate::sys::fs;
use crate::sys::process;
use crate::sys::{Kernel, Real};
use nix::sys::wait::{waitpid, WaitStatus};
use std::io::{Read, Write};
use std::os::fd::{AsFd, OwnedFd};
use std::time::{Duration, Instant};

/// The child's exit status for each variant of its error (its text goes through the pipe).
const FAILED: i32 = 1;
const INPUT: i32 = 2;
const REFUSED: i32 = 3;

/// fork() from a multi-threaded process could leave the child a lock (the allocator's)
/// held forever. PID 1 is single-threaded here by design; a thread that is still winding
/// down (a resolver runtime just dropped) gets a moment to disappear.
fn wait_single_threaded() -> Result<()> {
    let deadline = Instant::now() + Duration::from_millis(500);
    loop {
        let n = std::fs::read_dir("/proc/self/task")
            .map(|d| d.count())
            .unwrap_or(1);
        if n <= 1 {
            return Ok(());
        }
        if Instant::now() > deadline {
            return Err(Error::Failed(format!(
                "internal: PID 1 still has {n} threads; refusing to fork the credential writer"
            )));
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// Groups, then gid, then uid (each needs the privilege the next one drops), then not
/// dumpable; refuses to go on unless the ids changed and are not root's.
fn become_user(k: &impl Kernel, id: &Identity) -> std::io::Result<()> {
    k.set_groups(&id.groups)?;
    k.set_resgid(id.gid)?;
    k.set_resuid(id.uid)?;
    // Not dumpable: other processes of the user must not read the secret from our memory
    // (the kernel already resets this on the uid change; make it explicit).
    k.set_dumpable(false)?;
    let (uid, gid) = k.ids();
    if (uid, gid) != (id.uid, id.gid) || uid == 0 {
        return Err(std::io::Error::other(format!(
            "still running as {uid}:{gid}"
        )));
    }
    Ok(())
}

/// Runs `work` in a child process that runs as `id` (uid, gid, groups; no capabilities).
pub fn run<F: FnOnce() -> Result<()>>(id: &Identity, work: F) -> Result<()> {
    run_reading(id, || work().map(|()| Vec::new())).map(drop)
}

/// The most a reading child may hand back (its files are parsed under a smaller limit).
const OUTPUT_LIMIT: u64 = fs::PARSE_LIMIT + 1;

/// Runs `work` as `id` like `run`, and returns the bytes it produced: what the user can
/// read, read as the user, handed to root through a pipe (never argv, environment or a
/// file). The buffer is wiped when dropped: it may hold a secret.
pub fn run_reading<F: FnOnce() -> Result<Vec<u8>>>(
    id: &Identity,
    work: F,
) -> Result<zeroize::Zeroizing<Vec<u8>>> {
    wait_single_threaded()?;
    let pipe = || {
        nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)
            .map_err(|e| Error::os("cannot create a pipe".into(), e))
    };
    let (rd, wr) = pipe()?;
    let (out_rd, out_wr) = pipe()?;
    // PID 1 is single-threaded (checked above), so the child may allocate. The write ends
    // move into the child's closure: the parent's copies close when fork_child drops it
    // unrun.
    let forked = process::fork_child(|child| {
        child.close(rd.as_fd());
        child.close(out_rd.as_fd());
        in_child(id, wr, || {
            let bytes = zeroize::Zeroizing::new(work()?);
            std::fs::File::from(out_wr)
                .write_all(&bytes)
                .map_err(|e| Error::os("cannot hand the bytes read to PID 1".into(), e))
        })
    });
    let child = forked.map_err(|e| Error::os("cannot fork the credential writer".into(), e))?;
    // The output first: the child writes it whole before it exits, and only then (on an
    // error) its short message, which the pipe holds without blocking. The child runs as
    // the user, so a `docker exec` session of the user could stop it: past the deadline it
    // is killed and the start fails, rather than PID 1 waiting for ever.
    let deadline = Instant::now() + CHILD_DEADLINE;
    let read = read_to_end_by(out_rd, OUTPUT_LIMIT, deadline)
        .and_then(|output| read_to_end_by(rd, 64 * 1024, deadline).map(|msg| (output, msg)));
    let (output, msg) = match read {
        Ok(both) => both,
        Err(e) => {
            let _ = nix::sys::signal::kill(child, nix::sys::signal::Signal::SIGKILL);
            let _ = waitpid(child, None);
            return Err(Error::Failed(format!(
                "the credential writer (pid {child}, running as {}) did not finish: {e}; \
                 was it stopped by a signal from a session of that user?",
                id.name
            )));
        }
    };
    let msg = String::from_utf8_lossy(&msg).into_owned();
    let status = loop {
        match waitpid(child, None) {
            Err(nix::errno::Errno::EINTR) => continue,
            other => break other,
        }
    };
    match status {
        Ok(WaitStatus::Exited(_, 0)) => Ok(output),
        Ok(WaitStatus::Exited(_, INPUT)) => Err(Error::Input(msg)),
        Ok(WaitStatus::Exited(_, REFUSED)) => Err(fs::Error::Refused(msg).into()),
        Ok(WaitStatus::Exited(_, _)) if !msg.is_empty() => Err(Error::Failed(msg)),
        Ok(st) => Err(Error::Failed(format!(
            "the credential writer failed ({st:?})"
        ))),
        Err(e) => Err(Error::os("cannot wait for the credential writer".into(), e)),
    }
}

/// How long the child may take: it reads and writes a few small files.
const CHILD_DEADLINE: Duration = Duration::from_secs(30);

/// Reads a pipe to its end, keeping at most `limit` bytes (the rest is not read: the
/// writer then gets EPIPE), or fails at `deadline`. The buffer is wiped when dropped.
fn read_to_end_by(
    fd: OwnedFd,
    limit: u64,
    deadline: Instant,
) -> std::io::Result<zeroize::Zeroizing<Vec<u8>>> {
    use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
    let mut file = std::fs::File::from(fd);
    let mut out = zeroize::Zeroizing::new(Vec::with_capacity(64 * 1024));
    let mut chunk = zeroize::Zeroizing::new([0u8; 8192]);
    while (out.len() as u64) < limit {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                format!("no end after {} s", CHILD_DEADLINE.as_secs()),
            ));
        }
        let wait = PollTimeout::try_from(left.as_millis().saturating_add(1).min(60_000) as i32)
            .unwrap_or(PollTimeout::NONE);
        let mut fds = [PollFd::new(file.as_fd(), PollFlags::POLLIN)];
        match poll(&mut fds, wait) {
            Ok(0) | Err(nix::errno::Errno::EINTR) => continue,
            Ok(_) => {}
            Err(e) => return Err(e.into()),
        }
        // Readable or hung up: this read does not block.
        let room = (limit - out.len() as u64).min(chunk.len() as u64) as usize;
        match file.read(&mut chunk[..room]) {
            Ok(0) => break,
            Ok(n) => out.extend_from_slice(&chunk[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(out)
}

/// The child: becomes the user, does the work, and returns its exit status (fork_child
/// exits with it).
fn in_child<F: FnOnce() -> Result<()>>(id: &Identity, wr: OwnedFd, work: F) -> i32 {
    let outcome = match become_user(&Real, id) {
        Err(e) => Err(Error::os(
            format!(
                "cannot become {} ({}:{}) to write its files",
                id.name, id.uid, id.gid
            ),
            e,
        )),
        Ok(()) => {
            nix::sys::stat::umask(nix::sys::stat::Mode::from_bits_truncate(0o077));
            std::panic::catch_unwind(std::panic::AssertUnwindSafe(work))
                .unwrap_or_else(|_| Err(Error::Failed("the credential writer panicked".into())))
        }
    };
    match outcome {
        Ok(()) => 0,
        Err(e) => {
            let _ = std::fs::File::from(wr).write_all(e.to_string().as_bytes());
            match e {
                Error::Input(_) => INPUT,
                Error::Fs(fs::Error::Refused(_)) => REFUSED,
                _ => FAILED,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sys::fake::FakeKernel;

    fn user(uid: u32) -> Identity {
        Identity {
            name: "u".into(),
            uid,
            gid: 1000,
            image_uid: uid,
            image_gid: 1000,
            groups: vec![1000, 20],
            dropped_groups: vec![],
            home: "/home/u".into(),
            shell: "/bin/sh".into(),
        }
    }

    #[test]
    fn drops_groups_then_gid_then_uid_and_is_not_dumpable() {
        let k = FakeKernel::root();
        become_user(&k, &user(1000)).unwrap();
        assert_eq!(
            *k.calls.borrow(),
            [
                "setgroups [1000, 20]",
                "setresgid 1000",
                "setresuid 1000",
                "dumpable false"
            ]
        );
        assert_eq!(k.ids(), (1000, 1000));
    }

    #[test]
    fn a_refused_step_stops_the_writer_before_the_work() {
        for step in ["setgroups", "setresgid", "setresuid", "dumpable"] {
            let k = FakeKernel {
                fail: Some(step),
                ..FakeKernel::root()
            };
            assert!(become_user(&k, &user(1000)).is_err(), "{step}");
            assert_eq!(
                k.calls.borrow().last().map(|c| c.starts_with(step)),
                Some(true)
            );
        }
    }

    #[test]
    fn a_child_that_never_finishes_is_given_up_at_the_deadline() {
        let soon = || Instant::now() + Duration::from_millis(50);
        // A writer that keeps its end open and writes nothing (stopped): given up.
        let (rd, _wr) = nix::unistd::pipe().unwrap();
        let e = read_to_end_by(rd, 100, soon()).unwrap_err();
        assert_eq!(e.kind(), std::io::ErrorKind::TimedOut);
        // Control: one that writes and exits is read to its end, within the limit.
        let (rd, wr) = nix::unistd::pipe().unwrap();
        std::fs::File::from(wr).write_all(b"0123456789").unwrap();
        assert_eq!(
            read_to_end_by(rd, 100, soon()).unwrap().as_slice(),
            b"0123456789"
        );
        let (rd, wr) = nix::unistd::pipe().unwrap();
        std::fs::File::from(wr).write_all(b"0123456789").unwrap();
        assert_eq!(read_to_end_by(rd, 4, soon()).unwrap().as_slice(), b"0123");
    }

    #[test]
    fn refuses_to_write_as_root() {
        // Control: the same calls succeed for a user that is not root.
        assert!(become_user(&FakeKernel::root(), &user(1000)).is_ok());
        let e = become_user(&FakeKernel::root(), &user(0)).unwrap_err();
        assert!(e.to_string().contains("still running as 0:1000"), "{e}");
    }
}
