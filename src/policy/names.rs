//! Which names the child may resolve, and into which groups of dynamic sets their
//! addresses go.
//! `host` matches that name only; `*.host` matches host and every name under it, by whole
//! labels (`evilhost` and `host.evil` do not match).

use crate::policy::allowlist::{Entry, Port, Target};
use std::collections::{BTreeSet, HashMap};

/// A group of dynamic sets: addresses for every port (`None`) or for one port.
pub type Group = Option<Port>;

/// The policy PID 1's duties share (one thread): the DNS filter reads it, the control
/// socket replaces it.
pub type Shared = std::rc::Rc<std::cell::RefCell<Policy>>;

#[derive(Debug, Default, Clone)]
pub struct Policy {
    exact: HashMap<String, BTreeSet<Group>>,
    wildcard: HashMap<String, BTreeSet<Group>>,
}

fn normal(name: &str) -> String {
    name.trim_end_matches('.').to_ascii_lowercase()
}

impl Policy {
    pub fn new(entries: &[Entry]) -> Policy {
        let mut p = Policy::default();
        for e in entries {
            let (map, host) = match &e.target {
                Target::Host(h) => (&mut p.exact, h),
                Target::Wildcard(h) => (&mut p.wildcard, h),
                Target::Net(_) => continue,
            };
            map.entry(normal(host)).or_default().insert(e.port);
        }
        p
    }

    /// The groups whose sets receive this name's addresses; empty = denied.
    pub fn groups(&self, name: &str) -> BTreeSet<Group> {
        let name = normal(name);
        let mut out = self.exact.get(&name).cloned().unwrap_or_default();
        if !self.wildcard.is_empty() {
            // name itself, then every suffix that starts after a dot
            let mut rest = name.as_str();
            loop {
                if let Some(g) = self.wildcard.get(rest) {
                    out.extend(g.iter().copied());
                }
                match rest.split_once('.') {
                    Some((_, tail)) if !tail.is_empty() => rest = tail,
                    _ => break,
                }
            }
        }
        out
    }

    pub fn allows(&self, name: &str) -> bool {
        !self.groups(name).is_empty()
    }

    /// Every group some name maps to (the dynamic sets the firewall must create).
    pub fn all_groups(&self) -> BTreeSet<Group> {
        self.exact
            .values()
            .chain(self.wildcard.values())
            .flatten()
            .copied()
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::allowlist::Proto;
    use crate::policy::ruleset::set_name;

    fn policy(list: &[&str]) -> Policy {
        let e: Vec<Entry> = list.iter().map(|s| s.parse().unwrap()).collect();
        Policy::new(&e)
    }

    #[test]
    fn wildcard_matches_apex_and_below_by_whole_labels() {
        let p = policy(&["*.allowed.test"]);
        for ok in [
            "allowed.test",
            "a.allowed.test",
            "b.c.allowed.test",
            "A.Allowed.Test.",
        ] {
            assert!(p.allows(ok), "{ok}");
        }
        for no in [
            "allowed.test.evil.test",
            "evilallowed.test",
            "test",
            "allowed.tes",
            "",
            "xallowed.test",
        ] {
            assert!(!p.allows(no), "{no}");
        }
    }

    #[test]
    fn exact_names_match_only_themselves() {
        let p = policy(&["api.test"]);
        assert!(p.allows("api.test"));
        assert!(p.allows("API.TEST."));
        assert!(!p.allows("x.api.test"));
        assert!(!p.allows("test"));
        assert!(!p.allows("api.test.evil"));
    }

    #[test]
    fn groups_follow_the_ports_of_every_matching_entry() {
        let p = policy(&["*.a.test:443", "x.a.test", "10.0.0.0/8", "b.test:53/udp"]);
        let tcp443 = Some(Port {
            proto: Proto::Tcp,
            number: 443,
        });
        assert_eq!(p.groups("y.a.test"), [tcp443].into());
        assert_eq!(p.groups("x.a.test"), [None, tcp443].into());
        assert_eq!(p.all_groups().len(), 3);
        assert_eq!(set_name(tcp443, false), "dyn_tcp443_v4");
        assert_eq!(set_name(None, true), "dyn_any_v6");
        assert!(p.groups("c.test").is_empty());
    }

    #[test]
    fn no_entries_deny_everything() {
        let p = policy(&["10.1.2.3"]);
        assert!(!p.allows("anything.test"));
        assert!(p.all_groups().is_empty());
    }
}
