//! PID 1's duty that reads the blocked packets (NFLOG), prints one line per new blocked
//! destination (deduplicated and rate-limited by the reporter), keeps the status file for
//! `check` current, and prints the summary when the command is gone.

use super::{events, nflog, print, status, Event, SharedReporter};
use crate::runtime::supervise::Duty;
use crate::sys::netlink::Socket;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::time::{Duration, Instant, SystemTime};

/// Datagrams read per wake-up (each up to 32 packets): under a flood PID 1 returns to its
/// poll, and so to signals and other duties, within a few milliseconds.
const MAX_DATAGRAMS: usize = 64;
/// The status file is rewritten at most this often.
const STATUS_EVERY: Duration = Duration::from_secs(1);
/// Entries of the summary printed on exit.
const SUMMARY_TOP: usize = 10;

pub struct Reader {
    sock: Option<Socket>,
    /// Why the socket is missing (shown by `check`).
    error: Option<String>,
    reporter: SharedReporter,
    status_dir: Option<OwnedFd>,
    status_dirty: bool,
    status_written: Option<Instant>,
    feed_file: events::FeedFile,
    buf: Vec<u8>,
    packets: u64,
    overruns: u64,
    started: SystemTime,
}

impl Reader {
    /// The reader of `nflog`, the group [`super::listen`] bound before the reject rules
    /// went live (or why it is not bound). Never fails: without the socket the firewall
    /// still blocks, only the reports are missing, and a warning said so.
    pub fn new(reporter: SharedReporter, nflog: super::Listening) -> Reader {
        let (sock, error) = match nflog {
            Ok(s) => (Some(s), None),
            Err(e) => (None, Some(e)),
        };
        let status_dir = match status::open_dir() {
            Ok(d) => Some(d),
            Err(e) => {
                log::warn!(
                    "`sandbox-init check` will not show what was blocked (no {}: {e}); on a \
                     read-only root file system add --tmpfs /run",
                    status::PATH
                );
                None
            }
        };
        let mut r = Reader {
            sock,
            error,
            reporter,
            status_dir,
            status_dirty: true,
            status_written: None,
            feed_file: events::FeedFile::open(),
            buf: vec![0u8; 1 << 16],
            packets: 0,
            overruns: 0,
            started: SystemTime::now(),
        };
        r.write_status(Instant::now());
        r.write_feed(Instant::now(), true);
        r
    }

    fn write_feed(&mut self, now: Instant, force: bool) {
        let mut r = self.reporter.borrow_mut();
        self.feed_file.write(&mut r.feed, now, force);
    }

    fn snapshot(&self) -> serde_json::Value {
        let mut v = self.reporter.borrow().status();
        v["version"] = 1.into();
        v["started"] = super::audit::rfc3339(self.started).into();
        v["updated"] = super::audit::rfc3339(SystemTime::now()).into();
        v["nflog"] = serde_json::json!({
            "group": nflog::GROUP,
            "listening": self.sock.is_some(),
            "error": self.error,
            "packets": self.packets,
            "overruns": self.overruns,
        });
        v
    }

    fn write_status(&mut self, now: Instant) {
        if !self.status_dirty {
            return;
        }
        if let Some(dir) = &self.status_dir {
            if let Err(e) = status::write(dir, &self.snapshot()) {
                log::debug!("status file: {e}");
            }
        }
        self.status_dirty = false;
        self.status_written = Some(now);
    }

    fn read_packets(&mut self) {
        let Some(sock) = &self.sock else { return };
        let batch = nflog::read(sock, &mut self.buf, MAX_DATAGRAMS);
        if batch.overruns > 0 {
            if self.overruns == 0 {
                log::debug!("the kernel dropped blocked-packet reports (receive buffer full)");
            }
            self.overruns += batch.overruns;
            self.status_dirty = true;
        }
        let mut r = self.reporter.borrow_mut();
        for p in batch.packets {
            self.packets += 1;
            self.status_dirty = true;
            let Some(event @ Event::Blocked { addr, .. }) = p.event else {
                continue;
            };
            // Multicast is the kernel's own chatter (IPv6 MLD reports, for one): no
            // command asked for it and no allowlist entry is the answer.
            let broadcast = addr == std::net::IpAddr::V4(std::net::Ipv4Addr::BROADCAST);
            if !p.ours || addr.is_multicast() || broadcast {
                continue;
            }
            if let Some(line) = r.record(event) {
                print(&line);
            }
        }
    }
}

impl Duty for Reader {
    fn fds(&self) -> Vec<BorrowedFd<'_>> {
        self.sock.iter().map(|s| s.as_fd()).collect()
    }

    fn on_ready(&mut self, now: Instant) {
        let before = self.reporter.borrow().total();
        self.read_packets();
        let note = self.reporter.borrow_mut().note_due(now);
        if let Some(line) = note {
            print(&line);
        }
        self.reporter.borrow_mut().flush();
        // Events recorded by other duties (denied names) count too.
        if self.reporter.borrow().total() != before {
            self.status_dirty = true;
        }
        let due = self
            .status_written
            .is_none_or(|t| now.saturating_duration_since(t) >= STATUS_EVERY);
        if due {
            self.write_status(now);
        }
        // The agent's hook runs right after its command: new events go out at once.
        self.write_feed(now, false);
    }

    fn deadline(&self) -> Option<Instant> {
        let status = self
            .status_written
            .filter(|_| self.status_dirty)
            .map(|t| t + STATUS_EVERY);
        let r = self.reporter.borrow();
        [r.deadline(), status, self.feed_file.deadline(&r.feed)]
            .into_iter()
            .flatten()
            .min()
    }

    fn finish(&mut self) {
        // Packets of the last moments are still in the socket.
        for _ in 0..16 {
            if self.sock.is_none() {
                break;
            }
            self.read_packets();
        }
        // The terminal is the shell's again: what the session held back comes out now.
        let (kept, held) = super::terminal::release();
        let mut r = self.reporter.borrow_mut();
        if held {
            super::print_after_session(&kept, &r.session_summary());
        }
        if let Some(note) = r.note_final() {
            print(&note);
        }
        r.flush();
        let summary = r.summary();
        let total = r.total();
        drop(r);
        self.status_dirty = true;
        self.write_status(Instant::now());
        self.write_feed(Instant::now(), true);
        if summary.is_empty() || held {
            return;
        }
        let mut parts: Vec<String> = summary
            .iter()
            .take(SUMMARY_TOP)
            .map(|(what, n)| format!("{what} x{n}"))
            .collect();
        if summary.len() > SUMMARY_TOP {
            parts.push(format!("{} more", summary.len() - SUMMARY_TOP));
        }
        log::info!(
            "session summary: {total} blocked attempts to {} destinations: {}",
            summary.len(),
            parts.join(", ")
        );
    }
}
