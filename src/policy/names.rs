//! Which names the child may resolve, and into which groups of dynamic sets their
//! addresses go.
//! `host` matches that name only; `*.host` matches host and every name under it, by whole
//! labels (`evilhost` and `host.evil` do not match).
//! With the credential broker running, its own names (its upstream's and its token
//! endpoint's hosts) resolve for everyone, but their addresses go to the broker's sets,
//! which only the broker's uid may reach.

use crate::policy::allowlist::{Entry, Port, Target};
use std::collections::{BTreeSet, HashMap, HashSet};

/// The name of a dynamic set (filled by the DNS filter) for one port group (`None`: every
/// port) and family.
pub fn set_name(group: Option<Port>, v6: bool) -> String {
    let fam = if v6 { "v6" } else { "v4" };
    match group {
        None => format!("dyn_any_{fam}"),
        Some(p) => format!("dyn_{}{}_{fam}", p.proto, p.number),
    }
}

/// The name of a set of the broker's names' addresses: filled by the DNS filter
/// (`dynamic`, with a timeout) or resolved at start.
pub fn broker_set_name(dynamic: bool, v6: bool) -> String {
    let fam = if v6 { "v6" } else { "v4" };
    if dynamic {
        format!("dyn_broker_{fam}")
    } else {
        format!("broker_{fam}")
    }
}

/// A group of dynamic sets.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Group {
    /// The allowlist's: addresses for every port (`None`) or for one port.
    Agent(Option<Port>),
    /// The credential broker's: only its uid may connect there.
    Broker,
}

impl Group {
    /// The kernel set of this group for one family.
    pub fn set_name(self, v6: bool) -> String {
        match self {
            Group::Agent(port) => set_name(port, v6),
            Group::Broker => broker_set_name(true, v6),
        }
    }
}

/// The broker's own names: `names` it connects to, of which `exclusive` are its alone (no
/// allowlist entry, explicit or not, gives their addresses to anyone else).
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct BrokerNames {
    pub names: Vec<String>,
    pub exclusive: Vec<String>,
}

/// The policy PID 1's duties share (one thread): the DNS filter reads it, the control
/// socket replaces it.
pub type Shared = std::rc::Rc<std::cell::RefCell<Policy>>;

#[derive(Debug, Default, Clone)]
pub struct Policy {
    exact: HashMap<String, BTreeSet<Group>>,
    wildcard: HashMap<String, BTreeSet<Group>>,
    broker: HashSet<String>,
    broker_alone: HashSet<String>,
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
            map.entry(normal(host))
                .or_default()
                .insert(Group::Agent(e.port));
        }
        p
    }

    /// Adds the broker's names: resolvable for everyone, their addresses in the broker's
    /// sets; an exclusive name's nowhere else, whatever entry matches it.
    pub fn with_broker(mut self, names: &BrokerNames) -> Policy {
        self.broker = names.names.iter().map(|n| normal(n)).collect();
        self.broker_alone = names.exclusive.iter().map(|n| normal(n)).collect();
        self.broker.extend(self.broker_alone.iter().cloned());
        self
    }

    /// Whether an entry of this policy (not the broker's names) matches `name`.
    pub fn matches_entry(&self, name: &str) -> bool {
        !self.agent_groups(&normal(name)).is_empty()
    }

    /// The groups whose sets receive this name's addresses; empty = denied.
    pub fn groups(&self, name: &str) -> BTreeSet<Group> {
        let name = normal(name);
        if self.broker_alone.contains(&name) {
            return [Group::Broker].into();
        }
        let mut out = self.agent_groups(&name);
        if self.broker.contains(&name) {
            out.insert(Group::Broker);
        }
        out
    }

    fn agent_groups(&self, name: &str) -> BTreeSet<Group> {
        let mut out = self.exact.get(name).cloned().unwrap_or_default();
        if !self.wildcard.is_empty() {
            // name itself, then every suffix that starts after a dot
            let mut rest = name;
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
        let mut out: BTreeSet<Group> = self
            .exact
            .values()
            .chain(self.wildcard.values())
            .flatten()
            .copied()
            .collect();
        if !self.broker.is_empty() {
            out.insert(Group::Broker);
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::allowlist::Proto;

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
        let tcp443 = Group::Agent(Some(Port {
            proto: Proto::Tcp,
            number: 443,
        }));
        assert_eq!(p.groups("y.a.test"), [tcp443].into());
        assert_eq!(p.groups("x.a.test"), [Group::Agent(None), tcp443].into());
        assert_eq!(p.all_groups().len(), 3);
        assert_eq!(tcp443.set_name(false), "dyn_tcp443_v4");
        assert_eq!(Group::Agent(None).set_name(true), "dyn_any_v6");
        assert_eq!(set_name(None, true), "dyn_any_v6");
        assert!(p.groups("c.test").is_empty());
    }

    #[test]
    fn the_brokers_names_resolve_for_everyone_into_its_group() {
        let broker = BrokerNames {
            names: vec!["tok.test".into(), "GW.test".into()],
            exclusive: vec!["gw.test".into()],
        };
        // Control: the entries alone send both names to the allowlist's group.
        let plain = policy(&["*.gw.test", "tok.test:443"]);
        assert!(plain.groups("gw.test").contains(&Group::Agent(None)));
        let p = plain.with_broker(&broker);
        assert_eq!(p.groups("gw.test."), [Group::Broker].into());
        assert_eq!(p.groups("a.gw.test"), [Group::Agent(None)].into());
        assert_eq!(p.groups("tok.test").len(), 2);
        assert!(p.allows("tok.test") && !p.allows("other.test"));
        assert!(!p.matches_entry("gw.test.x") && p.matches_entry("gw.test"));
        assert!(p.all_groups().contains(&Group::Broker));
        assert_eq!(Group::Broker.set_name(false), "dyn_broker_v4");
        let alone = policy(&[]).with_broker(&broker);
        assert_eq!(alone.groups("tok.test"), [Group::Broker].into());
    }

    #[test]
    fn no_entries_deny_everything() {
        let p = policy(&["10.1.2.3"]);
        assert!(!p.allows("anything.test"));
        assert!(p.all_groups().is_empty());
    }
}
