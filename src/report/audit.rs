//! The audit log (`--audit-log PATH`): every blocked packet and denied name, duplicates
//! included, as one JSON object per line, for tools. Opened by PID 1 as root before the
//! command starts; the command can never write it.
//!
//! The path is given at `docker run` and may lie in a directory the sandboxed user owns
//! (the workspace, kept across sessions): every component is opened with O_NOFOLLOW (a
//! planted symlink is refused, never followed), an existing file must be a regular,
//! root-owned, singly linked file nobody else can write (a planted hard link to a system
//! file is refused), and a new file is created 0600.

use super::{endpoint, shown_name, suggestion, Event};
use crate::allowlist::Suggestion;
use crate::error::{Error, Result};
use nix::errno::Errno;
use nix::fcntl::{openat, OFlag};
use nix::sys::stat::{fchmod, fstat, Mode};
use std::fs::File;
use std::io::{BufWriter, Write};
use std::os::fd::{AsFd, OwnedFd};
use std::path::{Component, Path};
use std::time::{SystemTime, UNIX_EPOCH};

/// `time` in RFC 3339, UTC, milliseconds: `2025-01-31T12:00:00.123Z`.
pub fn rfc3339(t: SystemTime) -> String {
    let d = t.duration_since(UNIX_EPOCH).unwrap_or_default();
    let secs = d.as_secs();
    let (days, rem) = (secs / 86_400, secs % 86_400);
    // Howard Hinnant's civil_from_days, for days since 1970-01-01 (never negative here).
    let z = days as i64 + 719_468;
    let era = z / 146_097;
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:03}Z",
        rem / 3600,
        rem / 60 % 60,
        rem % 60,
        d.subsec_millis()
    )
}

/// The JSON object of one event (also used for the recent list of the status file).
/// `name` is printed escaped (`shown_name`): the sandboxed command chose it; `allow` is
/// the entry that would allow the event (a `Suggestion`), or null when no entry can.
pub fn json(event: &Event, name: Option<&str>, time: SystemTime) -> serde_json::Value {
    use serde_json::json;
    match event {
        Event::Blocked { proto, addr, port } => json!({
            "time": rfc3339(time),
            "event": "blocked",
            "proto": proto.to_string(),
            "addr": addr.to_string(),
            "port": port,
            "name": name.map(shown_name),
            "endpoint": endpoint(*addr, *port),
            "allow": suggestion(*proto, *addr, *port, name).map(|s| s.as_str().to_string()),
        }),
        Event::DeniedName { name } => json!({
            "time": rfc3339(time),
            "event": "denied_name",
            "proto": "dns",
            "addr": null,
            "port": null,
            "name": shown_name(name),
            "allow": Suggestion::for_name(name).map(|s| s.as_str().to_string()),
        }),
    }
}

/// The open log. Writes are buffered and flushed after each batch of events; a failing
/// write is reported once and never stops PID 1.
#[derive(Debug)]
pub struct AuditLog {
    out: BufWriter<File>,
    shown: String,
    failed: bool,
    pub written: u64,
}

impl AuditLog {
    pub fn open(path: &Path) -> Result<AuditLog> {
        let fd = open_append(path)?;
        Ok(AuditLog {
            out: BufWriter::with_capacity(64 << 10, File::from(fd)),
            shown: path.display().to_string(),
            failed: false,
            written: 0,
        })
    }

    pub fn write(&mut self, event: &Event, name: Option<&str>, time: SystemTime) {
        let mut line = json(event, name, time).to_string();
        line.push('\n');
        let r = self.out.write_all(line.as_bytes());
        self.check(r);
        self.written += 1;
    }

    pub fn flush(&mut self) {
        let r = self.out.flush();
        self.check(r);
    }

    fn check(&mut self, r: std::io::Result<()>) {
        if let Err(e) = r {
            if !self.failed {
                log::warn!("cannot write the audit log {}: {e}", self.shown);
                self.failed = true;
            }
        }
    }
}

fn refuse(path: &Path, why: &str) -> Error {
    Error::Config(format!(
        "audit log {}: {why}; refusing to write it as root (it may have been planted). Give \
         a path in a directory only root can write, e.g. a volume at /var/log/sandbox-init",
        path.display()
    ))
}

/// Opens `path` for appending (O_APPEND|O_CLOEXEC|O_NOFOLLOW), creating it 0600, walking
/// every directory with O_NOFOLLOW from `/`.
pub fn open_append(path: &Path) -> Result<OwnedFd> {
    if !path.is_absolute() {
        return Err(refuse(path, "is not an absolute path"));
    }
    let Some(name) = path.file_name() else {
        return Err(refuse(path, "names no file"));
    };
    let dir_flags = OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC;
    let io = |what: &str, e: Errno| {
        Error::Config(format!("audit log {}: cannot {what}: {e}", path.display()))
    };
    let mut dir: OwnedFd =
        nix::fcntl::open("/", dir_flags, Mode::empty()).map_err(|e| io("open /", e))?;
    let parent = path.parent().unwrap_or(Path::new("/"));
    for c in parent.components() {
        match c {
            Component::RootDir => {}
            Component::Normal(part) => {
                dir = match openat(&dir, part, dir_flags, Mode::empty()) {
                    Ok(d) => d,
                    Err(Errno::ELOOP) | Err(Errno::ENOTDIR) => {
                        return Err(refuse(
                            path,
                            &format!("{} is a symlink or not a directory", part.to_string_lossy()),
                        ))
                    }
                    Err(e) => {
                        return Err(io(
                            &format!("open the directory {}", part.to_string_lossy()),
                            e,
                        ))
                    }
                }
            }
            _ => return Err(refuse(path, "contains . or ..")),
        }
    }
    // O_NONBLOCK: a FIFO planted at the name must not hang PID 1 (no effect on files).
    let flags = OFlag::O_WRONLY
        | OFlag::O_APPEND
        | OFlag::O_CREAT
        | OFlag::O_NOFOLLOW
        | OFlag::O_CLOEXEC
        | OFlag::O_NONBLOCK;
    // O_EXCL first: whether we created the file is then known, not guessed from an
    // earlier stat that a planted file could race.
    let mode = Mode::from_bits_truncate(0o600);
    let (fd, existed) = match openat(&dir, name, flags | OFlag::O_EXCL, mode) {
        Ok(fd) => (fd, false),
        Err(Errno::EEXIST) => match openat(&dir, name, flags - OFlag::O_CREAT, mode) {
            Ok(fd) => (fd, true),
            Err(Errno::ELOOP) => return Err(refuse(path, "is a symlink")),
            Err(Errno::ENXIO) => return Err(refuse(path, "is not a regular file")),
            Err(e) => return Err(io("open", e)),
        },
        Err(e) => return Err(io("create", e)),
    };
    let st = fstat(fd.as_fd()).map_err(|e| io("stat", e))?;
    if st.st_mode & libc::S_IFMT != libc::S_IFREG {
        return Err(refuse(path, "is not a regular file"));
    }
    if existed {
        let me = nix::unistd::geteuid().as_raw();
        if st.st_uid != me {
            return Err(refuse(
                path,
                &format!("is owned by uid {}, not uid {me}", st.st_uid),
            ));
        }
        if st.st_mode & 0o022 != 0 {
            return Err(refuse(path, "is writable by group or others"));
        }
        if st.st_nlink != 1 {
            return Err(refuse(path, "has more than one hard link"));
        }
    } else {
        // The umask may have narrowed the mode; the contract says 0600.
        fchmod(fd.as_fd(), Mode::from_bits_truncate(0o600))
            .map_err(|e| io("set the mode of", e))?;
    }
    // Back to blocking writes: appends to a regular file never wait long.
    let fl = nix::fcntl::fcntl(&fd, nix::fcntl::FcntlArg::F_GETFL).map_err(|e| io("fcntl", e))?;
    let fl = OFlag::from_bits_truncate(fl) - OFlag::O_NONBLOCK;
    nix::fcntl::fcntl(&fd, nix::fcntl::FcntlArg::F_SETFL(fl)).map_err(|e| io("fcntl", e))?;
    Ok(fd)
}

/// Whether the sandboxed user can remove or replace the log (its directory is theirs or
/// writable by them): worth a warning, since PID 1 would go on writing an unlinked file.
pub fn dir_writable_by(path: &Path, uids: &[u32], groups: &[u32]) -> bool {
    use std::os::unix::fs::MetadataExt;
    let Some(parent) = path.parent() else {
        return false;
    };
    match std::fs::symlink_metadata(parent) {
        Ok(m) => {
            let sticky = m.mode() & 0o1000 != 0;
            uids.contains(&m.uid())
                || (!sticky && m.mode() & 0o020 != 0 && groups.contains(&m.gid()))
                || (!sticky && m.mode() & 0o002 != 0)
        }
        Err(_) => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::Proto;
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    use std::time::Duration;

    #[test]
    fn time_is_rfc3339_utc() {
        assert_eq!(rfc3339(UNIX_EPOCH), "1970-01-01T00:00:00.000Z");
        let t = UNIX_EPOCH + Duration::from_millis(1_709_210_096_789);
        assert_eq!(rfc3339(t), "2024-02-29T12:34:56.789Z");
        let t = UNIX_EPOCH + Duration::from_secs(4_102_444_799);
        assert_eq!(rfc3339(t), "2099-12-31T23:59:59.000Z");
    }

    #[test]
    fn json_lines_carry_the_contract_fields() {
        let t = UNIX_EPOCH + Duration::from_secs(86_400);
        let e = Event::Blocked {
            proto: Proto::Tcp,
            addr: "fd77::11".parse().unwrap(),
            port: Some(443),
        };
        let v = json(&e, Some("other.test"), t);
        assert_eq!(v["event"], "blocked");
        assert_eq!(v["proto"], "tcp");
        assert_eq!(v["addr"], "fd77::11");
        assert_eq!(v["port"], 443);
        assert_eq!(v["name"], "other.test");
        assert_eq!(v["time"], "1970-01-02T00:00:00.000Z");
        assert_eq!(v["allow"], "other.test:443");
        assert_eq!(v["endpoint"], "[fd77::11]:443");
        let v = json(
            &Event::DeniedName {
                name: "x.test".into(),
            },
            None,
            t,
        );
        assert_eq!(v["event"], "denied_name");
        assert_eq!(v["name"], "x.test");
        assert_eq!(v["allow"], "x.test");
        for k in ["event", "proto", "addr", "port", "name", "time"] {
            assert!(v.get(k).is_some(), "{k}");
        }
    }

    fn tmp(tag: &str) -> std::path::PathBuf {
        let d = std::env::temp_dir().join(format!("sbx-audit-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    #[test]
    fn new_file_is_0600_appended_and_links_are_refused() {
        let d = tmp("open");
        let p = d.join("audit.jsonl");
        let mut log = AuditLog::open(&p).unwrap();
        let e = Event::DeniedName {
            name: "a.test".into(),
        };
        log.write(&e, None, UNIX_EPOCH);
        log.write(&e, None, UNIX_EPOCH);
        log.flush();
        let m = std::fs::metadata(&p).unwrap();
        assert_eq!(m.permissions().mode() & 0o7777, 0o600);
        let text = std::fs::read_to_string(&p).unwrap();
        assert_eq!(text.lines().count(), 2);
        for l in text.lines() {
            serde_json::from_str::<serde_json::Value>(l).unwrap();
        }
        // reopening appends
        drop(log);
        let mut log = AuditLog::open(&p).unwrap();
        log.write(&e, None, UNIX_EPOCH);
        log.flush();
        assert_eq!(std::fs::read_to_string(&p).unwrap().lines().count(), 3);

        // a symlink at the name or in a directory above: refused, target untouched
        let target = d.join("target");
        std::fs::write(&target, "keep").unwrap();
        let link = d.join("link.jsonl");
        std::os::unix::fs::symlink(&target, &link).unwrap();
        assert!(AuditLog::open(&link).is_err());
        std::os::unix::fs::symlink(&d, d.join("dirlink")).unwrap();
        assert!(AuditLog::open(&d.join("dirlink/x.jsonl")).is_err());
        assert_eq!(std::fs::read_to_string(&target).unwrap(), "keep");
        // a hard link to another file is refused
        let hard = d.join("hard.jsonl");
        std::fs::hard_link(&target, &hard).unwrap();
        let err = AuditLog::open(&hard).err().unwrap().to_string();
        assert!(err.contains("hard link"), "{err}");
        // a FIFO does not hang
        nix::unistd::mkfifo(&d.join("fifo"), Mode::from_bits_truncate(0o600)).unwrap();
        assert!(AuditLog::open(&d.join("fifo")).is_err());
        assert!(AuditLog::open(Path::new("relative.jsonl")).is_err());
        let _ = std::fs::remove_dir_all(&d);
    }

    #[test]
    fn a_file_others_can_write_is_refused() {
        let d = tmp("perm");
        let p = d.join("audit.jsonl");
        std::fs::write(&p, "").unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o666)).unwrap();
        assert!(AuditLog::open(&p).is_err());
        if std::fs::metadata(&p).unwrap().uid() == 0 {
            std::os::unix::fs::chown(&p, Some(1000), None).unwrap();
            std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o600)).unwrap();
            let err = AuditLog::open(&p).err().unwrap().to_string();
            assert!(err.contains("uid 1000"), "{err}");
        }
        let _ = std::fs::remove_dir_all(&d);
    }
}
