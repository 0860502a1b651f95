//! File operations that cannot be turned against us by links: directories are reached with
//! `openat(O_NOFOLLOW)` one component at a time, files are read with `O_NOFOLLOW` and
//! written to a fresh temporary file (`O_CREAT|O_EXCL|O_NOFOLLOW`) in the same directory,
//! then renamed over the final name, which replaces a planted symlink without opening its
//! target. Used by the as-user credential writer and by the lockdown (as root, in /etc).

use crate::error::{Error, Result};
use nix::errno::Errno;
use nix::fcntl::{openat, renameat, OFlag};
use nix::sys::stat::{fchmod, fstat, fstatat, mkdirat, FileStat, Mode};
use nix::unistd::{unlinkat, UnlinkatFlags};
use std::ffi::OsStr;
use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::Path;

/// Larger existing state files are refused rather than read into PID 1's memory.
pub const READ_LIMIT: u64 = 64 << 20;

const DIR_FLAGS: OFlag = OFlag::O_RDONLY
    .union(OFlag::O_DIRECTORY)
    .union(OFlag::O_NOFOLLOW)
    .union(OFlag::O_CLOEXEC);

fn io(what: &str, path: &Path, e: Errno) -> Error {
    Error::Sandbox(format!("cannot {what} {}: {e}", path.display()))
}

fn is_type(st: &FileStat, kind: libc::mode_t) -> bool {
    st.st_mode & libc::S_IFMT == kind
}

/// Why a directory cannot be used, in words, or `None` when it can.
fn refusal(st: &FileStat, uid: u32) -> Option<String> {
    if is_type(st, libc::S_IFLNK) {
        Some("is a symlink".into())
    } else if !is_type(st, libc::S_IFDIR) {
        Some("is not a directory".into())
    } else if st.st_uid != uid {
        Some(format!("is owned by uid {}, not by uid {uid}", st.st_uid))
    } else {
        None
    }
}

fn refuse(path: &Path, why: &str) -> Error {
    Error::Config(format!(
        "{} {why}; refusing to write credentials through it (it may have been planted in \
         an earlier session). Remove it or fix its owner, then start again",
        path.display()
    ))
}

/// Opens an existing directory that must be a real directory owned by `uid` (the home).
/// Only the last component is checked for links: the ones above belong to the image.
pub fn open_owned_dir(path: &Path, uid: u32) -> Result<OwnedFd> {
    match nix::fcntl::open(path, DIR_FLAGS, Mode::empty()) {
        Ok(fd) => {
            let st = fstat(&fd).map_err(|e| io("stat", path, e))?;
            match refusal(&st, uid) {
                Some(why) => Err(refuse(path, &why)),
                None => Ok(fd),
            }
        }
        Err(Errno::ELOOP) | Err(Errno::ENOTDIR) => {
            let why = match nix::sys::stat::lstat(path) {
                Ok(st) => refusal(&st, uid).unwrap_or_else(|| "is not a directory".into()),
                Err(_) => "is not a directory".into(),
            };
            Err(refuse(path, &why))
        }
        Err(e) => Err(io("open", path, e)),
    }
}

/// Opens `name` under `parent`, creating it (0700) when missing; refuses a symlink, a
/// non-directory, or a directory owned by anyone but `uid`.
pub fn ensure_dir(parent: BorrowedFd<'_>, name: &OsStr, uid: u32, shown: &Path) -> Result<OwnedFd> {
    let open = || openat(parent, name, DIR_FLAGS, Mode::empty());
    let fd = match open() {
        Err(Errno::ENOENT) => {
            match mkdirat(parent, name, Mode::S_IRWXU) {
                Ok(()) | Err(Errno::EEXIST) => {}
                Err(e) => return Err(io("create the directory", shown, e)),
            }
            open()
        }
        other => other,
    };
    match fd {
        Ok(fd) => {
            let st = fstat(&fd).map_err(|e| io("stat", shown, e))?;
            match refusal(&st, uid) {
                Some(why) => Err(refuse(shown, &why)),
                None => Ok(fd),
            }
        }
        Err(Errno::ELOOP) | Err(Errno::ENOTDIR) => {
            let why = match fstatat(parent, name, nix::fcntl::AtFlags::AT_SYMLINK_NOFOLLOW) {
                Ok(st) => refusal(&st, uid).unwrap_or_else(|| "is not a directory".into()),
                Err(_) => "is not a directory".into(),
            };
            Err(refuse(shown, &why))
        }
        Err(e) => Err(io("open", shown, e)),
    }
}

/// What sits at a name we are about to write.
#[derive(Debug)]
pub enum Found {
    Absent,
    /// A symlink (never followed): it will be replaced.
    Symlink,
    /// A regular file: its bytes, and the open descriptor (for fixing its mode).
    File(Vec<u8>, OwnedFd),
}

/// Reads a regular file without following a link at its name. Anything that is neither a
/// regular file nor a symlink (a directory, a FIFO) is an error: renaming over it would
/// fail or destroy something that is not ours to destroy.
pub fn read_existing(dir: BorrowedFd<'_>, name: &OsStr, shown: &Path) -> Result<Found> {
    let flags = OFlag::O_RDONLY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC | OFlag::O_NONBLOCK;
    let fd = match openat(dir, name, flags, Mode::empty()) {
        Ok(fd) => fd,
        Err(Errno::ENOENT) => return Ok(Found::Absent),
        Err(Errno::ELOOP) => return Ok(Found::Symlink),
        Err(Errno::ENXIO) => {
            return Err(Error::Config(format!(
                "{} is a socket or device, not a file; remove it",
                shown.display()
            )))
        }
        Err(e) => return Err(io("open", shown, e)),
    };
    let st = fstat(&fd).map_err(|e| io("stat", shown, e))?;
    if !is_type(&st, libc::S_IFREG) {
        return Err(Error::Config(format!(
            "{} is not a regular file; remove it",
            shown.display()
        )));
    }
    if st.st_size as u64 > READ_LIMIT {
        return Err(Error::Config(format!(
            "{} is larger than {} MiB; move it away",
            shown.display(),
            READ_LIMIT >> 20
        )));
    }
    let dup = fd
        .try_clone()
        .map_err(|e| Error::Sandbox(format!("cannot duplicate a descriptor: {e}")))?;
    let mut bytes = Vec::with_capacity(st.st_size as usize);
    File::from(dup)
        .take(READ_LIMIT)
        .read_to_end(&mut bytes)
        .map_err(|e| Error::Sandbox(format!("cannot read {}: {e}", shown.display())))?;
    Ok(Found::File(bytes, fd))
}

/// Whether anything (file, link, directory) exists at `name`, without following it.
pub fn exists(dir: BorrowedFd<'_>, name: &OsStr) -> Result<Option<FileStat>> {
    match fstatat(dir, name, nix::fcntl::AtFlags::AT_SYMLINK_NOFOLLOW) {
        Ok(st) => Ok(Some(st)),
        Err(Errno::ENOENT) => Ok(None),
        Err(e) => Err(Error::Sandbox(format!("cannot stat {name:?}: {e}"))),
    }
}

fn temp_name(name: &OsStr) -> std::ffi::OsString {
    let mut t = std::ffi::OsString::from(".");
    t.push(name);
    t.push(format!(".sandbox-init-{}.tmp", std::process::id()));
    t
}

/// Writes `bytes` to `dir/name` atomically with `mode`: a new temporary file in the same
/// directory (never an existing one, never through a link), flushed, then renamed over
/// `name`.
pub fn write_atomic(
    dir: BorrowedFd<'_>,
    name: &OsStr,
    bytes: &[u8],
    mode: u32,
    shown: &Path,
) -> Result<()> {
    let tmp = temp_name(name);
    let flags =
        OFlag::O_WRONLY | OFlag::O_CREAT | OFlag::O_EXCL | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC;
    let m = Mode::from_bits_truncate(mode);
    let fd = match openat(dir, tmp.as_os_str(), flags, m) {
        // A leftover of an interrupted start (pids repeat in a fresh pid namespace).
        Err(Errno::EEXIST) => {
            unlinkat(dir, tmp.as_os_str(), UnlinkatFlags::NoRemoveDir)
                .map_err(|e| io("remove a stale temporary file for", shown, e))?;
            openat(dir, tmp.as_os_str(), flags, m)
        }
        other => other,
    }
    .map_err(|e| io("create a temporary file for", shown, e))?;
    let mut f = File::from(fd);
    let mut finish = || {
        // The umask may have narrowed the mode; the exact mode is part of the contract.
        fchmod(f.as_fd(), m).map_err(|e| io("set the mode of", shown, e))?;
        f.write_all(bytes)
            .and_then(|()| f.sync_all())
            .map_err(|e| Error::Sandbox(format!("cannot write {}: {e}", shown.display())))?;
        renameat(dir, tmp.as_os_str(), dir, name).map_err(|e| io("rename into place", shown, e))
    };
    let result = finish();
    if result.is_err() {
        let _ = unlinkat(dir, tmp.as_os_str(), UnlinkatFlags::NoRemoveDir);
    }
    result
}

/// Moves `name` aside to `name.invalid-<time>` (a name not in use) and returns that name.
pub fn move_aside(dir: BorrowedFd<'_>, name: &OsStr, shown: &Path) -> Result<String> {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    for n in 0..100 {
        let mut backup = name.to_os_string();
        backup.push(if n == 0 {
            format!(".invalid-{secs}")
        } else {
            format!(".invalid-{secs}-{n}")
        });
        if exists(dir, &backup)?.is_some() {
            continue;
        }
        renameat(dir, name, dir, backup.as_os_str()).map_err(|e| io("move aside", shown, e))?;
        return Ok(backup.to_string_lossy().into_owned());
    }
    Err(Error::Sandbox(format!(
        "cannot find a free backup name for {}",
        shown.display()
    )))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::{symlink, PermissionsExt};

    fn tmpdir(tag: &str) -> std::path::PathBuf {
        let d = std::env::temp_dir().join(format!("si-files-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    fn open(d: &Path) -> OwnedFd {
        nix::fcntl::open(d, DIR_FLAGS, Mode::empty()).unwrap()
    }

    // These run as whoever runs `cargo test`: they check link handling, not privileges.
    #[test]
    fn atomic_write_replaces_a_symlink_and_never_touches_its_target() {
        let d = tmpdir("symlink");
        let target = d.join("target");
        std::fs::write(&target, "precious").unwrap();
        symlink(&target, d.join("f")).unwrap();
        let fd = open(&d);
        assert!(matches!(
            read_existing(fd.as_fd(), OsStr::new("f"), &d).unwrap(),
            Found::Symlink
        ));
        write_atomic(fd.as_fd(), OsStr::new("f"), b"new", 0o600, &d).unwrap();
        assert_eq!(std::fs::read_to_string(&target).unwrap(), "precious");
        let meta = std::fs::symlink_metadata(d.join("f")).unwrap();
        assert!(meta.file_type().is_file());
        assert_eq!(meta.permissions().mode() & 0o7777, 0o600);
        assert_eq!(std::fs::read_to_string(d.join("f")).unwrap(), "new");
        // no temporary file left behind
        assert_eq!(std::fs::read_dir(&d).unwrap().count(), 2);
        std::fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn a_symlinked_directory_is_refused() {
        let d = tmpdir("dirlink");
        std::fs::create_dir(d.join("real")).unwrap();
        symlink(d.join("real"), d.join("link")).unwrap();
        let fd = open(&d);
        let uid = nix::unistd::geteuid().as_raw();
        let e = ensure_dir(fd.as_fd(), OsStr::new("link"), uid, &d.join("link")).unwrap_err();
        assert!(
            matches!(e, Error::Config(ref m) if m.contains("symlink")),
            "{e}"
        );
        let e = open_owned_dir(&d.join("link"), uid).unwrap_err();
        assert!(
            matches!(e, Error::Config(ref m) if m.contains("symlink")),
            "{e}"
        );
        // owned by someone else
        let e = ensure_dir(fd.as_fd(), OsStr::new("real"), uid + 1, &d).unwrap_err();
        assert!(
            matches!(e, Error::Config(ref m) if m.contains("owned by")),
            "{e}"
        );
        // created when missing, 0700
        ensure_dir(fd.as_fd(), OsStr::new("new"), uid, &d).unwrap();
        let mode = std::fs::metadata(d.join("new"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o700);
        std::fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn malformed_files_are_moved_aside_not_lost() {
        let d = tmpdir("aside");
        std::fs::write(d.join("s.json"), "{broken").unwrap();
        let fd = open(&d);
        let b = move_aside(fd.as_fd(), OsStr::new("s.json"), &d).unwrap();
        assert_eq!(std::fs::read_to_string(d.join(&b)).unwrap(), "{broken");
        std::fs::write(d.join("s.json"), "{again").unwrap();
        let b2 = move_aside(fd.as_fd(), OsStr::new("s.json"), &d).unwrap();
        assert_ne!(b, b2);
        assert!(!d.join("s.json").exists());
        std::fs::remove_dir_all(&d).unwrap();
    }
}
