//! The summary printed after an interactive session (see `terminal`): its report lines
//! were held while the command drew on the terminal, so the summary gives each distinct
//! destination once, with how often it was tried and the setting that would allow it.

use super::{describe, shown_name, tunnelling_note, Event, Reporter};

/// Distinct destinations listed; the rest are counted in one line.
pub const TOP: usize = 20;

impl Reporter {
    /// The summary's lines (without the `sandbox-init: ` prefix), most frequent first;
    /// empty when nothing was blocked.
    pub fn session_summary(&self) -> Vec<String> {
        let tunnelling = |name: &str| {
            self.name_groups
                .get(super::parent_domain(name))
                .is_some_and(|g| g.tunnelling)
        };
        let mut rows: Vec<(u64, String)> = self
            .counts
            .iter()
            .filter(|(e, _)| !matches!(e, Event::DeniedName { name } if tunnelling(name)))
            .map(|(e, n)| {
                let gateway =
                    matches!(e, Event::Blocked { addr, .. } if self.gateways.contains(addr));
                (*n, describe(e, self.name_for(e), gateway))
            })
            .collect();
        for (d, g) in self.name_groups.iter().filter(|(_, g)| g.tunnelling) {
            let note = tunnelling_note(d, &format!("{} queries for names", g.events));
            rows.push((g.events, format!("blocked dns names: {note}")));
        }
        if rows.is_empty() && self.uncounted == 0 {
            return vec![];
        }
        rows.sort_by(|a, b| b.0.cmp(&a.0).then(a.1.cmp(&b.1)));
        let distinct = rows.len() as u64 + self.uncounted;
        let mut out = vec![format!(
            "the sandbox blocked {} attempt{} to {distinct}{} destination{} during the session:",
            self.total,
            if self.total == 1 { "" } else { "s" },
            if self.uncounted > 0 { "+" } else { "" },
            if distinct == 1 { "" } else { "s" },
        )];
        let more = rows.len().saturating_sub(TOP) as u64 + self.uncounted;
        out.extend(
            rows.into_iter()
                .take(TOP)
                .map(|(n, line)| format!("  x{n} {line}")),
        );
        if more > 0 {
            let log = self
                .audit_path
                .as_ref()
                .map(|p| format!("; the audit log {} has them all", shown_name(p)))
                .unwrap_or_default();
            out.push(format!("  and {more} more destinations{log}"));
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::super::{Event, Proto, Reporter, NAME_HOLD, TUNNEL_NAMES};
    use std::time::{Instant, SystemTime};

    #[test]
    fn the_summary_lists_each_destination_with_its_count_and_advice() {
        let mut r = Reporter::default();
        assert!(
            r.session_summary().is_empty(),
            "nothing blocked, nothing said"
        );
        let t = Instant::now();
        let wall = SystemTime::now();
        r.learned("104.16.1.1".parse().unwrap(), "registry.npmjs.org");
        for _ in 0..3 {
            r.record_at(
                Event::Blocked {
                    proto: Proto::Tcp,
                    addr: "104.16.1.1".parse().unwrap(),
                    port: Some(443),
                },
                t,
                wall,
            );
        }
        r.record_at(
            Event::DeniedName {
                name: "pkg.example.org".into(),
            },
            t,
            wall,
        );
        // A hostile name is in the summary escaped, with no advice.
        r.record_at(
            Event::DeniedName {
                name: "a$(id).example.org".into(),
            },
            t,
            wall,
        );
        for i in 0..TUNNEL_NAMES {
            r.record_at(
                Event::DeniedName {
                    name: format!("x{i}.tunnel.test"),
                },
                t,
                wall,
            );
        }
        r.due_lines(t + NAME_HOLD, true);
        let s = r.session_summary();
        assert!(
            s[0].contains(&format!(
                "blocked {} attempts to 4 destinations",
                5 + TUNNEL_NAMES
            )),
            "{s:?}"
        );
        assert_eq!(
            s[1],
            "  x20 blocked dns names: 20 queries for names under tunnel.test look like DNS \
             tunnelling (data hidden in the names); none was resolved or left the container, \
             and there is nothing to allow"
        );
        assert_eq!(
            s[2],
            "  x3 blocked tcp 104.16.1.1:443 (registry.npmjs.org); to allow it: \
             SANDBOX_ALLOW=registry.npmjs.org:443 (or --allow)"
        );
        assert!(s.iter().any(|l| l
            == "  x1 blocked dns name pkg.example.org (not in the allowlist); to allow it: \
                SANDBOX_ALLOW=pkg.example.org (or --allow)"));
        let hostile = s.iter().find(|l| l.contains("a\\x24")).expect("hostile");
        assert!(!hostile.contains("SANDBOX_ALLOW") && !hostile.contains('$'));
        assert_eq!(s.len(), 5, "{s:?}");
    }
}
