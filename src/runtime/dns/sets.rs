//! Addresses learned from answers, kept in the firewall's dynamic sets for as long as the
//! answer is valid and no longer.
//!
//! rustables 0.9 gives a set one timeout for all its elements (no per-element timeout), and
//! re-adding an element restarts its timer. So every dynamic set has a short timeout
//! (`SET_TIMEOUT`, 10 s) and PID 1 re-adds an address every `REFRESH` while the answer that
//! held it is valid (max(TTL, 10 s), capped at `CEILING`). The last re-add happens before
//! the answer's end, so the kernel drops the address at most `SET_TIMEOUT` after it: no
//! later than max(TTL, 10 s) + 10 s after the last answer (the contract), and never while
//! the answer is still valid (REFRESH < SET_TIMEOUT with margin).
//!
//! Each address remembers the names whose answers held it, so that a name denied while
//! the sandbox runs (`sandbox-init deny`) stops keeping its addresses alive: at the next
//! refresh they are forgotten, and the kernel drops them at most `SET_TIMEOUT` after the
//! deny, whatever their TTL.

use crate::policy::names::Group;
pub use crate::policy::ruleset::SET_TIMEOUT;
use crate::sys::netlink::Socket;
use std::collections::HashMap;
use std::net::IpAddr;
use std::os::fd::{AsFd, BorrowedFd};
use std::time::{Duration, Instant};

pub const FLOOR: Duration = Duration::from_secs(10);
/// Also the TTL we hand to clients at most, so none caches past it.
pub const CEILING: Duration = Duration::from_secs(3600);
pub const REFRESH: Duration = Duration::from_secs(3);
/// An address re-added less than this ago is not sent again for a new answer.
const RECENT: Duration = Duration::from_secs(1);
/// Names remembered per address: a wildcard entry admits any number of names, and many
/// may share one address (a CDN). Past this many, the address stays for as long as its
/// answers are valid, whatever is denied later: a denied name may then share it with
/// names still allowed.
const NAMES_KEPT: usize = 16;

/// How long an answer with this TTL keeps its addresses allowed.
pub fn valid_for(ttl: u32) -> Duration {
    Duration::from_secs(ttl as u64).clamp(FLOOR, CEILING)
}

#[derive(Debug, Clone)]
struct Learned {
    valid_until: Instant,
    pushed: Instant,
    /// The names whose answers held the address (lower case), at most `NAMES_KEPT`.
    names: Vec<Box<str>>,
    /// More names than kept.
    overflow: bool,
}

impl Learned {
    fn held_by(&mut self, name: &str) {
        let name = name.to_ascii_lowercase();
        if self.overflow || self.names.iter().any(|n| **n == *name) {
            return;
        }
        if self.names.len() < NAMES_KEPT {
            self.names.push(name.into());
        } else {
            self.overflow = true;
            self.names = Vec::new();
        }
    }
}

/// The addresses PID 1 keeps alive in the kernel, per group.
#[derive(Debug, Default)]
pub struct Tracker {
    live: HashMap<(IpAddr, Group), Learned>,
    next_tick: Option<Instant>,
}

impl Tracker {
    /// An answer for `name` held `addr` with `ttl`: returns whether it must be (re-)added
    /// now.
    pub fn learn(
        &mut self,
        addr: IpAddr,
        group: Group,
        name: &str,
        ttl: u32,
        now: Instant,
    ) -> bool {
        let valid_until = now + valid_for(ttl);
        self.next_tick.get_or_insert(now + REFRESH);
        match self.live.get_mut(&(addr, group)) {
            // The latest answer decides (the contract counts from the last answer).
            Some(l) if now.saturating_duration_since(l.pushed) < RECENT => {
                l.valid_until = valid_until;
                l.held_by(name);
                false
            }
            Some(l) => {
                l.valid_until = valid_until;
                l.pushed = now;
                l.held_by(name);
                true
            }
            None => {
                let mut l = Learned {
                    valid_until,
                    pushed: now,
                    names: Vec::new(),
                    overflow: false,
                };
                l.held_by(name);
                self.live.insert((addr, group), l);
                true
            }
        }
    }

    /// Forgets expired answers and addresses none of whose names `admits` any more (for
    /// the address's group); returns what must be re-added to stay in the kernel.
    pub fn due(
        &mut self,
        now: Instant,
        admits: impl Fn(&str, Group) -> bool,
    ) -> Vec<(IpAddr, Group)> {
        if self.next_tick.is_none_or(|t| now < t) {
            return vec![];
        }
        self.live.retain(|(_, group), l| {
            l.valid_until > now && (l.overflow || l.names.iter().any(|n| admits(n, *group)))
        });
        let mut out = vec![];
        for (k, l) in self.live.iter_mut() {
            if now.saturating_duration_since(l.pushed) >= REFRESH {
                l.pushed = now;
                out.push(*k);
            }
        }
        self.next_tick = if self.live.is_empty() {
            None
        } else {
            Some(now + REFRESH)
        };
        out
    }

    pub fn deadline(&self) -> Option<Instant> {
        self.next_tick
    }

    pub fn len(&self) -> usize {
        self.live.len()
    }

    pub fn is_empty(&self) -> bool {
        self.live.is_empty()
    }
}

/// Adds elements to the dynamic sets over its own netlink socket. The kernel applies a
/// batch inside `send`, so the addresses are in the set before the answer is released.
pub struct SetWriter {
    sock: Socket,
    table: String,
    failures: u64,
}

impl SetWriter {
    pub fn open(table: &str) -> std::io::Result<SetWriter> {
        let sock =
            Socket::open_nonblocking().map_err(|e| std::io::Error::from_raw_os_error(e.errno()))?;
        Ok(SetWriter {
            sock,
            table: table.to_string(),
            failures: 0,
        })
    }

    pub fn fd(&self) -> BorrowedFd<'_> {
        self.sock.as_fd()
    }

    /// Adds (or refreshes) the addresses, one batch. Errors are logged, not returned: the
    /// answer still goes out, and the connection that follows is reported if blocked.
    pub fn add(&mut self, items: &[(IpAddr, Group)]) {
        if items.is_empty() {
            return;
        }
        let bytes = match self.batch(items) {
            Ok(b) => b,
            Err(e) => return self.failed(&e),
        };
        if let Err(errno) = self.sock.send(&bytes) {
            let e = std::io::Error::from_raw_os_error(errno);
            return self.failed(&format!("sending set elements: {e}"));
        }
        for errno in self.sock.refusals() {
            let e = std::io::Error::from_raw_os_error(errno);
            self.failed(&format!("the kernel refused set elements: {e}"));
        }
    }

    fn batch(&self, items: &[(IpAddr, Group)]) -> Result<Vec<u8>, String> {
        use rustables::set::SetBuilder;
        use rustables::{Batch, MsgType, ProtocolFamily, Table};
        use std::collections::BTreeMap;
        use std::net::{Ipv4Addr, Ipv6Addr};
        let table = Table::new(ProtocolFamily::Inet).with_name(&self.table);
        let mut by_set: BTreeMap<String, (Vec<Ipv4Addr>, Vec<Ipv6Addr>)> = BTreeMap::new();
        for (addr, group) in items {
            match addr {
                IpAddr::V4(a) => by_set.entry(group.set_name(false)).or_default().0.push(*a),
                IpAddr::V6(a) => by_set.entry(group.set_name(true)).or_default().1.push(*a),
            }
        }
        let mut batch = Batch::new();
        let berr = |e: rustables::error::BuilderError| format!("building set elements: {e}");
        for (name, (v4, v6)) in by_set {
            if !v4.is_empty() {
                let mut b = SetBuilder::<Ipv4Addr>::new(&name, &table).map_err(berr)?;
                v4.iter().for_each(|a| b.add(a));
                batch.add(&b.finish().1, MsgType::Add);
            }
            if !v6.is_empty() {
                let mut b = SetBuilder::<Ipv6Addr>::new(&name, &table).map_err(berr)?;
                v6.iter().for_each(|a| b.add(a));
                batch.add(&b.finish().1, MsgType::Add);
            }
        }
        Ok(batch.finalize())
    }

    fn failed(&mut self, what: &str) {
        self.failures += 1;
        // Loud the first time, then rarely: a broken netlink path must not flood stderr.
        if self.failures == 1 || self.failures % 1000 == 0 {
            log::warn!(
                "DNS filter: {what} ({} failures); names resolve but their addresses stay \
                 blocked",
                self.failures
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::allowlist::{Port, Proto};

    const ANY: Group = Group::Agent(None);

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn ttl_is_clamped_to_floor_and_ceiling() {
        assert_eq!(valid_for(0), FLOOR);
        assert_eq!(valid_for(9), FLOOR);
        assert_eq!(valid_for(60), Duration::from_secs(60));
        assert_eq!(valid_for(u32::MAX), CEILING);
        assert!(
            REFRESH * 2 < SET_TIMEOUT,
            "a missed tick must not drop a live address"
        );
    }

    /// Simulates the kernel (an element lives SET_TIMEOUT after its last add) and checks
    /// the contract for a range of TTLs: alive while the answer is valid, gone no later
    /// than max(TTL, 10 s) + 10 s after the last answer.
    #[test]
    fn kernel_lifetime_meets_the_contract() {
        for ttl in [0u32, 1, 5, 10, 11, 30, 95] {
            let t0 = Instant::now();
            let mut t = Tracker::default();
            let a = ip("10.0.0.1");
            let mut last_add = None;
            // answers at 0 s and 2.5 s (the second one is "recent"-skipped or not)
            for (at_ms, expect_push) in [(0u64, true), (500, false), (2500, true)] {
                let now = t0 + Duration::from_millis(at_ms);
                let pushed = t.learn(a, ANY, "n.test", ttl, now);
                assert_eq!(pushed, expect_push, "ttl {ttl} at {at_ms} ms");
                if pushed {
                    last_add = Some(now);
                }
            }
            let last_answer = t0 + Duration::from_millis(2500);
            let valid_until = last_answer + valid_for(ttl);
            let bound = last_answer + Duration::from_secs(ttl.max(10) as u64 + 10);
            // the supervisor wakes at the tracker's deadline (plus some lateness)
            let mut now = t0;
            let end = bound + Duration::from_secs(30);
            while now < end {
                let wake = t.deadline().unwrap_or(end).max(now);
                now = wake + Duration::from_millis(7);
                for (addr, _) in t.due(now, |_, _| true) {
                    assert_eq!(addr, a);
                    last_add = Some(now);
                }
                let gone_at = last_add.unwrap() + SET_TIMEOUT;
                if now < valid_until {
                    assert!(gone_at > now, "ttl {ttl}: dropped while valid at {now:?}");
                }
            }
            let gone_at = last_add.unwrap() + SET_TIMEOUT;
            assert!(gone_at >= valid_until, "ttl {ttl}: dropped early");
            assert!(gone_at <= bound, "ttl {ttl}: kept too long");
            assert!(t.is_empty());
            assert_eq!(t.deadline(), None, "no wake-ups once nothing is live");
        }
    }

    #[test]
    fn groups_are_tracked_apart() {
        let now = Instant::now();
        let mut t = Tracker::default();
        let g = Group::Agent(Some(Port {
            proto: Proto::Tcp,
            number: 443,
        }));
        assert!(t.learn(ip("10.0.0.1"), ANY, "n.test", 0, now));
        assert!(t.learn(ip("10.0.0.1"), g, "n.test", 0, now));
        assert_eq!(t.len(), 2);
        let later = now + REFRESH;
        let mut due = t.due(later, |_, _| true);
        due.sort();
        assert_eq!(due.len(), 2);
        assert!(
            t.due(later, |_, _| true).is_empty(),
            "not twice in one tick"
        );
    }

    /// A name denied while its answer is still valid (an hour's TTL) stops keeping its
    /// address alive at the next refresh: the kernel drops it at most SET_TIMEOUT after
    /// the deny. An address another allowed name also holds stays, and so does one held
    /// by more names than are kept.
    #[test]
    fn a_denied_name_stops_keeping_its_addresses_alive() {
        let t0 = Instant::now();
        let mut t = Tracker::default();
        let (only, shared, crowded) = (ip("10.0.0.1"), ip("10.0.0.2"), ip("10.0.0.3"));
        t.learn(only, ANY, "Gone.Test", 3600, t0);
        t.learn(shared, ANY, "gone.test", 3600, t0);
        t.learn(shared, ANY, "kept.test", 3600, t0);
        for i in 0..=NAMES_KEPT {
            let name = if i == 0 {
                "gone.test".to_string()
            } else {
                format!("n{i}.test")
            };
            t.learn(crowded, ANY, &name, 3600, t0);
        }
        let allowed = |denied: bool| move |n: &str, _: Group| !(denied && n == "gone.test");
        // control: while nothing is denied, every address is refreshed
        let mut due = t.due(t0 + REFRESH, allowed(false));
        due.sort();
        assert_eq!(due, vec![(only, ANY), (shared, ANY), (crowded, ANY)]);
        // gone.test denied: its own address is forgotten, the other two stay
        let mut due = t.due(t0 + REFRESH * 2, allowed(true));
        due.sort();
        assert_eq!(due, vec![(shared, ANY), (crowded, ANY)]);
        assert_eq!(t.len(), 2);
    }
}
