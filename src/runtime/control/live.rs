//! The allowlist of a running sandbox: what it started with (image, environment, flags)
//! and what root added since through `allow`. Pure: the server turns a changed state into
//! one netlink batch and a new DNS policy, and keeps the change only when the kernel took it.

use crate::policy::allowlist::{Entry, Port, Target};
use crate::policy::names::{BrokerNames, Policy};
use ipnet::IpNet;
use serde_json::{json, Value};
use std::collections::BTreeSet;

/// Live entries kept at most: each is a firewall rule or a policy entry, and PID 1's memory
/// stays bounded however often `allow` is called.
pub const MAX_LIVE: usize = 256;

/// Who asked for a change (the peer credentials of the connection).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Peer {
    pub uid: u32,
    pub pid: i32,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LiveEntry {
    pub entry: Entry,
    pub by: Peer,
    /// RFC 3339, for `status`.
    pub at: String,
}

#[derive(Debug, Clone)]
pub struct Live {
    /// Entries the sandbox started with, each with where it came from.
    pub start: Vec<(Entry, String)>,
    /// Presets in force and where that came from (shown by `status`).
    pub presets: (Vec<String>, String),
    /// DNS `filter` mode: names can be allowed live (PID 1 answers DNS); in `resolver`
    /// mode only addresses and networks can.
    pub filter: bool,
    /// Port groups whose dynamic sets the start-time ruleset created.
    pub start_groups: BTreeSet<Option<Port>>,
    /// The credential broker's own names, when it runs: they stay in the DNS policy
    /// whatever changes live.
    pub broker: BrokerNames,
    pub live: Vec<LiveEntry>,
}

fn is_name(e: &Entry) -> bool {
    matches!(e.target, Target::Host(_) | Target::Wildcard(_))
}

impl Live {
    fn started_with(&self, e: &Entry) -> bool {
        self.start.iter().any(|(s, _)| s == e)
    }

    /// Adds `entries`; returns one line per entry. Nothing is added when one of them cannot
    /// be (the caller sees every reason at once).
    pub fn allow(&mut self, entries: &[Entry], by: Peer, at: &str) -> Result<Vec<String>, String> {
        let mut lines = vec![];
        let mut next = self.live.clone();
        for e in entries {
            if is_name(e) && !self.filter {
                return Err(format!(
                    "{e}: a name can only be allowed live in DNS mode 'filter' (this session \
                     runs 'resolver', where names are resolved once at start); allow its \
                     addresses instead, or restart with SANDBOX_ALLOW={e}"
                ));
            }
            if matches!(&e.target, Target::Host(h) if self.broker.exclusive.contains(h)) {
                // As at the start: the broker's upstream is its alone, allowed or not.
                lines.push(format!(
                    "{e}: the credential broker's upstream, which only the broker may reach \
                     (the command reaches it through the broker): unchanged"
                ));
            } else if self.started_with(e) {
                lines.push(format!("{e}: already allowed since the start"));
            } else if next.iter().any(|l| &l.entry == e) {
                lines.push(format!("{e}: already allowed live"));
            } else {
                next.push(LiveEntry {
                    entry: e.clone(),
                    by,
                    at: at.to_string(),
                });
                lines.push(format!("{e}: allowed"));
            }
        }
        if next.len() > MAX_LIVE {
            return Err(format!(
                "more than {MAX_LIVE} live entries: deny some first, or restart with the \
                 entries in SANDBOX_ALLOW (a network such as 10.0.0.0/8 covers many addresses)"
            ));
        }
        self.live = next;
        Ok(lines)
    }

    /// Removes what `allow` added; entries the sandbox started with stay (only a restart
    /// without them removes them).
    pub fn deny(&mut self, entries: &[Entry]) -> Vec<String> {
        entries
            .iter()
            .map(|e| {
                if let Some(i) = self.live.iter().position(|l| &l.entry == e) {
                    self.live.remove(i);
                    format!("{e}: denied (new connections are refused)")
                } else if self.started_with(e) {
                    format!(
                        "{e}: allowed since the start (image, environment or flags), not by \
                         `allow`: unchanged; restart without it to remove it"
                    )
                } else {
                    format!("{e}: was not allowed live: unchanged")
                }
            })
            .collect()
    }

    /// What `deny --kill` closes for `entries`: the addresses and networks (with their
    /// ports) of every entry that is not allowed since the start, and a line for each entry
    /// it cannot close. Start entries are never closed: their connections stay allowed.
    /// Names are not closed either: the addresses the DNS filter learned for a name stay in
    /// its sets for up to the sets' timeout after the deny, so a closed connection would be
    /// let in again at once.
    pub fn kill_targets(&self, entries: &[Entry]) -> (Vec<(IpNet, Option<Port>)>, Vec<String>) {
        let mut targets = vec![];
        let mut lines = vec![];
        for e in entries.iter().filter(|e| !self.started_with(e)) {
            match &e.target {
                Target::Net(n) => targets.push((*n, e.port)),
                _ => lines.push(format!(
                    "{e}: its established connections stay open (the addresses learned for it \
                     leave the firewall within {} s of the deny); then `deny --kill ADDRESS` \
                     closes them",
                    crate::policy::ruleset::SET_TIMEOUT.as_secs()
                )),
            }
        }
        (targets, lines)
    }

    /// Every entry the DNS filter's policy holds now.
    pub fn policy_entries(&self) -> Vec<Entry> {
        self.start
            .iter()
            .map(|(e, _)| e.clone())
            .chain(self.live.iter().map(|l| l.entry.clone()))
            .collect()
    }

    /// The DNS filter's policy now: every entry, and the broker's names.
    pub fn policy(&self) -> Policy {
        Policy::new(&self.policy_entries()).with_broker(&self.broker)
    }

    /// The live addresses and networks with their ports: one rule each in the live chain.
    pub fn nets(&self) -> Vec<(IpNet, Option<Port>)> {
        self.live
            .iter()
            .filter_map(|l| match &l.entry.target {
                Target::Net(n) => Some((*n, l.entry.port)),
                _ => None,
            })
            .collect()
    }

    /// Port groups of live names whose dynamic sets the start did not create.
    pub fn new_groups(&self) -> Vec<Option<Port>> {
        let groups: BTreeSet<Option<Port>> = self
            .live
            .iter()
            .filter(|l| is_name(&l.entry))
            .map(|l| l.entry.port)
            .filter(|g| !self.start_groups.contains(g))
            .collect();
        groups.into_iter().collect()
    }

    /// What `status` shows: every entry with its source.
    pub fn describe(&self) -> (Vec<String>, Value) {
        let mut lines = vec![format!(
            "presets: {} <- {}",
            if self.presets.0.is_empty() {
                "none".to_string()
            } else {
                self.presets.0.join(", ")
            },
            self.presets.1
        )];
        lines.push(format!(
            "dns mode: {}",
            if self.filter { "filter" } else { "resolver" }
        ));
        let mut entries = vec![];
        for (e, source) in &self.start {
            lines.push(format!("{e} <- {source}"));
            entries.push(json!({"entry": e.to_string(), "source": source}));
        }
        for l in &self.live {
            let source = format!("live (uid {} pid {} at {})", l.by.uid, l.by.pid, l.at);
            lines.push(format!("{} <- {source}", l.entry));
            entries.push(json!({"entry": l.entry.to_string(), "source": "live",
                "uid": l.by.uid, "pid": l.by.pid, "time": l.at}));
        }
        let data = json!({
            "dns": if self.filter { "filter" } else { "resolver" },
            "presets": self.presets.0,
            "entries": entries,
        });
        (lines, data)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn e(s: &str) -> Entry {
        s.parse().unwrap()
    }

    fn live(filter: bool) -> Live {
        Live {
            start: vec![(e("api.test:443"), "env SANDBOX_ALLOW".into())],
            presets: (vec!["anthropic".into()], "default".into()),
            filter,
            start_groups: [Some(Port {
                proto: crate::policy::allowlist::Proto::Tcp,
                number: 443,
            })]
            .into(),
            broker: BrokerNames::default(),
            live: vec![],
        }
    }

    const ROOT: Peer = Peer { uid: 0, pid: 42 };

    #[test]
    fn allow_then_deny_changes_only_live_entries() {
        let mut l = live(true);
        let lines = l
            .allow(
                &[e("reg.test:8443"), e("10.1.0.0/16"), e("api.test:443")],
                ROOT,
                "t",
            )
            .unwrap();
        assert_eq!(lines[0], "reg.test:8443: allowed");
        assert!(lines[2].contains("already allowed since the start"));
        assert_eq!(l.live.len(), 2);
        assert_eq!(l.nets(), vec![(e("10.1.0.0/16").target_net(), None)]);
        assert_eq!(l.new_groups().len(), 1, "tcp 8443 is a new group");
        assert_eq!(l.policy_entries().len(), 3);
        assert!(l.allow(&[e("reg.test:8443")], ROOT, "t").unwrap()[0].contains("already"));
        assert_eq!(l.live.len(), 2);

        let lines = l.deny(&[e("reg.test:8443"), e("api.test:443"), e("x.test")]);
        assert!(lines[0].contains("denied"));
        assert!(lines[1].contains("unchanged"), "start entries stay");
        assert!(lines[2].contains("not allowed live"));
        assert_eq!(l.live.len(), 1);
        assert!(l.new_groups().is_empty());
    }

    #[test]
    fn kill_closes_addresses_and_networks_never_start_entries() {
        let mut l = live(true);
        l.start.push((e("10.5.0.0/16"), "image".into()));
        l.allow(&[e("10.1.0.0/16:443"), e("reg.test")], ROOT, "t")
            .unwrap();
        l.deny(&[e("10.1.0.0/16:443"), e("reg.test")]);
        let (targets, lines) = l.kill_targets(&[
            e("10.1.0.0/16:443"),
            e("fd00::1"),
            e("reg.test"),
            e("10.5.0.0/16"),
        ]);
        assert_eq!(
            targets,
            vec![
                (e("10.1.0.0/16").target_net(), e("x.test:443").port),
                (e("fd00::1").target_net(), None)
            ]
        );
        assert_eq!(lines.len(), 1);
        assert!(lines[0].starts_with("reg.test: its established connections stay open"));
    }

    #[test]
    fn resolver_mode_refuses_names_and_changes_nothing() {
        let mut l = live(false);
        let err = l
            .allow(&[e("10.0.0.1"), e("reg.test")], ROOT, "t")
            .unwrap_err();
        assert!(err.contains("DNS mode 'filter'"), "{err}");
        assert!(l.live.is_empty());
        l.allow(&[e("10.0.0.1")], ROOT, "t").unwrap();
        assert_eq!(l.live.len(), 1);
    }

    #[test]
    fn live_changes_keep_the_brokers_names_and_never_open_its_upstream() {
        use crate::policy::names::Group;
        let mut l = live(true);
        // Control: without the broker a live allow of the name opens it.
        l.allow(&[e("gw.test")], ROOT, "t").unwrap();
        assert_eq!(l.policy().groups("gw.test"), [Group::Agent(None)].into());
        l.deny(&[e("gw.test")]);

        l.broker = BrokerNames {
            names: vec!["platform.claude.com".into(), "gw.test".into()],
            exclusive: vec!["gw.test".into()],
        };
        let lines = l.allow(&[e("gw.test"), e("claude.ai")], ROOT, "t").unwrap();
        assert!(lines[0].contains("only the broker may reach"), "{lines:?}");
        assert_eq!(lines[1], "claude.ai: allowed");
        assert_eq!(l.live.len(), 1);
        let p = l.policy();
        assert_eq!(p.groups("gw.test"), [Group::Broker].into());
        assert_eq!(p.groups("platform.claude.com"), [Group::Broker].into());
        // An explicit live allow of a login host is explicit, as --allow is.
        assert_eq!(p.groups("claude.ai"), [Group::Agent(None)].into());
        l.allow(&[e("platform.claude.com")], ROOT, "t").unwrap();
        assert_eq!(
            l.policy().groups("platform.claude.com"),
            [Group::Agent(None), Group::Broker].into()
        );
    }

    #[test]
    fn live_entries_are_bounded() {
        let mut l = live(true);
        for i in 0..MAX_LIVE {
            l.allow(&[e(&format!("10.9.{}.{}", i / 250, i % 250))], ROOT, "t")
                .unwrap();
        }
        let before = l.live.len();
        assert!(l.allow(&[e("h.test")], ROOT, "t").is_err());
        assert_eq!(l.live.len(), before);
    }

    #[test]
    fn status_names_every_source() {
        let mut l = live(true);
        l.allow(
            &[e("reg.test")],
            Peer { uid: 0, pid: 7 },
            "2026-01-01T00:00:00Z",
        )
        .unwrap();
        let (lines, data) = l.describe();
        let text = lines.join("\n");
        assert!(text.contains("anthropic <- default"), "{text}");
        assert!(text.contains("api.test:443 <- env SANDBOX_ALLOW"), "{text}");
        assert!(text.contains("reg.test <- live (uid 0 pid 7"), "{text}");
        assert_eq!(data["entries"][1]["source"], "live");
    }

    impl Entry {
        fn target_net(&self) -> IpNet {
            match self.target {
                Target::Net(n) => n,
                _ => panic!("not a net"),
            }
        }
    }
}
