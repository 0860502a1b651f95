//! `sandbox-init hook post-tool-use`: Claude Code's `PostToolUse` hook (installed for the
//! Bash tool by the image's managed settings, which the agent cannot change). It runs as
//! the sandboxed user after each Bash call, reads the events feed PID 1 keeps (see
//! `report::events`), and prints what was blocked since its last call as additional
//! context for the model's next turn, so the agent can tell the user what was blocked and
//! the exact entry that allows it. Nothing new: it prints nothing.
//!
//! Only a file root owns and no one else can write is believed: the advice in it was made
//! by PID 1's reporter, never by the command. The cursor ("what was told already") is the
//! user's own file; losing it repeats events, nothing worse.

use crate::runtime::report::events::{self, open_flags, read_feed};
use nix::fcntl::OFlag;
use nix::sys::stat::{fstat, Mode};
use std::io::{Read, Write};
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};

/// Events listed in one context; older new ones are counted.
pub const MAX_LISTED: usize = 20;
/// The hook's JSON on stdin is read (so the CLI's write never fails) up to this much.
const MAX_STDIN: u64 = 1 << 20;

/// The hook: always exit 0 (a failing hook would only put noise in front of the user).
pub fn post_tool_use() -> i32 {
    let mut sink = Vec::new();
    let _ = std::io::stdin().take(MAX_STDIN).read_to_end(&mut sink);
    let Some(doc) = read_feed(Path::new(events::DIR)) else {
        return 0;
    };
    let path = cursor_path();
    let cursor = path.as_deref().and_then(read_cursor);
    let (text, seen) = context(&doc, cursor.as_ref());
    if let Some(text) = text {
        let out = serde_json::json!({
            "hookSpecificOutput": {
                "hookEventName": "PostToolUse",
                "additionalContext": text,
            }
        });
        let mut stdout = std::io::stdout().lock();
        if writeln!(stdout, "{out}").is_err() || stdout.flush().is_err() {
            return 0;
        }
    }
    if let (Some(path), Some(seen)) = (path, seen) {
        if cursor.as_ref() != Some(&seen) {
            write_cursor(&path, &seen);
        }
    }
    0
}

/// (session of PID 1, last event number told).
pub type Cursor = (String, u64);

/// The context for the events after `cursor`, and the cursor to keep.
pub fn context(
    doc: &serde_json::Value,
    cursor: Option<&Cursor>,
) -> (Option<String>, Option<Cursor>) {
    let Some(session) = doc["session"].as_str() else {
        return (None, None);
    };
    let last = doc["last"].as_u64().unwrap_or(0);
    let told = match cursor {
        Some((s, n)) if s == session && *n <= last => *n,
        _ => 0,
    };
    let seen = Some((session.to_string(), last));
    let events: Vec<(u64, &str)> = doc["events"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|e| Some((e["seq"].as_u64()?, e["line"].as_str()?)))
                .filter(|(seq, _)| *seq > told)
                // PID 1 writes only escaped, printable lines; anything else is not its.
                .filter(|(_, l)| l.bytes().all(|b| (0x20..0x7f).contains(&b)))
                .collect()
        })
        .unwrap_or_default();
    let new = last.saturating_sub(told);
    if new == 0 {
        return (None, seen);
    }
    let listed = &events[events.len().saturating_sub(MAX_LISTED)..];
    let mut text = String::from(
        "sandbox-init, the sandbox this container runs in, blocked this since the last check \
         (a command of yours or another process in the container):\n",
    );
    for (_, line) in listed {
        text.push_str("- ");
        text.push_str(line);
        text.push('\n');
    }
    let unlisted = new.saturating_sub(listed.len() as u64);
    if unlisted > 0 {
        text.push_str(&format!(
            "- and {unlisted} earlier blocked destination{} not listed here\n",
            if unlisted == 1 { "" } else { "s" }
        ));
    }
    text.push_str(
        "Nothing inside the container can change what the sandbox allows. If a blocked \
         destination is needed, tell the user what was blocked and the allowlist entry shown \
         above: they add it when starting the container (docker run -e SANDBOX_ALLOW=ENTRY, \
         or run-claude.sh --allow ENTRY) and start it again.",
    );
    (Some(text), seen)
}

/// `~/.cache/sandbox-init-hook-cursor`, or in /tmp without a home.
fn cursor_path() -> Option<PathBuf> {
    match std::env::var_os("HOME").filter(|h| !h.is_empty()) {
        Some(home) => {
            let cache = Path::new(&home).join(".cache");
            if !cache.is_dir() {
                use std::os::unix::fs::DirBuilderExt;
                std::fs::DirBuilder::new().mode(0o700).create(&cache).ok()?;
            }
            Some(cache.join("sandbox-init-hook-cursor"))
        }
        None => Some(PathBuf::from(format!(
            "/tmp/sandbox-init-hook-cursor-{}",
            nix::unistd::getuid()
        ))),
    }
}

pub fn read_cursor(path: &Path) -> Option<Cursor> {
    let fd = nix::fcntl::open(path, open_flags(), Mode::empty()).ok()?;
    let st = fstat(fd.as_fd()).ok()?;
    if st.st_mode & libc::S_IFMT != libc::S_IFREG || st.st_uid != nix::unistd::getuid().as_raw() {
        return None;
    }
    let mut text = String::new();
    std::fs::File::from(fd)
        .take(256)
        .read_to_string(&mut text)
        .ok()?;
    let (session, seq) = text.trim().split_once(' ')?;
    Some((session.to_string(), seq.parse().ok()?))
}

/// A new file beside it (never through a link), then renamed over it.
pub fn write_cursor(path: &Path, cursor: &Cursor) {
    let (Some(dir), Some(name)) = (path.parent(), path.file_name()) else {
        return;
    };
    let mut tmp_name = name.to_os_string();
    tmp_name.push(format!(".{}.tmp", std::process::id()));
    let tmp = dir.join(tmp_name);
    let flags =
        OFlag::O_WRONLY | OFlag::O_CREAT | OFlag::O_EXCL | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC;
    let Ok(fd) = nix::fcntl::open(&tmp, flags, Mode::from_bits_truncate(0o600)) else {
        return;
    };
    let mut f = std::fs::File::from(fd);
    let ok = writeln!(f, "{} {}", cursor.0, cursor.1).is_ok();
    drop(f);
    if !ok || std::fs::rename(&tmp, path).is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn doc(session: &str, lines: &[(u64, &str)], last: u64) -> serde_json::Value {
        let events: Vec<_> = lines
            .iter()
            .map(|(s, l)| serde_json::json!({"seq": s, "time": "t", "line": l}))
            .collect();
        serde_json::json!({"version": 1, "session": session, "last": last, "events": events})
    }

    #[test]
    fn tells_what_is_new_once_and_nothing_when_nothing_is() {
        let d = doc(
            "s1",
            &[(
                1,
                "blocked tcp 10.0.0.9:80; to allow it: SANDBOX_ALLOW=10.0.0.9:80 (or --allow)",
            )],
            1,
        );
        let (text, seen) = context(&d, None);
        let text = text.unwrap();
        assert!(
            text.contains("- blocked tcp 10.0.0.9:80; to allow it: SANDBOX_ALLOW=10.0.0.9:80"),
            "{text}"
        );
        assert!(text.contains("run-claude.sh --allow ENTRY"), "{text}");
        assert_eq!(seen, Some(("s1".into(), 1)));
        let (text, seen) = context(&d, seen.as_ref());
        assert_eq!(text, None, "told already");
        assert_eq!(seen, Some(("s1".into(), 1)));
        // Another container (the home outlives it): its cursor means nothing here.
        let (text, _) = context(&d, Some(&("s0".into(), 5)));
        assert!(text.is_some());
        // An empty feed says nothing.
        assert_eq!(context(&doc("s1", &[], 0), None).0, None);
        assert_eq!(context(&serde_json::json!({}), None), (None, None));
    }

    #[test]
    fn events_pushed_out_of_the_file_are_counted_and_odd_lines_dropped() {
        let lines: Vec<(u64, String)> = (40..=100)
            .map(|i| (i, format!("blocked dns name n{i}.test")))
            .collect();
        let mut refs: Vec<(u64, &str)> = lines.iter().map(|(s, l)| (*s, l.as_str())).collect();
        refs.push((101, "blocked \u{1b}[2J forged"));
        let d = doc("s", &refs, 101);
        let text = context(&d, Some(&("s".into(), 10))).0.unwrap();
        assert_eq!(text.matches("\n- blocked").count(), MAX_LISTED, "{text}");
        assert!(
            text.contains("n100.test") && !text.contains("n80.test"),
            "{text}"
        );
        assert!(
            text.contains("and 71 earlier blocked destinations not listed"),
            "{text}"
        );
        assert!(!text.contains("forged"), "{text}");
    }

    #[test]
    fn only_a_feed_root_wrote_is_read_and_the_cursor_survives_a_round_trip() {
        let dir = std::env::temp_dir().join(format!("sbx-hook-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let f = dir.join(events::FILE);
        std::fs::write(&f, doc("s", &[(1, "blocked x")], 1).to_string()).unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
        std::fs::set_permissions(&f, std::fs::Permissions::from_mode(0o644)).unwrap();
        let root = nix::unistd::geteuid().is_root();
        assert_eq!(read_feed(&dir).is_some(), root, "only root's file counts");
        if root {
            // Writable by others: not believed.
            std::fs::set_permissions(&f, std::fs::Permissions::from_mode(0o666)).unwrap();
            assert!(read_feed(&dir).is_none());
            std::fs::set_permissions(&f, std::fs::Permissions::from_mode(0o644)).unwrap();
            std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o777)).unwrap();
            assert!(read_feed(&dir).is_none());
            std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
            // Through a link: not followed.
            let link = dir.join("link");
            std::os::unix::fs::symlink(&dir, &link).unwrap();
            assert!(read_feed(&link).is_none());
        }
        let c = dir.join("cursor");
        assert_eq!(read_cursor(&c), None);
        write_cursor(&c, &("abc".into(), 7));
        assert_eq!(read_cursor(&c), Some(("abc".into(), 7)));
        // A FIFO planted at the cursor never blocks the hook.
        std::fs::remove_file(&c).unwrap();
        nix::unistd::mkfifo(&c, Mode::from_bits_truncate(0o600)).unwrap();
        assert_eq!(read_cursor(&c), None);
        write_cursor(&c, &("abc".into(), 8));
        assert_eq!(
            read_cursor(&c),
            Some(("abc".into(), 8)),
            "replaced by rename"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
