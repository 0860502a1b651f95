//! File operations that cannot be turned against us by links: directories are reached with
//! `openat(O_NOFOLLOW)` one component at a time, files are read with `O_NOFOLLOW` and
//! written to a fresh temporary file (`O_CREAT|O_EXCL|O_NOFOLLOW`, under a random name) in
//! the same directory, then renamed over the final name, which replaces a planted symlink
//! without opening its target. Used by the as-user credential writer and by the lockdown
//! (as root, in /etc).
//!
//! Nor can the volume stop a start: whatever an earlier session left at a name we use and
//! cannot use (a FIFO, a directory, a socket, a file too big to parse or that we may not
//! read) is moved aside under a new name, with a warning, and the start goes on; only
//! when even that fails is the start refused, naming the path to remove.

use crate::sys::{Cause, Failure};
use nix::errno::Errno;
use nix::fcntl::{openat, renameat, OFlag};
use nix::sys::stat::{fchmod, fstat, fstatat, mkdirat, FileStat, Mode};
use nix::unistd::{unlinkat, UnlinkatFlags};
use std::ffi::OsStr;
use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::Path;

/// What the link-proof layer reports.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// What stands at a path may not be used as it is (a link, a device, another owner, no
    /// way to move it aside): the user's input to fix.
    #[error("{0}")]
    Refused(String),
    /// The kernel refused an operation on a path that was fine.
    #[error(transparent)]
    Os(#[from] Failure),
}

impl Error {
    pub fn os(what: String, source: impl Into<Cause>) -> Error {
        Error::Os(Failure::new(what, source))
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Larger existing files are refused rather than read into PID 1's memory (the lockdown's
/// /etc files).
pub const READ_LIMIT: u64 = 64 << 20;

/// Larger JSON files in the home are moved aside rather than parsed: a parsed document
/// takes many times its size in memory (2 bytes of `[0,0,...]` become a 32-byte value), and
/// a writer killed under a container's memory limit would stop every start. Claude Code
/// keeps its history in other files; its `.claude.json` is typically kilobytes.
pub const PARSE_LIMIT: u64 = 4 << 20;

const DIR_FLAGS: OFlag = OFlag::O_RDONLY
    .union(OFlag::O_DIRECTORY)
    .union(OFlag::O_NOFOLLOW)
    .union(OFlag::O_CLOEXEC);

fn io(what: &str, path: &Path, e: Errno) -> Error {
    Error::os(format!("cannot {what} {}", path.display()), e)
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
    Error::Refused(format!(
        "{} {why}; refusing to write credentials through it (it may have been planted in \
         an earlier session). Remove it or fix its owner, then start again",
        path.display()
    ))
}

/// Opens an existing directory that must be a real directory owned by `uid` (the home).
/// Only the last component is checked for links: the ones above belong to the image.
pub fn open_owned_dir(path: &Path, uid: u32) -> Result<OwnedFd> {
    let opened = match nix::fcntl::open(path, DIR_FLAGS, Mode::empty()) {
        // An earlier session made its own home unreadable: its owner may undo that.
        Err(Errno::EACCES) if add_owner_bits(nix::fcntl::AT_FDCWD, path, 0o700).is_ok() => {
            log::warn!("{} was closed to its owner: gave it u+rwx", path.display());
            nix::fcntl::open(path, DIR_FLAGS, Mode::empty())
        }
        other => other,
    };
    match opened {
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
    let create = || {
        match mkdirat(parent, name, Mode::S_IRWXU) {
            Ok(()) | Err(Errno::EEXIST) => {}
            Err(e) => return Err(io("create the directory", shown, e)),
        }
        Ok(open())
    };
    let fd = match open() {
        Err(Errno::ENOENT) => create()?,
        // A file, FIFO or socket where the directory belongs (not a symlink: that is
        // refused below): moved aside, and the directory made.
        Err(Errno::ENOTDIR)
            if fstatat(parent, name, nix::fcntl::AtFlags::AT_SYMLINK_NOFOLLOW)
                .is_ok_and(|st| !is_type(&st, libc::S_IFLNK)) =>
        {
            let st = fstatat(parent, name, nix::fcntl::AtFlags::AT_SYMLINK_NOFOLLOW)
                .map_err(|e| io("stat", shown, e))?;
            let backup = move_aside(parent, name, shown).map_err(|e| match e {
                Error::Refused(m) => {
                    Error::Refused(format!("{} {}; {m}", shown.display(), kind(&st)))
                }
                other => other,
            })?;
            log::warn!(
                "{} {}: moved it aside as {backup} and made the directory",
                shown.display(),
                kind(&st)
            );
            create()?
        }
        Err(Errno::EACCES) if add_owner_bits(parent, name, 0o700).is_ok() => {
            log::warn!("{} was closed to its owner: gave it u+rwx", shown.display());
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
            return Err(Error::Refused(format!(
                "{} is a socket or device, not a file; remove it",
                shown.display()
            )))
        }
        Err(e) => return Err(io("open", shown, e)),
    };
    let st = fstat(&fd).map_err(|e| io("stat", shown, e))?;
    if !is_type(&st, libc::S_IFREG) {
        return Err(Error::Refused(format!(
            "{} is not a regular file; remove it",
            shown.display()
        )));
    }
    if st.st_size as u64 > READ_LIMIT {
        return Err(Error::Refused(format!(
            "{} is larger than {} MiB; move it away",
            shown.display(),
            READ_LIMIT >> 20
        )));
    }
    let dup = fd
        .try_clone()
        .map_err(|e| Error::os("cannot duplicate a descriptor".into(), e))?;
    let mut bytes = Vec::with_capacity(st.st_size as usize);
    File::from(dup)
        .take(READ_LIMIT)
        .read_to_end(&mut bytes)
        .map_err(|e| Error::os(format!("cannot read {}", shown.display()), e))?;
    Ok(Found::File(bytes, fd))
}

/// Whether anything (file, link, directory) exists at `name`, without following it.
pub fn exists(dir: BorrowedFd<'_>, name: &OsStr) -> Result<Option<FileStat>> {
    match fstatat(dir, name, nix::fcntl::AtFlags::AT_SYMLINK_NOFOLLOW) {
        Ok(st) => Ok(Some(st)),
        Err(Errno::ENOENT) => Ok(None),
        Err(e) => Err(Error::os(format!("cannot stat {name:?}"), e)),
    }
}

/// 64 random bits as hex: names an earlier session cannot have planted anything at.
fn random_hex() -> Result<String> {
    let mut b = [0u8; 8];
    super::random_bytes(&mut b)
        .map_err(|e| Error::os("cannot get random bytes for a temporary name".into(), e))?;
    Ok(b.iter().map(|x| format!("{x:02x}")).collect())
}

fn temp_name(name: &OsStr) -> Result<std::ffi::OsString> {
    let mut t = std::ffi::OsString::from(".");
    t.push(name);
    t.push(format!(".sandbox-init-{}.tmp", random_hex()?));
    Ok(t)
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
    let flags =
        OFlag::O_WRONLY | OFlag::O_CREAT | OFlag::O_EXCL | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC;
    let m = Mode::from_bits_truncate(mode);
    let mut tmp = temp_name(name)?;
    let mut tries = 0;
    let fd = loop {
        match openat(dir, tmp.as_os_str(), flags, m) {
            Err(Errno::EEXIST) if tries < 8 => {
                tries += 1;
                tmp = temp_name(name)?;
            }
            other => break other,
        }
    }
    .map_err(|e| io("create a temporary file for", shown, e))?;
    let mut f = File::from(fd);
    let mut finish = || {
        // The umask may have narrowed the mode; the exact mode is part of the contract.
        fchmod(f.as_fd(), m).map_err(|e| io("set the mode of", shown, e))?;
        f.write_all(bytes)
            .and_then(|()| f.sync_all())
            .map_err(|e| Error::os(format!("cannot write {}", shown.display()), e))?;
        renameat(dir, tmp.as_os_str(), dir, name).map_err(|e| io("rename into place", shown, e))
    };
    let result = finish();
    if result.is_err() {
        let _ = unlinkat(dir, tmp.as_os_str(), UnlinkatFlags::NoRemoveDir);
    }
    result
}

/// rename(2) that never replaces what is at `to` (RENAME_NOREPLACE); where the file system
/// cannot say, a check right before a plain rename.
fn rename_noreplace(
    dir: BorrowedFd<'_>,
    from: &OsStr,
    to: &OsStr,
) -> std::result::Result<(), Errno> {
    use std::os::unix::ffi::OsStrExt;
    if from.as_bytes().contains(&0) || to.as_bytes().contains(&0) {
        return Err(Errno::EINVAL);
    }
    let noreplace = rustix::fs::RenameFlags::NOREPLACE;
    let rc = rustix::fs::renameat_with(dir, from, dir, to, noreplace)
        .map_err(|e| Errno::from_raw(e.raw_os_error()));
    match rc {
        Ok(()) => Ok(()),
        Err(Errno::EINVAL) | Err(Errno::ENOSYS) => {
            if fstatat(dir, to, nix::fcntl::AtFlags::AT_SYMLINK_NOFOLLOW).is_ok() {
                return Err(Errno::EEXIST);
            }
            renameat(dir, from, dir, to)
        }
        Err(e) => Err(e),
    }
}

/// Moves `name` aside to `name.invalid-<time>-<random>` and returns that name. Failing
/// that, the error names the path to remove.
pub fn move_aside(dir: BorrowedFd<'_>, name: &OsStr, shown: &Path) -> Result<String> {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let mut last = Errno::EEXIST;
    for _ in 0..8 {
        let mut backup = name.to_os_string();
        backup.push(format!(".invalid-{secs}-{}", &random_hex()?[..8]));
        match rename_noreplace(dir, name, &backup) {
            Ok(()) => return Ok(backup.to_string_lossy().into_owned()),
            Err(Errno::EEXIST) => last = Errno::EEXIST,
            Err(e) => {
                last = e;
                break;
            }
        }
    }
    Err(Error::Refused(format!(
        "cannot move {} aside ({last}); remove {} and start again",
        shown.display(),
        shown.display()
    )))
}

fn kind(st: &FileStat) -> &'static str {
    match st.st_mode & libc::S_IFMT {
        libc::S_IFDIR => "is a directory",
        libc::S_IFIFO => "is a FIFO",
        libc::S_IFSOCK => "is a socket",
        libc::S_IFCHR | libc::S_IFBLK => "is a device",
        _ => "is not a regular file",
    }
}

/// Gives the owner `bits` on an entry we may not otherwise open (an earlier session can
/// leave its own files and directories mode 0000): through an O_PATH descriptor, so the
/// name is resolved once and never through a link. `path` is relative to `dir`, or
/// absolute (then `dir` is ignored).
fn add_owner_bits<P: ?Sized + nix::NixPath>(
    dir: BorrowedFd<'_>,
    path: &P,
    bits: u32,
) -> std::result::Result<(), Errno> {
    use std::os::fd::AsRawFd;
    let fd = openat(
        dir,
        path,
        OFlag::O_PATH | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
        Mode::empty(),
    )?;
    let st = fstat(&fd)?;
    if st.st_uid != nix::unistd::geteuid().as_raw() || is_type(&st, libc::S_IFLNK) {
        return Err(Errno::EPERM);
    }
    let mode = Mode::from_bits_truncate((st.st_mode & 0o7777) | bits);
    let magic = format!("/proc/self/fd/{}", fd.as_raw_fd());
    nix::sys::stat::fchmodat(
        nix::fcntl::AT_FDCWD,
        magic.as_str(),
        mode,
        nix::sys::stat::FchmodatFlags::FollowSymlink,
    )
}

/// As `read_existing`, for a file in the user's tree that an earlier session may have
/// shaped: anything that is neither a regular file we can read (within `limit` bytes;
/// `None` = do not read it) nor a symlink is moved aside with a warning, and reads as
/// absent. A FIFO is never opened for reading, a device never opened at all.
pub fn read_or_set_aside(
    dir: BorrowedFd<'_>,
    name: &OsStr,
    shown: &Path,
    limit: Option<u64>,
) -> Result<Found> {
    let set_aside = |why: String| -> Result<Found> {
        let backup = move_aside(dir, name, shown).map_err(|e| match e {
            Error::Refused(m) => Error::Refused(format!("{} {why}; {m}", shown.display())),
            other => other,
        })?;
        log::warn!(
            "{} {why}: moved it aside as {backup} and went on without it",
            shown.display()
        );
        Ok(Found::Absent)
    };
    let st = match fstatat(dir, name, nix::fcntl::AtFlags::AT_SYMLINK_NOFOLLOW) {
        Ok(st) => st,
        Err(Errno::ENOENT) => return Ok(Found::Absent),
        Err(e) => return Err(io("stat", shown, e)),
    };
    if is_type(&st, libc::S_IFLNK) {
        return Ok(Found::Symlink);
    }
    if !is_type(&st, libc::S_IFREG) {
        return set_aside(kind(&st).into());
    }
    let too_big = |size: u64| {
        limit.filter(|l| size > *l).map(|l| {
            format!(
                "is larger than the {} MiB sandbox-init reads ({} MiB)",
                l >> 20,
                size >> 20
            )
        })
    };
    if let Some(why) = too_big(st.st_size as u64) {
        return set_aside(why);
    }
    let flags = OFlag::O_RDONLY
        | OFlag::O_NOFOLLOW
        | OFlag::O_NONBLOCK
        | OFlag::O_NOCTTY
        | OFlag::O_CLOEXEC;
    let fd = match openat(dir, name, flags, Mode::empty()) {
        Err(Errno::EACCES) if add_owner_bits(dir, name, 0o600).is_ok() => {
            log::warn!(
                "{} was not readable by its owner: made it 0600",
                shown.display()
            );
            openat(dir, name, flags, Mode::empty())
        }
        other => other,
    };
    let fd = match fd {
        Ok(fd) => fd,
        Err(Errno::ENOENT) => return Ok(Found::Absent),
        Err(Errno::ELOOP) => return Ok(Found::Symlink),
        Err(e) => return set_aside(format!("cannot be opened ({e})")),
    };
    // Checked again on what was opened: the name may have changed in between.
    let st = fstat(&fd).map_err(|e| io("stat", shown, e))?;
    if !is_type(&st, libc::S_IFREG) {
        return set_aside(kind(&st).into());
    }
    let Some(limit) = limit else {
        return Ok(Found::File(vec![], fd));
    };
    let dup = fd
        .try_clone()
        .map_err(|e| Error::os("cannot duplicate a descriptor".into(), e))?;
    let mut bytes = Vec::with_capacity(st.st_size as usize);
    File::from(dup)
        .take(limit + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| Error::os(format!("cannot read {}", shown.display()), e))?;
    if let Some(why) = too_big(bytes.len() as u64) {
        return set_aside(why);
    }
    Ok(Found::File(bytes, fd))
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
            matches!(e, Error::Refused(ref m) if m.contains("symlink")),
            "{e}"
        );
        let e = open_owned_dir(&d.join("link"), uid).unwrap_err();
        assert!(
            matches!(e, Error::Refused(ref m) if m.contains("symlink")),
            "{e}"
        );
        // owned by someone else
        let e = ensure_dir(fd.as_fd(), OsStr::new("real"), uid + 1, &d).unwrap_err();
        assert!(
            matches!(e, Error::Refused(ref m) if m.contains("owned by")),
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
    fn what_cannot_be_used_is_moved_aside_and_reads_as_absent() {
        let d = tmpdir("unusable");
        let fd = open(&d);
        let read = |name: &str, limit| {
            read_or_set_aside(fd.as_fd(), OsStr::new(name), &d.join(name), limit).unwrap()
        };
        nix::unistd::mkfifo(&d.join("fifo"), Mode::from_bits_truncate(0o600)).unwrap();
        std::fs::create_dir(d.join("dir")).unwrap();
        std::os::unix::net::UnixListener::bind(d.join("sock")).unwrap();
        std::fs::write(d.join("big"), "0123456789a").unwrap();
        std::fs::write(d.join("ok"), "0123456789").unwrap();
        symlink("/etc/passwd", d.join("link")).unwrap();
        // a FIFO is never opened for reading: no writer, and this returns at once
        for name in ["fifo", "dir", "sock"] {
            assert!(matches!(read(name, Some(10)), Found::Absent), "{name}");
            assert!(!d.join(name).exists(), "{name} still there");
        }
        assert!(matches!(read("big", Some(10)), Found::Absent));
        assert!(matches!(read("big", None), Found::Absent), "nothing left");
        assert!(matches!(read("ok", Some(10)), Found::File(b, _) if b == b"0123456789"));
        assert!(matches!(read("link", Some(10)), Found::Symlink));
        assert!(matches!(read("missing", Some(10)), Found::Absent));
        // all kept, under new names
        let names: Vec<String> = std::fs::read_dir(&d)
            .unwrap()
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| n.contains(".invalid-"))
            .collect();
        assert_eq!(names.len(), 4, "{names:?}");
        for prefix in ["fifo.", "dir.", "sock.", "big."] {
            assert!(
                names.iter().any(|n| n.starts_with(prefix)),
                "{prefix}: {names:?}"
            );
        }
        std::fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn temporary_names_cannot_be_guessed() {
        let a = temp_name(OsStr::new("x.json")).unwrap();
        let b = temp_name(OsStr::new("x.json")).unwrap();
        assert_ne!(a, b);
        let a = a.to_string_lossy();
        assert!(
            a.starts_with(".x.json.sandbox-init-") && a.ends_with(".tmp"),
            "{a}"
        );
        assert_eq!(a.len(), ".x.json.sandbox-init-".len() + 16 + 4);
        // something at the name of a rename target is never replaced by a backup
        let d = tmpdir("noreplace");
        let fd = open(&d);
        std::fs::write(d.join("a"), "a").unwrap();
        std::fs::write(d.join("b"), "b").unwrap();
        assert_eq!(
            rename_noreplace(fd.as_fd(), OsStr::new("a"), OsStr::new("b")),
            Err(Errno::EEXIST)
        );
        assert_eq!(std::fs::read_to_string(d.join("b")).unwrap(), "b");
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
