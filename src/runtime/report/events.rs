//! The events feed: what the sandbox blocked, for the agent. PID 1 keeps the recent
//! distinct events (each blocked destination and denied name once, with the line and the
//! advice the reporter wrote for it) in [`PATH`], a file the sandboxed user may read but
//! not write: owned by root, 0644, in a root-owned 0755 directory, replaced atomically.
//! `sandbox-init hook post-tool-use` (run by Claude Code as the user after each Bash
//! call) reads it and hands what is new to the model.
//!
//! The command can flood it (every new name it asks for is an event): the file holds at
//! most [`KEEP`] events of bounded length and is rewritten at most once every
//! [`WRITE_EVERY`]; older events fall out and are counted by their sequence numbers.

use super::{status, Event, Reporter};
use crate::sys::fs;
use nix::fcntl::{openat, OFlag};
use nix::sys::stat::{fstat, Mode};
use std::collections::VecDeque;
use std::ffi::OsStr;
use std::io::Read;
use std::os::fd::{AsFd, OwnedFd};
use std::path::Path;
use std::time::{Duration, Instant, SystemTime};

pub const DIR: &str = "/run/sandbox-init-events";
pub const FILE: &str = "events.json";
pub const PATH: &str = "/run/sandbox-init-events/events.json";
/// Events the file holds.
pub const KEEP: usize = 64;
/// Bytes of one event's line (the longest real one, an escaped 253-byte name with its
/// text, is about 1.2 KB).
pub const MAX_LINE: usize = 2048;
/// The file is rewritten at most this often (a flood of new events costs a bounded
/// amount of writing); the first event after a quiet spell is written at once.
pub const WRITE_EVERY: Duration = Duration::from_millis(20);
/// The largest file a reader accepts (KEEP lines of MAX_LINE, with room for the JSON).
pub const MAX_FILE: u64 = 256 * 1024;

#[derive(Debug)]
struct FeedEntry {
    seq: u64,
    time: SystemTime,
    line: String,
}

/// The recent events, numbered from 1 in this session of PID 1.
#[derive(Debug)]
pub struct Feed {
    /// Tells a reader's cursor from an earlier container's (the home outlives it).
    session: String,
    next: u64,
    entries: VecDeque<FeedEntry>,
    dirty: bool,
}

impl Default for Feed {
    fn default() -> Self {
        Feed {
            session: session_id(),
            next: 1,
            entries: VecDeque::new(),
            dirty: true,
        }
    }
}

fn session_id() -> String {
    let mut b = [0u8; 8];
    if crate::sys::random_bytes(&mut b).is_err() {
        // Unique enough to tell two containers apart: a lost cursor only repeats events.
        let t = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap_or_default();
        b = (t.as_nanos() as u64).to_le_bytes();
    }
    b.iter().map(|x| format!("{x:02x}")).collect()
}

impl Feed {
    pub fn push(&mut self, mut line: String, time: SystemTime) {
        if line.len() > MAX_LINE {
            let mut cut = MAX_LINE;
            while !line.is_char_boundary(cut) {
                cut -= 1;
            }
            line.truncate(cut);
        }
        if self.entries.len() >= KEEP {
            self.entries.pop_front();
        }
        self.entries.push_back(FeedEntry {
            seq: self.next,
            time,
            line,
        });
        self.next += 1;
        self.dirty = true;
    }

    pub fn document(&self) -> serde_json::Value {
        let events: Vec<serde_json::Value> = self
            .entries
            .iter()
            .map(|e| {
                serde_json::json!({
                    "seq": e.seq, "time": super::audit::rfc3339(e.time), "line": e.line,
                })
            })
            .collect();
        serde_json::json!({
            "version": 1,
            "session": self.session,
            "last": self.next - 1,
            "events": events,
        })
    }
}

impl Reporter {
    /// A distinct event seen for the first time: into the feed with its line and advice.
    pub(super) fn feed_event(&mut self, event: &Event, wall: SystemTime) {
        let gateway = matches!(event, Event::Blocked { addr, .. } if self.gateways.contains(addr));
        let line = super::describe(event, self.name_for(event), gateway);
        self.feed.push(line, wall);
    }

    /// A domain began to look like DNS tunnelling: one event for it, no more for its names.
    pub(super) fn feed_tunnel(&mut self, domain: &str, wall: SystemTime) {
        let note =
            super::tunnelling_note(domain, &format!("{} different names", super::TUNNEL_NAMES));
        self.feed.push(format!("blocked dns names: {note}"), wall);
    }

    pub fn feed(&self) -> &Feed {
        &self.feed
    }
}

/// PID 1's writer of the feed file.
pub struct FeedFile {
    dir: Option<OwnedFd>,
    written: Option<Instant>,
}

impl FeedFile {
    /// Opens (creates) the directory; without it the agent hears nothing, which a warning
    /// says with the fix.
    pub fn open() -> FeedFile {
        let dir = match open_dir() {
            Ok(d) => Some(d),
            Err(e) => {
                log::warn!(
                    "the agent will not be told what was blocked (no {PATH}: {e}); on a \
                     read-only root file system add --tmpfs /run"
                );
                None
            }
        };
        FeedFile { dir, written: None }
    }

    /// When the feed must be written next (None: nothing new).
    pub fn deadline(&self, feed: &Feed) -> Option<Instant> {
        if !feed.dirty || self.dir.is_none() {
            return None;
        }
        Some(match self.written {
            Some(t) => t + WRITE_EVERY,
            None => Instant::now(),
        })
    }

    /// Writes the feed when it changed and the last write is long enough ago (or `force`).
    pub fn write(&mut self, feed: &mut Feed, now: Instant, force: bool) {
        let Some(dir) = &self.dir else { return };
        let due = self
            .written
            .is_none_or(|t| now.saturating_duration_since(t) >= WRITE_EVERY);
        if !feed.dirty || !(due || force) {
            return;
        }
        let mut bytes = feed.document().to_string().into_bytes();
        bytes.push(b'\n');
        if let Err(e) = fs::write_atomic(
            dir.as_fd(),
            OsStr::new(FILE),
            &bytes,
            0o644,
            Path::new(PATH),
        ) {
            log::debug!("events file: {e}");
        }
        feed.dirty = false;
        self.written = Some(now);
    }
}

/// `check` as a user other than root (`docker exec -u USER`): what that user can see, the
/// recent events of a running sandbox, and where the rest is. Exit 0: nothing it can see
/// is wrong.
pub fn check_as_user(uid: u32) -> i32 {
    println!(
        "running as uid {uid}, not root: the capabilities, the firewall in the kernel and PID \
         1's status need root (docker exec CONTAINER sandbox-init check runs as root)"
    );
    match read_feed(Path::new(DIR)) {
        None => println!("no events file of a running sandbox ({PATH})"),
        Some(doc) => {
            let events = doc["events"].as_array().cloned().unwrap_or_default();
            if events.is_empty() {
                println!("blocked so far (this running sandbox): nothing");
            } else {
                println!(
                    "blocked so far (this running sandbox; {} distinct, the last {} here, \
                     oldest first):",
                    doc["last"].as_u64().unwrap_or(0),
                    events.len()
                );
                let printable = |l: &str| l.bytes().all(|b| (0x20..0x7f).contains(&b));
                for e in events
                    .iter()
                    .filter(|e| e["line"].as_str().is_some_and(printable))
                {
                    println!(
                        "  {} {}",
                        e["time"].as_str().unwrap_or("?"),
                        e["line"].as_str().unwrap_or("?")
                    );
                }
            }
        }
    }
    println!("ok: nothing wrong in what uid {uid} can see");
    0
}

/// The feed's directory, root's and 0755 (the user reads, only root writes).
fn open_dir() -> Result<OwnedFd, String> {
    use nix::fcntl::OFlag;
    let uid = nix::unistd::geteuid().as_raw();
    let flags = OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC;
    let root = nix::fcntl::open("/", flags, nix::sys::stat::Mode::empty())
        .map_err(|e| format!("cannot open /: {e}"))?;
    let run = status::ensure(&root, "run", 0o755, uid)?;
    let dir = status::ensure(&run, "sandbox-init-events", 0o755, uid)?;
    nix::sys::stat::fchmod(dir.as_fd(), nix::sys::stat::Mode::from_bits_truncate(0o755))
        .map_err(|e| format!("cannot set the mode of {DIR}: {e}"))?;
    Ok(dir)
}

/// Read-only, never through a link, never blocking on a planted FIFO.
pub fn open_flags() -> OFlag {
    OFlag::O_RDONLY | OFlag::O_NOFOLLOW | OFlag::O_NONBLOCK | OFlag::O_CLOEXEC
}

/// Owned by root and writable by no one else.
fn roots_only(fd: &OwnedFd, dir: bool) -> bool {
    match fstat(fd.as_fd()) {
        Ok(st) => {
            let kind = st.st_mode & libc::S_IFMT;
            let want = if dir { libc::S_IFDIR } else { libc::S_IFREG };
            st.st_uid == 0 && st.st_mode & 0o022 == 0 && kind == want
        }
        Err(_) => false,
    }
}

/// The feed PID 1 wrote, when root wrote it and it is a feed.
pub fn read_feed(dir: &Path) -> Option<serde_json::Value> {
    let d = nix::fcntl::open(dir, open_flags() | OFlag::O_DIRECTORY, Mode::empty()).ok()?;
    if !roots_only(&d, true) {
        return None;
    }
    let f = openat(&d, FILE, open_flags(), Mode::empty()).ok()?;
    if !roots_only(&f, false) {
        return None;
    }
    let mut text = String::new();
    std::fs::File::from(f)
        .take(MAX_FILE + 1)
        .read_to_string(&mut text)
        .ok()?;
    if text.len() as u64 > MAX_FILE {
        return None;
    }
    let v: serde_json::Value = serde_json::from_str(&text).ok()?;
    (v["version"] == 1).then_some(v)
}

#[cfg(test)]
mod tests {
    use super::super::{Event, Proto, Reporter, TUNNEL_NAMES};
    use super::*;

    fn lines(r: &Reporter) -> Vec<(u64, String)> {
        r.feed()
            .document()
            .get("events")
            .and_then(|e| e.as_array().cloned())
            .unwrap_or_default()
            .iter()
            .map(|e| {
                (
                    e["seq"].as_u64().unwrap(),
                    e["line"].as_str().unwrap().to_string(),
                )
            })
            .collect()
    }

    #[test]
    fn each_distinct_event_enters_once_with_its_advice_at_once() {
        let mut r = Reporter::default();
        let t = Instant::now();
        let wall = SystemTime::now();
        let blocked = Event::Blocked {
            proto: Proto::Tcp,
            addr: "10.0.0.9".parse().unwrap(),
            port: Some(80),
        };
        for _ in 0..5 {
            r.record_at(blocked.clone(), t, wall);
        }
        // No hold for the agent: the hook runs right after the command.
        r.record_at(
            Event::DeniedName {
                name: "registry.example.org".into(),
            },
            t,
            wall,
        );
        assert_eq!(
            lines(&r),
            [
                (
                    1,
                    "blocked tcp 10.0.0.9:80; to allow it: SANDBOX_ALLOW=10.0.0.9:80 (or --allow)"
                        .to_string()
                ),
                (
                    2,
                    "blocked dns name registry.example.org (not in the allowlist); to allow it: \
                     SANDBOX_ALLOW=registry.example.org (or --allow)"
                        .to_string()
                )
            ]
        );
    }

    #[test]
    fn hostile_names_never_become_advice_and_a_flood_stays_bounded() {
        let mut r = Reporter::default();
        let t = Instant::now();
        let wall = SystemTime::now();
        for name in [
            "registry.example.org,0.0.0.0/0",
            "a$(sh<x).test",
            "a\\010b.test",
            "x.test;rm",
            "X.TEST",
        ] {
            r.record_at(Event::DeniedName { name: name.into() }, t, wall);
        }
        for (_, l) in lines(&r) {
            assert!(!l.contains("SANDBOX_ALLOW"), "{l}");
            assert!(l.contains("no allowlist entry can allow it"), "{l}");
            assert!(
                !l.chars()
                    .any(|c| c.is_control() || "$;<>'`".contains(c) || !c.is_ascii()),
                "{l}"
            );
        }
        // A tunnelling flood under one domain: its first names, then one event for it.
        for i in 0..1000 {
            r.record_at(
                Event::DeniedName {
                    name: format!("d{i}.tunnel.test"),
                },
                t,
                wall,
            );
        }
        let l = lines(&r);
        assert_eq!(l.len(), 5 + TUNNEL_NAMES as usize, "{l:?}");
        assert!(l.last().unwrap().1.contains("look like DNS tunnelling"));
        // Distinct names under many domains: the file keeps the newest KEEP of them.
        for i in 0..10_000 {
            r.record_at(
                Event::DeniedName {
                    name: format!("n.x{i}.test"),
                },
                t,
                wall,
            );
        }
        let l = lines(&r);
        assert_eq!(l.len(), KEEP);
        let doc = r.feed().document();
        assert!(doc.to_string().len() as u64 <= MAX_FILE);
        assert_eq!(doc["last"].as_u64().unwrap(), l.last().unwrap().0);
        let long = "a".repeat(10_000);
        let mut f = Feed::default();
        f.push(long, wall);
        assert_eq!(
            f.document()["events"][0]["line"].as_str().unwrap().len(),
            MAX_LINE
        );
        // KEEP of the longest lines still fit the size a reader accepts.
        let mut f = Feed::default();
        for _ in 0..KEEP * 2 {
            f.push("\\x7f".repeat(MAX_LINE), wall);
        }
        assert!((f.document().to_string().len() as u64) < MAX_FILE);
    }
}
