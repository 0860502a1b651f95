//! Retry and timeout bookkeeping for upstream attempts: each attempt has a deadline, a
//! question gets `TRIES` attempts (each to the next server), and the time is always the
//! caller's (`now` comes in, nothing here reads a clock), so tests run whole timelines
//! without waiting.

use std::collections::{BTreeSet, HashMap};
use std::time::{Duration, Instant};

/// How long one UDP attempt waits for its answer.
pub const TRY_TIMEOUT: Duration = Duration::from_millis(1500);
/// How long one TCP attempt (connect, send, answer) may take.
pub const TCP_TIMEOUT: Duration = Duration::from_secs(4);
/// Attempts per question before SERVFAIL.
pub const TRIES: u8 = 2;

/// How long an attempt over this transport waits for its answer.
pub fn timeout(tcp: bool) -> Duration {
    if tcp {
        TCP_TIMEOUT
    } else {
        TRY_TIMEOUT
    }
}

/// A question's attempts so far, and the server its next attempt goes to.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Tries {
    /// An index into the servers (taken modulo their number).
    pub server: usize,
    made: u8,
}

impl Tries {
    /// An attempt went out.
    pub fn made(&mut self) {
        self.made += 1;
    }

    /// This server could not be asked at all (no socket): the next one.
    pub fn skip_server(&mut self) {
        self.server += 1;
    }

    /// The attempt failed (timeout, refused, closed): true when another may go out, to
    /// the next server; false when the question has had its tries (SERVFAIL).
    pub fn failed(&mut self) -> bool {
        if self.made < TRIES {
            self.server += 1;
            true
        } else {
            false
        }
    }

    /// The same server is asked again (without random case): not counted as a try.
    pub fn again(&mut self) {
        self.made = self.made.saturating_sub(1);
    }
}

/// Attempts in flight by id, each with its deadline, and how many use each transport.
pub struct Book<T> {
    live: HashMap<u64, (Instant, bool, T)>,
    /// (deadline, id), earliest first.
    timers: BTreeSet<(Instant, u64)>,
    udp: usize,
    tcp: usize,
}

impl<T> Default for Book<T> {
    fn default() -> Self {
        Book {
            live: HashMap::new(),
            timers: BTreeSet::new(),
            udp: 0,
            tcp: 0,
        }
    }
}

impl<T> Book<T> {
    /// Keeps an attempt sent at `now`; its deadline is returned.
    pub fn insert(&mut self, id: u64, tcp: bool, now: Instant, attempt: T) -> Instant {
        let deadline = now + timeout(tcp);
        if tcp {
            self.tcp += 1;
        } else {
            self.udp += 1;
        }
        self.timers.insert((deadline, id));
        if let Some((old, old_tcp, _)) = self.live.insert(id, (deadline, tcp, attempt)) {
            // Ids are never reused; should one be, the old attempt's count and timer go.
            self.timers.remove(&(old, id));
            self.uncount(old_tcp);
        }
        deadline
    }

    fn uncount(&mut self, tcp: bool) {
        if tcp {
            self.tcp -= 1;
        } else {
            self.udp -= 1;
        }
    }

    pub fn get(&self, id: u64) -> Option<&T> {
        self.live.get(&id).map(|(_, _, a)| a)
    }

    pub fn get_mut(&mut self, id: u64) -> Option<&mut T> {
        self.live.get_mut(&id).map(|(_, _, a)| a)
    }

    /// Ends an attempt (answered or failed): out of the book, its timer and its count.
    pub fn take(&mut self, id: u64) -> Option<T> {
        let (deadline, tcp, a) = self.live.remove(&id)?;
        self.timers.remove(&(deadline, id));
        self.uncount(tcp);
        Some(a)
    }

    /// The attempts whose deadline has passed at `now`, earliest first, taken out.
    pub fn expired(&mut self, now: Instant) -> Vec<T> {
        let mut out = vec![];
        while let Some(&(t, id)) = self.timers.first() {
            if t > now {
                break;
            }
            if let Some(a) = self.take(id) {
                out.push(a);
            } else {
                self.timers.pop_first();
            }
        }
        out
    }

    /// When the next attempt times out.
    pub fn deadline(&self) -> Option<Instant> {
        self.timers.first().map(|(t, _)| *t)
    }

    /// Attempts in flight over TCP (`true`) or UDP.
    pub fn in_flight(&self, tcp: bool) -> usize {
        if tcp {
            self.tcp
        } else {
            self.udp
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_question_gets_two_tries_each_to_the_next_server() {
        let mut t = Tries::default();
        t.made();
        assert_eq!(t.server, 0);
        assert!(t.failed(), "first attempt lost: a second one");
        assert_eq!(t.server, 1, "to the next server");
        t.made();
        assert!(!t.failed(), "both lost: SERVFAIL");
    }

    #[test]
    fn a_case_fallback_and_a_server_without_a_socket_are_not_tries() {
        let mut t = Tries::default();
        t.skip_server();
        t.made();
        assert_eq!(t.server, 1);
        // the server folds case: asked again plainly, the try is given back
        t.again();
        t.made();
        assert!(t.failed());
        t.made();
        assert!(!t.failed());
    }

    #[test]
    fn attempts_expire_at_their_deadline_and_not_before() {
        let t0 = Instant::now();
        let mut b = Book::default();
        assert_eq!(b.insert(1, false, t0, "udp"), t0 + TRY_TIMEOUT);
        assert_eq!(b.insert(2, true, t0, "tcp"), t0 + TCP_TIMEOUT);
        assert_eq!(
            b.insert(3, false, t0 + Duration::from_millis(10), "later"),
            t0 + TRY_TIMEOUT + Duration::from_millis(10)
        );
        assert_eq!((b.in_flight(false), b.in_flight(true)), (2, 1));
        assert_eq!(b.deadline(), Some(t0 + TRY_TIMEOUT));
        assert!(b
            .expired(t0 + TRY_TIMEOUT - Duration::from_millis(1))
            .is_empty());
        assert_eq!(b.expired(t0 + TRY_TIMEOUT), vec!["udp"]);
        assert_eq!(b.expired(t0 + Duration::from_secs(2)), vec!["later"]);
        assert_eq!(b.deadline(), Some(t0 + TCP_TIMEOUT));
        assert_eq!(b.expired(t0 + Duration::from_secs(60)), vec!["tcp"]);
        assert_eq!((b.in_flight(false), b.in_flight(true)), (0, 0));
        assert_eq!(b.deadline(), None);
    }

    #[test]
    fn an_answered_attempt_leaves_no_timer_behind() {
        let t0 = Instant::now();
        let mut b = Book::default();
        b.insert(1, false, t0, 'a');
        b.insert(2, false, t0, 'b');
        assert_eq!(b.take(1), Some('a'));
        assert_eq!(b.take(1), None, "taken once");
        assert_eq!(b.get(1), None);
        assert_eq!(b.in_flight(false), 1);
        assert_eq!(b.expired(t0 + Duration::from_secs(10)), vec!['b']);
        assert_eq!(b.in_flight(false), 0);
    }
}
