//! PID 1 and the command share a terminal under `docker run -it`. An interactive UI (the
//! Claude Code TUI) owns that screen: a line from PID 1 moves the cursor behind its back
//! and garbles what it drew. So while the command runs on a terminal PID 1 writes its
//! stderr lines nowhere: report lines are left to the summary printed after the command
//! has exited (and restored the terminal), other log lines are kept and printed then.
//! Errors that end the session are printed at once. Without a terminal (`docker run`
//! without `-t`, CI, `docker logs`) every line goes out as it happens.

use std::collections::VecDeque;
use std::io::IsTerminal;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::Mutex;

/// Lines kept while the terminal is the command's; beyond them only a count.
pub const MAX_HELD: usize = 50;

const LIVE: u8 = 0;
const HELD: u8 = 1;
const SUMMARIZED: u8 = 2;

static STATE: AtomicU8 = AtomicU8::new(LIVE);
static KEPT: Mutex<Kept> = Mutex::new(Kept {
    lines: VecDeque::new(),
    dropped: 0,
});

struct Kept {
    lines: VecDeque<String>,
    dropped: u64,
}

/// Called just before the command starts: PID 1's stderr is inherited by the command, so
/// when it is a terminal the command draws on it and PID 1 must keep quiet. Returns
/// whether it holds its lines from now on.
pub fn hold_if_shared() -> bool {
    let shared = std::io::stderr().is_terminal();
    hold(shared);
    shared
}

/// Sets the state directly (tests, and `hold_if_shared`).
pub fn hold(on: bool) {
    STATE.store(if on { HELD } else { LIVE }, Ordering::SeqCst);
}

/// Whether lines are held now (the command owns the terminal).
pub fn holding() -> bool {
    STATE.load(Ordering::SeqCst) == HELD
}

/// Whether report lines (blocked destinations) may be printed as they happen: not while
/// held, and not after the held session's summary, which listed them all.
pub fn reports_live() -> bool {
    STATE.load(Ordering::SeqCst) == LIVE
}

/// Keeps `line` for later when lines are held; returns false when it should be written now.
pub fn keep(line: &str) -> bool {
    if !holding() {
        return false;
    }
    let mut k = KEPT.lock().unwrap_or_else(|p| p.into_inner());
    if k.lines.len() >= MAX_HELD {
        k.dropped += 1;
    } else {
        k.lines.push_back(line.to_string());
    }
    true
}

/// The command has exited: lines are no longer held. Returns the kept lines, a last one
/// saying how many did not fit, and whether lines were held at all (then the caller
/// prints the session summary and report lines stay quiet from now on).
pub fn release() -> (Vec<String>, bool) {
    let was = STATE
        .compare_exchange(HELD, SUMMARIZED, Ordering::SeqCst, Ordering::SeqCst)
        .is_ok();
    let mut k = KEPT.lock().unwrap_or_else(|p| p.into_inner());
    let mut lines: Vec<String> = k.lines.drain(..).collect();
    if k.dropped > 0 {
        lines.push(format!(
            "sandbox-init: {} more lines of the session not shown",
            k.dropped
        ));
        k.dropped = 0;
    }
    (lines, was)
}

#[cfg(test)]
mod tests {
    use super::*;

    // One test owns the global state (tests run in parallel threads).
    #[test]
    fn held_lines_come_out_after_the_session_and_reports_stay_quiet() {
        hold(false);
        assert!(!keep("live line"), "not held: written at once");
        assert!(reports_live());
        hold(true);
        assert!(!reports_live());
        for i in 0..MAX_HELD + 7 {
            assert!(keep(&format!("line {i}")));
        }
        let (lines, was) = release();
        assert!(was);
        assert_eq!(lines.len(), MAX_HELD + 1);
        assert_eq!(lines[0], "line 0");
        assert!(lines[MAX_HELD].contains("7 more lines"), "{lines:?}");
        // After the summary: log lines are written again, report lines are not.
        assert!(!keep("after"));
        assert!(!reports_live());
        let (lines, was) = release();
        assert!(lines.is_empty() && !was);
        hold(false);
        assert!(reports_live());
    }
}
