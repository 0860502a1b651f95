//! Lockdown before exec: no set-user-ID/set-group-ID program and no sudo rule left for the
//! user. The command already runs with no_new_privs (so such bits cannot raise it); this
//! removes the means as well, for `apply` mode and for anything that ever runs without it.
//!
//! The SUID walk covers the container's root filesystem only: the same device as `/` and
//! not below any other mount point (volumes, the workspace, /proc, /sys, /dev). It never
//! follows a symlink: directories are opened with `openat(O_NOFOLLOW)` relative to their
//! parent's descriptor, and a mode is changed through a descriptor of the checked file.
//!
//! Sudo: /etc/sudoers is replaced by a root-only policy and the drop-ins in /etc/sudoers.d
//! are removed (doas: /etc/doas.conf removed). Rewriting the policy is chosen over editing
//! NOPASSWD lines (sudoers has aliases, groups, includes and line continuations: an edit
//! that misses one case leaves a rule), and over removing the sudo binary (it may live
//! anywhere, and a policy that grants nothing stays correct if the binary comes back).

use crate::config::Settings;
use crate::credentials::files::{self, Found};
use crate::error::{Error, Result};
use crate::identity::Identity;
use nix::dir::Type;
use nix::errno::Errno;
use nix::fcntl::{openat, AtFlags, OFlag};
use nix::sys::stat::{fchmod, fstat, fstatat, Mode};
use nix::unistd::{unlinkat, UnlinkatFlags};
use std::collections::HashSet;
use std::ffi::{CStr, CString, OsStr};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::time::Instant;

/// The sudoers policy left in place: root only, nobody else may run anything.
pub const SUDOERS_POLICY: &str = "# Written by sandbox-init (lockdown.remove_sudo): in this \
sandbox only root may use sudo.\nDefaults env_reset\nroot ALL=(ALL:ALL) ALL\n";

/// Never entered even when they are plain directories of the root filesystem.
const PSEUDO: &[&str] = &["/proc", "/sys", "/dev"];

/// Deeper trees are left alone (each level holds one descriptor open).
const MAX_DEPTH: usize = 128;

pub fn apply(settings: &Settings, identity: &Identity) -> Result<()> {
    let _ = identity; // the user's sudo group is already withheld by identity::resolve
    let read_only = root_read_only();
    if settings.strip_suid.value {
        if read_only {
            log::info!(
                "root filesystem is read-only: set-user-ID/set-group-ID bits left as they are \
                 (no_new_privs already keeps them from raising the command)"
            );
        } else {
            strip_suid(Path::new("/"), &prune_list(&settings.workdir.value))?;
        }
    } else {
        log::info!(
            "lockdown.strip_suid = false: set-user-ID programs keep their bits (no_new_privs \
             still keeps them from raising the command)"
        );
    }
    if settings.remove_sudo.value {
        if read_only {
            log::info!(
                "root filesystem is read-only: sudo configuration left as it is (no_new_privs \
                 already keeps sudo from gaining root)"
            );
        } else {
            remove_sudo(Path::new("/etc"))?;
        }
    } else {
        log::info!("lockdown.remove_sudo = false: sudo rules in the image stay");
    }
    Ok(())
}

fn root_read_only() -> bool {
    nix::sys::statvfs::statvfs("/")
        .map(|s| s.flags().contains(nix::sys::statvfs::FsFlags::ST_RDONLY))
        .unwrap_or(false)
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

#[derive(Default)]
struct Walk {
    dev: u64,
    prune: HashSet<PathBuf>,
    cleared: Vec<PathBuf>,
    read_only: usize,
    failed: usize,
    files: usize,
    dirs: usize,
    /// getdents64 buffer, shared by every directory of the walk.
    dirents: Vec<u8>,
}

/// Clears the bits under `root` (same device, not below a pruned path). Returns the
/// number of files changed.
pub fn strip_suid(root: &Path, prune: &HashSet<PathBuf>) -> Result<usize> {
    let start = Instant::now();
    let fd = nix::fcntl::open(
        root,
        OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
        Mode::empty(),
    )
    .map_err(|e| Error::Sandbox(format!("cannot open {}: {e}", root.display())))?;
    let st =
        fstat(&fd).map_err(|e| Error::Sandbox(format!("cannot stat {}: {e}", root.display())))?;
    let mut w = Walk {
        dev: st.st_dev,
        prune: prune.clone(),
        ..Walk::default()
    };
    let mut path = PathBuf::from("/");
    w.walk(&fd, &mut path, 0);
    let ms = start.elapsed().as_secs_f64() * 1000.0;
    if !w.cleared.is_empty() {
        log::info!(
            "lockdown: cleared set-user-ID/set-group-ID bits on {} files in {ms:.0} ms ({} files \
             in {} directories checked)",
            w.cleared.len(),
            w.files,
            w.dirs
        );
        log::debug!("lockdown: cleared {:?}", w.cleared);
    } else {
        log::debug!(
            "lockdown: no set-user-ID/set-group-ID files ({} files in {} directories, {ms:.0} ms)",
            w.files,
            w.dirs
        );
    }
    if w.read_only > 0 {
        log::info!(
            "{} set-user-ID/set-group-ID files are on a read-only filesystem and keep their \
             bits (no_new_privs keeps them from raising the command)",
            w.read_only
        );
    }
    if w.failed > 0 {
        log::warn!(
            "{} set-user-ID/set-group-ID files could not be changed",
            w.failed
        );
    }
    Ok(w.cleared.len())
}

impl Walk {
    fn walk(&mut self, dir: &OwnedFd, path: &mut PathBuf, depth: usize) {
        if depth > MAX_DEPTH {
            log::warn!(
                "{} is nested too deep; not searched for set-user-ID files",
                path.display()
            );
            return;
        }
        self.dirs += 1;
        let names = match list(dir, &mut self.dirents) {
            Ok(n) => n,
            Err(e) => {
                log::debug!("cannot list {}: {e}", path.display());
                return;
            }
        };
        for (name, kind) in names {
            match kind {
                Some(Type::Directory) => self.descend(dir.as_fd(), &name, path, depth),
                Some(Type::File) => self.check_file(dir.as_fd(), &name, path),
                // Links are never followed; devices, FIFOs and sockets carry no such bits
                // that matter.
                Some(_) => {}
                None => match fstatat(dir.as_fd(), name.as_c_str(), AtFlags::AT_SYMLINK_NOFOLLOW) {
                    Ok(st) if st.st_mode & libc::S_IFMT == libc::S_IFDIR => {
                        self.descend(dir.as_fd(), &name, path, depth)
                    }
                    Ok(st) if st.st_mode & libc::S_IFMT == libc::S_IFREG => {
                        self.check_file(dir.as_fd(), &name, path)
                    }
                    _ => {}
                },
            }
        }
    }

    fn descend(&mut self, dir: BorrowedFd<'_>, name: &CStr, path: &mut PathBuf, depth: usize) {
        path.push(OsStr::from_bytes(name.to_bytes()));
        if !self.prune.contains(path.as_path()) {
            let flags = OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC;
            if let Ok(sub) = openat(dir, name, flags, Mode::empty()) {
                if fstat(&sub).is_ok_and(|st| st.st_dev == self.dev) {
                    self.walk(&sub, path, depth + 1);
                }
            }
        }
        path.pop();
    }

    fn check_file(&mut self, dir: BorrowedFd<'_>, name: &CStr, path: &Path) {
        self.files += 1;
        let Ok(st) = fstatat(dir, name, AtFlags::AT_SYMLINK_NOFOLLOW) else {
            return;
        };
        if st.st_mode & libc::S_IFMT != libc::S_IFREG
            || without_suid(st.st_mode).is_none()
            || st.st_dev != self.dev
        {
            return;
        }
        let full = path.join(OsStr::from_bytes(name.to_bytes()));
        if self.prune.contains(&full) {
            return; // a file bind-mounted from elsewhere
        }
        // Change the mode through a descriptor of the very file checked: O_NOFOLLOW, and
        // O_NONBLOCK|O_NOCTTY so nothing swapped in meanwhile can block or grab a tty.
        let flags = OFlag::O_RDONLY
            | OFlag::O_NOFOLLOW
            | OFlag::O_NONBLOCK
            | OFlag::O_NOCTTY
            | OFlag::O_CLOEXEC;
        let result = openat(dir, name, flags, Mode::empty()).and_then(|fd| {
            let now = fstat(&fd)?;
            if now.st_ino != st.st_ino || now.st_dev != st.st_dev {
                return Err(Errno::ESTALE);
            }
            match without_suid(now.st_mode) {
                Some(mode) => fchmod(&fd, Mode::from_bits_truncate(mode)),
                None => Ok(()),
            }
        });
        match result {
            Ok(()) => self.cleared.push(full),
            Err(Errno::EROFS) => self.read_only += 1,
            Err(e) => {
                self.failed += 1;
                log::warn!(
                    "cannot clear the set-user-ID bit of {}: {e}",
                    full.display()
                );
            }
        }
    }
}

/// The entries of a freshly opened directory, read with getdents64 straight from its
/// descriptor: no duplicate descriptor, no rewind, one call per 32 KiB of entries. The walk
/// visits every directory of the root filesystem, so syscalls per directory count.
/// `buf` is reused across calls (a fresh zeroed buffer per directory costs more than the
/// syscalls it saves).
fn list(dir: &OwnedFd, buf: &mut Vec<u8>) -> nix::Result<Vec<(CString, Option<Type>)>> {
    // struct linux_dirent64: d_ino u64, d_off i64, d_reclen u16, d_type u8, d_name[].
    const NAME_AT: usize = 19;
    if buf.len() < 32 * 1024 {
        buf.resize(32 * 1024, 0);
    }
    let mut out = vec![];
    loop {
        // SAFETY: the kernel writes at most buf.len() bytes into the buffer we own.
        let n = unsafe {
            libc::syscall(
                libc::SYS_getdents64,
                dir.as_raw_fd(),
                buf.as_mut_ptr(),
                buf.len(),
            )
        };
        if n < 0 {
            return Err(Errno::last());
        }
        let n = n as usize;
        if n == 0 {
            return Ok(out);
        }
        let mut off = 0;
        while off + NAME_AT <= n {
            let reclen = u16::from_ne_bytes([buf[off + 16], buf[off + 17]]) as usize;
            if reclen < NAME_AT || off + reclen > n {
                break; // malformed record: never read past what the kernel wrote
            }
            let kind = match buf[off + 18] {
                libc::DT_DIR => Some(Type::Directory),
                libc::DT_REG => Some(Type::File),
                libc::DT_LNK => Some(Type::Symlink),
                libc::DT_CHR => Some(Type::CharacterDevice),
                libc::DT_BLK => Some(Type::BlockDevice),
                libc::DT_FIFO => Some(Type::Fifo),
                libc::DT_SOCK => Some(Type::Socket),
                _ => None, // DT_UNKNOWN: the caller asks fstatat
            };
            let raw = &buf[off + NAME_AT..off + reclen];
            let name = &raw[..raw.iter().position(|b| *b == 0).unwrap_or(raw.len())];
            off += reclen;
            if name == b"." || name == b".." {
                continue;
            }
            if let Ok(name) = CString::new(name) {
                out.push((name, kind));
            }
        }
    }
}

fn sandbox(what: &str, path: &Path, e: impl std::fmt::Display) -> Error {
    Error::Sandbox(format!("cannot {what} {}: {e}", path.display()))
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
            let names = list(&d, &mut vec![]).map_err(|e| sandbox("list", &drop_ins, e))?;
            for (name, kind) in names {
                let is_dir = kind == Some(Type::Directory)
                    || (kind.is_none()
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
        let n = strip_suid(&d.join("bin"), &HashSet::new()).unwrap();
        assert_eq!(n, 2);
        assert_eq!(mode(&d.join("bin/s")), 0o755);
        assert_eq!(mode(&d.join("bin/g")), 0o755);
        assert_eq!(mode(&d.join("bin/plain")), 0o755);
        assert_eq!(mode(&target), 0o4755, "a link's target is never touched");
        // the whole tree, with /work pruned
        let n = strip_suid(&d, &prune).unwrap();
        assert_eq!(n, 1, "only outside/s is left to clear");
        assert_eq!(
            mode(&d.join("work/s")),
            0o4755,
            "pruned paths are not entered"
        );
        std::fs::remove_dir_all(&d).unwrap();
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
