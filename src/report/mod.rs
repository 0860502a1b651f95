//! Telling the user what the sandbox blocked and exactly how to allow it. People switch
//! firewalls off when they cannot see what was blocked (peers.md item 11), so every blocked
//! destination and every denied DNS name becomes one line on stderr with the setting that
//! would allow it.
//!
//! The reporter is shared by PID 1's duties (the NFLOG reader sees blocked packets, the DNS
//! filter sees denied names and learns which name an address came from); all of them run
//! on PID 1's one thread, hence `Rc<RefCell<_>>`.

use std::cell::RefCell;
use std::collections::{HashMap, HashSet};
use std::fmt;
use std::net::IpAddr;
use std::rc::Rc;

pub type SharedReporter = Rc<RefCell<Reporter>>;

/// Transport of a blocked packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Proto {
    Tcp,
    Udp,
    Icmp,
    /// Any other IP protocol, by number.
    Other(u8),
}

impl fmt::Display for Proto {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Proto::Tcp => f.write_str("tcp"),
            Proto::Udp => f.write_str("udp"),
            Proto::Icmp => f.write_str("icmp"),
            Proto::Other(n) => write!(f, "proto-{n}"),
        }
    }
}

/// One thing the sandbox refused.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Event {
    Blocked {
        proto: Proto,
        addr: IpAddr,
        port: Option<u16>,
    },
    DeniedName {
        name: String,
    },
}

/// `ADDR:PORT` or `[V6]:PORT`, or the bare address without a port.
pub fn endpoint(addr: IpAddr, port: Option<u16>) -> String {
    match (addr, port) {
        (IpAddr::V4(a), Some(p)) => format!("{a}:{p}"),
        (IpAddr::V6(a), Some(p)) => format!("[{a}]:{p}"),
        (a, None) => a.to_string(),
    }
}

/// The allowlist entry that would let this through: by name when the address came from
/// one (addresses of names rotate), else by address.
pub fn suggestion(proto: Proto, addr: IpAddr, port: Option<u16>, name: Option<&str>) -> String {
    let host = match (name, addr) {
        (Some(n), _) => n.to_string(),
        (None, a) => a.to_string(),
    };
    match (proto, port) {
        (Proto::Tcp, Some(p)) if name.is_none() && addr.is_ipv6() => format!("[{host}]:{p}"),
        (Proto::Tcp, Some(p)) => format!("{host}:{p}"),
        (Proto::Udp, Some(p)) if name.is_none() && addr.is_ipv6() => format!("[{host}]:{p}/udp"),
        (Proto::Udp, Some(p)) => format!("{host}:{p}/udp"),
        // Other protocols have no port: only a bare entry (every port and protocol) allows them.
        _ => host,
    }
}

/// The one stderr line for an event.
pub fn line(event: &Event, name: Option<&str>) -> String {
    match event {
        Event::Blocked { proto, addr, port } => {
            let from = name.map(|n| format!(" ({n})")).unwrap_or_default();
            format!(
                "blocked {proto} {}{from}; to allow it: SANDBOX_ALLOW={} (or --allow)",
                endpoint(*addr, *port),
                suggestion(*proto, *addr, *port, name)
            )
        }
        Event::DeniedName { name } => format!(
            "blocked dns name {name} (not in the allowlist); to allow it: SANDBOX_ALLOW={name} \
             (or --allow)"
        ),
    }
}

/// Deduplicates events and remembers which name each address was resolved from.
#[derive(Debug, Default)]
pub struct Reporter {
    names: HashMap<IpAddr, String>,
    seen: HashSet<Event>,
    /// Every event, duplicates included, per distinct event (for the summary).
    counts: HashMap<Event, u64>,
}

impl Reporter {
    pub fn shared() -> SharedReporter {
        Rc::new(RefCell::new(Reporter::default()))
    }

    /// An allowlisted name resolved to `addr` (at start, or through the DNS filter).
    pub fn learned(&mut self, addr: IpAddr, name: &str) {
        self.names.insert(addr, name.to_string());
    }

    pub fn name_of(&self, addr: IpAddr) -> Option<&str> {
        self.names.get(&addr).map(String::as_str)
    }

    /// Records an event; returns the line to print when it is new (each distinct event is
    /// reported once: a retry loop must not flood the terminal).
    pub fn record(&mut self, event: Event) -> Option<String> {
        *self.counts.entry(event.clone()).or_default() += 1;
        if !self.seen.insert(event.clone()) {
            return None;
        }
        let name = match &event {
            Event::Blocked { addr, .. } => self.name_of(*addr),
            Event::DeniedName { .. } => None,
        };
        Some(line(&event, name))
    }

    /// Distinct events and how often each happened, most frequent first.
    pub fn summary(&self) -> Vec<(String, u64)> {
        let mut v: Vec<(String, u64)> = self
            .counts
            .iter()
            .map(|(e, n)| {
                let what = match e {
                    Event::Blocked { proto, addr, port } => {
                        format!("{proto} {}", endpoint(*addr, *port))
                    }
                    Event::DeniedName { name } => format!("dns {name}"),
                };
                (what, *n)
            })
            .collect();
        v.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
        v
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn lines_name_protocol_address_port_and_the_exact_setting() {
        let mut r = Reporter::default();
        r.learned(ip("104.16.1.1"), "registry.npmjs.org");
        let l = r
            .record(Event::Blocked {
                proto: Proto::Tcp,
                addr: ip("104.16.1.1"),
                port: Some(443),
            })
            .unwrap();
        assert_eq!(
            l,
            "blocked tcp 104.16.1.1:443 (registry.npmjs.org); to allow it: \
             SANDBOX_ALLOW=registry.npmjs.org:443 (or --allow)"
        );
        let l = r
            .record(Event::Blocked {
                proto: Proto::Tcp,
                addr: ip("2001:db8::5"),
                port: Some(22),
            })
            .unwrap();
        assert!(l.contains("blocked tcp [2001:db8::5]:22;"), "{l}");
        assert!(l.contains("SANDBOX_ALLOW=[2001:db8::5]:22 "), "{l}");
        let l = r
            .record(Event::Blocked {
                proto: Proto::Udp,
                addr: ip("10.0.0.9"),
                port: Some(123),
            })
            .unwrap();
        assert!(l.contains("blocked udp 10.0.0.9:123;"), "{l}");
        assert!(l.contains("SANDBOX_ALLOW=10.0.0.9:123/udp "), "{l}");
        let l = r
            .record(Event::DeniedName {
                name: "x.evil.test".into(),
            })
            .unwrap();
        assert!(l.starts_with("blocked dns name x.evil.test"), "{l}");
        assert!(l.contains("SANDBOX_ALLOW=x.evil.test "), "{l}");
    }

    #[test]
    fn every_suggestion_parses_as_an_allowlist_entry() {
        for (proto, addr, port, name) in [
            (Proto::Tcp, "1.2.3.4", Some(443), None),
            (Proto::Udp, "1.2.3.4", Some(53), None),
            (Proto::Tcp, "2001:db8::1", Some(443), None),
            (Proto::Udp, "2001:db8::1", Some(443), None),
            (Proto::Icmp, "2001:db8::1", None, None),
            (Proto::Tcp, "1.2.3.4", Some(443), Some("a.test")),
            (Proto::Udp, "2001:db8::1", Some(443), Some("a.test")),
        ] {
            let s = suggestion(proto, ip(addr), port, name);
            s.parse::<crate::allowlist::Entry>()
                .unwrap_or_else(|e| panic!("{s}: {e}"));
        }
    }

    #[test]
    fn duplicates_are_counted_not_repeated() {
        let mut r = Reporter::default();
        let e = Event::Blocked {
            proto: Proto::Tcp,
            addr: ip("10.1.1.1"),
            port: Some(80),
        };
        assert!(r.record(e.clone()).is_some());
        for _ in 0..9 {
            assert!(r.record(e.clone()).is_none());
        }
        assert_eq!(r.summary(), vec![("tcp 10.1.1.1:80".to_string(), 10)]);
    }
}
