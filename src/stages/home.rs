//! Re-owning the home when `SANDBOX_UID`/`SANDBOX_GID` give the host's ids.
//!
//! Runs as root over a tree the sandboxed user may have shaped in an earlier session, so it
//! walks with directory descriptors only: every step is `openat(O_NOFOLLOW)` or
//! `fchownat(AT_SYMLINK_NOFOLLOW)`, a symlink is re-owned as a link and never followed, and
//! the walk does not cross into other mounts (the workspace, bind mounts) — except
//! `~/.claude`, which is usually its own volume and must follow the user.

// The walk fails as the link-proof layer does: a refusal, or what the kernel refused.
use crate::sys::fs::{Error, Result};
use nix::fcntl::{AtFlags, OFlag};
use nix::sys::stat::{fstat, fstatat, Mode};
use nix::unistd::{fchownat, Gid, Uid};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::Path;

/// Ownership change to apply: files owned by `from` ids get `to` ids.
#[derive(Debug, Clone, Copy)]
pub struct Reown {
    pub from_uid: u32,
    pub from_gid: u32,
    pub to_uid: u32,
    pub to_gid: u32,
}

impl Reown {
    /// The new owner for a file owned by (uid, gid), when it changes.
    pub fn target(&self, uid: u32, gid: u32) -> Option<(Option<u32>, Option<u32>)> {
        let u = (uid == self.from_uid && uid != self.to_uid).then_some(self.to_uid);
        let g = (gid == self.from_gid && gid != self.to_gid).then_some(self.to_gid);
        (u.is_some() || g.is_some()).then_some((u, g))
    }
}

const MAX_DEPTH: usize = 64;

/// Re-owns `home` and everything below it on the same mount, plus `home/.claude` (own
/// mount or not). Returns the number of entries changed.
pub fn reown_home(home: &Path, change: Reown) -> Result<usize> {
    if home == Path::new("/") {
        return Ok(0);
    }
    let open = |p: &Path| {
        nix::fcntl::open(
            p,
            OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
            Mode::empty(),
        )
    };
    let root = match open(home) {
        Ok(fd) => fd,
        Err(nix::errno::Errno::ENOENT) => return Ok(0),
        Err(nix::errno::Errno::ELOOP) | Err(nix::errno::Errno::ENOTDIR) => {
            return Err(Error::Refused(format!(
                "the home {} is a symlink or not a directory; refusing to re-own it",
                home.display()
            )))
        }
        Err(e) => {
            return Err(Error::os(
                format!("cannot open the home {}", home.display()),
                e,
            ))
        }
    };
    let st = fstat(&root).map_err(|e| Error::os(format!("stat {}", home.display()), e))?;
    if st.st_uid != change.from_uid && st.st_uid != change.to_uid {
        log::warn!(
            "the home {} belongs to uid {}, not to the user: leaving its ownership alone",
            home.display(),
            st.st_uid
        );
        return Ok(0);
    }
    let mut n = chown_fd(&root, st.st_uid, st.st_gid, change)?;
    n += walk(&root, st.st_dev, change, 0, true)?;
    Ok(n)
}

fn chown_fd(fd: &OwnedFd, uid: u32, gid: u32, change: Reown) -> Result<usize> {
    match change.target(uid, gid) {
        None => Ok(0),
        Some((u, g)) => {
            fchownat(
                fd.as_fd(),
                "",
                u.map(Uid::from_raw),
                g.map(Gid::from_raw),
                AtFlags::AT_EMPTY_PATH,
            )
            .map_err(|e| Error::os("cannot re-own the home".into(), e))?;
            Ok(1)
        }
    }
}

fn walk(dir: &OwnedFd, dev: u64, change: Reown, depth: usize, top: bool) -> Result<usize> {
    if depth > MAX_DEPTH {
        log::warn!("home deeper than {MAX_DEPTH} levels: the rest keeps its owner");
        return Ok(0);
    }
    // The same directory reader as the lockdown walk (rustix), on a descriptor of its own.
    let entries = rustix::fs::Dir::read_from(dir)
        .map_err(|e| Error::os("cannot list a directory in the home".into(), e))?;
    let mut names = vec![];
    for ent in entries.flatten() {
        let name = ent.file_name().to_owned();
        if matches!(name.to_bytes(), b"." | b"..") {
            continue;
        }
        names.push((name, ent.file_type()));
    }
    let mut n = 0;
    for (name, kind) in names {
        let st = match fstatat(dir.as_fd(), name.as_c_str(), AtFlags::AT_SYMLINK_NOFOLLOW) {
            Ok(st) => st,
            Err(_) => continue, // gone meanwhile
        };
        // A file system that does not fill in d_type says Unknown: then the stat decides.
        let is_dir = kind == rustix::fs::FileType::Directory
            || (kind == rustix::fs::FileType::Unknown
                && (st.st_mode & libc::S_IFMT) == libc::S_IFDIR);
        let claude_volume = top && name.to_bytes() == b".claude";
        if st.st_dev != dev && !claude_volume {
            continue; // another mount: not ours to re-own
        }
        if let Some((u, g)) = change.target(st.st_uid, st.st_gid) {
            fchownat(
                dir.as_fd(),
                name.as_c_str(),
                u.map(Uid::from_raw),
                g.map(Gid::from_raw),
                AtFlags::AT_SYMLINK_NOFOLLOW,
            )
            .map_err(|e| Error::os(format!("cannot re-own {:?} in the home", name), e))?;
            n += 1;
        }
        if is_dir {
            if let Some(sub) = open_subdir(dir.as_fd(), name.as_c_str()) {
                n += walk(&sub, st.st_dev, change, depth + 1, false)?;
            }
        }
    }
    Ok(n)
}

fn open_subdir(dir: BorrowedFd<'_>, name: &std::ffi::CStr) -> Option<OwnedFd> {
    nix::fcntl::openat(
        dir,
        name,
        OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
        Mode::empty(),
    )
    .ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_images_ids_move() {
        let c = Reown {
            from_uid: 1000,
            from_gid: 1000,
            to_uid: 501,
            to_gid: 20,
        };
        assert_eq!(c.target(1000, 1000), Some((Some(501), Some(20))));
        assert_eq!(c.target(1000, 5), Some((Some(501), None)));
        assert_eq!(c.target(0, 0), None, "root's files stay root's");
        assert_eq!(c.target(501, 20), None, "already done");
    }
}
