//! The audit log (`--audit-log PATH`): blocked packets and denied names as one JSON object
//! per line, for tools. The first occurrence of every destination is its own line (within
//! bounds: see `Aggregator`); repeats, and what the bounds held back, are counted in
//! summary lines at most once a second, so a flood cannot fill the disk; the file is
//! rotated once at `MAX_BYTES`. Opened by PID 1 as root before the command starts; the
//! command can never write it.
//!
//! The path is given at `docker run` and may lie in a directory the sandboxed user owns
//! (the workspace, kept across sessions): every component is opened with O_NOFOLLOW (a
//! planted symlink is refused, never followed), an existing file must be a regular,
//! root-owned, singly linked file nobody else can write (a planted hard link to a system
//! file is refused), and a new file is created 0600.

use super::{endpoint, shown_name, suggestion, Event};
use crate::policy::allowlist::Suggestion;
use nix::errno::Errno;
use nix::fcntl::{openat, OFlag};
use nix::sys::stat::{fchmod, fstat, Mode};
use std::collections::{HashMap, HashSet};
use std::fs::File;
use std::io::Write;
use std::os::fd::{AsFd, OwnedFd};
use std::path::{Component, Path};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// Why the audit log cannot be written: the path given is not one root may write safely.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{0}")]
    Unusable(String),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// `time` in RFC 3339, UTC, milliseconds: `2025-01-31T12:00:00.123Z`.
pub fn rfc3339(t: SystemTime) -> String {
    // Before 1970 (a clock set wrong) prints as the epoch, as the audit log always has.
    humantime::format_rfc3339_millis(t.max(UNIX_EPOCH)).to_string()
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

/// Each log file is kept under this size: past it, PATH becomes PATH.1 (replacing an
/// older one) and a new PATH starts. The log never takes more than twice this.
pub const MAX_BYTES: u64 = 16 << 20;
/// Distinct destinations of one group (a parent domain, an address) written one by one;
/// beyond, they are counted in the group's summary.
pub const GROUP_DETAIL: u64 = 100;
/// First occurrences written one by one: a burst, then a steady pace, over all groups.
const FIRST_BURST: f64 = 1000.0;
const FIRST_PER_SEC: f64 = 100.0;
/// Summaries (repeats, and what the limits above held back) at most this often, at most
/// this many lines each time (the rest in one `others` line).
pub const SUMMARY_EVERY: Duration = Duration::from_secs(1);
const SUMMARY_LINES: usize = 50;
/// Memory bounds: destinations remembered as seen, groups and pending repeat counts kept.
const SEEN_MAX: usize = 65_536;
const GROUPS_MAX: usize = 4096;
const REPEATS_MAX: usize = 4096;
/// Chunks of lines waiting for the writer thread; beyond, a chunk is dropped (counted).
const QUEUE: usize = 256;
/// A chunk goes to the writer when it reaches this size (or at the next flush).
const CHUNK: usize = 64 << 10;

/// What a log line is grouped under: the parent domain of a denied name (the name
/// without its first label: random labels under one domain are one group), the address
/// of a blocked destination (its ports and protocols).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum GroupKey {
    Domain(String),
    Addr(std::net::IpAddr),
}

#[derive(Debug)]
struct Group {
    /// Distinct destinations seen, written one by one, and not written yet.
    distinct: u64,
    detailed: u64,
    new_pending: u64,
    /// Events since the last summary and in all.
    events_pending: u64,
    events: u64,
    first: SystemTime,
    /// The name to show for an address group (when it came from an allowlisted name).
    name: Option<String>,
}

/// Decides what goes into the log: the first occurrence of a destination as its own
/// line (within the limits above), everything else as counts in summaries. Pure (time
/// is passed in), so its bounds are unit-tested.
#[derive(Debug)]
struct Aggregator {
    seen: HashSet<u64>,
    groups: HashMap<GroupKey, Group>,
    /// Repeats of a destination since the last summary.
    repeats: HashMap<Event, (u64, Option<String>)>,
    /// Events that fit none of the maps (their bounds were reached).
    unsorted: u64,
    tokens: f64,
    refilled: Option<Instant>,
    last_summary: Option<Instant>,
    dirty: bool,
}

impl Default for Aggregator {
    fn default() -> Self {
        Aggregator {
            seen: HashSet::new(),
            groups: HashMap::new(),
            repeats: HashMap::new(),
            unsorted: 0,
            tokens: FIRST_BURST,
            refilled: None,
            last_summary: None,
            dirty: false,
        }
    }
}

fn event_hash(e: &Event) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    e.hash(&mut h);
    h.finish()
}

fn group_of(e: &Event) -> GroupKey {
    match e {
        Event::Blocked { addr, .. } => GroupKey::Addr(*addr),
        Event::DeniedName { name } => GroupKey::Domain(super::parent_domain(name).to_string()),
    }
}

impl Aggregator {
    fn take_token(&mut self, now: Instant) -> bool {
        if let Some(t) = self.refilled {
            let add = now.saturating_duration_since(t).as_secs_f64() * FIRST_PER_SEC;
            self.tokens = (self.tokens + add).min(FIRST_BURST);
        }
        self.refilled = Some(now);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }

    /// One event: its own line when it is a first occurrence within the limits.
    fn record(
        &mut self,
        event: &Event,
        name: Option<&str>,
        now: Instant,
        wall: SystemTime,
    ) -> Option<serde_json::Value> {
        let h = event_hash(event);
        let known = self.seen.contains(&h);
        // Past SEEN_MAX destinations a new one cannot be told from a repeat: it is only
        // counted in its group.
        let first = !known && self.seen.len() < SEEN_MAX && self.seen.insert(h);
        let key = group_of(event);
        if !self.groups.contains_key(&key) && self.groups.len() >= GROUPS_MAX {
            self.unsorted += 1;
            self.dirty = true;
            return None;
        }
        let room = self.take_token_if(first, &key, now);
        let g = self.groups.entry(key).or_insert_with(|| Group {
            distinct: 0,
            detailed: 0,
            new_pending: 0,
            events_pending: 0,
            events: 0,
            first: wall,
            name: None,
        });
        g.events += 1;
        if let (None, Some(n), Event::Blocked { .. }) = (&g.name, name, event) {
            g.name = Some(n.to_string());
        }
        if first {
            g.distinct += 1;
            if room {
                g.detailed += 1;
                return Some(json(event, name, wall));
            }
            g.new_pending += 1;
            g.events_pending += 1;
        } else if !known {
            g.events_pending += 1;
        } else if let Some(r) = self.repeats.get_mut(event) {
            r.0 += 1;
        } else if self.repeats.len() < REPEATS_MAX {
            self.repeats
                .insert(event.clone(), (1, name.map(String::from)));
        } else {
            g.events_pending += 1;
        }
        self.dirty = true;
        None
    }

    /// A token for a first occurrence whose group still writes its destinations one by
    /// one (none is spent otherwise).
    fn take_token_if(&mut self, first: bool, key: &GroupKey, now: Instant) -> bool {
        let detailed = self.groups.get(key).map_or(0, |g| g.detailed);
        first && detailed < GROUP_DETAIL && self.take_token(now)
    }

    fn summary_due(&self, now: Instant) -> Option<Instant> {
        if !self.dirty {
            return None;
        }
        Some(self.last_summary.map_or(now, |t| t + SUMMARY_EVERY))
    }

    /// The summary lines, when one is due (`force`: the session ends).
    fn summarize(&mut self, now: Instant, wall: SystemTime, force: bool) -> Vec<serde_json::Value> {
        use serde_json::json;
        match self.summary_due(now) {
            Some(t) if force || now >= t => {}
            _ => return vec![],
        }
        let since = self.last_summary.map(|t| now.saturating_duration_since(t));
        let mut lines: Vec<(u64, serde_json::Value)> = vec![];
        for (e, (n, name)) in self.repeats.drain() {
            let mut v = json(&e, name.as_deref(), wall);
            v["of"] = v["event"].take();
            v["event"] = "repeated".into();
            v["count"] = n.into();
            lines.push((n, v));
        }
        for (key, g) in self.groups.iter_mut() {
            if g.events_pending == 0 {
                continue;
            }
            let mut v = match key {
                GroupKey::Domain(d) => {
                    let mut v = json!({
                        "event": "summary", "of": "denied_name", "proto": "dns",
                        "addr": null, "port": null, "name": format!("*.{d}"), "domain": d,
                    });
                    if g.distinct >= super::TUNNEL_NAMES {
                        v["tunnelling"] = true.into();
                        let names = format!("{} different names", g.distinct);
                        v["note"] = super::tunnelling_note(d, &names).into();
                    }
                    v
                }
                GroupKey::Addr(a) => json!({
                    "event": "summary", "of": "blocked", "proto": null,
                    "addr": a.to_string(), "port": null, "name": g.name,
                }),
            };
            v["time"] = rfc3339(wall).into();
            v["new_not_listed"] = g.new_pending.into();
            v["count"] = g.events_pending.into();
            v["distinct_total"] = g.distinct.into();
            v["events_total"] = g.events.into();
            v["first"] = rfc3339(g.first).into();
            lines.push((g.events_pending, v));
            g.new_pending = 0;
            g.events_pending = 0;
        }
        lines.sort_by_key(|l| std::cmp::Reverse(l.0));
        let mut out: Vec<serde_json::Value> = vec![];
        let (mut rest_lines, mut rest_events) = (0u64, self.unsorted);
        for (i, (n, mut v)) in lines.into_iter().enumerate() {
            if i < SUMMARY_LINES {
                if let Some(s) = since {
                    v["window_ms"] = (s.as_millis() as u64).into();
                }
                out.push(v);
            } else {
                rest_lines += 1;
                rest_events += n;
            }
        }
        if rest_lines > 0 || rest_events > 0 {
            out.push(json!({
                "time": rfc3339(wall), "event": "summary", "of": "others", "proto": null,
                "addr": null, "port": null, "name": null,
                "entries": rest_lines, "count": rest_events,
            }));
        }
        self.unsorted = 0;
        self.dirty = false;
        self.last_summary = Some(now);
        out
    }
}

/// The writer thread's side of the log: appends, and rotates at `max` bytes.
struct Sink {
    dir: OwnedFd,
    name: std::ffi::OsString,
    file: File,
    size: u64,
    max: u64,
    shown: String,
    failed: bool,
}

impl Sink {
    fn write(&mut self, chunk: &[u8]) {
        if self.failed {
            return;
        }
        if self.size > 0 && self.size + chunk.len() as u64 > self.max {
            if let Err(e) = self.rotate() {
                log::warn!(
                    "audit log {}: cannot rotate ({e}); no more lines are written, so it \
                     stays under its size limit",
                    self.shown
                );
                self.failed = true;
                return;
            }
        }
        match self.file.write_all(chunk) {
            Ok(()) => self.size += chunk.len() as u64,
            Err(e) => {
                log::warn!("cannot write the audit log {}: {e}", self.shown);
                self.failed = true;
            }
        }
    }

    /// PATH -> PATH.1 (replacing it), then a new PATH, created as the first one was
    /// (O_EXCL: a file planted at the name in between is refused, not used).
    fn rotate(&mut self) -> std::result::Result<(), Errno> {
        let mut old = self.name.clone();
        old.push(".1");
        nix::fcntl::renameat(&self.dir, self.name.as_os_str(), &self.dir, old.as_os_str())?;
        let fd = openat(
            &self.dir,
            self.name.as_os_str(),
            OFlag::O_WRONLY
                | OFlag::O_APPEND
                | OFlag::O_CREAT
                | OFlag::O_EXCL
                | OFlag::O_NOFOLLOW
                | OFlag::O_CLOEXEC,
            Mode::from_bits_truncate(0o600),
        )?;
        fchmod(fd.as_fd(), Mode::from_bits_truncate(0o600))?;
        self.file = File::from(fd);
        self.size = 0;
        Ok(())
    }
}

/// Where chunks go: the writer thread once started (lazily, at the first chunk: PID 1
/// forks the command single-threaded, before any event), the sink until then.
enum Out {
    Idle(Sink),
    Thread {
        tx: std::sync::mpsc::SyncSender<Vec<u8>>,
        done: std::sync::mpsc::Receiver<()>,
    },
    Gone,
}

/// The open log. PID 1 never waits for it: lines are aggregated (above), batched, and
/// handed to a writer thread through a bounded queue; when the queue is full (a disk that
/// hangs) a batch is dropped and counted instead.
#[derive(Debug)]
pub struct AuditLog {
    agg: Aggregator,
    buf: Vec<u8>,
    buf_lines: u64,
    out: Out,
    shown: String,
    /// Lines handed to the writer, and lines dropped because it could not keep up.
    pub written: u64,
    pub dropped: u64,
}

impl std::fmt::Debug for Out {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Out::Idle(_) => "idle",
            Out::Thread { .. } => "thread",
            Out::Gone => "gone",
        })
    }
}

impl AuditLog {
    pub fn open(path: &Path) -> Result<AuditLog> {
        Self::open_with_limit(path, MAX_BYTES)
    }

    fn open_with_limit(path: &Path, max: u64) -> Result<AuditLog> {
        let (dir, name, fd) = open_in_dir(path)?;
        let size = fstat(fd.as_fd()).map(|s| s.st_size as u64).unwrap_or(0);
        let shown = path.display().to_string();
        let sink = Sink {
            dir,
            name,
            file: File::from(fd),
            size,
            max,
            shown: shown.clone(),
            failed: false,
        };
        Ok(AuditLog {
            agg: Aggregator::default(),
            buf: Vec::with_capacity(CHUNK),
            buf_lines: 0,
            out: Out::Idle(sink),
            shown,
            written: 0,
            dropped: 0,
        })
    }

    fn push(&mut self, v: &serde_json::Value) {
        self.buf.extend_from_slice(v.to_string().as_bytes());
        self.buf.push(b'\n');
        self.buf_lines += 1;
    }

    /// One event (time is passed in for the aggregation's pace).
    pub fn record(&mut self, event: &Event, name: Option<&str>, now: Instant, wall: SystemTime) {
        if let Some(v) = self.agg.record(event, name, now, wall) {
            self.push(&v);
            if self.buf.len() >= CHUNK {
                self.hand_off();
            }
        }
    }

    /// A line that is not a blocked event (a change of the live allowlist), written now.
    pub fn note(&mut self, v: &serde_json::Value) {
        self.push(v);
        self.hand_off();
    }

    /// After a batch of events: the summary when one is due, and the batch to the writer.
    pub fn flush(&mut self, now: Instant, wall: SystemTime) {
        for v in self.agg.summarize(now, wall, false) {
            self.push(&v);
        }
        self.hand_off();
    }

    /// When a summary is due (the duty must wake then).
    pub fn deadline(&self) -> Option<Instant> {
        self.agg.summary_due(Instant::now())
    }

    fn hand_off(&mut self) {
        if self.buf.is_empty() {
            return;
        }
        let chunk = std::mem::replace(&mut self.buf, Vec::with_capacity(CHUNK));
        let lines = std::mem::take(&mut self.buf_lines);
        if let Out::Idle(_) = self.out {
            self.start_thread();
        }
        match &self.out {
            Out::Thread { tx, .. } => match tx.try_send(chunk) {
                Ok(()) => self.written += lines,
                Err(_) => {
                    if self.dropped == 0 {
                        log::warn!(
                            "the audit log {} cannot keep up (a slow or hung disk?): lines \
                             are dropped and counted",
                            self.shown
                        );
                    }
                    self.dropped += lines;
                }
            },
            Out::Idle(_) | Out::Gone => self.dropped += lines,
        }
    }

    fn start_thread(&mut self) {
        let Out::Idle(mut sink) = std::mem::replace(&mut self.out, Out::Gone) else {
            return;
        };
        let (tx, rx) = std::sync::mpsc::sync_channel::<Vec<u8>>(QUEUE);
        let (done_tx, done) = std::sync::mpsc::channel();
        // Signals stay with PID 1's main thread (its signalfd): blocked in the writer from
        // its first instruction, by spawning it with everything blocked.
        let all = nix::sys::signal::SigSet::all();
        let mut old = nix::sys::signal::SigSet::empty();
        let _ = nix::sys::signal::pthread_sigmask(
            nix::sys::signal::SigmaskHow::SIG_BLOCK,
            Some(&all),
            Some(&mut old),
        );
        let spawned = std::thread::Builder::new()
            .name("audit-log".into())
            .stack_size(64 << 10)
            .spawn(move || {
                while let Ok(chunk) = rx.recv() {
                    sink.write(&chunk);
                }
                let _ = done_tx.send(());
            });
        let _ = nix::sys::signal::pthread_sigmask(
            nix::sys::signal::SigmaskHow::SIG_SETMASK,
            Some(&old),
            None,
        );
        match spawned {
            Ok(_) => self.out = Out::Thread { tx, done },
            Err(e) => log::warn!("audit log {}: cannot start its writer: {e}", self.shown),
        }
    }
}

/// The session ends (PID 1 drops its duties before it exits): the last summary, and a
/// short wait for the writer to finish what it was given.
impl Drop for AuditLog {
    fn drop(&mut self) {
        self.close(Duration::from_millis(500));
    }
}

impl AuditLog {
    /// The last summary, then up to `wait` for the writer to finish what it was given.
    fn close(&mut self, wait: Duration) {
        let (now, wall) = (Instant::now(), SystemTime::now());
        for v in self.agg.summarize(now, wall, true) {
            self.push(&v);
        }
        self.hand_off();
        if let Out::Thread { tx, done } = std::mem::replace(&mut self.out, Out::Gone) {
            drop(tx);
            let _ = done.recv_timeout(wait);
        }
    }
}

fn refuse(path: &Path, why: &str) -> Error {
    Error::Unusable(format!(
        "audit log {}: {why}; refusing to write it as root (it may have been planted). Give \
         a path in a directory only root can write, e.g. a volume at /var/log/sandbox-init",
        path.display()
    ))
}

/// Opens `path` for appending (O_APPEND|O_CLOEXEC|O_NOFOLLOW), creating it 0600, walking
/// every directory with O_NOFOLLOW from `/`.
pub fn open_append(path: &Path) -> Result<OwnedFd> {
    open_in_dir(path).map(|(_, _, fd)| fd)
}

/// As `open_append`, with the directory it is in and its name there (for rotation).
fn open_in_dir(path: &Path) -> Result<(OwnedFd, std::ffi::OsString, OwnedFd)> {
    if !path.is_absolute() {
        return Err(refuse(path, "is not an absolute path"));
    }
    let Some(name) = path.file_name() else {
        return Err(refuse(path, "names no file"));
    };
    let dir_flags = OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC;
    let io = |what: &str, e: Errno| {
        Error::Unusable(format!("audit log {}: cannot {what}: {e}", path.display()))
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
    Ok((dir, name.to_os_string(), fd))
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
    use crate::runtime::report::Proto;
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

    fn lines(p: &Path) -> Vec<serde_json::Value> {
        std::fs::read_to_string(p)
            .unwrap_or_default()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    }

    fn name(n: &str) -> Event {
        Event::DeniedName { name: n.into() }
    }

    #[test]
    fn new_file_is_0600_appended_and_links_are_refused() {
        let d = tmp("open");
        let p = d.join("audit.jsonl");
        let mut log = AuditLog::open(&p).unwrap();
        let t = Instant::now();
        log.record(&name("a.test"), None, t, UNIX_EPOCH);
        log.record(&name("b.test"), None, t, UNIX_EPOCH);
        log.flush(t, UNIX_EPOCH);
        // the writer thread finishes what it was given when the log goes (waited for
        // here without PID 1's 500 ms bound: a loaded machine may take longer)
        log.close(Duration::from_secs(60));
        drop(log);
        let m = std::fs::metadata(&p).unwrap();
        assert_eq!(m.permissions().mode() & 0o7777, 0o600);
        assert_eq!(lines(&p).len(), 2);
        // reopening appends
        let mut log = AuditLog::open(&p).unwrap();
        log.record(&name("c.test"), None, t, UNIX_EPOCH);
        log.close(Duration::from_secs(60));
        drop(log);
        assert_eq!(lines(&p).len(), 3);

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

    #[test]
    fn a_flood_of_random_names_under_one_domain_stays_small() {
        // 100,000 distinct denied names in 5 s, under one parent domain
        let mut a = Aggregator::default();
        let t0 = Instant::now();
        let mut bytes = 0usize;
        let mut listed = vec![];
        let mut summaries = vec![];
        for i in 0..100_000u64 {
            let now = t0 + Duration::from_micros(i * 50);
            let wall = UNIX_EPOCH + Duration::from_micros(i * 50);
            let e = name(&format!("x{i:08}q.flood.evil.test"));
            if let Some(v) = a.record(&e, None, now, wall) {
                bytes += v.to_string().len() + 1;
                listed.push(v);
            }
            if i % 1000 == 0 {
                for v in a.summarize(now, wall, false) {
                    bytes += v.to_string().len() + 1;
                    summaries.push(v);
                }
            }
        }
        for v in a.summarize(t0 + Duration::from_secs(6), UNIX_EPOCH, true) {
            bytes += v.to_string().len() + 1;
            summaries.push(v);
        }
        assert!(bytes < 100_000, "{bytes} bytes");
        // the first GROUP_DETAIL names one by one, in order
        assert_eq!(listed.len() as u64, GROUP_DETAIL);
        for (i, v) in listed.iter().enumerate() {
            assert_eq!(v["name"], format!("x{i:08}q.flood.evil.test"));
            assert_eq!(v["event"], "denied_name");
        }
        // then at most one summary a second (5 s of flood, plus the last one)
        assert!(summaries.len() <= 7, "{summaries:?}");
        let total: u64 = summaries.iter().map(|v| v["count"].as_u64().unwrap()).sum();
        assert_eq!(total, 100_000 - GROUP_DETAIL);
        assert!(
            summaries.iter().all(|v| v["event"] == "summary"),
            "{summaries:?}"
        );
        let last = summaries.last().unwrap();
        assert_eq!(last["domain"], "flood.evil.test");
        assert_eq!(last["tunnelling"], true, "{last}");
        assert!(
            last["note"].as_str().unwrap().contains("tunnelling"),
            "{last}"
        );
        // (PID 1 remembers SEEN_MAX destinations; past it new ones are only counted)
        assert_eq!(last["distinct_total"], SEEN_MAX as u64);
        assert_eq!(last["events_total"], 100_000);
        for k in ["event", "proto", "addr", "port", "name", "time"] {
            assert!(last.get(k).is_some(), "{k}: {last}");
        }
    }

    #[test]
    fn repeats_are_counted_at_most_once_a_second() {
        let mut a = Aggregator::default();
        let t0 = Instant::now();
        let e = Event::Blocked {
            proto: Proto::Tcp,
            addr: "10.0.0.1".parse().unwrap(),
            port: Some(443),
        };
        let mut out = vec![];
        for i in 0..10_000u64 {
            let now = t0 + Duration::from_micros(i * 300);
            out.extend(a.record(&e, Some("x.test"), now, UNIX_EPOCH));
            out.extend(a.summarize(now, UNIX_EPOCH, false));
        }
        out.extend(a.summarize(t0 + Duration::from_secs(10), UNIX_EPOCH, true));
        assert_eq!(out[0]["event"], "blocked");
        assert_eq!(out[0]["name"], "x.test");
        let repeated: Vec<&serde_json::Value> =
            out.iter().filter(|v| v["event"] == "repeated").collect();
        // 3 s of repeats: the first summary at once, then one a second, then the last
        assert!(repeated.len() <= 5, "{repeated:?}");
        let n: u64 = repeated.iter().map(|v| v["count"].as_u64().unwrap()).sum();
        assert_eq!(n, 9_999);
        assert_eq!(repeated[0]["of"], "blocked");
        assert_eq!(repeated[0]["port"], 443);
    }

    #[test]
    fn many_domains_are_bounded_by_the_pace_and_the_summary_size() {
        let mut a = Aggregator::default();
        let t0 = Instant::now();
        let (mut listed, mut summary_lines) = (0, 0);
        // 100,000 names, each under its own parent domain, in 2 s
        for i in 0..100_000u64 {
            let now = t0 + Duration::from_micros(i * 20);
            if a.record(&name(&format!("a.d{i}.test")), None, now, UNIX_EPOCH)
                .is_some()
            {
                listed += 1;
            }
            summary_lines += a.summarize(now, UNIX_EPOCH, false).len();
        }
        summary_lines += a
            .summarize(t0 + Duration::from_secs(3), UNIX_EPOCH, true)
            .len();
        // the burst and the pace: 1000 + 100/s over 2 s
        assert!((1000..=1201).contains(&listed), "{listed}");
        // at most SUMMARY_LINES + 1 per summary, a summary a second
        assert!(summary_lines <= 4 * (SUMMARY_LINES + 1), "{summary_lines}");
        // the first names are the ones listed
        let mut b = Aggregator::default();
        for i in 0..100u64 {
            assert!(b
                .record(&name(&format!("a.d{i}.test")), None, t0, UNIX_EPOCH)
                .is_some());
        }
    }

    #[test]
    fn the_file_is_rotated_once_at_its_limit() {
        let d = tmp("rotate");
        let p = d.join("audit.jsonl");
        let mut log = AuditLog::open_with_limit(&p, 4096).unwrap();
        let t0 = Instant::now();
        for i in 0..400u64 {
            let now = t0 + Duration::from_secs(i);
            log.record(&name(&format!("n{i}.d{i}.test")), None, now, UNIX_EPOCH);
            // A batch every 4 lines: 100 chunks, within the queue (256) even if a loaded
            // machine does not run the writer thread until the end (beyond, chunks are
            // dropped by design: a_writer_that_never_finishes_never_holds_up_the_caller).
            if i % 4 == 3 {
                log.flush(now, UNIX_EPOCH);
            }
        }
        // The file's content is the question here, not how fast a loaded machine writes
        // it (PID 1's own exit waits 500 ms at most).
        log.close(Duration::from_secs(60));
        drop(log);
        let cur = std::fs::metadata(&p).unwrap();
        let old = std::fs::metadata(d.join("audit.jsonl.1")).unwrap();
        assert!(
            cur.len() <= 4096 && old.len() <= 4096,
            "{} {}",
            cur.len(),
            old.len()
        );
        assert_eq!(cur.permissions().mode() & 0o7777, 0o600);
        // the newest line is in the current file, and nothing else was created
        assert!(std::fs::read_to_string(&p)
            .unwrap()
            .contains("n399.d399.test"));
        assert_eq!(std::fs::read_dir(&d).unwrap().count(), 2);
        let _ = std::fs::remove_dir_all(&d);
    }

    #[test]
    fn a_writer_that_never_finishes_never_holds_up_the_caller() {
        // A pipe nobody reads: the writer thread blocks on it for good.
        let (rd, wr) = nix::unistd::pipe().unwrap();
        let d = tmp("stuck");
        let dir =
            nix::fcntl::open(&d, OFlag::O_RDONLY | OFlag::O_DIRECTORY, Mode::empty()).unwrap();
        let sink = Sink {
            dir,
            name: "x".into(),
            file: File::from(wr),
            size: 0,
            max: u64::MAX,
            shown: "pipe".into(),
            failed: false,
        };
        let mut log = AuditLog {
            agg: Aggregator::default(),
            buf: vec![],
            buf_lines: 0,
            out: Out::Idle(sink),
            shown: "pipe".into(),
            written: 0,
            dropped: 0,
        };
        // More than the pipe and the queue hold (the aggregation would never produce this
        // much: lines are handed over directly).
        let line = json(&name("n.example.test"), None, UNIX_EPOCH);
        for i in 0..100_000u64 {
            log.push(&line);
            if i % 100 == 0 {
                log.hand_off();
            }
        }
        assert!(log.dropped > 0, "{} written", log.written);
        assert!(log.written > 0);
        // Dropping it (the session's end) waits only briefly for the stuck writer.
        drop(log);
        drop(rd);
        let _ = std::fs::remove_dir_all(&d);
    }
}
