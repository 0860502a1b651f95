//! Egress firewall: resolve the allowlist, plan the ruleset, replace table
//! `inet sandbox_init` in one netlink transaction, read it back. Any failure to program
//! the kernel is fatal (exit 70) with a diagnosis: the command never runs unfirewalled.

pub mod conntrack;
pub mod netlink;
pub mod resolve;

use crate::policy::allowlist::{Entry, Target};
use crate::policy::config::{DnsMode, Settings, Source};
use crate::policy::presets;
use crate::policy::{hostnet, ruleset as plan};
use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;
use std::time::Instant;

/// Why the firewall was not applied (the command does not start without it).
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A selected preset does not exist or has an entry that does not parse.
    #[error("{0}")]
    Preset(String),
    /// Strict mode, and allowlisted names that did not resolve.
    #[error("{0}")]
    Strict(String),
    /// The ruleset could not be encoded as netlink messages.
    #[error("{0}")]
    Build(String),
    /// The kernel refused the ruleset or could not be reached (the message says what to do).
    #[error("{0}")]
    Kernel(String),
    #[error("the firewall did not read back as applied: {0}")]
    ReadBack(String),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// What the firewall was built from: PID 1's later duties (the DNS filter, the reports of
/// blocked destinations) work from the same allowlist and names.
#[derive(Debug)]
pub struct Applied {
    /// The sandboxed user's allowlist (with the broker, less what its route took).
    pub entries: Vec<Entry>,
    /// Each allowlisted name and the addresses it resolved to at start: every name in
    /// resolver mode, none in filter mode (the DNS filter learns them as the command asks),
    /// unless strict mode checked them.
    pub resolved: BTreeMap<String, Vec<IpAddr>>,
    pub plan: plan::Plan,
    /// The socket that committed the table, held for as long as this is (PID 1 keeps it
    /// until it exits: closing it right after the commit would wait out a grace period).
    pub committed: netlink::Committed,
}

impl Applied {
    /// The names the DNS filter answers: the allowlist's, and the broker's own.
    pub fn names_policy(&self) -> crate::policy::names::Policy {
        let policy = crate::policy::names::Policy::new(&self.entries);
        match &self.plan.broker {
            Some(b) => policy.with_broker(&b.dns_names()),
            None => policy,
        }
    }
}

/// Programs the firewall, or fails closed. `None` when the firewall is off.
/// `broker`: the credential broker's own destinations, when it runs.
pub fn setup(
    settings: &Settings,
    _env: &HashMap<String, String>,
    broker: Option<&plan::BrokerRoute>,
) -> Result<Option<Applied>> {
    if !settings.firewall.value {
        log::warn!(
            "FIREWALL OFF ({}): the command can reach any address; remove it to enforce the allowlist",
            settings.firewall.source
        );
        return Ok(None);
    }
    let started = Instant::now();
    let (entries, route) = entries(settings, broker)?;
    let names = names(&entries, route.as_ref());
    let filter = settings.dns.value == DnsMode::Filter;
    // In filter mode the sets are filled by the DNS filter: an allowlisted name's addresses
    // enter them before its answer reaches the command. Resolving at start would only
    // pre-fill them, at the cost of a round trip (seconds with a slow or absent resolver).
    // Strict mode still checks every name now, and what resolves pre-fills the sets.
    let at_start = !filter || settings.strict.value;
    let answers = if at_start {
        resolve::resolve_all(&names)
    } else {
        if !names.is_empty() {
            log::debug!(
                "DNS filter mode: the {} allowlisted names are resolved when the command asks \
                 for them (their addresses are allowed before the answer is released), none at \
                 start",
                names.len()
            );
        }
        resolve::Answers::new()
    };
    let resolved_in = started.elapsed();
    let (resolved, failed) = split_answers(&answers);
    let listed = allowlisted(&failed, &entries);
    if settings.strict.value && !listed.is_empty() {
        return Err(Error::Strict(format!(
            "strict mode ({}): cannot resolve {}; the command was not started",
            settings.strict.source,
            listed
                .iter()
                .map(|(n, why)| format!("{n} ({why})"))
                .collect::<Vec<_>>()
                .join(", ")
        )));
    }
    for (name, why) in &failed {
        log::warn!("cannot resolve {name}: {why}; skipped, its addresses stay blocked");
    }
    let threads = resolve::thread_count();
    if threads > 1 {
        log::warn!("{threads} threads remain after name resolution; PID 1 should have one");
    }

    let plan = plan_for(settings, &entries, &resolved, route);
    for w in &plan.warnings {
        log::warn!("{w}");
    }
    if let Some(b) = &plan.broker {
        let mut said = format!(
            "credential broker: its uid may reach {} (by name, in sets of its own)",
            b.names.join(", ")
        );
        if !b.exclusive.is_empty() {
            said += &format!(
                "; {} (its upstream) stays its own even where an allowlist entry names it",
                b.exclusive.join(", ")
            );
        }
        if !b.left.is_empty() {
            said += &format!(
                "; {} left the command's allowlist (the broker holds the login; allow one \
                 explicitly to keep it)",
                b.left.join(" ")
            );
        }
        log::info!("{said}");
    }
    let marker = marker(&plan);
    let kernel_started = Instant::now();
    let (built, committed) = apply_batch(&plan, &marker)?;
    let sent_in = kernel_started.elapsed();
    netlink::verify(&committed, &built.expect).map_err(Error::ReadBack)?;
    let groups = || plan.ports.values().chain(plan.dynamic.values());
    let v4 = plan.any.v4.len() + groups().map(|g| g.v4.len()).sum::<usize>();
    let v6 = plan.any.v6.len() + groups().map(|g| g.v6.len()).sum::<usize>();
    let nets = plan.any.nets.len() + plan.ports.values().map(|g| g.nets.len()).sum::<usize>();
    let names_said = if at_start {
        format!("{} names ({} unresolved)", names.len(), failed.len())
    } else {
        format!(
            "{} names (resolved on demand by the DNS filter)",
            names.len()
        )
    };
    log::info!(
        "firewall applied: {names_said}, {v4} IPv4 + {v6} IPv6 addresses, {nets} networks, {} \
         rules; {} ms (resolve {} ms, kernel {} ms, read-back {} ms)",
        built.expect.output_rules + built.expect.input_rules,
        started.elapsed().as_millis(),
        resolved_in.as_millis(),
        sent_in.as_millis(),
        (kernel_started.elapsed() - sent_in).as_millis(),
    );
    Ok(Some(Applied {
        entries,
        resolved,
        plan,
        committed,
    }))
}

/// Sends the ruleset. Reporting what was blocked must never cost the wall itself: when the
/// kernel refuses the batch (for a reason other than missing privileges), it is sent once
/// more without the NFLOG copies, which need the kernel's nfnetlink_log that some hosts
/// lack; if that goes through, the sandbox runs without reports, and says so.
fn apply_batch(plan: &plan::Plan, marker: &str) -> Result<(netlink::Built, netlink::Committed)> {
    let built = netlink::build(plan, marker, true).map_err(Error::Build)?;
    let first = match netlink::send(&built) {
        Ok(committed) => return Ok((built, committed)),
        Err(e) => e,
    };
    let refused = diagnosis(&first, &built.what).what;
    if !matches!(first, netlink::NlError::Kernel { errno, .. } if errno != libc::EPERM) {
        return Err(Error::Kernel(refused));
    }
    let plain = netlink::build(plan, marker, false).map_err(Error::Build)?;
    match netlink::send(&plain) {
        Ok(committed) => {
            log::warn!(
                "blocked destinations will NOT be reported: the kernel refused the ruleset \
                 with NFLOG logging ({refused}); the firewall itself is applied"
            );
            Ok((plain, committed))
        }
        Err(_) => Err(Error::Kernel(refused)),
    }
}

/// What `sandbox-init check` learns about the firewall, changing nothing: what it would be
/// built from and what stands in its way.
#[derive(Debug)]
pub enum Diagnosis {
    /// The firewall is off, as the named setting says; nothing else was looked at.
    Off(Source),
    On {
        /// What stands in the way, each with its fix.
        findings: Vec<Finding>,
        /// Each allowlisted name and what it resolves to now (empty when the allowlist
        /// itself could not be read).
        names: resolve::Answers,
        /// The ruleset the start would apply (`None` when the allowlist could not be read).
        plan: Option<Box<plan::Plan>>,
    },
}

/// One thing that keeps the firewall from being built as configured.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Finding {
    pub what: String,
    pub fix: Fix,
}

/// What the user does about a finding.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Fix {
    AddNetAdmin,
    UseNfTables,
    CorrectPresets,
    /// Strict mode and a name that does not resolve.
    Unresolvable(String),
    /// The finding's message says all there is.
    SeeMessage,
}

impl std::fmt::Display for Fix {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Fix::AddNetAdmin => f.write_str("run the container with --cap-add NET_ADMIN"),
            Fix::UseNfTables => f.write_str(
                "use a runtime with nf_tables (runc), or --no-firewall / SANDBOX_FIREWALL=off",
            ),
            Fix::CorrectPresets => f.write_str("correct the preset list"),
            Fix::Unresolvable(name) => write!(
                f,
                "remove {name} from the allowlist, fix DNS, or drop --strict"
            ),
            Fix::SeeMessage => f.write_str("see the message above"),
        }
    }
}

/// Looks at what the firewall would be built from, as `check` does: the kernel's nf_tables
/// (listing needs the same capability and subsystem as applying, and changes nothing), the
/// allowlist, each name's addresses, the plan.
pub fn diagnose(
    settings: &Settings,
    _env: &HashMap<String, String>,
    broker: Option<&plan::BrokerRoute>,
) -> Diagnosis {
    if !settings.firewall.value {
        return Diagnosis::Off(settings.firewall.source.clone());
    }
    let mut findings = vec![];
    if let Err(e) = netlink::probe() {
        findings.push(diagnosis(&e, &[]));
    }
    let (entries, route) = match entries(settings, broker) {
        Ok(e) => e,
        Err(e) => {
            findings.push(Finding {
                what: e.to_string(),
                fix: Fix::CorrectPresets,
            });
            return Diagnosis::On {
                findings,
                names: resolve::Answers::new(),
                plan: None,
            };
        }
    };
    let answers = resolve::resolve_all(&names(&entries, route.as_ref()));
    let (resolved, failed) = split_answers(&answers);
    if settings.strict.value {
        for (name, why) in allowlisted(&failed, &entries) {
            findings.push(Finding {
                what: format!("strict mode: {name} cannot be resolved ({why})"),
                fix: Fix::Unresolvable(name.clone()),
            });
        }
    }
    let plan = plan_for(settings, &entries, &resolved, route);
    Diagnosis::On {
        findings,
        names: answers,
        plan: Some(Box::new(plan)),
    }
}

/// The plan `apply` builds and `check` shows: the allowlist with its resolved names, the
/// host's resolvers and routes, the DNS mode, and the broker's own destinations.
fn plan_for(
    settings: &Settings,
    entries: &[Entry],
    resolved: &BTreeMap<String, Vec<std::net::IpAddr>>,
    broker: Option<plan::BrokerRoute>,
) -> plan::Plan {
    let plan = plan::build_mode(
        entries,
        resolved,
        &hostnet::HostNet::read(),
        settings.allow_gateway.value,
        settings.dns.value == DnsMode::Filter,
    );
    match broker {
        Some(route) => plan.with_broker(route, resolved),
        None => plan,
    }
}

/// The effective allowlist: every selected preset, then the allow entries; with the
/// broker, less what its route takes from the sandboxed user (the route then says what).
fn entries(
    settings: &Settings,
    broker: Option<&plan::BrokerRoute>,
) -> Result<(Vec<Entry>, Option<plan::BrokerRoute>)> {
    let from_presets = preset_entries(settings)?;
    let explicit: Vec<Entry> = settings.allow.iter().map(|s| s.value.clone()).collect();
    Ok(match broker {
        Some(route) => {
            let mut route = route.clone();
            let entries = route.agent_entries(&from_presets, &explicit);
            (entries, Some(route))
        }
        None => ([from_presets, explicit].concat(), None),
    })
}

fn preset_entries(settings: &Settings) -> Result<Vec<Entry>> {
    let mut out = vec![];
    for name in &settings.presets.value {
        let p = presets::lookup(name)
            .ok_or_else(|| Error::Preset(format!("unknown preset '{name}'")))?;
        for e in p.entries {
            out.push(
                e.parse::<Entry>()
                    .map_err(|why| Error::Preset(format!("preset {name}: {why}")))?,
            );
        }
    }
    Ok(out)
}

/// Every name to resolve: the allowlist's and the broker's own.
fn names(entries: &[Entry], broker: Option<&plan::BrokerRoute>) -> Vec<String> {
    let mut names: Vec<String> = entries
        .iter()
        .filter_map(|e| match &e.target {
            Target::Host(h) | Target::Wildcard(h) => Some(h.clone()),
            Target::Net(_) => None,
        })
        .chain(broker.into_iter().flat_map(|b| b.names.iter().cloned()))
        .collect();
    names.sort();
    names.dedup();
    names
}

/// The failed names an allowlist entry asked for: strict mode is about those (a name only
/// the broker uses, its token endpoint's host for one, is needed by it alone, and not in
/// every session; it is warned about like any name that does not resolve).
fn allowlisted<'a>(failed: &'a [(String, String)], entries: &[Entry]) -> Vec<&'a (String, String)> {
    let listed = names(entries, None);
    failed.iter().filter(|(n, _)| listed.contains(n)).collect()
}

type Split = (BTreeMap<String, Vec<IpAddr>>, Vec<(String, String)>);

fn split_answers(answers: &resolve::Answers) -> Split {
    let mut ok = BTreeMap::new();
    let mut failed = vec![];
    for (name, res) in answers {
        match res {
            Ok(a) => {
                ok.insert(name.clone(), a.clone());
            }
            Err(why) => failed.push((name.clone(), why.clone())),
        }
    }
    (ok, failed)
}

/// Identifies our table and this plan (read back after applying).
fn marker(plan: &plan::Plan) -> String {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    format!("{plan:?}").hash(&mut h);
    format!(
        "sandbox-init {} plan {:016x}",
        env!("CARGO_PKG_VERSION"),
        h.finish()
    )
}

const UNSUPPORTED: &str = "this container runtime cannot enforce egress rules";

/// Turns a netlink failure into what the user must do about it.
pub fn diagnosis(e: &netlink::NlError, what: &[String]) -> Finding {
    use netlink::NlError::*;
    let opt_out = "run it on a runtime with nf_tables (runc), or opt out explicitly with \
                   --no-firewall / SANDBOX_FIREWALL=off";
    let applying = |seq: u32| match seq {
        0 => "the transaction".to_string(),
        s => what
            .get(s as usize - 1)
            .cloned()
            .unwrap_or_else(|| format!("message {s}")),
    };
    let name = |n: i32| {
        format!(
            "{} ({})",
            errno_name(n),
            std::io::Error::from_raw_os_error(n)
        )
    };
    let (what, fix) = match *e {
        Open(n) | Kernel { errno: n, .. } | Send(n) if n == libc::EPERM || n == libc::EACCES => (
            format!(
                "cannot program the firewall: {}: the container lacks CAP_NET_ADMIN; add \
                 --cap-add NET_ADMIN to docker run (or --no-firewall to run without it, loudly)",
                name(n)
            ),
            Fix::AddNetAdmin,
        ),
        Open(n) if n == libc::EPROTONOSUPPORT || n == libc::EAFNOSUPPORT => (
            format!(
                "{UNSUPPORTED}: there is no nf_tables netlink here ({}; gVisor and some WSL2 \
                 kernels lack it); {opt_out}",
                name(n)
            ),
            Fix::UseNfTables,
        ),
        Kernel { errno: n, seq: 0 } if n == libc::EOPNOTSUPP || n == libc::ENOENT => (
            format!(
                "{UNSUPPORTED}: the kernel has no nf_tables ({}); {opt_out}",
                name(n)
            ),
            Fix::UseNfTables,
        ),
        Kernel { errno: n, seq } if n == libc::EOPNOTSUPP => (
            format!(
                "{UNSUPPORTED}: the kernel's nf_tables refused {} ({}; some WSL2 kernels lack \
                 set support); {opt_out}",
                applying(seq),
                name(n)
            ),
            Fix::UseNfTables,
        ),
        Kernel { errno: n, seq } => (
            format!(
                "the kernel refused the firewall: {} while applying {}; nothing was changed",
                name(n),
                applying(seq)
            ),
            Fix::SeeMessage,
        ),
        Open(n) => (
            format!("cannot open a netfilter netlink socket: {}", name(n)),
            Fix::SeeMessage,
        ),
        Send(n) => (
            format!("cannot send the firewall to the kernel: {}", name(n)),
            Fix::SeeMessage,
        ),
        Recv(n) if n == libc::EAGAIN => (
            "the kernel did not acknowledge the firewall within 5 s".to_string(),
            Fix::SeeMessage,
        ),
        Recv(n) => (
            format!("cannot read the kernel's answer: {}", name(n)),
            Fix::SeeMessage,
        ),
    };
    Finding { what, fix }
}

fn errno_name(n: i32) -> &'static str {
    match n {
        libc::EPERM => "EPERM",
        libc::EACCES => "EACCES",
        libc::ENOENT => "ENOENT",
        libc::EINVAL => "EINVAL",
        libc::EEXIST => "EEXIST",
        libc::ENOMEM => "ENOMEM",
        libc::ENOBUFS => "ENOBUFS",
        libc::EBUSY => "EBUSY",
        libc::ERANGE => "ERANGE",
        libc::E2BIG => "E2BIG",
        libc::EMSGSIZE => "EMSGSIZE",
        libc::EOPNOTSUPP => "EOPNOTSUPP",
        libc::EPROTONOSUPPORT => "EPROTONOSUPPORT",
        libc::EAFNOSUPPORT => "EAFNOSUPPORT",
        libc::EAGAIN => "EAGAIN",
        _ => "errno",
    }
}

#[cfg(test)]
mod tests {
    use super::netlink::NlError;
    use super::*;

    #[test]
    fn eperm_asks_for_net_admin() {
        for e in [
            NlError::Kernel {
                errno: libc::EPERM,
                seq: 0,
            },
            NlError::Open(libc::EPERM),
        ] {
            let f = diagnosis(&e, &[]);
            assert_eq!(f.fix, Fix::AddNetAdmin);
            let m = f.what;
            assert!(m.contains("--cap-add NET_ADMIN"), "{m}");
            assert!(m.contains("EPERM"), "{m}");
        }
    }

    #[test]
    fn missing_nf_tables_says_unsupported_and_how_to_opt_out() {
        for e in [
            NlError::Open(libc::EPROTONOSUPPORT),
            NlError::Open(libc::EAFNOSUPPORT),
            NlError::Kernel {
                errno: libc::EOPNOTSUPP,
                seq: 0,
            },
            NlError::Kernel {
                errno: libc::EOPNOTSUPP,
                seq: 2,
            },
        ] {
            let f = diagnosis(&e, &["a".into(), "set any_v4".into()]);
            assert_eq!(f.fix, Fix::UseNfTables);
            let m = f.what;
            assert!(m.contains("cannot enforce egress"), "{m}");
            assert!(
                m.contains("--no-firewall") && m.contains("SANDBOX_FIREWALL=off"),
                "{m}"
            );
        }
    }

    #[test]
    fn other_refusals_name_errno_and_object() {
        let what = vec![
            "table inet sandbox_init".to_string(),
            "rule output: accept tcp 443 to 10.0.0.0/8".into(),
        ];
        let f = diagnosis(
            &NlError::Kernel {
                errno: libc::EEXIST,
                seq: 2,
            },
            &what,
        );
        assert_eq!(f.fix, Fix::SeeMessage);
        let m = f.what;
        assert!(m.contains("EEXIST"), "{m}");
        assert!(m.contains("accept tcp 443 to 10.0.0.0/8"), "{m}");
        // a sequence number beyond the list still gives a message
        let m = diagnosis(
            &NlError::Kernel {
                errno: libc::EINVAL,
                seq: 99,
            },
            &what,
        )
        .what;
        assert!(m.contains("message 99"), "{m}");
    }

    #[test]
    fn names_are_deduplicated_and_exclude_addresses() {
        let e: Vec<Entry> = [
            "b.test",
            "*.a.test",
            "a.test:443",
            "10.0.0.0/8",
            "b.test:80",
        ]
        .iter()
        .map(|s| s.parse().unwrap())
        .collect();
        assert_eq!(names(&e, None), ["a.test", "b.test"]);
    }

    #[test]
    fn strict_mode_is_about_the_allowlists_names_not_the_brokers() {
        let e: Vec<Entry> = ["a.test", "*.w.test"]
            .iter()
            .map(|s| s.parse().unwrap())
            .collect();
        let failed: Vec<(String, String)> = ["a.test", "w.test", "platform.claude.com"]
            .iter()
            .map(|n| (n.to_string(), "refused".to_string()))
            .collect();
        let listed: Vec<&str> = allowlisted(&failed, &e)
            .iter()
            .map(|(n, _)| n.as_str())
            .collect();
        assert_eq!(listed, ["a.test", "w.test"]);
    }

    #[test]
    fn presets_then_allow_entries() {
        let s = Settings::default();
        let (e, _) = entries(&s, None).unwrap();
        assert!(e
            .iter()
            .any(|e| e.target == Target::Host("api.anthropic.com".into())));
    }
}
