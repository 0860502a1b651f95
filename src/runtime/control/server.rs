//! PID 1's side of the control socket: a duty of the supervise loop, so it never blocks the
//! signals, the reaping or the DNS filter. Non-blocking throughout: a bounded number of
//! connections, each with a deadline and a size cap, one request each. Only uid 0 is
//! served (peer credentials, checked on every connection); the directory around the
//! socket is root's alone, so the sandboxed user cannot even connect.

use super::live::{Live, Peer};
use super::protocol::{Request, Response, MAX_REQUEST};
use crate::policy::allowlist::{Entry, Suggestion};
use crate::policy::names::Shared;
use crate::runtime::report::SharedReporter;
use serde_json::{json, Value};
use std::io::{ErrorKind, Read, Write};
use std::os::fd::{AsFd, BorrowedFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::time::{Duration, Instant, SystemTime};

/// Connections served at once; more wait in the listen backlog.
pub const MAX_CONNECTIONS: usize = 8;
/// A connection that has not sent its request by then is closed.
pub const DEADLINE: Duration = Duration::from_secs(2);

struct Conn {
    stream: UnixStream,
    peer: Peer,
    buf: Vec<u8>,
    deadline: Instant,
}

pub struct Server {
    listener: UnixListener,
    conns: Vec<Conn>,
    live: Live,
    /// The DNS filter's policy (`None` in resolver mode: no filter runs).
    policy: Option<Shared>,
    reporter: SharedReporter,
    /// How the container is named from outside, for the advice of `blocked`.
    container: Option<String>,
}

fn peer_of(s: &UnixStream) -> Option<Peer> {
    use nix::sys::socket::{getsockopt, sockopt::PeerCredentials};
    let c = getsockopt(&s.as_fd(), PeerCredentials).ok()?;
    Some(Peer {
        uid: c.uid(),
        pid: c.pid(),
    })
}

/// Writes a whole (small) response or gives up: PID 1 never waits on a reader.
fn reply(stream: &mut UnixStream, r: &Response) {
    let bytes = r.encode();
    if let Err(e) = stream.write_all(bytes.as_bytes()) {
        log::debug!("control socket: reply not delivered: {e}");
    }
}

impl Server {
    pub fn new(
        listener: UnixListener,
        live: Live,
        policy: Option<Shared>,
        reporter: SharedReporter,
        container: Option<String>,
    ) -> Server {
        Server {
            listener,
            conns: vec![],
            live,
            policy,
            reporter,
            container,
        }
    }

    fn accept(&mut self, now: Instant) {
        while self.conns.len() < MAX_CONNECTIONS {
            let mut stream = match self.listener.accept() {
                Ok((s, _)) => s,
                Err(e) if e.kind() == ErrorKind::WouldBlock => return,
                Err(e) => {
                    log::debug!("control socket: accept: {e}");
                    return;
                }
            };
            if stream.set_nonblocking(true).is_err() {
                continue;
            }
            match peer_of(&stream) {
                Some(peer) if peer.uid == 0 => self.conns.push(Conn {
                    stream,
                    peer,
                    buf: Vec::with_capacity(256),
                    deadline: now + DEADLINE,
                }),
                other => {
                    let who = other.map_or("an unknown peer".to_string(), |p| {
                        format!("uid {} (pid {})", p.uid, p.pid)
                    });
                    log::warn!("control socket: refused {who}: only root may change the sandbox");
                    reply(
                        &mut stream,
                        &Response::Err(
                            "only root in the container may use the control socket (docker \
                             exec without -u)"
                                .into(),
                        ),
                    );
                }
            }
        }
    }

    /// Reads what is there; returns the complete request line, an error, or `None` to wait.
    fn read(c: &mut Conn) -> Option<Result<Vec<u8>, String>> {
        let mut chunk = [0u8; 4096];
        loop {
            match c.stream.read(&mut chunk) {
                Ok(0) => return Some(Ok(std::mem::take(&mut c.buf))),
                Ok(n) => {
                    c.buf.extend_from_slice(&chunk[..n]);
                    if let Some(end) = c.buf.iter().position(|b| *b == b'\n') {
                        c.buf.truncate(end);
                        return Some(Ok(std::mem::take(&mut c.buf)));
                    }
                    if c.buf.len() > MAX_REQUEST {
                        return Some(Err(format!("request larger than {MAX_REQUEST} bytes")));
                    }
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => return None,
                Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                Err(e) => return Some(Err(format!("reading the request: {e}"))),
            }
        }
    }

    fn handle(&mut self, line: &[u8], peer: Peer) -> Response {
        match Request::decode(line) {
            Err(e) => {
                log::warn!(
                    "control socket: malformed request from uid {} pid {}: {e}",
                    peer.uid,
                    peer.pid
                );
                Response::Err(e)
            }
            Ok(Request::Allow(entries)) => {
                let mut next = self.live.clone();
                let at = crate::runtime::report::audit::rfc3339(SystemTime::now());
                match next.allow(&entries, peer, &at) {
                    Ok(lines) => self.commit(next, "allow", &entries, lines, peer),
                    Err(e) => Response::Err(e),
                }
            }
            Ok(Request::Deny { entries, kill }) => {
                let mut next = self.live.clone();
                let lines = next.deny(&entries);
                match self.commit(next, "deny", &entries, lines, peer) {
                    Response::Ok { lines, data } if kill => self.kill(&entries, lines, data, peer),
                    other => other,
                }
            }
            Ok(Request::Status) => {
                let (lines, data) = self.live.describe();
                Response::Ok { lines, data }
            }
            Ok(Request::Blocked) => self.blocked(),
        }
    }

    /// Programs the kernel and the DNS policy for `next`; keeps it only when the kernel
    /// took the batch (then the change is logged with who made it).
    fn commit(
        &mut self,
        next: Live,
        op: &str,
        entries: &[Entry],
        lines: Vec<String>,
        peer: Peer,
    ) -> Response {
        if next.live == self.live.live {
            // Nothing to change (already allowed, or not allowed live): no batch, no log.
            return Response::Ok {
                lines,
                data: Value::Null,
            };
        }
        let built =
            match crate::stages::firewall::netlink::build_live(&next.new_groups(), &next.nets()) {
                Ok(b) => b,
                Err(e) => return Response::Err(e),
            };
        // On success the change's socket closes here: only the start's stays open.
        if let Err(e) = crate::stages::firewall::netlink::send(&built) {
            let why = crate::stages::firewall::diagnosis(&e, &built.what).what;
            log::warn!(
                "control socket: {op} by uid {} pid {}: {why}",
                peer.uid,
                peer.pid
            );
            return Response::Err(format!("the kernel refused the change: {why}"));
        }
        if let Some(p) = &self.policy {
            *p.borrow_mut() = next.policy();
        }
        self.live = next;
        for l in &lines {
            log::warn!(
                "live allowlist: {op} by uid {} pid {}: {l}",
                peer.uid,
                peer.pid
            );
        }
        let texts: Vec<String> = entries.iter().map(|e| e.to_string()).collect();
        self.reporter.borrow_mut().audit_note(&json!({
            "event": format!("live_{op}"),
            "entries": texts,
            "uid": peer.uid,
            "pid": peer.pid,
            "time": crate::runtime::report::audit::rfc3339(SystemTime::now()),
        }));
        Response::Ok {
            lines,
            data: Value::Null,
        }
    }

    /// `deny --kill`, after the entries left the ruleset (so a flow whose tracking entry is
    /// gone meets the default deny on its next packet): closes the established connections
    /// to them and says how many, on stderr and in the audit log with who did it.
    fn kill(
        &mut self,
        entries: &[Entry],
        mut lines: Vec<String>,
        data: Value,
        peer: Peer,
    ) -> Response {
        let (targets, not_closed) = self.live.kill_targets(entries);
        lines.extend(not_closed);
        let closed = match crate::stages::firewall::conntrack::kill(&targets) {
            Ok(n) => n,
            Err(e) => {
                log::warn!(
                    "control socket: deny --kill by uid {} pid {}: {e}",
                    peer.uid,
                    peer.pid
                );
                return Response::Err(format!(
                    "the entries are denied for new connections, but the established ones \
                     could not be closed: {e}"
                ));
            }
        };
        let line = format!(
            "closed {closed} established connection{} (--kill)",
            if closed == 1 { "" } else { "s" }
        );
        let texts: Vec<String> = entries.iter().map(|e| e.to_string()).collect();
        log::warn!(
            "live allowlist: deny --kill by uid {} pid {}: {line} to {}",
            peer.uid,
            peer.pid,
            texts.join(", ")
        );
        self.reporter.borrow_mut().audit_note(&json!({
            "event": "live_kill",
            "entries": texts,
            "closed": closed,
            "uid": peer.uid,
            "pid": peer.pid,
            "time": crate::runtime::report::audit::rfc3339(SystemTime::now()),
        }));
        lines.push(line);
        Response::Ok { lines, data }
    }

    /// The recent blocked destinations, with counts and the `allow` for each.
    fn blocked(&self) -> Response {
        let status = self.reporter.borrow().status();
        let mut lines = vec![];
        for r in status["recent"].as_array().into_iter().flatten() {
            let count = r["count"].as_u64().unwrap_or(1);
            let line = r["line"].as_str().unwrap_or_default();
            lines.push(format!("{count:>6}  {line}"));
            // Advice only ever through Suggestion: the entry must parse back as itself.
            let allow = r["allow"]
                .as_str()
                .and_then(|a| a.parse::<Entry>().ok())
                .and_then(Suggestion::new);
            // (with a known container name the line above says it already)
            let unnamed = super::LiveTarget {
                container: "CONTAINER".into(),
                names: self.live.filter,
            };
            if let Some(c) = allow
                .filter(|_| self.container.is_none())
                .and_then(|s| super::live_advice(&s, &unnamed))
            {
                lines.push(format!("        now: {c}"));
            }
        }
        if lines.is_empty() {
            lines.push("nothing blocked so far".into());
        }
        Response::Ok {
            lines,
            data: status,
        }
    }
}

impl crate::runtime::supervise::Duty for Server {
    fn fds(&self) -> Vec<BorrowedFd<'_>> {
        let mut v: Vec<BorrowedFd<'_>> = self.conns.iter().map(|c| c.stream.as_fd()).collect();
        if self.conns.len() < MAX_CONNECTIONS {
            v.push(self.listener.as_fd());
        }
        v
    }

    fn on_ready(&mut self, now: Instant) {
        self.accept(now);
        let mut i = 0;
        while i < self.conns.len() {
            let outcome = Self::read(&mut self.conns[i]);
            let expired = now >= self.conns[i].deadline;
            match outcome {
                None if !expired => i += 1,
                None => {
                    let mut c = self.conns.swap_remove(i);
                    reply(
                        &mut c.stream,
                        &Response::Err("no request within 2 s".into()),
                    );
                }
                Some(result) => {
                    let mut c = self.conns.swap_remove(i);
                    let r = match result {
                        Ok(line) => self.handle(&line, c.peer),
                        Err(e) => Response::Err(e),
                    };
                    reply(&mut c.stream, &r);
                }
            }
        }
    }

    fn deadline(&self) -> Option<Instant> {
        self.conns.iter().map(|c| c.deadline).min()
    }
}
