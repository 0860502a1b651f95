//! Lockdown before exec: no set-user-ID/set-group-ID program, no file with capabilities and
//! no sudo rule left for the user.
//!
//! Whom it protects. The command and everything it starts run with no_new_privs: for them
//! set-uid bits and file capabilities are inert already. The lockdown is for processes that
//! do not descend from PID 1's child: `docker exec` sessions (a dev container's editor
//! terminals), which run files the agent can write (shell start-up files, git hooks) and,
//! unless the container has no_new_privs, could gain root through sudo or a set-uid program,
//! or capabilities (CAP_NET_ADMIN: the firewall) through a file that carries them.
//!
//! What no_new_privs on the container changes. When PID 1 starts with no_new_privs, the
//! runtime set it for the container (`docker run --security-opt no-new-privileges`), and
//! Docker gives every `docker exec` process the container's process settings, no_new_privs
//! included (verified with Docker 20.10: NoNewPrivs 1 in exec sessions as root and as a
//! user). Set-uid and set-gid bits are then ignored by every exec in the container, and sudo
//! (itself set-uid) cannot become root: the set-uid strip and the sudo reset would remove
//! nothing that could still be used, and both are skipped. File capabilities are NOT inert
//! there: no_new_privs only stops an exec from gaining capabilities the process did not
//! hold, and runc starts an exec session (as any user) holding the container's capability
//! set until its exec, so a file with, say, CAP_NET_ADMIN keeps it for a session as the
//! user, no_new_privs or not (the Docker tier shows it). The walk therefore still runs for
//! file capabilities. The check needs no_new_privs on PID 1 *and* on this process (the same
//! in entrypoint mode): in `apply` mode, run by `docker exec`, both come from the
//! container's settings, and a wrapper that set it on one of them alone does not count.
//! Nothing here concerns root sessions (they hold the container's capabilities already) or
//! a `docker exec --privileged` session (Docker hands it every capability itself).
//! A root filesystem mounted nosuid makes set-uid bits and file capabilities inert on it:
//! the walk is skipped, the sudo reset is not (sudo may sit on another mount).
//!
//! The walk covers the container's root filesystem only: the same mount as `/` and not
//! below any other mount point (volumes, the workspace, /proc, /sys, /dev). It never
//! follows a symlink: directories are opened with `openat(O_NOFOLLOW)` relative to their
//! parent's descriptor, and a file is changed through a descriptor of the checked file. It
//! runs on every core (the threads are joined before anything forks: PID 1 must be
//! single-threaded when it does), stats only what `d_type` says may be a regular file, with
//! `statx` asking for type, mode, owners, inode and mount only, and reads the capability
//! attribute only of files someone other than root could execute (a group or other
//! executable bit, or an owner other than root, who may add one).
//!
//! Sudo: /etc/sudoers is replaced by a root-only policy and the drop-ins in /etc/sudoers.d
//! are removed (doas: /etc/doas.conf removed). Rewriting the policy is chosen over editing
//! NOPASSWD lines (sudoers has aliases, groups, includes and line continuations: an edit
//! that misses one case leaves a rule), and over removing the sudo binary (it may live
//! anywhere, and a policy that grants nothing stays correct if the binary comes back).

use crate::policy::config::Settings;
use crate::policy::identity::Identity;
use crate::sys::fs::{self as files, Found};
use crate::sys::{Cause, Failure};
use nix::errno::Errno;
use nix::fcntl::{openat, AtFlags, OFlag};
use nix::sys::stat::{fchmod, fstatat, Mode};
use nix::unistd::{unlinkat, UnlinkatFlags};
use std::collections::HashSet;
use std::ffi::{CStr, CString, OsStr};
use std::mem::MaybeUninit;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::Instant;

/// Why the lockdown was not completed (the command does not start without it).
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Os(#[from] Failure),
    #[error(transparent)]
    Fs(#[from] files::Error),
}

impl Error {
    fn os(what: String, source: impl Into<Cause>) -> Error {
        Error::Os(Failure::new(what, source))
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// The sudoers policy left in place: root only, nobody else may run anything.
pub const SUDOERS_POLICY: &str = "# Written by sandbox-init (lockdown.remove_sudo): in this \
sandbox only root may use sudo.\nDefaults env_reset\nroot ALL=(ALL:ALL) ALL\n";

/// Never entered even when they are plain directories of the root filesystem.
const PSEUDO: &[&str] = &["/proc", "/sys", "/dev"];

/// Deeper trees are left alone (each pending level holds its parent's descriptor open).
const MAX_DEPTH: usize = 128;

/// Walkers beyond this gain nothing (the kernel's per-directory locks).
const MAX_WALKERS: usize = 8;

/// File capabilities: what `setcap` writes, what exec grants from.
const CAPS_XATTR: &CStr = c"security.capability";

pub fn apply(settings: &Settings, identity: &Identity) -> Result<()> {
    let _ = identity; // the user's sudo group is already withheld by identity::resolve
    let nnp = container_no_new_privs();
    if let Some(why) = nnp {
        log::debug!(
            "lockdown: {why}: set-user-ID/set-group-ID bits and sudo cannot raise any process \
             of this container; the set-user-ID strip and the sudo reset are skipped (file \
             capabilities are still removed: an exec session holds the container's \
             capabilities until its exec, and no_new_privs lets a file keep those)"
        );
    }
    let root = root_flags();
    if settings.strip_suid.value {
        if root.contains(nix::sys::statvfs::FsFlags::ST_RDONLY) {
            log::info!(
                "root filesystem is read-only: set-user-ID/set-group-ID bits and file \
                 capabilities left as they are (no_new_privs keeps them from raising the \
                 command; for `docker exec` sessions set-uid bits are inert only under \
                 --security-opt no-new-privileges, file capabilities not even then: build \
                 the image without them)"
            );
        } else if root.contains(nix::sys::statvfs::FsFlags::ST_NOSUID) {
            log::debug!(
                "lockdown: the root filesystem is mounted nosuid: its set-user-ID bits and \
                 file capabilities are inert for every process; walk skipped"
            );
        } else {
            let what = Strip {
                suid: nnp.is_none(),
            };
            strip(Path::new("/"), &prune_list(&settings.workdir.value), what)?;
        }
    } else {
        log::info!(
            "lockdown.strip_suid = false: set-user-ID programs and files with capabilities \
             keep them (no_new_privs still keeps them from raising the command)"
        );
    }
    if !settings.remove_sudo.value {
        log::info!("lockdown.remove_sudo = false: sudo rules in the image stay");
    } else if root.contains(nix::sys::statvfs::FsFlags::ST_RDONLY) {
        log::info!(
            "root filesystem is read-only: sudo configuration left as it is (no_new_privs \
             already keeps sudo from gaining root)"
        );
    } else if nnp.is_none() {
        remove_sudo(Path::new("/etc"))?;
    }
    Ok(())
}

/// What the walk removes: file capabilities always, set-uid/set-gid bits unless every
/// process of the container runs with no_new_privs.
#[derive(Clone, Copy)]
pub struct Strip {
    pub suid: bool,
}

/// Why every process of the container runs with no_new_privs, or `None` when that is not
/// shown. PID 1's flag is the container's (the runtime sets it before the entrypoint's
/// exec, and Docker copies it into every exec session); ours must agree.
fn container_no_new_privs() -> Option<&'static str> {
    let read = |p: &str| std::fs::read_to_string(p).ok();
    let own = read("/proc/self/status")?;
    if !no_new_privs(&own) {
        return None;
    }
    if std::process::id() == 1 {
        return Some("PID 1 started with no_new_privs (the container's no-new-privileges)");
    }
    no_new_privs(&read("/proc/1/status")?).then_some(
        "PID 1 and this process run with no_new_privs (the container's no-new-privileges)",
    )
}

/// The NoNewPrivs line of a /proc/PID/status text says 1.
pub fn no_new_privs(status: &str) -> bool {
    status
        .lines()
        .find_map(|l| l.strip_prefix("NoNewPrivs:"))
        .is_some_and(|v| v.trim() == "1")
}

fn root_flags() -> nix::sys::statvfs::FsFlags {
    nix::sys::statvfs::statvfs("/")
        .map(|s| s.flags())
        .unwrap_or(nix::sys::statvfs::FsFlags::empty())
}

/// Mount points (other than `/`) from /proc/self/mountinfo, plus the pseudo filesystems and
/// the workspace: the walk never enters them, even when they share the root's device (a
/// bind mount of a directory of the same filesystem does).
fn prune_list(workdir: &Option<PathBuf>) -> HashSet<PathBuf> {
    let mut prune: HashSet<PathBuf> = PSEUDO.iter().map(PathBuf::from).collect();
    if let Ok(text) = std::fs::read_to_string("/proc/self/mountinfo") {
        prune.extend(mount_points(&text));
    }
    let cwd = std::env::current_dir().ok();
    if let Some(w) = workdir.as_ref().or(cwd.as_ref()) {
        if w != Path::new("/") {
            prune.insert(w.clone());
        }
    }
    prune.remove(Path::new("/"));
    prune
}

/// Field 5 of each mountinfo line, with the kernel's octal escapes (`\040`) decoded.
pub fn mount_points(mountinfo: &str) -> Vec<PathBuf> {
    mountinfo
        .lines()
        .filter_map(|l| l.split(' ').nth(4))
        .map(|p| PathBuf::from(OsStr::from_bytes(&unescape(p))))
        .collect()
}

fn unescape(s: &str) -> Vec<u8> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\'
            && i + 3 < b.len()
            && b[i + 1..i + 4].iter().all(|c| (b'0'..=b'7').contains(c))
        {
            let v = (b[i + 1] - b'0') as u32 * 64
                + (b[i + 2] - b'0') as u32 * 8
                + (b[i + 3] - b'0') as u32;
            out.push(v as u8);
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    out
}

/// The mode without its set-user-ID/set-group-ID bits, or `None` when it has neither.
pub fn without_suid(mode: u32) -> Option<u32> {
    let bits = libc::S_ISUID | libc::S_ISGID;
    (mode & bits != 0).then_some(mode & 0o7777 & !bits)
}

/// Whether a process other than root could ever execute a regular file of this mode and
/// owner: a group or other executable bit, or an owner other than root (who may add one).
/// Only such a file's capabilities could raise anyone: root has every capability of the
/// container already. Root-owned files without one are never asked for theirs.
pub fn executable_by_non_root(mode: u32, uid: u32) -> bool {
    mode & 0o011 != 0 || uid != 0
}

/// What the walk found and changed, per walker, added up at the end.
#[derive(Default)]
struct Tally {
    suid: Vec<PathBuf>,
    caps: Vec<PathBuf>,
    read_only: usize,
    failed: usize,
    files: usize,
    dirs: usize,
}

impl Tally {
    fn add(&mut self, o: Tally) {
        self.suid.extend(o.suid);
        self.caps.extend(o.caps);
        self.read_only += o.read_only;
        self.failed += o.failed;
        self.files += o.files;
        self.dirs += o.dirs;
    }
}

/// Set-uid bits and file capabilities cleared under `root` (same mount, not below a pruned
/// path).
pub struct Stripped {
    pub suid: usize,
    pub caps: usize,
}

/// Clears set-user-ID/set-group-ID bits (when `what.suid`) and file capabilities under
/// `root`, on every core.
pub fn strip(root: &Path, prune: &HashSet<PathBuf>, what: Strip) -> Result<Stripped> {
    let start = Instant::now();
    let fd = nix::fcntl::open(
        root,
        OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
        Mode::empty(),
    )
    .map_err(|e| Error::os(format!("cannot open {}", root.display()), e))?;
    let mount = Mount::of(fd.as_fd())
        .map_err(|e| Error::os(format!("cannot stat {}", root.display()), e))?;
    let walk = Walk {
        base: root,
        what,
        mount,
        prune,
        queue: Mutex::new(Queue::default()),
        wake: Condvar::new(),
        xattr_at: AtomicBool::new(true),
    };
    let walkers = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1)
        .clamp(1, MAX_WALKERS);
    let mut total = Tally::default();
    let mut first = Walker::default();
    walk.enter(Arc::new(fd), PathBuf::from("/"), 0, &mut first);
    walk.share(&mut first.pending);
    // Scoped: every helper thread is joined before this returns (PID 1 forks later).
    let helpers: Vec<Tally> = std::thread::scope(|s| {
        let handles: Vec<_> = (1..walkers)
            .filter_map(|_| {
                // A refused thread (a pids limit) only means fewer walkers.
                std::thread::Builder::new()
                    .spawn_scoped(s, || {
                        let mut w = Walker::default();
                        walk.work(&mut w);
                        w.tally
                    })
                    .ok()
            })
            .collect();
        walk.work(&mut first);
        handles
            .into_iter()
            .map(|h| h.join().unwrap_or_default())
            .collect()
    });
    total.add(first.tally);
    for t in helpers {
        total.add(t);
    }
    report(&total, walkers, start.elapsed().as_secs_f64() * 1000.0);
    Ok(Stripped {
        suid: total.suid.len(),
        caps: total.caps.len(),
    })
}

fn report(t: &Tally, walkers: usize, ms: f64) {
    let checked = format!(
        "{} files in {} directories checked, {walkers} walkers",
        t.files, t.dirs
    );
    if !t.suid.is_empty() {
        log::info!(
            "lockdown: cleared set-user-ID/set-group-ID bits on {} files in {ms:.0} ms ({checked})",
            t.suid.len()
        );
        log::debug!("lockdown: cleared {:?}", t.suid);
    }
    if !t.caps.is_empty() {
        log::info!(
            "lockdown: removed file capabilities from {} files: {:?}",
            t.caps.len(),
            t.caps
        );
    }
    if t.suid.is_empty() && t.caps.is_empty() {
        log::debug!(
            "lockdown: no set-user-ID/set-group-ID file and no file capability ({checked}, \
             {ms:.0} ms)"
        );
    }
    if t.read_only > 0 {
        log::info!(
            "{} set-user-ID/set-group-ID files or files with capabilities are on a read-only \
             filesystem and keep them (no_new_privs keeps them from raising the command)",
            t.read_only
        );
    }
    if t.failed > 0 {
        log::warn!(
            "{} set-user-ID/set-group-ID files or files with capabilities could not be \
             changed: a `docker exec` session without no_new_privs could use them (run the \
             container with --security-opt no-new-privileges)",
            t.failed
        );
    }
}

/// The root's mount, told apart by mount ID where the kernel gives one (statx, Linux 5.8):
/// on an overlayfs whose layers sit on different filesystems, files report their layer's
/// device, not the overlay's, while the mount ID is the overlay's for all of them.
#[derive(Clone, Copy)]
struct Mount {
    id: Option<u64>,
    dev: (u32, u32),
}

/// What one statx call says about an entry.
struct Entry {
    mode: u32,
    uid: u32,
    gid: u32,
    ino: u64,
    dev: (u32, u32),
    mount: Option<u64>,
}

/// rustix's errno as nix's (the rest of the stage speaks nix).
fn errno(e: rustix::io::Errno) -> Errno {
    Errno::from_raw(e.raw_os_error())
}

fn statx(dir: BorrowedFd<'_>, name: &CStr, flags: i32) -> nix::Result<Entry> {
    use rustix::fs::StatxFlags as F;
    let mask = F::TYPE | F::MODE | F::UID | F::GID | F::INO | F::MNT_ID;
    let flags = rustix::fs::AtFlags::from_bits_truncate(flags as u32);
    let st = rustix::fs::statx(dir, name, flags, mask).map_err(errno)?;
    Ok(Entry {
        mode: st.stx_mode as u32,
        uid: st.stx_uid,
        gid: st.stx_gid,
        ino: st.stx_ino,
        dev: (st.stx_dev_major, st.stx_dev_minor),
        mount: (st.stx_mask & F::MNT_ID.bits() != 0).then_some(st.stx_mnt_id),
    })
}

impl Mount {
    fn of(fd: BorrowedFd<'_>) -> nix::Result<Mount> {
        let e = statx(fd, c"", libc::AT_EMPTY_PATH)?;
        Ok(Mount {
            id: e.mount,
            dev: e.dev,
        })
    }

    /// A directory opened during the walk: the mount ID where known, else the device
    /// (directories report the overlay's own).
    fn holds_dir(&self, fd: BorrowedFd<'_>) -> bool {
        match (statx(fd, c"", libc::AT_EMPTY_PATH), self.id) {
            (Ok(e), Some(id)) => e.mount == Some(id),
            (Ok(e), None) => e.dev == self.dev,
            (Err(_), _) => false,
        }
    }

    /// A file entry: without mount IDs, the prune list is what keeps bind-mounted files
    /// out (their device says nothing on an overlay).
    fn holds_file(&self, e: &Entry) -> bool {
        match (self.id, e.mount) {
            (Some(id), Some(m)) => id == m,
            _ => true,
        }
    }
}

/// A directory still to read: its parent's descriptor (kept open until every child is
/// opened) and its name there.
struct Job {
    parent: Arc<OwnedFd>,
    name: CString,
    path: PathBuf,
    depth: usize,
}

#[derive(Default)]
struct Queue {
    jobs: Vec<Job>,
    /// Walkers holding a job: the walk is over when none does and no job is left.
    busy: usize,
}

struct Walk<'a> {
    /// The walk's root as the process sees it; the walk's own paths start at "/" there.
    base: &'a Path,
    what: Strip,
    mount: Mount,
    prune: &'a HashSet<PathBuf>,
    queue: Mutex<Queue>,
    wake: Condvar,
    /// getxattrat (Linux 6.13) until the kernel says ENOSYS; then lgetxattr by path.
    xattr_at: AtomicBool,
}

/// One walker's own state: no locks on the way through a directory.
#[derive(Default)]
struct Walker {
    tally: Tally,
    /// getdents64 buffer, shared by every directory this walker reads.
    dirents: Vec<MaybeUninit<u8>>,
    entries: Vec<(CString, Kind)>,
    pending: Vec<Job>,
}

impl Walk<'_> {
    fn lock(&self) -> std::sync::MutexGuard<'_, Queue> {
        self.queue.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn share(&self, jobs: &mut Vec<Job>) {
        if jobs.is_empty() {
            return;
        }
        self.lock().jobs.append(jobs);
        self.wake.notify_all();
    }

    fn take(&self) -> Option<Job> {
        let mut q = self.lock();
        loop {
            if let Some(job) = q.jobs.pop() {
                q.busy += 1;
                return Some(job);
            }
            if q.busy == 0 {
                return None;
            }
            q = self.wake.wait(q).unwrap_or_else(|e| e.into_inner());
        }
    }

    fn work(&self, w: &mut Walker) {
        while let Some(job) = self.take() {
            // Depth first on this walker, the siblings for whoever is idle.
            let mut next = Some(job);
            while let Some(job) = next.take() {
                self.visit(job, w);
                next = w.pending.pop();
                self.share(&mut w.pending);
            }
            let mut q = self.lock();
            q.busy -= 1;
            if q.busy == 0 && q.jobs.is_empty() {
                self.wake.notify_all();
            }
        }
    }

    fn visit(&self, job: Job, w: &mut Walker) {
        let flags = OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC;
        let Ok(fd) = openat(
            job.parent.as_fd(),
            job.name.as_c_str(),
            flags,
            Mode::empty(),
        ) else {
            return;
        };
        if self.mount.holds_dir(fd.as_fd()) {
            self.enter(Arc::new(fd), job.path, job.depth, w);
        }
    }

    fn enter(&self, dir: Arc<OwnedFd>, path: PathBuf, depth: usize, w: &mut Walker) {
        w.tally.dirs += 1;
        if let Err(e) = list(&dir, &mut w.dirents, &mut w.entries) {
            log::debug!("cannot list {}: {e}", path.display());
            return;
        }
        let mut entries = std::mem::take(&mut w.entries);
        for (name, kind) in entries.drain(..) {
            let is_dir = match kind {
                Kind::Dir => true,
                Kind::File | Kind::Unknown => self.check_file(dir.as_fd(), &name, &path, w),
                // Links are never followed; devices, FIFOs and sockets cannot be executed.
                Kind::Other => false,
            };
            if !is_dir {
                continue;
            }
            let sub = path.join(OsStr::from_bytes(name.to_bytes()));
            if self.prune.contains(&sub) {
                continue;
            }
            if depth >= MAX_DEPTH {
                log::warn!(
                    "{} is nested too deep; not searched for set-user-ID files",
                    sub.display()
                );
                continue;
            }
            w.pending.push(Job {
                parent: dir.clone(),
                name,
                path: sub,
                depth: depth + 1,
            });
        }
        w.entries = entries;
    }

    /// Checks one entry that may be a regular file; true when it turned out to be a
    /// directory (its type was unknown).
    fn check_file(&self, dir: BorrowedFd<'_>, name: &CStr, path: &Path, w: &mut Walker) -> bool {
        let Ok(e) = statx(dir, name, libc::AT_SYMLINK_NOFOLLOW) else {
            return false;
        };
        match e.mode & libc::S_IFMT {
            libc::S_IFDIR => return true,
            libc::S_IFREG => {}
            _ => return false,
        }
        w.tally.files += 1;
        if !self.mount.holds_file(&e) {
            return false;
        }
        let suid = self.what.suid && without_suid(e.mode).is_some();
        let caps = executable_by_non_root(e.mode, e.uid)
            && match self.has_caps(dir, name, path) {
                Ok(has) => has,
                Err(err) => {
                    w.tally.failed += 1;
                    log::warn!(
                        "cannot read the file capabilities of {}: {err}",
                        path.join(OsStr::from_bytes(name.to_bytes())).display()
                    );
                    false
                }
            };
        if !suid && !caps {
            return false;
        }
        let full = path.join(OsStr::from_bytes(name.to_bytes()));
        if self.prune.contains(&full) {
            return false; // a file bind-mounted from elsewhere
        }
        match neutralize(dir, name, &e, caps, suid) {
            Ok(()) => {
                if suid {
                    w.tally.suid.push(full.clone());
                }
                if caps {
                    w.tally.caps.push(full);
                }
            }
            Err(Errno::EROFS) => w.tally.read_only += 1,
            Err(err) => {
                w.tally.failed += 1;
                log::warn!(
                    "cannot clear the set-user-ID bits or file capabilities of {}: {err}",
                    full.display()
                );
            }
        }
        false
    }

    /// Whether the entry carries a security.capability attribute (its size is asked, not
    /// its value).
    fn has_caps(&self, dir: BorrowedFd<'_>, name: &CStr, path: &Path) -> nix::Result<bool> {
        let rc = if self.xattr_at.load(Ordering::Relaxed) {
            match getxattrat_size(dir, name) {
                Err(Errno::ENOSYS) => {
                    self.xattr_at.store(false, Ordering::Relaxed);
                    self.lgetxattr_size(path, name)
                }
                other => other,
            }
        } else {
            self.lgetxattr_size(path, name)
        };
        match rc {
            Ok(_) => Ok(true),
            Err(Errno::ENODATA) | Err(Errno::EOPNOTSUPP) => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// lgetxattr(2) by the full path, for kernels without getxattrat.
    fn lgetxattr_size(&self, path: &Path, name: &CStr) -> nix::Result<usize> {
        let rel = path.strip_prefix("/").unwrap_or(path);
        let full = self.base.join(rel).join(OsStr::from_bytes(name.to_bytes()));
        rustix::fs::lgetxattr_query(full.as_path(), CAPS_XATTR).map_err(errno)
    }
}

/// getxattrat(2), Linux 6.13: the attribute of `name` in `dir`, not following a link.
fn getxattrat_size(dir: BorrowedFd<'_>, name: &CStr) -> nix::Result<usize> {
    /// struct xattr_args
    #[repr(C)]
    struct XattrArgs {
        value: u64,
        size: u32,
        flags: u32,
    }
    // The same number on every architecture (the unified syscall table).
    const SYS_GETXATTRAT: libc::c_long = 464;
    let mut args = XattrArgs {
        value: 0,
        size: 0,
        flags: 0,
    };
    // SAFETY: valid descriptor and C strings; `args` outlives the call; every argument is
    // passed as a full register (c_long), as the kernel reads it. Neither nix nor rustix
    // has getxattrat yet.
    let rc = unsafe {
        libc::syscall(
            SYS_GETXATTRAT,
            dir.as_raw_fd() as libc::c_long,
            name.as_ptr(),
            libc::AT_SYMLINK_NOFOLLOW as libc::c_long,
            CAPS_XATTR.as_ptr(),
            &mut args as *mut XattrArgs,
            std::mem::size_of::<XattrArgs>() as libc::c_long,
        )
    };
    if rc < 0 {
        Err(Errno::last())
    } else {
        Ok(rc as usize)
    }
}

/// Clears the capabilities (when `caps`) and the set-uid/set-gid bits (when `suid`) of the
/// file `name`, through a descriptor of the very file checked: O_NOFOLLOW,
/// O_NONBLOCK|O_NOCTTY so that nothing swapped in meanwhile can block or grab a tty, and
/// the same inode as checked.
fn neutralize(
    dir: BorrowedFd<'_>,
    name: &CStr,
    checked: &Entry,
    caps: bool,
    suid: bool,
) -> nix::Result<()> {
    let flags = OFlag::O_RDONLY
        | OFlag::O_NOFOLLOW
        | OFlag::O_NONBLOCK
        | OFlag::O_NOCTTY
        | OFlag::O_CLOEXEC;
    let fd = openat(dir, name, flags, Mode::empty())?;
    let now = statx(fd.as_fd(), c"", libc::AT_EMPTY_PATH)?;
    if now.ino != checked.ino || now.dev != checked.dev {
        return Err(Errno::ESTALE);
    }
    if caps {
        match rustix::fs::fremovexattr(&fd, CAPS_XATTR).map_err(errno) {
            Ok(()) | Err(Errno::ENODATA) => {}
            // Without CAP_SETFCAP: setting the owner it already has makes the kernel drop
            // the file's capabilities (and its set-uid bit) all the same.
            Err(Errno::EPERM) => {
                nix::unistd::fchown(
                    &fd,
                    Some(nix::unistd::Uid::from_raw(now.uid)),
                    Some(nix::unistd::Gid::from_raw(now.gid)),
                )?;
                if rustix::fs::fgetxattr_query(&fd, CAPS_XATTR).is_ok() {
                    return Err(Errno::EPERM);
                }
            }
            Err(e) => return Err(e),
        }
    }
    if !suid {
        return Ok(());
    }
    // The mode as it is now (changing the owner above may have cleared the bits already).
    let mode = statx(fd.as_fd(), c"", libc::AT_EMPTY_PATH)?.mode;
    match without_suid(mode) {
        Some(m) => fchmod(&fd, Mode::from_bits_truncate(m)),
        None => Ok(()),
    }
}

/// What getdents64's d_type says, as far as the walk cares.
#[derive(Clone, Copy, PartialEq, Debug)]
enum Kind {
    Dir,
    File,
    /// DT_UNKNOWN (some filesystems never fill it): statx decides.
    Unknown,
    /// Symlinks, devices, FIFOs, sockets.
    Other,
}

/// The entries of a freshly opened directory, read with getdents64 straight from its
/// descriptor: no duplicate descriptor, no rewind, one call per 32 KiB of entries. The walk
/// visits every directory of the root filesystem, so syscalls per directory count.
/// `buf` and `out` are reused across calls.
fn list(
    dir: &OwnedFd,
    buf: &mut Vec<MaybeUninit<u8>>,
    out: &mut Vec<(CString, Kind)>,
) -> nix::Result<()> {
    use rustix::fs::FileType;
    if buf.len() < 32 * 1024 {
        buf.resize(32 * 1024, MaybeUninit::uninit());
    }
    out.clear();
    let mut entries = rustix::fs::RawDir::new(dir, buf);
    while let Some(entry) = entries.next() {
        let entry = entry.map_err(errno)?;
        let name = entry.file_name();
        if name == c"." || name == c".." {
            continue;
        }
        let kind = match entry.file_type() {
            FileType::Directory => Kind::Dir,
            FileType::RegularFile => Kind::File,
            FileType::Unknown => Kind::Unknown,
            _ => Kind::Other,
        };
        out.push((name.to_owned(), kind));
    }
    Ok(())
}

fn sandbox(what: &str, path: &Path, e: impl Into<Cause>) -> Error {
    Error::os(format!("cannot {what} {}", path.display()), e)
}

/// Leaves `etc` (normally /etc) with a sudo policy that grants nothing to anyone but root.
/// Returns whether anything changed.
pub fn remove_sudo(etc: &Path) -> Result<bool> {
    let dir_flags = OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC;
    let etc_fd = match nix::fcntl::open(etc, dir_flags, Mode::empty()) {
        Ok(fd) => fd,
        Err(Errno::ENOENT) => return Ok(false),
        Err(e) => return Err(sandbox("open", etc, e)),
    };
    let mut changed = vec![];

    let sudoers = etc.join("sudoers");
    let rewrite = match files::read_existing(etc_fd.as_fd(), OsStr::new("sudoers"), &sudoers)? {
        // No policy file: sudo refuses to run at all.
        Found::Absent => false,
        Found::Symlink => true,
        Found::File(bytes, _) => bytes != SUDOERS_POLICY.as_bytes(),
    };
    if rewrite {
        files::write_atomic(
            etc_fd.as_fd(),
            OsStr::new("sudoers"),
            SUDOERS_POLICY.as_bytes(),
            0o440,
            &sudoers,
        )?;
        changed.push(sudoers.display().to_string());
    }

    let drop_ins = etc.join("sudoers.d");
    match openat(etc_fd.as_fd(), "sudoers.d", dir_flags, Mode::empty()) {
        Ok(d) => {
            let mut names = vec![];
            list(&d, &mut vec![], &mut names).map_err(|e| sandbox("list", &drop_ins, e))?;
            for (name, kind) in names {
                let is_dir = kind == Kind::Dir
                    || (kind == Kind::Unknown
                        && fstatat(d.as_fd(), name.as_c_str(), AtFlags::AT_SYMLINK_NOFOLLOW)
                            .is_ok_and(|st| st.st_mode & libc::S_IFMT == libc::S_IFDIR));
                if is_dir {
                    continue; // sudo reads files only
                }
                let shown = drop_ins.join(OsStr::from_bytes(name.to_bytes()));
                unlinkat(d.as_fd(), name.as_c_str(), UnlinkatFlags::NoRemoveDir)
                    .map_err(|e| sandbox("remove", &shown, e))?;
                changed.push(shown.display().to_string());
            }
        }
        Err(Errno::ENOENT) => {}
        Err(e) => return Err(sandbox("open", &drop_ins, e)),
    }

    match unlinkat(etc_fd.as_fd(), "doas.conf", UnlinkatFlags::NoRemoveDir) {
        Ok(()) => changed.push(etc.join("doas.conf").display().to_string()),
        Err(Errno::ENOENT) => {}
        Err(e) => return Err(sandbox("remove", &etc.join("doas.conf"), e)),
    }

    if changed.is_empty() {
        log::debug!("lockdown: no sudo rights to remove");
    } else {
        log::info!(
            "lockdown: sudo rights removed (root-only policy; changed {})",
            changed.join(", ")
        );
    }
    Ok(!changed.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    const ALL: Strip = Strip { suid: true };

    #[test]
    fn mountinfo_mount_points_are_decoded() {
        let text = "22 1 0:21 / / rw,relatime - overlay overlay rw\n\
                    23 22 0:22 / /proc rw - proc proc rw\n\
                    30 22 8:1 /vol /my\\040volume rw - ext4 /dev/sda1 rw\n";
        assert_eq!(
            mount_points(text),
            vec![
                PathBuf::from("/"),
                PathBuf::from("/proc"),
                PathBuf::from("/my volume")
            ]
        );
        assert_eq!(unescape("a\\134b\\011"), b"a\\b\t".to_vec());
        assert_eq!(unescape("trail\\04"), b"trail\\04".to_vec());
    }

    #[test]
    fn only_the_two_bits_go() {
        assert_eq!(without_suid(0o104755), Some(0o755));
        assert_eq!(without_suid(0o102755), Some(0o755));
        assert_eq!(without_suid(0o106711), Some(0o711));
        assert_eq!(without_suid(0o101755), None, "sticky alone is not ours");
        assert_eq!(without_suid(0o105755), Some(0o1755), "sticky stays");
        assert_eq!(without_suid(0o100755), None);
    }

    // Runs unprivileged: the walk over a tree this test owns.
    #[test]
    fn walk_clears_bits_and_respects_links_and_pruned_paths() {
        use std::os::unix::fs::{symlink, PermissionsExt};
        let d = std::env::temp_dir().join(format!("si-lockdown-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(d.join("bin")).unwrap();
        std::fs::create_dir_all(d.join("work")).unwrap();
        std::fs::create_dir_all(d.join("outside")).unwrap();
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o7777;
        for (p, m) in [
            ("bin/s", 0o4755),
            ("bin/g", 0o2755),
            ("bin/plain", 0o755),
            ("work/s", 0o4755),
            ("outside/s", 0o4755),
        ] {
            std::fs::write(d.join(p), "x").unwrap();
            std::fs::set_permissions(d.join(p), std::fs::Permissions::from_mode(m)).unwrap();
        }
        symlink(d.join("outside"), d.join("bin/link")).unwrap();
        symlink(d.join("outside/s"), d.join("bin/filelink")).unwrap();
        let target = d.join("outside/s");
        // paths are seen from the walk's root, which the walk calls "/"
        let prune: HashSet<PathBuf> = [PathBuf::from("/work")].into();
        // outside/ is part of the tree too; walk only bin/ to prove links are not followed
        let n = strip(&d.join("bin"), &HashSet::new(), ALL).unwrap();
        assert_eq!((n.suid, n.caps), (2, 0));
        assert_eq!(mode(&d.join("bin/s")), 0o755);
        assert_eq!(mode(&d.join("bin/g")), 0o755);
        assert_eq!(mode(&d.join("bin/plain")), 0o755);
        assert_eq!(mode(&target), 0o4755, "a link's target is never touched");
        // the whole tree, with /work pruned
        let n = strip(&d, &prune, ALL).unwrap();
        assert_eq!(n.suid, 1, "only outside/s is left to clear");
        assert_eq!(
            mode(&d.join("work/s")),
            0o4755,
            "pruned paths are not entered"
        );
        std::fs::remove_dir_all(&d).unwrap();
    }

    // Many directories, so that every walker gets work and hands work on: each file is
    // found exactly once, wherever it sits.
    #[test]
    fn every_walker_finds_its_share_and_nothing_twice() {
        use std::os::unix::fs::PermissionsExt;
        let d = std::env::temp_dir().join(format!("si-lockdown-wide-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        let mut planted = 0;
        for i in 0..40 {
            for j in 0..10 {
                let dir = d.join(format!("a{i}/b{j}/c"));
                std::fs::create_dir_all(&dir).unwrap();
                for (k, m) in [(0, 0o644), (1, 0o755), (2, 0o4755)] {
                    let f = dir.join(format!("f{k}"));
                    std::fs::write(&f, "x").unwrap();
                    std::fs::set_permissions(&f, std::fs::Permissions::from_mode(m)).unwrap();
                }
                planted += 1;
            }
        }
        let caps_only = Strip { suid: false };
        let n = strip(&d, &HashSet::new(), caps_only).unwrap();
        assert_eq!(n.suid, 0, "set-uid bits are left when they are inert");
        let n = strip(&d, &HashSet::new(), ALL).unwrap();
        assert_eq!(n.suid, planted);
        let n = strip(&d, &HashSet::new(), ALL).unwrap();
        assert_eq!(n.suid, 0, "a second walk finds nothing left");
        std::fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn no_new_privs_is_read_from_the_status_line() {
        assert!(no_new_privs("Name:\tx\nNoNewPrivs:\t1\nSeccomp:\t0\n"));
        assert!(!no_new_privs("Name:\tx\nNoNewPrivs:\t0\n"));
        assert!(
            !no_new_privs("Name:\tx\n"),
            "an old kernel without the line"
        );
        assert!(!no_new_privs("NoNewPrivs:\t10\n"));
    }

    #[test]
    fn capabilities_are_read_only_where_someone_could_exec() {
        assert!(executable_by_non_root(0o100755, 0));
        assert!(executable_by_non_root(0o100710, 0), "the group may exec");
        assert!(
            executable_by_non_root(0o100644, 1000),
            "the owner may add an x bit"
        );
        assert!(!executable_by_non_root(0o100644, 0));
        assert!(
            !executable_by_non_root(0o100700, 0),
            "only root may exec it"
        );
    }

    #[test]
    fn sudo_policy_is_reset_and_drop_ins_removed() {
        use std::os::unix::fs::PermissionsExt;
        let d = std::env::temp_dir().join(format!("si-sudo-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(d.join("sudoers.d/sub")).unwrap();
        std::fs::write(d.join("sudoers"), "%sudo ALL=(ALL) NOPASSWD: ALL\n").unwrap();
        std::fs::write(
            d.join("sudoers.d/claude"),
            "claude ALL=(ALL) NOPASSWD: ALL\n",
        )
        .unwrap();
        std::fs::write(d.join("doas.conf"), "permit nopass claude\n").unwrap();
        assert!(remove_sudo(&d).unwrap());
        assert_eq!(
            std::fs::read_to_string(d.join("sudoers")).unwrap(),
            SUDOERS_POLICY
        );
        let m = std::fs::metadata(d.join("sudoers"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(m & 0o777, 0o440);
        assert!(!d.join("sudoers.d/claude").exists());
        assert!(d.join("sudoers.d/sub").is_dir());
        assert!(!d.join("doas.conf").exists());
        assert!(!remove_sudo(&d).unwrap(), "a second run changes nothing");
        std::fs::remove_dir_all(&d).unwrap();
    }
}
